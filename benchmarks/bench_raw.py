"""Benchmark qcal's per-image raw stage: Snakemake jobs against a plain Python loop, in one go.

What is compared, on the same generated JPEGs (benchmarks/make_images.py) and the same machine:

  plain loop      one `python` process that imports qcal.preprocess and calls image_to_raw() on every
                  image (wall time of the subprocess, so interpreter start is included);
  snakemake cold  `snakemake -s <repo>/Snakefile --configfile CFG -j JOBS results/input_list.txt` in a
                  fresh work dir: the whole command (start-up, DAG, one raw job per image, which runs
                  qcal.preprocess.image_to_raw in Snakemake's own process, and the input-list job). The target is the input list rather than `quantize`,
                  because `quantize` now also fetches/converts a model and calibrates (--target to change);
  no-op re-run    the same command again with nothing changed, at N images and at --noop-images;
  one edit        one JPEG rewritten with different content, then the same command: it must run exactly
                  1 raw job + the input list (checked from Snakemake's "Job stats" table and the
                  "Finished ... (Rule: raw)" lines);
  naive jobs      (reference, --baseline-numpy-jobs, on by default) benchmarks/naive/Snakefile: one shell
                  job per image whose Python imports numpy + Pillow -- the design the issue measured at 8.5x;
  touch jobs      (reference, --touch-jobs, on by default) benchmarks/touch/Snakefile: the same DAG whose
                  jobs only `touch` their output, i.e. Snakemake's own cost without any work;

Goals (from the issue): snakemake cold <= 2.5x the plain loop; no-op re-run of 1,000 images < 3 s.

The Snakefile's default profile (profiles/default next to it) is applied by Snakemake itself when the
Snakefile is given with -s from another folder; the script shows Snakemake's notice. Reference and
alternative Snakefiles get the same profile explicitly, so only the job design differs.

Other processes on the machine distort timings on a 2-core box, so every row also shows "other": the
CPU (in cores, averaged over the run) that processes other than the timed command used meanwhile, from
/proc/stat minus the command's own CPU. Rows above 0.15 are flagged with "!".

Work dirs live under one temporary folder that is removed at the end (--keep to keep it; raws take
~5 MB per image). Timed commands run with this script's Python environment first on PATH, because
the workflow imports qcal. Medians of --repeat runs are reported.

    .venv/bin/python benchmarks/bench_raw.py --images 200 --jobs 2 --noop-images 1000
"""

from __future__ import annotations

import argparse
import filecmp
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import (bench_env, busy_seconds, cpu_model, git_snapshot, median_run, qcal_config_text,  # noqa: E402
                      wait_until_quiet)
from make_images import make_images, write_image  # noqa: E402

GOAL_COLD_RATIO = 2.5
GOAL_NOOP_SECONDS = 3.0
NOOP_GOAL_IMAGES = 1000
BUSY_FLAG = 0.15  # cores used by other processes during a run above which the row is flagged

# The plain loop, run as `python -c` so its wall time includes interpreter start and imports.
PLAIN_LOOP = textwrap.dedent("""
    import inspect, os, sys
    from qcal.images import raw_stem
    try:
        from qcal.images import scan_images
        find_images = lambda folder: scan_images(folder).images  # noqa: E731
    except ImportError:  # a --git-ref snapshot from before scan_images
        from qcal.images import find_images
    from qcal.preprocess import image_to_raw, resolve_profile
    src, out = sys.argv[1], sys.argv[2]
    profile = resolve_profile("yolov5")
    # Pass the image id the workflow passes (its path under the image folder), when the function has one.
    with_id = "image_id" in inspect.signature(image_to_raw).parameters
    for rel in find_images(src):
        stem = os.path.join(out, raw_stem(rel))
        extra = {"image_id": rel} if with_id else {}
        image_to_raw(os.path.join(src, rel), stem + ".raw", stem + ".json", profile, **extra)
""")


@dataclass
class Run:
    """One timed command."""

    wall: float
    cpu: float    # user + sys of the command and all its (waited-for) descendants
    other: float  # average cores used meanwhile by other processes on the machine
    log: Path
    job_stats: dict[str, int] = field(default_factory=dict)


