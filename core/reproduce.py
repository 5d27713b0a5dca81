"""`sdglass reproduce`: the paper's figures and quantitative statements, made by the project's
own code paths (the same functions as `dos`, `dataset`, `train`, `eval` and `quench`).

Steps (each writes a figure and the HDF5 data behind it into the output folder):

* Fig. 2: J = 0 density of states, averaged over configurations, for the
  paper's caption system (N = 100, L = 5) and for its text (N = 500 in L = 5).
* Fig. 3: ML vs ED H_perp on atomic configurations no model has seen (fresh
  seeds): the shipped model, and two networks trained here on the same data
  with and without G3chi (the shipped descriptor otherwise).
* Fig. 4: C(r, t) of ED-LLG and ML-LLG (shipped model) on the same
  configurations, initial spins and noise, N = 100, at t = 1, 3, 10, 30, 100,
  300 as far as the scale runs.
* Fig. 4 continued: ML-LLG alone on the same configurations and seeds to a
  later time (ML costs little where ED would not fit the scale): C(r, t) at
  every paper time reached, and C at the first bin against t, which shows on
  what time scale the paper's early statements are reached here.
* Fig. 5: xi(t) of ML-LLG at N = 500 with the droplet fit (log t)^(1/psi).

`report.md` sets each quantitative statement of the paper beside the measured
value. The scale fixes the sizes: "quick" fits a 2-core CPU in under 30
minutes; "paper" uses the paper's ensembles and times and is meant for a GPU.
A run saves its progress in OUT/checkpoints (each finished step's values, and
the quench checkpoints of core.checkpoint); `resume` continues an interrupted
run from there, and the folder goes once the report is written.
Seeds: every step uses its own seed range (REPRODUCE_SEEDS), disjoint from the
configurations the shipped model was trained on (0-29, 100-139).
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from core import __version__
from core.checkpoint import file_digest
from core.config import ElectronConfig, LLGConfig, SystemConfig, _require
from core.errors import FileFormatError
from core.io import atomic_output, write_frames, write_trajectory

#: Every file a run writes into its folder.
OUTPUTS = (
    "fig2-dos.png", "fig2-dos.h5", "fig3-fields.png", "fig3-fields.h5", "fig3-test-frames.h5",
    "fig3-train-frames.h5", "fig4-correlation.png", "fig4-ed.h5", "fig4-ml.h5", "fig4-late.png",
    "fig4-ml-late.h5", "fig5-xi.png", "fig5-ml.h5", "report.md", "report.json",
)  # fmt: skip
#: The quench files of each step that runs dynamics (their progress: checkpoints/STEM/).
QUENCH_FILES = {
    "fig4": ("fig4-ed.h5", "fig4-ml.h5"), "fig4late": ("fig4-ml-late.h5",), "fig5": ("fig5-ml.h5",),
}  # fmt: skip
#: Ending of the picture that a partial report draws of an unfinished quench so far.
SO_FAR = "-so-far.png"
#: Folder of a run's saved progress (finished steps, quench checkpoints), inside its output.
CHECKPOINTS = "checkpoints"
#: Paper Fig. 4 times (1/(gamma t0)).
PAPER_TIMES = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0)
#: The paper's C at the first bin (r ~ r_min) for t <= 30.
PAPER_C_FIRST_BIN = -0.4
#: The paper's weak late peak lies beyond this r (ell).
PEAK_FROM = 1.2
#: First atomic seed of each step's configurations.
REPRODUCE_SEEDS = {"dos": 7000, "train": 4000, "test": 3000, "fig4": 5000, "fig5": 6000}


@dataclass(frozen=True)
class Scale:
    """Sizes of one reproduction run (see SCALES)."""

    name: str
    dos_configs: int  # per DOS system
    train_configs: int  # configurations of the G3chi comparison's training data
    test_configs: int  # fresh held-out configurations of Fig. 3
    frames_per_config: int
    relax_replicas: int
    epochs: int
    patience: int
    fig4_configs: int
    fig4_replicas: int
    fig4_t_max: float
    late_t_max: float  # Fig. 4 continued: ML-LLG alone, same configurations and seeds
    fig5_n: int
    fig5_configs: int
    fig5_replicas: int
    fig5_t_max: float
    records: int = 40
    relax_t_max: float = 100.0  # last sampling time of the training relaxations

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            if name != "name":
                _require(value > 0, f"scale {self.name}: {name} must be > 0, got {value}")
        _require(self.train_configs >= 3, "the G3chi comparison needs >= 3 training configurations")
        _require(
            self.late_t_max >= self.fig4_t_max,
            f"scale {self.name}: late_t_max must be >= fig4_t_max ({self.fig4_t_max})",
        )


SCALES = {
    "quick": Scale(
        "quick", dos_configs=20, train_configs=6, test_configs=3, frames_per_config=60,
        relax_replicas=4, epochs=40, patience=10, fig4_configs=2, fig4_replicas=4,
        fig4_t_max=30.0, late_t_max=300.0, fig5_n=500, fig5_configs=2, fig5_replicas=4,
        fig5_t_max=60.0,
    ),
    "paper": Scale(
        "paper", dos_configs=500, train_configs=10, test_configs=3, frames_per_config=250,
        relax_replicas=8, epochs=300, patience=30, fig4_configs=10, fig4_replicas=20,
        fig4_t_max=300.0, late_t_max=1000.0, fig5_n=500, fig5_configs=10, fig5_replicas=20,
        fig5_t_max=1000.0,
    ),
}  # fmt: skip


@dataclass
class Step:
    """What one step measured: figure and data files, the values for the report, seconds,
    and the machine it ran on (steps of one run may run on different machines; empty when
    not recorded). A step resumed after interruptions took several calls (machine and
    seconds of each, in `calls`): its seconds are theirs summed and `machine` names each
    machine with its calls and seconds."""

    figure: str
    data: list[str]
    values: dict[str, Any]
    seconds: float
    machine: str = ""
    calls: list[dict[str, Any]] = field(default_factory=list)


Log = Callable[[str], None]


@dataclass(frozen=True)
class Setting:
    """What the steps of one run share: its sizes, the ML model, the output folder, whether
    files may be rewritten, the log, the device and the Dask cluster (a ClusterSpec) of the
    ED work."""

    scale: Scale
    model_path: Path
    out: Path
    force: bool = False
    log: Log = print
    device: str = "cpu"
    cluster: Any = None


def _bar(total: int, desc: str, unit: str) -> tqdm:
    """A progress bar on stderr (hidden when stderr is not a terminal)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None)


def _write_h5(path: Path, arrays: dict[str, Any], attrs: dict[str, Any], force: bool) -> None:
    with atomic_output(path, force) as tmp, h5py.File(tmp, "w") as f:
        for key, value in arrays.items():
            f.create_dataset(key, data=value)
        for key, value in attrs.items():
            f.attrs[key] = value


# ----------------------------------------------------------------------------- Fig. 2


#: Bins of the Fig. 2 DOS over the lower BULK_SHARE of the states.
DOS_BINS = 300
#: Which Fig. 2 system the paper means where: its caption and its text disagree.
DOS_SOURCES = {100: "caption", 500: "text"}


