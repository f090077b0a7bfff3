"""Normalization layers: ``LayerNorm``, ``RMSNorm``, ``GroupNorm``, ``BatchNorm1d/2d``, and their
``nn.functional`` forms, built from lamina's reductions (one row kernel each after fusion).

As in PyTorch: variances are biased (divide by n) in the normalization; BatchNorm's running
variance is updated with the unbiased one (n / (n - 1)); the affine weight starts at ones and
the bias at zeros.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.frontend import ops
from lamina.frontend.nn.module import Module
from lamina.frontend.parameter import Buffer, Parameter
from lamina.frontend.trace import current, user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Var
from lamina.ir.errors import LaminaError, ShapeError


def _shape(normalized_shape) -> tuple[int, ...]:
    if isinstance(normalized_shape, (int, np.integer)):
        return (int(normalized_shape),)
    return tuple(int(n) for n in normalized_shape)


def _var(b, v):
    """A Python number operand as a 0-d tensor (``ops.run`` passes numbers through)."""
    return v if isinstance(v, Var) else b.var(b.lift(v))


def _check_trailing(what: str, v, shape) -> tuple[int, ...]:
    """The last len(shape) axes of ``v``, which must be ``shape``."""
    k = len(shape)
    if v.ndim < k or tuple(v.shape[v.ndim - k:]) != shape:
        raise ShapeError(f"{what}: the input {v.type} must end with the normalized shape "
                         f"{list(shape)}", user_loc())
    return tuple(range(v.ndim - k, v.ndim))


def _normalize(b, v, axes, eps):
    """(v - mean) / sqrt(var + eps) over ``axes`` (biased variance), with mean and variance."""
    mean = v.mean(axis=axes, keepdims=True)
    centered = v - mean
    var = (centered * centered).mean(axis=axes, keepdims=True)
    return centered * b.call("rsqrt", var + eps), mean, var


def _affine(v, w, bias, shape):
    if w is not None:
        v = v * (w.reshape(shape) if w.shape != shape else w)
    if bias is not None:
        v = v + (bias.reshape(shape) if bias.shape != shape else bias)
    return v


def layer_norm(x, normalized_shape, weight=None, bias=None, eps: float = 1e-5):
    """Normalize over the trailing ``normalized_shape`` axes, then scale and shift."""
    shape = _shape(normalized_shape)

    def f(b, v, w, bb):
        v = _var(b, v)
        axes = _check_trailing("layer_norm", v, shape)
        y, _, _ = _normalize(b, v, axes, eps)
        return _affine(y, w, bb, shape)

    return ops.run(f, x, weight, bias)


def rms_norm(x, normalized_shape, weight=None, eps: float | None = None):
    """``x / sqrt(mean(x**2) + eps) * weight`` over the trailing ``normalized_shape`` axes;
    ``eps=None`` is the machine epsilon of x's dtype, as in PyTorch."""
    shape = _shape(normalized_shape)

    def f(b, v, w):
        v = _var(b, v)
        axes = _check_trailing("rms_norm", v, shape)
        e = float(np.finfo(v.dtype.np).eps) if eps is None else eps
        y = v * b.call("rsqrt", (v * v).mean(axis=axes, keepdims=True) + e)
        return _affine(y, w, None, shape)

    return ops.run(f, x, weight)


