"""GEMM kernels: a kernel holding one matmul calls the shared GEMM (``gemm.py``).

The matmul's operands are region parameters seen through transposes, reshapes and broadcasts:
those become (row stride, column stride, batch stride) of the GEMM call, so a transposed
operand is never copied. The kernel's other ops (bias, activation, mask, optimizer update)
become an epilogue function the GEMM calls on each finished block of C, while it is hot in
cache. Integer matmuls (rare; not a GEMM's job) get a plain loop nest.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from lamina.backends.llvm import gemm
from lamina.backends.llvm import lower as L
from lamina.backends.llvm.emitter import Emitter, Loops, strides_of
from lamina.ir.graph import Node, Param
from lamina.passes.gemm_operand import operand_layout, static_value

I64, I32, I8 = L.I64, L.I32, L.I8
I8P = I8.as_pointer()


def _batch_strides(shape, strides, batch_shape) -> list[int]:
    """The operand's strides along the output's batch axes (0 where it broadcasts)."""
    nb, own = len(batch_shape), len(shape) - 2
    out = []
    for k in range(nb):
        j = k - (nb - own)
        out.append(0 if j < 0 or shape[j] == 1 else strides[j])
    return out


def _uniform(bs: list[int], batch_shape) -> int | None:
    """One stride for the flattened batch index, if the operand's batch strides allow it."""
    if all(s == 0 for s in bs):
        return 0
    if not bs:
        return 0
    step = bs[-1]
    for k in range(len(bs)):
        if bs[k] != step * math.prod(batch_shape[k + 1:]):
            return None
    return step


