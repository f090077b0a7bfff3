"""Reverse-mode autodiff as a graph transform: every ``grad(loss, x)`` node is replaced by the
backward computation, built from each op's ``vjp`` rule.

Grad nodes are expanded in graph order, so a gradient of a gradient sees the first one already
expanded into ordinary ops. All grad nodes of one loss share one backward sweep. Backward nodes
carry the forward node's source line, marked ``(grad)``.
"""

from __future__ import annotations

from collections import Counter

from lamina.ir.builder import Builder
from lamina.ir.errors import GradError, LaminaError
from lamina.ir.graph import Graph, Node, Value, ancestors
from lamina.ir.ops.registry import ZERO_GRAD
from lamina.ir.ops.registry import get as get_op
from lamina.passes import loop_grad
from lamina.passes.manager import remark
from lamina.passes.rewrite import copy_node


def _has_grad(g: Graph) -> bool:
    return any(n.op == "grad" or (n.region is not None and n.op != "kernel"
                                  and _has_grad(n.region)) for n in g.nodes)


def differentiate(g: Graph) -> Graph:
    """Expand every ``grad`` node of ``g`` (and of loop bodies), one loss at a time in graph
    order: a gradient of a gradient then differentiates the first one's expansion, loops
    (its backward scans) included."""
    while _has_grad(g):
        g = _expand_first_loss(g)
    return g


def _expand_first_loss(g: Graph) -> Graph:
    b = Builder(g.name)
    b.inputs, b.state = list(g.inputs), list(g.state)
    env: dict[Value, Value] = {p: p for p in g.params}
    requests = [n for n in g.nodes if n.op == "grad"]
    loss = requests[0].inputs[0] if requests else None
    mine = [n for n in requests if n.inputs[0] is loss]
    # loops the loss depends on are emitted with the residuals their backward reads
    cone = ancestors([loss]) if requests else set()
    loops: dict = {}
    grads: dict[Value, Value] | None = None
    for n in g.nodes:
        ins = [env[v] for v in n.inputs]
        if n.op == "grad" and n.inputs[0] is loss:
            if grads is None:  # every wrt of this loss that is defined by now, in one sweep
                wrts = [env[m.inputs[1]] for m in mine if m.inputs[1] in env]
                grads = backward(b, ins[0], list(dict.fromkeys(wrts)), n, loops=loops)
            if ins[1] not in grads:  # a wrt defined after the first request: another sweep
                grads.update(backward(b, ins[0], [ins[1]], n, loops=loops))
            env[n] = grads[ins[1]]
            continue
        m = n
        if n.region is not None and n.op != "kernel" and _has_grad(n.region):
            m = Node(n.op, n.inputs, n.attrs, n.type, n.loc, differentiate(n.region))
        b.loc = n.loc
        if n in cone and n.op in ("scan", "fori_loop"):
            env[n], plan = loop_grad.prepare(b, m, ins)
            loops[env[n]] = plan
        else:
            env[n] = copy_node(b, m, ins) if m is n else \
                b.emit(m.op, ins, m.attrs, loc=m.loc, region=m.region)
    return g.replace(nodes=b.nodes, outputs=[env[v] for v in g.outputs],
                     updates={k: env[v] for k, v in g.updates.items()})


differentiate.pass_name = "autodiff"


