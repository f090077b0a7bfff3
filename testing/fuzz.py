"""The random-program checker's command line: generate, check, minimize, summarize.

    python -m lamina.testing.fuzz --n 500 --seed 0                 # numpy, llvm (+ triton)
    python -m lamina.testing.fuzz --n 20000 --seed 1 --jobs 2      # a long run
    python -m lamina.testing.fuzz --n 100 --backends numpy,triton --triton-every 1

Programs ``(seed, start) .. (seed, start + n - 1)`` are checked in worker subprocesses, a chunk
of indices each, so a crash (a segfault) or a hang is counted against the program that caused
it and the run goes on with the next one. Every ``--triton-every``-th program is generated with
small shapes and also checked on the triton backend (Triton's interpreter without a GPU).
The summary counts each kind of failure per backend and how many programs exercised each op;
each distinct failure is minimized to a standalone ``repro_<seed>_<index>.py`` (``--out``).
The exit status is 1 when anything failed.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

KINDS = ("wrong", "crash", "hang", "internal", "refused", "shape", "modified",
         "nondeterministic")


# --- the worker: runs in a subprocess, one JSON line per event --------------------------------


def _emit(obj) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def backends_for(index: int, backends: list[str], triton_every: int) -> tuple[list[str], bool]:
    """The backends program ``index`` runs on, and whether it is generated small."""
    small = "triton" in backends and triton_every > 0 and index % triton_every == 0
    return (backends if small else [b for b in backends if b != "triton"]), small


def aot_target(index: int, aot_every: int) -> str | None:
    """The GPU target program ``index``'s Triton kernels are compiled for (sm_80 and sm_90 in
    turn), if it is one of every ``aot_every``-th."""
    if aot_every <= 0 or index % aot_every:
        return None
    return ("sm_80", "sm_90")[(index // aot_every) % 2]


def worker(seed: int, start: int, stop: int, backends: list[str], triton_every: int,
           aot_every: int = 0) -> None:
    from lamina.testing import check as chk
    from lamina.testing.generate import generate

    for i in range(start, stop):
        _emit({"at": i})
        chk.PHASE = lambda what, i=i: _emit({"at": i, "phase": what})
        bk, small = backends_for(i, backends, triton_every)
        try:
            p = generate(seed, i, small)
        except Exception as e:  # noqa: BLE001 - a generator bug: reported, not fatal
            _emit({"done": i, "generator": chk._where(e)})
            continue
        report = chk.check(p, bk, aot=aot_target(i, aot_every) if small else None)
        _emit({"done": i, "backends": bk, "steps": len(p.steps), "ops": sorted(report.ops),
               "invalid": report.invalid,
               "findings": [[f.backend, f.kind, f.part, f.detail] for f in report.findings]})


# --- the driver -------------------------------------------------------------------------------


@dataclass
class Summary:
    seed: int
    start: int
    n: int
    backends: list[str]
    checked: Counter = field(default_factory=Counter)  # backend -> programs
    failures: list = field(default_factory=list)  # (index, backend, kind, part, detail)
    invalid: list = field(default_factory=list)  # (index, why): the generator's fault
    ops: Counter = field(default_factory=Counter)  # op -> programs exercising it
    seconds: float = 0.0
    repros: list = field(default_factory=list)
    finished: int = 0  # programs done so far (the progress line)

    @property
    def ok(self) -> bool:
        return not self.failures and not self.invalid

    def counts(self) -> Counter:
        return Counter(f[2] for f in self.failures)

    def text(self, min_ops: int = 0) -> str:
        from lamina.ir.ops import all_ops

        out = [f"lamina fuzz: seed {self.seed}, programs {self.start}..{self.start + self.n - 1}"
               f", backends {', '.join(self.backends)}, {self.seconds:.0f} s",
               "checked: " + ", ".join(f"{b} {self.checked[b]}" for b in self.backends)]
        c = self.counts()
        out.append("failures: " + "  ".join(f"{k} {c[k]}" for k in KINDS) +
                   f"   (invalid programs: {len(self.invalid)})")
        per = Counter((f[1], f[2]) for f in self.failures)
        if per:
            out.append("  by backend: " + ", ".join(f"{b} {k} {n}" for (b, k), n in
                                                     sorted(per.items())))
        names = [o.name for o in all_ops()]
        low = [o for o in names if self.ops[o] < min_ops]
        out.append(f"programs exercising each op ({len(names)} ops"
                   + (f"; below {min_ops}: {', '.join(low)}" if low else "") + "):")
        row = []
        for o in sorted(names):
            row.append(f"{o} {self.ops[o]}")
        for k in range(0, len(row), 8):
            out.append("  " + ", ".join(row[k:k + 8]))
        for i, b, k, part, detail in self.failures[:40]:
            out.append(f"  {self.seed}:{i} {k} on {b} ({part}): {detail[:300]}")
        if len(self.failures) > 40:
            out.append(f"  ... and {len(self.failures) - 40} more")
        for i, why in self.invalid[:10]:
            out.append(f"  {self.seed}:{i} invalid program: {why[:300]}")
        for path in self.repros:
            out.append(f"repro: {path}")
        return "\n".join(out)


class _Progress:
    """Programs done, failures, time and time left, on stderr: one line redrawn on a terminal,
    a line a minute in a log."""

    every = 60.0  # seconds between lines in a log

    def __init__(self, n: int, t0: float):
        self.n, self.t0 = n, t0
        self.tty = sys.stderr.isatty()
        self.last = t0
        self.drawn = False

    def show(self, done: int, failures: int) -> None:
        now = time.monotonic()
        if now - self.last < (1.0 if self.tty else self.every):
            return
        self.last = now
        spent = now - self.t0
        left = spent / done * (self.n - done) if done else None
        text = (f"  {done}/{self.n} programs, {failures} failure(s), {_clock(spent)} "
                f"({'~' + _clock(left) + ' left' if left is not None else 'starting'})")
        if self.tty:
            sys.stderr.write("\r" + text.ljust(72))
            self.drawn = True
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r" + " " * 72 + "\r")
            sys.stderr.flush()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}h{m % 60:02d}m" if m >= 60 else f"{m}m{s:02d}s"


class _Worker:
    def __init__(self, cmd, lo, hi, env, log):
        self.lo, self.hi = lo, hi
        self.at, self.phase = lo, "generate"
        self.done = lo - 1
        self.last = time.monotonic()
        self.buffer = b""
        self.proc = subprocess.Popen(cmd + ["--start", str(lo), "--stop", str(hi)],
                                     stdout=subprocess.PIPE, stderr=log, env=env)

    def lines(self) -> list[str] | None:
        """The complete lines that arrived (None at the end of the output)."""
        chunk = os.read(self.proc.stdout.fileno(), 1 << 16)
        if not chunk:
            return None
        self.buffer += chunk
        *done, self.buffer = self.buffer.split(b"\n")
        return [x.decode(errors="replace") for x in done]


def run(n: int, seed: int = 0, start: int = 0, backends: list[str] | None = None,
        triton_every: int = 5, aot_every: int = 25, jobs: int = 2, chunk: int = 25,
        timeout: float = 300.0,
        minimize: bool = True, out_dir: str = "fuzz-repros", max_repros: int = 8,
        quiet: bool = False, worker_cmd: list[str] | None = None) -> Summary:
    """Check programs ``start .. start+n-1`` of ``seed``; see the module docstring.
    (``worker_cmd`` replaces the worker command: the tests' stand-in that crashes.)"""
    from lamina.backends import runnable

    backends = backends or [b for b in ("numpy", "llvm", "triton") if b in runnable()]
    summary = Summary(seed, start, n, backends)
    t0 = time.monotonic()
    cache = tempfile.mkdtemp(prefix="lamina-fuzz-cache-")
    env = dict(os.environ, LAMINA_CACHE_DIR=cache, PYTHONUNBUFFERED="1")
    cmd = worker_cmd or [sys.executable, "-m", "lamina.testing.fuzz", "--worker", "--seed",
                         str(seed), "--backends", ",".join(backends), "--triton-every",
                         str(triton_every), "--aot-every", str(aot_every)]
    todo = [(a, min(a + chunk, start + n)) for a in range(start, start + n, chunk)]
    sel = selectors.DefaultSelector()
    active: list[_Worker] = []
    first: dict[tuple, int] = {}  # failure signature -> first program index
    log = tempfile.TemporaryFile("w+")
    progress = _Progress(n, t0)
    try:
        while todo or active:
            while todo and len(active) < jobs:
                lo, hi = todo.pop(0)
                w = _Worker(cmd, lo, hi, env, log)
                sel.register(w.proc.stdout, selectors.EVENT_READ, w)
                active.append(w)
            for key, _ in sel.select(timeout=1.0):
                w = key.data
                lines = w.lines()
                if lines is None:
                    _finish(w, sel, active, todo, summary, first, "crash")
                    continue
                w.last = time.monotonic()
                for line in lines:
                    _event(w, line, summary, first, quiet)
            for w in list(active):
                if time.monotonic() - w.last > timeout:
                    w.proc.kill()
                    _finish(w, sel, active, todo, summary, first, "hang")
            if not quiet:
                progress.show(summary.finished, len(summary.failures))
    finally:
        if not quiet:
            progress.close()
        for w in active:
            w.proc.kill()
        log.close()
        shutil.rmtree(cache, ignore_errors=True)
    summary.failures.sort()
    summary.seconds = time.monotonic() - t0
    if minimize and summary.failures:
        for sig, i in list(first.items())[:max_repros]:
            path = _minimize_in_subprocess(seed, i, sig, backends, triton_every, aot_every,
                                           out_dir)
            if path:
                summary.repros.append(path)
    return summary


def _event(w: _Worker, line: str, summary: Summary, first: dict, quiet: bool) -> None:
    try:
        ev = json.loads(line)
    except ValueError:
        return  # a stray print from somewhere: not ours
    if "phase" in ev:
        w.phase = ev["phase"]
        return
    if "at" in ev:
        w.at, w.phase = ev["at"], "generate"
        return
    i = ev["done"]
    w.done = i
    summary.finished += 1
    if "generator" in ev:
        summary.invalid.append((i, "generator: " + ev["generator"]))
        return
    for b in ev["backends"]:
        summary.checked[b] += 1
    summary.ops.update(ev["ops"])
    if ev["invalid"]:
        summary.invalid.append((i, ev["invalid"]))
    for b, kind, part, detail in ev["findings"]:
        summary.failures.append((i, b, kind, part, detail))
        first.setdefault((b, kind, part, _site(detail)), i)
        if not quiet:
            print(f"{summary.seed}:{i} {kind} on {b} ({part}): {detail[:200]}",
                  file=sys.stderr)


def _site(detail: str) -> str:
    """What tells two failures of one kind apart: the innermost frame, or the output."""
    if "[" in detail and detail.endswith("]"):
        return detail.rsplit("[", 1)[1].split(";")[-1]
    return detail.split(":")[0]


def _finish(w: _Worker, sel, active, todo, summary: Summary, first: dict, how: str) -> None:
    """A worker ended (or was killed): a program it had not finished crashed or hung."""
    sel.unregister(w.proc.stdout)
    w.proc.stdout.close()
    active.remove(w)
    code = w.proc.wait()
    if w.done >= w.hi - 1 and code == 0:
        return
    i = w.done + 1
    backend, _, part = (w.phase + "  ").partition(" ")
    backend = backend if w.phase != "generate" else "generator"
    part = part.strip() or "program"
    kind = how if how == "hang" else "crash"
    summary.failures.append((i, backend, kind, part,
                             f"{'no progress' if how == 'hang' else f'exit status {code}'} "
                             f"while checking {w.phase}"))
    first.setdefault((backend, kind, part, ""), i)
    if i + 1 < w.hi:
        todo.insert(0, (i + 1, w.hi))


def _minimize_in_subprocess(seed, index, sig, backends, triton_every, aot_every,
                            out_dir) -> str | None:
    backend, kind, part, _ = sig
    cmd = [sys.executable, "-m", "lamina.testing.fuzz", "--minimize-one", str(index),
           "--seed", str(seed), "--backends", ",".join(backends), "--triton-every",
           str(triton_every), "--aot-every", str(aot_every), "--out", out_dir,
           "--finding", json.dumps([backend, kind, part])]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except subprocess.TimeoutExpired:
        return None
    lines = [x for x in r.stdout.splitlines() if x.startswith("repro: ")]
    return lines[-1][len("repro: "):] if lines else None


def minimize_one(seed, index, sig, backends, triton_every, aot_every, out_dir) -> str:
    from lamina.testing.check import Finding
    from lamina.testing.generate import generate
    from lamina.testing.minimize import minimize, write_repro

    _, small = backends_for(index, backends, triton_every)
    aot = aot_target(index, aot_every) if small else None
    p = generate(seed, index, small)
    finding = Finding(sig[0], sig[1], sig[2], "")
    before = len(p.steps)
    q = minimize(p, finding, aot=aot)
    # the repro's docstring names the failure as the minimized program shows it
    from lamina.testing.check import check

    shown = [f for f in check(q, [b for b in ("numpy", sig[0]) if b in backends],
                              aot=aot).findings
             if f.signature() == finding.signature()] if sig[1] not in ("crash", "hang") else []
    return write_repro(q, shown[0] if shown else finding, out_dir, before, aot)


def probe(path: str, backends: list[str]) -> None:
    """Check one serialized program (the minimizer's crash probe)."""
    from lamina.testing.check import check
    from lamina.testing.program import from_json

    with open(path) as f:
        p = from_json(json.load(f))
    check(p, backends)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lamina.testing.fuzz",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=500, help="programs to check (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", type=int, default=0, help="first program index")
    ap.add_argument("--stop", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--backends", default=None,
                    help="comma list (default: every runnable one of numpy,llvm,triton)")
    ap.add_argument("--triton-every", type=int, default=5,
                    help="every k-th program is small and runs on triton too (default 5)")
    ap.add_argument("--aot-every", type=int, default=25,
                    help="every k-th program's Triton kernels also compile for sm_80/sm_90, "
                         "ahead of time (default 25; 0: never)")
    ap.add_argument("--jobs", type=int, default=2, help="worker processes (default 2)")
    ap.add_argument("--timeout", type=float, default=300.0,
                    help="seconds without progress before a program counts as hung")
    ap.add_argument("--no-minimize", action="store_true")
    ap.add_argument("--out", default="fuzz-repros", help="where repro files go")
    ap.add_argument("--min-ops", type=int, default=0,
                    help="fail unless every op was exercised by this many programs")
    ap.add_argument("--json", default=None, help="also write the summary as JSON here")
    ap.add_argument("--quiet", action="store_true")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--probe", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--minimize-one", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--finding", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    backends = a.backends.split(",") if a.backends else None
    if a.worker:
        worker(a.seed, a.start, a.stop, backends, a.triton_every, a.aot_every)
        return 0
    if a.probe:
        probe(a.probe, backends)
        return 0
    if a.minimize_one is not None:
        path = minimize_one(a.seed, a.minimize_one, json.loads(a.finding), backends,
                            a.triton_every, a.aot_every, a.out)
        print(f"repro: {path}")
        return 0
    s = run(a.n, a.seed, a.start, backends, a.triton_every, a.aot_every, a.jobs,
            timeout=a.timeout,
            minimize=not a.no_minimize, out_dir=a.out, quiet=a.quiet)
    print(s.text(a.min_ops))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"seed": s.seed, "start": s.start, "n": s.n, "checked": s.checked,
                       "failures": s.failures, "invalid": s.invalid, "ops": s.ops,
                       "seconds": s.seconds, "repros": s.repros}, f, indent=1)
    from lamina.ir.ops import all_ops

    low = [o.name for o in all_ops() if s.ops[o.name] < a.min_ops]
    return 0 if s.ok and not low else 1


if __name__ == "__main__":
    sys.exit(main())
