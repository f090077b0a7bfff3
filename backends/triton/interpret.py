"""Running rendered kernels without a GPU, under Triton's interpreter (``TRITON_INTERPRET=1``).

The interpreter executes each program of the grid with numpy and wants torch CPU tensors as
pointer arguments, so torch (CPU build) is needed here and only here. Memory is numpy: the arena,
outputs and state are numpy arrays seen by torch without copies, so the step updates state in
place exactly as the GPU runtime does on the device. Slow (a Python loop over programs); it is
for tests and for checking a kernel's numbers on a machine without a GPU.
"""

from __future__ import annotations

import math

import numpy as np

from lamina.backends.triton import aot, loops
from lamina.backends.triton.spec import KernelSource
from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph, Node, Param
from lamina.ir.ops.source import constant_array
from lamina.passes.memory import MemoryPlan, index_error


def _patch_interpreter_dot() -> None:
    """Triton's interpreter multiplies bfloat16 tiles as their raw 16-bit integers (it keeps
    bfloat16 as uint16): widen 16-bit float operands to float32 first. The products of 16-bit
    floats are exact in float32 and the GPU accumulates in float32, so the numbers agree."""
    from triton.runtime import interpreter as interp

    builder = type(interp.interpreter_builder)
    if getattr(builder.create_dot, "lamina_patched", False):
        return
    original = builder.create_dot
    import triton.language as tl

    def create_dot(self, a, b, d, input_precision, max_num_imprecise_acc):
        a, b = (self.create_fp_ext(x, tl.float32) if x.dtype.scalar in (tl.bfloat16, tl.float16)
                else x for x in (a, b))
        return original(self, a, b, d, input_precision, max_num_imprecise_acc)

    create_dot.lamina_patched = True
    builder.create_dot = create_dot


def _patch_interpreter_index() -> None:
    """Triton 3.6's interpreter turns a scalar into a Python int with ``int(data)``, but
    ``program_id`` is a one-element 1-d array there, which numpy 2 refuses to convert
    (``range(0, tl.minimum((pid + 1) * 16, n), 16)`` failed in the causal attention kernel);
    newer Triton squeezes it first, as this does."""
    from triton.runtime import interpreter as interp

    original = getattr(interp, "_patch_lang_tensor", None)
    if original is None or getattr(original, "lamina_patched", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))

    patch_lang_tensor.lamina_patched = True
    interp._patch_lang_tensor = patch_lang_tensor


def torch_module():
    try:
        import torch
    except ImportError:
        raise LaminaError("running triton kernels without a GPU uses Triton's interpreter, "
                          "which needs torch (CPU build): pip install 'lamina[triton-test]'") \
            from None
    return torch


def _torch_dtype(torch, d: dt.DType):
    return {dt.float16: torch.float16, dt.bfloat16: torch.bfloat16, dt.float32: torch.float32,
            dt.float64: torch.float64, dt.int32: torch.int32, dt.int64: torch.int64,
            dt.bool_: torch.int8}[d]


# the element type of a kernel's pointer argument ("*fp32" -> float32)
_POINTEE = {"*fp16": dt.float16, "*bf16": dt.bfloat16, "*fp32": dt.float32,
            "*fp64": dt.float64, "*i32": dt.int32, "*i64": dt.int64, "*i8": dt.bool_}


