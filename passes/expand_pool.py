"""Expand pooling (``max_pool``, ``avg_pool`` and their gradients ``max_pool_grad``,
``avg_pool_grad``: ops of kind ``window``) into slices, pads and ``where`` chains, using each
op's ``decompose``: for backends without pooling kernels of their own (triton today) and for
the random-program checker's float64 oracle. The llvm backend computes them in loop kernels
(``backends/llvm/pooling.py``) and leaves this pass out."""

from __future__ import annotations

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph
from lamina.ir.ops.registry import get as get_op
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite


def _expand(b, node, ins):
    opdef = get_op(node.op)
    if opdef.kind != "window":
        return None
    value = b.lift(opdef.decompose(*[b.var(v) for v in ins], **node.attrs))
    if value.type != node.type:
        raise LaminaError(f"decomposition of {node.op} gives {value.type}, not {node.type} "
                          "(a bug in its declaration)", node.loc)
    return value


def expand_pool(g: Graph, only: frozenset | None = None) -> Graph:
    """Replace every pooling node (of the ops in ``only``, if given) by its decomposition.

    >>> import numpy as np, lamina as lm
    >>> g = lm.trace(lambda x: lm.max_pool(x, 2), np.ones((1, 1, 4, 4), np.float32))
    >>> [n.op for n in g.nodes]
    ['max_pool']
    >>> sorted({n.op for n in expand_pool(g).nodes})
    ['gt', 'logical_or', 'ne', 'slice', 'where']
    """
    found = [n.op for n in g.nodes if get_op(n.op).kind == "window" and
             (only is None or n.op in only)]
    if not found:
        return g
    for name in sorted(set(found)):
        remark(f"expanded {found.count(name)} {name}")
    return rewrite(g, lambda b, node, ins: _expand(b, node, ins)
                   if only is None or node.op in only else None)
