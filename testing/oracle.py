"""The float64 oracle: a graph evaluated in float64 with a bound on the error of each value.

Every float value of the graph is computed in float64 (whatever its declared dtype) together
with ``err``, a bound on how far a correct float32 (or float64) evaluation of the program may
be from it: the errors of the operands carried through the op, plus the op's own rounding
(``domain.ulps`` ulps of its result, in the declared dtype). So the tolerance follows the
error growth of the actual computation instead of a loose constant:

    elementwise   the op evaluated at operands moved by their error bounds (+-e, +-e/2, and
                  0 where the bound reaches it): a first-order bound that sees jumps (sign,
                  comparisons, casts) and singular points (x / 0, log 0) as well
    sum           sum of the bounds + gamma(n) * sum|x|     (n terms, gamma(n) = nu/(1-nu))
    cumsum        the same per prefix: its k terms in any order (a tree scan on a GPU)
    max, min      max of the bounds over the reduced axes
    avg_pool      per window (and avg_pool_grad per input position, the windows covering it):
                  a sum of K = prod(kernel) terms in any order, each divided by its window's
                  divisor: the same map applied to the bounds + gamma(K + 1) * the map of |x|
    argmax        uncertain where another element may be the largest within the bounds
    matmul        |A| eB + eA |B| + eA eB + gamma(K) |A||B|
    conv          the same with the conv for the products, K = C/groups * kernel taps
    data movement the op applied to the bounds (a gather with uncertain indices: unknown)

Integer and bool values are exact or *uncertain* (``err`` = inf): a comparison of two floats
closer than their bounds may go either way, and everything computed from an uncertain value
inherits it (a bool flipped by ``where`` contributes the difference of the two branches).
Positions whose bound is infinite are not compared.
"""

from __future__ import annotations

import itertools

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.graph import Graph
from lamina.ir.ops.loop import LOOP_OPS
from lamina.ir.ops.reduce import reduce_axes
from lamina.ir.ops.registry import get as get_op

INF = np.inf
_COMPARISONS = {"eq", "ne", "lt", "le", "gt", "ge"}
UNIT = {"f16": 2.0 ** -11, "bf16": 2.0 ** -8, "f32": 2.0 ** -24, "f64": 2.0 ** -53}


def unit(d: dt.DType) -> float:
    """The unit roundoff of a dtype (0 for exact integers and bools)."""
    return UNIT.get(d.short, 0.0)


def gamma(n: int, u: float) -> float:
    """Higham's bound on the relative error of a sum of ``n`` terms (n u / (1 - n u))."""
    nu = n * u
    return nu / (1 - nu) if nu < 1 else INF


def _clean(e) -> np.ndarray:
    e = np.asarray(e, dtype=np.float64)
    return np.where(np.isnan(e), INF, e)


def _wide(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float64) if a.dtype.kind == "f" else a


