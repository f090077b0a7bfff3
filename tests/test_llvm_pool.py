"""The CPU backend's thread pool (backends/llvm/pool.py) and the code that runs on it.

Directly: every chunk runs exactly once, on a slot below the thread count, for many chunk and
thread counts (none, one, more chunks than a job may have); jobs submitted from two Python
threads at once, and jobs submitted from inside a chunk, all complete. Through compiled
functions: results with 1, 2, 3 and 8 threads (LAMINA_NUM_THREADS, fresh processes) are
identical bit for bit (chunk boundaries do not depend on the thread count); two Python threads
calling two different functions at once get exact results; a forked child runs a compiled
function with a pool of its own. No timing here: speed lives in benchmarks/ (contention.py).
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("llvmlite")

import lamina as lm
from lamina.backends.llvm import gemm, jit, pool

# Chunk functions in LLVM IR (opaque pointers), C-callable as void f(ptr data, i64 c, i64 slot):
#   mark:   data = {counts: i32*, slots: i64*}; counts[c] += 1 (atomically), slots[c] = slot,
#           after a little busy work so that chunks overlap across threads
#   nested: data = {inner: ptr (a mark context), m: i64}; submits a job of m chunks of `mark`
#           to the pool from inside this chunk (the pool is busy: it must run it here)
_CHUNKS = """
define void @mark(ptr %data, i64 %c, i64 %slot) {
entry:
  %counts = load ptr, ptr %data
  %p1 = getelementptr ptr, ptr %data, i64 1
  %slots = load ptr, ptr %p1
  br label %spin
spin:
  %i = phi i64 [ 0, %entry ], [ %i1, %spin ]
  %i1 = add i64 %i, 1
  call void asm sideeffect "", ""()
  %more = icmp slt i64 %i1, 200
  br i1 %more, label %spin, label %done
done:
  %pc = getelementptr i32, ptr %counts, i64 %c
  %old = atomicrmw add ptr %pc, i32 1 seq_cst
  %ps = getelementptr i64, ptr %slots, i64 %c
  store i64 %slot, ptr %ps
  ret void
}

declare void @{run}(ptr, ptr, i64, i32)

define void @nested(ptr %data, i64 %c, i64 %slot) {
entry:
  %pi = getelementptr ptr, ptr %data, i64 0
  %inner = load ptr, ptr %pi
  %pm = getelementptr i64, ptr %data, i64 1
  %m = load i64, ptr %pm
  %ctx = getelementptr [2 x ptr], ptr %inner, i64 %c
  call void @{run}(ptr @mark, ptr %ctx, i64 %m, i32 4)
  ret void
}
"""


@pytest.fixture(scope="module")
def chunks():
    """Addresses of the test chunk functions (the engine registers the pool's symbols first)."""
    text = f'target triple = "{jit.host().triple}"\n' + _CHUNKS.replace("{run}", pool.RUN)
    eng = jit.Engine(jit.optimize(text).module)
    gemm._KEEP_ALIVE.append(eng)  # see the note there: freeing an Engine breaks later compiles
    return {n: eng.address(n) for n in ("mark", "nested")}


class Marks:
    """A `mark` context over n chunks: counts (int32) and slots (int64) per chunk."""

    def __init__(self, n: int):
        self.counts = np.zeros(max(n, 1), np.int32)
        self.slots = np.full(max(n, 1), -1, np.int64)
        self.ctx = np.array([self.counts.ctypes.data, self.slots.ctypes.data], np.uint64)

    @property
    def data(self) -> int:
        return self.ctx.ctypes.data


@pytest.mark.parametrize("nthreads", [1, 2, 3, 8])
@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 64, 1000, pool.MAX_CHUNKS, pool.MAX_CHUNKS + 1])
def test_every_chunk_runs_exactly_once(chunks, n, nthreads):
    lib = pool.library()
    marks = Marks(n)
    for _ in range(3):  # again: later jobs of the same pool (generations) stay exact
        marks.counts[:] = 0
        lib.run(chunks["mark"], marks.data, n, nthreads)
        np.testing.assert_array_equal(marks.counts[:n], 1)
        assert (marks.slots[:n] >= 0).all() and (marks.slots[:n] < max(nthreads, 1)).all()
    if n > pool.MAX_CHUNKS or nthreads == 1:
        assert (marks.slots[:n] == 0).all()  # run on the submitting thread alone


