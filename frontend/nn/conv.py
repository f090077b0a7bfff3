"""Convolution and pooling layers with PyTorch's names, arguments, parameter names and
layouts (``weight`` [out, in/groups, *kernel], ``ConvTranspose``'s [in, out/groups, *kernel],
``bias`` [out]) and default initialization, so a PyTorch ``state_dict`` loads by name."""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend import spatial
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter
from lamina.frontend.random import host_rng
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError


def _tuple(v, r: int, what: str, cls: str) -> tuple:
    if isinstance(v, (int, np.integer)):
        return (int(v),) * r
    v = tuple(int(x) for x in v)
    if len(v) != r:
        raise LaminaError(f"{cls}: {what} needs {r} entries, got {list(v)}")
    return v


def _uniform(shape, bound: float, dtype) -> np.ndarray:
    return host_rng().uniform(-bound, bound, size=shape).astype(dt.dtype(dtype).np)


class _ConvNd(Module):
    _rank = 2
    _transposed = False

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 output_padding=0, dtype=dt.float32):
        name, r = type(self).__name__, self._rank
        if in_channels % groups or out_channels % groups:
            raise LaminaError(f"{name}: in_channels ({in_channels}) and out_channels "
                              f"({out_channels}) must be divisible by groups ({groups})")
        if padding_mode != "zeros":
            raise LaminaError(f"{name}: padding_mode {padding_mode!r} is not supported "
                              "(only 'zeros')")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, r, "kernel_size", name)
        self.stride = _tuple(stride, r, "stride", name)
        self.padding = padding if isinstance(padding, str) else _tuple(padding, r, "padding",
                                                                        name)
        self.dilation = _tuple(dilation, r, "dilation", name)
        self.output_padding = _tuple(output_padding, r, "output_padding", name)
        if self._transposed:
            shape = (in_channels, out_channels // groups, *self.kernel_size)
            fan_in = out_channels // groups * math.prod(self.kernel_size)  # as torch computes
        else:
            shape = (out_channels, in_channels // groups, *self.kernel_size)
            fan_in = in_channels // groups * math.prod(self.kernel_size)
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) = uniform(+-1/sqrt(fan_in)), bias too
        bound = 1.0 / math.sqrt(fan_in) if fan_in else 0.0
        self.weight = Parameter(_uniform(shape, bound, dtype), "weight")
        self.bias = Parameter(_uniform((out_channels,), bound, dtype), "bias") if bias else None

    def extra_repr(self) -> str:
        parts = [f"{self.in_channels}, {self.out_channels}",
                 f"kernel_size={self.kernel_size}", f"stride={self.stride}"]
        if self.padding != (0,) * self._rank:
            parts.append(f"padding={self.padding!r}")
        if self._transposed and any(self.output_padding):
            parts.append(f"output_padding={self.output_padding}")
        if self.dilation != (1,) * self._rank:
            parts.append(f"dilation={self.dilation}")
        if self.groups != 1:
            parts.append(f"groups={self.groups}")
        if self.bias is None:
            parts.append("bias=False")
        return ", ".join(parts)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.extra_repr()})"

    def __call__(self, x):
        if self._transposed:
            fn = spatial.conv_transpose1d if self._rank == 1 else spatial.conv_transpose2d
            return fn(x, self.weight, self.bias, self.stride, self.padding,
                      self.output_padding, self.groups, self.dilation)
        fn = spatial.conv1d if self._rank == 1 else spatial.conv2d
        return fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation,
                  self.groups)


class Conv1d(_ConvNd):
    """PyTorch's ``nn.Conv1d``: ``weight`` [out, in/groups, k], ``bias`` [out].

    >>> from lamina import nn
    >>> nn.Conv1d(4, 8, 3).weight.shape
    (8, 4, 3)
    """

    _rank = 1


