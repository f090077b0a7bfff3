"""Expand the fused ``attention`` ops into primitives (matmul, max, exp, sum, where) with their
``decompose``, for backends without a kernel of their own for them (llvm and triton both have
flash-style kernels now: ``backends/llvm/attention.py``, ``backends/triton/attention.py``).
Runs after the default pipeline, before fusion, like ``expand_conv``."""

from __future__ import annotations

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph
from lamina.ir.ops.registry import get as get_op
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite


def expand_attention(g: Graph) -> Graph:
    """Replace every node of the ``attention`` kind by its decomposition."""
    count = 0

    def rule(b, n, ins):
        nonlocal count
        opdef = get_op(n.op)
        if opdef.kind != "attention":
            return None
        count += 1
        b.loc = n.loc
        value = b.lift(opdef.decompose(*[b.var(v) for v in ins], **n.attrs))
        if value.type != n.type:
            raise LaminaError(f"decomposition of {n.op} gives {value.type}, not {n.type} "
                              "(a bug in its declaration)", n.loc)
        return value

    if not any(get_op(n.op).kind == "attention" for n in g.nodes):
        return g
    g = rewrite(g, rule)
    remark(f"expanded {count} attention node(s) into matmul, softmax and where")
    return g
