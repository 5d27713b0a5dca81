"""core.io: frames and trajectory round trips, atomic writes, one-line errors on bad input."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from core.config import ElectronConfig
from core.errors import FileFormatError, OutputExistsError, SdglassError, StateError
from core.io import (
    FRAME_ATTRS,
    FRAMES_FORMAT,
    TRAJECTORY_FORMAT,
    Frames,
    Trajectory,
    TrajectoryRecorder,
    atomic_output,
    check_output,
    electron_attrs,
    file_format,
    read_frames,
    read_state,
    read_trajectory,
    write_frames,
    write_trajectory,
)


def unit_vectors(rng: np.random.Generator, *shape: int) -> np.ndarray:
    v = rng.normal(size=(*shape, 3))
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def make_frames(labelled: bool = False, f: int = 3, n: int = 5) -> Frames:
    rng = np.random.default_rng(0)
    extra = {}
    if labelled:
        extra = {
            "fields": rng.normal(size=(f, n, 3)),
            "energy": rng.normal(size=f),
            "source": np.arange(f) % 2,
            "attrs": electron_attrs(ElectronConfig(J=4.0, r_hop=2.5)),
        }
    return Frames(
        positions=rng.uniform(0, 5, size=(f, n, 3)),
        box=np.full(f, 5.0),
        spins=unit_vectors(rng, f, n),
        **extra,
    )


def make_trajectory(snapshots: bool = False) -> Trajectory:
    rng = np.random.default_rng(1)
    t, r, s, c, b, n = 4, 6, 2, 2, 3, 5
    extra = {}
    if snapshots:
        extra = {
            "snapshots": unit_vectors(rng, s, c, b, n).astype(np.float32),
            "snapshot_times": np.array([0.0, 10.0]),
            "positions": rng.uniform(0, 5, size=(c, n, 3)),
        }
    return Trajectory(
        times=np.linspace(0, 30, t),
        energy_per_spin=rng.normal(size=t),
        magnetisation=rng.uniform(size=t),
        corr=rng.normal(size=(t, r)),
        r_centres=np.linspace(0.6, 2.4, r),
        r_edges=np.linspace(0.5, 2.5, r + 1),
        pair_counts=rng.integers(0, 100, size=r),
        xi=rng.uniform(size=t),
        attrs={
            "engine": "ed",
            "n": 5,
            "box": 5.0,
            "integrator": "sib",
            "thermal": True,
            "seeds": [1, 2, 3],
            "r_hop": None,
        },
        **extra,
    )


def assert_same_frames(a: Frames, b: Frames) -> None:
    for name in ("positions", "box", "spins", "fields", "energy", "source"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
    assert a.attrs == b.attrs
    assert a.source_labels == b.source_labels


def assert_same_trajectory(a: Trajectory, b: Trajectory) -> None:
    for name in (
        "times",
        "energy_per_spin",
        "magnetisation",
        "corr",
        "r_centres",
        "r_edges",
        "pair_counts",
        "xi",
        "snapshots",
        "snapshot_times",
        "positions",
    ):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y)
            assert x.dtype == y.dtype, name
    assert a.attrs == b.attrs


def no_temp_files(directory: Path) -> bool:
    return not any(p.name.endswith(".tmp") for p in directory.iterdir())


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("labelled", [False, True])
def test_frames_round_trip(tmp_path: Path, labelled: bool) -> None:
    frames = make_frames(labelled)
    path = write_frames(tmp_path / "frames.h5", frames)
    back = read_frames(path)
    assert_same_frames(frames, back)
    assert (back.n_frames, back.n_atoms) == (3, 5)
    with h5py.File(path) as f:
        assert f.attrs["format"] == "sdglass-frames"
        assert f.attrs["format_version"] == 1
        assert f["positions"].attrs["units"] == "ell"
        assert ("r_hop" in f.attrs) == labelled
    assert no_temp_files(tmp_path)


def test_frames_electron_config_uses_recorded_then_defaults() -> None:
    defaults = ElectronConfig(J=6.0, kT_e=0.1, r_hop=3.0)
    assert make_frames().electron_config(defaults) == defaults
    assert make_frames(labelled=True).electron_config(defaults) == ElectronConfig(J=4.0, r_hop=2.5)
    no_cutoff = Frames(**{**vars(make_frames()), "attrs": {"J": 2.0}})
    assert no_cutoff.electron_config(defaults) == defaults.replace(J=2.0, r_hop=None)
    assert set(no_cutoff.attrs) == set(FRAME_ATTRS)


@pytest.mark.parametrize("snapshots", [False, True])
def test_trajectory_round_trip(tmp_path: Path, snapshots: bool) -> None:
    traj = make_trajectory(snapshots)
    assert "r_hop" not in traj.attrs  # None values are not recorded
    back = read_trajectory(write_trajectory(tmp_path / "run.h5", traj))
    assert_same_trajectory(traj, back)
    assert back.attrs["thermal"] is True and back.attrs["seeds"] == [1, 2, 3]
    assert (back.n_times, back.n_bins) == (4, 6)
    with h5py.File(tmp_path / "run.h5") as f:
        assert f["times"].attrs["units"] == "1/(gamma t0)"


# ---------------------------------------------------------------- overwrite and atomicity


def test_refuses_overwrite_without_force_and_overwrites_with_force(tmp_path: Path) -> None:
    path = tmp_path / "frames.h5"
    write_frames(path, make_frames())
    with pytest.raises(
        OutputExistsError, match=r"refusing to overwrite .*frames\.h5 \(use --force\)"
    ):
        write_frames(path, make_frames(labelled=True))
    with pytest.raises(OutputExistsError):
        check_output(path)
    assert read_frames(path).fields is None
    write_frames(path, make_frames(labelled=True), force=True)
    assert read_frames(path).fields is not None


def test_overwrite_refused_before_any_work(tmp_path: Path) -> None:
    path = tmp_path / "out.h5"
    path.write_text("old")
    entered = False
    with pytest.raises(OutputExistsError), atomic_output(path):
        entered = True
    assert not entered and path.read_text() == "old"


def test_missing_output_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SdglassError, match="no such directory"):
        check_output(tmp_path / "nope" / "out.h5")
    with pytest.raises(SdglassError, match="no such directory"):
        write_frames(tmp_path / "nope" / "out.h5", make_frames())


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_interrupted_write_leaves_nothing(tmp_path: Path, exc: type[BaseException]) -> None:
    path = tmp_path / "out.h5"
    with pytest.raises(exc), atomic_output(path) as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".out.h5.")
        tmp.write_text("half")
        raise exc()
    assert list(tmp_path.iterdir()) == []


def test_interrupted_forced_write_keeps_existing_target(tmp_path: Path) -> None:
    path = write_frames(tmp_path / "frames.h5", make_frames())
    before = path.read_bytes()
    with pytest.raises(KeyboardInterrupt), atomic_output(path, force=True) as tmp:
        with h5py.File(tmp, "w") as f:
            f["junk"] = np.zeros(3)
        raise KeyboardInterrupt
    assert path.read_bytes() == before
    assert no_temp_files(tmp_path)


def test_successful_atomic_output_replaces_target(tmp_path: Path) -> None:
    path = tmp_path / "out.txt"
    with atomic_output(path) as tmp:
        tmp.write_text("new")
        assert not path.exists()
    assert path.read_text() == "new"
    assert no_temp_files(tmp_path)


# ---------------------------------------------------------------- bad files


@pytest.fixture
def frames_file(tmp_path: Path) -> Path:
    return write_frames(tmp_path / "frames.h5", make_frames(labelled=True))


def edit(path: Path, name: str, data: np.ndarray | None) -> None:
    """Replace (or with None delete) one dataset of an existing file."""
    with h5py.File(path, "r+") as f:
        del f[name]
        if data is not None:
            f[name] = data


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileFormatError, match=r"no such file: .*absent\.h5"):
        read_frames(tmp_path / "absent.h5")
    with pytest.raises(FileFormatError, match="no such file"):
        read_trajectory(tmp_path / "absent.h5")


def test_text_file_is_not_hdf5(tmp_path: Path) -> None:
    path = tmp_path / "notes.h5"
    path.write_text("positions, spins\n1, 2\n")
    with pytest.raises(FileFormatError, match=r"notes\.h5 is not an HDF5 file"):
        read_frames(path)


def test_wrong_format_is_named(tmp_path: Path, frames_file: Path) -> None:
    with pytest.raises(FileFormatError, match=r"not an sdglass-trajectory file.*sdglass-frames"):
        read_trajectory(frames_file)
    with h5py.File(frames_file, "r+") as f:
        f.attrs["format_version"] = 2
    with pytest.raises(FileFormatError, match="format_version 2"):
        read_frames(frames_file)


def test_missing_datasets_are_named(frames_file: Path) -> None:
    edit(frames_file, "spins", None)
    edit(frames_file, "box", None)
    with pytest.raises(FileFormatError, match=r"frames\.h5: missing datasets: box, spins"):
        read_frames(frames_file)


def test_mismatched_shapes_are_named(frames_file: Path) -> None:
    edit(frames_file, "box", np.full(4, 5.0))
    with pytest.raises(FileFormatError, match=r"box has shape \(4,\), expected \(3,\)"):
        read_frames(frames_file)


def test_mismatched_spin_shape(frames_file: Path) -> None:
    edit(frames_file, "spins", unit_vectors(np.random.default_rng(2), 3, 4))
    with pytest.raises(StateError, match=r"spins have shape \(3, 4, 3\), expected \(3, 5, 3\)"):
        read_frames(frames_file)


def test_nan_spins(frames_file: Path) -> None:
    with h5py.File(frames_file, "r+") as f:
        f["spins"][1, 2, 0] = np.nan
    with pytest.raises(StateError, match=r"frames\.h5: spins contains NaN or inf .*\(1, 2, 0\)"):
        read_frames(frames_file)


def test_non_unit_spins_report_worst_and_frame(frames_file: Path) -> None:
    with h5py.File(frames_file, "r+") as f:
        f["spins"][2, 4] = [0.0, 0.0, 1.5]
    with pytest.raises(
        StateError, match=r"not unit length: worst \|S\|-1 = 0\.5 at frame 2, atom 4"
    ):
        read_frames(frames_file)


def test_negative_box(frames_file: Path) -> None:
    with h5py.File(frames_file, "r+") as f:
        f["box"][1] = -5.0
    with pytest.raises(FileFormatError, match=r"box side must be > 0, got -5 in frame 1"):
        read_frames(frames_file)


def test_non_finite_positions(frames_file: Path) -> None:
    with h5py.File(frames_file, "r+") as f:
        f["positions"][0, 0, 0] = np.inf
    with pytest.raises(FileFormatError, match="positions contains NaN or inf"):
        read_frames(frames_file)


def test_bad_trajectory_file(tmp_path: Path) -> None:
    path = write_trajectory(tmp_path / "run.h5", make_trajectory(snapshots=True))
    with h5py.File(path, "r+") as f:
        f["xi"][0] = np.nan
    with pytest.raises(FileFormatError, match=r"run\.h5: xi contains NaN or inf"):
        read_trajectory(path)
    edit(path, "corr", np.zeros((4, 5)))
    with pytest.raises(FileFormatError, match=r"corr has shape \(4, 5\), expected \(4, 6\)"):
        read_trajectory(path)
    edit(path, "r_edges", None)
    with pytest.raises(FileFormatError, match="missing datasets: r_edges"):
        read_trajectory(path)


# ---------------------------------------------------------------- bad construction


def frames_with(**changes: object) -> Frames:
    return Frames(**{**vars(make_frames(labelled=True)), **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        (
            {"positions": np.zeros((3, 5))},
            FileFormatError,
            r"positions must have shape \(F, N, 3\)",
        ),
        ({"energy": np.zeros(2)}, FileFormatError, r"energy has shape \(2,\)"),
        ({"fields": np.zeros((3, 5, 2))}, FileFormatError, r"fields has shape \(3, 5, 2\)"),
        ({"spins": np.full((3, 5, 3), np.nan)}, StateError, "spins contains NaN"),
        ({"spins": np.zeros((3, 5, 3))}, StateError, r"worst \|S\|-1 = -1 at frame 0"),
        ({"box": np.array([5.0, 0.0, 5.0])}, FileFormatError, "box side must be > 0"),
        ({"source": np.array([0, 1, 7])}, FileFormatError, "source code 7 in frame 2"),
        ({"attrs": {"U": 1.0}}, FileFormatError, r"unknown frame attributes \['U'\]"),
        ({"attrs": {"J": float("nan")}}, FileFormatError, "attribute J must be finite"),
    ],
)
def test_frames_construction_errors(changes: dict, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        frames_with(**changes)


def trajectory_with(**changes: object) -> Trajectory:
    return Trajectory(**{**vars(make_trajectory(snapshots=True)), **changes})


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"times": np.array([0.0, 2.0, 1.0, 3.0])}, FileFormatError, "times must be increasing"),
        ({"r_edges": np.zeros(6)}, FileFormatError, r"r_edges has shape \(6,\), expected \(7,\)"),
        ({"pair_counts": np.full(6, -1)}, FileFormatError, "pair_counts must be >= 0"),
        ({"snapshot_times": None}, FileFormatError, "snapshots need snapshot_times"),
        ({"positions": np.zeros((3, 5, 3))}, FileFormatError, r"positions has shape \(3, 5, 3\)"),
        ({"snapshots": np.ones((2, 2, 3, 5, 3))}, StateError, "snapshots are not unit length"),
        ({"attrs": {"format": "x"}}, FileFormatError, "reserved"),
        ({"attrs": {"seeds": {"a": 1}}}, FileFormatError, "attribute seeds must be"),
    ],
)
def test_trajectory_construction_errors(
    changes: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        trajectory_with(**changes)


# ---------------------------------------------------------------- streamed recording


def test_recorder_streams_snapshots_then_finishes_a_valid_trajectory(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    positions = rng.uniform(0, 5, size=(5, 3))
    path = tmp_path / "run.traj.h5"
    rec = TrajectoryRecorder(path, positions, replicas=3)
    spins = [unit_vectors(rng, 3, 5) for _ in range(4)]
    for k, s in enumerate(spins):
        rec.append(0.5 * k, s)
    assert not path.exists() and rec.n_snapshots == 4  # nothing at the target until finish
    assert rec.finish(make_trajectory()) == path
    back = read_trajectory(path)
    assert back.snapshots.shape == (4, 1, 3, 5, 3)
    np.testing.assert_allclose(back.snapshots[:, 0], np.stack(spins), atol=1e-7)
    np.testing.assert_array_equal(back.snapshot_times, [0.0, 0.5, 1.0, 1.5])
    np.testing.assert_array_equal(back.positions[0], positions)
    np.testing.assert_array_equal(back.corr, make_trajectory().corr)
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_recorder_errors_and_abort_keep_the_target_untouched(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    positions = rng.uniform(0, 5, size=(5, 3))
    path = tmp_path / "run.traj.h5"
    path.write_text("user data")
    with pytest.raises(OutputExistsError):
        TrajectoryRecorder(path, positions, replicas=1)
    rec = TrajectoryRecorder(path, positions, replicas=1, force=True)
    with pytest.raises(StateError, match="shape"):
        rec.append(0.0, unit_vectors(rng, 2, 5))
    bad = unit_vectors(rng, 1, 5)
    bad[0, 2, 1] = np.nan
    with pytest.raises(StateError, match="NaN"):
        rec.append(0.0, bad)
    rec.append(1.0, unit_vectors(rng, 1, 5))
    with pytest.raises(StateError, match="increase"):
        rec.append(1.0, unit_vectors(rng, 1, 5))
    rec.abort()
    assert path.read_text() == "user data" and len(list(tmp_path.iterdir())) == 1
    empty = TrajectoryRecorder(tmp_path / "empty.h5", positions, replicas=1)
    with pytest.raises(StateError, match="no snapshot"):
        empty.finish(make_trajectory())
    assert len(list(tmp_path.iterdir())) == 1


def test_recorder_keeps_the_snapshots_when_finishing_fails(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    rec = TrajectoryRecorder(tmp_path / "run.h5", rng.uniform(0, 5, size=(5, 3)), replicas=1)
    rec.append(0.0, unit_vectors(rng, 1, 5))
    broken = make_trajectory()
    broken.times = broken.times[::-1].copy()  # not increasing: invalid observables
    with pytest.raises(FileFormatError, match="snapshots are kept in") as info:
        rec.finish(broken)
    assert not (tmp_path / "run.h5").exists()
    kept = Path(str(info.value).rsplit("kept in ", 1)[1])
    with h5py.File(kept) as f:
        assert f["snapshots"].shape == (1, 1, 1, 5, 3)


def test_a_state_is_a_frames_file_or_the_last_snapshot_of_a_trajectory(tmp_path: Path) -> None:
    frames = make_frames()
    write_frames(tmp_path / "f.h5", frames)
    assert_same_frames(read_state(tmp_path / "f.h5"), frames)
    traj = make_trajectory(snapshots=True)
    traj.attrs["J"] = 3.0
    write_trajectory(tmp_path / "t.h5", traj)
    state = read_state(tmp_path / "t.h5")
    last = traj.snapshots[-1, 0].astype(np.float64)  # configuration 0 at the last time
    np.testing.assert_allclose(state.spins, last, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(state.spins, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(state.positions, np.repeat(traj.positions[:1], 3, axis=0))
    assert state.box.tolist() == [5.0] * 3 and state.attrs["J"] == 3.0


def test_a_trajectory_without_snapshots_is_not_a_state(tmp_path: Path) -> None:
    write_trajectory(tmp_path / "t.h5", make_trajectory())
    with pytest.raises(FileFormatError, match=r"t\.h5 has no spin snapshots to continue from"):
        read_state(tmp_path / "t.h5")
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with pytest.raises(FileFormatError, match="is not an sdglass-frames file"):
        read_state(tmp_path / "other.h5")
    with pytest.raises(FileFormatError, match="no such file"):
        read_state(tmp_path / "none.h5")


def test_file_format_names_sdglass_files_and_nothing_else(tmp_path: Path) -> None:
    write_frames(tmp_path / "f.h5", make_frames())
    write_trajectory(tmp_path / "t.h5", make_trajectory())
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["format"] = "something-else"
    with h5py.File(tmp_path / "plain.h5", "w") as f:
        f["x"] = np.zeros(3)
    (tmp_path / "text.h5").write_text("not hdf5")
    (tmp_path / "dir.h5").mkdir()
    found = {
        name: file_format(tmp_path / name)
        for name in ("f.h5", "t.h5", "other.h5", "plain.h5", "text.h5", "dir.h5", "none.h5")
    }
    assert found == {
        "f.h5": FRAMES_FORMAT,
        "t.h5": TRAJECTORY_FORMAT,
        **dict.fromkeys(("other.h5", "plain.h5", "text.h5", "dir.h5", "none.h5")),
    }
