"""The linear structures: Σ's free elements are the parameters (docs/design.md §1)."""

from __future__ import annotations

from .base import CovStructure


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
