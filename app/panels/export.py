"""Export panel: frames file, trajectory, plot PNG/CSV, screenshot (core.io formats), and a
movie of the 3D view (app.movie)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton
from napari.utils.io import imsave_png
from napari.utils.notifications import show_error, show_info

from app.jobs import say
from app.movie import MOVIE_FPS, CanvasFilm, MovieRecorder
from core.errors import OutputExistsError
from core.io import (
    Frames,
    Trajectory,
    TrajectoryRecorder,
    atomic_output,
    check_output,
    electron_attrs,
    write_frames,
    write_trajectory,
)
from core.model import ELECTRON_KEYS


def frames_of(session) -> Frames:
    """The current state as a frames file: one frame per replica, no labels."""
    sim = session.sim
    spins = session.current_snapshot().spins
    b = spins.shape[0]
    return Frames(
        positions=np.repeat(sim.system.positions[None], b, axis=0),
        box=np.full(b, sim.system.box),
        spins=spins,
        attrs=electron_attrs(sim.electrons),
    )


def trajectory_of(session) -> Trajectory:
    """The run so far as a trajectory file: C(r, t), xi(t) at the record times, energies
    interpolated; under the ML engine its attributes name the model and its electrons, and
    parameters changed mid-run are listed in `parameter_changes` (core.io)."""
    sim = session.sim
    snap = session.current_snapshot()
    if len(snap.record_times) < 1 or len(snap.energy_times) < 1:
        raise ValueError("nothing recorded yet: run the dynamics first")
    e = np.interp(snap.record_times, snap.energy_times, snap.energy_history)
    m = np.interp(snap.record_times, snap.energy_times, snap.magnetisation_history)
    attrs = {**sim.system_config.to_dict(), **sim.electrons.to_dict(), **sim.llg_config.to_dict()}
    attrs.update(box=sim.system.box, engine=sim.engine, replicas=sim.replicas, configs=1)
    if sim.state_file is not None:  # the atoms came from this file, not from the seed
        attrs["state_file"] = sim.state_file
        del attrs["seed"]
    if sim.engine == "ml":  # the model's electrons ran, whatever the System panel says
        attrs.update({k: v for k, v in session.card.physical.items() if k in ELECTRON_KEYS})
        attrs["model"] = str(session.model_path)
    if snap.changes:  # the flat parameters are the values at the end
        attrs["parameter_changes"] = json.dumps(list(snap.changes))
    return Trajectory(
        times=snap.record_times,
        energy_per_spin=e,
        magnetisation=m,
        corr=snap.corr,
        r_centres=sim.bins.centres,
        r_edges=sim.bins.edges,
        pair_counts=sim.bins.counts.astype(np.int64),
        xi=np.nan_to_num(snap.xi, nan=0.0),
        attrs={k: v for k, v in attrs.items() if v is not None},
        positions=sim.system.positions[None],
    )


def write_plots(plots, stem: Path, force: bool = False, more: dict | None = None) -> list[Path]:
    """Per plot a PNG and a CSV of its data: stem-correlation, stem-xi, stem-energy (.png,
    .csv) from the live plots, and the plots of `more` (name -> (save PNG to a path, CSV
    header, rows), e.g. the Fields panel's).

    Atomic; refuses (OutputExistsError) before writing anything if a file exists and not force.
    """
    plots.flush(force_full=True)
    tables = {
        name: (plots.plots[name].save, header, rows)
        for name, (header, rows) in plots.csv_rows().items()
    }
    if not tables:
        raise ValueError("nothing to save yet: run the dynamics first")
    tables.update(more or {})
    names = [
        (stem.with_name(f"{stem.stem}-{n}.png"), stem.with_name(f"{stem.stem}-{n}.csv"))
        for n in tables
    ]
    for png, csv in names:
        check_output(png, force), check_output(csv, force)
    for (png, csv), (save, header, rows) in zip(names, tables.values(), strict=True):
        with atomic_output(png, force) as tmp:
            save(tmp)
        with atomic_output(csv, force) as tmp:
            np.savetxt(tmp, rows, delimiter=",", header=",".join(header), comments="")
    return [p for pair in names for p in pair]


#: Name of the exported files in a folder chosen as the Output path.
DEFAULT_STEM = "sdglass-export"


class ExportPanel(Container):
    """Save the state, the run, the plots and a screenshot."""

    def __init__(self, session) -> None:
        self.session = session
        self.path = FileEdit(
            label="Output", mode="w", value=Path(DEFAULT_STEM),
            tooltip="Base path; the suffix is chosen per export (.h5, .png, .csv). A folder "
            f"gets files named {DEFAULT_STEM}.* inside it.",
        )  # fmt: skip
        self.frames_button = PushButton(text="Save frames (.h5)", tooltip="Current spins and positions (sdglass frames file).")  # fmt: skip
        self.traj_button = PushButton(text="Save trajectory (.h5)", tooltip="C(r, t), xi(t), E/N and |m| of the run so far (sdglass trajectory file).")  # fmt: skip
        self.plots_button = PushButton(text="Save plots (PNG + CSV)", tooltip="Each live plot as PNG and its data as CSV (base-correlation, base-xi, base-energy), and after a comparison the Fields panel's plots (base-parity, base-ml-error).")  # fmt: skip
        self.shot_button = PushButton(text="Save screenshot", tooltip="The whole window (canvas and panels) as PNG.")  # fmt: skip
        self.overwrite = CheckBox(
            label="Overwrite existing files", value=False,
            tooltip="Off: an export whose file exists is refused (nothing is written). "
            "Files are always written completely or not at all.",
        )  # fmt: skip
        self.record = CheckBox(
            label="Record trajectory while running", value=False,
            tooltip="Stream the spins of every replica at each displayed frame (about 30 per "
            "second at most) into BASE.traj.h5, with C(r, t), xi(t) and E/N added when the "
            "run stops. The file appears only when complete.",
        )  # fmt: skip
        self.movie = CheckBox(
            label="Record movie while running", value=False,
            tooltip=f"Film the 3D view while the dynamics runs, at most {MOVIE_FPS} frames "
            f"per second, each frame with its time t written on it, into BASE.mp4 (H.264, played at "
            f"{MOVIE_FPS} frames per second). The file appears when the run stops or the box "
            "is unticked.",
        )  # fmt: skip
        self.recorder: TrajectoryRecorder | None = None
        self.filming: CanvasFilm | None = None
        self.movie_target: Path | None = None  # the movie's path, where not BASE.mp4
        self._shown_time = 0.0
        self.message = Label(value="")
        super().__init__(
            widgets=[self.path, self.overwrite, self.record, self.movie, self.frames_button, self.traj_button,
                     self.plots_button, self.shot_button, self.message],
            label="Export",
        )  # fmt: skip
        self.frames_button.clicked.connect(lambda: self._do(self.save_frames))
        self.traj_button.clicked.connect(lambda: self._do(self.save_trajectory))
        self.plots_button.clicked.connect(lambda: self._do(self.save_plots))
        self.shot_button.clicked.connect(lambda: self._do(self.save_screenshot))
        self.record.changed.connect(self._record_toggled)
        self.movie.changed.connect(self._movie_toggled)
        session.run_state_changed.connect(self._run_state)
        session.snapshot_ready.connect(self._snapshot)
        session.scene_shown.connect(self._shown)

    def _base(self) -> Path:
        """BASE of the files written (BASE.frames.h5, BASE.png, ...). A folder (an empty path
        means the current one) gets them inside it, as DEFAULT_STEM.*."""
        p = Path(self.path.value).expanduser()
        if p.is_dir():
            return p / DEFAULT_STEM
        return p.with_suffix("") if p.suffix else p

    def _do(self, action) -> None:
        """Run an export; the panel's message line (red on an error) and a notification say
        what was written or why nothing was."""
        try:
            paths = action()
        except OutputExistsError as err:
            self._failed(f"{err.path} exists: tick 'Overwrite existing files' to replace it")
            return
        except Exception as err:
            self._failed(f"Export failed: {err}")
            return
        if paths:
            say(self.message, "wrote " + ", ".join(p.name for p in paths))
            show_info(self.message.value)

    def _failed(self, text: str) -> None:
        say(self.message, f"⚠ {text}", error=True)
        show_error(text)

    # -------------------------------------------------------------- recording

    def _record_toggled(self, on: bool) -> None:
        if on and self.session.state != "stopped":
            self._do(self.start_recording)
        elif on:
            say(self.message, f"recording starts with the run -> {self._base().name}.traj.h5")
        elif self.recorder is not None:
            self._do(self.finish_recording)

    def _movie_toggled(self, on: bool) -> None:
        if on and self.session.state != "stopped":
            self._do(self.start_movie)
        elif on:
            target = self.movie_target or self._base().with_suffix(".mp4")
            say(self.message, f"filming starts with the run -> {target.name}")
        elif self.filming is not None:
            self._do(self.finish_movie)

    def _run_state(self, state: str) -> None:
        if state == "running" and self.record.value and self.recorder is None:
            self._do(self.start_recording)
        elif state == "stopped" and self.recorder is not None:
            self._do(self.finish_recording)
        if state == "running" and self.movie.value and self.filming is None:
            self._do(self.start_movie)
        elif state == "stopped" and self.filming is not None:
            self._do(self.finish_movie)

    def _snapshot(self, snap) -> None:
        rec = self.recorder
        if rec is None or (rec.n_snapshots and snap.time <= rec.times[rec.n_snapshots - 1]):
            return
        rec.append(snap.time, snap.spins)
        if rec.n_snapshots % 10 == 1:
            say(self.message, f"recording: {rec.n_snapshots} frames -> {rec.target.name}")

    def start_recording(self) -> list[Path]:
        """Open the recording (refused if BASE.traj.h5 exists and Overwrite is off)."""
        sim = self.session.sim
        path = self._base().with_suffix(".traj.h5")
        try:
            self.recorder = TrajectoryRecorder(
                path, sim.system.positions, sim.replicas, force=self.overwrite.value
            )
        except Exception:
            self.record.value = False
            raise
        self._snapshot(self.session.current_snapshot())
        say(self.message, f"recording -> {path.name}")
        return []

    def finish_recording(self) -> list[Path]:
        """Add the observables and move the recording onto BASE.traj.h5."""
        rec = self.recorder
        if rec is None:
            return []
        self._snapshot(self.session.current_snapshot())
        self.recorder = None
        try:
            observables = trajectory_of(self.session)
        except ValueError:  # no step was run: nothing worth keeping
            rec.abort()
            raise
        return [rec.finish(observables)]

    def start_movie(self) -> list[Path]:
        """Film the 3D view into BASE.mp4 (or movie_target; refused if it exists and
        Overwrite is off), starting with the view as it is; each frame says its time."""
        try:
            recorder = MovieRecorder(
                self.movie_target or self._base().with_suffix(".mp4"), force=self.overwrite.value
            )
        except Exception:
            self.movie.value = False
            raise
        self._shown(self.session.current_snapshot())
        self.filming = CanvasFilm(
            self.session.viewer, recorder,
            lambda: f"t = {self._shown_time:.2f} (1/gamma t0)", self._movie_failed,
        )  # fmt: skip
        say(self.message, f"filming -> {recorder.target.name}")
        return []

    def _shown(self, snap) -> None:
        """The time of the spins the 3D view shows (the movie's caption)."""
        if snap is not None:
            self._shown_time = snap.time

    def _movie_failed(self, err: Exception) -> None:
        film, self.filming = self.filming, None
        if film is not None:
            film.abort()
        self.movie.value = False
        self._failed(f"Movie failed: {err}")

    def finish_movie(self) -> list[Path]:
        """Move the movie onto its file."""
        film, self.filming = self.filming, None
        return [] if film is None else [film.finish()]

    def save_frames(self) -> list[Path]:
        path = write_frames(
            self._base().with_suffix(".frames.h5"), frames_of(self.session), self.overwrite.value
        )
        self.session.state_saved.emit(path)  # the System panel offers it to open again
        return [path]

    def save_trajectory(self) -> list[Path]:
        path = self._base().with_suffix(".traj.h5")
        return [write_trajectory(path, trajectory_of(self.session), force=self.overwrite.value)]

    def save_plots(self) -> list[Path]:
        fields = self.session.panels["Fields"].plot_tables()
        return write_plots(self.session.plots, self._base(), self.overwrite.value, fields)

    def save_screenshot(self) -> list[Path]:
        path = self._base().with_suffix(".screenshot.png")
        return [save_window(self.session.viewer, path, self.overwrite.value)]


def save_window(viewer, path: str | Path, force: bool = False) -> Path:
    """The whole window (canvas and docks) as a PNG, written atomically (existing: only with
    force)."""
    image = viewer.window.screenshot(canvas_only=False, flash=False)
    with atomic_output(path, force) as tmp:
        imsave_png(tmp, image)
    return Path(path)
