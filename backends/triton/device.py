"""``DeviceProgram``: a planned, fused graph run on the GPU, one kernel launch per kernel node.

Everything that does not change between calls is set up once: device buffers for the input and
output slots, the arena, the literals and the error flag, the loaded cubins and every launch
with its parameters packed. A call then uploads the inputs, issues the launches in schedule
order, performs the state copies of the memory plan and downloads the outputs.

State (parameters, optimizer slots) stays on the device between calls: each Variable gets a
``DeviceMirror`` (device memory holding its value, shared by every program that uses the
Variable), uploaded only when the host value changed since, and read back only when the host
asks for it (``lamina.ir.variable``).
"""

from __future__ import annotations

import math

import numpy as np

from lamina.backends.triton import cuda
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.source import constant_array
from lamina.ir.variable import Variable
from lamina.passes.memory import MemoryPlan, index_error

_POINTER_PARAMS = (".u64", ".b64", ".s64")  # how PTX spells a 64-bit parameter


class DeviceMirror:
    """A Variable's value in device memory (the mirror protocol of ``lamina.ir.variable``)."""

    def __init__(self, dev: cuda.Device, nbytes: int):
        self.device = dev
        self.buffer = dev.alloc(nbytes)

    def upload_from(self, array: np.ndarray) -> None:
        self.device.upload(self.buffer, np.ascontiguousarray(array))

    def download_into(self, array: np.ndarray) -> None:
        self.device.download(self.buffer, array)


