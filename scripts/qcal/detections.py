"""Detection maths shared by the evaluation steps: decode, NMS, letterbox undo, IoU, COCO-style AP, SQNR.

Model outputs use YOLOv5's export layout: float32 ``[1, N, 5 + C]``, each row
``(cx, cy, w, h, objectness, class_0 .. class_{C-1})`` with centre/size in model-input pixels and
objectness and class scores already passed through a sigmoid.

Reference semantics, and where this module deliberately differs:

* :func:`decode` follows YOLOv5's ``non_max_suppression`` (``multi_label=False``, no ``agnostic`` by
  default): rows with ``obj > conf`` first, then ``score = obj * cls`` for the best class, kept if
  ``score > conf``; at most :data:`MAX_NMS_CANDIDATES` highest scores go into NMS; NMS suppresses
  ``IoU > iou_threshold`` (torchvision's rule); at most ``max_detections`` results. Class-aware NMS
  restricts suppression to the same class instead of YOLOv5's coordinate offset (``+ class * 7680``),
  which breaks for coordinates beyond 7680 px; the results are the same otherwise.
* Score ties are broken by row order everywhere (stable sorts), so results are deterministic.
* Matching (:func:`match_detections`) and AP (:func:`average_precision`) follow pycocotools'
  ``COCOeval`` (greedy by score, each detection takes the highest-IoU still unmatched truth of its
  class with ``IoU >= t``; 101-point interpolated precision), without its area ranges, crowd/ignore
  regions and ``maxDets`` cap (the decoder already caps detections per image). YOLOv5's ``val.py``
  differs in two ways we do not copy: its matching is greedy by IoU over all pairs rather than by score,
  and its AP integrates the 101-point envelope with the trapezoid rule (a perfect detector scores 0.995
  there, 1.0 here and in pycocotools).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

#: COCO's IoU thresholds 0.50:0.05:0.95 (computed as pycocotools does, so 0.7 is exactly 0.7).
IOU_THRESHOLDS: NDArray[np.float64] = np.linspace(0.5, 0.95, 10)
#: COCO's recall points for interpolated precision: 0.00:0.01:1.00.
RECALL_POINTS: NDArray[np.float64] = np.linspace(0.0, 1.0, 101)
#: Quantized detections are scored over the whole precision/recall curve, as YOLOv5's val.py does.
LOW_CONF = 0.001
#: YOLOv5's ``max_nms``: only this many highest-scoring candidates enter NMS.
MAX_NMS_CANDIDATES = 30_000


@dataclass(frozen=True, eq=False)
class Detections:
    """Detections of one image: ``boxes`` [K, 4] float32 x1y1x2y2, ``scores`` [K] float32,
    ``classes`` [K] int64. Inputs are converted on construction; lengths must agree."""

    boxes: NDArray[np.float32]
    scores: NDArray[np.float32]
    classes: NDArray[np.int64]

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        classes = np.asarray(self.classes).reshape(-1)
        if classes.size and not np.issubdtype(classes.dtype, np.integer):
            if not np.array_equal(classes, np.round(classes)):
                raise ValueError("Detections.classes must be whole numbers")
        classes = classes.astype(np.int64)
        if not len(boxes) == len(scores) == len(classes):
            raise ValueError(f"Detections: {len(boxes)} boxes, {len(scores)} scores, {len(classes)} classes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "classes", classes)

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int64))

    def take(self, index: ArrayLike) -> Detections:
        """A subset (or reordering) by integer indices or a boolean mask."""
        index = np.asarray(index)
        return Detections(self.boxes[index], self.scores[index], self.classes[index])


# ---------------------------------------------------------------------------------------------------
# IoU and NMS


def box_iou(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """IoU of every box in ``a`` [M, 4] with every box in ``b`` [N, 4] (x1y1x2y2) -> [M, N] float64.

    Boxes with no area (or inverted corners) have IoU 0 with everything, including themselves.
    """
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    wh = np.clip(bottom_right - top_left, 0.0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = _area(a)[:, None] + _area(b)[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _area(boxes: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.clip(boxes[:, 2] - boxes[:, 0], 0.0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0.0, None)


def _score_order(scores: NDArray[Any]) -> NDArray[np.intp]:
    """Indices by descending score; ties keep their original order (stable, as pycocotools)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def nms(boxes: ArrayLike, scores: ArrayLike, iou_threshold: float = 0.45, max_output: int | None = None,
        classes: ArrayLike | None = None) -> NDArray[np.int64]:
    """Greedy non-maximum suppression. Returns kept indices by descending score.

    A box is suppressed by a higher-scoring kept box when their IoU is strictly greater than
    ``iou_threshold`` (torchvision.ops.nms) and, if ``classes`` is given, they have the same class
    (class-aware NMS; without ``classes`` it is class-agnostic). Equal scores: the earlier row wins.
    Stops once ``max_output`` boxes are kept: greedy order makes that the same as truncating afterwards.

    Class-aware NMS is done by masking suppression to the same class rather than YOLOv5's coordinate
    offset (``+ class * 7680``), which is inexact for boxes beyond 7680 px; the results are otherwise
    the same as per-class NMS merged by score.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = _score_order(np.asarray(scores).reshape(-1))
    labels = None if classes is None else np.asarray(classes).reshape(-1)
    if len(order) != len(boxes) or (labels is not None and len(labels) != len(boxes)):
        raise ValueError(f"nms: {len(boxes)} boxes, {len(order)} scores"
                         + ("" if labels is None else f", {len(labels)} classes"))
    limit = len(order) if max_output is None else max(0, int(max_output))
    keep: list[int] = []
    while order.size and len(keep) < limit:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        suppress = box_iou(boxes[best], boxes[rest])[0] > iou_threshold
        if labels is not None:
            suppress &= labels[rest] == labels[best]
        order = rest[~suppress]
    return np.asarray(keep, dtype=np.int64)


# ---------------------------------------------------------------------------------------------------
# Decode and letterbox


def decode(output: ArrayLike, conf_threshold: float = 0.25, iou_threshold: float = 0.45,
           max_detections: int = 300, class_agnostic: bool = False) -> Detections:
    """One image's raw YOLOv5 output ``[1, N, 5 + C]`` (or ``[N, 5 + C]``) -> :class:`Detections`
    in model-input pixels, sorted by descending score.

    One label per box (``non_max_suppression``'s default ``multi_label=False``, as YOLOv5's detect.py):
    the best class by ``obj * cls``. YOLOv5's val.py passes ``multi_label=True`` (every class above the
    threshold becomes a box), which adds low-scoring alternatives and lifts its mAP slightly.
    Rows with non-finite boxes or scores never pass (NaN comparisons are false; inf boxes are dropped).
    """
    pred = np.asarray(output, dtype=np.float32)
    if pred.ndim == 3:
        if pred.shape[0] != 1:
            raise ValueError(f"decode handles one image at a time, got batch {pred.shape[0]}")
        pred = pred[0]
    if pred.ndim != 2 or pred.shape[1] < 6:
        raise ValueError(f"expected [1, N, 5 + C] with C >= 1, got shape {np.shape(output)}")

    pred = pred[pred[:, 4] > conf_threshold]            # objectness first, as YOLOv5
    class_scores = pred[:, 5:] * pred[:, 4:5]            # float32, bit-identical to YOLOv5's product
    classes = class_scores.argmax(axis=1)                # first class on ties
    scores = class_scores[np.arange(len(pred)), classes]
    cx, cy, w, h = pred[:, 0], pred[:, 1], pred[:, 2], pred[:, 3]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)

    keep = (scores > conf_threshold) & np.isfinite(boxes).all(axis=1)
    boxes, scores, classes = boxes[keep], scores[keep], classes[keep]
    top = _score_order(scores)[:MAX_NMS_CANDIDATES]
    boxes, scores, classes = boxes[top], scores[top], classes[top]

    keep = nms(boxes, scores, iou_threshold, max_detections, classes=None if class_agnostic else classes)
    return Detections(boxes[keep], scores[keep], classes[keep])


@dataclass(frozen=True)
class DecoderSettings:
    """How a detector's raw output becomes detections when deployed (config section `decoder`)."""

    conf_threshold: float = 0.25
    iou_threshold: float = 0.45


