"""`sdglass` ML sub-commands: dataset, train, eval (PHYSICS.md "Behler-Parrinello model").

`add_ml_commands(subparsers)` registers them on the main parser of core.cli;
`main(argv)` runs them on their own with the same error handling (one line
`sdglass: error: ...`, exit 2; Ctrl-C exits 130 and leaves no output file).
Units: ell for lengths, t0 for energies and fields, 1/(gamma t0) for times.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

import core.cli as base
from core.errors import FileFormatError
from core.paths import DEFAULT_MODEL

PAPER_RADII = (0.5, 2.46, 50)
#: `reproduce --steps` choices: core.reproduce.TASKS's keys, without importing it to parse.
STEP_NAMES = ("fig2", "fig3", "fig4", "fig4late", "fig5")


# --------------------------------------------------------------------------- dataset


def cmd_dataset(args: argparse.Namespace) -> None:
    """ED-labelled random and relaxation frames (paper Sec. IV)."""
    from core.config import ElectronConfig, LLGConfig, SystemConfig
    from core.dataset import DatasetConfig, generate_dataset, write_dataset
    from core.io import check_output

    check_output(args.output, args.force)
    cfg = DatasetConfig(
        system=SystemConfig(n=args.n, box=args.box, r_min=args.r_min, seed=args.seed),
        electrons=ElectronConfig().replace(**base._electron_overrides(args)),
        configs=args.configs,
        spins_per_config=args.spins_per_config,
        random_fraction=args.random_fraction,
        replicas=args.replicas,
        relax=LLGConfig(
            temperature=args.relax_temperature,
            alpha=args.relax_alpha,
            dt=args.relax_dt,
            integrator=args.relax_integrator,
            seed=args.noise_seed,
        ),
        t_first=args.t_first,
        t_max=args.t_max,
        batch=args.batch,
        device=base._device(args.device),
    )
    cluster = base._cluster(args)
    checkpoints = base._checkpoints(args)
    start = time.perf_counter()
    with base._saved_on_interrupt(checkpoints and checkpoints.directory):
        with base._progress(cfg.configs * cfg.work_per_config, "dataset (ED)", "unit") as bar:
            frames = generate_dataset(cfg, bar.update, cluster, checkpoints)
    elapsed = time.perf_counter() - start
    write_dataset(args.output, frames, cfg.attributes(), args.force)
    hperp = np.cross(frames.spins, frames.fields)
    print(
        f"wrote {args.output}: {cfg.configs} configuration(s) x {cfg.spins_per_config} frames "
        f"({cfg.n_random} random, {cfg.n_relaxation} relaxation each), N = {cfg.system.n}, "
        f"L = {cfg.system.side:.4g}, in {elapsed:.1f} s; energy per spin "
        f"{frames.energy.mean() / frames.n_atoms:.5f} t0, H_perp component std {hperp.std():.4g} t0"
    )


# --------------------------------------------------------------------------- reproduce


def cmd_reproduce(args: argparse.Namespace) -> None:
    """The paper's figures and statements (core.reproduce), report.md in the output folder."""
    from core.reproduce import CHECKPOINTS, SCALES, reproduce

    start = time.perf_counter()
    with base._saved_on_interrupt(Path(args.output) / CHECKPOINTS, "add --resume"):
        report = reproduce(
            SCALES[args.scale], args.output, args.model, args.force,
            log=lambda line: print(line, file=sys.stderr, flush=True),
            device=base._device(args.device), resume=args.resume, cluster=base._cluster(args),
            steps=args.steps,
        )  # fmt: skip
    print(f"wrote {report} and its figures and data in {time.perf_counter() - start:.0f} s")


# --------------------------------------------------------------------------- train


def _spec(args: argparse.Namespace):
    from core.config import ConfigError
    from core.descriptor import DescriptorSpec

    start, stop, count = args.radii
    if count != int(count) or count < 1:
        raise ConfigError(f"--radii COUNT must be a positive integer, got {count:g}")
    return DescriptorSpec(
        rc=args.rc,
        w=args.width,
        radii=tuple(np.linspace(start, stop, int(count))),
        d_prime=tuple(args.d_prime),
        triplet_rc=args.triplet_rc,
        w_prime=args.w_prime,
        include_g3m=not args.no_g3m,
        include_chi=not args.no_chi,
    )


