"""Resumable runs: each group of configurations saves its progress to an HDF5 file.

A long quench (the paper-scale reproduction runs for hours on a GPU) given a
checkpoint directory saves the state of the group it is running every
`Checkpoints.every` seconds, when it finishes, and when it is interrupted
(Ctrl-C or SIGTERM finishes the step in progress, saves, then stops; a second
one stops at once). The same command with the same directory continues from there:
finished groups are read back, an unfinished one continues from its saved
step. Saved are the spins, the noise generators' states and the sums recorded
so far, all exactly, so a resumed run gives the numbers of an uninterrupted one
bit for bit (on the same device with the same thread count; on another device
it continues correctly, equal up to round-off).

`sdglass dataset` saves each configuration's ED-labelled frames when they are
complete (``config-CCCCC.h5``, a frames file with the dataset's parameters in
its ``checkpoint_run`` attribute) and reads them back when run again.

File format: ``group-GGGGG.h5`` per group (``format = "sdglass-checkpoint"``),
documented in the README's "File formats". Its ``run`` attribute holds every
parameter that fixes the group's numbers; a file whose ``run`` differs from the
resuming quench's is refused with the differing parameters named.
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from core.config import _require as _require_config
from core.errors import FileFormatError
from core.io import (
    FRAMES_FORMAT,
    Frames,
    _read,
    _reading,
    _require,
    atomic_output,
    read_frames,
    write_frames,
)

CHECKPOINT_FORMAT = "sdglass-checkpoint"
#: Default seconds of wall time between two saves of a running group.
DEFAULT_EVERY = 300.0


@dataclass
class Progress:
    """A group's quench part-way through or finished: the next step and record index,
    the spins before that step, the noise streams' states and the sums recorded so far."""

    step: int
    t_index: int
    spins: np.ndarray
    noise: list[np.ndarray]
    energy_sum: np.ndarray
    magnetisation_sum: np.ndarray
    corr_sums: np.ndarray
    corr_counts: np.ndarray
    snapshots: np.ndarray | None
    done: bool = False


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (the model a run used)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class Checkpoints:
    """Where a quench saves its groups' progress, and how often (seconds of wall time)."""

    directory: Path
    every: float = DEFAULT_EVERY

    def __post_init__(self) -> None:
        object.__setattr__(self, "directory", Path(self.directory))
        _require_config(self.every >= 0, f"checkpoint interval must be >= 0 s, got {self.every}")
        _require_config(
            not self.directory.exists() or self.directory.is_dir(),
            f"checkpoint directory {self.directory} exists and is not a directory",
        )

    def path(self, group: int) -> Path:
        return self.directory / f"group-{group:05d}.h5"

    def load(self, group: int, run: dict) -> Progress | None:
        """The saved progress of `group`, None when there is none; FileFormatError when
        the file is damaged or was written by a quench with other parameters."""
        path = self.path(group)
        if not path.exists():
            return None
        with _reading(path, CHECKPOINT_FORMAT) as f:
            _check_run(path, json.loads(f.attrs["run"]), run)
            names = ("spins", "energy_sum", "magnetisation_sum", "corr_sums", "corr_counts")
            _require(f, path, names)
            noise = f.get("noise")
            if not isinstance(noise, h5py.Group):
                raise FileFormatError(f"{path}: missing the noise generator states")
            spins = np.asarray(f["spins"][()])
            if spins.dtype.kind != "f" or not np.all(np.isfinite(spins)):
                raise FileFormatError(f"{path}: spins are not finite floating-point numbers")
            return Progress(
                step=int(f.attrs["step"]),
                t_index=int(f.attrs["t_index"]),
                spins=spins,
                noise=[_read(f, path, f"noise/{k}", np.uint8) for k in range(len(noise))],
                energy_sum=_read(f, path, "energy_sum"),
                magnetisation_sum=_read(f, path, "magnetisation_sum"),
                corr_sums=_read(f, path, "corr_sums"),
                corr_counts=_read(f, path, "corr_counts"),
                snapshots=_read(f, path, "snapshots", np.float32),
                done=bool(f.attrs["done"]),
            )

    def save(self, group: int, run: dict, progress: Progress) -> Path:
        """Write the group's progress atomically, replacing its previous checkpoint."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(group)
        with atomic_output(path, force=True) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(
                format=CHECKPOINT_FORMAT, format_version=1, step=progress.step,
                t_index=progress.t_index, done=progress.done, run=json.dumps(run, sort_keys=True),
            )  # fmt: skip
            f.create_dataset("spins", data=progress.spins)
            for k, state in enumerate(progress.noise):
                f.create_dataset(f"noise/{k}", data=np.asarray(state, dtype=np.uint8))
            for name in ("energy_sum", "magnetisation_sum", "corr_sums", "corr_counts"):
                f.create_dataset(name, data=getattr(progress, name))
            if progress.snapshots is not None:
                f.create_dataset("snapshots", data=progress.snapshots)
        return path

    def frames_path(self, config: int) -> Path:
        return self.directory / f"config-{config:05d}.h5"

    def load_frames(self, config: int, run: dict) -> Frames | None:
        """The saved ED-labelled frames of one configuration (sdglass dataset), None when
        there are none; FileFormatError for a damaged file or one of another dataset."""
        path = self.frames_path(config)
        if not path.exists():
            return None
        with _reading(path, FRAMES_FORMAT) as f:
            _check_run(path, json.loads(f.attrs.get(RUN_ATTR, "{}")), run)
        return read_frames(path)

    def save_frames(self, config: int, run: dict, frames: Frames) -> Path:
        """Write one configuration's frames atomically (a frames file plus the run record)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.frames_path(config)
        with atomic_output(path, force=True) as tmp:
            write_frames(tmp, frames)
            with h5py.File(tmp, "a") as f:
                f.attrs[RUN_ATTR] = json.dumps(run, sort_keys=True)
        return path


