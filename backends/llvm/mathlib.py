"""Inline, vectorizable transcendental functions for the LLVM CPU backend.

Every function takes an ``llvmlite.ir.IRBuilder`` positioned inside a function and an llvmlite
value of type ``float``, ``double``, ``<N x float>`` or ``<N x double>``, emits the computation
at the builder's position and returns a value of the same type.

float32 (scalar or vector): the functions are emitted *inline* as straight-line LLVM arithmetic
(``fadd``/``fmul``/``fdiv``, ``llvm.fma``, ``llvm.fabs``, ``llvm.rint``, ``llvm.copysign``,
integer bit manipulation through ``bitcast``, ``fcmp`` + ``select``): no branches and no calls,
so a loop applying them element by element is turned into AVX-512/AVX2 code by LLVM's loop
vectorizer. The algorithms:

* ``exp``: the argument is clamped to [-104, 89] (beyond it the float result is 0 or inf),
  reduced as ``x = n*ln2 + r`` with ``n = rint(x/ln2)`` and a two-constant Cody-Waite
  reduction done with FMA (``x - n*LN2_HI`` is exact because ``LN2_HI`` is ln2 rounded to 24
  bits and ``|r| < 0.36``), ``|r| <= ln2/2``. ``e^r = 1 + r + r^2*Q(r)`` with Q of degree 4
  (``EXP_Q``). ``2^n`` is applied as two factors ``2^(n>>1) * 2^(n - (n>>1))`` built in the
  exponent bits, so results between FLT_MAX/2 and FLT_MAX do not overflow early and subnormal
  results are rounded once (gradual underflow like numpy). NaN is passed through by a select.
  Internally exp can also return the rounding error of its last step (``1 + t`` by Fast2Sum,
  scaled), used by tanh, sigmoid, softplus and erf as a double-float ``E = hi + lo``.
* ``log``: subnormal inputs are scaled by 2^23 first. The bits are split as ``x = 2^e * m``
  with ``m`` in [sqrt(1/2), sqrt(2)) (subtracting the bits of sqrt(1/2) before taking the
  exponent), ``f = m - 1`` (exact) and ``log(1 + f) = f + f^2*Q(f)`` with Q of degree 8
  (``LOG_Q``). ``e*ln2 + f`` is added as a Fast2Sum with a 16-bit ``LN2_HI`` (so ``e*LN2_HI``
  is exact) and the rounding error carried into the low part: about 0.5 ulp plus the
  polynomial error. Special values (0, negative, inf, NaN) are fixed up by selects.
* ``log1p``: ``u = 1 + x`` with its exact rounding error ``d`` (Knuth's TwoSum); ``log(u)`` as
  above plus the correction ``d/u``, so ``log1p(x) = x`` exactly for tiny ``x`` and full
  relative accuracy near 0 (the sign of -0.0 is kept).
* ``tanh``: ``|x| < 0.625``: odd polynomial ``x + x^3*P(x^2)`` of degree 13 (``TANH_P``);
  otherwise ``1 - 2/(E + 1)`` with ``E = exp(2|x|)`` (|x| clamped to 9.5, where tanh rounds
  to 1), evaluated with compensation: ``E + 1`` by Fast2Sum, the quotient ``q = 2/(E + 1)``
  corrected by its exact FMA remainder, ``1 - q`` by Fast2Sum, so that only the final
  rounding and exp's small error remain. The sign is restored with copysign (tanh(-0.0) is
  -0.0, tanh(+-inf) = +-1, NaN propagates).
* ``tanh_fast``: a cheaper tanh (about a third of the instructions; at most 3 ulp instead of
  1) from a rational function and one division, no exp. ``x`` is clamped to
  +-``TANH_FAST_T`` (9.015625, just above atanh(1 - 2^-25) = 9.0109, beyond which tanh rounds
  to 1; NaN passes the clamp, +-inf becomes +-T and gives +-1). With ``u = x^2``,
  ``A = x*P(u)`` (``P(u) = 1 + u*TANH_FAST_P(u)``, odd, degree 5 in x) and
  ``B = 1 + beta``, ``beta = u*TANH_FAST_Q(u)`` (even, degree 6), ``A/(2B)`` approximates
  ``tanh(x/2)``, and the double-angle formula ``tanh(x) = 2t/(1 + t^2)`` gives
  ``tanh(x) = A*B / ((A/2)^2 + B^2)``, evaluated as ``fma(A, beta, A)`` over
  ``1 + fma(beta, beta + 2, A*(A/4))`` (B itself is never rounded; Horner's scheme, which
  measured as fast as Estrin's with one instruction less). Why not the plain one-rational
  ``x*P(u)/Q(u)`` (Eigen's form, used by XLA): in float32 its rounding errors alone reach 5
  to 6 ulp whatever the degrees (measured exhaustively on [0.25, 9.1] for minimax fits of
  numerator/denominator degrees 9/8, 11/8, 9/10, 7/10, 11/6, 13/6, 11/10), because near
  tanh = 1, where one ulp is 2^-24 relative, the large high-degree terms of P and Q carry
  each Horner rounding almost in full. The double-angle form damps every error of
  ``t = A/(2B)`` (the approximation's and all roundings inside P and Q) by
  ``d log tanh(x) / d log t = 1/cosh(x)``, so for large x only the last few operations
  count; and the fit (``TANH_FAST_P``/``_Q``) only needs to approximate tanh(x/2) with its
  relative error weighed by ``1/cosh(x)``: 5 coefficients instead of 8. Keeping
  ``B = 1 + beta`` unrounded (rather than ``N = A*B``, ``D = fma(A/2, A/2, B*B)``) removes
  the rounding errors that dominate for small x (5 ulp otherwise). tanh_fast(-0.0) = -0.0,
  and tiny or subnormal x give x exactly (A = x, beta*... vanish, the denominator is 1).
* ``sigmoid``: ``E = exp(-|x|)`` in [0, 1], then ``1/(1 + E)`` for ``x >= 0`` and
  ``E/(1 + E)`` for ``x < 0`` (no overflow; subnormal results for very negative ``x`` like
  numpy), with the same compensation of ``1 + E`` and of the division (one ``fdiv``).
* ``sigmoid_fast`` (what the ``sigmoid`` op uses): the same ``E`` from the plain exp and
  one division, ``E/(1 + E)`` or ``1/(1 + E)``, no compensation: at most 2 ulp over all 2^32
  float32 inputs (2 ulp at 243,291 of them, 96.7% correctly rounded); 55 instructions per
  16 floats in the vectorized loop instead of 79, 0.30 instead of 0.46 ns/element in cache.
* ``softplus``: ``max(x, 0) + log1p(exp(-|x|))`` with the inline exp (its low part is fed
  into log1p's correction term) and log1p (without its special-value selects: the argument is
  in [0, 1] or NaN).
* ``erf``: ``|x| < 0.9``: odd polynomial ``x + x*S(x^2)`` of degree 13 (``ERF_S``); otherwise
  ``1 - exp(L(|x|))`` where ``L`` (degree 6, ``ERF_L``) approximates ``log(erfc(|x|))`` on
  [0.9, 4] (|x| clamped to 4, where erf rounds to 1 in float32), ``1 - E`` by Fast2Sum; sign
  restored by copysign.
* ``pow``: computed in double precision inline (the loop vectorizes with ``<N x double>``):
  ``log2|x|`` from the exponent/mantissa split with a degree-14 polynomial for log(1+f)
  (``POW_LOG_Q``), ``t = y*log2|x|``, ``2^t`` as ``2^n * 2^r`` with a degree-8 polynomial
  (``POW_EXP2``), rounded once to float; the error of ``t`` is far below float32's ulp even
  for ``|t|`` near 128. C99/numpy special cases by selects: ``pow(x, 0) = pow(1, y) = 1``
  (even for NaN), negative ``x`` gives NaN unless ``y`` is an integer (odd integers keep the
  sign), ``pow(-1, +-inf) = 1``, zeros and infinities by the limits of ``2^(y*log2|x|)``.
* ``sqrt``: ``llvm.sqrt`` (correctly rounded); ``rsqrt``: ``1/sqrt(x)`` (two correct roundings,
  not the approximate ``rsqrt`` instruction).

float64 (scalar or vector): ``exp``/``log``/``pow``/``sqrt`` use the LLVM intrinsics, ``log1p``,
``tanh`` (also for ``tanh_fast``) and ``erf`` call libm (declared as externals that MCJIT
resolves from the process; vector arguments are applied element by element); ``sigmoid`` and
``softplus`` are built from those with the same stable formulas as float32. float64 is used
for gradient checks, so these favour accuracy (about 1 ulp, libm's) over speed.

All polynomial coefficients come from :func:`derive_coefficients` (run
``python -m lamina.backends.llvm.mathlib`` to re-derive and print them): discrete minimax fits in
float64 with numpy (Lawson's iteratively reweighted least squares on a dense Chebyshev grid,
minimizing the relative error of the final function value, or for erf's tail the absolute
error of erf; tanh_fast's rational function by the same iteration on Loeb's linearization,
see :func:`_minimax_rational`). The float32 tables are rounded to float32 when emitted.
``FMA`` is ``llvm.fma``: a single instruction on any x86-64 with FMA3 (all AVX-512 and AVX2
machines; without FMA3 LLVM would call ``fmaf`` and the loops would not vectorize); the
exact-reduction and remainder arguments above rely on it being fused.

Measured float32 accuracy, as the distance in ulps from numpy's float64 result rounded to
float32 (i.e. from the correctly rounded result), over all 2^32 float32 inputs: at most 1 ulp
for exp, log, log1p, tanh, sigmoid, softplus, erf and rsqrt, 0 for sqrt (pow: at most 1 ulp on
random samples); subnormal inputs and results included (no flush to zero). tanh_fast: at most
3 ulp over all 2^32 inputs (3 ulp at 37,938 of them, 97.2% correctly rounded), relative error
at most 3.75 * 2^-24, never above 1 in magnitude, exactly odd.
``tests/test_llvm_math.py`` asserts these bounds on about 10^6 points per function.
"""

