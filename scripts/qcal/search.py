"""Accuracy-aware mixed precision, as NNCF's accuracy control and AIMET's AutoQuant do it: rank the
layers by how much quantization error each adds, then keep the worst in 16 bit (or float) one at a time
until the int8 model agrees with the float model within the budget on the evaluation images."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from qcal.calibrate import observing_session, read_input
from qcal.evaluate import evaluate
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


def layer_sqnr(float_model: str | Path, quant_model: str | Path, items: list[tuple[str, dict]], profile: Profile,
               input_name: str, layout: str, tensors: list[str]) -> dict[str, float]:
    """SQNR (dB) of each tensor in the quantized model against the float model, over the items. The
    quantized model keeps the float tensor names at the outputs of its (simulated) layers."""
    names = {}
    sessions = {}
    for key, path in (("float", float_model), ("quant", quant_model)):
        sessions[key] = observing_session(onnx.load(str(path)), tensors, threads=1)
        names[key] = [o.name for o in sessions[key].get_outputs()]
    signal = dict.fromkeys(tensors, 0.0)
    noise = dict.fromkeys(tensors, 0.0)
    for raw, _ in items:
        x = read_input(raw, profile, layout)
        outs = {key: dict(zip(names[key], s.run(names[key], {input_name: x}))) for key, s in sessions.items()}
        for t in tensors:
            ref, got = outs["float"][t].astype(np.float64), outs["quant"][t].astype(np.float64)
            signal[t] += float(np.sum(ref ** 2))
            noise[t] += float(np.sum((ref - got) ** 2))
    return {t: (float("inf") if noise[t] == 0 else 10 * np.log10(max(signal[t], 1e-30) / noise[t])) for t in tensors}


def rank_layers(model: onnx.ModelProto, sqnr: dict[str, float], input_name: str,
                skip: set[str]) -> list[tuple[str, float]]:
    """Layers ordered by the SQNR they lose: SQNR of their best input minus SQNR of their output. Error
    accumulates through the network, so the drop across a layer is its own contribution."""
    producer_sqnr = dict(sqnr)
    producer_sqnr.setdefault(input_name, float("inf"))
    ranked = []
    for node in model.graph.node:
        if node.op_type not in RANKED_OPS or node.name in skip or node.output[0] not in sqnr:
            continue
        inputs = [producer_sqnr[i] for i in node.input if i in producer_sqnr]
        before = min(inputs) if inputs else float("inf")
        before = min(before, 200.0)  # an exact (infinite-SQNR) input counts as very clean, not infinitely
        ranked.append((node.name, before - min(sqnr[node.output[0]], 200.0)))
    return sorted(ranked, key=lambda item: -item[1])


@dataclass
class SearchStep:
    layer: str          # "" for the starting point
    precision: str
    map50_agreement: float
    drop: float
    back_to: int | None = None  # the budget was not met: the model of this earlier, best step is kept


PRECISIONS = ("int16", "float")


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
           max_steps: int = 20) -> list[SearchStep]:
    """Quantize, then move layers out of 8 bit (to `precision`), worst first, until 1 - mAP50 agreement
    <= max_drop (or max_steps layers). Writes the final model to out and returns every step."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    model = onnx.load(str(prepared))
    with tempfile.TemporaryDirectory(prefix="qcal-search-") as tmp:
        current, ranges = Path(tmp) / "step.onnx", Path(tmp) / "ranges.json"

        def quantize(step_options: QuantizeOptions) -> None:
            # 16-bit tensors need 16-bit ranges (a wider clip than the 8-bit one), so ranges follow the step
            write_ort_ranges(activation_encodings(stats, step_options, tail_tensors), ranges)
            quantize_model(prepared, ranges, current, step_options, tail_nodes, tail_tensors)

        def agreement() -> float:
            ev = evaluate(prepared, current, items, profile, input_name, layout, conf, iou, None)
            return ev.agreement["map50"] if ev.agreement["map50"] is not None else 1.0

        quantize(options)
        score = agreement()
        steps = [SearchStep("", "int8", score, 1 - score)]
        if 1 - score > max_drop:
            layers = [n.name for n in model.graph.node if n.op_type in RANKED_OPS]
            sqnr = layer_sqnr(prepared, current, items, profile, input_name, layout,
                              [n.output[0] for n in model.graph.node if n.name in set(layers)])
            ranking = rank_layers(model, sqnr, input_name, set(options.exclude_nodes) | set(tail_nodes))
            options_at = [options]  # the quantization options after each step

            for layer, _ in ranking[:max_steps]:
                options_at.append(layer_change(model, layer, precision, options_at[-1]))
                quantize(options_at[-1])
                score = agreement()
                steps.append(SearchStep(layer, precision, score, 1 - score))
                if 1 - score <= max_drop:
                    break
            best = max(range(len(steps)), key=lambda i: (steps[i].map50_agreement, -i))
            if 1 - score > max_drop and best != len(steps) - 1:
                # budget not met: ship the best step seen, the fewest changed layers on a tie
                quantize(options_at[best])
                steps.append(SearchStep("", steps[best].precision, steps[best].map50_agreement, steps[best].drop,
                                        back_to=best))
        Path(out).write_bytes(current.read_bytes())
    return steps


def describe(step: SearchStep) -> str:
    if step.back_to is not None:
        return f"budget not met: back to step {step.back_to}, the best"
    return f"keep {step.layer} (and its activation) in {step.precision}" if step.layer else "all layers int8"


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
