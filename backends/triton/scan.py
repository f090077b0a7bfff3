"""Scan kernels of the Triton code generator (``cumsum``): a tile of rows x positions along the
scanned axis per program, an associative scan with an add along the tile's columns (what
``tl.cumsum`` is; Triton's interpreter cannot call ``tl.cumsum`` itself). An axis longer than
one tile is swept in chunks (from the end when ``reverse``), each chunk's scan offset by the
running total of the chunks before it. The scan's operand (its fused producers) is evaluated at
the tile's positions like any other value; integers and bools accumulate in int64, half types
in float32.

``ScanKernel`` is a mixin of ``codegen.Gen``.
"""

from __future__ import annotations

import math

from lamina.backends.triton.index import Ix
from lamina.backends.triton.scalar import LOW, TV, tl_type
from lamina.ir import dtypes as dt


def _pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


MAX_ONE_PASS = 8192  # longer axes are swept in chunks of CHUNK
CHUNK = 2048
TILE = 4096  # elements of a program's tile


class ScanKernel:
    """``scan_kernel``: the kernel whose result is a scan (see the module docstring)."""

    def scan_kernel(self) -> tuple[tuple[int, int, int], int]:
        s = self.root
        x = s.inputs[0]
        a, reverse = s.attrs["axis"], s.attrs["reverse"]
        d = s.shape
        kept = [k for k in range(len(d)) if k != a]
        R = math.prod(d[k] for k in kept)
        C = d[a]
        one_pass = C <= MAX_ONE_PASS
        bc = _pow2(C) if one_pass else CHUNK
        br = max(1, min(_pow2(R), TILE // bc, 1024))
        acc = dt.float32 if s.dtype in LOW else s.dtype
        t = tl_type(acc)
        self.prelude()
        self.emit("pid = tl.program_id(0)")
        it = ".to(tl.int64)" if self.index_type == "tl.int64" else ""
        self.emit(f"r = (pid * {br} + tl.arange(0, {br}){it})[:, None]")
        self.masks["r"] = f"(r < {R})" if R % br else ""
        rows = Ix("r", frozenset({"r"}))
        row_index = [Ix("0")] * len(d)
        for k, i in zip(kept, self.delinear(rows, [d[k] for k in kept])):
            row_index[k] = i
        rev = ", reverse=True" if reverse else ""
        self.helpers.add("add")

        def columns(start: str | None) -> Ix:
            base = f"tl.arange(0, {bc}){it}[None, :]"
            c = self.tmp(f"{start} + {base}" if start else base, "c")
            self.masks["c"] = f"({c} < {C})" if (C % bc or not one_pass or not C) else ""
            return Ix(c, frozenset({"c"}))

        def chunk(cols: Ix) -> tuple[str, tuple]:
            """The operand at the tile's positions (0 outside the tensor), in the scan's type."""
            full = list(row_index)
            full[a] = cols
            v = self.value(x, full)
            tile = self.tile(v, br, bc)
            if v.dtype is not acc:
                tile = self.tmp(self.cast(tile, v.dtype, acc))
            m = self.mask_for({"r", "c"})
            if m:
                tile = self.tmp(f"tl.where({m}, {tile}, tl.full([], 0, {t}))")
            return tile, tuple(full)

        def store(scanned: str, full) -> None:
            out = scanned if acc is s.dtype else self.tmp(f"{scanned}.to({tl_type(s.dtype)})")
            flat = self.linear(full, d)
            if not flat.deps:  # one element: still a block of pointers, like the value
                flat = Ix(self.tmp(f"tl.zeros([{br}, {bc}], {self.index_type}) + {flat.e}"),
                          frozenset({"r", "c"}))
            self.store("out", flat, TV(out, frozenset({"r", "c"}), s.dtype), deps={"r", "c"})

        if one_pass:
            tile, full = chunk(columns(None))
            store(self.tmp(f"tl.associative_scan({tile}, 1, _add{rev})"), full)
        else:
            chunks = -(-C // bc)
            self.emit(f"carry = tl.full([{br}, 1], 0, {t})")
            self.emit(f"for i in range(0, {chunks}):")
            self.indent += 1
            self.push()
            self.emit(f"c0 = ({chunks - 1} - i) * {bc}" if reverse else f"c0 = i * {bc}")
            tile, full = chunk(columns("c0"))
            scanned = self.tmp(f"tl.associative_scan({tile}, 1, _add{rev}) + carry")
            store(scanned, full)
            self.emit(f"carry = carry + tl.reduce({tile}, 1, _add, keep_dims=True)")
            self.pop()
            self.indent -= 1
        warps = 8 if br * bc >= 4096 else 4 if br * bc >= 1024 else 2
        return (-(-R // br) if C else 0, 1, 1), warps
