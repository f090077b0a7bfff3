"""Loops: ``scan``, ``fori_loop`` and ``while_loop`` hold a body region that runs once per step,
and ``get`` reads one of a loop's results. A Python loop in a traced function is unrolled by the
trace (its graph, and its compile time, grow with the trip count); these ops are one node
whatever the trip count.

Every loop body is a region (a Graph that reads only its own parameters, like a ``kernel``'s),
and every region takes the same parameters, in this order:

    i            i32[]: the step's index (scan: the position in the stacked inputs, counting
                 down for ``reverse``; fori_loop: the loop counter; while_loop: the steps done)
    consts       values the body reads that do not change from step to step (weights, values
                 captured from the enclosing function): operands ``[0, num_consts)``
    carries      the values the loop threads through its steps (an LSTM's h and c)
    x slices     scan only: step i's slice ``xs[i]`` of each stacked input

and yields:

    scan         the new carries, then the step's outputs ``ys``, stacked into ``[length, ...]``
    fori_loop    the new carries
    while_loop   a ``bool[]`` that says whether to take the step, then the new carries. The
                 condition is computed from the carries the step starts from: only the nodes it
                 depends on run first; if it is false, the loop ends there, with those carries.

A loop's value is a tuple (``TupleType``): its final carries, then (scan) its stacked outputs.

    %5 = scan @body(%w, %h0, %xs) {num_consts=1, num_carry=1, length=50, reverse=false,
                                   checkpoint=false} : (f32[32,128], f32[50,32,128]) {
      ^(%i: i32[], %w: f32[128,128], %h: f32[32,128], %x: f32[32,128]):
        ...
        yield %h2, %h2
    }
    %6 = get(%5) {index=1} : f32[50,32,128]

``checkpoint`` (scan, fori_loop) asks autodiff to recompute each step's intermediate values in
the backward pass from the saved carries instead of storing them (memory for time, like
``jax.checkpoint``).
"""

from __future__ import annotations

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.errors import LaminaError, VerifyError
from lamina.ir.ops.domain import Domain
from lamina.ir.ops.registry import defop
from lamina.ir.types import TensorType, TupleType

INDEX = TensorType((), dt.int32)  # the step index every loop body takes first
LOOP_OPS = ("scan", "fori_loop", "while_loop")


def _int_attr(attrs, key, lo=0, hi=2 ** 31 - 1):
    v = attrs.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= int(v) <= hi:
        raise ValueError(f"{key} must be an integer in [{lo}, {hi}], got {v!r}")
    return int(v)


def _name(attrs, op):
    name = attrs.get("name")
    if not isinstance(name, str) or not name:
        raise LaminaError(f"{op}: needs a body name, got {name!r}")
    return name


def _check_region(op, attrs, region, in_types, out_types):
    """The region's parameters are ``in_types`` and its results ``out_types`` (None: any)."""
    where = f"{op} @{attrs['name']}"
    if region is None:
        raise VerifyError(f"{where} has no body")
    if region.state or region.updates:
        raise VerifyError(f"{where}: a loop body has no state of its own")
    if len(region.inputs) != len(in_types):
        raise VerifyError(f"{where}: the body takes {len(region.inputs)} parameters, the loop "
                          f"gives it {len(in_types)} (the index, consts, carries, slices)")
    for p, t in zip(region.inputs, in_types):
        if p.type != t:
            raise VerifyError(f"{where}: body parameter %{p.name} is {p.type}, the loop gives "
                              f"it {t}")
    outs = [v.type for v in region.outputs]
    if len(outs) != len(out_types):
        raise VerifyError(f"{where}: the body yields {len(outs)} values, the loop needs "
                          f"{len(out_types)}")
    for k, (got, want) in enumerate(zip(outs, out_types)):
        if want is not None and got != want:
            raise VerifyError(f"{where}: the body's result {k} is {got}, the loop needs {want} "
                              "(a carry keeps its shape and dtype from step to step)")
    return outs


