"""Factor-analytic structures ΣG = ΛΛ' + Ψ (docs/design.md §1.1), and the base of the nonlinear
structures that fill the whole (L·m) × (L·m) matrix."""

from __future__ import annotations

import re
from typing import ClassVar

import numpy as np

from .base import CovStructure


class WholeMatrix(CovStructure):
    """A nonlinear structure whose Σ(θ) may fill the whole (L·m) × (L·m) matrix: its elements
    are those of ``unstructured``, and it links and correlates environments."""

    links_environments = True
    environment_correlations = True
    linear = False

    @classmethod
    def groups(cls, n_envs, m):
        return [list(range(n_envs * m))]

    def elements(self, theta: np.ndarray) -> np.ndarray:
        a, b = np.array(self.pairs).T
        return self.matrix(theta)[a, b]

    def block_name(self, blk) -> str:
        return self.prefix


class FactorAnalytic(WholeMatrix):
    """ΣG = ΛΛ' + Ψ on the (environment, trait) rows: Λ (L·m × k) loadings, Ψ = diag(ψ) specific
    variances (ASReml's ``fa(Env, k)``; Smith, Cullis & Thompson 2001).

    θ = (λ: column by column, the rows a ≥ j of column j — Λ lower triangular, λ_aj = 0 for
    a < j, which removes the rotation; ψ_1 … ψ_d).  Each ψ_a ≥ 0 is a 1 × 1 constrained block
    (ψ_a at zero: a Heywood case, on the boundary); the loadings are free.  Parameters:
    d·k − k(k−1)/2 + d, d = L·m.  The elements are those of the whole matrix (as
    ``unstructured``), and σ_ab = Σ_j λ_aj λ_bj + [a = b] ψ_a."""

    factors: ClassVar[int] = 1

    @classmethod
    def nests_in(cls, kind: str, other: str) -> bool:
        larger = re.fullmatch(r"fa(\d+)", other)
        return other == "unstructured" or (larger is not None and int(larger.group(1)) > cls.factors)

    def cell_parameters(self, m_l: int) -> int:
        return 1 + self.factors

    @property
    def loading_rows(self) -> list[tuple[int, int]]:
        """(row a, factor j) of every loading, in θ order."""
        return [(a, j) for j in range(self.factors) for a in range(j, self.dim)]

    @property
    def n_params(self) -> int:
        return len(self.loading_rows) + self.dim

    def loadings(self, theta: np.ndarray) -> np.ndarray:
        """Λ (d × k, lower triangular) from θ."""
        theta = np.asarray(theta)
        lam = np.zeros((self.dim, self.factors), dtype=np.result_type(theta.dtype, float))
        rows = np.array(self.loading_rows)
        lam[rows[:, 0], rows[:, 1]] = theta[:len(rows)]
        return lam

    def specific(self, theta: np.ndarray) -> np.ndarray:
        """ψ (d) from θ."""
        return np.asarray(theta)[len(self.loading_rows):]

    def matrix(self, theta: np.ndarray) -> np.ndarray:
        lam = self.loadings(theta)
        return lam @ lam.T + np.diag(self.specific(theta))

    def factor_pattern(self) -> np.ndarray:
        """[Λ's k columns, Ψ's diagonal]: every row loads on the k common factors and on its own
        specific one."""
        return np.hstack([np.ones((self.dim, self.factors), dtype=bool), np.eye(self.dim, dtype=bool)])

    def factor(self, theta: np.ndarray) -> np.ndarray:
        """F = [Λ, Ψ^½] (d × (k + d)), FF' = ΛΛ' + Ψ: u = Λf + Ψ^½e with k common factor scores f
        and d specific effects e per level, so the environments are linked only through f."""
        psi = self.specific(theta)
        return np.hstack([self.loadings(theta), np.diag(np.sqrt(np.maximum(psi, 0.0)))])

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """∂σ_ab/∂λ_cj = [a = c] λ_bj + [b = c] λ_aj;  ∂σ_aa/∂ψ_a = 1."""
        lam = self.loadings(theta)
        a, b = np.array(self.pairs).T
        jac = np.zeros((len(a), self.n_params), dtype=lam.dtype)
        for k, (c, j) in enumerate(self.loading_rows):
            jac[:, k] = (a == c) * lam[b, j] + (b == c) * lam[a, j]
        n_load = len(self.loading_rows)
        diag = np.nonzero(a == b)[0]
        jac[diag, n_load + a[diag]] = 1.0
        return jac

    def score_curvature(self, theta: np.ndarray, score: np.ndarray) -> np.ndarray:
        """Σ_e s_e ∂²σ_e/∂θ∂θ': for loadings λ_cj, λ_dk it is δ_jk M_cd, M_cd = s_(c,d) (c ≠ d)
        and 2 s_(c,c); zero for ψ (σ is linear in it)."""
        M = CovStructure.matrix(self, score)  # the scores on the pattern of Σ's elements
        M[np.diag_indices(self.dim)] *= 2.0
        rows = np.array(self.loading_rows)
        out = np.zeros((self.n_params, self.n_params))
        n_load = len(rows)
        same = rows[:, 1][:, None] == rows[:, 1][None, :]
        out[:n_load, :n_load] = np.where(same, M[np.ix_(rows[:, 0], rows[:, 0])], 0.0)
        return out

    def theta(self, matrix: np.ndarray) -> np.ndarray:
        """θ of the k-factor approximation of a PSD matrix M: iterated principal factors
        (Ψ = diag(M − ΛΛ'), Λ from the top k eigenpairs of M − Ψ), ψ kept ≥ 1e-3·M_aa, a
        factor the matrix has no room for given a small deterministic pattern (so that no
        column of Λ starts at the saddle Λ_j = 0), then Λ rotated to lower-triangular form."""
        M = np.asarray(matrix, dtype=float)
        M = (M + M.T) / 2
        d, k = self.dim, self.factors
        diag = np.maximum(np.diag(M), 1e-12)
        psi = 0.5 * diag
        for _ in range(2000):
            vals, vecs = np.linalg.eigh(M - np.diag(psi))
            top = np.argsort(vals)[::-1][:k]
            lam = vecs[:, top] * np.sqrt(np.maximum(vals[top], 0.0))
            psi, before = np.maximum(diag - (lam ** 2).sum(1), 1e-3 * diag), psi
            if np.max(np.abs(psi - before)) <= 1e-12 * diag.max():
                break
        for j in range(k):
            if np.linalg.norm(lam[:, j]) < 1e-3 * np.sqrt(diag.sum()):
                lam[:, j] = 0.1 * np.sqrt(diag) * np.cos(np.pi * (j + 1) * (np.arange(d) + 0.5) / d)
        lam = lower_triangular(lam)
        return np.concatenate([np.array([lam[a, j] for a, j in self.loading_rows]), psi])

    def constraints(self) -> list[tuple]:
        n_load = len(self.loading_rows)
        return [(np.array([n_load + a]), np.array([0]), np.array([0]), np.array([a]), self._psi_name(a))
                for a in range(self.dim)]

    def free_params(self) -> np.ndarray:
        return np.arange(len(self.loading_rows))

    def variance_params(self) -> np.ndarray:
        return len(self.loading_rows) + np.arange(self.dim)

    def param_rows(self) -> list[tuple[int, int]]:
        return [(a, a) for a, _ in self.loading_rows] + [(a, a) for a in range(self.dim)]

    def param_scale(self, row_scale: np.ndarray) -> np.ndarray:
        rows = np.array([a for a, _ in self.loading_rows], dtype=int)
        return np.concatenate([np.sqrt(row_scale[rows]), row_scale[:self.dim]])

    def _row_name(self, a: int) -> str:
        env, trait = self.labels[a]
        return f"{self.prefix}[{env}][{trait}]" if env is not None else f"{self.prefix}[{trait}]"

    def _psi_name(self, a: int) -> str:
        return f"{self._row_name(a)}.psi"

    def param_names(self) -> list[str]:
        return ([f"{self._row_name(a)}.f{j + 1}" for a, j in self.loading_rows]
                + [self._psi_name(a) for a in range(self.dim)])

    def describe_block(self, name: str) -> str:
        return f"the specific variance {name} (a Heywood case)" if name.endswith(".psi") else name


def lower_triangular(lam: np.ndarray) -> np.ndarray:
    """ΛQ with Q orthogonal such that ΛQ is lower triangular (ΛΛ' unchanged), diagonal ≥ 0."""
    q, r = np.linalg.qr(lam.T)  # Λ' = QR  →  Λ Q = R'
    low = r.T
    signs = np.where(np.diag(low) < 0, -1.0, 1.0)
    return low * signs


def factor_analytic(k: int) -> type[FactorAnalytic]:
    """The class of structure ``fa<k>``."""
    if k not in _FA:
        _FA[k] = type(f"FactorAnalytic{k}", (FactorAnalytic,),
                      {"factors": k, "key": f"fa{k}", "__doc__": FactorAnalytic.__doc__})
    return _FA[k]


_FA: dict = {}
FA_LISTED = 3  # fa1 … fa3 are listed among the structures (and in --compare all); any faK works
