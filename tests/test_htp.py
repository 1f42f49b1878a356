"""Qualcomm's HTP, through onnxruntime-qnn's x86 simulator: the default (htp) workflow makes a model
that runs whole on the HTP with CPU fallback disabled, computes what ONNX Runtime's CPU computes, and
gets a context binary; mixed precision and 8-bit-only targets pass the same check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import jobs_run, snakemake, write_jpeg
from qcal.detections import output_sqnr
from qcal.evaluate import cpu_outputs
from qcal.htp import check_on_htp, outputs_on_htp
from qcal.preprocess import resolve_profile
from qcal.quantize import int8_only_violations
from qcal.raws import InputSpec, usable_items
from qcal.synthetic import build_tiny

pytest.importorskip("onnxruntime_qnn")
pytestmark = pytest.mark.slow

SIZE = 64
HTP_TARGET = {"runtime": "htp", "socs": ["SM8650"]}


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    root = tmp_path_factory.mktemp("htp")
    for i in range(10):
        write_jpeg(root / "images" / f"img{i}.jpg", 80 + 9 * i, 60 + 5 * i, seed=i)
    onnx.save(build_tiny(size=(SIZE, SIZE)), root / "tiny.onnx")
    config = {"images": str(root / "images"), "model": str(root / "tiny.onnx"), "target": HTP_TARGET,
              "preprocess": {"height": SIZE, "width": SIZE}, "calibration": {"shards": 2},
              "evaluation": {"holdout": 0.3}}
    return root, config


def test_the_default_target_runs_whole_on_the_htp_and_gets_a_context_binary(project):
    root, config = project
    work = root / "default"
    done = snakemake(work, config, "all")
    ran = jobs_run(done)
    assert ran["htp_prepare"] == 1
    check = json.loads((work / "results/htp/SM8650/check.json").read_text())
    nodes = len(onnx.load(work / "results/model_quantized.onnx").graph.node)
    assert check["ok"] and check["cpu_nodes"] == [] and check["htp_nodes"] + check["folded_nodes"] == nodes
    assert check["htp_nodes"] > 0.9 * nodes
    context = onnx.load(work / "results/htp/SM8650/model_ctx.onnx", load_external_data=False)
    assert [n.op_type for n in context.graph.node] == ["EPContext"]
    summary = json.loads((work / "results/quantize_summary.json").read_text())
    assert summary["activations"].startswith("uint16") and summary["target"]["runtime"] == "htp"
    output = done.stdout + done.stderr
    assert "target htp: " in output and "w8a16 by default" in output
    assert "qcal HTP check, SM8650 (soc_model 57): every node runs on the HTP" in output
    accuracy = json.loads((work / "results/reports/accuracy.json").read_text())
    assert set(accuracy["backends"]) == {"cpu", "htp SM8650"} and accuracy["headline"]["backend"] == "htp SM8650"
    assert accuracy["htp_seconds_per_image"]["htp SM8650"] > 0
    # a second run with one more SoC prepares that SoC only
    again = jobs_run(snakemake(work, dict(config, target={"runtime": "htp", "socs": ["SM8650", "SM8750"]}), "quantize"))
    assert again["htp_prepare"] == 1 and "quantize_model" not in again


def test_the_htp_computes_what_the_cpu_computes(project):
    """Stated tolerance: the HTP's output is within 25 dB SQNR of ONNX Runtime CPU's for the same QDQ model
    (boxes, objectness and class scores apart), and as close to the float model as the CPU's (0.5 dB)."""
    root, config = project
    work = root / "default"
    if not (work / "results/model_quantized.onnx").exists():
        snakemake(work, config, "quantize")
    raws = sorted(str(p) for p in (work / "results/raw").glob("*.raw"))
    items = usable_items(raws, [r[:-4] + ".json" for r in raws])
    spec = InputSpec(resolve_profile("yolov5", {"height": SIZE, "width": SIZE}), "images", "NCHW")
    spec_json = json.dumps({"profile": "yolov5", "settings": {"height": SIZE, "width": SIZE},
                            "input_name": "images", "layout": "NCHW"})
    model = work / "results/model_quantized.onnx"
    on_htp, _ = outputs_on_htp(model, "57", [i.raw for i in items], spec_json, root / "htp.npy")
    on_cpu, _ = cpu_outputs(model, items, spec, root / "cpu.npy")
    reference, _ = cpu_outputs(work / "results/model/prepared.onnx", items, spec, root / "float.npy")
    between = output_sqnr(on_cpu, on_htp)
    assert min(between[g] for g in ("boxes", "objectness", "classes")) > 25, between
    htp_error, cpu_error = output_sqnr(reference, on_htp), output_sqnr(reference, on_cpu)
    assert all(htp_error[g] > cpu_error[g] - 0.5 for g in ("boxes", "objectness", "classes")), (htp_error, cpu_error)


