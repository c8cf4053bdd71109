"""Kronecker structures Σ_env ⊗ Σ_trait: ``separable`` and ``csh`` (docs/design.md §1)."""

from __future__ import annotations

import numpy as np

from .factor_analytic import WholeMatrix


class _EnvironmentByTrait(WholeMatrix):
    """A nonlinear Σ = A ⊗ B over the (environment, trait) rows (row l·m + i): A (L × L) between
    environments, B (m × m) between traits with B[0,0] = 1 (the scale lives in A), written
    B = [[1, b'], [b, S + bb']] with b free and S (the Schur complement, m − 1 × m − 1) a
    positive semi-definite block in units of the first trait: B is singular exactly when S
    is, which is then on the boundary like any block.  The Jacobian ∂σ/∂θ is taken by complex
    step (exact to rounding: σ is a polynomial in θ)."""

    @property
    def n_envs(self) -> int:
        return len(dict.fromkeys(e for e, _ in self.labels))

    @property
    def n_traits(self) -> int:
        return self.dim // self.n_envs

    @property
    def _schur_pairs(self) -> list[tuple[int, int]]:
        """(i, i') ≥ of S's lower triangle, as trait indices 1 … m − 1."""
        return [(i, j) for i in range(1, self.n_traits) for j in range(1, i + 1)]

    @property
    def n_params(self) -> int:
        return self._n_env_params + (self.n_traits - 1) + len(self._schur_pairs)

    def trait_matrix(self, theta: np.ndarray) -> np.ndarray:
        """B = [[1, b'], [b, S + bb']] (B[0,0] = 1)."""
        theta = np.asarray(theta)
        m, k = self.n_traits, self._n_env_params
        dtype = np.result_type(theta.dtype, float)
        b = theta[k:k + m - 1].astype(dtype)
        S = np.zeros((m - 1, m - 1), dtype=dtype)
        for v, (i, j) in zip(theta[k + m - 1:], self._schur_pairs):
            S[i - 1, j - 1] = S[j - 1, i - 1] = v
        B = np.ones((m, m), dtype=dtype)
        B[1:, 0] = B[0, 1:] = b
        B[1:, 1:] = S + np.outer(b, b)
        return B

    def matrix(self, theta: np.ndarray) -> np.ndarray:
        return np.kron(self.env_matrix(theta), self.trait_matrix(theta))

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        jac = np.empty((len(self.pairs), self.n_params))
        for k in range(self.n_params):
            t = np.asarray(theta, dtype=complex).copy()
            t[k] += 1e-20j
            jac[:, k] = np.imag(self.elements(t)) / 1e-20
        return jac

    def theta(self, matrix: np.ndarray) -> np.ndarray:
        """θ of the nearest Kronecker product A ⊗ B to M (Van Loan & Pitsianis: the leading
        singular pair of M rearranged), B scaled to B[0,0] = 1 and both made positive definite."""
        L, m = self.n_envs, self.n_traits
        M = np.asarray(matrix, dtype=float)
        R = M.reshape(L, m, L, m).transpose(0, 2, 1, 3).reshape(L * L, m * m)
        u, sv, vt = np.linalg.svd(R, full_matrices=False)
        A, B = (u[:, 0] * np.sqrt(sv[0])).reshape(L, L), (vt[0] * np.sqrt(sv[0])).reshape(m, m)
        if np.trace(A) < 0:
            A, B = -A, -B
        A, B = _positive_definite(A), _positive_definite(B)
        A, B = A * B[0, 0], B / B[0, 0]
        b = B[1:, 0]
        S = B[1:, 1:] - np.outer(b, b)
        return np.concatenate([self._env_theta(A), b, [S[i - 1, j - 1] for i, j in self._schur_pairs]])

    def free_params(self) -> np.ndarray:
        constrained = {int(k) for local, *_ in self.constraints() for k in local}
        return np.array([k for k in range(self.n_params) if k not in constrained], dtype=int)

    def _trait_constraint(self) -> list[tuple]:
        """S ⪰ 0, scaled by the traits' variances relative to the first trait's."""
        if self.n_traits < 2:
            return []
        k = self._n_env_params + self.n_traits - 1
        pairs = self._schur_pairs
        return [(k + np.arange(len(pairs)), np.array([i - 1 for i, _ in pairs]), np.array([j - 1 for _, j in pairs]),
                 np.arange(1, self.n_traits), f"{self.prefix}.trait", 0)]

    def variance_params(self) -> np.ndarray:
        return np.zeros(0, dtype=int)

    def param_rows(self) -> list[tuple[int, int]]:
        m = self.n_traits
        return self._env_rows() + [(i, 0) for i in range(1, m)] + list(self._schur_pairs)

    def param_scale(self, row_scale: np.ndarray) -> np.ndarray:
        m, v = self.n_traits, row_scale
        env = np.array([np.sqrt(v[a] * v[b]) for a, b in self._env_rows()])
        b = np.array([np.sqrt(v[i] / v[0]) for i in range(1, m)])
        S = np.array([np.sqrt(v[i] * v[j]) / v[0] for i, j in self._schur_pairs])
        return np.concatenate([env, b, S])

    def param_names(self) -> list[str]:
        traits = [t for _, t in self.labels[:self.n_traits]]
        return (self._env_names() + [f"{self.prefix}.trait_b[{traits[i]}]" for i in range(1, self.n_traits)]
                + [f"{self.prefix}.trait_S[{traits[j]},{traits[i]}]" for i, j in self._schur_pairs])


