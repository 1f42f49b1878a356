"""qcal's ranges reach ONNX Runtime's QDQ quantizer unchanged, and encodings are read back correctly."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from qcal.encodings import encodings_from_qdq, encodings_v1
from qcal.quantize import QuantizeOptions, activation_encodings, quantize_model, write_ort_ranges
from qcal.stats import TensorStats

SNPE_EXAMPLE = np.array([-1.8, -1.0, 0.0, 0.5], np.float32)


def add_model() -> onnx.ModelProto:
    """x -> Add(x, 0) -> Mul(., 1) -> y: quantizable ops with x as a quantized input."""
    zero = numpy_helper.from_array(np.zeros(4, np.float32), "zero")
    one = numpy_helper.from_array(np.ones(4, np.float32), "one")
    nodes = [helper.make_node("Add", ["x", "zero"], ["a"], name="add"),
             helper.make_node("Mul", ["a", "one"], ["y"], name="mul")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [zero, one])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.fixture
def quantized(tmp_path):
    onnx.save(add_model(), tmp_path / "m.onnx")
    stats = {name: TensorStats.from_values(SNPE_EXAMPLE) for name in ("x", "a", "y")}
    encodings = activation_encodings(stats, QuantizeOptions())
    write_ort_ranges(encodings, tmp_path / "ranges.json")
    quantize_model(tmp_path / "m.onnx", tmp_path / "ranges.json", tmp_path / "q.onnx", QuantizeOptions(), [], [])
    return tmp_path / "q.onnx", encodings


def test_snpe_worked_example_survives_onnx_runtime(quantized):
    path, encodings = quantized
    ours = encodings["x"]
    assert ours.min == pytest.approx(-1.803922, abs=1e-6) and ours.max == pytest.approx(0.496078, abs=1e-6)
    model = onnx.load(path)
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    q_x = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
    scale, zero_point = float(inits[q_x.input[1]]), int(inits[q_x.input[2]])
    assert scale == pytest.approx(ours.scale, rel=1e-6) and zero_point == -ours.offset == 200
    # What ORT actually computes for x's quantized values: SNPE's q = [0, 89, 200, 255].
    probe = onnx.load(path)
    probe.graph.output.append(helper.make_tensor_value_info(q_x.output[0], TensorProto.UINT8, [4]))
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    q = session.run([q_x.output[0]], {"x": SNPE_EXAMPLE})[0]
    assert q.tolist() == [0, 89, 200, 255]


def test_encodings_file_matches_the_qdq_model(quantized):
    path, encodings = quantized
    written = encodings_from_qdq(onnx.load(path))
    entry = written["activation_encodings"]["x"][0]
    assert entry["bitwidth"] == 8 and entry["offset"] == -200 and entry["is_symmetric"] == "False"
    assert entry["min"] == pytest.approx(-1.803922, abs=1e-6) and entry["max"] == pytest.approx(0.496078, abs=1e-6)


def test_encodings_1_0_0_carry_the_same_numbers_as_0_6_1(quantized):
    path, _ = quantized
    legacy = encodings_from_qdq(onnx.load(path))
    current = encodings_v1(legacy)
    assert current["version"] == "1.0.0" and current["excluded_layers"] == []
    x = next(e for e in current["activation_encodings"] if e["name"] == "x")
    assert x == {"name": "x", "enc_type": "PER_TENSOR", "dtype": "INT", "bw": 8, "is_sym": False,
                 "scale": [legacy["activation_encodings"]["x"][0]["scale"]], "offset": [-200]}
    assert [e["name"] for e in current["activation_encodings"]] == list(legacy["activation_encodings"])


def test_derived_statistics_equal_observed_ones(tmp_path):
    """Reshape/Transpose/Concat outputs are filled from their inputs: identical to observing them, and
    identical whatever the thread count."""
    from conftest import write_jpeg
    from qcal import calibrate as cal
    from qcal.model import prepare
    from qcal.preprocess import image_to_raw, resolve_profile
    from qcal.raws import InputSpec
    from qcal.synthetic import build_tiny

    profile = resolve_profile("yolov5", {"height": 64, "width": 64})
    onnx.save(prepare(build_tiny(size=(64, 64))), tmp_path / "m.onnx")
    raws = []
    for i in range(3):
        image_to_raw(write_jpeg(tmp_path / f"{i}.jpg", 80, 60 + i, seed=i), tmp_path / f"{i}.raw",
                     tmp_path / f"{i}.json", profile)
        raws.append(str(tmp_path / f"{i}.raw"))
    spec = InputSpec(profile, "images", "NCHW")
    fast, _ = cal.calibrate(tmp_path / "m.onnx", raws, spec)
    # threads share the statistics updates between them: the result must not depend on how many
    assert cal.calibrate(tmp_path / "m.onnx", raws, spec, threads=3)[0] == fast
    model = onnx.load(tmp_path / "m.onnx")
    derived = cal.derived_tensors(model, list(fast))
    assert any(how == "merge" for how, _ in derived.values()) and any(how == "same" for how, _ in derived.values())
    observed = {name: cal.TensorStats() for name in derived}
    session = cal.observing_session(model, list(derived), threads=1)
    names = [o.name for o in session.get_outputs()]
    for raw in raws:
        for name, value in zip(names, session.run(names, {"images": spec.read(raw)})):
            if name in observed:
                observed[name].update(value)
    assert all(fast[name] == observed[name] for name in derived)
