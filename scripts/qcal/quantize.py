"""Ranges -> QDQ ONNX (through ONNX Runtime's own quantizer) -> AIMET/QNN encodings and a summary.

qcal computes the activation ranges itself (streaming statistics, SNPE 'tf' nudging) and hands them to
ONNX Runtime as a calibration cache, so the QDQ insertion is ORT's well-tested code, not ours.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx


def _import_ort_quantization():
    """onnxruntime.quantization calls logging.basicConfig when imported (its matmul_nbits_quantizer),
    which would echo every Snakemake log line once more in the process jobs share: undo that."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    import onnxruntime.quantization
    import onnxruntime.quantization.calibrate

    root.handlers[:] = handlers
    root.setLevel(level)


_import_ort_quantization()
from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static  # noqa: E402
from onnxruntime.quantization.calibrate import TensorData, TensorsData, save_tensors_data  # noqa: E402

from qcal.files import atomic_path  # noqa: E402
from qcal.graph import op_counts  # noqa: E402
from qcal.model import DecodeTail  # noqa: E402
from qcal.ranges import Encoding, compute_encoding, snpe_tf_encoding  # noqa: E402
from qcal.stats import TensorStats  # noqa: E402

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


# An error on a value a ReLU zeroes never reaches the layer's output; a tiny weight keeps the range
# well defined.
RELU_NEGATIVE_WEIGHT = 1e-4


def activation_encodings(stats: dict[str, TensorStats], options: QuantizeOptions,
                         tail_tensors: Sequence[str] = (), preactivations: dict[str, float] | None = None
                         ) -> dict[str, Encoding]:
    """One SNPE 'tf' encoding per tensor, 16-bit for sixteen_bit_tensors. A tensor with no finite value
    (an empty Resize roi, a dead branch) gets the minimal range around 0: ORT still wants a range for
    every input it quantizes."""
    method_options = {"value": options.percentile} if options.method == "percentile" else {}
    sixteen = set(sixteen_bit_tensors(options, tail_tensors))
    encodings = {}
    for name, tensor in stats.items():
        bits = 16 if name in sixteen else options.activation_bits
        extra = dict(method_options)
        if options.method == "mse" and preactivations and name in preactivations:
            extra["negative_weight"] = max(preactivations[name] ** 2, RELU_NEGATIVE_WEIGHT)
        if tensor.empty:
            encodings[name] = snpe_tf_encoding(0.0, 0.0, bitwidth=bits)
        else:
            encodings[name] = compute_encoding(tensor, options.method, bitwidth=bits, **extra)
    return encodings


def write_ort_ranges(encodings: dict[str, Encoding], path: str | Path) -> None:
    """ORT's calibration-cache JSON holding the nudged ranges: ORT then derives exactly our scale and
    zero point (0 is on the grid, so its rounding cannot move it)."""
    data = {name: TensorData(lowest=np.array(e.min, np.float32), highest=np.array(e.max, np.float32))
            for name, e in encodings.items()}
    with atomic_path(path) as tmp:
        save_tensors_data(TensorsData(CalibrationMethod.MinMax, data), str(tmp))


def mixed_precision_overrides(model: onnx.ModelProto, sixteen_bit: Sequence[str]) -> dict:
    """ORT's tensor overrides that make the given activations uint16 in a uint8 model, with the type
    conversions a mixed-precision model needs. Qualcomm's HTP runs an op only when it reads the type it
    writes (measured: a Conv with a uint8 input and a uint16 output is rejected on every SoC), and ORT
    alone would not even keep the request (a MaxPool output silently takes its input's 8-bit
    parameters); ORT's own QNN helper fixes the requests this way."""
    if not sixteen_bit:
        return {}
    from onnxruntime.quantization.execution_providers.qnn.mixed_precision_overrides_utils import (
        MixedPrecisionTensorQuantOverridesFixer)
    from onnxruntime.quantization.tensor_quant_overrides import TensorQuantOverridesHelper

    helper = TensorQuantOverridesHelper({name: [{"quant_type": QuantType.QUInt16}] for name in sixteen_bit})
    fixer = MixedPrecisionTensorQuantOverridesFixer.create_from_model(helper, model, QuantType.QUInt8)
    fixer.apply(QuantType.QUInt8, False)
    return helper.get_dict()


def int8_only_violations(model: onnx.ModelProto) -> list[str]:
    """What an 8-bit-only target (the AIP, a v68 HTP) cannot run: nodes that compute in float (an
    activation input not from a DequantizeLinear, or an output not quantized) and 16-bit tensors.
    A graph output produced by a DequantizeLinear is fine: that is the model's boundary."""
    graph = model.graph
    initializers = {i.name for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    zero_point_type = {i.name: i.data_type for i in graph.initializer}
    problems = []
    for node in graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) > 2 and zero_point_type.get(node.input[2]) in (onnx.TensorProto.UINT16,
                                                                              onnx.TensorProto.INT16):
                problems.append(f"{node.name} (16-bit)")
            continue
        inputs = [i for i in node.input if i and i not in initializers]
        float_in = any(producer.get(i) is None or producer[i].op_type != "DequantizeLinear" for i in inputs)
        float_out = any(not readers.get(o) or any(r.op_type != "QuantizeLinear" for r in readers[o])
                        for o in node.output if o)
        if float_in or float_out:
            problems.append(f"{node.name} ({node.op_type} in float)")
    return problems


