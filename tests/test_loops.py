"""Loops (``lm.scan``, ``lm.fori_loop``, ``lm.while_loop``): one loop node whatever the trip
count, the same values as a Python loop on every backend, gradients through scan and fori_loop
(stored residuals and checkpointed) against float64 central differences, and clear errors for
what a loop cannot do."""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import assert_close, directional_fd

import lamina as lm
from lamina import nn
from lamina.backends import runnable

RNG = np.random.default_rng(7)
BACKENDS = ["numpy", "llvm"] + (["triton"] if "triton" in runnable() else [])


@pytest.fixture(autouse=True)
def _interpreter(monkeypatch):
    monkeypatch.setenv("LAMINA_TRITON_MODE", "interpret")


def _randn(*shape, dtype=np.float32):
    return RNG.standard_normal(shape).astype(dtype)


def _run(f, *args, backend):
    return lm.compile(f, backend=backend)(*args)


def _same(got, want, dtype=None):
    got = got if isinstance(got, (tuple, list)) else (got,)
    want = want if isinstance(want, (tuple, list)) else (want,)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert np.shape(g) == np.shape(w)
        assert_close(g, w, dtype=dtype)


# --- forward: the same values as a Python loop ------------------------------------------------


def rnn(h0, xs, w):
    def step(h, x):
        h = lm.tanh(h @ w + x)
        return h, h * 2.0
    return lm.scan(step, h0, xs)


def rnn_reference(h0, xs, w):
    h, ys = h0, []
    for x in xs:
        h = np.tanh(h @ w + x)
        ys.append(h * 2)
    return h, np.stack(ys)


@pytest.mark.parametrize("be", BACKENDS)
def test_scan_matches_a_python_loop(be):
    h0, xs, w = _randn(2, 3), _randn(5, 2, 3), _randn(3, 3)
    _same(_run(rnn, h0, xs, w, backend=be), rnn_reference(h0, xs, w))


@pytest.mark.parametrize("be", BACKENDS)
def test_reverse_scan_stacks_outputs_in_the_order_of_xs(be):
    xs = np.arange(4, dtype=np.float32)
    total, partial = _run(lambda xs: lm.scan(lambda c, x: (c + x, c + x), lm.zeros(()), xs,
                                             reverse=True), xs, backend=be)
    assert float(total) == 6.0
    np.testing.assert_array_equal(partial, [6.0, 6.0, 5.0, 3.0])  # suffix sums


@pytest.mark.parametrize("be", BACKENDS)
def test_pytree_carries_no_xs_and_no_ys(be):
    def f(a, b):
        def step(c, _):
            return {"a": c["a"] * 0.5, "b": (c["b"][0] + 1, c["b"][1] - c["a"])}, None
        out, ys = lm.scan(step, {"a": a, "b": (b, a)}, None, length=3)
        assert ys is None
        return out["a"], out["b"][0], out["b"][1]

    a, b = _randn(4), np.int32(2)
    got = _run(f, a, b, backend=be)
    ra, rb, rc = a.copy(), 2, a.copy()
    for _ in range(3):
        ra, rb, rc = ra * 0.5, rb + 1, rc - ra
    _same(got, (ra, np.int32(rb), rc))
    assert got[1].dtype == np.int32


@pytest.mark.parametrize("be", BACKENDS)
def test_fori_loop_and_its_index(be):
    f = lambda x: lm.fori_loop(-2, 5, lambda i, c: c * 0.5 + i.astype("float32"), x)  # noqa: E731
    want = np.float32(1.5)
    for i in range(-2, 5):
        want = want * np.float32(0.5) + np.float32(i)
    _same(_run(f, np.float32(1.5), backend=be), want)


@pytest.mark.parametrize("be", BACKENDS)
def test_while_loop_runs_the_body_only_while_the_condition_holds(be):
    def f(x, limit):
        def body(c):
            k, v = c
            return k + 1, v * 3
        return lm.while_loop(lambda c: c[1].sum() < limit, body, (0, x))

    k, v = _run(f, np.ones(3, np.float32), np.float32(100), backend=be)
    assert int(k) == 4 and v.tolist() == [81.0] * 3
    k, v = _run(f, np.ones(3, np.float32), np.float32(1), backend=be)  # zero steps
    assert int(k) == 0 and v.tolist() == [1.0] * 3


