"""Before/after tests for every pass, in the style of MLIR lit tests and TVM's relax transform
tests: the input graph is written as IR text, the pass runs, and the printed result must equal an
expected text exactly. Every such test also runs the reference interpreter on both graphs with
the same random inputs (and state) and checks that outputs and state updates agree: bit for bit
where the pass does not change arithmetic, within ``helpers.assert_close`` tolerances where it
does. Graphs with ``grad`` nodes have no reference semantics, so autodiff results are checked
against analytic gradients instead.

The second half tests the PassManager (stage names, change flags, remarks, timing, verifier
errors, printing and dumping) and the same machinery end to end through ``lm.compile``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import assert_close

import lamina as lm
from lamina.ir import (
    Graph,
    LaminaError,
    Node,
    VerifyError,
    config,
    interpret,
    parse,
    print_graph,
    verify,
)
from lamina.ir.errors import GradError
from lamina.passes import (
    DEFAULT,
    PassManager,
    decompose,
    differentiate,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_constants,
    simplify,
    simplify_rules,
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


# --- simplify ---------------------------------------------------------------------------------

# (rule that must fire, before, expected, exact arithmetic)
SIMPLIFY_CASES = {
    "reshape_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3]) {
          %0 = reshape(%x) {shape=[2, 3]} : f32[2,3]
          %1 = exp(%0) : f32[2,3]
          return %1
        }
    """, """
        graph @f(%x: f32[2,3]) {
          %0 = exp(%x) : f32[2,3]
          return %0
        }
    """, True),
    "broadcast_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3]) {
          %0 = broadcast(%x) {shape=[2, 3]} : f32[2,3]
          return %0
        }
    """, """
        graph @f(%x: f32[2,3]) {
          return %x
        }
    """, True),
    "cast_noop": ("no_op_shape", """
        graph @f(%x: i32[2,3]) {
          %0 = cast(%x) {dtype=i32} : i32[2,3]
          %1 = neg(%0) : i32[2,3]
          return %1
        }
    """, """
        graph @f(%x: i32[2,3]) {
          %0 = neg(%x) : i32[2,3]
          return %0
        }
    """, True),
    "slice_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3]) {
          %0 = slice(%x) {start=[0, 0], stop=[2, 3], step=[1, 1]} : f32[2,3]
          return %0
        }
    """, """
        graph @f(%x: f32[2,3]) {
          return %x
        }
    """, True),
    "pad_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3]) {
          %0 = pad(%x) {lo=[0, 0], hi=[0, 0], interior=[0, 0]} : f32[2,3]
          return %0
        }
    """, """
        graph @f(%x: f32[2,3]) {
          return %x
        }
    """, True),
    "sum_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3]) {
          %0 = sum(%x) {axis=[], keepdims=false} : f32[2,3]
          return %0
        }
    """, """
        graph @f(%x: f32[2,3]) {
          return %x
        }
    """, True),
    "transpose_noop": ("no_op_shape", """
        graph @f(%x: f32[2,3,4]) {
          %0 = transpose(%x) {perm=[0, 1, 2]} : f32[2,3,4]
          return %0
        }
    """, """
        graph @f(%x: f32[2,3,4]) {
          return %x
        }
    """, True),
    "reshape_of_reshape": ("reshape_of_reshape", """
        graph @f(%x: f32[2,3]) {
          %0 = reshape(%x) {shape=[6]} : f32[6]
          %1 = reshape(%0) {shape=[3, 2]} : f32[3,2]
          return %1
        }
    """, """
        graph @f(%x: f32[2,3]) {
          %0 = reshape(%x) {shape=[6]} : f32[6]
          %1 = reshape(%x) {shape=[3, 2]} : f32[3,2]
          return %1
        }
    """, True),
    "reshape_of_kept_sum": ("reshape_of_kept_sum", """
        graph @f(%x: f32[2,3,4]) {
          %0 = sum(%x) {axis=[0, 2], keepdims=true} : f32[1,3,1]
          %1 = reshape(%0) {shape=[3]} : f32[3]
          return %1
        }
    """, """
        graph @f(%x: f32[2,3,4]) {
          %0 = sum(%x) {axis=[0, 2], keepdims=true} : f32[1,3,1]
          %1 = sum(%x) {axis=[0, 2], keepdims=false} : f32[3]
          return %1
        }
    """, True),
    "transpose_of_transpose": ("transpose_of_transpose", """
        graph @f(%x: f32[2,3,4]) {
          %0 = transpose(%x) {perm=[1, 2, 0]} : f32[3,4,2]
          %1 = transpose(%0) {perm=[1, 0, 2]} : f32[4,3,2]
          return %1
        }
    """, """
        graph @f(%x: f32[2,3,4]) {
          %0 = transpose(%x) {perm=[1, 2, 0]} : f32[3,4,2]
          %1 = transpose(%x) {perm=[2, 1, 0]} : f32[4,3,2]
          return %1
        }
    """, True),
    # only -0.0 is an identity for float addition (x + 0.0 turns x = -0.0 into +0.0)
    "add_zero": ("add_zero", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=-0.0} : f32[]
          %1 = add(%x, %0) : f32[3]
          %2 = add(%0, %1) : f32[3]
          %3 = exp(%2) : f32[3]
          return %3
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=-0.0} : f32[]
          %1 = exp(%x) : f32[3]
          return %1
        }
    """, True),
    "add_zero_int": ("add_zero", """
        graph @f(%x: i64[2,2]) {
          %0 = constant() {value=0} : i64[2,2]
          %1 = add(%0, %x) : i64[2,2]
          return %1
        }
    """, """
        graph @f(%x: i64[2,2]) {
          %0 = constant() {value=0} : i64[2,2]
          return %x
        }
    """, True),
    "sub_zero": ("sub_zero", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[3]
          %1 = sub(%x, %0) : f32[3]
          return %1
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[3]
          return %x
        }
    """, True),
    "mul_one": ("mul_one", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = mul(%x, %0) : f32[3]
          %2 = mul(%0, %1) : f32[3]
          return %2
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          return %x
        }
    """, True),
    "mul_minus_one": ("mul_minus_one", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=-1.0} : f32[]
          %1 = mul(%x, %0) : f32[3]                                       # m.py:7
          %2 = mul(%0, %1) : f32[3]                                       # m.py:8
          return %2
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=-1.0} : f32[]
          %1 = neg(%x) : f32[3]                                           # m.py:7
          %2 = neg(%1) : f32[3]                                           # m.py:8
          return %x
        }
    """, True),  # the emitted neg(neg(x)) simplifies again, to x (DCE drops the dead negs)
    "div_one": ("div_one", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[3]
          %1 = div(%x, %0) : f32[3]
          return %1
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[3]
          return %x
        }
    """, True),
    "neg_neg": ("neg_neg", """
        graph @f(%x: f32[3]) {
          %0 = neg(%x) : f32[3]
          %1 = neg(%0) : f32[3]
          %2 = exp(%1) : f32[3]
          return %2
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = neg(%x) : f32[3]
          %1 = exp(%x) : f32[3]
          return %1
        }
    """, True),
    "pow_one_and_two": ("pow_constant", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = pow(%x, %0) : f32[3]
          %2 = constant() {value=2.0} : f32[]
          %3 = pow(%x, %2) : f32[3]
          return %1, %3
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = constant() {value=2.0} : f32[]
          %2 = mul(%x, %x) : f32[3]
          return %x, %2
        }
    """, False),
    "pow_half": ("pow_constant", """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.5} : f32[]
          %1 = pow(%x, %0) : f32[3]
          %2 = constant() {value=-0.5} : f32[3]
          %3 = pow(%x, %2) : f32[3]
          return %1, %3
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.5} : f32[]
          %1 = sqrt(%x) : f32[3]
          %2 = constant() {value=-0.5} : f32[3]
          %3 = rsqrt(%x) : f32[3]
          return %1, %3
        }
    """, False),
    "where_same": ("where_same", """
        graph @f(%c: bool[3], %x: f32[3]) {
          %0 = where(%c, %x, %x) : f32[3]
          %1 = exp(%0) : f32[3]
          return %1
        }
    """, """
        graph @f(%c: bool[3], %x: f32[3]) {
          %0 = exp(%x) : f32[3]
          return %0
        }
    """, True),
    "drop_identity": ("drop_identity", """
        graph @f(%x: f32[3]) {
          %0 = alias(%x) : f32[3]
          %1 = stop_gradient(%0) : f32[3]
          %2 = exp(%1) : f32[3]
          return %2
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          return %0
        }
    """, True),
}