from __future__ import annotations

import math
import struct

from llvmlite import ir

__all__ = ["derive_coefficients", "erf", "exp", "log", "log1p", "pow", "rsqrt", "sigmoid",
           "sigmoid_fast", "softplus", "sqrt", "tanh", "tanh_fast"]

# --- coefficient tables (lowest degree first; produced by derive_coefficients()) ---------------

# e^r ~= 1 + r + r^2 * Q(r) on |r| <= 0.35 (reduction interval ln2/2 plus slack); minimax of
# the relative error of e^r, max 2^-28.3 before rounding the coefficients to float32.
EXP_Q = (0.4999999305537568, 0.16666514859047996, 0.041668455988747244, 0.008369410784961461,
         0.0013813161374733784)
# log(1 + f) ~= f + f^2 * Q(f) on [sqrt(1/2) - 1, sqrt(2) - 1]; relative error of log1p(f).
LOG_Q = (-0.4999998834632698, 0.33333325692028637, -0.25001582965287267, 0.20001973936302767,
         -0.16609082472271555, 0.1418182492563347, -0.13242988542087145, 0.1290443538392914,
         -0.07621778809009534)
# tanh(x) ~= x + x^3 * P(x^2) for |x| < TANH_T; relative error of tanh.
TANH_T = 0.625
TANH_P = (-0.3333333080273738, 0.13333206008429727, -0.05394676305809286, 0.02170070316896623,
          -0.008177398054688189, 0.0021429616413884338)
