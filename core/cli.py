"""The `sdglass` command line: app (default), generate, label, quench, dos, compare, bench,
check, dataset, train, eval.

Every sub-command's defaults are the paper's values (PHYSICS.md); units are
ell for lengths, t0 for energies and temperatures, 1/(gamma t0) for times.
User errors print one line `sdglass: error: ...` and exit with status 2; an
interrupted run (Ctrl-C) exits 130 and leaves no half-written output file behind
(a checkpointed quench or reproduction also keeps its saved progress).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch
from tqdm import tqdm

from core import __version__
from core.checkpoint import DEFAULT_EVERY
from core.config import INTEGRATORS, ConfigError, ElectronConfig, LLGConfig, SystemConfig
from core.electrons import ED_METHODS
from core.errors import DisplayError, SdglassError
from core.memory import keep_freed_memory
from core.paths import DEFAULT_MODEL

PAPER = ElectronConfig()
PAPER_LLG = LLGConfig()


def _progress(total: int, desc: str, unit: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)


def _device(name: str) -> str:
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda requested but no CUDA device is available")
    return name


def _electron_overrides(args: argparse.Namespace) -> dict:
    """Electron parameters given explicitly on the command line."""
    keys = ("t0", "ell", "J", "filling", "kT_e", "r_hop")
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


# --------------------------------------------------------------------------- sub-commands


def _at_least(option: str, values: Sequence[int], least: int) -> None:
    """ConfigError naming the option when a count or size is below its least value."""
    small = [v for v in values if v < least]
    if small:
        raise ConfigError(f"{option} must be >= {least}, got {small[0]}")


def cmd_generate(args: argparse.Namespace) -> None:
    """One random-spin frame on a new amorphous configuration."""
    from core.io import Frames, check_output, write_frames
    from core.system import generate_positions, random_spins

    _at_least("--frames", [args.frames], 1)
    check_output(args.output, args.force)
    cfg = SystemConfig(n=args.n, box=args.box, r_min=args.r_min, seed=args.seed)
    system = generate_positions(cfg)
    gen = torch.Generator().manual_seed(args.seed)
    spins = random_spins(args.frames, cfg.n, gen).numpy()
    frames = Frames(
        positions=np.repeat(system.positions[None], args.frames, axis=0),
        box=np.full(args.frames, system.box),
        spins=spins,
    )
    write_frames(args.output, frames, args.force)
    print(
        f"wrote {args.output}: {args.frames} frame(s), N = {cfg.n}, L = {system.box:.4g}, "
        f"density {system.density:.3g}"
    )


def cmd_label(args: argparse.Namespace) -> None:
    """ED fields and energies for every frame of a frames file."""
    from core.electrons import EDSolver
    from core.io import Frames, check_output, electron_attrs, read_frames, write_frames
    from core.system import AtomicSystem

    _at_least("--batch", [args.batch], 1)
    check_output(args.output, args.force)
    frames = read_frames(args.input)
    config = frames.electron_config(PAPER).replace(**_electron_overrides(args))
    device = _device(args.device)
    fields = np.zeros_like(frames.spins)
    energy = np.zeros(frames.n_frames)
    # frames that share an atomic configuration are diagonalized as one batch
    keys = [frames.positions[f].tobytes() + frames.box[f].tobytes() for f in range(frames.n_frames)]
    groups: dict[bytes, list[int]] = {}
    for f, key in enumerate(keys):
        groups.setdefault(key, []).append(f)
    with _progress(frames.n_frames, "ED labels", "frame") as bar:
        for members in groups.values():
            first = members[0]
            ed = EDSolver(
                AtomicSystem(frames.positions[first], float(frames.box[first])), config, device
            )
            for chunk in np.array_split(members, -(-len(members) // args.batch)):
                h, e = ed.fields(torch.as_tensor(frames.spins[chunk], device=device))
                fields[chunk], energy[chunk] = h.cpu().numpy(), e.cpu().numpy()
                bar.update(len(chunk))
    labelled = Frames(
        positions=frames.positions,
        box=frames.box,
        spins=frames.spins,
        fields=fields,
        energy=energy,
        source=frames.source,
        source_labels=frames.source_labels,
        attrs=electron_attrs(config),
    )
    write_frames(args.output, labelled, args.force)
    print(
        f"wrote {args.output}: {frames.n_frames} frame(s) labelled by ED "
        f"(J = {config.J}, filling = {config.filling}, kT_e = {config.kT_e}); "
        f"mean energy per spin {energy.mean() / frames.n_atoms:.5f} t0"
    )


def cmd_quench(args: argparse.Namespace) -> None:
    """Ensemble thermal quench from random spins; trajectory file and optional figure."""
    from core.io import check_output, write_trajectory
    from core.plots import check_figure_output, quench_figure, save_figure
    from core.quench import QuenchConfig, load_quench_model, run_quench, to_trajectory

    check_output(args.output, args.force)
    if args.plot:
        check_figure_output(args.plot, args.force)
    qc = QuenchConfig(
        system=SystemConfig(n=args.n, box=args.box, r_min=args.r_min, seed=args.seed),
        electrons=PAPER.replace(**_electron_overrides(args)),
        llg=LLGConfig(
            temperature=args.temperature,
            alpha=args.alpha,
            dt=args.dt,
            integrator=args.integrator,
            seed=args.noise_seed,
        ),
        engine=args.engine,
        configs=args.configs,
        replicas=args.replicas,
        t_max=args.t_max,
        n_records=args.records,
        bin_width=args.bin_width,
        snapshots=args.snapshots,
        device=_device(args.device),
        model_path=args.model if args.engine == "ml" else None,
        pack=args.pack,
        ed_method=args.ed_method,
    )
    model = load_quench_model(qc)  # a bad model file is reported before any progress bar
    cluster = _cluster(args)
    checkpoints = _checkpoints(args)
    start = time.perf_counter()
    with _saved_on_interrupt(checkpoints and checkpoints.directory):
        with _progress(qc.configs * qc.n_steps, f"quench ({qc.engine})", "step") as bar:
            result = run_quench(
                qc, on_steps=bar.update, cluster=cluster, checkpoints=checkpoints, model=model
            )
    elapsed = time.perf_counter() - start
    traj = to_trajectory(result)
    write_trajectory(args.output, traj, args.force)
    steps = qc.configs * qc.n_steps - result.resumed_steps  # run in this session
    resumed = f" (and {result.resumed_steps} read back)" if result.resumed_steps else ""
    print(
        f"wrote {args.output}: {qc.configs} configuration(s) x {qc.replicas} replica(s) "
        f"on {cluster.describe() if cluster else 'this process'}, "
        f"N = {qc.system.n}, t = 0..{qc.t_max:g}, {steps} steps{resumed} in {elapsed:.1f} s "
        f"({steps / elapsed:.1f} steps/s); final energy per spin "
        f"{traj.energy_per_spin[-1]:.5f} t0, |m| = {traj.magnetisation[-1]:.3f}, "
        f"xi = {traj.xi[-1]:.3f} ell"
    )
    if args.plot:
        title = (
            f"{qc.engine.upper()}-LLG quench: N = {qc.system.n}, L = {qc.system.side:.3g}, "
            f"J = {qc.electrons.J:g}, kT = {qc.llg.temperature:g}, alpha = {qc.llg.alpha:g}, "
            f"dt = {qc.llg.dt:g}, {qc.configs} configs x {qc.replicas} replicas"
        )
        save_figure(quench_figure(traj, title), args.plot, args.force)
        print(f"wrote {args.plot}")


def cmd_dos(args: argparse.Namespace) -> None:
    """Configuration-averaged J = 0 density of states (paper Fig. 2)."""
    from core.electrons import BULK_SHARE, density_of_states
    from core.plots import check_figure_output, dos_figure, save_figure
    from core.system import generate_positions

    _at_least("--configs", [args.configs], 1)
    _at_least("--bins", [args.bins], 1)
    check_figure_output(args.output, args.force)
    base = SystemConfig(n=args.n, box=args.box, r_min=args.r_min, seed=args.seed)
    config = PAPER.replace(
        J=0.0, **{k: v for k, v in _electron_overrides(args).items() if k != "J"}
    )
    systems = [
        generate_positions(base.replace(seed=args.seed + c))
        for c in tqdm(range(args.configs), desc="configurations", file=sys.stderr)
    ]
    dos = density_of_states(systems, config, bins=args.bins, bulk_share=BULK_SHARE)
    title = (
        f"J = 0 DOS: N = {base.n}, L = {base.side:.3g}, {args.configs} configurations, "
        f"filling {config.filling:g}"
    )
    save_figure(dos_figure(dos, title), args.output, args.force)
    print(
        f"wrote {args.output}: Fermi level {dos.fermi_level:.4f} t0 at filling {config.filling:g}"
    )


def corr_at_times(traj, times: np.ndarray, path: str) -> np.ndarray:
    """C(r, t) of a run at other times: linear in log t between its record times (t = 0 exact)."""
    if times.max() > traj.times.max() * (1 + 1e-9):
        raise ConfigError(f"{path} ends at t = {traj.times.max():g}, before t = {times.max():g}")
    log_t = np.log(np.maximum(traj.times, 1e-300))
    out = np.empty((len(times), traj.corr.shape[1]))
    for k, t in enumerate(times):
        if t <= 0:
            out[k] = traj.corr[np.argmin(traj.times)]
            continue
        out[k] = [np.interp(np.log(t), log_t[1:], column[1:]) for column in traj.corr.T]
    return out


def cmd_compare(args: argparse.Namespace) -> None:
    """C(r, t) of two or more quench runs: largest difference per time, and one figure."""
    from core.plots import check_figure_output, comparison_figure, save_figure
    from core.quench import read_run

    if len(args.runs) < 2:
        raise ConfigError(f"compare needs two or more runs, got {len(args.runs)}")
    if args.plot:
        check_figure_output(args.plot, args.force)
    trajs = [read_run(p) for p in args.runs]
    ref = trajs[0]
    keep = ref.times <= args.t_max
    for path, traj in zip(args.runs[1:], trajs[1:], strict=True):
        if traj.corr.shape[1] != ref.corr.shape[1] or not np.allclose(traj.r_edges, ref.r_edges):
            raise ConfigError(
                f"{path} has other distance bins than {args.runs[0]}: run both with the same "
                "system and --bin-width"
            )
        same_times = traj.times.shape == ref.times.shape and np.allclose(traj.times, ref.times)
        corr = traj.corr if same_times else corr_at_times(traj, ref.times[keep], path)
        diff = np.abs(corr[: keep.sum()] - ref.corr[keep]).max(axis=1)
        how = "" if same_times else " (interpolated in log t onto the reference's record times)"
        print(
            f"{path} vs {args.runs[0]}: max |delta C(r, t)| over bins for t <= {args.t_max:g}: "
            f"{diff.max():.4f} (at t = {ref.times[keep][np.argmax(diff)]:.3g}){how}"
        )
        differ = attribute_differences(ref.attrs, traj.attrs)
        if differ:
            print(f"  note: other run parameters than {args.runs[0]}: {', '.join(differ)}")
    for path, traj in zip(args.runs, trajs, strict=True):
        if "parameter_changes" in traj.attrs:
            print(f"  note: the parameters of {path} changed during its run (sdglass summary)")
    if args.plot:
        labels = args.labels or [str(t.attrs.get("engine", i)).upper() for i, t in enumerate(trajs)]
        save_figure(comparison_figure(trajs, labels, args.title), args.plot, args.force)
        print(f"wrote {args.plot}")


#: Run parameters that two runs compared should share (the engine and the model may differ).
COMPARED_ATTRS = (
    "n", "box", "r_min", "seed", "state_file", "t0", "ell", "J", "filling", "kT_e", "r_hop",
    "temperature", "alpha", "dt", "gamma", "integrator", "noise_seed", "configs", "replicas",
)  # fmt: skip


def attribute_differences(ref: dict, other: dict) -> list[str]:
    """ "name other vs ref" for each of COMPARED_ATTRS on which two runs differ."""

    def same(a, b) -> bool:
        if isinstance(a, float | int) and isinstance(b, float | int):
            return bool(np.isclose(a, b, rtol=1e-9, atol=0.0))
        return a == b

    return [
        f"{k} {other.get(k, 'unset')} vs {ref.get(k, 'unset')}"
        for k in COMPARED_ATTRS
        if (k in ref or k in other) and not same(ref.get(k), other.get(k))
    ]


def describe_change(change: dict) -> str:
    """One parameter change of a run: "from t = 0.15 (step 3): temperature 0.001 -> 0.25"."""

    def shown(value) -> str:
        if isinstance(value, list):  # [old, new]
            return " -> ".join(map(shown, value))
        return f"{value:g}" if isinstance(value, float) else str(value)

    parts = [f"{k} {shown(v)}" for k, v in change.items() if k not in ("t", "step")]
    return f"from t = {change['t']:.4g} (step {change.get('step', '?')}): {', '.join(parts)}"


def cmd_summary(args: argparse.Namespace) -> None:
    """What the paper quotes about one quench run: C(r_min), zero crossing, late peak, psi."""
    from core.io import parameter_changes
    from core.plots import check_figure_output, quench_figure, save_figure
    from core.quench import read_run
    from core.reproduce import (
        PAPER_C_FIRST_BIN,
        PEAK_FROM,
        correlation_features,
        correlation_history,
        droplet_values,
        noise_floor_values,
        peak_verdict,
        psi_verdict,
    )

    lo, hi = args.fit_from, args.fit_to
    if not (lo is None or np.isfinite(lo)) or not (hi is None or np.isfinite(hi)):
        raise ConfigError(f"--fit-from and --fit-to must be finite times, got {lo} and {hi}")
    if lo is not None and hi is not None and lo >= hi:
        raise ConfigError(f"--fit-from ({lo:g}) must be below --fit-to ({hi:g})")
    if args.plot:
        check_figure_output(args.plot, args.force)
    traj = read_run(args.run)
    fit, growth = droplet_values(traj, args.fit_from, args.fit_to)
    values = {
        **correlation_features(traj), "history": correlation_history(traj), **growth,
        **noise_floor_values(traj), "parameter_changes": parameter_changes(traj),
    }  # fmt: skip
    if args.json:
        print(json.dumps(values, default=str))
    else:
        a = traj.attrs
        print(
            f"{args.run}: {str(a.get('engine', '?')).upper()}-LLG, N = {a.get('n')}, "
            f"{a.get('configs')} configurations x {a.get('replicas')} replicas, "
            f"t = 0..{values['t_max']:g}"
        )
        if "partial" in a:
            print(f"  unfinished: {a['partial']}")
        if "state_file" in a:
            print(f"  started from the saved state {a['state_file']}")
        for change in values["parameter_changes"]:
            print(f"  changed during the run: {describe_change(change)}")
        first = ", ".join(f"{v:+.3f} (t = {t})" for t, v in values["c_first_bin"].items())
        print(f"  C(r = {values['r_first_bin']:.2f}, t): {first}")
        reach = values["history"]["reaches_paper_value_at"]
        when = f"at t = {reach:.3g}" if reach is not None else f"not by t = {values['t_max']:g}"
        print(
            f"  C(r = {values['r_first_bin']:.2f}) reaches the paper's {PAPER_C_FIRST_BIN}: {when}"
        )
        print(
            f"  sampling noise of C per bin (rms of C(r, 0), random spins): {values['noise']:.4f}"
        )
        if values.get("zero_crossing_r") is not None:
            print(
                f"  C crosses zero at r = {values['zero_crossing_r']:.2f} "
                f"(t = {values['zero_crossing_t']:.3g})"
            )
        if "late_peak" in values:
            peak = values["late_peak"]
            print(
                f"  largest C beyond r = {PEAK_FROM} at t = {peak['t']:.3g}: "
                f"{peak['c']:+.4f} at r = {peak['r']:.2f}, {peak['c_t0']:+.4f} there at t = 0 "
                f"({peak_verdict(peak, values['noise'])} against the paper's weak peak near "
                "r ~ 1.5)"
            )
        print(
            f"  |m| at the end: {values['magnetisation_last']:.4f} "
            f"(random spins: {values['random_magnetisation']:.4f})"
        )
        print(
            f"  xi: {values['xi_first']:.3f} -> {values['xi_last']:.3f} ell, smallest "
            f"{values['xi_min']:.3f} at t = {values['xi_min_t']:.3g}"
        )
        if values["growth_psi"] is not None:
            lo, hi = values["growth_fit_range"]
            print(
                f"  droplet fit of the growth alone (from the smallest xi, t = {lo:.3g}..{hi:.3g}):"
                f" psi = {values['growth_psi']:.3f} +- {values['growth_psi_err']:.3f} "
                f"({psi_verdict(values['growth_psi'], values['growth_psi_err'])} against 1.02)"
            )
        floor_fit = ""
        if values["floor_growth_psi"] is not None:
            lo, hi = values["floor_growth_fit_range"]
            psi, err = values["floor_growth_psi"], values["floor_growth_psi_err"]
            floor_fit = (
                f"; droplet fit of its growth (t = {lo:.3g}..{hi:.3g}): psi = {psi:.3f} +- "
                f"{err:.3f} ({psi_verdict(psi, err)} against 1.02)"
            )
        smallest = (
            "nothing above the noise after t = 0"
            if values["floor_xi_min"] is None
            else f"smallest {values['floor_xi_min']:.3f} at t = {values['floor_xi_min_t']:.3g}"
        )
        print(
            f"  xi with the noise ({values['noise']:.4f} per bin) taken off |C|: "
            f"{values['floor_xi_first']:.3f} -> {values['floor_xi_last']:.3f} ell, "
            f"{smallest}{floor_fit}"
        )
        if values["psi"] is None:
            window = (
                f"t = {args.fit_from:g}..{'end' if args.fit_to is None else f'{args.fit_to:g}'}"
            )
            print(f"  droplet fit: fewer than 3 records with t > 1 in {window}")
        else:
            lo, hi = values["fit_range"]
            print(
                f"  droplet fit (log t)^(1/psi) on t = {lo:.3g}..{hi:.3g}: "
                f"psi = {values['psi']:.3f} +- {values['psi_err']:.3f} "
                f"({psi_verdict(values['psi'], values['psi_err'])} against the paper's 1.02)"
            )
    if args.plot:
        fig = quench_figure(traj, args.title, fit)
        save_figure(fig, args.plot, args.force)
        print(f"wrote {args.plot}")


def _require_display(environ, platform: str) -> None:
    """Refuse to open the app where Qt would abort the process: Linux with neither X nor Wayland."""
    if not platform.startswith("linux") or environ.get("QT_QPA_PLATFORM"):
        return
    if not (environ.get("DISPLAY") or environ.get("WAYLAND_DISPLAY")):
        raise DisplayError(
            "the app needs a display and neither DISPLAY nor WAYLAND_DISPLAY is set: run it "
            "on a desktop, or headless under a virtual X server, e.g. "
            "xvfb-run -a sdglass app --steps 100 --screenshot shot.png"
        )


def cmd_app(args: argparse.Namespace) -> int:
    """The napari explorer (imported lazily: the rest of the CLI never loads Qt)."""
    from core.io import check_output, read_state
    from core.modelfile import load_model

    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    if args.measure is not None:
        if not args.steps:
            raise ConfigError("--measure needs --steps K (it measures while K steps run)")
        check_output(args.measure, args.force)
    if args.screenshot is not None:
        check_output(args.screenshot, args.force)
        if not str(args.screenshot).lower().endswith(".png"):
            raise ConfigError(
                f"--screenshot writes a PNG image: name a .png file, not {args.screenshot}"
            )
    if args.movie is not None:
        if not args.steps:
            raise ConfigError("--movie needs --steps K (it films while K steps run)")
        if not str(args.movie).lower().endswith(".mp4"):
            raise ConfigError(f"--movie writes an MP4 video: name a .mp4 file, not {args.movie}")
        check_output(args.movie, args.force)
    if args.compare and not args.steps:
        raise ConfigError("--compare needs --steps K (it compares while K steps run)")
    if args.model is not None:
        load_model(args.model)  # refused here, not as a notification in an open window
    if args.state is not None:
        read_state(args.state)
    _require_display(os.environ, sys.platform)
    from app.launcher import launch

    status = launch(
        steps=args.steps, screenshot=args.screenshot, model_path=args.model, n=args.n,
        engine=args.engine, measure=args.measure, force=args.force, orbit=args.orbit,
        demo=args.demo, state=args.state, movie=args.movie, compare=args.compare,
    )  # fmt: skip
    return int(status or 0)


def cmd_bench(args: argparse.Namespace) -> None:
    """Seconds per field evaluation and per LLG step."""
    from core.bench import (
        batch_gains,
        bench_ed,
        bench_ml,
        format_summary,
        format_table,
        machine_description,
        speedup_summary,
        speedups,
    )

    _at_least("--sizes", args.sizes or [], 2)
    _at_least("--batch", args.batch, 1)
    _at_least("--repeats", [args.repeats], 1)
    _at_least("--rounds", [args.rounds], 1)
    if args.target == "ed" and args.rounds > 1:
        raise ConfigError("--rounds applies to bench ml (ML against ED), not to bench ed")
    if not args.min_time >= 0:
        raise ConfigError(f"--min-time must be >= 0 s, got {args.min_time}")
    device = _device(args.device)
    if args.target == "ed":
        sizes = args.sizes or [100, 250, 500, 1000]
    else:
        from core.modelfile import load_model

        model, _ = load_model(args.model)
        sizes = args.sizes or [100, 500, 2000, 10000]
    rounds: list[list[dict]] = []
    skipped: dict[tuple[int, int], str] = {}  # (N, B) too large for memory: the first message
    with _progress(len(sizes) * args.rounds, f"bench {args.target}", "size") as bar:

        def on_size(n: int) -> None:
            bar.set_postfix(N=n, round=len(rounds) + 1)
            bar.update(0 if n == sizes[0] else 1)

        for index in range(args.rounds):
            if index:
                bar.update(1)
            if args.target == "ed":
                rows = bench_ed(
                    sizes, args.repeats, device, on_size, args.min_time, args.batch, args.ed_method
                )
            else:  # ML, then ED, in every round: both see the machine of the same minutes
                rows = bench_ml(
                    model, sizes, args.repeats, device, args.batch, on_size, args.min_time,
                    on_skip=lambda n, b, message: skipped.setdefault((n, b), message),
                )  # fmt: skip
                ed_sizes = [n for n in sizes if n <= args.ed_max]
                if ed_sizes:
                    rows += bench_ed(
                        ed_sizes, args.repeats, device, on_size, args.min_time,
                        methods=args.ed_method,
                    )  # fmt: skip
            rounds.append([{**row, "round": index + 1} for row in rows])
        bar.update(1)
    summary = speedup_summary(rounds) if len(rounds) > 1 else []
    skips = [f"N = {n}, B = {b} skipped: {message}" for (n, b), message in skipped.items()]
    if args.json:
        record = {
            "machine": machine_description(),
            "results": [row for rows in rounds for row in rows],
            "speedups": [s for rows in rounds for s in speedups(rows)],
            "batch_gains": [g for rows in rounds for g in batch_gains(rows)],
        }
        if summary:
            record["speedup_summary"] = summary
        if skips:
            record["skipped"] = skips
        print(json.dumps(record))
    else:
        print(f"machine: {machine_description()}")
        for index, rows in enumerate(rounds):
            if len(rounds) > 1:
                print(f"round {index + 1} of {len(rounds)}:")
            print(format_table(rows))
        if summary:
            print(format_summary(summary))
        for line in skips:
            print(line)


def cmd_check(args: argparse.Namespace) -> int:
    """The device against the CPU: ED and ML fields, and the app's dynamics."""
    from core.bench import hardware
    from core.devicecheck import check_device, format_report
    from core.modelfile import load_model

    device = _device(args.device)
    model, _ = load_model(args.model)
    with _progress(2, f"check {device}", "stage") as bar:

        def on_stage(stage: str) -> None:
            bar.set_postfix(stage=stage)
            bar.update(0 if stage == "fields" else 1)

        checks, timings = check_device(device, model, args.n, args.steps, on_stage)
        bar.update(1)
    print(f"machine: {hardware(device)}")
    print(format_report(device, checks, timings))
    return 0 if all(c.passed for c in checks) else 1


