"""Sample inputs and independent expected values for every registered op (except ``grad``).

``SAMPLES[op]`` lists ``Case``s. Each case says how to make the op's inputs (a function of a
numpy Generator and a dtype), its attributes, the dtypes to test and, written here rather than
taken from the registry, what the op should compute: a numpy expression over the inputs. The
registry's own ``ref`` is never used as the expected value; the point is to check the registry's
semantics (and every backend's lowering) against an independent formula.

Inputs are chosen valid for the op and, for the gradient checks of ``test_grad``, away from
places where the op is not differentiable: positive for log/sqrt/rsqrt, away from 0 for
relu/abs/sign, no ties for max/min/maximum/minimum (separate ``ties`` cases, excluded from the
gradient checks, cover those).

Expected values are computed from float64 copies of float inputs (``expected_value``), so a
float32 result is compared with an accurate reference at float32 tolerances.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
I32, I64 = np.dtype(np.int32), np.dtype(np.int64)
BOOL = np.dtype(np.bool_)

FLOATS = (F32, F64)
INTS = (I32, I64)
NUMERIC = FLOATS + INTS
ALL = NUMERIC + (BOOL,)


@dataclass(frozen=True)
class Case:
    """One way of calling an op.

    make(rng, dtype) -> list of input arrays.
    expected(*inputs) -> the value the op must produce (float inputs arrive as float64).
    attrs: the attributes, or a function of the dtype giving them (for ``dtype=`` attributes).
    dtypes: the dtypes ``make`` is called with.
    result: the result dtype as a function of the tested dtype (default: the same dtype).
    grad: whether ``test_grad`` checks this case's gradient (float64 inputs).
    """

    name: str
    make: Callable[[np.random.Generator, np.dtype], list[np.ndarray]]
    expected: Callable[..., np.ndarray]
    attrs: dict | Callable[[np.dtype], dict] = field(default_factory=dict)
    dtypes: tuple = FLOATS
    result: Callable[[np.dtype], np.dtype] | None = None
    grad: bool = True

    def attrs_for(self, dtype) -> dict:
        return dict(self.attrs(np.dtype(dtype)) if callable(self.attrs) else self.attrs)

    def result_dtype(self, dtype) -> np.dtype:
        return np.dtype(self.result(np.dtype(dtype)) if self.result else dtype)

    def expected_value(self, inputs: list[np.ndarray]) -> np.ndarray:
        wide = [x.astype(np.float64) if x.dtype.kind == "f" else x for x in inputs]
        return np.asarray(self.expected(*wide))


# --- input makers -----------------------------------------------------------------------------


def draw(rng, dtype, shape, lo=-2.0, hi=2.0):
    """Random values of ``dtype``: uniform in [lo, hi) for floats, integers in [lo, hi] for
    ints, fair coins for bools."""
    d = np.dtype(dtype)
    if d.kind == "f":
        return rng.uniform(lo, hi, shape).astype(d)
    if d.kind == "i":
        return rng.integers(int(lo), int(hi) + 1, shape).astype(d)
    return rng.random(shape) < 0.5


def rand(*shapes, lo=-2.0, hi=2.0):
    """Inputs of the given shapes, all of the tested dtype."""
    return lambda rng, d: [draw(rng, d, s, lo, hi) for s in shapes]


def away(*shapes, gap=0.2):
    """Floats with |x| in [gap, 2) (away from kinks at 0); ints in [-5, 5] without 0."""

    def make(rng, d):
        out = []
        for s in shapes:
            sign = np.where(rng.random(s) < 0.5, -1, 1)
            if np.dtype(d).kind == "f":
                out.append((sign * rng.uniform(gap, 2.0, s)).astype(d))
            else:
                out.append((sign * rng.integers(1, 6, s)).astype(d))
        return out

    return make


def distinct(*shapes):
    """Inputs whose elements are all different (no ties anywhere, even across operands and
    after broadcasting): floats drawn from a grid on [-4, 4) plus a jitter of at most a quarter
    step (so at least 3/4 of a step apart, far more than a finite-difference step), distinct
    integers around 0."""

    def make(rng, d):
        sizes = [math.prod(s) for s in shapes]
        n = sum(sizes)
        if np.dtype(d).kind == "f":
            grid = np.linspace(-4, 4, max(2 * n, 32), endpoint=False)
            spacing = grid[1] - grid[0]
            values = rng.choice(grid, n, replace=False) + rng.uniform(0, spacing / 4, n)
        else:
            values = rng.choice(np.arange(-n - 10, n + 10), n, replace=False)
        parts = np.split(values.astype(d), np.cumsum(sizes)[:-1])
        return [p.reshape(s) for p, s in zip(parts, shapes)]

    return make


def ties(shape):
    """Integer-valued operands with many equal elements (ties for max/min/argmax)."""

    def make(rng, d):
        return [rng.integers(0, 3, shape).astype(d), rng.integers(0, 3, shape).astype(d)]

    return make


def fixed(*arrays):
    """Fixed input values (known-value checks), cast to the tested dtype."""
    return lambda rng, d: [np.asarray(a).astype(d) for a in arrays]


def labels(shape, n, lo=0):
    """Integer labels in [lo, n) of the tested (integer) dtype."""
    return lambda rng, d: [rng.integers(lo, n, shape).astype(d)]


# --- independent reference formulas ------------------------------------------------------------

_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def gelu_exact(x):
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def softmax(x, axis):
    e = np.exp(x)
    return e / np.sum(e, axis=axis, keepdims=True)


def log_softmax(x, axis):
    return x - np.log(np.sum(np.exp(x), axis=axis, keepdims=True))


def pad_by_hand(x, lo, hi, interior):
    """Element i of axis a lands at lo[a] + i * (interior[a] + 1); the rest is 0."""
    shape = tuple(lo_ + hi_ + (n + (n - 1) * i if n else 0)
                  for n, lo_, hi_, i in zip(x.shape, lo, hi, interior))
    out = np.zeros(shape, x.dtype)
    for pos in np.ndindex(x.shape):
        out[tuple(lo_ + p * (i + 1) for p, lo_, i in zip(pos, lo, interior))] = x[pos]
    return out


def scatter_by_hand(g, idx, axis, size):
    """out[..., idx[j], ...] += g[..., j, ...] for every index position j (a Python loop)."""
    out = np.zeros(g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype)
    lead = (slice(None),) * axis
    for j in np.ndindex(idx.shape):
        out[lead + (int(idx[j]),)] += g[lead + j]
    return out


def one_hot_by_hand(idx, n, dtype):
    out = np.zeros(idx.shape + (n,), dtype)
    for pos in np.ndindex(idx.shape):
        if 0 <= idx[pos] < n:  # out-of-range labels (negative ones too) give a zero row
            out[pos + (int(idx[pos]),)] = 1
    return out


def take_by_hand(x, idx, axis):
    return x[(slice(None),) * axis + (idx,)]  # numpy fancy indexing: negatives wrap


def floor_by_hand(x):
    t = np.trunc(x)
    return t - (x < t).astype(t.dtype)


def round_by_hand(x):
    """Halves to even, from floor and the fraction (not np.round)."""
    f = floor_by_hand(x)
    d = x - f
    even = f - 2 * floor_by_hand(f / 2) == 0
    return np.where(d > 0.5, f + 1, np.where(d < 0.5, f, np.where(even, f, f + 1)))


def floor_divide_by_hand(x, y):
    q = floor_by_hand(x / y)
    return q if x.dtype.kind == "f" else q.astype(x.dtype)


def remainder_by_hand(x, y):
    r = x - y * floor_by_hand(x / y)
    return r if x.dtype.kind == "f" else r.astype(x.dtype)


def cumsum_by_hand(x, axis, reverse=False):
    """Prefix sums as a product with a triangular matrix (not np.cumsum)."""
    wide = x.astype(np.float64 if x.dtype.kind == "f" else np.int64)
    moved = np.moveaxis(wide, axis, -1)
    n = moved.shape[-1]
    tri = (np.tril if reverse else np.triu)(np.ones((n, n), wide.dtype))
    return np.moveaxis(moved @ tri, -1, axis)


def away_from_multiples(shape):
    """(x, y) with y away from 0 and x / y away from integers (a smooth remainder)."""

    def make(rng, d):
        y = away(shape)(rng, d)[0]
        k = rng.integers(-3, 4, shape)
        return [(y * (k + rng.uniform(0.2, 0.8, shape))).astype(d), y]

    return make


# --- Philox-4x32-10, written from the paper (Salmon et al., SC'11) with Python integers -------

M32 = 0xFFFFFFFF


def philox_4x32_10(ctr, key):
    """Random123's philox4x32_R(10, ctr, key): four uint32 words."""
    c0, c1, c2, c3 = ctr
    k0, k1 = key
    for r in range(10):
        if r:  # the key is bumped before rounds 2..10
            k0, k1 = (k0 + 0x9E3779B9) & M32, (k1 + 0xBB67AE85) & M32
        p0, p1 = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & M32, (p0 >> 32) ^ c3 ^ k1, p0 & M32
    return c0, c1, c2, c3


