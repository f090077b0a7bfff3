"""Gradient clipping, as functions of gradients inside a traced step (``lamina.nn.utils``).

PyTorch clips ``.grad`` in place between ``backward()`` and ``step()``; in lamina the whole step
is one graph, so the clipping is part of it: pass ``clip_grad_norm=`` / ``clip_grad_value=`` to
``opt.minimize`` or apply these functions to the gradients of ``lm.grad``.

>>> import numpy as np, lamina as lm
>>> from lamina.nn.utils import clip_grad_norm
>>> def clipped(x):
...     g = lm.grad(lambda x: (x * x).sum())(x)          # 2x, norm 10
...     (g,), norm = clip_grad_norm([g], max_norm=1.0)
...     return g, norm
>>> g, norm = lm.compile(clipped)(np.array([3.0, 4.0], np.float32))
>>> np.round(g, 4), float(norm)
(array([0.6, 0.8], dtype=float32), 10.0)
"""

from __future__ import annotations

import math

from lamina.frontend import ops
from lamina.ir.errors import LaminaError


def clip_grad_norm(grads, max_norm: float, norm_type: float = 2.0, eps: float = 1e-6):
    """``(clipped, total_norm)``: the gradients scaled by ``min(1, max_norm / (total_norm +
    eps))``, where ``total_norm`` is the ``norm_type``-norm of all of them together (PyTorch's
    ``clip_grad_norm_``, without the in-place write). ``norm_type`` may be ``inf``."""
    grads = list(grads)
    if not grads:
        raise LaminaError("clip_grad_norm: no gradients")
    if not max_norm > 0:
        raise LaminaError(f"clip_grad_norm: max_norm must be > 0, got {max_norm}")
    p = float(norm_type)
    if p == math.inf:
        parts = [ops.max(ops.abs(g)).astype("float32") for g in grads]
        total = parts[0]
        for x in parts[1:]:
            total = ops.maximum(total, x)
    elif p > 0:
        parts = [(ops.abs(g) ** p if p != 2 else g * g).sum().astype("float32") for g in grads]
        total = parts[0]
        for x in parts[1:]:
            total = total + x
        total = ops.sqrt(total) if p == 2 else total ** (1.0 / p)
    else:
        raise LaminaError(f"clip_grad_norm: norm_type must be > 0 or inf, got {norm_type}")
    coef = ops.minimum(float(max_norm) / (total + eps), 1.0)
    return [g * coef.astype(g.dtype) for g in grads], total


def clip_grad_value(grads, clip_value: float):
    """Each gradient clamped to ``[-clip_value, clip_value]`` (PyTorch's
    ``clip_grad_value_``)."""
    if not clip_value > 0:
        raise LaminaError(f"clip_grad_value: clip_value must be > 0, got {clip_value}")
    v = float(clip_value)
    return [ops.clip(g, -v, v) for g in grads]


__all__ = ["clip_grad_norm", "clip_grad_value"]