class Separable(_EnvironmentByTrait):
    """Σ = Σ_env ⊗ Σ_trait: every trait covariance the same multiple of the environments'
    (the separable, Kronecker form).  θ = the elements of A = Σ_env (a positive semi-definite
    L × L block, in units of the first trait's variance), then L_B."""

    key = "separable"
    nested_in = {"G": ("unstructured",), "R": ("unstructured",)}

    @property
    def _n_env_params(self) -> int:
        return self.n_envs * (self.n_envs + 1) // 2

    @property
    def _env_pairs(self) -> list[tuple[int, int]]:
        return [(l, k) for l in range(self.n_envs) for k in range(l + 1)]

    def env_matrix(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta)
        A = np.zeros((self.n_envs, self.n_envs), dtype=np.result_type(theta.dtype, float))
        for v, (l, k) in zip(theta[:self._n_env_params], self._env_pairs):
            A[l, k] = A[k, l] = v
        return A

    def _env_theta(self, A: np.ndarray) -> list:
        return [A[l, k] for l, k in self._env_pairs]

    def _env_rows(self) -> list[tuple[int, int]]:
        m = self.n_traits
        return [(l * m, k * m) for l, k in self._env_pairs]

    def _env_names(self) -> list[str]:
        envs = list(dict.fromkeys(e for e, _ in self.labels))
        return [f"{self.prefix}.env[{envs[k]},{envs[l]}]" for l, k in self._env_pairs]

    def constraints(self) -> list[tuple]:
        pairs = self._env_pairs
        return [(np.arange(len(pairs)), np.array([l for l, _ in pairs]), np.array([k for _, k in pairs]),
                 np.arange(self.n_envs) * self.n_traits, f"{self.prefix}.env")] + self._trait_constraint()


class CompoundSymmetry(_EnvironmentByTrait):
    """Compound symmetry with heterogeneous variances between environments (ASReml's
    ``corh``), ⊗ Σ_trait: A = D½ [(1 − ρ) I + ρ J] D½ with a variance d_l ≥ 0 per environment
    (1 × 1 blocks; in units of the first trait's variance) and one genetic correlation ρ
    between every two environments, ρ = c + (1 − c)/(1 + e^(−u)) with c = −1/(L − 1) so that
    A is positive semi-definite for every real u (θ holds u; ρ and its SE are reported among
    the genetic correlations)."""

    key = "csh"
    nested_in = {"G": ("separable", "unstructured"), "R": ("separable", "unstructured")}

    @property
    def _n_env_params(self) -> int:
        return self.n_envs + 1

    def rho(self, theta: np.ndarray):
        c = -1.0 / (self.n_envs - 1)
        return c + (1.0 - c) / (1.0 + np.exp(-np.asarray(theta)[self.n_envs]))

    def env_matrix(self, theta: np.ndarray) -> np.ndarray:
        theta = np.asarray(theta)
        sd = np.sqrt(theta[:self.n_envs].astype(np.result_type(theta.dtype, float)))
        rho = self.rho(theta)
        C = rho * np.ones((self.n_envs, self.n_envs)) + (1.0 - rho) * np.eye(self.n_envs)
        return sd[:, None] * C * sd[None, :]

    def _env_theta(self, A: np.ndarray) -> list:
        d = np.maximum(np.diag(A), 1e-12)
        L = self.n_envs
        r = (A / np.sqrt(np.outer(d, d)))[~np.eye(L, dtype=bool)].mean()
        c = -1.0 / (L - 1)
        share = np.clip((r - c) / (1.0 - c), 1e-3, 1 - 1e-3)
        return list(d) + [np.log(share / (1.0 - share))]

    def _env_rows(self) -> list[tuple[int, int]]:
        m = self.n_traits
        return [(l * m, l * m) for l in range(self.n_envs)] + [(0, m)]

    def _env_names(self) -> list[str]:
        envs = list(dict.fromkeys(e for e, _ in self.labels))
        return [f"{self.prefix}.env[{e},{e}]" for e in envs] + [f"{self.prefix}.rho_logit"]

    def constraints(self) -> list[tuple]:
        m = self.n_traits
        return [(np.array([l]), np.array([0]), np.array([0]), np.array([l * m]), f"{self.prefix}.env[{e}]")
                for l, e in enumerate(dict.fromkeys(e for e, _ in self.labels))] + self._trait_constraint()

    def param_scale(self, row_scale: np.ndarray) -> np.ndarray:
        out = super().param_scale(row_scale)
        out[self.n_envs] = 1.0  # u is unit-free
        return out


def _positive_definite(M: np.ndarray, floor: float = 1e-6) -> np.ndarray:
    """M symmetrised with its eigenvalues raised to ≥ floor × the largest."""
    M = (M + M.T) / 2
    vals, vecs = np.linalg.eigh(M)
    vals = np.maximum(vals, floor * max(vals.max(), 1e-300))
    return (vecs * vals) @ vecs.T
