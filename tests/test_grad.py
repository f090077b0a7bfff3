"""Gradients of every differentiable op against float64 central finite differences.

As JAX's ``check_grads`` does: the loss ``sum(op(x...) * W)`` (a fixed random ``W``, so that
symmetric parts of the gradient cannot cancel) is differentiated by ``lm.grad`` through the
whole pipeline (decompose -> autodiff -> ... -> backend), and ``<grad, v>`` is compared with the
finite difference of the loss along one random direction ``v``. The finite differences use the
independent formula of ``op_samples``, not lamina. Then: second order (Hessian-vector products),
integer arguments, ops with a zero gradient, and ties.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close, directional_fd
from op_samples import F32, F64, SAMPLES

import lamina as lm
from lamina.frontend.ops import apply
from lamina.ir.ops import REGISTRY, ZERO_GRAD

# Tolerance of <grad, v> against the central difference (eps = 1e-6, float64). The difference's
# truncation error is ~eps**2 * |f'''| ~ 1e-12 and its rounding error ~1e-16 * |f| / eps ~ 1e-9
# for the losses here (|f| <= ~10), so the finite difference is good to ~1e-8 relative; 1e-6
# leaves two orders of margin, while a wrong rule (a missing term, a wrong sign or factor, a
# broadcast summed wrongly) is off by O(1).
RTOL, ATOL = 1e-6, 1e-8
EPS = 1e-6


def differentiable(op: str) -> bool:
    opdef = REGISTRY[op]
    return callable(opdef.vjp) or opdef.decompose is not None


DIFFERENTIABLE = sorted(op for op in REGISTRY if differentiable(op))
GRAD_CASES = [pytest.param(op, case, id=f"{op}-{case.name}")
              for op in DIFFERENTIABLE for case in SAMPLES.get(op, []) if case.grad]


def test_every_differentiable_op_has_a_gradient_check():
    checked = {p.values[0] for p in GRAD_CASES}
    missing = sorted(set(DIFFERENTIABLE) - checked)
    assert not missing, f"differentiable ops without a gradient check in op_samples: {missing}"
    assert {"exp", "matmul", "take", "gelu", "mean", "one_hot"} <= set(DIFFERENTIABLE)
    assert "grad" not in DIFFERENTIABLE and "argmax" not in DIFFERENTIABLE


class Problem:
    """One gradient check: the arguments, which of them to differentiate, ``W`` and the loss
    both as a lamina function and as a numpy function (the independent formula).

    ``W`` is passed as the last (not differentiated) argument rather than captured as a
    constant, so that these checks are about the gradient rules alone.
    """

    def __init__(self, op: str, case, rng):
        dtype = F64 if F64 in case.dtypes else case.dtypes[-1]
        inputs = case.make(rng, dtype)
        attrs = case.attrs_for(dtype)
        out = case.expected_value(inputs)
        assert out.dtype == F64, f"{op}/{case.name}: a gradient case needs a float64 result"
        self.w = rng.standard_normal(out.shape)
        floats = [i for i, x in enumerate(inputs) if x.dtype.kind == "f"]
        # With no float input (one_hot of labels) differentiate a float scale of the result.
        self.scaled = not floats
        self.args = ([np.array(1.5)] if self.scaled else []) + inputs + [self.w]
        self.wrt = (0,) if self.scaled else tuple(floats)
        k = int(self.scaled)

        def loss(*args):
            y = apply(op, *args[k:-1], **attrs)
            return ((y * args[0] if self.scaled else y) * args[-1]).sum()

        def numpy_loss(*args):
            y = case.expected_value(list(args[k:-1]))
            return ((y * args[0] if self.scaled else y) * args[-1]).sum()

        self.loss, self.numpy_loss = loss, numpy_loss

    def with_wrt(self, values) -> list[np.ndarray]:
        args = list(self.args)
        for i, v in zip(self.wrt, values):
            args[i] = v
        return args

    def directions(self, rng) -> list[np.ndarray]:
        return [rng.standard_normal(self.args[i].shape) for i in self.wrt]


@pytest.mark.parametrize("op, case", GRAD_CASES)
def test_gradient_matches_finite_differences(op, case, backend, rng):
    p = Problem(op, case, rng)
    grads = lm.compile(lm.grad(p.loss, argnums=p.wrt), backend=backend)(*p.args)
    assert len(grads) == len(p.wrt)
    for g, i in zip(grads, p.wrt):
        assert g.shape == p.args[i].shape and g.dtype == F64, (g.shape, g.dtype, i)
    vs = p.directions(rng)
    analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs))
    numeric = directional_fd(lambda *xs: p.numpy_loss(*p.with_wrt(xs)),
                             [p.args[i] for i in p.wrt], vs, eps=EPS)
    np.testing.assert_allclose(analytic, numeric, rtol=RTOL, atol=ATOL,
                               err_msg=f"<grad, v> of {op}/{case.name} on {backend}")


# --- second order: Hessian-vector products ------------------------------------------------------

SECOND_ORDER = ["exp", "tanh", "sigmoid", "mul", "matmul", "log_softmax"]


@pytest.mark.parametrize("op", SECOND_ORDER)
def test_hessian_vector_product(op, backend, rng):
    """Differentiating <grad(loss), v> gives H v; compare with the central difference of the
    (compiled, first-order) gradient along v."""
    case = next(c for c in SAMPLES[op] if c.grad)
    p = Problem(op, case, rng)
    vs = p.directions(rng)
    grad_fn = lm.grad(p.loss, argnums=p.wrt)

    def along_v(*args):
        return sum((g * v).sum() for g, v in zip(grad_fn(*args), vs))

    hvp = lm.compile(lm.grad(along_v, argnums=p.wrt), backend=backend)(*p.args)
    grad = lm.compile(grad_fn, backend=backend)
    x = [p.args[i] for i in p.wrt]
    plus = grad(*p.with_wrt([a + EPS * v for a, v in zip(x, vs)]))
    minus = grad(*p.with_wrt([a - EPS * v for a, v in zip(x, vs)]))
    for h, gp, gm in zip(hvp, plus, minus):
        np.testing.assert_allclose(h, (gp - gm) / (2 * EPS), rtol=RTOL, atol=ATOL,
                                   err_msg=f"Hessian-vector product of {op} on {backend}")
    if op in ("exp", "tanh", "sigmoid", "log_softmax"):  # not linear: H v is not zero
        assert max(np.abs(h).max() for h in hvp) > 1e-3


def test_second_derivative_known_values(backend):
    # d2/dx2 tanh(x) = -2 tanh(x) (1 - tanh(x)**2), elementwise (the Hessian is diagonal).
    x = np.linspace(-2, 2, 7)
    d2 = lm.compile(lm.grad(lambda x: lm.grad(lambda y: lm.tanh(y).sum())(x).sum()),
                    backend=backend)(x)
    t = np.tanh(x)
    assert_close(d2, -2 * t * (1 - t * t))


# --- what has no gradient -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.bool_])
def test_grad_rejects_integer_arguments(dtype, backend):
    x = np.ones(3, dtype)
    with pytest.raises(lm.GradError, match="only float values have gradients"):
        lm.compile(lm.grad(lambda x: x.astype(F32).sum()), backend=backend)(x)


def test_grad_rejects_integer_argnum_eagerly():
    def loss(x, labels):
        return (x * lm.one_hot(labels, 3)).sum()

    x, labels = np.ones((2, 3), F32), np.array([0, 2])
    with pytest.raises(lm.GradError, match=r"int64"):
        lm.grad(loss, argnums=1)(x, labels)
    np.testing.assert_array_equal(lm.grad(loss)(x, labels), np.eye(3, dtype=F32)[[0, 2]])


def test_grad_rejects_non_scalar_and_integer_losses(backend):
    x = np.ones(3, F32)
    with pytest.raises(lm.GradError, match="scalar"):
        lm.compile(lm.grad(lambda x: x * 2), backend=backend)(x)
    with pytest.raises(lm.GradError, match="float loss"):
        lm.compile(lm.grad(lambda x: (x > 0).astype(lm.int32).sum()), backend=backend)(x)


def test_comparison_mask_has_zero_gradient(backend, rng):
    # d/dx [(x > 0) * x] = the mask: the comparison contributes nothing.
    x = rng.uniform(-1, 1, 10).astype(F32)
    g = lm.compile(lm.grad(lambda x: ((x > 0).astype(F32) * x).sum()), backend=backend)(x)
    np.testing.assert_array_equal(g, (x > 0).astype(F32))


def test_stop_gradient_and_sign_block_the_gradient(backend, rng):
    x = rng.uniform(0.5, 2, 6) * np.where(rng.random(6) < 0.5, -1, 1)
    g = lm.compile(lm.grad(lambda x: (lm.stop_gradient(x) * x).sum()), backend=backend)(x)
    np.testing.assert_array_equal(g, x)  # only the second factor is differentiated
    g = lm.compile(lm.grad(lambda x: (lm.sign(x) * x).sum()), backend=backend)(x)
    np.testing.assert_array_equal(g, np.sign(x))


def test_argmax_index_has_zero_gradient(backend, rng):
    x = rng.standard_normal((3, 5))
    g = lm.compile(lm.grad(lambda x: lm.take(x, lm.argmax(x)) * 2.0), backend=backend)(x)
    want = np.zeros(15)
    want[np.argmax(x)] = 2.0
    np.testing.assert_array_equal(g, want.reshape(3, 5))


def test_integer_cast_has_zero_gradient(backend, rng):
    x = rng.uniform(-3, 3, (2, 4))
    w = rng.standard_normal((2, 4))
    g = lm.compile(lm.grad(lambda x: (x.astype(lm.int32) * w).sum() + x.sum() * 0.0),
                   backend=backend)(x)
    np.testing.assert_array_equal(g, np.zeros_like(x))


ZERO_GRAD_OPS = sorted(op for op, o in REGISTRY.items() if o.vjp == ZERO_GRAD)


@pytest.mark.parametrize("op", [op for op in ZERO_GRAD_OPS if REGISTRY[op].arity != 0
                                and REGISTRY[op].kind != "random"
                                and any(F64 in c.dtypes for c in SAMPLES[op])])
def test_zero_grad_ops_give_zero_gradient(op, backend, rng):
    """Every op marked ZERO_GRAD that takes float inputs: the loss reaches x only through it."""
    case = next(c for c in SAMPLES[op] if F64 in c.dtypes)
    inputs = case.make(rng, F64)
    attrs = case.attrs_for(F64)
    wrt = tuple(i for i, x in enumerate(inputs) if x.dtype.kind == "f")
    assert wrt, op

    def loss(*xs):
        return apply(op, *xs, **attrs).astype(lm.float64).sum()

    grads = lm.compile(lm.grad(loss, argnums=wrt), backend=backend)(*inputs)
    for g, i in zip(grads, wrt):
        np.testing.assert_array_equal(g, np.zeros_like(inputs[i]), err_msg=op)


def test_zero_grad_list_is_what_we_expect():
    assert {"sign", "eq", "lt", "argmax", "stop_gradient", "constant", "iota",
            "random_uniform", "random_normal"} <= set(ZERO_GRAD_OPS)
    assert not set(ZERO_GRAD_OPS) & set(DIFFERENTIABLE)


# --- ties and casts: rules checked against known values ------------------------------------------


def test_maximum_minimum_split_ties_evenly(backend):
    x = np.array([1.0, 2.0, 3.0])
    y = np.array([1.0, 5.0, 3.0])
    w = np.array([2.0, 4.0, 8.0])
    for fn, want_x, want_y in [(lm.maximum, [1.0, 0.0, 4.0], [1.0, 4.0, 4.0]),
                               (lm.minimum, [1.0, 4.0, 4.0], [1.0, 0.0, 4.0])]:
        gx, gy = lm.compile(lm.grad(lambda a, b, fn=fn: (fn(a, b) * w).sum(), argnums=(0, 1)),
                            backend=backend)(x, y)
        np.testing.assert_array_equal(gx, want_x)
        np.testing.assert_array_equal(gy, want_y)


def test_max_min_reductions_split_ties_evenly(backend):
    x = np.array([[1.0, 3.0, 3.0], [2.0, 0.0, 2.0], [5.0, 5.0, 5.0]])
    gmax = lm.compile(lm.grad(lambda x: x.max(axis=1).sum()), backend=backend)(x)
    np.testing.assert_array_equal(gmax, [[0, 0.5, 0.5], [0.5, 0, 0.5], [1 / 3] * 3])
    gmin = lm.compile(lm.grad(lambda x: x.min(axis=1).sum()), backend=backend)(x)
    np.testing.assert_array_equal(gmin, [[1, 0, 0], [0, 1, 0], [1 / 3] * 3])


def test_cast_gradient_changes_precision(backend, rng):
    # d/dx sum(float32(x) * w) = w, returned in x's dtype (float64).
    x = rng.standard_normal(5)
    w = rng.standard_normal(5).astype(F32)
    g = lm.compile(lm.grad(lambda x: (x.astype(F32) * w).sum()), backend=backend)(x)
    assert g.dtype == F64
    np.testing.assert_array_equal(g, w.astype(F64))


def test_gradient_accumulates_over_uses(backend, rng):
    # x is used three times: d/dx sum(x * x * w + x) = 2 x w + 1.
    x, w = rng.standard_normal(4), rng.standard_normal(4)
    g = lm.compile(lm.grad(lambda x: (x * x * w + x).sum()), backend=backend)(x)
    assert_close(g, 2 * x * w + 1)
