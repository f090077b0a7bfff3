"""Shared by the pass tests: run one pass on IR text, compare the printed result with the
expected text, and check that the reference interpreter agrees on both graphs."""

from __future__ import annotations

import textwrap

import numpy as np
from helpers import assert_close

from lamina.ir import (
    Graph,
    config,
    interpret,
    parse,
    print_graph,
)
from lamina.passes import (
    PassManager,
    eliminate_common_subexpressions,
    eliminate_dead_code,
)

cse = eliminate_common_subexpressions
dce = eliminate_dead_code



def norm(text: str) -> str:
    """Dedented, without leading/trailing blank lines, one final newline."""
    return textwrap.dedent(text).strip("\n") + "\n"


def draw(t, rng, positive=False, ints=3):
    d = t.dtype.np
    if t.dtype.is_float:
        if positive:
            return rng.uniform(0.5, 2.0, t.shape).astype(d)
        return rng.standard_normal(t.shape).astype(d)
    if t.dtype.is_int:
        return rng.integers(0, ints, t.shape).astype(d)
    return rng.random(t.shape) < 0.5


def random_args(g: Graph, seed=0, positive=False, ints=3):
    rng = np.random.default_rng(seed)
    inputs = [draw(p.type, rng, positive, ints) for p in g.inputs]
    state = {p.name: draw(p.type, rng, positive, ints) for p in g.state}
    return inputs, state


def assert_same_behaviour(before: Graph, after: Graph, exact: bool, positive=False, ints=3,
                          seeds=(0, 1)):
    """Same outputs and state updates for the same random inputs and state."""
    for seed in seeds:
        inputs, state = random_args(before, seed, positive, ints)
        out_b, up_b = interpret(before, inputs, state)
        out_a, up_a = interpret(after, inputs, state)
        pairs = list(zip(out_b, out_a))
        assert len(out_b) == len(out_a)
        assert up_b.keys() == up_a.keys()
        pairs += [(up_b[k], up_a[k]) for k in up_b]
        for want, got in pairs:
            assert got.dtype == want.dtype and got.shape == want.shape
            if exact:
                np.testing.assert_array_equal(got, want)
            else:
                assert_close(got, want)


def run_pass(pass_fn, before: str, expected: str, *, exact=True, positive=False, ints=3,
             remarks=None, checked=True):
    """Parse ``before`` (which must be canonical text), run the pass through a PassManager,
    compare the printed result with ``expected`` and the behaviour of both graphs.

    ``checked=False`` turns off the manager's verifier and round-trip check (for graphs with NaN
    constants: see test_ir_text.py::test_nan_constants_verify_and_round_trip).
    """
    before_text = norm(before)
    g = parse(before_text)
    assert print_graph(g) == before_text, "the before text is not canonical"
    with config.patch(verify=checked, check_roundtrip=checked):
        after, stages = PassManager([pass_fn]).run(g)
    assert print_graph(g) == before_text, "the pass changed its input graph"
    assert print_graph(after) == norm(expected)
    stage = stages[-1]
    if remarks is not None:
        assert stage.remarks == remarks
    assert stage.changed == (norm(before) != norm(expected))
    if not any(n.op == "grad" for n in g.nodes):
        assert_same_behaviour(g, after, exact, positive, ints)
    return g, after, stage


