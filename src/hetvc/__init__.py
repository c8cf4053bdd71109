"""hetvc: multivariate mixed models with location-specific genetic variance components."""

from .errors import ConvergenceError, HetvcError, InputError

__all__ = ["HetvcError", "InputError", "ConvergenceError"]
