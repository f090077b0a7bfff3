"""Flash-style attention kernels for the CPU: ``attention`` and ``attention_grad`` nodes
(``ir/ops/attention.py``), each one kernel whose [L, S] score matrix never reaches memory.

Forward, one task per (batch-head, block of BQ queries), on the thread pool: the query block
is packed once ([BQ, Ep], features padded to whole vectors with zeros); then, for each block of
BK keys (blocks entirely above the diagonal skipped when causal), the keys are packed
transposed ([Ep, BK]) and the values as rows ([BK, Evp]), ``S = Q K^T`` is computed by a
register-blocked FMA micro-kernel (``_MatMul``), scaled, biased and masked row by row, folded
into the running row maximum and sum (online softmax; the rows' accumulators are rescaled when
the maximum grows), and ``O += P V`` by the same micro-kernel. ``O / sum`` is stored at the end.

Backward, one task per batch-head (race-free: a head's dq, dk and dv belong to its task): the
row logsumexp and ``D = rowsum(dO * O)`` are computed first (one pass over the keys per query
block, as the forward's statistics); then, per block of keys, the probabilities of every query
block that sees them are recomputed as ``exp(S - lse)`` and

    dV += P^T dO,   dS = P * (dO V^T - D) * scale,   dQ += dS K,   dK += dS^T Q

accumulate in packed buffers (dQ for the whole head in the kernel's scratch memory, or straight
in the output where its rows are whole vectors). Rows with
no key left (all scores -inf) give 0, as the reference does: their maximum counts as 0 and
their logsumexp as +inf. float32 uses 8-lane vectors (AVX2), float64 4 lanes.
"""

from __future__ import annotations

import math

from llvmlite import ir

from lamina.backends.llvm import lower as L
from lamina.backends.llvm import mathlib
from lamina.ir.ops.attention import grad_sizes

I64, I32 = L.I64, L.I32
BLOCK = 64  # rows of a query block and of a key block (at most)
ROWS = 6  # micro-kernel register block: ROWS rows x 2 vectors of accumulators


STACK_BLOCK = 64 * 128  # elements of one packed block at most: large head dims get fewer rows