class Conv2d(_ConvNd):
    """PyTorch's ``nn.Conv2d``: ``weight`` [out, in/groups, kh, kw], ``bias`` [out].

    >>> from lamina import nn
    >>> nn.Conv2d(1, 16, 3, padding=1)
    Conv2d(1, 16, kernel_size=(3, 3), stride=(1, 1), padding=(1, 1))
    """

    _rank = 2


class _ConvTransposeNd(_ConvNd):
    _transposed = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 output_padding=0, groups: int = 1, bias: bool = True, dilation=1,
                 padding_mode: str = "zeros", dtype=dt.float32):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, output_padding, dtype)


class ConvTranspose1d(_ConvTransposeNd):
    """PyTorch's ``nn.ConvTranspose1d``: ``weight`` [in, out/groups, k]."""

    _rank = 1


class ConvTranspose2d(_ConvTransposeNd):
    """PyTorch's ``nn.ConvTranspose2d``: ``weight`` [in, out/groups, kh, kw].

    >>> from lamina import nn
    >>> nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1).weight.shape
    (16, 8, 4, 4)
    """

    _rank = 2


class _MaxPoolNd(Module):
    _rank = 2

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1,
                 return_indices: bool = False, ceil_mode: bool = False):
        if return_indices:
            raise LaminaError(f"{type(self).__name__}: return_indices=True is not supported")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.dilation, self.ceil_mode = dilation, ceil_mode

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, "
                f"stride={self.stride if self.stride is not None else self.kernel_size}, "
                f"padding={self.padding}, dilation={self.dilation}, "
                f"ceil_mode={self.ceil_mode})")

    def __call__(self, x):
        fn = spatial.max_pool1d if self._rank == 1 else spatial.max_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class MaxPool1d(_MaxPoolNd):
    """PyTorch's ``nn.MaxPool1d`` (without return_indices)."""

    _rank = 1


class MaxPool2d(_MaxPoolNd):
    """PyTorch's ``nn.MaxPool2d`` (without return_indices).

    >>> from lamina import nn
    >>> nn.MaxPool2d(2)
    MaxPool2d(kernel_size=2, stride=2, padding=0, dilation=1, ceil_mode=False)
    """

    _rank = 2


class _AvgPoolNd(Module):
    _rank = 2

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override=None):
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode, self.count_include_pad = ceil_mode, count_include_pad
        self.divisor_override = divisor_override

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(kernel_size={self.kernel_size}, "
                f"stride={self.stride if self.stride is not None else self.kernel_size}, "
                f"padding={self.padding})")

    def __call__(self, x):
        fn = spatial.avg_pool1d if self._rank == 1 else spatial.avg_pool2d
        return fn(x, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                  self.count_include_pad, self.divisor_override)


class AvgPool1d(_AvgPoolNd):
    """PyTorch's ``nn.AvgPool1d``."""

    _rank = 1

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
                 count_include_pad: bool = True):
        super().__init__(kernel_size, stride, padding, ceil_mode, count_include_pad)


class AvgPool2d(_AvgPoolNd):
    """PyTorch's ``nn.AvgPool2d``."""

    _rank = 2


class _AdaptiveAvgPoolNd(Module):
    _rank = 2

    def __init__(self, output_size):
        self.output_size = output_size

    def __repr__(self) -> str:
        return f"{type(self).__name__}(output_size={self.output_size})"

    def __call__(self, x):
        fn = spatial.adaptive_avg_pool1d if self._rank == 1 else spatial.adaptive_avg_pool2d
        return fn(x, self.output_size)


class AdaptiveAvgPool1d(_AdaptiveAvgPoolNd):
    """PyTorch's ``nn.AdaptiveAvgPool1d``."""

    _rank = 1


class AdaptiveAvgPool2d(_AdaptiveAvgPoolNd):
    """PyTorch's ``nn.AdaptiveAvgPool2d``: output size 1 is the global average.

    >>> import numpy as np
    >>> from lamina import nn
    >>> nn.AdaptiveAvgPool2d(1)(np.ones((2, 3, 4, 4), np.float32)).shape
    (2, 3, 1, 1)
    """

    _rank = 2
