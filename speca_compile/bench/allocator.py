"""Pin glibc's malloc thresholds while benchmarking, so a row's speed does not depend on
what ran before it in the process.

glibc serves allocations above a moving threshold (128 KiB at start, raised each time a
large block is freed) with fresh mmap'd pages, which the kernel zero-fills on first touch.
Eager PyTorch allocates and frees activation-sized tensors at every op, so its speed
depends on how far that threshold has moved: on dit_digits (batch 50, 50 steps, 2-core
CPU) eager measured 5.2-5.7 s in a fresh process and 3.6-4.4 s with the threshold pinned
at 64 MiB; in one `speca bench` process its speed changed by up to 1.5x with the rows run
before it.  Pinning it gives every row (eager, compiled, peers) the fast, steady allocator:
the baseline is the fastest eager, and the ratios are the conservative ones.  ONNX Runtime
allocates from its own arena and is not affected.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Optional

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20
TRIM_THRESHOLD = 256 << 20


def pin_malloc_thresholds() -> Optional[str]:
    """Set the thresholds; returns what was set (for the report), or None off glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # not glibc (musl, macOS): nothing to pin
        return None
    if not (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)):
        return None
    return f"glibc mmap threshold {MMAP_THRESHOLD >> 20} MiB, trim {TRIM_THRESHOLD >> 20} MiB (pinned)"
