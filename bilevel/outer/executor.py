"""Independent work in other processes: the ``executor=`` argument, resolved in one place.

Meta-gradient chunks, cross-validation folds and HPO restarts are independent pieces of
work; they run wherever ``executor=`` says (see :doc:`/distributed`):

* ``None``: here, one piece after the other;
* ``"local"`` or :class:`Local` ``(workers)``: a Dask ``LocalCluster`` of worker processes
  sized to the machine, started and closed by the call;
* a scheduler address (``"tcp://host:8786"``): that Dask cluster;
* a ``dask.distributed.Client``: its cluster (left open);
* any object with ``submit`` (:mod:`concurrent.futures` executors, loky's reusable
  executor, ...): its workers (left open).

:func:`open_executor` turns any of them into a :class:`Runner` with two operations:
``put(value)`` sends a value to the workers once (Dask: ``scatter(broadcast=True,
hash=False)``; the value itself elsewhere) and ``map(fn, items, **shared)`` runs
``fn(item, **shared)`` for every item and returns the results **in the order of the
items**, so whatever combines them does so in a fixed order. Scattering with ``hash=False``
gives every ``put`` its own key: with content hashing, re-scattering equal parameters
reuses the key of an earlier future, whose release then deletes the data that newer tasks
depend on ("lost dependencies").

Dask is optional: ``pip install "bilevel[distributed]"``; asking for a cluster without it
raises :class:`MissingDependency` with that command.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import CancelledError
from dataclasses import dataclass
from functools import partial
from typing import Any

from ..validation import Validated, integer, option, optional
from .errors import UsageError

__all__ = ["Dask", "InProcess", "Local", "MissingDependency", "Pool", "Runner",
           "open_executor", "worker_count"]

INSTALL = 'pip install "bilevel[distributed]"'


class MissingDependency(UsageError, ImportError):
    """An optional dependency is missing; the message gives the ``pip install`` command."""


def _distributed() -> Any:
    """The ``distributed`` package, or :class:`MissingDependency` naming the extra."""
    try:
        import distributed
    except ImportError as err:
        raise MissingDependency(
            f"a Dask cluster needs dask.distributed, which is not installed: {INSTALL}",
            cli=f"--workers and --scheduler need Dask, which is not installed: {INSTALL}",
        ) from err
    return distributed


def worker_count() -> int:
    """CPU cores this process may use (the size of ``executor="local"``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1


@dataclass(frozen=True)
class Local(Validated):
    """A Dask ``LocalCluster`` of ``workers`` processes with one thread each (default: one
    per core, :func:`worker_count`), started by the call that is given it and closed when
    that call returns. ``executor="local"`` is ``Local()``."""

    workers: int | None = option(None, check=optional(integer(1)))


class Runner:
    """Runs independent pieces of work: the interface the library's parallel code uses.

    Attributes
    ----------
    workers : int
        How many pieces can run at once (the default number of parts to split work into).
    """

    workers: int = 1

    def put(self, value: Any) -> Any:
        """A handle of ``value`` to pass to :meth:`map` (sent to the workers once)."""
        return value

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
        """``[fn(item, **shared) for item in items]``, in the order of ``items``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what this runner started (nothing by default)."""


class InProcess(Runner):
    """Everything here, one item after the other (``executor=None``)."""

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
        return [fn(item, **shared) for item in items]


class Pool(Runner):
    """Any executor with ``submit(fn, *args, **kwargs) -> future`` whose futures have
    ``result()`` (:mod:`concurrent.futures`, loky). Values are passed with every task."""

    def __init__(self, pool: Any):
        self.pool = pool
        self.workers = int(getattr(pool, "_max_workers", None) or 1)

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
        futures = [self.pool.submit(fn, item, **shared) for item in items]
        return [f.result() for f in futures]


@dataclass
class _Scattered:
    """A value put on a Dask cluster: the value (kept to scatter it again) and its future."""

    value: Any
    future: Any = None


class _Packed:
    """A value pickled in band (protocol 4) before Dask scatters it, unpickled once per
    worker on first use.

    Dask's own serialization hands NumPy arrays to the workers as views of its message
    frames, at any byte offset (one arrived 47 bytes past a 64-byte boundary): BLAS and
    NumPy's loops then take their unaligned paths and round differently, so a closed-form
    oracle on a worker differed from the same call here in the last bit. Unpickling
    copies every array into a fresh, aligned allocation, as in the calling process.
    Cost: one pickling here and one unpickling per worker.
    """

    def __init__(self, value: Any):
        self.payload = pickle.dumps(value, protocol=4)
        self._value: Any = None
        self._ready = False

    def __getstate__(self) -> dict:
        return {"payload": self.payload}

    def __setstate__(self, state: dict) -> None:
        self.payload, self._value, self._ready = state["payload"], None, False

    @property
    def value(self) -> Any:
        if not self._ready:
            self._value, self._ready = pickle.loads(self.payload), True
        return self._value


def _unpacked(fn: Callable[..., Any], item: Any, **shared: Any) -> Any:
    """``fn(item, **shared)`` with every :class:`_Packed` value unpacked (on the worker)."""
    return fn(item, **{k: v.value if isinstance(v, _Packed) else v for k, v in shared.items()})


class Dask(Runner):
    """A ``dask.distributed.Client``: values scattered to every worker once, tasks mapped
    with ``pure=False``. A lost worker's tasks are rerun by Dask on the others; a value
    lost with the workers that held it (scattered data has no lineage) is scattered again
    and the tasks resubmitted, up to :attr:`RESCATTER` times."""

    #: Times a map is resubmitted after its scattered values were lost.
    RESCATTER = 3

    def __init__(self, client: Any, owned: tuple[Any, ...] = ()):
        self.client, self.owned = client, owned
        info = client.scheduler_info()
        threads = sum(int(w.get("nthreads", 1)) for w in info.get("workers", {}).values())
        self.workers = max(1, threads)

    def put(self, value: Any) -> _Scattered:
        return self._scatter(_Scattered(value))

    def _scatter(self, shared: _Scattered) -> _Scattered:
        shared.future = self.client.scatter(_Packed(shared.value), broadcast=True, hash=False)
        return shared

    def map(self, fn: Callable[..., Any], items: Sequence[Any], **shared: Any) -> list[Any]:
        scattered = [v for v in shared.values() if isinstance(v, _Scattered)]
        for attempt in range(self.RESCATTER + 1):
            kwargs = {k: v.future if isinstance(v, _Scattered) else v for k, v in shared.items()}
            futures = self.client.map(partial(_unpacked, fn), list(items), pure=False, **kwargs)
            try:
                return self.client.gather(futures)
            except CancelledError:
                lost = [v for v in scattered if v.future.status != "finished"]
                if not lost or attempt == self.RESCATTER:
                    raise
                for value in lost:
                    self._scatter(value)
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        for thing in self.owned:
            thing.close()


#: Environment variables of Dask's worker processes that :class:`Local` leaves out:
#: ``MALLOC_TRIM_THRESHOLD_`` (Dask sets 64 KiB to return memory to the system sooner)
#: stops glibc from raising its mmap threshold, so every array temporary above it is
#: mapped and unmapped again: the many small arrays of a meta-gradient ran 2-3 times
#: slower on the workers than in the calling process (:doc:`/distributed`).
DROPPED_ENVIRON = ("MALLOC_TRIM_THRESHOLD_",)


def _local(spec: Local) -> Dask:
    distributed = _distributed()
    import dask.config  # installed with distributed

    n = spec.workers or worker_count()
    environ = {k: v for k, v in dask.config.get("distributed.nanny.pre-spawn-environ",
                                                {}).items() if k not in DROPPED_ENVIRON}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}):
        cluster = distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True,
                                           dashboard_address=None)
    client = distributed.Client(cluster)
    return Dask(client, owned=(client, cluster))


