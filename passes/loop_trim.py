"""Trimming scans: per-step work and memory that nothing needs, taken out of the loop.

Autodiff builds scans generically, and three kinds of waste follow:

* a stacked output (``ys``) that nothing after the loop reads (an LSTM's per-step outputs when
  the loss reads only its final state): every step stores it, and it holds T steps of memory;
* a constant or stacked operand that the body does not read (the backward scan receives every
  operand of the forward one);
* a stacked operand that is a splat constant (the zero cotangent of the unread outputs, T steps
  of zeros filled on every call): the body reads the same value at every step, so it becomes a
  constant inside the body (one step's worth; ``add(x, 0.0)`` stays: it is not ``x`` for -0.0).

    %ys = constant() {value=0.0} : f32[50,32,128]
    %s = scan @step_grad(%w, %h, %ys) {num_consts=1, num_carry=1, ...}   # the body: x + %y
  becomes
    %s = scan @step_grad(%w, %h) {num_consts=1, num_carry=1, ...}   # the body: x + 0.0

Carries stay (they feed the next step). Results are read through ``get`` nodes, renumbered here.
"""

from __future__ import annotations

from collections.abc import Iterable

from lamina.ir.builder import Builder
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.source import is_splat
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite


def trim_scans(g: Graph) -> Graph:
    """Drop unread stacked outputs and unread operands of every scan, and move splat stacked
    operands into the body (see the module docstring)."""
    scans = [n for n in g.nodes if n.op == "scan"]
    if not scans:
        return g
    live = g.live_nodes()
    read: dict[Node, set[int] | None] = {n: set() for n in scans}
    for n in g.nodes:
        if n not in live:
            continue
        for v in n.inputs:
            if v in read:
                if n.op != "get":  # the results read whole: leave this scan alone
                    read[v] = None
                elif read[v] is not None:
                    read[v].add(n.attrs["index"])
    for v in (*g.outputs, *g.updates.values()):
        if v in read:
            read[v] = None
    trimmed: dict[Node, tuple[Node, dict[int, int]]] = {}
    said = []

    def rule(b: Builder, n: Node, ins: list[Value]):
        if n.op == "get" and n.inputs[0] in trimmed:
            new, index = trimmed[n.inputs[0]]
            return b.emit("get", [new], {"index": index[n.attrs["index"]]}, loc=n.loc)
        if n.op != "scan" or n not in live or read.get(n) is None:
            return None
        out = _trim(b, n, ins, read[n])
        if out is None:
            return None
        trimmed[n] = out[:2]
        said.append(f"@{n.attrs['name']}: {out[2]}")
        return out[0]

    # (dead nodes left out: a dead get may name a dropped output)
    new = rewrite(g.replace(nodes=[n for n in g.nodes if n in live]), rule)
    for line in said:
        remark(line)
    return new if trimmed else g


def _trim(b: Builder, n: Node, ins: list[Value], read: set[int]):
    """(the new scan, old result index -> new, what changed), or None when nothing does."""
    region, a = n.region, n.attrs
    nc, nk = a["num_consts"], a["num_carry"]
    body_ins = region.inputs  # [index, consts..., carries..., slices...]
    ny = len(region.outputs) - nk
    keep_ys = [j for j in range(ny) if nk + j in read]
    splats = {k for k in range(len(ins) - nc - nk) if is_splat(ins[nc + nk + k])}
    # the body without the dropped outputs, splat slices as constants inside
    rb = Builder(region.name)
    env: dict[Value, Value] = {p: p for p in body_ins}
    for k in splats:
        p, c = body_ins[1 + nc + nk + k], ins[nc + nk + k]
        rb.loc = c.loc
        env[p] = rb.emit("constant", [], {"value": c.attrs["value"], "dtype": p.type.dtype,
                                          "shape": p.type.shape}, loc=c.loc)
    outputs = region.outputs[:nk] + [region.outputs[nk + j] for j in keep_ys]
    need = region.live_nodes(outputs)
    for m in region.nodes:
        if m not in need:
            continue
        ins_m = [env[v] for v in m.inputs]
        if all(x is y for x, y in zip(ins_m, m.inputs)):
            rb.nodes.append(m)
            env[m] = m
        else:
            rb.loc = m.loc
            env[m] = rb.emit(m.op, ins_m, m.attrs, loc=m.loc, region=m.region)
    used = _read_params(rb.nodes, [env[v] for v in outputs])
    keep_c = [k for k in range(nc) if body_ins[1 + k] in used]
    keep_x = [k for k in range(len(ins) - nc - nk)
              if k not in splats and body_ins[1 + nc + nk + k] in used]
    dropped_y, dropped_c = ny - len(keep_ys), nc - len(keep_c)
    dropped_x = len(ins) - nc - nk - len(keep_x)
    if not (dropped_y or dropped_c or dropped_x):
        return None
    rb.inputs = ([body_ins[0]] + [body_ins[1 + k] for k in keep_c] +
                 list(body_ins[1 + nc:1 + nc + nk]) + [body_ins[1 + nc + nk + k] for k in keep_x])
    body = rb.build([env[v] for v in outputs])
    operands = ([ins[k] for k in keep_c] + ins[nc:nc + nk] + [ins[nc + nk + k] for k in keep_x])
    attrs = dict(a, num_consts=len(keep_c))
    b.loc = n.loc
    new = b.emit("scan", operands, attrs, loc=n.loc, region=body)
    index = {k: k for k in range(nk)}
    index.update({nk + j: nk + i for i, j in enumerate(keep_ys)})
    parts = [f"{x} {what}" for x, what in ((dropped_y, "unread stacked output(s)"),
                                           (dropped_c, "unread constant(s)"),
                                           (dropped_x, "stacked operand(s) unread or splat"))
             if x]
    return new, index, "dropped " + ", ".join(parts)


def _read_params(nodes: Iterable[Node], outputs: Iterable[Value]) -> set[Param]:
    out = {v for n in nodes for v in n.inputs if isinstance(v, Param)}
    out.update(v for v in outputs if isinstance(v, Param))
    return out


trim_scans.pass_name = "trim_scans"
