"""Accuracy-aware mixed precision: layer ranking and the budgeted search on a real (tiny) model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_jpeg
from qcal.calibrate import calibrate
from qcal.detections import DecoderSettings, confidence, sqnr_db
from qcal.evaluate import cpu_outputs, score
from qcal.model import ModelInfo, prepare_file
from qcal.preprocess import image_to_raw, resolve_profile
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges
from qcal.raws import InputSpec, RawItem
from qcal.report.quantize import steps_text
from qcal.search.layers import layer_nodes
from qcal.search.loop import RANKING_IMAGES, SearchSettings, search
from qcal.search.scoring import Score, SearchImages, hardest, joined
from qcal.search.steps import final_agreement, layers_kept
from qcal.synthetic import build_tiny


def chain() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Conv", ["b", "w"], ["c"], name="c2"), helper.make_node("Conv", ["c", "w"], ["d"], name="c3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph)


def test_a_layer_kept_float_takes_its_activation_and_pooling_along():
    assert layer_nodes(chain(), "c1") == ["c1", "r"] and layer_nodes(chain(), "c2") == ["c2"]
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="conv"),  # SiLU, then a pool, then a join
             helper.make_node("Sigmoid", ["a"], ["s"], name="sig"), helper.make_node("Mul", ["a", "s"], ["m"], name="silu"),
             helper.make_node("MaxPool", ["m"], ["p"], name="pool", kernel_shape=[2, 2]),
             helper.make_node("Conv", ["x", "w"], ["o"], name="other"),
             helper.make_node("Mul", ["p", "o"], ["y"], name="join")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    assert layer_nodes(helper.make_model(graph), "conv") == ["conv", "sig", "silu", "pool"]


@dataclass
class TinySearch:
    """A tiny detector with 3 calibration images and 3 search images, and search() on them."""

    prepared: Path
    stats: dict
    out: Path
    info: ModelInfo
    items: list[RawItem]
    spec: InputSpec
    decoder: DecoderSettings

    def run(self, max_drop: float, precision: str, max_steps: int = 20):
        return search(self.prepared, self.stats, self.out, QuantizeOptions(), self.info, self.items, self.spec,
                      self.decoder, SearchSettings(max_drop, precision, max_steps))


@pytest.fixture
def tiny_search(tmp_path) -> TinySearch:
    size = 64
    profile = resolve_profile("yolov5", {"height": size, "width": size})
    onnx.save(build_tiny(size=(size, size), det_bias=2.0), tmp_path / "tiny.onnx")
    info = prepare_file(tmp_path / "tiny.onnx", tmp_path / "prepared.onnx", tmp_path / "info.json", None, size, size)
    spec = InputSpec(profile, info.input_name, info.layout)
    items = []
    for i in range(6):
        image = write_jpeg(tmp_path / f"img{i}.jpg", 90 + 5 * i, 70, seed=i)
        result = image_to_raw(image, tmp_path / f"{i}.raw", tmp_path / f"{i}.json", profile)
        items.append(RawItem(str(tmp_path / f"{i}.raw"), result.image, result.letterbox))
    stats, _ = calibrate(tmp_path / "prepared.onnx", [item.raw for item in items[:3]], spec)
    return TinySearch(tmp_path / "prepared.onnx", stats, tmp_path / "out.onnx", info, items[3:], spec,
                      DecoderSettings(0.25, 0.45))


def report_agreement(float_model, quantized, items, spec, decoder, folder) -> float | None:
    """The accuracy report's mAP50 agreement of two models on these items."""
    folder.mkdir(exist_ok=True)
    reference, _ = cpu_outputs(float_model, items, spec, folder / "float.npy")
    outputs, _ = cpu_outputs(quantized, items, spec, folder / "quantized.npy")
    return score(reference, outputs, items, decoder, None)[0].agreement["map50"]