def scale_boxes(boxes: ArrayLike, letterbox: Mapping[str, Any]) -> NDArray[np.float32]:
    """Boxes (x1y1x2y2) in model-input pixels -> original-image pixels, clipped to the image.

    ``letterbox`` is the preprocessing sidecar's ``letterbox`` dict (or a ``raw_index.tsv`` row): keys
    ``scale_x``, ``scale_y``, ``pad_left``, ``pad_top``, ``orig_width``, ``orig_height``. Inverse of
    ``model = orig * scale + pad``. Clipping is to ``[0, width] x [0, height]``, as YOLOv5's clip_boxes.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    sx, sy = float(letterbox["scale_x"]), float(letterbox["scale_y"])
    left, top = float(letterbox["pad_left"]), float(letterbox["pad_top"])
    width, height = float(letterbox["orig_width"]), float(letterbox["orig_height"])
    out = (boxes - [left, top, left, top]) / [sx, sy, sx, sy]
    out[:, 0::2] = np.clip(out[:, 0::2], 0.0, width)
    out[:, 1::2] = np.clip(out[:, 1::2], 0.0, height)
    return out.astype(np.float32)


def scale_detections(dets: Detections, letterbox: Mapping[str, Any]) -> Detections:
    """:func:`scale_boxes` applied to a :class:`Detections`."""
    return Detections(scale_boxes(dets.boxes, letterbox), dets.scores, dets.classes)


# ---------------------------------------------------------------------------------------------------
# Matching and average precision


def match_detections(pred: Detections, truth_boxes: ArrayLike, truth_classes: ArrayLike,
                     iou_thresholds: ArrayLike = IOU_THRESHOLDS) -> NDArray[np.bool_]:
    """True positives of one image: ``tp[k, t]`` is True when ``pred`` row k matches a truth at
    ``iou_thresholds[t]``. Rows are in ``pred``'s order.

    pycocotools' rule, applied independently per threshold: detections in descending score order
    (ties by row order) each take the unmatched truth of the same class with the highest IoU, provided
    ``IoU >= t``; each truth is matched at most once. (On equal IoU we take the lower truth index;
    pycocotools takes the higher one. It changes which truth is used, rarely the count.)
    """
    thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    truth_boxes = np.asarray(truth_boxes, dtype=np.float64).reshape(-1, 4)
    truth_classes = np.asarray(truth_classes).reshape(-1).astype(np.int64)
    if len(truth_boxes) != len(truth_classes):
        raise ValueError(f"{len(truth_boxes)} truth boxes but {len(truth_classes)} truth classes")
    tp = np.zeros((len(pred), len(thresholds)), dtype=bool)
    if len(pred) == 0 or len(truth_boxes) == 0:
        return tp

    iou = box_iou(pred.boxes, truth_boxes)                              # [K, G]
    iou[pred.classes[:, None] != truth_classes[None, :]] = -np.inf      # other classes never match
    passes = iou[:, :, None] >= thresholds[None, None, :]               # [K, G, T]
    matched = np.zeros((len(truth_boxes), len(thresholds)), dtype=bool)  # [G, T]
    for k in _score_order(pred.scores):
        candidates = passes[k] & ~matched
        hit = candidates.any(axis=0)
        if not hit.any():
            continue
        best = np.where(candidates, iou[k][:, None], -np.inf).argmax(axis=0)  # per threshold
        tp[k, hit] = True
        matched[best[hit], np.flatnonzero(hit)] = True
    return tp


def average_precision(recall: ArrayLike, precision: ArrayLike) -> float:
    """COCO's 101-point interpolated AP of one precision/recall curve.

    ``recall`` and ``precision`` are the cumulative values after each detection in descending score
    order (recall non-decreasing). Precision is first made monotone (at each point the best precision
    at any higher recall), then sampled at recall 0.00, 0.01, ..., 1.00 (the first point whose recall
    reaches the sample; 0 past the highest recall reached) and averaged, exactly as pycocotools'
    ``accumulate``. Chosen over VOC's all-point area and YOLOv5's trapezoid of the same samples so that
    numbers compare directly with published COCO mAP; an empty curve has AP 0.
    """
    recall = np.asarray(recall, dtype=np.float64).reshape(-1)
    precision = np.asarray(precision, dtype=np.float64).reshape(-1)
    if recall.shape != precision.shape:
        raise ValueError(f"{recall.size} recall values but {precision.size} precision values")
    if recall.size == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    index = np.searchsorted(recall, RECALL_POINTS, side="left")
    return float(envelope[index[index < recall.size]].sum() / RECALL_POINTS.size)


class APAccumulator:
    """Streaming COCO-style AP over many images: :meth:`add` one image at a time, :meth:`result` at
    the end. Keeps only per-detection (score, class, tp-per-threshold) and per-class truth counts,
    which is what the final ranking needs (as YOLOv5's val.py and pycocotools)."""

    def __init__(self, iou_thresholds: ArrayLike = IOU_THRESHOLDS) -> None:
        self.iou_thresholds = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
        if self.iou_thresholds.size == 0:
            raise ValueError("need at least one IoU threshold")
        self.n_images = 0
        self._tp: list[NDArray[np.bool_]] = []
        self._scores: list[NDArray[np.float32]] = []
        self._classes: list[NDArray[np.int64]] = []
        self._truth_classes: list[NDArray[np.int64]] = []
        self._n_truth: dict[int, int] = {}

    def add(self, pred: Detections, truth_boxes: ArrayLike, truth_classes: ArrayLike) -> None:
        self._tp.append(match_detections(pred, truth_boxes, truth_classes, self.iou_thresholds))
        self._scores.append(pred.scores)
        self._classes.append(pred.classes)
        truth = np.asarray(truth_classes, dtype=np.int64).reshape(-1)
        self._truth_classes.append(truth)
        labels, counts = np.unique(truth, return_counts=True)
        for c, n in zip(labels.tolist(), counts.tolist()):
            self._n_truth[c] = self._n_truth.get(c, 0) + n
        self.n_images += 1

    def resampled(self, images: Sequence[int]) -> APAccumulator:
        """The accumulator the given images (by position, repeats allowed) would have given: for a
        bootstrap over images."""
        return APAccumulator.gathered(((self, i) for i in images), self.iou_thresholds)

    @staticmethod
    def gathered(picks: Iterable[tuple[APAccumulator, int]], iou_thresholds: ArrayLike | None = None) -> APAccumulator:
        """The accumulator of the picked images, each an (accumulator, position) pair, in that order: what
        adding those images to one accumulator would have given (the IoU thresholds: the first source's)."""
        picks = list(picks)
        if iou_thresholds is None:
            iou_thresholds = picks[0][0].iou_thresholds if picks else IOU_THRESHOLDS
        other = APAccumulator(iou_thresholds)
        for source, i in picks:
            other._tp.append(source._tp[i])
            other._scores.append(source._scores[i])
            other._classes.append(source._classes[i])
            other._truth_classes.append(source._truth_classes[i])
            labels, counts = np.unique(source._truth_classes[i], return_counts=True)
            for c, n in zip(labels.tolist(), counts.tolist()):
                other._n_truth[c] = other._n_truth.get(c, 0) + n
            other.n_images += 1
        return other

    def result(self) -> dict[str, Any]:
        """``{"map50", "map50_95", "n_images", "n_truth", "n_pred", "iou_thresholds", "classes"}``.

        ``classes`` maps each class id seen (in truth or predictions) to ``{"ap50", "ap50_95", "n_truth",
        "n_pred"}``. ``ap50`` is AP at ``iou_thresholds[0]`` (0.5 by default) and ``ap50_95`` the mean
        over all thresholds. A class with predictions but no truth has AP None and stays out of the
        means (its predictions are false positives only); a class with truth but no predictions has
        AP 0. ``map50``/``map50_95`` are means over classes with truth, None when there is no truth.
        """
        T = self.iou_thresholds.size
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, T), bool)
        scores = np.concatenate(self._scores) if self._scores else np.zeros(0, np.float32)
        classes = np.concatenate(self._classes) if self._classes else np.zeros(0, np.int64)
        order = _score_order(scores)  # across images: ties keep image order, as pycocotools
        tp, classes = tp[order], classes[order]

        per_class: dict[int, dict[str, Any]] = {}
        for c in sorted(set(self._n_truth) | set(np.unique(classes).tolist())):
            n_truth = self._n_truth.get(c, 0)
            hits = tp[classes == c]
            entry: dict[str, Any] = {"ap50": None, "ap50_95": None, "n_truth": n_truth, "n_pred": len(hits)}
            if n_truth:
                true_pos = np.cumsum(hits, axis=0)
                precision = true_pos / np.arange(1, len(hits) + 1)[:, None]
                recall = true_pos / n_truth
                ap = [average_precision(recall[:, t], precision[:, t]) for t in range(T)]
                entry["ap50"], entry["ap50_95"] = ap[0], float(np.mean(ap))
            per_class[c] = entry

        scored = [e for e in per_class.values() if e["n_truth"]]
        return {
            "map50": float(np.mean([e["ap50"] for e in scored])) if scored else None,
            "map50_95": float(np.mean([e["ap50_95"] for e in scored])) if scored else None,
            "n_images": self.n_images,
            "n_truth": int(sum(self._n_truth.values())),
            "n_pred": int(len(scores)),
            "iou_thresholds": self.iou_thresholds.tolist(),
            "classes": per_class,
        }


