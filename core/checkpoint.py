"""Resumable runs: quenches, datasets and training save their progress and continue from it.

* Quench (`sdglass quench --checkpoint DIR`): the group of configurations it is
  running saves its state to ``group-GGGGG.h5`` every `Checkpoints.every`
  seconds, when it finishes, and when it is interrupted (Ctrl-C or SIGTERM
  finishes the step in progress, saves, then stops; a second one stops at
  once). Saved are the spins, the noise generators' states and the sums
  recorded so far, all exactly, so a resumed run gives the numbers of an
  uninterrupted one bit for bit (on the same device with the same thread
  count; on another GPU equal up to round-off; on another kind of device the
  noise streams go on from seeds taken from the saved states, see
  `LLG.set_noise_state`: the same statistics, other numbers).
* Dataset (`sdglass dataset --checkpoint DIR`): each configuration's
  ED-labelled frames, when complete (``config-CCCCC.h5``, a frames file with
  the dataset's parameters in its ``checkpoint_run`` attribute).
* Training (`sdglass train --checkpoint DIR`): each network's weights, best
  weights, Adam and LR-schedule state, shuffling generator and epoch logs
  (``network-K.safetensors``, never pickled), timed and on signals like a
  quench.

Every file records the parameters that fix its numbers (the `run` record); a
file whose record differs from the resuming run's is refused with the
differing parameters named. The formats are documented in the README's "File
formats".
"""

from __future__ import annotations