# tanh_fast: tanh(x/2) ~= x*P(u) / (2*Q(u)), u = x^2, P(u) = 1 + u*TANH_FAST_P(u),
# Q(u) = 1 + u*TANH_FAST_Q(u), for |x| <= TANH_FAST_T; minimax of the relative error of
# tanh(x) = 2t/(1 + t^2) that an error of t causes (relative error of t times 1/cosh(x)),
# max 2^-27.0 (before rounding the coefficients to float32).
TANH_FAST_T = 9.015625
TANH_FAST_P = (0.029777636176890446, 0.00011433729853299017)
TANH_FAST_Q = (0.11311093523758349, 0.0012069512609631666, 1.2307740709825037e-06)
# erf(x) ~= x + x * S(x^2) for |x| < ERF_T; relative error of erf.
ERF_T = 0.9
ERF_S = (0.12837916676435604, -0.37612634979824294, 0.11283715032605401, -0.02686050845274999,
         0.0052038591374541495, -0.000817563905578076, 8.513103102006404e-05)
# log(erfc(x)) ~= L(x) on [ERF_T, ERF_CLAMP]; absolute error of erf = 1 - exp(L(x)).
ERF_CLAMP = 4.0
ERF_L = (-0.00017749570595050466, -1.1277495577722179, -0.6370597616593314, -0.1040373515785609,
         0.0222770829163611, -0.003055606434631032, 0.00019718160156362524)
# float64 tables for float32 pow: log(1 + f) ~= f + f^2 * Q(f) (degree 14) and
# 2^r ~= 1 + r * E(r) on |r| <= 1/2 (degree 8).
POW_LOG_Q = (-0.49999999993770133, 0.33333333425207934, -0.25000002005953387, 0.1999998738364442,
             -0.1666649052702237, 0.1428620889696966, -0.12506610146390615, 0.11105780179031356,
             -0.09880587434312815, 0.0903001397102146, -0.09317613386515271, 0.09174434457286763,
             -0.04841044093129711)
POW_EXP2 = (0.6931471805482121, 0.24022650698110573, 0.05550410935267365, 0.00961812861613384,
            0.0013333454859542574, 0.00015403825452710906, 1.5309156427104392e-05,
            1.3178936066461026e-06)

# --- exact constants ---------------------------------------------------------------------------

_LN2 = math.log(2.0)
_LOG2E = 1.0 / _LN2
_EXP_LN2_HI = struct.unpack("f", struct.pack("f", _LN2))[0]  # ln2 rounded to float32
_EXP_LN2_LO = _LN2 - _EXP_LN2_HI                            # rounded to float32 when emitted
_LOG_LN2_HI = 0.693145751953125                            # ln2 rounded to 16 bits
_LOG_LN2_LO = _LN2 - _LOG_LN2_HI
_EXP_MAX = 89.0    # exp(89) > FLT_MAX: clamping here keeps n in range and still gives inf
_EXP_MIN = -104.0  # exp(-104) < 2^-150: rounds to 0
_SQRT_HALF_BITS32 = 0x3F3504F3           # float32 bits of sqrt(1/2)
_SQRT_HALF_BITS64 = 0x3FE6A09E667F3BCD   # float64 bits of sqrt(1/2)
_INF = float("inf")
_NAN = float("nan")


# --- emission helpers --------------------------------------------------------------------------


def _suffix(ty) -> str:
    """The overload suffix of an intrinsic for ``ty`` (f32, f64, v16f32, ...)."""
    if isinstance(ty, ir.VectorType):
        return f"v{ty.count}{_suffix(ty.element)}"
    if isinstance(ty, ir.FloatType):
        return "f32"
    if isinstance(ty, ir.DoubleType):
        return "f64"
    if isinstance(ty, ir.IntType):
        return f"i{ty.width}"
    raise TypeError(f"mathlib: unsupported type {ty}")


