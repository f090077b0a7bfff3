"""Reverse mode through loops: the backward pass of a ``scan`` (or ``fori_loop``) is a scan in
the other direction over what the forward steps saved.

For a loop that a loss depends on, autodiff (``passes/autodiff.py``) calls :func:`prepare`,
which builds, from the body ``R(i, consts, carries, x) -> (carries', ys)``:

- the joint body ``J``: R's nodes, then the backward sweep of R's results with their
  cotangents as parameters, giving the gradient of every float const, carry and x;
- the forward loop to emit in R's place: a scan whose body also yields, per step, the
  *residuals*, the values that the backward nodes of J read and that change from step to step
  (with ``checkpoint``: the carries the step started from, and the backward body recomputes
  the rest);
- the backward body: J's backward nodes (and whatever it recomputes), reading the residuals
  as per-step slices, the cotangents of the new carries as its carries, the cotangents of the
  ys as per-step slices, and summing the consts' gradients in extra carries.

A ``fori_loop`` is differentiated as the scan over its steps (``i = lower + t``).
:meth:`LoopGrad.backward` emits the backward scan when the sweep reaches the loop.
"""

from __future__ import annotations

from lamina.ir import dtypes as dt
from lamina.ir.builder import Builder
from lamina.ir.graph import Graph, Node, Param, Value, ancestors
from lamina.ir.ops.loop import INDEX, scan_parts
from lamina.passes.manager import remark
from lamina.passes.rewrite import copy_node


def _as_scan(n: Node, ins: list[Value]):
    """(region, consts, carries, xs, length, reverse, checkpoint) of ``n`` as a scan."""
    a = n.attrs
    if n.op == "scan":
        consts, carries, xs = scan_parts(ins, a)
        return n.region, consts, carries, xs, a["length"], a["reverse"], a["checkpoint"]
    # fori_loop: step t runs the body at i = lower + t
    region = n.region
    nc = a["num_consts"]
    if a["lower"] != 0:
        b = Builder(region.name)
        t = b.add_input("t", INDEX)
        rest = [b.add_input(p.name, p.type) for p in region.inputs[1:]]
        i = b.emit("add", (t, b.constant(a["lower"], dt.int32)))
        env = dict(zip(region.inputs, [i] + rest))
        for m in region.nodes:
            b.loc = m.loc
            env[m] = b.emit(m.op, [env[v] for v in m.inputs], m.attrs, region=m.region)
        region = b.build([env[v] for v in region.outputs])
    length = max(0, a["upper"] - a["lower"])
    return region, list(ins[:nc]), list(ins[nc:]), [], length, False, a["checkpoint"]


def _cone_until(roots, known) -> tuple[set, set]:
    """The nodes ``roots`` depend on, not looking past ``known`` values, and the parameters
    reached that are not known."""
    nodes, missing = set(), set()
    stack = list(roots)
    while stack:
        v = stack.pop()
        if v in known or v in nodes or v in missing:
            continue
        if isinstance(v, Node):
            nodes.add(v)
            stack.extend(v.inputs)
        else:
            missing.add(v)
    return nodes, missing


# Ops the backward body recomputes from what is saved rather than save their results: no
# transcendental, at most one pass over memory (the fused backward kernels absorb them).
RECOMPUTED = {"add", "sub", "mul", "neg", "transpose", "reshape", "broadcast", "cast"}


def _recompute_cheap(store: list[Value], stepwise: set[Value], bwd: set[Node]) -> list[Value]:
    """Trade saved values for recomputation where that costs no memory: a saved value made
    by a cheap op from per-step values (``stepwise``: those the backward body lacks) is
    replaced by those values when they are saved already or, together, no larger
    (``1 - tanh(c)**2`` from ``tanh(c)``, ``h.T`` from ``h``).

    Every stored value is written per step by the forward loop and read back by the backward
    one (cold memory: an LSTM step's 13 residuals were most of its time); the recomputation
    fuses into the backward kernels that read the value."""
    store = list(store)
    changed = True
    while changed:
        changed = False
        have = set(store)
        for v in list(store):
            if not isinstance(v, Node) or v.op not in RECOMPUTED or v in bwd:
                continue
            srcs = list(dict.fromkeys(u for u in v.inputs if u in stepwise))
            new = [u for u in srcs if u not in have]
            if sum(u.type.nbytes for u in new) > v.type.nbytes:
                continue
            k = store.index(v)
            store[k:k + 1] = new
            have.discard(v)
            have.update(new)
            changed = True
    return store


def _float(v: Value) -> bool:
    return v.dtype.is_float