def backward(b: Builder, loss: Value | None, wrts: list[Value], request: Node | None,
             seeds: dict[Value, Value] | None = None, loops: dict | None = None,
             quiet: bool = False) -> dict[Value, Value]:
    """Append the backward sweep from ``loss`` to ``b``; the gradient of each of ``wrts``.

    ``seeds`` (instead of a loss): the cotangents of several values to start from (a loop
    body's results). ``loops``: the forward loop nodes that autodiff prepared (``loop_grad``),
    whose backward is a loop of its own."""
    roots = list(seeds) if seeds is not None else [loss]
    order = _cone(roots, b.nodes)  # the nodes the roots depend on, in graph order
    carries = _carriers(order, set(wrts))
    ct: dict[Value, Value] = {}
    parts: dict[Node, dict[int, Value]] = {}  # a loop's cotangents, by result index
    b.loc = request.loc if request is not None else None
    if seeds is not None:
        ct.update(seeds)
    else:
        ct[loss] = b.constant(1.0, loss.dtype)
    emitted = Counter()
    for node in reversed(order):
        if node.op == "get" and node in carries and node in ct:
            got = parts.setdefault(node.inputs[0], {})
            k = node.attrs["index"]
            got[k] = ct[node] if k not in got else b.emit("add", (got[k], ct[node]))
            continue
        if node in parts and node in carries:
            if loops is None or node not in loops:
                raise GradError(
                    "lm.while_loop is not differentiable: its trip count is known only at run "
                    "time (use lm.fori_loop or lm.scan when it is static)"
                    if node.op == "while_loop" else
                    f"a gradient through this {node.op} is not supported yet (a loop inside a "
                    "loop's body, or a second-order gradient through a loop)", node.loc)
            b.loc = node.loc.with_note("grad") if node.loc else None
            contribs = loops[node].backward(b, parts[node])
            for x, c in zip(node.inputs, contribs):
                if c is None or (x not in carries and x not in wrts):
                    continue
                c = _fit(b, b.lift(c), x)
                ct[x] = c if x not in ct else b.emit("add", (ct[x], c))
            emitted[node.op] += 1
            continue
        g = ct.get(node)
        if g is None or node not in carries:
            continue
        opdef = get_op(node.op)
        if opdef.kind == "composite":
            raise GradError(f"{node.op} reached autodiff undecomposed; run passes.decompose "
                            "first", node.loc)
        if node.op == "grad":
            raise GradError("a grad node inside the function being differentiated was not "
                            "expanded first", node.loc)
        if opdef.vjp is None and opdef.decompose is None:
            raise GradError(f"{node.op} has no gradient rule", node.loc)
        if opdef.vjp == ZERO_GRAD:
            continue
        b.loc = node.loc.with_note("grad") if node.loc else None
        before = len(b.nodes)
        try:
            if opdef.vjp is None:
                contribs = _vjp_by_decomposition(b, opdef, node, g)
            else:
                contribs = opdef.vjp(b.var(g), b.var(node), *[b.var(v) for v in node.inputs],
                                     **node.attrs)
        except LaminaError as e:
            raise GradError(f"gradient of {node.op}: {e.message}", node.loc) from None
        if len(contribs) != len(node.inputs):
            raise LaminaError(f"the vjp of {node.op} gave {len(contribs)} cotangents for "
                              f"{len(node.inputs)} inputs", node.loc)
        for x, c in zip(node.inputs, contribs):
            if c is None or (x not in carries and x not in wrts):
                continue
            c = _fit(b, b.lift(c), x)
            ct[x] = c if x not in ct else b.emit("add", (ct[x], c))
        emitted[node.op] += len(b.nodes) - before
    b.loc = request.loc if request is not None else None
    out = {}
    for w in wrts:
        out[w] = ct[w] if w in ct else b.constant(0.0, w.dtype, w.shape)
        if w not in ct and not quiet:
            remark(f"gradient with respect to {_describe(w)} is zero: the loss does not "
                   "depend on it")
    if not quiet:
        remark(f"backward of {_describe(loss)} for {len(wrts)} value(s): "
               f"{sum(emitted.values())} node(s) from {len(emitted)} op kind(s)")
    return out


def _vjp_by_decomposition(b: Builder, opdef, node: Node, g: Value) -> list:
    """The cotangents of a primitive without a gradient rule of its own (``attention_grad``,
    for second-order gradients) through its ``decompose``: the decomposition is recomputed
    from the node's inputs and differentiated as ``sum(decomposition * g)`` with ``g``
    held constant."""
    # NOTE: fresh aliases of the inputs are the leaves, so that the cotangents stop there (an
    # input computed from another input must not pass its cotangent on twice: the outer
    # sweep does that)
    leaves = {v: b.emit("alias", (v,)) for v in dict.fromkeys(node.inputs)}
    out = b.lift(opdef.decompose(*[b.var(leaves[v]) for v in node.inputs], **node.attrs))
    held = b.emit("stop_gradient", (g,))
    loss = b.emit("sum", (b.emit("mul", (out, held)),), {"axis": None, "keepdims": False})
    grads = backward(b, loss, list(leaves.values()), node)
    return [grads.get(leaves[v]) for v in node.inputs]


def _describe(v: Value) -> str:
    if isinstance(v, Node):
        return f"{v.op} at {v.loc}" if v.loc else v.op
    return f"%{v.name}"


def _cone(roots: list[Value], nodes: list[Node]) -> list[Node]:
    """The nodes ``roots`` depend on (themselves included), in graph order."""
    seen = ancestors(roots)
    return [n for n in nodes if n in seen]


def _carriers(order: list[Node], wrts: set[Value]) -> set[Value]:
    """Values through which the loss depends on a wrt (so a cotangent must flow through)."""
    out: set[Value] = set(wrts)
    for n in order:
        if get_op(n.op).vjp == ZERO_GRAD:
            continue
        if any(v in out for v in n.inputs):
            out.add(n)
    return out


def _fit(b: Builder, c: Value, x: Value) -> Value:
    """A cotangent summed back over broadcast axes to ``x``'s shape, in ``x``'s dtype."""
    if c.shape != x.shape:
        lead = len(c.shape) - len(x.shape)
        axes = list(range(lead)) + [lead + i for i, d in enumerate(x.shape)
                                    if d == 1 and c.shape[lead + i] != 1]
        if axes:
            c = b.emit("sum", (c,), {"axis": axes, "keepdims": True})
        if c.shape != x.shape:
            c = b.emit("reshape", (c,), {"shape": x.shape})
    if c.dtype is not x.dtype:
        c = b.emit("cast", (c,), {"dtype": x.dtype})
    return c

