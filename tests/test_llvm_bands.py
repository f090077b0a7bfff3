"""Loops in row bands (backends/llvm/loops.py, ``row_split``): a scan or fori_loop whose steps
are independent row by row runs as one pool job, each participant taking a band of rows
through every step. A kernel of the body that read a carry (or a step's value) at a row of
another band would read it before that band wrote it, or after it moved on: the tests below
cut the rows into bands of a few rows (more bands than threads, so that one thread runs some
bands to the end before the next starts) and compare with the same program unbanded, bit for
bit, and with numpy."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close
from test_nn_recurrent import _compare, _pair

import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm import codegen, loops

F32 = np.float32
RNG = np.random.default_rng(7)


@pytest.fixture
def banded(monkeypatch):
    """The loops compiled in row bands by the test's compiles (fresh compiles: no cache)."""
    monkeypatch.setenv("LAMINA_CACHE", "0")
    seen: list[str] = []
    real = codegen.Codegen.run_bands

    def spy(self, b, node, *args, **kw):
        seen.append(node.attrs["name"])
        return real(self, b, node, *args, **kw)

    monkeypatch.setattr(codegen.Codegen, "run_bands", spy)
    return seen


def _tiny_bands(monkeypatch, threads: int = 2):
    """Bands of one row each (up to MAX_ROW_BANDS of them) on ``threads`` threads."""
    monkeypatch.setattr(loops, "ROW_BAND", 1)
    monkeypatch.setattr(loops, "MIN_BANDS", loops.MAX_ROW_BANDS)
    monkeypatch.setenv("LAMINA_NUM_THREADS", str(threads))


def _unbanded(monkeypatch):
    monkeypatch.setattr(loops, "ROW_BAND", 0)


def test_an_lstm_runs_both_its_loops_in_row_bands(banded):
    """Batch 32: the forward recurrence and its gradient are each one banded loop, and the
    layer still matches PyTorch (outputs, final states, every gradient)."""
    model, tm = _pair("LSTM", 16, 64)
    x = RNG.standard_normal((5, 32, 16)).astype(F32)
    _compare(model, tm, x, [], "llvm")
    assert len(banded) == 2, banded


@pytest.mark.parametrize("kind", ["LSTM", "GRU", "RNN"])
def test_recurrent_layers_in_one_row_bands_match_torch(kind, banded, monkeypatch):
    _tiny_bands(monkeypatch)
    model, tm = _pair(kind, 6, 16, num_layers=2, bidirectional=kind != "RNN")
    x = RNG.standard_normal((4, 8, 6)).astype(F32)
    _compare(model, tm, x, [], "llvm")
    assert banded


def _lstm_train_step(seed: int):
    T, B, I, H = 6, 32, 8, 16
    rng = np.random.default_rng(seed)
    lstm = nn.LSTM(I, H)
    lstm.load_state_dict({k: rng.standard_normal(np.shape(v)).astype(F32) * 0.3
                          for k, v in lstm.state_dict().items()})
    opt = optim.SGD(lstm.parameters(), lr=0.1)

    @lm.compile(backend="llvm")
    def step(x):
        out, (h, _) = lstm(x)
        loss = (h[-1] * h[-1]).mean() + (out * out).mean()
        opt.minimize(loss)
        return loss

    x = rng.standard_normal((T, B, I)).astype(F32)
    losses = [np.asarray(step(x)) for _ in range(3)]
    return losses, {k: np.array(v) for k, v in lstm.state_dict().items()}


@pytest.mark.parametrize("threads", [1, 2])
def test_bands_change_no_bit_of_a_train_step(threads, banded, monkeypatch):
    """Three SGD steps of an LSTM: banded in bands of 32 rows' default split and in one-row
    bands, on one thread and on two, all bit for bit the unbanded run."""
    monkeypatch.setenv("LAMINA_NUM_THREADS", str(threads))
    _unbanded(monkeypatch)
    want = _lstm_train_step(0)
    assert not banded
    monkeypatch.setattr(loops, "ROW_BAND", 16)
    runs = [_lstm_train_step(0)]
    _tiny_bands(monkeypatch, threads)
    runs.append(_lstm_train_step(0))
    assert len(banded) == 4, banded
    for losses, params in runs:
        for a, b in zip(losses, want[0]):
            np.testing.assert_array_equal(a, b)
        for k, v in params.items():
            np.testing.assert_array_equal(v, want[1][k], err_msg=k)