@pytest.mark.parametrize("case", sorted(SIMPLIFY_CASES))
def test_simplify_rule_fires(case):
    rule, before, expected, exact = SIMPLIFY_CASES[case]
    _, _, stage = run_pass(simplify, before, expected, exact=exact, positive=True)
    # the rule under test fired (a rule's output may let another fire after it)
    assert any(r.startswith(f"{rule}: ") for r in stage.remarks), stage.remarks


def test_every_simplify_rule_has_a_test():
    rules = {r.__name__ for rs in simplify_rules.values() for r in rs} | {"drop_identity"}
    tested = {rule for rule, *_ in SIMPLIFY_CASES.values()}
    assert rules == tested


def test_simplify_remarks_count_each_rule():
    _, _, stage = run_pass(simplify, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = mul(%x, %0) : f32[3]
          %2 = mul(%0, %1) : f32[3]
          %3 = neg(%2) : f32[3]
          %4 = neg(%3) : f32[3]
          return %4
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = neg(%x) : f32[3]
          return %x
        }
    """)
    assert stage.remarks == ["mul_one: 2", "neg_neg: 1"]


# Each graph must come out of simplify unchanged.
SIMPLIFY_MUST_NOT_FIRE = {
    # x + 0 where the zero broadcasts x to a bigger shape: the result is not x
    "add_zero_broadcasting": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[2,3]
          %1 = add(%x, %0) : f32[2,3]
          %2 = add(%0, %x) : f32[2,3]
          return %1, %2
        }
    """,
    # x + 0.0 is not x when x = -0.0
    "add_positive_zero_float": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[]
          %1 = add(%x, %0) : f32[3]
          return %1
        }
    """,
    "add_nonzero": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1e-30} : f32[]
          %1 = add(%x, %0) : f32[3]
          return %1
        }
    """,
    "zero_minus_x": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[]
          %1 = sub(%0, %x) : f32[3]
          return %1
        }
    """,
    "mul_one_broadcasting": """
        graph @f(%x: f32[1,3]) {
          %0 = constant() {value=1.0} : f32[4,1]
          %1 = mul(%x, %0) : f32[4,3]
          return %1
        }
    """,
    "mul_minus_one_broadcasting": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=-1.0} : f32[2,3]
          %1 = mul(%0, %x) : f32[2,3]
          return %1
        }
    """,
    "mul_zero": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=0.0} : f32[]
          %1 = mul(%x, %0) : f32[3]
          return %1
        }
    """,
    "one_over_x": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = div(%0, %x) : f32[3]
          return %1
        }
    """,
    "pow_three_and_pow_broadcasting": """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=3.0} : f32[]
          %1 = pow(%x, %0) : f32[3]
          %2 = constant() {value=2.0} : f32[2,3]
          %3 = pow(%x, %2) : f32[2,3]
          return %1, %3
        }
    """,
    "where_different_or_broadcasting": """
        graph @f(%c: bool[2,3], %x: f32[3], %y: f32[2,3]) {
          %0 = where(%c, %x, %y) : f32[2,3]
          %1 = where(%c, %x, %x) : f32[2,3]
          return %0, %1
        }
    """,
    "shape_ops_that_do_something": """
        graph @f(%x: f32[2,3], %b: bool[2,3]) {
          %0 = reshape(%x) {shape=[3, 2]} : f32[3,2]
          %1 = broadcast(%x) {shape=[4, 2, 3]} : f32[4,2,3]
          %2 = cast(%x) {dtype=f64} : f64[2,3]
          %3 = slice(%x) {start=[0, 0], stop=[2, 3], step=[1, 2]} : f32[2,2]
          %4 = pad(%x) {lo=[0, 0], hi=[0, 1], interior=[0, 0]} : f32[2,4]
          %5 = sum(%b) {axis=[], keepdims=false} : i64[2,3]
          %6 = transpose(%x) {perm=[1, 0]} : f32[3,2]
          %7 = sum(%x) {axis=[1], keepdims=true} : f32[2,1]
          %8 = reshape(%7) {shape=[1, 2]} : f32[1,2]
          %9 = sum(%x) {axis=[1], keepdims=false} : f32[2]
          %10 = reshape(%9) {shape=[2, 1]} : f32[2,1]
          return %0, %1, %2, %3, %4, %5, %6, %8, %10
        }
    """,
    "single_neg": """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = neg(%0) : f32[3]
          return %1
        }
    """,
    "non_splat_constants": """
        graph @f(%x: f32[2]) {
          %0 = constant() {value=[0.0, 1.0]} : f32[2]
          %1 = add(%x, %0) : f32[2]
          %2 = constant() {value=[1.0, 2.0]} : f32[2]
          %3 = mul(%x, %2) : f32[2]
          return %1, %3
        }
    """,
}


@pytest.mark.parametrize("case", sorted(SIMPLIFY_MUST_NOT_FIRE))
def test_simplify_rule_does_not_fire(case):
    text = SIMPLIFY_MUST_NOT_FIRE[case]
    g, after, stage = run_pass(simplify, text, text, remarks=[])
    assert stage.changed is False
    assert [n for n in after.nodes] == [n for n in g.nodes]  # the very same node objects


GRAD_WITH_ALIAS = """
    graph @f(%x: f32[3]) {
      %0 = alias(%x) : f32[3]
      %1 = stop_gradient(%x) : f32[3]
      %2 = mul(%0, %1) : f32[3]
      %3 = constant() {value=1.0} : f32[]
      %4 = mul(%2, %3) : f32[3]
      %5 = sum(%4) {axis=[0], keepdims=false} : f32[]
      %6 = grad(%5, %0) : f32[3]
      return %6
    }
"""


