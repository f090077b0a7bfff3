"""Pooling on the CPU: each pass one loop that reads its input once and writes its result once.

Forward (``max_pool``, ``avg_pool``): the value of one output element, evaluated wherever a
kernel needs it (``Emitter._op_max_pool``): the window's taps read through the emitter (so a
producer such as ReLU fuses in), combined in registers in scan order. Max: a tap replaces the
running maximum when strictly larger or NaN (the first maximum wins, NaN propagates); padding
reads -inf. Average: the taps' sum over PyTorch's divisor of that window.

Backward (``max_pool_grad``, ``avg_pool_grad``): a ``window`` kernel over the output windows
of each (n, c) plane:

* windows that never overlap (stride >= dilated kernel, the usual stride == kernel): each input
  element lies in the cell of at most one window (the ``stride`` elements from the window's
  start on each axis). Per window: the chosen tap (max: PyTorch's first maximum, recomputed
  from the input, no stored argmax) or the share of the gradient (average), then each element
  of the cell gets its value (the gradient or 0) and is written once, through the kernel's
  elementwise epilogue (ReLU's backward: ``where(y > 0, dx, 0)``), evaluated right there.
  Elements after the last cell get 0 (through the epilogue too).
* overlapping windows: the plane is zeroed, then each window adds its gradient to the chosen
  element (max) or to every element of the window (average), in window order; the kernel
  holds the gradient alone (fusion puts no epilogue after it).

Windows are parallel over the batch (or the channels when the batch is 1).
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir

from lamina.backends.llvm import lower as L
from lamina.ir.ops.pool import GRADS, _counts, tiling


def _geometry(attrs, in_shape, out_shape):
    r = len(attrs["kernel"])
    dil = attrs.get("dilation") or (1,) * r
    return [(in_shape[2 + i], out_shape[2 + i], attrs["kernel"][i], attrs["stride"][i],
             attrs["padding"][i], dil[i]) for i in range(r)]


def _scaled(em, o, s: int, off: int):
    """``o * s + off`` (LLVM i64)."""
    b = em.b
    v = o if s == 1 else b.mul(o, em.c64(s))
    return v if off == 0 else b.add(v, em.c64(off))


def _in_range(em, pos, n: int, lo_ok: bool, hi_ok: bool):
    """``0 <= pos < n`` where not known statically (None: always)."""
    b = em.b
    conds = []
    if not lo_ok:
        conds.append(b.icmp_signed(">=", pos, em.c64(0)))
    if not hi_ok:
        conds.append(b.icmp_signed("<", pos, em.c64(n)))
    if not conds:
        return None
    return conds[0] if len(conds) == 1 else b.and_(*conds)


def _and(b, a, c):
    return c if a is None else (a if c is None else b.and_(a, c))


def window_taps(em, geo, oidx):
    """The taps of the window at output index ``oidx`` in scan order: (flat tap number, input
    index clamped into range, in-range condition or None)."""
    b = em.b
    axes = []
    for i, (n, out, k, s, p, d) in enumerate(geo):
        o = oidx[2 + i]
        entries = []
        for j in range(k):
            off = j * d - p
            pos = _scaled(em, o, s, off)
            ok = _in_range(em, pos, n, off >= 0, (out - 1) * s + off < n)
            if ok is not None:  # read a safe element, discard it
                pos = em._clamp(pos, n)
            entries.append((pos, ok))
        axes.append(entries)
    for t, tap in enumerate(np.ndindex(*[g[2] for g in geo])):
        idx = list(oidx[:2])
        ok = None
        for i, j in enumerate(tap):
            pos, c = axes[i][j]
            idx.append(pos)
            ok = _and(b, ok, c)
        yield t, idx, ok


# ops in loops that LLVM can always vectorize (no calls, no stores besides the result)
_PLAIN = {"broadcast", "reshape", "transpose", "slice", "pad", "concatenate", "iota",
          "constant", "max_pool", "avg_pool", "max_pool_grad", "avg_pool_grad", "add", "sub",
          "mul", "div", "neg", "abs", "sign", "maximum", "minimum", "relu", "sqrt", "eq", "ne",
          "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "where", "cast",
          "alias", "stop_gradient"}


def vectorizable_windows(region) -> bool:
    """Does a kernel compute pooling windows, with ops the vectorizer always takes? (Its
    innermost window loop is then vectorized whatever LLVM's cost model says.)"""
    ops = {n.op for n in region.nodes}
    return bool(ops & {"max_pool", "avg_pool", *GRADS}) and ops <= _PLAIN


def _scan(em, n, x, geo, oidx, marks=None):
    """Max pooling's scan of the window at ``oidx``: (the maximum, NaN if a tap is NaN; and
    with ``marks`` (one LLVM value per tap), the mark of the tap it chooses, or -1 for a
    window without an input element).

    PyTorch's rule: from the first tap in the input, a tap replaces the choice when strictly
    larger or NaN (so the last NaN wins). Computed branch-free: a running maximum over the
    non-NaN taps (one ordered compare per tap: maxss, or a blend) and, apart, the last NaN;
    the NaN, when there is one, decides. Every select has a single floating-point compare for
    its condition, which x86 lowers to masks, not to a branch per tap."""
    b = em.b
    t = L.compute_type(n.dtype)
    ninf = ir.Constant(t, -math.inf)
    taps = list(window_taps(em, geo, oidx))
    m, nan = ninf, ir.Constant(t, 0.0)
    ch = nan_ch = None
    if marks is not None:
        unset = ir.Constant(marks[0].type, -1)
        nan_ch = unset
        ch = marks[0] if taps[0][2] is None else unset
        if taps[0][2] is not None:  # the first tap in the input, when none is larger
            for (k, _, ok), mark in reversed(list(zip(taps, marks))):
                ch = mark if ok is None else b.select(ok, mark, ch)
    for (k, tidx, ok), mark in zip(taps, marks or [None] * len(taps)):
        v = em.value(x, tidx)
        if ok is not None:
            v = b.select(ok, v, ninf)
        larger = b.fcmp_ordered(">", v, m)
        m = b.select(larger, v, m)
        is_nan = b.fcmp_unordered("uno", v, v)
        nan = b.select(is_nan, v, nan)
        if marks is not None:
            ch = b.select(larger, mark, ch)
            nan_ch = b.select(is_nan, mark, nan_ch)
    saw_nan = b.fcmp_unordered("uno", nan, nan)
    value = b.select(saw_nan, nan, m)
    if marks is None:
        return value, None
    return value, b.select(saw_nan, nan_ch, ch)


def max_value(em, n, idx):
    """``max_pool`` at output index ``idx``."""
    x = n.inputs[0]
    return _scan(em, n, x, _geometry(n.attrs, x.shape, n.shape), idx)[0]


def _divisor(em, n_attrs, geo, oidx, t):
    """PyTorch's divisor of the window at ``oidx`` as a float of type ``t``: a constant when
    every window has the same one."""
    b = em.b
    if n_attrs["divisor_override"] is not None:
        return ir.Constant(t, float(n_attrs["divisor_override"]))
    inc = n_attrs["count_include_pad"]
    counts = [_counts(n, out, k, s, p, inc) for (n, out, k, s, p, d) in geo]
    if all((c == c[0]).all() for c in counts if c.size):
        return ir.Constant(t, float(math.prod(int(c[0]) for c in counts if c.size)))
    den = None
    for i, (n, out, k, s, p, d) in enumerate(geo):
        if (counts[i] == counts[i][0]).all():
            c = em.c64(int(counts[i][0]))
        else:
            start = _scaled(em, oidx[2 + i], s, -p)
            end = b.add(start, em.c64(k))
            end = b.select(b.icmp_signed("<", end, em.c64(n + p)), end, em.c64(n + p))
            if not inc:
                end = b.select(b.icmp_signed("<", end, em.c64(n)), end, em.c64(n))
                start = b.select(b.icmp_signed(">", start, em.c64(0)), start, em.c64(0))
            c = b.sub(end, start)
        den = c if den is None else b.mul(den, c)
    return b.sitofp(den, t)


def avg_value(em, n, idx):
    """``avg_pool`` at output index ``idx``."""
    b = em.b
    x = n.inputs[0]
    t = L.compute_type(n.dtype)
    zero = ir.Constant(t, 0.0)
    geo = _geometry(n.attrs, x.shape, n.shape)
    total = None
    for _, tidx, ok in window_taps(em, geo, idx):
        v = em.value(x, tidx)
        if ok is not None:
            v = b.select(ok, v, zero)
        total = v if total is None else b.fadd(total, v)
    return b.fdiv(total, _divisor(em, n.attrs, geo, idx, t))


# --- the gradients: window kernels ------------------------------------------------------------


def _chosen(em, p, geo, oidx, positions: bool):
    """The tap ``max_pool`` chooses in the window at ``oidx`` (``_scan``): its number as a
    float (compared with floats, the selects that route the gradient stay branch-free), or
    with ``positions`` its flat position in the plane (i64); -1 for none."""
    x = p.inputs[0]
    plane = [g[0] for g in geo]
    taps = list(window_taps(em, geo, oidx))
    if positions:
        marks = [em.linear(tidx[2:], plane) for _, tidx, _ in taps]
    else:
        marks = [ir.Constant(L.compute_type(p.dtype), float(k)) for k, _, _ in taps]
    return _scan(em, p, x, geo, oidx, marks)[1]


def _share(em, p, geo, oidx):
    """``avg_pool_grad``: the gradient of the window at ``oidx`` over its divisor."""
    g = p.inputs[0]
    t = L.compute_type(p.dtype)
    return em.b.fdiv(em.value(g, oidx), _divisor(em, p.attrs, geo, oidx, t))


def emit_window(ke):
    """The function body of a kernel holding a pooling gradient (see the module docstring).
    Returns (extent of the parallel axis, elements touched)."""
    em = ke._em = ke.emitter()
    (p,) = [n for n in ke.region.nodes if n.op in GRADS]
    shape = p.shape
    out_shape = (p.inputs[1] if p.op == "max_pool_grad" else p.inputs[0]).shape
    geo = _geometry(p.attrs, shape, out_shape)
    N, C = shape[:2]
    par = 0 if N > 1 else (1 if C > 1 else None)
    if not math.prod(shape):
        return 0, 0
    if tiling(p.attrs):
        _emit_tiled(ke, em, p, geo, par)
    else:
        if ke.root is not p:
            raise AssertionError("an overlapping pooling gradient is its kernel's result")
        _emit_scatter(ke, em, p, geo, par)
    return (shape[par] if par is not None else 1), math.prod(shape)


def _planes(ke, em, shape, par, body):
    """Loops over n and c (the parallel one limited to [lo, hi))."""
    idx = []

    def level(k):
        if k == 2:
            body(list(idx))
            return
        lo, hi = (ke.lo, ke.hi) if k == par else (em.c64(0), em.c64(shape[k]))
        if shape[k] == 1 and k != par:
            idx.append(em.c64(0))
            level(k + 1)
            idx.pop()
            return
        with ke.loops.range(ke.b, lo, hi, f"p{k}_") as i:
            em.push()
            idx.append(i)
            level(k + 1)
            idx.pop()
            em.pop()

    level(0)


def _nest(ke, em, ranges, body, prefix):
    """Loops over ``ranges`` [(lo, hi), ...] (python ints); ``body(indices)``."""
    idx = []

    def level(k):
        if k == len(ranges):
            body(list(idx))
            return
        lo, hi = ranges[k]
        with ke.loops.range(ke.b, em.c64(lo), em.c64(hi), f"{prefix}{k}_") as i:
            em.push()
            idx.append(i)
            level(k + 1)
            idx.pop()
            em.pop()

    level(0)


def _write(ke, em, p, idx, value, cond):
    """Store the kernel's result at input position ``idx`` where ``p`` (the gradient) has
    ``value`` there; only where ``cond`` (None: always)."""
    b = ke.b
    root = ke.root
    out = ke.output_pointer()

    def store():
        em.push()
        em.scopes[-1][(id(p), tuple(id(i) for i in idx))] = value
        em.store(out, em.linear(idx, root.shape), em.value(root, idx), root.dtype)
        em.pop()

    if cond is None:
        store()
    else:
        with b.if_then(cond):
            store()


def _emit_tiled(ke, em, p, geo, par):
    b = ke.b
    shape = p.shape
    t = L.compute_type(p.dtype)
    zero = ir.Constant(t, 0.0)
    r = len(geo)
    outs = [g[1] for g in geo]

    def plane(nc):
        def window(o):
            oidx = nc + o
            if p.op == "max_pool_grad":
                ch = _chosen(em, p, geo, oidx, positions=False)
                gv = em.value(p.inputs[1], oidx)
            else:
                share = _share(em, p, geo, oidx)
            # the cell: `stride` elements per axis from the window's start
            axes = []
            for i, (n, out, k, s, pd, d) in enumerate(geo):
                cells = []
                for u in range(s):
                    pos = _scaled(em, o[i], s, u - pd)
                    ok = _in_range(em, pos, n, u - pd >= 0, (out - 1) * s + u - pd < n)
                    tap = u // d if u % d == 0 and u // d < k else None
                    cells.append((pos, ok, tap))
                axes.append(cells)
            for cell in np.ndindex(*[g[3] for g in geo]):
                parts = [axes[i][cell[i]] for i in range(r)]
                idx = list(nc) + [q[0] for q in parts]
                cond = None
                for q in parts:
                    cond = _and(b, cond, q[1])
                if any(q[2] is None for q in parts):
                    value = zero
                else:
                    tap = int(np.ravel_multi_index([q[2] for q in parts], [g[2] for g in geo]))
                    if p.op == "max_pool_grad":
                        mine = b.fcmp_ordered("==", ch, ir.Constant(t, float(tap)))
                        value = b.select(mine, gv, zero)
                    else:
                        value = share
                _write(ke, em, p, idx, value, cond)

        # no element of a cell outside the input: no branch in the loop, which vectorizes
        inside = all(u - pd >= 0 and (out - 1) * s + u - pd < n
                     for (n, out, k, s, pd, d) in geo for u in range(s))
        ke.loops.force_vectorize = inside and vectorizable_windows(ke.region)
        _nest(ke, em, [(0, o) for o in outs], window, "w")
        ke.loops.force_vectorize = False
        # the elements after the last cell, axis by axis (earlier axes within the cells)
        for i, (n, out, k, s, pd, d) in enumerate(geo):
            end = max(0, out * s - pd)
            if end >= n:
                continue
            ranges = [(0, min(geo[j][0], max(0, geo[j][1] * geo[j][3] - geo[j][4])))
                      for j in range(i)] + [(end, n)] + [(0, geo[j][0]) for j in range(i + 1, r)]
            _nest(ke, em, ranges, lambda pos: _write(ke, em, p, list(nc) + pos, zero, None),
                  f"z{i}_")

    _planes(ke, em, shape, par, plane)


def _emit_scatter(ke, em, p, geo, par):
    b = ke.b
    shape = p.shape
    out = ke.output_pointer()
    t = L.compute_type(p.dtype)
    zero = ir.Constant(t, 0.0)
    plane_shape = [g[0] for g in geo]
    size = math.prod(plane_shape)

    def plane(nc):
        base = em.linear(list(nc) + [em.c64(0)] * len(geo), shape)

        def at(flat):
            return b.add(base, flat)

        with ke.loops.range(b, em.c64(0), em.c64(size), "zf") as j:
            em.store(out, at(j), zero, p.dtype)

        def window(o):
            oidx = list(nc) + o
            if p.op == "max_pool_grad":
                ch = _chosen(em, p, geo, oidx, positions=True)
                gv = em.value(p.inputs[1], oidx)
                with b.if_then(b.icmp_signed(">=", ch, em.c64(0))):
                    where = at(ch)
                    em.store(out, where, b.fadd(em.load(out, where, p.dtype), gv), p.dtype)
                return
            share = _share(em, p, geo, oidx)
            for _, tidx, ok in window_taps(em, geo, oidx):
                where = at(em.linear(tidx[2:], plane_shape))

                def add(where=where):
                    em.store(out, where, b.fadd(em.load(out, where, p.dtype), share), p.dtype)

                if ok is None:
                    add()
                else:
                    with b.if_then(ok):
                        add()

        _nest(ke, em, [(0, g[1]) for g in geo], window, "w")

    _planes(ke, em, shape, par, plane)
