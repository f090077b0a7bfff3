"""lamina's GPU benchmark: ``backend="triton"`` against PyTorch eager and ``torch.compile`` on
the same NVIDIA GPU, on the same inputs, in the same process and run.

    python benchmarks/gpu.py [--quick] [--only NAME...] [--json PATH] [--seconds S]

Without torch or without a CUDA device it prints one line saying so and exits 0.

Workloads (``--only`` names; ``--quick`` shrinks every size to a small one):

    gelu         gelu_tanh(x * a + b), x float32 (16384, 4096) = 67,108,864 elements, a and b
                 per-column vectors (4096,) (as in run.py). GB/s: read x, a, b, write y once.
    softmax      softmax over each row of a float32 (32768, 4096) matrix. GB/s: read x, write y.
    layernorm    (x - mean) / sqrt(var + 1e-5) * g + b over each row of (32768, 4096), g and b
                 (4096,); lamina's version as in run.py. GB/s: read x, g, b, write y.
    matmul_bf16  bfloat16 4096x4096 @ 4096x4096. TFLOP/s = 2*M*N*K / time.
    matmul_fp32  float32 4096^3 in IEEE float32: torch.backends.cuda.matmul.allow_tf32 = False
                 and lamina's ``backends.triton.codegen.ALLOW_TF32 = False`` (the defaults).
    matmul_tf32  the same with both set to True (TF32 tensor cores; TF32's accuracy check).
    mlp_step     one SGD step (lr 0.01) of a 784-512-512-10 ReLU MLP, mean cross-entropy, batch
                 4096: forward, backward, update in place (run.py's lamina step and torch step,
                 on the GPU). TFLOP/s counts the matmuls as run.py does.
    lstm_train   run.py's LSTM step (nn.LSTM, x[50, 32, 64], hidden 128, loss mean(h_T^2), SGD lr
                 0.1): lamina's lm.scan runs as a host loop launching each step's kernels;
                 torch's nn.LSTM runs cuDNN's. Device time leaves the launch gaps out: see the
                 wall ms column for the host's share.

Method: inputs are made once per workload (fixed seed); the peers' copies on the GPU (bfloat16
for matmul_bf16) are made before timing. Every implementation is first called once and checked
against a float64 numpy reference (run.py's ``reference`` and ``check``); one that disagrees is
marked MISMATCH and not timed, one that raises is marked ERROR, and the run goes on.

lamina's compiled functions take and return numpy arrays: each call of the triton backend uploads
its inputs and downloads its outputs. So that every implementation is measured alike, whatever
its inputs cost to bring over, the time compared is the *device time* of a call: the summed
durations of the GPU work it issued (kernels, memsets, device-to-device copies), read by torch's
profiler, which sees through CUPTI everything that runs on the GPU, lamina's driver-API launches
too; host<->device transfers are left out. It is taken in rounds (a profiled batch of calls per
implementation, interleaved across implementations); median and min are over the rounds. For
matmul_bf16, lamina takes float32 arrays and casts them to bfloat16 in the graph (numpy has no
bfloat16): only its matmul kernel is counted, as torch's inputs are bfloat16 already.

Besides, ``wall ms`` is what one call costs its caller: for lamina, a plain call with numpy arrays
in and out (transfers included); for a peer, calls on device-resident inputs between two
``torch.cuda.synchronize()``, per call.

The memory-bound rows are compared with the device's copy bandwidth, measured here: a 1 GiB
``y.copy_(x)`` with torch (wall time between synchronizations), GB/s counting bytes read +
written; ``% copy BW`` uses its best round.

Exit status: 1 when an implementation disagrees with the reference or lamina fails, else 0. The
targets printed under the table (see TARGETS) are goals, not failures.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import run  # benchmarks/ is not a package: run.py's workloads, checks and table helpers
from peers import Runner, TorchPeer

BACKEND = "triton"
DEVICE = "cuda"
WORKLOAD_NAMES = ("gelu", "softmax", "layernorm", "matmul_bf16", "matmul_fp32", "matmul_tf32",
                  "mlp_step", "lstm_train")
PEER_MODES = {"torch": None, "torch.compile": "default"}  # peers.TorchPeer's ``mode``
LAMINA = f"lamina[{BACKEND}]"
# (workload, what is compared, goal): lamina's % of copy bandwidth; its speed relative to the
# fastest peer (best peer time / lamina time); its time relative to one peer's
TARGETS = (("gelu", "copy", 0.85), ("softmax", "copy", 0.85), ("layernorm", "copy", 0.85),
           ("matmul_bf16", "speed", 0.75), ("mlp_step", "torch.compile", 1.0))


# --- sizes and workloads ------------------------------------------------------------------------


def sizes(quick: bool) -> dict:
    """Problem sizes: full (for an H100/H200) or ``--quick`` (a smoke run)."""
    if quick:
        return {"gelu": (256, 512), "rows": (512, 1024), "matmul": 512, "mlp_batch": 256,
                "copy_bytes": 64 * 2**20}
    return {"gelu": (16384, 4096), "rows": (32768, 4096), "matmul": 4096, "mlp_batch": 4096,
            "copy_bytes": 2**30}


def round_to_bf16(a: np.ndarray) -> np.ndarray:
    """float32 values that bfloat16 represents exactly (round to nearest even), so that the
    float64 reference of a bfloat16 product sees the inputs the GPU multiplies."""
    import torch

    return torch.from_numpy(a).to(torch.bfloat16).to(torch.float32).numpy()


def make_workload(name: str, quick: bool, seed: int = 0) -> run.Workload:
    """The workload ``name`` (run.py's ``Workload``) with its inputs and float64 reference."""
    s = sizes(quick)
    rng = np.random.default_rng(seed)
    f4 = 4
    if name == "gelu":
        r, c = s["gelu"]
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32),
                  "a": rng.uniform(0.5, 1.5, c).astype(np.float32),
                  "b": rng.uniform(-0.5, 0.5, c).astype(np.float32)}
        wl = run.Workload(name, "gelu", f"gelu_tanh(x*a+b) {r}x{c}", inputs, "GB/s",
                          (2 * r * c + 2 * c) * f4, "copy", 1e-5)
    elif name == "softmax":
        r, c = s["rows"]
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32)}
        wl = run.Workload(name, "softmax", f"softmax rows {r}x{c}", inputs, "GB/s",
                          2 * r * c * f4, "copy", 1e-5)
    elif name == "layernorm":
        r, c = s["rows"]
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32) * 2 + 0.5,
                  "g": rng.uniform(0.5, 1.5, c).astype(np.float32),
                  "b": rng.uniform(-0.5, 0.5, c).astype(np.float32), "eps": run.EPS}
        wl = run.Workload(name, "layernorm", f"layernorm rows {r}x{c}", inputs, "GB/s",
                          (2 * r * c + 2 * c) * f4, "copy", 1e-5)
    elif name in ("matmul_bf16", "matmul_fp32", "matmul_tf32"):
        n = s["matmul"]
        a = rng.standard_normal((n, n), dtype=np.float32)
        b = rng.standard_normal((n, n), dtype=np.float32)
        # tolerances: bf16 output rounding is up to 2^-8 relative; TF32 inputs have 10-bit
        # mantissas (about 3e-4 at K = 4096); fp32 about 4e-7
        title, tol = {"matmul_bf16": (f"matmul bf16 {n}^3", 1e-2),
                      "matmul_fp32": (f"matmul fp32 {n}^3, IEEE", 1e-5),
                      "matmul_tf32": (f"matmul fp32 {n}^3, TF32 allowed", 2e-3)}[name]
        if name == "matmul_bf16":
            a, b = round_to_bf16(a), round_to_bf16(b)
        wl = run.Workload(name, "matmul", title, {"a": a, "b": b}, "TFLOP/s", 2.0 * n**3,
                          "none", tol)
    elif name == "mlp_step":
        # run.py's parameters (784-512-512-10, or its quick dims), with a batch of our size
        inputs = run.mlp_inputs(quick, seed)
        batch, dims = s["mlp_batch"], [w.shape[0] for w in inputs["params"][0::2]]
        inputs["x"] = rng.standard_normal((batch, dims[0]), dtype=np.float32)
        inputs["y"] = rng.integers(0, inputs["params"][-1].shape[0], batch).astype(np.int64)
        layout = "-".join(map(str, [*dims, inputs["params"][-1].shape[0]]))
        wl = run.Workload(name, "mlp_step", f"mlp step b{batch} {layout}", inputs, "TFLOP/s",
                          run.mlp_flops(inputs), "none", 1e-3)
    elif name == "lstm_train":
        # run.py's (T=50, B=32, 64 -> 128): a host loop of 50 steps each way on lamina's side
        wl = run.make_workload(name, quick, seed, with_reference=False)
        wl.limit = "none"  # no copy-bandwidth share for a train step
    else:
        raise ValueError(f"unknown workload {name!r}")
    wl.reference = run.reference(wl)
    return wl


