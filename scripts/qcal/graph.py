"""ONNX graph plumbing shared by every stage: who consumes a tensor, op counts, and the one small
builder the Darknet converter and the synthetic YOLOv5 generator both emit their graphs with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper


def consumers(model: onnx.ModelProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    table: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            table.setdefault(name, []).append(node)
    return table


def nodes_by_name(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.name: n for n in model.graph.node}


def initializer_names(model: onnx.ModelProto) -> set[str]:
    return {t.name for t in model.graph.initializer}


def op_counts(nodes: Sequence[onnx.NodeProto]) -> dict[str, int]:
    """Op type -> how many of the given nodes have it, in the order the op types first appear."""
    counts: dict[str, int] = {}
    for node in nodes:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@dataclass(frozen=True)
class Tensor:
    """A feature map being built: its name, channel count and spatial size (for one image)."""

    name: str
    channels: int
    height: int
    width: int


class GraphBuilder:
    """Accumulates nodes and initializers; subclasses decide how nodes and tensors are named."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def add_node(self, op: str, name: str | None, inputs: Sequence[str], outputs: Sequence[str],
                 **attrs) -> list[str]:
        self.nodes.append(helper.make_node(op, list(inputs), list(outputs), name=name or None, **attrs))
        return list(outputs)

    def add_initializer(self, name: str, array: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(np.asarray(array), name))
        return name
