"""Demand-driven evaluation of a kernel's region inside loop nests.

``Emitter.value(node, idx)`` returns the LLVM value of a region node at a multi-index ``idx``
(i64 LLVM values, one per axis of the node). Elementwise ops evaluate their operands at the
broadcast index; shape ops (reshape, transpose, broadcast, slice, pad, concatenate, take) only
transform the index, so they fuse for free; reductions and matmul results are read from values
the kernel computed earlier (``fixed``). Results are memoized per loop scope: a value computed
inside a loop body is reused there and dropped when the loop ends (dominance).
"""

from __future__ import annotations

from llvmlite import ir

from lamina.backends.llvm import lower as L
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.registry import get as get_op
from lamina.ir.ops.source import is_splat
from lamina.ir.types import row_major_strides as strides_of

I32, I64 = L.I32, L.I64


class Loops:
    """Counted loops in LLVM IR: ``with loops.range(b, lo, hi) as i:`` emits the body."""

    def __init__(self, fn: ir.Function):
        self.fn = fn
        self.count = 0
        # Innermost loops closed while this is set ask LLVM to vectorize them whatever its
        # cost model says (pooling: window loops of 7 or 14 iterations, left scalar
        # otherwise). Only for loops that can be vectorized: LLVM warns on stderr otherwise.
        self.force_vectorize = False
        self._hint = None
        self._open: list[_LoopContext] = []

    def hint(self):
        """``!llvm.loop`` metadata that enables vectorization (a self-referential node)."""
        if self._hint is None:
            m = self.fn.module
            enable = m.add_metadata([ir.MetaDataString(m, "llvm.loop.vectorize.enable"),
                                     ir.Constant(ir.IntType(1), 1)])
            # one vector per iteration: two would leave a loop of 14 mostly to the remainder
            single = m.add_metadata([ir.MetaDataString(m, "llvm.loop.interleave.count"),
                                     ir.Constant(ir.IntType(32), 1)])
            node = m.add_metadata([enable, single, ir.MetaDataString(m, "lamina.loop")])
            node.operands = (node, enable, single)
            self._hint = node
        return self._hint

    def range(self, b: ir.IRBuilder, lo: ir.Value, hi: ir.Value, name: str = "i"):
        return _LoopContext(self, b, lo, hi, name)


class _LoopContext:
    def __init__(self, loops: Loops, b: ir.IRBuilder, lo, hi, name):
        self.loops, self.b, self.lo, self.hi, self.name = loops, b, lo, hi, name
        self.inner = False  # holds another loop

    def __enter__(self) -> ir.Value:
        b, fn = self.b, self.loops.fn
        if self.loops._open:
            self.loops._open[-1].inner = True
        self.loops._open.append(self)
        self.loops.count += 1
        k = self.loops.count
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
        self.loops._open.pop()
        if exc[0] is not None:
            return False
        b = self.b
        nxt = b.add(self.iv, ir.Constant(I64, 1), name=f"{self.name}.next")
        self.iv.add_incoming(nxt, b.block)
        latch = b.branch(self.header)
        if self.loops.force_vectorize and not self.inner:
            latch.set_metadata("llvm.loop", self.loops.hint())
        b.position_at_end(self.exit)
        return False


