"""Compiled kernels: C++ sources (csrc/), their build and cache, typed wrappers, the Triton IF
scan, the choice of backend."""
