"""The functions users call: ``lm.exp``, ``lm.where``, ``lm.softmax``, ``lm.concatenate``, ...

Inside a traced function they record ops. Outside one they run eagerly on numpy arrays, through
the reference interpreter (slow; meant for poking at a model, not for training).
"""

from __future__ import annotations

import operator

import numpy as np

from lamina.frontend.trace import current, user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Builder, Var
from lamina.ir.builder import matmul as _matmul
from lamina.ir.errors import LaminaError, ShapeError, TraceError
from lamina.ir.interpret import interpret
from lamina.ir.types import TensorType, normalize_axes, normalize_axis
from lamina.ir.variable import Variable

_SCALAR = (bool, int, float, np.bool_, np.integer, np.floating)


def _is_tensorlike(a) -> bool:
    return isinstance(a, (Var, Variable, np.ndarray, list)) or (
        isinstance(a, np.generic) and not isinstance(a, _SCALAR))


def run(fn, *args):
    """Call ``fn(builder, *operands)``: traced tensors in a trace, or eagerly on arrays.

    Array-like arguments (tensors, Variables, numpy arrays, lists) reach ``fn`` as ``Var``s;
    Python scalars stay scalars so they take the other operand's dtype.
    """
    ctx = current()
    if ctx is not None:
        b = ctx.builder
        return fn(b, *[b.var(b.lift(a)) if _is_tensorlike(a) else a for a in args])
    for a in args:
        if isinstance(a, Var):
            raise TraceError("a traced tensor was used after its trace ended (it escaped "
                             "the traced function, e.g. through a global)", user_loc())
    b = Builder("eager")
    arrays, operands = [], []
    for a in args:
        if _is_tensorlike(a):
            arr = a.host_value() if isinstance(a, Variable) else np.asarray(a)
            if arr.dtype == np.float64 and isinstance(a, list):
                arr = arr.astype(np.float32)
            p = b.add_input(f"a{len(arrays)}", TensorType(arr.shape, dt.dtype(arr.dtype)))
            arrays.append(arr)
            operands.append(b.var(p))
        else:
            operands.append(a)
    out = fn(b, *operands)
    return interpret(b.build([out]), arrays)[0][0]


def apply(op: str, *args, **attrs):
    """Record (or eagerly run) the registered op ``op``."""
    return run(lambda b, *xs: b.call(op, *xs, **attrs), *args)


# --- elementwise ------------------------------------------------------------------------------


def exp(x):
    """e**x, elementwise."""
    return apply("exp", x)


def log(x):
    """Natural logarithm, elementwise."""
    return apply("log", x)


def sqrt(x):
    return apply("sqrt", x)


def rsqrt(x):
    """1/sqrt(x), elementwise."""
    return apply("rsqrt", x)


def tanh(x):
    return apply("tanh", x)


def sigmoid(x):
    """1/(1+exp(-x)), computed without overflow."""
    return apply("sigmoid", x)


def softplus(x):
    """log(1 + exp(x)), computed stably; its gradient is sigmoid(x)."""
    return apply("softplus", x)


def relu(x):
    """max(x, 0)."""
    return apply("relu", x)


def gelu(x, approximate: str = "tanh"):
    """GELU; the tanh approximation unless ``approximate="none"`` (exact, through erf)."""
    return apply("gelu", x, approximate=approximate)


def erf(x):
    return apply("erf", x)


def abs(x):
    return apply("abs", x)


def sign(x):
    return apply("sign", x)


def negative(x):
    return apply("neg", x)


def square(x):
    return run(lambda b, v: v * v, x)


def add(x, y):
    return apply("add", x, y)


def subtract(x, y):
    return apply("sub", x, y)


def multiply(x, y):
    return apply("mul", x, y)


def divide(x, y):
    return apply("div", x, y)


def power(x, y):
    return apply("pow", x, y)


def maximum(x, y):
    """Elementwise max with broadcasting (gradient split evenly on ties)."""
    return apply("maximum", x, y)


def minimum(x, y):
    return apply("minimum", x, y)


def where(cond, x, y):
    """``x`` where ``cond`` else ``y``, with broadcasting; a non-bool ``cond`` means ``!= 0``."""

    def f(b, c, a, d):
        if not isinstance(c, Var):
            c = b.var(b.lift(np.asarray(c)))
        if not c.dtype.is_bool:
            c = c != 0
        return b.call("where", c, a, d)

    return run(f, cond, x, y)


