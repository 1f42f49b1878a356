"""Where the time of one qcal raw job goes: work, Python start-up and imports, and Snakemake's own cost.

bench_raw.py says *how much* slower one Snakemake job per image is than a plain loop; this script says
*why*, by measuring the parts separately on the same generated JPEGs:

  1. interpreter start-up: `python -c pass`, `python -c "import qcal.preprocess"`, and numpy + Pillow
     (what the naive design imports), medians of repeated runs;
  2. `python -X importtime -m qcal.preprocess` on one image: the slowest imports;
  3. the work itself, in one process: decode / letterbox / encode / write per image, averaged, and the
     plain loop exactly as bench_raw.py times it;
  4. one `python -m qcal.preprocess` process per image, run one after another (no Snakemake): the
     per-process cost on top of the work;
  5. Snakemake alone: `snakemake --version`, a dry run of qcal's DAG, and benchmarks/touch/Snakefile
     (same one-job-per-image DAG, jobs only `touch`) at -j1 and -j JOBS, at --images and at
     --scale-images: the fixed cost, the per-job cost, and how the per-job cost grows with the DAG;
  6. a simple model that adds these up, next to the goal (2.5x the plain loop).

    .venv/bin/python benchmarks/profile_raw_job.py --images 200 --jobs 2
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from benchlib import bench_env, git_snapshot, machine_busy, qcal_config_text, wait_until_quiet  # noqa: E402
from bench_raw import PLAIN_LOOP  # noqa: E402
from make_images import make_images  # noqa: E402


def wall(cmd: list[str], env: dict, cwd: Path, reps: int = 1) -> float:
    """Median wall time of cmd (output discarded; fails loudly)."""
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode:
            sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return statistics.median(times)


def import_table(python: str, image: Path, out: Path, env: dict, top: int) -> tuple[float, list[tuple[float, str]]]:
    """(total import ms, [(cumulative ms, module)] slowest first) from -X importtime of one job."""
    proc = subprocess.run([python, "-X", "importtime", "-m", "qcal.preprocess", str(image),
                           str(out / "x.raw"), str(out / "x.json")], env=env, capture_output=True, text=True)
    rows = []
    for line in proc.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            rows.append((int(m.group(2)) / 1000, len(m.group(3)) // 2, m.group(4)))
    total = sum(ms for ms, depth, _ in rows if depth == 0)
    tops = sorted(((ms, name) for ms, depth, name in rows if depth == 0), reverse=True)[:top]
    return total, tops


def in_process_stages(images: list[Path], out: Path) -> dict[str, float]:
    """Mean ms per image for each stage of image_to_raw, measured in this process."""
    from qcal import preprocess as pp

    profile = pp.resolve_profile("yolov5")
    stages = {"decode (load_rgb)": 0.0, "letterbox (resize+pad)": 0.0, "encode float32": 0.0,
              "write raw": 0.0, "image_to_raw total": 0.0}
    pp.image_to_raw(images[0], out / "w.raw", out / "w.json", profile)  # warm-up (lazy plugin imports)
    for img in images:
        t0 = time.perf_counter()
        rgb, _ = pp.load_rgb(img, profile.max_pixels)
        t1 = time.perf_counter()
        boxed, _ = pp.letterbox_image(rgb, profile)
        t2 = time.perf_counter()
        data = pp.encode_tensor(boxed, profile)
        t3 = time.perf_counter()
        pp.write_atomic(out / "s.raw", data)
        t4 = time.perf_counter()
        pp.image_to_raw(img, out / "t.raw", out / "t.json", profile)
        t5 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
            stages[key] += dt
    return {k: v / len(images) * 1000 for k, v in stages.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--top", type=int, default=12, help="slowest imports to list")
    parser.add_argument("--scale-images", type=int, default=1000,
                        help="also time Snakemake alone at this many images (0 to skip)")
    parser.add_argument("--git-ref", help="profile this committed revision (e.g. HEAD) instead of the working tree")
    parser.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                        help="first wait up to this long for other processes to use < 0.2 cores")
    parser.add_argument("--tmp", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet, say=lambda m: print(f"  .. {m}", file=sys.stderr, flush=True))
    n = args.images

    tmp = Path(tempfile.mkdtemp(prefix="qcal-profile-", dir=args.tmp))
    snakefile, scripts, code = REPO / "Snakefile", None, "working tree"
    if args.git_ref:
        commit = git_snapshot(args.git_ref, tmp / "src")
        snakefile, scripts, code = tmp / "src" / "Snakefile", tmp / "src" / "scripts", f"git {args.git_ref} = {commit[:12]}"
        sys.path.insert(0, str(scripts))  # for the in-process measurements
    env = bench_env(scripts)
    python, smk = sys.executable, shutil.which("snakemake", path=env["PATH"])
    try:
        images = make_images(tmp / "images", n, args.seed)
        for p in images:
            p.read_bytes()
        out = tmp / "out"
        out.mkdir()
        print(f"{n} JPEGs, nproc={len(os.sched_getaffinity(0))}, python {sys.version.split()[0]}, code: {code}"
              + ("; PYTHONDONTWRITEBYTECODE is set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else "")
              + f"; other load at start {machine_busy(2):.2f} cores\n")

        # 1. start-up
        t_pass = wall([python, "-c", "pass"], env, tmp, 15)
        t_qcal = wall([python, "-c", "import qcal.preprocess"], env, tmp, 15)
        t_np = wall([python, "-c", "import numpy, PIL.Image"], env, tmp, 15)
        print("1. interpreter start-up (median of 15)")
        print(f"   python -c pass                        {t_pass * 1000:7.1f} ms")
        print(f"   python -c 'import qcal.preprocess'    {t_qcal * 1000:7.1f} ms")
        print(f"   python -c 'import numpy, PIL.Image'   {t_np * 1000:7.1f} ms   (naive design)")

        # 2. imports of one job
        total, tops = import_table(python, images[2], out, env, args.top)
        print(f"\n2. python -X importtime -m qcal.preprocess <one image>: {total:.1f} ms of imports; slowest top-level:")
        for ms, name in tops:
            print(f"   {ms:7.1f} ms  {name}")

        # 3. the work, in one process
        stages = in_process_stages(images, out)
        print("\n3. in one process, mean per image")
        for k, v in stages.items():
            print(f"   {k:<24} {v:7.1f} ms")
        work = stages["image_to_raw total"]

        # the real plain loop (fresh output files, sidecars, interpreter start), as bench_raw.py times it
        plain_out = tmp / "plain"
        plain_out.mkdir()
        os.sync()  # do not time the writeback of section 3's files
        start = time.perf_counter()
        subprocess.run([python, "-c", PLAIN_LOOP, str(tmp / "images"), str(plain_out)], env=env, check=True)
        plain = time.perf_counter() - start
        shutil.rmtree(plain_out)
        print(f"   plain loop (one process, all {n} images, fresh files)  {plain:.2f} s = {plain / n * 1000:.1f} ms/image")

        # 4. one process per image, sequential, no Snakemake
        start = time.perf_counter()
        for i, img in enumerate(images):
            subprocess.run([python, "-m", "qcal.preprocess", str(img), str(out / f"p{i}.raw"),
                            str(out / f"p{i}.json")], env=env, check=True)
            (out / f"p{i}.raw").unlink()
        per_proc = (time.perf_counter() - start) / n * 1000
        print(f"\n4. one `python -m qcal.preprocess` per image, sequential: {per_proc:.1f} ms/image"
              f" = work {work:.1f} + process {per_proc - work:.1f} ms")

        # 5. Snakemake alone
        t_ver = wall([smk, "--version"], env, tmp, 3)
        sizes = [(n, tmp / "images")]
        if args.scale_images > n:
            make_images(tmp / "images_big", args.scale_images, args.seed)
            sizes.append((args.scale_images, tmp / "images_big"))
        print("\n5. Snakemake alone (median of 3)")
        print(f"   snakemake --version                      {t_ver:7.2f} s   (CLI import cost)")
        dry_n = per_job = None
        for count, folder in sizes:
            cfg = tmp / f"cfg{count}.yaml"
            cfg.write_text(qcal_config_text(snakefile, folder))
            dry = tmp / "dry"
            shutil.rmtree(dry, ignore_errors=True)
            dry.mkdir()
            t_dry = wall([smk, "-s", str(snakefile), "--configfile", str(cfg), "-n",
                          "results/input_list.txt"], env, dry, 3)
            print(f"   qcal dry run (-n), {count:>4} images         {t_dry:7.2f} s   (start-up + config + DAG)")
            touch_cmd = [smk, "-s", str(HERE / "touch" / "Snakefile"), "--config", f"images={folder}",
                         "--workflow-profile", str(snakefile.parent / "profiles" / "default")]
            touch_dry = wall(touch_cmd + ["-n"], env, dry, 3)
            print(f"   touch dry run (-n), {count:>4} images        {touch_dry:7.2f} s")
            for j in sorted({1, args.jobs}):
                times = []
                for _ in range(3):
                    work_dir = tmp / "touch"
                    shutil.rmtree(work_dir, ignore_errors=True)
                    work_dir.mkdir()
                    times.append(wall(touch_cmd + ["-j", str(j)], env, work_dir))
                t = statistics.median(times)
                print(f"   touch jobs, {count:>4} images, -j{j}           {t:7.2f} s   = "
                      f"{(t - touch_dry) / count * 1000:5.1f} ms/job beyond its dry run")
                if count == n and j == args.jobs:
                    dry_n, per_job = t_dry, (t - touch_dry) / count * 1000

        # qcal itself: cold once, then the no-op and a re-run of the input-list job alone
        cfg, qwork = tmp / f"cfg{n}.yaml", tmp / "qcal"
        qwork.mkdir()
        qcal_cmd = [smk, "-s", str(snakefile), "--configfile", str(cfg), "-j", str(args.jobs), "results/input_list.txt"]
        t_cold = wall(qcal_cmd, env, qwork)
        t_noop = wall(qcal_cmd, env, qwork, 3)
        t_list = wall(qcal_cmd + ["--forcerun", "input_list"], env, qwork, 3)
        print(f"   qcal cold, {n:>4} images, -j{args.jobs}            {t_cold:7.2f} s   (1 run)")
        print(f"   qcal no-op re-run                        {t_noop:7.2f} s")
        print(f"   qcal --forcerun input_list               {t_list:7.2f} s   = input-list job {t_list - t_noop:.2f} s"
              " (a `script:` job: new Python + Snakemake's script preamble)")

        # 6. model
        jobs = args.jobs
        ideal = dry_n + n * per_proc / 1000 / jobs + (t_list - t_noop)
        print(f"\n6. model for {n} images, -j{jobs}")
        print(f"   plain loop (measured, section 3)                                    = {plain:6.2f} s")
        print(f"   snakemake, ideal = dry run + N x (work + process) / jobs + list job = {ideal:6.2f} s  ({ideal / plain:.2f}x)"
              f"  if Snakemake's {per_job:.1f} ms/job overlapped fully with the jobs")
        print(f"   snakemake, serial= that + N x Snakemake's per-job cost              = {ideal + n * per_job / 1000:6.2f} s"
              f"  ({(ideal + n * per_job / 1000) / plain:.2f}x)  if it did not overlap at all")
        print(f"   measured qcal cold                                                  = {t_cold:6.2f} s  ({t_cold / plain:.2f}x)")
        print(f"   goal 2.5x                                                           = {2.5 * plain:6.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
