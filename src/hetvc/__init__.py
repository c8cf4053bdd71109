"""hetvc: multivariate mixed models with location-specific genetic variance components.

    y = X b + Z u + e,   Cov(u[j,l,i], u[j',l',i']) = K[j,j'] · ΣG[(l,i),(l',i')]

fitted by REML with the average-information algorithm.  Start with :func:`fit` (or its two
steps, :func:`build_model` then :func:`fit_model` under :class:`FitOptions`).
"""

from .comparison import compare
from .cv import cross_validate
from .design_notes import describe_data
from .errors import ConvergenceError, HetvcError, InputError
from .fitting import build_model, fit, fit_model
from .fixed_effects import resolve_fixed
from .kinship import (check_kinship, grm, inbreeding, pedigree_inverse, pedigree_kinship, read_genotypes,
                      read_kinship, read_pedigree, write_kinship)
from .options import FitOptions
from .phenotypes import read_phenotypes
from .random_terms import Random
from .results import FitResult, load

__all__ = ["fit", "build_model", "Random", "cross_validate", "fit_model", "FitOptions", "compare", "load", "FitResult", "HetvcError",
           "InputError", "ConvergenceError", "read_phenotypes", "resolve_fixed", "describe_data",
           "read_kinship", "write_kinship", "check_kinship", "grm", "read_genotypes", "read_pedigree",
           "pedigree_kinship", "pedigree_inverse", "inbreeding"]
