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

Row bands (``row_split``): when every step is independent row by row (the carries, the
step's inputs and outputs share a leading size R, and each kernel of the body reads the
carries and the step's values only at the row it computes: elementwise ops, slices along other
axes, a matmul's left operand; the loop's constants are read anywhere), the whole loop runs as
one job of the thread pool: participant c takes rows [lo, hi) and runs all the steps on them,
with its own copy of the body's arena (the body's plan is valid for any band of rows of its
values; two bands must not share temporaries). No hand-off per step, and each core keeps its
rows of the carries in its own cache: an LSTM's recurrence (h @ W_hh, the gates, c and h) is
one such loop forward and one backward. The bands are cut by the thread count at run time
(``Codegen.run_bands``): the results do not depend on it, since every kernel computes each row of a
band exactly as it computes it in the whole (the GEMM's sums run over the same K blocks in the
same order whatever rows a call has).

Stacked outputs are written in place, slice t of the result buffer at step t. A carry that
the body also yields unchanged per step (the state a step started from: what a backward pass
saves of an RNN's h and c) lives in that stacked output instead (``Codegen.carries_in_stack``):
step t reads slice t and writes its next carry into the next step's slice (the last step: into
cur), so the per-step copy of the saved carry disappears (the body skips a copy whose source
and destination coincide); an LSTM train step 2-3% faster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.backends.llvm.gemm_call import root_is_rows
from lamina.backends.llvm.kernels import classify, scratch_need
from lamina.backends.llvm.rowgroups import row_local_operands
from lamina.ir.graph import Graph, Node
from lamina.ir.ops.loop import split_while
from lamina.passes.memory import ALIGN, RISKY, MemoryPlan, plan_memory

# Row bands of a loop (see above): at least ROW_BAND rows each (an LSTM step's 32 rows make
# two), at most MAX_ROW_BANDS bands; each holds a copy of the body's arena, and beyond two
# they stay within BAND_MEMORY bytes in all.
ROW_BAND = 16
MAX_ROW_BANDS = 8
BAND_MEMORY = 32 << 20
MIN_BANDS = 1  # tests: this many bands (up to the maximum) even on fewer threads


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
    rows: int = 0    # the leading size R of a loop that runs in row bands (row_split), else 0
    bands: int = 0   # at most this many bands, each with its own arena (band_arena apart)
    band_arena: int = 0


def row_split(node: Node, body: Graph) -> int:
    """The leading size R of every carry, step input and step output of a scan or fori_loop
    whose steps may run row band by row band (see the module docstring), else 0."""
    if node.op not in ("scan", "fori_loop"):
        return 0
    nc = node.attrs["num_consts"]
    anywhere = set(body.inputs[:1 + nc])  # the step index and the loop's constants
    banded = [*body.inputs[1 + nc:], *body.outputs]
    rows = banded[0].type.shape[0] if banded and banded[0].type.shape else 0
    if rows < 2 or any(not v.type.shape or v.type.shape[0] != rows for v in banded):
        return 0
    for n in body.nodes:
        if n.op == "constant":
            anywhere.add(n)
            continue
        if n.op != "kernel" or any(m.op in RISKY for m in n.region.nodes):
            return 0
        kind = classify(n)
        if kind not in ("loop", "flat", "gemm") or not n.shape or n.shape[0] != rows:
            return 0
        if kind == "gemm":
            (mm,) = [m for m in n.region.nodes if m.op == "matmul"]
            if not (mm.dtype.is_float and root_is_rows(n.region, mm)):
                return 0
        for x, ok in zip(n.inputs, row_local_operands(n, rows)):
            if not ok and x not in anywhere:
                return 0
    return rows


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
        arena = max(plan.arena_bytes for _, plan in bodies)
        lay.rows = row_split(node, parts[-1]) if ROW_BAND else 0
        lay.band_arena = _aligned(arena)
        lay.bands = min(MAX_ROW_BANDS, lay.rows // max(1, ROW_BAND),
                        max(2, BAND_MEMORY // lay.band_arena))
        if lay.bands < 2:
            lay.rows = lay.bands = 0
        off += lay.band_arena * max(1, lay.bands)
        lay.nbytes = off
        self.layouts[node] = lay
        return lay
