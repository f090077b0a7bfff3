"""Fusion: group the graph into ``kernel`` nodes, each lowered by a backend as one loop nest
(or one GEMM), so intermediate values stay in registers instead of memory.

Groups grow from consumers to producers (reverse graph order). Every materialized value roots a
group; the group then pulls in a producer when all of that producer's users are already inside
(so no value is needed outside, and no cycle between kernels can form), or clones it when it is
a cheap index operation (broadcast, reshape, transpose, ...). What a group may hold:

    loop    elementwise and shape ops over the root's shape (a producer smaller than the root
            joins only if cheap: a broadcast would repeat its work)
    reduce  reductions over the same axes of the same shape, with their producers and the
            consumers of their results: several reductions (softmax: max, then sum) and
            full-shape consumers need the reduced axes to be the trailing ones (a row program).
            The kernel computes one row at a time and keeps only that row's reduced values, so
            every member must read them at the row being computed (``Fuser.rows_aligned``): shapes
            alone cannot tell (the transpose of a square, numpy's trailing broadcast of a
            keepdims=False result, a gather keep them)
    gemm    one matmul, the transposes/reshapes of its operands (strided views, no copy) and an
            elementwise epilogue over its result (bias, activation, residual, optimizer update)
    scan    a scan (cumsum) as the root, with the elementwise and shape ops that produce its
            operand (evaluated at each position as the scan reaches it); nothing after it: a
            scan's result is read at other positions than it is written
    window  a pooling gradient (max_pool_grad, avg_pool_grad) with the producers of its
            operands; where its windows do not overlap, also the elementwise consumers of its
            result over the same shape (ReLU's backward), evaluated as each element is
            written, like a GEMM epilogue. Overlapping windows accumulate: nothing after it
    opaque  scatter_add, alone; an ``attention`` node (fused attention or its gradient), alone

Every boundary is explained in the pass remarks (``LAMINA_DUMP`` writes them into the dump).
"""

from __future__ import annotations

import math
from collections import Counter

from lamina.ir.builder import Builder
from lamina.ir.graph import Graph, Node, Param, Value
from lamina.ir.ops.reduce import keep_shape, reduce_axes, reduced_shape
from lamina.ir.ops.registry import get as get_op
from lamina.ir.ops.source import is_splat
from lamina.passes.gemm_operand import INDEX_OPS, operand_layout, static_value
from lamina.passes.manager import remark

# Index arithmetic only: cloned into every kernel that reads them instead of materialized.
CHEAP = {"broadcast", "reshape", "transpose", "slice", "iota", "cast"}
REDUCTIONS = {"sum", "max", "min", "argmax"}
# Shape ops that read their input at other positions than they write.
MOVES_INDEX = {"transpose", "reshape", "slice", "pad", "concatenate", "take"}
# Pooling gradients: computed per window (backends/llvm/pooling.py), not per element.
POOL_GRADS = {"max_pool_grad", "avg_pool_grad"}
# Operand producers a GEMM reads through strides instead of a copy.
VIEWS = {"transpose", "reshape", "broadcast"}


def category(n: Node) -> str:
    if n.op == "matmul":
        return "matmul"
    if n.op in REDUCTIONS:
        return "reduce"
    if n.op == "scatter_add" or n.op == "kernel" or get_op(n.op).kind == "attention":
        return "opaque"
    if get_op(n.op).kind == "loop":
        return "loop"
    if get_op(n.op).kind == "scan":
        return "scan"
    if n.op in POOL_GRADS:
        return "window"
    if n.op == "constant":
        return "constant"
    return "map"  # elementwise, shape, iota, random, take


class Group:
    """A kernel under construction."""

    def __init__(self, root: Node):
        self.root = root
        self.members: set[Node] = {root}
        self.clones: set[Node] = set()  # cheap members that stay available to other groups
        self.inputs: list[Value] = []
        self.matmul: Node | None = root if root.op == "matmul" else None
        self.operand_side: set[Node] = set()  # views between a buffer and the matmul
        self.index_side: set[Node] = set()  # a gather's index there, evaluated at compile time
        # a reshape splitting the matmul's last axis (conv: H*W -> H, W): the epilogue then
        # indexes the domain as [..., row, 0, ..., column, 0, ...] (see _splits_columns)
        self.split: Node | None = None
        self.domain = root.shape  # the iteration space of loop kernels and epilogues
        # producers of index moves (transpose, take, ...) stay out: set on a second try when
        # the first one had to leave a reduction out because a move read it at other rows
        self.cut_at_moves = False
        self.maps: dict | None = None  # index maps of a reduce group's values (row_maps)
        self.pieces: set[Node] = set()  # computed per piece of a root concatenate (is_piece)
        self.reduce: tuple | None = None  # (input shape, reduced axes) of its reductions
        self.kind = {"matmul": "gemm", "reduce": "reduce", "opaque": "opaque",
                     "scan": "scan", "window": "window"}.get(category(root), "loop")
        if self.kind == "reduce":
            self.reduce = (root.inputs[0].shape, reduce_axes(root))

    def row_class(self, shape, reduce: tuple | None = None) -> bool:
        """Is ``shape`` a per-row shape (keepdims or not) of the reduction ``reduce``
        (default: this group's)?"""
        d, axes = reduce or self.reduce
        return shape in (keep_shape(d, axes), reduced_shape(d, axes, False))

    def row_reshape(self, n: Node, reduce: tuple | None = None) -> bool:
        """The kernel's result may be a reshape of the per-row result (same element count):
        it is stored through the flat index. Shape ops elsewhere could read another row's."""
        d, axes = reduce or self.reduce
        return (n is self.root and n.op == "reshape"
                and _size(n.shape) == _size(reduced_shape(d, axes, False)))


