"""The verifier: checks the invariants every pass must keep.

SSA (each value defined once, before its uses), known ops with the right arity, canonical
attributes, result types equal to what the type rules give, outputs and state updates that
refer to defined values of the right type. The pass manager runs it between passes in debug mode.
"""

from __future__ import annotations

import re

from lamina.ir.errors import LaminaError, VerifyError
from lamina.ir.graph import Graph, Node, Param, attrs_key
from lamina.ir.ops.registry import REGISTRY
from lamina.ir.printer import Namer, format_node
from lamina.ir.types import TupleType

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*")  # never a node number like %3


def verify(graph: Graph, *, allow_grad: bool = True, allow_composite: bool = True) -> Graph:
    """Raise VerifyError on the first broken invariant; return the graph otherwise.

    ``allow_grad=False`` also rejects unexpanded ``grad`` nodes (after autodiff);
    ``allow_composite=False`` rejects composites (after decomposition, what backends expect).
    """
    name = Namer(graph)
    defined: set = set()

    def fail(msg, node=None):
        where = f"\n  in: {format_node(node, name)}" if node is not None else ""
        return VerifyError(f"@{graph.name}: {msg}{where}", node.loc if node else None)

    seen_names = set()
    for p in graph.params:
        if not isinstance(p, Param) or not _NAME.fullmatch(p.name):
            raise fail(f"bad parameter name {getattr(p, 'name', p)!r}")
        if p.name in seen_names:
            raise fail(f"parameter %{p.name} is declared twice")
        seen_names.add(p.name)
        defined.add(p)

    for n in graph.nodes:
        if not isinstance(n, Node):
            raise fail(f"{n!r} in the node list is not a Node")
        if n in defined:
            raise fail("a node appears twice", n)
        opdef = REGISTRY.get(n.op)
        if opdef is None:
            raise fail(f"unknown op {n.op!r}", n)
        if not allow_grad and n.op == "grad":
            raise fail("grad node left after autodiff", n)
        if not allow_composite and opdef.kind == "composite":
            raise fail(f"composite op {n.op} left after decomposition", n)
        if n.region is not None:
            if n.op == "kernel" and any(m.region is not None for m in n.region.nodes):
                raise fail("a kernel or a loop inside a kernel", n)
            try:  # a loop body may hold grad requests until autodiff expands them
                verify(n.region, allow_grad=allow_grad and opdef.kind == "loop",
                       allow_composite=allow_composite)
            except VerifyError as e:
                raise fail(f"in the region of @{n.attrs.get('name')}: {e.message}", n) from None
        for v in n.inputs:
            if v not in defined:
                raise fail(f"operand {name(v)} is used before it is defined", n)
        if opdef.arity is not None and len(n.inputs) != opdef.arity:
            raise fail(f"{n.op} takes {opdef.arity} inputs, has {len(n.inputs)}", n)
        types = [v.type for v in n.inputs]
        try:
            attrs = opdef.normalize_attrs(types, n.attrs)
            if opdef.region:
                inferred = opdef.infer(types, attrs, n.region)
            elif n.region is not None:
                raise VerifyError(f"{n.op} does not take a region")
            else:
                inferred = opdef.infer(types, attrs)
        except LaminaError as e:
            raise fail(e.message, n) from None
        if attrs_key(attrs) != attrs_key(n.attrs):
            raise fail(f"attributes are not canonical: {n.attrs} (expected {attrs})", n)
        if inferred != n.type:
            raise fail(f"result type {n.type} differs from the type rule's {inferred}", n)
        defined.add(n)

    for v in graph.outputs:
        if v not in defined:
            raise fail(f"output {name(v)} is not defined in the graph")
        if isinstance(v.type, TupleType):
            raise fail(f"output {name(v)} is a tuple {v.type}: return its parts (get)")
    state = {p.name: p for p in graph.state}
    for key, v in graph.updates.items():
        if key not in state:
            raise fail(f"update of %{key}, which is not state")
        if v not in defined:
            raise fail(f"update of %{key} uses an undefined value")
        if v.type != state[key].type:
            raise fail(f"update of %{key}: {v.type} does not match the state's {state[key].type}")
    return graph
