"""Attention: ``nn.functional.scaled_dot_product_attention`` and ``nn.MultiheadAttention``,
with PyTorch's semantics, written from existing lamina ops (matmul, max, exp, sum, where).

The attention weights of one query row are ``softmax(q @ k.T * scale + bias)`` over the keys;
``_weights`` is the one place that spells them. It is the usual stable softmax with one
difference: a row where every key is masked out (all scores -inf) gets weights 0, so its output
is 0 and no NaN reaches the gradients. PyTorch's ``scaled_dot_product_attention`` gives the same
0 rows, as does its ``MultiheadAttention`` with ``need_weights=False`` in training; its
``need_weights=True`` and inference fast paths give NaN rows there.

Where the weights themselves are not needed (no dropout, no ``need_weights``), ``_fused`` emits
the one ``attention`` op instead (``ir/ops/attention.py``: same semantics, masks as an additive
bias of 0/-inf, a causal mask as ``causal=True``), which the llvm backend runs as a flash-style
kernel: the [L, S] scores never reach memory, and causal blocks above the diagonal are skipped.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend import ops
from lamina.frontend.nn import init
from lamina.frontend.nn.module import Module
from lamina.frontend.ops import run
from lamina.frontend.parameter import Parameter
from lamina.frontend.trace import user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Var
from lamina.ir.builder import matmul as _matmul
from lamina.ir.errors import DTypeError, LaminaError, ShapeError

_SDPA = "scaled_dot_product_attention"


def _check_float(what: str, name: str, x: Var, dtype=None):
    if not x.dtype.is_float:
        raise DTypeError(f"{what}: {name} must be a float tensor, got {x.type}", user_loc())
    if dtype is not None and x.dtype != dtype:
        raise DTypeError(f"{what}: {name} {x.type} must have the query's dtype {dtype}",
                         user_loc())


def _repeat_heads(b, x: Var, heads: int, what: str, name: str) -> Var:
    """``x`` [..., Hk, S, E] with each head repeated to ``heads`` heads (grouped-query
    attention: ``repeat_interleave`` along axis -3)."""
    if x.ndim < 3:
        raise ShapeError(f"{what}: enable_gqa needs a heads axis (-3); {name} is {x.type}",
                         user_loc())
    hk = x.shape[-3]
    if heads % hk:
        raise ShapeError(f"{what}: enable_gqa: the query's {heads} heads are not a multiple of "
                         f"the {name}'s {hk} heads", user_loc())
    g = heads // hk
    if g == 1:
        return x
    lead, (s, e) = x.shape[:-3], x.shape[-2:]
    return x.reshape(lead + (hk, 1, s, e)).broadcast_to(lead + (hk, g, s, e)) \
        .reshape(lead + (hk * g, s, e))


def _check(b, q: Var, k: Var, v: Var, enable_gqa: bool, what: str):
    """Check the operands (shapes, dtypes, grouped heads); the key with its heads repeated."""
    for name, x in (("query", q), ("key", k), ("value", v)):
        _check_float(what, name, x, q.dtype)
        if x.ndim < 2:
            raise ShapeError(f"{what}: {name} must have at least 2 axes ([..., length, "
                             f"features]), got {x.type}", user_loc())
    if k.shape[-1] != q.shape[-1]:
        raise ShapeError(f"{what}: query {q.type} and key {k.type} must have the same feature "
                         "size (last axis)", user_loc())
    if v.shape[-2] != k.shape[-2]:
        raise ShapeError(f"{what}: key {k.type} and value {v.type} must have the same length "
                         "(axis -2)", user_loc())
    if enable_gqa:
        if q.ndim < 3:
            raise ShapeError(f"{what}: enable_gqa needs a heads axis (-3); query is {q.type}",
                             user_loc())
        if v.ndim < 3 or v.shape[-3] != k.shape[-3]:
            raise ShapeError(f"{what}: enable_gqa: key {k.type} and value {v.type} must have "
                             "the same number of heads (axis -3)", user_loc())
        k = _repeat_heads(b, k, q.shape[-3], what, "key")
    v_batch = v.shape[:-3] + (q.shape[-3],) if enable_gqa else v.shape[:-2]
    try:
        np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v_batch)
    except ValueError:
        raise ShapeError(f"{what}: the batch axes of query {q.type}, key {k.type} and value "
                         f"{v.type} do not broadcast", user_loc()) from None
    return k


def _scale(q: Var, scale) -> float:
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1]) if q.shape[-1] else 1.0
    return float(scale)


def _check_mask(b, mask, q: Var, scores: tuple, what: str) -> Var:
    if not isinstance(mask, Var):
        mask = b.var(b.lift(np.asarray(mask)))
    if not (mask.dtype.is_bool or mask.dtype == q.dtype):
        raise DTypeError(f"{what}: attn_mask must be bool (True = takes part) or have the "
                         f"query's dtype {q.dtype} (added to the scores), got {mask.type}",
                         user_loc())
    try:
        ok = np.broadcast_shapes(mask.shape, scores) == tuple(scores)
    except ValueError:
        ok = False
    if not ok:
        raise ShapeError(f"{what}: attn_mask {mask.type} does not broadcast to the scores' "
                         f"shape {list(scores)} ([..., L, S])", user_loc())
    return mask


def _weights(b, q: Var, k: Var, v: Var, mask, is_causal: bool, scale, enable_gqa: bool,
             what: str = _SDPA) -> Var:
    """Check the operands; the attention weights [..., L, S] (``mask``: bool, True = takes
    part, or float, added to the scores; ``is_causal``: keep key j <= query i)."""
    k = _check(b, q, k, v, enable_gqa, what)
    L, S = q.shape[-2], k.shape[-2]
    s = _matmul(b, q, k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2)) * _scale(q, scale)
    neg_inf = b.var(b.lift(-np.inf, s.dtype))
    if is_causal:
        s = b.call("where", b.var(b.lift(np.tril(np.ones((L, S), bool)))), s, neg_inf)
    if mask is not None:
        mask = _check_mask(b, mask, q, s.shape, what)
        s = b.call("where", mask, s, neg_inf) if mask.dtype.is_bool else s + mask
    # softmax over the keys, with rows that have no key at all (max -inf) giving 0
    m = b.call("stop_gradient", s.max(axis=-1, keepdims=True))
    m = b.call("where", m == neg_inf, b.var(b.lift(0.0, s.dtype)), m)
    e = b.call("exp", s - m)
    d = e.sum(axis=-1, keepdims=True)
    return e / b.call("where", d == b.var(b.lift(0.0, s.dtype)), b.var(b.lift(1.0, s.dtype)), d)


def _fused(b, q: Var, k: Var, v: Var, bias, is_causal: bool, scale, enable_gqa: bool,
           what: str = _SDPA) -> Var:
    """The attention output [..., L, Ev] as one ``attention`` op (``bias``: as ``mask`` of
    ``_weights``; a bool mask becomes a bias of 0 and -inf)."""
    k = _check(b, q, k, v, enable_gqa, what)
    if enable_gqa:
        v = _repeat_heads(b, v, q.shape[-3], what, "value")
    L, S, E = q.shape[-2], k.shape[-2], q.shape[-1]
    lead = tuple(np.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2]))
    scores = lead + (L, S)
    if bias is not None:
        bias = _check_mask(b, bias, q, scores, what)
        if bias.dtype.is_bool:
            bias = b.call("where", bias, b.var(b.lift(0.0, q.dtype)),
                          b.var(b.lift(-np.inf, q.dtype)))
        if bias.ndim > len(scores) - 2 and all(d == 1 for d in bias.shape[:-2]):
            bias = bias.reshape(*bias.shape[-2:])  # [1, 1, L, S] -> [L, S]: read once per head
    q = q if q.shape[:-2] == lead else q.broadcast_to(lead + (L, E))
    k = k if k.shape[:-2] == lead else k.broadcast_to(lead + (S, E))
    v = v if v.shape[:-2] == lead else v.broadcast_to(lead + (S, v.shape[-1]))
    args = (q, k, v) + ((bias,) if bias is not None else ())
    return b.call("attention", *args, causal=bool(is_causal), scale=_scale(q, scale))


def causal_mask_of(mask, L: int, S: int) -> bool:
    """Is ``mask`` (bool, True = masked out, PyTorch's MultiheadAttention convention) the causal
    mask ``triu(ones(L, S), 1)``? Also for a traced mask computed from constants only (e.g.
    ``arange(t)[None, :] > arange(t)[:, None]``), which is evaluated here at trace time."""
    arr = mask if isinstance(mask, np.ndarray) else _static_value(mask)
    if arr is None or arr.dtype != np.bool_ or arr.shape != (L, S):
        return False
    return bool(np.array_equal(arr, np.triu(np.ones((L, S), bool), 1)))


def _static_value(v, limit: int = 64):
    """The value of a traced Var that depends on no input or state (sources, elementwise and
    shape ops only, at most ``limit`` nodes), else None."""
    from lamina.ir.graph import Node, ancestors
    from lamina.ir.interpret import eval_node
    from lamina.ir.ops.registry import get as get_op

    if not isinstance(v, Var) or v.size > (1 << 22):
        return None
    nodes = ancestors([v.value])
    if len(nodes) > limit or any(
            get_op(n.op).kind not in ("source", "elementwise", "shape") or n.region is not None
            or any(not isinstance(x, Node) for x in n.inputs) for n in nodes):
        return None
    values: dict = {}
    for n in sorted(nodes, key=lambda n: v.builder.nodes.index(n)):
        values[n] = eval_node(n, [values[x] for x in n.inputs])
    return values[v.value]


def _apply_weights(b, w: Var, v: Var, enable_gqa: bool) -> Var:
    if enable_gqa:
        v = _repeat_heads(b, v, w.shape[-3], _SDPA, "value")
    return _matmul(b, w, v)


def scaled_dot_product_attention(query, key, value, attn_mask=None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale=None, enable_gqa: bool = False):
    """PyTorch's ``scaled_dot_product_attention``: ``softmax(q @ k.T * scale + bias) @ v``
    for ``query`` [..., L, E], ``key`` [..., S, E], ``value`` [..., S, Ev] -> [..., L, Ev].

    ``attn_mask`` broadcasts to [..., L, S]: bool (True = the key takes part) or a float bias
    added to the scores. ``is_causal`` keeps key j for query i when j <= i (the (L, S) lower
    triangle, aligned top-left as PyTorch does); it cannot be combined with ``attn_mask``.
    ``scale`` defaults to 1/sqrt(E). ``dropout_p`` > 0 drops weights with lamina's random key
    (always, as in PyTorch: pass ``p if training else 0``). ``enable_gqa`` repeats the heads
    (axis -3) of key and value to the query's. A query with no key left gives 0 (as PyTorch).

    >>> import numpy as np, lamina as lm
    >>> q = np.ones((1, 2, 4), np.float32)
    >>> v = np.array([[[1, 2], [3, 4], [5, 6]]], np.float32)
    >>> lm.nn.functional.scaled_dot_product_attention(q, np.ones((1, 3, 4), np.float32), v,
    ...                                               is_causal=True)
    array([[[1., 2.],
            [2., 3.]]], dtype=float32)
    """
    if not 0 <= dropout_p < 1:
        raise LaminaError(f"{_SDPA}: dropout_p must be in [0, 1), got {dropout_p}", user_loc())
    if is_causal and attn_mask is not None:
        raise LaminaError(f"{_SDPA}: give attn_mask or is_causal=True, not both (fold the "
                          "causal mask into attn_mask)", user_loc())
    if dropout_p == 0:
        return run(lambda b, q, k, v, m: _fused(b, q, k, v, m, is_causal, scale, enable_gqa),
                   query, key, value, attn_mask)
    w = run(lambda b, q, k, v, m: _weights(b, q, k, v, m, is_causal, scale, enable_gqa),
            query, key, value, attn_mask)
    if dropout_p > 0:
        from lamina.frontend.nn.functional import dropout

        w = dropout(w, dropout_p)
    return run(lambda b, w, v: _apply_weights(b, w, v, enable_gqa), w, value)


# --- MultiheadAttention -----------------------------------------------------------------------

_MHA = "MultiheadAttention"


def _rows(w, start: int, stop: int):
    """``w[start:stop]`` (traced or eager)."""
    return ops.run(lambda b, v: b.call("slice", v, start=(start,) + (0,) * (v.ndim - 1),
                                       stop=(stop,) + v.shape[1:], step=(1,) * v.ndim), w)


def _as_bias(b, mask: Var, dtype, name: str) -> Var:
    """A PyTorch MultiheadAttention mask as a float bias: bool True = masked out (-inf)."""
    if mask.dtype.is_bool:
        return b.call("where", mask, b.var(b.lift(-np.inf, dtype)), b.var(b.lift(0.0, dtype)))
    if mask.dtype != dtype:
        raise DTypeError(f"{_MHA}: {name} must be bool (True = masked out) or have the "
                         f"query's dtype {dtype} (added to the scores), got {mask.type}",
                         user_loc())
    return mask


class MultiheadAttention(Module):
    """PyTorch's ``nn.MultiheadAttention``: ``num_heads`` heads of scaled dot-product attention
    over ``embed_dim`` features, with PyTorch's parameters (``in_proj_weight`` [3E, E] and
    ``in_proj_bias`` [3E], or ``q_proj_weight``/``k_proj_weight``/``v_proj_weight`` when
    ``kdim``/``vdim`` differ from ``embed_dim``; ``out_proj`` an ``nn.Linear``), its init
    (Xavier-uniform projections, zero biases) and its masks: ``key_padding_mask`` [N, S] and
    ``attn_mask`` [L, S] or [N * num_heads, L, S], bool True = masked out, or float, added.

    ``forward(query, key, value, ...)`` takes [L, N, E] (or [N, L, E] with ``batch_first``, or
    unbatched [L, E]) and returns ``(output, weights)``: weights averaged over the heads
    [N, L, S] (or per head [N, num_heads, L, S]), None unless ``need_weights``. Dropout on the
    weights in training mode only. ``is_causal`` is a hint, as in PyTorch: give the causal
    ``attn_mask`` too. (``add_bias_kv`` and ``add_zero_attn`` are not supported.)

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> mha = nn.MultiheadAttention(8, 2, batch_first=True)
    >>> out, w = lm.compile(lambda x: mha(x, x, x))(np.ones((3, 5, 8), np.float32))
    >>> out.shape, w.shape, mha.in_proj_weight.shape
    ((3, 5, 8), (3, 5, 5), (24, 8))
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim=None, vdim=None,
                 batch_first: bool = False, dtype=dt.float32):
        if add_bias_kv or add_zero_attn:
            raise LaminaError(f"{_MHA}: add_bias_kv and add_zero_attn are not supported")
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise LaminaError(f"{_MHA}: embed_dim ({embed_dim}) must be a positive multiple of "
                              f"num_heads ({num_heads})")
        if not 0 <= dropout < 1:
            raise LaminaError(f"{_MHA}: dropout must be in [0, 1), got {dropout}")
        from lamina.frontend.nn.layers import Linear

        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.batch_first, self.head_dim = batch_first, embed_dim // num_heads
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self._same_dim = self.kdim == embed_dim and self.vdim == embed_dim
        npd = dt.dtype(dtype).np
        if self._same_dim:
            self.in_proj_weight = Parameter(np.zeros((3 * embed_dim, embed_dim), npd))
            init.xavier_uniform_(self.in_proj_weight)
        else:
            for name, d in (("q", embed_dim), ("k", self.kdim), ("v", self.vdim)):
                p = Parameter(np.zeros((embed_dim, d), npd))
                setattr(self, f"{name}_proj_weight", p)
                init.xavier_uniform_(p)
        self.in_proj_bias = Parameter(np.zeros(3 * embed_dim, npd)) if bias else None
        self.out_proj = Linear(embed_dim, embed_dim, bias=bias, dtype=dtype)
        if bias:
            init.zeros_(self.out_proj.bias)

    def _proj_weight(self, i: int):
        E = self.embed_dim
        if self._same_dim:
            return _rows(self.in_proj_weight, i * E, (i + 1) * E)
        return (self.q_proj_weight, self.k_proj_weight, self.v_proj_weight)[i]

    def _project(self, x, i: int, n: int, length: int):
        """[N, length, d] -> [N, heads, length, head_dim] through projection ``i``."""
        from lamina.frontend.nn.functional import linear

        E = self.embed_dim
        bias = None if self.in_proj_bias is None else _rows(self.in_proj_bias, i * E,
                                                            (i + 1) * E)
        y = linear(x, self._proj_weight(i), bias)
        return ops.transpose(ops.reshape(y, (n, length, self.num_heads, self.head_dim)),
                             (0, 2, 1, 3))

    def _batch_first(self, x, unbatched: bool):
        if unbatched:
            return ops.expand_dims(x, 0)
        return x if self.batch_first else ops.transpose(x, (1, 0, 2))

    def forward(self, query, key, value, key_padding_mask=None, need_weights: bool = True,
                attn_mask=None, average_attn_weights: bool = True, is_causal: bool = False):
        if is_causal and attn_mask is None:
            raise LaminaError(f"{_MHA}: is_causal=True is a hint that attn_mask is the causal "
                              "mask; give attn_mask too (e.g. np.triu(np.ones((L, L), bool), "
                              "1): True = masked out)", user_loc())
        query, key, value = (x if hasattr(x, "shape") else np.asarray(x, np.float32)
                             for x in (query, key, value))
        E, H = self.embed_dim, self.num_heads
        shapes = [list(x.shape) for x in (query, key, value)]
        ranks = {len(s) for s in shapes}
        if len(ranks) != 1 or ranks.pop() not in (2, 3):
            raise ShapeError(f"{_MHA}: query, key and value must all be 3-d (batched) or 2-d "
                             f"(unbatched), got shapes {shapes}", user_loc())
        unbatched = len(query.shape) == 2
        q, k, v = (self._batch_first(x, unbatched) for x in (query, key, value))
        (n, L, qe), (nk, S, ke), (nv, Sv, ve) = q.shape, k.shape, v.shape
        if qe != E or ke != self.kdim or ve != self.vdim:
            raise ShapeError(f"{_MHA}: query, key and value must have {E}, {self.kdim} and "
                             f"{self.vdim} features, got shapes {list(query.shape)}, "
                             f"{list(key.shape)} and {list(value.shape)}", user_loc())
        if nk != n or nv != n or Sv != S:
            raise ShapeError(f"{_MHA}: query, key and value must have the same batch size, and "
                             f"key and value the same length; got shapes {list(query.shape)}, "
                             f"{list(key.shape)} and {list(value.shape)}", user_loc())
        qh, kh, vh = self._project(q, 0, n, L), self._project(k, 1, n, S), \
            self._project(v, 2, n, S)

        fused = not need_weights and not (self.training and self.dropout > 0)

        def bias_of(b, qv, am, kpm):
            """(additive bias or None, causal): the masks as one bias, except a causal
            attn_mask, which the fused op takes as causal=True (blocks above the diagonal
            skipped)."""
            total, causal = None, False
            if am is not None:
                am = am if isinstance(am, Var) else b.var(b.lift(np.asarray(am)))
                if am.shape not in ((L, S), (n * H, L, S)):
                    raise ShapeError(f"{_MHA}: attn_mask {am.type} must be [L, S] = [{L}, {S}] "
                                     f"or [N * num_heads, L, S] = [{n * H}, {L}, {S}]",
                                     user_loc())
                if fused and am.dtype.is_bool and causal_mask_of(am, L, S):
                    causal = True
                else:
                    total = _as_bias(b, am, qv.dtype, "attn_mask")
                    if total.ndim == 3:
                        total = total.reshape(n, H, L, S)
            if kpm is not None:
                kpm = kpm if isinstance(kpm, Var) else b.var(b.lift(np.asarray(kpm)))
                want = (S,) if unbatched else (n, S)
                if kpm.shape != want:
                    raise ShapeError(f"{_MHA}: key_padding_mask {kpm.type} must be [N, S] = "
                                     f"{list(want)}", user_loc())
                kb = _as_bias(b, kpm, qv.dtype, "key_padding_mask").reshape(n, 1, 1, S)
                total = kb if total is None else total + kb
            return total, causal

        def weights(b, qv, kv, vv, am, kpm):
            total, _ = bias_of(b, qv, am, kpm)
            return _weights(b, qv, kv, vv, total, False, None, False, _MHA)

        def attend(b, qv, kv, vv, am, kpm):
            total, causal = bias_of(b, qv, am, kpm)
            return _fused(b, qv, kv, vv, total, causal, None, False, _MHA)

        if fused:
            heads = run(attend, qh, kh, vh, attn_mask, key_padding_mask)
        else:
            w = run(weights, qh, kh, vh, attn_mask, key_padding_mask)
            if self.training and self.dropout > 0:
                from lamina.frontend.nn.functional import dropout

                w = dropout(w, self.dropout)
            heads = ops.matmul(w, vh)
        out = ops.reshape(ops.transpose(heads, (0, 2, 1, 3)), (n, L, E))
        out = self.out_proj(out)
        if unbatched:
            out = ops.squeeze(out, 0)
        elif not self.batch_first:
            out = ops.transpose(out, (1, 0, 2))
        if fused:
            return out, None
        if average_attn_weights:
            w = ops.mean(w, axis=1)
        return out, (ops.squeeze(w, 0) if unbatched else w)

    def extra_repr(self) -> str:
        s = f"embed_dim={self.embed_dim}, num_heads={self.num_heads}"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if not self._same_dim:
            s += f", kdim={self.kdim}, vdim={self.vdim}"
        return s + (", batch_first=True" if self.batch_first else "")
