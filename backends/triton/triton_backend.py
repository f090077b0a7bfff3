"""The GPU backend object: fuse -> plan memory -> Triton source per kernel -> cubin -> CUDA.

Where it runs (``mode()``; ``LAMINA_TRITON_MODE`` = ``device`` / ``interpret`` overrides):

    device     an NVIDIA GPU is present: kernels are compiled for its target (``sm_90`` on an
               H100) and launched through the CUDA driver (``device.py``)
    interpret  no GPU: the same kernels run under Triton's interpreter on the CPU (needs
               torch; slow, for tests and for checking numbers)

Artifacts hold every kernel's source and its PTX and cubin for each of ``targets()`` (default
``sm_80`` and ``sm_90``, or ``LAMINA_TRITON_TARGETS="sm_80,sm_90"``), compiled ahead of time, so
an artifact built on a machine without a GPU loads on a GPU without compiling anything.
"""

from __future__ import annotations

import json
import os
import sys

from lamina.backends.triton import aot
from lamina.backends.triton.codegen import render
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir import config
from lamina.ir.errors import ArtifactError, LaminaError
from lamina.ir.graph import Graph, Node
from lamina.passes.fuse import fuse_kernels
from lamina.passes.manager import write_atomic
from lamina.passes.memory import RISKY, error_sites, plan_memory

ARTIFACT_FORMAT = 1
_NOTED: list[bool] = []


def targets() -> tuple[str, ...]:
    return config.env_list("LAMINA_TRITON_TARGETS", aot.parse_target) or aot.DEFAULT_TARGETS


def mode() -> str:
    """"device" with a usable CUDA driver, else "interpret"."""
    forced = config.env_choice("LAMINA_TRITON_MODE", ("device", "interpret"))
    if forced:
        return forced
    from lamina.backends.triton import cuda

    if cuda.available():
        return "device"
    if not _NOTED:
        _NOTED.append(True)
        print("lamina: no CUDA GPU found: the triton backend runs its kernels under Triton's "
              "interpreter on the CPU (slow; for tests)", file=sys.stderr)
    return "interpret"


def render_graph(graph: Graph, plan, tune: str | None = None) -> list[tuple[Node, KernelSource]]:
    """The Triton source of every kernel of a planned graph, in schedule order; with ``tune``
    (a GPU target, on that GPU) matmul tiles are chosen by timing (``autotune.py``)."""
    codes = {id(m): k + 1 for k, m in enumerate(error_sites(graph))}
    out, names = [], set()
    risky_before = False
    for n in plan.schedule:
        if n.op != "kernel":
            continue
        base = n.attrs["name"].replace(".", "_")
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        gemm = None
        if tune and any(m.op == "matmul" for m in n.region.nodes):
            from lamina.backends.triton import autotune

            gemm = autotune.choose(n, name, codes, risky_before, tune)
        out.append((n, render(n, name, codes, guarded=risky_before, gemm=gemm)))
        if any(m.op in RISKY for m in n.region.nodes):
            risky_before = True
    return out


class TritonBackend:
    name = "triton"
    passes = (fuse_kernels,)

    def __init__(self):
        self.last_compile: dict = {}

    def compile(self, graph: Graph, dump_dir: str | None = None, first_index: int = 0,
                profile: bool = False):
        if profile:
            raise LaminaError("profile() is available on backend='llvm' only")
        aot.triton_version()
        plan = plan_memory(graph)
        tune = None
        if mode() == "device":
            from lamina.backends.triton import cuda

            tune = cuda.device().target
        sources = render_graph(graph, plan, tune)
        if dump_dir:
            k = first_index
            write_atomic(os.path.join(dump_dir, f"{k:02d}_memory_plan.txt"), plan.text())
            for j, (_, src) in enumerate(sources):
                for s in [*src.prologue, src]:
                    write_atomic(os.path.join(dump_dir, f"{k + 1:02d}_triton_{j:02d}_{s.name}.py"),
                                 s.source)
        return self._program(graph, plan, sources, None)

    def _program(self, graph, plan, sources, binaries: dict | None):
        if mode() == "interpret":
            from lamina.backends.triton.interpret import InterpretProgram

            program = InterpretProgram(graph, plan, sources)
        else:
            from lamina.backends.triton import cuda
            from lamina.backends.triton.device import DeviceProgram

            target = cuda.device().target
            if binaries is None:
                binaries = aot.compile_all([s for _, s in sources], [target])
            program = DeviceProgram(graph, plan, _launches(sources, binaries, target), {})
        program.sources = sources
        program.binaries = binaries
        return program

    # --- artifacts --------------------------------------------------------------------------

    def save_program(self, program) -> dict[str, bytes]:
        """Every kernel's source and, for each of ``targets()``, its PTX and cubin."""
        wanted = targets()
        have: dict[str, list[KernelBinary]] = dict(program.binaries or {})
        kernels = []
        for _, src in program.sources:
            entry = {"source": src.to_json(), "binaries": {}}
            for s in [*src.prologue, src]:
                got = {b.target: b for b in have.get(s.name, [])}
                for t in wanted:
                    if t not in got:
                        got[t] = aot.compile_source(s, t)
                entry["binaries"][s.name] = [b.to_json() for b in got.values()]
            kernels.append(entry)
        doc = {"format": ARTIFACT_FORMAT, "targets": list(wanted),
               "triton": aot.triton_version(), "kernels": kernels}
        return {"kernels.json": json.dumps(doc).encode()}

    def load_program(self, graph: Graph, files: dict[str, bytes]):
        try:
            doc = json.loads(files["kernels.json"])
            kernels = doc["kernels"]
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"triton artifact without its kernels ({e})") from None
        if doc.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"triton artifact format {doc.get('format')}; this lamina reads "
                                f"format {ARTIFACT_FORMAT}")
        plan = plan_memory(graph)
        nodes = [n for n in plan.schedule if n.op == "kernel"]
        if len(nodes) != len(kernels):
            raise ArtifactError(f"the artifact has {len(kernels)} kernels for a graph of "
                                f"{len(nodes)}")
        sources, binaries = [], {}
        for n, entry in zip(nodes, kernels):
            src = KernelSource.from_json(entry["source"])
            sources.append((n, src))
            for name, bins in entry["binaries"].items():
                binaries[name] = [KernelBinary.from_json(b) for b in bins]
        return self._program(graph, plan, sources, binaries)


def _launches(sources, binaries: dict[str, list[KernelBinary]], target: str) -> list:
    """(kernel node, source, {source name: binary for ``target``}) per kernel."""
    out = []
    for node, src in sources:
        chosen = {}
        for s in [*src.prologue, src]:
            found = [b for b in binaries.get(s.name, []) if b.target == target]
            if not found:
                have = sorted({b.target for b in binaries.get(s.name, [])})
                raise ArtifactError(f"kernel {s.name} was compiled for "
                                    f"{', '.join(have) or 'no target'}; this GPU is {target}: "
                                    "rebuild the artifact with LAMINA_TRITON_TARGETS including "
                                    f"{target}")
            chosen[s.name] = found[0]
        out.append((node, src, chosen))
    return out


backend = TritonBackend()
