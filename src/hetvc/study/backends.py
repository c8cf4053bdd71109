"""Where the tasks run: local worker processes, the coordinating process, or a Dask cluster.

* default: a :class:`concurrent.futures.ProcessPoolExecutor` (``forkserver`` start method
  where available, else ``spawn``) with ``workers`` processes (default: every core), each
  limited to ``max(1, cores // workers)`` BLAS threads.  A worker that dies (killed, out of
  memory) breaks the pool: the pool is restarted and the unfinished tasks resubmitted (up to
  ``max_restarts`` times).  ``workers=0`` runs the tasks in the coordinating process
  itself (no pool).  Ctrl-C cancels what has not started, keeps what has finished,
  and leaves a folder that the next ``run`` resumes.

  No process is left behind when the coordinating process dies, even by ``kill -9``: every
  worker inherits the read end of a *lifeline* pipe whose only write end the coordinator
  holds, and a daemon thread in the worker blocks on it; the kernel closes the write end
  when the coordinator dies (also while it is an unreaped zombie), the read returns EOF
  and the worker calls ``os._exit``.  Blocking on a pipe rather than polling the
  coordinator's pid (``os.kill(pid, 0)``, ``getppid``) reacts at once, has no trouble with
  zombies or reused pids, and works on Linux and macOS alike.  ``PR_SET_PDEATHSIG`` would
  not do: with ``forkserver`` the workers' parent is the forkserver, not the coordinator.
  The forkserver and the resource tracker need nothing of their own: they exit when the
  last copy of their pipe closes, and every worker holds such a copy (that was the cycle
  that kept them all alive: the forkserver waits for its pipe, held open by the workers,
  which wait on queues that nobody will write).  The start method stays ``forkserver`` (it
  is not the cause; the preload keeps the workers' start cheap).  A worker stuck in a C
  call that holds the GIL exits when that call returns.
* ``scheduler="tcp://host:port"`` or a ``dask.distributed.Client``: the tasks go to that
  cluster (``client.submit``, two retries on a lost worker; Dask itself reschedules the
  tasks of a worker that disappears).  Dask is optional (``pip install 'hetvc[cluster]'``)
  and imported only then; the workers need hetvc installed.

Every backend has the same face: ``name``, ``slots`` (tasks it runs at once),
``describe()``, ``submit(task)`` (a future of the task's rows), ``wait_any(futures)``,
``broken(err)`` (did this error kill the pool?), ``restart()``, ``cancel(futures)`` and
``close()``; :func:`open_backend` picks one.  A task is any picklable object with a ``key``
and a ``run()`` method that returns its rows (a study replicate, a cross-validation fold);
:func:`drive` keeps the backend busy with them.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool

from ..errors import InputError
from .folder import StudyError, usable_cores


def open_backend(scheduler=None, workers: int | None = None):
    """A Dask backend for ``scheduler``, else the inline one for ``workers=0``, else local
    processes (``workers``, default every core)."""
    if scheduler is not None:
        return _DaskBackend(scheduler)
    if workers == 0:
        return _InlineBackend()
    return _LocalBackend(int(workers or usable_cores()))


def run_one(task):
    """What a worker does with a task: run it and return its rows."""
    return task.run()


def _watch_lifeline(lifeline) -> None:
    """Block until the coordinator's end of the lifeline closes (it died), then exit at once."""
    try:
        while True:
            lifeline.recv_bytes()  # nothing is ever sent: this returns only by EOF
    except (EOFError, OSError):  # the coordinator is gone
        os._exit(1)


