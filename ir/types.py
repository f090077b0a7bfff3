"""``TensorType``: the static type of every IR value (shape and dtype), and shape helpers.

Shapes are static: a compiled function is specialized per input signature.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError, ShapeError, SignatureError


class TensorType:
    """Shape and dtype of a value. Printed as ``f32[256,64]``; a scalar is ``f32[]``.

    >>> TensorType((2, 3), "f32")
    f32[2,3]
    """

    __slots__ = ("dtype", "shape")

    def __init__(self, shape, dtype="f32"):
        shape = tuple(int(d) for d in shape)
        n = 1
        for d in shape:
            if d < 0:
                raise ShapeError(f"negative dimension in shape {shape}")
            n *= d
        self.shape = shape
        self.dtype = dt.dtype(dtype)
        # numpy's limit too (sizes are signed 64-bit); the first test keeps the common case cheap
        if n > _INT64_MAX // 8 and n * self.dtype.itemsize > _INT64_MAX:
            raise ShapeError(f"shape {shape} is too large: {n} elements of "
                             f"{self.dtype.name} need {n * self.dtype.itemsize} bytes, more "
                             f"than a 64-bit machine can address ({_INT64_MAX})")

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def with_shape(self, shape) -> TensorType:
        return TensorType(shape, self.dtype)

    def with_dtype(self, dtype) -> TensorType:
        return TensorType(self.shape, dtype)

    def __eq__(self, other) -> bool:
        return (
            isinstance(other, TensorType)
            and self.shape == other.shape
            and self.dtype is other.dtype
        )

    def __hash__(self) -> int:
        return hash((self.shape, self.dtype.short))

    def __str__(self) -> str:
        return f"{self.dtype.short}[{','.join(map(str, self.shape))}]"

    __repr__ = __str__


_INT64_MIN, _INT64_MAX = -(2 ** 63), 2 ** 63 - 1


class TupleType:
    """The type of a node with several results (a loop: its carries and stacked outputs).
    Printed as ``(f32[4], i32[])``. Nothing reads a tuple but ``get``, which picks one part;
    a tuple has no shape or dtype of its own.

    >>> TupleType([TensorType((4,)), TensorType((), "i32")])
    (f32[4], i32[])
    """

    __slots__ = ("types",)

    def __init__(self, types):
        self.types = tuple(types)
        for t in self.types:
            if not isinstance(t, TensorType):
                raise LaminaError(f"a tuple holds tensor types only, got {t!r}")

    @property
    def shape(self):
        raise LaminaError(f"a {self} value has no shape: read one of its parts with get")

    @property
    def dtype(self):
        raise LaminaError(f"a {self} value has no dtype: read one of its parts with get")

    def __len__(self) -> int:
        return len(self.types)

    def __eq__(self, other) -> bool:
        return isinstance(other, TupleType) and self.types == other.types

    def __hash__(self) -> int:
        return hash(("tuple",) + self.types)

    def __str__(self) -> str:
        return "(" + ", ".join(map(str, self.types)) + ")"

    __repr__ = __str__



def row_major_strides(shape) -> tuple[int, ...]:
    """Element strides of a C-contiguous array of ``shape``."""
    out, s = [], 1
    for d in reversed(shape):
        out.append(s)
        s *= d
    return tuple(reversed(out))


def broadcast_shapes(*shapes: tuple[int, ...]) -> tuple[int, ...]:
    """numpy broadcasting of several shapes; a clear ShapeError when they do not fit.

    >>> broadcast_shapes((256, 1), (64,))
    (256, 64)
    """
    ndim = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(ndim):
        dim = 1
        for s in shapes:
            j = i - (ndim - len(s))
            if j < 0 or s[j] == 1:
                continue
            if dim != 1 and s[j] != dim:
                listed = " and ".join(str(list(s)) for s in shapes)
                raise ShapeError(f"shapes {listed} do not broadcast (axis {i}: {dim} vs {s[j]})")
            dim = s[j]
        out.append(dim)
    return tuple(out)


def normalize_axis(axis: int, ndim: int) -> int:
    """A non-negative axis index; ShapeError when out of range."""
    if not isinstance(axis, int):
        raise ShapeError(f"axis must be an int, got {axis!r}")
    if not -ndim <= axis < ndim:
        raise ShapeError(f"axis {axis} is out of range for a tensor of rank {ndim}")
    return axis % ndim


def normalize_axes(axis, ndim: int) -> tuple[int, ...]:
    """``None`` -> all axes; an int or a sequence -> sorted, non-negative, without repeats."""
    if axis is None:
        return tuple(range(ndim))
    if isinstance(axis, int):
        axis = (axis,)
    axes = tuple(sorted(normalize_axis(a, ndim) for a in axis))
    if len(set(axes)) != len(axes):
        raise ShapeError(f"repeated axis in {tuple(axis)}")
    return axes


def type_of(x, what: str = "argument") -> TensorType:
    """The TensorType of a call argument: an array, a numpy scalar (its own dtype, like a 0-d
    array), a Python number ("weak", as in numpy: float -> f32, int -> i64, bool -> bool, as a
    0-d tensor), an object with a ``.type`` (a Variable) or a TensorType used as a spec.

    An array in non-native byte order (``>f4`` on a little-endian machine) has the type of its
    values (``f32``); the runtime converts it when it is passed.

    >>> type_of(np.float64(2.5)), type_of(2.5), type_of(np.ones(3, ">f4"))
    (f64[], f32[], f32[3])
    """
    if isinstance(x, TensorType):
        return x
    if isinstance(getattr(x, "type", None), TensorType):
        return x.type
    if isinstance(x, (np.ndarray, np.generic)):  # before float: np.float64 is a float
        npd = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
        try:
            return TensorType(x.shape, dt.dtype(npd))
        except LaminaError as e:
            raise SignatureError(f"{what}: {e.message}") from None
    if isinstance(x, bool):
        return TensorType((), dt.bool_)
    if isinstance(x, int):
        if not _INT64_MIN <= x <= _INT64_MAX:
            raise SignatureError(f"{what} is {x}, which does not fit int64 (lamina's integer "
                                 f"type: {_INT64_MIN} to {_INT64_MAX}); pass it as a float or "
                                 "reduce it")
        return TensorType((), dt.DEFAULT_INT)
    if isinstance(x, float):
        return TensorType((), dt.DEFAULT_FLOAT)
    if isinstance(x, (list, tuple)):
        raise SignatureError(f"{what} is a {type(x).__name__}; pass a numpy array "
                             "(np.asarray(...)) for tensor arguments")
    raise SignatureError(f"{what} is a {type(x).__name__}; lamina functions take numpy arrays, "
                         "Python numbers or lm.TensorType specs")