def test_simplify_keeps_alias_and_stop_gradient_while_a_grad_node_remains():
    _, after, stage = run_pass(simplify, GRAD_WITH_ALIAS, """
        graph @f(%x: f32[3]) {
          %0 = alias(%x) : f32[3]
          %1 = stop_gradient(%x) : f32[3]
          %2 = mul(%0, %1) : f32[3]
          %3 = constant() {value=1.0} : f32[]
          %4 = sum(%2) {axis=[0], keepdims=false} : f32[]
          %5 = grad(%4, %0) : f32[3]
          return %5
        }
    """)
    assert stage.remarks == ["mul_one: 1"]
    # After autodiff, the identities go.
    _, final, _ = run_pass(simplify, print_graph(differentiate(after)), """
        graph @f(%x: f32[3]) {
          %0 = mul(%x, %x) : f32[3]
          %1 = constant() {value=1.0} : f32[]
          %2 = sum(%0) {axis=[0], keepdims=false} : f32[]
          %3 = constant() {value=1.0} : f32[]
          %4 = reshape(%3) {shape=[1]} : f32[1]
          %5 = broadcast(%4) {shape=[3]} : f32[3]
          %6 = mul(%5, %x) : f32[3]
          %7 = mul(%5, %x) : f32[3]
          return %6
        }
    """)
    x = np.array([1.0, -2.0, 3.5], np.float32)
    np.testing.assert_array_equal(interpret(final, [x])[0][0], x)  # d/dx (x * sg(x)) = x


# --- fold_constants ---------------------------------------------------------------------------


