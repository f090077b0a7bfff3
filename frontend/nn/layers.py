"""Layers: ``Linear``, ``Dropout``, ``Sequential`` and activation modules."""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend import ops
from lamina.frontend.nn import functional as F
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter
from lamina.frontend.random import host_rng
from lamina.ir import dtypes as dt


def uniform_init(shape, bound: float, dtype=dt.float32) -> np.ndarray:
    return host_rng().uniform(-bound, bound, size=shape).astype(dt.dtype(dtype).np)


class Linear(Module):
    """``y = x @ w + b`` with ``w`` of shape (in_features, out_features).

    Initialized like PyTorch: uniform in ±1/sqrt(in_features) for both ``w`` and ``b``.

    >>> from lamina import nn
    >>> nn.Linear(64, 128).w.shape
    (64, 128)
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True,
                 dtype=dt.float32):
        bound = 1.0 / math.sqrt(in_features)
        self.in_features, self.out_features = in_features, out_features
        self.w = Parameter(uniform_init((in_features, out_features), bound, dtype), "w")
        self.b = Parameter(uniform_init((out_features,), bound, dtype), "b") if bias else None

    def __call__(self, x):
        y = ops.matmul(x, self.w)
        return y + self.b if self.b is not None else y

    def __repr__(self) -> str:
        return f"Linear({self.in_features}, {self.out_features}, bias={self.b is not None})"


class Dropout(Module):
    """Zeroes elements with probability ``p`` in training mode and rescales the rest."""

    def __init__(self, p: float = 0.5):
        self.p = p

    def __call__(self, x):
        return F.dropout(x, self.p, self.training)


class Sequential(Module):
    """Applies modules (or functions) in order."""

    def __init__(self, *layers):
        self.layers = list(layers)

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


class ReLU(Module):
    def __call__(self, x):
        return ops.relu(x)


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