class _EpochBars:
    """One tqdm bar per training run with the live losses as postfix."""

    def __init__(self) -> None:
        self.run = None
        self.bar = None

    def __call__(self, log) -> None:
        if log.run != self.run:
            self.close()
            self.run = log.run
            self.bar = base._progress(log.max_epochs, f"train {log.run}", "epoch")
        post = {"loss": f"{log.train_loss:.3g}", "lr": f"{log.lr:.1e}"}
        if log.val_loss is not None:
            post.update(val=f"{log.val_loss:.3g}", rmse_hperp=f"{log.val_rmse_hperp:.3g}")
        self.bar.set_postfix(post)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def read_training_frames(paths: list[str]):
    """One or more frames files as one set; their electron parameters must agree."""
    from core.dataset import concat_frames
    from core.io import read_frames

    parts = [read_frames(p) for p in paths]
    for path, part in zip(paths[1:], parts[1:], strict=True):
        if part.attrs != parts[0].attrs:
            raise FileFormatError(
                f"{path} was labelled with other electron parameters than {paths[0]}: "
                f"{part.attrs} vs {parts[0].attrs}"
            )
    return concat_frames(parts)


def cmd_train(args: argparse.Namespace) -> None:
    """Cross-validated training, held-out metrics, model file and training report."""
    from core.io import check_output
    from core.model import Architecture
    from core.training import TrainConfig, report_path, save_trained, train

    check_output(args.output, args.force)
    check_output(report_path(args.output), args.force)
    cfg = TrainConfig(
        arch=Architecture.parse(args.arch, args.activation),
        spec=_spec(args),
        epochs=args.epochs,
        patience=args.patience,
        time_limit=args.time_limit,
        mu_h=args.mu_h,
        mu_e=args.mu_e,
        lr=args.lr,
        batch_size=args.batch_size,
        folds=args.folds,
        test_configs=args.test_configs,
        val_configs=args.val_configs,
        time_reversal_augment=args.time_reversal_augment,
        seed=args.seed,
        dtype=args.dtype,
        device=base._device(args.device),
    )
    frames = read_training_frames(args.data)
    checkpoints = base._checkpoints(args)
    bars = _EpochBars()
    try:
        with base._saved_on_interrupt(checkpoints and checkpoints.directory):
            result = train(frames, cfg, on_epoch=bars, checkpoints=checkpoints)
    finally:
        bars.close()
    model_path, report = save_trained(result, frames, args.data, args.output, args.force)
    cv = result.cv_summary()
    print(
        f"wrote {model_path} and {report}: {cfg.arch.describe()}, "
        f"{result.seconds:.1f} s; validation rmse_hperp {cv['rmse_hperp_mean']:.4g} "
        f"+- {cv['rmse_hperp_std']:.2g} t0 over {cv['folds']} fold(s)"
    )
    for name, m in result.test.items():
        print(
            f"held-out configurations {result.test_ids}, {name} frames: "
            f"rmse_hperp {m['rmse_hperp']:.4g} t0 (rel {m['rel_rmse_hperp']:.3g}), "
            f"rmse_energy_per_atom {m['rmse_energy_per_atom']:.3g} t0, {m['n_frames']} frames"
        )


# --------------------------------------------------------------------------- eval


def cmd_eval(args: argparse.Namespace) -> None:
    """H_perp and energy errors of a model on an ED-labelled frames file."""
    from core.config import ElectronConfig
    from core.evaluation import METRIC_KEYS, evaluate, frames_physical
    from core.io import read_frames
    from core.model import check_physical_parameters
    from core.modelfile import load_model
    from core.plots import check_figure_output

    if args.plot:
        check_figure_output(args.plot, args.force)
    model, card = load_model(args.model)
    frames = read_frames(args.data)
    check_physical_parameters(card.physical, frames_physical(frames, ElectronConfig()))  # warns
    metrics = evaluate(model, frames, base._device(args.device), None, args.plot, args.force)
    if args.json:
        print(json.dumps({k: metrics[k] for k in METRIC_KEYS}))
        return
    for key in METRIC_KEYS:
        value = metrics[key]
        unit = "" if key.startswith(("n_", "rel_")) else " t0"
        print(f"{key:<22}{value:.6g}{unit}" if isinstance(value, float) else f"{key:<22}{value}")
    for label, part in metrics.get("by_source", {}).items():
        print(
            f"{label} frames: rmse_hperp {part['rmse_hperp']:.4g} t0 "
            f"(rel {part['rel_rmse_hperp']:.3g}), {part['n_frames']} frames"
        )
    if args.plot:
        print(f"wrote {args.plot}")


