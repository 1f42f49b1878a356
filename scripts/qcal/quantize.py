"""Ranges -> QDQ ONNX (through ONNX Runtime's own quantizer) -> AIMET/QNN encodings and a summary.

qcal computes the activation ranges itself (streaming statistics, SNPE 'tf' nudging) and hands them to
ONNX Runtime as a calibration cache, so the QDQ insertion is ORT's well-tested code, not ours.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data

from qcal.ranges import Encoding, compute_encoding, snpe_tf_encoding
from qcal.stats import TensorStats

ACTIVATION_TYPES = {8: QuantType.QUInt8, 16: QuantType.QUInt16}


@dataclass
class QuantizeOptions:
    method: str = "minmax"
    percentile: float = 99.99
    activation_bits: int = 8
    per_channel: bool = True
    reduce_range: bool = False          # 7-bit weights: avoids u8 x s8 saturation on CPUs without VNNI
    weight_bits_reason: str = ""
    tail: str = "float"                 # float | int16 | quantize
    exclude_nodes: list[str] = field(default_factory=list)
    exclude_op_types: list[str] = field(default_factory=list)
    int16_tensors: list[str] = field(default_factory=list)  # activations kept in uint16 (the accuracy search)


def sixteen_bit_tensors(options: QuantizeOptions, tail_tensors: Sequence[str]) -> list[str]:
    """Activations quantized to uint16 in an otherwise 8-bit model: the search's choices, and the decode
    tail when it is kept in 16 bit. Ranges and QDQ types must agree on this one list."""
    return list(dict.fromkeys(options.int16_tensors + (list(tail_tensors) if options.tail == "int16" else [])))


def activation_encodings(stats: dict[str, TensorStats], options: QuantizeOptions,
                         tail_tensors: Sequence[str] = ()) -> dict[str, Encoding]:
    """One SNPE 'tf' encoding per tensor, 16-bit for sixteen_bit_tensors. A tensor with no finite value
    (an empty Resize roi, a dead branch) gets the minimal range around 0: ORT still wants a range for
    every input it quantizes."""
    method_options = {"value": options.percentile} if options.method == "percentile" else {}
    sixteen = set(sixteen_bit_tensors(options, tail_tensors))
    encodings = {}
    for name, tensor in stats.items():
        bits = 16 if name in sixteen else options.activation_bits
        if tensor.empty:
            encodings[name] = snpe_tf_encoding(0.0, 0.0, bitwidth=bits)
        else:
            encodings[name] = compute_encoding(tensor, options.method, bitwidth=bits, **method_options)
    return encodings


def write_ort_ranges(encodings: dict[str, Encoding], path: str | Path) -> None:
    """ORT's calibration-cache JSON holding the nudged ranges: ORT then derives exactly our scale and
    zero point (0 is on the grid, so its rounding cannot move it)."""
    data = {name: TensorData(lowest=np.array(e.min, np.float32), highest=np.array(e.max, np.float32))
            for name, e in encodings.items()}
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), path)


def quantize_model(prepared: str | Path, ranges_cache: str | Path, out: str | Path,
                   options: QuantizeOptions, tail_nodes: list[str], tail_tensors: list[str]) -> None:
    """Run ORT's static QDQ quantizer on precomputed ranges and write the model atomically."""
    exclude = list(options.exclude_nodes) + (list(tail_nodes) if options.tail == "float" else [])
    overrides = {}
    if options.activation_bits == 8:
        overrides = {name: [{"quant_type": QuantType.QUInt16}] for name in sixteen_bit_tensors(options, tail_tensors)}
    model = onnx.load(str(prepared))
    op_types = sorted({n.op_type for n in model.graph.node} - set(options.exclude_op_types))
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides}
    out = Path(out)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    os.close(fd)
    # ORT logs a root-level warning advising its own pre-processing; qcal's prepare step already did
    # shape inference and batch fixing, so keep the job log to what matters.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_static(str(prepared), tmp, calibration_data_reader=None, calibration_cache_path=str(ranges_cache),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        activation_type=ACTIVATION_TYPES[options.activation_bits], weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)
        os.replace(tmp, out)
    finally:
        root.setLevel(level)
        if os.path.exists(tmp):
            os.unlink(tmp)


_SIGNED = {onnx.TensorProto.INT8: True, onnx.TensorProto.INT16: True, onnx.TensorProto.INT32: True,
           onnx.TensorProto.UINT8: False, onnx.TensorProto.UINT16: False}
