"""glibc heap tuning for a process that holds request bodies of tens of megabytes now and then.

glibc serves a large allocation with mmap and unmaps it on free, but each such free raises the threshold
(up to 32 MiB): after the first 25 MB body, later ones are carved from the heap arenas (one per thread that
allocates: the event loop, the writer, worker threads) and their pages stay in the process's RSS. Measured
with 24 MB webhooks: peak RSS 76 -> 390 MB after two, against 256 MB with the threshold pinned. Pinning it
at 1 MiB keeps big buffers mmapped (given back at once) and costs one mmap per big allocation.
"""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger(__name__)
M_MMAP_THRESHOLD = -3  # glibc's <malloc.h> parameter number
MMAP_THRESHOLD_BYTES = 1024 * 1024


def pin_mmap_threshold() -> bool:
    """Pin glibc's mmap threshold; False (and nothing changed) on a C library without `mallopt`."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter is linked with
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    pinned = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    log.debug("malloc mmap threshold pinned at %d bytes: %s", MMAP_THRESHOLD_BYTES, pinned)
    return pinned
