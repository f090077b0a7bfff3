"""Ops without tensor inputs, and random numbers.

``constant`` holds its value in the ``value`` attribute: a scalar (a splat over the result
shape) or nested lists. ``random_uniform``/``random_normal`` are counter-based (Philox-4x32-10):
element ``i`` of a draw depends only on the key, the draw's ``stream`` and ``i``, so results are
reproducible, identical on every backend and free of hidden state.
"""

from __future__ import annotations

import numpy as np

from lamina.ir import dtypes as dt
from lamina.ir.errors import DTypeError, LaminaError, ShapeError
from lamina.ir.graph import Node
from lamina.ir.ops.domain import Domain, Operand, dtype_attr
from lamina.ir.ops.registry import ZERO_GRAD, defop
from lamina.ir.types import TensorType, normalize_axis


def _typed_canon(types, attrs):
    attrs["dtype"] = dt.dtype(attrs["dtype"])
    attrs["shape"] = tuple(int(d) for d in attrs.get("shape", ()))
    return attrs


def _typed_infer(types, attrs):
    return TensorType(attrs["shape"], attrs["dtype"])


# --- constant ---------------------------------------------------------------------------------


def canonical_scalar(v, dtype: dt.DType):
    """A constant's element as a plain Python value that prints short and parses back exactly
    (``0.1`` for float32, not ``0.10000000149011612``)."""
    if dtype.is_bool:
        return bool(v)
    if dtype.is_int:
        if isinstance(v, float) and not float(v).is_integer():
            raise DTypeError(f"constant {v!r} is not a valid {dtype.name}")
        return int(v)
    f = float(v)
    if dtype is dt.float32 or dtype is dt.float16:
        return float(str(dtype.np.type(f)))  # the shortest decimal of that precision
    return f


def _constant_canon(types, attrs):
    attrs = _typed_canon(types, attrs)
    d, shape, value = attrs["dtype"], attrs["shape"], attrs["value"]
    if isinstance(value, (list, tuple, np.ndarray)):
        arr = np.asarray(value)
        if arr.shape != shape:
            raise ShapeError(f"constant: value of shape {list(arr.shape)} for type "
                             f"{TensorType(shape, d)}")
        if arr.ndim == 0:
            value = canonical_scalar(arr.item(), d)
        elif arr.size == 0:  # nothing to hold: a splat keeps the shape in the type
            value = canonical_scalar(0, d)
        else:
            value = _nested(arr, d)
    else:
        value = canonical_scalar(value, d)
    attrs["value"] = value
    return attrs


def _nested(arr: np.ndarray, d: dt.DType):
    if arr.ndim == 1:
        return tuple(canonical_scalar(v, d) for v in arr.tolist())
    return tuple(_nested(a, d) for a in arr)


def constant_array(value, dtype: dt.DType, shape) -> np.ndarray:
    """The numpy array a constant node stands for."""
    if isinstance(value, tuple):
        return np.array(value, dtype=dtype.np).reshape(shape)
    return np.full(shape, value, dtype=dtype.np)


def is_splat(node, value=None) -> bool:
    """True when ``node`` is a constant with one repeated value (equal to ``value`` if given)."""
    if not isinstance(node, Node) or node.op != "constant":
        return False
    v = node.attrs["value"]
    if isinstance(v, tuple):
        return False
    return value is None or v == value


def _constant_domain(g, t):
    """A splat (one scalar) or a literal of the whole shape."""
    d = dtype_attr()(g, t)["dtype"]
    shape, rng = g.shape(), g.rng
    if d.is_bool:
        data = rng.random(shape) < 0.5
    elif d.is_int:
        data = rng.integers(-3, 4, shape)
    else:
        data = rng.uniform(-2, 2, shape).round(2)
    splat = rng.random() < 0.5 or data.size == 0
    value = data.reshape(-1)[0].item() if splat and data.size else 0 if splat else data.tolist()
    return {"value": value, "dtype": d, "shape": shape}


defop("constant", arity=0, kind="source", attrs=("value", "dtype", "shape"),
      typed_attrs=("dtype", "shape"), canon=_constant_canon, infer=_typed_infer,
      ref=lambda value, dtype, shape: constant_array(value, dtype, shape), vjp=ZERO_GRAD,
      domain=Domain(None, attrs=_constant_domain),
      doc="a literal tensor; a scalar value fills the whole shape")


# --- iota -------------------------------------------------------------------------------------


def _iota_canon(types, attrs):
    attrs = _typed_canon(types, attrs)
    attrs["axis"] = normalize_axis(int(attrs["axis"]), len(attrs["shape"]))
    return attrs


def _iota_ref(axis, dtype, shape):
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return np.broadcast_to(np.arange(shape[axis], dtype=dtype.np).reshape(view), shape)


def _iota_domain(g, t):
    shape = g.shape(rank=int(g.rng.integers(1, 4)))
    return {"axis": int(g.rng.integers(len(shape))), "shape": shape,
            **dtype_attr("fi")(g, t)}


defop("iota", arity=0, kind="source", attrs=("axis", "dtype", "shape"),
      typed_attrs=("dtype", "shape"), canon=_iota_canon, infer=_typed_infer, ref=_iota_ref,
      vjp=ZERO_GRAD, domain=Domain(None, attrs=_iota_domain), doc="0, 1, 2, ... along one axis, repeated along the others")


