"""Loops on the triton backend: a ``scan``, ``fori_loop`` or ``while_loop`` runs on the host,
launching its body's kernels once per step. Neither the kernels nor the compile time grow with
the trip count (an unrolled loop would), and the carries stay where the kernels left them (on
the GPU, in device memory).

A loop body is planned and rendered like the top level, as a graph of its own (``Level``): its
kernels, fused by the backend's passes (``in_loop_bodies``), read the body's parameters
(the step index, the loop's constants, the current carries, scan: the step's slices of the
stacked inputs) and write its results (the next carries, scan: the step's slices of the
stacked outputs). A while_loop has two levels, its condition and its body (``split_while``),
so that the body runs only when the condition holds.

The runtimes (``interpret.py``, ``device.py``) step through a loop the same way:

    start:  cur = init
    step i: body(i, consts, cur, xs[i]) -> (nxt, ys[i]);  swap cur and nxt
    end:    each carry's result = cur

On the GPU nothing is copied per step: the body's pointers are set to the step's buffers
(``xs[i]`` and ``ys[i]`` are addresses inside the stacked buffers, so stacked outputs are
written in place) and ``cur`` and ``nxt`` swap roles. Only a while_loop's condition is read back
by the host, once per step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.backends.triton.spec import KernelSource
from lamina.ir.graph import Graph, Node
from lamina.ir.ops.loop import LOOP_OPS, split_while
from lamina.passes.memory import MemoryPlan


@dataclass
class Level:
    """A graph as the triton runtime runs it: its memory plan, its kernels' sources in
    schedule order, and for each loop node the levels of its parts (scan, fori_loop: the body;
    while_loop: the condition, then the body)."""

    graph: Graph
    plan: MemoryPlan
    sources: list[tuple[Node, KernelSource]] = field(default_factory=list)
    loops: dict[Node, list[Level]] = field(default_factory=dict)

    def levels(self):
        """This level and every level within it, depth first in schedule order."""
        yield self
        for n in self.plan.schedule:
            for part in self.loops.get(n, ()):
                yield from part.levels()

    def all_sources(self) -> list[tuple[Node, KernelSource]]:
        """Every kernel of this level and of the loops within, in ``levels`` order (the
        order an artifact stores them in)."""
        return [s for lv in self.levels() for s in lv.sources]


def loop_parts(node: Node) -> list[Graph]:
    """The graphs a loop node runs per step: [body], or a while_loop's [condition, body]."""
    return list(split_while(node.region)) if node.op == "while_loop" else [node.region]


def plan_levels(graph: Graph, plan_fn, render_fn=None) -> Level:
    """The ``Level`` tree of ``graph``: ``plan_fn(graph)`` plans each graph,
    ``render_fn(graph, plan)`` renders its kernels (None: no sources, for an artifact whose
    sources are read from its file)."""
    plan = plan_fn(graph)
    level = Level(graph, plan, render_fn(graph, plan) if render_fn else [])
    for n in plan.schedule:
        if n.op in LOOP_OPS:
            level.loops[n] = [plan_levels(g, plan_fn, render_fn) for g in loop_parts(n)]
    return level


def steps(node: Node) -> range | None:
    """The step indices a scan or fori_loop runs through, in order (a reverse scan counts
    down); None for a while_loop."""
    a = node.attrs
    if node.op == "scan":
        return range(a["length"] - 1, -1, -1) if a["reverse"] else range(a["length"])
    if node.op == "fori_loop":
        return range(a["lower"], a["upper"])
    return None


def results(graph: Graph, node: Node, located) -> dict[int, Node]:
    """The ``get`` nodes of ``graph`` that read the results of loop ``node`` and have a place
    in memory (``located``), by result index."""
    return {g.attrs["index"]: g for g in graph.nodes
            if g.op == "get" and g.inputs[0] is node and g in located}
