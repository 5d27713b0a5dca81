"""Speed benchmarks: wall-clock seconds per field evaluation and per LLG step (not timed tests)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable

import torch

from core.config import ElectronConfig, LLGConfig, SystemConfig
from core.electrons import EDSolver
from core.errors import MemoryLimitError
from core.fields import FieldProvider
from core.llg import LLG
from core.model import EnergyModel, MLFieldProvider
from core.system import generate_positions, random_spins

Row = dict[str, float | int | str]


#: Default least total timing per quantity (s): fast calls are repeated until it is spent.
MIN_TIME = 1.0


def time_call(fn: Callable[[], object], repeats: int, min_time: float = MIN_TIME) -> float:
    """Best wall time of fn() in seconds over at least `repeats` calls and at least
    min_time seconds of calls, after one warm-up call (the best of many is the least
    disturbed by other work on the machine)."""
    fn()
    best, spent, count = float("inf"), 0.0, 0
    while count < repeats or spent < min_time:
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        best, spent, count = min(best, elapsed), spent + elapsed, count + 1
    return best


def bench_provider(
    engine: str,
    provider: FieldProvider,
    n: int,
    repeats: int,
    device: str,
    batch: int = 1,
    min_time: float = MIN_TIME,
) -> Row:
    """Seconds per field evaluation and per SIB LLG step (2 evaluations) of one provider."""
    # drawn on the CPU: the same spins on every device
    spins = random_spins(batch, n, torch.Generator().manual_seed(0)).to(device)
    stepper = LLG(provider, LLGConfig(), device=device)
    return {
        "engine": engine,
        "n": n,
        "batch": batch,
        "device": device,
        "seconds_per_eval": time_call(lambda: provider.fields(spins), repeats, min_time),
        "seconds_per_step": time_call(lambda: stepper.step(spins), repeats, min_time),
    }


def paper_systems(sizes: Iterable[int], on_size: Callable[[int], None] | None = None):
    """(N, system) at the paper's density for each N, announcing each size first."""
    for n in sizes:
        if on_size is not None:
            on_size(n)
        yield n, generate_positions(SystemConfig(n=n, seed=0))


def bench_ed(
    sizes: Iterable[int] = (100, 250, 500, 1000),
    repeats: int = 3,
    device: str = "cpu",
    on_size: Callable[[int], None] | None = None,
    min_time: float = MIN_TIME,
    batches: Iterable[int] = (1,),
    methods: Iterable[str] = ("auto",),
) -> list[Row]:
    """ED at the paper's density: every N with every method (core.electrons.ED_METHODS;
    rows name the one "auto" chose) and every batch B of spin configurations per call."""
    rows = []
    for n, system in paper_systems(sizes, on_size):
        for method in methods:
            solver = EDSolver(system, ElectronConfig(), device, method)
            for batch in batches:
                row = bench_provider("ed", solver, n, repeats, device, batch, min_time)
                rows.append({**row, "method": solver.method})
    return rows


def bench_ml(
    model: EnergyModel,
    sizes: Iterable[int] = (100, 500, 2000, 10000),
    repeats: int = 3,
    device: str = "cpu",
    batches: Iterable[int] = (1,),
    on_size: Callable[[int], None] | None = None,
    min_time: float = MIN_TIME,
    on_skip: Callable[[int, int, str], None] | None = None,
) -> list[Row]:
    """The ML model (float32 network) at the paper's density, every N with every replica
    batch B (one geometry, B spin states per call); geometry set-up time reported too.
    A batch whose evaluation cannot fit in memory is passed to on_skip (N, B, the error's
    message) and left out when on_skip is given, else its MemoryLimitError stops the
    benchmark."""
    rows = []
    for n, system in paper_systems(sizes, on_size):
        start = time.perf_counter()
        provider = MLFieldProvider(model, system, device)
        setup = time.perf_counter() - start
        for batch in batches:
            try:
                row = bench_provider("ml", provider, n, repeats, device, batch, min_time)
            except MemoryLimitError as error:
                if on_skip is None:
                    raise
                on_skip(n, batch, str(error))
                continue
            rows.append({**row, "setup_seconds": setup})
    return rows


def machine_description() -> str:
    threads = torch.get_num_threads()
    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"{threads} torch thread{'s' if threads != 1 else ''}, torch {torch.__version__}"
    )