def philox_words(key: int, stream: int, shape):
    """lamina's counter layout: element i uses counter (i lo, i hi, stream, 0) and key = the
    64-bit key (lo, hi). Returns four arrays of uint32 words of ``shape``."""
    key &= 0xFFFFFFFFFFFFFFFF
    words = [philox_4x32_10((i & M32, i >> 32, stream & M32, 0), (key & M32, key >> 32))
             for i in range(math.prod(shape))]
    return [np.array([w[j] for w in words], np.uint64).reshape(shape) for j in range(4)]


def _unit53(hi, lo):
    """53 random bits from two words: 27 from ``hi``, 26 from ``lo``."""
    return ((hi >> 5).astype(np.float64) * 2.0 ** 26 + (lo >> 6)) / 2.0 ** 53


def uniform_expected(key, stream, shape, dtype=F32):
    w = philox_words(int(key), stream, shape)
    if np.dtype(dtype) == F64:
        return _unit53(w[0], w[1])
    return (w[0] >> 8).astype(np.float64) / 2.0 ** 24  # the top 24 bits, exact in float32


def normal_expected(key, stream, shape, dtype=F32):
    """Box-Muller (u1 in (0, 1]): on words 0 and 1 in float32; for float64 on two 53-bit
    uniforms from words (0, 1) and (2, 3), in float64."""
    w = philox_words(int(key), stream, shape)
    if np.dtype(dtype) == F64:
        u1, u2 = 1.0 - _unit53(w[0], w[1]), _unit53(w[2], w[3])
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * math.pi * u2)
    u1 = np.float32(1) - ((w[0] >> 8).astype(np.float32) * np.float32(2.0 ** -24))
    u2 = (w[1] >> 8).astype(np.float32) * np.float32(2.0 ** -24)
    r = np.sqrt(np.float32(-2) * np.log(u1))
    return r * np.cos(np.float32(2 * math.pi) * u2)


def _key(value):
    return lambda rng, d: [np.asarray(value, np.int64)]


# --- the table --------------------------------------------------------------------------------


def _binary_arith(fn, dtypes=NUMERIC, positive=False, nonzero_y=False):
    """Same-shape and broadcasting cases of a binary arithmetic op."""
    if positive:
        make = [rand((3, 4), (3, 4), lo=0.5, hi=2.0), rand((4, 1), (3,), lo=0.5, hi=2.0),
                rand((2, 1, 3), (4, 3), lo=0.5, hi=2.0)]
    elif nonzero_y:
        def with_y_away(sx, sy):
            return lambda rng, d: [draw(rng, d, sx), away(sy)(rng, d)[0]]

        make = [with_y_away((3, 4), (3, 4)), with_y_away((4, 1), (3,)),
                with_y_away((2, 1, 3), (4, 3))]
    else:
        make = [rand((3, 4), (3, 4)), rand((4, 1), (3,)), rand((2, 1, 3), (4, 3))]
    return [Case(name, m, fn, dtypes=dtypes)
            for name, m in zip(("same", "bcast_41_3", "bcast_213_43"), make)]


def _compare(fn):
    return [
        Case("ties", ties((3, 4)), fn, dtypes=ALL, result=lambda d: BOOL),
        Case("bcast_41_3", rand((4, 1), (3,)), fn, dtypes=ALL, result=lambda d: BOOL),
        Case("bcast_213_43", rand((2, 1, 3), (4, 3)), fn, dtypes=NUMERIC,
             result=lambda d: BOOL),
    ]


def _extremum(fn):
    return [
        Case("distinct", distinct((3, 4), (3, 4)), fn, dtypes=NUMERIC),
        Case("bcast_41_3", distinct((4, 1), (3,)), fn, dtypes=NUMERIC),
        Case("bcast_213_43", distinct((2, 1, 3), (4, 3)), fn, dtypes=NUMERIC),
        Case("ties", ties((3, 4)), fn, dtypes=NUMERIC, grad=False),
    ]


def _where_make(sc, sa, sb):
    def make(rng, d):
        return [rng.random(sc) < 0.5, draw(rng, d, sa), draw(rng, d, sb)]

    return make


def _where_expected(c, a, b):
    c, a, b = np.broadcast_arrays(c, a, b)
    return np.select([c], [a], b)


def _cast(to):
    return {"dtype": to}


def _sum_int_result(d):
    return I64 if d == BOOL else d


def _mean_result(d):
    return d if d.kind == "f" else F32


# --- convolution and pooling, by hand (loops over every output element) -----------------------