def masked_fill(x, mask, value):
    """PyTorch's ``masked_fill``: ``value`` where the boolean ``mask`` (broadcast to ``x``'s
    shape) is true, ``x`` elsewhere; the result keeps ``x``'s shape and dtype.

    >>> import numpy as np, lamina as lm
    >>> lm.masked_fill(np.array([1.0, 2.0, 3.0], np.float32), np.array([True, False, True]), 0)
    array([0., 2., 0.], dtype=float32)
    """

    def f(b, v, m, fill):
        if not isinstance(m, Var):
            m = b.var(b.lift(np.asarray(m)))
        if not m.dtype.is_bool:
            raise LaminaError(f"masked_fill: the mask must be bool, got {m.type} (compare it, "
                              "e.g. mask != 0)", user_loc())
        try:
            shape = np.broadcast_shapes(m.shape, v.shape)
        except ValueError:
            shape = None
        if shape != v.shape:
            raise ShapeError(f"masked_fill: the mask {m.type} does not broadcast to the "
                             f"tensor's shape {v.type}", user_loc())
        if not isinstance(fill, Var):  # a number: its own dtype, then x's (2.7 -> 2 in ints)
            fill = b.var(b.lift(fill))
        if fill.ndim != 0:
            raise ShapeError(f"masked_fill: value must be a number or a 0-d tensor, got "
                             f"{fill.type}", user_loc())
        fill = b.cast(fill, v.dtype) if fill.dtype != v.dtype else fill
        return b.call("where", m, fill, v)

    return run(f, x, mask, value)


def clip(x, min=None, max=None):
    def f(b, v):
        if min is not None:
            v = b.call("maximum", v, min)
        if max is not None:
            v = b.call("minimum", v, max)
        return v

    return run(f, x)


def stop_gradient(x):
    """The same value, with a zero gradient."""
    return apply("stop_gradient", x)


def astype(x, dtype):
    return run(lambda b, v: b.cast(v, dtype), x)


# --- trigonometry, rounding, floor division and remainder --------------------------------------


def sin(x):
    """Sine (radians), elementwise.

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lm.sin)(np.array([0.0, np.pi / 2], np.float32))
    array([0., 1.], dtype=float32)
    """
    return apply("sin", x)


def cos(x):
    """Cosine (radians), elementwise."""
    return apply("cos", x)


def floor(x):
    """The largest integer <= x (integers are returned unchanged); zero gradient."""
    return apply("floor", x)


def ceil(x):
    """The smallest integer >= x (integers are returned unchanged); zero gradient."""
    return apply("ceil", x)


def round(x, decimals: int = 0):
    """Round to ``decimals`` places, halves to even (numpy's ``round``, ``torch.round``).

    With ``decimals`` other than 0 a float is scaled by 10**decimals, rounded and scaled back,
    as numpy does. Zero gradient.

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lm.round)(np.array([0.5, 1.5, 2.5, -0.5], np.float32))
    array([ 0.,  2.,  2., -0.], dtype=float32)
    """
    import operator

    try:
        decimals = operator.index(decimals)
    except TypeError:
        raise LaminaError(f"round: decimals must be an int, got {decimals!r}",
                          user_loc()) from None

    def f(b, v):
        if decimals == 0 or not v.dtype.is_float:
            if decimals < 0 and not v.dtype.is_float:
                raise LaminaError("round: negative decimals of an integer tensor are not "
                                  "supported (cast it to a float first)", user_loc())
            return b.call("round", v)
        if decimals > 0:
            scale = 10.0 ** decimals
            return b.call("round", v * scale) / scale
        scale = 10.0 ** -decimals
        return b.call("round", v / scale) * scale

    return run(f, x)


def floor_divide(x, y):
    """numpy's ``x // y``: floor(x / y) for floats and integers (integer division by zero
    gives 0, as numpy does); zero gradient.

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lambda a, b: a // b)(np.array([7, -7], np.int64), np.array([2, 2]))
    array([ 3, -4])
    """
    return apply("floor_divide", x, y)


def remainder(x, y):
    """numpy's ``x % y`` (``torch.remainder``): x - y * floor(x / y), with the sign of the
    divisor (integer remainder by zero gives 0, as numpy does).

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lambda a: a % 3.0)(np.array([5.0, -5.0], np.float32))
    array([2., 1.], dtype=float32)
    """
    return apply("remainder", x, y)


