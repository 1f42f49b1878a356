"""Accuracy-aware mixed precision, as NNCF's accuracy control and AIMET's AutoQuant do it: rank the
layers by their effect (how much of the detector's confidence error each removes when it alone leaves
int8, on the images whose detections the int8 model gets most wrong), then keep them in 16 bit (or
float), largest effect first, until the int8 model agrees with the float model within the budget on the
search images."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import NamedTuple

import numpy as np
import onnx

from qcal.calibrate import read_input
from qcal.detections import APAccumulator, Detections, decode, scale_detections
from qcal.evaluate import LOW_CONF, session
from qcal.preprocess import Profile
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges
from qcal.stats import TensorStats

RANKED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that finish a layer: its activation (LeakyReLU, SiLU = Sigmoid * x, ...) and pooling.
LAYER_TAIL_OPS = ("Relu", "LeakyRelu", "Sigmoid", "Mul", "Clip", "HardSwish", "HardSigmoid", "Tanh", "MaxPool",
                  "AveragePool")


def layer_nodes(model: onnx.ModelProto, layer: str) -> list[str]:
    """The named weighted node plus the activation and pooling nodes fed only by it. Keeping a layer in
    float must keep these too: otherwise ONNX Runtime still quantizes the activation's output, and the
    layer's error stays (measured: with every Conv float, YOLOv3-tiny still lost 0.2 mAP50 agreement
    through its quantized LeakyReLU and MaxPool outputs)."""
    node_of = {n.name: n for n in model.graph.node}
    initializers = {i.name for i in model.graph.initializer}
    consumers: dict[str, list] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    group, produced = [layer], set(node_of[layer].output)
    frontier = list(node_of[layer].output)
    while frontier:
        for n in consumers.get(frontier.pop(), []):
            inputs = [i for i in n.input if i and i not in initializers]
            if n.name not in group and n.op_type in LAYER_TAIL_OPS and all(i in produced for i in inputs):
                group.append(n.name)
                produced.update(n.output)
                frontier.extend(n.output)
    return group


def confidence(output: np.ndarray) -> np.ndarray:
    """YOLOv5-style output [..., x, y, w, h, objectness, classes...] -> the scores detections are ranked
    and thresholded by: objectness x class probability."""
    return output[..., 4:5] * output[..., 5:]


class Score(NamedTuple):
    agreement: float            # mAP50 of the quantized detections against the float ones
    signal: np.ndarray          # per image: energy of the float model's objectness x class
    noise: np.ndarray           # per image: squared error of the quantized model's objectness x class
    detection_errors: np.ndarray  # per image: the part of noise where either model reaches conf

    def confidence_db(self, images: Sequence[int] | None = None) -> float:
        """Confidence SQNR pooled over every image scored, or over those at positions `images`."""
        chosen = slice(None) if images is None else list(images)
        noise = float(np.sum(self.noise[chosen]))
        return float("inf") if noise == 0 else 10 * np.log10(float(np.sum(self.signal[chosen])) / noise)


class SearchImages:
    """The search images with the float model's outputs, computed once and kept on disk (YOLOv5s at 640
    gives 8.6 MB per image), and its detections at the deployment threshold: the truth every step is
    scored against. Each step then runs only the quantized model."""

    def __init__(self, prepared: str | Path, items: list[tuple[str, dict]], profile: Profile, input_name: str,
                 layout: str, conf: float, iou: float, folder: str | Path, threads: int = 1) -> None:
        self.items, self.profile, self.input_name, self.layout = items, profile, input_name, layout
        self.conf, self.iou = conf, iou
        self.threads = threads
        self.outputs: np.ndarray | None = None
        self.truth: list[Detections] = []
        for i, y in self._run(prepared, range(len(items))):
            if self.outputs is None:
                self.outputs = np.lib.format.open_memmap(Path(folder) / "float_outputs.npy", mode="w+",
                                                         dtype=np.float32, shape=(len(items), *y.shape))
            self.outputs[i] = y
            self.truth.append(scale_detections(decode(y, conf, iou), items[i][1]["letterbox"]))

    def _run(self, model: str | Path, indices: range):
        sess = session(model, self.threads)
        for i in indices:
            yield i, sess.run(None, {self.input_name: read_input(self.items[i][0], self.profile, self.layout)})[0]

    def score(self, quantized: str | Path, indices: Sequence[int] | None = None) -> Score:
        """A quantized model against the float model, on every image or on those at `indices`."""
        indices = range(len(self.items)) if indices is None else indices
        agreement = APAccumulator()
        signal, noise, errors = [], [], []
        for i, y in self._run(quantized, indices):
            truth = self.truth[i]
            agreement.add(scale_detections(decode(y, LOW_CONF, self.iou), self.items[i][1]["letterbox"]),
                          truth.boxes, truth.classes)
            reference, scores = confidence(self.outputs[i]).astype(np.float64), confidence(y)
            squared = (reference - scores) ** 2
            signal.append(float(np.sum(reference ** 2)))
            noise.append(float(np.sum(squared)))
            errors.append(float(np.sum(squared[(reference >= self.conf) | (scores >= self.conf)])))
        map50 = agreement.result()["map50"]
        return Score(1.0 if map50 is None else map50, np.asarray(signal), np.asarray(noise), np.asarray(errors))


def hardest(errors: np.ndarray, n: int) -> list[int]:
    """Indices of the n images with the largest detection error, in list order."""
    return sorted(np.argsort(-errors, kind="stable")[:n].tolist())


@dataclass
class SearchStep:
    layer: str          # "" for the starting point
    precision: str
    map50_agreement: float
    drop: float
    back_to: int | None = None  # the budget was not met: the model of this earlier, best step is kept
    effect_db: float | None = None  # confidence SQNR this layer gave back on its own, which ranked it


PRECISIONS = ("int16", "float")
RANKING_IMAGES = 32  # images the per-layer effects are measured on: those the int8 model gets most wrong


def layer_change(model: onnx.ModelProto, layer: str, precision: str, options: QuantizeOptions) -> QuantizeOptions:
    """options with one more layer kept out of 8 bit. float: the layer's nodes are not quantized.
    int16: its activation input and every output of its nodes are uint16 (A16W8, which SNPE's and QNN's
    HTP run natively; float layers fall back to the CPU there), its weights stay int8."""
    group = layer_nodes(model, layer)
    if precision == "float":
        return replace(options, exclude_nodes=list(dict.fromkeys(options.exclude_nodes + group)))
    if precision != "int16":
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    node_of = {n.name: n for n in model.graph.node}
    initializers = {i.name for i in model.graph.initializer}
    tensors = [i for i in node_of[layer].input if i and i not in initializers]
    tensors += [o for name in group for o in node_of[name].output]
    return replace(options, int16_tensors=list(dict.fromkeys(options.int16_tensors + tensors)))


def search(prepared: str | Path, stats: dict[str, TensorStats], out: str | Path, options: QuantizeOptions,
           tail_nodes: list[str], tail_tensors: list[str], items: list[tuple[str, dict]], profile: Profile,
           input_name: str, layout: str, conf: float, iou: float, max_drop: float, precision: str = "int16",
           max_steps: int = 20, threads: int = 1) -> list[SearchStep]:
    """Quantize; if 1 - mAP50 agreement > max_drop, measure each layer's effect (the confidence SQNR it
    gives back when it alone moves to `precision`), then move layers, largest effect first, until the
    budget is met (or max_steps layers). Writes the final model to out and returns every step."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    model = onnx.load(str(prepared))
    with tempfile.TemporaryDirectory(prefix="qcal-search-") as tmp:
        current, ranges = Path(tmp) / "step.onnx", Path(tmp) / "ranges.json"
        images = SearchImages(prepared, items, profile, input_name, layout, conf, iou, tmp, threads)

        def build(step_options: QuantizeOptions) -> None:
            # 16-bit tensors need 16-bit ranges (a wider clip than the 8-bit one), so ranges follow the step
            write_ort_ranges(activation_encodings(stats, step_options, tail_tensors), ranges)
            quantize_model(prepared, ranges, current, step_options, tail_nodes, tail_tensors)

        def quantize(step_options: QuantizeOptions, indices: Sequence[int] | None = None) -> Score:
            build(step_options)
            return images.score(current, indices)

        first = quantize(options)
        score = first.agreement
        steps = [SearchStep("", "int8", score, 1 - score)]
        if 1 - score > max_drop:
            skip = set(options.exclude_nodes) | set(tail_nodes)
            layers = [n.name for n in model.graph.node if n.op_type in RANKED_OPS and n.name not in skip]
            # Ranking scores every layer, so it runs on a few dozen images: those whose detections the int8
            # model gets most wrong. Images it already gets right cannot show which layer fixes a detection
            # (measured: on images spread evenly, the layer whose step gained most agreement ranked last).
            hard = hardest(first.detection_errors, RANKING_IMAGES)
            base_db = first.confidence_db(hard)
            effect = {layer: quantize(layer_change(model, layer, precision, options), hard).confidence_db() - base_db
                      for layer in layers}
            ranking = sorted(layers, key=lambda layer: -effect[layer])
            options_at = [options]  # the quantization options after each step
            for layer in ranking[:max_steps]:
                options_at.append(layer_change(model, layer, precision, options_at[-1]))
                score = quantize(options_at[-1]).agreement
                steps.append(SearchStep(layer, precision, score, 1 - score, effect_db=effect[layer]))
                if 1 - score <= max_drop:
                    break
            best = max(range(len(steps)), key=lambda i: (steps[i].map50_agreement, -i))
            if 1 - score > max_drop and best != len(steps) - 1:
                # budget not met: ship the best step seen (already scored), the fewest changed layers on a tie
                build(options_at[best])
                steps.append(SearchStep("", steps[best].precision, steps[best].map50_agreement, steps[best].drop,
                                        back_to=best))
        del images  # release the memory map before its folder goes
        Path(out).write_bytes(current.read_bytes())
    return steps


def describe(step: SearchStep) -> str:
    if step.back_to is not None:
        return f"budget not met: back to step {step.back_to}, the best"
    if not step.layer:
        return "all layers int8"
    effect = f" (alone: {step.effect_db:+.2f} dB confidence SQNR)" if step.effect_db is not None else ""
    return f"keep {step.layer} (and its activation) in {step.precision}{effect}"


def layers_kept(steps: list[SearchStep]) -> int:
    last = steps[-1]
    return last.back_to if last.back_to is not None else len(steps) - 1


def steps_text(steps: list[SearchStep], max_drop: float) -> str:
    lines = [f"  accuracy search (budget: mAP50 agreement drop <= {max_drop}):"]
    for i, s in enumerate(steps):
        lines.append(f"    step {i}: {describe(s)}: agreement {s.map50_agreement:.3f} (drop {s.drop:.3f})")
    met = steps[-1].drop <= max_drop
    if len(steps) == 1:
        lines.append("    budget met with every layer in int8")
    else:
        kept = f"{layers_kept(steps)} layers kept in {steps[1].precision}"
        lines.append(f"    budget {'met' if met else 'NOT met'} with {kept}")
    return "\n".join(lines) + "\n"
