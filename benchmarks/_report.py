"""Shared by the benchmark scripts: ``--markdown FILE`` writes a script's table as one section
of a Markdown file (docs/benchmarks.md), with the command line and the machine it ran on.

A script's section lies between ``<!-- NAME -->`` and ``<!-- /NAME -->`` (NAME: the script's
file name without ``.py``).  Writing replaces that section only (or appends it where the file
has none yet); everything else in the file is kept byte for byte.  The file is replaced
atomically (hetvc.io_utils.atomic_write), under an advisory lock on its folder so that two
scripts finishing together do not lose each other's section.

    report = Report.from_args(args, __file__)   # at the start: command, machine, date
    ...
    report.write(table(["N", "fit s"], rows, "rr"), notes=["..."])
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
import platform
import re
import shlex
import subprocess
import sys
from pathlib import Path

from hetvc.io_utils import atomic_write


def add_markdown_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--markdown", metavar="FILE", default=None,
                        help="also write the table as this script's section of a Markdown file "
                             "(e.g. docs/benchmarks.md); other sections are kept")


def command_line() -> str:
    """The command as it was typed, as far as the process can tell."""
    return shlex.join(["python", *sys.argv])


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _memory_gib() -> float | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2 ** 20
    with contextlib.suppress(ValueError, OSError, AttributeError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return None


def _blas(threads: int | None) -> str:
    """The BLAS libraries loaded (threadpoolctl), with their threads; ``threads`` overrides the
    count where the benchmark limits them elsewhere (in a context or in child processes)."""
    import numpy  # noqa: F401  (load the BLAS libraries threadpoolctl reports)
    import scipy.linalg  # noqa: F401

    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "BLAS unknown (threadpoolctl not installed)"
    libs = []
    for info in sorted(threadpool_info(), key=lambda i: i.get("filepath", "")):
        if info.get("user_api") != "blas":
            continue
        owner = Path(info.get("filepath", "")).parent.name.removesuffix(".libs") or "?"
        n = threads if threads is not None else info.get("num_threads")
        arch = f"{info['architecture']}, " if info.get("architecture") else ""
        libs.append(f"{info.get('internal_api', '?')} {info.get('version', '?')} "
                    f"({owner}'s, {arch}{n} thread{'s' if n != 1 else ''})")
    return "BLAS " + (" and ".join(libs) if libs else "not found")


def _hetvc_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        out = f"hetvc {version('hetvc')}"
    except PackageNotFoundError:
        out = "hetvc (not installed)"
    root = Path(__file__).resolve().parents[1]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             cwd=root, timeout=10)
        if rev.returncode == 0 and rev.stdout.strip():
            dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], capture_output=True,
                                   text=True, cwd=root, timeout=10).stdout.strip()
            out += f" at commit {rev.stdout.strip()}{' (src/ modified)' if dirty else ''}"
    return out


def machine(threads: int | None = None) -> str:
    """One line: CPU, cores, memory, BLAS and its threads, versions, load and date."""
    import numpy
    import scipy

    mem = _memory_gib()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    parts = [
        _cpu_model(),
        f"{os.cpu_count()} cores",
        f"{mem:.1f} GiB memory" if mem is not None else "memory unknown",
        _blas(threads),
        f"numpy {numpy.__version__}, scipy {scipy.__version__}, "
        f"Python {platform.python_version()} ({platform.system()} {platform.machine()})",
        _hetvc_version(),
        *([f"load average {load:.1f} at the start"] if load is not None else []),
        datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
    ]
    return "; ".join(parts)


def row(cells: list) -> str:
    """One line of a Markdown table (``None`` prints as a dash)."""
    return "| " + " | ".join("—" if v is None else str(v).replace("|", "\\|") for v in cells) + " |"


def table(headers: list[str], rows: list[list], align: str) -> str:
    """A Markdown table; ``align`` has one letter per column, ``l`` or ``r``."""
    if len(align) != len(headers):
        raise ValueError("table: one alignment letter per column")
    rule = "|" + "|".join("---:" if a == "r" else "---" for a in align) + "|"
    return "\n".join([row(headers), rule, *(row(r) for r in rows)])


def replace_section(text: str, name: str, section: str) -> str:
    """``text`` with the part from the line ``<!-- name -->`` to the line ``<!-- /name -->``
    (markers included) replaced by ``section`` wrapped in those markers, or with it appended.
    Only whole lines count as markers (prose may quote them)."""
    begin, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{begin}\n{section.strip()}\n{end}"
    starts = [m.start() for m in re.finditer(rf"^{re.escape(begin)}[ \t]*$", text, re.M)]
    if len(starts) > 1:
        raise ValueError(f"{begin} stands on {len(starts)} lines; it must stand on one")
    if starts:
        close = re.compile(rf"^{re.escape(end)}[ \t]*$", re.M).search(text, starts[0])
        if close is None:
            raise ValueError(f"{begin} has no closing {end} line")
        return text[:starts[0]] + block + text[close.end():]
    return (text.rstrip("\n") + "\n\n" if text.strip() else "") + block + "\n"


@contextlib.contextmanager
def _folder_lock(folder: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class Report:
    """What a script's section says besides its table, fixed when the run starts."""

    def __init__(self, path: str | os.PathLike | None, script: str, threads: int | None = None):
        self.path = Path(path) if path else None
        self.name = Path(script).stem
        self.command = command_line()
        self.machine = machine(threads) if self.path else None

    @classmethod
    def from_args(cls, args: argparse.Namespace, script: str, threads: int | None = None) -> Report:
        return cls(args.markdown, script, threads)

    def section(self, body: str, notes: list[str] = ()) -> str:
        lines = [f"### `{self.name}.py`: `{self.command}`", "", f"Machine: {self.machine}.", "", body.strip()]
        if notes:
            lines += ["", *(f"- {n}" for n in notes)]
        return "\n".join(lines)

    def write(self, body: str, notes: list[str] = ()) -> None:
        """Write (or replace) this script's section; nothing without ``--markdown``."""
        if self.path is None:
            return
        section = self.section(body, notes)
        folder = self.path.resolve().parent
        with _folder_lock(folder):
            text = self.path.read_text(encoding="utf-8") if self.path.exists() else ""
            new = replace_section(text, self.name, section)
            with atomic_write(self.path) as fh:
                fh.write(new)
        print(f"wrote the {self.name} section of {self.path}", file=sys.stderr)
