"""sin, cos, floor, ceil, round, floor division, remainder, cumsum and padding: against numpy
(and PyTorch for ``nn.functional.pad``) on every backend (triton under its interpreter without a
GPU), over 0-d, zero-size and non-contiguous inputs, edge values bit for bit, gradients against
float64 finite differences, and the CPU backend's sin/cos accuracy in ulps over dense grids.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import directional_fd

import lamina as lm
from lamina.frontend.nn import functional as F

F32, F64, I32, I64 = (np.dtype(d) for d in (np.float32, np.float64, np.int32, np.int64))
SHAPES = [(), (0,), (3, 0), (7,), (4, 5), (2, 3, 4)]


def _views(x):
    """The array itself and non-contiguous views of it (transposed, strided, reversed)."""
    out = [x]
    if x.ndim >= 2:
        out.append(x.T)
    if x.ndim >= 1 and x.shape[0] > 1:
        out.append(x[::2])
        out.append(x[::-1])
    return out


def _same_shape_views(x):
    """The array and non-contiguous views of the same shape (column-major, reversed)."""
    out = [x]
    if x.ndim >= 2:
        out.append(np.asfortranarray(x))
    if x.ndim >= 1 and x.shape[0] > 1:
        out.append(x[::-1])
    return out


def _same_bits(got, want, err_msg=""):
    """Equal values, NaN where numpy has NaN, and the same sign of zero."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, (got.dtype, got.shape, want.dtype,
                                                                 want.shape, err_msg)
    np.testing.assert_array_equal(got, want, err_msg=err_msg)
    if got.dtype.kind == "f":
        zeros = want == 0
        np.testing.assert_array_equal(np.signbit(got[zeros]), np.signbit(want[zeros]),
                                      err_msg=f"sign of zero: {err_msg}")


def _ulps(got, want):
    """The distance in float32 steps between two float32 arrays."""
    def ordered(a):
        i = a.view(np.int32).astype(np.int64)
        return np.where(i < 0, -(i & 0x7FFFFFFF), i)

    return np.abs(ordered(got) - ordered(want))


def _correctly_rounded(fn, x):
    return fn(x.astype(np.float64)).astype(x.dtype)


# --- unary ops ----------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("op", ["floor", "ceil", "round"])
@pytest.mark.parametrize("dtype", [F32, F64, I32, I64], ids=str)
def test_rounding_matches_numpy(op, dtype, shape, backend, rng):
    x = (rng.uniform(-6, 6, shape) * 2).round() / 4 if dtype.kind == "f" else \
        rng.integers(-50, 50, shape)
    x = x.astype(dtype)  # quarters: halves (ties) and exact integers are common
    f = lm.compile(getattr(lm, op), backend=backend)
    ref = {"floor": np.floor, "ceil": np.ceil, "round": np.round}[op]
    for v in _views(x):
        _same_bits(f(v), ref(v), f"{op} {dtype} {v.shape} on {backend}")


def test_negation_and_odd_functions_keep_the_sign_of_zero(backend):
    """-x of 0.0 is -0.0 (Triton before 3.7 spells unary minus 0 - x, which gives +0.0: its
    negations are multiplications by -1 instead); odd functions keep a zero's sign."""
    x = np.array([0.0, -0.0, 1.5, -2.0, np.inf, -np.inf, np.nan], np.float32)
    zeros = np.array([0.0, -0.0, 0.0, -0.0], np.float32)
    for d in (F32, F64):
        for op, ref in [(lambda a: -a, np.negative), (lm.round, np.round),
                        (lambda a: -lm.abs(a), lambda a: -np.abs(a))]:
            _same_bits(lm.compile(op, backend=backend)(x.astype(d)), ref(x.astype(d)),
                       f"{ref.__name__} {d}")
        for op, ref in [(lm.tanh, np.tanh), (lm.sin, np.sin), (lm.erf, np.negative),
                        (lm.sqrt, np.sqrt), (lm.sign, np.sign), (lambda a: a * 3.0, np.negative)]:
            want = ref(zeros.astype(d)) if ref is not np.negative else zeros.astype(d)
            _same_bits(lm.compile(op, backend=backend)(zeros.astype(d)), want,
                       f"{getattr(op, '__name__', op)} of signed zeros, {d}")


