"""Fused scaled-dot-product attention: ``attention`` and its gradient ``attention_grad``.

    attention(q [*B, L, E], k [*B, S, E], v [*B, S, Ev] [, bias]) {causal, scale} : [*B, L, Ev]

is ``softmax(q @ k.T * scale + bias, over the keys) @ v`` with PyTorch's conventions: ``bias``
(optional, the query's dtype) broadcasts to the scores ``[*B, L, S]`` (a key-padding or boolean
mask arrives as a bias of 0 and -inf), ``causal`` keeps key j for query i when j <= i (the
top-left aligned lower triangle) and a query whose keys are all masked out gets 0 (not NaN),
as the composite ``nn.functional.scaled_dot_product_attention`` and PyTorch do. q, k and v
have the same batch axes ``*B`` (the frontend broadcasts them).

Both ops are primitives of the ``attention`` kind so that a backend can run each as one
flash-style kernel whose [L, S] score matrix never reaches memory (``backends/llvm/
attention.py``); backends without such a kernel expand them with ``decompose`` into matmul,
max, exp, sum and where (``passes/expand.py``). The gradient is one op because the three
cotangents share all of the work (the probabilities are recomputed block by block):

    attention_grad(q, k, v, out, g [, bias]) {causal, scale} : [B*L*E + B*S*E + B*S*Ev]

holds dq, dk and dv, each flattened whole (B = the product of the batch axes), one after
another (one node has one result; the vjp of ``attention`` slices them apart). Each gradient
is one contiguous range, so a backend can hand it out as a view of the packed buffer without
a copy (the llvm program's output views). A bias gradient (rare: masks are constants) is
built from primitives by the vjp and left to DCE when nothing needs it. Gradients of
``attention_grad`` itself (second order) go through its decomposition (``passes/autodiff``).
"""

from __future__ import annotations

import math

import numpy as np

from lamina.ir.builder import op
from lamina.ir.errors import LaminaError, ShapeError
from lamina.ir.ops.domain import Domain, Operand
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import _kinds, same_dtype
from lamina.ir.types import TensorType, broadcast_shapes

# --- types ------------------------------------------------------------------------------------


def _canon(types, attrs):
    attrs["causal"] = bool(attrs.get("causal", False))
    scale = attrs.get("scale")
    if scale is None and types and types[0].ndim:
        e = types[0].shape[-1]
        scale = 1.0 / math.sqrt(e) if e else 1.0
    if isinstance(scale, bool) or not isinstance(scale, (int, float, np.floating, np.integer)):
        raise ValueError(f"scale must be a number, got {scale!r}")
    attrs["scale"] = float(scale)
    return attrs


def check_operands(name: str, q: TensorType, k: TensorType, v: TensorType,
                   bias: TensorType | None) -> None:
    """Shapes and dtypes of the attention operands (a clear error naming the problem)."""
    for what, t in (("query", q), ("key", k), ("value", v)):
        _kinds(name, t, "f")
        if t.ndim < 2:
            raise ShapeError(f"{name}: {what} must have at least 2 axes ([..., length, "
                             f"features]), got {t}")
    same_dtype(name, [q, k, v] + ([bias] if bias is not None else []))
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        raise ShapeError(f"{name}: query {q}, key {k} and value {v} must have the same batch "
                         "axes (all but the last two)")
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"{name}: query {q} and key {k} must have the same feature size")
    if v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"{name}: key {k} and value {v} must have the same length (axis -2)")
    if bias is not None:
        scores = q.shape[:-1] + (k.shape[-2],)
        try:
            ok = broadcast_shapes(bias.shape, scores) == scores
        except Exception:  # noqa: BLE001 (ShapeError from broadcast_shapes)
            ok = False
        if not ok:
            raise ShapeError(f"{name}: bias {bias} does not broadcast to the scores' shape "
                             f"{list(scores)}")