# --- random: Philox-4x32-10 -------------------------------------------------------------------

PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85


def _mulhilo(a: int, b: np.ndarray):
    prod = np.uint64(a) * b.astype(np.uint64)
    return (prod >> np.uint64(32)).astype(np.uint32), prod.astype(np.uint32)


def philox4x32(c0, c1, c2, c3, k0: int, k1: int, rounds: int = 10):
    """The Philox-4x32 bijection (Salmon et al., SC'11) on arrays of uint32 counters."""
    c0, c1, c2, c3 = (np.asarray(c, dtype=np.uint32) for c in (c0, c1, c2, c3))
    k0, k1 = np.uint32(k0), np.uint32(k1)
    with np.errstate(over="ignore"):
        for _ in range(rounds):
            hi0, lo0 = _mulhilo(PHILOX_M0, c0)
            hi1, lo1 = _mulhilo(PHILOX_M1, c2)
            c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
            k0 = np.uint32((int(k0) + PHILOX_W0) & 0xFFFFFFFF)
            k1 = np.uint32((int(k1) + PHILOX_W1) & 0xFFFFFFFF)
    return c0, c1, c2, c3


def random_words(key: int, stream: int, shape):
    """Four uint32 words per element: counter (index lo, index hi, stream, 0), key = the seed."""
    n = int(np.prod(shape))
    idx = np.arange(n, dtype=np.uint64)
    key = int(key) & 0xFFFFFFFFFFFFFFFF
    words = philox4x32(idx & np.uint64(0xFFFFFFFF), idx >> np.uint64(32),
                       np.full(n, stream & 0xFFFFFFFF, np.uint32), np.zeros(n, np.uint32),
                       key & 0xFFFFFFFF, key >> 32)
    return [w.reshape(shape) for w in words]


def _unit(w: np.ndarray) -> np.ndarray:
    """The top 24 bits of a word as a float32 in [0, 1)."""
    return (w >> np.uint32(8)).astype(np.float32) * np.float32(2.0 ** -24)


def _unit53(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """53 bits from two words (27 from ``hi``, 26 from ``lo``) as a float64 in [0, 1)."""
    a = (hi >> np.uint32(5)).astype(np.float64)
    b = (lo >> np.uint32(6)).astype(np.float64)
    return (a * 2.0 ** 26 + b) * 2.0 ** -53


def _random_canon(types, attrs):
    attrs = _typed_canon(types, attrs)
    stream = int(attrs.get("stream", 0))
    if not 0 <= stream < 2 ** 32:
        raise LaminaError(f"random: stream must be in [0, 2**32), got {stream}")
    attrs["stream"] = stream
    return attrs


def _random_infer(types, attrs):
    key = types[0]
    if key.shape != () or not key.dtype.is_int:
        raise DTypeError(f"random: the key must be an integer scalar, got {key}")
    if not attrs["dtype"].is_float:
        raise DTypeError(f"random: the result must be a float dtype, got {attrs['dtype']}")
    return _typed_infer(types, attrs)


def _uniform_ref(key, stream, dtype, shape):
    w = random_words(int(key), stream, shape)
    if dtype.bits == 64:
        return _unit53(w[0], w[1])
    return _unit(w[0])  # float16/bfloat16 round this float32


def _normal_ref(key, stream, dtype, shape):
    # Box-Muller on the words of one counter; u1 in (0, 1] keeps the log finite.
    w = random_words(int(key), stream, shape)
    if dtype.bits == 64:
        u1, u2 = 1.0 - _unit53(w[0], w[1]), _unit53(w[2], w[3])
        return np.sqrt(-2.0 * np.log(u1)) * np.cos(2 * np.pi * u2)
    u1 = np.float32(1.0) - _unit(w[0])
    u2 = _unit(w[1])
    r = np.sqrt(np.float32(-2.0) * np.log(u1))
    return r * np.cos(np.float32(2 * np.pi) * u2)


def _random_domain(g, t):
    return {"stream": int(g.rng.integers(0, 4)), "shape": g.shape(), **dtype_attr("f")(g, t)}


# The key: an integer scalar. The float32 draws go through the backends' log/cos/sqrt.
_RANDOM = Domain(Operand("i", lo=0, hi=2 ** 31 - 1, shape=()), attrs=_random_domain,
                 ulps=16)

defop("random_uniform", arity=1, kind="random", attrs=("stream", "dtype", "shape"),
      typed_attrs=("dtype", "shape"), canon=_random_canon, infer=_random_infer,
      ref=_uniform_ref, vjp=ZERO_GRAD, domain=_RANDOM,
      doc="uniform in [0, 1): 24 random bits (53 for float64) per element, from "
          "Philox-4x32-10 of (key, stream, index)")
defop("random_normal", arity=1, kind="random", attrs=("stream", "dtype", "shape"),
      typed_attrs=("dtype", "shape"), canon=_random_canon, infer=_random_infer,
      ref=_normal_ref, vjp=ZERO_GRAD, domain=_RANDOM,
      doc="standard normal (Box-Muller on two Philox words of key, stream, index)")
