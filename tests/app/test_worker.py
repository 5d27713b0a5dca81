"""The dynamics generator off the GUI: chunks, snapshots, errors, and its thread's priority."""

import os
import sys
import threading

import pytest

from app.worker import PAUSED, WORKER_NICE, DynamicsError, dynamics
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


def test_after_a_snapshot_the_steps_wait_until_the_main_thread_has_drawn_it(monkeypatch):
    import time

    monkeypatch.setattr("app.worker.SHOWN_TIMEOUT_S", 0.3)
    sim = Simulation(SystemConfig(n=12, seed=1))
    shown = threading.Event()
    gen = dynamics(sim, lambda: 1, max_steps=3, min_interval=0.0, shown=shown)
    assert next(gen).step == 1 and not shown.is_set()  # cleared before each snapshot
    start = time.perf_counter()
    assert next(gen).step == 2 and sim.step_count == 2
    assert time.perf_counter() - start >= 0.3  # nobody drew it: it waited the timeout out
    threading.Timer(0.05, shown.set).start()  # the main thread draws step 2 a little later
    start = time.perf_counter()
    assert next(gen).step == 3
    assert 0.04 <= time.perf_counter() - start < 0.3


def test_a_drawn_snapshot_lets_the_worker_step_on(app_viewer, qtbot, monkeypatch):
    import time

    monkeypatch.setattr("app.worker.SHOWN_TIMEOUT_S", 30.0)  # only the main thread frees it
    _, session = app_viewer
    start = time.perf_counter()
    session.start(max_steps=100)  # a snapshot every MIN_INTERVAL: several
    qtbot.waitUntil(lambda: session.worker is None, timeout=20_000)
    assert session.sim.step_count == 100 and time.perf_counter() - start < 15


def test_a_cleared_running_event_holds_the_steps_until_it_is_set():
    sim = Simulation(SystemConfig(n=12, seed=1))
    running = threading.Event()
    gen = dynamics(sim, lambda: 1, max_steps=2, min_interval=0.0, running=running)
    assert next(gen) is PAUSED  # no step in progress: the main thread may say "paused"
    threading.Timer(0.2, running.set).start()  # resumed a little later
    assert next(gen) is None and sim.step_count == 0  # woke without stepping: a stop is seen
    assert next(gen).step == 1
    running.clear()  # paused again: no further step until set
    assert next(gen) is PAUSED
    threading.Timer(0.1, running.set).start()
    assert next(gen) is None and sim.step_count == 1
    assert next(gen).step == 2
