"""Benchmark qcal's calibration against ONNX Runtime's quantize_static calibrators, in one run.

On a YOLOv5s-shaped model (qcal.synthetic.build_yolov5: 7.2M parameters, YOLOv5s's activations, random
weights), prepared as the workflow prepares it, and N photo-like JPEGs (benchmarks/make_images.py) turned
into qcal raws (NHWC float32, letterboxed), for every N given:

  qcal            qcal.calibrate.calibrate() + save_stats(): exact mergeable histograms (4096 bins) of all
                  243 float tensors -- one calibrate_shard job's work, in a fresh process;
  ORT MinMax      onnxruntime.quantization.quantize_static, CalibrationMethod.MinMax, QDQ, per_channel,
                  QUInt8/QInt8, a CalibrationDataReader reading the same raws as NCHW float32 one by one;
  ORT Percentile  the same with CalibrationMethod.Percentile (keeps every image's activations in memory);

Every side runs in its own child process (benchmarks/calib_child.py): wall time and CPU come from the
parent, peak RSS from os.wait4() for that child alone. Each child runs under an address-space limit
(RLIMIT_AS, --mem-limit-gb, lowered to what the machine has available minus 1 GiB), so an ORT
Percentile run that would exhaust memory fails with MemoryError and is reported as failed instead of
taking the machine down.

Per-image cost without start-up: (wall(N2) - wall(N1)) / (N2 - N1) for the smallest and largest N
(also for CPU seconds), and start-up = wall(N1) - N1 * per-image. ORT's wall time includes its QDQ
rewrite and qcal's does not need one (it is a later, cached workflow step), but both are fixed costs
that the difference removes.

Goals (from the issue): qcal peak RSS < 1.5 GB at every N; qcal per-image time <= 1.3x ORT MinMax's.

Threads: quantize_static gives its calibration session ONNX Runtime's default thread count (one per
core); qcal runs with --threads (default: every usable core, the same). In the workflow each shard job
uses calibration.threads (default 1) and shards run in parallel, so CPU seconds per image are printed
too. Other processes' CPU use during each run is shown as "other" (cores); rows above 0.15 get a "!".

    .venv/bin/python benchmarks/bench_calibration.py --images 10 30 --size 640
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calib_common import (Run, bench_env, flag, machine_facts, mem_available_mb, note,  # noqa: E402
                          timed)
from make_images import make_images  # noqa: E402

TOOLS = {"qcal": "qcal (histograms)", "ort-minmax": "ORT MinMax",
         "ort-percentile": "ORT Percentile"}
GOAL_RSS_MB = 1500.0     # "< 1.5 GB"; GB = 10^9 bytes is 1430 MiB: both are printed
GOAL_PER_IMAGE_RATIO = 1.3  # issue #15 (was 1.5)
MiB = 2**20


def prepare_inputs(tmp: Path, n_max: int, size: tuple[int, int], seed: int) -> tuple[Path, str, str, Path]:
    """Model (built + prepared), images and raws; returns (prepared model, input name, layout, raw list)."""
    import onnx

    from qcal.model import model_input, prepare
    from qcal.preprocess import image_to_raw, resolve_profile
    from qcal.synthetic import build_yolov5, parameter_count

    note(f"building the YOLOv5s-shaped model at {size[0]}x{size[1]}")
    model = build_yolov5(size)
    params = parameter_count(model)
    raw_model = tmp / "yolov5s_synthetic.onnx"
    onnx.save(model, str(raw_model))
    prepared = prepare(onnx.load(str(raw_model)))
    inp = model_input(prepared)
    prepared_path = tmp / "prepared.onnx"
    onnx.save(prepared, str(prepared_path))
    note(f"model: {params / 1e6:.2f}M parameters, input {inp.name} {list(inp.shape)} {inp.layout}")

    note(f"generating {n_max} JPEGs and their raws")
    images = make_images(tmp / "images", n_max, seed)
    profile = resolve_profile("yolov5", {"height": size[0], "width": size[1]})
    raw_dir = tmp / "raw"
    raw_dir.mkdir()
    raws = []
    for i, image in enumerate(images):
        raw = raw_dir / f"{i:05d}.raw"
        image_to_raw(image, raw, raw_dir / f"{i:05d}.json", profile)
        raws.append(str(raw))
    listing = tmp / "raws.txt"
    listing.write_text("\n".join(raws) + "\n")
    for raw in raws:  # page cache: neither side pays for the first read from disk
        Path(raw).read_bytes()
    return prepared_path, inp.name, inp.layout, listing


def child_json(run: Run) -> dict:
    for line in reversed(run.text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                break
    return {}


def fmt_mb(mb: float) -> str:
    return f"{mb:8.0f} MiB ({mb * MiB / 1e9:5.2f} GB)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[10, 30], help="image counts N (two or more)")
    parser.add_argument("--size", type=int, nargs="+", default=[640], help="model input size: S or H W")
    parser.add_argument("--threads", type=int, default=None,
                        help="qcal's ONNX Runtime intra-op threads (default: usable cores, as ORT's default)")
    parser.add_argument("--tools", nargs="+", choices=list(TOOLS), default=list(TOOLS))
    parser.add_argument("--repeat", type=int, default=1, help="runs per (tool, N); the median wall is kept")
    parser.add_argument("--mem-limit-gb", type=float, default=20.0, help="RLIMIT_AS for every child, GB")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per child before it is killed")
    parser.add_argument("--bins", type=int, default=4096, help="qcal histogram_bins")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)
    counts = sorted(set(args.images))
    if len(counts) < 2:
        parser.error("--images needs two different counts to subtract start-up")
    size = (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size[:2])
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    threads = args.threads or usable
    env = bench_env()

    tmp = Path(tempfile.mkdtemp(prefix="qcal-bench-calib-", dir=args.tmp))
    try:
        print("\n".join(machine_facts(env, ["onnxruntime", "onnx", "numpy", "PIL"], [
            f"benchmark : YOLOv5s-shaped model {size[0]}x{size[1]}, N = {counts}, qcal threads {threads}, "
            f"ORT quantize_static threads: ORT default",
            f"temp dir  : {tmp}"])), flush=True)
        prepared, input_name, layout, listing = prepare_inputs(tmp, counts[-1], size, args.seed)
        return run_all(args, tmp, env, counts, size, threads, prepared, input_name, layout, listing)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(args, tmp: Path, env: dict, counts: list[int], size: tuple[int, int], threads: int,
            prepared: Path, input_name: str, layout: str, listing: Path) -> int:
    logs = tmp / "logs"
    logs.mkdir()
    child_env = dict(env)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE.parent / "scripts"), env.get("PYTHONPATH")]))
    results: dict[tuple[str, int], tuple[Run, dict]] = {}
    limits: dict[tuple[str, int], float] = {}
    step = 0
    for n in counts:
        for tool in args.tools:
            runs = []
            for rep in range(max(1, args.repeat)):
                step += 1
                out = tmp / f"out_{tool}_{n}_{rep}"
                limit_mb = min(args.mem_limit_gb * 1e9 / MiB, mem_available_mb() - 1024)
                limits[tool, n] = limit_mb
                note(f"{TOOLS[tool]}, {n} images (run {rep + 1}/{args.repeat}; RLIMIT_AS {limit_mb / 1024:.1f} GiB)")
                cmd = [sys.executable, str(HERE / "calib_child.py"), tool, "--model", str(prepared),
                       "--raws", str(listing), "--count", str(n), "--out", str(out), "--threads", str(threads),
                       "--bins", str(args.bins), "--height", str(size[0]), "--width", str(size[1]),
                       "--layout", layout, "--input", input_name]
                run = timed(cmd, logs / f"{step:03d}_{tool}_{n}.log", env=child_env,
                            mem_limit_bytes=int(limit_mb * MiB), timeout=args.timeout)
                runs.append((run, child_json(run)))
                shutil.rmtree(out, ignore_errors=True)
                if not run.ok or child_json(run).get("status") != "ok":
                    note(f"  failed: {run.failure()}")
            ok = [r for r in runs if r[0].ok and r[1].get("status") == "ok"]
            pool = ok or runs
            results[tool, n] = sorted(pool, key=lambda r: r[0].wall)[(len(pool) - 1) // 2]

    # ---- main table ---------------------------------------------------------------------------------------
    print()
    print("Calibration runs (each in its own process; wall and CPU of the whole process)")
    header = (f"  {'tool':<18} {'N':>4} {'wall s':>8} {'CPU s':>8} {'peak RSS':>25}  {'s/image*':>8} "
              f"{'loop s':>7} {'other':>6}  status")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for tool in args.tools:
        for n in counts:
            run, info = results[tool, n]
            good = run.ok and info.get("status") == "ok"
            loop = info.get("timings", {}).get("loop")
            status = "ok" if good else f"FAILED ({run.failure()}; RLIMIT_AS {limits[tool, n] / 1024:.1f} GiB)"
            if not good and info.get("error"):
                status = f"FAILED: {info['error'][:120]} (RLIMIT_AS {limits[tool, n] / 1024:.1f} GiB)"
            print(f"  {TOOLS[tool]:<18} {n:>4} {run.wall:8.2f} {run.cpu:8.2f} {fmt_mb(run.maxrss_mb):>25}  "
                  f"{run.wall / n:8.3f} {loop if loop is not None else float('nan'):7.2f} "
                  f"{run.other:5.2f}{flag(run)}  {status}")
    print("  * wall/N, start-up included. loop = the per-image loop alone, timed inside the process "
          "(qcal: calibrate()'s timer;\n    ORT: first to last get_next() of the data reader). "
          "other = cores used by other processes meanwhile.")
    for tool in args.tools:
        timings = {n: results[tool, n][1].get("timings") for n in counts}
        parts = [f"N={n}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()) for n, t in timings.items() if t]
        if parts:
            print(f"  {TOOLS[tool]} phases (s): " + "; ".join(parts))

    # ---- per image, start-up removed ------------------------------------------------------------------------
    n1, n2 = counts[0], counts[-1]
    print()
    print(f"Per image without start-up: (wall(N={n2}) - wall(N={n1})) / {n2 - n1}")
    print(f"  {'tool':<18} {'wall s/image':>12} {'CPU s/image':>12} {'loop s/image':>13} {'start-up s':>11}")
    per_image: dict[str, float] = {}
    per_image_cpu: dict[str, float] = {}
    for tool in args.tools:
        (r1, i1), (r2, i2) = results[tool, n1], results[tool, n2]
        if not (r1.ok and r2.ok and i1.get("status") == i2.get("status") == "ok"):
            print(f"  {TOOLS[tool]:<18} {'n/a (a run failed)':>12}")
            continue
        wall = (r2.wall - r1.wall) / (n2 - n1)
        cpu = (r2.cpu - r1.cpu) / (n2 - n1)
        loop = (i2["timings"]["loop"] - i1["timings"]["loop"]) / (n2 - n1)
        per_image[tool], per_image_cpu[tool] = wall, cpu
        startup = r1.wall - n1 * wall
        print(f"  {TOOLS[tool]:<18} {wall:12.3f} {cpu:12.3f} {loop:13.3f} {startup:11.2f}"
              + ("  (negative: cost per image grows with N)" if startup < 0 else ""))
    for tool in ("qcal",):
        if tool in per_image and "ort-minmax" in per_image:
            r1q, r2q = results[tool, n1][0], results[tool, n2][0]
            r1m, r2m = results["ort-minmax", n1][0], results["ort-minmax", n2][0]
            cpu_ratio = ((r2q.cpu - r1q.cpu) / max(1e-9, r2m.cpu - r1m.cpu))
            print(f"  {TOOLS[tool]} / ORT MinMax per image: wall {per_image[tool] / per_image['ort-minmax']:.2f}x, "
                  f"CPU {cpu_ratio:.2f}x")

    # ---- goals ---------------------------------------------------------------------------------------------------
    print()
    print("Goals")
    verdicts = []
    if "qcal" in args.tools:
        rss = [results["qcal", n][0].maxrss_mb for n in counts]
        ok = all(results["qcal", n][0].ok for n in counts) and max(rss) * MiB < GOAL_RSS_MB * 1e6
        verdicts.append(ok)
        print(f"  qcal peak RSS < 1.5 GB at every N: {'PASS' if ok else 'FAIL'} "
              f"(max {max(rss):.0f} MiB = {max(rss) * MiB / 1e9:.2f} GB; "
              + ", ".join(f"N={n}: {r:.0f} MiB" for n, r in zip(counts, rss)) + ")")
    if "qcal" in per_image and "ort-minmax" in per_image:
        ratio = per_image["qcal"] / per_image["ort-minmax"]
        ok = ratio <= GOAL_PER_IMAGE_RATIO
        verdicts.append(ok)
        cpu_ratio = per_image_cpu["qcal"] / max(1e-9, per_image_cpu["ort-minmax"])
        busy = max(results[t, n][0].other for t in ("qcal", "ort-minmax") for n in (n1, n2))
        print(f"  qcal per-image time <= {GOAL_PER_IMAGE_RATIO}x ORT MinMax's: {'PASS' if ok else 'FAIL'} "
              f"(wall {per_image['qcal']:.3f} s vs {per_image['ort-minmax']:.3f} s = {ratio:.2f}x; "
              f"CPU {cpu_ratio:.2f}x)"
              + (f" -- UNRELIABLE: other processes used up to {busy:.2f} cores" if busy > 0.15 else ""))
    elif "qcal" in args.tools and "ort-minmax" in args.tools:
        verdicts.append(False)
        print(f"  qcal per-image time <= {GOAL_PER_IMAGE_RATIO}x ORT MinMax's: n/a (a run failed)")
    if "ort-percentile" in args.tools:
        rss = ", ".join(f"N={n}: " + (f"{results['ort-percentile', n][0].maxrss_mb / 1024:.1f} GiB"
                                      if results["ort-percentile", n][0].ok else "failed") for n in counts)
        print(f"  (reference) ORT Percentile peak RSS: {rss}")
    busy = [r.other for r, _ in results.values()]
    if max(busy) > 0.15:
        print(f"  note: other processes used up to {max(busy):.2f} cores during some runs (rows marked !): "
              "timings there are pessimistic")
    sys.stdout.flush()

    return 0 if all(verdicts) else 1


if __name__ == "__main__":
    sys.exit(main())