def _full_leaves(p: Node, stop: int) -> int:
    """How many full-size arrays (of ``p``'s size) recomputing ``p`` in a row program reads:
    the values where its cone of elementwise ops and reductions ends (parameters, GEMM
    outputs, ...); counting stops at ``stop``."""
    size = _size(p.shape)
    seen, leaves, todo = set(), 0, list(p.inputs)
    while todo and leaves < stop:
        u = todo.pop()
        if u in seen:
            continue
        seen.add(u)
        if isinstance(u, Node) and u.op == "constant":
            continue
        if isinstance(u, Node) and category(u) in ("map", "reduce") and u.op != "take" \
                and get_op(u.op).kind != "random":
            todo.extend(u.inputs)
        elif _size(u.shape) == size:
            leaves += 1
    return leaves


def _trailing(shape, axes) -> bool:
    return tuple(axes) == tuple(range(len(shape) - len(axes), len(shape)))


def _size(shape) -> int:
    return math.prod(shape)


def _varies_on_leading_axes(shape, domain) -> bool:
    """``shape`` broadcast to ``domain`` only along trailing axes ([N,1] into [N,C]): computed
    in an outer loop, it stays loop-invariant in the inner ones (hoisted by LLVM).

    NOTE: broadcasting lines up trailing axes (numpy), so ``shape`` is compared padded on the
    left: a [16,16] read by a [16,16,16] kernel varies along its *last* two axes."""
    n = len(domain)
    padded = (1,) * (n - len(shape)) + tuple(shape)
    return any(padded == tuple(domain[:k]) + (1,) * (n - k) for k in range(n + 1))


