"""sdglass file formats: HDF5 frames and trajectories, written atomically (never pickle).

Units (PHYSICS.md "Units"): length in ell, energy in t0, time in 1/(gamma t0);
every dataset carries its unit in a ``units`` attribute ("1" = dimensionless).
Both formats are plain HDF5, readable with h5py, h5dump or any HDF5 library.
Outputs are written to a temporary file beside the target and renamed onto it
only when complete; an existing file is never overwritten without ``force``.

Frames file (``format = "sdglass-frames"``, ``format_version = 1``)
--------------------------------------------------------------------
Spin states on amorphous configurations, optionally labelled by exact
diagonalization (ED). F >= 1 frames, all with the same number of atoms N >= 1.

Root datasets:

=========  =========  =======  =====  ==========================================
name       shape      dtype    units  meaning
=========  =========  =======  =====  ==========================================
positions  (F, N, 3)  float64  ell    atom positions
box        (F,)       float64  ell    side L of the periodic cube (> 0)
spins      (F, N, 3)  float64  1      unit spins S_i (| |S_i| - 1 | <= 1e-6)
fields     (F, N, 3)  float64  t0     optional: ED local fields H_i = -dE/dS_i
energy     (F,)       float64  t0     optional: ED total energy E (not per spin)
source     (F,)       int8     1      optional: origin code of each frame
=========  =========  =======  =====  ==========================================

``source`` has an attribute ``labels`` (array of strings): code k means
``labels[k]``, by default ("random", "relaxation").

Root attributes: ``format``, ``format_version`` and the electron parameters of
the ED labels (PHYSICS.md "Electrons"), each a float, absent when not recorded:
``t0``, ``ell``, ``J``, ``filling``, ``kT_e`` and ``r_hop`` (written only when a
hopping cutoff was used: when any electron parameter is recorded, an absent
``r_hop`` means "all minimum-image pairs").

Frames files written by ``sdglass dataset`` also carry root attributes
``dataset_*`` recording how the frames were generated; readers ignore them.

Trajectory file (``format = "sdglass-trajectory"``, ``format_version = 1``)
------------------------------------------------------------------------------
Observables of a quench run (PHYSICS.md "Observables") at T >= 1 times and R >= 1
radial bins, averaged over B spin replicas and C atomic configurations of N atoms.

Root datasets:

===============  ===============  =======  ============  ========================================
name             shape            dtype    units         meaning
===============  ===============  =======  ============  ========================================
times            (T,)             float64  1/(gamma t0)  measurement times, increasing
energy_per_spin  (T,)             float64  t0            mean energy per spin
magnetisation    (T,)             float64  1             mean |(1/N) sum_i S_i|
corr             (T, R)           float64  1             C(r, t), row k at times[k]
r_centres        (R,)             float64  ell           bin centres r
r_edges          (R + 1,)         float64  ell           bin edges, increasing
pair_counts      (R,)             int64    1             pairs per bin (>= 0, all configurations)
xi               (T,)             float64  ell           correlation length xi(t)
snapshots        (S, C, B, N, 3)  float32  1             optional: spins of every replica
snapshot_times   (S,)             float64  1/(gamma t0)  required with snapshots, increasing
positions        (C, N, 3)        float64  ell           required with snapshots (else optional)
===============  ===============  =======  ============  ========================================

All values are finite (an empty bin holds C = 0 and pair_counts = 0). Root
attributes: ``format``, ``format_version`` and the run parameters, a flat map of
name -> bool, int, float, str or 1-D list of numbers (for example engine, n, box,
r_min, J, filling, kT_e, temperature, alpha, dt, integrator, configs, replicas,
seeds). A parameter whose value is None is not recorded. Where parameters
changed during the run (the app's temperature, alpha, engine, ... mid-run), the
attribute ``parameter_changes`` holds them as a JSON list of
{"t", "step", name: [old, new], ...}, oldest first (t: when the step that first
used the new values began); the flat parameters are then the values at the end.

Every reader and constructor validates shapes, finiteness, box > 0 and unit
spins, raising a one-line FileFormatError (StateError for spin problems) that
names the file and the problem.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.config import ElectronConfig
from core.errors import FileFormatError, OutputExistsError, SdglassError, StateError

FRAMES_FORMAT = "sdglass-frames"
TRAJECTORY_FORMAT = "sdglass-trajectory"
FORMAT_VERSION = 1
FRAME_ATTRS = ("t0", "ell", "J", "filling", "kT_e", "r_hop")
SOURCE_LABELS = ("random", "relaxation")
UNIT_TOLERANCE = 1e-6
SNAPSHOT_UNIT_TOLERANCE = 1e-5  # snapshots are float32
RESERVED_ATTRS = ("format", "format_version")

UNITS = {
    "positions": "ell",
    "box": "ell",
    "spins": "1",
    "fields": "t0",
    "energy": "t0",
    "source": "1",
    "times": "1/(gamma t0)",
    "energy_per_spin": "t0",
    "magnetisation": "1",
    "corr": "1",
    "r_centres": "ell",
    "r_edges": "ell",
    "pair_counts": "1",
    "xi": "ell",
    "snapshots": "1",
    "snapshot_times": "1/(gamma t0)",
}

StrPath = str | os.PathLike[str]
AttrValue = bool | int | float | str | list[int] | list[float]


# --------------------------------------------------------------------------- atomic writes


def check_output(path: StrPath, force: bool = False) -> Path:
    """Fail early if ``path`` cannot be written: missing directory, or existing without force."""
    target = Path(path)
    parent = target.parent
    if not parent.is_dir():
        raise FileFormatError(f"cannot write {target}: no such directory {parent}")
    if not os.access(parent, os.W_OK):
        raise FileFormatError(f"cannot write {target}: directory {parent} is not writable")
    if target.is_dir():
        raise FileFormatError(f"cannot write {target}: it is a directory")
    if target.exists() and not force:
        raise OutputExistsError(target)
    return target


@contextmanager
def atomic_output(path: StrPath, force: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; move it onto ``path`` when the block succeeds.

    The caller creates the file at the yielded path. On any exception (KeyboardInterrupt
    included) the temporary file is removed and the exception re-raised, so an existing
    ``path`` stays untouched.
    """
    target = check_output(path, force)
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        yield tmp
        if not tmp.exists():
            raise FileFormatError(f"nothing was written for {target}")
        if target.exists() and not force:  # created by someone else meanwhile
            raise OutputExistsError(target)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- validation helpers


