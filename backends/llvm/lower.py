"""Scalar lowering of elementwise ops for the CPU backend.

One function per op, ``lower_<op>(cx, node, *args) -> ir.Value``, registered in ``LOWER``.
``args`` arrive in the op's compute type (bool is ``i1``, floats and ints as themselves); the
result is in the node's compute type. Transcendentals come from ``mathlib`` (inline polynomials
for float32, so loops that use them still vectorize; libm for float64).
"""

from __future__ import annotations

import math

from llvmlite import ir

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError

F32, F64 = ir.FloatType(), ir.DoubleType()
I1, I8, I32, I64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)

_STORAGE = {dt.float32: F32, dt.float64: F64, dt.int32: I32, dt.int64: I64, dt.bool_: I8}


def storage_type(d: dt.DType) -> ir.Type:
    """How values of ``d`` sit in memory (bool: one byte, as numpy)."""
    try:
        return _STORAGE[d]
    except KeyError:
        raise LaminaError(f"the llvm backend does not support {d.name} yet "
                          "(float32, float64, int32, int64 and bool)") from None


def compute_type(d: dt.DType) -> ir.Type:
    return I1 if d is dt.bool_ else storage_type(d)


def to_compute(b: ir.IRBuilder, v: ir.Value, d: dt.DType) -> ir.Value:
    return b.icmp_unsigned("!=", v, ir.Constant(I8, 0)) if d is dt.bool_ else v


def to_storage(b: ir.IRBuilder, v: ir.Value, d: dt.DType) -> ir.Value:
    return b.zext(v, I8) if d is dt.bool_ else v


def const(d: dt.DType, value) -> ir.Constant:
    t = compute_type(d)
    if d.is_bool:
        return ir.Constant(t, int(bool(value)))
    if d.is_int:
        return ir.Constant(t, int(value))
    return ir.Constant(t, float(value))


def intrinsic(module: ir.Module, name: str, ret: ir.Type, args: list[ir.Type]) -> ir.Function:
    """Declare (once) an LLVM intrinsic or libm function with an explicit signature."""
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, args), name)
    return fn


def _suffix(t: ir.Type) -> str:
    return "f32" if t == F32 else "f64"


class Ctx:
    """What a lowering needs: the builder and the module (for intrinsics)."""

    def __init__(self, b: ir.IRBuilder, module: ir.Module):
        self.b = b
        self.module = module

    def call(self, name: str, *args: ir.Value) -> ir.Value:
        t = args[0].type
        return self.b.call(intrinsic(self.module, f"llvm.{name}.{_suffix(t)}", t, [t] * len(args)),
                           list(args))


def _math():
    from lamina.backends.llvm import mathlib

    return mathlib


LOWER: dict = {}


def lowers(*names):
    def register(fn):
        for n in names:
            LOWER[n] = fn
        return fn

    return register


def _is_float(v: ir.Value) -> bool:
    return isinstance(v.type, (ir.FloatType, ir.DoubleType))


# --- arithmetic -------------------------------------------------------------------------------


@lowers("add")
def lower_add(cx, node, x, y):
    return cx.b.fadd(x, y) if _is_float(x) else cx.b.add(x, y)


@lowers("sub")
def lower_sub(cx, node, x, y):
    return cx.b.fsub(x, y) if _is_float(x) else cx.b.sub(x, y)


@lowers("mul")
def lower_mul(cx, node, x, y):
    return cx.b.fmul(x, y) if _is_float(x) else cx.b.mul(x, y)


@lowers("div")
def lower_div(cx, node, x, y):
    return cx.b.fdiv(x, y)


@lowers("neg")
def lower_neg(cx, node, x):
    return cx.b.fneg(x) if _is_float(x) else cx.b.neg(x)


@lowers("abs")
def lower_abs(cx, node, x):
    if _is_float(x):
        return cx.call("fabs", x)
    return cx.b.select(cx.b.icmp_signed("<", x, ir.Constant(x.type, 0)), cx.b.neg(x), x)


@lowers("sign")
def lower_sign(cx, node, x):
    b = cx.b
    if _is_float(x):  # NaN passes through and -0.0 gives +0.0, as numpy
        zero, one, minus = (ir.Constant(x.type, v) for v in (0.0, 1.0, -1.0))
        rest = b.select(b.fcmp_ordered("==", x, zero), zero, x)
        neg = b.select(b.fcmp_ordered("<", x, zero), minus, rest)
        return b.select(b.fcmp_ordered(">", x, ir.Constant(x.type, 0.0)), one, neg)
    zero = ir.Constant(x.type, 0)
    pos = b.zext(b.icmp_signed(">", x, zero), x.type)
    neg = b.zext(b.icmp_signed("<", x, zero), x.type)
    return b.sub(pos, neg)


@lowers("maximum", "minimum")
def lower_extremum(cx, node, x, y):
    b = cx.b
    if _is_float(x):  # NaN-propagating, as numpy
        return cx.call("maximum" if node.op == "maximum" else "minimum", x, y)
    pick = b.icmp_signed(">" if node.op == "maximum" else "<", x, y)
    return b.select(pick, x, y)


