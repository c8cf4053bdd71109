"""Text of numbers and fits: p-values, standard errors and times as hetvc prints them
(shared by the terminal and report.md), and the terminal summary of a fit (:func:`fit_text`)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .selection import _named

__all__ = ["format_p", "format_se", "fit_text", "shared_notes", "seconds_text"]

P_FLOOR = 1e-16  # p-values below this print as "p < 1e-16" (double precision cannot say more)


def _finite(v) -> bool:
    try:
        return v is not None and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _note(v) -> str:
    return v.strip() if isinstance(v, str) else ""


def _num(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "**no**"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def format_p(v, digits: int = 3, missing: str = "–") -> str:
    """A p-value: below 1e-16 (where double precision ends, and where χ² tails round to 0)
    as ``< 1e-16``, never ``0``; ``missing`` when there is none."""
    if not _finite(v):
        return missing
    v = float(v)
    return "< 1e-16" if v < P_FLOOR else f"{v:.{digits}g}"


def format_se(v, note=None, digits: int = 4) -> str:
    """A standard error; ``NA`` (with the reason, when the table gives one) when it is not
    available."""
    if not _finite(v):
        note = _note(note)
        return f"NA ({note})" if note else "NA"
    return _num(float(v), digits)


def _se_cells(df: pd.DataFrame, se: str = "se", digits: int = 4) -> list[str]:
    notes = df["se_note"] if "se_note" in df.columns else [None] * len(df)
    return [format_se(v, n, digits) for v, n in zip(df[se], notes)]


def _text_table(df: pd.DataFrame, se: str = "se") -> str:
    """A table for the terminal: numbers to 4 significant digits, SEs that are not available
    as NA with the reason."""
    df = df.copy()
    for c in df.columns:
        if c == se:
            continue
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = [f"{v:.4g}" if _finite(v) else "NA" for v in df[c]]
    if se in df.columns:
        df[se] = _se_cells(df, se)
    return df.drop(columns=[c for c in ("se_note",) if c in df.columns]).to_string(index=False)


def shared_notes(fits) -> list[str]:
    """The notes that every one of several fits carries: notes about the data (duplicated
    environments or traits, a single genotype in a cell: :mod:`hetvc.diagnostics`), said once
    with the data's notes and left out of each model's."""
    notes = [list(f.notes) for f in _named(fits).values()]
    if len(notes) < 2:
        return []
    return [n for n in dict.fromkeys(notes[0]) if all(n in other for other in notes[1:])]


def seconds_text(record) -> str:
    """'16.7 s in all; optimisation 15.0 s': the whole fit (when the record has
    ``seconds_in_all``, which the command line adds) and its optimisation."""
    def sec(v):
        return f"{v:.1f} s" if v >= 1 else f"{v:.2f} s"

    total = record.get("seconds_in_all")
    opt = f"optimisation {sec(float(record.get('seconds') or 0.0))}"
    return opt if total is None else f"{sec(float(total))} in all; {opt}"


def _status_text(fit) -> str:
    """:meth:`FitResult.status_line` with its time labelled (:func:`seconds_text`)."""
    return re.sub(r", \d+(?:\.\d+)? s\)", lambda m: f"; {seconds_text(fit.record)})",
                  fit.status_line(), count=1)


def _clipped(title: str, df: pd.DataFrame, csv: str, max_rows: int | None, out) -> list[str]:
    """A titled terminal table of at most ``max_rows`` rows, then where the rest are."""
    lines = ["", title]
    if max_rows is None or len(df) <= max_rows:
        return lines + [_text_table(df)]
    where = (f"see {Path(out) / csv}" if out is not None
             else f"run with --out DIR to get them all in DIR/{csv}")
    more = len(df) - max_rows
    return lines + [_text_table(df.iloc[:max_rows]), f"... {more} more row{'s' * (more > 1)}: {where}"]


def _partition_text(fit) -> pd.DataFrame:
    """:meth:`FitResult.variance_partition` by environment × trait (the terms of each together,
    in the fit's order: G, the random terms, E), without the env column when there is one
    environment."""
    part = fit.variance_partition()
    env = {e: k for k, e in enumerate(fit.envs)}
    trait = {t: k for k, t in enumerate(fit.traits)}
    order = sorted(range(len(part)), key=lambda r: (env.get(part["env"].iat[r], -1),
                                                     trait.get(part["trait"].iat[r], -1), r))
    part = part.iloc[order].reset_index(drop=True)
    return part.drop(columns="env") if len(fit.envs) == 1 else part


def fit_text(fit, *, skip_notes=(), max_rows: int | None = None, out=None) -> str:
    """The terminal summary of a fit: :meth:`FitResult.summary`'s head (model, engine, status
    with its time labelled, ℓ, AIC/BIC, boundary, notes but ``skip_notes``: said already),
    then its tables (with random terms beyond the genetic one, the variance partition after the
    variance components) with SEs that are not available printed as ``NA`` and why; each table cut
    after ``max_rows`` rows with a line saying where the rest are (its CSV in ``out``, or that
    ``--out`` writes it)."""
    skip = {f"  note: {n}" for n in skip_notes}
    head = [ln for ln in fit.summary().split("\n\n", 1)[0].splitlines() if ln not in skip]
    head = [f"  status: {_status_text(fit)}" if ln.startswith("  status: ") else ln for ln in head]
    vc = fit.variance_components()
    vc = vc[[c for c in ("name", "estimate", "se", "se_note") if c in vc.columns]]
    lines = ["\n".join(head)]
    lines += _clipped("Variance components", vc, "variance_components.csv", max_rows, out)
    if getattr(fit, "random", None):
        lines += _clipped("Variance partition (share of the phenotypic variance)",
                          _partition_text(fit), "variance_partition.csv", max_rows, out)
    lines += _clipped("Heritability per environment", fit.heritability(), "heritability.csv", max_rows, out)
    lines += _clipped("Pooled heritability", fit.pooled_heritability(), "heritability.csv", max_rows, out)
    rg = fit.genetic_correlations()
    if len(rg):
        lines += _clipped("Genetic correlations", rg, "genetic_correlations.csv", max_rows, out)
    return "\n".join(lines)
