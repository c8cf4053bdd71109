"""Progress of a study run: a ``rich`` progress bar (fits done, rate, ETA) when stderr is a
terminal, else a plain line at most every ``log_every`` seconds."""

from __future__ import annotations

import sys
import time


class StudyProgress:
    """Reports fits done out of ``total`` (``done`` of them before this run) and messages;
    ``mode``: ``"auto"``, ``"bar"`` or ``"log"``."""

    def __init__(self, mode, total: int, done: int, log_every: float, label: str = "hetvc study"):
        self.label = label
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        self.log_every = log_every
        self.last = 0.0
        self.bar = None
        if mode == "auto":
            from rich.console import Console

            mode = "bar" if Console(stderr=True).is_terminal else "log"
        self.mode = mode
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("fits"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("study", total=total, completed=done, rate="")

    def message(self, text: str):
        if self.mode == "bar":
            self.bar.console.print(text)
        elif self.mode == "log":
            print(f"{self.label}: {text}", file=sys.stderr, flush=True)

    def advance(self, k: int):
        self.done += k
        el = time.monotonic() - self.t0
        new = self.done - self.start_done
        rate = new / el if el > 0 else 0.0
        if self.mode == "bar":
            self.bar.update(self.task, advance=k, rate=f"{rate:.2f} fits/s")
        elif self.mode == "log":
            now = time.monotonic()
            if now - self.last >= self.log_every or self.done >= self.total:
                self.last = now
                left = self.total - self.done
                eta = _hms(left / rate) if rate > 0 else "?"
                pct = 100.0 * self.done / self.total if self.total else 100.0
                print(f"{self.label}: {self.done}/{self.total} fits ({pct:.1f}%), {rate:.2f} fits/s, "
                      f"elapsed {_hms(el)}, ETA {eta}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _hms(s: float) -> str:
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, s = divmod(r, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"
