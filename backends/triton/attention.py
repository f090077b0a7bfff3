"""Flash-style attention kernels for the GPU: ``attention`` and ``attention_grad`` nodes
(``ir/ops/attention.py``), each its own kernel whose [L, S] score matrix never reaches memory.

Every size is a constant of the source; q, k, v (and out, g) are contiguous [B, L|S, E|Ev]
(B = the product of the batch axes, one "batch-head" per program column); a head dim that is
not a power of two (``tl.arange`` needs one) is padded to DE / DV lanes (16 at least: the
smallest ``tl.dot``) with masked loads reading zeros, which add nothing to any product.

Forward, grid (query blocks, B): a program holds BLOCK_M queries and loops over BLOCK_N key
blocks (causal: only up to the block holding its last query's diagonal), with

    S = Q K^T * scale + bias,  masked (-inf) past S and, causal, above the diagonal
    m' = max(m, rowmax S),  P = exp(S - m'),  l = l e^(m - m') + rowsum P,  O = O e^(m - m') + P V

(online softmax), and stores ``O / l``. A row whose keys are all masked keeps m = -inf: its
maximum counts as 0 (so every exp is exp(-inf) = 0, never NaN) and its l stays 0, and it
stores 0, as the reference does. The bias is read through its broadcast strides (zero along
the axes it is broadcast over: a key-padding mask [B, 1, 1, S] is read as is).

Backward, two launches (race-free: each program owns the rows it writes, no atomics):

    1. grid (query blocks, B), the prologue: per query row the statistics of the forward (one
       pass over the keys) give lse = m + log l (+inf for a row with no key, so that its
       probabilities exp(S - lse) are 0) and D = rowsum(dO * O), both stored in the kernel's
       scratch memory (``scratch_need``: 2 B L floats, from the memory plan); then a second
       pass over the keys recomputes P = exp(S - lse) and accumulates
       dQ += dS K with dS = P (dO V^T - D), stored as ``dq * scale``
    2. grid (key blocks, B): a program holds BLOCK_N keys and values and loops over the query
       blocks that see them (causal: from the diagonal on), reading lse and D from the
       scratch: dV += P^T dO, dK += dS^T Q, stored as ``dv`` and ``dk * scale``

into the one packed result (all of dq, then all of dk, then all of dv). Everything accumulates
in float32 (float64 for float64 inputs: ``tl.dot(..., out_dtype=tl.float64)``); 16-bit inputs
are widened to float32 when loaded. Every operand tile of a ``tl.dot`` is a loaded (or
computed) tile of its own, never a broadcast one, so the float64 ``tl.dot`` of a tile of one
row or column (L, S, E or Ev of 1) is not the broadcast tile that Triton's sm_80 pipeline
fails on (``codegen.Gen.mma``): rows and columns past the sizes are masked-load zeros.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.backends.triton.scalar import HELPERS, POINTER, tl_type
from lamina.backends.triton.spec import KernelSource
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Node, Param
from lamina.ir.ops.registry import get as get_op

MAX_GRID_Y = 65535  # CUDA's limit on grid.y: more batch-heads fold into grid.x
WARPS = 4
STAGES = 2
TILE_BYTES = 32768


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def attention_node(kernel: Node) -> Node | None:
    """The ``attention``/``attention_grad`` node a fused kernel computes (None: another kind)."""
    found = [n for n in kernel.region.nodes if get_op(n.op).kind == "attention"]
    return found[0] if found else None


def _acc(d: dt.DType) -> dt.DType:
    return dt.float64 if d is dt.float64 else dt.float32


def scratch_need(kernel: Node, in_place: bool) -> int | None:
    """Bytes of scratch memory an attention gradient kernel needs: lse and D of every query
    row (``plan_memory``'s hook; None for every other kernel)."""
    n = attention_node(kernel) if kernel.op == "kernel" else None
    if n is None or n.op != "attention_grad":
        return None
    q = n.inputs[0]
    rows = math.prod(q.shape[:-1])
    size = _acc(q.dtype).itemsize
    return max(1, 2 * rows) * size


class _Render:
    """The sources of one attention kernel node (see the module docstring)."""

    def __init__(self, kernel: Node, name: str, guarded: bool):
        n = attention_node(kernel)
        if n is None or n is not kernel.region.outputs[0] or len(kernel.region.nodes) != 1:
            raise LaminaError(f"kernel @{name}: an attention kernel holds its attention node "
                              "alone (a fusion bug: use backend='llvm' and report it)")
        self.node, self.name, self.guarded = n, name, guarded
        self.params = list(kernel.region.inputs)
        arg = {p: f"a{i}" for i, p in enumerate(self.params)}
        if not all(isinstance(x, Param) and x in arg for x in n.inputs):
            raise LaminaError(f"kernel @{name}: an operand of {n.op} is not a kernel input")
        self.grad = n.op == "attention_grad"
        fixed = 5 if self.grad else 3
        self.q, self.k, self.v = (arg[x] for x in n.inputs[:3])
        self.o, self.g = (arg[x] for x in n.inputs[3:5]) if self.grad else (None, None)
        bias = n.inputs[fixed] if len(n.inputs) > fixed else None
        qs, ks, vs = (x.shape for x in n.inputs[:3])
        self.lead = tuple(qs[:-2])
        self.B = math.prod(self.lead)
        self.L, self.E = qs[-2], qs[-1]
        self.S, self.Ev = ks[-2], vs[-1]
        self.dtype = d = n.inputs[0].dtype
        self.acc = _acc(d)
        self.T, self.X = tl_type(self.acc), tl_type(d)
        self.causal = bool(n.attrs["causal"])
        scale = float(n.attrs["scale"])
        if d.np is not None and d is not dt.float64:
            scale = float(np.asarray(scale, d.np))  # the reference's scale, in the input type
        self.scale = f"tl.full([], {scale!r}, tl.float64)" if d is dt.float64 else repr(scale)
        from lamina.backends.triton.codegen import ALLOW_TF32

        self.prec = "tf32" if (self.acc is dt.float32 and ALLOW_TF32) else "ieee"
        self.DE, self.DV = max(16, _pow2(self.E)), max(16, _pow2(self.Ev))
        # rows of a block: a [rows, head dim] tile of TILE_BYTES at most (large head dims
        # and float64 get fewer: Triton stages the tiles in shared memory, 227 KiB on an
        # H100, 163 KiB on an A100; float64 head dims of 256 take 16 rows)
        fit = TILE_BYTES // (max(self.DE, self.DV) * self.acc.itemsize)
        base = max(16, min(32 if d is dt.float64 else 64, 1 << (max(fit, 1).bit_length() - 1)))
        self.BM = min(base, max(16, _pow2(self.L)))
        self.BN = min(base, max(16, _pow2(self.S)))
        sizes = [self.B * self.L * self.E, self.B * self.S * (self.E + self.Ev),
                 self.B * self.L * self.Ev] + ([math.prod(bias.shape)] if bias else [])
        self.big = sum(sizes) >= 2 ** 31 - 1
        self.bias = arg[bias] if bias is not None else None
        self.bias_strides = self._bias_strides(bias.shape) if bias is not None else None
        self.lines: list[str] = []

    # --- source text ----------------------------------------------------------------------

    def _bias_strides(self, shape) -> tuple[list[tuple[int, int]], int, int]:
        """(per batch axis (its size, stride), row stride, column stride): the bias read as
        the scores [*B, L, S] it broadcasts to (stride 0 along broadcast axes)."""
        scores = self.lead + (self.L, self.S)
        full = (1,) * (len(scores) - len(shape)) + tuple(shape)
        strides, s = [], 1
        for size in reversed(full):
            strides.append(s if size != 1 else 0)
            s *= size
        strides.reverse()
        return list(zip(self.lead, strides[:-2])), strides[-2], strides[-1]

    def emit(self, line: str, indent: int = 1) -> None:
        self.lines.append("    " * indent + line)

    def start(self, blocks: int) -> None:
        """Program ids: ``pid`` (the block along the rows), ``bh`` (the batch-head)."""
        it = ".to(tl.int64)" if self.big else ""
        if self.B > MAX_GRID_Y:
            self.emit(f"t = tl.program_id(0){it}")
            self.emit(f"pid = t % {blocks}")
            self.emit(f"bh = t // {blocks}")
        else:
            self.emit(f"pid = tl.program_id(0){it}")
            self.emit(f"bh = tl.program_id(1){it}")
        if self.guarded:
            self.emit("ok = (tl.load(err + tl.arange(0, 1)) == 0)[:, None]")
        self.emit(f"re = tl.arange(0, {self.DE})")
        self.emit(f"rv = tl.arange(0, {self.DV})")

    def grid(self, blocks: int) -> tuple[int, int, int]:
        if not blocks or not self.B:
            return (0, 1, 1)
        return (blocks * self.B, 1, 1) if self.B > MAX_GRID_Y else (blocks, self.B, 1)

    @staticmethod
    def _mask(*parts) -> str | None:
        parts = [p for p in parts if p]
        return " & ".join(parts) if parts else None

    def _in(self, idx: str, size: int, block: int, rows: bool) -> str | None:
        """The mask of ``idx`` < size (None where every lane is inside)."""
        if size % block == 0 and size:
            return None
        return f"({idx}[:, None] < {size})" if rows else f"({idx}[None, :] < {size})"

    def tile(self, ptr: str, rows: str, nrows: int, brows: int, cols: str, ncols: int,
             bcols: int, transposed: bool = False) -> str:
        """A [brows, bcols] tile of a contiguous [B, nrows, ncols] operand at ``(bh, rows,
        cols)`` as the accumulator type (``transposed``: the [bcols, brows] tile of its
        transpose), zeros outside."""
        r, c = ("[None, :]", "[:, None]") if transposed else ("[:, None]", "[None, :]")
        at = f"{ptr} + bh * {nrows * ncols} + {rows}{r} * {ncols} + {cols}{c}"
        m = self._mask(self._in(rows, nrows, brows, not transposed),
                       self._in(cols, ncols, bcols, transposed))
        text = f"tl.load({at}, mask={m}, other=0)" if m else f"tl.load({at})"
        return text if self.X == self.T else f"{text}.to({self.T})"

    def store(self, ptr: str, base: int, rows: str, nrows: int, brows: int, cols: str,
              ncols: int, bcols: int, value: str, indent: int = 1) -> None:
        """Store the [brows, bcols] tile ``value`` at ``(bh, rows, cols)`` of a contiguous
        [B, nrows, ncols] array ``base`` elements into ``ptr`` (in the input's type)."""
        if self.X != self.T:
            value = f"({value}).to({self.X})"
        at = f"{ptr} + {f'{base} + ' if base else ''}bh * {nrows * ncols} + " \
             f"{rows}[:, None] * {ncols} + {cols}[None, :]"
        m = self._mask(self._in(rows, nrows, brows, True), self._in(cols, ncols, bcols, False),
                       "ok" if self.guarded else None)
        if m == "ok":
            m = f"tl.broadcast_to(ok, [{brows}, {bcols}])"
        self.emit(f"tl.store({at}, {value}, mask={m})" if m else f"tl.store({at}, {value})",
                  indent)

    def dot(self, a: str, b: str, acc: str | None = None) -> str:
        out = ", out_dtype=tl.float64" if self.acc is dt.float64 else ""
        c = f", {acc}" if acc else ""
        return f"tl.dot({a}, {b}{c}, input_precision=\"{self.prec}\"{out})"

    def scores(self, qt: str, kt: str, rm: str, rn: str, indent: int) -> None:
        """``s``: the scaled, biased, masked scores [BM, BN] of query rows ``rm`` and keys
        ``rn`` (``kt``: the keys' transposed tile [DE, BN])."""
        BM, BN = self.BM, self.BN
        self.emit(f"s = {self.dot(qt, kt)} * {self.scale}", indent)
        if self.bias:
            batch, s_row, s_col = self.bias_strides
            terms, inner = [], self.B
            for size, stride in batch:
                # an empty batch: no program runs (checker seed 25, program 7450)
                inner //= max(size, 1)
                if stride and size > 1:
                    i = "bh" if inner == 1 else f"(bh // {inner})"
                    if inner * size != self.B:
                        i = f"({i} % {size})"
                    terms.append(f"{i} * {stride}")
            at = " + ".join([self.bias] + terms +
                            [f"{rm}[:, None] * {s_row}", f"{rn}[None, :] * {s_col}"])
            m = self._mask(self._in(rm, self.L, BM, True), self._in(rn, self.S, BN, False))
            load = f"tl.load({at}, mask={m}, other=0)" if m else f"tl.load({at})"
            if self.X != self.T:
                load = f"{load}.to({self.T})"
            self.emit(f"s = s + {load}", indent)
        keep = self._mask(self._in(rn, self.S, BN, False),
                          f"({rn}[None, :] <= {rm}[:, None])" if self.causal else None)
        if keep:
            self.emit(f"s = tl.where({keep}, s, float('-inf'))", indent)

    def key_loop(self, indent: int) -> None:
        """``for n0 ...:`` over the key blocks the query block ``pid`` sees, ``rn`` its keys."""
        hi = f"tl.minimum((pid + 1) * {self.BM}, {self.S})" if self.causal else str(self.S)
        self.emit(f"for n0 in range(0, {hi}, {self.BN}):", indent)
        self.emit(f"rn = n0 + tl.arange(0, {self.BN})", indent + 1)

    def online(self, indent: int) -> None:
        """Fold ``s`` into the running row maximum ``m_i`` and sum ``l_i``; ``p`` and
        ``alpha`` (the rescaling of what was summed before) for the caller."""
        self.emit("m_new = _max_nan(m_i, tl.reduce(s, 1, _max_nan))", indent)
        self.emit("m_use = tl.where(m_new == float('-inf'), 0.0, m_new)", indent)
        self.emit("alpha = tl.exp(m_i - m_use)", indent)
        self.emit("p = tl.exp(s - m_use[:, None])", indent)
        self.emit("l_i = l_i * alpha + tl.reduce(p, 1, _add)", indent)
        self.emit("m_i = m_new", indent)

    def source(self, name: str, args: list[str], what: str) -> str:
        ops = self.node.op
        # NOTE: Triton's own reductions (tl.max, tl.sum) are jit functions that its
        # interpreter cannot call from a kernel loaded apart: the helpers, as in codegen
        helpers = [HELPERS[h].strip("\n") + "\n" for h in ("add", "max")]
        header = [f"# lamina kernel @{name} (attention): {ops}: {what}",
                  "import triton", "import triton.language as tl", ""] + helpers + [
                  "@triton.jit", f"def {name}({', '.join(args)}):"]
        return "\n".join(header + self.lines) + "\n"

    def _args(self, scratch: bool):
        args = [f"a{i}" for i in range(len(self.params))] + ["out"]
        sig = {f"a{i}": POINTER[p.dtype] for i, p in enumerate(self.params)}
        sig["out"] = POINTER[self.dtype]
        refs = [("operand", i) for i in range(len(self.params))] + [("output",)]
        if scratch:
            args.append("scratch")
            sig["scratch"] = POINTER[self.acc]
            refs.append(("scratch",))
        if self.guarded:
            args.append("err")
            sig["err"] = "*i32"
            refs.append(("error",))
        return args, sig, refs

    # --- the kernels ----------------------------------------------------------------------

    def forward(self) -> KernelSource:
        L, S, E, Ev, BM, BN, DE, DV = (self.L, self.S, self.E, self.Ev, self.BM, self.BN,
                                       self.DE, self.DV)
        nm = _cdiv(L, BM)
        self.start(nm)
        self.emit(f"rm = pid * {BM} + tl.arange(0, {BM})")
        self.emit(f"qt = {self.tile(self.q, 'rm', L, BM, 're', E, DE)}")
        self.emit(f"m_i = tl.full([{BM}], float('-inf'), {self.T})")
        self.emit(f"l_i = tl.full([{BM}], 0, {self.T})")
        self.emit(f"acc = tl.full([{BM}, {DV}], 0, {self.T})")
        self.key_loop(1)
        self.emit(f"kt = {self.tile(self.k, 'rn', S, BN, 're', E, DE, transposed=True)}", 2)
        self.scores("qt", "kt", "rm", "rn", 2)
        self.online(2)
        self.emit(f"vt = {self.tile(self.v, 'rn', S, BN, 'rv', Ev, DV)}", 2)
        self.emit(f"acc = {self.dot('p', 'vt', 'acc * alpha[:, None]')}", 2)
        self.emit("l_use = tl.where(l_i == 0, 1.0, l_i)")
        if self.acc is dt.float64:
            self.emit("o = acc / l_use[:, None]")
        else:
            self.emit(f"o = tl.div_rn(acc, tl.broadcast_to(l_use[:, None], [{BM}, {DV}]))")
        self.store("out", 0, "rm", L, BM, "rv", Ev, DV, "o")
        args, sig, refs = self._args(False)
        grid = self.grid(nm if Ev else 0)
        return KernelSource(self.name, "attention", self.source(self.name, args, "forward"),
                            sig, refs, grid, WARPS, STAGES)

    def backward_dq(self, name: str) -> KernelSource:
        """The prologue: lse and D into the scratch, dq into the output."""
        L, S, E, Ev, BM, BN, DE, DV, B = (self.L, self.S, self.E, self.Ev, self.BM, self.BN,
                                          self.DE, self.DV, self.B)
        nm = _cdiv(L, BM)
        self.lines = []
        self.start(nm)
        self.emit(f"rm = pid * {BM} + tl.arange(0, {BM})")
        self.emit(f"qt = {self.tile(self.q, 'rm', L, BM, 're', E, DE)}")
        self.emit(f"gt = {self.tile(self.g, 'rm', L, BM, 'rv', Ev, DV)}")
        self.emit(f"ot = {self.tile(self.o, 'rm', L, BM, 'rv', Ev, DV)}")
        self.emit("dd = tl.reduce(gt * ot, 1, _add)")
        self.emit(f"m_i = tl.full([{BM}], float('-inf'), {self.T})")
        self.emit(f"l_i = tl.full([{BM}], 0, {self.T})")
        self.key_loop(1)
        self.emit(f"kt = {self.tile(self.k, 'rn', S, BN, 're', E, DE, transposed=True)}", 2)
        self.scores("qt", "kt", "rm", "rn", 2)
        self.online(2)
        self.emit("m_use = tl.where(m_i == float('-inf'), 0.0, m_i)")
        self.emit("lse = tl.where(l_i == 0, float('inf'), m_use + tl.log(l_i))")
        rows = f"(rm < {L})" if L % BM else None
        for off, val in ((0, "lse"), (B * L, "dd")):
            at = f"scratch + {off} + bh * {L} + rm" if off else f"scratch + bh * {L} + rm"
            self.emit(f"tl.store({at}, {val}, mask={rows})" if rows else
                      f"tl.store({at}, {val})")
        self.emit(f"dq = tl.full([{BM}, {DE}], 0, {self.T})")
        self.key_loop(1)
        self.emit(f"kt = {self.tile(self.k, 'rn', S, BN, 're', E, DE, transposed=True)}", 2)
        self.scores("qt", "kt", "rm", "rn", 2)
        self.emit("p = tl.exp(s - lse[:, None])", 2)
        self.emit(f"vt = {self.tile(self.v, 'rn', S, BN, 'rv', Ev, DV, transposed=True)}", 2)
        self.emit(f"ds = p * ({self.dot('gt', 'vt')} - dd[:, None])", 2)
        self.emit(f"dq = {self.dot('ds', 'tl.trans(kt)', 'dq')}", 2)
        self.store("out", 0, "rm", L, BM, "re", E, DE, f"dq * {self.scale}")
        args, sig, refs = self._args(True)
        return KernelSource(name, "attention", self.source(name, args, "lse, D and dq"), sig,
                            refs, self.grid(nm), WARPS, STAGES)

    def backward_dkdv(self) -> KernelSource:
        """The main launch: dk and dv per key block, from the prologue's lse and D."""
        L, S, E, Ev, BM, BN, DE, DV, B = (self.L, self.S, self.E, self.Ev, self.BM, self.BN,
                                          self.DE, self.DV, self.B)
        nn = _cdiv(S, BN)
        self.lines = []
        self.start(nn)
        self.emit(f"rn = pid * {BN} + tl.arange(0, {BN})")
        self.emit(f"kk = {self.tile(self.k, 'rn', S, BN, 're', E, DE)}")
        self.emit(f"vk = {self.tile(self.v, 'rn', S, BN, 'rv', Ev, DV)}")
        self.emit(f"dk = tl.full([{BN}, {DE}], 0, {self.T})")
        self.emit(f"dv = tl.full([{BN}, {DV}], 0, {self.T})")
        lo = f"pid * {BN} // {BM} * {BM}" if self.causal else "0"
        self.emit(f"for m0 in range({lo}, {L}, {BM}):")
        self.emit(f"rm = m0 + tl.arange(0, {BM})", 2)
        self.emit(f"qt = {self.tile(self.q, 'rm', L, BM, 're', E, DE)}", 2)
        self.scores("qt", "tl.trans(kk)", "rm", "rn", 2)
        rows = f", mask=rm < {L}, other=" if L % BM else None
        for name, off, other in (("lse", 0, "float('inf')"), ("dd", B * L, "0")):
            at = f"scratch + {off} + bh * {L} + rm" if off else f"scratch + bh * {L} + rm"
            self.emit(f"{name} = tl.load({at}{rows}{other})" if rows else
                      f"{name} = tl.load({at})", 2)
        self.emit("p = tl.exp(s - lse[:, None])", 2)
        self.emit(f"gt = {self.tile(self.g, 'rm', L, BM, 'rv', Ev, DV)}", 2)
        self.emit(f"dv = {self.dot('tl.trans(p)', 'gt', 'dv')}", 2)
        self.emit(f"ds = p * ({self.dot('gt', 'tl.trans(vk)')} - dd[:, None])", 2)
        self.emit(f"dk = {self.dot('tl.trans(ds)', 'qt', 'dk')}", 2)
        self.store("out", B * L * E, "rn", S, BN, "re", E, DE, f"dk * {self.scale}")
        self.store("out", B * (L * E + S * E), "rn", S, BN, "rv", Ev, DV, "dv")
        args, sig, refs = self._args(True)
        pro = self.backward_dq_source
        return KernelSource(self.name, "attention",
                            self.source(self.name, args, "dk and dv (after its prologue)"),
                            sig, refs, self.grid(nn), WARPS, STAGES, prologue=[pro])

    def render(self) -> KernelSource:
        if not self.grad:
            return self.forward()
        self.backward_dq_source = self.backward_dq(f"{self.name}_dq")
        return self.backward_dkdv()


def render(kernel: Node, name: str, guarded: bool = False) -> KernelSource:
    """The Triton source of an attention kernel node, as function ``name`` (a gradient: its
    dk/dv kernel, with the lse/D/dq kernel as its prologue)."""
    return _Render(kernel, name, guarded).render()
