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


# --- gradient clipping ------------------------------------------------------------------------


def _torch_clipped_step(ws, loss_fn, lr, max_norm=None, clip_value=None):
    tw = [torch.nn.Parameter(torch.tensor(w, dtype=torch.float64)) for w in ws]
    loss_fn(tw).backward()
    norm = None
    if clip_value is not None:
        torch.nn.utils.clip_grad_value_(tw, clip_value)
    if max_norm is not None:
        norm = float(torch.nn.utils.clip_grad_norm_(tw, max_norm))
    with torch.no_grad():
        for p in tw:
            p -= lr * p.grad
    return [p.detach().numpy() for p in tw], norm


@pytest.mark.parametrize("max_norm,clip_value", [(0.5, None), (100.0, None), (None, 0.3),
                                                 (1.0, 0.3)])
def test_clipping_inside_the_step_matches_pytorch(backend, max_norm, clip_value):
    rng = np.random.default_rng(0)
    init = [rng.standard_normal((3, 4)).astype(F32), rng.standard_normal(4).astype(F32)]
    x = rng.standard_normal((5, 3)).astype(F32)
    a, c = nn.Parameter(init[0].copy(), "a"), nn.Parameter(init[1].copy(), "c")
    opt = optim.SGD([a, c], lr=0.1)

    def loss(ws, xx, lib):
        return ((lib.tanh(xx @ ws[0] + ws[1]) - 0.5) ** 2).sum()

    step = lm.compile(lambda xx: opt.minimize(loss([a, c], xx, lm), clip_grad_norm=max_norm,
                                              clip_grad_value=clip_value), backend=backend)
    step(x)
    want, norm = _torch_clipped_step(init, lambda tw: loss(tw, torch.tensor(x, dtype=torch.float64),
                                                        torch), 0.1, max_norm, clip_value)
    assert_close(a.numpy(), want[0].astype(F32), rtol=1e-5, atol=1e-6)
    assert_close(c.numpy(), want[1].astype(F32), rtol=1e-5, atol=1e-6)
    if max_norm is not None:
        assert opt.grad_norm == pytest.approx(norm, rel=1e-5)
        if max_norm < norm:  # it did clip: the applied step has norm lr * max_norm
            moved = np.sqrt(sum(((p.numpy() - i) ** 2).sum() for p, i in zip([a, c], init)))
            assert moved == pytest.approx(0.1 * max_norm, rel=1e-4)
    else:
        assert opt.grad_norm is None


def test_clip_grad_norm_function_and_errors():
    from lamina.nn.utils import clip_grad_norm, clip_grad_value

    def f(x, y):
        (gx, gy), norm = clip_grad_norm([x, y], 1.0, norm_type=float("inf"))
        return gx, gy, norm

    gx, _, norm = lm.compile(f)(np.array([3.0, -4.0], F32), np.array([2.0], F32))
    assert float(norm) == 4.0
    assert_close(gx, np.array([0.75, -1.0], F32), rtol=1e-5)
    with pytest.raises(lm.LaminaError, match="max_norm"):
        lm.compile(lambda x: clip_grad_norm([x], 0.0)[1])(np.ones(2, F32))
    with pytest.raises(lm.LaminaError, match="clip_value"):
        lm.compile(lambda x: clip_grad_value([x], -1.0)[0])(np.ones(2, F32))


# --- checkpoints, batches, weight averaging ---------------------------------------------------


def _training(seed, backend, x, y):
    """A run with every kind of state: parameters, batch-norm buffers, dropout's random key,
    AdamW slots and step, a one-cycle schedule, a shuffling loader, an EMA of the weights."""
    from lamina.data import DataLoader

    lm.random.seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.3),
                          nn.Linear(16, 3))
    opt = optim.AdamW(model.parameters(), lr=0.01)
    sched = S.OneCycleLR(opt, max_lr=0.05, total_steps=12)
    loader = DataLoader((x, y), batch_size=8, shuffle=True, seed=5)
    ema = optim.EMA(model, decay=0.9)

    @lm.compile(backend=backend)
    def step(xb, yb):
        loss = nn.functional.cross_entropy(model(xb), yb)
        opt.minimize(loss, clip_grad_norm=1.0)
        ema.update()
        return loss

    return {"model": model, "opt": opt, "sched": sched, "loader": loader, "ema": ema,
            "step": step}


