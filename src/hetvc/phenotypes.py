"""Phenotype tables: reading a CSV/TSV (delimiter detected, optionally gzip) or Parquet file
into a DataFrame, with the notes of what was done on the way.

    from hetvc import read_phenotypes
    data, notes = read_phenotypes("pheno.csv", text_columns=["id", "env"], numeric_columns=["yield"])

A wide table (one column per environment of one trait, as sommer's DT_wheat) becomes a long one
(id, env, trait) with :func:`long_from_wide`.

Ids and environments named in ``text_columns`` are read as strings (``011`` stays ``011``);
trait columns named in ``numeric_columns`` that a ``;``-separated file writes with decimal
commas (``3,25``) are read as numbers.  A column name that appears twice in the header is an
error (pandas would rename the second), as is a file with a single column or without data rows.
"""

from __future__ import annotations

import csv
import gzip
import re
from pathlib import Path

import pandas as pd

from .errors import InputError

__all__ = ["read_phenotypes", "sniff_delimiter", "long_from_wide"]

_DELIMITERS = ",;\t|"


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def sniff_delimiter(path) -> str:
    """The delimiter of a text table: sniffed from its first lines among , ; tab |; the file
    extension (.tsv/.tab → tab) and then the most frequent candidate in the header decide
    when sniffing is unsure."""
    path = Path(path)
    try:
        with _open_text(path) as fh:
            head = fh.read(65536)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; save it as CSV (UTF-8) or Parquet") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from None
    lines = [ln for ln in head.splitlines() if ln.strip()][:50]
    if not lines:
        raise InputError(f"{path} is empty")
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS)
        return dialect.delimiter
    except csv.Error:
        pass
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    counts = {d: lines[0].count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _decimal_commas(frame: pd.DataFrame, columns) -> list[str]:
    """Convert text columns written with decimal commas (3,25) to numbers, in place."""
    fixed = []
    pattern = re.compile(r"^\s*-?\d+(,\d+)?\s*$")
    for c in columns:
        if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c]):
            vals = frame[c].dropna().astype(str)
            vals = vals[vals.str.strip() != ""]
            if len(vals) and vals.str.match(pattern).all() and vals.str.contains(",").any():
                frame[c] = pd.to_numeric(frame[c].astype(str).str.replace(",", ".", regex=False)
                                         .replace({"nan": None, "": None}), errors="coerce")
                fixed.append(c)
    return fixed


