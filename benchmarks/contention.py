"""How each library's threading copes with a core taken by another process: every workload
timed quiet and beside busy processes, in the same run, and the ratio busy / quiet.

    python benchmarks/contention.py [--quick] [--only mlp_step softmax] [--busy N]
                                    [--peers jax.jit torch] [--seconds S] [--rounds R]
                                    [--threads N] [--wait-idle S] [--json out.json]

Workloads (``run.py``'s, same inputs and references): ``mlp_step`` (one SGD step of the
784-512-512-10 ReLU MLP, batch 256) and ``softmax`` (rows of a float32 4096 x 1024 matrix).
Implementations: lamina's llvm backend with its default threads, the same compiled function
limited to one thread (a floor: what giving up threading would cost), ``jax.jit`` and PyTorch
eager (``--peers``).

Method: every implementation is checked against run.py's float64 reference first. Then
``--rounds`` rounds, each a quiet phase and a busy phase: in the busy phase ``--busy`` separate
processes (``python -c "while True: pass"``, started by this script, default 1: on a 2-core
machine one core) spin, and every implementation runs for ``--seconds`` seconds (after ``--settle``
idle seconds, so that the previous library's spinning threads are asleep, and two warm-up
calls) in each phase, so background load from elsewhere hits both conditions alike.
Times are wall time per synchronized call (as in run.py); the table gives the median and the
mean per condition and ``busy / quiet`` of each. ``bg cpu``: CPU other processes used in
the quiet phases (in cores; the spinners make the busy phases >= --busy): a quiet column above
~0.2 means someone else was using the machine and the quiet numbers are noisy.

Why this matters: a parallel region that ends with a barrier waits for its slowest thread, and
a thread that another process pushed off its core holds it for a scheduler time slice; pools
whose threads take work while they run lose only that thread's share.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import machine  # benchmarks/ is not a package: its modules sit next to this one
import peers
import run

WORKLOADS = ("mlp_step", "softmax")
SPIN = "while True: pass"


class Busy:
    """``n`` spinning processes while the ``with`` block runs."""

    def __init__(self, n: int):
        self.n, self.procs = n, []

    def __enter__(self):
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(self.n)]
        time.sleep(0.3)  # let them start and the scheduler place them
        return self

    def __exit__(self, *exc):
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.wait()
        self.procs = []


def build_impls(names: list[str], threads: int, log) -> list[tuple[str, object]]:
    """(name, Workload -> Runner) for lamina (all threads, one thread) and each peer."""
    impls = [("lamina[llvm]", lambda wl: run.lamina_runner(wl, "llvm")),
             ("lamina[llvm] 1 thread", lambda wl: _one_thread(run.lamina_runner(wl, "llvm")))]
    for name in names:
        p = peers.make(name, threads)
        if not p.available:
            log(f"peer {name} skipped: {p.note}")
            continue
        impls.append((name, lambda wl, p=p: p.build(wl.peer_method, wl.inputs)))
    return impls


def _one_thread(runner: peers.Runner) -> peers.Runner:
    """The runner's lamina program limited to one thread (what LAMINA_NUM_THREADS=1 gives,
    without a second process): the first call builds the program, found then among the live
    objects; that call's result goes to the correctness check (an MLP step must run only once
    before it)."""
    from lamina.backends.llvm.program import LLVMProgram

    def programs():
        # type(o), not isinstance: the latter reads __class__, which some of torch's lazy
        # module objects answer with a deprecation warning
        return {id(o): o for o in gc.get_objects() if type(o) is LLVMProgram}

    before = programs()
    first = [runner.call()]
    new = [p for k, p in programs().items() if k not in before]
    if not new:
        raise RuntimeError("no lamina program found to limit to one thread")
    for p in new:
        p.threads = 1

    def call():
        return first.pop() if first else runner.call()

    return peers.Runner(call, runner.fetch, runner.notes)


def time_phase(runners: dict, seconds: float, warmup: int, times: dict, settle: float) -> None:
    for name, runner in runners.items():
        # NOTE: idle first: the previous library's worker threads spin for a while after its
        # last call (OpenMP's for up to ~0.1 s), which would slow whoever runs next
        time.sleep(settle)
        for _ in range(warmup):
            runner.call()
        ts = times[name]
        t_end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            runner.call()
            t1 = time.perf_counter()
            ts.append(t1 - t0)
            if t1 >= t_end and len(ts) >= 3:
                break


def run_workload(wl: run.Workload, impls, args, log) -> list[dict]:
    runners, rows = {}, []
    for name, build in impls:
        row = {"workload": wl.name, "title": wl.title, "impl": name, "status": "ok"}
        rows.append(row)
        try:
            runner = build(wl)
            row["err"] = run.check(wl, runner.fetch(runner.call()))
        except Exception as e:  # noqa: BLE001 - reported in the table
            row["status"] = f"ERROR: {type(e).__name__}: {e}".splitlines()[0]
            log(f"  {name}: {row['status']}")
            continue
        if not row["err"] <= wl.tol:
            row["status"] = f"MISMATCH: error {row['err']:.1e}"
            log(f"  {name}: {row['status']}")
            continue
        runners[name] = (runner, row)
    quiet = {n: [] for n in runners}
    busy = {n: [] for n in runners}
    meter = machine.CpuMeter()
    bmeter = machine.CpuMeter()
    plain = {n: r for n, (r, _) in runners.items()}
    gc.collect()
    gc_was = gc.isenabled()
    gc.disable()
    try:
        for k in range(args.rounds):
            log(f"  round {k + 1}/{args.rounds}: quiet ...")
            meter.start()
            time_phase(plain, args.seconds, 2, quiet, args.settle)
            meter.stop()
            log(f"  round {k + 1}/{args.rounds}: {args.busy} busy process(es) ...")
            with Busy(args.busy):
                bmeter.start()
                time_phase(plain, args.seconds, 2, busy, args.settle)
                bmeter.stop()
    finally:
        if gc_was:
            gc.enable()
    for name, (_, row) in runners.items():
        q, b = np.array(quiet[name]), np.array(busy[name])
        row.update(quiet_median_s=float(np.median(q)), quiet_mean_s=float(q.mean()),
                   busy_median_s=float(np.median(b)), busy_mean_s=float(b.mean()),
                   quiet_reps=len(q), busy_reps=len(b),
                   quiet_bg_cpu=meter.cores, busy_bg_cpu=bmeter.cores)
        row["ratio_median"] = row["busy_median_s"] / row["quiet_median_s"]
        row["ratio_mean"] = row["busy_mean_s"] / row["quiet_mean_s"]
    return rows


def format_rows(rows: list[dict]) -> str:
    head = ["workload", "implementation", "quiet ms", "busy ms", "busy/quiet",
            "quiet mean", "busy mean", "busy/quiet (mean)", "bg cpu quiet", "note"]
    body, last = [], None
    for r in rows:
        title = r["title"] if r["title"] != last else ""
        last = r["title"]
        if "quiet_median_s" not in r:
            body.append([title, r["impl"]] + ["-"] * 7 + [r["status"]])
            continue
        body.append([title, r["impl"], f"{r['quiet_median_s'] * 1e3:.3f}",
                     f"{r['busy_median_s'] * 1e3:.3f}", f"{r['ratio_median']:.2f}x",
                     f"{r['quiet_mean_s'] * 1e3:.3f}", f"{r['busy_mean_s'] * 1e3:.3f}",
                     f"{r['ratio_mean']:.2f}x",
                     "-" if r["quiet_bg_cpu"] is None else f"{r['quiet_bg_cpu']:.2f}", ""])
    return run._align(head, body, right=set(range(2, 9)))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="\n".join(__doc__.splitlines()[1:]))
    ap.add_argument("--quick", action="store_true", help="tiny sizes, short phases")
    ap.add_argument("--only", nargs="+", choices=WORKLOADS, default=list(WORKLOADS),
                    metavar="NAME", help=f"workloads: {', '.join(WORKLOADS)}")
    ap.add_argument("--busy", type=int, default=1, help="spinning processes in the busy phases")
    ap.add_argument("--peers", nargs="+", default=["jax.jit", "torch"], metavar="PEER",
                    help="peers (default: jax.jit torch)")
    ap.add_argument("--seconds", type=float, help="seconds per implementation and phase "
                    "(default 2, --quick 0.1)")
    ap.add_argument("--rounds", type=int, help="quiet/busy rounds (default 3, --quick 1)")
    ap.add_argument("--settle", type=float, default=0.3, metavar="S",
                    help="idle seconds before each implementation's timing (default 0.3)")
    ap.add_argument("--threads", type=int, default=machine.usable_cores(),
                    help="threads for every library (default: the usable cores)")
    ap.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                    help="before each workload, wait up to S seconds for a quiet machine")
    ap.add_argument("--json", metavar="PATH", help="write every number to this JSON file")
    args = ap.parse_args(argv)
    if args.seconds is None:
        args.seconds = 0.1 if args.quick else 2.0
    if args.rounds is None:
        args.rounds = 1 if args.quick else 3
    return args


def main(argv=None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    import lamina

    impls = build_impls(args.peers, args.threads, log)
    rows = []
    for name in args.only:
        if args.wait_idle > 0:
            machine.wait_idle(args.wait_idle)
        wl = run.make_workload(name, args.quick)
        log(f"{wl.title}: {len(impls)} implementations, {args.rounds} rounds quiet/busy ...")
        rows.extend(run_workload(wl, impls, args, log))
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    print(f"{machine.cpu_name()}, {machine.usable_cores()} usable cores, {args.threads} threads "
          f"per library, {args.busy} busy process(es) in the busy phases; lamina "
          f"{lamina.__version__}; load average at the end {load[0]:.2f}" if load else "")
    print()
    print(format_rows(rows))
    print()
    print("quiet/busy ms: median wall time of one call without / with the spinning processes;\n"
          "busy/quiet: the slowdown (1.00x: none). bg cpu quiet: cores other processes used\n"
          "during the quiet phases (high: noisy quiet numbers).")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "args": vars(args), "loadavg": load}, f, indent=1,
                      default=float)
        log(f"wrote {args.json}")
    failed = [r for r in rows if r["status"] != "ok"]
    return 1 if any(r["impl"].startswith("lamina") for r in failed) or \
        any(r["status"].startswith("MISMATCH") for r in failed) else 0


if __name__ == "__main__":
    _args = parse_args(sys.argv[1:])
    if run.set_thread_env(_args.threads):
        os.execv(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]])
    sys.exit(main())
