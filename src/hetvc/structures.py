"""Covariance structures: θ ↔ matrices, parameter names, PD checks (docs/design.md §1).

A structure is a symmetric d×d matrix Σ of which some elements are free parameters and the
others are zero.  Each observed value o carries an index ``a(o)`` into Σ; the random term the
structure belongs to contributes ``kernel[unit(o), unit(o')] · Σ[a(o), a(o')]`` to V.

Genetic structures (kernel K, unit = genotype):

============== ================== ==========================================
name           d, index a(o)      free elements
============== ================== ==========================================
homogeneous    m, trait i         all (Σg, shared by every environment)
heterogeneous  L·m, l·m + i       within each environment block (Σg_l)
diagonal       L·m, l·m + i       the diagonal (a variance per trait × environment)
unstructured   L·m, l·m + i       all (full G×E)
============== ================== ==========================================

Residual structures (kernel I, unit = record): ``homogeneous`` (d = m, one ΣE) and
``heterogeneous`` (d = L·m, one ΣE_l per environment).

Random terms (kernel I or a relationship over the levels of a factor, unit = level) take the
genetic structures, ``homogeneous`` by default: one m×m Σ across traits, the same in every
environment.  With a single environment a random term's ``diagonal`` is a variance per trait.

Each structure is a class that also says what callers would otherwise decide by its name:
whether it links environments, which correlations it estimates, which structures nest it
(for LRTs), how its positive-definite blocks are named.  :data:`GENETIC_STRUCTURES` and
:data:`RESIDUAL_STRUCTURES` map names to classes; a new structure is a class and one entry
there.  Nothing outside this module compares a structure's name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class CovStructure:
    """A symmetric covariance matrix with a fixed pattern of free elements.

    ``pairs[k] = (a, b)`` with ``a >= b`` is the matrix element of parameter k; ``blocks`` are
    the index sets of the independent diagonal blocks that must each be positive definite.
    A nonlinear structure (:class:`FactorAnalytic`) has other parameters θ: its ``pairs`` are
    the elements Σ(θ) may fill, and it says how (``matrix``, ``elements``, ``jacobian``),
    which parameters are constrained (``constraints``) and which are free.
    ``labels[a] = (environment or None, trait)`` names row a.  Subclasses set the class
    attributes below and :meth:`groups`.
    """

    prefix: str
    name: str
    labels: tuple
    pairs: tuple
    blocks: tuple

    #: the structure's name in ``genetic=`` / ``residual=``
    key: ClassVar[str] = ""
    #: Σ has covariances between different environments (V does not split by environment)
    links_environments: ClassVar[bool] = False
    #: correlations between environments are estimated (and reported)
    environment_correlations: ClassVar[bool] = False
    #: covariances between traits are estimated (and trait correlations reported)
    trait_covariances: ClassVar[bool] = True
    #: names of the structures of the same kind ("G", "E") that contain this one
    nested_in: ClassVar[dict] = {}
    #: what the structure is with a single environment (``None``: it needs several)
    one_environment: ClassVar[str | None] = None
    #: its rows are (environment, trait) pairs (d = L·m), not traits (d = m)
    per_environment: ClassVar[bool] = True
    #: Σ is linear in θ (the class-level :attr:`linear`)
    linear_structure: ClassVar[bool] = True

    @classmethod
    def groups(cls, n_envs: int, m: int) -> list[list[int]]:
        """Index sets of the independent positive-definite blocks (rows l·m + i, or i)."""
        raise NotImplementedError

    @classmethod
    def nests_in(cls, kind: str, other: str) -> bool:
        """True when this structure is a special case of structure ``other`` of kind ``kind``."""
        return other in cls.nested_in.get(kind, ())

    def cell_parameters(self, m_l: int) -> int:
        """Parameters that involve one trait in one environment and no other environment, when
        m_l traits are observed there: its variance and (with trait covariances) its
        covariances with the other m_l − 1; none for a structure shared by all environments."""
        if not self.per_environment:
            return 0
        return m_l if self.trait_covariances else 1

    def block_name(self, blk) -> str:
        """Name of a positive-definite block: "G", "G[env]" (as in ``FitResult.boundary``)."""
        if len(self.blocks) == 1:
            return self.prefix
        return f"{self.prefix}[{self.labels[blk[0]][0]}]"

    def describe_block(self, name: str) -> str:
        """A block name as a reader needs it when the block is singular."""
        if len(self.blocks) == 1 and self.per_environment:
            return f"Σ{self.prefix} (the whole {self.key} matrix is singular)"
        if not self.per_environment:
            return f"Σ{self.prefix} (shared by all environments)"
        return name

    @property
    def dim(self) -> int:
        return len(self.labels)

    @property
    def n_params(self) -> int:
        return len(self.pairs)

    @property
    def linear(self) -> bool:
        """Σ is linear in θ (θ are its free elements)."""
        return self.linear_structure

    @property
    def env_specific(self) -> bool:
        """True when the matrix index depends on the environment (d = L·m)."""
        return self.per_environment

    def full(self, theta: np.ndarray, n_envs: int) -> np.ndarray:
        """Σ as the full (L·m)×(L·m) matrix of the layout (row l·m + i).  A structure whose rows
        are traits is the same in every environment: for the genetic term, whose unit (a
        genotype) spans environments, J_L ⊗ Σ (so for any random term: a level's effect is the
        same in every environment); for the residual, whose unit (a record) lies in one
        environment, I_L ⊗ Σ."""
        M = self.matrix(theta)
        if self.per_environment:
            return M
        across = np.eye(n_envs) if self.prefix == "E" else np.ones((n_envs, n_envs))
        return np.kron(across, M)

    def from_full(self, M: np.ndarray, layout) -> np.ndarray:
        """θ of this structure from a full matrix of ``layout`` (the average environment block
        for a structure whose rows are traits): e.g. another fit's estimate as a start."""
        return self.theta(M if self.per_environment else layout.mean_env_block(M))

    def index(self, env: np.ndarray, trait: np.ndarray, n_traits: int) -> np.ndarray:
        """Matrix index a(o) of observations with environment ``env`` and trait ``trait``."""
        return env * n_traits + trait if self.env_specific else trait.copy()

    def matrix(self, theta: np.ndarray) -> np.ndarray:
        """Σ from its free elements θ (zeros elsewhere)."""
        theta = np.asarray(theta)
        out = np.zeros((self.dim, self.dim), dtype=np.result_type(theta.dtype, float))
        a, b = np.array(self.pairs).T
        out[a, b] = theta
        out[b, a] = theta
        return out

    def theta(self, matrix: np.ndarray) -> np.ndarray:
        """Free elements θ of Σ (the inverse of :meth:`matrix` on the pattern)."""
        a, b = np.array(self.pairs).T
        matrix = np.asarray(matrix)
        return (matrix if np.iscomplexobj(matrix) else matrix.astype(float))[a, b].copy()

    def param_names(self) -> list[str]:
        names = []
        for a, b in self.pairs:
            (ea, ta), (eb, tb) = self.labels[a], self.labels[b]
            if ea is None:
                names.append(f"{self.prefix}[{tb},{ta}]")
            elif ea == eb:
                names.append(f"{self.prefix}[{ea}][{tb},{ta}]")
            else:
                names.append(f"{self.prefix}[{eb}:{tb},{ea}:{ta}]")
        return names

    # -- θ, the parameters (the elements for a linear structure) ---------------------------
    def elements(self, theta: np.ndarray) -> np.ndarray:
        """The values σ of the matrix elements ``pairs`` at θ (θ itself for a linear structure)."""
        return np.asarray(theta)

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """∂σ/∂θ (len(pairs) × n_params): the identity for a linear structure."""
        return np.eye(self.n_params)

    def constraints(self) -> list[tuple]:
        """The positive semi-definite blocks in θ: (θ positions, row ia, column ib of each in the
        block, the block's rows of Σ, name[, a row whose variance divides the rows' — for a
        block in relative units]) — for a linear structure its ``blocks``."""
        pairs = np.array(self.pairs)
        out = []
        for blk in self.blocks:
            local = {int(a): i for i, a in enumerate(blk)}
            k = np.nonzero(np.isin(pairs[:, 0], blk))[0]
            out.append((k, np.array([local[a] for a in pairs[k, 0]]), np.array([local[b] for b in pairs[k, 1]]),
                        np.asarray(blk), self.block_name(blk)))
        return out

    def free_params(self) -> np.ndarray:
        """θ positions without a constraint (none for a linear structure)."""
        return np.zeros(0, dtype=int)

    def param_rows(self) -> list[tuple[int, int]]:
        """The matrix rows (a, b) each parameter belongs to (its element for a linear structure)."""
        return list(self.pairs)

    def variance_params(self) -> np.ndarray:
        """θ positions of the parameters that are variances (the diagonal elements)."""
        return np.array([k for k, (a, b) in enumerate(self.pairs) if a == b], dtype=int)

    def variance_name(self, a: int) -> str:
        """The name of the variance of row a, as a parameter on the diagonal is named."""
        env, trait = self.labels[a]
        return f"{self.prefix}[{trait},{trait}]" if env is None else f"{self.prefix}[{env}][{trait},{trait}]"

    def param_scale(self, row_scale: np.ndarray) -> np.ndarray:
        """The phenotypic scale of every parameter: √(v_a v_b) for an element (a, b)."""
        a, b = np.array(self.pairs).T
        return np.sqrt(row_scale[a] * row_scale[b])