# --------------------------------------------------------------------------- parser


def _add_system(p: argparse.ArgumentParser, n: int = 100) -> None:
    g = p.add_argument_group("amorphous system (PHYSICS.md)")
    g.add_argument("-n", type=int, default=n, help="number of atoms N")
    g.add_argument(
        "--box", type=float, default=None,
        help="cube side L in ell (default: the paper's density 0.8, L = 5 (N/100)^(1/3))",
    )  # fmt: skip
    g.add_argument("--r-min", type=float, default=0.5, help="minimum pair distance in ell")
    g.add_argument("--seed", type=int, default=0, help="seed of the atomic configuration(s)")


def _add_electrons(p: argparse.ArgumentParser, paper_defaults: bool) -> None:
    g = p.add_argument_group(
        "electrons (paper Eq. 17)"
        + ("" if paper_defaults else "; default: the input file's attributes, else the paper's")
    )
    g.add_argument("--J", type=float, default=None, help=f"s-d coupling in t0 (paper: {PAPER.J:g})")
    g.add_argument(
        "--filling", type=float, default=None,
        help=f"electrons per spin-orbital (paper: {PAPER.filling:g}, half filling)",
    )  # fmt: skip
    g.add_argument(
        "--kT-e", dest="kT_e", type=float, default=None,
        help=f"electron temperature in t0; 0 fills the lowest states (paper: {PAPER.kT_e:g})",
    )  # fmt: skip
    g.add_argument(
        "--r-hop", type=float, default=None,
        help="hopping cutoff in ell (paper: none, all minimum-image pairs)",
    )  # fmt: skip
    g.add_argument("--t0", type=float, default=None, help="hopping amplitude (paper: 1)")
    g.add_argument("--ell", type=float, default=None, help="hopping decay length (paper: 1)")


