"""The dense engine: V over the observed values and its Cholesky factor (docs/design.md §2–3).

Exact for any design, any structure, any pattern of missing values; O(N³) per iteration.

For a parameter θ_k = Σ_t[a, b] of term t (kernel 𝒦_t over units, index map a(o)):

    V_k[o, o'] = 𝒦_t[u(o), u(o')] · ([a(o)=a][a(o')=b] + [a(o)=b][a(o')=a])   (once if a = b)

so with one-hot maps A_t (N × d_t), w = Py and T_t = Σ_o (unit, index) aggregates of w:

    tr(P V_k)    = (2 − δ_ab) · [A_t' (P ∘ 𝒦_obs) A_t]_ab
    y'P V_k P y  = (2 − δ_ab) · [T_t' 𝒦_t T_t]_ab
    (V_k P y)_o  = [a(o)=a] (𝒦_t T_t)[u(o), b] + [a≠b][a(o)=b] (𝒦_t T_t)[u(o), a]
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp

from ..model import Model, RandomTerm
from .base import Engine, Evaluation, NotPositiveDefinite, Solution, restricted_constant


def _observed_kernel(term: RandomTerm) -> np.ndarray:
    """𝒦 between observed values: kernel[u(o), u(o')] (or [u(o) = u(o')] for the identity)."""
    if term.kernel is None:
        return (term.unit[:, None] == term.unit[None, :]).astype(float)
    return term.kernel[np.ix_(term.unit, term.unit)]


def _aggregate(term: RandomTerm, values: np.ndarray) -> np.ndarray:
    """T[u, a] = Σ_{o: u(o)=u, a(o)=a} values_o."""
    out = np.zeros((term.n_units, term.structure.dim))
    np.add.at(out, (term.unit, term.index), values)
    return out


class _Factor:
    """V = LL', V⁻¹, (X'V⁻¹X)⁻¹, P and Py at one θ."""

    def __init__(self, V: np.ndarray, X: np.ndarray, y: np.ndarray, need_p: bool):
        try:
            chol = sla.cholesky(V, lower=True, overwrite_a=True, check_finite=False)
        except (sla.LinAlgError, ValueError) as err:
            raise NotPositiveDefinite(str(err)) from None
        self.logdet_v = 2.0 * float(np.log(np.diag(chol)).sum())
        inv, info = sla.lapack.dpotri(chol, lower=1, overwrite_c=0)
        if info != 0:
            raise NotPositiveDefinite("dpotri failed")
        self.v_inv = np.tril(inv) + np.tril(inv, -1).T
        # V⁻¹X and V⁻¹y by triangular solves: accurate when V is ill-conditioned (boundary θ)
        vinv_x = sla.cho_solve((chol, True), X, check_finite=False)
        vinv_y = sla.cho_solve((chol, True), y, check_finite=False)
        xvx = X.T @ vinv_x
        try:
            xvx_chol = sla.cho_factor(xvx, lower=True, check_finite=False)
        except sla.LinAlgError as err:
            raise NotPositiveDefinite(str(err)) from None
        self.logdet_xvx = 2.0 * float(np.log(np.diag(xvx_chol[0])).sum())
        self.xvx_inv = sla.cho_solve(xvx_chol, np.eye(X.shape[1]))
        self.beta = self.xvx_inv @ (X.T @ vinv_y)
        self.py = vinv_y - vinv_x @ self.beta
        self.p = self.v_inv - vinv_x @ self.xvx_inv @ vinv_x.T if need_p else None


class DenseEngine(Engine):
    """ℓ, score and AI from the explicit N×N covariance matrix of the observed values."""

    name = "dense"

    def __init__(self, model: Model):
        self.model = model
        d = model.design
        self.y, self.X = d.y, d.X
        self.terms = model.terms()
        self.kobs = [_observed_kernel(t) for t in self.terms]
        self.params = model.elements()
        self.const = restricted_constant(len(d.y), d.X.shape[1], model.method)

    def covariance(self, theta: np.ndarray) -> np.ndarray:
        """V = Σ_t 𝒦_obs,t ∘ Σ_t[a(o), a(o')]."""
        V = None
        for term, kobs, S in zip(self.terms, self.kobs, self.model.matrices(theta)):
            part = S[np.ix_(term.index, term.index)]
            part *= kobs
            if V is None:
                V = part
            else:
                V += part
        return V

    def _factor(self, theta: np.ndarray, need_p: bool) -> _Factor:
        return _Factor(self.covariance(theta), self.X, self.y, need_p)

    def evaluate_elements(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        reml = self.model.method == "reml"
        f = self._factor(theta, need_p=derivatives and reml)
        ypy = float(self.y @ f.py)
        loglik = -0.5 * (self.const + f.logdet_v + (f.logdet_xvx if reml else 0.0) + ypy)
        if not derivatives:
            return Evaluation(loglik)
        pm = f.p if reml else f.v_inv
        traces, quads, kts = [], [], []
        for term, kobs in zip(self.terms, self.kobs):
            onehot = np.zeros((len(self.y), term.structure.dim))
            onehot[np.arange(len(self.y)), term.index] = 1.0
            traces.append(onehot.T @ ((pm * kobs) @ onehot))
            t = _aggregate(term, f.py)
            kt = t if term.kernel is None else term.kernel @ t
            quads.append(t.T @ kt)
            kts.append(kt)
        n = len(self.params)
        score = np.empty(n)
        F = np.empty((len(self.y), n))
        for k, (t, a, b) in enumerate(self.params):
            term, kt = self.terms[t], kts[t]
            mult = 1.0 if a == b else 2.0
            score[k] = -0.5 * mult * (traces[t][a, b] - quads[t][a, b])
            col = np.where(term.index == a, kt[term.unit, b], 0.0)
            if a != b:
                col += np.where(term.index == b, kt[term.unit, a], 0.0)
            F[:, k] = col
        ai = 0.5 * F.T @ (pm @ F)
        return Evaluation(loglik, score, (ai + ai.T) / 2)

    def solve(self, theta: np.ndarray, pev: bool = False) -> Solution:
        """BLUEs b̂ = (X'V⁻¹X)⁻¹X'V⁻¹y and, for the genetic and every random term t, BLUPs
        û_t = (Σ_t ⊗ 𝒦_t) Z_t'Py for every level of its kernel (every genotype in K)."""
        f = self._factor(theta, need_p=pev)
        fitted = self.X @ f.beta
        predictions = []
        for term, S in zip(self.terms[:-1], self.model.matrices(theta)[:-1]):
            cross = _level_kernel(term)  # (levels, units); None: independent observed levels
            agg = _aggregate(term, f.py) @ S
            blup = agg if cross is None else cross @ agg
            fitted = fitted + blup[term.factor.observed[term.unit], term.index]
            predictions.append((blup, self._pev(f.p, S, term, cross) if pev else None))
        (blup, gpev), random = predictions[0], predictions[1:]
        out = Solution(f.beta, f.xvx_inv, blup, fitted, gpev)
        out.random = {t.factor.name: p for t, p in zip(self.terms[1:-1], random)}
        return out

    def _pev(self, P, S, term, cross) -> np.ndarray:
        """Var(u_ja − û_ja) = Σ[a,a]·𝒦[j,j] − c'Pc with c_o = Σ[a, a(o)]·𝒦[j, u(o)]."""
        n = len(self.y)
        Z = sp.csr_matrix((np.ones(n), (term.unit, np.arange(n))), shape=(term.n_units, n))
        kdiag = np.ones(term.n_units) if cross is None else np.diag(term.factor.kernel)
        out = np.empty((len(kdiag), S.shape[0]))
        for a in range(S.shape[0]):
            dvec = S[a, term.index]
            pa = P * np.outer(dvec, dvec)
            agg = (Z @ (Z @ pa).T).T  # Z Pa Z'  (units × units)
            explained = np.diag(agg) if cross is None else np.einsum("ju,ju->j", cross @ agg, cross)
            out[:, a] = S[a, a] * kdiag - explained
        return out


def _level_kernel(term: RandomTerm) -> np.ndarray | None:
    """𝒦[level, observed unit]: the kernel's rows of every level; None when the levels are
    independent (the levels are then the observed units, in order)."""
    factor = term.factor
    return None if factor.kernel is None else factor.kernel[:, factor.observed]
