"""The default pass pipeline, as a named list (the order is the design)."""

from __future__ import annotations

from lamina.passes.autodiff import differentiate
from lamina.passes.cse import eliminate_common_subexpressions
from lamina.passes.dce import eliminate_dead_code
from lamina.passes.decompose import decompose
from lamina.passes.fold import fold_constants
from lamina.passes.licm import hoist_loop_invariants
from lamina.passes.loop_trim import trim_scans
from lamina.passes.simplify import simplify

# composites -> primitives; grad nodes -> backward; then clean up what autodiff produced (its
# scans' unread outputs and operands too); then loop-invariant work out of loop bodies.
DEFAULT = [
    decompose,
    differentiate,
    simplify,
    fold_constants,
    eliminate_common_subexpressions,
    trim_scans,
    simplify,
    eliminate_dead_code,
    hoist_loop_invariants,
]