# Bodies reading the carry ``c`` (8 x 4) at other rows than the one they compute: never banded.
OTHER_ROWS = {
    "shifted": lambda c, w: lm.pad(c[1:], [(0, 1), (0, 0)]) * 0.5,
    "rolled": lambda c, w: lm.concatenate([c[1:], c[:1]], axis=0),
    "column_sum": lambda c, w: c * c.sum(axis=0, keepdims=True) * 0.1,
    "row_broadcast": lambda c, w: lm.broadcast_to(c[2:3], c.shape) + c,
    "left_product": lambda c, w: lm.tanh(w @ c),
    "transposed": lambda c, w: (c.T @ w).T * 0.1 + c,
    "reshaped": lambda c, w: c.reshape(4, 8).T.reshape(8, 4) + c,
}


@pytest.mark.parametrize("name", sorted(OTHER_ROWS))
def test_a_body_reading_other_rows_is_not_banded(name, banded, monkeypatch):
    _tiny_bands(monkeypatch)
    move = OTHER_ROWS[name]
    w8 = (RNG.standard_normal((8, 8)) * 0.3).astype(F32)
    x = RNG.standard_normal((5, 8, 4)).astype(F32)

    def f(x, w):
        def body(c, xt):
            n = lm.tanh(move(c, w) + xt)
            return n, n * 2.0
        return lm.scan(body, lm.zeros((8, 4), F32), x)

    got = lm.compile(f, backend="llvm")(x, w8)
    want = lm.compile(f, backend="numpy")(x, w8)
    assert not banded
    for g, r in zip(got, want):
        assert_close(g, r, atol=1e-5)


def _bodies():
    """Bodies whose steps are independent row by row, reading constants anywhere."""
    def gemm_and_gates(c, xt, w, b):
        g = c @ w + xt[:, :4] + b          # a constant row broadcast over the rows
        return lm.tanh(g) * lm.sigmoid(xt[:, 4:])

    def passes_through(c, xt, w, b):       # a carry yielded as it came in
        return c * 0.9 + xt[:, :4]

    def reads_a_constant_row(c, xt, w, b):
        return lm.tanh(c * w[3:4, :] + xt[:, 4:] + w[:, :1].sum())

    return {"gemm_and_gates": gemm_and_gates, "passes_through": passes_through,
            "reads_a_constant_row": reads_a_constant_row}


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("name", sorted(_bodies()))
def test_row_local_bodies_in_one_row_bands(name, reverse, banded, monkeypatch):
    """Banded in one-row bands, each body's results (carry, per-step outputs, the incoming
    carry saved per step, a constant yielded per step) and gradient equal the unbanded run
    bit for bit and numpy within rounding."""
    step = _bodies()[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 8, 8)).astype(F32)
    w = (rng.standard_normal((4, 4)) * 0.5).astype(F32)
    bias = rng.standard_normal((4,)).astype(F32)
    c0 = rng.standard_normal((8, 4)).astype(F32)
    rows = rng.standard_normal((8, 4)).astype(F32)

    def f(x, w, bias, c0, rows):
        def body(c, xt):
            n = step(c, xt, w, bias)
            return n, (n, c, rows)     # rows: a constant of the carry's shape, yielded

        last, (ys, saved, consts) = lm.scan(body, c0, x, reverse=reverse)

        def loss(w):
            end, _ = lm.scan(lambda c, xt: (step(c, xt, w, bias), None), c0, x,
                             reverse=reverse)
            return (end * end).sum()

        return last, ys, saved, consts, lm.grad(loss)(w)

    args = (x, w, bias, c0, rows)
    want = lm.compile(f, backend="numpy")(*args)
    _unbanded(monkeypatch)
    plain = lm.compile(f, backend="llvm")(*args)
    assert not banded
    _tiny_bands(monkeypatch)
    got = lm.compile(f, backend="llvm")(*args)
    assert banded
    for g, p, r in zip(got, plain, want):
        np.testing.assert_array_equal(g, p)
        assert_close(g, r, atol=1e-5 * max(1.0, float(np.abs(r).max())))


