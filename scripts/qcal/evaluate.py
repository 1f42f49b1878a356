"""What did quantization cost? The float model's outputs against the quantized model's, as ONNX
Runtime's CPU provider and (for the htp runtime) Qualcomm's HTP compute them, on evaluation images that
neither calibration nor the accuracy search used: detection agreement with a bootstrap interval and the
number of float objects it rests on, accuracy against labels when there are any, output SQNR per column
group. A model that is not a YOLO-style detector is compared by output SQNR and top-1 agreement."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qcal.detections import (LOW_CONF, APAccumulator, DecoderSettings, SqnrAccumulator, bootstrap_map50, decode,
                             scale_detections, sqnr_from_energy)
from qcal.labels import Labels, truth_boxes
from qcal.raws import InputSpec, RawItem
from qcal.runtime import cpu_session, runner


def cpu_outputs(model: str | Path, items: list[RawItem], spec: InputSpec, out: str | Path,
                threads: int = 1) -> tuple[np.ndarray, float]:
    """The model's outputs on ONNX Runtime's CPU provider, one row per item (a memory-mapped .npy: a
    YOLOv5s output is 8.6 MB per image), and the mean milliseconds per image (the first run, which
    includes one-off allocations, left out)."""
    run = runner(cpu_session(model, threads))
    outputs, seconds = None, []
    for i, item in enumerate(items):
        x = spec.read(item.raw)
        started = time.perf_counter()
        y = run(x)
        seconds.append(time.perf_counter() - started)
        if outputs is None:
            outputs = np.lib.format.open_memmap(out, mode="w+", dtype=np.float32, shape=(len(items), *y.shape))
        outputs[i] = y
    return outputs, round(1000 * float(np.mean(seconds[1:] or seconds)), 2)


@dataclass
class Scores:
    """One quantized model's outputs (on one backend) against the float model's."""

    agreement: dict                          # APAccumulator.result(): the float detections are the truth
    interval: tuple[float, float] | None     # 90% bootstrap interval of the mAP50 agreement, over images
    vs_labels: dict | None                   # the quantized detections against the labels
    sqnr_db: dict
    top1_agreement: float | None = None      # classifiers
    accumulator: APAccumulator | None = field(default=None, repr=False)  # per-image matches, for resampling


@dataclass
class Evaluation:
    images: int
    detector: bool
    float_vs_labels: dict | None
    backends: dict[str, Scores] = field(default_factory=dict)   # "cpu", "htp SM8650", ...
    latency_ms: dict = field(default_factory=dict)
    seconds_per_image: dict = field(default_factory=dict)       # the HTP simulator's, per backend


def score(float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray], items: list[RawItem],
          decoder: DecoderSettings, labels: Labels | None, detector: bool = True) -> tuple[Scores, dict | None]:
    """(the quantized outputs against the float ones, the float detections against the labels)."""
    if not detector:
        return compare_outputs(float_outputs, quant_outputs), None
    agreement = APAccumulator()
    vs_labels = {"float": APAccumulator(), "quantized": APAccumulator()}
    sqnr = SqnrAccumulator()
    for item, reference_output, output in zip(items, float_outputs, quant_outputs, strict=True):
        box = item.letterbox
        reference = scale_detections(decode(reference_output, decoder.conf_threshold, decoder.iou_threshold), box)
        low = {name: scale_detections(decode(out, LOW_CONF, decoder.iou_threshold), box)
               for name, out in (("float", reference_output), ("quantized", output))}
        agreement.add(low["quantized"], reference.boxes, reference.classes)
        truth = truth_boxes(labels, item.image, box) if labels is not None else None
        if truth is not None:
            for name in vs_labels:
                vs_labels[name].add(low[name], *truth)
        sqnr.add(reference_output, output)
    with_labels = labels is not None
    scores = Scores(agreement.result(), bootstrap_map50(agreement), vs_labels["quantized"].result() if with_labels
                    else None, sqnr.db(), accumulator=agreement)
    return scores, vs_labels["float"].result() if with_labels else None


def compare_outputs(float_outputs: Sequence[np.ndarray], quant_outputs: Sequence[np.ndarray]) -> Scores:
    """For a model that is not a YOLO-style detector: SQNR of the whole output and, for a [1, classes]
    classifier, the share of images whose arg-max class is unchanged."""
    signal = noise = 0.0
    same = counted = 0
    for reference, output in zip(float_outputs, quant_outputs, strict=True):
        reference, output = np.asarray(reference, np.float64), np.asarray(output, np.float64)
        signal += float(np.sum(reference ** 2))
        noise += float(np.sum((reference - output) ** 2))
        if reference.ndim == 2:
            same += int(np.sum(reference.argmax(axis=1) == output.argmax(axis=1)))
            counted += reference.shape[0]
    return Scores({}, None, None, {"all": sqnr_from_energy(signal, noise)},
                  top1_agreement=same / counted if counted else None)
