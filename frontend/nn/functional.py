"""``nn.functional``: activations and losses built from lamina ops.

Losses check their inputs and name the user's line when shapes or dtypes do not fit.
"""

from __future__ import annotations

from lamina.frontend import ops
from lamina.frontend.ops import run
from lamina.frontend.trace import user_loc
from lamina.ir.builder import Var
from lamina.ir.errors import DTypeError, LaminaError, ShapeError

relu = ops.relu
softplus = ops.softplus
sigmoid = ops.sigmoid
tanh = ops.tanh
gelu = ops.gelu


def leaky_relu(x, negative_slope: float = 0.01):
    """``x`` where positive, ``negative_slope * x`` elsewhere (PyTorch's ``leaky_relu``).

    >>> import numpy as np, lamina as lm
    >>> lm.nn.functional.leaky_relu(np.array([-2.0, 3.0], np.float32), 0.1)
    array([-0.2,  3. ], dtype=float32)
    """
    return ops.where(x > 0, x, x * negative_slope)


def silu(x):
    """``x * sigmoid(x)`` (SiLU, also called swish)."""
    return x * ops.sigmoid(x)
softmax = ops.softmax
log_softmax = ops.log_softmax
one_hot = ops.one_hot

# --- convolution and pooling (frontend/spatial.py) ---
from lamina.frontend.spatial import (  # noqa: F401 (re-exported)
    adaptive_avg_pool1d,
    adaptive_avg_pool2d,
    avg_pool1d,
    avg_pool2d,
    conv1d,
    conv2d,
    conv_transpose1d,
    conv_transpose2d,
    max_pool1d,
    max_pool2d,
)


def _tensor(b, x, dtype=None):
    """A Python number argument as a 0-d tensor (``run`` keeps numbers as they are, so that
    they take the other operand's dtype in arithmetic; the losses check shapes)."""
    return x if isinstance(x, Var) else b.var(b.lift(x, dtype))


def _reduce(loss, reduction: str, what: str):
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise LaminaError(f"{what}: reduction must be 'mean', 'sum' or 'none', got {reduction!r}",
                      user_loc())


def cross_entropy(logits, labels, reduction: str = "mean"):
    """Softmax cross-entropy between ``logits`` (N, C) and integer class ``labels`` (N,).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> loss = nn.functional.cross_entropy(np.zeros((2, 4), np.float32), np.array([0, 3]))
    >>> round(float(loss), 4)  # log(4)
    1.3863
    """

    def f(b, z, y):
        z, y = _tensor(b, z), _tensor(b, y)
        if not y.dtype.is_int:
            raise DTypeError(f"cross_entropy: labels must be integer class indices, got "
                             f"{y.type} (for one-hot or soft targets, use "
                             "-(targets * log_softmax(logits)).sum(-1))", user_loc())
        if z.ndim < 1 or y.shape != z.shape[:-1]:
            raise ShapeError(f"cross_entropy: labels {y.type} must have the logits' shape "
                             f"without the class axis ({z.type} -> {list(z.shape[:-1])})",
                             user_loc())
        logp = b.call("log_softmax", z, axis=-1)
        picked = (logp * b.call("one_hot", y, num_classes=z.shape[-1], dtype=z.dtype)).sum(-1)
        return _reduce(-picked, reduction, "cross_entropy")

    return run(f, logits, labels)


def binary_cross_entropy_with_logits(logits, targets, reduction: str = "mean"):
    """Sigmoid + binary cross-entropy in one stable formula, ``softplus(z) - z * t``; its
    gradient is ``sigmoid(z) - t`` everywhere (also at z = 0)."""

    def f(b, z, t):
        z = _tensor(b, z)
        t = _tensor(b, t, z.dtype)
        if z.shape != t.shape:
            raise ShapeError(f"binary_cross_entropy_with_logits: logits {z.type} and targets "
                             f"{t.type} must have the same shape", user_loc())
        t = t.astype(z.dtype)
        return _reduce(b.call("softplus", z) - z * t, reduction,
                       "binary_cross_entropy_with_logits")

    return run(f, logits, targets)


def mse_loss(pred, target, reduction: str = "mean"):
    """Mean squared error."""

    def f(b, p, t):
        p = _tensor(b, p)
        t = _tensor(b, t, p.dtype)
        if p.shape != t.shape:
            raise ShapeError(f"mse_loss: prediction {p.type} and target {t.type} must have "
                             "the same shape", user_loc())
        d = p - t
        return _reduce(d * d, reduction, "mse_loss")

    return run(f, pred, target)


def dropout(x, p: float = 0.5, training: bool = True):
    """Zero each element with probability ``p`` and scale the rest by 1/(1-p) (training only)."""
    if not 0 <= p < 1:
        raise LaminaError(f"dropout: p must be in [0, 1), got {p}", user_loc())
    if not training or p == 0:
        return x
    from lamina.frontend.random import uniform

    keep = uniform(x.shape) >= p
    return ops.where(keep, x * (1.0 / (1.0 - p)), 0.0)


# --- layers' functional forms (issue 9) -------------------------------------------------------


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` with ``weight`` in PyTorch's layout [out, in]
    (``nn.Linear``'s ``weight``; its ``w`` is that transposed)."""
    from lamina.frontend.parameter import ParameterView

    if isinstance(weight, ParameterView):  # Linear.weight outside a trace
        weight = weight.operand()
    y = ops.matmul(x, ops.transpose(weight))
    return y if bias is None else y + bias


from lamina.frontend.nn.norm import batch_norm, group_norm, layer_norm, rms_norm  # noqa: E402,F401
from lamina.frontend.nn.sparse import embedding  # noqa: E402,F401

# --- upsampling (frontend/nn/upsample.py) ---
from lamina.frontend.nn.upsample import interpolate  # noqa: E402,F401


def pad(input, pad, mode: str = "constant", value=None):
    """PyTorch's ``F.pad``: ``pad`` lists (left, right) widths from the last axis backwards
    (``(1, 1, 2, 0)`` pads the last axis by 1 on both sides and the one before by 2 in front).
    Modes "constant" (``value``, default 0; negative widths crop), "reflect" (widths below the
    axis' size), "replicate" and "circular".

    >>> import numpy as np, lamina as lm
    >>> lm.nn.functional.pad(np.array([[1.0, 2.0]], np.float32), (1, 2), mode="replicate")
    array([[1., 1., 2., 2., 2.]], dtype=float32)
    """
    from lamina.frontend.padding import pad_torch

    return run(lambda b, v: pad_torch(b, v, pad, mode, value), input)


# --- attention (frontend/nn/attention.py) ---
from lamina.frontend.nn.attention import scaled_dot_product_attention  # noqa: E402,F401
