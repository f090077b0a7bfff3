"""Outputs handed back as views of one kernel's result instead of copies of its pieces.

A kernel with several results packs them into one buffer (``attention_grad``: all of dq, then
all of dk, then all of dv) and the graph slices them apart; each slice is a kernel that copies
its range into the array returned to the caller. Where a returned value is a contiguous range
of another kernel's result (a kernel of only ``slice`` and ``reshape`` nodes reading it), the
program instead has the source kernel write straight into an array of its own, returned as
views: no copy kernel, and no arena buffer holding the packed result between calls.

    lowered, views = output_views(graph)

``lowered`` computes the same values with those slice kernels removed and each source kernel
an extra (hidden) output; ``views.resolve`` maps the lowered graph's output arrays back to the
caller's. Views of one source never overlap, so writing into one returned array never changes
another. The rewrite is deterministic: a cached or saved program is rebuilt from the same graph
the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lamina.ir.graph import Graph, Node


@dataclass(frozen=True)
class OutputViews:
    """Per caller output: ``("out", j)`` (the lowered graph's output j) or ``("view", j,
    offset, shape)`` (elements ``offset:offset + prod(shape)`` of output j, reshaped)."""

    entries: tuple

    def resolve(self, outs: list) -> list:
        res = []
        for e in self.entries:
            if e[0] == "out":
                res.append(outs[e[1]])
            else:
                _, j, off, shape = e
                flat = outs[j].reshape(-1)
                res.append(flat[off:off + math.prod(shape)].reshape(shape))
        return res


def _contiguous_range(kernel: Node):
    """(offset, shape) of a kernel that only slices and reshapes its one operand, when what it
    yields is a contiguous range of that operand (row-major); else None."""
    region = kernel.region
    if region is None or len(kernel.inputs) != 1 or len(region.outputs) != 1:
        return None
    cur = region.outputs[0]
    chain = []
    while isinstance(cur, Node):
        if cur.op not in ("slice", "reshape") or len(cur.inputs) != 1:
            return None
        chain.append(cur)
        cur = cur.inputs[0]
    if cur is not region.inputs[0] or len(chain) != len(region.nodes) or not chain:
        return None
    src = kernel.inputs[0]
    if cur.dtype is not src.dtype or cur.shape != src.shape:
        return None
    offset, shape = 0, tuple(src.shape)
    for n in reversed(chain):
        if n.op == "reshape":
            shape = tuple(n.shape)
            continue
        start, stop, step = n.attrs["start"], n.attrs["stop"], n.attrs["step"]
        if any(s != 1 for s in step):
            return None
        sizes = [b - a for a, b in zip(start, stop)]
        if any(s <= 0 for s in sizes):
            return None
        cut = next((i for i, (s, d) in enumerate(zip(sizes, shape)) if s != d), len(shape))
        if any(s != 1 for s in sizes[:cut]) or sizes[cut + 1:] != list(shape[cut + 1:]):
            return None
        strides = [math.prod(shape[i + 1:]) for i in range(len(shape))]
        offset += sum(a * st for a, st in zip(start, strides))
        shape = tuple(n.shape)
    return offset, shape


def output_views(g: Graph) -> tuple[Graph, OutputViews | None]:
    """The lowered graph and its output views; ``(g, None)`` where no output is a view."""
    counts: dict = {}
    for v in g.outputs:
        counts[v] = counts.get(v, 0) + 1
    readers = {v for n in g.nodes for v in n.inputs}
    updated = set(g.updates.values())
    found: dict[Node, list] = {}  # source kernel -> [(k, view kernel, offset, shape)]
    for k, v in enumerate(g.outputs):
        if not (isinstance(v, Node) and v.op == "kernel") or counts[v] != 1 or v in readers \
                or v in updated:
            continue
        r = _contiguous_range(v)
        if r is None:
            continue
        src = v.inputs[0]
        if not (isinstance(src, Node) and src.op == "kernel") or src in counts \
                or src in updated:
            continue
        found.setdefault(src, []).append((k, v, *r))
    for src, views in list(found.items()):
        spans = sorted((off, off + math.prod(shape)) for _, _, off, shape in views)
        if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
            del found[src]  # overlapping views: copies keep the outputs independent
    if not found:
        return g, None
    view_of = {k: (src, off, shape) for src, views in found.items()
               for k, _, off, shape in views}
    dropped = {v for views in found.values() for _, v, _, _ in views}
    outputs, entries = [], []
    for k, v in enumerate(g.outputs):
        if k not in view_of:
            entries.append(("out", len(outputs)))
            outputs.append(v)
    hidden = {}
    for src in found:
        hidden[src] = len(outputs)
        outputs.append(src)
    for k in sorted(view_of):
        src, off, shape = view_of[k]
        entries.insert(k, ("view", hidden[src], int(off), tuple(int(d) for d in shape)))
    lowered = g.replace(nodes=[n for n in g.nodes if n not in dropped], outputs=outputs)
    return lowered, OutputViews(tuple(entries))

