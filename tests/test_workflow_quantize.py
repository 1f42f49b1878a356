"""The model stages of the real workflow on a tiny YOLOv5-shaped model and generated images."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
import pytest

from conftest import jobs_run, snakemake, write_jpeg
from qcal.detections import output_sqnr
from qcal.stats import load_stats
from qcal.synthetic import build_tiny
from test_model_checks import fake_tool

SIZE = 64


@pytest.fixture
def project(tmp_path):
    images = tmp_path / "images"
    for i in range(7):
        write_jpeg(images / f"img{i}.jpg", 80 + 9 * i, 60 + 5 * i, seed=i)
    model = tmp_path / "models" / "tiny.onnx"
    model.parent.mkdir()
    onnx.save(build_tiny(size=(SIZE, SIZE)), model)
    config = {"images": str(images), "model": str(model),
              "preprocess": {"height": SIZE, "width": SIZE}, "calibration": {"shards": 3},
              "evaluation": {"holdout": 0}}
    return tmp_path, images, model, config


def test_quantize_end_to_end(project):
    tmp_path, images, model, config = project
    work = tmp_path / "work"
    # SNPE tf: the input's range is exactly [0, max pixel]; 8-bit weights, as ONNX Runtime's default below
    config["quantization"] = {"method": "minmax", "reduce_range": False}
    done = snakemake(work, config, "quantize")
    ran = jobs_run(done)
    assert ran["raw"] == 7 and ran["calibrate_shard"] == 3 and ran["quantize_model"] == 1
    assert "qcal quantization summary (7 calibration images, method minmax)" in done.stdout + done.stderr

    quantized = work / "results/model_quantized.onnx"
    session = ort.InferenceSession(str(quantized), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random((1, 3, SIZE, SIZE), dtype=np.float32)
    out = session.run(None, {"images": x})[0]
    reference = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    assert out.shape == reference.shape and np.isfinite(out).all()
    # On the calibration images the int8 model is as close to the float one as ONNX Runtime's own MinMax
    # quantization of the same model from the same images (this random tiny model is hard to quantize).
    inputs = calibration_inputs(work)
    info = json.loads((work / "results/model/model_info.json").read_text())
    peer = ort_minmax(work / "results/model/prepared.onnx", inputs, info["tail_nodes"], work / "ort.onnx")
    outputs = {name: np.concatenate([ort.InferenceSession(str(path)).run(None, {"images": x})[0] for x in inputs])
               for name, path in (("float", model), ("qcal", quantized), ("ort", peer))}
    ours, theirs = (output_sqnr(outputs["float"], outputs[name]) for name in ("qcal", "ort"))
    assert all(ours[group] >= theirs[group] - 0.5 for group in ("boxes", "objectness", "classes")), (ours, theirs)

    summary = json.loads((work / "results/quantize_summary.json").read_text())
    tail = summary["decode_tail"]
    assert tail["kept"] == "float" and tail["nodes"] > 0 and "Sigmoid" in tail["op_types"]
    assert len(tail["head_nodes"]) == 3  # the three Detect convolutions
    info = json.loads((work / "results/model/model_info.json").read_text())
    q = onnx.load(quantized)
    tail_outputs = {o for n in onnx.load(work / "results/model/prepared.onnx").graph.node
                    if n.name in set(info["tail_nodes"]) for o in n.output}
    assert not [n.name for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in tail_outputs]
    q_ops = {n.name: n.op_type for n in q.graph.node}
    p_ops = {n.name: n.op_type for n in onnx.load(work / "results/model/prepared.onnx").graph.node}
    assert all(q_ops.get(name) == p_ops[name] for name in info["tail_nodes"])  # still float ops

    encodings = json.loads((work / "results/encodings.json").read_text())
    prepared = onnx.load(work / "results/model/prepared.onnx")
    float_names = {o for n in prepared.graph.node for o in n.output} | {"images"}
    weights = {t.name for t in prepared.graph.initializer}
    assert encodings["activation_encodings"] and set(encodings["activation_encodings"]) <= float_names
    assert set(encodings["param_encodings"]) <= weights
    assert not set(encodings["activation_encodings"]) & tail_outputs  # the tail stays float
    enc = encodings["activation_encodings"]["images"][0]
    pixel_max = max(np.fromfile(line, np.float32).max()
                    for line in (work / "results/input_list.txt").read_text().split())
    assert enc["bitwidth"] == 8 and enc["offset"] == 0 and enc["min"] == 0  # x/255 >= 0: SNPE tf min is 0
    assert enc["max"] == pytest.approx(pixel_max, abs=1e-6)  # minmax keeps the true maximum
    conv_weights = {n.input[1]: n.input[2] if len(n.input) > 2 else None
                    for n in prepared.graph.node if n.op_type == "Conv"}
    quantized_convs = [w for w in conv_weights if w in encodings["param_encodings"]]
    assert quantized_convs
    for weight in quantized_convs:
        entries = encodings["param_encodings"][weight]
        out_channels = numpy_helper.to_array(next(t for t in prepared.graph.initializer if t.name == weight)).shape[0]
        assert len(entries) == out_channels  # per-channel
        assert all(e["bitwidth"] == 8 and e["is_symmetric"] == "True" and e["offset"] == -128 for e in entries)
        bias = conv_weights[weight]
        assert all(e["bitwidth"] == 32 for e in encodings["param_encodings"][bias])


def ort_minmax(prepared: Path, inputs: list[np.ndarray], exclude: list[str], out: Path) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.left = iter(inputs)

        def get_next(self):
            x = next(self.left, None)
            return None if x is None else {"images": x}

    quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    return out


def calibration_inputs(work: Path) -> list[np.ndarray]:
    """The listed raws as NCHW float batches of one."""
    return [np.fromfile(line, np.float32).reshape(1, SIZE, SIZE, 3).transpose(0, 3, 1, 2).copy()
            for line in (work / "results/input_list.txt").read_text().split()]


def test_editing_one_image_reruns_one_shard_and_method_change_reuses_statistics(project):
    tmp_path, images, model, config = project
    work = tmp_path / "work"
    snakemake(work, config, "quantize")
    write_jpeg(images / "img3.jpg", 70, 70, seed=99)
    edited = jobs_run(snakemake(work, config, "quantize"))
    assert edited == {"raw": 1, "input_list": 1, "calibrate_shard": 1, "merge_calibration": 1, "ranges": 1,
                      "quantize_model": 1, "coverage": 1, "image_reports": 1, "quantize": 1}
    config["quantization"] = {"method": "percentile", "percentile": 99.9}
    changed = jobs_run(snakemake(work, config, "quantize"))
    assert changed == {"ranges": 1, "quantize_model": 1, "quantize": 1}
    assert json.loads((work / "results/quantize_summary.json").read_text())["method"] == "percentile"


def test_sharded_statistics_equal_unsharded_exactly(project):
    tmp_path, images, model, config = project
    results = {}
    for shards in (1, 4):
        work = tmp_path / f"work{shards}"
        snakemake(work, dict(config, calibration={"shards": shards}), "results/calibration/ranges.json")
        results[shards] = work
    one, _ = load_stats(results[1] / "results/calibration/stats.npz")
    four, _ = load_stats(results[4] / "results/calibration/stats.npz")
    assert one.keys() == four.keys() and all(one[k] == four[k] for k in one)
    assert (results[1] / "results/calibration/ranges.json").read_bytes() == \
        (results[4] / "results/calibration/ranges.json").read_bytes()


def test_dynamic_batch_opset17_export_is_accepted(project):
    tmp_path, images, model, config = project
    onnx.save(build_tiny(size=(SIZE, SIZE), opset=17, dynamic_batch=True), model)
    work = tmp_path / "work"
    snakemake(work, config, "quantize")
    dims = onnx.load(work / "results/model_quantized.onnx").graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_value == 1


def test_snpe_backend_runs_qualcomm_tools_with_qcal_outputs(project):
    tmp_path, images, model, config = project
    tools = tmp_path / "snpe-bin"
    tools.mkdir()
    for name in ("snpe-onnx-to-dlc", "snpe-dlc-quantize"):  # SNPE 1 naming
        fake_tool(tools, name)
    work = tmp_path / "work"
    done = snakemake(work, dict(config, quantization={"backend": "snpe"}), "quantize", path_prefix=tools)
    assert jobs_run(done)["snpe_dlc"] == 1
    calls = (tools / "calls.txt").read_text().splitlines()
    assert calls[0].split()[0].endswith("snpe-onnx-to-dlc") and "results/encodings.json" in calls[0]
    assert calls[1].split()[0].endswith("snpe-dlc-quantize") and "results/input_list.txt" in calls[1]
    assert (work / "results/model_quantized.dlc").exists()


def test_snpe_backend_without_tools_fails_at_start(project):
    tmp_path, images, model, config = project
    done = snakemake(tmp_path / "work", dict(config, quantization={"backend": "snpe"}), "-n", "quantize",
                     check=False)
    assert done.returncode != 0 and "install Qualcomm's Neural Processing SDK" in done.stdout + done.stderr


@pytest.mark.parametrize("content, message", [
    (None, "does not exist"),
    (b"not a model", "is not an ONNX model"),
])
def test_bad_model_fails_at_start(project, content, message):
    tmp_path, images, model, config = project
    model.unlink()
    if content is not None:
        model.write_bytes(content)
    done = snakemake(tmp_path / "work", config, "-n", "quantize", check=False)
    assert done.returncode != 0 and f"config key 'model'" in done.stdout + done.stderr
    assert message in done.stdout + done.stderr


def test_temporary_raws_are_deleted_after_calibration_and_a_rerun_does_nothing(project):
    tmp_path, images, model, config = project
    work = tmp_path / "work"
    snakemake(work, dict(config, raws="temporary"), "quantize")
    assert (work / "results/model_quantized.onnx").exists()
    assert not list((work / "results/raw").rglob("*.raw")) and len(list((work / "results/raw").rglob("*.json"))) == 7
    again = snakemake(work, dict(config, raws="temporary"), "quantize")
    assert "Nothing to be done" in again.stdout + again.stderr


@pytest.mark.parametrize("tail", ["int16", "int8"])
def test_decode_tail_in_16_bit_or_quantized_when_asked(project, tail):
    tmp_path, images, model, config = project
    work = tmp_path / "work"
    snakemake(work, dict(config, quantization={"tail": tail}), "quantize")
    info = json.loads((work / "results/model/model_info.json").read_text())
    q = onnx.load(work / "results/model_quantized.onnx")
    inits = {t.name: t for t in q.graph.initializer}
    tail_quantizers = [n for n in q.graph.node if n.op_type == "QuantizeLinear" and n.input[0] in set(info["tail_tensors"])]
    assert len(tail_quantizers) > len(info["head_nodes"])  # the decode arithmetic, not only the heads
    zero_point_types = {inits[n.input[2]].data_type for n in tail_quantizers}
    expected = onnx.TensorProto.UINT16 if tail == "int16" else onnx.TensorProto.UINT8
    assert zero_point_types == {expected}
    session = ort.InferenceSession(str(work / "results/model_quantized.onnx"), providers=["CPUExecutionProvider"])
    out = session.run(None, {"images": np.zeros((1, 3, SIZE, SIZE), np.float32)})[0]
    assert np.isfinite(out).all()
    summary = json.loads((work / "results/quantize_summary.json").read_text())
    assert summary["decode_tail"]["kept"] == tail


def test_gpu_target_ships_the_float_model_its_encodings_and_what_the_gpu_will_run(project):
    tmp_path, images, model, config = project
    work = tmp_path / "work"
    done = snakemake(work, dict(config, target={"runtime": "gpu"}, evaluation={"holdout": 0.3}), "all")
    assert not (work / "results/model_quantized.onnx").exists()  # only a step: the GPU runs float
    assert (work / "results/encodings.json").exists() and (work / "results/encodings-1.0.0.json").exists()
    dequantized = onnx.load(work / "results/model_weights_dequantized.onnx")
    assert not [n for n in dequantized.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    weights = {t.name: numpy_helper.to_array(t) for t in dequantized.graph.initializer}
    conv = next(n for n in dequantized.graph.node if n.op_type == "Conv")
    w = weights[conv.input[1]]
    assert all(len(np.unique(channel)) <= 256 for channel in w)  # int8-rounded, per output channel
    original = {t.name: numpy_helper.to_array(t) for t in onnx.load(work / "results/model/prepared.onnx").graph.initializer}
    w_float = original[conv.input[1].removesuffix("_DequantizeLinear_Output")] if conv.input[1] not in original \
        else original[conv.input[1]]
    assert np.abs(w - w_float).max() <= np.abs(w_float).max() / 127  # within one step of the int8 grid
    output = done.stdout + done.stderr
    assert "target gpu: SNPE/QNN's GPU runtime runs float" in output
    assert json.loads((work / "results/reports/accuracy.json").read_text())["backends"]["cpu"]
