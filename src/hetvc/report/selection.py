"""Naming, comparing and selecting models.

A model is named ``"<genetic>/<residual>"`` (:func:`model_name`); functions here take the fits
as a dict name → :class:`~hetvc.results.FitResult`, a list of fits or one fit.

The *selected* model is the one with the lowest AICc among the fits that converged (AICc =
AIC + 2k(k+1)/(n−k−1), n = N − p: an information criterion because ``homogeneous`` and
``heterogeneous`` genetic structures are not nested, and AICc rather than AIC because a
multi-environment model can have nearly as many covariance parameters as there are phenotyped
genotypes, where AIC's penalty is too small; for large n AICc is AIC).  A fit that did not
converge is never selected: its estimates are where the optimiser stopped, not REML
estimates; nor is a fit whose AICc is undefined (n − k − 1 ≤ 0) when there are several.  The
report says which models were excluded and why, and where AIC or BIC prefers another model.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ..comparison import compare

__all__ = ["model_name", "comparison", "select", "excluded", "preferences", "selection_lines",
           "factor_analytic", "factor_analytic_model", "environment_model"]


def model_name(fit) -> str:
    """``"<genetic>/<residual>"``, the name a model has in tables."""
    return f"{fit.genetic}/{fit.residual}"


def _named(fits) -> dict:
    if isinstance(fits, dict):
        return dict(fits)
    if not isinstance(fits, (list, tuple)):
        fits = [fits]
    return {model_name(f): f for f in fits}


def _aicc(f) -> float | None:
    """The fit's AICc when FitResult has it (``fit.aicc``), else None."""
    v = getattr(f, "aicc", None)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def comparison(fits) -> pd.DataFrame:
    """The model comparison (paper Table 2): one row per model with k (number of VCs), ℓ, AIC,
    BIC (AICc when the fits have it), ΔAIC, ΔBIC and an LRT against the largest nested smaller
    model."""
    fits = _named(fits)
    if len(fits) >= 2:
        return compare(*fits.values(), names=list(fits))
    (name, f), = fits.items()
    row = dict(model=name, genetic=f.genetic, residual=f.residual, k=f.n_params,
               logLik=f.loglik, AIC=f.aic, BIC=f.bic, converged=f.converged,
               lrt_vs=None, lrt_stat=np.nan, lrt_df=np.nan, lrt_p=np.nan, dAIC=0.0, dBIC=0.0)
    aicc = _aicc(f)
    if aicc is not None:
        row.update(AICc=aicc, dAICc=0.0)
    return pd.DataFrame([row])


def _status(f) -> str:
    """'converged', or the status of a fit that did not converge with its message."""
    rec = f.record
    status = rec.get("status") or ("converged" if f.converged else "not converged")
    message = rec.get("message") or ""
    return f"{status}: {message}" if message and not f.converged else str(status)


def _aicc_undefined(f) -> str:
    """'' or why a converged fit's AICc is undefined (n − k − 1 ≤ 0, n = N − p)."""
    aicc = _aicc(f)
    if aicc is None or math.isfinite(aicc):
        return ""
    return (f"AICc undefined: {f.n_params} covariance parameters and n = N − p = "
            f"{f.n_obs - f.rank_x} leave n − k − 1 ≤ 0")


def _criterion(f) -> float:
    """The selection criterion of a fit: its AICc (AIC for a fit without one)."""
    aicc = _aicc(f)
    return f.aic if aicc is None else aicc


def select(fits) -> str | None:
    """Name of the model with the lowest AICc among the fits that converged; ``None`` when
    none is selectable.  A fit that did not converge is never selected, nor (among several
    models) one whose AICc is undefined (n − k − 1 ≤ 0); a single converged model is selected
    whatever its AICc (there is nothing to choose between)."""
    fits = _named(fits)
    if len(fits) == 1:
        (name, f), = fits.items()
        return name if f.converged else None
    pool = {n: f for n, f in fits.items() if f.converged and np.isfinite(_criterion(f))}
    if not pool:
        return None
    return min(pool, key=lambda n: _criterion(pool[n]))


