"""Tracing: run a Python function on symbolic ``Tensor``s and record what it does as a Graph.

The active ``TraceContext`` owns the Builder, turns Variables (parameters, optimizer slots) into
graph state on first use, collects state updates, and stamps every node with the user's line.

It also records what the trace depended on besides the arguments' types, so that the compile
driver can tell when a compiled variant no longer fits: the train/eval mode of every module whose
``training`` flag the function read (``note_mode``; ``mode_epoch`` changes whenever any module's
mode does). And it notices the one dtype promotion that users almost never mean: an argument of a
wider float type meeting a parameter (a float64 batch into a float32 model turns the whole model
float64); ``trace_function`` warns once per trace (``PromotionWarning``).
"""

from __future__ import annotations

import inspect
import itertools
import os
import re
import sys
import threading
import warnings
from dataclasses import dataclass, field

import numpy as np

from lamina.ir.builder import Builder, Var
from lamina.ir.errors import DTypeError, PromotionWarning, ShapeError, SourceLoc, TraceError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.tree import flatten
from lamina.ir.types import type_of
from lamina.ir.variable import Variable

# --- the user's source line -------------------------------------------------------------------

_PKG = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_DIRS = tuple(os.path.join(_PKG, d) + os.sep
                       for d in ("ir", "frontend", "passes", "backends", "runtime"))
_INTERNAL_FILES = tuple(os.path.join(_PKG, f) for f in ("__init__.py", "compiler.py", "cli.py"))
# The standard library (contextlib, functools) sits between lamina and user frames too.
_STDLIB = os.path.dirname(os.__file__) + os.sep


def _is_internal(filename: str) -> bool:
    return (filename.startswith(_INTERNAL_DIRS) or filename in _INTERNAL_FILES
            or (filename.startswith(_STDLIB) and "site-packages" not in filename))


def user_loc() -> SourceLoc | None:
    """The innermost stack frame outside lamina's own code: the DSL line being traced."""
    f = sys._getframe(1)
    while f is not None:
        name = f.f_code.co_filename
        if not _is_internal(name) and not name.startswith("<frozen"):
            return SourceLoc(name, f.f_lineno)
        f = f.f_back
    return None


# --- the active trace -------------------------------------------------------------------------

_local = threading.local()


def current() -> TraceContext | None:
    """The innermost active trace, or None outside ``lm.trace``/``lm.compile``."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


# --- module modes ------------------------------------------------------------------------------

# A fresh number whenever some module's mode changes (``mode_changed``). A compiled function
# remembers the number its variant cache was filled under; a different one makes it check the
# modes its variants' traces read again. A list so that importers see the current value.
mode_epoch = [0]
_epochs = itertools.count(1)


def mode_changed() -> None:
    """Call after changing a module's ``training`` flag (after, so that whoever sees the new
    number also sees the new mode). Each change stores a number never stored before."""
    mode_epoch[0] = next(_epochs)


def note_mode(module, mode: bool) -> None:
    """Record, in every active trace, that it read ``module``'s mode (and saw ``mode``)."""
    stack = getattr(_local, "stack", None)
    if stack:
        for ctx in stack:
            ctx.modes.setdefault(id(module), (module, mode))


def require_trace(what: str) -> TraceContext:
    ctx = current()
    if ctx is None:
        raise TraceError(f"{what} can only be used inside a traced function "
                         "(one passed to lm.compile or lm.trace)", user_loc())
    return ctx


_NAME_BAD = re.compile(r"[^A-Za-z0-9_.]")


def sanitize(name: str) -> str:
    """A name that the IR text accepts: letters, digits, ``_`` and ``.``, not starting with a
    digit (``%3`` names a node)."""
    name = _NAME_BAD.sub("_", name) or "v"
    return name if not (name[0].isdigit() or name[0] == ".") else "_" + name


@dataclass
class Widening:
    """Where an argument of a wider float type first met a narrower parameter."""

    argument: Param  # the graph input the wide operand derives from
    state: Param  # the state (parameter) the narrow operand derives from
    kind: str  # "parameter" or "state" (an optimizer slot, a buffer)
    direct: bool  # the narrow operand is the state itself (not computed from it)
    result: str  # the dtype the op computed in
    loc: SourceLoc | None

    def message(self) -> str:
        a, s = self.argument, self.state
        where = f" at {self.loc.short}" if self.loc is not None else ""
        met = f"{self.kind} {s.name!r} ({s.dtype.name})" if self.direct else \
            f"{s.dtype.name} values computed from {self.kind} {s.name!r}"
        return (f"argument {a.name!r} ({a.dtype.name}) meets {met}{where}: the result is "
                f"{self.result}, and so is everything "
                f"computed from it; pass {a.name}.astype(np.{s.dtype.name}) to compute in "
                f"{s.dtype.name} (or give the model {self.result} parameters)")


