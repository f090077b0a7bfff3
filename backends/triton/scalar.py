"""Scalar math of the Triton code generator: how each elementwise op of the IR is written in
Triton (numpy's semantics: IEEE division and square roots, NaN-propagating max/min, stable
sigmoid and softplus, half types computed in float32 and rounded once per op), the dtype
tables, and the ``@triton.jit`` helpers pasted into kernels that use them.

``ScalarMath`` is a mixin of ``codegen.Gen``: it needs ``tmp(expr)`` (emit a temporary) and
``const(dtype, value)``.
"""

from __future__ import annotations

from dataclasses import dataclass

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Node

TL = {dt.float16: "tl.float16", dt.bfloat16: "tl.bfloat16", dt.float32: "tl.float32",
      dt.float64: "tl.float64", dt.int32: "tl.int32", dt.int64: "tl.int64", dt.bool_: "tl.int1"}
LOW = (dt.float16, dt.bfloat16)
POINTER = {dt.float16: "*fp16", dt.bfloat16: "*bf16", dt.float32: "*fp32", dt.float64: "*fp64",
           dt.int32: "*i32", dt.int64: "*i64", dt.bool_: "*i8"}


def tl_type(d: dt.DType) -> str:
    try:
        return TL[d]
    except KeyError:
        raise LaminaError(f"the triton backend does not support {d.name}") from None


@dataclass
class TV:
    """A computed value: its expression (a variable name), tile axes and dtype."""

    e: str
    deps: frozenset
    dtype: dt.DType


# Helpers pasted into a kernel's module when used (self-contained source, also for dumps).
HELPERS = {
    "add": '''
@triton.jit
def _add(a, b):
    return a + b
''',
    "max": '''
@triton.jit
def _max_nan(a, b):
    # numpy's max: NaN wins
    return tl.where((a > b) | (a != a), a, b)
''',
    "min": '''
@triton.jit
def _min_nan(a, b):
    return tl.where((a < b) | (a != a), a, b)
''',
    "argmax": '''
@triton.jit
def _argmax_pick(v1, i1, v2, i2):
    # numpy's argmax: the first NaN, else the first of the largest
    n1 = v1 != v1
    n2 = v2 != v2
    first = i1 < i2
    take1 = (n1 & ((n2 == 0) | first)) | ((n1 == 0) & (n2 == 0) & ((v1 > v2) | ((v1 == v2) & first)))
    return tl.where(take1, v1, v2), tl.where(take1, i1, i2)
''',
    "philox": '''
@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    # Philox-4x32-10 (lamina.ir.ops.source): uint32 words
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3
''',
}


