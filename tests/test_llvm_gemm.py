"""The CPU backend's GEMM (backends/llvm/gemm.py) against a float64 numpy reference: edge shapes,
strided and transposed operands, batches with broadcasting, threads, the epilogue callback, and
tilings on the thread pool (any thread count gives the same bits)."""

from __future__ import annotations

import ctypes
import dataclasses

import numpy as np
import pytest

pytest.importorskip("llvmlite")

from lamina.backends.llvm import gemm, jit

DTYPES = {"f32": np.float32, "f64": np.float64}

# Epilogues in LLVM IR (opaque pointers), one per dtype T:
#   bias_relu: C[i, j] = max(C[i, j] + bias[j], 0), ctx = bias
#   record:    counts[b, i, j] += 1 and snap[b, i, j] = C[i, j], ctx = i64[4] =
#              {counts (i32*), snap (T*), batch stride of counts/snap, row stride of counts/snap}
_EPILOGUES = """
define void @bias_relu_{d}(ptr %ctx, i64 %b, ptr %c, i64 %ldc, i64 %i0, i64 %i1, i64 %j0,
                          i64 %j1) {{
entry:
  br label %rows
rows:
  %i = phi i64 [ %i0, %entry ], [ %i.next, %rows.end ]
  %rowok = icmp slt i64 %i, %i1
  br i1 %rowok, label %cols, label %done
cols:
  %j = phi i64 [ %j0, %rows ], [ %j.next, %cols ]
  %ij = mul i64 %i, %ldc
  %k = add i64 %ij, %j
  %pc = getelementptr {t}, ptr %c, i64 %k
  %x = load {t}, ptr %pc
  %pb = getelementptr {t}, ptr %ctx, i64 %j
  %bias = load {t}, ptr %pb
  %y = fadd {t} %x, %bias
  %pos = fcmp ogt {t} %y, 0.0
  %z = select i1 %pos, {t} %y, {t} 0.0
  store {t} %z, ptr %pc
  %j.next = add i64 %j, 1
  %more = icmp slt i64 %j.next, %j1
  br i1 %more, label %cols, label %rows.end
rows.end:
  %i.next = add i64 %i, 1
  br label %rows
done:
  ret void
}}

define void @record_{d}(ptr %ctx, i64 %b, ptr %c, i64 %ldc, i64 %i0, i64 %i1, i64 %j0,
                       i64 %j1) {{
entry:
  %counts = load ptr, ptr %ctx
  %p1 = getelementptr i64, ptr %ctx, i64 1
  %snap = load ptr, ptr %p1
  %p2 = getelementptr i64, ptr %ctx, i64 2
  %bs = load i64, ptr %p2
  %p3 = getelementptr i64, ptr %ctx, i64 3
  %rs = load i64, ptr %p3
  %base = mul i64 %b, %bs
  br label %rows
rows:
  %i = phi i64 [ %i0, %entry ], [ %i.next, %rows.end ]
  %rowok = icmp slt i64 %i, %i1
  br i1 %rowok, label %cols, label %done
cols:
  %j = phi i64 [ %j0, %rows ], [ %j.next, %cols ]
  %ij = mul i64 %i, %ldc
  %k = add i64 %ij, %j
  %pc = getelementptr {t}, ptr %c, i64 %k
  %x = load {t}, ptr %pc
  %irs = mul i64 %i, %rs
  %o1 = add i64 %base, %irs
  %o = add i64 %o1, %j
  %pn = getelementptr i32, ptr %counts, i64 %o
  %n = load i32, ptr %pn
  %n1 = add i32 %n, 1
  store i32 %n1, ptr %pn
  %ps = getelementptr {t}, ptr %snap, i64 %o
  store {t} %x, ptr %ps
  %j.next = add i64 %j, 1
  %more = icmp slt i64 %j.next, %j1
  br i1 %more, label %cols, label %rows.end
rows.end:
  %i.next = add i64 %i, 1
  br label %rows
done:
  ret void
}}
"""


@pytest.fixture(scope="module")
def lib():
    """The GEMMs with threads even for tiny problems (the default keeps those on one thread),
    so that every shape here runs the threaded paths when nthreads > 1."""
    return gemm.build_library({d: dataclasses.replace(gemm.default_config(d), min_flops=0)
                               for d in DTYPES})


