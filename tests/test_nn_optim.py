"""Tests for ``lamina.nn`` (modules, parameter naming, state dicts, layers, losses) and
``lamina.optim`` (SGD, Adam, AdamW checked step by step against hand-written numpy updates).

Optimizer references follow PyTorch's update rules and run in float64; lamina runs in float32
and is compared with the float32 tolerance from ``helpers``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn, optim
from lamina.nn import functional as F

F32 = np.float32


class MLP(nn.Module):
    # NOTE: no super().__init__(): lamina modules do not need it.
    def __init__(self, d_in=4, d_hidden=8, d_out=3):
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, d_out)

    def __call__(self, x):
        return self.fc2(lm.relu(self.fc1(x)))


def _mlp_forward(state, x):
    h = np.maximum(x @ state["fc1.w"] + state["fc1.b"], 0)
    return h @ state["fc2.w"] + state["fc2.b"]


# --- modules and parameter names ----------------------------------------------------------------


def test_parameter_names_are_attribute_paths():
    model = MLP()
    names = [n for n, _ in model.named_parameters()]
    assert names == ["fc1.w", "fc1.b", "fc2.w", "fc2.b"]
    assert [p.name for p in model.parameters()] == names
    assert all(isinstance(p, nn.Parameter) for p in model.parameters())


def test_nested_modules_lists_and_sequential_names():
    class Encoder(nn.Module):
        def __init__(self):
            self.fc1 = nn.Linear(3, 4)

    class Net(nn.Module):
        def __init__(self):
            self.enc = Encoder()
            self.layers = [nn.Linear(4, 4), nn.Linear(4, 2, bias=False)]
            self.head = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
            self.scale = nn.Parameter(np.ones(2, F32))

        def __call__(self, x):
            h = self.enc.fc1(x)
            for layer in self.layers:
                h = layer(h)
            return self.head(h) * self.scale

    net = Net()
    want = ["enc.fc1.w", "enc.fc1.b", "layers.0.w", "layers.0.b", "layers.1.w",
            "head.layers.0.w", "head.layers.0.b", "scale"]
    assert [n for n, _ in net.named_parameters()] == want
    assert [p.name for p in net.parameters()] == want
    assert list(net.state_dict()) == want
    # The graph's state uses the same names.
    g = lm.trace(net, np.ones((2, 3), F32))
    assert sorted(p.name for p in g.state) == sorted(want)


def test_a_shared_parameter_is_listed_once():
    class Tied(nn.Module):
        def __init__(self):
            self.a = nn.Linear(3, 3)
            self.b = self.a

    assert [n for n, _ in Tied().named_parameters()] == ["a.w", "a.b"]


def test_module_with_forward_method(backend):
    class Double(nn.Module):
        def forward(self, x):
            return x * 2.0

    out = lm.compile(Double(), backend=backend)(np.ones(3, F32))
    np.testing.assert_array_equal(out, np.full(3, 2.0, F32))
    with pytest.raises(lm.LaminaError, match="neither __call__ nor forward"):
        nn.Module()(np.ones(3, F32))


def test_linear_init_shapes_and_bounds():
    lm.random.seed(0)
    layer = nn.Linear(64, 128)
    assert layer.w.shape == (64, 128) and layer.b.shape == (128,)
    assert layer.w.dtype == lm.float32
    bound = 1 / math.sqrt(64)
    w, b = layer.w.numpy(), layer.b.numpy()
    assert w.dtype == np.float32
    assert np.abs(w).max() <= bound and np.abs(b).max() <= bound
    assert np.abs(w).max() > 0.9 * bound, "init should fill the range, not a corner of it"
    assert abs(w.mean()) < 0.1 * bound and abs(w.std() - bound / math.sqrt(3)) < 0.05 * bound
    no_bias = nn.Linear(5, 2, bias=False)
    assert no_bias.b is None
    assert [n for n, _ in no_bias.named_parameters()] == ["w"]
    lm.random.seed(7)
    first = nn.Linear(3, 3).w.numpy()
    lm.random.seed(7)
    np.testing.assert_array_equal(nn.Linear(3, 3).w.numpy(), first)


def test_linear_matches_numpy(backend, rng):
    layer = nn.Linear(5, 3)
    x = rng.standard_normal((4, 5)).astype(F32)
    got = lm.compile(layer, backend=backend)(x)
    assert_close(got, x @ layer.w.numpy() + layer.b.numpy())
    no_bias = nn.Linear(5, 3, bias=False)
    assert_close(lm.compile(no_bias, backend=backend)(x), x @ no_bias.w.numpy())


def test_parameter_outside_a_trace_is_a_read_only_array():
    p = nn.Parameter(np.arange(4, dtype=F32), "p")
    assert isinstance(p + 1, np.ndarray)
    np.testing.assert_array_equal(np.asarray(p), np.arange(4, dtype=F32))
    np.testing.assert_array_equal(p * 2, np.arange(4, dtype=F32) * 2)
    copy = p.numpy()
    copy[0] = 100
    assert p.numpy()[0] == 0, "numpy() must return a copy"
    with pytest.raises(ValueError):
        p.operand()[0] = 5


# --- state_dict / load_state_dict -------------------------------------------------------------


def test_state_dict_round_trip(backend):
    a, b = MLP(), MLP()
    sd = a.state_dict()
    assert list(sd) == ["fc1.w", "fc1.b", "fc2.w", "fc2.b"]
    assert all(isinstance(v, np.ndarray) for v in sd.values())
    sd["fc1.w"][0, 0] = 123.0  # a copy: changing it changes nothing
    assert a.fc1.w.numpy()[0, 0] != 123.0
    b.load_state_dict(a.state_dict())
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    x = np.ones((2, 4), F32)
    np.testing.assert_array_equal(lm.compile(b, backend=backend)(x),
                                  lm.compile(a, backend=backend)(x))


def test_load_state_dict_strict_errors():
    model = MLP()
    good = model.state_dict()
    missing = {k: v for k, v in good.items() if k != "fc2.b"}
    with pytest.raises(lm.LaminaError, match="missing") as e:
        model.load_state_dict(missing)
    assert "fc2.b" in str(e.value)
    with pytest.raises(lm.LaminaError, match="unexpected") as e:
        model.load_state_dict({**good, "fc3.w": np.zeros((2, 2), F32)})
    assert "fc3.w" in str(e.value)
    bad = dict(good, **{"fc1.w": np.zeros((5, 8), F32)})
    before = model.state_dict()
    with pytest.raises(lm.LaminaError) as e:
        model.load_state_dict(bad)
    assert "fc1.w" in str(e.value) and "[5, 8]" in str(e.value)
    np.testing.assert_array_equal(model.fc1.w.numpy(), before["fc1.w"])
    # strict=False skips missing and unexpected keys but still checks shapes.
    new_b = np.full(3, 0.5, F32)
    model.load_state_dict({"fc2.b": new_b, "other": np.zeros(1)}, strict=False)
    np.testing.assert_array_equal(model.fc2.b.numpy(), new_b)
    with pytest.raises(lm.LaminaError):
        model.load_state_dict({"fc2.b": np.zeros(4, F32)}, strict=False)


def test_loaded_values_reach_a_compiled_function_without_recompiling(backend, rng):
    model = MLP()
    predict = lm.compile(lambda x: model(x), backend=backend)
    x = rng.standard_normal((5, 4)).astype(F32)
    before = predict(x)
    other = MLP()
    model.load_state_dict(other.state_dict())
    after = predict(x)
    assert len(predict.variants) == 1
    assert not np.allclose(before, after)
    assert_close(after, _mlp_forward(other.state_dict(), x))


# --- layers -----------------------------------------------------------------------------------


def test_sequential_applies_in_order(backend, rng):
    seq = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 2), nn.Sigmoid(),
                        lambda t: t * 2.0)
    x = rng.standard_normal((3, 4)).astype(F32)
    got = lm.compile(seq, backend=backend)(x)
    s = seq.state_dict()
    h = np.tanh(x @ s["layers.0.w"] + s["layers.0.b"])
    want = 2 / (1 + np.exp(-(h @ s["layers.2.w"] + s["layers.2.b"])))
    assert_close(got, want)


def test_dropout_eval_mode_is_identity(backend, rng):
    drop = nn.Sequential(nn.Dropout(0.5))
    drop.eval()
    assert not drop.layers[0].training
    x = rng.standard_normal(1000).astype(F32)
    np.testing.assert_array_equal(lm.compile(drop, backend=backend)(x), x)


def test_dropout_train_mode_zeroes_about_p_and_scales_the_rest(backend):
    p = 0.3
    drop = nn.Dropout(p).train()
    f = lm.compile(drop, backend=backend)
    x = np.full(20000, 2.0, F32)
    a, b = f(x), f(x)
    kept = a != 0
    assert abs((~kept).mean() - p) < 0.02
    assert_close(a[kept], np.full(kept.sum(), 2.0 / (1 - p), F32))
    assert not np.array_equal(a, b), "each call must draw a fresh mask"
    assert len(f.variants) == 1


def test_functional_dropout_checks_p():
    with pytest.raises(lm.LaminaError, match="p must be"):
        F.dropout(np.ones(3, F32), p=1.0)


# --- losses -----------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_matches_numpy(backend, rng, reduction):
    z = (rng.standard_normal((6, 5)) * 3).astype(F32)
    y = rng.integers(0, 5, 6).astype(np.int32)
    got = lm.compile(lambda a, b: F.cross_entropy(a, b, reduction=reduction),
                     backend=backend)(z, y)
    z64 = z.astype(np.float64)
    logp = z64 - z64.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    per = -logp[np.arange(6), y]
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    assert got.dtype == np.float32 and got.shape == np.shape(want)
    assert_close(got, np.asarray(want, F32), dtype=np.float32)


def test_cross_entropy_gradient(backend, rng):
    z = rng.standard_normal((4, 3)).astype(F32)
    y = np.array([0, 2, 1, 2], np.int64)
    g = lm.compile(lm.grad(lambda a: F.cross_entropy(a, y)), backend=backend)(z)
    e = np.exp(z - z.max(1, keepdims=True))
    sm = e / e.sum(1, keepdims=True)
    assert_close(g, ((sm - np.eye(3)[y]) / 4).astype(F32), dtype=np.float32)


def test_cross_entropy_with_extra_leading_axes(backend, rng):
    z = rng.standard_normal((2, 3, 4)).astype(F32)
    y = rng.integers(0, 4, (2, 3))
    got = lm.compile(lambda a, b: F.cross_entropy(a, b, reduction="none"), backend=backend)(z, y)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    assert got.shape == (2, 3)
    assert_close(got, -np.take_along_axis(logp, y[..., None], -1)[..., 0])


def test_unknown_reduction_is_an_error():
    with pytest.raises(lm.LaminaError, match="reduction"):
        F.mse_loss(np.ones(3, F32), np.ones(3, F32), reduction="avg")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_binary_cross_entropy_with_logits_matches_numpy(backend, rng, reduction):
    z = (rng.standard_normal(10) * 3).astype(F32)
    t = rng.integers(0, 2, 10).astype(F32)
    got = lm.compile(lambda a, b: F.binary_cross_entropy_with_logits(a, b, reduction),
                     backend=backend)(z, t)
    s = 1 / (1 + np.exp(-z.astype(np.float64)))
    per = -(t * np.log(s) + (1 - t) * np.log(1 - s))
    want = {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]
    assert_close(got, np.asarray(want, F32), dtype=np.float32)


def test_binary_cross_entropy_with_logits_is_stable_for_large_logits(backend):
    z = np.array([100.0, 100.0, -100.0, -100.0], F32)
    t = np.array([1.0, 0.0, 0.0, 1.0], F32)
    loss, g = lm.compile(
        lm.value_and_grad(lambda a: F.binary_cross_entropy_with_logits(a, t, "sum")),
        backend=backend)(z)
    per = lm.compile(lambda a: F.binary_cross_entropy_with_logits(a, t, "none"),
                     backend=backend)(z)
    assert np.all(np.isfinite(per)) and np.all(np.isfinite(g))
    assert_close(per, np.array([0.0, 100.0, 0.0, 100.0], F32))
    assert_close(loss, np.float32(200))
    # d/dz = sigmoid(z) - t
    assert_close(g, np.array([0.0, 1.0, 0.0, -1.0], F32))


def test_binary_cross_entropy_with_logits_gradient_at_zero_logit(backend):
    # The loss is smooth in z; at z = 0 its gradient is sigmoid(0) - t = 0.5 - t. Zero logits
    # are common (a zero-initialized last layer), so the kink-free value matters.
    z = np.zeros(2, F32)
    t = np.array([1.0, 0.0], F32)
    g = lm.compile(lm.grad(lambda a: F.binary_cross_entropy_with_logits(a, t, "sum")),
                   backend=backend)(z)
    assert_close(g, np.array([-0.5, 0.5], F32))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss_matches_numpy(backend, rng, reduction):
    p, t = rng.standard_normal((3, 4)).astype(F32), rng.standard_normal((3, 4)).astype(F32)
    got = lm.compile(lambda a, b: F.mse_loss(a, b, reduction), backend=backend)(p, t)
    d = (p.astype(np.float64) - t) ** 2
    want = {"mean": d.mean(), "sum": d.sum(), "none": d}[reduction]
    assert_close(got, np.asarray(want, F32), dtype=np.float32)


def test_losses_take_python_numbers(backend):
    """A number as a loss's target (or label) is a 0-d tensor: it fits a 0-d prediction and
    is a clear shape error otherwise (it was an AttributeError from inside lamina). Found by
    the random-program checker (seed 0, program 187)."""
    x0 = np.array(1.5, F32)
    got = lm.compile(lambda a: F.mse_loss(a, 2), backend=backend)(x0)
    assert_close(got, np.array(0.25, F32))
    got = lm.compile(lambda a: F.binary_cross_entropy_with_logits(a, 1.0), backend=backend)(x0)
    assert_close(got, np.array(np.log1p(np.exp(-1.5)), F32))
    got = lm.compile(lambda z: F.cross_entropy(z, 2), backend=backend)(np.zeros(4, F32))
    assert_close(got, np.array(np.log(4), F32))
    with pytest.raises(lm.ShapeError, match="mse_loss"):
        lm.compile(lambda a: F.mse_loss(a, 2.0), backend=backend)(np.ones(3, F32))


# --- optimizers against numpy -----------------------------------------------------------------


class Regression(nn.Module):
    def __init__(self, rng):
        self.fc = nn.Linear(4, 3)
        # Deterministic, well-scaled starting values.
        self.fc.w.assign(rng.standard_normal((4, 3)).astype(F32) * 0.5)
        self.fc.b.assign(rng.standard_normal(3).astype(F32) * 0.5)

    def __call__(self, x):
        return self.fc(x)


def _regression_grads(w, b, x, y):
    """Gradients of mean((x @ w + b - y)**2) in float64."""
    d = 2 * (x @ w + b - y) / y.size
    return {"fc.w": x.T @ d, "fc.b": d.sum(0)}


def _batches(rng, n):
    return [(rng.standard_normal((8, 4)).astype(F32), rng.standard_normal((8, 3)).astype(F32))
            for _ in range(n)]


def _run_optimizer(backend, rng, make_opt, reference, slot_kinds, steps=5):
    model = Regression(rng)
    opt = make_opt(model.parameters())

    @lm.compile(backend=backend)
    def step(x, y):
        return opt.minimize(F.mse_loss(model(x), y))

    params = {k: v.astype(np.float64) for k, v in model.state_dict().items()}
    slots: dict = {}
    for t, (x, y) in enumerate(_batches(rng, steps), start=1):
        loss = step(x, y)
        pred = x.astype(np.float64) @ params["fc.w"] + params["fc.b"]
        assert_close(loss, np.float32(((pred - y) ** 2).mean()), dtype=np.float32)
        grads = _regression_grads(params["fc.w"], params["fc.b"], x.astype(np.float64), y)
        params = {name: reference(name, p, grads[name], slots, t) for name, p in params.items()}
        state = model.state_dict()
        opt_state = opt.state_dict()
        for name, p in params.items():
            assert_close(state[name], p.astype(F32), dtype=np.float32,
                         err_msg=f"{name} after step {t}")
            for kind in slot_kinds:
                assert_close(opt_state[f"{name}.{kind}"], slots[(name, kind)].astype(F32),
                             dtype=np.float32, err_msg=f"slot {name}.{kind} after step {t}")
    assert len(step.variants) == 1
    return opt


def _sgd_reference(lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    def update(name, p, g, slots, t):
        if weight_decay:
            g = g + weight_decay * p
        if momentum:
            buf = slots.get((name, "momentum"))
            buf = g.copy() if buf is None else momentum * buf + g  # PyTorch: buf = g at t=1
            slots[(name, "momentum")] = buf
            g = g + momentum * buf if nesterov else buf
        return p - lr * g

    return update


def _adam_reference(lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    b1, b2 = betas

    def update(name, p, g, slots, t):
        if decoupled:
            p = p * (1 - lr * weight_decay)  # PyTorch AdamW: decay first, from the old p
        elif weight_decay:
            g = g + weight_decay * p
        m = b1 * slots.get((name, "adam_m"), 0.0) + (1 - b1) * g
        v = b2 * slots.get((name, "adam_v"), 0.0) + (1 - b2) * g * g
        slots[(name, "adam_m")], slots[(name, "adam_v")] = m, v
        m_hat, v_hat = m / (1 - b1 ** t), v / (1 - b2 ** t)
        return p - lr * m_hat / (np.sqrt(v_hat) + eps)

    return update


@pytest.mark.parametrize("kw", [
    {},
    {"momentum": 0.9},
    {"momentum": 0.9, "nesterov": True},
    {"weight_decay": 0.1},
    {"momentum": 0.8, "weight_decay": 0.05, "nesterov": True},
], ids=["plain", "momentum", "nesterov", "weight_decay", "all"])
def test_sgd_matches_numpy(backend, rng, kw):
    kinds = ["momentum"] if kw.get("momentum") else []
    _run_optimizer(backend, rng, lambda ps: optim.SGD(ps, lr=0.1, **kw),
                   _sgd_reference(0.1, **kw), kinds)


@pytest.mark.parametrize("kw", [
    {},
    {"betas": (0.8, 0.99), "eps": 1e-6},
    {"weight_decay": 0.1},
], ids=["default", "betas", "l2"])
def test_adam_matches_numpy(backend, rng, kw):
    opt = _run_optimizer(backend, rng, lambda ps: optim.Adam(ps, lr=0.01, **kw),
                         _adam_reference(0.01, **kw), ["adam_m", "adam_v"])
    assert float(opt.state_dict()["adam.step"]) == 5


@pytest.mark.parametrize("wd", [0.01, 0.3])
def test_adamw_matches_numpy(backend, rng, wd):
    opt = _run_optimizer(backend, rng, lambda ps: optim.AdamW(ps, lr=0.01, weight_decay=wd),
                         _adam_reference(0.01, weight_decay=wd, decoupled=True),
                         ["adam_m", "adam_v"])
    assert float(opt.state_dict()["adamw.step"]) == 5


def test_adamw_default_weight_decay_is_pytorchs():
    w = nn.Parameter(np.ones(2, F32), "w")
    assert optim.AdamW([w]).weight_decay == 0.01
    assert optim.Adam([w]).weight_decay == 0.0


def test_changing_lr_takes_effect_without_recompiling(backend):
    w = nn.Parameter(np.array([1.0, -2.0], F32), "w")
    opt = optim.SGD([w], lr=0.1)
    step = lm.compile(lambda: opt.minimize((w * w).sum()), backend=backend)
    step()
    assert_close(w.numpy(), np.array([0.8, -1.6], F32))  # w - 0.1 * 2w
    opt.lr = 0.25
    assert opt.lr == 0.25
    step()
    assert_close(w.numpy(), np.array([0.4, -0.8], F32))  # w - 0.25 * 2w
    opt.lr = 0.0
    step()
    assert_close(w.numpy(), np.array([0.4, -0.8], F32))
    assert len(step.variants) == 1


def test_optimizer_needs_parameters():
    with pytest.raises(lm.LaminaError, match="no parameters"):
        optim.SGD([], lr=0.1)
    with pytest.raises(lm.LaminaError, match="expected Parameters"):
        optim.SGD([np.ones(3, F32)], lr=0.1)


def test_minimize_outside_a_trace_is_an_error():
    w = nn.Parameter(np.ones(2, F32), "w")
    opt = optim.SGD([w])
    with pytest.raises(lm.TraceError, match="inside a traced function"):
        opt.minimize(np.float32(1.0))


def test_minimize_needs_a_scalar_loss(backend):
    w = nn.Parameter(np.ones(2, F32), "w")
    opt = optim.SGD([w])
    with pytest.raises(lm.GradError, match="scalar"):
        lm.compile(lambda: opt.minimize(w * 2.0), backend=backend)()


# --- parameters shared between compiled functions --------------------------------------------


def test_predict_sees_weights_updated_by_train_step(backend, rng):
    model = MLP()
    opt = optim.Adam(model.parameters(), lr=0.05)

    @lm.compile(backend=backend)
    def train_step(x, y):
        return opt.minimize(F.cross_entropy(model(x), y))

    predict = lm.compile(lambda x: model(x), backend=backend)
    x = rng.standard_normal((16, 4)).astype(F32)
    y = rng.integers(0, 3, 16).astype(np.int32)
    storages = [p.storage for p in model.parameters()]
    before = predict(x)
    assert_close(before, _mlp_forward(model.state_dict(), x))
    losses = [float(train_step(x, y)) for _ in range(5)]
    assert losses[-1] < losses[0]
    after = predict(x)
    assert not np.allclose(before, after)
    assert_close(after, _mlp_forward(model.state_dict(), x))
    assert len(predict.variants) == 1 and len(train_step.variants) == 1
    assert all(p.storage is s for p, s in zip(model.parameters(), storages))


def test_logistic_regression_reaches_high_accuracy(backend):
    import time

    start = time.perf_counter()
    rng = np.random.default_rng(1)
    n = 400
    y = rng.integers(0, 2, n)
    centers = np.array([[-1.5, 1.0], [1.5, -1.0]])
    x = (centers[y] + rng.standard_normal((n, 2)) * 0.5).astype(F32)
    lm.random.seed(0)
    model = nn.Linear(2, 1)
    opt = optim.SGD(model.parameters(), lr=0.5)

    @lm.compile(backend=backend)
    def train_step(x, t):
        return opt.minimize(F.binary_cross_entropy_with_logits(model(x)[:, 0], t))

    predict = lm.compile(lambda x: lm.sigmoid(model(x)[:, 0]) > 0.5, backend=backend)
    t = y.astype(F32)
    losses = [float(train_step(x, t)) for _ in range(60)]
    acc = (predict(x) == y).mean()
    assert losses[-1] < 0.2 < losses[0]
    assert acc >= 0.97
    assert time.perf_counter() - start < 2.0