class LoopGrad:
    """What the backward sweep needs of one differentiated loop (see the module docstring)."""

    def __init__(self, fwd: Node, n_results: int, consts, carries, xs, n_carry_out: int,
                 ys_types, residual_index: list[int], bwd_region: Graph, length: int,
                 reverse: bool):
        self.fwd = fwd
        self.n_results = n_results
        self.consts, self.carries, self.xs = consts, carries, xs
        self.ys_types = ys_types
        self.residual_index = residual_index
        self.bwd_region = bwd_region
        self.length, self.reverse = length, reverse

    def backward(self, b: Builder, cts: dict[int, Value]) -> list[Value | None]:
        """Emit the backward scan; the cotangents of the forward node's operands."""
        fwd = self.fwd
        nk = len(self.carries)

        def ct(k, t):
            return cts[k] if k in cts else b.constant(0.0, t.dtype, t.shape)

        f_carry = [k for k, v in enumerate(self.carries) if _float(v)]
        f_const = self.accumulated
        f_ys = [k for k, t in enumerate(self.ys_types) if t.dtype.is_float]
        f_xs = [k for k, v in enumerate(self.xs) if _float(v)]
        init = [ct(k, self.carries[k].type) for k in f_carry]
        init += [b.constant(0.0, self.consts[k].dtype, self.consts[k].shape) for k in f_const]
        residuals = [b.emit("get", (fwd,), {"index": j}) for j in self.residual_index]
        # a per-step output nobody differentiates has no cotangent: the body is specialized
        # without it (no stacked zeros read per step, no "+ 0" of its carry's cotangent)
        region = self.bwd_region
        n_in = len(region.inputs)
        absent = {n_in - len(f_ys) + j for j, k in enumerate(f_ys) if nk + k not in cts}
        if absent:
            region = _without_cotangents(region, absent)
        ys_ct = [cts[nk + k] for k in f_ys if nk + k in cts]
        operands = list(self.consts) + init + residuals + list(self.xs) + ys_ct
        node = b.emit("scan", operands, {
            "name": region.name, "num_consts": len(self.consts),
            "num_carry": len(init), "length": self.length, "reverse": not self.reverse,
            "checkpoint": False}, region=region)
        out = [b.emit("get", (node,), {"index": j}) for j in range(len(node.type))]
        contribs: list[Value | None] = [None] * len(fwd.inputs)
        nc = len(self.consts)
        for j, k in enumerate(f_carry):
            contribs[nc + k] = out[j]
        for j, k in enumerate(f_const):
            contribs[k] = out[len(f_carry) + j]
        for j, k in enumerate(f_xs):
            contribs[nc + nk + k] = out[len(init) + j]
        # the consts' gradients as one product of the stacked per-step factors (simplify's
        # sum_of_batched_matmul makes it one GEMM over the steps' rows)
        def factor(where):
            kind, j, flip = where
            v = {"ys": lambda: out[len(init) + j], "saved": lambda: residuals[j],
                 "xs": lambda: self.xs[j]}[kind]()
            return b.emit("transpose", (v,), {"perm": (0, 2, 1)}) if flip else v

        for k, perms, fa, ff in self.products:
            a, f = factor(fa), factor(ff)
            g = b.emit("sum", (b.emit("matmul", (a, f)),), {"axis": (0,), "keepdims": False})
            for perm in reversed(perms):
                g = b.emit("transpose", (g,), {"perm": perm})
            contribs[k] = g
        return contribs


def _without_cotangents(region: Graph, absent: set[int]) -> Graph:
    """``region`` without its inputs at positions ``absent``, per-step cotangents that are
    zero: a sum with one is its other operand (an absent cotangent contributes nothing; this
    differs from adding 0.0 only in the sign of a zero gradient), any other use reads a zero
    constant."""
    b = Builder(region.name)
    env: dict[Value, Value] = {}
    zero: set[Value] = set()
    for k, p in enumerate(region.inputs):
        if k in absent:
            zero.add(p)
        else:
            env[p] = b.add_input(p.name, p.type)

    def read(v):
        if v in zero and v not in env:
            env[v] = b.constant(0.0, v.dtype, v.type.shape)
        return env[v]

    for m in region.nodes:
        z = [v in zero for v in m.inputs]
        if m.op == "add" and sum(z) == 1:
            other = m.inputs[z.index(False)]
            if other.type == m.type:
                env[m] = read(other)
                continue
        if all(z) and m.inputs and m.op == "add":
            zero.add(m)
            continue
        b.loc = m.loc
        env[m] = copy_node(b, m, [read(v) for v in m.inputs])
    return b.build([read(v) for v in region.outputs])


