"""``nn.init``: PyTorch's initializers, filling Parameters (or Buffers) in place on the host.

Fans follow PyTorch's rule on PyTorch's layout of the tensor: ``fan_in = shape[1] *
receptive field``, ``fan_out = shape[0] * receptive field`` (receptive field: the product of
the axes after the second). A Linear's ``w`` [in, out] is PyTorch's ``weight`` [out, in]
transposed, and its fans are counted on that layout, so ``xavier_uniform_(layer.w)`` and
``xavier_uniform_(layer.weight)`` draw from the same distribution. Random numbers come from
``lm.random.seed``'s host generator.

>>> import numpy as np
>>> from lamina import nn
>>> layer = nn.Linear(4, 8)
>>> _ = nn.init.zeros_(layer.b)
>>> _ = nn.init.kaiming_uniform_(layer.weight, nonlinearity="relu")
>>> bool(np.abs(layer.w.numpy()).max() <= np.sqrt(6 / 4))
True
"""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend.parameter import ParameterView, StateTensor
from lamina.frontend.random import host_rng
from lamina.frontend.trace import current, user_loc
from lamina.ir.errors import LaminaError
from lamina.ir.variable import Variable

__all__ = ["calculate_fan_in_and_fan_out", "calculate_gain", "constant_", "kaiming_normal_",
           "kaiming_uniform_", "normal_", "ones_", "orthogonal_", "trunc_normal_", "uniform_",
           "xavier_normal_", "xavier_uniform_", "zeros_"]


def _torch_shape(tensor, what: str) -> tuple[int, ...]:
    """The shape of ``tensor`` in PyTorch's layout (checks that it can be filled here)."""
    if current() is not None:
        raise LaminaError(f"nn.init.{what}: initializers fill parameters on the host; call "
                          "them outside compiled functions", user_loc())
    if isinstance(tensor, ParameterView):
        return tensor.shape
    if not isinstance(tensor, StateTensor):
        raise LaminaError(f"nn.init.{what}: expected a Parameter or Buffer, got "
                          f"{type(tensor).__name__}")
    perm = getattr(tensor, "_torch_perm", None)
    return tensor.shape if perm is None else tuple(tensor.shape[i] for i in perm)


def _fill(tensor, values: np.ndarray):
    """Write ``values`` (in PyTorch's layout) into ``tensor``; returns ``tensor``."""
    if isinstance(tensor, ParameterView):
        tensor.assign(values)
        return tensor
    perm = getattr(tensor, "_torch_perm", None)
    if perm is not None:
        values = np.transpose(values, np.argsort(perm))
    Variable.assign(tensor, values)
    return tensor


def _fans(shape, what: str) -> tuple[int, int]:
    if len(shape) < 2:
        raise LaminaError(f"nn.init.{what}: fan in and fan out can not be computed for a "
                          f"tensor with fewer than 2 dimensions (shape {list(shape)})")
    receptive = math.prod(shape[2:])
    return shape[1] * receptive, shape[0] * receptive


