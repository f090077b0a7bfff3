"""Expand composite ops (gelu, softmax, mean, ...) into primitives, using each op's
``decompose``; runs before autodiff so gradient rules exist only for primitives."""

from __future__ import annotations

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph
from lamina.ir.ops.registry import get as get_op
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite


def _expand(b, node, ins):
    opdef = get_op(node.op)
    if opdef.kind != "composite":
        return None
    out = opdef.decompose(*[b.var(v) for v in ins], **node.attrs)
    value = b.lift(out)
    if value.type != node.type:
        raise LaminaError(f"decomposition of {node.op} gives {value.type}, not {node.type} "
                          "(a bug in its declaration)", node.loc)
    return value


def decompose(g: Graph) -> Graph:
    """Replace every composite node by its decomposition (until none is left)."""
    for _ in range(8):  # a decomposition may use other composites
        composites = [n.op for n in g.nodes if get_op(n.op).kind == "composite"]
        if not composites:
            return g
        for name in sorted(set(composites)):
            remark(f"expanded {composites.count(name)} {name}")
        g = rewrite(g, _expand)
    raise LaminaError("decompose: composites still left after 8 rounds (a cycle?)")
