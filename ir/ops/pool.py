"""Pooling over the spatial axes of ``[N, C, *spatial]`` (1-D or 2-D): ``max_pool`` and
``avg_pool``, with PyTorch's kernel / stride / padding / dilation / ceil_mode semantics, and
their input gradients ``max_pool_grad(x, g)`` and ``avg_pool_grad(g, size=...)``.

All four are primitives of kind ``window``: backends with pooling kernels compute them as
loops (llvm: ``backends/llvm/pooling.py``; the forward one output element at a time, fused
with its producers; the backward one window at a time, each input element written once where
windows do not overlap). Each also declares a ``decompose`` into slices, pads and ``where``
chains (one strided slice of the padded input per kernel tap, in row-major tap order) that
``passes/expand_pool.py`` substitutes for backends without such kernels (triton) and for the
random-program checker's float64 oracle.

Max pooling follows PyTorch exactly: padding reads ``-inf``; a window's choice starts at its
first element inside the input and moves to a later tap only when that one is strictly larger
or NaN. So the value is the maximum (NaN if any element is NaN), ties send the gradient to the
first maximum in scan order, the last NaN takes it, and a window of ``-inf`` gives it to its
first element in the input. The average's divisor is PyTorch's (``count_include_pad``,
``ceil_mode`` windows clipped at the padded edge, ``divisor_override``).

Why primitives and not composites: autodiff of the ``where`` chain gave the gradient as k*k
padded partial sums per window (the CNN step ran ~26 small kernels for two pooling layers);
as ops of their own each pass is one loop that reads its input once, and the gradient needs no
stored argmax (it recomputes the window's choice from the input it reads anyway).
"""

from __future__ import annotations

import math

import numpy as np

from lamina.ir.builder import op
from lamina.ir.errors import LaminaError, ShapeError
from lamina.ir.ops.conv import MAX_SPATIAL, _ints, _raw, check_spatial, spatial_ok, windows
from lamina.ir.ops.domain import Domain, Operand
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import _kinds
from lamina.ir.types import TensorType


def pool_out_size(n, k, stride, padding, dilation, ceil_mode) -> int:
    """PyTorch's output size (a ceil_mode window must start inside the input or its left
    padding, and may be larger than the input); below 1 when the input is too small."""
    num = n + 2 * padding - dilation * (k - 1) - 1
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return out


def _pool_canon(name: str, dilated: bool):
    def canon(types, attrs):
        if not spatial_ok(types) or attrs.get("kernel") is None:
            defaults = {"kernel": None, "stride": None, "padding": 0, "ceil_mode": False}
            return _raw(attrs, {**defaults, **({"dilation": 1} if dilated else {})})
        r = types[0].ndim - 2
        k = attrs["kernel"] = _ints(name, "kernel", attrs["kernel"], r, 1)
        stride = attrs.get("stride")
        attrs["stride"] = k if stride is None else _ints(name, "stride", stride, r, 1)
        attrs["padding"] = _ints(name, "padding", attrs.get("padding", 0), r, 0)
        if dilated:
            attrs["dilation"] = _ints(name, "dilation", attrs.get("dilation", 1), r, 1)
        attrs["ceil_mode"] = bool(attrs.get("ceil_mode", False))
        for i, (kk, p) in enumerate(zip(k, attrs["padding"])):
            if p > kk // 2:
                raise LaminaError(f"{name}: padding ({p}) must be at most half the kernel "
                                  f"size ({kk}) on spatial axis {i}")
        return attrs

    return canon


def _sizes(name, t, attrs) -> list[int]:
    r = t.ndim - 2
    dil = attrs.get("dilation", (1,) * r)
    out = []
    for i in range(r):
        n = t.shape[2 + i]
        if n < 1:
            raise ShapeError(f"{name}: spatial axis {i} of {t} is empty")
        o = pool_out_size(n, attrs["kernel"][i], attrs["stride"][i], attrs["padding"][i],
                          dil[i], attrs["ceil_mode"])
        if o < 1:
            raise ShapeError(f"{name}: the input {t} is too small for the kernel "
                             f"{list(attrs['kernel'])} on spatial axis {i} (with padding "
                             f"{attrs['padding'][i]}, dilation {dil[i]}: output size {o})")
        out.append(o)
    return out