def _pairs_within(groups: list[list[int]]) -> tuple:
    return tuple((a, b) for g in groups for ai, a in enumerate(g) for b in g[: ai + 1])


class Homogeneous(CovStructure):
    """One m×m matrix shared by every environment (J_L ⊗ Σg for the genetic term)."""

    key = "homogeneous"
    links_environments = True
    nested_in = {"G": ("unstructured",), "R": ("unstructured",), "E": ("heterogeneous",)}
    one_environment = "homogeneous"
    per_environment = False

    @classmethod
    def groups(cls, n_envs, m):
        return [list(range(m))]


class Heterogeneous(CovStructure):
    """Σ_l per environment, no covariance between environments: blockdiag(Σ_1 … Σ_L)."""

    key = "heterogeneous"
    nested_in = {"G": ("unstructured",), "R": ("unstructured",)}
    one_environment = "homogeneous"

    @classmethod
    def groups(cls, n_envs, m):
        return [list(range(l * m, (l + 1) * m)) for l in range(n_envs)]


class Diagonal(CovStructure):
    """A variance per trait × environment, no covariance between traits or environments
    (sommer's and ASReml's ``diag``); for a random term in one environment, a variance per
    trait."""

    key = "diagonal"
    trait_covariances = False
    nested_in = {"G": ("heterogeneous", "unstructured"), "R": ("heterogeneous", "unstructured")}

    @classmethod
    def groups(cls, n_envs, m):
        return [[a] for a in range(n_envs * m)]

    def block_name(self, blk) -> str:
        env, trait = self.labels[blk[0]]
        return f"{self.prefix}[{env}][{trait}]"