def _float_array(
    name: str, value: Any, error: type[SdglassError], dtype: Any = np.float64
) -> np.ndarray:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError):
        raise error(f"{name} must be a numeric array") from None


def _int_array(name: str, value: Any, dtype: Any) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iu":
        raise FileFormatError(f"{name} must hold integers, got dtype {arr.dtype}")
    info = np.iinfo(dtype)
    if arr.size and (arr.min() < info.min or arr.max() > info.max):
        raise FileFormatError(f"{name} must lie in [{info.min}, {info.max}] to fit {info.dtype}")
    return arr.astype(dtype)


def _shape(name: str, arr: np.ndarray, expected: tuple[int, ...], against: str) -> None:
    if arr.shape != expected:
        raise FileFormatError(
            f"{name} has shape {arr.shape}, expected {expected} to match {against}"
        )


def _finite(name: str, arr: np.ndarray, error: type[SdglassError] = FileFormatError) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        where = (
            f" (first at index {tuple(int(i) for i in np.argwhere(bad)[0])})" if arr.ndim else ""
        )
        raise error(f"{name} contains NaN or inf{where}")


def _unit(name: str, spins: np.ndarray, axes: Sequence[str], tolerance: float) -> None:
    with np.errstate(over="ignore", invalid="ignore"):
        s = spins.astype(np.float64)
        dev = np.sqrt(np.einsum("...i,...i->...", s, s)) - 1.0
    idx = np.unravel_index(int(np.argmax(np.abs(dev))), dev.shape)
    worst = float(dev[idx])
    if abs(worst) > tolerance:
        at = ", ".join(f"{axis} {int(i)}" for axis, i in zip(axes, idx, strict=True))
        raise StateError(
            f"{name} are not unit length: worst |S|-1 = {worst:.3g} at {at} "
            f"(tolerance {tolerance:g})"
        )


def _increasing(name: str, arr: np.ndarray) -> None:
    steps = np.diff(arr)
    if (steps <= 0).any():
        k = int(np.argmax(steps <= 0))
        raise FileFormatError(
            f"{name} must be increasing, got {arr[k]:g} then {arr[k + 1]:g} at index {k}"
        )


