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
from dataclasses import dataclass, field

import numpy as np

import lamina as lm
from lamina.ir.errors import LaminaError
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


def run_backend(fn, args, backend: str, expected, types, part: str, report: Report) -> bool:
    """Compile and run ``fn`` on ``backend``; record findings; True if it ran."""
    copies = [np.array(a, copy=True) for a in args]
    if PHASE is not None:
        PHASE(f"{backend} {part}")
    try:
        cf = lm.compile(fn, backend=backend)
        outs = cf(*args)
        again = cf(*args)
    except LaminaError as e:
        report.findings.append(Finding(backend, "refused", part, _where(e)))
        return False
    except Exception as e:  # noqa: BLE001 - exactly what the checker is looking for
        report.findings.append(Finding(backend, "internal", part, _where(e)))
        return False
    report.ops |= _ops_of(cf)
    problems = compare(outs, expected, types, part)
    for p in problems:
        kind = "shape" if ": got " in p and "declared" in p or "not an ndarray" in p or \
            "returned" in p else "wrong"
        report.findings.append(Finding(backend, kind, part, p))
    for k, (a, c) in enumerate(zip(args, copies)):
        if not _same_bits(a, c):
            report.findings.append(Finding(backend, "modified", part, f"input {k} changed"))
    if isinstance(outs, tuple) and isinstance(again, tuple):
        for k, (x, y) in enumerate(zip(outs, again)):
            if not _same_bits(x, y):
                report.findings.append(Finding(backend, "nondeterministic", part,
                                               f"output {k} differs between two calls"))
    return True


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


def check(p: Program, backends: list[str]) -> Report:
    """Check program ``p`` on ``backends`` (see the module docstring)."""
    return check_function(p.function(), p.inputs, backends, seed=(p.seed, p.index))


def check_function(fn, inputs: list[Input], backends: list[str], seed=0) -> Report:
    """Check ``fn`` (returning a tuple of tensors) called with ``inputs`` (their data, passed
    as their views) on ``backends``, and its gradient."""
    report = Report()
    args = [i.as_argument() for i in inputs]
    data = [i.data for i in inputs]
    try:
        traced, graph = oracle_graph(fn, data)
    except LaminaError as e:
        report.invalid = _where(e)
        return report
    except Exception as e:  # noqa: BLE001 - the frontend failed on a valid program
        report.findings.append(Finding("frontend", "internal", "program", _where(e)))
        return report
    types = [v.type for v in traced.outputs]
    expected = Oracle(graph).run(data)
    report.ops |= {n.op for n in traced.nodes} | {n.op for n in graph.nodes}
    for b in backends:
        run_backend(fn, args, b, expected, types, "program", report)
    # the gradient of a weighted sum of the float outputs, with respect to the float inputs
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
        run_backend(gfn, args + ws, b, gexpected, gtypes, "gradient", report)
    return report
