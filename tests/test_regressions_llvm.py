"""Regressions of the llvm CPU backend found by the random-program checker, and their neighbours.

Each test names the mechanism that was wrong; most run on every backend (the ``backend``
fixture), each against an independent numpy formula:

- a row program (a reduction fused with its consumers) keeps one row's reduced values while it
  computes that row: a consumer that reads them through an index move (a transpose of a square
  shape, numpy's trailing broadcast of a reduced vector, a gather) reads another row's;
- 0-d results came back 1-d on the paths that copy (an input, state, a literal);
- zero-size kernels ran one iteration (a GEMM wrote a whole matrix into a zero-size output);
- a GEMM wrote its float result straight into an output of another dtype;
- a GEMM kernel took a constant or a slice as an operand it can only read through strides.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from helpers import assert_close
from test_fuse import Fused, region_ops

import lamina as lm
from lamina.backends.llvm.codegen import Codegen
from lamina.backends.llvm.gemm_call import _rows_fold
from lamina.backends.llvm.kernels import scratch_need
from lamina.frontend.trace import current
from lamina.ir import parse
from lamina.passes.fuse import fuse_kernels
from lamina.passes.memory import plan_memory


def same(got, want):
    """Equal shape, the expected dtype for floats, close values (exact for ints and bools)."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, (got.shape, want.shape)
    if want.dtype.kind == "f":
        assert got.dtype == want.dtype, (got.dtype, want.dtype)
        assert_close(got, want)
    else:  # integer reductions keep their dtype in lamina (numpy widens int32 sums)
        assert got.dtype.kind == want.dtype.kind, (got.dtype, want.dtype)
        np.testing.assert_array_equal(got, want)


def check(fn, args, backend, expect=None):
    """``fn`` compiled for ``backend`` against ``expect(*args)`` (default: ``fn`` on numpy
    arrays: the expressions below use only operators and methods numpy has too)."""
    got = lm.compile(fn, backend=backend)(*args)
    want = (expect or fn)(*args)
    if isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            same(g, w)
    else:
        same(got, want)


def positive(shape, dtype=np.float32, seed=0):
    return np.random.default_rng(seed).uniform(0.5, 1.5, shape).astype(dtype)


def np_softmax(x, axis):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# --- 1, 2: reduced values read at another row's position ---------------------------------------

# A reduction fused with its consumers into a row program, read through a transpose or a
# swapaxes of equal-sized axes, numpy's trailing broadcast of a keepdims=False result, a
# transposed keepdims result, a slice or a reshape.
THROUGH_VIEWS = {
    "max_T": lambda x: (x - x.max(axis=1, keepdims=True)).T,
    "sum_T": lambda x: (x / x.sum(axis=1, keepdims=True)).T,
    "min_T": lambda x: (x - x.min(axis=1, keepdims=True)).T,
    "mean_T": lambda x: (x - x.mean(axis=1, keepdims=True)).T,
    "sum_trailing": lambda x: x * x.sum(axis=1),
    "max_trailing": lambda x: x - x.max(axis=1),
    "min_trailing": lambda x: x - x.min(axis=1),
    "mean_trailing": lambda x: x - x.mean(axis=1),
    "argmax_trailing": lambda x: x + x.argmax(axis=1).astype(x.dtype),
    "argmax_keep_T": lambda x: x + x.argmax(axis=1, keepdims=True).T.astype(x.dtype),
    "keepdims_T": lambda x: x + x.sum(axis=1, keepdims=True).T,
    "column_sum_T": lambda x: (x - x.sum(axis=0, keepdims=True)).T,
    "column_max_keep_T": lambda x: x - x.max(axis=0, keepdims=True).T,
    "slice_rows": lambda x: (x - x.max(axis=1, keepdims=True))[2:6],
    "shifted_rows": lambda x: x[1:] * x.sum(axis=1, keepdims=True)[:-1],
    "reshape": lambda x: (x - x.max(axis=1, keepdims=True)).reshape(4, 16),
    "row_and_column": lambda x: x.sum(axis=1) + x.max(axis=0),
}

