"""GEMM for the CPU backend: packed panels, a register-blocked FMA micro-kernel, pool threads.

The emitted function (one per dtype, C ABI)::

    void lamina_gemm_<T>(i64 M, i64 N, i64 K,
                         const T* A, i64 rsA, i64 csA,   // A[i,k] = A[i*rsA + k*csA]
                         const T* B, i64 rsB, i64 csB,   // B[k,j] = B[k*rsB + j*csB]
                         T* C, i64 ldc,                  // C[i,j] = C[i*ldc + j] (overwritten)
                         i64 batch, i64 bsA, i64 bsB, i64 bsC,
                         epilogue, i8* ctx, i32 nthreads)

computes ``C = A @ B`` for every batch ``b`` (operands offset by ``b*bsA`` etc.; a zero batch
stride broadcasts). ``epilogue(ctx, b, C, ldc, i0, i1, j0, j1)``, when not null, is called once
per block of C right after the block's full K sum is stored, with C pointing at batch b's matrix:
the blocks are MR rows x NC columns (one row panel of one column block, 16 x 384 for f32 on
AVX-512), hot in L1/L2 when the caller's fused elementwise ops run. Blocks of different threads
may be processed concurrently; each element belongs to exactly one block.

Blocking (the BLIS scheme, mirrored for row-major C):

* Micro-kernel: an MR x NR tile of C lives in MR*NR/VL vector registers (f32 on AVX-512:
  16 x 16 = 16 zmm accumulators, f64: 12 x 16 in 24). Each k step loads NR/VL vectors of packed
  B and broadcasts MR scalars of packed A, issuing MR*NR/VL independent FMAs (``llvm.fma``):
  enough to cover the FMA latency, with registers to spare (no spills). The K loop is unrolled
  by 4. f32 tiles of 12 x 32, 14x32, 8x48, 6x64 and 10x32 measured the same within noise with
  all data in L1, and 16 x 16 the same within 3% on large products (512^3, 1024^3, 1600x512x128,
  512x128x1600, 128x1600x512, one thread and two); it is the one whose rows fit the 16-row
  bands of a loop (loops.py): 16x128x512 on one thread 26.2 -> 20.7 us, 16x512x128 27.3 ->
  20.8 us (12 x 32 ran those as 12 + 8 rows). The C tile is prefetched for writing
  when the kernel starts (+1-4%); prefetching packed B ahead gained nothing.
* Packing: A is copied into MR-row panels (k-major: MR values per k) and B into NR-column panels
  (NR values per k), zero-padded at the edges, so the micro-kernel always runs full tiles with
  unit-stride aligned loads (edge tiles are stored with masked stores). Two operands are read
  in place instead, the micro-kernel taking their k stride: a row-major B with few rows of A
  (DIRECT_B_MAX_M), and a column-major A (a transposed operand, as in a weight gradient
  dY^T X: a panel's MR values of one k are contiguous), whose whole panels are never packed
  (only a partial last one): ``python benchmarks/gemm_kernel.py --direct-a`` measured in place
  0.86-0.95x the packed time on every shape tried, one thread and two (512x1600x64 ..
  1024^3; an LSTM step's two weight-gradient GEMMs 1099 + 607 -> 1035 + 539 us). The packers take any
  (row, column) strides, so a transposed operand costs nothing extra: a source with unit stride
  across the panel (row-major B, column-major A) is copied with vector loads, one with unit
  stride along k (row-major A, column-major B) is transposed VL x VL in registers, anything
  else is copied element by element.
* Tiles (``_Emitter.tile``): C is cut into tiles of at most MC rows (whole MR-row panels) x NC
  columns (whole NR-column panels) of one matrix of the batch. Inside a tile: pc (KC-deep K
  blocks) > ir (MR rows: the A micro-panel, MR x KC, stays in L1 across the row of micro-
  kernel calls) > jr (NR columns: the packed B block, KC x NC, stays in L2 across the rows).
  K is cut into equal blocks (K = 400 runs as 2 x 200, not 384 + 16). The first K block
  overwrites C (so K = 0 stores zeros), later ones add to it.
* Packing buffers belong to a slot (a participant of the call, ``pool.py``): one packed B for
  the tile's column block over the *whole* K (its K blocks one after another) and one packed A
  block (the tile's rows x KC). The B part stays valid across tiles: a slot that runs several
  tiles of the same column block of the same matrix packs B once. A is packed per tile, and
  never twice (tiles do not overlap).
* Threads: the tiles are the pool's chunks (several tiles per chunk only when there are very
  many), claimed dynamically by whichever participant is running; nobody waits for a thread
  that is not (another process holding a core costs that thread's share, not a scheduler slice
  per call). The tiling (``_Emitter.entry``) makes about CHUNKS_PER_THREAD tiles per thread, a
  multiple of the thread count (equal threads finish together), with tiles of consecutive rows
  of one column block numbered consecutively (so their B is shared by a slot); when the rows
  run out (small M) the column blocks get narrower; a batch of many matrices gives whole-matrix
  tiles. Calls with < ``min_flops`` run on the calling thread alone (smaller calls were slower
  threaded). Each slot packs its own copy of B: a variant sharing each packed B block between
  the threads (one barrier per block) measured the same on a quiet machine, slower for small
  matrices, and collapsed when another process held a core (a descheduled thread stalls the
  barrier). Results do not depend on the thread count: every element's sum runs over the same
  K blocks in the same order.
* Epilogue: called for each MR-row strip of a tile right after its last K block is stored.
* The last row panel of an M that is not a multiple of MR goes to a second micro-kernel of
  ``Config.tail`` rows (8 on AVX-512) when it has that few, so that it does not pay for MR
  (measured with 12 x 32 tiles, whose LSTM step of 32 rows ran as 12 + 12 + 8: 32x128x512 f32
  45 -> 40 us on one thread, 28 -> 25 us on two).
* Build: the library is compiled without IR optimization passes (the code is vectorized,
  unrolled and blocked by hand; LLVM's code generation still runs at O3) and each entry
  (GEMM_SYMBOL, GATHER_SYMBOL) is its own library where the backend builds it: about 0.1 s
  for the plain entry on the development machine, a program's first compile pays it once.

The packing workspace (one slot per thread) is allocated once and cached in a module global
of WS_CACHE entries, taken and returned with atomic exchanges: concurrent calls (the row bands
of a loop, codegen.emit_loop, run one GEMM per thread at once) each find one, and a call that
finds the cache empty allocates its own.

Constants: ``CONFIGS``; measurements: benchmarks/gemm_kernel.py.
"""

from __future__ import annotations

import ctypes
import time
from contextlib import contextmanager
from dataclasses import dataclass

from llvmlite import ir

from lamina.backends.llvm import jit, pool

