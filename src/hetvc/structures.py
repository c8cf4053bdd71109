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

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import InputError


@dataclass(frozen=True)
class CovStructure:
    """A symmetric covariance matrix with a fixed pattern of free elements.

    ``pairs[k] = (a, b)`` with ``a >= b`` is the matrix element of parameter k; ``blocks`` are
    the index sets of the independent diagonal blocks that must each be positive definite.
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

    def project(self, matrix: np.ndarray, scale: np.ndarray, floor: float) -> np.ndarray:
        """Nearest matrix (in the scaled metric) whose scaled eigenvalues are all ≥ ``floor``."""
        out = matrix.copy()
        s = np.sqrt(scale)
        for blk in self.blocks:
            ss = np.outer(s[blk], s[blk])
            vals, vecs = np.linalg.eigh(matrix[np.ix_(blk, blk)] / ss)
            clipped = (vecs * np.maximum(vals, floor)) @ vecs.T
            out[np.ix_(blk, blk)] = (clipped + clipped.T) / 2 * ss
        return out


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


GENETIC_STRUCTURES = {c.key: c for c in (Homogeneous, Heterogeneous, Diagonal, Unstructured)}
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
