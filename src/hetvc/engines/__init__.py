"""Engines: exact ways to compute ℓ, score and AI for a model (docs/design.md §3)."""

from typing import NamedTuple

from ..errors import InputError
from ..kinship.pedigree import PedigreeRelationship
from .base import Engine, Evaluation, NotPositiveDefinite, Solution
from .completed import CompletedEngine, completed_plan
from .dense import DenseEngine, independent_blocks
from .mme import MMEEngine, MMENotApplicable
from .spectral import EigenCache, KinshipEigen, NotApplicable, SpectralEngine, SpectralNotApplicable, plan

__all__ = [
    "Engine", "Evaluation", "Solution", "NotPositiveDefinite", "DenseEngine", "SpectralEngine", "CompletedEngine",
    "MMEEngine",
    "EigenCache", "KinshipEigen", "EngineChoice", "NotApplicable", "choose_engine",
]

ENGINES = ("auto", "dense", "spectral", "mme")

#: an MME iteration's fixed cost in flops (its Python work per evaluation), and the factor by
#: which it must undercut the dense engine's Σ_c N_c³ to be chosen
MME_OVERHEAD, MME_MARGIN = 2e8, 2.0


class EngineChoice(NamedTuple):
    """The engine a fit uses and why (one line, kept as ``FitResult.engine_reason``)."""

    engine: Engine
    reason: str


def choose_engine(model, engine: str = "auto", eigen: EigenCache | None = None) -> EngineChoice:
    """The engine to use for ``model``, and why.

    ``"auto"``: the spectral engine whenever it is exact for the design (see
    :func:`hetvc.engines.spectral.plan`), or on the layout completed by the few missing cells
    that keep it from applying (:func:`hetvc.engines.completed.completed_plan`); else the
    mixed-model equations (:class:`MMEEngine`)
    when a relationship is a pedigree's sparse A⁻¹, or when an MME iteration is estimated at
    well under the dense engine's (few random effects for many values, sparse relationships);
    else the dense engine, with the reason, e.g.
    ``"dense: 1 missing trait value (first: data row 18, trait 't2'); ..."``.
    ``"spectral"`` (which takes a completed layout too) and ``"mme"`` force one and raise :class:`~hetvc.errors.InputError` when it
    does not apply; ``"dense"`` forces the dense engine.  ``eigen``: an :class:`EigenCache`
    whose eigendecompositions of K are reused (and extended) by the spectral engine.
    """

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    if eigen is not None and not isinstance(eigen, EigenCache):
        raise InputError(
            f"eigen must be a hetvc.engines.EigenCache (or None), not {type(eigen).__name__}")
    if engine == "dense":
        return _dense(model, "forced by engine='dense'")
    if engine == "mme":
        try:
            return _mme(model, MMEEngine(model), "forced by engine='mme'")
        except MMENotApplicable as err:
            raise InputError(f"engine='mme' does not apply to this model: {err.reason}") from None
    pedigrees = [f.name for f in [model.genetic_factor()] + [f for f, _ in model.random]
                 if isinstance(f.relationship, PedigreeRelationship)]
    if pedigrees and engine == "auto":
        try:
            return _mme(model, MMEEngine(model), f"relationship of {', '.join(map(repr, pedigrees))} given by "
                        "a pedigree's sparse A⁻¹")
        except MMENotApplicable as err:
            raise InputError(f"the mixed-model equations, which a pedigree's A⁻¹ needs, do not apply: "
                             f"{err.reason}") from None
    spectral_plan = plan(model)
    if isinstance(spectral_plan, NotApplicable):
        completed = _completed(model, eigen, engine)
        if isinstance(completed, EngineChoice):
            return completed
        why = spectral_plan.reason if completed in spectral_plan.reason else f"{spectral_plan.reason}; {completed}"
        if engine == "spectral":
            raise InputError(f"engine='spectral' does not apply to these data: {why}")
        return _mme_or_dense(model, why)
    try:
        eng = SpectralEngine(model, spectral_plan, eigen=eigen)
    except SpectralNotApplicable as err:
        if engine == "spectral":
            raise
        return _mme_or_dense(model, err.reason)
    prefix = "forced by engine='spectral'; " if engine == "spectral" else ""
    return EngineChoice(eng, f"{prefix}{spectral_plan.description} [{eng.summary()}]")


def _completed(model, eigen, engine: str) -> EngineChoice | str:
    """The spectral engine on the completed layout, or why not."""
    cplan = completed_plan(model)
    if isinstance(cplan, NotApplicable):
        return cplan.reason
    try:
        eng = CompletedEngine(model, cplan, eigen=eigen)
    except SpectralNotApplicable as err:
        return err.reason
    prefix = "forced by engine='spectral'; " if engine == "spectral" else ""
    return EngineChoice(eng, f"{prefix}{cplan.description} [{eng.summary()}]")


def _dense(model, why: str) -> EngineChoice:
    """The dense engine, with why and how V splits: "dense: <why> [3 independent blocks of …]"."""
    eng = DenseEngine(model)
    return EngineChoice(eng, f"dense: {why} [{eng.summary()}]")


def _mme(model, eng: MMEEngine, why: str) -> EngineChoice:
    """The MME engine with its dense relationships inverted: "mme: <why> [sparse C: …]"."""
    eng.prepare()
    d = model.design
    return EngineChoice(eng, f"mme: {why}; {eng.q:,} equations for {d.n_obs:,} values [{eng.summary()}]")


def _mme_or_dense(model, why: str) -> EngineChoice:
    """The MME engine when an iteration costs well under the dense engine's (Σ_c N_c³ over V's
    independent blocks), else the dense engine; ``why``: why the spectral engine does not apply."""
    dense_flops = float(sum(len(b) ** 3 for b in independent_blocks(model.terms(), model.design.n_obs)))
    if dense_flops > MME_MARGIN * MME_OVERHEAD:
        try:
            eng = MMEEngine(model)
            if MME_MARGIN * (eng.flops + MME_OVERHEAD) < dense_flops:
                return _mme(model, eng, f"an iteration ~{eng.flops:.1e} flops against ~{dense_flops:.1e} for "
                                        f"the dense engine; {why}")
        except (MMENotApplicable, InputError):  # a singular K, or too large: the dense engine says so
            pass
    return _dense(model, why)
