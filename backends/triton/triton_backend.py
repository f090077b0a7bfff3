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

from lamina.backends.triton import aot, loops
from lamina.backends.triton.attention import scratch_need
from lamina.backends.triton.codegen import render
from lamina.backends.triton.conv import fuse_conv_kernels
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir import config
from lamina.ir.errors import ArtifactError, LaminaError
from lamina.ir.graph import Graph, Node
from lamina.ir.ops.loop import LOOP_OPS
from lamina.passes.expand_pool import expand_pool
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


def render_graph(graph: Graph, plan, tune: str | None = None, codes: dict | None = None,
                 names: set | None = None,
                 risky_before: bool = False) -> list[tuple[Node, KernelSource]]:
    """The Triton source of every kernel of a planned graph, in schedule order; with ``tune``
    (a GPU target, on that GPU) matmul and conv tiles are chosen by timing
    (``autotune.py``). ``codes``: the error code of each index check (a loop body's: the
    enclosing graph's numbering); ``names``: kernel names already taken (by the other levels
    of one program); ``risky_before``: an index check may have failed before the first kernel
    (a loop body's earlier step)."""
    if codes is None:
        codes = {id(m): k + 1 for k, m in enumerate(error_sites(graph))}
    out = []
    names = set() if names is None else names
    for n in plan.schedule:
        if n.op in LOOP_OPS and error_sites(n.region):
            risky_before = True  # the kernels after a loop that can fail are guarded
        if n.op != "kernel":
            continue
        base = n.attrs["name"].replace(".", "_")
        name, k = base, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        gemm = None
        if tune and any(m.op in ("matmul", "conv") for m in n.region.nodes):
            from lamina.backends.triton import autotune

            gemm = autotune.choose(n, name, codes, risky_before, tune)
        out.append((n, render(n, name, codes, guarded=risky_before, gemm=gemm)))
        if any(m.op in RISKY for m in n.region.nodes):
            risky_before = True
    return out


def _plan(graph: Graph):
    return plan_memory(graph, scratch_need)


def render_levels(graph: Graph, tune: str | None = None) -> loops.Level:
    """The ``loops.Level`` tree of a fused graph: every level planned and rendered, kernel
    names unique across levels, index checks numbered as in ``graph`` (``error_sites``)."""
    codes = {id(m): k + 1 for k, m in enumerate(error_sites(graph))}
    names: set = set()

    def render_fn(g: Graph, plan):
        # a loop body's kernels run after its earlier steps: guarded if the body can fail
        return render_graph(g, plan, tune, codes, names,
                            risky_before=g is not graph and bool(error_sites(g)))

    return loops.plan_levels(graph, _plan, render_fn)


def _interpret_program(level: loops.Level, top: Graph):
    """The interpreter's program of ``level``, with programs for its loops' parts."""
    from lamina.backends.triton.interpret import InterpretProgram

    parts = {n: tuple(_interpret_program(p, top) for p in ps) for n, ps in level.loops.items()}
    return InterpretProgram(level.graph, level.plan, level.sources, parts, sites=top)