def dos_step(run: Setting) -> Step:
    """J = 0 DOS for the caption's N = 100 and the text's N = 500, both in L = 5."""
    scale, out, force, log = run.scale, run.out, run.force, run.log
    import matplotlib.pyplot as plt

    from core.electrons import BULK_SHARE, density_of_states
    from core.plots import draw_dos, save_figure
    from core.system import generate_positions

    start = time.perf_counter()
    config = ElectronConfig().replace(J=0.0)  # the paper's electrons without coupling
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    arrays, values = {}, {}
    for ax, n in zip(axes, (100, 500), strict=True):
        log(f"Fig. 2: J = 0 DOS, N = {n} in L = 5, {scale.dos_configs} configurations")
        systems = [
            generate_positions(SystemConfig(n=n, box=5.0, seed=REPRODUCE_SEEDS["dos"] + c))
            for c in range(scale.dos_configs)
        ]
        dos = density_of_states(systems, config, bins=DOS_BINS, bulk_share=BULK_SHARE)
        draw_dos(ax, dos, f"N = {n}, L = 5 (density {n / 125:g}), {scale.dos_configs} configs")
        peak = dos_peak(dos.centres, dos.rho)
        at_fermi = float(np.interp(dos.fermi_level, dos.centres, dos.rho))
        values[n] = {
            "fermi_level": dos.fermi_level,
            "rho_at_fermi": at_fermi,
            "peak_energy": peak,
            "peak_minus_fermi": peak - dos.fermi_level,
            "rho_peak": float(dos.rho.max()),
            "band": (float(dos.edges[0]), float(dos.edges[-1])),
        }
        arrays[f"n{n}/edges"], arrays[f"n{n}/rho"] = dos.edges, dos.rho
        arrays[f"n{n}/fermi_level"] = dos.fermi_level
    fig.tight_layout()
    save_figure(fig, out / "fig2-dos.png", force)
    _write_h5(out / "fig2-dos.h5", arrays, {"configs": scale.dos_configs}, force)
    return Step("fig2-dos.png", ["fig2-dos.h5"], values, time.perf_counter() - start)


# ----------------------------------------------------------------------------- Fig. 3


def fields_step(run: Setting) -> Step:
    """Shipped model and networks trained with / without G3chi, on fresh held-out
    configurations. The ED frames are labelled one configuration after another, or as tasks
    on the run's cluster. Each configuration's frames and each trained network are kept in
    the run's checkpoints folder until the run is done, so a resumed run reads them back."""
    scale, out, force, log, device = run.scale, run.out, run.force, run.log, run.device
    import matplotlib.pyplot as plt

    from core.checkpoint import Checkpoints
    from core.dataset import DatasetConfig, generate_dataset
    from core.evaluation import draw_error_histogram, draw_parity, hperp_metrics, predict_frames
    from core.modelfile import ModelCard, load_model, save_model
    from core.plots import save_figure
    from core.training import TrainConfig, train

    start = time.perf_counter()
    shipped, card = load_model(run.model_path)
    progress = out / CHECKPOINTS
    progress.mkdir(parents=True, exist_ok=True)

    def frames(seed: int, configs: int, what: str, name: str):
        checkpoints = Checkpoints(progress / name)
        saved = len(list(checkpoints.directory.glob("config-*.h5")))
        log(
            f"Fig. 3: ED-labelled {what}: {configs} configurations x {scale.frames_per_config}"
            + (f" ({saved} read back)" if saved else "")
        )
        cfg = DatasetConfig(
            system=SystemConfig(n=100, seed=seed),
            configs=configs,
            spins_per_config=scale.frames_per_config,
            replicas=scale.relax_replicas,
            relax=replace(DatasetConfig().relax, seed=seed),
            t_max=scale.relax_t_max,
            device=device,
        )
        with _bar(configs * cfg.work_per_config, "ED frames", "unit") as bar:
            return generate_dataset(cfg, bar.update, run.cluster, checkpoints)

    def trained(label: str, chi: bool, name: str):
        saved = progress / name
        if saved.exists():
            log(f"Fig. 3: {label} read back from {saved}")
            return load_model(saved)[0]
        log(f"Fig. 3: training {label} ({scale.epochs} epochs at most)")
        cfg = TrainConfig(
            arch=shipped.arch, spec=shipped.spec.replace(include_chi=chi),
            epochs=scale.epochs, patience=scale.patience, folds=1, device=device,
        )  # fmt: skip
        partial_run = Checkpoints(progress / saved.stem)  # epochs of an unfinished network
        with _bar(scale.epochs, "epochs", "epoch") as bar:
            model = train(data, cfg, lambda _: bar.update(1), partial_run).model
        save_model(saved, model, ModelCard(dict(card.physical)), force=True)
        return model

    test = frames(REPRODUCE_SEEDS["test"], scale.test_configs, "held-out frames", "fig3-test")
    data = frames(REPRODUCE_SEEDS["train"], scale.train_configs, "training frames", "fig3-train")
    write_frames(_fresh(out / "fig3-test-frames.h5", force), test)
    write_frames(_fresh(out / "fig3-train-frames.h5", force), data)
    models = {
        "shipped model": shipped,
        "trained here, with G3chi": trained("the network with G3chi", True, "fig3-chi.safetensors"),
        "trained here, without G3chi": trained(
            "the network without G3chi", False, "fig3-no-chi.safetensors"
        ),
    }
    ed = np.cross(test.spins, test.fields)
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 8.4))
    values, arrays = {}, {"ed_hperp": ed, "source": test.source}
    for k, (label, model) in enumerate(models.items()):
        ml, energy = predict_frames(model, test, device)
        metrics = hperp_metrics(ml, ed, energy, test.energy)
        by_source = {
            name: hperp_metrics(ml[sel], ed[sel], energy[sel], test.energy[sel])["rmse_hperp"]
            for code, name in enumerate(test.source_labels)
            if (sel := test.source == code).any()
        }
        values[label] = {**metrics, "rmse_by_source": by_source}
        arrays[f"ml_hperp/{k}"] = ml
        draw_parity(axes[0, k], ml, ed, test.source, test.source_labels)
        axes[0, k].set_title(f"{label}\nrmse {metrics['rmse_hperp']:.2e} t0", fontsize=9)
        draw_error_histogram(axes[1, k], ml, ed, test.source, test.source_labels)
    fig.suptitle(
        f"ML vs ED H_perp on {scale.test_configs} configurations no model has seen "
        f"(N = 100, {test.n_frames} frames)",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, out / "fig3-fields.png", force)
    labels = json.dumps(list(models))
    _write_h5(out / "fig3-fields.h5", arrays, {"models": labels}, force)
    data_files = ["fig3-fields.h5", "fig3-test-frames.h5", "fig3-train-frames.h5"]
    return Step("fig3-fields.png", data_files, values, time.perf_counter() - start)


def _fresh(path: Path, force: bool) -> Path:
    """path, refused when it exists unless force (then removed first)."""
    from core.errors import OutputExistsError

    if path.exists():
        if not force:
            raise OutputExistsError(path)
        path.unlink()
    return path


# ----------------------------------------------------------------------------- Fig. 4 and 5


