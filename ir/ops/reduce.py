"""Reductions over axes: ``sum``, ``max``, ``min``, ``argmax`` and the composite ``mean``.

``axis`` is normalized to a sorted tuple of non-negative axes (``None`` means all), so
``sum {axis=[1], keepdims=false}`` prints the same however the user spelled it.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.builder import op
from lamina.ir.errors import ShapeError
from lamina.ir.ops.domain import Domain, Operand, reduce_attrs
from lamina.ir.ops.registry import ZERO_GRAD, defop
from lamina.ir.types import TensorType, normalize_axes, normalize_axis


def _axes_canon(types, attrs):
    attrs["axis"] = normalize_axes(attrs.get("axis"), types[0].ndim)
    attrs["keepdims"] = bool(attrs.get("keepdims", False))
    return attrs


def keep_shape(shape, axes) -> tuple[int, ...]:
    """``shape`` with the reduced ``axes`` set to 1 (the keepdims shape)."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def reduce_axes(n) -> tuple[int, ...]:
    """The axes a reduction node (sum, max, min, argmax) reduces, as a tuple (argmax with
    ``axis=None`` reduces every axis of the flattened tensor)."""
    a = n.attrs["axis"]
    if a is None:
        return tuple(range(len(n.inputs[0].shape)))
    return a if isinstance(a, tuple) else (a,)


def reduced_shape(shape, axes, keepdims) -> tuple[int, ...]:
    if keepdims:
        return keep_shape(shape, axes)
    return tuple(d for i, d in enumerate(shape) if i not in axes)


def _reduce_infer(name, dtype_rule):
    def infer(types, attrs):
        t = types[0]
        return TensorType(reduced_shape(t.shape, attrs["axis"], attrs["keepdims"]),
                          dtype_rule(name, t))

    return infer


def _sum_dtype(name, t):
    return dt.int64 if t.dtype.is_bool else t.dtype


def _minmax_dtype(name, t):
    # numpy raises on an empty max/min; so does the type rule, at trace time.
    return t.dtype


def _nonempty(name):
    def canon(types, attrs):
        attrs = _axes_canon(types, attrs)
        t = types[0]
        if any(t.shape[a] == 0 for a in attrs["axis"]):
            raise ShapeError(f"{name}: reduction over an empty axis of {t}")
        return attrs

    return canon


def _sum_vjp(g, out, x, axis, keepdims):
    return (g.reshape(keep_shape(x.shape, axis)).broadcast_to(x.shape),)


def _extremum_vjp(g, out, x, axis, keepdims):
    # The gradient goes to the elements equal to the result, split evenly among ties.
    keep = keep_shape(x.shape, axis)
    mask = x == out.reshape(keep)
    count = op.sum(mask.astype(g.dtype), axis=axis, keepdims=True)
    return (op.where(mask, g.reshape(keep) / count, 0.0),)


def _ref_reduce(fn):
    def ref(x, axis, keepdims):
        return fn(x, axis=axis, keepdims=keepdims)

    return ref


defop("sum", arity=1, kind="reduce", attrs=("axis", "keepdims"), canon=_axes_canon,
      infer=_reduce_infer("sum", _sum_dtype), ref=_ref_reduce(np.sum), vjp=_sum_vjp,
      domain=Domain(Operand("fib"), attrs=reduce_attrs()), doc="sum over axes")
defop("max", arity=1, kind="reduce", attrs=("axis", "keepdims"), canon=_nonempty("max"),
      infer=_reduce_infer("max", _minmax_dtype), ref=_ref_reduce(np.max), vjp=_extremum_vjp,
      domain=Domain(Operand("fib"), attrs=reduce_attrs(nonempty=True)),
      doc="maximum over axes")
defop("min", arity=1, kind="reduce", attrs=("axis", "keepdims"), canon=_nonempty("min"),
      infer=_reduce_infer("min", _minmax_dtype), ref=_ref_reduce(np.min), vjp=_extremum_vjp,
      domain=Domain(Operand("fib"), attrs=reduce_attrs(nonempty=True)),
      doc="minimum over axes")


# --- argmax: one axis, or None for the flattened tensor (as numpy) ---------------------------


def _argmax_canon(types, attrs):
    t = types[0]
    axis = attrs.get("axis")
    attrs["axis"] = None if axis is None else normalize_axis(axis, t.ndim)
    attrs["keepdims"] = bool(attrs.get("keepdims", False))
    if t.size == 0:
        raise ShapeError(f"argmax of an empty tensor {t}")
    return attrs


def _argmax_infer(types, attrs):
    t = types[0]
    axes = tuple(range(t.ndim)) if attrs["axis"] is None else (attrs["axis"],)
    return TensorType(reduced_shape(t.shape, axes, attrs["keepdims"]), dt.int64)


defop("argmax", arity=1, kind="reduce", attrs=("axis", "keepdims"), canon=_argmax_canon,
      infer=_argmax_infer, ref=lambda x, axis, keepdims: np.argmax(x, axis, keepdims=keepdims),
      vjp=ZERO_GRAD, domain=Domain(Operand("fib"), attrs=reduce_attrs(True, single=True)),
      doc="index of the maximum (first one on ties)")


# --- mean: a composite ------------------------------------------------------------------------


def _mean_infer(types, attrs):
    t = types[0]
    d = t.dtype if t.dtype.is_float else dt.DEFAULT_FLOAT
    return TensorType(reduced_shape(t.shape, attrs["axis"], attrs["keepdims"]), d)


def _mean_decompose(x, axis, keepdims):
    if not x.dtype.is_float:
        x = x.astype(dt.DEFAULT_FLOAT)
    n = math.prod(x.shape[a] for a in axis)
    return x.sum(axis=axis, keepdims=keepdims) * (1.0 / n)


def _mean_canon(types, attrs):
    attrs = _axes_canon(types, attrs)
    if any(types[0].shape[a] == 0 for a in attrs["axis"]):
        raise ShapeError(f"mean over an empty axis of {types[0]}")
    return attrs


def _mean_ref(x, axis, keepdims):
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float32)
    return np.mean(x, axis=axis, keepdims=keepdims)


defop("mean", arity=1, kind="composite", attrs=("axis", "keepdims"), canon=_mean_canon,
      infer=_mean_infer, ref=_mean_ref, decompose=_mean_decompose,
      domain=Domain(Operand("fib"), attrs=reduce_attrs(nonempty=True)), doc="arithmetic mean over axes (integers give the default float)")

