"""The GPU backend: fused kernels rendered to Triton source, compiled ahead of time to PTX and
cubin (no GPU needed to compile), run through the CUDA driver API, or under Triton's
interpreter where there is no GPU. Importing it does not import triton or torch."""

from lamina.backends.triton.triton_backend import TritonBackend, backend

__all__ = ["TritonBackend", "backend"]
