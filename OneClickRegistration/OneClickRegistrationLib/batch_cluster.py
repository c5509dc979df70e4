"""A batch's pairs as tasks on a Dask cluster (``pip install "oneclick-registration[cluster]"``).

Every worker must see the pairs' files and the output folder at the same paths (shared storage)
and import this package. A worker that dies while registering a pair (killed, out of memory) is
survived: the scheduler gives the pair to another worker, and marks it failed when a second worker
dies on it (``distributed.scheduler.allowed-failures`` = 1 on the clusters made here; a scheduler
started elsewhere applies its own setting, 3 by default).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from .batch_pairs import (
    ERROR,
    INTERRUPTED,
    OK,
    BatchProgress,
    Pair,
    PairOutcome,
    measured,
    one_line,
    outcome_line,
    register_pair,
    summary_row,
    usable_cores,
)
from .errors import InputError
from .options import RegistrationOptions

# A worker death is retried once on another worker; the second death fails the pair.
ALLOWED_WORKER_DEATHS = 1
# After Ctrl-C, how long running pairs get to stop their engines and report "interrupted".
STOP_GRACE_S = 30.0

# State inside each worker process: the batches told to stop, and the pairs each batch runs there.
_lock = threading.Lock()
_cancelled: set[str] = set()
_running: dict[str, set[str]] = {}


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise InputError(
            "Running on a cluster needs dask.distributed, which is not installed; install it with "
            "pip install \"oneclick-registration[cluster]\"."
        ) from None
    return distributed


def batch_client(*, workers: int | None = None, scheduler: str | None = None) -> AbstractContextManager[Any]:
    """Where a batch runs: in this process (None) without ``workers`` or ``scheduler``, else :func:`cluster_client`."""
    if workers is None and scheduler is None:
        return nullcontext(None)
    return cluster_client(workers=workers, scheduler=scheduler)


@contextmanager
def cluster_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` on a new local cluster of ``workers`` processes, or on ``scheduler``.

    The local cluster has one pair at a time per worker process, listens on the loopback only and
    is shut down on leaving, whatever happened.
    """
    if (workers is None) == (scheduler is None):
        raise InputError("Give either a number of local workers or a scheduler address, not both or neither.")
    if workers is not None and workers < 1:
        raise InputError(f"The number of workers must be at least 1; received {workers}.")
    distributed = _distributed()
    import dask

    cluster = client = None
    scratch = None
    try:
        if workers is not None:
            # the workers' scratch space goes with the cluster instead of staying in the temp folder
            scratch = tempfile.TemporaryDirectory(prefix="oneclick-dask-")
            settings = {"distributed.scheduler.allowed-failures": ALLOWED_WORKER_DEATHS,
                        "temporary-directory": scratch.name}  # the scheduler's scratch space too
            # Dask's own logs stay quiet up to errors: a worker losing its heartbeat while Ctrl-C shuts
            # the cluster down logs a traceback, and every failure a user must know of is reported per
            # pair by this module. The scheduler's HTTP routes warn when port 8787 is taken (another
            # cluster on the machine) and move to another port: nothing to tell the user either.
            with dask.config.set(settings), warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Port \d+ is already in use", category=UserWarning)
                cluster = distributed.LocalCluster(
                    n_workers=workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                    dashboard_address=None, silence_logs=logging.CRITICAL, local_directory=scratch.name,
                )
            client = distributed.Client(cluster)
        else:
            try:
                client = distributed.Client(scheduler)  # waits distributed.comm.timeouts.connect
            except (OSError, TimeoutError, ValueError) as exc:
                raise InputError(f"Cannot reach the Dask scheduler at {scheduler!r}: {one_line(exc)}") from None
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()
        if scratch is not None:
            scratch.cleanup()


def _slots_per_host(client: Any) -> dict[str, int]:
    """Pairs that run at once on each host (the sum of its workers' threads)."""
    from distributed.comm.addressing import get_address_host

    slots: dict[str, int] = {}
    for address, nthreads in client.nthreads().items():
        host = get_address_host(address)
        slots[host] = slots.get(host, 0) + int(nthreads)
    return slots


