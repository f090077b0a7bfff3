"""Pooling against PyTorch (a test-only oracle): max_pool1d/2d (padding, dilation, ceil_mode;
the gradient to the first maximum of a window on ties, NaN), avg_pool1d/2d (count_include_pad,
ceil_mode, divisor_override), adaptive_avg_pool1d/2d, on every backend (triton under its
interpreter); the errors PyTorch raises, with lamina's messages."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, INTERPRETER

import lamina as lm

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F = lm.nn.functional

ALL = list(BACKENDS) + (["triton"] if INTERPRETER else [])


def _check(fn, tfn, x, be, rtol=1e-5, atol=1e-6):
    """Forward and gradient of ``fn`` (lamina) against ``tfn`` (torch) at ``x``."""
    tx = torch.tensor(x, requires_grad=True)
    ty = tfn(tx)
    o = np.random.default_rng(7).standard_normal(tuple(ty.shape)).astype(x.dtype)
    (ty * torch.tensor(o)).sum().backward()
    y = lm.compile(fn, backend=be)(x)
    assert y.shape == tuple(ty.shape) and y.dtype == x.dtype
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=rtol, atol=atol)
    g = lm.compile(lm.grad(lambda x, o: (fn(x) * o).sum()), backend=be)(x, o)
    np.testing.assert_allclose(g, tx.grad.numpy(), rtol=rtol, atol=atol)


def _distinct(shape, seed=0):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape) / n * 4 - 2).astype(np.float32)


# (input shape, kernel, stride, padding, dilation, ceil_mode)
MAX = {
    "2d_2x2": ((2, 3, 6, 6), 2, None, 0, 1, False),
    "2d_3x3_s2_pad1": ((1, 2, 7, 5), 3, 2, 1, 1, False),
    "2d_ceil": ((2, 1, 7, 6), (3, 2), (2, 2), (1, 0), 1, True),
    "2d_dilation_overlap": ((1, 2, 8, 7), 2, 1, 1, (2, 3), False),
    "2d_stride_gt_kernel": ((1, 1, 9, 9), 2, 3, 0, 1, True),
    "1d_k3_s1": ((3, 2, 10), 3, 1, 1, 1, False),
    "1d_ceil_dilation": ((1, 2, 11), 3, 2, 1, 2, True),
    "2d_ceil_kernel_beyond_input": ((1, 2, 2, 3), 3, 2, 0, 1, True),
}


@pytest.mark.parametrize("be", ALL)
@pytest.mark.parametrize("name", sorted(MAX))
def test_max_pool_matches_torch(name, be):
    shape, k, s, p, d, ceil = MAX[name]
    r = len(shape) - 2
    fn = F.max_pool1d if r == 1 else F.max_pool2d
    tfn = TF.max_pool1d if r == 1 else TF.max_pool2d
    kw = dict(stride=s, padding=p, dilation=d, ceil_mode=ceil)
    _check(lambda x: fn(x, k, **kw), lambda x: tfn(x, k, **kw), _distinct(shape), be)


@pytest.mark.parametrize("be", ALL)
def test_max_pool_ties_send_the_gradient_to_the_first_maximum(be):
    """PyTorch's rule: in scan order, the first element equal to the window's max gets it
    (overlapping windows add up); a relu'd input is full of ties at 0."""
    rng = np.random.default_rng(1)
    x = np.round(rng.uniform(-1, 1, (2, 2, 6, 6))).astype(np.float32)
    x[0, 0] = 0.0  # a window of equal values
    for kw in (dict(kernel_size=2), dict(kernel_size=3, stride=1, padding=1),
               dict(kernel_size=(2, 3), stride=(1, 2), ceil_mode=True)):
        _check(lambda x, kw=kw: F.max_pool2d(x, **kw), lambda x, kw=kw: TF.max_pool2d(x, **kw),
               x, be)


def test_max_pool_propagates_nan_as_torch():
    x = _distinct((1, 1, 4, 4))
    x[0, 0, 0, 1] = np.nan
    x[0, 0, 3, 3] = np.nan
    want = TF.max_pool2d(torch.tensor(x), 2).numpy()
    for be in ("numpy", "llvm"):
        got = lm.compile(lambda x: F.max_pool2d(x, 2), backend=be)(x)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
        np.testing.assert_array_equal(got[~np.isnan(got)], want[~np.isnan(want)])


# (input shape, kernel, stride, padding, ceil_mode, count_include_pad, divisor_override)
AVG = {
    "2d_2x2": ((2, 3, 6, 6), 2, None, 0, False, True, None),
    "2d_pad_include": ((1, 2, 7, 5), 3, 2, 1, False, True, None),
    "2d_pad_exclude": ((1, 2, 7, 5), 3, 2, 1, False, False, None),
    "2d_ceil_include": ((2, 1, 7, 6), (3, 2), 2, (1, 1), True, True, None),
    "2d_ceil_exclude": ((2, 1, 7, 6), (3, 2), 2, (1, 1), True, False, None),
    "2d_divisor_override": ((1, 2, 5, 5), 2, 1, 1, False, True, 3),
    "1d_pad_exclude_ceil": ((3, 2, 10), 3, 2, 1, True, False, None),
    "1d_k1": ((1, 1, 4), 1, 2, 0, False, True, None),
    "1d_ceil_kernel_beyond_input": ((2, 1, 2), 3, 2, 0, True, True, None),
}