def _split(name: str, types, n_fixed: int):
    if len(types) not in (n_fixed, n_fixed + 1):
        raise LaminaError(f"{name} takes {n_fixed} or {n_fixed + 1} inputs (the last one an "
                          f"optional bias), got {len(types)}")
    return types[:n_fixed], (types[n_fixed] if len(types) > n_fixed else None)


def _attention_infer(types, attrs):
    (q, k, v), bias = _split("attention", types, 3)
    check_operands("attention", q, k, v, bias)
    return TensorType(q.shape[:-1] + (v.shape[-1],), q.dtype)


def grad_sizes(q_shape, k_shape, v_shape) -> tuple[int, int, int]:
    """The lengths of one batch-head's dq, dk and dv (``attention_grad`` holds all of dq, then
    all of dk, then all of dv: ``math.prod(q_shape[:-2])`` times each)."""
    return (q_shape[-2] * q_shape[-1], k_shape[-2] * k_shape[-1], v_shape[-2] * v_shape[-1])


def _grad_infer(types, attrs):
    (q, k, v, out, g), bias = _split("attention_grad", types, 5)
    check_operands("attention_grad", q, k, v, bias)
    want = q.shape[:-1] + (v.shape[-1],)
    for what, t in (("out", out), ("g", g)):
        if t.shape != want or t.dtype is not q.dtype:
            raise ShapeError(f"attention_grad: {what} {t} must be the attention's result "
                             f"{TensorType(want, q.dtype)}")
    batch = math.prod(q.shape[:-2])
    return TensorType((batch * sum(grad_sizes(q.shape, k.shape, v.shape)),), q.dtype)


# --- numpy reference --------------------------------------------------------------------------


def _swap(x):
    return np.swapaxes(x, -1, -2)


def _probabilities(q, k, bias, causal, scale):
    """The attention weights [*B, L, S] (rows with no key left are 0)."""
    s = np.matmul(q, _swap(k)) * np.asarray(scale, q.dtype)
    if bias is not None:
        s = s + bias
    if causal:
        L, S = q.shape[-2], k.shape[-2]
        s = np.where(np.tril(np.ones((L, S), bool)), s, np.asarray(-np.inf, q.dtype))
    if s.shape[-1] == 0:
        return s
    m = s.max(axis=-1, keepdims=True)
    m = np.where(m == -np.inf, np.asarray(0, q.dtype), m)
    e = np.exp(s - m)
    d = e.sum(axis=-1, keepdims=True)
    return e / np.where(d == 0, np.asarray(1, q.dtype), d)


def _attention_ref(q, k, v, bias=None, *, causal, scale):
    with np.errstate(invalid="ignore", over="ignore"):
        return np.matmul(_probabilities(q, k, bias, causal, scale), v)


def _grad_ref(q, k, v, out, g, bias=None, *, causal, scale):
    with np.errstate(invalid="ignore", over="ignore"):
        p = _probabilities(q, k, bias, causal, scale)
        dv = np.matmul(_swap(p), g)
        dp = np.matmul(g, _swap(v))
        ds = p * (dp - (g * out).sum(axis=-1, keepdims=True))
        sc = np.asarray(scale, q.dtype)
        dq = np.matmul(ds, k) * sc
        dk = np.matmul(_swap(ds), q) * sc
    return np.concatenate([x.reshape(-1) for x in (dq, dk, dv)])


# --- decompositions (builder Vars) ------------------------------------------------------------


def _vswap(x):
    n = x.ndim
    return x.transpose(*range(n - 2), n - 1, n - 2)


def probabilities(q, k, bias, causal, scale):
    """:func:`_probabilities` in lamina ops (the composite attention's weights)."""
    b = q.builder
    s = (q @ _vswap(k)) * scale
    if bias is not None:
        s = s + bias
    neg_inf = b.var(b.lift(-np.inf, s.dtype))
    L, S = q.shape[-2], k.shape[-2]
    if causal:
        s = op.where(b.var(b.lift(np.tril(np.ones((L, S), bool)))), s, neg_inf)
    if S == 0:
        return s
    m = op.stop_gradient(s.max(axis=-1, keepdims=True))
    m = op.where(m == neg_inf, b.var(b.lift(0.0, s.dtype)), m)
    e = op.exp(s - m)
    d = e.sum(axis=-1, keepdims=True)
    return e / op.where(d == b.var(b.lift(0.0, s.dtype)), b.var(b.lift(1.0, s.dtype)), d)


