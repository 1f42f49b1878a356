"""Benchmark qcal's Snakemake overhead at scale: DAG (dry-run) time, no-op re-run time and peak memory of
the main Snakemake process, at 20,000 (and 1,000) images, against a trivial one-rule-per-image Snakefile.

What is measured, on N generated tiny JPEGs (--small x 3/4 pixels, in subfolders of 1,000) with the real
workflow (`snakemake -s <repo>/Snakefile --directory WORK --configfile CFG --profile <repo>/profiles/default
results/input_list.txt`) and a config of `images: <folder>`, `preprocess: {height: 32, width: 32}` (tiny
raws, so a cold run is mostly Snakemake and job start-up) and `evaluation: {holdout: 0}`:

  dry-run   `-n` on a fresh work dir: parsing + discovery + the whole DAG, nothing built (median of --repeat);
  cold      `-j JOBS` on a fresh work dir: every raw job plus the input list (1 run);
  no-op     the same command again in the completed work dir: nothing to do (median of --repeat);

at --small-images (1,000: the first subfolder) and at --images (20,000). The full-size cold run is real
(the no-op needs a really completed run) but uses `--scheduler-subsample K` (--subsample, 500): without it
Snakemake 9 stats the inputs of every ready job in every scheduler round, ~0.9 s per job with 20,000
ready on 2 cores, i.e. hours. The plain cold run is therefore timed at 1,000 and --cold-sample (5,000)
images and extrapolated to 20,000 (labelled EXTRAPOLATED); at 5,000 qcal is also timed with the subsample
flag, to show what it changes at equal size. Everything is also measured with a trivial Snakefile written
into the temp dir (one `touch {output}` rule per image plus an aggregate list rule, same profile), so the
table shows qcal's overhead over trivial rules.

Peak memory is that of the main Snakemake process: its VmHWM read from /proc/<pid>/status while it runs
(kernel high-water mark, sampled every 50 ms), and as a cross-check ru_maxrss from wait4() ("tree": what
`/usr/bin/time -v` prints as "Maximum resident set size", the largest of the process and its waited-for
descendants; with no jobs it is the main process). "main cpu" is the main process's own user+sys time, the
cost of Snakemake itself in a cold run. Times are wall times of the whole command.

Goals (issues): dry-run < 20 s, no-op < 25 s and peak memory < 1 GB at 20,000 images; no-op < 3 s at
1,000 images. With --cprofile always (or auto, when a goal is missed) the 20,000-image dry-run and no-op
are re-run under cProfile and the top functions are printed.

Every row shows "other": cores used by other processes meanwhile (/proc/stat minus the command's own CPU);
rows above 0.15 are flagged "!": a 2-core machine shared with other work gives inflated times (--wait-quiet
waits for a quiet machine before each command). Workflow files are hashed before and after the run.
--keep keeps the temp folder; --reuse DIR re-times dry-runs and no-ops in a kept folder without redoing
the cold runs (their saved timings are shown, marked "reused").

    .venv/bin/python benchmarks/bench_scale.py --images 20000 --small 64 [--jobs 2] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import pstats
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import busy_seconds, cpu_model, median_run, wait_until_quiet  # noqa: E402

GOAL_DRY_S = 20.0
GOAL_NOOP_S = 25.0
GOAL_RSS_MB = 1024.0
GOAL_SMALL_NOOP_S = 3.0
BUSY_FLAG = 0.15
TARGET = "results/input_list.txt"
PLAIN_SUBSAMPLE = 10**9  # more ready jobs than any run has: Snakemake then considers all of them

TRIVIAL_SNAKEFILE = '''\
# Written by benchmarks/bench_scale.py: the trivial reference. One rule per image that only touches its
# output, plus an aggregate that lists them (in Snakemake's process: a 20,000-path shell line is too long).
import os

IMAGES = config["images"]
STEMS = sorted(
    os.path.relpath(os.path.join(folder, name), IMAGES)
    for folder, _, names in os.walk(IMAGES)
    for name in names
    if name.lower().endswith((".jpg", ".jpeg", ".png"))
)


rule input_list:
    input:
        expand("results/raw/{stem}.raw", stem=STEMS),
    output:
        "results/input_list.txt",
    localrule: True
    run:
        with open(output[0], "w") as f:
            f.writelines(f"{path}\\n" for path in input)


rule raw:
    input:
        os.path.join(IMAGES, "{stem}"),
    output:
        "results/raw/{stem}.raw",
    shell:
        "touch {output:q}"
'''


# --- images ------------------------------------------------------------------------------------------------

def tiny_relpath(index: int, per_folder: int = 1000) -> str:
    return f"d{index // per_folder:03d}/img_{index:05d}.jpg"


def tiny_image(index: int, width: int, height: int, seed: int = 0) -> Image.Image:
    """A small deterministic JPEG-able image: a random colour gradient plus noise (distinct bytes each)."""
    rng = np.random.default_rng([seed, index])
    y = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
    x = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
    c0, cx, cy = (rng.uniform(0, 255, 3).astype(np.float32) for _ in range(3))
    img = c0 + (cx - c0) * x + (cy - c0) * y + rng.normal(0, 8, (height, width, 3)).astype(np.float32)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "RGB")


def make_tiny_images(out: Path, count: int, width: int, seed: int = 0, per_folder: int = 1000) -> float:
    """Write images 0..count-1 under out (subfolders of per_folder); returns the total size in MB."""
    height = max(1, width * 3 // 4)
    total = 0
    for i in range(count):
        path = out / tiny_relpath(i, per_folder)
        if i % per_folder == 0:
            path.parent.mkdir(parents=True, exist_ok=True)
        tiny_image(i, width, height, seed).save(path, "JPEG", quality=90)
        total += path.stat().st_size
    return total / 1e6


# --- timed commands ----------------------------------------------------------------------------------------

@dataclass
class Run:
    wall: float
    cpu: float        # user+sys of the command and its waited-for descendants
    other: float      # cores busy with other processes meanwhile
    hwm_mb: float     # VmHWM of the main process (polled)
    maxrss_mb: float  # ru_maxrss from wait4 (max over the process tree)
    main_cpu: float   # user+sys of the main snakemake process alone (polled from /proc/<pid>/stat)
    log: Path
    jobs: dict[str, int] = field(default_factory=dict)
    nothing: bool = False  # "Nothing to be done"
    note: str = ""         # e.g. how a saved run was obtained


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table as {rule: count} ({} when nothing was to be done)."""
    m = re.search(r"^Job stats:\n.*?\n-+ +-+\n(.*?)^total +\d+", text, re.S | re.M)
    if not m:
        return {}
    return {name: int(n) for name, n in re.findall(r"^(\S+) +(\d+)$", m.group(1), re.M)}