def test_rounding_edge_values(backend):
    x = np.array([-0.5, 0.5, 1.5, 2.5, -1.5, -2.5, -0.0, 0.0, 0.49999997, -0.49999997, 1e-30,
                  -1e-30, 8388607.5, 2.0 ** 30 + 1, np.inf, -np.inf, np.nan], np.float32)
    for op, ref in [(lm.floor, np.floor), (lm.ceil, np.ceil), (lm.round, np.round)]:
        for d in (F32, F64):
            _same_bits(lm.compile(op, backend=backend)(x.astype(d)), ref(x.astype(d)),
                       f"{op.__name__} {d} on {backend}")


def test_round_decimals(backend, rng):
    x = rng.uniform(-100, 100, 50)
    for dec in (2, 1, -1):
        got = lm.compile(lambda v, dec=dec: lm.round(v, dec), backend=backend)(x)
        np.testing.assert_allclose(got, np.round(x, dec), rtol=0, atol=1e-12)
    got = lm.compile(lambda v: (round(v), v.round()), backend=backend)(x)
    _same_bits(got[0], np.round(x)), _same_bits(got[1], np.round(x))


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [F32, F64], ids=str)
def test_sin_cos_match_numpy(dtype, shape, backend, rng):
    x = rng.uniform(-20, 20, shape).astype(dtype)
    f = lm.compile(lambda v: (lm.sin(v), lm.cos(v)), backend=backend)
    for v in _views(x):
        s, c = f(v)
        assert s.dtype == dtype and s.shape == v.shape
        if dtype == F32:  # within 2 steps of the correctly rounded float
            assert _ulps(s, _correctly_rounded(np.sin, v)).max(initial=0) <= 2
            assert _ulps(c, _correctly_rounded(np.cos, v)).max(initial=0) <= 2
        else:
            np.testing.assert_allclose(s, np.sin(v), rtol=1e-15, atol=1e-16)
            np.testing.assert_allclose(c, np.cos(v), rtol=1e-15, atol=1e-16)


def test_sin_cos_edge_values(backend):
    x = np.array([0.0, -0.0, np.pi / 2, np.pi, 3 * np.pi / 2, 2 * np.pi, -np.pi / 2, 1e-40,
                  -1e-40, 1e4, 12345.678, 1e5, 3e8, 1e20, -3.4028235e38, np.inf, -np.inf,
                  np.nan], np.float32)
    s, c = lm.compile(lambda v: (lm.sin(v), lm.cos(v)), backend=backend)(x)
    assert np.isnan(s[-3:]).all() and np.isnan(c[-3:]).all()
    assert np.signbit(s[1]) and not np.signbit(s[0])  # sin(-0.0) is -0.0
    assert c[0] == c[1] == 1.0
    fin = slice(0, -3)
    assert _ulps(s[fin], _correctly_rounded(np.sin, x[fin])).max() <= 2
    assert _ulps(c[fin], _correctly_rounded(np.cos, x[fin])).max() <= 2


def test_llvm_sin_cos_within_one_ulp_on_dense_grids():
    """The CPU backend's float32 sin/cos (an exact reduction for every input): at most 1 ulp
    from the correctly rounded result near 0, across [-10, 10], at multiples of pi/2, on
    every float32 of [0.5, 1) and over the whole exponent range up to the largest float."""
    rng = np.random.default_rng(1)
    grids = {
        "dense": np.linspace(-10, 10, 1_000_001).astype(F32),
        "tiny": (rng.standard_normal(200_000) * 1e-3).astype(F32),
        "one_binade": np.arange(0x3F000000, 0x3F000000 + (1 << 21), 2,
                                dtype=np.int32).view(F32),
        "pi_over_2": (np.arange(-200_000, 200_000) * (np.pi / 2)).astype(F32),
        "large": (rng.choice([-1, 1], 300_000) * np.exp(rng.uniform(np.log(1e3),
                                                                       np.log(3.4e38),
                                                                       300_000))).astype(F32),
    }
    f = lm.compile(lambda v: (lm.sin(v), lm.cos(v)), backend="llvm")
    for name, x in grids.items():
        s, c = f(x)
        worst_s = _ulps(s, _correctly_rounded(np.sin, x)).max()
        worst_c = _ulps(c, _correctly_rounded(np.cos, x)).max()
        assert worst_s <= 1 and worst_c <= 1, (name, worst_s, worst_c)