class Emitter:
    """Evaluates a region's nodes at indices, emitting code into ``b``."""

    def __init__(self, cx: L.Ctx, region: Graph, pointers: dict[Param, ir.Value],
                 error_flag: ir.GlobalVariable, loops: Loops, error_codes: dict | None = None):
        self.cx = cx
        self.b = cx.b
        self.region = region
        self.pointers = pointers  # region parameter -> typed pointer to its storage
        self.error_flag = error_flag
        self.error_codes = error_codes or {}  # id(node) -> the code its failure reports
        self.loops = loops
        self.scopes: list[dict] = [{}]
        self.fixed: dict[Node, object] = {}  # node -> ir.Value, or (pointer, strides, offset)
        self.flat_shapes: dict | None = None  # flat kernels: every value seen as 1-D or 0-D
        self._const: dict[int, ir.Constant] = {}

    def shape_of(self, v: Value) -> tuple[int, ...]:
        if self.flat_shapes is not None:
            return self.flat_shapes[v]
        return v.shape

    # --- helpers ---------------------------------------------------------------------------

    def c64(self, k: int) -> ir.Constant:
        c = self._const.get(k)
        if c is None:
            c = self._const[k] = ir.Constant(I64, k)
        return c

    def push(self):
        self.scopes.append({})

    def pop(self):
        self.scopes.pop()

    def linear(self, idx, shape) -> ir.Value:
        """Row-major flat index of ``idx`` in ``shape``."""
        b = self.b
        out = self.c64(0)
        for i, s in zip(idx, strides_of(shape)):
            if s == 0 or (isinstance(i, ir.Constant) and i.constant == 0):
                continue
            term = i if s == 1 else b.mul(i, self.c64(s))
            out = term if out is self.c64(0) else b.add(out, term)
        return out

    def delinear(self, flat: ir.Value, shape) -> list[ir.Value]:
        """The multi-index of row-major flat index ``flat`` in ``shape``."""
        b = self.b
        out = []
        first = True  # the outermost non-unit axis needs no remainder: flat < size
        for d, s in zip(shape, strides_of(shape)):
            if d == 1:
                out.append(self.c64(0))
                continue
            q = flat if s == 1 else b.udiv(flat, self.c64(s))
            out.append(q if first else b.urem(q, self.c64(d)))
            first = False
        return out

    def bidx(self, src_shape, dst_shape, idx) -> list[ir.Value]:
        """The index into an operand of shape ``src_shape`` broadcast to ``dst_shape``."""
        lead = len(dst_shape) - len(src_shape)
        return [self.c64(0) if s == 1 and dst_shape[lead + j] != 1 else idx[lead + j]
                for j, s in enumerate(src_shape)]

    def load(self, ptr: ir.Value, flat: ir.Value, dtype) -> ir.Value:
        p = self.b.gep(ptr, [flat], inbounds=True)
        return L.to_compute(self.b, self.b.load(p), dtype)

    def store(self, ptr: ir.Value, flat: ir.Value, value: ir.Value, dtype) -> None:
        p = self.b.gep(ptr, [flat], inbounds=True)
        self.b.store(L.to_storage(self.b, value, dtype), p)

    # --- evaluation ------------------------------------------------------------------------

    def value(self, v: Value, idx) -> ir.Value:
        idx = tuple(idx)
        key = (id(v), tuple(id(i) for i in idx))
        for scope in reversed(self.scopes):
            hit = scope.get(key)
            if hit is not None:
                return hit
        out = self._compute(v, idx)
        self.scopes[-1][key] = out
        return out

    def _compute(self, v: Value, idx) -> ir.Value:
        if isinstance(v, Param):
            return self.load(self.pointers[v], self.linear(idx, self.shape_of(v)), v.dtype)
        n: Node = v
        fixed = self.fixed.get(n)
        if fixed is not None:
            if isinstance(fixed, tuple):  # materialized: (pointer, strides, base offset)
                ptr, strides, base = fixed
                flat = base
                b = self.b
                for i, s in zip(idx, strides):
                    if s:
                        t = i if s == 1 else b.mul(i, self.c64(s))
                        flat = t if flat is None else b.add(flat, t)
                return self.load(ptr, flat if flat is not None else self.c64(0), n.dtype)
            return fixed
        op = n.op
        lowering = L.LOWER.get(op)
        if lowering is not None and get_op(op).kind == "elementwise":
            shape = self.shape_of(n)
            args = [self.value(x, self.bidx(self.shape_of(x), shape, idx)) for x in n.inputs]
            return lowering(self.cx, n, *args)
        handler = getattr(self, f"_op_{op}", None)
        if handler is None:  # every registered op has one (tests/test_ops.py runs them all)
            raise LaminaError(f"the llvm backend cannot compute {op} inside a fused kernel "
                              "(use backend='numpy' and report this)", n.loc)
        return handler(n, idx)

    # --- sources ---------------------------------------------------------------------------

    def _op_constant(self, n: Node, idx):
        if not is_splat(n):
            raise AssertionError("literal constants reach kernels as operands, not in regions")
        return L.const(n.dtype, n.attrs["value"])

    def _op_iota(self, n: Node, idx):
        i = idx[n.attrs["axis"]]
        return L.convert(self.b, i, dt.int64, n.dtype)

    def _op_random_uniform(self, n: Node, idx):
        key = self.value(n.inputs[0], ())
        if key.type != I64:
            key = self.b.sext(key, I64)
        return L.random_value(self.cx, n, key, self.linear(idx, self.shape_of(n)))

    _op_random_normal = _op_random_uniform

    # --- index transformations -------------------------------------------------------------

    def _op_broadcast(self, n: Node, idx):
        x = n.inputs[0]
        return self.value(x, self.bidx(x.shape, n.shape, idx))

    def _op_transpose(self, n: Node, idx):
        perm = n.attrs["perm"]
        src = [None] * len(perm)
        for i, p in enumerate(perm):
            src[p] = idx[i]
        return self.value(n.inputs[0], src)

    def _op_reshape(self, n: Node, idx):
        x = n.inputs[0]
        if isinstance(x, Param) and self.flat_shapes is None:
            # a row-major buffer: the reshape's flat index is the element's offset (no
            # delinearizing div/mod per element: conv's im2col gather reads its input so)
            return self.load(self.pointers[x], self.linear(idx, n.shape), x.dtype)
        squeezed_in = [d for d in x.shape if d != 1]
        squeezed_out = [d for d in n.shape if d != 1]
        if squeezed_in == squeezed_out:  # only size-1 axes added or removed
            kept = [i for i, d in zip(idx, n.shape) if d != 1]
            it = iter(kept)
            return self.value(x, [self.c64(0) if d == 1 else next(it) for d in x.shape])
        return self.value(x, self.delinear(self.linear(idx, n.shape), x.shape))

    def _op_slice(self, n: Node, idx):
        b = self.b
        src = []
        for i, start, step in zip(idx, n.attrs["start"], n.attrs["step"]):
            j = i if step == 1 else b.mul(i, self.c64(step))
            src.append(j if start == 0 else b.add(j, self.c64(start)))
        return self.value(n.inputs[0], src)

    def _op_pad(self, n: Node, idx):
        b = self.b
        x = n.inputs[0]
        valid = ir.Constant(L.I1, 1)
        src = []
        for i, lo, inner, size in zip(idx, n.attrs["lo"], n.attrs["interior"], x.shape):
            rel = b.sub(i, self.c64(lo)) if lo else i
            j = rel if inner == 0 else b.sdiv(rel, self.c64(inner + 1))
            ok = b.and_(b.icmp_signed(">=", rel, self.c64(0)),
                        b.icmp_signed("<", j, self.c64(size)))
            if inner:
                on_grid = b.icmp_signed("==", b.srem(rel, self.c64(inner + 1)), self.c64(0))
                ok = b.and_(ok, on_grid)
            valid = b.and_(valid, ok)
            src.append(self._clamp(j, size))
        return b.select(valid, self.value(x, src), L.const(n.dtype, 0))

    def flag_error(self, bad: ir.Value, n: Node) -> None:
        """Record ``n``'s error code when ``bad`` (the step stops after this kernel)."""
        b = self.b
        code = ir.Constant(I32, self.error_codes.get(id(n), 1))
        b.store(b.select(bad, code, b.load(self.error_flag)), self.error_flag)

    def _clamp(self, j, size: int):
        b = self.b
        j = b.select(b.icmp_signed("<", j, self.c64(0)), self.c64(0), j)
        top = self.c64(max(size - 1, 0))
        return b.select(b.icmp_signed(">", j, top), top, j)

    def _op_concatenate(self, n: Node, idx):
        b = self.b
        a = n.attrs["axis"]
        pos = idx[a]
        result = None
        offset = 0
        for x in n.inputs:
            size = x.shape[a]
            local = list(idx)
            local[a] = self._clamp(b.sub(pos, self.c64(offset)) if offset else pos, size)
            val = self.value(x, local)
            if result is None:
                result = val
            else:
                result = b.select(b.icmp_signed(">=", pos, self.c64(offset)), val, result)
            offset += size
        return result

    def _op_take(self, n: Node, idx):
        b = self.b
        x, indices = n.inputs
        a, k = n.attrs["axis"], len(indices.shape)
        raw = self.value(indices, idx[a:a + k])
        i = raw if raw.type == I64 else b.sext(raw, I64)
        size = self.c64(x.shape[a])
        i = b.select(b.icmp_signed("<", i, self.c64(0)), b.add(i, size), i)  # numpy wraps once
        bad = b.or_(b.icmp_signed("<", i, self.c64(0)), b.icmp_signed(">=", i, size))
        # Out-of-range indices raise in numpy: flag the error, read a safe element meanwhile.
        self.flag_error(bad, n)
        i = self._clamp(i, x.shape[a])
        return self.value(x, list(idx[:a]) + [i] + list(idx[a + k:]))

    # --- pooling (one output element: its window combined in registers) --------------------

    def _op_max_pool(self, n: Node, idx):
        from lamina.backends.llvm import pooling

        return pooling.max_value(self, n, idx)

    def _op_avg_pool(self, n: Node, idx):
        from lamina.backends.llvm import pooling

        return pooling.avg_value(self, n, idx)