CUBE_VIEWS = {  # n x n x n
    "swap02": lambda x: (x - x.max(axis=2, keepdims=True)).swapaxes(0, 2),
    "swap01": lambda x: (x - x.max(axis=2, keepdims=True)).swapaxes(0, 1),
    "swap12": lambda x: (x / x.sum(axis=2, keepdims=True)).swapaxes(1, 2),
    "perm201": lambda x: (x - x.min(axis=2, keepdims=True)).transpose(2, 0, 1),
    "sum_trailing": lambda x: x * x.sum(axis=2),
    "sum_middle": lambda x: x * x.sum(axis=1),
    "sum_leading": lambda x: x - x.sum(axis=0),
    "two_axes_T": lambda x: (x - x.max(axis=(1, 2), keepdims=True)).transpose(2, 1, 0),
    "mean_keep_swapped": lambda x: x - x.mean(axis=2, keepdims=True).swapaxes(0, 1),
}


@pytest.mark.parametrize("case", sorted(THROUGH_VIEWS))
def test_reduction_read_through_a_view_of_a_square(case, backend):
    check(THROUGH_VIEWS[case], (positive((8, 8)),), backend)


@pytest.mark.parametrize("case", sorted(CUBE_VIEWS))
def test_reduction_read_through_a_view_of_a_cube(case, backend):
    check(CUBE_VIEWS[case], (positive((4, 4, 4)),), backend)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64])
@pytest.mark.parametrize("case", ["max_T", "sum_trailing", "keepdims_T", "column_max_keep_T"])
def test_reduction_read_through_a_view_other_dtypes(case, dtype, backend):
    x = np.random.default_rng(1).integers(-5, 6, (6, 6)).astype(dtype)
    check(THROUGH_VIEWS[case], (x,), backend)


def test_bool_reduction_read_through_a_view(backend):
    x = np.random.default_rng(2).random((6, 6)) < 0.3
    check(lambda x: x & x.max(axis=1), (x,), backend)
    check(lambda x: (x | x.min(axis=1, keepdims=True)).T, (x,), backend)


def test_softmax_transposed(backend):
    x = np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32)
    check(lambda x: lm.softmax(x, axis=1).T, (x,), backend, lambda x: np_softmax(x, 1).T)
    check(lambda x: lm.softmax(x, axis=0).T, (x,), backend, lambda x: np_softmax(x, 0).T)


def test_gradient_through_a_transposed_softmax(backend):
    r = np.random.default_rng(3)
    x, c = (r.standard_normal((8, 8)).astype(np.float32) for _ in range(2))

    def expect(x, c):  # d/dx sum(softmax(x).T * c) = s * (c.T - sum(s * c.T, rows))
        s = np_softmax(x, 1)
        return s * (c.T - (s * c.T).sum(axis=1, keepdims=True))

    check(lm.grad(lambda x, c: (lm.softmax(x, axis=1).T * c).sum()), (x, c), backend, expect)


# --- 3: a gather of reduced values ---------------------------------------------------------------


def test_gather_of_a_reduction(backend):
    r = np.random.default_rng(4)
    y = r.standard_normal((4, 3, 5)).astype(np.float32)
    i4, i5 = np.array([0, 2, 1, 3]), np.array([4, 0, 0, 2, 1])
    check(lambda y, i: y.sum(axis=1)[i], (y, i4), backend)
    check(lambda y, i: y.max(axis=1)[i], (y, i4), backend)
    check(lambda y, i: y.argmax(axis=1)[i], (y, i4), backend)
    check(lambda y, i: lm.take(y.sum(axis=1), i, axis=1), (y, i5), backend,
          lambda y, i: np.take(y.sum(axis=1), i, axis=1))
    x = r.standard_normal((8, 8)).astype(np.float32)
    i8 = np.array([7, 6, 5, 4, 3, 2, 1, 0])
    check(lambda x, i: lm.take(lm.softmax(x, axis=1), i, axis=0), (x, i8), backend,
          lambda x, i: np_softmax(x, 1)[i])
    check(lambda x, i: x.sum(axis=1, keepdims=True)[i] * x, (x, i8), backend)


# --- 4: rank 0 ---------------------------------------------------------------------------------

ZERO_D = {
    "kernel": (lambda x: (x * 2.0).sum(), lambda x: (x * np.float32(2)).sum()),
    "sum_is_the_input": (lambda x: x.sum(), lambda x: x.sum()),
    "identity": (lambda x: x, lambda x: x.copy()),
    "literal": (lambda x: lm.zeros(()), lambda x: np.zeros((), np.float32)),
    "two_outputs": (lambda x: (x, x + 1.0), lambda x: (x.copy(), x + np.float32(1))),
    "grad_literal": (lm.grad(lambda x: x * 3.0), lambda x: np.asarray(np.float32(3))),
    "grad_is_the_input": (lm.grad(lambda x: x * x / 2.0), lambda x: x.copy()),
}


