"""Calling compiled functions from several threads: every result right, state updated in some
serial order of the calls, a new variant compiled once.

Races need threads to switch often to show up: the tests lower Python's switch interval and
start their threads together (a barrier), so that without the locks they fail on most runs.
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest

import lamina as lm
from lamina import nn, optim
from lamina.runtime.executable import state_lock


@pytest.fixture(autouse=True)
def _switch_often():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)
    yield
    sys.setswitchinterval(old)


def _run_threads(n: int, work) -> list:
    """Run ``work(i)`` in ``n`` threads started together; re-raise the first exception."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    errors: list = []

    def run(i):
        try:
            barrier.wait()
            results[i] = work(i)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


# --- one function, four threads ---------------------------------------------------------------


def test_one_function_from_four_threads_gives_every_result_right(backend):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 48)).astype(np.float32)
    f = lm.compile(lambda x, w: lm.tanh(x @ w) * 2.0 + x.sum(axis=1, keepdims=True),
                   backend=backend)
    f(np.zeros((64, 32), np.float32), w)

    def work(t):
        r = np.random.default_rng(100 + t)
        kept, wrong = [], 0
        for _ in range(100):
            x = r.standard_normal((64, 32)).astype(np.float32)
            y = f(x, w)
            want = np.tanh(x @ w) * 2.0 + x.sum(axis=1, keepdims=True)
            wrong += not np.allclose(y, want, rtol=1e-4, atol=1e-4)
            kept.append((x, y))
        # results handed out earlier must not have been overwritten by later calls
        wrong += sum(not np.allclose(y, np.tanh(x @ w) * 2.0 + x.sum(axis=1, keepdims=True),
                                     rtol=1e-4, atol=1e-4) for x, y in kept)
        return wrong

    wrong = _run_threads(4, work)
    assert sum(wrong) == 0, f"wrong results per thread: {wrong} (of 200 checks each)"


def test_loaded_artifact_from_four_threads(tmp_path):
    w = np.random.default_rng(1).standard_normal((16, 16)).astype(np.float32)
    f = lm.compile(lambda x: lm.relu(x @ w) + 1.0)
    f(np.zeros((32, 16), np.float32))
    f.save(tmp_path / "f.lamina")
    loaded = lm.load(tmp_path / "f.lamina")

    def work(t):
        r = np.random.default_rng(t)
        wrong = 0
        for _ in range(100):
            x = r.standard_normal((32, 16)).astype(np.float32)
            wrong += not np.allclose(loaded(x), np.maximum(x @ w, 0) + 1, rtol=1e-5,
                                     atol=1e-5)
        return wrong

    assert sum(_run_threads(4, work)) == 0


# --- training from several threads ---------------------------------------------------------


class MLP(nn.Module):
    def __init__(self):
        self.fc1, self.fc2 = nn.Linear(16, 32), nn.Linear(32, 4)

    def __call__(self, x):
        return self.fc2(lm.relu(self.fc1(x)))


def _setup(backend, seed=0):
    lm.random.seed(seed)
    model = MLP()
    opt = optim.SGD(model.parameters(), lr=0.1)

    @lm.compile(backend=backend)
    def train_step(x, y):
        loss = nn.functional.cross_entropy(model(x), y)
        opt.minimize(loss)
        return loss

    predict = lm.compile(lambda x: model(x), backend=backend)
    return model, train_step, predict


def _batch():
    rng = np.random.default_rng(7)
    return rng.standard_normal((64, 16)).astype(np.float32), rng.integers(0, 4, 64)


def test_training_step_from_two_threads_matches_the_serial_run(backend):
    # Plain SGD on a fixed batch: every step is the same deterministic function of the state,
    # so 2N steps in any serial order end in one state: that of 2N steps in a row.
    n = 40
    x, y = _batch()
    model, step, _ = _setup(backend)
    step(x, y)  # compile before the threads start
    losses = _run_threads(2, lambda t: [float(step(x, y)) for _ in range(n)])

    ref, ref_step, _ = _setup(backend)
    ref_losses = [float(ref_step(x, y)) for _ in range(2 * n + 1)]
    for name, value in ref.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
    # each call saw the state of one position in that order, and no two saw the same one
    assert sorted(losses[0] + losses[1]) == sorted(ref_losses[1:])


