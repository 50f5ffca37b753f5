"""Triton kernels for fast3d (import name ``fast3d_kernels``).

``select_gather`` fuses the visual-token selection (top-k or sample-adaptive pruning) with the gather of
the kept tokens. Importing this package does not import triton; the kernel module is loaded on first use.
"""

from .common import SelectGatherResult
from .dispatch import resolve_backend, select_gather, select_gather_triton, triton_available
from .reference import keep_counts, select_gather_reference

__all__ = [
    "SelectGatherResult",
    "keep_counts",
    "resolve_backend",
    "select_gather",
    "select_gather_reference",
    "select_gather_triton",
    "triton_available",
]
