"""fold_constants, CSE, DCE and decompose: before/after IR text, and the reference
interpreter agreeing on both graphs."""

from __future__ import annotations

import pytest

from lamina.ir import (
    interpret,
    parse,
)
from lamina.passes import (
    decompose,
    eliminate_common_subexpressions,
    eliminate_dead_code,
    fold_constants,
)

cse = eliminate_common_subexpressions
dce = eliminate_dead_code


from pass_util import norm, run_pass

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