def prepare(b: Builder, n: Node, ins: list[Value]) -> tuple[Node, LoopGrad]:
    """Emit the forward loop of ``n`` (with residual outputs) into ``b``; its LoopGrad."""
    from lamina.passes.autodiff import backward

    region, consts, carries, xs, length, reverse, checkpoint = _as_scan(n, ins)
    nc, nk = len(consts), len(carries)
    R = region
    p_i = R.inputs[0]
    p_consts = R.inputs[1:1 + nc]
    p_carries = R.inputs[1 + nc:1 + nc + nk]
    p_xs = R.inputs[1 + nc + nk:]
    ny = len(R.outputs) - nk

    # --- the joint body J: R's nodes, then the backward sweep seeded by the cotangents ------
    # (a loop in the body is emitted as a forward loop with residuals, like this one)
    jb = Builder(R.name + "_joint")
    copied: dict[Value, Value] = {p: p for p in R.inputs}
    nested: dict = {}
    for m in R.nodes:
        ins_m = [copied[v] for v in m.inputs]
        jb.loc = m.loc
        if m.op in ("scan", "fori_loop"):
            copied[m], plan = prepare(jb, m, ins_m)
            nested[copied[m]] = plan
        else:
            copied[m] = copy_node(jb, m, ins_m)
    outs = [copied[v] for v in R.outputs]
    ct_params = {}
    seeds: dict[Value, Value] = {}
    for k, v in enumerate(outs):
        if not _float(v):
            continue
        p = Param(f"ct{k}", v.type)
        ct_params[k] = p
        seeds[v] = p if v not in seeds else jb.emit("add", (seeds[v], p))
    wrts = [p for p in list(p_consts) + list(p_carries) + list(p_xs) if _float(p)]
    wrts = list(dict.fromkeys(wrts))
    grads = backward(jb, None, wrts, None, seeds=seeds, loops=nested, quiet=True) if seeds else \
        {w: jb.constant(0.0, w.dtype, w.shape) for w in wrts}
    j_nodes = jb.nodes

    # --- which values the backward part reads -----------------------------------------------
    ct_set = set(ct_params.values())
    bwd: set[Node] = set()
    for m in j_nodes:
        if any(v in ct_set or v in bwd for v in m.inputs):
            bwd.add(m)
    step_params = {p_i, *p_carries, *p_xs}
    stepwise: set[Value] = set(step_params)
    for m in j_nodes:
        if any(v in stepwise for v in m.inputs):
            stepwise.add(m)
    g_carry = [grads[p] for p in p_carries if _float(p)]
    g_xs = [grads[p] for p in p_xs if _float(p)]
    # a const's gradient is the sum over steps of its per-step gradient: accumulated in a
    # carry, or, where that is a product of two per-step matrices (a weight's: x_t^T dgates_t),
    # both factors yielded per step and multiplied once after the loop (one large GEMM instead
    # of one small GEMM and one accumulation per step)
    per_step = stepwise | bwd | ct_set
    g_const, products = [], []
    for p in p_consts:
        if not _float(p):
            continue
        v, perms = grads[p], []
        while isinstance(v, Node) and v.op == "transpose":
            perms.append(v.attrs["perm"])
            v = v.inputs[0]
        if isinstance(v, Node) and v.op == "matmul" and \
                all(x.type.ndim == 2 and x in per_step for x in v.inputs):
            products.append((p, perms, v.inputs))
        else:
            g_const.append((p, grads[p]))
    results = g_carry + [g for _, g in g_const] + [x for _, _, ab in products for x in ab] + g_xs
    needed = ancestors(results)
    reads = set()
    for m in j_nodes:
        if m in bwd and m in needed:
            reads.update(v for v in m.inputs if v not in bwd and v not in ct_set)
    reads.update(v for v in results if v not in bwd and v not in ct_set)
    # stored: stepwise values the backward reads (but not i and the xs, which the backward
    # scan has); with checkpoint, only the carries, and the rest is recomputed
    if checkpoint:
        known = {p_i, *p_consts, *p_xs, *ct_set}
        _, missing = _cone_until(results, known)
        store = [p for p in p_carries if p in missing]
    else:
        store = [v for v in dict.fromkeys(
            v for m in j_nodes for v in m.inputs if v in reads) if v in stepwise
            and v is not p_i and v not in p_xs]
        store += [v for v in results if v in reads and v in stepwise and v not in store
                  and v is not p_i and v not in p_xs]
    store = list(dict.fromkeys(store))
    if not checkpoint:
        store = _recompute_cheap(store, stepwise - {p_i, *p_xs}, bwd)

    # --- the forward loop, yielding the residuals too -------------------------------------
    fb = Builder(R.name)
    fb.inputs = list(R.inputs)
    fb.loc = None
    fwd_need = ancestors(list(outs) + [v for v in store if isinstance(v, Node)])
    fb.nodes = [m for m in j_nodes if m in fwd_need and m not in bwd]
    fwd_region = fb.build(list(outs) + store)
    b_loc = b.loc
    fwd = b.emit("scan", consts + carries + xs, {
        "name": R.name, "num_consts": nc, "num_carry": nk, "length": length,
        "reverse": reverse, "checkpoint": checkpoint}, loc=n.loc, region=fwd_region)
    b.loc = b_loc
    residual_index = list(range(nk + ny, nk + ny + len(store)))

    # --- the backward body --------------------------------------------------------------------
    bb = Builder(R.name + "_grad")
    names: set[str] = set()

    def param(name, type):
        base, k = name, 1
        while name in names:
            name, k = f"{base}_{k}", k + 1
        names.add(name)
        return bb.add_input(name, type)

    env: dict[Value, Value] = {}
    env[p_i] = param("i", INDEX)
    for p in p_consts:
        env[p] = param(p.name, p.type)
    f_carry = [k for k, p in enumerate(p_carries) if _float(p)]
    ct_carry = [param(f"ct_{p_carries[k].name}", p_carries[k].type) for k in f_carry]
    acc = [param(f"grad_{p.name}", p.type) for p, _ in g_const]
    for j, k in enumerate(f_carry):
        env[ct_params[k]] = ct_carry[j]
    for j, v in enumerate(store):
        env[v] = param(f"saved{j}", v.type)
    for p in p_xs:
        env[p] = param(p.name, p.type)
    for k in range(nk, nk + ny):
        if k in ct_params:
            env[ct_params[k]] = param(f"ct_y{k - nk}", outs[k].type)
    # what the backward computes (or recomputes) from what it has at hand
    copy_need, missing = _cone_until(results, set(env))
    if missing:
        raise AssertionError(f"loop_grad: the backward body of @{R.name} lacks {missing}")
    for m in j_nodes:
        if m in env or m not in copy_need:
            continue
        bb.loc = m.loc
        env[m] = bb.emit(m.op, [env[v] for v in m.inputs], m.attrs, region=m.region)
    new_acc = []
    for a_in, (_, g) in zip(acc, g_const):
        new_acc.append(bb.emit("add", (a_in, env[g])))
    ys = [env[g] for g in g_xs]
    # Each factor is read from a stacked array that exists anyway where it can be: a per-step
    # output of the backward scan (dgates: x's gradient too), a saved residual or an x; a
    # transposed factor (h.T) is read through the transpose of the stack (a strided GEMM
    # operand), not transposed step by step
    slot = {}
    for k, v in enumerate(ys):
        slot.setdefault(v, ("ys", k, False))
    saved_at = {v: j for j, v in enumerate(store)}
    xs_at = {p: j for j, p in enumerate(p_xs)}
    factor_at = []
    for _, _, ab in products:
        for x in ab:
            flip = isinstance(x, Node) and x.op == "transpose" and x.attrs["perm"] == (1, 0) \
                and x not in bwd
            u = x.inputs[0] if flip else x
            if u in saved_at:
                factor_at.append(("saved", saved_at[u], flip))
            elif u in xs_at:
                factor_at.append(("xs", xs_at[u], flip))
            else:
                v = env[x]
                if v not in slot:
                    slot[v] = ("ys", len(ys), False)
                    ys.append(v)
                factor_at.append(slot[v])
    bwd_region = bb.build([env[g] for g in g_carry] + new_acc + ys)
    remark(f"{n.op} @{n.attrs['name']}: the backward scan reads {len(store)} saved "
           f"value(s) per step" + (" (checkpoint: the carries)" if checkpoint else ""))
    ys_types = [v.type for v in outs[nk:]]
    plan = LoopGrad(fwd, nk + ny, consts, carries, xs, nk, ys_types, residual_index,
                    bwd_region, length, reverse)
    index = {p: k for k, p in enumerate(p_consts)}
    plan.accumulated = [index[p] for p, _ in g_const]
    plan.products = [(index[p], perms, factor_at[2 * j], factor_at[2 * j + 1])
                     for j, (p, perms, _) in enumerate(products)]
    return fwd, plan
