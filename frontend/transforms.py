"""Function transforms: ``lm.grad`` and ``lm.value_and_grad``.

Inside a trace they record ``grad(loss, x)`` nodes, which the autodiff pass later replaces by
the backward computation; so they compose with ``lm.compile`` and with each other. Called on
numpy arrays they compile the transformed function (reference backend) and run it.
"""

from __future__ import annotations

import functools

from lamina.frontend.trace import current, user_loc
from lamina.ir.errors import GradError

# Set by the compile driver: runs a function on concrete arrays by compiling it.
_run_compiled = None


def _normalize_argnums(argnums, n: int) -> tuple[int, ...]:
    nums = (argnums,) if isinstance(argnums, int) else tuple(argnums)
    for i in nums:
        if not isinstance(i, int) or not -n <= i < n:
            raise GradError(f"argnums {argnums!r} does not fit a call with {n} argument(s)",
                            user_loc())
    return tuple(i % n for i in nums)


def value_and_grad(fn, argnums=0, has_aux: bool = False):
    """``f -> (x... -> (f(x...), df/dx...))`` for a function with a scalar float result.

    ``argnums`` (an int or a tuple) picks the arguments to differentiate; an int gives one
    gradient, a tuple a tuple. With ``has_aux``, ``fn`` returns ``(loss, aux)`` and the result is
    ``((loss, aux), grads)``.

    >>> import numpy as np, lamina as lm
    >>> val, g = lm.value_and_grad(lambda x: (x * x).sum())(np.array([1., 2.], np.float32))
    >>> float(val), g
    (5.0, array([2., 4.], dtype=float32))
    """

    @functools.wraps(fn)
    def wrapped(*args):
        ctx = current()
        if ctx is None:
            return _run_compiled(wrapped, args)
        nums = _normalize_argnums(argnums, len(args))
        b = ctx.builder
        args = list(args)
        for i in nums:
            # A fresh value per argument: the gradient flows only through uses inside fn,
            # not through other uses of the same tensor outside it.
            args[i] = b.call("alias", b.var(b.lift(args[i])))
        out = fn(*args)
        if has_aux:
            if not (isinstance(out, tuple) and len(out) == 2):
                raise GradError("with has_aux=True the function must return (loss, aux)",
                                user_loc())
            loss, aux = out
        else:
            loss, aux = out, None
        loss = b.var(b.lift(loss))
        grads = tuple(b.call("grad", loss, args[i]) for i in nums)
        grads = grads[0] if isinstance(argnums, int) else grads
        return ((loss, aux) if has_aux else loss), grads

    return wrapped


def grad(fn, argnums=0, has_aux: bool = False):
    """``f -> df/dx``: the gradient of a scalar-valued function (see :func:`value_and_grad`).

    >>> import numpy as np, lamina as lm
    >>> lm.grad(lambda x: lm.tanh(x).sum())(np.zeros(2, np.float32))
    array([1., 1.], dtype=float32)
    """
    vg = value_and_grad(fn, argnums, has_aux)

    @functools.wraps(fn)
    def wrapped(*args):
        if current() is None:
            return _run_compiled(wrapped, args)
        value, grads = vg(*args)
        return (grads, value[1]) if has_aux else grads

    return wrapped