def changed_layers(path) -> set[str]:
    """Convs of a QDQ model that left int8: float weights (kept float) or a uint16 output (kept int16)."""
    model = onnx.load(path)
    zero_point_type = {i.name: i.data_type for i in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_type = {n.input[0]: zero_point_type.get(n.input[2]) for n in model.graph.node
              if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    return {n.name for n in model.graph.node if n.op_type == "Conv"
            and (n.input[1] not in dequantized or q_type.get(n.output[0]) == TensorProto.UINT16)}


def chosen_layers(options: QuantizeOptions, convs: list[str]) -> set[str]:
    """The layers the search moved out of int8, from the quantization options of a build: float ones
    are excluded nodes, int16 ones have their output among the 16-bit tensors. (In the model itself a
    16-bit layer's consumer reads and writes uint16 too: ORT's mixed-precision fixer puts the conversion
    back to uint8 after it, which the HTP needs.)"""
    return {conv for conv in convs if conv in options.exclude_nodes
            or any(t.startswith(conv) for t in options.int16_tensors)}


class ScriptedImages:
    """Stands in for SearchImages: scores each build by the layers the search moved out of int8, so the
    search's order and stopping can be checked exactly. Real scoring is tested against the accuracy
    report's below."""
    gain: dict[str, float] = {}
    agreement = staticmethod(lambda changed: 1.0)
    built: list[set[str]] = []   # the layers out of int8 in every build, in order
    convs: list[str] = []

    def __init__(self, *args, **kwargs) -> None:
        pass

    ranked_on: list[list[int]] = []  # the image indices of every ranking scoring
    step_scorings: list[int] = []     # the build number of every scoring on the search's backend

    @classmethod
    def install(cls, monkeypatch, prepared) -> None:
        from qcal.search import loop

        cls.convs = [n.name for n in onnx.load(prepared).graph.node if n.op_type == "Conv"]
        cls.built, cls.ranked_on, cls.step_scorings = [], [], []
        build = loop.quantize_model

        def recording(prepared, ranges, out, options, *rest):
            cls.built.append(chosen_layers(options, cls.convs))
            return build(prepared, ranges, out, options, *rest)

        monkeypatch.setattr(loop, "quantize_model", recording)
        monkeypatch.setattr(loop, "SearchImages", cls)
        # one Score over every image from a step's two halves: the scripted Score of every image
        monkeypatch.setattr(loop, "joined", lambda parts: cls.score(cls(), None, None, "joined"))

    def score(self, quantized, indices=None, backend=None) -> Score:
        changed = type(self).built[-1]
        if backend == "cpu":  # ranking names the CPU; steps are scored on the search's backend
            type(self).ranked_on.append(list(indices))
        elif backend is None:
            type(self).step_scorings.append(len(type(self).built))
        n = len(range(RANKING_IMAGES + 8) if indices is None else indices)
        noise = 10.0 ** (-(10.0 + sum(self.gain[layer] for layer in changed)) / 10)  # SQNR 10 dB + gains
        return Score(type(self).agreement(len(changed)), np.ones(n), np.full(n, noise),
                     np.arange(n, dtype=np.float64) % 5)


@pytest.mark.parametrize("precision", ["int16", "float"])
def test_layers_leave_int8_in_order_of_their_effect_until_the_budget(tiny_search, tmp_path, monkeypatch, precision):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float((7 * i) % len(convs)) / 10 for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: min(1.0, 0.7 + 0.1 * changed))  # 3 layers meet 0.05
    ScriptedImages.install(monkeypatch, tmp_path / "prepared.onnx")
    steps = tiny_search.run(0.05, precision)
    # every layer's effect is measured on the images with the largest step-0 detection error (here 1..4)
    assert ScriptedImages.ranked_on == [[i for i in range(RANKING_IMAGES + 8) if i % 5]] * len(convs)
    best_three = sorted(convs, key=lambda layer: -ScriptedImages.gain[layer])[:3]
    assert [s.layer for s in steps] == ["", *best_three]
    assert [s.precision for s in steps] == ["int8"] + [precision] * 3
    assert [s.effect_db for s in steps[1:]] == pytest.approx([ScriptedImages.gain[layer] for layer in best_three])
    assert [s.map50_agreement for s in steps] == pytest.approx([0.7, 0.8, 0.9, 1.0]) and layers_kept(steps) == 3
    assert ScriptedImages.built[-1] == set(best_three)
    if precision == "float":
        assert changed_layers(tmp_path / "out.onnx") == set(best_three)  # a float layer reads float weights, not dequantized int8 ones
        quantized = onnx.load(tmp_path / "out.onnx")
        dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
        assert all(n.input[1] not in dequantized for n in quantized.graph.node if n.name in best_three)

    generous = tiny_search.run(0.35, precision)
    assert [s.layer for s in generous] == [""] and changed_layers(tmp_path / "out.onnx") == set()
    assert ScriptedImages.built[-1] == set()


def test_a_layer_that_does_not_help_is_not_kept_and_the_model_keeps_the_others(tiny_search, tmp_path, monkeypatch):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float(i) for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: {0: 0.5, 1: 0.9}.get(changed, 0.7))
    ScriptedImages.install(monkeypatch, tmp_path / "prepared.onnx")
    missed = tiny_search.run(0.0, "float", max_steps=2)
    # step 2's layer is worse on the half scored first: refused without scoring the other half
    assert [s.map50_agreement for s in missed] == [0.5, 0.9, None] and [s.kept for s in missed] == [True, True, False]
    assert missed[2].halves.count(None) == 1 and ScriptedImages.step_scorings.count(len(ScriptedImages.built) - 1) == 1
    assert layers_kept(missed) == 1 and final_agreement(missed) == 0.9
    assert changed_layers(tmp_path / "out.onnx") == {missed[1].layer}  # step 1's layer float, step 2's back to int8
    text = steps_text(missed, 0.0)
    assert "rejected, worse on the half scored first: the other half not scored" in text and "budget NOT met with 1 layers kept" in text