def conv_by_hand(x, w, stride, padding, dilation, groups):
    """out[n, o, p] = sum over the group's channels c and taps j of
    x[n, c, p * stride + j * dilation - lo] * w[o, c, j] (outside x: 0)."""
    r = x.ndim - 2
    N, n = x.shape[0], x.shape[2:]
    O, Cg, k = w.shape[0], w.shape[1], w.shape[2:]
    out = [(n[i] + sum(padding[i]) - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
           for i in range(r)]
    y = np.zeros((N, O, *out))
    for b, o in np.ndindex(N, O):
        g = o // (O // groups)
        for pos in np.ndindex(*out):
            total = 0.0
            for c in range(Cg):
                for tap in np.ndindex(*k):
                    at = [pos[i] * stride[i] + tap[i] * dilation[i] - padding[i][0]
                          for i in range(r)]
                    if all(0 <= at[i] < n[i] for i in range(r)):
                        total += x[(b, g * Cg + c, *at)] * w[(o, c, *tap)]
            y[(b, o, *pos)] = total
    return y


def conv_transpose_by_hand(x, w, stride, padding, output_padding, dilation, groups):
    """Every input element adds x * w[c, o, j] at position p * stride + j * dilation - padding
    of the output (PyTorch's definition)."""
    r = x.ndim - 2
    N, C, m = x.shape[0], x.shape[1], x.shape[2:]
    Og, k = w.shape[1], w.shape[2:]
    Cg = C // groups
    out = [(m[i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (k[i] - 1)
           + output_padding[i] + 1 for i in range(r)]
    y = np.zeros((N, groups * Og, *out))
    for b, c in np.ndindex(N, C):
        g = c // Cg
        for pos in np.ndindex(*m):
            for o in range(Og):
                for tap in np.ndindex(*k):
                    at = [pos[i] * stride[i] + tap[i] * dilation[i] - padding[i]
                          for i in range(r)]
                    if all(0 <= at[i] < out[i] for i in range(r)):
                        y[(b, g * Og + o, *at)] += x[(b, c, *pos)] * w[(c, o, *tap)]
    return y


def _pool_windows(n, k, stride, padding, dilation, ceil_mode):
    """Per output position: (start, taps) of PyTorch's windows along one axis."""
    num = n + 2 * padding - dilation * (k - 1) - 1
    out = (num + (stride - 1 if ceil_mode else 0)) // stride + 1
    if ceil_mode and (out - 1) * stride >= n + padding:
        out -= 1
    return [o * stride - padding for o in range(out)]


def max_pool_by_hand(x, kernel, stride, padding, dilation, ceil_mode):
    r = x.ndim - 2
    starts = [_pool_windows(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                            ceil_mode) for i in range(r)]
    y = np.zeros(x.shape[:2] + tuple(len(s) for s in starts))
    for lead in np.ndindex(*x.shape[:2]):
        for pos in np.ndindex(*y.shape[2:]):
            vals = []
            for tap in np.ndindex(*kernel):
                at = [starts[i][pos[i]] + tap[i] * dilation[i] for i in range(r)]
                if all(0 <= at[i] < x.shape[2 + i] for i in range(r)):
                    vals.append(x[lead + tuple(at)])
            y[lead + pos] = max(vals)
    return y


def avg_pool_by_hand(x, kernel, stride, padding, ceil_mode, count_include_pad,
                     divisor_override):
    r = x.ndim - 2
    n = x.shape[2:]
    starts = [_pool_windows(n[i], kernel[i], stride[i], padding[i], 1, ceil_mode)
              for i in range(r)]
    y = np.zeros(x.shape[:2] + tuple(len(s) for s in starts))
    for lead in np.ndindex(*x.shape[:2]):
        for pos in np.ndindex(*y.shape[2:]):
            total, inside, padded = 0.0, 1, 1
            for i in range(r):
                s0 = starts[i][pos[i]]
                end = min(s0 + kernel[i], n[i] + padding[i])  # the window within the padding
                padded *= end - s0
                inside *= min(end, n[i]) - max(s0, 0)
            for tap in np.ndindex(*kernel):
                at = [starts[i][pos[i]] + tap[i] for i in range(r)]
                if all(0 <= at[i] < n[i] for i in range(r)):
                    total += x[lead + tuple(at)]
            div = divisor_override or (padded if count_include_pad else inside)
            y[lead + pos] = total / div
    return y


def max_pool_grad_by_hand(x, g, kernel, stride, padding, dilation, ceil_mode):
    """Each window's gradient to its first maximum (the last NaN), PyTorch's rule."""
    r = x.ndim - 2
    starts = [_pool_windows(x.shape[2 + i], kernel[i], stride[i], padding[i], dilation[i],
                            ceil_mode) for i in range(r)]
    dx = np.zeros(x.shape)
    for lead in np.ndindex(*x.shape[:2]):
        for pos in np.ndindex(*g.shape[2:]):
            best = None
            for tap in np.ndindex(*kernel):
                at = tuple(starts[i][pos[i]] + tap[i] * dilation[i] for i in range(r))
                if all(0 <= at[i] < x.shape[2 + i] for i in range(r)):
                    v = x[lead + at]
                    if best is None or v > x[lead + best] or np.isnan(v):
                        best = at
            dx[lead + best] += g[lead + pos]
    return dx


def avg_pool_grad_by_hand(g, kernel, stride, padding, ceil_mode, count_include_pad,
                          divisor_override, size):
    """Each window's gradient over its divisor, to every input element of the window."""
    r = g.ndim - 2
    starts = [_pool_windows(size[i], kernel[i], stride[i], padding[i], 1, ceil_mode)
              for i in range(r)]
    dx = np.zeros(g.shape[:2] + tuple(size))
    for lead in np.ndindex(*g.shape[:2]):
        for pos in np.ndindex(*g.shape[2:]):
            inside, padded, taps = 1, 1, []
            for i in range(r):
                s0 = starts[i][pos[i]]
                end = min(s0 + kernel[i], size[i] + padding[i])
                padded *= end - s0
                inside *= min(end, size[i]) - max(s0, 0)
            div = divisor_override or (padded if count_include_pad else inside)
            for tap in np.ndindex(*kernel):
                at = tuple(starts[i][pos[i]] + tap[i] for i in range(r))
                if all(0 <= at[i] < size[i] for i in range(r)):
                    dx[lead + at] += g[lead + pos] / div
    return dx


def _distinct(*shape):
    """Floats without ties (a shuffled grid), for max_pool's gradient."""
    def make(rng, d):
        v = rng.permutation(np.prod(shape)).reshape(shape) / np.prod(shape) * 4 - 2
        return [v.astype(d)]
    return make


SAMPLES: dict[str, list[Case]] = {
    # --- unary --------------------------------------------------------------------------------
    "neg": [Case("basic", rand((3, 4)), lambda x: 0 - x, dtypes=NUMERIC)],
    "abs": [Case("basic", away((3, 4)), lambda x: np.where(x < 0, -x, x), dtypes=NUMERIC)],
    "sign": [Case("basic", fixed([[-2.5, 0.0, 3.0], [1.0, -1.0, 0.0]]),
                  lambda x: (x > 0).astype(np.int64) - (x < 0).astype(np.int64),
                  dtypes=NUMERIC)],
    "exp": [Case("basic", rand((3, 4)), lambda x: math.e ** x)],
    "log": [Case("basic", rand((3, 4), lo=0.2, hi=3.0), lambda x: np.log2(x) * math.log(2)),
            Case("known", fixed([1.0, math.e, 0.5]), lambda x: np.array([0.0, 1.0,
                                                                          -math.log(2)]),
                 grad=False),
            # Outside the domain: IEEE results, no error.
            Case("domain", fixed([-1.0, 0.0, 1.0]), lambda x: np.array([np.nan, -np.inf, 0.0]),
                 grad=False)],
    "sqrt": [Case("basic", rand((3, 4), lo=0.2, hi=3.0), lambda x: x ** 0.5),
             Case("domain", fixed([-1.0, 0.0, 4.0]), lambda x: np.array([np.nan, 0.0, 2.0]),
                  grad=False)],
    "rsqrt": [Case("basic", rand((3, 4), lo=0.2, hi=3.0), lambda x: x ** -0.5),
              Case("domain", fixed([-1.0, 0.0, 4.0]), lambda x: np.array([np.nan, np.inf, 0.5]),
                   grad=False)],
    "tanh": [Case("basic", rand((3, 4), lo=-3, hi=3),
                  lambda x: np.expm1(2 * x) / (np.expm1(2 * x) + 2))],
    "sigmoid": [Case("basic", rand((3, 4), lo=-4, hi=4), lambda x: 1 / (1 + np.exp(-x))),
                Case("extreme", fixed([-100.0, -30.0, 0.0, 30.0, 100.0]),
                     lambda x: 1 / (1 + np.exp(-x)), grad=False)],
    "softplus": [Case("basic", rand((3, 4), lo=-4, hi=4), lambda x: np.log1p(np.exp(x))),
                 Case("extreme", fixed([-100.0, -20.0, 0.0, 20.0, 100.0]),
                      lambda x: np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x))), grad=False)],
    "relu": [Case("basic", away((3, 4)), lambda x: x * (x > 0))],
    "erf": [Case("basic", rand((3, 4)), _erf),
            # Abramowitz & Stegun, table 7.1
            Case("known", fixed([0.0, 0.5, 1.0, -0.3, 2.0]),
                 lambda x: np.array([0.0, 0.5204998778130465, 0.8427007929497149,
                                     -0.3286267594591274, 0.9953222650189527]), grad=False)],
    # --- trigonometry and rounding --------------------------------------------------------------
    "sin": [Case("basic", rand((3, 4), lo=-4, hi=4), lambda x: np.imag(np.exp(1j * x))),
            Case("quadrants", fixed([0.0, -0.0, math.pi / 2, math.pi, 1.5 * math.pi, -math.pi / 2,
                                     2 * math.pi, 100.0, -12345.678, 3e5]),
                 lambda x: np.imag(np.exp(1j * x)), grad=False)],
    "cos": [Case("basic", rand((3, 4), lo=-4, hi=4), lambda x: np.real(np.exp(1j * x))),
            Case("quadrants", fixed([0.0, math.pi / 2, math.pi, 1.5 * math.pi, -math.pi / 2,
                                     100.0, -12345.678, 3e5]),
                 lambda x: np.real(np.exp(1j * x)), grad=False)],
    "floor": [Case("basic", rand((3, 4), lo=-5, hi=5), floor_by_hand, dtypes=NUMERIC),
              Case("edges", fixed([-0.5, -1.0, 2.5, -2.5, 0.0, 1e-3, -1e-3, 7.0]),
                   floor_by_hand, dtypes=NUMERIC)],
    "ceil": [Case("basic", rand((3, 4), lo=-5, hi=5), lambda x: -floor_by_hand(-x),
                  dtypes=NUMERIC),
             Case("edges", fixed([-0.5, -1.0, 2.5, -2.5, 0.0, 1e-3, -1e-3, 7.0]),
                  lambda x: -floor_by_hand(-x), dtypes=NUMERIC)],
    "round": [Case("basic", rand((3, 4), lo=-5, hi=5), round_by_hand, dtypes=NUMERIC),
              Case("halves", fixed([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 3.7, -3.7]),
                   round_by_hand, dtypes=FLOATS)],
    "floor_divide": _binary_arith(floor_divide_by_hand, nonzero_y=True) + [
        Case("int_edges", fixed([7, -7, 7, -7, 0, 5, -5], [2, 2, -2, -2, 3, 0, -1]),
             lambda x, y: np.array([3, -4, -4, 3, 0, 0, 5]), dtypes=INTS),
        Case("float_edges", fixed([1.0, -1.0, 7.5, -7.5, 0.25], [0.0, 0.0, 2.0, -2.0, -4.0]),
             lambda x, y: np.array([np.inf, -np.inf, 3.0, 3.0, -1.0]), grad=False)],
    "remainder": [Case("smooth", away_from_multiples((3, 4)), remainder_by_hand),
                  Case("bcast_41_3", away_from_multiples((4, 3)), remainder_by_hand)] +
    [replace(c, grad=False) for c in _binary_arith(remainder_by_hand, dtypes=INTS,
                                                   nonzero_y=True)] + [
        Case("int_edges", fixed([7, -7, 7, -7, 0, 5, -5], [2, 2, -2, -2, 3, 0, -1]),
             lambda x, y: np.array([1, 1, -1, -1, 0, 0, 0]), dtypes=INTS, grad=False),
        Case("float_signs", fixed([5.0, -5.0, 5.0, -5.0, 0.0], [3.0, 3.0, -3.0, -3.0, 2.0]),
             lambda x, y: np.array([2.0, 1.0, -1.0, -2.0, 0.0]), grad=False)],
    # --- scans -----------------------------------------------------------------------------------
    "cumsum": [
        Case("axis1", rand((3, 4, 5)), lambda x: cumsum_by_hand(x, 1), {"axis": 1},
             dtypes=ALL, result=lambda d: d if d.kind == "f" else I64),
        Case("last_reverse", rand((3, 6)), lambda x: cumsum_by_hand(x, 1, True),
             {"axis": -1, "reverse": True}, dtypes=ALL,
             result=lambda d: d if d.kind == "f" else I64),
        Case("axis0_reverse", rand((5, 3)), lambda x: cumsum_by_hand(x, 0, True),
             {"axis": 0, "reverse": True}, dtypes=NUMERIC,
             result=lambda d: d if d.kind == "f" else I64),
        Case("1d", rand((7,)), lambda x: cumsum_by_hand(x, 0), {"axis": 0}, dtypes=NUMERIC,
             result=lambda d: d if d.kind == "f" else I64),
    ],
    # --- binary arithmetic ------------------------------------------------------------------
    "add": _binary_arith(lambda x, y: x + y),
    "sub": _binary_arith(lambda x, y: x + (-y)),
    "mul": _binary_arith(lambda x, y: x * y),
    "div": _binary_arith(lambda x, y: x * (1 / y), dtypes=FLOATS, nonzero_y=True) + [
        Case("by_zero", fixed([1.0, -1.0, 0.0], [0.0, -0.0, 0.0]),
             lambda x, y: np.array([np.inf, np.inf, np.nan]), grad=False)],
    "pow": _binary_arith(lambda x, y: np.exp(y * np.log(x)), dtypes=FLOATS,
                         positive=True),
    "maximum": _extremum(lambda x, y: np.where(x > y, x, y)),
    "minimum": _extremum(lambda x, y: np.where(x < y, x, y)),
    # --- comparisons and logic ----------------------------------------------------------------
    "eq": _compare(lambda x, y: ~((x < y) | (x > y))),
    "ne": _compare(lambda x, y: (x < y) | (x > y)),
    "lt": _compare(lambda x, y: ~(x >= y)),
    "le": _compare(lambda x, y: ~(x > y)),
    "gt": _compare(lambda x, y: ~(x <= y)),
    "ge": _compare(lambda x, y: ~(x < y)),
    "logical_and": [Case("bcast_41_3", rand((4, 1), (3,)),
                         lambda x, y: x.astype(int) * y.astype(int) == 1, dtypes=(BOOL,))],
    "logical_or": [Case("bcast_41_3", rand((4, 1), (3,)),
                        lambda x, y: x.astype(int) + y.astype(int) > 0, dtypes=(BOOL,))],
    "logical_not": [Case("basic", rand((3, 4)), lambda x: x.astype(int) == 0, dtypes=(BOOL,))],
    # --- where, cast, identities --------------------------------------------------------------
    "where": [
        Case("same", _where_make((3, 4), (3, 4), (3, 4)), _where_expected, dtypes=ALL),
        Case("bcast_41_3", _where_make((4, 1), (3,), (4, 3)), _where_expected, dtypes=ALL),
        Case("bcast_213_43", _where_make((2, 1, 3), (4, 3), (4, 1)), _where_expected,
             dtypes=NUMERIC),
    ],
    "cast": [
        Case("to_f64", rand((3, 4), lo=-5, hi=5), lambda x: x * 1.0, _cast(F64), dtypes=ALL,
             result=lambda d: F64),
        Case("to_f32", rand((3, 4), lo=-5, hi=5), lambda x: np.float32(x), _cast(F32),
             dtypes=ALL, result=lambda d: F32, grad=False),
        Case("to_i32", rand((3, 4), lo=-5, hi=5),
             lambda x: np.trunc(x).astype(np.int32) if x.dtype.kind == "f" else x + 0,
             _cast(I32), dtypes=ALL, result=lambda d: I32, grad=False),
        Case("to_bool", fixed([[0.0, 1.5, -0.25], [0.0, -3.0, 0.0]]), lambda x: x != 0,
             _cast(BOOL), dtypes=NUMERIC, result=lambda d: BOOL, grad=False),
    ],
    "alias": [Case("basic", rand((3, 4)), lambda x: x + 0, dtypes=ALL)],
    "stop_gradient": [Case("basic", rand((3, 4)), lambda x: x + 0, dtypes=ALL)],
    # --- contraction --------------------------------------------------------------------------
    "matmul": [
        Case("2d", rand((3, 4), (4, 5)), lambda a, b: np.einsum("ik,kj->ij", a, b),
             dtypes=NUMERIC),
        Case("batched_bcast", rand((2, 1, 3, 4), (5, 4, 2)),
             lambda a, b: np.einsum("...ik,...kj->...ij", a, b), dtypes=NUMERIC),
    ],
    # --- composites of neural networks --------------------------------------------------------
    "gelu": [
        Case("tanh", rand((3, 4), lo=-3, hi=3), gelu_tanh, {"approximate": "tanh"}),
        Case("exact", rand((3, 4), lo=-3, hi=3), gelu_exact, {"approximate": "none"}),
        Case("default", rand((5,), lo=-3, hi=3), gelu_tanh),
    ],
    "softmax": [
        Case("last", rand((3, 5)), lambda x: softmax(x, -1)),
        Case("axis0", rand((4, 2, 3), lo=-3, hi=3), lambda x: softmax(x, 0), {"axis": 0}),
        Case("large", fixed([[1000.0, 1001.0, 999.0], [-1000.0, -1000.0, -1000.0]]),
             lambda x: softmax(x - x.max(axis=-1, keepdims=True), -1), grad=False),
    ],
    "log_softmax": [
        Case("last", rand((3, 5)), lambda x: log_softmax(x, -1)),
        Case("axis1", rand((2, 4, 3), lo=-3, hi=3), lambda x: log_softmax(x, 1),
             {"axis": 1}),
        Case("large", fixed([[1000.0, 1001.0, 999.0]]),
             lambda x: log_softmax(x - x.max(), -1), grad=False),
    ],
    "one_hot": [
        Case("f64", labels((2, 3), 5), lambda i: one_hot_by_hand(i, 5, np.float64),
             {"num_classes": 5, "dtype": F64}, dtypes=INTS, result=lambda d: F64),
        Case("default_f32", labels((4,), 3), lambda i: one_hot_by_hand(i, 3, np.float32),
             {"num_classes": 3}, dtypes=INTS, result=lambda d: F32, grad=False),
        Case("i32_out_of_range", fixed([-1, 0, 3, 4, 2]),
             lambda i: one_hot_by_hand(i, 4, np.int32), {"num_classes": 4, "dtype": I32},
             dtypes=INTS, result=lambda d: I32, grad=False),
    ],
    # --- reductions ---------------------------------------------------------------------------
    "sum": [
        Case("all", rand((3, 4, 5)), lambda x: np.add.reduce(x.reshape(-1)),
             {"axis": None}, dtypes=ALL, result=_sum_int_result),
        Case("axes_keepdims", rand((3, 4, 5)), lambda x: x.sum(axis=(0, 2), keepdims=True),
             {"axis": (2, 0), "keepdims": True}, dtypes=ALL, result=_sum_int_result),
        Case("last", rand((3, 4, 5)), lambda x: np.einsum("ijk->ij", x.astype(
            np.int64) if x.dtype == BOOL else x), {"axis": -1}, dtypes=ALL,
             result=_sum_int_result),
    ],
    "max": [
        Case("axis1", distinct((3, 4, 5)), lambda x: np.sort(x, axis=1)[:, -1, :],
             {"axis": 1}, dtypes=NUMERIC),
        Case("all_keepdims", distinct((3, 4)), lambda x: np.full((1, 1), np.sort(x, None)[-1]),
             {"axis": None, "keepdims": True}, dtypes=NUMERIC),
        Case("bool_any", rand((3, 4)), lambda x: x.astype(int).sum(axis=0) > 0, {"axis": 0},
             dtypes=(BOOL,), grad=False),
        Case("ties", lambda rng, d: ties((3, 4))(rng, d)[:1],
             lambda x: np.sort(x, axis=1)[:, -1], {"axis": 1}, dtypes=NUMERIC, grad=False),
    ],
    "min": [
        Case("axes01", distinct((3, 4, 5)), lambda x: np.sort(x.reshape(12, 5), axis=0)[0],
             {"axis": (0, -2)}, dtypes=NUMERIC),
        Case("last", distinct((2, 6)), lambda x: np.sort(x, axis=-1)[:, 0], {"axis": -1},
             dtypes=NUMERIC),
        Case("bool_all", rand((3, 4)), lambda x: x.astype(int).sum(axis=1) == 4, {"axis": 1},
             dtypes=(BOOL,), grad=False),
    ],
    "argmax": [
        Case("all", distinct((3, 4)), lambda x: np.flatnonzero(x.reshape(-1) == x.max())[0],
             {"axis": None}, dtypes=NUMERIC, result=lambda d: I64),
        Case("ties_first", fixed([[1, 3, 3, 0], [2, 2, 0, 2], [0, 0, 0, 0]]),
             lambda x: np.array([[np.flatnonzero(r == r.max())[0]] for r in x]),
             {"axis": 1, "keepdims": True}, dtypes=ALL, result=lambda d: I64),
        Case("axis0", rand((4, 3)), lambda x: np.array(
            [np.flatnonzero(x[:, j] == x[:, j].max())[0] for j in range(3)]), {"axis": 0},
             dtypes=ALL, result=lambda d: I64),
    ],
    "mean": [
        Case("all", rand((3, 4)), lambda x: x.sum() / 12, {"axis": None}, dtypes=ALL,
             result=_mean_result),
        Case("axis1_keepdims", rand((2, 5, 3)), lambda x: x.sum(axis=1, keepdims=True) / 5,
             {"axis": 1, "keepdims": True}, dtypes=ALL, result=_mean_result),
    ],
    # --- data movement ------------------------------------------------------------------------
    "reshape": [
        Case("2d", rand((2, 3, 4)), lambda x: x.ravel()[np.arange(24).reshape(4, 6)],
             {"shape": (4, 6)}, dtypes=ALL),
        Case("add_ones", rand((6,)), lambda x: x[None, :, None], {"shape": (1, 6, 1)},
             dtypes=ALL),
    ],
    "transpose": [
        Case("perm201", rand((2, 3, 4)), lambda x: np.einsum("abc->cab", x),
             {"perm": (2, 0, 1)}, dtypes=ALL),
        Case("swap", rand((3, 5)), lambda x: x.T, {"perm": [1, 0]}, dtypes=ALL),
    ],
    "broadcast": [
        Case("expand", rand((3, 1)), lambda x: np.tile(x, (2, 1, 4)), {"shape": (2, 3, 4)},
             dtypes=ALL),
        Case("scalar", rand(()), lambda x: np.tile(x, (2, 3)), {"shape": (2, 3)}, dtypes=ALL),
    ],
    "slice": [
        Case("strided", rand((5, 4, 6)), lambda x: x[1:5:2, :, 0:6:3],
             {"start": (1, 0, 0), "stop": (5, 4, 6), "step": (2, 1, 3)}, dtypes=ALL),
        Case("inner", rand((4, 5)), lambda x: x[1:3, 2:4],
             {"start": (1, 2), "stop": (3, 4), "step": (1, 1)}, dtypes=ALL),
        Case("empty", rand((4, 3)), lambda x: x[2:2, :],
             {"start": (2, 0), "stop": (2, 3), "step": (1, 1)}, dtypes=ALL),
    ],
    "pad": [
        Case("lo_hi_interior", rand((3, 4)),
             lambda x: pad_by_hand(x, (1, 0), (0, 2), (1, 2)),
             {"lo": (1, 0), "hi": (0, 2), "interior": (1, 2)}, dtypes=ALL),
        Case("1d", rand((4,)), lambda x: np.concatenate([np.zeros(2, x.dtype), x,
                                                         np.zeros(1, x.dtype)]),
             {"lo": [2], "hi": [1], "interior": [0]}, dtypes=ALL),
        Case("empty_axis", rand((2, 0)), lambda x: pad_by_hand(x, (1, 1), (0, 2), (1, 3)),
             {"lo": (1, 1), "hi": (0, 2), "interior": (1, 3)}, dtypes=ALL),
    ],
    "concatenate": [
        Case("axis1", rand((2, 3), (2, 1), (2, 4)), lambda *xs: np.hstack(xs), {"axis": 1},
             dtypes=ALL),
        Case("axis0_default", rand((1, 3), (2, 3)), lambda *xs: np.vstack(xs), dtypes=ALL),
        Case("neg_axis", rand((2, 2, 1), (2, 2, 2)), lambda a, b: np.dstack([a, b]),
             {"axis": -1}, dtypes=ALL),
        Case("single", rand((2, 3)), lambda a: a + 0, {"axis": 1}, dtypes=ALL),
    ],
    "take": [
        Case("axis1_neg", lambda rng, d: [draw(rng, d, (3, 5)),
                                          np.array([[0, -1, 2], [4, 4, -5]], np.int64)],
             lambda x, i: take_by_hand(x, i, 1), {"axis": 1}, dtypes=ALL),
        Case("axis0_repeats_i32", lambda rng, d: [draw(rng, d, (4, 2)),
                                                  np.array([3, 0, 3, 1, 3], np.int32)],
             lambda x, i: take_by_hand(x, i, 0), {"axis": 0}, dtypes=ALL),
        Case("axis_neg_scalar_index", lambda rng, d: [draw(rng, d, (2, 3, 4)),
                                                      np.array(-2, np.int64)],
             lambda x, i: x[:, :, -2], {"axis": -1}, dtypes=ALL),
    ],
    "scatter_add": [
        Case("axis1_repeats", lambda rng, d: [draw(rng, d, (3, 4, 2)),
                                              np.array([1, 4, 1, -1], np.int64)],
             lambda g, i: scatter_by_hand(g, i, 1, 5), {"axis": 1, "size": 5}, dtypes=NUMERIC),
        Case("negative_axis", lambda rng, d: [draw(rng, d, (3, 2, 2)),
                                              np.array([[0, 1], [1, 1]], np.int64)],
             lambda g, i: scatter_by_hand(g, i, 1, 3), {"axis": -1, "size": 3},
             dtypes=FLOATS),
        Case("axis0_2d_i32", lambda rng, d: [draw(rng, d, (2, 3, 4)),
                                             np.array([[0, 5, 2], [2, 2, 0]], np.int32)],
             lambda g, i: scatter_by_hand(g, i, 0, 6), {"axis": 0, "size": 6},
             dtypes=NUMERIC),
    ],
    # --- sources --------------------------------------------------------------------------------
    "constant": [
        Case("splat", lambda rng, d: [], lambda: np.full((2, 3), 1),
             lambda d: {"value": 1, "dtype": d, "shape": (2, 3)}, dtypes=ALL),
        Case("scalar", lambda rng, d: [], lambda: np.array(0.0),
             lambda d: {"value": 0, "dtype": d, "shape": ()}, dtypes=ALL),
        Case("nested", lambda rng, d: [], lambda: np.array([[1.5, -2.0], [0.25, 3.0]]),
             lambda d: {"value": [[1.5, -2.0], [0.25, 3.0]], "dtype": d, "shape": (2, 2)},
             dtypes=FLOATS),
        Case("nested_int", lambda rng, d: [], lambda: np.array([[1, -2, 7]]),
             lambda d: {"value": [[1, -2, 7]], "dtype": d, "shape": (1, 3)}, dtypes=INTS),
        Case("nested_bool", lambda rng, d: [], lambda: np.array([True, False, True]),
             lambda d: {"value": [True, False, True], "dtype": d, "shape": (3,)},
             dtypes=(BOOL,)),
        # Empty constants (a numpy array of zero elements captured by a traced function).
        Case("empty_rows", lambda rng, d: [], lambda: np.zeros((0, 3)),
             lambda d: {"value": np.zeros((0, 3), d), "dtype": d, "shape": (0, 3)}),
        Case("empty_cols", lambda rng, d: [], lambda: np.zeros((2, 0)),
             lambda d: {"value": np.zeros((2, 0), d), "dtype": d, "shape": (2, 0)}),
        Case("nonfinite", lambda rng, d: [], lambda: np.array([np.inf, -np.inf, np.nan, -0.0]),
             lambda d: {"value": [np.inf, -np.inf, np.nan, -0.0], "dtype": d, "shape": (4,)}),
        Case("tenth", lambda rng, d: [], lambda: np.full((2,), 0.1),
             lambda d: {"value": 0.1, "dtype": d, "shape": (2,)}, dtypes=FLOATS),
    ],
    "iota": [
        Case("axis0", lambda rng, d: [], lambda: np.arange(3)[:, None] * np.ones((1, 4)),
             lambda d: {"axis": 0, "dtype": d, "shape": (3, 4)}, dtypes=NUMERIC),
        Case("axis_neg", lambda rng, d: [], lambda: np.arange(4)[None, None, :] +
             np.zeros((2, 3, 1)), lambda d: {"axis": -1, "dtype": d, "shape": (2, 3, 4)},
             dtypes=NUMERIC),
    ],
    # --- random (the key is an int scalar input; the dtype attribute sets the result) ---------
    "random_uniform": [
        Case(f"key0_{d}", _key(0), lambda k, d=d: uniform_expected(k, 0, (3, 5), d),
             lambda _, d=d: {"stream": 0, "dtype": d, "shape": (3, 5)}, dtypes=(d,))
        for d in FLOATS
    ] + [
        Case(f"key_big_stream3_{d}", _key(2 ** 40 + 12345),
             lambda k, d=d: uniform_expected(k, 3, (2, 2, 2), d),
             lambda _, d=d: {"stream": 3, "dtype": d, "shape": (2, 2, 2)}, dtypes=(d,))
        for d in FLOATS
    ] + [
        Case("key_negative", _key(-7), lambda k: uniform_expected(k, 1, (6,)),
             lambda d: {"stream": 1, "dtype": d, "shape": (6,)}, dtypes=(F32,)),
        Case("scalar", _key(11), lambda k: uniform_expected(k, 5, ()),
             lambda d: {"stream": 5, "dtype": d, "shape": ()}, dtypes=(F32,)),
    ],
    "random_normal": [
        Case(f"key0_{d}", _key(0), lambda k, d=d: normal_expected(k, 0, (3, 5), d),
             lambda _, d=d: {"stream": 0, "dtype": d, "shape": (3, 5)}, dtypes=(d,))
        for d in FLOATS
    ] + [
        Case(f"key_big_stream2_{d}", _key(2 ** 33 + 5),
             lambda k, d=d: normal_expected(k, 2, (4, 3), d),
             lambda _, d=d: {"stream": 2, "dtype": d, "shape": (4, 3)}, dtypes=(d,))
        for d in FLOATS
    ],
    # --- convolution and pooling ----------------------------------------------------------------
    "conv": [
        Case("2d_stride_pad_dilation_groups", rand((2, 4, 7, 6), (6, 2, 3, 2)),
             lambda x, w: conv_by_hand(x, w, (2, 1), ((1, 1), (1, 1)), (1, 2), 2),
             {"stride": (2, 1), "padding": ((1, 1), (1, 1)), "dilation": (1, 2), "groups": 2}),
        Case("2d_stride_skips_rows_asym_pad", rand((1, 3, 8, 5), (2, 3, 3, 2)),
             lambda x, w: conv_by_hand(x, w, (3, 2), ((0, 2), (1, 0)), (1, 1), 1),
             {"stride": (3, 2), "padding": ((0, 2), (1, 0)), "dilation": (1, 1), "groups": 1}),
        Case("1d_depthwise_big_pad", rand((3, 2, 5), (4, 1, 2)),
             lambda x, w: conv_by_hand(x, w, (2,), ((3, 3),), (2,), 2),
             {"stride": (2,), "padding": ((3, 3),), "dilation": (2,), "groups": 2}),
        Case("1x1_batch0", rand((0, 3, 4, 4), (5, 3, 1, 1)),
             lambda x, w: conv_by_hand(x, w, (1, 1), ((0, 0), (0, 0)), (1, 1), 1),
             {"stride": (1, 1), "padding": ((0, 0), (0, 0)), "dilation": (1, 1), "groups": 1},
             grad=False),
    ],
    "conv_transpose": [
        Case("2d_groups_output_padding", rand((2, 4, 3, 4), (4, 3, 3, 2)),
             lambda x, w: conv_transpose_by_hand(x, w, (2, 3), (1, 0), (1, 2), (1, 1), 2),
             {"stride": (2, 3), "padding": (1, 0), "output_padding": (1, 2),
              "dilation": (1, 1), "groups": 2}),
        Case("1d_dilation_crop", rand((1, 2, 4), (2, 2, 3)),
             lambda x, w: conv_transpose_by_hand(x, w, (1,), (5,), (1,), (3,), 1),
             {"stride": (1,), "padding": (5,), "output_padding": (1,), "dilation": (3,),
              "groups": 1}),
    ],
    "max_pool": [
        Case("2d_pad_ceil", _distinct(2, 3, 7, 6),
             lambda x: max_pool_by_hand(x, (3, 2), (2, 2), (1, 1), (1, 1), True),
             {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1),
              "ceil_mode": True}),
        Case("1d_dilation_overlap", _distinct(2, 2, 9),
             lambda x: max_pool_by_hand(x, (3,), (1,), (1,), (2,), False),
             {"kernel": (3,), "stride": (1,), "padding": (1,), "dilation": (2,),
              "ceil_mode": False}),
        Case("ties", lambda rng, d: [np.round(draw(rng, d, (1, 2, 4, 4))).astype(d)],
             lambda x: max_pool_by_hand(x, (2, 2), (2, 2), (0, 0), (1, 1), False),
             {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
              "ceil_mode": False}, grad=False),
    ],
    "max_pool_grad": [
        Case("2d_tiled_leftover", lambda rng, d: _distinct(2, 3, 5, 7)(rng, d) + [
                 draw(rng, d, (2, 3, 2, 3))],
             lambda x, g: max_pool_grad_by_hand(x, g, (2, 2), (2, 2), (0, 0), (1, 1), False),
             {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "dilation": (1, 1),
              "ceil_mode": False}),  # distinct values: the choices hold under a small step
        Case("2d_pad_ceil_overlap", lambda rng, d: _distinct(1, 2, 7, 6)(rng, d) + [
                 draw(rng, d, (1, 2, 4, 4))],
             lambda x, g: max_pool_grad_by_hand(x, g, (3, 2), (2, 2), (1, 1), (1, 1), True),
             {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 1), "dilation": (1, 1),
              "ceil_mode": True}, grad=False),
        Case("1d_dilation_gap", lambda rng, d: _distinct(2, 2, 11)(rng, d) + [
                 draw(rng, d, (2, 2, 3))],
             lambda x, g: max_pool_grad_by_hand(x, g, (2,), (4,), (1,), (2,), True),
             {"kernel": (2,), "stride": (4,), "padding": (1,), "dilation": (2,),
              "ceil_mode": True}, grad=False),
    ],
    "avg_pool_grad": [
        Case("2d_pad_exclude_ceil", rand((2, 2, 3, 4)),
             lambda g: avg_pool_grad_by_hand(g, (3, 2), (2, 2), (1, 1), True, False, None,
                                             (5, 7)),
             {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True,
              "count_include_pad": False, "divisor_override": None, "size": (5, 7)}),
        Case("2d_tiled_leftover", rand((1, 3, 2, 3)),
             lambda g: avg_pool_grad_by_hand(g, (2, 2), (2, 2), (0, 0), False, True, None,
                                             (5, 7)),
             {"kernel": (2, 2), "stride": (2, 2), "padding": (0, 0), "ceil_mode": False,
              "count_include_pad": True, "divisor_override": None, "size": (5, 7)}),
        Case("1d_divisor_override", rand((2, 3, 3)),
             lambda g: avg_pool_grad_by_hand(g, (3,), (2,), (0,), False, True, 2, (7,)),
             {"kernel": (3,), "stride": (2,), "padding": (0,), "ceil_mode": False,
              "count_include_pad": True, "divisor_override": 2, "size": (7,)}),
    ],
    "avg_pool": [
        Case("2d_pad_exclude_ceil", rand((2, 2, 5, 7)),
             lambda x: avg_pool_by_hand(x, (3, 2), (2, 2), (1, 1), True, False, None),
             {"kernel": (3, 2), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True,
              "count_include_pad": False, "divisor_override": None}),
        Case("2d_include_pad_ceil", rand((1, 3, 6, 5)),
             lambda x: avg_pool_by_hand(x, (2, 3), (2, 2), (1, 1), True, True, None),
             {"kernel": (2, 3), "stride": (2, 2), "padding": (1, 1), "ceil_mode": True,
              "count_include_pad": True, "divisor_override": None}),
        Case("1d_divisor_override", rand((2, 3, 7)),
             lambda x: avg_pool_by_hand(x, (3,), (2,), (0,), False, True, 2),
             {"kernel": (3,), "stride": (2,), "padding": (0,), "ceil_mode": False,
              "count_include_pad": True, "divisor_override": 2}),
    ],
}


