"""RNN, LSTM, GRU and their cells against PyTorch (a test-only oracle): the torch module's
``state_dict`` loaded by name, the same input (and initial state), then the outputs, the final
states and the gradients of a random weighted sum of all of them with respect to the input,
the initial states and every parameter, on numpy and llvm (and triton under the interpreter
for one configuration per layer)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina import nn
from lamina.backends import runnable
from lamina.frontend.trace import current

torch = pytest.importorskip("torch")
RNG = np.random.default_rng(5)
F32 = np.float32


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")


def _pair(kind, *args, **kw):
    torch.manual_seed(0)
    tm = getattr(torch.nn, kind)(*args, **kw).double() if kw.pop("_double", False) else \
        getattr(torch.nn, kind)(*args, **kw)
    model = getattr(nn, kind)(*args, **kw)
    model.load_state_dict({k: v.detach().numpy().copy() for k, v in tm.state_dict().items()})
    return model, tm


def _flat(out):
    if isinstance(out, (tuple, list)):
        return [y for x in out for y in _flat(x)]
    return [out]


def _compare(model, tm, x, states, backend):
    """Outputs and all gradients of sum_k (result_k * r_k) against PyTorch."""
    tx = torch.tensor(x, requires_grad=True)
    tstates = [torch.tensor(s, requires_grad=True) for s in states]
    thx = None if not states else (tuple(tstates) if len(states) == 2 else tstates[0])
    tout = _flat(tm(tx, thx) if thx is not None else tm(tx))
    rs = [RNG.standard_normal(tuple(t.shape)).astype(F32) for t in tout]
    sum(((t * torch.tensor(r)).sum() for t, r in zip(tout, rs))).backward()
    names = [k for k, _ in tm.named_parameters()]
    want_grads = [tx.grad.numpy()] + [t.grad.numpy() for t in tstates] + \
        [dict(tm.named_parameters())[k].grad.numpy() for k in names]
    params = [getattr(model, k) for k in names]

    nr = len(rs)

    def f(x, *rest):
        rs, states = rest[:nr], rest[nr:]
        b = current().builder
        hx = None if not states else (tuple(states) if len(states) == 2 else states[0])
        outs = _flat(model(x, hx) if hx is not None else model(x))
        loss = b.var(b.lift(sum(((o * r).sum() for o, r in zip(outs, rs)), 0.0)))
        wrt = [x, *states] + [current().read(p) for p in params]
        return outs, [b.call("grad", loss, w) for w in wrt]

    outs, grads = lm.compile(f, backend=backend)(x, *rs, *states)
    assert len(outs) == len(tout)
    for o, t in zip(outs, tout):
        want = t.detach().numpy()
        assert o.shape == want.shape
        assert_close(o, want, atol=3e-6 * max(1.0, np.abs(want).max()))
    for g, w, what in zip(grads, want_grads, ["input"] + ["state"] * len(states) + names):
        assert_close(g, w, atol=3e-6 * max(1.0, np.abs(w).max()), err_msg=what)


CONFIGS = [
    ("LSTM", dict(num_layers=1)),
    ("LSTM", dict(num_layers=2, bidirectional=True)),
    ("LSTM", dict(num_layers=2, batch_first=True, bias=False)),
    ("GRU", dict(num_layers=1)),
    ("GRU", dict(num_layers=2, bidirectional=True, batch_first=True)),
    ("RNN", dict(num_layers=2)),
    ("RNN", dict(nonlinearity="relu", bidirectional=True)),
]


@pytest.mark.parametrize("kind,kw", CONFIGS, ids=[f"{k}-{i}" for i, (k, _) in enumerate(CONFIGS)])
@pytest.mark.parametrize("with_state", [False, True])
def test_layers_match_torch(kind, kw, with_state, backend):
    model, tm = _pair(kind, 5, 7, **kw)
    T, B = 4, 3
    x = RNG.standard_normal((B, T, 5) if kw.get("batch_first") else (T, B, 5)).astype(F32)
    D = 2 if kw.get("bidirectional") else 1
    L = kw.get("num_layers", 1)
    states = []
    if with_state:
        states = [RNG.standard_normal((L * D, B, 7)).astype(F32)
                  for _ in range(2 if kind == "LSTM" else 1)]
    _compare(model, tm, x, states, backend)


def test_unbatched_input_matches_torch():
    model, tm = _pair("LSTM", 5, 7, num_layers=2)
    _compare(model, tm, RNG.standard_normal((4, 5)).astype(F32), [], "llvm")


@pytest.mark.skipif("triton" not in runnable(), reason="needs triton (and torch)")
@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_layers_on_triton_under_the_interpreter(kind):
    model, tm = _pair(kind, 3, 4)
    _compare(model, tm, RNG.standard_normal((3, 2, 3)).astype(F32), [], "triton")


@pytest.mark.parametrize("kind", ["LSTMCell", "GRUCell", "RNNCell"])
def test_cells_match_torch(kind, backend):
    model, tm = _pair(kind, 5, 7)
    x = RNG.standard_normal((3, 5)).astype(F32)
    states = [RNG.standard_normal((3, 7)).astype(F32)
              for _ in range(2 if kind == "LSTMCell" else 1)]
    _compare(model, tm, x, states, backend)


def test_parameter_names_shapes_and_init_follow_torch():
    lstm = nn.LSTM(10, 20, num_layers=2, bidirectional=True)
    t = torch.nn.LSTM(10, 20, num_layers=2, bidirectional=True)
    mine = {k: v.shape for k, v in lstm.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in t.state_dict().items()}
    assert mine == theirs
    bound = 1 / np.sqrt(20)
    for v in lstm.state_dict().values():
        assert np.abs(v).max() <= bound and np.abs(v).max() > 0.8 * bound
    assert "LSTM(10, 20, num_layers=2, bidirectional=True)" in repr(lstm)


def test_one_scan_per_layer_and_direction_whatever_the_length():
    lstm = nn.LSTM(4, 8, num_layers=2, bidirectional=True)
    for T in (5, 200):
        g = lm.trace(lambda x: lstm(x)[0], np.zeros((T, 2, 4), F32))
        ops = [n.op for n in g.nodes]
        assert ops.count("scan") == 4 and "sigmoid" not in ops


def test_dropout_between_layers_only_in_training():
    lm.random.seed(0)
    gru = nn.GRU(4, 6, num_layers=3, dropout=0.5)
    x = RNG.standard_normal((5, 2, 4)).astype(F32)
    f = lm.compile(lambda x: gru(x)[0])
    a, b = f(x), f(x)
    assert not np.array_equal(a, b)  # fresh masks each call
    gru.eval()
    c, d = f(x), f(x)
    np.testing.assert_array_equal(c, d)


def test_bad_shapes_are_clear_errors():
    lstm = nn.LSTM(4, 8)
    with pytest.raises(lm.ShapeError, match="input_size=4"):
        lm.compile(lambda x: lstm(x)[0])(np.zeros((3, 2, 5), F32))
    with pytest.raises(lm.ShapeError, match="h_0 must have shape"):
        lm.compile(lambda x, h: lstm(x, (h, h))[0])(np.zeros((3, 2, 4), F32),
                                                     np.zeros((2, 8), F32))
    with pytest.raises(lm.LaminaError, match="nonlinearity"):
        nn.RNN(4, 8, nonlinearity="gelu")
