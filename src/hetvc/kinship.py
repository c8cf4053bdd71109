r"""Genotypes → genomic relationship matrix (GRM); reading, writing and checking kinships.

Genotypes
---------
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

GRM
---
With :math:`x_{jk}` the dosage of individual j at SNP k and :math:`p_k` the allele frequency
estimated from the observed calls, :math:`z_{jk} = x_{jk} - 2p_k` (missing calls are imputed
with the SNP mean, i.e. :math:`z_{jk}=0`):

* ``method="standardized"`` (default; Yang et al. 2010, the GCTA form without its diagonal
  correction): :math:`K = \frac{1}{p'} \sum_k z_k z_k' / (2p_k(1-p_k))`.
* ``method="vanraden"`` (VanRaden 2008, method 1):
  :math:`K = \sum_k z_k z_k' / \sum_k 2p_k(1-p_k)`.

Under Hardy–Weinberg equilibrium both have diagonal mean ≈ 1.  SNPs with no observed call,
and monomorphic SNPs (all observed dosages equal: they carry no information and would divide
by zero), are dropped; p' is the number of SNPs kept.  Counts of dropped SNPs and imputed
calls are logged (logger ``hetvc.kinship``) and returned by ``grm(..., return_info=True)``.

The sum runs over blocks of ``block_size`` SNPs and accumulates the upper triangle in place
(BLAS syrk), so memory is one n×n float64 matrix plus a few n×block_size work arrays
(about 6·n·block_size·8 bytes): 20,000 individuals need 3.2 GB for K plus about 1 GB at
the default 1,024-SNP blocks, whatever the number of SNPs.  Pass a ``.bed`` path to
:func:`grm` to stream SNP blocks from disk instead of loading all genotypes.  (Measured:
4,000 × 20,000 SNPs from a .bed took 17 s on 2 cores with a 0.5 GB peak; time grows as
n²·p.)

Kinship files
-------------
* ``.csv`` (optionally ``.csv.gz``; ``.tsv`` for tabs): a labelled square table; the first
  column holds the ids, the header row holds the same ids; entries are written with full
  (round-trip) precision.
* ``.npy``: the n×n float64 matrix, plus an ids file next to it named ``<path>.ids``
  (e.g. ``K.npy`` → ``K.npy.ids``): UTF-8 text, one id per line, in matrix order.

Every write is atomic (see :mod:`hetvc.io_utils`).  :func:`read_kinship` validates what it
reads with :func:`check_kinship`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import scipy.linalg.blas

from .errors import InputError
from .io_utils import atomic_path, atomic_write
from .psd import psd_certificate

__all__ = [
    "GRMInfo",
    "grm",
    "read_genotypes",
    "read_kinship",
    "write_kinship",
    "check_kinship",
    "checked_kinship",
    "scale_kinship",
    "check_ids",
]

log = logging.getLogger(__name__)

# pandas < 3 needs float_precision="round_trip" to read floats back exactly; pandas 3 does so
# by default and deprecates the argument.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}

METHODS = ("standardized", "vanraden")
DEFAULT_BLOCK_SIZE = 1024


# ---------------------------------------------------------------------------------------
# ids


def _fmt_ids(ids: Sequence, k: int = 3) -> str:
    shown = ", ".join(repr(str(i)) for i in list(ids)[:k])
    return shown + (", ..." if len(ids) > k else "")


def _loose(label: str) -> str:
    return "".join(str(label).split()).casefold()


def near_match_hint(missing: Sequence, available: Iterable) -> str:
    """'' or a hint naming an id of ``missing`` that equals one of ``available`` but for
    case or whitespace (e.g. ``'G03 '`` for ``'g03'``), and how many such ids there are."""
    loose = {}
    for a in map(str, available):
        loose.setdefault(_loose(a), a)
    pairs = [(m, loose[_loose(m)]) for m in map(str, missing) if _loose(m) in loose]
    if not pairs:
        return ""
    m, a = pairs[0]
    more = f" ({len(pairs)} ids are like this)" if len(pairs) > 1 else ""
    return (f"; did you mean {a!r} for {m!r}? they differ only in case or whitespace{more}, "
            f"and ids are matched by exact label")


def check_ids(ids: Iterable, available: Iterable, *, what: str = "the phenotype table",
              where: str = "the kinship") -> None:
    """Raise :class:`InputError` unless every id of ``ids`` is among ``available``.

    Ids are compared as strings.  The message names how many are missing and the first few,
    and hints at an available id that differs only in case or whitespace.
    """
    available = list(map(str, available))
    have = set(available)
    missing = [str(i) for i in ids if str(i) not in have]
    if missing:
        # keep first occurrences, in order
        missing = list(dict.fromkeys(missing))
        hint = near_match_hint(missing, available)
        raise InputError(
            f"{len(missing)} id(s) of {what} are not in {where} (first: {_fmt_ids(missing)})"
            + (hint or "; ids are matched by label: check that both use the same ids")
        )


def _unique_labels(labels, what: str) -> pd.Index:
    idx = pd.Index([str(x) for x in labels], dtype=object)
    dup = idx[idx.duplicated()]
    if len(dup):
        raise InputError(f"id {dup[0]!r} appears more than once in {what}: ids must be unique")
    return idx


# ---------------------------------------------------------------------------------------
# genotype sources


def _is_bed(path: Path) -> Path | None:
    """The .bed path that ``path`` names (a .bed file or a prefix), or None."""
    if path.suffix.lower() == ".bed":
        return path
    cand = Path(str(path) + ".bed")
    if cand.exists():
        return cand
    return None


def _csv_sep(path: Path) -> str | None:
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".xz", ".zip", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".csv"):
        return ","
    if name.endswith(".tsv") or name.endswith(".tab"):
        return "\t"
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


# ---------------------------------------------------------------------------------------
# the GRM


@dataclass
class GRMInfo:
    """What :func:`grm` did: sizes, dropped SNPs and imputed calls."""

    method: str
    n: int
    snps: int                #: SNPs in the input
    snps_used: int           #: SNPs that entered K
    monomorphic: int         #: dropped: all observed dosages equal
    all_missing: int         #: dropped: no observed call
    missing_calls: int       #: calls imputed with the SNP mean
    blocks: int
    denominator: float       #: p' (standardized) or sum 2p(1-p) (vanraden)

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (
            f"{self.method} GRM of {self.n} individuals from {self.snps_used} of {self.snps} SNPs "
            f"({self.monomorphic} monomorphic and {self.all_missing} all-missing SNPs dropped; "
            f"{self.missing_calls} missing calls mean-imputed)"
        )


def _prepare_block(X: np.ndarray, start: int, ids=None, snps=None, what="genotypes"):
    """Center one block of SNPs.  Returns (Z, var, kept mask, n_missing, n_mono, n_allmiss).

    Z holds the centred dosages of the kept SNPs (missing → 0), var = 2p(1-p) of those SNPs.
    """
    obs = ~np.isnan(X)
    bad = obs & ((X < 0) | (X > 2))
    if bad.any():
        j, k = np.argwhere(bad)[0]
        who = repr(ids[j]) if ids is not None else f"row {j}"
        snp = repr(snps[start + k]) if snps is not None else f"column {start + k}"
        raise InputError(
            f"{what}: genotype of {who} at SNP {snp} is {X[j, k]:g}; dosages must lie in [0, 2] (NaN for missing)"
        )
    count = obs.sum(axis=0)
    n_missing = int(X.size - count.sum())
    Xf = np.where(obs, X, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = Xf.sum(axis=0) / count
    big = np.where(obs, X, -np.inf).max(axis=0)
    small = np.where(obs, X, np.inf).min(axis=0)
    all_missing = count == 0
    mono = ~all_missing & (big == small)
    kept = ~all_missing & ~mono
    Z = Xf[:, kept] - mean[kept]
    Z[~obs[:, kept]] = 0.0
    freq = mean[kept] / 2.0
    var = 2.0 * freq * (1.0 - freq)
    return Z, var, kept, n_missing, int(mono.sum()), int(all_missing.sum())


def grm(genotypes, method: str = "standardized", *, block_size: int = DEFAULT_BLOCK_SIZE,
        ids=None, id_column: str | None = None, return_info: bool = False):
    """Genomic relationship matrix from SNP dosages.

    ``genotypes``: an n×p array or DataFrame of dosages (0/1/2, NaN missing), or a path to a
    PLINK ``.bed`` (or prefix; streamed block by block) or a CSV dosage table.
    ``method``: ``"standardized"`` or ``"vanraden"`` (see the module docstring).
    ``block_size``: SNPs per block (memory ≈ n·block_size·8 bytes on top of K).
    ``ids``: restrict to, and order by, these individual ids (labelled inputs only).

    Returns K as a labelled DataFrame (index and columns = ids) when the input is labelled
    (a DataFrame or a file), otherwise an ndarray; with ``return_info=True`` returns
    ``(K, GRMInfo)``.  Missing calls are mean-imputed and monomorphic / all-missing SNPs
    dropped; the counts are logged at INFO level and are in the GRMInfo.
    """
    if method not in METHODS:
        raise InputError(f"unknown GRM method {method!r}; use one of {', '.join(METHODS)}")
    try:
        block_size = int(block_size)
    except (TypeError, ValueError):
        raise InputError(f"block_size must be a positive integer, not {block_size!r}") from None
    if block_size < 1:
        raise InputError(f"block_size must be a positive integer, not {block_size}")
    src, labelled = _source(genotypes, ids=ids, id_column=id_column)
    try:
        n, p = src.shape
        if n == 0 or p == 0:
            raise InputError(f"genotypes are empty ({n} individuals × {p} SNPs)")
        # Only the upper triangle is accumulated, in place, with BLAS syrk: memory stays at one
        # n×n matrix plus one block (no n×n temporaries).
        K = np.zeros((n, n), dtype=np.float64, order="F")
        used = mono = allmiss = missing = blocks = 0
        denom = 0.0
        what = getattr(src, "what", None) or str(getattr(src, "path", "genotypes"))
        for start in range(0, p, block_size):
            stop = min(p, start + block_size)
            X = src.block(start, stop)
            Z, var, kept, n_missing, n_mono, n_allmiss = _prepare_block(
                X, start, src.ids, src.snps, what)
            missing += n_missing
            mono += n_mono
            allmiss += n_allmiss
            blocks += 1
            if Z.shape[1] == 0:
                continue
            used += Z.shape[1]
            if method == "standardized":
                Z /= np.sqrt(var)
            else:
                denom += float(var.sum())
            Z = np.ascontiguousarray(Z)
            scipy.linalg.blas.dsyrk(1.0, Z.T, beta=1.0, c=K, trans=1, lower=0, overwrite_c=1)
    finally:
        src.close()
    if used == 0:
        raise InputError(
            f"{what}: no informative SNP ({mono} monomorphic, {allmiss} without any call); cannot build a GRM"
        )
    if method == "standardized":
        denom = float(used)
    K /= denom
    _mirror_upper(K)
    info = GRMInfo(method=method, n=n, snps=p, snps_used=used, monomorphic=mono,
                   all_missing=allmiss, missing_calls=missing, blocks=blocks, denominator=denom)
    log.info(info.summary())
    out = K
    if labelled and src.ids is not None:
        labels = pd.Index(src.ids, dtype=object, name="id")
        out = pd.DataFrame(K, index=labels, columns=pd.Index(src.ids, dtype=object), copy=False)
    return (out, info) if return_info else out


def _mirror_upper(K: np.ndarray) -> None:
    """Copy the upper triangle of K onto its lower triangle, in place, tile by tile."""
    for r, c in _upper_tiles(len(K)):
        if r == c:
            tile = K[r, c]
            low = np.tril_indices(len(tile), -1)
            tile[low] = tile.T[low]
        else:
            K[c, r] = K[r, c].T


def _standardized_genotypes(X: np.ndarray):
    """W (n×p') with W W' equal to the standardized GRM of X; also the kept-SNP mask.

    Used by the simulator to draw genetic values with covariance exactly K (a = W β).
    """
    Z, var, kept, _, _, _ = _prepare_block(np.asarray(X, dtype=np.float64), 0)
    if Z.shape[1] == 0:
        raise InputError("no informative SNP: cannot build a GRM")
    return Z / np.sqrt(var) / np.sqrt(Z.shape[1]), kept


# ---------------------------------------------------------------------------------------
# checking a kinship


def check_kinship(K, *, jitter: float | None = None, name: str = "K", ids=None) -> pd.DataFrame:
    """Validate a labelled kinship matrix and return it clean.

    Checks, in order (each failure is one-line :class:`InputError` naming ``name``):

    * K is a pandas DataFrame (ids as index and columns), square and non-empty;
    * no id appears twice among the rows or among the columns;
    * rows and columns carry the same ids; if they are the same set in another order the
      columns are reordered to match the rows;
    * every entry is a finite number (the first bad one is named by row and column id);
    * symmetric: max |K − K'| ≤ 1e-8·max|K| (the worst pair is named); the returned matrix
      is the exact symmetric part (K + K')/2;
    * positive semi-definite: smallest eigenvalue λ ≥ −1e-8·max(diag K), decided by
      :func:`hetvc.psd.psd_certificate` (pivoted Cholesky when K has rank r < q/20, as a GRM
      of far fewer markers than genotypes has: O(q·r²) + O(q²·r); else one Cholesky
      factorisation, O(q³/3)).
      Otherwise, if ``jitter`` is None, an error; if ``jitter`` is a float ≥ 0, K is bent to
      K + (−λ + jitter·mean(diag K))·I, whose smallest eigenvalue is jitter·mean(diag K),
      and a :class:`UserWarning` says so.  (A singular but PSD K, as every GRM of centred
      genotypes is, is accepted unchanged.)
    * if ``ids`` is given, each of them is in K (extra genotypes in K are allowed).

    Labels are converted to strings.  The result has index named ``id``.  Memory: the
    entries are scanned in tiles (no q×q temporaries); the result shares K's data through
    pandas when K needs no change (a float64 frame, exactly symmetric, PSD; with pandas'
    copy-on-write an edit of either frame leaves the other alone), else it holds one new
    matrix.  The result carries a digest of its contents, so :func:`checked_kinship` (used by
    :func:`hetvc.fit`) does not check it again while it is unchanged.
    """
    if not isinstance(K, pd.DataFrame):
        raise InputError(
            f"{name}: a kinship must be a labelled table (pandas DataFrame with ids as index and "
            f"columns), not {type(K).__name__}; wrap it as pd.DataFrame(K, index=ids, columns=ids)"
        )
    r, c = K.shape
    if r != c:
        raise InputError(f"{name} is {r}×{c}, not square: it needs one row and one column per genotype id")
    if r == 0:
        raise InputError(f"{name} is empty")
    rows = _unique_labels(K.index, f"the rows of {name}")
    cols = _unique_labels(K.columns, f"the columns of {name}")
    if not rows.equals(cols):
        only_r = rows.difference(cols, sort=False)
        only_c = cols.difference(rows, sort=False)
        if len(only_r) or len(only_c):
            if len(only_r):
                msg = f"id {only_r[0]!r} labels a row of {name} but no column"
            else:
                msg = f"id {only_c[0]!r} labels a column of {name} but no row"
            raise InputError(f"{msg}: rows and columns must carry the same ids")
        # same set, different order: reorder the columns by label
        K = K.set_axis(cols, axis=1).loc[:, rows]
        cols = rows
    try:
        K = K.astype(np.float64)  # under copy-on-write: no copy for a float64 frame
    except (TypeError, ValueError):
        conv = K.apply(pd.to_numeric, errors="coerce")
        bad = conv.isna().to_numpy() & K.notna().to_numpy()
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{name}[{rows[i]!r}, {cols[j]!r}] is {K.iat[i, j]!r}, not a number: kinship entries must be numeric"
        ) from None
    values = K.to_numpy()  # a (read-only) view of K's data
    nonfinite, scale, worst, (i, j) = _scan(values)
    if nonfinite is not None:
        i, j = nonfinite
        raise InputError(
            f"{name}[{rows[i]!r}, {cols[j]!r}] is {values[i, j]}: kinship entries must be finite numbers "
            f"(fill or drop that genotype)"
        )
    if scale == 0.0:
        raise InputError(f"{name} is all zeros: it carries no relationship information")
    if worst > 1e-8 * scale:
        raise InputError(
            f"{name} is not symmetric: {name}[{rows[i]!r}, {rows[j]!r}] = {values[i, j]:.10g} but "
            f"{name}[{rows[j]!r}, {rows[i]!r}] = {values[j, i]:.10g}; symmetrise it, e.g. (K + K.T)/2"
        )
    if worst == 0:
        values = _row_major(values)
    owned = worst > 0 or not values.flags.c_contiguous
    if owned:  # never modify the caller's matrix: symmetrise a copy
        values = np.array(values, order="C")
        _symmetrize(values)
    diag = np.diag(values).copy()
    if diag.max() <= 0:
        raise InputError(f"{name} has no positive diagonal entry: it is not a relationship matrix")
    tol = 1e-8 * float(diag.max())
    if jitter is not None:
        try:
            jitter = float(jitter)
        except (TypeError, ValueError):
            raise InputError(f"jitter must be a number ≥ 0 or None, not {jitter!r}") from None
        if not np.isfinite(jitter) or jitter < 0:
            raise InputError(f"jitter must be a number ≥ 0 or None, not {jitter!r}")
    cert = psd_certificate(values, tol)
    log.debug("%s: positive semi-definite test by %s", name, cert.method)
    if not cert.psd:
        lam = cert.min_eigenvalue
        if jitter is None:
            raise InputError(
                f"{name} is not positive semi-definite (smallest eigenvalue {lam:.3g}); rebuild it from "
                f"markers or bend it, e.g. pass jitter=0.01 to add a ridge to its diagonal"
            )
        shift = -lam + jitter * float(diag.mean())
        if not owned:
            values, owned = np.array(values, order="C"), True
        values.flat[:: len(values) + 1] += shift
        warnings.warn(
            f"{name} was not positive semi-definite (smallest eigenvalue {lam:.3g}); "
            f"added {shift:.3g} to its diagonal (jitter={jitter:g} × mean diagonal)",
            UserWarning,
            stacklevel=2,
        )
    if ids is not None:
        check_ids(ids, rows, what="the phenotype table", where=name)
    index, columns = rows.rename("id"), pd.Index(rows, dtype=object)
    if owned:  # a matrix of our own
        out = pd.DataFrame(values, index=index, columns=columns, copy=False)
    else:  # K's data, shared through pandas (copy-on-write keeps K and the result apart)
        out = K.set_axis(index, axis=0).set_axis(columns, axis=1)
    out.attrs[_CHECKED] = _fingerprint(values, rows)
    return out


def checked_kinship(K, *, jitter: float | None = None, name: str = "K") -> tuple[np.ndarray, list[str]]:
    """(values, ids) of a valid kinship, checking it only if it is not already checked.

    A frame returned by :func:`check_kinship` or :func:`read_kinship` carries a digest of
    its ids and values (``K.attrs``); when the digest still matches, K is unchanged since its
    check and is used as it is (a SHA-256 of K, about 1.5 GB/s, instead of the check).
    ``values`` is a C-ordered, read-only view of K's data.
    """
    if isinstance(K, pd.DataFrame) and _CHECKED in K.attrs and K.shape[0] == K.shape[1]:
        values = K.to_numpy()
        if values.dtype == np.float64:
            # the digest was taken over the C-ordered matrix: a column-major frame matches it
            # through its transpose only if it is that same (symmetric) matrix
            values = _row_major(values)
            labels = pd.Index([str(x) for x in K.index], dtype=object)
            if (values.flags.c_contiguous and K.attrs[_CHECKED] == _fingerprint(values, labels)
                    and labels.equals(pd.Index([str(x) for x in K.columns], dtype=object))):
                return values, list(labels)
    K = check_kinship(K, jitter=jitter, name=name)
    return _row_major(K.to_numpy()), list(K.index)


def _row_major(values: np.ndarray) -> np.ndarray:
    """A C-ordered view of a *symmetric* matrix stored column-major (pandas' own layout of a
    frame): its transpose, which is the same matrix; else ``values`` itself."""
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        return values.T
    return values


def scale_kinship(K, factor: float, *, name: str = "K") -> pd.DataFrame:
    """factor·K (factor > 0), checked: a positive multiple of a valid kinship is valid, so
    only K itself is checked (and not again if it already was)."""
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"a kinship can only be scaled by a positive number, not {factor!r}") from None
    if not np.isfinite(factor) or factor <= 0:
        raise InputError(f"a kinship can only be scaled by a positive number, not {factor!r}")
    values, ids = checked_kinship(K, name=name)
    labels = pd.Index(ids, dtype=object)
    scaled = values * factor
    out = pd.DataFrame(scaled, index=labels.rename("id"), columns=labels, copy=False)
    out.attrs[_CHECKED] = _fingerprint(scaled, labels)
    return out


_CHECKED = "hetvc.checked"  # key of the digest in DataFrame.attrs


def _fingerprint(values: np.ndarray, labels: pd.Index) -> str:
    """SHA-256 of the shape, the ids (length-prefixed) and the bytes of a C-ordered K."""
    h = hashlib.sha256()
    h.update(np.asarray(values.shape, dtype=np.int64).tobytes())
    encoded = [str(x).encode("utf-8", "surrogatepass") for x in labels]
    h.update(np.asarray([len(e) for e in encoded], dtype=np.int64).tobytes())
    h.update(b"".join(encoded))
    h.update(memoryview(np.ascontiguousarray(values)).cast("B"))
    return h.hexdigest()


def _upper_tiles(n: int, tile: int = 256):
    """(rows, cols) slices of the tiles on and above the diagonal of an n×n matrix.  Pairs of
    tiles A[r, c] and A[c, r]' are compared tile by tile: a transposed read of a small tile
    stays in cache (about 5× faster than whole row chunks)."""
    for s in range(0, n, tile):
        rows = slice(s, min(n, s + tile))
        for u in range(s, n, tile):
            yield rows, slice(u, min(n, u + tile))


def _scan(values: np.ndarray, chunk: int = 1024):
    """The first non-finite entry (or None), max |K|, and the worst asymmetry
    max |K_ij − K_ji| with its (i, j), i < j (upper triangle); no q×q temporaries."""
    n = len(values)
    scale = 0.0
    for s in range(0, n, chunk):
        rows = values[s:s + chunk]
        hi, lo = float(rows.max()), float(rows.min())  # NaN and ±inf propagate
        if not (np.isfinite(hi) and np.isfinite(lo)):
            i, j = np.argwhere(~np.isfinite(rows))[0]
            return (s + int(i), int(j)), scale, 0.0, (0, 0)
        scale = max(scale, hi, -lo)
    worst, where = 0.0, (0, 0)
    for r, c in _upper_tiles(n):
        d = values[r, c] - values[c, r].T
        if max(float(d.max()), -float(d.min())) > worst:
            k = int(np.argmax(np.abs(d)))
            worst, where = float(abs(d.flat[k])), (r.start + k // d.shape[1], c.start + k % d.shape[1])
    return None, scale, worst, where


def _symmetrize(values: np.ndarray) -> None:
    """values ← (values + values')/2 in place, tile by tile."""
    for r, c in _upper_tiles(len(values)):
        upper = (values[r, c] + values[c, r].T) / 2.0
        values[r, c] = upper
        values[c, r] = upper.T


# ---------------------------------------------------------------------------------------
# reading and writing kinships


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

