"""AIMET/QNN encodings of a QDQ model, in both formats Qualcomm's tools read: 0.6.1 (dicts keyed by
tensor name; `snpe-onnx-to-dlc --quantization_overrides`) and 1.0.0 (lists of named entries with
`enc_type`, AIMET's default now; `qnn-onnx-converter` takes either). float = (q + offset) * scale."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


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


def encodings_v1(legacy: dict) -> dict:
    """The 1.0.0 form of a 0.6.1 encodings dict: one entry per tensor, its per-channel values as lists."""
    def entry(name: str, values: list[dict]) -> dict:
        first = values[0]
        return {"name": name, "enc_type": "PER_CHANNEL" if len(values) > 1 else "PER_TENSOR", "dtype": "INT",
                "bw": first["bitwidth"], "is_sym": first["is_symmetric"] == "True",
                "scale": [v["scale"] for v in values], "offset": [v["offset"] for v in values]}

    return {"version": "1.0.0",
            "activation_encodings": [entry(n, v) for n, v in legacy["activation_encodings"].items()],
            "param_encodings": [entry(n, v) for n, v in legacy["param_encodings"].items()],
            "excluded_layers": []}
