"""Per-kernel profiles of the CPU backend: where a compiled step spends its time.

A profiled build times every kernel call with the CPU's cycle counter (see
``Codegen(profile=True)``); ``profile_table`` turns the counts into a table with each kernel's
time per call, its share of the step, the bytes it reads and writes (GB/s) and, for GEMMs, the
arithmetic rate (GFLOP/s).
"""

from __future__ import annotations

import math

from lamina.backends.llvm.kernels import classify
from lamina.ir.graph import Node


def kernel_flops(k: Node) -> int:
    """2*M*N*K per matmul in the kernel (elementwise work is not counted)."""
    total = 0
    for n in k.region.nodes:
        if n.op == "matmul":
            a = n.inputs[0].shape
            total += 2 * math.prod(n.shape) * a[-1]
    return total


def kernel_bytes(k: Node) -> int:
    """Bytes read (operands) plus bytes written (the result): an ideal kernel's traffic."""
    return sum(v.type.nbytes for v in k.inputs) + k.type.nbytes


def profile_table(rows: list[tuple], title: str = "") -> str:
    """Rows of (kernel or loop, seconds, calls[, depth]): a loop's row is its whole run, its
    body's kernels follow it, indented (their calls: one per step); shares are of the step.
    A row group (``rowgroups.RowGroup``, op ``rows``) and a loop run in row bands (its kernels
    never called alone: zero calls) are timed as one step: their kernels follow them, indented,
    without times of their own."""
    rows = [r if len(r) == 4 else (*r, 0) for r in rows]
    top = [r for r in rows if r[3] == 0]
    total = sum(r[1] for r in top) or 1e-12
    calls = max((r[2] for r in top), default=1) or 1
    head = f"{'kernel':<42} {'kind':<10} {'us/call':>9} {'share':>6} {'GB/s':>7} {'GFLOP/s':>8}"
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    # rows by time, each loop (or row group) followed by its body's rows, by time too; a
    # row group's members are listed under it in their order (they are timed together)
    def tree(lo, hi):
        nodes, i = [], lo
        while i < hi:
            j = i + 1
            while j < hi and rows[j][3] > rows[i][3]:
                j += 1
            nodes.append((rows[i], tree(i + 1, j)))
            i = j
        return nodes

    def emit(nodes, shared=False):
        for (k, seconds, n, depth), children in (
                nodes if shared else sorted(nodes, key=lambda t: -t[0][1])):
            per = seconds / max(n, 1)
            name = ("  " * depth + "@" + k.attrs["name"])
            if shared:
                lines.append(f"{name:<42.42} {classify(k):<10} {'(above)':>9}")
            elif k.op != "kernel":
                lines.append(f"{name:<42.42} {k.op:<10} {per * 1e6:9.1f} "
                             f"{seconds / total:6.1%}")
            else:
                gbs = kernel_bytes(k) / per / 1e9 if per else 0.0
                flops = kernel_flops(k)
                rate = f"{flops / per / 1e9:8.1f}" if flops and per else f"{'':>8}"
                lines.append(f"{name:<42.42} {classify(k):<10} {per * 1e6:9.1f} "
                             f"{seconds / total:6.1%} {gbs:7.1f} {rate}")
            emit(children, shared=k.op == "rows" or (
                k.op != "kernel" and bool(children) and all(c[0][2] == 0 for c in children)))

    emit(tree(0, len(rows)))
    lines.append(f"{'total per call':<53} {total / calls * 1e6:9.1f}")
    return "\n".join(lines) + "\n"
