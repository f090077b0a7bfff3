"""Padding in the public API: ``lm.pad`` (numpy's ``np.pad`` convention) and
``nn.functional.pad`` (PyTorch's), both built on two IR ops: ``pad`` (zeros around the data)
for the constant mode, with a ``where`` over a padded mask for other fill values, and ``take``
with constant index arrays, one per padded axis, for the modes that copy elements (edge,
reflect, symmetric, wrap). Their gradients follow: a slice of the cotangent, and a
``scatter_add`` that sums what each element was copied to.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend.trace import user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Var
from lamina.ir.errors import LaminaError

# numpy's names, with PyTorch's as aliases
MODES = {"constant": "constant", "edge": "edge", "replicate": "edge", "reflect": "reflect",
         "symmetric": "symmetric", "wrap": "wrap", "circular": "wrap"}


def _error(msg: str) -> LaminaError:
    return LaminaError(msg, user_loc())


def _pairs(pad_width, ndim: int) -> list[tuple[int, int]]:
    """numpy's pad_width: an int, a (before, after) pair, or one pair per axis."""
    arr = None if isinstance(pad_width, Var) else np.asarray(pad_width)
    if arr is None or arr.dtype.kind not in "iu":
        raise _error(f"pad: pad_width must be Python ints, got {pad_width!r}")
    try:
        arr = np.broadcast_to(arr, (ndim, 2))
    except ValueError:
        raise _error(f"pad: pad_width {pad_width!r} does not fit a tensor of rank {ndim}: give "
                     f"an int, a (before, after) pair or {ndim} pairs") from None
    if (arr < 0).any():
        raise _error(f"pad: negative pad widths in {pad_width!r} (slice to crop)")
    return [(int(a), int(b)) for a, b in arr]


def source_index(n: int, lo: int, hi: int, mode: str) -> np.ndarray:
    """For each position of an axis of size ``n`` padded by ``lo``/``hi``, the position of the
    element it copies (``n`` > 0). Pads wider than the axis repeat the pattern, as numpy does."""
    p = np.arange(-lo, n + hi, dtype=np.int64)
    if mode == "edge" or (mode == "reflect" and n == 1):
        return np.clip(p, 0, n - 1)
    if mode == "wrap":
        return p % n
    if mode == "reflect":  # ... 2 1 | 0 1 2 ... n-1 | n-2 ...: period 2(n - 1)
        q = p % (2 * (n - 1))
        return np.where(q < n, q, 2 * (n - 1) - q)
    q = p % (2 * n)  # symmetric: ... 1 0 | 0 1 ... n-1 | n-1 n-2 ...: period 2n
    return np.where(q < n, q, 2 * n - 1 - q)


def _fill(b, v, value):
    """The constant fill as a scalar of ``v``'s dtype (numpy casts it the same way)."""
    if isinstance(value, Var):
        if value.ndim != 0:
            raise _error(f"pad: the fill value must be a scalar, got {value.type}")
        return b.cast(value, v.dtype)
    if isinstance(value, (bool, int, float, np.generic)) or (
            isinstance(value, np.ndarray) and value.ndim == 0):
        return np.asarray(value).astype(v.dtype.np).item()
    raise _error(f"pad: the fill value must be a number, got {value!r}")


def _is_plain_zero(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool) and value == 0
            and math.copysign(1.0, value) > 0)