class Fuser:
    def __init__(self, g: Graph, gather_operands: bool = False):
        self.g = g
        # the backend's GEMM reads operands through any index ops with per-axis offset
        # tables (passes/gemm_operand.py): slices, gathers with a constant index, reshapes
        self.gather_operands = gather_operands
        self.users = g.users()
        # (producer, consumer group's root, why): turned into remarks once kernels have names
        self.boundaries: list[tuple[Node, Node, str]] = []
        self.reasons: dict[Node, str] = {}  # why a producer stayed out of the current group
        self.kept: set[Node] = set()  # loops and their results: top-level nodes of their own
        self.filled: set[Node] = set()  # splat constants computed by a kernel (loop operands)
        self.misread = False  # a reduction was left out: it would have been read at other rows

    def decline(self, p: Node, reason: str) -> bool:
        self.reasons[p] = reason
        return False

    # --- may group G take producer p? -------------------------------------------------------

    def absorbable(self, G: Group, p: Node) -> bool:
        cat = category(p)
        if G.cut_at_moves and p.op not in CHEAP:
            move = next((u for u in self.users_of(p) if u in G.members and u.op in MOVES_INDEX),
                        None)
            if move is not None:
                return self.decline(p, f"the {move.op} reading it needs other rows than the "
                                       "one a row program holds: it is computed whole first")
        if cat == "loop":
            return self.decline(p, "a loop's results are stored (the loop runs its body's "
                                   "kernels step by step)")
        if cat in ("opaque", "constant") or G.kind == "opaque":
            return self.decline(p, "scatter_add, attention and non-splat constants are kernels "
                                   "of their own")
        if cat == "scan":
            return self.decline(p, f"a {p.op} is computed whole by a kernel of its own (it is "
                                   "read at other positions than it writes)")
        if G.kind == "scan" and cat != "map":
            return self.decline(p, f"a {p.op} does not fuse into a scan's operand")
        if cat == "window":
            return self.take_window(G, p)
        if G.kind == "window" and cat != "map":
            return self.decline(p, f"a {p.op} does not fuse into a pooling gradient's operands")
        if cat == "matmul":
            return self.take_matmul(G, p)
        if cat == "reduce":
            return self.take_reduction(G, p)
        return self.take_map(G, p)

    def take_map(self, G: Group, p: Node) -> bool:
        if G.kind == "gemm":
            users = self.users_of(p)
            if any(u is G.matmul or u in G.operand_side for u in users):
                # an operand of the matmul: only strided views of a buffer (and what it is a
                # view of may already be here, for the epilogue: then that must be one too)
                chain = _member_cone(p, G.members | {p})
                inside = all(u is G.matmul or u in G.operand_side
                             for u in users if u in G.members)
                if (inside and self.gather_operands and static_value(p) is not None
                        and all((u.op == "take" and u.inputs[1] is p and u.inputs[0] is not p)
                                or u in G.index_side for u in users if u in G.members)):
                    G.operand_side.update(chain)  # a gather's index: known when compiling
                    G.index_side.update(chain)
                    return True
                if inside and all(self.is_view(v) for v in chain) and (
                        not self.gather_operands or self.gemm_reads(G, p)):
                    G.operand_side.update(chain)
                    return True
                if (inside and self.gather_operands and all(v.op in INDEX_OPS for v in chain)
                        and self.gemm_reads(G, p)):
                    G.operand_side.update(chain)
                    return True
                return self.decline(p, "a matmul reads its operands through strides; this "
                                       "producer is computed, so it is materialized")
            if p.shape != G.domain and p.op not in CHEAP:
                return self.decline(p, "the epilogue runs over the matmul's output shape")
            if G.split is not None:
                bad = _splits_columns(p, G.domain, len(G.matmul.shape) - 1)
                if bad:
                    return self.decline(p, f"the epilogue's {p.op} {bad}")
            return True
        if G.kind == "reduce":
            d, _ = G.reduce
            if p.shape == d or G.row_class(p.shape) or G.row_reshape(p):
                return self.rows_aligned(G, p, G.reduce)
            return self.decline(p, f"its shape {list(p.shape)} fits neither the rows of "
                                   f"{list(d)} nor their reduced shape")
        if self.is_piece(G, p):
            G.pieces.add(p)
            return True
        if (_size(p.shape) < _size(G.domain) and p.op not in CHEAP
                and not _varies_on_leading_axes(p.shape, G.domain)):
            times = _size(G.domain) // max(1, _size(p.shape))
            return self.decline(p, f"it would be recomputed {times}x (its result is broadcast "
                                   "along a leading axis)")
        return True

    def is_piece(self, G: Group, p: Node) -> bool:
        """Is ``p`` read only as a piece of the root concatenate, directly or through
        elementwise members of the piece's shape? The llvm kernel then runs one loop nest per
        piece (when the concatenated axis is not the outermost one of extent > 1), so each
        piece's values are computed once per element, not once per element of the whole.
        Checked numerically by the random-program checker's concatenates (testing/generate.py)."""
        root = G.root
        if root.op != "concatenate" or G.kind != "loop" or p.op in MOVES_INDEX:
            return False
        outer = next((k for k, d in enumerate(root.shape) if d > 1), None)
        if outer is None or root.attrs["axis"] <= outer:
            return False
        users = [u for u in self.users_of(p) if u in G.members]
        # read by one piece only (a value two pieces read would be computed in both nests)
        return len(users) == 1 and (users[0] is root or (
            users[0] in G.pieces and users[0].shape == p.shape))

    def take_reduction(self, G: Group, p: Node) -> bool:
        d, axes = p.inputs[0].shape, reduce_axes(p)
        if G.kind == "gemm":
            return self.decline(p, "a reduction does not fuse into a matmul epilogue")
        if G.kind == "reduce":
            if G.reduce != (d, axes):
                return self.decline(p, f"it reduces axes {list(axes)} of {list(d)}, the kernel "
                                       f"axes {list(G.reduce[1])} of {list(G.reduce[0])}")
            if not _trailing(d, axes):
                return self.decline(p, "two reductions in one kernel need the reduced axes last")
            return self.rows_aligned(G, p, G.reduce)
        # a loop group becoming a reduce group: every member must fit the rows
        red = (d, axes)
        full = [m for m in G.members if m.shape == d and m.op not in CHEAP]
        for m in G.members:
            if not (m.shape == d or G.row_class(m.shape, red) or G.row_reshape(m, red)
                    or (m in G.clones and (m.op in CHEAP or m.op == "constant"))):
                return self.decline(p, f"its consumer {m.op} has shape {list(m.shape)}, "
                                       f"neither rows of {list(d)} nor reduced")
        if full and not _trailing(d, axes):
            return self.decline(p, "a full-shape consumer of a reduction over leading axes "
                                   "needs the result before the reduction is done")
        if not self.rows_aligned(G, p, red):
            return False
        G.kind, G.reduce = "reduce", (d, axes)
        return True

    def rows_aligned(self, G: Group, p: Node, red: tuple) -> bool:
        """With ``p``, does every member of the reduce kernel read reduced values at the row
        being computed? The group's index maps (``row_maps``) grow with it: a new member adds
        the pairs reached through it only."""
        members = G.members | {p}
        if G.maps is not None and G.kind == "reduce":
            added: dict = {}
            _spread(G.maps, [(p, m) for m in G.maps.get(p, ())], members, *red, added)
            added.setdefault(p, set()).update(G.maps.get(p, ()))
            maps, new = added, G.maps
        else:
            maps = new = row_maps(members, G.root, *red)
        bad = G.root if maps is None else misread_in(maps, members, *red)
        if bad is None:
            if new is not maps:
                for v, ms in maps.items():
                    new.setdefault(v, set()).update(ms)
            G.maps = new
            return True
        self.misread = True
        return self.decline(p, f"the kernel would read the {bad.op} of another row than the one "
                               "it computes (through a transpose, gather, slice or trailing "
                               "broadcast of the reduced values)")

    def take_matmul(self, G: Group, p: Node) -> bool:
        if G.kind != "loop":
            return self.decline(p, f"a {G.kind} kernel cannot hold a matmul")
        split = None
        if p.shape != G.domain:
            split = self.split_reshape(G, p)
            if split is None:
                return self.decline(p, "the epilogue's shape differs from the matmul's")
        for m in G.members:
            if split is not None:
                if m is split:
                    continue
                bad = _splits_columns(m, G.domain, len(p.shape) - 1)
                if bad:
                    return self.decline(p, f"the epilogue's {m.op} {bad}")
            if m.op in MOVES_INDEX and _reads(m, p, G.members):
                # a GEMM tile knows its own elements only (a square matmul's transpose)
                return self.decline(p, f"the epilogue reads it through a {m.op}, at other "
                                       "positions than the matmul writes")
            if m in G.clones or m.op in CHEAP:
                continue
            if get_op(m.op).kind != "elementwise" or m.shape != G.domain:
                return self.decline(p, f"{m.op} after it is not an elementwise epilogue")
        # An operand the epilogue computes too is already a member: the GEMM can take it only
        # as a strided view of a buffer (a transpose of an input, not a slice or a constant).
        chains = [_member_cone(x, G.members) for x in p.inputs if x in G.members]
        for chain in chains:
            bad = next((v for v in chain if not self.is_view(v)), None)
            if bad is not None:
                return self.decline(p, f"its operand is also read by the epilogue, through a "
                                       f"{bad.op} the GEMM cannot read as a strided view")
        G.kind, G.matmul, G.split = "gemm", p, split
        G.operand_side.update(v for chain in chains for v in chain)
        return True

    def split_reshape(self, G: Group, p: Node) -> Node | None:
        """The member reshaping matmul ``p``'s output to the kernel's domain by splitting its
        last axis only (a conv's [N, O, H*W] -> [N, O, H, W]), when the backend's GEMM
        epilogue can index it so (gather_operands: llvm) and it is ``p``'s only user."""
        if not self.gather_operands:
            return None
        users = self.users_of(p)
        if len(users) != 1 or users[0] not in G.members or users[0].op != "reshape":
            return None
        r = users[0]
        lead = len(p.shape) - 1
        if (r.shape != G.domain or tuple(r.shape[:lead]) != tuple(p.shape[:lead])
                or math.prod(r.shape[lead:]) != p.shape[-1]):
            return None
        return r

    def take_window(self, G: Group, p: Node) -> bool:
        """A pooling gradient below an elementwise epilogue over its shape (non-overlapping
        windows write each element once: the epilogue runs as it is written)."""
        from lamina.ir.ops.pool import tiling

        if G.kind != "loop":
            return self.decline(p, f"a {G.kind} kernel cannot hold a pooling gradient")
        if not tiling(p.attrs):
            return self.decline(p, "its windows overlap: it accumulates in a kernel of its own")
        if p.shape != G.domain:
            return self.decline(p, "the epilogue's shape differs from the pooling gradient's")
        for m in G.members:
            if _reads(m, p, G.members) and (get_op(m.op).kind != "elementwise"
                                             or m.shape != G.domain):
                return self.decline(p, f"{m.op} after it is not an elementwise epilogue")
        G.kind = "window"
        return True

    def row_clonable(self, G: Group, p: Node) -> bool:
        """A row program recomputes a row-shaped producer that others use too (rather than
        reading it back from memory): softmax's max and exp(x - max) in both the forward and
        the backward kernel. Rows are memory-bound, so the recompute is cheaper."""
        if G.kind != "reduce" or not _trailing(*G.reduce) or category(p) not in ("map", "reduce"):
            return False
        if get_op(p.op).kind == "random" or p.op == "take":
            # not memory-bound: a draw is a Philox round per element, a gather a random read,
            # and cloning them down a residual stream recomputed every earlier layer's dropout
            # mask in each layer norm (a 4-layer GPT step: 227 ms, 102 ms without dropout)
            return False
        d, axes = G.reduce
        if category(p) == "reduce":
            return (p.inputs[0].shape, reduce_axes(p)) == (d, axes)
        if _full_leaves(p, 3) > 2:
            # a long chain: a residual stream x_l = x_{l-1} + f_l recomputed in each layer
            # norm re-adds every earlier layer's output (16 layers: 153 adds over the
            # kernels); stored, a row program reads it once. softmax's exp(x - max) reads one
            # full array: still recomputed
            return False
        return p.shape == d or G.row_class(p.shape)

    def static_index(self, G: Group, p: Node) -> bool:
        """A gather index known when compiling (iota arithmetic): every GEMM kernel reading
        through the gather takes its own copy, evaluated at compile time, never stored."""
        return (self.gather_operands and G.kind == "gemm"
                and any(u in G.index_side or (u.op == "take" and u.inputs[1] is p)
                        for u in self.users_of(p) if u in G.members)
                and static_value(p) is not None)

    def gemm_reads(self, G: Group, p: Node) -> bool:
        """Can the GEMM read each operand that ``p`` feeds (with ``p`` inside the kernel)
        with strides or offset tables (passes/gemm_operand.py)?"""
        members = G.members | {p}
        mm = G.matmul

        def is_base(v):
            return not (isinstance(v, Node) and v in members)

        for side in (0, 1):
            if p not in _member_cone(mm.inputs[side], members):
                continue
            o = operand_layout(mm, side, is_base, static_value, True)
            if o is None:
                return False
            if o.gathered and any(s == 0 and d > 1 for s, d in zip(o.batch, mm.shape[:-2])):
                return False  # gathered again for every matrix of the batch: store it once
        return True

    @staticmethod
    def is_view(p: Node) -> bool:
        """A view GEMM packing can read through strides (a reshape only of a buffer)."""
        if p.op not in VIEWS or (p.op == "reshape" and not _contiguous_reshape(p)):
            return False
        src = p.inputs[0]
        return not (isinstance(src, Node) and src.op == "constant" and is_splat(src))

    def users_of(self, p: Node) -> list[Node]:
        return self.users.get(p, [])

    # --- growing and building ---------------------------------------------------------------

    def grow(self, G: Group, needed: set[Node]) -> None:
        pending = True
        while pending:
            pending = False
            for m in list(G.members):
                for p in m.inputs:
                    if not isinstance(p, Node) or p in G.members:
                        continue
                    if p.op == "constant" and is_splat(p):
                        if G.kind == "gemm" and any(
                                (u is G.matmul or u in G.operand_side)
                                and u not in G.index_side
                                for u in self.users_of(p)):
                            continue  # a GEMM reads operands from memory: a literal then
                        if get_op(G.root.op).kind == "attention":
                            continue  # so does an attention kernel
                        G.members.add(p)
                        G.clones.add(p)
                        continue
                    users = self.users_of(p)
                    # NOTE: a user that is a clone is computed elsewhere too, so p would still
                    # be needed there: only users owned by this group let p in.
                    if p not in needed and all(u in G.members and u not in G.clones
                                               for u in users):
                        if self.absorbable(G, p):
                            G.members.add(p)
                            pending = True
                    elif (p.op in CHEAP or self.row_clonable(G, p) or self.static_index(G, p)
                          ) and self.absorbable(G, p):
                        G.members.add(p)
                        G.clones.add(p)
                        pending = True
        # A clone whose users are all owned by this group needs no copy elsewhere (unless
        # another group already asked for it); owning one may let the next go too.
        changed = True
        while changed:
            changed = False
            for c in list(G.clones):
                users = self.users_of(c)
                if c not in needed and all(u in G.members and u not in G.clones
                                           for u in users):
                    G.clones.discard(c)
                    changed = True
        boundary = {p for m in G.members for p in m.inputs
                    if isinstance(p, Node) and p not in G.members}
        for p in boundary:
            needed.add(p)
            if p.op == "constant":
                continue
            reason = self.reasons.get(p)
            if reason is None:
                outside = [u for u in self.users_of(p) if u not in G.members or u in G.clones]
                reason = (f"its result is also used by {len(outside)} op(s) in other kernels, "
                          "so it is computed once and stored")
            self.boundaries.append((p, G.root, reason))
        self.reasons.clear()

    def group_at(self, n: Node, needed: set[Node]) -> Group:
        """The group rooted at ``n``. When an index move (softmax(x).T) kept a reduction out,
        the values before the move are better stored whole by their own row program than split
        over kernels that recompute them: grow again, stopping at the moves."""
        before, reported = set(needed), len(self.boundaries)
        self.misread = False
        G = Group(n)
        self.grow(G, needed)
        if self.misread and any(m.op in MOVES_INDEX for m in G.members):
            needed.clear()
            needed.update(before)
            del self.boundaries[reported:]
            G = Group(n)
            G.cut_at_moves = True
            self.grow(G, needed)
        return G

    def run(self) -> Graph:
        g = self.g
        needed: set[Node] = {v for v in g.roots() if isinstance(v, Node)}
        groups: dict[Node, Group] = {}
        owned: set[Node] = set()  # members of some group (not clones)
        for n in reversed(g.nodes):
            if n not in needed or n in owned:
                continue
            if n.op == "constant" and not (is_splat(n) and n in self.filled):
                continue  # literals stay top-level (splats are cloned into kernels)
            if category(n) == "loop":  # loops (their bodies fused already) and their results
                needed.update(v for v in n.inputs if isinstance(v, Node))
                # a splat a loop reads is filled by a kernel, not written out as a literal
                # (a zero cotangent stacked over 500 steps would be megabytes of IR)
                self.filled.update(v for v in n.inputs if isinstance(v, Node) and
                                   v.op == "constant" and is_splat(v) and v.type.size > 64)
                self.kept.add(n)
                continue
            G = self.group_at(n, needed)
            groups[n] = G
            owned |= G.members - G.clones
        return self.build(groups)

    def build(self, groups: dict[Node, Group]) -> Graph:
        g = self.g
        b = Builder(g.name)
        b.inputs, b.state = list(g.inputs), list(g.state)
        env: dict[Value, Value] = {p: p for p in g.params}
        names: Counter = Counter()
        kinds: Counter = Counter()
        named: dict[Node, str] = {}  # group root -> kernel name
        for n in g.nodes:
            G = groups.get(n)
            if G is None:
                if n.op == "constant":  # literals (and splats still read at top level)
                    env[n] = b.emit("constant", (), n.attrs, loc=n.loc)
                elif category(n) == "loop" and n in self.kept:
                    env[n] = b.emit(n.op, [env[v] for v in n.inputs], n.attrs, loc=n.loc,
                                    region=n.region)
                continue
            region, operands = _region(G, g)
            name = named[n] = kernel_name(G, names)
            kinds[G.kind] += 1
            env[n] = b.emit("kernel", [env[v] for v in operands], {"name": name}, loc=n.loc,
                            region=region)
            remark(f"@{name}: {describe(G)}")
        # why each kernel's result is stored rather than computed where it is used
        for producer, consumer, reason in self.boundaries:
            who = named.get(producer)
            source = f"@{who}" if who else f"{producer.op}"
            remark(f"boundary: {source} -> @{named[consumer]}: {producer.op} not fused: "
                   f"{reason}")
        remark("kernels: " + ", ".join(f"{k} {kind}" for kind, k in sorted(kinds.items())))
        out = g.replace(nodes=b.nodes, outputs=[env[v] for v in g.outputs],
                        updates={k: env[v] for k, v in g.updates.items()})
        from lamina.passes.dce import eliminate_dead_code

        return eliminate_dead_code(out)