def emit_gemm_kernel(ke) -> tuple[int, int]:
    """Fill ``ke.fn`` (a KernelEmitter's function) with the GEMM call; return (extent, work)."""
    region = ke.region
    (mm,) = [n for n in region.nodes if n.op == "matmul"]
    if not mm.dtype.is_float:
        return _integer_matmul(ke, mm)
    b = ke.b
    dtype = {32: "f32", 64: "f64"}[mm.dtype.bits]
    outer = dict(zip(region.inputs, ke.node.inputs))

    def is_base(v):
        return isinstance(v, Param)

    def const_of(v):  # a gather's index: computed in the kernel, or a constant operand
        return static_value(v, resolve=lambda x: outer.get(x, x))

    oa = operand_layout(mm, 0, is_base, const_of, True)
    ob = operand_layout(mm, 1, is_base, const_of, True)
    if oa is None or ob is None:
        raise AssertionError("fusion let an operand into a GEMM that it cannot read")
    gather = oa.gathered or ob.gathered
    fn = gemm.declare_gemm(ke.cg.module, dtype, gather=gather)
    sha, shb = mm.inputs[0].shape, mm.inputs[1].shape
    M, K = sha[-2], sha[-1]
    N = shb[-1]
    batch_shape = mm.shape[:-2]
    nbatch = math.prod(batch_shape)
    ba, bb = oa.batch, ob.batch
    ptrs = ke.operand_pointers()
    base_a = b.gep(ptrs[oa.base], [_c(oa.offset)])
    base_b = b.gep(ptrs[ob.base], [_c(ob.offset)])
    null = ir.Constant(I64.as_pointer(), None)
    tables = []  # the gather entry's: A's rows and k, B's k and columns (module constants)
    if gather:
        tables = ([_table(ke, "arows", oa.rows, M), _table(ke, "acols", oa.cols, K)]
                  if oa.gathered else [null, null])
        tables += ([_table(ke, "brows", ob.rows, K), _table(ke, "bcols", ob.cols, N)]
                   if ob.gathered else [null, null])
    a_strides = [_c(0), _c(0)] if oa.gathered else [_c(oa.rows), _c(oa.cols)]
    b_strides = [_c(0), _c(0)] if ob.gathered else [_c(ob.rows), _c(ob.cols)]
    out = ke.output_pointer()
    scratch = ke.scratch_pointer()
    has_epilogue = region.outputs[0] is not mm
    if scratch is None and region.outputs[0].dtype is not mm.dtype:
        raise AssertionError("a GEMM storing another dtype needs scratch (kernels.scratch_need)")
    c = ke.typed(scratch, mm.dtype) if scratch is not None else out
    epi = _epilogue(ke, mm, dtype, batch_shape, N) if has_epilogue else None
    epi_arg = epi if epi is not None else ir.Constant(gemm.EPILOGUE_TYPE[dtype].as_pointer(),
                                                      None)
    # The epilogue's context: the kernel's pointers (operands, output), the batch offset and
    # the first row (a call for a band of rows: see below).
    ctx_type = _ctx_type(len(ke.ptrs))
    ctx = ke.alloca(ctx_type)
    for k, p in enumerate(ke.ptrs):
        b.store(b.bitcast(p, I8P), b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, k)]))
    base_at = b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, len(ke.ptrs))])
    row0_at = b.gep(ctx, [ir.Constant(I32, 0), ir.Constant(I32, len(ke.ptrs) + 1)])
    b.store(_c(0), row0_at)

    def call(a_ptr, b_ptr, c_ptr, count, bsa, bsb, base, rows=None):
        b.store(base, base_at)
        b.call(fn, [rows if rows is not None else _c(M), _c(N), _c(K), a_ptr, *a_strides,
                    b_ptr, *b_strides, c_ptr, _c(N),
                    count, _c(bsa), _c(bsb), _c(M * N), epi_arg, b.bitcast(ctx, I8P),
                    ke.nthreads, *tables])

    ua, ub = _uniform(ba, batch_shape), _uniform(bb, batch_shape)
    if not batch_shape and not gather and root_is_rows(region, mm):
        # One matrix: the kernel computes rows [lo, hi) of it (its extent is M), so that a
        # loop whose steps are independent row by row can run bands of rows on different
        # threads (codegen.emit_loop, loops.row_split): A and C start at row lo, and the
        # epilogue sees the rows it was given plus lo.
        lo, hi = ke.lo, ke.hi
        b.store(lo, row0_at)
        call(b.gep(base_a, [b.mul(lo, _c(oa.rows))]), base_b, b.gep(c, [b.mul(lo, _c(N))]),
             _c(1), 0, 0, _c(0), rows=b.sub(hi, lo))
        return M, 2 * M * N * K
    if (nbatch > 1 and ub == 0 and ua == M * oa.rows and not gather
            and _rows_fold(region, mm)):
        # B is shared by every matrix and A's rows run on uniformly from one matrix into the
        # next ([T, B, K] @ [K, N]): one GEMM of T*B rows, not T GEMMs of B rows (an LSTM's
        # input projection, 50 x [32, 64] @ [64, 512]: ~0.85 -> ~0.55 ms)
        M, nbatch = M * nbatch, 1
        call(base_a, base_b, c, _c(1), 0, 0, _c(0))
    elif ua is not None and ub is not None:
        call(base_a, base_b, c, _c(nbatch), ua, ub, _c(0))  # no matrix: no call
    else:  # batch strides that do not flatten: one call per matrix
        em = ke.emitter()
        ke._em = em

        def one(idx):
            off_a = _dot(b, idx, ba)
            off_b = _dot(b, idx, bb)
            flat = em.linear(idx, batch_shape)
            off_c = b.mul(flat, _c(M * N))
            call(b.gep(base_a, [off_a]), b.gep(base_b, [off_b]), b.gep(c, [off_c]),
                 _c(1), 0, 0, flat)

        ke.nest(batch_shape, one, None)
    return 1, 2 * max(nbatch, 1) * M * N * K