class ScalarMath:
    """Elementwise ops as Triton expressions (see the module docstring)."""


    def elementwise(self, n: Node, args: list[TV]) -> TV:
        if n.op in ("alias", "stop_gradient"):
            return args[0]
        d = n.dtype
        if n.op != "cast" and (d in LOW or any(a.dtype in LOW for a in args)):
            # half types: computed in float32 and rounded once per op, as numpy does (and
            # Triton's interpreter has no bfloat16 arithmetic)
            args = [TV(self.tmp(f"{a.e}.to(tl.float32)"), a.deps, dt.float32)
                    if a.dtype in LOW else a for a in args]
            r = self._elementwise(n, args, dt.float32 if d in LOW else d)
            return TV(self.tmp(f"{r.e}.to({tl_type(d)})"), r.deps, d) if d in LOW else r
        return self._elementwise(n, args, d)

    def _elementwise(self, n: Node, args: list[TV], d: dt.DType) -> TV:
        deps = frozenset().union(*[a.deps for a in args]) if args else frozenset()
        op = n.op
        e = [a.e for a in args]
        src = args[0].dtype if args else d

        if op in ("add", "sub", "mul"):
            text = f"{e[0]} {'+' if op == 'add' else '-' if op == 'sub' else '*'} {e[1]}"
        elif op == "div":
            text = self.div(e[0], e[1], d)
        elif op == "neg":
            text = self.neg(e[0], d)
        elif op == "abs":
            text = f"tl.abs({e[0]})"
        elif op == "sign":
            if d.is_float:  # NaN passes through and -0.0 gives +0.0, as numpy
                text = (f"tl.where({e[0]} > 0, 1, tl.where({e[0]} < 0, -1, "
                        f"tl.where({e[0]} == 0, 0, {e[0]}))).to({tl_type(d)})")
            else:
                text = f"(({e[0]} > 0).to({tl_type(d)}) - ({e[0]} < 0).to({tl_type(d)}))"
        elif op in ("maximum", "minimum"):
            fn = "tl.maximum" if op == "maximum" else "tl.minimum"
            nan = ", propagate_nan=tl.PropagateNan.ALL" if d.is_float else ""
            text = f"{fn}({e[0]}, {e[1]}{nan})"
        elif op == "relu":
            zero = self.const(d, 0).e
            text = f"tl.maximum({e[0]}, {zero}, propagate_nan=tl.PropagateNan.ALL)"
        elif op == "exp":
            text = f"tl.exp({e[0]})"
        elif op == "log":
            text = f"tl.log({e[0]})"
        elif op == "sqrt":
            text = self.sqrt(e[0], d)
        elif op == "rsqrt":
            text = self.div(self.f(d, 1.0), self.sqrt(e[0], d), d)
        elif op == "erf":
            text = f"tl.erf({e[0]})"
        elif op == "sigmoid":
            x = e[0]
            z = self.tmp(f"tl.exp(-tl.abs({x}))")
            one = "1.0" if d is not dt.float64 else "tl.full([], 1.0, tl.float64)"
            text = (f"tl.where({x} >= 0, {self.div(one, f'{one} + {z}', d)}, "
                    f"{self.div(z, f'{one} + {z}', d)})")
        elif op == "softplus":
            text = self.softplus(e[0], d)
        elif op == "tanh":
            text = self.tanh(e[0], d)
        elif op == "pow":
            text = self.pow(e[0], e[1], d)
        elif op in ("sin", "cos"):
            text = f"tl.{op}({e[0]})"  # libdevice's sinf/cos on a GPU: full range reduction
        elif op in ("floor", "ceil"):
            text = f"tl.{op}({e[0]})" if d.is_float else e[0]
        elif op == "round":
            text = self.round_even(e[0], d) if d.is_float else e[0]
        elif op in ("floor_divide", "remainder"):
            q, m = (self.divmod_float if d.is_float else self.divmod_int)(e[0], e[1], d)
            text = q if op == "floor_divide" else m
        elif op in ("eq", "ne", "lt", "le", "gt", "ge"):
            sym = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}[op]
            text = f"{e[0]} {sym} {e[1]}"
        elif op == "logical_and":
            text = f"{e[0]} & {e[1]}"
        elif op == "logical_or":
            text = f"{e[0]} | {e[1]}"
        elif op == "logical_not":
            text = f"{e[0]} == 0"
        elif op == "where":
            text = f"tl.where({e[0]}, {e[1]}, {e[2]})"
        elif op == "cast":
            text = self.cast(e[0], src, n.attrs["dtype"])
        else:
            raise LaminaError(f"the triton backend has no lowering for {op}", n.loc)
        return TV(self.tmp(text), deps, d)

    @staticmethod
    def div(x: str, y: str, d: dt.DType) -> str:
        """IEEE division (Triton's ``/`` on float32 is the approximate one)."""
        return f"({x}) / ({y})" if d is dt.float64 else f"tl.div_rn({x}, {y})"

    @staticmethod
    def sqrt(x: str, d: dt.DType) -> str:
        return f"tl.sqrt({x})" if d is dt.float64 else f"tl.sqrt_rn({x})"

    def neg(self, x: str, d: dt.DType) -> str:
        """-x. Triton before 3.7 spells a float's unary minus 0 - x, which turns 0.0 into +0.0,
        not -0.0: a float is multiplied by -1 instead (exact, and NaN stays NaN)."""
        return f"({x} * {self.f(d, -1.0)})" if d.is_float else f"-{x}"

    def f(self, d: dt.DType, value: float) -> str:
        """A float constant of the compute type of ``d`` (float64 needs an explicit one:
        Triton types Python floats as float32)."""
        return f"tl.full([], {value!r}, tl.float64)" if d is dt.float64 else repr(value)

    def softplus(self, x: str, d: dt.DType) -> str:
        """log(1 + e^x) = max(x, 0) + log1p(e^-|x|). Triton has no log1p: with u = 1 + z
        rounded, log1p(z) = log(u) * z / (u - 1) to a few ulp (Goldberg; u - 1 is exact),
        where log(1 + z) alone loses all but the first digits of a z that is small against 1
        (8,000 ulp of float32 at |x| = 9)."""
        one = self.f(d, 1.0)
        z = self.tmp(f"tl.exp(-tl.abs({x}))")
        u = self.tmp(f"{one} + {z}")
        lg = self.tmp(f"tl.where({u} == {one}, {z}, tl.log({u}) * "
                      f"{self.div(z, f'{u} - {one}', d)})")
        return f"tl.maximum({x}, {self.f(d, 0.0)}) + {lg}"

    def tanh(self, x: str, d: dt.DType) -> str:
        a = self.tmp(f"tl.abs({x})")
        z = self.tmp(f"{x} * {x}")
        if d is dt.float64:  # Cephes: a rational approximation near 0
            c = lambda v: self.f(d, v)
            p = self.tmp(f"({c(-9.64399179425052238628e-1)} * {z} + "
                         f"{c(-9.92877231001918586564e1)}) * {z} + "
                         f"{c(-1.61468768441708447952e3)}")
            q = self.tmp(f"(({z} + {c(1.12811678491632931402e2)}) * {z} + "
                         f"{c(2.23548839060100448583e3)}) * {z} + "
                         f"{c(4.84406305325125486048e3)}")
            small = f"{x} + {x} * {z} * {self.div(p, q, d)}"
        else:  # Cephes tanhf near 0
            small = (f"((((-5.70498872745e-3 * {z} + 2.06390887954e-2) * {z} - "
                     f"5.37397155531e-2) * {z} + 1.33314422036e-1) * {z} - "
                     f"3.33332819422e-1) * {z} * {x} + {x}")
        s = self.tmp(f"tl.exp({self.f(d, 2.0)} * {a})")
        one = self.f(d, 1.0)
        big = self.tmp(f"{one} - {self.div(self.f(d, 2.0), f'{s} + {one}', d)}")
        big = f"tl.where({x} < 0, {self.neg(big, d)}, {big})"
        # small(-0.0) is +0.0 ((-0.0) * (-0.0 * c) + -0.0): zeros pass through as they are
        return f"tl.where({a} < {self.f(d, 0.625)}, tl.where({x} == 0, {x}, {small}), {big})"

    def pow(self, x: str, y: str, d: dt.DType) -> str:
        """numpy's float power: computed in float64 for float32 and below (exp2(y log2|x|)
        loses ~|y log2 x| ulp), with the sign and special cases of C's pow."""
        w = "tl.float64"
        xw = self.tmp(f"{x}.to({w})")
        yw = self.tmp(f"{y}.to({w})")
        one = "tl.full([], 1.0, tl.float64)"
        mag = self.tmp(f"tl.exp2({yw} * tl.log2(tl.abs({xw})))")
        odd = self.tmp(f"({yw} - 2.0 * tl.floor({yw} * 0.5)) == 1.0")
        whole = self.tmp(f"tl.floor({yw}) == {yw}")
        neg = self.tmp(f"tl.where({whole}, tl.where({odd}, {self.neg(mag, dt.float64)}, {mag}), "
                       "float('nan'))")
        r = self.tmp(f"tl.where({xw} < 0, {neg}, {mag})")
        r = self.tmp(f"tl.where(({yw} == 0) | ({xw} == 1), {one}, {r})")
        return f"{r}.to({tl_type(d)})"

    def round_even(self, x: str, d: dt.DType) -> str:
        """The nearest integer, halves to even (Triton has no rint): from floor(|x|) and the
        exact fraction |x| - floor(|x|); the sign of x kept (round(-0.3) is -0.0)."""
        f = lambda v: self.f(d, v)  # noqa: E731
        a = self.tmp(f"tl.abs({x})")
        r = self.tmp(f"tl.floor({a})")
        frac = self.tmp(f"{a} - {r}")
        odd = self.tmp(f"({r} - {f(2.0)} * tl.floor({r} * {f(0.5)})) == {f(1.0)}")
        up = self.tmp(f"({frac} > {f(0.5)}) | (({frac} == {f(0.5)}) & {odd})")
        r = self.tmp(f"tl.where({up}, {r} + {f(1.0)}, {r})")
        return f"tl.where({x} < 0, {self.neg(r, d)}, tl.where({x} == 0, {x}, {r}))"

    def divmod_float(self, x: str, y: str, d: dt.DType) -> tuple[str, str]:
        """numpy's float floor division and remainder (its npy_divmod step by step, as the
        LLVM backend does): fmod (``%``), moved into the sign of y, and the quotient
        (x - mod) / y rounded to the nearest integer. NOTE: the interpreter's ``%`` is numpy's
        exact fmod; on a GPU Triton computes it as x - trunc(x / y) * y with one FMA, which
        the sign move turns into the right remainder (to an ulp) while |x / y| < 2^24."""
        f = lambda v: self.f(d, v)  # noqa: E731
        mod = self.tmp(f"{x} % {y}")  # C's fmod
        div = self.tmp(self.div(f"{x} - {mod}", y, d))
        moved = self.tmp(f"({mod} != 0) & (({y} < 0) != ({mod} < 0))")  # NaN != 0
        mod = self.tmp(f"tl.where({moved}, {mod} + {y}, {mod})")
        div = self.tmp(f"tl.where({moved}, {div} - {f(1.0)}, {div})")
        zero = self.tmp(f"tl.abs({mod})")  # +0.0 where mod is a zero; -0.0 is -1 times it
        mod = self.tmp(f"tl.where({mod} == 0, tl.where({y} < 0, {self.neg(zero, d)}, {zero}), "
                       f"{mod})")
        fl = self.tmp(f"tl.floor({div})")
        fl = self.tmp(f"tl.where({div} - {fl} > {f(0.5)}, {fl} + {f(1.0)}, {fl})")
        q = self.tmp(self.div(x, y, d))
        # a zero quotient has the sign of x / y (finite there: |x| < |y|)
        fl = self.tmp(f"tl.where({div} == 0, {q} * {f(0.0)}, {fl})")
        return self.tmp(f"tl.where({y} == 0, {q}, {fl})"), mod

    def divmod_int(self, x: str, y: str, d: dt.DType) -> tuple[str, str]:
        """numpy's integer floor division and remainder: by 0 both are 0, x // -1 is -x
        (wrapping), and the hardware division sees neither."""
        t = tl_type(d)
        by_zero = self.tmp(f"{y} == 0")
        by_m1 = self.tmp(f"{y} == -1")
        safe = self.tmp(f"tl.where({by_zero} | {by_m1}, 1, {y}).to({t})")
        q = self.tmp(f"{x} // {safe}")  # truncated (C), like the remainder below
        r = self.tmp(f"{x} % {safe}")
        fix = self.tmp(f"({r} != 0) & (({r} < 0) != ({y} < 0))")
        q = self.tmp(f"tl.where({fix}, {q} - 1, {q})")
        q = self.tmp(f"tl.where({by_m1}, -{x}, tl.where({by_zero}, 0, {q})).to({t})")
        return q, self.tmp(f"tl.where({fix}, {r} + {y}, {r})")

    @staticmethod
    def cast(x: str, src: dt.DType, dst: dt.DType) -> str:
        if src is dst:
            return x
        if dst.is_bool:
            return f"{x} != 0"  # NaN -> True, as numpy
        if src.is_bool:
            return f"{x}.to(tl.int8).to({tl_type(dst)})"
        return f"{x}.to({tl_type(dst)})"