def _ensemble(engine, n, seed, configs, replicas, t_max, scale, model_path, device):
    """The quench of a figure: atomic and noise seeds from `seed`; the ML engine packs all
    configurations into one batched call (what fills a GPU)."""
    from core.quench import QuenchConfig

    ml = engine == "ml"
    return QuenchConfig(
        system=SystemConfig(n=n, seed=seed), llg=LLGConfig(seed=seed), engine=engine,
        configs=configs, replicas=replicas, t_max=t_max, n_records=scale.records,
        model_path=str(model_path) if ml else None, device=device, pack=configs if ml else 1,
    )  # fmt: skip


def _quench(qc, path: Path, force: bool, log: Log, what: str, cluster=None):
    """One figure's quench (its configurations on `cluster` when given); its progress is
    saved under the run's checkpoints folder."""
    from core.checkpoint import Checkpoints
    from core.quench import run_quench, to_trajectory

    checkpoints = Checkpoints(path.parent / CHECKPOINTS / path.stem)
    saved_pack = checkpoints.saved_pack()
    if saved_pack not in (None, qc.pack):
        # saved progress keeps its grouping (a GPU packs ED configurations, a CPU does not)
        qc = replace(qc, pack=saved_pack)
        log(f"{what}: the saved progress packs {saved_pack} configuration(s) per batch; kept")
    log(
        f"{what}: {qc.engine.upper()}-LLG, N = {qc.system.n}, {qc.configs} configurations x "
        f"{qc.replicas} replicas to t = {qc.t_max:g} ({qc.configs * qc.n_steps} steps)"
        + (f" on a {cluster.describe()}" if cluster is not None else "")
    )
    with _bar(qc.configs * qc.n_steps, f"{qc.engine.upper()}-LLG", "step") as bar:
        traj = to_trajectory(run_quench(qc, bar.update, cluster, checkpoints))
    write_trajectory(path, traj, force)
    return traj


def ed_pack(configs: int, device: str, cluster) -> int:
    """Configurations per ED batch: all of them on a GPU (one batch of Hamiltonians fills
    it), one at a time on a CPU (it diagonalizes one matrix after another anyway) or on a
    cluster (a task per configuration)."""
    return configs if device.startswith("cuda") and cluster is None else 1


def dynamics_step(run: Setting) -> Step:
    """ED-LLG and ML-LLG at N = 100 on the same configurations and seeds (paper Fig. 4).
    ED runs its configurations one by one on a CPU, as tasks on the run's cluster, or all
    packed into one batch on a GPU; ML packs them all into one batched call on the run's
    device."""
    scale, out, force, log = run.scale, run.out, run.force, run.log
    from core.plots import comparison_figure, save_figure

    start = time.perf_counter()
    seed = REPRODUCE_SEEDS["fig4"]
    runs = {}
    for engine, name in zip(("ed", "ml"), QUENCH_FILES["fig4"], strict=True):
        qc = _ensemble(
            engine, 100, seed, scale.fig4_configs, scale.fig4_replicas, scale.fig4_t_max,
            scale, run.model_path, run.device,
        )  # fmt: skip
        spread = run.cluster if engine == "ed" else None
        if engine == "ed":
            qc = replace(qc, pack=ed_pack(qc.configs, run.device, spread))
        runs[engine] = _quench(qc, out / name, force, log, "Fig. 4", spread)
    ed, ml = runs["ed"], runs["ml"]
    fig = comparison_figure(
        [ed, ml], ["ED-LLG", "ML-LLG"],
        f"C(r, t), N = 100: {scale.fig4_configs} configurations x {scale.fig4_replicas} "
        "replicas, same seeds (ED solid, ML dashed)",
        at_times=PAPER_TIMES,
    )  # fmt: skip
    save_figure(fig, out / "fig4-correlation.png", force)
    values = {
        "ed": correlation_features(ed),
        "ml": correlation_features(ml),
        "max_abs_diff": float(np.abs(ed.corr - ml.corr).max()),
    }
    return Step(
        "fig4-correlation.png", ["fig4-ed.h5", "fig4-ml.h5"], values, time.perf_counter() - start
    )


def zero_crossing(r: np.ndarray, c: np.ndarray) -> float | None:
    """Where C(r) first turns from negative to >= 0, linear between bin centres; None if never."""
    sign = np.flatnonzero((c[:-1] < 0) & (c[1:] >= 0))
    if not sign.size:
        return None
    k = sign[0]
    return float(r[k] - c[k] * (r[k + 1] - r[k]) / (c[k + 1] - c[k]))


def far_peak(r: np.ndarray, c: np.ndarray, c0: np.ndarray) -> dict[str, float] | None:
    """The largest C(r) beyond r = PEAK_FROM (where the paper sees its weak late peak), and C
    in that bin at t = 0 (c0: the sampling noise of the random start, which a bin keeps);
    None when no bin lies beyond PEAK_FROM (a box with L/2 below it)."""
    far = np.flatnonzero(r > PEAK_FROM)
    if not far.size:
        return None
    j = far[int(np.argmax(c[far]))]
    return {"r": float(r[j]), "c": float(c[j]), "c_t0": float(c0[j])}


def dos_peak(centres: np.ndarray, rho: np.ndarray) -> float:
    """Energy of the DOS peak: the first (lowest) of the tallest bins. Bins of equal counts
    tie up to the round-off of their widths, which would pick either from run to run."""
    return float(centres[np.flatnonzero(rho >= rho.max() * (1 - 1e-9))[0]])


def correlation_features(traj) -> dict[str, Any]:
    """The numbers the paper quotes about C(r, t): C at the first bin for t <= 30, the first
    zero crossing at the latest t <= 30, and the largest C beyond r = 1.2 at t >= 150."""
    from core.observables import sampling_noise

    times, corr, r = traj.times, traj.corr, traj.r_centres
    early = np.flatnonzero((times > 0) & (times <= 30 * (1 + 1e-9)))
    out: dict[str, Any] = {
        "t_max": float(times[-1]),
        "c_first_bin": {f"{times[k]:.3g}": float(corr[k, 0]) for k in early[-4:]},
        "r_first_bin": float(r[0]),
        "noise": sampling_noise(corr),
    }
    if early.size:
        out["zero_crossing_t"] = float(times[early[-1]])
        out["zero_crossing_r"] = zero_crossing(r, corr[early[-1]])
    late = np.flatnonzero(times >= 150)
    peak = far_peak(r, corr[late[-1]], corr[0]) if late.size else None
    if peak is not None:
        out["late_peak"] = {"t": float(times[late[-1]]), **peak}
    return out


def correlation_history(traj) -> dict[str, Any]:
    """C(r, t) at each paper time the run reaches (nearest record) and at its end: C at the
    first bin, the zero crossing, the largest C beyond r = 1.2; and the first record time at
    which C at the first bin is down to the paper's early value (None if it never is)."""
    from core.plots import nearest_records

    times, corr, r = traj.times, traj.corr, traj.r_centres
    picks = sorted({*nearest_records(times, PAPER_TIMES), len(times) - 1})
    rows = [
        {
            "t": float(times[k]),
            "c_first_bin": float(corr[k, 0]),
            "zero_crossing_r": zero_crossing(r, corr[k]),
            "peak": far_peak(r, corr[k], corr[0]),
        }
        for k in picks
    ]
    reached = np.flatnonzero((times > 0) & (corr[:, 0] <= PAPER_C_FIRST_BIN))
    return {
        "r_first_bin": float(r[0]),
        "at": rows,
        "reaches_paper_value_at": float(times[reached[0]]) if reached.size else None,
    }


