"""The pass manager: runs a named list of passes and does the work around each one.

Around every pass it times it, verifies the result (``config.verify``), checks that the text
form round-trips (``config.check_roundtrip``), prints it (``LAMINA_PRINT_AFTER``,
``LAMINA_PRINT_CHANGED``) and dumps it (``LAMINA_DUMP=dir`` writes ``NN_<pass>.lir``). Passes
explain their decisions with :func:`remark`; remarks go into the dumps and the stage records.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from lamina.ir import config
from lamina.ir.errors import ConfigError, LaminaError, VerifyError
from lamina.ir.graph import Graph
from lamina.ir.parser import parse
from lamina.ir.printer import print_graph
from lamina.ir.verify import verify
from lamina.passes.rewrite import changed as graph_changed

_remarks: contextvars.ContextVar[list | None] = contextvars.ContextVar("remarks", default=None)


def remark(message: str) -> None:
    """Record why a pass did (or did not do) something; shown in dumps and ``stage.remarks``."""
    sink = _remarks.get()
    if sink is not None:
        sink.append(message)


@dataclass
class Stage:
    """The graph after one pass, with what it cost and what the pass said."""

    name: str
    graph: Graph
    seconds: float = 0.0
    changed: bool = True
    remarks: list[str] = field(default_factory=list)

    def header(self, index: int) -> str:
        what = "changed" if self.changed else "unchanged"
        return f"# ---- after {index:02d} {self.name} ({what}, {self.seconds * 1e3:.1f} ms) ----"

    def text(self, index: int) -> str:
        lines = [self.header(index)] + [f"# remark: {r}" for r in self.remarks]
        return "\n".join(lines) + "\n" + print_graph(self.graph)


Pass = Callable[[Graph], Graph]


def pass_name(p: Pass) -> str:
    return getattr(p, "pass_name", None) or p.__name__


def in_loop_bodies(p: Pass, graph: Graph) -> Graph:
    """``p`` applied to the body of every loop (innermost first), then to ``graph``."""
    from lamina.ir.ops.registry import get as get_op
    from lamina.passes.rewrite import rewrite

    if not any(n.region is not None and get_op(n.op).kind == "loop" for n in graph.nodes):
        return p(graph)

    def rule(b, n, ins):
        if n.region is None or get_op(n.op).kind != "loop":
            return None
        body = in_loop_bodies(p, n.region)
        if body is n.region:
            return None
        return b.emit(n.op, ins, n.attrs, loc=n.loc, region=body)

    return p(rewrite(graph, rule))


class PassManager:
    """Runs ``passes`` in order; ``run`` returns the final graph and one Stage per pass.

    >>> from lamina.passes import PassManager, eliminate_dead_code
    >>> pm = PassManager([eliminate_dead_code])
    >>> [s.name for s in pm.run(lamina.ir.parse('graph @f() {\\n return\\n}'))[1]]
    ['traced', 'dce']
    """

    def __init__(self, passes: list[Pass]):
        self.passes = list(passes)
        self.dump_dir: str | None = None  # set by run() when LAMINA_DUMP is on

    def run(self, graph: Graph, first_stage: str = "traced") -> tuple[Graph, list[Stage]]:
        if config.print_after.strip():
            _check_print_after(config.print_after, [first_stage] +
                               [pass_name(p) for p in self.passes])
        stages = [Stage(first_stage, graph)]
        dump_dir = self.dump_dir = _dump_dir(graph.name) if config.dump else None
        self._after(stages[0], 0, dump_dir)
        counts: dict[str, int] = {}
        for i, p in enumerate(self.passes, start=1):
            name = pass_name(p)
            counts[name] = counts.get(name, 0) + 1
            if counts[name] > 1:  # a pass that runs twice gets "simplify.2"
                name = f"{name}.{counts[name]}"
            sink: list[str] = []
            token = _remarks.set(sink)
            start = time.perf_counter()
            try:
                new = in_loop_bodies(p, graph)
            except LaminaError:
                raise
            except Exception as e:  # a bug in a pass: say which pass, keep the cause
                raise LaminaError(f"pass {name} failed on @{graph.name}: "
                                  f"{type(e).__name__}: {e}") from e
            finally:
                _remarks.reset(token)
            stage = Stage(name, new, time.perf_counter() - start, graph_changed(graph, new), sink)
            stages.append(stage)
            self._after(stage, i, dump_dir)
            graph = new
        return graph, stages

    def _after(self, stage: Stage, index: int, dump_dir: str | None) -> None:
        g = stage.graph
        if config.verify:
            try:
                verify(g)
            except VerifyError as e:
                raise VerifyError(f"after pass {stage.name}: {e.message}", e.loc) from None
        if config.check_roundtrip:
            text = print_graph(g)
            again = print_graph(parse(text))
            if again != text:
                raise VerifyError(f"after pass {stage.name}: the IR text does not round-trip"
                                  f"\n--- printed ---\n{text}--- reparsed ---\n{again}")
        if config.debug >= 2:
            print(f"lamina: {stage.header(index)[2:]}", file=sys.stderr)
        if _wants_print(stage.name) and (stage.changed or not config.print_changed):
            print(stage.text(index), file=sys.stderr)
        if dump_dir:
            write_atomic(os.path.join(dump_dir, f"{index:02d}_{stage.name}.lir"),
                         stage.text(index))


def _wants_print(name: str) -> bool:
    """Whether ``LAMINA_PRINT_AFTER`` names this stage: ``simplify`` names every run of
    simplify, ``simplify.2`` only the second."""
    spec = config.print_after.strip()
    if not spec:
        return False
    wanted = {s.strip() for s in spec.split(",")}
    return spec == "all" or name in wanted or name.split(".")[0] in wanted


def known_pass_names() -> list[str]:
    """Names of lamina's own passes, in pipeline order: what ``LAMINA_PRINT_AFTER`` and
    ``fc.ir(stage)`` accept (besides ``traced`` and the passes of a custom pipeline)."""
    from lamina.passes.expand_conv import expand_conv  # imported here: they import this
    from lamina.passes.fuse import fuse_kernels
    from lamina.passes.pipeline import DEFAULT

    names = ["traced"]
    for p in [*DEFAULT, expand_conv, fuse_kernels]:
        if pass_name(p) not in names:
            names.append(pass_name(p))
    return names


def _check_print_after(spec: str, running: list[str]) -> None:
    """A ConfigError naming LAMINA_PRINT_AFTER when it names a pass that does not exist (a
    misspelt name would otherwise print nothing, silently)."""
    spec = spec.strip()
    if spec == "all":
        return
    valid = known_pass_names() + [n for n in running if n not in known_pass_names()]
    for item in (s.strip() for s in spec.split(",")):
        base, _, nth = item.partition(".")
        if base not in valid or (nth and not nth.isdigit()):
            raise ConfigError(f"LAMINA_PRINT_AFTER={spec!r}: no pass named {item!r}; use "
                              f"'all' or a comma list of: {', '.join(valid)} (a pass that "
                              "runs again is named like simplify.2)")


def _dump_dir(graph_name: str) -> str:
    """``$LAMINA_DUMP/<graph>.<n>``: a fresh numbered folder per compiled graph."""
    root = config.dump
    try:
        os.makedirs(root, exist_ok=True)
        n = 0
        while True:
            path = os.path.join(root, f"{graph_name}.{n}")
            try:
                os.mkdir(path)
                return path
            except FileExistsError:
                n += 1
    except OSError as e:
        raise ConfigError(f"LAMINA_DUMP={root!r}: cannot create the dump folder "
                          f"{e.filename or root!r} ({e.strerror or e}); point it at a "
                          "writable directory") from None


def write_atomic(path: str, data: str | bytes) -> None:
    """Write a whole file or nothing: a temporary file in the same folder, then a rename."""
    tmp = f"{path}.tmp{os.getpid()}"
    mode = "wb" if isinstance(data, bytes) else "w"
    try:
        with open(tmp, mode) as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