class _E:
    """Instruction helpers for one floating-point type (scalar or vector)."""

    def __init__(self, b: ir.IRBuilder, ty):
        self.b = b
        self.ty = ty
        self.n = ty.count if isinstance(ty, ir.VectorType) else None
        el = ty.element if self.n else ty
        if isinstance(el, ir.FloatType):
            self.f64, bits = False, 32
        elif isinstance(el, ir.DoubleType):
            self.f64, bits = True, 64
        else:
            raise TypeError(f"mathlib: expected float/double (or a vector of them), got {ty}")
        self.mant = 52 if self.f64 else 23
        self.bias = 1023 if self.f64 else 127
        ity = ir.IntType(bits)
        self.ity = ir.VectorType(ity, self.n) if self.n else ity

    def like(self, el) -> _E:
        """Helpers for the same shape with element type ``el``."""
        return _E(self.b, ir.VectorType(el, self.n) if self.n else el)

    # constants
    def k(self, v: float):
        return ir.Constant(self.ty, [v] * self.n if self.n else v)

    def ki(self, v: int):
        return ir.Constant(self.ity, [v] * self.n if self.n else v)

    # arithmetic
    def add(self, a, c):
        return self.b.fadd(a, c)

    def sub(self, a, c):
        return self.b.fsub(a, c)

    def mul(self, a, c):
        return self.b.fmul(a, c)

    def div(self, a, c):
        return self.b.fdiv(a, c)

    def neg(self, a):
        return self.b.fneg(a)

    def intrinsic(self, name: str, *args):
        full = f"llvm.{name}.{_suffix(self.ty)}"
        mod = self.b.module
        fn = mod.globals.get(full)
        if fn is None:
            fn = ir.Function(mod, ir.FunctionType(self.ty, [self.ty] * len(args)), name=full)
        return self.b.call(fn, list(args))

    def fma(self, a, c, d):
        return self.intrinsic("fma", a, c, d)

    def fabs(self, a):
        return self.intrinsic("fabs", a)

    def rint(self, a):
        return self.intrinsic("rint", a)

    def copysign(self, mag, sgn):
        return self.intrinsic("copysign", mag, sgn)

    def poly(self, x, coeffs):
        """Horner's scheme with FMA, coefficients lowest degree first."""
        acc = self.k(coeffs[-1])
        for c in reversed(coeffs[:-1]):
            acc = self.fma(acc, x, self.k(c))
        return acc

    # comparisons (ordered: false for NaN, except ``ult``/``uno``) and selects
    def olt(self, a, c):
        return self.b.fcmp_ordered("<", a, c)

    def ogt(self, a, c):
        return self.b.fcmp_ordered(">", a, c)

    def oeq(self, a, c):
        return self.b.fcmp_ordered("==", a, c)

    def ult(self, a, c):
        return self.b.fcmp_unordered("<", a, c)

    def une(self, a, c):
        return self.b.fcmp_unordered("!=", a, c)

    def uno(self, a):
        return self.b.fcmp_unordered("uno", a, a)

    def sel(self, cond, a, c):
        return self.b.select(cond, a, c)

    def min_k(self, a, v: float):
        """min(a, v); NaN gives v (one vminps)."""
        return self.sel(self.olt(a, self.k(v)), a, self.k(v))

    def max_k(self, a, v: float):
        """max(a, v); NaN gives v (one vmaxps)."""
        return self.sel(self.ogt(a, self.k(v)), a, self.k(v))

    # bits
    def bits(self, a):
        return self.b.bitcast(a, self.ity)

    def from_bits(self, i):
        return self.b.bitcast(i, self.ty)

    def pow2(self, ni):
        """2^ni for an integer vector ``ni`` within the normal exponent range."""
        return self.from_bits(self.b.shl(self.b.add(ni, self.ki(self.bias)), self.ki(self.mant)))

    def ldexp(self, a, ni):
        """a * 2^ni, exact where representable (overflow to inf, gradual underflow)."""
        full = f"llvm.ldexp.{_suffix(self.ty)}.{_suffix(ni.type)}"
        mod = self.b.module
        fn = mod.globals.get(full)
        if fn is None:
            fn = ir.Function(mod, ir.FunctionType(self.ty, [self.ty, ni.type]), name=full)
        return self.b.call(fn, [a, ni])

    def libm(self, name: str, *args):
        """A call to the libm function ``name`` (double); vectors element by element."""
        dbl = ir.DoubleType()
        mod = self.b.module
        fn = mod.globals.get(name)
        if fn is None:
            fn = ir.Function(mod, ir.FunctionType(dbl, [dbl] * len(args)), name=name)
        if not self.n:
            return self.b.call(fn, list(args))
        out = ir.Constant(self.ty, ir.Undefined)
        for i in range(self.n):
            idx = ir.Constant(ir.IntType(32), i)
            r = self.b.call(fn, [self.b.extract_element(a, idx) for a in args])
            out = self.b.insert_element(out, r, idx)
        return out


# --- float32 kernels ---------------------------------------------------------------------------


# How exp scales by 2^n: None decides by the host (llvm.ldexp where AVX-512 gives it one
# instruction, vscalefps; elsewhere LLVM may expand a vector ldexp element by element), True or
# False force a way (the tests check that both give the same bits).
SCALE_WITH_LDEXP: bool | None = None


def _scale_with_ldexp() -> bool:
    if SCALE_WITH_LDEXP is not None:
        return SCALE_WITH_LDEXP
    from lamina.backends.llvm import jit
    return jit.host().vector_bits == 512


def _exp32(e: _E, x, with_lo: bool = False):
    """e^x; with_lo: also the rounding error of the result's last step, e^x ~= y + lo."""
    xc = e.max_k(e.min_k(x, _EXP_MAX), _EXP_MIN)
    n = e.rint(e.mul(xc, e.k(_LOG2E)))
    r = e.fma(n, e.k(-_EXP_LN2_HI), xc)
    r = e.fma(n, e.k(-_EXP_LN2_LO), r)
    t = e.fma(e.mul(r, r), e.poly(r, EXP_Q), r)
    p = e.add(e.k(1.0), t)
    ni = e.b.fptosi(n, e.ity)
    if _scale_with_ldexp():  # one vscalefps: exact, overflow and gradual underflow included
        def scale(v):
            return e.ldexp(v, ni)
    else:  # two factors keep both 2^k normal; the second product rounds once, like ldexp
        n1 = e.b.ashr(ni, e.ki(1))
        s1, s2 = e.pow2(n1), e.pow2(e.b.sub(ni, n1))

        def scale(v):
            return e.mul(e.mul(v, s1), s2)
    y = e.sel(e.uno(x), x, scale(p))
    if not with_lo:
        return y
    err = e.add(e.sub(e.k(1.0), p), t)            # Fast2Sum: 1 + t = p + err exactly
    return y, scale(err)


