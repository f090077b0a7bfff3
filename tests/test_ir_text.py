"""The IR text form: print -> parse -> print round-trips, parse errors with exact positions,
the verifier on hand-built broken graphs, source locations from tracing, and ``to_networkx``.

Texts are written canonically (exactly what the printer writes), so each round-trip test also
checks that the printer's output for these graphs is the text shown here.
"""

from __future__ import annotations

import inspect
import textwrap

import networkx as nx
import numpy as np
import pytest

import lamina as lm
from lamina.ir import (
    Builder,
    Graph,
    ParseError,
    SourceLoc,
    TensorType,
    interpret,
    parse,
    print_graph,
    verify,
)
from lamina.ir.ops.registry import REGISTRY
from lamina.ir.types import TupleType


def norm(text: str) -> str:
    """Dedented, without leading/trailing blank lines, one final newline."""
    return textwrap.dedent(text).strip("\n") + "\n"


def roundtrip(text: str) -> Graph:
    """Parse canonical ``text``; printing it must give the text back, and so must a reparse."""
    text = norm(text)
    g = parse(text)
    printed = print_graph(g)
    assert printed == text
    assert print_graph(parse(printed)) == text
    verify(g)
    return g


def random_args(g: Graph, rng, ints=3):
    """Random values for the inputs and state of ``g`` (ints in [0, ints))."""

    def draw(t: TensorType):
        d = t.dtype.np
        if t.dtype.is_float:
            return rng.standard_normal(t.shape).astype(d)
        if t.dtype.is_int:
            return rng.integers(0, ints, t.shape).astype(d)
        return rng.random(t.shape) < 0.5

    return [draw(p.type) for p in g.inputs], {p.name: draw(p.type) for p in g.state}


def all_values(g: Graph) -> Graph:
    """``g`` returning every node's value, so interpret compares all of them."""
    return g.replace(outputs=list(g.outputs) + [n for n in g.nodes
                                                if not isinstance(n.type, TupleType)])


def assert_same_behaviour(a: Graph, b: Graph, rng, ints=3):
    ins, st = random_args(a, rng, ints)
    out_a, up_a = interpret(all_values(a), ins, st)
    out_b, up_b = interpret(all_values(b), ins, st)
    assert len(out_a) == len(out_b)
    for x, y in zip(out_a, out_b):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(x, y)
    assert up_a.keys() == up_b.keys()
    for k in up_a:
        np.testing.assert_array_equal(up_a[k], up_b[k])


# --- round trips ---------------------------------------------------------------------------------

EVERY_OP = """
graph @every_op(%x: f32[2,3], %y: f32[2,3], %i: i64[2], %k: i64[]) {
  %0 = neg(%x) : f32[2,3]
  %1 = abs(%0) : f32[2,3]
  %2 = sign(%x) : f32[2,3]
  %3 = exp(%x) : f32[2,3]
  %4 = log(%1) : f32[2,3]
  %5 = sqrt(%1) : f32[2,3]
  %6 = rsqrt(%1) : f32[2,3]
  %7 = tanh(%x) : f32[2,3]
  %8 = sigmoid(%x) : f32[2,3]
  %9 = relu(%x) : f32[2,3]
  %10 = erf(%x) : f32[2,3]
  %11 = add(%x, %y) : f32[2,3]
  %12 = sub(%x, %y) : f32[2,3]
  %13 = mul(%x, %y) : f32[2,3]
  %14 = div(%x, %y) : f32[2,3]
  %15 = pow(%1, %y) : f32[2,3]
  %16 = maximum(%x, %y) : f32[2,3]
  %17 = minimum(%x, %y) : f32[2,3]
  %18 = eq(%x, %y) : bool[2,3]
  %19 = ne(%x, %y) : bool[2,3]
  %20 = lt(%x, %y) : bool[2,3]
  %21 = le(%x, %y) : bool[2,3]
  %22 = gt(%x, %y) : bool[2,3]
  %23 = ge(%x, %y) : bool[2,3]
  %24 = logical_and(%20, %21) : bool[2,3]
  %25 = logical_or(%22, %23) : bool[2,3]
  %26 = logical_not(%24) : bool[2,3]
  %27 = where(%26, %x, %y) : f32[2,3]
  %28 = cast(%i) {dtype=f32} : f32[2]
  %29 = alias(%x) : f32[2,3]
  %30 = stop_gradient(%29) : f32[2,3]
  %31 = sum(%x) {axis=[1], keepdims=false} : f32[2]
  %32 = max(%x) {axis=[0, 1], keepdims=true} : f32[1,1]
  %33 = min(%x) {axis=[0], keepdims=false} : f32[3]
  %34 = argmax(%x) {axis=none, keepdims=false} : i64[]
  %35 = argmax(%x) {axis=1, keepdims=true} : i64[2,1]
  %36 = mean(%x) {axis=[0, 1], keepdims=false} : f32[]
  %37 = reshape(%x) {shape=[3, 2]} : f32[3,2]
  %38 = transpose(%x) {perm=[1, 0]} : f32[3,2]
  %39 = broadcast(%31) {shape=[4, 2]} : f32[4,2]
  %40 = slice(%x) {start=[0, 1], stop=[2, 3], step=[1, 2]} : f32[2,1]
  %41 = pad(%x) {lo=[1, 0], hi=[0, 2], interior=[0, 1]} : f32[3,7]
  %42 = concatenate(%x, %y, %x) {axis=0} : f32[6,3]
  %43 = take(%x, %i) {axis=1} : f32[2,2]
  %44 = scatter_add(%43, %i) {axis=1, size=3} : f32[2,3]
  %45 = matmul(%x, %38) : f32[2,2]
  %46 = constant() {value=-1.5} : f32[]
  %47 = iota() {axis=0} : i64[5]
  %48 = random_uniform(%k) {stream=0} : f32[2,3]
  %49 = random_normal(%k) {stream=7} : f64[4]
  %50 = gelu(%x) {approximate="tanh"} : f32[2,3]
  %51 = gelu(%x) {approximate="none"} : f32[2,3]
  %52 = softmax(%x) {axis=1} : f32[2,3]
  %53 = log_softmax(%x) {axis=0} : f32[2,3]
  %54 = one_hot(%i) {num_classes=4, dtype=f64} : f64[2,4]
  %55 = softplus(%x) : f32[2,3]
  return %1, %25, %45, %54
}
"""

