"""The CPU backend object: fuse -> plan memory -> LLVM IR -> O3 -> object code -> MCJIT.

Compiled objects are cached on disk (``cache.py``); the shared GEMM library is compiled once per
machine and cached the same way. Artifacts carry both object files, so loading one runs no
LLVM code generation or optimization at all.

Object code from an artifact or from the cache is untrusted input: MCJIT aborts or crashes the
process on a damaged object, so every object is checked (``lamina.backends.objcheck``: ELF
structure, the symbols the program needs, every symbol it imports resolvable here) before an
engine sees it. An artifact's ``target.json`` also records the hash of the IR the code was
compiled from and a sha256 of every object, so an IR edited or swapped after the fact is
refused instead of running code built for other shapes.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import json
import os
import time

from llvmlite import binding as llvm

from lamina.backends import objcheck
from lamina.backends.llvm import gemm, gemm_gather, jit, pool
from lamina.backends.llvm.codegen import CODEGEN_VERSION, ENTRY, Codegen, source_digest
from lamina.backends.llvm.loops import LoopPlanner
from lamina.backends.llvm.lower import storage_type
from lamina.backends.llvm.output_views import output_views
from lamina.backends.llvm.program import LLVMProgram
from lamina.ir import config
from lamina.ir.errors import ArtifactError, LaminaError
from lamina.ir.graph import Graph
from lamina.ir.printer import print_graph
from lamina.passes.expand_conv import expand_conv
from lamina.passes.fuse import fuse_kernels_gather
from lamina.passes.manager import write_atomic
from lamina.passes.memory import plan_memory
from lamina.runtime import cache as cache_mod
from lamina.runtime.artifact import graph_digest

STATS = {"compiled": 0, "cache_hits": 0, "loaded": 0}


def _lamina_version() -> str:
    from lamina import __version__

    return __version__


def versions() -> dict[str, str]:
    return {**jit.versions(), "lamina": _lamina_version(),
            "codegen": f"{CODEGEN_VERSION}-{source_digest()}"}


# Symbols RuntimeDyld provides itself rather than looking them up.
_LINKER_SYMBOLS = frozenset({"_GLOBAL_OFFSET_TABLE_"})


@functools.cache
def _process() -> ctypes.CDLL:
    return ctypes.CDLL(None)


def _resolvable(name: str) -> bool:
    """Whether MCJIT will find ``name``: registered with ``llvm.add_symbol`` (the GEMMs, the
    thread pool), or global in the process (libc, libm)."""
    if name in _LINKER_SYMBOLS or llvm.address_of_symbol(name):
        return True
    try:
        _process()[name]
    except AttributeError:
        return False
    return True


def check_object(data: bytes, what: str, functions: tuple[str, ...]) -> objcheck.ElfObject:
    """Check object code for this machine before MCJIT sees it: ELF structure, ``functions``
    defined (ArtifactError("<what>: ...") otherwise)."""
    return objcheck.check_object(data, what, machine=objcheck.host_machine(),
                                 functions=functions)


def check_imports(obj: objcheck.ElfObject, what: str) -> None:
    """Every symbol ``obj`` imports must resolve here: MCJIT aborts the process on one that
    does not. Call it after the GEMMs and the thread pool the object calls are registered."""
    missing = [n for n in obj.undefined() if not _resolvable(n)]
    if missing:
        raise ArtifactError(f"{what}: needs {', '.join(missing[:5])}, which this process does "
                            "not provide")


def _check_fresh(data: bytes, what: str, functions: tuple[str, ...]) -> None:
    """With LAMINA_VERIFY (on in the tests), check what LLVM just emitted as an artifact's
    object would be checked: a check that refuses good code would make every load fail."""
    if not config.verify:
        return
    try:
        check_imports(check_object(data, what, functions), what)
    except ArtifactError as e:
        raise LaminaError(f"lamina bug: freshly compiled object code fails the load-time "
                          f"checks: {e.message}") from None


def _cached_object_check(what: str, functions: tuple[str, ...]):
    """The check a cache hit must pass (a failing entry is a miss and gets rebuilt)."""
    def check(data: bytes) -> None:
        check_imports(check_object(data, what, functions), what)
    return check


def _fresh_libraries(data: bytes, what: str) -> tuple[GemmLib, ...]:
    """The GEMM entries freshly compiled object code calls, loaded."""
    try:
        obj = check_object(data, what, (ENTRY,))
    except ArtifactError as e:
        raise LaminaError(f"lamina bug: freshly compiled object code fails the load-time "
                          f"checks: {e.message}") from None
    return gemm_libraries(obj)


# The pool's object is read from the cache by pool.py: checked like the others.
cache_mod.register_check("pool", _cached_object_check("cached lamina_pool", pool.SYMBOLS))


class GemmLib:
    """One GEMM entry of one dtype (``gemm.GEMM_SYMBOL``, or with ``gather``
    ``gemm.GATHER_SYMBOL``) loaded into this process; its symbol is registered for JIT code."""

    def __init__(self, lib: gemm.GemmLibrary, dtype: str, gather: bool = False):
        self.lib = lib
        self.dtype = dtype
        self.gather = gather
        self.symbol = _gemm_symbol(dtype, gather)
        addresses = lib.gather_addresses if gather else lib.addresses
        llvm.add_symbol(self.symbol, addresses[dtype])

    @property
    def file(self) -> str:
        """Its object's name in an artifact."""
        return _gemm_file(self.dtype, self.gather)


