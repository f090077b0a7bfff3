"""Upsampling (resizing) of ``[N, C, L]`` and ``[N, C, H, W]`` tensors: PyTorch's
``F.interpolate`` in the modes "nearest", "nearest-exact", "linear" (3-D) and "bilinear" (4-D),
and the ``nn.Upsample`` layer.

No new op: each spatial axis is resized on its own from existing ops, so gradients come with
them. The source indices and weights depend only on the sizes, so they are constant arrays
computed here, in float32 as PyTorch's CPU kernels compute them (the same source index at the
same boundaries):

- nearest: ``src = min(floor(dst * scale), in - 1)`` (PyTorch's legacy 'nearest'), with
  ``scale = 1 / scale_factor`` when a scale factor is given and ``in / out`` otherwise (and, as
  PyTorch, ``src = dst`` when out = in and ``dst // 2`` when out = 2 in, whatever the factor). An
  integer factor (every source element repeated k times) is a reshape and a broadcast, the fast
  path of a CNN decoder (both axes in one); other sizes are one ``take`` with the index array.
- linear: ``src = (dst + 0.5) * scale - 0.5`` clamped at 0 (``align_corners=False``) or
  ``dst * (in - 1) / (out - 1)`` (``align_corners=True``); the result is
  ``take(x, i0) * (1 - t) + take(x, i1) * t`` with ``i0 = floor(src)``,
  ``i1 = min(i0 + 1, in - 1)``, ``t = src - i0``.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend.nn.module import Module
from lamina.frontend.ops import run
from lamina.frontend.trace import user_loc
from lamina.ir.errors import DTypeError, LaminaError, ShapeError

_MODES = ("nearest", "nearest-exact", "linear", "bilinear")
_LINEAR = {"linear": 1, "bilinear": 2}  # interpolating mode -> the spatial rank it needs


def _sizes(shape, r: int, size, scale_factor, recompute: bool | None):
    """(output sizes, the scale per axis the kernels use or None for in/out)."""
    fn = "interpolate"
    if (size is None) == (scale_factor is None):
        raise LaminaError(f"{fn}: give exactly one of size and scale_factor", user_loc())
    ins = shape[2:]
    if size is not None:
        out = (size,) * r if isinstance(size, (int, np.integer)) else tuple(size)
        if len(out) != r:
            raise ShapeError(f"{fn}: size {list(out)} must have {r} entries for an input of "
                             f"{r} spatial axes", user_loc())
        out = tuple(int(s) for s in out)
        if any(s <= 0 for s in out):
            raise ShapeError(f"{fn}: output sizes must be positive, got {list(out)}", user_loc())
        return out, (None,) * r
    sf = ((scale_factor,) * r if isinstance(scale_factor, (int, float, np.number))
          else tuple(scale_factor))
    if len(sf) != r:
        raise ShapeError(f"{fn}: scale_factor {list(sf)} must have {r} entries for an input of "
                         f"{r} spatial axes", user_loc())
    if any(not float(s) > 0 for s in sf):
        raise LaminaError(f"{fn}: scale factors must be positive, got {list(sf)}", user_loc())
    out = tuple(int(math.floor(float(n) * float(s))) for n, s in zip(ins, sf))
    if any(s <= 0 for s in out):
        raise ShapeError(f"{fn}: scale_factor {list(sf)} gives the empty output size "
                         f"{list(out)} for the spatial sizes {list(ins)}", user_loc())
    scales = (None,) * r if recompute else tuple(float(s) for s in sf)
    return out, scales


def _scale(n_in: int, n_out: int, factor, align_corners: bool) -> np.float32:
    if align_corners:
        return np.float32(n_in - 1) / np.float32(n_out - 1) if n_out > 1 else np.float32(0)
    if factor is not None:
        return np.float32(1.0 / factor)
    return np.float32(n_in) / np.float32(n_out)


def nearest_indices(n_in: int, n_out: int, factor=None, exact: bool = False) -> np.ndarray:
    """The source index of each output position, as PyTorch's 'nearest' ('nearest-exact' with
    ``exact``) computes it."""
    dst = np.arange(n_out)
    if not exact and n_out == n_in:  # PyTorch's special cases of the legacy mode
        return dst
    if not exact and n_out == 2 * n_in:
        return dst // 2
    scale = _scale(n_in, n_out, factor, False)
    if exact:  # (dst + 0.5) in double times the float scale, floored in float
        src = np.floor(((dst + 0.5) * np.float64(scale)).astype(np.float32))
    else:
        src = np.floor(dst.astype(np.float32) * scale)
    return np.minimum(src.astype(np.int64), n_in - 1)


def linear_weights(n_in: int, n_out: int, factor, align_corners: bool):
    """(i0, i1, t): output j is ``x[i0[j]] * (1 - t[j]) + x[i1[j]] * t[j]`` (PyTorch's)."""
    if n_in == n_out and not align_corners:
        idx = np.arange(n_out, dtype=np.int64)
        return idx, idx, np.zeros(n_out, np.float32)
    scale = _scale(n_in, n_out, factor, align_corners)
    dst = np.arange(n_out, dtype=np.float32)
    if align_corners:
        src = dst * scale
    else:
        src = np.maximum(scale * (dst + np.float32(0.5)) - np.float32(0.5), np.float32(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    t = np.clip(src - i0.astype(np.float32), 0, 1).astype(np.float32)
    return i0, i1, t


def _take(b, x, idx: np.ndarray, axis: int):
    return b.call("take", x, b.var(b.lift(idx)), axis=axis)


def _repeat(x, reps: dict):
    """Each element along each axis ``a`` in ``reps`` repeated ``reps[a]`` times, all axes in
    one reshape + broadcast + reshape."""
    split, wide, out = [], [], []
    for a, n in enumerate(x.shape):
        split.append(n), wide.append(n), out.append(n * reps.get(a, 1))
        if a in reps:
            split.append(1), wide.append(reps[a])
    return x.reshape(tuple(split)).broadcast_to(tuple(wide)).reshape(tuple(out))


def _integer_repeat(n_in: int, n_out: int, idx: np.ndarray) -> int | None:
    """k when ``idx`` repeats every source element k times, else None."""
    if n_out % n_in == 0 and np.array_equal(idx, np.arange(n_out) // (n_out // n_in)):
        return n_out // n_in
    return None


def _nearest(b, x, outs, factors, exact: bool):
    """Nearest resizing of the spatial axes: the axes with an integer factor in one repeat,
    the others a ``take`` each."""
    reps, gathers = {}, []
    for i, (n_out, fac) in enumerate(zip(outs, factors)):
        a, n_in = 2 + i, x.shape[2 + i]
        idx = nearest_indices(n_in, n_out, fac, exact)
        if n_out == n_in and np.array_equal(idx, np.arange(n_out)):
            continue
        k = _integer_repeat(n_in, n_out, idx)
        if k is not None:
            reps[a] = k
        else:
            gathers.append((a, idx))
    for a, idx in gathers:
        x = _take(b, x, idx, a)
    return _repeat(x, reps) if reps else x


def _linear_axis(b, x, axis: int, n_out: int, factor, align_corners: bool):
    i0, i1, t = linear_weights(x.shape[axis], n_out, factor, align_corners)
    if not t.any():
        same = n_out == x.shape[axis] and np.array_equal(i0, np.arange(n_out))
        return x if same else _take(b, x, i0, axis)
    shape = (n_out,) + (1,) * (x.ndim - axis - 1)
    w1 = b.var(b.lift(t.reshape(shape), x.dtype))
    w0 = b.var(b.lift((1 - t).reshape(shape), x.dtype))
    return _take(b, x, i0, axis) * w0 + _take(b, x, i1, axis) * w1


def interpolate(input, size=None, scale_factor=None, mode: str = "nearest",
                align_corners=None, recompute_scale_factor=None, antialias: bool = False):
    """PyTorch's ``F.interpolate`` for ``[N, C, L]`` ("nearest", "nearest-exact", "linear") and
    ``[N, C, H, W]`` ("nearest", "nearest-exact", "bilinear") inputs: resize the spatial axes to
    ``size`` or by ``scale_factor`` (output size ``floor(in * scale_factor)``). ``align_corners``
    (linear modes only, default False) maps the corner pixels' centres onto each other.

    >>> import numpy as np, lamina as lm
    >>> F = lm.nn.functional
    >>> F.interpolate(np.array([[[1.0, 2.0]]], np.float32), scale_factor=2)
    array([[[1., 1., 2., 2.]]], dtype=float32)
    >>> F.interpolate(np.array([[[1.0, 2.0]]], np.float32), size=3, mode="linear",
    ...               align_corners=True)
    array([[[1. , 1.5, 2. ]]], dtype=float32)
    """
    fn = "interpolate"
    if mode not in _MODES:
        raise LaminaError(f"{fn}: mode must be one of {', '.join(map(repr, _MODES))}, got "
                          f"{mode!r}", user_loc())
    if antialias:
        raise LaminaError(f"{fn}: antialias=True is not supported", user_loc())
    if mode not in _LINEAR and align_corners is not None:
        raise LaminaError(f"{fn}: align_corners can only be set with the interpolating modes "
                          f"'linear' and 'bilinear' (got mode {mode!r})", user_loc())
    align = bool(align_corners)

    def f(b, x):
        r = x.ndim - 2
        if r not in (1, 2):
            raise ShapeError(f"{fn}: the input must be [N, C, L] or [N, C, H, W], got {x.type}",
                             user_loc())
        if mode in _LINEAR and _LINEAR[mode] != r:
            want = "[N, C, L]" if mode == "linear" else "[N, C, H, W]"
            raise ShapeError(f"{fn}: mode {mode!r} needs a {want} input, got {x.type}"
                             + (" (use mode='bilinear')" if r == 2 else
                                " (use mode='linear')"), user_loc())
        if mode in _LINEAR and not (x.dtype.is_float):
            raise DTypeError(f"{fn}: mode {mode!r} needs a float input, got {x.type}",
                             user_loc())
        outs, factors = _sizes(x.shape, r, size, scale_factor, recompute_scale_factor)
        if mode not in _LINEAR:
            return _nearest(b, x, outs, factors, mode == "nearest-exact")
        for i, (n, fac) in reversed(list(enumerate(zip(outs, factors)))):  # W, then H
            x = _linear_axis(b, x, 2 + i, n, fac, align)
        return x

    return run(f, input)


class Upsample(Module):
    """PyTorch's ``nn.Upsample``: ``F.interpolate`` as a layer (no parameters).

    >>> from lamina import nn
    >>> nn.Upsample(scale_factor=2, mode="bilinear")
    Upsample(scale_factor=2.0, mode='bilinear')
    """

    def __init__(self, size=None, scale_factor=None, mode: str = "nearest",
                 align_corners=None, recompute_scale_factor=None):
        self.size = size
        self.scale_factor = (tuple(float(s) for s in scale_factor)
                             if isinstance(scale_factor, (tuple, list))
                             else float(scale_factor) if scale_factor is not None else None)
        self.mode, self.align_corners = mode, align_corners
        self.recompute_scale_factor = recompute_scale_factor

    def extra_repr(self) -> str:
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return info + f", mode={self.mode!r}"

    def __call__(self, x):
        return interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners,
                           self.recompute_scale_factor)