class Oracle:
    """Evaluate ``graph`` (primitive ops: after decompose and autodiff) on ``inputs``."""

    def __init__(self, graph: Graph):
        from lamina.passes.expand_pool import expand_pool
        from lamina.passes.manager import in_loop_bodies

        # max pooling and its gradient in the ops they are defined by (slices, pads, where);
        # average pooling keeps its own rule (window_sum): as a chain of adds its bound
        # would follow one summation order, and a backend may sum the window in another
        self.graph = in_loop_bodies(
            lambda g: expand_pool(g, only=frozenset({"max_pool", "max_pool_grad"})), graph)

    def run(self, inputs, state: dict | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
        """(value, err) of every output; ``self.updates`` gets those of the state updates."""
        env: dict = {}
        for p, a in zip(self.graph.inputs, inputs):
            a = np.asarray(a)
            env[p] = (_wide(a), np.zeros(a.shape))
        for p in self.graph.state:
            a = np.asarray((state or {})[p.name])
            env[p] = (_wide(a), np.zeros(a.shape))
        self.evaluate(self.graph.nodes, env)
        self.updates = {k: env[v] for k, v in self.graph.updates.items()}
        return [env[v] for v in self.graph.outputs]

    def evaluate(self, nodes, env: dict) -> None:
        """(value, err) of ``nodes`` into ``env`` (a loop's: a list of them, one per result)."""
        for n in nodes:
            vals = [env[v] for v in n.inputs]
            if n.op == "get":
                env[n] = vals[0][n.attrs["index"]]
                continue
            if n.op in LOOP_OPS:
                env[n] = self.loop(n, vals)
                continue
            with np.errstate(all="ignore"):
                v, e = self.node(n, [x for x, _ in vals], [x for _, x in vals])
            env[n] = (v, _clean(np.broadcast_to(e, np.shape(v))))

    def body(self, region, args: list) -> list:
        env = dict(zip(region.inputs, args))
        self.evaluate(region.nodes, env)
        return [env[v] for v in region.outputs]

    def loop(self, n, vals: list) -> list:
        """A loop's results, step by step: the body's bounds carried from step to step. A
        while_loop whose condition may go either way (an uncertain bool) is uncertain."""
        a, region = n.attrs, n.region
        nc = a["num_consts"]
        consts = vals[:nc]

        def index(i):
            return (np.asarray(i, np.int32), np.zeros(()))

        if n.op == "scan":
            k = a["num_carry"]
            carry, xs = vals[nc:nc + k], vals[nc + k:]
            steps = range(a["length"])
            ys: list = [[None] * a["length"] for _ in region.outputs[k:]]
            for t in (reversed(steps) if a["reverse"] else steps):
                out = self.body(region, [index(t)] + consts + carry +
                                [(x[t], np.broadcast_to(e, np.shape(x))[t]) for x, e in xs])
                carry = out[:k]
                for j, y in enumerate(out[k:]):
                    ys[j][t] = y
            stacked = []
            for j, parts in enumerate(ys):
                if not parts:
                    t = n.type.types[k + j]
                    stacked.append((np.zeros(t.shape, _wide(np.zeros(0, t.dtype.np)).dtype),
                                    np.zeros(t.shape)))
                else:
                    stacked.append((np.stack([p[0] for p in parts]),
                                    np.stack([np.broadcast_to(p[1], np.shape(p[0]))
                                              for p in parts])))
            return carry + stacked
        carry = vals[nc:]
        if n.op == "fori_loop":
            for i in range(a["lower"], a["upper"]):
                carry = self.body(region, [index(i)] + consts + carry)
            return carry
        from lamina.ir.ops.loop import condition_nodes

        first = condition_nodes(region)
        rest = [m for m in region.nodes if m not in set(first)]
        i = 0
        while True:
            env = dict(zip(region.inputs, [index(i)] + consts + carry))
            self.evaluate(first, env)
            p, pe = env[region.outputs[0]]
            if np.any(pe):  # the condition may flip: the trip count is uncertain
                return [(v, np.full(np.shape(v), INF)) for v, _ in carry]
            if not bool(p):
                return carry
            self.evaluate(rest, env)
            carry = [env[v] for v in region.outputs[1:]]
            i += 1

    # --- one node ------------------------------------------------------------------------

    def node(self, n, xs, es):
        op = get_op(n.op)
        out_t = n.type
        if n.op in ("alias", "stop_gradient"):
            return xs[0], es[0]
        if op.kind == "source":
            return _wide(np.asarray(op.ref(**n.attrs))), 0.0
        if op.kind == "random":
            v = np.asarray(op.ref(*xs, **n.attrs))
            u = unit(out_t.dtype)
            # the draw itself goes through the backends' log/cos/sqrt: |v| + 1 scales it
            bad = INF if es[0].any() else 0.0
            return _wide(v), op.domain.ulps * u * (np.abs(v) + 1.0) + bad
        if n.op == "cast":
            return self.cast(n, xs[0], es[0])
        if op.kind == "elementwise":
            return self.elementwise(n, op, xs, es)
        if n.op == "sum":
            return self.sum(n, xs[0], es[0])
        if n.op in ("max", "min"):  # both move by at most the largest error of the operand
            v = op.ref(xs[0], **n.attrs)
            return v, np.max(np.broadcast_to(es[0], xs[0].shape), axis=reduce_axes(n),
                             keepdims=n.attrs["keepdims"])
        if n.op == "argmax":
            return self.argmax(n, xs[0], es[0])
        if n.op == "matmul":
            return self.matmul(n, xs, es)
        if n.op == "conv":
            return self.conv(n, xs, es)
        if op.kind == "shape":
            return self.shape_op(n, op, xs, es)
        if op.kind == "scan":
            return self.scan(n, op, xs[0], es[0])
        if op.kind == "attention":
            return self.decomposed(n, op, xs, es)
        if n.op in ("avg_pool", "avg_pool_grad"):
            return self.window_sum(n, op, xs[0], es[0])
        raise NotImplementedError(f"the oracle has no rule for {n.op} ({op.kind})")

    def decomposed(self, n, op, xs, es):
        """A fused op (attention) bounded as its decomposition into primitives, plus
        ``domain.ulps`` of the largest result for the fused kernel's other summation order
        (blocked, with the running softmax rescaled as the row maximum grows)."""
        from lamina.ir.builder import Builder

        b = Builder("decomposed")
        params = [b.add_input(f"x{i}", v.type) for i, v in enumerate(n.inputs)]
        out = b.lift(op.decompose(*[b.var(p) for p in params], **n.attrs))
        sub = b.build([out])
        env = {p: (x, np.broadcast_to(e, np.shape(x))) for p, x, e in zip(params, xs, es)}
        for m in sub.nodes:
            vals = [env[v] for v in m.inputs]
            with np.errstate(all="ignore"):
                v, e = self.node(m, [x for x, _ in vals], [x for _, x in vals])
            env[m] = (v, _clean(np.broadcast_to(e, np.shape(v))))
        v, e = env[sub.outputs[0]]
        big = float(np.abs(v).max()) if np.size(v) else 0.0
        return v, e + op.domain.ulps * unit(n.type.dtype) * big + self.rounding(n, v)

    def rounding(self, n, v) -> np.ndarray | float:
        if not n.type.dtype.is_float:
            return 0.0
        ulps = get_op(n.op).domain.ulps
        u = unit(n.type.dtype)
        tiny = float(np.finfo(n.type.dtype.np).tiny)
        return ulps * (u * np.abs(v) + tiny)

    def elementwise(self, n, op, xs, es):
        f = op.ref
        attrs = n.attrs
        if n.op in _COMPARISONS and n.inputs[0] is n.inputs[1]:
            # a value compared with itself (x != x: max_pool's NaN test) is exact: its two
            # operands are the same float, within its bound of the oracle's (NaN included);
            # unknown where that bound is
            return _wide(np.asarray(f(*xs, **attrs))), np.where(np.isfinite(es[0]), 0.0, INF)
        v = _wide(np.asarray(f(*xs, **attrs)))
        spread = np.zeros(np.shape(v))
        for i, (x, e) in enumerate(zip(xs, es)):
            if not np.any(e):
                continue
            if x.dtype.kind == "f":  # the largest move of this operand, added to the others'
                most = np.zeros(np.shape(v))
                for t in (-1.0, -0.5, 0.5, 1.0):
                    moved = list(xs)
                    moved[i] = x + t * e
                    w = _wide(np.asarray(f(*moved, **attrs)))
                    most = np.maximum(most, _diff(w, v))
                # an operand whose bound reaches zero may be zero: the op's singular point
                # (a division by it, its log, the 1/sqrt of a variance computed as 0), which
                # no step of +-e lands on exactly
                zero = np.abs(x) <= e
                if np.any(zero):
                    moved = list(xs)
                    moved[i] = np.where(zero, 0.0, x)
                    w = _wide(np.asarray(f(*moved, **attrs)))
                    most = np.maximum(most, _diff(w, v))
                spread = spread + most
            elif x.dtype.kind == "b":
                # the flipped choice, with the chosen operand anywhere within its own bound
                # (where(c, a, 0) with a uncertain c and a = 0 +- e: the result may be e, not
                # only the difference of the branches' values; checker seed 22, 5162)
                most = np.zeros(np.shape(v))
                for t in (0.0, -1.0, 1.0):
                    moved = list(xs)
                    moved[i] = np.where(e > 0, ~x, x)
                    for j, (y, ey) in enumerate(zip(xs, es)):
                        if j != i and y.dtype.kind == "f" and np.any(ey):
                            moved[j] = y + t * ey
                    w = _wide(np.asarray(f(*moved, **attrs)))
                    most = np.maximum(most, _diff(w, v))
                spread = spread + most
            else:  # an uncertain integer: anything may come out
                spread = spread + np.where(np.broadcast_to(e, x.shape) > 0, INF, 0.0)
        # uncertain bools flipped together: logical_or(c, c) of one uncertain c flips only when
        # both operands do (checker seed 22, program 7989)
        flips = [i for i, (x, e) in enumerate(zip(xs, es)) if x.dtype.kind == "b" and np.any(e)]
        if len(flips) > 1:
            moved = list(xs)
            for i in flips:
                moved[i] = np.where(es[i] > 0, ~xs[i], xs[i])
            spread = spread + _diff(_wide(np.asarray(f(*moved, **attrs))), v)
        # all float operands moved at once, to the corners (and half-way): the cross terms a
        # first-order sum misses (x * x near 0 moves by e*e, not by 2*x*e)
        moving = [i for i, (x, e) in enumerate(zip(xs, es)) if x.dtype.kind == "f" and np.any(e)]
        if len(moving) > 1:
            steps = (-1.0, -0.5, 0.5, 1.0) if len(moving) == 2 else (-1.0, 1.0)
            for signs in itertools.product(steps, repeat=len(moving)):
                moved = list(xs)
                for i, t in zip(moving, signs):
                    moved[i] = xs[i] + t * es[i]
                w = _wide(np.asarray(f(*moved, **attrs)))
                spread = np.maximum(spread, _diff(w, v))
        if n.op in ("remainder", "floor_divide") and xs[0].dtype.kind == "f":
            # periodic: where the dividend's bound spans a multiple of the divisor the result
            # may be anywhere in the period (remainder) or off by the multiples spanned
            # (floor_divide), which samples of the bound miss when it spans several periods
            # (an int32 cast to float32 with an error of 47 against a divisor of 1.7;
            # checker seed 22, program 1001)
            x, y = (np.broadcast_to(a, np.shape(v)) for a in xs[:2])
            ex, ey = (np.broadcast_to(a, np.shape(v)) for a in es[:2])
            with np.errstate(all="ignore"):
                ylo = np.where(np.abs(y) > ey, np.abs(y) - ey, 0.0)
                q_lo, q_hi = np.floor((x - ex) / np.abs(y)), np.floor((x + ex) / np.abs(y))
                jumps = np.where(ylo > 0, q_hi - q_lo, INF)
            if n.op == "remainder":
                wide = np.where(jumps > 0, np.abs(y) + ey, 0.0)
            else:
                wide = np.where(jumps > 0, jumps + 1.0, 0.0)
            spread = np.maximum(spread, np.where(ex + ey > 0, wide, 0.0))
        if n.op in ("eq", "ne") and xs[0].dtype.kind == "f":
            # equality flips at a single point, which moved operands step over: uncertain
            # wherever the operands may meet within their bounds
            near = np.abs(xs[0] - xs[1]) <= es[0] + es[1]
            spread = spread + np.where(near & (es[0] + es[1] > 0), INF, 0.0)
        if n.type.dtype.is_float:
            return v, spread + self.rounding(n, v)
        return v, np.where(spread > 0, INF, 0.0)

    def cast(self, n, x, e):
        d = n.type.dtype
        if d.is_float:
            if x.dtype.kind == "b" and np.any(e):
                return x.astype(np.float64), np.where(e > 0, 1.0, 0.0)
            v = x.astype(np.float64)
            return v, e + self.rounding(n, v)
        v = x.astype(d.np)
        if x.dtype.kind != "f":
            return v, np.where(e > 0, INF, 0.0)
        lo, hi = (x - e).astype(d.np), (x + e).astype(d.np)
        return v, np.where((lo != v) | (hi != v), INF, 0.0)

    def sum(self, n, x, e):
        axes = reduce_axes(n)
        attrs = n.attrs
        v = np.sum(x, axis=axes, keepdims=attrs["keepdims"])
        eb = np.broadcast_to(e, x.shape)
        if not n.type.dtype.is_float:
            bad = np.sum(eb, axis=axes, keepdims=attrs["keepdims"])
            return v.astype(n.type.dtype.np), np.where(bad > 0, INF, 0.0)
        count = int(np.prod([x.shape[a] for a in axes]))
        u = unit(n.type.dtype)
        mag = np.sum(np.abs(x), axis=axes, keepdims=attrs["keepdims"])
        err = np.sum(eb, axis=axes, keepdims=attrs["keepdims"]) + gamma(count, u) * mag
        return v, err + self.rounding(n, v)

    def window_sum(self, n, op, x, e):
        """Average pooling and its adjoint: linear maps with nonnegative weights, each output
        a sum of at most K = prod(kernel) terms (a window; the windows covering an input
        position), in whatever order and with the division before or after the sum."""
        attrs = n.attrs
        with np.errstate(all="ignore"):
            v = np.asarray(op.ref(x, **attrs), np.float64)
            carried = np.asarray(op.ref(np.broadcast_to(e, x.shape).astype(np.float64),
                                        **attrs))
            mag = np.asarray(op.ref(np.abs(x), **attrs), np.float64)
        k = int(np.prod(attrs["kernel"]))
        u = unit(n.type.dtype)
        # abs: a negative divisor_override flips the sign of a window's weights
        return v, np.abs(carried) + gamma(k + 1, u) * np.abs(mag) + self.rounding(n, v)

    def scan(self, n, op, x, e):
        """A running sum: prefix k is a sum of k terms (any order), so sum's bound per prefix."""
        a, reverse = n.attrs["axis"], n.attrs["reverse"]
        v = _wide(np.asarray(op.ref(x, **n.attrs)))
        eb = np.broadcast_to(e, x.shape).astype(np.float64)

        def running(w):
            if not reverse:
                return np.cumsum(w, axis=a)
            return np.flip(np.cumsum(np.flip(w, a), axis=a), a)

        if not n.type.dtype.is_float:
            return v, np.where(running(eb) > 0, INF, 0.0)
        shape = [1] * x.ndim
        shape[a] = x.shape[a]
        terms = running(np.ones(shape))
        nu = terms * unit(n.type.dtype)
        g = np.where(nu < 1, nu / np.maximum(1 - nu, 1e-300), INF)
        err = running(eb) + g * running(np.abs(x))
        return v, err + self.rounding(n, v)

    def argmax(self, n, x, e):
        op = get_op("argmax")
        v = op.ref(x, **n.attrs)
        axis, keep = n.attrs["axis"], n.attrs["keepdims"]
        xf = x.reshape(-1) if axis is None else np.moveaxis(x, axis, -1)
        ef = np.broadcast_to(e, x.shape)
        ef = ef.reshape(-1) if axis is None else np.moveaxis(ef, axis, -1)
        xf, ef = xf.astype(np.float64), ef
        lower = np.max(xf - ef, axis=-1, keepdims=True)  # the largest is at least this
        idx = np.argmax(xf, axis=-1)[..., None]
        rivals = (xf + ef >= lower)
        np.put_along_axis(rivals, idx, False, axis=-1)
        bad = rivals.any(axis=-1)
        if keep:
            bad = np.expand_dims(bad, tuple(range(x.ndim)) if axis is None else axis)
        return v, np.where(np.broadcast_to(bad, np.shape(v)), INF, 0.0)

    def matmul(self, n, xs, es):
        a, b = xs
        ea, eb = (np.broadcast_to(e, x.shape) for e, x in zip(es, xs))
        v = np.matmul(a, b)
        if not n.type.dtype.is_float:
            bad = np.matmul((ea > 0).astype(float), np.ones(b.shape)) + \
                np.matmul(np.ones(a.shape), (eb > 0).astype(float))
            return v.astype(n.type.dtype.np), np.where(bad > 0, INF, 0.0)
        aa, ab = np.abs(a), np.abs(b)
        err = np.matmul(aa, eb) + np.matmul(ea, ab) + np.matmul(ea, eb)
        err = err + gamma(a.shape[-1], unit(n.type.dtype)) * np.matmul(aa, ab)
        return v, err + self.rounding(n, v)

    def conv(self, n, xs, es):
        x, w = xs
        ex, ew = (np.broadcast_to(e, a.shape) for e, a in zip(es, xs))
        ref = get_op("conv").ref
        attrs = n.attrs
        v = ref(x, w, **attrs)
        ax, aw = np.abs(x), np.abs(w)
        err = ref(ax, ew, **attrs) + ref(ex, aw, **attrs) + ref(ex, ew, **attrs)
        taps = int(np.prod(w.shape[1:]))  # the terms of one output: C/groups * kernel
        err = err + gamma(taps, unit(n.type.dtype)) * ref(ax, aw, **attrs)
        return v, err + self.rounding(n, v)

    def shape_op(self, n, op, xs, es):
        attrs = n.attrs
        v = np.asarray(op.ref(*xs, **attrs))
        ebs = [np.broadcast_to(e, x.shape) for e, x in zip(es, xs)]
        if n.op == "take":
            err = op.ref(ebs[0], xs[1], **attrs)
            if np.any(ebs[1]):
                err = np.full(np.shape(v), INF)
            return _wide(v), err
        if n.op == "scatter_add":
            err = op.ref(ebs[0], xs[1], **attrs)
            if np.any(ebs[1]):
                err = np.full(np.shape(v), INF)
            if n.type.dtype.is_float:
                count = max(1, xs[1].size)
                err = err + gamma(count, unit(n.type.dtype)) * op.ref(np.abs(xs[0]), xs[1],
                                                                       **attrs)
                err = err + self.rounding(n, v)
            else:
                err = np.where(err > 0, INF, 0.0)
            return _wide(v), err
        if n.op == "concatenate":
            return _wide(v), op.ref(*[e.astype(np.float64) for e in ebs], **attrs)
        return _wide(v), op.ref(ebs[0].astype(np.float64), **attrs)


def _diff(w, v) -> np.ndarray:
    """|w - v| for values that may be bools, ints, infinities or NaNs (NaN: unknown)."""
    w, v = np.asarray(w), np.asarray(v)
    if w.dtype.kind == "b":
        return (w != v).astype(np.float64)
    w, v = w.astype(np.float64), v.astype(np.float64)
    same = (w == v) | (np.isnan(w) & np.isnan(v))
    return np.where(same, 0.0, np.abs(w - v))


# --- comparing a backend's result with the oracle ---------------------------------------------


def mismatches(got: np.ndarray, value: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Positions where ``got`` is outside the oracle's bound (uncertain positions excluded)."""
    got = np.asarray(got)
    known = np.isfinite(err)
    if got.dtype.kind != "f":
        return known & (err == 0) & (got != value)
    g = got.astype(np.float64)
    v = np.asarray(value, np.float64)
    nan_v, nan_g = np.isnan(v), np.isnan(g)
    with np.errstate(invalid="ignore"):
        close = np.abs(g - v) <= err
    exact = (g == v) | (nan_v & nan_g)  # infinities and NaN where the oracle has them
    return known & ~(close | exact)
