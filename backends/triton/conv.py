"""Convolution on the GPU: ``conv`` as an implicit GEMM through ``tl.dot``, no im2col tensor.

A conv ``y[n, o, *out] = sum_{c, *tap} x[n, g*Cg + c, *(out*stride - lo + tap*dilation)]
* w[o, c, *tap]`` (group ``g`` of output channel ``o``) is, per group, the matrix product

    A [M, K]  rows: output positions (n, *out) flattened, M = N * prod(out)
              columns: (c, *tap) flattened, K = C/groups * prod(kernel)
    B [K, Og] the group's weights [Og, K] read transposed (contiguous along K)

where the A tile is gathered from the input on the fly: per element the input position is index
arithmetic on the output position and the tap, and the zero padding (any ``(lo, hi)`` per axis)
is the load mask (``other=0``). One program computes a BLOCK_M x BLOCK_N tile of one group
(grid: tiles x groups) with a loop over K in BLOCK_K steps, accumulating in float32 (float64
for float64, as the GEMM kernels do), then applies the elementwise epilogue fused after the conv
(bias, activation, residual) to the accumulator and stores ``y [N, O, *out]`` once.

Both gradients of conv are conv nodes (``ir/ops/conv.py``), so they take the same path: the
input gradient is a stride-1 conv of the (stride-dilated) cotangent, the weight gradient a conv
whose batch is the input's channels.

Fusion: ``fuse_conv_kernels`` is lamina's fusion pass (``passes/fuse.py``) with one addition:
a conv is a GEMM-like root, like a matmul: its operands are read through strided views
(transpose, reshape, broadcast: no copy), an elementwise epilogue over its result joins its
kernel, anything else is a kernel boundary.

``ConvKernel`` is a mixin of ``codegen.Gen`` (like ``scan.ScanKernel``): it uses the
generator's ``value`` (operands evaluated at gathered indices, through their views),
``delinear``/``linear`` and the tile masks.
"""

from __future__ import annotations

import math

from lamina.backends.triton.index import Ix
from lamina.backends.triton.scalar import TV, tl_type
from lamina.ir import dtypes as dt
from lamina.ir.graph import Graph, Node
from lamina.passes.fuse import Fuser, Group


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# --- fusion ------------------------------------------------------------------------------------


class ConvFuser(Fuser):
    """``Fuser`` that makes every conv the GEMM of its kernel (see the module docstring)."""

    def group_at(self, n: Node, needed: set[Node]) -> Group:
        if n.op != "conv":
            return super().group_at(n, needed)
        G = Group(n)
        G.kind, G.matmul = "gemm", n
        self.grow(G, needed)
        return G

    def absorbable(self, G: Group, p: Node) -> bool:
        if p.op == "conv":  # as a matmul: only into a loop group, as its elementwise epilogue
            return self.take_matmul(G, p)
        return super().absorbable(G, p)

    def decline(self, p: Node, reason: str) -> bool:
        # the remarks name the conv where the matmul rules speak of a matmul
        return super().decline(p, reason.replace("matmul", "conv") if p.op == "conv" else reason)


def fuse_conv_kernels(g: Graph) -> Graph:
    """Group every op of ``g`` into kernels, each conv the implicit GEMM of its own kernel with
    its operand views and elementwise epilogue."""
    if any(n.op == "kernel" for n in g.nodes):
        return g  # already fused
    return ConvFuser(g).run()


fuse_conv_kernels.pass_name = "fused"


# --- the kernel --------------------------------------------------------------------------------


