"""The CPU backend: fused kernels lowered to LLVM IR with llvmlite, optimized at O3 for the host,
run through MCJIT (the CPU backend issue; being built)."""