def _pool_infer(name):
    def infer(types, attrs):
        t = types[0]
        _kinds(name, t, "f")
        check_spatial(name, t)
        if attrs["kernel"] is None:
            raise LaminaError(f"{name}: kernel is required")
        return TensorType(t.shape[:2] + tuple(_sizes(name, t, attrs)), t.dtype)

    return infer


def _reach(n, out, k, stride, padding, dilation):
    """(lo, hi) padding that makes the input exactly as long as the windows reach (hi < 0:
    the last rows are read by no window)."""
    total = (out - 1) * stride + dilation * (k - 1) + 1
    return padding, total - n - padding


def _padded_ref(x, attrs, out, value):
    r = x.ndim - 2
    dil = attrs.get("dilation", (1,) * r)
    pads, crop = [], []
    for i in range(r):
        lo, hi = _reach(x.shape[2 + i], out[i], attrs["kernel"][i], attrs["stride"][i],
                        attrs["padding"][i], dil[i])
        pads.append((lo, max(hi, 0)))
        crop.append(slice(0, x.shape[2 + i] + min(hi, 0)))
    x = x[(slice(None), slice(None)) + tuple(crop)]
    xp = np.pad(x, [(0, 0), (0, 0)] + pads, constant_values=value)
    return windows(xp, out, attrs["kernel"], attrs["stride"], dil)


def _geometry(x_shape, attrs, out):
    """Per spatial axis: (lo pad, hi pad (>= 0), rows used) of the padded input the windows
    read (``_reach``)."""
    r = len(out)
    dil = attrs.get("dilation", (1,) * r)
    lo, hi, used = [], [], []
    for i in range(r):
        a, b = _reach(x_shape[2 + i], out[i], attrs["kernel"][i], attrs["stride"][i],
                      attrs["padding"][i], dil[i])
        lo.append(a), hi.append(max(b, 0)), used.append(x_shape[2 + i] + min(b, 0))
    return lo, hi, used


def _taps(x, attrs, out, fill, valid: bool = False):
    """One strided slice of the padded input per kernel tap (row-major tap order), each of
    the output's shape; padding reads as ``fill``. With ``valid``: also, per tap, a bool
    tensor saying where the tap reads the input itself (None everywhere without padding)."""
    r = x.ndim - 2
    N, C = x.shape[:2]
    dil = attrs.get("dilation", (1,) * r)
    lo, hi, used = _geometry(x.shape, attrs, out)
    if used != list(x.shape[2:]):
        x = op.slice(x, start=(0,) * (r + 2), stop=(N, C, *used), step=(1,) * (r + 2))
    inside = None
    if any(lo) or any(hi):
        pad = {"lo": (0, 0, *lo), "hi": (0, 0, *hi), "interior": (0,) * (r + 2)}
        xp = op.pad(x, **pad)
        if fill != 0.0 or valid:
            b = x.builder
            inside = op.pad(b.var(b.constant(True, "bool", x.shape)), **pad)
        if fill != 0.0:
            xp = op.where(inside, xp, fill)
        x = xp
    taps, oks = [], []
    for tap in np.ndindex(*attrs["kernel"]):
        start = [tap[i] * dil[i] for i in range(r)]
        stop = [start[i] + (out[i] - 1) * attrs["stride"][i] + 1 for i in range(r)]
        where = dict(start=(0, 0, *start), stop=(N, C, *stop), step=(1, 1, *attrs["stride"]))
        taps.append(op.slice(x, **where))
        oks.append(None if inside is None else op.slice(inside, **where))
    return (taps, oks) if valid else taps


