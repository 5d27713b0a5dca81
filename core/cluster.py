"""Independent per-configuration tasks on one process or on a Dask cluster.

`sdglass quench` and `sdglass dataset` split their work by atomic
configuration: task c depends only on the run's configuration and on c (seeds
derive from c), and its result holds sums that are merged in index order. So a
run spread over a Dask cluster (``--scheduler ADDRESS``, or ``--workers K`` for
a local cluster of K single-threaded worker processes) gives the numbers of a
single-process run, bit for bit when both use the same torch thread count (Dask
workers run one thread each: ``OMP_NUM_THREADS=1`` gives the single-process
reference). A configuration whose worker dies is computed again by another
worker (Dask's scheduler reschedules the tasks of a lost worker). Without a
cluster nothing of Dask is imported.

A remote cluster must be able to import sdglass and to read any file the run
names (the ML model): share the environment and the file system.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.config import _require
from core.errors import ClusterError

T = TypeVar("T")

#: How long to try reaching a Dask scheduler before giving up.
CONNECT_TIMEOUT = "30s"


@dataclass(frozen=True)
class ClusterSpec:
    """Where configurations run: scheduler, the address of a running Dask scheduler
    (e.g. tcp://10.0.0.5:8786); or workers, the size of a local cluster started for the
    run (single-threaded worker processes). At most one of the two."""

    scheduler: str | None = None
    workers: int | None = None

    def __post_init__(self) -> None:
        _require(
            self.scheduler is None or self.workers is None,
            "give either a Dask scheduler address or a number of local workers, not both",
        )
        _require(
            self.workers is None or (isinstance(self.workers, int) and self.workers >= 1),
            f"workers must be a whole number >= 1, got {self.workers!r}",
        )
        _require(
            self.scheduler is None or bool(str(self.scheduler).strip()),
            "the scheduler address is empty",
        )

    @property
    def distributed(self) -> bool:
        return self.scheduler is not None or self.workers is not None

    def describe(self) -> str:
        if self.scheduler is not None:
            return f"Dask scheduler {self.scheduler}"
        if self.workers is not None:
            return f"local Dask cluster of {self.workers} worker process(es)"
        return "this process"


def map_configurations(
    task: Callable[[int], T],
    count: int,
    cluster: ClusterSpec | None = None,
    on_done: Callable[[int, T], None] | None = None,
) -> list[T]:
    """[task(0), ..., task(count - 1)], run here or on the cluster; on_done(c, result) is
    called in this process as each configuration finishes (in any order on a cluster)."""
    if cluster is None or not cluster.distributed:
        results = []
        for c in range(count):
            results.append(task(c))
            if on_done is not None:
                on_done(c, results[-1])
        return results
    return _map_on_dask(task, count, cluster, on_done)


def _map_on_dask(task, count: int, cluster: ClusterSpec, on_done) -> list[Any]:
    from dask.distributed import Client, LocalCluster, as_completed

    local = None
    if cluster.workers is not None:
        local = LocalCluster(
            n_workers=cluster.workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
        )
    try:
        try:
            client = Client(
                local if local is not None else cluster.scheduler, timeout=CONNECT_TIMEOUT
            )
        except (OSError, ValueError) as err:  # ValueError: an address Dask cannot parse
            raise ClusterError(
                f"cannot reach the Dask scheduler {cluster.scheduler}: {err}"
            ) from None
        with client:
            # pure=False: every run computes afresh, never a result cached on the cluster
            futures = [client.submit(task, c, pure=False) for c in range(count)]
            index = {f.key: c for c, f in enumerate(futures)}
            results: list[Any] = [None] * count
            for future in as_completed(futures):
                c = index[future.key]
                results[c] = future.result()  # a task's own error is raised here
                if on_done is not None:
                    on_done(c, results[c])
            return results
    finally:
        if local is not None:
            local.close()
