"""Indices of the Triton code generator: how a multi-index is written (``Ix``: an expression
and the tile axes it varies along), flattened into an address and back, and moved by the shape
ops (broadcast, transpose, reshape, slice, pad, concatenate, take), which only transform the
index their operand is evaluated at, so they fuse for free.

``Indexing`` is a mixin of ``codegen.Gen``: it needs ``tmp(expr)``, ``emit(line)``,
``const(dtype, value)``, ``value(v, idx)``, ``mask_for(deps)`` and the generator's
``linear_memo``, ``error_codes``, ``index_type`` and ``uses_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lamina.backends.triton.scalar import TV
from lamina.ir.graph import Node
from lamina.ir.types import row_major_strides as strides_of


@dataclass(frozen=True)
class Ix:
    """One axis of an index: a Triton expression (or an int) and the tile axes it varies on.
    ``same``: the expression this one clamps, which it equals wherever a value read through it
    is used (a concatenate's first piece, a pad's unshifted axis): what a read of a reduction
    result is checked by."""

    e: str
    deps: frozenset = frozenset()
    same: str | None = None

    @staticmethod
    def const(k: int) -> Ix:
        return Ix(str(int(k)))

    @property
    def is_const(self) -> bool:
        return not self.deps


class Indexing:
    """Index arithmetic and the shape ops (see the module docstring)."""

    # --- index arithmetic -------------------------------------------------------------------

    @staticmethod
    def _key(idx, shape) -> tuple:
        """What the flat index of ``idx`` into ``shape`` depends on: the index along a size-1
        axis is 0 wherever it is valid, so it is left out, and so is the axis itself (shapes
        that differ in size-1 axes only share flat indices: a row's ``r`` through a reshape)."""
        return (tuple(i.e for i, d in zip(idx, shape) if d != 1),
                tuple(d for d in shape if d != 1))

    def remember(self, idx, shape, flat: Ix) -> None:
        """``flat`` is the flat index of ``idx`` into ``shape``. The first one stays: a row's
        index ``r`` is what a read of a reduction result is checked by."""
        self.linear_memo.setdefault(self._key(idx, shape), flat)

    def linear(self, idx, shape) -> Ix:
        """The flat index of ``idx`` into ``shape``, with the tile axes of the axes it reads
        only: the shape of a load's pointers and of its mask (a mask over a tile axis that the
        pointers do not vary along is refused where they are one scalar)."""
        key = self._key(idx, shape)
        hit = self.linear_memo.get(key)
        if hit is not None:
            return hit
        terms, deps = [], frozenset()
        for i, s, d in zip(idx, strides_of(shape), shape):
            if d == 1 or i.e == "0":
                continue
            terms.append(i.e if s == 1 else f"{i.e} * {s}")
            deps |= i.deps
        if not terms:
            return Ix("0")
        e = terms[0] if len(terms) == 1 else self.tmp(" + ".join(terms), "l")
        self.linear_memo[key] = Ix(e, deps)
        return Ix(e, deps)

    def delinear(self, flat: Ix, shape) -> tuple[Ix, ...]:
        out = []
        first = True
        for d, s in zip(shape, strides_of(shape)):
            if d == 1:
                out.append(Ix("0"))
                continue
            q = flat.e if s == 1 else f"({flat.e} // {s})"
            e = q if first else f"{q} % {d}"
            out.append(Ix(self.tmp(e, "i") if e != flat.e else e, flat.deps))
            first = False
        self.remember(out, shape, flat)
        return tuple(out)

    @staticmethod
    def bidx(src_shape, dst_shape, idx) -> tuple[Ix, ...]:
        lead = len(dst_shape) - len(src_shape)
        return tuple(Ix("0") if s == 1 and dst_shape[lead + j] != 1 else idx[lead + j]
                     for j, s in enumerate(src_shape))

    # --- index transformations --------------------------------------------------------------

    def op_broadcast(self, n: Node, idx) -> TV:
        x = n.inputs[0]
        return self.value(x, self.bidx(x.shape, n.shape, idx))

    def op_transpose(self, n: Node, idx) -> TV:
        perm = n.attrs["perm"]
        src = [None] * len(perm)
        for i, p in enumerate(perm):
            src[p] = idx[i]
        return self.value(n.inputs[0], src)

    def op_reshape(self, n: Node, idx) -> TV:
        x = n.inputs[0]
        if [d for d in x.shape if d != 1] == [d for d in n.shape if d != 1]:
            kept = iter([i for i, d in zip(idx, n.shape) if d != 1])
            return self.value(x, [Ix("0") if d == 1 else next(kept) for d in x.shape])
        return self.value(x, self.delinear(self.linear(idx, n.shape), x.shape))

    def op_slice(self, n: Node, idx) -> TV:
        src = []
        for i, start, step in zip(idx, n.attrs["start"], n.attrs["step"]):
            e = i.e if step == 1 else f"{i.e} * {step}"
            e = e if start == 0 else f"{e} + {start}"
            src.append(i if e == i.e else Ix(self.tmp(e, "i"), i.deps))
        return self.value(n.inputs[0], src)

    def op_pad(self, n: Node, idx) -> TV:
        x = n.inputs[0]
        if not math.prod(x.shape):
            return self.const(n.dtype, 0)  # padding only
        valid, src, deps = [], [], frozenset()
        for i, lo, hi, inner, size in zip(idx, n.attrs["lo"], n.attrs["hi"], n.attrs["interior"],
                                          x.shape):
            if lo == 0 and inner == 0:  # not moved: ``i`` itself, where it is inside ``x``
                if hi == 0 or i.e == "0":
                    src.append(i)
                    continue
                valid.append(f"{i.e} < {size}")
                src.append(Ix(self.tmp(f"tl.minimum({i.e}, {size - 1})", "i"), i.deps,
                              i.same or i.e))
                deps |= i.deps
                continue
            rel = f"({i.e} - {lo})" if lo else i.e
            relc = self.tmp(f"tl.maximum({rel}, 0)", "i")
            j = relc if inner == 0 else self.tmp(f"{relc} // {inner + 1}", "i")
            ok = f"({rel} >= 0) & ({j} < {size})"
            if inner:
                ok += f" & ({relc} % {inner + 1} == 0)"
            valid.append(ok)
            src.append(Ix(self.tmp(f"tl.minimum({j}, {size - 1})", "i"), i.deps))
            deps |= i.deps
        v = self.value(x, src)
        if not valid:
            return v
        zero = self.const(n.dtype, 0)
        cond = self.tmp(" & ".join(f"({c})" for c in valid))
        return TV(self.tmp(f"tl.where({cond}, {v.e}, {zero.e})"), deps | v.deps, n.dtype)

    def op_concatenate(self, n: Node, idx) -> TV:
        """Every piece is evaluated (and selected by position): a piece is read at the position
        clamped into it, a valid element where another piece is selected. Pieces with no
        elements are never selected."""
        a = n.attrs["axis"]
        pos = idx[a]
        result, offset, deps = None, 0, frozenset()
        for x in n.inputs:
            size = x.shape[a]
            if not size:
                continue
            first, last = offset == 0, offset + size == n.shape[a]
            e = f"{pos.e} - {offset}" if offset else pos.e
            if not last:
                e = f"tl.minimum({e}, {size - 1})"
            if not first:
                e = f"tl.maximum({e}, 0)"
            local = list(idx)
            if e != pos.e:  # the first piece's clamp is the position wherever it is selected
                local[a] = Ix(self.tmp(e, "i"), pos.deps, (pos.same or pos.e) if first else None)
            v = self.value(x, local)
            if result is None:
                result, deps = v.e, v.deps
            else:
                result = self.tmp(f"tl.where({pos.e} >= {offset}, {v.e}, {result})")
                deps |= v.deps | pos.deps
            offset += size
        return TV(result, deps, n.dtype)

    def op_take(self, n: Node, idx) -> TV:
        x, indices = n.inputs
        a, k = n.attrs["axis"], len(indices.shape)
        raw = self.value(indices, idx[a:a + k])
        j = self.checked_index(raw, x.shape[a], n, raw.deps)
        return self.value(x, list(idx[:a]) + [j] + list(idx[a + k:]))

    # --- indices read from memory -----------------------------------------------------------

    def checked_index(self, raw: TV, size: int, n: Node, deps) -> Ix:
        """An index value into an axis of ``size``: negative ones count from the end (once,
        as numpy), out-of-range ones set ``n``'s error code and read a safe element."""
        i = self.tmp(f"{raw.e}.to({self.index_type})", "i")
        i = self.tmp(f"tl.where({i} < 0, {i} + {size}, {i})", "i")
        self.flag_error(f"({i} < 0) | ({i} >= {size})", deps, n)
        return Ix(self.tmp(f"tl.minimum(tl.maximum({i}, 0), {size - 1})", "i"), raw.deps)

    def flag_error(self, bad: str, deps, n: Node) -> None:
        """Write ``n``'s error code where ``bad`` (the runtime raises after the step)."""
        self.uses_error = True
        code = self.error_codes.get(id(n), 1)
        m = self.mask_for(deps)
        cond = self.tmp(f"({bad}) & {m}" if m else bad)
        self.emit(f"tl.store(err + {cond}.to(tl.int32) * 0, "
                  f"tl.full([], {code}, tl.int32), mask={cond})")
