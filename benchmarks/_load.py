"""Shared by the benchmark scripts: cores kept busy by other processes (``while True: pass``),
the load of a shared machine."""

from __future__ import annotations

import contextlib
import multiprocessing as mp


def _spin(ready) -> None:
    ready.set()
    while True:
        pass


@contextlib.contextmanager
def busy_cores(n: int):
    """``n`` spinning processes for the duration of the ``with`` block (none for n = 0)."""
    ctx = mp.get_context("spawn")
    spinners = []
    try:
        for _ in range(n):
            ready = ctx.Event()
            p = ctx.Process(target=_spin, args=(ready,), daemon=True)
            p.start()
            ready.wait(60)
            spinners.append(p)
        yield
    finally:
        for p in spinners:
            p.terminate()
            p.join()
