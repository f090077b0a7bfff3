"""Scans: ``cumsum``, the running sum along one axis (numpy's and PyTorch's ``cumsum``).

A primitive of its own kind (``scan``) rather than a decomposition: a triangular matmul would
cost O(n^2) along the axis, a scan costs O(n). Backends run it as one kernel per scan (its
producers fused in): a sequential sweep per row on the CPU, ``tl.cumsum`` on Triton.
``reverse=True`` sums from the end (suffix sums, JAX's ``lax.cumsum``): the gradient of one
direction is the scan of the cotangent in the other.
"""

from __future__ import annotations

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.builder import op
from lamina.ir.ops.domain import Domain, Operand
from lamina.ir.ops.registry import defop
from lamina.ir.types import TensorType, normalize_axis


def _cumsum_canon(types, attrs):
    axis = attrs.get("axis", 0)
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        raise ValueError(f"cumsum: axis must be an int, got {axis!r}")
    attrs["axis"] = normalize_axis(int(axis), types[0].ndim)  # a 0-d tensor has no axis
    attrs["reverse"] = bool(attrs.get("reverse", False))
    return attrs


def cumsum_dtype(d: dt.DType) -> dt.DType:
    """numpy's (and PyTorch's) result dtype: integers and bools accumulate in int64."""
    return d if d.is_float else dt.int64


def _cumsum_infer(types, attrs):
    t = types[0]
    return TensorType(t.shape, cumsum_dtype(t.dtype))


def _cumsum_ref(x, axis, reverse):
    d = cumsum_dtype(dt.dtype(x.dtype)).np
    if not reverse:
        return np.cumsum(x, axis=axis, dtype=d)
    return np.flip(np.cumsum(np.flip(x, axis), axis=axis, dtype=d), axis)


def _cumsum_vjp(g, out, x, axis, reverse):
    return (op.cumsum(g, axis=axis, reverse=not reverse),)


def _cumsum_attrs(g, t):
    if t.ndim == 0:
        return None
    a = int(g.rng.integers(t.ndim))
    return {"axis": a - t.ndim if g.rng.random() < 0.3 else a,
            "reverse": bool(g.rng.random() < 0.25)}


defop("cumsum", arity=1, kind="scan", attrs=("axis", "reverse"), canon=_cumsum_canon,
      infer=_cumsum_infer, ref=_cumsum_ref, vjp=_cumsum_vjp,
      domain=Domain(Operand("fib"), attrs=_cumsum_attrs),
      doc="running sum along axis (from the end if reverse); integers accumulate in int64")
