"""The reference backend: runs a graph op by op with each op's numpy ``ref``."""

from lamina.backends.numpy.backend import NumpyBackend, NumpyProgram, backend

__all__ = ["NumpyBackend", "NumpyProgram", "backend"]
