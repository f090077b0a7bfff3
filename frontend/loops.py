"""Loops in traced functions: ``lm.scan``, ``lm.fori_loop`` and ``lm.while_loop``.

A Python ``for`` loop in a traced function is unrolled: every step adds its ops to the graph,
so the graph and its compile time grow with the trip count. These functions trace their body
once, into the region of one loop node (``ir/ops/loop.py``), whatever the trip count.

Carries and per-step values are pytrees (tuples, lists, dicts) of tensors, with JAX's
conventions. The body may read anything its enclosing function can: tensors of that function
(captured as loop constants), parameters and buffers of modules. It cannot assign state; a
value computed inside the body leaves it only by being returned.

>>> import numpy as np, lamina as lm
>>> def cumulative(xs):
...     def step(total, x):
...         total = total + x
...         return total, total * 2
...     return lm.scan(step, lm.zeros((), "float32"), xs)
>>> total, doubled = lm.compile(cumulative)(np.arange(4, dtype=np.float32))
>>> float(total), doubled
(6.0, array([ 0.,  2.,  6., 12.], dtype=float32))
"""

from __future__ import annotations

import numpy as np

from lamina.frontend.tensor import Tensor
from lamina.frontend.trace import TraceContext, _local, _TraceBuilder, current, sanitize, user_loc
from lamina.ir import dtypes as dt
from lamina.ir.builder import Var
from lamina.ir.errors import DTypeError, LaminaError, ShapeError, TraceError
from lamina.ir.graph import Param
from lamina.ir.ops.loop import INDEX
from lamina.ir.tree import flatten, unflatten
from lamina.ir.types import TensorType
from lamina.ir.variable import Variable


def _is_leaf(x) -> bool:
    return isinstance(x, (Var, Variable, np.ndarray, np.generic, bool, int, float))


def _describe_tree(tree) -> str:
    kind = tree[0]
    if kind == "leaf":
        return "tensor"
    if kind == "none":
        return "None"
    if kind == "dict":
        return "{" + ", ".join(f"{k!r}: {_describe_tree(c)}" for k, c in tree[1]) + "}"
    inner = ", ".join(_describe_tree(c) for c in tree[1])
    return f"({inner}{',' if len(tree[1]) == 1 else ''})" if kind == "tuple" else f"[{inner}]"


class _BodyContext:
    """The trace context of a loop body: ops go to the body's builder, state is read through
    the enclosing context (and captured), assigning state is an error, and random draws
    without a key mix the step index into the key."""

    def __init__(self, parent, name: str, what: str):
        self.parent = parent
        self.what = what
        self.used_names: set[str] = set()
        self.builder = _TraceBuilder(name, self, Tensor, parent=parent.builder)
        self.builder.loc_provider = user_loc
        self.builder.lift_hook = self._lift
        self.index = None  # the step index (a Tensor), set by the loop

    unique = TraceContext.unique

    def __getattr__(self, name):  # finalizers, modes, streams, ...: the enclosing trace's
        return getattr(self.parent, name)

    def _lift(self, x):
        if isinstance(x, Variable):
            return self.read(x).value
        return None

    def read(self, var: Variable):
        return self.parent.read(var)

    def rng_key(self, var: Variable):
        key = self.parent.rng_key(var)
        return key * (2 ** 32) + self.index.astype(dt.int64)

    def _no_state(self, var, *args, **kwargs):
        raise TraceError(f"{var.name} cannot be assigned inside the body of {self.what}: "
                         "carry its value through the loop and assign it after the loop",
                         user_loc())

    assign = assign_state = _no_state

    def state_param(self, var: Variable) -> Param:
        return self.parent.state_param(var)

    def __enter__(self):
        chain = self.builder.parent
        self._saved = []
        while chain is not None:
            self._saved.append((chain, chain.redirect))
            chain.redirect = self.builder
            chain = chain.parent
        _local.stack.append(self)
        return self

    def __exit__(self, *exc):
        _local.stack.pop()
        for b, r in self._saved:
            b.redirect = r
        self.builder.closed = True


def _parent(what: str):
    ctx = current()
    if ctx is None:
        raise AssertionError("called outside a trace")
    return ctx


def _leaves_in(b, leaves, what: str, types=None):
    """Graph values (in ``b``) of pytree leaves: tensors, Variables, arrays, numbers (as the
    dtype in ``types``, when given)."""
    out = []
    for k, leaf in enumerate(leaves):
        want = types[k] if types is not None else None
        if isinstance(leaf, (bool, int, float)) and not isinstance(leaf, np.generic):
            d = want.dtype if want is not None else None
            out.append(b.lift(leaf, d))
        else:
            try:
                out.append(b.lift(leaf))
            except LaminaError as e:
                raise TraceError(f"{what}: leaf {k} is not a tensor ({e.message})",
                                 user_loc()) from None
    return out