def _register_on_worker(
    pair: Pair, output: Path, options: RegistrationOptions, force: bool, slots: dict[str, int], batch: str
) -> PairOutcome:
    """The task: one pair on a worker, with the host's cores shared among the pairs running there."""
    from distributed import get_worker
    from distributed.comm.addressing import get_address_host

    worker = get_worker()
    own_threads = int(getattr(getattr(worker, "state", worker), "nthreads", 1))
    running_here = slots.get(get_address_host(worker.address)) or own_threads  # a worker that joined later
    threads = options.threads or max(1, usable_cores() // running_here)
    with _lock:
        _running.setdefault(batch, set()).add(pair.name)
    try:
        outcome = measured(lambda: register_pair(pair, output, options=replace(options, threads=threads),
                                                 force=force, cancel=lambda: batch in _cancelled))
    finally:
        with _lock:
            _running[batch].discard(pair.name)
            if not _running[batch]:
                del _running[batch]
    return PairOutcome(outcome.row, where=str(worker.address), threads=outcome.threads,
                       resources=outcome.resources, skipped=outcome.skipped)


def _stop_batch(batch: str) -> list[str]:
    """Run on every worker after Ctrl-C: running pairs cancel their engines; returns their names."""
    with _lock:
        _cancelled.add(batch)
        return sorted(_running.get(batch, ()))


def _failure_message(error: BaseException) -> str:
    from distributed import KilledWorker

    if isinstance(error, KilledWorker):
        return (f"the workers registering this pair died {error.allowed_failures + 1} times (killed, or out of "
                "memory?); it was not retried again")
    return f"{type(error).__name__}: {one_line(error)}"


def run_on_client(client: Any, pairs: Sequence[Pair], output: Path, options: RegistrationOptions, force: bool,
                  outcomes: list[PairOutcome], progress: BatchProgress) -> None:
    """Submit one task per pair and fill ``outcomes`` (input order) as they finish."""
    from distributed import as_completed

    batch = uuid.uuid4().hex[:12]
    slots = _slots_per_host(client)
    # progress and cancel are this process's callbacks: on the workers, the batch's stop replaces them
    options = replace(options, progress=None, cancel=None)
    futures = {}
    for index, pair in enumerate(pairs):
        future = client.submit(_register_on_worker, pair, output, options, force, slots, batch,
                               key=f"oneclick-register-{pair.name}-{batch}", pure=False)
        futures[future] = index
    finished = 0
    try:
        for future in as_completed(futures):
            index = futures[future]
            try:
                outcome = future.result()
            except Exception as exc:  # the task itself never raises for a bad pair: this is the cluster's word
                outcome = PairOutcome(summary_row(pairs[index], status=ERROR, error=_failure_message(exc)))
            outcomes[index] = outcome
            del futures[future]  # only now: a Ctrl-C in between still finds the pair in ``futures``
            finished += 1
            progress.done(outcome_line(finished, len(pairs), outcome), failed=outcome.row["status"] != OK)
    except KeyboardInterrupt:
        _stop(client, batch, pairs, futures, outcomes)
        raise


def _stop(client: Any, batch: str, pairs: Sequence[Pair], futures: dict[Any, int],
          outcomes: list[PairOutcome]) -> None:
    """Ctrl-C: running pairs stop their engines and report "interrupted"; the others never start."""
    running: set[str] = set()
    try:
        for names in client.run(_stop_batch, batch, on_error="ignore").values():
            running.update(names)
    except Exception:  # a cluster in trouble must not stop the summary from being written
        pass
    for future, index in list(futures.items()):
        if future.status == "finished":  # done before the stop reached it: keep its row
            outcomes[index] = future.result()
            del futures[future]
    waiting = [f for f, i in futures.items() if pairs[i].name in running]
    client.cancel([f for f, i in futures.items() if pairs[i].name not in running])
    deadline = time.monotonic() + STOP_GRACE_S
    for future in waiting:
        index = futures[future]
        try:
            outcome = future.result(timeout=max(0.1, deadline - time.monotonic()))
        except Exception:
            outcome = PairOutcome(summary_row(pairs[index], status=INTERRUPTED, error="stopped by the user"))
        outcomes[index] = outcome
    client.cancel(waiting)