def _log_split(e: _E, u, sqrt_half_bits: int):
    """(exponent as float, f) with u = 2^e * (1 + f), 1 + f in [sqrt(1/2), sqrt(2))."""
    i = e.bits(u)
    ex = e.b.ashr(e.b.sub(i, e.ki(sqrt_half_bits)), e.ki(e.mant))
    m = e.from_bits(e.b.sub(i, e.b.shl(ex, e.ki(e.mant))))
    return e.b.sitofp(ex, e.ty), e.sub(m, e.k(1.0))


def _log32_combine(e: _E, ef, f, extra=None):
    """ef*ln2 + log(1 + f) (+ extra, a small correction) with about 0.5 ulp rounding error."""
    t = e.mul(e.mul(f, f), e.poly(f, LOG_Q))
    p = e.mul(ef, e.k(_LOG_LN2_HI))              # exact: 16-bit constant times |ef| <= 152
    hi = e.add(p, f)                             # Fast2Sum: |p| >= |f| unless p == 0
    err = e.add(e.sub(p, hi), f)
    lo = e.add(t, err)
    if extra is not None:
        lo = e.add(lo, extra)
    lo = e.fma(ef, e.k(_LOG_LN2_LO), lo)
    return e.add(hi, lo)


def _log32(e: _E, x):
    tiny = e.olt(x, e.k(2.0 ** -126))
    xs = e.sel(tiny, e.mul(x, e.k(2.0 ** 23)), x)
    ef, f = _log_split(e, xs, _SQRT_HALF_BITS32)
    ef = e.sub(ef, e.sel(tiny, e.k(23.0), e.k(0.0)))
    r = _log32_combine(e, ef, f)
    r = e.sel(e.oeq(x, e.k(_INF)), x, r)
    r = e.sel(e.oeq(x, e.k(0.0)), e.k(-_INF), r)
    return e.sel(e.ult(x, e.k(0.0)), e.k(_NAN), r)


def _log1p32_core(e: _E, x, x_lo=None):
    """log1p(x + x_lo) for finite x > -1 (x_lo: a tiny low part); NaN gives NaN."""
    one = e.k(1.0)
    u = e.add(one, x)
    bb = e.sub(u, one)
    d = e.add(e.sub(one, e.sub(u, bb)), e.sub(x, bb))   # TwoSum: 1 + x = u + d exactly
    if x_lo is not None:
        d = e.add(d, x_lo)
    ef, f = _log_split(e, u, _SQRT_HALF_BITS32)
    return _log32_combine(e, ef, f, e.div(d, u))


def _log1p32(e: _E, x):
    r = _log1p32_core(e, x)
    r = e.sel(e.oeq(x, e.k(_INF)), x, r)
    r = e.sel(e.oeq(x, e.k(-1.0)), e.k(-_INF), r)
    r = e.sel(e.ult(x, e.k(-1.0)), e.k(_NAN), r)
    return e.sel(e.oeq(x, e.k(0.0)), x, r)         # keeps -0.0


def _tanh32(e: _E, x):
    a = e.fabs(x)
    a2 = e.mul(a, a)
    small = e.fma(e.mul(a, a2), e.poly(a2, TANH_P), a)
    # 1 - 2/(E + 1) with E = e^(2|x|) as a double-float (|x| > 9.5 rounds to 1 anyway)
    ac = e.sel(e.ogt(a, e.k(9.5)), e.k(9.5), a)                  # NaN stays NaN
    one, two = e.k(1.0), e.k(2.0)
    ex, ex_lo = _exp32(e, e.add(ac, ac), with_lo=True)
    d = e.add(ex, one)
    de = e.add(e.add(e.sub(ex, d), one), ex_lo)                 # Fast2Sum, ex >= 1
    rcp = e.div(one, d)
    q = e.mul(two, rcp)
    c = e.mul(e.fma(e.neg(q), de, e.fma(e.neg(q), d, two)), rcp)  # 2/(E + 1) ~= q + c
    t = e.sub(one, q)
    big = e.add(t, e.sub(e.sub(e.sub(one, t), q), c))          # Fast2Sum error of 1 - q
    return e.copysign(e.sel(e.olt(a, e.k(TANH_T)), small, big), x)


def _tanh_fast32(e: _E, x):
    t = TANH_FAST_T
    xc = e.sel(e.ogt(x, e.k(t)), e.k(t), x)                    # vminps: NaN stays NaN
    xc = e.sel(e.olt(xc, e.k(-t)), e.k(-t), xc)                # vmaxps
    u = e.mul(xc, xc)
    a = e.fma(e.mul(xc, u), e.poly(u, TANH_FAST_P), xc)        # A = x*P(u), odd
    beta = e.mul(u, e.poly(u, TANH_FAST_Q))                    # B = 1 + beta, even
    num = e.fma(a, beta, a)                                    # A*B
    den = e.add(e.k(1.0), e.fma(beta, e.add(beta, e.k(2.0)), e.mul(a, e.mul(a, e.k(0.25)))))
    return e.div(num, den)                                     # A*B / (B^2 + (A/2)^2)