def excluded(fits) -> dict[str, str]:
    """The models left out of the selection, each with why: its status and message when it
    did not converge, or that its AICc is undefined (among several models)."""
    fits = _named(fits)
    out = {n: _status(f) for n, f in fits.items() if not f.converged}
    if len(fits) > 1:
        out.update({n: why for n, f in fits.items() if f.converged and (why := _aicc_undefined(f))})
    return out


def preferences(fits, comp: pd.DataFrame | None = None) -> dict[str, str]:
    """The converged model that each criterion prefers: ``{"AICc": ..., "AIC": ..., "BIC": ...}``
    (AICc only when the comparison has that column); empty when no fit converged."""
    fits = _named(fits)
    comp = comparison(fits) if comp is None else comp
    ok = comp[comp["model"].isin([n for n, f in fits.items() if f.converged])]
    out = {}
    for crit in ("AICc", "AIC", "BIC"):
        if crit in ok.columns and len(ok):
            vals = pd.to_numeric(ok[crit], errors="coerce")
            if vals.notna().any():
                out[crit] = str(ok.loc[vals.idxmin(), "model"])
    return out


def selection_lines(fits, comp: pd.DataFrame | None = None, strong=str) -> list[str]:
    """Sentences on the selection: what was selected and by which rule, where AIC or BIC
    disagree with AICc, which models were excluded and why (``strong`` marks model names)."""
    fits = _named(fits)
    selected = select(fits)
    lines = []
    if selected is None and any(f.converged for f in fits.values()):
        lines.append("No model is selected: AICc is undefined for every fit that converged.")
    elif selected is None:
        lines.append(f"No model converged, so none is selected: the estimates of "
                     f"{'every model' if len(fits) > 1 else 'the model'} are where the optimiser "
                     f"stopped, not REML estimates.")
    else:
        lines.append(f"Selected (lowest AICc among converged fits): {strong(selected)}.")
        others = [f"{c} prefers {strong(n)}" for c, n in preferences(fits, comp).items()
                  if c != "AICc" and n != selected]
        if others:
            lines.append(f"AICc selects {strong(selected)}; " + "; ".join(others) + ".")
    excl = excluded(fits)
    if excl:
        lines.append("Excluded from the selection: "
                     + "; ".join(f"{strong(n)} ({why})" for n, why in excl.items()) + ".")
    return lines


def _primary(fits: dict, selected: str | None) -> str | None:
    """The model whose fit.json, BLUPs, BLUEs and fitted values are written: the selected one,
    or a single model whatever its status (nothing to choose between)."""
    if selected is not None:
        return selected
    return next(iter(fits)) if len(fits) == 1 else None


def factor_analytic(fit) -> int:
    """The number of factors k of a factor-analytic genetic structure (``faK``); 0 for any
    other structure."""
    return int(getattr(fit.genetic_structure, "factors", 0) or 0)


def factor_analytic_model(fits, selected: str | None) -> str | None:
    """The factor-analytic model whose latent regression is drawn: the selected model when it
    is factor-analytic, else the converged factor-analytic fit with the lowest AICc; ``None``
    when nothing is selected or no factor-analytic fit converged."""
    fits = _named(fits)
    if selected is None:
        return None
    if factor_analytic(fits[selected]):
        return selected
    pool = {n: f for n, f in fits.items() if factor_analytic(f) and f.converged}
    return min(pool, key=lambda n: _criterion(pool[n])) if pool else None


def environment_model(fits, selected: str | None) -> str | None:
    """The model whose genetic correlations between environments are drawn: the selected model
    when its ΣG has them (``unstructured``, ``faK``), else the first converged model that has
    them; ``None`` when nothing is selected or none has them."""
    fits = _named(fits)
    if selected is None:
        return None
    if fits[selected].genetic_structure.environment_correlations:
        return selected
    return next((n for n, f in fits.items()
                 if f.genetic_structure.environment_correlations and f.converged), None)