@pytest.mark.parametrize("be", BACKENDS)
def test_nested_loops_capture_the_enclosing_values(be):
    def f(xs, w):
        def outer(c, x):
            c2, ys = lm.scan(lambda d, y: (lm.tanh(d + y * c * w), d * w), c, x)
            return c2, ys
        return lm.scan(outer, lm.ones(()), xs)

    xs, w = _randn(3, 4), np.float32(0.7)
    c, out = np.float32(1), []
    for x in xs:
        d, ys = c, []
        for y in x:
            ys.append(d * w)
            d = np.tanh(d + y * c * w)
        c = d
        out.append(ys)
    _same(_run(f, xs, w, backend=be), (c, np.array(out, np.float32)))


@pytest.mark.parametrize("be", BACKENDS)
def test_zero_length_scan(be):
    c, ys = _run(rnn, _randn(2, 3), np.zeros((0, 2, 3), np.float32), _randn(3, 3),
                 backend=be)
    assert ys.shape == (0, 2, 3) and c.shape == (2, 3)


def test_one_loop_node_whatever_the_trip_count():
    """The trace, and the llvm program, do not grow with the trip count."""
    sizes = []
    for n in (3, 300):
        fc = lm.compile(rnn, backend="llvm")
        fc(_randn(2, 3), _randn(n, 2, 3), _randn(3, 3))
        sizes.append((fc.ir("traced").count("\n"), fc.ir("fused").count("= kernel")))
    assert sizes[0] == sizes[1]
    g = lm.trace(rnn, _randn(2, 3), _randn(50, 2, 3), _randn(3, 3))
    assert [n.op for n in g.nodes].count("scan") == 1 and "tanh" not in [n.op for n in g.nodes]


def test_loops_print_and_parse_back():
    g = lm.trace(rnn, _randn(2, 3), _randn(5, 2, 3), _randn(3, 3))
    text = str(g)
    assert "scan @step(" in text and "get(" in text
    assert str(lm.ir.parse(text)) == text


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("length", [1, 2, 5])
def test_a_carry_saved_per_step_lives_in_its_stacked_output(reverse, length):
    """A per-step output that is the carry the step started from (what a backward pass saves
    of an RNN's h and c) is the carry's storage on llvm: step t reads slice t and writes the
    next step's slice. Values as numpy's, forward and reverse, with a second carry kept the
    usual way, a carry passed through unchanged, and the same carry saved twice."""
    from lamina.backends.llvm.codegen import Codegen

    w = 0.5 * _randn(3, 3)

    def f(h0, c0, xs):
        def step(carry, x):
            h, c, keep = carry
            h2 = lm.tanh(h @ w + x + c)
            c2 = c * 0.5 + h2
            return (h2, c2, keep), (h, h2 * 2.0, keep, h)
        (h, c, keep), ys = lm.scan(step, (h0, c0, c0 + 1.0), xs, reverse=reverse)
        return h, c, keep, ys

    args = (_randn(2, 3), _randn(2, 3), _randn(length, 2, 3))
    want = _run(f, *args, backend="numpy")
    got = _run(f, *args, backend="llvm")
    for g, e in zip(got[:3] + tuple(got[3]), want[:3] + tuple(want[3])):
        assert_close(g, e, rtol=1e-5, atol=1e-6)
    graph = lm.compile(f, backend="llvm").lower(*args).graph
    (loop,) = [n for n in graph.nodes if n.op == "scan"]
    results = {}
    for n in graph.nodes:
        if n.op == "get" and n.inputs[0] is loop:
            results.setdefault(n.attrs["index"], []).append(n)
    kept = Codegen.carries_in_stack(loop, loop.attrs["num_consts"], loop.attrs["num_carry"],
                                    results, length)
    assert kept == {0: 0, 2: 2}, kept


# --- gradients --------------------------------------------------------------------------------


