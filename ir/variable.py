"""``Variable``: a named, typed tensor that lives across calls (parameters, optimizer slots,
random-number counters). Graphs refer to it by name as state; it holds the storage.

The frontend's ``Parameter`` is a Variable; the runtime reads and updates Variables in place,
so every compiled function that uses one sees the same values.
"""

from __future__ import annotations

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.types import TensorType


class Variable:
    """Mutable storage with a name and a fixed type.

    >>> v = Variable(np.zeros((2, 3), np.float32), name="w")
    >>> v.type, v.name
    (f32[2,3], 'w')
    """

    def __init__(self, value, name: str = "var", dtype=None):
        arr = np.array(value, dtype=None if dtype is None else dt.dtype(dtype).np, copy=True,
                       order="C")
        self._type = TensorType(arr.shape, dt.dtype(arr.dtype))
        self._value = arr
        self.name = name

    @property
    def type(self) -> TensorType:
        return self._type

    @property
    def shape(self) -> tuple[int, ...]:
        return self._type.shape

    @property
    def dtype(self) -> dt.DType:
        return self._type.dtype

    def numpy(self) -> np.ndarray:
        """A copy of the current value."""
        return self._value.copy()

    def assign(self, value) -> None:
        """Overwrite the value in place (same shape; cast to the variable's dtype)."""
        arr = np.asarray(value)
        if arr.shape != self._type.shape:
            raise LaminaError(f"cannot assign a value of shape {list(arr.shape)} to "
                              f"{self.name}: {self._type}")
        np.copyto(self._value, arr, casting="same_kind" if arr.dtype.kind == "f" else "unsafe")

    @property
    def storage(self) -> np.ndarray:
        """The array the runtime reads and updates in place (not a copy)."""
        return self._value

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {self._type}>"
