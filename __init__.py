"""lamina: a small deep-learning compiler.

    trace (frontend) -> ir (Graph) -> passes -> backend render/compile -> runtime run

>>> import numpy as np, lamina as lm
>>> f = lm.compile(lambda x: lm.relu(x) * 2)
>>> f(np.array([-1.0, 3.0], np.float32))
array([0., 6.], dtype=float32)
"""

__version__ = "0.1.0"

from lamina import ir
from lamina.compiler import CompiledFunction, compile, load
from lamina.frontend import data, nn, optim, random
from lamina.frontend.checkpoint import load_checkpoint, save_checkpoint
from lamina.frontend.ops import (
    abs,
    add,
    arange,
    argmax,
    astype,
    broadcast_to,
    ceil,
    clip,
    concatenate,
    cos,
    cumsum,
    divide,
    erf,
    exp,
    expand_dims,
    floor,
    floor_divide,
    full,
    gelu,
    log,
    log_softmax,
    logsumexp,
    masked_fill,
    matmul,
    max,
    maximum,
    mean,
    min,
    minimum,
    mod,
    multiply,
    negative,
    one_hot,
    ones,
    ones_like,
    pad,
    power,
    relu,
    remainder,
    reshape,
    round,
    rsqrt,
    sigmoid,
    sign,
    sin,
    softmax,
    softplus,
    sqrt,
    square,
    squeeze,
    stack,
    std,
    stop_gradient,
    subtract,
    sum,
    take,
    tanh,
    transpose,
    var,
    where,
    zeros,
    zeros_like,
)
from lamina.frontend.loops import fori_loop, scan, while_loop
from lamina.frontend.spatial import avg_pool, conv, conv_transpose, max_pool
from lamina.frontend.tensor import Tensor
from lamina.frontend.trace import trace
from lamina.frontend.transforms import grad, value_and_grad
from lamina.ir.dtypes import bfloat16, bool_, float16, float32, float64, int32, int64
from lamina.ir.errors import (
    ArtifactError,
    ConfigError,
    DTypeError,
    GradError,
    LaminaError,
    LaminaWarning,
    ParseError,
    PromotionWarning,
    ShapeError,
    SignatureError,
    TraceError,
    VerifyError,
)
from lamina.ir.types import TensorType

_ALIASES = {"lamina.nn": nn, "lamina.nn.functional": nn.functional, "lamina.optim": optim,
            "lamina.random": random, "lamina.nn.init": nn.init,
            "lamina.optim.lr_scheduler": optim.lr_scheduler, "lamina.nn.utils": nn.utils,
            "lamina.data": data}


def _register_aliases():
    # `import lamina.nn.functional as F` works like `from lamina import nn`.
    import sys

    for name, module in _ALIASES.items():
        sys.modules.setdefault(name, module)


_register_aliases()

__all__ = [
    "ArtifactError", "CompiledFunction", "ConfigError", "DTypeError", "GradError",
    "LaminaError", "LaminaWarning", "ParseError", "PromotionWarning", "ShapeError",
    "SignatureError", "Tensor", "TensorType", "TraceError", "VerifyError", "abs",
    "add", "arange", "argmax", "astype", "bfloat16", "bool_",
    "broadcast_to", "clip", "compile", "concatenate", "divide", "erf", "exp", "expand_dims",
    "float16", "float32", "float64", "full", "gelu", "grad", "int32", "int64", "ir", "load",
    "log", "log_softmax", "logsumexp", "matmul", "max", "maximum", "mean", "min", "minimum",
    "multiply", "negative", "nn", "one_hot", "ones", "ones_like", "optim", "power", "random",
    "relu", "reshape", "rsqrt", "sigmoid", "sign", "softmax", "softplus", "sqrt", "square", "squeeze",
    "stack", "std", "stop_gradient", "subtract", "sum", "take", "tanh", "trace", "transpose",
    "value_and_grad", "var", "where", "zeros", "zeros_like",
    # trigonometry, rounding, floor division, remainder, scans and padding
    "ceil", "cos", "cumsum", "floor", "floor_divide", "mod", "pad", "remainder", "round", "sin",    # loops (one node whatever the trip count)
    "fori_loop", "scan", "while_loop",
]
__all__ += ["avg_pool", "conv", "conv_transpose", "max_pool"]  # convolution and pooling
__all__ += ["masked_fill"]  # masking (issue 9)
__all__ += ["data", "load_checkpoint", "save_checkpoint"]  # the training kit (issue 11)
