"""How a GEMM reads an operand through index ops without a copy: per-axis offset tables.

A matmul operand built from a buffer by index ops (transpose, reshape, broadcast, slice, and
``take`` with a constant index) reads the buffer at ``addr(i_0, ..., i_r) = sum_a T_a[i_a]``
for one table ``T_a`` per axis, as long as every step keeps that form:

    transpose   permutes the tables
    broadcast   new or stretched axes get zero tables
    slice       slices each table
    reshape     merges axes by adding their tables outer-wise, and splits an axis when its
                table is separable along the split (always, for a merged or affine one)
    take        replaces the axis by the index's axes: ``T[idx[p, q]]`` must be separable in
                (p, q) (a conv's patches: ``idx[tap, out] = tap*dilation + out*stride``)

The GEMM then needs, for the operand as a batch of matrices: batch strides (affine batch
tables), and a row and a column table; affine ones are plain strides (``pack``), others are
read by the gather entry of the GEMM (``gemm.GATHER_SYMBOL``). Fusion
(``passes/fuse.py``) asks :func:`operand_layout` whether a producer can join a GEMM kernel as
part of its operand; the llvm backend asks it again for the tables. The analysis is exact
(no sampling) and costs the sum of the axis sizes (plus a reshape's merged group).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from lamina.ir.graph import Node

INDEX_OPS = {"transpose", "reshape", "broadcast", "slice", "take"}
MAX_TABLE = 1 << 24  # a merged reshape group larger than this is not analysed
MAX_STATIC = 1 << 22  # elements of a take index evaluated at compile time at most
STATIC_OPS = {"iota", "constant", "reshape", "broadcast", "transpose", "cast"}


def static_value(v, _memo=None, resolve=None) -> np.ndarray | None:
    """The value of ``v`` when it depends on no input (iotas, constants and arithmetic on
    them: a conv's patch index), evaluated with the ops' numpy references; else None.
    ``resolve`` maps a kernel region's parameter to the outer value it stands for."""
    from lamina.ir.ops.registry import get as get_op

    memo = {} if _memo is None else _memo
    if resolve is not None:
        v = resolve(v)
    if not isinstance(v, Node) or math.prod(v.shape) > MAX_STATIC:
        return None
    if id(v) in memo:
        return memo[id(v)]
    out = None
    if v.op == "kernel" and len(v.region.outputs) == 1:  # an index another kernel computes
        inner = dict(zip(v.region.inputs, v.inputs))
        out = static_value(v.region.outputs[0], {}, lambda x: inner.get(x, x))
        memo[id(v)] = out
        return out
    opdef = get_op(v.op)
    if (v.op in STATIC_OPS or opdef.kind == "elementwise") and opdef.ref is not None \
            and not v.op.startswith("random"):
        args = [static_value(x, memo, resolve) for x in v.inputs]
        if all(a is not None for a in args):
            out = np.asarray(opdef.ref(*args, **v.attrs)).astype(v.dtype.np, copy=False)
    memo[id(v)] = out
    return out


@dataclass
class Layout:
    """``base`` read at ``sum_a tables[a][i_a]`` for the value's index ``i``."""

    base: object
    tables: list[np.ndarray]

    def affine(self, a: int) -> int | None:
        """The stride of axis ``a`` when its table is ``k * stride`` (else None)."""
        return _stride(self.tables[a])


def _stride(t: np.ndarray) -> int | None:
    if len(t) <= 1:
        return 0
    d = np.diff(t)
    return int(d[0]) if np.all(d == d[0]) else None


def _split(t: np.ndarray, sizes) -> list[np.ndarray] | None:
    """Tables for ``sizes`` whose outer sum is ``t`` (row-major), or None."""
    if len(sizes) == 1:
        return [t]
    g = t.reshape(sizes)
    out = []
    for a in range(len(sizes)):
        idx = [0] * len(sizes)
        idx[a] = slice(None)
        out.append(np.array(g[tuple(idx)], dtype=np.int64) - (g.flat[0] if a else 0))
    total = out[0].reshape([-1] + [1] * (len(sizes) - 1))
    for a in range(1, len(sizes)):
        total = total + out[a].reshape([1] * a + [-1] + [1] * (len(sizes) - a - 1))
    return out if np.array_equal(total, g) else None


def _merge(tables: list[np.ndarray]) -> np.ndarray | None:
    size = math.prod(len(t) for t in tables)
    if size > MAX_TABLE:
        return None
    total = np.zeros((), np.int64)
    for t in tables:
        total = np.add.outer(total, t)
    return total.reshape(-1)


def _reshape(tables, old, new) -> list[np.ndarray] | None:
    """Tables after a row-major reshape from ``old`` to ``new`` (both without size-0 axes)."""
    out: list[np.ndarray] = []
    carry = 0  # offsets of old size-1 axes that map to no new axis
    i = j = 0
    old, new = list(old), list(new)
    while i < len(old) or j < len(new):
        # the smallest groups of consecutive axes with equal products
        gi, gj = [i], [j]
        pi = old[i] if i < len(old) else 1
        pj = new[j] if j < len(new) else 1
        i, j = i + 1, j + 1
        while pi != pj:
            if pi < pj:
                if i >= len(old):
                    return None
                gi.append(i)
                pi *= old[i]
                i += 1
            else:
                if j >= len(new):
                    return None
                gj.append(j)
                pj *= new[j]
                j += 1
        gi = [a for a in gi if a < len(old)]
        gj = [a for a in gj if a < len(new)]
        merged = _merge([tables[a] for a in gi]) if gi else np.zeros(1, np.int64)
        if merged is None:
            return None
        if not gj:
            # NOTE: a size-1 axis of a slice holds the slice's start offset in its table:
            # dropping it with the axis read the wrong elements (checker seed 22, 5510)
            carry += int(merged.sum())
            continue
        parts = _split(merged, [new[a] for a in gj])
        if parts is None:
            return None
        out.extend(parts)
    if carry:
        if not out:
            return None
        out[0] = out[0] + carry
    return out


def _take(t: np.ndarray, idx: np.ndarray) -> list[np.ndarray] | None:
    """Tables over ``idx``'s axes for ``t[idx]``, if separable."""
    if idx.ndim == 0 or idx.size == 0 or idx.min() < 0 or idx.max() >= len(t):
        return None
    return _split(np.asarray(t[idx], np.int64).reshape(-1), list(idx.shape))


def layout_of(v, is_base, const_of) -> Layout | None:
    """The layout of value ``v`` over the buffer reached through index ops; ``is_base(v)``
    says where the walk stops (a buffer), ``const_of(v)`` gives a take index's constant value
    (or None). None when some step is not an index op or breaks the per-axis form."""
    if is_base(v):
        return Layout(v, [np.arange(d, dtype=np.int64) * s
                          for d, s in zip(v.shape, _strides(v.shape))])
    if not isinstance(v, Node) or v.op not in INDEX_OPS or 0 in v.shape:
        return None
    src = v.inputs[0]
    if 0 in src.shape:
        return None
    inner = layout_of(src, is_base, const_of)
    if inner is None:
        return None
    t = inner.tables
    if v.op == "transpose":
        new = [t[p] for p in v.attrs["perm"]]
    elif v.op == "broadcast":
        lead = len(v.shape) - len(src.shape)
        new = [np.zeros(d, np.int64) for d in v.shape[:lead]]
        for d, s, tab in zip(v.shape[lead:], src.shape, t):
            new.append(tab if d == s else np.full(d, tab[0], np.int64))
    elif v.op == "slice":
        a = v.attrs
        new = [tab[s0:s1:st] for tab, s0, s1, st in zip(t, a["start"], a["stop"], a["step"])]
    elif v.op == "reshape":
        new = _reshape(t, src.shape, v.shape)
    else:  # take
        idx = const_of(v.inputs[1])
        if idx is None:
            return None
        ax = v.attrs["axis"]
        mid = _take(t[ax], np.asarray(idx, np.int64))
        new = None if mid is None else t[:ax] + mid + t[ax + 1:]
    if new is None or [len(x) for x in new] != list(v.shape):
        return None
    return Layout(inner.base, new)


def _strides(shape) -> list[int]:
    out, acc = [], 1
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return out[::-1]


@dataclass
class Operand:
    """A GEMM operand as a batch of matrices: base buffer, the flattened batch's stride (None:
    per-axis ``batch`` strides that do not flatten), and row/column strides or tables."""

    base: object
    offset: int             # added to every address (a slice's start)
    batch: list[int]        # stride per batch axis of the matmul's output (0: broadcast)
    rows: int | np.ndarray  # a stride, or a table (relative to offset)
    cols: int | np.ndarray

    @property
    def gathered(self) -> bool:
        return not (isinstance(self.rows, int) and isinstance(self.cols, int))


def operand_layout(mm: Node, side: int, is_base, const_of, tables_ok: bool) -> Operand | None:
    """How the GEMM of matmul ``mm`` reads operand ``side`` (0: A, 1: B): None when it cannot
    without a copy. ``tables_ok``: whether row/column tables are acceptable (the gather entry
    of the GEMM reads both operands through tables)."""
    v = mm.inputs[side]
    lay = layout_of(v, is_base, const_of)
    if lay is None:
        return None
    nb = len(mm.shape) - 2
    own = len(v.shape) - 2
    batch = []
    for k in range(nb):
        j = k - (nb - own)
        if j < 0 or v.shape[j] == 1:
            batch.append(0)
            continue
        s = lay.affine(j)
        if s is None:
            return None
        batch.append(s)
    offset = int(sum(int(t[0]) for t in lay.tables if len(t)))
    out = []
    for t in lay.tables[-2:]:
        s = _stride(t)
        if s is not None:
            out.append(s)
        elif tables_ok:
            out.append(np.asarray(t - t[0], np.int64))
        else:
            return None
    return Operand(lay.base, offset, batch, out[0], out[1])
