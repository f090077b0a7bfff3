"""Adam and AdamW (decoupled weight decay)."""

from __future__ import annotations

from lamina.frontend import ops
from lamina.frontend.optim.optimizer import Optimizer


class Adam(Optimizer):
    """Adam (Kingma & Ba) with bias correction; ``weight_decay`` adds ``wd * p`` to the gradient
    (L2), as in PyTorch's Adam."""

    kind = "adam"
    decoupled = False

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def update(self, ctx, p, value, grad, lr):
        t = ctx.read(self.scalar("step")).astype(p.dtype) + 1.0  # this step's number, from 1
        g = grad
        if self.weight_decay and not self.decoupled:
            g = g + self.weight_decay * value
        m_slot, v_slot = self.slot(p, "adam_m"), self.slot(p, "adam_v")
        m = self.beta1 * ctx.read(m_slot) + (1 - self.beta1) * g
        v = self.beta2 * ctx.read(v_slot) + (1 - self.beta2) * (g * g)
        ctx.assign(m_slot, m)
        ctx.assign(v_slot, v)
        m_hat = m / (1.0 - self.beta1 ** t)
        v_hat = v / (1.0 - self.beta2 ** t)
        new = value - lr * m_hat / (ops.sqrt(v_hat) + self.eps)
        if self.weight_decay and self.decoupled:
            new = new - lr * self.weight_decay * value
        return new

    def finish(self, ctx):
        step = self.scalar("step")
        ctx.assign(step, ctx.read(step) + 1.0)


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): ``p -= lr * wd * p`` each step.
    The default ``weight_decay`` is 0.01, as in PyTorch."""

    kind = "adamw"
    decoupled = True

    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(params, lr, betas, eps, weight_decay)
