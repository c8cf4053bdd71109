"""Breeding summaries of a fit: entry-mean (broad-sense) heritability and genotype rankings.

Plot-level h² (:meth:`~hetvc.results.FitResult.heritability`) is the share of the variance of
a *single record* that is genetic.  Breeders usually also want the *entry-mean* heritability:
how well the genotype means (here the BLUPs) separate the genotypes, which grows with the
replication behind them.  This module gives both the classical balanced-design formula and the
generalised form from the prediction error variances (PEVs) of the BLUPs, plus rankings of the
genotypes by their BLUPs with their reliabilities.

Notation: σ²_g = ΣG[(l,i),(l,i)] the genetic variance of trait i in environment l *per unit of
K*; the prior variance of genotype j's genetic value is σ²_g·K_jj.  A :class:`FitResult` does
not store K, so functions taking ``kinship`` use its diagonal when it is given (a square
DataFrame indexed by id, a Series by id, or an array in ``fit.ids`` order) and K_jj = 1
otherwise (exact for a K scaled to unit diagonal, e.g. a pedigree of non-inbred individuals;
for a GRM, mean K_jj is usually close to 1 + F̄) — the ``method``/``note`` columns say which.

Formulas
--------
* Classical (balanced: e environments, r replicates per environment)::

      H² = σ²_g / (σ²_g + σ²_ge/e + σ²_e/(r·e))

* Cullis, Smith & Coombes (2006), generalised::

      H²_C = 1 − v̄_BLUP / (2 σ²_g)

  v̄_BLUP the mean PEV of the pairwise differences of the genotype BLUPs.  The PEV covariances
  are not kept by a fit, so this module uses the common approximation (PEV covariances taken
  as 0, so v̄ ≈ 2·mean PEV)::

      H² ≈ 1 − mean_j(PEV_j) / (σ²_g · mean_j K_jj)

  over the genotypes phenotyped for the trait (in that environment, or in any for "across").
* Reliability of a BLUP: r²_j = 1 − PEV_j / (σ²_g · K_jj).
* Across environments, the genotype's mean over the L environments of its BLUPs:
  σ²_mean = (1/L²) Σ_l Σ_l' ΣG[(l,i),(l',i)].  Its PEV needs the PEV covariances between
  environments, which a fit does not keep:

  - a genetic structure shared by the environments (``homogeneous``): one genetic value, the
    mean is that value, its PEV is known — exact;
  - no genetic covariance between environments (``heterogeneous``, ``diagonal``, or any fit
    whose between-environment ΣG blocks are 0): PEV(mean) ≈ (1/L²) Σ_l PEV_l, ignoring the PEV
    covariances (0 when the environments share no fixed or random effect; small otherwise);
  - genetic covariances between environments (``unstructured``, factor-analytic, …): the PEV
    covariances matter and are unknown — the across-environment H² and reliabilities are NA.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = ["classical_entry_mean_h2", "cullis_h2", "cullis_h2_approx", "reliability",
           "kinship_diagonal", "entry_mean_heritability", "rankings", "ACROSS"]

ACROSS = "across"  # the env label of the across-environment rows

_KINSHIP_NOTE_GIVEN = "K_jj from the kinship given"
_KINSHIP_NOTE_FIT = "K_jj from the fit's kinship (as scaled for the fit)"
_KINSHIP_NOTE_ONE = "K_jj = 1 assumed (K not stored in the fit)"


def classical_entry_mean_h2(var_g, var_ge, var_e, n_env, n_rep):
    """Entry-mean heritability of a balanced trial: σ²_g / (σ²_g + σ²_ge/e + σ²_e/(r·e)),
    e = ``n_env`` environments, r = ``n_rep`` replicates per environment (arrays broadcast)."""
    var_g, var_ge, var_e = (np.asarray(v, dtype=float) for v in (var_g, var_ge, var_e))
    n_env, n_rep = np.asarray(n_env, dtype=float), np.asarray(n_rep, dtype=float)
    if np.any(n_env <= 0) or np.any(n_rep <= 0):
        raise ValueError("n_env and n_rep must be positive")
    out = var_g / (var_g + var_ge / n_env + var_e / (n_rep * n_env))
    return float(out) if out.ndim == 0 else out


def cullis_h2(vbar_diff, var_g):
    """Cullis, Smith & Coombes (2006): H²_C = 1 − v̄/(2σ²_g), v̄ the mean PEV of the pairwise
    differences between genotype BLUPs (σ²_g the prior variance of a genetic value)."""
    return 1.0 - float(vbar_diff) / (2.0 * float(var_g))


def cullis_h2_approx(pev, var_g, kdiag=None) -> float:
    """H² ≈ 1 − mean(PEV)/(σ²_g·mean K_jj): Cullis' H² with the PEV covariances taken as 0
    (v̄ ≈ 2·mean PEV).  ``kdiag``: K_jj of the same genotypes (1 when None).  0 when σ²_g ≤ 0;
    NaN without genotypes or PEVs; clipped to [0, 1] (rounding)."""
    pev = np.asarray(pev, dtype=float)
    if pev.size == 0 or not np.all(np.isfinite(pev)):
        return float("nan")
    if var_g <= 0:
        return 0.0
    k = 1.0 if kdiag is None else float(np.mean(kdiag))
    return float(np.clip(1.0 - pev.mean() / (var_g * k), 0.0, 1.0))


def reliability(pev, var_g, kdiag=1.0):
    """r² = 1 − PEV/(σ²_g·K_jj) (NaN where σ²_g·K_jj ≤ 0 or PEV is missing)."""
    prior = np.asarray(var_g, dtype=float) * np.asarray(kdiag, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = 1.0 - np.asarray(pev, dtype=float) / prior
    return np.where(prior > 0, r, np.nan)


def kinship_diagonal(fit, kinship=None) -> tuple[np.ndarray, str]:
    """(K_jj in ``fit.ids`` order, a note saying where it comes from).  ``kinship``: a square
    DataFrame indexed by id, a Series by id, an array in ``fit.ids`` order, or None: the
    diagonal the fit kept (``FitResult.kinship_diagonal``), else K_jj = 1 (a fit.json from
    before the fit kept it)."""
    q = len(fit.ids)
    if kinship is None and getattr(fit, "kinship_diagonal", None) is not None:
        return np.asarray(fit.kinship_diagonal, dtype=float), _KINSHIP_NOTE_FIT
    if kinship is None:
        return np.ones(q), _KINSHIP_NOTE_ONE
    if isinstance(kinship, pd.DataFrame):
        d = pd.Series(np.diag(kinship.to_numpy(dtype=float)), index=kinship.index.astype(str))
    elif isinstance(kinship, pd.Series):
        d = kinship.astype(float)
        d.index = d.index.astype(str)
    else:
        arr = np.asarray(kinship, dtype=float)
        arr = np.diag(arr) if arr.ndim == 2 else arr
        if arr.shape != (q,):
            raise ValueError(f"kinship diagonal has {arr.shape} values; the fit has {q} genotypes")
        return arr, _KINSHIP_NOTE_GIVEN
    ids = [str(i) for i in fit.ids]
    missing = [i for i in ids if i not in d.index]
    if missing:
        raise ValueError(f"kinship lacks {len(missing)} genotype(s) of the fit, e.g. {missing[:3]}")
    return d.loc[ids].to_numpy(), _KINSHIP_NOTE_GIVEN


def _phenotyped(fit) -> pd.DataFrame:
    """(id, env, trait) with at least one observed value (ids and envs as str)."""
    obs = pd.DataFrame({"id": np.asarray(fit.observed["id"]).astype(str),
                        "env": np.asarray(fit.observed["env"]).astype(str),
                        "trait": np.asarray(fit.observed["trait"]).astype(str)})
    return obs.drop_duplicates()


def _across_kind(fit) -> str:
    """'shared' (one genetic value in every environment), 'independent' (no genetic covariance
    between environments) or 'correlated'."""
    if not fit.genetic_structure.per_environment:
        return "shared"
    G = fit.full_covariances()[0]
    L, m = len(fit.envs), len(fit.traits)
    blocks = G.reshape(L, m, L, m)
    off = blocks.copy()
    off[np.arange(L), :, np.arange(L), :] = 0.0
    scale = np.abs(np.diag(G)).max() if G.size else 0.0
    return "independent" if np.abs(off).max(initial=0.0) <= 1e-12 * max(scale, 1e-300) else "correlated"


_ACROSS_TEXT = {
    "shared": "one genetic value in every environment (exact)",
    "independent": "PEV(mean) ≈ mean over environments of PEV / L, PEV covariances ignored",
    "correlated": "NA: genetic covariances between environments; PEV covariances not kept",
}


def _genetic_table(fit, kdiag) -> pd.DataFrame:
    """fit.blups() (id, env, trait as str) with var_g (σ²_g of the cell), kjj, phenotyped."""
    b = fit.blups()
    b["id"] = b["id"].astype(str)
    b["env"] = b["env"].astype(str)
    b["trait"] = b["trait"].astype(str)
    if "pev" not in b.columns:
        b["pev"] = np.nan
    L, m = len(fit.envs), len(fit.traits)
    vg = np.diag(fit.full_covariances()[0]).reshape(L, m)
    env_pos = {str(e): l for l, e in enumerate(fit.envs)}
    trait_pos = {str(t): i for i, t in enumerate(fit.traits)}
    b["var_g"] = vg[b["env"].map(env_pos).to_numpy(), b["trait"].map(trait_pos).to_numpy()]
    b["kjj"] = np.repeat(np.asarray(kdiag, dtype=float), L * m)  # blups(): id-major
    ph = _phenotyped(fit).assign(phenotyped=True)
    b = b.merge(ph, on=["id", "env", "trait"], how="left")
    b["phenotyped"] = b["phenotyped"].fillna(False).astype(bool)
    return b


def _across_variance(fit) -> np.ndarray:
    """σ²_mean per trait: (1/L²) Σ_l Σ_l' ΣG[(l,i),(l',i)] (per unit of K)."""
    G = fit.full_covariances()[0]
    L, m = len(fit.envs), len(fit.traits)
    blocks = G.reshape(L, m, L, m)
    return np.array([blocks[:, i, :, i].mean() for i in range(m)])


def entry_mean_heritability(fit, kinship=None) -> pd.DataFrame:
    """Entry-mean H² per environment × trait and across environments (env ``"across"``): the
    Cullis et al. (2006) generalised H² with PEV covariances ignored,
    H² ≈ 1 − mean(PEV)/(σ²_g·mean K_jj) over the genotypes phenotyped for the trait (in that
    environment; in any for "across", from the mean of the genotype's BLUPs over the
    environments — see the module docstring for when that is exact, approximate or NA).
    Columns env, trait, H2, n_genotypes, method.  H2 is NA when the fit has no PEVs."""
    kdiag, knote = kinship_diagonal(fit, kinship)
    b = _genetic_table(fit, kdiag)
    has_pev = fit.pev is not None
    base = "Cullis et al. (2006) H² ≈ 1 − mean PEV/(σ²_g·mean K_jj), PEV covariances ignored; " + knote
    rows = []
    for e in fit.envs:
        for t in fit.traits:
            cell = b[(b["env"] == str(e)) & (b["trait"] == str(t)) & b["phenotyped"]]
            vg = float(cell["var_g"].iloc[0]) if len(cell) else float("nan")
            h2 = cullis_h2_approx(cell["pev"], vg, cell["kjj"]) if has_pev and len(cell) else float("nan")
            rows.append(dict(env=str(e), trait=str(t), H2=h2, n_genotypes=len(cell),
                             method=base if has_pev else "NA: fitted without PEVs"))
    kind = _across_kind(fit)
    var_mean = _across_variance(fit)
    for i, t in enumerate(fit.traits):
        ids = b.loc[(b["trait"] == str(t)) & b["phenotyped"], "id"].unique()
        method = f"{base}; across: {_ACROSS_TEXT[kind]}"
        if not has_pev:
            h2, method = float("nan"), "NA: fitted without PEVs"
        elif kind == "correlated" or len(ids) == 0:
            h2 = float("nan")
            method = "across: " + _ACROSS_TEXT["correlated"] if kind == "correlated" else method
        else:
            pev_mean = _across_pev(b, t, ids, len(fit.envs), kind)
            kj = b.drop_duplicates("id").set_index("id").loc[ids, "kjj"]
            h2 = cullis_h2_approx(pev_mean, var_mean[i], kj)
        rows.append(dict(env=ACROSS, trait=str(t), H2=h2, n_genotypes=len(ids), method=method))
    return pd.DataFrame(rows)


def _across_pev(b: pd.DataFrame, trait, ids, L: int, kind: str) -> np.ndarray:
    """PEV of each genotype's mean BLUP over the environments, PEV covariances ignored:
    (1/L²) Σ_l PEV_l, in ``ids`` order (for a shared genetic value every PEV_l is the same
    PEV and the mean BLUP is that BLUP: the PEV itself)."""
    g = b[b["trait"] == str(trait)].groupby("id")["pev"]
    pev = g.mean() if kind == "shared" else g.sum(min_count=L) / L ** 2
    return pev.loc[ids].to_numpy()


def _factor_regression(fit, trait) -> tuple[np.ndarray, pd.DataFrame, np.ndarray]:
    """(Λ: the environments' rotated loadings for ``trait`` (L × k), U: the phenotyped
    genotypes' BLUPs (ids × L), F: their least-squares scores (Λ'Λ)⁻¹Λ'û_j (ids × k; a
    minimum-norm solution when Λ has fewer rows than columns))."""
    cols = [f"f{j + 1}" for j in range(fit.genetic_structure.factors)]
    envs = [str(e) for e in fit.envs]
    lo = fit.loadings()
    lam = lo[lo["trait"] == trait].assign(env=lambda d: d["env"].astype(str)).set_index("env").loc[envs, cols]
    bl = fit.blups()
    bl = bl[bl["trait"] == trait].assign(id=lambda d: d["id"].astype(str), env=lambda d: d["env"].astype(str))
    U = bl.pivot(index="id", columns="env", values="blup")[envs]
    obs_trait = np.asarray(fit.observed["trait"]).astype(str) == str(trait)
    U = U[U.index.isin(set(np.asarray(fit.observed["id"]).astype(str)[obs_trait]))]
    lam = lam.to_numpy(dtype=float)
    return lam, U, np.linalg.lstsq(lam, U.to_numpy(dtype=float).T, rcond=None)[0].T


def latent_scores(fit, trait) -> pd.DataFrame:
    """Each phenotyped genotype's factor scores for one trait of a factor-analytic fit: the
    least-squares f̂_j = (Λ'Λ)⁻¹Λ'û_j of its BLUPs û_j in the environments on the rotated
    loadings Λ (:meth:`~hetvc.results.FitResult.loadings`, that trait's rows; a minimum-norm
    solution when Λ has fewer rows than columns).  Columns: id, f1 … fk, sorted by f1 (highest
    first)."""
    _, U, scores = _factor_regression(fit, trait)
    out = pd.DataFrame(scores, columns=[f"f{j + 1}" for j in range(scores.shape[1])])
    out.insert(0, "id", U.index.to_numpy())
    return out.sort_values("f1", ascending=False, kind="stable").reset_index(drop=True)


def fa_selection_tools(fit) -> pd.DataFrame:
    """Smith & Cullis (2018) selection tools of a factor-analytic fit, per trait and phenotyped
    genotype, from the rotated loadings λ_l1 of the first factor and the scores f̂_j1
    (:func:`latent_scores`): overall performance OP_j = λ̄_1·f̂_j1 (λ̄_1 the mean first-factor
    loading over environments: the first factor's prediction of the genotype's mean genetic
    value) and stability RMSD_j = √(mean_l (û_jl − λ_l1 f̂_j1)²), the root mean square of the
    BLUPs' deviations from that regression (small: the genotype responds to environments as
    the first factor says; large: it interacts in its own way).  Columns: trait, id,
    overall_performance, stability."""
    frames = []
    for trait in fit.traits:
        lam, U, scores = _factor_regression(fit, trait)
        f1, lam1 = scores[:, 0], lam[:, 0]
        deviations = U.to_numpy(dtype=float) - np.outer(f1, lam1)
        frames.append(pd.DataFrame({"trait": trait, "id": U.index.to_numpy(),
                                    "overall_performance": lam1.mean() * f1,
                                    "stability": np.sqrt((deviations ** 2).mean(axis=1))}))
    return pd.concat(frames, ignore_index=True)


def rankings(fit, kinship=None) -> pd.DataFrame:
    """Genotype rankings per environment × trait and across environments (env ``"across"``, the
    mean over environments of the genotype's BLUPs): id, env, trait, blup, reliability
    1 − PEV/(σ²_g·K_jj) (NA without PEVs; across environments NA when the structure has genetic
    covariances between environments, approximate with PEV covariances ignored when it has
    none, exact for a shared genetic value), rank (1 = highest BLUP, ties by order), phenotyped
    (the genotype has an observed value of the trait in that environment; across: in any); for a
    factor-analytic fit the across rows also give :func:`fa_selection_tools`' overall
    performance and stability."""
    kdiag, _ = kinship_diagonal(fit, kinship)
    b = _genetic_table(fit, kdiag)
    L = len(fit.envs)
    b["reliability"] = reliability(b["pev"], b["var_g"], b["kjj"])
    per_env = b[["id", "env", "trait", "blup", "reliability", "phenotyped"]]
    kind = _across_kind(fit)
    var_mean = dict(zip(map(str, fit.traits), _across_variance(fit)))
    g = b.groupby(["trait", "id"], sort=False)
    pev = g["pev"].mean() if kind == "shared" else g["pev"].sum(min_count=L) / L ** 2
    across = pd.DataFrame({"blup": g["blup"].mean(), "pev": pev,
                           "kjj": g["kjj"].first(), "phenotyped": g["phenotyped"].any()}).reset_index()
    across["env"] = ACROSS
    if kind == "correlated":
        across["reliability"] = np.nan
    else:
        across["reliability"] = reliability(across["pev"], across["trait"].map(var_mean), across["kjj"])
    out = pd.concat([per_env, across[["id", "env", "trait", "blup", "reliability", "phenotyped"]]],
                    ignore_index=True)
    out["rank"] = (out.groupby(["env", "trait"], sort=False)["blup"]
                   .rank(ascending=False, method="first").astype(int))
    env_order = {str(e): k for k, e in enumerate(fit.envs)} | {ACROSS: len(fit.envs)}
    trait_order = {str(t): k for k, t in enumerate(fit.traits)}
    out = out.sort_values(["env", "trait", "rank"],
                          key=lambda s: s.map(env_order) if s.name == "env"
                          else s.map(trait_order) if s.name == "trait" else s).reset_index(drop=True)
    cols = ["env", "trait", "rank", "id", "blup", "reliability", "phenotyped"]
    if getattr(fit.genetic_structure, "factors", None):  # factor-analytic: OP and stability across
        tools = fa_selection_tools(fit).assign(env=ACROSS)
        out = out.assign(id=out["id"].astype(str), trait=out["trait"].astype(str)).merge(
            tools.assign(trait=tools["trait"].astype(str)), on=["env", "trait", "id"], how="left")
        cols += ["overall_performance", "stability"]
    return out[cols]
