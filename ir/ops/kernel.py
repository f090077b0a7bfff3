"""``kernel``: a fused region. Its body is a Graph over the node's operands (isolated: it reads
nothing else) with one output, the node's value. ``passes.fuse`` makes kernels; backends lower
each one as a unit; the interpreter runs the body."""

from __future__ import annotations

from lamina.ir.errors import LaminaError, VerifyError
from lamina.ir.ops.domain import Domain
from lamina.ir.ops.registry import defop


def _kernel_canon(types, attrs):
    name = attrs.get("name")
    if not isinstance(name, str) or not name:
        raise LaminaError(f"kernel: needs a name, got {name!r}")
    attrs["name"] = name
    return attrs


def _kernel_infer(types, attrs, region):
    if region is None:
        raise VerifyError(f"kernel @{attrs['name']} has no region")
    if len(region.inputs) != len(types):
        raise VerifyError(f"kernel @{attrs['name']}: {len(types)} operands for a region with "
                          f"{len(region.inputs)} parameters")
    for i, (t, p) in enumerate(zip(types, region.inputs)):
        if t != p.type:
            raise VerifyError(f"kernel @{attrs['name']}: operand {i} is {t}, the region's "
                              f"%{p.name} is {p.type}")
    if len(region.outputs) != 1 or region.state or region.updates:
        raise VerifyError(f"kernel @{attrs['name']}: a region yields exactly one value and has "
                          "no state")
    return region.outputs[0].type


def _kernel_ref(*args, name, region=None):
    raise LaminaError("kernel nodes are run by interpreting their region")


defop("kernel", arity=None, kind="kernel", attrs=("name",), canon=_kernel_canon,
      infer=_kernel_infer, ref=_kernel_ref, region=True, domain=Domain(via="fusion"),
      doc="a fused region: its body computes the value from the operands")