# --- the row a member of a reduce kernel is evaluated at ---------------------------------------
#
# A reduce kernel runs over the reduction's input shape ``d``: per row (the kept axes fixed) it
# sweeps the reduced axes, then evaluates its result. Every member is evaluated at an index
# derived from the root's through the ops in between. An index map says, per axis of a member,
# which axis of ``d`` that index equals: an int, ``None`` (a size-1 axis: always 0) or OTHER (a
# shifted, gathered or flattened index). A reduction's value is the current row's only, so it
# must be read with its own canonical map; everything else reads memory and may be read anywhere.

OTHER = -1


def _norm(m, shape) -> tuple:
    return tuple(None if s == 1 else a for a, s in zip(m, shape))


def row_map(shape, d, axes) -> tuple | None:
    """The index map of a per-row value of ``shape`` (full, keepdims or reduced) evaluated at
    its own row, or None for another shape."""
    shape, d = tuple(shape), tuple(d)
    if shape == d:
        return _norm(range(len(d)), shape)
    if shape == keep_shape(d, axes):
        return _norm([None if k in axes else k for k in range(len(d))], shape)
    if shape == reduced_shape(d, axes, False):
        return _norm([k for k in range(len(d)) if k not in axes], shape)
    return None


def _root_maps(root: Node, d, axes) -> list[tuple[Value, tuple]] | None:
    m = row_map(root.shape, d, axes)
    if m is not None:
        return [(root, m)]
    if root.op == "reshape" and _size(root.shape) == _size(reduced_shape(d, axes, False)):
        # stored through the flat index of the reduced shape (kernels._row_index)
        x = root.inputs[0]
        mx = row_map(x.shape, d, axes)
        return [(x, mx)] if mx is not None else None
    return None


