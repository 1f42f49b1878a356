"""What a layer is, for the search: a weighted node with the activation and pooling only it feeds, and
how moving one layer out of int8 changes the quantization options."""

from __future__ import annotations

from dataclasses import replace

import onnx

from qcal.graph import consumers, initializer_names, nodes_by_name
from qcal.quantize import QuantizeOptions

RANKED_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops that finish a layer: its activation (LeakyReLU, SiLU = Sigmoid * x, ...) and pooling.
LAYER_TAIL_OPS = ("Relu", "LeakyRelu", "Sigmoid", "Mul", "Clip", "HardSwish", "HardSigmoid", "Tanh", "MaxPool",
                  "AveragePool")
PRECISIONS = ("int16", "float")


def layer_nodes(model: onnx.ModelProto, layer: str) -> list[str]:
    """The named weighted node plus the activation and pooling nodes fed only by it. Keeping a layer in
    float must keep these too: otherwise ONNX Runtime still quantizes the activation's output, and the
    layer's error stays (measured: with every Conv float, YOLOv3-tiny still lost 0.2 mAP50 agreement
    through its quantized LeakyReLU and MaxPool outputs)."""
    node_of = nodes_by_name(model)
    initializers = initializer_names(model)
    readers = consumers(model)
    group, produced = [layer], set(node_of[layer].output)
    frontier = list(node_of[layer].output)
    while frontier:
        for n in readers.get(frontier.pop(), []):
            inputs = [i for i in n.input if i and i not in initializers]
            if n.name not in group and n.op_type in LAYER_TAIL_OPS and all(i in produced for i in inputs):
                group.append(n.name)
                produced.update(n.output)
                frontier.extend(n.output)
    return group


def rankable_layers(model: onnx.ModelProto, skip: set[str]) -> list[str]:
    return [n.name for n in model.graph.node if n.op_type in RANKED_OPS and n.name not in skip]


def layer_change(model: onnx.ModelProto, layer: str, precision: str, options: QuantizeOptions) -> QuantizeOptions:
    """options with one more layer kept out of 8 bit. float: the layer's nodes are not quantized.
    int16: its activation input and every output of its nodes are uint16 (A16W8, which SNPE's and QNN's
    HTP run natively; float layers fall back to the CPU there), its weights stay int8."""
    group = layer_nodes(model, layer)
    if precision == "float":
        return replace(options, exclude_nodes=list(dict.fromkeys(options.exclude_nodes + group)))
    if precision != "int16":
        raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
    node_of = nodes_by_name(model)
    initializers = initializer_names(model)
    tensors = [i for i in node_of[layer].input if i and i not in initializers]
    tensors += [o for name in group for o in node_of[name].output]
    return replace(options, int16_tensors=list(dict.fromkeys(options.int16_tensors + tensors)))