def padded(b, v: Var, pairs: list[tuple[int, int]], mode: str, value=0) -> Var:
    """``v`` padded by ``pairs`` (non-negative (before, after) per axis) in a numpy mode."""
    if mode not in MODES:
        raise _error(f"pad: unknown mode {mode!r}; lamina supports "
                     f"{', '.join(repr(m) for m in MODES)}")
    mode = MODES[mode]
    if all(lo == hi == 0 for lo, hi in pairs):
        return v
    if mode == "constant":
        lo, hi = [p[0] for p in pairs], [p[1] for p in pairs]
        zeros = (0,) * v.ndim
        y = b.call("pad", v, lo=lo, hi=hi, interior=zeros)
        if _is_plain_zero(value) or (v.dtype.is_bool and value is False):
            return y
        inside = b.var(b.constant(True, dt.bool_, v.shape))
        mask = b.call("pad", inside, lo=lo, hi=hi, interior=zeros)
        return b.call("where", mask, y, _fill(b, v, value))
    y = v
    for axis, (lo, hi) in enumerate(pairs):
        if lo == hi == 0:
            continue
        n = v.shape[axis]
        if n == 0:
            raise _error(f"pad: cannot extend the empty axis {axis} of {v.type} in mode "
                         f"{mode!r} (only 'constant' can)")
        idx = source_index(n, lo, hi, mode)
        y = b.call("take", y, idx, axis=axis)
    return y


def pad_numpy(b, v: Var, pad_width, mode: str, value) -> Var:
    """``lm.pad``: numpy's convention."""
    return padded(b, v, _pairs(pad_width, v.ndim), mode, value)


def pad_torch(b, v: Var, pad, mode: str, value) -> Var:
    """``nn.functional.pad``: PyTorch's convention. ``pad`` lists (left, right) pairs from the
    last axis backwards; negative widths crop (constant mode); reflect needs each width below
    the axis' size, circular at most the size (PyTorch's rules)."""
    if isinstance(pad, (int, np.integer)) or isinstance(pad, Var):
        raise _error(f"pad: pad must be a tuple of ints, got {pad!r}")
    pad = list(pad)
    if any(isinstance(p, bool) or not isinstance(p, (int, np.integer)) for p in pad):
        raise _error(f"pad: pad must be a tuple of ints, got {tuple(pad)!r}")
    if len(pad) % 2 or len(pad) // 2 > v.ndim:
        raise _error(f"pad: pad needs an even number of values, at most two per axis of "
                     f"{v.type}; got {len(pad)}")
    if mode not in ("constant", "reflect", "replicate", "circular"):
        raise _error(f"pad: mode must be 'constant', 'reflect', 'replicate' or 'circular' "
                     f"(PyTorch's names), got {mode!r}")
    pairs = [(0, 0)] * v.ndim
    for k in range(len(pad) // 2):
        pairs[v.ndim - 1 - k] = (int(pad[2 * k]), int(pad[2 * k + 1]))
    if mode == "constant":
        # negative widths crop first, as PyTorch does
        if any(lo < 0 or hi < 0 for lo, hi in pairs):
            start = [max(0, -lo) for lo, _ in pairs]
            stop = [n - max(0, -hi) for n, (_, hi) in zip(v.shape, pairs)]
            if any(e < s for s, e in zip(start, stop)):
                raise _error(f"pad: negative padding {tuple(pad)} crops more than {v.type} "
                             "holds")
            v = b.call("slice", v, start=start, stop=stop, step=[1] * v.ndim)
            pairs = [(max(lo, 0), max(hi, 0)) for lo, hi in pairs]
        return padded(b, v, pairs, "constant", 0 if value is None else value)
    if value not in (None, 0):
        raise _error(f"pad: a fill value applies to mode 'constant' only, not {mode!r}")
    for axis, (lo, hi) in enumerate(pairs):
        n = v.shape[axis]
        if lo < 0 or hi < 0:
            raise _error(f"pad: negative padding {(lo, hi)} of axis {axis} in mode {mode!r} "
                         "(only 'constant' crops)")
        if mode == "reflect" and max(lo, hi) >= n and (lo or hi):
            raise _error(f"pad: reflect padding {(lo, hi)} of axis {axis} must be less than "
                         f"its size {n} (input {v.type})")
        if mode == "circular" and max(lo, hi) > n:
            raise _error(f"pad: circular padding {(lo, hi)} of axis {axis} wraps around more "
                         f"than once (size {n}, input {v.type})")
    return padded(b, v, pairs, {"replicate": "edge", "circular": "wrap"}.get(mode, mode), 0)