@lowers("relu")
def lower_relu(cx, node, x):
    return cx.call("maximum", x, ir.Constant(x.type, 0.0))


@lowers("pow")
def lower_pow(cx, node, x, y):
    return _math().pow(cx.b, x, y)


@lowers("sqrt")
def lower_sqrt(cx, node, x):
    return _math().sqrt(cx.b, x)


@lowers("rsqrt")
def lower_rsqrt(cx, node, x):
    return _math().rsqrt(cx.b, x)


def _unary_math(name):
    def lower(cx, node, x):
        return getattr(_math(), name)(cx.b, x)

    lower.__name__ = f"lower_{name}"
    return lower


for _name in ("exp", "log", "softplus", "erf"):
    LOWER[_name] = _unary_math(_name)
# tanh: the rational form (<= 3 ulp, a third of the instructions of the 1-ulp version);
# float64 still goes to libm
LOWER["tanh"] = _unary_math("tanh_fast")
# sigmoid: exp and one plain division (<= 2 ulp over all float32; the compensated 1-ulp form
# takes 1.5x as long, and an LSTM step has three); float64 keeps the accurate form
LOWER["sigmoid"] = _unary_math("sigmoid_fast")


# --- trigonometry, rounding, floor division and remainder ---------------------------------------


@lowers("sin", "cos")
def lower_trig(cx, node, x):
    from lamina.backends.llvm import trig

    return getattr(trig, node.op)(cx.b, x)


@lowers("floor", "ceil", "round")
def lower_rounding(cx, node, x):
    if not _is_float(x):
        return x  # integers are whole already
    # rint rounds halves to even in the default floating-point environment (numpy's round)
    return cx.call({"floor": "floor", "ceil": "ceil", "round": "rint"}[node.op], x)


def _int_divmod(b, x, y):
    """numpy's integer floor division and remainder. x // 0 and x % 0 are 0 (numpy's values);
    the hardware division never sees 0 or -1 (x86 traps on INT_MIN / -1): x // -1 is -x,
    wrapping for INT_MIN as numpy does."""
    zero, one = ir.Constant(x.type, 0), ir.Constant(x.type, 1)
    by_zero = b.icmp_signed("==", y, zero)
    by_minus_one = b.icmp_signed("==", y, ir.Constant(x.type, -1))
    safe = b.select(b.or_(by_zero, by_minus_one), one, y)
    q, r = b.sdiv(x, safe), b.srem(x, safe)  # truncated: r has the sign of x
    fix = b.and_(b.icmp_signed("!=", r, zero),
                 b.xor(b.icmp_signed("<", r, zero), b.icmp_signed("<", y, zero)))
    q = b.select(fix, b.sub(q, one), q)
    q = b.select(by_minus_one, b.sub(zero, x), b.select(by_zero, zero, q))
    return q, b.select(fix, b.add(r, y), r)


def _float_divmod(cx, x, y):
    """numpy's float floor division and remainder (its npy_divmod, step by step, so that every
    special case agrees): mod = fmod(x, y) (exact), moved into the sign of y; the quotient
    (x - mod) / y, an integer up to rounding, rounded to the nearest integer."""
    b = cx.b
    t = x.type
    zero, one, half = ir.Constant(t, 0.0), ir.Constant(t, 1.0), ir.Constant(t, 0.5)
    mod = b.frem(x, y)  # C's fmod (a libm call per element: exact)
    div = b.fdiv(b.fsub(x, mod), y)
    moved = b.and_(b.fcmp_unordered("!=", mod, zero),  # NaN counts as nonzero, as in C
                   b.xor(b.fcmp_ordered("<", y, zero), b.fcmp_ordered("<", mod, zero)))
    mod = b.select(moved, b.fadd(mod, y), mod)
    div = b.select(moved, b.fsub(div, one), div)
    mod = b.select(b.fcmp_ordered("==", mod, zero), cx.call("copysign", zero, y), mod)
    fl = cx.call("floor", div)
    fl = b.select(b.fcmp_ordered(">", b.fsub(div, fl), half), b.fadd(fl, one), fl)
    fl = b.select(b.fcmp_ordered("==", div, zero), cx.call("copysign", zero, b.fdiv(x, y)), fl)
    by_zero = b.fcmp_ordered("==", y, zero)
    return b.select(by_zero, b.fdiv(x, y), fl), b.select(by_zero, b.frem(x, y), mod)


@lowers("floor_divide", "remainder")
def lower_divmod(cx, node, x, y):
    q, r = _float_divmod(cx, x, y) if _is_float(x) else _int_divmod(cx.b, x, y)
    return q if node.op == "floor_divide" else r


# --- comparisons and logic --------------------------------------------------------------------

_CMP = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