def calculate_fan_in_and_fan_out(tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a Parameter (or view) by PyTorch's rule on PyTorch's layout: what
    a layer's default initialization uses (a bias bound of 1/sqrt(fan_in), as Conv's)."""
    return _fans(_torch_shape(tensor, "calculate_fan_in_and_fan_out"),
                 "calculate_fan_in_and_fan_out")


_calculate_fan_in_and_fan_out = calculate_fan_in_and_fan_out  # PyTorch's (private) name


def calculate_gain(nonlinearity: str, param=None) -> float:
    """PyTorch's recommended gain for a nonlinearity (``leaky_relu``'s ``param`` is its
    negative slope, default 0.01)."""
    linear = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
              "conv_transpose3d", "sigmoid")
    if nonlinearity in linear:
        return 1.0
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        slope = 0.01 if param is None else param
        if isinstance(slope, bool) or not isinstance(slope, (int, float)):
            raise LaminaError(f"calculate_gain: negative_slope {slope!r} is not a number")
        return math.sqrt(2.0 / (1 + slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise LaminaError(f"calculate_gain: unsupported nonlinearity {nonlinearity!r}")


def uniform_(tensor, a: float = 0.0, b: float = 1.0):
    """Fill with U(a, b)."""
    shape = _torch_shape(tensor, "uniform_")
    return _fill(tensor, host_rng().uniform(a, b, size=shape))


def normal_(tensor, mean: float = 0.0, std: float = 1.0):
    """Fill with N(mean, std**2)."""
    shape = _torch_shape(tensor, "normal_")
    return _fill(tensor, host_rng().normal(mean, std, size=shape))


def trunc_normal_(tensor, mean: float = 0.0, std: float = 1.0, a: float = -2.0,
                  b: float = 2.0):
    """Fill with N(mean, std**2) restricted to [a, b] (values outside are drawn again)."""
    shape = _torch_shape(tensor, "trunc_normal_")
    if not a < b:
        raise LaminaError(f"nn.init.trunc_normal_: the interval [{a}, {b}] is empty")
    rng = host_rng()
    out = rng.normal(mean, std, size=shape)
    bad = (out < a) | (out > b)
    while bad.any():
        out[bad] = rng.normal(mean, std, size=int(bad.sum()))
        bad = (out < a) | (out > b)
    return _fill(tensor, out)


def constant_(tensor, val: float):
    shape = _torch_shape(tensor, "constant_")
    return _fill(tensor, np.full(shape, val))


def zeros_(tensor):
    return constant_(tensor, 0.0)


def ones_(tensor):
    return constant_(tensor, 1.0)


def xavier_uniform_(tensor, gain: float = 1.0):
    """U(-a, a) with ``a = gain * sqrt(6 / (fan_in + fan_out))`` (Glorot)."""
    shape = _torch_shape(tensor, "xavier_uniform_")
    fan_in, fan_out = _fans(shape, "xavier_uniform_")
    a = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return _fill(tensor, host_rng().uniform(-a, a, size=shape))


def xavier_normal_(tensor, gain: float = 1.0):
    """N(0, std**2) with ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    shape = _torch_shape(tensor, "xavier_normal_")
    fan_in, fan_out = _fans(shape, "xavier_normal_")
    return _fill(tensor, host_rng().normal(0.0, gain * math.sqrt(2.0 / (fan_in + fan_out)),
                                           size=shape))


def _kaiming_std(shape, a, mode, nonlinearity, what) -> float:
    if mode not in ("fan_in", "fan_out"):
        raise LaminaError(f"nn.init.{what}: mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _fans(shape, what)
    fan = fan_in if mode == "fan_in" else fan_out
    if fan == 0:
        raise LaminaError(f"nn.init.{what}: cannot initialize a tensor with no elements "
                          f"(shape {list(shape)})")
    return calculate_gain(nonlinearity, a) / math.sqrt(fan)


def kaiming_uniform_(tensor, a: float = 0.0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu"):
    """U(-bound, bound) with ``bound = gain * sqrt(3 / fan)`` (He); ``a`` is the negative
    slope of a leaky ReLU."""
    shape = _torch_shape(tensor, "kaiming_uniform_")
    bound = math.sqrt(3.0) * _kaiming_std(shape, a, mode, nonlinearity, "kaiming_uniform_")
    return _fill(tensor, host_rng().uniform(-bound, bound, size=shape))


def kaiming_normal_(tensor, a: float = 0.0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu"):
    """N(0, std**2) with ``std = gain / sqrt(fan)`` (He)."""
    shape = _torch_shape(tensor, "kaiming_normal_")
    std = _kaiming_std(shape, a, mode, nonlinearity, "kaiming_normal_")
    return _fill(tensor, host_rng().normal(0.0, std, size=shape))


def orthogonal_(tensor, gain: float = 1.0):
    """A (semi-)orthogonal matrix of the tensor's first axis by the rest, times ``gain``: the Q
    of a QR decomposition of a Gaussian matrix, with the signs of R's diagonal."""
    shape = _torch_shape(tensor, "orthogonal_")
    if len(shape) < 2:
        raise LaminaError(f"nn.init.orthogonal_: only tensors with 2 or more dimensions are "
                          f"supported (shape {list(shape)})")
    rows = shape[0]
    cols = math.prod(shape) // rows if rows else 0
    if rows == 0 or cols == 0:
        return tensor
    flat = host_rng().standard_normal((rows, cols))
    if rows < cols:
        flat = flat.T
    q, r = np.linalg.qr(flat)
    q = q * np.sign(np.diag(r))
    if rows < cols:
        q = q.T
    return _fill(tensor, (gain * q).reshape(shape))
