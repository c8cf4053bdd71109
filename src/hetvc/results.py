"""The fitted model: estimates, standard errors, derived quantities, tables (docs/design.md §5).

A :class:`FitResult` is plain data — names, θ̂ and its covariance AI⁻¹, ℓ, the optimisation
record, BLUEs and BLUPs — so it round-trips through JSON (:meth:`FitResult.to_json`,
:func:`load`).  Everything else is derived from it:

* h²_il = ΣG_l[i,i] / (ΣG_l[i,i] + Σ_t Σ_t,l[i,i] + ΣE_l[i,i])    (per trait × environment;
  every random term t beyond the genetic one enters the denominator)
* h²_i  = Σ_l π_il ΣG_l[i,i] / Σ_l π_il (ΣG_l[i,i] + Σ_t Σ_t,l[i,i] + ΣE_l[i,i])   (pooled, paper
  eq. 12; π_il the share of trait i's observed values in environment l)
* the variance partition: each term's share σ²_t / Σ_s σ²_s of each cell
* r_g   = ΣG[a,b] / √(ΣG[a,a] ΣG[b,b])  between traits within an environment, and between
  environments within a trait (``unstructured``)
* AIC = −2ℓ + 2k,  BIC = −2ℓ + k·log n,  AICc = AIC + 2k(k + 1)/(n − k − 1)
  (k covariance parameters, n = N − p the REML degrees of freedom: N observed values, p = rank X;
  AICc is NaN when n − k − 1 ≤ 0)

Standard errors of functions of θ use the delta method, J·AI⁻¹·J', with the Jacobian J taken
by complex-step differentiation (exact to rounding for these rational functions).  An SE that
carries no information is NaN with its reason in the column ``se_note`` ("" when the SE is
fine): a parameter whose ΣG/ΣE block is on the boundary (AI⁻¹ does not describe an estimate at
the edge of the parameter space), a parameter the AI matrix has no information on, an SE above
``ABSURD_SE`` × the phenotypic variance of its cell(s) (a variance) or above 1 (h², a
correlation); a derived quantity inherits the reason of any parameter it depends on.  A
genetic correlation involving a variance below ``ZERO_VARIANCE`` × its phenotypic variance is
undefined (NaN, not 0 or ±1), with that reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import heritability
from .data import phenotypic_variances
from .io_utils import atomic_write
from .layout import Layout
from .optimize import OptimizationRecord
from .structures import make_structure, param_slices

_H = 1e-20  # complex step
ZERO_VARIANCE = 1e-6  # a genetic variance below this share of its phenotypic variance is zero
ABSURD_SE = 1e3  # a variance SE above this many phenotypic variances carries no information
FIXED_AT_ZERO = "fixed at 0: on the boundary"  # se_note of a lone variance estimated at zero


@dataclass
class FitResult:
    """A fitted hetvc model (see the module docstring for every derived quantity)."""

    traits: list
    envs: list
    ids: list
    genetic: str
    residual: str
    method: str
    fixed: str | None
    theta: np.ndarray
    theta_cov: np.ndarray
    loglik: float
    n_obs: int
    rank_x: int
    engine: str
    engine_reason: str
    record: OptimizationRecord  # a dict (a fit.json's) is read into one
    x_names: list
    beta: np.ndarray
    beta_cov: np.ndarray
    blup: np.ndarray  # (q, dG)
    pev: np.ndarray | None
    env_share: np.ndarray  # (L, m) π_il
    observed: dict  # long arrays of the observed values: record, id, env, trait, y, fitted
    boundary: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    random: list = field(default_factory=list)  # [{name, structure, kinship}] beyond the genetic term
    random_levels: dict = field(default_factory=dict)  # term → labels of its levels
    random_blup: dict = field(default_factory=dict)  # term → (levels, d_t) BLUPs
    random_pev: dict = field(default_factory=dict)  # term → (levels, d_t) PEVs
    random_counts: dict = field(default_factory=dict)  # term → (levels, L, m) observed values
    kinship_diagonal: np.ndarray | None = None  # (q,) K_jj of every genotype in K, as fitted

    # -- structures and matrices ------------------------------------------------------------
    def __post_init__(self):
        if not isinstance(self.record, OptimizationRecord):
            self.record = OptimizationRecord.from_dict(self.record)
        self._G = make_structure("G", self.genetic, self.envs, self.traits)
        self._E = make_structure("E", self.residual, self.envs, self.traits)
        self._R = [make_structure("R", r["structure"], self.envs, self.traits, prefix=r["name"])
                   for r in self.random]
        self._structures = [self._G, *self._R, self._E]

    @property
    def genetic_structure(self):
        """The genetic :class:`~hetvc.structures.CovStructure` (what it links, nests, names)."""
        return self._G

    @property
    def residual_structure(self):
        """The residual :class:`~hetvc.structures.CovStructure`."""
        return self._E

    @property
    def converged(self) -> bool:
        return bool(self.record["converged"])

    @property
    def n_params(self) -> int:
        return len(self.theta)

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.n_params

    @property
    def bic(self) -> float:
        return -2.0 * self.loglik + self.n_params * np.log(self.n_obs - self.rank_x)

    @property
    def aicc(self) -> float:
        """AIC + 2k(k+1)/(n − k − 1), n = N − p; NaN when n − k − 1 ≤ 0."""
        k, n = self.n_params, self.n_obs - self.rank_x
        return self.aic + 2.0 * k * (k + 1) / (n - k - 1) if n - k - 1 > 0 else float("nan")

    def param_names(self) -> list[str]:
        return [n for s in self._structures for n in s.param_names()]

    @property
    def random_terms(self) -> list[str]:
        """Names of the random terms beyond the genetic one, in θ order."""
        return [r["name"] for r in self.random]

    @property
    def layout(self) -> Layout:
        """The environment × trait order of the full matrices (row l·m + i)."""
        return Layout(self.envs, self.traits)

    def full_covariances(self, theta=None) -> tuple[np.ndarray, np.ndarray]:
        """ΣG and ΣE as (L·m)×(L·m) matrices of :attr:`layout`, whatever the structures (θ̂ by
        default; any θ, complex too, for derivatives)."""
        full = self.term_covariances(theta)
        return full["G"], full["E"]

    def term_covariances(self, theta=None) -> dict:
        """Every term's matrix as (L·m)×(L·m) of :attr:`layout`: ``"G"``, each random term by
        name, ``"E"`` (θ̂ by default; any θ, complex too)."""
        theta = self.theta if theta is None else theta
        L = len(self.envs)
        return {s.prefix: s.full(theta[sl], L) for s, sl in zip(self._structures, param_slices(self._structures))}

    def genetic_covariance(self, env=None) -> pd.DataFrame:
        """ΣG_l for one environment (m×m), or the full (L·m)×(L·m) ΣG when env is None."""
        return self._matrix_frame(self.full_covariances()[0], env)

    def residual_covariance(self, env=None) -> pd.DataFrame:
        """ΣE_l for one environment (m×m), or the full block-diagonal ΣE when env is None."""
        return self._matrix_frame(self.full_covariances()[1], env)

    def random_covariance(self, term: str, env=None) -> pd.DataFrame:
        """Σ_t of random term ``term`` in one environment (m×m), or as the full matrix."""
        full = self.term_covariances()
        if term not in self.random_terms:
            raise KeyError(f"no random term {term!r}; the fit has {self.random_terms}")
        return self._matrix_frame(full[term], env)

    def _matrix_frame(self, M, env) -> pd.DataFrame:
        if env is None:
            return pd.DataFrame(M, index=self.layout.labels(), columns=self.layout.labels())
        blk = self.layout.env_block(M, self.envs.index(env))
        return pd.DataFrame(blk, index=self.traits, columns=self.traits)

    # -- delta method --------------------------------------------------------------------------
    def _delta_jacobian(self, fun) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(f(θ̂), SE of f, the Jacobian J) for a vector function f of θ: the delta method
        J·AI⁻¹·J' with J by complex-step differentiation."""
        value = np.real(fun(self.theta.astype(complex))).ravel()
        jac = np.empty((value.size, self.n_params))
        for k in range(self.n_params):
            t = self.theta.astype(complex)
            t[k] += 1j * _H
            jac[:, k] = np.imag(fun(t)).ravel() / _H
        involved = (jac != 0) & ~self.fixed_at_zero()  # a variance fixed at 0 adds no uncertainty
        cov = np.nan_to_num(self.theta_cov, nan=0.0)  # parameters without information: see se_note
        var = np.einsum("ik,kl,il->i", jac, cov, jac)
        se = np.sqrt(np.where(var >= 0, var, np.nan))
        se[(involved & np.isnan(np.diag(self.theta_cov))).any(axis=1)] = np.nan
        return value, se, jac

    # -- SEs that carry no information ------------------------------------------------------------
    def param_blocks(self) -> list[str]:
        """Name of the ΣG/ΣE block of every parameter (as in ``boundary``)."""
        out = []
        for s in self._structures:
            names = [""] * s.n_params  # a free parameter (a loading) belongs to no block
            for local, _, _, _, name, *_ in s.constraints():
                for k in local:
                    names[k] = name
            out += names
        return out

    def fixed_at_zero(self) -> np.ndarray:
        """Parameters that are lone variances (a 1×1 block: a random term's, a diagonal
        structure's) estimated at zero: fixed there, with the other SEs conditional on it."""
        out = []
        for s in self._structures:
            fixed = np.zeros(s.n_params, dtype=bool)
            for local, _, _, rows, name, *_ in s.constraints():
                fixed[local] = len(rows) == 1 and name in self.boundary
            out.append(fixed)
        return np.concatenate(out)

    def _row_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """Phenotypic variance of every row of ΣG and ΣE, from the observed values, as the model
        scaled them (:func:`hetvc.data.phenotypic_variances`)."""
        env = pd.Categorical(np.asarray(self.observed["env"]).astype(str), categories=list(map(str, self.envs)))
        trait = pd.Categorical(np.asarray(self.observed["trait"]).astype(str), categories=list(map(str, self.traits)))
        cell, pooled = phenotypic_variances(np.asarray(self.observed["y"], dtype=float), env.codes.astype(int),
                                            trait.codes.astype(int), len(self.envs), len(self.traits))
        return [cell.ravel() if s.per_environment else pooled for s in self._structures]

    def _param_se_notes(self) -> tuple[np.ndarray, list[str]]:
        """(SE, reason) of every parameter: NaN and a reason when the SE carries no information."""
        diag = np.diag(self.theta_cov)
        se = np.sqrt(np.where(diag >= 0, diag, np.nan))
        on_boundary = set(self.boundary)
        scales = np.concatenate([s.param_scale(v) for s, v in zip(self._structures, self._row_variances())])
        notes = []
        fixed = self.fixed_at_zero()
        for k, (scale, block) in enumerate(zip(scales, self.param_blocks())):
            if fixed[k]:
                notes.append(FIXED_AT_ZERO)
            elif block in on_boundary:
                notes.append(f"on the boundary: {block} is singular")
            elif np.isnan(diag[k]):
                notes.append("no information in the data: AI singular")
            elif not np.isfinite(se[k]):
                notes.append("not available")
            elif se[k] > ABSURD_SE * scale:
                notes.append(f"absurd: over {ABSURD_SE:g} phenotypic variances")
            else:
                notes.append("")
        se = np.where([n == "" for n in notes], se, np.nan)
        return se, notes

    def _derived_se(self, fun, bound: float | None = 1.0, what: str = "") -> tuple:
        """(value, SE, se_note) of a derived quantity: the first reason of a parameter it depends
        on, else NaN when the SE exceeds ``bound`` (the quantity's whole range)."""
        value, se, jac = self._delta_jacobian(fun)
        _, param_notes = self._param_se_notes()
        notes = []
        for row in range(len(value)):
            reasons = [param_notes[k] for k in np.nonzero(jac[row])[0]
                       if param_notes[k] and param_notes[k] != FIXED_AT_ZERO]
            if reasons:
                notes.append(reasons[0])
            elif not np.isfinite(se[row]):
                notes.append("not available")
            elif bound is not None and se[row] > bound:
                notes.append(f"absurd: over {bound:g} for {what}")
            else:
                notes.append("")
        se = np.where([n == "" for n in notes], se, np.nan)
        return value, se, notes

    def se_notes(self) -> list[str]:
        """Fit-level notes on SEs given as NA (boundary blocks, absurd SEs)."""
        out = []
        fixed = self.fixed_at_zero()
        zero = [n for n, f in zip(self.param_names(), fixed) if f]
        singular = [b for b in self.boundary if not any(b == blk for blk, f in zip(self.param_blocks(), fixed) if f)]
        if zero:
            out.append(f"estimated at zero, on the boundary: {', '.join(zero)}; fixed there, so the other "
                       "SEs (and those of h² and shares) are conditional on it (as ASReml's 'B' components)")
        if singular:
            out.append(f"SEs of the parameters of {', '.join(singular)} (on the boundary) and of "
                       "h² and correlations built from them are NA: AI⁻¹ does not describe an "
                       "estimate at the edge of the parameter space")
        _, notes = self._param_se_notes()
        absurd = [n for n, r in zip(self.param_names(), notes) if r.startswith("absurd")]
        if absurd:
            out.append(f"SEs that carry no information (NA): {', '.join(absurd[:5])}"
                       + (f" and {len(absurd) - 5} more" if len(absurd) > 5 else ""))
        return out

    def _term_variances(self, theta) -> dict:
        """Every term's variances per environment × trait (L×m), by term name."""
        L, m = len(self.envs), len(self.traits)
        return {name: np.diagonal(M).reshape(L, m) for name, M in self.term_covariances(theta).items()}

    def _diag_parts(self, theta):
        """(genetic, all other terms) variances per environment × trait: h² = g / (g + rest)."""
        parts = self._term_variances(theta)
        g = parts.pop("G")
        return g, sum(parts.values())

    # -- tables ----------------------------------------------------------------------------------
    def variance_components(self) -> pd.DataFrame:
        """Tidy table: component, environment(s), trait pair, estimate, SE (from AI⁻¹)."""
        rows = []
        se, se_note = self._param_se_notes()
        k = 0
        for s in self._structures:
            for a, b in s.param_rows():
                (ea, ta), (eb, tb) = s.labels[a], s.labels[b]
                rows.append(dict(
                    name=self.param_names()[k], component=s.prefix, structure=s.name,
                    env1=eb, env2=ea, trait1=tb, trait2=ta,
                    estimate=self.theta[k], se=se[k], se_note=se_note[k],
                ))
                k += 1
        return pd.DataFrame(rows)

    def variance_partition(self) -> pd.DataFrame:
        """Each term's share of the phenotypic variance per environment × trait, with
        delta-method SEs: share_t = σ²_t / Σ_s σ²_s over the genetic term (``G``, its variance
        per unit of K), the random terms and the residual (``E``); ASReml's ``vpredict``."""
        L, m = len(self.envs), len(self.traits)
        names = [s.prefix for s in self._structures]

        def shares(theta):
            parts = self._term_variances(theta)
            total = sum(parts.values())
            return np.stack([parts[n] / total for n in names])  # (T, L, m)

        value, se, note = self._derived_se(shares, 1.0, "a variance share")
        variances = np.stack([self._term_variances(self.theta)[n] for n in names])
        se, note = self._zero_where(self._fixed_cells(names).ravel(), se, note)
        idx = pd.MultiIndex.from_product([names, range(L), range(m)])
        return pd.DataFrame({
            "env": [self.envs[l] for _, l, _ in idx], "trait": [self.traits[i] for _, _, i in idx],
            "term": [n for n, _, _ in idx], "variance": variances.ravel(),
            "share": value, "se": se, "se_note": note,
        })

    def _fixed_cells(self, names) -> np.ndarray:
        """(T, L, m): whether term t's variance of trait i in environment l is fixed at 0."""
        L, m = len(self.envs), len(self.traits)
        fixed = dict(zip(self.param_names(), self.fixed_at_zero()))
        out = np.zeros((len(names), L, m), dtype=bool)
        env_idx, trait_idx = np.repeat(np.arange(L), m), np.tile(np.arange(m), L)
        for t, s in enumerate(self._structures):
            if not s.linear:  # no parameter is a lone variance of a cell
                continue
            names_by_pair = dict(zip(s.pairs, s.param_names()))
            rows = s.index(env_idx, trait_idx, m)
            out[t] = np.array([fixed.get(names_by_pair.get((a, a)), False) for a in rows]).reshape(L, m)
        return out

    def heritability(self) -> pd.DataFrame:
        """h² = σ²_G / (σ²_G + Σ_t σ²_t + σ²_E) per environment × trait with delta-method SEs:
        every random term enters the denominator."""
        value, se, note = self._derived_se(lambda theta: heritability.per_environment(*self._diag_parts(theta)),
                                           1.0, "an h²")
        se, note = self._zero_where(self._genetic_fixed().ravel(), se, note)
        idx = self.layout.labels()
        return pd.DataFrame({"env": idx.get_level_values(0), "trait": idx.get_level_values(1),
                             "h2": value, "se": se, "se_note": note})

    def _genetic_fixed(self) -> np.ndarray:
        """(L, m): the genetic variance of the cell is fixed at 0 (so is its h²)."""
        return self._fixed_cells([s.prefix for s in self._structures])[0]

    @staticmethod
    def _zero_where(fixed: np.ndarray, se: np.ndarray, note: list) -> tuple:
        """SE NA, noted, for quantities that are 0 because a variance is fixed at 0."""
        se = np.where(fixed, np.nan, se)
        return se, [FIXED_AT_ZERO if f else n for f, n in zip(fixed, note)]

    def pooled_heritability(self) -> pd.DataFrame:
        """Pooled h² per trait (paper eq. 12 as proportions), with delta-method SEs."""
        value, se, note = self._derived_se(
            lambda theta: heritability.pooled(*self._diag_parts(theta), self.env_share), 1.0, "an h²")
        se, note = self._zero_where(self._genetic_fixed().all(axis=0), se, note)
        return pd.DataFrame({"trait": self.traits, "h2": value, "se": se, "se_note": note})

    def genetic_correlations(self) -> pd.DataFrame:
        """Genetic correlations between traits within each environment and, for
        ``unstructured``/``homogeneous`` ΣG, between environments within each trait."""
        L, m, row = len(self.envs), len(self.traits), self.layout.row
        pairs = []
        for l in range(L if self._G.trait_covariances else 0):
            for i in range(m):
                for j in range(i + 1, m):
                    pairs.append(("traits", self.envs[l], self.envs[l], self.traits[i], self.traits[j], row(l, i), row(l, j)))
        if self._G.environment_correlations:
            for i in range(m):
                for l in range(L):
                    for b in range(l + 1, L):
                        pairs.append(("environments", self.envs[l], self.envs[b], self.traits[i], self.traits[i], row(l, i), row(b, i)))
        if not pairs:
            return pd.DataFrame(columns=["between", "env1", "env2", "trait1", "trait2", "r", "se", "se_note"])
        ia = np.array([p[5] for p in pairs])
        ib = np.array([p[6] for p in pairs])

        def corr(theta):
            G, _ = self.full_covariances(theta)
            return G[ia, ib] / np.sqrt(G[ia, ia] * G[ib, ib])

        value, se, note = self._derived_se(corr, 1.0, "a correlation")
        # a correlation with a variance at zero is undefined, not 0 or ±1
        G, _ = self.full_covariances()
        scale = self._row_variances()[0]
        row_scale = scale if self._G.per_environment else np.tile(scale, L)
        null = np.diag(G) <= ZERO_VARIANCE * row_scale
        for k in np.nonzero(null[ia] | null[ib])[0]:
            zero = ia[k] if null[ia[k]] else ib[k]
            env, trait = self.layout.labels()[zero]
            value[k], se[k] = np.nan, np.nan
            note[k] = f"undefined: the genetic variance of {trait} in {env} is zero"
        return pd.DataFrame([p[:5] for p in pairs], columns=["between", "env1", "env2", "trait1", "trait2"]).assign(
            r=value, se=se, se_note=note)

    # -- factor-analytic structures ------------------------------------------------------------
    def _fa_structure(self, term: str):
        s = next((st for st in self._structures if st.prefix == term), None)
        if s is None or not hasattr(s, "loadings"):
            raise KeyError(f"term {term!r} has no factor-analytic structure (genetic={self.genetic!r})")
        return s, self.theta[param_slices(self._structures)[self._structures.index(s)]]

    def loadings(self, term: str = "G") -> pd.DataFrame:
        """Loadings Λ* of a factor-analytic term, rotated to principal axes: Λ* = ΛV with
        Λ'Λ = VDV' (orthogonal columns, ordered by the variance they explain, ΛΛ' unchanged),
        each column's sign chosen so that its mean loading is positive.  Rows: environment ×
        trait; columns f1 … fk."""
        s, theta = self._fa_structure(term)
        lam = s.loadings(theta)
        vals, vecs = np.linalg.eigh(lam.T @ lam)
        rotated = lam @ vecs[:, np.argsort(vals)[::-1]]
        rotated *= np.where(rotated.mean(0) < 0, -1.0, 1.0)
        idx = self.layout.labels()
        out = pd.DataFrame(rotated, columns=[f"f{j + 1}" for j in range(s.factors)])
        out.insert(0, "trait", idx.get_level_values(1))
        out.insert(0, "env", idx.get_level_values(0))
        return out

    def specific_variances(self, term: str = "G") -> pd.DataFrame:
        """ψ of a factor-analytic term per environment × trait, with SEs (NA at zero: a Heywood
        case, fixed on the boundary)."""
        s, _ = self._fa_structure(term)
        vc = self.variance_components()
        psi = vc[vc["name"].str.startswith(f"{s.prefix}[") & vc["name"].str.endswith(".psi")]
        idx = self.layout.labels()
        return pd.DataFrame({"env": idx.get_level_values(0), "trait": idx.get_level_values(1),
                             "psi": psi["estimate"].to_numpy(), "se": psi["se"].to_numpy(),
                             "se_note": psi["se_note"].to_numpy()})

    def factor_shares(self, term: str = "G") -> pd.DataFrame:
        """The share of each environment × trait's variance of the term explained by the factors
        together (ΛΛ')_aa / Σ_aa and by each rotated factor λ*_aj² / Σ_aa."""
        s, theta = self._fa_structure(term)
        lam = self.loadings(term)
        cols = [f"f{j + 1}" for j in range(s.factors)]
        total = np.diag(s.matrix(theta))
        with np.errstate(divide="ignore", invalid="ignore"):
            shares = lam[cols].to_numpy() ** 2 / total[:, None]
        out = lam[["env", "trait"]].copy()
        out["explained"] = shares.sum(1)
        for j, c in enumerate(cols):
            out[c] = shares[:, j]
        return out

    def blues(self) -> pd.DataFrame:
        """Fixed effects b̂ with SEs from (X'V⁻¹X)⁻¹."""
        return pd.DataFrame({"effect": self.x_names, "estimate": self.beta,
                             "se": np.sqrt(np.diag(self.beta_cov))})

    def blups(self) -> pd.DataFrame:
        """BLUP of the genetic value of every genotype in K, in every environment, for every
        trait (with prediction error variance when computed)."""
        L, m, q = len(self.envs), len(self.traits), len(self.ids)
        cols = self._G.index(np.repeat(np.arange(L), m), np.tile(np.arange(m), L), m)
        out = pd.DataFrame({
            "id": np.repeat(self.ids, L * m),
            "env": np.tile(np.repeat(self.envs, m), q),
            "trait": np.tile(self.traits, q * L),
            "blup": self.blup[:, cols].ravel(),
        })
        if self.pev is not None:
            out["pev"] = self.pev[:, cols].ravel()
        return out

    def entry_mean_heritability(self, kinship=None) -> pd.DataFrame:
        """Entry-mean (broad-sense) H² of the genotype BLUPs per environment × trait and across
        environments (env ``"across"``) — not the plot-level h² of :meth:`heritability`: Cullis
        et al. (2006) H² ≈ 1 − mean PEV/(σ²_g·mean K_jj) over the phenotyped genotypes, PEV
        covariances ignored; K_jj from ``kinship`` (K as a DataFrame, or its diagonal) or 1.
        Columns env, trait, H2, n_genotypes, method (see :mod:`hetvc.breeding`)."""
        from . import breeding

        return breeding.entry_mean_heritability(self, kinship)

    def rankings(self, kinship=None) -> pd.DataFrame:
        """Genotypes ranked by BLUP per environment × trait and across environments (the mean
        of the BLUPs over environments): env, trait, rank (1 = highest), id, blup, reliability
        1 − PEV/(σ²_g·K_jj) (NA without PEVs, or across environments when ΣG has covariances
        between them), phenotyped (see :mod:`hetvc.breeding`)."""
        from . import breeding

        return breeding.rankings(self, kinship)

    def random_effects(self, term: str | None = None) -> pd.DataFrame:
        """BLUPs (and PEVs when computed) of the levels of every random term beyond the genetic
        one (or of ``term``): columns term, level, env, trait, blup[, pev], n_obs (observed
        values of that level, environment and trait).  A structure shared by environments has
        one effect per level and trait (env empty, n_obs over all environments); one per
        environment lists the environments where the level has records, or every environment
        when the term has a relationship matrix (the others are predictions)."""
        if term is not None and term not in self.random_terms:
            raise KeyError(f"no random term {term!r}; the fit has {self.random_terms}")
        L, m = len(self.envs), len(self.traits)
        frames = []
        for s, spec in zip(self._R, self.random):
            if term is not None and s.prefix != term:
                continue
            levels = np.asarray(self.random_levels[s.prefix], dtype=object)
            counts = np.asarray(self.random_counts[s.prefix], dtype=int).reshape(len(levels), L, m)
            blup = np.asarray(self.random_blup[s.prefix])
            pev = self.random_pev.get(s.prefix)
            if s.per_environment:
                lev, env, trait = (a.ravel() for a in np.meshgrid(np.arange(len(levels)), np.arange(L),
                                                                  np.arange(m), indexing="ij"))
                n_obs = counts[lev, env, trait]
                keep = (n_obs > 0) | spec.get("kinship", False)
                lev, env, trait, n_obs = lev[keep], env[keep], trait[keep], n_obs[keep]
                env_label = np.asarray(self.envs, dtype=object)[env]
            else:
                lev, trait = (a.ravel() for a in np.meshgrid(np.arange(len(levels)), np.arange(m), indexing="ij"))
                env = np.zeros_like(lev)
                n_obs = counts.sum(axis=1)[lev, trait]
                env_label = np.full(len(lev), np.nan, dtype=object)
            cols = s.index(env, trait, m)
            frame = pd.DataFrame({"term": s.prefix, "level": levels[lev], "env": env_label,
                                  "trait": np.asarray(self.traits, dtype=object)[trait],
                                  "blup": blup[lev, cols]})
            if pev is not None:
                frame["pev"] = np.asarray(pev)[lev, cols]
            frame["n_obs"] = n_obs
            frames.append(frame)
        if not frames:
            return pd.DataFrame(columns=["term", "level", "env", "trait", "blup", "pev", "n_obs"])
        return pd.concat(frames, ignore_index=True)

    def fitted(self) -> pd.DataFrame:
        """Observed values with fitted values X b̂ + Z û + Σ_t Z_t û_t and residuals."""
        out = pd.DataFrame(self.observed)
        out["residual"] = out["y"] - out["fitted"]
        return out

    # -- summary ------------------------------------------------------------------------------------
    def summary(self) -> str:
        random = f", random={'+'.join(self.random_terms)}" if self.random else ""
        lines = [
            f"hetvc fit: genetic={self.genetic}{random}, residual={self.residual}, {self.method.upper()}",
            f"  {self.n_obs} observed values, {len(self.traits)} trait(s), {len(self.envs)} environment(s), "
            f"{len(self.ids)} genotypes in K",
            f"  engine: {self.engine} ({self.engine_reason})",
            f"  status: {self.status_line()}",
            f"  logLik = {self.loglik:.4f}   k = {self.n_params}   AIC = {self.aic:.4f}   "
            f"AICc = {self.aicc:.4f}   BIC = {self.bic:.4f}",
        ]
        if self.boundary:
            lines.append(f"  on the boundary (a singular block): {', '.join(self.boundary)}")
        lines += [f"  note: {n}" for n in self.notes]
        vc = self.variance_components()[["name", "estimate", "se", "se_note"]]
        lines += ["", "Variance components", _table(vc)]
        if self.random:
            part = self.variance_partition()
            lines += ["", "Variance partition (share of the phenotypic variance)",
                      _table(part if len(self.envs) > 1 else part.drop(columns="env"))]
        lines += ["", "Heritability per environment", _table(self.heritability())]
        lines += ["", "Pooled heritability", _table(self.pooled_heritability())]
        rg = self.genetic_correlations()
        if len(rg):
            lines += ["", "Genetic correlations", _table(rg)]
        return "\n".join(lines)

    def status_line(self) -> str:
        """E.g. 'converged after 52 iterations (41 AI + 11 L-BFGS; 140 evaluations, 60 in the
        fallback; finished by AI, 3.1 s)', or 'converged after 12 AI iterations (13 evaluations,
        0.2 s)' without a fallback; the message follows a fit that did not converge."""
        rec = self.record
        its, evals, secs = rec["iterations"], rec["evaluations"], rec.get("seconds", 0.0)
        fallback = rec.get("fallback_iterations")
        if fallback is None:  # a fit.json from before the record counted the methods
            line = f"{rec['status']} after {its} iterations ({evals} evaluations, {secs:.1f} s)"
        elif fallback == 0 and rec.get("fallback_evaluations", 0) == 0:
            line = f"{rec['status']} after {its} AI iterations ({evals} evaluations, {secs:.1f} s)"
        else:
            line = (f"{rec['status']} after {its} iterations ({rec.get('ai_iterations', its - fallback)} AI + "
                    f"{fallback} L-BFGS; {evals} evaluations, {rec.get('fallback_evaluations', 0)} in the "
                    f"fallback; finished by {rec.get('finished_by', 'AI')}, {secs:.1f} s)")
        return line + (f"; {rec['message']}" if rec.get("message") else "")

    def __repr__(self) -> str:
        random = f" random={'+'.join(self.random_terms)}" if self.random else ""
        return (f"<FitResult genetic={self.genetic}{random} residual={self.residual} logLik={self.loglik:.4f} "
                f"k={self.n_params} {self.record['status']}>")

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = v.tolist() if isinstance(v, np.ndarray) else v
        out["observed"] = {k: np.asarray(v).tolist() for k, v in self.observed.items()}
        for name in ("random_blup", "random_pev", "random_counts"):
            out[name] = {k: np.asarray(v).tolist() for k, v in getattr(self, name).items()}
        out["record"] = self.record.to_dict()
        out["format"] = "hetvc-fit/1"
        return out

    def to_json(self, path=None) -> str:
        text = json.dumps(_jsonable(self.to_dict()), allow_nan=True)
        if path is not None:

            with atomic_write(path) as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "FitResult":
        arrays = ("theta", "theta_cov", "beta", "beta_cov", "blup", "pev", "env_share", "kinship_diagonal")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in arrays:
            if kw.get(k) is not None:
                kw[k] = np.asarray(kw[k], dtype=float)
        kw["observed"] = {k: np.asarray(v) for k, v in d["observed"].items()}
        for name in ("random_blup", "random_pev"):
            kw[name] = {k: np.asarray(v, dtype=float) for k, v in d.get(name, {}).items()}
        kw["random_counts"] = {k: np.asarray(v, dtype=int) for k, v in d.get("random_counts", {}).items()}
        return cls(**kw)


def _table(df: pd.DataFrame) -> str:
    """A table as text: SEs given as NA carry their reason; no se_note column when all are fine."""
    df = df.copy()
    if "se_note" in df.columns:
        df["se"] = [f"{v:.4g}" if not n else f"NA ({n})" for v, n in zip(df["se"], df["se_note"])]
        df = df.drop(columns="se_note")
    return df.to_string(index=False, float_format=lambda v: f"{v:.4g}")


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    return obj


def load(path_or_text) -> FitResult:
    """A :class:`FitResult` from ``fit.json`` (a path) or its text."""
    text = str(path_or_text)
    if not text.lstrip().startswith("{"):
        text = Path(path_or_text).read_text()
    return FitResult.from_dict(json.loads(text))
