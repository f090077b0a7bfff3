"""The GEMM's packers (``gemm.py``, "Packing"): rows of A or columns of B copied into the
zero-padded, k-major panels the micro-kernel reads (MR values per k for A, NR for B). Each is
a function of the GEMM's emitter ``e`` (``gemm._Emitter``: dtype, vector type and width,
blocking), like the table packers of ``gemm_gather.py``."""

from __future__ import annotations

from llvmlite import ir

from lamina.backends.llvm.gemm import (
    _BYTES,
    _c64,
    _cdiv,
    _for,
    _i1,
    _i32,
    _i64,
    _lane_mask,
    _min,
    _new_fn,
    _void,
    _vptr,
)


def pack(e, which: str) -> ir.Function:
    """void pack(i64 kc, i64 n, T* src, i64 s_panel, i64 s_k, T* dst): `n` rows of A
    (which="a", panel width MR) or columns of B (which="b", width NR) into zero-padded
    panels: dst[p*W*kc + k*W + x] = src[(p*W + x)*s_panel + k*s_k]. Three paths:
    s_panel == 1 (row-major B, column-major A): masked vector copies along whole source
    rows; s_k == 1 (row-major A, transposed B): VL x VL in-register transposes; any other
    strides: scalar copies."""
    w = e.cfg.mr if which == "a" else e.nr
    fn, b = _new_fn(e.m, e.prefix + "pack_" + which, _void,
                    [_i64, _i64, e.tp, _i64, _i64, e.tp])
    fn.attributes.add("noinline")
    kc, n, src, sx, sk, dst = fn.args
    npanel = _cdiv(b, n, w)
    with b.if_else(b.icmp_signed("==", sx, _c64(1))) as (then, other):
        with then:
            _pack_copy(e, b, kc, n, npanel, src, sk, dst, w)
        with other, _for(b, _c64(0), npanel, name="p") as p:
            x0 = b.mul(p, _c64(w))
            nv = _min(b, b.sub(n, x0), _c64(w))
            sp = b.gep(src, [b.mul(x0, sx)])
            dp = b.gep(dst, [b.mul(x0, kc)])
            fast = b.and_(b.icmp_signed("==", sk, _c64(1)),
                          b.icmp_signed("==", nv, _c64(w)))
            with b.if_else(fast) as (t2, o2):
                with t2:
                    _pack_transpose(e, b, kc, sp, sx, dp, w)
                with o2:
                    _pack_scalar(e, b, _c64(0), kc, nv, sp, sx, sk, dp, w)
    b.ret_void()
    return fn


