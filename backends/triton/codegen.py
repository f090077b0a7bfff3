"""Triton source for fused kernels: each ``kernel`` node of a fused graph becomes one readable
``@triton.jit`` function (named after what it fuses), with every size a constant.

Kinds (``classify``):

    loop     elementwise and shape ops over the result: one program per BLOCK of flat indices
    row      reductions: a tile of rows x reduced columns per program; each reduction is one
             ``tl.reduce`` (one pass when a row fits one tile, else a loop over column chunks);
             what follows the reductions is computed on the same tile (softmax, layernorm and
             cross-entropy are one kernel, one read of the input)
    gemm     one matmul through ``tl.dot`` on register tiles, its operands read through their
             views (transpose, reshape, broadcast) and its elementwise epilogue applied to the
             accumulator before the only store; or one conv, the same implicit GEMM over
             input tiles gathered from the input by index arithmetic (``conv.py``)
    scatter  scatter_add: a zero fill, then atomic adds
    scan     cumsum: rows x positions along the axis per program, ``tl.cumsum`` (``scan.py``)
    attention  an ``attention`` or ``attention_grad`` node alone: flash-style kernels of their
             own (``attention.py``; the gradient is two launches and has scratch memory)

Values are evaluated on demand at a multi-index (``Gen.value``), as the LLVM backend's emitter
does: elementwise ops evaluate their operands at the broadcast index, shape ops only transform
the index (so they fuse for free), reductions and the matmul are computed once per program.
An index is a tuple of ``Ix`` (a Triton expression and the tile axes it varies along: "f" flat
lanes, "r"/"c" rows/columns, "m"/"n"/"k" GEMM tiles); loads are masked by those axes' masks.
The scalar math of elementwise ops lives in ``scalar.py``, indices and the shape ops in
``index.py``.
"""

from __future__ import annotations

import math

from lamina.backends.triton.conv import ConvKernel
from lamina.backends.triton.index import Indexing, Ix
from lamina.backends.triton.scalar import HELPERS, LOW, POINTER, TV, ScalarMath, tl_type
from lamina.backends.triton.scan import ScanKernel
from lamina.backends.triton.spec import KernelSource
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.reduce import keep_shape, reduced_shape
from lamina.ir.ops.reduce import reduce_axes as axes_of
from lamina.ir.ops.registry import get as get_op
from lamina.ir.ops.source import is_splat

REDUCTIONS = ("sum", "max", "min", "argmax")
TILE_AXES = frozenset("rcmnk") | {"kb"}  # the axes of 2-D tiles (the flat lanes "f": 1-D)
LOOP_BLOCK = 1024
ROW_TILE = 4096  # elements of a row program's tile
MAX_ONE_PASS_ROW = 8192  # longer rows loop over chunks of ROW_CHUNK
ROW_CHUNK = 2048
# float32 matmuls run in IEEE float32 unless this is set (TF32 tensor cores: ~10 bits of
# mantissa in the products, several times faster); part of the source, so of the cache key
ALLOW_TF32 = False

def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def classify(kernel: Node) -> str:
    ops = {n.op for n in kernel.region.nodes}
    if any(get_op(o).kind == "attention" for o in ops):
        return "attention"
    if "matmul" in ops or "conv" in ops:
        return "gemm"
    if "scatter_add" in ops:
        return "scatter"
    if any(get_op(o).kind == "scan" for o in ops):
        return "scan"
    if ops & set(REDUCTIONS):
        return "row"
    return "loop"


