"""lamina's benchmark suite: every available lamina backend against numpy, PyTorch eager,
torch.compile and JAX jit (CPU), on the same inputs, in the same process and run.

    python benchmarks/run.py [--quick] [--only NAME...] [--json out.json]
                             [--peers NAME...] [--backends NAME...] [--threads N]
                             [--seconds S] [--wait-idle S]

Workloads (``--only`` names; ``--quick`` shrinks every size to a tiny one):

    gelu        gelu_tanh(x * a + b), x float32 (4096, 1024) = 4,194,304 elements; a and b are
                per-column vectors (1024,) broadcast over the rows. GB/s: an ideal fused kernel
                reads x, a, b once and writes y once.
    softmax     softmax over each row of a float32 (4096, 1024) matrix. GB/s: read x, write y.
    layernorm   (x - mean) / sqrt(var + 1e-5) * g + b over each row of (4096, 1024), g and b
                (1024,) vectors; lamina's version uses mean, var as mean(x*x) - mean^2, rsqrt.
                GB/s: read x, g, b, write y.
    matmul512   float32 512x512 @ 512x512. GFLOP/s = 2*M*N*K / time.
    matmul1024  the same at 1024.
    mlp_step    one training step of a 784-512-512-10 ReLU MLP on a batch of 256, cross-entropy
                with integer labels, plain SGD lr=0.01: forward, backward and the in-place update
                (JAX: a functional update with donate_argnums). GFLOP/s counts the matmuls
                (forward, weight gradients, input gradients of the 2nd and 3rd layer).
    cnn_train   one SGD step (lr 0.1) of a CNN on x [64, 1, 28, 28] (NCHW): conv3x3(1->16,
                pad 1) + ReLU + maxpool 2, conv3x3(16->32, pad 1) + ReLU + maxpool 2, flatten
                (1568), linear -> 10, mean cross-entropy. GFLOP/s counts the convs and the
                linear layer (forward, weight gradients, input gradients but conv1's).
    transformer_train
                one SGD step (lr 0.1) of a pre-LN Transformer block on x [8, 128, 256]:
                h = x + Attn(LN1(x)), out = h + W2 gelu_tanh(W1 LN2(h) + b1) + b2 (hidden 1024),
                causal multi-head attention with 4 heads (head dim 64) and a fused qkv
                projection (PyTorch's in_proj_weight [768, 256]), loss = mean((out - target)^2).
                GFLOP/s: its matmuls (the T x T ones dense), forward + backward = 3x forward.
    attention_long
                causal scaled dot-product attention forward and backward (the gradients of
                sum(out * dout) for q, k, v), q, k, v, dout [4, 8, 2048, 64]; against torch's
                scaled_dot_product_attention. Also peak memory (below). GFLOP/s counts the
                causal half of its six T x T products (2 forward, 4 backward).
    lstm_train  one SGD step (lr 0.1) of a single-layer LSTM (PyTorch's nn.LSTM: gates i, f, g, o),
                x [T=50, B=32, 64] time-major, hidden 128, h0 = c0 = 0, loss = mean(h_T^2),
                backpropagation through time. lamina: nn.LSTM (one lm.scan); torch: nn.LSTM;
                JAX: the cell under lax.scan. GFLOP/s: the input and recurrent products,
                forward, weight gradients and the hidden state's gradient.
    compile     compile time of lamina's train steps (mlp_step, cnn_train, transformer_train,
                lstm_train, and lstm_train_t500: the LSTM step at T=500;
                and of torch.compile and jax.jit, for scale): a fresh process runs the step;
                compile time = first call minus a plain (steady-state) call, the fastest of the
                3rd to 10th calls; the fastest of 3 such processes (--compile-repeats). Cold:
                a new empty cache directory (LAMINA_CACHE_DIR,
                TORCHINDUCTOR_CACHE_DIR, JAX_COMPILATION_CACHE_DIR); warm: a second fresh process
                with the same directory.

The network steps (nets.py) are checked against hand-written float64 numpy forward and backward
passes and SGD updates: the loss and every updated parameter. All implementations start from
the same seeded numpy parameters, in PyTorch's state_dict names (lamina: load_state_dict; torch:
its modules' load_state_dict; jax: a dict of arrays). lamina's versions use its layers
(nn.Conv2d, nn.MaxPool2d, nn.LayerNorm, nn.MultiheadAttention, nn.functional.
scaled_dot_product_attention; lamina_nets.py).

Peak memory (attention_long): each implementation runs alone in a fresh process, which imports
its library and allocates the inputs; its resident set size (VmRSS) then is the baseline. After
two calls (compilation, warm-up) the high-water mark is reset (/proc/self/clear_refs) and one
more call is made: peak = VmHWM - baseline, held = VmRSS before that call - baseline (kept
between calls), call = peak - held. The same malloc settings for everyone (memory.py).

Method: inputs are allocated once, outside the timed region; every implementation is first
checked against a float64 numpy reference (a failed check is reported and not timed; a train
step's parameters are compared relative to the size of their update, beyond float32's rounding
of the updated value); then each
runs warm-up calls and ``reps`` timed calls (``time.perf_counter`` around one synchronized call),
interleaved in rounds across implementations so that background load hits all of them alike.
Median and min are reported; throughput uses the median, ratios both. Every library runs on the
same number of threads (``--threads``, default: the usable cores). ``t / best peer`` is
``time / time of the fastest peer`` (> 1: slower than the best peer). ``bg cpu`` is the CPU time
other processes used while that implementation was timed, in cores: this machine may be shared,
and numbers taken with a busy neighbour are noisy (``--wait-idle S`` waits up to S seconds for a
quiet machine before each workload).

Exit status: 0 when every implementation that ran agrees with the reference and no lamina
backend failed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import lamina_nets
import machine  # benchmarks/ is not a package: its modules sit next to this one
import memory
import nets
import peers
from peers import Runner
from tables import LEGEND, _align, _fmt, format_compile, format_memory, format_table  # noqa: F401

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "LAMINA_NUM_THREADS")
WORKLOAD_NAMES = ("gelu", "softmax", "layernorm", "matmul512", "matmul1024", "mlp_step",
                  "cnn_train", "transformer_train", "attention_long", "lstm_train", "compile")
# the compile rows (lstm_train_t500: the LSTM step at T=500, whose compile time must not grow)
TRAIN_STEPS = ("mlp_step", "cnn_train", "transformer_train", "lstm_train", "lstm_train_t500")
# Peak memory measured in fresh processes; timed one implementation at a time (each built,
# checked, timed and dropped before the next), not interleaved: a non-fused full-size attention
# holds GiBs, and all of them alive at once would not fit a small machine.
MEMORY_WORKLOADS = ("attention_long",)
COMPILING_PEERS = ("torch.compile", "torch.compile[max-autotune-no-cudagraphs]", "jax.jit")
LR = 0.01
EPS = 1e-5


# --- sizes and inputs ---------------------------------------------------------------------------


def sizes(quick: bool) -> dict:
    if quick:
        return {"rows": 64, "cols": 256, "matmul512": 48, "matmul1024": 96,
                "mlp": (16, (64, 32, 32, 10))}
    return {"rows": 4096, "cols": 1024, "matmul512": 512, "matmul1024": 1024,
            "mlp": (256, (784, 512, 512, 10))}


def mlp_inputs(quick: bool, seed: int = 0) -> dict:
    """The MLP step's batch, labels and initial parameters (PyTorch-style uniform init)."""
    rng = np.random.default_rng(seed)
    batch, dims = sizes(quick)["mlp"]
    params = []
    for a, b in itertools.pairwise(dims):
        bound = np.float32(1.0 / math.sqrt(a))
        params.append(rng.uniform(-bound, bound, (a, b)).astype(np.float32))
        params.append(rng.uniform(-bound, bound, (b,)).astype(np.float32))
    x = rng.standard_normal((batch, dims[0]), dtype=np.float32)
    y = rng.integers(0, dims[-1], batch).astype(np.int64)
    return {"x": x, "y": y, "params": params, "lr": LR}