# --- implementations ----------------------------------------------------------------------------


def to_numpy(out) -> np.ndarray:
    """A torch result as a numpy array on the host (bfloat16 and float16 widened to float32)."""
    import torch

    t = out.detach()
    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.cpu().numpy()


class TorchGpuPeer(TorchPeer):
    """peers.TorchPeer (eager, or ``torch.compile`` with ``mode``) with its tensors on the GPU:
    the same workload functions; float inputs cast to ``dtype`` when one is given (bfloat16 for
    matmul_bf16)."""

    device = DEVICE

    def __init__(self, mode: str | None, dtype=None):
        super().__init__(threads=os.cpu_count() or 1, mode=mode)
        self.dtype = dtype

    @staticmethod
    def _numpy(t) -> np.ndarray:
        return to_numpy(t)

    def _t(self, a):
        t = super()._t(a).to(DEVICE)
        return t.to(self.dtype) if self.dtype is not None and t.is_floating_point() else t

    def _simple(self, fn, *arrays):
        runner = super()._simple(fn, *arrays)
        return Runner(runner.call, lambda out: [to_numpy(out)])


def torch_runner(wl: run.Workload, mode: str | None) -> Runner:
    """PyTorch eager (``mode`` None) or ``torch.compile(mode=...)`` on the GPU for ``wl``."""
    import torch

    dtype = torch.bfloat16 if wl.name == "matmul_bf16" else None
    return TorchGpuPeer(mode, dtype).build(wl.peer_method, wl.inputs)


