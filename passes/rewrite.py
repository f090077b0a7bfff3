"""The one loop most passes share: rebuild a graph node by node, letting a rule replace nodes.

Unchanged nodes are reused (nodes are immutable), so a pass that changes nothing returns a graph
made of the same node objects, and ``changed`` can tell.
"""

from __future__ import annotations

from collections.abc import Callable

from lamina.ir.builder import Builder
from lamina.ir.graph import Graph, Node, Value

# rule(builder, node, inputs) -> a Value to use instead of the node, or None to keep it.
# ``inputs`` are the node's operands in the new graph; the builder's loc is the node's.
Rule = Callable[[Builder, Node, list[Value]], "Value | None"]


def rewrite(g: Graph, rule: Rule, builder: Builder | None = None) -> Graph:
    b = builder or Builder(g.name)
    b.inputs, b.state = list(g.inputs), list(g.state)
    env: dict[Value, Value] = {p: p for p in g.params}
    for n in g.nodes:
        ins = [env[v] for v in n.inputs]
        b.loc = n.loc
        new = rule(b, n, ins)
        if new is None:
            new = copy_node(b, n, ins)
        env[n] = new
    return g.replace(nodes=b.nodes, outputs=[env[v] for v in g.outputs],
                     updates={k: env[v] for k, v in g.updates.items()})


def copy_node(b: Builder, n: Node, ins: list[Value]) -> Node:
    """``n`` itself when its operands are unchanged, else a copy reading the new operands."""
    if all(a is c for a, c in zip(ins, n.inputs)):
        b.nodes.append(n)
        return n
    m = Node(n.op, ins, n.attrs, n.type, n.loc, n.region)
    b.nodes.append(m)
    return m


def changed(before: Graph, after: Graph) -> bool:
    """Whether a pass changed anything (by node identity; cheap)."""
    if before is after:
        return False
    if len(before.nodes) != len(after.nodes) or len(before.outputs) != len(after.outputs):
        return True
    if any(a is not b for a, b in zip(before.nodes, after.nodes)):
        return True
    if any(a is not b for a, b in zip(before.outputs, after.outputs)):
        return True
    return before.updates.keys() != after.updates.keys() or any(
        before.updates[k] is not after.updates[k] for k in before.updates)
