"""Expand ``conv`` into an im2col gather and a matmul, for backends whose GEMM reads the
gather itself (llvm; triton lowers conv in its own kernel, numpy runs the reference). Runs
after the default pipeline, before fusion, so the matmul meets the GEMM kernels and their
epilogues (bias, activation).

    conv(x [N, C, *n], w [O, C/G, *k])  ->
        xp   = pad(x)                                      zero padding, if any
        idx  = sum_i (tap_i * dilation_i + out_i * stride_i) * stride_of_axis_i(xp)
                                                           [prod k, prod out], from iotas
        cols = take(xp.reshape(N, C, prod n'), idx, axis=2)  [N, C, prod k, prod out]
        y    = w.reshape(G, O/G, C/G * prod k) @ cols.reshape(N, G, C/G * prod k, prod out)
        y.reshape(N, O, *out)

A 1x1 conv of stride 1 without padding is the matmul alone (no gather). A conv with a large
kernel and a small output (a weight gradient) is one GEMM per input channel with the patches
as A (``_by_input_channel``).

``cols`` is never stored on llvm: ``idx`` is a separable function of (tap, position), so the
fusion pass lets the gather into the GEMM kernel as its operand and the GEMM reads it through
offset tables while it packs its panels (``passes/gemm_operand.py``, the gather entry of
``backends/llvm/gemm.py``): an implicit GEMM, with the epilogue fused through the final
reshape. Not done yet: the input gradient of a strided conv multiplies the zeros it inserts
between the cotangent's rows (a sub-pixel decomposition per stride phase would skip them).
"""

from __future__ import annotations

import math

from lamina.ir import dtypes as dt
from lamina.ir.builder import op
from lamina.ir.graph import Graph
from lamina.passes.manager import remark
from lamina.passes.rewrite import rewrite

PANEL = 16  # columns of the llvm GEMM's float32 micro-kernel (two AVX2 vectors)


def im2col_conv(b, x, w, stride, padding, dilation, groups):
    """The conv of ``x`` and ``w`` (builder Vars) as a gather and a matmul (see the module
    docstring)."""
    r = x.ndim - 2
    N, C, n = x.shape[0], x.shape[1], x.shape[2:]
    O, Cg, k = w.shape[0], w.shape[1], w.shape[2:]
    G, Og = groups, O // groups
    out = [(n[i] + sum(padding[i]) - dilation[i] * (k[i] - 1) - 1) // stride[i] + 1
           for i in range(r)]
    KK, M = math.prod(k), math.prod(out)
    lo, hi = [p[0] for p in padding], [p[1] for p in padding]
    if KK == 1 and all(s == 1 for s in stride) and not any(lo + hi):
        cols = x.reshape(N, C, M)  # a 1x1 conv: the input is the matrix already
    else:
        if any(lo + hi):
            x = op.pad(x, lo=(0, 0, *lo), hi=(0, 0, *hi), interior=(0,) * (r + 2))
        padded = x.shape[2:]
        shape = tuple(k) + tuple(out)
        idx = None
        for i in range(r):
            step = math.prod(padded[i + 1:])  # row-major stride of axis i of the padded input
            tap = b.var(b.emit("iota", (), {"axis": i, "dtype": dt.int64, "shape": shape}))
            pos = b.var(b.emit("iota", (), {"axis": r + i, "dtype": dt.int64, "shape": shape}))
            term = tap * (dilation[i] * step) + pos * (stride[i] * step)
            idx = term if idx is None else idx + term
        idx = idx.reshape(KK, M)
        cols = op.take(x.reshape(N, C, math.prod(padded)), idx, axis=2)  # [N, C, KK, M]
        if G == 1 and M < 64 and KK >= 4 * M:
            return _by_input_channel(cols, w, out)
    if G == 1:
        y = w.reshape(O, Cg * KK) @ cols.reshape(N, Cg * KK, M)
    else:
        y = w.reshape(G, Og, Cg * KK) @ cols.reshape(N, G, Cg * KK, M)
    return y.reshape(N, O, *out)


def _by_input_channel(cols, w, out):
    """A conv with a large kernel and a small output (a conv's weight gradient: the kernel is
    the forward's output grid, the output its taps) as one GEMM per input channel ``c``,
    summed, with the kernel's taps as K:

        y[:, n, q] = sum_c W[:, c, :] @ cols[n, c, :, q].T     (O rows, the (n, q) pairs as
                                                                columns)

    A reads W's rows (contiguous along K) and B, the patches, is read through offset tables
    while it is packed. Where the (n, q) pairs are fewer than a GEMM panel is wide (a first
    layer's weight gradient: one input channel, 9 taps), the transposed product, with the
    pairs as rows and the output channels as columns, wastes less of the micro-kernel:

        y[n, :, q] = sum_c cols[n, c, :, q] @ W[:, c, :].T

    (CPU time, one thread, weight gradients of 3x3 convs, [N, C, H, O]: [64, 16, 14, 32]
    3.6 -> 2.6 ms, [8, 32, 16, 8] 1.1 -> 0.4 ms; [64, 1, 28, 16] keeps the second form.)"""
    N, C, KK, M = cols.shape
    O = w.shape[0]
    r = w.ndim - 2
    if N * M >= PANEL:
        a = w.reshape(O, C, KK).transpose(1, 0, 2)                 # [C, O, KK]
        bt = cols.transpose(1, 2, 0, 3).reshape(C, KK, N * M)       # [C, KK, N*M]
        z = (a @ bt).sum(axis=0)                                    # [O, N*M]
        return z.reshape(O, N, *out).transpose(1, 0, *range(2, r + 2))
    a = cols.transpose(1, 0, 3, 2).reshape(C, N * M, KK)        # [C, N*M, KK]
    bw = w.reshape(O, C, KK).transpose(1, 2, 0)                 # [C, KK, O]
    z = (a @ bw).sum(axis=0)                                    # [N*M, O]
    return z.reshape(N, *out, O).transpose(0, r + 1, *range(1, r + 1))


def expand_conv(g: Graph) -> Graph:
    """Replace every conv node by :func:`im2col_conv`."""
    count = 0

    def rule(b, n, ins):
        nonlocal count
        if n.op != "conv":
            return None
        count += 1
        x, w = (b.var(v) for v in ins)
        return b.lift(im2col_conv(b, x, w, **n.attrs))

    if not any(n.op == "conv" for n in g.nodes):
        return g
    new = rewrite(g, rule)
    remark(f"expanded {count} conv(s) into im2col gathers and matmuls")
    return new
