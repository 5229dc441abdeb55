"""Where the runs go: a local pool (the default) or Dask distributed, behind one
``concurrent.futures``-style interface (``submit(fn, *args) -> future``, ``as_completed``,
``shutdown``).

Each task is :func:`bms.app.campaign.runner.run_task`, which runs its campaign run in a child
process of its own (killed at the run's timeout); so the local pool is N worker threads that
each wait on one child process at a time: N runs at once, as a process pool of N, without a
pool process that a hung run could take down.

Dask: ``--executor dask`` starts a LocalCluster of ``--workers`` processes bound to 127.0.0.1
with no dashboard (nothing listens on another address); ``--executor dask://HOST:PORT`` is a
Client of an existing cluster (started by the user with dask's own tools: dask-scheduler,
dask-jobqueue, dask-kubernetes). Dask is an optional extra (``pip install
'ssb-bms[campaign]'``).
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol


class ExecutorError(RuntimeError):
    """An executor that cannot be started (Dask missing, a scheduler that does not answer)."""


class Executor(Protocol):
    name: str
    workers: int

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any: ...

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]: ...

    def shutdown(self) -> None: ...


class LocalPool:
    """N runs at once on this machine (each in its own child process)."""

    name = "local"

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._pool = cf.ThreadPoolExecutor(max_workers=workers,
                                           thread_name_prefix="campaign")

    def submit(self, fn: Callable[..., Any], *args: Any) -> cf.Future[Any]:
        return self._pool.submit(fn, *args)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        return cf.as_completed(list(futures))

    def shutdown(self) -> None:
        from bms.app.campaign.forkserver import shutdown_all
        self._pool.shutdown(wait=True, cancel_futures=True)
        shutdown_all()  # the workers' fork servers


class DaskExecutor:
    """Dask distributed: a LocalCluster on 127.0.0.1 (address None) or an existing cluster."""

    name = "dask"

    def __init__(self, address: str | None, workers: int) -> None:
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise ExecutorError("--executor dask needs Dask distributed: pip install "
                                "'ssb-bms[campaign]' (or 'dask[distributed]')") from None
        self._cluster = None
        try:
            if address is None:
                # Loopback only: the scheduler, the workers, their nannies and HTTP servers on
                # 127.0.0.1, each on a free port (another cluster may hold 8787).
                # A worker only waits on its run's child process: its statistical profiler
                # (a thread sampling every 10 ms) and the memory monitor (the nanny polling
                # the worker's memory) take CPU from the runs for nothing here. One task per
                # worker thread at a time (saturation 1.0; dask's default 1.1 hands a worker
                # a second one early): the next run goes to the worker that frees first, as in
                # the local pool (8 tasks of 0.5-1.0 s CPU on 2 workers: 3.30-3.34 s wall with
                # 1.1, 3.05-3.16 s with 1.0, three rounds each).
                import dask
                with dask.config.set({"distributed.worker.profile.enabled": False,
                                      "distributed.scheduler.worker-saturation": 1.0}):
                    self._cluster = LocalCluster(
                        host="127.0.0.1", dashboard_address="127.0.0.1:0", n_workers=workers,
                        threads_per_worker=1, processes=True, silence_logs=40,
                        memory_limit=0)
                self._client = Client(self._cluster)
            else:
                self._client = Client(address, timeout=5)
        except OSError as exc:
            if self._cluster is not None:
                self._cluster.close()
            where = (address or "").removeprefix("tcp://")
            raise ExecutorError(f"--executor dask://{where}: cannot connect: {exc}",
                                ) from None
        self.workers = len(self._client.scheduler_info().get("workers", {})) or workers
        self.name = "dask" if address is None else f"dask://{address.removeprefix('tcp://')}"

    def submit(self, fn: Callable[..., Any], *args: Any) -> Any:
        # pure=False: a run is not a cacheable function of its arguments (wall time, logs)
        return self._client.submit(fn, *args, pure=False)

    def as_completed(self, futures: Iterable[Any]) -> Iterator[Any]:
        from distributed import as_completed
        return iter(as_completed(list(futures)))

    def shutdown(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()


def parse_executor(spec: str) -> tuple[str, str | None]:
    """``local``, ``dask`` or ``dask://HOST:PORT`` -> (kind, scheduler address or None);
    ValueError (a usage error) otherwise."""
    if spec in ("local", "dask"):
        return spec, None
    if spec.startswith("dask://"):
        address = spec[len("dask://"):]
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"--executor {spec}: give the scheduler as dask://HOST:PORT")
        return "dask", f"tcp://{address}"
    raise ValueError(f"--executor {spec}: not one of local, dask, dask://HOST:PORT")


def make_executor(spec: str, workers: int) -> Executor:
    kind, address = parse_executor(spec)
    if kind == "local":
        return LocalPool(workers)
    return DaskExecutor(address, workers)