@lowers(*_CMP)
def lower_compare(cx, node, x, y):
    b, op = cx.b, _CMP[node.op]
    if _is_float(x):
        # numpy: every comparison with NaN is False, except != which is True
        return b.fcmp_unordered(op, x, y) if op == "!=" else b.fcmp_ordered(op, x, y)
    if x.type == I1:
        return b.icmp_unsigned(op, x, y)  # False < True
    return b.icmp_signed(op, x, y)


@lowers("logical_and")
def lower_and(cx, node, x, y):
    return cx.b.and_(x, y)


@lowers("logical_or")
def lower_or(cx, node, x, y):
    return cx.b.or_(x, y)


@lowers("logical_not")
def lower_not(cx, node, x):
    return cx.b.xor(x, ir.Constant(I1, 1))


@lowers("where")
def lower_where(cx, node, c, x, y):
    return cx.b.select(c, x, y)


@lowers("alias", "stop_gradient")
def lower_identity(cx, node, x):
    return x


@lowers("cast")
def lower_cast(cx, node, x):
    return convert(cx.b, x, node.inputs[0].dtype, node.attrs["dtype"])


def convert(b: ir.IRBuilder, x: ir.Value, src: dt.DType, dst: dt.DType) -> ir.Value:
    """numpy's ``astype`` between compute types."""
    if src is dst:
        return x
    t = compute_type(dst)
    if dst.is_bool:
        if src.is_float:
            return b.fcmp_unordered("!=", x, ir.Constant(x.type, 0.0))  # NaN -> True
        return b.icmp_unsigned("!=", x, ir.Constant(x.type, 0))
    if src.is_bool:
        return b.uitofp(x, t) if dst.is_float else b.zext(x, t)
    if src.is_float and dst.is_float:
        return b.fpext(x, t) if dst.bits > src.bits else b.fptrunc(x, t)
    if src.is_float:
        return b.fptosi(x, t)
    if dst.is_float:
        return b.sitofp(x, t)
    return b.sext(x, t) if dst.bits > src.bits else b.trunc(x, t)


# --- random numbers: Philox-4x32-10, as ir.ops.source specifies -------------------------------


def philox(b: ir.IRBuilder, counter: list[ir.Value], key: ir.Value) -> list[ir.Value]:
    """Four i32 words from the i32 counter words and the i64 key (10 rounds)."""
    k0 = b.trunc(key, I32)
    k1 = b.trunc(b.lshr(key, ir.Constant(I64, 32)), I32)
    c0, c1, c2, c3 = counter

    def mulhilo(m: int, x):
        p = b.mul(b.zext(x, I64), ir.Constant(I64, m))
        return b.trunc(b.lshr(p, ir.Constant(I64, 32)), I32), b.trunc(p, I32)

    for _ in range(10):
        hi0, lo0 = mulhilo(0xD2511F53, c0)
        hi1, lo1 = mulhilo(0xCD9E8D57, c2)
        c0, c1, c2, c3 = b.xor(b.xor(hi1, c1), k0), lo1, b.xor(b.xor(hi0, c3), k1), lo0
        k0 = b.add(k0, ir.Constant(I32, 0x9E3779B9))
        k1 = b.add(k1, ir.Constant(I32, 0xBB67AE85))
    return [c0, c1, c2, c3]


def _unit24(b, w):
    return b.fmul(b.uitofp(b.lshr(w, ir.Constant(I32, 8)), F32), ir.Constant(F32, 2.0 ** -24))


def _unit53(b, hi, lo):
    a = b.uitofp(b.lshr(hi, ir.Constant(I32, 5)), F64)
    c = b.uitofp(b.lshr(lo, ir.Constant(I32, 6)), F64)
    return b.fmul(b.fadd(b.fmul(a, ir.Constant(F64, 2.0 ** 26)), c), ir.Constant(F64, 2.0 ** -53))


def random_value(cx: Ctx, node, key: ir.Value, flat: ir.Value) -> ir.Value:
    """Element ``flat`` of a ``random_uniform``/``random_normal`` node with i64 ``key``."""
    b = cx.b
    counter = [b.trunc(flat, I32), b.trunc(b.lshr(flat, ir.Constant(I64, 32)), I32),
               ir.Constant(I32, node.attrs["stream"] & 0xFFFFFFFF), ir.Constant(I32, 0)]
    w = philox(b, counter, key)
    wide = node.attrs["dtype"] is dt.float64
    if node.op == "random_uniform":
        return _unit53(b, w[0], w[1]) if wide else _unit24(b, w[0])
    if wide:
        u1 = b.fsub(ir.Constant(F64, 1.0), _unit53(b, w[0], w[1]))
        u2 = _unit53(b, w[2], w[3])
    else:
        u1 = b.fsub(ir.Constant(F32, 1.0), _unit24(b, w[0]))
        u2 = _unit24(b, w[1])
    t = u1.type
    m = _math()
    r = m.sqrt(b, b.fmul(ir.Constant(t, -2.0), m.log(b, u1)))
    angle = b.fmul(ir.Constant(t, 2 * math.pi), u2)
    return b.fmul(r, cx.call("cos", angle))
