"""Creating or joining the Dask client: the only place rnnenc starts a cluster.

Default: an embedded ``LocalCluster`` of worker processes, one single-threaded worker per
core (KenLM and sacremoses hold the GIL, so threads would not scale), every service bound to
127.0.0.1 (the dashboard too, unless ``--dashboard ADDRESS`` says otherwise). ``--scheduler
tcp://HOST:PORT`` or ``DASK_SCHEDULER_ADDRESS`` joins an existing cluster instead (its own
Dask configuration is left as it is).

A stage never waits forever: losing the scheduler, or every worker for longer than
``RNNENC_LOST_WORKERS_TIMEOUT`` seconds (default 60), ends it with one line, and the stage's
temporary output is discarded.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import dask.config
from distributed import Client, Future, LocalCluster, wait
from distributed.client import FuturesCancelledError
from distributed.comm.core import CommClosedError
from distributed.deploy.spec import SpecCluster

from rnnenc.pipeline.errors import UserError
from rnnenc.pipeline.progress import progress

log = logging.getLogger("rnnenc")
T = TypeVar("T")


def _tame_distributed_logs() -> None:
    """distributed sets its loggers to INFO when first imported, which the CLI now does lazily,
    after it configured logging: keep them at the CLI's rule (errors only, warnings with --debug)."""
    level = logging.WARNING if log.isEnabledFor(logging.DEBUG) else logging.ERROR
    for name in ("distributed", "tornado", "bokeh"):
        logging.getLogger(name).setLevel(level)


_tame_distributed_logs()
DEFAULT_DASHBOARD = "127.0.0.1:0"
DEFAULT_LOST_WORKERS_TIMEOUT = 60.0
_POLL_SECONDS = 2.0


# Two timers of distributed wake a thread of every worker that must take the GIL from the task
# running there: the statistical profiler (a sample every 10 ms, for the dashboard's Profile
# page) and the event-loop tick (every 20 ms, for its "unresponsive" warnings, which rnnenc
# silences). Off and 1 s, the workers spend 9 % less CPU on the scoring pass of a 58k-pair pool
# on 2 workers (334 -> 303 ms; README, "Scale, measured").
_PROFILE = "distributed.worker.profile.enabled"
EMBEDDED_CLUSTER_CONFIG: dict[str, Any] = {_PROFILE: False, "distributed.admin.tick.interval": "1s"}


def embedded_cluster_config(dashboard_asked: bool) -> dict[str, Any]:
    """The Dask settings rnnenc gives the cluster it embeds: ``EMBEDDED_CLUSTER_CONFIG``, less
    any setting the user's Dask configuration (YAML files, ``DASK_*`` variables) changed from
    distributed's default, and less the profiler when the user asked for a dashboard address
    (``--dashboard``, ``RNNENC_DASHBOARD``): its Profile page then has samples to show.

    Parameters:
        dashboard_asked: whether the user named the dashboard's address.
    """
    shipped = dask.config.merge(*dask.config.defaults)
    return {key: value for key, value in EMBEDDED_CLUSTER_CONFIG.items()
            if dask.config.get(key) == dask.config.get(key, config=shipped)
            and not (dashboard_asked and key == _PROFILE)}


def lost_workers_timeout() -> float:
    """Seconds a stage waits with no worker before it gives up (``RNNENC_LOST_WORKERS_TIMEOUT``)."""
    value = os.environ.get("RNNENC_LOST_WORKERS_TIMEOUT")
    try:
        return float(value) if value else DEFAULT_LOST_WORKERS_TIMEOUT
    except ValueError:
        raise UserError(f"RNNENC_LOST_WORKERS_TIMEOUT={value}: not a number of seconds") from None


