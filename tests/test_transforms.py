"""lm.grad / value_and_grad, the compile driver (decorator forms, static arguments, recompilation,
stages) and random numbers; every test that compiles runs on each available backend."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm

F32 = np.float32


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


# --- grad and value_and_grad ------------------------------------------------------------------


def test_grad_argnums_int_and_tuple(backend, rng):
    x, w, b = _f32(rng, 4, 3), _f32(rng, 3, 2), _f32(rng, 2)

    def loss(x, w, b):
        return lm.tanh(x @ w + b).sum()

    t = np.tanh(x @ w + b)
    dpre = 1 - t ** 2
    gw = lm.compile(lm.grad(loss, argnums=1), backend=backend)(x, w, b)
    assert isinstance(gw, np.ndarray)
    assert_close(gw, x.T @ dpre)
    grads = lm.compile(lm.grad(loss, argnums=(1, 2)), backend=backend)(x, w, b)
    assert isinstance(grads, tuple) and len(grads) == 2
    assert_close(grads[0], x.T @ dpre)
    assert_close(grads[1], dpre.sum(0))
    single = lm.compile(lm.grad(loss, argnums=(0,)), backend=backend)(x, w, b)
    assert isinstance(single, tuple) and len(single) == 1
    assert_close(single[0], dpre @ w.T)
    neg = lm.compile(lm.grad(loss, argnums=-1), backend=backend)(x, w, b)
    assert_close(neg, dpre.sum(0))


def test_value_and_grad_and_has_aux(backend, rng):
    x = _f32(rng, 6)

    def f(a):
        return (a ** 2).sum(), {"mean": a.mean()}

    (val, aux), g = lm.compile(lm.value_and_grad(f, has_aux=True), backend=backend)(x)
    assert_close(val, (x ** 2).sum())
    assert_close(aux["mean"], x.mean())
    assert_close(g, 2 * x)
    g2, aux2 = lm.compile(lm.grad(f, has_aux=True), backend=backend)(x)
    assert_close(g2, 2 * x)
    assert_close(aux2["mean"], x.mean())


def test_grad_of_grad_of_cube(backend):
    x = np.float32(1.5)
    d2 = lm.compile(lm.grad(lm.grad(lambda a: a ** 3)), backend=backend)(x)
    assert_close(d2, np.float32(6 * 1.5))
    xs = np.array([-2.0, 0.5, 3.0], F32)

    def second(a):
        return lm.grad(lambda b: lm.grad(lambda c: (c ** 3).sum())(b).sum())(a)

    assert_close(lm.compile(second, backend=backend)(xs), 6 * xs)


def test_grad_composes_inside_a_compiled_function(backend, rng):
    x, w = _f32(rng, 3), _f32(rng, 3)

    @lm.compile(backend=backend)
    def step(x, w):
        val, gw = lm.value_and_grad(lambda w_: ((x * w_).sum() - 1.0) ** 2)(w)
        return val, w - 0.1 * gw

    val, neww = step(x, w)
    r = (x * w).sum() - 1
    assert_close(val, r ** 2)
    assert_close(neww, w - 0.1 * 2 * r * x)


def test_grad_closure_treats_captured_values_as_constants(backend, rng):
    h = _f32(rng, 4)

    def f(h):
        z = h * 3.0 + 1.0
        return lm.grad(lambda a: (a * z).sum())(h)

    assert_close(lm.compile(f, backend=backend)(h), h * 3 + 1)

    # Outer gradient through the inner one: d/dh sum(3h + 1) = 3.
    outer = lm.compile(lm.grad(lambda h: f(h).sum()), backend=backend)(h)
    assert_close(outer, np.full(4, 3.0, F32))


def test_stop_gradient(backend, rng):
    x = _f32(rng, 5)
    g = lm.compile(lm.grad(lambda a: (lm.stop_gradient(a) * a).sum()), backend=backend)(x)
    assert_close(g, x)
    v = lm.compile(lambda a: lm.stop_gradient(a * 2.0), backend=backend)(x)
    assert_close(v, 2 * x)


def test_grad_through_indexing_reductions_and_concat(backend, rng):
    x = _f32(rng, 3, 4)

    def loss(a):
        return (lm.concatenate([a[1:, ::2], a[:1, 1:3]], 0) ** 2).sum() + a.max()

    g = lm.compile(lm.grad(loss), backend=backend)(x)
    want = np.zeros_like(x)
    want[1:, ::2] += 2 * x[1:, ::2]
    want[:1, 1:3] += 2 * x[:1, 1:3]
    want[np.unravel_index(np.argmax(x), x.shape)] += 1
    assert_close(g, want)


# --- the compile driver -----------------------------------------------------------------------


def test_compiled_function_inlines_inside_another_trace(backend, rng):
    inner = lm.compile(lambda a: lm.tanh(a) * 2.0, backend=backend)

    @lm.compile(backend=backend)
    def outer(a):
        return inner(a) + 1.0

    x = _f32(rng, 3)
    assert_close(outer(x), np.tanh(x) * 2 + 1)
    assert inner.variants == {}, "an inlined call must not compile the inner function"
    ops = [n.op for n in lm.trace(outer.fn, x).nodes if n.op != "constant"]
    assert ops == ["tanh", "mul", "add"]


def test_compile_as_decorator_with_and_without_arguments(backend, rng):
    @lm.compile
    def plain(a):
        return a * 3.0

    @lm.compile(backend=backend, name="named_fn")
    def with_args(a):
        return a - 1.0

    assert isinstance(plain, lm.CompiledFunction) and isinstance(with_args, lm.CompiledFunction)
    x = _f32(rng, 2)
    assert_close(plain(x), 3 * x)
    assert_close(with_args(x), x - 1)
    assert plain.__name__ == "plain"
    assert with_args.name == "named_fn" and with_args.backend == backend
    assert "@named_fn(" in with_args.ir()


def test_compiled_function_accepts_keyword_arguments(backend, rng):
    fc = lm.compile(lambda a, b=2.0: a * b, backend=backend)
    x = _f32(rng, 3)
    assert_close(fc(x, b=np.float32(4.0)), 4 * x)
    assert_close(fc(x), 2 * x)


def test_static_argnums(backend, rng):
    calls = []

    def f(x, n, scale):
        calls.append(n)
        return x.reshape(n, -1) * scale

    fc = lm.compile(f, backend=backend, static_argnums=(1,))
    x = _f32(rng, 12)
    y = fc(x, 3, np.float32(2.0))
    assert y.shape == (3, 4)
    assert_close(y, x.reshape(3, 4) * 2)
    fc(x, 3, np.float32(5.0))
    assert len(fc.variants) == 1 and calls == [3]
    y4 = fc(x, 4, np.float32(1.0))
    assert y4.shape == (4, 3)
    assert len(fc.variants) == 2
    assert "static" in fc.compile_log[-1]
    assert [p.name for p in fc.variants[next(iter(fc.variants))].graph.inputs] == ["x", "scale"]


def test_recompiles_on_new_shapes_and_logs_why(backend, rng):
    def f(x, w):
        return x @ w

    fc = lm.compile(f, backend=backend)
    w = _f32(rng, 3, 2)
    fc(_f32(rng, 4, 3), w)
    fc(_f32(rng, 4, 3), w)
    assert len(fc.variants) == 1 and len(fc.compile_log) == 1
    assert "first call" in fc.compile_log[0]
    out = fc(_f32(rng, 7, 3), w)
    assert out.shape == (7, 2)
    assert len(fc.variants) == 2 and len(fc.compile_log) == 2
    log = fc.compile_log[1]
    assert "'x'" in log and "f32[4,3]" in log and "f32[7,3]" in log
    assert "'w'" not in log
    fc(_f32(rng, 4, 3).astype(np.float64), w.astype(np.float64))
    assert len(fc.variants) == 3
    assert "f64" in fc.compile_log[2]
    fc(_f32(rng, 7, 3), w)
    assert len(fc.variants) == 3, "a known signature must reuse its variant"


def test_stages_and_ir(backend, rng):
    fc = lm.compile(lambda x, w: lm.relu(x @ w).sum(axis=1), backend=backend)
    with pytest.raises(lm.LaminaError, match="not been compiled"):
        fc.stages()
    fc(_f32(rng, 2, 3), _f32(rng, 3, 4))
    stages = fc.stages()
    assert stages[0] == "traced" and len(stages) >= 2
    for s in stages:
        text = fc.ir(s)
        assert "graph @lambda(" in text
    assert "relu" in fc.ir("traced") and "matmul" in fc.ir("traced")
    final = fc.ir()
    g = lm.ir.parse(final)
    assert str(g).strip() == final.strip()
    with pytest.raises(lm.LaminaError, match="no stage"):
        fc.ir("no-such-stage")


def test_lower_with_type_specs_compiles_without_data(backend):
    fc = lm.compile(lambda x: x * 2.0, backend=backend)
    exe = fc.lower(lm.TensorType((3,), "f32"))
    assert len(fc.variants) == 1
    np.testing.assert_array_equal(exe(np.ones(3, F32)), np.full(3, 2.0, F32))
    fc(np.ones(3, F32))
    assert len(fc.variants) == 1


def test_python_scalar_arguments(backend):
    fc = lm.compile(lambda x, s: x * s, backend=backend)
    out = fc(np.ones(2, F32), 3.0)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [3.0, 3.0])


# --- random numbers ---------------------------------------------------------------------------


def test_random_with_explicit_keys_is_reproducible(backend):
    fc = lm.compile(lambda k: (lm.random.uniform((1000,), key=k),
                               lm.random.normal((2000,), key=k)), backend=backend)
    u1, n1 = fc(np.int64(7))
    u2, n2 = fc(np.int64(7))
    u3, n3 = fc(np.int64(8))
    np.testing.assert_array_equal(u1, u2)
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(u1, u3) and not np.array_equal(n1, n3)
    assert u1.dtype == np.float32 and n1.dtype == np.float32
    assert u1.min() >= 0 and u1.max() < 1
    assert abs(u1.mean() - 0.5) < 0.05
    assert abs(n1.mean()) < 0.1 and abs(n1.std() - 1) < 0.1
    # Two draws in one trace are different streams.
    a, b = lm.compile(lambda k: (lm.random.uniform(50, key=k), lm.random.uniform(50, key=k)),
                      backend=backend)(np.int64(3))
    assert not np.array_equal(a, b)


def test_random_with_a_constant_key(backend):
    f = lm.compile(lambda: lm.random.uniform((4, 5), key=11), backend=backend)
    a, b = f(), f()
    assert a.shape == (4, 5)
    np.testing.assert_array_equal(a, b)


def test_random_implicit_key_gives_fresh_numbers_per_call(backend):
    f = lm.compile(lambda: lm.random.normal((100,)), backend=backend)
    a, b, c = f(), f(), f()
    assert not np.array_equal(a, b) and not np.array_equal(b, c)
    assert len(f.variants) == 1
    lm.random.seed(123)
    first = f()
    lm.random.seed(123)
    again = f()
    np.testing.assert_array_equal(first, again)


def test_random_eager():
    a = lm.random.uniform((3,), key=5)
    b = lm.random.uniform((3,), key=5)
    assert isinstance(a, np.ndarray)
    np.testing.assert_array_equal(a, b)
    c, d = lm.random.normal(10), lm.random.normal(10)
    assert not np.array_equal(c, d)
