"""autodiff as a graph transform: the backward graph it writes (as IR text), checked against
analytic gradients; and the default pipeline's cleanup of its output."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close

from lamina.ir import (
    Graph,
    interpret,
    parse,
    print_graph,
    verify,
)
from lamina.ir.errors import GradError
from lamina.passes import (
    DEFAULT,
    PassManager,
    differentiate,
    eliminate_common_subexpressions,
    eliminate_dead_code,
)

cse = eliminate_common_subexpressions
dce = eliminate_dead_code


from pass_util import norm, run_pass

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
                                        "fold_constants", "cse", "trim_scans", "simplify.2",
                                        "dce", "licm"]
