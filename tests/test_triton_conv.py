"""The Triton backend's own conv lowering (``backends/triton/conv.py``): an implicit GEMM through
``tl.dot`` per conv kernel, with input tiles gathered by index arithmetic (no im2col tensor),
the padding as the load mask, an elementwise epilogue fused. Checked against the numpy reference
under Triton's interpreter (tiny sizes: the interpreter runs every program in Python) for 1-D and
2-D, stride, symmetric and asymmetric padding, dilation, groups, float32 and float64, batch 1 and
more, the gradients (conv nodes too: the same kernels) and a train step of a small conv net; the
kernels compile ahead of time for sm_80 and sm_90 (no GPU needed)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm

triton = pytest.importorskip("triton")
pytest.importorskip("torch", reason="Triton's interpreter needs torch (lamina[triton-test])")

from lamina.backends.triton import aot  # noqa: E402
from lamina.backends.triton.conv import conv_problem  # noqa: E402

F = lm.nn.functional
RNG = np.random.default_rng(11)
f32, f64 = np.float32, np.float64
BOTH = ("sm_80", "sm_90")


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")


def _randn(*shape, dtype=f32):
    return RNG.standard_normal(shape).astype(dtype)


def _kernels(fc):
    return [src for _, src in fc._variant().program.sources]


def _check(f, *args, compile_for=()):
    """``f`` on triton (under the interpreter) matches the numpy reference; every conv is
    lowered by the backend (no im2col gather, a ``tl.dot`` kernel per conv); with
    ``compile_for`` every kernel also compiles for those GPU targets."""
    fc = lm.compile(f, backend="triton")
    got = fc(*args)
    want = lm.compile(f, backend="numpy")(*args)
    got, want = ([np.asarray(x) for x in (r if isinstance(r, (tuple, list)) else [r])]
                 for r in (got, want))
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, (g.shape, g.dtype, w.shape, w.dtype)
        assert_close(g, w)
    convs = fc.ir("dce").count("= conv(")
    assert convs and fc.ir("fused").count("= conv(") == convs, "conv was expanded (im2col)"
    for target in compile_for:
        for src in _kernels(fc):
            for s in [*src.prologue, src]:
                b = aot.compile_source(s, target)
                assert b.cubin[:4] == b"\x7fELF" and f".target {target}" in b.ptx
    return fc


def _conv_kernels(fc):
    out = [s for s in _kernels(fc) if "conv" in s.source.splitlines()[0]]
    assert out, "no conv kernel"
    return out


# (x shape, w shape, stride, padding, dilation, groups)
FORWARD = {
    "1d_batch1": ((1, 2, 7), (3, 2, 3), 1, 0, 1, 1),
    "1d_stride2_pad1_batch2": ((2, 3, 9), (2, 3, 4), 2, 1, 1, 1),
    "1d_asymmetric_pad": ((2, 2, 6), (3, 2, 3), 1, ((2, 0),), 1, 1),
    "1d_dilation3_groups2": ((1, 4, 11), (4, 2, 3), 1, 2, 3, 2),
    "1d_pad_end_only_stride3": ((3, 1, 8), (2, 1, 2), 3, ((0, 2),), 1, 1),
    "2d_3x3_pad1": ((2, 3, 6, 5), (4, 3, 3, 3), 1, 1, 1, 1),
    "2d_stride_2_1_asymmetric": ((1, 2, 7, 6), (3, 2, 3, 2), (2, 1), ((1, 0), (0, 2)), 1, 1),
    "2d_dilation_groups": ((2, 4, 7, 6), (6, 2, 3, 2), (2, 1), (1, 2), (1, 2), 2),
    "2d_depthwise_stride2": ((1, 3, 5, 5), (3, 1, 3, 3), 2, 1, 1, 3),
    "2d_pad_beyond_kernel": ((1, 1, 3, 4), (2, 1, 2, 2), 2, 3, 1, 1),
    "2d_1x1": ((3, 4, 3, 2), (5, 4, 1, 1), 1, 0, 1, 1),
    "2d_kernel_3x1_stride_skips_rows": ((1, 2, 8, 7), (3, 2, 3, 1), 3, 0, 1, 1),
    # several row and column tiles (float64: 64 x 64 tiles), swept in the GEMM's grouped order
    "2d_many_tiles": ((1, 2, 12, 12), (70, 2, 3, 3), 1, 1, 1, 1),
}


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", sorted(FORWARD))
def test_conv_forward_matches_numpy(name, dtype):
    xs, ws, stride, padding, dilation, groups = FORWARD[name]
    x, w = _randn(*xs, dtype=dtype), _randn(*ws, dtype=dtype)
    fc = _check(lambda x, w: lm.conv(x, w, stride=stride, padding=padding, dilation=dilation,
                                     groups=groups), x, w)
    (src,) = _conv_kernels(fc)
    assert src.kind == "gemm" and "for k0 in range(" in src.source
    # float64 multiplies in float64; a broadcast tile (one row or column) multiplies and sums
    assert "tl.dot(" in src.source or dtype == f64


def test_bias_and_activation_are_the_conv_kernels_epilogue():
    x, w, b = _randn(2, 3, 6, 5), _randn(4, 3, 3, 3), _randn(4)
    r = _randn(2, 4, 6, 5)

    def f(x, w, b, r):
        return lm.relu(lm.conv(x, w, padding=1) + b.reshape(1, 4, 1, 1)) + r

    fc = _check(f, x, w, b, r)
    (src,) = _kernels(fc)  # one kernel: the conv, its bias, relu and residual
    assert "tl.dot(" in src.source and "tl.maximum" in src.source
    # the padding is the load mask: no padded copy of the input
    assert "other=0" in src.source and "= pad(" not in fc.ir("fused")


def test_no_im2col_tensor_in_memory():
    """The kernel's operands are the input and the weight themselves: nothing k-fold larger
    than the input is planned."""
    x, w = _randn(1, 2, 8, 8), _randn(3, 2, 3, 3)
    fc = _check(lambda x, w: lm.conv(x, w, padding=1), x, w)
    ((node, src),) = fc._variant().program.sources
    assert [v.shape for v in node.inputs] == [x.shape, w.shape]
    assert src.grid[1] == 1 and conv_problem(
        next(m for m in node.region.nodes if m.op == "conv")) == (64, 3, 18, 1)


def test_operands_are_read_through_their_views():
    """A transposed input and a reshaped weight are read in place by the conv kernel (strided
    loads, no copy); a computed operand is a kernel of its own."""
    x, w = _randn(3, 2, 5, 4), _randn(4 * 3 * 2 * 2)

    def f(x, w):
        return lm.conv(x.transpose(1, 0, 2, 3), w.reshape(4, 3, 2, 2), padding=((0, 1), (1, 0)))

    fc = _check(f, x, w)
    (src,) = _kernels(fc)
    assert "transpose" in src.source.splitlines()[0]
    fc = _check(lambda x, w: lm.conv(lm.exp(x), w), _randn(1, 2, 4), _randn(3, 2, 2))
    assert len(_kernels(fc)) == 2


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("name", ["1d_stride2_pad1_batch2", "1d_dilation3_groups2",
                                  "2d_stride_2_1_asymmetric", "2d_dilation_groups",
                                  "2d_pad_beyond_kernel"])
def test_conv_gradients_match_numpy(name, dtype):
    """Both gradients are conv nodes (a transposed conv, a correlation): the same lowering."""
    xs, ws, stride, padding, dilation, groups = FORWARD[name]
    x, w = _randn(*xs, dtype=dtype), _randn(*ws, dtype=dtype)

    def loss(x, w):
        y = lm.conv(x, w, stride=stride, padding=padding, dilation=dilation, groups=groups)
        return (lm.tanh(y) * y).sum()

    fc = _check(lm.grad(loss, argnums=(0, 1)), x, w)
    assert len(_conv_kernels(fc)) >= 2


def test_conv_transpose_matches_numpy():
    x, w = _randn(2, 4, 3, 4), _randn(4, 3, 3, 2)
    _check(lambda x, w: F.conv_transpose2d(x, w, stride=2, padding=1, output_padding=1,
                                           groups=2), x, w)


def test_train_step_of_a_small_conv_net_matches_numpy():
    """Two conv layers (a strided, grouped one with asymmetric padding), ReLU, pooling, a
    linear head, cross-entropy, SGD: the losses and the updated parameters agree with the numpy
    backend over three steps from the same weights."""
    nn = lm.nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c1 = nn.Conv2d(1, 4, 3, padding=1)
            self.c2 = nn.Conv2d(4, 4, 3, stride=2, padding=(1, 0), groups=2)
            self.fc = nn.Linear(4 * 2 * 1, 3)

        def __call__(self, x):
            h = F.max_pool2d(lm.relu(self.c1(x)), 2)
            h = lm.relu(self.c2(h))
            return self.fc(h.reshape(h.shape[0], -1))

    x = _randn(2, 1, 6, 6)
    y = np.array([0, 2], np.int64)
    start = {k: np.array(v) for k, v in Net().state_dict().items()}
    results = {}
    for be in ("numpy", "triton"):
        net = Net()
        net.load_state_dict(start)
        opt = lm.optim.SGD(net.parameters(), lr=0.1)

        @lm.compile(backend=be)
        def step(x, y):
            loss = F.cross_entropy(net(x), y)
            opt.minimize(loss)
            return loss

        losses = [float(step(x, y)) for _ in range(3)]
        results[be] = (losses, {k: np.array(v) for k, v in net.state_dict().items()}, step)
    want_loss, want_state, _ = results["numpy"]
    got_loss, got_state, fc = results["triton"]
    assert_close(np.array(got_loss), np.array(want_loss), rtol=1e-5, atol=1e-6)
    assert not np.allclose(want_state["c1.weight"], start["c1.weight"])  # it trained
    for k in want_state:
        assert_close(got_state[k], want_state[k], rtol=1e-5, atol=1e-6, err_msg=k)
    assert fc.ir("fused").count("= conv(") == fc.ir("dce").count("= conv(") >= 4
    assert len(_conv_kernels(fc)) >= 4  # two forward convs and their gradients


@pytest.mark.parametrize("dtype", [f32, f64], ids=["f32", "f64"])
@pytest.mark.parametrize("xs, ws, kw", [
    ((2, 3, 6, 5), (4, 3, 3, 3), {"padding": 1}),
    ((1, 4, 7, 6), (6, 2, 3, 2), {"stride": (2, 1), "padding": ((1, 0), (2, 1)),
                                  "dilation": (1, 2), "groups": 2}),
    ((1, 1, 5), (1, 1, 1), {}),  # M=5, one output channel, K=1: broadcast tiles
    ((1, 2, 3), (3, 2, 3), {}),  # one output position: the A tile is one row
    ((1, 3, 4, 4), (3, 1, 3, 3), {"groups": 3, "padding": 1}),  # depthwise: one column
    # one output channel, K over several steps (checker seed 5, program 30): a float64 tl.dot
    # of the broadcast weight column failed in Triton's sm_80 pipeline (TritonGPUPrefetch)
    ((1, 16, 16, 5), (1, 16, 3, 3), {"padding": ((2, 2), (4, 4)), "dilation": (1, 2)}),
])
def test_conv_kernels_and_gradients_compile_for_sm80_and_sm90(xs, ws, kw, dtype):
    """Without a GPU, through Triton's compiler; float64 shapes whose tiles are one row or one
    column included (Triton's sm_80 pipeline fails on a float64 tl.dot of a broadcast tile).
    Small integers as values: every sum is exact in float32 too, whatever its order."""
    x, w = (RNG.integers(-3, 4, s).astype(dtype) for s in (xs, ws))

    def f(x, w):
        return lm.grad(lambda x, w: (lm.conv(x, w, **kw) ** 2).sum(), argnums=(0, 1))(x, w)

    fc = _check(f, x, w, compile_for=BOTH)
    convs = _conv_kernels(fc)
    assert len(convs) == 3  # the forward conv and its two gradients
    # a tile of one row or column is padded with zeros to a tile of its own: tl.dot still
    assert all("tl.dot(" in s.source for s in convs)


@pytest.mark.parametrize("xs, ws", [((2, 2, 5), (0, 2, 3)), ((2, 0, 5), (2, 0, 3)),
                                    ((0, 2, 5), (3, 2, 3))],
                         ids=["no_output_channels", "no_input_channels", "no_batch"])
def test_empty_convs(xs, ws):
    x, w = _randn(*xs), _randn(*ws)
    _check(lambda x, w: lm.conv(x, w, padding=1) + 1.0, x, w, compile_for=("sm_80",))


def test_conv_and_scan_kernels_survive_an_artifact(tmp_path):
    """A saved triton artifact (its kernels' sources and sm_80/sm_90 cubins) loads and runs:
    the conv kernel is a "gemm" kernel, and a cumsum's "scan" kernel is a kind the loader
    accepts (it refused it before)."""
    x, w = _randn(1, 2, 3, 4), _randn(3, 2, 2, 2)

    def f(x, w):
        return lm.relu(lm.conv(x, w, padding=((1, 0), (0, 1)))), lm.cumsum(x, axis=3)

    fc = lm.compile(f, backend="triton")
    want = fc(x, w)
    kinds = {src.kind for src in _kernels(fc)}
    assert kinds == {"gemm", "scan"}
    fc.save(str(tmp_path / "conv.lamina"))
    got = lm.load(str(tmp_path / "conv.lamina"))(x, w)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


def test_an_axis_whose_only_tap_reads_padding():
    """Regression (checker seed 24, program 1250): one output row and a kernel of one tap
    along an axis make the tap's input position a constant (-padding); its bounds check was
    a Python bool and-ed into the load mask, which the interpreter rejects (and which is
    always false: every lane of that axis reads padding)."""
    x = _randn(2, 2, 2, 1, dtype=f64)
    w = _randn(1, 2, 1, 1)
    _check(lambda x, w: lm.conv(x, w, stride=(1, 3), padding=((1, 1), (1, 1)),
                                dilation=(1, 2)), x, w, compile_for=BOTH)
