"""``Tensor``: the symbolic value user code manipulates while being traced.

A Tensor is an ``ir.Var`` (numpy-style operators that record ops) plus what users expect of an
array: indexing, iteration over the first axis, ``len``, and clear errors where a traced value
cannot behave like data (``if x > 0:``, ``float(x)``, ``np.asarray(x)``).
"""

from __future__ import annotations

import numpy as np

from lamina.frontend import ops
from lamina.frontend.trace import user_loc
from lamina.ir.builder import Var
from lamina.ir.errors import LaminaError, ShapeError, TraceError


class Tensor(Var):
    """A traced tensor. Use it like a numpy array inside ``lm.compile``/``lm.trace``.

    >>> import numpy as np, lamina as lm
    >>> def f(x):
    ...     return (x[1:, ::2] * 2).sum(axis=0)
    >>> lm.compile(f)(np.arange(12, dtype=np.float32).reshape(3, 4))
    array([24., 32.], dtype=float32)
    """

    __slots__ = ()

    # --- things a traced value cannot do -----------------------------------------------------

    def _no_value(self, what: str):
        raise TraceError(
            f"{what} needs the value of a traced tensor ({self.type}), which is not known "
            "while tracing; compute with lamina ops instead (e.g. lm.where for a branch)",
            user_loc())

    def __bool__(self) -> bool:  # noqa: PLE0304 - it always raises
        self._no_value("Python `if`/`while`/`and`/`or` on a tensor")

    def __float__(self):
        self._no_value("float()")

    def __int__(self):
        self._no_value("int()")

    def __index__(self) -> int:  # noqa: PLE0305 - it always raises
        self._no_value("using a tensor as a Python index")

    def __array__(self, dtype=None, copy=None):
        self._no_value("converting to a numpy array")

    def item(self):
        self._no_value(".item()")

    def numpy(self):
        self._no_value(".numpy()")

    def __setitem__(self, key, value):
        raise TraceError("tensors are immutable: build a new one (e.g. with lm.where or "
                         "lm.concatenate) instead of assigning into it", user_loc())

    # --- sequence protocol over the first axis ----------------------------------------------

    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self.shape[0]

    def __iter__(self):
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d tensor")
        return (self[i] for i in range(self.shape[0]))

    def __getitem__(self, key):
        return index(self, key)

    # --- more numpy methods ---------------------------------------------------------------

    def flatten(self):
        return self.reshape(-1)

    def squeeze(self, axis=None):
        return ops.squeeze(self, axis)

    def clip(self, min=None, max=None):
        return ops.clip(self, min, max)

    def var(self, axis=None, keepdims=False):
        return ops.var(self, axis, keepdims)

    def std(self, axis=None, keepdims=False):
        return ops.std(self, axis, keepdims)

    def masked_fill(self, mask, value):
        return ops.masked_fill(self, mask, value)

    def cumsum(self, axis=None, dtype=None):
        return ops.cumsum(self, axis, dtype=dtype)

    def round(self, decimals: int = 0):
        return ops.round(self, decimals)

    def __round__(self, ndigits=None):
        return ops.round(self, ndigits or 0)

    def swapaxes(self, a: int, b: int):
        perm = list(range(self.ndim))
        perm[a], perm[b] = perm[b], perm[a]
        return self.transpose(perm)

    def __repr__(self) -> str:
        return f"Tensor({self.type}, traced)"


# --- indexing ---------------------------------------------------------------------------------


def index(x: Tensor, key):
    """numpy basic indexing (ints, slices with positive steps, None, ...) and one integer-array
    index along an axis (a gather)."""
    if not isinstance(key, tuple):
        key = (key,)
    arrays = [i for i, k in enumerate(key) if _is_array_index(k)]
    if arrays:
        return _gather(x, key, arrays)
    key = _expand_ellipsis(key, x.ndim)
    start, stop, step, out_shape = [], [], [], []
    axis = 0
    for k in key:
        if k is None:
            out_shape.append(1)
            continue
        if axis >= x.ndim:
            raise ShapeError(f"too many indices for a tensor of rank {x.ndim}", user_loc())
        n = x.shape[axis]
        if isinstance(k, slice):
            s, e, st = k.indices(n)
            if st < 0:
                raise ShapeError("negative slice steps are not supported (yet)", user_loc())
            e = max(e, s)
            start.append(s), stop.append(e), step.append(st)
            out_shape.append(len(range(s, e, st)))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            i = int(k)
            if not -n <= i < n:
                raise ShapeError(f"index {i} is out of bounds for axis {axis} with size {n}",
                                 user_loc())
            i %= n
            start.append(i), stop.append(i + 1), step.append(1)
        else:
            raise TraceError(f"unsupported index {k!r} (lamina supports ints, slices, None, "
                             "... and one integer-array index)", user_loc())
        axis += 1
    for a in range(axis, x.ndim):  # trailing axes not named by the key
        start.append(0), stop.append(x.shape[a]), step.append(1)
        out_shape.append(x.shape[a])
    y = x
    if tuple(start) != (0,) * x.ndim or tuple(stop) != x.shape or any(s != 1 for s in step):
        y = x._call("slice", x, start=start, stop=stop, step=step)
    if tuple(out_shape) != y.shape:
        y = y.reshape(out_shape)
    return y