def test_a_fori_loop_with_its_index_and_random_draws(banded, monkeypatch):
    """A sampling loop: the step index and a random draw per step, in one-row bands: the
    same draws and results as unbanded."""
    w = (RNG.standard_normal((8, 8)) * 0.3).astype(F32)

    def f(x0):
        def body(i, x):
            noise = lm.random.normal(x.shape)
            return x - 0.1 * lm.tanh(x @ w) + 0.01 * noise + i.astype("float32") * 1e-3
        return lm.fori_loop(0, 20, body, x0)

    x0 = RNG.standard_normal((16, 8)).astype(F32)
    runs = []
    for configure in (_unbanded, _tiny_bands):
        configure(monkeypatch)
        lm.random.seed(5)
        runs.append(lm.compile(f, backend="llvm")(x0))
    assert banded
    np.testing.assert_array_equal(runs[1], runs[0])
    lm.random.seed(5)
    assert_close(runs[1], lm.compile(f, backend="numpy")(x0), atol=1e-5)


def test_while_loops_and_small_batches_are_not_banded(banded):
    def f(x):
        return lm.while_loop(lambda c: c[0] < 3, lambda c: (c[0] + 1, c[1] * 0.5),
                             (0, x))[1]

    x = RNG.standard_normal((64, 8)).astype(F32)
    assert_close(lm.compile(f, backend="llvm")(x), x / 8)
    model, tm = _pair("LSTM", 4, 8)
    _compare(model, tm, RNG.standard_normal((3, 16, 4)).astype(F32), [], "llvm")
    assert not banded   # 16 rows: one band of ROW_BAND


def test_the_profile_times_a_banded_loop_as_a_whole_and_lists_its_kernels(banded):
    """``f.profile``: the banded loop has its time; its body's kernels follow it, marked as
    timed with it (they never run alone)."""
    w = (RNG.standard_normal((16, 16)) * 0.3).astype(F32)

    @lm.compile(backend="llvm")
    def f(x):
        return lm.scan(lambda c, xt: (lm.tanh(c @ w + xt), None), x[0], x)[0]

    table = f.profile(RNG.standard_normal((10, 32, 16)).astype(F32), repeat=3)
    assert banded
    lines = table.splitlines()
    (at,) = [i for i, line in enumerate(lines) if line.startswith("@")
             and line.split()[1] == "scan"]
    assert float(lines[at].split()[2]) > 0
    inside = [line for line in lines[at + 1:] if line.startswith("  @")]
    assert inside and all("(above)" in line for line in inside), table
    assert any(line.split()[1] == "gemm" for line in inside), table


@pytest.mark.parametrize("budget, bands", [(32 << 20, 8), (1, 2)])
def test_band_arenas_stay_within_the_memory_budget(budget, bands, banded, monkeypatch):
    """Each band has its own copy of the body's arena: 128 rows make 8 bands of 16, unless
    that many copies would pass BAND_MEMORY (two bands are always allowed)."""
    monkeypatch.setattr(loops, "BAND_MEMORY", budget)
    layouts = []
    real = loops.LoopPlanner.layout

    def spy(self, node):
        lay = real(self, node)
        layouts.append(lay)
        return lay

    monkeypatch.setattr(loops.LoopPlanner, "layout", spy)
    x = RNG.standard_normal((4, 128, 8)).astype(F32)
    f = lambda x: lm.scan(lambda c, xt: (lm.tanh(c + xt), c * 2.0), x[0], x)
    got = lm.compile(f, backend="llvm")(x)
    want = lm.compile(f, backend="numpy")(x)
    assert banded and {lay.bands for lay in layouts} == {bands}
    for g, w in zip(got, want):
        assert_close(g, w, atol=1e-6)
