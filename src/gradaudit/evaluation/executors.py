"""Where a sweep's cells run: worker processes on this machine (default) or Ray tasks.

Every executor runs :func:`execute_cell` on a cell's run-config dict and hands back the same plain, picklable
dict (numpy arrays, lists, numbers and strings only; see :func:`execute_cell`). Workers never touch the run
folder: only the parent (:mod:`gradaudit.evaluation.runner`) writes images and results, so a crashed or killed
worker can never leave a half-written row.

The interface is small: ``start()`` (returns its start-up seconds), ``submit(key, config, timeout_s)``,
``wait()`` (blocks until at least one submitted cell finished; returns ``[(key, outcome), ...]``),
``pending`` and ``close()``. A cell that raises comes back as ``{"ok": False, "error": ...}``, and so does a
cell whose worker process died under it (killed, out of memory): :class:`LocalExecutor` finds which cell that
was by re-running the cells of a broken pool one at a time, Ray by its own task bookkeeping (``max_retries``).

Timeouts (``timeout_s``) are cooperative: the attack's progress callback stops the cell once its time is up, so
a cell overruns by at most one logging interval of its attack (plus scoring).

Scripts that call :func:`~gradaudit.evaluation.runner.run_sweep` with worker processes must guard their entry
point with ``if __name__ == "__main__":`` (the ``forkserver`` and ``spawn`` start methods import the main module
in each worker).
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import traceback
from abc import ABC, abstractmethod
from collections import deque
from typing import Any, Optional

from ..errors import ConfigError

EXECUTORS = ("local", "ray")
#: modules the fork server imports before forking workers (see :class:`LocalExecutor`)
FORKSERVER_PRELOAD = ("torch", "torch._dynamo", "gradaudit.evaluation.cell", "gradaudit.evaluation.executors")


class CellTimeout(Exception):
    """A cell ran past its sweep's ``timeout_s``."""


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


def default_threads(workers: int) -> int:
    """Intra-op threads per worker so that the workers together use the machine's cores once."""
    return max(1, available_cores() // max(1, workers))


def execute_cell(config: dict[str, Any], timeout_s: Optional[float] = None,
                 threads: Optional[int] = None, trust_code: bool = False) -> dict[str, Any]:
    """Run one cell (prepare, observe, attack, score) and return a plain dict; never raises for a cell's error.

    ``trust_code`` is the sweep runner's (the user's) choice to import ``package.module:factory`` names.

    On success: ``ok`` True, ``scores`` (ReconstructionScores.to_dict()), ``record`` (the JSON-ready
    result_record of the run: scores, reconstruction record with history and hyper-parameters, timings,
    config), ``reconstruction`` (float32 [B, C, H, W], aligned to the truth), ``truth`` (float32),
    ``labels`` (the attack's labels, aligned; int64 or None), ``true_labels`` (int64), ``seconds`` (wall),
    ``cpu_seconds`` (this process's CPU time: all its threads), ``pid``.
    On failure: ``ok`` False, ``error`` ("Type: message"), ``traceback``, ``seconds``, ``pid``.
    """
    import torch

    t0, c0 = time.perf_counter(), time.process_time()
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(int(threads))
    try:
        from ..config import RunConfig
        from .records import aligned_images, result_record
        from .cell import prepare, run_attack

        cfg = RunConfig.model_validate(config)
        progress = None
        if timeout_s is not None:
            deadline = t0 + float(timeout_s)

            def progress(done: int, total: int, loss: float) -> None:
                if time.perf_counter() > deadline:
                    raise CellTimeout(f"cell exceeded its timeout of {timeout_s:g} s "
                                      f"(stopped at iteration {done}/{total})")

        run = prepare(cfg, trust_code=trust_code)
        if timeout_s is not None and time.perf_counter() > deadline:
            raise CellTimeout(f"cell exceeded its timeout of {timeout_s:g} s while preparing")
        result = run_attack(cfg, progress, prepared=run)
        assignment = torch.as_tensor(result.scores.assignment)
        labels = result.reconstruction.labels
        return {
            "ok": True,
            "scores": result.scores.to_dict(),
            "record": result_record(result),
            "reconstruction": aligned_images(result).detach().to("cpu", torch.float32).contiguous().numpy(),
            "truth": result.truth.detach().to("cpu", torch.float32).contiguous().numpy(),
            "labels": None if labels is None else labels.detach().to("cpu")[assignment].to(torch.int64).numpy(),
            "true_labels": result.true_labels.detach().to("cpu", torch.int64).numpy(),
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "pid": os.getpid(),
        }
    except (Exception, SystemExit) as e:  # noqa: BLE001 - every error of a cell is data for the results store
        return {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
                "seconds": time.perf_counter() - t0, "pid": os.getpid()}
    finally:
        if threads is not None:
            torch.set_num_threads(before)


def _failure(message: str, seconds: float = 0.0) -> dict[str, Any]:
    return {"ok": False, "error": message, "traceback": "", "seconds": seconds, "pid": None}


class CellExecutor(ABC):
    """Runs cells somewhere and hands back their results as they finish (see the module docstring)."""

    name = "executor"
    #: the user's choice to import ``package.module:factory`` names in the cells (set by the runner)
    trust_code: bool = False

    def __init__(self, workers: int) -> None:
        if workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        self.workers = workers

    def start(self) -> float:
        return 0.0

    @abstractmethod
    def submit(self, key: str, config: dict[str, Any], timeout_s: Optional[float] = None) -> None: ...

    @abstractmethod
    def wait(self) -> list[tuple[str, dict[str, Any]]]: ...

    @property
    @abstractmethod
    def pending(self) -> int: ...

    def close(self, cancel: bool = False) -> None:
        pass

    def describe(self) -> str:
        return f"{self.name} x{self.workers}"

    def __enter__(self) -> "CellExecutor":
        self.start()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)