class DeviceProgram:
    """Runs ``graph`` (fused, planned by ``plan``) on ``cuda.device()``.

    ``launches``: one ``(kernel_node, source, binaries)`` per kernel node: ``source`` the
    KernelSource rendered for the node, ``binaries`` maps the name of ``source`` and of each of
    its prologue sources to that kernel compiled for this GPU's target. The prologue kernels run
    first, in order. ``literals``: values of constant nodes; a constant missing there takes the
    value its node states.
    """

    takes_variables = True  # gets the Variables: state stays on the device between calls
    owns_outputs = True  # outputs are fresh arrays

    def __init__(self, graph: Graph, plan: MemoryPlan,
                 launches: list[tuple[Node, KernelSource, dict[str, KernelBinary]]],
                 literals: dict[Node, np.ndarray]):
        self.graph = graph
        self.plan = plan
        dev = self.device = cuda.device()
        self.state_names = [p.name for p in graph.state]
        self.input_bufs = [dev.alloc(p.type.nbytes) for p in graph.inputs]
        self.written = []  # outputs kernels write: (index, shape, numpy dtype)
        self.output_bufs: dict[int, cuda.DeviceBuffer] = {}
        for k, v in enumerate(graph.outputs):
            loc = plan.location.get(v)
            if isinstance(v, Node) and loc is not None and loc.kind == "output" and \
                    loc.index == k:
                self.written.append((k, v.shape, v.dtype.np))
                self.output_bufs[k] = dev.alloc(v.type.nbytes)
        self.copied = [(k, v) for k, v in enumerate(graph.outputs)
                       if k not in self.output_bufs]
        self.arena = dev.alloc(plan.arena_bytes)
        self.literals = {n: np.asarray(
            literals[n] if n in literals else constant_array(n.attrs["value"], n.dtype, n.shape),
            n.dtype.np, order="C") for n in plan.schedule if n.op == "constant"}
        self.literal_bufs = {}
        for n, value in self.literals.items():
            self.literal_bufs[n] = dev.alloc(n.type.nbytes)
            dev.upload(self.literal_bufs[n], value)
        self.error = None  # the error flag, where a kernel can set it
        self._prepare_launches(launches)
        self.written_state = [p for p in graph.state if p.name in plan.in_place]
        # state copies after the last kernel: (source, state index, nbytes); a copy of another
        # state's old value reads a snapshot taken before the first kernel
        index = {name: i for i, name in enumerate(self.state_names)}
        self.snapshots = []  # (snapshot buffer, state index, nbytes)
        self.copies = []
        for v, name in plan.copies:
            nbytes = v.type.nbytes
            if isinstance(v, Param) and v.kind == "state":
                snap = dev.alloc(nbytes)
                self.snapshots.append((snap, index[v.name], nbytes))
                src = (snap, 0)
            else:
                src = self._value_ref(v)
            self.copies.append((src, index[name], nbytes))

    def _prepare_launches(self, launches) -> None:
        dev = self.device
        by_node = {node: (source, binaries) for node, source, binaries in launches}
        todo = []  # (kernel node, source, binary), in launch order
        for node in self.plan.schedule:
            if node.op == "constant":
                continue
            what = f"kernel @{node.attrs.get('name', node.op)}"
            if node not in by_node:
                raise LaminaError(f"{what}: no compiled kernel for this {node.op} node")
            source, binaries = by_node[node]
            for src in [*source.prologue, source]:
                if math.prod(src.grid) == 0:
                    continue  # nothing to compute (a zero-size tensor)
                binary = binaries.get(src.name)
                if binary is None:
                    raise LaminaError(f"{what}: no binary for its kernel {src.name}")
                if binary.target != dev.target:
                    raise LaminaError(f"kernel {src.name} was compiled for {binary.target}; "
                                      f"this GPU is {dev.target} ({dev.name})")
                todo.append((node, src, binary))
        # Triton's own scratch memory (global, profile): one buffer each serves every launch
        grids = [math.prod(src.grid) for _, src, _ in todo]
        self.global_scratch = _scratch_buffer(
            dev, [(b.global_scratch_size * g, b.global_scratch_align)
                  for (_, _, b), g in zip(todo, grids)])
        self.profile_scratch = _scratch_buffer(
            dev, [(b.profile_scratch_size * g, b.profile_scratch_align)
                  for (_, _, b), g in zip(todo, grids)])
        if any(_takes_error(src) for _, src, _ in todo):
            self.error = dev.alloc(4)
        self.modules = {}  # cubin -> Module (a kernel used twice is loaded once)
        self.launches = []  # cuda.Launch, in order
        self.state_params = []  # (launch, parameter index, state index, offset)
        self.check_after = -1  # the launch after which the error flag is read
        for node, src, binary in todo:
            what = f"kernel {src.name}"
            if len(binary.params) < len(src.args):
                raise LaminaError(f"{what}: its binary takes {len(binary.params)} parameters, "
                                  f"fewer than its {len(src.args)} arguments")
            bad = [t for t in binary.params if t not in _POINTER_PARAMS]
            if bad:
                raise LaminaError(f"{what}: parameter types {binary.params}; lamina kernels "
                                  f"take pointers only, not {bad[0]}")
            refs = [self._arg_ref(node, tuple(a)) for a in src.args]
            extra = len(binary.params) - len(src.args)
            scratch = [_aligned(self.global_scratch, binary.global_scratch_align)
                       if binary.global_scratch_size else 0,
                       _aligned(self.profile_scratch, binary.profile_scratch_align)
                       if binary.profile_scratch_size else 0]
            values = [0 if isinstance(base, int) else base.ptr + off for base, off in refs]
            values += (scratch + [0] * extra)[:extra]
            module = self.modules.get(binary.cubin)
            if module is None:
                module = self.modules[binary.cubin] = dev.load_module(binary.cubin)
            launch = dev.prepare(module.function(binary.name), src.grid, 32 * binary.num_warps,
                                 binary.shared, [(cuda.c_uint64, v) for v in values])
            for i, (base, off) in enumerate(refs):
                if isinstance(base, int):
                    self.state_params.append((launch, i, base, off))
            if _takes_error(src):
                self.check_after = len(self.launches)
            self.launches.append(launch)
        self._state_ptrs: list[int] = []  # what the state parameters point at now

    def _arg_ref(self, node: Node, arg: tuple) -> tuple:
        """Where a kernel argument points: (DeviceBuffer, offset), or (state index, offset)
        for state, whose buffer is known at call time."""
        if arg[0] == "operand":
            return self._value_ref(node.inputs[arg[1]])
        if arg[0] == "output":
            return self._value_ref(node)
        if arg[0] == "scratch":
            return self.arena, self.plan.scratch[node].offset
        if arg[0] == "error":
            return self.error, 0
        raise LaminaError(f"kernel @{node.attrs.get('name', node.op)}: unknown argument {arg}")

    def _value_ref(self, v: Value) -> tuple:
        loc = self.plan.location[v]
        if loc.kind == "input":
            return self.input_bufs[loc.index], 0
        if loc.kind == "state":
            return loc.index, 0
        if loc.kind == "output":
            return self.output_bufs[loc.index], 0
        if loc.kind == "arena":
            return self.arena, loc.offset
        if loc.kind == "literal":
            return self.literal_bufs[v], 0
        raise LaminaError(f"the GPU runtime cannot address a value living in {loc}")

    def __call__(self, inputs: list[np.ndarray], state: dict[str, Variable]):
        dev = self.device
        for buf, a in zip(self.input_bufs, inputs):
            dev.upload(buf, np.ascontiguousarray(a))
        variables = [state[name] for name in self.state_names]
        bufs = [self._on_device(var).buffer for var in variables]
        ptrs = [b.ptr for b in bufs]
        if ptrs != self._state_ptrs:
            for launch, i, s, off in self.state_params:
                launch.set(i, ptrs[s] + off)
            self._state_ptrs = ptrs
        # NOTE: the step changes state where it lives, so whatever reads a state variable's old
        # value directly (an output, a copy into other state) takes a snapshot first.
        early = {k: state[v.name].numpy() for k, v in self.copied
                 if isinstance(v, Param) and v.kind == "state"}
        for snap, s, nbytes in self.snapshots:
            dev.copy(snap, bufs[s], nbytes)
        for p in self.written_state:
            state[p.name].mirror_updated()
        if self.error is not None:
            dev.memset(self.error, 0)
        for i, launch in enumerate(self.launches):
            launch()
            if i == self.check_after:
                self._check_error()
        for ref, s, nbytes in self.copies:
            src, off = _resolve(ref, bufs)
            dev.copy(bufs[s], src.ptr + off, nbytes)
            variables[s].mirror_updated()
        outs: list = [None] * len(self.graph.outputs)
        for k, shape, dtype in self.written:
            outs[k] = np.empty(shape, dtype)
            dev.download(self.output_bufs[k], outs[k])
        for k, v in self.copied:
            outs[k] = early[k] if k in early else self._copy_out(v, inputs, bufs)
        return outs, {}

    def _on_device(self, var: Variable) -> DeviceMirror:
        """``var``'s mirror, holding its current value (uploaded if the host changed it)."""
        mirror = var.mirror
        if not isinstance(mirror, DeviceMirror):
            mirror = DeviceMirror(self.device, var.type.nbytes)
        var.attach_mirror(mirror)
        return mirror

    def _check_error(self) -> None:
        flag = np.zeros(1, np.int32)
        self.device.download(self.error, flag)
        if flag[0]:
            raise self.index_error(int(flag[0]))

    def index_error(self, status: int) -> LaminaError:
        return index_error(self.graph, status)

    def _copy_out(self, v: Value, inputs: list[np.ndarray],
                  bufs: list[cuda.DeviceBuffer]) -> np.ndarray:
        """A fresh array holding output value ``v``, which no kernel wrote as that output."""
        if isinstance(v, Param):  # an input (state outputs are snapshots)
            return np.array(inputs[self.graph.inputs.index(v)])
        if v.op == "constant":
            return self.literals[v].copy()
        buf, off = _resolve(self._value_ref(v), bufs)
        out = np.empty(v.shape, v.dtype.np)
        self.device.download(buf, out, off)
        return out


def _takes_error(source: KernelSource) -> bool:
    return ("error",) in [tuple(a) for a in source.args]


def _resolve(ref: tuple, state_bufs: list[cuda.DeviceBuffer]) -> tuple[cuda.DeviceBuffer, int]:
    """A (buffer or state index, offset) reference as (buffer, offset)."""
    base, off = ref
    return (state_bufs[base] if isinstance(base, int) else base), off


def _scratch_buffer(dev: cuda.Device, needs: list[tuple[int, int]]) -> cuda.DeviceBuffer:
    """One buffer with room for the largest of ``needs`` ((bytes, alignment)) when aligned."""
    size = max((n for n, _ in needs), default=0)
    if not size:
        return dev.alloc(0)
    return dev.alloc(size + max(a for n, a in needs if n) - 1)


def _aligned(buf: cuda.DeviceBuffer, align: int) -> int:
    return (buf.ptr + align - 1) // align * align
