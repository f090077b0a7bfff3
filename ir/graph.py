"""The graph IR: SSA values, nodes and the ``Graph`` that holds them in topological order.

Built by the frontend (tracing) or the parser, rewritten by passes (each pass returns a new
Graph and leaves its input untouched), lowered by backends.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from lamina.ir.errors import SourceLoc
from lamina.ir.types import TensorType


class Value:
    """An SSA value: a graph parameter (``Param``) or the result of a ``Node``."""

    __slots__ = ("type",)

    def __init__(self, type: TensorType):
        self.type = type

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype


class Param(Value):
    """A named graph parameter: a call argument (``kind="input"``) or a piece of state
    (``kind="state"``: a parameter, an optimizer slot) that lives across calls."""

    __slots__ = ("kind", "name")

    def __init__(self, name: str, type: TensorType, kind: str = "input"):
        super().__init__(type)
        assert kind in ("input", "state"), kind
        self.name = name
        self.kind = kind

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node(Value):
    """One operation: ``op(inputs) {attrs} : type``, with the source line that created it.

    A ``kernel`` node (made by fusion) also holds a ``region``: a Graph whose inputs stand for
    its operands and whose single output is its value.

    ``attrs`` holds plain data only (int, float, bool, str, None, DType, tuples of those), so
    nodes print, parse, hash and serialize without surprises.
    """

    __slots__ = ("attrs", "inputs", "loc", "op", "region")

    def __init__(self, op: str, inputs: Iterable[Value], attrs: dict, type: TensorType,
                 loc: SourceLoc | None = None, region: Graph | None = None):
        super().__init__(type)
        self.op = op
        self.inputs = tuple(inputs)
        self.attrs = dict(attrs)
        self.loc = loc
        self.region = region  # the body of a ``kernel`` node: a Graph over its operands

    def __repr__(self) -> str:
        return f"<Node {self.op} : {self.type}>"


def ancestors(roots: Iterable[Value]) -> set[Node]:
    """The nodes the values ``roots`` depend on, the root nodes included."""
    seen: set[Node] = set()
    stack = [v for v in roots if isinstance(v, Node)]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        stack.extend(v for v in n.inputs if isinstance(v, Node) and v not in seen)
    return seen


def attr_key(v):
    """A hashable key for an attribute value under which NaN equals NaN (and 0.0 differs from
    -0.0): what "the same attribute" means for verification and CSE."""
    if isinstance(v, float):
        return ("float", "nan" if math.isnan(v) else v.hex())
    if isinstance(v, tuple):
        return ("tuple",) + tuple(attr_key(x) for x in v)
    return (type(v).__name__, v)


def attrs_key(attrs: dict) -> tuple:
    return tuple((k, attr_key(v)) for k, v in attrs.items())


class Graph:
    """A function in SSA form.

    ``inputs`` are the call arguments, ``state`` the values that live across calls, ``nodes``
    the operations in topological order, ``outputs`` the returned values and ``updates`` the new
    value of each piece of state that the call changes (applied after the call, so every read of
    state in the graph sees the value from before it).

    ``variables`` binds state names to the ``Variable`` objects that hold their storage; it is
    not part of the text form. ``print(g)`` shows the text form, ``lamina.ir.parse`` reads it.
    """

    def __init__(self, name: str, inputs: list[Param], state: list[Param], nodes: list[Node],
                 outputs: list[Value], updates: dict[str, Value] | None = None,
                 variables: dict | None = None):
        self.name = name
        self.inputs = list(inputs)
        self.state = list(state)
        self.nodes = list(nodes)
        self.outputs = list(outputs)
        self.updates = dict(updates or {})
        self.variables = dict(variables or {})

    def replace(self, **changes) -> Graph:
        """A copy with some fields replaced (the nodes themselves are shared)."""
        fields = {"name": self.name, "inputs": self.inputs, "state": self.state,
                  "nodes": self.nodes, "outputs": self.outputs, "updates": self.updates,
                  "variables": self.variables}
        fields.update(changes)
        return Graph(**fields)

    # --- queries ---------------------------------------------------------------------------

    @property
    def params(self) -> list[Param]:
        return self.inputs + self.state

    def state_param(self, name: str) -> Param:
        for p in self.state:
            if p.name == name:
                return p
        raise KeyError(name)

    def roots(self) -> list[Value]:
        """The values the graph must compute: its outputs and its state updates."""
        return list(self.outputs) + list(self.updates.values())

    def users(self) -> dict[Value, list[Node]]:
        """For every value, the nodes that read it (in graph order)."""
        out: dict[Value, list[Node]] = {}
        for n in self.nodes:
            for v in n.inputs:
                out.setdefault(v, []).append(n)
        return out

    def live_nodes(self, roots: Iterable[Value] | None = None) -> set[Node]:
        """The nodes whose values reach ``roots`` (default: outputs and updates)."""
        return ancestors(self.roots() if roots is None else roots)

    def to_networkx(self):
        """The dataflow graph as a ``networkx.DiGraph`` (edges from producer to consumer)."""
        import networkx as nx

        g = nx.DiGraph()
        for p in self.params:
            g.add_node(p, label=f"%{p.name}")
        for n in self.nodes:
            g.add_node(n, label=n.op)
            for v in n.inputs:
                g.add_edge(v, n)
        return g

    def __len__(self) -> int:
        return len(self.nodes)

    def __str__(self) -> str:
        from lamina.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.state)} state, " \
               f"{len(self.nodes)} nodes>"