@pytest.mark.parametrize("be", ALL)
@pytest.mark.parametrize("name", sorted(AVG))
def test_avg_pool_matches_torch(name, be):
    shape, k, s, p, ceil, incl, div = AVG[name]
    r = len(shape) - 2
    kw = dict(stride=s, padding=p, ceil_mode=ceil, count_include_pad=incl)
    if r == 2:
        kw["divisor_override"] = div
    fn = F.avg_pool1d if r == 1 else F.avg_pool2d
    tfn = TF.avg_pool1d if r == 1 else TF.avg_pool2d
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    _check(lambda x: fn(x, k, **kw), lambda x: tfn(x, k, **kw), x, be)


@pytest.mark.parametrize("be", ALL)
@pytest.mark.parametrize("size", [1, (3, 2), (None, 2), (7, 5), (4, 1)])
def test_adaptive_avg_pool2d_matches_torch(size, be):
    x = np.random.default_rng(3).standard_normal((2, 3, 7, 5)).astype(np.float32)
    _check(lambda x: F.adaptive_avg_pool2d(x, size), lambda x: TF.adaptive_avg_pool2d(x, size),
           x, be)


def test_adaptive_avg_pool1d_and_unbatched_inputs():
    x = np.random.default_rng(4).standard_normal((3, 10)).astype(np.float32)
    for size in (1, 3, 4):
        want = TF.adaptive_avg_pool1d(torch.tensor(x), size).numpy()
        np.testing.assert_allclose(F.adaptive_avg_pool1d(x, size), want, rtol=1e-5, atol=1e-6)
    x = _distinct((2, 6, 6))
    np.testing.assert_allclose(F.max_pool2d(x, 2), TF.max_pool2d(torch.tensor(x), 2).numpy())
    np.testing.assert_allclose(F.avg_pool2d(x, 3, 1, 1), TF.avg_pool2d(torch.tensor(x), 3, 1,
                                                                       1).numpy(), rtol=1e-6,
                               atol=1e-6)


def test_lm_names_are_rank_generic():
    x = _distinct((2, 3, 6, 8))
    np.testing.assert_allclose(lm.max_pool(x, 2), TF.max_pool2d(torch.tensor(x), 2).numpy())
    x1 = x.reshape(6, 6, 8)
    np.testing.assert_allclose(lm.avg_pool(x1, (3,), 1),
                               TF.avg_pool1d(torch.tensor(x1), 3, 1).numpy(), rtol=1e-6)
    with pytest.raises(lm.ShapeError, match=r"\[N, C, L\] or \[C, L\] for a 1-D"):
        lm.avg_pool(x, (3,), 1)


@pytest.mark.parametrize("be", ALL)
def test_zero_batch_pools(be):
    x = np.zeros((0, 2, 5, 5), np.float32)
    f = lm.compile(lambda x: (F.max_pool2d(x, 2), F.avg_pool2d(x, 3, 1, 1)), backend=be)
    a, b = f(x)
    assert a.shape == (0, 2, 2, 2) and b.shape == (0, 2, 5, 5)


def test_pool_errors_name_the_problem():
    x = np.ones((1, 2, 5, 5), np.float32)
    with pytest.raises(lm.LaminaError, match=r"padding \(2\) must be at most half the kernel"):
        F.max_pool2d(x, 3, padding=2)
    with pytest.raises(lm.ShapeError, match="too small for the kernel"):
        F.max_pool2d(x, 6)
    with pytest.raises(lm.ShapeError, match="too small for the kernel"):
        F.max_pool2d(x, 3, dilation=3)
    with pytest.raises(lm.LaminaError, match="return_indices"):
        F.max_pool2d(x, 2, return_indices=True)
    with pytest.raises(lm.LaminaError, match="stride must be >= 1"):
        F.avg_pool2d(x, 2, stride=0)
    with pytest.raises(lm.LaminaError, match="divisor_override must be positive"):
        F.avg_pool2d(x, 2, divisor_override=0)
    with pytest.raises(lm.ShapeError, match="spatial axis 1 of .* is empty"):
        F.max_pool2d(np.ones((1, 2, 5, 0), np.float32), 1)
    with pytest.raises(lm.ShapeError, match=r"the input must be \[N, C, H, W\] or \[C, H, W\]"):
        F.avg_pool2d(np.ones((5, 5), np.float32), 2)
    with pytest.raises(lm.ShapeError, match="adaptive_avg_pool2d: the input must have 3 or 4"):
        F.adaptive_avg_pool2d(np.ones(5, np.float32), 1)


def test_max_pool_is_one_fused_loop_on_llvm():
    """The taps of a window are slices of one input: forward is a single loop kernel."""
    x = np.ones((2, 3, 8, 8), np.float32)
    f = lm.compile(lambda x: F.max_pool2d(x, 2), backend="llvm")
    f(x)
    kernels = [line for line in f.ir("fused").splitlines() if "= kernel @" in line]
    assert len(kernels) == 1, kernels
