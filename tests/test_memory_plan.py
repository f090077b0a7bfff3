"""Memory planning of fused graphs (passes/memory.py): every kernel result has a place; arena
buffers that are alive at the same time never share bytes; buffers are reused after their last
use; optimizer updates are written in place unless a later kernel still reads the old value (or
the kernel reads it at other positions); outputs go straight to the output slots; the plan's
text reports the predicted peak.
"""

from __future__ import annotations

import itertools

import pytest
from test_fuse import Fused, mlp_train_step, random_graph

import lamina as lm
from lamina import nn, optim
from lamina.backends.llvm.kernels import scratch_need
from lamina.ir import Node, parse
from lamina.passes.fuse import fuse_kernels
from lamina.passes.memory import ALIGN, plan_memory

T = lm.TensorType
F32 = "float32"


# --- an independent checker of a plan -----------------------------------------------------------


def last_uses(g, plan):
    """Position of the last kernel reading each value; values read after the step (outputs,
    copies into state) live to the end."""
    position = {n: i for i, n in enumerate(plan.schedule)}
    end = len(plan.schedule)
    last = {}
    for n in plan.schedule:
        for v in n.inputs:
            last[v] = max(last.get(v, -1), position[n])
    for v in g.outputs:
        last[v] = end
    for v, _ in plan.copies:
        last[v] = end
    return position, last


def check_plan(g, plan):
    """Every invariant a plan must keep, checked from the graph and the plan alone."""
    assert plan.schedule == list(g.nodes)
    position, last = last_uses(g, plan)
    state_index = {p.name: i for i, p in enumerate(g.state)}
    # every value has a location; parameters stay where the caller keeps them
    for i, p in enumerate(g.inputs):
        assert (plan.location[p].kind, plan.location[p].index) == ("input", i)
    for i, p in enumerate(g.state):
        assert (plan.location[p].kind, plan.location[p].index) == ("state", i)
    for n in g.nodes:
        loc = plan.location.get(n)
        assert loc is not None, f"no location for {n.op} @{n.attrs.get('name')}"
        assert loc.kind in ("arena", "output", "state", "literal")
        assert (loc.kind == "literal") == (n.op == "constant")
    # outputs: written into the output slots (the first output slot a value fills)
    for k, v in enumerate(g.outputs):
        if isinstance(v, Node) and v.op == "kernel":
            loc = plan.location[v]
            assert (loc.kind, loc.index) == ("output", g.outputs.index(v)), (k, loc)
    output_bytes = sum(v.type.nbytes for v in {id(v): v for v in g.outputs
                                              if plan.location.get(v) is not None
                                              and plan.location[v].kind == "output"}.values())
    assert plan.output_bytes == output_bytes
    # state: each update is unchanged, written in place, or copied at the end
    copied = {s for _, s in plan.copies}
    for name, v in g.updates.items():
        s = g.state[state_index[name]]
        if v is s:
            continue
        in_place = name in plan.in_place
        assert in_place != (name in copied), name
        if in_place:
            loc = plan.location[v]
            assert (loc.kind, loc.index) == ("state", state_index[name])
            # nobody reads the old value after it is overwritten
            late = [u for u in g.nodes if s in u.inputs and u is not v
                    and position[u] > position[v]]
            assert not late, f"%{name} is overwritten before {len(late)} later reader(s)"
    for n in g.nodes:
        loc = plan.location[n]
        if loc.kind == "state":
            name = g.state[loc.index].name
            assert g.updates[name] is n and name in plan.in_place
    # arena: inside the arena, aligned, and no two buffers alive together share a byte
    live = []  # (first position, last position, lo, hi, what)
    for n in g.nodes:
        loc = plan.location[n]
        if loc.kind == "arena":
            live.append((position[n], last.get(n, position[n]), loc.offset,
                         loc.offset + n.type.nbytes, f"{n.attrs.get('name', n.op)}"))
        if n in plan.scratch:
            sc = plan.scratch[n]
            assert sc.kind == "arena" and sc.nbytes > 0
            live.append((position[n], position[n], sc.offset, sc.offset + sc.nbytes,
                         f"scratch of {n.attrs['name']}"))
    for a0, a1, lo, hi, what in live:
        assert 0 <= lo and hi <= plan.arena_bytes, what
        assert lo % ALIGN == 0, what
    for i, (a0, a1, alo, ahi, awhat) in enumerate(live):
        for b0, b1, blo, bhi, bwhat in live[i + 1:]:
            if a0 <= b1 and b0 <= a1 and alo < bhi and blo < ahi:
                raise AssertionError(f"{awhat} [{alo}, {ahi}) alive over positions {a0}..{a1} "
                                     f"overlaps {bwhat} [{blo}, {bhi}) alive over {b0}..{b1}")
    assert plan.peak_bytes == plan.arena_bytes + plan.output_bytes
    assert f"predicted peak {plan.peak_bytes} bytes" in plan.text()
    return live


