r"""glibc's malloc and the page faults of large feature maps.

By default glibc hands big freed blocks back to the system (it trims the top of its heap, and serves the largest
requests from fresh mappings). A forward that allocates feature maps of several MB, as a batch of 8 at 224x224
does, may then touch all their pages anew each time: minor page faults that cost a binary model up to a third of
its batch-8 time (``docs/benchmarks.md``; ``benchmarks/inference.py`` prints them per forward). Whether a given
forward takes them depends on what ran before in the process. :func:`retain_freed_memory` is the opt-in fix.
"""
import ctypes
import ctypes.util
import sys

__all__ = ["retain_freed_memory"]

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# blocks below the mapping threshold come from the heap: 1 GiB where glibc accepts it (2.36 does), else 32 MiB, the
# upper limit mallopt(3) documents for 64-bit systems (4 * 1024 * 1024 * sizeof(long)). By default the threshold
# adapts up to 32 MiB: a batch whose feature maps are larger maps (and faults in) them afresh at every forward
# (measured: a 64 MB tensor, 15,626 faults at each allocation; 3,125 on average with 1 GiB, 15,626 with 32 MiB).
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)


def retain_freed_memory() -> bool:
    """Ask glibc's malloc, for the whole process, to keep the memory it frees for later requests: no trimming of
    its heap (threshold 2 GiB), and blocks up to 1 GiB (32 MiB on a glibc that refuses more) from the heap rather
    than from fresh mappings. The process then keeps its peak memory, and forwards after the first take (almost)
    no page faults for their feature maps.

    This changes the allocator of everything in the process, so bnn never calls it by itself. The same effect,
    before the process starts: ``MALLOC_TRIM_THRESHOLD_=2147483647 MALLOC_MMAP_THRESHOLD_=1073741824``.

    Returns True when glibc accepted both settings, False where there is no glibc ``mallopt`` (another
    system or C library): nothing is changed then."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    kept = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return any(mallopt(_M_MMAP_THRESHOLD, threshold) for threshold in _MMAP_THRESHOLDS) and kept
