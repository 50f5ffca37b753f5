"""Triton kernels for fast3d (import name ``fast3d_kernels``)."""