def _gemm_symbol(dtype: str, gather: bool) -> str:
    return (gemm.GATHER_SYMBOL if gather else gemm.GEMM_SYMBOL)[dtype]


def _gemm_file(dtype: str, gather: bool) -> str:
    return f"gemm{'_gather' if gather else ''}.{dtype}.o"


# The GEMM entries object code may import: (dtype, gather) by symbol.
_GEMM_ENTRIES = {_gemm_symbol(d, g): (d, g) for d in gemm.GEMM_SYMBOL for g in (False, True)}


@functools.cache
def gemm_library(dtype: str, gather: bool = False) -> GemmLib:
    """The GEMM entry for ``dtype`` ("f32"/"f64"; ``gather``: the offset-table entry): from
    the disk cache, or compiled (once per machine and lamina version; about a tenth of a
    second, a quarter with ``gather``)."""
    pool.library()  # the GEMM calls the thread pool: registered before imports are checked
    source = ""
    for path in (gemm.__file__, gemm_gather.__file__):  # a change to the GEMM's source
        with open(path, "rb") as f:                      # recompiles it
            source += f.read().decode()
    kind = f"gemm-{dtype}" + ("-gather" if gather else "")
    parts = cache_mod.key_parts(source, kind, versions(), jit.host().key())
    c = cache_mod.Cache()
    symbol = _gemm_symbol(dtype, gather)
    obj = c.get(symbol, parts, check=_cached_object_check(f"cached {symbol}", (symbol,)))
    if obj is not None:
        return GemmLib(gemm.GemmLibrary.from_object(obj), dtype, gather)
    lib = gemm.build_library(dtypes=(dtype,), entries=(gather,))
    _check_fresh(lib.object_code, symbol, (symbol,))
    c.put(symbol, parts, lib.object_code)
    return GemmLib(lib, dtype, gather)


def gemm_libraries(obj: objcheck.ElfObject) -> tuple[GemmLib, ...]:
    """The GEMM entries object code calls (its imports name them), loaded: before its other
    imports are checked, and before an engine loads it."""
    names = set(obj.undefined())
    return tuple(gemm_library(*entry) for sym, entry in _GEMM_ENTRIES.items() if sym in names)


def gemm_dtypes(graph: Graph) -> list[str]:
    """The GEMMs a fused graph calls (its loops' bodies included)."""
    out = set()
    for n in graph.nodes:
        if n.region is not None and n.op != "kernel":
            out.update(gemm_dtypes(n.region))
            continue
        for m in (n.region.nodes if n.region is not None else ()):
            if m.op == "matmul" and m.dtype.is_float:
                storage_type(m.dtype)  # float16, bfloat16: a clear error, as for other ops
                out.add({32: "f32", 64: "f64"}[m.dtype.bits])
    return sorted(out)


