"""sin and cos for the LLVM CPU backend: inline and branch-free for float32 (loops that use
them still vectorize), libm for float64.

float32, for every input (no range limit, no slow path):

* Exact argument. ``|x| = M * 2^E`` with an integer ``M < 2^24``. For ``E <= 2`` (``|x| <
  2^26``) the reduction starts from ``y = |x|`` itself. Beyond, ``x`` is replaced by ``y = M *
  c_E`` with ``c_E = 2^E mod 2pi`` (a table of double-doubles indexed by the exponent bits, 256
  entries, ``c_E = 2^E`` exactly below), which equals ``x`` modulo 2pi because ``M`` is an
  integer: the classic Payne-Hanek idea, done with one table load instead of a window of 2/pi
  bits. ``y < 2^27`` in every case; ``M * c_hi`` is split exactly with an FMA, the rest is a
  small ``tail``.
* Reduction in double precision (Cody-Waite): ``j = rint(y * 2/pi)``, ``r = y - j*pi/2`` with
  pi/2 in three doubles (``PIO2``), the first product exact (``j < 2^27``), so ``r`` is within
  about 2^-52 |r| + 2^-79 of the true ``x mod pi/2``: far below a float32 ulp of the result
  even at the float32 closest to a multiple of pi/2 (about 2^-30 away).
* ``r`` in float32 as ``r_hi + r_lo``; ``sin(r) = r_hi + (r_lo + r^3 S(r^2))`` and ``cos(r) =
  w + (((1 - w) - h) + (r^4 C(r^2) - r_hi r_lo))`` with ``h = r^2/2`` and ``w = 1 - h`` (the
  rounding error of ``w`` recovered exactly), ``S`` and ``C`` minimax fits on ``|r| <= pi/4``
  (``SIN_S``, ``COS_C``: relative errors 2^-28 and 2^-33); the quadrant ``j mod 4`` picks sin or
  cos and the sign, and sin gets the sign of ``x``.

Measured (``tests/test_ops_math2.py``): at most 1 ulp from the correctly rounded result on dense
grids near 0, near multiples of pi/2 and up to the largest float32, sin(-0.0) = -0.0, and NaN for
infinities and NaN. float64 calls libm's ``sin`` and ``cos`` (glibc: within 1 ulp, any input).
"""

from __future__ import annotations

from fractions import Fraction

from llvmlite import ir

from lamina.backends.llvm.mathlib import _E

__all__ = ["cos", "derive_coefficients", "sin"]

# sin(r) ~= r + r^3 S(r^2), cos(r) ~= 1 - r^2/2 + r^4 C(r^2) on |r| <= 0.7854 (pi/4 plus the
# slack of a rounded quotient); minimax of the relative error, max 2^-28.0 and 2^-33.0.
SIN_S = (-0.16666654609360454, 0.00833216074970602, -0.00019515281509596086)
COS_C = (0.04166664568264882, -0.001388731623811398, 2.4433155165209486e-05)
REDUCED_MAX = 0.7854


