"""Element types of the IR: names, numpy equivalents and the promotion rule.

Every value in a lamina graph has one of these dtypes. The short name (``f32``) is what the
printer writes and the parser reads.
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import DTypeError


class DType:
    """One element type. Instances are interned: compare with ``is`` or ``==``."""

    __slots__ = ("_np", "bits", "kind", "name", "short")

    def __init__(self, name: str, short: str, kind: str, bits: int, np_dtype):
        self.name = name  # numpy-style name: "float32"
        self.short = short  # IR name: "f32"
        self.kind = kind  # "f" float, "i" signed int, "b" bool
        self.bits = bits
        self._np = np_dtype

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_int(self) -> bool:
        return self.kind == "i"

    @property
    def is_bool(self) -> bool:
        return self.kind == "b"

    @property
    def itemsize(self) -> int:
        return max(1, self.bits // 8)

    @property
    def np(self) -> np.dtype:
        """The numpy dtype the reference interpreter computes in."""
        if self._np is None:
            raise DTypeError(
                f"{self.name} has no numpy equivalent; it is a GPU-only dtype "
                "(the reference backend computes in float32, float64, int32, int64 and bool)"
            )
        return self._np

    @property
    def dtype(self) -> np.dtype:
        """numpy reads this attribute, so ``np.zeros(3, lm.float32)`` works."""
        return self.np

    def __repr__(self) -> str:
        return f"lamina.{self.name}"

    def __str__(self) -> str:
        return self.short

    def __reduce__(self):  # keep interning across copy/deepcopy
        return (dtype, (self.name,))


float16 = DType("float16", "f16", "f", 16, np.dtype(np.float16))
bfloat16 = DType("bfloat16", "bf16", "f", 16, None)
float32 = DType("float32", "f32", "f", 32, np.dtype(np.float32))
float64 = DType("float64", "f64", "f", 64, np.dtype(np.float64))
int32 = DType("int32", "i32", "i", 32, np.dtype(np.int32))
int64 = DType("int64", "i64", "i", 64, np.dtype(np.int64))
bool_ = DType("bool", "bool", "b", 8, np.dtype(np.bool_))

ALL = (float16, bfloat16, float32, float64, int32, int64, bool_)
_BY_NAME = {d.name: d for d in ALL} | {d.short: d for d in ALL}
_BY_NAME["bool_"] = bool_

DEFAULT_FLOAT = float32
DEFAULT_INT = int64  # numpy's default integer


def dtype(x) -> DType:
    """Normalize a dtype-like (DType, "f32", "float32", np.float32, np.dtype) to a DType.

    >>> dtype("f32") is float32 and dtype(np.float64) is float64
    True
    """
    if isinstance(x, DType):
        return x
    if isinstance(x, str):
        d = _BY_NAME.get(x)
        if d is None:
            raise DTypeError(f"unknown dtype {x!r}; lamina has {', '.join(d.name for d in ALL)}")
        return d
    try:
        npd = np.dtype(x)
    except TypeError:
        raise DTypeError(f"not a dtype: {x!r}") from None
    for d in ALL:
        if d._np is not None and d._np == npd:
            return d
    raise DTypeError(
        f"numpy dtype {npd} is not supported; lamina has {', '.join(d.name for d in ALL)}"
    )


# Rank in the promotion lattice: bool < ints < floats, wider wins within a kind.
_RANK = {bool_: 0, int32: 1, int64: 2, float16: 3, bfloat16: 3, float32: 4, float64: 5}


def promote(a: DType, b: DType) -> DType:
    """The common dtype of a binary op between two tensors.

    Like JAX rather than numpy: an int mixed with a float takes the float's dtype (numpy would give
    float64 for int32 + float32), and float16 with bfloat16 gives float32.

    >>> promote(int32, float32), promote(float32, float64), promote(float16, bfloat16)
    (lamina.float32, lamina.float64, lamina.float32)
    """
    if a is b:
        return a
    if {a, b} == {float16, bfloat16}:
        return float32
    return a if _RANK[a] >= _RANK[b] else b


def weak_scalar_dtype(x: DType, scalar) -> DType:
    """Result dtype of ``tensor <op> python_scalar``: the scalar adopts the tensor's dtype unless
    it is of a higher kind (a float scalar with an int tensor gives the default float)."""
    if isinstance(scalar, (bool, np.bool_)):
        return x
    if isinstance(scalar, (int, np.integer)):
        return int64 if x.is_bool else x
    if isinstance(scalar, (float, np.floating)):
        return x if x.is_float else DEFAULT_FLOAT
    raise DTypeError(f"unsupported scalar {scalar!r} of type {type(scalar).__name__}")