class LLVMBackend:
    name = "llvm"
    # conv: an im2col gather the GEMM reads through offset tables (an implicit GEMM)
    passes = (expand_conv, fuse_kernels_gather)

    def __init__(self):
        self.cache = None
        self.last_compile: dict = {}

    def compile(self, graph: Graph, dump_dir: str | None = None, first_index: int = 0,
                profile: bool = False):
        t0 = time.perf_counter()
        pool.library()  # kernels call the thread pool: registered before imports are checked
        lowered, views = output_views(graph)
        loops = LoopPlanner()
        plan = plan_memory(lowered, loops.need)
        gemm_dtypes(graph)  # float16/bfloat16 GEMMs: a clear error before code generation
        ir_text = print_graph(lowered, locations=False)  # moving the source keeps the key
        kind = "graph+profile" if profile else "graph"
        parts = cache_mod.key_parts(ir_text, kind, versions(), jit.host().key())
        cache = cache_mod.Cache()
        what = f"object of @{graph.name}"
        hit: dict = {}

        def check(data: bytes) -> None:  # the GEMM entries it calls loaded before its imports
            obj = check_object(data, f"cached {what}", (ENTRY,))
            hit["libs"] = gemm_libraries(obj)
            check_imports(obj, f"cached {what}")

        obj = None if dump_dir else cache.get(graph.name, parts, check=check)
        info = {"cache": "hit" if obj is not None else f"miss ({cache.last_miss})"}
        profiled = None
        if obj is None:
            cg = Codegen(lowered, plan, graph.name, profile=profile, loops=loops)
            module = cg.build()
            profiled = cg.profiled
            text = jit.finalize_text(module)
            opt = jit.optimize(text, keep_text=bool(dump_dir))
            obj = jit.emit_object(opt.module)
            # the GEMM entries it calls: loaded after code generation (its imports name them)
            libs = _fresh_libraries(obj, what)
            _check_fresh(obj, what, (ENTRY,))
            info.update(parse_s=opt.seconds_parse, optimize_s=opt.seconds_opt)
            STATS["compiled"] += 1
            if dump_dir:
                k = first_index
                write_atomic(os.path.join(dump_dir, f"{k:02d}_memory_plan.txt"), plan.text())
                write_atomic(os.path.join(dump_dir, f"{k + 1:02d}_llvm_pre_opt.ll"),
                             opt.text_before)
                write_atomic(os.path.join(dump_dir, f"{k + 2:02d}_llvm_opt.ll"), opt.text_after)
                write_atomic(os.path.join(dump_dir, f"{k + 3:02d}_llvm.s"),
                             jit.emit_assembly(opt.module))
            cache.put(graph.name, parts, obj)
        else:
            STATS["cache_hits"] += 1
            libs = hit["libs"]  # loaded by the check
        if profile and profiled is None:
            cg = Codegen(lowered, plan, graph.name, profile=profile, loops=loops)
            cg.build()  # NOTE: only for the list of timed steps, which the object follows
            profiled = cg.profiled
        program = LLVMProgram(lowered, plan, jit.Engine(object_code=obj), obj, libs,
                              profiled=profiled if profile else None, views=views,
                              source=graph)
        info["seconds"] = time.perf_counter() - t0
        self.last_compile = info
        program.compile_info = info
        return program

    # --- artifacts --------------------------------------------------------------------------
    # Files: kernels.o (the program), gemm.<dtype>.o and gemm_gather.<dtype>.o (each GEMM entry
    # it calls: kernels.o's imports name them), pool.o (the thread pool, pool.py: loaded unless
    # this process has one) and target.json (what the code was compiled for and from: host,
    # versions, the IR's hash, each object's sha256).
    # Errors name the file ("kernels.o: ...") and the IR as "the IR": the artifact loader
    # rewrites both into member names.

    def save_program(self, program: LLVMProgram) -> dict[str, bytes]:
        files = {"kernels.o": program.object_code, "pool.o": pool.library().object_code}
        for lib in program.libraries:
            files[lib.file] = lib.lib.object_code
        target = {"host": jit.host().key(), "cpu": jit.host().cpu, **versions(),
                  "graph": graph_digest(program.graph),
                  "objects": {f: hashlib.sha256(d).hexdigest() for f, d in files.items()}}
        files["target.json"] = json.dumps(target).encode()
        return files

    def load_program(self, graph: Graph, files: dict[str, bytes]) -> LLVMProgram:
        target = _read_target(files)
        here = {"host": jit.host().key(), **versions()}
        if target.get("host") != here["host"]:
            raise ArtifactError(f"the artifact was compiled for another CPU ({target.get('cpu')} "
                                f"with other features); this machine is {jit.host().cpu}: "
                                "recompile it here from the source")
        for key in ("codegen", "lamina"):
            if target.get(key) != here[key]:
                raise ArtifactError(f"the artifact was compiled by lamina {target.get('lamina')} "
                                    f"(code generator {target.get('codegen')}); this is "
                                    f"{here['lamina']} ({here['codegen']}): recompile it")
        # Structure first (a damaged object must never reach MCJIT), then the binding of the
        # objects to the IR, then imports (the GEMMs must be registered before kernels.o's).
        if "kernels.o" not in files:
            raise ArtifactError("kernels.o: missing (an llvm artifact without its object code)")
        kernels = check_object(files["kernels.o"], "kernels.o", (ENTRY,))
        if "pool.o" not in files:
            raise ArtifactError("pool.o: missing (the thread pool the code calls)")
        pool_obj = check_object(files["pool.o"], "pool.o", pool.SYMBOLS)
        entries = [e for sym, e in _GEMM_ENTRIES.items() if sym in set(kernels.undefined())]
        gemms = {}
        for d, g in entries:
            fname = _gemm_file(d, g)
            if fname not in files:
                raise ArtifactError(f"{fname}: missing (the code calls the {d} GEMM"
                                    f"{' through offset tables' if g else ''})")
            gemms[d, g] = check_object(files[fname], fname, (_gemm_symbol(d, g),))
        _check_binding(graph, target, files,
                       ["kernels.o", "pool.o", *(_gemm_file(d, g) for d, g in entries)])
        if not pool.loaded():  # else this process's pool serves (one per process)
            check_imports(pool_obj, "pool.o")
            pool.library(files["pool.o"])
        libs = []
        for d, g in entries:
            fname = _gemm_file(d, g)
            check_imports(gemms[d, g], fname)
            libs.append(GemmLib(gemm.GemmLibrary.from_object(files[fname]), d, g))
        check_imports(kernels, "kernels.o")
        obj = files["kernels.o"]
        lowered, views = output_views(graph)  # as compile() built it
        plan = plan_memory(lowered, LoopPlanner().need)
        STATS["loaded"] += 1
        return LLVMProgram(lowered, plan, jit.Engine(object_code=obj), obj, tuple(libs),
                           views=views, source=graph)