@pytest.mark.parametrize("case", sorted(ZERO_D))
def test_rank_0_results_stay_rank_0(case, backend):
    fn, expect = ZERO_D[case]
    check(fn, (np.array(2.5, np.float32),), backend, expect)


def test_rank_0_state_read_and_written(backend):
    p = lm.nn.Parameter(np.array(1.5, np.float32))

    def step(x):
        old = p * 1.0
        current().assign(p, p + x)
        return old, p

    f = lm.compile(step, backend=backend)
    old, cur = f(np.array(2.0, np.float32))
    same(old, np.array(1.5, np.float32))
    same(cur, np.array(1.5, np.float32))  # reads in the graph see the old value
    assert np.asarray(p.numpy()).shape == () and float(p.numpy()) == 3.5


# --- 5: zero-size -------------------------------------------------------------------------------

ZERO_SIZE_GEMM = r'''
import numpy as np, lamina as lm
rng = np.random.default_rng(0)
def z(*s, d=np.float32):
    return rng.standard_normal(s).astype(d)
cases = [((0, 64, 64), (0, 64, 64)), ((0, 4, 5), (5, 3)), ((0, 5), (5, 3)), ((4, 5), (5, 0)),
         ((4, 0), (0, 3)), ((2, 4, 0), (2, 0, 3)), ((3, 1, 4, 5), (0, 5, 2))]
fns = (lambda a, b: a @ b, lambda a, b: lm.relu(a @ b + 1),
       lambda a, b: (a @ b).astype(np.float64) * 2)
for d, step, nfns in ((np.float32, 1, 3), (np.float64, 2, 1), (np.int32, 2, 1)):
    for sa, sb in cases[::step]:
        a, b = z(*sa, d=d), z(*sb, d=d)
        for fn in fns[:nfns]:
            for _ in range(3):
                got = lm.compile(fn)(a, b)
            want = lm.compile(fn, backend="numpy")(a, b)
            assert got.shape == want.shape and got.dtype == want.dtype, (sa, sb, d)
            assert np.array_equal(got, want), (sa, sb, d)
big = lm.compile(lambda x: lm.exp(x) * 2)  # the heap still works
for _ in range(5):
    big(np.ones((300, 300), np.float32))
print("OK")
'''


