"""Engines: exact ways to compute ℓ, score and AI for a model (DESIGN.md §3)."""

from .base import Engine, Evaluation, NotPositiveDefinite, Solution
from .dense import DenseEngine

__all__ = ["Engine", "Evaluation", "Solution", "NotPositiveDefinite", "DenseEngine", "choose_engine"]


def choose_engine(model, engine: str = "auto"):
    """The engine to use for ``model``, and why (a short sentence for the fit record)."""
    if engine not in ("auto", "dense"):
        from ..errors import InputError

        raise InputError(f"engine must be 'auto' or 'dense', not {engine!r}")
    reason = "forced by engine='dense'" if engine == "dense" else "the only engine for this design"
    return DenseEngine(model), reason
