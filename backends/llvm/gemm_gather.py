"""The GEMM's table packers (``gemm.GATHER_SYMBOL``): panels of an operand read through
per-axis offset tables, ``A[i, k] = src[rofs[i] + kofs[k]]`` and ``B[k, j] = src[kofs[k] +
jofs[j]]`` (passes/gemm_operand.py finds them: a conv's patches, slices, gathers with a
constant index). They fill the same panel layouts as ``gemm._Emitter.pack`` for the same
micro-kernel. Where the offsets of VL neighbours are at most two runs of consecutive addresses
(an output row of a stride-1 conv crossed at most once) a vector is two masked loads; other
offsets are loaded one by one.

Measured on the development machine (AVX2, one core, a conv's 288 x 196 patches per image):
a single run packs at ~0.35 ns per value, two runs at ~0.7 ns, both from L1/L2.
"""

from __future__ import annotations

from llvmlite import ir

from lamina.backends.llvm import gemm_pack
from lamina.backends.llvm.gemm import (
    _BYTES,
    _c64,
    _cdiv,
    _for,
    _i1,
    _i32,
    _i64,
    _min,
    _new_fn,
    _void,
    _vptr,
)


def pack_table(e) -> ir.Function:
    """void pack_bt(i64 kc, i64 n, T* src, i64* kofs, i64* jofs, T* dst): `n` columns of a
    B given by offset tables, B[k, x] = src[kofs[k] + jofs[x]] (an implicit-GEMM operand:
    the patches of a conv input, whose rows are (channel, tap) and columns the output
    positions), into zero-padded NR-column panels like ``pack("b")``. A panel whose NR
    column offsets are consecutive (a run inside one row of the image) is copied with
    vector loads; another full panel loads its NR offsets once and gathers each k row with
    scalar loads; the last, partial panel is copied element by element."""
    w, vl, vt = e.nr, e.vl, e.vt
    i64p = _i64.as_pointer()
    fn, b = _new_fn(e.m, e.prefix + "pack_bt", _void,
                    [_i64, _i64, e.tp, i64p, i64p, e.tp])
    fn.attributes.add("noinline")
    kc, n, src, kofs, jofs, dst = fn.args
    al = _BYTES[e.dtype]
    zero = ir.Constant(e.t, 0.0)
    with _for(b, _c64(0), _cdiv(b, n, _c64(w)), name="p") as p:
        x0 = b.mul(p, _c64(w))
        nv = _min(b, b.sub(n, x0), _c64(w))
        jo = b.gep(jofs, [x0])
        dp = b.gep(dst, [b.mul(x0, kc)])
        full = b.icmp_signed("==", nv, _c64(w))
        first = b.load(jo)
        last = b.load(b.gep(jo, [b.sub(nv, _c64(1))]))
        run = b.and_(full, b.icmp_signed("==", b.sub(last, first), _c64(w - 1)))
        with b.if_else(run) as (then, other):
            with then, _for(b, _c64(0), kc, name="k") as k:
                sp = b.gep(src, [b.add(b.load(b.gep(kofs, [k])), first)])
                d = b.gep(dp, [b.mul(k, _c64(w))])
                for v in range(w // vl):
                    x = b.load(_vptr(b, sp, _c64(v * vl), vt), align=al)
                    b.store(x, _vptr(b, d, _c64(v * vl), vt), align=al)
            with other, b.if_else(full) as (t2, o2):
                with t2:
                    _pack_runs(e, b, kc, src, kofs, jo, dp)
                with o2, _for(b, _c64(0), kc, name="k") as k:
                    sp = b.gep(src, [b.load(b.gep(kofs, [k]))])
                    d = b.gep(dp, [b.mul(k, _c64(w))])
                    with _for(b, _c64(0), nv, name="x") as x:
                        b.store(b.load(b.gep(sp, [b.load(b.gep(jo, [x]))])), b.gep(d, [x]))
                    with _for(b, nv, _c64(w), name="z") as x:
                        b.store(zero, b.gep(d, [x]))
    b.ret_void()
    return fn

def _runs(e, b, o):
    """For VL offsets ``o`` (i64 values): (r, start, ok): lanes < r continue lane 0's run
    (o[0] + lane), lanes >= r the run ``start + lane``; ok: that describes all lanes."""
    vl = e.vl
    r = _c64(vl)
    for lane in range(vl - 1, 0, -1):
        brk = b.icmp_signed("!=", b.sub(o[lane], o[0]), _c64(lane))
        r = b.select(brk, _c64(lane), r)
    start = _c64(0)
    for lane in range(1, vl):
        start = b.select(b.icmp_signed("==", r, _c64(lane)), b.sub(o[lane], _c64(lane)),
                         start)
    ok = ir.Constant(_i1, 1)
    for lane in range(1, vl):
        after = b.icmp_signed(">=", _c64(lane), r)
        good = b.icmp_signed("==", b.sub(o[lane], _c64(lane)), start)
        ok = b.and_(ok, b.or_(b.not_(after), good))
    return r, start, ok

def _lanes_below(e, b, r):
    """The lane mask ``lane < r``."""
    vl = e.vl
    vi = ir.VectorType(_i64, vl)
    rv = b.insert_element(ir.Constant(vi, ir.Undefined), r, ir.Constant(_i32, 0))
    rv = b.shuffle_vector(rv, rv, ir.Constant(ir.VectorType(_i32, vl), [0] * vl))
    return b.icmp_signed("<", ir.Constant(vi, list(range(vl))), rv)

def pack_table_a(e) -> ir.Function:
    """void pack_at(i64 kc, i64 n, T* src, i64* rofs, i64* kofs, T* dst): `n` rows of an A
    given by offset tables, A[i, k] = src[rofs[i] + kofs[k]] (a conv's patches with the
    output positions as K: its weight gradient), into zero-padded MR-row panels like
    ``pack("a")``. VL k's at a time: when their offsets are at most two runs (one output
    row boundary), each row's VL values are two masked vector loads, and the rows are
    transposed in registers; otherwise, and for the k tail, values are copied one by one."""
    w, vl, vt = e.cfg.mr, e.vl, e.vt
    i64p = _i64.as_pointer()
    fn, b = _new_fn(e.m, e.prefix + "pack_at", _void,
                    [_i64, _i64, e.tp, i64p, i64p, e.tp])
    fn.attributes.add("noinline")
    kc, n, src, rofs, kofs, dst = fn.args
    al = _BYTES[e.dtype]
    al32 = ir.Constant(_i32, al)
    zero = ir.Constant(e.t, 0.0)
    lo_sh = ir.Constant(ir.VectorType(_i32, vl), [j // 2 + (j % 2) * vl for j in range(vl)])
    hi_sh = ir.Constant(ir.VectorType(_i32, vl),
                        [vl // 2 + j // 2 + (j % 2) * vl for j in range(vl)])
    kmain = b.mul(b.sdiv(kc, _c64(vl)), _c64(vl))
    with _for(b, _c64(0), _cdiv(b, n, _c64(w)), name="p") as p:
        x0 = b.mul(p, _c64(w))
        nv = _min(b, b.sub(n, x0), _c64(w))
        dp = b.gep(dst, [b.mul(x0, kc)])
        # row bases (a row past the matrix reads row 0 and is zeroed)
        bases = []
        for x in range(w):
            inside = b.icmp_signed("<", _c64(x), nv)
            at = b.select(inside, b.add(x0, _c64(x)), x0)
            bases.append((inside, b.gep(src, [b.load(b.gep(rofs, [at]))])))
        with _for(b, _c64(0), kmain, vl, name="kt") as k0:
            o = [b.load(b.gep(kofs, [b.add(k0, _c64(j))])) for j in range(vl)]
            r, start, ok = _runs(e, b, o)
            with b.if_else(ok) as (then, other):
                with then:
                    low = _lanes_below(e, b, r)
                    high = b.not_(low)
                    for g in range(0, w, vl):  # VL rows at a time
                        rows = []
                        for x in range(g, g + vl):
                            if x >= w:
                                rows.append(e.zero_v())
                                continue
                            inside, base = bases[x]
                            v = b.call(e.mload, [_vptr(b, base, o[0], vt), al32, low,
                                                    e.zero_v()])
                            v = b.call(e.mload, [_vptr(b, base, start, vt), al32, high,
                                                    v])
                            rows.append(b.select(inside, v, e.zero_v()))
                        for _ in range(vl.bit_length() - 1):
                            nxt = []
                            for i in range(vl // 2):
                                x, y = rows[i], rows[i + vl // 2]
                                nxt += [b.shuffle_vector(x, y, lo_sh),
                                        b.shuffle_vector(x, y, hi_sh)]
                            rows = nxt
                        width = min(vl, w - g)
                        for j in range(vl):  # rows[j] holds k = k0 + j
                            d = _vptr(b, dp, b.add(b.mul(b.add(k0, _c64(j)), _c64(w)),
                                                   _c64(g)), vt)
                            gemm_pack.store_lanes(e, b, rows[j], d, width)
                with other:
                    for j in range(vl):
                        d = b.gep(dp, [b.mul(b.add(k0, _c64(j)), _c64(w))])
                        for x in range(w):
                            inside, base = bases[x]
                            v = b.load(b.gep(base, [o[j]]))
                            b.store(b.select(inside, v, zero), b.gep(d, [_c64(x)]))
        with _for(b, kmain, kc, name="kr") as k:
            off = b.load(b.gep(kofs, [k]))
            d = b.gep(dp, [b.mul(k, _c64(w))])
            for x in range(w):
                inside, base = bases[x]
                v = b.load(b.gep(base, [off]))
                b.store(b.select(inside, v, zero), b.gep(d, [_c64(x)]))
    b.ret_void()
    return fn

def _pack_runs(e, b, kc, src, kofs, jo, dp):
    """A full panel of a table B whose offsets are not one run. Each vector of VL columns
    that is at most two runs of consecutive offsets (a stride-1 conv whose output rows are
    at least VL wide: a vector crosses one row boundary at most) is two masked vector loads
    per k; otherwise every value is loaded by itself (offsets hoisted out of the k loop)."""
    w, vl, vt = e.nr, e.vl, e.vt
    al = _BYTES[e.dtype]
    offs = [b.load(b.gep(jo, [_c64(x)])) for x in range(w)]
    splits, ok = [], ir.Constant(_i1, 1)
    for v in range(w // vl):
        o = offs[v * vl:(v + 1) * vl]
        r, start, good = _runs(e, b, o)
        ok = b.and_(ok, good)
        splits.append((o[0], r, start))
    al32 = ir.Constant(_i32, al)
    with b.if_else(ok) as (then, other):
        with then:
            masks = []
            for first, r, start in splits:
                lo = _lanes_below(e, b, r)
                masks.append((first, start, lo, b.not_(lo)))
            with _for(b, _c64(0), kc, name="k") as k:
                sp = b.gep(src, [b.load(b.gep(kofs, [k]))])
                d = b.gep(dp, [b.mul(k, _c64(w))])
                for v, (first, start, lo, hi) in enumerate(masks):
                    x = b.call(e.mload, [_vptr(b, sp, first, vt), al32, lo, e.zero_v()])
                    x = b.call(e.mload, [_vptr(b, sp, start, vt), al32, hi, x])
                    b.store(x, _vptr(b, d, _c64(v * vl), vt), align=al)
        with other, _for(b, _c64(0), kc, name="k") as k:
            sp = b.gep(src, [b.load(b.gep(kofs, [k]))])
            d = b.gep(dp, [b.mul(k, _c64(w))])
            for v in range(w // vl):
                vec = ir.Constant(vt, ir.Undefined)
                for lane in range(vl):
                    x = b.load(b.gep(sp, [offs[v * vl + lane]]))
                    vec = b.insert_element(vec, x, ir.Constant(_i32, lane))
                b.store(vec, _vptr(b, d, _c64(v * vl), vt), align=al)
