"""``Parameter`` and ``Buffer``: Variables that user code uses like tensors.

Inside a traced function they read as graph state (``x @ self.w`` records a matmul with the
state value ``%fc1.w``); outside one they behave as read-only numpy arrays. A Parameter is
trained (optimizers take it); a Buffer is state that is not trained (BatchNorm's running
statistics). ``assign`` is the one way to give either a new value, on the host or inside a step.
"""

from __future__ import annotations

import numpy as np

from lamina.frontend.trace import current, user_loc
from lamina.ir.errors import LaminaError
from lamina.ir.types import TensorType
from lamina.ir.variable import Variable


def _refuse_attribute(obj, name: str) -> None:
    why = StateTensor._NOT_ATTRIBUTES.get(name)
    if why is not None:
        what = obj.base if isinstance(obj, ParameterView) else obj
        raise LaminaError(f"cannot set .{name} of {type(obj).__name__} {what.name!r}: {why}",
                          user_loc())


class StateTensor(Variable):
    """The tensor-like behaviour that Parameters and Buffers share (see the module docstring)."""

    __array_ufunc__ = None  # np_array + parameter -> parameter.__radd__

    def __init__(self, value, name: str = "param", dtype=None):
        super().__init__(value, name, dtype)
        self._named_by_owner = False

    def operand(self):
        """The traced state value inside a trace (the value assigned earlier in this step, if
        any), else a read-only view of the data."""
        ctx = current()
        if ctx is not None:
            return ctx.read(self)
        view = self.host_value().view()
        view.flags.writeable = False
        return view

    def assign(self, value) -> None:
        """Give the state a new value (same shape; cast to its dtype within its kind).

        Outside a trace the value is written at once, in place: every compiled function sees
        it at its next call. Inside a traced function (a compiled step) the assignment is
        recorded: reads later in the same step see ``value``, and running the compiled step
        leaves the state holding the last value assigned, once per call, as an optimizer
        updates its state. A traced value must have the state's exact shape (a Python number
        fills it); a parameter that an optimizer updates in the same step cannot be assigned.

        >>> import numpy as np, lamina as lm
        >>> count = lm.nn.Buffer(np.zeros((), np.int64))
        >>> def step(x):
        ...     count.assign(count + 1)
        ...     return x * 2
        >>> f = lm.compile(step)
        >>> _ = f(np.ones(2, np.float32)); _ = f(np.ones(2, np.float32))
        >>> int(count.numpy())
        2
        """
        ctx = current()
        if ctx is not None:
            ctx.assign_state(self, value, user_loc())
        else:
            Variable.assign(self, value)

    # PyTorch habits that would otherwise set a plain attribute and change nothing
    _NOT_ATTRIBUTES = {
        "data": "give it a new value with .assign(value) (PyTorch's p.data = ...)",
        "value": "give it a new value with .assign(value)",
        "requires_grad": "to freeze a parameter, leave it out of the optimizer's parameter "
                         "list (optim.SGD([p for p in model.parameters() if ...]))",
        "grad": "gradients are values inside the step (lm.grad, optimizer.minimize), not "
                "attributes of the parameter",
    }

    def __setattr__(self, name, value):
        _refuse_attribute(self, name)
        super().__setattr__(name, value)

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


# The operators a state tensor (and a view of one) forwards to its operand.
OPERATORS = ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__",
             "__truediv__", "__rtruediv__", "__pow__", "__rpow__", "__matmul__", "__rmatmul__",
             "__neg__", "__pos__", "__abs__", "__lt__", "__le__", "__gt__", "__ge__",
             "__getitem__", "__floordiv__", "__rfloordiv__", "__mod__", "__rmod__",
             "__divmod__", "__rdivmod__")

for _name in OPERATORS:
    setattr(StateTensor, _name, _forward(_name))