def bootstrap_map50(accumulator: APAccumulator, resamples: int = 1000, confidence: float = 0.9,
                    seed: int = 0) -> tuple[float, float] | None:
    """Percentile interval of mAP50 over images resampled with replacement (the images, not the
    objects, are the independent draws); None with fewer than two images with truth."""
    with_truth = [i for i, t in enumerate(accumulator._truth_classes) if t.size]
    if len(with_truth) < 2:
        return None
    rng = np.random.default_rng(seed)
    n = accumulator.n_images
    values = []
    for _ in range(resamples):
        value = accumulator.resampled(rng.integers(0, n, n).tolist()).result()["map50"]
        if value is not None:
            values.append(value)
    tail = (1 - confidence) / 2 * 100
    return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))


def map_per_class(per_image_results: Iterable[tuple[Detections, ArrayLike, ArrayLike]],
                  iou_thresholds: ArrayLike = IOU_THRESHOLDS) -> dict[str, Any]:
    """COCO-style AP over an iterable of ``(pred, truth_boxes, truth_classes)``, one per image,
    consumed lazily. Returns :meth:`APAccumulator.result`'s dict.

    For AP, decode predictions with a low confidence threshold (YOLOv5's val.py uses 0.001): the
    threshold cuts the precision/recall curve short and so lowers AP.
    """
    acc = APAccumulator(iou_thresholds)
    for pred, truth_boxes, truth_classes in per_image_results:
        acc.add(pred, truth_boxes, truth_classes)
    return acc.result()


