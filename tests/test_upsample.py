"""``nn.functional.interpolate`` and ``nn.Upsample`` against PyTorch (a test-only oracle): the
same input -> the same output and the same input gradient of ``sum(out * r)`` for nearest,
nearest-exact, linear and bilinear (align_corners both ways), sizes and scale factors that
shrink, grow by integers and grow by fractions; on numpy and llvm, and a few cases on triton under
Triton's interpreter. Gradients also against float64 finite differences; the integer-factor
nearest path is a reshape + broadcast (no gather); bad arguments give clear errors.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, directional_fd

import lamina as lm
from lamina import nn

torch = pytest.importorskip("torch")

F = nn.functional
F32 = np.float32


def _randn(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


def _lamina(fn, x, r, backend):
    """(fn(x), d sum(fn(x) * r) / dx), one compiled call."""

    def step(x, r):
        def loss(v):
            out = fn(v)
            return (out * r).sum(), out

        (_, out), g = lm.value_and_grad(loss, has_aux=True)(x)
        return out, g

    return lm.compile(step, backend=backend)(x, r)


def _check(x, backend, seed=1, **kw):
    tx = torch.tensor(x, requires_grad=True)
    want = torch.nn.functional.interpolate(tx, **kw)
    r = _randn(tuple(want.shape), seed)
    (want * torch.tensor(r)).sum().backward()
    out, g = _lamina(lambda v: F.interpolate(v, **kw), x, r, backend)
    assert out.shape == tuple(want.shape) and out.dtype == F32
    assert_close(out, want.detach().numpy(), atol=2e-6)
    assert_close(g, tx.grad.numpy(), atol=1e-5)


SIZES_2D = [
    {"scale_factor": 2}, {"scale_factor": 3}, {"scale_factor": (2, 1)}, {"scale_factor": 1.5},
    {"scale_factor": (0.5, 2.3)}, {"scale_factor": 1.1}, {"size": (7, 9)}, {"size": (3, 2)},
    {"size": (8, 10)}, {"size": 1}, {"scale_factor": 1.5, "recompute_scale_factor": True},
]
MODES_2D = [("nearest", None), ("nearest-exact", None), ("bilinear", False), ("bilinear", True)]


@pytest.mark.parametrize("mode,align", MODES_2D, ids=["nearest", "nearest_exact",
                                                      "bilinear", "bilinear_ac"])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 2, 3, 3), (1, 1, 1, 2)],
                         ids=["4x5", "3x3", "1x2"])
def test_interpolate_2d_matches_torch(backend, shape, mode, align):
    x = _randn(shape)
    for kw in SIZES_2D:
        if "scale_factor" in kw and shape[2] == 1 and kw["scale_factor"] in (0.5, (0.5, 2.3)):
            continue
        _check(x, backend, mode=mode, align_corners=align, **kw)


@pytest.mark.parametrize("mode,align", [("nearest", None), ("nearest-exact", None),
                                        ("linear", False), ("linear", True)],
                         ids=["nearest", "nearest_exact", "linear", "linear_ac"])
@pytest.mark.parametrize("length", [1, 3, 8])
def test_interpolate_1d_matches_torch(backend, length, mode, align):
    x = _randn((2, 3, length), 2)
    for kw in [{"scale_factor": 2}, {"scale_factor": 2.5}, {"size": 7}, {"size": 2},
               {"scale_factor": 4}]:
        _check(x, backend, mode=mode, align_corners=align, **kw)
    if length >= 2:
        _check(x, backend, mode=mode, align_corners=align, scale_factor=0.6)


@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
def test_upsample_layer_matches_torch(backend, mode):
    x = _randn((2, 3, 5, 4), 3)
    for kw in [{"scale_factor": 2}, {"size": (6, 9)}]:
        tm = torch.nn.Upsample(mode=mode, **kw)
        m = nn.Upsample(mode=mode, **kw)
        assert repr(m) == repr(tm)
        got = lm.compile(m, backend=backend)(x)
        assert_close(got, tm(torch.tensor(x)).numpy(), atol=2e-6)


@pytest.mark.parametrize("args", [
    {"scale_factor": 2}, {"size": (3, 4)}, {"scale_factor": (2.0, 3.0)},
    {"size": 5, "mode": "bilinear", "align_corners": True}, {"scale_factor": 1.5, "mode": "linear"},
])
def test_upsample_repr_matches_torch(args):
    assert repr(nn.Upsample(**args)) == repr(torch.nn.Upsample(**args))
    assert repr(nn.Sequential(nn.Upsample(**args))) == repr(
        torch.nn.Sequential(torch.nn.Upsample(**args)))


@pytest.mark.parametrize("kw", [
    {"scale_factor": 2, "mode": "bilinear"},
    {"size": (5, 3), "mode": "bilinear", "align_corners": True},
    {"scale_factor": 1.7, "mode": "nearest"},
], ids=["bilinear2", "bilinear_ac", "nearest1.7"])
def test_gradient_matches_float64_finite_differences(kw):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((1, 2, 3, 4))
    r = rng.standard_normal(F.interpolate(x, **kw).shape)
    v = rng.standard_normal(x.shape)
    g = lm.compile(lm.grad(lambda a: (F.interpolate(a, **kw) * r).sum()),
                   backend="numpy")(x)
    want = directional_fd(lambda a: (F.interpolate(a, **kw) * r).sum(), [x], [v])
    assert abs(float((g * v).sum()) - want) < 1e-8 * max(1.0, abs(want))


def test_integer_nearest_scale_is_a_broadcast_not_a_gather():
    g = lm.trace(lambda x: F.interpolate(x, scale_factor=2), np.zeros((2, 3, 4, 5), F32))
    ops = [n.op for n in g.nodes]
    assert ops == ["reshape", "broadcast", "reshape"], ops  # both axes in one broadcast
    g = lm.trace(lambda x: F.interpolate(x, scale_factor=1.5), np.zeros((2, 3, 4, 5), F32))
    assert "take" in [n.op for n in g.nodes]


def test_decoder_block_trains_like_torch(backend):
    """Upsample + conv, the block of a CNN decoder: output and all gradients as PyTorch."""
    from nn_torch import check_against_torch

    torch.manual_seed(0)
    tm = torch.nn.Sequential(torch.nn.Upsample(scale_factor=2), torch.nn.Conv2d(2, 3, 3, padding=1))
    model = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2, 3, 3, padding=1))
    check_against_torch(model, tm, _randn((2, 2, 3, 4), 5), backend)


@pytest.mark.parametrize("call,match", [
    (lambda x: F.interpolate(x), "exactly one of size and scale_factor"),
    (lambda x: F.interpolate(x, size=2, scale_factor=2), "exactly one of size and scale_factor"),
    (lambda x: F.interpolate(x, size=(2, 3, 4)), "must have 2 entries"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="cubic"), "mode must be one of"),
    (lambda x: F.interpolate(x, scale_factor=2, mode="linear"), "needs a \\[N, C, L\\] input"),
    (lambda x: F.interpolate(x, scale_factor=2, align_corners=True),
     "align_corners can only be set"),
    (lambda x: F.interpolate(x, scale_factor=0.1), "empty output size"),
    (lambda x: F.interpolate(x, scale_factor=-1), "must be positive"),
    (lambda x: F.interpolate(x[0, 0], scale_factor=2), "must be \\[N, C, L\\] or"),
    (lambda x: F.interpolate(x, size=0), "must be positive"),
], ids=["none", "both", "rank", "mode", "linear_on_4d", "align_nearest", "empty", "negative",
        "2d_input", "zero_size"])
def test_bad_arguments_are_clear_errors(call, match):
    with pytest.raises(lm.LaminaError, match=match) as e:
        lm.compile(call)(np.zeros((1, 1, 4, 4), F32))
    assert e.value.loc is not None and e.value.loc.file == __file__


def test_bilinear_needs_float():
    with pytest.raises(lm.DTypeError, match="needs a float input"):
        lm.compile(lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"))(
            np.zeros((1, 1, 2, 2), np.int64))
    got = lm.compile(lambda x: F.interpolate(x, scale_factor=2))(
        np.arange(4).reshape(1, 1, 2, 2))  # nearest keeps integers
    np.testing.assert_array_equal(got, np.repeat(np.repeat(
        np.arange(4).reshape(1, 1, 2, 2), 2, 2), 2, 3))


def test_eager_interpolate_on_arrays():
    x = _randn((1, 2, 3, 3), 6)
    want = torch.nn.functional.interpolate(torch.tensor(x), size=(4, 5), mode="bilinear")
    assert_close(F.interpolate(x, size=(4, 5), mode="bilinear"), want.numpy(), atol=2e-6)


# --- triton under the interpreter -------------------------------------------------------------


@pytest.fixture
def interpreted(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
    return "triton"


@pytest.mark.parametrize("kw", [
    {"scale_factor": 2, "mode": "nearest"},
    {"size": (3, 5), "mode": "bilinear", "align_corners": False},
], ids=["nearest2", "bilinear"])
def test_interpolate_on_triton_interpreter(interpreted, kw):
    _check(_randn((1, 2, 2, 3), 7), interpreted, **kw)
