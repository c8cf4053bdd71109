"""How a model is fitted, as one value: :class:`FitOptions` (docs/design.md §4).

``hetvc.fit`` builds one from its keyword arguments, the simulation study keeps one per task
(and its ``tol``/``max_iter`` in ``study.json``), and the CLI passes one per model; nothing
else repeats the list.  What is fitted (data, structures, fixed effects, REML or ML) belongs
to the model (:func:`hetvc.build_model`), not here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral, Real

from .errors import InputError


@dataclass(frozen=True)
class FitOptions:
    """The engine, the optimizer's tolerance and budgets, whether PEVs are computed, and the
    BLAS threads.

    engine : ``"auto"`` (spectral where exact, else the cheaper of MME and dense), ``"mme"``,
        ``"dense"`` or ``"spectral"``.
    tol : convergence tolerance on the Newton decrement ½·score'·AI⁺·score.
    max_iter : most iterations, AI steps and fallback iterations together.
    time_limit : most seconds for the optimisation (``None``: no limit).
    pev : compute the BLUPs' prediction error variances.
    threads : BLAS threads of the fit (``threadpoolctl``).  1 by default: a fit is many small
        products and solves, where more threads gain little and, with a core busy, OpenBLAS's
        waiting threads can make it many times slower (3.98 s against 0.19 s with one thread,
        issue 15).  ``None`` keeps the process's BLAS settings; an int ≥ 1 sets them for the fit.
    """

    engine: str = "auto"
    tol: float = 1e-8
    max_iter: int = 200
    time_limit: float | None = None
    pev: bool = True
    threads: int | None = 1

    def __post_init__(self):
        # the engine's name is checked where it is chosen (hetvc.engines.choose_engine)
        if isinstance(self.tol, bool) or not (isinstance(self.tol, Real) and self.tol > 0):
            raise InputError(f"tol must be a positive number, not {self.tol!r}")
        if isinstance(self.max_iter, bool) or not (isinstance(self.max_iter, Integral) and self.max_iter >= 1):
            raise InputError(f"max_iter must be at least 1, not {self.max_iter}")
        if self.time_limit is not None and (isinstance(self.time_limit, bool) or not isinstance(self.time_limit, Real)
                                            or not self.time_limit > 0):
            raise InputError(f"time_limit must be a positive number of seconds, not {self.time_limit}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, Integral)
                                         or self.threads < 1):
            raise InputError(f"threads must be a whole number at least 1 or None, not {self.threads!r}")
        if self.threads is not None:  # a plain int for threadpoolctl (numpy's integers are not)
            object.__setattr__(self, "threads", int(self.threads))

    def to_dict(self) -> dict:
        return asdict(self)
