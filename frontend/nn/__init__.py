"""Neural-network building blocks: ``Module``, ``Parameter``, ``Buffer``, layers, ``init`` and
``functional``."""

from lamina.frontend.nn import functional, init, utils
from lamina.frontend.nn.containers import ModuleDict, ModuleList, Sequential
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
from lamina.frontend.nn.layers import (
    GELU,
    Dropout,
    Flatten,
    Identity,
    LeakyReLU,
    Linear,
    ReLU,
    Sigmoid,
    SiLU,
    Tanh,
)
from lamina.frontend.nn.module import Module
from lamina.frontend.nn.norm import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm, RMSNorm
from lamina.frontend.nn.sparse import Embedding
from lamina.frontend.nn.upsample import Upsample
from lamina.frontend.parameter import Buffer, Parameter, ParameterView

__all__ = ["GELU", "Dropout", "Linear", "Module", "Parameter", "ReLU", "Sequential", "Sigmoid",
           "Tanh", "functional",
           # buffers, containers, normalization, embedding, init (issue 9)
           "BatchNorm1d", "BatchNorm2d", "Buffer", "Embedding", "Flatten", "GroupNorm",
           "Identity", "LayerNorm", "ModuleDict", "ModuleList", "ParameterView", "RMSNorm",
           "init", "utils"]
__all__ += ["AdaptiveAvgPool1d", "AdaptiveAvgPool2d", "AvgPool1d", "AvgPool2d", "Conv1d",
            "Conv2d", "ConvTranspose1d", "ConvTranspose2d", "MaxPool1d", "MaxPool2d"]
# attention (issue 9)
from lamina.frontend.nn.attention import MultiheadAttention  # noqa: E402

__all__ += ["MultiheadAttention"]

__all__ += ["Upsample"]  # upsampling
__all__ += ["LeakyReLU", "SiLU"]  # activations (issue 11)
# recurrent layers (issue 10)
from lamina.frontend.nn.recurrent import (  # noqa: E402
    GRU,
    LSTM,
    RNN,
    GRUCell,
    LSTMCell,
    RNNCell,
)

__all__ += ["GRU", "GRUCell", "LSTM", "LSTMCell", "RNN", "RNNCell"]