WITH_GRAD = """
graph @with_grad(%x: f32[3]) {
  %0 = tanh(%x) : f32[3]
  %1 = sum(%0) {axis=[0], keepdims=false} : f32[]
  %2 = grad(%1, %x) : f32[3]
  return %1, %2
}
"""

STATE = """
graph @step(%x: f32[4,3], %lr: f32[]) state(%w: f32[3], %count: i64[], %seen: f32[3]) {
  %0 = mul(%x, %w) : f32[4,3]
  %1 = sum(%0) {axis=[0], keepdims=false} : f32[3]
  %2 = mul(%lr, %1) : f32[3]
  %3 = sub(%w, %2) : f32[3]
  %4 = constant() {value=1} : i64[]
  %5 = add(%count, %4) : i64[]
  update %w = %3
  update %count = %5
  return %1, %x, %w, %1
}
"""

CONSTANTS = """
graph @constants() {
  %0 = constant() {value=[[1.0, -2.5], [0.1, 3e-05]]} : f32[2,2]
  %1 = constant() {value=[inf, -inf, 0.5]} : f32[3]
  %2 = constant() {value=1e-08} : f64[]
  %3 = constant() {value=-1e+20} : f32[2]
  %4 = constant() {value=[[[1, -2]], [[-9223372036854775808, 9223372036854775807]]]} : i64[2,1,2]
  %5 = constant() {value=[true, false]} : bool[2]
  %6 = constant() {value=-0.0} : f32[]
  %7 = constant() {value=-inf} : f16[3]
  %8 = constant() {value=-7} : i32[]
  %9 = constant() {value=0.333251953125} : f64[]
  %10 = constant() {value=true} : bool[]
  return %0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10
}
"""

ATTRS = """
graph @attrs(%x: f32[2,3], %l: i32[2]) {
  %0 = gelu(%x) {approximate="none"} : f32[2,3]
  %1 = cast(%x) {dtype=f64} : f64[2,3]
  %2 = cast(%l) {dtype=bool} : bool[2]
  %3 = one_hot(%l) {num_classes=3, dtype=i32} : i32[2,3]
  %4 = sum(%x) {axis=[], keepdims=true} : f32[2,3]
  %5 = argmax(%x) {axis=none, keepdims=true} : i64[1,1]
  return %0, %1, %2, %3, %4, %5
}
"""

EMPTY = """
graph @empty() {
  return
}
"""

PASSTHROUGH = """
graph @passthrough(%a: f32[], %b: i64[0]) state(%s: bool[]) {
  return %b, %a, %s, %a
}
"""

SCALARS = """
graph @scalars(%x: f32[], %y: f64[]) {
  %0 = mul(%x, %x) : f32[]
  %1 = cast(%0) {dtype=f64} : f64[]
  %2 = add(%1, %y) : f64[]
  %3 = reshape(%2) {shape=[1, 1]} : f64[1,1]
  %4 = reshape(%3) {shape=[]} : f64[]
  return %4
}
"""

