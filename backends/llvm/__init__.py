"""The CPU backend: fused kernels lowered to LLVM IR with llvmlite, optimized at O3 for the host,
run through MCJIT. Importing it imports llvmlite (``import lamina`` does not)."""

from lamina.backends.llvm.llvm_backend import LLVMBackend, backend

__all__ = ["LLVMBackend", "backend"]
