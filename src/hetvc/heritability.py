"""Heritability from genetic and residual variances (docs/design.md §5), one formula for the
fitted model (:mod:`hetvc.results`) and the simulated truth (:mod:`hetvc.simulate`).

With g_il and e_il the genetic and residual variances of trait i in environment l (L×m arrays;
complex ones too, for complex-step derivatives) and π_il the share of trait i's records in
environment l:

    h²_il = g_il / (g_il + e_il)
    h²_i  = Σ_l π_il g_il / Σ_l π_il (g_il + e_il)       (pooled; the paper's eq. 12 as a proportion)
"""

from __future__ import annotations

import numpy as np


def per_environment(g: np.ndarray, e: np.ndarray) -> np.ndarray:
    """h²_il (L×m)."""
    return g / (g + e)


def pooled(g: np.ndarray, e: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """h²_i (m); ``shares`` π is L×m, or L (the same for every trait)."""
    pi = np.asarray(shares, dtype=float)
    pi = pi[:, None] if pi.ndim == 1 else pi
    return (pi * g).sum(0) / (pi * (g + e)).sum(0)
