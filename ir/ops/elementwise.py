"""Elementwise ops: unary math, binary arithmetic with numpy broadcasting, comparisons, logic,
``where`` and ``cast``. Binary ops take operands of one dtype (``Builder.call`` inserts casts)."""

from __future__ import annotations

import math

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.builder import op
from lamina.ir.errors import DTypeError
from lamina.ir.ops.domain import Domain, Operand, broadcasting, dtype_attr
from lamina.ir.ops.registry import ZERO_GRAD, defop
from lamina.ir.ops.rules import binary, broadcast, same_dtype, unary
from lamina.ir.types import TensorType

# --- unary ------------------------------------------------------------------------------------


def _sigmoid(x):
    # Stable on both sides: never exponentiates a large positive number.
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _softplus(x):
    return np.logaddexp(np.zeros((), x.dtype), x)


_erf_scalar = np.frompyfunc(math.erf, 1, 1)


def _erf(x):
    return np.asarray(_erf_scalar(x), dtype=x.dtype)  # frompyfunc gives a float for 0-d input


def _rsqrt(x):
    with np.errstate(divide="ignore"):
        return (1 / np.sqrt(x)).astype(x.dtype)


def _log(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(x)


def _sqrt(x):
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


def _exp(x):
    with np.errstate(over="ignore"):
        return np.exp(x)


def _unary(name, ref, vjp, allowed="f", doc="", domain=None):
    # Float-only ops take integers too (Builder.call casts them to the default float).
    domain = domain or Domain(Operand("fi"), ulps=1 if allowed == "fi" else _MATH_ULPS)
    defop(name, arity=1, kind="elementwise", infer=unary(name, allowed), ref=ref, vjp=vjp,
          float_only=allowed == "f", domain=domain, doc=doc)


# Approximated math (exp, log, tanh, ...): the CPU backend is within 1-3 ulp of the correctly
# rounded result (backends/llvm/mathlib.py), Triton's interpreter (numpy's float32 exp and log)
# within 6 (softplus), GPU math libraries within a few. NOTE: the allowance counts units of
# 2**-24 * |result|, which is between one half and one ulp of the result: 16 covers 8 ulps.
_MATH_ULPS = 16

_unary("neg", np.negative, lambda g, out, x: (-g,), "fi", "-x")
_unary("abs", np.abs, lambda g, out, x: (g * op.sign(x),), "fi", "|x|")
_unary("sign", np.sign, ZERO_GRAD, "fi", "-1, 0 or 1")
_unary("exp", _exp, lambda g, out, x: (g * out,), doc="e**x",
       domain=Domain(Operand("fi", hi=8.0), ulps=_MATH_ULPS))
_unary("log", _log, lambda g, out, x: (g / x,), doc="natural logarithm",
       domain=Domain(Operand("fi", lo=0.05), ulps=_MATH_ULPS))
_unary("sqrt", _sqrt, lambda g, out, x: (g * 0.5 / out,), doc="square root",
       domain=Domain(Operand("fi", lo=0.01), ulps=4))
_unary("rsqrt", _rsqrt, lambda g, out, x: (g * -0.5 * out * out * out,), doc="1/sqrt(x)",
       domain=Domain(Operand("fi", lo=0.05), ulps=4))
_unary("tanh", np.tanh, lambda g, out, x: (g * (1 - out * out),), doc="hyperbolic tangent")
_unary("sigmoid", _sigmoid, lambda g, out, x: (g * out * (1 - out),), doc="1/(1+e**-x)")
_unary("softplus", _softplus, lambda g, out, x: (g * op.sigmoid(x),), doc="log(1+e**x)")
_unary("relu", lambda x: np.maximum(x, 0).astype(x.dtype),
       # out > 0 exactly where x > 0; using out leaves x to its one user, so fusion can
       # fold matmul + bias + relu into one kernel.
       lambda g, out, x: (op.where(out > 0, g, 0.0),), doc="max(x, 0)",
       domain=Domain(Operand("fi")))
_unary("erf", _erf, lambda g, out, x: (g * (2 / math.sqrt(math.pi)) * op.exp(-(x * x)),),
       doc="the error function")

# --- trigonometry and rounding ---------------------------------------------------------------


def _trig(fn):
    def ref(x):
        with np.errstate(invalid="ignore"):  # sin(inf) is NaN, as IEEE says
            return fn(x)

    return ref


def _round_ref(x):
    return np.round(x)  # half to even (numpy's rint); integers are returned unchanged


# sin/cos: the CPU backend reduces the argument exactly (any float32, see backends/llvm/trig.py)
# and is within 1 ulp; the domain keeps to the range models use (angles, timestep embeddings).
_TRIG = Domain(Operand("fi", lo=-100.0, hi=100.0), ulps=_MATH_ULPS)
_unary("sin", _trig(np.sin), lambda g, out, x: (g * op.cos(x),), doc="sine (radians)",
       domain=_TRIG)
_unary("cos", _trig(np.cos), lambda g, out, x: (-(g * op.sin(x)),), doc="cosine (radians)",
       domain=_TRIG)
# floor, ceil, round: piecewise constant, so no cotangent flows through them (as in JAX and
# PyTorch); integers pass through unchanged (numpy 2 and PyTorch keep their dtype).
_ROUNDING = Domain(Operand("fi", lo=-10.0, hi=10.0))
_unary("floor", np.floor, ZERO_GRAD, "fi", "the largest integer <= x", domain=_ROUNDING)
_unary("ceil", np.ceil, ZERO_GRAD, "fi", "the smallest integer >= x", domain=_ROUNDING)
_unary("round", _round_ref, ZERO_GRAD, "fi", "the nearest integer, halves to even",
       domain=_ROUNDING)

# --- binary arithmetic ------------------------------------------------------------------------


def _div(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.true_divide(x, y)


def _pow(x, y):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.power(x, y)


def _max_vjp(g, out, x, y):
    # Ties split the gradient evenly between the operands (as JAX does).
    half = op.where(x == y, g * 0.5, 0.0)
    return op.where(x > y, g, 0.0) + half, op.where(y > x, g, 0.0) + half


def _min_vjp(g, out, x, y):
    half = op.where(x == y, g * 0.5, 0.0)
    return op.where(x < y, g, 0.0) + half, op.where(y < x, g, 0.0) + half


def _pow_vjp(g, out, x, y):
    # d/dy x**y = x**y * log(x): only emitted when y needs a gradient (dead otherwise).
    return g * y * x ** (y - 1), g * out * op.log(x)


_COMMUTATIVE = {"add", "mul", "maximum", "minimum", "eq", "ne", "logical_and", "logical_or"}


def _binary(name, ref, vjp, allowed="fi", doc="", domain=None):
    domain = domain or Domain(Operand("fi"), broadcasting(Operand("fi")))
    defop(name, arity=2, kind="elementwise", infer=binary(name, allowed), ref=ref, vjp=vjp,
          promote=(0, 1), float_only=allowed == "f", commutative=name in _COMMUTATIVE,
          domain=domain, doc=doc)


_binary("add", np.add, lambda g, out, x, y: (g, g), doc="x + y")
_binary("sub", np.subtract, lambda g, out, x, y: (g, -g), doc="x - y")
_binary("mul", np.multiply, lambda g, out, x, y: (g * y, g * x), doc="x * y")
# A division may be computed as a reciprocal and a product (two roundings).
_binary("div", _div, lambda g, out, x, y: (g / y, -g * out / y), "f", "x / y",
        domain=Domain(Operand("fi"), broadcasting(Operand("fi", min_abs=0.25)), ulps=2))
_binary("pow", _pow, _pow_vjp, "f", "x ** y",
        domain=Domain(Operand("fi", lo=0.1, hi=4.0),
                      broadcasting(Operand("f", lo=-3.0, hi=3.0)), ulps=_MATH_ULPS))
# numpy's floor division and remainder (``//`` and ``%``): the remainder has the sign of the
# divisor and x == y * (x // y) + x % y. Integer division by zero gives 0 for both (numpy's
# result; it warns, lamina does not), and x // -1 wraps for the most negative integer as numpy.
_DIVISOR = Domain(Operand("fi"), broadcasting(Operand("fi", min_abs=0.25)), ulps=2)


def _floor_divide(x, y):
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return np.floor_divide(x, y)


def _remainder(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.remainder(x, y)


_binary("floor_divide", _floor_divide, ZERO_GRAD, doc="x // y: floor(x / y)", domain=_DIVISOR)
_binary("remainder", _remainder,
        lambda g, out, x, y: (g, -(g * op.floor_divide(x, y))),
        doc="x % y: x - y * floor(x / y), the sign of y", domain=_DIVISOR)
_binary("maximum", np.maximum, _max_vjp, doc="elementwise max")
_binary("minimum", np.minimum, _min_vjp, doc="elementwise min")

# --- comparisons and logic (bool results, zero gradient) --------------------------------------

for _name, _ref in [("eq", np.equal), ("ne", np.not_equal), ("lt", np.less),
                    ("le", np.less_equal), ("gt", np.greater), ("ge", np.greater_equal)]:
    defop(_name, arity=2, kind="elementwise", infer=binary(_name, "fib", dt.bool_), ref=_ref,
          vjp=ZERO_GRAD, promote=(0, 1), commutative=_name in _COMMUTATIVE,
          domain=Domain(Operand("fib"), broadcasting(Operand("fib"))),
          doc=f"np.{_ref.__name__}")

defop("logical_and", arity=2, kind="elementwise", infer=binary("logical_and", "b"),
      ref=np.logical_and, vjp=ZERO_GRAD, commutative=True,
      domain=Domain(Operand("b"), broadcasting(Operand("b"))), doc="x & y on bools")
defop("logical_or", arity=2, kind="elementwise", infer=binary("logical_or", "b"),
      ref=np.logical_or, vjp=ZERO_GRAD, commutative=True,
      domain=Domain(Operand("b"), broadcasting(Operand("b"))), doc="x | y on bools")
defop("logical_not", arity=1, kind="elementwise", infer=unary("logical_not", "b"),
      ref=np.logical_not, vjp=ZERO_GRAD, domain=Domain(Operand("b")), doc="~x on bools")

# --- where and cast ---------------------------------------------------------------------------


def _where_infer(types, attrs):
    cond, a, b = types
    if not cond.dtype.is_bool:
        raise DTypeError(f"where: the condition must be bool, got {cond}")
    d = same_dtype("where", [a, b])
    return TensorType(broadcast("where", types), d)


defop("where", arity=3, kind="elementwise", infer=_where_infer, ref=np.where,
      vjp=lambda g, out, c, a, b: (None, op.where(c, g, 0.0), op.where(c, 0.0, g)),
      promote=(1, 2), domain=Domain(Operand("b"), broadcasting(Operand("fib"), Operand("fib"))),
      doc="a where cond else b")


def _cast_canon(types, attrs):
    attrs["dtype"] = dt.dtype(attrs["dtype"])
    return attrs


def _cast_vjp(g, out, x, dtype):
    return (g.astype(x.dtype) if x.dtype.is_float else None,)


def _cast_ref(x, dtype):
    return x.astype(dtype.np)


defop("cast", arity=1, kind="elementwise", attrs=("dtype",), canon=_cast_canon,
      infer=lambda types, attrs: types[0].with_dtype(attrs["dtype"]), ref=_cast_ref,
      vjp=_cast_vjp, domain=Domain(Operand("fib", lo=-1e6, hi=1e6), attrs=dtype_attr()),
      doc="x.astype(dtype)")

# --- identities with a meaning for autodiff ---------------------------------------------------

defop("alias", arity=1, kind="elementwise", infer=lambda types, attrs: types[0],
      ref=lambda x: x, vjp=lambda g, out, x: (g,), domain=Domain(via="lm.grad"),
      doc="identity; gives lm.grad's argument its own value so closures stay constant")
defop("stop_gradient", arity=1, kind="elementwise", infer=lambda types, attrs: types[0],
      ref=lambda x: x, vjp=ZERO_GRAD, domain=Domain(Operand("fib")),
      doc="identity whose gradient is zero")