class Gen(Indexing, ScalarMath, ScanKernel, ConvKernel):
    """Builds the body of one kernel: lines of Python, values memoized per scope."""

    def __init__(self, kernel: Node, name: str, error_codes: dict[int, int], guarded: bool,
                 gemm: tuple | None = None):
        self.kernel = kernel
        self.region: Graph = kernel.region
        self.root: Node = self.region.outputs[0]
        self.name = name
        self.error_codes = error_codes
        self.guarded = guarded  # an earlier kernel may fail: store nothing if it did
        self.gemm = gemm  # a tile config of gemm_candidates (default: the first)
        self.lines: list[str] = []
        self.indent = 1
        self.count = 0
        self.scopes: list[dict] = [{}]
        self.fixed: dict[Node, TV] = {}
        # (index expressions, shape) -> the flat index (an Ix: its tile axes too)
        self.linear_memo: dict[tuple, Ix] = {}
        self.masks: dict[str, str] = {}  # tile axis -> mask expression
        self.helpers: set[str] = set()
        self.uses_error = False
        self.params = list(self.region.inputs)
        self.arg_of = {p: f"a{i}" for i, p in enumerate(self.params)}
        big = max([math.prod(v.shape) for v in list(self.region.inputs) + list(self.region.nodes)]
                  + [1])
        self.index_type = "tl.int64" if big >= 2 ** 31 - 1 else "tl.int32"

    # --- emitting ---------------------------------------------------------------------------

    def emit(self, line: str) -> None:
        self.lines.append("    " * self.indent + line)

    def tmp(self, expr: str, prefix: str = "t") -> str:
        name = f"{prefix}{self.count}"
        self.count += 1
        self.emit(f"{name} = {expr}")
        return name

    def const(self, d: dt.DType, value) -> TV:
        if d.is_bool:
            text = "1" if bool(value) else "0"
        elif d.is_int:
            text = str(int(value))
        else:
            v = float(value)
            text = repr(v) if math.isfinite(v) else ("float('nan')" if math.isnan(v) else
                                                      ("float('inf')" if v > 0
                                                       else "float('-inf')"))
        # NOTE: one-element tensors rather than scalars: Triton's interpreter mistypes
        # comparisons of 0-d values; [1] broadcasts against any tile the same way
        return TV(self.tmp(f"tl.full([1], {text}, {tl_type(d)})", "k"), frozenset(), d)

    def mask_for(self, deps) -> str | None:
        parts = [self.masks[a] for a in sorted(deps) if self.masks.get(a)]
        return " & ".join(parts) if parts else None

    def tile(self, v: TV, rows: int, cols: int) -> str:
        """``v`` broadcast to a [rows, cols] tile (a value on no tile axis is one element, a
        1-D [1]: made 1x1 first, as ``tl.broadcast_to`` keeps the rank)."""
        e = v.e if v.deps else f"tl.reshape({v.e}, [1, 1])"
        return self.tmp(f"tl.broadcast_to({e}, [{rows}, {cols}])")

    def store_mask(self, deps) -> str | None:
        m = self.mask_for(deps)
        if self.guarded:
            m = f"{m} & ok" if m else "ok"
        return m

    # --- loads and stores -------------------------------------------------------------------

    def load(self, p: Param, idx) -> TV:
        flat = self.linear(idx, p.shape)
        # one address for every lane: still a block of one pointer (a scalar pointer loads a
        # 0-d value, which does not reshape to a tile)
        at = flat.e if flat.deps else \
            "tl.arange(0, 1)" if flat.e == "0" else f"{flat.e} + tl.arange(0, 1)"
        ptr = f"{self.arg_of[p]} + {at}"
        m = self.mask_for(flat.deps)
        other = ", other=0" if m else ""
        text = f"tl.load({ptr}, mask={m}{other})" if m else f"tl.load({ptr})"
        if p.dtype.is_bool:
            text = f"{text} != 0"
        return TV(self.tmp(text, "x"), flat.deps, p.dtype)

    def store(self, ptr: str, flat: Ix, v: TV, deps=None) -> None:
        value = v.e if not v.dtype.is_bool else f"{v.e}.to(tl.int8)"
        if not v.deps and flat.deps & TILE_AXES:
            value = f"tl.reshape({value}, [1, 1])"  # Triton broadcasts a store within its rank
        at = ptr if flat.e == "0" else f"{ptr} + {flat.e}"
        m = self.store_mask(flat.deps if deps is None else deps)
        self.emit(f"tl.store({at}, {value}, mask={m})" if m else f"tl.store({at}, {value})")

    # --- evaluation -------------------------------------------------------------------------

    def push(self):
        self.scopes.append({})

    def pop(self):
        self.scopes.pop()

    def value(self, v: Value, idx) -> TV:
        idx = tuple(idx)
        key = (id(v), tuple(i.e for i in idx))
        for scope in reversed(self.scopes):
            hit = scope.get(key)
            if hit is not None:
                return hit
        out = self.compute(v, idx)
        self.scopes[-1][key] = out
        return out

    def compute(self, v: Value, idx) -> TV:
        if not math.prod(v.shape):
            # no elements: read only where no result is stored (masked-off lanes, pieces of a
            # concatenate or pad that another value is selected over), and an empty operand's
            # pointer is null on a GPU: never loaded, any value will do
            return self.const(v.dtype, 0)
        if isinstance(v, Param):
            return self.load(v, idx)
        n: Node = v
        fixed = self.fixed.get(n)
        if fixed is not None:
            row = [Ix(i.same, i.deps) if i.same else i for i in idx]
            if n.op in REDUCTIONS and math.prod(n.shape) > 1 \
                    and self.linear(row, n.shape).e != "r":
                raise LaminaError(f"the triton backend cannot read the {n.op} result of kernel "
                                  f"@{self.name} at another row than the one it reduced (e.g. "
                                  "a row sum read through a transpose of a square); this is a "
                                  "fusion bug: use backend='llvm' and report it", n.loc)
            return fixed
        if n.op in ("matmul", "conv") or n.op in REDUCTIONS:
            raise LaminaError(f"the triton backend cannot read the {n.op} result of kernel "
                              f"@{self.name} at another position inside the same kernel "
                              "(e.g. a transpose of a square matmul in its epilogue); "
                              "use backend='llvm' and report this", n.loc)
        if get_op(n.op).kind == "elementwise":
            args = [self.value(x, self.bidx(x.shape, n.shape, idx)) for x in n.inputs]
            return self.elementwise(n, args)
        handler = getattr(self, f"op_{n.op}", None)
        if handler is None:
            raise LaminaError(f"the triton backend cannot compute {n.op} inside a fused kernel",
                              n.loc)
        return handler(n, idx)

    # --- sources ----------------------------------------------------------------------------

    def op_constant(self, n: Node, idx) -> TV:
        if not is_splat(n):
            raise AssertionError("literal constants reach kernels as operands, not in regions")
        return self.const(n.dtype, n.attrs["value"])

    def op_iota(self, n: Node, idx) -> TV:
        i = idx[n.attrs["axis"]]
        return TV(self.tmp(f"({i.e} + tl.full([1], 0, {self.index_type})).to({tl_type(n.dtype)})"),
                  i.deps, n.dtype)

    def op_random_uniform(self, n: Node, idx) -> TV:
        self.helpers.add("philox")
        key = self.value(n.inputs[0], ())
        flat = self.linear(idx, n.shape)
        k = self.tmp(f"{key.e}.to(tl.int64)")
        fl = self.tmp(f"({flat.e} + tl.full([1], 0, tl.int64)).to(tl.int64)")
        stream = n.attrs["stream"] & 0xFFFFFFFF
        w = [f"w{self.count}_{j}" for j in range(4)]
        self.count += 1
        self.emit(f"{', '.join(w)} = _philox({fl}.to(tl.uint32), ({fl} >> 32).to(tl.uint32), "
                  f"tl.full([], {stream}, tl.uint32) + ({fl} * 0).to(tl.uint32), "
                  f"({fl} * 0).to(tl.uint32), {k}.to(tl.uint32), "
                  f"({k} >> 32).to(tl.uint32))")
        wide = n.attrs["dtype"] is dt.float64

        def unit(a, b=None):
            if not wide:
                return f"(({a} >> 8).to(tl.float32) * {2.0 ** -24!r})"
            return (f"((({a} >> 5).to(tl.float64) * {self.f(dt.float64, 2.0 ** 26)} + "
                    f"({b} >> 6).to(tl.float64)) * {self.f(dt.float64, 2.0 ** -53)})")

        if n.op == "random_uniform":
            text = unit(w[0], w[1]) if wide else unit(w[0])
        else:
            one = self.f(dt.float64 if wide else dt.float32, 1.0)
            u1 = self.tmp(f"{one} - {unit(w[0], w[1]) if wide else unit(w[0])}")
            u2 = self.tmp(unit(w[2], w[3]) if wide else unit(w[1]))
            d = dt.float64 if wide else dt.float32
            r = self.tmp(self.sqrt(f"{self.f(d, -2.0)} * tl.log({u1})", d))
            text = f"{r} * tl.cos({self.f(d, 2 * math.pi)} * {u2})"
        out = self.tmp(text)
        if n.dtype not in (dt.float32, dt.float64):
            out = self.tmp(f"{out}.to({tl_type(n.dtype)})")
        return TV(out, flat.deps, n.dtype)

    op_random_normal = op_random_uniform

    # --- kernels ----------------------------------------------------------------------------

    def prelude(self) -> None:
        if self.guarded:
            self.uses_error = True
            self.emit("ok = tl.load(err + tl.arange(0, 1)) == 0")

    def flat_lanes(self, n: int) -> tuple[int, Ix]:
        """One program per block of ``n`` flat positions: (block size, the lanes' index)."""
        block = min(LOOP_BLOCK, max(32, _pow2(n)))
        self.prelude()
        self.emit("pid = tl.program_id(0)")
        self.emit(f"offs = pid * {block} + tl.arange(0, {block})"
                  + (".to(tl.int64)" if self.index_type == "tl.int64" else ""))
        self.masks["f"] = f"(offs < {n})" if n % block else ""
        return block, Ix("offs", frozenset({"f"}))

    def loop_kernel(self) -> tuple[tuple[int, int, int], int]:
        root = self.root
        n = math.prod(root.shape)
        block, flat = self.flat_lanes(n)
        idx = self.delinear(flat, root.shape) if root.shape else ()
        v = self.value(root, idx)
        self.store("out", flat, v, deps={"f"})
        warps = 4 if block >= 512 else 1
        return (_cdiv(n, block), 1, 1), warps

    def row_kernel(self) -> tuple[tuple[int, int, int], int]:
        reds = [m for m in self.region.nodes if m.op in REDUCTIONS]
        r0 = reds[0]
        d, axes = r0.inputs[0].shape, axes_of(r0)
        kept = [k for k in range(len(d)) if k not in axes]
        R = math.prod(d[k] for k in kept)
        C = math.prod(d[k] for k in axes)
        one_pass = C <= MAX_ONE_PASS_ROW
        bc = _pow2(C) if one_pass else ROW_CHUNK
        br = max(1, min(_pow2(R), ROW_TILE // bc, 1024))
        self.prelude()
        self.emit("pid = tl.program_id(0)")
        it = ".to(tl.int64)" if self.index_type == "tl.int64" else ""
        self.emit(f"r = (pid * {br} + tl.arange(0, {br}){it})[:, None]")
        self.masks["r"] = f"(r < {R})" if R % br else ""
        rows = Ix("r", frozenset({"r"}))
        kshape = keep_shape(d, axes)
        kidx = self.delinear(rows, [d[k] for k in kept])
        row_keep = [Ix("0")] * len(d)
        for k, i in zip(kept, kidx):
            row_keep[k] = i
        self.remember(row_keep, kshape, rows)
        self.remember(kidx, reduced_shape(d, axes, False), rows)

        def full_index(cols: Ix):
            cidx = self.delinear(cols, [d[k] for k in axes])
            full = list(row_keep)
            for k, i in zip(axes, cidx):
                full[k] = i
            if list(axes) == list(range(len(d) - len(axes), len(d))):
                self.remember(full, d, Ix(self.tmp(f"r * {C} + {cols.e}", "l"),
                                          frozenset({"r", "c"})))
            return tuple(full)

        def columns(start: str | None) -> Ix:
            base = f"tl.arange(0, {bc}){it}[None, :]"
            c = self.tmp(f"{start} + {base}" if start else base, "c")
            # (no columns at all: a sum over an empty axis is its identity, 0)
            self.masks["c"] = f"({c} < {C})" if (C % bc or not one_pass or not C) else ""
            return Ix(c, frozenset({"c"}))

        if one_pass:
            full = full_index(columns(None))
            for red in reds:
                self.reduce_one_pass(red, full, bc, br)
        else:
            for red in reds:
                self.reduce_chunked(red, full_index, columns, C, bc, br)
        root = self.root
        if root.shape == tuple(d):
            if one_pass:
                v = self.value(root, full)
                self.store("out", self.linear(full, d), v, deps={"r", "c"})
            else:
                self.emit(f"for c0 in range(0, {C}, {bc}):")
                self.indent += 1
                self.push()
                full_c = full_index(columns("c0"))
                v = self.value(root, full_c)
                self.store("out", self.linear(full_c, d), v, deps={"r", "c"})
                self.pop()
                self.indent -= 1
        else:  # per row (keepdims or not, or a reshape of it): stored at the row index
            if root.shape == tuple(kshape):
                v = self.value(root, row_keep)
            elif root.shape == tuple(reduced_shape(d, axes, False)):
                v = self.value(root, kidx)
            else:  # a reshape of the per-row result: same flat index
                v = self.value(root, self.delinear(rows, root.shape))
            self.store("out", rows, v, deps={"r"})
        warps = 8 if br * bc >= 4096 else 4 if br * bc >= 1024 else 2
        return (_cdiv(R, br), 1, 1), warps

    def reduce_input(self, red: Node, full, br: int, bc: int) -> str:
        """The reduced operand at ``full`` as a [br, bc] tile of the accumulator's type."""
        v = self.value(red.inputs[0], full)
        acc_t = self.acc_dtype(red)
        x = self.tile(v, br, bc)
        return x if v.dtype is acc_t else self.tmp(self.cast(x, v.dtype, acc_t))

    @staticmethod
    def acc_dtype(red: Node) -> dt.DType:
        x = red.inputs[0].dtype
        if x in LOW:
            return dt.float32
        if red.op == "sum":
            return red.dtype
        return x

    def identity(self, red: Node) -> str:
        d = self.acc_dtype(red)
        if red.op == "sum":
            return "0"
        if d.is_float:
            return "float('-inf')" if red.op in ("max", "argmax") else "float('inf')"
        if d.is_bool:
            return "0" if red.op in ("max", "argmax") else "1"
        bits = d.bits
        return str(-(2 ** (bits - 1))) if red.op in ("max", "argmax") else str(2 ** (bits - 1) - 1)

    def reduce_one_pass(self, red: Node, full, bc: int, br: int) -> None:
        t = tl_type(self.acc_dtype(red))
        x = self.reduce_input(red, full, br, bc)
        m = self.mask_for({"r", "c"})
        ident = f"tl.full([], {self.identity(red)}, {t})"
        if m:
            x = self.tmp(f"tl.where({m}, {x}, {ident})")
        self.fix_reduction(red, x, None, br, bc)

    def reduce_chunked(self, red, full_index, columns, C, bc, br) -> None:
        t = tl_type(self.acc_dtype(red))
        acc = f"acc{self.count}"
        self.count += 1
        self.emit(f"{acc} = tl.full([{br}, {bc}], {self.identity(red)}, {t})")
        acc_i = None
        if red.op == "argmax":
            acc_i = f"{acc}_i"
            self.emit(f"{acc_i} = tl.full([{br}, {bc}], {2 ** 62}, tl.int64)")
        self.emit(f"for c0 in range(0, {C}, {bc}):")
        self.indent += 1
        self.push()
        cols = columns("c0")
        full = full_index(cols)
        x = self.reduce_input(red, full, br, bc)
        m = self.mask_for({"r", "c"})
        if m:
            x = self.tmp(f"tl.where({m}, {x}, tl.full([], {self.identity(red)}, {t}))")
        if red.op == "sum":
            self.emit(f"{acc} = {acc} + {x}")
        elif red.op in ("max", "min"):
            self.helpers.add(red.op)
            self.emit(f"{acc} = _{red.op}_nan({acc}, {x})")
        else:
            self.helpers.add("argmax")
            ci = self.tmp(f"tl.broadcast_to({cols.e}.to(tl.int64), [{br}, {bc}])")
            if m:
                ci = self.tmp(f"tl.where({m}, {ci}, {2 ** 62})")
            self.emit(f"{acc}, {acc_i} = _argmax_pick({acc}, {acc_i}, {x}, {ci})")
        self.pop()
        self.indent -= 1
        self.fix_reduction(red, acc, acc_i, br, bc)

    def fix_reduction(self, red: Node, x: str, xi: str | None, br: int, bc: int) -> None:
        if red.op == "sum":
            self.helpers.add("add")
            r = self.tmp(f"tl.reduce({x}, 1, _add, keep_dims=True)")
        elif red.op in ("max", "min"):
            self.helpers.add(red.op)
            r = self.tmp(f"tl.reduce({x}, 1, _{red.op}_nan, keep_dims=True)")
        else:
            self.helpers.add("argmax")
            if xi is None:
                m = self.mask_for({"r", "c"})
                cols = self.tmp(f"tl.broadcast_to(tl.arange(0, {bc})[None, :].to(tl.int64), "
                                f"[{br}, {bc}])")
                xi = self.tmp(f"tl.where({m}, {cols}, {2 ** 62})") if m else cols
            r = f"ri{self.count}"
            self.count += 1
            self.emit(f"_, {r} = tl.reduce(({x}, {xi}), 1, _argmax_pick, keep_dims=True)")
        d = red.dtype
        if self.acc_dtype(red) is not d:
            r = self.tmp(f"{r}.to({tl_type(d)})")
        self.fixed[red] = TV(r, frozenset({"r"}), d)

    def gemm_kernel(self) -> tuple[tuple[int, int, int], int, int]:
        (mm,) = [m for m in self.region.nodes if m.op == "matmul"]
        a, b = mm.inputs
        out_shape = mm.shape
        batch = out_shape[:-2]
        M, N = out_shape[-2], out_shape[-1]
        K = a.shape[-1]
        d = mm.dtype
        bm, bn, bk, warps, stages = self.gemm or gemm_candidates(M, N, K, d)[0]
        gm = 8
        self.prelude()
        nm, nn = _cdiv(M, bm), _cdiv(N, bn)
        self.emit("pid = tl.program_id(0)")
        self.emit("bid = tl.program_id(1)")
        self.emit(f"group = pid // {gm * nn}")
        self.emit(f"first_m = group * {gm}")
        self.emit(f"gsize = tl.minimum({nm} - first_m, {gm})")
        self.emit(f"pid_m = first_m + (pid % {gm * nn}) % gsize")
        self.emit(f"pid_n = (pid % {gm * nn}) // gsize")
        it = ".to(tl.int64)" if self.index_type == "tl.int64" else ""
        self.emit(f"rm = (pid_m * {bm} + tl.arange(0, {bm}){it})[:, None]")
        self.emit(f"rn = (pid_n * {bn} + tl.arange(0, {bn}){it})[None, :]")
        self.masks["m"] = f"(rm < {M})" if M % bm else ""
        self.masks["n"] = f"(rn < {N})" if N % bn else ""
        bidx = self.delinear(Ix("bid" + it), batch) if batch else ()
        m_ix, n_ix = Ix("rm", frozenset({"m"})), Ix("rn", frozenset({"n"}))
        acc_t = "tl.float64" if d is dt.float64 else ("tl.float32" if d.is_float
                                                       else tl_type(d))
        self.emit(f"acc = tl.full([{bm}, {bn}], 0, {acc_t})")
        self.emit(f"for k0 in range(0, {K}, {bk}):")
        self.indent += 1
        self.push()
        self.emit(f"rk = k0 + tl.arange(0, {bk}){it}")
        self.masks["k"] = f"(rk[None, :] < {K})" if K % bk else ""
        ka = Ix("rk[None, :]", frozenset({"k"}))
        kb = Ix("rk[:, None]", frozenset({"kb"}))
        self.masks["kb"] = f"(rk[:, None] < {K})" if K % bk else ""
        av = self.value(a, self.bidx(a.shape[:-2], batch, bidx) + (m_ix, ka))
        bv = self.value(b, self.bidx(b.shape[:-2], batch, bidx) + (kb, n_ix))
        ae, be = self.tile(av, bm, bk), self.tile(bv, bk, bn)
        # lanes past K add nothing: masked loads read zeros there, but an operand that does
        # not vary along K (a K of 1, a broadcast, a constant) has its value in every lane
        if self.masks["k"] and "k" not in av.deps:
            ae = self.tmp(f"tl.where({self.masks['k']}, {ae}, 0)")
        if self.masks["kb"] and "kb" not in bv.deps:
            be = self.tmp(f"tl.where({self.masks['kb']}, {be}, 0)")
        self.mma(ae, be, "m" not in av.deps or "n" not in bv.deps, d)
        self.pop()
        self.indent -= 1
        self.masks.pop("k")
        self.masks.pop("kb")
        res = self.tmp(f"acc.to({tl_type(d)})" if acc_t != tl_type(d) else "acc")
        self.fixed[mm] = TV(res, frozenset({"m", "n"}), d)
        out_idx = tuple(bidx) + (m_ix, n_ix)
        # only the matmul's own position may be read in the epilogue (checked in compute)
        self.scopes[-1][(id(mm), tuple(i.e for i in out_idx))] = self.fixed.pop(mm)
        v = self.value(self.root, out_idx)
        base = f"bid * {M * N} + " if batch else ""
        flat = Ix(self.tmp(f"{base}rm * {N} + rn", "l"), frozenset({"m", "n"}))
        self.store("out", flat, v, deps={"m", "n"})
        return (nm * nn, math.prod(batch), 1), warps, stages

    def mma(self, ae: str, be: str, broadcast: bool, d: dt.DType) -> None:
        """``acc += ae @ be`` for tiles [BM, BK] and [BK, BN] of ``d`` (the accumulator: float32,
        float64 for float64, the type itself for integers)."""
        # an operand the same in every row (A) or column (B) is a broadcast tile: Triton's
        # sm_80 pipeline fails on a float64 tl.dot of one (TritonGPUPrefetch; checker seed 3,
        # program 2250): multiply and sum instead, which is all a row or column of one needs
        if d.is_float and not (d is dt.float64 and broadcast):
            prec = "tf32" if (d is dt.float32 and ALLOW_TF32) else "ieee"
            out = ", out_dtype=tl.float64" if d is dt.float64 else ""
            self.emit(f"acc = tl.dot({ae}, {be}, acc, input_precision=\"{prec}\"{out})"
                      if d in (dt.float32, dt.float64) else f"acc = tl.dot({ae}, {be}, acc)")
        else:
            self.helpers.add("add")
            self.emit(f"acc += tl.reduce({ae}[:, :, None] * {be}[None, :, :], 1, _add)")

    def scatter_kernel(self) -> tuple[tuple[int, int, int], int]:
        (s,) = [m for m in self.region.nodes if m.op == "scatter_add"]
        if s is not self.root:
            raise AssertionError("scatter_add kernels hold only the scatter")
        g, idx_t = s.inputs
        a, size = s.attrs["axis"], s.attrs["size"]
        n = math.prod(g.shape)
        block, flat = self.flat_lanes(n)
        idx = self.delinear(flat, g.shape)
        k = len(idx_t.shape)
        raw = self.value(idx_t, idx[a:a + k])
        j = self.checked_index(raw, size, s, flat.deps | raw.deps)
        target = list(idx[:a]) + [j] + list(idx[a + k:])
        self.linear_memo.pop((tuple(i.e for i in target), tuple(s.shape)), None)
        at = self.linear(target, s.shape)
        v = self.value(g, idx)
        m = self.store_mask({"f"})
        if "f" not in at.deps:  # one index for all lanes, or one element: still a pointer each
            at = Ix(self.tmp(f"tl.broadcast_to({at.e}, [{block}])" if at.e != "0"
                             else f"tl.full([{block}], 0, {self.index_type})", "i"), flat.deps)
        ptr = f"out + {at.e}"
        self.emit(f"tl.atomic_add({ptr}, {v.e}, mask={m})" if m
                  else f"tl.atomic_add({ptr}, {v.e})")
        return (_cdiv(n, block), 1, 1), 4

    # --- the module -------------------------------------------------------------------------

    def render(self) -> KernelSource:
        kind = classify(self.kernel)
        stages = 3
        if kind == "loop":
            grid, warps = self.loop_kernel()
        elif kind == "row":
            grid, warps = self.row_kernel()
        elif kind == "gemm":
            conv = any(m.op == "conv" for m in self.region.nodes)
            grid, warps, stages = self.conv_kernel() if conv else self.gemm_kernel()
        elif kind == "scan":
            grid, warps = self.scan_kernel()
        else:
            grid, warps = self.scatter_kernel()
        args = [f"a{i}" for i in range(len(self.params))] + ["out"]
        signature = {f"a{i}": POINTER[p.dtype] for i, p in enumerate(self.params)}
        signature["out"] = POINTER[self.root.dtype]
        refs = [("operand", i) for i in range(len(self.params))] + [("output",)]
        if self.uses_error:
            args.append("err")
            signature["err"] = "*i32"
            refs.append(("error",))
        ops = ", ".join(dict.fromkeys(m.op for m in self.region.nodes if m.op != "constant"))
        header = [f"# lamina kernel @{self.name} ({kind}): {ops}",
                  "import triton", "import triton.language as tl", ""]
        body = [HELPERS[h].strip("\n") + "\n\n" for h in sorted(self.helpers)]
        fn = ["@triton.jit", f"def {self.name}({', '.join(args)}):"] + self.lines
        source = "\n".join(header) + "\n" + "\n".join(body) + "\n".join(fn) + "\n"
        prologue = []
        if kind == "scatter":
            prologue.append(zero_fill(self.name + "_zero", self.root))
        return KernelSource(self.name, kind, source, signature, refs, grid, warps, stages,
                            prologue=prologue)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def gemm_candidates(M: int, N: int, K: int, d: dt.DType) -> list[tuple[int, ...]]:
    """Tile configs (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages) worth timing for a matmul, the
    default first: large tiles for large matrices (H100: 128x128, 64 deep for 16-bit types),
    smaller ones for small. On a GPU the backend times them once per shape (autotune.py)."""
    if not d.is_float:
        return [(16, 16, 16, 4, 1)]
    wide = d.bits >= 32
    cap_n = 64 if d is dt.float64 else 128
    cap_m = 64 if d is dt.float64 else 128

    def fit(bm, bn, bk, warps, stages):
        return (min(bm, max(16, _pow2(M))), min(bn, max(16, _pow2(N))),
                min(bk, max(16, _pow2(K))), warps, stages)

    bk = 32 if wide else 64
    first = fit(cap_m, cap_n, bk, 8 if cap_m * cap_n >= 128 * 128 else 4, 3 if wide else 4)
    if first[0] * first[1] < 128 * 128:
        first = first[:3] + (4,) + first[4:]
    out = [first]
    for c in ((128, 64, bk, 4, 4), (64, 128, bk, 4, 4), (128, 256 if not wide else 128,
                                                       bk, 8, 3), (64, 64, bk, 4, 4)):
        c = fit(min(c[0], cap_m), min(c[1], cap_n), *c[2:])
        if c not in out:
            out.append(c)
    return out


def zero_fill(name: str, v: Value) -> KernelSource:
    n = math.prod(v.shape)
    block = min(LOOP_BLOCK, max(32, _pow2(n)))
    t = tl_type(v.dtype) if not v.dtype.is_bool else "tl.int8"
    it = ".to(tl.int64)" if n >= 2 ** 31 - 1 else ""
    mask = f", mask=offs < {n}" if n % block else ""
    source = "\n".join([
        f"# lamina: zero fill of {list(v.shape)} before the scatter",
        "import triton", "import triton.language as tl", "",
        "@triton.jit", f"def {name}(out):",
        f"    offs = tl.program_id(0) * {block} + tl.arange(0, {block}){it}",
        f"    tl.store(out + offs, tl.full([{block}], 0, {t}){mask})", ""])
    return KernelSource(name, "loop", source, {"out": POINTER[v.dtype]}, [("output",)],
                        (_cdiv(n, block), 1, 1), 4 if block >= 512 else 1)


def render(kernel: Node, name: str, error_codes: dict[int, int] | None = None,
           guarded: bool = False, gemm: tuple | None = None) -> KernelSource:
    """The Triton source of ``kernel`` (a fused ``kernel`` node), as function ``name``.

    ``error_codes`` maps id(node) of take/scatter_add nodes to the code their failure
    writes; ``guarded`` makes every store wait on no earlier failure (the step must then not
    change state); ``gemm`` picks a matmul tile config (one of ``gemm_candidates``)."""
    if classify(kernel) == "attention":
        from lamina.backends.triton import attention

        return attention.render(kernel, name, guarded)
    return Gen(kernel, name, error_codes or {}, guarded, gemm).render()