LOCATIONS = """
graph @locs(%x: f32[3]) {
  %0 = exp(%x) : f32[3]                                           # model.py:12
  %1 = constant() {value=1.0} : f32[]                             # model.py:13 (grad)
  %2 = mul(%0, %1) : f32[3]
  %3 = sum(%2) {axis=[0], keepdims=false} : f32[]                 # <string>:1
  %4 = broadcast(%3) {shape=[100000, 100000]} : f32[100000,100000]  # a.py:9
  return %4
}
"""

ZERO_SIZE = """
graph @zero_size(%x: f32[0,3], %y: f32[3,0]) {
  %0 = matmul(%x, %y) : f32[0,0]
  %1 = sum(%x) {axis=[0], keepdims=false} : f32[3]
  %2 = matmul(%y, %x) : f32[3,3]
  %3 = constant() {value=2.0} : f32[0,5]
  %4 = concatenate(%x, %x) {axis=0} : f32[0,3]
  %5 = exp(%x) : f32[0,3]
  %6 = slice(%y) {start=[1, 0], stop=[1, 0], step=[1, 1]} : f32[0,0]
  return %0, %1, %2, %3, %4, %5, %6
}
"""

# Fused kernels: regions in their own scope (names shadow the outer ones), locations on the
# header line, a kernel reading another kernel's value, a kernel with no operands.
KERNELS = """
graph @kernels(%x: f32[4,3], %b: f32[3]) {
  %0 = kernel @fused_add_relu(%x, %b) : f32[4,3] {                # m.py:3
    ^(%x: f32[4,3], %b: f32[3]):
      %0 = add(%x, %b) : f32[4,3]                                 # m.py:3
      %1 = relu(%0) : f32[4,3]                                    # m.py:3
      yield %1
  }
  %1 = kernel @fused_sum_mul(%0) : f32[4] {
    ^(%in0: f32[4,3]):
      %0 = sum(%in0) {axis=[1], keepdims=false} : f32[4]
      %1 = constant() {value=0.5} : f32[]
      %2 = mul(%0, %1) : f32[4]                                   # m.py:4 (grad)
      yield %2
  }
  %2 = kernel @fused_iota() : i64[4] {
    ^():
      %0 = iota() {axis=0} : i64[4]
      yield %0
  }
  return %1, %2
}
"""

# trigonometry, rounding, floor division, remainder and scans
MATH2 = """
graph @math2(%x: f32[2,3], %y: f32[3], %i: i32[2,3]) {
  %0 = sin(%x) : f32[2,3]
  %1 = cos(%x) : f32[2,3]
  %2 = floor(%x) : f32[2,3]
  %3 = ceil(%x) : f32[2,3]
  %4 = round(%x) : f32[2,3]
  %5 = floor_divide(%x, %y) : f32[2,3]
  %6 = remainder(%x, %y) : f32[2,3]
  %7 = cumsum(%x) {axis=1, reverse=false} : f32[2,3]
  %8 = cumsum(%i) {axis=0, reverse=true} : i64[2,3]
  return %0, %1, %2, %3, %4, %5, %6, %7, %8
}
"""

# convolution and pooling: nested (lo, hi) pairs, none
CONV = """
graph @f(%x: f32[1,2,5,5], %w: f32[4,1,3,2], %x1: f32[2,4,6], %wt: f32[4,3,2]) {
  %0 = conv(%x, %w) {stride=[2, 1], padding=[[1, 1], [0, 2]], dilation=[1, 2], groups=2} : f32[1,4,3,5]
  %1 = conv_transpose(%x1, %wt) {stride=[2], padding=[1], output_padding=[1], dilation=[1], groups=2} : f32[2,6,11]
  %2 = max_pool(%x) {kernel=[3, 3], stride=[2, 2], padding=[1, 1], dilation=[1, 1], ceil_mode=true} : f32[1,2,3,3]
  %3 = avg_pool(%x1) {kernel=[2], stride=[2], padding=[1], ceil_mode=false, count_include_pad=false, divisor_override=none} : f32[2,4,4]
  return %0, %1, %2, %3
}
"""

ROUNDTRIP_CASES = {
    "every_op": EVERY_OP, "with_grad": WITH_GRAD, "state": STATE, "constants": CONSTANTS,
    "attrs": ATTRS, "empty": EMPTY, "passthrough": PASSTHROUGH, "scalars": SCALARS,
    "locations": LOCATIONS, "zero_size": ZERO_SIZE, "kernels": KERNELS, "math2": MATH2,
}
ROUNDTRIP_CASES["conv"] = CONV

