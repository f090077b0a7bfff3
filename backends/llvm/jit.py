"""The LLVM toolchain for the CPU backend: the host target, the O3 pipeline (new pass manager),
MCJIT engines, and the thread count of parallel code (the thread pool it calls is ``pool.py``;
JIT code also calls libc and libm).

Everything llvmlite is imported here, lazily from the rest of lamina (``import lamina`` never
imports llvmlite).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import llvmlite
import llvmlite.binding as llvm
from llvmlite import ir

from lamina.ir import config
from lamina.ir.errors import LaminaError

# Options for LLVM's code generation (part of cache keys: they change the code).
LLVM_OPTIONS = (
    # A second, narrower vector loop for remainders: more code (compile time) than it saves on
    # kernels whose inner extents are mostly multiples of the vector width.
    "--enable-epilogue-vectorization=false",
    # Fully unrolling a row sweep (1024 floats = 64 vectors) makes LLVM keep the loaded row in
    # registers and stack spills for the next sweep instead of reloading it from L1.
    "--unroll-full-max-count=4",
    # Two vectors per iteration: enough to hide latencies in our (long-bodied) fused loops;
    # four made LLVM shuffle registers instead (measured: layernorm -5%, gelu -9% time).
    "--force-vector-interleave=2",
    # Loop strength reduction was half of code generation time (0.05 of 0.1 s for the MLP
    # step, most of it on simple epilogue loops) and changed no benchmark's speed measurably.
    "--disable-lsr",
)


@functools.cache
def _init() -> None:
    # NOTE: llvm.initialize() raises in current llvmlite; the native target is enough.
    llvm.initialize_native_target()
    llvm.initialize_native_asmprinter()
    for opt in LLVM_OPTIONS:
        llvm.set_option("", opt)


@dataclass(frozen=True)
class HostTarget:
    """What code is generated for: triple, CPU name and feature string (part of cache keys)."""

    triple: str
    cpu: str
    features: str

    @property
    def vector_bits(self) -> int:
        """Width of the widest float vector registers the features allow."""
        feats = set(self.features.split(","))
        if "+avx512f" in feats:
            return 512
        if "+avx2" in feats or "+avx" in feats:
            return 256
        return 128

    @property
    def has_fma(self) -> bool:
        return "+fma" in set(self.features.split(","))

    def key(self) -> str:
        return f"{self.triple}|{self.cpu}|{self.features}"


@functools.cache
def host() -> HostTarget:
    _init()
    return HostTarget(llvm.get_process_triple(), llvm.get_host_cpu_name(),
                      llvm.get_host_cpu_features().flatten())


def new_target_machine():
    """A fresh TargetMachine for the host CPU at -O3."""
    _init()
    h = host()
    target = llvm.Target.from_triple(h.triple)
    return target.create_target_machine(cpu=h.cpu, features=h.features, opt=3,
                                        reloc="pic", codemodel="jitdefault")


@functools.cache
def target_machine():
    """The shared TargetMachine for optimizing and emitting object code.

    NOTE: never hand this one to an execution engine: MCJIT takes ownership of its target
    machine and frees it with the engine (``Engine`` makes its own).
    """
    return new_target_machine()


def new_module(name: str) -> ir.Module:
    """An llvmlite module set up for the host (triple and data layout)."""
    m = ir.Module(name=name)
    m.triple = host().triple
    m.data_layout = str(target_machine().target_data)
    return m


def finalize_text(m: ir.Module) -> str:
    """The module's LLVM IR text with target-cpu/target-features string attributes attached."""
    text = str(m)
    h = host()
    attrs = (f'attributes #9999 = {{ "target-cpu"="{h.cpu}" "target-features"="{h.features}" '
             f'"prefer-vector-width"="{h.vector_bits}" "min-legal-vector-width"="0" }}')
    out = []
    for line in text.splitlines():
        if line.startswith("define ") and "#9999" not in line:
            # llvmlite prints the opening brace on the next line (or at the end of this one)
            if line.rstrip().endswith("{"):
                line = line.rstrip()[:-1].rstrip() + " #9999 {"
            else:
                line = line.rstrip() + " #9999"
        out.append(line)
    return "\n".join(out) + "\n" + attrs + "\n"


# How often this process ran each expensive LLVM step (tests use it to prove a cache hit or a
# loaded artifact generated and optimized nothing).
STATS = {"optimize": 0, "emit_object": 0}


@dataclass
class Optimized:
    module: object  # llvm.ModuleRef
    text_before: str
    text_after: str
    seconds_parse: float
    seconds_opt: float


def optimize(text: str, keep_text: bool = False, loops: bool = True,
             level: int = 3) -> Optimized:
    """Parse, verify and optimize LLVM IR text for the host (new pass manager, O``level``).

    ``loops=False`` skips loop vectorization and unrolling: for code that is vectorized and
    unrolled by hand already (the GEMM), where they cost compile time and gain nothing.
    """
    _init()
    t0 = time.perf_counter()
    try:
        mod = llvm.parse_assembly(text)
        mod.verify()
    except RuntimeError as e:
        raise LaminaError(f"generated LLVM IR is invalid (a lamina bug): {e}") from None
    t1 = time.perf_counter()
    pto = llvm.create_pipeline_tuning_options(speed_level=level)
    pto.loop_vectorization = loops
    pto.slp_vectorization = loops
    pto.loop_unrolling = loops
    pb = llvm.create_pass_builder(target_machine(), pto)
    mpm = pb.getModulePassManager()
    mpm.run(mod, pb)
    STATS["optimize"] += 1
    t2 = time.perf_counter()
    return Optimized(mod, text if keep_text else "", str(mod) if keep_text else "",
                     t1 - t0, t2 - t1)


# --- threads ------------------------------------------------------------------------------------


@functools.cache
def threads() -> int:
    """Threads for parallel kernels and the GEMM (the submitting thread and the pool's workers,
    ``pool.py``): LAMINA_NUM_THREADS, else the usable cores."""
    raw = os.environ.get("LAMINA_NUM_THREADS", "").strip()
    if raw:
        return config.num_threads()  # validated: a ConfigError names the variable
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    return {"llvmlite": llvmlite.__version__,
            "llvm": ".".join(map(str, llvm.llvm_version_info)),
            "llvm_options": " ".join(LLVM_OPTIONS)}


class Engine:
    """An MCJIT engine holding one optimized module (or one object file)."""

    def __init__(self, module=None, object_code: bytes | None = None, runtime: bool = True):
        """``runtime``: make sure the thread pool is loaded and its symbols registered first
        (the code may call it); False only for the pool's own engine."""
        _init()
        if runtime:
            from lamina.backends.llvm import pool

            pool.library()
        tm = new_target_machine()  # owned (and freed) by the engine
        if object_code is not None:
            # An empty module, then the object file: no LLVM IR is generated or optimized.
            empty = llvm.parse_assembly(f'target triple = "{host().triple}"')
            self.ee = llvm.create_mcjit_compiler(empty, tm)
            self.ee.add_object_file(llvm.ObjectFileRef.from_data(object_code))
        else:
            self.ee = llvm.create_mcjit_compiler(module, tm)
        self.ee.finalize_object()
        self.module = module

    def has(self, name: str) -> bool:
        return bool(self.ee.get_function_address(name))

    def address(self, name: str) -> int:
        addr = self.ee.get_function_address(name)
        if not addr:
            raise LaminaError(f"JIT: function {name!r} not found")
        return addr


def emit_object(module) -> bytes:
    STATS["emit_object"] += 1
    return target_machine().emit_object(module)


def emit_assembly(module) -> str:
    return target_machine().emit_assembly(module)
