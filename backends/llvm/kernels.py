"""LLVM functions for fused kernels: the loop structure of each kind of kernel.

Every kernel becomes ``void k(i8** bufs, i64 lo, i64 hi, i32 nthreads)`` that computes its
share ``[lo, hi)`` of a parallel axis (``extent`` in total), so the entry function can call it
directly or hand chunks of it to the thread pool (``pool.py``). Kinds (``classify``):

    flat        elementwise only, every operand full-size or scalar: one loop over the elements
    loop        elementwise and shape ops: a loop nest over the result's shape
    row         reductions over the same axes (trailing ones in practice): per row, one inner
                loop per reduction, then one writing the result (softmax, layernorm, NLL)
    accumulate  one reduction over leading axes (a column sum): sweep the input in memory order,
                accumulating into the result, then apply what follows the reduction
    gemm        the shared GEMM (``gemm.py``) with the kernel's other ops as its epilogue
    scatter     scatter_add (sequential)
    window      a pooling gradient (``pooling.py``): per window of each plane, with an
                elementwise epilogue where windows do not overlap
    scan        a scan (cumsum) over its fused operand: along the axis in order, per row with
                the running value in a register when no axis after it varies, else a slice at
                a time (each step reads the previous step's slice of the result)
    attention   a fused attention or attention gradient node alone: the flash-style kernels
                of ``attention.py``
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from lamina.backends.llvm import lower as L
from lamina.backends.llvm.emitter import Emitter, Loops, strides_of
from lamina.passes.fuse import POOL_GRADS, row_map, row_maps
from lamina.ir.graph import Node, Param
from lamina.ir.ops.reduce import keep_shape, reduced_shape
from lamina.ir.ops.reduce import reduce_axes as axes_of
from lamina.ir.ops.registry import get as get_op

I8P = L.I8.as_pointer()
I64, I32 = L.I64, L.I32
REDUCTIONS = ("sum", "max", "min", "argmax")
PREFETCH_MIN_ROW_BYTES = 512  # shorter rows: the hardware prefetcher keeps up
KERNEL_TYPE = ir.FunctionType(ir.VoidType(), [I8P.as_pointer(), I64, I64, I32])


def _trailing(shape, axes) -> bool:
    return tuple(axes) == tuple(range(len(shape) - len(axes), len(shape)))


def classify(kernel: Node) -> str:
    region = kernel.region
    ops = [n.op for n in region.nodes]
    if any(get_op(o).kind == "attention" for o in ops):
        return "attention"
    if "matmul" in ops:
        return "gemm"
    if "scatter_add" in ops:
        return "scatter"
    if any(get_op(o).kind == "scan" for o in ops):
        return "scan"
    if any(o in POOL_GRADS for o in ops):
        return "window"
    reductions = [n for n in region.nodes if n.op in REDUCTIONS]
    root = region.outputs[0]
    if reductions:
        r = reductions[0]
        d, axes = r.inputs[0].shape, axes_of(r)
        kept = len(axes) < len(d)
        if (len(reductions) == 1 and r.op != "argmax" and kept and not _trailing(d, axes)
                and root.shape != d):
            return "accumulate"
        return "row"
    size = math.prod(root.shape)
    if all(get_op(n.op).kind in ("elementwise", "random") or n.op == "constant"
           for n in region.nodes) and all(
            math.prod(v.shape) in (1, size) for v in (*region.inputs, *region.nodes)):
        # NOTE: a random draw depends on its multi-index only through its own flat index, so a
        # full-size (or one-element) draw is fine in one flat loop; a smaller draw broadcast by
        # an elementwise op is not (it is drawn at its own positions: a loop kernel)
        return "flat"
    return "loop"


def scratch_need(kernel: Node, in_place: bool) -> int | None:
    """Bytes of scratch memory a kernel needs besides its output (None: none; zero-size
    kernels need zero bytes, but still their own typed buffer).

    A float GEMM accumulates into scratch of the matmul's type (C) when its epilogue writes
    over one of its own operands (an in-place optimizer update) or stores another dtype (a
    comparison, a cast); an accumulating reduction does so unless its result is the reduction
    itself, in the output's own storage.
    """
    kind = classify(kernel)
    region = kernel.region
    root = region.outputs[0]
    if kind == "attention":
        from lamina.backends.llvm.attention import scratch_bytes

        return scratch_bytes(root)
    if kind == "gemm":
        (mm,) = [n for n in region.nodes if n.op == "matmul"]
        if mm.dtype.is_float and root is not mm and (in_place or root.dtype is not mm.dtype):
            return mm.type.nbytes
        return None
    if kind == "accumulate":
        (r,) = [n for n in region.nodes if n.op in REDUCTIONS]
        if root is r and not in_place:
            return None
        return math.prod(r.shape) * r.dtype.itemsize
    return None


@dataclass
class KernelFn:
    name: str
    kind: str
    extent: int  # size of the parallel axis
    work: int  # elements touched: decides whether threads pay off


class KernelEmitter:
    """Emits the function of one kernel node into ``cg.module`` (a ``codegen.Codegen``)."""

    def __init__(self, cg, node: Node, name: str):
        self.cg = cg
        self.node = node
        self.region = node.region
        self.root = self.region.outputs[0]
        self.name = name
        self.kind = classify(node)
        # The body takes typed pointers (operands, output, scratch) so that LLVM knows which
        # ones cannot alias (noalias): no runtime overlap checks, no scalar fallback loops.
        # ``name`` itself is a small loader from the buffer table (see ``finish``).
        self.values = list(node.inputs) + [node]
        types = [L.storage_type(v.dtype).as_pointer() for v in self.values]
        self.has_scratch = node in cg.plan.scratch
        if self.has_scratch:
            types.append(L.I8.as_pointer())
        self.fn = ir.Function(cg.module, ir.FunctionType(ir.VoidType(), types + [I64, I64, I32]),
                              name + ".body")
        self.fn.linkage = "internal"
        # NOTE: kept out of the entry function: optimizing one body at a time is ~20% cheaper
        # for LLVM than one huge entry, and a call per kernel costs nothing at run time.
        self.fn.attributes.add("noinline")
        self._mark_noalias(len(types))
        *ptrs, self.lo, self.hi, self.nthreads = self.fn.args
        self.ptrs = ptrs
        self.b = ir.IRBuilder(self.fn.append_basic_block("entry"))
        self.loops = Loops(self.fn)
        self.cx = L.Ctx(self.b, cg.module)

    def _mark_noalias(self, count: int) -> None:
        locs = [self.cg.plan.location.get(v) for v in self.values]
        if self.has_scratch:
            locs.append(self.cg.plan.scratch[self.node])
        for i in range(count):
            a = self.fn.args[i]
            if locs[i] is not None and all(
                    j == i or not _may_overlap(locs[i], locs[j]) for j in range(count)):
                a.add_attribute("noalias")

    # --- pointers ---------------------------------------------------------------------------

    def typed(self, ptr: ir.Value, dtype) -> ir.Value:
        return self.b.bitcast(ptr, L.storage_type(dtype).as_pointer())

    def operand_pointers(self) -> dict[Param, ir.Value]:
        return dict(zip(self.region.inputs, self.ptrs))

    def output_pointer(self) -> ir.Value:
        return self.ptrs[len(self.node.inputs)]

    def scratch_pointer(self) -> ir.Value | None:
        return self.ptrs[-1] if self.has_scratch else None

    def emitter(self) -> Emitter:
        return Emitter(self.cx, self.region, self.operand_pointers(), self.cg.error_flag,
                       self.loops, self.cg.error_codes)

    def finish(self) -> None:
        self.b.ret_void()
        # the loader: void name(i8** bufs, i64 lo, i64 hi, i32 nthreads)
        w = ir.Function(self.cg.module, KERNEL_TYPE, self.name)
        w.linkage = "internal"
        bufs, lo, hi, nt = w.args
        b = ir.IRBuilder(w.append_basic_block("entry"))
        args = [b.bitcast(self.cg.pointer(b, bufs, v), L.storage_type(v.dtype).as_pointer())
                for v in self.values]
        if self.has_scratch:
            args.append(self.cg.scratch_pointer(b, bufs, self.node))
        b.call(self.fn, args + [lo, hi, nt])
        b.ret_void()

    # --- dispatch ---------------------------------------------------------------------------

    def emit(self) -> KernelFn:
        # pooling's windows along a row are few (7, 14): LLVM's cost model leaves such loops
        # scalar, at half the speed (the taps are interleaved loads, shuffled into vectors)
        if self.kind == "loop":
            from lamina.backends.llvm.pooling import vectorizable_windows

            self.loops.force_vectorize = vectorizable_windows(self.region)
        extent, work = getattr(self, f"emit_{self.kind}")()
        self.finish()
        return KernelFn(self.name, self.kind, extent, work)

    def nest(self, shape, body, par_axis: int | None, fixed=None):
        """Loops over ``shape`` (axis ``par_axis`` limited to [lo, hi)); ``body(idx)``."""
        em_idx: list = [None] * len(shape)
        fixed = fixed or {}

        def level(k):
            if k == len(shape):
                body(list(em_idx))
                return
            if k in fixed:
                em_idx[k] = fixed[k]
                level(k + 1)
                return
            if shape[k] == 1:
                em_idx[k] = ir.Constant(I64, 0)
                level(k + 1)
                return
            lo, hi = (self.lo, self.hi) if k == par_axis else (ir.Constant(I64, 0),
                                                               ir.Constant(I64, shape[k]))
            with self.loops.range(self.b, lo, hi, f"a{k}_") as i:
                em_idx[k] = i
                self._em.push()
                level(k + 1)
                self._em.pop()

        level(0)

    @staticmethod
    def par_axis(shape) -> int | None:
        for k, d in enumerate(shape):
            if d > 1:
                return k
        return None

    # --- flat and loop ----------------------------------------------------------------------

    def emit_flat(self):
        em = self._em = self.emitter()
        n = math.prod(self.root.shape)
        out = self.output_pointer()
        region = self.region

        # View every full-size value as 1-D and every scalar as 0-D.
        def flat_shape(v):
            return (n,) if math.prod(v.shape) == n and n != 1 else ()

        shapes = {v: flat_shape(v) for v in list(region.inputs) + list(region.nodes)}
        em.flat_shapes = shapes
        with self.loops.range(self.b, self.lo, self.hi, "e") as i:
            em.push()
            idx = [i] if shapes[self.root] else []
            em.store(out, i if shapes[self.root] else ir.Constant(I64, 0),
                     em.value(self.root, idx), self.root.dtype)
            em.pop()
        return n, n

    def emit_loop(self):
        em = self._em = self.emitter()
        shape = self.root.shape
        out = self.output_pointer()
        par = self.par_axis(shape)
        root = self.root
        if root.op == "concatenate" and par is not None and root.attrs["axis"] > par:
            # one loop nest per piece, writing its range of the axis: no per-element choice
            # of the piece (a select over every piece's clamped load, which does not vectorize)
            a, off = root.attrs["axis"], 0
            for x in root.inputs:
                piece = list(shape)
                piece[a] = x.shape[a]
                if piece[a]:
                    def write(idx, x=x, off=off):
                        at = list(idx)
                        at[a] = self.b.add(idx[a], ir.Constant(I64, off)) if off else idx[a]
                        em.store(out, em.linear(at, shape), em.value(x, idx), root.dtype)

                    self.nest(tuple(piece), write, par)
                off += x.shape[a]
            return shape[par], math.prod(shape)

        def body(idx):
            em.store(out, em.linear(idx, shape), em.value(self.root, idx), self.root.dtype)

        self.nest(shape, body, par)
        if not math.prod(shape):
            return 0, 0  # nothing to compute (the nest runs no iteration either)
        return (shape[par] if par is not None else 1), math.prod(shape)

    # --- reductions -------------------------------------------------------------------------

    def reductions(self) -> list[Node]:
        return [n for n in self.region.nodes if n.op in REDUCTIONS]

    def emit_row(self):
        em = self._em = self.emitter()
        reds = self.reductions()
        d, axes = reds[0].inputs[0].shape, axes_of(reds[0])
        kept = [k for k in range(len(d)) if k not in axes]
        out = self.output_pointer()
        root = self.root
        par = next((k for k in kept if d[k] > 1), None)
        outer_shape = tuple(d[k] if k in kept else 1 for k in range(len(d)))

        stash = self.stash_candidate(reds, d)
        sweeps = _sweeps(reds)  # reductions that do not need each other share one sweep
        stash_at = next((k for k, sweep in enumerate(sweeps)
                         if any(stash in _cone(r.inputs[0]) for r in sweep)), None)

        rows_left = len(sweeps) + (root.shape == d and root not in reds)

        def row(idx_outer):
            for k, sweep in enumerate(sweeps):
                here = stash if k == stash_at else None
                self.reduce_sweep(em, sweep, idx_outer, axes, here, out)
                if k == 0 and rows_left > 1:
                    self.prefetch_next_row(em, idx_outer, d, axes)
                if here is not None:  # later sweeps read it back instead of recomputing it
                    em.fixed[stash] = (out, strides_of(d), None)
            if root.shape == d and root not in reds:  # a full-shape result: one more sweep
                def write(idx):
                    em.store(out, em.linear(idx, d), em.value(root, idx), root.dtype)

                self.nest(d, write, None, fixed={k: idx_outer[k] for k in kept})
            else:
                ridx = _row_index(em, idx_outer, d, axes, root.shape)
                em.store(out, em.linear(ridx, root.shape), em.value(root, ridx), root.dtype)
            for r in reds:
                em.fixed.pop(r, None)
            em.fixed.pop(stash, None)

        self.nest(outer_shape, row, par)
        return (d[par] if par is not None else 1), math.prod(d)

    def prefetch_next_row(self, em: Emitter, idx_outer, d, axes) -> None:
        """Ask for the next row of each full-size operand (one prefetch per 64-byte line)
        while this row's later sweeps compute from cache. The first sweep waits on memory and
        the later ones on arithmetic (softmax's exp); without this the two barely overlap."""
        if list(axes) != list(range(len(d) - len(axes), len(d))):
            return
        inner = math.prod(d[k] for k in axes)
        rows = [(p, ptr, inner * p.dtype.itemsize) for p, ptr in self.operand_pointers().items()
                if p.shape == d and inner * p.dtype.itemsize >= PREFETCH_MIN_ROW_BYTES]
        if not rows:
            return
        b = self.b
        fn = L.intrinsic(self.cg.module, "llvm.prefetch.p0", ir.VoidType(),
                         [I8P, I32, I32, I32])
        read, keep_all_levels, data = ir.Constant(I32, 0), ir.Constant(I32, 3), ir.Constant(I32, 1)
        for p, ptr, nbytes in rows:
            # past the last row this points beyond the buffer: a prefetch never faults
            nxt = b.bitcast(b.gep(ptr, [b.add(em.linear(idx_outer, d), em.c64(inner))]), I8P)
            with self.loops.range(b, em.c64(0), em.c64(-(-nbytes // 64)), "pf") as j:
                b.call(fn, [b.gep(nxt, [b.mul(j, em.c64(64))]), read, keep_all_levels, data])

    def stash_candidate(self, reds, d) -> Node | None:
        """A full-row value that is expensive (it has a transcendental in it) and needed both by
        a reduction sweep and by the output sweep: the reduction sweep stores it into the output
        row, the output sweep reads it back (softmax computes each exp once). Not when the
        output overwrites one of the kernel's own operands, nor one read anywhere but at the
        position being written (through a transpose of a square, say): that position of the
        output may not hold it yet, or no longer."""
        root = self.root
        if root.shape != d or root in reds or self.cg.writes_over_operand(self.node):
            return None
        needed_late = _cone(root)
        maps = row_maps(set(self.region.nodes), root, d, axes_of(reds[0]))
        aligned = {row_map(d, d, axes_of(reds[0]))}
        best = None
        for n in self.region.nodes:
            if (n.shape == d and n.dtype is root.dtype and n in needed_late and n is not root
                    and maps is not None and maps.get(n) == aligned
                    and n not in reds and any(n in _cone(r.inputs[0]) for r in reds)
                    and any(getattr(m, "op", None) in EXPENSIVE for m in _cone(n))):
                best = n  # the latest one captures the most work
        return best

    def reduce_sweep(self, em: Emitter, reds: list[Node], idx_outer, axes, stash=None,
                     out=None) -> None:
        """One sweep over the inner axes of the current row computing the reductions ``reds``
        (none needs another's result); their values become fixed for the rest of the row.
        ``stash`` (a node of the row) is stored into ``out`` on the way."""
        d = reds[0].inputs[0].shape
        accs = [_Accumulator(self, r) for r in reds]
        kept = {k: idx_outer[k] for k in range(len(d)) if k not in axes}

        def body(idx):
            if stash is not None:
                em.store(out, em.linear(idx, d), em.value(stash, idx), stash.dtype)
            for a in accs:
                a.add(em, em.value(a.r.inputs[0], idx), idx, axes)

        self.nest(d, body, None, fixed=kept)
        for a in accs:
            em.fixed[a.r] = a.result()

    def alloca(self, t: ir.Type) -> ir.Value:
        """A stack slot in the entry block (mem2reg turns it into registers)."""
        with self.b.goto_block(self.fn.entry_basic_block):
            entry = self.fn.entry_basic_block
            if entry.instructions:
                self.b.position_before(entry.instructions[0])
            return self.b.alloca(t)

    def emit_accumulate(self):
        em = self._em = self.emitter()
        b = self.b
        (r,) = self.reductions()
        x = r.inputs[0]
        d, axes = x.shape, axes_of(r)
        kept = [k for k in range(len(d)) if k not in axes]
        red = reduced_shape(d, axes, False)
        par_d = next((k for k in kept if d[k] > 1), None)
        scratch = self.scratch_pointer()
        root = self.root
        acc = self.typed(scratch, r.dtype) if scratch is not None else self.output_pointer()
        out = self.output_pointer()
        par_red = kept.index(par_d) if par_d is not None else None

        def red_index(idx):
            return [idx[k] for k in kept]

        # 1. identity
        def init(kidx):
            em.store(acc, em.linear(kidx, red), _identity(r, x), r.dtype)

        self.nest(red, init, par_red)

        # 2. sweep the input in memory order
        def body(idx):
            v = em.value(x, idx)
            if r.op == "sum" and r.dtype is not x.dtype:
                v = L.convert(b, v, x.dtype, r.dtype)
            at = em.linear(red_index(idx), red)
            em.store(acc, at, _combine(self.cx, r.op, em.load(acc, at, r.dtype), v), r.dtype)

        self.nest(d, body, par_d)

        # 3. what follows the reduction, per kept element
        if root is not r or acc is not out:
            def finish(kidx):
                em.fixed[r] = em.load(acc, em.linear(kidx, red), r.dtype)
                ridx = _row_index(em, _full_from_kept(kidx, d, kept), d, axes, root.shape)
                em.store(out, em.linear(ridx, root.shape), em.value(root, ridx), root.dtype)
                em.fixed.pop(r, None)

            self.nest(red, finish, par_red)
        return (d[par_d] if par_d is not None else 1), math.prod(d)

    # --- scatter_add ------------------------------------------------------------------------

    def emit_scatter(self):
        em = self._em = self.emitter()
        b = self.b
        (s,) = [n for n in self.region.nodes if n.op == "scatter_add"]
        g, idx_t = s.inputs
        a, size = s.attrs["axis"], s.attrs["size"]
        out = self.output_pointer()
        if s is not self.root:
            raise AssertionError("scatter_add kernels hold only the scatter")
        shape = s.shape
        zero = L.const(s.dtype, 0)
        self.nest(shape, lambda i: em.store(out, em.linear(i, shape), zero, s.dtype), None)
        k = len(idx_t.shape)

        def body(i):
            raw = em.value(idx_t, i[a:a + k])
            j = raw if raw.type == I64 else b.sext(raw, I64)
            j = b.select(b.icmp_signed("<", j, ir.Constant(I64, 0)),
                         b.add(j, ir.Constant(I64, size)), j)
            bad = b.or_(b.icmp_signed("<", j, ir.Constant(I64, 0)),
                        b.icmp_signed(">=", j, ir.Constant(I64, size)))
            em.flag_error(bad, s)
            j = em._clamp(j, size)
            target = list(i[:a]) + [j] + list(i[a + k:])
            at = em.linear(target, shape)
            cur = em.load(out, at, s.dtype)
            em.store(out, at, L.LOWER["add"](self.cx, s, cur, em.value(g, i)), s.dtype)

        self.lo, self.hi = ir.Constant(I64, 0), ir.Constant(I64, 1)
        self.nest(g.shape, body, None)
        return 1, math.prod(g.shape)

    # --- scan -------------------------------------------------------------------------------

    def emit_scan(self):
        em = self._em = self.emitter()
        b = self.b
        s = self.root
        if get_op(s.op).kind != "scan":
            raise AssertionError("a scan kernel's result is the scan")
        x = s.inputs[0]
        a, reverse = s.attrs["axis"], s.attrs["reverse"]
        shape = s.shape
        n = shape[a]
        out = self.output_pointer()
        outer = tuple(1 if i == a else d for i, d in enumerate(shape))
        par = self.par_axis(outer)

        def term(idx):
            v = em.value(x, idx)
            return v if x.dtype is s.dtype else L.convert(b, v, x.dtype, s.dtype)

        def at(k):  # the position along the axis of step k
            return b.sub(em.c64(n - 1), k) if reverse else k

        def step(k, prev, v):
            # the first element is copied (numpy keeps a -0.0 there), the others added
            first = b.icmp_signed("==", k, em.c64(0))
            return b.select(first, v, L.LOWER["add"](self.cx, s, prev, v))

        if not any(d > 1 for d in shape[a + 1:]):
            acc = self.alloca(L.compute_type(s.dtype))

            def row(idx):
                with self.loops.range(b, em.c64(0), em.c64(n), "s") as k:
                    em.push()
                    full = list(idx)
                    full[a] = at(k)
                    cur = step(k, b.load(acc), term(full))
                    b.store(cur, acc)
                    em.store(out, em.linear(full, shape), cur, s.dtype)
                    em.pop()

            self.nest(outer, row, par)
        else:
            with self.loops.range(b, em.c64(0), em.c64(n), "s") as k:
                em.push()
                pos = at(k)
                # step 0 reads its own (unwritten) slice and discards it: always in bounds
                before = b.select(b.icmp_signed("==", k, em.c64(0)), pos,
                                  b.add(pos, em.c64(1)) if reverse else b.sub(pos, em.c64(1)))

                def body(idx):
                    prev = list(idx)
                    prev[a] = before
                    old = em.load(out, em.linear(prev, shape), s.dtype)
                    em.store(out, em.linear(idx, shape), step(k, old, term(idx)), s.dtype)

                self.nest(outer, body, par, fixed={a: pos})
                em.pop()
        if not math.prod(shape):
            return 0, 0
        return (outer[par] if par is not None else 1), math.prod(shape)

    # --- pooling gradients ------------------------------------------------------------------

    def emit_window(self):
        from lamina.backends.llvm.pooling import emit_window

        return emit_window(self)

    # --- gemm -------------------------------------------------------------------------------

    def emit_attention(self):
        from lamina.backends.llvm.attention import emit_attention_kernel

        return emit_attention_kernel(self)

    def emit_gemm(self):
        from lamina.backends.llvm.gemm_call import emit_gemm_kernel

        return emit_gemm_kernel(self)


class _Accumulator:
    """The running value of one reduction in a sweep (in stack slots mem2reg promotes)."""

    def __init__(self, ke: KernelEmitter, r: Node):
        b = ke.b
        x = r.inputs[0]
        self.r, self.b, self.cx, self.x = r, b, ke.cx, x
        self.t = L.compute_type(r.dtype) if r.op != "argmax" else L.compute_type(x.dtype)
        self.acc = ke.alloca(self.t)
        b.store(_identity(r, x), self.acc)
        # Float max/min: compare-and-select assuming no NaN (a plain vmaxps reduction once
        # vectorized) plus a separate "saw a NaN" flag that decides the result: numpy's NaN
        # propagation for a third of the instructions of llvm.maximum's exact semantics.
        self.fast_extremum = r.op in ("max", "min") and x.dtype.is_float
        if self.fast_extremum:
            self.saw_nan = ke.alloca(L.I1)
            b.store(ir.Constant(L.I1, 0), self.saw_nan)
        if r.op == "argmax":
            self.best = ke.alloca(I64)
            b.store(ir.Constant(I64, 0), self.best)

    def add(self, em: Emitter, v, idx, axes) -> None:
        b, r, x = self.b, self.r, self.x
        if r.op == "sum" and r.dtype is not x.dtype:
            v = L.convert(b, v, x.dtype, r.dtype)
        cur = b.load(self.acc)
        if r.op == "argmax":
            flat = _flat_over(em, idx, x.shape, axes)
            better = _argmax_better(b, v, cur)
            b.store(b.select(better, v, cur), self.acc)
            b.store(b.select(better, flat, b.load(self.best)), self.best)
        elif self.fast_extremum:
            fm = ("nnan", "nsz")
            better = b.fcmp_ordered(">" if r.op == "max" else "<", v, cur, flags=fm)
            b.store(b.select(better, v, cur, flags=fm), self.acc)
            b.store(b.or_(b.load(self.saw_nan), b.fcmp_unordered("uno", v, v)), self.saw_nan)
        else:
            b.store(_combine(self.cx, r.op, cur, v), self.acc)

    def result(self):
        b = self.b
        if self.r.op == "argmax":
            return b.load(self.best)
        if self.fast_extremum:
            return b.select(b.load(self.saw_nan), ir.Constant(self.t, float("nan")),
                            b.load(self.acc))
        return b.load(self.acc)


def _sweeps(reds: list[Node]) -> list[list[Node]]:
    """Reductions grouped by depth: a reduction that needs another's result comes in a later
    sweep; independent ones (sum(x) and sum(x*x)) share one."""
    depth: dict[Node, int] = {}
    for r in reds:  # region order is topological
        below = [depth[q] for q in reds if q in depth and q in _cone(r.inputs[0])]
        depth[r] = 1 + max(below, default=-1)
    out: list[list[Node]] = [[] for _ in range(max(depth.values(), default=-1) + 1)]
    for r in reds:
        out[depth[r]].append(r)
    return out


# --- small helpers ----------------------------------------------------------------------------


def _may_overlap(a, b) -> bool:
    """Could two storage locations share bytes? (arena ranges by offset, slots by index)"""
    if a.kind != b.kind or a.kind == "literal":
        return a.kind == b.kind == "literal" and False
    if a.kind == "arena":
        return a.offset < b.offset + max(b.nbytes, 1) and b.offset < a.offset + max(a.nbytes, 1)
    return a.index == b.index


# ops worth storing rather than recomputing (a transcendental each)
EXPENSIVE = ("exp", "log", "tanh", "sigmoid", "softplus", "erf", "pow", "sqrt", "rsqrt", "div")


def _cone(v) -> set:
    """The region values ``v`` depends on (itself included), not looking through reductions
    (their values are computed once per row)."""
    seen, stack = set(), [v]
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if isinstance(n, Node) and (n is v or n.op not in REDUCTIONS):
            stack.extend(n.inputs)
    return seen


def _identity(r: Node, x) -> ir.Constant:
    t = L.compute_type(r.dtype if r.op != "argmax" else x.dtype)
    if r.op == "sum":
        return ir.Constant(t, 0.0 if isinstance(t, (ir.FloatType, ir.DoubleType)) else 0)
    big = r.op in ("min",)
    if isinstance(t, (ir.FloatType, ir.DoubleType)):
        return ir.Constant(t, math.inf if big else -math.inf)
    if t == L.I1:
        return ir.Constant(t, 1 if big else 0)
    bits = t.width
    return ir.Constant(t, (1 << (bits - 1)) - 1 if big else -(1 << (bits - 1)))


def _combine(cx: L.Ctx, op: str, acc, v):
    b = cx.b
    fl = isinstance(acc.type, (ir.FloatType, ir.DoubleType))
    if op == "sum":
        # reassoc lets the vectorizer reorder the sum (a tree of partial sums: no worse than
        # numpy's pairwise summation in accuracy)
        return b.fadd(acc, v, flags=("reassoc",)) if fl else b.add(acc, v)
    if fl:
        return cx.call("maximum" if op == "max" else "minimum", acc, v)
    if acc.type == L.I1:
        return b.or_(acc, v) if op == "max" else b.and_(acc, v)
    return b.select(b.icmp_signed(">" if op == "max" else "<", v, acc), v, acc)


def _argmax_better(b, v, cur):
    if isinstance(v.type, (ir.FloatType, ir.DoubleType)):
        # numpy: the first NaN wins, then the first maximum
        is_nan = b.fcmp_unordered("uno", v, v)
        cur_nan = b.fcmp_unordered("uno", cur, cur)
        return b.or_(b.fcmp_ordered(">", v, cur), b.and_(is_nan, b.not_(cur_nan)))
    if v.type == L.I1:
        return b.icmp_unsigned(">", v, cur)
    return b.icmp_signed(">", v, cur)


def _flat_over(em: Emitter, idx, shape, axes) -> ir.Value:
    """The flat position of ``idx`` among the reduced axes (what argmax returns)."""
    sub_shape = [shape[k] for k in axes]
    return em.linear([idx[k] for k in axes], sub_shape)


def _row_index(em: Emitter, idx_full, d, axes, shape):
    """The index into a per-row value of ``shape`` (keepdims, reduced, or a reshape of the
    reduced shape: then through the flat index) for the row at ``idx_full``."""
    if tuple(shape) == tuple(keep_shape(d, axes)):
        return [ir.Constant(I64, 0) if k in axes else idx_full[k] for k in range(len(d))]
    red = reduced_shape(d, axes, False)
    kept = [idx_full[k] for k in range(len(d)) if k not in axes]
    if tuple(shape) == tuple(red):
        return kept
    if math.prod(shape) == math.prod(red):
        return em.delinear(em.linear(kept, red), shape)
    raise AssertionError(f"{shape} is not a per-row shape of {d} over {axes}")


def _full_from_kept(kidx, d, kept):
    it = iter(kidx)
    return [next(it) if k in kept else ir.Constant(I64, 0) for k in range(len(d))]

