"""Kernel fusion (passes/fuse.py), independent of any backend: how many kernels each pattern
becomes (softmax, layernorm, cross-entropy forward and backward, GEMM epilogues, strided
operands, the MLP training step with its SGD updates), the remarks that explain every kernel and
boundary, the cases that must not fuse, and for every fused graph: the reference interpreter
gives bit-identical results, the verifier accepts it and its text round-trips.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import lamina as lm
from lamina import nn, optim
from lamina.frontend.trace import trace_function
from lamina.ir import Builder, interpret, parse, print_graph, verify
from lamina.passes import DEFAULT, PassManager
from lamina.passes.fuse import fuse_kernels

T = lm.TensorType
F32 = "float32"


# --- helpers ----------------------------------------------------------------------------------


class Fused:
    """A function traced, optimized by the default pipeline, then fused."""

    def __init__(self, fn, *types, name=None):
        traced = trace_function(fn, list(types), name).graph
        self.unfused, _ = PassManager(DEFAULT).run(traced)
        self.graph, stages = PassManager([fuse_kernels]).run(self.unfused)
        self.stage = stages[-1]
        assert self.stage.name == "fused"

    @property
    def kernels(self):
        return [n for n in self.graph.nodes if n.op == "kernel"]

    @property
    def remarks(self) -> list[str]:
        return self.stage.remarks

    def kernel(self, name: str):
        (k,) = [n for n in self.kernels if n.attrs["name"] == name]
        return k


def region_ops(k) -> list[str]:
    return [m.op for m in k.region.nodes if m.op != "constant"]


def sample(p, rng):
    """A random array for parameter ``p`` (integers in [0, 4): valid class labels)."""
    t = p.type
    if t.dtype.is_int:
        return rng.integers(0, 4, size=t.shape).astype(t.dtype.np)
    if t.dtype.is_bool:
        return rng.random(t.shape) < 0.5
    return rng.standard_normal(t.shape).astype(t.dtype.np)


def check_fused(f: Fused, seed: int = 0):
    """The fused graph computes bit-for-bit what the unfused one does, passes the verifier and
    survives print -> parse -> print; it holds only kernels and literals at top level."""
    rng = np.random.default_rng(seed)
    g, fg = f.unfused, f.graph
    inputs = [sample(p, rng) for p in g.inputs]
    state = {p.name: sample(p, rng) for p in g.state}
    want_out, want_up = interpret(g, inputs, state)
    got_out, got_up = interpret(fg, inputs, state)
    assert len(got_out) == len(want_out)
    for a, b in zip(got_out, want_out):
        np.testing.assert_array_equal(a, b)
    assert sorted(got_up) == sorted(want_up)
    for k in want_up:
        np.testing.assert_array_equal(got_up[k], want_up[k])
    verify(fg, allow_grad=False, allow_composite=False)
    text = print_graph(fg)
    again = parse(text)
    assert print_graph(again) == text
    reparsed_out, _ = interpret(again, inputs, state)
    for a, b in zip(reparsed_out, want_out):
        np.testing.assert_array_equal(a, b)
    assert {n.op for n in fg.nodes} <= {"kernel", "constant"}
    for k in [n for n in fg.nodes if n.op == "kernel"]:
        assert k.region is not None and k.region.nodes
        assert all(m.region is None for m in k.region.nodes)


def layernorm_two_pass(x, g, b):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) * (x - mu)).mean(axis=-1, keepdims=True)
    return (x - mu) * lm.rsqrt(var + 1e-5) * g + b


def layernorm_moments(x, g, b):  # the form benchmarks/run.py uses
    mu = x.mean(axis=-1, keepdims=True)
    var = (x * x).mean(axis=-1, keepdims=True) - mu * mu
    return (x - mu) * lm.rsqrt(var + 1e-5) * g + b


def cross_entropy(z, y):
    return nn.functional.cross_entropy(z, y)


LN_TYPES = (T((16, 32), F32), T((32,), F32), T((32,), F32))
CE_TYPES = (T((16, 10), F32), T((16,), "int64"))


def mlp_train_step(sizes=(784, 512, 512, 10), batch=64, momentum=0.0):
    """The issue's MLP training step: ReLU layers, cross-entropy, SGD; fused."""
    lm.random.seed(0)
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    opt = optim.SGD([p for layer in layers for p in (layer.w, layer.b)], lr=0.1,
                    momentum=momentum)

    def step(x, y):
        h = x
        for layer in layers[:-1]:
            h = lm.relu(layer(h))
        loss = nn.functional.cross_entropy(layers[-1](h), y)
        opt.minimize(loss)
        return loss

    return Fused(step, T((batch, sizes[0]), F32), T((batch,), "int64"))


