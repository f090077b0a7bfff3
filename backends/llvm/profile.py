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


def profile_table(rows: list[tuple[Node, float, int]], title: str = "") -> str:
    total = sum(t for _, t, _ in rows) or 1e-12
    calls = max((c for _, _, c in rows), default=1) or 1
    head = f"{'kernel':<42} {'kind':<10} {'us/call':>9} {'share':>6} {'GB/s':>7} {'GFLOP/s':>8}"
    lines = [title, head, "-" * len(head)] if title else [head, "-" * len(head)]
    for k, seconds, n in sorted(rows, key=lambda r: -r[1]):
        per = seconds / max(n, 1)
        gbs = kernel_bytes(k) / per / 1e9 if per else 0.0
        flops = kernel_flops(k)
        rate = f"{flops / per / 1e9:8.1f}" if flops and per else f"{'':>8}"
        lines.append(f"{'@' + k.attrs['name']:<42.42} {classify(k):<10} {per * 1e6:9.1f} "
                     f"{seconds / total:6.1%} {gbs:7.1f} {rate}")
    lines.append(f"{'total per call':<53} {total / calls * 1e6:9.1f}")
    return "\n".join(lines) + "\n"
