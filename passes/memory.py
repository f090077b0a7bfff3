"""Memory planning for a fused graph: where every kernel's result lives.

An analysis (it returns a plan, it does not change the graph), run by backends after fusion:

- graph outputs are written straight into the arrays handed back to the caller;
- a state update is written in place, into the state's own storage, when every other reader of
  the old value runs earlier and the kernel itself reads the state only element-aligned
  (otherwise: a temporary and a copy at the end of the step);
- every other result gets an offset in one arena, allocated once per executable; buffers whose
  live ranges do not overlap share memory (greedy best fit over the kernel schedule).

``MemoryPlan.text()`` explains it all, with the predicted peak bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.registry import get as get_op

ALIGN = 64  # bytes: a cache line, and room for any vector load


def _aligned(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass
class Location:
    """``kind``: input / state / output (slot ``index``), arena (``offset``), literal (a
    constant node), or view (same storage as ``of``)."""

    kind: str
    index: int = 0
    offset: int = 0
    nbytes: int = 0

    def __str__(self) -> str:
        if self.kind == "arena":
            return f"arena+{self.offset}"
        if self.kind == "literal":
            return "literal"
        return f"{self.kind}[{self.index}]"


@dataclass
class MemoryPlan:
    schedule: list[Node]  # kernels (and literals) in execution order
    location: dict[Value, Location]
    arena_bytes: int
    output_bytes: int
    in_place: list[str] = field(default_factory=list)  # state names updated where they live
    copies: list[tuple[Value, str]] = field(default_factory=list)  # (value, state) at the end
    scratch: dict[Node, Location] = field(default_factory=dict)  # per-kernel temporaries
    notes: list[str] = field(default_factory=list)

    @property
    def peak_bytes(self) -> int:
        """Temporaries plus outputs: what one call needs beyond inputs and state."""
        return self.arena_bytes + self.output_bytes

    def text(self, names: dict[Value, str] | None = None) -> str:
        names = names or {}

        def nm(v):
            if isinstance(v, Param):
                return f"%{v.name}"
            return names.get(v) or (f"@{v.attrs['name']}" if v.op == "kernel" else v.op)

        head = (f"# memory plan: arena {self.arena_bytes} bytes, outputs {self.output_bytes} "
                f"bytes, predicted peak {self.peak_bytes} bytes")
        lines = [head]
        for n in self.schedule:
            loc = self.location.get(n)
            extra = f" (scratch {self.scratch[n]})" if n in self.scratch else ""
            lines.append(f"{nm(n):<40} {n.type!s:<16} -> {loc}{extra}")
        for s in self.in_place:
            lines.append(f"in place: %{s} is updated where it lives")
        for v, s in self.copies:
            lines.append(f"copy: %{s} <- {nm(v)} after the last kernel")
        lines.extend(f"note: {t}" for t in self.notes)
        return "\n".join(lines) + "\n"


RISKY = ("take", "scatter_add")  # ops that can stop a step midway (an index out of range)


def error_sites(graph: Graph) -> list[Node]:
    """The ops that can find an index out of range, in a fixed order: site k sets the error
    flag to k + 1, and the runtime maps it back to the op's source line. Loop bodies' kernels
    count too (depth first, in graph order)."""
    out: list[Node] = []
    for n in graph.nodes:
        if n.op == "kernel":
            out.extend(m for m in n.region.nodes if m.op in RISKY)
        elif n.region is not None:
            out.extend(m for m in error_sites(n.region) if m not in out)
    return out


def index_error(graph: Graph, code: int) -> LaminaError:
    """The error for error flag ``code`` (site ``code - 1`` of ``error_sites``), with the
    user's source line of the failing op."""
    sites = error_sites(graph)
    site = sites[code - 1] if 0 < code <= len(sites) else None
    what = site.op if site is not None else "take or scatter_add"
    return LaminaError(f"{what}: an index is out of range (numpy would raise IndexError); "
                       "the step stopped before changing any state",
                       site.loc if site is not None else None)


def element_aligned_reads(kernel: Node, operand: int) -> bool:
    """May ``kernel`` write its result over operand ``operand``? Only if every op between that
    operand and the result keeps element positions: elementwise ops over the operand's shape,
    or row-program reductions of rows of that shape (a row is read whole before it is
    written). Kernels that may stop on a bad index never write in place."""
    region = kernel.region
    param = region.inputs[operand]
    if param.type != kernel.type or any(n.op in RISKY for n in region.nodes):
        return False
    reached = {param}
    for n in region.nodes:
        if not any(v in reached for v in n.inputs):
            continue
        reached.add(n)
        kind = get_op(n.op).kind
        if kind == "elementwise" and n.shape == param.shape:
            continue
        if kind == "reduce" and n.inputs[0].shape == param.shape and _trailing_axes(n):
            continue
        rows = _row_shapes(region)
        if kind == "elementwise" and n.shape in rows and all(
                v not in reached or v.shape == param.shape or v.shape in rows for v in n.inputs):
            continue  # per-row values computed from the rows (the row program's stages)
        return False
    return True


def _trailing_axes(n: Node) -> bool:
    a = n.attrs.get("axis")
    nd = len(n.inputs[0].shape)
    axes = tuple(range(nd)) if a is None else (a if isinstance(a, tuple) else (a,))
    return tuple(axes) == tuple(range(nd - len(axes), nd))


def _row_shapes(region: Graph) -> set:
    from lamina.ir.ops.reduce import keep_shape, reduced_shape

    out = set()
    for n in region.nodes:
        if get_op(n.op).kind == "reduce" and n.op != "argmax":
            d, a = n.inputs[0].shape, n.attrs["axis"]
            out |= {keep_shape(d, a), reduced_shape(d, a, False)}
    return out


