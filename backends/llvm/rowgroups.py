"""Row groups: consecutive small kernels run as one job of the thread pool, each participant
taking a band of rows through all of them.

A kernel too small for threads on its own (``codegen.PARALLEL_MIN_WORK``) runs on the calling
thread while the others wait. An LSTM step has seven of them after its GEMM (the gates'
activations, the cell update, ``h = o * tanh(c)``: 4096 elements each at batch 32, hidden 128);
run one at a time on the pool, each would pay the pool's hand-off for a microsecond or two of
work. But when every kernel of a run reads what the earlier ones wrote only at the row it is
computing (row ``r`` of ``c`` needs row ``r`` of the gates, nothing else), a participant can
take rows ``[lo, hi)`` and compute them through the whole run with no barrier in between:
one hand-off for the run, and both cores busy (benchmarks/run.py's lstm_train on 2 threads,
both builds timed in turn in one process: 6.3 -> 5.7 ms by median).

A run of kernels becomes a group (``plan_steps``) when every member

* is a ``loop`` or ``flat`` kernel whose result has the group's leading size ``R`` (> 1) and
  whose parallel axis is that axis (a loop kernel) or its flat range (a flat kernel: rows of
  ``extent // R`` elements), is below the parallel threshold alone, has no scratch and no op
  that can stop the step midway (``memory.RISKY``: the step stops right after such a kernel);
* reads the result of an earlier member only at the row it computes (``row_local``: through
  elementwise ops of the same rank, slices, pads and concatenations that keep axis 0 whole,
  transposes that keep it first, reshapes that keep its size; anything else counts as reading
  other rows);
* writes storage that no other member reads or writes (arena offsets, slots) except as such
  a row-local producer; a kernel updating its own operand in place (a state variable) may,
  when it reads that operand row-locally and no other member touches it.

Otherwise the run is cut before that kernel. A group whose members touch fewer than
``GROUP_MIN_WORK`` elements in all stays as separate calls. The group is cut into chunks of
rows by its size alone (``group_chunks``), never by the thread count: each element is computed
by the same code whatever thread runs it, so results do not depend on the thread count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lamina.ir.graph import Node, Value
from lamina.ir.ops.registry import get as get_op

# Members' elements in all (each kernel's ``work``) from which a run is worth one pool job:
# the LSTM step's forward run (7 kernels of 4096) and backward run (28672 elements) are.
GROUP_MIN_WORK = 1 << 14
# Elements per chunk the split aims at (chunks come in multiples of ROW_ALIGN rows).
GROUP_CHUNK_WORK = 1 << 13
ROW_ALIGN = 16


@dataclass(eq=False)
class RowGroup:
    """Kernels (node, KernelFn) run row band by row band; profiled as one step."""

    members: list = field(default_factory=list)
    rows: int = 0
    op = "rows"

    @property
    def attrs(self) -> dict:
        first = self.members[0][0].attrs["name"]
        return {"name": f"rows x{len(self.members)} ({first}, ...)"}

    @property
    def work(self) -> int:
        return sum(k.work for _, k in self.members)


def group_chunks(rows: int, work: int) -> tuple[int, int]:
    """(rows per chunk, number of chunks) for a group touching ``work`` elements in all."""
    want = max(1, min(work // GROUP_CHUNK_WORK, rows))
    size = -(-rows // want)
    if rows >= 2 * ROW_ALIGN:
        size = -(-size // ROW_ALIGN) * ROW_ALIGN
    return size, -(-rows // size)


def _keeps_row(n: Node, x: Value, rows: int) -> bool:
    """Evaluating ``n`` at a row-``r`` index reads operand ``x`` at row ``r`` only."""
    if not (n.shape and x.type.shape and n.shape[0] == rows and x.type.shape[0] == rows):
        return False
    kind = get_op(n.op).kind
    if kind in ("elementwise", "random"):
        return len(x.type.shape) == len(n.shape)
    a = n.attrs
    if n.op == "slice":
        return a["start"][0] == 0 and a["step"][0] == 1
    if n.op == "pad":
        return a["lo"][0] == 0 and a["hi"][0] == 0 and a["interior"][0] == 0
    if n.op == "concatenate":
        return a["axis"] != 0
    if n.op == "transpose":
        return a["perm"][0] == 0
    if n.op == "reshape":
        return True  # row-major: equal leading sizes keep each row's elements in it
    if n.op == "broadcast":
        return len(x.type.shape) == len(n.shape)
    if n.op == "matmul":  # row r of A @ B reads row r of A (and all of B)
        return len(n.shape) == 2 and x is n.inputs[0] and x is not n.inputs[1]
    return False


def row_local_operands(kernel: Node, rows: int) -> list[bool]:
    """Per operand of ``kernel``: is it read only at the row of the result being computed?"""
    region = kernel.region
    other: set[Value] = set()   # read at some other row (or through an op we do not model)
    local: set[Value] = {region.outputs[0]}
    for n in reversed(region.nodes):
        if n not in local and n not in other:
            continue
        for x in n.inputs:
            if n in other or not _keeps_row(n, x, rows):
                other.add(x)
            else:
                local.add(x)
    return [p not in other for p in region.inputs]


def _span(loc) -> tuple:
    if loc.kind == "arena":
        return ("arena", 0, loc.offset, loc.offset + loc.nbytes)
    return (loc.kind, loc.index, 0, max(loc.nbytes, 1))


def _overlap(s: tuple, t: tuple) -> bool:
    return s[:2] == t[:2] and s[2] < t[3] and t[2] < s[3]


class _Run:
    def __init__(self, rows: int):
        self.rows = rows
        self.outputs: dict[Node, tuple] = {}    # member -> the storage it writes
        self.reads: list[tuple] = []            # storage members read that no member wrote
        self.far: list[tuple] = []              # slots (not arena) read at other rows

    def admits(self, node: Node, plan) -> bool:
        """Add ``node`` to the run if it may run row band by row band with the members."""
        loc = plan.location
        out = _span(loc[node])
        if any(_overlap(out, s) for s in (*self.outputs.values(), *self.reads)):
            return False
        # NOTE: slots (inputs, state, outputs; a loop body's are the enclosing graph's storage)
        # are separate buffers in any plan, but two of them may be one array at run time (a
        # caller passing a state variable's array as an input): a slot written while another
        # is read at other rows is left to separate calls
        writes_slot = out[0] != "arena"
        if writes_slot and any(s != out for s in self.far):
            return False
        wrote_slots = [o for o in self.outputs.values() if o[0] != "arena"]
        reads, far = [], []
        for x, ok in zip(node.inputs, row_local_operands(node, self.rows)):
            if x in self.outputs:
                if not ok:
                    return False
                continue
            if x not in loc or loc[x].kind == "literal":
                continue
            s = _span(loc[x])
            if any(_overlap(s, o) for o in self.outputs.values()):
                return False
            if _overlap(s, out) and not (s == out and ok):
                return False  # only an exact in-place update read at its own rows
            if not ok and s[0] != "arena":
                if any(o != s for o in wrote_slots) or (writes_slot and out != s):
                    return False
                far.append(s)
            if s != out:
                reads.append(s)
        self.reads += reads
        self.far += far
        self.outputs[node] = out
        return True


def candidate(node: Node, k, plan, risky, min_work: int) -> int | None:
    """The leading size ``R`` of a kernel that may join a row group, else None."""
    if node.op != "kernel" or k.kind not in ("loop", "flat") or k.work >= min_work:
        return None
    shape = node.type.shape
    if not shape or shape[0] < 2 or node in plan.scratch:
        return None
    if k.extent != (math.prod(shape) if k.kind == "flat" else shape[0]):
        return None
    if any(x.op in risky for x in node.region.nodes):
        return None
    return shape[0]


def plan_steps(steps: list, plan, risky, min_work: int) -> list:
    """``steps`` ((node, KernelFn or loop bodies) in schedule order) with runs of row-local
    small kernels replaced by ``(RowGroup, None)``."""
    out: list = []
    run: _Run | None = None
    pending: list = []

    def flush():
        nonlocal run
        if len(pending) >= 2 and sum(k.work for _, k in pending) >= GROUP_MIN_WORK:
            out.append((RowGroup(list(pending), run.rows), None))
        else:
            out.extend(pending)
        pending.clear()
        run = None

    for node, k in steps:
        rows = candidate(node, k, plan, risky, min_work)
        if rows is None:
            flush()
            out.append((node, k))
            continue
        if run is None or run.rows != rows or not run.admits(node, plan):
            flush()
            run = _Run(rows)
            if not run.admits(node, plan):  # not even alone (its operands overlap its result)
                out.append((node, k))
                run = None
                continue
        pending.append((node, k))
    flush()
    return out