# --------------------------------------------------------------------------- parser


def _add_dataset(sub) -> None:
    fmt = base.HelpFormatter
    p = sub.add_parser(
        "dataset",
        help="ED-labelled frames: random spins and states along ED-LLG relaxations",
        formatter_class=fmt,
    )
    base._add_system(p)
    base._add_electrons(p, paper_defaults=True)
    g = p.add_argument_group("frames (paper: 10 configurations x 250 spin states)")
    g.add_argument("--configs", type=int, default=10, help="atomic configurations (seed + c)")
    g.add_argument("--spins-per-config", type=int, default=250, help="frames per configuration")
    g.add_argument(
        "--random-fraction", type=float, default=0.2, help="share of uniformly random spin frames"
    )
    g.add_argument("--batch", type=int, default=32, help="random frames per ED call")
    g = p.add_argument_group("relaxations (ED-LLG from random starts, sampled log-spaced in t)")
    g.add_argument("--replicas", type=int, default=8, help="relaxations per configuration")
    g.add_argument("--relax-alpha", type=float, default=1.0, help="Gilbert damping")
    g.add_argument("--relax-dt", type=float, default=0.5, help="time step in 1/(gamma t0)")
    g.add_argument("--relax-temperature", type=float, default=0.001, help="bath k_B T in t0")
    g.add_argument(
        "--relax-integrator", choices=("sib", "depondt", "heun"), default="sib", help="integrator"
    )
    g.add_argument("--t-first", type=float, default=1.0, help="first sample time")
    g.add_argument("--t-max", type=float, default=100.0, help="last sample time")
    g.add_argument("--noise-seed", type=int, default=0, help="seed of spins and noise (+ c)")
    base._add_device(p)
    base._add_cluster(p)
    base._add_checkpoints(p, timed=False)
    base._add_output(p, "output frames file (.h5)")
    p.set_defaults(func=cmd_dataset)


def _add_reproduce(sub) -> None:
    fmt = base.HelpFormatter
    p = sub.add_parser(
        "reproduce",
        help="the paper's Figs. 2-5 and quantitative statements, with a report",
        formatter_class=fmt,
    )
    p.add_argument(
        "--scale", choices=("quick", "paper"), default="quick",
        help="quick: a 2-core CPU in under 30 min; paper: the paper's sizes (for a GPU)",
    )  # fmt: skip
    p.add_argument("-o", "--output", required=True, help="output folder (report.md, figures, data)")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="the ML model of Figs. 3-5")
    p.add_argument("--force", action="store_true", help="start afresh, overwriting an earlier run")
    p.add_argument(
        "--resume", action="store_true",
        help="continue an interrupted run in the output folder (same scale and model): "
        "finished steps are read back, an unfinished quench continues from its last save",
    )  # fmt: skip
    p.add_argument(
        "--steps", nargs="+", choices=STEP_NAMES, metavar="STEP", default=list(STEP_NAMES),
        help="run only these steps; the report then covers the finished ones and --resume "
        "runs the rest later, on this machine or another (e.g. the ED labelling and training "
        "here, the dynamics on a GPU)",
    )  # fmt: skip
    base._add_device(p)
    base._add_cluster(p)
    p.set_defaults(func=cmd_reproduce)


