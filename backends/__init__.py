"""Backends: each turns an optimized Graph into a ``Program`` the runtime calls.

    numpy   the reference: runs each op's numpy ``ref`` (always available)
    llvm    CPU code through llvmlite (the CPU backend issue)
    triton  GPU kernels through Triton (Triton's interpreter where there is no GPU)

A backend module exposes ``backend``, an object with ``name``, ``passes`` (run after the
default pipeline, e.g. fusion), ``compile(graph) -> Program`` and ``save_program``/
``load_program`` for artifacts. Modules are imported on first use, so
``import lamina`` never imports llvmlite or triton.
"""

from __future__ import annotations

import importlib
from typing import Protocol

import numpy as np

from lamina.ir.errors import LaminaError
from lamina.ir.graph import Graph

_MODULES = {"numpy": "lamina.backends.numpy", "llvm": "lamina.backends.llvm",
            "triton": "lamina.backends.triton"}


class Program(Protocol):
    """A compiled graph: inputs (in order) and state (by name) in; outputs and updates out.

    ``state`` maps names to numpy arrays, or, for a program whose class sets
    ``takes_variables = True`` (the GPU runtime, which keeps state on the device), to the
    ``Variable`` objects themselves."""

    def __call__(self, inputs: list[np.ndarray],
                 state: dict[str, np.ndarray]) -> tuple[list[np.ndarray],
                                                        dict[str, np.ndarray]]: ...


class Backend(Protocol):
    name: str

    def compile(self, graph: Graph) -> Program: ...

    def save_program(self, program: Program) -> dict[str, bytes]: ...

    def load_program(self, graph: Graph, files: dict[str, bytes]) -> Program: ...


def available() -> list[str]:
    """Every backend name ``lm.compile`` accepts (triton's needs are checked when it compiles:
    a GPU, or Triton's interpreter with torch)."""
    return list(_MODULES)


def runnable() -> list[str]:
    """The backends that can run here: numpy and llvm always; triton with Triton installed
    and a CUDA GPU, or Triton and torch (its interpreter)."""
    out = ["numpy", "llvm"]
    import importlib.util

    if importlib.util.find_spec("triton") is not None:
        from lamina.backends.triton import cuda

        if cuda.available() or importlib.util.find_spec("torch") is not None:
            out.append("triton")
    return out


def get_backend(name: str) -> Backend:
    """The backend called ``name``; a clear error for an unknown one."""
    module = _MODULES.get(name)
    if module is None:
        raise LaminaError(f"unknown backend {name!r}; available: {', '.join(available())}")
    return importlib.import_module(module).backend