# pooling gradients (what autodiff makes of max_pool and avg_pool)
POOL_GRADS = """
graph @f(%x: f32[1,2,5,5], %g: f32[1,2,3,3], %g1: f32[2,4,4]) {
  %0 = max_pool_grad(%x, %g) {kernel=[3, 3], stride=[2, 2], padding=[1, 1], dilation=[1, 1], ceil_mode=true} : f32[1,2,5,5]
  %1 = avg_pool_grad(%g1) {kernel=[2], stride=[2], padding=[1], ceil_mode=false, count_include_pad=false, divisor_override=none, size=[6]} : f32[2,4,6]
  return %0, %1
}
"""
ROUNDTRIP_CASES["pool_grads"] = POOL_GRADS

# fused attention (optional bias operand) and its packed gradient
ATTENTION = """
graph @f(%q: f32[2,5,4], %k: f32[2,7,4], %v: f32[2,7,3], %m: f32[5,7], %g: f32[2,5,3]) {
  %0 = attention(%q, %k, %v) {causal=true, scale=0.5} : f32[2,5,3]
  %1 = attention(%q, %k, %v, %m) {causal=false, scale=0.25} : f32[2,5,3]
  %2 = attention_grad(%q, %k, %v, %0, %g) {causal=true, scale=0.5} : f32[138]
  return %0, %1, %2
}
"""
ROUNDTRIP_CASES["attention"] = ATTENTION

# loops: a body region per loop, a tuple result read with get; a scan nested in a fori_loop
LOOPS = """
graph @f(%w: f32[3,3], %h0: f32[2,3], %xs: f32[4,2,3], %n: i32[]) {
  %0 = scan @cell(%w, %h0, %xs) {num_consts=1, num_carry=1, length=4, reverse=true, checkpoint=false} : (f32[2,3], f32[4,2,3]) {
    ^(%i: i32[], %w: f32[3,3], %h: f32[2,3], %x: f32[2,3]):
      %0 = matmul(%h, %w) : f32[2,3]
      %1 = add(%0, %x) : f32[2,3]
      %2 = tanh(%1) : f32[2,3]
      yield %2, %2
  }
  %1 = get(%0) {index=0} : f32[2,3]
  %2 = get(%0) {index=1} : f32[4,2,3]
  %3 = fori_loop @twice(%xs, %1) {num_consts=1, lower=1, upper=3, checkpoint=true} : (f32[2,3]) {
    ^(%i: i32[], %xs: f32[4,2,3], %c: f32[2,3]):
      %0 = scan @inner(%c, %xs) {num_consts=0, num_carry=1, length=4, reverse=false, checkpoint=false} : (f32[2,3]) {
        ^(%j: i32[], %d: f32[2,3], %x: f32[2,3]):
          %0 = mul(%d, %x) : f32[2,3]
          %1 = sin(%0) : f32[2,3]
          yield %1
      }
      %1 = get(%0) {index=0} : f32[2,3]
      %2 = cast(%i) {dtype=f32} : f32[]
      %3 = add(%1, %2) : f32[2,3]
      yield %3
  }
  %4 = get(%3) {index=0} : f32[2,3]
  %5 = while_loop @count(%n, %n, %h0) {num_consts=1} : (i32[], f32[2,3]) {
    ^(%i: i32[], %n: i32[], %k: i32[], %h: f32[2,3]):
      %0 = lt(%i, %n) : bool[]
      %1 = constant() {value=1} : i32[]
      %2 = add(%k, %1) : i32[]
      %3 = cos(%h) : f32[2,3]
      yield %0, %2, %3
  }
  %6 = get(%5) {index=1} : f32[2,3]
  return %2, %4, %6
}
"""
ROUNDTRIP_CASES["loops"] = LOOPS


@pytest.mark.parametrize("name", sorted(ROUNDTRIP_CASES))
def test_roundtrip(name):
    roundtrip(ROUNDTRIP_CASES[name])


def test_roundtrip_cases_cover_every_registered_op():
    used = {n.op for text in ROUNDTRIP_CASES.values() for n in parse(norm(text)).nodes}
    assert used == set(REGISTRY)


@pytest.mark.parametrize("name", ["every_op", "state", "constants", "attrs", "scalars",
                                  "zero_size", "passthrough", "kernels", "math2", "conv", "loops"])
def test_reparsed_graph_behaves_the_same(name, rng):
    g = roundtrip(ROUNDTRIP_CASES[name])
    assert_same_behaviour(g, parse(print_graph(g)), rng)