def _untaps(parts, x_shape, attrs):
    """The adjoint of ``_taps`` (fill 0): the sum of each tap's part placed back where the
    tap read it, as an array of ``x_shape`` (parts summed last tap first, the order the
    kernels and the reference accumulate in)."""
    r = len(x_shape) - 2
    out = parts[0].shape[2:]
    dil = attrs.get("dilation", (1,) * r)
    lo, hi, used = _geometry(x_shape, attrs, out)
    padded = [used[i] + lo[i] + hi[i] for i in range(r)]
    total = None
    for tap, part in reversed(list(zip(np.ndindex(*attrs["kernel"]), parts))):
        start = [tap[i] * dil[i] for i in range(r)]
        stop = [start[i] + (out[i] - 1) * attrs["stride"][i] + 1 for i in range(r)]
        after = [padded[i] - stop[i] for i in range(r)]
        placed = op.pad(part, lo=(0, 0, *start), hi=(0, 0, *after),
                        interior=(0, 0, *[s - 1 for s in attrs["stride"]]))
        total = placed if total is None else total + placed
    N, C = x_shape[:2]
    if any(lo) or any(hi):
        end = [lo[i] + used[i] for i in range(r)]
        total = op.slice(total, start=(0, 0, *lo), stop=(N, C, *end), step=(1,) * (r + 2))
    if used != list(x_shape[2:]):
        total = op.pad(total, lo=(0,) * (r + 2),
                       hi=(0, 0, *[x_shape[2 + i] - used[i] for i in range(r)]),
                       interior=(0,) * (r + 2))
    return total


# --- the choice of max_pool: the first maximum of each window -------------------------------


def _chosen_ref(x, attrs, out):
    """The windows ``[N, C, *out, K]`` of the padded input and, per window, the flat index of
    the tap max pooling chooses: PyTorch's rule (in scan order, the first in-input tap, then a
    later one strictly larger or NaN; -1 for a window with no input element)."""
    r = x.ndim - 2
    win = _padded_ref(x, attrs, out, -np.inf)
    ok = _padded_ref(np.ones(x.shape, bool), attrs, out, False)
    K = math.prod(attrs["kernel"])
    win = win.reshape(win.shape[:2 + r] + (K,))
    ok = ok.reshape(ok.shape[:2 + r] + (K,))
    m = np.full(win.shape[:-1], -np.inf, win.dtype)
    ch = np.full(win.shape[:-1], -1, np.int64)
    for t in range(K):
        v = win[..., t]
        with np.errstate(invalid="ignore"):
            better = ok[..., t] & ((ch < 0) | (v > m) | np.isnan(v))
        m = np.where(better, v, m)
        ch = np.where(better, t, ch)
    return m, ch


def _place_ref(parts, x_shape, attrs, dtype):
    """numpy's ``_untaps``: each tap's part [N, C, *out] added back where the tap reads, last
    tap first (each position then sums its windows in window order, as the kernels do)."""
    r = len(x_shape) - 2
    out = parts[0].shape[2:]
    dil = attrs.get("dilation", (1,) * r)
    lo, hi, used = _geometry(x_shape, attrs, out)
    acc = np.zeros(tuple(x_shape[:2]) + tuple(used[i] + lo[i] + hi[i] for i in range(r)), dtype)
    taps = list(np.ndindex(*attrs["kernel"]))
    for t in reversed(range(len(taps))):
        where = tuple(slice(taps[t][i] * dil[i],
                            taps[t][i] * dil[i] + (out[i] - 1) * attrs["stride"][i] + 1,
                            attrs["stride"][i]) for i in range(r))
        acc[(slice(None), slice(None)) + where] += parts[t]
    dx = np.zeros(x_shape, dtype)
    crop = tuple(slice(lo[i], lo[i] + used[i]) for i in range(r))
    dx[(slice(None), slice(None)) + tuple(slice(0, u) for u in used)] = \
        acc[(slice(None), slice(None)) + crop]
    return dx


_NEVER, _ALWAYS = object(), object()  # masks known statically (compared by identity)


def _chosen_masks(x, attrs, out):
    """The taps of ``x`` and, per tap, where max pooling chooses it (``_chosen_ref`` in ops):
    a bool tensor of the output's shape, None (everywhere) or False (nowhere). A tap is
    chosen where it is "better" than the running choice and no later tap is."""
    taps, oks = _taps(x, attrs, out, -math.inf, valid=True)
    better, m, seen = [], taps[0], _NEVER  # seen: where some tap was better so far
    for t, (s, ok) in enumerate(zip(taps, oks)):
        if t == 0:
            bt = ok  # the first tap in the input (None: everywhere)
        else:
            bt = (s > m) | (s != s)  # strictly larger (the first maximum wins) or NaN
            if seen is not _ALWAYS:  # or the first tap in the input
                bt = bt | op.logical_not(seen)
            if ok is not None:
                bt = bt & ok
            m = op.where(bt, s, m)
        if bt is None:
            seen = _ALWAYS
        elif seen is _NEVER:
            seen = bt
        elif seen is not _ALWAYS:
            seen = seen | bt
        better.append(bt)
    masks, later = [], _NEVER  # later: where a later tap is better
    for bt in reversed(better):
        if later is _ALWAYS:
            masks.append(False)
            continue
        if later is _NEVER:
            masks.append(bt)
        else:
            masks.append(op.logical_not(later) if bt is None else bt & op.logical_not(later))
        later = _ALWAYS if bt is None else (bt if later is _NEVER else later | bt)
    masks.reverse()
    return taps, masks