# --- fused attention, by hand (one query row at a time) -------------------------------------


def _attention_rows(q, k, bias, causal, scale):
    """The weights of every query row, row by row: [*B, L, S]."""
    lead, (L, E), S = q.shape[:-2], q.shape[-2:], k.shape[-2]
    w = np.zeros(lead + (L, S))
    for b in np.ndindex(*lead):
        for i in range(L):
            s = np.array([q[b + (i,)] @ k[b + (j,)] * scale for j in range(S)])
            if bias is not None:
                s = s + np.broadcast_to(bias, lead + (L, S))[b + (i,)]
            if causal:
                s = np.where(np.arange(S) <= i, s, -np.inf)
            if S and np.isfinite(s.max()):
                e = np.exp(s - s.max())
                w[b + (i,)] = e / e.sum()
    return w


def attention_by_hand(q, k, v, bias=None, causal=False, scale=1.0):
    return _attention_rows(q, k, bias, causal, scale) @ v


def attention_grad_by_hand(q, k, v, out, g, bias=None, causal=False, scale=1.0):
    """dq, dk, dv of <attention(q, k, v), g> with the softmax Jacobian spelled per row
    (diag(p) - p p^T), ``out`` taken as given for the row sums."""
    p = _attention_rows(q, k, bias, causal, scale)
    lead = q.shape[:-2]
    dq, dk, dv = np.zeros(q.shape), np.zeros(k.shape), np.zeros(v.shape)
    for b in np.ndindex(*lead):
        for i in range(q.shape[-2]):
            pi = p[b + (i,)]
            dp = v[b] @ g[b + (i,)]  # d<out_i, g_i>/dp_i
            ds = pi * dp - pi * (out[b + (i,)] @ g[b + (i,)])
            dq[b + (i,)] = scale * ds @ k[b]
            dk[b] += scale * np.outer(ds, q[b + (i,)])
            dv[b] += np.outer(pi, g[b + (i,)])
    return np.concatenate([x.reshape(-1) for x in (dq, dk, dv)])


