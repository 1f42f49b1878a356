"""Accuracy-aware mixed precision: layer ranking and the budgeted search on a real (tiny) model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_jpeg
from qcal.calibrate import calibrate, read_input
from qcal.detections import sqnr_db
from qcal.evaluate import evaluate
from qcal.model import find_decode_tail, prepare, tail_tensors
from qcal.preprocess import image_to_raw, resolve_profile
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges
from qcal.search import (RANKING_IMAGES, Score, SearchImages, confidence, hardest, layer_nodes, layers_kept, search,
                         steps_text)
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


@pytest.fixture
def tiny_search(tmp_path):
    """search()'s positional arguments for a tiny detector: 3 calibration images, 3 evaluation images."""
    size = 64
    profile = resolve_profile("yolov5", {"height": size, "width": size})
    model = prepare(build_tiny(size=(size, size), det_bias=2.0))
    onnx.save(model, tmp_path / "prepared.onnx")
    tail = find_decode_tail(model)
    items = []
    for i in range(6):
        image = write_jpeg(tmp_path / f"img{i}.jpg", 90 + 5 * i, 70, seed=i)
        result = image_to_raw(image, tmp_path / f"{i}.raw", tmp_path / f"{i}.json", profile)
        items.append((str(tmp_path / f"{i}.raw"), {"image": result.image, "letterbox": result.letterbox}))
    stats, _ = calibrate(tmp_path / "prepared.onnx", [raw for raw, _ in items[:3]], profile, "images", "NCHW")
    return (tmp_path / "prepared.onnx", stats, tmp_path / "out.onnx", QuantizeOptions(),
            tail.tail_nodes, tail_tensors(model, tail), items[3:], profile, "images", "NCHW", 0.25, 0.45)


def changed_layers(path) -> set[str]:
    """Convs of a QDQ model that left int8: float weights (kept float) or a uint16 output (kept int16)."""
    model = onnx.load(path)
    zero_point_type = {i.name: i.data_type for i in model.graph.initializer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}
    q_type = {n.input[0]: zero_point_type.get(n.input[2]) for n in model.graph.node
              if n.op_type == "QuantizeLinear" and len(n.input) > 2}
    return {n.name for n in model.graph.node if n.op_type == "Conv"
            and (n.input[1] not in dequantized or q_type.get(n.output[0]) == TensorProto.UINT16)}


class ScriptedImages:
    """Stands in for SearchImages: scores a quantized model by which layers left int8, so the search's
    order and stopping can be checked exactly. Real scoring is tested against qcal.evaluate below."""
    gain: dict[str, float] = {}
    agreement = staticmethod(lambda changed: 1.0)

    def __init__(self, *args, **kwargs) -> None:
        pass

    ranked_on: list[list[int]] = []  # the image indices of every partial scoring

    def score(self, quantized, indices=None) -> Score:
        changed = changed_layers(quantized)
        if indices is not None:
            type(self).ranked_on.append(list(indices))
        n = len(range(RANKING_IMAGES + 8) if indices is None else indices)
        noise = 10.0 ** (-(10.0 + sum(self.gain[layer] for layer in changed)) / 10)  # SQNR 10 dB + gains
        return Score(type(self).agreement(len(changed)), np.ones(n), np.full(n, noise),
                     np.arange(n, dtype=np.float64) % 5)


@pytest.mark.parametrize("precision", ["int16", "float"])
def test_layers_leave_int8_in_order_of_their_effect_until_the_budget(tiny_search, tmp_path, monkeypatch, precision):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float((7 * i) % len(convs)) / 10 for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: min(1.0, 0.7 + 0.1 * changed))  # 3 layers meet 0.05
    monkeypatch.setattr("qcal.search.SearchImages", ScriptedImages)
    ScriptedImages.ranked_on = []
    steps = search(*tiny_search, max_drop=0.05, precision=precision)
    # every layer's effect is measured on the images with the largest step-0 detection error (here 1..4)
    assert ScriptedImages.ranked_on == [[i for i in range(RANKING_IMAGES + 8) if i % 5]] * len(convs)
    best_three = sorted(convs, key=lambda layer: -ScriptedImages.gain[layer])[:3]
    assert [s.layer for s in steps] == ["", *best_three]
    assert [s.precision for s in steps] == ["int8"] + [precision] * 3
    assert [s.effect_db for s in steps[1:]] == pytest.approx([ScriptedImages.gain[layer] for layer in best_three])
    assert [s.map50_agreement for s in steps] == pytest.approx([0.7, 0.8, 0.9, 1.0]) and layers_kept(steps) == 3
    assert changed_layers(tmp_path / "out.onnx") == set(best_three)
    if precision == "float":  # a float layer reads float weights, not dequantized int8 ones
        quantized = onnx.load(tmp_path / "out.onnx")
        dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
        assert all(n.input[1] not in dequantized for n in quantized.graph.node if n.name in best_three)

    generous = search(*tiny_search, max_drop=0.35, precision=precision)
    assert [s.layer for s in generous] == [""] and changed_layers(tmp_path / "out.onnx") == set()


