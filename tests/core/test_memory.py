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


#: Peak RSS growth of one ED field evaluation at N atoms, per N^2 (bytes).
ED_PEAK = """
import sys, torch
from core.config import SystemConfig
from core.electrons import EDSolver
from core.system import generate_positions, random_spins
def peak():  # this process's high-water RSS (ru_maxrss would include the parent's, pytest)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])
n = int(sys.argv[1])
atoms, spins = generate_positions(SystemConfig(n=n)), random_spins(1, n, torch.Generator())
base = peak()
EDSolver(atoms).fields(spins)
print((peak() - base) * 1024 / n**2)
"""


def test_ed_memory_estimate_matches_the_measured_peak():
    from core.electrons import ED_BYTES_PER_N2

    out = subprocess.run(
        [sys.executable, "-c", ED_PEAK, "1000"], capture_output=True, text=True, check=True
    )
    assert 0.7 * ED_BYTES_PER_N2 < float(out.stdout) < 1.3 * ED_BYTES_PER_N2


def test_available_memory_is_known_on_linux():
    from core.memory import available_bytes

    free = available_bytes("cpu")
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert 0 < free <= total


def test_gpu_memory_counts_the_caching_allocators_unused_blocks(monkeypatch):
    import torch

    from core.memory import available_bytes

    gib = 2**30
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 20 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 12 * gib)
    assert available_bytes("cuda") == 11 * gib  # 3 free on the device, 8 cached unused


def test_a_computation_larger_than_the_memory_is_refused_in_one_line(monkeypatch):
    from core import memory
    from core.config import SystemConfig
    from core.electrons import EDSolver
    from core.errors import MemoryLimitError
    from core.system import generate_positions

    atoms = generate_positions(SystemConfig(n=40))
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**18)  # 0.25 MiB
    with pytest.raises(MemoryLimitError) as err:
        EDSolver(atoms)
    assert str(err.value) == (
        "ED at N = 40 (a 80 x 80 complex diagonalization) needs about 0.000417 GiB of memory "
        "and 0.000244 GiB are available on cpu: use the ML engine, or a smaller N"
    )
    monkeypatch.setattr(memory, "available_bytes", lambda device: None)  # unknown: no refusal
    EDSolver(atoms)
