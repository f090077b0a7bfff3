"""Random numbers: ``lm.random.uniform/normal`` inside traced functions, and the host generator
that initializes parameters.

Draws are counter-based (``random_uniform`` ops, Philox): reproducible and the same on every
backend. Without an explicit ``key``, a draw uses lamina's global key, a piece of state that
each call of a compiled function advances by one, so every step sees fresh numbers.
"""

from __future__ import annotations

import numpy as np

from lamina.frontend.ops import run
from lamina.frontend.trace import current
from lamina.ir import dtypes as dt
from lamina.ir.variable import Variable

_KEY = Variable(np.int64(0), name="rng.key")
_host = np.random.default_rng(0)


def seed(n: int) -> None:
    """Reseed everything random in lamina: parameter initialization and the global key.

    >>> import lamina as lm
    >>> lm.random.seed(0)
    """
    global _host
    _host = np.random.default_rng(n)
    _KEY.assign(np.int64(n))


def host_rng() -> np.random.Generator:
    """The generator parameter initializers draw from (seeded by :func:`seed`)."""
    return _host


def _advance_key(ctx):
    ctx.assign(_KEY, ctx.read(_KEY) + 1)


def _draw(op: str, shape, key, dtype):
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    d = dt.dtype(dtype)
    ctx = current()
    if key is None:
        if ctx is None:
            key = int(_KEY.host_value())
            _KEY.assign(key + 1)
        else:
            if _advance_key not in ctx.finalizers:
                ctx.finalizers.append(_advance_key)
            key = ctx.rng_key(_KEY)
    stream = ctx.next_stream() if ctx is not None else 0
    if isinstance(key, (int, np.integer)):
        key = np.asarray(key, dtype=np.int64)

    def f(b, k):
        return b.var(b.emit(op, (k.value,), {"stream": stream, "dtype": d, "shape": shape}))

    return run(f, key)


def uniform(shape, key=None, dtype=dt.float32):
    """Uniform numbers in [0, 1) of the given shape.

    ``key`` (an integer or an integer scalar tensor) makes the draw a pure function of it;
    without one, the global key is used and advanced.
    """
    return _draw("random_uniform", shape, key, dtype)


def normal(shape, key=None, dtype=dt.float32):
    """Standard normal numbers of the given shape (see :func:`uniform` for ``key``)."""
    return _draw("random_normal", shape, key, dtype)
