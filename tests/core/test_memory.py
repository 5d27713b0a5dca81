"""The programs' malloc policy: freed large blocks are reused, not page-faulted in again."""

import os
import subprocess
import sys

import pytest

#: Makes and frees a 64 MiB tensor 14 times; prints how many of the last 10 faulted its
#: pages in afresh (glibc settles on reusing the block after a few rounds).
PROBE = """
import resource, sys, torch
from core.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faulted = []
for _ in range(14):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.ones(1 << 24).sum()
    faulted.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before > 8192)
print(sum(faulted[4:]))
"""


def faults(mode: str) -> int:
    from core.memory import USER_SETTINGS

    # without malloc settings of the user's: Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in the
    # process that starts a local cluster, and earlier tests start some
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    run = subprocess.run(
        [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, check=True, env=env
    )
    return int(run.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux's")
def test_kept_blocks_are_not_faulted_in_again():
    assert faults("default") == 10  # every fresh 64 MiB block is faulted in
    assert faults("keep") <= 5  # measured: 0-2 of 10 (the kernel's own page handling)


def test_the_users_own_malloc_settings_are_left_alone(monkeypatch):
    from core.memory import keep_freed_memory

    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "131072")
    assert keep_freed_memory() is False