def test_parsed_values_are_what_the_text_says():
    g = roundtrip(CONSTANTS)
    (c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10), _ = interpret(g, [])
    np.testing.assert_array_equal(c0, np.array([[1.0, -2.5], [0.1, 3e-05]], np.float32))
    np.testing.assert_array_equal(c1, np.array([np.inf, -np.inf, 0.5], np.float32))
    assert c2.dtype == np.float64 and c2 == 1e-08
    np.testing.assert_array_equal(c3, np.full(2, -1e20, np.float32))
    assert c4.dtype == np.int64 and c4.shape == (2, 1, 2)
    assert c4.reshape(-1).tolist() == [1, -2, -2**63, 2**63 - 1]
    assert c5.tolist() == [True, False]
    assert c6 == 0 and np.signbit(c6)
    assert c7.dtype == np.float16 and c7.shape == (3,) and (c7 == -np.inf).all()
    assert c8.dtype == np.int32 and c8 == -7
    assert c9 == 0.333251953125
    assert c10.dtype == np.bool_ and c10


NAN = """
graph @nan(%x: f32[3]) {
  %0 = constant() {value=nan} : f32[]
  %1 = constant() {value=[1.0, nan, -inf]} : f32[3]
  %2 = mul(%x, %0) : f32[3]
  %3 = add(%2, %1) : f32[3]
  return %3
}
"""


def test_nan_constants_verify_and_round_trip():
    g = roundtrip(NAN)  # parses, prints back, verifies
    out = interpret(g, [np.ones(3, np.float32)])[0][0]
    assert np.isnan(out).all()
    b = Builder("f")
    c = b.constant(np.array([np.nan, 1.0], np.float32), "f32", (2,))
    verify(b.build([c, b.constant(float("nan"), "f64")]))


def test_state_graph_structure_survives_the_text():
    g = roundtrip(STATE)
    assert [p.name for p in g.inputs] == ["x", "lr"]
    assert [p.name for p in g.state] == ["w", "count", "seen"]
    assert all(p.kind == "state" for p in g.state)
    assert list(g.updates) == ["w", "count"]
    assert g.outputs[1] is g.inputs[0] and g.outputs[2] is g.state[0]
    assert g.outputs[0] is g.outputs[3] is g.nodes[1]


def test_updates_print_in_state_order():
    b = Builder("order")
    x = b.add_input("x", TensorType((2,), "f32"))
    a = b.add_state("a", TensorType((2,), "f32"))
    c = b.add_state("c", TensorType((2,), "f32"))
    e = b.emit("exp", (x,))
    g = b.build([], {"c": e, "a": x})  # updates given out of state order
    text = print_graph(g)
    assert text == norm("""
        graph @order(%x: f32[2]) state(%a: f32[2], %c: f32[2]) {
          %0 = exp(%x) : f32[2]
          update %a = %x
          update %c = %0
          return
        }
    """)
    again = parse(text)
    assert print_graph(again) == text
    rng = np.random.default_rng(1)
    assert_same_behaviour(g, again, rng)
    assert [p.name for p in again.state] == [a.name, c.name] and list(again.updates) == ["a", "c"]


def test_locations_parse_into_source_locs():
    g = roundtrip(LOCATIONS)
    locs = [n.loc for n in g.nodes]
    assert locs[0] == SourceLoc("model.py", 12)
    assert locs[1] == SourceLoc("model.py", 13, "grad")
    assert locs[2] is None
    assert locs[3] == SourceLoc("<string>", 1)
    assert locs[4] == SourceLoc("a.py", 9)


def test_location_column_and_basename():
    b = Builder("f")
    x = b.add_input("x", TensorType((3,), "f32"))
    b.emit("exp", (x,), loc=SourceLoc("/some/dir/model.py", 7))
    b.emit("exp", (x,), loc=SourceLoc("/some/dir/model.py", 8, "grad"))
    g = b.build([])
    lines = print_graph(g).splitlines()
    assert lines[1] == "  %0 = exp(%x) : f32[3]" + " " * 43 + "# model.py:7"
    assert lines[2].index("#") == 66 and lines[2].endswith("# model.py:8 (grad)")
    assert print_graph(parse(print_graph(g))) == print_graph(g)


@pytest.mark.parametrize("filename", ["my model.py", "weird(1).py", 'q"uote.py', "c:drive.py"])
def test_odd_file_names_in_locations_round_trip(filename):
    b = Builder("f")
    x = b.add_input("x", TensorType((3,), "f32"))
    e = b.emit("exp", (x,), loc=SourceLoc(filename, 5, "grad"))
    g = b.build([e])
    text = print_graph(g)
    again = parse(text)
    assert print_graph(again) == text
    assert again.nodes[0].loc == SourceLoc(filename, 5, "grad")


