"""Measure what a user feels while the dynamics runs: event-loop stalls and frames drawn per second.

A QTimer fires every HEARTBEAT_MS on the main thread; the longest gap between
two firings (minus the interval) is the longest time the event loop was busy,
i.e. the UI did not respond. Frames are counted twice: snapshots shown (layer
and plot updates pushed by the worker) and draws of the vispy canvas. With
``orbit`` the probe also plays a user turning the view (a camera step every
ORBIT_MS), so canvas draws per second measure how smoothly the 3D view moves
while the dynamics runs. ``sdglass app --steps K --measure FILE.json [--orbit]``
writes ``report()`` after the run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from qtpy.QtCore import QObject, QTimer

from core.io import atomic_output

#: Heartbeat interval of the stall detector (ms): fine against the 100 ms stall target,
#: coarse enough not to steal the GIL from the dynamics worker.
HEARTBEAT_MS = 20
#: Interval of the simulated camera orbit (ms): asks for 20 redraws per second.
ORBIT_MS = 50


class ResponsivenessProbe(QObject):
    """Counts event-loop stalls, shown snapshots and canvas draws between start() and stop()."""

    def __init__(self, viewer, session, orbit: bool = False) -> None:
        super().__init__()
        self.viewer, self.session, self.orbit = viewer, session, orbit
        self._timer = QTimer(self)
        self._timer.setInterval(HEARTBEAT_MS)
        self._timer.timeout.connect(self._beat)
        self._orbit_timer = QTimer(self)
        self._orbit_timer.setInterval(ORBIT_MS)
        self._orbit_timer.timeout.connect(self._turn)
        self.gaps: list[float] = []
        self.beats: list[float] = []  # time of each heartbeat, s since start()
        self.snapshots = 0
        self.draws = 0
        self.first_step = self.last_step = 0
        self._last = self._t0 = self._t1 = 0.0

    def _beat(self) -> None:
        now = time.perf_counter()
        self.gaps.append(now - self._last)
        self.beats.append(now - self._t0)
        self._last = now

    def _turn(self) -> None:
        """A user orbiting the view: turn the camera by 2 degrees (one redraw request)."""
        camera = self.viewer.camera
        elevation, azimuth, roll = camera.angles
        camera.angles = (elevation, azimuth + 2.0, roll)

    def _on_snapshot(self, snap) -> None:
        self.snapshots += 1
        self.last_step = snap.step

    def _on_draw(self, event=None) -> None:
        self.draws += 1

    def _canvas(self):
        qt_viewer = getattr(self.viewer.window, "_qt_viewer", None)
        return None if qt_viewer is None else qt_viewer.canvas._scene_canvas

    def start(self) -> None:
        self._t0 = self._last = time.perf_counter()
        self.first_step = self.session.sim.step_count
        self.session.snapshot_ready.connect(self._on_snapshot)
        canvas = self._canvas()
        if canvas is not None:
            canvas.events.draw.connect(self._on_draw)
        self._timer.start()
        if self.orbit:
            self._orbit_timer.start()

    def stop(self) -> None:
        self._t1 = time.perf_counter()
        self._timer.stop()
        self._orbit_timer.stop()
        self.session.snapshot_ready.disconnect(self._on_snapshot)
        canvas = self._canvas()
        if canvas is not None:
            canvas.events.draw.disconnect(self._on_draw)

    def report(self) -> dict[str, float | int | str]:
        """Seconds measured, frames per second, stalls (ms beyond the heartbeat), steps per second,
        and when each stall over 100 ms ended (s since start) with its length (ms)."""
        wall = max(self._t1 - self._t0, 1e-9)
        stalls = np.maximum(np.asarray(self.gaps) - HEARTBEAT_MS / 1000, 0) * 1000
        long = np.flatnonzero(stalls > 100)
        sim = self.session.sim
        return {
            "n": sim.system.n,
            "replicas": sim.replicas,
            "engine": sim.engine,
            "orbit": self.orbit,
            "device": sim.device,
            "wall_seconds": wall,
            "steps": self.last_step - self.first_step,
            "steps_per_second": (self.last_step - self.first_step) / wall,
            "snapshots_per_second": self.snapshots / wall,
            "canvas_draws_per_second": self.draws / wall,
            "max_stall_ms": float(stalls.max()) if stalls.size else 0.0,
            "p99_stall_ms": float(np.percentile(stalls, 99)) if stalls.size else 0.0,
            "stalls_over_100ms": int(long.size),
            "long_stalls": [[round(self.beats[k], 3), round(float(stalls[k]), 1)] for k in long],
        }

    def write(self, path: str | Path, force: bool = False) -> dict:
        """report() as one JSON object in `path`, written atomically (existing: only with force)."""
        report = self.report()
        with atomic_output(path, force) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1) + "\n")
        return report
