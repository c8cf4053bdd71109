"""The fitted model: estimates, standard errors, derived quantities, tables (DESIGN.md §4).

A :class:`FitResult` is plain data — names, θ̂ and its covariance AI⁻¹, ℓ, the optimisation
record, BLUEs and BLUPs — so it round-trips through JSON (:meth:`FitResult.to_json`,
:func:`load`).  Everything else is derived from it:

* h²_il = ΣG_l[i,i] / (ΣG_l[i,i] + ΣE_l[i,i])                      (per trait × environment)
* h²_i  = Σ_l π_il ΣG_l[i,i] / Σ_l π_il (ΣG_l[i,i] + ΣE_l[i,i])    (pooled, paper eq. 12;
  π_il the share of trait i's observed values in environment l)
* r_g   = ΣG[a,b] / √(ΣG[a,a] ΣG[b,b])  between traits within an environment, and between
  environments within a trait (``unstructured``)
* AIC = −2ℓ + 2k,  BIC = −2ℓ + k·log(N − p)  (k covariance parameters, N observed values)

Standard errors of functions of θ use the delta method, J·AI⁻¹·J', with the Jacobian J taken
by complex-step differentiation (exact to rounding for these rational functions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .structures import make_structure

_H = 1e-20  # complex step


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
    record: dict
    x_names: list
    beta: np.ndarray
    beta_cov: np.ndarray
    blup: np.ndarray  # (q, dG)
    pev: np.ndarray | None
    env_share: np.ndarray  # (L, m) π_il
    observed: dict  # long arrays of the observed values: record, id, env, trait, y, fitted
    boundary: list = field(default_factory=list)
    notes: list = field(default_factory=list)

    # -- structures and matrices ------------------------------------------------------------
    def __post_init__(self):
        self._G = make_structure("G", self.genetic, self.envs, self.traits)
        self._E = make_structure("E", self.residual, self.envs, self.traits)

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

    def param_names(self) -> list[str]:
        return self._G.param_names() + self._E.param_names()

    def _full(self, theta) -> tuple[np.ndarray, np.ndarray]:
        """ΣG and ΣE as (L·m)×(L·m) matrices indexed l·m + i, whatever the structures."""
        k = self._G.n_params
        G, E = self._G.matrix(theta[:k]), self._E.matrix(theta[k:])
        L = len(self.envs)
        if not self._G.env_specific:
            G = np.kron(np.ones((L, L)), G)
        if not self._E.env_specific:
            E = np.kron(np.eye(L), E)
        return G, E

    def _labels(self):
        return pd.MultiIndex.from_tuples(
            [(e, t) for e in self.envs for t in self.traits], names=["env", "trait"]
        )

    def genetic_covariance(self, env=None) -> pd.DataFrame:
        """ΣG_l for one environment (m×m), or the full (L·m)×(L·m) ΣG when env is None."""
        return self._matrix_frame(self._full(self.theta)[0], env)

    def residual_covariance(self, env=None) -> pd.DataFrame:
        """ΣE_l for one environment (m×m), or the full block-diagonal ΣE when env is None."""
        return self._matrix_frame(self._full(self.theta)[1], env)

    def _matrix_frame(self, M, env) -> pd.DataFrame:
        if env is None:
            return pd.DataFrame(M, index=self._labels(), columns=self._labels())
        l = self.envs.index(env)
        m = len(self.traits)
        blk = M[l * m:(l + 1) * m, l * m:(l + 1) * m]
        return pd.DataFrame(blk, index=self.traits, columns=self.traits)

    # -- delta method --------------------------------------------------------------------------
    def _delta(self, fun) -> tuple[np.ndarray, np.ndarray]:
        """(f(θ̂), SE of f) for a vector function f of θ, by complex-step Jacobian."""
        value = np.real(fun(self.theta.astype(complex))).ravel()
        jac = np.empty((value.size, self.n_params))
        for k in range(self.n_params):
            t = self.theta.astype(complex)
            t[k] += 1j * _H
            jac[:, k] = np.imag(fun(t)).ravel() / _H
        var = np.einsum("ik,kl,il->i", jac, self.theta_cov, jac)
        return value, np.sqrt(np.where(var >= 0, var, np.nan))

    def _diag_parts(self, theta):
        G, E = self._full(theta)
        L, m = len(self.envs), len(self.traits)
        return np.diagonal(G).reshape(L, m), np.diagonal(E).reshape(L, m)

    # -- tables ----------------------------------------------------------------------------------
    def variance_components(self) -> pd.DataFrame:
        """Tidy table: component, environment(s), trait pair, estimate, SE (from AI⁻¹)."""
        rows = []
        se = np.sqrt(np.where(np.diag(self.theta_cov) >= 0, np.diag(self.theta_cov), np.nan))
        k = 0
        for s in (self._G, self._E):
            for a, b in s.pairs:
                (ea, ta), (eb, tb) = s.labels[a], s.labels[b]
                rows.append(dict(
                    name=self.param_names()[k], component=s.prefix, structure=s.name,
                    env1=eb, env2=ea, trait1=tb, trait2=ta,
                    estimate=self.theta[k], se=se[k],
                ))
                k += 1
        return pd.DataFrame(rows)

    def heritability(self) -> pd.DataFrame:
        """h² per environment × trait with delta-method SEs."""
        def h2(theta):
            g, e = self._diag_parts(theta)
            return g / (g + e)

        value, se = self._delta(h2)
        idx = self._labels()
        return pd.DataFrame({"env": idx.get_level_values(0), "trait": idx.get_level_values(1),
                             "h2": value, "se": se})

    def pooled_heritability(self) -> pd.DataFrame:
        """Pooled h² per trait (paper eq. 12 as proportions), with delta-method SEs."""
        pi = self.env_share

        def pooled(theta):
            g, e = self._diag_parts(theta)
            return (pi * g).sum(0) / (pi * (g + e)).sum(0)

        value, se = self._delta(pooled)
        return pd.DataFrame({"trait": self.traits, "h2": value, "se": se})

    def genetic_correlations(self) -> pd.DataFrame:
        """Genetic correlations between traits within each environment and, for
        ``unstructured``/``homogeneous`` ΣG, between environments within each trait."""
        L, m = len(self.envs), len(self.traits)
        pairs = []
        for l in range(L):
            for i in range(m):
                for j in range(i + 1, m):
                    pairs.append(("traits", self.envs[l], self.envs[l], self.traits[i], self.traits[j], l * m + i, l * m + j))
        if self.genetic == "unstructured":
            for i in range(m):
                for l in range(L):
                    for b in range(l + 1, L):
                        pairs.append(("environments", self.envs[l], self.envs[b], self.traits[i], self.traits[i], l * m + i, b * m + i))
        if not pairs:
            return pd.DataFrame(columns=["between", "env1", "env2", "trait1", "trait2", "r", "se"])
        ia = np.array([p[5] for p in pairs])
        ib = np.array([p[6] for p in pairs])

        def corr(theta):
            G, _ = self._full(theta)
            return G[ia, ib] / np.sqrt(G[ia, ia] * G[ib, ib])

        value, se = self._delta(corr)
        return pd.DataFrame([p[:5] for p in pairs], columns=["between", "env1", "env2", "trait1", "trait2"]).assign(r=value, se=se)

    def blues(self) -> pd.DataFrame:
        """Fixed effects b̂ with SEs from (X'V⁻¹X)⁻¹."""
        return pd.DataFrame({"effect": self.x_names, "estimate": self.beta,
                             "se": np.sqrt(np.diag(self.beta_cov))})

    def blups(self) -> pd.DataFrame:
        """BLUP of the genetic value of every genotype in K, in every environment, for every
        trait (with prediction error variance when computed)."""
        L, m, q = len(self.envs), len(self.traits), len(self.ids)
        env_specific = self._G.env_specific
        cols = np.array([(l * m + i) if env_specific else i for l in range(L) for i in range(m)])
        out = pd.DataFrame({
            "id": np.repeat(self.ids, L * m),
            "env": np.tile(np.repeat(self.envs, m), q),
            "trait": np.tile(self.traits, q * L),
            "blup": self.blup[:, cols].ravel(),
        })
        if self.pev is not None:
            out["pev"] = self.pev[:, cols].ravel()
        return out

    def fitted(self) -> pd.DataFrame:
        """Observed values with fitted values X b̂ + Z û and residuals."""
        out = pd.DataFrame(self.observed)
        out["residual"] = out["y"] - out["fitted"]
        return out

    # -- summary ------------------------------------------------------------------------------------
    def summary(self) -> str:
        rec = self.record
        lines = [
            f"hetvc fit: genetic={self.genetic}, residual={self.residual}, {self.method.upper()}",
            f"  {self.n_obs} observed values, {len(self.traits)} trait(s), {len(self.envs)} environment(s), "
            f"{len(self.ids)} genotypes in K",
            f"  engine: {self.engine} ({self.engine_reason})",
            f"  status: {rec['status']} after {rec['iterations']} iterations "
            f"({rec['evaluations']} evaluations, {rec['seconds']:.3g} s)" + (f"; {rec['message']}" if rec.get('message') else ""),
            f"  logLik = {self.loglik:.4f}   k = {self.n_params}   AIC = {self.aic:.4f}   BIC = {self.bic:.4f}",
        ]
        if self.boundary:
            lines.append(f"  on the boundary (a singular block): {', '.join(self.boundary)}")
        lines += [f"  note: {n}" for n in self.notes]
        fmt = lambda df: df.to_string(index=False, float_format=lambda v: f"{v:.4g}")
        vc = self.variance_components()[["name", "estimate", "se"]]
        lines += ["", "Variance components", fmt(vc)]
        lines += ["", "Heritability per environment", fmt(self.heritability())]
        lines += ["", "Pooled heritability", fmt(self.pooled_heritability())]
        rg = self.genetic_correlations()
        if len(rg):
            lines += ["", "Genetic correlations", fmt(rg)]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"<FitResult genetic={self.genetic} residual={self.residual} logLik={self.loglik:.4f} "
                f"k={self.n_params} {self.record['status']}>")

    # -- persistence ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {}
        for name in self.__dataclass_fields__:
            v = getattr(self, name)
            out[name] = v.tolist() if isinstance(v, np.ndarray) else v
        out["observed"] = {k: np.asarray(v).tolist() for k, v in self.observed.items()}
        out["format"] = "hetvc-fit/1"
        return out

    def to_json(self, path=None) -> str:
        text = json.dumps(_jsonable(self.to_dict()), allow_nan=True)
        if path is not None:
            from .io_utils import atomic_write

            with atomic_write(path) as fh:
                fh.write(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "FitResult":
        arrays = ("theta", "theta_cov", "beta", "beta_cov", "blup", "pev", "env_share")
        kw = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        for k in arrays:
            if kw.get(k) is not None:
                kw[k] = np.asarray(kw[k], dtype=float)
        kw["observed"] = {k: np.asarray(v) for k, v in d["observed"].items()}
        return cls(**kw)


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
