"""A compiled graph ready to call: one foreign call into ``lamina_entry`` per step.

The pointer table (inputs, state, outputs, arena) is allocated once; a call fills in the input
and output pointers, calls the entry, and performs the few copies that need no kernel (an
output that is an input, a state set to a literal). State updates happen inside the call, in
place, so ``updates`` comes back empty.
"""

from __future__ import annotations

import ctypes
import math
import sys

import numpy as np

from lamina.backends.llvm import jit
from lamina.backends.llvm.codegen import ENTRY, Slots
from lamina.backends.llvm.output_views import OutputViews
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param
from lamina.ir.ops.source import constant_array
from lamina.passes.memory import MemoryPlan, index_error

_ENTRY_TYPE = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_int32)
RECYCLE_MIN_BYTES = 1 << 16  # smaller outputs are cheap to allocate


class LLVMProgram:
    def __init__(self, graph: Graph, plan: MemoryPlan, engine: jit.Engine, object_code: bytes,
                 libraries: tuple = (), profiled: list | None = None,
                 views: OutputViews | None = None,
                 source: Graph | None = None):
        """``graph``: what the code computes (``output_views``' lowered graph, whose extra
        outputs ``views`` hands back as views); ``source``: the graph the caller compiled
        (``self.graph``; ``graph`` when there are no views)."""
        self.graph = source if source is not None else graph
        self.lowered = graph
        self.views = views
        self.plan = plan
        self.engine = engine
        self.object_code = object_code
        self.libraries = libraries  # engines whose symbols the code calls (kept alive)
        self.entry = _ENTRY_TYPE(engine.address(ENTRY))
        self.slots = Slots(len(graph.inputs), len(graph.state), len(graph.outputs))
        self.table = (ctypes.c_void_p * self.slots.count)()
        self.arena = _aligned_empty(plan.arena_bytes)
        self.table[self.slots.arena] = self.arena.ctypes.data
        self.state_names = [p.name for p in graph.state]
        self.threads = jit.threads()
        self.recycled: dict[int, np.ndarray] = {}  # output index -> last array handed out
        self.owns_outputs = True  # every output is a fresh (or recycled, unreferenced) array
        self.written = []  # outputs written by kernels: (index, shape, numpy dtype)
        self.copied = []  # other outputs: (index, how)
        for k, v in enumerate(graph.outputs):
            loc = plan.location.get(v)
            if isinstance(v, Node) and loc is not None and loc.kind == "output" and \
                    loc.index == k:
                self.written.append((k, v.shape, v.dtype.np))
            else:
                self.copied.append((k, v))
        self.state_copies = [(v, s) for v, s in plan.copies
                             if not (isinstance(v, Node) and v.op in ("kernel", "get"))]
        self.kernels = [n for n in plan.schedule if n.op == "kernel"]
        self.counters = None
        self.timed = list(profiled or [])  # (kernel or loop, depth) per counter pair
        if profiled:
            addr = engine.ee.get_global_value_address("lamina_prof")
            self.counters = (ctypes.c_int64 * (2 * len(self.timed))).from_address(addr)
            self.cycles = ctypes.CFUNCTYPE(ctypes.c_int64)(engine.address("lamina_cycles"))

    def __call__(self, inputs, state):
        table, slots = self.table, self.slots
        keep = []
        for i, a in enumerate(inputs):
            if not a.flags.c_contiguous:  # NOTE: not for every array: it makes 0-d ones 1-d
                a = np.ascontiguousarray(a)
            keep.append(a)
            table[slots.input(i)] = a.ctypes.data
        for i, name in enumerate(self.state_names):
            table[slots.state(i)] = state[name].ctypes.data
        outs: list = [None] * len(self.lowered.outputs)
        for k, shape, dtype in self.written:
            out = self._output_array(k, shape, dtype)
            outs[k] = out
            table[slots.output(k)] = out.ctypes.data
        # NOTE: the step updates state in place, so whatever reads a state variable's old value
        # directly (an output, a copy into other state) takes a snapshot before the call.
        early = {}
        for k, v in self.copied:
            if isinstance(v, Param) and v.kind == "state":
                early[k] = state[v.name].copy()
        sources = [(state[v.name].copy() if isinstance(v, Param) and v.kind == "state" else None,
                    v, s) for v, s in self.state_copies]
        status = self.entry(ctypes.addressof(table), self.threads)
        if status:
            raise self.index_error(status)
        for k, v in self.copied:
            # copies: the caller may change what it gets back without touching our inputs
            outs[k] = early[k] if k in early else np.array(self._source(v, keep, state, outs))
        for snapshot, v, s in sources:
            src = snapshot if snapshot is not None else self._source(v, keep, state, outs)
            np.copyto(state[s], src)
        if self.views is not None:
            outs = self.views.resolve(outs)
        return outs, {}

    def _output_array(self, k: int, shape, dtype) -> np.ndarray:
        """The array output ``k`` is written into: last call's, when nobody else holds it any
        more (a caller that dropped its result, as a loop does), else a fresh one. Reusing
        saves the page faults of touching fresh memory on every call."""
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize
        owner = self.recycled.get(k)
        # NOTE: numpy points every view (of a view...) straight at the memory's owner, so the
        # owner's references tell whether any array over it is still alive: only ours left
        # are the dict's, the local name's and getrefcount's argument.
        if owner is None or sys.getrefcount(owner) > 3:
            owner = _aligned_owner(nbytes)
            if nbytes < RECYCLE_MIN_BYTES:
                return _view(owner, nbytes, dtype, shape)
            self.recycled[k] = owner
        return _view(owner, nbytes, dtype, shape)

    def profile_rows(self) -> list[tuple[Node, float, int, int]]:
        """(kernel or loop, seconds, calls, depth) per timed step since the counters were last
        reset; depth > 0: a kernel of a loop's body (its calls: one per step)."""
        hz = _cycles_per_second(self.cycles)
        c = self.counters
        return [(k, c[2 * i] / hz, c[2 * i + 1], d) for i, (k, d) in enumerate(self.timed)]

    def reset_profile(self) -> None:
        for i in range(len(self.counters)):
            self.counters[i] = 0

    def index_error(self, status: int) -> LaminaError:
        return index_error(self.lowered, status)

    def _source(self, v, inputs, state, outs):
        if isinstance(v, Param):
            return inputs[self.graph.inputs.index(v)] if v.kind == "input" else state[v.name]
        if v.op == "constant":
            return constant_array(v.attrs["value"], v.dtype, v.shape)
        loc = self.plan.location[v]
        if loc.kind == "output":
            return outs[loc.index]
        if loc.kind == "state":
            return state[self.state_names[loc.index]]
        raise AssertionError(f"output value lives in {loc}")


_HZ: list[float] = []


def _cycles_per_second(cycles) -> float:
    """The rate of the cycle counter (the TSC), measured once against perf_counter."""
    if not _HZ:
        import time

        t0, c0 = time.perf_counter(), cycles()
        time.sleep(0.05)
        t1, c1 = time.perf_counter(), cycles()
        _HZ.append((c1 - c0) / (t1 - t0))
    return _HZ[0]


def _aligned_owner(nbytes: int, align: int = 64) -> np.ndarray:
    """Bytes with room for ``nbytes`` starting at an ``align``-byte boundary."""
    return np.empty(nbytes + align, np.uint8)


def _view(owner: np.ndarray, nbytes: int, dtype, shape, align: int = 64) -> np.ndarray:
    start = (-owner.ctypes.data) % align
    return owner[start:start + nbytes].view(dtype).reshape(shape)


def _aligned_empty(nbytes: int, align: int = 64) -> np.ndarray:
    return _view(_aligned_owner(nbytes, align), nbytes, np.uint8, (nbytes,), align)
