r"""``results.csv``, the study's CRC-checked log of fits, and why a kill never leaves a half row.

Only the coordinating process writes.  Workers (processes or Dask workers) return the rows
of a finished task; a worker that dies loses at most its running task, which is
resubmitted.  ``results.csv`` is one CSV file: a header written atomically
(:func:`hetvc.io_utils.atomic_write`) when the study starts, then one **append** per task:
the task's rows (all its models) are encoded as complete ``\n``-terminated lines and handed
to the kernel with ``os.write`` on an ``O_APPEND`` descriptor (looped until every byte is
written), then ``fsync``-ed before the task counts as done.  Every line ends with a CRC-32 of
its own text (column ``crc``).  When a study is opened again:

* a last line without its ``\n`` (a process killed inside the write, a full disk) is cut off
  (the file is truncated to the last complete line), and
* any line whose field count or CRC is wrong (e.g. zero-filled blocks after a power failure
  on some file systems) is dropped and the file is rewritten atomically without it,

so the file always holds only complete, verified rows and the tasks behind the dropped bytes
are simply run again.  The alternative, one small file per fit renamed into a ``fits/``
folder, is equally safe but leaves thousands of files and needs a separate "build the table"
step; the append log with a repair-on-open gives one file that is always the table.

Rows are appended in completion order; :func:`load_results` sorts them.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io_utils import atomic_write
from .folder import StudyError
from .scenario import SCENARIO_FIELDS, model_rank

# Columns of results.csv (format version 1).  JSON columns hold L×m tables (env-major rows,
# trait columns) or m-vectors; ``crc`` is the CRC-32 of the line's text before ``,crc``.
COLUMNS = (
    "scenario", "n", "traits", "locations", "snps", "h2", "w", "rho", "replicate", "seed",
    "model", "status", "engine", "converged", "iterations", "loglik", "n_params", "aic", "bic",
    "h2_pooled", "h2_pooled_true", "h2_pooled_traits", "h2_env", "g_env", "g_env_true", "e_env",
    "seconds", "sim_seconds", "worker", "error", "crc",
)
_JSON_COLUMNS = ("h2_pooled_traits", "h2_env", "g_env", "g_env_true", "e_env")


def encode_row(row: dict) -> bytes:
    buf = io.StringIO()
    values = []
    for c in COLUMNS[:-1]:
        v = row.get(c, "")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = ""
        elif isinstance(v, (bool, np.bool_)):
            v = "True" if v else "False"
        elif isinstance(v, (float, np.floating)):
            v = repr(float(v))
        values.append(v)
    csv.writer(buf, lineterminator="").writerow(values)
    body = buf.getvalue()
    if "\n" in body or "\r" in body:  # pragma: no cover - every field is one line
        raise ValueError("a results row must not contain a line break")
    return f"{body},{zlib.crc32(body.encode('utf-8')):08x}\n".encode("utf-8")


def _header() -> bytes:
    return (",".join(COLUMNS) + "\n").encode("utf-8")


def _valid(line: bytes) -> bool:
    """A complete line whose CRC and field count check out."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    body, sep, crc = text.rpartition(",")
    if not sep or len(crc) != 8 or f"{zlib.crc32(body.encode('utf-8')):08x}" != crc:
        return False
    try:
        fields = next(csv.reader([body]))
    except (csv.Error, StopIteration):
        return False
    return len(fields) == len(COLUMNS) - 1


class ResultsFile:
    """``results.csv``: repaired on open, appended one task (complete lines) at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.repaired = 0  # bytes cut from an incomplete last line
        self.dropped = 0  # lines dropped for a bad CRC / field count
        self._open()

    def _open(self):
        if not self.path.exists() or self.path.stat().st_size == 0:
            with atomic_write(self.path, "wb") as fh:
                fh.write(_header())
        data = self.path.read_bytes()
        if not data.startswith(_header()):
            first = data.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
            raise StudyError(
                f"{self.path} is not a hetvc study results file of this version (header {first!r}); "
                "use a new output folder")
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            self.repaired = len(data) - cut
            os.truncate(self.path, cut)
            data = data[:cut]
        lines = data[len(_header()):].split(b"\n")[:-1]
        good = [ln for ln in lines if _valid(ln)]
        self.dropped = len(lines) - len(good)
        if self.dropped:
            with atomic_write(self.path, "wb") as fh:
                fh.write(_header())
                fh.write(b"".join(ln + b"\n" for ln in good))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        blob = b"".join(encode_row(r) for r in rows)
        view = memoryview(blob)
        while view:
            k = os.write(self._fd, view)
            view = view[k:]
        os.fsync(self._fd)

    def close(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_rows(path) -> pd.DataFrame:
    """The valid rows of a results file as a raw DataFrame (file order; bad lines skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        raise InputError(f"no study results at {path}")
    data = path.read_bytes()
    if not data.startswith(_header()):
        raise InputError(f"{path} is not a hetvc study results file")
    lines = [ln for ln in data[len(_header()):].split(b"\n")[:-1] if _valid(ln)]
    text = _header() + b"".join(ln + b"\n" for ln in lines)
    text_cols = ("scenario", "model", "status", "engine", "worker", "error") + _JSON_COLUMNS
    df = pd.read_csv(io.BytesIO(text), dtype={c: str for c in text_cols}, keep_default_na=False, na_values=[""])
    for c in ("engine", "worker", "error") + _JSON_COLUMNS:
        df[c] = df[c].fillna("")
    df["converged"] = df["converged"].map({True: True, False: False, "True": True, "False": False}).fillna(False).astype(bool)
    return df


def load_results(out) -> pd.DataFrame:
    """The study's rows, one per fit, sorted by scenario parameters, replicate and model.

    A duplicate (scenario, replicate, model) — possible only if a task finished twice, e.g.
    after a lost Dask worker whose result still arrived — keeps the first row."""
    df = read_rows(out)
    df = df.drop_duplicates(["scenario", "replicate", "model"], keep="first")
    df = df.drop(columns=["crc"])
    order = model_rank(df["model"])
    df = df.assign(_m=df["model"].map(order)).sort_values(list(SCENARIO_FIELDS) + ["replicate", "_m"])
    return df.drop(columns="_m").reset_index(drop=True)


def json_table(df: pd.DataFrame, column: str) -> np.ndarray:
    """The JSON column as an array (fits × ...); error rows give NaN."""
    vals = [np.asarray(json.loads(s), dtype=float) if s else None for s in df[column]]
    shape = next((v.shape for v in vals if v is not None), (0,))
    return np.stack([v if v is not None else np.full(shape, np.nan) for v in vals]) if vals else np.empty((0,) + shape)
