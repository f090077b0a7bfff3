"""Neural-network building blocks: ``Module``, ``Parameter``, layers and ``functional``."""

from lamina.frontend.nn import functional
from lamina.frontend.nn.conv import (
    AdaptiveAvgPool1d,
    AdaptiveAvgPool2d,
    AvgPool1d,
    AvgPool2d,
    Conv1d,
    Conv2d,
    ConvTranspose1d,
    ConvTranspose2d,
    MaxPool1d,
    MaxPool2d,
)
from lamina.frontend.nn.layers import GELU, Dropout, Linear, ReLU, Sequential, Sigmoid, Tanh
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter

__all__ = ["GELU", "Dropout", "Linear", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid",
           "Tanh", "functional"]
__all__ += ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "Conv1d",
            "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d"]
