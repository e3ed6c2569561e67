"""Writing an ONNX graph op by op: unique names, numpy initializers."""

from __future__ import annotations

from typing import Any

import numpy as np

MS_DOMAIN = "com.microsoft"


class Graph:
    """Collects nodes and initializers with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, hint: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, outputs: int | list[str] = 1,
           domain: str = "", **attrs: Any) -> Any:
        """Add a node; return its output name (or names, when there are several)."""
        from onnx import helper

        names = outputs if isinstance(outputs, list) else [self.name(f"{hint}/{op_type}") for _ in range(outputs)]
        self.nodes.append(helper.make_node(op_type, inputs, names, name=self.name(hint), domain=domain, **attrs))
        return names[0] if len(names) == 1 else names

    def model(self, name: str, inputs: list[Any], outputs: list[Any], opsets: dict[str, int]) -> Any:
        """The ModelProto (IR version 8). The initializers are moved into it one by one rather
        than copied all at once: a graph of weights is never held twice."""
        from onnx import helper

        graph = helper.make_graph(self.nodes, name, inputs, outputs)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()])
        model.ir_version = 8
        pending, self.initializers = self.initializers[::-1], []
        while pending:
            model.graph.initializer.add().CopyFrom(pending.pop())
        return model
