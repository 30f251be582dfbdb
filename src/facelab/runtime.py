"""Process-level speed settings for CPU training and inference.

glibc's malloc serves big blocks (a batch of activations is tens of MB) with fresh mmap()
pages and hands them back on free, so every training step page-faults its working set in
again: one 43-minute MobileNetV2 run on the 2-core development CPU took 129 million page
faults. Keeping freed memory in the heap removes them and the kernel time they cost.
`benchmarks/train_step_speed.py` (batch 64, 128px) measured 73-79 -> 96-106 img/s with 7
frozen blocks; with 4 frozen blocks the gain was within the machine's noise (71 -> 76 and
77 -> 75 img/s in two runs). The cost: the process keeps freed memory until it exits.

Set FACELAB_MALLOC_TUNE=0 to leave the allocator alone.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

# mallopt parameters (glibc malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD, _M_MMAP_MAX = -1, -2, -3, -4
_done = False


def tune_allocator() -> bool:
    """Tell glibc malloc to keep big freed blocks for reuse; True if it applied (Linux glibc),
    False elsewhere, when disabled, or when already done. Safe to call many times."""
    global _done
    if _done or os.environ.get("FACELAB_MALLOC_TUNE", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = all(libc.mallopt(param, value) == 1 for param, value in (
            (_M_MMAP_MAX, 0),                     # big blocks from the heap, not fresh mmaps
            (_M_TRIM_THRESHOLD, 2**31 - 1),       # never shrink the heap back
            (_M_TOP_PAD, 256 * 1024 * 1024),      # grow it in large steps
        ))
    except (OSError, AttributeError):  # not glibc (e.g. musl)
        return False
    _done = ok
    if ok:
        log.debug("glibc malloc tuned for training (FACELAB_MALLOC_TUNE=0 disables)")
    return ok
