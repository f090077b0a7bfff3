"""The llvm backend's implicit-GEMM conv: the GEMM reads the im2col gather through offset
tables (passes/gemm_operand.py, the gather entry of backends/llvm/gemm.py), the conv's
bias/activation epilogue runs in the GEMM, and no im2col tensor is stored."""

import numpy as np
import pytest

import lamina as lm
from lamina import nn
from lamina.backends.llvm import gemm
from lamina.passes import gemm_operand as go

F = nn.functional


# --- the layout analysis --------------------------------------------------------------------


class _Base:
    def __init__(self, shape):
        self.shape = tuple(shape)


def _addresses(lay, shape):
    """The address array a Layout describes (for checking it against numpy)."""
    total = np.zeros((), np.int64)
    for t in lay.tables:
        total = np.add.outer(total, t)
    return total.reshape(shape)


def _layout_through(ops, shape):
    """Apply numpy-described index ops to a base both as a Layout and on an address array."""
    base = _Base(shape)
    addr = np.arange(int(np.prod(shape))).reshape(shape)
    lay = go.Layout(base, [np.arange(d, dtype=np.int64) * s
                           for d, s in zip(shape, go._strides(shape))])
    for kind, arg in ops:
        t = lay.tables
        if kind == "transpose":
            addr = addr.transpose(arg)
            t = [t[p] for p in arg]
        elif kind == "reshape":
            t = go._reshape(t, addr.shape, arg)
            addr = addr.reshape(arg)
        elif kind == "take":
            idx, axis = arg
            mid = go._take(t[axis], idx)
            t = None if mid is None else t[:axis] + mid + t[axis + 1:]
            addr = np.take(addr, idx, axis=axis)
        elif kind == "slice":
            t = [tab[s] for tab, s in zip(t, arg)]
            addr = addr[tuple(arg)]
        if t is None:
            return None, addr
        lay = go.Layout(base, t)
    return lay, addr


@pytest.mark.parametrize("ops", [
    [("transpose", (1, 0, 2))],
    [("transpose", (2, 0, 1)), ("reshape", (5, 6))],
    [("reshape", (2, 3, 1, 5)), ("transpose", (3, 1, 0, 2))],
    [("slice", [slice(0, 2), slice(1, 3, 2), slice(None, None, 2)])],
    [("take", (np.array([[0, 1, 2], [1, 2, 3]]), 2)), ("reshape", (2, 3, 6))],
    [("reshape", (2, 15)), ("take", (np.array([[0, 4], [1, 5], [10, 14]]), 1))],
])
def test_layout_tables_give_the_addresses_numpy_does(ops):
    lay, addr = _layout_through(ops, (2, 3, 5))
    assert lay is not None
    np.testing.assert_array_equal(_addresses(lay, addr.shape), addr)


def test_a_gather_that_is_not_separable_has_no_layout():
    lay, _ = _layout_through([("reshape", (30,)), ("take", (np.array([[0, 1], [2, 9]]), 0))],
                             (2, 3, 5))
    assert lay is None


def test_a_conv_patch_index_is_separable_and_its_rows_are_not_strides():
    # x [N, C, 6*6] padded plane, a 3x3 kernel, 4x4 output: idx[tap, pos]
    k = np.indices((3, 3)).reshape(2, -1)
    o = np.indices((4, 4)).reshape(2, -1)
    idx = (k[0] * 6 + k[1])[:, None] + (o[0] * 6 + o[1])[None, :]
    lay, addr = _layout_through([("take", (idx, 2)), ("reshape", (2, 27, 16))], (2, 3, 36))
    np.testing.assert_array_equal(_addresses(lay, addr.shape), addr)
    assert lay.affine(0) == 108 and lay.affine(1) is None and lay.affine(2) is None


# --- the gather GEMM itself ------------------------------------------------------------------


@pytest.fixture(scope="module")
def lib():
    return gemm.build_library()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("geom", [
    (3, 4, 10, 10, 3, 1, 1),   # output rows of 10: a panel crosses a row (two runs)
    (2, 16, 14, 14, 3, 1, 1),
    (1, 1, 28, 28, 3, 1, 1),
    (2, 3, 9, 9, 3, 1, 2),     # stride 2: no runs, values gathered one by one
    (2, 3, 5, 3, 3, 1, 1),     # rows of 3: more than two runs per vector
    (1, 2, 20, 17, 5, 2, 1),
    (2, 1, 4, 4, 2, 0, 1),     # fewer output positions than a panel
])
def test_gather_gemm_matches_numpy(lib, dtype, geom):
    N, C, H, W, k, pad, s = geom
    rng = np.random.default_rng(0)
    Hp, Wp = H + 2 * pad, W + 2 * pad
    x = rng.standard_normal((N, C, Hp, Wp)).astype(dtype)
    w = rng.standard_normal((5, C * k * k)).astype(dtype)
    oh, ow = (Hp - k) // s + 1, (Wp - k) // s + 1
    kofs = np.array([c * Hp * Wp + ky * Wp + kx
                     for c in range(C) for ky in range(k) for kx in range(k)])
    jofs = np.array([oy * s * Wp + ox * s for oy in range(oh) for ox in range(ow)])
    out = np.full((N, 5, oh * ow), np.nan, dtype)
    lib.gather_matmul(w, x, kofs, jofs, out, bsb=C * Hp * Wp)
    cols = x.reshape(N, -1)[:, kofs[:, None] + jofs[None, :]]
    tol = 1e-4 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out, w.astype(np.float64) @ cols, rtol=tol, atol=tol)