# ------------------------------------------------------------------------------------------------- local
def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def watch_parent(pid: int, interval_s: float = 1.0) -> None:
    """Exit this process soon after process ``pid`` (the runner) is gone.

    A runner killed with SIGKILL cannot stop its pool, and a fork-server worker is not its child, so without
    this the worker would finish (and waste the cores on) a cell whose result nobody will store. A daemon
    thread polls every ``interval_s`` and leaves with ``os._exit`` (no cleanup is needed: workers never write
    to the run folder)."""
    import threading

    def loop() -> None:
        while _pid_alive(pid):
            time.sleep(interval_s)
        os._exit(1)

    threading.Thread(target=loop, name="gradaudit-parent-watch", daemon=True).start()


def _init_worker(threads: int, ready=None, parent_pid: Optional[int] = None) -> None:
    """Runs once in each worker process: pin the thread count, exit with the runner (:func:`watch_parent`),
    import the heavy modules up front, and (with a barrier) wait until every worker of the pool is ready, so
    that no worker takes all the first cells."""
    import torch

    if parent_pid is not None:
        watch_parent(parent_pid)
    torch.set_num_threads(threads)
    warm_up()
    if ready is not None:
        ready.wait(timeout=300)


def warm_up() -> None:
    """Pay the one-off costs of a fresh process up front: imports, and torch's lazy import of its compiler
    stack on the first optimizer construction (~1.5 s), which would otherwise be billed to the first cell."""
    import torch

    from .cell import run_attack  # noqa: F401

    torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=0.1)


def _warm() -> int:
    return os.getpid()