class Parameter(StateTensor):
    """A trainable tensor owned by a module; its name is its attribute path (``fc1.w``).

    >>> import numpy as np, lamina as lm
    >>> p = lm.nn.Parameter(np.ones((2, 2), np.float32))
    >>> (p + 1).sum()
    np.float32(8.0)
    """

    def __init__(self, value, name: str = "param", dtype=None):
        super().__init__(value, name, dtype)
        # The axes of PyTorch's layout of this tensor, when they differ from lamina's (Linear's
        # ``w`` is [in, out], PyTorch's ``weight`` [out, in]): ``nn.init`` computes fans on it.
        self._torch_perm: tuple[int, ...] | None = None


class Buffer(StateTensor):
    """State that is not trained: resident like a Parameter (in ``state_dict()`` when
    ``persistent``, in artifacts, shared by every compiled function), never given to an
    optimizer, updated inside a compiled step with :meth:`assign`.

    Assign one to a module attribute, or use ``Module.register_buffer(name, value)``:

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> class Counter(nn.Module):
    ...     def __init__(self):
    ...         self.calls = nn.Buffer(np.zeros((), np.int64))
    ...     def __call__(self, x):
    ...         self.calls.assign(self.calls + 1)
    ...         return x + 1
    >>> m = Counter()
    >>> f = lm.compile(m)
    >>> _ = f(np.zeros(3, np.float32)); _ = f(np.zeros(3, np.float32))
    >>> dict(m.state_dict())
    {'calls': array(2)}
    >>> m.parameters()
    []
    """

    def __init__(self, value, persistent: bool = True, name: str = "buffer", dtype=None):
        super().__init__(value, name, dtype)
        self.persistent = bool(persistent)


class ParameterView:
    """A Parameter seen in PyTorch's layout: ``nn.Linear(4, 8).weight`` is ``w`` [4, 8]
    transposed, [8, 4]. It reads like the parameter (a traced tensor inside a trace, a
    read-only array outside) and writes through to it: ``assign``, ``nn.init``.

    >>> import numpy as np
    >>> from lamina import nn
    >>> layer = nn.Linear(4, 8)
    >>> layer.weight.shape, layer.w.shape
    ((8, 4), (4, 8))
    >>> layer.weight.assign(np.ones((8, 4), np.float32)); float(layer.w.numpy().sum())
    32.0
    """

    __array_ufunc__ = None

    def __init__(self, base: Parameter, perm: tuple[int, ...]):
        self.base, self.perm = base, tuple(perm)
        self._inverse = tuple(int(i) for i in np.argsort(self.perm))

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.base.shape[i] for i in self.perm)

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def type(self) -> TensorType:
        return TensorType(self.shape, self.base.dtype)

    @property
    def ndim(self) -> int:
        return len(self.perm)

    def operand(self):
        return self.base.operand().transpose(self.perm)

    def numpy(self) -> np.ndarray:
        return np.ascontiguousarray(self.base.numpy().transpose(self.perm))

    def __setattr__(self, name, value):
        _refuse_attribute(self, name)
        super().__setattr__(name, value)

    def __array__(self, dtype=None, copy=None):
        arr = self.numpy()
        return arr if dtype is None else arr.astype(dtype)

    def assign(self, value) -> None:
        """Assign ``value`` (in this view's layout) to the parameter, as ``Parameter.assign``."""
        if isinstance(value, (bool, int, float)):
            self.base.assign(value)
        elif current() is not None:
            from lamina.frontend.ops import transpose

            self.base.assign(transpose(value, self._inverse))
        else:
            arr = np.asarray(value)
            if arr.shape != self.shape:
                raise LaminaError(f"cannot assign a value of shape {list(arr.shape)} to "
                                  f"{self.name} seen as {self.type} (PyTorch's layout)")
            self.base.assign(arr.transpose(self._inverse))

    def __getattr__(self, name):
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self.operand(), name)

    def __len__(self):
        return self.shape[0]

    def __repr__(self) -> str:
        return f"<ParameterView {self.name} as {self.type}>"


for _name in OPERATORS:
    setattr(ParameterView, _name, _forward(_name))
