"""The training kit around a compiled step: learning-rate schedules (checked against PyTorch's
schedulers step by step, and compiled once however the rate changes), gradient clipping inside
the step, checkpoints that resume bit-identically, the batching helper and weight averaging."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn, optim
from lamina.optim import lr_scheduler as S

torch = pytest.importorskip("torch")

F32 = np.float32


def _pair(lr=0.1):
    """A lamina optimizer and a PyTorch one with the same rate."""
    w = nn.Parameter(np.ones(2, F32), "w")
    tw = torch.nn.Parameter(torch.ones(2))
    return optim.SGD([w], lr=lr), torch.optim.SGD([tw], lr=lr)


SCHEDULES = {
    "step": (lambda o: S.StepLR(o, step_size=7, gamma=0.5),
             lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=7, gamma=0.5)),
    "multistep": (lambda o: S.MultiStepLR(o, milestones=[10, 30, 31], gamma=0.3),
                  lambda o: torch.optim.lr_scheduler.MultiStepLR(o, [10, 30, 31], 0.3)),
    "exponential": (lambda o: S.ExponentialLR(o, gamma=0.97),
                    lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.97)),
    "cosine": (lambda o: S.CosineAnnealingLR(o, T_max=60, eta_min=0.001),
               lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 60, eta_min=0.001)),
    "linear_warmup": (lambda o: S.LinearLR(o, start_factor=0.1, total_iters=20),
                      lambda o: torch.optim.lr_scheduler.LinearLR(o, 0.1, total_iters=20)),
    "lambda": (lambda o: S.LambdaLR(o, lambda t: 1 / (1 + t)),
               lambda o: torch.optim.lr_scheduler.LambdaLR(o, lambda t: 1 / (1 + t))),
    "onecycle": (lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=100),
                 lambda o: torch.optim.lr_scheduler.OneCycleLR(o, 0.5, total_steps=100,
                                                               cycle_momentum=False)),
    "onecycle_3phase_linear": (
        lambda o: S.OneCycleLR(o, max_lr=0.5, total_steps=100, three_phase=True,
                               anneal_strategy="linear", pct_start=0.25),
        lambda o: torch.optim.lr_scheduler.OneCycleLR(
            o, 0.5, total_steps=100, three_phase=True, anneal_strategy="linear",
            pct_start=0.25, cycle_momentum=False)),
}


@pytest.mark.parametrize("name", sorted(SCHEDULES))
def test_schedule_matches_pytorch_for_100_steps(name):
    opt, topt = _pair()
    mine, theirs = SCHEDULES[name]
    sched, tsched = mine(opt), theirs(topt)
    for t in range(99):  # OneCycleLR's 100 steps: 99 calls of step() after the first rate
        want = tsched.get_last_lr()[0]
        assert sched.get_last_lr()[0] == pytest.approx(want, rel=1e-9, abs=1e-15), t
        assert opt._lr.host_value() == np.float32(want), t  # what the compiled step reads
        topt.step()
        tsched.step()
        sched.step()


def test_warmup_then_cosine_matches_pytorch():
    opt, topt = _pair(0.3)
    sched = S.SequentialLR(opt, [S.LinearLR(opt, 0.01, total_iters=10),
                                 S.CosineAnnealingLR(opt, T_max=50)], milestones=[10])
    tsched = torch.optim.lr_scheduler.SequentialLR(
        topt, [torch.optim.lr_scheduler.LinearLR(topt, 0.01, total_iters=10),
               torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=50)], milestones=[10])
    for t in range(60):
        assert sched.get_last_lr()[0] == pytest.approx(tsched.get_last_lr()[0], rel=1e-9), t
        topt.step()
        tsched.step()
        sched.step()


def test_a_schedule_over_100_steps_compiles_the_step_once(backend):
    w = nn.Parameter(np.array([1.0, -2.0], F32), "w")
    opt = optim.SGD([w], lr=0.1)
    sched = S.CosineAnnealingLR(opt, T_max=100)
    step = lm.compile(lambda: opt.minimize((w * w).sum()), backend=backend)
    ref = np.array([1.0, -2.0])
    for _ in range(100):
        lr = float(np.float32(sched.get_last_lr()[0]))
        step()
        ref = ref - lr * 2 * ref
        sched.step()
    assert len(step.variants) == 1
    assert_close(w.numpy(), ref.astype(F32), rtol=1e-5, atol=1e-7)


def test_schedule_state_round_trips():
    opt, _ = _pair()
    sched = S.OneCycleLR(opt, max_lr=0.5, total_steps=100)
    for _ in range(37):
        sched.step()
    state = sched.state_dict()
    opt2, _ = _pair()
    sched2 = S.OneCycleLR(opt2, max_lr=0.5, total_steps=100)
    sched2.load_state_dict(state)
    assert opt2.lr == opt.lr and sched2.last_epoch == 37
    sched.step()
    sched2.step()
    assert sched2.get_last_lr() == sched.get_last_lr()


def test_schedule_errors_are_clear():
    opt, _ = _pair()
    with pytest.raises(lm.LaminaError, match="cycle_momentum"):
        S.OneCycleLR(opt, max_lr=1.0, total_steps=10, cycle_momentum=True)
    with pytest.raises(lm.LaminaError, match="total_steps"):
        S.OneCycleLR(opt, max_lr=1.0)
    with pytest.raises(lm.LaminaError, match="step_size"):
        S.StepLR(opt, step_size=0)
    with pytest.raises(lm.LaminaError, match="expected a lamina optimizer"):
        S.StepLR(object(), step_size=3)
