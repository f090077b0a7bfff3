"""simplify: every rule fires on its pattern (and the graph computes the same), no rule
fires where its replacement would change the type or IEEE result, and alias/stop_gradient stay
while a grad node remains. Style: parse the before text, run the pass, compare printed text."""

from __future__ import annotations

import numpy as np
import pytest

from lamina.ir import (
    interpret,
    print_graph,
)
from lamina.passes import (
    differentiate,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    simplify,
    simplify_rules,
)

cse = eliminate_common_subexpressions
dce = eliminate_dead_code


from pass_util import run_pass

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
    # a division by a broadcast value: one reciprocal per row, then multiplications
    # (not bit-exact: x * (1/y) can differ from x / y in the last place)
    "div_by_broadcast": ("div_by_broadcast", """
        graph @f(%x: f32[4,3], %s: f32[4,1]) {
          %0 = div(%x, %s) : f32[4,3]
          return %0
        }
    """, """
        graph @f(%x: f32[4,3], %s: f32[4,1]) {
          %0 = constant() {value=1.0} : f32[]
          %1 = div(%0, %s) : f32[4,1]
          %2 = mul(%x, %1) : f32[4,3]
          return %2
        }
    """, False),
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
    # the steps' products of a loop's weight gradient summed: one product over all rows
    "sum_of_batched_matmul": ("sum_of_batched_matmul", """
        graph @f(%a: f32[3,4,2], %b: f32[3,2,5]) {
          %0 = matmul(%a, %b) : f32[3,4,5]
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[4,5]
          return %1
        }
    """, """
        graph @f(%a: f32[3,4,2], %b: f32[3,2,5]) {
          %0 = matmul(%a, %b) : f32[3,4,5]
          %1 = transpose(%a) {perm=[1, 0, 2]} : f32[4,3,2]
          %2 = reshape(%1) {shape=[4, 6]} : f32[4,6]
          %3 = reshape(%b) {shape=[6, 5]} : f32[6,5]
          %4 = matmul(%2, %3) : f32[4,5]
          return %4
        }
    """, False),
    # a weight's gradient (x^T @ dy)^T written as dy^T @ x: no transpose after the GEMM
    "transpose_of_matmul": ("transpose_of_matmul", """
        graph @f(%x: f32[6,3], %dy: f32[6,5]) {
          %0 = transpose(%x) {perm=[1, 0]} : f32[3,6]
          %1 = matmul(%0, %dy) : f32[3,5]
          %2 = transpose(%1) {perm=[1, 0]} : f32[5,3]
          return %2
        }
    """, """
        graph @f(%x: f32[6,3], %dy: f32[6,5]) {
          %0 = transpose(%x) {perm=[1, 0]} : f32[3,6]
          %1 = matmul(%0, %dy) : f32[3,5]
          %2 = transpose(%dy) {perm=[1, 0]} : f32[5,6]
          %3 = transpose(%0) {perm=[1, 0]} : f32[6,3]
          %4 = matmul(%2, %3) : f32[5,3]
          return %4
        }
    """, False),
    "transpose_of_broadcast_matmul": ("transpose_of_matmul", """
        graph @f(%a: f32[2,4,3], %b: f32[3,5]) {
          %0 = matmul(%a, %b) : f32[2,4,5]
          %1 = transpose(%0) {perm=[0, 2, 1]} : f32[2,5,4]
          return %1
        }
    """, """
        graph @f(%a: f32[2,4,3], %b: f32[3,5]) {
          %0 = matmul(%a, %b) : f32[2,4,5]
          %1 = transpose(%b) {perm=[1, 0]} : f32[5,3]
          %2 = transpose(%a) {perm=[0, 2, 1]} : f32[2,3,4]
          %3 = matmul(%1, %2) : f32[2,5,4]
          return %3
        }
    """, False),
    # the gradients of adjacent slices (an LSTM's gates): one concatenation
    "adjacent_pads": ("add_of_adjacent_pads", """
        graph @f(%a: f32[2,3], %b: f32[2,4]) {
          %0 = pad(%a) {lo=[0, 1], hi=[0, 4], interior=[0, 0]} : f32[2,8]
          %1 = pad(%b) {lo=[0, 4], hi=[0, 0], interior=[0, 0]} : f32[2,8]
          %2 = add(%1, %0) : f32[2,8]
          return %2
        }
    """, """
        graph @f(%a: f32[2,3], %b: f32[2,4]) {
          %0 = pad(%a) {lo=[0, 1], hi=[0, 4], interior=[0, 0]} : f32[2,8]
          %1 = pad(%b) {lo=[0, 4], hi=[0, 0], interior=[0, 0]} : f32[2,8]
          %2 = concatenate(%a, %b) {axis=1} : f32[2,7]
          %3 = pad(%2) {lo=[0, 1], hi=[0, 0], interior=[0, 0]} : f32[2,8]
          return %3
        }
    """, True),
    "nested_concatenate": ("concatenate_of_concatenate", """
        graph @f(%a: f32[2,3], %b: f32[2,4], %c: f32[2,1]) {
          %0 = concatenate(%a, %b) {axis=1} : f32[2,7]
          %1 = concatenate(%c, %0) {axis=1} : f32[2,8]
          return %1
        }
    """, """
        graph @f(%a: f32[2,3], %b: f32[2,4], %c: f32[2,1]) {
          %0 = concatenate(%a, %b) {axis=1} : f32[2,7]
          %1 = concatenate(%c, %a, %b) {axis=1} : f32[2,8]
          return %1
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
    # a division by a same-shaped value (no broadcast: no fewer divisions) or of integers
    "div_same_shape": """
        graph @f(%x: f32[4,3], %y: f32[4,3]) {
          %0 = div(%x, %y) : f32[4,3]
          return %0
        }
    """,
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
    "batched_matmul_read_twice": """
        graph @f(%a: f32[3,4,2], %b: f32[3,2,5]) {
          %0 = matmul(%a, %b) : f32[3,4,5]
          %1 = sum(%0) {axis=[0], keepdims=false} : f32[4,5]
          return %1, %0
        }
    """,
    "matmul_read_twice_or_transposed_otherwise": """
        graph @f(%a: f32[2,4,3], %b: f32[2,3,5]) {
          %0 = matmul(%a, %b) : f32[2,4,5]
          %1 = transpose(%0) {perm=[0, 2, 1]} : f32[2,5,4]
          %2 = matmul(%a, %b) : f32[2,4,5]
          %3 = transpose(%2) {perm=[1, 2, 0]} : f32[4,5,2]
          return %1, %0, %3
        }
    """,
    "overlapping_pads": """
        graph @f(%a: f32[2,3], %b: f32[2,4]) {
          %0 = pad(%a) {lo=[0, 2], hi=[0, 3], interior=[0, 0]} : f32[2,8]
          %1 = pad(%b) {lo=[0, 4], hi=[0, 0], interior=[0, 0]} : f32[2,8]
          %2 = add(%1, %0) : f32[2,8]
          return %2
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
