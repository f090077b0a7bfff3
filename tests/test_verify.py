"""The verifier: hand-built broken graphs each raise VerifyError naming the problem."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_ir_text import WITH_GRAD

from lamina.ir import (
    Graph,
    Node,
    Param,
    SourceLoc,
    TensorType,
    VerifyError,
    interpret,
    parse,
    print_graph,
    verify,
)


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
    return g.replace(outputs=list(g.outputs) + list(g.nodes))


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


# --- the verifier -----------------------------------------------------------------------------

F3 = TensorType((3,), "f32")


def _x():
    return Param("x", F3)


def verify_error(g: Graph, **kw) -> str:
    with pytest.raises(VerifyError) as info:
        verify(g, **kw)
    return str(info.value)


def test_verify_accepts_a_good_graph_and_returns_it():
    x = _x()
    e = Node("exp", (x,), {}, F3)
    s = Node("sum", (e,), {"axis": (0,), "keepdims": False}, TensorType((), "f32"))
    g = Graph("ok", [x], [], [e, s], [s])
    assert verify(g) is g


def test_verify_operand_used_before_definition():
    x = _x()
    e = Node("exp", (x,), {}, F3)
    t = Node("tanh", (e,), {}, F3)
    g = Graph("f", [x], [], [t, e], [t])
    err = verify_error(g)
    assert err.startswith("@f: operand %1 is used before it is defined")
    assert "in: %0 = tanh(%1) : f32[3]" in err


def test_verify_operand_from_another_graph():
    x = _x()
    stranger = Node("exp", (Param("y", F3),), {}, F3)
    t = Node("tanh", (stranger,), {}, F3)
    err = verify_error(Graph("f", [x], [], [t], [t]))
    assert "operand %<undefined> is used before it is defined" in err


def test_verify_wrong_result_type():
    x = _x()
    e = Node("exp", (x,), {}, TensorType((3,), "f64"))
    err = verify_error(Graph("f", [x], [], [e], [e]))
    assert err.startswith("@f: result type f64[3] differs from the type rule's f32[3]")
    assert "in: %0 = exp(%x) : f64[3]" in err


def test_verify_non_canonical_attrs():
    x = _x()
    s = Node("sum", (x,), {"axis": (-1,), "keepdims": False}, TensorType((), "f32"))
    err = verify_error(Graph("f", [x], [], [s], [s]))
    assert err.startswith("@f: attributes are not canonical: {'axis': (-1,), 'keepdims': False} "
                          "(expected {'axis': (0,), 'keepdims': False})")
    r = Node("reshape", (x,), {"shape": [3]}, F3)  # a list, not a tuple
    assert "attributes are not canonical" in verify_error(Graph("f", [x], [], [r], [r]))


def test_verify_attrs_in_non_canonical_order():
    # The printer writes attributes in dict order; a different order prints differently.
    x = _x()
    s = Node("sum", (x,), {"keepdims": False, "axis": (0,)}, TensorType((), "f32"))
    err = verify_error(Graph("f", [x], [], [s], [s]))
    assert "attributes are not canonical" in err


def test_verify_ill_typed_attrs_are_verify_errors():
    x = _x()
    r = Node("reshape", (x,), {"shape": 3}, F3)
    err = verify_error(Graph("f", [x], [], [r], [r]))
    assert "reshape" in err


def test_verify_missing_or_unknown_attrs():
    x = _x()
    s = Node("sum", (x,), {"axis": (0,)}, TensorType((), "f32"))
    assert "keepdims" in verify_error(Graph("f", [x], [], [s], [s]))
    e = Node("exp", (x,), {"fast": True}, F3)
    assert "exp: unknown attribute(s) ['fast']" in verify_error(Graph("f", [x], [], [e], [e]))


def test_verify_unknown_op():
    x = _x()
    e = Node("expp", (x,), {}, F3)
    err = verify_error(Graph("f", [x], [], [e], [e]))
    assert err.startswith("@f: unknown op 'expp'")


def test_verify_wrong_arity():
    x = _x()
    e = Node("exp", (x, x), {}, F3)
    assert verify_error(Graph("f", [x], [], [e], [e])).startswith("@f: exp takes 1 inputs, has 2")


def test_verify_update_type_mismatch():
    x = _x()
    w = Param("w", TensorType((3,), "f64"), "state")
    e = Node("exp", (x,), {}, F3)
    err = verify_error(Graph("f", [x], [w], [e], [], {"w": e}))
    assert err == "@f: update of %w: f32[3] does not match the state's f64[3]"


def test_verify_update_of_unknown_state_and_undefined_values():
    x = _x()
    e = Node("exp", (x,), {}, F3)
    err = verify_error(Graph("f", [x], [], [e], [], {"x": e}))
    assert err == "@f: update of %x, which is not state"
    w = Param("w", F3, "state")
    err = verify_error(Graph("f", [x], [w], [], [], {"w": e}))
    assert err == "@f: update of %w uses an undefined value"
    err = verify_error(Graph("f", [x], [], [], [e]))
    assert err == "@f: output %<undefined> is not defined in the graph"


def test_verify_duplicate_parameter_names():
    x = _x()
    err = verify_error(Graph("f", [x], [Param("x", F3, "state")], [], [x]))
    assert err == "@f: parameter %x is declared twice"
    err = verify_error(Graph("f", [x, Param("x", F3)], [], [], [x]))
    assert err == "@f: parameter %x is declared twice"


def test_verify_bad_parameter_name():
    p = Param("my x", F3)
    assert verify_error(Graph("f", [p], [], [], [p])) == "@f: bad parameter name 'my x'"


def test_verify_node_listed_twice():
    x = _x()
    e = Node("exp", (x,), {}, F3)
    assert "a node appears twice" in verify_error(Graph("f", [x], [], [e, e], [e]))


def test_verify_grad_left_after_autodiff():
    g = parse(norm(WITH_GRAD))
    verify(g)  # allowed by default
    err = verify_error(g, allow_grad=False)
    assert err.startswith("@with_grad: grad node left after autodiff")
    assert "in: %2 = grad(%1, %x) : f32[3]" in err


def test_verify_composite_left_after_decomposition():
    g = parse("graph @f(%x: f32[2,3]) {\n  %0 = exp(%x) : f32[2,3]\n"
              "  %1 = softmax(%0) {axis=1} : f32[2,3]\n  return %1\n}\n")
    verify(g)
    verify(g, allow_grad=False)
    err = verify_error(g, allow_composite=False)
    assert err.startswith("@f: composite op softmax left after decomposition")
    assert "in: %1 = softmax(%0) {axis=1} : f32[2,3]" in err


def test_verify_error_carries_the_node_location():
    x = _x()
    e = Node("exp", (x,), {}, TensorType((4,), "f32"), SourceLoc("model.py", 3))
    with pytest.raises(VerifyError) as info:
        verify(Graph("f", [x], [], [e], [e]))
    assert info.value.loc == SourceLoc("model.py", 3)
    assert "# model.py:3" in info.value.message