GEMM_SYMBOL = {"f32": "lamina_gemm_f32", "f64": "lamina_gemm_f64"}
# The same GEMM with A and/or B read through offset tables (implicit-GEMM operands: a conv's
# patches): four extra i64* arguments arofs, akofs (A[i, k] = A[arofs[i] + akofs[k]]) and kofs,
# jofs (B[k, j] = B[kofs[k] + jofs[j]]); a null pair means that operand uses its strides.
GATHER_SYMBOL = {d: s + "_gather" for d, s in GEMM_SYMBOL.items()}
MAX_GEMM_THREADS = 64      # slots of one call (each holds packing buffers)
# Tiles per thread the tiling aims for (see _Emitter.entry). 3, not 4: an LSTM step's small
# GEMMs split into tiles of equal cost (32x512x128 on 2 threads: 6 tiles, not 9 of three
# sizes: 31 -> 26 us; 32x128x512: 27 -> 23 us) and the large ones pack A fewer times
# (512x1600x128 f32 191 -> 203 GFLOP/s); 1024^3 and a 1600x64x512 product the same within
# 2%, and the MLP and LSTM steps beside a busy process no slower.
CHUNKS_PER_THREAD = 3
MAX_GEMM_CHUNKS = 1024     # more tiles than this: several per chunk
# Packing workspaces kept between calls: one per call running at the same time (the bands of
# a row-split loop call the GEMM from every thread at once; a call finding none allocates).
WS_CACHE = 8

_i1, _i8, _i32, _i64 = ir.IntType(1), ir.IntType(8), ir.IntType(32), ir.IntType(64)
_i8p = _i8.as_pointer()
_void = ir.VoidType()
_SCALAR = {"f32": ir.FloatType(), "f64": ir.DoubleType()}
_BYTES = {"f32": 4, "f64": 8}


def _epilogue_type(dtype: str) -> ir.FunctionType:
    t = _SCALAR[dtype].as_pointer()
    return ir.FunctionType(_void, [_i8p, _i64, t, _i64, _i64, _i64, _i64, _i64])


# The epilogue callback's type, by dtype (it takes a T* like the GEMM itself):
# void (*)(i8* ctx, i64 b, T* C, i64 ldc, i64 i0, i64 i1, i64 j0, i64 j1)
EPILOGUE_TYPE = {d: _epilogue_type(d) for d in _SCALAR}


def _gemm_type(dtype: str, gather: bool = False) -> ir.FunctionType:
    """The entry's type; ``gather`` adds four ``i64*`` offset tables (see GATHER_SYMBOL)."""
    t = _SCALAR[dtype].as_pointer()
    tables = [_i64.as_pointer()] * 4 if gather else []
    return ir.FunctionType(_void, [_i64, _i64, _i64, t, _i64, _i64, t, _i64, _i64, t, _i64,
                                   _i64, _i64, _i64, _i64, EPILOGUE_TYPE[dtype].as_pointer(),
                                   _i8p, _i32, *tables])


@dataclass(frozen=True)
class Config:
    """Blocking constants for one dtype (see the module docstring)."""

    mr: int        # rows of the register tile
    nrv: int       # vectors per tile row (NR = nrv * lanes)
    kc: int        # k depth of packed panels
    mc: int        # rows of a tile at most (its packed A block: mc x kc; multiple of mr)
    nc: int        # columns of a tile at most (its packed B block: kc x nc; multiple of NR)
    unroll: int = 4          # K-loop unroll of the micro-kernel
    pf_c: bool = True        # prefetch the C tile (for writing) before the K loop
    min_flops: int = 1 << 22  # below this many flops the call stays on one thread
    b_budget: int = 4 << 20  # bytes of packed B (K x a column block) one slot may hold
    vbits: int = 512         # vector register width the tile is sized for
    tail: int = 0            # rows of a second micro-kernel for a last panel this short (0: none)

    def __post_init__(self):
        assert self.mc % self.mr == 0 and self.unroll >= 1 and self.kc >= 1

    def lanes(self, dtype: str) -> int:
        return self.vbits // (8 * _BYTES[dtype])


# By the host's vector width, then dtype. 512: AVX-512 (32 zmm: 16 f32 / 24 f64
# accumulators, measured on the target machine); 256/128 (16 ymm/xmm: 12 accumulators) keep
# other x86-64 hosts correct and reasonable, untuned.
CONFIGS = {
    512: {"f32": Config(mr=16, nrv=1, kc=384, mc=1536, nc=384, tail=8),
          "f64": Config(mr=12, nrv=2, kc=256, mc=768, nc=256, tail=8)},
    256: {"f32": Config(mr=6, nrv=2, kc=256, mc=240, nc=512, vbits=256),
          "f64": Config(mr=6, nrv=2, kc=256, mc=240, nc=256, vbits=256)},
    128: {"f32": Config(mr=6, nrv=2, kc=256, mc=240, nc=256, vbits=128),
          "f64": Config(mr=6, nrv=2, kc=256, mc=240, nc=128, vbits=128)},
}


def default_config(dtype: str) -> Config:
    """The blocking used for `dtype` on this host."""
    return CONFIGS[jit.host().vector_bits][dtype]


# --- small IR helpers -----------------------------------------------------------------------


# Up to this many rows of A, a row-major B with whole NR-column panels is read in place by
# the micro-kernel instead of packed: a packed panel would serve only ceil(M / MR) micro-tiles,
# too few to pay for copying it (an LSTM step's h @ W_hh, 32 x 128 x 512: B is 256 KiB, A
# 16 KiB). ``python benchmarks/gemm_kernel.py --direct`` (f32, AVX-512, 2 threads): in place
# 8-15% faster at M = 8..48 (32x128x512: 34.2 -> 29.5 us), equal or faster up to M = 96,
# equal at 128.
DIRECT_B_MAX_M = 96

# A column-major A is read in place (see "Packing" above); False packs it like any other
# (``python benchmarks/gemm_kernel.py --direct-a`` compares the two).
DIRECT_A = True


def _c64(v: int) -> ir.Constant:
    return ir.Constant(_i64, v)


@contextmanager
def _for(b: ir.IRBuilder, start, stop, step=1, name="i"):
    """``for (i = start; i < stop; i += step)`` (signed); yields i."""
    fn = b.function
    pre = b.block
    head = fn.append_basic_block(f"{name}.head")
    body = fn.append_basic_block(f"{name}.body")
    end = fn.append_basic_block(f"{name}.end")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(_i64, name=name)
    i.add_incoming(start if isinstance(start, ir.Value) else _c64(start), pre)
    b.cbranch(b.icmp_signed("<", i, stop), body, end)
    b.position_at_end(body)
    yield i
    nxt = b.add(i, step if isinstance(step, ir.Value) else _c64(step))
    i.add_incoming(nxt, b.block)
    b.branch(head)
    b.position_at_end(end)


