"""Shared test helpers: dtype-dependent tolerances and float64 finite differences."""

from __future__ import annotations

import numpy as np

# (rtol, atol) by numpy dtype: loose enough for a backend's own rounding (polynomial exp,
# another summation order), tight enough to catch a wrong formula.
TOLERANCES = {
    np.dtype(np.float16): (1e-2, 1e-3),
    np.dtype(np.float32): (2e-5, 2e-6),
    np.dtype(np.float64): (1e-12, 1e-13),
}


def assert_close(actual, expected, dtype=None, rtol=None, atol=None, err_msg=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    d = np.dtype(dtype) if dtype is not None else expected.dtype
    r, a = TOLERANCES.get(d, (0, 0))
    np.testing.assert_allclose(actual, expected, rtol=r if rtol is None else rtol,
                               atol=a if atol is None else atol, err_msg=err_msg)


def directional_fd(f, xs, vs, eps=1e-6):
    """Central difference of scalar ``f`` at ``xs`` along directions ``vs`` (float64)."""
    plus = f(*[x + eps * v for x, v in zip(xs, vs)])
    minus = f(*[x - eps * v for x, v in zip(xs, vs)])
    return (float(plus) - float(minus)) / (2 * eps)