def _sigmoid_from(e: _E, x, ex, ex_lo=None):
    """sigmoid(x) from E = ex (+ ex_lo) = e^-|x| in [0, 1]: 1/(1 + E) for x >= 0, E/(1 + E)
    for x < 0, with the rounding errors of 1 + E and of the division corrected."""
    neg = e.olt(x, e.k(0.0))
    one = e.k(1.0)
    num = e.sel(neg, ex, one)
    d = e.add(one, ex)
    de = e.add(e.sub(one, d), ex)                               # Fast2Sum: 1 + ex = d + de
    rcp = e.div(one, d)
    q = e.mul(num, rcp)
    rem = e.fma(e.neg(q), d, num)                               # num - q*d, exact
    if ex_lo is not None:
        de = e.add(de, ex_lo)
        rem = e.add(rem, e.sel(neg, ex_lo, e.k(0.0)))
    # (num + num_lo)/(d + de) = q + (rem - q*de)/d to first order
    return e.fma(e.fma(e.neg(q), de, rem), rcp, q)


def _sigmoid32(e: _E, x):
    ex, ex_lo = _exp32(e, e.neg(e.fabs(x)), with_lo=True)
    return _sigmoid_from(e, x, ex, ex_lo)


def _sigmoid_fast32(e: _E, x):
    """E/(1 + E) or 1/(1 + E) with E = e^-|x|: no compensation (at most 3 ulp)."""
    ex = _exp32(e, e.neg(e.fabs(x)))
    return e.div(e.sel(e.olt(x, e.k(0.0)), ex, e.k(1.0)), e.add(e.k(1.0), ex))


def _softplus32(e: _E, x):
    ex, ex_lo = _exp32(e, e.neg(e.fabs(x)), with_lo=True)
    return e.add(e.sel(e.ogt(x, e.k(0.0)), x, e.k(0.0)), _log1p32_core(e, ex, ex_lo))


def _erf32(e: _E, x):
    a = e.fabs(x)
    small = e.fma(a, e.poly(e.mul(a, a), ERF_S), a)
    ac = e.sel(e.ogt(a, e.k(ERF_CLAMP)), e.k(ERF_CLAMP), a)      # NaN stays NaN
    ex, ex_lo = _exp32(e, e.poly(ac, ERF_L), with_lo=True)      # erfc(|x|), < 0.21
    one = e.k(1.0)
    t = e.sub(one, ex)
    big = e.add(t, e.sub(e.sub(e.sub(one, t), ex), ex_lo))      # Fast2Sum error of 1 - ex
    return e.copysign(e.sel(e.olt(a, e.k(ERF_T)), small, big), x)


def _pow32(e: _E, x, y):
    d = e.like(ir.DoubleType())
    b = e.b
    xd, yd = b.fpext(x, d.ty), b.fpext(y, d.ty)
    # log2|x| in double
    ax = d.fabs(xd)
    ef, f = _log_split(d, ax, _SQRT_HALF_BITS64)
    lg = d.add(ef, d.mul(d.fma(d.mul(f, f), d.poly(f, POW_LOG_Q), f), d.k(_LOG2E)))
    lg = d.sel(d.oeq(ax, d.k(0.0)), d.k(-_INF), lg)
    lg = d.sel(d.oeq(ax, d.k(_INF)), ax, lg)
    lg = d.sel(d.uno(ax), ax, lg)
    # 2^t in double; |t| > 200 is 0 or inf in float32
    t = d.mul(yd, lg)
    tc = d.max_k(d.min_k(t, 200.0), -200.0)
    n = d.rint(tc)
    r = d.sub(tc, n)
    p = d.fma(r, d.poly(r, POW_EXP2), d.k(1.0))
    mag = d.mul(p, d.pow2(b.fptosi(n, d.ity)))
    mag = d.sel(d.uno(t), t, mag)
    res = b.fptrunc(mag, e.ty)
    # signs and special cases (C99 / numpy)
    ay = e.fabs(y)
    small_y = e.olt(ay, e.k(2.0 ** 24))
    yi = b.fptosi(e.sel(small_y, y, e.k(0.0)), e.ity)
    odd = b.and_(small_y, b.icmp_signed("!=", b.and_(yi, e.ki(1)), e.ki(0)))
    odd = b.and_(odd, e.oeq(e.rint(y), y))
    signbit = b.icmp_signed("<", e.bits(x), e.ki(0))            # includes -0.0
    res = e.sel(b.and_(signbit, odd), e.neg(res), res)
    xneg = b.and_(e.olt(x, e.k(0.0)), e.ogt(x, e.k(-_INF)))
    bad = b.and_(xneg, e.une(e.rint(y), y))
    res = e.sel(bad, e.k(_NAN), res)
    one = b.or_(e.oeq(x, e.k(1.0)), e.oeq(y, e.k(0.0)))
    one = b.or_(one, b.and_(e.oeq(x, e.k(-1.0)), e.oeq(ay, e.k(_INF))))
    return e.sel(one, e.k(1.0), res)


# --- float64 kernels (libm) --------------------------------------------------------------------


def _sigmoid64(e: _E, x):
    return _sigmoid_from(e, x, e.intrinsic("exp", e.neg(e.fabs(x))))