def _select_taps(parts, masks):
    """Per tap, the part where the tap is chosen and 0 elsewhere (None: nowhere)."""
    out = []
    for part, mk in zip(parts, masks):
        if mk is False:
            out.append(None)
        elif mk is None:
            out.append(part)
        else:
            out.append(op.where(mk, part, 0.0))
    return out


def _zeros_like(v):
    b = v.builder
    return b.var(b.constant(0.0, v.dtype, v.shape))


# --- max_pool ---------------------------------------------------------------------------------


def _attrs_of(kernel, stride, padding, ceil_mode, dilation=None, **more):
    a = dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode, **more)
    if dilation is not None:
        a["dilation"] = dilation
    return a


def _max_ref(x, kernel, stride, padding, dilation, ceil_mode):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, dilation)
    out = [pool_out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                         ceil_mode) for i in range(x.ndim - 2)]
    win = _padded_ref(x, attrs, out, -np.inf)
    return win.max(axis=tuple(range(-len(kernel), 0)))


def _max_decompose(x, kernel, stride, padding, dilation, ceil_mode):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, dilation)
    taps = _taps(x, attrs, _sizes("max_pool", x.type, attrs), -math.inf)
    m = taps[0]
    for s in taps[1:]:
        # strictly larger (first maximum wins, as PyTorch) or NaN (propagates)
        m = op.where((s > m) | (s != s), s, m)
    return m


def _max_vjp(g, out, x, **attrs):
    return (op.max_pool_grad(x, g, **attrs),)