def quantize_model(prepared: str | Path, ranges_cache: str | Path, out: str | Path,
                   options: QuantizeOptions, tail_nodes: Sequence[str], tail_tensors: Sequence[str]) -> None:
    """Run ORT's static QDQ quantizer on precomputed ranges and write the model atomically."""
    exclude = list(options.exclude_nodes) + (list(tail_nodes) if options.tail == "float" else [])
    model = onnx.load(str(prepared))
    overrides = {}
    if options.activation_bits == 8:
        overrides = mixed_precision_overrides(model, sixteen_bit_tensors(options, tail_tensors))
    op_types = sorted({n.op_type for n in model.graph.node} - set(options.exclude_op_types))
    extra = {"ActivationSymmetric": False, "WeightSymmetric": True, "TensorQuantOverrides": overrides}
    with atomic_path(out) as tmp:
        quantize_static(str(prepared), str(tmp), calibration_data_reader=None, calibration_cache_path=str(ranges_cache),
                        quant_format=QuantFormat.QDQ, op_types_to_quantize=op_types,
                        per_channel=options.per_channel, reduce_range=options.reduce_range,
                        activation_type=ACTIVATION_TYPES[options.activation_bits], weight_type=QuantType.QInt8,
                        nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax, extra_options=extra)


def summary(prepared: onnx.ModelProto, quantized: onnx.ModelProto, quantized_path: str | Path,
            prepared_path: str | Path, options: QuantizeOptions, tail: DecodeTail, stats_meta: dict,
            encodings: dict, output_shape: list) -> dict:
    """What was quantized and how (results/quantize_summary.json); qcal.report.quantize formats it."""
    q_ops = op_counts(quantized.graph.node)
    return {
        "calibration_images": stats_meta.get("images"),
        "method": options.method,
        "activations": f"uint{options.activation_bits} asymmetric (SNPE tf: range includes 0, 0 exact)",
        "weights": f"int8 symmetric, {'per-channel' if options.per_channel else 'per-tensor'}"
                   + (" with 7-bit range (reduce_range)" if options.reduce_range else ", 8-bit range")
                   + (f" ({options.weight_bits_reason})" if options.weight_bits_reason else ""),
        "bias": "int32",
        "decode_tail": {"kept": options.tail if tail.tail_nodes else "none found",
                        "nodes": len(tail.tail_nodes), "op_types": tail.op_types,
                        "head_nodes": tail.head_nodes},
        "output_shape": output_shape,
        "excluded_nodes": options.exclude_nodes, "excluded_op_types": options.exclude_op_types,
        "quantize_pairs": q_ops.get("QuantizeLinear", 0), "dequantize_nodes": q_ops.get("DequantizeLinear", 0),
        "activation_encodings": len(encodings["activation_encodings"]),
        "param_encodings": len(encodings["param_encodings"]),
        "float_model_bytes": os.path.getsize(prepared_path), "quantized_model_bytes": os.path.getsize(quantized_path),
        "float_ops": dict(sorted(op_counts(prepared.graph.node).items())),
    }


def weights_dequantized(qdq: onnx.ModelProto) -> onnx.ModelProto:
    """The float model a GPU runtime runs from a quantized model: SNPE and QNN dequantize the weights
    when they load it and compute activations in float. So: every weight DequantizeLinear folded into
    a float initializer (the int8 rounding stays), every activation Quantize/DequantizeLinear pair
    removed."""
    from onnx import numpy_helper

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    rename: dict[str, str] = {}
    folded: list[onnx.TensorProto] = []
    keep = []
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            q = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zero = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64) if len(node.input) > 2 else 0.0
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and q.ndim > 1:  # per channel along axis
                shape = [1] * q.ndim
                shape[axis] = -1
                scale, zero = scale.reshape(shape), np.reshape(zero, shape) if np.ndim(zero) else zero
            folded.append(numpy_helper.from_array(((q - zero) * scale).astype(np.float32), node.output[0]))
        elif node.op_type == "DequantizeLinear" and producer.get(node.input[0]) is not None \
                and producer[node.input[0]].op_type == "QuantizeLinear":
            rename[node.output[0]] = producer[node.input[0]].input[0]
        elif node.op_type == "QuantizeLinear" and node.input[0] not in inits:
            continue
        else:
            keep.append(node)
    outputs = {o.name for o in graph.output}
    for node in keep:
        for i, name in enumerate(node.input):
            while name in rename:
                name = rename[name]
            node.input[i] = name
    for output in graph.output:  # a graph output produced by a DequantizeLinear: its float source renamed
        if output.name in rename:
            source = rename[output.name]
            for node in keep:
                for i, name in enumerate(node.output):
                    if name == source:
                        node.output[i] = output.name
                for i, name in enumerate(node.input):
                    if name == source:
                        node.input[i] = output.name
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in keep for i in n.input} | outputs
    initializers = [i for i in graph.initializer if i.name in used and i.name not in {f.name for f in folded}]
    del graph.initializer[:]
    graph.initializer.extend(initializers + [f for f in folded if f.name in used])
    del graph.value_info[:]
    return model