def _input_maps(n: Node, m: tuple) -> list[tuple]:
    """The index maps ``n``'s inputs are evaluated at when ``n`` is evaluated at map ``m`` (as
    the code generators' index transformations do)."""
    op, a = n.op, n.attrs

    def other(v):
        return (OTHER,) * len(v.shape)

    if op == "broadcast" or get_op(op).kind == "elementwise":
        out = []
        for x in n.inputs:  # numpy broadcasting: trailing axes line up
            lead = len(n.shape) - len(x.shape)
            out.append(tuple(None if s == 1 else m[lead + j] for j, s in enumerate(x.shape)))
        return out
    if op == "transpose":
        src = [OTHER] * len(a["perm"])
        for i, k in enumerate(a["perm"]):
            src[k] = m[i]
        return [tuple(src)]
    if op == "reshape":
        x = n.inputs[0]
        if [s for s in x.shape if s != 1] == [s for s in n.shape if s != 1]:
            kept = iter(k for k, s in zip(m, n.shape) if s != 1)
            return [tuple(None if s == 1 else next(kept) for s in x.shape)]
        return [other(x)]
    if op == "slice":
        return [tuple(k if start == 0 and step == 1 else OTHER
                      for k, start, step in zip(m, a["start"], a["step"]))]
    if op == "pad":
        return [tuple(k if lo == 0 and inner == 0 else OTHER
                      for k, lo, inner in zip(m, a["lo"], a["interior"]))] + [
            other(x) for x in n.inputs[1:]]
    if op == "concatenate":  # later pieces are read at a shifted position along the axis
        ax = a["axis"]
        return [m if i == 0 else m[:ax] + (OTHER,) + m[ax + 1:] for i in range(len(n.inputs))]
    if op == "take":
        x, idx = n.inputs
        ax, k = a["axis"], len(idx.shape)
        return [m[:ax] + (OTHER,) + m[ax + k:], m[ax:ax + k]]
    return [other(x) for x in n.inputs]


