"""Test setup: every graph built during the tests is verified after every pass and checked to
round-trip through the text form (print -> parse -> print)."""

import os

os.environ.setdefault("LAMINA_VERIFY", "1")
os.environ.setdefault("LAMINA_CHECK_ROUNDTRIP", "1")

import numpy as np
import pytest

from lamina.backends import available

BACKENDS = available()


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


@pytest.fixture(params=BACKENDS)
def backend(request):
    """Each test that takes ``backend`` runs once per available backend."""
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(0)
