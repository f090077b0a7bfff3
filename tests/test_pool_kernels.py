"""Pooling's loop kernels on llvm (backends/llvm/pooling.py): the structure of a CNN step's
fused graph (one kernel per pooling pass, ReLU's backward fused into the gradient's), and the
kernels' edge cases against PyTorch: windows that end in padding or beyond the input, windows
that do not reach the last rows, gaps between windows, overlapping windows, -inf and NaN,
signed zeros, float64."""

from __future__ import annotations

import numpy as np
import pytest

import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm.kernels import classify

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F = lm.nn.functional


def _kernels(fc, *args):
    """The kernel nodes of ``fc``'s planned graph for ``args``."""
    return [n for n in fc.lower(*args).graph.nodes if n.op == "kernel"]


def _ops(k) -> list[str]:
    return [n.op for n in k.region.nodes]


def _torch_grads(tfn, x, o):
    tx = torch.tensor(x, requires_grad=True)
    ty = tfn(tx)
    (ty * torch.tensor(o)).sum().backward()
    return ty.detach().numpy(), tx.grad.numpy()


def _lamina_grads(fn, x, o):
    y = lm.compile(fn, backend="llvm")(x)
    g = lm.compile(lm.grad(lambda x, o: (fn(x) * o).sum()), backend="llvm")(x, o)
    return y, g