def test_info_counts_workers_and_jobs(chunks):
    lib = pool.library()
    before = lib.info()
    marks = Marks(16)
    lib.run(chunks["mark"], marks.data, 16, 3)
    after = lib.info()
    assert after["pid"] == os.getpid()
    assert after["workers"] >= 2
    assert after["jobs"] + after["alone"] == before["jobs"] + before["alone"] + 1


def test_two_submitters_at_once(chunks):
    """Jobs from two Python threads (ctypes releases the GIL): each job is shared or, when the
    pool is busy with the other's, run by its submitter alone; either way exact."""
    lib = pool.library()
    before = lib.info()
    rounds, n = 200, 37
    errors = []
    start = threading.Barrier(2)

    def submit(k):
        marks = Marks(n)
        try:
            start.wait()
            for _ in range(rounds):
                marks.counts[:] = 0
                lib.run(chunks["mark"], marks.data, n, 4)
                if not (marks.counts[:n] == 1).all():
                    errors.append((k, marks.counts.tolist()))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=submit, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a submitter hangs"
    assert not errors, errors[:2]
    after = lib.info()
    assert after["jobs"] + after["alone"] == before["jobs"] + before["alone"] + 2 * rounds


@pytest.mark.parametrize("nthreads", [2, 8])
def test_job_submitted_from_a_chunk_runs_there(chunks, nthreads):
    outer, m = 12, 9
    inner = [Marks(m) for _ in range(outer)]
    ctxs = np.array([[mk.counts.ctypes.data, mk.slots.ctypes.data] for mk in inner], np.uint64)
    data = np.array([ctxs.ctypes.data, m], np.uint64)
    pool.library().run(chunks["nested"], data.ctypes.data, outer, nthreads)
    for mk in inner:
        np.testing.assert_array_equal(mk.counts[:m], 1)


# --- compiled functions ------------------------------------------------------------------------

WORKER = r'''
import json, sys
import numpy as np
import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm import jit, pool

out = sys.argv[1]
rng = np.random.default_rng(3)
arrays = {}
x = rng.standard_normal((1001, 333)).astype(np.float32)  # extents not divisible by chunks
arrays["softmax"] = lm.compile(lambda x: lm.softmax(x, axis=-1))(x)
arrays["flat"] = lm.compile(lambda x: lm.tanh(x * 1.5 + 0.25) * x)(x)
arrays["column_sum"] = lm.compile(lambda x: x - x.sum(axis=0, keepdims=True))(x)
arrays["empty"] = lm.compile(lambda x: lm.exp(x) * 2.0)(np.ones((0, 4096), np.float32))
w = rng.standard_normal((333, 517)).astype(np.float32)
b = rng.standard_normal(517).astype(np.float32)
arrays["matmul_bias_relu"] = lm.compile(lambda x, w, b: lm.relu(x @ w + b))(x, w, b)
a3 = rng.standard_normal((6, 70, 90)).astype(np.float32)
b3 = rng.standard_normal((6, 90, 50)).astype(np.float32)
arrays["batched"] = lm.compile(lambda p, q: p @ q)(a3, b3)
lm.random.seed(11)
layers = [nn.Linear(p, q) for p, q in ((784, 256), (256, 256), (256, 10))]
opt = optim.SGD([t for l in layers for t in (l.w, l.b)], lr=0.05)

def step(x, y):
    h = x
    for l in layers[:-1]:
        h = lm.relu(l(h))
    loss = nn.functional.cross_entropy(layers[-1](h), y)
    opt.minimize(loss)
    return loss

s = lm.compile(step)
X = rng.standard_normal((96, 784)).astype(np.float32)
Y = rng.integers(0, 10, 96).astype(np.int64)
arrays["loss1"], arrays["loss2"] = s(X, Y), s(X, Y)
for k, v in s.lower(X, Y).state_dict().items():
    arrays["param." + k] = v
np.savez(out + ".npz", **{k: np.asarray(v) for k, v in arrays.items()})
info = pool.library().info()
json.dump({"threads": jit.threads(), "workers": info["workers"]}, open(out + ".json", "w"))
'''