def agreement(float_dets: Detections, quant_dets: Detections,
              iou_thresholds: ArrayLike = IOU_THRESHOLDS) -> dict[str, Any]:
    """AP of one image's quantized detections with the float model's detections as ground truth
    (their boxes and classes; float scores are ignored). Same dict as :func:`map_per_class`."""
    return agreement_map([(float_dets, quant_dets)], iou_thresholds)


def agreement_map(pairs: Iterable[tuple[Detections, Detections]],
                  iou_thresholds: ArrayLike = IOU_THRESHOLDS) -> dict[str, Any]:
    """:func:`agreement` over many images: an iterable of ``(float_dets, quant_dets)`` per image.

    Typical use: float detections decoded at the deployment threshold (what the float model "says"),
    quantized detections at a low threshold (so the whole precision/recall curve is scored)."""
    return map_per_class(((quant, ref.boxes, ref.classes) for ref, quant in pairs), iou_thresholds)


# ---------------------------------------------------------------------------------------------------
# Signal-to-quantization-noise ratio


def sqnr_from_energy(signal: float, noise: float) -> float:
    """``10 * log10(signal / noise)``: the one SQNR formula every stage uses. ``inf`` when there is no
    noise (including both zero), ``-inf`` when there is noise but no signal, NaN when either is NaN."""
    if math.isnan(signal) or math.isnan(noise):
        return float("nan")
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return float(10.0 * np.log10(signal / noise))