#: Seconds to wait for a Dask scheduler given by its address.
CONNECT_TIMEOUT = 20


def _address(address: str) -> Dask:
    distributed = _distributed()
    try:
        client = distributed.Client(address, timeout=CONNECT_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as err:
        raise UsageError(
            f"cannot reach the Dask scheduler at {address!r} ({err}); start one (dask "
            "scheduler) or pass executor='local'",
            cli=f"--scheduler {address}: cannot reach the Dask scheduler ({err}); start "
                "one with `dask scheduler`, or use --workers N for a local cluster",
        ) from err
    return Dask(client, owned=(client,))


def _runner(executor: Any) -> Runner:
    if executor is None:
        return InProcess()
    if isinstance(executor, Runner):
        return executor
    if isinstance(executor, Local):
        return _local(executor)
    if isinstance(executor, str):
        return _local(Local()) if executor == "local" else _address(executor)
    if all(hasattr(executor, a) for a in ("scatter", "gather", "submit", "map")):
        return Dask(executor)
    if hasattr(executor, "submit"):
        return Pool(executor)
    raise TypeError(
        "executor must be None, 'local', bilevel.outer.executor.Local(workers), a Dask "
        "scheduler address, a dask.distributed.Client or an object with submit() "
        f"(concurrent.futures), got {type(executor).__name__}"
    )


@contextlib.contextmanager
def open_executor(executor: Any) -> Iterator[Runner]:
    """``with open_executor(executor) as runner:`` a :class:`Runner` for ``executor`` (see
    the module docstring); a cluster or client started here is closed on exit, one given
    by the caller is left open."""
    runner = _runner(executor)
    try:
        yield runner
    finally:
        if runner is not executor:
            runner.close()
