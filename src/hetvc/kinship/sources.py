r"""Genotype sources: PLINK ``.bed`` files, CSV dosage tables, arrays and DataFrames.

Genotypes are an n×p table of allele dosages (0, 1, 2; fractional dosages in [0, 2] are
accepted), one row per individual and one column per SNP, NaN for a missing call.
:func:`read_genotypes` reads

* PLINK 1 binary files ``.bed`` + ``.bim`` + ``.fam`` (give the ``.bed`` path or the prefix),
  through the ``bed-reader`` package.  Individuals are labelled by the ``.fam`` IID column
  (which must be unique); the dosage counts allele 1 (A1), as PLINK does.
* CSV dosage tables: one row per individual, an id column (``id`` if there is one, otherwise
  the first column, or the column you name) and one numeric column per SNP.  ``.tsv`` files
  are read tab-separated.

Ids are strings and are always matched by label, never by position.

:func:`grm` reads genotypes through a block source (:func:`_source`): a ``.bed`` file is read
SNP block by SNP block from disk; a CSV table, an array or a DataFrame is held in memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .ids import _fmt_ids, _unique_labels, check_ids
from .tables import _EXACT_FLOATS, _csv_sep

__all__ = ["read_genotypes"]


def _is_bed(path: Path) -> Path | None:
    """The .bed path that ``path`` names (a .bed file or a prefix), or None."""
    if path.suffix.lower() == ".bed":
        return path
    cand = Path(str(path) + ".bed")
    if cand.exists():
        return cand
    return None


class _BedSource:
    """A PLINK .bed file read SNP block by SNP block (bounded memory)."""

    def __init__(self, bed: Path, ids=None):
        try:
            from bed_reader import open_bed
        except ImportError as err:  # pragma: no cover
            raise InputError("reading PLINK files needs the bed-reader package: pip install bed-reader") from err
        if not bed.exists():
            raise InputError(f"PLINK file {bed} does not exist; give the .bed path or the prefix of .bed/.bim/.fam")
        for ext in (".bim", ".fam"):
            other = bed.with_suffix(ext)
            if not other.exists():
                raise InputError(
                    f"PLINK file {other} is missing: {bed.name} needs its {ext} file next to it (same prefix)"
                )
        self.path = bed
        try:
            self._bed = open_bed(bed, num_threads=None)
            iid = list(self._bed.iid)
            sid = list(self._bed.sid)
        except InputError:
            raise
        except Exception as err:
            raise InputError(f"cannot read PLINK file {bed}: {err}".replace("\n", " ")) from err
        all_ids = _unique_labels(iid, f"{bed.with_suffix('.fam')} (IID column)")
        if ids is not None:
            check_ids(ids, all_ids, what="the requested ids", where=str(bed.with_suffix(".fam")))
            want = [str(i) for i in ids]
            self._rows = all_ids.get_indexer(want)
            self.ids = pd.Index(want, dtype=object)
        else:
            self._rows = None
            self.ids = all_ids
        self.snps = pd.Index([str(s) for s in sid], dtype=object)

    @property
    def shape(self):
        return len(self.ids), len(self.snps)

    def block(self, start: int, stop: int) -> np.ndarray:
        rows = slice(None) if self._rows is None else self._rows
        try:
            return self._bed.read(index=np.s_[rows, start:stop], dtype="float64", order="C")
        except Exception as err:
            raise InputError(f"cannot read PLINK file {self.path}: {err}".replace("\n", " ")) from err

    def close(self):
        try:
            self._bed.close()
        except Exception:  # pragma: no cover
            pass


class _ArraySource:
    def __init__(self, values: np.ndarray, ids=None, snps=None, what="genotypes"):
        self.values = values
        self.ids = ids
        self.snps = snps
        self.what = what

    @property
    def shape(self):
        return self.values.shape

    def block(self, start: int, stop: int) -> np.ndarray:
        return np.array(self.values[:, start:stop], dtype=np.float64, order="C")

    def close(self):
        pass


def read_genotypes(path: str | os.PathLike, *, id_column: str | None = None, ids=None,
                   dtype="float64") -> pd.DataFrame:
    """Read a genotype table: PLINK ``.bed`` (path or prefix) or a CSV dosage table.

    Returns an n×p DataFrame of dosages (NaN = missing), index = individual ids (strings,
    named ``id``), columns = SNP ids.  ``ids`` selects and orders individuals by label; an id
    absent from the file is an :class:`InputError` naming the file.  ``id_column`` names the
    id column of a CSV (default: ``id`` if present, else the first column).

    For very large PLINK files prefer ``grm(path)``, which streams SNP blocks from disk.
    """
    p = Path(path)
    bed = _is_bed(p)
    if bed is not None:
        src = _BedSource(bed, ids=ids)
        try:
            values = src.block(0, src.shape[1]).astype(dtype)
        finally:
            src.close()
        return pd.DataFrame(values, index=src.ids.rename("id"), columns=src.snps)
    if not p.exists():
        raise InputError(f"genotype file {p} does not exist (nor {p}.bed); give a .bed path or prefix, or a .csv")
    sep = _csv_sep(p)
    if sep is None:
        raise InputError(
            f"cannot tell the format of {p}: give a PLINK .bed file (or its prefix) or a .csv/.tsv dosage table"
        )
    frame = _read_dosage_csv(p, sep, id_column)
    if ids is not None:
        check_ids(ids, frame.index, what="the requested ids", where=str(p))
        frame = frame.loc[[str(i) for i in ids]]
    return frame.astype(dtype)


def _read_dosage_csv(p: Path, sep: str, id_column: str | None) -> pd.DataFrame:
    try:
        header = pd.read_csv(p, sep=sep, nrows=0).columns
    except Exception as err:
        raise InputError(f"cannot read genotype table {p}: {err}".replace("\n", " ")) from err
    if len(header) < 2:
        raise InputError(f"genotype table {p} needs an id column and at least one SNP column (separator {sep!r})")
    if id_column is None:
        id_column = "id" if "id" in header else header[0]
    elif id_column not in header:
        raise InputError(f"genotype table {p} has no column {id_column!r} (columns: {_fmt_ids(list(header))})")
    try:
        frame = pd.read_csv(p, sep=sep, dtype={id_column: str}, **_EXACT_FLOATS)
    except Exception as err:
        raise InputError(f"cannot read genotype table {p}: {err}".replace("\n", " ")) from err
    if frame[id_column].isna().any():
        row = int(np.flatnonzero(frame[id_column].isna().to_numpy())[0])
        raise InputError(f"genotype table {p}: data row {row + 1} has no id in column {id_column!r}")
    index = _unique_labels(frame[id_column], f"{p} (column {id_column!r})").rename("id")
    frame = frame.drop(columns=[id_column])
    for col in frame.columns:
        if not pd.api.types.is_numeric_dtype(frame[col]):
            conv = pd.to_numeric(frame[col], errors="coerce")
            bad = conv.isna() & frame[col].notna()
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"genotype table {p}: SNP {col!r} of id {index[row]!r} is {frame[col].iloc[row]!r}, "
                f"not a dosage; use 0/1/2 (or a number in [0, 2]) and leave missing calls empty"
            )
    frame.index = index
    frame.columns = pd.Index([str(c) for c in frame.columns], dtype=object)
    return frame.astype(np.float64)


def _source(genotypes, ids=None, id_column=None):
    """Wrap any accepted genotype input as a block source."""
    if isinstance(genotypes, (str, os.PathLike)):
        p = Path(genotypes)
        bed = _is_bed(p)
        if bed is not None:
            return _BedSource(bed, ids=ids), True
        frame = read_genotypes(p, id_column=id_column, ids=ids)
        return _ArraySource(frame.to_numpy(), frame.index, frame.columns, what=str(p)), True
    if isinstance(genotypes, pd.DataFrame):
        idx = _unique_labels(genotypes.index, "the genotype table's index")
        frame = genotypes
        if ids is not None:
            check_ids(ids, idx, what="the requested ids", where="the genotype table")
            frame = genotypes.set_axis(idx, axis=0).loc[[str(i) for i in ids]]
            idx = frame.index
        try:
            values = frame.to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"genotype table has non-numeric entries ({err}); dosages must be numbers") from err
        return _ArraySource(values, pd.Index(idx, dtype=object).rename("id"),
                            pd.Index([str(c) for c in frame.columns], dtype=object)), True
    values = np.asarray(genotypes)
    if values.ndim != 2:
        raise InputError(f"genotypes must be a 2-D individuals × SNPs array, got {values.ndim} dimension(s)")
    if ids is not None:
        raise InputError("ids= selects individuals by label; it needs a labelled genotype table or a file")
    try:
        values = values.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"genotypes must be numeric dosages ({err})") from err
    return _ArraySource(values), False
