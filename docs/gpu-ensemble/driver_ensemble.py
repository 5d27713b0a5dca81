"""Paper-ensemble ML-LLG on a lent GPU: 10 configurations x 20 replicas packed into one call.

Probes the packed step rate, then sizes each run's t_max to fit its time budget.
"""

import json
import os
import sys
import time

import torch

from core.config import LLGConfig, SystemConfig
from core.io import write_trajectory
from core.quench import QuenchConfig, run_quench, to_trajectory

OUT = os.environ["OUT"]
MODEL = "assets/models/default.safetensors"


def run(n, seed, t_max, name):
    qc = QuenchConfig(
        system=SystemConfig(n=n, seed=seed),
        llg=LLGConfig(seed=seed),
        engine="ml",
        configs=10,
        replicas=20,
        t_max=t_max,
        n_records=40,
        device="cuda",
        model_path=MODEL,
        pack=10,
    )
    marks = []
    start = time.perf_counter()
    res = run_quench(qc, on_steps=lambda k: marks.append(time.perf_counter()))
    torch.cuda.synchronize()
    total = time.perf_counter() - start
    rate = (len(marks) - 1) / (marks[-1] - marks[0])
    if name:
        write_trajectory(f"{OUT}/{name}.h5", to_trajectory(res))
    info = dict(
        name=name,
        n=n,
        t_max=t_max,
        steps=qc.n_steps,
        total_s=round(total, 1),
        setup_s=round(marks[0] - start, 1),
        packed_steps_per_s=round(rate, 2),
        spin_steps_per_s=round(rate * 10 * 20 * n),
    )
    print(json.dumps(info), flush=True)
    return info


budget = {100: float(sys.argv[1]), 500: float(sys.argv[2])}
seeds = {100: 5000, 500: 6000}
log = []
probe = {n: run(n, seeds[n], 6.0, None) for n in (500, 100)}
log += probe.values()
for n in (100, 500):
    steps = probe[n]["packed_steps_per_s"] * (budget[n] - probe[n]["setup_s"]) * 0.9
    t_max = min(1000.0, max(10.0, round(steps * 0.02, -1)))
    log.append(run(n, seeds[n], t_max, f"ml-n{n}-paper-ensemble"))
    with open(f"{OUT}/timings.json", "w") as f:
        json.dump(log, f, indent=1)