class HalfAccumulator:
    """Stands in for a Score's per-image matches: the agreement on a subset is scripted per half."""

    def __init__(self, per_half: tuple[float, float], first_half: set[int]) -> None:
        self.per_half, self.first_half = per_half, first_half

    def resampled(self, images):
        half = 0 if set(images) <= self.first_half else 1
        return SimpleResult(self.per_half[half])


class SimpleResult:
    def __init__(self, value: float) -> None:
        self.value = value

    def result(self) -> dict:
        return {"map50": self.value}


def test_a_layer_stays_out_of_int8_only_if_it_helps_on_both_halves(tiny_search, tmp_path, monkeypatch):
    from qcal.search.loop import halves

    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    lucky, good = convs[-1], convs[-2]  # ranked first and second
    ScriptedImages.gain = {layer: 0.0 for layer in convs} | {lucky: 2.0, good: 1.0}
    first_half = set(halves(tiny_search.items)[0])
    assert first_half and len(first_half) < len(tiny_search.items)  # both halves hold search images

    def per_half(changed: set[str]) -> tuple[float, float]:
        a = 0.6 + (0.3 if lucky in changed else 0.0) + (0.1 if good in changed else 0.0)
        b = 0.6 - (0.1 if lucky in changed else 0.0) + (0.1 if good in changed else 0.0)
        return a, b

    ScriptedImages.install(monkeypatch, tmp_path / "prepared.onnx")
    score = ScriptedImages.score

    def scored(self, quantized, indices=None, backend=None):
        base = score(self, quantized, indices, backend)
        a, b = per_half(type(self).built[-1])
        on = set(range(len(tiny_search.items))) if indices is None else set(indices)
        agreement = a if on <= first_half else b if not on & first_half else (a + b) / 2
        return base._replace(agreement=agreement, accumulator=HalfAccumulator((a, b), first_half))

    monkeypatch.setattr(ScriptedImages, "score", scored)
    steps = tiny_search.run(0.01, "int16", max_steps=3)
    assert [s.layer for s in steps[1:3]] == [lucky, good]
    assert steps[1].map50_agreement > steps[0].map50_agreement and not steps[1].kept  # better pooled, worse on B
    assert steps[2].kept and steps[2].halves == pytest.approx([0.7, 0.7])
    assert ScriptedImages.built[-1] == {good}