def _spread(maps: dict, todo: list, members, d, axes, added: dict) -> None:
    """Follow the (value, map) pairs in ``todo`` (members evaluated there) to their inputs,
    recording the pairs not in ``maps`` into ``added`` (which may be ``maps`` itself)."""
    full = tuple(range(len(d)))
    while todo:
        v, m = todo.pop()
        if not isinstance(v, Node) or v not in members:
            continue
        if v.op in REDUCTIONS:  # its input is swept over the row: the full index
            reads = [(v.inputs[0], full)]
        else:
            reads = zip(v.inputs, _input_maps(v, m))
        for x, mx in reads:
            mx = _norm(mx, x.shape)
            if mx in maps.get(x, ()) or mx in added.get(x, ()):
                continue
            added.setdefault(x, set()).add(mx)
            todo.append((x, mx))


def row_maps(members, root: Node, d, axes) -> dict[Value, set[tuple]] | None:
    """Every index map each member (and region input) of a reduce kernel over ``d`` (reducing
    ``axes``) is evaluated at, following the root's; None if the root is not per-row."""
    start = _root_maps(root, d, axes)
    if start is None:
        return None
    maps: dict[Value, set[tuple]] = {}
    for v, m in start:
        maps.setdefault(v, set()).add(_norm(m, v.shape))
    _spread(maps, [(v, m) for v, ms in maps.items() for m in ms], members, d, axes, maps)
    return maps