def _new_carry(what: str, body, new, types, in_tree):
    """The values of the carry the body returned, checked against the initial carry."""
    leaves, out_tree = flatten(new, is_leaf=_is_leaf)
    if out_tree != in_tree:
        raise TraceError(f"{what}: the body returned a carry of structure "
                         f"{_describe_tree(out_tree)}, but the initial carry is "
                         f"{_describe_tree(in_tree)} (a carry keeps its structure)", user_loc())
    vals = _leaves_in(body, leaves, f"{what}: the carry returned by the body", types)
    _check_carries(what, vals, types)
    return vals


def _check_carries(what: str, new, types) -> None:
    for k, (v, t) in enumerate(zip(new, types)):
        if v.type == t:
            continue
        where = f" (computed at {v.loc.short})" if getattr(v, "loc", None) is not None else ""
        err = ShapeError if v.type.shape != t.shape else DTypeError
        raise err(f"{what}: carry {k} enters the body as {t} and leaves it as "
                  f"{v.type}{where}; a carry keeps its shape and dtype from step to step "
                  "(cast or reshape it in the body, or start it with that type)", user_loc())


def _trace_body(what: str, name: str, fn, carry_types, carry_tree, slice_types, slice_tree,
                call):
    """Trace the body once. ``call(index, carry, xs)`` calls the user's function(s) and
    returns a list of the region's result leaves (any values or numbers) plus the trees of
    its parts. Returns (region, captured outer values, result info)."""
    parent = _parent(what)
    ctx = _BodyContext(parent, name, what)
    b = ctx.builder
    index = b.add_input(ctx.unique("i"), INDEX)
    ctx.index = b.var(index)
    carry_params = [b.add_input(ctx.unique(f"carry{k}"), t) for k, t in enumerate(carry_types)]
    slice_params = [b.add_input(ctx.unique(f"x{k}"), t) for k, t in enumerate(slice_types)]
    with ctx:
        carry = unflatten(carry_tree, [b.var(p) for p in carry_params])
        xs = unflatten(slice_tree, [b.var(p) for p in slice_params]) if slice_tree else None
        results, extra = call(ctx.index, carry, xs, b)
    captured = list(b.captures.items())
    b.inputs = [index] + [p for _, p in captured] + carry_params + slice_params
    region = b.build(results)
    return region, [outer for outer, _ in captured], extra


def _emit_loop(op: str, name: str, operands, attrs, region):
    ctx = current()
    b = ctx.builder
    attrs = dict(attrs, name=name)
    node = b.emit(op, operands, attrs, region=region)
    return [b.var(b.emit("get", (node,), {"index": k})) for k in range(len(node.type))]


def _initial(what: str, init):
    """The initial carry's values (in the enclosing trace), its structure and types."""
    leaves, tree = flatten(init, is_leaf=_is_leaf)
    vals = _leaves_in(current().builder, leaves, f"{what}: the initial carry")
    return vals, tree, [v.type for v in vals]


def _loop_name(fn, default: str) -> str:
    name = getattr(fn, "__name__", None) or default
    return sanitize(default if name == "<lambda>" else name)


def _eager(fn, args):
    """Run a loop outside a trace: compile it (reference backend) on the concrete values."""
    from lamina.frontend import transforms

    leaves, tree = flatten(args, is_leaf=_is_leaf)

    def run(*xs):
        return fn(*unflatten(tree, list(xs)))

    arrays = [np.asarray(x.host_value()) if isinstance(x, Variable) else x for x in leaves]
    return transforms._run_compiled(run, arrays)


def scan(f, init, xs=None, length: int | None = None, reverse: bool = False,
         checkpoint: bool = False):
    """Loop ``f`` over the leading axis of ``xs``, threading a carry (JAX's ``lax.scan``):

        def scan(f, init, xs, length=None, reverse=False):
            carry, ys = init, []
            for x in (reversed(xs) if reverse else xs):   # xs[t] of every leaf
                carry, y = f(carry, x)
                ys.append(y)
            return carry, stack(ys)                      # ys in the order of xs

    ``init`` and the carry ``f`` returns are pytrees of tensors of one structure and one type
    per leaf; ``xs`` is a pytree of tensors with a common leading length (or None, with
    ``length``); ``y`` a pytree of tensors (or None). ``f`` is traced once: the compiled loop
    is one node whatever the length. ``lm.grad`` differentiates through it (a reverse scan);
    ``checkpoint=True`` makes the backward pass recompute each step from its carry instead of
    storing its intermediate values.

    >>> import numpy as np, lamina as lm
    >>> def rnn(h0, xs, w):
    ...     return lm.scan(lambda h, x: (lm.tanh(h @ w + x),) * 2, h0, xs)
    >>> h, hs = lm.compile(rnn)(np.zeros((1, 2), np.float32), np.ones((3, 1, 2), np.float32),
    ...                         np.eye(2, dtype=np.float32))
    >>> hs.shape
    (3, 1, 2)
    """
    if current() is None:
        return _eager(lambda i, x: scan(f, i, x, length, reverse, checkpoint), (init, xs))
    what = "lm.scan"
    init_vals, init_tree, carry_types = _initial(what, init)
    x_leaves, x_tree = flatten(xs, is_leaf=_is_leaf)
    x_vals = _leaves_in(current().builder, x_leaves, f"{what}: xs")
    lengths = {v.type.shape[0] if v.type.ndim else None for v in x_vals}
    if None in lengths:
        raise ShapeError(f"{what}: every leaf of xs needs a leading axis to scan over; got "
                         f"{[str(v.type) for v in x_vals]}", user_loc())
    if length is not None:
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 0:
            raise LaminaError(f"{what}: length must be a non-negative int, got {length!r}",
                              user_loc())
        lengths.add(int(length))
    if len(lengths) != 1:
        raise ShapeError(f"{what}: " + ("give xs or length" if not lengths else
                         f"the leaves of xs (and length) disagree on the length: "
                         f"{sorted(lengths)}"), user_loc())
    n = lengths.pop()
    slice_types = [v.type.with_shape(v.type.shape[1:]) for v in x_vals]

    def call(index, carry, x, body):
        out = f(carry, x)
        if not (isinstance(out, tuple) and len(out) == 2):
            raise TraceError(f"{what}: the body must return a pair (carry, y), got "
                             f"{type(out).__name__}", user_loc())
        new, y = out
        new_vals = _new_carry(what, body, new, carry_types, init_tree)
        y_leaves, y_tree = flatten(y, is_leaf=_is_leaf)
        y_vals = _leaves_in(body, y_leaves, f"{what}: the y returned by the body")
        return new_vals + y_vals, y_tree

    name = _loop_name(f, "scan_body")
    region, consts, y_tree = _trace_body(what, name, f, carry_types, init_tree, slice_types,
                                         x_tree if x_leaves else None, call)
    parts = _emit_loop("scan", name, consts + init_vals + x_vals,
                       {"num_consts": len(consts), "num_carry": len(init_vals), "length": n,
                        "reverse": bool(reverse), "checkpoint": bool(checkpoint)}, region)
    k = len(init_vals)
    return unflatten(init_tree, parts[:k]), unflatten(y_tree, parts[k:])


