"""Loop-invariant code motion: work in a loop's body that does not change from step to step,
computed once before the loop.

A body node is invariant when it reads only the loop's constants (weights, captured values) and
other invariant nodes. Hoisted are the invariant nodes worth computing once: products and
reductions (a step would repeat them), and transposes that a product reads (a weight used as
``W.T`` in every step: the GEMM then reads it in the layout it packs fastest, instead of
gathering the transposed matrix in every step). Cheap elementwise work stays in the body,
where fusion folds it into the kernels that use it. A hoisted value becomes a new constant
operand of the loop.

    %w2 = transpose(%w)                       # before the loop, once
    %5 = scan @body(%w, %w2, ...) {num_consts=2, ...}   # the body reads %w2
"""

from __future__ import annotations

from collections import Counter

from lamina.ir.builder import Builder
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.loop import LOOP_OPS
from lamina.ir.ops.registry import get as get_op
from lamina.passes.manager import remark

WORTH = {"matmul", "conv", "sum", "max", "min", "argmax", "cumsum"}


def _invariant(region: Graph, nc: int) -> set[Node]:
    consts = set(region.inputs[1:1 + nc])
    inv: set[Node] = set()
    for n in region.nodes:
        kind = get_op(n.op).kind
        if kind in ("random", "loop", "special") or n.region is not None:
            continue
        if n.inputs and all(v in consts or v in inv for v in n.inputs):
            inv.add(n)
    return inv


def _hoisted(region: Graph, inv: set[Node]) -> list[Node]:
    """The invariant nodes to compute before the loop: the worthwhile ones that a stepwise
    node (or a result) reads, with the invariant nodes they need."""
    users: dict[Value, list[Node]] = {}
    for n in region.nodes:
        for v in n.inputs:
            users.setdefault(v, []).append(n)
    results = set(region.outputs)
    pick: list[Node] = []
    for n in region.nodes:
        if n not in inv:
            continue
        outside = [u for u in users.get(n, []) if u not in inv]
        if not outside and n not in results:
            continue  # read only by other invariant nodes: hoisted with them if at all
        if n.op in WORTH or (n.op == "transpose" and any(u.op == "matmul" for u in outside)):
            pick.append(n)
    return pick


def hoist_loop_invariants(g: Graph) -> Graph:
    """Hoist the worthwhile invariant work of every loop body (see the module docstring)."""
    if not any(n.op in LOOP_OPS for n in g.nodes):
        return g
    b = Builder(g.name)
    b.inputs, b.state = list(g.inputs), list(g.state)
    env: dict[Value, Value] = {p: p for p in g.params}
    moved: Counter = Counter()
    for n in g.nodes:
        ins = [env[v] for v in n.inputs]
        b.loc = n.loc
        if n.op not in LOOP_OPS:
            env[n] = b.emit(n.op, ins, n.attrs, loc=n.loc, region=n.region) \
                if any(x is not y for x, y in zip(ins, n.inputs)) else _keep(b, n)
            continue
        region, nc = n.region, n.attrs["num_consts"]
        pick = _hoisted(region, _invariant(region, nc))
        if not pick:
            env[n] = b.emit(n.op, ins, n.attrs, loc=n.loc, region=region)
            continue
        # the picked nodes (and the invariant nodes they read) before the loop
        outer: dict[Value, Value] = dict(zip(region.inputs[1:1 + nc], ins[:nc]))
        need = _cone(pick, outer)
        for m in region.nodes:
            if m in need:
                b.loc = m.loc
                outer[m] = b.emit(m.op, [outer[v] for v in m.inputs], m.attrs, loc=m.loc)
        # the body reads them as new constants
        rb = Builder(region.name)
        names = {p.name for p in region.inputs}
        inner: dict[Value, Value] = {}
        params = list(region.inputs)
        new_params = []
        for k, m in enumerate(pick):
            name, j = f"hoisted{k}", 1
            while name in names:
                name, j = f"hoisted{k}_{j}", j + 1
            names.add(name)
            p = Param(name, m.type)
            new_params.append(p)
            inner[m] = p
        rb.inputs = params[:1 + nc] + new_params + params[1 + nc:]
        for p in region.inputs:
            inner[p] = p
        keep = _live_after(region, inner)
        for m in region.nodes:
            if m in inner or m not in keep:
                continue
            rb.loc = m.loc
            inner[m] = rb.emit(m.op, [inner[v] for v in m.inputs], m.attrs, loc=m.loc,
                               region=m.region)
        body = rb.build([inner[v] for v in region.outputs])
        operands = ins[:nc] + [outer[m] for m in pick] + ins[nc:]
        attrs = dict(n.attrs, num_consts=nc + len(pick))
        b.loc = n.loc
        env[n] = b.emit(n.op, operands, attrs, loc=n.loc, region=body)
        moved[n.attrs["name"]] += len(pick)
    for name, k in sorted(moved.items()):
        remark(f"@{name}: {k} loop-invariant value(s) computed once before the loop")
    return g.replace(nodes=b.nodes, outputs=[env[v] for v in g.outputs],
                     updates={k: env[v] for k, v in g.updates.items()})


def _cone(pick: list[Node], known: dict) -> set[Node]:
    out: set[Node] = set()
    stack = list(pick)
    while stack:
        v = stack.pop()
        if v in known or v in out or not isinstance(v, Node):
            continue
        out.add(v)
        stack.extend(v.inputs)
    return out


def _live_after(region: Graph, replaced: dict) -> set[Node]:
    """The body's nodes still needed once the hoisted ones are parameters."""
    out: set[Node] = set()
    stack = list(region.outputs)
    while stack:
        v = stack.pop()
        if v in replaced and isinstance(replaced[v], Param) and v not in region.inputs:
            continue
        if not isinstance(v, Node) or v in out:
            continue
        out.add(v)
        stack.extend(v.inputs)
    return out


def _keep(b: Builder, n: Node) -> Node:
    b.nodes.append(n)
    return n


hoist_loop_invariants.pass_name = "licm"
