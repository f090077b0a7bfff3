"""Machine limits, measured by the benchmark suite itself (nothing here is a spec-sheet number).

    copy bandwidth   a large float32 array copied with numpy (``np.copyto``), on 1 thread and on
                     N threads (N Python threads, each copying a contiguous slice; numpy releases
                     the GIL while it copies). GB/s count bytes read + bytes written. Measured at
                     a large size (beyond the caches) and at a given working-set size (the
                     memory-bound workloads' own, which may sit partly in a large L3).
    FMA peak         a tiny LLVM kernel JIT-compiled for the host through llvmlite (lamina's own
                     toolchain, ``lamina.backends.llvm.jit``): a loop over 12 independent
                     accumulator chains of ``llvm.fma.v16f32`` (16 lanes x 2 flops each), run on
                     1 thread and on N threads (N Python threads calling the JIT function through
                     ctypes, which releases the GIL). The best of a few runs is reported, per
                     wall second and per second of the threads' own CPU time.
    background load  ``CpuMeter``: the CPU time other processes use (from /proc/stat, minus this
                     process's own), in cores; ``wait_idle`` waits for a quiet machine.

``python benchmarks/machine.py [--quick]`` prints the limits alone.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
import platform
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

CHAINS = 12   # independent accumulator chains (enough to hide FMA latency on 2 FMA ports)
LANES = 16    # <16 x float>: one AVX-512 register


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or platform's guess)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# --- copy bandwidth ---------------------------------------------------------------------------


def _time_best_median(fn, reps: int) -> tuple[float, float]:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts)), float(min(ts))


def copy_bandwidth(nbytes: int, threads: int = 1, seconds: float = 0.5) -> dict:
    """GB/s (read + write) of copying ``nbytes`` of float32 with numpy on ``threads`` threads.

    Returns ``{"median": GB/s at the median time, "best": GB/s at the fastest run}``.
    """
    n = max(threads * LANES, nbytes // 4)
    src = np.ones(n, np.float32)
    dst = np.ones(n, np.float32)  # touched: no page faults in the timed copies
    if threads == 1:
        def run():
            np.copyto(dst, src)
        pool = None
    else:
        bounds = np.linspace(0, n, threads + 1).astype(int)
        parts = [(dst[lo:hi], src[lo:hi]) for lo, hi in itertools.pairwise(bounds)]
        pool = ThreadPoolExecutor(threads)

        def run():
            for f in [pool.submit(np.copyto, d, s) for d, s in parts]:
                f.result()
    try:
        run()
        t0 = time.perf_counter()
        run()
        once = max(time.perf_counter() - t0, 1e-6)
        reps = int(min(200, max(5, seconds / once)))
        med, best = _time_best_median(run, reps)
    finally:
        if pool is not None:
            pool.shutdown()
    moved = 2 * src.nbytes
    return {"median": moved / med / 1e9, "best": moved / best / 1e9, "bytes": int(src.nbytes),
            "threads": threads, "reps": reps}


# --- FMA peak ---------------------------------------------------------------------------------


@functools.cache
def _fma_kernel():
    """The JIT-compiled ``float fma_peak(i64 iters, float x, float y)`` (ctypes function), and
    its engine (kept alive with it)."""
    from llvmlite import ir

    from lamina.backends.llvm import jit

    m = jit.new_module("fma_peak")
    f32, i64 = ir.FloatType(), ir.IntType(64)
    vec = ir.VectorType(f32, LANES)
    fma = ir.Function(m, ir.FunctionType(vec, [vec, vec, vec]), "llvm.fma.v16f32")
    fn = ir.Function(m, ir.FunctionType(f32, [i64, f32, f32]), "fma_peak")
    n, x, y = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    zeros = ir.Constant(ir.VectorType(ir.IntType(32), LANES), [0] * LANES)

    def splat(s):
        v = b.insert_element(ir.Constant(vec, ir.Undefined), s, ir.IntType(32)(0))
        return b.shuffle_vector(v, ir.Constant(vec, ir.Undefined), zeros)

    vx, vy = splat(x), splat(y)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(i64, "i")
    i.add_incoming(i64(0), entry)
    accs = []
    for k in range(CHAINS):
        acc = b.phi(vec, f"acc{k}")
        acc.add_incoming(ir.Constant(vec, [float(k + j) for j in range(LANES)]), entry)
        accs.append(acc)
    new = [b.call(fma, [acc, vx, vy]) for acc in accs]
    for acc, nv in zip(accs, new):
        acc.add_incoming(nv, loop)
    i2 = b.add(i, i64(1))
    i.add_incoming(i2, loop)
    b.cbranch(b.icmp_signed("<", i2, n), loop, done)
    b.position_at_end(done)
    total = new[0]
    for nv in new[1:]:
        total = b.fadd(total, nv)
    s = b.extract_element(total, ir.IntType(32)(0))
    for j in range(1, LANES):
        s = b.fadd(s, b.extract_element(total, ir.IntType(32)(j)))
    b.ret(s)
    opt = jit.optimize(jit.finalize_text(m))
    engine = jit.Engine(opt.module)
    cfn = ctypes.CFUNCTYPE(ctypes.c_float, ctypes.c_int64, ctypes.c_float, ctypes.c_float)(
        engine.address("fma_peak"))
    return cfn, engine


def fma_peak(threads: int = 1, seconds: float = 0.3, tries: int = 3) -> dict:
    """GFLOP/s of the FMA kernel on ``threads`` threads, best of ``tries`` runs.

    ``gflops``: all threads' flops per wall second. ``gflops_cpu``: the sum of each thread's
    flops per second of its own CPU time (``time.thread_time``), the cores' rate while they
    run: other processes that take a core away lower the first, not the second (two threads
    sharing one core's FMA units, as SMT siblings do, lower both)."""
    cfn, _ = _fma_kernel()
    flops_per_iter = CHAINS * LANES * 2
    cfn(1000, 0.999999, 1e-6)
    t0 = time.perf_counter()
    cfn(100_000, 0.999999, 1e-6)
    per_iter = max(time.perf_counter() - t0, 1e-9) / 100_000
    iters = max(10_000, int(seconds / per_iter))
    flops = iters * flops_per_iter
    best = best_cpu = 0.0
    for _ in range(tries):
        barrier = threading.Barrier(threads + 1)
        cpu = [0.0] * threads

        def work(k, barrier=barrier, cpu=cpu):
            barrier.wait()
            c0 = time.thread_time()
            cfn(iters, 0.999999, 1e-6)
            cpu[k] = time.thread_time() - c0

        ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
        for t in ts:
            t.start()
        barrier.wait()
        t0 = time.perf_counter()
        for t in ts:
            t.join()
        dt = time.perf_counter() - t0
        best = max(best, threads * flops / dt / 1e9)
        best_cpu = max(best_cpu, sum(flops / max(c, 1e-9) for c in cpu) / 1e9)
    return {"gflops": best, "gflops_cpu": best_cpu, "threads": threads, "iters": iters}


# --- background load --------------------------------------------------------------------------


class CpuMeter:
    """CPU time used by *other* processes (in cores) between ``start`` and ``stop``: busy time of
    all CPUs from /proc/stat (steal included) minus this process's own CPU time."""

    def __init__(self):
        self.hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        self.wall = self.foreign = 0.0
        self._t = None

    def _sample(self):
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(v) - v[3] - v[4]) / self.hz
        t = os.times()
        return time.perf_counter(), busy, t.user + t.system + t.children_user + t.children_system

    def start(self):
        self._t = self._sample()

    def stop(self):
        end = self._sample()
        if self._t is None or end is None:
            return
        self.wall += end[0] - self._t[0]
        self.foreign += max(0.0, (end[1] - self._t[1]) - (end[2] - self._t[2]))
        self._t = None

    @property
    def cores(self) -> float | None:
        return self.foreign / self.wall if self.wall > 0 else None


