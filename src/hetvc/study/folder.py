"""The study folder: its lock, its ``study.json`` (base seed, fit options, runs) and the
machine a run ran on.

A lock (``.study.lock``, ``flock``) stops two studies from writing the same folder at once.
``study.json`` keeps the base seed and the fit options; resuming with a different seed or
options is refused (the rows would not belong to one study).
"""

from __future__ import annotations

import json
import os
import platform
import socket
from pathlib import Path

from ..errors import HetvcError
from ..io_utils import atomic_write
from .scenario import DEFAULT_SEED

FORMAT = "hetvc-study"
VERSION = 1


class StudyError(HetvcError):
    """A study that cannot go on (a folder of another study, a pool that keeps dying)."""


def lock_folder(out: Path, what: str = "study"):
    """Hold ``out/.study.lock`` (an open file, to be closed to release it; ``None`` where the
    platform has no ``flock``), or raise :class:`StudyError` if another run (a ``what``) holds it."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    fh = open(out / ".study.lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StudyError(f"another hetvc {what} is running in {out}; wait for it or use another --out") from None
    return fh


def read_config(path: Path, fmt: str, what: str) -> dict | None:
    """The JSON of a run's folder (``study.json``, ``cv.json``), None when absent; a file that is
    not JSON or not of format ``fmt`` is refused."""
    if not path.exists():
        return None
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise StudyError(f"cannot read {path}: {err}") from None
    if not isinstance(cfg, dict) or cfg.get("format") != fmt:
        raise StudyError(f"{path} is not a hetvc {what} file; use a new output folder")
    return cfg


def study_config(out: Path, seed, options: dict) -> dict:
    """The folder's ``study.json`` (written if new); refuses a seed or options of another study."""
    path = out / "study.json"
    cfg = read_config(path, FORMAT, "study")
    if cfg is not None:
        if seed is not None and int(seed) != cfg["seed"]:
            raise StudyError(f"{out} holds a study with seed {cfg['seed']}, not {seed}; "
                             f"resume it with --seed {cfg['seed']} (or no --seed), or use a new --out")
        for k, v in options.items():
            if cfg["options"].get(k) != v:
                raise StudyError(f"{out} holds a study with {k} = {cfg['options'].get(k)!r}, not {v!r}; "
                                 "use the same options to resume, or a new --out")
        return cfg
    cfg = dict(format=FORMAT, version=VERSION, seed=int(DEFAULT_SEED if seed is None else seed),
               options=options, runs=[])
    with atomic_write(path) as fh:
        json.dump(cfg, fh, indent=1)
    return cfg


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


def machine_info() -> dict:
    """Host, cores, CPU model, Python and platform, for the run records of ``study.json``."""
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    return dict(host=socket.gethostname(), cores=usable_cores(), cpu=cpu, python=platform.python_version(),
                platform=platform.platform())
