"""Building graphs: ``Builder`` appends typed nodes; ``Var`` is a symbolic value with numpy-style
operators over it.

Two entry points: ``Builder.emit`` is strict (exact dtypes, canonical attributes: what the
parser and passes use); ``Builder.call`` applies numpy's conveniences first (dtype promotion,
Python scalars as constants, ints to float for float-only ops). Gradient rules and
decompositions are written with ``Var`` operators; the frontend's ``Tensor`` is a ``Var``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError, ShapeError, SourceLoc, TraceError
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.registry import get as get_op
from lamina.ir.types import TensorType

_SCALARS = (bool, int, float, np.bool_, np.integer, np.floating)


class Builder:
    """Appends nodes to a graph under construction.

    ``loc`` (a fixed SourceLoc) or ``loc_provider`` (called per node) gives each new node its
    source location; the frontend points it at the user's line, autodiff at the forward node.
    """

    def __init__(self, name: str = "main", var_class: type | None = None):
        self.name = name
        self.inputs: list[Param] = []
        self.state: list[Param] = []
        self.nodes: list[Node] = []
        self.var_class = var_class or Var
        self.loc: SourceLoc | None = None
        self.loc_provider: Callable[[], SourceLoc | None] | None = None
        # Turns other objects (the frontend's Variables) into values; None if it cannot.
        self.lift_hook: Callable[[object], Value | None] | None = None
        self.closed = False  # set when tracing ends: a leaked tensor cannot add nodes

    @contextlib.contextmanager
    def located(self):
        """Re-raise lamina errors from the block at the current source location."""
        try:
            yield
        except LaminaError as e:
            raise e.at(self.current_loc()) from None

    # --- parameters ------------------------------------------------------------------------

    def add_input(self, name: str, type: TensorType) -> Param:
        p = Param(name, type, "input")
        self.inputs.append(p)
        return p

    def add_state(self, name: str, type: TensorType) -> Param:
        p = Param(name, type, "state")
        self.state.append(p)
        return p

    # --- nodes -----------------------------------------------------------------------------

    def current_loc(self) -> SourceLoc | None:
        if self.loc is not None:
            return self.loc
        return self.loc_provider() if self.loc_provider else None

    def emit(self, op: str, inputs, attrs: dict | None = None, loc: SourceLoc | None = None,
             type: TensorType | None = None, region: Graph | None = None) -> Node:
        """Append ``op(inputs) {attrs}``; its type comes from the op's type rule.

        Errors from the type rule are re-raised located at the node's source line.
        """
        loc = loc if loc is not None else self.current_loc()
        if self.closed:
            raise TraceError("a traced tensor was used after its trace ended (it escaped the "
                             "traced function, e.g. through a global or a closure)", loc)
        opdef = get_op(op)
        inputs = tuple(inputs)
        try:
            if opdef.arity is not None and len(inputs) != opdef.arity:
                raise LaminaError(f"{op} takes {opdef.arity} input(s), got {len(inputs)}")
            if opdef.arity is None and not inputs and not opdef.region:
                raise LaminaError(f"{op} takes at least one input")
            types = [v.type for v in inputs]
            attrs = opdef.normalize_attrs(types, attrs or {})
            if opdef.region:
                inferred = opdef.infer(types, attrs, region)
            elif region is not None:
                raise LaminaError(f"{op} does not take a region")
            else:
                inferred = opdef.infer(types, attrs)
        except LaminaError as e:
            raise e.at(loc) from None
        if type is not None and type != inferred:
            raise LaminaError(f"{op}: declared type {type} but the type rule gives {inferred}",
                              loc)
        node = Node(op, inputs, attrs, inferred, loc, region)
        self.nodes.append(node)
        return node

    def constant(self, value, dtype, shape=()) -> Node:
        """A constant; a scalar ``value`` with a non-empty ``shape`` is a splat."""
        return self.emit("constant", (), {"value": value, "dtype": dt.dtype(dtype),
                                          "shape": tuple(shape)})

    def var(self, value: Value) -> Var:
        return self.var_class(self, value)

    # --- numpy-style calls -----------------------------------------------------------------

    def lift(self, x, dtype=None) -> Value:
        """A graph value for ``x``: a Var's value, or a constant for a scalar or an array."""
        if isinstance(x, Var):
            if x.builder is not self:
                raise TraceError("a tensor from another trace was used here (a traced tensor "
                                 "escaped its function, e.g. through a global or a closure)",
                                 self.current_loc())
            return x.value
        if isinstance(x, Value):
            return x
        if self.lift_hook is not None:
            v = self.lift_hook(x)
            if v is not None:
                return v
        if isinstance(x, _SCALARS):
            return self.constant(x, dtype or _scalar_dtype(x))
        if isinstance(x, np.ndarray):
            d = dt.dtype(x.dtype) if dtype is None else dtype
            if x.ndim == 0:
                return self.constant(x.item(), d)
            return self.constant(x, d, x.shape)
        if isinstance(x, (list, tuple)):
            return self.lift(np.asarray(x), dtype)
        raise LaminaError(f"cannot use a {type(x).__name__} as a tensor")

    def call(self, op: str, *args, **attrs) -> Var:
        """Emit ``op`` with numpy's conveniences: operands in ``opdef.promote`` are brought to
        one dtype (Python scalars adopt it), float-only ops turn integer operands into floats."""
        opdef = get_op(op)
        promote = opdef.promote
        if promote == "all":
            promote = tuple(range(len(args)))
        if promote:
            common = self._common_dtype([args[i] for i in promote])
            if opdef.float_only and not common.is_float:
                common = dt.DEFAULT_FLOAT
            values = [self._as_dtype(a, common) if i in promote else self.lift(a)
                      for i, a in enumerate(args)]
        else:
            values = [self.lift(a) for a in args]
            if opdef.float_only:
                values = [v if v.dtype.is_float else self._as_dtype(v, dt.DEFAULT_FLOAT)
                          for v in values]
        return self.var(self.emit(op, values, attrs))

    def cast(self, x, dtype) -> Var:
        v = self.lift(x)
        dtype = dt.dtype(dtype)
        if v.dtype is dtype:
            return self.var(v)
        return self.var(self.emit("cast", (v,), {"dtype": dtype}))

    def _common_dtype(self, xs) -> dt.DType:
        tensors = [self.lift(x).dtype for x in xs if not isinstance(x, _SCALARS)]
        scalars = [x for x in xs if isinstance(x, _SCALARS)]
        if tensors:
            d = tensors[0]
            for t in tensors[1:]:
                d = dt.promote(d, t)
        else:
            d = _scalar_dtype(scalars[0])
            for s in scalars[1:]:
                d = dt.promote(d, _scalar_dtype(s))
        for s in scalars:
            d = dt.weak_scalar_dtype(d, s)
        return d

    def _as_dtype(self, x, dtype: dt.DType) -> Value:
        if isinstance(x, _SCALARS):
            return self.constant(x, dtype)
        v = self.lift(x)
        return v if v.dtype is dtype else self.emit("cast", (v,), {"dtype": dtype})

    # --- finishing -------------------------------------------------------------------------

    def build(self, outputs, updates: dict | None = None, variables: dict | None = None) -> Graph:
        outs = [self.lift(o) for o in outputs]
        ups = {k: self.lift(v) for k, v in (updates or {}).items()}
        return Graph(self.name, self.inputs, self.state, self.nodes, outs, ups, variables)