def _up(n: int, m: int) -> int:
    return -(-n // m) * m


class _Shape:
    """The sizes of one attention node, its blocks and its padded buffers."""

    def __init__(self, node):
        q, k, v = node.inputs[0].type, node.inputs[1].type, node.inputs[2].type
        self.dtype = q.dtype
        self.W = 8 if q.dtype.bits == 32 else 4
        self.batch = math.prod(q.shape[:-2])
        self.L, self.E = q.shape[-2], q.shape[-1]
        self.S, self.Ev = k.shape[-2], v.shape[-1]
        self.Ep, self.Evp = _up(max(self.E, 1), self.W), _up(max(self.Ev, 1), self.W)
        # NOTE: about ten packed blocks live on the stack of a pool thread: with large head
        # dims, blocks of fewer rows keep them small (8 rows at least)
        rows = max(8, min(BLOCK, STACK_BLOCK // max(self.Ep, self.Evp) // 8 * 8))
        self.BQ = min(rows, _up(max(self.L, 1), 8))
        self.BK = min(rows, _up(max(self.S, 1), self.W))
        self.nq = -(-self.L // self.BQ) if self.L else 0
        self.nk = -(-self.S // self.BK) if self.S else 0
        self.Lp = self.nq * self.BQ
        self.causal = bool(node.attrs["causal"])
        self.scale = float(node.attrs["scale"])
        self.bias = node.inputs[5 if node.op == "attention_grad" else 3].type \
            if len(node.inputs) > (5 if node.op == "attention_grad" else 3) else None

    @property
    def dq_in_place(self) -> bool:
        """Does the gradient accumulate dQ straight in its output? Where a head's dq rows are
        whole vectors (E == Ep) and its query blocks cover exactly L rows, the packed [L, Ep]
        accumulator is the output's [L, E] (a padding row would reach the next head's dq)."""
        return self.E == self.Ep and self.L % self.BQ == 0

    def scratch_elems(self) -> int:
        """Per batch-head scratch of the gradient: lse, D (Lp each) and, unless dQ accumulates
        in the output, dQ (Lp x Ep)."""
        return self.Lp * (2 + (0 if self.dq_in_place else self.Ep))


def scratch_bytes(node) -> int | None:
    if node.op != "attention_grad":
        return None
    sh = _Shape(node)
    return max(1, sh.batch * sh.scratch_elems()) * sh.dtype.itemsize


class _Gen:
    """Code generation helpers shared by both kernels (builder ``b`` inside ``fn``)."""

    def __init__(self, ke, node):
        self.ke, self.node, self.b, self.fn = ke, node, ke.b, ke.fn
        self.sh = sh = _Shape(node)
        self.ft = L.storage_type(sh.dtype)
        self.vt = ir.VectorType(self.ft, sh.W)
        self.module = ke.cg.module
        self.fma = L.intrinsic(self.module, f"llvm.fma.v{sh.W}f{sh.dtype.bits}", self.vt,
                               [self.vt] * 3)
        self.count = 0
        params = ke.operand_pointers()
        self.ptrs = [params[v] for v in node.inputs]

    # --- constants and small things -------------------------------------------------------

    def i(self, v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def f(self, v: float) -> ir.Constant:
        return ir.Constant(self.ft, v)

    def splat(self, x, b=None) -> ir.Value:
        if isinstance(x, (int, float)):
            return ir.Constant(self.vt, [ir.Constant(self.ft, float(x))] * self.sh.W)
        b = b or self.b
        v = b.insert_element(ir.Constant(self.vt, ir.Undefined), x, self.i(0))
        return b.shuffle_vector(v, ir.Constant(self.vt, ir.Undefined),
                                ir.Constant(ir.VectorType(I32, self.sh.W), [0] * self.sh.W))

    def buffer(self, n: int, name: str) -> ir.Value:
        """A stack buffer of ``n`` elements, 32-byte aligned, in the entry block."""
        b = self.b
        with b.goto_block(self.fn.entry_basic_block):
            entry = self.fn.entry_basic_block
            if entry.instructions:
                b.position_before(entry.instructions[0])
            a = b.alloca(ir.ArrayType(self.ft, max(n, 1)), name=name)
            a.align = 64
            return b.bitcast(a, self.ft.as_pointer())

    def slot(self, t, init, name="slot") -> ir.Value:
        b = self.b
        with b.goto_block(self.fn.entry_basic_block):
            entry = self.fn.entry_basic_block
            if entry.instructions:
                b.position_before(entry.instructions[0])
            a = b.alloca(t, name=name)
        b.store(init, a)
        return a

    def at(self, p, idx):
        return self.b.gep(p, [idx if isinstance(idx, ir.Value) else self.i(idx)])

    def vload(self, p, idx):
        ptr = self.b.bitcast(self.at(p, idx), self.vt.as_pointer())
        return self.b.load(ptr, align=4)

    def vstore(self, v, p, idx):
        ptr = self.b.bitcast(self.at(p, idx), self.vt.as_pointer())
        self.b.store(v, ptr, align=4)

    def loop(self, lo, hi, step=1, name="l"):
        return _Range(self, lo, hi, step, name)

    def vmax(self, a, c):
        return self.b.select(self.b.fcmp_ordered(">", a, c), a, c)

    def hreduce(self, v, how):
        b = self.b
        acc = b.extract_element(v, self.i(0))
        for k in range(1, self.sh.W):
            x = b.extract_element(v, self.i(k))
            acc = b.fadd(acc, x) if how == "sum" else b.select(b.fcmp_ordered(">", x, acc), x,
                                                               acc)
        return acc

    def lane_index(self, base) -> ir.Value:
        """<base, base+1, ..., base+W-1> as i64 lanes."""
        vi = ir.VectorType(I64, self.sh.W)
        lanes = ir.Constant(vi, [ir.Constant(I64, k) for k in range(self.sh.W)])
        b = self.b
        v = b.insert_element(ir.Constant(vi, ir.Undefined), base, self.i(0))
        v = b.shuffle_vector(v, ir.Constant(vi, ir.Undefined),
                             ir.Constant(ir.VectorType(I32, self.sh.W), [0] * self.sh.W))
        return b.add(v, lanes)

    def zero(self, p, n: int):
        with self.loop(self.i(0), self.i(n), self.sh.W, "z") as k:
            self.vstore(self.splat(0.0), p, k)

    # --- packing ----------------------------------------------------------------------------

    def pack_rows(self, dst, src, row0, rows_total: int, cols: int, block: int, ld: int):
        """dst[r][c] = src[row0 + r][c] (zero beyond the rows or the columns); dst is
        [block][ld]."""
        self._pack("rows", dst, src, row0, rows_total, cols, block, ld)

    def pack_cols(self, dst, src, row0, rows_total: int, cols: int, block: int, ldc: int):
        """dst[c][r] = src[row0 + r][c] (transposed; zero beyond); dst is [ldc][block]."""
        self._pack("cols", dst, src, row0, rows_total, cols, block, ldc)

    def _pack(self, how, dst, src, row0, rows_total, cols, block, ld):
        fns = self.ke.cg.shared.setdefault("_attn_pack", {})
        fn = fns.get((self.ft, how))
        if fn is None:
            fn = fns[(self.ft, how)] = _pack_function(self, how)
        args = [row0] + [self.opaque(x) for x in (rows_total, cols, block, ld)]
        self.b.call(fn, [dst, src] + args)

    # --- the micro-kernel -------------------------------------------------------------------

    def matmul(self, C, A, B, M, N, K, a_rs, a_cs, ldb, ldc, accumulate):
        """C[m][n] (+)= sum_k A[m*a_rs + k*a_cs] * B[k*ldb + n] (N a multiple of W)."""
        # NOTE: the sizes are arguments LLVM cannot see through (fully unrolled constant loops
        # made its optimization and code generation several times slower for no speed at run
        # time), the strides are constants (run-time strides cost a register per row of the
        # register block: the inner loop spilled and ran 4x slower)
        key = (a_rs, a_cs, ldb, ldc, bool(accumulate))
        fns = self.ke.cg.shared.setdefault("_attn_mm", {})
        fn = fns.get((self.ft, key))
        if fn is None:
            fn = fns[(self.ft, key)] = _MatMul(self, key, len(fns)).fn
        self.b.call(fn, [C, A, B] + [self.opaque(x) for x in (M, N, K)])

    def opaque(self, v) -> ir.Value:
        """``v`` as a value LLVM cannot see through (an empty inline asm): interprocedural
        constant propagation would otherwise turn the argument back into a constant."""
        if isinstance(v, ir.Value):
            return v
        asm = ir.InlineAsm(ir.FunctionType(I64, [I64]), "", "=r,0")
        return self.b.call(asm, [self.i(v)])

    # --- masks and scores -------------------------------------------------------------------

    def bias_base(self, bh):
        """The bias pointer of batch-head ``bh`` and its (query, key) strides, or None."""
        sh = self.sh
        if sh.bias is None:
            return None
        p = self.ptrs[-1]
        shape = (1,) * (len(self.node.inputs[0].shape) - 1 + 1 - sh.bias.ndim) + sh.bias.shape
        full = self.node.inputs[0].shape[:-1] + (sh.S,)
        strides, acc = [0] * len(shape), 1
        for d in range(len(shape) - 1, -1, -1):
            strides[d] = 0 if shape[d] == 1 else acc
            acc *= shape[d]
        b = self.b
        off = self.i(0)
        inner = 1
        nb = len(full) - 2
        for d in range(nb - 1, -1, -1):
            if strides[d]:
                idx = b.urem(b.udiv(bh, self.i(inner)), self.i(full[d]))
                off = b.add(off, b.mul(idx, self.i(strides[d])))
            inner *= full[d]
        return self.at(p, off), strides[-2], strides[-1]

    def scores_row(self, row_ptr, gi, j0, bias):
        """Scale, bias and mask one row of a score block in place; returns nothing. ``gi`` is
        the query's index, ``j0`` the block's first key."""
        sh, b = self.sh, self.b
        scale = self.splat(sh.scale)
        ninf = self.splat(-math.inf)
        with self.loop(self.i(0), self.i(sh.BK), sh.W, "sr") as jj:
            s = b.fmul(self.vload(row_ptr, jj), scale)
            j = self.lane_index(b.add(j0, jj))
            if bias is not None:
                bp, si, sj = bias
                vec = ir.Constant(self.vt, ir.Undefined)
                for k in range(sh.W):
                    jk = b.extract_element(j, self.i(k))
                    jc = b.select(b.icmp_signed("<", jk, self.i(sh.S)), jk, self.i(sh.S - 1))
                    ic = b.select(b.icmp_signed("<", gi, self.i(sh.L)), gi, self.i(sh.L - 1))
                    x = b.load(self.at(bp, b.add(b.mul(ic, self.i(si)), b.mul(jc, self.i(sj)))))
                    vec = b.insert_element(vec, x, self.i(k))
                s = b.fadd(s, vec)
            vi = ir.VectorType(I64, sh.W)
            dead = b.icmp_signed(">=", j, ir.Constant(vi, [ir.Constant(I64, sh.S)] * sh.W))
            if sh.causal:
                gv = self.lane_index(gi)
                gv = b.sub(gv, ir.Constant(vi, [ir.Constant(I64, k) for k in range(sh.W)]))
                dead = b.or_(dead, b.icmp_signed(">", j, gv))
            s = b.select(dead, ninf, s)
            self.vstore(s, row_ptr, jj)

    def key_blocks_end(self, i0):
        """One past the last key block that query block ``i0`` sees."""
        sh, b = self.sh, self.b
        if not sh.causal or not sh.nk:
            return self.i(sh.nk)
        last = b.add(i0, self.i(sh.BQ - 1))  # keys j <= the block's last query
        last = b.select(b.icmp_signed("<", last, self.i(sh.S - 1)), last, self.i(sh.S - 1))
        return b.add(b.sdiv(last, self.i(sh.BK)), self.i(1))


class _Range:
    def __init__(self, g: _Gen, lo, hi, step, name):
        self.g, self.lo, self.hi, self.step, self.name = g, lo, hi, step, name

    def __enter__(self):
        g = self.g
        b, fn = g.b, g.fn
        g.count += 1
        k = g.count
        pre = b.block
        self.header = fn.append_basic_block(f"{self.name}{k}.head")
        self.body = fn.append_basic_block(f"{self.name}{k}.body")
        self.exit = fn.append_basic_block(f"{self.name}{k}.exit")
        b.branch(self.header)
        b.position_at_end(self.header)
        self.iv = b.phi(I64, name=f"{self.name}{k}")
        self.iv.add_incoming(self.lo, pre)
        b.cbranch(b.icmp_signed("<", self.iv, self.hi), self.body, self.exit)
        b.position_at_end(self.body)
        return self.iv

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        b = self.g.b
        nxt = b.add(self.iv, ir.Constant(I64, self.step))
        self.iv.add_incoming(nxt, b.block)
        b.branch(self.header)
        b.position_at_end(self.exit)
        return False


class _MatMul:
    """An internal function ``void mm(T* C, T* A, T* B)`` for fixed sizes and strides (see
    ``_Gen.matmul``): ROWS x 2 vector accumulators in registers, FMAs over k."""

    def __init__(self, g: _Gen, key, number: int):
        a_rs, a_cs, ldb, ldc, accumulate = key
        module, ft, vt, W = g.module, g.ft, g.vt, g.sh.W
        pt = ft.as_pointer()
        name = f"attn_mm{number}.{'f32' if W == 8 else 'f64'}"
        fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [pt, pt, pt] + [I64] * 3), name)
        fn.linkage = "internal"
        fn.attributes.add("noinline")
        for a in fn.args[:3]:
            a.add_attribute("noalias")
        self.fn = fn
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        C, A, B, M, N, K = fn.args
        sub = _Sub(b, fn, g)
        sub.i = lambda v: v if isinstance(v, ir.Value) else ir.Constant(I64, v)

        def block(m0, rows, n0, nv):
            """rows x nv vectors of C at (m0, n0), m0 and n0 i64 values."""
            accs = []
            for r in range(rows):
                row = []
                for v in range(nv):
                    if accumulate:
                        idx = b.add(b.mul(b.add(m0, sub.i(r)), sub.i(ldc)),
                                    b.add(n0, sub.i(v * W)))
                        row.append(sub.vload(C, idx))
                    else:
                        row.append(g.splat(0.0))
                accs.append(row)
            pre = b.block
            head = fn.append_basic_block("k.head")
            body = fn.append_basic_block("k.body")
            done = fn.append_basic_block("k.done")
            b.branch(head)
            b.position_at_end(head)
            k = b.phi(I64)
            k.add_incoming(sub.i(0), pre)
            phis = [[b.phi(vt) for _ in range(nv)] for _ in range(rows)]
            for r in range(rows):
                for v in range(nv):
                    phis[r][v].add_incoming(accs[r][v], pre)
            b.cbranch(b.icmp_signed("<", k, K), body, done)
            b.position_at_end(body)
            bv = [sub.vload(B, b.add(b.mul(k, sub.i(ldb)), b.add(n0, sub.i(v * W))))
                  for v in range(nv)]
            new = []
            for r in range(rows):
                aidx = b.add(b.mul(b.add(m0, sub.i(r)), sub.i(a_rs)), b.mul(k, sub.i(a_cs)))
                a = g.splat(b.load(b.gep(A, [aidx])), b)
                new.append([b.call(g.fma, [a, bv[v], phis[r][v]]) for v in range(nv)])
            k1 = b.add(k, sub.i(1))
            k.add_incoming(k1, b.block)
            for r in range(rows):
                for v in range(nv):
                    phis[r][v].add_incoming(new[r][v], b.block)
            b.branch(head)
            b.position_at_end(done)
            for r in range(rows):
                for v in range(nv):
                    idx = b.add(b.mul(b.add(m0, sub.i(r)), sub.i(ldc)), b.add(n0, sub.i(v * W)))
                    sub.vstore(phis[r][v], C, idx)

        def over_n(m0, rows):
            # N is a multiple of W: blocks of 2 vectors, then one vector if one is left
            n2 = b.and_(N, sub.i(-2 * W))
            with sub.loop(sub.i(0), n2, 2 * W) as n0:
                block(m0, rows, n0, 2)
            with sub.loop(n2, N, W) as n0:
                block(m0, rows, n0, 1)

        # M: blocks of ROWS rows, then one row at a time
        m6 = b.mul(b.udiv(M, sub.i(ROWS)), sub.i(ROWS))
        with sub.loop(sub.i(0), m6, ROWS) as m0:
            over_n(m0, ROWS)
        with sub.loop(m6, M, 1) as m0:
            over_n(m0, 1)
        b.ret_void()


def _pack_function(g: _Gen, how: str) -> ir.Function:
    """``void pack(T* dst, T* src, i64 row0, i64 rows_total, i64 cols, i64 block, i64 ld)``:
    ``how`` "rows" copies rows ``row0 + r`` of ``src`` ([rows_total][cols]) into
    ``dst[r][c]`` ([block][ld]), "cols" transposes them into ``dst[c][r]`` ([ld][block]);
    zero beyond the rows or the columns. Whole blocks without padded columns are plain
    copies (no bounds test per element)."""
    pt = g.ft.as_pointer()
    fn = ir.Function(g.module, ir.FunctionType(ir.VoidType(), [pt, pt] + [I64] * 5),
                     f"attn_pack_{how}.{'f32' if g.sh.W == 8 else 'f64'}")
    fn.linkage = "internal"
    fn.attributes.add("noinline")
    for a in fn.args[:2]:
        a.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    dst, src, row0, rows_total, cols, block, ld = fn.args
    sub = _Sub(b, fn, g)
    i = sub.i = lambda v: v if isinstance(v, ir.Value) else ir.Constant(I64, v)
    zero = ir.Constant(g.ft, 0.0)

    def at(p, idx):
        return b.gep(p, [idx])

    def target(r, c):  # dst index of source element (r, c)
        return b.add(b.mul(r, ld), c) if how == "rows" else b.add(b.mul(c, block), r)

    full = b.and_(b.icmp_signed("<=", b.add(row0, block), rows_total),
                  b.icmp_signed("==", cols, ld))
    base = at(src, b.mul(row0, cols))
    with b.if_else(full) as (then, otherwise):
        with then:
            with sub.loop(i(0), block, 1) as r:
                row = at(base, b.mul(r, cols))
                with sub.loop(i(0), cols, 1) as c:
                    b.store(b.load(at(row, c)), at(dst, target(r, c)))
        with otherwise:
            with sub.loop(i(0), block, 1) as r:
                gr = b.add(row0, r)
                inside = b.icmp_signed("<", gr, rows_total)
                with sub.loop(i(0), ld, 1) as c:
                    ok = b.and_(inside, b.icmp_signed("<", c, cols))
                    gs = b.select(inside, gr, i(0))
                    cs = b.select(ok, c, i(0))
                    x = b.load(at(src, b.add(b.mul(gs, cols), cs)))
                    b.store(b.select(ok, x, zero), at(dst, target(r, c)))
    b.ret_void()
    return fn


class _Sub:
    """The helpers of ``_Gen`` for another function (the micro-kernels)."""

    def __init__(self, b, fn, g):
        self.b, self.fn, self.g, self.count = b, fn, g, 0
        self.vt, self.ft = g.vt, g.ft

    def i(self, v):
        return ir.Constant(I64, v)

    def vload(self, p, idx):
        return self.b.load(self.b.bitcast(self.b.gep(p, [idx]), self.vt.as_pointer()), align=4)

    def vstore(self, v, p, idx):
        self.b.store(v, self.b.bitcast(self.b.gep(p, [idx]), self.vt.as_pointer()), align=4)

    def loop(self, lo, hi, step):
        return _Range(self, lo, hi, step, "mm")


# --- forward ------------------------------------------------------------------------------------


def emit_forward(ke) -> tuple[int, int]:
    node = ke.region.outputs[0]
    g = _Gen(ke, node)
    sh, b = g.sh, g.b
    q, k, v = g.ptrs[:3]
    out = ke.output_pointer()
    BQ, BK, Ep, Evp, W = sh.BQ, sh.BK, sh.Ep, sh.Evp, sh.W
    Qp, Kt, Vp = g.buffer(BQ * Ep, "qp"), g.buffer(Ep * BK, "kt"), g.buffer(BK * Evp, "vp")
    Sb, Ob = g.buffer(BQ * BK, "s"), g.buffer(BQ * Evp, "o")
    mrow, lrow = g.buffer(BQ, "m"), g.buffer(BQ, "l")
    ninf = g.f(-math.inf)
    with g.loop(ke.lo, ke.hi, 1, "task") as t:
        bh = b.udiv(t, g.i(max(sh.nq, 1)))
        i0 = b.mul(b.urem(t, g.i(max(sh.nq, 1))), g.i(BQ))
        qh = g.at(q, b.mul(bh, g.i(sh.L * sh.E)))
        kh = g.at(k, b.mul(bh, g.i(sh.S * sh.E)))
        vh = g.at(v, b.mul(bh, g.i(sh.S * sh.Ev)))
        oh = g.at(out, b.mul(bh, g.i(sh.L * sh.Ev)))
        bias = g.bias_base(bh)
        g.pack_rows(Qp, qh, i0, sh.L, sh.E, BQ, Ep)
        g.zero(Ob, BQ * Evp)
        with g.loop(g.i(0), g.i(BQ), 1, "init") as r:
            b.store(ninf, g.at(mrow, r))
            b.store(g.f(0.0), g.at(lrow, r))
        with g.loop(g.i(0), g.key_blocks_end(i0), 1, "kb") as kb:
            j0 = b.mul(kb, g.i(BK))
            g.pack_cols(Kt, kh, j0, sh.S, sh.E, BK, Ep)
            g.pack_rows(Vp, vh, j0, sh.S, sh.Ev, BK, Evp)
            g.matmul(Sb, Qp, Kt, BQ, BK, Ep, Ep, 1, BK, BK, False)
            with g.loop(g.i(0), g.i(BQ), 1, "row") as r:
                row = g.at(Sb, b.mul(r, g.i(BK)))
                g.scores_row(row, b.add(i0, r), j0, bias)
                # the row maximum (a second sweep over a hot row)
                acc = g.slot(g.vt, g.splat(-math.inf), "vmax")
                with g.loop(g.i(0), g.i(BK), W, "mx") as jj:
                    b.store(g.vmax(b.load(acc), g.vload(row, jj)), acc)
                m_old = b.load(g.at(mrow, r))
                bm = g.hreduce(b.load(acc), "max")
                m_new = b.select(b.fcmp_ordered(">", bm, m_old), bm, m_old)
                mu = b.select(b.fcmp_ordered("==", m_new, ninf), g.f(0.0), m_new)
                alpha = mathlib.exp(b, b.fsub(m_old, mu))
                mus = g.splat(mu)
                ssum = g.slot(g.vt, g.splat(0.0), "vsum")
                with g.loop(g.i(0), g.i(BK), W, "ex") as jj:
                    p = mathlib.exp(b, b.fsub(g.vload(row, jj), mus))
                    g.vstore(p, row, jj)
                    b.store(b.fadd(b.load(ssum), p), ssum)
                lp = g.at(lrow, r)
                b.store(b.fadd(b.fmul(b.load(lp), alpha), g.hreduce(b.load(ssum), "sum")), lp)
                b.store(m_new, g.at(mrow, r))
                al = g.splat(alpha)
                orow = g.at(Ob, b.mul(r, g.i(Evp)))
                with g.loop(g.i(0), g.i(Evp), W, "rs") as c:
                    g.vstore(b.fmul(g.vload(orow, c), al), orow, c)
            g.matmul(Ob, Sb, Vp, BQ, Evp, BK, BK, 1, Evp, Evp, True)
        rows = b.sub(g.i(sh.L), i0)
        rows = b.select(b.icmp_signed("<", rows, g.i(BQ)), rows, g.i(BQ))
        with g.loop(g.i(0), rows, 1, "st") as r:
            lsum = b.load(g.at(lrow, r))
            inv = b.select(b.fcmp_ordered(">", lsum, g.f(0.0)), b.fdiv(g.f(1.0), lsum), g.f(0.0))
            orow = g.at(Ob, b.mul(r, g.i(Evp)))
            dst = g.at(oh, b.mul(b.add(i0, r), g.i(sh.Ev)))
            with g.loop(g.i(0), g.i(sh.Ev), 1, "sc") as c:
                b.store(b.fmul(b.load(g.at(orow, c)), inv), g.at(dst, c))
    extent = sh.batch * sh.nq
    work = sh.batch * sh.L * max(sh.S, 1) * (sh.E + sh.Ev + 8)
    return extent, work


# --- backward -----------------------------------------------------------------------------------


def emit_backward(ke) -> tuple[int, int]:
    node = ke.region.outputs[0]
    g = _Gen(ke, node)
    sh, b = g.sh, g.b
    q, k, v, o, do = g.ptrs[:5]
    out = ke.output_pointer()
    scratch = b.bitcast(ke.scratch_pointer(), g.ft.as_pointer())
    BQ, BK, Ep, Evp, W = sh.BQ, sh.BK, sh.Ep, sh.Evp, sh.W
    nq1 = max(sh.nq, 1)
    Qp, dOp = g.buffer(BQ * Ep, "qp"), g.buffer(BQ * Evp, "dop")
    Kt, Kp, Vt = g.buffer(Ep * BK, "kt"), g.buffer(BK * Ep, "kp"), g.buffer(Evp * BK, "vt")
    Pb, dSb = g.buffer(BQ * BK, "p"), g.buffer(BQ * BK, "ds")
    dKb, dVb = g.buffer(BK * Ep, "dk"), g.buffer(BK * Evp, "dv")
    ninf = g.f(-math.inf)
    dq_n, dk_n, dv_n = grad_sizes((sh.L, sh.E), (sh.S, sh.E), (sh.S, sh.Ev))
    with g.loop(ke.lo, ke.hi, 1, "task") as bh:
        qh = g.at(q, b.mul(bh, g.i(sh.L * sh.E)))
        kh = g.at(k, b.mul(bh, g.i(sh.S * sh.E)))
        vh = g.at(v, b.mul(bh, g.i(sh.S * sh.Ev)))
        oh = g.at(o, b.mul(bh, g.i(sh.L * sh.Ev)))
        doh = g.at(do, b.mul(bh, g.i(sh.L * sh.Ev)))
        # all of dq, then all of dk, then all of dv (ir/ops/attention.py)
        res_q = g.at(out, b.mul(bh, g.i(dq_n)))
        res_k = g.at(out, b.add(g.i(sh.batch * dq_n), b.mul(bh, g.i(dk_n))))
        res_v = g.at(out, b.add(g.i(sh.batch * (dq_n + dk_n)), b.mul(bh, g.i(dv_n))))
        mine = g.at(scratch, b.mul(bh, g.i(sh.scratch_elems())))
        lse, D = mine, g.at(mine, sh.Lp)
        dQ = res_q if sh.dq_in_place else g.at(mine, 2 * sh.Lp)
        bias = g.bias_base(bh)
        g.zero(dQ, sh.Lp * Ep)
        # 1. per query: D = rowsum(dO * O) and the logsumexp of its scores
        with g.loop(g.i(0), g.i(sh.nq), 1, "qs") as qb:
            i0 = b.mul(qb, g.i(BQ))
            g.pack_rows(Qp, qh, i0, sh.L, sh.E, BQ, Ep)
            with g.loop(g.i(0), g.i(BQ), 1, "dd") as r:
                gi = b.add(i0, r)
                inside = b.icmp_signed("<", gi, g.i(sh.L))
                gs = b.select(inside, gi, g.i(0))
                acc = g.slot(g.ft, g.f(0.0), "dsum")
                b.store(g.f(0.0), acc)
                with g.loop(g.i(0), g.i(sh.Ev), 1, "dc") as c:
                    at = b.add(b.mul(gs, g.i(sh.Ev)), c)
                    x = b.fmul(b.load(g.at(doh, at)), b.load(g.at(oh, at)))
                    b.store(b.fadd(b.load(acc), x), acc)
                b.store(b.select(inside, b.load(acc), g.f(0.0)), g.at(D, gi))
                b.store(ninf, g.at(lse, gi))  # the running maximum, then the logsumexp
                b.store(g.f(0.0), g.at(dQ, b.mul(gi, g.i(Ep))))  # the running sum (dQ[i][0])
            with g.loop(g.i(0), g.key_blocks_end(i0), 1, "kb") as kb:
                j0 = b.mul(kb, g.i(BK))
                g.pack_cols(Kt, kh, j0, sh.S, sh.E, BK, Ep)
                g.matmul(Pb, Qp, Kt, BQ, BK, Ep, Ep, 1, BK, BK, False)
                with g.loop(g.i(0), g.i(BQ), 1, "row") as r:
                    gi = b.add(i0, r)
                    row = g.at(Pb, b.mul(r, g.i(BK)))
                    g.scores_row(row, gi, j0, bias)
                    acc = g.slot(g.vt, g.splat(-math.inf), "vmax")
                    b.store(g.splat(-math.inf), acc)
                    with g.loop(g.i(0), g.i(BK), W, "mx") as jj:
                        b.store(g.vmax(b.load(acc), g.vload(row, jj)), acc)
                    mp, lp = g.at(lse, gi), g.at(dQ, b.mul(gi, g.i(Ep)))
                    m_old = b.load(mp)
                    bm = g.hreduce(b.load(acc), "max")
                    m_new = b.select(b.fcmp_ordered(">", bm, m_old), bm, m_old)
                    mu = b.select(b.fcmp_ordered("==", m_new, ninf), g.f(0.0), m_new)
                    mus = g.splat(mu)
                    ssum = g.slot(g.vt, g.splat(0.0), "vsum")
                    b.store(g.splat(0.0), ssum)
                    with g.loop(g.i(0), g.i(BK), W, "ex") as jj:
                        p = mathlib.exp(b, b.fsub(g.vload(row, jj), mus))
                        b.store(b.fadd(b.load(ssum), p), ssum)
                    alpha = mathlib.exp(b, b.fsub(m_old, mu))
                    b.store(b.fadd(b.fmul(b.load(lp), alpha), g.hreduce(b.load(ssum), "sum")), lp)
                    b.store(m_new, mp)
            with g.loop(g.i(0), g.i(BQ), 1, "ls") as r:
                gi = b.add(i0, r)
                mp, lp = g.at(lse, gi), g.at(dQ, b.mul(gi, g.i(Ep)))
                m = b.load(mp)
                mu = b.select(b.fcmp_ordered("==", m, ninf), g.f(0.0), m)
                lsum = b.load(lp)
                ok = b.and_(b.fcmp_ordered(">", lsum, g.f(0.0)), b.icmp_signed("<", gi, g.i(sh.L)))
                safe = b.select(ok, lsum, g.f(1.0))
                val = b.fadd(mu, mathlib.log(b, safe))
                b.store(b.select(ok, val, g.f(math.inf)), mp)  # +inf: the row's weights are 0
                b.store(g.f(0.0), lp)
        # 2. per key block: dK, dV; dQ accumulates in scratch
        with g.loop(g.i(0), g.i(sh.nk), 1, "kb2") as kb:
            j0 = b.mul(kb, g.i(BK))
            g.pack_cols(Kt, kh, j0, sh.S, sh.E, BK, Ep)
            g.pack_rows(Kp, kh, j0, sh.S, sh.E, BK, Ep)
            g.pack_cols(Vt, vh, j0, sh.S, sh.Ev, BK, Evp)
            g.zero(dKb, BK * Ep)
            g.zero(dVb, BK * Evp)
            first = b.sdiv(j0, g.i(BQ)) if sh.causal else g.i(0)
            with g.loop(first, g.i(sh.nq), 1, "qb2") as qb:
                i0 = b.mul(qb, g.i(BQ))
                g.pack_rows(Qp, qh, i0, sh.L, sh.E, BQ, Ep)
                g.pack_rows(dOp, doh, i0, sh.L, sh.Ev, BQ, Evp)
                g.matmul(Pb, Qp, Kt, BQ, BK, Ep, Ep, 1, BK, BK, False)
                g.matmul(dSb, dOp, Vt, BQ, BK, Evp, Evp, 1, BK, BK, False)
                scale = g.splat(sh.scale)
                with g.loop(g.i(0), g.i(BQ), 1, "prow") as r:
                    gi = b.add(i0, r)
                    row = g.at(Pb, b.mul(r, g.i(BK)))
                    drow = g.at(dSb, b.mul(r, g.i(BK)))
                    g.scores_row(row, gi, j0, bias)
                    ls = g.splat(b.load(g.at(lse, gi)))
                    dd = g.splat(b.load(g.at(D, gi)))
                    with g.loop(g.i(0), g.i(BK), W, "pe") as jj:
                        p = mathlib.exp(b, b.fsub(g.vload(row, jj), ls))
                        # -inf - inf: NaN where a masked score meets an empty row
                        p = b.select(b.fcmp_ordered("==", p, p), p, g.splat(0.0))
                        g.vstore(p, row, jj)
                        ds = b.fmul(b.fmul(p, b.fsub(g.vload(drow, jj), dd)), scale)
                        g.vstore(ds, drow, jj)
                # dV += P^T dO, dK += dS^T Q, dQ += dS K
                g.matmul(dVb, Pb, dOp, BK, Evp, BQ, 1, BK, Evp, Evp, True)
                g.matmul(dKb, dSb, Qp, BK, Ep, BQ, 1, BK, Ep, Ep, True)
                g.matmul(g.at(dQ, b.mul(i0, g.i(Ep))), dSb, Kp, BQ, Ep, BK, BK, 1, Ep, Ep, True)
            rows = b.sub(g.i(sh.S), j0)
            rows = b.select(b.icmp_signed("<", rows, g.i(BK)), rows, g.i(BK))
            with g.loop(g.i(0), rows, 1, "skv") as r:
                j = b.add(j0, r)
                with g.loop(g.i(0), g.i(sh.E), 1, "skc") as c:
                    x = b.load(g.at(dKb, b.add(b.mul(r, g.i(Ep)), c)))
                    b.store(x, g.at(res_k, b.add(b.mul(j, g.i(sh.E)), c)))
                with g.loop(g.i(0), g.i(sh.Ev), 1, "svc") as c:
                    x = b.load(g.at(dVb, b.add(b.mul(r, g.i(Evp)), c)))
                    b.store(x, g.at(res_v, b.add(b.mul(j, g.i(sh.Ev)), c)))
        # 3. dQ out of scratch (unless it accumulated in place)
        if not sh.dq_in_place:
            with g.loop(g.i(0), g.i(sh.L), 1, "sq") as r:
                with g.loop(g.i(0), g.i(sh.E), 1, "sqc") as c:
                    x = b.load(g.at(dQ, b.add(b.mul(r, g.i(Ep)), c)))
                    b.store(x, g.at(res_q, b.add(b.mul(r, g.i(sh.E)), c)))
    extent = sh.batch
    work = sh.batch * sh.L * max(sh.S, 1) * (2 * sh.E + 3 * sh.Ev + 16)
    return extent, work


def emit_attention_kernel(ke) -> tuple[int, int]:
    node = ke.region.outputs[0]
    if node.op == "attention":
        return emit_forward(ke)
    return emit_backward(ke)
