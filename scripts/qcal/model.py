"""Model checks and preparation: refuse bad models early with a clear reason, fix batch 1, name every
node, and find a detector's decode tail from the graph's structure (never from node names)."""

from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx
import onnx.version_converter
from google.protobuf.message import DecodeError
import numpy as np
from onnx import TensorProto, helper, numpy_helper

from qcal.errors import QcalError
from qcal.files import write_json, write_atomic
from qcal.graph import consumers, op_counts
from qcal.names import names_from_metadata

# Ops that carry learned weights: a decode tail has none of them.
WEIGHTED_OPS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


class ModelError(QcalError):
    """The model cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class ModelInput:
    name: str
    shape: tuple            # ints, or strings for symbolic dimensions
    layout: str             # NCHW or NHWC
    height: int | None
    width: int | None


def load_checked(path: str | os.PathLike, with_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (with its external data unless with_data is False), refusing missing files,
    non-ONNX files and external data that points outside the model's folder."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as err:
        raise ModelError(f"{path} is not an ONNX model: {err}") from None
    if not model.graph.node:
        raise ModelError(f"{path} is not an ONNX model (no graph nodes)")
    check_external_data(model, path.parent)
    if with_data:
        onnx.load_external_data_for_model(model, str(path.parent))
    return model


def check_external_data(model: onnx.ModelProto, folder: Path) -> None:
    root = folder.resolve()
    for tensor in model.graph.initializer:
        if tensor.data_location != TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (root / location).resolve()
        if os.path.isabs(location) or root not in target.parents:
            raise ModelError(f"initializer {tensor.name!r} stores its data at {location!r}, outside the "
                             f"model's folder {str(root)!r}; refusing to read it")
        if not target.is_file():
            raise ModelError(f"initializer {tensor.name!r}: external data file {str(target)!r} is missing")


def model_input(model: onnx.ModelProto, input_name: str | None = None) -> ModelInput:
    """The image input: the only graph input that is not an initializer, or the one named."""
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if input_name is not None:
        inputs = [i for i in inputs if i.name == input_name]
        if not inputs:
            raise ModelError(f"the model has no input named {input_name!r} (config key input_list.input_name)")
    if len(inputs) != 1:
        names = ", ".join(i.name for i in inputs)
        raise ModelError(f"the model has {len(inputs)} inputs ({names}); qcal calibrates one image input: "
                         "set input_list.input_name to the image input's name")
    value = inputs[0]
    if value.type.tensor_type.elem_type != TensorProto.FLOAT:
        raise ModelError(f"input {value.name!r} is not float32; qcal calibrates float models")
    shape = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                  for d in value.type.tensor_type.shape.dim)
    if len(shape) != 4:
        raise ModelError(f"input {value.name!r} has shape {list(shape)}; expected an image batch [N,C,H,W] or [N,H,W,C]")
    if shape[1] == 3:
        layout, height, width = "NCHW", shape[2], shape[3]
    elif shape[3] == 3:
        layout, height, width = "NHWC", shape[1], shape[2]
    else:
        raise ModelError(f"input {value.name!r} has shape {list(shape)}: no 3-channel axis found")
    as_int = lambda d: d if isinstance(d, int) and d > 0 else None  # noqa: E731
    return ModelInput(value.name, shape, layout, as_int(height), as_int(width))


def check_input_size(inp: ModelInput, height: int, width: int, stride: int | None) -> None:
    """The preprocessing size must be what the model takes (and a multiple of its stride)."""
    for side, model_size, size in (("height", inp.height, height), ("width", inp.width, width)):
        if model_size is not None and model_size != size:
            raise ModelError(f"config key preprocess.{side} is {size} but the model input {inp.name!r} "
                             f"has {side} {model_size} (shape {list(inp.shape)})")
        if stride and size % stride:
            raise ModelError(f"config key preprocess.{side} is {size}, not a multiple of the model's "
                             f"stride {stride}")


def model_stride(model: onnx.ModelProto) -> int | None:
    """YOLOv5's export records its largest stride in the metadata as "stride"."""
    for prop in model.metadata_props:
        if prop.key == "stride":
            try:
                return int(float(prop.value))
            except ValueError:
                return None
    return None


