"""Composite ops of neural networks: ``gelu``, ``softmax``, ``log_softmax``, ``one_hot``.

They stay single nodes in the traced IR (readable dumps) and are expanded into primitives by
``passes.decompose`` before autodiff, so each needs only a decomposition, not a gradient rule.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.builder import op
from lamina.ir.errors import DTypeError, LaminaError
from lamina.ir.ops.elementwise import _erf
from lamina.ir.ops.domain import Domain, Operand, axis_attr, dtype_attr
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import unary
from lamina.ir.types import TensorType, normalize_axis

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_canon(types, attrs):
    approx = attrs.get("approximate", "tanh")
    if approx not in ("tanh", "none"):
        raise LaminaError(f"gelu: approximate must be 'tanh' or 'none', got {approx!r}")
    attrs["approximate"] = approx
    return attrs


def _gelu_ref(x, approximate):
    if approximate == "none":
        return (0.5 * x * (1 + _erf(x / np.sqrt(2).astype(x.dtype)))).astype(x.dtype)
    inner = np.asarray(_SQRT_2_OVER_PI, x.dtype) * (x + np.asarray(0.044715, x.dtype) * x ** 3)
    return (0.5 * x * (1 + np.tanh(inner))).astype(x.dtype)


def _gelu_decompose(x, approximate):
    if approximate == "none":
        return 0.5 * x * (1.0 + op.erf(x * (1 / math.sqrt(2.0))))
    return 0.5 * x * (1.0 + op.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * (x * x * x))))


defop("gelu", arity=1, kind="composite", attrs=("approximate",), canon=_gelu_canon,
      infer=unary("gelu", "f"), ref=_gelu_ref, decompose=_gelu_decompose, float_only=True,
      domain=Domain(Operand("fi"), attrs=lambda g, t: {
          "approximate": "none" if g.rng.random() < 0.4 else "tanh"}),
      doc="Gaussian error linear unit (tanh approximation unless approximate='none')")


def _axis_canon(types, attrs):
    attrs["axis"] = normalize_axis(int(attrs.get("axis", -1)), types[0].ndim)
    return attrs


def _softmax_ref(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax_ref(x, axis):
    s = x - x.max(axis=axis, keepdims=True)
    return s - np.log(np.exp(s).sum(axis=axis, keepdims=True))


def _shifted(x, axis):
    # Subtracting the max changes nothing mathematically; stop_gradient says so to autodiff.
    return x - op.stop_gradient(x.max(axis=axis, keepdims=True))


def _softmax_decompose(x, axis):
    e = op.exp(_shifted(x, axis))
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax_decompose(x, axis):
    s = _shifted(x, axis)
    return s - op.log(op.exp(s).sum(axis=axis, keepdims=True))


defop("softmax", arity=1, kind="composite", attrs=("axis",), canon=_axis_canon,
      infer=unary("softmax", "f"), ref=_softmax_ref, decompose=_softmax_decompose,
      float_only=True, domain=Domain(Operand("fi"), attrs=axis_attr), doc="exp(x) / sum(exp(x)) along axis, computed stably")
defop("log_softmax", arity=1, kind="composite", attrs=("axis",), canon=_axis_canon,
      infer=unary("log_softmax", "f"), ref=_log_softmax_ref, decompose=_log_softmax_decompose,
      float_only=True, domain=Domain(Operand("fi"), attrs=axis_attr), doc="x - logsumexp(x) along axis, computed stably")


def _one_hot_canon(types, attrs):
    attrs["num_classes"] = int(attrs["num_classes"])
    attrs["dtype"] = dt.dtype(attrs.get("dtype", dt.DEFAULT_FLOAT))
    if attrs["num_classes"] < 1:
        raise LaminaError(f"one_hot: num_classes must be positive, got {attrs['num_classes']}")
    return attrs


def _one_hot_infer(types, attrs):
    idx = types[0]
    if not idx.dtype.is_int:
        raise DTypeError(f"one_hot: labels must be integers, got {idx}")
    return TensorType(idx.shape + (attrs["num_classes"],), attrs["dtype"])


def _one_hot_ref(idx, num_classes, dtype):
    return (idx[..., None] == np.arange(num_classes)).astype(dtype.np)


def _one_hot_decompose(idx, num_classes, dtype):
    shape = idx.shape + (num_classes,)
    classes = idx.builder.var(idx.builder.emit(
        "iota", (), {"axis": len(shape) - 1, "dtype": idx.dtype, "shape": shape}))
    return (idx.reshape(idx.shape + (1,)) == classes).astype(dtype)


defop("one_hot", arity=1, kind="composite", attrs=("num_classes", "dtype"),
      canon=_one_hot_canon, infer=_one_hot_infer, ref=_one_hot_ref,
      decompose=_one_hot_decompose,
      domain=Domain(Operand("i", lo=0, hi=3), attrs=lambda g, t: {
          "num_classes": int(g.rng.integers(4, 7)), **dtype_attr()(g, t)}),
      doc="1 at the label's index along a new last axis, else 0")

