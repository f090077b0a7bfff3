"""Tile configs for GEMM kernels, chosen by timing (on the GPU, once per kernel and target).

``codegen.gemm_candidates`` lists a few tile configs per shape (of a matmul, or of the implicit
GEMM of a conv kernel); the first is a sound default (what runs without a GPU, and for small
matmuls). On a GPU, ``choose`` compiles each candidate, times it on scratch buffers (never the
model's: a fused epilogue may update state in place) and keeps the fastest. The choice is cached
on disk by the kernel's IR, the target and Triton's version, so the timing happens once per
machine.
"""

from __future__ import annotations

import json
import math
import sys

import numpy as np

from lamina.backends.triton import aot
from lamina.backends.triton.codegen import gemm_candidates, render
from lamina.backends.triton.conv import conv_problem
from lamina.ir import config
from lamina.ir.graph import Node
from lamina.ir.printer import print_graph
from lamina.runtime import cache as cache_mod

MIN_FLOPS = 1 << 28  # below this (a 512^3 matmul) the default config is taken untimed
REPEAT = 10


def gemm_problem(node: Node) -> tuple[int, int, int, object]:
    """(M, N, K, dtype) of the GEMM of a gemm kernel, K times the batches (or groups, for the
    implicit GEMM of a conv: ``conv.conv_problem``)."""
    convs = [m for m in node.region.nodes if m.op == "conv"]
    if convs:
        M, N, K, groups = conv_problem(convs[0])
        return M, N, K * groups, convs[0].dtype
    (mm,) = [m for m in node.region.nodes if m.op == "matmul"]
    batch = math.prod(mm.shape[:-2])
    return mm.shape[-2], mm.shape[-1], mm.inputs[0].shape[-1] * batch, mm.dtype


def choose(node: Node, name: str, codes: dict, guarded: bool, target: str) -> tuple:
    """The fastest tile config of gemm kernel ``node`` on this GPU (``target``)."""
    M, N, K, d = gemm_problem(node)
    candidates = gemm_candidates(M, N, K, d)
    if len(candidates) == 1 or 2 * M * N * K < MIN_FLOPS:
        return candidates[0]
    parts = cache_mod.key_parts(print_graph(node.region, locations=False), "gemm-tile",
                                {"triton": aot.triton_version(), "gpu": target}, "")
    cache = cache_mod.Cache()
    hit = cache.get(f"tile-{name}", parts)
    if hit is not None:
        try:
            tile = tuple(json.loads(hit))
            if tile in candidates:
                return tile
        except ValueError:
            pass
    times = {}
    for c in candidates:
        src = render(node, name, codes, guarded, gemm=c)
        try:
            binary = aot.compile_source(src, target)
            times[c] = time_kernel(node, src, binary)
        except Exception as e:  # noqa: BLE001 (a config that does not fit this GPU)
            if config.debug >= 1:
                print(f"lamina: tile config {c} of {name} skipped: {e}", file=sys.stderr)
    best = min(times, key=times.get) if times else candidates[0]
    cache.put(f"tile-{name}", parts, json.dumps(list(best)).encode())
    return best


def time_kernel(node: Node, src, binary) -> float:
    """Seconds per launch of ``binary`` on scratch buffers shaped like ``node``'s values."""
    from lamina.backends.triton import cuda
    from lamina.backends.triton.device import _aligned, _scratch_buffer

    dev = cuda.device()
    rng = np.random.default_rng(0)
    keep, pointers = [], []
    for ref in src.args:
        v = node.inputs[ref[1]] if ref[0] == "operand" else node
        nbytes = 4 if ref[0] == "error" else v.type.nbytes
        buf = dev.alloc(nbytes)
        dev.memset(buf, 0)  # indices 0 are in range; zeros are finite
        if ref[0] == "operand" and v.dtype.is_float and v.dtype.np is not None:
            dev.upload(buf, (0.1 * rng.standard_normal(v.shape)).astype(v.dtype.np))
        keep.append(buf)
        pointers.append(buf.ptr)
    grid = math.prod(src.grid)
    extra = len(binary.params) - len(src.args)
    scratch = []
    for size, align in ((binary.global_scratch_size, binary.global_scratch_align),
                        (binary.profile_scratch_size, binary.profile_scratch_align)):
        buf = _scratch_buffer(dev, [(size * grid, align)])
        keep.append(buf)
        scratch.append(_aligned(buf, align) if size else 0)
    pointers += (scratch + [0] * extra)[:extra]
    module = dev.load_module(binary.cubin)
    launch = dev.prepare(module.function(binary.name), src.grid, 32 * binary.num_warps,
                         binary.shared, [(cuda.c_uint64, p) for p in pointers])
    launch()
    dev.synchronize()
    timer = dev.timer()
    timer.start()
    for _ in range(REPEAT):
        launch()
    return timer.stop() / REPEAT
