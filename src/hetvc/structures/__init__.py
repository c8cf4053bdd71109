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
faK            L·m, l·m + i       nonlinear: ΛΛ' + Ψ, θ = (Λ lower triangular, ψ)
csh            L·m, l·m + i       nonlinear: D½[(1−ρ)I + ρJ]D½ ⊗ Σ_trait
separable      L·m, l·m + i       nonlinear: Σ_env ⊗ Σ_trait
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
there.  Nothing outside this package compares a structure's name.  One module a kind: :mod:`.base`
(the class every structure is), :mod:`.linear`, :mod:`.factor_analytic`, :mod:`.kronecker`.
"""

from __future__ import annotations

import re

import numpy as np

from ..errors import InputError
from .base import CovStructure, pairs_within
from .factor_analytic import FA_LISTED, FactorAnalytic, factor_analytic, lower_triangular
from .kronecker import CompoundSymmetry, Separable
from .linear import Diagonal, Heterogeneous, Homogeneous, Unstructured

__all__ = ["CovStructure", "Homogeneous", "Heterogeneous", "Diagonal", "Unstructured", "FactorAnalytic",
           "CompoundSymmetry", "Separable", "factor_analytic", "lower_triangular", "GENETIC_STRUCTURES",
           "RANDOM_STRUCTURES", "RESIDUAL_STRUCTURES", "GENETIC", "RANDOM", "RESIDUAL", "RESERVED_PREFIXES",
           "structure_class", "make_structure", "param_slices"]


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


def param_slices(structures) -> list[slice]:
    """Where each structure's parameters sit in θ, which stacks them in the order given."""
    out, k = [], 0
    for s in structures:
        out.append(slice(k, k + s.n_params))
        k += s.n_params
    return out


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
        pairs=pairs_within(groups),
        blocks=tuple(np.array(b) for b in groups),
    )
