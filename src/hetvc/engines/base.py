"""What every engine computes for a model at a given θ (docs/design.md §2–3).

An engine answers two questions and holds no other state than its precomputations:

* :meth:`Engine.evaluate` — ℓ (REML or ML), the score ∂ℓ/∂θ and the average information;
* :meth:`Engine.solve` — BLUEs with their covariance, BLUPs of u for every genotype in K
  (and of every random term's levels), and, on request, their prediction error variances.

With P = V⁻¹ − V⁻¹X(X'V⁻¹X)⁻¹X'V⁻¹ (REML; ML uses V⁻¹ in the trace and AI terms):

    ℓ_REML = −½ [(N−p) log 2π + log|V| + log|X'V⁻¹X| + y'Py]
    ℓ_ML   = −½ [N log 2π + log|V| + y'Py]
    ∂ℓ/∂θ_k = −½ [tr(P V_k) − y'P V_k P y]
    AI[k,l] = ½ y'P V_k P V_l P y
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

LOG_2PI = float(np.log(2 * np.pi))


class NotPositiveDefinite(ArithmeticError):
    """V (or X'V⁻¹X) is not positive definite at this θ."""


@dataclass
class Evaluation:
    loglik: float
    score: np.ndarray | None = None
    ai: np.ndarray | None = None
    #: Σ_e s_e ∂²σ_e/∂θ∂θ' for a nonlinear structure (``Model.to_parameters``); None: zero
    curvature: np.ndarray | None = None


@dataclass
class Solution:
    beta: np.ndarray  # (p,) BLUEs
    beta_cov: np.ndarray  # (p, p) (X'V⁻¹X)⁻¹
    blup: np.ndarray  # (q, dG) û for every genotype in K and every row of ΣG
    fitted: np.ndarray  # (N,) X b̂ + Z û + Σ_t Z_t û_t
    pev: np.ndarray | None = None  # (q, dG) Var(u − û)
    #: per random term beyond the genetic one: (BLUPs (levels, d_t), PEVs or None)
    random: dict = field(default_factory=dict)


def restricted_constant(n_obs: int, rank_x: int, method: str) -> float:
    """The 2π term of ℓ: (N − p) log 2π for REML, N log 2π for ML."""
    return (n_obs - rank_x if method == "reml" else n_obs) * LOG_2PI


class Engine:
    """Interface of an engine; see the module docstring for the quantities."""

    name = "abstract"
    model = None  # the Model an engine serves
    flops = 0.0  # the estimated work of one evaluation (0: negligible, as the spectral engine's)
    #: whether the factor of an evaluation of ℓ alone is kept for the derivatives at the same θ
    #: (the optimizer then evaluates trial steps without them)
    keeps_factor = False
    _kept = None  # (θ's bytes, its factor) of the θ last factored, where the engine keeps its factor

    def evaluate(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        """ℓ, score and AI by the parameters θ: the engine's evaluation by the matrix elements
        (:meth:`evaluate_elements`), through the chain rule for a nonlinear structure."""
        return self.model.to_parameters(theta, self.evaluate_elements(theta, derivatives))

    def evaluate_elements(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        """ℓ, and its score and AI by the elements σ of the matrices (``model.elements()``)."""
        raise NotImplementedError

    def _kept_factor(self, theta: np.ndarray, make):
        """``make(θ)``, kept for the θ last asked for, so that the derivatives at a θ whose ℓ was
        evaluated alone (a trial step) reuse its factor; the one kept before is dropped first
        (its memory is freed, or the storage it shares is overwritten, even if ``make`` fails)."""
        key = np.asarray(theta, dtype=float).tobytes()
        if self._kept is None or self._kept[0] != key:
            self._kept = None
            self._kept = (key, make(theta))
        return self._kept[1]

    def solve(self, theta: np.ndarray, pev: bool = False) -> Solution:
        raise NotImplementedError
