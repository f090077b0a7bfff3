"""``Variable``: a named, typed tensor that lives across calls (parameters, optimizer slots,
random-number counters). Graphs refer to it by name as state; it holds the storage.

The frontend's ``Parameter`` is a Variable; the runtime reads and updates Variables in place,
so every compiled function that uses one sees the same values.

A program that runs on a device keeps the value there between steps, in a *mirror* attached to
the Variable (any object with ``upload_from(array)`` and ``download_into(array)``). Then either
copy may be the newer one, and the Variable keeps track:

- after a device step the host copy is stale; reading it (``numpy()``, ``storage``) downloads
  first, once;
- ``storage`` hands out the host array for writing, so the mirror is stale after it, as after
  ``assign()``; ``attach_mirror()`` uploads the host value again only then.
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
        self._mirror = None  # the value on a device, when a device program attached one
        self._mirror_current = False  # the mirror holds the current value
        self._host_stale = False  # the mirror holds a newer value than ``_value``

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
        return self.host_value().copy()

    def assign(self, value) -> None:
        """Overwrite the value in place (same shape; cast to the variable's dtype)."""
        arr = np.asarray(value)
        if arr.shape != self._type.shape:
            raise LaminaError(f"cannot assign a value of shape {list(arr.shape)} to "
                              f"{self.name}: {self._type}")
        np.copyto(self._value, arr, casting="same_kind" if arr.dtype.kind == "f" else "unsafe")
        # every element was written: the host copy is current and the mirror is not
        self._host_stale = False
        self._mirror_current = False

    @property
    def storage(self) -> np.ndarray:
        """The array the runtime reads and updates in place (not a copy). The caller may write
        it, so a device mirror counts as stale afterwards (see ``host_value`` to only read)."""
        self._sync()
        self._mirror_current = False
        return self._value

    def host_value(self) -> np.ndarray:
        """The current value in host memory, for reading only (not a copy; writes through it
        would not reach a device mirror)."""
        self._sync()
        return self._value

    @property
    def mirror(self):
        """The attached device mirror (None if none), current or not."""
        return self._mirror

    @property
    def mirror_current(self) -> bool:
        """Whether the attached mirror holds the current value."""
        return self._mirror is not None and self._mirror_current

    def attach_mirror(self, mirror) -> None:
        """Make ``mirror`` hold the current value and attach it (replacing any other mirror):
        upload the host value into it, unless it is attached already and current."""
        if mirror is self._mirror and self._mirror_current:
            return
        self._sync()  # the old mirror may hold the newest value
        mirror.upload_from(self._value)
        self._mirror, self._mirror_current = mirror, True

    def mirror_updated(self) -> None:
        """The (current) mirror was changed on the device: the host copy is stale until read."""
        assert self.mirror_current, f"{self.name}: no current mirror to update"
        self._host_stale = True

    def _sync(self) -> None:
        if self._host_stale:
            self._mirror.download_into(self._value)
            self._host_stale = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}: {self._type}>"