_BITS = {onnx.TensorProto.INT8: 8, onnx.TensorProto.UINT8: 8, onnx.TensorProto.INT16: 16,
         onnx.TensorProto.UINT16: 16, onnx.TensorProto.INT32: 32}


def _aimet_entries(scale: np.ndarray, zero_point: np.ndarray, elem_type: int) -> list[dict]:
    """AIMET encodings (float = (q + offset) * scale, q unsigned) for ONNX (scale, zero point) pairs."""
    bits, signed = _BITS[elem_type], _SIGNED[elem_type]
    levels = (1 << bits) - 1
    entries = []
    for s, zp in zip(np.atleast_1d(scale).astype(float), np.atleast_1d(zero_point).astype(np.int64)):
        # Signed q in [-2^(b-1), 2^(b-1)-1] is unsigned q' = q + 2^(b-1): the offset moves by that much.
        offset = -int(zp) - (1 << (bits - 1) if signed else 0)
        entries.append({"bitwidth": bits, "dtype": "int", "is_symmetric": str(signed and zp == 0),
                        "min": offset * s, "max": (offset + levels) * s, "offset": offset, "scale": s})
    return entries


def encodings_from_qdq(model: onnx.ModelProto) -> dict:
    """The AIMET/QNN encodings JSON (format 0.6.1) of a QDQ model, keyed by the float model's tensor
    names, which `snpe-onnx-to-dlc --quantization_overrides` and qnn-onnx-converter match against."""
    inits = {t.name: t for t in model.graph.initializer}
    activations, params = {}, {}
    for node in model.graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        source = node.input[0]
        scale = numpy_helper.to_array(inits[node.input[1]]) if node.input[1] in inits else None
        zp_init = inits.get(node.input[2])
        if scale is None or zp_init is None:
            continue
        entries = _aimet_entries(scale, numpy_helper.to_array(zp_init), zp_init.data_type)
        if node.op_type == "QuantizeLinear" and source not in inits:
            activations[source] = entries
        elif node.op_type == "DequantizeLinear" and source in inits:
            params[source.removesuffix("_quantized")] = entries
    return {"version": "0.6.1", "activation_encodings": dict(sorted(activations.items())),
            "param_encodings": dict(sorted(params.items()))}


def op_counts(model: onnx.ModelProto) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def summary(prepared: onnx.ModelProto, quantized: onnx.ModelProto, quantized_path: str | Path,
            prepared_path: str | Path, options: QuantizeOptions, tail: dict, stats_meta: dict,
            encodings: dict) -> dict:
    float_ops = op_counts(prepared)
    q_ops = op_counts(quantized)
    return {
        "calibration_images": stats_meta.get("images"),
        "method": options.method,
        "activations": f"uint{options.activation_bits} asymmetric (SNPE tf: range includes 0, 0 exact)",
        "weights": f"int8 symmetric, {'per-channel' if options.per_channel else 'per-tensor'}"
                   + (" with 7-bit range (reduce_range)" if options.reduce_range else ", 8-bit range")
                   + (f" ({options.weight_bits_reason})" if options.weight_bits_reason else ""),
        "bias": "int32",
        "decode_tail": {"kept": options.tail if tail["tail_nodes"] else "none found",
                        "nodes": len(tail["tail_nodes"]), "op_types": tail["op_types"],
                        "head_nodes": tail["head_nodes"]},
        "excluded_nodes": options.exclude_nodes, "excluded_op_types": options.exclude_op_types,
        "quantize_pairs": q_ops.get("QuantizeLinear", 0), "dequantize_nodes": q_ops.get("DequantizeLinear", 0),
        "activation_encodings": len(encodings["activation_encodings"]),
        "param_encodings": len(encodings["param_encodings"]),
        "float_model_bytes": os.path.getsize(prepared_path), "quantized_model_bytes": os.path.getsize(quantized_path),
        "float_ops": float_ops,
    }


