"""Tracing: run a Python function on symbolic ``Tensor``s and record what it does as a Graph.

The active ``TraceContext`` owns the Builder, turns Variables (parameters, optimizer slots) into
graph state on first use, collects state updates, and stamps every node with the user's line.
"""

from __future__ import annotations

import inspect
import os
import re
import sys
import threading
from dataclasses import dataclass

from lamina.ir.builder import Builder
from lamina.ir.errors import SourceLoc, TraceError
from lamina.ir.graph import Graph, Param, Value
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


class TraceContext:
    """Everything recorded while tracing one function."""

    def __init__(self, name: str):
        from lamina.frontend.tensor import Tensor

        self.builder = Builder(sanitize(name), var_class=Tensor)
        self.builder.loc_provider = user_loc
        self.builder.lift_hook = self._lift
        self.state_of: dict[int, Param] = {}  # id(Variable) -> its state parameter
        self.variables: dict[str, Variable] = {}  # state name -> Variable
        self.updates: dict[str, Value] = {}
        self.used_names: set[str] = set()
        self.streams = 0  # random streams handed out so far
        self.finalizers: list = []  # run before the graph is built (e.g. the RNG counter step)

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
        """The state parameter holding ``var`` in this graph, declared on first use."""
        p = self.state_of.get(id(var))
        if p is None:
            name = self.unique(var.name)
            p = self.builder.add_state(name, var.type)
            self.state_of[id(var)] = p
            self.variables[name] = var
        return self.builder.var(p)

    def assign(self, var: Variable, value) -> None:
        """Record ``var``'s new value, applied after the call (reads in the graph see the old)."""
        p = self.read(var).value
        b = self.builder
        v = b.cast(value, var.dtype)
        if v.shape != var.shape:
            v = v.broadcast_to(var.shape)
        if p.name in self.updates:
            raise TraceError(f"{var.name} is updated twice in one traced call", user_loc())
        self.updates[p.name] = v.value

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
    return TraceResult(graph, tree)


def trace(fn, *args, name: str | None = None) -> Graph:
    """Trace ``fn`` on example arguments and return the Graph (``print`` it to read the IR).

    Arguments are numpy arrays, Python numbers, or ``lm.TensorType`` specs (no data needed).

    >>> import numpy as np, lamina as lm
    >>> g = lm.trace(lambda x: lm.tanh(x).sum(), np.ones((2, 3), np.float32))
    >>> [n.op for n in g.nodes]
    ['tanh', 'sum']
    """
    return trace_function(fn, args, name).graph