@pytest.fixture(scope="module")
def by_threads(tmp_path_factory):
    """The worker's arrays with LAMINA_NUM_THREADS = 1, 2, 3, 8, each in a fresh process."""
    tmp = tmp_path_factory.mktemp("pool")
    runs = {}
    for n in (1, 2, 3, 8):
        out = str(tmp / f"t{n}")
        env = dict(os.environ, LAMINA_NUM_THREADS=str(n))
        p = subprocess.run([sys.executable, "-c", WORKER, out], env=env, capture_output=True,
                           text=True, timeout=600, check=False)
        assert p.returncode == 0, f"{n} threads: exit {p.returncode}\n{p.stderr[-4000:]}"
        with np.load(out + ".npz") as z:
            arrays = {k: z[k] for k in z.files}
        with open(out + ".json") as fh:
            runs[n] = (arrays, json.load(fh))
    return runs


def test_results_do_not_depend_on_the_thread_count(by_threads):
    ref, _ = by_threads[1]
    assert ref["empty"].shape == (0, 4096)
    for n in (2, 3, 8):
        arrays, meta = by_threads[n]
        assert meta["threads"] == n
        assert meta["workers"] == n - 1  # the pool started what was asked, no more
        assert sorted(arrays) == sorted(ref)
        for k in ref:
            np.testing.assert_array_equal(arrays[k], ref[k], err_msg=f"{k}, {n} threads")


def test_results_are_right(by_threads):
    ref, _ = by_threads[1]
    x = np.random.default_rng(3).standard_normal((1001, 333)).astype(np.float32)
    e = np.exp(x.astype(np.float64) - x.max(axis=1, keepdims=True))
    np.testing.assert_allclose(ref["softmax"], e / e.sum(axis=1, keepdims=True), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(ref["column_sum"], x - x.sum(axis=0, keepdims=True, dtype=np.float64),
                               rtol=1e-4, atol=1e-4)
    assert ref["loss2"] < ref["loss1"]


def test_two_threads_call_two_functions_at_once():
    """Each Python thread calls its own compiled function in a loop; with the pool busy with
    the other's kernels, a submitter runs its chunks itself. Results exact (elementwise ops
    numpy computes identically)."""
    rng = np.random.default_rng(4)
    x = rng.standard_normal((512, 1024)).astype(np.float32)
    fns = [lm.compile(lambda x: x * 2.0 + 1.0),
           lm.compile(lambda x: lm.maximum(x, 0.0) * 3.0 - x)]
    want = [x * np.float32(2.0) + np.float32(1.0),
            np.maximum(x, np.float32(0.0)) * np.float32(3.0) - x]
    for f in fns:
        f(x)  # compiled before the threads start
    errors = []
    start = threading.Barrier(2)

    def loop(k):
        try:
            start.wait()
            for _ in range(100):
                if not np.array_equal(fns[k](x), want[k]):
                    errors.append(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a caller hangs"
    assert not errors, errors[:3]


def test_two_threads_gemms_at_once():
    """Concurrent GEMM calls (each takes its own workspace): each result equals the one
    computed alone."""
    rng = np.random.default_rng(5)
    a = rng.standard_normal((300, 400)).astype(np.float32)
    b = rng.standard_normal((400, 500)).astype(np.float32)
    fns = [lm.compile(lambda p, q: p @ q), lm.compile(lambda p, q: lm.relu(p @ q) + 1.0)]
    alone = [f(a, b) for f in fns]
    errors = []
    start = threading.Barrier(2)

    def loop(k):
        try:
            start.wait()
            for _ in range(40):
                if not np.array_equal(fns[k](a, b), alone[k]):
                    errors.append(k)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive(), "a caller hangs"
    assert not errors, errors[:3]


def test_forked_child_runs_compiled_code():
    """The child has the parent's memory but not its worker threads: its first job resets the
    pool and starts workers of its own. Its results equal the parent's."""
    rng = np.random.default_rng(6)
    x = rng.standard_normal((2048, 512)).astype(np.float32)
    w = rng.standard_normal((512, 256)).astype(np.float32)
    f = lm.compile(lambda x, w: lm.softmax(x, axis=-1) @ w)
    want = f(x, w)
    assert pool.library().info()["pid"] == os.getpid()
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report through the pipe, never return into pytest
        code = 1
        try:
            got = f(x, w)
            info = pool.library().info()
            ok = np.array_equal(got, want) and info["pid"] == os.getpid()
            os.write(wfd, json.dumps({"ok": bool(ok), "info": info}).encode())
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(r) as fh:
        report = fh.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, report
    report = json.loads(report)
    assert report["ok"], report
    assert report["info"]["pid"] == pid
    np.testing.assert_array_equal(f(x, w), want)  # the parent's pool is untouched