def test_w8a8_with_16_bit_layers_is_taken_whole_by_the_htp(project):
    """Mixed precision (the tail and the search's layers in uint16 among uint8 layers): ORT's fixer puts
    the conversions the HTP needs between them; without them the HTP rejects the Convs."""
    root, config = project
    work = root / "mixed"
    config = dict(config, quantization={"activations": "int8", "tail": "int16"},
                  search={"max_drop": 0.0, "max_steps": 2, "calibration_images": 3},
                  evaluation={"holdout": 0.5, "search_share": 0.8})  # 4 of the 10 images for the search
    done = snakemake(work, config, "quantize")
    summary = json.loads((work / "results/quantize_summary.json").read_text())
    assert summary["activations"].startswith("uint8") and len(summary["search"]["steps"]) >= 2
    assert [s["precision"] for s in summary["search"]["steps"][1:3]] == ["int16", "int16"]
    check = json.loads((work / "results/htp/SM8650/check.json").read_text())
    assert check["ok"] and check["cpu_nodes"] == [], check
    assert "every node runs on the HTP" in (work / "results/logs/htp/SM8650.log").read_text()
    assert jobs_run(done)["htp_prepare"] == 1 and (work / "results/htp/SM8650/model_ctx.onnx").exists()


def test_the_search_can_score_its_steps_on_the_htp(project):
    root, config = project
    work = root / "search-on-htp"
    config = dict(config, quantization={"activations": "int8"},
                  search={"max_drop": 0.0, "max_steps": 1, "calibration_images": 3, "backend": "htp"},
                  evaluation={"holdout": 0.5, "search_share": 0.8, "on_htp": False})
    snakemake(work, config, "quantize")
    summary = json.loads((work / "results/quantize_summary.json").read_text())
    assert len(summary["search"]["steps"]) == 2, summary["search"]
    log = (work / "results/logs/quantize_model.log").read_text()
    assert "scored on the HTP simulator (soc_model 57)" in log, log
    assert json.loads((work / "results/htp/SM8650/check.json").read_text())["ok"]


@pytest.mark.parametrize("target", [{"runtime": "htp", "socs": ["QCS6490"]}, {"runtime": "aip"}])
def test_8_bit_only_targets_leave_no_float_node_and_no_16_bit_tensor(project, target):
    root, config = project
    work = root / target["runtime"]
    snakemake(work, dict(config, target=target, search={"max_drop": None}), "quantize")
    model = onnx.load(work / "results/model_quantized.onnx")
    assert [o.name for o in model.graph.output] == ["boxes", "scores"]  # never one scale for pixels and scores
    assert int8_only_violations(model) == []
    summary = json.loads((work / "results/quantize_summary.json").read_text())
    assert summary["activations"].startswith("uint8") and summary["decode_tail"]["kept"] == "int8"
    if target["runtime"] == "htp":  # the v68 simulator takes it whole
        check = json.loads((work / "results/htp/QCS6490/check.json").read_text())
        assert check["ok"] and check["soc_model"] == "93"
        assert (work / "results/htp/QCS6490/model_ctx.onnx").exists()


def test_a_node_the_htp_rejects_fails_the_check_naming_it(project):
    """The float decode tail (fine on a v75 HTP in fp16) on a v68 HTP, which has no floating point."""
    root, config = project
    work = root / "default"
    if not (work / "results/model_quantized.onnx").exists():
        snakemake(work, config, "quantize")
    context = root / "v68" / "model_ctx.onnx"
    result = check_on_htp(work / "results/model_quantized.onnx", "93", context)
    assert not result.ok and result.cpu_nodes and all("/model.24/" in n for n in result.cpu_nodes)
    assert not context.parent.exists() or list(context.parent.iterdir()) == []  # no context binary, no temporary
