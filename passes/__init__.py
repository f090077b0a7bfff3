"""Graph -> Graph passes and the manager that runs them."""

from lamina.passes.autodiff import differentiate
from lamina.passes.cse import eliminate_common_subexpressions
from lamina.passes.dce import eliminate_dead_code
from lamina.passes.decompose import decompose
from lamina.passes.fold import fold_constants
from lamina.passes.manager import PassManager, Stage, remark
from lamina.passes.pipeline import DEFAULT
from lamina.passes.simplify import simplify, simplify_rules

__all__ = ["DEFAULT", "PassManager", "Stage", "decompose", "differentiate",
           "eliminate_common_subexpressions", "eliminate_dead_code", "fold_constants", "remark",
           "simplify", "simplify_rules"]
