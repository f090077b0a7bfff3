"""``grad``: a gradient request recorded by ``lm.grad`` and ``opt.minimize``, replaced by the
backward computation when ``passes.autodiff`` runs. No backend ever sees it."""

from __future__ import annotations

from lamina.ir.errors import GradError
from lamina.ir.ops.domain import Domain
from lamina.ir.ops.registry import defop


def _grad_infer(types, attrs):
    loss, wrt = types
    if loss.shape != ():
        raise GradError(f"grad needs a scalar loss, got {loss}; reduce it first (e.g. .sum())")
    if not loss.dtype.is_float:
        raise GradError(f"grad needs a float loss, got {loss}")
    if not wrt.dtype.is_float:
        raise GradError(f"cannot differentiate with respect to a {wrt.dtype.name} value "
                        f"({wrt}): only float values have gradients")
    return wrt


def _grad_ref(loss, wrt):
    raise GradError("grad nodes have no reference semantics: run passes.autodiff first")


defop("grad", arity=2, kind="special", infer=_grad_infer, ref=_grad_ref,
      domain=Domain(via="lm.grad"),
      doc="d loss / d wrt (expanded by the autodiff pass)")