# --- the conv kernels ------------------------------------------------------------------------


def _cnn_step():
    rng = np.random.default_rng(0)
    w1 = nn.Parameter((rng.standard_normal((8, 1, 3, 3)) * 0.3).astype(np.float32))
    b1 = nn.Parameter(np.zeros(8, np.float32))
    w2 = nn.Parameter((rng.standard_normal((8, 8, 3, 3)) * 0.1).astype(np.float32))
    opt = lm.optim.SGD([w1, b1, w2], lr=0.1)

    @lm.compile(backend="llvm")
    def step(x):
        h = lm.relu(F.conv2d(x, w1, b1, padding=1))
        loss = (F.conv2d(h, w2, padding=1) ** 2).mean()
        opt.minimize(loss)
        return loss

    return step, rng.standard_normal((4, 1, 12, 12)).astype(np.float32)


def test_conv_runs_as_an_implicit_gemm_with_its_epilogue():
    step, x = _cnn_step()
    step(x)
    text = step.ir("fused")
    gemm_lines = [line for line in text.splitlines()
                  if line.startswith("# remark: @") and ": gemm" in line]
    # every conv (forward, input gradient, weight gradients) reads its patches through
    # offset tables: the only gather stored is the input gradient's flipped weight, which
    # every image's GEMM shares (read through tables, it would be gathered once per image)
    gathers = [line for line in text.splitlines()
               if line.startswith("# remark: @") and ": loop" in line and "take" in line]
    assert len(gathers) == 1 and "loop over [8, 8, 3, 3]" in gathers[0], gathers
    assert sum("offset tables" in line for line in gemm_lines) == 5
    # the first conv's bias and ReLU run in its GEMM's epilogue
    assert any("epilogue" in line and "add, relu" in line for line in gemm_lines)