def _poll(pid: int, box: list[float], stop: threading.Event) -> None:
    """box[0] = VmHWM (MB), box[1] = own user+sys CPU seconds of process pid, until it exits or stop."""
    tick = os.sysconf("SC_CLK_TCK")
    while not stop.is_set():
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        box[0] = max(box[0], int(line.split()[1]) / 1024)
                        break
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            box[1] = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14, 15)
        except (OSError, ValueError, IndexError):
            return
        stop.wait(0.05)


def timed(cmd: list[str], cwd: Path, log: Path, env: dict[str, str], check: bool = True) -> Run:
    os.sync()  # do not time the previous step's write-back
    busy0 = busy_seconds()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        box, stop = [0.0, 0.0], threading.Event()
        poller = threading.Thread(target=_poll, args=(proc.pid, box, stop), daemon=True)
        poller.start()
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - start
        stop.set()
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
    busy1 = busy_seconds()
    cpu = usage.ru_utime + usage.ru_stime
    other = max(0.0, (busy1 - busy0) - cpu) / wall
    text = log.read_text(errors="replace")
    if check and proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n...{text[-3000:]}")
    return Run(wall, cpu, other, box[0], usage.ru_maxrss / 1024, box[1], log, job_stats(text),
               "Nothing to be done" in text)


