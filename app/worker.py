"""Background dynamics: a napari thread_worker generator over core.simulation.Simulation.

The worker runs several LLG steps per chunk, copies the state to CPU numpy
(Simulation.snapshot) at most every `min_interval` seconds, and yields None in
between so that a stop takes effect within one chunk. Pausing clears the
`running` event, which the worker waits for before each chunk: a pause and a
resume take effect at once in any order, even within one long step (the
worker's own pause request could not be taken back before it was honoured).
Before it waits, the worker yields PAUSED: the step that was in progress has
ended, and the main thread can say "paused" instead of "pausing".
Only the main thread touches layers and widgets (it receives the yielded
snapshots).

On Linux the worker thread lowers its own scheduling priority (nice
WORKER_NICE, inherited by the torch threads it starts): when the CPU is short,
drawing the window goes first and the dynamics take what is left. After each
snapshot the worker waits until the main thread has drawn it (the `shown`
event), so the steps run while the window is idle: with the two competing for
two cores, the window's frames took longer than 100 ms now and then (measured,
README).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable

from napari.qt.threading import GeneratorWorker, thread_worker

from core.simulation import Simulation


class DynamicsError:
    """Yielded once when a step raises: the main thread reports it, then the generator ends."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def __str__(self) -> str:
        return f"{type(self.error).__name__}: {self.error}"


class Paused:
    """Yielded when the worker starts waiting for a resume (no step is in progress)."""


PAUSED = Paused()

#: Shortest interval between two snapshots sent to the main thread (s).
MIN_INTERVAL = 0.03
#: Nice value of the dynamics thread (0 = the main thread's priority, 19 = lowest).
WORKER_NICE = 10
#: Longest wait of the worker for the main thread to draw a snapshot (s).
SHOWN_TIMEOUT_S = 0.25


def lower_priority(nice: int = WORKER_NICE) -> bool:
    """Give the calling thread (Linux: a thread has its own nice value) at least `nice`;
    False where the platform has no per-thread priority."""
    if not sys.platform.startswith("linux"):
        return False
    tid = threading.get_native_id()
    if os.getpriority(os.PRIO_PROCESS, tid) < nice:
        os.setpriority(os.PRIO_PROCESS, tid, nice)
    return True


def dynamics(
    sim: Simulation,
    steps_per_frame: Callable[[], int],
    max_steps: int | None = None,
    min_interval: float = MIN_INTERVAL,
    shown: threading.Event | None = None,
    running: threading.Event | None = None,
):
    """Generator: advance in chunks of steps_per_frame(); yield a Snapshot or None per chunk.

    shown: after yielding a snapshot, wait (at most SHOWN_TIMEOUT_S) until the main thread
    sets this event, i.e. has drawn the snapshot: the steps then run while the window is idle
    instead of competing with its drawing for the two cores. running: cleared while paused;
    the next chunk waits until it is set again (a stop sets it too, to be seen), after
    yielding PAUSED."""
    lower_priority()
    done = 0
    last = time.perf_counter()
    while max_steps is None or done < max_steps:
        if running is not None and not running.is_set():
            yield PAUSED
            running.wait()
            yield None  # a stop asked meanwhile is seen here, before any step
            continue
        n = max(1, int(steps_per_frame()))
        if max_steps is not None:
            n = min(n, max_steps - done)
        try:
            sim.advance(n)
        except Exception as err:  # reported on the main thread; the run ends cleanly
            yield DynamicsError(err)
            return
        done += n
        now = time.perf_counter()
        if now - last >= min_interval or done == max_steps:
            last = now
            if shown is not None:
                shown.clear()
            yield sim.snapshot()
            if shown is not None and done != max_steps:
                shown.wait(SHOWN_TIMEOUT_S)
        else:
            yield None


def dynamics_worker(
    sim: Simulation,
    steps_per_frame: Callable[[], int],
    max_steps: int | None = None,
    min_interval: float = MIN_INTERVAL,
    shown: threading.Event | None = None,
    running: threading.Event | None = None,
) -> GeneratorWorker:
    """A not-yet-started napari GeneratorWorker running `dynamics`."""
    return thread_worker(dynamics, start_thread=False)(
        sim, steps_per_frame, max_steps, min_interval, shown, running
    )