def test_fold_splat_elementwise_chain():
    run_pass(fold_constants, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=2.0} : f32[3]
          %1 = constant() {value=3.0} : f32[]
          %2 = mul(%0, %1) : f32[3]
          %3 = neg(%2) : f32[3]
          %4 = add(%x, %3) : f32[3]
          return %4
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = constant() {value=2.0} : f32[3]
          %1 = constant() {value=3.0} : f32[]
          %2 = constant() {value=6.0} : f32[3]
          %3 = constant() {value=-6.0} : f32[3]
          %4 = add(%x, %3) : f32[3]
          return %4
        }
    """, remarks=["folded 1 mul node(s) into constants", "folded 1 neg node(s) into constants"])


UNARY_OPS = ["abs", "erf", "exp", "log", "neg", "relu", "rsqrt", "sigmoid", "sign", "softplus",
             "sqrt", "tanh"]


@pytest.mark.parametrize("op", UNARY_OPS)
def test_fold_splat_unary_math(op):
    before = f"""
        graph @f() {{
          %0 = constant() {{value=0.75}} : f32[2,2]
          %1 = {op}(%0) : f32[2,2]
          return %1
        }}
    """
    # The folded value is what the interpreter computes for the whole array, as printed.
    want = interpret(parse(norm(before)), [])[0][0]
    assert (want == want.flat[0]).all()
    shown = repr(float(str(want.flat[0])))
    run_pass(fold_constants, before, f"""
        graph @f() {{
          %0 = constant() {{value=0.75}} : f32[2,2]
          %1 = constant() {{value={shown}}} : f32[2,2]
          return %1
        }}
    """, remarks=[f"folded 1 {op} node(s) into constants"])


def test_fold_splat_comparison_cast_where_and_ints():
    run_pass(fold_constants, """
        graph @f() {
          %0 = constant() {value=1.0} : f32[3]
          %1 = constant() {value=2.7} : f32[]
          %2 = lt(%0, %1) : bool[3]
          %3 = cast(%1) {dtype=i32} : i32[]
          %4 = where(%2, %0, %1) : f32[3]
          %5 = constant() {value=7} : i64[2]
          %6 = constant() {value=-3} : i64[]
          %7 = mul(%5, %6) : i64[2]
          %8 = logical_not(%2) : bool[3]
          return %2, %3, %4, %7, %8
        }
    """, """
        graph @f() {
          %0 = constant() {value=1.0} : f32[3]
          %1 = constant() {value=2.7} : f32[]
          %2 = constant() {value=true} : bool[3]
          %3 = constant() {value=2} : i32[]
          %4 = constant() {value=1.0} : f32[3]
          %5 = constant() {value=7} : i64[2]
          %6 = constant() {value=-3} : i64[]
          %7 = constant() {value=-21} : i64[2]
          %8 = constant() {value=false} : bool[3]
          return %2, %3, %4, %7, %8
        }
    """)


def test_fold_shape_ops_on_splats_of_any_size():
    run_pass(fold_constants, """
        graph @f() {
          %0 = constant() {value=1.5} : f32[100,100]
          %1 = reshape(%0) {shape=[10000]} : f32[10000]
          %2 = transpose(%0) {perm=[1, 0]} : f32[100,100]
          %3 = broadcast(%0) {shape=[3, 100, 100]} : f32[3,100,100]
          %4 = slice(%0) {start=[0, 10], stop=[100, 20], step=[3, 1]} : f32[34,10]
          return %1, %2, %3, %4
        }
    """, """
        graph @f() {
          %0 = constant() {value=1.5} : f32[100,100]
          %1 = constant() {value=1.5} : f32[10000]
          %2 = constant() {value=1.5} : f32[100,100]
          %3 = constant() {value=1.5} : f32[3,100,100]
          %4 = constant() {value=1.5} : f32[34,10]
          return %1, %2, %3, %4
        }
    """, remarks=["folded 1 broadcast node(s) into constants",
                  "folded 1 reshape node(s) into constants",
                  "folded 1 slice node(s) into constants",
                  "folded 1 transpose node(s) into constants"])


def test_fold_small_non_splat_results_become_literals():
    run_pass(fold_constants, """
        graph @f() {
          %0 = constant() {value=[1.0, 2.0]} : f32[2]
          %1 = constant() {value=[[3.0], [4.0]]} : f32[2,1]
          %2 = add(%0, %1) : f32[2,2]
          %3 = transpose(%1) {perm=[1, 0]} : f32[1,2]
          %4 = matmul(%1, %3) : f32[2,2]
          %5 = constant() {value=0.5} : f32[2]
          %6 = pad(%5) {lo=[1], hi=[0], interior=[1]} : f32[4]
          %7 = constant() {value=[[1.0, 2.0], [2.0, 1.0]]} : f32[2,2]
          %8 = sum(%7) {axis=[1], keepdims=false} : f32[2]
          return %2, %4, %6, %8
        }
    """, """
        graph @f() {
          %0 = constant() {value=[1.0, 2.0]} : f32[2]
          %1 = constant() {value=[[3.0], [4.0]]} : f32[2,1]
          %2 = constant() {value=[[4.0, 5.0], [5.0, 6.0]]} : f32[2,2]
          %3 = constant() {value=[[3.0, 4.0]]} : f32[1,2]
          %4 = constant() {value=[[9.0, 12.0], [12.0, 16.0]]} : f32[2,2]
          %5 = constant() {value=0.5} : f32[2]
          %6 = constant() {value=[0.0, 0.5, 0.0, 0.5]} : f32[4]
          %7 = constant() {value=[[1.0, 2.0], [2.0, 1.0]]} : f32[2,2]
          %8 = constant() {value=3.0} : f32[2]
          return %2, %4, %6, %8
        }
    """)


def test_fold_leaves_big_results_and_big_inputs_alone():
    values = ", ".join(f"{float(i)}" for i in range(20))
    text = f"""
        graph @f() {{
          %0 = constant() {{value=[{values}]}} : f32[20]
          %1 = constant() {{value=1.0}} : f32[20]
          %2 = add(%0, %1) : f32[20]
          %3 = constant() {{value=1.0}} : f32[100,50]
          %4 = sum(%3) {{axis=[1], keepdims=false}} : f32[100]
          return %2, %4
        }}
    """
    run_pass(fold_constants, text, text, remarks=[])


def test_fold_never_folds_random_or_source_ops():
    text = """
        graph @f() {
          %0 = constant() {value=7} : i64[]
          %1 = random_uniform(%0) {stream=0} : f32[3]
          %2 = random_normal(%0) {stream=1} : f32[3]
          %3 = constant() {value=2.0} : f32[]
          %4 = mul(%1, %3) : f32[3]
          %5 = iota() {axis=0} : f32[3]
          return %2, %4, %5
        }
    """
    run_pass(fold_constants, text, text, remarks=[])


def test_fold_splat_nan():
    run_pass(fold_constants, """
        graph @f() {
          %0 = constant() {value=nan} : f32[3]
          %1 = constant() {value=1.0} : f32[]
          %2 = add(%0, %1) : f32[3]
          return %2
        }
    """, """
        graph @f() {
          %0 = constant() {value=nan} : f32[3]
          %1 = constant() {value=1.0} : f32[]
          %2 = constant() {value=nan} : f32[3]
          return %2
        }
    """, checked=False)


def test_fold_keeps_the_sign_of_zeros():
    # [1, -1] * 0 is [0.0, -0.0], not a splat 0.0: 1 / it is [inf, -inf].
    run_pass(fold_constants, """
        graph @f() {
          %0 = constant() {value=[1.0, -1.0]} : f32[2]
          %1 = constant() {value=0.0} : f32[2]
          %2 = mul(%0, %1) : f32[2]
          %3 = constant() {value=1.0} : f32[2]
          %4 = div(%3, %2) : f32[2]
          return %4
        }
    """, """
        graph @f() {
          %0 = constant() {value=[1.0, -1.0]} : f32[2]
          %1 = constant() {value=0.0} : f32[2]
          %2 = constant() {value=[0.0, -0.0]} : f32[2]
          %3 = constant() {value=1.0} : f32[2]
          %4 = constant() {value=[inf, -inf]} : f32[2]
          return %4
        }
    """)


# --- cse --------------------------------------------------------------------------------------


def test_cse_merges_duplicates_transitively():
    run_pass(cse, """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]                                           # m.py:1
          %1 = exp(%x) : f32[3]                                           # m.py:2
          %2 = constant() {value=1.0} : f32[]
          %3 = constant() {value=1.0} : f32[]
          %4 = add(%0, %2) : f32[3]
          %5 = add(%1, %3) : f32[3]
          %6 = mul(%4, %5) : f32[3]
          return %6, %5
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]                                           # m.py:1
          %1 = constant() {value=1.0} : f32[]
          %2 = add(%0, %1) : f32[3]
          %3 = mul(%2, %2) : f32[3]
          return %3, %2
        }
    """, remarks=["merged 1 duplicate add node(s)", "merged 1 duplicate constant node(s)",
                  "merged 1 duplicate exp node(s)"])


def test_cse_merges_equal_random_draws_only():
    run_pass(cse, """
        graph @f(%k: i64[]) {
          %0 = random_uniform(%k) {stream=0} : f32[3]
          %1 = random_uniform(%k) {stream=0} : f32[3]
          %2 = random_uniform(%k) {stream=1} : f32[3]
          %3 = random_normal(%k) {stream=0} : f32[3]
          %4 = random_uniform(%k) {stream=0} : f32[4]
          return %0, %1, %2, %3, %4
        }
    """, """
        graph @f(%k: i64[]) {
          %0 = random_uniform(%k) {stream=0} : f32[3]
          %1 = random_uniform(%k) {stream=1} : f32[3]
          %2 = random_normal(%k) {stream=0} : f32[3]
          %3 = random_uniform(%k) {stream=0} : f32[4]
          return %0, %0, %1, %2, %3
        }
    """, remarks=["merged 1 duplicate random_uniform node(s)"])


def test_cse_does_not_merge_different_attrs_or_types():
    text = """
        graph @f(%x: f32[2,3], %i: i64[2,3]) {
          %0 = sum(%x) {axis=[0], keepdims=false} : f32[3]
          %1 = sum(%x) {axis=[1], keepdims=false} : f32[2]
          %2 = sum(%x) {axis=[0], keepdims=true} : f32[1,3]
          %3 = constant() {value=1.0} : f32[]
          %4 = constant() {value=2.0} : f32[]
          %5 = constant() {value=1.0} : f32[3]
          %6 = constant() {value=1.0} : f64[]
          %7 = constant() {value=1} : i64[]
          %8 = constant() {value=true} : bool[]
          %9 = cast(%i) {dtype=f32} : f32[2,3]
          %10 = cast(%i) {dtype=f64} : f64[2,3]
          %11 = add(%x, %9) : f32[2,3]
          %12 = gelu(%x) {approximate="tanh"} : f32[2,3]
          %13 = gelu(%x) {approximate="none"} : f32[2,3]
          return %0, %1, %2, %3, %4, %5, %6, %7, %8, %10, %11, %12, %13
        }
    """
    run_pass(cse, text, text, remarks=[])


def test_cse_merges_nan_constants():
    run_pass(cse, """
        graph @f(%x: f32[2]) {
          %0 = constant() {value=nan} : f32[]
          %1 = constant() {value=nan} : f32[]
          %2 = constant() {value=[nan, 1.0]} : f32[2]
          %3 = constant() {value=[nan, 1.0]} : f32[2]
          %4 = add(%x, %0) : f32[2]
          %5 = add(%x, %1) : f32[2]
          return %4, %5, %2, %3
        }
    """, """
        graph @f(%x: f32[2]) {
          %0 = constant() {value=nan} : f32[]
          %1 = constant() {value=[nan, 1.0]} : f32[2]
          %2 = add(%x, %0) : f32[2]
          return %2, %2, %1, %1
        }
    """, remarks=["merged 1 duplicate add node(s)", "merged 2 duplicate constant node(s)"],
        checked=False)


def test_cse_does_not_merge_zero_and_negative_zero():
    text = """
        graph @f(%x: f32[2]) {
          %0 = constant() {value=0.0} : f32[]
          %1 = constant() {value=-0.0} : f32[]
          %2 = div(%x, %0) : f32[2]
          %3 = div(%x, %1) : f32[2]
          return %2, %3
        }
    """
    run_pass(cse, text, text, remarks=[])


# --- dce --------------------------------------------------------------------------------------


def test_dce_removes_dead_nodes_and_keeps_the_state_cone():
    run_pass(dce, """
        graph @f(%x: f32[3]) state(%w: f32[3], %n: f32[]) {
          %0 = exp(%x) : f32[3]
          %1 = log(%x) : f32[3]
          %2 = tanh(%1) : f32[3]
          %3 = mul(%x, %w) : f32[3]
          %4 = sum(%3) {axis=[0], keepdims=false} : f32[]
          %5 = add(%n, %4) : f32[]
          %6 = constant() {value=1.0} : f32[]
          update %n = %5
          return %0
        }
    """, """
        graph @f(%x: f32[3]) state(%w: f32[3], %n: f32[]) {
          %0 = exp(%x) : f32[3]
          %1 = mul(%x, %w) : f32[3]
          %2 = sum(%1) {axis=[0], keepdims=false} : f32[]
          %3 = add(%n, %2) : f32[]
          update %n = %3
          return %0
        }
    """, remarks=["removed 3 dead node(s): constant, log, tanh"])


def test_dce_with_nothing_dead_returns_the_same_graph():
    text = """
        graph @f(%x: f32[3]) state(%w: f32[3]) {
          %0 = mul(%x, %w) : f32[3]
          %1 = exp(%0) : f32[3]
          update %w = %1
          return %x
        }
    """
    g = parse(norm(text))
    assert dce(g) is g
    run_pass(dce, text, text, remarks=[])


def test_dce_empties_a_graph_without_roots():
    run_pass(dce, """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = log(%0) : f32[3]
          return
        }
    """, """
        graph @f(%x: f32[3]) {
          return
        }
    """, remarks=["removed 2 dead node(s): exp, log"])


# --- decompose --------------------------------------------------------------------------------


def test_decompose_gelu_tanh():
    run_pass(decompose, """
        graph @f(%x: f32[4]) {
          %0 = gelu(%x) {approximate="tanh"} : f32[4]                     # m.py:2
          return %0
        }
    """, """
        graph @f(%x: f32[4]) {
          %0 = constant() {value=0.5} : f32[]                             # m.py:2
          %1 = mul(%0, %x) : f32[4]                                       # m.py:2
          %2 = mul(%x, %x) : f32[4]                                       # m.py:2
          %3 = mul(%2, %x) : f32[4]                                       # m.py:2
          %4 = constant() {value=0.044715} : f32[]                        # m.py:2
          %5 = mul(%4, %3) : f32[4]                                       # m.py:2
          %6 = add(%x, %5) : f32[4]                                       # m.py:2
          %7 = constant() {value=0.7978846} : f32[]                       # m.py:2
          %8 = mul(%7, %6) : f32[4]                                       # m.py:2
          %9 = tanh(%8) : f32[4]                                          # m.py:2
          %10 = constant() {value=1.0} : f32[]                            # m.py:2
          %11 = add(%10, %9) : f32[4]                                     # m.py:2
          %12 = mul(%1, %11) : f32[4]                                     # m.py:2
          return %12
        }
    """, exact=False, remarks=["expanded 1 gelu"])


def test_decompose_gelu_exact_in_f64():
    run_pass(decompose, """
        graph @f(%x: f64[4]) {
          %0 = gelu(%x) {approximate="none"} : f64[4]                     # m.py:2
          return %0
        }
    """, """
        graph @f(%x: f64[4]) {
          %0 = constant() {value=0.5} : f64[]                             # m.py:2
          %1 = mul(%0, %x) : f64[4]                                       # m.py:2
          %2 = constant() {value=0.7071067811865475} : f64[]              # m.py:2
          %3 = mul(%x, %2) : f64[4]                                       # m.py:2
          %4 = erf(%3) : f64[4]                                           # m.py:2
          %5 = constant() {value=1.0} : f64[]                             # m.py:2
          %6 = add(%5, %4) : f64[4]                                       # m.py:2
          %7 = mul(%1, %6) : f64[4]                                       # m.py:2
          return %7
        }
    """, exact=False, remarks=["expanded 1 gelu"])


def test_decompose_softmax_and_log_softmax():
    run_pass(decompose, """
        graph @f(%x: f32[2,3]) {
          %0 = softmax(%x) {axis=1} : f32[2,3]                            # m.py:3
          %1 = log_softmax(%x) {axis=0} : f32[2,3]                        # m.py:4
          return %0, %1
        }
    """, """
        graph @f(%x: f32[2,3]) {
          %0 = max(%x) {axis=[1], keepdims=true} : f32[2,1]               # m.py:3
          %1 = stop_gradient(%0) : f32[2,1]                               # m.py:3
          %2 = sub(%x, %1) : f32[2,3]                                     # m.py:3
          %3 = exp(%2) : f32[2,3]                                         # m.py:3
          %4 = sum(%3) {axis=[1], keepdims=true} : f32[2,1]               # m.py:3
          %5 = div(%3, %4) : f32[2,3]                                     # m.py:3
          %6 = max(%x) {axis=[0], keepdims=true} : f32[1,3]               # m.py:4
          %7 = stop_gradient(%6) : f32[1,3]                               # m.py:4
          %8 = sub(%x, %7) : f32[2,3]                                     # m.py:4
          %9 = exp(%8) : f32[2,3]                                         # m.py:4
          %10 = sum(%9) {axis=[0], keepdims=true} : f32[1,3]              # m.py:4
          %11 = log(%10) : f32[1,3]                                       # m.py:4
          %12 = sub(%8, %11) : f32[2,3]                                   # m.py:4
          return %5, %12
        }
    """, exact=False, remarks=["expanded 1 log_softmax", "expanded 1 softmax"])


def test_decompose_mean_and_one_hot():
    run_pass(decompose, """
        graph @f(%x: f32[2,3], %l: i32[2]) {
          %0 = mean(%x) {axis=[1], keepdims=false} : f32[2]
          %1 = mean(%l) {axis=[0], keepdims=true} : f32[1]
          %2 = one_hot(%l) {num_classes=3, dtype=f32} : f32[2,3]
          return %0, %1, %2
        }
    """, """
        graph @f(%x: f32[2,3], %l: i32[2]) {
          %0 = sum(%x) {axis=[1], keepdims=false} : f32[2]
          %1 = constant() {value=0.33333334} : f32[]
          %2 = mul(%0, %1) : f32[2]
          %3 = cast(%l) {dtype=f32} : f32[2]
          %4 = sum(%3) {axis=[0], keepdims=true} : f32[1]
          %5 = constant() {value=0.5} : f32[]
          %6 = mul(%4, %5) : f32[1]
          %7 = iota() {axis=1} : i32[2,3]
          %8 = reshape(%l) {shape=[2, 1]} : i32[2,1]
          %9 = eq(%8, %7) : bool[2,3]
          %10 = cast(%9) {dtype=f32} : f32[2,3]
          return %2, %6, %10
        }
    """, exact=False, remarks=["expanded 2 mean", "expanded 1 one_hot"])


def test_decompose_leaves_primitives_alone():
    text = """
        graph @f(%x: f32[2,3]) {
          %0 = exp(%x) : f32[2,3]
          %1 = sum(%0) {axis=[1], keepdims=false} : f32[2]
          return %1
        }
    """
    g = parse(norm(text))
    assert decompose(g) is g
    run_pass(decompose, text, text, remarks=[])


# --- autodiff ---------------------------------------------------------------------------------


def autodiff(before: str, expected: str, remarks=None) -> Graph:
    _, after, _ = run_pass(differentiate, before, expected, remarks=remarks)
    verify(after, allow_grad=False)
    return after


def test_autodiff_simple_chain():
    g = autodiff("""
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]                                           # m.py:2
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[]                 # m.py:3
          %2 = grad(%1, %x) : f32[3]                                      # m.py:4
          return %2
        }
    """, """
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]                                           # m.py:2
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[]                 # m.py:3
          %2 = constant() {value=1.0} : f32[]                             # m.py:4
          %3 = reshape(%2) {shape=[1]} : f32[1]                           # m.py:3 (grad)
          %4 = broadcast(%3) {shape=[3]} : f32[3]                         # m.py:3 (grad)
          %5 = mul(%4, %0) : f32[3]                                       # m.py:2 (grad)
          return %5
        }
    """, remarks=["backward of sum at m.py:3 for 1 value(s): 3 node(s) from 2 op kind(s)"])
    x = np.array([0.5, -1.0, 2.0], np.float32)
    assert_close(interpret(g, [x])[0][0], np.exp(x))


def test_autodiff_grads_of_one_loss_share_one_sweep_and_unused_wrt_is_zero():
    g = autodiff("""
        graph @f(%x: f32[3], %y: f32[3], %z: f32[3]) {
          %0 = mul(%x, %y) : f32[3]
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[]
          %2 = grad(%1, %x) : f32[3]
          %3 = grad(%1, %y) : f32[3]
          %4 = grad(%1, %z) : f32[3]
          return %1, %2, %3, %4
        }
    """, """
        graph @f(%x: f32[3], %y: f32[3], %z: f32[3]) {
          %0 = mul(%x, %y) : f32[3]
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[]
          %2 = constant() {value=1.0} : f32[]
          %3 = reshape(%2) {shape=[1]} : f32[1]
          %4 = broadcast(%3) {shape=[3]} : f32[3]
          %5 = mul(%4, %y) : f32[3]
          %6 = mul(%4, %x) : f32[3]
          %7 = constant() {value=0.0} : f32[3]
          return %1, %5, %6, %7
        }
    """, remarks=["gradient with respect to %z is zero: the loss does not depend on it",
                  "backward of sum for 3 value(s): 4 node(s) from 2 op kind(s)"])
    x, y, z = (np.array(v, np.float32) for v in ([1, 2, 3], [4, -5, 6], [7, 8, 9]))
    loss, gx, gy, gz = interpret(g, [x, y, z])[0]
    assert loss == np.float32(np.dot(x, y))
    np.testing.assert_array_equal(gx, y)
    np.testing.assert_array_equal(gy, x)
    np.testing.assert_array_equal(gz, np.zeros(3, np.float32))


def test_autodiff_broadcasting_gradients_are_summed_back_to_shape():
    g = autodiff("""
        graph @f(%x: f32[3], %y: f32[2,3], %s: f32[2,1]) {
          %0 = add(%x, %y) : f32[2,3]
          %1 = mul(%0, %s) : f32[2,3]
          %2 = sum(%1) {axis=[0, 1], keepdims=false} : f32[]
          %3 = grad(%2, %x) : f32[3]
          %4 = grad(%2, %s) : f32[2,1]
          return %3, %4
        }
    """, """
        graph @f(%x: f32[3], %y: f32[2,3], %s: f32[2,1]) {
          %0 = add(%x, %y) : f32[2,3]
          %1 = mul(%0, %s) : f32[2,3]
          %2 = sum(%1) {axis=[0, 1], keepdims=false} : f32[]
          %3 = constant() {value=1.0} : f32[]
          %4 = reshape(%3) {shape=[1, 1]} : f32[1,1]
          %5 = broadcast(%4) {shape=[2, 3]} : f32[2,3]
          %6 = mul(%5, %s) : f32[2,3]
          %7 = mul(%5, %0) : f32[2,3]
          %8 = sum(%7) {axis=[1], keepdims=true} : f32[2,1]
          %9 = sum(%6) {axis=[0], keepdims=true} : f32[1,3]
          %10 = reshape(%9) {shape=[3]} : f32[3]
          return %10, %8
        }
    """)
    rng = np.random.default_rng(3)
    x, y, s = (rng.standard_normal(shape).astype(np.float32) for shape in [(3,), (2, 3), (2, 1)])
    gx, gs = interpret(g, [x, y, s])[0]
    assert_close(gx, np.broadcast_to(s, (2, 3)).sum(axis=0))
    assert_close(gs, (x + y).sum(axis=1, keepdims=True))


def test_autodiff_nested_grad():
    g = autodiff("""
        graph @f(%x: f32[]) {
          %0 = mul(%x, %x) : f32[]                                        # m.py:2
          %1 = mul(%0, %x) : f32[]                                        # m.py:3
          %2 = grad(%1, %x) : f32[]                                       # m.py:4
          %3 = grad(%2, %x) : f32[]                                       # m.py:5
          return %2, %3
        }
    """, """
        graph @f(%x: f32[]) {
          %0 = mul(%x, %x) : f32[]                                        # m.py:2
          %1 = mul(%0, %x) : f32[]                                        # m.py:3
          %2 = constant() {value=1.0} : f32[]                             # m.py:4
          %3 = mul(%2, %x) : f32[]                                        # m.py:3 (grad)
          %4 = mul(%2, %0) : f32[]                                        # m.py:3 (grad)
          %5 = mul(%3, %x) : f32[]                                        # m.py:2 (grad)
          %6 = mul(%3, %x) : f32[]                                        # m.py:2 (grad)
          %7 = add(%4, %5) : f32[]                                        # m.py:2 (grad)
          %8 = add(%7, %6) : f32[]                                        # m.py:2 (grad)
          %9 = constant() {value=1.0} : f32[]                             # m.py:5
          %10 = mul(%9, %x) : f32[]                                       # m.py:2 (grad)
          %11 = mul(%9, %3) : f32[]                                       # m.py:2 (grad)
          %12 = mul(%9, %x) : f32[]                                       # m.py:2 (grad)
          %13 = mul(%9, %3) : f32[]                                       # m.py:2 (grad)
          %14 = add(%10, %12) : f32[]                                     # m.py:2 (grad)
          %15 = add(%11, %13) : f32[]                                     # m.py:2 (grad)
          %16 = mul(%9, %0) : f32[]                                       # m.py:3 (grad)
          %17 = mul(%9, %2) : f32[]                                       # m.py:3 (grad)
          %18 = mul(%14, %x) : f32[]                                      # m.py:3 (grad)
          %19 = mul(%14, %2) : f32[]                                      # m.py:3 (grad)
          %20 = add(%15, %19) : f32[]                                     # m.py:3 (grad)
          %21 = mul(%17, %x) : f32[]                                      # m.py:2 (grad)
          %22 = mul(%17, %x) : f32[]                                      # m.py:2 (grad)
          %23 = add(%20, %21) : f32[]                                     # m.py:2 (grad)
          %24 = add(%23, %22) : f32[]                                     # m.py:2 (grad)
          return %8, %24
        }
    """)
    for v in (2.0, -0.5):
        d1, d2 = interpret(g, [np.float32(v)])[0]
        assert_close(d1, np.float32(3 * v * v))
        assert_close(d2, np.float32(6 * v))


def test_autodiff_with_respect_to_state():
    g = autodiff("""
        graph @f(%x: f32[3]) state(%w: f32[3]) {
          %0 = mul(%x, %w) : f32[3]
          %1 = tanh(%0) : f32[3]
          %2 = sum(%1) {axis=[0], keepdims=false} : f32[]
          %3 = grad(%2, %w) : f32[3]
          %4 = constant() {value=0.1} : f32[]
          %5 = mul(%4, %3) : f32[3]
          %6 = sub(%w, %5) : f32[3]
          update %w = %6
          return %2
        }
    """, """
        graph @f(%x: f32[3]) state(%w: f32[3]) {
          %0 = mul(%x, %w) : f32[3]
          %1 = tanh(%0) : f32[3]
          %2 = sum(%1) {axis=[0], keepdims=false} : f32[]
          %3 = constant() {value=1.0} : f32[]
          %4 = reshape(%3) {shape=[1]} : f32[1]
          %5 = broadcast(%4) {shape=[3]} : f32[3]
          %6 = mul(%1, %1) : f32[3]
          %7 = constant() {value=1.0} : f32[]
          %8 = sub(%7, %6) : f32[3]
          %9 = mul(%5, %8) : f32[3]
          %10 = mul(%9, %w) : f32[3]
          %11 = mul(%9, %x) : f32[3]
          %12 = constant() {value=0.1} : f32[]
          %13 = mul(%12, %11) : f32[3]
          %14 = sub(%w, %13) : f32[3]
          update %w = %14
          return %2
        }
    """)
    x = np.array([0.5, -1.0, 2.0], np.float32)
    w = np.array([1.0, 0.25, -0.5], np.float32)
    (loss,), updates = interpret(g, [x], {"w": w})
    assert_close(loss, np.tanh(x * w).sum())
    assert_close(updates["w"], w - np.float32(0.1) * x * (1 - np.tanh(x * w) ** 2))


def test_autodiff_needs_decomposed_composites():
    g = parse(norm("""
        graph @f(%x: f32[3]) {
          %0 = softmax(%x) {axis=0} : f32[3]                              # m.py:2
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[]
          %2 = grad(%1, %x) : f32[3]
          return %2
        }
    """))
    with pytest.raises(GradError, match="softmax reached autodiff undecomposed"):
        differentiate(g)


def test_autodiff_without_grad_nodes_returns_the_same_graph():
    g = parse("graph @f(%x: f32[3]) {\n  %0 = exp(%x) : f32[3]\n  return %0\n}\n")
    assert differentiate(g) is g


# --- the default pipeline on autodiff output --------------------------------------------------


def test_default_pipeline_cleans_up_autodiff_output():
    before = parse(norm("""
        graph @f(%x: f32[4,3], %w: f32[3,2], %b: f32[2]) {
          %0 = matmul(%x, %w) : f32[4,2]
          %1 = add(%0, %b) : f32[4,2]
          %2 = tanh(%1) : f32[4,2]
          %3 = mean(%2) {axis=[0, 1], keepdims=false} : f32[]
          %4 = grad(%3, %w) : f32[3,2]
          %5 = grad(%3, %b) : f32[2]
          return %3, %4, %5
        }
    """))
    after, stages = PassManager(DEFAULT).run(before)
    assert print_graph(after) == norm("""
        graph @f(%x: f32[4,3], %w: f32[3,2], %b: f32[2]) {
          %0 = matmul(%x, %w) : f32[4,2]
          %1 = add(%0, %b) : f32[4,2]
          %2 = tanh(%1) : f32[4,2]
          %3 = sum(%2) {axis=[0, 1], keepdims=false} : f32[]
          %4 = constant() {value=0.125} : f32[]
          %5 = mul(%3, %4) : f32[]
          %6 = constant() {value=1.0} : f32[]
          %7 = constant() {value=0.125} : f32[4,2]
          %8 = mul(%2, %2) : f32[4,2]
          %9 = sub(%6, %8) : f32[4,2]
          %10 = mul(%7, %9) : f32[4,2]
          %11 = sum(%10) {axis=[0], keepdims=false} : f32[2]
          %12 = transpose(%x) {perm=[1, 0]} : f32[3,4]
          %13 = matmul(%12, %10) : f32[3,2]
          return %5, %13, %11
        }
    """)
    verify(after, allow_grad=False, allow_composite=False)
    rng = np.random.default_rng(4)
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in [(4, 3), (3, 2), (2,)])
    loss, gw, gb = interpret(after, [x, w, b])[0]
    t = np.tanh(x @ w + b)
    assert_close(loss, t.mean())
    assert_close(gw, x.T @ ((1 - t * t) / 8))
    assert_close(gb, ((1 - t * t) / 8).sum(axis=0))
    assert [s.name for s in stages] == ["traced", "decompose", "autodiff", "simplify",
                                        "fold_constants", "cse", "simplify.2", "dce"]


# --- the pass manager -------------------------------------------------------------------------

PM_INPUT = """
    graph @pm(%x: f32[3]) {
      %0 = exp(%x) : f32[3]
      %1 = exp(%x) : f32[3]
      %2 = constant() {value=1.0} : f32[]
      %3 = mul(%1, %2) : f32[3]
      %4 = add(%0, %3) : f32[3]
      return %4
    }
