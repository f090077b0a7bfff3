"""Boolean masks: ``x[mask]`` with a traced mask is a clear error naming the user's line (its
shape would depend on the data), ``lm.masked_fill`` / ``Tensor.masked_fill`` against PyTorch,
and selection with a constant numpy bool array (a static shape) against numpy, gradients
included, on numpy and llvm and one case on triton under Triton's interpreter.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, directional_fd

import lamina as lm

torch = pytest.importorskip("torch")

F32 = np.float32


def _randn(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F32)


# --- a traced mask: a clear error -------------------------------------------------------------


@pytest.mark.parametrize("select", [
    lambda x: x[x > 0],
    lambda x: x[:, x[0] > 0],
    lambda x: x[(x > 0).reshape(-1)[:3]],
], ids=["full", "axis1", "axis0"])
def test_traced_mask_is_a_clear_error_at_the_users_line(select):
    with pytest.raises(lm.TraceError) as e:
        lm.compile(select)(_randn((3, 4)))
    msg = str(e.value)
    assert "boolean mask" in msg and "no static shape" in msg
    for hint in ("lm.where(mask, x, 0)", "(x * mask).sum()", "lm.masked_fill"):
        assert hint in msg
    assert e.value.loc is not None and e.value.loc.file == __file__
    assert e.value.loc.source_line().startswith("lambda x: x[")  # the lambda above


def test_traced_mask_error_in_a_model_names_its_line():
    def model(x):
        h = x * 2
        return h[h > 1].sum()  # the offending line

    with pytest.raises(lm.TraceError, match="boolean mask") as e:
        lm.compile(model)(_randn((2, 3)))
    assert e.value.loc.source_line() == "return h[h > 1].sum()  # the offending line"


def test_static_forms_the_error_suggests_work(backend):
    x = _randn((3, 4), 1)

    def f(x):
        m = x > 0
        return lm.where(m, x, 0), (x * m).sum(), lm.masked_fill(x, ~m, 0.0)

    a, s, c = lm.compile(f, backend=backend)(x)
    np.testing.assert_array_equal(a, np.where(x > 0, x, 0))
    assert_close(s, x[x > 0].sum(), atol=1e-6)
    np.testing.assert_array_equal(c, np.where(x > 0, x, 0))


# --- masked_fill against PyTorch --------------------------------------------------------------


@pytest.mark.parametrize("xshape,mshape", [((3, 4), (3, 4)), ((2, 3, 4), (4,)),
                                           ((2, 3, 4), (3, 1)), ((2, 1, 3, 3), (1, 1, 3, 3)),
                                           ((5,), ())],
                         ids=["same", "row", "col", "causal", "scalar_mask"])
@pytest.mark.parametrize("value", [0.0, -1e9, 2.5])
def test_masked_fill_matches_torch(backend, xshape, mshape, value):
    x = _randn(xshape, 2)
    mask = np.random.default_rng(3).random(mshape) > 0.5
    r = _randn(xshape, 4)
    tx = torch.tensor(x, requires_grad=True)
    want = tx.masked_fill(torch.tensor(mask), value)
    (want * torch.tensor(r)).sum().backward()

    def step(x, m, r):
        out = x.masked_fill(m, value)
        g = lm.grad(lambda v: (lm.masked_fill(v, m, value) * r).sum())(x)
        return out, g

    out, g = lm.compile(step, backend=backend)(x, mask, r)
    assert out.dtype == F32
    np.testing.assert_array_equal(out, want.detach().numpy())
    np.testing.assert_array_equal(g, tx.grad.numpy())


def test_masked_fill_with_a_traced_value_and_integers(backend):
    x = np.arange(6).reshape(2, 3)
    m = np.array([True, False, True])
    out = lm.compile(lambda x, v: lm.masked_fill(x, m, v), backend=backend)(x, np.int64(-7))
    np.testing.assert_array_equal(out, torch.tensor(x).masked_fill(torch.tensor(m), -7).numpy())


@pytest.mark.parametrize("xdtype,value", [(np.int64, 2.7), (np.int32, -3), (np.float32, True),
                                          (np.bool_, 1), (np.float64, np.float32(0.5))])
def test_masked_fill_casts_the_value_to_the_tensors_dtype(backend, xdtype, value):
    x = (np.arange(6).reshape(2, 3) % 2).astype(xdtype)
    m = np.array([[True, False, True], [False, False, True]])
    got = lm.compile(lambda x: lm.masked_fill(x, m, value), backend=backend)(x)
    want = torch.tensor(x).masked_fill(torch.tensor(m), value).numpy()
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)


def test_masked_fill_causal_attention_scores(backend):
    """The Transformer use: -inf above the diagonal, then softmax."""
    s = _randn((2, 4, 4), 5)
    causal = np.triu(np.ones((4, 4), bool), 1)
    got = lm.compile(lambda s: lm.softmax(s.masked_fill(causal, -np.inf), -1),
                     backend=backend)(s)
    want = torch.softmax(torch.tensor(s).masked_fill(torch.tensor(causal), float("-inf")), -1)
    assert_close(got, want.numpy(), atol=1e-6)


@pytest.mark.parametrize("call,err,match", [
    (lambda x: lm.masked_fill(x, x, 0.0), lm.LaminaError, "the mask must be bool"),
    (lambda x: lm.masked_fill(x, np.ones((2, 2), bool), 0.0), lm.ShapeError,
     "does not broadcast to the tensor's shape"),
    (lambda x: lm.masked_fill(x, np.ones((2, 3, 4), bool), 0.0), lm.ShapeError,
     "does not broadcast to the tensor's shape"),
    (lambda x: lm.masked_fill(x, x > 0, x), lm.ShapeError, "value must be a number or a 0-d"),
], ids=["not_bool", "no_broadcast", "grows", "tensor_value"])
def test_masked_fill_errors(call, err, match):
    with pytest.raises(err, match=match) as e:
        lm.compile(call)(_randn((3, 4)))
    assert e.value.loc is not None and e.value.loc.file == __file__


def test_eager_masked_fill():
    x = _randn((2, 3), 6)
    m = x > 0
    np.testing.assert_array_equal(lm.masked_fill(x, m, 1.0), np.where(m, F32(1.0), x))


# --- a constant numpy mask: numpy's selection, static shape ------------------------------------


MASKS = [
    ("rows", lambda x: np.array([True, False, True]), lambda x, m: x[m]),
    ("cols", lambda x: np.array([False, True, True, False]), lambda x, m: x[:, m]),
    ("full", lambda x: x > 0.2, lambda x, m: x[m]),
    ("list", lambda x: [True, True, False], lambda x, m: x[m]),
    ("ellipsis", lambda x: np.array([True, False, False, True]), lambda x, m: x[..., m]),
    ("all", lambda x: np.ones(3, bool), lambda x, m: x[m]),
    ("none", lambda x: np.zeros((3, 4), bool), lambda x, m: x[m]),
]


@pytest.mark.parametrize("make_mask,select", [m[1:] for m in MASKS], ids=[m[0] for m in MASKS])
def test_constant_mask_selection_matches_numpy(backend, make_mask, select):
    x = _randn((3, 4), 7)
    m = make_mask(x)
    want = select(x, np.asarray(m))
    got = lm.compile(lambda x: select(x, m), backend=backend)(x)
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_constant_mask_selection_on_three_axes(backend):
    x = _randn((2, 3, 4), 8)
    m = np.random.default_rng(9).random((3, 4)) > 0.4
    np.testing.assert_array_equal(lm.compile(lambda x: x[:, m], backend=backend)(x), x[:, m])
    m2 = np.random.default_rng(10).random((2, 3)) > 0.4
    np.testing.assert_array_equal(lm.compile(lambda x: x[m2], backend=backend)(x), x[m2])


def test_constant_mask_selection_gradient(backend):
    x = _randn((3, 4), 11)
    m = x > 0
    r = _randn(int(m.sum()), 12)
    g = lm.compile(lm.grad(lambda x: (x[m] * r).sum()), backend=backend)(x)
    want = np.zeros_like(x)
    want[m] = r
    np.testing.assert_array_equal(g, want)


def test_constant_mask_gradient_matches_float64_finite_differences():
    rng = np.random.default_rng(13)
    x = rng.standard_normal((4, 3))
    m = np.array([True, False, True, True])
    r = rng.standard_normal((3, 3))
    v = rng.standard_normal(x.shape)

    def loss(a):
        return (lm.tanh(a[m]) * r).sum()

    g = lm.compile(lm.grad(loss), backend="numpy")(x)
    want = directional_fd(lambda a: (np.tanh(a[m]) * r).sum(), [x], [v])
    assert abs(float((g * v).sum()) - want) < 1e-8 * max(1.0, abs(want))


@pytest.mark.parametrize("select,err,match", [
    (lambda x: x[np.ones(4, bool)], lm.ShapeError, "does not match the indexed axes"),
    (lambda x: x[np.ones((3, 4), bool), 0], lm.TraceError, "one boolean-mask index"),
    (lambda x: x[np.array(True)], lm.TraceError, "0-d boolean index"),
], ids=["wrong_shape", "with_int", "zero_d"])
def test_constant_mask_errors(select, err, match):
    with pytest.raises(err, match=match) as e:
        lm.compile(select)(_randn((3, 4)))
    assert e.value.loc is not None and e.value.loc.file == __file__


# --- triton under the interpreter -------------------------------------------------------------


def test_masks_on_triton_interpreter(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")
    x = _randn((3, 4), 14)
    m = x > 0
    r = _randn(int(m.sum()), 15)

    def step(x):
        sel = lm.grad(lambda v: (v[m] * r).sum())(x)
        return x[m], x.masked_fill(~m, -1.0), sel

    got, filled, g = lm.compile(step, backend="triton")(x)
    np.testing.assert_array_equal(got, x[m])
    np.testing.assert_array_equal(filled, np.where(m, x, F32(-1.0)))
    want = np.zeros_like(x)
    want[m] = r
    np.testing.assert_array_equal(g, want)
