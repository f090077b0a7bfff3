"""Constant folding through the reference interpreter: a node whose operands are all constants
becomes a constant, when the result is a splat (one repeated value, any size) or small."""

from __future__ import annotations

from collections import Counter

import numpy as np

from lamina.ir.graph import Graph, Node
from lamina.ir.interpret import eval_node
from lamina.ir.ops.registry import get as get_op
from lamina.ir.ops.source import constant_array, is_splat
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite

MAX_INPUT_ELEMENTS = 4096  # materialize at most this many elements per operand to fold
MAX_LITERAL_ELEMENTS = 16  # a folded non-splat result is written into the IR text


def _splat_preserving(opdef) -> bool:
    """Ops that map splat operands to a splat result (computed on one element)."""
    return opdef.kind == "elementwise" or opdef.name in ("reshape", "transpose", "broadcast",
                                                         "slice")


def _all_same_bits(flat: np.ndarray) -> bool:
    bits = flat.view(f"u{flat.dtype.itemsize}") if flat.dtype.kind != "b" else flat
    return bool((bits == bits[0]).all())


def _value(v: Node) -> np.ndarray:
    return constant_array(v.attrs["value"], v.dtype, v.shape)


def fold_constants(g: Graph) -> Graph:
    folded: Counter = Counter()

    def rule(b, n, ins):
        opdef = get_op(n.op)
        if opdef.kind in ("source", "random", "special", "loop") or not ins:
            return None
        if not all(isinstance(v, Node) and v.op == "constant" for v in ins):
            return None
        if all(is_splat(v) for v in ins) and _splat_preserving(opdef):
            if opdef.kind == "elementwise":
                scalars = [np.asarray(v.attrs["value"], v.dtype.np) for v in ins]
                with np.errstate(all="ignore"):
                    value = np.asarray(opdef.ref(*scalars, **n.attrs)).astype(n.dtype.np)
                value = value.item()
            else:
                value = ins[0].attrs["value"]
            folded[n.op] += 1
            return b.constant(value, n.dtype, n.shape)
        if any(v.type.size > MAX_INPUT_ELEMENTS for v in ins):
            return None
        arr = eval_node(n, [_value(v) for v in ins])
        flat = arr.reshape(-1)
        if flat.size and _all_same_bits(flat):  # a splat: -0.0 and 0.0 differ here
            folded[n.op] += 1
            return b.constant(flat[0].item(), n.dtype, n.shape)
        if arr.size <= MAX_LITERAL_ELEMENTS:
            folded[n.op] += 1
            return b.constant(arr, n.dtype, n.shape)
        return None

    new = rewrite(g, rule)
    for op, k in sorted(folded.items()):
        remark(f"folded {k} {op} node(s) into constants")
    return new
