"""Canonicalization and algebraic simplification: local rewrites, one named rule each.

A rule sees a node (with its operands already rewritten) and returns a replacement value or
None. Rules only fire when the replacement has exactly the node's type, so broadcasting and
dtypes are never changed by a simplification.
"""

from __future__ import annotations

import math
from collections import Counter

from lamina.ir.graph import Graph, Node
from lamina.ir.ops.source import is_splat
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite


def _splat(v):
    """The repeated value of a splat constant, else None."""
    return v.attrs["value"] if is_splat(v) else None


def _same(n, v):
    """``v`` if it can stand for node ``n`` unchanged (same type), else None."""
    return v if v.type == n.type else None


# --- rules (each: one rewrite, named by what it does) -----------------------------------------


def no_op_shape(b, n, ins):
    # reshape/broadcast/cast/slice/pad/transpose that changes nothing -> x
    x = ins[0]
    if n.op == "transpose" and n.attrs["perm"] != tuple(range(x.type.ndim)):
        return None
    if n.op == "slice" and not (n.attrs["start"] == (0,) * x.type.ndim
                                and n.attrs["stop"] == x.shape
                                and all(s == 1 for s in n.attrs["step"])):
        return None
    if n.op == "pad" and any(n.attrs["lo"] + n.attrs["hi"] + n.attrs["interior"]):
        return None
    if n.op == "sum" and n.attrs["axis"]:
        return None
    return _same(n, x)


def reshape_of_reshape(b, n, ins):
    # reshape(reshape(x)) -> reshape(x)
    x = ins[0]
    if isinstance(x, Node) and x.op == "reshape":
        return b.emit("reshape", (x.inputs[0],), {"shape": n.attrs["shape"]})
    return None


def reshape_of_kept_sum(b, n, ins):
    # reshape(sum(x, keepdims=true)) that only drops the reduced axes -> sum(x, keepdims=false)
    x = ins[0]
    if not (isinstance(x, Node) and x.op == "sum" and x.attrs["keepdims"]):
        return None
    axes = x.attrs["axis"]
    dropped = tuple(d for i, d in enumerate(x.shape) if i not in axes)
    if n.attrs["shape"] != dropped:
        return None
    return b.emit("sum", (x.inputs[0],), {"axis": axes, "keepdims": False})


def sum_of_batched_matmul(b, n, ins, users=None):
    # sum(matmul(A, B), axis=0) of T products [M, K] x [K, N] -> one [M, T*K] x [T*K, N]
    # product (A's and B's steps side by side along the contraction: T times fewer GEMMs)
    x = ins[0]
    if not (isinstance(x, Node) and x.op == "matmul" and n.attrs["axis"] == (0,)
            and not n.attrs["keepdims"] and x.dtype.is_float):
        return None
    a, c = x.inputs
    if a.type.ndim != 3 or c.type.ndim != 3 or a.shape[0] != c.shape[0] or a.shape[0] < 2:
        return None
    if users is not None and len(users.get(n.inputs[0], ())) != 1:
        return None  # the products are read elsewhere too: keep them
    t, m, k = a.shape
    at = b.emit("transpose", (a,), {"perm": (1, 0, 2)})
    a2 = b.emit("reshape", (at,), {"shape": (m, t * k)})
    c2 = b.emit("reshape", (c,), {"shape": (t * k, c.shape[2])})
    return _same(n, b.emit("matmul", (a2, c2), {}))


sum_of_batched_matmul.needs_users = True


def transpose_of_transpose(b, n, ins):
    # transpose(transpose(x, p), q) -> transpose(x, p[q])
    x = ins[0]
    if isinstance(x, Node) and x.op == "transpose":
        p, q = x.attrs["perm"], n.attrs["perm"]
        return b.emit("transpose", (x.inputs[0],), {"perm": tuple(p[i] for i in q)})
    return None