def misread_in(maps: dict, members, d, axes) -> Node | None:
    """A member reduction ``maps`` has read at another row than the one computed (its value
    there is not known yet, or no longer), else None."""
    for v, ms in maps.items():
        if isinstance(v, Node) and v.op in REDUCTIONS and v in members:
            want = row_map(v.shape, d, axes)
            if any(m != want for m in ms):
                return v
    return None


def _reads(m: Node, p: Node, members: set[Node]) -> bool:
    """Does ``m`` read ``p``, directly or through other ``members``?"""
    todo, seen = list(m.inputs), set()
    while todo:
        v = todo.pop()
        if v is p:
            return True
        if isinstance(v, Node) and v in members and v not in seen:
            seen.add(v)
            todo.extend(v.inputs)
    return False


def _splits_columns(m: Node, domain, lead: int) -> str | None:
    """Why ``m`` cannot be evaluated at the index ``[..., row, 0, ..., column, 0, ...]`` (the
    column on the last split axis longer than 1) that a GEMM epilogue with a split reshape
    uses for the domain (its axes from ``lead`` on are the matmul's columns, split), or None. A value spanning the split axes whole is right there
    if it computes row-major linear positions (elementwise ops, reshapes, casts, broadcasts,
    buffers); one constant across them never sees the column index."""
    n = len(domain) - lead
    full = list(domain[lead:])

    def split_dims(shape):
        tail = list(shape[max(0, len(shape) - n):])
        return [1] * (n - len(tail)) + tail

    def kind(shape):
        d = split_dims(shape)
        return "ones" if all(x == 1 for x in d) else "full" if d == full else "part"

    k = kind(m.shape)
    if k == "ones":
        return None
    if k == "part":
        return "spans part of the split axes"
    if m.op == "constant" and is_splat(m):
        return None
    if not (m.op in ("reshape", "cast", "broadcast") or get_op(m.op).kind == "elementwise"):
        return f"reads the split axes of {list(domain)} by position"
    if m.op != "reshape" and any(kind(x.shape) == "part" for x in m.inputs):
        return "broadcasts along part of the split axes"
    return None


