"""Convert a Darknet YOLOv3(-tiny) model (cfg + weights) to ONNX.

Only numpy and ``onnx.helper`` are used. The exported graph has the same
interface as a YOLOv5 ONNX export, so later stages can treat both alike:

* input ``images``: float32 [1, 3, H, W], RGB, values in 0..1;
* output ``output0``: float32 [1, N, 5 + classes], one row per anchor and grid
  cell: cx, cy, w, h (input pixels), objectness, class scores (all sigmoided).

Class names are stored as a JSON list in the model metadata under ``names``.

Usage::

    python -m qcal.darknet --cfg yolov3-tiny.cfg --weights yolov3-tiny.weights \
        --names coco.names --size 640 640 --out model.onnx
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcal.files import write_atomic
from qcal.graph import GraphBuilder, Tensor
from qcal.names import read_names_file

PathLike = Union[str, os.PathLike]
WeightsSource = Union[bytes, bytearray, memoryview, PathLike]

# Darknet's inference batch norm: (x - mean) / (sqrt(var) + 1e-6), see
# normalize_cpu / normalize_kernel in pjreddie/darknet src/blas.c and
# blas_kernels.cu. Note the epsilon is added *outside* the square root.
BN_EPS = 1e-6
LEAKY_SLOPE = 0.1  # darknet's "leaky" activation
INPUT_MULTIPLE = 32  # YOLOv3's largest stride
SUPPORTED_LAYERS = ("convolutional", "maxpool", "route", "upsample", "yolo")
# ONNX IR version 8 pairs with opset 13..15 and loads in older onnxruntimes.
IR_VERSION = 8


# --------------------------------------------------------------------------
# cfg parsing
# --------------------------------------------------------------------------


def parse_cfg(text: str) -> list[dict[str, str]]:
    """Parse a Darknet .cfg into sections; each dict has 'type' plus its options."""
    sections: list[dict[str, str]] = []
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if not line:
            continue
        if line.startswith("["):
            if not line.endswith("]"):
                raise ValueError(f"cfg line {lineno}: malformed section header {raw!r}")
            sections.append({"type": line[1:-1].strip().lower()})
            continue
        if not sections:
            raise ValueError(f"cfg line {lineno}: option before any [section]: {raw!r}")
        if "=" not in line:
            raise ValueError(f"cfg line {lineno}: expected key=value, got {raw!r}")
        key, value = line.split("=", 1)
        sections[-1][key.strip()] = value.strip()
    return sections


def _net_and_layers(sections: Sequence[dict[str, str]]) -> tuple[dict[str, str], list[dict[str, str]]]:
    """Split off the [net] section; route indices count the remaining layers only."""
    net = next((s for s in sections if s["type"] in ("net", "network")), {"type": "net"})
    layers = [s for s in sections if s["type"] not in ("net", "network")]
    for index, layer in enumerate(layers):
        if layer["type"] not in SUPPORTED_LAYERS:
            raise ValueError(
                f"layer {index}: unsupported layer type [{layer['type']}] "
                f"(supported: {', '.join(SUPPORTED_LAYERS)})"
            )
    return net, layers


def _int(layer: dict[str, str], key: str, default: int) -> int:
    return int(layer.get(key, default))


def _ints(value: str) -> list[int]:
    return [int(v) for v in value.split(",") if v.strip()]


def _route_sources(layers: Sequence[dict[str, str]], index: int) -> list[int]:
    """Absolute layer indices a [route] concatenates (negative = relative)."""
    layer = layers[index]
    if "groups" in layer or "group_id" in layer:
        raise ValueError(f"layer {index}: [route] groups/group_id are not supported")
    sources = [s if s >= 0 else index + s for s in _ints(layer.get("layers", ""))]
    if not sources or any(not 0 <= s < index for s in sources):
        raise ValueError(f"layer {index}: [route] layers={layer.get('layers')!r} out of range")
    return sources


def _conv_padding(layer: dict[str, str]) -> int:
    # Darknet: pad=1 means "same" padding size//2, overriding padding=.
    size = _int(layer, "size", 1)
    return size // 2 if _int(layer, "pad", 0) else _int(layer, "padding", 0)


def layer_channels(sections: Sequence[dict[str, str]]) -> list[int]:
    """Output channel count of every layer (excluding [net])."""
    net, layers = _net_and_layers(sections)
    channels: list[int] = []
    previous = _int(net, "channels", 3)
    for index, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "convolutional":
            previous = _int(layer, "filters", 1)
        elif kind == "route":
            previous = sum(channels[s] for s in _route_sources(layers, index))
        channels.append(previous)  # maxpool / upsample / yolo keep channels
    return channels


# --------------------------------------------------------------------------
# weights
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class ConvParams:
    """Raw Darknet parameters of one [convolutional] layer (BN not folded)."""

    weight: np.ndarray  # (out, in, k, k), same order as ONNX Conv
    bias: np.ndarray  # conv bias, or BN beta when batch normalized
    bn_scale: np.ndarray | None = None  # gamma
    bn_mean: np.ndarray | None = None
    bn_var: np.ndarray | None = None


@dataclass(frozen=True)
class WeightsHeader:
    major: int
    minor: int
    revision: int
    seen: int


def _read_bytes(source: WeightsSource) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    return Path(source).read_bytes()


def read_header(data: bytes) -> tuple[WeightsHeader, int]:
    """Parse the weights header; returns it and the offset where floats start."""
    if len(data) < 12:
        raise ValueError(f"weights file too short for a header: {len(data)} bytes")
    major, minor, revision = (int(v) for v in np.frombuffer(data, "<i4", count=3))
    # Darknet switched `seen` from int32 to int64 (size_t) in version 0.2.
    seen_dtype = "<i8" if major * 10 + minor >= 2 else "<i4"
    end = 12 + np.dtype(seen_dtype).itemsize
    if len(data) < end:
        raise ValueError(f"weights file too short for a header: {len(data)} bytes")
    seen = int(np.frombuffer(data, seen_dtype, count=1, offset=12)[0])
    return WeightsHeader(major, minor, revision, seen), end


def load_weights(path: WeightsSource, layers: Sequence[dict[str, str]]) -> dict[int, ConvParams]:
    """Read Darknet weights for the parsed cfg; returns {layer index: ConvParams}.

    ``path`` is a file path or the file's bytes; ``layers`` is parse_cfg output.
    """
    data = _read_bytes(path)
    _, offset = read_header(data)
    floats = (len(data) - offset) // 4
    values = np.frombuffer(data, "<f4", count=floats, offset=offset)
    net, net_layers = _net_and_layers(layers)
    channels = layer_channels(layers)
    net_channels = _int(net, "channels", 3)

    params: dict[int, ConvParams] = {}
    pos = 0

    def take(count: int, index: int, what: str) -> np.ndarray:
        nonlocal pos
        if pos + count > floats:
            raise ValueError(
                f"weights file too short: layer {index} needs {count} floats for {what} "
                f"at float {pos}, but only {floats - pos} remain"
            )
        chunk = values[pos : pos + count].astype(np.float32)
        pos += count
        return chunk

    for index, layer in enumerate(net_layers):
        if layer["type"] != "convolutional":
            continue
        filters, size = _int(layer, "filters", 1), _int(layer, "size", 1)
        if _int(layer, "groups", 1) != 1:
            raise ValueError(f"layer {index}: grouped convolutions are not supported")
        in_ch = channels[index - 1] if index > 0 else net_channels
        # Darknet's file order: biases, [scales, rolling_mean, rolling_var], weights.
        bias = take(filters, index, "biases")
        bn = None
        if _int(layer, "batch_normalize", 0):
            bn = tuple(take(filters, index, name) for name in ("scales", "rolling_mean", "rolling_var"))
        weight = take(filters * in_ch * size * size, index, "weights")
        weight = weight.reshape(filters, in_ch, size, size)
        params[index] = ConvParams(weight, bias, *(bn or (None, None, None)))

    leftover = len(data) - offset - pos * 4
    if leftover:
        raise ValueError(
            f"weights file has {leftover} bytes left over after the last layer "
            "(cfg and weights do not match)"
        )
    return params


def fold_batchnorm(conv: ConvParams) -> tuple[np.ndarray, np.ndarray]:
    """Fold Darknet batch norm into the conv: returns float32 (weight, bias)."""
    if conv.bn_scale is None:
        return conv.weight, conv.bias
    scale = conv.bn_scale.astype(np.float64) / (np.sqrt(conv.bn_var.astype(np.float64)) + BN_EPS)
    weight = conv.weight.astype(np.float64) * scale[:, None, None, None]
    bias = conv.bias.astype(np.float64) - conv.bn_mean.astype(np.float64) * scale
    return weight.astype(np.float32), bias.astype(np.float32)


# --------------------------------------------------------------------------
# graph construction
# --------------------------------------------------------------------------


class _DarknetGraph(GraphBuilder):
    """Readable names: a node is named after its layer, its outputs after the node."""

    def const(self, name: str, array: np.ndarray) -> str:
        return self.add_initializer(name, array)

    def node(self, op: str, name: str, inputs: Sequence[str], n_out: int = 1, **attrs) -> list[str]:
        outputs = [name] if n_out == 1 else [f"{name}:{i}" for i in range(n_out)]
        return self.add_node(op, name, inputs, outputs, **attrs)


def _check_input_size(input_size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in input_size)
    if height <= 0 or width <= 0 or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
        raise ValueError(
            f"input size {height}x{width} (HxW) must be positive multiples of {INPUT_MULTIPLE}"
        )
    return height, width


def _add_conv(g: _DarknetGraph, index: int, layer: dict[str, str], x: Tensor, conv: ConvParams) -> Tensor:
    size, stride, pad = _int(layer, "size", 1), _int(layer, "stride", 1), _conv_padding(layer)
    weight, bias = fold_batchnorm(conv)
    name = f"conv_{index}"
    out = g.node(
        "Conv", name,
        [x.name, g.const(f"{name}.weight", weight), g.const(f"{name}.bias", bias)],
        kernel_shape=[size, size], strides=[stride, stride], pads=[pad] * 4,
    )[0]
    activation = layer.get("activation", "logistic")
    if activation == "leaky":
        out = g.node("LeakyRelu", f"leaky_{index}", [out], alpha=LEAKY_SLOPE)[0]
    elif activation != "linear":
        raise ValueError(f"layer {index}: unsupported activation {activation!r} (leaky or linear only)")
    height = (x.height + 2 * pad - size) // stride + 1
    width = (x.width + 2 * pad - size) // stride + 1
    return Tensor(out, weight.shape[0], height, width)


def _maxpool_pads(length: int, size: int, stride: int, padding: int) -> tuple[int, int, int]:
    """Darknet maxpool along one axis: (output length, pad before, pad after).

    Darknet pads with ``padding`` (default size-1) cells in total, padding//2
    before, the rest after (out-of-range cells never win). Only the padding that
    a window actually reaches is emitted, so e.g. size 2 stride 2 gets none and
    size 2 stride 1 gets one cell on the right/bottom.
    """
    out = (length + padding - size) // stride + 1
    before = padding // 2
    after = max(0, (out - 1) * stride + size - length - before)
    return out, before, after


def _add_maxpool(g: _DarknetGraph, index: int, layer: dict[str, str], x: Tensor) -> Tensor:
    size = _int(layer, "size", 1)
    stride = _int(layer, "stride", 1)
    padding = _int(layer, "padding", size - 1)
    out_h, top, bottom = _maxpool_pads(x.height, size, stride, padding)
    out_w, left, right = _maxpool_pads(x.width, size, stride, padding)
    out = g.node(
        "MaxPool", f"maxpool_{index}", [x.name],
        kernel_shape=[size, size], strides=[stride, stride], pads=[top, left, bottom, right],
    )[0]
    return Tensor(out, x.channels, out_h, out_w)


def _add_route(g: _DarknetGraph, index: int, layers: Sequence[dict[str, str]], outputs: list[Tensor]) -> Tensor:
    sources = [outputs[s] for s in _route_sources(layers, index)]
    if any((s.height, s.width) != (sources[0].height, sources[0].width) for s in sources):
        raise ValueError(f"layer {index}: [route] inputs have different spatial sizes")
    channels = sum(s.channels for s in sources)
    if len(sources) == 1:
        # A single-source route is just a reference to an earlier output.
        name = g.node("Identity", f"route_{index}", [sources[0].name])[0]
    else:
        name = g.node("Concat", f"route_{index}", [s.name for s in sources], axis=1)[0]
    return Tensor(name, channels, sources[0].height, sources[0].width)


def _add_upsample(g: _DarknetGraph, index: int, layer: dict[str, str], x: Tensor) -> Tensor:
    stride = _int(layer, "stride", 2)
    if float(layer.get("scale", 1)) != 1:
        raise ValueError(f"layer {index}: [upsample] scale != 1 is not supported")
    name = f"upsample_{index}"
    scales = g.const(f"{name}.scales", np.array([1, 1, stride, stride], np.float32))
    # asymmetric + floor maps output i to input i // stride, exactly darknet's copy.
    out = g.node(
        "Resize", name, [x.name, "", scales],
        mode="nearest", coordinate_transformation_mode="asymmetric", nearest_mode="floor",
    )[0]
    return Tensor(out, x.channels, x.height * stride, x.width * stride)


def _yolo_anchors(index: int, layer: dict[str, str]) -> tuple[np.ndarray, int]:
    """Anchors (pixels, shape [na, 2]) this head uses, and its class count."""
    if float(layer.get("scale_x_y", 1)) != 1:
        raise ValueError(f"layer {index}: [yolo] scale_x_y is not supported")
    all_anchors = np.array(_ints(layer.get("anchors", "")), np.float32).reshape(-1, 2)
    mask = _ints(layer["mask"]) if "mask" in layer else list(range(len(all_anchors)))
    return all_anchors[mask], _int(layer, "classes", 80)


def _add_yolo(g: _DarknetGraph, index: int, layer: dict[str, str], x: Tensor, input_hw: tuple[int, int]) -> tuple[str, int, int]:
    """YOLOv5-style decode of one head; returns (output [1, rows, no], rows, classes)."""
    anchors, classes = _yolo_anchors(index, layer)
    na, no, ny, nx = len(anchors), 5 + classes, x.height, x.width
    if x.channels != na * no:
        raise ValueError(f"layer {index}: [yolo] expects {na}*(5+{classes}) = {na * no} channels, got {x.channels}")
    stride_y, stride_x = input_hw[0] / ny, input_hw[1] / nx
    if stride_y != stride_x or not stride_y.is_integer():
        raise ValueError(f"layer {index}: [yolo] grid {ny}x{nx} does not divide input {input_hw}")
    p = f"yolo_{index}"

    # [1, na*no, ny, nx] -> [1, na, ny, nx, no], like YOLOv5's Detect.forward.
    t = g.node("Reshape", f"{p}/reshape", [x.name, g.const(f"{p}.shape_in", np.array([1, na, no, ny, nx], np.int64))])[0]
    t = g.node("Transpose", f"{p}/transpose", [t], perm=[0, 1, 3, 4, 2])[0]
    split = g.const(f"{p}.split", np.array([2, 2, 1 + classes], np.int64))
    txy, twh, tconf = g.node("Split", f"{p}/split", [t, split], n_out=3, axis=4)

    gx, gy = np.meshgrid(np.arange(nx, dtype=np.float32), np.arange(ny, dtype=np.float32))
    grid = np.stack([gx, gy], axis=-1)[None, None]  # [1, 1, ny, nx, 2], (x, y) order
    xy = g.node("Sigmoid", f"{p}/sigmoid_xy", [txy])[0]
    xy = g.node("Add", f"{p}/add_grid", [xy, g.const(f"{p}.grid", grid)])[0]
    xy = g.node("Mul", f"{p}/mul_stride", [xy, g.const(f"{p}.stride", np.array(stride_x, np.float32))])[0]

    # YOLOv3 anchors are already in network-input pixels.
    wh = g.node("Exp", f"{p}/exp_wh", [twh])[0]
    wh = g.node("Mul", f"{p}/mul_anchor", [wh, g.const(f"{p}.anchor_grid", anchors.reshape(1, na, 1, 1, 2))])[0]

    conf = g.node("Sigmoid", f"{p}/sigmoid_conf", [tconf])[0]
    y = g.node("Concat", f"{p}/concat", [xy, wh, conf], axis=4)[0]
    y = g.node("Reshape", f"{p}/reshape_out", [y, g.const(f"{p}.shape_out", np.array([1, -1, no], np.int64))])[0]
    return y, na * ny * nx, classes


def build_model(
    cfg_text: str,
    weights: WeightsSource,
    input_size: Sequence[int] = (640, 640),
    class_names: list[str] | None = None,
    opset: int = 13,
) -> onnx.ModelProto:
    """Build a checked ONNX model; ``input_size`` is (height, width)."""
    height, width = _check_input_size(input_size)
    sections = parse_cfg(cfg_text)
    net, layers = _net_and_layers(sections)
    params = load_weights(weights, sections)

    g = _DarknetGraph()
    x = Tensor("images", _int(net, "channels", 3), height, width)
    outputs: list[Tensor] = []
    heads: list[str] = []
    rows, classes = 0, None
    for index, layer in enumerate(layers):
        kind = layer["type"]
        if kind == "convolutional":
            x = _add_conv(g, index, layer, x, params[index])
        elif kind == "maxpool":
            x = _add_maxpool(g, index, layer, x)
        elif kind == "route":
            x = _add_route(g, index, layers, outputs)
        elif kind == "upsample":
            x = _add_upsample(g, index, layer, x)
        elif kind == "yolo":
            head, head_rows, head_classes = _add_yolo(g, index, layer, x, (height, width))
            if classes is not None and head_classes != classes:
                raise ValueError(f"layer {index}: [yolo] heads disagree on classes")
            heads.append(head)
            rows, classes = rows + head_rows, head_classes
            # Darknet passes a yolo layer's input through as its output.
        outputs.append(x)
    if not heads:
        raise ValueError("cfg has no [yolo] layer")

    g.node("Concat", "output0", heads, axis=1)
    names = class_names if class_names is not None else [f"class{i}" for i in range(classes)]
    if len(names) != classes:
        raise ValueError(f"{len(names)} class names given but the model has {classes} classes")

    graph = helper.make_graph(
        g.nodes,
        "darknet_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, rows, 5 + classes])],
        g.initializers,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="qcal.darknet"
    )
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"names": json.dumps(list(names)), "stride": str(INPUT_MULTIPLE)})
    onnx.checker.check_model(model, full_check=True)
    return model


def convert(
    cfg_path: PathLike,
    weights_path: PathLike,
    out_path: PathLike,
    input_size: Sequence[int] = (640, 640),
    names_path: PathLike | None = None,
) -> onnx.ModelProto:
    """Convert cfg + weights files to an ONNX file; returns the model."""
    names = read_names_file(names_path) if names_path is not None else None
    model = build_model(Path(cfg_path).read_text(), weights_path, input_size, names)
    write_atomic(out_path, model.SerializeToString())
    return model


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcal.darknet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--cfg", required=True, help="Darknet .cfg file")
    parser.add_argument("--weights", required=True, help="Darknet .weights file")
    parser.add_argument("--names", help="class names file, one per line")
    parser.add_argument("--size", nargs=2, type=int, default=[640, 640], metavar=("H", "W"),
                        help="network input height and width (multiples of 32)")
    parser.add_argument("--out", required=True, help="output .onnx path")
    args = parser.parse_args(argv)
    model = convert(args.cfg, args.weights, args.out, tuple(args.size), args.names)
    shape = [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim]
    print(f"wrote {args.out}: images [1, 3, {args.size[0]}, {args.size[1]}] -> output0 {shape}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
