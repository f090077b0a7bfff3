"""Check one random program on backends against the float64 oracle.

For the program and for its gradient (``grad_program``: the float inputs' gradient of a
weighted sum of the float outputs), on each backend:

- it compiles and runs (a ``LaminaError`` where the reference accepted the program counts as
  *refused*, any other exception as an *internal* error);
- every output is a numpy array of exactly the declared shape and dtype (0-d stays 0-d);
- every value is within the oracle's error bound (``oracle.py``);
- the inputs are unmodified, and a second call gives bit-identical results.

``check(program, backends)`` returns the findings (empty when all is well) and the ops the
program exercised (every stage of every backend's pipeline, kernel regions included).
"""

from __future__ import annotations

import traceback
import warnings
from dataclasses import dataclass, field

import numpy as np

import lamina as lm
from lamina.ir.errors import LaminaError, PromotionWarning
from lamina.passes import PassManager, decompose, differentiate
from lamina.testing.oracle import Oracle, mismatches
from lamina.testing.program import Input, Program


# Called with "<backend> <part>" before each compile-and-run: the fuzz worker reports it, so a
# crash is attributed to the backend that was running.
PHASE = None


@dataclass
class Finding:
    backend: str
    kind: str  # wrong, internal, refused, shape, modified, nondeterministic, crash, hang
    part: str  # "program" or "gradient"
    detail: str

    def __str__(self) -> str:
        return f"{self.kind} on {self.backend} ({self.part}): {self.detail}"

    def signature(self) -> tuple:
        """What a minimized program must still show to count as the same failure."""
        return (self.backend, self.kind, self.part)


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)
    ops: set[str] = field(default_factory=set)
    invalid: str | None = None  # the reference refused the program (a generator bug)


def _where(e: BaseException) -> str:
    """The exception with the innermost frames of its traceback (where lamina failed)."""
    tb = traceback.extract_tb(e.__traceback__)[-3:]
    frames = "; ".join(f"{f.filename.rsplit('/', 2)[-2:][-1]}:{f.lineno} {f.name}" for f in tb)
    return f"{type(e).__name__}: {str(e)[:300]} [{frames}]"


def _ops_of(cf) -> set[str]:
    out = set()
    for exe in cf.variants.values():
        for s in exe.stages:
            _collect(s.graph, out)
        _collect(exe.graph, out)
    return out


def _collect(g, out: set) -> None:
    for n in g.nodes:
        out.add(n.op)
        if n.region is not None:
            _collect(n.region, out)


def oracle_graph(fn, args):
    """The traced graph in primitive ops (decomposed, differentiated): what the oracle runs."""
    traced = lm.trace(fn, *args)
    graph, stages = PassManager([decompose, differentiate]).run(traced)
    return traced, graph


def compare(outs, expected, types, what: str) -> list[str]:
    """Problems of ``outs`` against the oracle's (value, err) pairs and the declared types."""
    problems = []
    if not isinstance(outs, tuple) or len(outs) != len(types):
        return [f"{what}: returned {type(outs).__name__} of {len(outs) if isinstance(outs, tuple) else '?'} values, expected {len(types)}"]
    for k, (o, (v, e), t) in enumerate(zip(outs, expected, types)):
        if not isinstance(o, np.ndarray):
            problems.append(f"{what} output {k} is a {type(o).__name__}, not an ndarray")
            continue
        if o.shape != t.shape or o.dtype != t.dtype.np:
            problems.append(f"{what} output {k}: got {o.dtype.name}{list(o.shape)}, "
                            f"declared {t}")
            continue
        bad = mismatches(o, v, e)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            problems.append(
                f"{what} output {k} ({t}): {int(bad.sum())} of {bad.size} values outside the "
                f"float64 bound; at {list(i)}: got {o[i]!r}, expected {v[i]!r} +- {e[i]:.3g}")
    return problems


def _same_bits(a, b) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.shape == b.shape and a.dtype == b.dtype and \
        np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes()


def run_backend(make_fn, args, backend: str, expected, types, part: str, report: Report,
                updates: dict | None = None, aot: str | None = None) -> bool:
    """Compile and run a fresh ``make_fn()`` on ``backend``; record findings; True if it ran.
    ``updates``: the oracle's (value, err) of the state after one call (training programs);
    ``aot``: a GPU target (``sm_80``) every Triton kernel must also compile for, ahead of time
    (Triton's interpreter runs code that the GPU compiler may refuse)."""
    copies = [np.array(a, copy=True) for a in args]
    if PHASE is not None:
        PHASE(f"{backend} {part}")
    try:
        cf = lm.compile(make_fn(), backend=backend)
        exe = cf.lower(*args)
        start = {k: v.numpy().copy() for k, v in exe.variables.items()}
        outs = cf(*args)
        after = {k: v.numpy().copy() for k, v in exe.variables.items()}
        for k, v in exe.variables.items():  # the same call again, from the same state
            v.assign(start[k])
        again = cf(*args)
        after2 = {k: v.numpy().copy() for k, v in exe.variables.items()}
        for k, v in exe.variables.items():  # shared state (the global random key) as it was
            v.assign(start[k])
    except LaminaError as e:
        report.findings.append(Finding(backend, "refused", part, _where(e)))
        return False
    except Exception as e:  # noqa: BLE001 - exactly what the checker is looking for
        report.findings.append(Finding(backend, "internal", part, _where(e)))
        return False
    report.ops |= _ops_of(cf)
    if aot and backend == "triton":
        _compile_ahead(exe.program, aot, part, report)
    for p in compare(outs, expected, types, part):
        kind = "shape" if ": got " in p and "declared" in p or "not an ndarray" in p or \
            "returned" in p else "wrong"
        report.findings.append(Finding(backend, kind, part, p))
    for name, (v, e) in (updates or {}).items():
        got = after.get(name)
        if got is None or got.shape != np.shape(v):
            report.findings.append(Finding(backend, "shape", part, f"state {name}: got "
                                           f"{None if got is None else got.shape}"))
            continue
        bad = mismatches(got, v, e)
        if bad.any():
            i = tuple(int(j) for j in np.argwhere(bad)[0])
            report.findings.append(Finding(
                backend, "wrong", part, f"state {name} after the step: {int(bad.sum())} of "
                f"{bad.size} values outside the float64 bound; at {list(i)}: got {got[i]!r}, "
                f"expected {v[i]!r} +- {e[i]:.3g}"))
    for k, (a, c) in enumerate(zip(args, copies)):
        if not _same_bits(a, c):
            report.findings.append(Finding(backend, "modified", part, f"input {k} changed"))
    if isinstance(outs, tuple) and isinstance(again, tuple):
        for k, (x, y) in enumerate(zip(outs, again)):
            if not _same_bits(x, y):
                report.findings.append(Finding(backend, "nondeterministic", part,
                                               f"output {k} differs between two calls"))
    for k in after:
        if not _same_bits(after[k], after2[k]):
            report.findings.append(Finding(backend, "nondeterministic", part,
                                           f"state {k} differs between two calls"))
    return True


