"""Learning-rate schedules, with PyTorch's names, arguments and formulas.

The learning rate is state of the compiled step (a Variable, see ``optimizer.py``): a schedule
sets it on the host between steps, so the step is compiled once however the rate changes.
Call ``sched.step()`` after each optimizer step, as in PyTorch::

    >>> import numpy as np, lamina as lm
    >>> from lamina import nn, optim
    >>> w = nn.Parameter(np.ones(2, np.float32), "w")
    >>> opt = optim.SGD([w], lr=0.1)
    >>> sched = optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    >>> step = lm.compile(lambda: opt.minimize((w * w).sum()))
    >>> rates = []
    >>> for _ in range(5):
    ...     rates.append(round(opt.lr, 6))
    ...     _ = step()
    ...     sched.step()
    >>> rates
    [0.1, 0.1, 0.05, 0.05, 0.025]

Each schedule gives the rate of step ``t`` (``last_epoch``) in closed form from the base rate
(the optimizer's rate when the schedule was made), so a schedule restored from
``state_dict()`` continues exactly where it stopped.

Each parameter group's rate follows the schedule from its own base rate, as in PyTorch.
Difference from PyTorch: ``OneCycleLR`` does not cycle momentum (a momentum change would recompile the step), so
its ``cycle_momentum`` must be False.
"""

from __future__ import annotations

import bisect
import math

from lamina.ir.errors import LaminaError


class LRScheduler:
    """Base class: subclasses give the rate of step ``t`` in :meth:`lr_at`."""

    def __init__(self, optimizer, last_epoch: int = -1):
        from lamina.frontend.optim.optimizer import Optimizer

        if not isinstance(optimizer, Optimizer):
            raise LaminaError(f"{type(self).__name__}: expected a lamina optimizer, got "
                              f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        groups = optimizer.param_groups
        if last_epoch == -1:
            for g in groups:  # PyTorch's setdefault: a second schedule keeps the first's
                if g.get("initial_lr") is None:
                    dict.__setitem__(g, "initial_lr", g["lr"])
        elif any(g.get("initial_lr") is None for g in groups):
            raise LaminaError(f"{type(self).__name__}: last_epoch={last_epoch} resumes a "
                              "schedule, but the optimizer's groups have no initial_lr (restore "
                              "the schedule with load_state_dict instead)")
        self.base_lrs = [float(g["initial_lr"]) for g in groups]
        self.last_epoch = last_epoch
        self.step()

    @property
    def base_lr(self) -> float:
        return self.base_lrs[0]

    def lr_for(self, t: int, base: float) -> float:
        """The rate of step ``t`` for a group whose base rate is ``base``."""
        raise NotImplementedError

    def lr_at(self, t: int) -> float:
        """The rate of step ``t`` (of the first parameter group)."""
        return self.lr_for(t, self.base_lrs[0])

    def step(self) -> None:
        """Advance one step and set the optimizer's rates (no recompilation)."""
        self.last_epoch += 1
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            g["lr"] = self.lr_for(self.last_epoch, base)

    def get_last_lr(self) -> list[float]:
        """The rates set by the last :meth:`step`, one per parameter group (as in PyTorch)."""
        return [self.lr_for(self.last_epoch, base) for base in self.base_lrs]

    def state_dict(self) -> dict:
        """The schedule's position and arguments (plain numbers: checkpoint-safe)."""
        return {k: v for k, v in vars(self).items()
                if k != "optimizer" and isinstance(v, (int, float, bool, str, tuple, list))}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, tuple(v) if isinstance(getattr(self, k, None), tuple) else v)
        self.base_lrs = [float(b) for b in self.base_lrs]
        for g, base in zip(self.optimizer.param_groups, self.base_lrs):
            dict.__setitem__(g, "initial_lr", base)
            g["lr"] = self.lr_for(self.last_epoch, base)


class LambdaLR(LRScheduler):
    """``base_lr * lr_lambda(t)``."""

    def __init__(self, optimizer, lr_lambda, last_epoch: int = -1):
        self.lr_lambda = lr_lambda
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        return base * float(self.lr_lambda(t))