def _min(b, x, y):
    return b.select(b.icmp_signed("<", x, y), x, y)


def _max(b, x, y):
    return b.select(b.icmp_signed(">", x, y), x, y)


def _round16(b, x):
    """x rounded up to a multiple of 16 elements (64-byte aligned for f32, 128 for f64)."""
    return b.and_(b.add(x, _c64(15)), _c64(~15))


def _cdiv(b, x, d):
    d = d if isinstance(d, ir.Value) else _c64(d)
    return b.sdiv(b.add(x, b.sub(d, _c64(1))), d)


def _splat(b, x, vt):
    v = b.insert_element(ir.Constant(vt, ir.Undefined), x, ir.Constant(_i32, 0))
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined),
                            ir.Constant(ir.VectorType(_i32, vt.count), [0] * vt.count))


def _vptr(b, p, off, vt):
    return b.bitcast(b.gep(p, [off]), vt.as_pointer())


def _lane_mask(b, n, lanes):
    """<lanes x i1>: lane < n."""
    it = ir.VectorType(_i64, lanes)
    iota = ir.Constant(it, list(range(lanes)))
    return b.icmp_signed("<", iota, _splat(b, n, it))


def _branch(b: ir.IRBuilder, cond, then, other) -> None:
    """``if (cond) then() else other()``; just ``other()`` where ``cond`` is None (known
    false when the code is generated)."""
    if cond is None:
        other()
        return
    with b.if_else(cond) as (t, o):
        with t:
            then()
        with o:
            other()


def _new_fn(m, name, ret, args, internal=True):
    fn = ir.Function(m, ir.FunctionType(ret, args), name)
    if internal:
        fn.linkage = "internal"
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _intrinsic(m, name, ret, args):
    if name in m.globals:
        return m.globals[name]
    return ir.Function(m, ir.FunctionType(ret, args), name)


# --- the pieces --------------------------------------------------------------------------------