def _pack_copy(e, b, kc, n, npanel, src, sk, dst, w):
    """Unit panel stride: the source rows (one per k) are contiguous. Groups of panels
    spanning ~8 vectors are filled one k at a time: a few contiguous loads per source row,
    stores into a few panel streams. Only the last, partial panel uses masked loads."""
    group = max(1, 8 * e.vl // w)
    with _for(b, _c64(0), npanel, group, name="pg") as pg:
        p1 = _min(b, b.add(pg, _c64(group)), npanel)
        with _for(b, _c64(0), kc, name="k") as k:
            s = b.gep(src, [b.mul(k, sk)])
            d = b.gep(dst, [b.mul(k, _c64(w))])
            with _for(b, pg, p1, name="p") as p:
                x0 = b.mul(p, _c64(w))
                sp = b.gep(s, [x0])
                dp = b.gep(d, [b.mul(x0, kc)])
                full = b.icmp_signed("<=", b.add(x0, _c64(w)), n)
                with b.if_else(full) as (then, other):
                    for partial, blk in ((False, then), (True, other)):
                        with blk:
                            _copy_panel_row(e, b, sp, dp, b.sub(n, x0), w, partial)


def _copy_panel_row(e, b, sp, dp, avail, w, partial):
    """dst[0:w] = src[0:w], in vector pieces; with `partial`, only the first `avail` source
    values exist and the rest of the row is zero-filled."""
    al = ir.Constant(_i32, _BYTES[e.dtype])
    for v in range(-(-w // e.vl)):
        off = _c64(v * e.vl)
        width = min(e.vl, w - v * e.vl)  # lanes of this piece inside the panel
        sv, dv = _vptr(b, sp, off, e.vt), _vptr(b, dp, off, e.vt)
        if partial or width < e.vl:
            lim = _c64(width)
            if partial:
                lim = _min(b, b.sub(avail, off), lim)
            x = b.call(e.mload, [sv, al, _lane_mask(b, lim, e.vl), e.zero_v()])
        else:
            x = b.load(sv, align=_BYTES[e.dtype])
        store_lanes(e, b, x, dv, width)


def store_lanes(e, b, x, d, width: int):
    """The first ``width`` lanes of ``x`` into the packing buffer at ``d``: a whole vector,
    or a load, a blend and a store (a masked store costs tens of cycles on AMD cores; an A
    panel of MR = 6 rows is narrower than a float32 vector, so every packed row of A is
    partial). The lanes past ``width`` keep what the buffer held: the buffer is the
    calling slot's own and has a vector of slack at its end (``entry``)."""
    al = _BYTES[e.dtype]
    if width == e.vl:
        b.store(x, d, align=al)
        return
    keep = ir.Constant(ir.VectorType(_i1, e.vl), [j < width for j in range(e.vl)])
    b.store(b.select(keep, x, b.load(d, align=al)), d, align=al)


def _pack_transpose(e, b, kc, sp, sx, dp, w):
    """A full panel whose source rows are contiguous along k: VL k's at a time, each group
    of VL rows is loaded as VL vectors and transposed in registers (log2 VL rounds of
    interleaves), then each k's values are stored; the k tail is copied by scalars."""
    vl, vt = e.vl, e.vt
    kmain = b.mul(b.sdiv(kc, _c64(vl)), _c64(vl))
    lo = ir.Constant(ir.VectorType(_i32, vl), [j // 2 + (j % 2) * vl for j in range(vl)])
    hi = ir.Constant(ir.VectorType(_i32, vl),
                     [vl // 2 + j // 2 + (j % 2) * vl for j in range(vl)])
    with _for(b, _c64(0), kmain, vl, name="kt") as k0:
        for g in range(0, w, vl):
            rows = [b.load(_vptr(b, sp, b.add(b.mul(_c64(g + r), sx), k0), vt),
                           align=_BYTES[e.dtype]) if g + r < w else e.zero_v()
                    for r in range(vl)]
            for _ in range(vl.bit_length() - 1):
                nxt = []
                for i in range(vl // 2):
                    x, y = rows[i], rows[i + vl // 2]
                    nxt += [b.shuffle_vector(x, y, lo), b.shuffle_vector(x, y, hi)]
                rows = nxt
            width = min(vl, w - g)
            for j in range(vl):  # rows[j] holds k = k0 + j
                d = _vptr(b, dp, b.add(b.mul(b.add(k0, _c64(j)), _c64(w)), _c64(g)), vt)
                store_lanes(e, b, rows[j], d, width)
    _pack_scalar(e, b, kmain, kc, _c64(w), sp, sx, _c64(1), dp, w)


def _pack_scalar(e, b, k0, k1, nv, sp, sx, sk, dp, w):
    """dst[k*w + x] = src[x*sx + k*sk] for k0 <= k < k1 and x < nv, zero for nv <= x < w."""
    zero = ir.Constant(e.t, 0.0)
    with _for(b, k0, k1, name="k") as k:
        s = b.gep(sp, [b.mul(k, sk)])
        d = b.gep(dp, [b.mul(k, _c64(w))])
        with _for(b, _c64(0), nv, name="x") as x:
            b.store(b.load(b.gep(s, [b.mul(x, sx)])), b.gep(d, [x]))
        with _for(b, nv, _c64(w), name="z") as x:  # zero padding
            b.store(zero, b.gep(d, [x]))