def summary_text(s: dict) -> str:
    tail = s["decode_tail"]
    lines = [
        f"qcal quantization summary ({s['calibration_images']} calibration images, method {s['method']})",
        f"  activations: {s['activations']}",
        f"  weights:     {s['weights']}; bias {s['bias']}",
        f"  decode tail: {tail['nodes']} nodes kept {tail['kept']} "
        f"({', '.join(f'{k} x{v}' for k, v in tail['op_types'].items()) or '-'}) after {len(tail['head_nodes'])} head convolutions",
        f"  QDQ: {s['quantize_pairs']} QuantizeLinear, {s['dequantize_nodes']} DequantizeLinear; "
        f"encodings for {s['activation_encodings']} activations and {s['param_encodings']} parameters",
        f"  size: {s['float_model_bytes'] / 1e6:.1f} MB float -> {s['quantized_model_bytes'] / 1e6:.1f} MB quantized",
    ]
    if s["excluded_nodes"] or s["excluded_op_types"]:
        lines.append(f"  excluded by config: nodes {s['excluded_nodes']}, op types {s['excluded_op_types']}")
    return "\n".join(lines) + "\n"


def options_from_config(q: dict) -> QuantizeOptions:
    if q["weight_bits"] == "auto":
        from qcal.cpu import auto_weight_bits

        bits, reason = auto_weight_bits()
    else:
        bits, reason = q["weight_bits"], "set in the config"
    return QuantizeOptions(method=q["method"], percentile=q["percentile"], activation_bits=q["activation_bits"],
                           per_channel=q["per_channel"], reduce_range=bits == 7, weight_bits_reason=reason,
                           tail=q["tail"], exclude_nodes=list(q["exclude_nodes"]),
                           exclude_op_types=list(q["exclude_op_types"]))


def run_ranges_from_snakemake(smk) -> None:  # pragma: no cover - exercised by the workflow tests
    from qcal.stats import load_stats

    options = options_from_config(smk.params.quantization)
    stats, _ = load_stats(smk.input.stats)
    info = json.loads(Path(smk.input.info).read_text())
    encodings = activation_encodings(stats, options, info["tail_tensors"])
    write_ort_ranges(encodings, smk.output[0])
    Path(smk.log[0]).write_text(f"{len(encodings)} activation ranges by {options.method}\n")


def run_quantize_from_snakemake(smk) -> None:  # pragma: no cover - exercised by the workflow tests
    from qcal.stats import load_stats

    options = options_from_config(smk.params.quantization)
    info = json.loads(Path(smk.input.info).read_text())
    max_drop = smk.params.quantization["max_drop"]
    stats, stats_meta = load_stats(smk.input.stats)
    search_note, steps = "", None
    if max_drop is None:
        search_note = "  accuracy search: off (quantization.max_drop is not set)\n"
    elif not smk.input.eval_raws:
        search_note = "  accuracy search: skipped, no evaluation images (set evaluation.images or holdout)\n"
    if search_note:
        quantize_model(smk.input.model, smk.input.ranges, smk.output.model, options,
                       info["tail_nodes"], info["tail_tensors"])
    else:
        from qcal.calibrate import usable_raws
        from qcal.preprocess import resolve_profile
        from qcal.search import search, steps_text

        profile = resolve_profile(smk.params.profile, json.loads(smk.params.settings))
        evaluation = usable_raws(list(smk.input.eval_raws), list(smk.input.eval_metas))
        seen = {raw for raw, _ in evaluation}  # evaluation.images: calibration lists them twice
        calibration = [item for item in usable_raws(list(smk.input.calibration_raws), list(smk.input.calibration_metas))
                       if item[0] not in seen]
        steps = search(smk.input.model, stats, smk.output.model, options, info["tail_nodes"],
                       info["tail_tensors"], evaluation + calibration, profile, info["input_name"], info["layout"],
                       smk.params.conf, smk.params.iou, max_drop, smk.params.quantization["search_precision"],
                       threads=smk.threads)
        search_note = (f"  accuracy search on {len(evaluation)} evaluation and {len(calibration)} calibration images\n"
                       + steps_text(steps, max_drop))
    quantized = onnx.load(smk.output.model)
    encodings = encodings_from_qdq(quantized)
    Path(smk.output.encodings).write_text(json.dumps(encodings, indent=1) + "\n")
    s = summary(onnx.load(smk.input.model), quantized, smk.output.model, smk.input.model, options,
                info, stats_meta, encodings)
    s["search"] = ({"max_drop": max_drop, "met": steps[-1].drop <= max_drop,
                    "images": {"evaluation": len(evaluation), "calibration": len(calibration)},
                    "steps": [vars(step) for step in steps]} if steps else None)
    Path(smk.output.summary).write_text(json.dumps(s, indent=1) + "\n")
    text = summary_text(s) + search_note
    Path(smk.output.text).write_text(text)
    Path(smk.log[0]).write_text(text)
