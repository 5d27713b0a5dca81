"""Training on ED-labelled frames (PHYSICS.md "Behler-Parrinello model", paper Eq. 19).

Loss (paper Eq. 19, as means so that its size does not depend on the data size):

    L = mu_H mean_{frames, i} |H_perp,i^ED - H_perp,i^ML|^2
      + mu_E mean_{frames} ((E^ED - E^ML) / N)^2,      H_perp = S x H

The network is trained with Adam (lr 1e-3) and a ReduceLROnPlateau schedule on
the training loss; ML fields come from autograd with create_graph=True through
the descriptor. Frames are batched per atomic configuration (B, N, 3) whose
geometry is built once. Splits are by atomic configuration, never by frame:
`test_configs` configurations are held out for the final metrics; the rest is
cut into `folds` folds for cross-validation (early stopping on the validation
fold keeps the best weights); the final model is then trained on all
non-held-out configurations for the mean best epoch of the folds. With folds = 1
the final model early-stops on `val_configs` configurations instead.

The pairwise baseline (arch.kind "pairwise") E = sum_{i<j} J(R_ij) S_i.S_j + N b
with J(R) = 2 sum_m a_m F2(R; d_m, w) is linear in a_m and b: it is fitted by
linear least squares on the same loss, in float64.
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.bench import hardware
from core.checkpoint import (
    Checkpoints,
    TrainingCheckpoint,
    TrainingState,
    file_digest,
    safe_points,
)
from core.config import ElectronConfig, _require
from core.dataset import configuration_index
from core.descriptor import DescriptorGeometry, DescriptorSpec, build_geometry, features
from core.errors import SdglassError
from core.evaluation import (
    check_labelled,
    cross,
    frame_groups,
    hperp_metrics,
    model_fields,
    predict,
)
from core.io import Frames
from core.model import Architecture, EnergyModel, physical_parameters
from core.modelfile import ModelCard

DTYPES = {"float32": torch.float32, "float64": torch.float64}
#: Frames per configuration used to estimate the feature mean and scale.
STANDARDISATION_FRAMES = 32


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (module docstring). mu_h, mu_e: weights of Eq. 19; lr: Adam step;
    batch_size: frames per step (one configuration); epochs: most epochs per run; patience:
    epochs without a better validation loss before stopping (the LR halves after patience // 3
    epochs without a better training loss); test_configs, val_configs: held-out counts
    (None: 20 %, at least 1); dtype: network precision (energies always float64); time_limit:
    seconds after which a run stops at the end of an epoch (None: no limit), keeping the best
    weights as early stopping does."""

    arch: Architecture = field(default_factory=Architecture)
    spec: DescriptorSpec = field(default_factory=DescriptorSpec)
    epochs: int = 300
    patience: int = 30
    mu_h: float = 1.0
    mu_e: float = 0.01
    lr: float = 1e-3
    batch_size: int = 16
    folds: int = 5
    test_configs: int | None = None
    val_configs: int | None = None
    time_reversal_augment: bool = False
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    time_limit: float | None = None

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _require(self.patience >= 1, f"patience must be >= 1, got {self.patience}")
        for name in ("mu_h", "mu_e"):
            value = getattr(self, name)
            _require(math.isfinite(value) and value >= 0, f"{name} must be >= 0, got {value}")
        _require(self.mu_h + self.mu_e > 0, "mu_h and mu_e must not both be 0")
        _require(math.isfinite(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr}")
        _require(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _require(self.folds >= 1, f"folds must be >= 1, got {self.folds}")
        for name in ("test_configs", "val_configs"):
            value = getattr(self, name)
            _require(value is None or value >= 1, f"{name} must be >= 1, got {value}")
        _require(self.dtype in DTYPES, f"dtype must be one of {sorted(DTYPES)}, got {self.dtype}")
        _require(
            self.time_limit is None or (math.isfinite(self.time_limit) and self.time_limit > 0),
            f"time_limit must be > 0 seconds, got {self.time_limit}",
        )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k not in ("arch", "spec")}
        return {"arch": self.arch.to_dict(), **out}


# --------------------------------------------------------------------------- data


@dataclass
class ConfigData:
    """Frames of one atomic configuration as tensors: geometry built once, spins (F, N, 3),
    ED H_perp = S x H (F, N, 3), ED energy (F,) float64, source codes (F,)."""

    config_id: int
    geometry: DescriptorGeometry
    spins: torch.Tensor
    hperp: torch.Tensor
    energy: torch.Tensor
    source: np.ndarray

    @property
    def n_frames(self) -> int:
        return int(self.spins.shape[0])

    @property
    def n_atoms(self) -> int:
        return int(self.spins.shape[1])

    def time_reversed(self) -> ConfigData:
        """Doubled with -S frames: fields -H, same energy and H_perp = (-S) x (-H) = S x H."""
        return replace(
            self,
            spins=torch.cat([self.spins, -self.spins]),
            hperp=torch.cat([self.hperp, self.hperp]),
            energy=torch.cat([self.energy, self.energy]),
            source=np.concatenate([self.source, self.source]),
        )


def time_reversal_augment(frames: Frames) -> Frames:
    """Frames followed by their time-reversed copies: -S with fields -H and the same energy."""
    check_labelled(frames)
    return Frames(
        positions=np.concatenate([frames.positions, frames.positions]),
        box=np.concatenate([frames.box, frames.box]),
        spins=np.concatenate([frames.spins, -frames.spins]),
        fields=np.concatenate([frames.fields, -frames.fields]),
        energy=np.concatenate([frames.energy, frames.energy]),
        source=None if frames.source is None else np.concatenate([frames.source] * 2),
        source_labels=frames.source_labels,
        attrs=dict(frames.attrs),
    )


def prepare(
    frames: Frames, spec: DescriptorSpec, dtype: torch.dtype = torch.float32, device: str = "cpu"
) -> list[ConfigData]:
    """One ConfigData per atomic configuration (geometry built once each)."""
    check_labelled(frames)
    source = frames.source if frames.source is not None else np.zeros(frames.n_frames, np.int8)
    out = []
    for c, members, system in frame_groups(frames):
        spins = torch.as_tensor(frames.spins[members])
        hperp = cross(spins, torch.as_tensor(frames.fields[members]))
        out.append(
            ConfigData(
                config_id=c,
                geometry=build_geometry(system, spec, device, dtype),
                spins=spins.to(device=device, dtype=dtype),
                hperp=hperp.to(device=device, dtype=dtype),
                energy=torch.as_tensor(frames.energy[members], device=device),
                source=source[members],
            )
        )
    return out


def split_configurations(
    ids: list[int], test: int | None, folds: int, val: int | None, seed: int
) -> tuple[list[int], list[list[int]]]:
    """Held-out test ids and the folds of the rest, shuffled by seed; with folds = 1 the
    two "folds" are the training and the validation ids. Never splits a configuration."""
    n = len(ids)
    n_test = max(1, round(0.2 * n)) if test is None else test
    rest = n - n_test
    _require(
        n_test < n, f"need more configurations than the {n_test} held out for testing, got {n}"
    )
    order = [ids[k] for k in np.random.default_rng(seed).permutation(n)]
    test_ids, rest_ids = sorted(order[:n_test]), order[n_test:]
    if folds == 1:
        n_val = max(1, round(0.2 * rest)) if val is None else val
        _require(
            n_val < rest,
            f"{rest} configuration(s) left after the test set: too few for {n_val} validation "
            f"configuration(s) plus training",
        )
        return test_ids, [sorted(rest_ids[n_val:]), sorted(rest_ids[:n_val])]
    _require(
        folds <= rest,
        f"{folds} folds need at least {folds} configurations besides the {n_test} held out; "
        f"the data has {n} in all",
    )
    return test_ids, [sorted(int(x) for x in part) for part in np.array_split(rest_ids, folds)]


# --------------------------------------------------------------------------- loss


def batch_loss(
    model: EnergyModel,
    data: ConfigData,
    idx: torch.Tensor | slice,
    mu_h: float,
    mu_e: float,
    create_graph: bool = True,
) -> tuple[torch.Tensor, float]:
    """Paper Eq. 19 on frames idx of one configuration; also the sum of squared H_perp errors."""
    spins = data.spins[idx]
    h, energy = model_fields(model, data.geometry, spins, create_graph)
    dh = cross(spins, h) - data.hperp[idx]
    loss_h = (dh**2).sum(-1).mean().double()
    loss_e = (((data.energy[idx] - energy) / data.n_atoms) ** 2).mean()
    return mu_h * loss_h + mu_e * loss_e, float((dh.detach().double() ** 2).sum())


def validate(
    model: EnergyModel, data: list[ConfigData], mu_h: float, mu_e: float, batch: int = 64
) -> tuple[float, float]:
    """Mean loss (Eq. 19) and rmse_hperp over all frames of the given configurations."""
    loss = sq = count = 0.0
    for d in data:
        for start in range(0, d.n_frames, batch):
            sl = slice(start, start + batch)
            value, s = batch_loss(model, d, sl, mu_h, mu_e, create_graph=False)
            k = d.spins[sl].shape[0]
            loss += float(value.detach()) * k
            sq += s
            count += k
    n_components = sum(d.n_frames * d.n_atoms * 3 for d in data)
    return loss / count, math.sqrt(sq / n_components)


# --------------------------------------------------------------------------- runs


@dataclass(frozen=True)
class EpochLog:
    """One epoch of one run: losses (Eq. 19), validation rmse_hperp (t0), learning rate."""

    run: str
    epoch: int
    max_epochs: int
    train_loss: float
    val_loss: float | None
    val_rmse_hperp: float | None
    lr: float
    seconds: float


def new_model(cfg: TrainConfig, run: int) -> EnergyModel:
    """Fresh model seeded by (seed, run); network in cfg.dtype, buffers float64."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed * 1000 + run)
        model = EnergyModel(cfg.spec, cfg.arch)
    model.net.to(cfg.torch_dtype)
    return model.to(cfg.device)


def standardise(model: EnergyModel, data: list[ConfigData], seed: int) -> None:
    """Feature mean/scale from training features; energy offset = mean ED energy per atom."""
    rng = np.random.default_rng(seed)
    g = []
    with torch.no_grad():
        for d in data:
            pick = torch.as_tensor(rng.permutation(d.n_frames)[:STANDARDISATION_FRAMES])
            x = features(d.geometry, d.spins[pick.to(d.spins.device)])
            g.append(x.reshape(-1, x.shape[-1]))
    energy = torch.cat([d.energy / d.n_atoms for d in data])
    model.set_standardisation(torch.cat(g), float(energy.mean()))


def fit_network(
    model: EnergyModel,
    train: list[ConfigData],
    val: list[ConfigData] | None,
    cfg: TrainConfig,
    run: str,
    epochs: int,
    seed: int,
    on_epoch: Callable[[EpochLog], None] | None = None,
    store: TrainingCheckpoint | None = None,
) -> list[EpochLog]:
    """Adam + ReduceLROnPlateau on Eq. 19; with val, early stopping restores the best weights.
    With store, a saved state is continued (or a finished run read back) and the state is
    saved every store.every seconds, on Ctrl-C or SIGTERM and at the end."""
    opt = torch.optim.Adam(model.net.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
        opt, factor=0.5, patience=max(1, cfg.patience // 3)
    )
    gen = torch.Generator().manual_seed(seed)
    history: list[EpochLog] = []
    best, best_state, since, epochs_done = math.inf, None, 0, 0
    saved = store.load() if store is not None else None
    if saved is not None:
        model.load_state_dict(saved.model)
        opt.load_state_dict(saved.optimizer)
        sched.load_state_dict(saved.scheduler)
        gen.set_state(saved.generator)
        history = [EpochLog(**log) for log in saved.history]
        best, best_state, since = saved.best, saved.best_model, saved.since
        epochs_done = saved.epoch
        if saved.done:
            return history

    def save(finished: bool = False) -> None:
        store.save(TrainingState(
            epoch=len(history), model=model.state_dict(), best_model=best_state,
            optimizer=opt.state_dict(), scheduler=sched.state_dict(), generator=gen.get_state(),
            history=[asdict(log) for log in history], best=best, since=since, done=finished,
        ))  # fmt: skip

    deadline = time.perf_counter() + (cfg.time_limit or math.inf)
    with safe_points(store.every if store is not None else None, save) as reached:
        for epoch in range(epochs_done + 1, epochs + 1):
            log = _epoch(model, train, val, cfg, run, epoch, epochs, opt, sched, gen)
            history.append(log)
            if val and log.val_loss < best:
                best, best_state, since = log.val_loss, copy.deepcopy(model.state_dict()), 0
            elif val:
                since += 1
            reached()
            if on_epoch is not None:
                on_epoch(log)
            if (val and since >= cfg.patience) or time.perf_counter() >= deadline:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    if store is not None:
        save(finished=True)
    return history


def _epoch(model, train, val, cfg, run, epoch, epochs, opt, sched, gen) -> EpochLog:
    """One epoch of Adam steps over shuffled batches (Eq. 19), then the LR schedule and, with
    val, the validation loss."""
    start = time.perf_counter()
    chunks = [
        (d, chunk)
        for d in train
        for chunk in torch.randperm(d.n_frames, generator=gen).split(cfg.batch_size)
    ]
    total = frames = 0.0
    for k in torch.randperm(len(chunks), generator=gen).tolist():
        d, idx = chunks[k]
        idx = idx.to(d.spins.device)
        loss, _ = batch_loss(model, d, idx, cfg.mu_h, cfg.mu_e)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += float(loss.detach()) * len(idx)
        frames += len(idx)
    train_loss = total / frames
    if not math.isfinite(train_loss):
        raise SdglassError(f"{run}: the training loss became {train_loss} at epoch {epoch}")
    sched.step(train_loss)
    val_loss = val_rmse = None
    if val:
        val_loss, val_rmse = validate(model, val, cfg.mu_h, cfg.mu_e)
    return EpochLog(
        run, epoch, epochs, train_loss, val_loss, val_rmse,
        opt.param_groups[0]["lr"], time.perf_counter() - start,
    )  # fmt: skip


def best_epoch(history: list[EpochLog]) -> int:
    """Epoch with the lowest validation loss (the weights early stopping kept)."""
    return min(history, key=lambda log: log.val_loss).epoch


# --------------------------------------------------------------------------- pairwise


def _g2m_jacobian(geometry: DescriptorGeometry, spins: torch.Tensor, m: int):
    """X_m = sum_i G2m_i(d_m) (B, M) and S_i x (-dX_m/dS_i) (B, N, 3, M), by autograd."""
    s = spins.detach().requires_grad_(True)
    x = features(geometry, s)[..., :m].sum(1)
    cols = []
    for k in range(m):
        (grad,) = torch.autograd.grad(x[:, k].sum(), s, retain_graph=k < m - 1)
        cols.append(cross(s, -grad))
    return x.detach(), torch.stack(cols, -1).detach()


def fit_pairwise(model: EnergyModel, train: list[ConfigData], cfg: TrainConfig) -> None:
    """Linear least squares of Eq. 19 for E = sum_m a_m X_m + N b, X_m = sum_i G2m_i(d_m).

    Accumulates the normal equations in float64, solves them with Jacobi scaling
    (minimum-norm for radii no pair reaches), and writes a_m and b into the model:
    weight_m = a_m scale_m, energy_offset = b + sum_m a_m mean_m.
    """
    m = model.spec.n_radii
    n_frames = sum(d.n_frames for d in train)
    a = torch.zeros(m + 1, m + 1, dtype=torch.float64)
    rhs = torch.zeros(m + 1, dtype=torch.float64)
    mean_x = torch.zeros(m, dtype=torch.float64)
    mean_e = 0.0
    for d in train:
        geometry = d.geometry.to(dtype=torch.float64)
        n = d.n_atoms
        for start in range(0, d.n_frames, 64):
            sl = slice(start, start + 64)
            spins = d.spins[sl].double()
            x, jac = _g2m_jacobian(geometry, spins, m)
            x, jac = x.cpu(), jac.cpu().reshape(-1, m)
            y = d.hperp[sl].double().cpu().reshape(-1)
            w_h = cfg.mu_h / (n_frames * n)
            a[:m, :m] += w_h * jac.T @ jac
            rhs[:m] += w_h * jac.T @ y
            xe = torch.cat([x, torch.full((len(x), 1), float(n), dtype=torch.float64)], 1)
            e = d.energy[sl].cpu()
            w_e = cfg.mu_e / (n_frames * n**2)
            a += w_e * xe.T @ xe
            rhs += w_e * xe.T @ e
            mean_x += (x / n).sum(0) / n_frames
            mean_e += float((e / n).sum()) / n_frames
    k = m + 1 if cfg.mu_e > 0 else m  # without an energy term b is fixed afterwards
    scale = a.diagonal()[:k].sqrt()
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    scaled = (a[:k, :k] / scale[:, None] / scale[None]).numpy()
    theta = np.linalg.lstsq(scaled, (rhs[:k] / scale).numpy(), rcond=1e-12)[0] / scale.numpy()
    coeff = torch.as_tensor(theta[:m])
    b = float(theta[m]) if k > m else mean_e - float(coeff @ mean_x)
    standardise(model, train, cfg.seed)
    mean, feature_scale = model.feature_mean.cpu(), model.feature_scale.cpu()
    with torch.no_grad():
        weight = model.net[-1].weight
        weight.copy_((coeff * feature_scale).to(weight)[None])
        model.energy_offset.fill_(b + float((coeff * mean).sum()))


# --------------------------------------------------------------------------- orchestration


def evaluate_data(
    model: EnergyModel, data: list[ConfigData], labels: tuple[str, ...] = ("random", "relaxation")
) -> tuple[dict[str, dict], dict[str, np.ndarray]]:
    """Metrics on all frames and per frame source, plus the H_perp arrays (ml, ed, source)."""
    ml, ed, e_ml, e_ed, source = [], [], [], [], []
    for d in data:
        h, e = predict(model, d.geometry, d.spins)
        ml.append(cross(d.spins.double(), h).cpu().numpy())
        ed.append(d.hperp.double().cpu().numpy())
        e_ml.append(e.cpu().numpy())
        e_ed.append(d.energy.cpu().numpy())
        source.append(d.source)
    arrays = {"ml": np.concatenate(ml), "ed": np.concatenate(ed), "source": np.concatenate(source)}
    energies = np.concatenate(e_ml), np.concatenate(e_ed)
    out = {"all": hperp_metrics(arrays["ml"], arrays["ed"], *energies)}
    for code in np.unique(arrays["source"]):
        sel = arrays["source"] == code
        name = labels[code] if code < len(labels) else f"source {code}"
        out[name] = hperp_metrics(arrays["ml"][sel], arrays["ed"][sel], *(x[sel] for x in energies))
    return out, arrays


@dataclass
class TrainResult:
    """A trained model and how it was made: splits, cross-validation, histories, test metrics."""

    model: EnergyModel
    config: TrainConfig
    test_ids: list[int]
    folds: list[list[int]]
    cv: list[dict[str, Any]]
    histories: list[list[EpochLog]]
    final_epochs: int | None
    test: dict[str, dict]
    test_arrays: dict[str, np.ndarray]
    seconds: float

    def cv_summary(self) -> dict[str, Any]:
        """Mean and spread (sample std) of the validation rmse_hperp over folds."""
        values = np.array([f["rmse_hperp"] for f in self.cv])
        return {
            "folds": len(values),
            "rmse_hperp_mean": float(values.mean()),
            "rmse_hperp_std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
            "per_fold": self.cv,
        }


def frames_digest(frames: Frames) -> str:
    """SHA-256 of the frames' positions, spins and labels (what a training run learns from)."""
    digest = hashlib.sha256()
    for name in ("positions", "box", "spins", "fields", "energy"):
        digest.update(np.ascontiguousarray(getattr(frames, name)).tobytes())
    return digest.hexdigest()


def train(
    frames: Frames,
    cfg: TrainConfig,
    on_epoch: Callable[[EpochLog], None] | None = None,
    checkpoints: Checkpoints | None = None,
) -> TrainResult:
    """Cross-validated training and a final model evaluated on held-out configurations. With
    checkpoints, each network's training saves its state there and continues from it when
    run again (finished ones are read back)."""
    start = time.perf_counter()
    data_id = frames_digest(frames) if checkpoints is not None else ""

    def store(index: int) -> TrainingCheckpoint | None:
        if checkpoints is None:
            return None
        run = {**cfg.to_dict(), "frames_sha256": data_id, "run": index}
        path = checkpoints.directory / f"network-{index}.safetensors"
        return TrainingCheckpoint(path, run, checkpoints.every)

    pairwise = cfg.arch.kind == "pairwise"
    spec = cfg.spec.replace(include_g3m=False, include_chi=False) if pairwise else cfg.spec
    check_labelled(frames)
    n_configs = int(configuration_index(frames).max()) + 1
    test_ids, folds = split_configurations(
        list(range(n_configs)), cfg.test_configs, cfg.folds, cfg.val_configs, cfg.seed
    )
    data = prepare(frames, spec, torch.float64 if pairwise else cfg.torch_dtype, cfg.device)
    by_id = {d.config_id: d for d in data}

    def pick(ids: list[int]) -> list[ConfigData]:
        return [by_id[i] for i in ids]

    def run(index: int, name: str, train_ids, val_ids, epochs: int):
        model = new_model(cfg, index)
        part = pick(train_ids)
        if cfg.time_reversal_augment:
            part = [d.time_reversed() for d in part]
        if pairwise:
            fit_pairwise(model, part, cfg)
            return model, []
        standardise(model, part, cfg.seed + index)
        val = pick(val_ids) if val_ids else None
        history = fit_network(
            model, part, val, cfg, name, epochs, cfg.seed + index, on_epoch, store(index)
        )
        return model, history

    cv, histories = [], []
    if cfg.folds >= 2:
        for k, val_ids in enumerate(folds):
            train_ids = sorted(i for j, f in enumerate(folds) if j != k for i in f)
            model, hist = run(k + 1, f"fold {k + 1}/{len(folds)}", train_ids, val_ids, cfg.epochs)
            histories.append(hist)
            epoch = best_epoch(hist) if hist else None
            cv.append({"fold": k + 1, "val_configs": val_ids, "best_epoch": epoch})
            cv[-1].update(evaluate_data(model, pick(val_ids), frames.source_labels)[0]["all"])
        epochs = [f["best_epoch"] for f in cv if f["best_epoch"] is not None]
        final_epochs = max(1, round(float(np.mean(epochs)))) if epochs else None
        everything = sorted(i for f in folds for i in f)
        model, hist = run(0, "final", everything, None, final_epochs or 1)
    else:
        train_ids, val_ids = folds
        model, hist = run(0, "final", train_ids, val_ids, cfg.epochs)
        final_epochs = best_epoch(hist) if hist else None
        cv.append({"fold": 1, "val_configs": val_ids, "best_epoch": final_epochs})
        cv[-1].update(evaluate_data(model, pick(val_ids), frames.source_labels)[0]["all"])
    histories.append(hist)
    test, arrays = evaluate_data(model, pick(test_ids), frames.source_labels)
    return TrainResult(
        model, cfg, test_ids, folds, cv, histories, final_epochs, test, arrays,
        time.perf_counter() - start,
    )  # fmt: skip


# --------------------------------------------------------------------------- outputs


def model_card(result: TrainResult, frames: Frames, datasets: Sequence[str | Path]) -> ModelCard:
    """ModelCard: physical parameters of the data, training provenance, held-out metrics."""
    cfg = result.config
    density = float(np.mean(frames.n_atoms / frames.box**3))
    training = {
        "dataset": [str(p) for p in datasets],
        "dataset_sha256": [file_digest(p) for p in datasets],
        "frames": frames.n_frames,
        "configurations": len(result.test_ids) + sum(len(f) for f in result.folds),
        "test_configurations": result.test_ids,
        "folds": cfg.folds,
        "fold_configurations": result.folds,
        "final_epochs": result.final_epochs,
        "epochs_run": [len(h) for h in result.histories],
        "training_seconds": round(result.seconds, 2),
        "hardware": hardware(cfg.device),
        "loss": "mu_h mean|dH_perp|^2 + mu_e mean(dE/N)^2 (paper Eq. 19)",
        **cfg.to_dict(),
    }
    metrics: dict[str, Any] = {**result.test["all"], "held_out_configurations": result.test_ids}
    metrics.update({k: v for k, v in result.test.items() if k != "all"})
    metrics["cross_validation"] = result.cv_summary()
    if cfg.arch.kind == "pairwise":
        r = np.linspace(0.0, cfg.spec.rc, 126)
        metrics["exchange"] = {"r": r.tolist(), "J": result.model.exchange(r).tolist()}
    electrons = frames.electron_config(ElectronConfig())
    return ModelCard(physical_parameters(electrons, density), training, metrics)


def report_path(model_path: str | Path) -> Path:
    """The training report PNG beside the model: model.safetensors -> model.report.png."""
    return Path(model_path).with_suffix(".report.png")


def report_figure(result: TrainResult, labels: tuple[str, ...] = ("random", "relaxation")):
    """Loss curves (or J(R) for the pairwise model), test parity plot and error histogram."""
    import matplotlib.pyplot as plt

    from core.evaluation import draw_error_histogram, draw_parity

    fig, (left, mid, right) = plt.subplots(1, 3, figsize=(14, 4.2))
    model = result.model
    if model.arch.kind == "pairwise":
        r = np.linspace(0.3, model.spec.rc, 400)
        left.plot(r, model.exchange(r))
        left.axhline(0, color="0.5", lw=0.8)
        left.set_xlabel(r"$R$ ($\ell$)")
        left.set_ylabel(r"$J(R)$ ($t_0$)")
        left.set_title(
            r"$E = \sum_{i<j} J(R_{ij})\, S_i \cdot S_j$ ($J > 0$: antiferromagnetic)", fontsize=9
        )
    else:
        for hist in result.histories:
            if not hist:
                continue
            epochs = [h.epoch for h in hist]
            line = left.semilogy(epochs, [h.train_loss for h in hist], label=f"{hist[0].run} train")
            if hist[0].val_loss is not None:
                val = [h.val_loss for h in hist]
                left.semilogy(epochs, val, "--", color=line[0].get_color(), label="validation")
        left.set_xlabel("epoch")
        left.set_ylabel("loss (Eq. 19)")
        left.legend(fontsize=6, ncol=2)
    arrays = result.test_arrays
    draw_parity(mid, arrays["ml"], arrays["ed"], arrays["source"], labels)
    mid.set_title("held-out configurations", fontsize=9)
    draw_error_histogram(right, arrays["ml"], arrays["ed"], arrays["source"], labels)
    cv = result.cv_summary()
    fig.suptitle(
        f"{describe_arch(model.arch)}: held-out rmse_hperp {result.test['all']['rmse_hperp']:.3g} t0; "
        f"validation {cv['rmse_hperp_mean']:.3g} +- {cv['rmse_hperp_std']:.2g} over "
        f"{cv['folds']} fold(s)",
        fontsize=10,
    )
    fig.tight_layout()
    return fig


def describe_arch(arch: Architecture) -> str:
    if arch.kind == "pairwise":
        return "pairwise J(R)"
    return f"MLP {'-'.join(map(str, arch.hidden))} {arch.activation}"


def save_trained(
    result: TrainResult,
    frames: Frames,
    datasets: Sequence[str | Path],
    output: str | Path,
    force: bool = False,
) -> tuple[Path, Path]:
    """Write the model file (modelfile.save_model) and its training report PNG."""
    from core.modelfile import save_model
    from core.plots import save_figure

    report = report_path(output)
    save_model(output, result.model, model_card(result, frames, datasets), force)
    save_figure(report_figure(result, frames.source_labels), report, force=True)
    return Path(output), report
