"""Convolution against PyTorch (a test-only oracle): ``lm.conv`` / ``nn.functional.conv1d/2d``
and ``conv_transpose1d/2d`` forward and both gradients, for strides that skip rows, padding
beyond the kernel, dilation, groups, odd sizes, batch 0/1, on every backend (triton under its
interpreter); float64 finite differences; the type rule's errors; the llvm expansion."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import BACKENDS, INTERPRETER
from helpers import directional_fd

import lamina as lm
from lamina.passes.expand_conv import expand_conv

torch = pytest.importorskip("torch")
TF = torch.nn.functional
F = lm.nn.functional

ALL = list(BACKENDS) + (["triton"] if INTERPRETER else [])

# (x shape, w shape, stride, padding, dilation, groups)
CONFIGS = {
    "2d_3x3_pad1": ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    "2d_stride3_skips_rows": ((1, 2, 8, 7), (3, 2, 3, 2), (3, 2), 0, 1, 1),
    "2d_dilation_groups": ((2, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2),
    "2d_depthwise": ((1, 3, 5, 5), (3, 1, 3, 3), 2, 1, 1, 3),
    "2d_pad_beyond_kernel": ((1, 1, 3, 4), (2, 1, 2, 2), 2, 3, 1, 1),
    "2d_1x1": ((3, 4, 3, 2), (5, 4, 1, 1), 1, 0, 1, 1),
    "2d_1x1_strided": ((1, 2, 5, 5), (2, 2, 1, 1), 3, 0, 1, 1),
    "2d_channels1_kernel_3x1": ((1, 1, 7, 5), (1, 1, 3, 1), (1, 2), (1, 0), 1, 1),
    "1d_stride2": ((2, 3, 9), (2, 3, 4), 2, 1, 1, 1),
    "1d_dilation3_groups": ((1, 4, 11), (2, 2, 3), 1, 2, 3, 2),
    "1d_same": ((2, 2, 6), (3, 2, 4), 1, "same", 1, 1),
    "1d_valid": ((1, 2, 6), (1, 2, 6), 1, "valid", 1, 1),
    "2d_same_dilated": ((1, 2, 5, 6), (2, 2, 2, 3), 1, "same", (2, 1), 1),
}
TRITON_CONFIGS = {"2d_3x3_pad1", "2d_stride3_skips_rows", "2d_dilation_groups", "1d_same",
                  "2d_pad_beyond_kernel"}


def _cases():
    for name in CONFIGS:
        for be in ALL:
            if be == "triton" and name not in TRITON_CONFIGS:
                continue
            yield pytest.param(name, be, id=f"{name}-{be}")


def _torch_conv(r):
    return TF.conv1d if r == 1 else TF.conv2d


def _run_torch(fn, arrays, w_out):
    ts = [torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*ts)
    (y * torch.tensor(w_out)).sum().backward()
    return y.detach().numpy(), [t.grad.numpy() for t in ts]


@pytest.mark.parametrize("name, be", list(_cases()))
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv_and_its_gradients_match_torch(name, be):
    xs, ws, stride, padding, dilation, groups = CONFIGS[name]
    rng = np.random.default_rng(0)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[0]).astype(np.float32)
    r = len(xs) - 2
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    conv = F.conv1d if r == 1 else F.conv2d

    def torch_fn(x, w, b):
        return _torch_conv(r)(x, w, b, **kw)

    y_t = torch_fn(torch.tensor(x), torch.tensor(w), torch.tensor(b)).numpy()
    w_out = rng.standard_normal(y_t.shape).astype(np.float32)
    want, grads = _run_torch(torch_fn, [x, w, b], w_out)

    fy = lm.compile(lambda x, w, b: conv(x, w, b, **kw), backend=be)
    fg = lm.compile(lm.grad(lambda x, w, b, o: (conv(x, w, b, **kw) * o).sum(),
                            argnums=(0, 1, 2)), backend=be)
    y = fy(x, w, b)
    assert y.shape == want.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    for got, exp in zip(fg(x, w, b, w_out), grads):
        assert got.shape == exp.shape
        np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", ["2d_stride3_skips_rows", "2d_pad_beyond_kernel",
                                  "1d_dilation3_groups", "2d_dilation_groups"])
def test_conv_gradients_match_float64_finite_differences(name):
    xs, ws, stride, padding, dilation, groups = CONFIGS[name]
    rng = np.random.default_rng(1)
    x, w = rng.standard_normal(xs), rng.standard_normal(ws)
    kw = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = lm.conv(x, w, **kw)
    o = rng.standard_normal(y.shape)

    def loss(x, w):
        return (lm.conv(x, w, **kw) * o).sum()

    gx, gw = lm.compile(lm.grad(loss, argnums=(0, 1)), backend="llvm")(x, w)
    vx, vw = rng.standard_normal(xs), rng.standard_normal(ws)
    analytic = float((gx * vx).sum() + (gw * vw).sum())
    numeric = directional_fd(lambda a, b: float((lm.conv(a, b, **kw) * o).sum()),
                             [x, w], [vx, vw])
    np.testing.assert_allclose(analytic, numeric, rtol=1e-7, atol=1e-9)


def test_second_order_gradient_of_conv(backend):
    """The gradients are convs too: the gradient of a gradient works (and matches torch)."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1, 2, 5, 5))
    w = rng.standard_normal((2, 2, 3, 3))

    def inner(x, w):
        gx = lm.grad(lambda x: (lm.conv(x, w, stride=2, padding=1) ** 2).sum())(x)
        return (gx * gx).sum()

    got = lm.compile(lm.grad(inner, argnums=1), backend=backend)(x, w)
    tx, tw = torch.tensor(x, requires_grad=True), torch.tensor(w, requires_grad=True)
    (gx,) = torch.autograd.grad((TF.conv2d(tx, tw, stride=2, padding=1) ** 2).sum(), tx,
                                create_graph=True)
    (gw,) = torch.autograd.grad((gx * gx).sum(), tw)
    np.testing.assert_allclose(got, gw.numpy(), rtol=1e-10, atol=1e-10)


