"""Input domains: the inputs each op is valid on, declared with its other facts (``domain=``).

The random-program checker (``lamina.testing``) builds programs from them. For an op it picks a
first operand that fits ``first`` (a value already in the program or a fresh one), draws the
attributes with ``attrs``, and picks or makes the other operands that ``rest`` describes. A
coverage test fails for a registered op without a domain, so a new op is fuzzed from its first
commit; ops no program calls directly say how programs reach them (``via``).

Samplers get a generator context ``g`` with ``g.rng`` (a numpy Generator), ``g.dim()`` (a size
from the program's small vocabulary, so equal-sized axes are common) and ``g.shape(rank=None)``
(a shape of such sizes, rank 0-4). They return ``None`` when the first operand does not fit
(e.g. a max over an empty axis): the checker then tries something else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from lamina.ir import dtypes as dt
from lamina.ir.types import TensorType, broadcast_shapes


@dataclass(frozen=True)
class Operand:
    """What one operand may be: dtype kinds, a value range, an exact shape."""

    kinds: str = "f"  # allowed dtype kinds: "f" float, "i" integer, "b" bool
    lo: float | None = None  # every value in [lo, hi] (None: unbounded on that side)
    hi: float | None = None
    min_abs: float = 0.0  # every value at least this far from 0 (a divisor)
    shape: tuple[int, ...] | None = None  # exact shape (None: the checker chooses)
    ranks: tuple[int, ...] | None = None  # the ranks it may have (None: any; conv: 3 or 4)

    def with_shape(self, shape) -> Operand:
        return Operand(self.kinds, self.lo, self.hi, self.min_abs, tuple(shape))


@dataclass(frozen=True)
class Domain:
    """The inputs an op is valid on (see the module docstring)."""

    first: Operand | None = Operand()  # None: the op has no tensor operands
    rest: Callable | None = None  # (g, first_type, attrs) -> [Operand with shape, ...]
    attrs: Callable | None = None  # (g, first_type) -> dict, or None when first does not fit
    # The rounding allowance of one evaluation, in ulps of the result's dtype: 1 for correctly
    # rounded arithmetic, more for approximated math (the backends' exp, tanh, ... are within
    # a few ulps) and for ops computed with several roundings (a division as a reciprocal and
    # a multiplication).
    ulps: float = 1.0
    via: str = ""  # how programs reach an op that they cannot call ("lm.grad", "fusion", ...)

    @property
    def callable(self) -> bool:
        return not self.via


# --- shapes of the other operands -------------------------------------------------------------


def partner_shape(g, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with ``shape`` (numpy rules): the same, fewer leading axes,
    some axes 1, or extra leading axes; either side may be the larger."""
    rng = g.rng
    out = list(shape)
    r = rng.random()
    if r < 0.35:
        return tuple(out)
    if r < 0.55 and out:
        out = out[rng.integers(1, len(out) + 1):]
    elif r < 0.8:
        out = [1 if rng.random() < 0.5 else d for d in out]
    else:
        out = [g.dim() if rng.random() < 0.5 else 1
               for _ in range(rng.integers(1, 3))] + out
    out = out[-4:] if len(out) > 4 else out
    broadcast_shapes(tuple(out), tuple(shape))  # NOTE: valid by construction
    return tuple(out)


def broadcasting(*operands: Operand) -> Callable:
    """``rest`` for elementwise ops: each operand of a shape broadcasting with the first."""

    def rest(g, first: TensorType, attrs):
        return [o.with_shape(partner_shape(g, first.shape)) for o in operands]

    return rest


# --- attributes -------------------------------------------------------------------------------


def reduce_attrs(nonempty: bool = False, single: bool = False) -> Callable:
    """``axis`` (None, an int, possibly negative, or a tuple) and ``keepdims``; ``nonempty``:
    every reduced axis has elements (max, min, mean, argmax); ``single``: one axis or None."""

    def attrs(g, t: TensorType):
        rng, n = g.rng, t.ndim
        choices = []
        if not (nonempty and t.size == 0):
            choices.append(None)
        ok_axes = [a for a in range(n) if not (nonempty and t.shape[a] == 0)]
        if ok_axes:
            choices += ["one", "one"] + ([] if single else ["many"])
        if not choices:
            return None
        pick = choices[rng.integers(len(choices))]
        if pick is None:
            axis = None
        elif pick == "one":
            a = int(rng.choice(ok_axes))
            axis = a - n if rng.random() < 0.3 else a
        else:
            k = int(rng.integers(1, len(ok_axes) + 1))
            axis = tuple(int(a) for a in rng.choice(ok_axes, size=k, replace=False))
        return {"axis": axis, "keepdims": bool(rng.random() < 0.4)}

    return attrs


def axis_attr(g, t: TensorType):
    """One axis of a tensor of rank >= 1 (negative sometimes): softmax, concatenate, ..."""
    if t.ndim == 0:
        return None
    a = int(g.rng.integers(t.ndim))
    return {"axis": a - t.ndim if g.rng.random() < 0.3 else a}


def dtype_attr(kinds: str = "fib") -> Callable:
    """``dtype``: one of the dtypes of the given kinds (no float16/bfloat16: CPU backends)."""
    pool = [d for d in (dt.float32, dt.float64, dt.int32, dt.int64, dt.bool_) if d.kind in kinds]

    def attrs(g, t):
        return {"dtype": pool[int(g.rng.integers(len(pool)))]}

    return attrs
