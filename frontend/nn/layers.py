"""Layers: ``Linear``, ``Dropout``, ``Identity``, ``Flatten`` and activation
modules (containers are in ``containers.py``, normalization layers in ``norm.py``,
``Embedding`` in ``sparse.py``)."""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend import ops
from lamina.frontend.nn import functional as F
from lamina.frontend.nn.containers import ModuleDict, ModuleList, Sequential  # noqa: F401
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter, ParameterView
from lamina.frontend.random import host_rng
from lamina.frontend.trace import current, user_loc
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError


def uniform_init(shape, bound: float, dtype=dt.float32) -> np.ndarray:
    return host_rng().uniform(-bound, bound, size=shape).astype(dt.dtype(dtype).np)


class Linear(Module):
    """``y = x @ w + b`` with ``w`` of shape (in_features, out_features) and ``b``
    (out_features,).

    Initialized like PyTorch: uniform in ±1/sqrt(in_features) for both ``w`` and ``b``.

    lamina keeps the weight as ``w`` [in, out], the layout its GEMM reads, under the names
    ``w`` and ``b`` (``state_dict()``, the IR and artifacts use them). PyTorch's names work too:
    ``weight`` is ``w`` seen as [out, in] (a :class:`ParameterView`: read it, ``assign`` it,
    ``nn.init`` it) and ``bias`` is ``b``; ``load_state_dict`` takes a PyTorch state dict's
    ``weight`` [out, in] and ``bias`` and stores the weight transposed.

    >>> from lamina import nn
    >>> layer = nn.Linear(64, 128)
    >>> layer.w.shape, layer.weight.shape, layer.bias is layer.b
    ((64, 128), (128, 64), True)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=dt.float32):
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.w = Parameter(uniform_init((in_features, out_features), bound, dtype), "w")
        self.w._torch_perm = (1, 0)
        self.b = Parameter(uniform_init((out_features,), bound, dtype), "b") if bias else None

    @property
    def weight(self):
        """The weight in PyTorch's layout [out, in]: a traced tensor inside a trace, else a
        view that reads and writes ``w``."""
        view = ParameterView(self.w, (1, 0))
        return view.operand() if current() is not None else view

    @weight.setter
    def weight(self, value):
        raise LaminaError("Linear.weight is a view of Linear.w in PyTorch's layout: give it a "
                          "new value with layer.weight.assign(value) (or load_state_dict)")

    @property
    def bias(self):
        """PyTorch's name of ``b``."""
        return self.b

    def __call__(self, x):
        y = ops.matmul(x, self.w)
        return y + self.b if self.b is not None else y

    def _torch_key(self, local: str):
        return {"w": ("weight", (1, 0)), "b": ("bias", None)}.get(local, (local, None))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.b is not None}")


class Identity(Module):
    """Returns its input (extra arguments are ignored, as in PyTorch)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, x):
        return x


class Flatten(Module):
    """Flattens axes ``start_dim`` to ``end_dim`` into one (by default all but the batch axis).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> lm.compile(nn.Flatten())(np.zeros((2, 3, 4, 5), np.float32)).shape
    (2, 60)
    """

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = start_dim, end_dim

    def __call__(self, x):
        return flatten(x, self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


def flatten(x, start_dim: int = 0, end_dim: int = -1):
    """``x`` with axes ``start_dim`` to ``end_dim`` merged (``torch.flatten``)."""

    def f(b, v):
        n = max(v.ndim, 1)
        s, e = start_dim % n if -n <= start_dim < n else None, \
            end_dim % n if -n <= end_dim < n else None
        if s is None or e is None or s > e:
            raise LaminaError(f"flatten: start_dim {start_dim} and end_dim {end_dim} do not "
                              f"fit a tensor of rank {v.ndim}", user_loc())
        if v.ndim == 0:
            return v.reshape(1)
        shape = v.shape[:s] + (math.prod(v.shape[s:e + 1]),) + v.shape[e + 1:]
        return v.reshape(shape) if shape != v.shape else v

    return ops.run(f, x)


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode and rescales the rest."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x):
        return F.dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class ReLU(Module):
    def __call__(self, x):
        return ops.relu(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = float(negative_slope)

    def __call__(self, x):
        from lamina.frontend.nn.functional import leaky_relu

        return leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class SiLU(Module):
    def __call__(self, x):
        return x * ops.sigmoid(x)


class Tanh(Module):
    def __call__(self, x):
        return ops.tanh(x)


class Sigmoid(Module):
    def __call__(self, x):
        return ops.sigmoid(x)


class GELU(Module):
    def __init__(self, approximate: str = "tanh"):
        self.approximate = approximate

    def __call__(self, x):
        return ops.gelu(x, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"