def group_norm(x, num_groups: int, weight=None, bias=None, eps: float = 1e-5):
    """Normalize (N, C, *) over each group of C/num_groups channels (and all other axes)."""

    def f(b, v, w, bb):
        v = _var(b, v)
        if v.ndim < 2 or v.shape[1] % num_groups:
            raise ShapeError(f"group_norm: the input {v.type} must be (N, C, ...) with C "
                             f"divisible by num_groups={num_groups}", user_loc())
        n, c = v.shape[0], v.shape[1]
        grouped = v.reshape(n, num_groups, math.prod(v.shape[1:]) // num_groups)
        y, _, _ = _normalize(b, grouped, (2,), eps)
        return _affine(y.reshape(v.shape), w, bb, (c,) + (1,) * (v.ndim - 2))

    return ops.run(f, x, weight, bias)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training: bool = False,
               momentum=0.1, eps: float = 1e-5):
    """Batch normalization of (N, C, *) per channel C (``nn.functional.batch_norm``).

    In training the batch's statistics normalize, and running statistics given as Buffers are
    updated (``running = (1 - momentum) * running + momentum * batch``, the variance unbiased)
    with ``assign``: recorded inside a compiled step, written at once outside one. Otherwise
    the running statistics normalize.
    """
    if not training and (running_mean is None or running_var is None):
        raise LaminaError("batch_norm: without training, running_mean and running_var are "
                          "needed", user_loc())
    for s in (running_mean, running_var):
        if training and s is not None and not isinstance(s, Buffer):
            raise LaminaError("batch_norm: running statistics updated in training must be "
                              f"Buffers (they are state), got {type(s).__name__}", user_loc())

    def channel_shape(v):
        if not isinstance(v, Var) or v.ndim < 2:
            raise ShapeError(f"batch_norm: the input {getattr(v, 'type', repr(v))} must be "
                             "(N, C, ...)", user_loc())
        return (v.shape[1],) + (1,) * (v.ndim - 2), (0,) + tuple(range(2, v.ndim))

    def stats(b, v):
        shape, axes = channel_shape(v)
        n = v.size // v.shape[1]
        if n <= 1:
            raise ShapeError(f"batch_norm: expected more than 1 value per channel when "
                             f"training, got input {v.type}", user_loc())
        return _normalize(b, v, axes, eps), shape, n

    def forward(b, v, w, bb, rm, rv):
        if training:
            (y, _, _), shape, _ = stats(b, v)
        else:
            shape, _ = channel_shape(v)
            y = (v - rm.reshape(shape)) * b.call("rsqrt", rv.reshape(shape) + eps)
        return _affine(y, w, bb, shape)

    def new_stat(which):
        def f(b, v, old, m):
            (_, mean, var), _, n = stats(b, v)
            batch = mean if which == "mean" else var * (n / (n - 1))
            batch = batch.reshape(v.shape[1]).astype(old.dtype)
            return old * (1.0 - m) + batch * m
        return f

    if not training:
        return ops.run(forward, x, weight, bias, running_mean, running_var)
    y = ops.run(forward, x, weight, bias, None, None)
    updates = [(s, ops.run(new_stat(which), x, s, momentum))
               for s, which in ((running_mean, "mean"), (running_var, "var")) if s is not None]
    for s, value in updates:  # computed from the old values before any is written
        s.assign(value)
    return y


class LayerNorm(Module):
    """Layer normalization over the trailing ``normalized_shape`` axes (PyTorch's arguments;
    ``weight`` and ``bias`` of that shape, ones and zeros).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> ln = nn.LayerNorm(4)
    >>> lm.compile(ln)(np.array([[1, 2, 3, 4]], np.float32)).round(3)
    array([[-1.342, -0.447,  0.447,  1.342]], dtype=float32)
    """

    def __init__(self, normalized_shape, eps: float = 1e-5, elementwise_affine: bool = True,
                 bias: bool = True, dtype=dt.float32):
        self.normalized_shape = _shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        np_dtype = dt.dtype(dtype).np
        self.weight = Parameter(np.ones(self.normalized_shape, np_dtype), "weight") \
            if elementwise_affine else None
        self.bias = Parameter(np.zeros(self.normalized_shape, np_dtype), "bias") \
            if elementwise_affine and bias else None

    def __call__(self, x):
        return layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class RMSNorm(Module):
    """Root-mean-square normalization (PyTorch's ``nn.RMSNorm``): ``x / sqrt(mean(x**2) + eps)
    * weight``; ``eps=None`` uses the machine epsilon of the input's dtype."""

    def __init__(self, normalized_shape, eps: float | None = None,
                 elementwise_affine: bool = True, dtype=dt.float32):
        self.normalized_shape = _shape(normalized_shape)
        self.eps, self.elementwise_affine = eps, elementwise_affine
        self.weight = Parameter(np.ones(self.normalized_shape, dt.dtype(dtype).np), "weight") \
            if elementwise_affine else None

    def __call__(self, x):
        return rms_norm(x, self.normalized_shape, self.weight, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}")


