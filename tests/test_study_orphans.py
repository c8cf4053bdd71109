"""No process left behind: after ``kill -9`` of ``hetvc study`` its worker processes and the
forkserver exit by themselves within seconds (issue 15, item 7)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or not Path("/proc/self/stat").exists(),
                                reason="reads the process tree from /proc (Linux)")


def _procs() -> dict[int, tuple[int, str, int]]:
    """{pid: (parent pid, state, start time)} of every process, from /proc."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            out[int(d.name)] = (int(fields[1]), fields[0], int(fields[19]))
    return out


def _descendants(pid: int) -> dict[int, int]:
    """{descendant pid: start time} of a process (the start time tells a reused pid apart)."""
    procs = _procs()
    out, frontier = {}, {pid}
    while frontier:
        frontier = {c for c, (p, _, _) in procs.items() if p in frontier and c not in out}
        out.update({c: procs[c][2] for c in frontier})
    return out


def _alive(recorded: dict[int, int]) -> list[int]:
    """The recorded processes that still run: a zombie (exited, not yet reaped) counts as dead."""
    procs = _procs()
    return [p for p, start in recorded.items() if p in procs and procs[p][2] == start and procs[p][1] != "Z"]


def _wait(cond, timeout: float) -> bool:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.05)
    return True


def test_workers_and_forkserver_exit_when_study_is_killed(tmp_path):
    out = tmp_path / "study"
    # 2 scenarios × 40 replicates of ~1 s fits on 2 workers: far from done when it is killed
    cmd = [sys.executable, "-c", "from hetvc.cli import main; main()", "study", "--quick", "--replicates", "40",
           "--workers", "2", "--no-plots", "--progress", "log", "--out", str(out)]
    log = open(tmp_path / "log.txt", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True)
    recorded: dict[int, int] = {}
    try:
        # the two workers run (grandchildren: forkserver → worker) and are busy with a fit
        def ready():
            recorded.update(_descendants(proc.pid))
            workers = [p for p, (pp, _, _) in _procs().items() if pp in recorded and p in recorded]
            return len(workers) >= 2 and (out / "results.csv").exists() or proc.poll() is not None

        assert _wait(ready, 30), "the workers did not start"
        assert proc.poll() is None, f"the study ended early: {(tmp_path / 'log.txt').read_text()}"
        time.sleep(0.5)  # the workers are inside a task
        recorded.update(_descendants(proc.pid))
        assert len(recorded) >= 3, f"expected a forkserver and two workers, got {recorded}"
        os.kill(proc.pid, signal.SIGKILL)
        t_kill = time.monotonic()
        proc.wait(10)
        gone = _wait(lambda: not _alive(recorded), 10)
        took = time.monotonic() - t_kill
        left = _alive(recorded)
        assert gone, f"processes left behind {took:.1f} s after kill -9 of the study: {left}"
        print(f"all {len(recorded)} descendants gone {took:.2f} s after kill -9")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in _alive(recorded):  # never leave orphans behind, even when the test fails
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log.close()
