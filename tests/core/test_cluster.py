"""Quench and dataset on a Dask cluster: the numbers of one process, also when a worker dies."""

import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from dask.distributed import Client, LocalCluster

from core import cluster as cluster_module
from core.cluster import ClusterSpec, map_configurations
from core.config import ConfigError, SystemConfig
from core.dataset import DatasetConfig, generate_dataset
from core.errors import ClusterError
from core.quench import QuenchConfig, run_identity, run_quench


@pytest.fixture(scope="module")
def dask_cluster():
    """Two single-threaded worker processes, as `--workers 2` starts them."""
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0"
    ) as cluster:
        yield cluster


@pytest.fixture
def one_thread():
    """The single-process reference with the workers' torch thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def assert_same_quench(a, b):
    for name in ("times", "energy_per_spin", "magnetisation", "corr", "xi", "positions"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    np.testing.assert_array_equal(a.correlations.counts, b.correlations.counts)


def test_quench_on_two_workers_equals_one_process_bit_for_bit(dask_cluster, one_thread):
    qc = QuenchConfig(system=SystemConfig(n=24), configs=3, replicas=2, t_max=0.6, n_records=5)
    reference = run_quench(qc)
    steps = []
    spread = run_quench(
        qc, on_steps=steps.append, cluster=ClusterSpec(scheduler=dask_cluster.scheduler_address)
    )
    assert_same_quench(reference, spread)
    assert sum(steps) == qc.configs * qc.n_steps  # progress per finished configuration


def test_packed_ml_quench_on_two_workers_equals_one_process(dask_cluster, one_thread,
                                                           tiny_model_file):  # fmt: skip
    # groups of 2 configurations are the tasks: (0, 1) and (2)
    qc = QuenchConfig(system=SystemConfig(n=20), configs=3, replicas=2, t_max=0.2, n_records=4,
                      engine="ml", model_path=str(tiny_model_file), pack=2)  # fmt: skip
    reference = run_quench(qc)
    steps = []
    spread = run_quench(
        qc, on_steps=steps.append, cluster=ClusterSpec(scheduler=dask_cluster.scheduler_address)
    )
    assert_same_quench(reference, spread)
    assert sorted(steps) == [qc.n_steps, 2 * qc.n_steps]


def test_checkpointed_quench_on_two_workers_saves_every_group(dask_cluster, one_thread,
                                                              tmp_path):  # fmt: skip
    from core.checkpoint import Checkpoints

    qc = QuenchConfig(system=SystemConfig(n=24), configs=3, replicas=2, t_max=0.4, n_records=5)
    ck = Checkpoints(tmp_path / "ck")
    spread = run_quench(qc, cluster=ClusterSpec(scheduler=dask_cluster.scheduler_address),
                        checkpoints=ck)  # fmt: skip
    assert_same_quench(run_quench(qc), spread)
    assert all(ck.load(g, run_identity(qc, g)).done for g in range(qc.configs))
    assert_same_quench(run_quench(qc, checkpoints=ck), spread)  # read back here


def test_reproduction_spreads_the_ed_configurations_of_fig_4(dask_cluster, one_thread,
                                                             tmp_path, tiny_model_file):  # fmt: skip
    from dataclasses import replace

    from core.io import read_trajectory
    from core.reproduce import SCALES, Setting, dynamics_step

    scale = replace(SCALES["quick"], fig4_t_max=0.2)
    lines = []
    spread = ClusterSpec(scheduler=dask_cluster.scheduler_address)
    dynamics_step(Setting(scale, tiny_model_file, tmp_path / "a", log=lines.append,
                          cluster=spread))  # fmt: skip
    dynamics_step(Setting(scale, tiny_model_file, tmp_path / "b", log=lines.append))
    assert "on a Dask scheduler" in lines[0] and "Dask" not in lines[1] + lines[2] + lines[3]
    for engine in ("ed", "ml"):
        a, b = (read_trajectory(tmp_path / d / f"fig4-{engine}.h5") for d in "ab")
        np.testing.assert_array_equal(a.corr, b.corr)


def test_dataset_on_two_workers_equals_one_process(dask_cluster, one_thread):
    cfg = DatasetConfig(system=SystemConfig(n=16), configs=2, spins_per_config=6, replicas=2,
                        t_max=3.0)  # fmt: skip
    reference = generate_dataset(cfg)
    spread = generate_dataset(cfg, cluster=ClusterSpec(scheduler=dask_cluster.scheduler_address))
    for name in ("positions", "box", "spins", "fields", "energy", "source"):
        np.testing.assert_array_equal(getattr(reference, name), getattr(spread, name))


def kill_a_busy_worker(address: str, killed: list) -> None:
    """Wait until a worker is running a task, then SIGKILL its process (the nanny restarts it)."""
    with Client(address, timeout="30s") as client:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if keys]
            if busy:
                time.sleep(0.3)  # well into the configuration
                pid = client.run(os.getpid, workers=[busy[0]])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.05)


def test_a_worker_killed_mid_run_still_gives_the_complete_result(dask_cluster, one_thread):
    qc = QuenchConfig(system=SystemConfig(n=30), configs=4, replicas=2, t_max=8.0, n_records=6)
    reference = run_quench(qc)
    killed: list[int] = []
    killer = threading.Thread(
        target=kill_a_busy_worker, args=(dask_cluster.scheduler_address, killed)
    )
    killer.start()
    spread = run_quench(qc, cluster=ClusterSpec(scheduler=dask_cluster.scheduler_address))
    killer.join()
    assert killed, "no worker was killed: the test did not exercise a lost worker"
    assert_same_quench(reference, spread)


def test_local_workers_option_starts_and_stops_its_own_cluster(one_thread):
    calls = map_configurations(_square, 3, ClusterSpec(workers=1))
    assert calls == [0, 1, 4]


def _square(c: int) -> int:
    return c * c


def test_unreachable_scheduler_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cluster_module, "CONNECT_TIMEOUT", "1s")
    with pytest.raises(ClusterError, match=r"cannot reach the Dask scheduler tcp://127\.0\.0\.1:9"):
        map_configurations(_square, 2, ClusterSpec(scheduler="tcp://127.0.0.1:9"))
    with pytest.raises(ClusterError, match="scheduler bogus: missing port number in address"):
        map_configurations(_square, 2, ClusterSpec(scheduler="bogus"))  # not an address


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(scheduler="tcp://a:1", workers=2), "not both"),
        (dict(workers=0), "workers must be a whole number >= 1"),
        (dict(scheduler=" "), "scheduler address is empty"),
    ],
)
def test_cluster_spec_validation(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        ClusterSpec(**kwargs)


def test_without_cluster_options_nothing_of_dask_is_imported(tmp_path):
    code = (
        "import sys; from core.cli import main; "
        f"assert main(['quench', '-n', '12', '--configs', '1', '--replicas', '1', '--t-max', "
        f"'0.1', '--records', '3', '-o', r'{tmp_path / 'q.h5'}']) == 0; "
        "loaded = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')]; "
        "assert not loaded, loaded"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