def _split(op, types, attrs):
    nc = attrs["num_consts"]
    if nc > len(types):
        raise VerifyError(f"{op} @{attrs['name']}: num_consts={nc} but only {len(types)} "
                          "operands")
    return list(types[:nc]), list(types[nc:])


# --- scan -------------------------------------------------------------------------------------


def _scan_canon(types, attrs):
    attrs["name"] = _name(attrs, "scan")
    attrs["num_consts"] = _int_attr(attrs, "num_consts", 0, len(types))
    attrs["num_carry"] = _int_attr(attrs, "num_carry", 0, len(types) - attrs["num_consts"])
    attrs["length"] = _int_attr(attrs, "length")
    attrs["reverse"] = bool(attrs.get("reverse", False))
    attrs["checkpoint"] = bool(attrs.get("checkpoint", False))
    return attrs


def scan_parts(types, attrs):
    """(consts, carries, xs) of a scan's operand list (types or values)."""
    nc, nk = attrs["num_consts"], attrs["num_carry"]
    return list(types[:nc]), list(types[nc:nc + nk]), list(types[nc + nk:])


def _scan_infer(types, attrs, region):
    consts, carries, xs = scan_parts(types, attrs)
    n = attrs["length"]
    for k, t in enumerate(xs):
        if t.ndim == 0 or t.shape[0] != n:
            raise VerifyError(f"scan @{attrs['name']}: stacked input {k} is {t}, it needs a "
                              f"leading axis of the length {n}")
    slices = [t.with_shape(t.shape[1:]) for t in xs]
    ny = max(0, len(region.outputs) - len(carries)) if region is not None else 0
    outs = _check_region("scan", attrs, region, [INDEX] + consts + carries + slices,
                         carries + [None] * ny)
    ys = outs[len(carries):]
    return TupleType(carries + [t.with_shape((n,) + t.shape) for t in ys])


def _run_body(region, args):
    from lamina.ir.interpret import interpret

    return interpret(region, args)[0]


def _scan_ref(*args, region, name, num_consts, num_carry, length, reverse, checkpoint):
    consts, carry, xs = scan_parts(args, {"num_consts": num_consts, "num_carry": num_carry})
    ny = len(region.outputs) - num_carry
    ys: list = [None] * ny
    for t in (reversed(range(length)) if reverse else range(length)):
        out = _run_body(region, [np.int32(t)] + consts + carry + [x[t] for x in xs])
        carry = out[:num_carry]
        for k, y in enumerate(out[num_carry:]):
            if ys[k] is None:
                ys[k] = np.empty((length,) + y.shape, y.dtype)
            ys[k][t] = y
    if length == 0:
        ys = [np.empty((0,) + v.type.shape, v.type.dtype.np)
              for v in region.outputs[num_carry:]]
    return tuple(carry) + tuple(ys)


defop("scan", arity=None, kind="loop", region=True,
      attrs=("name", "num_consts", "num_carry", "length", "reverse", "checkpoint"),
      canon=_scan_canon, infer=_scan_infer, ref=_scan_ref, domain=Domain(first=None, via="lm.scan"),
      doc="a loop over the leading axis of stacked inputs: carries in, carries and stacked "
          "per-step outputs out")


# --- fori_loop ---------------------------------------------------------------------------------


def _fori_canon(types, attrs):
    attrs["name"] = _name(attrs, "fori_loop")
    attrs["num_consts"] = _int_attr(attrs, "num_consts", 0, len(types))
    attrs["lower"] = _int_attr(attrs, "lower", -2 ** 31, 2 ** 31 - 1)
    attrs["upper"] = _int_attr(attrs, "upper", -2 ** 31, 2 ** 31 - 1)
    attrs["checkpoint"] = bool(attrs.get("checkpoint", False))
    return attrs


def _fori_infer(types, attrs, region):
    consts, carries = _split("fori_loop", types, attrs)
    _check_region("fori_loop", attrs, region, [INDEX] + consts + carries, carries)
    return TupleType(carries)


