"""The layers of ``lamina.nn`` against PyTorch (a test-only oracle): the same weights, loaded by
name from torch's ``state_dict``, the same input -> the same outputs and the same gradients
(input and every parameter), in training and eval mode, on every backend; a few small cases on
triton under Triton's interpreter. Also ``nn.init``, ``print(model)`` and ``load_state_dict``
with PyTorch's names and layouts.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn, optim
from lamina.frontend.nn import torch_names

torch = pytest.importorskip("torch")

from nn_torch import check_against_torch, randn, torch_sd  # noqa: E402

F32 = np.float32


# --- Linear, Flatten, Identity, containers ----------------------------------------------------


@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(backend, bias):
    tm = torch.nn.Linear(5, 3, bias=bias)
    check_against_torch(nn.Linear(5, 3, bias=bias), tm, randn((4, 5)), backend)
    check_against_torch(nn.Linear(5, 3, bias=bias), tm, randn((2, 3, 5), 1), backend)


def test_sequential_with_flatten_and_identity_matches_torch(backend):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 6), torch.nn.Tanh(),
                             torch.nn.Identity(), torch.nn.Linear(6, 2))
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Identity(),
                          nn.Linear(6, 2))
    check_against_torch(model, tm, randn((3, 3, 4)), backend)


def test_leaky_relu_and_silu_match_torch(backend):
    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.LeakyReLU(0.2),
                             torch.nn.Linear(6, 4), torch.nn.SiLU())
    model = nn.Sequential(nn.Linear(5, 6), nn.LeakyReLU(0.2), nn.Linear(6, 4), nn.SiLU())
    check_against_torch(model, tm, randn((3, 5)), backend)


@pytest.mark.parametrize("start,end,shape", [(1, -1, (2, 3, 4, 5)), (0, -1, (2, 3, 4)),
                                             (1, 2, (2, 3, 4, 5)), (-2, -1, (2, 3, 4)),
                                             (2, 2, (2, 3, 4))])
def test_flatten_matches_torch(backend, start, end, shape):
    x = randn(shape)
    got = lm.compile(nn.Flatten(start, end), backend=backend)(x)
    np.testing.assert_array_equal(got, torch.nn.Flatten(start, end)(torch.tensor(x)).numpy())


def test_flatten_bad_dims_is_an_error():
    with pytest.raises(lm.LaminaError, match="start_dim 2 and end_dim 1"):
        lm.compile(nn.Flatten(2, 1))(np.zeros((2, 3, 4), F32))


def test_module_list_and_dict_names_match_torch(backend):
    class TNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.blocks = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(2)])
            self.heads = torch.nn.ModuleDict({"a": torch.nn.Linear(4, 2),
                                              "b": torch.nn.Linear(4, 3)})
            self.out = torch.nn.Sequential(torch.nn.Linear(5, 5), torch.nn.ReLU())

        def forward(self, x):
            for blk in self.blocks:
                x = torch.relu(blk(x))
            return self.out(torch.cat([self.heads["a"](x), self.heads["b"](x)], -1))

    class Net(nn.Module):
        def __init__(self):
            self.blocks = nn.ModuleList()
            for _ in range(2):
                self.blocks.append(nn.Linear(4, 4))  # appended after the list was assigned
            self.heads = nn.ModuleDict({"a": nn.Linear(4, 2), "b": nn.Linear(4, 3)})
            self.out = nn.Sequential(nn.Linear(5, 5), nn.ReLU())

        def __call__(self, x):
            for blk in self.blocks:
                x = lm.relu(blk(x))
            return self.out(lm.concatenate([self.heads["a"](x), self.heads["b"](x)], -1))

    torch.manual_seed(1)
    model = Net()
    names = ["blocks.0.w", "blocks.0.b", "blocks.1.w", "blocks.1.b", "heads.a.w", "heads.a.b",
             "heads.b.w", "heads.b.b", "out.layers.0.w", "out.layers.0.b"]
    # named at assignment, before any walk of the model: the IR uses the same names
    assert [p.name for _, p in model._walk("") if isinstance(p, nn.Parameter)] == names
    assert list(model.state_dict()) == names
    check_against_torch(model, TNet(), randn((3, 4)), backend)
    g = lm.trace(model, np.zeros((3, 4), F32))
    assert sorted(p.name for p in g.state) == sorted(names)
    assert len(model.blocks) == 2 and model.blocks[-1] is list(model.blocks)[1]
    assert list(model.heads) == ["a", "b"] and "a" in model.heads


def test_containers_refuse_non_modules():
    with pytest.raises(lm.LaminaError, match="not a Module"):
        nn.ModuleList([lambda x: x])
    with pytest.raises(lm.LaminaError, match="keys"):
        nn.ModuleDict({"a.b": nn.ReLU()})


def test_sequential_indexing_and_append():
    seq = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
    seq.append(nn.Linear(3, 1))
    assert len(seq) == 3 and isinstance(seq[1], nn.ReLU)
    assert isinstance(seq[:2], nn.Sequential) and len(seq[:2]) == 2
    assert list(seq.state_dict()) == ["layers.0.w", "layers.0.b", "layers.2.w", "layers.2.b"]


# --- normalization ----------------------------------------------------------------------------


@pytest.mark.parametrize("shape,normalized,kw", [
    ((4, 8), 8, {}),
    ((2, 3, 6), (3, 6), {"eps": 1e-3}),
    ((3, 5), 5, {"elementwise_affine": False}),
    ((2, 4, 5), 5, {"bias": False}),
])
def test_layer_norm_matches_torch(backend, shape, normalized, kw):
    torch.manual_seed(0)
    tm = torch.nn.LayerNorm(normalized, **kw)
    with torch.no_grad():
        for p in tm.parameters():
            p.uniform_(0.5, 1.5)
    check_against_torch(nn.LayerNorm(normalized, **kw), tm, randn(shape, 2, 3.0, 1.0), backend)


@pytest.mark.parametrize("shape,normalized,kw", [
    ((4, 8), 8, {}),
    ((2, 3, 6), (3, 6), {"eps": 1e-4}),
    ((3, 5), 5, {"elementwise_affine": False}),
])
def test_rms_norm_matches_torch(backend, shape, normalized, kw):
    tm = torch.nn.RMSNorm(normalized, **kw)
    with torch.no_grad():
        for p in tm.parameters():
            p.uniform_(0.5, 1.5)
    check_against_torch(nn.RMSNorm(normalized, **kw), tm, randn(shape, 3, 2.0), backend)


@pytest.mark.parametrize("groups,channels,shape,kw", [
    (2, 4, (3, 4, 5), {}),
    (1, 6, (2, 6, 3, 3), {"eps": 1e-3}),
    (3, 3, (2, 3, 4, 2), {"affine": False}),
])
def test_group_norm_matches_torch(backend, groups, channels, shape, kw):
    tm = torch.nn.GroupNorm(groups, channels, **kw)
    with torch.no_grad():
        for p in tm.parameters():
            p.uniform_(0.5, 1.5)
    check_against_torch(nn.GroupNorm(groups, channels, **kw), tm, randn(shape, 4, 2.0, 0.5),
                        backend)


BN_CASES = [
    ("1d", (8, 5), {}),
    ("1d", (4, 3, 6), {"momentum": 0.3, "eps": 1e-3}),
    ("2d", (3, 4, 5, 5), {}),
    ("2d", (2, 3, 4, 4), {"affine": False}),
    ("2d", (2, 3, 3, 3), {"momentum": None}),
    ("1d", (6, 4), {"track_running_stats": False}),
]


def _bn_pair(kind, features, kw):
    torch_cls = torch.nn.BatchNorm1d if kind == "1d" else torch.nn.BatchNorm2d
    cls = nn.BatchNorm1d if kind == "1d" else nn.BatchNorm2d
    tm = torch_cls(features, **kw)
    if tm.affine:
        with torch.no_grad():
            tm.weight.uniform_(0.5, 1.5)
            tm.bias.uniform_(-0.5, 0.5)
    if tm.track_running_stats:
        tm.running_mean.uniform_(-1, 1)
        tm.running_var.uniform_(0.5, 2)
    return cls(features, **kw), tm


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind,shape,kw", BN_CASES)
def test_batch_norm_matches_torch(backend, kind, shape, kw, train):
    model, tm = _bn_pair(kind, shape[1], kw)
    x = randn(shape, 5, 2.0, 1.0)
    check_against_torch(model, tm, x, backend, train=train)
    # the running statistics after the one step: updated in training, untouched in eval
    for k, v in torch_sd(tm).items():
        got = model.state_dict()[k]
        assert got.dtype == v.dtype, k
        assert_close(got, v, err_msg=k)


@pytest.mark.parametrize("kind,shape,kw", BN_CASES[:3] + BN_CASES[4:5])
def test_batch_norm_running_stats_after_10_sgd_steps_match_torch(backend, kind, shape, kw):
    """Running statistics updated inside one compiled train step (forward, loss, SGD), 10
    steps, then eval-mode predictions: all as in PyTorch."""
    torch.manual_seed(0)
    bn, tbn = _bn_pair(kind, shape[1], kw)
    flat = math.prod(shape[1:])
    model = nn.Sequential(bn, nn.Flatten(), nn.Linear(flat, 3))
    tm = torch.nn.Sequential(tbn, torch.nn.Flatten(), torch.nn.Linear(flat, 3))
    model.load_state_dict(torch_sd(tm))
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)

    @lm.compile(backend=backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    rng = np.random.default_rng(0)
    for _ in range(10):
        x = randn(shape, int(rng.integers(1 << 30)), 2.0, 0.5)
        y = rng.integers(0, 3, shape[0])
        loss = train_step(x, y)
        topt.zero_grad()
        tl = torch.nn.functional.cross_entropy(tm(torch.tensor(x)), torch.tensor(y))
        tl.backward()
        topt.step()
        assert_close(loss, tl.item(), rtol=1e-5)
    assert len(train_step.variants) == 1
    want = torch_sd(tm)
    got = model.state_dict()
    assert int(got["layers.0.num_batches_tracked"]) == 10
    for k, v in want.items():
        key = k if k in got else torch_names_to_lamina(model, k)
        g = got[key] if key in got else None
        g = g.T if k.endswith(".weight") and g is not None and g.ndim == 2 else g
        assert_close(g, v, rtol=1e-4, atol=1e-5, err_msg=k)
    model.eval()
    tm.eval()
    x = randn(shape, 99)
    assert_close(lm.compile(model, backend=backend)(x), tm(torch.tensor(x)).detach().numpy(),
                 rtol=1e-4, atol=1e-5)


def torch_names_to_lamina(model, key):
    for lm_path, torch_path, _, _ in torch_names.walk(model):
        if torch_path == key:
            return lm_path
    raise KeyError(key)


def test_batch_norm_errors():
    bn = nn.BatchNorm2d(3)
    with pytest.raises(lm.ShapeError, match=r"BatchNorm2d\(3\).*rank 4"):
        lm.compile(bn)(np.zeros((2, 3, 4), F32))
    with pytest.raises(lm.ShapeError, match="more than 1 value per channel"):
        lm.compile(nn.BatchNorm1d(3))(np.zeros((1, 3), F32))
    bn1 = nn.BatchNorm1d(3).eval()  # eval with one sample is fine (running statistics)
    assert lm.compile(bn1)(np.ones((1, 3), F32)).shape == (1, 3)


def test_batch_norm_eval_and_train_are_two_variants(backend):
    bn = nn.BatchNorm1d(2)
    f = lm.compile(bn, backend=backend)
    x = np.array([[1, 10], [3, 30]], F32)
    f(x)
    assert int(bn.num_batches_tracked.numpy()) == 1
    bn.eval()
    y = f(x)
    assert int(bn.num_batches_tracked.numpy()) == 1, "eval mode updates nothing"
    rm, rv = bn.running_mean.numpy(), bn.running_var.numpy()
    assert_close(y, (x - rm) / np.sqrt(rv + 1e-5))
    bn.train()
    f(x)
    assert int(bn.num_batches_tracked.numpy()) == 2 and len(f.variants) == 2


def test_functional_forms_match_torch(backend):
    tF = torch.nn.functional
    x, w, b = randn((3, 4, 5), 11, 2.0, 1.0), randn((5,), 12), randn((5,), 13)
    ln = lm.compile(lambda x, w, b: nn.functional.layer_norm(x, 5, w, b), backend=backend)
    assert_close(ln(x, w, b), tF.layer_norm(*map(torch.tensor, (x,)), (5,),
                                            torch.tensor(w), torch.tensor(b)).numpy())
    rms = lm.compile(lambda x: nn.functional.rms_norm(x, (4, 5), eps=1e-3), backend=backend)
    assert_close(rms(x), tF.rms_norm(torch.tensor(x), (4, 5), eps=1e-3).numpy())
    gn = lm.compile(lambda x: nn.functional.group_norm(x, 2), backend=backend)
    assert_close(gn(x), tF.group_norm(torch.tensor(x), 2).numpy())
    bn = lm.compile(lambda x: nn.functional.batch_norm(x, None, None, training=True),
                    backend=backend)
    assert_close(bn(x), tF.batch_norm(torch.tensor(x), None, None, training=True).numpy())
    lin = lm.compile(lambda x, w: nn.functional.linear(x, w), backend=backend)
    w2 = randn((3, 5), 14)
    assert_close(lin(x, w2), tF.linear(torch.tensor(x), torch.tensor(w2)).numpy())


def test_functional_forms_check_their_input():
    with pytest.raises(lm.ShapeError, match=r"layer_norm: the input f32\[3,4\] must end with "
                                            r"the normalized shape \[5\]"):
        lm.compile(lambda x: nn.functional.layer_norm(x, 5))(np.zeros((3, 4), F32))
    with pytest.raises(lm.ShapeError, match="divisible by num_groups=3"):
        lm.compile(lambda x: nn.functional.group_norm(x, 3))(np.zeros((2, 4), F32))
    with pytest.raises(lm.ShapeError, match=r"batch_norm: the input 2.0 must be \(N, C"):
        lm.compile(lambda x: nn.functional.batch_norm(2.0, None, None, training=True) + x)(
            np.zeros(1, F32))
    with pytest.raises(lm.LaminaError, match="running statistics updated in training must "
                                             "be Buffers"):
        nn.functional.batch_norm(np.zeros((2, 3), F32), np.zeros(3, F32), np.ones(3, F32),
                                 training=True)
    with pytest.raises(lm.ShapeError, match="the normalized shape"):
        lm.compile(lambda: nn.functional.rms_norm(2.0, 3))()


# --- Embedding --------------------------------------------------------------------------------


@pytest.mark.parametrize("padding_idx", [None, 0, 3, -1])
def test_embedding_matches_torch(backend, padding_idx):
    torch.manual_seed(0)
    tm = torch.nn.Embedding(7, 4, padding_idx=padding_idx)
    model = nn.Embedding(7, 4, padding_idx=padding_idx)
    if padding_idx is not None:
        row = padding_idx % 7
        assert not model.weight.numpy()[row].any(), "the padding row starts at zero"
        assert model.padding_idx == row
    idx = np.array([[0, 3, 6], [3, 1, 6], [0, 0, 2]], np.int64)
    check_against_torch(model, tm, idx, backend, grad_x=False)
    check_against_torch(model, tm, idx.astype(np.int32)[0], backend, grad_x=False)
    row = lm.compile(lambda: model(3) * 1.0, backend=backend)()  # a Python int: one row
    np.testing.assert_array_equal(row, model.weight.numpy()[3])


def test_embedding_init_and_errors():
    lm.random.seed(0)
    w = nn.Embedding(1000, 16).weight.numpy()
    assert w.shape == (1000, 16) and abs(w.mean()) < 0.02 and abs(w.std() - 1) < 0.02
    with pytest.raises(lm.DTypeError, match="indices must be integers"):
        lm.compile(nn.Embedding(4, 2))(np.zeros(3, F32))
    with pytest.raises(lm.LaminaError, match="padding_idx 5 is out of range"):
        nn.Embedding(4, 2, padding_idx=5)


def test_embedding_padding_row_stays_put_in_training(backend):
    emb = nn.Embedding(5, 3, padding_idx=1)
    nn.init.normal_(emb.weight)
    before = emb.weight.numpy()
    opt = optim.SGD(emb.parameters(), lr=0.5)
    step = lm.compile(lambda i: opt.minimize((emb(i) ** 2).sum()), backend=backend)
    step(np.array([1, 2, 1, 4]))
    after = emb.weight.numpy()
    np.testing.assert_array_equal(after[1], before[1])
    assert not np.allclose(after[2], before[2])


# --- triton under the interpreter -------------------------------------------------------------


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
    return "triton"


@pytest.mark.parametrize("make", [
    lambda: (nn.LayerNorm(6), torch.nn.LayerNorm(6), (3, 6)),
    lambda: (nn.GroupNorm(2, 4), torch.nn.GroupNorm(2, 4), (2, 4, 3)),
    lambda: (nn.RMSNorm(5), torch.nn.RMSNorm(5), (3, 5)),
    lambda: (nn.Sequential(nn.Flatten(), nn.Linear(6, 2)),
             torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 2)), (2, 2, 3)),
], ids=["layer_norm", "group_norm", "rms_norm", "flatten_linear"])
def test_layers_on_triton_interpreter(interpreted, make):
    model, tm, shape = make()
    check_against_torch(model, tm, randn(shape, 7, 2.0, 0.5), interpreted)


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
def test_batch_norm_on_triton_interpreter(interpreted, train):
    model, tm = _bn_pair("2d", 3, {})
    check_against_torch(model, tm, randn((2, 3, 2, 2), 8, 2.0, 1.0), interpreted, train=train)
    for k, v in torch_sd(tm).items():
        assert_close(model.state_dict()[k], v, err_msg=k)


def test_embedding_on_triton_interpreter(interpreted):
    tm = torch.nn.Embedding(5, 3, padding_idx=2)
    check_against_torch(nn.Embedding(5, 3, padding_idx=2), tm, np.array([[2, 4], [1, 2]]),
                        interpreted, grad_x=False)