def scheduler_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("DASK_SCHEDULER_ADDRESS") or None


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, n_workers: int | None = None,
                memory_limit: str = "auto", dashboard: str | None = None) -> Iterator[Client]:
    """A client on ``scheduler`` (or DASK_SCHEDULER_ADDRESS), else on an embedded LocalCluster.

    ``dashboard``: the local cluster's dashboard address (default ``$RNNENC_DASHBOARD``, else
    127.0.0.1 on a free port); its URL is logged once.
    """
    address = scheduler_address(scheduler)
    if address:
        log.info("joining Dask scheduler at %s", address)
        try:
            client = Client(address, timeout="30s")
        except (OSError, CommClosedError) as exc:
            raise UserError(f"could not reach the Dask scheduler at {address} ({exc})") from None
        with client, _quiet_shutdown(), _scheduler_loss_as_user_error(client):
            yield client
        return
    n_workers = n_workers or os.cpu_count() or 1
    dashboard = dashboard or os.environ.get("RNNENC_DASHBOARD")
    settings = embedded_cluster_config(dashboard_asked=bool(dashboard))
    dashboard = dashboard or DEFAULT_DASHBOARD
    log.info("starting a local Dask cluster: %d worker process(es), 1 thread each", n_workers)
    # The workers fill every core, so an OpenMP thread in one (eflomal's, torch's) must sleep at
    # once rather than spin beside the others, whatever this process does (workflows/cli.py).
    # The nannies hand the workers the configuration of the moment they start (restarts too).
    with dask.config.set(settings), _local_cluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, host="127.0.0.1",
            memory_limit=memory_limit, dashboard_address=dashboard, env={"GOMP_SPINCOUNT": "0"},
            silence_logs=logging.CRITICAL) as cluster, Client(cluster) as client, _quiet_shutdown(), \
            _scheduler_loss_as_user_error(client):
        if client.dashboard_link:
            log.info("Dask dashboard: %s", client.dashboard_link)
        yield client


@contextlib.contextmanager
def _local_cluster(**kwargs: Any) -> Iterator[LocalCluster]:
    """``LocalCluster(**kwargs)``, closed on leaving; one interrupted while it starts is closed too.

    Ctrl-C while the workers start ends ``LocalCluster.__init__`` with the cluster half built
    (its nannies still starting) and registered for distributed's exit hook, which then fails
    closing it (``AssertionError: Status.init``) and prints that traceback under rnnenc's one
    line. The half-built cluster is closed here, quietly, and taken off that hook's list: the
    instance has not been returned, so that list is the only handle on it. A worker process
    still being spawned then is ended too, before this process exits: else it finds the
    semaphore its parent gave it gone and prints a traceback of its own."""
    starting, children = set(SpecCluster._instances), set(multiprocessing.active_children())
    try:
        cluster = LocalCluster(**kwargs)
    except BaseException:
        for half_built in set(SpecCluster._instances) - starting:
            with contextlib.suppress(Exception):  # the AssertionError, once its workers are closed
                half_built.close(timeout=10)
            SpecCluster._instances.discard(half_built)
        spawning = set(multiprocessing.active_children()) - children
        for process in spawning:
            process.terminate()
        for process in spawning:
            process.join(timeout=10)
        raise
    with cluster:
        yield cluster


@contextlib.contextmanager
def _scheduler_loss_as_user_error(client: Client) -> Iterator[None]:
    """Whatever call of a stage meets the lost scheduler first (a wait, a submit, a gather), the
    user gets one line, not distributed's traceback."""
    try:
        yield
    except (CommClosedError, FuturesCancelledError, OSError, TimeoutError) as exc:
        if client.status == "running" and not _connection_lost(exc):
            raise
        raise _lost_scheduler(client) from None


def _connection_lost(exc: BaseException) -> bool:
    return isinstance(exc, FuturesCancelledError) and "scheduler-connection-lost" in str(exc)


