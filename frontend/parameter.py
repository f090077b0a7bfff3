"""``Parameter``: a trainable Variable that user code uses like a tensor.

Inside a traced function a Parameter reads as graph state (``x @ self.w`` records a matmul with
the state value ``%fc1.w``); outside one it behaves as a read-only numpy array.
"""

from __future__ import annotations

from lamina.frontend.trace import current
from lamina.ir.variable import Variable


class Parameter(Variable):
    """A trainable tensor owned by a module; its name is its attribute path (``fc1.w``).

    >>> import numpy as np, lamina as lm
    >>> p = lm.nn.Parameter(np.ones((2, 2), np.float32))
    >>> (p + 1).sum()
    np.float32(8.0)
    """

    __array_ufunc__ = None  # np_array + parameter -> parameter.__radd__

    def __init__(self, value, name: str = "param", dtype=None):
        super().__init__(value, name, dtype)
        self._named_by_owner = False

    def operand(self):
        """The traced state value inside a trace, else a read-only view of the data."""
        ctx = current()
        if ctx is not None:
            return ctx.read(self)
        view = self.host_value().view()
        view.flags.writeable = False
        return view

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def __getattr__(self, name):
        # Tensor methods (sum, reshape, T, ...) act on the operand.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.operand(), name)

    def __len__(self):
        return self.shape[0]


def _forward(name):
    def method(self, *args):
        return getattr(self.operand(), name)(*args)

    method.__name__ = name
    return method


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
              "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__",
              "__neg__", "__pos__", "__abs__", "__lt__", "__le__", "__gt__", "__ge__",
              "__getitem__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__",
              "__divmod__", "__rdivmod__"):
    setattr(Parameter, _name, _forward(_name))