def test_llvm_sin_cos_float64_is_libm_accurate(rng):
    x = np.concatenate([rng.uniform(-10, 10, 10_000), rng.uniform(-1e6, 1e6, 10_000)])
    s, c = lm.compile(lambda v: (lm.sin(v), lm.cos(v)), backend="llvm")(x)
    np.testing.assert_allclose(s, np.sin(x), rtol=0, atol=2e-16)
    np.testing.assert_allclose(c, np.cos(x), rtol=0, atol=2e-16)


# --- floor division and remainder -------------------------------------------------------------


@pytest.mark.parametrize("dtype", [F32, F64, I32, I64], ids=str)
@pytest.mark.parametrize("shapes", [((4, 5), (4, 5)), ((4, 1), (5,)), ((), (3,)),
                                    ((0, 3), (3,)), ((2, 3, 4), (4,))], ids=str)
def test_floor_divide_remainder_match_numpy(dtype, shapes, backend, rng):
    if dtype.kind == "f":
        x = rng.uniform(-20, 20, shapes[0]).astype(dtype)
        y = (rng.uniform(0.3, 4, shapes[1]) * rng.choice([-1, 1], shapes[1])).astype(dtype)
    else:
        x = rng.integers(-30, 30, shapes[0]).astype(dtype)
        y = rng.integers(-5, 6, shapes[1]).astype(dtype)  # 0 and -1 included
    f = lm.compile(lambda a, b: (a // b, a % b, lm.floor_divide(a, b), lm.remainder(a, b),
                                 lm.mod(a, b)), backend=backend)
    for vx in _same_shape_views(x):
        with np.errstate(all="ignore"):
            want_q, want_r = np.floor_divide(vx, y), np.remainder(vx, y)
        q, r, q2, r2, r3 = f(vx, y)
        for got, want in [(q, want_q), (q2, want_q), (r, want_r), (r2, want_r), (r3, want_r)]:
            _same_bits(got, want, f"{dtype} {vx.shape} {y.shape} on {backend}")