def test_conv_train_step_matches_the_numpy_backend():
    results = []
    for be in ("numpy", "llvm"):
        rng = np.random.default_rng(1)
        conv1 = nn.Conv2d(2, 6, 3, padding=1)
        conv2 = nn.Conv2d(6, 4, 3, stride=2, padding=1, groups=2)
        for m in (conv1, conv2):  # the same start on both backends
            m.weight.assign((rng.standard_normal(m.weight.shape) * 0.2).astype(np.float32))
            m.bias.assign((rng.standard_normal(m.bias.shape) * 0.2).astype(np.float32))
        opt = lm.optim.SGD(list(conv1.parameters()) + list(conv2.parameters()), lr=0.05)

        def step(x, conv1=conv1, conv2=conv2, opt=opt):
            loss = (conv2(lm.relu(conv1(x))) ** 2).mean()
            opt.minimize(loss)
            return loss

        f = lm.compile(step, backend=be)
        x = rng.standard_normal((3, 2, 11, 9)).astype(np.float32)
        losses = [float(f(x)) for _ in range(3)]
        results.append((losses, conv1.weight.numpy().copy(), conv2.weight.numpy().copy()))
    (l0, a0, b0), (l1, a1, b1) = results
    np.testing.assert_allclose(l1, l0, rtol=1e-4)
    np.testing.assert_allclose(a1, a0, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(b1, b0, rtol=1e-4, atol=1e-5)


def test_an_epilogue_that_reads_the_output_by_position_stays_out_of_the_gemm():
    """A transpose of the conv's output cannot run at the GEMM's [row, 0, column] index."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    r = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)

    def fn(x, w, r):
        y = F.conv2d(x, w, padding=1)
        return lm.relu(y + y.transpose(0, 1, 3, 2) + r)

    got = lm.compile(fn, backend="llvm")(x, w, r)
    want = lm.compile(fn, backend="numpy")(x, w, r)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_bias_broadcast_along_one_spatial_axis_is_right():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    col = rng.standard_normal((1, 1, 1, 7)).astype(np.float32)
    row = rng.standard_normal((4, 5, 1)).astype(np.float32)

    def fn(x, w, col, row):
        return lm.relu(F.conv2d(x, w, padding=1) + col) * row

    got = lm.compile(fn, backend="llvm")(x, w, col, row)
    want = lm.compile(fn, backend="numpy")(x, w, col, row)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_slice_of_a_matrix_is_read_by_the_gemm_without_a_copy():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((40, 30)).astype(np.float32)
    b = rng.standard_normal((30, 20)).astype(np.float32)

    def fn(a, b):
        return a[3:35:2, 1:29] @ b[1:29, ::2]

    f = lm.compile(fn, backend="llvm")
    np.testing.assert_allclose(f(a, b), a[3:35:2, 1:29] @ b[1:29, ::2], rtol=1e-5, atol=1e-5)
    kinds = [line for line in f.ir("fused").splitlines() if "remark: kernels:" in line]
    assert kinds == ["# remark: kernels: 1 gemm"], kinds


def test_kernel_cache_keys_follow_the_code_generators_source():
    """A cached object code from another version of the code generator (the GEMM's calling
    convention changed under an unchanged IR text) must never be loaded: it crashed."""
    from lamina.backends.llvm import codegen, llvm_backend

    assert llvm_backend.versions()["codegen"].endswith(codegen.source_digest())
    assert len(codegen.source_digest()) == 16


def test_an_epilogue_over_an_output_with_a_trailing_axis_of_one_is_right():
    """Regression (checker seed 3, program 681): a conv output [N, O, 2, 1] fused with its
    epilogue put the GEMM's column index on the size-1 axis, which a broadcast zeroes: half
    the values were read from the wrong column (then NaN from uninitialized memory)."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 3, 3, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3, 1, 3)).astype(np.float32)
    d = np.full((1, 1, 1, 1), 3.0, np.float32)

    def fn(x, w, d):
        y = lm.conv(x, w, stride=(2, 1), dilation=(2, 1))  # [3, 2, 2, 1]
        return lm.sigmoid(y % d) * lm.tanh(y)

    got = lm.compile(fn, backend="llvm")(x, w, d)
    np.testing.assert_allclose(got, lm.compile(fn, backend="numpy")(x, w, d), rtol=1e-5,
                               atol=1e-6)


@pytest.mark.parametrize("n,c,h,o,kw", [
    (6, 1, 12, 5, {"padding": 1}),                  # 9 (n, q) pairs: patches as A
    (3, 4, 10, 6, {"padding": 1}),                  # 36 pairs: weights as A, patches as B
    (2, 3, 11, 4, {"stride": 2, "dilation": 2}),
    (5, 2, 9, 3, {"padding": (2, 0)}),
], ids=["few_pairs", "many_pairs", "strided_dilated", "uneven_padding"])
def test_weight_gradients_in_both_gemm_orientations_match_numpy(n, c, h, o, kw):
    """A conv's weight gradient runs as one GEMM per input channel, summed, in the orientation
    that suits its number of (image, tap) pairs (passes/expand_conv.py ``_by_input_channel``)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, c, h, h + 1)).astype(np.float32)
    w = rng.standard_normal((o, c, 3, 3)).astype(np.float32)
    dy_shape = nn.functional.conv2d(x, w, **kw).shape

    def f(x, w, dy):
        return lm.grad(lambda w: (nn.functional.conv2d(x, w, **kw) * dy).sum())(w)

    dy = rng.standard_normal(dy_shape).astype(np.float32)
    got = lm.compile(f, backend="llvm")(x, w, dy)
    want = lm.compile(f, backend="numpy")(x.astype(np.float64), w.astype(np.float64),
                                          dy.astype(np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_a_size_one_axis_dropped_by_a_reshape_keeps_its_slice_offset():
    """Regression (checker seed 22, program 5510): slicing [1:2] of the last axis leaves a
    size-1 axis whose table holds the start offset; a reshape that dropped the axis dropped
    the offset too, so the GEMM read its operand one element early."""
    t = [np.arange(1) * 12, np.arange(2) * 6, np.arange(2) * 3, np.arange(3)]
    sliced = [x[a:b] for x, a, b in zip(t, (0, 0, 0, 1), (1, 2, 2, 2))]
    tables = go._reshape(sliced, [1, 2, 2, 1], [1, 2, 2])
    flat = np.add.outer(np.add.outer(tables[0], tables[1]), tables[2]).ravel()
    np.testing.assert_array_equal(flat, [1, 4, 7, 10])
    x = np.arange(8, dtype=np.float64).reshape(1, 2, 2, 2) + 1
    w = np.arange(12, dtype=np.float64).reshape(2, 3, 2, 1) + 1

    def f(x):  # every output sits in a hole of the stride: all zeros
        return nn.functional.conv_transpose2d(x, w, stride=(1, 2), padding=(1, 1),
                                              dilation=(1, 2))

    np.testing.assert_array_equal(lm.compile(f, backend="llvm")(x), np.zeros((1, 3, 1, 1)))
