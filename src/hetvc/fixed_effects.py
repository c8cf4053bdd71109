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

import numpy as np
import pandas as pd

from .errors import InputError

__all__ = ["fixed_formula", "covariate_columns", "resolve_fixed"]


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


def resolve_fixed(data: pd.DataFrame, fixed: str | None, env: str | None):
    """(data, formula, notes): covariate columns aliased with the environment means (a factor
    nested in environments such as ``set_env``) or with earlier columns are dropped, the way R's
    lm() does, and the formula is rewritten to name the kept columns."""
    formula = fixed_formula(fixed)
    if formula is None:
        return data, None, []
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