def test_remainder_edge_values(backend):
    """The sign of the divisor, zeros with their signs, division by zero, infinities, NaN."""
    x = np.array([5, -5, 5, -5, 0, -0.0, 0, 1e-10, -1e-10, 7.5, -7.5, np.inf, 5, -5, 5, np.nan,
                  3, 1, -1, 0, 6, -6], np.float64)
    y = np.array([3, 3, -3, -3, 2, 2, -2, 1, 1, -2.5, 2.5, 2, np.inf, np.inf, -np.inf, 2,
                  np.nan, 0, 0, 0, 3, 3], np.float64)
    f = lm.compile(lambda a, b: (a // b, a % b), backend=backend)
    for d in (F32, F64):
        q, r = f(x.astype(d), y.astype(d))
        with np.errstate(all="ignore"):
            _same_bits(q, np.floor_divide(x.astype(d), y.astype(d)), f"// {d} on {backend}")
            _same_bits(r, np.remainder(x.astype(d), y.astype(d)), f"% {d} on {backend}")


def test_integer_division_by_zero_minus_one_and_the_smallest_int(backend):
    """numpy's results: x // 0 and x % 0 are 0; INT_MIN // -1 wraps to INT_MIN (the hardware
    division would trap)."""
    for d in (I32, I64):
        small = np.iinfo(d).min
        x = np.array([7, -7, small, small, small, 0, 9, -9], d)
        y = np.array([0, 0, -1, 0, 1, -1, -1, 4], d)
        q, r = lm.compile(lambda a, b: (a // b, a % b), backend=backend)(x, y)
        with np.errstate(all="ignore"):
            _same_bits(q, np.floor_divide(x, y), f"// {d}")
            _same_bits(r, np.remainder(x, y), f"% {d}")


def test_reflected_operators_and_python_scalars(backend):
    x = np.array([[1.5, -2.0, 7.25]], np.float32)
    p = lm.nn.Parameter(np.array([3.0, -4.0, 5.0], np.float32))
    f = lm.compile(lambda v: (v % 2, 7 % v, v // 0.5, 7 // v, divmod(v, 2.0), divmod(7, v),
                              p % 2, 10 // p, p // v, v % p), backend=backend)
    out = f(x)
    pv = p.numpy()
    want = [x % 2, 7 % x, x // 0.5, 7 // x, divmod(x, 2.0), divmod(7, x), pv % 2, 10 // pv,
            pv // x, x % pv]
    for got, exp in zip(out, want):
        if isinstance(exp, tuple):
            for g, e in zip(got, exp):
                _same_bits(g, e)
        else:
            _same_bits(got, exp.astype(np.float32) if exp.dtype == F64 else exp)
    assert (p % 2).dtype == np.float32  # outside a trace a parameter is its array


def test_dtype_errors_name_the_op():
    with pytest.raises(lm.DTypeError, match="floor"):
        lm.trace(lambda v: lm.floor(v), np.array([True]))
    with pytest.raises(lm.DTypeError, match="remainder"):
        lm.trace(lambda v: v % v, np.array([True]))
    with pytest.raises(lm.LaminaError, match="cumsum.*axis 2 is out of range"):
        lm.trace(lambda v: lm.cumsum(v, axis=2), np.ones((2, 3), F32))


# --- cumsum ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape, axis", [((7,), 0), ((4, 5), 1), ((4, 5), 0), ((2, 3, 4), 1),
                                         ((2, 3, 4), -1), ((0, 3), 1), ((3, 0), 1), ((3, 1), 0),
                                         ((2, 3), None)], ids=str)
@pytest.mark.parametrize("dtype", [F32, F64, I32, I64, np.dtype(bool)], ids=str)
def test_cumsum_matches_numpy(shape, axis, dtype, backend, rng):
    x = (rng.uniform(-3, 3, shape) if dtype.kind == "f" else rng.integers(-5, 6, shape)
         ).astype(dtype)
    f = lm.compile(lambda v: (lm.cumsum(v, axis=axis), lm.cumsum(v, axis, reverse=True)
                              if axis is not None else lm.cumsum(v)), backend=backend)
    for v in _views(x):
        fwd, rev = f(v)
        want = np.cumsum(v, axis=axis)
        assert fwd.dtype == want.dtype, (fwd.dtype, want.dtype)  # ints and bools: int64
        np.testing.assert_allclose(fwd, want, rtol=2e-6, atol=1e-5)
        if axis is not None:
            want_rev = np.flip(np.cumsum(np.flip(v, axis), axis=axis), axis)
            np.testing.assert_allclose(rev, want_rev, rtol=2e-6, atol=1e-5)


@pytest.mark.parametrize("shape, axis", [((3, 5000), 1), ((5000, 3), 0), ((2, 9000), 1),
                                         ((20000,), 0)], ids=str)
def test_cumsum_long_axes(shape, axis, backend, rng):
    """Long rows: the CPU's sequential sweeps (in a register, or a slice at a time) and the
    chunked Triton scan, forward and reverse, within the bound of a sequential sum."""
    x = rng.standard_normal(shape).astype(F32)
    x64 = x.astype(np.float64)
    f = lm.compile(lambda v: (lm.cumsum(v, axis), lm.cumsum(v, axis, reverse=True)),
                   backend=backend)
    fwd, rev = f(x)
    n = shape[axis]
    bound = n * 2.0 ** -24 * np.cumsum(np.abs(x64), axis=axis) + 1e-6
    assert (np.abs(fwd - np.cumsum(x64, axis=axis)) <= bound).all()
    rev_want = np.flip(np.cumsum(np.flip(x64, axis), axis=axis), axis)
    rev_bound = n * 2.0 ** -24 * np.flip(np.cumsum(np.flip(np.abs(x64), axis), axis=axis),
                                         axis) + 1e-6
    assert (np.abs(rev - rev_want) <= rev_bound).all()


def test_cumsum_numpy_and_torch_conventions(backend):
    x = np.arange(6, dtype=np.int32).reshape(2, 3)
    f = lm.compile(lambda v: (lm.cumsum(v), v.cumsum(1), lm.cumsum(v, 0, dtype=lm.float64),
                              lm.cumsum(v[0, 0], axis=0), lm.cumsum(v > 2, axis=1)),
                   backend=backend)
    flat, rows, wide, scalar, count = f(x)
    np.testing.assert_array_equal(flat, np.cumsum(x))
    assert flat.dtype == np.int64 and count.dtype == np.int64
    np.testing.assert_array_equal(rows, np.cumsum(x, 1))
    assert wide.dtype == np.float64
    np.testing.assert_array_equal(wide, np.cumsum(x, 0))
    assert scalar.shape == () and scalar == 0  # torch.cumsum of a 0-d tensor
    np.testing.assert_array_equal(count, np.cumsum(x > 2, 1))
    np.testing.assert_array_equal(lm.cumsum(x, axis=1), np.cumsum(x, axis=1))  # eagerly


def test_cumsum_is_one_scan_kernel_with_its_producers():
    """A primitive, not a triangular matmul: one kernel holding the scan and the exp feeding it."""
    f = lm.compile(lambda v: lm.cumsum(lm.exp(v), axis=1) * 2.0, backend="llvm")
    x = np.ones((4, 100_000), F32) * 1e-6
    np.testing.assert_allclose(f(x), np.cumsum(np.exp(x.astype(np.float64)), 1) * 2, rtol=1e-5)
    ir = f.ir("fused")
    assert "matmul" not in ir
    assert "fused_exp_cumsum" in ir


# --- gradients against float64 finite differences ----------------------------------------------


def _check_grad(loss, args, wrt, backend, rng, rtol=1e-6, atol=1e-8):
    grads = lm.compile(lm.grad(loss, argnums=wrt), backend=backend)(*args)
    grads = grads if isinstance(grads, tuple) else (grads,)
    vs = [rng.standard_normal(args[i].shape) for i in wrt]

    def numeric(*xs):
        full = list(args)
        for i, v in zip(wrt, xs):
            full[i] = v
        return lm.compile(loss, backend="numpy")(*full)

    fd = directional_fd(numeric, [args[i] for i in wrt], vs)
    analytic = sum(float((g * v).sum()) for g, v in zip(grads, vs))
    np.testing.assert_allclose(analytic, fd, rtol=rtol, atol=atol)


def test_gradients(backend, rng):
    x = rng.uniform(-3, 3, (3, 4))
    y = rng.uniform(0.5, 2, (4,)) * rng.choice([-1, 1], 4)
    x = y * (np.floor(x / y) + rng.uniform(0.2, 0.8, x.shape))  # away from the jumps of %
    w = rng.standard_normal((3, 4))
    losses = [
        (lambda a: (lm.sin(a) * w).sum(), (x,), (0,)),
        (lambda a: (lm.cos(a) * w).sum(), (x,), (0,)),
        (lambda a, b: ((a % b) * w).sum(), (x, y), (0, 1)),
        (lambda a: (lm.cumsum(a, axis=1) * w).sum(), (x,), (0,)),
        (lambda a: (lm.cumsum(a, axis=0, reverse=True) * w).sum(), (x,), (0,)),
        (lambda a: (lm.cumsum(lm.sin(a), axis=-1) ** 2).sum(), (x,), (0,)),
    ]
    for loss, args, wrt in losses:
        _check_grad(loss, args, wrt, backend, rng)


def test_piecewise_constant_ops_have_zero_gradient(backend, rng):
    x, y = rng.uniform(-3, 3, 5), rng.uniform(0.5, 2, 5)
    g = lm.compile(lm.grad(lambda a, b: (lm.floor(a) + lm.ceil(a) + lm.round(a) + a // b).sum(),
                           argnums=(0, 1)), backend=backend)(x, y)
    for gi in g:
        np.testing.assert_array_equal(gi, 0.0)
    # the remainder: d/dx = 1, d/dy = -floor(x / y)
    gx, gy = lm.compile(lm.grad(lambda a, b: (a % b).sum(), argnums=(0, 1)),
                        backend=backend)(x, y)
    np.testing.assert_array_equal(gx, np.ones(5))
    np.testing.assert_array_equal(gy, -np.floor_divide(x, y))


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric", "wrap"])
def test_pad_gradients(mode, backend, rng):
    x = rng.standard_normal((3, 4))
    w = rng.standard_normal(np.pad(x, ((2, 1), (3, 5)), mode=mode).shape)
    kw = {"value": 1.5} if mode == "constant" else {}
    _check_grad(lambda a: (lm.pad(a, ((2, 1), (3, 5)), mode=mode, **kw) * w).sum(), (x,), (0,),
                backend, rng)


# --- padding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["constant", "edge", "reflect", "symmetric", "wrap"])
@pytest.mark.parametrize("shape, width", [((5,), (2, 3)), ((3, 4), 2), ((3, 4), ((1, 0), (0, 3))),
                                          ((2, 3), ((4, 7), (5, 1))), ((1, 3), ((2, 2), (1, 1))),
                                          ((), 2), ((2, 3, 4), ((0, 0), (1, 2), (3, 0)))],
                         ids=str)
def test_pad_matches_numpy(mode, shape, width, backend, rng):
    x = rng.standard_normal(shape).astype(F32)
    kw = {"constant_values": -2.5} if mode == "constant" else {}
    want = np.pad(x, width, mode=mode, **kw)
    f = lm.compile(lambda v: lm.pad(v, width, mode=mode, **kw), backend=backend)
    for v in _views(x):
        _same_bits(f(v), np.pad(v, width, mode=mode, **kw), f"{mode} {shape} {width}")
    _same_bits(lm.pad(x, width, mode=mode, **kw), want)  # eagerly


def test_pad_values_and_dtypes(backend):
    x = np.array([[1, 2], [3, 4]], np.int32)
    f = lm.compile(lambda v: (lm.pad(v, 1, value=7), lm.pad(v > 2, 1, value=True),
                              lm.pad(v, 1, mode="replicate"), lm.pad(v, 1, value=-0.5)),
                   backend=backend)
    a, b, c, d = f(x)
    _same_bits(a, np.pad(x, 1, constant_values=7))
    _same_bits(b, np.pad(x > 2, 1, constant_values=True))
    _same_bits(c, np.pad(x, 1, mode="edge"))
    _same_bits(d, np.pad(x, 1, constant_values=-0.5))  # cast to the tensor's dtype, as numpy


def test_pad_errors():
    x = np.ones((2, 3), F32)
    with pytest.raises(lm.LaminaError, match="unknown mode"):
        lm.pad(x, 1, mode="mirror")
    with pytest.raises(lm.LaminaError, match="negative pad widths"):
        lm.pad(x, -1)
    with pytest.raises(lm.LaminaError, match="does not fit a tensor of rank 2"):
        lm.pad(x, ((1, 1), (1, 1), (1, 1)))
    with pytest.raises(lm.LaminaError, match="empty axis"):
        lm.pad(np.ones((0, 3), F32), 1, mode="edge")
    with pytest.raises(lm.LaminaError, match="must be Python ints"):
        lm.pad(x, 1.5)


TORCH_CASES = [((1, 2, 5), (2, 3), "constant", 1.5), ((1, 2, 5), (4, 4), "reflect", None),
               ((2, 3, 4), (1, 2, 2, 1), "reflect", None), ((1, 2, 5), (3, 7), "replicate", None),
               ((2, 3, 4), (1, 0, 0, 2), "replicate", None), ((1, 2, 5), (5, 2), "circular", None),
               ((2, 3, 4), (2, 1, 1, 3), "circular", None), ((2, 3, 4), (-1, 2, 1, -2), "constant",
                                                             0.0),
               ((2, 3, 4), (1, 1, 1, 1, 1, 1), "constant", None), ((3, 4), (0, 0), "reflect",
                                                                   None)]


@pytest.mark.parametrize("shape, pad, mode, value", TORCH_CASES, ids=str)
def test_functional_pad_matches_torch(shape, pad, mode, value, backend, rng):
    torch = pytest.importorskip("torch")
    x = rng.standard_normal(shape).astype(F32)
    kw = {} if value is None else {"value": value}
    want = torch.nn.functional.pad(torch.from_numpy(x), pad, mode=mode, **kw).numpy()
    got = lm.compile(lambda v: F.pad(v, pad, mode=mode, **kw), backend=backend)(x)
    _same_bits(got, want, f"{mode} {pad}")


def test_functional_pad_errors_follow_torch():
    x = np.ones((1, 2, 3), F32)
    with pytest.raises(lm.LaminaError, match="reflect padding .* must be less than its size 3"):
        F.pad(x, (3, 0), mode="reflect")
    with pytest.raises(lm.LaminaError, match="wraps around more than once"):
        F.pad(x, (4, 0), mode="circular")
    with pytest.raises(lm.LaminaError, match="even number"):
        F.pad(x, (1, 1, 1))
    with pytest.raises(lm.LaminaError, match="even number"):
        F.pad(x, (1,) * 8)
    with pytest.raises(lm.LaminaError, match="mode must be"):
        F.pad(x, (1, 1), mode="edge")
    with pytest.raises(lm.LaminaError, match="only 'constant' crops"):
        F.pad(x, (-1, 1), mode="replicate")
    with pytest.raises(lm.LaminaError, match="crops more than"):
        F.pad(x, (-2, -2))


# --- Triton: the kernels compile ahead of time for GPUs -------------------------------------


@pytest.mark.parametrize("target", ["sm_80", "sm_90"])
def test_triton_kernels_compile_for_gpus(target, monkeypatch):
    """The interpreter accepts Python that Triton's compiler may refuse: every kernel of the new
    ops (both float widths and int64; a scan along a short and a chunked long axis, forward and
    reverse) also compiles to a cubin."""
    pytest.importorskip("torch", reason="Triton's interpreter needs torch")
    from lamina.backends.triton import aot

    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")

    def f(x, y, xd, i, j):
        return (lm.sin(x) + lm.cos(x), lm.round(xd) + lm.floor(xd) - lm.ceil(x.astype(lm.float64)),
                x // y + x % y, xd // 3.0 + xd % -2.5, i // j + i % j,
                lm.cumsum(x, axis=1), lm.cumsum(x, axis=0, reverse=True), lm.cumsum(i > 0, 1),
                lm.pad(x, ((1, 2), (3, 0)), mode="reflect"), F.pad(x, (1, 1), value=2.0))

    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 9000)).astype(F32)
    args = (x, np.full(9000, 1.5, F32), x.astype(F64), rng.integers(-9, 9, (3, 9000)),
            rng.integers(-3, 4, 9000))
    fc = lm.compile(f, backend="triton")
    fc.lower(*args)  # compiled, not run (the interpreter is slow on these sizes)
    kinds = set()
    for _, src in fc._variant().program.sources:
        for s in [*src.prologue, src]:
            kinds.add(s.kind)
            aot.compile_source(s, target)
    assert {"scan", "loop"} <= kinds


# --- the checker's oracle -----------------------------------------------------------------------


def test_oracle_bounds_each_prefix_of_a_cumsum():
    """The bound of prefix k is sum's for its k terms: it grows along the axis (reverse: from
    the end), and a wrong prefix (one term missing) falls outside it."""
    from lamina.testing.check import oracle_graph
    from lamina.testing.oracle import Oracle, gamma, mismatches, unit

    x = np.full((2, 1000), 0.1, F32)
    for reverse in (False, True):
        _, g = oracle_graph(lambda v: lm.cumsum(v, axis=1, reverse=reverse), [x])
        (v, e), = Oracle(g).run([x])
        k = np.arange(1, 1001)[::-1] if reverse else np.arange(1, 1001)
        mag = k * float(np.float32(0.1))
        np.testing.assert_allclose(v[0], mag, rtol=1e-12)
        assert (e[0] >= [gamma(int(n), unit(lm.float32)) * m for n, m in zip(k, mag)]).all()
        assert (np.diff(e[0]) > 0).all() if not reverse else (np.diff(e[0]) < 0).all()
        wrong = v.astype(F32).copy()
        wrong[0, 500] -= np.float32(0.1)
        assert mismatches(wrong, v, e)[0, 500] and not mismatches(v.astype(F32), v, e).any()
    xi = np.arange(6).reshape(2, 3)
    _, g = oracle_graph(lambda v: lm.cumsum(v, axis=0), [xi])
    (v, e), = Oracle(g).run([xi])
    np.testing.assert_array_equal(v, np.cumsum(xi, 0))
    assert not e.any()  # integers: exact


def test_artifact_carries_the_trig_table(tmp_path):
    """sin's reduction table is data in the object code: a saved function runs after loading."""
    f = lm.compile(lambda v: lm.sin(v) + lm.cumsum(v % 2.0, axis=0), backend="llvm")
    x = np.linspace(-1e6, 1e6, 1001).astype(F32)
    want = f(x)
    f.save(str(tmp_path / "f.lamina"))
    np.testing.assert_array_equal(lm.load(str(tmp_path / "f.lamina"))(x), want)
