"""Dead-code elimination: drop nodes whose values reach no output and no state update."""

from __future__ import annotations

from lamina.ir.graph import Graph
from lamina.passes.manager import remark


def eliminate_dead_code(g: Graph) -> Graph:
    live = g.live_nodes()
    if len(live) == len(g.nodes):
        return g
    dead = [n for n in g.nodes if n not in live]
    ops = sorted({n.op for n in dead})
    remark(f"removed {len(dead)} dead node(s): {', '.join(ops)}")
    return g.replace(nodes=[n for n in g.nodes if n in live])


eliminate_dead_code.pass_name = "dce"