def _member_cone(v: Node, members: set[Node]) -> list[Node]:
    """``v`` and the members it is computed from, through members only."""
    out, todo = [], [v]
    while todo:
        n = todo.pop()
        if isinstance(n, Node) and n in members and n not in out:
            out.append(n)
            todo.extend(n.inputs)
    return out


def _contiguous_reshape(n: Node) -> bool:
    """A reshape GEMM packing can read as a strided view of its (contiguous) input."""
    src = n.inputs[0]
    return not isinstance(src, Node) or src.op not in VIEWS


def _region(G: Group, g: Graph) -> tuple[Graph, list[Value]]:
    """The kernel body: members in graph order over parameters for everything else."""
    order = [m for m in g.nodes if m in G.members]
    operands: list[Value] = []
    rb = Builder("region")
    env: dict[Value, Value] = {}
    used_names: set[str] = set()
    for m in order:
        for v in m.inputs:
            if v in env or v in G.members:
                continue
            name = v.name if isinstance(v, Param) else f"in{len(operands)}"
            while name in used_names:
                name += "_"
            used_names.add(name)
            env[v] = rb.add_input(name, v.type)
            operands.append(v)
        env[m] = rb.emit(m.op, [env[v] for v in m.inputs], m.attrs, loc=m.loc)
    return rb.build([env[G.root]]), operands


def kernel_name(G: Group, used: Counter) -> str:
    """``fused_<ops>`` after the ops it holds (as Inductor names kernels), made unique."""
    seen: list[str] = []
    for m in _in_order(G):
        if m.op != "constant" and m.op not in seen and m not in G.index_side:
            seen.append(m.op)
    base = "fused_" + "_".join(seen[:5]) + ("_etc" if len(seen) > 5 else "")
    used[base] += 1
    return base if used[base] == 1 else f"{base}_{used[base] - 1}"


def _in_order(G: Group) -> list[Node]:
    """Members from producers to the root (a topological order of the group)."""
    out, seen = [], set()

    def visit(n):
        if n in seen or n not in G.members:
            return
        seen.add(n)
        for v in n.inputs:
            if isinstance(v, Node):
                visit(v)
        out.append(n)

    visit(G.root)
    return out


def describe(G: Group) -> str:
    ops = [m.op for m in _in_order(G) if m.op != "constant"]
    if G.kind == "gemm":
        order = [m for m in _in_order(G) if m.op != "constant"]
        side = [m.op for m in order if m in G.operand_side and m not in G.index_side]
        index = [m.op for m in order if m in G.index_side]
        epi = [m.op for m in order if m not in G.operand_side and m is not G.matmul]
        text = "gemm"
        if side and all(o in VIEWS for o in side):
            text += f" reading {', '.join(side)} operands as strided views"
        elif side:
            text += (f" reading operands through {', '.join(side)} (offset tables: no copy)")
        if index:
            text += f"; its gather index ({len(index)} ops on iotas) is evaluated when compiling"
        return text + (f", epilogue {', '.join(epi)}" if epi else "")
    if G.kind == "reduce":
        d, axes = G.reduce
        style = "row program" if _trailing(d, axes) else "accumulation"
        return f"reduce over axes {list(axes)} of {list(d)} ({style}): {', '.join(ops)}"
    return f"{G.kind} over {list(G.domain)}: {', '.join(ops)}"


def fuse_kernels(g: Graph) -> Graph:
    """Group every op of ``g`` into kernels (see the module docstring)."""
    if any(n.op == "kernel" for n in g.nodes):
        return g  # already fused
    return Fuser(g).run()


def fuse_kernels_gather(g: Graph) -> Graph:
    """:func:`fuse_kernels` for a backend whose GEMM reads operands through offset tables
    (llvm): a conv's im2col gather joins the GEMM as its B operand instead of a tensor."""
    if any(n.op == "kernel" for n in g.nodes):
        return g
    return Fuser(g, gather_operands=True).run()


fuse_kernels.pass_name = "fused"
fuse_kernels_gather.pass_name = "fused"
fuse = fuse_kernels
