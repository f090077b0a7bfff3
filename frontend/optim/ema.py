"""An exponential moving average of weights, updated inside the compiled step.

>>> import numpy as np, lamina as lm
>>> from lamina import nn, optim
>>> w = nn.Parameter(np.zeros(2, np.float32), "w")
>>> opt, ema = optim.SGD([w], lr=1.0), optim.EMA([w], decay=0.5)
>>> @lm.compile
... def step():
...     opt.minimize(((w - 4.0) ** 2).sum() / 2)   # w moves to 4 in one step
...     ema.update()
>>> step()
>>> w.numpy(), ema.shadow(w)
(array([4., 4.], dtype=float32), array([2., 2.], dtype=float32))
>>> with ema.average_parameters():                 # evaluate with the averaged weights
...     w.numpy()
array([2., 2.], dtype=float32)
>>> w.numpy()
array([4., 4.], dtype=float32)
"""

from __future__ import annotations

import contextlib

import numpy as np

from lamina.frontend.parameter import Parameter
from lamina.frontend.trace import require_trace
from lamina.ir.errors import LaminaError
from lamina.ir.variable import Variable


class EMA:
    """``shadow = decay * shadow + (1 - decay) * param`` for each parameter, each time
    :meth:`update` runs in a step (after the optimizer's update, so it averages the new
    weights). Shadows start at the parameters' values. Names follow the ``torch_ema``
    package: :meth:`copy_to`, :meth:`store`, :meth:`restore`, :meth:`average_parameters`."""

    def __init__(self, params, decay: float = 0.999):
        self.params = list(params.parameters() if hasattr(params, "parameters") else params)
        if not self.params or not all(isinstance(p, Parameter) for p in self.params):
            raise LaminaError("EMA: expected parameters (or a model)")
        if not 0.0 <= decay <= 1.0:
            raise LaminaError(f"EMA: decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self._shadow = [Variable(p.numpy(), name=f"{p.name}.ema") for p in self.params]
        self._stored: list[np.ndarray] | None = None

    def update(self) -> None:
        """Record the averaging into the step being traced."""
        ctx = require_trace("EMA.update")
        for p, s in zip(self.params, self._shadow):
            new = ctx.read(s) * self.decay + ctx.value_after(p) * (1.0 - self.decay)
            ctx.assign(s, new.astype(p.dtype), by="EMA.update")

    def shadow(self, p: Parameter) -> np.ndarray:
        """The averaged value of ``p`` (a copy)."""
        for q, s in zip(self.params, self._shadow):
            if q is p:
                return s.numpy()
        raise LaminaError(f"EMA: {getattr(p, 'name', p)} is not averaged here")

    def copy_to(self, params=None) -> None:
        """Write the averages into the parameters (compiled functions see them at once)."""
        targets = self.params if params is None else list(params)
        for p, s in zip(targets, self._shadow):
            p.assign(s.numpy())

    def store(self) -> None:
        """Keep a copy of the current parameters (for :meth:`restore`)."""
        self._stored = [p.numpy() for p in self.params]

    def restore(self) -> None:
        if self._stored is None:
            raise LaminaError("EMA.restore: nothing stored (call store() first)")
        for p, v in zip(self.params, self._stored):
            p.assign(v)
        self._stored = None

    @contextlib.contextmanager
    def average_parameters(self):
        """``with ema.average_parameters(): evaluate()``: the averages in the parameters for
        the block, the trained values back after it."""
        self.store()
        self.copy_to()
        try:
            yield
        finally:
            self.restore()

    def state_dict(self) -> dict:
        return {s.name: s.numpy() for s in self._shadow} | {"decay": self.decay}

    def load_state_dict(self, state: dict) -> None:
        for s in self._shadow:
            if s.name not in state:
                raise LaminaError(f"EMA.load_state_dict: missing {s.name}")
            if np.shape(state[s.name]) != s.type.shape:
                raise LaminaError(f"EMA.load_state_dict: {s.name} has shape "
                                  f"{list(np.shape(state[s.name]))}, expected {list(s.type.shape)}")
        for s in self._shadow:
            s.assign(np.asarray(state[s.name]))
        self.decay = float(state.get("decay", self.decay))


__all__ = ["EMA"]