def sqnr_db(reference: ArrayLike, test: ArrayLike) -> float:
    """SQNR of ``test`` against ``reference``, in float64 (see :func:`sqnr_from_energy`)."""
    ref = np.asarray(reference, dtype=np.float64)
    tst = np.asarray(test, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"sqnr_db: shapes differ, {ref.shape} vs {tst.shape}")
    return sqnr_from_energy(float(np.sum(np.square(ref))), float(np.sum(np.square(ref - tst))))


#: A detector output's columns by meaning: one SQNR over all of them is dominated by the box pixels
#: (hundreds against scores below 1), so it can look fine while the scores are quantized to constants.
COLUMN_GROUPS = {"boxes": slice(0, 4), "objectness": slice(4, 5), "classes": slice(5, None)}


def confidence(output: ArrayLike) -> NDArray[np.float32]:
    """YOLOv5-style output ``[..., x, y, w, h, objectness, classes...]`` -> the scores detections are
    ranked and thresholded by: objectness x class probability."""
    output = np.asarray(output)
    return output[..., 4:5] * output[..., 5:]


class SqnrAccumulator:
    """Streaming SQNR of detector outputs per column group (:data:`COLUMN_GROUPS`): signal and noise
    energy summed over every image added, in float64."""

    def __init__(self) -> None:
        self.signal = dict.fromkeys(COLUMN_GROUPS, 0.0)
        self.noise = dict.fromkeys(COLUMN_GROUPS, 0.0)

    def add(self, reference: ArrayLike, test: ArrayLike) -> None:
        ref = np.asarray(reference).reshape(-1, np.shape(reference)[-1]).astype(np.float64)
        tst = np.asarray(test).reshape(-1, np.shape(test)[-1]).astype(np.float64)
        if ref.shape != tst.shape:
            raise ValueError(f"SqnrAccumulator: shapes differ, {ref.shape} vs {tst.shape}")
        for group, cols in COLUMN_GROUPS.items():
            self.signal[group] += float(np.sum(ref[:, cols] ** 2))
            self.noise[group] += float(np.sum((ref[:, cols] - tst[:, cols]) ** 2))

    def db(self) -> dict[str, float]:
        return {g: sqnr_from_energy(self.signal[g], self.noise[g]) for g in COLUMN_GROUPS}


def output_sqnr(ref_output: ArrayLike, test_output: ArrayLike) -> dict[str, float]:
    """SQNR (dB) of one detector output ``[..., 5 + C]`` per column group, plus ``all`` columns."""
    ref = np.asarray(ref_output, dtype=np.float64)
    tst = np.asarray(test_output, dtype=np.float64)
    if ref.shape != tst.shape:
        raise ValueError(f"output_sqnr: shapes differ, {ref.shape} vs {tst.shape}")
    if ref.ndim < 2 or ref.shape[-1] < 6:
        raise ValueError(f"expected [..., 5 + C] with C >= 1, got shape {ref.shape}")
    groups = SqnrAccumulator()
    groups.add(ref, tst)
    return {**groups.db(), "all": sqnr_db(ref, tst)}
