"""The LLVM module for one fused, planned graph: one function per kernel, chunk wrappers for
the parallel ones, and the entry point that runs the whole step in one call.

    i32 lamina_entry(i8** bufs, i32 nthreads)

``bufs`` holds one pointer per input, per state variable, per output (in graph order) and one
for the arena; literal constants are globals of the module. The entry resets the error flag,
runs every kernel in schedule order, copies state updates that could not be written in place,
and returns the flag (nonzero: an index was out of range).

Large kernels run on the thread pool (``pool.py``): their parallel axis is cut into chunks, a
fixed number per kernel chosen here from its size (never from the thread count, so a result
does not depend on how many threads computed it: with one thread the same chunks run in
order), and the threads that are running claim them one by one. Runs of small kernels that
read each other only at the row they compute run as one pool job, row band by row band
(``rowgroups.py``).
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from lamina.backends.llvm import jit, pool, rowgroups
from lamina.backends.llvm import loops as loop_plans
from lamina.backends.llvm import lower as L
from lamina.backends.llvm.kernels import KernelEmitter, KernelFn
from lamina.ir.graph import Graph, Node, Value
from lamina.ir.ops.source import constant_array
from lamina.passes.memory import RISKY, MemoryPlan, error_sites

I8P = L.I8.as_pointer()
I32, I64 = L.I32, L.I64
ENTRY = "lamina_entry"
PARALLEL_MIN_WORK = 1 << 15  # elements: below this, threads cost more than they save
# Chunks of a parallel kernel: about CHUNK_WORK elements each (several microseconds; claiming
# one costs two contended atomics, well under a microsecond), at most MAX_KERNEL_CHUNKS (rows of
# a 4096 x 1024 softmax come 32 at a time: longer runs for the prefetchers), whole multiples of
# CHUNK_ALIGN iterations where the extent allows (whole vectors; no false sharing of rows).
# Accumulate kernels (column sums) split their contiguous axis: each chunk sweeps every row
# over its columns, so a chunk of fewer than ACCUMULATE_MIN columns spends its time on loop
# overhead (32-column chunks made the MLP's bias gradients 2x slower).
CHUNK_WORK = 1 << 14
MAX_KERNEL_CHUNKS = 128
CHUNK_ALIGN = 16
ACCUMULATE_MIN = 128
# Part of cache keys (with a hash of this backend's source, ``source_digest``, so that a
# change to the code generator never meets an object code it made before): bump when
# generated code changes meaning. 4: kernels and GEMMs call the thread pool (pool.py, ABI in
# its symbol names) instead of GOMP_parallel; 5: other chunk sizes; 7: a reshape of a kernel
# input reads at its own flat index (emitter._op_reshape); 8: the GEMM's gather entry.
CODEGEN_VERSION = "8"


# Passes whose results reach the object code without showing in the IR text that keys the
# cache: the memory plan (arena offsets) and the GEMM operand analysis (offset tables).
CODEGEN_INPUTS = ("passes/memory.py", "passes/gemm_operand.py")


@functools.cache
def source_digest() -> str:
    """A hash of the source the object code follows beyond the IR text: the llvm backend's
    files (the code generator and the GEMM/pool ABI) and ``CODEGEN_INPUTS``."""
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))
    paths = [os.path.join(here, n) for n in sorted(os.listdir(here)) if n.endswith(".py")]
    paths += [os.path.join(root, *rel.split("/")) for rel in CODEGEN_INPUTS]
    h = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            h.update(os.path.relpath(path, root).encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def kernel_chunks(extent: int, work: int, min_size: int = 1) -> tuple[int, int]:
    """(chunk size in iterations, number of chunks) for a parallel kernel: chunks of at
    least ``min_size`` iterations."""
    want = max(1, min(MAX_KERNEL_CHUNKS, work // CHUNK_WORK, extent // min_size))
    size = -(-extent // want)
    if extent >= CHUNK_ALIGN * want:
        size = -(-size // CHUNK_ALIGN) * CHUNK_ALIGN
    return size, -(-extent // size)


def _chunk_bounds(b: ir.IRBuilder, c, size, extent: int):
    """[lo, hi) of chunk ``c`` of ``size`` rows (elements; an int or an i64 value) of
    ``extent``: the last is short."""
    size = ir.Constant(I64, size) if isinstance(size, int) else size
    lo = b.mul(c, size)
    hi = b.add(lo, size)
    ext = ir.Constant(I64, extent)
    return lo, b.select(b.icmp_signed(">", hi, ext), ext, hi)


def _trip_count(node: Node) -> int | None:
    """Steps of a scan or fori_loop (None: a while_loop's, known only when it stops)."""
    a = node.attrs
    if node.op == "scan":
        return a["length"]
    if node.op == "fori_loop":
        return max(0, a["upper"] - a["lower"])
    return None


@dataclass
class Slots:
    """Positions in ``bufs``."""

    n_inputs: int
    n_state: int
    n_outputs: int

    def input(self, i: int) -> int:
        return i

    def state(self, i: int) -> int:
        return self.n_inputs + i

    def output(self, i: int) -> int:
        return self.n_inputs + self.n_state + i

    @property
    def arena(self) -> int:
        return self.n_inputs + self.n_state + self.n_outputs

    @property
    def count(self) -> int:
        return self.arena + 1


class Codegen:
    """The module of one planned graph; ``parent``: the code generator of the graph whose
    loop has this graph as its body (the body shares its module, names and error flag)."""

    def __init__(self, graph: Graph, plan: MemoryPlan, name: str = "lamina",
                 profile: bool = False, loops: loop_plans.LoopPlanner | None = None,
                 parent: Codegen | None = None):
        self.graph = graph
        self.plan = plan
        self.profile = profile  # time every kernel call (cycles) into the global lamina_prof
        self.loops = loops if loops is not None else loop_plans.LoopPlanner()
        self.slots = Slots(len(graph.inputs), len(graph.state), len(graph.outputs))
        if parent is None:
            self.module = jit.new_module(name)
            self.error_flag = ir.GlobalVariable(self.module, I32, "lamina_error")
            self.error_flag.initializer = ir.Constant(I32, 0)
            self.error_flag.linkage = "internal"
            self.literals: dict[Node, ir.GlobalVariable] = {}
            self.names: set[str] = set()
            self.error_codes = {id(m): k + 1 for k, m in enumerate(error_sites(graph))}
            self.shared: dict = {}  # helper functions kernels share (attention.py)
            # profiled: (node, depth) per timed step (kernels, loops, their bodies' kernels)
            self.profiled: list[tuple[Node, int]] = []
            self.depth = 0
            self.counters = self.profile_counters() if profile else None
        else:
            self.shared, self.profiled = parent.shared, parent.profiled
            self.profile, self.counters = parent.profile, parent.counters
            self.depth = parent.depth + 1
            if self.profile:
                self.cycles_fn = parent.cycles_fn
            self.module, self.error_flag = parent.module, parent.error_flag
            self.literals, self.names = parent.literals, parent.names
            self.error_codes = parent.error_codes
        self.kernels: list[tuple[Node, KernelFn]] = []
        self.steps: list[tuple[Node, object]] = []  # kernels and loops, in schedule order
        self.banded: set[Node] = set()  # loops that run in row bands (loops.row_split)

    # --- where values live ------------------------------------------------------------------

    def pointer(self, b: ir.IRBuilder, bufs: ir.Value, v: Value) -> ir.Value:
        """An i8* to the storage of top-level value ``v``."""
        loc = self.plan.location[v]
        if loc.kind == "literal":
            return b.bitcast(self.literal(v), I8P)
        slot = {"input": self.slots.input, "state": self.slots.state,
                "output": self.slots.output}.get(loc.kind)
        if slot is not None:
            return b.load(b.gep(bufs, [ir.Constant(I64, slot(loc.index))]))
        arena = b.load(b.gep(bufs, [ir.Constant(I64, self.slots.arena)]))
        return b.gep(arena, [ir.Constant(I64, loc.offset)])

    def writes_over_operand(self, node: Node) -> bool:
        """Does ``node`` write its result into the storage of one of its operands?"""
        out = self.plan.location.get(node)
        return out is not None and any(
            (loc := self.plan.location.get(v)) is not None and loc.kind == out.kind
            and loc.kind != "arena" and loc.index == out.index for v in node.inputs)

    def scratch_pointer(self, b: ir.IRBuilder, bufs: ir.Value, node: Node) -> ir.Value | None:
        loc = self.plan.scratch.get(node)
        if loc is None:
            return None
        arena = b.load(b.gep(bufs, [ir.Constant(I64, self.slots.arena)]))
        return b.gep(arena, [ir.Constant(I64, loc.offset)])

    def literal(self, node: Node) -> ir.GlobalVariable:
        g = self.literals.get(node)
        if g is None:
            arr = constant_array(node.attrs["value"], node.dtype, node.shape).reshape(-1)
            t = L.storage_type(node.dtype)
            values = arr.astype(np.uint8) if node.dtype.is_bool else arr
            init = ir.Constant(ir.ArrayType(t, arr.size),
                               [ir.Constant(t, x) for x in values.tolist()])
            g = ir.GlobalVariable(self.module, init.type, f"lit{len(self.literals)}")
            g.initializer = init
            g.global_constant = True
            g.linkage = "internal"
            g.align = 64
            self.literals[node] = g
        return g

    # --- the module -------------------------------------------------------------------------

    def kernel_name(self, node: Node, base: str | None = None) -> str:
        base = base or node.attrs["name"]
        name, k = base, 1
        while name in self.names:
            name = f"{base}.{k}"
            k += 1
        self.names.add(name)
        return name

    def build(self) -> ir.Module:
        self.emit_functions()
        self.emit_entry()
        return self.module

    def emit_functions(self) -> None:
        """A function per kernel, and per loop body (with the functions its kernels need)."""
        for n in self.plan.schedule:
            if n.op == "kernel":
                ke = KernelEmitter(self, n, self.kernel_name(n))
                fn = ke.emit()
                self.kernels.append((n, fn))
                self.steps.append((n, fn))
            elif n.region is not None:
                bodies = []
                lay = self.loops.layout(n)
                for j, (g, plan) in enumerate(lay.bodies):
                    sub = Codegen(g, plan, loops=self.loops, parent=self)
                    sub.emit_functions()
                    part = "cond" if n.op == "while_loop" and j == 0 else "body"
                    name = self.kernel_name(n, f"{n.attrs['name']}.{part}")
                    if lay.rows and sub.spans_rows(lay.rows):
                        self.banded.add(n)
                        bodies.append((sub, sub.emit_rows_entry(name, lay.rows)))
                    else:
                        bodies.append((sub, sub.emit_entry(name, body=True)))
                self.steps.append((n, bodies))

    def spans_rows(self, rows: int) -> bool:
        """Does every step of this (body) graph compute a band of rows when called on one:
        kernels whose parallel range is the leading axis (``rows`` long) or its flat range?"""
        for node, k in self.steps:
            if not isinstance(k, KernelFn) or k.kind not in ("loop", "flat", "gemm"):
                return False
            shape = node.type.shape
            if not shape or shape[0] != rows or k.extent != (
                    math.prod(shape) if k.kind == "flat" else rows):
                return False
        return True

    def emit_rows_entry(self, name: str, rows: int) -> ir.Function:
        """``void name(i8** bufs, i64 lo, i64 hi)``: the body's kernels on rows [lo, hi) of
        every value, on the calling thread, then its outputs no kernel wrote (those rows)."""
        fn = ir.Function(self.module, ir.FunctionType(ir.VoidType(), [I8P.as_pointer(), I64,
                                                                      I64]), name)
        fn.linkage = "internal"
        bufs, lo, hi = fn.args
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        for _node, k in self.steps:
            per_row = k.extent // rows
            span = (lo, hi) if per_row == 1 else (b.mul(lo, ir.Constant(I64, per_row)),
                                                  b.mul(hi, ir.Constant(I64, per_row)))
            b.call(self.module.globals[k.name], [bufs, *span, ir.Constant(I32, 1)])
        self.emit_output_copies(b, bufs, (lo, hi, rows))
        b.ret_void()
        return fn

    def chunk_wrapper(self, fn: ir.Function, k: KernelFn, size: int) -> ir.Function:
        """void k.chunk(i8* bufs, i64 c, i64 slot): chunk c = [c*size, min((c+1)*size, extent))
        of the kernel's parallel axis (the pool's chunk function)."""
        w = ir.Function(self.module, pool.CHUNK_TYPE, k.name + ".chunk")
        w.linkage = "internal"
        b = ir.IRBuilder(w.append_basic_block("entry"))
        lo, hi = _chunk_bounds(b, w.args[1], size, k.extent)
        bufs = b.bitcast(w.args[0], I8P.as_pointer())
        b.call(fn, [bufs, lo, hi, ir.Constant(I32, 1)])
        b.ret_void()
        return w

    def emit_entry(self, name: str = ENTRY, body: bool = False) -> ir.Function:
        """The function that runs the graph's kernels and loops in order (``body``: a loop
        body's, which also copies the results no kernel wrote into its outputs)."""
        m = self.module
        entry = ir.Function(m, ir.FunctionType(I32, [I8P.as_pointer(), I32]), name)
        if body:
            entry.linkage = "internal"
        bufs, nthreads = entry.args
        self.entry_block = entry.append_basic_block("entry")
        b = ir.IRBuilder(self.entry_block)
        b.store(ir.Constant(I32, 0), self.error_flag)
        counters = self.counters
        for node, k in rowgroups.plan_steps(self.steps, self.plan, RISKY, PARALLEL_MIN_WORK):
            i = len(self.profiled)
            self.profiled.append((node, self.depth))
            if counters is not None:
                t0 = b.call(self.cycles_fn, [])
            if isinstance(node, rowgroups.RowGroup):
                self.profiled += [(m, self.depth + 1) for m, _ in node.members]
                self.call_group(b, node, bufs, nthreads)
            elif node.op != "kernel":
                if node in self.banded:  # timed as a whole: its kernels listed, untimed
                    self.profiled += [(m, self.depth + 1) for m, _ in k[-1][0].steps]
                self.emit_loop(b, entry, node, k, bufs, nthreads)
            else:
                self.call_kernel(b, node, k, bufs, nthreads)
            if counters is not None:
                spent = b.sub(b.call(self.cycles_fn, []), t0)
                for slot, add in ((2 * i, spent), (2 * i + 1, ir.Constant(I64, 1))):
                    at = b.gep(counters, [ir.Constant(I64, 0), ir.Constant(I64, slot)])
                    b.store(b.add(b.load(at), add), at)
            if node.op == "kernel" and any(x.op in RISKY for x in node.region.nodes):
                # stop at once: later kernels would write state the failed step must not touch
                flag = b.load(self.error_flag)
                with b.if_then(b.icmp_signed("!=", flag, ir.Constant(I32, 0))):
                    b.ret(flag)
        self.emit_copies(b, bufs)
        if body:
            self.emit_output_copies(b, bufs)
        b.ret(b.load(self.error_flag))
        return entry

    def memcpy(self, b, dst, src, nbytes) -> None:
        """Copy ``nbytes`` (an int, or an i64 value) from ``src`` to ``dst``."""
        if isinstance(nbytes, int):
            if not nbytes:
                return
            nbytes = ir.Constant(I64, nbytes)
        f = L.intrinsic(self.module, "llvm.memcpy.p0.p0.i64", ir.VoidType(),
                        [I8P, I8P, I64, L.I1])
        b.call(f, [dst, src, nbytes, ir.Constant(L.I1, 0)])

    def emit_output_copies(self, b, bufs, band=None) -> None:
        """A body's results that no kernel wrote into its output slot (a parameter passed
        through, a literal, a value yielded twice): copied there (``band``: (lo, hi, R),
        rows [lo, hi) of R only)."""
        for k, v in enumerate(self.graph.outputs):
            loc = self.plan.location.get(v)
            if isinstance(v, Node) and loc is not None and loc.kind == "output" and \
                    loc.index == k:
                continue
            dst = b.load(b.gep(bufs, [ir.Constant(I64, self.slots.output(k))]))
            src = self.pointer(b, bufs, v)
            nbytes = v.type.nbytes
            if band is not None:
                lo, hi, rows = band
                row = ir.Constant(I64, nbytes // rows)
                dst, src = (b.gep(p, [b.mul(lo, row)]) for p in (dst, src))
                nbytes = b.mul(b.sub(hi, lo), row)
            if v in self.graph.inputs:  # a carry the loop keeps in this very slot: no copy
                with b.if_then(b.icmp_unsigned("!=", dst, src)):
                    self.memcpy(b, dst, src, nbytes)
            else:
                self.memcpy(b, dst, src, nbytes)

    def emit_loop(self, b, fn, node: Node, bodies, bufs, nthreads) -> None:
        """A loop node: its steps in a loop of this function, or (a loop in row bands) in a
        loop of each band's pool chunk (see ``loops.py``); ``b`` ends positioned after it."""
        lay = self.loops.layout(node)
        a = node.attrs
        base = self.scratch_pointer(b, bufs, node)

        def at(off):
            return b.gep(base, [ir.Constant(I64, off)])

        nc, nk = a["num_consts"], len(lay.carries)
        init = node.inputs[nc:nc + nk]
        results = self.loop_results(node)
        steps = _trip_count(node)
        kept = self.carries_in_stack(node, nc, nk, results, steps)
        for k, v in enumerate(init):
            if k not in kept:
                self.memcpy(b, at(lay.cur[k]), self.pointer(b, bufs, v), v.type.nbytes)
        y_ptrs = self.stacked_outputs(b, bufs, base, node, lay, results, steps)
        for k, j in kept.items():  # the first step's carry: in the slice it will be saved as
            p, size = y_ptrs[j]
            first_t = steps - 1 if a["reverse"] else 0
            self.memcpy(b, b.gep(p, [ir.Constant(I64, first_t * size)]),
                        self.pointer(b, bufs, init[k]), lay.carries[k].nbytes)
        if node in self.banded:
            self.run_bands(b, node, lay, bodies, bufs, nthreads, kept, results, steps)
            odd = ir.Constant(L.I1, steps % 2)
        else:
            def call(b, k, table):
                rc = b.call(bodies[k][1], [b.bitcast(table, I8P.as_pointer()), nthreads])
                with b.if_then(b.icmp_signed("!=", rc, ir.Constant(I32, 0))):
                    b.ret(rc)

            done = self.emit_steps(b, fn, self.entry_block, node, lay, bodies, bufs, base,
                                   at(lay.arena), kept, results, steps, call)
            odd = b.trunc(done, L.I1)  # after an odd number of steps the carries are in nxt
        for k, t_k in enumerate(lay.carries):
            src = at(lay.cur[k]) if k in kept else \
                b.select(odd, at(lay.nxt[k]), at(lay.cur[k]))
            for g in results.get(k, ()):
                self.memcpy(b, self.pointer(b, bufs, g), src, t_k.nbytes)

    def loop_results(self, node: Node) -> dict[int, list[Node]]:
        """The ``get`` nodes reading each result of a loop, by result index."""
        results: dict[int, list[Node]] = {}
        for g in self.graph.nodes:
            if g.op == "get" and g.inputs[0] is node and g in self.plan.location:
                results.setdefault(g.attrs["index"], []).append(g)
        return results

    def stacked_outputs(self, b, bufs, base, node, lay, results, steps) -> list:
        """(pointer, bytes per step) of each stacked output of a scan: its result buffer, or
        (nobody reads it) a spare slice of the loop's scratch that every step writes over."""
        nk = len(lay.carries)
        out = []
        for j, off in enumerate(lay.spare):
            got = results.get(nk + j)
            t = node.type.types[nk + j]
            out.append((self.pointer(b, bufs, got[0]), t.nbytes // max(1, steps)) if got
                       else (b.gep(base, [ir.Constant(I64, off)]), 0))
        return out

    def emit_steps(self, b, fn, first_block, node, lay, bodies, bufs, base, arena, kept,
                   results, steps, call) -> ir.Value:
        """The loop over the steps, in ``fn`` at ``b`` (allocas in ``first_block``): the
        body's pointer table set per step, ``call(b, k, table)`` running body k (while loops:
        0 is the condition). Returns the step count reached, loaded after the loop."""
        a = node.attrs

        def at(off):
            return b.gep(base, [ir.Constant(I64, off)])

        def slot(table, j):
            return b.gep(table, [ir.Constant(I32, 0), ir.Constant(I32, j)])

        ab = ir.IRBuilder()
        ab.position_at_start(first_block)
        idx = ab.alloca(I32)
        ctr = ab.alloca(I64)
        tables = [ab.alloca(ir.ArrayType(I8P, sub.slots.count)) for sub, _ in bodies]
        b.position_at_end(b.block)  # NOTE: b's place in its block moved with the allocas
        nc = a["num_consts"]
        nk = len(lay.carries)
        consts = node.inputs[:nc]
        xs = node.inputs[nc + nk:] if node.op == "scan" else ()
        for (sub, _), table in zip(bodies, tables):
            # the carries' slots are set at every step (their buffers take turns)
            ins = [b.bitcast(idx, I8P)] + [self.pointer(b, bufs, v) for v in consts]
            for j, p in enumerate(ins):
                b.store(p, slot(table, j))
            b.store(arena, slot(table, sub.slots.arena))
        sub, table = bodies[-1][0], tables[-1]
        if node.op == "while_loop":
            b.store(at(lay.pred), slot(tables[0], bodies[0][0].slots.output(0)))
        x_ptrs = [(self.pointer(b, bufs, x), x.type.nbytes // max(1, steps)) for x in xs]
        y_ptrs = self.stacked_outputs(b, bufs, base, node, lay, results, steps)
        b.store(ir.Constant(I64, 0), ctr)
        head = fn.append_basic_block(f"{a['name']}.head")
        step = fn.append_basic_block(f"{a['name']}.step")
        done = fn.append_basic_block(f"{a['name']}.done")
        b.branch(head)
        b.position_at_end(head)
        c = b.load(ctr)
        if steps is None:
            b.branch(step)
        else:
            b.cbranch(b.icmp_signed("<", c, ir.Constant(I64, steps)), step, done)
        b.position_at_end(step)
        if node.op == "scan" and a["reverse"]:
            t = b.sub(ir.Constant(I64, steps - 1), c)
        else:
            t = c
        i = b.add(t, ir.Constant(I64, a["lower"])) if node.op == "fori_loop" else t
        b.store(b.trunc(i, I32), idx)
        # the carries' two buffers take turns (no copy per step): odd steps read nxt, write cur
        odd = b.trunc(c, L.I1)
        last = b.icmp_signed("==", c, ir.Constant(I64, steps - 1)) if kept else None
        for k in range(nk):
            if k in kept:
                # read from slice t of the stacked output that saves it, written into the
                # next step's slice (the last step: into cur)
                p, size = y_ptrs[kept[k]]
                nxt_t = b.sub(t, ir.Constant(I64, 1)) if a["reverse"] else \
                    b.add(t, ir.Constant(I64, 1))
                cur_k = b.gep(p, [b.mul(t, ir.Constant(I64, size))])
                out_k = b.select(last, at(lay.cur[k]),
                                 b.gep(p, [b.mul(nxt_t, ir.Constant(I64, size))]))
            else:
                cur_k = b.select(odd, at(lay.nxt[k]), at(lay.cur[k]))
                out_k = b.select(odd, at(lay.cur[k]), at(lay.nxt[k]))
            for (sub_j, _), table_j in zip(bodies, tables):
                b.store(cur_k, slot(table_j, sub_j.slots.input(1 + nc + k)))
            b.store(out_k, slot(table, sub.slots.output(k)))
        first = 1 + nc + nk
        for k, (p, size) in enumerate(x_ptrs):
            b.store(b.gep(p, [b.mul(t, ir.Constant(I64, size))]),
                    slot(table, sub.slots.input(first + k)))
        for j, (p, size) in enumerate(y_ptrs):
            b.store(b.gep(p, [b.mul(t, ir.Constant(I64, size))]),
                    slot(table, sub.slots.output(nk + j)))
        if node.op == "while_loop":
            call(b, 0, tables[0])
            p = b.load(b.bitcast(at(lay.pred), L.I8.as_pointer()))
            go = fn.append_basic_block(f"{a['name']}.go")
            b.cbranch(b.icmp_unsigned("!=", p, ir.Constant(L.I8, 0)), go, done)
            b.position_at_end(go)
        call(b, len(bodies) - 1, tables[-1])
        b.store(b.add(c, ir.Constant(I64, 1)), ctr)
        b.branch(head)
        b.position_at_end(done)
        return b.load(ctr)

    def run_bands(self, b, node, lay, bodies, bufs, nthreads, kept, results, steps) -> None:
        """A loop in row bands (``loops.row_split``): one pool job whose chunk c runs every
        step on rows [c*size, min((c+1)*size, R)) with the arena of band c; a band per
        thread (at most ``lay.bands``), in multiples of 8 rows where that keeps the count."""
        rows = lay.rows
        data_t = ir.LiteralStructType([I8P.as_pointer(), I64])
        w = ir.Function(self.module, pool.CHUNK_TYPE,
                        self.kernel_name(None, f"{node.attrs['name']}.bands"))
        w.linkage = "internal"
        wb = ir.IRBuilder(w.append_basic_block("entry"))
        data = wb.bitcast(w.args[0], data_t.as_pointer())
        wbufs = wb.load(wb.gep(data, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
        size = wb.load(wb.gep(data, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
        c = w.args[1]
        lo, hi = _chunk_bounds(wb, c, size, rows)
        wbase = self.scratch_pointer(wb, wbufs, node)
        arena = wb.gep(wbase, [wb.add(ir.Constant(I64, lay.arena),
                                      wb.mul(c, ir.Constant(I64, lay.band_arena)))])
        rows_fn = bodies[-1][1]
        self.emit_steps(wb, w, w.blocks[0], node, lay, bodies, wbufs, wbase, arena, kept,
                        results, steps,
                        lambda bb, _k, table: bb.call(rows_fn, [bb.bitcast(table, I8P.as_pointer()),
                                                                lo, hi]))
        wb.ret_void()

        def const(v):
            return ir.Constant(I64, v)

        def imax(x, y):
            return b.select(b.icmp_signed(">", x, y), x, y)

        def cdiv(x, y):
            return b.sdiv(b.add(x, b.sub(y, const(1))), y)

        want = b.sext(nthreads, I64)
        want = b.select(b.icmp_signed(">", want, const(lay.bands)), const(lay.bands), want)
        want = imax(imax(want, const(1)), const(min(loop_plans.MIN_BANDS, lay.bands)))
        size = cdiv(const(rows), want)
        size8 = b.mul(cdiv(size, const(8)), const(8))
        size = b.select(b.icmp_signed("<", b.mul(size8, b.sub(want, const(1))), const(rows)),
                        size8, size)
        count = cdiv(const(rows), size)
        ab = ir.IRBuilder()
        ab.position_at_start(self.entry_block)
        job = ab.alloca(data_t)
        b.position_at_end(b.block)
        b.store(bufs, b.gep(job, [ir.Constant(I32, 0), ir.Constant(I32, 0)]))
        b.store(size, b.gep(job, [ir.Constant(I32, 0), ir.Constant(I32, 1)]))
        b.call(pool.declare_run(self.module), [w, b.bitcast(job, I8P), count, nthreads])

    @staticmethod
    def carries_in_stack(node: Node, nc: int, nk: int, results, steps) -> dict[int, int]:
        """Carries a scan saves per step unchanged (a per-step output that is the carry the step
        started from: what a backward pass reads of an RNN's h and c), as {carry: output}: such
        a carry lives in the stacked output itself, each step reading slice t and writing
        slice t +- 1 (the last step: the carry's own buffer), instead of a copy per step."""
        if node.op != "scan" or not steps:
            return {}
        region = node.region
        params = region.inputs[1 + nc:1 + nc + nk]
        kept: dict[int, int] = {}
        for j, v in enumerate(region.outputs[nk:]):
            if v in params and results.get(nk + j):
                kept.setdefault(params.index(v), j)
        return kept

    def timed_steps(self, plan: MemoryPlan) -> int:
        """At most this many timed steps: kernels and loops of ``plan``, with their loops'
        bodies', and row groups (fewer than their kernels)."""
        n = 0
        for node in plan.schedule:
            if node.op == "kernel":
                n += 2
            elif node.region is not None:
                n += 1 + sum(self.timed_steps(p) for _, p in self.loops.layout(node).bodies)
        return n

    def profile_counters(self) -> ir.GlobalVariable:
        """``lamina_prof``: (cycles, calls) per timed step (``profiled``); and
        ``lamina_cycles()`` to calibrate."""
        t = ir.ArrayType(I64, 2 * max(1, self.timed_steps(self.plan)))
        g = ir.GlobalVariable(self.module, t, "lamina_prof")
        g.initializer = ir.Constant(t, None)
        self.cycles_fn = L.intrinsic(self.module, "llvm.readcyclecounter", I64, [])
        f = ir.Function(self.module, ir.FunctionType(I64, []), "lamina_cycles")
        fb = ir.IRBuilder(f.append_basic_block("entry"))
        fb.ret(fb.call(self.cycles_fn, []))
        return g

    def call_kernel(self, b, node: Node, k: KernelFn, bufs, nthreads) -> None:
        """Call a kernel over its whole extent: directly, or in chunks through the pool (which
        runs them on this thread alone when nthreads is 1 or the pool is busy)."""
        fn = self.module.globals[k.name]
        parallel = (k.kind != "gemm" and k.extent > 1 and k.work >= PARALLEL_MIN_WORK)
        min_size = ACCUMULATE_MIN if k.kind == "accumulate" else 1
        size, count = kernel_chunks(k.extent, k.work, min_size) if parallel else (k.extent, 1)
        if count <= 1:
            b.call(fn, [bufs, ir.Constant(I64, 0), ir.Constant(I64, k.extent), nthreads])
            return
        w = self.chunk_wrapper(fn, k, size)
        b.call(pool.declare_run(self.module), [w, b.bitcast(bufs, I8P), ir.Constant(I64, count),
                                               nthreads])

    def call_group(self, b, group: rowgroups.RowGroup, bufs, nthreads) -> None:
        """Run a row group (see rowgroups.py) on the pool: chunk c is rows [c*size,
        min((c+1)*size, R)) of every member, one member after the other."""
        size, count = rowgroups.group_chunks(group.rows, group.work)
        first = group.members[0][1]
        w = ir.Function(self.module, pool.CHUNK_TYPE, self.kernel_name(None, first.name + ".rows"))
        w.linkage = "internal"
        wb = ir.IRBuilder(w.append_basic_block("entry"))
        lo, hi = _chunk_bounds(wb, w.args[1], size, group.rows)
        wbufs = wb.bitcast(w.args[0], I8P.as_pointer())
        for _node, k in group.members:
            per_row = ir.Constant(I64, k.extent // group.rows)  # flat kernels: row elements
            span = (lo, hi) if k.extent == group.rows else (wb.mul(lo, per_row),
                                                             wb.mul(hi, per_row))
            wb.call(self.module.globals[k.name], [wbufs, *span, ir.Constant(I32, 1)])
        wb.ret_void()
        b.call(pool.declare_run(self.module), [w, b.bitcast(bufs, I8P), ir.Constant(I64, count),
                                               nthreads])

    def emit_copies(self, b, bufs) -> None:
        """State updates that could not be written in place: copied after the last kernel."""
        m = self.module
        memcpy = None
        for v, state_name in self.plan.copies:
            if not (isinstance(v, Node) and v.op in ("kernel", "get")):
                continue  # parameters and literals are copied by the runtime
            if memcpy is None:
                memcpy = L.intrinsic(m, "llvm.memcpy.p0.p0.i64", ir.VoidType(),
                                     [I8P, I8P, I64, L.I1])
            index = [p.name for p in self.graph.state].index(state_name)
            dst = b.load(b.gep(bufs, [ir.Constant(I64, self.slots.state(index))]))
            b.call(memcpy, [dst, self.pointer(b, bufs, v), ir.Constant(I64, v.type.nbytes),
                            ir.Constant(L.I1, 0)])

