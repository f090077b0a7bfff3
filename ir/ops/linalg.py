"""Contractions: batched ``matmul`` with numpy's broadcasting of the batch axes.

1-D operands are handled by the frontend (reshaped to matrices), so the primitive always sees
``(..., M, K) @ (..., K, N)``.
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import ShapeError
from lamina.ir.ops.domain import Domain, Operand, partner_shape
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import _kinds, same_dtype
from lamina.ir.types import TensorType, broadcast_shapes


def _matmul_infer(types, attrs):
    a, b = types
    d = same_dtype("matmul", types)
    _kinds("matmul", a, "fi")
    if a.ndim < 2 or b.ndim < 2:
        raise ShapeError(f"matmul: operands need at least 2 dimensions, got {a} and {b}")
    if a.shape[-1] != b.shape[-2]:
        raise ShapeError(f"matmul: contracting dimensions differ: {a} @ {b} "
                         f"({a.shape[-1]} != {b.shape[-2]})")
    try:
        batch = broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ShapeError:
        raise ShapeError(f"matmul: batch dimensions of {a} and {b} do not broadcast") from None
    return TensorType(batch + (a.shape[-2], b.shape[-1]), d)


def swap_last(x):
    """The transpose of the last two axes."""
    perm = tuple(range(x.ndim - 2)) + (x.ndim - 1, x.ndim - 2)
    return x.transpose(perm)


def _matmul_vjp(g, out, a, b):
    return g @ swap_last(b), swap_last(a) @ g


def _matmul_rest(g, a, attrs):
    # Operands as ``lm.matmul`` (``@``) takes them: 1-D vectors are matrices to the op.
    k = a.shape[-1]
    batch = partner_shape(g, a.shape[:-2]) if a.ndim > 2 and g.rng.random() < 0.7 else ()
    if a.ndim == 1 or g.rng.random() < 0.25:
        shape = (k,) if g.rng.random() < 0.5 else (k, g.dim())
    else:
        shape = batch + (k, g.dim())
    return [Operand("fi", shape=shape)]


defop("matmul", arity=2, kind="contract", infer=_matmul_infer, ref=np.matmul,
      vjp=_matmul_vjp, promote=(0, 1),
      domain=Domain(Operand("fi"), _matmul_rest, lambda g, t: {} if t.ndim else None),
      doc="matrix product over the last two axes")