class _TraceBuilder(Builder):
    """The Builder of a trace, or of a loop body inside one (``parent``: the builder of the
    enclosing function or body).

    While a loop body is being traced, every op goes into the body (``redirect`` points every
    enclosing builder at it, so ``outer_tensor * 2`` inside the body lands there too), and a
    value from an enclosing builder is captured: it becomes a parameter of the body and an
    operand of the loop (``captures``). A value defined in a body that has ended cannot be
    used outside it: it was not returned from the body.

    It also watches ``call`` (where numpy's promotion happens) for a cast that widens a
    parameter to an argument's wider float type."""

    def __init__(self, name: str, ctx: TraceContext, var_class, parent: _TraceBuilder | None = None):
        super().__init__(name, var_class=var_class)
        self.ctx = ctx
        self.parent = parent
        self.redirect: _TraceBuilder | None = None  # the body being traced inside this one
        self.own: set = set()  # the values defined here (parameters and nodes)
        self.captures: dict = {}  # enclosing builder's value -> this body's parameter
        self.captured: dict = {}  # any enclosing value (of any depth) -> this body's parameter

    def add_input(self, name, type):
        p = super().add_input(name, type)
        self.own.add(p)
        return p

    def add_state(self, name, type):
        p = super().add_state(name, type)
        self.own.add(p)
        return p

    def own_value(self, v: Value) -> Value:
        """``v`` as a value of this builder: itself, or a body parameter capturing it from an
        enclosing builder."""
        if v in self.own:
            return v
        p = self.captured.get(v)
        if p is not None:
            return p
        if self.parent is None or self.closed:
            raise TraceError("a tensor computed inside a loop body is used outside it (return "
                             "it from the body: as a carry, or as a per-step output of lm.scan)",
                             self.current_loc())
        outer = self.parent.own_value(v)
        name = outer.name if isinstance(outer, Param) else f"c{len(self.captures)}"
        p = Param(self.ctx.unique(name), v.type, "input")
        self.own.add(p)
        self.captures[outer] = p
        self.captured[v] = p
        return p

    def emit(self, op, inputs, attrs=None, loc=None, type=None, region=None):
        if self.redirect is not None:
            return self.redirect.emit(op, inputs, attrs, loc, type, region)
        if self.closed and self.parent is not None and not self.root.closed:
            raise TraceError("a tensor computed inside a loop body is used after the loop "
                             "(return it from the body: as a carry, or as a per-step output "
                             "of lm.scan)", self.current_loc())
        node = super().emit(op, [self.own_value(v) for v in inputs], attrs, loc, type, region)
        self.own.add(node)
        return node

    def lift(self, x, dtype=None):
        if self.redirect is not None:
            return self.redirect.lift(x, dtype)
        if isinstance(x, Var):
            if not isinstance(x.builder, _TraceBuilder) or x.builder.root is not self.root:
                return super().lift(x, dtype)  # the error for a tensor of another trace
            return self.own_value(x.value)
        if isinstance(x, Value):
            return self.own_value(x)
        return self.own_value(super().lift(x, dtype))  # a Variable's state: maybe captured

    def var(self, value):
        if self.redirect is not None:
            return self.redirect.var(value)
        return super().var(value)

    @property
    def root(self) -> _TraceBuilder:
        b = self
        while b.parent is not None:
            b = b.parent
        return b

    def call(self, op: str, *args, **attrs):
        if self.redirect is not None:
            return self.redirect.call(op, *args, **attrs)
        start = len(self.nodes)
        out = super().call(op, *args, **attrs)
        # Promotion adds cast nodes before the op's own: only then is there anything to check.
        if len(self.nodes) - start > 1 and self.ctx.widening is None:
            self.ctx.check_widening(self.nodes[start:], out.value)
        return out