def note(msg: str) -> None:
    print(f"  .. [{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args, self.tmp = args, tmp
        self.logs = tmp / ("logs" if not args.reuse else f"logs_reuse_{time.strftime('%Y%m%d_%H%M%S')}")
        self.logs.mkdir()
        venv_bin = Path(sys.executable).parent
        self.env = dict(os.environ, PATH=str(venv_bin) + os.pathsep + os.environ.get("PATH", ""))
        self.env.pop("PYTHONPATH", None)
        self.snakemake = shutil.which("snakemake", path=self.env["PATH"]) or sys.exit("snakemake not found")
        self.snakefile = args.snakefile
        self.profile = args.snakefile.parent / "profiles" / "default"
        self.trivial = tmp / "trivial" / "Snakefile"
        self.trivial.parent.mkdir(exist_ok=True)
        self.trivial.write_text(TRIVIAL_SNAKEFILE)
        self.counter = 0
        self.rows: list[tuple[str, str, Run | None, str]] = []  # (group, label, run, notes)

    def log(self, name: str) -> Path:
        self.counter += 1
        return self.logs / f"{self.counter:03d}_{name}.log"

    def fresh_dir(self, name: str) -> Path:
        path = self.tmp / "work" / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        return path

    def cmd(self, design: str, workdir: Path, config: Path, *extra: str) -> list[str]:
        snakefile = self.snakefile if design == "qcal" else self.trivial
        return [self.snakemake, "-s", str(snakefile), "--directory", str(workdir), "--configfile", str(config),
                "--profile", str(self.profile), *extra, TARGET]

    def run(self, design: str, workdir: Path, config: Path, name: str, *extra: str) -> Run:
        if self.args.wait_quiet:
            wait_until_quiet(self.args.wait_quiet, threshold=0.3, say=note)
        return timed(self.cmd(design, workdir, config, *extra), workdir, self.log(f"{design}_{name}"), self.env)

    def cprofile(self, design: str, workdir: Path, config: Path, name: str, *extra: str) -> Path:
        out = self.tmp / f"{design}_{name}.prof"
        cmd = [sys.executable, "-m", "cProfile", "-o", str(out), *self.cmd(design, workdir, config, *extra)]
        timed(cmd, workdir, self.log(f"cprofile_{design}_{name}"), self.env)
        return out


# --- measurements ------------------------------------------------------------------------------------------

def measure_dry(b: Bench, design: str, n: int, config: Path, reps: int) -> Run:
    """Dry-run on fresh work dirs (median of reps)."""
    runs = []
    for i in range(reps):
        note(f"{design} {n}: dry-run {i + 1}/{reps}")
        runs.append(b.run(design, b.fresh_dir(f"{design}_{n}_dry"), config, f"dry_{n}", "-n"))
    shutil.rmtree(b.tmp / "work" / f"{design}_{n}_dry")
    dry = median_run(runs)
    b.rows.append((f"{design} @ {n}", "dry-run -n (fresh dir)", dry, f"DAG of {sum(dry.jobs.values())} jobs"))
    return dry


def measure_cold(b: Bench, design: str, n: int, config: Path, subsample: int = 0,
                 need_work: bool = True) -> tuple[Run, Path]:
    """One cold run on a fresh work dir (or, with --reuse, the saved timing of an earlier completed one;
    need_work: only if its completed work dir is still there, for a no-op to follow)."""
    jobs = b.args.jobs
    name = f"{design}_{n}" + (f"_sub{subsample}" if subsample else "")
    # profiles/default sets scheduler-subsample 500; a "plain" run overrides it with a size it never reaches
    extra = ["-j", str(jobs), "--scheduler-subsample", str(subsample or PLAIN_SUBSAMPLE)]
    saved = b.tmp / f"cold_{name}.json"
    work = b.tmp / "work" / name
    reused = ""
    if b.args.reuse and saved.is_file() and (not need_work or (work / TARGET).is_file()):
        d = json.loads(saved.read_text())
        cold = Run(**{**d, "log": Path(d["log"])})
        reused = (f" [reused from {time.strftime('%m-%d %H:%M', time.localtime(saved.stat().st_mtime))}"
                  + (f"; {cold.note}" if cold.note else "") + "]")
        note(f"{name}: reusing the completed cold run in {work}")
    else:
        work = b.fresh_dir(name)
        note(f"{name}: cold run {' '.join(extra)} ({n} jobs)")
        cold = b.run(design, work, config, f"cold_{n}" + (f"_sub{subsample}" if subsample else ""), *extra)
        saved.write_text(json.dumps({**dataclasses.asdict(cold), "log": str(cold.log)}))
    listed = (work / TARGET).read_text().count("\n") if (work / TARGET).is_file() else n
    label = f"cold -j{jobs}" + (f" --scheduler-subsample {subsample}" if subsample else "") + " (1 run)"
    b.rows.append((f"{design} @ {n}", label, cold,
                   f"{cold.wall / n * 1000:.0f} ms/job, main process {cold.main_cpu / n * 1000:.0f} ms CPU/job; "
                   f"{listed} listed" + ("" if listed == n else f" (EXPECTED {n})") + reused))
    return cold, work


def measure_noop(b: Bench, design: str, n: int, config: Path, work: Path, reps: int) -> Run:
    runs = []
    for i in range(reps):
        note(f"{design} {n}: no-op {i + 1}/{reps}")
        runs.append(b.run(design, work, config, f"noop_{n}", "-j", str(b.args.jobs)))
    noop = median_run(runs)
    b.rows.append((f"{design} @ {n}", "no-op re-run", noop,
                   "nothing to be done" if noop.nothing and not noop.jobs else f"RAN {noop.jobs}"))
    return noop


def extrapolate(n1: int, t1: float, n2: int, t2: float, n: int) -> tuple[float, float, float]:
    """Fit T(N) = a*N + c*N^2 (per-job cost + a scheduler round whose cost grows with the ready jobs)
    through two cold runs; returns (a, c, T(n)). Falls back to linear through the larger run if c < 0."""
    c = (t2 / n2 - t1 / n1) / (n2 - n1)
    a = t1 / n1 - c * n1
    if c < 0 or a < 0:
        a, c = t2 / n2, 0.0
    return a, c, a * n + c * n * n


def workflow_hash(snakefile: Path) -> str:
    root = snakefile.parent
    files = [snakefile, *sorted((root / "rules").glob("*.smk")), *sorted((root / "scripts").rglob("*.py")),
             *sorted((root / "config").glob("*.yaml")), *sorted((root / "profiles").rglob("*.yaml"))]
    h = hashlib.sha256()
    for f in files:
        if f.is_file():
            h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def machine_facts(b: Bench) -> list[str]:
    cpu = cpu_model()
    mem = "?"
    try:
        with open("/proc/meminfo") as f:
            mem = f"{int(f.readline().split()[1]) / 1024**2:.1f} GiB"
    except (OSError, ValueError):
        pass
    smk = subprocess.run([b.snakemake, "--version"], capture_output=True, text=True, env=b.env).stdout.strip()
    fs = subprocess.run(["df", "-hT", str(b.tmp)], capture_output=True, text=True).stdout.splitlines()[-1:]
    git = subprocess.run(["git", "--no-optional-locks", "-C", str(b.snakefile.parent), "log", "-1",
                          "--format=%h %s"], capture_output=True, text=True).stdout.strip()[:70]
    dirty = subprocess.run(["git", "--no-optional-locks", "-C", str(b.snakefile.parent), "status",
                            "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.split("\n")
    dirty = [d.strip() for d in dirty if d.strip()]
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return [
        f"machine   : {platform.node()}  {platform.system()} {platform.release()}  {cpu}",
        f"cpus/mem  : nproc={usable}, {mem} RAM; load average at start "
        + " ".join(f"{x:.2f}" for x in os.getloadavg()),
        f"disk      : {fs[0] if fs else '?'}",
        f"python    : {platform.python_version()} ({sys.executable})",
        f"snakemake : {smk}  (-j{b.args.jobs}, profile {b.profile})",
        f"workflow  : {b.snakefile}  HEAD {git}; uncommitted tracked changes: "
        + (", ".join(dirty) if dirty else "none"),
        f"temp dir  : {b.tmp}",
    ]


def fmt_mb(mb: float) -> str:
    return f"{mb:7.0f} MB" if mb else "      ? MB"


def print_profile(path: Path, title: str, top: int) -> None:
    print(f"\n--- cProfile: {title} ---")
    for key in ("cumulative", "tottime"):
        s = io.StringIO()
        st = pstats.Stats(str(path), stream=s)
        st.sort_stats(key).print_stats(top)
        text = s.getvalue()
        head = text.find("   ncalls")
        total = re.search(r"in ([\d.]+) seconds", text)
        print(f"[sorted by {key}; total {total.group(1) if total else '?'} s]")
        print(text[head:].rstrip())
    # The workflow's own functions (rules/*.smk, Snakefile, qcal), whatever their rank.
    s = io.StringIO()
    st = pstats.Stats(str(path), stream=s)
    st.sort_stats("cumulative").print_stats(r"(\.smk|Snakefile|/qcal/)", 25)
    text = s.getvalue()
    head = text.find("   ncalls")
    print("[the workflow's own code (.smk / Snakefile / qcal), by cumulative]")
    print(text[head:].rstrip() if head >= 0 else "(none)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20000, help="large image count (goal sizes: 20,000)")
    parser.add_argument("--small-images", type=int, default=1000,
                        help="small image count for the 1,000-image no-op goal (0 to skip); <= --images")
    parser.add_argument("--cold-sample", type=int, default=5000, metavar="N",
                        help="also time a plain cold run at N images (multiple of 1,000; 0 to skip), to extrapolate "
                        "the plain cold run to --images from N and --small-images")
    parser.add_argument("--plain-cold-max", type=int, default=5000, metavar="N",
                        help="above N images the full-size cold runs use --scheduler-subsample (a plain one "
                        "takes hours at 20,000: every scheduler round stats the inputs of every ready job)")
    parser.add_argument("--subsample", type=int, default=500, metavar="K",
                        help="--scheduler-subsample for cold runs above --plain-cold-max, and for the qcal "
                        "comparison run at --cold-sample")
    parser.add_argument("--small", type=int, default=64, metavar="WIDTH",
                        help="width of the generated JPEGs in pixels (height = 3/4 of it)")
    parser.add_argument("--jobs", type=int, default=2, help="snakemake -j for the cold runs")
    parser.add_argument("--repeat", type=int, default=3, help="runs per dry-run/no-op; medians are reported")
    parser.add_argument("--trivial", action=argparse.BooleanOptionalAction, default=True,
                        help="also measure the trivial touch Snakefile (reference)")
    parser.add_argument("--cprofile", choices=["auto", "always", "never"], default="auto",
                        help="profile the large dry-run and no-op (auto: only when a goal is missed)")
    parser.add_argument("--top", type=int, default=30, help="functions shown per profile listing")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="before each timed command wait up to this long for other processes to use < 0.3 "
                        "cores (a shared 2-core machine distorts timings)")
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder-size", type=int, default=1000, help="images per subfolder")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--reuse", type=Path, metavar="DIR",
                        help="a temp folder kept (--keep) by an earlier run with the same --images/--small-images: "
                        "reuse its images and completed cold runs (their saved timings), re-time dry-runs and no-ops")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, outputs)")
    args = parser.parse_args(argv)
    args.snakefile = args.snakefile.resolve()
    args.repeat = max(1, args.repeat)
    if args.small_images > args.images:
        parser.error("--small-images must not exceed --images")
    for opt in ("small_images", "cold_sample"):
        value = getattr(args, opt)
        if value and value % args.folder_size and value != args.images:
            parser.error(f"--{opt.replace('_', '-')} must be a multiple of --folder-size (it uses the first subfolders)")
    if args.cold_sample >= args.images:
        args.cold_sample = 0
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)
    if args.reuse:
        tmp = args.reuse.resolve()
        args.keep = True
        if not (tmp / "images").is_dir():
            parser.error(f"--reuse {tmp}: no images/ folder there")
    else:
        tmp = Path(tempfile.mkdtemp(prefix="qcal-bench-scale-", dir=args.tmp))
    try:
        return run_all(Bench(args, tmp))
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def write_config(path: Path, images: Path) -> Path:
    path.write_text(f'images: "{images}"\npreprocess:\n  height: 32\n  width: 32\nevaluation:\n  holdout: 0\n')
    return path


