"""Kinship files: reading and writing a labelled kinship.

* ``.csv`` (optionally ``.csv.gz``; ``.tsv`` for tabs): a labelled square table; the first
  column holds the ids, the header row holds the same ids; entries are written with full
  (round-trip) precision.
* ``.npy``: the n×n float64 matrix, plus an ids file next to it named ``<path>.ids``
  (e.g. ``K.npy`` → ``K.npy.ids``): UTF-8 text, one id per line, in matrix order.

Every write is atomic (see :mod:`hetvc.io_utils`).  :func:`read_kinship` validates what it
reads with :func:`check_kinship`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..io_utils import atomic_path, atomic_write
from .check import check_kinship, checked_kinship
from .tables import _EXACT_FLOATS, _csv_sep

__all__ = ["read_kinship", "write_kinship", "ids_path"]


def _kinship_format(p: Path) -> str:
    if p.name.lower().endswith(".npy"):
        return "npy"
    if _csv_sep(p) is not None:
        return "csv"
    raise InputError(f"cannot tell the format of kinship file {p}: use a .csv (labelled table) or .npy (+ .ids) name")


def ids_path(path: str | os.PathLike) -> Path:
    """The ids file that goes with a ``.npy`` kinship: ``<path>.ids``."""
    return Path(str(path) + ".ids")


def read_kinship(path: str | os.PathLike, *, check: bool = True, jitter: float | None = None) -> pd.DataFrame:
    """Read a labelled kinship (``.csv`` table, or ``.npy`` + ``<path>.ids``), validated by
    :func:`check_kinship` (errors name the file)."""
    p = Path(path)
    fmt = _kinship_format(p)
    if not p.exists():
        raise InputError(f"kinship file {p} does not exist")
    if fmt == "npy":
        idp = ids_path(p)
        if not idp.exists():
            raise InputError(f"kinship {p} needs its ids file {idp} (one id per line, in matrix order)")
        try:
            values = np.load(p, allow_pickle=False)
        except Exception as err:
            raise InputError(f"cannot read kinship {p}: {err}".replace("\n", " ")) from err
        with open(idp, encoding="utf-8") as fh:
            labels = [line.rstrip("\r\n") for line in fh]
        while labels and labels[-1] == "":
            labels.pop()
        if values.ndim != 2 or values.shape[0] != values.shape[1]:
            raise InputError(f"kinship {p} holds a {'×'.join(map(str, values.shape))} array, not a square matrix")
        if len(labels) != values.shape[0]:
            raise InputError(
                f"ids file {idp} has {len(labels)} ids but kinship {p} is {values.shape[0]}×{values.shape[0]}; "
                f"they must match one to one"
            )
        K = pd.DataFrame(values, index=pd.Index(labels, dtype=object), columns=pd.Index(labels, dtype=object))
    else:
        sep = _csv_sep(p)
        if p.stat().st_size == 0:
            raise InputError(f"kinship file {p} is empty")
        try:
            header = pd.read_csv(p, sep=sep, nrows=0).columns
            K = pd.read_csv(p, sep=sep, index_col=0, dtype={header[0]: str}, **_EXACT_FLOATS)
        except Exception as err:
            raise InputError(f"cannot read kinship {p}: {err}".replace("\n", " ")) from err
        if len(header) < 2:
            other = [d for d in ",;\t| " if d != sep and d in str(header[0]).strip()]
            named = {"\t": "tabs", " ": "spaces"}
            seen = f", its header looks delimited by {named.get(other[0], repr(other[0]))}" if other else ""
            kind, delim = (".tsv", "tab") if sep == "\t" else (".csv", "comma")
            raise InputError(
                f"kinship {p} has a single column{seen}: a {kind} kinship must be {delim} delimited "
                f"(ids in the first column and the header)"
            )
    return check_kinship(K, jitter=jitter, name=str(p)) if check else K


def write_kinship(K: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a labelled kinship atomically: ``.csv`` (ids in the first column and the header,
    full precision) or ``.npy`` (float64 matrix) plus ``<path>.ids`` (one id per line)."""
    p = Path(path)
    fmt = _kinship_format(p)
    if not isinstance(K, pd.DataFrame):
        raise InputError("write_kinship needs a labelled kinship (pandas DataFrame with ids as index and columns)")
    labels = [str(i) for i in K.index]
    if [str(c) for c in K.columns] != labels:
        raise InputError("write_kinship: rows and columns of K must carry the same ids in the same order "
                         "(run check_kinship first)")
    if fmt == "npy":
        bad = [i for i in labels if "\n" in i or "\r" in i]
        if bad:
            raise InputError(f"id {bad[0]!r} contains a line break; it cannot be written to an ids file")
        with atomic_write(p, "wb") as fh:
            np.save(fh, K.to_numpy(dtype=np.float64), allow_pickle=False)
        with atomic_write(ids_path(p)) as fh:
            fh.write("".join(i + "\n" for i in labels))
    else:
        out = K.copy()
        out.index = pd.Index(labels, dtype=object, name="id")
        out.columns = pd.Index(labels, dtype=object)
        # atomic_path keeps the target's extension, so pandas still infers compression from it;
        # floats are written in their shortest round-trip form.
        with atomic_path(p) as tmp:
            out.to_csv(tmp, sep=_csv_sep(p))
    return p


def kinship_matrix(K, jitter: float | None = None) -> tuple[np.ndarray, list]:
    """(values, ids) of a relationship matrix given as a labelled DataFrame or a path to one
    (.csv, or .npy with its .ids), checked once (:func:`checked_kinship`): what ``hetvc.fit``
    and :func:`hetvc.build_model` take as ``K``."""
    name = "K"
    if isinstance(K, (str, bytes)) or hasattr(K, "__fspath__"):
        name = os.fsdecode(K)
        K = read_kinship(name, check=False)  # checked once, below
    if not isinstance(K, pd.DataFrame):
        raise InputError(
            "K must be a labelled pandas DataFrame (index and columns = genotype ids) or a "
            "path to one; use hetvc.read_kinship"
        )
    return checked_kinship(K, jitter=jitter, name=name)