def fori_loop(lower: int, upper: int, body, init, checkpoint: bool = False):
    """``for i in range(lower, upper): carry = body(i, carry)`` as one loop node (JAX's
    ``lax.fori_loop``). ``lower`` and ``upper`` are Python ints (the trip count is static, so
    the loop differentiates: ``lm.grad`` runs it backwards); ``i`` is an int32 scalar tensor.

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lambda x: lm.fori_loop(0, 10, lambda i, c: c * 0.5 + i, x))(
    ...     np.float32(0))
    array(16.003906, dtype=float32)
    """
    what = "lm.fori_loop"
    for k, v in (("lower", lower), ("upper", upper)):
        if isinstance(v, Var):
            raise TraceError(f"{what}: {k} is a traced tensor; the bounds must be Python ints "
                             "(for a trip count known only at run time use lm.while_loop)",
                             user_loc())
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or \
                not -2 ** 31 <= v < 2 ** 31:
            raise LaminaError(f"{what}: {k} must be an int32 Python int, got {v!r}",
                              user_loc())
    if current() is None:
        return _eager(lambda c: fori_loop(lower, upper, body, c, checkpoint), (init,))
    init_vals, init_tree, carry_types = _initial(what, init)

    def call(index, carry, _, bb):
        new = body(index, carry)
        new_vals = _new_carry(what, bb, new, carry_types, init_tree)
        return new_vals, None

    name = _loop_name(body, "fori_body")
    region, consts, _ = _trace_body(what, name, body, carry_types, init_tree, [], None, call)
    parts = _emit_loop("fori_loop", name, consts + init_vals,
                       {"num_consts": len(consts), "lower": int(lower), "upper": int(upper),
                        "checkpoint": bool(checkpoint)}, region)
    return unflatten(init_tree, parts)


def while_loop(cond, body, init):
    """``while cond(carry): carry = body(carry)`` as one loop node (JAX's
    ``lax.while_loop``): the trip count may depend on the values. ``cond`` returns a bool
    scalar tensor. Forward only: ``lm.grad`` through a while_loop is an error (use
    ``fori_loop`` or ``scan`` when the trip count is static).

    >>> import numpy as np, lamina as lm
    >>> lm.compile(lambda x: lm.while_loop(lambda c: c < 100, lambda c: c * 3, x))(
    ...     np.float32(1))
    array(243., dtype=float32)
    """
    if current() is None:
        return _eager(lambda c: while_loop(cond, body, c), (init,))
    what = "lm.while_loop"
    init_vals, init_tree, carry_types = _initial(what, init)

    def call(index, carry, _, bb):
        p = bb.lift(cond(carry))
        if p.type != TensorType((), dt.bool_):
            raise DTypeError(f"{what}: cond must return a bool scalar, got {p.type} (compare: "
                             "e.g. `i < n`; reduce with .any() or .all())", user_loc())
        new = body(carry)
        new_vals = _new_carry(what, bb, new, carry_types, init_tree)
        return [p] + new_vals, None

    name = _loop_name(body, "while_body")
    region, consts, _ = _trace_body(what, name, body, carry_types, init_tree, [], None, call)
    parts = _emit_loop("while_loop", name, consts + init_vals, {"num_consts": len(consts)},
                       region)
    return unflatten(init_tree, parts)
