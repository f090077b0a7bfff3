"""Pooling over the spatial axes of ``[N, C, *spatial]`` (1-D or 2-D): ``max_pool`` and
``avg_pool``, with PyTorch's kernel / stride / padding / dilation / ceil_mode semantics.

Both are composites: one strided slice of the padded input per kernel tap, combined in tap
order (row-major), so the work is the output size times the taps and every backend runs them
as fused loops. ``max_pool`` keeps a running maximum that a tap replaces only when strictly
larger (or NaN), ``m = where((s > m) | (s != s), s, m)``: its value is the window's maximum
(NaN if any element is NaN) and its gradient goes, through the ``where`` chain, to the first
maximum of each window in scan order, as PyTorch's does. Padding reads as ``-inf`` for max and
``0`` for the average, whose divisor is PyTorch's (``count_include_pad``, ``ceil_mode``
windows clipped at the padded edge, ``divisor_override``) computed at trace time.
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


def _taps(x, attrs, out, fill):
    """One strided slice of the padded input per kernel tap (row-major tap order), each of
    the output's shape; padding reads as ``fill``."""
    r = x.ndim - 2
    N, C = x.shape[:2]
    dil = attrs.get("dilation", (1,) * r)
    lo, hi, used = [], [], []
    for i in range(r):
        a, b = _reach(x.shape[2 + i], out[i], attrs["kernel"][i], attrs["stride"][i],
                      attrs["padding"][i], dil[i])
        lo.append(a), hi.append(max(b, 0)), used.append(x.shape[2 + i] + min(b, 0))
    if used != list(x.shape[2:]):
        x = op.slice(x, start=(0,) * (r + 2), stop=(N, C, *used), step=(1,) * (r + 2))
    if any(lo) or any(hi):
        pad = {"lo": (0, 0, *lo), "hi": (0, 0, *hi), "interior": (0,) * (r + 2)}
        xp = op.pad(x, **pad)
        if fill != 0.0:
            b = x.builder
            inside = op.pad(b.var(b.constant(True, "bool", x.shape)), **pad)
            xp = op.where(inside, xp, fill)
        x = xp
    taps = []
    for tap in np.ndindex(*attrs["kernel"]):
        start = [tap[i] * dil[i] for i in range(r)]
        stop = [start[i] + (out[i] - 1) * attrs["stride"][i] + 1 for i in range(r)]
        taps.append(op.slice(x, start=(0, 0, *start), stop=(N, C, *stop),
                             step=(1, 1, *attrs["stride"])))
    return taps


# --- max_pool ---------------------------------------------------------------------------------


def _max_ref(x, kernel, stride, padding, dilation, ceil_mode):
    attrs = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                 ceil_mode=ceil_mode)
    out = [pool_out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                         ceil_mode) for i in range(x.ndim - 2)]
    win = _padded_ref(x, attrs, out, -np.inf)
    return win.max(axis=tuple(range(-len(kernel), 0)))


def _max_decompose(x, kernel, stride, padding, dilation, ceil_mode):
    attrs = dict(kernel=kernel, stride=stride, padding=padding, dilation=dilation,
                 ceil_mode=ceil_mode)
    taps = _taps(x, attrs, _sizes("max_pool", x.type, attrs), -math.inf)
    m = taps[0]
    for s in taps[1:]:
        # strictly larger (first maximum wins, as PyTorch) or NaN (propagates)
        m = op.where((s > m) | (s != s), s, m)
    return m


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


defop("max_pool", arity=1, kind="composite",
      attrs=("kernel", "stride", "padding", "dilation", "ceil_mode"),
      canon=_pool_canon("max_pool", True), infer=_pool_infer("max_pool"), ref=_max_ref,
      decompose=_max_decompose, float_only=True,
      domain=Domain(Operand("fi", ranks=(3, 4)), attrs=_pool_attrs(True)),
      doc="maximum over sliding windows (padding reads -inf; gradient to the first maximum)")


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


def _avg_canon(types, attrs):
    attrs = _pool_canon("avg_pool", False)(types, attrs)
    if attrs["kernel"] is None or not spatial_ok(types):
        return _raw(attrs, {"count_include_pad": True, "divisor_override": None})
    attrs["count_include_pad"] = bool(attrs.get("count_include_pad", True))
    d = attrs.get("divisor_override")
    attrs["divisor_override"] = None if d is None else int(d)
    if d is not None and attrs["divisor_override"] < 1:
        raise LaminaError(f"avg_pool: divisor_override must be positive, got {d}")
    return attrs


def _avg_ref(x, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override):
    attrs = dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad, divisor_override=divisor_override)
    out = [pool_out_size(x.shape[2 + i], kernel[i], stride[i], padding[i], 1, ceil_mode)
           for i in range(x.ndim - 2)]
    win = _padded_ref(x, attrs, out, 0)
    total = win.sum(axis=tuple(range(-len(kernel), 0)))
    return total / _divisor(x.shape, out, attrs).astype(x.dtype)


def _avg_decompose(x, kernel, stride, padding, ceil_mode, count_include_pad,
                   divisor_override):
    attrs = dict(kernel=kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                 count_include_pad=count_include_pad, divisor_override=divisor_override)
    out = _sizes("avg_pool", x.type, attrs)
    taps = _taps(x, attrs, out, 0.0)
    total = taps[0]
    for s in taps[1:]:
        total = total + s
    div = _divisor(x.shape, out, attrs)
    flat = div.reshape(-1)
    if flat.size and (flat == flat[0]).all():
        return total / float(flat[0])
    b = x.builder
    # one small literal per axis, multiplied out (exact: small integers)
    r = len(out)
    den = None
    for i, o in enumerate(out):
        c = _counts(x.shape[2 + i], o, kernel[i], stride[i], padding[i], count_include_pad)
        shape = tuple(o if j == i else 1 for j in range(r))
        v = b.var(b.constant(c.astype(x.dtype.np).reshape(shape), x.dtype, shape))
        den = v if den is None else den * v
    return total / den


def _avg_attrs(g, t):
    attrs = _pool_attrs(False)(g, t)
    if attrs is None:
        return None
    attrs["count_include_pad"] = bool(g.rng.random() < 0.6)
    attrs["divisor_override"] = None if g.rng.random() < 0.9 else int(g.rng.integers(1, 5))
    return attrs


defop("avg_pool", arity=1, kind="composite",
      attrs=("kernel", "stride", "padding", "ceil_mode", "count_include_pad",
             "divisor_override"),
      canon=_avg_canon, infer=_pool_infer("avg_pool"), ref=_avg_ref, decompose=_avg_decompose,
      float_only=True,
      domain=Domain(Operand("fi", ranks=(3, 4)), attrs=_avg_attrs),
      doc="mean over sliding windows (PyTorch's divisor rules)")