def _check(fn, tfn, x, seed=3):
    o = np.random.default_rng(seed).standard_normal(
        tuple(tfn(torch.tensor(x)).shape)).astype(x.dtype)
    ty, tg = _torch_grads(tfn, x, o)
    y, g = _lamina_grads(fn, x, o)
    np.testing.assert_allclose(y, ty, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(g, tg, rtol=1e-6, atol=1e-7)
    return y, g


class _CNN(nn.Module):
    def __init__(self):
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.head = nn.Linear(6 * 2 * 2, 10)

    def __call__(self, x):
        x = F.max_pool2d(lm.relu(self.c1(x)), 2)
        x = F.max_pool2d(lm.relu(self.c2(x)), 2)
        return self.head(x.reshape(x.shape[0], -1))


def test_cnn_step_has_one_pooling_kernel_per_pass():
    """The benchmark's CNN step (small): each max_pool2d is one loop kernel forward and one
    window kernel backward that also applies ReLU's backward (no slice/where chains); the
    step trains as on numpy."""
    rng = np.random.default_rng(0)
    x = rng.random((4, 1, 8, 8)).astype(np.float32)
    y = (np.arange(4) % 10).astype(np.int64)
    losses = {}
    for be in ("numpy", "llvm"):
        cnn = _CNN()
        for i, p in enumerate(cnn.parameters()):
            p.assign(np.random.default_rng(i).standard_normal(p.shape).astype(np.float32) * 0.3)
        opt = optim.SGD(cnn.parameters(), lr=0.1)

        def step(x, y, cnn=cnn, opt=opt):
            loss = F.cross_entropy(cnn(x), y)
            opt.minimize(loss)
            return loss

        fc = lm.compile(step, backend=be)
        losses[be] = [float(fc(x, y)) for _ in range(3)]
        if be == "llvm":
            ks = _kernels(fc, x, y)
    np.testing.assert_allclose(losses["llvm"], losses["numpy"], rtol=1e-4)
    forward = [k for k in ks if "max_pool" in _ops(k)]
    backward = [k for k in ks if "max_pool_grad" in _ops(k)]
    assert len(forward) == 2 and len(backward) == 2, [_ops(k) for k in ks]
    assert all(classify(k) == "loop" for k in forward)
    for k in backward:
        assert classify(k) == "window"
        assert k.region.outputs[0].op == "where"  # ReLU's backward, written per element
    assert not any("slice" in _ops(k) for k in ks)


def test_overlapping_windows_accumulate_in_a_kernel_of_their_own():
    """3x3 windows of stride 2 overlap: the gradient adds, so nothing is fused after it."""
    x = np.random.default_rng(1).standard_normal((2, 3, 9, 8)).astype(np.float32)
    o = np.ones((2, 3, 4, 3), np.float32)
    f = lm.compile(lm.grad(lambda x, o: (F.max_pool2d(lm.relu(x), 3, 2) * o).sum()),
                   backend="llvm")
    grad_kernels = [k for k in _kernels(f, x, o) if "max_pool_grad" in _ops(k)]
    assert len(grad_kernels) == 1
    assert grad_kernels[0].region.outputs[0].op == "max_pool_grad"
    _check(lambda x: F.max_pool2d(lm.relu(x), 3, 2), lambda x: TF.max_pool2d(TF.relu(x), 3, 2),
           x)


# (input shape, kernel, stride, padding, dilation, ceil_mode): the geometries the tiled
# (non-overlapping) kernel handles apart
TILED = {
    "exact": ((2, 3, 8, 6), 2, 2, 0, 1, False),
    "leftover_rows_and_columns": ((2, 2, 9, 7), 2, 2, 0, 1, False),
    "padding_both_sides": ((1, 2, 7, 8), 3, 3, 1, 1, False),
    "ceil_window_beyond_input": ((2, 1, 7, 5), 2, 2, 0, 1, True),
    "gap_between_windows": ((1, 2, 10, 11), 2, 3, 1, 1, True),
    "dilated_cell": ((1, 2, 9, 9), 2, 3, 0, (1, 2), False),
    "1d": ((3, 2, 13), 3, 4, 1, 1, True),
    "stride_differs_per_axis": ((2, 2, 6, 9), (2, 3), (2, 3), 0, 1, False),
}


@pytest.mark.parametrize("name", sorted(TILED))
def test_tiled_max_pool_with_relu_matches_torch(name):
    shape, k, s, p, d, ceil = TILED[name]
    r = len(shape) - 2
    fn, tfn = (F.max_pool1d, TF.max_pool1d) if r == 1 else (F.max_pool2d, TF.max_pool2d)
    rng = np.random.default_rng(2)
    x = (rng.permutation(int(np.prod(shape))).reshape(shape) / np.prod(shape) * 4 - 2)
    x = x.astype(np.float32)
    kw = dict(stride=s, padding=p, dilation=d, ceil_mode=ceil)
    _check(lambda x: fn(lm.relu(x), k, **kw), lambda x: tfn(TF.relu(x), k, **kw), x)


@pytest.mark.parametrize("name", ["exact", "leftover_rows_and_columns", "padding_both_sides",
                                  "gap_between_windows", "1d"])
@pytest.mark.parametrize("include_pad", [True, False])
def test_tiled_avg_pool_matches_torch(name, include_pad):
    shape, k, s, p, d, ceil = TILED[name]
    r = len(shape) - 2
    fn, tfn = (F.avg_pool1d, TF.avg_pool1d) if r == 1 else (F.avg_pool2d, TF.avg_pool2d)
    x = np.random.default_rng(4).standard_normal(shape).astype(np.float32)
    kw = dict(stride=s, padding=p, ceil_mode=ceil, count_include_pad=include_pad)
    _check(lambda x: fn(x, k, **kw) * 2.0, lambda x: tfn(x, k, **kw) * 2.0, x)


@pytest.mark.parametrize("stride", [2, 1])
def test_window_of_minus_infinity_sends_its_gradient_to_the_first_input_element(stride):
    """PyTorch starts from the first element of the window inside the input: with padding
    (which reads -inf) and an input of -inf, that element gets the gradient, not the pad."""
    x = np.full((1, 1, 4, 4), -np.inf, np.float32)
    x[0, 0, 3, 3] = 1.0
    _check(lambda x: F.max_pool2d(x, 3, stride, 1), lambda x: TF.max_pool2d(x, 3, stride, 1), x)


@pytest.mark.parametrize("stride", [2, 1])
def test_nan_propagates_and_the_last_nan_takes_the_gradient(stride):
    x = np.random.default_rng(5).standard_normal((1, 2, 6, 6)).astype(np.float32)
    x[0, 0, 0, 1] = x[0, 0, 1, 0] = np.nan  # two in one 2x2 window
    x[0, 1, 4, 4] = np.nan
    o = np.random.default_rng(6).standard_normal(
        (1, 2, 3, 3) if stride == 2 else (1, 2, 5, 5)).astype(np.float32)
    ty, tg = _torch_grads(lambda t: TF.max_pool2d(t, 2, stride), x, o)
    y, g = _lamina_grads(lambda x: F.max_pool2d(x, 2, stride), x, o)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(ty))
    np.testing.assert_allclose(y[~np.isnan(y)], ty[~np.isnan(ty)])
    np.testing.assert_allclose(g, tg, rtol=1e-6)


