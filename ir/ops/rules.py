"""Shared type rules for op declarations (``infer=`` functions) and small helpers for gradient
rules. Each rule takes the input types and the normalized attributes."""

from __future__ import annotations

from lamina.ir import dtypes as dt
from lamina.ir.errors import DTypeError
from lamina.ir.types import TensorType, broadcast_shapes


def _kinds(name: str, t: TensorType, allowed: str):
    if t.dtype.kind not in allowed:
        words = {"f": "float", "i": "integer", "b": "bool"}
        want = " or ".join(words[k] for k in allowed)
        raise DTypeError(f"{name} needs {want} input(s), got {t}")


def same_dtype(op: str, types: list[TensorType]) -> dt.DType:
    d = types[0].dtype
    for t in types[1:]:
        if t.dtype is not d:
            listed = ", ".join(map(str, types))
            raise DTypeError(f"{op}: operand dtypes differ ({listed}); cast one with .astype()")
    return d


def broadcast(op: str, types: list[TensorType]) -> tuple[int, ...]:
    from lamina.ir.errors import ShapeError

    try:
        return broadcast_shapes(*(t.shape for t in types))
    except ShapeError as e:
        raise ShapeError(f"{op}: {e.message}") from None


def binary(op: str, allowed: str = "fi", result: dt.DType | None = None):
    """numpy broadcasting of two operands of one dtype; ``result`` overrides the dtype."""

    def infer(types, attrs):
        d = same_dtype(op, types)
        for t in types:
            _kinds(op, t, allowed)
        return TensorType(broadcast(op, types), result or d)

    return infer


def unary(op: str, allowed: str = "fi"):
    """Same type as the input; dtype kinds limited to ``allowed`` (f float, i int, b bool)."""

    def infer(types, attrs):
        _kinds(op, types[0], allowed)
        return types[0]

    return infer