def _fd_check(loss, args, backend, argnums):
    """Every gradient of ``loss`` against float64 central differences along random
    directions."""
    grads = lm.compile(lm.grad(loss, argnums=argnums), backend=backend)(*args)
    f = lm.compile(loss, backend="numpy")
    for k, g in zip(argnums, grads):
        for _ in range(2):
            v = RNG.standard_normal(args[k].shape)
            vs = [v if j == k else np.zeros_like(a) for j, a in enumerate(args)]
            want = directional_fd(f, args, vs)
            assert abs(float((g * v).sum()) - want) <= 1e-6 * (1 + abs(want)), (k, want)


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("checkpoint", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_gradients(be, checkpoint, reverse):
    def loss(h0, xs, w):
        def step(h, x):
            h = lm.tanh(h @ w + x)
            return h, (h * h).sum()
        h, ys = lm.scan(step, h0, xs, checkpoint=checkpoint, reverse=reverse)
        return (h * h).sum() + (ys * ys).sum()

    args = [_randn(2, 3, dtype=np.float64), _randn(4, 2, 3, dtype=np.float64),
            0.5 * _randn(3, 3, dtype=np.float64)]
    _fd_check(loss, args, be, (0, 1, 2))


@pytest.mark.parametrize("be", BACKENDS)
@pytest.mark.parametrize("use_ys", [False, True])
def test_a_per_step_output_without_cotangent_adds_nothing_per_step(be, use_ys):
    """The carry is also the per-step output (an RNN's h); when the loss reads only the final
    carry, the backward body neither adds a zero cotangent to the carry's nor reads one per
    step. Gradients checked both ways (ys read or not) against float64 differences."""
    def loss(h0, xs, w):
        def step(h, x):
            h = lm.tanh(h @ w + x)
            return h, h
        h, ys = lm.scan(step, h0, xs)
        return (h * h).sum() + ((ys * ys).sum() if use_ys else 0.0)

    args = [_randn(2, 3, dtype=np.float64), _randn(4, 2, 3, dtype=np.float64),
            0.5 * _randn(3, 3, dtype=np.float64)]
    _fd_check(loss, args, be, (0, 1, 2))
    f = lm.compile(lm.grad(loss, argnums=(0, 1, 2)), backend=be)
    f(*args)
    _, params, body = f.ir("dce").split("scan @step_grad")[1].split("\n  }")[0].split("\n", 2)
    adds = re.findall(r"= add\((%\w+), (%\w+)\)", body)
    if use_ys:
        assert "%ct_y0" in params and adds, body
    else:
        assert "%ct_y0" not in params and "value=0.0" not in body and not adds, body


@pytest.mark.parametrize("be", BACKENDS)
def test_fori_loop_and_nested_loop_gradients(be):
    def loss(x, w):
        y = lm.fori_loop(2, 5, lambda i, c: lm.sin(c * w + i.astype("float64")), x)

        def outer(c, r):
            c2, _ = lm.scan(lambda d, e: (lm.tanh(d * e + c), None), c, r)
            return c2, c2.sum()
        c, ys = lm.scan(outer, y, lm.stack([w, x, w * x]).reshape(3, 1, -1) * 0.3)
        return (c * c).sum() + ys.sum()

    _fd_check(loss, [_randn(3, dtype=np.float64), _randn(3, dtype=np.float64)], be, (0, 1))


def test_second_order_gradient_through_a_loop():
    f = lambda x: lm.fori_loop(0, 3, lambda i, c: lm.sin(c * x), x).sum()  # noqa: E731
    inner = lambda y: (lm.grad(f)(y) ** 2).sum()  # noqa: E731
    x = _randn(2, dtype=np.float64)
    for backend in ("numpy", "llvm"):
        got = lm.compile(lm.grad(inner), backend=backend)(x)
        g = lm.compile(inner, backend="numpy")
        for j in range(2):
            e = np.eye(2)[j]
            assert abs(got[j] - directional_fd(g, [x], [e])) < 1e-6


def test_checkpoint_stores_only_the_carries():
    """The residuals the backward scan reads: the body's intermediate values per step, or
    with checkpoint=True only the carries (and the backward recomputes the rest)."""
    def loss(ck):
        def f(h0, xs, w):
            def step(h, x):
                a = lm.tanh(h @ w + x)
                return lm.sigmoid(a) * a, None
            h, _ = lm.scan(step, h0, xs, checkpoint=ck)
            return h.sum()
        return f

    sizes = []
    for ck in (False, True):
        g = lm.compile(lm.grad(loss(ck), argnums=2), backend="numpy")
        g(_randn(2, 3), _randn(5, 2, 3), _randn(3, 3))
        head = next(line for line in g.ir("autodiff").splitlines() if "= scan @step(" in line)
        sizes.append(head.split(" : ")[1].count("f32[5,"))
    assert sizes[1] == 1 < sizes[0]


def test_cheap_residuals_are_recomputed_not_stored():
    """An LSTM step saves what its backward needs and cannot cheaply recompute: the four gate
    activations, c_prev, tanh(c) and h_prev (7 per step), not 1 - s or 1 - tanh(c)**2 (cheap
    functions of saved values) nor h_prev.T (the weight gradient reads the stack of h_prev
    through a transpose instead of a per-step transposed copy)."""
    T, B, I, H = 5, 2, 3, 4
    lstm = lm.nn.LSTM(I, H)

    opt = lm.optim.SGD(lstm.parameters(), lr=0.1)

    @lm.compile(backend="numpy")
    def f(x):
        _, (h, _) = lstm(x)
        loss = (h * h).mean()
        opt.minimize(loss)
        return loss

    f(_randn(T, B, I))
    ir = f.ir("autodiff")
    fwd = next(line for line in ir.splitlines() if "= scan @" in line and "_grad" not in line)
    bwd = next(line for line in ir.splitlines() if "= scan @" in line and "_grad(" in line)
    # results: 2 carries, the stacked h, then the residuals
    assert fwd.split(" : ")[1].count(f"f32[{T},") == 1 + 7
    assert f"f32[{T},{H},{B}]" not in bwd.split(" : ")[1]


def test_training_through_a_scan_updates_the_parameters():
    lm.random.seed(0)
    cell = lm.nn.Linear(4, 4)
    opt = lm.optim.SGD(cell.parameters(), lr=0.5)

    @lm.compile(backend="llvm")
    def step(xs):
        h, _ = lm.scan(lambda h, x: (lm.tanh(cell(h) + x), None), lm.zeros((2, 4)), xs)
        loss = (h * h).mean()
        opt.minimize(loss)
        return loss

    xs = _randn(6, 2, 4)
    losses = [float(step(xs)) for _ in range(20)]
    assert losses[-1] < 0.5 * losses[0]


# --- random numbers, state, errors --------------------------------------------------------------


@pytest.mark.parametrize("be", BACKENDS)
def test_random_draws_in_a_body_differ_per_step_and_match_numpy(be):
    f = lambda x: lm.scan(lambda c, _: (c, lm.random.uniform((3,))), x, None, length=4)[1]  # noqa: E731, E501
    lm.random.seed(3)
    want = lm.compile(f, backend="numpy")(np.float32(0))
    lm.random.seed(3)
    got = lm.compile(f, backend=be)(np.float32(0))
    np.testing.assert_array_equal(got, want)
    assert len({tuple(r) for r in got.tolist()}) == 4


def test_a_loop_result_can_update_state():
    count = lm.nn.Buffer(np.zeros((), np.float32))

    @lm.compile(backend="llvm")
    def step(x):
        count.assign(lm.fori_loop(0, 3, lambda i, c: c + x, count))
        return x

    step(np.float32(2))
    step(np.float32(2))
    assert float(count.numpy()) == 12.0


def test_an_index_out_of_range_in_a_body_is_an_error():
    f = lambda x, i: lm.fori_loop(0, 3, lambda k, c: c + lm.take(x, i + k), x[0])  # noqa: E731
    x = np.arange(4, dtype=np.float32)
    for backend in ("numpy", "llvm"):
        assert float(lm.compile(f, backend=backend)(x, np.int32(1))) == 6.0
        with pytest.raises(lm.LaminaError, match="out of range|IndexError|index"):
            lm.compile(f, backend=backend)(x, np.int32(2))


def test_errors_name_the_problem_and_the_line():
    xs = np.ones((3, 2), np.float32)
    with pytest.raises(lm.ShapeError, match="carry 0 enters the body as f32\\[2\\] and leaves "
                                             "it as f32\\[\\]") as e:
        lm.compile(lambda x: lm.scan(lambda c, x: (c.sum(), x), x[0], x))(xs)
    assert "test_loops.py" in str(e.value)
    with pytest.raises(lm.DTypeError, match="leaves it as i32"):
        lm.compile(lambda x: lm.scan(lambda c, x: (c.astype("int32"), x), x[0], x))(xs)
    with pytest.raises(lm.TraceError, match="structure"):
        lm.compile(lambda x: lm.scan(lambda c, x: ((c, c), x), x[0], x))(xs)
    with pytest.raises(lm.GradError, match="while_loop is not differentiable"):
        lm.compile(lm.grad(lambda x: lm.while_loop(lambda c: c.sum() < 9, lambda c: c * 2,
                                                   x).sum()))(np.ones(2, np.float32))
    with pytest.raises(lm.TraceError, match="Python ints"):
        lm.compile(lambda x, n: lm.fori_loop(0, n, lambda i, c: c, x))(xs, np.int32(3))
    with pytest.raises(lm.DTypeError, match="bool scalar"):
        lm.compile(lambda x: lm.while_loop(lambda c: c, lambda c: c, x))(xs)
    leak = []

    def escape(x):
        def body(c, _):
            leak.append(c * 2)
            return c, None
        lm.scan(body, x[0], x)
        return leak[-1] + 1

    with pytest.raises(lm.TraceError, match="used after the loop"):
        lm.compile(escape)(xs)
    p = lm.nn.Parameter(np.zeros(2, np.float32), name="p")
    with pytest.raises(lm.TraceError, match="cannot be assigned inside the body"):
        lm.compile(lambda x: lm.scan(lambda c, x: (p.assign(c) or c, None), x[0], x))(xs)


def test_eager_loops_run_on_arrays():
    total, ys = lm.scan(lambda c, x: (c + x, c * x), np.float32(0), np.arange(3, dtype="f"))
    assert float(total) == 3.0 and ys.tolist() == [0.0, 0.0, 2.0]
    assert float(lm.fori_loop(0, 4, lambda i, c: c + i.astype("float32"), np.float32(0))) == 6
    assert float(lm.while_loop(lambda c: c < 10, lambda c: c * 2, np.float32(1))) == 16


def test_loop_invariant_work_moves_before_the_loop():
    """licm: W.T and a product of constants leave the body (computed once), stepwise work
    stays; the values do not change."""
    def f(h0, xs, w, v):
        def step(h, x):
            h = lm.tanh(h @ w.T + x + (v @ v).sum())
            return h, h
        return lm.scan(step, h0, xs)

    args = (_randn(2, 3), _randn(4, 2, 3), _randn(3, 3), _randn(3, 3))
    fc = lm.compile(f, backend="llvm")
    _same(fc(*args), lm.compile(f, backend="numpy")(*args))
    text = fc.ir("licm")
    top = [line for line in text.splitlines() if not line.startswith("    ")]
    assert any("= transpose(%w)" in line for line in top)
    assert any("= matmul(%v, %v)" in line for line in top)
    body = text.split("^(")[1]
    assert "transpose(" not in body and "matmul(%v" not in body and "tanh(" in body
    assert "loop-invariant value(s) computed once" in text


def test_lstm_weight_gradients_are_one_product_after_the_loop():
    lstm = nn.LSTM(4, 8)

    def loss(x):
        return (lstm(x)[1][0] ** 2).sum()

    opt = lm.optim.SGD(lstm.parameters(), lr=0.1)

    @lm.compile(backend="numpy")
    def step(x):
        value = loss(x)
        opt.minimize(value)
        return value

    step(_randn(6, 2, 4))
    text = step.ir("dce")
    body = text.split("scan @step_grad")[1].split("\n  }")[0]
    assert "grad_weight" not in body  # no per-step accumulation of a weight gradient
    after = text.split("scan @step_grad")[1].split("\n  }")[1]
    # dW_hh = dgates^T h over all T * B = 12 rows at once, in the weight's own layout
    # (simplify's transpose_of_matmul: no transpose of the product before the update)
    assert re.search(r"= matmul\(%\d+, %\d+\) : f32\[32,8\]", after), after


def test_a_100_step_sampling_loop_is_one_node_and_one_call():
    """A diffusion-style sampler: 100 steps, each drawing fresh noise in the graph; it traces
    to one loop node, compiles once and runs as one call, with numpy's numbers."""
    w = _randn(8, 8) * 0.1

    def sample(x):
        def step(i, x):
            t = (100 - i).astype("float32") / 100.0
            noise = lm.random.normal(x.shape)
            return x - 0.05 * lm.tanh(x @ w) * t + 0.01 * noise
        return lm.fori_loop(0, 100, step, x)

    x0 = _randn(4, 8)
    g = lm.trace(sample, x0)
    assert [n.op for n in g.nodes].count("fori_loop") == 1 and len(g.nodes) < 10
    outs = {}
    for backend in ("numpy", "llvm"):
        lm.random.seed(11)
        fc = lm.compile(sample, backend=backend)
        outs[backend] = fc(x0)
    assert_close(outs["llvm"], outs["numpy"])
    assert fc.ir("fused").count("= fori_loop @step(") == 1  # llvm: a real loop, not unrolled
    lm.random.seed(11)
    no_noise = lm.compile(lambda x: lm.fori_loop(
        0, 100, lambda i, x: x - 0.05 * lm.tanh(x @ w) * ((100 - i).astype("float32") / 100.0),
        x), backend="numpy")(x0)
    assert np.abs(outs["numpy"] - no_noise).max() > 1e-3  # the noise arrived


@pytest.mark.parametrize("be", BACKENDS)
def test_scans_lose_unread_outputs_and_operands(be):
    """trim_scans: a stacked output nothing reads (the forward scan's ys when the loss reads
    only the final carry), the operands the backward scan does not read and the zero
    cotangent of those ys (a splat: T steps of zeros) leave the loops; values and gradients
    stay those of the untrimmed program (float64 finite differences), and a scan whose
    outputs are all read is left alone."""
    def loss(h0, xs, w):
        def step(h, x):
            h = lm.tanh(h @ w + x)
            return h, h * 3.0
        h, _ = lm.scan(step, h0, xs)
        return (h * h).sum()

    args = [_randn(2, 3, dtype=np.float64), _randn(5, 2, 3, dtype=np.float64),
            0.5 * _randn(3, 3, dtype=np.float64)]
    _fd_check(loss, args, be, (0, 1, 2))
    fc = lm.compile(lm.grad(loss, argnums=(0, 1, 2)), backend=be)
    fc(*args)
    text = fc.ir("trim_scans")
    assert "@step: dropped 1 unread stacked output(s)" in text
    assert re.search(r"@step_grad: dropped \d+ stacked operand\(s\) unread or splat", text)
    assert not re.search(r"constant\(\) \{value=0\.0\} : f64\[5,", fc.ir("dce"))  # no T zeros
    kept = lm.compile(lambda h0, xs, w: rnn(h0, xs, w), backend=be)
    _same(kept(*args), rnn_reference(*args))
    assert "dropped" not in kept.ir("trim_scans")


@pytest.mark.parametrize("be", BACKENDS)
def test_carries_are_right_after_any_number_of_steps(be):
    """On the CPU a loop's carries live in two buffers that take turns (odd steps read one,
    even steps the other): the results after an even and an odd number of steps, none, a
    while_loop stopping at either parity, and a loop inside a loop's body."""
    def f(a, b, xs):
        def step(c, x):
            u, v = c
            inner = lm.fori_loop(0, 3, lambda i, w: w * 0.5 + x, u)
            return (v + inner, u - x), u * v
        return lm.scan(step, (a, b), xs)

    def ref(a, b, xs):
        u, v, ys = a, b, []
        for x in xs:
            w = u
            for _ in range(3):
                w = w * 0.5 + x
            ys.append(u * v)
            u, v = v + w, u - x
        return (u, v), np.stack(ys) if ys else np.zeros((0,) + a.shape, a.dtype)

    fc = lm.compile(f, backend=be)
    for n in range(6):
        args = (_randn(2, 3), _randn(2, 3), _randn(n, 2, 3))
        (u, v), ys = fc(*args)
        (ru, rv), rys = ref(*args)
        _same((u, v, ys), (ru, rv, rys))
    wl = lm.compile(lambda x, k: lm.while_loop(lambda c: c[1] < k, lambda c: (c[0] * 2.0 + 1.0,
                                                                             c[1] + 1),
                                               (x, np.int32(0))), backend=be)
    for k in range(5):
        x, count = wl(np.float32(1), np.int32(k))
        assert int(count) == k and float(x) == 2.0 ** (k + 1) - 1.0