def _add_train(sub) -> None:
    fmt = base.HelpFormatter
    p = sub.add_parser(
        "train",
        help="train an ML field model (paper Eq. 19) with cross-validation by configuration",
        formatter_class=fmt,
    )
    p.add_argument(
        "data", nargs="+",
        help="ED-labelled frames file(s) (.h5), e.g. from sdglass dataset; several are joined",
    )  # fmt: skip
    g = p.add_argument_group("model")
    g.add_argument(
        "--arch", default="compact",
        help="paper (8 hidden layers, ReLU), compact (128,64,32 SiLU), pairwise (J(R), "
        "linear least squares), or comma-separated hidden sizes",
    )  # fmt: skip
    g.add_argument(
        "--activation", choices=("relu", "silu", "tanh", "softplus"), default=None,
        help="hidden activation (None: relu for paper, silu otherwise)",
    )  # fmt: skip
    g.add_argument(
        "--dtype", choices=("float32", "float64"), default="float32", help="network precision"
    )
    g = p.add_argument_group("descriptor (PHYSICS.md; default: the paper's 450 features)")
    g.add_argument("--rc", type=float, default=2.5, help="cutoff Rc in ell (<= L/2)")
    g.add_argument("--width", type=float, default=0.05, help="radial width w in ell")
    g.add_argument(
        "--radii", type=float, nargs=3, default=PAPER_RADII, metavar=("START", "STOP", "COUNT"),
        help="evenly spaced centres d in ell",
    )  # fmt: skip
    g.add_argument(
        "--triplet-rc", type=float, default=None, metavar="RC3",
        help="the triplets' own cutoff Rc3 <= Rc (None: Rc); their centres d are the radii <= Rc3",
    )  # fmt: skip
    g.add_argument(
        "--d-prime", type=float, nargs="+", default=[1.0, 2.0], metavar="D",
        help="centres d' of the triplets' third side F2(R_jk; d', w') in ell",
    )  # fmt: skip
    g.add_argument("--w-prime", type=float, default=1.0, help="width w' of F2(R_jk) in ell")
    g.add_argument("--no-g3m", action="store_true", help="leave out the G3m features")
    g.add_argument("--no-chi", action="store_true", help="leave out the chiral G3chi features")
    g = p.add_argument_group("training")
    g.add_argument("--folds", type=int, default=5, help="cross-validation folds (1: one split)")
    g.add_argument("--epochs", type=int, default=300, help="most epochs per run")
    g.add_argument("--patience", type=int, default=30, help="early-stopping patience (epochs)")
    g.add_argument(
        "--time-limit", type=float, default=None, metavar="SECONDS",
        help="stop each run after this long (at an epoch end), keeping the best weights",
    )  # fmt: skip
    g.add_argument("--mu-h", type=float, default=1.0, help="weight of mean |dH_perp|^2 (t0^-2)")
    g.add_argument("--mu-e", type=float, default=0.01, help="weight of mean (dE/N)^2 (t0^-2)")
    g.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    g.add_argument("--batch-size", type=int, default=16, help="frames per step")
    g.add_argument(
        "--test-configs", type=int, default=None,
        help="configurations held out for the final metrics (None: 20 %%, at least 1)",
    )  # fmt: skip
    g.add_argument(
        "--val-configs", type=int, default=None,
        help="validation configurations when --folds 1 (None: 20 %% of the rest, at least 1)",
    )  # fmt: skip
    g.add_argument(
        "--time-reversal-augment", action="store_true",
        help="add -S frames with fields -H and the same energy to the training data",
    )  # fmt: skip
    g.add_argument("--seed", type=int, default=0, help="seed of splits, initial weights, batches")
    base._add_device(p)
    base._add_checkpoints(p)
    base._add_output(p, "output model file (.safetensors); the report goes to MODEL.report.png")
    p.set_defaults(func=cmd_train)


def _add_eval(sub) -> None:
    p = sub.add_parser(
        "eval",
        help="H_perp and energy errors of a model against ED labels",
        formatter_class=base.HelpFormatter,
    )
    p.add_argument("model", help="model file (.safetensors)")
    p.add_argument("data", help="ED-labelled frames file (.h5)")
    p.add_argument("--json", action="store_true", help="print one JSON object on one line")
    p.add_argument("--plot", default=None, help="also write a parity plot (png/pdf/svg)")
    p.add_argument("--force", action="store_true", help="overwrite an existing plot")
    base._add_device(p)
    p.set_defaults(func=cmd_eval)


def add_ml_commands(subparsers) -> None:
    """Register dataset, train, eval and reproduce on the sub-parsers of the sdglass parser."""
    _add_dataset(subparsers)
    _add_train(subparsers)
    _add_eval(subparsers)
    _add_reproduce(subparsers)
