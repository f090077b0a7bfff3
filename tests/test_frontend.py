"""Frontend tests: tracing, numpy semantics of the DSL, eager mode, grad transforms, the compile
driver (decorator forms, static arguments, recompilation, stages) and random numbers.

Every test that compiles runs on each available backend through the ``backend`` fixture.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina.frontend.ops import apply as apply_op

F32 = np.float32


def _f32(rng, *shape):
    return rng.standard_normal(shape).astype(F32)


# --- tracing ----------------------------------------------------------------------------------


def test_trace_uses_argument_names_as_input_names(rng):
    def layer(x, weight, bias):
        return lm.tanh(x @ weight + bias).sum(axis=1)

    g = lm.trace(layer, _f32(rng, 2, 3), _f32(rng, 3, 4), _f32(rng, 4))
    assert [p.name for p in g.inputs] == ["x", "weight", "bias"]
    assert [str(p.type) for p in g.inputs] == ["f32[2,3]", "f32[3,4]", "f32[4]"]
    text = str(g)
    assert text.startswith("graph @layer(%x: f32[2,3], %weight: f32[3,4], %bias: f32[4])")
    assert [n.op for n in g.nodes] == ["matmul", "add", "tanh", "sum"]


def test_trace_accepts_tensor_type_specs_without_data():
    g = lm.trace(lambda a: a * 2.0, lm.TensorType((5, 7), "f32"))
    assert str(g.inputs[0].type) == "f32[5,7]"
    assert str(g.outputs[0].type) == "f32[5,7]"


def test_traced_nodes_carry_the_user_source_line(rng):
    import inspect

    def f(x):
        y = lm.exp(x)  # LINE-EXP
        return y

    lines, start = inspect.getsourcelines(f)
    line = start + next(i for i, s in enumerate(lines) if "LINE-EXP" in s)
    g = lm.trace(f, _f32(rng, 3))
    assert g.nodes[0].loc is not None
    assert g.nodes[0].loc.line == line
    assert f"test_frontend.py:{line}" in str(g)


def test_pytree_outputs_keep_their_structure(backend, rng):
    def f(x, y):
        return {"sum": x + y, "pair": (x * 2.0, [y - 1.0, None]), "none": None}

    x, y = _f32(rng, 3), _f32(rng, 3)
    out = lm.compile(f, backend=backend)(x, y)
    assert isinstance(out, dict) and list(out) == ["sum", "pair", "none"]
    assert out["none"] is None
    assert isinstance(out["pair"], tuple) and len(out["pair"]) == 2
    assert isinstance(out["pair"][1], list) and out["pair"][1][1] is None
    assert_close(out["sum"], x + y)
    assert_close(out["pair"][0], x * 2)
    assert_close(out["pair"][1][0], y - 1)


def test_single_and_tuple_outputs(backend, rng):
    x = _f32(rng, 4)
    single = lm.compile(lambda a: a + 1.0, backend=backend)(x)
    assert isinstance(single, np.ndarray)
    one_tuple = lm.compile(lambda a: (a + 1.0,), backend=backend)(x)
    assert isinstance(one_tuple, tuple) and len(one_tuple) == 1
    assert_close(one_tuple[0], x + 1)


def test_returning_an_input_or_a_constant(backend, rng):
    x = _f32(rng, 3)
    out = lm.compile(lambda a: (a, lm.zeros((2,)), lm.full((2, 2), 3.5)), backend=backend)(x)
    np.testing.assert_array_equal(out[0], x)
    np.testing.assert_array_equal(out[1], np.zeros(2, F32))
    assert out[2].dtype == np.float32
    np.testing.assert_array_equal(out[2], np.full((2, 2), 3.5, F32))


# --- numpy semantics: a random batch of expressions --------------------------------------------

# (lamina, numpy) pairs; all keep values finite for inputs of moderate size.
_UNARY = [
    (lm.tanh, np.tanh),
    (lambda a: lm.exp(lm.tanh(a)), lambda a: np.exp(np.tanh(a))),
    (lm.abs, np.abs),
    (lambda a: -a, lambda a: -a),
    (lm.sigmoid, lambda a: 1 / (1 + np.exp(-a))),
    (lm.relu, lambda a: np.maximum(a, 0)),
    (lambda a: lm.sqrt(lm.abs(a) + 1.0), lambda a: np.sqrt(np.abs(a) + F32(1))),
    (lambda a: lm.log(lm.abs(a) + 1.0), lambda a: np.log(np.abs(a) + F32(1))),
    (lambda a: a * 0.5, lambda a: a * F32(0.5)),
    (lambda a: 2.0 - a, lambda a: F32(2) - a),
    (lambda a: a ** 2, lambda a: a ** 2),
]
_BINARY = [
    (lambda a, b: a + b, lambda a, b: a + b),
    (lambda a, b: a - b, lambda a, b: a - b),
    (lambda a, b: a * b, lambda a, b: a * b),
    (lambda a, b: a / (lm.abs(b) + 1.0), lambda a, b: a / (np.abs(b) + F32(1))),
    (lm.maximum, np.maximum),
    (lm.minimum, np.minimum),
    (lambda a, b: lm.where(a > b, a, b * 0.5), lambda a, b: np.where(a > b, a, b * F32(0.5))),
    (lambda a, b: lm.where(a <= b, 1.0, a), lambda a, b: np.where(a <= b, F32(1), a)),
]


def _random_expr(rng, depth):
    """A random expression tree over leaves 0 (x, shape (3, 4)) and 1 (y, shape (4,))."""
    if depth == 0 or rng.random() < 0.2:
        return ("leaf", int(rng.integers(2)))
    if rng.random() < 0.45:
        return ("un", int(rng.integers(len(_UNARY))), _random_expr(rng, depth - 1))
    return ("bin", int(rng.integers(len(_BINARY))), _random_expr(rng, depth - 1),
            _random_expr(rng, depth - 1))


def _eval_expr(expr, leaves, which):
    kind = expr[0]
    if kind == "leaf":
        return leaves[expr[1]]
    if kind == "un":
        return _UNARY[expr[1]][which](_eval_expr(expr[2], leaves, which))
    a, b = _eval_expr(expr[2], leaves, which), _eval_expr(expr[3], leaves, which)
    return _BINARY[expr[1]][which](a, b)


@pytest.mark.parametrize("seed", range(12))
def test_random_expressions_match_numpy(backend, seed):
    rng = np.random.default_rng(100 + seed)
    expr = _random_expr(rng, 4)
    x, y = _f32(rng, 3, 4), _f32(rng, 4)
    got = lm.compile(lambda a, b: _eval_expr(expr, [a, b], 0) + 0.0 * a, backend=backend)(x, y)
    want = _eval_expr(expr, [x, y], 1) + F32(0) * x
    assert got.dtype == want.dtype == np.float32, expr
    assert got.shape == want.shape, expr
    assert_close(got, want, err_msg=str(expr))


@pytest.mark.parametrize("op", ["lt", "le", "gt", "ge", "eq", "ne"])
def test_comparisons_give_bool(backend, op):
    x = np.array([[1, 2, 3], [3, 2, 1]], F32)
    y = np.array([2, 2, 2], F32)
    py = {"lt": "__lt__", "le": "__le__", "gt": "__gt__", "ge": "__ge__", "eq": "__eq__",
          "ne": "__ne__"}[op]
    got = lm.compile(lambda a, b: getattr(a, py)(b), backend=backend)(x, y)
    assert got.dtype == np.bool_
    np.testing.assert_array_equal(got, getattr(x, py)(y))


def test_logical_operators(backend):
    a = np.array([True, True, False, False])
    b = np.array([True, False, True, False])
    out = lm.compile(lambda p, q: (p & q, p | q, ~p), backend=backend)(a, b)
    np.testing.assert_array_equal(out[0], a & b)
    np.testing.assert_array_equal(out[1], a | b)
    np.testing.assert_array_equal(out[2], ~a)


# --- dtypes: weak Python scalars and promotion ------------------------------------------------


@pytest.mark.parametrize("dtype, scalar, expected", [
    (np.float32, 2.0, np.float32),
    (np.float32, 2, np.float32),
    (np.float64, 2.0, np.float64),
    (np.int32, 1.5, np.float32),
    (np.int64, 1.5, np.float32),
    (np.int32, 3, np.int32),
    (np.int64, 3, np.int64),
])
def test_python_scalars_are_weakly_typed(backend, dtype, scalar, expected):
    x = np.array([1, 2, 3], dtype)
    out = lm.compile(lambda a: (a * scalar, scalar + a, a - scalar), backend=backend)(x)
    for o, want in zip(out, (x * scalar, scalar + x, x - scalar)):
        assert o.dtype == expected
        np.testing.assert_allclose(o, want.astype(expected))


@pytest.mark.parametrize("da, db, expected", [
    (np.int32, np.float32, np.float32),
    (np.float32, np.int32, np.float32),
    (np.int64, np.float32, np.float32),
    (np.float32, np.float64, np.float64),
    (np.int32, np.int64, np.int64),
    (np.bool_, np.int32, np.int32),
    (np.bool_, np.float32, np.float32),
])
def test_dtype_promotion(backend, da, db, expected):
    a = np.array([1, 0, 1], da)
    b = np.array([2, 3, 4], db)
    out = lm.compile(lambda p, q: p + q, backend=backend)(a, b)
    assert out.dtype == expected
    np.testing.assert_array_equal(out, a.astype(expected) + b.astype(expected))


def test_astype_and_int_true_division(backend):
    x = np.array([1, 2, 7], np.int32)
    out = lm.compile(lambda a: (a.astype(lm.float32) / 2.0, lm.astype(a, "f64")),
                     backend=backend)(x)
    assert out[0].dtype == np.float32 and out[1].dtype == np.float64
    np.testing.assert_array_equal(out[0], np.array([0.5, 1.0, 3.5], F32))
    np.testing.assert_array_equal(out[1], x.astype(np.float64))


# --- matmul -----------------------------------------------------------------------------------


@pytest.mark.parametrize("sa, sb", [
    ((3, 4), (4, 5)),
    ((4,), (4, 5)),
    ((3, 4), (4,)),
    ((4,), (4,)),
    ((2, 3, 4), (4, 5)),
    ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)),
    ((2, 1, 3, 4), (5, 4, 2)),
    ((6, 3, 4), (6, 4, 2)),
])
def test_matmul_shapes_match_numpy(backend, rng, sa, sb):
    a, b = _f32(rng, *sa), _f32(rng, *sb)
    want = a @ b
    got = lm.compile(lambda x, y: x @ y, backend=backend)(a, b)
    assert got.shape == want.shape
    assert_close(got, want)
    got2 = lm.compile(lm.matmul, backend=backend)(a, b)
    assert_close(got2, want)


def test_matmul_with_a_numpy_constant_on_the_left(backend, rng):
    w, x = _f32(rng, 2, 3), _f32(rng, 3, 4)
    got = lm.compile(lambda a: w @ a, backend=backend)(x)
    assert_close(got, w @ x)


# --- indexing ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name, index", [
    ("slice_step", lambda a: a[1:, ::2]),
    ("ellipsis", lambda a: a[..., 0]),
    ("newaxis", lambda a: a[None]),
    ("negative", lambda a: a[-1]),
    ("int_pair", lambda a: a[1, -2]),
    ("mixed", lambda a: a[:, 1:3, None]),
    ("stop_past_end", lambda a: a[:10, 2:]),
    ("empty", lambda a: a[3:1]),
    ("idx_array", lambda a: a[np.array([2, 0, 2])]),
    ("idx_axis1", lambda a: a[:, np.array([4, 1])]),
    ("idx_list", lambda a: a[[1, 1, 0]]),
])
def test_indexing_matches_numpy(backend, rng, name, index):
    x = _f32(rng, 4, 5)
    want = index(x)
    got = lm.compile(index, backend=backend)(x)
    assert got.shape == want.shape, name
    np.testing.assert_array_equal(got, want)


def test_indexing_3d_ellipsis_and_none(backend, rng):
    x = _f32(rng, 2, 3, 4)
    for index in (lambda a: a[..., 1:], lambda a: a[0, ..., None], lambda a: a[:, None, 2],
                  lambda a: a[1, ...]):
        got = lm.compile(index, backend=backend)(x)
        np.testing.assert_array_equal(got, index(x))


def test_indexing_with_a_traced_index_array(backend, rng):
    x = _f32(rng, 5, 3)
    idx = np.array([2, 0, 0, 1], np.int32)
    got = lm.compile(lambda a, i: (a[i], a[:, i[:2]]), backend=backend)(x, idx)
    np.testing.assert_array_equal(got[0], x[idx])
    np.testing.assert_array_equal(got[1], x[:, idx[:2]])


def test_iteration_and_len(backend, rng):
    x = _f32(rng, 3, 4)

    def f(a):
        assert len(a) == 3
        rows = list(a)
        assert len(rows) == 3 and rows[0].shape == (4,)
        return sum(r * float(i + 1) for i, r in enumerate(rows))

    got = lm.compile(f, backend=backend)(x)
    assert_close(got, x[0] + 2 * x[1] + 3 * x[2])


def test_len_of_a_scalar_tensor_is_a_type_error():
    def f(a):
        return len(a.sum())

    with pytest.raises(TypeError):
        lm.trace(f, np.ones(3, F32))


# --- reductions -------------------------------------------------------------------------------


@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1, -2, (0, 2), (-1, 0)])
@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("red", ["sum", "mean", "max", "min"])
def test_reductions_match_numpy(backend, rng, red, axis, keepdims):
    x = _f32(rng, 2, 3, 4)
    got = lm.compile(lambda a: getattr(a, red)(axis=axis, keepdims=keepdims),
                     backend=backend)(x)
    want = getattr(x, red)(axis=axis, keepdims=keepdims)
    assert got.shape == want.shape and got.dtype == np.float32
    assert_close(got, want)
    got_fn = lm.compile(lambda a: getattr(lm, red)(a, axis=axis, keepdims=keepdims),
                        backend=backend)(x)
    assert_close(got_fn, want)


@pytest.mark.parametrize("axis, keepdims", [(None, False), (0, False), (-1, True), (1, False)])
def test_argmax_matches_numpy(backend, rng, axis, keepdims):
    x = _f32(rng, 3, 5)
    got = lm.compile(lambda a: a.argmax(axis=axis, keepdims=keepdims), backend=backend)(x)
    want = np.argmax(x, axis=axis, keepdims=keepdims)
    assert got.dtype.kind == "i"
    assert got.shape == want.shape
    np.testing.assert_array_equal(got, want)


def test_integer_sum_stays_integer(backend):
    x = np.arange(12, dtype=np.int32).reshape(3, 4)
    got = lm.compile(lambda a: a.sum(axis=0), backend=backend)(x)
    assert got.dtype.kind == "i"
    np.testing.assert_array_equal(got, x.sum(axis=0))


@pytest.mark.parametrize("axis", [None, 0, -1, (0, 1)])
@pytest.mark.parametrize("keepdims", [False, True])
def test_var_std_logsumexp(backend, rng, axis, keepdims):
    x = _f32(rng, 3, 4) * 3
    out = lm.compile(lambda a: (lm.var(a, axis, keepdims), a.std(axis=axis, keepdims=keepdims),
                                lm.logsumexp(a, axis, keepdims)), backend=backend)(x)
    x64 = x.astype(np.float64)
    m = x64.max(axis=axis, keepdims=True)
    lse = np.log(np.exp(x64 - m).sum(axis=axis, keepdims=True)) + m
    if not keepdims:
        lse = lse.reshape(np.sum(x64, axis=axis).shape)
    for got, want in zip(out, (x64.var(axis=axis, keepdims=keepdims),
                               x64.std(axis=axis, keepdims=keepdims), lse)):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert_close(got, want.astype(F32), dtype=np.float32)


def test_logsumexp_is_stable_for_large_values(backend):
    x = np.array([[1000.0, 1000.0], [-1000.0, -1000.0]], F32)
    got = lm.compile(lambda a: lm.logsumexp(a, axis=1), backend=backend)(x)
    assert np.all(np.isfinite(got))
    assert_close(got, np.array([1000 + np.log(2), -1000 + np.log(2)], F32))


@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_and_log_softmax(backend, rng, axis):
    x = _f32(rng, 3, 5) * 4
    sm, lsm = lm.compile(lambda a: (lm.softmax(a, axis), lm.log_softmax(a, axis)),
                         backend=backend)(x)
    x64 = x.astype(np.float64)
    e = np.exp(x64 - x64.max(axis=axis, keepdims=True))
    want = e / e.sum(axis=axis, keepdims=True)
    assert_close(sm, want.astype(F32), dtype=np.float32)
    assert_close(lsm, np.log(want).astype(F32), dtype=np.float32)
    assert_close(sm.sum(axis=axis), np.ones(sm.sum(axis=axis).shape, F32))


# --- shapes -----------------------------------------------------------------------------------


def test_reshape_transpose(backend, rng):
    x = _f32(rng, 2, 3, 4)

    def f(a):
        return (a.reshape(6, -1), a.reshape((-1,)), a.reshape(2, -1, 2), a.transpose(2, 0, 1),
                a.transpose(), a.T, lm.transpose(a, (1, 0, 2)), lm.reshape(a, (4, 6)),
                a.flatten(), a.swapaxes(0, 2))

    got = lm.compile(f, backend=backend)(x)
    want = (x.reshape(6, -1), x.reshape(-1), x.reshape(2, -1, 2), x.transpose(2, 0, 1),
            x.transpose(), x.T, np.transpose(x, (1, 0, 2)), x.reshape(4, 6), x.flatten(),
            x.swapaxes(0, 2))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_expand_squeeze_broadcast(backend, rng):
    x = _f32(rng, 3, 1, 4)
    got = lm.compile(lambda a: (lm.expand_dims(a, 0), lm.expand_dims(a, -1), lm.squeeze(a),
                                a.squeeze(1), lm.broadcast_to(a, (2, 3, 5, 4))),
                     backend=backend)(x)
    want = (np.expand_dims(x, 0), np.expand_dims(x, -1), np.squeeze(x), x.squeeze(1),
            np.broadcast_to(x, (2, 3, 5, 4)))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_concatenate_and_stack(backend, rng, axis):
    a, b = _f32(rng, 2, 3), _f32(rng, 2, 3)
    c = _f32(rng, 2, 3)
    got = lm.compile(lambda x, y, z: (lm.concatenate([x, y, z], axis=axis),
                                      lm.stack((x, y, z), axis=axis)), backend=backend)(a, b, c)
    np.testing.assert_array_equal(got[0], np.concatenate([a, b, c], axis=axis))
    np.testing.assert_array_equal(got[1], np.stack([a, b, c], axis=axis))


def test_take_and_one_hot(backend, rng):
    x = _f32(rng, 4, 5)
    idx = np.array([3, 0, 3], np.int64)
    got = lm.compile(lambda a, i: (lm.take(a, i, axis=0), lm.take(a, i, axis=1),
                                   lm.take(a, i), lm.take(a, i, axis=-1)),
                     backend=backend)(x, idx)
    want = (np.take(x, idx, axis=0), np.take(x, idx, axis=1), np.take(x, idx),
            np.take(x, idx, axis=-1))
    for g, w in zip(got, want):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)

    labels = np.array([2, 0, 1, 2], np.int32)
    oh = lm.compile(lambda y: (lm.one_hot(y, 3), lm.one_hot(y, 4, dtype=lm.float64)),
                    backend=backend)(labels)
    assert oh[0].dtype == np.float32 and oh[1].dtype == np.float64
    np.testing.assert_array_equal(oh[0], np.eye(3, dtype=F32)[labels])
    np.testing.assert_array_equal(oh[1], np.eye(4)[labels])


def test_where_broadcasting_and_clip(backend, rng):
    x = _f32(rng, 3, 4)
    c = np.array([True, False, True, False])
    got = lm.compile(lambda a, m: (lm.where(m, a, 0.0), lm.where(a > 0, a, -1.0),
                                   lm.clip(a, -0.5, 0.5), a.clip(min=0.0), lm.clip(a, max=0.1)),
                     backend=backend)(x, c)
    want = (np.where(c, x, F32(0)), np.where(x > 0, x, F32(-1)), np.clip(x, -0.5, 0.5),
            np.clip(x, 0.0, None), np.clip(x, None, 0.1))
    for g, w in zip(got, want):
        assert g.dtype == np.float32
        np.testing.assert_array_equal(g, w.astype(F32))


def test_where_with_nonbool_condition_means_nonzero(backend):
    c = np.array([0.0, 2.0, -1.0], F32)
    got = lm.compile(lambda m: lm.where(m, 1.0, 5.0), backend=backend)(c)
    np.testing.assert_array_equal(got, np.array([5.0, 1.0, 1.0], F32))


def test_creation_functions(backend):
    got = lm.compile(lambda a: (lm.zeros_like(a), lm.ones_like(a), lm.arange(4),
                                lm.ones((2,), lm.int32), lm.full(3, 7)), backend=backend)(
        np.ones((2, 2), F32))
    np.testing.assert_array_equal(got[0], np.zeros((2, 2), F32))
    np.testing.assert_array_equal(got[1], np.ones((2, 2), F32))
    np.testing.assert_array_equal(got[2], np.arange(4))
    assert got[2].dtype == np.int64 and got[3].dtype == np.int32
    assert got[4].dtype == np.int64
    np.testing.assert_array_equal(got[4], [7, 7, 7])


@pytest.mark.parametrize("approximate", ["tanh", "none"])
def test_gelu_and_erf(backend, rng, approximate):
    import math

    x = _f32(rng, 50) * 3
    got = lm.compile(lambda a: lm.gelu(a, approximate=approximate), backend=backend)(x)
    x64 = x.astype(np.float64)
    if approximate == "tanh":
        want = 0.5 * x64 * (1 + np.tanh(np.sqrt(2 / np.pi) * (x64 + 0.044715 * x64 ** 3)))
    else:
        want = 0.5 * x64 * (1 + np.vectorize(math.erf)(x64 / np.sqrt(2)))
    assert_close(got, want.astype(F32), dtype=np.float32)


# --- eager mode -------------------------------------------------------------------------------


def test_eager_ops_return_numpy_arrays(rng):
    x = _f32(rng, 3, 4)
    for got, want in [
        (lm.exp(x), np.exp(x)),
        (lm.tanh(x), np.tanh(x)),
        (lm.matmul(x, x.T), x @ x.T),
        (lm.sum(x, axis=1), x.sum(axis=1)),
        (lm.maximum(x, 0.0), np.maximum(x, 0)),
        (lm.where(x > 0, x, 0.0), np.where(x > 0, x, F32(0))),
        (lm.concatenate([x, x], axis=1), np.concatenate([x, x], axis=1)),
        (lm.take(x, np.array([1, 0]), axis=1), np.take(x, [1, 0], axis=1)),
        (lm.reshape(x, (2, -1)), x.reshape(2, -1)),
        (lm.zeros((2, 3)), np.zeros((2, 3), F32)),
    ]:
        assert isinstance(got, np.ndarray)
        assert got.dtype == want.dtype
        assert_close(got, want)


def test_eager_softmax_and_losses(rng):
    x = _f32(rng, 4, 3)
    sm = lm.softmax(x)
    assert isinstance(sm, np.ndarray) and sm.dtype == np.float32
    e = np.exp(x.astype(np.float64) - x.max(axis=-1, keepdims=True))
    assert_close(sm, (e / e.sum(-1, keepdims=True)).astype(F32), dtype=np.float32)
    loss = lm.nn.functional.cross_entropy(np.zeros((2, 4), F32), np.array([0, 3]))
    assert isinstance(loss, np.ndarray)
    assert_close(loss, np.float32(np.log(4)))


def test_eager_grad_returns_numpy(rng):
    x = _f32(rng, 5)
    g = lm.grad(lambda a: (a * a).sum())(x)
    assert isinstance(g, np.ndarray) and g.dtype == np.float32
    assert_close(g, 2 * x)
    v, g2 = lm.value_and_grad(lambda a: lm.tanh(a).sum())(x)
    assert_close(v, np.tanh(x).sum())
    assert_close(g2, 1 - np.tanh(x) ** 2)


def test_op_apply_outside_a_trace_runs_the_reference():
    out = apply_op("exp", np.zeros(2, F32))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, np.ones(2, F32))