def test_builder_constants_round_trip_bit_exactly(rng):
    b = Builder("consts")
    arrays = [
        rng.standard_normal((2, 3)).astype(np.float32),
        rng.standard_normal((3,)),
        rng.standard_normal((2, 2)).astype(np.float16),
        np.array([[1e-8, -1e20], [np.inf, -np.inf]], np.float32),
        np.array([np.float32(0.1), np.nextafter(np.float32(1), np.float32(2))], np.float32),
        rng.integers(-2**40, 2**40, (4,)),
        np.array([[True], [False]]),
    ]
    consts = [b.constant(a, a.dtype, a.shape) for a in arrays]
    scalars = [b.constant(np.float32(1) / np.float32(3), "f32"), b.constant(1 / 3, "f64"),
               b.constant(5e-324, "f64"), b.constant(65504.0, "f16")]
    g = b.build(consts + scalars)
    text = print_graph(g)
    again = parse(text)
    assert print_graph(again) == text
    outs, _ = interpret(again, [])
    for a, o in zip(arrays, outs):
        assert o.dtype == a.dtype
        np.testing.assert_array_equal(o, a)
    assert outs[-4] == np.float32(1) / np.float32(3)
    assert outs[-3] == 1 / 3 and outs[-2] == 5e-324 and outs[-1] == np.float16(65504)


def test_empty_two_dimensional_constant_round_trips():
    b = Builder("f")
    c = b.constant(np.zeros((0, 3), np.float32), "f32", (0, 3))
    g = b.build([c])
    verify(g)
    text = print_graph(g)
    assert print_graph(parse(text)) == text
    assert interpret(parse(text), [])[0][0].shape == (0, 3)


def test_traced_graph_round_trips_and_behaves_the_same(rng):
    w = lm.nn.Parameter(rng.standard_normal((3, 2)).astype(np.float32), "layer.w")
    opt = lm.optim.SGD([w], lr=0.1, momentum=0.9)
    noise = rng.standard_normal((2,)).astype(np.float32)

    def step(x, y):
        pred = lm.tanh(x @ w) + noise
        return opt.minimize(((pred - y) ** 2).mean())

    g = lm.trace(step, rng.standard_normal((4, 3)).astype(np.float32),
                 rng.standard_normal((4, 2)).astype(np.float32))
    text = print_graph(g)
    assert "state(%layer.w: f32[3,2]" in text and "update %layer.w = " in text
    again = parse(text)
    assert print_graph(again) == text
    from lamina.passes import decompose, differentiate

    # grad nodes have no reference semantics; compare the graphs after autodiff
    a, b = differentiate(decompose(g)), differentiate(decompose(again))
    assert print_graph(a) == print_graph(b)
    assert_same_behaviour(a, b, rng)


def test_state_named_like_a_node_number_round_trips(rng):
    v = lm.nn.Parameter(np.ones(3, np.float32), "1")

    def f(x):
        return lm.exp(x) * v + v

    g = lm.trace(f, np.ones(3, np.float32))
    verify(g)
    text = print_graph(g)
    again = parse(text)
    assert print_graph(again) == text
    assert_same_behaviour(g, again, rng)


# --- parse errors -----------------------------------------------------------------------------


def parse_error(text: str) -> str:
    with pytest.raises(ParseError) as info:
        parse(text)
    return str(info.value)


def assert_error_at(text: str, line: int, col: int, message: str):
    """The ParseError names ``line`` and ``col``, shows that source line and a caret under col."""
    err = parse_error(text)
    head, src, caret = err.split("\n")
    assert head == f"line {line}, column {col}: {message}"
    assert src == "  " + text.split("\n")[line - 1]
    assert caret == "  " + " " * (col - 1) + "^"


def test_parse_error_unknown_op():
    text = "graph @f(%x: f32[3]) {\n  %0 = exp(%x) : f32[3]\n  %1 = expp(%0) : f32[3]\n" \
           "  return %1\n}\n"
    assert_error_at(text, 3, 8, "unknown op 'expp'; did you mean exp?")


def test_parse_error_unknown_dtype():
    text = "graph @f(%x: f32[3], %y: f33[3]) {\n  return %x\n}\n"
    assert_error_at(text, 1, 26, "unknown dtype 'f33'")
    text = "graph @f(%x: f32[3]) {\n  %0 = exp(%x) : float99[3]\n  return %0\n}\n"
    assert_error_at(text, 2, 18, "unknown dtype 'float99'")


def test_parse_error_annotation_disagrees_with_type_rule():
    text = "graph @f(%x: f32[3], %y: f32[2,1]) {\n  %0 = exp(%x) : f32[3]\n" \
           "  %1 = add(%0, %y) : f32[3,3]\n  return %1\n}\n"
    assert_error_at(text, 3, 8, "add: declared type f32[3,3] but the type rule gives f32[2,3]")
    text = "graph @f(%x: f32[3]) {\n  %0 = lt(%x, %x) : f32[3]\n  return %0\n}\n"
    assert_error_at(text, 2, 8, "lt: declared type f32[3] but the type rule gives bool[3]")