class TraceContext:
    """Everything recorded while tracing one function."""

    def __init__(self, name: str):
        from lamina.frontend.tensor import Tensor

        self.builder = _TraceBuilder(sanitize(name), self, Tensor)
        self.builder.loc_provider = user_loc
        self.builder.lift_hook = self._lift
        self.state_of: dict[int, Param] = {}  # id(Variable) -> its state parameter
        self.variables: dict[str, Variable] = {}  # state name -> Variable
        self.updates: dict[str, Value] = {}
        # state name -> who wrote its update ("SGD.minimize", "fc.w.assign at model.py:12")
        self.writers: dict[str, str] = {}
        # id(Variable) -> the value a user ``assign`` gave it in this trace (later reads see it)
        self.assigned: dict[int, object] = {}
        self.used_names: set[str] = set()
        self.streams = 0  # random streams handed out so far
        self.finalizers: list = []  # run before the graph is built (e.g. the RNG counter step)
        self.modes: dict[int, tuple] = {}  # id(module) -> (module, the mode the trace saw)
        self.widening: Widening | None = None  # the first argument-widens-parameter promotion
        self._origins: dict[tuple, dict] = {}  # (kind, dtype) -> {value: Param or None}

    def unique(self, name: str) -> str:
        base = name = sanitize(name)
        k = 1
        while name in self.used_names:
            name = f"{base}_{k}"
            k += 1
        self.used_names.add(name)
        return name

    def _lift(self, x) -> Value | None:
        if isinstance(x, Variable):
            return self.read(x).value
        return None

    def read(self, var: Variable):
        """``var``'s value in this graph: the value assigned to it earlier in this trace
        (``assign_state``), else its state parameter, declared on first use."""
        assigned = self.assigned.get(id(var))
        if assigned is not None:
            return assigned
        return self.builder.var(self.state_param(var))

    def value_after(self, var: Variable):
        """``var``'s value after the call: its update recorded so far in this trace (an
        optimizer's new weights), else its current value."""
        p = self.state_param(var)
        new = self.updates.get(p.name)
        return self.builder.var(new) if new is not None else self.read(var)

    def rng_key(self, var: Variable):
        """The key of a random draw without an explicit one: ``var``'s value (a loop body
        mixes in its step index, so every step draws fresh numbers)."""
        return self.read(var)

    def state_param(self, var: Variable) -> Param:
        """The state parameter holding ``var``'s value at the start of the call."""
        p = self.state_of.get(id(var))
        if p is None:
            name = self.unique(var.name)
            p = self.builder.add_state(name, var.type)
            self.state_of[id(var)] = p
            self.variables[name] = var
        return p

    def assign(self, var: Variable, value, by: str = "") -> None:
        """Record ``var``'s new value, applied after the call (reads in the graph see the old).
        For lamina's own writers (optimizers, the random-number counter): one per state."""
        p = self.state_param(var)
        if p.name in self.updates:
            raise TraceError(f"{var.name} is updated twice in one traced call "
                             f"({self.writers.get(p.name, 'once')} and {by or 'again'}): a "
                             "state has one writer per step", user_loc())
        b = self.builder
        v = b.cast(value, var.dtype)
        if v.shape != var.shape:
            v = v.broadcast_to(var.shape)
        self.updates[p.name] = v.value
        self.writers[p.name] = by or "an update"

    def assign_state(self, var: Variable, value, loc) -> None:
        """A user's ``var.assign(value)`` inside a trace: the state's value from here on (later
        reads see it) and its value after the call. Assigning again replaces it."""
        p = self.state_param(var)
        who = f"{var.name}.assign" + (f" at {loc.short}" if loc is not None else "")
        if p.name in self.updates and id(var) not in self.assigned:
            raise TraceError(f"{var.name} is updated by {self.writers[p.name]} in this step and "
                             f"assigned by {who}: a state has one writer per step", loc)
        b = self.builder
        weak = isinstance(value, (bool, int, float)) and not hasattr(value, "dtype")
        v = b.var(b.lift(value, var.dtype if weak else None))
        if not weak:
            if v.dtype is not var.dtype and not np.can_cast(v.dtype.np, var.dtype.np,
                                                              "same_kind"):
                raise DTypeError(f"{var.name}.assign: a {v.dtype.name} value cannot be "
                                 f"assigned to {var.name}: {var.type} (cast it with .astype "
                                 "first)", loc)
            if v.shape != var.shape:
                raise ShapeError(f"{var.name}.assign: the value is {v.type}, {var.name} is "
                                 f"{var.type} (the shapes must be equal)", loc)
        v = b.cast(v, var.dtype)
        if v.shape != var.shape:
            v = v.broadcast_to(var.shape)
        self.updates[p.name] = v.value
        self.writers[p.name] = who
        self.assigned[id(var)] = v

    def check_widening(self, new_nodes, result) -> None:
        """Record a promotion in ``result`` (just emitted, after ``new_nodes``' casts) where a
        value derived from narrower float state was cast up to meet a value derived from an
        argument of the wider type."""
        if not isinstance(result, Node):
            return
        for cast in new_nodes:
            if cast is result or cast.op != "cast" or not any(v is cast for v in result.inputs):
                continue
            src = cast.inputs[0]
            if not (src.dtype.is_float and cast.dtype.is_float
                    and cast.dtype.itemsize > src.dtype.itemsize):
                continue
            state = self._origin(src, "state", src.dtype)
            if state is None:
                continue
            for other in result.inputs:
                arg = self._origin(other, "input", cast.dtype) if other is not cast else None
                if arg is not None:
                    var = self.variables.get(state.name)
                    kind = "parameter" if type(var).__name__ == "Parameter" else "state"
                    self.widening = Widening(arg, state, kind, src is state, cast.dtype.name,
                                             result.loc)
                    return

    def _origin(self, value, kind: str, dtype) -> Param | None:
        """A graph parameter of ``kind`` and ``dtype`` that ``value`` is computed from (None if
        none); memoized, so that all questions of one trace cost one walk of the graph."""
        memo = self._origins.setdefault((kind, dtype), {})
        stack = [value]
        while stack:
            v = stack[-1]
            if v in memo:
                stack.pop()
            elif isinstance(v, Param):
                memo[v] = v if v.kind == kind and v.dtype is dtype else None
                stack.pop()
            else:
                pending = [i for i in v.inputs if i not in memo]
                if pending:
                    stack.extend(pending)
                    continue
                # the nearest one: an operand that is itself one, else the first operand's
                memo[v] = next((i for i in v.inputs if memo[i] is i), None) or \
                    next((memo[i] for i in v.inputs if memo[i] is not None), None)
                stack.pop()
        return memo[value]

    def next_stream(self) -> int:
        self.streams += 1
        return self.streams - 1

    def __enter__(self):
        if not hasattr(_local, "stack"):
            _local.stack = []
        _local.stack.append(self)
        return self

    def __exit__(self, *exc):
        _local.stack.pop()
        self.builder.closed = True