def _scalar_dtype(x) -> dt.DType:
    if isinstance(x, (bool, np.bool_)):
        return dt.bool_
    if isinstance(x, (int, np.integer)):
        return dt.DEFAULT_INT
    return dt.DEFAULT_FLOAT


def _shape_arg(shape) -> tuple:
    if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
        return tuple(shape[0])
    return tuple(shape)


class Var:
    """A symbolic tensor: a graph value plus the builder that records ops on it.

    Operators and methods follow numpy: ``a + b``, ``a @ b``, ``a.sum(axis=1)``,
    ``a.reshape(2, -1)``, ``a.T``, comparisons give bool tensors.
    """

    __slots__ = ("builder", "value")
    __array_ufunc__ = None  # numpy operators defer to ours: np_array * var -> var.__rmul__

    def __init__(self, builder: Builder, value: Value):
        self.builder = builder
        self.value = value

    # --- type ------------------------------------------------------------------------------

    @property
    def type(self) -> TensorType:
        return self.value.type

    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.type.shape

    @property
    def dtype(self) -> dt.DType:
        return self.value.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.value.type.shape)

    @property
    def size(self) -> int:
        return self.value.type.size

    def _call(self, op, *args, **attrs):
        return self.builder.call(op, *args, **attrs)

    # --- arithmetic ------------------------------------------------------------------------

    def __add__(self, o):
        return self._call("add", self, o)

    def __radd__(self, o):
        return self._call("add", o, self)

    def __sub__(self, o):
        return self._call("sub", self, o)

    def __rsub__(self, o):
        return self._call("sub", o, self)

    def __mul__(self, o):
        return self._call("mul", self, o)

    def __rmul__(self, o):
        return self._call("mul", o, self)

    def __truediv__(self, o):
        return self._call("div", self, o)

    def __rtruediv__(self, o):
        return self._call("div", o, self)

    def __floordiv__(self, o):
        return self._call("floor_divide", self, o)

    def __rfloordiv__(self, o):
        return self._call("floor_divide", o, self)

    def __mod__(self, o):
        return self._call("remainder", self, o)

    def __rmod__(self, o):
        return self._call("remainder", o, self)

    def __divmod__(self, o):
        return self.__floordiv__(o), self.__mod__(o)

    def __rdivmod__(self, o):
        return self.__rfloordiv__(o), self.__rmod__(o)

    def __pow__(self, o):
        return self._call("pow", self, o)

    def __rpow__(self, o):
        return self._call("pow", o, self)

    def __neg__(self):
        return self._call("neg", self)

    def __pos__(self):
        return self

    def __abs__(self):
        return self._call("abs", self)

    def __matmul__(self, o):
        return matmul(self.builder, self, o)

    def __rmatmul__(self, o):
        return matmul(self.builder, o, self)

    # --- comparisons (elementwise, numpy-style; hashing stays by identity) -----------------

    def __lt__(self, o):
        return self._call("lt", self, o)

    def __le__(self, o):
        return self._call("le", self, o)

    def __gt__(self, o):
        return self._call("gt", self, o)

    def __ge__(self, o):
        return self._call("ge", self, o)

    def __eq__(self, o):  # type: ignore[override]
        return self._call("eq", self, o)

    def __ne__(self, o):  # type: ignore[override]
        return self._call("ne", self, o)

    __hash__ = object.__hash__

    def __and__(self, o):
        return self._call("logical_and", self, o)

    __rand__ = __and__

    def __or__(self, o):
        return self._call("logical_or", self, o)

    __ror__ = __or__

    def __invert__(self):
        return self._call("logical_not", self)

    # --- reductions ------------------------------------------------------------------------

    def sum(self, axis=None, keepdims=False):
        return self._call("sum", self, axis=axis, keepdims=keepdims)

    def max(self, axis=None, keepdims=False):
        return self._call("max", self, axis=axis, keepdims=keepdims)

    def min(self, axis=None, keepdims=False):
        return self._call("min", self, axis=axis, keepdims=keepdims)

    def mean(self, axis=None, keepdims=False):
        return self._call("mean", self, axis=axis, keepdims=keepdims)

    def argmax(self, axis=None, keepdims=False):
        return self._call("argmax", self, axis=axis, keepdims=keepdims)

    # --- shape -----------------------------------------------------------------------------

    def reshape(self, *shape):
        with self.builder.located():
            shape = infer_reshape(self.shape, _shape_arg(shape))
        return self._call("reshape", self, shape=shape)

    def transpose(self, *axes):
        axes = _shape_arg(axes) if axes else tuple(reversed(range(self.ndim)))
        return self._call("transpose", self, perm=axes)

    @property
    def T(self):
        return self.transpose()

    def broadcast_to(self, shape):
        return self._call("broadcast", self, shape=tuple(shape))

    def astype(self, dtype):
        return self.builder.cast(self, dtype)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.type}>"


