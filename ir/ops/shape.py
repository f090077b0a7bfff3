"""Data movement without arithmetic: reshape, transpose, broadcast, slice, pad, concatenate,
and the gather/scatter pair ``take`` / ``scatter_add``."""

from __future__ import annotations

import math

import numpy as np

from lamina.ir.builder import op
from lamina.ir.errors import DTypeError, ShapeError
from lamina.ir.ops.domain import Domain, Operand, axis_attr
from lamina.ir.ops.registry import defop
from lamina.ir.ops.rules import same_dtype
from lamina.ir.types import TensorType, normalize_axis


def _ints(x) -> tuple[int, ...]:
    return tuple(int(v) for v in x)


# --- reshape / transpose / broadcast ---------------------------------------------------------


def _reshape_canon(types, attrs):
    attrs["shape"] = _ints(attrs["shape"])
    return attrs


def _reshape_infer(types, attrs):
    t, shape = types[0], attrs["shape"]
    if math.prod(shape) != t.size or any(d < 0 for d in shape):
        raise ShapeError(f"cannot reshape {t} ({t.size} elements) into {list(shape)}")
    return t.with_shape(shape)


def _reshape_domain(g, t):
    # a few random steps: merge two neighbours, split one, insert or drop a 1, flatten
    dims, rng = list(t.shape), g.rng
    for _ in range(int(rng.integers(1, 3))):
        r = rng.random()
        if r < 0.15:
            dims = [math.prod(dims)]
        elif r < 0.45 and len(dims) >= 2:
            i = int(rng.integers(len(dims) - 1))
            dims[i:i + 2] = [dims[i] * dims[i + 1]]
        elif r < 0.7 and dims:
            i = int(rng.integers(len(dims)))
            divs = [k for k in range(2, dims[i]) if dims[i] % k == 0] or [1]
            k = int(rng.choice(divs))
            dims[i:i + 1] = [k, dims[i] // k]
        elif r < 0.85 and 1 in dims:
            dims.remove(1)
        else:
            dims.insert(int(rng.integers(len(dims) + 1)), 1)
    return {"shape": tuple(dims[:4]) if len(dims) <= 4 else (math.prod(dims),)}


defop("reshape", arity=1, kind="shape", attrs=("shape",), canon=_reshape_canon,
      infer=_reshape_infer, ref=lambda x, shape: np.reshape(x, shape),
      vjp=lambda g, out, x, shape: (g.reshape(x.shape),),
      domain=Domain(Operand("fib"), attrs=_reshape_domain), doc="same elements, new shape")


def _transpose_canon(types, attrs):
    perm = _ints(attrs["perm"])
    if sorted(perm) != list(range(types[0].ndim)):
        raise ShapeError(f"transpose: {list(perm)} is not a permutation of the "
                         f"{types[0].ndim} axes of {types[0]}")
    attrs["perm"] = perm
    return attrs


def _transpose_vjp(g, out, x, perm):
    inverse = tuple(sorted(range(len(perm)), key=lambda i: perm[i]))
    return (g.transpose(inverse),)


defop("transpose", arity=1, kind="shape", attrs=("perm",), canon=_transpose_canon,
      infer=lambda types, attrs: types[0].with_shape(types[0].shape[p] for p in attrs["perm"]),
      ref=lambda x, perm: np.transpose(x, perm), vjp=_transpose_vjp,
      domain=Domain(Operand("fib"), attrs=lambda g, t: {
          "perm": tuple(int(p) for p in g.rng.permutation(t.ndim))}),
      doc="permute axes: result axis i is input axis perm[i]")


def _broadcast_canon(types, attrs):
    shape, src = _ints(attrs["shape"]), types[0].shape
    ok = len(shape) >= len(src) and all(
        s in (1, d) for s, d in zip(src, shape[len(shape) - len(src):]))
    if not ok:
        raise ShapeError(f"cannot broadcast {types[0]} to {list(shape)}")
    attrs["shape"] = shape
    return attrs


def _broadcast_domain(g, t):
    rng = g.rng
    dims = [g.dim() if d == 1 and rng.random() < 0.6 else d for d in t.shape]
    lead = [g.dim() for _ in range(int(rng.integers(0, 3)))]
    shape = (lead + dims)[-max(4, len(dims)):]
    return {"shape": tuple(shape)}


defop("broadcast", arity=1, kind="shape", attrs=("shape",), canon=_broadcast_canon,
      infer=lambda types, attrs: types[0].with_shape(attrs["shape"]),
      ref=lambda x, shape: np.broadcast_to(x, shape), vjp=lambda g, out, x, shape: (g,),
      domain=Domain(Operand("fib"), attrs=_broadcast_domain),
      doc="numpy broadcast_to (the gradient sums back)")


# --- slice and its adjoint, pad ---------------------------------------------------------------


def slice_len(start: int, stop: int, step: int) -> int:
    return max(0, -(-(stop - start) // step))


def _slice_canon(types, attrs):
    shape = types[0].shape
    start, stop, step = (_ints(attrs[k]) for k in ("start", "stop", "step"))
    if not len(start) == len(stop) == len(step) == len(shape):
        raise ShapeError(f"slice: start/stop/step need one entry per axis of {types[0]}")
    for a, (s, e, st, n) in enumerate(zip(start, stop, step, shape)):
        if st < 1:
            raise ShapeError(f"slice: step must be positive, got {st} on axis {a} "
                             "(negative steps are not supported)")
        if not 0 <= s <= n or not s <= e <= n:
            raise ShapeError(f"slice: [{s}:{e}] is out of bounds for axis {a} of size {n}")
    attrs.update(start=start, stop=stop, step=step)
    return attrs


def _slice_infer(types, attrs):
    dims = (slice_len(s, e, st) for s, e, st in zip(attrs["start"], attrs["stop"], attrs["step"]))
    return types[0].with_shape(dims)


def _slice_ref(x, start, stop, step):
    return x[tuple(slice(s, e, st) for s, e, st in zip(start, stop, step))]


def _slice_vjp(g, out, x, start, stop, step):
    lo, hi, interior = [], [], []
    for s, st, m, n in zip(start, step, out.shape, x.shape):
        if m == 0:
            lo.append(n), hi.append(0), interior.append(0)
            continue
        last = s + (m - 1) * st
        lo.append(s), hi.append(n - last - 1), interior.append(st - 1)
    return (op.pad(g, lo=lo, hi=hi, interior=interior),)


def _slice_domain(g, t):
    rng, start, stop, step = g.rng, [], [], []
    for n in t.shape:
        if rng.random() < 0.3:
            s, e, st = 0, n, 1
        else:
            s = int(rng.integers(0, n + 1))
            e = int(rng.integers(s, n + 1))
            st = int(rng.choice([1, 1, 2, 3]))
        start.append(s), stop.append(e), step.append(st)
    return {"start": tuple(start), "stop": tuple(stop), "step": tuple(step)}


defop("slice", arity=1, kind="shape", attrs=("start", "stop", "step"), canon=_slice_canon,
      infer=_slice_infer, ref=_slice_ref, vjp=_slice_vjp,
      domain=Domain(Operand("fib"), attrs=_slice_domain),
      doc="x[start:stop:step] on every axis (positive steps)")


def _pad_canon(types, attrs):
    lo, hi, interior = (_ints(attrs[k]) for k in ("lo", "hi", "interior"))
    n = types[0].ndim
    if not len(lo) == len(hi) == len(interior) == n:
        raise ShapeError(f"pad: lo/hi/interior need one entry per axis of {types[0]}")
    if min(lo + hi + interior, default=0) < 0:
        raise ShapeError("pad: negative padding (use slice)")
    attrs.update(lo=lo, hi=hi, interior=interior)
    return attrs


def _padded(n, lo, hi, interior):
    return lo + hi + (n + (n - 1) * interior if n else 0)


def _pad_infer(types, attrs):
    return types[0].with_shape(
        _padded(n, lo, hi, i)
        for n, lo, hi, i in zip(types[0].shape, attrs["lo"], attrs["hi"], attrs["interior"]))


def _pad_ref(x, lo, hi, interior):
    out = np.zeros(tuple(_padded(n, a, b, i) for n, a, b, i in zip(x.shape, lo, hi, interior)),
                   x.dtype)
    out[tuple(slice(a, a + (n - 1) * (i + 1) + 1 if n else a, i + 1)
              for n, a, i in zip(x.shape, lo, interior))] = x
    return out


def _pad_vjp(g, out, x, lo, hi, interior):
    start = tuple(lo)
    stop = tuple(a + (n - 1) * (i + 1) + 1 if n else a for n, a, i in zip(x.shape, lo, interior))
    step = tuple(i + 1 for i in interior)
    return (op.slice(g, start=start, stop=stop, step=step),)


def _pad_domain(g, t):
    rng = g.rng
    return {k: tuple(int(v) for v in rng.integers(0, 2 if k == "interior" else 3, t.ndim))
            for k in ("lo", "hi", "interior")}


defop("pad", arity=1, kind="shape", attrs=("lo", "hi", "interior"), canon=_pad_canon,
      infer=_pad_infer, ref=_pad_ref, vjp=_pad_vjp,
      domain=Domain(Operand("fib"), attrs=_pad_domain),
      doc="zero padding: lo/hi elements at each end, interior between elements")


# --- concatenate ------------------------------------------------------------------------------


def _concat_canon(types, attrs):
    attrs["axis"] = normalize_axis(int(attrs.get("axis", 0)), types[0].ndim)
    return attrs


def _concat_infer(types, attrs):
    d, axis = same_dtype("concatenate", types), attrs["axis"]
    first = types[0].shape
    for t in types[1:]:
        if t.ndim != len(first) or any(
                a != b for i, (a, b) in enumerate(zip(t.shape, first)) if i != axis):
            listed = ", ".join(map(str, types))
            raise ShapeError(f"concatenate along axis {axis}: shapes differ off that axis "
                             f"({listed})")
    shape = list(first)
    shape[axis] = sum(t.shape[axis] for t in types)
    return TensorType(shape, d)


def _concat_vjp(g, out, *xs, axis):
    grads, offset = [], 0
    for x in xs:
        start = tuple(offset if i == axis else 0 for i in range(x.ndim))
        stop = tuple(offset + x.shape[axis] if i == axis else d
                     for i, d in enumerate(x.shape))
        grads.append(op.slice(g, start=start, stop=stop, step=(1,) * x.ndim))
        offset += x.shape[axis]
    return tuple(grads)


def _concat_rest(g, t, attrs):
    a = attrs["axis"] % t.ndim
    out = []
    for _ in range(int(g.rng.integers(0, 3))):
        shape = list(t.shape)
        shape[a] = g.dim()
        out.append(Operand("fib", shape=tuple(shape)))
    return out


defop("concatenate", arity=None, kind="shape", attrs=("axis",), canon=_concat_canon,
      infer=_concat_infer, ref=lambda *xs, axis: np.concatenate(xs, axis=axis),
      vjp=_concat_vjp, promote="all",
      domain=Domain(Operand("fib"), _concat_rest, axis_attr), doc="join tensors along an axis")


# --- take (gather) and scatter_add ------------------------------------------------------------


def _index_dtype(name, t):
    if not t.dtype.is_int:
        raise DTypeError(f"{name}: indices must be integers, got {t}")


def _take_canon(types, attrs):
    attrs["axis"] = normalize_axis(int(attrs.get("axis", 0)), types[0].ndim)
    return attrs


def _take_infer(types, attrs):
    x, idx = types
    _index_dtype("take", idx)
    a = attrs["axis"]
    if x.shape[a] == 0:
        raise ShapeError(f"take: cannot index the empty axis {a} of {x}")
    return x.with_shape(x.shape[:a] + idx.shape + x.shape[a + 1:])


def _take_ref(x, idx, axis):
    n = x.shape[axis]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        bad = idx[(idx < -n) | (idx >= n)].flat[0]
        raise IndexError(f"take: index {bad} is out of bounds for axis {axis} of size {n}")
    return np.take(x, idx, axis=axis)


def _take_attrs(g, t):
    axes = [a for a in range(t.ndim) if t.shape[a] > 0]
    return {"axis": int(g.rng.choice(axes))} if axes else None


def _take_rest(g, t, attrs):
    n = t.shape[attrs["axis"]]
    shape = g.shape(rank=int(g.rng.integers(0, 3)))
    return [Operand("i", lo=-n, hi=n - 1, shape=shape)]


defop("take", arity=2, kind="shape", attrs=("axis",), canon=_take_canon, infer=_take_infer,
      ref=_take_ref, domain=Domain(Operand("fib"), _take_rest, _take_attrs),
      vjp=lambda g, out, x, idx, axis: (
          op.scatter_add(g, idx, axis=axis, size=x.shape[axis]), None),
      doc="gather: x[..., idx, ...] along axis (negative indices count from the end)")


def _scatter_canon(types, attrs):
    g, idx = types
    attrs["axis"] = normalize_axis(int(attrs.get("axis", 0)), max(g.ndim - idx.ndim + 1, 0))
    attrs["size"] = int(attrs["size"])
    return attrs


def _scatter_infer(types, attrs):
    g, idx = types
    _index_dtype("scatter_add", idx)
    if g.dtype.is_bool:
        raise DTypeError(f"scatter_add: updates must be numbers, got {g}")
    a, k = attrs["axis"], idx.ndim
    if not 0 <= a <= g.ndim - k or g.shape[a:a + k] != idx.shape:
        raise ShapeError(f"scatter_add: updates {g} do not hold indices {idx} at axis {a}")
    return g.with_shape(g.shape[:a] + (attrs["size"],) + g.shape[a + k:])


def _scatter_ref(g, idx, axis, size):
    out = np.zeros(g.shape[:axis] + (size,) + g.shape[axis + idx.ndim:], g.dtype)
    np.add.at(out, (slice(None),) * axis + (idx,), g)
    return out


def _scatter_attrs(g, t):
    if t.ndim == 0:
        return None
    return {"axis": int(g.rng.integers(0, t.ndim)), "size": max(1, g.dim())}


def _scatter_rest(g, t, attrs):
    a = attrs["axis"]
    k = int(g.rng.integers(0, min(2, t.ndim - a) + 1))  # the indices cover axes a .. a+k-1
    return [Operand("i", lo=0, hi=attrs["size"] - 1, shape=t.shape[a:a + k])]


defop("scatter_add", arity=2, kind="shape", attrs=("axis", "size"), canon=_scatter_canon,
      infer=_scatter_infer, ref=_scatter_ref,
      domain=Domain(Operand("fi"), _scatter_rest, _scatter_attrs),
      vjp=lambda g, out, upd, idx, axis, size: (op.take(g, idx, axis=axis), None),
      doc="the adjoint of take: add updates into zeros of the given size at idx")
