"""Accuracy-aware mixed precision: layer ranking and the budgeted search on a real (tiny) model."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import write_jpeg
from qcal.calibrate import calibrate
from qcal.model import find_decode_tail, prepare, tail_tensors
from qcal.preprocess import image_to_raw, resolve_profile
from qcal.quantize import QuantizeOptions
from qcal.search import layer_nodes, layers_kept, rank_layers, search
from qcal.synthetic import build_tiny


def chain() -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((3, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="c1"), helper.make_node("Relu", ["a"], ["b"], name="r"),
             helper.make_node("Conv", ["b", "w"], ["c"], name="c2"), helper.make_node("Conv", ["c", "w"], ["d"], name="c3")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_tensor_value_info("d", TensorProto.FLOAT, None)], [w])
    return helper.make_model(graph)


def test_layers_rank_by_the_sqnr_they_lose():
    sqnr = {"a": 50.0, "b": 49.0, "c": 30.0, "d": 28.0}
    ranking = rank_layers(chain(), sqnr, "x", skip=set())
    assert [name for name, _ in ranking] == ["c1", "c2", "c3"]  # 150 (from a clean input), 19, 2 dB
    assert ranking[1][1] == pytest.approx(19.0) and ranking[2][1] == pytest.approx(2.0)
    assert [n for n, _ in rank_layers(chain(), sqnr, "x", skip={"c1"})] == ["c2", "c3"]


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


def test_search_keeps_layers_float_until_the_budget_or_the_step_limit(tiny_search, tmp_path, monkeypatch):
    args = tiny_search
    generous = search(*args, max_drop=1.0, precision="float")
    assert len(generous) == 1 and generous[0].layer == ""  # budget met at once: nothing kept float

    strict = search(*args, max_drop=0.0, max_steps=3, precision="float")
    assert strict[0].layer == ""
    tried = [s for s in strict[1:] if s.back_to is None]
    assert 1 <= len(tried) <= 3 and all(s.precision == "float" for s in tried)
    assert len({s.layer for s in tried}) == len(tried)
    if strict[-1].back_to is None:
        assert strict[-1].drop == 0.0 or len(tried) == 3  # stops at the budget or at the step limit
    else:  # budget not met: the best step's model is shipped
        assert len(tried) == 3 and strict[-1].map50_agreement == max(s.map50_agreement for s in strict[:-1])
    kept = [s.layer for s in strict[1:layers_kept(strict) + 1]]
    quantized = onnx.load(tmp_path / "out.onnx")
    convs = {n.name: n for n in quantized.graph.node if n.op_type == "Conv"}
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    for layer in kept:  # a float layer reads float weights, not dequantized int8 ones
        assert convs[layer].input[1] not in dequantized

    # A budget never met: the model shipped is the best step's, not the last one's.
    scores = iter([0.5, 0.9, 0.7])
    monkeypatch.setattr("qcal.search.evaluate",
                        lambda *a, **k: SimpleNamespace(agreement={"map50": next(scores)}))
    missed = search(*args, max_drop=0.0, max_steps=2, precision="float")
    assert [s.map50_agreement for s in missed] == [0.5, 0.9, 0.7, 0.9] and missed[-1].back_to == 1
    assert layers_kept(missed) == 1
    quantized = onnx.load(tmp_path / "out.onnx")
    convs = {n.name: n for n in quantized.graph.node if n.op_type == "Conv"}
    dequantized = {n.output[0] for n in quantized.graph.node if n.op_type == "DequantizeLinear"}
    assert convs[missed[1].layer].input[1] not in dequantized  # step 1's layer float,
    assert convs[missed[2].layer].input[1] in dequantized      # step 2's back to int8


def test_a_layer_kept_in_int16_gets_16_bit_activations_and_keeps_int8_weights(tiny_search, tmp_path, monkeypatch):
    scores = iter([0.5, 0.9])  # step 1 helps, so its model is the one shipped
    monkeypatch.setattr("qcal.search.evaluate", lambda *a, **k: SimpleNamespace(agreement={"map50": next(scores)}))
    strict = search(*tiny_search, max_drop=0.0, max_steps=1, precision="int16")
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