def transpose_of_matmul(b, n, ins, users=None):
    # transpose(a @ b) with the last two axes swapped -> b^T @ a^T (each operand's last two
    # axes swapped): the product is written in the order it is read (a weight's gradient,
    # (x^T @ dy)^T, becomes dy^T @ x, whose elementwise users can fuse into the GEMM)
    x = ins[0]
    if not (isinstance(x, Node) and x.op == "matmul"):
        return None
    r = x.type.ndim  # matmul's operands have two axes or more
    if n.attrs["perm"] != (*range(r - 2), r - 1, r - 2):
        return None
    if users is not None and len(users.get(n.inputs[0], ())) != 1:
        return None  # the product is read as it is elsewhere too: keep it

    def swapped(v):
        k = v.type.ndim
        return b.emit("transpose", (v,), {"perm": (*range(k - 2), k - 1, k - 2)})

    return _same(n, b.emit("matmul", (swapped(x.inputs[1]), swapped(x.inputs[0])), {}))


transpose_of_matmul.needs_users = True


def _is_additive_identity(v, other) -> bool:
    # -0.0 for floats (x + 0.0 turns x = -0.0 into +0.0), any zero for integers
    z = _splat(v)
    if z is None or z != 0:
        return False
    return not other.dtype.is_float or math.copysign(1.0, z) < 0


def add_zero(b, n, ins):
    # x + (-0.0) -> x ; (-0.0) + x -> x  (x + 0 -> x for integers)
    x, y = ins
    if _is_additive_identity(y, x):
        return _same(n, x)
    if _is_additive_identity(x, y):
        return _same(n, y)
    return None


def _pad_span(v):
    """(axis, start, x) of ``pad(x)`` padded along one axis only, without interior padding."""
    if not (isinstance(v, Node) and v.op == "pad") or any(v.attrs["interior"]):
        return None
    lo, hi = v.attrs["lo"], v.attrs["hi"]
    axes = [i for i in range(len(lo)) if lo[i] or hi[i]]
    if len(axes) != 1:
        return None
    return axes[0], lo[axes[0]], v.inputs[0]


def add_of_adjacent_pads(b, n, ins):
    # pad(a) + pad(c), zero-padded along one axis to side-by-side places ->
    # pad(concatenate(a, c)): a slice's gradient is a pad, and the gradients of adjacent slices
    # (an LSTM's four gates) add up to one concatenation instead of a sum of padded copies
    # (the zero added to each element changes nothing but the sign of a zero)
    p, q = _pad_span(ins[0]), _pad_span(ins[1])
    if p is None or q is None or p[0] != q[0] or ins[0].shape != ins[1].shape:
        return None
    ax = p[0]
    if p[1] > q[1]:
        p, q = q, p
    if p[1] + p[2].shape[ax] != q[1] or p[2].dtype is not q[2].dtype:
        return None
    joined = b.emit("concatenate", (p[2], q[2]), {"axis": ax})
    size = n.shape[ax]
    lo = [0] * len(n.shape)
    hi = [0] * len(n.shape)
    lo[ax] = p[1]
    hi[ax] = size - p[1] - joined.shape[ax]
    if not any(lo + hi):
        return _same(n, joined)
    return _same(n, b.emit("pad", (joined,), {"lo": tuple(lo), "hi": tuple(hi),
                                              "interior": (0,) * len(lo)}))


def concatenate_of_concatenate(b, n, ins):
    # concatenate(concatenate(a, b), c) along one axis -> concatenate(a, b, c)
    ax = n.attrs["axis"]
    if not any(isinstance(v, Node) and v.op == "concatenate" and v.attrs["axis"] == ax
               for v in ins):
        return None
    flat = []
    for v in ins:
        if isinstance(v, Node) and v.op == "concatenate" and v.attrs["axis"] == ax:
            flat.extend(v.inputs)
        else:
            flat.append(v)
    if any(v.dtype is not n.dtype for v in flat):
        return None
    return _same(n, b.emit("concatenate", flat, {"axis": ax}))


def sub_zero(b, n, ins):
    # x - 0 -> x  (exact in IEEE arithmetic for +0.0, and -0.0 - 0.0 = -0.0)
    return _same(n, ins[0]) if _splat(ins[1]) == 0 else None


def mul_one(b, n, ins):
    # x * 1 -> x ; 1 * x -> x
    x, y = ins
    if _splat(y) == 1:
        return _same(n, x)
    if _splat(x) == 1:
        return _same(n, y)
    return None