def _attention_grad_inputs(shapes, causal, scale, bias_shape=None):
    """q, k, v, out (the attention's own), g [, bias]."""
    def make(rng, d):
        q, k, v = (draw(rng, d, s) for s in shapes)
        extra = [draw(rng, d, bias_shape)] if bias_shape else []
        out = attention_by_hand(q.astype(F64), k.astype(F64), v.astype(F64),
                                extra[0].astype(F64) if extra else None, causal, scale)
        g = draw(rng, d, out.shape)
        return [q, k, v, out.astype(d), g] + extra
    return make


SAMPLES["attention"] = [
    Case("causal_long_keys", rand((2, 5, 4), (2, 7, 4), (2, 7, 3)),
         lambda q, k, v: attention_by_hand(q, k, v, None, True, 0.5),
         {"causal": True, "scale": 0.5}),
    Case("bias_heads", rand((2, 2, 3, 4), (2, 2, 6, 4), (2, 2, 6, 2), (2, 1, 1, 6)),
         lambda q, k, v, m: attention_by_hand(q, k, v, m, False, 0.7),
         {"causal": False, "scale": 0.7}),
    Case("no_keys", rand((2, 3, 4), (2, 0, 4), (2, 0, 3)),
         lambda q, k, v: attention_by_hand(q, k, v, None, False, 1.0),
         {"causal": False, "scale": 1.0}, grad=False),
]
SAMPLES["attention_grad"] = [
    Case("causal", _attention_grad_inputs(((2, 4, 3), (2, 6, 3), (2, 6, 2)), True, 0.6),
         lambda q, k, v, o, g: attention_grad_by_hand(q, k, v, o, g, None, True, 0.6),
         {"causal": True, "scale": 0.6}),
    Case("bias", _attention_grad_inputs(((1, 3, 2), (1, 5, 2), (1, 5, 3)), False, 1.0, (3, 5)),
         lambda q, k, v, o, g, m: attention_grad_by_hand(q, k, v, o, g, m, False, 1.0),
         {"causal": False, "scale": 1.0}),
]