class LocalExecutor(CellExecutor):
    """Worker processes on this machine, started by a fork server (``spawn`` where there is none): nothing is
    forked from the parent, whose state (threads, open store) stays its own.

    Each worker sets ``torch.set_num_threads(threads)`` (default: cores // workers) and imports everything once.
    At most ``workers`` cells are in the pool at a time; the rest wait here. With ``workers=1`` the cells run in
    the calling process (no start-up cost) unless ``in_process=False``.

    A worker that dies (killed, out of memory, a crash in native code) breaks the whole pool, and every cell in
    it is lost without saying which one did it. Those cells are then re-run one at a time in a fresh pool: a cell
    that brings the pool down on its own is reported as failed (the runner may retry it); the others simply
    finish, without an attempt charged to them.
    """

    name = "local"

    def __init__(self, workers: int = 2, threads: Optional[int] = None, in_process: Optional[bool] = None,
                 start_method: Optional[str] = None) -> None:
        super().__init__(workers)
        self.threads = threads if threads is not None else default_threads(workers)
        self.in_process = workers == 1 if in_process is None else in_process
        methods = multiprocessing.get_all_start_methods()
        self.start_method = start_method or ("forkserver" if "forkserver" in methods else "spawn")
        self._pool: Optional[cf.ProcessPoolExecutor] = None
        self._futures: dict[cf.Future, tuple[str, dict, Optional[float]]] = {}
        self._backlog: deque[tuple[str, dict, Optional[float]]] = deque()
        self._suspects: deque[tuple[str, dict, Optional[float]]] = deque()
        self._isolated: Optional[str] = None

    def _make_pool(self) -> cf.ProcessPoolExecutor:
        ctx = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            # the fork server imports torch and gradaudit once; each worker is then a cheap fork of it (also after
            # a crash, when the pool is rebuilt). No torch thread pool exists there yet, so forking is safe.
            ctx.set_forkserver_preload(list(FORKSERVER_PRELOAD))
        ready = ctx.Barrier(self.workers) if self.workers > 1 else None
        return cf.ProcessPoolExecutor(max_workers=self.workers, mp_context=ctx, initializer=_init_worker,
                                      initargs=(self.threads, ready, os.getpid()))

    def start(self) -> float:
        t0 = time.perf_counter()
        if self.in_process:
            warm_up()
        elif self._pool is None:
            self._pool = self._make_pool()
            # start every worker now (one per submission: none is idle yet) and wait until all have initialised,
            # so that start-up is not billed to the cells
            for f in [self._pool.submit(_warm) for _ in range(self.workers)]:
                f.result()
        return time.perf_counter() - t0

    def submit(self, key: str, config: dict[str, Any], timeout_s: Optional[float] = None) -> None:
        self._backlog.append((key, config, timeout_s))
        if not self.in_process:
            self._fill()

    def _fill(self) -> None:
        if self._pool is None:
            self.start()
        if self._suspects:  # after a crash: one suspect at a time, nothing beside it
            if not self._futures:
                task = self._suspects.popleft()
                self._isolated = task[0]
                self._futures[self._pool.submit(execute_cell, task[1], task[2], None, self.trust_code)] = task
            return
        self._isolated = None
        while self._backlog and len(self._futures) < self.workers:
            task = self._backlog.popleft()
            self._futures[self._pool.submit(execute_cell, task[1], task[2], None, self.trust_code)] = task

    @property
    def pending(self) -> int:
        return len(self._backlog) + len(self._suspects) + len(self._futures)

    def wait(self) -> list[tuple[str, dict[str, Any]]]:
        if self.in_process:
            if not self._backlog:
                return []
            key, config, timeout_s = self._backlog.popleft()
            return [(key, execute_cell(config, timeout_s, self.threads, self.trust_code))]
        out: list[tuple[str, dict[str, Any]]] = []
        while not out and self.pending:
            if not self._futures:
                self._fill()
            done, _ = cf.wait(list(self._futures), return_when=cf.FIRST_COMPLETED)
            lost = []
            for f in done:
                task = self._futures.pop(f)
                try:
                    out.append((task[0], f.result()))
                except cf.process.BrokenProcessPool:
                    lost.append(task)
                except Exception as e:  # noqa: BLE001 - e.g. a result that could not be pickled
                    out.append((task[0], _failure(f"{type(e).__name__}: {e}")))
            if lost:
                lost += list(self._futures.values())  # the pool is gone with every cell in it
                self._futures.clear()
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None
                if self._isolated is not None and len(lost) == 1 and lost[0][0] == self._isolated:
                    out.append((lost[0][0], _failure("the worker process running this cell died (killed, out of "
                                                     "memory, or crashed)")))
                else:
                    self._suspects.extend(lost)
                self._isolated = None
            if self._backlog or self._suspects:
                self._fill()  # keep the workers busy while the parent writes results
        return out

    def close(self, cancel: bool = False) -> None:
        if self._pool is not None:
            if cancel:
                processes = list((getattr(self._pool, "_processes", None) or {}).values())
                self._pool.shutdown(wait=False, cancel_futures=True)
                for p in processes:  # our own workers, by handle: do not leave a long cell running
                    if p.is_alive():
                        p.terminate()
            else:
                self._pool.shutdown(wait=True)
            self._pool = None
        self._futures.clear()
        self._backlog.clear()
        self._suspects.clear()

    def describe(self) -> str:
        where = "in-process" if self.in_process else f"{self.workers} worker processes"
        return f"local, {where}, {self.threads} thread{'s' if self.threads > 1 else ''} each"