def fused_graph(fn, *types):
    return Fused(fn, *types).graph


def train_step(opt_factory, sizes=(32, 16, 4), batch=8):
    lm.random.seed(0)
    layers = [nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    params = [p for layer in layers for p in (layer.w, layer.b)]
    opt = opt_factory(params)

    def step(x, y):
        h = x
        for layer in layers[:-1]:
            h = lm.relu(layer(h))
        loss = nn.functional.cross_entropy(layers[-1](h), y)
        opt.minimize(loss)
        return loss

    return fused_graph(step, T((batch, sizes[0]), F32), T((batch,), "int64"))


def gemm_chain(x, w):
    h = x
    for _ in range(8):
        h = lm.tanh(h @ w)
    return h


GRAPHS = {
    "softmax": (lambda x: lm.softmax(x, axis=-1), (T((16, 32), F32),)),
    "two_outputs": (lambda x: (lm.exp(x) * 2, (lm.exp(x) + 1).sum(axis=1)), (T((4, 6), F32),)),
    "same_output_twice": (lambda x: (lm.tanh(x), lm.tanh(x)), (T((4, 6), F32),)),
    "gemm_chain": (gemm_chain, (T((32, 32), F32), T((32, 32), F32))),
    "cross_entropy_grad": (lambda z, y: lm.value_and_grad(nn.functional.cross_entropy)(z, y),
                           (T((16, 10), F32), T((16,), "int64"))),
}


# --- tests --------------------------------------------------------------------------------------


@pytest.mark.parametrize("need", [None, scratch_need], ids=["no_scratch", "llvm_scratch"])
@pytest.mark.parametrize("case", sorted(GRAPHS))
def test_plan_invariants(case, need):
    fn, types = GRAPHS[case]
    g = fused_graph(fn, *types)
    check_plan(g, plan_memory(g, need))


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_plan_invariants_train_steps(opt):
    factory = {"sgd": lambda ps: optim.SGD(ps, lr=0.1),
               "momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
               "adam": lambda ps: optim.Adam(ps, lr=0.01)}[opt]
    g = train_step(factory)
    check_plan(g, plan_memory(g, scratch_need))


def test_plan_invariants_random_graphs():
    for seed in range(40):
        g = fuse_kernels(random_graph(seed, with_state=seed % 2 == 1))
        for need in (None, scratch_need):
            try:
                check_plan(g, plan_memory(g, need))
            except AssertionError as e:
                raise AssertionError(f"seed {seed}: {e}") from e


def test_buffers_are_reused_along_a_chain():
    g = fused_graph(gemm_chain, T((32, 32), F32), T((32, 32), F32))
    kernels = [n for n in g.nodes if n.op == "kernel"]
    assert len(kernels) == 8
    plan = plan_memory(g, scratch_need)
    temporaries = [n for n in kernels if plan.location[n].kind == "arena"]
    assert len(temporaries) == 7
    total = sum(n.type.nbytes for n in temporaries)
    assert plan.arena_bytes < total
    assert plan.arena_bytes <= 2 * 32 * 32 * 4  # ping-pong between two buffers
    assert plan.location[kernels[-1]].kind == "output"
    assert plan.output_bytes == 32 * 32 * 4
    assert plan.peak_bytes == plan.arena_bytes + plan.output_bytes


def test_outputs_are_written_into_output_slots():
    g = fused_graph(lambda x: (lm.exp(x) * 2, (lm.exp(x) + 1).sum(axis=1)), T((4, 6), F32))
    plan = plan_memory(g)
    for k, v in enumerate(g.outputs):
        assert (plan.location[v].kind, plan.location[v].index) == ("output", k)
    assert plan.output_bytes == 4 * 6 * 4 + 4 * 4


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_optimizer_updates_are_in_place(opt):
    factory = {"sgd": lambda ps: optim.SGD(ps, lr=0.1),
               "momentum": lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9),
               "adam": lambda ps: optim.Adam(ps, lr=0.01)}[opt]
    g = train_step(factory)
    plan = plan_memory(g, scratch_need)
    updated = sorted(g.updates)
    params = {"w", "b", "w_1", "b_1"}
    assert params <= set(updated)
    slots = {"sgd": set(),
             "momentum": {"w.momentum", "b.momentum", "w.momentum_1", "b.momentum_1"},
             "adam": {f"{p}.adam_{m}{k}" for p in "wb" for m in "mv" for k in ("", "_1")}
             | {"adam.step"}}[opt]
    assert set(updated) == params | slots
    assert sorted(plan.in_place) == updated  # parameters and every optimizer slot
    assert plan.copies == []
    text = plan.text()
    for name in updated:
        assert f"in place: %{name} is updated where it lives" in text


