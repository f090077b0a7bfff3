"""Loops on the CPU: a ``scan``, ``fori_loop`` or ``while_loop`` runs as a real loop in the
entry function, calling its body once per step. The compiled code does not grow with the trip
count (an unrolled loop would).

The body region (fused like the top level: ``in_loop_bodies`` runs the backend's passes on
it) is compiled as a function of its own with the entry's ABI, ``i32 f(i8** bufs, i32
nthreads)``, over its own memory plan: its inputs are the step index, the loop's constants,
the current carries and (scan) the step's slices of the stacked inputs; its outputs the next
carries and (scan) the step's slices of the stacked outputs; its arena a part of the loop's
scratch. A while_loop has two such functions: the condition (the nodes its result depends on)
and the body (the rest, recomputing what they share), so the body runs only when the
condition holds.

The loop's scratch (in the enclosing arena, live while the loop runs) holds the current and
next carries and the bodies' arena:

    entry:  cur = init (copied)
    step t: body(i, consts, cur, xs[t] -> nxt, ys[t]) at even t,
            body(i, consts, nxt, xs[t] -> cur, ys[t]) at odd t (the buffers take turns: no
            copy per step; an LSTM step's two 16 KiB carries each way were ~3% of its time)
    end:    each carry's result buffer = the one the last step wrote

Stacked outputs are written in place, slice t of the result buffer at step t. A carry that
the body also yields unchanged per step (the state a step started from: what a backward pass
saves of an RNN's h and c) lives in that stacked output instead (``Codegen.carries_in_stack``):
step t reads slice t and writes its next carry into the next step's slice (the last step: into
cur), so the per-step copy of the saved carry disappears (the body skips a copy whose source
and destination coincide); an LSTM train step 2-3% faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.backends.llvm.kernels import scratch_need
from lamina.ir.graph import Graph, Node
from lamina.ir.ops.loop import split_while
from lamina.passes.memory import ALIGN, MemoryPlan, plan_memory


def _aligned(n: int) -> int:
    return (max(n, 1) + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Layout:
    """Where a loop keeps its state, as offsets into its scratch."""

    bodies: list[tuple[Graph, MemoryPlan]]  # scan, fori: [body]; while: [cond, body]
    carries: list  # the carries' types
    cur: list[int] = field(default_factory=list)
    nxt: list[int] = field(default_factory=list)
    spare: list[int] = field(default_factory=list)  # a slice per stacked output (scan)
    pred: int = 0
    arena: int = 0
    nbytes: int = 0


class LoopPlanner:
    """Memory plans of loop bodies, made once per compile and shared by the memory plan of
    the enclosing graph (``need``: the scratch a kernel or a loop asks for) and the code
    generator (``layout``)."""

    def __init__(self):
        self.layouts: dict[Node, Layout] = {}

    def need(self, node: Node, in_place: bool) -> int | None:
        if node.op == "kernel":
            return scratch_need(node, in_place)
        return self.layout(node).nbytes

    def layout(self, node: Node) -> Layout:
        lay = self.layouts.get(node)
        if lay is not None:
            return lay
        region = node.region
        if node.op == "while_loop":
            parts = list(split_while(region))
            carries = [v.type for v in region.outputs[1:]]
            ys = []
        else:
            parts = [region]
            k = node.attrs["num_carry"] if node.op == "scan" else len(region.outputs)
            carries = [v.type for v in region.outputs[:k]]
            ys = [v.type for v in region.outputs[k:]]
        bodies = [(g, plan_memory(g, self.need)) for g in parts]
        lay = Layout(bodies, carries)
        off = 0
        for t in carries:
            lay.cur.append(off)
            off += _aligned(t.nbytes)
        for t in carries:
            lay.nxt.append(off)
            off += _aligned(t.nbytes)
        for t in ys:
            lay.spare.append(off)
            off += _aligned(t.nbytes)
        lay.pred = off
        off += ALIGN
        lay.arena = off
        off += max(plan.arena_bytes for _, plan in bodies)
        lay.nbytes = off
        self.layouts[node] = lay
        return lay
