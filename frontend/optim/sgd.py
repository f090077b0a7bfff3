"""Stochastic gradient descent with momentum, Nesterov momentum and weight decay."""

from __future__ import annotations

from lamina.frontend.optim.optimizer import Optimizer


class SGD(Optimizer):
    """``p -= lr * (g + weight_decay * p)``, with PyTorch's momentum convention
    (``buf = momentum * buf + g``; Nesterov uses ``g + momentum * buf``).

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn, optim
    >>> w = nn.Parameter(np.array([1.0, -2.0], np.float32), "w")
    >>> opt = optim.SGD([w], lr=0.1)
    >>> step = lm.compile(lambda: opt.minimize((w * w).sum()))
    >>> _ = step(); w.numpy()  # w - 0.1 * 2w
    array([ 0.8, -1.6], dtype=float32)
    """

    kind = "sgd"

    def __init__(self, params, lr: float = 0.01, momentum: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False):
        super().__init__(params, lr, momentum=momentum, weight_decay=weight_decay,
                         nesterov=nesterov)
        self.momentum, self.weight_decay, self.nesterov = momentum, weight_decay, nesterov

    def update(self, ctx, p, value, grad, lr):
        h = self.group(p)
        g = grad + h["weight_decay"] * value if h["weight_decay"] else grad
        if h["momentum"]:
            slot = self.slot(p, "momentum")
            buf = h["momentum"] * ctx.read(slot) + g
            ctx.assign(slot, buf)
            g = g + h["momentum"] * buf if h["nesterov"] else buf
        return value - lr * g
