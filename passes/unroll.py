"""Unrolling: a ``scan`` or ``fori_loop`` replaced by its body, inlined once per step.

For backends without a loop lowering of their own: the unrolled graph computes the same values
with ordinary ops (a step's slice of a stacked input is a ``slice``, the stacked outputs a
``concatenate``), at the cost that the graph, and its compile time, grow with the trip count.
A ``while_loop`` has no static trip count and cannot be unrolled: it is an error here.
"""

from __future__ import annotations

from collections import Counter

from lamina.ir import dtypes as dt
from lamina.ir.builder import Builder
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Value
from lamina.ir.ops.loop import LOOP_OPS, scan_parts
from lamina.passes.manager import remark


def inline(b: Builder, region: Graph, args: list[Value]) -> list[Value]:
    """Append ``region``'s nodes to ``b`` reading ``args`` for its parameters; its results."""
    env: dict[Value, Value] = dict(zip(region.inputs, args))
    for n in region.nodes:
        b.loc = n.loc
        env[n] = b.emit(n.op, [env[v] for v in n.inputs], n.attrs, region=n.region)
    return [env[v] for v in region.outputs]


def _step_slice(b: Builder, xs: Value, t: int) -> Value:
    shape = xs.shape
    start = (t,) + (0,) * (len(shape) - 1)
    stop = (t + 1,) + tuple(shape[1:])
    s = b.emit("slice", (xs,), {"start": start, "stop": stop, "step": (1,) * len(shape)})
    return b.emit("reshape", (s,), {"shape": shape[1:]})


def _unroll_node(b: Builder, n: Node, ins: list[Value]) -> list[Value]:
    region = unroll_loops(n.region, keep_while=True)
    a = n.attrs
    if n.op == "fori_loop":
        consts, carry = ins[:a["num_consts"]], ins[a["num_consts"]:]
        for i in range(a["lower"], a["upper"]):
            index = b.constant(i, dt.int32)
            carry = inline(b, region, [index] + consts + carry)
        return carry
    if n.op == "scan":
        consts, carry, xs = scan_parts(ins, a)
        k = a["num_carry"]
        steps = range(a["length"])
        ys: list[list[Value]] = [[None] * a["length"] for _ in region.outputs[k:]]
        for t in (reversed(steps) if a["reverse"] else steps):
            index = b.constant(t, dt.int32)
            out = inline(b, region, [index] + consts + carry + [_step_slice(b, x, t) for x in xs])
            carry = out[:k]
            for j, y in enumerate(out[k:]):
                ys[j][t] = b.emit("reshape", (y,), {"shape": (1,) + y.shape})
        stacked = []
        for j, parts in enumerate(ys):
            t = n.type.types[k + j]
            if not parts:
                stacked.append(b.constant(0, t.dtype, t.shape))
            elif len(parts) == 1:
                stacked.append(parts[0])
            else:
                stacked.append(b.emit("concatenate", parts, {"axis": 0}))
        return carry + stacked
    raise LaminaError(f"{n.op} @{n.attrs['name']}: this backend cannot run a loop whose trip "
                      "count is known only at run time yet (use the numpy backend, or "
                      "lm.fori_loop with a static trip count)", n.loc)


def unroll_loops(g: Graph, keep_while: bool = False) -> Graph:
    """Every loop of ``g`` (and of loops within loops) unrolled; ``keep_while``: while_loops
    stay loops (their bodies unrolled), for a backend that runs them itself."""
    if not any(n.op in LOOP_OPS for n in g.nodes):
        return g
    b = Builder(g.name)
    b.inputs, b.state = list(g.inputs), list(g.state)
    env: dict[Value, Value] = {p: p for p in g.params}
    parts: dict[Node, list[Value]] = {}
    counts: Counter = Counter()
    for n in g.nodes:
        if n.op == "get" and n.inputs[0] in parts:
            env[n] = parts[n.inputs[0]][n.attrs["index"]]
            continue
        ins = [env[v] for v in n.inputs]
        b.loc = n.loc
        if n.op == "while_loop" and keep_while:
            env[n] = b.emit(n.op, ins, n.attrs, loc=n.loc,
                            region=unroll_loops(n.region, keep_while))
            continue
        if n.op in LOOP_OPS:
            parts[n] = _unroll_node(b, n, ins)
            counts[n.op] += 1
            continue
        env[n] = b.emit(n.op, ins, n.attrs, loc=n.loc, region=n.region) \
            if any(x is not y for x, y in zip(ins, n.inputs)) else _keep(b, n)
    for op, k in sorted(counts.items()):
        remark(f"unrolled {k} {op} node(s)")
    return g.replace(nodes=b.nodes, outputs=[env[v] for v in g.outputs],
                     updates={k: env[v] for k, v in g.updates.items()})


def unroll_static_loops(g: Graph) -> Graph:
    """:func:`unroll_loops` keeping while_loops."""
    return unroll_loops(g, keep_while=True)


unroll_static_loops.pass_name = "unroll"


def _keep(b: Builder, n: Node) -> Node:
    b.nodes.append(n)
    return n


unroll_loops.pass_name = "unroll"
