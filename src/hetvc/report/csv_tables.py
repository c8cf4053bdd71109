"""The CSV tables of a report (:func:`tables`; the files are listed in :mod:`hetvc.report.write`)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .selection import _named, _primary, comparison, factor_analytic, model_name, select

__all__ = ["blups_table", "loadings_table", "rankings_table", "tables", "has_random", "RANDOM_TABLES", "FA_TABLES"]

# tables written only when there are random terms beyond the genetic one
RANDOM_TABLES = ("variance_partition", "random_effects")
# tables written only when the selected model's ΣG is factor-analytic
FA_TABLES = ("loadings",)


def has_random(fit) -> bool:
    """Whether ``fit`` has random terms beyond the genetic one (a fit read from a fit.json
    older than random terms has none)."""
    return bool(getattr(fit, "random", None))


def _observations(fit) -> pd.DataFrame:
    return pd.DataFrame({"id": np.asarray(fit.observed["id"]).astype(str),
                         "env": np.asarray(fit.observed["env"]).astype(str),
                         "trait": np.asarray(fit.observed["trait"]).astype(str)})


def blups_table(fit, model: str | None = None) -> pd.DataFrame:
    """BLUPs of every genotype in K × environment × trait, with PEV and the number of
    observed values of that genotype, environment and trait (0: a prediction)."""
    out = fit.blups()
    out["id"] = out["id"].astype(str)
    out["env"] = out["env"].astype(str)
    counts = _observations(fit).value_counts().rename("n_obs").reset_index()
    out = out.merge(counts, on=["id", "env", "trait"], how="left")
    out["n_obs"] = out["n_obs"].fillna(0).astype(int)
    out.insert(0, "model", model or model_name(fit))
    return out


def loadings_table(fit, model: str | None = None) -> pd.DataFrame:
    """A factor-analytic fit's ΣG = ΛΛ' + Ψ per environment × trait: the rotated loadings f1 …
    fk (:meth:`~hetvc.results.FitResult.loadings`), the share of the genetic variance the
    factors explain together (``explained``), the specific variance ψ and its SE (NaN for a
    Heywood case, ψ fixed at 0)."""
    k = factor_analytic(fit)
    cols = [f"f{j + 1}" for j in range(k)]
    lo = fit.loadings()
    out = lo[["env", "trait"] + cols].copy()
    out["explained"] = fit.factor_shares()["explained"].to_numpy()
    psi = fit.specific_variances()
    out["psi"] = psi["psi"].to_numpy()
    out["psi_se"] = psi["se"].to_numpy()
    out["env"] = out["env"].astype(str)
    out.insert(0, "model", model or model_name(fit))
    return out


def rankings_table(fit, model: str | None = None) -> pd.DataFrame:
    """Genotype rankings by BLUP (:meth:`~hetvc.results.FitResult.rankings`) per environment ×
    trait and across environments (``env = across``: the mean of the BLUPs over environments):
    rank (1 = highest), id, BLUP, reliability 1 − PEV/(σ²_g·K_jj) (K_jj: the fit's kinship
    diagonal), phenotyped."""
    out = fit.rankings()
    out["env"] = out["env"].astype(str)
    out.insert(0, "model", model or model_name(fit))
    return out


def tables(fits, selected: str | None = None) -> dict[str, pd.DataFrame]:
    """Every CSV table, keyed by file stem (see :mod:`hetvc.report.write`).  ``blups``, ``blues``
    and ``fitted`` are left out when several models were fitted and none converged.  With random
    terms beyond the genetic one: ``variance_partition`` (every model, when some model has
    random terms) and ``random_effects`` (the selected model, when it has them).  With a
    factor-analytic selected model: ``loadings`` (:func:`loadings_table`).  ``rankings.csv``
    (:func:`rankings_table`) is written by :func:`~hetvc.report.write.write_report` beside
    them, not listed here."""
    fits = _named(fits)
    selected = select(fits) if selected is None else selected
    primary = _primary(fits, selected)

    def stack(fn):
        parts = [fn(f).assign(model=n) for n, f in fits.items()]
        df = pd.concat(parts, ignore_index=True)
        return df[["model"] + [c for c in df.columns if c != "model"]]

    def h2(f):
        per_env = f.heritability()
        pooled = f.pooled_heritability().assign(env="pooled")
        return pd.concat([per_env, pooled[["env"] + [c for c in pooled.columns if c != "env"]]],
                         ignore_index=True)

    out = {
        "comparison": comparison(fits),
        "variance_components": stack(lambda f: f.variance_components()),
        "heritability": stack(h2),
        "genetic_correlations": stack(lambda f: f.genetic_correlations()),
    }
    if any(has_random(f) for f in fits.values()):
        out["variance_partition"] = stack(lambda f: f.variance_partition())
    if primary is not None:
        best = fits[primary]
        out.update(
            blups=blups_table(best, primary),
            blues=best.blues().assign(model=primary)[["model", "effect", "estimate", "se"]],
            fitted=best.fitted().assign(model=primary),
        )
        if has_random(best):
            re_ = best.random_effects()
            out["random_effects"] = re_.assign(model=primary)[["model"] + list(re_.columns)]
        if factor_analytic(best):
            out["loadings"] = loadings_table(best, primary)
    return out
