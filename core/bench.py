"""Speed benchmarks: wall-clock seconds per field evaluation (not part of the timed tests)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Iterable

import torch

from core.config import ElectronConfig, SystemConfig
from core.electrons import EDSolver
from core.system import generate_positions, random_spins


def time_call(fn: Callable[[], object], repeats: int) -> float:
    """Best-of-`repeats` wall time of fn() in seconds, after one warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_ed(
    sizes: Iterable[int] = (100, 250, 500, 1000),
    repeats: int = 3,
    device: str = "cpu",
    on_size: Callable[[int], None] | None = None,
) -> list[dict[str, float | int | str]]:
    """Seconds per ED field evaluation (one spin configuration) at the paper's density."""
    rows = []
    for n in sizes:
        if on_size is not None:
            on_size(n)
        system = generate_positions(SystemConfig(n=n, seed=0))
        ed = EDSolver(system, ElectronConfig(), device)
        spins = random_spins(1, n, torch.Generator().manual_seed(0), device=device)
        seconds = time_call(lambda ed=ed, spins=spins: ed.fields(spins), repeats)
        rows.append({"engine": "ed", "n": n, "seconds_per_eval": seconds, "device": device})
    return rows


def machine_description() -> str:
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def format_table(rows: list[dict[str, float | int | str]]) -> str:
    """A plain-text table of benchmark rows."""
    lines = [f"{'engine':<8}{'N':>7}{'s / field eval':>17}{'evals / s':>12}"]
    for r in rows:
        s = float(r["seconds_per_eval"])
        lines.append(f"{r['engine']!s:<8}{r['n']:>7}{s:>17.4g}{1 / s:>12.3g}")
    return "\n".join(lines)