def _add_output(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("-o", "--output", required=True, help=what)
    p.add_argument("--force", action="store_true", help="overwrite existing output files")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="torch device")


def _add_cluster(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "Dask (one task per atomic configuration; same numbers as one process)"
    ).add_mutually_exclusive_group()
    g.add_argument(
        "--scheduler", default=None, metavar="ADDRESS",
        help="run on the Dask cluster of this scheduler, e.g. tcp://10.0.0.5:8786",
    )  # fmt: skip
    g.add_argument(
        "--workers", type=int, default=None, metavar="K",
        help="run on a local Dask cluster of K single-threaded worker processes",
    )  # fmt: skip


def _add_checkpoints(p: argparse.ArgumentParser, timed: bool = True) -> None:
    """--checkpoint DIR; timed: also --checkpoint-every (runs that save part-way)."""
    g = p.add_argument_group("resuming long runs")
    when = (
        "every --checkpoint-every seconds, at the end of each configuration group or "
        "network, and on Ctrl-C or SIGTERM" if timed else "each configuration as it is finished"
    )  # fmt: skip
    g.add_argument(
        "--checkpoint", default=None, metavar="DIR",
        help=f"save progress in DIR ({when}); the same command with the same DIR continues "
        "from there, with the numbers of an uninterrupted run",
    )  # fmt: skip
    if timed:
        g.add_argument(
            "--checkpoint-every", type=float, default=DEFAULT_EVERY, metavar="SECONDS",
            help="seconds of wall time between saves",
        )  # fmt: skip