def mlp_flops(inputs: dict) -> float:
    batch = inputs["x"].shape[0]
    ws = inputs["params"][0::2]
    fwd = sum(2 * batch * w.shape[0] * w.shape[1] for w in ws)
    dinput = sum(2 * batch * w.shape[0] * w.shape[1] for w in ws[1:])
    return 2 * fwd + dinput  # forward + weight gradients + input gradients (not of layer 1)


@dataclass
class Workload:
    name: str
    peer_method: str         # the peers.py method (and lamina builder) that runs it
    title: str
    inputs: dict
    unit: str                # "GB/s" or "GFLOP/s"
    amount: float            # bytes moved or flops per call
    limit: str               # "copy" or "fma"
    tol: float               # largest normalized error accepted (see check())
    reference: list = field(default_factory=list)
    initial: list | None = None  # a train step's initial parameters (check() scales by update)


def make_workload(name: str, quick: bool, seed: int = 0, with_reference: bool = True
                  ) -> Workload:
    """The workload ``name`` with its inputs (float32, fixed seed) and float64 reference."""
    s = sizes(quick)
    rng = np.random.default_rng(seed)
    r, c = s["rows"], s["cols"]
    f4 = 4
    if name == "gelu":
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32),
                  "a": rng.uniform(0.5, 1.5, c).astype(np.float32),
                  "b": rng.uniform(-0.5, 0.5, c).astype(np.float32)}
        wl = Workload(name, "gelu", f"gelu_tanh(x*a+b) {r}x{c}", inputs, "GB/s",
                      (2 * r * c + 2 * c) * f4, "copy", 1e-5)
    elif name == "softmax":
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32)}
        wl = Workload(name, "softmax", f"softmax rows {r}x{c}", inputs, "GB/s", 2 * r * c * f4,
                      "copy", 1e-5)
    elif name == "layernorm":
        inputs = {"x": rng.standard_normal((r, c), dtype=np.float32) * 2 + 0.5,
                  "g": rng.uniform(0.5, 1.5, c).astype(np.float32),
                  "b": rng.uniform(-0.5, 0.5, c).astype(np.float32), "eps": EPS}
        wl = Workload(name, "layernorm", f"layernorm rows {r}x{c}", inputs, "GB/s",
                      (2 * r * c + 2 * c) * f4, "copy", 1e-5)
    elif name in ("matmul512", "matmul1024"):
        n = s[name]
        inputs = {"a": rng.standard_normal((n, n), dtype=np.float32),
                  "b": rng.standard_normal((n, n), dtype=np.float32)}
        wl = Workload(name, "matmul", f"matmul {n}^3", inputs, "GFLOP/s", 2.0 * n ** 3, "fma",
                      1e-5)
    elif name == "mlp_step":
        inputs = mlp_inputs(quick, seed)
        batch, dims = s["mlp"]
        wl = Workload(name, "mlp_step", f"mlp step b{batch} {'-'.join(map(str, dims))}", inputs,
                      "GFLOP/s", mlp_flops(inputs), "fma", 1e-3)
        wl.initial = inputs["params"]
    elif name in ("cnn_train", "transformer_train", "attention_long", "lstm_train",
                  "lstm_train_t500"):
        wl = net_workload(name, quick, seed)
    else:
        raise ValueError(f"unknown workload {name!r}")
    if with_reference:
        wl.reference = reference(wl)
    return wl