def late_step(run: Setting) -> Step:
    """Fig. 4 continued: ML-LLG alone on Fig. 4's configurations, spins and noise, to the
    scale's late_t_max. Its first fig4_t_max is Fig. 4's ML run again (same seeds), checked
    against ED there; beyond, only ML fits a CPU's budget."""
    scale, out, force, log = run.scale, run.out, run.force, run.log
    import matplotlib.pyplot as plt

    from core.plots import draw_correlations, nearest_records, save_figure

    start = time.perf_counter()
    qc = _ensemble(
        "ml", 100, REPRODUCE_SEEDS["fig4"], scale.fig4_configs, scale.fig4_replicas,
        scale.late_t_max, scale, run.model_path, run.device,
    )  # fmt: skip
    traj = _quench(qc, out / QUENCH_FILES["fig4late"][0], force, log, "Fig. 4 continued")
    history, features = correlation_history(traj), correlation_features(traj)
    times, r0, noise = traj.times, history["r_first_bin"], features["noise"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    picks = nearest_records(times, (*PAPER_TIMES, times[-1]))
    draw_correlations(left, traj.r_centres, traj.corr, times, float(traj.attrs["r_min"]), picks)
    left.set_title(f"C(r, t), ML-LLG, N = 100, t <= {scale.late_t_max:g}", fontsize=9)
    later = times > 0
    right.semilogx(times[later], traj.corr[later, 0], "o-", ms=3, label="this run")
    right.hlines(
        PAPER_C_FIRST_BIN, PAPER_TIMES[0], 30, colors="r", linestyles="--",
        label=f"paper: C ~ {PAPER_C_FIRST_BIN} for t <= 30",
    )  # fmt: skip
    right.axhline(0, color="0.4", lw=0.8)
    right.axhspan(-2 * noise, 2 * noise, color="0.88", label="sampling noise (2 rms of C(r, 0))")
    right.set_xlabel(r"$t$ ($1/\gamma t_0$)")
    right.set_ylabel(rf"$C(r = {r0:.2f}, t)$ (first bin)")
    right.set_title("nearest-neighbour correlation against time", fontsize=9)
    right.legend(fontsize=8, loc="center left")
    fig.suptitle(
        f"Fig. 4 continued: {scale.fig4_configs} configurations x {scale.fig4_replicas} "
        "replicas, the same seeds as Fig. 4",
        fontsize=10,
    )
    fig.tight_layout()
    save_figure(fig, out / "fig4-late.png", force)
    values = {**features, "history": history}
    return Step("fig4-late.png", ["fig4-ml-late.h5"], values, time.perf_counter() - start)


def growth_step(run: Setting) -> Step:
    """xi(t) of ML-LLG at N = 500 with the droplet fit (paper Fig. 5)."""
    scale, out, force, log = run.scale, run.out, run.force, run.log
    from core.plots import save_figure, xi_figure

    start = time.perf_counter()
    seed = REPRODUCE_SEEDS["fig5"]
    qc = _ensemble(
        "ml", scale.fig5_n, seed, scale.fig5_configs, scale.fig5_replicas, scale.fig5_t_max,
        scale, run.model_path, run.device,
    )  # fmt: skip
    traj = _quench(qc, out / QUENCH_FILES["fig5"][0], force, log, "Fig. 5")
    fit, values = droplet_values(traj)
    values.update(noise_floor_values(traj))
    title = (
        f"ML-LLG, N = {scale.fig5_n}: {scale.fig5_configs} configurations x "
        f"{scale.fig5_replicas} replicas"
    )
    save_figure(xi_figure(traj, title, fit), out / "fig5-xi.png", force)
    return Step("fig5-xi.png", ["fig5-ml.h5"], values, time.perf_counter() - start)


def _growth(times: np.ndarray, xi: np.ndarray):
    """Index of the smallest xi after t = 0 (growth can only start there) and the droplet
    fit from it on (None when fewer than 3 records follow)."""
    from core.observables import fit_droplet

    if not np.isfinite(xi[1:]).any():  # with a noise floor: nothing above it after t = 0
        return None, None
    smallest = 1 + int(np.nanargmin(xi[1:]))
    try:
        return smallest, fit_droplet(times, xi, float(times[smallest]))
    except ValueError:
        return smallest, None


def droplet_values(
    traj, t_min: float = 1.5, t_max: float | None = None
) -> tuple[Any, dict[str, Any]]:
    """The droplet fit of xi(t) on records t_min <= t <= t_max (None when fewer than 3) and
    the numbers the paper quotes about growth: psi +- error, xi at the first and last record
    and at its smallest (after t = 0; growth can only start there), the fit of the growth
    alone (from the smallest xi on; None when fewer than 3 records follow), |m| at the end."""
    from core.observables import fit_droplet

    try:
        fit = fit_droplet(traj.times, traj.xi, t_min, t_max)
    except ValueError:
        fit = None
    n = int(traj.attrs["n"])
    smallest, growth = _growth(traj.times, traj.xi)
    return fit, {
        "xi_min": float(traj.xi[smallest]),
        "xi_min_t": float(traj.times[smallest]),
        **_fit_values("growth_", growth),
        **_fit_values("", fit),
        "xi_first": float(traj.xi[1]),
        "xi_last": float(traj.xi[-1]),
        "magnetisation_last": float(traj.magnetisation[-1]),
        "random_magnetisation": 1 / math.sqrt(n),
        "t_max": float(traj.times[-1]),
    }


def _fit_values(prefix: str, fit) -> dict[str, Any]:
    """psi, psi_err and fit_range of a droplet fit (None each without one), keys prefixed."""
    return {
        f"{prefix}psi": None if fit is None else fit.psi,
        f"{prefix}psi_err": None if fit is None else fit.psi_err,
        f"{prefix}fit_range": None if fit is None else (fit.t_min, fit.t_max),
    }


def noise_floor_values(traj) -> dict[str, Any]:
    """xi with the sampling noise per bin taken off every |C| first (xi_above_noise), a
    check of whether PHYSICS.md's xi falls or stays flat only because the noise spreads
    its weight over all r: the noise, xi at the first and last record, its smallest value
    and the droplet fit of its growth from there."""
    from core.observables import sampling_noise, xi_above_noise

    xi = xi_above_noise(traj.r_edges, traj.corr)
    smallest, growth = _growth(traj.times, xi)
    return {
        "noise": sampling_noise(traj.corr),
        "floor_xi_first": float(xi[1]),
        "floor_xi_last": float(xi[-1]),
        "floor_xi_min": None if smallest is None else float(xi[smallest]),
        "floor_xi_min_t": None if smallest is None else float(traj.times[smallest]),
        **_fit_values("floor_growth_", growth),
    }


# ----------------------------------------------------------------------------- report


def _fmt(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}g}"


def psi_verdict(psi: float | None, err: float | None) -> str:
    """agrees / disagrees with 1.02, or inconclusive when the fit cannot tell (xi hardly grows
    over the fitted times, so 1/psi is near 0 and psi is ill-determined); a well-determined
    negative psi means xi falls over the fitted times."""
    if psi is None:
        return "no fit"
    if err > 0.5 * abs(psi):
        return "inconclusive"
    if psi < 0:
        return "disagrees (xi falls)"
    return "agrees" if abs(psi - 1.02) <= max(2 * err, 0.1) else "disagrees"


