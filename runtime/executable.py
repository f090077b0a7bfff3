"""``Executable``: one compiled variant of a function, ready to call.

It holds the backend program, the input signature, the output structure and the Variables
bound to the graph's state. A call checks its arguments, runs the program on the arguments and
the current state, writes state updates back in place and returns numpy arrays.

A program is called as ``program(inputs, state) -> (outputs, updates)``. ``state`` maps each
state name to its host array, which the program may update in place; a program whose class sets
``takes_variables = True`` keeps state on a device and gets the ``Variable`` objects instead, so
that nothing is copied between host and device unless a value changed on the other side (see
``lamina.ir.variable``); such a program returns outputs that it owns.

Threads: a program is not reentrant (the LLVM program has one arena and one pointer table), and
state is updated in place, so calls are serialized. Every Executable belongs to a *state lock*:
one lock for every executable whose state shares a Variable with it, directly or through others
(``train_step`` and ``predict`` over one model share one lock; two unrelated models do not).
Calls holding it run one at a time, so each call sees the state of some serial order of the
calls. Locks merge when a new executable joins two sets (see ``state_lock``).
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from lamina.ir.errors import SignatureError
from lamina.ir.graph import Graph
from lamina.ir.tree import unflatten
from lamina.ir.types import TensorType
from lamina.ir.variable import Variable


def as_array(x, expected: TensorType, name: str, fn: str) -> np.ndarray:
    """``x`` as an array of exactly ``expected``'s type, or a SignatureError saying why not.

    Python numbers take the expected dtype (they are "weak", as in numpy); arrays and numpy
    scalars must already have it (no silent casts). An array in non-native byte order (``>f4``
    on a little-endian machine) is converted: the values are what count, not their layout.
    """
    if isinstance(x, Variable):
        x = x.host_value()
    if isinstance(x, (bool, int, float)) and not isinstance(x, np.generic) \
            and expected.shape == ():
        try:
            return np.asarray(x, dtype=expected.dtype.np)
        except OverflowError:
            raise SignatureError(f"{fn}: argument {name!r} is {x}, which does not fit "
                                 f"{expected.dtype.name}") from None
    arr = np.asarray(x) if not isinstance(x, np.ndarray) else x
    if arr.dtype.kind not in "biuf" or arr.dtype == object:
        raise SignatureError(f"{fn}: argument {name!r} is not numeric ({type(x).__name__})")
    if arr.shape != expected.shape or arr.dtype != expected.dtype.np:
        if not arr.dtype.isnative:  # checked only here: the common call pays nothing for it
            return as_array(arr.astype(arr.dtype.newbyteorder("=")), expected, name, fn)
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
        self._lock = state_lock(list(self.variables.values()))

    def check(self, args) -> list[np.ndarray]:
        if len(args) != len(self.signature):
            names = ", ".join(n for n, _ in self.signature)
            raise SignatureError(f"{self.graph.name}() takes {len(self.signature)} argument(s) "
                                 f"({names}), got {len(args)}")
        return [as_array(a, t, n, self.graph.name) for a, (n, t) in zip(args, self.signature)]

    def __call__(self, *args):
        arrays = self.check(args)
        # StateLock.acquire, inlined for the common case (a root, not merged meanwhile)
        node = self._lock
        if node.parent is not None:  # merged into another set since: keep its root
            node = self._lock = node.root()
        lock = node.lock
        lock.acquire()
        if node.parent is not None:  # merged while we waited: take the merged set's lock
            lock.release()
            lock = node.acquire()
        try:
            outs = self._run(arrays)
        finally:
            lock.release()
        return unflatten(self.out_tree, outs)

    def _run(self, arrays: list[np.ndarray]) -> list:
        """One call of the program, its state updates applied; under the state lock."""
        if getattr(self.program, "takes_variables", False):
            outs, updates = self.program(arrays, dict(self.variables))
            for name, value in updates.items():
                Variable.assign(self.variables[name], value)  # the host write, never traced
            return outs
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
        return outs

    def state_dict(self) -> dict[str, np.ndarray]:
        """Copies of the state, taken between calls (never halfway through a step)."""
        lock = self._lock.acquire()
        try:
            return {k: v.numpy() for k, v in self.variables.items()}
        finally:
            lock.release()


def _owned(a: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    a = np.asarray(a)
    if any(np.may_share_memory(a, o) for o in others):
        return a.copy()
    return a


# --- state locks ------------------------------------------------------------------------------


class StateLock:
    """The lock of a set of executables that share state (a node of a union-find forest).

    When a new executable's Variables belong to several sets, the sets merge: each old root
    points to the surviving one (``parent``). ``acquire`` follows the pointers to the root,
    takes its lock and checks that the root was not merged meanwhile (a merge holds the old
    root's lock while it links it, so no call runs under a lock that stopped being the root's).
    """

    __slots__ = ("lock", "parent")

    def __init__(self):
        self.lock = threading.Lock()
        self.parent: StateLock | None = None

    def root(self) -> StateLock:
        node = self
        while node.parent is not None:
            node = node.parent
        return node

    def acquire(self) -> threading.Lock:
        """Take the set's lock (blocking); returns it, to be released by the caller."""
        while True:
            node = self.root()
            node.lock.acquire()
            if node.parent is None:
                return node.lock
            node.lock.release()  # merged into another set while we waited: take that one


# Variable -> the StateLock node of its set; weak, so it keeps no Variable alive.
_locks: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_locks_mutex = threading.Lock()  # guards _locks and merges (never held while a call runs)


def state_lock(variables: list[Variable]) -> StateLock:
    """The StateLock for an executable over ``variables``: the one their sets share, merging
    them when they are several; a fresh one when they belong to none (or there are none)."""
    if not variables:
        return StateLock()
    with _locks_mutex:
        roots: list[StateLock] = []
        for v in variables:
            node = _locks.get(v)
            if node is not None:
                r = node.root()
                if not any(r is o for o in roots):
                    roots.append(r)
        keep = roots[0] if roots else StateLock()
        for other in roots[1:]:
            with other.lock:  # waits for a call in flight on that set
                other.parent = keep
        for v in variables:
            _locks[v] = keep
        return keep


def signature_key(types: list[TensorType]) -> tuple:
    return tuple((t.shape, t.dtype.short) for t in types)