def test_a_budget_never_met_ships_the_best_step(tiny_search, tmp_path, monkeypatch):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float(i) for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: {0: 0.5, 1: 0.9}.get(changed, 0.7))
    monkeypatch.setattr("qcal.search.SearchImages", ScriptedImages)
    missed = search(*tiny_search, max_drop=0.0, max_steps=2, precision="float")
    assert [s.map50_agreement for s in missed] == [0.5, 0.9, 0.7, 0.9] and missed[-1].back_to == 1
    assert layers_kept(missed) == 1
    assert changed_layers(tmp_path / "out.onnx") == {missed[1].layer}  # step 1's layer float, step 2's back to int8
    assert "budget not met: back to step 1" in steps_text(missed, 0.0)


def test_search_images_score_as_the_accuracy_report_does(tiny_search, tmp_path):
    prepared, stats, out, options, tail_nodes, tails, items, profile, name, layout, conf, iou = tiny_search
    write_ort_ranges(activation_encodings(stats, options, tails), tmp_path / "ranges.json")
    quantize_model(prepared, tmp_path / "ranges.json", out, options, tail_nodes, tails)
    images = SearchImages(prepared, items, profile, name, layout, conf, iou, tmp_path)
    scored = images.score(out)
    agreement, confidence_db, errors = scored.agreement, scored.confidence_db(), scored.detection_errors
    report = evaluate(prepared, out, items, profile, name, layout, conf, iou, None)
    assert agreement == pytest.approx(report.agreement["map50"] if report.agreement["map50"] is not None else 1.0)
    run = {path: ort.InferenceSession(str(path)) for path in (prepared, out)}
    outputs = {path: np.concatenate([s.run(None, {name: read_input(raw, profile, layout)})[0] for raw, _ in items])
               for path, s in run.items()}
    assert confidence_db == pytest.approx(sqnr_db(confidence(outputs[prepared]), confidence(outputs[out])), rel=1e-6)
    spread = evaluate(prepared, out, [items[0], items[2]], profile, name, layout, conf, iou, None)
    assert images.score(out, [0, 2]).agreement == pytest.approx(spread.agreement["map50"] or 1.0)
    for i, (raw, _) in enumerate(items):  # detection error: where either model's confidence reaches conf
        reference = confidence(outputs[prepared][i]).astype(np.float64)
        scores = confidence(outputs[out][i])
        near = (reference >= conf) | (scores >= conf)
        assert errors[i] == pytest.approx(float(np.sum((reference - scores)[near] ** 2)), rel=1e-6)
    itself = evaluate(prepared, prepared, items, profile, name, layout, conf, iou, None).agreement["map50"]
    exact = images.score(prepared)
    assert exact.agreement == pytest.approx(1.0 if itself is None else itself) and exact.confidence_db() == float("inf")
    assert not exact.detection_errors.any()
    # SQNR on a subset pools that subset's images, as a run on those images alone does
    assert scored.confidence_db([0, 2]) == pytest.approx(images.score(out, [0, 2]).confidence_db(), rel=1e-9)


def test_hardest_images_are_the_largest_errors_in_list_order():
    assert hardest(np.array([0.0, 3.0, 1.0, 3.0, 2.0]), 3) == [1, 3, 4]
    assert hardest(np.array([1.0, 2.0]), 5) == [0, 1]


def test_a_layer_kept_in_int16_gets_16_bit_activations_and_keeps_int8_weights(tiny_search, tmp_path, monkeypatch):
    convs = [n.name for n in onnx.load(tmp_path / "prepared.onnx").graph.node if n.op_type == "Conv"]
    ScriptedImages.gain = {layer: float(i) for i, layer in enumerate(convs)}
    ScriptedImages.agreement = staticmethod(lambda changed: 0.5 + 0.4 * changed)  # one layer meets the budget
    monkeypatch.setattr("qcal.search.SearchImages", ScriptedImages)
    strict = search(*tiny_search, max_drop=0.1, precision="int16")
    assert [s.precision for s in strict] == ["int8", "int16"] and strict[-1].back_to is None
    layer = strict[1].layer
    prepared = onnx.load(tmp_path / "prepared.onnx")
    node = next(n for n in prepared.graph.node if n.name == layer)
    group_outputs = [o for n in prepared.graph.node if n.name in layer_nodes(prepared, layer) for o in n.output]
    quantized = onnx.load(tmp_path / "out.onnx")
    zero_point_type = {i.name: i.data_type for i in quantized.graph.initializer}
    quantize_of = {n.input[0]: n for n in quantized.graph.node if n.op_type == "QuantizeLinear"}
    for tensor in [node.input[0], *group_outputs]:  # the layer's input and outputs are uint16
        assert zero_point_type[quantize_of[tensor].input[2]] == onnx.TensorProto.UINT16, tensor
    weight_dq = next(n for n in quantized.graph.node if n.op_type == "DequantizeLinear"
                     and n.output[0] == next(c for c in quantized.graph.node if c.name == layer).input[1])
    assert zero_point_type[weight_dq.input[2]] == onnx.TensorProto.INT8  # weights stay int8
    others = [n for n in prepared.graph.node if n.op_type == "Conv" and n.name != layer and n.output[0] in quantize_of]
    assert others and all(zero_point_type[quantize_of[n.output[0]].input[2]] == onnx.TensorProto.UINT8
                          for n in others if n.output[0] not in group_outputs)
    with pytest.raises(ValueError, match="precision"):
        search(*tiny_search, max_drop=0.0, precision="bf16")