def test_search_images_score_as_the_accuracy_report_does(tiny_search, tmp_path):
    t = tiny_search
    prepared, out, items, spec, conf = t.prepared, t.out, t.items, t.spec, t.decoder.conf_threshold
    options = QuantizeOptions()
    write_ort_ranges(activation_encodings(t.stats, options, t.info.tail_tensors), tmp_path / "ranges.json")
    quantize_model(prepared, tmp_path / "ranges.json", out, options, t.info.tail_nodes, t.info.tail_tensors)
    images = SearchImages(prepared, items, spec, t.decoder, tmp_path)
    scored = images.score(out)
    agreement, confidence_db, errors = scored.agreement, scored.confidence_db(), scored.detection_errors
    report = report_agreement(prepared, out, items, spec, t.decoder, tmp_path / "all")
    assert agreement == pytest.approx(report if report is not None else 1.0)
    run = {path: ort.InferenceSession(str(path)) for path in (prepared, out)}
    outputs = {path: np.concatenate([s.run(None, {spec.input_name: spec.read(item.raw)})[0] for item in items])
               for path, s in run.items()}
    assert confidence_db == pytest.approx(sqnr_db(confidence(outputs[prepared]), confidence(outputs[out])), rel=1e-6)
    spread = report_agreement(prepared, out, [items[0], items[2]], spec, t.decoder, tmp_path / "spread")
    assert images.score(out, [0, 2]).agreement == pytest.approx(spread or 1.0)
    for i in range(len(items)):  # detection error: where either model's confidence reaches conf
        reference = confidence(outputs[prepared][i]).astype(np.float64)
        scores = confidence(outputs[out][i])
        near = (reference >= conf) | (scores >= conf)
        assert errors[i] == pytest.approx(float(np.sum((reference - scores)[near] ** 2)), rel=1e-6)
    itself = report_agreement(prepared, prepared, items, spec, t.decoder, tmp_path / "itself")
    exact = images.score(prepared)
    assert exact.agreement == pytest.approx(1.0 if itself is None else itself) and exact.confidence_db() == float("inf")
    assert not exact.detection_errors.any()
    # SQNR on a subset pools that subset's images, as a run on those images alone does
    assert scored.confidence_db([0, 2]) == pytest.approx(images.score(out, [0, 2]).confidence_db(), rel=1e-9)
    # a step scored half by half, joined, is the step scored at once
    whole = joined([([1], images.score(out, [1])), ([0, 2], images.score(out, [0, 2]))])
    assert whole.agreement == scored.agreement and whole.agreement_on([1]) == images.score(out, [1]).agreement
    for name in ("signal", "noise", "detection_errors"):
        assert np.array_equal(getattr(whole, name), getattr(scored, name))


def test_hardest_images_are_the_largest_errors_in_list_order():
    assert hardest(np.array([0.0, 3.0, 1.0, 3.0, 2.0]), 3) == [1, 3, 4]
    assert hardest(np.array([1.0, 2.0]), 5) == [0, 1]


def test_a_layer_kept_in_int16_gets_16_bit_activations_and_keeps_int8_weights(tiny_search, tmp_path, monkeypatch):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float(i) for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: 0.5 + 0.4 * changed)  # one layer meets the budget
    ScriptedImages.install(monkeypatch, tmp_path / "prepared.onnx")
    strict = tiny_search.run(0.1, "int16")
    assert [s.precision for s in strict] == ["int8", "int16"] and strict[-1].kept
    layer = strict[1].layer
    prepared = onnx.load(tmp_path / "prepared.onnx")
    node = next(n for n in prepared.graph.node if n.name == layer)
    group_outputs = [o for n in prepared.graph.node if n.name in layer_nodes(prepared, layer) for o in n.output]
    quantized = onnx.load(tmp_path / "out.onnx")
    zero_point_type = {i.name: i.data_type for i in quantized.graph.initializer}
    quantize_of = {n.input[0]: n for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    dequantize_to = {n.output[0]: n for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    conv = next(c for c in quantized.graph.node if c.name == layer)
    # the layer reads uint16 (through a uint8 -> uint16 conversion) and writes uint16
    assert zero_point_type[dequantize_to[conv.input[0]].input[2]] == onnx.TensorProto.UINT16
    for tensor in group_outputs:
        assert zero_point_type[quantize_of[tensor].input[2]] == onnx.TensorProto.UINT16, tensor
    assert zero_point_type[dequantize_to[conv.input[1]].input[2]] == onnx.TensorProto.INT8  # weights stay int8
    # every quantized op reads the type it writes (what Qualcomm's HTP requires)
    for n in quantized.graph.node:
        if n.op_type in ("Conv", "LeakyRelu", "Mul", "Sigmoid", "MaxPool"):
            reads = {zero_point_type[dequantize_to[i].input[2]] for i in n.input if i in dequantize_to
                     and dequantize_to[i].input[0] not in zero_point_type}
            writes = {zero_point_type[quantize_of[o].input[2]] for o in n.output if o in quantize_of}
            assert len(reads | writes) <= 1, (n.name, reads, writes)
    others = [n for n in prepared.graph.node if n.op_type == "Conv" and n.name != layer and n.output[0] in quantize_of]
    eight = [n for n in others if zero_point_type[quantize_of[n.output[0]].input[2]] == onnx.TensorProto.UINT8]
    assert len(eight) >= len(others) - 2  # the rest of the model stays 8-bit
    with pytest.raises(ValueError, match="precision"):
        tiny_search.run(0.0, "bf16")
