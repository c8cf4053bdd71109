"""Small I/O helpers shared by the whole project.

:func:`atomic_write` and :func:`atomic_path` make a write all-or-nothing: the data go to a
temporary file in the target's own folder (so the final rename never crosses file systems),
and only when the ``with`` block finishes without error is the temporary file renamed over
the target with :func:`os.replace` (atomic on POSIX and Windows).  On an error the temporary
file is removed and the target is left as it was.  A reader therefore sees either the old
file or the complete new one, never a half-written one.

    with atomic_write("results/table.csv") as fh:       # a text handle
        frame.to_csv(fh)

    with atomic_path("K.npy") as tmp:                   # a path, for writers that want one
        some_library.save(tmp)

Temporary files are named ``.tmp-<random>-<target name>`` so that they keep the target's
extension (writers that infer a format or compression from the name still see it) and are
hidden from ordinary directory listings.  New files get the usual permissions (0o666 less
the umask), not the 0o600 of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import IO, Iterator
from .errors import InputError

__all__ = ["atomic_write", "atomic_path"]


def _reserve_temp(target: Path) -> Path:
    folder = target.parent
    if not folder.is_dir():
        # Imported lazily: errors.py is tiny, but keep this module free of cycles.

        raise InputError(f"cannot write {target}: folder {folder} does not exist; create it first")
    for _ in range(100):
        tmp = folder / f".tmp-{secrets.token_hex(4)}-{target.name}"
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise OSError(f"could not create a temporary file next to {target}")  # pragma: no cover


def _fsync(path: Path) -> None:
    try:
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    except OSError:  # pragma: no cover - fsync unsupported on some file systems
        pass


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; on success it replaces ``path`` atomically.

    The temporary file already exists (empty) when yielded; the caller overwrites it.  If the
    ``with`` block raises, the temporary file is deleted and ``path`` is untouched.
    """
    target = Path(path)
    tmp = _reserve_temp(target)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str | None = "utf-8",
    newline: str | None = None,
) -> Iterator[IO]:
    """Open a temporary file next to ``path`` for writing; on success it replaces ``path``.

    ``mode`` is ``"w"`` (text, default, UTF-8) or ``"wb"`` (binary).  The handle is flushed
    and fsync-ed before the rename.  If the ``with`` block raises, nothing is replaced.
    """
    if mode not in ("w", "wb", "wt"):
        raise ValueError(f"atomic_write: mode must be 'w' or 'wb', not {mode!r}")
    binary = "b" in mode
    with atomic_path(path) as tmp:
        if binary:
            fh = open(tmp, "wb")
        else:
            fh = open(tmp, "w", encoding=encoding, newline=newline)
        with fh:
            yield fh
            fh.flush()
            with contextlib.suppress(OSError):
                os.fsync(fh.fileno())
