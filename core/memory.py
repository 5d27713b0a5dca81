"""Memory: the process's malloc policy for large tensors, and checks that a computation fits.

glibc serves every block above its mmap threshold (which it raises by itself to
at most 32 MiB) with a fresh mmap and returns it to the kernel on free, so a
tensor of that size is page-faulted in again, page by page, each time it is
made. ML field evaluations of many replicas or many atoms make such tensors
every step. Measured on this project's 2-core CPU, shipped model, N = 500,
B = 200 replicas: 5.6 s per SIB step, 9.7 s of it kernel time in 4 million
minor page faults over 3 steps; with freed blocks kept for reuse, 2.8-3.1 s and
no faults. At N = 20000, B = 1: 0.48 -> 0.33 s per evaluation. B <= 20 at N = 500
makes no such tensors and is unchanged.

``keep_freed_memory`` raises glibc's mmap and trim thresholds (mallopt) so
freed blocks stay in the process for the next step. The cost: memory that a
run has used is not given back to the system until the process ends. The
programs (`sdglass ...` and the app) call it at start; importing ``core`` does
not, so a program that embeds sdglass keeps its own policy.

``require_memory`` refuses, with one line naming the sizes, a computation that
cannot fit in the memory available (ED at N = 100000 used to end in torch's
allocator traceback about 240000000000 bytes).
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

from core.errors import MemoryLimitError

#: mallopt parameters of glibc (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Blocks below this size are kept for reuse (bytes).
KEEP_BELOW = 1 << 30
#: The user's own malloc settings, which are left alone.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def keep_freed_memory() -> bool:
    """Keep freed blocks below KEEP_BELOW in the process for reuse; True if applied. Does
    nothing (False) off Linux, without glibc's mallopt, or when the environment sets the
    user's own malloc tunables."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in USER_SETTINGS):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BELOW)) and bool(
        mallopt(M_TRIM_THRESHOLD, KEEP_BELOW)
    )


def available_bytes(device: torch.device | str) -> int | None:
    """Memory free for new tensors: on cuda the GPU's free memory plus what torch's caching
    allocator holds unused (its blocks of earlier steps, which new tensors reuse), on the
    CPU MemAvailable of /proc/meminfo; None where unknown (then nothing is refused)."""
    device = torch.device(device)
    if device.type == "cuda":
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return torch.cuda.mem_get_info(device)[0] + cached
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require_memory(needed: float, device: torch.device | str, what: str, advice: str) -> None:
    """MemoryLimitError when `what` needs more bytes than `device` has available."""
    free = available_bytes(device)
    if free is not None and needed > free:
        raise MemoryLimitError(
            f"{what} needs about {_gib(needed)} of memory and {_gib(free)} are available "
            f"on {device}: {advice}"
        )


def _gib(n_bytes: float) -> str:
    gib = n_bytes / 2**30
    return f"{gib:.3g} GiB" if gib < 1000 else f"{gib:.0f} GiB"