mod = remainder


def cumsum(x, axis=None, dtype=None, reverse: bool = False):
    """Running sum along ``axis`` (numpy's ``cumsum``: ``axis=None`` runs over the flattened
    tensor; PyTorch's ``cumsum(x, dim)``). Integers and bools accumulate in int64; ``dtype``
    casts the input first. ``reverse=True`` sums from the end (JAX's ``lax.cumsum``).

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lambda x: lm.cumsum(x, axis=1))(np.array([[1, 2, 3], [4, 5, 6]]))
    array([[ 1,  3,  6],
           [ 4,  9, 15]])
    """

    def f(b, v):
        if dtype is not None:
            v = b.cast(v, dtype)
        if axis is None:
            v = v.reshape(-1)
        elif v.ndim == 0:  # PyTorch: a 0-d tensor along dim 0 or -1 is itself
            with b.located():
                normalize_axis(axis, 1)
            return b.call("cumsum", v.reshape(1), axis=0, reverse=reverse).reshape(())
        return b.call("cumsum", v, axis=axis if axis is not None else 0, reverse=reverse)

    return run(f, x)


def pad(x, pad_width, mode: str = "constant", value=0, constant_values=None):
    """numpy's ``pad``: ``pad_width`` is an int, a (before, after) pair or one pair per axis.

    Modes: "constant" (``value``, or numpy's name ``constant_values``), "edge" (or
    "replicate", PyTorch's name), "reflect" (mirrored without the edge), "symmetric" (with
    it) and "wrap" (or "circular"). The gradient sums what each element was copied to.

    >>> import numpy as np, lamina as lm
    >>> lm.pad(np.array([1, 2, 3]), (2, 1), mode="reflect")
    array([3, 2, 1, 2, 3, 2])
    """
    from lamina.frontend.padding import pad_numpy

    if constant_values is not None:
        if value != 0:
            raise LaminaError("pad: give the fill as value= or constant_values=, not both",
                              user_loc())
        value = constant_values
    return run(lambda b, v: pad_numpy(b, v, pad_width, mode, value), x)


# --- reductions and normalizations ------------------------------------------------------------


def sum(x, axis=None, keepdims=False):
    return apply("sum", x, axis=axis, keepdims=keepdims)


def mean(x, axis=None, keepdims=False):
    return apply("mean", x, axis=axis, keepdims=keepdims)


def max(x, axis=None, keepdims=False):
    return apply("max", x, axis=axis, keepdims=keepdims)


def min(x, axis=None, keepdims=False):
    return apply("min", x, axis=axis, keepdims=keepdims)


def argmax(x, axis=None, keepdims=False):
    return apply("argmax", x, axis=axis, keepdims=keepdims)


def _variance(v, axis, keepdims):
    centered = v - v.mean(axis=axis, keepdims=True)
    return (centered * centered).mean(axis=axis, keepdims=keepdims)


def var(x, axis=None, keepdims=False):
    """Population variance (numpy's default ddof=0)."""
    return run(lambda b, v: _variance(v, axis, keepdims), x)


def std(x, axis=None, keepdims=False):
    return run(lambda b, v: b.call("sqrt", _variance(v, axis, keepdims)), x)


def softmax(x, axis: int = -1):
    return apply("softmax", x, axis=axis)


def log_softmax(x, axis: int = -1):
    return apply("log_softmax", x, axis=axis)


def logsumexp(x, axis=None, keepdims=False):
    """log(sum(exp(x))) over axes, computed stably."""

    def f(b, v):
        m = b.call("stop_gradient", v.max(axis=axis, keepdims=True))
        s = b.call("log", b.call("exp", v - m).sum(axis=axis, keepdims=True)) + m
        return s if keepdims else s.reshape(
            [d for i, d in enumerate(v.shape) if i not in normalize_axes(axis, v.ndim)])

    return run(f, x)


# --- linear algebra ---------------------------------------------------------------------------


def matmul(x, y):
    """numpy's matmul (``x @ y``): batched, with 1-D operands treated as vectors."""
    return run(_matmul, x, y)


# --- shapes -----------------------------------------------------------------------------------


def reshape(x, shape):
    return run(lambda b, v: v.reshape(shape), x)