def _attention_decompose(q, k, v, bias=None, *, causal, scale):
    return probabilities(q, k, bias, causal, scale) @ v


def _score_grad(q, k, v, out, g, bias, causal, scale):
    """(p, ds): the weights and the cotangent of the scaled, biased scores."""
    p = probabilities(q, k, bias, causal, scale)
    dp = g @ _vswap(v)
    return p, p * (dp - (g * out).sum(axis=-1, keepdims=True))


def _grad_decompose(q, k, v, out, g, bias=None, *, causal, scale):
    p, ds = _score_grad(q, k, v, out, g, bias, causal, scale)
    dq = (ds @ k) * scale
    dk = (_vswap(ds) @ q) * scale
    dv = _vswap(p) @ g
    parts = [x.reshape(math.prod(x.shape)) for x in (dq, dk, dv)]
    return op.concatenate(*parts, axis=0)


def _attention_vjp(g, out, q, k, v, bias=None, *, causal, scale):
    ins = (q, k, v, out, g) + ((bias,) if bias is not None else ())
    packed = op.attention_grad(*ins, causal=causal, scale=scale)
    grads, at = [], 0
    for x in (q, k, v):
        n = math.prod(x.shape)
        grads.append(op.slice(packed, start=(at,), stop=(at + n,), step=(1,)).reshape(*x.shape))
        at += n
    if bias is None:
        return tuple(grads)
    # the bias cotangent needs the whole score matrix: built from primitives (DCE drops it
    # when the bias is a constant mask, as it nearly always is)
    _, ds = _score_grad(q, k, v, out, g, bias, causal, scale)
    return (*grads, ds)


# --- domains for the random-program checker ---------------------------------------------------


def _attrs(g, t):
    if not 2 <= t.ndim <= 4:
        return None
    e = t.shape[-1]
    scale = float(g.rng.choice([0.5, 1.0, 0.25])) if g.rng.random() < 0.4 else \
        (1.0 / math.sqrt(e) if e else 1.0)
    return {"causal": bool(g.rng.random() < 0.5), "scale": scale}


def _rest(g, t, attrs):
    lead, e = t.shape[:-2], t.shape[-1]
    s = g.dim()
    ops = [Operand("f", shape=lead + (s, e)), Operand("f", shape=lead + (s, g.dim()))]
    if not attrs["causal"] and g.rng.random() < 0.4:
        scores = t.shape[:-1] + (s,)
        shape = tuple(1 if g.rng.random() < 0.4 else d for d in scores)
        ops.append(Operand("f", shape=shape[int(g.rng.integers(0, 2)):]))
    return ops


def _grad_rest(g, t, attrs):
    return []


# exp and the division add a few ulps per weight; the products' rounding is the matmuls'
_ATTENTION_DOMAIN = Domain(Operand("f", ranks=(2, 3, 4)), _rest, _attrs, ulps=4.0)

defop("attention", arity=None, kind="attention", attrs=("causal", "scale"), canon=_canon,
      infer=_attention_infer, ref=_attention_ref, vjp=_attention_vjp, promote="all",
      decompose=_attention_decompose, float_only=True, domain=_ATTENTION_DOMAIN,
      doc="softmax(q @ k.T * scale + bias) @ v over the keys, causal or not (fused)")

defop("attention_grad", arity=None, kind="attention", attrs=("causal", "scale"), canon=_canon,
      infer=_grad_infer, ref=_grad_ref, decompose=_grad_decompose, float_only=True, promote="all",
      domain=Domain(None, via="lm.grad of attention", ulps=4.0),
      doc="dq, dk and dv of attention, each flattened whole, one after another")