# (x shape, w shape [in, out/groups, *k], stride, padding, output_padding, dilation, groups)
TRANSPOSED = {
    "2d_stride2_outpad": ((2, 3, 4, 3), (3, 2, 3, 3), 2, 1, 1, 1, 1),
    "2d_groups_dilation": ((1, 4, 3, 4), (4, 1, 2, 3), (1, 2), (0, 1), (0, 1), (2, 1), 2),
    "2d_pad_crops": ((1, 2, 3, 3), (2, 2, 2, 2), 1, 2, 0, 3, 1),
    "1d_stride3": ((2, 2, 5), (2, 3, 4), 3, 2, 2, 1, 1),
    "1d_batch1_channels1": ((1, 1, 1), (1, 1, 3), 2, 0, 0, 1, 1),
}


@pytest.mark.parametrize("be", ALL)
@pytest.mark.parametrize("name", sorted(TRANSPOSED))
def test_conv_transpose_and_its_gradients_match_torch(name, be):
    xs, ws, stride, padding, out_pad, dilation, groups = TRANSPOSED[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(xs).astype(np.float32)
    w = rng.standard_normal(ws).astype(np.float32)
    b = rng.standard_normal(ws[1] * groups).astype(np.float32)
    r = len(xs) - 2
    kw = dict(stride=stride, padding=padding, output_padding=out_pad, groups=groups,
              dilation=dilation)
    tfn = TF.conv_transpose1d if r == 1 else TF.conv_transpose2d
    fn = F.conv_transpose1d if r == 1 else F.conv_transpose2d
    y_t = tfn(torch.tensor(x), torch.tensor(w), torch.tensor(b), **kw)
    o = rng.standard_normal(tuple(y_t.shape)).astype(np.float32)
    want, grads = _run_torch(lambda x, w, b: tfn(x, w, b, **kw), [x, w, b], o)
    y = lm.compile(lambda x, w, b: fn(x, w, b, **kw), backend=be)(x, w, b)
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    g = lm.compile(lm.grad(lambda x, w, b: (fn(x, w, b, **kw) * o).sum(), argnums=(0, 1, 2)),
                   backend=be)(x, w, b)
    for got, exp in zip(g, grads):
        np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("be", ALL)
def test_zero_batch_and_empty_output_channels(be):
    x = np.zeros((0, 3, 5, 5), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    f = lm.compile(lambda x, w: lm.conv(x, w, padding=1), backend=be)
    assert f(x, w).shape == (0, 4, 5, 5)
    gw = lm.compile(lm.grad(lambda x, w: lm.conv(x, w, padding=1).sum(), argnums=1),
                    backend=be)(x, w)
    assert gw.shape == w.shape and not gw.any()
    x = np.ones((2, 3, 4, 4), np.float32)
    y = lm.compile(lambda x, w: lm.conv(x, w), backend=be)(x, np.ones((0, 3, 2, 2),
                                                                           np.float32))
    assert y.shape == (2, 0, 3, 3)


def test_unbatched_input_and_lm_conv_pairs_of_padding():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    w = rng.standard_normal((2, 3, 3, 2)).astype(np.float32)
    want = TF.conv2d(torch.tensor(x), torch.tensor(w), padding=1).numpy()
    np.testing.assert_allclose(F.conv2d(x, w, padding=1), want, rtol=1e-5, atol=1e-5)
    # (lo, hi) pairs: asymmetric padding, as torch's F.pad then conv
    xp = np.pad(x[None], [(0, 0), (0, 0), (2, 0), (1, 3)])
    want = TF.conv2d(torch.tensor(xp), torch.tensor(w)).numpy()
    got = lm.compile(lambda x, w: lm.conv(x, w, padding=((2, 0), (1, 3))))(x[None], w)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_float64_and_promotion():
    x = np.ones((1, 2, 4, 4), np.float32)
    w = np.ones((1, 2, 3, 3))
    y = lm.compile(lambda x, w: lm.conv(x, w))(x, w)  # numpy's promotion
    assert y.dtype == np.float64 and (y == 18).all()


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("x, w, kw, match", [
    ((1, 6, 5, 5), (4, 2, 3, 3), {"groups": 4}, r"input channels \(6\) not divisible by groups"),
    ((1, 4, 5, 5), (3, 2, 3, 3), {"groups": 2}, r"output channels \(3.*not divisible by groups"),
    ((1, 4, 5, 5), (4, 3, 3, 3), {}, r"takes 3 input channels per group.*4 channels"),
    ((1, 2, 3, 3), (1, 2, 5, 3), {}, r"kernel larger than the padded input on spatial axis 0"),
    ((1, 2, 3, 3), (1, 2, 3, 3), {"dilation": 2}, r"kernel larger than the padded input"),
    ((2, 5), (1, 2, 3, 3), {}, r"input must be \[N, C, H, W\] or \[C, H, W\]"),
    ((1, 2, 5, 5, 5), (1, 2, 1, 1, 1), {}, r"1-D\) or \[out, in/groups, kh, kw\]"),
])
def test_conv_errors_name_the_problem(x, w, kw, match):
    with pytest.raises(lm.ShapeError, match=match):
        lm.conv(np.ones(x, np.float32), np.ones(w, np.float32), **kw)


def test_conv_attribute_errors():
    x, w = np.ones((1, 2, 5, 5), np.float32), np.ones((1, 2, 3, 3), np.float32)
    with pytest.raises(lm.LaminaError, match="padding='same' needs stride 1"):
        F.conv2d(x, w, stride=2, padding="same")
    with pytest.raises(lm.LaminaError, match="'valid' or 'same'"):
        F.conv2d(x, w, padding="full")
    with pytest.raises(lm.LaminaError, match="stride must be >= 1"):
        F.conv2d(x, w, stride=0)
    with pytest.raises(lm.LaminaError, match="padding must be >= 0"):
        F.conv2d(x, w, padding=-1)
    with pytest.raises(lm.LaminaError, match="groups must be >= 1"):
        F.conv2d(x, w, groups=0)
    with pytest.raises(lm.LaminaError, match="stride needs 1 or 2 entries"):
        F.conv2d(x, w, stride=(1, 2, 3))
    with pytest.raises(lm.ShapeError, match="bias must be \\[1\\]"):
        F.conv2d(x, w, np.ones(3, np.float32))
    with pytest.raises(lm.ShapeError, match="weight must have 4 axes"):
        F.conv2d(x, np.ones((1, 2, 3), np.float32))
    with pytest.raises(lm.LaminaError, match="output_padding .2. must be smaller"):
        F.conv_transpose2d(x, np.ones((2, 1, 3, 3), np.float32), stride=2, output_padding=2)
    with pytest.raises(lm.ShapeError, match="is for 3 input channels"):
        F.conv_transpose2d(x, np.ones((3, 1, 3, 3), np.float32))


# --- lowering --------------------------------------------------------------------------------


def test_llvm_expands_conv_into_a_gather_and_a_gemm():
    x, w = np.ones((2, 3, 6, 6), np.float32), np.ones((4, 3, 3, 3), np.float32)
    f = lm.compile(lambda x, w: lm.relu(lm.conv(x, w, padding=1)), backend="llvm")
    f(x, w)
    assert "= conv(" in f.ir("dce")
    expanded = f.ir("expand_conv")
    assert "= conv(" not in expanded and "= take(" in expanded and "= matmul(" in expanded
    assert "gemm" in f.ir("fused")
    # a 1x1 conv of stride 1 is the matmul alone
    g = lm.trace(lambda x, w: lm.conv(x, w), x, np.ones((4, 3, 1, 1), np.float32))
    ops = [n.op for n in expand_conv(g).nodes]
    assert "take" not in ops and "matmul" in ops


def test_conv_training_kernels_compile_ahead_of_time_for_sm80_and_sm90():
    """The Triton kernels of a conv + max_pool step (the im2col gathers, tl.dot GEMMs, the
    pooling loops, forward and backward) compile to cubins without a GPU."""
    pytest.importorskip("triton")
    from test_triton_codegen import _sources_of

    from lamina.backends.triton import aot

    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)

    def step(x, w):
        return lm.grad(lambda w: F.max_pool2d(lm.relu(F.conv2d(x, w, padding=1)), 2).sum())(w)

    sources = _sources_of(step, x, w)
    assert any(s.kind == "gemm" for s in sources)
    for target in ("sm_80", "sm_90"):
        for src in sources:
            for s in [*src.prologue, src]:
                binary = aot.compile_source(s, target)
                assert binary.cubin[:4] == b"\x7fELF" and f".target {target}" in binary.ptx


@pytest.mark.parametrize("be", ["numpy", "llvm"])
def test_conv_step_survives_an_artifact(be, tmp_path):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((2, 3, 6, 6)).astype(np.float32)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)

    def f(x, w):
        y = F.max_pool2d(lm.relu(F.conv2d(x, w, padding=1, stride=(1, 2))), 2, ceil_mode=True)
        return y, lm.grad(lambda w: F.avg_pool2d(lm.conv(x, w), 2).sum())(w)

    fc = lm.compile(f, backend=be)
    want = fc(x, w)
    fc.save(str(tmp_path / "conv.lamina"))
    got = lm.load(str(tmp_path / "conv.lamina"))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
