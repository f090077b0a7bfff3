"""Row groups (backends/llvm/rowgroups.py): runs of small kernels computed row band by row band
on the thread pool. A member may read what earlier members wrote only at its own rows; the tests
below force groups everywhere, in one-row chunks, so that a member wrongly admitted (reading a
row of another chunk) reads that row before it is written, on one thread as on many."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close
from test_fuse import random_graph
from test_nn_recurrent import _compare, _pair

import lamina as lm
from lamina.backends.llvm import loops, rowgroups
from lamina.backends.llvm.llvm_backend import backend as llvm_backend
from lamina.ir import interpret
from lamina.passes.fuse import fuse_kernels

F32 = np.float32


@pytest.fixture
def groups(monkeypatch):
    """The row groups formed by the compiles of the test (fresh compiles: no cache)."""
    monkeypatch.setenv("LAMINA_CACHE", "0")
    seen: list[rowgroups.RowGroup] = []
    real = rowgroups.plan_steps

    def spy(*args, **kw):
        steps = real(*args, **kw)
        seen.extend(s for s, _ in steps if isinstance(s, rowgroups.RowGroup))
        return steps

    monkeypatch.setattr(rowgroups, "plan_steps", spy)
    return seen


@pytest.fixture
def everywhere(monkeypatch, groups):
    """Every run of at least two kernels grouped, in chunks of one row."""
    monkeypatch.setattr(rowgroups, "GROUP_MIN_WORK", 0)
    monkeypatch.setattr(rowgroups, "GROUP_CHUNK_WORK", 1)
    monkeypatch.setattr(rowgroups, "ROW_ALIGN", 1)
    return groups


def members(g: rowgroups.RowGroup) -> list[str]:
    return [n.attrs["name"] for n, _ in g.members]


def test_an_lstm_steps_gate_arithmetic_is_one_group_per_direction(groups, monkeypatch):
    """The LSTM cell's elementwise kernels (its gradient's too) run as one group each, and the
    layer still matches PyTorch (outputs and every gradient). (Loops in row bands run their
    steps' kernels band by band, without groups: not here.)"""
    monkeypatch.setattr(loops, "ROW_BAND", 0)
    model, tm = _pair("LSTM", 16, 128)
    x = np.random.default_rng(0).standard_normal((3, 32, 16)).astype(F32)
    _compare(model, tm, x, [], "llvm")
    sizes = sorted(len(g.members) for g in groups)
    assert sizes and sizes[-1] >= 6, sizes   # forward: activations, c, tanh(c), h
    assert len(sizes) >= 2, sizes            # and the backward step's


def _chain(second):
    """x -> a = sigmoid(x) -> b = second(a) -> c = a * b + 1: three kernels (each result is an
    output), the second reading the first through ``second``."""
    def f(x):
        a = lm.sigmoid(x)
        b = lm.tanh(second(a))
        return a, b, a * b + 1.0
    return f


MOVES = {
    "transpose": lambda a: a.T,
    "rows_rotated": lambda a: lm.concatenate([a[3:], a[:3]], axis=0),
    "row_broadcast": lambda a: lm.broadcast_to(a[2:3], a.shape),
    "rows_shifted": lambda a: lm.pad(a[1:], [(0, 1), (0, 0)]),
    "reshaped": lambda a: a.reshape(8, 8).reshape(8, 8).T.reshape(8, 8),
    "column_sum": lambda a: a * a.sum(axis=0),
}


@pytest.mark.parametrize("move", sorted(MOVES))
def test_a_kernel_reading_other_rows_starts_a_new_group(move, everywhere):
    f = lm.compile(_chain(MOVES[move]), backend="llvm")
    ref = lm.compile(_chain(MOVES[move]), backend="numpy")
    rng = np.random.default_rng(1)
    for _ in range(3):  # new inputs each call: a stale row from the last call would differ
        x = rng.standard_normal((8, 8)).astype(F32)
        for got, want in zip(f(x), ref(x)):
            assert_close(got, want)
    for g in everywhere:  # b's kernel (tanh) never shares a group with a's (sigmoid)
        names = members(g)
        assert not (any("sigmoid" in n for n in names) and any("tanh" in n for n in names)), \
            names


def test_row_local_reads_share_a_group(everywhere):
    """Slices along other axes, transposes keeping rows first, concatenation of columns and
    row-preserving reshapes keep the group going (and compute the right thing)."""
    def f(x):
        a = lm.sigmoid(x)                                   # [8, 6, 4]
        b = lm.tanh(a[:, 1:5, :]) * 2.0                     # slice of columns
        c = lm.concatenate([b, a[:, :2, :]], axis=1) + 1.0  # [8, 6, 4]
        d = c.transpose(0, 2, 1).reshape(8, 24) * 3.0       # rows stay first
        return a, b, c, d

    x = np.random.default_rng(2).standard_normal((8, 6, 4)).astype(F32)
    got = lm.compile(f, backend="llvm")(x)
    for a, b in zip(got, lm.compile(f, backend="numpy")(x)):
        assert_close(a, b)
    assert any(len(g.members) >= 3 for g in everywhere), [members(g) for g in everywhere]


@pytest.mark.parametrize("chunk", range(2))
def test_random_graphs_grouped_everywhere_match_the_interpreter(chunk, everywhere):
    for seed in range(chunk * 16, chunk * 16 + 16):
        g = fuse_kernels(random_graph(seed, with_state=seed % 2 == 1))
        program = llvm_backend.compile(g)
        r = np.random.default_rng(seed)
        for call in range(2):
            inputs = [r.standard_normal(p.type.shape).astype(F32) for p in g.inputs]
            state0 = {p.name: r.standard_normal(p.type.shape).astype(F32) for p in g.state}
            want_out, want_up = interpret(g, inputs, state0)
            state = {k: v.copy() for k, v in state0.items()}
            outs, _ = program(inputs, state)
            for k, (a, b) in enumerate(zip(outs, want_out)):
                assert_close(a, b, err_msg=f"seed {seed}, call {call}, output {k}")
            for name, v in want_up.items():
                assert_close(state[name], v, err_msg=f"seed {seed}, call {call}, state {name}")
    assert everywhere  # some of these graphs did form groups


def test_results_do_not_depend_on_the_thread_count(monkeypatch, groups):
    """The same bits on one thread and on two (chunks are cut by size, not by threads)."""
    def f(x, h):
        g = x @ h
        i, o = lm.sigmoid(g[:, :128]), lm.sigmoid(g[:, 128:])
        c = i * lm.tanh(o)
        return i, o, c, o * lm.tanh(c)

    rng = np.random.default_rng(3)
    x = rng.standard_normal((32, 64)).astype(F32)
    h = rng.standard_normal((64, 256)).astype(F32)
    results = []
    for threads in ("1", "2"):
        monkeypatch.setenv("LAMINA_NUM_THREADS", threads)
        results.append(lm.compile(f, backend="llvm")(x, h))
    assert groups
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


# --- the storage rules, on plans made up for the purpose --------------------------------------


class _Plan:
    """The parts of a MemoryPlan that plan_steps reads."""

    def __init__(self, location):
        self.location, self.scratch = location, {}


def _kernels(f, *args):
    """The fused kernels of ``f`` with the KernelFn the code generator would report."""
    import math

    from lamina.backends.llvm.kernels import KernelFn, classify

    c = lm.compile(f, backend="llvm")
    c(*args)
    out = []
    for n in c._last.graph.nodes:
        if n.op == "kernel":
            kind, size = classify(n), math.prod(n.shape)
            out.append((n, KernelFn(n.attrs["name"], kind, size if kind == "flat" else n.shape[0],
                                    size)))
    return c._last.graph, out


def _plan_of(graph, where):
    from lamina.passes.memory import Location

    loc = {p: Location("input", i, nbytes=p.type.nbytes) for i, p in enumerate(graph.inputs)}
    for n, spec in where.items():
        kind, at = spec
        loc[n] = (Location("arena", offset=at, nbytes=n.type.nbytes) if kind == "arena" else
                  Location(kind, at, nbytes=n.type.nbytes))
    return _Plan(loc)


def _grouping(steps, plan):
    from lamina.passes.memory import RISKY

    return [[m.attrs["name"] for m, _ in s.members] if isinstance(s, rowgroups.RowGroup)
            else s.attrs["name"] for s, _ in rowgroups.plan_steps(steps, plan, RISKY, 1 << 30)]


def test_a_member_never_writes_what_another_reads_or_wrote(monkeypatch):
    monkeypatch.setattr(rowgroups, "GROUP_MIN_WORK", 0)
    x = np.ones((8, 8), F32)
    def chain(x):
        a = lm.sigmoid(x)
        b = lm.tanh(a)
        return a, b, a * b * 3.0

    g, steps = _kernels(chain, x)
    (ka, _), (kb, _), (kc, _) = steps
    apart = _plan_of(g, {ka: ("arena", 0), kb: ("arena", 256), kc: ("arena", 512)})
    assert _grouping(steps, apart) == [[ka.attrs["name"], kb.attrs["name"], kc.attrs["name"]]]
    # c reusing a's buffer (rows of one chunk would overwrite rows another still reads)
    reuse = _plan_of(g, {ka: ("arena", 0), kb: ("arena", 256), kc: ("arena", 128)})
    assert _grouping(steps, reuse) == [[ka.attrs["name"], kb.attrs["name"]], kc.attrs["name"]]


def test_in_place_updates_and_slots_read_at_other_rows(monkeypatch):
    monkeypatch.setattr(rowgroups, "GROUP_MIN_WORK", 0)
    x, y = np.ones((8, 8), F32), np.ones((8, 8), F32)
    # b = x * 2 + a written over x (read at its own rows, by b alone): allowed
    def update(x, y):
        a = lm.sigmoid(y)
        return a, x * 2.0 + a

    g, steps = _kernels(update, x, y)
    (ka, _), (kb, _) = steps
    over_x = _plan_of(g, {ka: ("arena", 0), kb: ("input", 0)})
    assert _grouping(steps, over_x) == [[ka.attrs["name"], kb.attrs["name"]]]
    over_y = _plan_of(g, {ka: ("arena", 0), kb: ("input", 1)})  # a still reads y
    assert _grouping(steps, over_y) == [ka.attrs["name"], kb.attrs["name"]]
    # a reads slot y at other rows (a transpose): no member may write a slot (one array can
    # be two slots), but arena results are fine
    def moved(y):
        a = lm.sigmoid(y.T)
        return a, lm.tanh(a)

    g, steps = _kernels(moved, y)
    (ka, _), (kb, _) = steps
    names = [ka.attrs["name"], kb.attrs["name"]]
    assert _grouping(steps, _plan_of(g, {ka: ("arena", 0), kb: ("arena", 256)})) == [names]
    assert _grouping(steps, _plan_of(g, {ka: ("arena", 0), kb: ("output", 0)})) == names
