"""``Executable``: one compiled variant of a function, ready to call.

It holds the backend program, the input signature, the output structure and the Variables
bound to the graph's state. A call checks its arguments, runs the program on the arguments and
the current state, writes state updates back in place and returns numpy arrays.

A program is called as ``program(inputs, state) -> (outputs, updates)``. ``state`` maps each
state name to its host array, which the program may update in place; a program whose class sets
``takes_variables = True`` keeps state on a device and gets the ``Variable`` objects instead, so
that nothing is copied between host and device unless a value changed on the other side (see
``lamina.ir.variable``); such a program returns outputs that it owns.
"""

from __future__ import annotations

import numpy as np

from lamina.ir.errors import SignatureError
from lamina.ir.graph import Graph
from lamina.ir.tree import unflatten
from lamina.ir.types import TensorType
from lamina.ir.variable import Variable


def as_array(x, expected: TensorType, name: str, fn: str) -> np.ndarray:
    """``x`` as an array of exactly ``expected``'s type, or a SignatureError saying why not.

    Python numbers take the expected dtype; arrays must already have it (no silent casts).
    """
    if isinstance(x, Variable):
        x = x.host_value()
    if isinstance(x, (bool, int, float)) and expected.shape == ():
        return np.asarray(x, dtype=expected.dtype.np)
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind not in "biuf" or arr.dtype == object:
        raise SignatureError(f"{fn}: argument {name!r} is not numeric ({type(x).__name__})")
    if arr.shape != expected.shape or arr.dtype != expected.dtype.np:
        got = f"{arr.dtype.name} array of shape {tuple(arr.shape)}"
        raise SignatureError(f"{fn}: argument {name!r} expects {expected} "
                             f"({expected.dtype.name} of shape {expected.shape}), got {got}")
    return arr


class Executable:
    """A compiled variant: ``exe(*arrays)`` runs it (arguments must match ``signature``)."""

    def __init__(self, graph: Graph, program, variables: dict[str, Variable], out_tree,
                 backend: str, stages=None):
        self.graph = graph
        self.program = program
        self.variables = dict(variables)
        self.out_tree = out_tree
        self.backend = backend
        self.stages = list(stages or [])
        self.signature = [(p.name, p.type) for p in graph.inputs]
        missing = [p.name for p in graph.state if p.name not in self.variables]
        if missing:
            raise SignatureError(f"@{graph.name}: no storage bound to state {missing}")
        for p in graph.state:
            if self.variables[p.name].type != p.type:
                raise SignatureError(f"@{graph.name}: state %{p.name} is {p.type} in the graph "
                                     f"but its storage is {self.variables[p.name].type}")

    def check(self, args) -> list[np.ndarray]:
        if len(args) != len(self.signature):
            names = ", ".join(n for n, _ in self.signature)
            raise SignatureError(f"{self.graph.name}() takes {len(self.signature)} argument(s) "
                                 f"({names}), got {len(args)}")
        return [as_array(a, t, n, self.graph.name) for a, (n, t) in zip(args, self.signature)]

    def __call__(self, *args):
        arrays = self.check(args)
        if getattr(self.program, "takes_variables", False):
            outs, updates = self.program(arrays, dict(self.variables))
            for name, value in updates.items():
                self.variables[name].assign(value)
            return unflatten(self.out_tree, outs)
        state = {name: v.storage for name, v in self.variables.items()}
        outs, updates = self.program(arrays, state)
        if not getattr(self.program, "owns_outputs", False):
            protected = arrays + list(state.values())
            # Outputs must not alias inputs, state (it changes below, in place) or each other.
            owned = []
            for o in outs:
                owned.append(_owned(o, protected + owned))
            outs = owned
        updates = {k: _owned(v, list(state.values())) for k, v in updates.items()}
        for name, value in updates.items():
            np.copyto(self.variables[name].storage, value)
        return unflatten(self.out_tree, outs)

    def state_dict(self) -> dict[str, np.ndarray]:
        return {k: v.numpy() for k, v in self.variables.items()}


def _owned(a: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    a = np.asarray(a)
    if any(np.may_share_memory(a, o) for o in others):
        return a.copy()
    return a


def signature_key(types: list[TensorType]) -> tuple:
    return tuple((t.shape, t.dtype.short) for t in types)