# --------------------------------------------------------------------------------------------------- ray
class RayExecutor(CellExecutor):
    """Ray tasks (``@ray.remote(num_cpus=1)``), on a local instance or a cluster joined with ``address``.

    Without an address a local instance is started with ``num_cpus=workers`` (and shut down at the end); if Ray
    is already initialised in this process it is used as is. ``max_retries`` re-runs a task whose worker died
    (a system failure); a cell's own errors come back as results and are retried by the runner.
    """

    name = "ray"

    def __init__(self, workers: int = 2, address: Optional[str] = None, threads: Optional[int] = None,
                 max_retries: int = 2) -> None:
        super().__init__(workers)
        self.address = address
        # on a cluster the nodes' sizes are unknown here: keep Ray's default (one thread per 1-CPU task)
        self.threads = threads if threads is not None else (None if address else default_threads(workers))
        self.max_retries = max_retries
        self._ray = None
        self._remote = None
        self._started = False
        self._refs: dict[Any, str] = {}

    def start(self) -> float:
        if self._ray is not None:
            return 0.0
        t0 = time.perf_counter()
        try:
            import ray
        except ImportError as e:
            raise ConfigError(f"the ray executor needs Ray: pip install 'ray>=2.9' ({e})") from None
        self._ray = ray
        if not ray.is_initialized():
            kwargs = dict(include_dashboard=False, log_to_driver=False)
            if self.address:
                ray.init(address=self.address, log_to_driver=False)
            else:
                ray.init(num_cpus=self.workers, **kwargs)
            self._started = True
        self._remote = ray.remote(num_cpus=1, max_retries=self.max_retries)(execute_cell)
        # start the workers and import torch + gradaudit in them before any cell is timed
        ray.get([ray.remote(num_cpus=1)(_ray_warm).remote(self.threads or 1) for _ in range(self.workers)])
        return time.perf_counter() - t0

    def submit(self, key: str, config: dict[str, Any], timeout_s: Optional[float] = None) -> None:
        if self._ray is None:
            self.start()
        self._refs[self._remote.remote(config, timeout_s, self.threads, self.trust_code)] = key

    @property
    def pending(self) -> int:
        return len(self._refs)

    def wait(self) -> list[tuple[str, dict[str, Any]]]:
        if not self._refs:
            return []
        ray = self._ray
        ready, _ = ray.wait(list(self._refs), num_returns=1)
        out = []
        for ref in ready:
            key = self._refs.pop(ref)
            try:
                out.append((key, ray.get(ref)))
            except Exception as e:  # noqa: BLE001 - a worker that died past max_retries, a lost object...
                out.append((key, _failure(f"ray task failed: {type(e).__name__}: {e}")))
        return out

    def close(self, cancel: bool = False) -> None:
        if self._ray is None:
            return
        if cancel:
            for ref in list(self._refs):
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # noqa: BLE001
                    pass
        self._refs.clear()
        if self._started:
            self._ray.shutdown()
            self._started = False
        self._ray = None

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else f"local instance, {self.workers} CPUs"
        return f"ray, {where}"


def _ray_warm(threads: int) -> int:
    _init_worker(threads)
    return os.getpid()


def make_executor(kind: str = "local", workers: int = 2, ray_address: Optional[str] = None,
                  threads: Optional[int] = None) -> CellExecutor:
    """``local`` (worker processes) or ``ray``; ConfigError for anything else."""
    if kind == "local":
        if ray_address:
            raise ConfigError("--ray-address needs --executor ray")
        return LocalExecutor(workers, threads=threads)
    if kind == "ray":
        import importlib.util

        if importlib.util.find_spec("ray") is None:
            raise ConfigError("the ray executor needs Ray: pip install 'ray>=2.9' (or use --executor local)")
        return RayExecutor(workers, address=ray_address, threads=threads)
    from ..errors import unknown_name

    raise unknown_name("executor", kind, EXECUTORS)


__all__ = ["CellExecutor", "CellTimeout", "EXECUTORS", "LocalExecutor", "RayExecutor", "default_threads",
           "execute_cell", "make_executor"]