def lamina_runner(wl: run.Workload) -> Runner:
    """lamina (numpy arrays in and out): run.py's ``lamina_runner``; matmul_bf16 takes float32
    arrays and casts them to bfloat16 in the graph (numpy has no bfloat16)."""
    if wl.name != "matmul_bf16":
        return run.lamina_runner(wl, BACKEND)
    import lamina as lm

    def matmul_bf16(a, b):
        return (a.astype(lm.bfloat16) @ b.astype(lm.bfloat16)).astype(lm.float32)

    f = lm.compile(matmul_bf16, backend=BACKEND, name=wl.name)
    a, b = wl.inputs["a"], wl.inputs["b"]
    return Runner(lambda: f(a, b), lambda out: [np.asarray(out)])


def set_tf32(on: bool) -> None:
    """TF32 tensor cores for float32 matmuls, or IEEE float32: torch's flag and lamina's (read
    by the triton code generator when it renders a kernel, so it applies to what compiles next)."""
    import torch

    from lamina.backends.triton import codegen

    torch.backends.cuda.matmul.allow_tf32 = on
    codegen.ALLOW_TF32 = on


# --- timing -------------------------------------------------------------------------------------


def timing_plan(quick: bool, seconds: float | None) -> dict:
    """Warm-up calls, seconds per implementation and workload (a budget that sets how many calls
    a round profiles), rounds, calls per profiled round at most, calls per synchronized batch at
    most, plain lamina calls timed for ``wall ms``."""
    if quick:
        return {"warmup": 1, "seconds": seconds or 0.05, "rounds": 2, "profile_calls": 2,
                "max_calls": 50, "wall_calls": 3}
    return {"warmup": 3, "seconds": seconds or 1.0, "rounds": 5, "profile_calls": 10,
            "max_calls": 2000, "wall_calls": 10}


def batch_calls(plan: dict, seconds_per_call: float, most: int) -> int:
    """Calls per round: the round's share of the time budget, between 1 and ``most``."""
    share = plan["seconds"] / plan["rounds"]
    return int(min(most, max(1, share / max(seconds_per_call, 1e-7))))


def synced_round(call: Callable, calls: int) -> Callable[[], float]:
    """A wall-clock round: ``calls`` calls between two ``torch.cuda.synchronize()``; returns
    the seconds per call."""
    import torch

    def one() -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
        return (time.perf_counter() - t0) / calls
    return one


TRANSFERS = ("Memcpy HtoD", "Memcpy DtoH")  # how the profiler names host<->device copies