def plan_memory(g: Graph, scratch_need=None) -> MemoryPlan:
    """Plan the storage of a fused graph (top level: kernel and constant nodes).

    ``scratch_need(kernel, in_place) -> bytes | None`` (from the backend) asks for temporary
    memory a kernel uses while it runs (e.g. a GEMM accumulating before its epilogue overwrites
    one of its operands); it lives in the arena during that kernel only. None: no scratch; 0 is
    a (zero-size) scratch all the same, so that the kernel finds the buffer it was built for.
    """
    schedule = list(g.nodes)
    position = {n: i for i, n in enumerate(schedule)}
    location: dict[Value, Location] = {}
    for i, p in enumerate(g.inputs):
        location[p] = Location("input", i, nbytes=p.type.nbytes)
    for i, p in enumerate(g.state):
        location[p] = Location("state", i, nbytes=p.type.nbytes)
    for n in schedule:
        if n.op == "constant":
            location[n] = Location("literal", nbytes=n.type.nbytes)
    notes: list[str] = []

    # Outputs first: the caller's arrays.
    output_bytes = 0
    for k, v in enumerate(g.outputs):
        if isinstance(v, Node) and v not in location:
            location[v] = Location("output", k, nbytes=v.type.nbytes)
            output_bytes += v.type.nbytes

    # State updates: in place where legal.
    users: dict[Value, list[Node]] = {}
    for n in schedule:
        for v in n.inputs:
            users.setdefault(v, []).append(n)
    in_place, copies = [], []
    risky = [position[n] for n in schedule
             if n.region is not None and (any(m.op in RISKY for m in n.region.nodes) or
                                          (n.op != "kernel" and error_sites(n.region)))]
    last_risky = max(risky, default=-1)
    written_over: set[Node] = set()  # kernels writing over one of their own operands
    state_index = {p.name: i for i, p in enumerate(g.state)}
    for name, v in g.updates.items():
        s = g.state[state_index[name]]
        if v is s:
            continue  # unchanged
        if not isinstance(v, Node) or v.op != "kernel" or v in location:
            copies.append((v, name))
            continue
        at = position[v]
        readers = [u for u in users.get(s, []) if u is not v]
        late = [u for u in readers if position[u] > at]
        if at < last_risky:  # a later kernel may still fail: the old state must survive it
            notes.append(f"%{name} is not updated in place: a later kernel can stop the step "
                         "(an index out of range) and the state must then stay unchanged")
            copies.append((v, name))
            continue
        operands = [i for i, x in enumerate(v.inputs) if x is s]
        aligned = all(element_aligned_reads(v, i) for i in operands)
        if late or not aligned:
            why = (f"{len(late)} kernel(s) read the old value later" if late
                   else "the kernel reads it at other positions")
            notes.append(f"%{name} is not updated in place: {why}")
            copies.append((v, name))
            continue
        location[v] = Location("state", state_index[name], nbytes=v.type.nbytes)
        in_place.append(name)
        if operands:
            written_over.add(v)

    # Everything else: the arena, with reuse after the last use.
    last_use: dict[Value, int] = {}
    for n in schedule:
        for v in n.inputs:
            last_use[v] = position[n]
    for v, _name in copies:
        last_use[v] = len(schedule)  # copied after the last kernel
    for v in g.outputs:
        last_use[v] = len(schedule)
    free: list[tuple[int, int]] = []  # (offset, size) holes
    arena = 0
    live: list[tuple[int, int, int]] = []  # (end, offset, size)
    scratch: dict[Node, Location] = {}

    def allocate(size: int) -> int:
        nonlocal arena
        size = _aligned(max(size, 1))
        best = None
        for j, (off, sz) in enumerate(free):
            if sz >= size and (best is None or sz < free[best][1]):
                best = j
        if best is not None:
            off, sz = free.pop(best)
            if sz > size:
                free.append((off + size, sz - size))
            return off
        off = arena
        arena += size
        return off

    def release(upto: int):
        nonlocal live
        still = []
        for end, off, sz in live:
            if end < upto:
                free.append((off, sz))
            else:
                still.append((end, off, sz))
        live = still
        _merge(free)

    # a loop writes its results (the get nodes reading them) while it runs
    results: dict[Node, list[Node]] = {}
    for n in schedule:
        if n.op == "get":
            results.setdefault(n.inputs[0], []).append(n)
    for n in schedule:
        i = position[n]
        release(i)  # results last read before this kernel
        loop = n.region is not None and n.op != "kernel"
        need = scratch_need(n, n in written_over) \
            if scratch_need and (n.op == "kernel" or loop) else None
        if need is not None:
            off = allocate(need)
            scratch[n] = Location("arena", offset=off, nbytes=need)
            live.append((i, off, _aligned(need)))
        if loop:
            for r in results.get(n, ()):
                if r not in location:
                    off = allocate(r.type.nbytes)
                    location[r] = Location("arena", offset=off, nbytes=r.type.nbytes)
                    live.append((last_use.get(r, i), off, _aligned(max(r.type.nbytes, 1))))
            continue
        if n in location or n.op == "get":
            continue
        off = allocate(n.type.nbytes)
        location[n] = Location("arena", offset=off, nbytes=n.type.nbytes)
        live.append((last_use.get(n, i), off, _aligned(max(n.type.nbytes, 1))))
    return MemoryPlan(schedule, location, arena, output_bytes, in_place, copies, scratch, notes)


def _merge(free: list[tuple[int, int]]) -> None:
    free.sort()
    merged: list[tuple[int, int]] = []
    for off, sz in free:
        if merged and merged[-1][0] + merged[-1][1] == off:
            merged[-1] = (merged[-1][0], merged[-1][1] + sz)
        else:
            merged.append((off, sz))
    free[:] = merged
