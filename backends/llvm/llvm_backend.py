"""The CPU backend object: fuse -> plan memory -> LLVM IR -> O3 -> object code -> MCJIT.

Compiled objects are cached on disk (``cache.py``); the shared GEMM library is compiled once per
machine and cached the same way. Artifacts carry both object files, so loading one runs no
LLVM code generation or optimization at all.
"""

from __future__ import annotations

import functools
import json
import os
import time

from llvmlite import binding as llvm

from lamina.backends.llvm import gemm, jit
from lamina.backends.llvm.codegen import CODEGEN_VERSION, Codegen
from lamina.backends.llvm.kernels import scratch_need
from lamina.backends.llvm.program import LLVMProgram
from lamina.ir.errors import ArtifactError
from lamina.ir.graph import Graph
from lamina.ir.printer import print_graph
from lamina.passes.fuse import fuse_kernels
from lamina.passes.manager import write_atomic
from lamina.passes.memory import plan_memory
from lamina.runtime import cache as cache_mod

STATS = {"compiled": 0, "cache_hits": 0, "loaded": 0}


def _lamina_version() -> str:
    from lamina import __version__

    return __version__


def versions() -> dict[str, str]:
    return {**jit.versions(), "lamina": _lamina_version(), "codegen": CODEGEN_VERSION}


class GemmLib:
    """One dtype's GEMM loaded into this process; its symbol is registered for JIT code."""

    def __init__(self, lib: gemm.GemmLibrary, dtype: str):
        self.lib = lib
        self.dtype = dtype
        llvm.add_symbol(gemm.GEMM_SYMBOL[dtype], lib.addresses[dtype])


@functools.cache
def gemm_library(dtype: str) -> GemmLib:
    """The GEMM for ``dtype`` ("f32"/"f64"): from the disk cache, or compiled (once per
    machine and lamina version; about a quarter second)."""
    with open(gemm.__file__, "rb") as f:  # any change to the GEMM's source recompiles it
        source = f.read().decode()
    parts = cache_mod.key_parts(source, f"gemm-{dtype}", versions(), jit.host().key())
    c = cache_mod.Cache()
    obj = c.get(f"lamina_gemm_{dtype}", parts)
    if obj is not None:
        return GemmLib(gemm.GemmLibrary.from_object(obj), dtype)
    lib = gemm.build_library(dtypes=(dtype,))
    c.put(f"lamina_gemm_{dtype}", parts, lib.object_code)
    return GemmLib(lib, dtype)


def gemm_dtypes(graph: Graph) -> list[str]:
    """The GEMMs a fused graph calls."""
    out = set()
    for n in graph.nodes:
        for m in (n.region.nodes if n.region is not None else ()):
            if m.op == "matmul" and m.dtype.is_float:
                out.add({32: "f32", 64: "f64"}[m.dtype.bits])
    return sorted(out)


class LLVMBackend:
    name = "llvm"
    passes = (fuse_kernels,)

    def __init__(self):
        self.cache = None
        self.last_compile: dict = {}

    def compile(self, graph: Graph, dump_dir: str | None = None, first_index: int = 0,
                profile: bool = False):
        t0 = time.perf_counter()
        plan = plan_memory(graph, scratch_need)
        libs = tuple(gemm_library(d) for d in gemm_dtypes(graph))
        ir_text = print_graph(graph, locations=False)  # moving the source keeps the key
        kind = "graph+profile" if profile else "graph"
        parts = cache_mod.key_parts(ir_text, kind, versions(), jit.host().key())
        cache = cache_mod.Cache()
        obj = None if dump_dir else cache.get(graph.name, parts)
        info = {"cache": "hit" if obj is not None else f"miss ({cache.last_miss})"}
        if obj is None:
            module = Codegen(graph, plan, graph.name, profile=profile).build()
            text = jit.finalize_text(module)
            opt = jit.optimize(text, keep_text=bool(dump_dir))
            obj = jit.emit_object(opt.module)
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
        program = LLVMProgram(graph, plan, jit.Engine(object_code=obj), obj, libs,
                              profiled=profile)
        info["seconds"] = time.perf_counter() - t0
        self.last_compile = info
        program.compile_info = info
        return program

    # --- artifacts --------------------------------------------------------------------------

    def save_program(self, program: LLVMProgram) -> dict[str, bytes]:
        target = {"host": jit.host().key(), "cpu": jit.host().cpu, **versions()}
        files = {"kernels.o": program.object_code, "target.json": json.dumps(target).encode()}
        for lib in program.libraries:
            files[f"gemm.{lib.dtype}.o"] = lib.lib.object_code
        return files

    def load_program(self, graph: Graph, files: dict[str, bytes]) -> LLVMProgram:
        try:
            target = json.loads(files["target.json"])
            obj = files["kernels.o"]
        except (KeyError, ValueError) as e:
            raise ArtifactError(f"llvm artifact without its object code ({e})") from None
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
        libs = []
        for d in gemm_dtypes(graph):
            blob = files.get(f"gemm.{d}.o")
            if blob is None:
                raise ArtifactError(f"llvm artifact without its {d} GEMM object")
            libs.append(GemmLib(gemm.GemmLibrary.from_object(blob), d))
        plan = plan_memory(graph, scratch_need)
        STATS["loaded"] += 1
        return LLVMProgram(graph, plan, jit.Engine(object_code=obj), obj, tuple(libs))


backend = LLVMBackend()