# --- equivalence, verification and round trip for every pattern --------------------------------


CASES = {
    "softmax": (lambda x: lm.softmax(x, axis=-1), (T((16, 32), F32),)),
    "layernorm_two_pass": (layernorm_two_pass, LN_TYPES),
    "layernorm_moments": (layernorm_moments, LN_TYPES),
    "log_softmax": (lambda x: lm.log_softmax(x, axis=-1), (T((8, 10), F32),)),
    "cross_entropy": (cross_entropy, CE_TYPES),
    "cross_entropy_value_and_grad": (lambda z, y: lm.value_and_grad(cross_entropy)(z, y),
                                     CE_TYPES),
    "softmax_grad": (lm.grad(lambda x: (lm.softmax(x) * lm.softmax(x)).sum()),
                     (T((8, 16), F32),)),
    "linear_relu": (lambda x, w, b: lm.relu(x @ w + b),
                    (T((8, 16), F32), T((16, 4), F32), T((4,), F32))),
    "residual": (lambda x, w, r: lm.tanh(x @ w) + r,
                 (T((8, 16), F32), T((16, 4), F32), T((8, 4), F32))),
    "transposed_b": (lambda x, w: x @ lm.transpose(w), (T((8, 16), F32), T((4, 16), F32))),
    "transposed_a": (lambda x, w: lm.transpose(x) @ w, (T((16, 8), F32), T((16, 4), F32))),
    "batched": (lambda a, b: lm.relu(a @ b), (T((3, 4, 5), F32), T((3, 5, 2), F32))),
    "column_sum": (lambda x: x - x.sum(axis=0, keepdims=True), (T((8, 4), F32),)),
    "argmax": (lambda x: lm.argmax(x * 2, axis=1), (T((6, 5), F32),)),
    "shared_producer": (lambda x: (lm.exp(x) * 2, (lm.exp(x) + 1).sum(axis=1)),
                        (T((4, 6), F32),)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_graph_equals_unfused(case):
    fn, types = CASES[case]
    f = Fused(fn, *types)
    assert f.kernels
    check_fused(f)


def test_fused_mlp_train_step_equals_unfused():
    f = mlp_train_step()
    check_fused(f)


def test_fusing_a_fused_graph_changes_nothing():
    fn, types = CASES["softmax"]
    f = Fused(fn, *types)
    assert fuse_kernels(f.graph) is f.graph


# --- what each pattern becomes ----------------------------------------------------------------


def test_softmax_is_one_row_kernel():
    f = Fused(lambda x: lm.softmax(x, axis=-1), T((16, 32), F32))
    (k,) = f.kernels
    ops = region_ops(k)
    for op in ("max", "exp", "sum", "div"):
        assert op in ops
    name = k.attrs["name"]
    assert any(r.startswith(f"@{name}: reduce over axes [1] of [16, 32] (row program)")
               for r in f.remarks), f.remarks
    assert "kernels: 1 reduce" in f.remarks


@pytest.mark.parametrize("fn", [layernorm_two_pass, layernorm_moments],
                         ids=["two_pass", "moments"])
def test_layernorm_with_gain_and_bias_is_one_kernel(fn):
    f = Fused(fn, *LN_TYPES)
    assert len(f.kernels) == 1, "\n".join(f.remarks)
    ops = region_ops(f.kernels[0])
    assert ops.count("sum") == 2 and "rsqrt" in ops


def _ancestors(graph, value):
    """Kernel nodes ``value`` depends on (itself included)."""
    seen, todo = set(), [value]
    while todo:
        v = todo.pop()
        if v in seen or not hasattr(v, "op"):
            continue
        seen.add(v)
        todo.extend(v.inputs)
    return {n for n in seen if n.op == "kernel"}


def test_cross_entropy_forward_is_at_most_two_kernels():
    f = Fused(cross_entropy, *CE_TYPES)
    assert 1 <= len(f.kernels) <= 2, "\n".join(f.remarks)
    assert all(k.region.nodes for k in f.kernels)
    ops = [op for k in f.kernels for op in region_ops(k)]
    for op in ("max", "exp", "log", "sum"):
        assert op in ops


def test_cross_entropy_backward_is_at_most_two_kernels():
    f = Fused(lambda z, y: lm.value_and_grad(cross_entropy)(z, y), *CE_TYPES)
    loss, dz = f.graph.outputs
    forward = _ancestors(f.graph, loss)
    backward = _ancestors(f.graph, dz) - forward
    assert len(forward) <= 2, "\n".join(f.remarks)
    assert 1 <= len(backward) <= 2, "\n".join(f.remarks)
    # the gradient alone (lm.grad): the same kernels, no more
    g = Fused(lambda z, y: lm.grad(cross_entropy)(z, y), *CE_TYPES)
    assert 1 <= len(g.kernels) <= 2


def test_linear_relu_is_one_gemm_with_its_epilogue():
    f = Fused(lambda x, w, b: lm.relu(x @ w + b),
              T((8, 16), F32), T((16, 4), F32), T((4,), F32))
    (k,) = f.kernels
    assert region_ops(k) == ["matmul", "add", "relu"]
    assert k.attrs["name"] == "fused_matmul_add_relu"
    assert "@fused_matmul_add_relu: gemm, epilogue add, relu" in f.remarks


def test_residual_add_is_in_the_gemm_epilogue():
    fn, types = CASES["residual"]
    f = Fused(fn, *types)
    (k,) = f.kernels
    assert region_ops(k) == ["matmul", "tanh", "add"]


@pytest.mark.parametrize("case", ["transposed_a", "transposed_b"])
def test_transposed_operand_is_read_through_the_gemm(case):
    fn, types = CASES[case]
    f = Fused(fn, *types)
    (k,) = f.kernels  # no separate transpose kernel
    assert sorted(region_ops(k)) == ["matmul", "transpose"]
    assert any("reading transpose operands as strided views" in r for r in f.remarks)


def test_computed_operand_of_a_gemm_is_materialized_with_a_reason():
    f = Fused(lambda w, x: lm.transpose(lm.tanh(w)) @ x, T((4, 6), F32), T((4, 3), F32))
    assert sorted(sorted(region_ops(k)) for k in f.kernels) == [["matmul", "transpose"],
                                                                ["tanh"]]
    assert any(r.startswith("boundary") and "tanh not fused" in r and "strides" in r
               for r in f.remarks), f.remarks
    check_fused(f)


# --- the MLP training step of the issue ---------------------------------------------------------


@pytest.fixture(scope="module")
def mlp():
    return mlp_train_step()


def _update_kernel(f, state_name):
    v = f.graph.updates[state_name]
    assert v.op == "kernel", f"update of {state_name} is not a kernel"
    return v


def test_mlp_sgd_updates_are_fused_into_weight_gradient_gemms(mlp):
    names = [p.name for p in mlp.graph.state]
    weights = [n for n in names if n.startswith("w")]
    assert weights == ["w", "w_1", "w_2"]
    for w in weights:
        k = _update_kernel(mlp, w)
        ops = region_ops(k)
        assert "matmul" in ops and "transpose" in ops, (w, ops)
        # the epilogue: w - lr * dW, reading the old weight in the same kernel
        assert ops[-1] == "sub" and "mul" in ops, (w, ops)
        params = {p.name for p in k.region.inputs}
        assert {w, "sgd.lr"} <= params
        name = k.attrs["name"]
        assert any(r.startswith(f"@{name}: gemm reading transpose operands as strided "
                                "views, epilogue mul, sub") for r in mlp.remarks)


def test_mlp_sgd_bias_updates_are_fused_into_bias_gradient_reductions(mlp):
    for b in ("b", "b_1", "b_2"):
        k = _update_kernel(mlp, b)
        ops = region_ops(k)
        assert ops[0] == "sum" and ops[-1] == "sub", (b, ops)
        assert "matmul" not in ops
        (red,) = [m for m in k.region.nodes if m.op == "sum"]
        assert red.attrs["axis"] == (0,)  # the batch axis
        assert any(r.startswith(f"@{k.attrs['name']}: reduce over axes [0]")
                   and "(accumulation)" in r for r in mlp.remarks)


def test_mlp_kernel_list(mlp):
    kernels = mlp.kernels
    kinds = [region_ops(k) for k in kernels]
    # forward: two GEMMs with bias + ReLU epilogues, the logits GEMM
    assert kinds[0] == ["matmul", "add", "relu"] and kinds[1] == ["matmul", "add", "relu"]
    gemms = [k for k in kernels if "matmul" in region_ops(k)]
    assert len(gemms) == 8  # 3 forward, 2 input gradients, 3 weight gradients
    # no kernel is a lone shape op (transposes are strided GEMM reads)
    assert not [k for k in kernels if set(region_ops(k)) <= {"transpose", "reshape",
                                                              "broadcast"}]
    # cross-entropy: at most 2 forward + 1 backward row kernels
    rows = [k for k in kernels if "exp" in region_ops(k)]
    assert 1 <= len(rows) <= 3
    # every kernel is named in the remarks; the kernel count is summarized
    for k in kernels:
        assert any(r.startswith(f"@{k.attrs['name']}: ") for r in mlp.remarks)
    summary = [r for r in mlp.remarks if r.startswith("kernels: ")]
    assert summary == [f"kernels: {len(gemms)} gemm, {len(kernels) - len(gemms)} reduce"]
    assert len(kernels) <= 14


def test_mlp_every_boundary_is_explained(mlp):
    """Each kernel whose result another kernel reads is named in a boundary remark (by its
    kernel name, or as '<root op> not fused: ...'), as the issue's dump requires."""
    readers: dict = {}
    for k in mlp.kernels:
        for v in k.inputs:
            if getattr(v, "op", None) == "kernel":
                readers.setdefault(v, []).append(k)
    boundaries = [r for r in mlp.remarks if r.startswith("boundary")]
    assert boundaries
    unexplained = []
    for p in readers:
        root = p.region.outputs[0].op
        if not any(f"@{p.attrs['name']}" in r or f"{root} not fused" in r for r in boundaries):
            unexplained.append(f"@{p.attrs['name']} (root {root})")
    assert not unexplained, f"no boundary remark for {unexplained}; remarks: {boundaries}"


def test_mlp_momentum_update_fuses_into_the_gemm_epilogue():
    f = mlp_train_step(sizes=(16, 8, 4), batch=4, momentum=0.9)
    k = _update_kernel(f, "w.momentum")
    assert "matmul" in region_ops(k)
    check_fused(f)


# --- remarks on boundaries, and what must not fuse ------------------------------------------------


def test_reduction_over_leading_axis_feeding_full_shape_consumer_is_a_boundary():
    fn, types = CASES["column_sum"]
    f = Fused(fn, *types)
    assert sorted(region_ops(k)[0] for k in f.kernels) == ["sub", "sum"]
    assert ("boundary: @fused_sum -> @fused_sub: sum not fused: a full-shape consumer of a "
            "reduction over leading axes needs the result before the reduction is done"
            ) in f.remarks
    assert any("(accumulation)" in r for r in f.remarks)


def test_expensive_producer_broadcast_along_leading_axis_is_not_fused():
    f = Fused(lambda x, v: x + lm.exp(v), T((4, 6), F32), T((6,), F32))
    assert sorted(region_ops(k) for k in f.kernels) == [["add"], ["exp"]]
    assert any(r.startswith("boundary") and "exp not fused" in r and "recomputed 4x" in r
               for r in f.remarks), f.remarks
    check_fused(f)


def test_producer_varying_only_on_leading_axes_is_fused():
    f = Fused(lambda x, c: x + lm.exp(c), T((4, 6), F32), T((4, 1), F32))
    (k,) = f.kernels
    assert region_ops(k) == ["exp", "add"]
    assert not [r for r in f.remarks if r.startswith("boundary")]


def test_pieces_of_a_concatenate_fuse_into_it():
    """The llvm kernel writes a concatenate piece by piece (one loop nest per piece), so each
    piece's producers are computed once per element: fused (an LSTM's backward step joins its
    four gate gradients this way); a value two pieces read stays a kernel of its own."""
    def fn(a, b):
        t = lm.tanh(a)
        return lm.concatenate([a * b, t * 2.0, b * 3.0 + t, lm.sigmoid(a + b)], axis=1)

    f = Fused(fn, T((4, 6), F32), T((4, 6), F32))
    assert sorted(sorted(region_ops(k)) for k in f.kernels) == [
        ["add", "add", "concatenate", "mul", "mul", "mul", "sigmoid"], ["tanh"]]
    check_fused(f)
    a, b = np.random.default_rng(0).standard_normal((2, 4, 6)).astype(np.float32)
    np.testing.assert_allclose(lm.compile(fn, backend="llvm")(a, b),
                               lm.compile(fn, backend="numpy")(a, b), rtol=1e-6, atol=1e-6)


def test_concatenate_along_its_outer_axis_keeps_expensive_pieces_out():
    # concatenated along the outermost axis, the kernel picks the piece per element (the
    # per-piece nests split the other axes): a piece fused there would be computed per piece
    f = Fused(lambda a, b: lm.concatenate([lm.exp(a), b], axis=0), T((4, 6), F32),
              T((4, 6), F32))
    assert sorted(map(region_ops, f.kernels)) == [["concatenate"], ["exp"]]
    check_fused(f)


def test_random_draws_are_not_recomputed_down_a_residual_stream():
    """Each layer norm of a residual stream with dropout is a row kernel; the dropout masks
    of earlier layers are drawn once, not recomputed in every later row kernel (row programs
    recompute cheap producers, not Philox draws)."""
    from lamina.nn import functional as F

    def fn(x, w):
        for _ in range(3):
            h = F.layer_norm(x, (8,))
            x = x + F.dropout(h @ w, 0.1, True)
        return F.layer_norm(x, (8,))

    f = Fused(fn, T((4, 8), F32), T((8, 8), F32))
    drawing = [k for k in f.kernels if "random_uniform" in region_ops(k)]
    assert sum(region_ops(k).count("random_uniform") for k in drawing) == 3


def test_a_residual_stream_is_stored_not_re_added_in_every_layer_norm():
    """x_l = x_{l-1} + h_l @ w with a layer norm reading each x_l: row programs recompute
    short chains (softmax's exp(x - max)) but store a long one, so the adds grow linearly
    with the depth (they grew quadratically: 16 layers, 153 adds)."""
    from lamina.nn import functional as F

    def stream(layers):
        def fn(x, w):
            for _ in range(layers):
                x = x + F.layer_norm(x, (8,)) @ w
            return F.layer_norm(x, (8,))
        return Fused(fn, T((4, 8), F32), T((8, 8), F32))

    adds = {n: sum(region_ops(k).count("add") for k in stream(n).kernels) for n in (4, 16)}
    assert adds[16] - adds[4] <= 2 * (16 - 4), adds
    check_fused(stream(6))


def test_a_value_two_loop_kernels_read_is_computed_once():
    def fn(x):
        a = lm.tanh(x)
        return a * 2, a + 1

    f = Fused(fn, T((4, 6), F32))
    holding = [k for k in f.kernels if "tanh" in region_ops(k)]
    assert len(holding) == 1  # not merged into both consumers
    producer = holding[0]
    consumers = [k for k in f.kernels if producer in k.inputs]
    assert len(consumers) == 2 and len(f.kernels) == 3
    check_fused(f)


def test_scatter_add_is_a_kernel_of_its_own():
    def fn(x, i):
        e = lm.take(lm.exp(x), i, axis=0)
        return lm.grad(lambda t: (lm.take(t, i, axis=0) * e).sum())(x)

    f = Fused(fn, T((5, 3), F32), T((4,), "int64"))
    scatter = [k for k in f.kernels if "scatter_add" in region_ops(k)]
    assert scatter and all(region_ops(k) == ["scatter_add"] for k in scatter)
    check_fused(f)


# --- random graphs: never a cycle, always the same values ---------------------------------------

UNARY = ("tanh", "neg", "abs", "exp", "sigmoid")
BINARY = ("add", "mul", "sub", "maximum")


def random_graph(seed: int, with_state: bool = False):
    """A random DAG of elementwise, reduction, matmul, reshape, transpose and broadcast ops over
    a few small shapes (some values used many times, several outputs). ``with_state`` adds two
    state variables, each updated to a random value of its shape (or left alone)."""
    rng = np.random.default_rng(seed)
    b = Builder(f"rand{seed}")
    pool = [b.var(b.add_input("x", T((4, 6), F32))), b.var(b.add_input("y", T((4, 6), F32))),
            b.var(b.add_input("v", T((6,), F32))), b.var(b.add_input("c", T((4, 1), F32))),
            b.var(b.add_input("w", T((6, 5), F32)))]
    state = []
    if with_state:
        state = [b.var(b.add_state("s", T((4, 6), F32))), b.var(b.add_state("q", T((6,), F32)))]
        pool += state
    first = len(pool)

    def pick(pred=lambda t: True):
        cands = [t for t in pool if pred(t)]
        # favour recent values: deeper chains
        weights = np.arange(1, len(cands) + 1, dtype=float) ** 2
        return cands[rng.choice(len(cands), p=weights / weights.sum())]

    for _ in range(int(rng.integers(6, 16))):
        kind = rng.choice(["unary", "binary", "binary", "reduce", "matmul", "reshape",
                           "transpose", "broadcast"])
        a = pick()
        if kind == "unary":
            op = str(rng.choice(UNARY))
            a = b.call("tanh", a) if op == "exp" else a  # keep exp finite
            out = b.call(op, a)
        elif kind == "binary":
            shapes = [a.shape, a.shape[1:], a.shape[:-1] + (1,)] if a.shape else [()]
            o = pick(lambda t, s=shapes: t.shape in s)
            out = b.call(str(rng.choice(BINARY)), a, o)
        elif kind == "reduce":
            if not a.shape:
                continue
            axis = int(rng.integers(0, len(a.shape)))
            op = str(rng.choice(["sum", "max"]))
            out = getattr(a, op)(axis=axis, keepdims=bool(rng.integers(0, 2)))
        elif kind == "matmul":
            if len(a.shape) != 2:
                continue
            k = a.shape[1]
            rhs = [t for t in pool if len(t.shape) == 2 and t.shape[0] == k]
            rhs_t = [t for t in pool if len(t.shape) == 2 and t.shape[1] == k]
            if rhs and (not rhs_t or rng.integers(0, 2)):
                out = a @ rhs[int(rng.integers(0, len(rhs)))]
            elif rhs_t:
                out = a @ rhs_t[int(rng.integers(0, len(rhs_t)))].T
            else:
                continue
        elif kind == "reshape":
            n = int(np.prod(a.shape))
            opts = [s for s in [(n,), (2, n // 2), (n // 2, 2)] if np.prod(s) == n and s]
            out = a.reshape(*opts[int(rng.integers(0, len(opts)))])
        elif kind == "transpose":
            if len(a.shape) != 2:
                continue
            out = a.T
        else:  # broadcast a smaller value to a shape it fits
            if a.shape in ((4, 1), (6,)):
                out = a.broadcast_to((4, 6))
            elif a.shape == ():
                out = a.broadcast_to((2, 3))
            else:
                continue
        pool.append(out)
    created = pool[first:] or pool[:1]
    picks = {len(created) - 1} | {int(i) for i in rng.integers(0, len(created), size=2)}
    outs = [created[i].value for i in sorted(picks)]
    updates = {}
    for s in state:
        fits = [t for t in created if t.shape == s.shape]
        if fits and rng.random() < 0.8:
            # mix in the old value so the update reads its own state
            new = fits[int(rng.integers(0, len(fits)))]
            updates[s.value.name] = (new + s if rng.random() < 0.6 else new).value
    return b.build(outs, updates)


class _Given:
    """Fused for a graph that is not traced from Python."""

    def __init__(self, graph):
        self.unfused = graph
        self.graph, stages = PassManager([fuse_kernels]).run(graph)
        self.stage = stages[-1]


@pytest.mark.parametrize("chunk", range(5))
def test_random_graphs_fuse_without_cycles_to_the_same_values(chunk):
    for seed in range(chunk * 10, chunk * 10 + 10):
        g = random_graph(seed, with_state=seed % 2 == 1)
        verify(g)
        f = _Given(g)
        try:
            check_fused(f, seed)
        except AssertionError as e:
            raise AssertionError(f"seed {seed}:\n{print_graph(g)}\n{print_graph(f.graph)}") \
                from e
        # a kernel only reads values defined before it (the verifier checks SSA order)
        position = {n: i for i, n in enumerate(f.graph.nodes)}
        for n in f.graph.nodes:
            for v in n.inputs:
                assert v not in position or position[v] < position[n]