def mul_minus_one(b, n, ins):
    # x * -1 -> -x
    x, y = ins
    if _splat(y) == -1 and x.type == n.type:
        return b.emit("neg", (x,))
    if _splat(x) == -1 and y.type == n.type:
        return b.emit("neg", (y,))
    return None


def div_one(b, n, ins):
    # x / 1 -> x
    return _same(n, ins[0]) if _splat(ins[1]) == 1 else None


def div_by_broadcast(b, n, ins):
    # x / y -> x * (1 / y) when y is broadcast (fewer elements than x): one division per y,
    # not per element (XLA does the same; the result may differ from x / y in the last bit)
    x, y = ins
    if not n.dtype.is_float or y.type.size >= x.type.size or _splat(y) is not None:
        return None
    if n.type != x.type:
        return None
    one = b.constant(1.0, y.dtype)
    return b.emit("mul", (x, b.emit("div", (one, y))))


def neg_neg(b, n, ins):
    # -(-x) -> x
    x = ins[0]
    if isinstance(x, Node) and x.op == "neg":
        return _same(n, x.inputs[0])
    return None


def pow_constant(b, n, ins):
    # x**1 -> x ; x**2 -> x*x ; x**0.5 -> sqrt(x) ; x**-0.5 -> rsqrt(x)
    x, y = ins
    k = _splat(y)
    if k is None or x.type != n.type:
        return None
    if k == 1:
        return x
    if k == 2:
        return b.emit("mul", (x, x))
    if k == 0.5:
        return b.emit("sqrt", (x,))
    if k == -0.5:
        return b.emit("rsqrt", (x,))
    return None


def where_same(b, n, ins):
    # where(c, x, x) -> x
    _, x, y = ins
    return _same(n, x) if x is y else None


def drop_identity(b, n, ins):
    # alias(x), stop_gradient(x) -> x (only once no grad node is left)
    return _same(n, ins[0])


simplify_rules = {
    "reshape": [no_op_shape, reshape_of_reshape, reshape_of_kept_sum],
    "broadcast": [no_op_shape],
    "cast": [no_op_shape],
    "slice": [no_op_shape],
    "pad": [no_op_shape],
    "sum": [no_op_shape, sum_of_batched_matmul],
    "transpose": [no_op_shape, transpose_of_transpose, transpose_of_matmul],
    "add": [add_zero, add_of_adjacent_pads],
    "sub": [sub_zero],
    "mul": [mul_one, mul_minus_one],
    "div": [div_one, div_by_broadcast],
    "neg": [neg_neg],
    "pow": [pow_constant],
    "where": [where_same],
    "concatenate": [concatenate_of_concatenate],
}


def simplify(g: Graph) -> Graph:
    """Apply ``simplify_rules`` once over the graph, in order."""
    has_grad = any(n.op == "grad" for n in g.nodes)
    fired: Counter = Counter()
    # the live readers of each value of the graph before this pass (a rule asks about its
    # node's operands there: n.inputs, not their rewritten forms)
    live = g.live_nodes()
    users: dict = {}
    for m in g.nodes:
        if m in live:
            for v in m.inputs:
                users.setdefault(v, []).append(m)
    for v in g.roots():  # an output or a state update reads its value too
        users.setdefault(v, []).append(None)

    def once(b, n, ins):
        rules = list(simplify_rules.get(n.op, ()))
        if n.op in ("alias", "stop_gradient") and not has_grad:
            rules.append(drop_identity)
        for r in rules:
            out = r(b, n, ins, users) if getattr(r, "needs_users", False) else r(b, n, ins)
            if out is not None:
                fired[r.__name__] += 1
                return out
        return None

    def rule(b, n, ins):
        out = once(b, n, ins)
        # A node a rule just emitted may simplify further (reshape of reshape -> identity);
        # what it replaces is left dead for DCE.
        for _ in range(8):
            if out is None or not (b.nodes and b.nodes[-1] is out):
                break
            again = once(b, out, list(out.inputs))
            if again is None:
                break
            out = again
        return out

    new = rewrite(g, rule)
    for name, k in sorted(fired.items()):
        remark(f"{name}: {k}")
    return new
