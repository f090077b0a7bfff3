"""Test setup: every graph built during the tests is verified after every pass and checked to
round-trip through the text form (print -> parse -> print)."""

import os

os.environ.setdefault("LAMINA_VERIFY", "1")
os.environ.setdefault("LAMINA_CHECK_ROUNDTRIP", "1")

import numpy as np
import pytest

from lamina.backends import runnable

# The backends every backend-parametrized test runs on: numpy and llvm, and triton where a GPU is
# (LAMINA_TEST_BACKENDS=triton,... picks others, e.g. the whole suite on triton on a GPU).
# Without a GPU, test modules in INTERPRETED also run triton under Triton's interpreter: every
# op's kernels checked against numpy (the interpreter is too slow for the training tests).
_CHOSEN = [b.strip() for b in os.environ.get("LAMINA_TEST_BACKENDS", "").split(",") if b.strip()]
INTERPRETED = {"test_ops", "test_ops_math2"}


def _default_backends() -> list[str]:
    here = runnable()
    if "triton" in here:
        from lamina.backends.triton import cuda

        if not cuda.available():
            here.remove("triton")
    return here


BACKENDS = _CHOSEN or _default_backends()
INTERPRETER = not _CHOSEN and "triton" not in BACKENDS and "triton" in runnable()


def has_cuda() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config, items):
    if has_cuda():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU (CUDA driver not found)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """Each test that takes ``backend`` runs once per backend (see BACKENDS above)."""
    if "backend" in metafunc.fixturenames:
        backends = list(BACKENDS)
        if INTERPRETER and metafunc.module.__name__ in INTERPRETED:
            backends.append("triton")
        metafunc.parametrize("backend", backends)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