def net_workload(name: str, quick: bool, seed: int = 0) -> Workload:
    """The network workloads of ``nets.py``. GFLOP/s counts their matmul and conv flops:
    forward, weight gradients and input gradients (not conv1's: its input is the data);
    attention counts the causal half of its T x T products (2 forward, 4 backward)."""
    if name == "cnn_train":
        inputs = nets.cnn_inputs(quick, seed)
        s = nets.cnn_sizes(quick)
        n, hw, c1, c2 = s["n"], s["hw"], s["c1"], s["c2"]
        flat = c2 * (hw // 4) ** 2
        conv1, conv2 = 2 * n * hw * hw * c1 * 9, 2 * n * (hw // 2) ** 2 * c2 * c1 * 9
        fc = 2 * n * flat * s["classes"]
        wl = Workload(name, "cnn_train", f"cnn step b{n} {hw}x{hw} conv{c1}-conv{c2}-fc",
                      inputs, "GFLOP/s", 2 * conv1 + 3 * (conv2 + fc), "fma", 1e-3)
        wl.initial = list(inputs["params"].values())
    elif name == "transformer_train":
        inputs = nets.transformer_inputs(quick, seed)
        s = nets.transformer_sizes(quick)
        b, t, e, hid = s["b"], s["t"], s["e"], s["hidden"]
        fwd = 2 * b * t * e * (3 * e + e + 2 * hid) + 2 * 2 * b * t * t * e
        wl = Workload(name, "transformer_train",
                      f"pre-LN block step x[{b},{t},{e}] heads {s['heads']} mlp {hid}", inputs,
                      "GFLOP/s", 3 * fwd, "fma", 1e-3)
        wl.initial = list(inputs["params"].values())
    elif name.startswith("lstm_train"):
        steps = 500 if name == "lstm_train_t500" else None
        inputs = nets.lstm_inputs(quick, seed, steps)
        s = nets.lstm_sizes(quick, steps)
        t, b, i, h = s["t"], s["b"], s["i"], s["h"]
        fwd = 2 * t * b * 4 * h * (i + h)
        wl = Workload(name, "lstm_train", f"lstm step T{t} B{b} in {i} hidden {h}", inputs,
                      "GFLOP/s", 2 * fwd + 2 * t * b * 4 * h * h, "fma", 1e-3)
        wl.initial = list(inputs["params"].values())
    else:
        inputs = nets.attention_inputs(quick, seed)
        b, h, t, d = nets.attention_sizes(quick)
        wl = Workload(name, "attention", f"causal attention fwd+bwd B{b} H{h} T{t} D{d}",
                      inputs, "GFLOP/s", 6.0 * b * h * t * t * d, "fma", 1e-4)
    return wl


def reference(wl: Workload) -> list[np.ndarray]:
    """The float64 result of the numpy versions (for the MLP: loss and updated parameters)."""
    f8 = {k: (v.astype(np.float64) if isinstance(v, np.ndarray) and v.dtype == np.float32
              else v) for k, v in wl.inputs.items()}
    if wl.peer_method == "mlp_step":
        params = [p.astype(np.float64) for p in wl.inputs["params"]]
        loss = peers.np_mlp_step(params, f8["x"], wl.inputs["y"], LR)
        return [np.asarray(loss), *params]
    if wl.peer_method in ("cnn_train", "transformer_train", "lstm_train"):
        f8["params"] = {k: v.astype(np.float64) for k, v in wl.inputs["params"].items()}
        step = {"cnn_train": nets.cnn_step, "transformer_train": nets.transformer_step,
                "lstm_train": nets.lstm_step}[wl.peer_method]
        loss = step(**f8)
        return [np.asarray(loss), *f8["params"].values()]
    if wl.peer_method == "attention":
        return nets.attention_fwd_bwd(f8["q"], f8["k"], f8["v"], f8["dout"])
    fn = {"gelu": peers.np_gelu, "softmax": peers.np_softmax, "layernorm": peers.np_layernorm,
          "matmul": lambda a, b: a @ b}[wl.peer_method]
    return [fn(**f8)]


def check(wl: Workload, got: list[np.ndarray]) -> float:
    """Normalized error against the reference: max |got - ref| / max |ref| per array; for a
    train step, the parameters' error is measured relative to the size of the reference update
    (``max |p - p_ref| / max |p_ref - p_initial|``), the loss relative to the loss."""
    ref = wl.reference
    if len(got) != len(ref):
        return math.inf
    initial = wl.initial
    if initial is None and wl.peer_method == "mlp_step":  # a Workload built elsewhere (gpu.py)
        initial = wl.inputs["params"]
    errs = []
    for i, (g, r) in enumerate(zip(got, ref)):
        g = np.asarray(g, np.float64)
        if g.shape != r.shape:
            return math.inf
        diff = np.abs(g - r)
        if initial is not None and i > 0:
            scale = np.abs(r - initial[i - 1]).max()
            # an updated parameter stored in float32 is off by up to half a float32 ulp even
            # when its update is exact: only the error beyond that counts (the transformer's
            # LayerNorm weights, ~1.3, get updates of ~3e-5, ~500 of their ulps)
            diff = np.maximum(diff - _half_ulp(r, initial[i - 1].dtype), 0.0)
        else:
            scale = np.abs(r).max()
        errs.append(float(diff.max() / max(scale, 1e-30)))
    return max(errs)


def _half_ulp(r: np.ndarray, dtype) -> np.ndarray:
    """Half the spacing of ``dtype`` at each value of ``r`` (its rounding error bound)."""
    return np.spacing(np.abs(r).astype(dtype)).astype(np.float64) / 2


# --- lamina -------------------------------------------------------------------------------------


def lamina_runner(wl: Workload, backend: str) -> Runner:
    """The workload written with lamina's public API, compiled for ``backend``."""
    import lamina as lm
    from lamina import nn, optim

    inp = wl.inputs
    if wl.peer_method in lamina_nets.BUILDERS:
        return lamina_nets.BUILDERS[wl.peer_method](inp, backend)
    if wl.peer_method == "mlp_step":
        class MLP(nn.Module):
            def __init__(self, dims):
                self.layers = [nn.Linear(a, b) for a, b in itertools.pairwise(dims)]

            def __call__(self, x):
                for layer in self.layers[:-1]:
                    x = lm.relu(layer(x))
                return self.layers[-1](x)

        dims = [inp["params"][0].shape[0]] + [w.shape[1] for w in inp["params"][0::2]]
        model = MLP(dims)
        model.load_state_dict(dict(zip((k for k, _ in model.named_parameters()),
                                       inp["params"])))
        opt = optim.SGD(model.parameters(), lr=inp["lr"])

        @lm.compile(backend=backend)
        def train_step(x, y):
            loss = nn.functional.cross_entropy(model(x), y)
            opt.minimize(loss)
            return loss

        x, y = inp["x"], inp["y"]
        return Runner(lambda: train_step(x, y),
                      lambda loss: [np.asarray(loss), *model.state_dict().values()])

    if wl.peer_method == "gelu":
        def fn(x, a, b):
            return lm.gelu(x * a + b)
        args = (inp["x"], inp["a"], inp["b"])
    elif wl.peer_method == "softmax":
        def fn(x):
            return lm.softmax(x, axis=-1)
        args = (inp["x"],)
    elif wl.peer_method == "layernorm":
        eps = inp["eps"]

        def fn(x, g, b):
            mu = x.mean(axis=-1, keepdims=True)
            var = (x * x).mean(axis=-1, keepdims=True) - mu * mu
            return (x - mu) * lm.rsqrt(var + eps) * g + b
        args = (inp["x"], inp["g"], inp["b"])
    elif wl.peer_method == "matmul":
        def fn(a, b):
            return a @ b
        args = (inp["a"], inp["b"])
    else:
        raise ValueError(wl.peer_method)
    f = lm.compile(fn, backend=backend, name=wl.name)
    return Runner(lambda: f(*args), lambda out: [np.asarray(out)])


def lamina_backends() -> list[str]:
    from lamina import backends

    return list(backends.available())


def too_big(impl_name: str, wl_name: str, quick: bool) -> str:
    """Why a lamina backend is left out of a full-size memory workload by default ('' if it is
    not): without a GPU, Triton's interpreter takes hours at full size (every workload); on the
    memory workloads the numpy reference backend materializes every [4, 8, 2048, 2048] temporary
    (~8 GiB measured at T=1024 x 4)."""
    if quick:
        return ""
    if impl_name == "lamina[triton]":
        from lamina.backends.triton import cuda

        # Without a GPU the triton backend is Triton's interpreter: a full-size lstm_train
        # alone ran >20 minutes in it. Its timings say nothing about GPU code anyway.
        if not cuda.available():
            return "no GPU: Triton's interpreter would take hours"
    if wl_name in MEMORY_WORKLOADS and impl_name == "lamina[numpy]":
        return "the reference backend needs ~8 GiB here"
    return ""


# --- running one workload -----------------------------------------------------------------------


@dataclass
class Impl:
    name: str
    kind: str                 # "lamina" or "peer"
    build: object             # Workload -> Runner
    version: str = ""


def timing_plan(quick: bool, seconds: float | None) -> dict:
    if quick:
        return {"warmup": 1, "seconds": seconds or 0.02, "min_reps": 3, "max_reps": 20,
                "rounds": 1}
    return {"warmup": 2, "seconds": seconds or 2.0, "min_reps": 10, "max_reps": 300, "rounds": 5}


def run_workload(wl: Workload, impls: list[Impl], plan: dict, log) -> list[dict]:
    """Check every implementation, then time the ones that passed (interleaved rounds)."""
    rows, runners = [], {}
    for impl in impls:
        row = {"workload": wl.name, "title": wl.title, "impl": impl.name, "kind": impl.kind,
               "version": impl.version, "unit": wl.unit, "amount": wl.amount, "tol": wl.tol,
               "limit": wl.limit,
               "status": "ok", "note": ""}
        rows.append(row)
        try:
            runner = impl.build(wl)
            t0 = time.perf_counter()
            out = runner.call()
            row["first_call_s"] = time.perf_counter() - t0
            row["err"] = check(wl, runner.fetch(out))
            if runner.notes:
                row["note"] = "; ".join(runner.notes)
        except Exception as e:  # noqa: BLE001 - a failing implementation is reported
            row["status"], row["note"] = "error", f"{type(e).__name__}: {e}".splitlines()[0]
            log(f"  {impl.name}: {row['note']}")
            continue
        if not row["err"] <= wl.tol:
            row["status"] = "mismatch"
            row["note"] = f"error {row['err']:.2e} > tolerance {wl.tol:.0e}; not timed"
            log(f"  {impl.name}: MISMATCH {row['note']}")
            continue
        runners[impl.name] = (runner, row)

    # warm-up and a per-call estimate
    est = {}
    for name, (runner, row) in list(runners.items()):
        try:
            for _ in range(plan["warmup"]):
                runner.call()
            t0 = time.perf_counter()
            runner.call()
            est[name] = max(time.perf_counter() - t0, 1e-7)
        except Exception as e:  # noqa: BLE001 - reported in the table
            row["status"], row["note"] = "error", f"{type(e).__name__}: {e}".splitlines()[0]
            del runners[name]
    # at least min_reps calls, but only 3 of a call slower than 10 x (seconds / min_reps) (a
    # non-fused attention over 2048 tokens can take seconds per call)
    reps = {n: int(min(plan["max_reps"], max(
        plan["min_reps"] if est[n] * plan["min_reps"] <= 10 * plan["seconds"] else 3,
        plan["seconds"] / est[n]))) for n in runners}
    times = {n: [] for n in runners}
    meters = {n: machine.CpuMeter() for n in runners}
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for _ in range(plan["rounds"]):
            for name, (runner, _) in runners.items():
                k = math.ceil(reps[name] / plan["rounds"])
                ts = times[name]
                meters[name].start()
                for _ in range(k):
                    t0 = time.perf_counter()
                    runner.call()
                    ts.append(time.perf_counter() - t0)
                meters[name].stop()
    finally:
        if gc_was:
            gc.enable()
    for name, (_, row) in runners.items():
        ts = np.array(times[name])
        row.update(median_s=float(np.median(ts)), min_s=float(ts.min()), reps=len(ts),
                   bg_cpu=meters[name].cores, times_s=[float(t) for t in ts])
        row["throughput"] = wl.amount / row["median_s"] / 1e9
        row["throughput_best"] = wl.amount / row["min_s"] / 1e9
    return rows


def add_ratios(rows: list[dict], limits: dict) -> None:
    """Ratio to the fastest peer of the same workload, and fraction of the machine limit."""
    peak, copy = machine.peak_gflops(limits), machine.copy_gbs(limits)
    for wl_name in dict.fromkeys(r["workload"] for r in rows):
        group = [r for r in rows if r["workload"] == wl_name]
        timed_peers = [r for r in group if r["kind"] == "peer" and "median_s" in r]
        best = min(timed_peers, key=lambda r: r["median_s"]) if timed_peers else None
        for r in group:
            if "median_s" not in r:
                continue
            if best is not None:
                r["best_peer"] = best["impl"]
                r["vs_best_peer"] = r["median_s"] / best["median_s"]
                best_min = min(p["min_s"] for p in timed_peers)
                r["vs_best_peer_min"] = r["min_s"] / best_min
            lim = copy if r["limit"] == "copy" else peak
            r["frac_limit"] = r["throughput"] / lim if lim else None


# --- compile time (fresh processes) -------------------------------------------------------------


def probe(impl: str, quick: bool, threads: int, step: str = "mlp_step") -> dict:
    """In a fresh process: build the train step ``step`` (one of TRAIN_STEPS) on ``impl``, time
    its first calls and plain ones."""
    wl = make_workload(step, quick, with_reference=False)
    t_import = time.perf_counter()
    if impl.startswith("lamina:"):
        runner = lamina_runner(wl, impl.split(":", 1)[1])
    else:
        runner = peers.make(impl, threads).build(wl.peer_method, wl.inputs)
    t_build = time.perf_counter() - t_import
    calls = []
    for _ in range(4 if quick else 10):
        t0 = time.perf_counter()
        runner.call()
        calls.append(time.perf_counter() - t0)
    plain = min(calls[2:])  # the steady state: background noise only ever adds time
    return {"impl": impl, "step": step, "build_s": t_build, "calls_s": calls, "plain_s": plain,
            "compile_s": calls[0] - plain, "second_call_extra_s": calls[1] - plain}


def run_probe(impl: str, step: str, cache_dir: str, quick: bool, threads: int, log) -> dict:
    env = dict(os.environ)
    env.update(LAMINA_CACHE_DIR=cache_dir,
               TORCHINDUCTOR_CACHE_DIR=os.path.join(cache_dir, "inductor"),
               JAX_COMPILATION_CACHE_DIR=os.path.join(cache_dir, "jax"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", impl, "--workload", step,
           "--threads", str(threads)]
    if quick:
        cmd.append("--quick")
    meter = machine.CpuMeter()
    meter.start()
    try:
        p = subprocess.run(cmd, check=False, env=env, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "step": step, "error": "timed out after 900 s"}
    meter.stop()
    for line in reversed(p.stdout.splitlines()):
        if line.startswith("PROBE "):
            return dict(json.loads(line[len("PROBE "):]), bg_cpu=meter.cores)
    tail = (p.stderr.strip().splitlines() or ["no output"])[-1]
    log(f"  compile probe {impl} {step} failed (exit {p.returncode}): {tail}")
    return {"impl": impl, "step": step, "error": tail}


def run_compile(impl_names: list[str], quick: bool, threads: int, log,
                steps=TRAIN_STEPS, repeats: int = 1) -> list[dict]:
    """Cold and warm compile time of each train step in ``steps`` on each implementation: the
    fastest of ``repeats`` tries (each a cold probe in a new empty cache directory, then a warm
    one in the same directory), as for every timing here: background noise only adds time."""
    rows = []
    for step in steps:
        group = []
        for impl in impl_names:
            cold = warm = None
            for _ in range(max(1, repeats)):
                with tempfile.TemporaryDirectory(prefix="lamina-bench-cache-") as d:
                    c = run_probe(impl, step, d, quick, threads, log)
                    w = run_probe(impl, step, d, quick, threads, log) if "error" not in c else c
                if "error" in c or "error" in w:
                    cold, warm = c, w
                    break
                if cold is None or c["compile_s"] < cold["compile_s"]:
                    cold = c
                if warm is None or w["compile_s"] < warm["compile_s"]:
                    warm = w
            name = impl.split(":", 1)[1] if impl.startswith("lamina:") else impl
            group.append({"step": step,
                          "impl": f"lamina[{name}]" if impl.startswith("lamina:") else impl,
                          "kind": "lamina" if impl.startswith("lamina:") else "peer",
                          "cold": cold, "warm": warm,
                          "status": "error" if "error" in cold or "error" in warm else "ok"})
        ok_peers = [r for r in group if r["kind"] == "peer" and r["status"] == "ok"]
        for key in ("cold", "warm"):
            if ok_peers:
                best = min(ok_peers, key=lambda r: r[key]["compile_s"])
                for r in group:
                    if r["status"] == "ok":
                        r[f"{key}_vs_best_peer"] = r[key]["compile_s"] / max(
                            best[key]["compile_s"], 1e-9)
                        r[f"{key}_best_peer"] = best["impl"]
        rows.extend(group)
    return rows


# --- peak memory (fresh processes) --------------------------------------------------------------


def impl_spec(impl_name: str) -> str:
    """The ``--probe``/``--memory`` spelling of an implementation: lamina[llvm] -> lamina:llvm."""
    if impl_name.startswith("lamina[") and impl_name.endswith("]"):
        return "lamina:" + impl_name[len("lamina["):-1]
    return impl_name


def memory_child(impl: str, name: str, quick: bool, threads: int) -> dict:
    """In a fresh process (``--memory``): import the library, allocate the inputs, then measure
    (see memory.py)."""
    wl = make_workload(name, quick, with_reference=False)
    if impl.startswith("lamina:"):
        import lamina  # noqa: F401 - imported before the baseline
        from lamina import nn  # noqa: F401

        def build():
            return lamina_runner(wl, impl.split(":", 1)[1])
    else:
        peer = peers.make(impl, threads)  # imports torch / jax

        def build():
            return peer.build(wl.peer_method, wl.inputs)
    return dict(memory.measure(build), impl=impl, workload=name)


def run_memory(wl: Workload, impls: list, quick: bool, threads: int, log) -> dict:
    """{implementation name: its memory measurement}, each in its own fresh process, one at a
    time."""
    out = {}
    for impl in impls:
        args = ["--threads", str(threads)] + (["--quick"] if quick else [])
        out[impl.name] = memory.run_child(os.path.abspath(__file__), impl_spec(impl.name),
                                          wl.name, args, log)
    return out


def add_memory_ratios(rows: list[dict]) -> None:
    """peak / the smallest peak among the peers of the same workload."""
    for wl_name in dict.fromkeys(r["workload"] for r in rows if "memory" in r):
        group = [r for r in rows
                 if r["workload"] == wl_name and "peak_mib" in r.get("memory", {})]
        peaks = [r["memory"]["peak_mib"] for r in group if r["kind"] == "peer"]
        if not peaks:
            continue
        least = min(peaks)
        for r in group:
            r["mem_vs_least_peer"] = r["memory"]["peak_mib"] / max(least, 1e-3)


# --- main ---------------------------------------------------------------------------------------


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, few repetitions")
    ap.add_argument("--only", nargs="+", choices=WORKLOAD_NAMES, metavar="NAME",
                    help=f"workloads to run: {', '.join(WORKLOAD_NAMES)}")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    ap.add_argument("--peers", nargs="+", default=list(peers.ALL), metavar="PEER",
                    help=f"peers to include (default all): {', '.join(peers.ALL)}")
    ap.add_argument("--backends", nargs="+", metavar="BACKEND",
                    help="lamina backends (default: every available one)")
    ap.add_argument("--threads", type=int, default=machine.usable_cores(),
                    help="threads for every library (default: the usable cores)")
    ap.add_argument("--seconds", type=float, help="timed seconds per implementation and "
                    "workload (default 2, --quick 0.02)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each workload, wait up to S seconds for other processes to "
                    "go quiet")
    ap.add_argument("--compile-repeats", type=int, default=None, metavar="N",
                    help="compile: the fastest of N fresh-process tries per implementation and "
                         "step (default 3, --quick 1)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)  # internal: one compile-time probe
    ap.add_argument("--memory", help=argparse.SUPPRESS)  # internal: one memory measurement
    ap.add_argument("--workload", default="mlp_step", help=argparse.SUPPRESS)  # of the above
    return ap.parse_args(argv)


def set_thread_env(threads: int) -> bool:
    """Set every library's thread count in the environment; True if anything changed (the
    process must then re-execute itself: BLAS reads these when numpy is imported)."""
    changed = False
    for var in THREAD_VARS:
        if os.environ.get(var) != str(threads):
            os.environ[var] = str(threads)
            changed = True
    if threads < machine.usable_cores():
        flags = "--xla_cpu_multi_thread_eigen=true intra_op_parallelism_threads=" + str(threads)
        if flags not in os.environ.get("XLA_FLAGS", ""):
            os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + flags).strip()
            changed = True
    return changed


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.probe:
        print("PROBE " + json.dumps(probe(args.probe, args.quick, args.threads, args.workload)),
              flush=True)
        return 0
    if args.memory:
        print("MEMORY " + json.dumps(memory_child(args.memory, args.workload, args.quick,
                                                  args.threads)), flush=True)
        return 0

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    names = list(args.only or WORKLOAD_NAMES)
    backends = args.backends or lamina_backends()
    impls, peer_info = [], {}
    import lamina

    for be in backends:
        impls.append(Impl(f"lamina[{be}]", "lamina",
                          lambda wl, be=be: lamina_runner(wl, be), lamina.__version__))
    for pname in args.peers:
        p = peers.make(pname, args.threads)
        peer_info[pname] = {"available": p.available, "version": p.version, "note": p.note}
        if not p.available:
            log(f"peer {pname} skipped: {p.note}")
            continue
        impls.append(Impl(pname, "peer", lambda wl, p=p: p.build(wl.peer_method, wl.inputs),
                          p.version))

    mem_names = [n for n in names if n in ("gelu", "softmax", "layernorm")]
    ws = make_workload(mem_names[0], args.quick).amount if mem_names else \
        2 * 4 * sizes(args.quick)["rows"] * sizes(args.quick)["cols"]
    waited = {}
    if args.wait_idle > 0:
        log(f"waiting up to {args.wait_idle:g} s for other processes to go quiet ...")
        waited["machine"] = machine.wait_idle(args.wait_idle)
    log("measuring machine limits ...")
    first_limits = machine.measure(args.threads, int(ws), args.quick)

    plan = timing_plan(args.quick, args.seconds)
    rows, compile_rows = [], []
    for name in names:
        if args.wait_idle > 0:
            waited[name] = machine.wait_idle(args.wait_idle)
        if name == "compile":
            log("compile: fresh processes, cold then warm cache ...")
            targets = [f"lamina:{be}" for be in backends] + [
                p for p in args.peers if p in COMPILING_PEERS and peer_info[p]["available"]]
            compile_rows = run_compile(targets, args.quick, args.threads, log,
                                       repeats=args.compile_repeats or (1 if args.quick else 3))
            continue
        wl = make_workload(name, args.quick)
        wl_impls = impls
        if not args.backends:  # by default, leave out what cannot run at this size (say so)
            wl_impls = []
            for impl in impls:
                why = too_big(impl.name, name, args.quick)
                if why:
                    note = f"{why}; --backends naming it runs it"
                    log(f"{wl.title}: {impl.name} skipped ({note})")
                    rows.append({"workload": wl.name, "title": wl.title, "impl": impl.name,
                                 "kind": impl.kind, "version": impl.version, "unit": wl.unit,
                                 "status": "skipped", "note": note})
                else:
                    wl_impls.append(impl)
        mem = {}
        if name in MEMORY_WORKLOADS:
            log(f"{wl.title}: peak memory, each implementation in a fresh process ...")
            mem = run_memory(wl, wl_impls, args.quick, args.threads, log)
        log(f"{wl.title}: checking and timing {len(wl_impls)} implementations ...")
        if name in MEMORY_WORKLOADS:
            wl_rows = []
            for impl in wl_impls:
                wl_rows += run_workload(wl, [impl], plan, log)
                gc.collect()
        else:
            wl_rows = run_workload(wl, wl_impls, plan, log)
        for r in wl_rows:
            if r["impl"] in mem:
                r["memory"] = mem[r["impl"]]
        rows.extend(wl_rows)
        del wl
    if args.wait_idle > 0:
        waited["machine_end"] = machine.wait_idle(args.wait_idle)
    log("measuring machine limits again ...")
    limits = machine.best_of(first_limits,
                             machine.measure(args.threads, int(ws), args.quick))
    add_ratios(rows, limits)
    add_memory_ratios(rows)

    print(machine.format_limits(limits))
    print(f"lamina {lamina.__version__}, backends: {', '.join(backends)}; peers: " + ", ".join(
        f"{k} {v['version']}" if v["available"] else f"{k} (skipped: {v['note']})"
        for k, v in peer_info.items()))
    print()

    if rows:
        print(format_table(rows))
        print()
        print(LEGEND)
    if any("memory" in r for r in rows):
        print()
        print("time and peak memory (each implementation alone in a fresh process; MiB over "
              "the RSS after imports and inputs:\npeak = highest during a call after warm-up, "
              "held = kept between calls, call = peak - held; see memory.py)")
        print(format_memory(rows))
    if compile_rows:
        print()
        print("compile time of the train steps, seconds: in a fresh process, the first call "
              "minus a plain step\n(cold: empty cache directory; warm: a second process, same "
              "directory)")
        print(format_compile(compile_rows))
    failed = [r for r in rows if r["status"] == "mismatch"
              or (r["kind"] == "lamina" and r["status"] == "error")]
    failed += [r for r in compile_rows if r["kind"] == "lamina" and r["status"] != "ok"]
    failed += [r for r in rows if r["kind"] == "lamina" and "error" in r.get("memory", {})]
    if args.json:
        report = {"machine": limits, "lamina_version": lamina.__version__,
                  "backends": backends, "peers": peer_info, "threads": args.threads,
                  "quick": args.quick, "plan": plan, "waited_idle_s": waited,
                  "rows": rows, "compile": compile_rows,
                  "ok": not failed}
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1, default=float)
        log(f"wrote {args.json}")
    return 1 if failed else 0


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    if set_thread_env(_args.threads):
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(main())