class TritonBackend:
    name = "triton"
    # conv is lowered by the backend itself (an implicit GEMM per conv kernel: conv.py), so the
    # im2col expansion (passes/expand_conv.py) is not among its passes; so are attention and
    # its gradient (flash-style kernels of their own: attention.py, each node a kernel alone,
    # as the fusion pass keeps it), so their decomposition (passes/expand.py) is not either;
    # pooling has no kernels of its own yet: where chains (passes/expand_pool.py)
    # loops stay loops: the runtime steps through them on the host (loops.py), their bodies
    # fused by these passes like the top level
    passes = (expand_pool, fuse_conv_kernels)

    def __init__(self):
        self.last_compile: dict = {}

    def compile(self, graph: Graph, dump_dir: str | None = None, first_index: int = 0,
                profile: bool = False):
        if profile:
            raise LaminaError("profile() is available on backend='llvm' only")
        aot.triton_version()
        tune = None
        if mode() == "device":
            from lamina.backends.triton import cuda

            tune = cuda.device().target
        level = render_levels(graph, tune)
        if dump_dir:
            k = first_index
            plans = "\n".join(lv.plan.text() if lv is level else
                              f"loop body @{lv.graph.name}:\n{lv.plan.text()}"
                              for lv in level.levels())
            write_atomic(os.path.join(dump_dir, f"{k:02d}_memory_plan.txt"), plans)
            for j, (_, src) in enumerate(level.all_sources()):
                for s in [*src.prologue, src]:
                    write_atomic(os.path.join(dump_dir, f"{k + 1:02d}_triton_{j:02d}_{s.name}.py"),
                                 s.source)
        return self._program(level, None)

    def _program(self, level: loops.Level, binaries: dict | None):
        sources = level.all_sources()
        if mode() == "interpret":
            program = _interpret_program(level, level.graph)
        else:
            from lamina.backends.triton import cuda
            from lamina.backends.triton.device import program_tree

            target = cuda.device().target
            if binaries is None:
                binaries = aot.compile_all([s for _, s in sources], [target])
            program = program_tree(level, lambda lv: _launches(lv.sources, binaries, target))
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
        from lamina.runtime.artifact import graph_digest

        # "graph" binds the kernels to the IR they were rendered from (checked on load)
        doc = {"format": ARTIFACT_FORMAT, "targets": list(wanted),
               "triton": aot.triton_version(), "graph": graph_digest(program.graph),
               "kernels": kernels}
        return {"kernels.json": json.dumps(doc).encode()}

    def load_program(self, graph: Graph, files: dict[str, bytes]):
        """The program of an artifact's ``kernels.json``: untrusted input, so every field is
        checked (``_source_from_json``, ``_binary_from_json``: types, ranges, Python that
        parses, cubins that are well-formed ELF, PTX that declares the kernel) before a source
        reaches Triton's interpreter or a cubin the CUDA driver. Errors name "kernels.json"
        and "the IR" (the artifact loader turns them into member names)."""
        from lamina.runtime.artifact import graph_digest

        raw = files.get("kernels.json")
        if raw is None:
            raise ArtifactError("kernels.json: missing (a triton artifact without its kernels)")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (ValueError, RecursionError) as e:  # JSON and UTF-8 errors are ValueErrors
            raise ArtifactError(f"kernels.json: not valid JSON ({e})") from None
        if not isinstance(doc, dict):
            raise ArtifactError("kernels.json: not a JSON object")
        if doc.get("format") != ARTIFACT_FORMAT:
            raise ArtifactError(f"kernels.json: triton artifact format {doc.get('format')!r}; "
                                f"this lamina reads format {ARTIFACT_FORMAT}")
        digest = graph_digest(graph)
        if doc.get("graph") != digest:
            raise ArtifactError(f"kernels.json: the kernels were rendered from another graph "
                                f"than the IR (IR hash {str(doc.get('graph'))[:16]} recorded, "
                                f"{digest[:16]} now): the IR was edited, or belongs to another "
                                "variant")
        kernels = doc.get("kernels")
        if not isinstance(kernels, list):
            raise ArtifactError("kernels.json: 'kernels' is missing or not a list")
        level = loops.plan_levels(graph, _plan)
        nodes = [(n, lv.plan) for lv in level.levels() for n in lv.plan.schedule
                 if n.op == "kernel"]
        if len(nodes) != len(kernels):
            raise ArtifactError(f"kernels.json: has {len(kernels)} kernels for a graph of "
                                f"{len(nodes)}")
        # Cubins and PTX are checked in full (about a millisecond each) where they can reach
        # the driver: the GPU's target; all of them without a GPU (tests, where time is cheap)
        if mode() == "device":
            from lamina.backends.triton import cuda

            deep = {cuda.device().target}
        else:
            deep = None
        sources, binaries = {}, {}
        for k, ((n, plan), entry) in enumerate(zip(nodes, kernels)):
            what = f"kernels.json: kernel {k}"
            if not isinstance(entry, dict) or set(entry) != {"source", "binaries"}:
                raise ArtifactError(f"{what}: not an object with 'source' and 'binaries'")
            src = _source_from_json(entry["source"], n, plan, what)
            sources[n] = src
            names = [s.name for s in [*src.prologue, src]]
            if not isinstance(entry["binaries"], dict) or not set(entry["binaries"]) <= set(names):
                raise ArtifactError(f"{what}: 'binaries' must map the kernel names {names} to "
                                    "lists of binaries")
            for name, bins in entry["binaries"].items():
                if name in binaries or not isinstance(bins, list):
                    raise ArtifactError(f"{what}: binaries of {name} repeated or not a list")
                binaries[name] = [_binary_from_json(b, name, f"{what} ({name})", deep)
                                  for b in bins]
        for lv in level.levels():
            lv.sources = [(n, sources[n]) for n in lv.plan.schedule if n.op == "kernel"]
        return self._program(level, binaries)