def silence_logs() -> None:
    """Set distributed's, tornado's and asyncio's loggers to CRITICAL (not with --debug): once a
    run is ending (closing its client, interrupted), their tracebacks tell nothing that rnnenc
    has not said in one line."""
    if log.isEnabledFor(logging.DEBUG):
        return
    for name in ("distributed", "distributed.client", "distributed.worker", "distributed.nanny",
                 "distributed.scheduler", "distributed.core", "distributed.batched", "tornado",
                 "tornado.application", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


@contextlib.contextmanager
def _quiet_shutdown() -> Iterator[None]:
    """Closing a client whose scheduler or workers are gone logs heartbeat tracebacks
    (CommClosedError) from distributed's loggers; rnnenc has said what happened by then.
    Entered last, so it quiets them before the client and cluster close."""
    try:
        yield
    finally:
        silence_logs()


def worker_count(client: Client) -> int:
    """The workers the scheduler has now (at least 1: tasks wait for a worker to join)."""
    return max(1, len(client.scheduler_info(n_workers=-1).get("workers", {})))


# How long a worker count stays good for grouping light parts into tasks (it decides no output).
# Asking the scheduler right before a pass's tasks are sent delays their start by ~10 ms (seen on
# 2 workers with any RPC: scheduler_info, nthreads): a tenth of a 58k-pair scoring pass.
WORKER_COUNT_SECONDS = 10.0


class _WorkerCount:
    """``worker_count(client)``, asked again only once ``WORKER_COUNT_SECONDS`` have passed."""

    def __init__(self) -> None:
        self._asked_at, self._count = -float("inf"), 1

    def __call__(self, client: Client) -> int:
        now = time.monotonic()
        if now - self._asked_at >= WORKER_COUNT_SECONDS:
            self._count, self._asked_at = worker_count(client), now
        return self._count


def gpu_resources(client: Client) -> dict[str, float] | None:
    """``{"GPU": 1}`` when some worker declares a GPU resource (``dask worker --resources GPU=1``)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {}).values()
    return {"GPU": 1} if any(w.get("resources", {}).get("GPU") for w in workers) else None


def map_partitions(client: Client, func: Callable[..., T], items: Iterable[Any], *,
                   desc: str, quiet: bool = False, key_prefix: str | None = None,
                   **kwargs: Any) -> list[T]:
    """Run ``func(item, **kwargs)`` for every item on the cluster; results in input order.

    ``items`` may be a generator: each item is submitted as soon as it is produced (ingest writes
    its raw shards while the first ones are being processed); an exception raised by the
    generator cancels what was submitted. Shows a progress bar on stderr unless ``quiet``. A
    failing task cancels the rest and re-raises its exception here (so a UserError raised on a
    worker reaches the user as is). Dask retries a task whose worker died, so a lost worker costs
    only its tasks.
    """
    prefix = key_prefix or getattr(func, "__name__", "task")
    if isinstance(items, Sequence):
        if not items:
            return []
        futures = client.map(func, list(items), key=[f"{prefix}-{i}-{os.urandom(4).hex()}" for i in range(len(items))],
                             pure=False, retries=2, **kwargs)
        with progress(len(futures), desc=desc, unit="part", quiet=quiet) as bar:
            return results_in_order(client, futures, bar)
    futures = []
    with progress(0, desc=desc, unit="part", quiet=quiet) as bar:
        try:
            for i, item in enumerate(items):
                futures.append(client.submit(func, item, key=f"{prefix}-{i:05d}-{os.urandom(4).hex()}", pure=False,
                                             retries=2, **kwargs))
                bar.total = len(futures)
                bar.refresh()
        except BaseException:
            client.cancel(futures)
            raise
        return results_in_order(client, futures, bar)


class DaskExecutor:
    """``pipeline.executor.Executor`` on a Dask client: tasks on the cluster, a progress bar on
    stderr unless ``quiet``, retries when a worker dies (see ``map_partitions``)."""

    def __init__(self, client: Client, *, quiet: bool = False, key_prefix: str | None = None):
        self.client, self.quiet, self.key_prefix = client, quiet, key_prefix
        self._worker_count = _WorkerCount()

    def map(self, func: Callable[..., T], items: Iterable[Any], *, desc: str = "",
            resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
        return map_partitions(self.client, func, items, desc=desc or getattr(func, "__name__", "tasks"),
                              quiet=self.quiet, key_prefix=self.key_prefix, resources=resources, **kwargs)

    @property
    def workers(self) -> int:
        """The cluster's workers (asked at most every ``WORKER_COUNT_SECONDS``)."""
        return self._worker_count(self.client)


class ClusterExecutor:
    """``pipeline.executor.Executor`` that joins or starts the Dask cluster only when a stage first
    needs it, so a stage checks its inputs and options before paying for a cluster, and a stage
    whose work is a single task on the embedded local cluster runs it in this process and starts
    none (a 2-line import does not wait 10-20 s for worker processes). With a scheduler given
    (``--scheduler``, ``DASK_SCHEDULER_ADDRESS``, the workflow's) every task goes to it.

    Made by ``cluster_executor``; ``named(prefix)`` gives a view on the same cluster whose task
    keys start with ``prefix``.
    """

    def __init__(self, state: dict[str, Any], *, quiet: bool = False, key_prefix: str | None = None):
        self._state, self.quiet, self.key_prefix = state, quiet, key_prefix

    def named(self, key_prefix: str) -> ClusterExecutor:
        """The same lazily started cluster, task keys prefixed ``key_prefix``."""
        return ClusterExecutor(self._state, quiet=self.quiet, key_prefix=key_prefix)

    @property
    def started(self) -> bool:
        return self._state["client"] is not None

    @property
    def client(self) -> Client:
        """The Dask client, joining or starting the cluster now if no task has yet."""
        if self._state["client"] is None:
            state = self._state
            state["client"] = state["stack"].enter_context(dask_client(state["scheduler"], state["workers"]))
        return self._state["client"]

    @property
    def workers(self) -> int:
        """The cluster's workers; an embedded local cluster not started yet is asked nothing
        (it will have ``--workers``, else a worker per CPU)."""
        if self._state["scheduler"] is None and not self.started:
            return self._state["workers"] or os.cpu_count() or 1
        return self._state["worker_count"](self.client)

    def gpu_resources(self) -> dict[str, float] | None:
        """``{"GPU": 1}`` when the cluster's workers declare GPUs; an embedded local cluster's never do,
        so asking starts no cluster."""
        if self._state["scheduler"] is None and not self.started:
            return None
        return gpu_resources(self.client)

    def map(self, func: Callable[..., T], items: Iterable[Any], *, desc: str = "",
            resources: dict[str, float] | None = None, **kwargs: Any) -> list[T]:
        desc = desc or getattr(func, "__name__", "tasks")
        if (self._state["scheduler"] is None and not self.started and isinstance(items, Sequence)
                and len(items) <= 1):
            # one task: the local cluster's worker would run the very same call, later
            log.info("%s: one task, run in this process (no cluster started)", desc)
            with progress(len(items), desc=desc, unit="part", quiet=self.quiet) as bar:
                results = []
                for item in items:
                    results.append(func(item, **kwargs))
                    bar.update(1)
            return results
        return map_partitions(self.client, func, items, desc=desc, quiet=self.quiet, key_prefix=self.key_prefix,
                              resources=resources, **kwargs)


@contextlib.contextmanager
def cluster_executor(scheduler: str | None = None, n_workers: int | None = None, *, quiet: bool = False,
                     key_prefix: str | None = None) -> Iterator[ClusterExecutor]:
    """A ``ClusterExecutor`` on ``scheduler`` (or DASK_SCHEDULER_ADDRESS), else on an embedded local
    cluster of ``n_workers`` started on first need; whatever was started is closed on exit."""
    with contextlib.ExitStack() as stack:
        state = {"scheduler": scheduler_address(scheduler), "workers": n_workers, "client": None, "stack": stack,
                 "worker_count": _WorkerCount()}
        yield ClusterExecutor(state, quiet=quiet, key_prefix=key_prefix)


def results_in_order(client: Client, futures: list[Future], bar: Any = None) -> list[Any]:
    """Wait for ``futures`` as they finish (ticking ``bar``); results in submission order.

    A failure cancels the futures after it and waits for those before it: the exception raised
    here is that of the first failing item in input order (so a stage reports the first bad line
    of its input, however the tasks were scheduled). Losing the scheduler, or every worker for
    ``RNNENC_LOST_WORKERS_TIMEOUT`` seconds, raises a UserError.
    """
    index = {future.key: i for i, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    pending = set(futures)
    failed: tuple[int, BaseException] | None = None
    timeout = lost_workers_timeout()
    alone_since: float | None = None
    try:
        while pending:
            try:
                done, pending = wait(list(pending), timeout=_POLL_SECONDS, return_when="FIRST_COMPLETED")
                pending = set(pending)
            except TimeoutError:
                done = set()
            except FuturesCancelledError as exc:
                if client.status != "running" or _connection_lost(exc):
                    raise _lost_scheduler(client) from None
                raise
            for future in sorted(done, key=lambda f: index[f.key]):
                i = index[future.key]
                if future.status == "finished":
                    results[i] = future.result()
                    if bar is not None:
                        bar.update(1)
                    continue
                if future.status == "cancelled" and (failed is not None and i > failed[0]):
                    continue  # cancelled by us after an earlier failure
                if future.status not in ("error", "cancelled"):
                    # its worker died between wait() and here: Dask runs it again (pending or
                    # lost, not failed), so it goes back among the pending
                    pending.add(future)
                    continue
                error = _future_error(client, future)
                if failed is None or i < failed[0]:
                    failed = (i, error)
                    later = [f for f in pending if index[f.key] > i]
                    client.cancel(later)
                    pending -= set(later)
            if failed is not None and not any(index[f.key] < failed[0] for f in pending):
                raise failed[1]
            if not done:
                alone_since = _check_cluster(client, alone_since, timeout, len(futures) - len(pending), len(futures))
            else:
                alone_since = None
    except BaseException:
        with contextlib.suppress(Exception):
            client.cancel(list(pending))
        raise
    return results


def _future_error(client: Client, future: Future) -> BaseException:
    """The exception of a failed or cancelled future; a lost scheduler as a UserError."""
    if future.status == "cancelled":
        if client.status != "running":
            return _lost_scheduler(client)
        return UserError(f"a Dask task was cancelled by someone else ({future.key})")
    try:
        future.result()
    except (CommClosedError, OSError) as exc:
        if client.status != "running":
            return _lost_scheduler(client)
        return exc
    except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
        return exc
    return RuntimeError(f"{future.key}: status {future.status} without an exception")


def _lost_scheduler(client: Client) -> UserError:
    address = getattr(client.scheduler, "address", None) or "its address"
    return UserError(f"lost the Dask scheduler at {address}; nothing of this stage was published, rerun it "
                     "once the scheduler is back")


def _check_cluster(client: Client, alone_since: float | None, timeout: float, done: int, total: int) -> float | None:
    """Raise when the scheduler is gone or no worker has been there for ``timeout`` seconds;
    return when the wait without workers began (None while workers are there)."""
    if client.status != "running":
        raise _lost_scheduler(client)
    try:
        workers = client.scheduler_info(n_workers=-1).get("workers", {})
    except (CommClosedError, OSError, TimeoutError):
        raise _lost_scheduler(client) from None
    if workers:
        return None
    now = time.monotonic()
    if alone_since is None:
        log.warning("no Dask worker left (%d of %d task(s) done); waiting up to %.0f s for one", done, total, timeout)
        return now
    if now - alone_since >= timeout:
        raise UserError(f"every Dask worker was lost and none came back within {timeout:.0f} s ({done} of {total} "
                        "task(s) done); nothing of this stage was published (set RNNENC_LOST_WORKERS_TIMEOUT to "
                        "wait longer)")
    return alone_since
