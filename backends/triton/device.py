"""``DeviceProgram``: a planned, fused graph run on the GPU, one kernel launch per kernel node.

Everything that does not change between calls is set up once: device buffers for the input and
output slots, the arena, the literals and the error flag, the loaded cubins and every launch
with its parameters packed. A call then uploads the inputs, issues the launches in schedule
order, performs the state copies of the memory plan and downloads the outputs.

State (parameters, optimizer slots) stays on the device between calls: each Variable gets a
``DeviceMirror`` (device memory holding its value, shared by every program that uses the
Variable), uploaded only when the host value changed since, and read back only when the host
asks for it (``lamina.ir.variable``).

Loops run on the host (``loops.py``): each loop part (a scan's body, a while_loop's condition
and body) is a ``DeviceProgram`` of its own, made with ``bound=True``: its inputs and outputs
are not buffers of its own but device addresses it is given at each step (``run``), which it
writes into its launches' parameters; ``DeviceLoop`` steps through the loop with them.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.backends.triton import cuda, loops
from lamina.backends.triton.spec import KernelBinary, KernelSource
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.loop import LOOP_OPS
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
                 literals: dict[Node, np.ndarray], loops: dict | None = None,
                 sites: Graph | None = None, bound: bool = False):
        """``loops``: the programs (``bound``) of each loop node's parts; ``sites``: the graph
        whose index checks the error codes number (a loop part's: the enclosing program's);
        ``bound``: a loop part's program, whose inputs and outputs are addresses given to
        ``run``."""
        self.graph = graph
        self.plan = plan
        self.sites = sites if sites is not None else graph
        self.bound = bound
        dev = self.device = cuda.device()
        self.state_names = [p.name for p in graph.state]
        if bound and graph.state:
            raise LaminaError(f"@{graph.name}: a loop body has no state of its own")
        self.input_bufs = [] if bound else [dev.alloc(p.type.nbytes) for p in graph.inputs]
        self.written = []  # outputs kernels write: (index, shape, numpy dtype)
        self.output_bufs: dict[int, cuda.DeviceBuffer] = {}
        for k, v in enumerate(graph.outputs):
            loc = plan.location.get(v)
            if isinstance(v, Node) and loc is not None and loc.kind == "output" and \
                    loc.index == k:
                self.written.append((k, v.shape, v.dtype.np))
                if not bound:
                    self.output_bufs[k] = dev.alloc(v.type.nbytes)
        kernel_written = {k for k, _, _ in self.written}
        self.copied = [(k, v) for k, v in enumerate(graph.outputs) if k not in kernel_written]
        self.arena = dev.alloc(plan.arena_bytes)
        self.literals = {n: np.asarray(
            literals[n] if n in literals else constant_array(n.attrs["value"], n.dtype, n.shape),
            n.dtype.np, order="C") for n in plan.schedule if n.op == "constant"}
        self.literal_bufs = {}
        for n, value in self.literals.items():
            self.literal_bufs[n] = dev.alloc(n.type.nbytes)
            dev.upload(self.literal_bufs[n], value)
        self.error = None  # the error flag, where a kernel can set it
        # where the addresses of ("state" | "in" | "out", index) references point now
        self.ptrs: dict[str, list[int]] = {"state": [], "in": [], "out": []}
        self.dynamic = []  # (launch, parameter index, (kind, index, offset)) set per call
        self._prepare_launches(launches, loops or {})
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

    def _prepare_launches(self, launches, loops: dict) -> None:
        dev = self.device
        by_node = {node: (source, binaries) for node, source, binaries in launches}
        todo = []  # (kernel node, source, binary), in launch order; a loop node: (node, parts)
        for node in self.plan.schedule:
            if node.op in ("constant", "get"):
                continue
            if node.op in LOOP_OPS:
                if node not in loops:
                    raise LaminaError(f"{node.op} @{node.attrs['name']}: no programs for "
                                      "this loop's body")
                todo.append((node, loops[node], None))
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
        kernels = [t for t in todo if t[2] is not None]
        grids = [math.prod(src.grid) for _, src, _ in kernels]
        self.global_scratch = _scratch_buffer(
            dev, [(b.global_scratch_size * g, b.global_scratch_align)
                  for (_, _, b), g in zip(kernels, grids)])
        self.profile_scratch = _scratch_buffer(
            dev, [(b.profile_scratch_size * g, b.profile_scratch_align)
                  for (_, _, b), g in zip(kernels, grids)])
        if any(_takes_error(src) for _, src, _ in kernels):
            self.error = dev.alloc(4)
        self.modules = {}  # cubin -> Module (a kernel used twice is loaded once)
        self.launches = []  # cuda.Launch and DeviceLoop, in order
        self.check_after = -1  # the launch after which the error flag is read
        for node, src, binary in todo:
            if binary is None:  # a loop: src holds its parts' programs
                self.launches.append(DeviceLoop(self, node, src))
                continue
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
            values = [0 if isinstance(base, str) else base.ptr + off for base, *_, off in refs]
            values += (scratch + [0] * extra)[:extra]
            module = self.modules.get(binary.cubin)
            if module is None:
                module = self.modules[binary.cubin] = dev.load_module(binary.cubin)
            launch = dev.prepare(module.function(binary.name), src.grid, 32 * binary.num_warps,
                                 binary.shared, [(cuda.c_uint64, v) for v in values])
            for i, ref in enumerate(refs):
                if isinstance(ref[0], str):
                    self.dynamic.append((launch, i, ref))
            if _takes_error(src):
                self.check_after = len(self.launches)
            self.launches.append(launch)

    def _arg_ref(self, node: Node, arg: tuple) -> tuple:
        """Where a kernel argument points: (DeviceBuffer, offset), or (kind, index, offset)
        for an address known at call time: state ("state"), a bound program's inputs ("in")
        and outputs ("out")."""
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
            return ("in", loc.index, 0) if self.bound else (self.input_bufs[loc.index], 0)
        if loc.kind == "state":
            return "state", loc.index, 0
        if loc.kind == "output":
            return ("out", loc.index, 0) if self.bound else (self.output_bufs[loc.index], 0)
        if loc.kind == "arena":
            return self.arena, loc.offset
        if loc.kind == "literal":
            return self.literal_bufs[v], 0
        raise LaminaError(f"the GPU runtime cannot address a value living in {loc}")

    def address(self, ref: tuple) -> int:
        """The device address a reference (``_value_ref``) points at now."""
        if isinstance(ref[0], str):
            kind, k, off = ref
            return self.ptrs[kind][k] + off
        base, off = ref
        return base.ptr + off

    def _set_dynamic(self) -> None:
        for launch, i, (kind, k, off) in self.dynamic:
            launch.set(i, self.ptrs[kind][k] + off)

    def _issue(self) -> None:
        """Every launch and loop, in order, the error flag read where a kernel can set it."""
        self.reset()
        for i, launch in enumerate(self.launches):
            launch()
            if i == self.check_after:
                self._check_error()

    def run(self, in_ptrs: list[int], out_ptrs: list[int]) -> None:
        """A bound program's step: its inputs read from ``in_ptrs``, its outputs written to
        ``out_ptrs`` (device addresses), asynchronously (the error flag, if any, is read by the
        caller: ``check``)."""
        self.ptrs["in"], self.ptrs["out"] = in_ptrs, out_ptrs
        self._set_dynamic()
        for launch in self.launches:
            launch()
        for k, v in self.copied:  # outputs no kernel writes: a parameter, a constant, a repeat
            if v.type.nbytes:
                self.device.copy(out_ptrs[k], self.address(self._value_ref(v)), v.type.nbytes)

    def check(self) -> None:
        """Raise the index error a bound program's kernels flagged, if any (waits)."""
        if self.error is not None:
            self._check_error()

    def reset(self) -> None:
        """Clear the error flag (a bound program's: before a loop's first step)."""
        if self.error is not None:
            self.device.memset(self.error, 0)

    def __call__(self, inputs: list[np.ndarray], state: dict[str, Variable]):
        dev = self.device
        for buf, a in zip(self.input_bufs, inputs):
            dev.upload(buf, np.ascontiguousarray(a))
        variables = [state[name] for name in self.state_names]
        bufs = [self._on_device(var).buffer for var in variables]
        ptrs = [b.ptr for b in bufs]
        if ptrs != self.ptrs["state"]:
            self.ptrs["state"] = ptrs
            self._set_dynamic()
        # NOTE: the step changes state where it lives, so whatever reads a state variable's old
        # value directly (an output, a copy into other state) takes a snapshot first.
        early = {k: state[v.name].numpy() for k, v in self.copied
                 if isinstance(v, Param) and v.kind == "state"}
        for snap, s, nbytes in self.snapshots:
            dev.copy(snap, bufs[s], nbytes)
        for p in self.written_state:
            state[p.name].mirror_updated()
        self._issue()
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
        return index_error(self.sites, status)

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