def _checkpoints(args: argparse.Namespace):
    """The Checkpoints of --checkpoint (None without it)."""
    if args.checkpoint is None:
        return None
    from core.checkpoint import Checkpoints

    return Checkpoints(args.checkpoint, getattr(args, "checkpoint_every", DEFAULT_EVERY))


@contextmanager
def _saved_on_interrupt(directory, how: str = "run the same command again") -> Iterator[None]:
    """On Ctrl-C, say where the progress was saved (None: nowhere) and how to continue."""
    try:
        yield
    except KeyboardInterrupt:
        if directory is not None:
            print(f"sdglass: progress saved in {directory}; {how} to continue", file=sys.stderr)
        raise


def _cluster(args: argparse.Namespace):
    """The ClusterSpec of --scheduler / --workers (None when neither is given)."""
    if args.scheduler is None and args.workers is None:
        return None
    from core.cluster import ClusterSpec

    return ClusterSpec(scheduler=args.scheduler, workers=args.workers)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in its help, unless the help states its own or there is none
    (no "(default: None)" after "(default: the paper's density ...)")."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if "(default" in (action.help or "") or action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    fmt = HelpFormatter
    parser = argparse.ArgumentParser(
        prog="sdglass",
        description=(
            "Quench dynamics of amorphous s-d metallic spin glasses (Shi, Zhang, Chern 2023). "
            "Units: length ell, energy and temperature t0, time 1/(gamma t0)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"sdglass {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "generate", help="random spins on a new amorphous configuration", formatter_class=fmt
    )
    _add_system(p)
    p.add_argument("--frames", type=int, default=1, help="number of random-spin frames")
    _add_output(p, "output frames file (.h5)")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "label", help="ED fields and energies for every frame of a frames file", formatter_class=fmt
    )
    p.add_argument("input", help="input frames file (.h5)")
    _add_electrons(p, paper_defaults=False)
    p.add_argument("--batch", type=int, default=16, help="frames per batched diagonalization")
    _add_device(p)
    _add_output(p, "output frames file with fields and energy (.h5)")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser(
        "quench", help="ensemble thermal quench with stochastic LLG", formatter_class=fmt
    )
    p.add_argument(
        "--engine", choices=("ed", "ml"), default="ed",
        help="field engine: exact diagonalization or the ML model",
    )  # fmt: skip
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model file for --engine ml")
    _add_system(p)
    _add_electrons(p, paper_defaults=True)
    g = p.add_argument_group("LLG dynamics (paper Eq. 3)")
    g.add_argument("--configs", type=int, default=2, help="atomic configurations")
    g.add_argument("--replicas", type=int, default=4, help="random-spin replicas per configuration")
    g.add_argument("--t-max", type=float, default=50.0, help="final time in 1/(gamma t0)")
    g.add_argument("--dt", type=float, default=PAPER_LLG.dt, help="time step in 1/(gamma t0)")
    g.add_argument(
        "--temperature",
        type=float,
        default=PAPER_LLG.temperature,
        help="bath k_B T in t0 (paper: 0.001)",
    )
    g.add_argument(
        "--alpha", type=float, default=PAPER_LLG.alpha, help="Gilbert damping (paper: 0.05)"
    )
    g.add_argument(
        "--integrator", choices=INTEGRATORS, default=PAPER_LLG.integrator, help="LLG integrator"
    )
    g.add_argument(
        "--noise-seed", type=int, default=0, help="seed of initial spins and thermal noise"
    )
    g.add_argument(
        "--pack", type=int, default=1,
        help="configurations advanced together in one batched call of the model or of ED "
        "(fills a GPU; same results up to round-off)",
    )  # fmt: skip
    g.add_argument(
        "--ed-method", choices=ED_METHODS, default="auto",
        help="ed engine: eigh diagonalizes; purification (kT_e = 0) reaches the occupied "
        "states by matrix products (same fields to ~1e-13); auto purifies on cuda",
    )  # fmt: skip
    g = p.add_argument_group("observables")
    g.add_argument("--records", type=int, default=40, help="log-spaced record times (plus t = 0)")
    g.add_argument("--bin-width", type=float, default=0.1, help="C(r, t) bin width in ell")
    g.add_argument("--snapshots", action="store_true", help="store spins at every record time")
    _add_device(p)
    _add_cluster(p)
    _add_checkpoints(p)
    _add_output(p, "output trajectory file (.h5)")
    p.add_argument("--plot", default=None, help="also write a two-panel figure (png/pdf/svg)")
    p.set_defaults(func=cmd_quench)

    p = sub.add_parser(
        "dos", help="J = 0 electron density of states (paper Fig. 2)", formatter_class=fmt
    )
    _add_system(p)
    _add_electrons(p, paper_defaults=True)
    p.add_argument("--configs", type=int, default=20, help="atomic configurations to average")
    p.add_argument(
        "--bins", type=int, default=200, help="histogram bins over the lower 95 %% of the states"
    )
    _add_output(p, "output figure (png/pdf/svg)")
    p.set_defaults(func=cmd_dos)

    p = sub.add_parser(
        "app",
        help="open the napari explorer (the default with no sub-command)",
        formatter_class=fmt,
    )
    p.add_argument("-n", type=int, default=100, help="number of atoms N (paper: 100)")
    p.add_argument("--model", default=None, help=f"ML model file (default: {DEFAULT_MODEL.name})")
    p.add_argument(
        "--state",
        default=None,
        help="open a saved state (a frames file, or a recorded trajectory's last snapshot; "
        "its atoms, spins and electrons, instead of -n)",
    )
    p.add_argument("--steps", type=int, default=None, help="run K LLG steps at start")
    p.add_argument(
        "--screenshot", default=None,
        help="after the steps, save the whole window to this PNG and exit with status 0",
    )  # fmt: skip
    p.add_argument(
        "--engine", choices=("ed", "ml"), default="ed",
        help="field provider selected in the Dynamics panel (ml: the loaded model)",
    )  # fmt: skip
    p.add_argument(
        "--measure", default=None,
        help="with --steps: write frames per second and event-loop stalls during the run "
        "to this JSON file, print them and exit",
    )  # fmt: skip
    p.add_argument(
        "--orbit", action="store_true",
        help="with --measure: turn the camera 20 times per second meanwhile, as a user would",
    )  # fmt: skip
    p.add_argument(
        "--demo", action="store_true",
        help="choose the Dynamics panel's fast demo preset (alpha = 1, 5 steps per frame: "
        "C(r, t) builds up some 10 times sooner than with the paper's alpha = 0.05)",
    )  # fmt: skip
    p.add_argument(
        "--movie", default=None,
        help="with --steps: film the 3D view while they run into this MP4 (10 frames per "
        "second, the time written on it) and exit",
    )  # fmt: skip
    p.add_argument(
        "--compare", action="store_true",
        help="with --steps: compare the ML fields with ED while they run (Fields panel, "
        "'Compare during runs'); a --screenshot then shows the Fields panel, its parity plot "
        "and error history, and the atoms coloured by the ML error",
    )  # fmt: skip
    p.add_argument(
        "--force", action="store_true",
        help="overwrite an existing --screenshot, --measure or --movie file",
    )  # fmt: skip
    p.set_defaults(func=cmd_app)

    p = sub.add_parser(
        "summary",
        help="the paper's quantities of one quench run (C(r_min), zero crossing, psi)",
        formatter_class=fmt,
    )
    p.add_argument(
        "run",
        help="trajectory file (.h5) written by quench, or a quench checkpoint directory "
        "(--checkpoint DIR; a reproduction's checkpoints/NAME): what it has recorded so far",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--plot", default=None, help="write C(r, t) and xi(t) with the droplet fit")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument(
        "--fit-from", type=float, default=1.5,
        help="droplet fit (log t)^(1/psi) on records from this time (1/(gamma t0))",
    )  # fmt: skip
    p.add_argument("--fit-to", type=float, default=None, help="... up to this time (default: end)")
    p.add_argument("--force", action="store_true", help="overwrite an existing figure")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser(
        "compare", help="compare C(r, t) of quench runs (e.g. ED vs ML)", formatter_class=fmt
    )
    p.add_argument(
        "runs", nargs="+",
        help="trajectory files (.h5) or quench checkpoint directories; the first is the reference",
    )  # fmt: skip
    p.add_argument("--t-max", type=float, default=100.0, help="compare record times t <= t-max")
    p.add_argument("--plot", default=None, help="write C(r, t) of all runs in one figure")
    p.add_argument("--labels", nargs="+", default=None, help="legend labels (default: engines)")
    p.add_argument("--title", default="", help="figure title")
    p.add_argument("--force", action="store_true", help="overwrite an existing figure")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("bench", help="speed benchmarks", formatter_class=fmt)
    p.add_argument("target", choices=("ed", "ml"), help="what to benchmark")
    p.add_argument(
        "--sizes", type=int, nargs="+", default=None,
        help="N values (default: ed 100 250 500 1000; ml 100 500 2000 10000)",
    )  # fmt: skip
    p.add_argument(
        "--repeats", type=int, default=3, help="least timed repeats per size (best is reported)"
    )
    p.add_argument(
        "--min-time", type=float, default=1.0,
        help="least seconds of timed repeats per quantity (fast calls run more often)",
    )  # fmt: skip
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model file for bench ml")
    p.add_argument(
        "--batch", type=int, nargs="+", default=[1],
        help="replicas B per evaluation (ML; ED with bench ed); several values give a row "
        "each (e.g. 1 20 200)",
    )  # fmt: skip
    p.add_argument(
        "--ed-method", nargs="+", choices=ED_METHODS, default=["auto"],
        help="how ED finds the occupied states: eigh diagonalizes, purification (kT_e = 0) "
        "uses matrix products; auto purifies on cuda. Several give a row each (ed-pur rows)",
    )  # fmt: skip
    p.add_argument("--ed-max", type=int, default=1000, help="bench ml: also time ED up to this N")
    p.add_argument(
        "--rounds", type=int, default=1,
        help="bench ml: time ML and then ED this many times, one after the other, and give "
        "the least, median and largest speed-up (this machine's load changes from minute "
        "to minute)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    _add_device(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser(
        "check",
        help="does a device (cuda) compute the same fields and dynamics as the CPU?",
        formatter_class=fmt,
    )
    p.add_argument("-n", type=int, default=100, help="number of atoms N (paper: 100)")
    p.add_argument("--steps", type=int, default=20, help="SIB steps of the app's dynamics")
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="model file for the ML checks")
    p.add_argument(
        "--device", choices=("cpu", "cuda"),
        default="cuda" if torch.cuda.is_available() else "cpu",
        help="device compared with the CPU (default: cuda when available)",
    )  # fmt: skip
    p.set_defaults(func=cmd_check)

    from core.cli_ml import add_ml_commands  # dataset, train, eval

    add_ml_commands(sub)
    # no abbreviated options: `--kT 0.01` would silently set the electron temperature --kT-e
    for command in [parser, *sub.choices.values()]:
        command.allow_abbrev = False
    return parser


def _warning_line(message, category, filename, lineno, file=None, line=None) -> None:
    """A warning as the CLI prints it: one line, without the source location, above any
    progress bar."""
    tqdm.write(f"sdglass: warning: {message}", file=sys.stderr if file is None else file)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sdglass` console script."""
    keep_freed_memory()  # large tensors reused, not page-faulted in again every step
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:  # plain `sdglass` opens the app
        args = parser.parse_args(["app"])
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _warning_line
            return int(args.func(args) or 0)
    except SdglassError as err:
        print(f"sdglass: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sdglass: interrupted; no half-written output file was left", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