def hardware(device: str) -> str:
    """CPU and torch threads, plus the GPU name on CUDA."""
    text = machine_description()
    if device.startswith("cuda") and torch.cuda.is_available():
        text += f", {torch.cuda.get_device_name(torch.device(device))}"
    return text


def speedups(rows: list[Row]) -> list[Row]:
    """ML over ED per evaluation and per step, for every N timed with both (B = 1 each; the
    faster ED method where several were timed)."""
    ed: dict[int, Row] = {}
    for r in rows:
        if r["engine"] == "ed" and r["batch"] == 1:
            best = ed.get(r["n"])
            if best is None or float(r["seconds_per_step"]) < float(best["seconds_per_step"]):
                ed[r["n"]] = r
    return [
        {
            "n": r["n"],
            "eval": float(ed[r["n"]]["seconds_per_eval"]) / float(r["seconds_per_eval"]),
            "step": float(ed[r["n"]]["seconds_per_step"]) / float(r["seconds_per_step"]),
        }
        for r in rows
        if r["engine"] == "ml" and r["batch"] == 1 and r["n"] in ed
    ]


def speedup_summary(rounds: list[list[Row]]) -> list[Row]:
    """Least, median and largest of ML's speed-up over ED (speedups()) per N across rounds
    timed one after the other: on a shared machine the spread is part of the result."""
    per_n: dict[int, list[Row]] = {}
    for rows in rounds:
        for s in speedups(rows):
            per_n.setdefault(int(s["n"]), []).append(s)
    return [
        {
            "n": n,
            "rounds": len(found),
            **{
                f"{key}_{stat}": fn([float(s[key]) for s in found])
                for key in ("eval", "step")
                for stat, fn in (("min", min), ("median", statistics.median), ("max", max))
            },
        }
        for n, found in per_n.items()
    ]


def batch_gains(rows: list[Row]) -> list[Row]:
    """Throughput (spin-steps per second) of each batch B > 1 over B = 1 at the same N."""
    single = {r["n"]: r for r in rows if r["engine"] == "ml" and r["batch"] == 1}
    return [
        {
            "n": r["n"],
            "batch": r["batch"],
            "throughput_gain": int(r["batch"])
            * float(single[r["n"]]["seconds_per_step"])
            / float(r["seconds_per_step"]),
        }
        for r in rows
        if r["engine"] == "ml" and int(r["batch"]) > 1 and r["n"] in single
    ]


def format_summary(summary: list[Row]) -> str:
    """One line per N: ML's speed-up over ED per step and per evaluation across rounds."""
    return "\n".join(
        f"over {s['rounds']} rounds at N = {s['n']}: ML is {s['step_min']:.1f}x to "
        f"{s['step_max']:.1f}x faster than ED per step (median {s['step_median']:.1f}x), "
        f"{s['eval_min']:.1f}x to {s['eval_max']:.1f}x per evaluation "
        f"(median {s['eval_median']:.1f}x)"
        for s in summary
    )


def format_table(rows: list[Row]) -> str:
    """A plain-text table of benchmark rows, with the speed per spin and ML's speed-up."""
    lines = [
        f"{'engine':<7}{'N':>7}{'B':>6}{'s / eval':>11}{'s / step':>11}{'us / spin-step':>16}"
        f"{'set-up s':>10}"
    ]
    for r in rows:
        per_spin = 1e6 * float(r["seconds_per_step"]) / (int(r["n"]) * int(r["batch"]))
        setup = f"{float(r['setup_seconds']):>10.3g}" if "setup_seconds" in r else ""
        engine = "ed-pur" if r.get("method") == "purification" else r["engine"]
        lines.append(
            f"{engine!s:<7}{r['n']:>7}{r['batch']:>6}{float(r['seconds_per_eval']):>11.4g}"
            f"{float(r['seconds_per_step']):>11.4g}{per_spin:>16.4g}{setup}"
        )
    for s in speedups(rows):
        lines.append(
            f"ML is {s['eval']:.1f}x faster than ED per evaluation, {s['step']:.1f}x per step, "
            f"at N = {s['n']}"
        )
    for g in batch_gains(rows):
        lines.append(
            f"B = {g['batch']} replicas in one call: {g['throughput_gain']:.1f}x the spin-steps "
            f"per second of B = 1, at N = {g['n']}"
        )
    return "\n".join(lines)