def read_phenotypes(path, *, text_columns=(), numeric_columns=(), sep: str | None = None):
    """(frame, notes) from a CSV/TSV (delimiter detected, optionally gzip) or Parquet file;
    ``text_columns`` (ids, environments) are read as strings, so ``011`` stays ``011``;
    ``numeric_columns`` (traits) written with decimal commas in a ``;``-separated file are
    read as numbers, and a note says so.  ``sep`` names the delimiter instead of detecting it
    (:func:`sniff_delimiter`).  Raises :class:`~hetvc.errors.InputError` for a file that is
    missing, not UTF-8, a single column, without data rows or with a repeated column name."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"phenotype file {p} does not exist")
    if p.is_dir():
        raise InputError(f"phenotype file {p} is a folder; give a CSV, TSV or Parquet file")
    notes = []
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(p)
        except Exception as err:
            raise InputError(f"cannot read Parquet file {p}: {err}".splitlines()[0]) from None
        for c in text_columns:
            if c in frame.columns:
                frame[c] = frame[c].map(lambda v: None if pd.isna(v) else str(v))
        _check_header(p, [str(c).strip() for c in frame.columns])
        if len(frame) == 0:
            raise InputError(f"{p} has no data rows")
        return frame, notes
    delim = sep or sniff_delimiter(p)
    try:
        header = pd.read_csv(p, sep=delim, nrows=0, encoding="utf-8-sig").columns
        dtypes = {c: str for c in text_columns if c in header}
        frame = pd.read_csv(p, sep=delim, dtype=dtypes, encoding="utf-8-sig",
                            skipinitialspace=True)
    except UnicodeDecodeError:
        raise InputError(f"{p} is not UTF-8 text; save it as CSV (UTF-8) or Parquet") from None
    except Exception as err:
        raise InputError(f"cannot read {p} as a table (delimiter {delim!r}): {err}".splitlines()[0]) from None
    if len(frame.columns) < 2:
        raise InputError(f"{p} has a single column (delimiter {delim!r}); use --sep to name the delimiter")
    try:  # the header as written (pandas renames a repeated name y1 → y1.1)
        raw = pd.read_csv(p, sep=delim, header=None, nrows=1, dtype=str, encoding="utf-8-sig",
                          skipinitialspace=True, keep_default_na=False).iloc[0]
    except Exception:
        raw = frame.columns
    _check_header(p, [str(c).strip() for c in raw])
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise InputError(f"{p} has a header but no data rows")
    if delim == ";":
        converted = _decimal_commas(frame, numeric_columns)
        if converted:
            notes.append(f"decimal commas read as decimal points in {', '.join(converted)}")
    return frame, notes


def _check_header(path: Path, names: list) -> None:
    """A column name that appears twice (pandas would silently rename the second) is an error."""
    seen = set()
    for k, name in enumerate(names, 1):
        if name and name in seen:
            raise InputError(f"{path}: column {name!r} appears more than once in the header "
                             f"(again as column {k}); rename or drop one")
        seen.add(name)



def long_from_wide(data: pd.DataFrame, id: str, trait: str, env_name: str = "env", columns=None,
                   pattern: str | None = None):
    """(long, note): a wide table with one column per environment holding one trait (a row per
    genotype, as sommer's DT_wheat) as a long one, a record per genotype × environment with
    columns ``id``, ``env_name`` (the column names, as text) and ``trait``; empty cells are
    dropped.  ``columns``: the environment columns (default: every column but ``id``);
    ``pattern``: a column name with ``{}`` where the environment is (``"Flowering.time.at.{}"``
    in a table with a column per trait × site, as sommer's DT_rice): the columns that match,
    each environment named by its part.  The note says what was reshaped, for the report."""
    if not isinstance(data, pd.DataFrame):
        raise InputError("data must be a pandas DataFrame")
    if id not in data.columns:
        raise InputError(f"wide table: id column {id!r} not in the data; available: "
                         f"{', '.join(map(str, data.columns[:12]))} (name it with --id)")
    labels = None
    if pattern is not None:
        if pattern.count("{}") != 1:
            raise InputError(f"wide table: the column pattern {pattern!r} needs one '{{}}' where the environment is")
        regex = re.compile(re.escape(pattern).replace(re.escape("{}"), "(.+)") + "$")
        matched = [(c, regex.match(str(c))) for c in data.columns if c != id]
        columns = [c for c, m in matched if m]
        labels = [m.group(1) for _, m in matched if m]
        if not columns:
            raise InputError(f"wide table: no column matches {pattern!r}; columns: "
                             f"{', '.join(map(str, data.columns[:12]))}")
    envs = [c for c in data.columns if c != id] if columns is None else list(columns)
    missing = [c for c in envs if c not in data.columns]
    if missing:
        raise InputError(f"wide table: column(s) {', '.join(map(repr, missing))} not in the data")
    if not envs:
        raise InputError(f"wide table: no environment columns besides the id column {id!r}")
    for name in (env_name, trait):
        if name in envs or name == id:
            raise InputError(f"wide table: {name!r} names a column of the table already; choose another "
                             "name for the environment or the trait")
    for c in envs:
        col = data[c]
        if not pd.api.types.is_numeric_dtype(col):
            values = pd.to_numeric(col, errors="coerce")
            bad = values.isna() & col.notna() & (col.astype(str).str.strip() != "")
            if bad.any():
                row = int(bad.to_numpy().nonzero()[0][0])
                raise InputError(f"wide table: column {c!r} is not numeric (row {row + 1} holds "
                                 f"{col.iloc[row]!r}); every column but the id {id!r} is read as an "
                                 f"environment holding trait {trait!r}")
    frame = data[[id] + envs].copy()
    frame.columns = [id] + (labels if labels is not None else [str(c) for c in envs])
    long = frame.melt(id_vars=[id], var_name=env_name, value_name=trait)
    long[trait] = pd.to_numeric(long[trait], errors="coerce")
    empty = int(long[trait].isna().sum())
    long = long[long[trait].notna()].reset_index(drop=True)
    shown = ", ".join(map(str, envs[:8])) + (f", ... ({len(envs)} in all)" if len(envs) > 8 else "")
    note = (f"wide table: {len(data)} rows × {len(envs)} environment columns ({shown}) of trait "
            f"{trait!r} read as {len(long)} records ({id}, {env_name}, {trait})"
            + (f"; {empty} empty cell(s) dropped" if empty else ""))
    return long, note
