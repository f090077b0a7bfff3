"""The op declarations. Importing this package registers every op in ``registry.REGISTRY``."""

from lamina.ir.ops import (  # noqa: F401
    attention,
    conv,
    elementwise,
    kernel,
    linalg,
    loop,
    nn,
    pool,
    reduce,
    scan,
    shape,
    source,
    special,
)
from lamina.ir.ops.registry import REGISTRY, ZERO_GRAD, OpDef, all_ops, defop, get

__all__ = ["REGISTRY", "ZERO_GRAD", "OpDef", "all_ops", "defop", "get"]