# --- reading an artifact's kernels.json (untrusted input) -----------------------------------

_KINDS = ("loop", "row", "gemm", "scatter", "scan", "attention")  # what codegen.classify names
_WARPS = (1, 2, 4, 8, 16, 32)
_MAX_GRID = 2 ** 31 - 1  # CUDA's limit on grid.x (lamina's grids are static numbers)
_MAX_SHARED = 1 << 20  # bytes; no GPU has more shared memory per block
_MAX_SCRATCH = 1 << 40


def _int_in(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _source_from_json(d, node: Node, plan, what: str, prologue: bool = False) -> KernelSource:
    """A KernelSource from untrusted JSON, checked against the kernel node it launches for."""
    import ast
    import keyword

    from lamina.backends.triton.scalar import POINTER

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{what}: source: {problem}")

    fields = {"name", "kind", "source", "signature", "args", "grid", "num_warps",
              "num_stages", "constexprs", "prologue"}
    if not isinstance(d, dict) or not set(d) <= fields or \
            not {"name", "kind", "source", "signature", "args", "grid"} <= set(d):
        raise bad("not an object with a kernel's fields")
    name = d["name"]
    # NOTE: the name becomes a file name and a module name when the source is imported
    if not isinstance(name, str) or not name.isidentifier() or keyword.iskeyword(name):
        raise bad(f"kernel name {name!r} is not an identifier")
    what = f"{what} ({name})"
    if d["kind"] not in _KINDS:
        raise bad(f"unknown kind {d['kind']!r}")
    if not isinstance(d["source"], str):
        raise bad("the Triton source is not text")
    try:
        tree = ast.parse(d["source"])
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise bad(f"the Triton source is not Python ({type(e).__name__}: {e})") from None
    if not any(isinstance(f, ast.FunctionDef) and f.name == name for f in tree.body):
        raise bad(f"the Triton source defines no function {name}")
    sig, args = d["signature"], d["args"]
    if not isinstance(sig, dict) or not all(isinstance(k, str) and k.isidentifier() and
                                            v in POINTER.values() for k, v in sig.items()):
        raise bad("the signature must map argument names to pointer types")
    if not isinstance(args, list) or len(args) != len(sig):
        raise bad(f"{len(sig)} signature entries but arguments {args!r}")
    refs = []
    for a in args:
        ok = isinstance(a, list) and a and (
            (a[0] == "operand" and len(a) == 2 and _int_in(a[1], 0, len(node.inputs) - 1)) or
            (a[0] in ("output", "error") and len(a) == 1) or
            (a[0] == "scratch" and len(a) == 1 and node in plan.scratch))
        if not ok:
            raise bad(f"argument {a!r} names nothing the kernel node has")
        refs.append(tuple(a))
    grid = d["grid"]
    if not isinstance(grid, list) or len(grid) != 3 or \
            not all(_int_in(g, 0, _MAX_GRID) for g in grid):
        raise bad(f"grid {grid!r} is not three numbers of programs")
    warps, stages = d.get("num_warps", 4), d.get("num_stages", 3)
    if warps not in _WARPS or isinstance(warps, bool) or not _int_in(stages, 0, 16):
        raise bad(f"num_warps {warps!r} / num_stages {stages!r} out of range")
    consts = d.get("constexprs", {})
    if not isinstance(consts, dict) or not all(
            isinstance(k, str) and k.isidentifier() and _int_in(v, -2 ** 63, 2 ** 63 - 1)
            for k, v in consts.items()):
        raise bad("constexprs must map names to integers")
    pro = d.get("prologue", [])
    if not isinstance(pro, list) or (prologue and pro):
        raise bad("prologue must be a list of kernels (without prologues of their own)")
    return KernelSource(name, d["kind"], d["source"], dict(sig), refs, tuple(grid), warps,
                        stages, dict(consts),
                        [_source_from_json(p, node, plan, what, prologue=True) for p in pro])


def _binary_from_json(d, name: str, what: str, deep: set[str] | None = None) -> KernelBinary:
    """A KernelBinary from untrusted JSON. For targets in ``deep`` (None: all), its cubin must
    be a well-formed CUDA ELF defining the kernel for the named target, its PTX must declare
    the kernel with the recorded parameters."""
    import base64
    import binascii
    import re

    from lamina.backends import objcheck
    from lamina.backends.triton.cuda import ptx_params

    def bad(problem: str) -> ArtifactError:
        return ArtifactError(f"{what}: binary: {problem}")

    required = {"name", "target", "cubin", "ptx", "num_warps", "shared", "params"}
    optional = {"global_scratch_size", "global_scratch_align", "profile_scratch_size",
                "profile_scratch_align", "triton_version"}
    if not isinstance(d, dict) or not required <= set(d) <= required | optional:
        raise bad("not an object with a binary's fields")
    if d["name"] != name:
        raise bad(f"for kernel {d['name']!r}, not {name}")
    target = d["target"]
    try:
        arch = aot.parse_target(target) if isinstance(target, str) else None
    except LaminaError:
        arch = None
    if arch is None:
        raise bad(f"unknown target {target!r}")
    what = f"{what}: {target}"
    if d["num_warps"] not in _WARPS or isinstance(d["num_warps"], bool) or \
            not _int_in(d["shared"], 0, _MAX_SHARED):
        raise bad(f"num_warps {d['num_warps']!r} / shared memory {d['shared']!r} out of range")
    for k in ("global_scratch_size", "profile_scratch_size"):
        if not _int_in(d.get(k, 0), 0, _MAX_SCRATCH):
            raise bad(f"{k} {d.get(k)!r} out of range")
    for k in ("global_scratch_align", "profile_scratch_align"):
        a = d.get(k, 1)
        if not _int_in(a, 1, 1 << 16) or a & (a - 1):
            raise bad(f"{k} {a!r} is not a power of two")
    if not isinstance(d.get("triton_version", ""), str):
        raise bad("triton_version is not text")
    try:
        cubin = base64.b64decode(d["cubin"], validate=True) if isinstance(d["cubin"], str) \
            else None
    except (binascii.Error, ValueError):
        cubin = None
    if cubin is None:
        raise bad("the cubin is not base64 text")
    ptx, params = d["ptx"], d["params"]
    if not isinstance(ptx, str) or not isinstance(params, list) or \
            not all(isinstance(p, str) for p in params):
        raise bad("the PTX is not text or the parameters not a list of types")
    if deep is not None and target not in deep:
        return KernelBinary(name, target, cubin, ptx, d["num_warps"], d["shared"], list(params),
                            **{k: d[k] for k in optional if k in d})
    obj = objcheck.check_object(cubin, f"{what}: cubin", etype=objcheck.ET_EXEC,
                                machine=objcheck.EM_CUDA, functions=(name,))
    # The SM version in e_flags: bits 0-7 in ABI version 7 cubins, bits 8-15 in version 8.
    sm = {7: obj.flags & 0xFF, 8: (obj.flags >> 8) & 0xFF}.get(obj.abi_version)
    if sm is not None and sm != arch:
        raise bad(f"the cubin is for sm_{sm}, not {target}")
    m = re.search(r"^\s*\.target\s+sm_(\d+)", ptx, re.MULTILINE)
    if m is None or int(m.group(1)) != arch:
        raise bad(f"the PTX is not for {target}")
    try:
        declared = ptx_params(ptx, name)
    except LaminaError as e:
        raise bad(f"the PTX: {e.message}") from None
    if declared != params:
        raise bad(f"parameters {params!r} recorded, the PTX declares {declared}")
    return KernelBinary(name, target, cubin, ptx, d["num_warps"], d["shared"], list(params),
                        **{k: d[k] for k in optional if k in d})


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