def conv_problem(conv: Node) -> tuple[int, int, int, int]:
    """(M, N, K, groups) of the implicit GEMM of a conv node (N: output channels per group).

    >>> import numpy as np, lamina as lm
    >>> x, w = np.ones((2, 4, 8, 8), np.float32), np.ones((6, 2, 3, 3), np.float32)
    >>> g = lm.trace(lambda x, w: lm.conv(x, w, stride=2, padding=1, groups=2), x, w)
    >>> conv_problem(next(n for n in g.nodes if n.op == "conv"))  # 2 * 4 * 4 positions
    (32, 3, 18, 2)
    """
    x, w = conv.inputs
    G = conv.attrs["groups"]
    M = conv.shape[0] * math.prod(conv.shape[2:])
    return M, w.shape[0] // G, w.shape[1] * math.prod(w.shape[2:]), G


class ConvKernel:
    """``conv_kernel``: the kernel whose GEMM is a conv (see the module docstring)."""

    def conv_kernel(self) -> tuple[tuple[int, int, int], int, int]:
        from lamina.backends.triton.codegen import gemm_candidates

        (cv,) = [m for m in self.region.nodes if m.op == "conv"]
        x, w = cv.inputs
        a = cv.attrs
        stride, dilation, padding = a["stride"], a["dilation"], a["padding"]
        r = len(x.shape) - 2
        spatial, kernel, out = x.shape[2:], w.shape[2:], cv.shape[2:]
        Cg = w.shape[1]
        M, Og, K, G = conv_problem(cv)
        d = cv.dtype
        bm, bn, bk, warps, stages = self.gemm or gemm_candidates(M, Og, K, d)[0]
        nm, nn, gm = _cdiv(M, bm), _cdiv(Og, bn), 8
        it = ".to(tl.int64)" if self.index_type == "tl.int64" else ""
        self.prelude()
        self.emit("pid = tl.program_id(0)")
        self.emit("g = tl.program_id(1)")
        # groups of gm row tiles sweep the column tiles together (the GEMM's order: their
        # input rows and weight columns stay in L2)
        self.emit(f"first_m = (pid // {gm * nn}) * {gm}")
        self.emit(f"gsize = tl.minimum({nm} - first_m, {gm})")
        self.emit(f"pid_m = first_m + (pid % {gm * nn}) % gsize")
        self.emit(f"pid_n = (pid % {gm * nn}) // gsize")
        self.emit(f"rm = (pid_m * {bm} + tl.arange(0, {bm}){it})[:, None]")
        self.emit(f"rn = (pid_n * {bn} + tl.arange(0, {bn}){it})[None, :]")
        self.masks["m"] = f"(rm < {M})" if M % bm else ""
        self.masks["n"] = f"(rn < {Og})" if Og % bn else ""
        # the output position of each row of the tile: (n, *out)
        pos = self.delinear(Ix("rm", frozenset({"m"})), (cv.shape[0], *out))
        batch, opos = pos[0], pos[1:]
        oc = Ix(self.tmp(f"g * {Og} + rn", "i") if G > 1 else "rn", frozenset({"n"}))
        acc_t = "tl.float64" if d is dt.float64 else "tl.float32"
        self.emit(f"acc = tl.full([{bm}, {bn}], 0, {acc_t})")
        self.emit(f"for k0 in range(0, {K}, {bk}):")
        self.indent += 1
        self.push()
        self.emit(f"rk = k0 + tl.arange(0, {bk}){it}")
        self.masks["k"] = f"(rk[None, :] < {K})" if K % bk else ""
        self.masks["kb"] = f"(rk[:, None] < {K})" if K % bk else ""
        # A: the input at (n, g*Cg + c, *(out*stride - lo + tap*dilation)), 0 in the padding
        ka = self.delinear(Ix("rk[None, :]", frozenset({"k"})), (Cg, *kernel))
        c = ka[0] if G == 1 else Ix(self.tmp(f"g * {Cg} + {ka[0].e}", "i"), ka[0].deps)
        where, inside = [], []
        for i in range(r):
            lo = padding[i][0]
            e = f"{opos[i].e} * {stride[i]}" if stride[i] != 1 else opos[i].e
            if ka[1 + i].e != "0":
                e += f" + {ka[1 + i].e}" + (f" * {dilation[i]}" if dilation[i] != 1 else "")
            if lo:
                e += f" - {lo}"
            # the farthest row a tap reaches: past the input only with padding at the end
            reach = (out[i] - 1) * stride[i] + (kernel[i] - 1) * dilation[i] - lo
            deps = opos[i].deps | ka[1 + i].deps
            if lo or reach >= spatial[i]:
                # one output row and one tap: the position is a constant, whose bounds check
                # must still be a tensor to and into the load mask (checker seed 24, 1250)
                e = self.tmp(e if deps else f"tl.full([1, 1], {e}, tl.int32)", "i")
                inside += ([f"({e} >= 0)"] if lo else []) + \
                    ([f"({e} < {spatial[i]})"] if reach >= spatial[i] else [])
                deps = deps | {"p"}
            elif e not in (opos[i].e, ka[1 + i].e):
                e = self.tmp(e, "i")
            where.append(Ix(e, frozenset(deps)))
        self.masks["p"] = self.tmp(" & ".join(inside), "p") if inside else ""
        av = self.value(x, (batch, c, *where))
        # B: the weight at (g*Og + o, c, *tap), read as [K, N]
        kb = self.delinear(Ix("rk[:, None]", frozenset({"kb"})), (Cg, *kernel))
        if w.shape[0] > 1:  # a weight row is contiguous along K: o * K + k
            self.remember((oc, *kb), w.shape,
                          Ix(self.tmp(f"{oc.e} * {K} + rk[:, None]", "l"), frozenset({"n", "kb"})))
        bv = self.value(w, (oc, *kb))
        ae, be = self.tile(av, bm, bk), self.tile(bv, bk, bn)
        # lanes outside the input (padding) or past K add nothing: a masked load reads zeros
        # there, but an operand that does not vary along an axis is not masked by it
        zero_a = [self.masks[k] for k in ("k", "p") if self.masks[k] and k not in av.deps]
        if zero_a:
            ae = self.tmp(f"tl.where({' & '.join(zero_a)}, {ae}, 0)")
        if self.masks["kb"] and "kb" not in bv.deps:
            be = self.tmp(f"tl.where({self.masks['kb']}, {be}, 0)")
        # an operand the same in every row (A) or column (B) is a broadcast tile, which
        # Triton's sm_80 pipeline fails on in a float64 tl.dot (see Gen.mma): the rows or
        # columns past the tile's end are zeros, which makes it a tile of its own
        broadcast = False
        if "m" not in av.deps:
            if self.masks["m"]:
                ae = self.tmp(f"tl.where({self.masks['m']}, {ae}, 0)")
            else:
                broadcast = True
        if "n" not in bv.deps:
            if self.masks["n"]:
                be = self.tmp(f"tl.where({self.masks['n']}, {be}, 0)")
            else:
                broadcast = True
        self.mma(ae, be, broadcast, d)
        self.pop()
        self.indent -= 1
        for k in ("k", "kb", "p"):
            self.masks.pop(k)
        res = self.tmp(f"acc.to({tl_type(d)})" if acc_t != tl_type(d) else "acc")
        out_idx = (batch, oc, *opos)
        # only the conv's own position may be read in the epilogue (as a matmul's)
        self.scopes[-1][(id(cv), tuple(i.e for i in out_idx))] = \
            TV(res, frozenset({"m", "n"}), d)
        v = self.value(self.root, out_idx)
        flat = self.linear(out_idx, self.root.shape)
        if not flat.deps >= {"m", "n"}:  # a size-1 axis: still a [BM, BN] block of pointers
            flat = Ix(self.tmp(f"tl.full([{bm}, {bn}], 0, {self.index_type}) + {flat.e}", "l"),
                      frozenset({"m", "n"}))
        self.store("out", flat, v, deps={"m", "n"})
        return (nm * nn, G, 1), warps, stages