def wait_idle(max_seconds: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_seconds``) until other processes use less than ``threshold`` cores
    over one second; returns the seconds waited."""
    start = time.perf_counter()
    while time.perf_counter() - start < max_seconds:
        m = CpuMeter()
        m.start()
        time.sleep(1.0)
        m.stop()
        if m.cores is None or m.cores < threshold:
            break
    return time.perf_counter() - start


# --- all of it --------------------------------------------------------------------------------


def measure(threads: int, working_set_bytes: int, quick: bool = False) -> dict:
    """Every limit, as a JSON-able dict. ``working_set_bytes``: bytes moved by one call of the
    memory-bound workloads (read + write); the copy at that size moves the same bytes."""
    secs = 0.05 if quick else 0.5
    large = (16 if quick else 512) * 2**20
    ws = max(working_set_bytes // 2, 4096)
    out = {"cpu": cpu_name(), "cores": usable_cores(), "threads": threads,
           "python": platform.python_version(), "numpy": np.__version__,
           "loadavg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}
    meter = CpuMeter()
    meter.start()
    time.sleep(0.1 if quick else 1.0)
    meter.stop()
    out["bg_cpu_at_start"] = meter.cores
    out["copy_large_bytes"] = large
    out["copy_working_set_bytes"] = ws
    out["copy_large_1t"] = copy_bandwidth(large, 1, secs)
    out["copy_large_nt"] = copy_bandwidth(large, threads, secs) if threads > 1 \
        else out["copy_large_1t"]
    out["copy_ws_1t"] = copy_bandwidth(ws, 1, secs)
    out["copy_ws_nt"] = copy_bandwidth(ws, threads, secs) if threads > 1 else out["copy_ws_1t"]
    try:
        out["fma_1t"] = fma_peak(1, 0.03 if quick else 0.3, 2 if quick else 3)
        out["fma_nt"] = fma_peak(threads, 0.03 if quick else 0.3, 2 if quick else 3) \
            if threads > 1 else out["fma_1t"]
    except Exception as e:  # noqa: BLE001 - llvmlite missing or broken: report it, go on
        out["fma_error"] = f"{type(e).__name__}: {e}"
    return out


def best_of(*measurements: dict) -> dict:
    """Several ``measure`` results merged into one: the fastest copy and the highest FMA rates
    of any of them (background load only ever lowers what is achieved, so the best measurement
    is the closest to the machine's limit)."""
    out = dict(measurements[-1])
    for key, value in out.items():
        if key.startswith("copy_") and isinstance(value, dict):
            out[key] = max((m[key] for m in measurements), key=lambda r: r["best"])
    for key in ("fma_1t", "fma_nt"):
        if all(key in m for m in measurements):
            out[key] = dict(out[key], **{k: max(m[key][k] for m in measurements)
                                         for k in ("gflops", "gflops_cpu")})
    out["bg_cpu_at_start"] = [m["bg_cpu_at_start"] for m in measurements]
    out["measurements"] = len(measurements)
    return out


def peak_gflops(limits: dict) -> float | None:
    """The FMA peak (GFLOP/s): the best of the 1-thread and N-thread runs, by wall time or by
    the threads' CPU time (None if it could not be measured)."""
    if "fma_1t" not in limits:
        return None
    return max(r[k] for r in (limits["fma_1t"], limits["fma_nt"])
               for k in ("gflops", "gflops_cpu"))


def copy_gbs(limits: dict) -> float:
    """The copy bandwidth at the workloads' working-set size (GB/s): the fastest copy on 1 or
    N threads (an achieved bandwidth, so a lower bound of the machine's)."""
    return max(limits["copy_ws_1t"]["best"], limits["copy_ws_nt"]["best"])


def format_limits(limits: dict) -> str:
    mib = 2**20
    lines = [(f"machine: {limits['cpu']}, {limits['cores']} usable cores, benchmarks on "
              f"{limits['threads']} thread(s); python {limits['python']}, "
              f"numpy {limits['numpy']}")]
    bg = limits.get("bg_cpu_at_start")
    bg = [b for b in (bg if isinstance(bg, list) else [bg]) if b is not None]
    if bg:
        note = "  (busy: limits may be low)" if min(bg) > 0.25 else ""
        when = " (before / after the workloads; the best of both is used)" if len(bg) > 1 else ""
        lines.append("other processes while measuring: "
                     + " / ".join(f"{b:.2f}" for b in bg) + f" cores busy{when}{note}")
    t = limits["threads"]
    ws_mib = limits["copy_working_set_bytes"] / mib
    for key, label in (("large", f"{limits['copy_large_bytes'] // mib} MiB"),
                       ("ws", f"{ws_mib:.3g} MiB (the workloads' size)")):
        one, many = limits[f"copy_{key}_1t"], limits[f"copy_{key}_nt"]
        lines.append(f"copy bandwidth, {label}, read+write: 1 thread {one['median']:.1f} GB/s "
                     f"(best {one['best']:.1f}); {t} threads {many['median']:.1f} GB/s "
                     f"(best {many['best']:.1f})")
    if "fma_1t" in limits:
        one, many = limits["fma_1t"], limits["fma_nt"]
        lines.append(f"FMA peak (LLVM JIT, {CHAINS} chains of fma.v{LANES}f32): 1 thread "
                     f"{one['gflops']:.1f} GFLOP/s; {t} threads {many['gflops']:.1f} GFLOP/s "
                     f"(per second of their CPU time: {one['gflops_cpu']:.1f}, "
                     f"{many['gflops_cpu']:.1f})")
    else:
        lines.append(f"FMA peak: not measured ({limits.get('fma_error')})")
    peak = peak_gflops(limits)
    lines.append(f"limits used for '% limit': copy {copy_gbs(limits):.1f} GB/s, FMA peak "
                 + (f"{peak:.1f} GFLOP/s" if peak else "unknown"))
    return "\n".join(lines)


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Measure copy bandwidth and FMA peak.")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--threads", type=int, default=usable_cores())
    ap.add_argument("--working-set-mib", type=float, default=32.0)
    args = ap.parse_args(argv)
    print(format_limits(measure(args.threads, int(args.working_set_mib * 2**20), args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
