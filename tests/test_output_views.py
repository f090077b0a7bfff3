"""Outputs that are contiguous ranges of one kernel's result come back as views of it (llvm):
attention_grad's dq, dk and dv, without slice kernels or an arena copy of the packed result."""

import numpy as np
import pytest

import lamina as lm
from lamina import nn
from lamina.backends.llvm.output_views import output_views
from lamina.ir import parse

from helpers import assert_close

# a packed kernel result and three pieces of it: two contiguous ranges and one strided slice
PACKED = """
graph @f(%x: f32[4,6]) {
  %0 = kernel @twice(%x) : f32[4,6] {
    ^(%in0: f32[4,6]):
      %0 = mul(%in0, %in0) : f32[4,6]
      yield %0
  }
  %1 = kernel @rows(%0) : f32[2,6] {
    ^(%in0: f32[4,6]):
      %0 = slice(%in0) {start=[1, 0], stop=[3, 6], step=[1, 1]} : f32[2,6]
      yield %0
  }
  %2 = kernel @last(%0) : f32[3,2] {
    ^(%in0: f32[4,6]):
      %0 = slice(%in0) {start=[3, 0], stop=[4, 6], step=[1, 1]} : f32[1,6]
      %1 = reshape(%0) {shape=[3, 2]} : f32[3,2]
      yield %1
  }
  %3 = kernel @cols(%0) : f32[4,2] {
    ^(%in0: f32[4,6]):
      %0 = slice(%in0) {start=[0, 0], stop=[4, 2], step=[1, 1]} : f32[4,2]
      yield %0
  }
  return %1, %3, %2
}
"""


def test_contiguous_slices_become_views_and_strided_ones_stay_kernels():
    g = parse(PACKED)
    lowered, views = output_views(g)
    assert [g.nodes.index(n) for n in lowered.nodes] == [0, 3]  # @twice, @cols (strided)
    assert views.entries == (("view", 1, 6, (2, 6)), ("out", 0), ("view", 1, 18, (3, 2)))
    assert lowered.outputs[1] is g.nodes[0]  # the packed result, a hidden output


def test_overlapping_ranges_are_copied():
    text = PACKED.replace("start=[3, 0], stop=[4, 6]", "start=[2, 0], stop=[3, 6]")
    g = parse(text)
    lowered, views = output_views(g)
    assert views is None and lowered is g


def _attention_grads():
    def f(q, k, v, g):
        def loss(q, k, v):
            out = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return (out * g).sum(), out
        (_, out), grads = lm.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(q, k, v)
        return (out, *grads)
    return f


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((2, 3, 64, 16)).astype(np.float32) for _ in range(4)]


def test_attention_gradients_are_views_with_numpy_values():
    xs = _inputs()
    f = lm.compile(_attention_grads(), backend="llvm")
    got = f(*xs)
    want = lm.compile(_attention_grads(), backend="numpy")(*xs)
    for a, b in zip(got, want):
        assert_close(a, b, rtol=1e-5, atol=1e-5)
    out, dq, dk, dv = got
    assert dq.base is not None and dq.base is dk.base is dv.base  # one buffer, three views
    assert not np.shares_memory(dq, dk) and not np.shares_memory(dk, dv)
    assert not np.shares_memory(out, dq)


def test_held_views_are_not_overwritten_by_the_next_call():
    f = lm.compile(_attention_grads(), backend="llvm")
    first = f(*_inputs(0))
    kept = [np.array(a) for a in first]
    second = f(*_inputs(1))
    for a, b in zip(first, kept):
        np.testing.assert_array_equal(a, b)  # still the first call's values
    assert not any(np.shares_memory(a, b) for a, b in zip(first, second))
    dq = first[1]
    dq[...] = 0  # writing into one view changes neither the others nor later calls
    assert np.abs(first[2]).max() > 0
    third = f(*_inputs(1))
    for a, b in zip(second, third):
        np.testing.assert_array_equal(a, b)


def test_views_survive_save_and_load(tmp_path):
    xs = _inputs(2)
    f = lm.compile(_attention_grads(), backend="llvm")
    want = f(*xs)
    path = str(tmp_path / "attn.lamina")
    f.save(path)
    g = lm.load(path)
    got = g(*xs)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    assert got[1].base is got[2].base


@pytest.mark.parametrize("shape", [(1, 2, 64, 16), (3, 40, 8), (2, 2, 33, 24)])
def test_gradients_through_views_match_numpy(shape):
    """dQ accumulates in the output (whole query blocks, whole-vector head dims) or in scratch
    (the others); both give numpy's gradients."""
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    got = lm.compile(_attention_grads(), backend="llvm")(*xs)
    want = lm.compile(_attention_grads(), backend="numpy")(*xs)
    for a, b in zip(got, want):
        assert a.shape == b.shape
        assert_close(a, b, rtol=1e-5, atol=2e-5)