def test_mlp_plan_of_the_issue():
    f = mlp_train_step()
    g = f.graph
    plan = plan_memory(g, scratch_need)
    check_plan(g, plan)
    assert sorted(plan.in_place) == sorted(["w", "b", "w_1", "b_1", "w_2", "b_2"])
    # the weight-gradient GEMMs write over the weights they read: they accumulate in scratch
    for w in ("w", "w_1", "w_2"):
        k = g.updates[w]
        assert k in plan.scratch and plan.scratch[k].nbytes == k.type.nbytes
    text = plan.text()
    assert text.startswith(f"# memory plan: arena {plan.arena_bytes} bytes, outputs 4 bytes, "
                           f"predicted peak {plan.peak_bytes} bytes")
    # the forward activations (64x512 floats) are the largest temporaries: a few of them
    assert plan.arena_bytes < 8 * 64 * 512 * 4 + 784 * 512 * 4


READ_AFTER_UPDATE = """graph @late(%x: f32[8]) state(%w: f32[8]) {
  %0 = mul(%w, %x) : f32[8]
  %1 = sum(%w) {axis=[0], keepdims=false} : f32[]
  update %w = %0
  return %1
}
"""

READ_BEFORE_UPDATE = """graph @early(%x: f32[8]) state(%w: f32[8]) {
  %0 = sum(%w) {axis=[0], keepdims=false} : f32[]
  %1 = mul(%w, %x) : f32[8]
  update %w = %1
  return %0
}
"""

TRANSPOSED_UPDATE = """graph @tr(%x: f32[]) state(%w: f32[4,4]) {
  %0 = mul(%w, %x) : f32[4,4]
  %1 = transpose(%0) {perm=[1, 0]} : f32[4,4]
  update %w = %1
  return %x
}
"""

SHIFTED_UPDATE = """graph @shift(%x: f32[], %i: i64[4]) state(%w: f32[4,3]) {
  %0 = mul(%w, %x) : f32[4,3]
  %1 = take(%0, %i) {axis=0} : f32[4,3]
  update %w = %1
  return %x
}
"""


def _kernel_writing(g, name):
    v = g.updates[name]
    assert v.op == "kernel"
    return v


def test_state_read_after_its_update_is_copied():
    g = fuse_kernels(parse(READ_AFTER_UPDATE))
    k = _kernel_writing(g, "w")
    position = {n: i for i, n in enumerate(g.nodes)}
    later = [n for n in g.nodes if g.state[0] in n.inputs and position[n] > position[k]]
    assert later, "the test needs a kernel that reads the old %w after the update"
    plan = plan_memory(g)
    check_plan(g, plan)
    assert plan.in_place == []
    assert plan.copies == [(k, "w")]
    assert plan.location[k].kind == "arena"
    assert "note: %w is not updated in place: 1 kernel(s) read the old value later" in \
        plan.text()
    assert "copy: %w <- @" in plan.text()


def test_state_read_before_its_update_is_in_place():
    g = fuse_kernels(parse(READ_BEFORE_UPDATE))
    plan = plan_memory(g)
    check_plan(g, plan)
    assert plan.in_place == ["w"] and plan.copies == []
    assert plan.arena_bytes == 0


@pytest.mark.parametrize("src", [TRANSPOSED_UPDATE, SHIFTED_UPDATE], ids=["transpose", "take"])
def test_state_read_at_other_positions_is_not_updated_in_place(src):
    """The kernel reads element (j, i) of %w (or row i[r]) to write element (i, j): writing in
    place would read values it already overwrote."""
    g = fuse_kernels(parse(src))
    (k,) = [n for n in g.nodes if n.op == "kernel"]
    assert g.updates["w"] is k  # one kernel reads and writes %w
    plan = plan_memory(g)
    check_plan(g, plan)
    assert plan.in_place == [], plan.text()
    assert plan.copies == [(k, "w")]


def test_update_that_is_also_an_output():
    src = """graph @both(%x: f32[8]) state(%w: f32[8]) {
  %0 = mul(%w, %x) : f32[8]
  update %w = %0
  return %0
}
"""
    g = fuse_kernels(parse(src))
    plan = plan_memory(g)
    check_plan(g, plan)
    (k,) = [n for n in g.nodes if n.op == "kernel"]
    assert (plan.location[k].kind, plan.location[k].index) == ("output", 0)
    assert plan.copies == [(k, "w")]


def test_plan_text_lists_every_kernel():
    g = fused_graph(lambda x: lm.softmax(lm.tanh(x) @ x, axis=-1), T((8, 8), F32))
    plan = plan_memory(g)
    text = plan.text()
    for n in g.nodes:
        if n.op == "kernel":
            assert f"@{n.attrs['name']}" in text
    assert "-> output[0]" in text
    assert f"arena {plan.arena_bytes} bytes" in text