@pytest.fixture(scope="module")
def default_lib():
    return gemm.build_library()


@pytest.fixture(scope="module")
def epilogues():
    """Addresses of the test epilogues, by (name, dtype)."""
    text = "".join(_EPILOGUES.format(d=d, t="float" if d == "f32" else "double")
                   for d in DTYPES)
    text = f'target triple = "{jit.host().triple}"\n' + text
    eng = jit.Engine(jit.optimize(text).module)
    gemm._KEEP_ALIVE.append(eng)  # see the note there: freeing an Engine breaks later compiles
    return {(n, d): eng.address(f"{n}_{d}") for n in ("bias_relu", "record") for d in DTYPES}


def reference(a, b):
    return np.matmul(a.astype(np.float64), b.astype(np.float64))


def check(c, a, b, dtype, extra=None):
    """|c - ref| <= 4 sqrt(K) eps (|A| @ |B|) + eps |ref|, elementwise (ref in float64, after
    the `extra` elementwise function when given).

    Rounding errors of a K-term dot product are bounded by ~K eps sum|a b| in the worst case and
    grow like sqrt(K) eps sum|a b| for independent rounding errors (the blocked FMA sums here
    only lower that); the factor 4 covers the spread of that estimate. eps |ref| covers the
    final rounding of each stored value (and of an epilogue's one extra operation). One wrong,
    missing or doubled product, of size ~sum|a b| / K, is still well above the bound.
    """
    k = a.shape[-1]
    eps = np.finfo(dtype).eps
    ref = reference(a, b) if extra is None else extra(reference(a, b))
    scale = np.matmul(np.abs(a).astype(np.float64), np.abs(b).astype(np.float64))
    tol = 4 * np.sqrt(max(k, 1)) * eps * scale + eps * np.abs(ref) + np.finfo(dtype).tiny
    np.testing.assert_array_less(np.abs(c.astype(np.float64) - ref), tol)


SHAPES = [
    (1, 1, 1), (37, 53, 71), (5, 7, 0), (1, 300, 200), (300, 1, 200), (1000, 3, 17),
    (3, 1000, 17), (5, 40, 9), (40, 5, 9), (13, 33, 1), (50, 70, 257), (12, 32, 16),
    (24, 64, 513), (130, 600, 300), (500, 40, 30), (1100, 45, 20), (20, 2000, 40),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_shapes(lib, dtype, nthreads, shape, rng):
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    c = np.full((m, n), np.nan, dt)  # every element must be overwritten (zeros when K = 0)
    lib.matmul(a, b, out=c, nthreads=nthreads)
    check(c, a, b, dt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty(lib, dtype):
    dt = DTYPES[dtype]
    for m, n in ((0, 5), (5, 0), (0, 0)):
        c = np.zeros((m, n), dt)
        lib.matmul(np.ones((m, 3), dt), np.ones((3, n), dt), out=c, nthreads=2)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("layout", ["at", "bt", "both", "step", "neg", "ldc"])
def test_strides(lib, dtype, nthreads, layout, rng):
    m, n, k = 70, 90, 300
    dt = DTYPES[dtype]
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    out = np.full((m, n), np.nan, dt)
    if layout in ("at", "both"):
        a = np.ascontiguousarray(a.T).T  # column-major: rsA = 1
    if layout in ("bt", "both"):
        b = np.ascontiguousarray(b.T).T  # rsB = 1
    if layout == "step":  # neither stride is 1
        a = rng.standard_normal((2 * m, 3 * k)).astype(dt)[::2, ::3]
        b = rng.standard_normal((3 * k, 2 * n)).astype(dt)[::3, ::2]
    if layout == "neg":
        a, b = a[::-1, ::-1], b[:, ::-1]
    wide = np.full((m + 1, n + 19), np.nan, dt)
    if layout == "ldc":  # C inside a wider array: what is around it must stay untouched
        out = wide[:m, 5:5 + n]
    lib.matmul(a, b, out=out, nthreads=nthreads)
    check(out, a, b, dt)
    if layout == "ldc":
        assert np.isnan(wide[:, :5]).all() and np.isnan(wide[:, 5 + n:]).all()
        assert np.isnan(wide[m]).all()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2, 3])