def test_training_and_prediction_from_two_threads_never_see_a_half_updated_model(backend):
    # train_step and predict share the model's parameters: a prediction made while a step
    # runs must see the parameters of before or after that step, never a mix.
    n = 40
    x, y = _batch()
    model, step, predict = _setup(backend)
    step(x, y)
    predict(x)

    def work(t):
        if t == 0:
            return [step(x, y) for _ in range(n)]
        return [predict(x) for _ in range(3 * n)]

    _, predictions = _run_threads(2, work)

    ref, ref_step, ref_predict = _setup(backend)
    ref_step(x, y)
    serial = [ref_predict(x)]
    for _ in range(n):
        ref_step(x, y)
        serial.append(ref_predict(x))
    for name, value in ref.state_dict().items():
        np.testing.assert_array_equal(model.state_dict()[name], value, err_msg=name)
    seen = []
    for p in predictions:
        matches = [k for k, s in enumerate(serial) if np.array_equal(p, s)]
        assert matches, "a prediction matches the model after no number of steps"
        seen.append(matches[0])
    assert seen == sorted(seen), "predictions went back in time"


def test_two_functions_updating_one_parameter_lose_no_update():
    # Two different compiled steps move one parameter by a fixed amount each (the gradient
    # of (p * c).sum() is c whatever p is), so every order ends at the same, exact place; a
    # step that read p while the other was writing it would lose an update.
    p = nn.Parameter(np.zeros(1 << 16, np.float32), "p")
    opt = optim.SGD([p], lr=1.0)
    ones, twos = np.ones(1 << 16, np.float32), np.full(1 << 16, 2.0, np.float32)

    @lm.compile
    def step_a(c):
        opt.minimize((p * c).sum())
        return p.sum()

    @lm.compile
    def step_b(c):
        opt.minimize((p * c).sum())
        return p.sum()

    step_a(ones), step_b(twos)
    n = 100
    _run_threads(2, lambda t: [(step_a(ones) if t == 0 else step_b(twos)) for _ in range(n)])
    np.testing.assert_array_equal(p.numpy(), np.full(1 << 16, -3.0 * (n + 1), np.float32))


def test_state_locks_merge_when_a_function_joins_two_sets():
    a, b, c = (lm.nn.Parameter(np.zeros(2, np.float32), name) for name in "abc")
    la, lb, lc = state_lock([a]), state_lock([b]), state_lock([c])
    assert la.root() is not lb.root()
    both = state_lock([a, b])
    assert la.root() is lb.root() is both.root()
    assert lc.root() is not both.root(), "unrelated state keeps its own lock"
    # a call waiting on a merged set's old lock ends up holding the merged one
    lock = la.acquire()
    try:
        assert lock is both.root().lock
    finally:
        lock.release()


def test_merging_waits_for_a_call_in_flight_on_the_set_it_links_away():
    a, b = lm.nn.Parameter(np.zeros(2, np.float32), "a"), lm.nn.Parameter(np.zeros(2), "b")
    la, lb = state_lock([a]), state_lock([b])
    held = lb.acquire()  # a call over b is running
    merged = threading.Event()
    t = threading.Thread(target=lambda: (state_lock([a, b]), merged.set()))
    t.start()
    time.sleep(0.05)
    assert not merged.is_set(), "b's set must not be linked into a's while a call holds it"
    held.release()
    t.join(5)
    assert merged.is_set() and lb.root() is la.root()


# --- compiling from several threads ---------------------------------------------------------


def test_a_new_signature_asked_for_by_four_threads_compiles_once(backend):
    traces = []

    def fn(x):
        traces.append(x.shape)
        time.sleep(0.05)  # a slow trace: the other threads arrive while it runs
        return lm.exp(x) + 1.0

    f = lm.compile(fn, backend=backend)
    x = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    results = _run_threads(4, lambda t: f(x))
    assert traces == [(3, 4)], f"traced {len(traces)} times"
    assert len(f.variants) == 1 and len(f.compile_log) == 1
    for r in results:
        np.testing.assert_allclose(r, np.exp(x) + 1.0, rtol=1e-6)


def test_different_functions_compile_from_four_threads_at_once(backend):
    fs = [lm.compile(lambda x, k=k: lm.tanh(x) * float(k + 1), backend=backend)
          for k in range(4)]
    x = np.linspace(-1, 1, 8, dtype=np.float32)
    results = _run_threads(4, lambda t: fs[t](x))
    for k, r in enumerate(results):
        np.testing.assert_allclose(r, np.tanh(x) * (k + 1), rtol=1e-5, atol=1e-6)
