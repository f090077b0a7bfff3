"""Every registered op against an independent numpy formula (the table in ``op_samples``).

Each sample runs through the whole pipeline (trace -> passes -> backend) on every available
backend, and through the reference interpreter on a one-node graph; the result's values, dtype
and shape are checked against the formula and against the op's own type rule. Then: broadcasting
through the frontend, the type rules' errors, and the random ops (Philox known answers,
statistics, determinism).
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close
from op_samples import ALL, F32, F64, I32, SAMPLES, draw, philox_4x32_10, uniform_expected

import lamina as lm
from lamina.frontend.ops import apply
from lamina.frontend.trace import current
from lamina.ir import Builder, TensorType, interpret
from lamina.ir.ops import REGISTRY
from lamina.ir.ops.source import philox4x32

# grad: expanded by autodiff, never run (covered by test_grad); kernel: made by fusion from the
# other ops (covered by test_fuse and every backend test that compiles)
# grad and kernel: made by passes; loops hold regions (tests/test_loops.py)
UNTESTED = {"grad", "kernel", "scan", "fori_loop", "while_loop", "get"}

CASES = [
    pytest.param(op, case, np.dtype(d), id=f"{op}-{case.name}-{np.dtype(d).name}")
    for op, cases in SAMPLES.items() for case in cases for d in case.dtypes
]


def test_every_op_has_samples():
    missing = sorted(set(REGISTRY) - set(SAMPLES) - UNTESTED)
    assert not missing, f"ops without an entry in tests/op_samples.py: {missing}"
    unknown = sorted(set(SAMPLES) - set(REGISTRY))
    assert not unknown, f"op_samples.py lists ops that are not registered: {unknown}"
    empty = sorted(op for op, cases in SAMPLES.items() if not cases)
    assert not empty, f"ops with no case: {empty}"


# --- running one op -------------------------------------------------------------------------


def _traced_fn(op: str, attrs: dict, n_inputs: int):
    """The function to compile: the op applied to the arguments (numpy's conveniences of
    ``Builder.call`` apply), or, for ops without tensor inputs, emitted into the trace."""
    if n_inputs:
        return lambda *xs: apply(op, *xs, **attrs)

    def source():
        b = current().builder
        return b.var(b.emit(op, (), attrs))

    return source


def _inferred(op: str, inputs: list[np.ndarray], attrs: dict) -> TensorType:
    b = Builder("infer")
    params = [b.add_input(f"x{i}", TensorType(x.shape, x.dtype)) for i, x in enumerate(inputs)]
    return b.emit(op, params, attrs).type


def _check(actual, expected, case, dtype, inferred: TensorType, where: str):
    actual = np.asarray(actual)
    want = case.result_dtype(dtype)
    assert actual.dtype == want, f"{where}: result dtype {actual.dtype}, expected {want}"
    assert actual.dtype == inferred.dtype.np, (
        f"{where}: result dtype {actual.dtype} differs from the type rule's {inferred}")
    assert actual.shape == inferred.shape, (
        f"{where}: result shape {actual.shape} differs from the type rule's {inferred}")
    assert actual.shape == expected.shape, (
        f"{where}: result shape {actual.shape}, expected {expected.shape}")
    if want.kind == "f":
        assert_close(actual, expected, dtype=want, err_msg=where)
    else:  # integers and bools: exact
        np.testing.assert_array_equal(actual, expected.astype(want), err_msg=where)


@pytest.mark.parametrize("op, case, dtype", CASES)
def test_op_compiled(op, case, dtype, backend, rng):
    inputs = case.make(rng, dtype)
    attrs = case.attrs_for(dtype)
    expected = case.expected_value(inputs)
    fn = lm.compile(_traced_fn(op, attrs, len(inputs)), backend=backend)
    actual = fn(*inputs)
    _check(actual, expected, case, dtype, _inferred(op, inputs, attrs), f"{op} on {backend}")


@pytest.mark.parametrize("op, case, dtype", CASES)
def test_op_interpreted(op, case, dtype, rng):
    inputs = case.make(rng, dtype)
    attrs = case.attrs_for(dtype)
    b = Builder("one_node")
    params = [b.add_input(f"x{i}", TensorType(x.shape, x.dtype)) for i, x in enumerate(inputs)]
    node = b.emit(op, params, attrs)
    (actual,), updates = interpret(b.build([node]), inputs)
    assert updates == {}
    _check(actual, case.expected_value(inputs), case, dtype, node.type, f"{op} interpreted")


def _has_inputs(param) -> bool:
    _, case, dtype = param.values
    return bool(case.make(np.random.default_rng(0), dtype))


@pytest.mark.parametrize("op, case, dtype", [p for p in CASES if _has_inputs(p)])
def test_op_on_constant_inputs(op, case, dtype, backend, rng):
    """The same samples captured as constants: constant folding (through the reference
    interpreter) or the backend computes the result, and the constants print and parse back."""
    inputs = case.make(rng, dtype)
    attrs = case.attrs_for(dtype)
    actual = lm.compile(lambda: apply(op, *inputs, **attrs), backend=backend)()
    _check(actual, case.expected_value(inputs), case, dtype, _inferred(op, inputs, attrs),
           f"{op} on constants on {backend}")


def test_samples_cover_the_accepted_dtypes():
    """Each op is sampled with every dtype kind its type rule accepts (of f32, f64, i32, i64,
    bool), so a backend cannot silently skip, say, integer ``maximum``."""
    rng = np.random.default_rng(0)
    gaps = []
    for op, cases in SAMPLES.items():
        opdef = REGISTRY[op]
        if opdef.arity == 0 or opdef.kind == "random":
            continue  # typed by attributes, not by inputs
        sampled = {np.dtype(d) for c in cases for d in c.dtypes}
        for d in ALL:
            if d in sampled:
                continue
            # Would the type rule accept the first case's inputs in dtype d?
            case = cases[0]
            inputs = case.make(rng, case.dtypes[0])
            typed = [i for i, x in enumerate(inputs) if x.dtype == case.dtypes[0]]
            retyped = [draw(rng, d, x.shape) if i in typed else x
                       for i, x in enumerate(inputs)]
            try:
                _inferred(op, retyped, case.attrs_for(d))
            except lm.LaminaError:
                continue
            gaps.append(f"{op}: {d}")
    assert not gaps, f"dtypes the type rules accept but no sample tests: {gaps}"


# --- broadcasting through the frontend (numpy's rules and Builder.call's promotion) -----------


@pytest.mark.parametrize("shapes", [((4, 1), (3,)), ((2, 1, 3), (4, 3)), ((), (2, 3)),
                                    ((3, 1, 1), (1, 4, 1))], ids=str)
def test_broadcasting_binary_ops(shapes, backend, rng):
    x = rng.uniform(0.5, 2, shapes[0])
    y = rng.uniform(0.5, 2, shapes[1])
    f = lm.compile(lambda a, b: (a + b, a * b, a - b, a / b, a ** b, lm.maximum(a, b),
                                 a < b), backend=backend)
    out = f(x, y)
    want = [x + y, x * y, x - y, x / y, np.exp(y * np.log(x)), np.where(x > y, x, y), x < y]
    for got, exp in zip(out, want):
        assert got.shape == np.broadcast_shapes(shapes[0], shapes[1])
        if exp.dtype == np.bool_:
            np.testing.assert_array_equal(got, exp)
        else:
            assert_close(got, exp)


def test_broadcasting_where(backend, rng):
    c = rng.random((2, 1, 3)) < 0.5
    a = rng.standard_normal((4, 3)).astype(F32)
    b = rng.standard_normal((4, 1)).astype(F32)
    out = lm.compile(lambda c, a, b: lm.where(c, a, b), backend=backend)(c, a, b)
    cb, ab, bb = np.broadcast_arrays(c, a, b)
    assert out.shape == (2, 4, 3) and out.dtype == F32
    np.testing.assert_array_equal(out, np.select([cb], [ab], bb))


def test_promotion_of_mixed_operands(backend):
    """Builder.call: int32 tensor with float32 tensor -> float32 (JAX's rule, not numpy's
    float64); a Python float scalar with an int tensor -> the default float32."""
    i = np.array([1, 2, 3], np.int32)
    f = np.array([0.5, 0.25, 2.0], np.float32)
    out = lm.compile(lambda i, f: (i + f, i * 0.5, i + 1), backend=backend)(i, f)
    assert [o.dtype for o in out] == [F32, F32, I32]
    np.testing.assert_array_equal(out[0], np.array([1.5, 2.25, 5.0], F32))
    np.testing.assert_array_equal(out[1], np.array([0.5, 1.0, 1.5], F32))
    np.testing.assert_array_equal(out[2], np.array([2, 3, 4], I32))


# --- type rules: errors name the op -------------------------------------------------------------


def _params(*types):
    b = Builder("bad")
    return b, [b.add_input(f"x{i}", TensorType(*t)) for i, t in enumerate(types)]


FLOAT_ONLY_UNARY = sorted(n for n, o in REGISTRY.items() if o.float_only and o.arity == 1)
FLOAT_ONLY_BINARY = sorted(n for n, o in REGISTRY.items() if o.float_only and o.arity == 2)
BINARY = sorted(n for n, o in REGISTRY.items()
                if o.arity == 2 and o.kind in ("elementwise", "contract"))
ELEMENTWISE_BINARY = sorted(n for n in BINARY if REGISTRY[n].kind == "elementwise")


def test_error_lists_are_populated():
    assert {"exp", "log", "tanh", "gelu", "softmax"} <= set(FLOAT_ONLY_UNARY)
    assert {"div", "pow"} <= set(FLOAT_ONLY_BINARY)
    assert {"add", "maximum", "lt", "logical_and", "matmul"} <= set(BINARY)


@pytest.mark.parametrize("op", FLOAT_ONLY_UNARY)
@pytest.mark.parametrize("dtype", ["bool", "i32"])
def test_float_only_op_rejects_non_float(op, dtype):
    b, (x,) = _params(((3,), dtype))
    with pytest.raises(lm.DTypeError, match=rf"\b{op}\b"):
        b.emit(op, (x,))


@pytest.mark.parametrize("op", FLOAT_ONLY_BINARY)
def test_float_only_binary_rejects_bool(op):
    b, (x, y) = _params(((3,), "bool"), ((3,), "bool"))
    with pytest.raises(lm.DTypeError, match=rf"\b{op}\b"):
        b.emit(op, (x, y))


@pytest.mark.parametrize("op", BINARY)
def test_binary_op_rejects_mixed_dtypes(op):
    b, (x, y) = _params(((3, 3), "f32"), ((3, 3), "f64"))
    with pytest.raises(lm.DTypeError, match=rf"\b{op}\b"):
        b.emit(op, (x, y))


@pytest.mark.parametrize("op", ELEMENTWISE_BINARY)
def test_binary_op_rejects_unbroadcastable_shapes(op):
    dtype = "bool" if op.startswith("logical") else "f32"
    b, (x, y) = _params(((3,), dtype), ((4,), dtype))
    with pytest.raises(lm.ShapeError, match=rf"\b{op}\b.*\[3\].*\[4\]"):
        b.emit(op, (x, y))


def test_where_type_errors():
    b, (c, a, f64, cf) = _params(((4,), "bool"), ((4,), "f32"), ((4,), "f64"), ((4,), "f32"))
    with pytest.raises(lm.DTypeError, match=r"\bwhere\b.*bool"):
        b.emit("where", (cf, a, a))
    with pytest.raises(lm.DTypeError, match=r"\bwhere\b"):
        b.emit("where", (c, a, f64))
    b, (c, a, x) = _params(((2,), "bool"), ((3,), "f32"), ((3,), "f32"))
    with pytest.raises(lm.ShapeError, match=r"\bwhere\b"):
        b.emit("where", (c, a, x))


def test_matmul_shape_errors():
    b, (x, y, z) = _params(((2, 3), "f32"), ((4, 5), "f32"), ((3,), "f32"))
    with pytest.raises(lm.ShapeError, match=r"matmul.*3 != 4"):
        b.emit("matmul", (x, y))
    with pytest.raises(lm.ShapeError, match=r"matmul.*2 dimensions"):
        b.emit("matmul", (x, z))
    b, (p, q) = _params(((2, 3, 4), "f32"), ((5, 4, 2), "f32"))
    with pytest.raises(lm.ShapeError, match=r"matmul.*batch"):
        b.emit("matmul", (p, q))


def test_integer_only_inputs_are_checked():
    b, (x, fi, bl) = _params(((3, 4), "f32"), ((2,), "f32"), ((3,), "f32"))
    with pytest.raises(lm.DTypeError, match=r"take.*integers"):
        b.emit("take", (x, fi), {"axis": 0})
    with pytest.raises(lm.DTypeError, match=r"one_hot.*integers"):
        b.emit("one_hot", (bl,), {"num_classes": 3})
    with pytest.raises(lm.DTypeError, match=r"logical_and.*bool"):
        b.emit("logical_and", (bl, bl))
    with pytest.raises(lm.DTypeError, match=r"random.*key"):
        b.emit("random_uniform", (fi,), {"stream": 0, "dtype": "f32", "shape": (2,)})


def test_frontend_errors_are_located_and_name_the_op(backend):
    def f(x, y):
        return x + y

    with pytest.raises(lm.ShapeError, match=r"\badd\b") as info:
        lm.compile(f, backend=backend)(np.zeros(3, F32), np.zeros(4, F32))
    assert info.value.loc is not None and info.value.loc.file.endswith("test_ops.py")


# --- random numbers: Philox-4x32-10 -------------------------------------------------------------

# Random123's known-answer vectors (kat_vectors): counter, key -> output.
PHILOX_KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


@pytest.mark.parametrize("ctr, key, out", PHILOX_KAT)
def test_philox_known_answers(ctr, key, out):
    assert philox_4x32_10(ctr, key) == out  # the tests' own reference
    words = philox4x32(*[np.array([c], np.uint32) for c in ctr], *key)
    assert tuple(int(w[0]) for w in words) == out  # lamina's


def _draw_fn(op, shape, stream=0, dtype="f32", backend="numpy"):
    return lm.compile(lambda k: apply(op, k, stream=stream, dtype=dtype, shape=shape),
                      backend=backend)


def test_uniform_statistics(backend):
    u = _draw_fn("random_uniform", (100_000,), backend=backend)(np.int64(42))
    assert u.dtype == F32 and u.shape == (100_000,)
    assert u.min() >= 0.0 and u.max() < 1.0
    assert abs(u.mean() - 0.5) < 5e-3  # the standard error is 0.29 / sqrt(1e5) ~ 1e-3
    assert abs(u.var() - 1 / 12) < 2e-3
    np.testing.assert_array_equal(u * 2.0 ** 24, np.floor(u * 2.0 ** 24))  # 24-bit grid
    counts = np.histogram(u, bins=10, range=(0, 1))[0]
    assert counts.min() > 9_500 and counts.max() < 10_500
    assert len(np.unique(u)) > 99_000


def test_normal_statistics(backend):
    z = _draw_fn("random_normal", (100_000,), backend=backend)(np.int64(7))
    assert z.dtype == F32 and np.isfinite(z).all()
    assert abs(z.mean()) < 0.02
    assert abs(z.std() - 1) < 0.02
    assert abs(np.mean(np.abs(z) < 1) - 0.6827) < 0.01
    assert abs(np.mean(z ** 4) - 3) < 0.15  # kurtosis of a normal


def test_random_is_deterministic_and_keyed(backend):
    draw = _draw_fn("random_uniform", (64,), backend=backend)
    draw1 = _draw_fn("random_uniform", (64,), stream=1, backend=backend)
    a = draw(np.int64(5))
    np.testing.assert_array_equal(a, draw(np.int64(5)))
    np.testing.assert_array_equal(a, _draw_fn("random_uniform", (64,), backend=backend)(
        np.int64(5)))
    for other in (draw(np.int64(6)), draw(np.int64(5 + 2 ** 32)), draw1(np.int64(5))):
        assert np.mean(a == other) < 0.05
    # Element i depends only on (key, stream, i): a larger draw extends a smaller one.
    big = _draw_fn("random_uniform", (8, 16), backend=backend)(np.int64(5))
    np.testing.assert_array_equal(big.reshape(-1)[:64], a)
    n = _draw_fn("random_normal", (64,), backend=backend)(np.int64(5))
    np.testing.assert_array_equal(n, _draw_fn("random_normal", (64,), backend=backend)(
        np.int64(5)))


def test_random_dtype_attribute(backend):
    key = np.int64(3)
    u32 = _draw_fn("random_uniform", (16,), dtype="f32", backend=backend)(key)
    u64 = _draw_fn("random_uniform", (16,), dtype="f64", backend=backend)(key)
    assert u64.dtype == F64
    # float32 draws carry 24 random bits, float64 draws 53 (from words 0 and 1)
    np.testing.assert_array_equal(u32, uniform_expected(3, 0, (16,)).astype(F32))
    np.testing.assert_array_equal(u64, uniform_expected(3, 0, (16,), F64))
    assert np.abs(u64 - u32).max() < 2.0 ** -24  # the same top bits


def test_random_int32_key(backend):
    u = lm.compile(lambda k: apply("random_uniform", k, stream=0, dtype="f32", shape=(4,)),
                   backend=backend)(np.int32(-3))
    np.testing.assert_array_equal(u, uniform_expected(-3, 0, (4,)).astype(F32))