def check_model_file(path: str | os.PathLike, input_name: str | None, height: int, width: int) -> ModelInput:
    """Every check that needs only the graph: run at workflow start, before any job."""
    model = load_checked(path, with_data=False)
    inp = model_input(model, input_name)
    check_input_size(inp, height, width, model_stride(model))
    return inp


def check_runs_on_cpu(path: str | os.PathLike) -> None:
    """ONNX Runtime's CPU provider can build a session for the model (every operator has a kernel):
    found at start, not after every raw is built, when the first calibration shard would fail."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as err:  # ORT raises its own exception types for every failure
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"ONNX Runtime cannot run {path}: {first}") from None


MIN_OPSET = 13  # per-channel QDQ needs DequantizeLinear's axis attribute (opset 13)


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def prepare(model: onnx.ModelProto, input_name: str | None = None) -> onnx.ModelProto:
    """Batch fixed to 1 (quantizers and SNPE need it), opset at least 13, every node named, shapes
    inferred."""
    if default_opset(model) < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
        except Exception as err:  # the converter raises plain RuntimeErrors from C++
            raise ModelError(f"cannot convert the model from opset {default_opset(model)} to {MIN_OPSET} "
                             f"(needed for per-channel quantization): {err}") from None
    inp = model_input(model, input_name)
    constants_to_initializers(model)
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if value.name == inp.name or (dims and not dims[0].HasField("dim_value")):
            if dims:
                dims[0].Clear()
                dims[0].dim_value = 1
    del model.graph.value_info[:]  # stale shapes from a dynamic-batch export would contradict batch 1
    # Quantizers address nodes by name: give unnamed and duplicate-named nodes unique ones.
    all_names = {n.name for n in model.graph.node}
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            name = f"{node.op_type}_{i}"
            while name in all_names or name in seen:
                name += "_"
            node.name = name
        seen.add(node.name)
    return onnx.shape_inference.infer_shapes(model, data_prop=True)


def constants_to_initializers(model: onnx.ModelProto) -> None:
    """Constant nodes (YOLOv5's export writes Resize roi/scales, grids and anchors this way) become
    initializers, so quantizers treat them as fixed data rather than as activations to calibrate."""
    keep = []
    for node in model.graph.node:
        value = next((a for a in node.attribute if a.name == "value"), None)
        if node.op_type == "Constant" and value is not None and value.type == onnx.AttributeProto.TENSOR:
            tensor = onnx.TensorProto()
            tensor.CopyFrom(value.t)
            tensor.name = node.output[0]
            model.graph.initializer.append(tensor)
        else:
            keep.append(node)
    if len(keep) != len(model.graph.node):
        del model.graph.node[:]
        model.graph.node.extend(keep)


def downstream(model: onnx.ModelProto, start: list[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes reachable from the outputs of `start` (not including `start`), in graph order."""
    table = consumers(model)
    seen: set[str] = set()
    queue = deque(out for node in start for out in node.output)
    while queue:
        for node in table.get(queue.popleft(), []):
            if node.name not in seen:
                seen.add(node.name)
                queue.extend(node.output)
    return [n for n in model.graph.node if n.name in seen]


@dataclass
class DecodeTail:
    head_nodes: list[str]       # the last weighted nodes; their outputs are the raw head maps
    tail_nodes: list[str]       # everything after them: box decoding arithmetic
    op_types: dict[str, int]


def find_decode_tail(model: onnx.ModelProto) -> DecodeTail:
    """A detector's decode tail: the weight-free subgraph after the last Conv/Gemm/MatMul nodes, when it
    decodes boxes (holds a Sigmoid or Exp and ends in graph outputs). Empty for other models."""
    weighted = [n for n in model.graph.node if n.op_type in WEIGHTED_OPS]
    heads = [n for n in weighted if not any(d.op_type in WEIGHTED_OPS for d in downstream(model, [n]))]
    tail = downstream(model, heads)
    outputs = {o.name for o in model.graph.output}
    decodes = any(n.op_type in ("Sigmoid", "Exp") for n in tail)
    reaches_output = any(out in outputs for n in tail for out in n.output)
    if not (heads and decodes and reaches_output):
        return DecodeTail([], [], {})
    return DecodeTail([n.name for n in heads], [n.name for n in tail], op_counts(tail))


def float_tensors(model: onnx.ModelProto) -> list[str]:
    """Float tensors to calibrate: the image input and every float node output, Constant nodes' too
    (ORT needs ranges for every input of a quantized node). Initializers are quantized from their values."""
    types = {v.name: v.type.tensor_type.elem_type
             for v in list(model.graph.value_info) + list(model.graph.output) + list(model.graph.input)}
    initializers = {t.name for t in model.graph.initializer}
    names = [i.name for i in model.graph.input if i.name not in initializers]
    for node in model.graph.node:
        names += [o for o in node.output if o and types.get(o) == TensorProto.FLOAT]
    return names


def preactivations(model: onnx.ModelProto) -> dict[str, float]:
    """{Conv output: alpha} for Conv outputs read only by one LeakyRelu (its alpha) or Relu (0)."""
    readers = consumers(model)
    found = {}
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        users = readers.get(node.output[0], [])
        if len(users) == 1 and users[0].op_type in ("LeakyRelu", "Relu"):
            alpha = next((a.f for a in users[0].attribute if a.name == "alpha"), 0.01)
            found[node.output[0]] = float(alpha) if users[0].op_type == "LeakyRelu" else 0.0
    return found


def tail_tensors(model: onnx.ModelProto, tail: DecodeTail) -> list[str]:
    """The tensors a 16-bit tail covers: the heads' outputs and every tail output. The heads' outputs
    belong to it because Reshape/Transpose/Split share their input's quantization parameters."""
    names = set(tail.head_nodes) | set(tail.tail_nodes)
    return [out for node in model.graph.node if node.name in names for out in node.output if out]


def split_detector_outputs(model: onnx.ModelProto, boxes: str = "boxes", scores: str = "scores") -> onnx.ModelProto:
    """A YOLOv5-style detector [1, N, 5 + C] -> outputs boxes [1, N, 4] (cx, cy, w, h in pixels) and
    scores [1, N, 1 + C] (objectness, classes; 0..1), so no tensor mixes pixels with probabilities: a
    quantized tail with one output Concat shares one scale between them (2.5 px: every score becomes 0
    on ONNX Runtime's CPU, and raw 8-bit codes on the HTP). Expects per level Concat(xy, wh, conf) ->
    Reshape, then a Concat on axis 1 (YOLOv5's export, qcal.darknet, qcal.synthetic)."""
    split = onnx.ModelProto()
    split.CopyFrom(model)
    graph = split.graph
    producer = {o: n for n in graph.node for o in n.output}
    out = graph.output[0]
    final = producer.get(out.name)
    dims = [d.dim_value for d in out.type.tensor_type.shape.dim]
    if final is None or final.op_type != "Concat" or len(dims) != 3 or dims[2] <= 5:
        raise ModelError(f"the output {out.name!r} is not a YOLOv5-style Concat [1, N, 5 + classes], so boxes and "
                         "scores cannot be emitted separately; use quantization.tail: float or int16")
    width = dims[2]
    drop, box_parts, score_parts, new = {final.name}, [], [], []
    box_shape, score_shape = f"{boxes}_shape", f"{scores}_shape"
    graph.initializer.extend([numpy_helper.from_array(np.array([1, -1, 4], np.int64), box_shape),
                              numpy_helper.from_array(np.array([1, -1, width - 4], np.int64), score_shape)])
    for i, name in enumerate(final.input):
        reshape = producer.get(name)
        level = producer.get(reshape.input[0]) if reshape is not None else None
        if reshape is None or reshape.op_type != "Reshape" or level is None or level.op_type != "Concat" \
                or len(level.input) != 3:
            raise ModelError(f"{name}: expected Reshape(Concat(xy, wh, conf)) before the output Concat; use "
                             "quantization.tail: float or int16")
        axis = next(a.i for a in level.attribute if a.name == "axis")
        xy, wh, conf = level.input
        drop.update({reshape.name, level.name})
        b, s = f"{boxes}_{i}", f"{scores}_{i}"
        new += [helper.make_node("Concat", [xy, wh], [b + "_xywh"], name=b + "_xywh", axis=axis),
                helper.make_node("Reshape", [b + "_xywh", box_shape], [b], name=b),
                helper.make_node("Reshape", [conf, score_shape], [s], name=s)]
        box_parts.append(b)
        score_parts.append(s)
    new += [helper.make_node("Concat", box_parts, [boxes], name=boxes, axis=1),
            helper.make_node("Concat", score_parts, [scores], name=scores, axis=1)]
    kept = [n for n in graph.node if n.name not in drop]
    del graph.node[:]
    graph.node.extend(kept + new)
    elem = out.type.tensor_type.elem_type
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(boxes, elem, [1, dims[1], 4]),
                         helper.make_tensor_value_info(scores, elem, [1, dims[1], width - 4])])
    del graph.value_info[:]
    return onnx.shape_inference.infer_shapes(split)