def test_parse_error_type_rule_rejects_operands():
    text = "graph @f(%x: f32[3], %y: f32[4]) {\n  %0 = add(%x, %y) : f32[3]\n  return %0\n}\n"
    err = parse_error(text)
    assert err.startswith("line 2, column 8: add: shapes [3] and [4] do not broadcast")


def test_parse_error_use_before_definition():
    text = "graph @f(%x: f32[3]) {\n  %0 = add(%x, %1) : f32[3]\n  %1 = exp(%x) : f32[3]\n" \
           "  return %0\n}\n"
    assert_error_at(text, 2, 16, "%1 is used before it is defined")
    text = "graph @f(%x: f32[3]) {\n  return %x, %y\n}\n"
    assert_error_at(text, 2, 14, "%y is used before it is defined")


def test_parse_error_value_defined_twice():
    text = "graph @f(%x: f32[3]) {\n  %0 = exp(%x) : f32[3]\n  %0 = log(%x) : f32[3]\n" \
           "  return %0\n}\n"
    assert_error_at(text, 3, 3, "%0 is defined twice")
    text = "graph @f(%x: f32[3]) state(%x: f32[3]) {\n  return %x\n}\n"
    assert_error_at(text, 1, 28, "%x is defined twice")


def test_parse_error_update_of_non_state():
    text = "graph @f(%x: f32[3]) state(%w: f32[3]) {\n  %0 = exp(%x) : f32[3]\n" \
           "  update %x = %0\n  return %0\n}\n"
    assert_error_at(text, 3, 10, "update of %x, which is not state")


def test_parse_error_update_with_wrong_type():
    text = "graph @f(%x: f32[3]) state(%w: f32[2]) {\n  update %w = %x\n  return\n}\n"
    err = parse_error(text)
    assert err.startswith("line 2, column ")
    assert "f32[3]" in err and "f32[2]" in err


def test_parse_error_state_updated_twice():
    text = "graph @f(%x: f32[3]) state(%w: f32[3]) {\n  update %w = %x\n  update %w = %w\n" \
           "  return\n}\n"
    err = parse_error(text)
    assert err.startswith("line 3, column ")
    assert "%w" in err


def test_parse_error_missing_closing_brace():
    text = "graph @f(%x: f32[3]) {\n  %0 = exp(%x) : f32[3]\n  return %0"
    assert_error_at(text, 3, 12, "expected '}', got end of input")
    text = "graph @f(%x: f32[3]) {\n  return %x\ngraph @g() {\n  return\n}\n"
    assert_error_at(text, 3, 1, "expected '}', got 'graph'")


def test_parse_error_garbage_characters():
    text = "graph @f(%x: f32[3]) {\n  %0 = exp(%x) $ : f32[3]\n  return %0\n}\n"
    assert_error_at(text, 2, 16, "unexpected character '$'")
    text = "graph @f(%x: f32[3]) {\n\n  return %x\n}\n;\n"
    assert_error_at(text, 5, 1, "unexpected character ';'")


def test_parse_error_other_positions():
    cases = [
        ("graph @f(%x: f32[3]) {\n  return %x\n}\nextra\n", 4, 1,
         "text after the end of the graph"),
        ("graph @f(%x: f32[3]) {\n  exp(%x)\n  return %x\n}\n", 2, 3,
         "expected a statement, got 'exp'"),
        ("graph @f(%x: f32[-3]) {\n  return %x\n}\n", 1, 18,
         "a dimension must be a non-negative integer, got -3"),
        (("graph @f(%x: f32[3]) {\n  %0 = sum(%x) {axis=[0], axis=[0]} : f32[]\n"
          "  return %0\n}\n"), 2, 27, "attribute axis is given twice"),
        (("graph @f(%x: f32[3]) {\n  %0 = sum(%x) {axis=[0], keepdims=maybe} : f32[]\n"
          "  return %0\n}\n"), 2, 36, "unknown attribute value 'maybe'"),
        (("graph @f(%x: f32[3]) {\n  %0 = sum(%x) {axes=[0], keepdims=false} : f32[]\n"
          "  return %0\n}\n"), 2, 8,
         "sum: unknown attribute(s) ['axes']; it takes ['axis', 'keepdims']"),
        ("graph f(%x: f32[3]) {\n  return %x\n}\n", 1, 7, "expected symbol, got 'f'"),
        ("graph @f(%x f32[3]) {\n  return %x\n}\n", 1, 13, "expected ':', got 'f32'"),
    ]
    for text, line, col, message in cases:
        assert_error_at(text, line, col, message)


