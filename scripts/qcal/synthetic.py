"""Synthetic ONNX graphs shaped exactly like Ultralytics YOLOv5's ONNX export (random weights).

``python export.py --include onnx`` (YOLOv5 v6.x/v7.0, ``models/yolov5s.yaml``) writes a graph with

* input ``images`` float32 [1, 3, 640, 640] (``--dynamic``: batch ``batch``), output ``output0``
  [1, 25200, 85]: cx, cy, w, h in input pixels, objectness, 80 class scores, all decoded;
* BatchNorm folded into every Conv (Conv with bias) and SiLU exported as ``Sigmoid`` + ``Mul``;
* the Detect tail of ``models/yolo.py`` (export mode) per level: Conv 1x1 -> Reshape
  [bs, 3, 85, ny, nx] -> Transpose [0, 1, 3, 4, 2] -> Sigmoid -> Split (2, 2, 81) on the last axis ->
  ``xy = (xy * 2 + grid) * stride`` and ``wh = (wh * 2) ** 2 * anchor_grid`` -> Concat -> Reshape
  [bs, na*ny*nx, 85]; a final Concat on axis 1. ``grid`` already holds the -0.5 offset (v6.2+/v7);
  ``grid`` and ``anchor_grid`` are constants expanded to [1, 3, ny, nx, 2];
* torch's scoped node names (``/model.0/conv/Conv``, ``/model.0/act/Sigmoid``,
  ``/model.24/Reshape`` ...), tensor names ``<node name>_output_<i>``, weight names
  ``model.0.conv.weight``; small constants are ``Constant`` nodes (``/model.24/Constant_2``);
* metadata ``stride`` = "32" and ``names`` = "{0: 'person', 1: 'bicycle', ...}".

:func:`build_yolov5` rebuilds that graph with numpy and ``onnx.helper`` only (no torch, no download).
The default multiples give YOLOv5s (7,225,885 parameters, like YOLOv5's fused model summary).

Weights are deterministic for a seed. Every Conv gets He (fan-in) random weights and a BatchNorm with
random gamma (lognormal, mostly 0.5..2) and beta (std 0.5) that is folded into it, using per-channel
batch statistics measured with onnxruntime on two synthetic images at the model's size (white noise
and a smooth photo-like image), exactly as folding a trained BN would. Pre-activations therefore have
mean ~beta and std ~gamma at every depth, which keeps activations realistic through the whole network
(max |x| ~10..30 on noise input for the s model). The Detect convs are scaled to unit-std logits and get
YOLOv5's prior biases (``Detect._initialize_biases``: objectness log(8 / (640 / s)**2), classes
log(0.6 / (nc - 0.99999))); ``det_bias`` shifts the objectness logits.

:func:`parameter_count` and :func:`activation_volume` measure a built model.

Usage::

    python -m qcal.synthetic --out yolov5s_synthetic.onnx [--size 640 640] [--opset 12] [--dynamic]
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qcal.files import write_atomic
from qcal.graph import GraphBuilder, Tensor
from qcal.names import COCO_NAMES

NameStyle = Literal["export", "legacy", "none"]
ConstantStyle = Literal["node", "initializer"]

ANCHORS = (
    (10, 13, 16, 30, 33, 23),  # P3/8
    (30, 61, 62, 45, 59, 119),  # P4/16
    (116, 90, 156, 198, 373, 326),  # P5/32
)
STRIDES = (8, 16, 32)
MAX_STRIDE = 32
SUPPORTED_OPSETS = range(12, 18)
# IR version 8 (onnx 1.10..1.12) covers opsets up to 17 and loads in older runtimes.
IR_VERSION = 8


# models/yolov5s.yaml (v6.0+ / v7.0): (from, repeats, module, args) with base channel counts.
BACKBONE = (
    (-1, 1, "Conv", (64, 6, 2, 2)),  # 0-P1/2
    (-1, 1, "Conv", (128, 3, 2)),  # 1-P2/4
    (-1, 3, "C3", (128,)),
    (-1, 1, "Conv", (256, 3, 2)),  # 3-P3/8
    (-1, 6, "C3", (256,)),
    (-1, 1, "Conv", (512, 3, 2)),  # 5-P4/16
    (-1, 9, "C3", (512,)),
    (-1, 1, "Conv", (1024, 3, 2)),  # 7-P5/32
    (-1, 3, "C3", (1024,)),
    (-1, 1, "SPPF", (1024, 5)),  # 9
)
HEAD = (
    (-1, 1, "Conv", (512, 1, 1)),
    (-1, 1, "Upsample", (None, 2, "nearest")),
    ((-1, 6), 1, "Concat", (1,)),  # cat backbone P4
    (-1, 3, "C3", (512, False)),  # 13
    (-1, 1, "Conv", (256, 1, 1)),
    (-1, 1, "Upsample", (None, 2, "nearest")),
    ((-1, 4), 1, "Concat", (1,)),  # cat backbone P3
    (-1, 3, "C3", (256, False)),  # 17 (P3/8-small)
    (-1, 1, "Conv", (256, 3, 2)),
    ((-1, 14), 1, "Concat", (1,)),  # cat head P4
    (-1, 3, "C3", (512, False)),  # 20 (P4/16-medium)
    (-1, 1, "Conv", (512, 3, 2)),
    ((-1, 10), 1, "Concat", (1,)),  # cat head P5
    (-1, 3, "C3", (1024, False)),  # 23 (P5/32-large)
    ((17, 20, 23), 1, "Detect", ()),  # Detect(P3, P4, P5)
)

BN_EPS = 1e-3  # YOLOv5 sets BatchNorm2d eps to 1e-3 (initialize_weights)
BN_GAMMA_LOG_STD = 0.35  # gamma ~ lognormal: most channels between 0.5 and 2
BN_BETA_STD = 0.5
HEAD_LOGIT_STD = 1.0  # std of the Detect conv outputs before the prior biases


# --------------------------------------------------------------------------
# YOLOv5 parse_model scaling
# --------------------------------------------------------------------------


def make_divisible(x: float, divisor: int = 8) -> int:
    """YOLOv5 utils.general.make_divisible: x rounded up to a multiple of divisor."""
    return int(math.ceil(x / divisor) * divisor)


def scaled_depth(n: int, depth_multiple: float) -> int:
    """Repeats as YOLOv5's parse_model: ``max(round(n * gd), 1) if n > 1 else n``.

    (For yolov5s's 0.33 this equals ceil: 3, 6, 9 -> 1, 2, 3.)
    """
    return max(round(n * depth_multiple), 1) if n > 1 else n


def scaled_width(c: int, width_multiple: float) -> int:
    return make_divisible(c * width_multiple, 8)


# --------------------------------------------------------------------------
# graph builder: torch-exporter-like names; BatchNorm statistics measured in a first pass
# --------------------------------------------------------------------------


Stats = dict[str, tuple[np.ndarray, np.ndarray]]  # conv parameter prefix -> (mean, var) of its raw output


class _Graph(GraphBuilder):
    """Emits nodes with the exporter's names.

    With ``stats=None`` it builds the *measuring* graph: every Conv has its raw He weights and no bias,
    followed by a training-mode BatchNorm written out with ReduceMean ops (statistics over batch and
    space) whose mean and variance become graph outputs. With ``stats`` it builds the exported graph:
    the same random weights with that BatchNorm folded in. Both passes draw the same random numbers in
    the same order, so the folded network computes exactly what the measuring graph computed.
    """

    def __init__(self, opset: int, name_style: NameStyle, constants: ConstantStyle,
                 rng: np.random.Generator, stats: Stats | None) -> None:
        super().__init__()
        self.opset, self.name_style, self.constants, self.rng = opset, name_style, constants, rng
        self.stats = stats
        self.output_name, self.rows = "", 0
        self.stat_outputs: list[tuple[str, str, str]] = []  # (prefix, mean tensor, var tensor)
        self._scoped: dict[tuple[str, str], int] = {}
        self._serial = 100  # legacy torch exports number their tensors

    @property
    def measuring(self) -> bool:
        return self.stats is None

    # ---- names ----
    def _scoped_name(self, scope: str, op: str) -> str:
        k = self._scoped.get((scope, op), 0)
        self._scoped[(scope, op)] = k + 1
        return f"/{scope}/{op}" + (f"_{k}" if k else "")

    def _fresh(self) -> str:
        self._serial += 1
        return str(self._serial)

    def _names(self, scope: str, op: str, n_out: int) -> tuple[str, list[str]]:
        if self.name_style == "export" or self.measuring:
            name = self._scoped_name(scope, op)
            return name, [f"{name}_output_{i}" for i in range(n_out)]
        name = f"{op}_{len(self.nodes)}" if self.name_style == "legacy" else ""
        return name, [self._fresh() for _ in range(n_out)]

    # ---- nodes and constants ----
    def node(self, op: str, scope: str, inputs: Sequence[str], n_out: int = 1,
             outputs: Sequence[str] | None = None, **attrs) -> list[str]:
        name, auto = self._names(scope, op, n_out)
        return self.add_node(op, name, inputs, list(outputs) if outputs is not None else auto, **attrs)

    def const(self, scope: str, array: np.ndarray) -> str:
        """A constant the exporter writes inline: a Constant node (or an initializer, as after onnxsim)."""
        array = np.asarray(array)
        if self.constants == "node":
            return self.node("Constant", scope, [], value=numpy_helper.from_array(array))[0]
        if self.name_style == "export" or self.measuring:
            name = self._scoped_name(scope, "Constant") + "_output_0"
        else:
            name = self._fresh()
        return self.add_initializer(name, array)

    def param(self, name: str, array: np.ndarray) -> str:
        return self.add_initializer(name, np.ascontiguousarray(array, np.float32))

    # ---- Conv + BatchNorm ----
    def _measure(self, y: str, scope: str, prefix: str) -> tuple[str, str]:
        """Training-mode batch statistics of y (per channel, over N, H, W); returns (y - mean, var)."""
        mean = self.node("ReduceMean", scope, [y], axes=[0, 2, 3], keepdims=1)[0]
        centered = self.node("Sub", scope, [y, mean])[0]
        square = self.node("Mul", scope, [centered, centered])[0]
        var = self.node("ReduceMean", scope, [square], axes=[0, 2, 3], keepdims=1)[0]
        self.stat_outputs.append((prefix, mean, var))
        return centered, var

    def folded_conv(self, x: Tensor, c2: int, k: int, s: int, pad: int, scope: str, prefix: str,
                    bn: tuple[np.ndarray, np.ndarray, float] | None, bias_extra: np.ndarray | None = None) -> str:
        """A Conv with He (fan-in) weights, BatchNorm (gamma, beta, eps) folded in.

        bn=None is a plain Conv normalised to unit std (Detect's convs) with bias_extra as its bias.
        Returns the Conv output (measuring: the normalised pre-activation).
        """
        fan_in = x.channels * k * k
        w = self.rng.standard_normal((c2, x.channels, k, k), dtype=np.float32)
        w *= np.float32(math.sqrt(2.0 / fan_in))
        gamma, beta, eps = bn if bn is not None else (np.full(c2, HEAD_LOGIT_STD, np.float32),
                                                       bias_extra, 0.0)
        attrs = dict(dilations=[1, 1], group=1, kernel_shape=[k, k], pads=[pad] * 4, strides=[s, s])
        names = (f"{prefix}.weight", f"{prefix}.bias") if bn is None else (f"{prefix}.conv.weight",
                                                                           f"{prefix}.conv.bias")
        conv_scope = scope if bn is None else f"{scope}/conv"
        if self.measuring:
            y = self.node("Conv", conv_scope, [x.name, self.param(names[0], w)], **attrs)[0]
            centered, var = self._measure(y, f"{scope}/bn", prefix)
            shape = (1, c2, 1, 1)
            std = self.node("Sqrt", f"{scope}/bn", [self.node("Add", f"{scope}/bn", [
                var, self.const(f"{scope}/bn", np.array(max(eps, 1e-6), np.float32))])[0]])[0]
            scale = self.node("Div", f"{scope}/bn", [self.param(f"{prefix}.bn.weight", gamma.reshape(shape)), std])[0]
            scaled = self.node("Mul", f"{scope}/bn", [centered, scale])[0]
            return self.node("Add", f"{scope}/bn", [scaled, self.param(f"{prefix}.bn.bias", beta.reshape(shape))])[0]
        mean, var = (v.reshape(-1).astype(np.float64) for v in self.stats[prefix])
        scale = gamma.astype(np.float64) / np.sqrt(var + max(eps, 1e-6))
        weight = (w * scale[:, None, None, None]).astype(np.float32)
        bias = (beta - mean * scale).astype(np.float32)
        return self.node("Conv", conv_scope, [x.name, self.param(names[0], weight), self.param(names[1], bias)],
                         **attrs)[0]

    # ---- YOLOv5 modules ----
    def conv(self, x: Tensor, c2: int, k: int, s: int, scope: str, prefix: str, p: int | None = None) -> Tensor:
        """models/common.py Conv (BN fused): Conv2d(bias) + SiLU as Sigmoid and Mul."""
        pad = k // 2 if p is None else p
        gamma = np.exp(self.rng.normal(0.0, BN_GAMMA_LOG_STD, c2)).astype(np.float32)
        beta = self.rng.normal(0.0, BN_BETA_STD, c2).astype(np.float32)
        y = self.folded_conv(x, c2, k, s, pad, scope, prefix, (gamma, beta, BN_EPS))
        sig = self.node("Sigmoid", f"{scope}/act", [y])[0]
        out = self.node("Mul", f"{scope}/act", [y, sig])[0]
        return Tensor(out, c2, (x.height + 2 * pad - k) // s + 1, (x.width + 2 * pad - k) // s + 1)

    def c3(self, x: Tensor, c2: int, n: int, shortcut: bool, scope: str, prefix: str) -> Tensor:
        """models/common.py C3: cv3(cat(m(cv1(x)), cv2(x))) with n Bottlenecks (e=1.0)."""
        c_ = int(c2 * 0.5)
        a = self.conv(x, c_, 1, 1, f"{scope}/cv1", f"{prefix}.cv1")
        for j in range(n):
            bscope, bprefix = f"{scope}/m/m.{j}", f"{prefix}.m.{j}"
            h = self.conv(a, c_, 1, 1, f"{bscope}/cv1", f"{bprefix}.cv1")
            h = self.conv(h, c_, 3, 1, f"{bscope}/cv2", f"{bprefix}.cv2")
            a = Tensor(self.node("Add", bscope, [a.name, h.name])[0], c_, a.height, a.width) if shortcut else h
        b = self.conv(x, c_, 1, 1, f"{scope}/cv2", f"{prefix}.cv2")
        return self.conv(self.concat([a, b], scope), c2, 1, 1, f"{scope}/cv3", f"{prefix}.cv3")

    def sppf(self, x: Tensor, c2: int, k: int, scope: str, prefix: str) -> Tensor:
        """models/common.py SPPF: cv2(cat(x, m(x), m(m(x)), m(m(m(x))))) after cv1; m = MaxPool k, s1, p k//2."""
        x = self.conv(x, x.channels // 2, 1, 1, f"{scope}/cv1", f"{prefix}.cv1")
        pools = [x]
        for i in range(3):  # the one nn.MaxPool2d called three times: scopes m, m_1, m_2
            name = self.node("MaxPool", f"{scope}/m" + (f"_{i}" if i else ""), [pools[-1].name], ceil_mode=0,
                             dilations=[1, 1], kernel_shape=[k, k], pads=[k // 2] * 4, strides=[1, 1])[0]
            pools.append(Tensor(name, x.channels, x.height, x.width))
        return self.conv(self.concat(pools, scope), c2, 1, 1, f"{scope}/cv2", f"{prefix}.cv2")

    def concat(self, parts: Sequence[Tensor], scope: str) -> Tensor:
        name = self.node("Concat", scope, [p.name for p in parts], axis=1)[0]
        return Tensor(name, sum(p.channels for p in parts), parts[0].height, parts[0].width)

    def upsample(self, x: Tensor, scope: str) -> Tensor:
        """nn.Upsample(scale_factor=2, mode='nearest') as torch exports it: Resize with scales."""
        # Opset 11/12 Resize needs a roi input: torch passes an empty float tensor there, and an
        # omitted optional input from opset 13 on.
        roi = self.const(scope, np.zeros(0, np.float32)) if self.opset < 13 else ""
        scales = self.const(scope, np.array([1, 1, 2, 2], np.float32))
        name = self.node("Resize", scope, [x.name, roi, scales], coordinate_transformation_mode="asymmetric",
                         cubic_coeff_a=-0.75, mode="nearest", nearest_mode="floor")[0]
        return Tensor(name, x.channels, x.height * 2, x.width * 2)


# --------------------------------------------------------------------------
# Detect (models/yolo.py, export mode)
# --------------------------------------------------------------------------


def _detect(g: _Graph, feats: Sequence[Tensor], num_classes: int, dynamic_batch: bool, det_bias: float,
            index: int) -> tuple[str, int]:
    scope = f"model.{index}"
    na, no = len(ANCHORS[0]) // 2, num_classes + 5
    levels: list[str] = []
    rows = 0
    for i, (x, stride, anchors) in enumerate(zip(feats, STRIDES, ANCHORS)):
        ny, nx = x.height, x.width
        # Detect.m[i]: plain Conv2d(ch, na*no, 1) with bias, no BN or activation. Its outputs are
        # scaled to unit std and get Detect._initialize_biases' priors (YOLOv5 uses 640 there).
        prior = np.zeros((na, no), np.float32)
        prior[:, 4] = math.log(8 / (640 / stride) ** 2) + det_bias
        prior[:, 5:] = math.log(0.6 / (num_classes - 0.99999))
        y = g.folded_conv(x, na * no, 1, 1, 0, f"{scope}/m.{i}", f"{scope}.m.{i}", None, prior.reshape(-1))
        if g.measuring:
            continue

        if dynamic_batch:  # bs = x.shape[0], as the --dynamic export computes it
            shape = g.node("Shape", scope, [y])[0]
            bs = g.node("Gather", scope, [shape, g.const(scope, np.array(0, np.int64))], axis=0)[0]
            if g.opset >= 13:
                bs = g.node("Unsqueeze", scope, [bs, g.const(scope, np.array([0], np.int64))])[0]
            else:
                bs = g.node("Unsqueeze", scope, [bs], axes=[0])[0]
            view = g.node("Concat", scope, [bs, g.const(scope, np.array([na, no, ny, nx], np.int64))], axis=0)[0]
        else:
            view = g.const(scope, np.array([1, na, no, ny, nx], np.int64))
        t = g.node("Reshape", scope, [y, view])[0]
        t = g.node("Transpose", scope, [t], perm=[0, 1, 3, 4, 2])[0]
        t = g.node("Sigmoid", scope, [t])[0]
        sizes = [2, 2, num_classes + 1]
        if g.opset >= 13:
            xy, wh, conf = g.node("Split", scope, [t, g.const(scope, np.array(sizes, np.int64))], n_out=3, axis=4)
        else:
            xy, wh, conf = g.node("Split", scope, [t], n_out=3, axis=4, split=sizes)

        # Detect._make_grid: grid = stack((xv, yv), 2).expand(1, na, ny, nx, 2) - 0.5,
        # anchor_grid = (anchors[i] * stride[i]).view(1, na, 1, 1, 2).expand(1, na, ny, nx, 2)
        # (yolo.py keeps anchors divided by stride, so anchors * stride are the yaml's pixels).
        yv, xv = np.meshgrid(np.arange(ny, dtype=np.float32), np.arange(nx, dtype=np.float32), indexing="ij")
        grid = np.broadcast_to(np.stack((xv, yv), 2)[None, None], (1, na, ny, nx, 2)) - np.float32(0.5)
        anchor_grid = np.broadcast_to(np.array(anchors, np.float32).reshape(1, na, 1, 1, 2), (1, na, ny, nx, 2))
        two = np.array(2.0, np.float32)
        xy = g.node("Mul", scope, [xy, g.const(scope, two)])[0]
        xy = g.node("Add", scope, [xy, g.const(scope, np.ascontiguousarray(grid))])[0]
        xy = g.node("Mul", scope, [xy, g.const(scope, np.array(float(stride), np.float32))])[0]
        wh = g.node("Mul", scope, [wh, g.const(scope, two)])[0]
        wh = g.node("Pow", scope, [wh, g.const(scope, two)])[0]
        wh = g.node("Mul", scope, [wh, g.const(scope, np.ascontiguousarray(anchor_grid))])[0]
        y5 = g.node("Concat", scope, [xy, wh, conf], axis=4)[0]
        if dynamic_batch:
            flat = g.node("Concat", scope, [bs, g.const(scope, np.array([na * ny * nx, no], np.int64))], axis=0)[0]
        else:
            flat = g.const(scope, np.array([1, na * ny * nx, no], np.int64))
        levels.append(g.node("Reshape", scope, [y5, flat])[0])
        rows += na * ny * nx
    if g.measuring:
        return "", 0
    g.node("Concat", scope, levels, outputs=["output0"], axis=1)
    return "output0", rows


# --------------------------------------------------------------------------
# public API
# --------------------------------------------------------------------------


def _calibration_images(height: int, width: int, seed: int) -> np.ndarray:
    """Two synthetic RGB images in 0..1: white noise, and smooth blobs plus noise (photo-like)."""
    rng = np.random.default_rng([seed, 0x5EED])
    noise = rng.random((3, height, width), dtype=np.float32)
    coarse = rng.random((3, -(-height // 16), -(-width // 16)), dtype=np.float32)
    smooth = coarse.repeat(16, axis=1).repeat(16, axis=2)[:, :height, :width]
    photo = np.clip(0.8 * smooth + 0.1 + rng.normal(0, 0.08, (3, height, width)).astype(np.float32), 0, 1)
    return np.stack([noise, photo]).astype(np.float32)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in size)
    if height <= 0 or width <= 0 or height % MAX_STRIDE or width % MAX_STRIDE:
        raise ValueError(f"size {height}x{width} (HxW) must be positive multiples of {MAX_STRIDE}")
    return height, width


def _measure_batchnorm(g: _Graph, height: int, width: int, seed: int) -> Stats:
    """Run the measuring graph on the calibration images with onnxruntime; per-conv (mean, var)."""
    import onnxruntime as ort  # only needed while building

    outputs = [name for _, mean, var in g.stat_outputs for name in (mean, var)]
    graph = helper.make_graph(
        g.nodes, "measure_batchnorm",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [2, 3, height, width])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in outputs],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", g.opset)])
    model.ir_version = IR_VERSION
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # One thread: results (and so the folded weights) do not depend on the machine's core count.
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = session.run(outputs, {"images": _calibration_images(height, width, seed)})
    return {prefix: (values[2 * i], values[2 * i + 1]) for i, (prefix, _, _) in enumerate(g.stat_outputs)}


def build_yolov5(
    size: Sequence[int] = (640, 640),
    width_multiple: float = 0.50,
    depth_multiple: float = 0.33,
    num_classes: int = 80,
    opset: int = 12,
    dynamic_batch: bool = False,
    seed: int = 0,
    name_style: NameStyle = "export",
    *,
    constants: ConstantStyle = "node",
    det_bias: float = 0.0,
    class_names: Sequence[str] | None = None,
    shape_info: bool = True,
) -> onnx.ModelProto:
    """An ONNX model laid out like YOLOv5's ``export.py --include onnx`` output, with random weights.

    size: (height, width), multiples of 32. width_multiple / depth_multiple: the yaml's multiples
    (0.50/0.33 = YOLOv5s, 0.25/0.33 = n, 0.75/0.67 = m, 1.0/1.0 = l, 1.25/1.33 = x).
    opset: 12..17 (opset >= 13 passes Split sizes / Unsqueeze axes as inputs and omits Resize's roi,
    as torch does). dynamic_batch: batch dim "batch" on input and output; the Detect reshape targets
    are built with Shape/Gather/Unsqueeze/Concat like the ``--dynamic`` export (H and W stay fixed).
    seed: the weights are a pure function of all arguments (the BatchNorm statistics are measured at
    ``size``, so different sizes give slightly different folded weights).
    name_style: "export" = torch >= 1.13 scoped names (``/model.0/conv/Conv``); "legacy" = older
    torch (``Conv_0``, numbered tensors); "none" = nodes left unnamed (tensors numbered).
    constants: "node" = small constants (reshape targets, grids, 2.0, stride) are Constant nodes as
    torch writes them; "initializer" = they are initializers, as after onnx-simplifier.
    det_bias: added to every objectness logit on top of YOLOv5's prior biases. With 0, the s model
    at 640 has some tens of the 25200 objectness scores above 0.25 on noise images (fewer on smooth
    images); raise it for more candidate boxes, lower it (e.g. -3) for almost none.
    class_names: default COCO's 80 names when num_classes == 80, else "class0"...
    shape_info: store inferred intermediate shapes as value_info (torch's exporter does).
    """
    height, width = _check_size(size)
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset {opset} not supported (YOLOv5 exports opset 12..17)")
    if name_style not in ("export", "legacy", "none"):
        raise ValueError(f"name_style must be 'export', 'legacy' or 'none', not {name_style!r}")
    if constants not in ("node", "initializer"):
        raise ValueError(f"constants must be 'node' or 'initializer', not {constants!r}")
    if num_classes < 1:
        raise ValueError("num_classes must be >= 1")
    if class_names is None:
        class_names = COCO_NAMES if num_classes == len(COCO_NAMES) else [f"class{i}" for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes")

    def build(stats: Stats | None) -> _Graph:
        rng = np.random.default_rng([seed, round(width_multiple * 1e4), round(depth_multiple * 1e4), num_classes])
        g = _Graph(opset, name_style, constants, rng, stats)
        x: Tensor | None = Tensor("images", 3, height, width)
        outputs: list[Tensor | None] = []
        for index, (source, n, module, args) in enumerate(BACKBONE + HEAD):
            scope = prefix = f"model.{index}"
            n = scaled_depth(n, depth_multiple)
            if module == "Conv":
                c2, k, s, *p = args
                x = g.conv(x, scaled_width(c2, width_multiple), k, s, scope, prefix, p[0] if p else None)
            elif module == "C3":
                shortcut = args[1] if len(args) > 1 else True
                x = g.c3(x, scaled_width(args[0], width_multiple), n, shortcut, scope, prefix)
            elif module == "SPPF":
                x = g.sppf(x, scaled_width(args[0], width_multiple), args[1], scope, prefix)
            elif module == "Upsample":
                x = g.upsample(x, scope)
            elif module == "Concat":
                x = g.concat([x if j == -1 else outputs[j] for j in source], scope)
            elif module == "Detect":
                g.output_name, g.rows = _detect(g, [outputs[j] for j in source], num_classes, dynamic_batch,
                                                det_bias, index)
                x = None
            outputs.append(x)
        return g

    g = build(None)
    stats = _measure_batchnorm(g, height, width, seed)
    g = build(stats)
    output_name, rows = g.output_name, g.rows

    batch: int | str = "batch" if dynamic_batch else 1
    graph = helper.make_graph(
        g.nodes,
        "main_graph" if name_style == "export" else "torch-jit-export",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, height, width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, rows, num_classes + 5])],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="qcal.synthetic", producer_version="1",
                              doc_string="Synthetic YOLOv5 (random weights) laid out like YOLOv5's ONNX export")
    model.ir_version = IR_VERSION
    # export.py: d = {'stride': int(max(model.stride)), 'names': model.names}; meta.value = str(v)
    helper.set_model_props(model, {"stride": str(MAX_STRIDE),
                                   "names": str({i: name for i, name in enumerate(class_names)})})
    if shape_info:
        model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    onnx.checker.check_model(model, full_check=True)
    return model


def build_tiny(
    size: Sequence[int] = (64, 64),
    width_multiple: float = 0.0625,
    depth_multiple: float = 0.33,
    **kwargs,
) -> onnx.ModelProto:
    """:func:`build_yolov5` with tiny multiples (channels 8..64, 140,789 parameters): builds and runs
    in ~0.1 s, for tests. Other keyword arguments (opset, dynamic_batch, name_style ...) are passed on."""
    return build_yolov5(size=size, width_multiple=width_multiple, depth_multiple=depth_multiple, **kwargs)


# --------------------------------------------------------------------------
# measurements
# --------------------------------------------------------------------------


def parameter_count(model: onnx.ModelProto) -> int:
    """Learned parameters: elements of the initializers that feed Conv nodes (weights and biases)."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    used = {name for node in model.graph.node if node.op_type == "Conv" for name in node.input[1:]}
    return sum(sizes[name] for name in used if name in sizes)


def activation_volume(model: onnx.ModelProto, batch: int = 1) -> dict[str, int]:
    """Elements of every intermediate float tensor (node outputs other than Constant, and the graph
    output) for one forward pass of ``batch`` images, from shape inference.

    Returns {"total": ..., "convs": ... (Conv outputs only), "tensors": count}."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for value in list(m.graph.input) + list(m.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = batch
    del m.graph.value_info[:]
    m = onnx.shape_inference.infer_shapes(m, data_prop=True)
    shapes = {}
    for v in list(m.graph.value_info) + list(m.graph.output):
        t = v.type.tensor_type
        if t.elem_type == TensorProto.FLOAT:
            shapes[v.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    total = convs = count = 0
    for node in m.graph.node:
        if node.op_type == "Constant":
            continue
        for out in node.output:
            dims = shapes.get(out)
            if dims is None:
                continue
            if any(d is None for d in dims):
                raise ValueError(f"shape of {out!r} not inferred: {dims}")
            n = int(np.prod(dims))
            total, count = total + n, count + 1
            convs += n if node.op_type == "Conv" else 0
    return {"total": total, "convs": convs, "tensors": count}


def write_model(model: onnx.ModelProto, out: str | os.PathLike) -> Path:
    """Write atomically (temp file in the target folder + os.replace)."""
    write_atomic(out, model.SerializeToString())
    return Path(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m qcal.synthetic", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output .onnx path")
    parser.add_argument("--size", nargs=2, type=int, default=[640, 640], metavar=("H", "W"))
    parser.add_argument("--width-multiple", type=float, default=0.50)
    parser.add_argument("--depth-multiple", type=float, default=0.33)
    parser.add_argument("--classes", type=int, default=80)
    parser.add_argument("--opset", type=int, default=12)
    parser.add_argument("--dynamic", action="store_true", help="dynamic batch dimension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name-style", choices=("export", "legacy", "none"), default="export")
    parser.add_argument("--constants", choices=("node", "initializer"), default="node")
    parser.add_argument("--det-bias", type=float, default=0.0)
    args = parser.parse_args(argv)
    model = build_yolov5(tuple(args.size), args.width_multiple, args.depth_multiple, args.classes, args.opset,
                         args.dynamic, args.seed, args.name_style, constants=args.constants,
                         det_bias=args.det_bias)
    write_model(model, args.out)
    print(f"wrote {args.out}: {parameter_count(model):,} parameters, output0 "
          f"{[d.dim_value or d.dim_param for d in model.graph.output[0].type.tensor_type.shape.dim]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