def _pi(bits: int = 480) -> Fraction:
    """pi to ``bits`` bits, from Machin's formula pi/4 = 4 atan(1/5) - atan(1/239) in integer
    fixed point (each series alternates, so its truncation error is below its last term)."""
    one = 1 << (bits + 16)

    def atan_inv(n: int) -> int:
        total, term, k, sign = 0, one // n, 1, 1
        while term:
            total += sign * (term // k)
            term //= n * n
            k += 2
            sign = -sign
        return total

    return Fraction(4 * (4 * atan_inv(5) - atan_inv(239)), one)


def _split(v: Fraction, parts: int) -> tuple[float, ...]:
    out = []
    for _ in range(parts):
        f = float(v)
        out.append(f)
        v -= Fraction(f)
    return tuple(out)


_PI = _pi()
PIO2 = _split(_PI / 2, 3)  # pi/2 = PIO2[0] + PIO2[1] + PIO2[2] to about 2^-160
TWO_OVER_PI = float(2 / _PI)


def _reduction_table() -> tuple[list[float], list[float]]:
    """For each float32 exponent field b (0..255): c = 2^E mod 2pi as hi + lo doubles, with
    E = max(b, 1) - 150 (the scale of the integer mantissa); c = 2^E exactly for E <= 2; NaN for
    b = 255 (infinities and NaN)."""
    hi, lo = [], []
    two_pi = 2 * _PI
    for b in range(256):
        e = max(b, 1) - 150
        if b == 255:
            hi.append(float("nan")), lo.append(0.0)
        elif e <= 2:
            hi.append(2.0 ** e), lo.append(0.0)
        else:
            p = Fraction(2) ** e
            c = p - two_pi * (p // two_pi)
            h, low = _split(c, 2)
            hi.append(h), lo.append(low)
    return hi, lo


_TABLE = _reduction_table()


def _table(module: ir.Module, which: int) -> ir.GlobalVariable:
    name = f"lamina.trig.c{'hi' if which == 0 else 'lo'}"
    g = module.globals.get(name)
    if g is None:
        ty = ir.ArrayType(ir.DoubleType(), 256)
        g = ir.GlobalVariable(module, ty, name)
        g.initializer = ir.Constant(ty, _TABLE[which])
        g.global_constant = True
        g.linkage = "internal"
    return g


def _lookup(e: _E, d: _E, field):
    """(c_hi, c_lo) for the exponent fields ``field`` (i32, scalar or vector)."""
    b = e.b
    tables = [_table(b.module, k) for k in (0, 1)]
    zero = ir.Constant(ir.IntType(32), 0)

    def one(f):
        idx = b.zext(f, ir.IntType(64))
        return [b.load(b.gep(t, [zero, idx], inbounds=True)) for t in tables]

    if not e.n:
        return one(field)
    outs = [ir.Constant(d.ty, ir.Undefined), ir.Constant(d.ty, ir.Undefined)]
    for i in range(e.n):
        k = ir.Constant(ir.IntType(32), i)
        for j, v in enumerate(one(b.extract_element(field, k))):
            outs[j] = b.insert_element(outs[j], v, k)
    return outs


def _sincos32(e: _E, x, cosine: bool):
    b = e.b
    d = e.like(ir.DoubleType())
    bits = e.bits(x)
    field = b.and_(b.lshr(bits, e.ki(23)), e.ki(0xFF))
    mant = b.and_(bits, e.ki(0x7FFFFF))
    implicit = b.select(b.icmp_unsigned("!=", field, e.ki(0)), e.ki(0x800000), e.ki(0))
    m = b.uitofp(b.or_(mant, implicit), d.ty)           # |x| = m * 2^E, m < 2^24
    c_hi, c_lo = _lookup(e, d, field)
    y = d.mul(m, c_hi)                                  # == |x| (mod 2pi) with the tail
    tail = d.fma(m, c_lo, d.fma(m, c_hi, d.neg(y)))     # m*c_hi - y exactly, plus m*c_lo
    j = d.rint(d.mul(y, d.k(TWO_OVER_PI)))
    r = d.fma(d.neg(j), d.k(PIO2[0]), y)                # exact: j < 2^27
    r = d.fma(d.neg(j), d.k(PIO2[1]), r)
    r = d.add(r, tail)
    r = d.fma(d.neg(j), d.k(PIO2[2]), r)
    r_hi = b.fptrunc(r, e.ty)
    r_lo = b.fptrunc(d.sub(r, b.fpext(r_hi, d.ty)), e.ty)
    r2 = e.mul(r_hi, r_hi)
    s = e.add(r_hi, e.fma(e.mul(r_hi, r2), e.poly(r2, SIN_S), r_lo))
    h = e.mul(r2, e.k(0.5))
    w = e.sub(e.k(1.0), h)
    c_small = e.fma(e.mul(r2, r2), e.poly(r2, COS_C), e.neg(e.mul(r_hi, r_lo)))
    c = e.add(w, e.add(e.sub(e.sub(e.k(1.0), w), h), c_small))
    q = b.fptosi(d.sel(d.uno(j), d.k(0.0), j), e.ity)  # (j is NaN for infinities, NaN)
    if cosine:
        q = b.add(q, e.ki(1))                           # cos(t) = sin(t + pi/2)
    odd = b.icmp_unsigned("!=", b.and_(q, e.ki(1)), e.ki(0))
    flip = b.and_(q, e.ki(2))                           # quadrants 2 and 3: negated
    v = e.bits(e.sel(odd, c, s))
    sign = b.shl(flip, e.ki(30))
    if not cosine:
        sign = b.xor(sign, b.and_(bits, e.ki(-0x80000000)))  # sin(-x) = -sin(x)
    out = e.from_bits(b.xor(v, sign))
    return e.sel(b.icmp_unsigned("==", field, e.ki(0xFF)), e.sub(x, x), out)  # inf, NaN: NaN


def sin(b: ir.IRBuilder, x):
    """sin(x) (radians); NaN for infinities and NaN."""
    e = _E(b, x.type)
    return e.libm("sin", x) if e.f64 else _sincos32(e, x, cosine=False)


def cos(b: ir.IRBuilder, x):
    """cos(x) (radians); NaN for infinities and NaN."""
    e = _E(b, x.type)
    return e.libm("cos", x) if e.f64 else _sincos32(e, x, cosine=True)


def derive_coefficients(iters: int = 1500) -> dict:
    """Re-derive ``SIN_S`` and ``COS_C`` (name -> (coefficients, max weighted error)) with the
    minimax fit of ``mathlib``."""
    import numpy as np

    from lamina.backends.llvm.mathlib import _minimax

    def nz(v):
        return np.where(v == 0, 1.0, v)

    def sin_s(u):  # (sin(r) - r) / r^3, u = r^2
        r = np.sqrt(u)
        return np.where(u < 1e-8, -1 / 6 + u / 120, (np.sin(r) - r) / nz(r ** 3))

    def cos_c(u):  # (cos(r) - 1 + r^2/2) / r^4
        r = np.sqrt(u)
        return np.where(u < 1e-6, 1 / 24 - u / 720, (np.cos(r) - 1 + u / 2) / nz(u * u))

    top = REDUCED_MAX ** 2
    return {
        "SIN_S": _minimax(sin_s, range(3), 0.0, top,
                          lambda u: u * np.sqrt(u) / nz(np.sin(np.sqrt(u))), iters=iters),
        "COS_C": _minimax(cos_c, range(3), 0.0, top, lambda u: u * u / np.cos(np.sqrt(u)),
                          iters=iters),
    }