class Unstructured(CovStructure):
    """Any positive-definite (L·m)×(L·m) matrix: full G×E."""

    key = "unstructured"
    links_environments = True
    environment_correlations = True
    one_environment = "homogeneous"

    @classmethod
    def groups(cls, n_envs, m):
        return [list(range(n_envs * m))]


class _WholeMatrix(CovStructure):
    """A nonlinear structure whose Σ(θ) may fill the whole (L·m) × (L·m) matrix: its elements
    are those of ``unstructured``, and it links and correlates environments."""

    links_environments = True
    environment_correlations = True
    linear_structure = False

    @classmethod
    def groups(cls, n_envs, m):
        return [list(range(n_envs * m))]

    def elements(self, theta: np.ndarray) -> np.ndarray:
        a, b = np.array(self.pairs).T
        return self.matrix(theta)[a, b]

    def block_name(self, blk) -> str:
        return self.prefix


class FactorAnalytic(_WholeMatrix):
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


class _EnvironmentByTrait(_WholeMatrix):
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


GENETIC_STRUCTURES = {c.key: c for c in (Homogeneous, Heterogeneous, Diagonal, Unstructured,
                                         *(factor_analytic(k) for k in range(1, FA_LISTED + 1)),
                                         CompoundSymmetry, Separable)}
RANDOM_STRUCTURES = GENETIC_STRUCTURES
RESIDUAL_STRUCTURES = {c.key: c for c in (Homogeneous, Heterogeneous)}
GENETIC = tuple(GENETIC_STRUCTURES)
RANDOM = tuple(RANDOM_STRUCTURES)
RESIDUAL = tuple(RESIDUAL_STRUCTURES)
_REGISTRIES = {"G": (GENETIC_STRUCTURES, "genetic"), "R": (RANDOM_STRUCTURES, "random term"),
               "E": (RESIDUAL_STRUCTURES, "residual")}
#: names a random term may not take: the genetic and residual matrices' prefixes
RESERVED_PREFIXES = ("G", "E")


def structure_class(kind: str, name: str) -> type[CovStructure]:
    """The class of the genetic (``kind='G'``), random-term (``'R'``) or residual (``'E'``)
    structure ``name``."""
    registry, what = _REGISTRIES[kind]
    fa = re.fullmatch(r"fa([1-9]\d*)", str(name))
    if fa is not None and kind != "E":
        return factor_analytic(int(fa.group(1)))
    if name not in registry:
        raise InputError(f"unknown {what} structure {name!r}; choose one of {', '.join(registry)}")
    return registry[name]


def make_structure(kind: str, name: str, envs: list, traits: list, prefix: str | None = None) -> CovStructure:
    """Build the genetic (``kind='G'``), random-term (``'R'``, named ``prefix``: its factor)
    or residual (``'E'``) structure called ``name``."""
    cls = structure_class(kind, name)
    what = _REGISTRIES[kind][1] + (f" {prefix!r}" if kind == "R" else "")
    if cls.per_environment and len(envs) < 2 and kind != "R":  # a random term's: one block
        raise InputError(
            f"{what} structure {name!r} needs at least two environments, the data have one "
            f"({envs[0]!r}); use 'homogeneous'"
        )
    m = len(traits)
    labels = (tuple((e, t) for e in envs for t in traits) if cls.per_environment
              else tuple((None, t) for t in traits))
    groups = cls.groups(len(envs), m)
    return cls(
        prefix=prefix or kind,
        name=name,
        labels=labels,
        pairs=_pairs_within(groups),
        blocks=tuple(np.array(b) for b in groups),
    )