def _softplus64(e: _E, x):
    ex = e.intrinsic("exp", e.neg(e.fabs(x)))
    return e.add(e.sel(e.ogt(x, e.k(0.0)), x, e.k(0.0)), e.libm("log1p", ex))


# --- public interface --------------------------------------------------------------------------


def exp(b: ir.IRBuilder, x):
    """e^x."""
    e = _E(b, x.type)
    return e.intrinsic("exp", x) if e.f64 else _exp32(e, x)


def log(b: ir.IRBuilder, x):
    """Natural logarithm: log(0) = -inf, log(x < 0) = NaN."""
    e = _E(b, x.type)
    return e.intrinsic("log", x) if e.f64 else _log32(e, x)


def log1p(b: ir.IRBuilder, x):
    """log(1 + x), accurate near 0."""
    e = _E(b, x.type)
    return e.libm("log1p", x) if e.f64 else _log1p32(e, x)


def tanh(b: ir.IRBuilder, x):
    e = _E(b, x.type)
    return e.libm("tanh", x) if e.f64 else _tanh32(e, x)


def tanh_fast(b: ir.IRBuilder, x):
    """tanh from one rational function and one division (float32: at most 3 ulp, about a third
    of ``tanh``'s instructions); float64 is the accurate ``tanh`` (libm)."""
    e = _E(b, x.type)
    return e.libm("tanh", x) if e.f64 else _tanh_fast32(e, x)


def sigmoid(b: ir.IRBuilder, x):
    """1/(1 + e^-x) without overflow for large |x|."""
    e = _E(b, x.type)
    return _sigmoid64(e, x) if e.f64 else _sigmoid32(e, x)


def sigmoid_fast(b: ir.IRBuilder, x):
    """sigmoid with one plain division (float32: at most 3 ulp); float64 is ``sigmoid``."""
    e = _E(b, x.type)
    return _sigmoid64(e, x) if e.f64 else _sigmoid_fast32(e, x)


def softplus(b: ir.IRBuilder, x):
    """log(1 + e^x) = max(x, 0) + log1p(e^-|x|)."""
    e = _E(b, x.type)
    return _softplus64(e, x) if e.f64 else _softplus32(e, x)


def erf(b: ir.IRBuilder, x):
    e = _E(b, x.type)
    return e.libm("erf", x) if e.f64 else _erf32(e, x)


def pow(b: ir.IRBuilder, x, y):
    """x^y with numpy's (C99's) special cases; x and y have the same type."""
    if x.type != y.type:
        raise TypeError(f"mathlib.pow: operand types differ: {x.type} vs {y.type}")
    e = _E(b, x.type)
    return e.intrinsic("pow", x, y) if e.f64 else _pow32(e, x, y)


def sqrt(b: ir.IRBuilder, x):
    """Correctly rounded square root."""
    return _E(b, x.type).intrinsic("sqrt", x)


def rsqrt(b: ir.IRBuilder, x):
    """1/sqrt(x), computed exactly as a division (not the approximate instruction)."""
    e = _E(b, x.type)
    return e.div(e.k(1.0), e.intrinsic("sqrt", x))


# --- coefficient derivation --------------------------------------------------------------------


def _minimax(f, powers, a: float, b: float, weight, n: int = 4000, iters: int = 1500):
    """Coefficients c minimizing max |weight(x) * (f(x) - sum c_k x^powers_k)| over a dense
    Chebyshev grid on [a, b] (Lawson's algorithm: weighted least squares whose weights are
    multiplied by the current error each round, converging to the discrete minimax fit).
    Returns (coefficients, max weighted error)."""
    import numpy as np

    x = np.unique((a + b) / 2 + (b - a) / 2 * np.cos(np.linspace(0.0, np.pi, n)))
    basis = np.stack([x ** p for p in powers], axis=1)
    y, w = f(x), weight(x)
    lam = np.full(x.shape, 1.0 / x.size)
    best = (np.inf, None)
    for _ in range(iters):
        s = np.sqrt(lam) * w
        c = np.linalg.lstsq(basis * s[:, None], y * s, rcond=None)[0]
        err = np.abs(w * (y - basis @ c))
        if err.max() < best[0]:
            best = (err.max(), c)
        lam = lam * err
        lam /= lam.sum()
    return tuple(float(v) for v in best[1]), float(best[0])


def _minimax_rational(f, na: int, nb: int, b: float, weight, n: int = 4000, iters: int = 2000):
    """Coefficients of P(v) = 1 + sum_{k=1..na} p_k v^k and Q(v) = 1 + sum_{k=1..nb} q_k v^k
    minimizing max |weight(v) * (P(v)/(Q(v) f(v)) - 1)| (a weighted relative error of P/Q as
    an approximation of f, with f(0) = 1) over a dense Chebyshev grid on [0, b].

    Loeb's linearization with Lawson's weights: each round fits the coefficients, in the
    scaled variable v/b, by weighted least squares on the residual P - f*Q (linear in them)
    divided by the previous round's f*Q (so that it is the relative error of P/Q), with
    weights multiplied by the current error as in :func:`_minimax`. Returns
    ((p_1..p_na), (q_1..q_nb), max weighted error)."""
    import numpy as np

    v = np.unique(b / 2 + b / 2 * np.cos(np.linspace(0.0, np.pi, n)))
    s = v / b
    y, w = f(v), weight(v)
    basis = np.stack([s ** k for k in range(1, na + 1)] + [-y * s ** k for k in range(1, nb + 1)],
                     axis=1)
    lam = np.full(v.shape, 1.0 / v.size)
    q_prev = np.ones_like(v)
    best = (np.inf, None)
    for _ in range(iters):
        sc = np.sqrt(lam) * w / (y * q_prev)
        c = np.linalg.lstsq(basis * sc[:, None], (y - 1) * sc, rcond=None)[0]
        pv = 1 + basis[:, :na] @ c[:na]
        q_prev = 1 - basis[:, na:] @ c[na:] / y
        err = np.abs(w * (pv / (q_prev * y) - 1))
        if err.max() < best[0]:
            best = (err.max(), c)
        lam = lam * err
        lam /= lam.sum()
    c = best[1]
    p = tuple(float(c[k - 1] / b ** k) for k in range(1, na + 1))
    q = tuple(float(c[na + k - 1] / b ** k) for k in range(1, nb + 1))
    return p, q, float(best[0])