def _pool_attrs(dilated: bool):
    def attrs(g, t):
        r = t.ndim - 2
        if not 1 <= r <= MAX_SPATIAL or 0 in t.shape[2:]:
            return None
        rng = g.rng
        out = {k: [] for k in ("kernel", "stride", "padding", "dilation")}
        for n in t.shape[2:]:
            d = int(rng.choice([1, 1, 1, 2])) if dilated else 1
            k = int(rng.integers(1, min(3, (n - 1) // d + 1) + 1))
            s = int(rng.choice([1, 2, k]))
            p = int(rng.integers(0, k // 2 + 1))
            for key, v in zip(out, (k, s, p, d)):
                out[key].append(v)
        res = {key: tuple(v) for key, v in out.items()}
        if not dilated:
            del res["dilation"]
        res["ceil_mode"] = bool(rng.random() < 0.3)
        return res

    return attrs


defop("max_pool", arity=1, kind="window",
      attrs=("kernel", "stride", "padding", "dilation", "ceil_mode"),
      canon=_pool_canon("max_pool", True), infer=_pool_infer("max_pool"), ref=_max_ref,
      vjp=_max_vjp, decompose=_max_decompose, float_only=True,
      domain=Domain(Operand("fi", ranks=(3, 4)), attrs=_pool_attrs(True)),
      doc="maximum over sliding windows (padding reads -inf; gradient to the first maximum)")


# --- max_pool_grad: the gradient of max_pool -------------------------------------------------


def _max_grad_infer(types, attrs):
    x, g = types
    y = _pool_infer("max_pool_grad")([x], attrs)
    if g.shape != y.shape or g.dtype is not x.dtype:
        raise ShapeError(f"max_pool_grad: the gradient must be {y} (max_pool's result for the "
                         f"input {x}), got {g}")
    return x


def _max_grad_ref(x, g, kernel, stride, padding, dilation, ceil_mode):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, dilation)
    _, ch = _chosen_ref(x, attrs, g.shape[2:])
    parts = [np.where(ch == t, g, np.zeros((), g.dtype)) for t in range(math.prod(kernel))]
    return _place_ref(parts, x.shape, attrs, g.dtype)


def _max_grad_decompose(x, g, kernel, stride, padding, dilation, ceil_mode):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, dilation)
    _, masks = _chosen_masks(x, attrs, list(g.shape[2:]))
    parts = _select_taps([g] * len(masks), masks)
    zero = _zeros_like(g)
    return _untaps([zero if p is None else p for p in parts], x.shape, attrs)


def _max_grad_vjp(h, out, x, g, **attrs):
    # linear in g: its cotangent is h read at each window's chosen position; none for x
    # (piecewise constant in x)
    a = _attrs_of(**attrs)
    _, masks = _chosen_masks(x, a, list(g.shape[2:]))
    picked = [p for p in _select_taps(_taps(h, a, list(g.shape[2:]), 0.0), masks)
              if p is not None]
    total = picked[0]
    for p in picked[1:]:
        total = total + p
    return (None, total)


defop("max_pool_grad", arity=2, kind="window",
      attrs=("kernel", "stride", "padding", "dilation", "ceil_mode"),
      canon=_pool_canon("max_pool_grad", True), infer=_max_grad_infer, ref=_max_grad_ref,
      vjp=_max_grad_vjp, decompose=_max_grad_decompose, promote=(0, 1), float_only=True,
      domain=Domain(None, via="lm.grad"),
      doc="max_pool's input gradient: each window's gradient to its first maximum")


# --- avg_pool ---------------------------------------------------------------------------------


def _counts(n, out, k, stride, padding, include_pad) -> np.ndarray:
    """PyTorch's divisor per output position along one axis: the window clipped to the padded
    input (``count_include_pad``) or to the input itself."""
    c = np.zeros(out, np.int64)
    for o in range(out):
        start = o * stride - padding
        end = min(start + k, n + padding)
        c[o] = end - start if include_pad else min(end, n) - max(start, 0)
    return c


def _divisor(x_shape, out, attrs) -> np.ndarray:
    """The divisor of every output position, shape ``out`` (a product over the axes)."""
    if attrs["divisor_override"] is not None:
        return np.full(out, attrs["divisor_override"], np.int64)
    div = np.ones((), np.int64)
    for i, o in enumerate(out):
        c = _counts(x_shape[2 + i], o, attrs["kernel"][i], attrs["stride"][i],
                    attrs["padding"][i], attrs["count_include_pad"])
        div = np.multiply.outer(div, c)
    return div


def _avg_canon(types, attrs, name="avg_pool"):
    attrs = _pool_canon(name, False)(types, attrs)
    if attrs["kernel"] is None or not spatial_ok(types):
        return _raw(attrs, {"count_include_pad": True, "divisor_override": None})
    attrs["count_include_pad"] = bool(attrs.get("count_include_pad", True))
    d = attrs.get("divisor_override")
    attrs["divisor_override"] = None if d is None else int(d)
    if d is not None and attrs["divisor_override"] < 1:
        raise LaminaError(f"{name}: divisor_override must be positive, got {d}")
    return attrs


def _avg_ref(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
    out = [pool_out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], 1, ceil_mode)
           for i in range(x.ndim - 2)]
    win = _padded_ref(x, attrs, out, 0)
    total = win.sum(axis=tuple(range(-len(kernel), 0)))
    return total / _divisor(x.shape, out, attrs).astype(x.dtype)


def _divide(x_shape, total, attrs):
    """``total`` (a Var of the output's shape) over the divisor of each window."""
    out = list(total.shape[2:])
    div = _divisor(x_shape, out, attrs)
    flat = div.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return total / float(flat[0])
    b = total.builder
    # one small literal per axis, multiplied out (exact: small integers)
    den = None
    for i, o in enumerate(out):
        c = _counts(x_shape[2 + i], o, attrs["kernel"][i], attrs["stride"][i],
                    attrs["padding"][i], attrs["count_include_pad"])
        shape = tuple(o if j == i else 1 for j in range(len(out)))
        v = b.var(b.constant(c.astype(total.dtype.np).reshape(shape), total.dtype, shape))
        den = v if den is None else den * v
    return total / den


def _avg_decompose(x, kernel, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
    out = _sizes("avg_pool", x.type, attrs)
    taps = _taps(x, attrs, out, 0.0)
    total = taps[0]
    for s in taps[1:]:
        total = total + s
    return _divide(x.shape, total, attrs)


def _avg_vjp(g, out, x, **attrs):
    return (op.avg_pool_grad(g, size=tuple(x.shape[2:]), **attrs),)


def _avg_attrs(g, t):
    attrs = _pool_attrs(False)(g, t)
    if attrs is None:
        return None
    attrs["count_include_pad"] = bool(g.rng.random() < 0.6)
    attrs["divisor_override"] = None if g.rng.random() < 0.9 else int(g.rng.integers(1, 5))
    return attrs


_AVG_ATTRS = ("kernel", "stride", "padding", "ceil_mode", "count_include_pad",
              "divisor_override")

defop("avg_pool", arity=1, kind="window", attrs=_AVG_ATTRS,
      canon=_avg_canon, infer=_pool_infer("avg_pool"), ref=_avg_ref, vjp=_avg_vjp,
      decompose=_avg_decompose, float_only=True,
      domain=Domain(Operand("fi", ranks=(3, 4)), attrs=_avg_attrs),
      doc="mean over sliding windows (PyTorch's divisor rules)")


# --- avg_pool_grad: the gradient of avg_pool (its adjoint) -----------------------------------


def _avg_grad_canon(types, attrs):
    size = attrs.get("size")
    attrs = _avg_canon(types, attrs, "avg_pool_grad")
    attrs["size"] = None if size is None else tuple(int(n) for n in size)
    return attrs


def _avg_grad_infer(types, attrs):
    (g,) = types
    _kinds("avg_pool_grad", g, "f")
    check_spatial("avg_pool_grad", g)
    size = attrs["size"]
    if size is None:
        raise LaminaError("avg_pool_grad: size (the input's spatial shape) is required")
    if len(size) != g.ndim - 2:
        raise ShapeError(f"avg_pool_grad: size {list(size)} does not match the gradient {g}")
    x = TensorType(g.shape[:2] + tuple(size), g.dtype)
    y = _pool_infer("avg_pool_grad")([x], attrs)
    if y.shape != g.shape:
        raise ShapeError(f"avg_pool_grad: the gradient must be {y} (avg_pool's result for an "
                         f"input {x}), got {g}")
    return x


def _avg_grad_ref(g, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override,
                  size):
    attrs = _attrs_of(kernel, stride, padding, ceil_mode, count_include_pad=count_include_pad,
                      divisor_override=divisor_override)
    x_shape = g.shape[:2] + tuple(size)
    v = g / _divisor(x_shape, g.shape[2:], attrs).astype(g.dtype)
    return _place_ref([v] * math.prod(kernel), x_shape, attrs, g.dtype)


def _avg_grad_decompose(g, size, **attrs):
    x_shape = tuple(g.shape[:2]) + tuple(size)
    v = _divide(x_shape, g, attrs)
    return _untaps([v] * math.prod(attrs["kernel"]), x_shape, attrs)


def _avg_grad_vjp(h, out, g, size, **attrs):
    return (op.avg_pool(h, **attrs),)


defop("avg_pool_grad", arity=1, kind="window", attrs=_AVG_ATTRS + ("size",),
      canon=_avg_grad_canon, infer=_avg_grad_infer, ref=_avg_grad_ref, vjp=_avg_grad_vjp,
      decompose=_avg_grad_decompose, float_only=True, domain=Domain(None, via="lm.grad"),
      doc="avg_pool's input gradient: each window's gradient spread evenly over it")


# --- what backends need to know --------------------------------------------------------------

GRADS = ("max_pool_grad", "avg_pool_grad")


def tiling(attrs) -> bool:
    """Do the windows never overlap (stride at least the dilated kernel, on every axis)?
    Then every input element belongs to at most one window.

    >>> tiling({"kernel": (2, 2), "stride": (2, 2)}), tiling({"kernel": (3,), "stride": (2,)})
    (True, False)
    """
    r = len(attrs["kernel"])
    dil = attrs.get("dilation") or (1,) * r
    return all(s >= (k - 1) * d + 1 for k, s, d in zip(attrs["kernel"], attrs["stride"], dil))