@pytest.mark.parametrize("batch,bcast", [(2, ""), (3, "a"), (3, "b"), (9, ""), (1, "")])
def test_batch(lib, dtype, nthreads, batch, bcast, rng):
    m, n, k = 45, 70, 40
    dt = DTYPES[dtype]
    a = rng.standard_normal((1 if bcast == "a" else batch, m, k)).astype(dt)
    b = rng.standard_normal((1 if bcast == "b" else batch, k, n)).astype(dt)
    c = np.full((batch, m, n), np.nan, dt)
    lib.matmul(a, b, out=c, nthreads=nthreads)
    check(c, np.broadcast_to(a, (batch, m, k)), np.broadcast_to(b, (batch, k, n)), dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(37, 53, 71), (130, 600, 300), (8, 1000, 30), (9, 4, 0)],
                         ids=lambda s: "x".join(map(str, s)))
def test_epilogue_bias_relu(lib, epilogues, dtype, nthreads, shape, rng):
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    bias = rng.standard_normal(n).astype(dt)
    c = np.full((m, n), np.nan, dt)
    lib.matmul(a, b, out=c, nthreads=nthreads, epilogue=epilogues["bias_relu", dtype],
               ctx=bias.ctypes.data)
    check(c, a, b, dt, extra=lambda r: np.maximum(r + bias, 0.0))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("batch,shape", [(1, (200, 700, 600)), (3, (37, 53, 71)),
                                         (4, (60, 90, 20)), (2, (8, 1500, 30)),
                                         (2, (9, 4, 0))])
def test_epilogue_once_after_full_sum(lib, epilogues, dtype, nthreads, batch, shape, rng):
    """Each element is passed to the epilogue exactly once, and already holds its full sum."""
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((batch, m, k)).astype(dt)
    b = rng.standard_normal((1, k, n)).astype(dt)
    c = np.full((batch, m, n), np.nan, dt)
    counts = np.zeros((batch, m, n), np.int32)
    snap = np.full((batch, m, n), np.nan, dt)
    ctx = np.array([counts.ctypes.data, snap.ctypes.data, m * n, n], np.int64)
    lib.matmul(a, b, out=c, nthreads=nthreads, epilogue=epilogues["record", dtype],
               ctx=ctx.ctypes.data)
    np.testing.assert_array_equal(counts, 1)
    np.testing.assert_array_equal(snap, c)
    check(c, a, np.broadcast_to(b, (batch, k, n)), dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 5, 7), (64, 64, 64), (300, 200, 100)],
                         ids=lambda s: "x".join(map(str, s)))
def test_default_library(default_lib, dtype, shape, rng):
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    check(default_lib.matmul(a, b, nthreads=2), a, b, dt)


def test_raw_call_and_declare(lib):
    """The C ABI as documented, called with raw pointers; declare_gemm matches emit_gemm."""
    m, n, k = 3, 4, 5
    a = np.arange(m * k, dtype=np.float32).reshape(m, k)
    b = np.arange(k * n, dtype=np.float32).reshape(k, n)
    c = np.zeros((m, n), np.float32)
    lib.cfunc("f32")(m, n, k, a.ctypes.data, k, 1, b.ctypes.data, n, 1, c.ctypes.data, n,
                     1, 0, 0, 0, None, None, 1)
    np.testing.assert_array_equal(c, a @ b)
    mod = jit.new_module("caller")
    decl = gemm.declare_gemm(mod, "f32")
    assert decl.is_declaration and decl.name == gemm.GEMM_SYMBOL["f32"]
    defined = gemm.emit_gemm(jit.new_module("x"), "f32")
    assert str(decl.function_type) == str(defined.function_type)
    assert ctypes.sizeof(ctypes.c_void_p) == 8


