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
        super().__init__(params, lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)
        self.beta1, self.beta2 = betas
        self.eps, self.weight_decay = eps, weight_decay

    def update(self, ctx, p, value, grad, lr):
        h = self.group(p)
        beta1, beta2 = h["betas"]
        wd = h["weight_decay"]
        t = ctx.read(self.scalar("step")).astype(p.dtype) + 1.0  # this step's number, from 1
        g = grad
        if wd and not self.decoupled:
            g = g + wd * value
        m_slot, v_slot = self.slot(p, "adam_m"), self.slot(p, "adam_v")
        m = beta1 * ctx.read(m_slot) + (1 - beta1) * g
        v = beta2 * ctx.read(v_slot) + (1 - beta2) * (g * g)
        ctx.assign(m_slot, m)
        ctx.assign(v_slot, v)
        m_hat = m / (1.0 - beta1 ** t)
        v_hat = v / (1.0 - beta2 ** t)
        new = value - lr * m_hat / (ops.sqrt(v_hat) + h["eps"])
        if wd and self.decoupled:
            new = new - lr * wd * value
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
