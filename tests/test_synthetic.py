"""Tests for qcal.synthetic: random-weight graphs laid out like YOLOv5's ONNX export.

The YOLOv5s build at 640x640 (7.2M parameters) is made once per module; everything else uses tiny
builds (8..64 channels, 64x64 or so) that build and run in well under a second.
"""

from __future__ import annotations

import ast

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from qcal import synthetic
from qcal.model import find_decode_tail, prepare
from qcal.names import COCO_NAMES
from qcal.synthetic import (activation_volume, build_tiny, build_yolov5,
                            parameter_count, scaled_depth, scaled_width)

# Every op type YOLOv5's export writes (static / --dynamic batch).
EXPORT_OPS = {"Conv", "Sigmoid", "Mul", "Add", "Concat", "MaxPool", "Resize", "Constant", "Reshape",
              "Transpose", "Split", "Pow"}
DYNAMIC_OPS = {"Shape", "Gather", "Unsqueeze"}


def rows(height: int, width: int) -> int:
    return 3 * sum((height // s) * (width // s) for s in (8, 16, 32))


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


def noise(batch: int, height: int, width: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, 3, height, width), dtype=np.float32)


def dims(value: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------
# YOLOv5s at 640 (built once)
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def yolov5s() -> onnx.ModelProto:
    return build_yolov5()


def test_yolov5s_parameter_count_matches_the_real_model(yolov5s):
    # YOLOv5's fused summary: "YOLOv5s summary: 157 layers, 7225885 parameters".
    assert parameter_count(yolov5s) == 7_225_885


def test_yolov5s_graph_is_valid_and_shaped_like_the_export(yolov5s):
    onnx.checker.check_model(yolov5s, full_check=True)
    assert [i.name for i in yolov5s.graph.input] == ["images"]
    assert dims(yolov5s.graph.input[0]) == [1, 3, 640, 640]
    assert [o.name for o in yolov5s.graph.output] == ["output0"]
    assert dims(yolov5s.graph.output[0]) == [1, 3 * (80 * 80 + 40 * 40 + 20 * 20), 85] == [1, 25200, 85]
    assert yolov5s.opset_import[0].version == 12
    assert {n.op_type for n in yolov5s.graph.node} == EXPORT_OPS
    convs = [n for n in yolov5s.graph.node if n.op_type == "Conv"]
    assert len(convs) == 60 and all(len(n.input) == 3 for n in convs)  # BN folded: every Conv has a bias
    first = convs[0]
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in first.attribute}
    assert (attrs["kernel_shape"], attrs["strides"], attrs["pads"]) == ([6, 6], [2, 2], [2, 2, 2, 2])
    shapes = {t.name: list(t.dims) for t in yolov5s.graph.initializer}
    assert shapes["model.0.conv.weight"] == [32, 3, 6, 6]
    assert shapes["model.9.cv2.conv.weight"] == [512, 1024, 1, 1]
    assert shapes["model.24.m.0.weight"] == [255, 128, 1, 1]
    assert shapes["model.24.m.2.weight"] == [255, 512, 1, 1]
    # value_info as torch's exporter writes it: every intermediate float tensor has a full shape.
    assert len(yolov5s.graph.value_info) > 200


def test_yolov5s_runs_with_realistic_activations(yolov5s):
    model = onnx.ModelProto()
    model.CopyFrom(yolov5s)
    silu = [n.output[0] for n in model.graph.node if n.op_type == "Mul" and n.name.endswith("/act/Mul")]
    heads = [f"/model.24/m.{i}/Conv_output_0" for i in range(3)]
    assert len(silu) == 57
    for name in silu + heads:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    out, *acts = session(model).run(["output0", *silu, *heads], {"images": noise(1, 640, 640)})
    assert out.shape == (1, 25200, 85)
    assert np.isfinite(out).all()
    for name, act in zip(silu + heads, acts):
        assert np.isfinite(act).all(), name
        assert 1.0 <= np.abs(act).max() <= 100.0, (name, np.abs(act).max())
    xy, wh, scores = out[0, :, :2], out[0, :, 2:4], out[0, :, 4:]
    assert xy.min() >= -32 and xy.max() <= 640 + 32  # (2 * sigmoid - 0.5 + cell) * stride
    assert wh.min() >= 0 and wh.max() <= 4 * 373  # (2 * sigmoid) ** 2 * anchor
    assert scores.min() >= 0 and scores.max() <= 1
    assert 0 < (out[0, :, 4] > 0.25).sum() < 0.05 * 25200  # a few candidates, not everything


def test_yolov5s_activation_volume(yolov5s):
    volume = activation_volume(yolov5s)
    # Dominated by the 320x320 and 160x160 maps; independent of the weights.
    assert volume["tensors"] == 242
    assert 9e7 < volume["total"] < 1.1e8
    assert volume["convs"] == 25_796_400


# --------------------------------------------------------------------------
# tiny builds
# --------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [12, 13, 17])
def test_tiny_is_valid_and_runs_for_each_opset(opset):
    model = build_tiny(opset=opset)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    split = next(n for n in model.graph.node if n.op_type == "Split")
    resize = next(n for n in model.graph.node if n.op_type == "Resize")
    if opset >= 13:  # sizes as an input; Resize's roi omitted
        assert len(split.input) == 2 and resize.input[1] == ""
    else:  # sizes as an attribute; Resize-11 needs a roi input (an empty tensor)
        assert len(split.input) == 1 and [a.name for a in split.attribute] == ["axis", "split"]
        assert resize.input[1] != ""
    out = session(model).run(None, {"images": noise(1, 64, 64)})[0]
    assert out.shape == (1, rows(64, 64), 85) == (1, 252, 85)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("size", [(64, 64), (128, 128), (96, 160)])
def test_tiny_output_rows_match_the_size(size):
    model = build_tiny(size=size)
    height, width = size
    assert dims(model.graph.input[0]) == [1, 3, height, width]
    assert dims(model.graph.output[0]) == [1, rows(height, width), 85]
    out = session(model).run(None, {"images": noise(1, height, width)})[0]
    assert out.shape == (1, rows(height, width), 85)


def test_tiny_is_a_small_valid_detector():
    model = build_tiny()
    onnx.checker.check_model(model, full_check=True)
    assert parameter_count(model) < 200_000  # small enough for quick workflow tests
    out = session(model).run(None, {"images": noise(1, 64, 64)})[0]
    assert out.shape == (1, rows(64, 64), 85) and np.isfinite(out).all()


def test_dynamic_batch_runs_for_batch_1_and_2():
    model = build_tiny(dynamic_batch=True, opset=13)
    onnx.checker.check_model(model, full_check=True)
    assert dims(model.graph.input[0]) == ["batch", 3, 64, 64]
    assert dims(model.graph.output[0]) == ["batch", 252, 85]
    assert DYNAMIC_OPS <= {n.op_type for n in model.graph.node}
    sess = session(model)
    images = noise(2, 64, 64)
    one = [sess.run(None, {"images": images[i:i + 1]})[0] for i in range(2)]
    both = sess.run(None, {"images": images})[0]
    assert both.shape == (2, 252, 85)
    np.testing.assert_allclose(both[0:1], one[0], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(both[1:2], one[1], rtol=1e-5, atol=1e-5)
    # Same weights as the static build: only the reshape targets differ.
    static = session(build_tiny(opset=13)).run(None, {"images": images[:1]})[0]
    np.testing.assert_allclose(static, one[0], rtol=1e-5, atol=1e-5)


def test_dynamic_batch_opset_12_uses_unsqueeze_attribute():
    model = build_tiny(dynamic_batch=True, opset=12)
    onnx.checker.check_model(model, full_check=True)
    out = session(model).run(None, {"images": noise(2, 64, 64)})[0]
    assert out.shape == (2, 252, 85)


def test_exporter_names():
    model = build_tiny()
    names = [n.name for n in model.graph.node]
    for expected in ("/model.0/conv/Conv", "/model.0/act/Sigmoid", "/model.0/act/Mul",
                     "/model.2/cv1/conv/Conv", "/model.2/m/m.0/cv1/conv/Conv", "/model.2/m/m.0/Add",
                     "/model.2/Concat", "/model.2/cv3/act/Mul", "/model.9/m/MaxPool", "/model.9/m_1/MaxPool",
                     "/model.9/m_2/MaxPool", "/model.11/Resize", "/model.12/Concat", "/model.24/m.0/Conv",
                     "/model.24/Reshape", "/model.24/Transpose", "/model.24/Split", "/model.24/Pow",
                     "/model.24/Mul_3", "/model.24/Reshape_5", "/model.24/Concat_3"):
        assert expected in names, expected
    assert len(set(names)) == len(names)
    # Head C3s have no shortcut: no Add under /model.13 ... /model.23.
    bottleneck_adds = [n for n in names if "/m/m." in n and n.endswith("/Add")]
    assert bottleneck_adds == [f"/model.{i}/m/m.{j}/Add" for i, n in ((2, 1), (4, 2), (6, 3), (8, 1)) for j in range(n)]
    for node in model.graph.node:
        assert list(node.output) == [f"{node.name}_output_{i}" for i in range(len(node.output))] or \
            list(node.output) == ["output0"]
    # The per-level constants come in the exporter's order: view shape, 2, grid, stride, 2, 2,
    # anchor_grid, flat shape (so /model.24/Constant_22 is level 2's anchor_grid).
    consts = {n.name: onnx.numpy_helper.to_array(n.attribute[0].t) for n in model.graph.node
              if n.op_type == "Constant" and n.name.startswith("/model.24/")}
    assert len(consts) == 24
    np.testing.assert_array_equal(consts["/model.24/Constant"], [1, 3, 85, 8, 8])
    assert consts["/model.24/Constant_3"] == 8 and consts["/model.24/Constant_19"] == 32
    assert consts["/model.24/Constant_22"].shape == (1, 3, 2, 2, 2)
    np.testing.assert_array_equal(consts["/model.24/Constant_22"][0, :, 0, 0], [[116, 90], [156, 198], [373, 326]])
    np.testing.assert_array_equal(consts["/model.24/Constant_2"][0, 0, 0, :2], [[-0.5, -0.5], [0.5, -0.5]])
    np.testing.assert_array_equal(consts["/model.24/Constant_23"], [1, 12, 85])


def test_decode_tail_matches_yolov5_detect_forward():
    model = build_tiny(size=(64, 96))
    heads = [f"/model.24/m.{i}/Conv_output_0" for i in range(3)]
    for name in heads:
        model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    out, *maps = session(model).run(["output0", *heads], {"images": noise(1, 64, 96)})
    decoded = []
    for raw, stride, anchors in zip(maps, (8, 16, 32), synthetic.ANCHORS):
        bs, _, ny, nx = raw.shape
        y = 1 / (1 + np.exp(-raw.reshape(bs, 3, 85, ny, nx).transpose(0, 1, 3, 4, 2).astype(np.float64)))
        yv, xv = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
        grid = np.stack((xv, yv), 2)[None, None] - 0.5
        anchor_grid = np.array(anchors, np.float64).reshape(1, 3, 1, 1, 2)
        xy = (y[..., :2] * 2 + grid) * stride
        wh = (y[..., 2:4] * 2) ** 2 * anchor_grid
        decoded.append(np.concatenate((xy, wh, y[..., 4:]), 4).reshape(bs, -1, 85))
    np.testing.assert_allclose(out, np.concatenate(decoded, 1), rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("style", ["none", "legacy"])
def test_unnamed_and_legacy_variants_run_and_qcal_names_them(style):
    model = build_tiny(name_style=style)
    onnx.checker.check_model(model, full_check=True)
    names = [n.name for n in model.graph.node]
    if style == "none":
        assert not any(names)
    else:
        assert names[:3] == ["Conv_0", "Sigmoid_1", "Mul_2"]
    reference = session(build_tiny()).run(None, {"images": noise(1, 64, 64)})[0]
    out = session(model).run(None, {"images": noise(1, 64, 64)})[0]
    np.testing.assert_array_equal(out, reference)
    prepared = prepare(model)
    assert all(n.name for n in prepared.graph.node)
    tail = find_decode_tail(prepared)
    assert len(tail.head_nodes) == 3
    assert tail.op_types == {"Reshape": 6, "Transpose": 3, "Sigmoid": 3, "Split": 3, "Mul": 12, "Add": 3,
                             "Pow": 3, "Concat": 4}


def test_constants_as_initializers():
    model = build_tiny(constants="initializer")
    onnx.checker.check_model(model, full_check=True)
    assert "Constant" not in {n.op_type for n in model.graph.node}
    assert "/model.24/Constant_22_output_0" in {t.name for t in model.graph.initializer}
    assert parameter_count(model) == parameter_count(build_tiny())
    out = session(model).run(None, {"images": noise(1, 64, 64)})[0]
    np.testing.assert_array_equal(out, session(build_tiny()).run(None, {"images": noise(1, 64, 64)})[0])


def test_metadata_like_yolov5_export():
    model = build_tiny()
    props = {p.key: p.value for p in model.metadata_props}
    assert props["stride"] == "32"
    names = ast.literal_eval(props["names"])
    assert names == dict(enumerate(COCO_NAMES)) and len(names) == 80
    assert props["names"].startswith("{0: 'person', 1: 'bicycle', 2: 'car'")
    custom = build_tiny(num_classes=3, class_names=["a", "b", "c"])
    assert {p.key: p.value for p in custom.metadata_props}["names"] == "{0: 'a', 1: 'b', 2: 'c'}"
    assert dims(custom.graph.output[0]) == [1, 252, 8]


def test_deterministic_per_seed():
    a, b, c = build_tiny(seed=3), build_tiny(seed=3), build_tiny(seed=4)
    assert a.SerializeToString() == b.SerializeToString()
    def first_weight(model: onnx.ModelProto) -> np.ndarray:
        return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "model.0.conv.weight"))

    assert not np.array_equal(first_weight(a), first_weight(c))


def test_det_bias_raises_objectness():
    images = noise(1, 128, 128, seed=7)
    low = session(build_tiny(size=(128, 128), det_bias=-3)).run(None, {"images": images})[0]
    high = session(build_tiny(size=(128, 128), det_bias=3)).run(None, {"images": images})[0]
    assert (high[0, :, 4] > 0.25).sum() > (low[0, :, 4] > 0.25).sum()
    np.testing.assert_allclose(high[..., 5:], low[..., 5:], rtol=1e-5, atol=1e-6)


def test_scaling_rules_follow_parse_model():
    assert [scaled_width(c, 0.5) for c in (64, 128, 256, 512, 1024)] == [32, 64, 128, 256, 512]
    assert [scaled_width(c, 0.0625) for c in (64, 128, 256, 512, 1024)] == [8, 8, 16, 32, 64]
    assert [scaled_depth(n, 0.33) for n in (1, 3, 6, 9)] == [1, 1, 2, 3]
    assert [scaled_depth(n, 0.67) for n in (3, 6, 9)] == [2, 4, 6]  # round, as YOLOv5 (not ceil)


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="multiples of 32"):
        build_tiny(size=(60, 64))
    with pytest.raises(ValueError, match="opset"):
        build_tiny(opset=11)
    with pytest.raises(ValueError, match="name_style"):
        build_tiny(name_style="pretty")


def test_cli_writes_a_model(tmp_path):
    out = tmp_path / "sub" / "tiny.onnx"
    assert synthetic.main(["--out", str(out), "--size", "64", "64", "--width-multiple", "0.0625",
                           "--opset", "13", "--dynamic"]) == 0
    model = onnx.load(out)
    assert dims(model.graph.output[0]) == ["batch", 252, 85]
