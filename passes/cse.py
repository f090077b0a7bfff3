"""Common-subexpression elimination: one node per distinct (op, operands, attributes, type).

Every lamina op is pure (random ops too: same key and stream, same numbers), so equal keys mean
equal values.
"""

from __future__ import annotations

from collections import Counter

from lamina.ir.graph import Graph, attrs_key
from lamina.ir.ops.registry import get as get_op
from lamina.passes.manager import remark
from lamina.passes.rewrite import copy_node, rewrite


def eliminate_common_subexpressions(g: Graph) -> Graph:
    seen: dict = {}
    merged: Counter = Counter()

    def rule(b, node, ins):
        operands = tuple(id(v) for v in ins)
        if get_op(node.op).commutative:
            operands = tuple(sorted(operands))
        key = (node.op, operands, attrs_key(node.attrs), node.type, id(node.region))
        prior = seen.get(key)
        if prior is not None:
            merged[node.op] += 1
            return prior
        seen[key] = copy_node(b, node, ins)
        return seen[key]

    new = rewrite(g, rule)
    for op, k in sorted(merged.items()):
        remark(f"merged {k} duplicate {op} node(s)")
    return new


eliminate_common_subexpressions.pass_name = "cse"