def _flush_against_guard(x):
    """A copy of `x` (same strides) whose last byte ends where a PROT_NONE page begins, so any
    read or write past the end crashes the test instead of passing silently."""
    import mmap

    page = mmap.PAGESIZE
    span = sum((n - 1) * s for s, n in zip(x.strides, x.shape)) + x.itemsize
    npages = -(-span // page) + 1
    buf = mmap.mmap(-1, npages * page)
    base = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    libc = ctypes.CDLL(None)
    libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    assert libc.mprotect(base + (npages - 1) * page, page, 0) == 0  # PROT_NONE
    start = (npages - 1) * page - span
    y = np.ndarray(x.shape, x.dtype, buffer=buf, offset=start, strides=x.strides)
    y[...] = x
    _GUARDED.append(buf)
    return y


_GUARDED: list = []


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("shape", [(37, 53, 71), (13, 33, 17), (1, 45, 3), (50, 1, 20)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("layout", ["rows", "cols"])
def test_stays_in_bounds(lib, dtype, nthreads, shape, layout, rng):
    """A, B and C end right before an inaccessible page: edge tiles and packers must not read
    (or write) past the last element, in either memory order of the operands."""
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((m, k)).astype(dt)
    b = rng.standard_normal((k, n)).astype(dt)
    if layout == "cols":
        a, b = np.asfortranarray(a), np.asfortranarray(b)
    a, b = _flush_against_guard(a), _flush_against_guard(b)
    c = _flush_against_guard(np.full((m, n), np.nan, dt))
    lib.matmul(a, b, out=c, nthreads=nthreads)
    check(c, a, b, dt)


def test_concurrent_calls(lib, rng):
    """Calls from several threads at once (ctypes drops the GIL) each get their own
    workspace: the cached one goes to one caller, the others allocate."""
    import threading

    cases = []
    for i in range(4):
        m, n, k = 60 + 7 * i, 90 - 5 * i, 200 + 13 * i
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        cases.append((a, b, [np.full((m, n), np.nan, np.float32) for _ in range(20)]))

    def work(a, b, outs):
        for c in outs:
            lib.matmul(a, b, out=c, nthreads=2)

    threads = [threading.Thread(target=work, args=case) for case in cases]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b, outs in cases:
        for c in outs:
            check(c, a, b, np.float32)


# --- tiles on the thread pool -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_lib():
    """Tiny blocks (KC 8, MC one or two panels, NC two panels, 2 KiB of packed B per slot):
    every call has many tiles, K blocks and column blocks, a batch of many matrices more tiles
    than one job has chunks (several tiles per chunk), and the packed-B budget narrows the
    column blocks."""
    out = {}
    for d in DTYPES:
        cfg = gemm.default_config(d)
        nr = cfg.nrv * cfg.lanes(d)
        out[d] = dataclasses.replace(cfg, kc=8, mc=cfg.mr * (1 + (d == "f64")), nc=2 * nr,
                                     min_flops=0, b_budget=2048)
    return gemm.build_library(out)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("batch,shape", [(1, (37, 53, 71)), (1, (130, 200, 50)),
                                         (70, (13, 160, 9)), (3, (5, 300, 20)), (2, (9, 4, 0)),
                                         (1, (300, 7, 33))],
                         ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_tiles_any_threads_same_result(tiny_lib, lib, epilogues, dtype, batch, shape, rng):
    """Every tiling and thread count computes every element once, after its full sum, and
    gives the same bits as one thread (each element's sum runs over the same K blocks)."""
    m, n, k = shape
    dt = DTYPES[dtype]
    a = rng.standard_normal((batch, m, k)).astype(dt)
    b = rng.standard_normal((batch, k, n)).astype(dt)
    results = []
    for library in (tiny_lib, lib):
        for nthreads in (1, 2, 3, 8):
            c = np.full((batch, m, n), np.nan, dt)
            counts = np.zeros((batch, m, n), np.int32)
            snap = np.full((batch, m, n), np.nan, dt)
            ctx = np.array([counts.ctypes.data, snap.ctypes.data, m * n, n], np.int64)
            library.matmul(a, b, out=c, nthreads=nthreads, epilogue=epilogues["record", dtype],
                           ctx=ctx.ctypes.data)
            np.testing.assert_array_equal(counts, 1)
            np.testing.assert_array_equal(snap, c)
            check(c, a, b, dt)
            results.append(c)
        for c in results[1:]:
            np.testing.assert_array_equal(c, results[0])
        results.clear()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("m", [1, 11, 32, gemm.DIRECT_B_MAX_M, gemm.DIRECT_B_MAX_M + 1])
@pytest.mark.parametrize("k", [1, 7, 128, 900])
def test_b_read_in_place(lib, dtype, nthreads, m, k, rng):
    """Few rows of A and a row-major B of whole NR-column panels: the micro-kernel reads B in
    place, not packed (gemm.DIRECT_B_MAX_M), here from a wider array (a row stride that is not
    N), over several K blocks, in a batch with a broadcast A and ending against a guard page."""
    dt = DTYPES[dtype]
    nr = gemm.default_config(dtype).nrv * gemm.default_config(dtype).lanes(dtype)
    n = 4 * nr
    a = rng.standard_normal((m, k)).astype(dt)
    wide = rng.standard_normal((k, n + 3)).astype(dt)
    b = _flush_against_guard(wide[:, 3:])  # rsB = n + 3, ends against the guard
    c = np.full((m, n), np.nan, dt)
    lib.matmul(a, b, out=c, nthreads=nthreads)
    check(c, a, b, dt)
    bb = _flush_against_guard(rng.standard_normal((3, k, n)).astype(dt))
    cc = np.full((3, m, n), np.nan, dt)
    lib.matmul(a, bb, out=cc, nthreads=nthreads)
    check(cc, np.broadcast_to(a, (3, m, k)), bb, dt)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("nthreads", [1, 2])
@pytest.mark.parametrize("m", [1, 12, 25, 300])
@pytest.mark.parametrize("n", [5, 64, 129])
@pytest.mark.parametrize("k", [1, 7, 900])
def test_a_read_in_place(lib, dtype, nthreads, m, n, k, rng):
    """A column-major A (a transposed operand, as in a weight gradient dY^T X): the
    micro-kernel reads A's whole MR-row panels in place and packs only a partial last panel; here with a column stride that is not M, over several K
    blocks, in a batch with a broadcast B, A ending against a guard page."""
    dt = DTYPES[dtype]
    tall = rng.standard_normal((k, m + 5)).astype(dt)
    a = _flush_against_guard(tall[:, 5:]).T  # A[i, k] at i + k*(m + 5)
    b = rng.standard_normal((k, n)).astype(dt)
    c = np.full((m, n), np.nan, dt)
    lib.matmul(a, b, out=c, nthreads=nthreads)
    check(c, a, b, dt)
    aa = _flush_against_guard(rng.standard_normal((3, k, m)).astype(dt)).transpose(0, 2, 1)
    cc = np.full((3, m, n), np.nan, dt)
    lib.matmul(aa, b, out=cc, nthreads=nthreads)
    check(cc, aa, np.broadcast_to(b, (3, k, n)), dt)


@pytest.mark.parametrize("vbits", [256, 128])
def test_blockings_for_narrower_vectors(vbits, rng):
    """The blockings of hosts without AVX-512 (gemm.CONFIGS[256] and [128]: narrower vectors,
    other tiles; built here for this host's instructions) on edge tiles, several K blocks,
    transposed operands and batches, for both entries."""
    lib = gemm.build_library({d: dataclasses.replace(gemm.CONFIGS[vbits][d], min_flops=0)
                              for d in DTYPES})
    for dt in DTYPES.values():
        for m, n, k in [(1, 1, 1), (37, 53, 71), (13, 33, 600), (5, 9, 40), (70, 200, 3)]:
            a = rng.standard_normal((m, k)).astype(dt)
            b = rng.standard_normal((k, n)).astype(dt)
            for x, y in ((a, b), (np.asfortranarray(a), np.asfortranarray(b))):
                c = np.full((m, n), np.nan, dt)
                lib.matmul(x, y, out=c, nthreads=2)
                check(c, x, y, dt)
        a = rng.standard_normal((3, 11, 21)).astype(dt)
        b = rng.standard_normal((3, 21, 19)).astype(dt)
        check(lib.matmul(a, b, nthreads=2), a, b, dt)
        # the gather entry: B through offset tables (here a plain row-major B, read as such)
        src = rng.standard_normal((1, 21, 19)).astype(dt)
        out = np.full((1, 11, 19), np.nan, dt)
        lib.gather_matmul(a[0], src, np.arange(21) * 19, np.arange(19), out)
        check(out[0], a[0], src[0], dt)


def test_each_entry_is_its_own_library():
    """build_library(entries=...) builds only the entries asked for: the backend builds the
    plain GEMM alone (the gather entry's table packers would double its build time) and the
    gather entry only for programs that call it."""
    plain = gemm.build_library(dtypes=("f32",), entries=(False,))
    gather = gemm.build_library(dtypes=("f32",), entries=(True,))
    assert set(plain.addresses) == {"f32"} and not plain.gather_addresses
    assert set(gather.gather_addresses) == {"f32"} and not gather.addresses
