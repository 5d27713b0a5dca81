"""Background jobs of the panels: one napari thread_worker per computation, a label that
counts its seconds, and user errors in one line (`say`, red for an error).

A job that raises an SdglassError (a system the model cannot run on, an impossible
density) is a user's mistake, not a bug: it comes back to the panel's `fail`, which
says it in one line. Any other exception reaches napari's error notification with its
traceback. superqt raises an exception a job *returns*, so user errors travel wrapped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from napari.qt.threading import thread_worker
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy

from core.errors import SdglassError

#: How often the busy label counts the seconds (ms). Not an animated busy bar: that
#: repaints ~60 times a second, and with software OpenGL each repaint of the window
#: redraws the 3D canvas. Measured at N = 10000 (ML engine): the canvas took 3.9 s of
#: CPU from a 9.0 s background build, which took 7.4 s without the animation.
TICK_MS = 1000


class _UserError:
    """An SdglassError a job returns instead of raising."""

    def __init__(self, error: SdglassError) -> None:
        self.error = error


class Job:
    """job() in a worker thread, started at once. Meanwhile `busy` (a magicgui Label) reads
    "<text>... 3 s"; then done(result) or fail(error), then finished(), in the main thread.
    When `closing` (the session's signal) fires first, the job ends unseen: its panel's
    widgets are going."""

    def __init__(
        self,
        job: Callable[[], Any],
        done: Callable[[Any], None],
        fail: Callable[[SdglassError], None],
        finished: Callable[[], None],
        busy,
        text: str,
        closing,
    ) -> None:
        self._ended = False
        started = time.perf_counter()
        busy.value = f"{text}..."
        self._timer = QTimer()
        self._timer.timeout.connect(
            lambda: setattr(busy, "value", f"{text}... {int(time.perf_counter() - started)} s")
        )
        self._timer.start(TICK_MS)

        def guarded():
            try:
                return job()
            except SdglassError as err:
                return _UserError(err)

        def returned(result) -> None:
            self._timer.stop()
            fail(result.error) if isinstance(result, _UserError) else done(result)

        def ended() -> None:
            self._ended = True
            self._timer.stop()
            finished()

        self._worker = thread_worker(guarded, start_thread=False)()
        self._worker.returned.connect(returned)
        self._worker.finished.connect(ended)
        closing.connect(self._abandon)  # held weakly: goes with the job
        self._worker.start()

    def _abandon(self) -> None:
        if self._ended:
            return
        self._timer.stop()
        for signal in (self._worker.returned, self._worker.errored, self._worker.finished):
            signal.disconnect()


def say(label, text: str, error: bool = False) -> None:
    """A panel's message line: `text` in a word-wrapped magicgui Label, red for an error."""
    label.value = text
    label.native.setStyleSheet("color: #ff6b6b;" if error else "")
    wrap(label)


def wrap(label) -> None:
    """Word-wrap a magicgui Label across the panel's whole width (a word-wrapped label
    otherwise takes a narrow column)."""
    label.native.setWordWrap(True)
    label.native.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Preferred)