def test_ties_and_signed_zeros_keep_the_first_maximum():
    x = np.array([[[[-0.0, 0.0, 1.0, 1.0], [0.0, -0.0, 1.0, 1.0]]]], np.float32)
    y, g = _check(lambda x: F.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2), x)
    assert np.signbit(y[0, 0, 0, 0])  # the first of the tied zeros, as PyTorch
    np.testing.assert_array_equal(g[0, 0] != 0, [[True, False, True, False],
                                                 [False, False, False, False]])


def test_float64_and_a_batch_of_one_run_on_channels():
    x = np.random.default_rng(7).standard_normal((1, 5, 6, 6))
    _check(lambda x: F.max_pool2d(x, 2), lambda x: TF.max_pool2d(x, 2), x)
    _check(lambda x: F.avg_pool2d(x, 3, 2, 1), lambda x: TF.avg_pool2d(x, 3, 2, 1), x)


def test_global_average_pool_is_a_reduction_not_a_window():
    """adaptive_avg_pool2d(x, 1) is the mean over H, W: a row reduction kernel."""
    x = np.random.default_rng(8).standard_normal((2, 3, 5, 4)).astype(np.float32)
    o = np.ones((2, 3, 1, 1), np.float32)
    f = lm.compile(lm.grad(lambda x, o: (F.adaptive_avg_pool2d(x, 1) * o).sum()),
                   backend="llvm")
    ops = {op for k in _kernels(f, x, o) for op in _ops(k)}
    assert not ops & {"avg_pool", "avg_pool_grad"}
    _check(lambda x: F.adaptive_avg_pool2d(x, 1), lambda x: TF.adaptive_avg_pool2d(x, 1), x)


def _random_config(rng):
    r = int(rng.integers(1, 3))
    shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4))) + tuple(
        int(rng.integers(1, 9)) for _ in range(r))
    k, s, p, d = [], [], [], []
    for n in shape[2:]:
        dd = int(rng.choice([1, 1, 2]))
        kk = int(rng.integers(1, min(3, (n - 1) // dd + 1) + 1))
        k.append(kk), d.append(dd), s.append(int(rng.choice([1, 2, kk, kk + 1])))
        p.append(int(rng.integers(0, kk // 2 + 1)))
    return shape, tuple(k), tuple(s), tuple(p), tuple(d), bool(rng.random() < 0.4)


@pytest.mark.parametrize("seed", range(12))
def test_random_geometries_match_torch(seed):
    """Random pooling geometries (the checker's ranges), max with ReLU before it and avg,
    forward and gradient, against PyTorch."""
    rng = np.random.default_rng(100 + seed)
    shape, k, s, p, d, ceil = _random_config(rng)
    r = len(shape) - 2
    tmax, tavg = (TF.max_pool1d, TF.avg_pool1d) if r == 1 else (TF.max_pool2d, TF.avg_pool2d)
    lmax, lavg = (F.max_pool1d, F.avg_pool1d) if r == 1 else (F.max_pool2d, F.avg_pool2d)
    try:
        tmax(torch.zeros(shape), k, s, p, d, ceil)
    except RuntimeError:
        pytest.skip("PyTorch rejects this geometry")
    n = int(np.prod(shape))
    x = (rng.permutation(n).reshape(shape) / n * 4 - 2).astype(np.float32)
    _check(lambda x: lmax(lm.relu(x), k, s, p, d, ceil),
           lambda x: tmax(TF.relu(x), k, s, p, d, ceil), x)
    inc = bool(rng.random() < 0.5)
    _check(lambda x: lavg(x, k, s, p, ceil, inc), lambda x: tavg(x, k, s, p, ceil, inc), x)
