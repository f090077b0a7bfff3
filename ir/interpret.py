"""The reference interpreter: runs a Graph by calling each op's numpy ``ref``.

It is the specification of every op: tests compare backends with it, constant folding runs
through it, and the numpy backend is a thin wrapper around it.
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node
from lamina.ir.ops.registry import get as get_op


def eval_node(node: Node, args: list[np.ndarray]) -> np.ndarray:
    """One node's value from its operands' values, with the dtype and shape of its type."""
    opdef = get_op(node.op)
    if node.op == "kernel":  # a fused region: run its body
        return interpret(node.region, args)[0][0]
    if opdef.region:  # a loop: its value is a tuple of arrays
        try:
            out = opdef.ref(*args, region=node.region, **node.attrs)
        except LaminaError as e:
            raise e.at(node.loc) from None
        for a, t in zip(out, node.type.types):
            if a.dtype != t.dtype.np or a.shape != t.shape:
                raise LaminaError(f"{node.op}: the reference gave {a.dtype}{list(a.shape)} "
                                  f"for a result of type {t} (a bug)", node.loc)
        return out
    if opdef.kind == "loop":  # get: one part of a loop's value
        return opdef.ref(*args, **node.attrs)
    try:
        with np.errstate(all="ignore"):  # inf/nan propagate like IEEE hardware, no warnings
            out = opdef.ref(*args, **node.attrs)
    except LaminaError as e:
        raise e.at(node.loc) from None
    except (IndexError, ValueError, ArithmeticError) as e:
        raise LaminaError(f"{node.op} failed at run time: {e}", node.loc) from None
    out = np.asarray(out)
    if out.dtype != node.type.dtype.np:
        out = out.astype(node.type.dtype.np)
    if out.shape != node.type.shape:
        raise LaminaError(f"{node.op}: the reference gave shape {list(out.shape)}, the type "
                          f"rule {node.type} (a bug in the op's declaration)", node.loc)
    return out


def interpret(graph: Graph, inputs, state: dict | None = None):
    """Run ``graph`` on numpy arrays.

    Returns ``(outputs, updates)``: the list of output arrays and a dict of new state values.

    >>> from lamina.ir import parse
    >>> g = parse('graph @f(%x: f32[2]) {\\n %0 = exp(%x) : f32[2]\\n return %0\\n}')
    >>> interpret(g, [np.zeros(2, np.float32)])[0]
    [array([1., 1.], dtype=float32)]
    """
    inputs = list(inputs)
    if len(inputs) != len(graph.inputs):
        raise LaminaError(f"@{graph.name} takes {len(graph.inputs)} inputs, got {len(inputs)}")
    state = state or {}
    env = {}
    for p, a in zip(graph.inputs, inputs):
        env[p] = _checked(np.asarray(a), p, "input")
    for p in graph.state:
        if p.name not in state:
            raise LaminaError(f"@{graph.name}: no value given for state %{p.name}")
        env[p] = _checked(np.asarray(state[p.name]), p, "state")
    for n in graph.nodes:
        env[n] = eval_node(n, [env[v] for v in n.inputs])
    outputs = [env[v] for v in graph.outputs]
    updates = {k: env[v] for k, v in graph.updates.items()}
    return outputs, updates


def _checked(a: np.ndarray, p, what: str) -> np.ndarray:
    if a.shape != p.type.shape or a.dtype != p.type.dtype.np:
        raise LaminaError(f"{what} %{p.name}: expected {p.type}, got "
                          f"{a.dtype.name}{list(a.shape)}")
    return a