class StepLR(LRScheduler):
    """``base_lr * gamma ** (t // step_size)``."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1, last_epoch: int = -1):
        if step_size < 1:
            raise LaminaError(f"StepLR: step_size must be >= 1, got {step_size}")
        self.step_size, self.gamma = int(step_size), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        return base * self.gamma ** (t // self.step_size)


class MultiStepLR(LRScheduler):
    """``base_lr * gamma ** (number of milestones <= t)``."""

    def __init__(self, optimizer, milestones, gamma: float = 0.1, last_epoch: int = -1):
        self.milestones, self.gamma = tuple(sorted(int(m) for m in milestones)), float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        return base * self.gamma ** bisect.bisect_right(self.milestones, t)


class ExponentialLR(LRScheduler):
    """``base_lr * gamma ** t``."""

    def __init__(self, optimizer, gamma: float, last_epoch: int = -1):
        self.gamma = float(gamma)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        return base * self.gamma ** t


class CosineAnnealingLR(LRScheduler):
    """``eta_min + (base_lr - eta_min) * (1 + cos(pi * t / T_max)) / 2``."""

    def __init__(self, optimizer, T_max: int, eta_min: float = 0.0, last_epoch: int = -1):
        if T_max < 1:
            raise LaminaError(f"CosineAnnealingLR: T_max must be >= 1, got {T_max}")
        self.T_max, self.eta_min = int(T_max), float(eta_min)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        return self.eta_min + (base - self.eta_min) * (
            1 + math.cos(math.pi * t / self.T_max)) / 2


class LinearLR(LRScheduler):
    """The rate moves linearly from ``start_factor * base_lr`` to ``end_factor * base_lr``
    over ``total_iters`` steps, then stays (a linear warm-up with the defaults' shape)."""

    def __init__(self, optimizer, start_factor: float = 1.0 / 3, end_factor: float = 1.0,
                 total_iters: int = 5, last_epoch: int = -1):
        if not (0 < start_factor <= 1 and 0 <= end_factor <= 1):
            raise LaminaError("LinearLR: start_factor must be in (0, 1] and end_factor in "
                              f"[0, 1], got {start_factor} and {end_factor}")
        self.start_factor, self.end_factor = float(start_factor), float(end_factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        frac = min(t, self.total_iters) / self.total_iters if self.total_iters > 0 else 1.0
        return base * (self.start_factor + (self.end_factor - self.start_factor) * frac)


class OneCycleLR(LRScheduler):
    """The 1cycle policy (Smith & Topin): from ``max_lr / div_factor`` up to ``max_lr`` over
    the first ``pct_start`` of ``total_steps``, then down to ``initial / final_div_factor``
    (``anneal_strategy`` "cos" or "linear"; ``three_phase`` returns to the initial rate before
    the final descent). The optimizer's own rate is replaced, as in PyTorch."""

    def __init__(self, optimizer, max_lr: float, total_steps: int | None = None,
                 epochs: int | None = None, steps_per_epoch: int | None = None,
                 pct_start: float = 0.3, anneal_strategy: str = "cos",
                 cycle_momentum: bool = False, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, three_phase: bool = False,
                 last_epoch: int = -1):
        if total_steps is None:
            if epochs is None or steps_per_epoch is None:
                raise LaminaError("OneCycleLR: give total_steps, or epochs and steps_per_epoch")
            total_steps = int(epochs) * int(steps_per_epoch)
        if total_steps < 1:
            raise LaminaError(f"OneCycleLR: total_steps must be >= 1, got {total_steps}")
        if not 0 <= pct_start <= 1:
            raise LaminaError(f"OneCycleLR: pct_start must be in [0, 1], got {pct_start}")
        if anneal_strategy not in ("cos", "linear"):
            raise LaminaError(f"OneCycleLR: anneal_strategy is 'cos' or 'linear', got "
                              f"{anneal_strategy!r}")
        if cycle_momentum:
            raise LaminaError("OneCycleLR: cycle_momentum=True is not supported (the momentum "
                              "is part of the compiled step); pass cycle_momentum=False")
        self.total_steps = int(total_steps)
        self.max_lr, self.pct_start = float(max_lr), float(pct_start)
        self.anneal_strategy, self.three_phase = anneal_strategy, bool(three_phase)
        self.div_factor, self.final_div_factor = float(div_factor), float(final_div_factor)
        if last_epoch == -1:  # PyTorch replaces every group's starting rate
            for g in optimizer.param_groups:
                dict.__setitem__(g, "initial_lr", self.max_lr / self.div_factor)
        super().__init__(optimizer, last_epoch)

    def _phases(self, init):
        low = init / self.final_div_factor
        up = float(self.pct_start * self.total_steps) - 1
        last = self.total_steps - 1
        if self.three_phase:
            return [(up, init, self.max_lr), (2 * up, self.max_lr, init), (last, init, low)]
        return [(up, init, self.max_lr), (last, self.max_lr, low)]

    def lr_for(self, t, base):
        if t > self.total_steps:
            raise LaminaError(f"OneCycleLR: step {t} is past total_steps={self.total_steps}")
        start_step = 0.0
        phases = self._phases(base)
        for k, (end_step, start, end) in enumerate(phases):
            if t <= end_step or k == len(phases) - 1:
                span = end_step - start_step
                pct = (t - start_step) / span if span else 1.0
                if self.anneal_strategy == "cos":
                    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
                return (end - start) * pct + start
            start_step = end_step
        raise AssertionError("unreachable")


class SequentialLR(LRScheduler):
    """Run ``schedulers`` one after another, switching at the steps in ``milestones`` (a
    warm-up then a decay); each restarts its own count at its milestone."""

    def __init__(self, optimizer, schedulers, milestones, last_epoch: int = -1):
        if len(milestones) != len(schedulers) - 1:
            raise LaminaError(f"SequentialLR: {len(schedulers)} schedulers need "
                              f"{len(schedulers) - 1} milestones, got {len(milestones)}")
        for s in schedulers:
            if s.optimizer is not optimizer:
                raise LaminaError("SequentialLR: every scheduler must drive the same optimizer")
        self.schedulers, self.milestones = list(schedulers), tuple(int(m) for m in milestones)
        super().__init__(optimizer, last_epoch)

    def lr_for(self, t, base):
        k = bisect.bisect_right(self.milestones, t)
        start = self.milestones[k - 1] if k else 0
        return self.schedulers[k].lr_for(t - start, base)

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch, "base_lrs": list(self.base_lrs),
                "milestones": list(self.milestones),
                "schedulers": [s.state_dict() for s in self.schedulers]}

    def load_state_dict(self, state: dict) -> None:
        for s, sub in zip(self.schedulers, state["schedulers"]):
            s.load_state_dict(sub)
        super().load_state_dict({k: v for k, v in state.items() if k != "schedulers"})


__all__ = ["CosineAnnealingLR", "ExponentialLR", "LRScheduler", "LambdaLR", "LinearLR",
           "MultiStepLR", "OneCycleLR", "SequentialLR", "StepLR"]