import hashlib
import json
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

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
    methods: list[str] = field(default_factory=list)  # ED methods that advanced it, in order


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
                methods=json.loads(f.attrs.get("ed_methods", "[]")),  # absent in older files
            )

    def saved_groups(self) -> list[tuple[dict, int]]:
        """(run record, next step) of every group file saved here, in group order."""
        groups = []
        for path in sorted(self.directory.glob("group-*.h5")):
            with _reading(path, CHECKPOINT_FORMAT) as f:
                groups.append((json.loads(f.attrs["run"]), int(f.attrs["step"])))
        return groups

    def saved_pack(self) -> int | None:
        """Configurations per group of the quench progress saved here, None when there is
        none."""
        groups = self.saved_groups()
        pack = groups[0][0].get("pack") if groups else None
        return None if pack is None else int(pack)

    def saved_steps(self) -> tuple[str, int, int] | None:
        """(engine, configuration-steps done, all of them) of the quench progress saved
        here, None when there is none."""
        groups = self.saved_groups()
        if not groups:
            return None
        run = groups[0][0]
        done = sum(len(saved["configs_in_group"]) * step for saved, step in groups)
        return run["engine"], done, run["configs"] * run["n_steps"]

    def save(self, group: int, run: dict, progress: Progress) -> Path:
        """Write the group's progress atomically, replacing its previous checkpoint."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(group)
        with atomic_output(path, force=True) as tmp, h5py.File(tmp, "w") as f:
            f.attrs.update(
                format=CHECKPOINT_FORMAT, format_version=1, step=progress.step,
                t_index=progress.t_index, done=progress.done, run=json.dumps(run, sort_keys=True),
                ed_methods=json.dumps(progress.methods),
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
    """Refuse a checkpoint of another run (quench, dataset, training), naming what differs."""
    if saved == run:
        return
    keys = sorted(set(saved) | set(run), key=str)
    diffs = [f"{k} {run.get(k, '-')} here, {saved.get(k, '-')} there" for k in keys
             if saved.get(k) != run.get(k)]  # fmt: skip
    raise FileFormatError(
        f"{path} was saved by a run with other parameters ({'; '.join(diffs)}): "
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


@contextmanager
def safe_points(every: float | None, save: Callable[[], None]) -> Iterator[Callable[[], None]]:
    """Yields `reached()`, to call where the run's state is consistent (after a step or an
    epoch): it calls save() once `every` seconds have passed since the last save or a stop
    signal came (`deferred_interrupt`), then stops the run on that signal. every None: no
    saves, and signals act at once as usual."""
    timer = SaveTimer(every) if every is not None else None
    with deferred_interrupt(enabled=timer is not None) as interrupt:

        def reached() -> None:
            if timer is not None and (interrupt.requested or timer.due()):
                save()
            if interrupt.requested:
                raise KeyboardInterrupt

        yield reached


# --------------------------------------------------------------------------- training runs

TRAINING_FORMAT = "sdglass-training-checkpoint"


@dataclass
class TrainingState:
    """One network's training part-way through or finished: epochs done, the weights, the
    best weights so far (early stopping), Adam's and the LR schedule's state, the shuffling
    generator's state and the epoch logs (dicts), the best validation loss and the epochs
    since it."""

    epoch: int
    model: dict
    best_model: dict | None
    optimizer: dict
    scheduler: dict
    generator: torch.Tensor
    history: list[dict]
    best: float
    since: int
    done: bool = False


@dataclass(frozen=True)
class TrainingCheckpoint:
    """Where one training run (a fold or the final fit) saves its state, with the run record
    that a resuming run must match; `every`: seconds between timed saves."""

    path: Path
    run: dict
    every: float = DEFAULT_EVERY

    def save(self, state: TrainingState) -> Path:
        """safetensors with the tensors and a JSON header for the rest (never pickled)."""
        tensors = {f"model.{k}": v for k, v in state.model.items()}
        tensors.update({f"best.{k}": v for k, v in (state.best_model or {}).items()})
        opt_state = {}
        for pid, entries in state.optimizer["state"].items():
            for key, value in entries.items():
                tensors[f"opt.{pid}.{key}"] = torch.as_tensor(value)
            opt_state[str(pid)] = sorted(entries)
        tensors["generator"] = state.generator
        meta = {
            "format": TRAINING_FORMAT, "format_version": 1, "run": self.run,
            "epoch": state.epoch, "best": state.best, "since": state.since, "done": state.done,
            "has_best": state.best_model is not None, "history": state.history,
            "param_groups": state.optimizer["param_groups"], "opt_state": opt_state,
            "scheduler": state.scheduler,
        }  # fmt: skip
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        with atomic_output(self.path, force=True) as tmp:
            save_file(tensors, str(tmp), metadata={"sdglass": json.dumps(meta)})
        return self.path

    def load(self) -> TrainingState | None:
        """The saved state, None when there is none; FileFormatError for a damaged file or
        one saved by another training run (the differing parameters named)."""
        if not self.path.exists():
            return None
        try:
            with safe_open(str(self.path), framework="pt") as f:
                meta = json.loads((f.metadata() or {})["sdglass"])
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("format") != TRAINING_FORMAT or meta.get("format_version") != 1:
                raise FileFormatError(f"{self.path} is not an {TRAINING_FORMAT} file")
            _check_run(self.path, meta["run"], json.loads(json.dumps(self.run)))

            def part(prefix: str) -> dict:
                return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}

            optimizer = {
                "state": {
                    int(pid): {key: tensors[f"opt.{pid}.{key}"] for key in keys}
                    for pid, keys in meta["opt_state"].items()
                },
                "param_groups": meta["param_groups"],
            }
            return TrainingState(
                epoch=int(meta["epoch"]), model=part("model."),
                best_model=part("best.") if meta["has_best"] else None, optimizer=optimizer,
                scheduler=meta["scheduler"], generator=tensors["generator"],
                history=list(meta["history"]), best=float(meta["best"]),
                since=int(meta["since"]), done=bool(meta["done"]),
            )  # fmt: skip
        except FileFormatError:
            raise
        except (SafetensorError, OSError, ValueError, KeyError, TypeError) as err:
            raise FileFormatError(
                f"{self.path}: not a readable training checkpoint ({_first_line(err)})"
            ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__