def device_times(call: Callable, calls: int) -> dict[str, float]:
    """Seconds per call of each GPU activity (by name: kernels, memsets, device copies) that
    ``calls`` calls issued, host<->device transfers left out; read by torch's profiler, whose
    CUPTI tracing sees every kernel of the process, whoever launched it."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            call()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA and not e.name.startswith(TRANSFERS):
            out[e.name] = out.get(e.name, 0.0) + e.time_range.elapsed_us() / 1e6 / calls
    if not out:
        raise RuntimeError("the profiler saw no GPU work")
    return out


def device_round(row: dict, call: Callable, calls: int, only: str = "") -> Callable[[], float]:
    """A timing round: the device time per call of ``calls`` calls, counting the activities
    whose names contain ``only``; the row keeps the last round's breakdown (``device_s``)."""
    def one() -> float:
        times = device_times(call, calls)
        row["device_s"] = times
        return sum(t for name, t in times.items() if only in name)
    return one


def wall_times(call: Callable, n: int) -> list[float]:
    """Seconds of ``n`` single calls that return host data (numpy in, numpy out)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def copy_bandwidth(nbytes: int, plan: dict) -> dict:
    """GB/s (read + write) of a device-to-device ``y.copy_(x)`` of ``nbytes`` with torch:
    ``median`` and ``best`` over the rounds."""
    import torch

    x = torch.ones(nbytes // 4, dtype=torch.float32, device=DEVICE)
    y = torch.empty_like(x)
    y.copy_(x)
    calls = batch_calls(plan, synced_round(lambda: y.copy_(x), 1)(), plan["max_calls"])
    ts = [synced_round(lambda: y.copy_(x), calls)() for _ in range(plan["rounds"])]
    moved = 2 * x.numel() * 4
    return {"bytes": moved // 2, "median": moved / float(np.median(ts)) / 1e9,
            "best": moved / min(ts) / 1e9}


# --- one workload -------------------------------------------------------------------------------


def _error(row: dict, e: Exception) -> None:
    row["status"], row["note"] = "error", f"{type(e).__name__}: {e}".splitlines()[0]


def first_call(row: dict, wl: run.Workload, build: Callable[[], Runner]) -> Runner | None:
    """Build, call once (``first_call_s``, compilation included) and check against the
    reference (``err``); the runner if it agrees, else None with the row marked."""
    try:
        runner = build()
        t0 = time.perf_counter()
        out = runner.call()
        got = runner.fetch(out)
        row["first_call_s"] = time.perf_counter() - t0
        row["err"] = run.check(wl, got)
    except Exception as e:  # noqa: BLE001 - a failing implementation is reported
        _error(row, e)
        return None
    if not row["err"] <= wl.tol:
        row["status"] = "mismatch"
        row["note"] = f"error {row['err']:.2e} > tolerance {wl.tol:.0e}; not timed"
        return None
    return runner


def wall_per_call(row: dict, runner: Runner, plan: dict) -> float:
    """``wall ms``: lamina's plain call (numpy in and out, transfers included); a peer's calls
    between two synchronizations (median of 3 batches)."""
    if row["kind"] == "lamina":
        return float(np.median(wall_times(runner.call, plan["wall_calls"])))
    calls = batch_calls(plan, synced_round(runner.call, 1)(), plan["max_calls"])
    return float(np.median([synced_round(runner.call, calls)() for _ in range(3)]))


def run_workload(wl: run.Workload, plan: dict, log) -> list[dict]:
    """Check every implementation, then time the ones that passed in interleaved rounds."""
    rows, timed = [], []
    builders = {LAMINA: lambda: lamina_runner(wl)}
    for impl, mode in PEER_MODES.items():
        builders[impl] = lambda mode=mode: torch_runner(wl, mode)
    for impl, build in builders.items():
        row = {"workload": wl.name, "title": wl.title, "impl": impl,
               "kind": "lamina" if impl == LAMINA else "peer", "unit": wl.unit,
               "amount": wl.amount, "tol": wl.tol, "limit": wl.limit, "status": "ok", "note": ""}
        rows.append(row)
        runner = first_call(row, wl, build)
        if runner is None:
            log(f"  {impl}: {row['status'].upper()} {row['note']}")
            continue
        try:
            for _ in range(plan["warmup"]):
                runner.call()
            row["wall_s"] = wall_per_call(row, runner, plan)
        except Exception as e:  # noqa: BLE001
            _error(row, e)
            log(f"  {impl}: ERROR in warm-up: {row['note']}")
            continue
        only = ""
        if wl.name == "matmul_bf16" and row["kind"] == "lamina":
            only, row["note"] = "matmul", "matmul kernel only (f32->bf16 input casts not counted)"
        calls = batch_calls(plan, row["wall_s"], plan["profile_calls"])
        timed.append((row, device_round(row, runner.call, calls, only)))

    gc.collect()
    gc.disable()
    try:
        for _ in range(plan["rounds"]):
            for row, one_round in timed:
                if row["status"] != "ok":
                    continue
                try:
                    row.setdefault("round_s", []).append(one_round())
                except Exception as e:  # noqa: BLE001
                    _error(row, e)
    finally:
        gc.enable()
    scale = 1e12 if wl.unit == "TFLOP/s" else 1e9
    for row, _ in timed:
        if row["status"] == "ok":
            ts = np.array(row["round_s"])
            row.update(median_s=float(np.median(ts)), min_s=float(ts.min()), reps=len(ts))
            row["throughput"] = wl.amount / row["median_s"] / scale
    return rows


def add_ratios(rows: list[dict], copy_gbs: float) -> None:
    """run.py's ratios to the fastest peer and fractions of the copy bandwidth (run.add_ratios
    reads the copy bandwidth from a machine.measure dict: this one holds only that)."""
    limits = {"copy_ws_1t": {"best": copy_gbs}, "copy_ws_nt": {"best": copy_gbs}}
    run.add_ratios(rows, limits)


def _target_value(group: dict, what: str) -> tuple[float | None, str, bool]:
    """One target's value for lamina's row in ``group`` (rows of a workload by implementation):
    (value or None, what it is, whether higher is better)."""
    lam = group[LAMINA]
    if what == "copy":
        return lam.get("frac_limit"), "share of copy bandwidth", True
    if what == "speed":
        ratio = lam.get("vs_best_peer")
        return (1.0 / ratio if ratio else None), "speed / fastest peer's", True
    peer = group.get(what, {})
    both = "median_s" in lam and "median_s" in peer
    return (lam["median_s"] / peer["median_s"] if both else None), f"time / {what}'s", False


def targets(rows: list[dict]) -> list[dict]:
    """lamina's standing against TARGETS, for the workloads that ran."""
    out = []
    for name, what, goal in TARGETS:
        group = {r["impl"]: r for r in rows if r["workload"] == name}
        if LAMINA not in group:
            continue
        value, desc, higher = _target_value(group, what)
        met = None if value is None else (value >= goal if higher else value <= goal)

        def show(v, what=what):
            return f"{v:.1%}" if what == "copy" else f"{v:.2f}x"

        text = (f"{desc}: {'not measured' if value is None else show(value)} "
                f"(goal {'>=' if higher else '<='} {show(goal)})")
        out.append({"workload": name, "value": value, "goal": goal, "met": met, "text": text})
    return out


