"""Buffers (state that is not trained) and ``assign``, the one way to give state a new value:
names, ``state_dict``, sharing between compiled functions, updates once per call, artifacts,
optimizers leaving them out, and the errors of misuse. Also ``print(model)``,
``load_state_dict`` with PyTorch's names and ``nn.init``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn, optim

F32 = np.float32


class Counter(nn.Module):
    """Counts its calls in an int64 buffer and keeps an exponential average of its input."""

    def __init__(self, n=3, persistent=True):
        self.register_buffer("calls", np.zeros((), np.int64))
        self.avg = nn.Buffer(np.zeros(n, F32))
        self.register_buffer("scratch", np.ones(n, F32), persistent=persistent)
        self.scale = nn.Parameter(np.full(n, 2.0, F32))

    def __call__(self, x):
        self.calls.assign(self.calls + 1)
        self.avg.assign(0.5 * self.avg + 0.5 * x.mean(axis=0))
        return x * self.scale


# --- registration, names, state_dict ------------------------------------------------------------


def test_buffers_are_named_listed_and_not_parameters():
    class Net(nn.Module):
        def __init__(self):
            self.c = Counter()
            self.fc = nn.Linear(3, 2)

    net = Net()
    assert [n for n, _ in net.named_buffers()] == ["c.calls", "c.avg", "c.scratch"]
    assert [b.name for b in net.buffers()] == ["c.calls", "c.avg", "c.scratch"]
    assert [n for n, _ in net.named_parameters()] == ["c.scale", "fc.w", "fc.b"]
    assert all(isinstance(b, nn.Buffer) and not isinstance(b, nn.Parameter)
               for b in net.buffers())
    assert list(net.state_dict()) == ["c.calls", "c.avg", "c.scratch", "c.scale", "fc.w",
                                      "fc.b"]
    assert net.state_dict()["c.calls"].dtype == np.int64


def test_non_persistent_buffers_stay_out_of_state_dict():
    c = Counter(persistent=False)
    assert "scratch" not in c.state_dict()
    assert [n for n, _ in c.named_buffers()] == ["calls", "avg", "scratch"]
    c.load_state_dict({k: v for k, v in c.state_dict().items()})  # strict: not missing
    with pytest.raises(lm.LaminaError, match=r"unexpected \['scratch'\]"):
        c.load_state_dict({**c.state_dict(), "scratch": np.ones(3, F32)})


def test_register_buffer_none_and_replacing():
    m = nn.Module()
    m.register_buffer("stat", None)
    assert m.stat is None and m.state_dict() == {}
    m.register_buffer("stat", np.arange(3.0, dtype=F32))
    m.register_buffer("stat", np.zeros(2, F32))  # registering again replaces it
    assert m.stat.shape == (2,) and list(m.state_dict()) == ["stat"]


def test_optimizers_leave_buffers_out():
    c = Counter()
    opt = optim.SGD(c.parameters(), lr=0.1)
    assert opt.params == [c.scale]
    with pytest.raises(lm.LaminaError, match="avg is a Buffer"):
        optim.Adam([c.scale, c.avg])


# --- updates inside a compiled step -------------------------------------------------------------


def test_assign_updates_once_per_call_and_is_shared(backend):
    c = Counter()
    step = lm.compile(c, backend=backend)
    peek = lm.compile(lambda: (c.calls * 1, c.avg * 1.0), backend=backend)
    x = np.arange(6, dtype=F32).reshape(2, 3)
    avg = np.zeros(3)
    for i in range(1, 4):
        np.testing.assert_array_equal(step(x), x * 2)
        avg = 0.5 * avg + 0.5 * x.mean(0)
        calls, seen_avg = peek()  # another compiled function sees the new values
        assert int(calls) == i and calls.dtype == np.int64
        assert_close(seen_avg, avg.astype(F32))
    assert int(c.calls.numpy()) == 3 and len(step.variants) == 1
    c.calls.assign(np.int64(10))  # outside a trace: written at once, no recompiling
    step(x)
    assert int(peek()[0]) == 11 and len(step.variants) == 1


def test_reads_after_assign_see_the_new_value_and_the_last_assign_wins(backend):
    buf = nn.Buffer(np.zeros(2, F32))

    def f(x):
        before = buf * 1.0
        buf.assign(buf + x)  # reads from here on see buf + x
        mid = buf * 1.0
        buf.assign(buf * 10.0)  # a second assign in the same step replaces the first
        return before, mid, buf * 1.0

    fc = lm.compile(f, backend=backend)
    x = np.array([1.0, 2.0], F32)
    before, mid, after = fc(x)
    np.testing.assert_array_equal(before, [0, 0])
    np.testing.assert_array_equal(mid, [1, 2])
    np.testing.assert_array_equal(after, [10, 20])
    np.testing.assert_array_equal(buf.numpy(), [10, 20])
    fc(x)
    np.testing.assert_array_equal(buf.numpy(), [110, 220])


def test_assign_takes_python_numbers_and_same_kind_casts(backend):
    b32 = nn.Buffer(np.ones(3, F32))
    n = nn.Buffer(np.zeros((), np.int32))

    def f(x):
        b32.assign(0.0)  # a number fills the buffer
        n.assign(n + np.int64(2))  # int64 into int32: the same kind, cast
        return x + b32 * 1.0

    lm.compile(f, backend=backend)(np.ones(3, np.float64))
    np.testing.assert_array_equal(b32.numpy(), np.zeros(3, F32))
    assert n.numpy().dtype == np.int32 and int(n.numpy()) == 2


def test_parameter_assign_inside_a_step_without_an_optimizer(backend):
    """Weight clipping or an exponential moving average of weights: assign a Parameter."""
    layer = nn.Linear(3, 2)
    layer.w.assign(np.full((3, 2), 3.0, F32))
    ema = nn.Buffer(np.zeros((3, 2), F32))

    def clip(x):
        y = layer(x)
        layer.w.assign(lm.clip(layer.w, -1.0, 1.0))
        ema.assign(0.9 * ema + 0.1 * layer.w)
        return y

    fc = lm.compile(clip, backend=backend)
    fc(np.ones((1, 3), F32))
    np.testing.assert_array_equal(layer.w.numpy(), np.ones((3, 2), F32))
    assert_close(ema.numpy(), np.full((3, 2), 0.1, F32))


def test_assign_inside_lm_grad_and_minimize(backend):
    """A forward pass that updates a buffer, differentiated and trained in one step."""
    c = Counter()
    opt = optim.SGD(c.parameters(), lr=0.5)

    @lm.compile(backend=backend)
    def step(x):
        loss = (c(x) ** 2).mean()
        opt.minimize(loss)
        return loss

    x = np.ones((2, 3), F32)
    step(x)
    step(x)
    assert int(c.calls.numpy()) == 2
    assert_close(c.avg.numpy(), np.full(3, 0.75, F32))
    # d/ds mean((x*s)^2) = 2 s x^2 / 3 per element of s: 4/3 at s=2, then s = 2 - 2/3
    s1 = 2 - 0.5 * 4 / 3
    assert_close(c.scale.numpy(), np.full(3, s1 - 0.5 * 2 * s1 / 3, F32))


# --- misuse ---------------------------------------------------------------------------------------


def test_assign_of_a_wrong_shape_or_dtype_is_an_error():
    buf = nn.Buffer(np.zeros(3, F32), name="stats")
    count = nn.Buffer(np.zeros((), np.int64), name="count")
    with pytest.raises(lm.ShapeError, match=r"stats.assign: the value is f32\[2\], stats is "
                                            r"f32\[3\]") as e:
        lm.trace(lambda x: buf.assign(x), np.zeros(2, F32))
    assert "test_buffers.py" in str(e.value), "the error names the user's line"
    with pytest.raises(lm.DTypeError, match="a float32 value cannot be assigned to count"):
        lm.trace(lambda x: count.assign(count + x), np.zeros((), F32))
    with pytest.raises(lm.LaminaError, match="shape"):
        buf.assign(np.zeros(4, F32))  # outside a trace too


def test_assigning_a_parameter_an_optimizer_updates_is_an_error():
    layer = nn.Linear(2, 2)
    opt = optim.SGD(layer.parameters(), lr=0.1)

    def assign_then_minimize(x):
        layer.w.assign(layer.w * 0.5)
        return opt.minimize(layer(x).sum())

    def minimize_then_assign(x):
        opt.minimize(layer(x).sum())
        layer.w.assign(layer.w * 0.5)

    x = np.ones((1, 2), F32)
    with pytest.raises(lm.GradError, match=r"w is assigned in this step \(w.assign at "
                                           r".*test_buffers.py.*\) and updated by SGD.minimize"):
        lm.trace(assign_then_minimize, x)
    with pytest.raises(lm.TraceError, match="w is updated by SGD.minimize in this step and "
                                            "assigned by w.assign"):
        lm.trace(minimize_then_assign, x)


def test_two_optimizers_on_one_parameter_is_an_error():
    w = nn.Parameter(np.ones(2, F32), "w")
    a, b = optim.SGD([w], lr=0.1), optim.Adam([w])

    def step():
        loss = (w * w).sum()
        a.minimize(loss)
        b.minimize(loss)

    with pytest.raises(lm.TraceError, match=r"w is updated twice in one traced call "
                                            r"\(SGD.minimize and Adam.minimize\)"):
        lm.trace(step)


def test_attribute_assignment_of_state_points_at_assign():
    c = Counter()
    with pytest.raises(lm.TraceError, match=r"Counter.avg is a Buffer .*\.avg\.assign\(value\)"):
        lm.trace(lambda x: setattr(c, "avg", c.avg * 0 + x), np.zeros(3, F32))
    with pytest.raises(lm.LaminaError, match=r"Counter.scale is a Parameter"):
        c.scale = np.zeros(3, F32)
    assert isinstance(c.avg, nn.Buffer) and isinstance(c.scale, nn.Parameter)
    c.avg = nn.Buffer(np.ones(3, F32))  # replacing it by another Buffer is fine
    assert c.avg.name == "avg"


# --- artifacts --------------------------------------------------------------------------------


def test_artifacts_save_and_load_buffers(backend, tmp_path):
    lm.random.seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5), nn.ReLU(), nn.Linear(5, 2))
    opt = optim.SGD(model.parameters(), lr=0.1)

    @lm.compile(backend=backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    rng = np.random.default_rng(0)
    batches = [(rng.standard_normal((6, 4)).astype(F32), rng.integers(0, 2, 6))
               for _ in range(4)]
    train_step(*batches[0])
    train_step.save(tmp_path / "train.lamina")
    loaded = lm.load(tmp_path / "train.lamina")
    state = loaded.state_dict()
    for k in ("layers.1.running_mean", "layers.1.running_var", "layers.1.num_batches_tracked"):
        np.testing.assert_array_equal(state[k], model.state_dict()[k])
    for xb, yb in batches[1:]:  # the loaded step keeps training its own state, buffers too
        assert_close(loaded(xb, yb), train_step(xb, yb))
    state = loaded.state_dict()
    for k, v in model.state_dict().items():
        assert_close(state[k], v, err_msg=k)
    assert int(state["layers.1.num_batches_tracked"]) == 4
    model.eval()
    predict = lm.compile(lambda x: model(x), backend=backend)
    x = batches[0][0]
    want = predict(x)
    predict.save(tmp_path / "predict.lamina")
    assert_close(lm.load(tmp_path / "predict.lamina")(x), want)


# --- print(model) ---------------------------------------------------------------------------------


def test_print_model_lists_layers_like_torch():
    class Block(nn.Module):
        def __init__(self):
            self.norm = nn.LayerNorm(8)
            self.ff = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Dropout(0.1),
                                    nn.Linear(16, 8, bias=False))

    class Net(nn.Module):
        def __init__(self):
            self.emb = nn.Embedding(10, 8, padding_idx=0)
            self.blocks = nn.ModuleList([Block()])
            self.heads = nn.ModuleDict({"cls": nn.Linear(8, 2)})
            self.bn = nn.BatchNorm2d(3, momentum=None)
            self.gn = nn.GroupNorm(2, 4)
            self.rms = nn.RMSNorm([2, 3], eps=1e-6)
            self.flat = nn.Flatten()
            self.extra = [nn.Identity(), nn.Tanh()]

    want = """Net(
  (emb): Embedding(10, 8, padding_idx=0)
  (blocks): ModuleList(
    (0): Block(
      (norm): LayerNorm((8,), eps=1e-05, elementwise_affine=True)
      (ff): Sequential(
        (0): Linear(in_features=8, out_features=16, bias=True)
        (1): GELU(approximate='tanh')
        (2): Dropout(p=0.1)
        (3): Linear(in_features=16, out_features=8, bias=False)
      )
    )
  )
  (heads): ModuleDict(
    (cls): Linear(in_features=8, out_features=2, bias=True)
  )
  (bn): BatchNorm2d(3, eps=1e-05, momentum=None, affine=True, track_running_stats=True)
  (gn): GroupNorm(2, 4, eps=1e-05, affine=True)
  (rms): RMSNorm((2, 3), eps=1e-06, elementwise_affine=True)
  (flat): Flatten(start_dim=1, end_dim=-1)
  (extra.0): Identity()
  (extra.1): Tanh()
)"""
    assert str(Net()) == want
    assert repr(nn.Sequential()) == "Sequential()"


# --- load_state_dict with PyTorch's names -------------------------------------------------------


def test_load_state_dict_takes_torch_names_and_layouts():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4),
                             torch.nn.Linear(4, 2))
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    sd = {k: v.numpy() for k, v in tm.state_dict().items()}
    keys = model.load_state_dict(sd)
    assert keys.missing_keys == [] and keys.unexpected_keys == []
    np.testing.assert_array_equal(model.layers[0].w.numpy(), sd["0.weight"].T)
    np.testing.assert_array_equal(model[0].weight.numpy(), sd["0.weight"])
    np.testing.assert_array_equal(model.layers[2].b.numpy(), sd["2.bias"])
    # torch tensors themselves load too (np.asarray of a CPU tensor)
    model.load_state_dict(tm.state_dict())
    # strict: missing and unexpected keys in the caller's naming, shapes in PyTorch's layout
    partial = {k: v for k, v in sd.items() if k != "1.running_var"}
    with pytest.raises(lm.LaminaError, match=r"missing \['1.running_var'\], unexpected \[\]"):
        model.load_state_dict(partial)
    with pytest.raises(lm.LaminaError, match=r"unexpected \['3.weight'\]"):
        model.load_state_dict({**sd, "3.weight": np.zeros((1, 1), F32)})
    before = model.state_dict()
    bad = dict(sd, **{"2.weight": np.zeros((4, 2), F32)})  # lamina's layout under torch's name
    with pytest.raises(lm.LaminaError, match=r"2.weight has shape \[4, 2\], the model expects "
                                             r"\[2, 4\] \(PyTorch's layout of layers.2.w"):
        model.load_state_dict(bad)
    for k, v in model.state_dict().items():  # nothing was written
        np.testing.assert_array_equal(v, before[k])
    with pytest.raises(lm.LaminaError, match="'0.weight' and 'layers.0.w' both give layers.0.w"):
        model.load_state_dict({**sd, "layers.0.w": before["layers.0.w"]})
    keys = model.load_state_dict({"0.bias": sd["0.bias"], "x": np.zeros(1)}, strict=False)
    assert "1.running_mean" in keys.missing_keys and keys.unexpected_keys == ["x"]
    # lamina's own names keep working
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    other.load_state_dict(model.state_dict())
    for k, v in model.state_dict().items():
        np.testing.assert_array_equal(other.state_dict()[k], v)


def test_linear_weight_view():
    layer = nn.Linear(3, 2)
    assert layer.weight.shape == (2, 3) and layer.weight.name == "w"
    np.testing.assert_array_equal(np.asarray(layer.weight), layer.w.numpy().T)
    layer.weight.assign(np.arange(6, dtype=F32).reshape(2, 3))
    np.testing.assert_array_equal(layer.w.numpy(), np.arange(6, dtype=F32).reshape(2, 3).T)
    x = np.ones((1, 3), F32)
    got = lm.compile(lambda x: nn.functional.linear(x, layer.weight, layer.bias))(x)
    assert_close(got, x @ layer.w.numpy() + layer.b.numpy())
    assert_close(nn.functional.linear(x, layer.weight, layer.bias),  # eagerly too
                 x @ layer.w.numpy() + layer.b.numpy())
    with pytest.raises(lm.LaminaError, match="weight.assign"):
        layer.weight = nn.Parameter(np.zeros((2, 3), F32))


def test_embedding_from_pretrained(backend):
    table = np.arange(12, dtype=F32).reshape(4, 3)
    frozen = nn.Embedding.from_pretrained(table)
    assert frozen.parameters() == [] and isinstance(frozen.weight, nn.Buffer)
    np.testing.assert_array_equal(lm.compile(frozen, backend=backend)(np.array([3, 0])),
                                  table[[3, 0]])
    trainable = nn.Embedding.from_pretrained(table, freeze=False, padding_idx=1)
    assert [n for n, _ in trainable.named_parameters()] == ["weight"]
    np.testing.assert_array_equal(trainable.weight.numpy(), table)


# --- nn.init ----------------------------------------------------------------------------------


def test_init_fans_and_gains_follow_torch():
    torch = pytest.importorskip("torch")
    for shape in [(5, 3), (8, 4, 3), (6, 2, 3, 3)]:
        want = torch.nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
        assert nn.init._fans(shape, "t") == want
    for name, param in [("relu", None), ("tanh", None), ("leaky_relu", 0.2), ("selu", None),
                        ("sigmoid", None), ("conv2d", None), ("leaky_relu", None)]:
        assert math.isclose(nn.init.calculate_gain(name, param),
                            torch.nn.init.calculate_gain(name, param))
    with pytest.raises(lm.LaminaError, match="fewer than 2 dimensions"):
        nn.init.xavier_uniform_(nn.Parameter(np.zeros(3, F32)))
    layer = nn.Linear(5, 7)  # counted on PyTorch's layout [7, 5], whichever name is given
    assert nn.init.calculate_fan_in_and_fan_out(layer.w) == (5, 7)
    assert nn.init._calculate_fan_in_and_fan_out(layer.weight) == (5, 7)


@pytest.mark.parametrize("init,kw,check", [
    ("uniform_", {"a": -2, "b": 3}, ("uniform", -2, 3)),
    ("normal_", {"mean": 1, "std": 0.5}, ("normal", 1, 0.5)),
    ("xavier_uniform_", {"gain": 2}, ("uniform", None, 2 * math.sqrt(6 / (200 + 300)))),
    ("xavier_normal_", {}, ("normal", 0, math.sqrt(2 / (200 + 300)))),
    ("kaiming_uniform_", {"a": math.sqrt(5)}, ("uniform", None, 1 / math.sqrt(200))),
    ("kaiming_normal_", {"mode": "fan_out", "nonlinearity": "relu"},
     ("normal", 0, math.sqrt(2 / 300))),
])
def test_init_distributions(init, kw, check):
    """On a Linear(200, 300): fans counted on PyTorch's layout (fan_in 200, fan_out 300),
    whether given ``w`` or the ``weight`` view."""
    lm.random.seed(0)
    for target in ("w", "weight"):
        layer = nn.Linear(200, 300)
        out = getattr(nn.init, init)(getattr(layer, target), **kw)
        assert out is not None
        w = layer.w.numpy()
        kind, a, b = check
        if kind == "uniform":
            lo, hi = (-b, b) if a is None else (a, b)
            assert lo <= w.min() and w.max() <= hi
            assert w.min() < lo + 0.01 * (hi - lo) and w.max() > hi - 0.01 * (hi - lo)
        else:
            assert abs(w.mean() - a) < 0.02 * b + 1e-3 and abs(w.std() - b) < 0.02 * b


def test_init_trunc_normal():
    lm.random.seed(0)
    p = nn.Parameter(np.zeros((100, 100), F32))
    nn.init.trunc_normal_(p, mean=0.5, std=1.0, a=0.0, b=1.0)
    v = p.numpy()
    assert v.min() >= 0 and v.max() <= 1 and v.min() < 0.01 and v.max() > 0.99
    # the mean of N(0.5, 1) restricted to [0, 1] is 0.5, by symmetry
    assert abs(v.mean() - 0.5) < 0.01
    with pytest.raises(lm.LaminaError, match="empty"):
        nn.init.trunc_normal_(p, a=1, b=1)


def test_init_constant_zeros_ones_and_orthogonal():
    layer = nn.Linear(4, 6)
    nn.init.zeros_(layer.b)
    nn.init.ones_(layer.w)
    assert not layer.b.numpy().any() and (layer.w.numpy() == 1).all()
    nn.init.constant_(layer.bias, 0.25)
    assert (layer.b.numpy() == 0.25).all()
    for shape in [(6, 4), (4, 6), (3, 2, 2)]:
        p = nn.Parameter(np.zeros(shape, F32))
        nn.init.orthogonal_(p, gain=2.0)
        q = p.numpy().reshape(shape[0], -1)
        gram = q @ q.T if q.shape[0] <= q.shape[1] else q.T @ q
        assert_close(gram, 4 * np.eye(gram.shape[0], dtype=F32), atol=1e-5)
    # model.apply with nn.init, PyTorch's idiom
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), nn.Linear(3, 3))

    def init(m):
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    assert model.apply(init) is model
    assert not model[0].b.numpy().any() and not model[2].b.numpy().any()


def test_init_inside_a_trace_is_an_error():
    p = nn.Parameter(np.zeros((2, 2), F32))
    with pytest.raises(lm.LaminaError, match="outside compiled functions"):
        lm.trace(lambda x: nn.init.zeros_(p) and x, np.zeros(1, F32))


@pytest.mark.parametrize("attr", ["data", "value", "requires_grad", "grad"])
def test_pytorch_style_attribute_writes_are_errors_not_silent_attributes(attr):
    """``p.data = x`` (a PyTorch habit) used to create a plain attribute and change nothing."""
    layer = nn.Linear(2, 3)
    before = layer.w.numpy()
    for target in (layer.w, layer.weight, nn.Buffer(np.zeros(2, np.float32))):
        with pytest.raises(lm.LaminaError,
                           match=rf"(?s)cannot set \.{attr} of .*test_buffers.py"):
            setattr(target, attr, np.zeros(target.shape, np.float32))
    np.testing.assert_array_equal(layer.w.numpy(), before)
    layer.weight.assign(np.ones((3, 2), np.float32))  # the way that works
    np.testing.assert_array_equal(layer.w.numpy(), np.ones((2, 3), np.float32))