def fermi_on_peak(v: dict) -> bool:
    """Paper Fig. 2, "a pronounced peak in the vicinity of the Fermi level" and a nonzero
    rho(eps_F), read as: eps_F lies within the peak's half maximum, rho(eps_F) >= rho_peak / 2."""
    return v["rho_at_fermi"] > 0 and v["rho_at_fermi"] >= 0.5 * v["rho_peak"]


def dos_rows(dos: dict) -> list[tuple[str, str, str, str]]:
    """The report's Fig. 2 rows: does each system put the Fermi level on the DOS peak?"""
    return [
        (
            f"DOS peak at the Fermi level, rho(eps_F) > 0 (Fig. 2, its {DOS_SOURCES.get(n, '?')}: "
            f"N = {n} in L = 5)",
            "eps_F on the peak",
            f"rho(eps_F) = {v['rho_at_fermi']:.2f} = {v['rho_at_fermi'] / v['rho_peak']:.2f} of "
            f"the peak, which is at eps_F {v['peak_minus_fermi']:+.3f} t0",
            "agrees" if fermi_on_peak(v) else "disagrees",
        )
        for n, v in dos.items()
    ]


def dos_verdict(dos: dict) -> str:
    """Which of the caption's and the text's systems matches the paper's description."""
    matching = [n for n, v in dos.items() if fermi_on_peak(v)]
    if not matching:
        return "Neither system puts the Fermi level on the DOS peak."
    if len(matching) == len(dos):
        nearer = min(dos, key=lambda n: abs(dos[n]["peak_minus_fermi"]))
        return (
            "Both systems match the description: the Fermi level lies on the peak. The peak "
            f"maximum is nearer eps_F for N = {nearer}, the Fermi level higher on the peak for "
            f"N = {max(dos, key=lambda n: dos[n]['rho_at_fermi'] / dos[n]['rho_peak'])}; "
            "the paper's text gives no number to tell them apart."
        )
    names = ", ".join(f"N = {n} (its {DOS_SOURCES.get(n, '?')})" for n in matching)
    return f"Only {names} matches the description."