# --- tracing a function -----------------------------------------------------------------------


def arg_names(fn, n: int) -> list[str]:
    """Names for the graph inputs: the function's parameter names where it has them."""
    names = []
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        params = []
    for i in range(n):
        if i < len(params) and params[i].kind in (params[i].POSITIONAL_ONLY,
                                                  params[i].POSITIONAL_OR_KEYWORD):
            names.append(params[i].name)
        elif params and params[-1].kind == params[-1].VAR_POSITIONAL:
            names.append(f"{params[-1].name}_{i}")
        else:
            names.append(f"arg{i}")
    return names


def function_name(fn) -> str:
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return "lambda" if name == "<lambda>" else sanitize(name)


@dataclass
class TraceResult:
    graph: Graph
    out_tree: list  # the output structure (ir.tree); leaves are graph outputs
    # (module, mode) for every module whose train/eval mode the function read
    modes: list[tuple] = field(default_factory=list)


def trace_function(fn, args, name: str | None = None,
                   names: list[str] | None = None) -> TraceResult:
    """Trace ``fn`` on symbolic stand-ins for ``args`` (arrays, scalars or TensorTypes)."""
    from lamina.frontend.tensor import Tensor

    names = names or arg_names(fn, len(args))
    specs = [type_of(a, f"argument {n!r}") for a, n in zip(args, names)]
    ctx = TraceContext(name or function_name(fn))
    with ctx:
        symbols = []
        for n, t in zip(names, specs):
            symbols.append(ctx.builder.var(ctx.builder.add_input(ctx.unique(n), t)))
        out = fn(*symbols)
        for fin in ctx.finalizers:
            fin(ctx)
        leaves, tree = flatten(out, is_leaf=lambda x: isinstance(x, (Tensor, Variable)))
        values = []
        for leaf in leaves:
            if isinstance(leaf, Tensor) and leaf.builder is not ctx.builder:
                raise TraceError("the function returned a tensor from another trace",
                                 user_loc())
            values.append(ctx.builder.lift(leaf))
    graph = ctx.builder.build(values, ctx.updates, ctx.variables)
    if ctx.widening is not None:
        _warn(ctx.widening)
    return TraceResult(graph, tree, list(ctx.modes.values()))


def _warn(w: Widening) -> None:
    """A PromotionWarning pointing at the user's line where the promotion happened."""
    if w.loc is None:
        warnings.warn(w.message(), PromotionWarning, stacklevel=3)
        return
    module = os.path.splitext(os.path.basename(w.loc.file))[0]
    warnings.warn_explicit(w.message(), PromotionWarning, w.loc.file, w.loc.line, module)


def trace(fn, *args, name: str | None = None) -> Graph:
    """Trace ``fn`` on example arguments and return the Graph (``print`` it to read the IR).

    Arguments are numpy arrays, Python numbers, or ``lm.TensorType`` specs (no data needed).

    >>> import numpy as np, lamina as lm
    >>> g = lm.trace(lambda x: lm.tanh(x).sum(), np.ones((2, 3), np.float32))
    >>> [n.op for n in g.nodes]
    ['tanh', 'sum']
    """
    return trace_function(fn, args, name).graph