def _fori_ref(*args, region, name, num_consts, lower, upper, checkpoint):
    consts, carry = list(args[:num_consts]), list(args[num_consts:])
    for i in range(lower, upper):
        carry = _run_body(region, [np.int32(i)] + consts + carry)
    return tuple(carry)


defop("fori_loop", arity=None, kind="loop", region=True,
      attrs=("name", "num_consts", "lower", "upper", "checkpoint"),
      canon=_fori_canon, infer=_fori_infer, ref=_fori_ref, domain=Domain(first=None, via="lm.fori_loop"),
      doc="a counted loop: carries through upper - lower steps of the body")


# --- while_loop --------------------------------------------------------------------------------


def _while_canon(types, attrs):
    attrs["name"] = _name(attrs, "while_loop")
    attrs["num_consts"] = _int_attr(attrs, "num_consts", 0, len(types))
    return attrs


def _while_infer(types, attrs, region):
    consts, carries = _split("while_loop", types, attrs)
    _check_region("while_loop", attrs, region, [INDEX] + consts + carries,
                  [TensorType((), dt.bool_)] + carries)
    return TupleType(carries)


def condition_nodes(region) -> list:
    """The nodes of a while_loop body that its condition (result 0) depends on, in order."""
    from lamina.ir.graph import ancestors

    need = ancestors(region.outputs[:1])
    return [n for n in region.nodes if n in need]


def split_while(region):
    """(condition, body) of a while_loop's region: the nodes its condition needs, yielding
    it; and the nodes its new carries need, yielding them (what backends run as two
    functions, so that the body runs only when the condition holds)."""
    from lamina.ir.graph import ancestors

    cond = region.replace(nodes=condition_nodes(region), outputs=region.outputs[:1])
    need = ancestors(region.outputs[1:])
    body = region.replace(nodes=[n for n in region.nodes if n in need],
                          outputs=region.outputs[1:])
    return cond, body


def _while_ref(*args, region, name, num_consts):
    from lamina.ir.interpret import eval_node

    consts, carry = list(args[:num_consts]), list(args[num_consts:])
    first = condition_nodes(region)
    rest = [n for n in region.nodes if n not in set(first)]
    i = 0
    while True:
        env = dict(zip(region.inputs, [np.int32(i)] + consts + carry))
        for n in first:
            env[n] = eval_node(n, [env[v] for v in n.inputs])
        if not bool(env[region.outputs[0]]):
            return tuple(carry)
        for n in rest:
            env[n] = eval_node(n, [env[v] for v in n.inputs])
        carry = [env[v] for v in region.outputs[1:]]
        i += 1
        if i >= 2 ** 31 - 1:
            raise LaminaError(f"while_loop @{name} ran 2^31 - 1 steps without its condition "
                              "turning false")


defop("while_loop", arity=None, kind="loop", region=True, attrs=("name", "num_consts"),
      canon=_while_canon, infer=_while_infer, ref=_while_ref,
      domain=Domain(first=None, via="lm.while_loop"),
      doc="a loop while a condition of the carries holds (forward only: not differentiable)")


# --- get ---------------------------------------------------------------------------------------


def _get_canon(types, attrs):
    attrs["index"] = _int_attr(attrs, "index")
    return attrs


def _get_infer(types, attrs):
    (t,) = types
    if not isinstance(t, TupleType):
        raise VerifyError(f"get reads a part of a loop's result, not of a {t} value")
    k = attrs["index"]
    if k >= len(t):
        raise VerifyError(f"get: index {k} out of range for {t}")
    return t.types[k]


def _get_ref(t, index):
    return t[index]


defop("get", arity=1, kind="loop", attrs=("index",), canon=_get_canon, infer=_get_infer,
      ref=_get_ref, domain=Domain(first=None, via="lm.scan"),
      doc="one part of a loop's result (its final carries, then its stacked outputs)")
