"""What the parts of the GPU backend hand each other: rendered kernels, compiled binaries and the
launch list of a planned graph. Plain data (JSON-able through ``to_json``/``from_json``), so an
artifact built on a machine without a GPU holds exactly what the GPU runtime loads.

    codegen.render(kernel node)      -> KernelSource   (readable Triton source, static grid)
    aot.compile_source(src, target)  -> KernelBinary   (PTX + cubin for "sm_80", "sm_90", ...)
    device.DeviceProgram / interpret.InterpretProgram run a list of Launch over a MemoryPlan

Every shape is static (a graph is compiled per input signature), so kernels take pointers only:
sizes, strides and the grid are constants of the source.
"""

from __future__ import annotations

import base64
from dataclasses import asdict, dataclass, field

# What each pointer argument of a kernel points at, in order:
#   ("operand", k)  the kernel node's k-th input (a top-level value: parameter, literal, kernel)
#   ("output",)     the kernel node's own result
#   ("scratch",)    the kernel's scratch bytes from the memory plan (MemoryPlan.scratch)
#   ("error",)      a device int32: 0, or the 1-based error site (lamina's error_sites order)
ArgRef = tuple


@dataclass
class KernelSource:
    name: str  # the @triton.jit function in ``source`` (a Python identifier)
    kind: str  # "loop", "row", "gemm", "scatter"
    source: str  # a Python module defining ``name`` (``import triton`` etc. included)
    signature: dict[str, str]  # argument -> Triton type ("*fp32", "*i8", ...), pointers only
    args: list[ArgRef]  # one per signature entry, same order
    grid: tuple[int, int, int]
    num_warps: int = 4
    num_stages: int = 3
    constexprs: dict[str, int] = field(default_factory=dict)
    # kernels run before this one in the same launch (scatter: the copy of the base first)
    prologue: list[KernelSource] = field(default_factory=list)

    def to_json(self) -> dict:
        d = asdict(self)
        d["args"] = [list(a) for a in self.args]
        d["grid"] = list(self.grid)
        d["prologue"] = [p.to_json() for p in self.prologue]
        return d

    @staticmethod
    def from_json(d: dict) -> KernelSource:
        d = dict(d)
        d["args"] = [tuple(a) for a in d["args"]]
        d["grid"] = tuple(d["grid"])
        d["prologue"] = [KernelSource.from_json(p) for p in d.get("prologue", [])]
        return KernelSource(**d)


@dataclass
class KernelBinary:
    """One kernel compiled for one target by Triton's compiler."""

    name: str  # the symbol in the cubin (Triton keeps the function's name)
    target: str  # "sm_90"
    cubin: bytes
    ptx: str
    num_warps: int
    shared: int  # bytes of dynamic shared memory the launch must give
    params: list[str]  # PTX parameter types of the entry, in order (".u64", ".u32", ...)
    # Triton appends scratch pointers after the user's: (global, profile) sizes in bytes
    global_scratch_size: int = 0
    global_scratch_align: int = 1
    profile_scratch_size: int = 0
    profile_scratch_align: int = 1
    triton_version: str = ""

    def to_json(self) -> dict:
        d = asdict(self)
        d["cubin"] = base64.b64encode(self.cubin).decode()
        return d

    @staticmethod
    def from_json(d: dict) -> KernelBinary:
        d = dict(d)
        d["cubin"] = base64.b64decode(d["cubin"])
        return KernelBinary(**d)