"""


def test_pass_manager_stage_names_changed_flags_remarks_and_timing():
    g = parse(norm(PM_INPUT))
    final, stages = PassManager([simplify, cse, simplify, dce, dce]).run(g)
    assert [s.name for s in stages] == ["traced", "simplify", "cse", "simplify.2", "dce",
                                        "dce.2"]
    assert [s.changed for s in stages] == [True, True, True, False, True, False]
    assert [s.remarks for s in stages] == [
        [], ["mul_one: 1"], ["merged 1 duplicate exp node(s)"], [],
        ["removed 1 dead node(s): constant"], []]
    assert stages[0].graph is g and stages[-1].graph is final
    assert all(isinstance(s.seconds, float) and 0 <= s.seconds < 5 for s in stages)
    assert re.fullmatch(r"# ---- after 02 cse \(changed, \d+\.\d ms\) ----", stages[2].header(2))
    assert stages[3].header(3).startswith("# ---- after 03 simplify.2 (unchanged, ")
    assert stages[2].text(2).split("\n")[1] == "# remark: merged 1 duplicate exp node(s)"
    assert print_graph(final) == norm("""
        graph @pm(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = add(%0, %0) : f32[3]
          return %1
        }
    """)
    assert_same_behaviour(g, final, exact=True)


def test_pass_manager_first_stage_name_and_empty_pipeline():
    g = parse(norm(PM_INPUT))
    final, stages = PassManager([]).run(g, first_stage="parsed")
    assert final is g and [s.name for s in stages] == ["parsed"]


def _broken_pass(g: Graph) -> Graph:
    """Gives the first node a wrong result type."""
    n = g.nodes[0]
    bad = Node(n.op, n.inputs, n.attrs, n.type.with_shape((7,)), n.loc)
    return g.replace(nodes=[bad] + g.nodes[1:], outputs=[bad])


_broken_pass.pass_name = "breaker"


def test_pass_manager_surfaces_verifier_errors_with_the_pass_name():
    g = parse(norm(PM_INPUT))
    with config.patch(verify=True), pytest.raises(VerifyError) as info:
        PassManager([dce, _broken_pass]).run(g)
    assert info.value.message.startswith(
        "after pass breaker: @pm: result type f32[7] differs from the type rule's f32[3]")

    def broken_simplify(graph):
        return _broken_pass(graph)

    broken_simplify.pass_name = "simplify"
    with (config.patch(verify=True),
          pytest.raises(VerifyError, match=r"^after pass simplify\.2: @pm: result type")):
        PassManager([simplify, broken_simplify]).run(g)


def test_pass_manager_without_verify_lets_a_broken_graph_through():
    g = parse(norm(PM_INPUT))
    with config.patch(verify=False, check_roundtrip=False):
        final, _ = PassManager([_broken_pass]).run(g)
    assert final.nodes[0].type.shape == (7,)
    with pytest.raises(VerifyError):
        verify(final)


def test_pass_manager_names_a_pass_that_crashes():
    def crashing(g):
        raise KeyError("oops")

    with pytest.raises(LaminaError) as info:
        PassManager([crashing]).run(parse(norm(PM_INPUT)))
    assert info.value.message == "pass crashing failed on @pm: KeyError: 'oops'"
    assert isinstance(info.value.__cause__, KeyError)


def test_pass_manager_check_roundtrip_catches_text_that_does_not_round_trip():
    def reorder(g):
        # attributes in another order print differently than they parse back
        n = g.nodes[0]
        bad = Node(n.op, n.inputs, {"keepdims": False, "axis": (0,)}, n.type)
        return g.replace(nodes=[bad], outputs=[bad])

    g = parse("graph @f(%x: f32[3]) {\n  %0 = sum(%x) {axis=[0], keepdims=false} : f32[]\n"
              "  return %0\n}\n")
    with (config.patch(verify=False, check_roundtrip=True),
          pytest.raises(VerifyError, match="^after pass reorder: the IR text does not round")):
        PassManager([reorder]).run(g)


def test_print_after_all_prints_every_stage_to_stderr(capsys):
    g = parse(norm(PM_INPUT))
    with config.patch(print_after="all", print_changed=False):
        PassManager([cse, simplify, dce, dce]).run(g)
    out = capsys.readouterr()
    assert out.out == ""
    headers = re.findall(r"^# ---- after (\d\d) (\S+) \((\w+), ", out.err, re.MULTILINE)
    assert headers == [("00", "traced", "changed"), ("01", "cse", "changed"),
                       ("02", "simplify", "changed"), ("03", "dce", "changed"),
                       ("04", "dce.2", "unchanged")]
    assert "# remark: merged 1 duplicate exp node(s)" in out.err
    assert "# remark: removed 1 dead node(s): constant" in out.err
    assert out.err.count("graph @pm(%x: f32[3]) {") == 5
    assert out.err.split("\n# ---- after 04")[1].split("\n", 1)[1] == norm("""
        graph @pm(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          %1 = add(%0, %0) : f32[3]
          return %1
        }
    """) + "\n"


def test_print_after_named_passes_only(capsys):
    with config.patch(print_after="dce, simplify", print_changed=False):
        PassManager([simplify, cse, dce]).run(parse(norm(PM_INPUT)))
    err = capsys.readouterr().err
    assert re.findall(r"^# ---- after \d\d (\S+) ", err, re.MULTILINE) == ["simplify", "dce"]


def test_print_changed_skips_unchanged_stages(capsys):
    g = parse(norm(PM_INPUT))
    with config.patch(print_after="all", print_changed=True):
        PassManager([decompose, cse, dce, dce, simplify]).run(g)
    err = capsys.readouterr().err
    assert re.findall(r"^# ---- after (\d\d) (\S+) ", err, re.MULTILINE) == [
        ("00", "traced"), ("02", "cse"), ("05", "simplify")]


def test_no_printing_by_default(capsys):
    with config.patch(print_after="", debug=0):
        PassManager([cse, dce]).run(parse(norm(PM_INPUT)))
    assert capsys.readouterr().err == ""


def test_dump_writes_one_numbered_file_per_stage(tmp_path):
    g = parse(norm(PM_INPUT))
    with config.patch(dump=str(tmp_path)):
        _, stages = PassManager([simplify, cse, simplify, dce]).run(g)
        PassManager([dce]).run(g)  # a second graph of the same name: a fresh folder
    assert sorted(os.listdir(tmp_path)) == ["pm.0", "pm.1"]
    files = sorted(os.listdir(tmp_path / "pm.0"))
    assert files == ["00_traced.lir", "01_simplify.lir", "02_cse.lir", "03_simplify.2.lir",
                     "04_dce.lir"]
    for i, (name, stage) in enumerate(zip(files, stages)):
        text = (tmp_path / "pm.0" / name).read_text()
        assert text.startswith(f"# ---- after {i:02d} {stage.name} (")
        assert text == stage.text(i)
        assert print_graph(parse(text)) == print_graph(stage.graph)
    assert "# remark: mul_one: 1\n" in (tmp_path / "pm.0" / "01_simplify.lir").read_text()
    assert sorted(os.listdir(tmp_path / "pm.1")) == ["00_traced.lir", "01_dce.lir"]
    assert not [f for f in os.listdir(tmp_path / "pm.0") if ".tmp" in f]


# --- end to end -------------------------------------------------------------------------------


def _loss(x, w):
    return (lm.gelu(x @ w) * 2.0).mean()


def test_compile_stages_and_ir():
    f = lm.compile(lm.grad(_loss, argnums=1))
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    w = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    g = f(x, w)
    assert g.shape == (3, 4) and g.dtype == np.float32
    names = f.stages()
    assert names == ["traced", "decompose", "autodiff", "simplify", "fold_constants", "cse",
                     "simplify.2", "dce"]
    for i, name in enumerate(names):
        text = f.ir(name)
        assert text.startswith(f"# ---- after {i:02d} {name} (")
        parse(text)
    assert "gelu(" in f.ir("traced") and "grad(" in f.ir("traced")
    assert "gelu(" not in f.ir("decompose") and "grad(" in f.ir("decompose")
    assert "grad(" not in f.ir("autodiff")
    final = f.ir()
    assert final == f.ir("dce").split("\n", 1 + f.ir("dce").count("# remark"))[-1]
    assert "(grad)" in final and "# test_passes.py:" in final
    with pytest.raises(LaminaError, match="no stage 'nope'"):
        f.ir("nope")
    # the compiled gradient agrees with a central difference of the compiled loss
    eps = 1e-3
    for i, j in [(0, 0), (2, 3)]:
        dw = np.zeros_like(w)
        dw[i, j] = eps
        plus = lm.compile(_loss)(x, w + dw)
        minus = lm.compile(_loss)(x, w - dw)
        assert abs((plus - minus) / (2 * eps) - g[i, j]) < 1e-3


DUMP_SCRIPT = """
import numpy as np
import lamina as lm