@pytest.mark.parametrize("line", [
    "%0 = reshape(%x) {shape=6} : f32[6]",
    "%0 = reshape(%x) {shape=[\"a\"]} : f32[6]",
    "%0 = transpose(%x) {perm=none} : f32[6]",
    "%0 = constant() {value=\"a\"} : f32[]",
    "%0 = constant() {value=none} : f32[]",
    "%0 = constant() {value=[1.0, [2.0]]} : f32[2]",
])
def test_ill_typed_attribute_values_are_parse_errors(line):
    text = "graph @f(%x: f32[6]) {\n  " + line + "\n  return %0\n}\n"
    err = parse_error(text)
    assert err.startswith("line 2, column 8: ")


def test_parse_ignores_comment_lines_and_reads_headers():
    text = "# ---- after 03 simplify (changed, 0.1 ms) ----\n# remark: x\n" \
           "graph @f(%x: f32[3]) {\n  # a comment line\n  %0 = exp(%x) : f32[3]  # not a loc\n" \
           "  return %0  # done\n}\n# trailing\n"
    g = parse(text)
    assert [n.op for n in g.nodes] == ["exp"] and g.nodes[0].loc is None
    assert print_graph(g) == norm("""
        graph @f(%x: f32[3]) {
          %0 = exp(%x) : f32[3]
          return %0
        }
    """)



# --- tracing: types and source locations ------------------------------------------------------


def _model(x, w):
    h = lm.tanh(x @ w)
    return (h * 2.0).sum(axis=1)


def test_trace_text_has_types_and_source_lines():
    lines, start = inspect.getsourcelines(_model)
    line_h = start + next(i for i, s in enumerate(lines) if "lm.tanh" in s)
    line_r = start + next(i for i, s in enumerate(lines) if "return" in s)
    g = lm.trace(_model, np.ones((2, 3), np.float32), lm.TensorType((3, 4), "f32"))
    expected = norm("""
        graph @_model(%x: f32[2,3], %w: f32[3,4]) {
          %0 = matmul(%x, %w) : f32[2,4]                                  # test_ir_text.py:H
          %1 = tanh(%0) : f32[2,4]                                        # test_ir_text.py:H
          %2 = constant() {value=2.0} : f32[]                             # test_ir_text.py:R
          %3 = mul(%1, %2) : f32[2,4]                                     # test_ir_text.py:R
          %4 = sum(%3) {axis=[1], keepdims=false} : f32[2]                # test_ir_text.py:R
          return %4
        }
    """).replace(":H", f":{line_h}").replace(":R", f":{line_r}")
    assert print_graph(g) == expected
    assert g.nodes[0].loc.file == __file__ and g.nodes[0].loc.line == line_h
    again = parse(expected)
    assert print_graph(again) == expected
    assert_same_behaviour(g, again, np.random.default_rng(2))


def test_trace_locations_point_into_nested_helpers():
    def helper(v):
        return lm.exp(v)

    def outer(x):
        y = helper(x)
        return y + 1.0

    _, start = inspect.getsourcelines(helper)
    line_exp = start + 1
    _, start = inspect.getsourcelines(outer)
    line_add = start + 2
    g = lm.trace(outer, np.ones(3, np.float32))
    assert [(n.op, n.loc.line) for n in g.nodes] == [
        ("exp", line_exp), ("constant", line_add), ("add", line_add)]
    assert all(n.loc.note == "" for n in g.nodes)


# --- networkx ---------------------------------------------------------------------------------


def test_to_networkx_is_a_dag_with_the_right_counts():
    g = roundtrip(STATE)
    dg = g.to_networkx()
    assert isinstance(dg, nx.DiGraph)
    assert nx.is_directed_acyclic_graph(dg)
    assert dg.number_of_nodes() == len(g.params) + len(g.nodes) == 5 + 6
    expected_edges = {(v, n) for n in g.nodes for v in n.inputs}
    assert set(dg.edges()) == expected_edges
    assert dg.number_of_edges() == 9
    assert dg.nodes[g.inputs[0]]["label"] == "%x" and dg.nodes[g.nodes[0]]["label"] == "mul"
    order = list(nx.topological_sort(dg))
    assert order.index(g.state[0]) < order.index(g.nodes[0]) < order.index(g.nodes[3])


def test_to_networkx_repeated_operand_is_one_edge():
    g = parse(norm("""
        graph @sq(%x: f32[3]) {
          %0 = mul(%x, %x) : f32[3]
          %1 = add(%0, %0) : f32[3]
          return %1
        }
    """))
    dg = g.to_networkx()
    assert dg.number_of_nodes() == 3 and dg.number_of_edges() == 2
    assert nx.is_directed_acyclic_graph(dg)