@dataclass(frozen=True)
class ModelInfo:
    """What every later stage needs to know about the prepared model (results/model/model_info.json)."""

    input_name: str
    layout: str                  # NCHW or NHWC
    input_shape: list
    output_name: str             # the first output (boxes, when boxes and scores are separate outputs)
    output_shape: list           # of the detector output as one array: [1, N, 5 + C] for a YOLOv5-style model
    class_names: list[str] | None  # from the model's metadata, if it has them
    head_nodes: list[str]        # the decode tail's (empty when the model is not a detector)
    tail_nodes: list[str]
    op_types: dict[str, int]
    tail_tensors: list[str]
    split_outputs: bool = False  # boxes and scores are separate outputs (a quantized decode tail)
    preactivations: dict[str, float] = field(default_factory=dict)  # Conv outputs read only by a
    # LeakyReLU (its alpha) or a ReLU (0): their range error is measured after the activation

    @property
    def is_detector(self) -> bool:
        """A YOLOv5-style detector: output [1, N, 5 + classes] (boxes, objectness, class scores)."""
        shape = self.output_shape
        return len(shape) == 3 and isinstance(shape[2], int) and shape[2] > 5

    @property
    def tail(self) -> DecodeTail:
        return DecodeTail(self.head_nodes, self.tail_nodes, self.op_types)

    def write(self, path: str | os.PathLike) -> None:
        write_json(path, asdict(self))

    @classmethod
    def read(cls, path: str | os.PathLike) -> ModelInfo:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def prepare_file(model_path: str | os.PathLike, out_model: str | os.PathLike, out_info: str | os.PathLike,
                 input_name: str | None, height: int, width: int, split_outputs: bool = False) -> ModelInfo:
    """Check, prepare and describe the user's model; writes the prepared model and its ModelInfo.
    split_outputs: a detector's boxes and scores become separate outputs (for a quantized decode tail)."""
    inp = check_model_file(model_path, input_name, height, width)
    model = load_checked(model_path)
    prepared = prepare(model, inp.name)
    out_dims = prepared.graph.output[0].type.tensor_type.shape.dim
    split = split_outputs and bool(find_decode_tail(prepared).tail_nodes)  # a model that is no detector stays
    if split:
        prepared = split_detector_outputs(prepared)
    tail = find_decode_tail(prepared)
    info = ModelInfo(
        input_name=inp.name, layout=inp.layout, input_shape=[1, *inp.shape[1:]],
        output_name=prepared.graph.output[0].name,
        output_shape=[d.dim_value if d.HasField("dim_value") else d.dim_param for d in out_dims],
        class_names=names_from_metadata(model), head_nodes=tail.head_nodes, tail_nodes=tail.tail_nodes,
        op_types=tail.op_types, tail_tensors=tail_tensors(prepared, tail), split_outputs=split,
        preactivations=preactivations(prepared))
    write_atomic(out_model, prepared.SerializeToString())
    info.write(out_info)
    return info