def _init_worker(threads: int, lifeline=None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    if lifeline is not None:  # exit when the coordinator dies, even by SIGKILL (module doc)
        threading.Thread(target=_watch_lifeline, args=(lifeline,), name="hetvc-lifeline", daemon=True).start()
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover
        pass


class _LocalBackend:
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.threads = max(1, usable_cores() // workers)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            self.ctx.set_forkserver_preload(["hetvc.study", "hetvc.fitting", "hetvc.simulate", "hetvc.cv"])
        # the workers get the read end (duplicated into each at its start); only this process
        # holds the write end, and never writes: its closing, by death or close(), is the signal
        self.lifeline, self._lifeline_w = self.ctx.Pipe(duplex=False)
        self.pool = None
        self.start()

    @property
    def slots(self) -> int:
        return self.workers

    def describe(self) -> str:
        return f"{self.workers} local worker process{'es' if self.workers > 1 else ''} ({self.threads} BLAS thread{'s' if self.threads > 1 else ''} each)"

    def start(self):
        self.pool = ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_init_worker,
                                        initargs=(self.threads, self.lifeline))

    def restart(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.start()

    def submit(self, task):
        return self.pool.submit(run_one, task)

    def wait_any(self, futures):
        done, _ = futures_wait(futures, return_when=FIRST_COMPLETED)
        return done

    def broken(self, err) -> bool:
        return isinstance(err, BrokenProcessPool)

    def cancel(self, futures):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self.lifeline.close()
        self._lifeline_w.close()


class _InlineBackend:
    """``workers=0``: every task in the coordinating process, one at a time (no pool)."""

    name = "inline"
    slots = 1

    def describe(self) -> str:
        return "the coordinating process (workers=0, no pool)"

    def submit(self, task):
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(task.run())
        return fut

    def wait_any(self, futures):
        return futures

    def broken(self, err) -> bool:
        return False

    def restart(self):  # pragma: no cover
        pass

    def cancel(self, futures):
        pass

    def close(self):
        pass


class _DaskBackend:
    name = "dask"

    def __init__(self, scheduler):
        try:
            from dask import distributed
        except ImportError:
            raise InputError("a Dask scheduler was given but dask.distributed is not installed; "
                             "pip install 'hetvc[cluster]' (or 'dask[distributed]')") from None
        self.dd = distributed
        if isinstance(scheduler, distributed.Client):
            self.client, self.own = scheduler, False
        elif isinstance(scheduler, str):
            try:
                self.client, self.own = distributed.Client(scheduler, timeout="30s"), True
            except (OSError, TimeoutError) as err:
                raise InputError(f"cannot connect to the Dask scheduler at {scheduler}: {err}") from None
        else:
            raise InputError(f"scheduler must be an address like tcp://host:8786 or a dask.distributed.Client, "
                             f"not {type(scheduler).__name__}")

    @property
    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def describe(self) -> str:
        return f"Dask cluster at {self.client.scheduler.address} ({self.slots} threads)"

    def submit(self, task):
        return self.client.submit(run_one, task, pure=False, retries=2)

    def wait_any(self, futures):
        return self.dd.wait(futures, return_when="FIRST_COMPLETED").done

    def broken(self, err) -> bool:
        return False

    def restart(self):  # pragma: no cover - Dask reschedules by itself
        pass

    def cancel(self, futures):
        self.client.cancel(list(futures))

    def close(self):
        if self.own:
            self.client.close()


def run_all(todo: list, sink, prog, *, scheduler, workers, total: int, where, max_restarts: int = 3) -> tuple[int, str]:
    """Open a backend for the tasks ``todo`` (if any), :func:`drive` it and close it (and
    ``prog``); ``total`` fits in all, the others already in ``where``.  Returns the rows kept and
    the backend's description ("none" when there was nothing to run)."""
    n_todo = sum(len(t.models) for t in todo)
    backend, written = None, 0
    try:
        if todo:
            backend = open_backend(scheduler, workers)
            if prog:
                prog.message(f"{n_todo} fits to run ({total - n_todo} already in {where}) on {backend.describe()}")
            written = drive(backend, todo, sink, prog, max_restarts)
        elif prog:
            prog.message(f"all {total} fits are already in {where}")
    finally:
        if prog:
            prog.close()
        if backend is not None:
            backend.close()
    return written, backend.describe() if backend else "none"


class _PoolBroken(Exception):
    """Internal: the worker pool died (raised by submit or by a future's result)."""


def drive(backend, todo: list, sink, prog, max_restarts: int) -> int:
    """Run ``todo`` on ``backend`` with at most 2 × slots tasks in flight; hand each finished
    task's rows to ``sink.append(rows)`` (and count them on ``prog``); restart a broken local
    pool and resubmit what it lost; on Ctrl-C keep what finished.  Returns the rows kept."""
    queue = deque(todo)
    pending: dict = {}
    window = 2 * backend.slots
    restarts = written = 0

    def keep(rows):
        nonlocal written
        sink.append(rows)
        written += len(rows)
        if prog:
            prog.advance(len(rows))

    def finished_ok(f) -> bool:
        try:
            return f.done() and not f.cancelled() and f.exception() is None
        except Exception:  # noqa: BLE001 - e.g. a cancelled Dask future
            return False

    try:
        while queue or pending:
            try:
                while queue and len(pending) < window:
                    t = queue[0]
                    try:
                        fut = backend.submit(t)
                    except Exception as err:  # noqa: BLE001
                        if backend.broken(err):
                            raise _PoolBroken(err) from err
                        raise
                    queue.popleft()
                    pending[fut] = t
                for fut in backend.wait_any(list(pending)):
                    if fut not in pending:
                        continue
                    try:
                        rows = fut.result()
                    except Exception as err:  # noqa: BLE001
                        if backend.broken(err):
                            raise _PoolBroken(err) from err
                        raise StudyError(f"task {pending[fut].key} failed in the {backend.name} backend: "
                                         f"{type(err).__name__}: {err}; run again to resume") from err
                    del pending[fut]
                    keep(rows)
            except _PoolBroken as broken:
                err = broken.__cause__
                restarts += 1
                lost = []
                for f, t in pending.items():  # keep what finished before the pool broke
                    if finished_ok(f):
                        keep(f.result())
                    else:
                        lost.append(t)
                pending.clear()
                queue.extendleft(reversed(lost))
                if restarts > max_restarts:
                    raise StudyError(
                        f"the worker pool died {restarts} times (last: {err}); a task may be killing "
                        f"its worker (memory?); finished fits are kept, run again to resume") from err
                if prog:
                    prog.message(f"a worker process died ({err}); restarting the pool and "
                                 f"resubmitting {len(lost)} unfinished task(s)")
                backend.restart()
    except KeyboardInterrupt:
        backend.cancel(list(pending))
        for fut in pending:  # keep what finished while we were stopping
            if finished_ok(fut):
                keep(fut.result())
        if prog:
            prog.message(f"interrupted: {written} fits written this run; run the same command again to resume")
        raise
    return written
