"""Model comparison by ℓ, AIC, AICc and BIC; likelihood-ratio tests only between nested models.

Genetic structures nest as homogeneous ⊂ unstructured ⊃ heterogeneous ⊃ diagonal (homogeneous
and heterogeneous do not nest: the first has covariance across environments, the second none);
residual structures as homogeneous ⊂ heterogeneous.  Each structure says what it nests in
(:mod:`hetvc.structures`).  Under REML, ℓ is comparable only between
models with the same fixed effects.  The LRT p-value uses χ² with Δk degrees of freedom, which
is conservative when the restriction puts a variance on its boundary: for dropping a random
term with a single variance, the boundary mixture ½χ²₀ + ½χ²₁ halves the p-value
(``lrt_p_boundary``, Self & Liang 1987).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from .errors import InputError
from .structures import structure_class


def _nests(kind: str, small: str, big: str) -> bool:
    return small == big or structure_class(kind, small).nests_in(kind, big)


def nested(small, big) -> bool:
    """True when model ``small`` is a special case of model ``big`` (same data, same X): its
    genetic and residual structures nest in big's, and each of its random terms is one of
    big's with a nesting structure (a term big has and small lacks is a variance set to 0)."""
    big_terms = {r["name"]: r["structure"] for r in big.random}
    terms = all(r["name"] in big_terms and _nests("R", r["structure"], big_terms[r["name"]])
                for r in small.random)
    return (terms and _nests("G", small.genetic, big.genetic) and _nests("E", small.residual, big.residual)
            and small.n_params < big.n_params)


def model_name(fit) -> str:
    """'genetic/residual', with '+term' for each random term beyond the genetic one."""
    return f"{fit.genetic}/{fit.residual}" + "".join(f"+{r['name']}" for r in fit.random)


def compare(*fits, names=None) -> pd.DataFrame:
    """Table of k, logLik, AIC, BIC, AICc, ΔAIC, ΔBIC, ΔAICc (and an LRT against the best nested
    smaller model) for fits of the same data and fixed effects, in the order given.

    AICc = AIC + 2k(k + 1)/(n − k − 1) with n = N − p (as in BIC); NaN when n − k − 1 ≤ 0.
    Prefer AICc and BIC to AIC when k approaches the number of phenotyped genotypes."""
    if len(fits) == 1 and isinstance(fits[0], (list, tuple)):
        fits = tuple(fits[0])
    if len(fits) < 2:
        raise InputError("compare needs at least two fits")
    ref = fits[0]
    for f in fits[1:]:
        if f.n_obs != ref.n_obs or f.x_names != ref.x_names or f.method != ref.method:
            raise InputError("fits differ in data, fixed effects or method; their likelihoods are not comparable")
    names = names or [model_name(f) for f in fits]
    rows = []
    for name, f in zip(names, fits):
        row = dict(model=name, genetic=f.genetic, residual=f.residual, k=f.n_params,
                   logLik=f.loglik, AIC=f.aic, BIC=f.bic, AICc=f.aicc, converged=f.converged,
                   lrt_vs=None, lrt_stat=np.nan, lrt_df=np.nan, lrt_p=np.nan)
        smaller = [(n, g) for n, g in zip(names, fits) if nested(g, f)]
        if smaller:
            n0, g0 = max(smaller, key=lambda t: t[1].n_params)
            stat = max(2.0 * (f.loglik - g0.loglik), 0.0)
            df = f.n_params - g0.n_params
            row.update(lrt_vs=n0, lrt_stat=stat, lrt_df=df, lrt_p=float(stats.chi2.sf(stat, df)))
            if df == 1 and len(f.random) > len(g0.random):
                row["lrt_p_boundary"] = 0.5 * row["lrt_p"]
        rows.append(row)
    out = pd.DataFrame(rows)
    out["dAIC"] = out["AIC"] - out["AIC"].min()
    out["dBIC"] = out["BIC"] - out["BIC"].min()
    out["dAICc"] = out["AICc"] - out["AICc"].min()
    return out