def _optional_float(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool | str | bytes) or not isinstance(value, int | float | np.number):
        raise FileFormatError(f"attribute {name} must be a number, got {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise FileFormatError(f"attribute {name} must be finite, got {number}")
    return number


def _attr_value(name: str, value: Any) -> AttrValue:
    """Normalise one run parameter to bool, int, float, str or a 1-D list of numbers."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise FileFormatError(f"attribute {name} must be finite, got {value}")
        return value
    if isinstance(value, list | tuple | np.ndarray):
        arr = np.asarray(value)
        if arr.ndim == 1 and arr.dtype.kind in "biuf" and np.all(np.isfinite(arr)):
            return arr.tolist()
    raise FileFormatError(
        f"attribute {name} must be a bool, int, float, str or 1-D list of finite numbers, "
        f"got {value!r}"
    )


# --------------------------------------------------------------------------- frames


@dataclass(eq=False)
class Frames:
    """F spin states on amorphous configurations of N atoms, optionally with ED labels.

    positions (F, N, 3) and box (F,) in ell; spins (F, N, 3) unit vectors; fields
    (F, N, 3) = -dE/dS in t0 and energy (F,) total E in t0 (ED labels, optional);
    source (F,) codes into source_labels; attrs: electron parameters FRAME_ATTRS
    (None = not recorded). Validated on construction (see ``validate``).
    """

    positions: np.ndarray
    box: np.ndarray
    spins: np.ndarray
    fields: np.ndarray | None = None
    energy: np.ndarray | None = None
    source: np.ndarray | None = None
    source_labels: tuple[str, ...] = SOURCE_LABELS
    attrs: dict[str, float | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_frames(self) -> int:
        return int(self.positions.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.positions.shape[1])

    def validate(self) -> None:
        """Normalise dtypes; check shapes, finiteness, box > 0 and |S| = 1 (raises on failure)."""
        self.positions = pos = _float_array("positions", self.positions, FileFormatError)
        if pos.ndim != 3 or pos.shape[2] != 3 or pos.shape[0] < 1 or pos.shape[1] < 1:
            raise FileFormatError(
                f"positions must have shape (F, N, 3), F, N >= 1; got {pos.shape}"
            )
        f = pos.shape[0]
        against = f"positions {pos.shape}"
        self.box = box = _float_array("box", self.box, FileFormatError)
        _shape("box", box, (f,), against)
        self.spins = spins = _float_array("spins", self.spins, StateError)
        if spins.shape != pos.shape:
            raise StateError(
                f"spins have shape {spins.shape}, expected {pos.shape} to match {against}"
            )
        if self.fields is not None:
            self.fields = _float_array("fields", self.fields, FileFormatError)
            _shape("fields", self.fields, pos.shape, against)
        if self.energy is not None:
            self.energy = _float_array("energy", self.energy, FileFormatError)
            _shape("energy", self.energy, (f,), against)
        if self.source is not None:
            self.source = _int_array("source", self.source, np.int8)
            _shape("source", self.source, (f,), against)

        _finite("positions", pos)
        _finite("box", box)
        _finite("spins", spins, StateError)
        if self.fields is not None:
            _finite("fields", self.fields)
        if self.energy is not None:
            _finite("energy", self.energy)
        if (box <= 0).any():
            k = int(np.argmax(box <= 0))
            raise FileFormatError(f"box side must be > 0, got {box[k]:g} in frame {k}")
        _unit("spins", spins, ("frame", "atom"), UNIT_TOLERANCE)

        self.source_labels = tuple(str(label) for label in self.source_labels)
        if self.source is not None:
            bad = (self.source < 0) | (self.source >= len(self.source_labels))
            if bad.any():
                k = int(np.argmax(bad))
                raise FileFormatError(
                    f"source code {self.source[k]} in frame {k} has no label "
                    f"(labels: {list(self.source_labels)})"
                )

        unknown = sorted(set(self.attrs) - set(FRAME_ATTRS))
        if unknown:
            raise FileFormatError(
                f"unknown frame attributes {unknown}; allowed: {list(FRAME_ATTRS)}"
            )
        self.attrs = {k: _optional_float(k, self.attrs.get(k)) for k in FRAME_ATTRS}

    def electron_config(self, defaults: ElectronConfig) -> ElectronConfig:
        """ElectronConfig of the recorded attributes, unrecorded ones from ``defaults``.

        When any electron parameter is recorded, an unrecorded r_hop means no cutoff.
        """
        recorded = {k: v for k, v in self.attrs.items() if v is not None}
        if recorded and "r_hop" not in recorded:
            recorded["r_hop"] = None
        return defaults.replace(**recorded)


def electron_attrs(config: ElectronConfig) -> dict[str, float | None]:
    """Frames.attrs recording the electron parameters of ED labels."""
    return {k: getattr(config, k) for k in FRAME_ATTRS}


def _put(f: h5py.File, name: str, data: np.ndarray) -> h5py.Dataset:
    ds = f.create_dataset(name, data=data)
    ds.attrs["units"] = UNITS[name]
    return ds


def write_frames(path: StrPath, frames: Frames, force: bool = False) -> Path:
    """Write a frames file atomically; OutputExistsError if it exists and not force."""
    frames.validate()
    with atomic_output(path, force) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FRAMES_FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        for key, value in frames.attrs.items():
            if value is not None:
                f.attrs[key] = value
        _put(f, "positions", frames.positions)
        _put(f, "box", frames.box)
        _put(f, "spins", frames.spins)
        if frames.fields is not None:
            _put(f, "fields", frames.fields)
        if frames.energy is not None:
            _put(f, "energy", frames.energy)
        if frames.source is not None:
            ds = _put(f, "source", frames.source)
            ds.attrs["labels"] = np.array(frames.source_labels, dtype=h5py.string_dtype())
    return Path(path)


# --------------------------------------------------------------------------- reading helpers


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def _open(path: Path) -> h5py.File:
    """An HDF5 file opened for reading; a missing or non-HDF5 file is one line."""
    if not path.exists():
        raise FileFormatError(f"no such file: {path}")
    if path.is_dir():
        raise FileFormatError(f"{path} is a directory, not an HDF5 file")
    if not h5py.is_hdf5(path):
        raise FileFormatError(f"{path} is not an HDF5 file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise FileFormatError(f"{path}: cannot open HDF5 file ({_one_line(err)})") from None


def _format_of(handle: h5py.File) -> str:
    found = handle.attrs.get("format", "")
    return found.decode() if isinstance(found, bytes) else str(found)


@contextmanager
def _reading(path: Path, fmt: str) -> Iterator[h5py.File]:
    """Open an sdglass HDF5 file of format ``fmt``, turning every h5py failure into one line."""
    handle = _open(path)
    try:
        with handle:
            found = _format_of(handle)
            if found != fmt:
                what = f"an {found!r} file" if found else "without a 'format' attribute"
                raise FileFormatError(f"{path} is not an {fmt} file ({what})")
            version = handle.attrs.get("format_version")
            if version != FORMAT_VERSION:
                raise FileFormatError(
                    f"{path} has format_version {version}; this sdglass reads {FORMAT_VERSION}"
                )
            yield handle
    except SdglassError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise FileFormatError(f"{path}: unreadable {fmt} file ({_one_line(err)})") from None


def _require(f: h5py.File, path: Path, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in f]
    if missing:
        raise FileFormatError(f"{path}: missing datasets: {', '.join(missing)}")


def _read(f: h5py.File, path: Path, name: str, dtype: Any = np.float64) -> np.ndarray | None:
    """Dataset ``name`` as a numpy array of ``dtype``, None when absent."""
    if name not in f:
        return None
    obj = f[name]
    if not isinstance(obj, h5py.Dataset):
        raise FileFormatError(f"{path}: {name} is a group, not a dataset")
    wanted = "iu" if np.dtype(dtype).kind in "iu" else "biuf"
    if obj.dtype.kind not in wanted:
        raise FileFormatError(f"{path}: dataset {name} has unsupported dtype {obj.dtype}")
    return np.asarray(obj[()], dtype=dtype)


def _labelled(path: Path, build: Any) -> Any:
    """Run a constructor, prefixing its validation error with the file name."""
    try:
        return build()
    except (FileFormatError, StateError) as err:
        raise type(err)(f"{path}: {err}") from None


def read_frames(path: StrPath) -> Frames:
    """Read and validate a frames file (FileFormatError/StateError naming file and problem)."""
    path = Path(path)
    with _reading(path, FRAMES_FORMAT) as f:
        _require(f, path, ("positions", "box", "spins"))
        data = {
            name: _read(f, path, name) for name in ("positions", "box", "spins", "fields", "energy")
        }
        data["source"] = _read(f, path, "source", np.int8)
        labels: tuple[str, ...] = SOURCE_LABELS
        if data["source"] is not None and "labels" in f["source"].attrs:
            raw = np.atleast_1d(f["source"].attrs["labels"])
            labels = tuple(x.decode() if isinstance(x, bytes) else str(x) for x in raw)
        attrs = {k: f.attrs[k] for k in FRAME_ATTRS if k in f.attrs}
    return _labelled(path, lambda: Frames(**data, source_labels=labels, attrs=attrs))


# --------------------------------------------------------------------------- trajectories

_TRAJ_REQUIRED = (
    "times",
    "energy_per_spin",
    "magnetisation",
    "corr",
    "r_centres",
    "r_edges",
    "pair_counts",
    "xi",
)


@dataclass(eq=False)
class Trajectory:
    """Observables of a quench run at T times and R bins (module docstring: trajectory file).

    times (T,) in 1/(gamma t0); energy_per_spin (T,) in t0; magnetisation (T,);
    corr (T, R) = C(r, t); r_centres (R,), r_edges (R + 1,) and xi (T,) in ell;
    pair_counts (R,); attrs: run parameters (None values dropped); optional
    snapshots (S, C, B, N, 3) float32 spins at snapshot_times (S,) on positions (C, N, 3).
    """

    times: np.ndarray
    energy_per_spin: np.ndarray
    magnetisation: np.ndarray
    corr: np.ndarray
    r_centres: np.ndarray
    r_edges: np.ndarray
    pair_counts: np.ndarray
    xi: np.ndarray
    attrs: dict[str, AttrValue] = field(default_factory=dict)
    snapshots: np.ndarray | None = None
    snapshot_times: np.ndarray | None = None
    positions: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.validate()

    @property
    def n_times(self) -> int:
        return int(self.times.shape[0])

    @property
    def n_bins(self) -> int:
        return int(self.r_centres.shape[0])

    def validate(self) -> None:
        """Normalise dtypes; check shapes, finiteness and ordering (raises on failure)."""
        for name in (
            "times",
            "energy_per_spin",
            "magnetisation",
            "corr",
            "r_centres",
            "r_edges",
            "xi",
        ):
            setattr(self, name, _float_array(name, getattr(self, name), FileFormatError))
        self.pair_counts = _int_array("pair_counts", self.pair_counts, np.int64)
        if self.times.ndim != 1 or self.times.size < 1:
            raise FileFormatError(f"times must have shape (T,), T >= 1; got {self.times.shape}")
        if self.r_centres.ndim != 1 or self.r_centres.size < 1:
            raise FileFormatError(
                f"r_centres must have shape (R,), R >= 1; got {self.r_centres.shape}"
            )
        t, r = self.times.size, self.r_centres.size
        against = f"times {self.times.shape} and r_centres {self.r_centres.shape}"
        for name in ("energy_per_spin", "magnetisation", "xi"):
            _shape(name, getattr(self, name), (t,), against)
        _shape("corr", self.corr, (t, r), against)
        _shape("r_edges", self.r_edges, (r + 1,), against)
        _shape("pair_counts", self.pair_counts, (r,), against)
        for name in (
            "times",
            "energy_per_spin",
            "magnetisation",
            "corr",
            "r_centres",
            "r_edges",
            "xi",
        ):
            _finite(name, getattr(self, name))
        _increasing("times", self.times)
        _increasing("r_edges", self.r_edges)
        if (self.pair_counts < 0).any():
            raise FileFormatError(f"pair_counts must be >= 0, got {self.pair_counts.min()}")

        if self.positions is not None:
            self.positions = pos = _float_array("positions", self.positions, FileFormatError)
            if pos.ndim != 3 or pos.shape[2] != 3:
                raise FileFormatError(f"positions must have shape (C, N, 3), got {pos.shape}")
            _finite("positions", pos)
        if self.snapshots is not None:
            self._validate_snapshots()
        elif self.snapshot_times is not None:
            raise FileFormatError("snapshot_times given without snapshots")

        reserved = [k for k in self.attrs if k in RESERVED_ATTRS]
        if reserved:
            raise FileFormatError(f"attribute names {reserved} are reserved")
        self.attrs = {str(k): _attr_value(k, v) for k, v in self.attrs.items() if v is not None}
        parameter_changes(self)

    def _validate_snapshots(self) -> None:
        self.snapshots = snaps = _float_array("snapshots", self.snapshots, StateError, np.float32)
        if snaps.ndim != 5 or snaps.shape[4] != 3:
            raise StateError(f"snapshots must have shape (S, C, B, N, 3), got {snaps.shape}")
        if self.snapshot_times is None or self.positions is None:
            raise FileFormatError("snapshots need snapshot_times and positions")
        st = _float_array("snapshot_times", self.snapshot_times, FileFormatError)
        self.snapshot_times = st
        against = f"snapshots {snaps.shape}"
        _shape("snapshot_times", st, snaps.shape[:1], against)
        _shape("positions", self.positions, (snaps.shape[1], snaps.shape[3], 3), against)
        _finite("snapshot_times", st)
        _increasing("snapshot_times", st)
        _finite("snapshots", snaps, StateError)
        _unit(
            "snapshots",
            snaps,
            ("snapshot", "configuration", "replica", "atom"),
            SNAPSHOT_UNIT_TOLERANCE,
        )


def _write_observables(f: h5py.File, traj: Trajectory) -> None:
    """Format attributes, run attributes and the required trajectory datasets."""
    f.attrs["format"] = TRAJECTORY_FORMAT
    f.attrs["format_version"] = FORMAT_VERSION
    for key, value in traj.attrs.items():
        f.attrs[key] = np.asarray(value) if isinstance(value, list) else value
    for name in _TRAJ_REQUIRED:
        _put(f, name, getattr(traj, name))


def write_trajectory(path: StrPath, traj: Trajectory, force: bool = False) -> Path:
    """Write a trajectory file atomically; OutputExistsError if it exists and not force."""
    traj.validate()
    with atomic_output(path, force) as tmp, h5py.File(tmp, "w") as f:
        _write_observables(f, traj)
        for name in ("snapshots", "snapshot_times", "positions"):
            if getattr(traj, name) is not None:
                _put(f, name, getattr(traj, name))
    return Path(path)


class TrajectoryRecorder:
    """Streams spin snapshots of a running simulation into a trajectory file, then finishes it.

    Snapshots (B, N, 3) are appended to a hidden ``.NAME.*.recording`` file beside
    ``path`` as they come (memory stays flat however long the run); ``finish``
    adds the observables and moves the file onto ``path`` (atomic, like every
    sdglass output). Until then ``path`` is untouched; ``abort`` deletes the
    partial file. One configuration (C = 1), B replicas of N atoms.
    """

    def __init__(
        self, path: StrPath, positions: np.ndarray, replicas: int, force: bool = False
    ) -> None:
        self.target = check_output(path, force)
        self.force = force
        positions = _float_array("positions", positions, FileFormatError)
        n = positions.shape[0]
        self.shape = (replicas, n, 3)
        self.tmp = self.target.with_name(f".{self.target.name}.{secrets.token_hex(4)}.recording")
        self.file = h5py.File(self.tmp, "w")
        _put(self.file, "positions", positions[None])
        self.snapshots = self.file.create_dataset(
            "snapshots", shape=(0, 1, *self.shape), maxshape=(None, 1, *self.shape),
            dtype=np.float32, chunks=(1, 1, *self.shape),
        )  # fmt: skip
        self.snapshots.attrs["units"] = UNITS["snapshots"]
        self.times = self.file.create_dataset(
            "snapshot_times", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(1024,)
        )
        self.times.attrs["units"] = UNITS["snapshot_times"]

    @property
    def n_snapshots(self) -> int:
        return int(self.times.shape[0])

    def append(self, time: float, spins: np.ndarray) -> None:
        """Add one snapshot (times must increase; spins finite, shape (B, N, 3))."""
        spins = np.asarray(spins, dtype=np.float32)
        if spins.shape != self.shape:
            raise StateError(f"snapshot spins must have shape {self.shape}, got {spins.shape}")
        _finite("snapshot spins", spins, StateError)
        k = self.n_snapshots
        if k and not time > self.times[k - 1]:
            raise StateError(f"snapshot times must increase: {time} after {self.times[k - 1]}")
        self.snapshots.resize(k + 1, axis=0)
        self.times.resize(k + 1, axis=0)
        self.snapshots[k, 0] = spins
        self.times[k] = time

    def finish(self, observables: Trajectory) -> Path:
        """Write the observables (their snapshots, if any, are ignored), close, move onto path.

        Without any snapshot nothing is written (StateError). If finishing fails,
        the recording is closed and kept; the error names where.
        """
        if not self.n_snapshots:
            self.abort()
            raise StateError(f"no snapshot was recorded: {self.target} not written")
        try:
            observables.validate()
            _write_observables(self.file, observables)
            self.file.close()
            read_trajectory(self.tmp)  # the finished file must read back as a valid trajectory
            if self.target.exists() and not self.force:
                raise OutputExistsError(self.target)
            os.replace(self.tmp, self.target)
        except Exception as err:
            if self.file.id.valid:
                self.file.close()
            raise FileFormatError(
                f"could not finish {self.target}: {err}; the recorded snapshots are kept in "
                f"{self.tmp}"
            ) from err
        return self.target

    def abort(self) -> None:
        """Close and delete the partial recording (the target path is untouched)."""
        if self.file.id.valid:
            self.file.close()
        self.tmp.unlink(missing_ok=True)


def parameter_changes(traj: Trajectory) -> list[dict]:
    """The trajectory's ``parameter_changes`` (empty when none were recorded; checked when
    a Trajectory is made)."""
    text = traj.attrs.get("parameter_changes")
    if text is None:
        return []
    try:
        changes = json.loads(str(text))
    except json.JSONDecodeError as err:
        raise FileFormatError(f"attribute parameter_changes is not JSON: {err}") from None
    if not isinstance(changes, list) or not all(
        isinstance(c, dict) and isinstance(c.get("t"), int | float) for c in changes
    ):
        raise FileFormatError("attribute parameter_changes must be a list of {t, step, ...}")
    return changes


def file_format(path: StrPath) -> str | None:
    """FRAMES_FORMAT or TRAJECTORY_FORMAT for an sdglass file, None for anything else (no
    such file, not HDF5, another program's HDF5): a cheap look at its attributes."""
    try:
        with _open(Path(path)) as handle:
            found = _format_of(handle)
    except SdglassError:
        return None
    return found if found in (FRAMES_FORMAT, TRAJECTORY_FORMAT) else None


def read_state(path: StrPath) -> Frames:
    """Spin states to continue from: a frames file, or the last spin snapshot of a
    trajectory file (its first configuration; the app's recordings and `sdglass quench
    --snapshots` have snapshots), as frames with the run's electrons."""
    path = Path(path)
    if file_format(path) != TRAJECTORY_FORMAT:
        return read_frames(path)  # which names any other format and a missing file
    traj = read_trajectory(path)
    if traj.snapshots is None or "box" not in traj.attrs:
        raise FileFormatError(
            f"{path} has no spin snapshots to continue from (the app's Record trajectory "
            "and sdglass quench --snapshots write them)"
        )
    spins = traj.snapshots[-1, 0].astype(np.float64)  # stored in float32: back to unit length
    spins /= np.linalg.norm(spins, axis=-1, keepdims=True)
    b = len(spins)
    return _labelled(path, lambda: Frames(
        positions=np.repeat(traj.positions[:1], b, axis=0),
        box=np.full(b, float(traj.attrs["box"])),
        spins=spins,
        attrs={k: traj.attrs[k] for k in FRAME_ATTRS if k in traj.attrs},
    ))  # fmt: skip


def read_trajectory(path: StrPath) -> Trajectory:
    """Read and validate a trajectory file (FileFormatError/StateError naming file and problem)."""
    path = Path(path)
    with _reading(path, TRAJECTORY_FORMAT) as f:
        _require(f, path, _TRAJ_REQUIRED)
        data: dict[str, Any] = {name: _read(f, path, name) for name in _TRAJ_REQUIRED}
        data["pair_counts"] = _read(f, path, "pair_counts", np.int64)
        data["snapshots"] = _read(f, path, "snapshots", np.float32)
        data["snapshot_times"] = _read(f, path, "snapshot_times")
        data["positions"] = _read(f, path, "positions")
        attrs = {k: v for k, v in f.attrs.items() if k not in RESERVED_ATTRS}
    return _labelled(path, lambda: Trajectory(**data, attrs=attrs))


__all__ = [
    "FORMAT_VERSION",
    "FRAMES_FORMAT",
    "FRAME_ATTRS",
    "SOURCE_LABELS",
    "TRAJECTORY_FORMAT",
    "Frames",
    "Trajectory",
    "TrajectoryRecorder",
    "atomic_output",
    "check_output",
    "electron_attrs",
    "file_format",
    "parameter_changes",
    "read_frames",
    "read_state",
    "read_trajectory",
    "write_frames",
    "write_trajectory",
]