class _Emitter:
    def __init__(self, m: ir.Module, dtype: str, cfg: Config, gather: bool = False):
        self.m, self.dtype, self.cfg = m, dtype, cfg
        self.t = _SCALAR[dtype]
        self.tp = self.t.as_pointer()
        self.vl = cfg.lanes(dtype)
        self.vt = ir.VectorType(self.t, self.vl)
        self.mt = ir.VectorType(_i1, self.vl)
        self.nr = cfg.nrv * self.vl
        # the gather entry's pieces are its own (a library may hold both entries)
        self.prefix = f"{(GATHER_SYMBOL if gather else GEMM_SYMBOL)[dtype]}__"
        sfx = f"v{self.vl}f{_BYTES[dtype] * 8}"
        vp = self.vt.as_pointer()
        self.fma = _intrinsic(m, f"llvm.fma.{sfx}", self.vt, [self.vt] * 3)
        self.mload = _intrinsic(m, f"llvm.masked.load.{sfx}.p0", self.vt,
                                [vp, _i32, self.mt, self.vt])
        self.mstore = _intrinsic(m, f"llvm.masked.store.{sfx}.p0", _void,
                                 [self.vt, vp, _i32, self.mt])
        self.prefetch = _intrinsic(m, "llvm.prefetch.p0", _void, [_i8p, _i32, _i32, _i32])

    def prefetch_line(self, b, p, write=False, locality=3):
        b.call(self.prefetch, [b.bitcast(p, _i8p), ir.Constant(_i32, int(write)),
                               ir.Constant(_i32, locality), ir.Constant(_i32, 1)])

    def zero_v(self):
        return ir.Constant(self.vt, [0.0] * self.vl)

    # micro-kernel ------------------------------------------------------------------------------
    def ukernel(self, rows: int = 0) -> ir.Function:
        """void uk(i64 kc, T* a, T* b, T* c, i64 ldc, i64 mr, i64 nr, i1 accumulate, i64 sb):
        C[0:mr, 0:nr] (+)= Apanel(MR x kc) @ Bpanel(kc x NR), row k of the B panel at
        ``b + k*sb``: NR for a packed panel, the row stride for a B read in place (a row-major
        B: see DIRECT_B_MAX_M). One function for both: the stride in a register measured no
        slower than a second copy. ``rows`` < MR: a kernel for the last panel of an M that is
        not a multiple of MR, computing only its first ``rows`` rows (``mr <= rows``; the A
        panel keeps its MR-row layout)."""
        cfg, vt = self.cfg, self.vt
        mr_, nrv, u = rows or cfg.mr, cfg.nrv, cfg.unroll
        fn, b = _new_fn(self.m, self.prefix + "ukernel" + (f"{rows}" if rows else ""), _void,
                        [_i64, self.tp, self.tp, self.tp, _i64, _i64, _i64, _i1, _i64, _i64])
        fn.attributes.add("noinline")
        kc, pa, pb, pc, ldc, mr, nr, accum, sb, sa = fn.args
        for a in (pa, pb, pc):
            a.add_attribute("noalias")
        entry = b.block

        def k_loop(n_iter, step, acc0, pa0, pb0, name):
            """n_iter iterations of `step` k's each; returns (acc, pa, pb) after the loop."""
            pre = b.block
            head = fn.append_basic_block(name)
            done = fn.append_basic_block(name + ".done")
            b.cbranch(b.icmp_signed(">", n_iter, _c64(0)), head, done)
            b.position_at_end(head)
            cnt = b.phi(_i64)
            cnt.add_incoming(n_iter, pre)
            ap, bp = b.phi(self.tp), b.phi(self.tp)
            ap.add_incoming(pa0, pre)
            bp.add_incoming(pb0, pre)
            acc = [[b.phi(vt) for _ in range(nrv)] for _ in range(mr_)]
            for r in range(mr_):
                for v in range(nrv):
                    acc[r][v].add_incoming(acc0[r][v], pre)
            cur = [[acc[r][v] for v in range(nrv)] for r in range(mr_)]
            for s in range(step):
                row = b.mul(sb, _c64(s))
                arow = b.mul(sa, _c64(s))
                bv = [b.load(_vptr(b, bp, b.add(row, _c64(v * self.vl)), vt),
                             align=_BYTES[self.dtype]) for v in range(nrv)]
                for r in range(mr_):
                    x = _splat(b, b.load(b.gep(ap, [b.add(arow, _c64(r))])), vt)
                    for v in range(nrv):
                        cur[r][v] = b.call(self.fma, [x, bv[v], cur[r][v]])
            ap2 = b.gep(ap, [b.mul(sa, _c64(step))])
            bp2 = b.gep(bp, [b.mul(sb, _c64(step))])
            cnt2 = b.sub(cnt, _c64(1))
            cnt.add_incoming(cnt2, b.block)
            ap.add_incoming(ap2, b.block)
            bp.add_incoming(bp2, b.block)
            for r in range(mr_):
                for v in range(nrv):
                    acc[r][v].add_incoming(cur[r][v], b.block)
            b.cbranch(b.icmp_signed(">", cnt2, _c64(0)), head, done)
            b.position_at_end(done)
            out_acc = [[b.phi(vt) for _ in range(nrv)] for _ in range(mr_)]
            for r in range(mr_):
                for v in range(nrv):
                    out_acc[r][v].add_incoming(acc0[r][v], pre)
                    out_acc[r][v].add_incoming(cur[r][v], head)
            oa, ob = b.phi(self.tp), b.phi(self.tp)
            oa.add_incoming(pa0, pre)
            oa.add_incoming(ap2, head)
            ob.add_incoming(pb0, pre)
            ob.add_incoming(bp2, head)
            return out_acc, oa, ob

        zero = [[self.zero_v() for _ in range(nrv)] for _ in range(mr_)]
        b.position_at_end(entry)
        buf = b.alloca(ir.ArrayType(self.t, mr_ * self.nr), name="edge")
        buf.align = 64
        self.edge_buf = b.bitcast(buf, self.tp)
        if cfg.pf_c:
            for r in range(mr_):
                row = b.gep(pc, [b.mul(ldc, _c64(r))])
                for ln in range(0, self.nr * _BYTES[self.dtype], 64):
                    self.prefetch_line(b, b.gep(row, [_c64(ln // _BYTES[self.dtype])]), True)
        acc, pa1, pb1 = k_loop(b.sdiv(kc, _c64(u)), u, zero, pa, pb, "kloop")
        acc, _, _ = k_loop(b.srem(kc, _c64(u)), 1, acc, pa1, pb1, "krem")

        full = b.and_(b.icmp_signed("==", mr, _c64(mr_)), b.icmp_signed("==", nr, _c64(self.nr)))
        with b.if_else(full) as (then, other):
            with then, b.if_else(accum) as (t2, o2):
                with t2:
                    self._store_full(b, acc, pc, ldc, True)
                with o2:
                    self._store_full(b, acc, pc, ldc, False)
            with other:
                self._store_edge(b, fn, acc, pc, ldc, mr, nr, accum)
        b.ret_void()
        return fn

    def _store_full(self, b, acc, pc, ldc, accumulate):
        for r, row in enumerate(acc):
            base = b.gep(pc, [b.mul(ldc, _c64(r))])
            for v, x in enumerate(row):
                p = _vptr(b, base, _c64(v * self.vl), self.vt)
                if accumulate:
                    x = b.fadd(x, b.load(p, align=_BYTES[self.dtype]))
                b.store(x, p, align=_BYTES[self.dtype])

    def _store_edge(self, b, fn, acc, pc, ldc, mr, nr, accum):
        """An edge tile: its first ``mr`` rows and ``nr`` columns, through ``self.edge_buf``
        (the tile spilled to the stack): per row, the whole vectors inside the columns are
        stored as such and the columns past them element by element (masked stores cost tens
        of cycles each on AMD cores, and an edge tile is every tile of a GEMM narrower than
        NR: a conv's taps, a classifier's classes). Loops, not unrolled code: unrolled per row
        and lane this was three quarters of the library's IR and of its build time."""
        al = _BYTES[self.dtype]
        va = self.vl * al  # the buffer's vectors are aligned to their size (it is to 64 bytes)
        buf = self.edge_buf
        for r, row in enumerate(acc):
            for v, x in enumerate(row):
                b.store(x, _vptr(b, buf, _c64(r * self.nr + v * self.vl), self.vt), align=va)
        whole = b.mul(b.sdiv(nr, _c64(self.vl)), _c64(self.vl))
        with _for(b, _c64(0), mr, name="er") as r:
            src = b.gep(buf, [b.mul(r, _c64(self.nr))])
            dst = b.gep(pc, [b.mul(r, ldc)])
            with _for(b, _c64(0), whole, self.vl, name="ev") as j:
                p = _vptr(b, dst, j, self.vt)
                x = b.load(_vptr(b, src, j, self.vt), align=va)
                b.store(b.select(accum, b.fadd(x, b.load(p, align=al)), x), p, align=al)
            with _for(b, whole, nr, name="es") as j:
                q = b.gep(dst, [j])
                e = b.load(b.gep(src, [j]))
                b.store(b.select(accum, b.fadd(e, b.load(q)), e), q)

    # tiles and chunks --------------------------------------------------------------------------
    # The job: the entry's arguments, the tiling it chose and the workspace (see entry()).
    JOB = ("M", "N", "K", "A", "rsA", "csA", "B", "rsB", "csB", "C", "ldc", "batch", "bsA",
           "bsB", "bsC", "epi", "ctx", "ws", "stride", "boff", "kstep", "nib", "njb", "pm",
           "pn", "nbmax", "upc", "units", "tags", "kofs", "jofs", "arofs", "akofs")

    def job_fields(self):
        ep = EPILOGUE_TYPE[self.dtype].as_pointer()
        types = {"A": self.tp, "B": self.tp, "C": self.tp, "ws": self.tp, "epi": ep,
                 "ctx": _i8p, "tags": _i64.as_pointer(), "kofs": _i64.as_pointer(),
                 "jofs": _i64.as_pointer(), "arofs": _i64.as_pointer(),
                 "akofs": _i64.as_pointer()}
        return [types.get(name, _i64) for name in self.JOB]

    def tile(self, uks, pack_a, pack_b, pack_bt, pack_at) -> ir.Function:
        """void tile(job*, i64 slot, i64 bi, i64 jb, i64 ib): C[rows of ib, columns of jb] of
        matrix bi, with the packing buffers of `slot`.

        Row block ib is row panels [ib*pm/nib, (ib+1)*pm/nib) (pm panels of MR rows), column
        block jb likewise of NR-column panels: blocks differ by at most one panel. The slot's
        buffer keeps B[:, columns of jb] of matrix bi packed for the whole K (its K blocks one
        after another, nbmax columns apart): a slot that runs several tiles of the same column
        block (consecutive chunks) packs B once. A's rows are packed per tile and K block.
        Within a tile: pc (K blocks) > ir (MR rows; the A micro-panel stays in L1) > jr (NR
        columns; the packed B block stays in L2). The first K block overwrites C (K = 0:
        zeros), later ones add to it; the epilogue runs on each MR-row strip after its last K
        block."""
        cfg = self.cfg
        st = ir.LiteralStructType(self.job_fields())
        fn, b = _new_fn(self.m, self.prefix + "tile", _void,
                        [st.as_pointer(), _i64, _i64, _i64, _i64])
        jp, slot, bi, jb, ib = fn.args
        f = {name: b.load(b.gep(jp, [ir.Constant(_i32, 0), ir.Constant(_i32, k)]))
             for k, name in enumerate(self.JOB)}
        M, N, K = f["M"], f["N"], f["K"]
        ws = b.gep(f["ws"], [b.mul(slot, f["stride"])])
        bfull, abuf = ws, b.gep(ws, [f["boff"]])

        def bounds(x, n, parts, unit, limit):
            lo = b.mul(b.sdiv(b.mul(x, n), parts), _c64(unit))
            hi = _min(b, b.mul(b.sdiv(b.mul(b.add(x, _c64(1)), n), parts), _c64(unit)), limit)
            return lo, hi

        j0, j1 = bounds(jb, f["pn"], f["njb"], self.nr, N)
        i0, i1 = bounds(ib, f["pm"], f["nib"], cfg.mr, M)
        nbw = b.sub(j1, j0)
        kpos = b.select(b.icmp_signed(">", K, _c64(0)), K, _c64(1))
        kstep, nbmax = f["kstep"], f["nbmax"]
        tag_at = b.gep(f["tags"], [slot])
        tag = b.add(b.mul(bi, f["njb"]), jb)
        kofs = f["kofs"]
        # offset tables only reach the gather entry's tile (pack_bt/pack_at None otherwise)
        tables = None if pack_bt is None else b.icmp_unsigned("!=", kofs,
                                                              ir.Constant(kofs.type, None))
        # B read in place (no packing): row-major, whole NR-column panels, few rows of A to
        # share a packed copy (DIRECT_B_MAX_M)
        direct = b.and_(b.icmp_signed("==", f["csB"], _c64(1)),
                        b.and_(b.icmp_signed("==", b.srem(N, _c64(self.nr)), _c64(0)),
                               b.icmp_signed("<=", M, _c64(DIRECT_B_MAX_M))))
        if tables is not None:
            direct = b.and_(b.not_(tables), direct)
        b_in_place = b.gep(f["B"], [b.add(b.mul(bi, f["bsB"]), j0)])
        # A read in place: column-major (a transposed operand, as in a weight gradient
        # dY^T X), so a panel's MR values of one k are contiguous; whole panels only
        direct_a = b.icmp_signed("==", f["rsA"], _c64(1 if DIRECT_A else -1))
        if tables is not None:
            direct_a = b.and_(b.not_(b.icmp_unsigned("!=", f["arofs"],
                                                     ir.Constant(f["arofs"].type, None))),
                              direct_a)

        def pack_b_tables():  # B through offset tables: B[k, j] = B[bi*bsB + kofs[k] + jofs[j]]
            src = b.gep(f["B"], [b.mul(bi, f["bsB"])])
            jt = b.gep(f["jofs"], [j0])
            with _for(b, _c64(0), kpos, kstep, name="pbt") as pc:
                kc = _min(b, b.sub(K, pc), kstep)
                b.call(pack_bt, [kc, nbw, src, b.gep(kofs, [pc]), jt,
                                 b.gep(bfull, [b.mul(pc, nbmax)])])

        def pack_b_strided():
            src = b.gep(f["B"], [b.add(b.mul(bi, f["bsB"]), b.mul(j0, f["csB"]))])
            with _for(b, _c64(0), kpos, kstep, name="pb") as pc:
                kc = _min(b, b.sub(K, pc), kstep)
                b.call(pack_b, [kc, nbw, b.gep(src, [b.mul(pc, f["rsB"])]), f["csB"],
                                f["rsB"], b.gep(bfull, [b.mul(pc, nbmax)])])

        with b.if_then(b.and_(b.not_(direct), b.icmp_signed("!=", b.load(tag_at), tag))):
            _branch(b, tables, pack_b_tables, pack_b_strided)
            b.store(tag, tag_at)
        epi, ctx = f["epi"], f["ctx"]
        has_epi = b.icmp_unsigned("!=", epi, ir.Constant(epi.type, None))
        a_src = b.gep(f["A"], [b.add(b.mul(bi, f["bsA"]), b.mul(i0, f["rsA"]))])
        arofs = f["arofs"]
        a_tables = None if pack_at is None else b.icmp_unsigned("!=", arofs,
                                                                ir.Constant(arofs.type, None))
        cb = b.gep(f["C"], [b.mul(bi, f["bsC"])])
        ldc = f["ldc"]
        with _for(b, _c64(0), kpos, kstep, name="pc") as pc:
            kc = _min(b, b.sub(K, pc), kstep)
            first = b.icmp_signed("==", pc, _c64(0))
            call_epi = b.and_(b.icmp_signed(">=", b.add(pc, kc), K), has_epi)
            with b.if_then(b.not_(direct_a)):
                _branch(  # A through offset tables: A[i, k] = A[bi*bsA + arofs[i] + akofs[k]]
                    b, a_tables,
                    lambda: b.call(pack_at, [kc, b.sub(i1, i0),
                                             b.gep(f["A"], [b.mul(bi, f["bsA"])]),
                                             b.gep(f["arofs"], [i0]), b.gep(f["akofs"], [pc]),
                                             abuf]),
                    lambda: b.call(pack_a, [kc, b.sub(i1, i0),
                                            b.gep(a_src, [b.mul(pc, f["csA"])]),
                                            f["rsA"], f["csA"], abuf]))
            bblk = b.gep(bfull, [b.mul(pc, nbmax)])
            with _for(b, i0, i1, _c64(cfg.mr), name="ir") as ir_:
                mr = _min(b, b.sub(i1, ir_), _c64(cfg.mr))
                ap = b.gep(abuf, [b.mul(b.sub(ir_, i0), kc)])
                # a partial last panel of an A read in place is packed (its kernel reads MR
                # or `tail` values per k: past A's last row)
                a_here = b.gep(a_src, [b.add(b.sub(ir_, i0), b.mul(pc, f["csA"]))])
                whole = b.icmp_signed("==", mr, _c64(cfg.mr))
                with b.if_then(b.and_(direct_a, b.not_(whole))):
                    b.call(pack_a, [kc, mr, a_here, f["rsA"], f["csA"], ap])
                in_place = b.and_(direct_a, whole)
                ap = b.select(in_place, a_here, ap)
                sa = b.select(in_place, f["csA"], _c64(cfg.mr))
                crow = b.gep(cb, [b.add(b.mul(ir_, ldc), j0)])
                with _for(b, _c64(0), nbw, _c64(self.nr), name="jr") as jr:
                    nr = _min(b, b.sub(nbw, jr), _c64(self.nr))
                    bsrc = b.select(direct,
                                    b.gep(b_in_place, [b.add(b.mul(pc, f["rsB"]), jr)]),
                                    b.gep(bblk, [b.mul(jr, kc)]))
                    args = [kc, ap, bsrc, b.gep(crow, [jr]), ldc, mr, nr, b.not_(first),
                            b.select(direct, f["rsB"], _c64(self.nr)), sa]
                    uk, short = uks
                    _branch(b, None if short is None else b.icmp_signed("<=", mr,
                                                                         _c64(cfg.tail)),
                            lambda: b.call(short, args), lambda: b.call(uk, args))
                with b.if_then(call_epi):
                    b.call(epi, [ctx, bi, cb, ldc, ir_, b.add(ir_, mr), j0, j1])
        b.ret_void()
        return fn

    def chunk(self, tile) -> ir.Function:
        """void chunk(i8* job, i64 c, i64 slot): the pool's chunk function. Chunk c is units
        [c*upc, (c+1)*upc) of units (bi, jb, ib), ib fastest: consecutive units share a column
        block, so a slot running them packs B once."""
        fn, b = _new_fn(self.m, self.prefix + "chunk", _void, [_i8p, _i64, _i64])
        data, c, slot = fn.args
        jp = b.bitcast(data, ir.LiteralStructType(self.job_fields()).as_pointer())

        def field(name):
            return b.load(b.gep(jp, [ir.Constant(_i32, 0),
                                     ir.Constant(_i32, self.JOB.index(name))]))

        upc, nib, njb = field("upc"), field("nib"), field("njb")
        u0 = b.mul(c, upc)
        u1 = _min(b, b.add(u0, upc), field("units"))
        with _for(b, u0, u1, name="u") as u:
            t = b.sdiv(u, nib)
            b.call(tile, [jp, slot, b.sdiv(t, njb), b.srem(t, njb), b.srem(u, nib)])
        b.ret_void()
        return fn

    # the entry point -----------------------------------------------------------------------------
    def entry(self, chunk, gather: bool = False) -> ir.Function:
        """The GEMM: choose the tiling, take a workspace, run the chunks on the pool.

        Tiling: column blocks as wide as NC (and as the workspace budget allows: each slot
        holds a K x block packed B); then row blocks of at most MC rows, more of them until
        there are CHUNKS_PER_THREAD tiles per thread (and a multiple of the thread count, so
        equal threads finish together); if the rows run out first (small M), narrower column
        blocks. Many matrices in the batch: a tile is a whole matrix (or its MC-row part).
        With ``gather`` (the GATHER_SYMBOL entry), B's row and column strides are offset
        tables instead (``kofs`` over K, ``jofs`` over N)."""
        cfg, m = self.cfg, self.m
        sym = (GATHER_SYMBOL if gather else GEMM_SYMBOL)[self.dtype]
        fn = ir.Function(m, _gemm_type(self.dtype, gather), sym)
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        (M, N, K, A, rsA, csA, B, rsB, csB, C, ldc, batch, bsA, bsB, bsC, epi, ctx,
         nthreads) = fn.args[:18]
        null = ir.Constant(_i64.as_pointer(), None)
        arofs, akofs, kofs, jofs = fn.args[18:] if gather else (null,) * 4
        done = fn.append_basic_block("done")
        body = fn.append_basic_block("body")
        empty = b.or_(b.or_(b.icmp_signed("<=", M, _c64(0)), b.icmp_signed("<=", N, _c64(0))),
                      b.icmp_signed("<=", batch, _c64(0)))
        b.cbranch(empty, done, body)
        b.position_at_end(body)
        tags = b.alloca(ir.ArrayType(_i64, MAX_GEMM_THREADS))
        # Threads: as asked (1..MAX_GEMM_THREADS), but one for problems too small to pay.
        flops = b.mul(b.mul(b.mul(b.mul(M, N), K), batch), _c64(2))
        nt = b.sext(nthreads, _i64)
        nt = b.select(b.icmp_signed("<", nt, _c64(1)), _c64(1), _min(b, nt, _c64(MAX_GEMM_THREADS)))
        nt = b.select(b.icmp_signed("<", flops, _c64(cfg.min_flops)), _c64(1), nt)
        pm, pn = _cdiv(b, M, cfg.mr), _cdiv(b, N, self.nr)
        kpos = b.select(b.icmp_signed(">", K, _c64(0)), K, _c64(1))
        kstep = _cdiv(b, kpos, _cdiv(b, kpos, cfg.kc))
        budget = _max(b, _c64(1), b.sdiv(_c64(cfg.b_budget // _BYTES[self.dtype]),
                                         b.mul(kpos, _c64(self.nr))))
        njb = _cdiv(b, pn, _min(b, _c64(max(1, cfg.nc // self.nr)), budget))
        many = b.icmp_signed(">", nt, _c64(1))
        want = b.select(many, b.mul(nt, _c64(CHUNKS_PER_THREAD)), _c64(1))
        base = b.mul(batch, njb)
        nib = _max(b, _cdiv(b, pm, _c64(cfg.mc // cfg.mr)), _min(b, pm, _cdiv(b, want, base)))
        # a multiple of the thread count where the rows allow it
        nib_at = b.alloca(_i64)
        b.store(nib, nib_at)
        with _for(b, _c64(0), nt, name="even"):
            cur = b.load(nib_at)
            uneven = b.icmp_signed("!=", b.srem(b.mul(base, cur), nt), _c64(0))
            b.store(b.select(b.and_(uneven, b.icmp_signed("<", cur, pm)),
                             b.add(cur, _c64(1)), cur), nib_at)
        nib = b.load(nib_at)
        short = b.and_(many, b.icmp_signed("<", b.mul(base, nib), want))
        njb = b.select(short, _max(b, njb, _min(b, pn, _cdiv(b, want, b.mul(batch, nib)))), njb)
        nbmax = b.mul(_cdiv(b, pn, njb), _c64(self.nr))
        rmax = b.mul(_cdiv(b, pm, nib), _c64(cfg.mr))
        units = b.mul(b.mul(batch, njb), nib)
        upc = _cdiv(b, units, _c64(MAX_GEMM_CHUNKS))
        nchunks = _cdiv(b, units, upc)
        boff = _round16(b, b.mul(kpos, nbmax))
        # a vector of slack after the packed A block: store_lanes reads and rewrites a whole
        # vector at the end of a partial panel row
        stride = b.add(boff, _round16(b, b.add(b.mul(rmax, kstep), _c64(self.vl))))
        ws = self.take_workspace(b, b.mul(b.mul(nt, stride), _c64(_BYTES[self.dtype])))
        tp = b.gep(tags, [_c64(0), _c64(0)])
        with _for(b, _c64(0), nt, name="tag") as s:
            b.store(_c64(-1), b.gep(tp, [s]))
        st = ir.LiteralStructType(self.job_fields())
        job = b.alloca(st)
        vals = dict(M=M, N=N, K=K, A=A, rsA=rsA, csA=csA, B=B, rsB=rsB, csB=csB, C=C, ldc=ldc,
                    batch=batch, bsA=bsA, bsB=bsB, bsC=bsC, epi=epi, ctx=ctx,
                    ws=b.bitcast(ws, self.tp), stride=stride, boff=boff, kstep=kstep, nib=nib,
                    njb=njb, pm=pm, pn=pn, nbmax=nbmax, upc=upc, units=units, tags=tp,
                    kofs=kofs, jofs=jofs, arofs=arofs, akofs=akofs)
        for k, name in enumerate(self.JOB):
            b.store(vals[name], b.gep(job, [ir.Constant(_i32, 0), ir.Constant(_i32, k)]))
        b.call(pool.declare_run(m), [chunk, b.bitcast(job, _i8p), nchunks, b.trunc(nt, _i32)])
        self.give_workspace(b, ws)
        b.branch(done)
        b.position_at_end(done)
        b.ret_void()
        return fn

    def cache_global(self):
        """WS_CACHE cached workspaces (i8*, null: none), shared by all calls."""
        name = self.prefix + "ws_cache"
        if name in self.m.globals:
            return self.m.globals[name]
        t = ir.ArrayType(_i8p, WS_CACHE)
        g = ir.GlobalVariable(self.m, t, name)
        g.linkage = "internal"
        g.initializer = ir.Constant(t, None)
        return g

    def take_workspace(self, b, need):
        """A 64-byte aligned buffer of at least `need` bytes; its first 64 bytes (before the
        returned pointer) hold the capacity. The first cached one found (taken with an atomic
        exchange), else a new one."""
        g = self.cache_global()
        alloc = _intrinsic(self.m, "aligned_alloc", _i8p, [_i64, _i64])
        free = _intrinsic(self.m, "free", _void, [_i8p])
        null = ir.Constant(_i8p, None)
        slot = b.alloca(_i8p)
        b.store(null, slot)
        with _for(b, _c64(0), _c64(WS_CACHE), name="wsget") as k, \
                b.if_then(b.icmp_unsigned("==", b.load(slot), null)):
            at = b.gep(g, [_c64(0), k])
            b.store(b.atomic_rmw("xchg", at, null, "acquire"), slot)
        old = b.load(slot)
        has = b.icmp_unsigned("!=", old, null)
        cap_ok = b.alloca(_i1)
        b.store(ir.Constant(_i1, 0), cap_ok)
        with b.if_then(has):
            cap = b.load(b.bitcast(old, _i64.as_pointer()))
            b.store(b.icmp_signed(">=", cap, need), cap_ok)
        with b.if_then(b.not_(b.load(cap_ok))):
            with b.if_then(has):
                b.call(free, [old])
            size = b.and_(b.add(need, _c64(64 + 63)), _c64(~63))
            new = b.call(alloc, [_c64(64), size])
            b.store(need, b.bitcast(new, _i64.as_pointer()))
            b.store(new, slot)
        return b.gep(b.load(slot), [_c64(64)])

    def give_workspace(self, b, ws):
        """Back into the first empty cache entry (compare-and-swap from null), else freed."""
        g = self.cache_global()
        free = _intrinsic(self.m, "free", _void, [_i8p])
        null = ir.Constant(_i8p, None)
        left = b.alloca(_i8p)
        b.store(b.gep(ws, [_c64(-64)]), left)
        with _for(b, _c64(0), _c64(WS_CACHE), name="wsput") as k:
            mine = b.load(left)
            with b.if_then(b.icmp_unsigned("!=", mine, null)):
                at = b.gep(g, [_c64(0), k])
                res = b.cmpxchg(at, null, mine, "release", "monotonic")
                with b.if_then(b.extract_value(res, 1)):
                    b.store(null, left)
        mine = b.load(left)
        with b.if_then(b.icmp_unsigned("!=", mine, null)):
            b.call(free, [mine])


# --- public API --------------------------------------------------------------------------------


def emit_gemm(module: ir.Module, dtype: str, cfg: Config | None = None,
              gather: bool = False) -> ir.Function:
    """Add the GEMM function for dtype ("f32" or "f64") and everything it needs to `module`:
    GEMM_SYMBOL, or with ``gather`` GATHER_SYMBOL (whose table packers are most of its code:
    they double the build time, so only programs that read an operand through offset tables
    build them)."""
    from lamina.backends.llvm import gemm_gather, gemm_pack  # they build on this module's helpers

    e = _Emitter(module, dtype, cfg or default_config(dtype), gather)
    tables = (gemm_gather.pack_table(e), gemm_gather.pack_table_a(e)) if gather else (None,) * 2
    uks = (e.ukernel(), e.ukernel(e.cfg.tail) if e.cfg.tail else None)
    packs = (gemm_pack.pack(e, "a"), gemm_pack.pack(e, "b"))
    return e.entry(e.chunk(e.tile(uks, *packs, *tables)), gather)


def declare_gemm(module: ir.Module, dtype: str, gather: bool = False) -> ir.Function:
    """Declare (not define) the GEMM for dtype in another module, to call it from there."""
    name = (GATHER_SYMBOL if gather else GEMM_SYMBOL)[dtype]
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, _gemm_type(dtype, gather), name)


# Engines are never freed: jit.Engine hands the shared cached TargetMachine to MCJIT, which takes
# ownership of it and frees it with the engine, after which any later compile crashes. Keeping
# every GemmLibrary's engine alive avoids that (a few hundred KiB each; built rarely).
_KEEP_ALIVE: list = []


class GemmLibrary:
    """The compiled GEMMs: an engine holding them, their addresses and the object code (for a
    cache: ``GemmLibrary.from_object(lib.object_code)`` loads it again without compiling)."""

    def __init__(self, engine: jit.Engine, object_code: bytes, seconds: float = 0.0):
        self.engine, self.object_code, self.seconds = engine, object_code, seconds
        _KEEP_ALIVE.append(engine)
        self.addresses = {d: engine.address(s) for d, s in GEMM_SYMBOL.items()
                          if engine.has(s)}
        self.gather_addresses = {d: engine.address(s) for d, s in GATHER_SYMBOL.items()
                                 if engine.has(s)}
        self._fns = {}

    @classmethod
    def from_object(cls, object_code: bytes) -> GemmLibrary:
        return cls(jit.Engine(object_code=object_code), object_code)

    def cfunc(self, dtype: str):
        """The GEMM as a ctypes function (pointers as integers, the epilogue as an address)."""
        if dtype not in self._fns:
            i64, vp = ctypes.c_int64, ctypes.c_void_p
            proto = ctypes.CFUNCTYPE(None, i64, i64, i64, vp, i64, i64, vp, i64, i64, vp, i64,
                                     i64, i64, i64, i64, vp, vp, ctypes.c_int32)
            self._fns[dtype] = proto(self.addresses[dtype])
        return self._fns[dtype]

    def gather_matmul(self, a, src, kofs, jofs, out, bsb: int = 0, nthreads: int | None = None,
                      a_tables=None, bsa: int = 0):
        """``out[i] = A[i] @ B[i]`` with ``B[i][k, j] = src.flat[i*bsb + kofs[k] + jofs[j]]``
        (the gather entry; for tests). ``a``: [M, K] or [batch, M, K] (a batch of 1
        broadcasts); or, with ``a_tables=(rofs, akofs)``, a contiguous array read as
        ``A[i][r, k] = a.flat[i*bsa + rofs[r] + akofs[k]]``. ``out`` [batch, M, N]
        contiguous, ``src`` contiguous; ``kofs=None``: ``src`` is a plain [batch, K, N]."""
        import numpy as np

        batch, m, n = out.shape
        assert out.flags.c_contiguous and a.dtype == out.dtype
        tabs = []
        if a_tables is None:
            a3 = a if a.ndim == 3 else a[None]
            k = a3.shape[2]
            es = a.itemsize
            sa = [s // es for s in a3.strides]
            if a3.shape[0] == 1:
                sa[0] = 0
            tabs += [None, None]
        else:
            assert a.flags.c_contiguous
            rofs, akofs = (np.ascontiguousarray(t, np.int64) for t in a_tables)
            k = len(akofs)
            assert rofs.shape == (m,)
            sa = [bsa, 0, 0]
            tabs += [rofs, akofs]
        if kofs is None:
            assert src.shape[-2:] == (k, n) and src.flags.c_contiguous
            sb = [k * n if src.ndim == 3 and src.shape[0] > 1 else 0, n, 1]
            tabs += [None, None]
        else:
            assert src.flags.c_contiguous
            kofs = np.ascontiguousarray(kofs, np.int64)
            jofs = np.ascontiguousarray(jofs, np.int64)
            assert kofs.shape == (k,) and jofs.shape == (n,)
            sb = [bsb, 0, 0]
            tabs += [kofs, jofs]
        dtype = "f32" if out.itemsize == 4 else "f64"
        i64, vp = ctypes.c_int64, ctypes.c_void_p
        proto = ctypes.CFUNCTYPE(None, i64, i64, i64, vp, i64, i64, vp, i64, i64, vp, i64,
                                 i64, i64, i64, i64, vp, vp, ctypes.c_int32, vp, vp, vp, vp)
        fn = proto(self.gather_addresses[dtype])
        fn(m, n, k, a.ctypes.data, sa[1], sa[2], src.ctypes.data, sb[1], sb[2],
           out.ctypes.data, n, batch, sa[0], sb[0], m * n, None, None,
           jit.threads() if nthreads is None else nthreads,
           *[None if t is None else t.ctypes.data for t in tabs])
        return out

    def call_args(self, a, b, out, nthreads: int | None = None, epilogue: int = 0,
                  ctx: int = 0) -> tuple:
        """(function, arguments) computing ``out = a @ b`` for numpy arrays: 2-D, or 3-D
        batches where a batch dimension of 1 broadcasts; any strides for a and b, unit column
        stride for out. Calling ``fn(*args)`` again repeats it (for benchmarks)."""
        a3, b3, c3 = (x if x.ndim == 3 else x[None] for x in (a, b, out))
        batch, m, n = c3.shape
        k = a3.shape[2]
        assert a.dtype == b.dtype == out.dtype and a3.shape[1:] == (m, k)
        assert b3.shape[1:] == (k, n) and a3.shape[0] in (1, batch) and b3.shape[0] in (1, batch)
        assert c3.strides[2] == c3.itemsize or c3.size == 0
        es = a.itemsize
        sa, sb, sc = ([s // es for s in x.strides] for x in (a3, b3, c3))
        if a3.shape[0] == 1:
            sa[0] = 0
        if b3.shape[0] == 1:
            sb[0] = 0
        fn = self.cfunc("f32" if es == 4 else "f64")
        return fn, (m, n, k, a3.ctypes.data, sa[1], sa[2], b3.ctypes.data, sb[1], sb[2],
                    c3.ctypes.data, sc[1], batch, sa[0], sb[0], sc[0], epilogue or None,
                    ctx or None, jit.threads() if nthreads is None else nthreads)

    def matmul(self, a, b, out=None, nthreads: int | None = None, epilogue: int = 0,
               ctx: int = 0):
        """``a @ b`` into `out` (allocated when None); see call_args. For tests and
        benchmarks: lamina's generated code calls the GEMM symbol directly."""
        if out is None:
            import numpy as np

            batch = max(a.shape[0] if a.ndim == 3 else 1, b.shape[0] if b.ndim == 3 else 1)
            shape = (a.shape[-2], b.shape[-1])
            out = np.empty((batch, *shape) if max(a.ndim, b.ndim) == 3 else shape, a.dtype)
        fn, args = self.call_args(a, b, out, nthreads, epilogue, ctx)
        fn(*args)
        return out


def build_module(configs: dict[str, Config] | None = None,
                 dtypes: tuple[str, ...] = tuple(GEMM_SYMBOL),
                 entries: tuple[bool, ...] = (False, True)) -> ir.Module:
    """A module holding the GEMMs of ``dtypes`` (both by default), each with the ``entries``
    (False: GEMM_SYMBOL, True: GATHER_SYMBOL; both by default)."""
    m = jit.new_module("lamina_gemm")
    for dtype in dtypes:
        for gather in entries:
            emit_gemm(m, dtype, (configs or {}).get(dtype), gather)
    return m


def build_library(configs: dict[str, Config] | None = None,
                  dtypes: tuple[str, ...] = tuple(GEMM_SYMBOL),
                  entries: tuple[bool, ...] = (False, True)) -> GemmLibrary:
    """Compile the GEMMs of ``dtypes`` with their ``entries`` (see build_module; for the host)
    to object code and load it. The result's ``object_code`` may be cached and loaded later
    with ``GemmLibrary.from_object``."""
    t0 = time.perf_counter()
    # No IR optimization (the O0 pipeline; code generation still runs at O3): the kernel is
    # vectorized, unrolled and blocked by hand, and the IR passes made it no faster (f32
    # 32x128x512, 32x512x128, 512^3, 64x784x10 within 2% of O1's speed) while taking 0.24 of
    # the library's 0.45 s build (O3: no faster either, 0.03 s longer still).
    opt = jit.optimize(jit.finalize_text(build_module(configs, dtypes, entries)), loops=False,
                       level=0)
    obj = jit.emit_object(opt.module)
    lib = GemmLibrary.from_object(obj)
    lib.seconds = time.perf_counter() - t0
    return lib