class GroupNorm(Module):
    """Group normalization of (N, C, *) in ``num_groups`` groups of channels, with a
    per-channel affine ``weight`` and ``bias`` (C,)."""

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5,
                 affine: bool = True, dtype=dt.float32):
        if num_channels % num_groups:
            raise LaminaError(f"GroupNorm: num_channels {num_channels} is not divisible by "
                              f"num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps, self.affine = \
            num_groups, num_channels, eps, affine
        np_dtype = dt.dtype(dtype).np
        self.weight = Parameter(np.ones(num_channels, np_dtype), "weight") if affine else None
        self.bias = Parameter(np.zeros(num_channels, np_dtype), "bias") if affine else None

    def __call__(self, x):
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ShapeError(f"GroupNorm: expected (N, {self.num_channels}, ...), got input of "
                             f"shape {list(x.shape)}", user_loc())
        return group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"


class _BatchNorm(Module):
    """Batch normalization with PyTorch's arguments, parameters (``weight``, ``bias``) and
    buffers (``running_mean``, ``running_var``, ``num_batches_tracked``).

    In training mode the batch's statistics normalize and the running statistics are updated
    inside the compiled step (``momentum=None``: their cumulative average); in eval mode the
    running statistics normalize. ``track_running_stats=False``: no buffers, batch statistics
    in both modes.
    """

    _ranks: tuple[int, ...] = ()

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 affine: bool = True, track_running_stats: bool = True, dtype=dt.float32):
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.affine, self.track_running_stats = affine, track_running_stats
        np_dtype = dt.dtype(dtype).np
        self.weight = Parameter(np.ones(num_features, np_dtype), "weight") if affine else None
        self.bias = Parameter(np.zeros(num_features, np_dtype), "bias") if affine else None
        if track_running_stats:
            self.running_mean = Buffer(np.zeros(num_features, np_dtype), name="running_mean")
            self.running_var = Buffer(np.ones(num_features, np_dtype), name="running_var")
            self.num_batches_tracked = Buffer(np.zeros((), np.int64),
                                              name="num_batches_tracked")
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def __call__(self, x):
        if x.ndim not in self._ranks or x.shape[1] != self.num_features:
            want = " or ".join(f"rank {r}" for r in self._ranks)
            raise ShapeError(f"{type(self).__name__}({self.num_features}): expected an input "
                             f"(N, {self.num_features}, ...) of {want}, got shape "
                             f"{list(x.shape)}", user_loc())
        training = self.training
        momentum = 0.0 if self.momentum is None else self.momentum
        if training and self.track_running_stats:
            count = self.num_batches_tracked + 1
            self.num_batches_tracked.assign(count)
            if self.momentum is None:  # the cumulative average: 1/n of the n-th batch
                momentum = 1.0 / count.astype(self.running_mean.dtype) if current() is not None \
                    else 1.0 / float(count)
        use_batch = training or not self.track_running_stats
        return batch_norm(x, self.running_mean if self.track_running_stats else None,
                          self.running_var if self.track_running_stats else None,
                          self.weight, self.bias, use_batch, momentum, self.eps)

    def extra_repr(self) -> str:
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, track_running_stats={self.track_running_stats}")


class BatchNorm1d(_BatchNorm):
    """Batch normalization of (N, C) or (N, C, L) per channel (see ``_BatchNorm``).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn
    >>> bn = nn.BatchNorm1d(2)
    >>> y = lm.compile(bn)(np.array([[1, 10], [3, 30]], np.float32))
    >>> y.round(3), bn.running_mean.numpy(), int(bn.num_batches_tracked.numpy())
    (array([[-1., -1.],
           [ 1.,  1.]], dtype=float32), array([0.2, 2. ], dtype=float32), 1)
    """

    _ranks = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization of (N, C, H, W) per channel (see ``_BatchNorm``)."""

    _ranks = (4,)
