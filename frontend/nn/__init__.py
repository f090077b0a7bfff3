"""Neural-network building blocks: ``Module``, ``Parameter``, layers and ``functional``."""

from lamina.frontend.nn import functional
from lamina.frontend.nn.layers import GELU, Dropout, Linear, ReLU, Sequential, Sigmoid, Tanh
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Parameter

__all__ = ["GELU", "Dropout", "Linear", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid",
           "Tanh", "functional"]