class InterpretProgram:
    """A planned graph whose kernels run under Triton's interpreter on the CPU."""

    def __init__(self, graph: Graph, plan: MemoryPlan, sources: list[tuple[Node, KernelSource]],
                 loops: dict | None = None, sites: Graph | None = None):
        """``loops``: the programs of each loop node's parts (``loops.loop_parts``), run
        step by step on the host; ``sites``: the graph whose index checks the error codes number (a loop
        body's program: the enclosing graph)."""
        self.graph = graph
        self.plan = plan
        self.sources = sources
        self.loops = loops or {}
        self.sites = sites if sites is not None else graph
        by_node = dict(sources)
        self.order = [(n, by_node.get(n)) for n in plan.schedule
                      if n in by_node or n in self.loops]
        self.torch = torch_module()
        _patch_interpreter_dot()
        _patch_interpreter_index()
        self.functions = {s.name: aot.load_function(s, interpret=True)
                          for _, src in sources for s in [*src.prologue, src]}
        self.arena = np.zeros(max(plan.arena_bytes, 1), np.uint8)
        # one torch tensor over the whole arena, its values views of it: the interpreter
        # copies each argument's storage in and out of a launch, keyed by its address, so
        # values must not be separate storages that start at one address
        self.arena_t = self.torch.from_numpy(self.arena)
        self.literals = {n: np.asarray(
            constant_array(n.attrs["value"], n.dtype, n.shape), order="C") for n in plan.schedule
            if n.op == "constant"}
        self.state_names = [p.name for p in graph.state]
        self.owns_outputs = True

    def _bytes(self, v, inputs, state, outs) -> np.ndarray:
        """The bytes of top-level value ``v`` (a numpy uint8 view)."""
        loc = self.plan.location[v]
        if loc.kind == "arena":
            return self.arena[loc.offset:loc.offset + loc.nbytes]
        if loc.kind == "literal":
            arr = self.literals[v]
        elif loc.kind == "input":
            arr = inputs[loc.index]
        elif loc.kind == "state":
            arr = state[self.state_names[loc.index]]
        else:
            arr = outs[loc.index]
        return arr.reshape(-1).view(np.uint8)

    def _tensor(self, v, inputs, state, outs):
        """Top-level value ``v`` as the torch tensor a kernel's pointer argument takes."""
        d = _torch_dtype(self.torch, v.dtype)
        loc = self.plan.location[v]
        if not v.type.nbytes:  # nothing is read or written: any valid address will do
            return self.torch.zeros(8, dtype=self.torch.uint8).view(d)
        if loc.kind == "arena":
            return self.arena_t[loc.offset:loc.offset + loc.nbytes].view(d)
        return self.torch.from_numpy(self._bytes(v, inputs, state, outs)).view(d)

    def __call__(self, inputs, state):
        # own copies: inputs may view one buffer (``a`` and ``a.T[:, :1]``), and the
        # interpreter takes two storages at one address for one (see arena_t)
        inputs = [np.array(a, order="C") for a in inputs]
        outs: list = [None] * len(self.graph.outputs)
        for k, v in enumerate(self.graph.outputs):
            loc = self.plan.location.get(v)
            if isinstance(v, Node) and loc is not None and loc.kind == "output" \
                    and loc.index == k:
                outs[k] = np.empty(v.shape, v.dtype.np)
        early = {k: state[v.name].copy() for k, v in enumerate(self.graph.outputs)
                 if outs[k] is None and isinstance(v, Param) and v.kind == "state"}
        snapshots = {s: state[v.name].copy() for v, s in self.plan.copies
                     if isinstance(v, Param) and v.kind == "state"}
        err = self.torch.zeros(1, dtype=self.torch.int32)
        for node, src in self.order:
            if src is None:
                self._loop(node, inputs, state, outs)
                continue
            for s in [*src.prologue, src]:
                if math.prod(s.grid) == 0:
                    continue
                args = []
                for ref in s.args:
                    if ref[0] == "operand":
                        args.append(self._tensor(node.inputs[ref[1]], inputs, state, outs))
                    elif ref[0] == "output":
                        args.append(self._tensor(node, inputs, state, outs))
                    elif ref[0] == "error":
                        args.append(err)
                    elif ref[0] == "scratch":
                        loc = self.plan.scratch[node]
                        name = list(s.signature)[len(args)]
                        d = _POINTEE[s.signature[name]]
                        args.append(self.arena_t[loc.offset:loc.offset + loc.nbytes].view(
                            _torch_dtype(self.torch, d)))
                    else:
                        raise AssertionError(f"unknown kernel argument {ref}")
                # IEEE arithmetic on the GPU does not warn: neither do the interpreter's numpy
                # ops (on masked-off lanes and on NaN/inf inputs)
                with np.errstate(all="ignore"):
                    self.functions[s.name][s.grid](*args)
        code = int(err[0])
        if code:
            raise index_error(self.sites, code)
        for k, v in enumerate(self.graph.outputs):
            if outs[k] is None:
                outs[k] = early[k] if k in early else self._value(v, inputs, state, outs).copy()
        for v, s in self.plan.copies:
            src = snapshots[s] if s in snapshots and isinstance(v, Param) else \
                self._value(v, inputs, state, outs)
            np.copyto(state[s], src)
        return outs, {}

    def _loop(self, node, inputs, state, outs) -> None:
        """A loop, step by step on the host (``loops.py``): its body's program once per step
        (a while_loop: its condition's program first, and the body while it holds); the final
        carries and the stacked outputs go into the buffers of the loop's results."""
        parts = self.loops[node]
        a = node.attrs
        nc = a["num_consts"]
        vals = [self._value(v, inputs, state, outs) for v in node.inputs]
        nk = a["num_carry"] if node.op == "scan" else len(vals) - nc
        consts, carry, xs = vals[:nc], [np.array(v) for v in vals[nc:nc + nk]], vals[nc + nk:]
        ys = [np.empty(t.shape, t.dtype.np) for t in node.type.types[nk:]]
        order = loops.steps(node)
        if order is None:  # while_loop
            cond, body = parts
            i = 0
            while True:
                args = [np.asarray(i, np.int32)] + consts + carry
                (go,), _ = cond(args, {})
                if not bool(go):
                    break
                carry, _ = body(args, {})
                i += 1
        else:
            (body,) = parts
            for i in order:
                got, _ = body([np.asarray(i, np.int32)] + consts + carry + [x[i] for x in xs], {})
                carry = got[:nk]
                for y, g in zip(ys, got[nk:]):
                    y[i] = g
        final = carry + ys
        for k, g in loops.results(self.graph, node, self.plan.location).items():
            raw = self._bytes(g, inputs, state, outs)[:g.type.nbytes]
            raw[:] = np.ascontiguousarray(final[k]).reshape(-1).view(np.uint8)

    def _value(self, v, inputs, state, outs) -> np.ndarray:
        if isinstance(v, Param):
            return inputs[self.graph.inputs.index(v)] if v.kind == "input" else state[v.name]
        if v.op == "constant":
            return self.literals[v]
        raw = self._bytes(v, inputs, state, outs)
        if v.dtype.np is None:
            raise LaminaError(f"{v.dtype.name} values cannot be handed to numpy")
        return raw[:v.type.nbytes].view(v.dtype.np).reshape(v.shape)
