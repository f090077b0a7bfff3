"""The frontend: the Python DSL users write models in, traced into Graphs."""

from lamina.frontend import nn, ops, optim, random
from lamina.frontend.parameter import Parameter
from lamina.frontend.tensor import Tensor
from lamina.frontend.trace import trace, trace_function
from lamina.frontend.transforms import grad, value_and_grad

__all__ = ["Parameter", "Tensor", "grad", "nn", "ops", "optim", "random", "trace",
           "trace_function", "value_and_grad"]
