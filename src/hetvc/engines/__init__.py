"""Engines: exact ways to compute ℓ, score and AI for a model (docs/design.md §3)."""

from typing import NamedTuple

from ..errors import InputError
from .base import Engine, Evaluation, NotPositiveDefinite, Solution
from .dense import DenseEngine
from .spectral import EigenCache, KinshipEigen, NotApplicable, SpectralEngine, SpectralNotApplicable, plan

__all__ = [
    "Engine", "Evaluation", "Solution", "NotPositiveDefinite", "DenseEngine", "SpectralEngine",
    "EigenCache", "KinshipEigen", "EngineChoice", "NotApplicable", "choose_engine",
]

ENGINES = ("auto", "dense", "spectral")


class EngineChoice(NamedTuple):
    """The engine a fit uses and why (one line, kept as ``FitResult.engine_reason``)."""

    engine: Engine
    reason: str


def choose_engine(model, engine: str = "auto", eigen: EigenCache | None = None) -> EngineChoice:
    """The engine to use for ``model``, and why.

    ``"auto"``: the spectral engine whenever it is exact for the design (see
    :func:`hetvc.engines.spectral.plan`), else the dense engine with the reason, e.g.
    ``"dense: 1 missing trait value (first: data row 18, trait 't2'); ..."``.
    ``"spectral"`` forces it and raises :class:`~hetvc.errors.InputError` when it does not
    apply; ``"dense"`` forces the dense engine.  ``eigen``: an :class:`EigenCache` whose
    eigendecompositions of K are reused (and extended) by the spectral engine.
    """

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    if eigen is not None and not isinstance(eigen, EigenCache):
        raise InputError(
            f"eigen must be a hetvc.engines.EigenCache (or None), not {type(eigen).__name__}")
    if engine == "dense":
        return _dense(model, "forced by engine='dense'")
    spectral_plan = plan(model)
    if isinstance(spectral_plan, NotApplicable):
        if engine == "spectral":
            raise InputError(f"engine='spectral' does not apply to these data: {spectral_plan.reason}")
        return _dense(model, spectral_plan.reason)
    try:
        eng = SpectralEngine(model, spectral_plan, eigen=eigen)
    except SpectralNotApplicable as err:
        if engine == "spectral":
            raise
        return _dense(model, err.reason)
    prefix = "forced by engine='spectral'; " if engine == "spectral" else ""
    return EngineChoice(eng, f"{prefix}{spectral_plan.description} [{eng.summary()}]")


def _dense(model, why: str) -> EngineChoice:
    """The dense engine, with why and how V splits: "dense: <why> [3 independent blocks of …]"."""
    eng = DenseEngine(model)
    return EngineChoice(eng, f"dense: {why} [{eng.summary()}]")