def infer_reshape(old: tuple[int, ...], new: tuple) -> tuple[int, ...]:
    """Resolve one ``-1`` in a reshape target; ShapeError when sizes do not match."""
    new = tuple(int(d) for d in new)
    size = math.prod(old)
    if new.count(-1) > 1:
        raise ShapeError(f"reshape: only one dimension can be -1, got {new}")
    if -1 in new:
        rest = math.prod(d for d in new if d != -1)
        if rest == 0 or size % rest:
            raise ShapeError(f"cannot reshape {list(old)} ({size} elements) into {list(new)}")
        new = tuple(size // rest if d == -1 else d for d in new)
    if math.prod(new) != size or any(d < 0 for d in new):
        raise ShapeError(f"cannot reshape {list(old)} ({size} elements) into {list(new)}")
    return new


def matmul(b: Builder, x, y) -> Var:
    """numpy's ``matmul``: a 1-D operand is promoted to a matrix and the added axis removed."""
    xv, yv = b.var(b.lift(x)), b.var(b.lift(y))
    if xv.ndim == 0 or yv.ndim == 0:
        raise ShapeError(f"matmul: operands must have at least one dimension, got {xv.type} "
                         f"and {yv.type} (use * for scalars)", b.current_loc())
    squeeze_front, squeeze_back = xv.ndim == 1, yv.ndim == 1
    if squeeze_front:
        xv = xv.reshape(1, xv.shape[0])
    if squeeze_back:
        yv = yv.reshape(yv.shape[0], 1)
    out = b.call("matmul", xv, yv)
    if squeeze_front or squeeze_back:
        shape = list(out.shape)
        if squeeze_back:
            shape.pop(-1)
        if squeeze_front:
            shape.pop(-1 if squeeze_back else -2)
        out = out.reshape(*shape)
    return out


class _OpNamespace:
    """``op.exp(x)``, ``op.where(c, a, 0.0)``: call a registered op by name, on the builder of
    the first ``Var`` argument. Gradient rules and decompositions are written with it."""

    def __getattr__(self, name: str):
        def call(*args, **attrs):
            for a in args:
                if isinstance(a, Var):
                    return a.builder.call(name, *args, **attrs)
            raise LaminaError(f"op.{name}: needs at least one tensor argument")

        call.__name__ = name
        return call


op = _OpNamespace()