def program_tree(level: loops.Level, launches_of, sites: Graph | None = None,
                 bound: bool = False) -> DeviceProgram:
    """The ``DeviceProgram`` of a ``loops.Level`` tree: ``launches_of(level)`` gives each
    level's launches (see ``DeviceProgram``); its loops' parts are bound programs of their own,
    their index checks numbered in the top level's graph."""
    top = sites if sites is not None else level.graph
    parts = {n: [program_tree(p, launches_of, top, True) for p in ps]
             for n, ps in level.loops.items()}
    return DeviceProgram(level.graph, level.plan, launches_of(level), {}, loops=parts,
                         sites=top, bound=bound)


class DeviceLoop:
    """A loop node of a ``DeviceProgram``, run on the host (``loops.py``): each step runs the
    (bound) programs of its parts on the step's addresses. The carries live in two device
    buffers each (the current and the next value), which swap roles after every step; a scan's
    step reads ``xs[i]`` and writes ``ys[i]`` where they lie in the stacked buffers."""

    def __init__(self, program: DeviceProgram, node: Node, parts: list[DeviceProgram]):
        dev = self.device = program.device
        self.program, self.node, self.parts = program, node, parts
        a = node.attrs
        self.operands = [program._value_ref(v) for v in node.inputs]
        self.nc = a["num_consts"]
        self.nk = a["num_carry"] if node.op == "scan" else len(node.inputs) - self.nc
        carries = node.type.types[:self.nk]
        self.carry_bytes = [t.nbytes for t in carries]
        self.buffers = [(dev.alloc(t.nbytes), dev.alloc(t.nbytes)) for t in carries]
        got = loops.results(program.graph, node, program.plan.location)
        self.results = {k: program._value_ref(g) for k, g in got.items()}
        ys = node.type.types[self.nk:]
        # a stacked output no one reads is still written, step after step, into one slice
        self.spare = {j: dev.alloc(t.nbytes // max(t.shape[0], 1)) for j, t in enumerate(ys)
                      if self.nk + j not in self.results}
        self.x_step = [t.nbytes // max(t.shape[0], 1) for t in
                       (v.type for v in node.inputs[self.nc + self.nk:])]
        self.y_step = [t.nbytes // max(t.shape[0], 1) for t in ys]
        self.order = loops.steps(node)
        if self.order is not None:  # the step indices on the device: step n reads cell n
            self.index = dev.alloc(4 * len(self.order))
            dev.upload(self.index, np.array(self.order, np.int32))
        else:
            self.index = dev.alloc(4)
            self.pred = dev.alloc(parts[0].graph.outputs[0].type.nbytes)

    def __call__(self) -> None:
        dev, prog = self.device, self.program
        ops = [prog.address(r) for r in self.operands]
        consts, init, xs = ops[:self.nc], ops[self.nc:self.nc + self.nk], \
            ops[self.nc + self.nk:]
        for part in self.parts:
            part.reset()
        cur = [b.ptr for b, _ in self.buffers]
        nxt = [b.ptr for _, b in self.buffers]
        for dst, src, nbytes in zip(cur, init, self.carry_bytes):
            if nbytes:
                dev.copy(dst, src, nbytes)
        ys = [prog.address(self.results[self.nk + j]) if j not in self.spare else None
              for j in range(len(self.y_step))]
        if self.order is None:
            self._while(consts, cur, nxt)
            return
        (body,) = self.parts
        for n, i in enumerate(self.order):
            x_i = [x + i * s for x, s in zip(xs, self.x_step)]
            y_i = [self.spare[j].ptr if y is None else y + i * s
                   for j, (y, s) in enumerate(zip(ys, self.y_step))]
            body.run([self.index.ptr + 4 * n, *consts, *cur, *x_i], nxt + y_i)
            cur, nxt = nxt, cur
        body.check()
        self._finish(cur)

    def _while(self, consts: list[int], cur: list[int], nxt: list[int]) -> None:
        cond, body = self.parts
        go = np.zeros(1, np.uint8)
        i = 0
        while True:
            self.device.upload(self.index, np.array([i], np.int32))
            cond.run([self.index.ptr, *consts, *cur], [self.pred.ptr])
            self.device.download(self.pred, go)  # waits for the step before it too
            cond.check()
            body.check()
            if not go[0]:
                break
            body.run([self.index.ptr, *consts, *cur], nxt)
            cur, nxt = nxt, cur
            i += 1
        self._finish(cur)

    def _finish(self, cur: list[int]) -> None:
        """The final carries into the buffers of the loop's results (the stacked outputs are
        already there)."""
        for k, ptr in enumerate(cur):
            if k in self.results and self.carry_bytes[k]:
                self.device.copy(self.program.address(self.results[k]), ptr,
                                 self.carry_bytes[k])


def _takes_error(source: KernelSource) -> bool:
    return ("error",) in [tuple(a) for a in source.args]


def _resolve(ref: tuple, state_bufs: list[cuda.DeviceBuffer]) -> tuple[cuda.DeviceBuffer, int]:
    """A top-level program's reference (a buffer or state) as (buffer, offset)."""
    if isinstance(ref[0], str):
        _, k, off = ref
        return state_bufs[k], off
    return ref


def _scratch_buffer(dev: cuda.Device, needs: list[tuple[int, int]]) -> cuda.DeviceBuffer:
    """One buffer with room for the largest of ``needs`` ((bytes, alignment)) when aligned."""
    size = max((n for n, _ in needs), default=0)
    if not size:
        return dev.alloc(0)
    return dev.alloc(size + max(a for n, a in needs if n) - 1)


def _aligned(buf: cuda.DeviceBuffer, align: int) -> int:
    return (buf.ptr + align - 1) // align * align