def _read_target(files: dict[str, bytes]) -> dict:
    raw = files.get("target.json")
    if raw is None:
        raise ArtifactError("target.json: missing (an llvm artifact without its target)")
    try:
        target = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ArtifactError(f"target.json: not valid JSON ({e}): what the object code was "
                            "compiled for and from is unknown") from None
    if not isinstance(target, dict):
        raise ArtifactError("target.json: not a JSON object: what the object code was compiled "
                            "for and from is unknown")
    return target


def _check_binding(graph: Graph, target: dict, files: dict[str, bytes],
                   objects: list[str]) -> None:
    """The objects must be the ones compiled from this IR: target.json records the IR's hash
    and each object's sha256 at save time (a mismatch: the IR was edited, or it, or an object,
    belongs to another variant or artifact)."""
    recorded = target.get("graph")
    if not isinstance(recorded, str):
        raise ArtifactError("target.json: records no hash of the IR (saved by an older lamina): "
                            "save the artifact again")
    digest = graph_digest(graph)
    if recorded != digest:
        raise ArtifactError(f"target.json: the object code was compiled from another graph "
                            f"than the IR (IR hash {recorded[:16]} recorded, {digest[:16]} "
                            "now): the IR was edited, or belongs to another variant")
    sums = target.get("objects")
    if not isinstance(sums, dict):
        raise ArtifactError("target.json: records no checksums of the object files")
    for f in objects:
        if sums.get(f) != hashlib.sha256(files[f]).hexdigest():
            raise ArtifactError(f"{f}: not the object compiled with this IR (its sha256 differs "
                                "from the one target.json records)")


backend = LLVMBackend()
