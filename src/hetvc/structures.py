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
unstructured   L·m, l·m + i       all (full G×E)
============== ================== ==========================================

Residual structures (kernel I, unit = record): ``homogeneous`` (d = m, one ΣE) and
``heterogeneous`` (d = L·m, one ΣE_l per environment).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import InputError

GENETIC = ("homogeneous", "heterogeneous", "unstructured")
RESIDUAL = ("homogeneous", "heterogeneous")


@dataclass(frozen=True)
class CovStructure:
    """A symmetric covariance matrix with a fixed pattern of free elements.

    ``pairs[k] = (a, b)`` with ``a >= b`` is the matrix element of parameter k; ``blocks`` are
    the index sets of the independent diagonal blocks that must each be positive definite.
    ``labels[a] = (environment or None, trait)`` names row a.
    """

    prefix: str
    name: str
    labels: tuple
    pairs: tuple
    blocks: tuple

    @property
    def dim(self) -> int:
        return len(self.labels)

    @property
    def n_params(self) -> int:
        return len(self.pairs)

    @property
    def env_specific(self) -> bool:
        """True when the matrix index depends on the environment (d = L·m)."""
        return self.labels[0][0] is not None

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


def make_structure(kind: str, name: str, envs: list, traits: list) -> CovStructure:
    """Build the genetic (``kind='G'``) or residual (``kind='E'``) structure called ``name``."""
    allowed = GENETIC if kind == "G" else RESIDUAL
    what = "genetic" if kind == "G" else "residual"
    if name not in allowed:
        raise InputError(f"unknown {what} structure {name!r}; choose one of {', '.join(allowed)}")
    m = len(traits)
    if name == "homogeneous":
        labels = tuple((None, t) for t in traits)
        groups = [list(range(m))]
        blocks = groups
    else:
        if len(envs) < 2:
            raise InputError(
                f"{what}={name!r} needs at least two environments, the data have one "
                f"({envs[0]!r}); use {what}='homogeneous'"
            )
        labels = tuple((e, t) for e in envs for t in traits)
        per_env = [list(range(l * m, (l + 1) * m)) for l in range(len(envs))]
        if name == "heterogeneous":
            groups = blocks = per_env
        else:  # unstructured
            groups = blocks = [list(range(len(labels)))]
    return CovStructure(
        prefix=kind,
        name=name,
        labels=labels,
        pairs=_pairs_within(groups),
        blocks=tuple(np.array(b) for b in blocks),
    )