def _steps(run, n):
    losses = []
    while len(losses) < n:
        for xb, yb in run["loader"]:
            losses.append(np.asarray(run["step"](xb, yb)).copy())
            run["sched"].step()
            if len(losses) == n:
                break
    return losses


def _state(run):
    return {**{f"m.{k}": v for k, v in run["model"].state_dict().items()},
            **{f"o.{k}": v for k, v in run["opt"].state_dict().items()},
            **{f"e.{k}": v for k, v in run["ema"].state_dict().items() if k != "decay"}}


def test_a_resumed_checkpoint_continues_bit_identically(backend, tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4)).astype(F32)
    y = rng.integers(0, 3, 40)
    whole = _training(0, backend, x, y)
    losses = _steps(whole, 12)  # 12 steps: 5 batches an epoch, so it ends mid-epoch

    first = _training(0, backend, x, y)
    head = _steps(first, 7)
    assert all(np.array_equal(a, b) for a, b in zip(head, losses[:7]))
    path = str(tmp_path / "ckpt.npz")
    lm.save_checkpoint(path, first["model"], first["opt"], step=7, scheduler=first["sched"],
                       loader=first["loader"], ema=first["ema"], extra={"note": "half"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.npz"]  # no temporary left

    resumed = _training(99, backend, x, y)  # other initial weights and random key
    info = lm.load_checkpoint(path, resumed["model"], resumed["opt"],
                              scheduler=resumed["sched"], loader=resumed["loader"],
                              ema=resumed["ema"])
    assert info == {"step": 7, "extra": {"note": "half"}}
    tail = _steps(resumed, 5)
    for a, b in zip(tail, losses[7:]):
        assert np.array_equal(a, b)
    ref, got = _state(whole), _state(resumed)
    assert ref.keys() == got.keys()
    for k in ref:
        assert np.array_equal(ref[k], got[k]), k


def test_checkpoint_errors_are_clear(tmp_path):
    model = nn.Linear(3, 2)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    path = str(tmp_path / "c.npz")
    lm.save_checkpoint(path, model, opt)
    with pytest.raises(lm.LaminaError, match="another model"):
        lm.load_checkpoint(path, nn.Linear(4, 2))
    with pytest.raises(lm.LaminaError, match="no scheduler state"):
        lm.load_checkpoint(path, model, scheduler=S.StepLR(opt, 3))
    other = nn.Linear(3, 2)
    before = other.state_dict()
    with pytest.raises(lm.LaminaError, match="no state of this optimizer"):
        lm.load_checkpoint(path, other, optim.Adam(other.parameters()))
    # nothing was written: the model keeps its weights when the optimizer does not fit
    assert all(np.array_equal(v, other.state_dict()[k]) for k, v in before.items())
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(lm.LaminaError, match="damaged or not a checkpoint"):
        lm.load_checkpoint(str(bad), model)
    with pytest.raises(lm.LaminaError, match="no file"):
        lm.load_checkpoint(str(tmp_path / "missing.npz"), model)
    with pytest.raises(lm.LaminaError, match="plain data"):
        lm.save_checkpoint(path, model, extra={"f": object()})


def test_data_loader_batches_shuffles_and_resumes():
    from lamina.data import DataLoader

    x = np.arange(10)
    plain = DataLoader(x, batch_size=4)
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert len(DataLoader(x, batch_size=4, drop_last=True)) == 2
    a = DataLoader((x, -x), batch_size=3, shuffle=True, seed=1)
    e1 = [xb.tolist() for xb, _ in a]
    e2 = [xb.tolist() for xb, _ in a]
    assert e1 != e2 and sorted(x for b in e1 for x in b) == list(range(10))  # a new order every epoch
    b = DataLoader((x, -x), batch_size=3, shuffle=True, seed=1)
    it = iter(b)
    first = next(it)[0].tolist()
    state = b.state_dict()
    c = DataLoader((x, -x), batch_size=3, shuffle=True, seed=1)
    c.load_state_dict(state)
    assert [first] + [xb.tolist() for xb, _ in c] == e1
    with pytest.raises(lm.LaminaError, match="different lengths"):
        DataLoader((x, x[:3]), batch_size=2)


def test_ema_averages_the_updated_weights():
    w = nn.Parameter(np.zeros(3, F32), "w")
    opt, ema = optim.SGD([w], lr=0.5), optim.EMA([w], decay=0.8)
    step = lm.compile(lambda: (opt.minimize(((w - 1.0) ** 2).sum()), ema.update()))
    ref_w, ref_s = np.zeros(3), np.zeros(3)
    for _ in range(4):
        step()
        ref_w = ref_w - 0.5 * 2 * (ref_w - 1.0)
        ref_s = 0.8 * ref_s + 0.2 * ref_w
    assert_close(ema.shadow(w), ref_s.astype(F32))
    with ema.average_parameters():
        assert_close(w.numpy(), ref_s.astype(F32))
    assert_close(w.numpy(), ref_w.astype(F32))


# --- parameter groups -------------------------------------------------------------------------


def test_parameter_groups_match_pytorch(backend):
    """AdamW with no weight decay on the biases and a higher rate for them, under a cosine
    schedule that scales each group's own rate, against torch for 6 steps."""
    rng = np.random.default_rng(1)
    w0, b0 = rng.standard_normal((3, 2)).astype(F32), rng.standard_normal(2).astype(F32)
    x = rng.standard_normal((4, 3)).astype(F32)
    w, b = nn.Parameter(w0.copy(), "w"), nn.Parameter(b0.copy(), "b")
    opt = optim.AdamW([{"params": [w]}, {"params": [b], "weight_decay": 0.0, "lr": 0.05}],
                      lr=0.01, weight_decay=0.5)
    sched = S.CosineAnnealingLR(opt, T_max=6)
    step = lm.compile(lambda xx: opt.minimize((lm.tanh(xx @ w + b) ** 2).sum()),
                      backend=backend)
    tw, tb = (torch.nn.Parameter(torch.tensor(v, dtype=torch.float64)) for v in (w0, b0))
    topt = torch.optim.AdamW([{"params": [tw]}, {"params": [tb], "weight_decay": 0.0,
                                                  "lr": 0.05}], lr=0.01, weight_decay=0.5)
    tsched = torch.optim.lr_scheduler.CosineAnnealingLR(topt, T_max=6)
    tx = torch.tensor(x, dtype=torch.float64)
    for _ in range(6):
        assert sched.get_last_lr() == pytest.approx(tsched.get_last_lr(), rel=1e-9)
        step(x)
        topt.zero_grad()
        (torch.tanh(tx @ tw + tb) ** 2).sum().backward()
        topt.step()
        tsched.step()
        sched.step()
    assert_close(w.numpy(), tw.detach().numpy().astype(F32), rtol=1e-5, atol=1e-6)
    assert_close(b.numpy(), tb.detach().numpy().astype(F32), rtol=1e-5, atol=1e-6)
    assert len(step.variants) == 1


def test_a_group_rate_set_by_hand_takes_effect_without_recompiling():
    a, c = nn.Parameter(np.ones(2, F32), "a"), nn.Parameter(np.ones(2, F32), "c")
    opt = optim.SGD([{"params": [a]}, {"params": [c]}], lr=0.1)
    step = lm.compile(lambda: opt.minimize((a * a).sum() + (c * c).sum()))
    step()
    opt.param_groups[1]["lr"] = 0.5
    step()
    assert_close(a.numpy(), np.full(2, 0.8 * 0.8, F32))
    assert_close(c.numpy(), np.full(2, 0.8 * 0.0, F32), atol=1e-7)
    assert len(step.variants) == 1
    assert set(opt.state_dict()) == {"sgd.lr", "sgd.lr1"}


def test_parameter_group_errors_are_clear():
    a, c = nn.Parameter(np.ones(2, F32), "a"), nn.Parameter(np.ones(2, F32), "c")
    with pytest.raises(lm.LaminaError, match="in parameter groups 0 and 1"):
        optim.SGD([{"params": [a]}, {"params": [a, c]}], lr=0.1)
    with pytest.raises(lm.LaminaError, match="sets \\['betas'\\]"):
        optim.SGD([{"params": [a], "betas": (0.9, 0.9)}], lr=0.1)
    with pytest.raises(lm.LaminaError, match="not a mix"):
        optim.SGD([a, {"params": [c]}], lr=0.1)
    with pytest.raises(lm.LaminaError, match="has no 'params'"):
        optim.SGD([{"lr": 0.1}], lr=0.1)
