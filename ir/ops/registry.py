"""The op registry: every op is declared once, with all of its semantic facts.

An ``OpDef`` holds the op's type rule (``infer``), its reference semantics in numpy (``ref``,
the oracle for every backend), its reverse-mode rule (``vjp``) or a decomposition into other ops
(``decompose``), its attributes and per-backend lowering data. Passes and backends look ops up
here by name; nothing else in lamina hard-codes an op's meaning.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from lamina.ir.ops.domain import Domain
from lamina.ir.types import TensorType

# Kinds group ops for passes and backends:
#   elementwise  same-shape map over broadcast inputs (fusible)
#   reduce       reduces some axes of one input
#   shape        moves or selects data without arithmetic (reshape, slice, ...)
#   contract     matmul and (later) conv
#   scan         prefix results along one axis (cumsum): a kernel of its own, with producers
#   window       pooling over sliding windows and its gradients (ir/ops/pool.py): a backend
#                computes them in loop kernels or expands them (``decompose``) first
#   source       no tensor inputs (constant, iota)
#   random       counter-based random numbers (pure: same key, same numbers)
#   composite    defined by ``decompose`` into other ops
#   special      handled by a pass (grad)
#   kernel       a fused region (made by passes.fuse), lowered as one unit by a backend
#   attention    fused attention and its gradient: one flash-style kernel each where a backend
#                has one, else expanded by their ``decompose`` (passes/expand.py)
#   loop         scan, fori_loop, while_loop (a body region run once per step; their value is
#                a tuple) and ``get``, which reads one part of it (ir/ops/loop.py)
KINDS = ("elementwise", "reduce", "shape", "contract", "source", "random", "composite", "special",
         "kernel", "scan", "window", "attention", "loop")

# The value of ``vjp`` for ops whose result is discrete (comparisons, argmax, iota): no
# cotangent flows through them, so the gradient with respect to their inputs is zero.
ZERO_GRAD = "zero"


@dataclass(eq=False)
class OpDef:
    """All facts about one op. Create with :func:`defop`.

    infer(types, attrs) -> TensorType
        The type rule. ``types`` are the input types; raise ShapeError/DTypeError on bad input.
    ref(*arrays, **attrs) -> ndarray
        Reference semantics in numpy. The interpreter casts the result to the inferred dtype.
    vjp(g, out, *inputs, **attrs) -> tuple
        Reverse-mode rule over builder ``Var``s: the cotangent of each input (``None`` where an
        input has none). A cotangent may have the output's broadcast shape; autodiff sums it
        back to the input's shape. ``ZERO_GRAD`` marks ops with discrete outputs.
    decompose(*inputs, **attrs) -> Var
        For composites: the same computation in simpler ops (passes/decompose expands it).
    canon(types, attrs) -> attrs
        Validates and normalizes attributes (negative axes, defaults), idempotently.
    domain: Domain
        The inputs the op is valid on, from which the random-program checker builds programs
        (see ``ir/ops/domain.py``); every op has one.
    """

    name: str
    arity: int | None  # None: variadic (one or more inputs)
    kind: str
    infer: Callable[[list[TensorType], dict], TensorType]
    ref: Callable | None = None
    vjp: Callable | str | None = None
    decompose: Callable | None = None
    canon: Callable[[list[TensorType], dict], dict] | None = None
    attrs: tuple[str, ...] = ()
    promote: tuple[int, ...] | str = ()  # inputs brought to one dtype by Builder.call ("all")
    float_only: bool = False  # Builder.call turns integer operands into the default float
    typed_attrs: tuple[str, ...] = ()  # attributes the result type shows (not printed twice)
    commutative: bool = False  # op(x, y) == op(y, x): CSE merges both orders
    region: bool = False  # the node holds a region; infer(types, attrs, region) types it
    lower: dict = field(default_factory=dict)
    domain: Domain | None = None
    doc: str = ""

    @property
    def differentiable(self) -> bool:
        return self.vjp is not None or self.decompose is not None

    def normalize_attrs(self, types: list[TensorType], attrs: dict) -> dict:
        """Check that ``attrs`` names exactly this op's attributes, then normalize them."""
        from lamina.ir.errors import LaminaError

        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise LaminaError(f"{self.name}: unknown attribute(s) {sorted(unknown)}; "
                              f"it takes {list(self.attrs) or 'none'}")
        try:
            out = self.canon(types, dict(attrs)) if self.canon else dict(attrs)
        except (TypeError, ValueError, KeyError) as e:  # e.g. shape=6 where a list is due
            raise LaminaError(f"{self.name}: bad attribute value ({type(e).__name__}: {e}); "
                              f"got {attrs}") from None
        missing = set(self.attrs) - set(out)
        if missing:
            raise LaminaError(f"{self.name}: missing attribute(s) {sorted(missing)}")
        return {k: out[k] for k in self.attrs}  # fixed order: the printer relies on it

    def __repr__(self) -> str:
        return f"<op {self.name}>"


REGISTRY: dict[str, OpDef] = {}


def defop(name: str, *, arity: int | None, kind: str, infer, **facts) -> OpDef:
    """Declare an op. Declaring the same name twice is an error."""
    if name in REGISTRY:
        raise ValueError(f"op {name!r} is declared twice")
    if kind not in KINDS:
        raise ValueError(f"op {name!r}: unknown kind {kind!r}")
    op = OpDef(name=name, arity=arity, kind=kind, infer=infer, **facts)
    REGISTRY[name] = op
    return op


def get(name: str) -> OpDef:
    """The declaration of ``name``; a clear error for an unknown op."""
    try:
        return REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, REGISTRY, n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        from lamina.ir.errors import LaminaError

        raise LaminaError(f"unknown op {name!r}{hint}") from None


def all_ops() -> list[OpDef]:
    return list(REGISTRY.values())
