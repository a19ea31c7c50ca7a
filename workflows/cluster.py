"""Creating or joining the Dask client: the only place rnnenc starts a cluster.

Default: an embedded ``LocalCluster`` of worker processes, one single-threaded worker per
core (KenLM and sacremoses hold the GIL, so threads would not scale). ``--scheduler
tcp://HOST:PORT`` or ``DASK_SCHEDULER_ADDRESS`` joins an existing cluster instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from distributed import Client, Future, LocalCluster, as_completed
from tqdm.auto import tqdm

log = logging.getLogger("rnnenc")
T = TypeVar("T")


def scheduler_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None,
                memory_limit: str = "auto") -> Iterator[Client]:
    """A client on ``scheduler`` (or DASK_SCHEDULER_ADDRESS), else on an embedded LocalCluster."""
    address = scheduler_address(scheduler)
    if address:
        log.info("joining Dask scheduler at %s", address)
        with Client(address, timeout="30s") as client:
            yield client
        return
    n_workers = n_workers or os.cpu_count() or 1
    log.info("starting a local Dask cluster: %d worker process(es), 1 thread each", n_workers)
    # The workers fill every core, so an OpenMP thread in one (eflomal's, torch's) must sleep at
    # once rather than spin beside the others, whatever this process does (workflows/cli.py).
    with LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                      memory_limit=memory_limit, dashboard_address=":0", env={"GOMP_SPINCOUNT": "0"},
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        yield client


def gpu_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when some worker declares a GPU resource (``dask worker --resources GPU=1``)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def map_partitions(client: Client, func: Callable[..., T], items: Sequence[Any], *,
                   desc: str, quiet: bool = False, key_prefix: str | None = None,
                   **kwargs: Any) -> list[T]:
    """Run ``func(item, **kwargs)`` for every item on the cluster; results in input order.

    Shows a progress bar on stderr unless ``quiet``. A failing task cancels the rest and
    re-raises its exception here (so a UserError raised on a worker reaches the user as is).
    Dask retries a task whose worker died, so a lost worker costs only its tasks.
    """
    if not items:
        return []
    prefix = key_prefix or getattr(func, "__name__", "task")
    futures = client.map(func, list(items), key=[f"{prefix}-{i}-{os.urandom(4).hex()}" for i in range(len(items))],
                         pure=False, retries=2, **kwargs)
    with tqdm(total=len(futures), desc=desc, unit="part", disable=quiet, leave=False) as bar:
        return results_in_order(client, futures, bar)


def results_in_order(client: Client, futures: list[Future], bar: tqdm | None = None) -> list[Any]:
    """Wait for ``futures`` as they finish (ticking ``bar``); results in submission order.

    The first failure cancels the other futures and re-raises its exception here.
    """
    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for future in as_completed(futures):
            results[index[future.key]] = future.result()
            if bar is not None:
                bar.update(1)
    except BaseException:
        client.cancel(futures)
        raise
    return results