@dataclass(frozen=True)
class GroupCheckpoint:
    """Saves one group's progress (calling it with a Progress); `every`: the seconds between
    timed saves."""

    checkpoints: Checkpoints
    group: int
    run: dict

    @property
    def every(self) -> float:
        return self.checkpoints.every

    def __call__(self, progress: Progress) -> Path:
        return self.checkpoints.save(self.group, self.run, progress)


#: Attribute of a saved configuration's frames file that records its dataset's parameters.
RUN_ATTR = "checkpoint_run"


def _check_run(path: Path, saved: dict, run: dict) -> None:
    """Refuse a checkpoint of another quench, naming what differs."""
    if saved == run:
        return
    keys = sorted(set(saved) | set(run), key=str)
    diffs = [f"{k} {run.get(k, '-')} here, {saved.get(k, '-')} there" for k in keys
             if saved.get(k) != run.get(k)]  # fmt: skip
    raise FileFormatError(
        f"{path} was saved by a quench with other parameters ({'; '.join(diffs)}): "
        "give another checkpoint directory, or remove this one to start afresh"
    )


class SaveTimer:
    """Says when a running group is due for its next save."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last < self.every:
            return False
        self.last = now
        return True


@dataclass
class Interrupt:
    """Set by the first Ctrl-C or SIGTERM inside `deferred_interrupt`."""

    requested: bool = False


#: Signals that ask a checkpointed run to save and stop: Ctrl-C, and SIGTERM, which
#: `timeout` and batch schedulers send at a time limit.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def deferred_interrupt(enabled: bool = True) -> Iterator[Interrupt]:
    """Turn the first Ctrl-C or SIGTERM into a request the caller acts on at its next safe
    point; a second one raises KeyboardInterrupt at once. Only in the main thread (signal
    handlers live there); elsewhere, or when not enabled, nothing changes."""
    flag = Interrupt()
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def request(signum, frame) -> None:
        if flag.requested:
            raise KeyboardInterrupt
        flag.requested = True

    previous = {sig: signal.signal(sig, request) for sig in STOP_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
