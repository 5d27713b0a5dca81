"""The dynamics generator off the GUI: chunks, snapshots, errors, and its thread's priority."""

import os
import sys
import threading

import pytest

from app.worker import WORKER_NICE, DynamicsError, dynamics
from core.config import SystemConfig
from core.simulation import Simulation


def run_in_thread(gen, count: int) -> tuple[list, int]:
    """Take `count` items from the generator in a new thread; also that thread's nice value."""
    out: dict = {}

    def body() -> None:
        out["items"] = [next(gen) for _ in range(count)]
        out["nice"] = os.getpriority(os.PRIO_PROCESS, 0)  # Linux: the calling thread

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return out["items"], out["nice"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux-only")
def test_dynamics_thread_yields_the_cpu_to_drawing_and_the_main_thread_keeps_its_priority():
    sim = Simulation(SystemConfig(n=12, seed=1))
    before = os.getpriority(os.PRIO_PROCESS, 0)
    items, nice = run_in_thread(dynamics(sim, lambda: 2, max_steps=4, min_interval=0.0), 2)
    assert nice >= WORKER_NICE
    assert os.getpriority(os.PRIO_PROCESS, 0) == before
    assert [snap.step for snap in items] == [2, 4]


def test_a_failing_step_is_yielded_as_an_error_and_ends_the_run():
    sim = Simulation(SystemConfig(n=12, seed=1))
    sim.spins[0, 0] = float("nan")
    gen = dynamics(sim, lambda: 1, min_interval=0.0)
    items, _ = run_in_thread(gen, 1)
    assert isinstance(items[0], DynamicsError) and "NaN" in str(items[0])
    with pytest.raises(StopIteration):
        next(gen)