# --- output -------------------------------------------------------------------------------------


def format_table(rows: list[dict]) -> str:
    """One line per workload and implementation (run.py's layout, GPU columns)."""
    fmt = run._fmt
    head = ["workload", "implementation", "median ms", "min ms", "throughput", "% copy BW",
            "t / best peer", "(by min)", "max err", "1st call s", "wall ms", "note"]
    body, last = [], None
    for r in rows:
        title = r["title"] if r["title"] != last else ""
        last = r["title"]
        frac, vs, vs_min = r.get("frac_limit"), r.get("vs_best_peer"), r.get("vs_best_peer_min")
        status = r["status"].upper() + (": " if r["note"] else "") if r["status"] != "ok" else ""
        body.append([
            title, r["impl"],
            fmt(r.get("median_s") and r["median_s"] * 1e3, ".3f"),
            fmt(r.get("min_s") and r["min_s"] * 1e3, ".3f"),
            f"{r['throughput']:.1f} {r['unit']}" if "throughput" in r else "-",
            fmt(frac and frac * 100, ".1f"),
            fmt(vs, ".2f") + ("x" if vs else ""),
            fmt(vs_min, ".2f") + ("x" if vs_min else ""),
            fmt(r.get("err"), ".1e"),
            fmt(r.get("first_call_s"), ".3f"),
            fmt(r.get("wall_s") and r["wall_s"] * 1e3, ".3f"),
            status + r["note"],
        ])
    return run._align(head, body, right=set(range(2, 11)))


