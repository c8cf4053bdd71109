"""Fixed effects given as a formula (``"~ set_env"``, ``"~ x + z"``): a slope per trait on
record-level covariates, besides the mean per trait × environment that is always in.

    from hetvc import resolve_fixed
    data, formula, notes = resolve_fixed(data, "~ set_env", env="env")
    fit = hetvc.fit(data, K, traits, env="env", fixed=formula)

:func:`resolve_fixed` drops the covariate columns that are aliased with the environment means
or with earlier columns (a factor nested in environments), the way R's lm() does, and
rewrites the formula to name the kept columns; :func:`hetvc.fit` instead refuses a design
that is not of full rank.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["fixed_formula", "covariate_columns", "resolve_fixed", "as_factors", "whole_number_notes"]

# a numeric column used as a slope that looks like a factor coded as numbers: at least 3 and at
# most FEW_LEVELS distinct whole numbers, and fewer than half as many as records
FEW_LEVELS = 50


def fixed_formula(fixed: str | None) -> str | None:
    """The formula ``fixed`` as formulaic reads it (``"x + z"`` → ``"~ x + z"``), or None when
    it names no covariate (None, blank, ``~1``)."""
    if fixed is None or not str(fixed).strip() or str(fixed).strip() in ("~1", "~ 1"):
        return None
    formula = str(fixed).strip()
    return formula if formula.startswith("~") else "~ " + formula


def covariate_columns(data: pd.DataFrame, fixed: str | None) -> pd.DataFrame:
    """The record-level covariates of the formula ``fixed`` (no intercept; none when it names
    none, see :func:`fixed_formula`): formulaic's model matrix with an intercept, so that a
    factor is coded against its first level, less the intercept column; an InputError in one
    line when formulaic cannot build it (a column that is not in ``data``, a missing value)."""
    formula = fixed_formula(fixed)
    if formula is None:
        return pd.DataFrame(index=data.index)
    from formulaic import model_matrix

    try:
        mm = model_matrix(formula + " + 1", data, na_action="raise")
    except Exception as err:  # formulaic raises many types; report them as one line
        raise InputError(f"cannot build fixed effects from {fixed!r}: {err}".splitlines()[0]) from None
    return mm.drop(columns=[c for c in mm.columns if c == "Intercept"])


def as_factors(data: pd.DataFrame, factors) -> pd.DataFrame:
    """A copy of ``data`` with the columns ``factors`` (names, or one comma-separated string)
    made categorical, so that a fixed formula fits a level effect for each of their values
    instead of a slope (as ``C(col)`` does); levels are the values in sorted order (numbers
    numerically), the first being the reference."""
    if factors is None:
        return data
    names = [f.strip() for f in factors.split(",")] if isinstance(factors, str) else [str(f).strip() for f in factors]
    names = [n for n in names if n]
    if not names:
        return data
    missing = [n for n in names if n not in data.columns]
    if missing:
        raise InputError(f"factors: column(s) {', '.join(map(repr, missing))} not in the data; "
                         f"available: {', '.join(map(str, data.columns[:12]))}")
    data = data.copy()
    for n in names:
        col = data[n]
        if not isinstance(col.dtype, pd.CategoricalDtype):
            levels = col.dropna().unique()
            try:
                levels = sorted(levels)
            except TypeError:
                levels = sorted(levels, key=str)
            data[n] = pd.Categorical(col, categories=levels)
    return data


def _slope_columns(fixed: str, columns) -> list[str]:
    """Data columns the formula names outside ``C(...)``, i.e. fitted as they are."""
    text = str(fixed)
    out = []
    for c in columns:
        name = str(c)
        pattern = r"(?<![\w.`])" + re.escape(name) + r"(?![\w.`])"
        quoted = "`" + name + "`"
        spans = [m.start() for m in re.finditer(pattern, text)]
        spans += [m.start() + 1 for m in re.finditer(re.escape(quoted), text)]
        if any(not re.search(r"C\(\s*`?$", text[:k]) for k in spans):
            out.append(name)
    return out


def whole_number_notes(data: pd.DataFrame, fixed: str | None) -> list[str]:
    """A note for each numeric column the formula fits as a slope although it holds few distinct
    whole numbers (a factor coded as numbers, such as a row or column index)."""
    formula = fixed_formula(fixed)
    if formula is None:
        return []
    notes = []
    for name in _slope_columns(formula, data.columns):
        col = data[name]
        if isinstance(col.dtype, pd.CategoricalDtype) or not pd.api.types.is_numeric_dtype(col) \
                or pd.api.types.is_bool_dtype(col):
            continue
        values = pd.to_numeric(col, errors="coerce").dropna().to_numpy(dtype=float)
        if len(values) == 0 or not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
            continue
        n = len(np.unique(values))
        if 3 <= n <= FEW_LEVELS and n < len(values) / 2:
            notes.append(f"column {name!r} holds {n} distinct whole numbers and is fitted as a slope; "
                         f"if it is a factor write C({name}) or --factors {name}")
    return notes


def resolve_fixed(data: pd.DataFrame, fixed: str | None, env: str | None, factors=None):
    """(data, formula, notes): the columns ``factors`` are made categorical first
    (:func:`as_factors`: a level effect per value instead of a slope, as ``C(col)``); covariate
    columns aliased with the environment means (a factor nested in environments such as
    ``set_env``) or with earlier columns are dropped, the way R's lm() does, and the formula is
    rewritten to name the kept columns.  A numeric column with few distinct whole numbers fitted
    as a slope gets a note (:func:`whole_number_notes`)."""
    formula = fixed_formula(fixed)
    data = as_factors(data, factors)
    if formula is None:
        return data, None, []
    hints = whole_number_notes(data, formula)
    data, formula, notes = _drop_aliased(data, formula, env)
    return data, formula, hints + notes


def _drop_aliased(data: pd.DataFrame, fixed: str, env: str | None):
    formula = fixed
    try:
        mm = covariate_columns(data, fixed)
    except InputError:
        return data, formula, []  # hetvc.fit reports the error in one line
    if mm.shape[1] == 0:
        return data, formula, []
    if env is not None and env in data.columns:
        base = pd.get_dummies(data[env].astype(str)).to_numpy(dtype=float)
    else:
        base = np.ones((len(data), 1))
    X = mm.to_numpy(dtype=float)
    kept, dropped = [], []
    basis = np.linalg.qr(base)[0]
    for k, name in enumerate(mm.columns):
        col = X[:, k]
        norm = np.linalg.norm(col)
        res = col - basis @ (basis.T @ col)
        if norm == 0 or np.linalg.norm(res) <= 1e-9 * norm * np.sqrt(len(col)):
            dropped.append(str(name))
            continue
        basis = np.column_stack([basis, res / np.linalg.norm(res)])
        kept.append(str(name))
    if not dropped:
        return data, formula, []
    if not kept:
        return data, None, [f"fixed effects {formula!r}: every column is aliased with the environment "
                            f"means ({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}); dropped"]
    if any("`" in n for n in kept):
        return data, formula, []
    data = data.copy()
    for name in kept:
        data[name] = mm[name].to_numpy(dtype=float)
    new = "~ " + " + ".join(f"`{n}`" for n in kept)
    shown = ", ".join(dropped[:4]) + (f", ... ({len(dropped)} in all)" if len(dropped) > 4 else "")
    note = (f"fixed effects {formula!r}: {len(dropped)} column(s) aliased with the environment means "
            f"or earlier columns were dropped ({shown}); {len(kept)} kept")
    return data, new, [note]