def _rows_fold(region, mm: Node) -> bool:
    """May the batch of ``mm``'s matrices be computed as one matrix of all their rows? The
    epilogue then sees batch index 0 and rows past M: right where it only combines values at
    the same position of a row-major output (elementwise ops, splat constants, operands of the
    output's shape or varying along its columns only), wrong for anything that reads the row
    or batch index (iota, shape ops, an operand broadcast over the batch)."""
    from lamina.ir.ops.registry import get as get_op
    from lamina.ir.ops.source import is_splat

    root = region.outputs[0]
    if root.shape != mm.shape:
        return False
    seen, todo = set(), [root]
    while todo:
        v = todo.pop()
        if v is mm or v in seen:
            continue
        seen.add(v)
        if isinstance(v, Param):
            pad = (1,) * (root.type.ndim - v.type.ndim) + tuple(v.shape)
            if pad != tuple(root.shape) and any(d != 1 for d in pad[:-1]):
                return False
            continue
        if v.op == "constant":
            if not is_splat(v):
                return False
            continue
        if get_op(v.op).kind != "elementwise":
            return False
        todo.extend(v.inputs)
    return True


def _c(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


def _table(ke, what: str, t, n: int):
    """An ``i64*`` to a constant table of the module (a stride becomes its table)."""
    t = np.arange(n, dtype=np.int64) * t if isinstance(t, int) else t
    module = ke.cg.module
    g = ir.GlobalVariable(module, ir.ArrayType(I64, n), module.get_unique_name(
        f"{ke.name}.{what}"))
    g.linkage = "internal"
    g.global_constant = True
    g.initializer = ir.Constant(ir.ArrayType(I64, n), [int(x) for x in t])
    return ke.b.gep(g, [ir.Constant(I32, 0), ir.Constant(I32, 0)])


def _dot(b, idx, strides):
    out = _c(0)
    for i, s in zip(idx, strides):
        if s:
            out = b.add(out, b.mul(i, _c(s)))
    return out


def _ctx_type(n: int) -> ir.LiteralStructType:
    return ir.LiteralStructType([I8P] * n + [I64, I64])


def root_is_rows(region, mm: Node) -> bool:
    """Is the kernel's result the matmul's shape (2-D), so that its rows are C's rows?"""
    return len(mm.shape) == 2 and region.outputs[0].shape == mm.shape


def _epilogue(ke, mm: Node, dtype: str, batch_shape, N: int) -> ir.Function:
    """void epi(ctx, b, C, ldc, i0, i1, j0, j1): the kernel's ops after the matmul, on a block
    of C (C points at matrix b; the block is rows [i0, i1) x columns [j0, j1)). It unpacks the
    context and calls a body that takes typed pointers, marked noalias like the kernel's."""
    cg = ke.cg
    ty = gemm.EPILOGUE_TYPE[dtype]
    values = ke.values  # the kernel's operands, then its output
    ptr_types = [L.storage_type(v.dtype).as_pointer() for v in values]
    c_type = L.storage_type(mm.dtype).as_pointer()
    body = ir.Function(cg.module, ir.FunctionType(ir.VoidType(), ptr_types + [
        c_type, I64, I64, I64, I64, I64]), ke.name + ".epilogue.body")
    body.linkage = "internal"
    for k in range(len(values)):
        for attr in ke.fn.args[k].attributes:
            body.args[k].add_attribute(attr)
    c_arg = body.args[len(values)]
    if ke.has_scratch:  # C is its own buffer (else C is the output itself)
        c_arg.add_attribute("noalias")
    _epilogue_body(ke, body, mm, batch_shape, N)

    fn = ir.Function(cg.module, ty, ke.name + ".epilogue")
    fn.linkage = "internal"
    ctx, bi, cptr, ldc, i0, i1, j0, j1 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    st = b.bitcast(ctx, _ctx_type(len(ke.ptrs)).as_pointer())

    def field(k):
        return b.load(b.gep(st, [ir.Constant(I32, 0), ir.Constant(I32, k)]))

    ptrs = [b.bitcast(field(k), t) for k, t in enumerate(ptr_types)]
    base, row0 = field(len(ke.ptrs)), field(len(ke.ptrs) + 1)
    # C of a band of rows starts at row row0 of the kernel's C
    cptr = b.gep(cptr, [b.mul(b.sub(_c(0), row0), ldc)])
    b.call(body, ptrs + [cptr, b.add(bi, base), b.add(i0, row0), b.add(i1, row0), j0, j1])
    b.ret_void()
    return fn


def _epilogue_body(ke, fn: ir.Function, mm: Node, batch_shape, N: int) -> None:
    cg = ke.cg
    region, root = ke.region, ke.region.outputs[0]
    n_in = len(ke.node.inputs)
    *ptrs, cptr, flat, i0, i1, j0, j1 = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    cx = L.Ctx(b, cg.module)
    loops = Loops(fn)
    em = Emitter(cx, region, dict(zip(region.inputs, ptrs[:n_in])), cg.error_flag, loops,
                 cg.error_codes)
    out = ptrs[n_in]
    nb = len(batch_shape)
    em.fixed[mm] = (cptr, (0,) * nb + (N, 1), None)  # the matmul's value: C of this batch
    tail = (N,)
    if root.shape != mm.shape:  # a reshape splitting C's columns (fuse.split_reshape)
        (split,) = [n for n in region.nodes if mm in n.inputs]
        tail = tuple(root.shape[nb + 1:])
        em.fixed[split] = (cptr, (0,) * nb + (N,) + strides_of(tail), None)
    # The domain is indexed [batch, row, 0, ..., column, 0, ...] (fuse._splits_columns):
    # the column on the last split axis longer than 1, after which the row-major stride is 1,
    # so every linear position is right, and axes of size 1 (zeroed where broadcast) see 0.
    at = max((k for k, d in enumerate(tail) if d > 1), default=len(tail) - 1)
    zero = ir.Constant(I64, 0)
    bidx = em.delinear(flat, batch_shape) if nb else []
    with loops.range(b, i0, i1, "ei") as i:
        em.push()
        with loops.range(b, j0, j1, "ej") as j:
            em.push()
            idx = list(bidx) + [i] + [j if k == at else zero for k in range(len(tail))]
            em.store(out, em.linear(idx, root.shape), em.value(root, idx), root.dtype)
            em.pop()
        em.pop()
    b.ret_void()


def _integer_matmul(ke, mm: Node) -> tuple[int, int]:
    """A plain loop nest for integer matmuls (and their epilogues)."""
    em = ke._em = ke.emitter()
    b = ke.b
    a_v, b_v = mm.inputs
    K = a_v.shape[-1]
    shape = mm.shape
    region = ke.region
    root = region.outputs[0]
    out = ke.output_pointer()
    t = L.compute_type(mm.dtype)

    def body(idx):
        acc = ke.alloca(t)
        b.store(ir.Constant(t, 0), acc)
        with ke.loops.range(b, _c(0), _c(K), "k") as k:
            em.push()
            ia = em.bidx(a_v.shape[:-2] + (1, 1), shape[:-2] + (1, 1), idx)[:-2]
            ib = em.bidx(b_v.shape[:-2] + (1, 1), shape[:-2] + (1, 1), idx)[:-2]
            x = em.value(a_v, list(ia) + [idx[-2], k])
            y = em.value(b_v, list(ib) + [k, idx[-1]])
            b.store(b.add(b.load(acc), b.mul(x, y)), acc)
            em.pop()
        em.fixed[mm] = b.load(acc)
        em.store(out, em.linear(idx, root.shape), em.value(root, idx), root.dtype)
        em.fixed.pop(mm)

    ke.nest(shape, body, ke.par_axis(shape))
    par = ke.par_axis(shape)
    return (shape[par] if par is not None else 1), math.prod(shape) * K