def transpose(x, axes=None):
    return run(lambda b, v: v.transpose(*(axes or ())), x)


def broadcast_to(x, shape):
    return run(lambda b, v: v.broadcast_to(tuple(shape)), x)


def expand_dims(x, axis: int):
    def f(b, v):
        a = normalize_axis(axis, v.ndim + 1)
        return v.reshape(v.shape[:a] + (1,) + v.shape[a:])

    return run(f, x)


def squeeze(x, axis=None):
    def f(b, v):
        axes = [i for i, d in enumerate(v.shape) if d == 1] if axis is None else \
            list(normalize_axes(axis, v.ndim))
        for a in axes:
            if v.shape[a] != 1:
                raise LaminaError(f"squeeze: axis {a} of {v.type} has size {v.shape[a]}, not 1",
                                  user_loc())
        return v.reshape([d for i, d in enumerate(v.shape) if i not in axes])

    return run(f, x)


def concatenate(xs, axis: int = 0):
    """Join a sequence of tensors along an existing axis."""
    xs = list(xs)
    if not xs:
        raise LaminaError("concatenate needs at least one tensor", user_loc())
    return run(lambda b, *vs: b.call("concatenate", *vs, axis=axis), *xs)


def stack(xs, axis: int = 0):
    """Join a sequence of same-shaped tensors along a new axis."""
    xs = list(xs)
    if not xs:
        raise LaminaError("stack needs at least one tensor", user_loc())

    def f(b, *vs):
        a = normalize_axis(axis, vs[0].ndim + 1)
        parts = [v.reshape(v.shape[:a] + (1,) + v.shape[a:]) for v in vs]
        return b.call("concatenate", *parts, axis=a)

    return run(f, *xs)


def take(x, indices, axis=None):
    """numpy's take: gather ``indices`` along ``axis`` (``None``: from the flattened tensor)."""

    def f(b, v, idx):
        if axis is None:
            v = v.reshape(-1)
        return b.call("take", v, idx, axis=0 if axis is None else axis)

    return run(f, x, indices)


def one_hot(labels, num_classes: int, dtype=dt.float32):
    """1.0 at each label's index along a new last axis, 0.0 elsewhere."""
    return apply("one_hot", labels, num_classes=num_classes, dtype=dtype)


# --- creation ---------------------------------------------------------------------------------


def _creation_shape(shape) -> tuple[int, ...]:
    """``shape`` as a tuple of ints, or a ShapeError naming it (a float or negative dimension)."""
    try:
        dims = (operator.index(shape),)
    except TypeError:
        try:
            dims = tuple(operator.index(d) for d in shape)
        except TypeError:
            raise ShapeError(f"shape {shape!r} must be an int or a sequence of ints",
                             user_loc()) from None
    if any(d < 0 for d in dims):
        raise ShapeError(f"negative dimension in shape {dims}", user_loc())
    return dims


def full(shape, value, dtype=None):
    shape = _creation_shape(shape)
    d = dt.dtype(dtype) if dtype is not None else (
        dt.DEFAULT_FLOAT if isinstance(value, float) else
        dt.bool_ if isinstance(value, bool) else dt.DEFAULT_INT)
    ctx = current()
    if ctx is None:
        try:
            TensorType(shape, d)  # a shape no machine can hold: refused, naming it
        except ShapeError as e:
            raise e.at(user_loc()) from None
        return np.full(shape, value, d.np)
    return ctx.builder.var(ctx.builder.constant(value, d, shape))


def zeros(shape, dtype=dt.float32):
    return full(shape, 0, dtype)


def ones(shape, dtype=dt.float32):
    return full(shape, 1, dtype)


def zeros_like(x, dtype=None):
    return full(x.shape, 0, dtype or _dtype_of(x))


def ones_like(x, dtype=None):
    return full(x.shape, 1, dtype or _dtype_of(x))


def _dtype_of(x):
    return x.dtype if isinstance(x.dtype, dt.DType) else dt.dtype(x.dtype)


def arange(n: int, dtype=dt.int64):
    """0, 1, ..., n-1 (a single stop argument, as the common case of numpy's arange)."""
    ctx = current()
    d = dt.dtype(dtype)
    if ctx is None:
        return np.arange(n, dtype=d.np)
    return ctx.builder.var(ctx.builder.emit("iota", (), {"axis": 0, "dtype": d, "shape": (n,)}))