def run_all(b: Bench) -> int:
    args, tmp = b.args, b.tmp
    n, m, reps = args.images, args.small_images, args.repeat
    print("\n".join(machine_facts(b)), flush=True)
    hash0 = workflow_hash(b.snakefile)

    images = tmp / "images"
    t0 = time.perf_counter()
    if args.reuse:
        files = list(images.rglob("*.jpg"))
        if len(files) != n:
            sys.exit(f"--reuse: {images} holds {len(files)} images, not --images {n}")
        size, how = sum(f.stat().st_size for f in files) / 1e6, "reused"
    else:
        note(f"generating {n} JPEGs of {args.small}x{args.small * 3 // 4}")
        size = make_tiny_images(images, n, args.small, args.seed, args.folder_size)
        how = f"generated in {time.perf_counter() - t0:.1f} s"
    print(f"images    : {n} JPEGs, {size:.1f} MB, {how} under {images} "
          f"(subfolders of {args.folder_size}); config: height/width 32, holdout 0", flush=True)

    def config_for(count: int) -> Path:
        """Config for the first `count` images: the first count/1000 subfolders, hard-linked (no copy)."""
        folder = images if count == n else tmp / f"images_{count}"
        if not folder.is_dir():
            for k in range(count // args.folder_size):
                shutil.copytree(images / f"d{k:03d}", folder / f"d{k:03d}", copy_function=os.link)
        return write_config(tmp / f"config_{count}.yaml", folder)

    designs = ["qcal"] + (["trivial"] if args.trivial else [])
    res: dict[tuple[str, int], dict[str, Run]] = {}
    sub = args.subsample
    # small set: everything; sample: plain cold only (+ qcal subsampled); full set: everything
    if m and m != n:
        cfg = config_for(m)
        for design in designs:
            r = res.setdefault((design, m), {})
            r["dry"] = measure_dry(b, design, m, cfg, reps)
            r["cold"], work = measure_cold(b, design, m, cfg)
            r["noop"] = measure_noop(b, design, m, cfg, work, reps)
    s_n = args.cold_sample
    if s_n and s_n != m:
        cfg = config_for(s_n)
        for design in designs:
            r = res.setdefault((design, s_n), {})
            r["cold"], _ = measure_cold(b, design, s_n, cfg, need_work=False)
            shutil.rmtree(b.tmp / "work" / f"{design}_{s_n}", ignore_errors=True)
            if design == "qcal" and sub:
                r["cold_sub"], _ = measure_cold(b, design, s_n, cfg, sub, need_work=False)
                shutil.rmtree(b.tmp / "work" / f"{design}_{s_n}_sub{sub}", ignore_errors=True)
    config = config_for(n)
    big_sub = sub if n > args.plain_cold_max else 0
    for design in designs:
        r = res.setdefault((design, n), {})
        r["dry"] = measure_dry(b, design, n, config, reps)
        cold, work = measure_cold(b, design, n, config, big_sub)
        r["cold_sub" if big_sub else "cold"] = cold
        r["noop"] = measure_noop(b, design, n, config, work, reps)
        r["work"] = work  # type: ignore[assignment]

    q = res["qcal", n]
    qs = res.get(("qcal", m))
    goals = [
        (f"dry-run, {n} images", q["dry"].wall, GOAL_DRY_S, "s"),
        (f"no-op re-run, {n} images", q["noop"].wall, GOAL_NOOP_S, "s"),
        (f"peak RSS main process, dry-run {n}", q["dry"].hwm_mb or q["dry"].maxrss_mb, GOAL_RSS_MB, "MB"),
        (f"peak RSS main process, no-op {n}", q["noop"].hwm_mb or q["noop"].maxrss_mb, GOAL_RSS_MB, "MB"),
        (f"peak RSS main process, cold run {n}", q.get("cold", q.get("cold_sub")).hwm_mb, GOAL_RSS_MB, "MB"),
    ]
    if qs:
        goals.append((f"no-op re-run, {m} images", qs["noop"].wall, GOAL_SMALL_NOOP_S, "s"))
    missed = any(v >= goal for _, v, goal, _ in goals)

    profiles = []
    if args.cprofile == "always" or (args.cprofile == "auto" and missed):
        note("cProfile: qcal dry-run and no-op at full size")
        profiles.append((b.cprofile("qcal", b.fresh_dir("qcal_prof_dry"), config, "dry", "-n"),
                         f"qcal dry-run, {n} images"))
        profiles.append((b.cprofile("qcal", q["work"], config, "noop", "-j", str(args.jobs)),  # type: ignore
                         f"qcal no-op re-run, {n} images"))
    for path in (b.tmp / "work" / "qcal_prof_dry",):
        shutil.rmtree(path, ignore_errors=True)
    hash1 = workflow_hash(b.snakefile)

    # --- report -----------------------------------------------------------------------------------------
    print(f"\nTarget {TARGET}; dry-run and no-op: median of {reps} runs; cold: 1 run.")
    print("peak = VmHWM of the main snakemake process (polled); tree = wait4 ru_maxrss (max over the process "
          "and its jobs, = /usr/bin/time -v);\ncpu = user+sys incl. children; other = cores used by other "
          f"processes meanwhile (! above {BUSY_FLAG})\n")
    width = max(len(label) for _, label, _, _ in b.rows)
    header = f"{'':<{width}}  {'wall':>9}  {'cpu':>8}  {'peak':>10}  {'tree':>10}  {'other':>6}  notes"
    for group in dict.fromkeys(g for g, _, _, _ in b.rows):
        print(f"{group}")
        print(header)
        for g, label, r, notes in b.rows:
            if g != group or r is None:
                continue
            flag = "!" if r.other > BUSY_FLAG else " "
            print(f"{label:<{width}}  {r.wall:8.2f}s  {r.cpu:7.1f}s  {fmt_mb(r.hwm_mb)}  {fmt_mb(r.maxrss_mb)}"
                  f"  {r.other:5.2f}{flag}  {notes}")
        print()
    if args.trivial:
        print("qcal / trivial (wall time; peak = main-process VmHWM in the no-op):")
        for size_n in sorted({k for _, k in res}):
            qq, tt = res.get(("qcal", size_n), {}), res.get(("trivial", size_n), {})
            parts = []
            for key, label in (("dry", "dry-run"), ("noop", "no-op"), ("cold", "cold"), ("cold_sub", "cold-sub")):
                if key in qq and key in tt:
                    parts.append(f"{label} {qq[key].wall:.1f}/{tt[key].wall:.1f} s = {qq[key].wall / tt[key].wall:.2f}x")
            if "noop" in qq and "noop" in tt:
                parts.append(f"peak {qq['noop'].hwm_mb:.0f}/{tt['noop'].hwm_mb:.0f} MB")
            if parts:
                print(f"  {size_n:>6} images: " + ";  ".join(parts))
        print()
    points = sorted(k for d, k in res if d == "qcal" and "cold" in res["qcal", k] and k != n)
    if len(points) >= 2 and "cold" not in res["qcal", n]:
        n1, n2 = points[0], points[-1]
        print(f"EXTRAPOLATED plain cold run (no --scheduler-subsample) at {n} images, from the measured plain cold "
              f"runs at {n1} and {n2}\n(fit T(N) = a*N + c*N^2: a per-job cost plus scheduler rounds whose cost grows "
              "with the number of ready jobs):")
        for design in designs:
            if all("cold" in res.get((design, k), {}) for k in (n1, n2)):
                t1, t2 = res[design, n1]["cold"].wall, res[design, n2]["cold"].wall
                a, c, t = extrapolate(n1, t1, n2, t2, n)
                measured = res[design, n].get("cold_sub")
                print(f"  {design:<8} a = {a * 1000:.1f} ms/job, c = {c * 1e6:.2f} us/job^2  ->  about {t / 60:.0f} min "
                      f"at {n} (extrapolated)" + (f"; measured with --scheduler-subsample {sub}: "
                                                   f"{measured.wall / 60:.1f} min" if measured else ""))
        print()
    print("Goals:")
    for label, value, goal, unit in goals:
        verdict = "PASS" if value < goal else "FAIL"
        print(f"  {label:<42} {value:9.1f} {unit:<2}  goal < {goal:g} {unit:<2}  {verdict}")
    if hash0 != hash1:
        print(f"\nWARNING: workflow files changed while this ran ({hash0} -> {hash1}); rows mix revisions")
    else:
        print(f"\nworkflow files unchanged during the run (hash {hash0})")
    for path, title in profiles:
        print_profile(path, title, args.top)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