f = lm.compile(lambda x: lm.softmax(x).sum(), name="dumped")
print(f(np.ones((2, 3), np.float32)))
"""


def test_lamina_dump_environment_variable(tmp_path):
    env = dict(os.environ, LAMINA_DUMP=str(tmp_path / "dumps"))
    for k in ("LAMINA_PRINT_AFTER", "LAMINA_DEBUG"):
        env.pop(k, None)
    proc = subprocess.run([sys.executable, "-c", DUMP_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert abs(float(proc.stdout) - 2.0) < 1e-6
    folder = tmp_path / "dumps" / "dumped.0"
    files = sorted(p.name for p in folder.iterdir())
    assert files == ["00_traced.lir", "01_decompose.lir", "02_autodiff.lir", "03_simplify.lir",
                     "04_fold_constants.lir", "05_cse.lir", "06_simplify.2.lir", "07_dce.lir"]
    for i, name in enumerate(files):
        text = (folder / name).read_text()
        assert text.startswith(f"# ---- after {i:02d} {name[3:-4]} (")
        g = parse(text)
        assert g.name == "dumped"
    assert "softmax(" in (folder / "00_traced.lir").read_text()
    assert "softmax(" not in (folder / "01_decompose.lir").read_text()
    assert "unchanged" in (folder / "02_autodiff.lir").read_text().split("\n")[0]
