"""The covariance structure: a symmetric matrix Σ with a pattern of free elements, its
parameters θ, positive-definite blocks and names (docs/design.md §1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np


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
    #: Σ is linear in θ (θ are its free elements)
    linear: ClassVar[bool] = True

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
        return env * n_traits + trait if self.per_environment else trait.copy()

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
    def factor_pattern(self) -> np.ndarray | None:
        """The pattern (d × d', bool) of a factor F with Σ = FF' that the structure supplies for
        the mixed-model equations (u = (I ⊗ F) v, docs/design.md §3, MME); ``None``: they use the
        Cholesky factor of every block (d' = d)."""
        return None

    def factor(self, theta: np.ndarray) -> np.ndarray:
        """F (d × d') on :meth:`factor_pattern` with Σ(θ) = FF'."""
        raise NotImplementedError

    def elements(self, theta: np.ndarray) -> np.ndarray:
        """The values σ of the matrix elements ``pairs`` at θ (θ itself for a linear structure)."""
        return np.asarray(theta)

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """∂σ/∂θ (len(pairs) × n_params): the identity for a linear structure."""
        return np.eye(self.n_params)

    def score_curvature(self, theta: np.ndarray, score: np.ndarray) -> np.ndarray | None:
        """Σ_e s_e ∂²σ_e/∂θ∂θ' for a score s by the elements (n_params × n_params): the part of
        ℓ's Hessian in θ that the chain-rule AI, J'·AI_σ·J, leaves out (docs/design.md §4).
        ``None`` where it is zero (a linear structure) or not worked out (csh, separable: their
        steps use the AI alone)."""
        return None

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


def pairs_within(groups: list[list[int]]) -> tuple:
    """(a, b), a ≥ b, of the lower triangle of every group, group by group, row by row."""
    return tuple((a, b) for g in groups for ai, a in enumerate(g) for b in g[: ai + 1])