def _compile_ahead(program, target: str, part: str, report: Report) -> None:
    from lamina.backends.triton import aot

    if PHASE is not None:
        PHASE(f"triton {part} (compiling for {target})")
    for _, src in program.sources:
        for s in [*src.prologue, src]:
            try:
                aot.compile_source(s, target)
            except Exception as e:  # noqa: BLE001 - a kernel the GPU compiler refuses
                report.findings.append(Finding("triton", "internal", part,
                                               f"kernel {s.name} does not compile for {target}: "
                                               + _where(e)))


def make_grad(fn, types_in, types_out):
    """The gradient of ``sum_k (out_k * w_k).sum()`` over ``fn``'s float outputs, with respect
    to its float inputs: a function of (inputs..., weights...), or None."""
    floats_in = tuple(k for k, t in enumerate(types_in) if t.dtype.is_float)
    floats_out = [k for k, t in enumerate(types_out) if t.dtype.is_float]
    if not floats_in or not floats_out:
        return None, []
    n = len(types_in)

    def loss(*args):
        outs = fn(*args[:n])
        total = 0.0
        for k, w in zip(floats_out, args[n:]):
            total = total + (outs[k] * w).sum()
        return total

    return lm.grad(loss, argnums=floats_in), floats_out


def weights(seed, types_out, outs: list[int]) -> list[np.ndarray]:
    """Fixed pseudo-random weights for the gradient's loss (one array per float output)."""
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, types_out[k].shape).astype(types_out[k].dtype.np) for k in outs]


def check(p: Program, backends: list[str], aot: str | None = None) -> Report:
    """Check program ``p`` on ``backends`` (see the module docstring)."""
    with warnings.catch_warnings():
        # numpy's promotion of a float64 argument meeting float32 parameters is what the
        # program asks for: lamina's warning about it is expected here
        warnings.simplefilter("ignore", PromotionWarning)
        return check_function(p.function, p.argument_inputs(), backends,
                              seed=(p.seed, p.index), fresh=True, aot=aot)


def check_function(fn, inputs: list[Input], backends: list[str], seed=0,
                   fresh: bool = False, aot: str | None = None) -> Report:
    """Check ``fn`` (returning a tuple of tensors) called with ``inputs`` (their data, passed
    as their views) on ``backends``, and its gradient. ``fresh``: ``fn()`` makes the function
    (a training program: each backend gets its own parameters and optimizer state); ``aot``:
    a GPU target the Triton kernels must compile for."""
    make_fn = fn if fresh else (lambda: fn)
    report = Report()
    args = [i.as_argument() for i in inputs]
    data = [i.data for i in inputs]
    try:
        traced, graph = oracle_graph(make_fn(), data)
    except LaminaError as e:
        report.invalid = _where(e)
        return report
    except Exception as e:  # noqa: BLE001 - the frontend failed on a valid program
        report.findings.append(Finding("frontend", "internal", "program", _where(e)))
        return report
    types = [v.type for v in traced.outputs]
    oracle = Oracle(graph)
    expected = oracle.run(data, {k: v.numpy() for k, v in traced.variables.items()})
    report.ops |= {n.op for n in traced.nodes} | {n.op for n in graph.nodes}
    for b in backends:
        run_backend(make_fn, args, b, expected, types, "program", report, oracle.updates, aot)
    if traced.state:
        return report  # a training step: its gradients are checked through the updates
    # the gradient of a weighted sum of the float outputs, with respect to the float inputs
    fn = make_fn()
    gfn, outs = make_grad(fn, [p.type for p in traced.inputs], types)
    if gfn is None:
        return report
    ws = weights(seed, types, outs)
    try:
        gtraced, ggraph = oracle_graph(gfn, data + ws)
        gtypes = [v.type for v in gtraced.outputs]
        gexpected = Oracle(ggraph).run(data + ws)
    except LaminaError as e:
        report.findings.append(Finding("frontend", "refused", "gradient", _where(e)))
        return report
    except Exception as e:  # noqa: BLE001
        report.findings.append(Finding("frontend", "internal", "gradient", _where(e)))
        return report
    report.ops |= {n.op for n in gtraced.nodes} | {n.op for n in ggraph.nodes}
    for b in backends:
        run_backend(lambda: gfn, args + ws, b, gexpected, gtypes, "gradient", report, aot=aot)
    return report
