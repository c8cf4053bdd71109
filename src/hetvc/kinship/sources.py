r"""Genotype sources: PLINK ``.bed`` files, CSV dosage tables, arrays and DataFrames.

Genotypes are an n×p table of markers, one row per individual and one column per SNP, in
one of these codings (``coding=``; ``"auto"``, the default, tells them apart, see
:func:`detect_coding`):

* ``"dosage"``: allele dosages 0, 1, 2 (fractional dosages in [0, 2] are accepted);
* ``"-101"``: −1/0/1 (R's ``A.mat`` coding); the dosage is value + 1, so fractional values
  such as −0.5/0.5 become the fractional dosages 0.5/1.5;
* ``"letters"``: nucleotide calls: homozygotes ``A`` or ``AA``, heterozygotes ``AG``,
  ``A/G`` or an IUPAC code (R=A/G, Y=C/T, S=G/C, W=A/T, K=G/T, M=A/C); ``N``, ``0``, ``-``,
  empty or ``NA`` are missing.  The dosage counts the minor allele of each SNP (the allele
  with the lower count among the calls); SNPs with more than two alleles are dropped and
  counted;
* ``"presence"``: 0/1 presence/absence of a dominant marker (DArT, AFLP).  These are not
  dosages: the GRM centres and scales each marker by its own mean and standard deviation
  (variance q(1−q), q the presence frequency), so its diagonal mean is ≈ 1 as for dosages.

Missing calls are NaN (an empty cell or ``NA``).  :func:`read_genotypes` reads

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

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from .ids import _fmt_ids, _unique_labels, check_ids
from .tables import _EXACT_FLOATS, _csv_sep

log = logging.getLogger("hetvc.kinship")

__all__ = ["read_genotypes", "decode_markers", "detect_coding", "MarkerCoding", "CODINGS"]

CODINGS = ("auto", "dosage", "-101", "letters", "presence")

_BASES = "ACGT"
_IUPAC = {"R": "AG", "Y": "CT", "S": "CG", "W": "AT", "K": "GT", "M": "AC"}
_MISSING_CALLS = {"", "N", "NN", "0", "00", "-", "--", "NA", "NAN", ".", "?", "N/N", "0/0", "./.", "-/-"}


@dataclass
class MarkerCoding:
    """How a marker table was coded and what decoding it did."""

    coding: str = "dosage"       #: dosage, -101, letters or presence
    detected: bool = False       #: True when coding="auto" chose it
    multiallelic: int = 0        #: letters: SNPs with more than two alleles, dropped
    fractional: int = 0          #: -101: non-integer values kept as fractional dosages
    note: str = ""

    def describe(self) -> str:
        how = "detected" if self.detected else "given"
        text = f"{self.coding} coding ({how})"
        if self.coding == "presence":
            text += ("; dominant presence/absence markers, each centred and scaled by its own mean and "
                     "SD (not dosages)")
        if self.multiallelic:
            text += f"; {self.multiallelic} SNPs with more than two alleles dropped"
        if self.fractional:
            text += f"; {self.fractional} fractional values kept as fractional dosages"
        if self.note:
            text += f"; {self.note}"
        return text


def _check_coding(coding: str) -> str:
    if coding not in CODINGS:
        raise InputError(f"unknown marker coding {coding!r}; use one of {', '.join(CODINGS)}")
    return coding


def _call_alleles(call: str):
    """(a1, a2) allele indices (0..3 for A, C, G, T) of a nucleotide call; (4, 4) if missing;
    None if it is not a call."""
    c = call.strip().upper()
    if c in _MISSING_CALLS:
        return 4, 4
    c = c.replace("/", "").replace("|", "")
    if len(c) == 1:
        if c in _BASES:
            i = _BASES.index(c)
            return i, i
        if c in _IUPAC:
            a, b = _IUPAC[c]
            return _BASES.index(a), _BASES.index(b)
        return None
    if len(c) == 2:
        if c[0] in _BASES and c[1] in _BASES:
            return _BASES.index(c[0]), _BASES.index(c[1])
        if set(c) <= set(_BASES + "N-0"):   # a half call such as A/N: missing
            return 4, 4
    return None


def _is_number(text) -> bool:
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def detect_coding(values) -> str:
    """The coding ``coding="auto"`` picks for an n×p marker table (array or DataFrame).

    Text other than numbers (and the missing-call ``0``) → ``letters``; numbers in {0,1,2}
    (or in [0, 2]) with some value above 1 → ``dosage``; numbers in [−1, 1] with some
    negative value → ``-101``; only 0 and 1 → ``presence``.  Anything else is read as
    dosages, whose range check then names the first bad cell.
    """
    X = np.asarray(values.to_numpy() if isinstance(values, pd.DataFrame) else values)
    if X.dtype.kind in "OUS":
        flat = pd.unique(pd.Series(X.ravel()).dropna())
        texts = [t for t in flat if not (isinstance(t, str) and t.strip().upper() in _MISSING_CALLS)]
        if any(not _is_number(t) for t in texts) and not any(_is_number(t) and float(t) != 0 for t in texts):
            return "letters"
        try:
            X = X.astype(np.float64)
        except (TypeError, ValueError):
            return "dosage"      # mixed numbers and text: the dosage reader names the bad cell
    X = np.asarray(X, dtype=np.float64)
    obs = X[~np.isnan(X)]
    if obs.size == 0:
        return "dosage"
    lo, hi = float(obs.min()), float(obs.max())
    if lo < 0:
        return "-101" if lo >= -1 and hi <= 1 else "dosage"
    if hi <= 1 and np.all((obs == 0) | (obs == 1)):
        return "presence"
    return "dosage"


def _letters_to_dosages(X: np.ndarray, ids, snps, what):
    """Minor-allele counts (float, NaN missing) of a letters table; also the kept columns
    (SNPs with at most two alleles) and the number dropped."""
    n, p = X.shape
    series = pd.Series(X.ravel(order="F"))
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    table = np.empty((len(uniques) + 1, 2), dtype=np.int8)
    table[-1] = 4                                  # NaN (code -1 indexes the last row)
    for k, u in enumerate(uniques):
        pair = _call_alleles(str(u))
        if pair is None:
            cell = int(np.flatnonzero(codes == k)[0])
            j, c = cell % n, cell // n
            who = repr(ids[j]) if ids is not None else f"row {j}"
            snp = repr(snps[c]) if snps is not None else f"column {c}"
            raise InputError(
                f"{what}: SNP {snp} of id {who} is {u!r}, not a nucleotide call; use A, C, G, T "
                f"(AA, A/G, AG or an IUPAC code R, Y, S, W, K, M for heterozygotes) and N, 0, - or "
                f"empty for missing"
            )
        table[k] = pair
    pairs = table[codes].reshape(p, n, 2)          # SNP-major
    a1, a2 = pairs[..., 0], pairs[..., 1]
    counts = np.stack([(a1 == b).sum(axis=1) + (a2 == b).sum(axis=1) for b in range(4)], axis=1)
    present = counts > 0
    multi = present.sum(axis=1) > 2
    # minor allele: the present allele with the lower count (any allele if monomorphic)
    masked = np.where(present, counts, np.iinfo(np.int64).max)
    minor = masked.argmin(axis=1)
    dos = ((a1 == minor[:, None]).astype(np.float64) + (a2 == minor[:, None]))
    dos[a1 == 4] = np.nan
    keep = ~multi
    return np.ascontiguousarray(dos[keep].T), keep, int(multi.sum())


def decode_markers(values, coding: str = "auto", *, ids=None, snps=None, what="genotypes"):
    """Decode an n×p marker table into dosages.

    Returns ``(X, keep, MarkerCoding)``: X the float n×p' table (NaN missing; 0..2 for
    dosage, -101 and letters; 0/1 for presence), ``keep`` a boolean mask of the input columns
    kept (letters drop SNPs with more than two alleles), and what was done.
    """
    _check_coding(coding)
    X = np.asarray(values.to_numpy() if isinstance(values, pd.DataFrame) else values)
    detected = coding == "auto"
    if detected:
        coding = detect_coding(X)
    info = MarkerCoding(coding=coding, detected=detected)
    p = X.shape[1]
    if coding == "letters":
        if X.dtype.kind not in "OUS":          # numbers read as calls: only 0 (missing) is one
            Xf = X.astype(np.float64)
            X = np.full(Xf.shape, None, dtype=object)
            seen = ~np.isnan(Xf)
            X[seen] = [f"{v:g}" for v in Xf[seen]]
        out, keep, info.multiallelic = _letters_to_dosages(X.astype(object), ids, snps, what)
        if info.multiallelic:
            log.info("%s: %d SNPs with more than two alleles dropped", what, info.multiallelic)
        return out, keep, info
    keep = np.ones(p, dtype=bool)
    try:
        X = X.astype(np.float64, copy=False)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what}: non-numeric entries ({err}); give coding='letters' for nucleotide calls "
                         f"or numbers for dosage, -101 or presence codings") from err
    if coding == "dosage":
        return X, keep, info
    lo, hi = (-1.0, 1.0) if coding == "-101" else (0.0, 1.0)
    obs = ~np.isnan(X)
    bad = obs & ((X < lo) | (X > hi))
    if bad.any():
        j, k = np.argwhere(bad)[0]
        who = repr(ids[j]) if ids is not None else f"row {j}"
        snp = repr(snps[k]) if snps is not None else f"column {k}"
        raise InputError(f"{what}: genotype of {who} at SNP {snp} is {X[j, k]:g}; a {coding} coding "
                         f"must lie in [{lo:g}, {hi:g}] (NaN for missing)")
    if coding == "-101":
        info.fractional = int((obs & (X != np.round(X))).sum())
        return X + 1.0, keep, info
    if detected:
        info.note = ("only 0/1 values, read as presence/absence; give coding='dosage' if they are "
                     "dosages of a population without homozygous minor alleles")
    return X, keep, info


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
                   dtype="float64", coding: str = "auto") -> pd.DataFrame:
    """Read a genotype table: PLINK ``.bed`` (path or prefix) or a CSV marker table.

    Returns an n×p DataFrame of dosages (NaN = missing), index = individual ids (strings,
    named ``id``), columns = SNP ids.  ``ids`` selects and orders individuals by label; an id
    absent from the file is an :class:`InputError` naming the file.  ``id_column`` names the
    id column of a CSV (default: ``id`` if present, else the first column).  ``coding``
    (``auto``, ``dosage``, ``-101``, ``letters``, ``presence``; see the module docstring) says
    how a CSV is coded; -1/0/1 and letters are turned into dosages (letters: SNPs with more
    than two alleles dropped), presence/absence markers stay 0/1.  The coding used is in
    ``frame.attrs["coding"]`` (a :class:`MarkerCoding`), which :func:`~hetvc.kinship.grm`
    honours.

    For very large PLINK files prefer ``grm(path)``, which streams SNP blocks from disk.
    """
    _check_coding(coding)
    p = Path(path)
    bed = _is_bed(p)
    if bed is not None:
        src = _bed_source(bed, coding, ids)
        try:
            values = src.block(0, src.shape[1]).astype(dtype)
        finally:
            src.close()
        frame = pd.DataFrame(values, index=src.ids.rename("id"), columns=src.snps)
        frame.attrs["coding"] = MarkerCoding("dosage")
        return frame
    if not p.exists():
        raise InputError(f"genotype file {p} does not exist (nor {p}.bed); give a .bed path or prefix, or a .csv")
    sep = _csv_sep(p)
    if sep is None:
        raise InputError(
            f"cannot tell the format of {p}: give a PLINK .bed file (or its prefix) or a .csv/.tsv dosage table"
        )
    frame, info = _read_marker_csv(p, sep, id_column, coding)
    if ids is not None:
        check_ids(ids, frame.index, what="the requested ids", where=str(p))
        frame = frame.loc[[str(i) for i in ids]]
    frame = frame.astype(dtype)
    frame.attrs["coding"] = info
    return frame


def _read_marker_csv(p: Path, sep: str, id_column: str | None, coding: str):
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
    snps = pd.Index([str(c) for c in frame.columns], dtype=object)
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    values = None
    if text and coding in ("auto", "letters"):
        try:
            raw = pd.read_csv(p, sep=sep, dtype=str)
        except Exception as err:
            raise InputError(f"cannot read genotype table {p}: {err}".replace("\n", " ")) from err
        raw = raw.drop(columns=[id_column]).to_numpy(dtype=object)
        if coding == "letters" or detect_coding(raw) == "letters":
            values = raw
            coding_used = coding
    if values is None:
        for col in text:
            conv = pd.to_numeric(frame[col], errors="coerce")
            bad = conv.isna() & frame[col].notna()
            row = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"genotype table {p}: SNP {col!r} of id {index[row]!r} is {frame[col].iloc[row]!r}, "
                f"not a dosage or a nucleotide call; use 0/1/2 (or a number in [0, 2]), -1/0/1, 0/1 "
                f"presence or A/C/G/T letters, and leave missing calls empty"
            )
        values = frame.to_numpy(dtype=np.float64)
        coding_used = coding
    X, keep, info = decode_markers(values, coding_used, ids=index, snps=snps, what=f"genotype table {p}")
    return pd.DataFrame(X, index=index, columns=snps[keep]), info


def _bed_source(bed, coding: str, ids) -> "_BedSource":
    """A PLINK .bed file opened as a block source: it holds dosages, so any coding but
    auto/dosage is refused."""
    if coding not in ("auto", "dosage"):
        raise InputError(f"{bed}: a PLINK .bed file holds dosages; coding={coding!r} is for CSV tables")
    return _BedSource(bed, ids=ids)


def _source(genotypes, ids=None, id_column=None, coding: str = "auto"):
    """Wrap any accepted genotype input as a block source (with a ``coding`` attribute)."""
    _check_coding(coding)
    if isinstance(genotypes, (str, os.PathLike)):
        p = Path(genotypes)
        bed = _is_bed(p)
        if bed is not None:
            src = _bed_source(bed, coding, ids)
            src.coding = MarkerCoding("dosage", detected=coding == "auto")
            return src, True
        frame = read_genotypes(p, id_column=id_column, ids=ids, coding=coding)
        src = _ArraySource(frame.to_numpy(), frame.index, frame.columns, what=str(p))
        src.coding = frame.attrs["coding"]
        return src, True
    if isinstance(genotypes, pd.DataFrame):
        idx = _unique_labels(genotypes.index, "the genotype table's index")
        frame = genotypes
        if ids is not None:
            check_ids(ids, idx, what="the requested ids", where="the genotype table")
            frame = genotypes.set_axis(idx, axis=0).loc[[str(i) for i in ids]]
            idx = frame.index
        snps = pd.Index([str(c) for c in frame.columns], dtype=object)
        labels = pd.Index(idx, dtype=object).rename("id")
        done = genotypes.attrs.get("coding")
        if coding == "auto" and isinstance(done, MarkerCoding):   # decoded by read_genotypes
            try:
                values = frame.to_numpy(dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise InputError(f"genotype table has non-numeric entries ({err})") from err
            keep, info = np.ones(values.shape[1], dtype=bool), done
        else:
            values, keep, info = decode_markers(frame, coding, ids=labels, snps=snps, what="genotype table")
        src = _ArraySource(values, labels, snps[keep])
        src.coding = info
        return src, True
    values = np.asarray(genotypes)
    if values.ndim != 2:
        raise InputError(f"genotypes must be a 2-D individuals × SNPs array, got {values.ndim} dimension(s)")
    if ids is not None:
        raise InputError("ids= selects individuals by label; it needs a labelled genotype table or a file")
    values, keep, info = decode_markers(values, coding)
    src = _ArraySource(values)
    src.coding = info
    return src, False