def test_zero_size_matmuls_write_nothing():
    """Zero batch, M, N (nothing to write) and K (zeros); in a fresh process, so that heap
    corruption shows as a crash of that process."""
    r = subprocess.run([sys.executable, "-c", ZERO_SIZE_GEMM], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("OK"), r.stderr[-3000:]


ZERO_SIZE = {
    "elementwise": (lambda x: lm.exp(x) + 1.0, (0, 7)),
    "broadcast": (lambda x: x + x.sum(axis=0, keepdims=True), (0, 7)),
    "row_sum": (lambda x: x.sum(axis=1), (0, 7)),
    "sum_of_nothing": (lambda x: x.sum(axis=0), (0, 7)),
    "row_sum_of_nothing": (lambda x: x.sum(axis=1), (7, 0)),
    "mean_cast": (lambda x: x.sum(axis=0).astype(np.float64), (0, 3, 5)),
    "softmax": (lambda x: lm.softmax(x, axis=1), (0, 9)),
    "transpose": (lambda x: (x * 2.0).T, (3, 0)),
    "reshape": (lambda x: x.reshape(0, 4) + 1.0, (4, 0)),
}


@pytest.mark.parametrize("case", sorted(ZERO_SIZE))
def test_zero_size_kernels(case, backend):
    fn, shape = ZERO_SIZE[case]
    x = np.ones(shape, np.float32)
    check(fn, (x,), backend, lambda x: lm.compile(fn, backend="numpy")(x))


def test_zero_size_kernels_run_no_iteration():
    g = fuse_kernels(parse("""graph @z(%x: f32[0,7], %y: f32[3,0]) {
  %0 = exp(%x) : f32[0,7]
  %1 = transpose(%y) {perm=[1, 0]} : f32[0,3]
  return %0, %1
}
"""))
    cg = Codegen(g, plan_memory(g, scratch_need))
    cg.build()
    assert [k.extent for _, k in cg.kernels] == [0, 0]


def test_gradient_of_minimum_with_zero_size_and_mixed_dtypes(backend):
    r = np.random.default_rng(5)
    a = r.standard_normal((0, 1, 16, 1)).astype(np.float32)
    b = r.standard_normal((7, 16, 1))
    ga, gb = lm.compile(lm.grad(lambda a, b: lm.minimum(a, b).sum(), argnums=(0, 1)),
                        backend=backend)(a, b)
    same(ga, np.zeros((0, 1, 16, 1), np.float32))
    same(gb, np.zeros((7, 16, 1), np.float64))


def test_accumulation_with_a_cast_epilogue(backend):
    """The same kernel (a column sum whose result is cast) with elements."""
    r = np.random.default_rng(6)
    a = r.standard_normal((3, 1, 16, 1)).astype(np.float32)
    b = r.standard_normal((7, 16, 1))
    check(lm.grad(lambda a, b: lm.minimum(a, b).sum(), argnums=(0, 1)), (a, b), backend,
          lambda a, b: ((a < b).sum(axis=1, keepdims=True).astype(np.float32),
                        (b <= a).sum(axis=0).astype(np.float64)))


# --- 6: a GEMM epilogue of another dtype --------------------------------------------------------

EPILOGUE_DTYPES = {
    "compare": (lambda a, w: (a @ a.T) > 0.5, np.float32),
    "to_f64": (lambda a, w: (a @ w).astype(np.float64), np.float32),
    "f32_feeds_f64": (lambda a, w: (a @ w).astype(np.float64) * 2.0 + a.astype(np.float64),
                      np.float32),
    "to_int": (lambda a, w: (a @ w * 4).astype(np.int32), np.float32),
    "f64_to_f32": (lambda a, w: (a @ w).astype(np.float32) + 1, np.float64),
    "f64_compare": (lambda a, w: (a @ w) <= a, np.float64),
}


@pytest.mark.parametrize("case", sorted(EPILOGUE_DTYPES))
def test_gemm_epilogue_of_another_dtype(case, backend):
    fn, dtype = EPILOGUE_DTYPES[case]
    r = np.random.default_rng(7)
    a, w = (r.standard_normal((5, 5)).astype(dtype) for _ in range(2))
    check(fn, (a, w), backend)


@pytest.mark.parametrize("state_dtype,mm_dtype", [(np.float32, np.float64),
                                                  (np.float64, np.float32)])
def test_gemm_updating_state_of_another_dtype_in_place(state_dtype, mm_dtype, backend):
    r = np.random.default_rng(8)
    w0 = r.standard_normal((16, 16)).astype(state_dtype)
    p = lm.nn.Parameter(w0.copy())
    a, b = (r.standard_normal((16, 16)).astype(mm_dtype) for _ in range(2))

    def step(a, b):
        current().assign(p, p + (a @ b).astype(state_dtype))
        return a.sum()

    lm.compile(step, backend=backend)(a, b)
    assert_close(p.numpy(), w0 + (a @ b).astype(state_dtype), dtype=np.float32)


# --- 7, 8: GEMM operands that are not strided views of a buffer ---------------------------------


def test_gradients_of_a_matmul_sum(backend):
    r = np.random.default_rng(9)
    x, w = r.standard_normal((4, 3)).astype(np.float32), r.standard_normal((3, 5)).astype(
        np.float32)
    check(lm.grad(lambda x, w: (x @ w).sum(), argnums=(0, 1)), (x, w), backend,
          lambda x, w: (np.ones((4, 5), np.float32) @ w.T, x.T @ np.ones((4, 5), np.float32)))


CONSTANT_OPERANDS = {
    "zeros_left": (lambda w: lm.zeros((4, 3)) @ w, lambda w: np.zeros((4, 3), np.float32) @ w),
    "ones_right": (lambda w: w @ lm.ones((5, 2)), lambda w: w @ np.ones((5, 2), np.float32)),
    "full_epilogue": (lambda w: lm.full((4, 5), 2.0) + lm.full((4, 3), 2.0) @ w,
                      lambda w: 2 + np.full((4, 3), 2.0, np.float32) @ w),
    "shared_with_epilogue": (lambda w: (lambda z: z * (z @ w[:, :3]))(lm.full((3, 3), 0.5)),
                             lambda w: 0.5 * (np.full((3, 3), 0.5, np.float32) @ w[:, :3])),
    "epilogue_reads_it_after": (lambda w: (lambda z: (z @ w[:, :3]) + z)(lm.full((3, 3), 0.5)),
                                lambda w: np.full((3, 3), 0.5, np.float32) @ w[:, :3] + 0.5),
    "batched": (lambda w: lm.ones((2, 4, 3)) @ w, lambda w: np.ones((2, 4, 3), np.float32) @ w),
}


@pytest.mark.parametrize("case", sorted(CONSTANT_OPERANDS))
def test_constant_gemm_operand(case, backend):
    fn, expect = CONSTANT_OPERANDS[case]
    w = np.random.default_rng(10).standard_normal((3, 5)).astype(np.float32)
    check(fn, (w,), backend, expect)


def test_recurrent_step_from_zero_state(backend):
    r = np.random.default_rng(11)
    xs = r.standard_normal((3, 2, 4)).astype(np.float32)
    wx, wh = (r.standard_normal((4, 4)).astype(np.float32) * 0.5 for _ in range(2))

    def run(xp, xs, wx, wh, zeros, tanh):
        h = zeros((2, 4))
        c = zeros((2, 4))
        for t in range(3):
            g = xp(xs[t]) @ wx + h @ wh
            c = c * 0.5 + tanh(g)
            h = tanh(c) * 0.9
        return h

    check(lambda xs, wx, wh: run(lambda v: v, xs, wx, wh, lm.zeros, lm.tanh), (xs, wx, wh),
          backend, lambda xs, wx, wh: run(lambda v: v, xs, wx, wh,
                                          lambda s: np.zeros(s, np.float32), np.tanh))


SHARED_OPERANDS = {  # an operand the epilogue reads too
    "slice": lambda x, w: (lambda s: s + s @ w)(x[:2, :2]),
    "strided_slice": lambda x, w: (lambda s: s * (s @ w))(x[::2, 1:3]),
    "transpose": lambda x, w: (lambda s: s + s @ w)(x[:2, :2].T),
    "view_of_input": lambda x, w: (lambda s: s - s @ w)(x.T[:2, :2]),
    "reshape": lambda x, w: (lambda s: s + s @ w[:2, :2])(x.reshape(2, 2, 4)[0, :, :2]),
    "computed": lambda x, w: (lambda s: s + s @ w)(x[:2, :2] * 2),
    # the epilogue reads a slice, the GEMM a view of that slice
    "view_of_shared_slice": lambda x, w: (lambda s: s + s.T @ w)(x[:2, :2]),
    "view_of_shared_cast": lambda x, w: (lambda s: s + s.T @ w)(
        x[:2, :2].astype(np.float64).astype(np.float32)),
}


@pytest.mark.parametrize("case", sorted(SHARED_OPERANDS))
def test_gemm_operand_shared_with_its_epilogue(case, backend):
    r = np.random.default_rng(12)
    x, w = r.standard_normal((4, 4)).astype(np.float32), r.standard_normal((2, 2)).astype(
        np.float32)
    check(SHARED_OPERANDS[case], (x, w), backend)


def test_row_value_kept_for_reuse_read_through_a_transpose(backend):
    """A row program keeps an expensive full-row value (an exp) in its output row for its later
    sweeps: a transposed read of it must not pick up what that output row holds."""
    x = np.random.default_rng(13).standard_normal((8, 8)).astype(np.float32)
    check(lambda x: lm.exp(x).sum(axis=1, keepdims=True) + lm.exp(x).T, (x,), backend,
          lambda x: np.exp(x).sum(axis=1, keepdims=True) + np.exp(x).T)
    check(lambda x: lm.exp(x) / lm.exp(x).sum(axis=1, keepdims=True) * lm.exp(x).T, (x,),
          backend, lambda x: np.exp(x) / np.exp(x).sum(axis=1, keepdims=True) * np.exp(x).T)


# --- how the row-alignment rule fuses -----------------------------------------------------------


def fused(fn, *shapes):
    f = Fused(fn, *[lm.TensorType(s, "float32") for s in shapes])
    return [(k.attrs["name"], region_ops(k)) for k in f.kernels], f.remarks


def test_transposed_softmax_is_a_row_program_then_a_transpose():
    kernels, remarks = fused(lambda x: lm.softmax(x, axis=1).T, (8, 8))
    assert [ops for _, ops in kernels] == [["max", "sub", "exp", "sum", "div", "mul"],
                                           ["transpose"]]
    assert any("mul not fused: the transpose reading it needs other rows" in r for r in remarks)


def test_trailing_broadcast_of_a_row_sum_is_a_boundary_with_its_reason():
    kernels, remarks = fused(lambda x: x * x.sum(axis=1), (8, 8))
    assert [ops for _, ops in kernels] == [["sum"], ["mul"]]
    assert any("sum not fused: the kernel would read the sum of another row" in r
               for r in remarks)
    # the same with keepdims (the same row) stays one kernel
    kernels, _ = fused(lambda x: x * x.sum(axis=1, keepdims=True), (8, 8))
    assert [ops for _, ops in kernels] == [["sum", "mul"]]


# --- random draws broadcast inside an elementwise kernel ----------------------------------------


@pytest.mark.parametrize("shape", [(16, 16), (1, 16), (16, 1), (16,), (1,), ()])
@pytest.mark.parametrize("lead", [16, 4])
def test_random_draw_broadcast_in_an_elementwise_kernel(backend, shape, lead):
    """A draw smaller than the kernel's result, broadcast by an elementwise op: element i of the
    draw is drawn at i of its own shape, not at the flat index of the result. (With 16 leading
    rows, fusion took the (16, 16) draw for one that varies along the leading axes, joined it
    to the (16, 16, 16) kernel, which then ran as one flat loop: every draw at the result's
    flat index.)"""
    x = np.zeros((lead, 16, 16), np.float32)
    fn = lambda x: x - lm.rsqrt(lm.sigmoid(lm.random.uniform(shape, key=7)))  # noqa: E731
    got = lm.compile(fn, backend=backend)(x)
    draw = lm.compile(lambda: lm.random.uniform(shape, key=7), backend="numpy")()
    want = x - 1 / np.sqrt(1 / (1 + np.exp(-draw.astype(np.float64))))
    same(got, want.astype(np.float32))


# --- dtypes the backend does not have ----------------------------------------------------------


def test_half_precision_matmul_is_a_clear_error_on_llvm():
    """A float16 matmul raised KeyError: 16 from the GEMM library lookup; an elementwise op of
    float16 already said that the backend does not support it."""
    a = np.ones((4, 4), np.float16)
    with pytest.raises(lm.LaminaError, match="does not support float16"):
        lm.compile(lambda a: a @ a, backend="llvm")(a)


_FOLD_CASES = {
    # [T, B, K] @ [K, N] and what the epilogue reads: the batch folds into the rows where the
    # epilogue only reads positions of the output (bias, residual, activation)...
    "plain": lambda x, w, r, m, v: x @ w,
    "bias_relu": lambda x, w, r, m, v: lm.relu(x @ w + v),
    "residual": lambda x, w, r, m, v: lm.tanh(x @ w) * r + 1.0,
    # ...and must not where it reads the row or batch index of the matrix it is in
    "per_row_operand": lambda x, w, r, m, v: x @ w + m,
    "causal_mask": lambda x, w, r, m, v: lm.where(
        lm.arange(5).reshape(5, 1) >= lm.arange(7), x @ w, 0.0),
    "transposed_a": lambda x, w, r, m, v: lm.transpose(x, (1, 0, 2)) @ w,
}


@pytest.mark.parametrize("case", sorted(_FOLD_CASES))
def test_batched_matmul_with_a_shared_rhs_folds_the_batch_into_rows(case):
    """x [T, B, K] @ w [K, N] runs as one GEMM of T*B rows when the epilogue allows it
    (gemm_call._rows_fold); each case against the numpy reference."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 5, 6)).astype(np.float32)
    w = rng.standard_normal((6, 7)).astype(np.float32)
    r = rng.standard_normal((4, 5, 7)).astype(np.float32)
    m = rng.standard_normal((5, 7)).astype(np.float32)
    v = rng.standard_normal(7).astype(np.float32)
    if case == "transposed_a":
        x = np.ascontiguousarray(x.transpose(1, 0, 2))
    fn = _FOLD_CASES[case]
    f = lm.compile(fn, backend="llvm")
    got = f(x, w, r, m, v)
    want = lm.compile(fn, backend="numpy")(x, w, r, m, v)
    assert_close(got, want)
    (k,) = [n for n in parse(f.ir("fused")).nodes
            if n.op == "kernel" and any(m.op == "matmul" for m in n.region.nodes)]
    (mm,) = [m for m in k.region.nodes if m.op == "matmul"]
    folds = case in ("plain", "bias_relu", "residual")
    assert _rows_fold(k.region, mm) == folds or case == "transposed_a"
