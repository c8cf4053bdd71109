"""The (environment, trait) layout of every full covariance matrix (docs/design.md §1).

Rows of a full ΣG or ΣE, and columns of the BLUPs, are ordered environment-major: row
a = l·m + i is trait i in environment l (L environments, m traits).  :class:`Layout` is the one
owner of that order; a structure whose rows are traits only (``homogeneous``) is expanded to
it by :meth:`CovStructure.full <hetvc.structures.CovStructure.full>`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Layout:
    """Environments × traits, environment-major: row ``l·m + i``."""

    envs: tuple
    traits: tuple

    def __init__(self, envs, traits):
        object.__setattr__(self, "envs", tuple(envs))
        object.__setattr__(self, "traits", tuple(traits))

    @property
    def n_envs(self) -> int:
        return len(self.envs)

    @property
    def n_traits(self) -> int:
        return len(self.traits)

    @property
    def size(self) -> int:
        return self.n_envs * self.n_traits

    def row(self, env: int | np.ndarray, trait: int | np.ndarray):
        """Row of trait ``trait`` in environment ``env`` (positions, or arrays of them)."""
        return env * self.n_traits + trait

    def env_rows(self, env: int) -> slice:
        """The m rows of environment ``env``."""
        return slice(env * self.n_traits, (env + 1) * self.n_traits)

    def trait_rows(self, trait: int) -> np.ndarray:
        """The L rows of trait ``trait``, one per environment."""
        return self.row(np.arange(self.n_envs), trait)

    def env_block(self, M: np.ndarray, env: int) -> np.ndarray:
        """The m×m block of environment ``env`` of a full matrix."""
        rows = self.env_rows(env)
        return M[rows, rows]

    def mean_env_block(self, M: np.ndarray) -> np.ndarray:
        """The average over environments of the m×m diagonal blocks of a full matrix."""
        return sum(self.env_block(M, l) for l in range(self.n_envs)) / self.n_envs

    def labels(self) -> pd.MultiIndex:
        """(environment, trait) of every row."""
        return pd.MultiIndex.from_tuples([(e, t) for e in self.envs for t in self.traits],
                                         names=["env", "trait"])