def _is_array_index(k) -> bool:
    return isinstance(k, (Var, np.ndarray, list))


def _expand_ellipsis(key: tuple, ndim: int) -> tuple:
    n_ell = sum(1 for k in key if k is Ellipsis)
    if n_ell > 1:
        raise ShapeError("an index can only have a single ellipsis ('...')", user_loc())
    if n_ell == 0:
        return key
    used = sum(1 for k in key if k is not None and k is not Ellipsis)
    i = next(j for j, k in enumerate(key) if k is Ellipsis)  # no ==: tensors compare lazily
    return key[:i] + (slice(None),) * max(0, ndim - used) + key[i + 1:]


_MASK_HELP = ("a boolean mask selects a number of elements that depends on the mask's values, "
              "so the result has no static shape; keep the shape with lm.where(mask, x, 0), "
              "(x * mask).sum() or lm.masked_fill(x, ~mask, value) (x.masked_fill(...)), or "
              "select with a constant numpy bool array known while tracing")


def _is_bool_mask(k) -> bool:
    if isinstance(k, Var):
        return k.dtype.is_bool
    if isinstance(k, (np.ndarray, list)):
        return np.asarray(k).dtype == np.bool_
    return False


def _gather(x: Tensor, key: tuple, arrays: list[int]):
    key = _expand_ellipsis(key, x.ndim)
    arrays = [i for i, k in enumerate(key) if _is_array_index(k)]
    masks = [i for i in arrays if _is_bool_mask(key[i])]
    if any(isinstance(key[i], Var) for i in masks):
        m = next(key[i] for i in masks if isinstance(key[i], Var))
        raise TraceError(f"x[mask] with a traced boolean mask ({m.type}): {_MASK_HELP}",
                         user_loc())
    if masks:
        return _select_constant_mask(x, key, arrays)
    full = all(isinstance(k, slice) and (k.start, k.stop, k.step) == (None, None, None)
               for i, k in enumerate(key) if i not in arrays)
    if len(arrays) != 1 or not full or any(k is None for k in key):
        raise TraceError("lamina supports one integer-array index with ':' on the other axes "
                         "(x[idx] or x[:, idx]); use lm.take for more", user_loc())
    idx = key[arrays[0]]
    if isinstance(idx, (np.ndarray, list)):
        idx = np.asarray(idx)
    elif not idx.dtype.is_int:
        raise LaminaError(f"array indices must be integers, got {idx.type}", user_loc())
    return x._call("take", x, idx, axis=arrays[0])


def _select_constant_mask(x: Tensor, key: tuple, arrays: list[int]):
    """``x[..., mask, ...]`` with a numpy bool ``mask`` (numpy semantics): the mask's axes
    become one axis holding the selected elements in row-major order, a ``take`` with the
    constant indices ``flatnonzero(mask)``."""
    a = arrays[0]
    full = all(isinstance(k, slice) and (k.start, k.stop, k.step) == (None, None, None)
               for i, k in enumerate(key) if i != a)
    if len(arrays) != 1 or not full:
        raise TraceError("lamina supports one boolean-mask index with ':' on the other axes "
                         "(x[mask] or x[:, mask])", user_loc())
    mask = np.asarray(key[a])
    k = mask.ndim
    if k == 0:
        raise TraceError("a 0-d boolean index (x[True]) is not supported; use "
                         "x[None] or lm.where", user_loc())
    if x.shape[a:a + k] != mask.shape:
        raise ShapeError(f"boolean index of shape {list(mask.shape)} does not match the "
                         f"indexed axes {list(x.shape[a:a + k])} of {x.type} (from axis {a})",
                         user_loc())
    idx = np.flatnonzero(mask)
    y = x.reshape(x.shape[:a] + (int(mask.size),) + x.shape[a + k:]) if k != 1 else x
    if idx.size == 0:  # take cannot produce an empty axis from indices: slice instead
        return index(y, (slice(None),) * a + (slice(0, 0),))
    if idx.size == mask.size:
        return y
    return y._call("take", y, idx, axis=a)