def fig4_rows(fig4: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """C(r_min) and the zero crossing, ED-LLG and ML-LLG (Fig. 4)."""
    rows = []
    for engine in ("ed", "ml"):
        f = fig4[engine]
        c = f["c_first_bin"]
        latest = list(c.items())[-1] if c else None
        measured = ", ".join(f"{v:+.3f} (t = {t})" for t, v in c.items()) or "n/a"
        ok = latest is not None and abs(latest[1] - (-0.4)) < 0.1
        rows.append((
            f"C(r_min) ~ -0.4 for t <= 30 ({engine.upper()}-LLG, N = 100, first bin r = "
            f"{f['r_first_bin']:.2f})", "-0.4", measured, "agrees" if ok else "disagrees",
        ))  # fmt: skip
    for engine in ("ed", "ml"):
        r0 = fig4[engine].get("zero_crossing_r")
        ok = r0 is not None and abs(r0 - 1.4) < 0.2
        rows.append((
            f"C(r, t) crosses zero near r ~ 1.4 ({engine.upper()}-LLG, t = "
            f"{_fmt(fig4[engine].get('zero_crossing_t'))})", "1.4", _fmt(r0),
            "agrees" if ok else ("no crossing" if r0 is None else "disagrees"),
        ))  # fmt: skip
    return rows


def late_rows(late: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The weak late peak (Fig. 4 continued)."""
    peak = late.get("late_peak")
    return [(
        "weak positive peak near r ~ 1.5 for t >= 150 (ML-LLG, N = 100, Fig. 4 continued)",
        "~1.5, C > 0",
        "not reached: the run ends at t = " + _fmt(late["t_max"]) if peak is None
        else f"C = {peak['c']:+.3f} at r = {peak['r']:.2f} (t = {peak['t']:.3g}; "
        f"{peak['c_t0']:+.3f} there at t = 0; sampling noise {late['noise']:.3f})",
        "not tested" if peak is None else peak_verdict(peak, late["noise"]),
    )]  # fmt: skip


def growth_rows(fig5: dict[str, Any], n: int) -> list[tuple[str, str, str, str]]:
    """Magnetisation and the droplet exponent (Fig. 5, N = n)."""
    psi = fig5["psi"]
    return [(
        f"magnetisation ~ 0 (ML-LLG, N = {n}, t = {_fmt(fig5['t_max'])})", "~0",
        f"|m| = {fig5['magnetisation_last']:.3f} (random spins ~{fig5['random_magnetisation']:.3f})",
        "agrees" if fig5["magnetisation_last"] < 2 * fig5["random_magnetisation"] else "disagrees",
    ), (
        f"droplet exponent psi ~ 1.02 (ML-LLG, N = {n})", "1.02",
        "no fit" if psi is None else f"{psi:.2f} +- {fig5['psi_err']:.2f} "
        f"(t in {fig5['fit_range'][0]:.3g}..{fig5['fit_range'][1]:.3g})",
        psi_verdict(psi, fig5["psi_err"]),
    ), (
        f"droplet exponent psi ~ 1.02, growth alone: fitted from the smallest xi (ML-LLG, N = {n})",
        "1.02", *growth_fit(fig5),
    ), (
        "droplet exponent psi ~ 1.02, growth alone, of xi with the sampling noise taken off "
        f"every |C| (a check of the estimator; ML-LLG, N = {n})",
        "1.02", *growth_fit(fig5, "floor_"),
    )]  # fmt: skip


def growth_fit(fig5: dict[str, Any], xi: str = "") -> tuple[str, str]:
    """(measured, verdict) of the droplet fit from the smallest xi on (Fig. 5 values), of
    PHYSICS.md's xi or, with xi = "floor_", of xi with the noise taken off |C|."""
    if f"{xi}xi_min_t" not in fig5:  # a report of an older version
        return "not computed by the version that ran this step", "n/a"
    if fig5[f"{xi}xi_min"] is None:
        return "no bin above the noise after t = 0", "no fit"
    where = f"xi smallest ({fig5[f'{xi}xi_min']:.3f}) at t = {fig5[f'{xi}xi_min_t']:.3g}"
    psi, err = fig5[f"{xi}growth_psi"], fig5[f"{xi}growth_psi_err"]
    if psi is None:
        return f"{where}: fewer than 3 records after it, no growth to fit", "no fit"
    lo, hi = fig5[f"{xi}growth_fit_range"]
    return f"{psi:.2f} +- {err:.2f} (t in {lo:.3g}..{hi:.3g}; {where})", psi_verdict(psi, err)


def field_rows(fig3: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The H_perp error of every model (Fig. 3)."""
    return [(
        f"H_perp error width ~1e-3 (Fig. 3): {label}", "~1e-3",
        f"rmse {m['rmse_hperp']:.2e} t0 ("
        + ", ".join(f"{k} {v:.2e}" for k, v in m["rmse_by_source"].items()) + ")",
        "agrees" if m["rmse_hperp"] <= 1.2e-3 else "disagrees",
    ) for label, m in fig3.items()]  # fmt: skip


def table_row(*cells: str) -> str:
    """One row of a Markdown table; a | inside a cell (|m|, |C|) is escaped, else it would
    split the cell."""
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def statements(steps: dict[str, Step], scale: Scale) -> list[tuple[str, str, str, str]]:
    """(paper statement, paper value, measured, verdict) rows of the report's table, for the
    steps that have run."""
    rows_of = {
        "fig2": dos_rows, "fig4": fig4_rows, "fig4late": late_rows,
        "fig5": lambda v: growth_rows(v, scale.fig5_n), "fig3": field_rows,
    }  # fmt: skip
    return [row for key, rows in rows_of.items() if key in steps for row in rows(steps[key].values)]


def peak_verdict(peak: dict[str, float], noise: float) -> str:
    """The paper's weak late peak: C > 0 within 0.3 of r = 1.5, standing out of the sampling
    noise: both C and its growth since t = 0 in that bin above twice the noise (the rms of
    C(r, 0) over the bins: random spins, true C = 0); a smaller positive maximum is what
    noise alone would give."""
    if peak["c"] <= 0 or abs(peak["r"] - 1.5) >= 0.3:
        return "disagrees"
    return "agrees" if min(peak["c"], peak["c"] - peak["c_t0"]) > 2 * noise else "within noise"


def history_table(history: dict[str, Any]) -> list[str]:
    """Fig. 4 continued, in numbers: one row per paper time reached, and when (if ever) C at
    the first bin is down to the paper's early value."""
    lines = [
        f"| t | C at r = {history['r_first_bin']:.2f} (first bin) | C crosses zero at r | "
        f"largest C beyond r = {PEAK_FROM} |",
        "|---|---|---|---|",
    ]
    for row in history["at"]:
        peak = row["peak"]
        far = "no bin there" if peak is None else f"{peak['c']:+.3f} at r = {peak['r']:.2f}"
        lines.append(
            f"| {row['t']:.3g} | {row['c_first_bin']:+.3f} | {_fmt(row['zero_crossing_r'])} "
            f"| {far} |"
        )
    reach, end = history["reaches_paper_value_at"], history["at"][-1]["t"]
    lines.append("")
    lines.append(
        f"C at the first bin first reaches the paper's {PAPER_C_FIRST_BIN} at t = {reach:.3g}."
        if reach is not None
        else f"C at the first bin does not reach the paper's {PAPER_C_FIRST_BIN} by t = {end:.3g}."
    )
    return lines


def psi_reason(fig5: dict[str, Any], history: dict[str, Any]) -> str:
    """Why the droplet fit of this run does not give the paper's psi (history: Fig. 4
    continued, which says when the short-range order has formed)."""
    first, last = fig5["xi_first"], fig5["xi_last"]
    reach = history["reaches_paper_value_at"]
    formed = (
        f"which takes until t ~ {reach:.3g} here (C(r_min) = {PAPER_C_FIRST_BIN}, Fig. 4 continued)"
        if reach is not None
        else f"which has not happened by t = {history['at'][-1]['t']:.3g} here (Fig. 4 continued)"
    )
    floor = (
        " With the sampling noise taken off every |C| first (a check of the estimator, the "
        f"table's last psi row), xi goes from {fig5['floor_xi_first']:.2f} to "
        f"{fig5['floor_xi_last']:.2f}."
        if "floor_xi_first" in fig5
        else ""
    )
    if last >= first:
        return (
            f"- psi. xi(t) grows only from {first:.2f} to {last:.2f} over the times this "
            "scale reaches, so (log t)^(1/psi) is fitted to a nearly flat curve and psi is "
            "ill-determined; the paper fits up to t ~ 10^3 with 200 replicas (`--scale paper`)."
            + floor
        )
    return (
        f"- psi. xi(t) falls here, from {first:.2f} to {last:.2f}. PHYSICS.md's xi = "
        "int r |C| dr / int |C| dr is set by noise at first: at the random start |C| is "
        "sampling noise spread evenly over all r. As the short-range anticorrelation grows, "
        "the weight moves to small r and xi falls. Growth as in the paper's Fig. 5 can only "
        f"show once that order has formed, {formed}, so this fit does not test psi." + floor
    )


def discussion(steps: dict[str, Step]) -> list[str]:
    """Reasons for the disagreements, with what this run measured about them (the table
    above says whether this run shows them); only for the steps that have run."""
    late = steps["fig4late"].values if "fig4late" in steps else None
    lines = []
    if "fig4" in steps:
        measured = ""
        if late is not None:
            history = late["history"]
            reach, end = history["reaches_paper_value_at"], history["at"][-1]
            measured = (
                f" In this run C at the first bin reaches {PAPER_C_FIRST_BIN} only at t = "
                f"{reach:.3g}, {reach / 30:.0f} times later than the paper's t <= 30 (Fig. 4 "
                "continued, ML-LLG on the same configurations and seeds)."
                if reach is not None
                else f" In this run C at the first bin is {end['c_first_bin']:+.3f} at t = "
                f"{end['t']:.3g} (Fig. 4 continued, ML-LLG on the same configurations and seeds)."
            )
        lines.append(
            "- C(r_min) and the zero crossing. ED-LLG and ML-LLG agree with each other (the "
            "largest difference is below), so the ML model is not the cause. On the paper's "
            "system the torque that drives the dynamics, H_perp = S x H, has components of only "
            '~0.013 t0 (PHYSICS.md "Scales"), and with alpha = 0.05 and k_B T = 0.001 '
            "correlations build up over times of order hundreds in units of 1/(gamma t0)."
            f"{measured} The likeliest reason is a different time unit or damping in the paper "
            "(for example time in units of 1/J, or a larger alpha), which its text does not "
            "state; we keep PHYSICS.md's conventions and do not tune them to match."
        )
    if "fig5" in steps and late is not None:
        fig5 = steps["fig5"].values
        if psi_verdict(fig5["psi"], fig5["psi_err"]) != "agrees":
            lines.append(psi_reason(fig5, late["history"]))
    if late is not None:
        peak = late.get("late_peak")
        if peak is None:
            lines.append("- The late positive peak (t >= 150) needs runs beyond t = 150.")
        elif peak_verdict(peak, late["noise"]) != "agrees":
            lines.append(
                f"- The late positive peak. At t = {peak['t']:.3g} the largest C beyond r = "
                f"{PEAK_FROM} is {peak['c']:+.3f} at r = {peak['r']:.2f}, against a sampling "
                f"noise of {late['noise']:.3f} per bin: larger ensembles (`--scale paper`) are "
                "needed to see a weak peak, and with the slower relaxation above the paper's "
                "t >= 150 may lie later here."
            )
    return lines


def sizes(scale: Scale) -> dict[str, tuple[str, str]]:
    """(title, sizes) of every step at this scale, in the order a run takes them."""
    return {
        "fig2": ("Fig. 2", f"{scale.dos_configs} configurations each of N = 100 and N = 500 in "
                 "L = 5"),
        "fig3": ("Fig. 3", f"N = 100; {scale.train_configs} training and {scale.test_configs} "
                 f"held-out configurations x {scale.frames_per_config} frames; at most "
                 f"{scale.epochs} epochs"),
        "fig4": ("Fig. 4", f"N = 100, {scale.fig4_configs} configurations x "
                 f"{scale.fig4_replicas} replicas, t <= {scale.fig4_t_max:g}, ED-LLG and ML-LLG"),
        "fig4late": ("Fig. 4 continued", "the same configurations and seeds, t <= "
                     f"{scale.late_t_max:g}, ML-LLG"),
        "fig5": ("Fig. 5", f"N = {scale.fig5_n}, {scale.fig5_configs} configurations x "
                 f"{scale.fig5_replicas} replicas, t <= {scale.fig5_t_max:g}, ML-LLG"),
    }  # fmt: skip


def saved_progress(out: Path, key: str) -> str:
    """How far the quenches of an unfinished step got, from their saved progress: e.g.
    " (saved: ED-LLG 57 %)"; "" when none has any."""
    from core.checkpoint import Checkpoints

    shares = []
    for name in QUENCH_FILES.get(key, ()):
        saved = Checkpoints(out / CHECKPOINTS / Path(name).stem).saved_steps()
        if saved is not None:
            engine, done, total = saved
            shares.append(f"{engine.upper()}-LLG {math.floor(100 * done / total)} %")
    return f" (saved: {', '.join(shares)})" if shares else ""


def progress_pictures(out: Path, key: str) -> list[str]:
    """Report lines with a picture of what each saved quench of an unfinished step has
    recorded so far (OUT/STEM-so-far.png, C(r, t) and xi(t))."""
    from core.checkpoint import Checkpoints
    from core.plots import quench_figure, save_figure
    from core.quench import saved_trajectory

    lines = []
    for name in QUENCH_FILES.get(key, ()):
        checkpoints = Checkpoints(out / CHECKPOINTS / Path(name).stem)
        if checkpoints.saved_steps() is None:
            continue
        traj = saved_trajectory(checkpoints)
        what, picture = f"{str(traj.attrs['engine']).upper()}-LLG", Path(name).stem + SO_FAR
        fig = quench_figure(traj, f"{what} so far: {traj.attrs['partial']}")
        save_figure(fig, out / picture, force=True)
        lines += ["", f"{what} so far ({traj.attrs['partial']}):", "", f"![{what}]({picture})"]
    return lines


def write_report(out: Path, scale: Scale, steps: dict[str, Step], force: bool) -> Path:
    """report.md: what ran (and where), the figures, and the statement table; a run with
    steps still to do gets a report of the finished ones that says how far the others got
    and how to continue."""
    table = sizes(scale)
    progress = {key: saved_progress(out, key) for key in table if key not in steps}
    pending = [title + progress[key] for key, (title, _) in table.items() if key in progress]
    lines = [
        f"# Reproduction of Shi, Zhang and Chern (2023): scale `{scale.name}`",
        "",
        "Made by `sdglass reproduce --scale " + scale.name + "`; every number below was "
        "measured in this run. Sizes of this scale:",
        "",
        "| step | sizes | seconds | ran on |",
        "|---|---|---|---|",
    ]
    for key, (title, size) in table.items():
        step = steps.get(key)
        if step is not None:
            done = f"{step.seconds:.0f} | {step.machine or 'not recorded'}"
        else:
            done = f"in progress{progress[key]} |" if progress[key] else "not run yet |"
        lines.append(f"| {title} | {size} | {done} |")
    lines += [
        "",
        "The paper's ensembles are 10 configurations x 20 replicas, N = 500, t up to ~10^3.",
    ]
    moved = [table[key][0] for key, step in steps.items() if len(device_kinds(step.calls)) > 1]
    if moved:
        lines += [
            "",
            f"{', '.join(moved)} ran on more than one kind of device. A quench resumed on "
            "another kind continues its noise from a seed taken from the saved state: the same "
            "statistics, not the numbers of an uninterrupted run on one device.",
        ]
    if pending:
        lines += [
            "",
            f"**Partial run.** Still to run: {', '.join(pending)}. The progress is kept in "
            f"`{CHECKPOINTS}/`; `sdglass reproduce --scale {scale.name} -o DIR --resume` "
            "continues in this folder (with `--device cuda` on a GPU) and rewrites this report.",
        ]
    for name in (name for names in QUENCH_FILES.values() for name in names):
        # an earlier report's picture: drawn again below while its quench is unfinished
        (out / (Path(name).stem + SO_FAR)).unlink(missing_ok=True)
    for key, (title, _) in table.items():
        if progress.get(key):
            lines += ["", f"## {title}: the saved progress so far"]
            lines += progress_pictures(out, key)
    lines += [
        "",
        "## Quantitative statements",
        "",
        "| paper | paper value | measured here | verdict |",
        "|---|---|---|---|",
    ]
    lines += [table_row(*row) for row in statements(steps, scale)]
    if "fig2" in steps:
        dos = steps["fig2"].values
        lines += [
            "",
            "## Fig. 2: density of states at J = 0",
            "",
            f"![DOS]({steps['fig2'].figure})",
            "",
            "| system | Fermi level (t0) | rho(eps_F) | DOS peak at (t0) | peak - eps_F |",
            "|---|---|---|---|---|",
        ]
        for n, v in dos.items():
            lines.append(
                f"| N = {n}, L = 5 | {v['fermi_level']:.3f} | {v['rho_at_fermi']:.3f} | "
                f"{v['peak_energy']:.3f} | {v['peak_minus_fermi']:+.3f} |"
            )
        lines += [
            "",
            "The paper describes a pronounced DOS peak in the vicinity of the Fermi level and a "
            "nonzero rho(eps_F); its caption says N = 100 in L = 5, its text N = 500 in L = 5. "
            "Criterion here: the Fermi level lies within the peak's half maximum. "
            + dos_verdict(dos),
        ]
    reasons = discussion(steps)
    if reasons:
        lines += ["", "## Where this run disagrees with the paper, and the likeliest reasons", ""]
        lines += reasons
    if "fig3" in steps:
        lines += ["", f"## Fig. 3: ML vs ED H_perp\n\n![fields]({steps['fig3'].figure})"]
    if "fig4" in steps:
        lines += [
            "",
            f"## Fig. 4: C(r, t), ED-LLG and ML-LLG\n\n![C(r,t)]({steps['fig4'].figure})",
            "",
            f"Largest |C_ED - C_ML| over all bins and record times: "
            f"{steps['fig4'].values['max_abs_diff']:.4f} (the sampling noise of C per bin: "
            f"{steps['fig4'].values['ed']['noise']:.4f}).",
        ]
    if "fig4late" in steps:
        lines += [
            "",
            f"## Fig. 4 continued: ML-LLG to t = {scale.late_t_max:g}",
            "",
            f"![C(r,t) at later times]({steps['fig4late'].figure})",
            "",
            *history_table(steps["fig4late"].values["history"]),
        ]
    if "fig5" in steps:
        lines += ["", f"## Fig. 5: xi(t), ML-LLG\n\n![xi]({steps['fig5'].figure})"]
    lines += ["", "## Data", ""]
    for step in steps.values():
        lines += [f"- [`{name}`]({name})" for name in step.data]
    path = out / "report.md"
    with atomic_output(path, force) as tmp:
        Path(tmp).write_text("\n".join(lines) + "\n")
    values = {k: s.values for k, s in steps.items()}
    with atomic_output(out / "report.json", force) as tmp:
        Path(tmp).write_text(json.dumps(values, indent=1, default=str) + "\n")
    return path


#: Every step of a run, in the order it takes them (the keys of `steps`).
TASKS: dict[str, Callable[[Setting], Step]] = {
    "fig2": dos_step, "fig3": fields_step, "fig4": dynamics_step, "fig4late": late_step,
    "fig5": growth_step,
}  # fmt: skip


def reproduce(
    scale: Scale,
    out: str | Path,
    model_path: str | Path,
    force: bool = False,
    log: Log = print,
    device: str = "cpu",
    resume: bool = False,
    cluster=None,
    steps: Sequence[str] | None = None,
) -> Path:
    """The steps (keys of TASKS; default all) in order on `device`, then report.md; returns
    its path. Refuses before any work when a file it would write exists, unless force
    (start afresh) or resume (continue an interrupted run of the same scale and model:
    finished steps are read back from OUT/checkpoints, an unfinished quench continues from
    its last save). A run of some steps writes a report of every finished step and keeps
    its progress, so that a later resume, on this machine or another one (say, the
    dynamics on a GPU), runs the rest. cluster (a ClusterSpec) spreads the ED configurations
    of Figs. 3 and 4 over Dask workers."""
    from core.errors import OutputExistsError
    from core.quench import QuenchConfig, load_quench_model

    chosen = list(TASKS) if steps is None else list(steps)
    unknown = sorted(set(chosen) - set(TASKS))
    _require(not unknown, f"unknown reproduction steps {unknown}; the steps are {list(TASKS)}")
    _require(bool(chosen), "choose at least one reproduction step")
    out = Path(out)
    _require(not out.exists() or out.is_dir(), f"output folder {out} exists and is not a directory")
    progress = out / CHECKPOINTS
    existing = [out / name for name in OUTPUTS if (out / name).exists()]
    if force and not resume:
        shutil.rmtree(progress, ignore_errors=True)  # afresh: an earlier run's progress goes
    elif not resume and existing:
        raise OutputExistsError(existing[0])
    elif resume and existing and not progress.is_dir():
        if (out / "report.md").exists():  # finished (a time-limited loop may ask again)
            log(f"{out} holds a finished run: nothing to resume (--force redoes it)")
            return out / "report.md"
        raise FileFormatError(
            f"{out} holds files of a run but not its saved progress: use --force to redo it"
        )
    model_path = Path(model_path)
    # a model for other electrons fails here, before any work, not at Fig. 4
    load_quench_model(QuenchConfig(engine="ml", model_path=str(model_path)))
    _claim(progress, {"scale": asdict(scale), "model_sha256": file_digest(model_path),
                      "version": __version__})  # fmt: skip
    run = Setting(scale, model_path, out, force or resume, log, device, cluster)
    dynamics = [key for key in QUENCH_FILES if key in chosen and _finished(run, key) is None]
    if scale.name == "paper" and dynamics and not device.startswith("cuda"):
        log(
            f"note: the paper scale's dynamics ({', '.join(dynamics)}) are meant for a GPU and "
            "take hours to days on a CPU; --device cuda runs them there, and --steps fig2 fig3 "
            "runs the steps that suit a CPU"
        )
    ran = {key: _resumable(run, key, task) for key, task in TASKS.items() if key in chosen}
    # the other steps as saved now: another process (`--steps`) may have finished some meanwhile
    done = {key: ran[key] if key in ran else _finished(run, key) for key in TASKS}
    finished = {key: step for key, step in done.items() if step is not None}
    report = write_report(out, scale, finished, run.force)
    if len(finished) == len(TASKS):
        shutil.rmtree(progress, ignore_errors=True)  # complete: the progress is no longer needed
    else:
        log(
            "steps still to run: "
            + ", ".join(k + saved_progress(out, k) for k in TASKS if k not in finished)
            + f"; the progress stays in {progress} (--resume continues)"
        )
    return report


def _claim(progress: Path, run: dict) -> None:
    """Mark the progress folder as this run's (scale, model, sdglass version), or refuse
    one left by another run."""
    path = progress / "run.json"
    if path.exists():
        try:
            saved = json.loads(path.read_text())
        except ValueError:
            raise FileFormatError(f"{path}: not a reproduction run's record") from None
        if saved != run:
            raise FileFormatError(
                f"{progress} holds the progress of a run of another scale, model or sdglass "
                "version: use --force to start afresh"
            )
        return
    progress.mkdir(parents=True, exist_ok=True)
    _write_json(path, run)


def _finished(run: Setting, key: str) -> Step | None:
    """The step as saved by an earlier session of this run (its files all present), or None."""
    out = run.out
    path = out / CHECKPOINTS / f"{key}.json"
    if not path.exists():
        return None
    try:
        step = Step(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        raise FileFormatError(f"{path}: not a saved reproduction step") from None
    if not all((out / name).exists() for name in (step.figure, *step.data)):
        return None
    step.values = _int_keys(step.values)
    return step


def _resumable(run: Setting, key: str, task: Callable[[Setting], Step]) -> Step:
    """A step read back from an earlier session of this run, else computed (recording the
    machine and the seconds of this and of any interrupted earlier calls) and saved for
    later sessions."""
    from core.bench import hardware

    step = _finished(run, key)
    if step is not None:
        run.log(f"{key}: done in an earlier session of this run, read back")
        return step
    ledger = run.out / CHECKPOINTS / f"{key}-calls.json"
    calls, start = _calls(ledger), time.perf_counter()
    call = {"machine": hardware(run.device), "device": run.device}
    try:
        step = task(run)
    except BaseException:  # interrupted (or failed): its time still counts for the step
        _write_json(ledger, [*calls, {**call, "seconds": time.perf_counter() - start}])
        raise
    step.calls = [*calls, {**call, "seconds": step.seconds}]
    step.seconds = sum(c["seconds"] for c in step.calls)
    step.machine = machines(step.calls)
    _write_json(run.out / CHECKPOINTS / f"{key}.json", asdict(step))
    return step


def _calls(path: Path) -> list[dict[str, Any]]:
    """The earlier calls of a step (machine, device, seconds) saved at `path`; [] when none."""
    if not path.exists():
        return []
    try:
        calls = json.loads(path.read_text())
        return [
            {
                "machine": str(c["machine"]),
                "device": str(c["device"]),
                "seconds": float(c["seconds"]),
            }
            for c in calls
        ]
    except (ValueError, TypeError, KeyError):
        raise FileFormatError(f"{path}: not a list of a step's calls") from None


def _write_json(path: Path, value: Any) -> None:
    with atomic_output(path, force=True) as tmp:
        Path(tmp).write_text(json.dumps(value) + "\n")


def device_kinds(calls: list[dict[str, Any]]) -> set[str]:
    """The kinds of device (cpu, cuda) a step's calls ran on."""
    return {call["device"].split(":")[0] for call in calls}


def machines(calls: list[dict[str, Any]]) -> str:
    """The 'ran on' of a step: its one machine, or each machine with its calls and seconds."""
    if len(calls) == 1:
        return calls[0]["machine"]
    share: dict[str, list[float]] = {}
    for call in calls:
        share.setdefault(call["machine"], []).append(call["seconds"])
    return "; ".join(
        f"{name} ({len(secs)} call{'s' if len(secs) > 1 else ''}, {sum(secs):.0f} s)"
        for name, secs in share.items()
    )


def _int_keys(values: dict) -> dict:
    """JSON keeps object keys as text: give back the whole-number keys (Fig. 2's N)."""
    return {int(k) if k.isdigit() else k: v for k, v in values.items()}