def _tanh_fast_fit(iters: int = 2000):
    """TANH_FAST_P and _Q: A/(2B) = P(u)/Q(u) ~= tanh(x/2)/(x/2) with u = x^2 on
    [0, TANH_FAST_T^2]. An error e (relative) of t = A/(2B) becomes e/cosh(x) in
    tanh(x) = 2t/(1 + t^2), so that is the weight."""
    import numpy as np

    def f(u):
        h = np.sqrt(u) / 2
        return np.where(h < 1e-4, 1 - h * h / 3, np.tanh(h) / np.where(h == 0, 1.0, h))

    return _minimax_rational(f, len(TANH_FAST_P), len(TANH_FAST_Q), TANH_FAST_T ** 2,
                             lambda u: 1 / np.cosh(np.sqrt(u)), iters=iters)


def _fit_specs():
    """name -> (target g, powers, a, b, weight w): the fit makes sum c_k x^powers_k ~= g(x) on
    [a, b] minimizing max |w(x) * error|, w chosen so that this is the error of the function."""
    import numpy as np

    erf_, erfc_ = np.vectorize(math.erf), np.vectorize(math.erfc)

    def nz(v):
        return np.where(v == 0, 1.0, v)

    def exp_q(r):  # (e^r - 1 - r) / r^2
        return np.where(np.abs(r) < 1e-4, 0.5 + r / 6 + r * r / 24, (np.expm1(r) - r) / nz(r * r))

    def log_q(f):  # (log1p(f) - f) / f^2
        return np.where(np.abs(f) < 1e-5, -0.5 + f / 3, (np.log1p(f) - f) / nz(f * f))

    def log_w(f):  # f^2 / log1p(f): relative error of log1p(f)
        return np.where(f == 0, 0.0, f * f / nz(np.log1p(f)))

    def tanh_p(u):  # (tanh(x) - x) / x^3 with u = x^2
        x = np.sqrt(u)
        return np.where(u < 1e-6, -1 / 3 + 2 * u / 15, (np.tanh(x) - x) / nz(x ** 3))

    def erf_s(u):  # erf(x)/x - 1 with u = x^2
        x = np.sqrt(u)
        return np.where(u < 1e-10, 2 / math.sqrt(math.pi) * (1 - u / 3) - 1, erf_(x) / nz(x) - 1)

    def exp2_e(r):  # (2^r - 1) / r
        return np.where(r == 0, _LN2, np.expm1(r * _LN2) / nz(r))

    lo, hi = math.sqrt(0.5) - 1, math.sqrt(2.0) - 1
    return {
        "EXP_Q": (exp_q, range(5), -0.35, 0.35, lambda r: r * r / np.exp(r)),
        "LOG_Q": (log_q, range(9), lo, hi, log_w),
        "TANH_P": (tanh_p, range(6), 0.0, TANH_T ** 2,
                   lambda u: u * np.sqrt(u) / nz(np.tanh(np.sqrt(u)))),
        "ERF_S": (erf_s, range(7), 0.0, ERF_T ** 2,
                  lambda u: np.sqrt(u) / nz(erf_(np.sqrt(u)))),
        "ERF_L": (lambda x: np.log(erfc_(x)), range(7), ERF_T, ERF_CLAMP, erfc_),
        "POW_LOG_Q": (log_q, range(13), lo, hi, log_w),
        "POW_EXP2": (exp2_e, range(8), -0.5, 0.5, lambda r: np.abs(r) / 2.0 ** r),
    }


def derive_coefficients(names=None, iters: int = 1500) -> dict:
    """Re-derive the polynomial tables (all, or those in ``names``): name -> (coefficients,
    lowest degree first, and the max weighted error of the float64 fit). Needs numpy only; all
    of them take a few seconds."""
    out = {name: _minimax(*spec, iters=iters) for name, spec in _fit_specs().items()
           if names is None or name in names}
    if names is None or {"TANH_FAST_P", "TANH_FAST_Q"} & set(names):
        p, q, err = _tanh_fast_fit(iters)
        out["TANH_FAST_P"], out["TANH_FAST_Q"] = (p, err), (q, err)
    return out


if __name__ == "__main__":  # pragma: no cover - developer tool
    for _name, (_coeffs, _err) in derive_coefficients().items():
        print(f"# max weighted error 2^{math.log2(_err):.1f}")
        print(f"{_name} = (" + ", ".join(repr(c) for c in _coeffs) + ")")
