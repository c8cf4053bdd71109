"""Engines: exact ways to compute ℓ, score and AI for a model (docs/design.md §3)."""

from .base import Engine, Evaluation, NotPositiveDefinite, Solution
from .dense import DenseEngine
from .spectral import EigenCache, KinshipEigen, SpectralEngine

__all__ = [
    "Engine", "Evaluation", "Solution", "NotPositiveDefinite", "DenseEngine", "SpectralEngine",
    "EigenCache", "KinshipEigen", "choose_engine",
]

ENGINES = ("auto", "dense", "spectral")


def choose_engine(model, engine: str = "auto", eigen: EigenCache | None = None):
    """The engine to use for ``model``, and why (one line for the fit record).

    ``"auto"``: the spectral engine whenever it is exact for the design (see
    :func:`hetvc.engines.spectral.plan`), else the dense engine with the reason, e.g.
    ``"dense: 1 missing trait value (first: data row 18, trait 't2'); ..."``.
    ``"spectral"`` forces it and raises :class:`~hetvc.errors.InputError` when it does not
    apply; ``"dense"`` forces the dense engine.  ``eigen``: an :class:`EigenCache` whose
    eigendecompositions of K are reused (and extended) by the spectral engine.
    """
    from ..errors import InputError
    from .spectral import plan

    if engine not in ENGINES:
        raise InputError(f"engine must be one of {', '.join(map(repr, ENGINES))}, not {engine!r}")
    if eigen is not None and not isinstance(eigen, EigenCache):
        raise InputError(
            f"eigen must be a hetvc.engines.EigenCache (or None), not {type(eigen).__name__}")
    if engine == "dense":
        return DenseEngine(model), "dense: forced by engine='dense'"
    layout, reason = plan(model)
    if layout is None:
        if engine == "spectral":
            raise InputError(f"engine='spectral' does not apply to these data: {reason.removeprefix('dense: ')}")
        return DenseEngine(model), reason
    try:
        eng = SpectralEngine(model, layout, eigen=eigen)
    except InputError as err:
        if engine == "spectral":
            raise
        return DenseEngine(model), f"dense: {err}".replace("the spectral engine does not apply: ", "")
    prefix = "forced by engine='spectral'; " if engine == "spectral" else ""
    return eng, f"{prefix}{reason} [{eng.summary()}]"
