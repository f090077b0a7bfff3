"""Convolution: ``conv`` (a ``contract`` primitive, like matmul) and ``conv_transpose`` (a
composite built from conv, as the gradient of conv with respect to its input).

Layouts are PyTorch's: the input is ``[N, C, *spatial]`` (1-D or 2-D), the weight
``[O, C/groups, *kernel]``, the result ``[N, O, *out]`` with, per spatial axis,

    out = (n + lo + hi - dilation * (k - 1) - 1) // stride + 1

``padding`` is one ``(lo, hi)`` pair of zero padding per spatial axis (PyTorch's symmetric ints
and ``'same'`` are spelled that way by the frontend), so the gradients are convolutions again:

    input gradient   the cotangent dilated by the stride (interior zeros), padded by
                     ``dilation * (k - 1) - lo`` in front, convolved (stride 1) with the kernel
                     flipped and its in/out channels swapped per group: a transposed convolution
    weight gradient  a correlation of input and cotangent: a conv whose batch is the input's
                     channels, whose contraction runs over the batch, with stride and dilation
                     exchanged

Both are exact for every stride, dilation, padding and group count, including strides that
skip the last rows (those get zero gradient). Backends without a conv lowering of their own
expand it into an im2col gather and a matmul (``passes/expand_conv.py``).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import as_strided

from lamina.ir.builder import op
from lamina.ir.errors import LaminaError, ShapeError
from lamina.ir.ops.domain import Domain, Operand
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import _kinds, same_dtype
from lamina.ir.types import TensorType

MAX_SPATIAL = 2  # 1-D and 2-D convolutions


def _per_axis(name: str, what: str, v, r: int) -> tuple:
    """An int or one entry per spatial axis, as a tuple of ``r`` entries."""
    if isinstance(v, (int, np.integer)):
        return (int(v),) * r
    v = tuple(v)
    if len(v) == 1 and r > 1:
        v = v * r
    if len(v) != r:
        raise LaminaError(f"{name}: {what} needs 1 or {r} entries (one per spatial axis), "
                          f"got {list(v)}")
    return v


def _ints(name: str, what: str, v, r: int, least: int) -> tuple[int, ...]:
    out = tuple(int(x) for x in _per_axis(name, what, v, r))
    if any(x < least for x in out):
        raise LaminaError(f"{name}: {what} must be >= {least} on every axis, got {list(out)}")
    return out


def canon_padding(name: str, v, r: int) -> tuple[tuple[int, int], ...]:
    """``padding`` as one ``(lo, hi)`` pair per spatial axis (an int is symmetric)."""
    if isinstance(v, str):
        raise LaminaError(f"{name}: padding {v!r} is resolved by the frontend (lm.conv), the "
                          "op takes (lo, hi) pairs")
    pairs = []
    for p in _per_axis(name, "padding", v, r):
        lo, hi = (p, p) if isinstance(p, (int, np.integer)) else tuple(p)
        pairs.append((int(lo), int(hi)))
    if any(x < 0 for pair in pairs for x in pair):
        raise LaminaError(f"{name}: padding must be >= 0, got {pairs}")
    return tuple(pairs)


def spatial_ok(types) -> bool:
    """Does the input have 1 or 2 spatial axes? (When not, canon leaves the attributes as
    given and the type rule reports the dtype first, then the rank.)"""
    return 1 <= types[0].ndim - 2 <= MAX_SPATIAL


def check_spatial(name: str, t) -> int:
    r = t.ndim - 2
    if not 1 <= r <= MAX_SPATIAL:
        raise ShapeError(f"{name}: the input must be [N, C, L] (1-D) or [N, C, H, W] (2-D), "
                         f"got {t}")
    return r


def _raw(attrs, defaults: dict) -> dict:
    for k, v in defaults.items():
        attrs.setdefault(k, v)
    return attrs


def out_size(n: int, lo: int, hi: int, k: int, stride: int, dilation: int) -> int:
    return (n + lo + hi - dilation * (k - 1) - 1) // stride + 1


# --- conv -------------------------------------------------------------------------------------


def _conv_canon(types, attrs):
    if not spatial_ok(types):
        return _raw(attrs, {"stride": 1, "padding": 0, "dilation": 1, "groups": 1})
    r = types[0].ndim - 2
    attrs["stride"] = _ints("conv", "stride", attrs.get("stride", 1), r, 1)
    attrs["dilation"] = _ints("conv", "dilation", attrs.get("dilation", 1), r, 1)
    attrs["padding"] = canon_padding("conv", attrs.get("padding", 0), r)
    attrs["groups"] = int(attrs.get("groups", 1))
    if attrs["groups"] < 1:
        raise LaminaError(f"conv: groups must be >= 1, got {attrs['groups']}")
    return attrs


def _conv_infer(types, attrs):
    x, w = types
    d = same_dtype("conv", types)
    _kinds("conv", x, "f")
    r, G = check_spatial("conv", x), attrs["groups"]
    if w.ndim != x.ndim:
        raise ShapeError(f"conv: the weight must be [out_channels, in_channels/groups, "
                         f"{', '.join(['k'] * r)}] for the input {x}, got {w}")
    N, C = x.shape[:2]
    O, Cg = w.shape[:2]
    if C % G:
        raise ShapeError(f"conv: input channels ({C}) not divisible by groups ({G})")
    if O % G:
        raise ShapeError(f"conv: output channels ({O}, the weight's first axis) not divisible "
                         f"by groups ({G})")
    if Cg != C // G:
        raise ShapeError(f"conv: the weight {w} takes {Cg} input channels per group, the input "
                         f"{x} has {C} channels in {G} group(s) ({C // G} each)")
    out = []
    for i in range(r):
        n, k = x.shape[2 + i], w.shape[2 + i]
        (lo, hi), s, dl = attrs["padding"][i], attrs["stride"][i], attrs["dilation"][i]
        if k < 1:
            raise ShapeError(f"conv: the kernel {w} is empty on spatial axis {i}")
        if dl * (k - 1) + 1 > n + lo + hi:
            raise ShapeError(f"conv: kernel larger than the padded input on spatial axis {i}: "
                             f"{k} taps with dilation {dl} span {dl * (k - 1) + 1}, the input "
                             f"{n} padded by ({lo}, {hi}) is {n + lo + hi}")
        out.append(out_size(n, lo, hi, k, s, dl))
    return TensorType((N, O, *out), d)


def windows(xp: np.ndarray, out, k, stride, dilation) -> np.ndarray:
    """The view ``[N, C, *out, *k]`` of a padded input: element ``(o, j)`` is
    ``xp[..., o * stride + j * dilation]`` (no copy)."""
    st = xp.strides
    r = len(k)
    strides = st[:2] + tuple(st[2 + i] * stride[i] for i in range(r)) + \
        tuple(st[2 + i] * dilation[i] for i in range(r))
    return as_strided(xp, xp.shape[:2] + tuple(out) + tuple(k), strides, writeable=False)


def conv_ref(x, w, stride, padding, dilation, groups):
    r = x.ndim - 2
    xp = np.pad(x, [(0, 0), (0, 0)] + [tuple(p) for p in padding])
    k = w.shape[2:]
    out = [out_size(x.shape[2 + i], *padding[i], k[i], stride[i], dilation[i])
           for i in range(r)]
    win = windows(xp, out, k, stride, dilation)
    N, C, O = x.shape[0], x.shape[1], w.shape[0]
    Cg, Og = C // groups, O // groups
    dtype = np.result_type(x, w)
    res = np.zeros((N, O, *out), dtype)
    sp = list(range(2 + r, 2 + 2 * r))
    for g in range(groups):
        part = win[:, g * Cg:(g + 1) * Cg]
        wg = w[g * Og:(g + 1) * Og]
        t = np.tensordot(part, wg, axes=([1, *sp], [1, *range(2, 2 + r)]))  # [N, *out, Og]
        res[:, g * Og:(g + 1) * Og] = np.moveaxis(t, -1, 1)
    return res


def conv(x, w, stride, padding, dilation, groups):
    """Emit a conv node (for gradient rules and decompositions)."""
    return op.conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _flip(w, r):
    for a in range(2, 2 + r):
        k = w.shape[a]
        if k > 1:
            w = op.take(w, np.arange(k - 1, -1, -1, dtype=np.int64), axis=a)
    return w


def conv_input_grad(g, w, n, stride, lo, dilation, groups):
    """The transposed convolution of ``g`` [N, O, *m] with ``w`` [O, C/groups, *k]: the
    gradient of a conv with respect to its input of spatial sizes ``n`` (padded by ``lo`` in
    front). Also ``conv_transpose``."""
    r = len(n)
    N, O = g.shape[:2]
    m, k = g.shape[2:], w.shape[2:]
    G = groups
    Og, Cg = O // G, w.shape[1]
    C = Cg * G
    if any(v == 0 for v in n) or N == 0 or C == 0:
        return _zeros(g, (N, C, *n))
    if any(s > 1 for s in stride):
        g = op.pad(g, lo=(0,) * (r + 2), hi=(0,) * (r + 2),
                   interior=(0, 0, *[s - 1 for s in stride]))
    length = [(m[i] - 1) * stride[i] + 1 for i in range(r)]
    front = [(k[i] - 1) * dilation[i] - lo[i] for i in range(r)]
    back = [n[i] + lo[i] - 1 - (m[i] - 1) * stride[i] for i in range(r)]
    if min(front + back) < 0:  # padding beyond the kernel's reach: rows no tap reads
        start = [max(0, -f) for f in front]
        stop = [length[i] - max(0, -back[i]) for i in range(r)]
        g = op.slice(g, start=(0, 0, *start), stop=(N, O, *stop), step=(1,) * (r + 2))
    wt = w.reshape(G, Og, Cg, *k).transpose(0, 2, 1, *range(3, 3 + r)).reshape(C, Og, *k)
    pad = tuple((max(f, 0), max(b, 0)) for f, b in zip(front, back))
    return conv(g, _flip(wt, r), (1,) * r, pad, dilation, G)


def conv_weight_grad(x, g, k, stride, padding, dilation, groups):
    """The correlation of ``x`` [N, C, *n] and ``g`` [N, O, *m]: the gradient of a conv with
    respect to its weight [O, C/groups, *k]."""
    r = len(k)
    N, C = x.shape[:2]
    O, m, n = g.shape[1], g.shape[2:], x.shape[2:]
    G = groups
    Cg = C // G
    shape = (O, Cg, *k)
    # the padded length the taps reach: rows after it (a stride that skips them) are unread
    reach = [(k[i] - 1) * dilation[i] + (m[i] - 1) * stride[i] + 1 for i in range(r)]
    lo = [padding[i][0] for i in range(r)]
    if any(reach[i] <= lo[i] for i in range(r)) or N == 0 or O == 0 or Cg == 0:
        return _zeros(g, shape)
    used = [min(n[i], reach[i] - lo[i]) for i in range(r)]
    if list(used) != list(n):
        x = op.slice(x, start=(0,) * (r + 2), stop=(N, C, *used), step=(1,) * (r + 2))
    pad = tuple((lo[i], reach[i] - lo[i] - used[i]) for i in range(r))
    xt = x.reshape(N, G, Cg, *used).transpose(2, 1, 0, *range(3, 3 + r)).reshape(
        Cg, G * N, *used)
    gt = g.transpose(1, 0, *range(2, 2 + r))
    dw = conv(xt, gt, dilation, pad, stride, G)  # [Cg, O, *k]
    return dw.transpose(1, 0, *range(2, 2 + r))


def _zeros(like, shape):
    b = like.builder
    return b.var(b.constant(0.0, like.dtype, shape))


def _conv_vjp(g, out, x, w, stride, padding, dilation, groups):
    dx = conv_input_grad(g, w, x.shape[2:], stride, [p[0] for p in padding], dilation, groups)
    dw = conv_weight_grad(x, g, w.shape[2:], stride, padding, dilation, groups)
    return dx, dw


# --- the checker's domain ---------------------------------------------------------------------


def _divisors(c: int) -> list[int]:
    return [d for d in range(1, c + 1) if c % d == 0] if c else [1, 2, 3]


def _conv_attrs(g, t):
    r = t.ndim - 2
    if not 1 <= r <= MAX_SPATIAL or not t.dtype.is_float:
        return None
    rng = g.rng
    groups = int(rng.choice(_divisors(t.shape[1]))) if rng.random() < 0.4 else 1
    stride, padding, dilation = [], [], []
    for n in t.shape[2:]:
        lo = int(rng.choice([0, 0, 1, 2]))
        hi = lo if rng.random() < 0.8 else int(rng.integers(0, 3))
        if n + lo + hi < 1:
            return None
        stride.append(int(rng.choice([1, 1, 2, 3])))
        dilation.append(int(rng.choice([1, 1, 1, 2])))
        padding.append((lo, hi))
    return {"stride": tuple(stride), "padding": tuple(padding), "dilation": tuple(dilation),
            "groups": groups}


def _conv_rest(g, t, attrs):
    kernel = []
    for n, (lo, hi), dl in zip(t.shape[2:], attrs["padding"], attrs["dilation"]):
        most = (n + lo + hi - 1) // dl + 1  # taps that fit the padded input
        kernel.append(int(g.rng.integers(1, min(most, 4) + 1)))
    G = attrs["groups"]
    O = G * int(g.rng.choice([1, 1, 2, 3]))
    if g.rng.random() < 0.15:
        O = 0 if g.rng.random() < 0.3 else G
    return [Operand("fi", shape=(O, t.shape[1] // G, *kernel))]


defop("conv", arity=2, kind="contract", attrs=("stride", "padding", "dilation", "groups"),
      canon=_conv_canon, infer=_conv_infer, ref=conv_ref, vjp=_conv_vjp, promote=(0, 1),
      float_only=True, domain=Domain(Operand("fi", ranks=(3, 4)), _conv_rest, _conv_attrs),
      doc="N-d convolution (cross-correlation) of [N, C, *S] with [O, C/groups, *K], "
          "PyTorch's layout")


# --- conv_transpose ---------------------------------------------------------------------------


def _convt_canon(types, attrs):
    if not spatial_ok(types):
        return _raw(attrs, {"stride": 1, "padding": 0, "output_padding": 0, "dilation": 1,
                            "groups": 1})
    r = types[0].ndim - 2
    attrs["stride"] = _ints("conv_transpose", "stride", attrs.get("stride", 1), r, 1)
    attrs["dilation"] = _ints("conv_transpose", "dilation", attrs.get("dilation", 1), r, 1)
    attrs["padding"] = _ints("conv_transpose", "padding", attrs.get("padding", 0), r, 0)
    attrs["output_padding"] = _ints("conv_transpose", "output_padding",
                                    attrs.get("output_padding", 0), r, 0)
    attrs["groups"] = int(attrs.get("groups", 1))
    if attrs["groups"] < 1:
        raise LaminaError(f"conv_transpose: groups must be >= 1, got {attrs['groups']}")
    for i, (op_, s, dl) in enumerate(zip(attrs["output_padding"], attrs["stride"],
                                         attrs["dilation"])):
        if op_ >= max(s, dl):
            raise LaminaError(f"conv_transpose: output_padding ({op_}) must be smaller than "
                              f"the stride ({s}) or the dilation ({dl}) on spatial axis {i}")
    return attrs


def transpose_out_size(m, k, stride, padding, output_padding, dilation) -> int:
    return (m - 1) * stride - 2 * padding + dilation * (k - 1) + output_padding + 1


def _convt_sizes(x, w, attrs):
    r = x.ndim - 2
    return [transpose_out_size(x.shape[2 + i], w.shape[2 + i], attrs["stride"][i],
                               attrs["padding"][i], attrs["output_padding"][i],
                               attrs["dilation"][i]) for i in range(r)]


def _convt_infer(types, attrs):
    x, w = types
    d = same_dtype("conv_transpose", types)
    _kinds("conv_transpose", x, "f")
    check_spatial("conv_transpose", x)
    G = attrs["groups"]
    if w.ndim != x.ndim:
        raise ShapeError(f"conv_transpose: the weight must be [in_channels, "
                         f"out_channels/groups, *kernel] for the input {x}, got {w}")
    C = x.shape[1]
    if C % G:
        raise ShapeError(f"conv_transpose: input channels ({C}) not divisible by groups ({G})")
    if w.shape[0] != C:
        raise ShapeError(f"conv_transpose: the weight {w} is for {w.shape[0]} input channels, "
                         f"the input {x} has {C}")
    if any(k < 1 for k in w.shape[2:]):
        raise ShapeError(f"conv_transpose: the kernel {w} is empty")
    sizes = _convt_sizes(x, w, attrs)
    for i, n in enumerate(sizes):
        if n < 1:
            raise ShapeError(f"conv_transpose: the output would have size {n} on spatial axis "
                             f"{i} (input {x.shape[2 + i]}, padding {attrs['padding'][i]})")
    return TensorType((x.shape[0], G * w.shape[1], *sizes), d)


def _convt_ref(x, w, stride, padding, output_padding, dilation, groups):
    # scatter form: every input position adds kernel * value at position*stride + tap*dilation
    r = x.ndim - 2
    N, C, m = x.shape[0], x.shape[1], x.shape[2:]
    Cg, Og, k = C // groups, w.shape[1], w.shape[2:]
    full = [(m[i] - 1) * stride[i] + dilation[i] * (k[i] - 1) + 1 + output_padding[i]
            for i in range(r)]
    acc = np.zeros((N, groups * Og, *full), np.result_type(x, w))
    for tap in np.ndindex(*k):
        for g in range(groups):
            xs = x[:, g * Cg:(g + 1) * Cg]
            ws = w[g * Cg:(g + 1) * Cg][(slice(None), slice(None)) + tap]  # [Cg, Og]
            part = np.moveaxis(np.tensordot(xs, ws, axes=([1], [0])), -1, 1)  # [N, Og, *m]
            where = tuple(slice(tap[i] * dilation[i],
                                tap[i] * dilation[i] + (m[i] - 1) * stride[i] + 1, stride[i])
                          for i in range(r))
            acc[(slice(None), slice(g * Og, (g + 1) * Og)) + where] += part
    crop = tuple(slice(padding[i], full[i] - padding[i]) for i in range(r))
    return acc[(slice(None), slice(None)) + crop]


def _convt_decompose(x, w, stride, padding, output_padding, dilation, groups):
    sizes = _convt_sizes(x, w, {"stride": stride, "padding": padding,
                                "output_padding": output_padding, "dilation": dilation})
    return conv_input_grad(x, w, sizes, stride, padding, dilation, groups)


def _convt_attrs(g, t):
    r = t.ndim - 2
    if not 1 <= r <= MAX_SPATIAL or not t.dtype.is_float or 0 in t.shape[2:]:
        return None
    rng = g.rng
    groups = int(rng.choice(_divisors(t.shape[1]))) if rng.random() < 0.4 else 1
    attrs = {k: [] for k in ("stride", "padding", "output_padding", "dilation")}
    for m in t.shape[2:]:
        s = int(rng.choice([1, 2, 2, 3]))
        dl = int(rng.choice([1, 1, 2]))
        p = int(rng.integers(0, 2))
        op_ = int(rng.integers(0, max(s, dl)))
        if transpose_out_size(m, 3, s, p, op_, dl) < 1:
            p = 0
        for key, v in zip(attrs, (s, p, op_, dl)):
            attrs[key].append(v)
    out = {key: tuple(v) for key, v in attrs.items()}
    out["groups"] = groups
    return out


def _convt_rest(g, t, attrs):
    kernel = []
    for m, s, p, op_, dl in zip(t.shape[2:], attrs["stride"], attrs["padding"],
                                attrs["output_padding"], attrs["dilation"]):
        ks = [k for k in (1, 2, 3) if transpose_out_size(m, k, s, p, op_, dl) >= 1]
        kernel.append(int(g.rng.choice(ks)))
    Og = int(g.rng.choice([1, 1, 2, 3]))
    return [Operand("fi", shape=(t.shape[1], Og, *kernel))]


defop("conv_transpose", arity=2, kind="composite",
      attrs=("stride", "padding", "output_padding", "dilation", "groups"),
      canon=_convt_canon, infer=_convt_infer, ref=_convt_ref, decompose=_convt_decompose,
      promote=(0, 1), float_only=True,
      domain=Domain(Operand("fi", ranks=(3, 4)), _convt_rest, _convt_attrs),
      doc="transposed convolution (PyTorch's conv_transpose: weight [C, O/groups, *K])")