def job_stats(text: str) -> dict[str, int]:
    """Snakemake's "Job stats" table as {rule: count} ({} when nothing was to be done)."""
    m = re.search(r"^Job stats:\n.*?\n-+ +-+\n(.*?)^total +\d+", text, re.S | re.M)
    if not m:
        return {}
    return {name: int(n) for name, n in re.findall(r"^(\S+) +(\d+)$", m.group(1), re.M)}


def timed(cmd: list[str], cwd: Path, log: Path, env: dict[str, str]) -> Run:
    """Run cmd, return wall and CPU time; output goes to log. Fails loudly with the log's tail."""
    os.sync()  # flush the previous step's writes (hundreds of MB of raws) so they are not timed here
    before, busy0 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - start
    after, busy1 = resource.getrusage(resource.RUSAGE_CHILDREN), busy_seconds()
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    other = max(0.0, (busy1 - busy0) - cpu) / wall
    text = log.read_text(errors="replace")
    if proc.returncode != 0:
        sys.exit(f"command failed ({proc.returncode}): {' '.join(map(str, cmd))}\n...{text[-3000:]}")
    return Run(wall, cpu, other, log, job_stats(text))


def note(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


class Bench:
    """Runs the commands; every work dir is a sub-folder of `tmp`."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        self.logs = tmp / "logs"
        self.logs.mkdir()
        self.code = "working tree"
        scripts = None
        if args.git_ref:  # benchmark a committed revision, immune to edits made while this runs
            commit = git_snapshot(args.git_ref, tmp / "src")
            self.code = f"git {args.git_ref} = {commit[:12]} (snapshot; PYTHONPATH points at its scripts/)"
            args.snakefile = tmp / "src" / "Snakefile"
            scripts = tmp / "src" / "scripts"
        self.env = bench_env(scripts)
        self.snakemake = shutil.which("snakemake", path=self.env["PATH"]) or sys.exit("snakemake not found")
        self.python = sys.executable
        self.profile_dir = args.snakefile.parent / "profiles" / "default"
        self.counter = 0
        self.profile_notice = "(not run yet)"
        self.rows: list[tuple[str, Run, str]] = []

    def log(self, name: str) -> Path:
        self.counter += 1
        return self.logs / f"{self.counter:03d}_{name}.log"

    def fresh_dir(self, name: str) -> Path:
        path = self.tmp / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir()
        return path

    def row(self, label: str, run: Run, notes: str) -> None:
        self.rows.append((label, run, notes))

    # --- the measured commands -------------------------------------------------------------------------

    def plain_loop(self, images: Path) -> tuple[Run, Path]:
        out = self.fresh_dir("plain")
        return timed([self.python, "-c", PLAIN_LOOP, str(images), str(out)], self.tmp, self.log("plain"),
                     self.env), out

    def qcal(self, workdir: Path, config: Path, name: str) -> Run:
        """qcal's own workflow, run in workdir the way a user runs it from another folder."""
        cmd = [self.snakemake, "-s", str(self.args.snakefile), "--configfile", str(config),
               "-j", str(self.args.jobs), self.args.target]
        run = timed(cmd, workdir, self.log(name), self.env)
        m = re.search(r"^Using .*profile.*$", run.log.read_text(), re.M)
        self.profile_notice = m.group(0) if m else "(no profile notice: no profile was applied)"
        return run

    def other_design(self, snakefile: Path, workdir: Path, images: Path, name: str, *extra: str,
                     config: tuple[str, ...] = ()) -> Run:
        """A reference/alternative Snakefile from benchmarks/, with qcal's profile for a fair comparison."""
        cmd = [self.snakemake, "-s", str(snakefile), "--config", f"images={images}", *config, *extra,
               "-j", str(self.args.jobs), "--workflow-profile", str(self.profile_dir)]
        return timed(cmd, workdir, self.log(name), self.env)

    # --- helpers -----------------------------------------------------------------------------------------

    def write_config(self, path: Path, images: Path) -> Path:
        path.write_text(qcal_config_text(self.args.snakefile, images))
        return path

    @staticmethod
    def warm(images: Path) -> None:
        """Read every image once so neither side pays for the first read from disk."""
        for p in images.rglob("*.jpg"):
            p.read_bytes()

    @staticmethod
    def same_raws(a: Path, b: Path) -> str:
        """Compare every .raw under a and b byte for byte; a short verdict."""
        ra = sorted(p.relative_to(a) for p in a.rglob("*.raw"))
        rb = sorted(p.relative_to(b) for p in b.rglob("*.raw"))
        if ra != rb:
            return f"DIFFERENT file sets ({len(ra)} vs {len(rb)})"
        diff = [str(p) for p in ra if not filecmp.cmp(a / p, b / p, shallow=False)]
        return f"all {len(ra)} identical" if not diff else f"{len(diff)} of {len(ra)} DIFFER, e.g. {diff[0]}"


def edit_check(run: Run, job_rule: str = "raw") -> tuple[bool, str]:
    """After one edited image: exactly one `job_rule` job and the input list, nothing else."""
    planned = {k: v for k, v in run.job_stats.items() if k not in ("quantize", "all")}  # target rules
    finished = len(re.findall(rf"\(Rule: {job_rule}\)", run.log.read_text()))
    ok = planned == {job_rule: 1, "input_list": 1} and finished == 1
    return ok, ("OK: " if ok else "WRONG: ") + ", ".join(f"{k} {v}" for k, v in planned.items())


def machine_facts(b: Bench) -> list[str]:
    cpu = cpu_model()
    versions = subprocess.run(
        [b.python, "-c", "import PIL, numpy; print(PIL.__version__, numpy.__version__)"],
        capture_output=True, text=True, env=b.env).stdout.split() + ["?", "?"]
    smk = subprocess.run([b.snakemake, "--version"], capture_output=True, text=True, env=b.env).stdout.strip()
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = [
        f"machine   : {platform.node()}  {platform.system()} {platform.release()}  {cpu}",
        f"cpus      : nproc={usable} (os.cpu_count={os.cpu_count()}); load average at start {load}",
        f"python    : {platform.python_version()} ({b.python})",
        f"snakemake : {smk}   Pillow {versions[0]}   numpy {versions[1]}",
        f"workflow  : {b.args.snakefile}  target {b.args.target}",
        f"code      : {b.code}",
        f"temp dir  : {b.tmp}",
    ]
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        lines.append("note      : PYTHONDONTWRITEBYTECODE is set: qcal's own modules are compiled at every job start")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200, help="images for the cold/plain comparison")
    parser.add_argument("--jobs", type=int, default=2, help="snakemake -j")
    parser.add_argument("--noop-images", type=int, default=NOOP_GOAL_IMAGES,
                        help="images for the large no-op re-run (0 to skip); also timed cold and as a plain loop")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement; medians are reported")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-numpy-jobs", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the naive numpy-per-job design (benchmarks/naive)")
    parser.add_argument("--touch-jobs", action=argparse.BooleanOptionalAction, default=True,
                        help="also time Snakemake's own per-job cost (benchmarks/touch)")
    parser.add_argument("--snakefile", type=Path, default=REPO / "Snakefile")
    parser.add_argument("--git-ref", help="benchmark this committed revision (e.g. HEAD) instead of the working "
                        "tree, from a `git archive` snapshot in the temp folder")
    parser.add_argument("--target", default="results/input_list.txt",
                        help="what the timed qcal runs build (default: the input list, i.e. every raw)")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for other processes to use < 0.2 cores")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, outputs)")
    args = parser.parse_args(argv)
    args.snakefile = args.snakefile.resolve()
    args.repeat = max(1, args.repeat)
    if args.tmp:
        args.tmp.mkdir(parents=True, exist_ok=True)

    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet, say=note)
    tmp = Path(tempfile.mkdtemp(prefix="qcal-bench-", dir=args.tmp))
    try:
        return run_all(Bench(args, tmp))
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(b: Bench) -> int:
    args, tmp = b.args, b.tmp
    n, reps, jobs = args.images, args.repeat, args.jobs
    print("\n".join(machine_facts(b)), flush=True)

    images = tmp / f"images_{n}"
    note(f"generating {n} JPEGs")
    make_images(images, n, args.seed)
    b.warm(images)
    config = b.write_config(tmp / f"config_{n}.yaml", images)
    print(f"config    : {config.read_text().strip()}")
    edited = [2 + 8 * i for i in range(reps)]  # one image per edit run (all in the street/ subfolder)

    def edit_images(folder: Path, variant: int) -> None:
        for i, index in enumerate(edited):
            write_image(folder, index, args.seed, variant=(i + 1) * variant)

    # 1. plain loop and cold Snakemake, alternated so drift (other load, thermal) hits both alike
    plain_runs, cold_runs, work = [], [], tmp
    for i in range(reps):
        note(f"plain loop {i + 1}/{reps}")
        run, plain_out = b.plain_loop(images)
        plain_runs.append(run)
        note(f"snakemake cold {i + 1}/{reps}")
        work = b.fresh_dir(f"qcal_{n}")
        cold_runs.append(b.qcal(work, config, "cold"))
    plain, cold = median_run(plain_runs), median_run(cold_runs)
    stats = cold_runs[-1].job_stats
    b.row("plain loop (1 process)", plain, f"{plain.wall / n * 1000:.1f} ms/image")
    b.row(f"snakemake cold, -j{jobs}", cold,
          f"{cold.wall / n * 1000:.1f} ms/image; {stats.get('raw', 0)} raw + {stats.get('input_list', 0)} list"
          f" jobs; raws vs plain: {b.same_raws(plain_out, work / 'results' / 'raw')}")

    # 2. no-op and one edit
    runs = []
    for i in range(reps):
        note(f"no-op re-run at {n} {i + 1}/{reps}")
        runs.append(b.qcal(work, config, "noop"))
    noop_n = median_run(runs)
    b.row(f"no-op re-run, {n} images", noop_n, "nothing ran" if not noop_n.job_stats else f"RAN {noop_n.job_stats}")
    runs, edit_ok = [], True
    for i, index in enumerate(edited):
        note(f"one image edited {i + 1}/{reps}")
        write_image(images, index, args.seed, variant=i + 1)
        runs.append(b.qcal(work, config, "edit"))
        edit_ok &= edit_check(runs[-1])[0]
    edit = median_run(runs)
    b.row("one image edited -> re-run", edit, edit_check(edit)[1] + ("" if edit_ok else " (some run WRONG)"))
    edit_images(images, 0)  # restore: the other designs see the plain loop's images

    # 3. references
    naive = touch = None
    if args.baseline_numpy_jobs:
        runs = []
        for i in range(reps):
            note(f"naive numpy jobs {i + 1}/{reps}")
            naive_work = b.fresh_dir("naive")
            runs.append(b.other_design(HERE / "naive" / "Snakefile", naive_work, images, "naive"))
        naive = median_run(runs)
        b.row(f"naive numpy jobs, -j{jobs} (ref)", naive, f"{naive.wall / n * 1000:.1f} ms/image; raws vs plain: "
              f"{b.same_raws(plain_out, naive_work / 'results' / 'raw')}")
        shutil.rmtree(naive_work)
    if args.touch_jobs:
        runs = []
        for i in range(reps):
            note(f"touch jobs {i + 1}/{reps}")
            runs.append(b.other_design(HERE / "touch" / "Snakefile", b.fresh_dir("touch"), images, "touch"))
        touch = median_run(runs)
        b.row(f"touch jobs, -j{jobs} (ref)", touch, f"Snakemake alone: {touch.wall / n * 1000:.1f} ms/job")

    # 4. the large set: cold (needed anyway to have something to re-run), plain loop, no-op
    m, noop_m, plain_m, cold_m = args.noop_images, None, None, None
    if m:
        for name in ("plain", f"qcal_{n}"):  # free disk first: ~5 MB per raw
            shutil.rmtree(tmp / name, ignore_errors=True)
        big = tmp / f"images_{m}"
        note(f"preparing {m} images (the {n} plus new ones)")
        shutil.copytree(images, big)  # image i is the same in every set
        for i in range(n, m):
            write_image(big, i, args.seed)
        b.warm(big)
        big_config = b.write_config(tmp / f"config_{m}.yaml", big)
        note(f"plain loop at {m}")
        plain_m, _ = b.plain_loop(big)
        shutil.rmtree(tmp / "plain")
        note(f"snakemake cold at {m}")
        big_work = b.fresh_dir(f"qcal_{m}")
        cold_m = b.qcal(big_work, big_config, "cold_big")
        b.row(f"plain loop, {m} images (1 run)", plain_m, f"{plain_m.wall / m * 1000:.1f} ms/image")
        b.row(f"snakemake cold, {m} images (1 run)", cold_m, f"{cold_m.wall / m * 1000:.1f} ms/image")
        runs = []
        for i in range(reps):
            note(f"no-op re-run at {m} {i + 1}/{reps}")
            runs.append(b.qcal(big_work, big_config, "noop_big"))
        noop_m = median_run(runs)
        b.row(f"no-op re-run, {m} images", noop_m,
              "nothing ran" if not noop_m.job_stats else f"RAN {noop_m.job_stats}")

    # --- report ----------------------------------------------------------------------------------------------
    size = sum(p.stat().st_size for p in images.rglob("*.jpg")) / 1e6
    print(f"profile   : {b.profile_notice}")
    print(f"\n{n} JPEGs ({size:.1f} MB), -j{jobs}, median of {reps} run(s) unless marked (1 run).")
    print("cpu = user+sys of the command and its children; other = cores busy with other processes meanwhile\n")
    width = max(len(label) for label, _, _ in b.rows)
    print(f"{'measurement':<{width}}  {'wall':>9}  {'cpu':>9}  {'other':>6}  notes")
    print(f"{'-' * width}  {'-' * 9}  {'-' * 9}  {'-' * 6}  {'-' * 5}")
    for label, run, notes in b.rows:
        flag = "!" if run.other > BUSY_FLAG else " "
        print(f"{label:<{width}}  {run.wall:7.2f} s  {run.cpu:7.2f} s  {run.other:5.2f}{flag}  {notes}")
    if any(run.other > BUSY_FLAG for _, run, _ in b.rows):
        print(f"\n! other processes used more than {BUSY_FLAG} cores during that run: treat it with suspicion")

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    ratio = cold.wall / plain.wall
    print("\nratios (wall time / the plain loop's wall time on the same images)")
    print(f"  snakemake cold / plain loop, {n:<5}  {ratio:6.2f}x   goal <= {GOAL_COLD_RATIO}x   "
          f"{verdict(ratio <= GOAL_COLD_RATIO)}")
    floor = cold.cpu / (jobs * plain.cpu)
    print(f"  CPU: snakemake cold / plain loop   {cold.cpu / plain.cpu:6.2f}x   -> even with all {jobs} cores busy the"
          f" whole time, cold >= {floor:.2f}x the plain loop")
    print(f"  {'':33}            (CPU time is much less distorted by other load than wall time)")
    if cold_m and plain_m:
        print(f"  snakemake cold / plain loop, {m:<5}  {cold_m.wall / plain_m.wall:6.2f}x   (1 run each)")
    if naive:
        print(f"  naive numpy jobs / plain loop      {naive.wall / plain.wall:6.2f}x   (reference; the issue measured 8.5x)")
        print(f"  snakemake cold / naive numpy jobs  {cold.wall / naive.wall:6.2f}x")
    if touch:
        print(f"  touch jobs / plain loop            {touch.wall / plain.wall:6.2f}x   (Snakemake alone, no work)")
    print("\nno-op and incremental")
    print(f"  no-op re-run, {n} images            {noop_n.wall:6.2f} s")
    if noop_m:
        goal = (f"goal < {GOAL_NOOP_SECONDS:.0f} s   {verdict(noop_m.wall < GOAL_NOOP_SECONDS)}"
                if m >= NOOP_GOAL_IMAGES else "(the goal is at 1,000)")
        print(f"  no-op re-run, {m} images           {noop_m.wall:6.2f} s    {goal}")
    print(f"  one edit -> 1 raw + input list      {'yes' if edit_ok else 'NO'} ({edit.wall:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