def format_targets(results: list[dict]) -> str:
    lines = [f"targets for {LAMINA}:"]
    for t in results:
        mark = {True: "met", False: "MISSED", None: "-"}[t["met"]]
        lines.append(f"  {t['workload']:<12} {mark:<7} {t['text']}")
    return "\n".join(lines)


LEGEND = f"""\
median/min ms: device time per call: the summed durations of the GPU work a call issued (torch's
  profiler), host<->device transfers left out; median and fastest of the timing rounds.
throughput: GB/s = bytes an ideal fused kernel reads + writes, per median time; TFLOP/s = matmul
  flops per median time. % copy BW: of the device's measured copy bandwidth (above).
t / best peer: median time / median time of the fastest peer (> 1: slower); (by min): the same
  with the fastest rounds.
max err: max |result - float64 numpy reference| / max |reference| (MLP: parameters relative to
  the size of the reference update).
1st call s: the first call (compilation included) and the copy of its result to the host.
wall ms: one call as its caller sees it (median): {LAMINA} with numpy arrays in and out,
  host<->device transfers included; a peer on inputs already on the GPU, per call over a batch
  between two device synchronizations."""


def device_info() -> dict:
    import torch

    import lamina

    props = torch.cuda.get_device_properties(0)
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "not installed"
    return {"gpu": props.name, "capability": f"sm_{props.major}{props.minor}",
            "sms": props.multi_processor_count, "memory_gib": props.total_memory / 2**30,
            "torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "lamina": lamina.__version__, "python": platform.python_version(),
            "numpy": np.__version__}


def format_header(info: dict, copy: dict) -> str:
    gpu = (f"GPU: {info['gpu']} ({info['capability']}, {info['sms']} SMs, "
           f"{info['memory_gib']:.0f} GiB); torch {info['torch']} (CUDA {info['cuda']}), "
           f"triton {info['triton']}, lamina {info['lamina']}, numpy {info['numpy']}")
    bw = (f"copy bandwidth (torch y.copy_(x), {copy['bytes'] / 2**30:.3g} GiB, read+write): "
          f"median {copy['median']:.0f} GB/s, best {copy['best']:.0f} GB/s (used for % copy BW)")
    return gpu + "\n" + bw


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="small sizes, few repetitions")
    ap.add_argument("--only", nargs="+", choices=WORKLOAD_NAMES, metavar="NAME",
                    help=f"workloads to run: {', '.join(WORKLOAD_NAMES)}")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    ap.add_argument("--seconds", type=float, help="timed seconds per implementation and "
                    "workload (default 1, --quick 0.05)")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        import torch
    except ImportError:
        print("gpu.py: PyTorch is not installed; the GPU benchmark needs torch with CUDA "
              "(nothing was run)")
        return 0
    if not torch.cuda.is_available():
        print("gpu.py: no CUDA device (torch.cuda.is_available() is False); the GPU benchmark "
              "needs an NVIDIA GPU (nothing was run)")
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    plan = timing_plan(args.quick, args.seconds)
    info = device_info()
    log("measuring the device's copy bandwidth ...")
    copy = copy_bandwidth(sizes(args.quick)["copy_bytes"], plan)
    rows = []
    for name in args.only or WORKLOAD_NAMES:
        log(f"{name}: making inputs and the float64 reference ...")
        wl = make_workload(name, args.quick)
        log(f"{wl.title}: checking and timing {LAMINA}, {', '.join(PEER_MODES)} ...")
        set_tf32(name == "matmul_tf32")
        rows.extend(run_workload(wl, plan, log))
        del wl
        gc.collect()
        torch.cuda.empty_cache()
    set_tf32(False)
    add_ratios(rows, copy["best"])
    results = targets(rows)

    print(format_header(info, copy))
    print()
    print(format_table(rows))
    print()
    print(LEGEND)
    print()
    print(format_targets(results))
    failed = [r for r in rows if r["status"] == "mismatch"
              or (r["kind"] == "lamina" and r["status"] == "error")]
    if args.json:
        report = {"device": info, "copy_bandwidth": copy, "quick": args.quick, "plan": plan,
                  "rows": rows, "targets": results, "ok": not failed}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
        log(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
