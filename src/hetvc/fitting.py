"""``hetvc.fit``: data + kinship + structures → a fitted :class:`~hetvc.results.FitResult`.

A fit is a composition of two public steps (as lme4's ``lFormula`` → ``optimizeLmer``):

* :func:`build_model` — validate the data and K (:mod:`hetvc.data`, :mod:`hetvc.kinship`), lay
  out the model (:mod:`hetvc.model`) and check that its structures can be estimated from the
  design (:mod:`hetvc.diagnostics`);
* :func:`fit_model` — choose an engine (:mod:`hetvc.engines`), maximise ℓ by AI-REML
  (:mod:`hetvc.optimize`) under :class:`~hetvc.options.FitOptions`, then compute BLUEs/BLUPs
  and wrap everything as plain data, all with the options' BLAS threads (one by default).

:func:`fit` is the two in one call.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from .data import build_design
from .diagnostics import check_design, design_notes, runaway, unidentified
from .engines import choose_engine
from .errors import InputError
from .kinship import kinship_matrix
from .kinship.pedigree import Pedigree, PedigreeRelationship
from .model import Model
from .optimize import FLOOR, maximize, newton_step
from .options import FitOptions
from .random_terms import resolve_random
from .results import FitResult
from .structures import make_structure, structure_class


def _start_theta(model: Model, start) -> np.ndarray:
    if start is None:
        return model.start()
    if isinstance(start, FitResult):
        return _theta_from_result(model, start)
    if isinstance(start, dict):
        names = ["G"] + [s.prefix for _, s in model.random] + ["E"]
        try:
            return model.join(*[np.asarray(start[n], float) for n in names])
        except (KeyError, IndexError, ValueError) as err:
            wanted = ", ".join(f"{n!r}: matrix" for n in names)
            raise InputError(f"start must be {{{wanted}}} of the model's sizes: {err}") from None
    theta = np.asarray(start, dtype=float).ravel()
    if theta.size != model.n_params:
        raise InputError(f"start has {theta.size} values, the model has {model.n_params} parameters")
    return theta


def _theta_from_result(model: Model, result: FitResult) -> np.ndarray:
    """Start from another fit's ΣG, Σ_t and ΣE (e.g. the homogeneous fit for the heterogeneous
    one); a term the other fit does not have starts at the default."""
    full = result.term_covariances()
    default = model.matrices(model.start())
    parts = []
    for s, M in zip(model.structures, default):
        parts.append(s.from_full(full[s.prefix], result.layout) if s.prefix in full else s.theta(M))
    return np.concatenate(parts)


def fit(
    data: pd.DataFrame,
    K,
    traits,
    env: str | None = None,
    id: str = "id",
    genetic: str = "heterogeneous",
    residual: str = "homogeneous",
    fixed: str | None = None,
    random=None,
    method: str = "reml",
    engine: str = "auto",
    start=None,
    jitter: float | None = None,
    tol: float = 1e-8,
    max_iter: int = 200,
    pev: bool = True,
    eigen=None,
    time_limit: float | None = None,
    progress=None,
    threads: int | None = 1,
) -> FitResult:
    """Fit the multivariate mixed model y = Xb + Zu + e by AI-REML (or ML).

    Parameters
    ----------
    data : one row per record (plot, animal): ``id``, ``env`` and the trait columns.
    K : labelled relationship matrix (DataFrame) or a path to one; a pedigree
        (:func:`hetvc.read_pedigree`), carried by its sparse inverse A⁻¹ so that the MME engine
        never forms A; ``None`` for an iid genetic
        effect (K = identity over the ids in the data, :func:`identity_kinship`: trials
        without markers or pedigree; h² is then broad-sense, at the level of a single record).
    traits : trait column names (a single name is allowed).
    env : environment column; ``None`` for a single environment.
    genetic : ``"homogeneous"`` (one Σg everywhere), ``"heterogeneous"`` (Σg_l per
        environment, no covariance across), ``"diagonal"`` (a variance per trait ×
        environment, no covariances) or ``"unstructured"`` (full G×E).
    residual : ``"homogeneous"`` or ``"heterogeneous"`` (ΣE_l per environment).
    fixed : formula of record-level covariates, each with a slope per trait
        (``"~ rep + x"``); a mean per trait × environment is always included.
    random : random terms beyond the genetic one (:mod:`hetvc.random_terms`): column names,
        interactions ``"env:block"``, or :class:`hetvc.Random` with a relationship matrix
        over the levels and a structure; each has an m×m Σ across traits by default.
    method : ``"reml"`` or ``"ml"``.
    engine : ``"auto"`` (spectral where exact, else the cheaper of the mixed-model equations and
        dense), ``"mme"``, ``"dense"`` or ``"spectral"`` (docs/design.md §3).
    eigen : a :class:`hetvc.engines.EigenCache` reused across fits on the same K.
    start : ``{"G": ..., "E": ...}``, a θ vector or another :class:`FitResult`.
    jitter : add ``jitter``·mean(diag K)·I to a K that is not positive semi-definite.
    tol : convergence tolerance on the Newton decrement ½·score'·AI⁻¹·score.
    max_iter : most iterations, AI steps and fallback iterations together.
    time_limit : most seconds for the optimisation (``None``: no limit); a fit stopped by it
        is returned with ``record["status"] == "time limit"`` and is not converged.
    progress : ``progress(record)`` is called after every iteration with the
        :class:`~hetvc.optimize.OptimizationRecord` so far (``record.history[-1]`` is the
        iteration just taken: ℓ, step, method, evaluations, seconds).
    pev : compute prediction error variances of the BLUPs.
    threads : BLAS threads of the fit, the checks of K included: 1 by default (a fit is many
        small products, and OpenBLAS's waiting threads slow it many times over when a core is
        busy); ``None`` keeps the process's BLAS settings (see :class:`~hetvc.options.FitOptions`).
    """
    options = FitOptions(engine=engine, tol=tol, max_iter=max_iter, time_limit=time_limit, pev=pev,
                         threads=threads)
    # K's checks too (as in the CLI): with a core busy they took 1.5 s with 2 threads, 0.04 s with 1
    with threadpool_limits(options.threads):
        model = build_model(data, K, traits, env=env, id=id, genetic=genetic, residual=residual,
                            fixed=fixed, random=random, method=method, jitter=jitter)
        return fit_model(model, options, start=start, eigen=eigen, progress=progress)


IDENTITY_NOTE = ("no relationship matrix (K = identity over the ids in the data): the genetic effects "
                 "are independent, so ΣG is the variance among genotypes and h² is broad-sense, at the "
                 "level of a single record (plot), not narrow-sense nor of a genotype mean")


def relationship(K, data: pd.DataFrame, id: str = "id", traits=None):
    """K for a fit: the identity over the data's ids for ``None`` (:func:`identity_kinship`), a
    pedigree carried by its sparse A⁻¹ (:class:`PedigreeRelationship`), anything else (a labelled
    matrix or a path to one) as given."""
    if K is None:
        return identity_kinship(data, id, traits)
    if isinstance(K, Pedigree):
        return PedigreeRelationship(K)
    return K


def identity_kinship(data: pd.DataFrame, id: str = "id", traits=None) -> pd.DataFrame:
    """K = I over the ids of ``data`` (labelled by id, in order of first appearance): an iid
    genetic effect, for trials without markers or pedigree.  With ``traits``, only the ids of
    records with a trait value count (a record without any plays no part in a fit)."""
    if not isinstance(data, pd.DataFrame):
        raise InputError("data must be a pandas DataFrame (read your file with pandas first)")
    if id not in data.columns:
        raise InputError(f"column {id!r} not in the data; available: {', '.join(map(str, data.columns[:12]))}")
    rows = data
    if traits is not None:
        present = [t for t in ([traits] if isinstance(traits, str) else list(traits)) if t in data.columns]
        if present:
            rows = data[data[present].notna().any(axis=1)]
    col = rows[id]
    col = col[col.notna() & (col.astype(str).str.strip() != "")]
    ids = [str(i) for i in pd.unique(col.astype(str))]
    if not ids:
        raise InputError(f"id column {id!r} holds no ids")
    return pd.DataFrame(np.eye(len(ids)), index=ids, columns=ids)


def single_record_note(design) -> list[str]:
    """With K = identity and a single record per genotype (and trait) the genetic and residual
    effects are the same thing: a note that their split is not identified by the data."""
    pairs = pd.Series(list(zip(design.geno.tolist(), design.trait.tolist())))
    if pairs.duplicated().any():
        return []
    return ["every genotype has a single record per trait: with K = identity its genetic value and "
            "the residual are not separable, so the split of the variance between ΣG and ΣE (and "
            "h²) is not identified; replicate genotypes, model the residual spatially, or use a "
            "relationship matrix"]


def build_model(data: pd.DataFrame, K, traits, env: str | None = None, id: str = "id",
                genetic: str = "heterogeneous", residual: str = "homogeneous", fixed: str | None = None,
                random=None, method: str = "reml", jitter: float | None = None) -> Model:
    """The model ``hetvc.fit`` would fit (arguments as there), validated and checked: every
    refusal of the data happens here, before any optimisation."""
    if isinstance(traits, str):
        traits = [traits]
    if env is None:  # one environment: a structure that reduces to another there is that one
        genetic = structure_class("G", genetic).one_environment or genetic
        residual = structure_class("E", residual).one_environment or residual
    identity = K is None
    K = relationship(K, data, id, traits)
    if isinstance(K, PedigreeRelationship):
        Kmat, ids = K, K.ids
    else:
        Kmat, ids = kinship_matrix(K, jitter)
    design = build_design(data, Kmat, ids, traits, env, id, fixed)
    if identity:
        design.notes[:0] = [IDENTITY_NOTE] + single_record_note(design)
    terms, notes = resolve_random(data, design, random, jitter)
    design.notes += notes
    model = Model.build(design, genetic, residual, method, random=terms)
    if model.n_params >= design.n_obs - design.X.shape[1]:
        raise InputError(
            f"{model.n_params} covariance parameters but only {design.n_obs - design.X.shape[1]} "
            "residual degrees of freedom; use a simpler structure or more data"
        )
    check_design(model)
    return model


def fit_model(model: Model, options: FitOptions = FitOptions(), start=None, eigen=None,
              progress=None, cheaper=()) -> FitResult:
    """Fit a model from :func:`build_model` under ``options`` (``start``, ``eigen`` and
    ``progress`` as in :func:`fit`).  ``cheaper``: fits of the same data (e.g. the
    ``unstructured`` and ``heterogeneous`` ones of a comparison) that a nonlinear genetic
    structure takes its extra starts from instead of fitting them again.  Everything runs with
    ``options.threads`` BLAS threads (``None``: as the process has them)."""
    with threadpool_limits(options.threads):  # None: no change
        try:
            return _fit_model(model, options, start, eigen, progress, cheaper)
        except MemoryError as err:  # numpy's ArrayMemoryError says how much it wanted
            raise InputError(f"out of memory while fitting {model.n_params} covariance parameters to "
                             f"{model.design.n_obs} observed values ({err}); fit fewer traits or "
                             "environments at once, a structure that does not link environments, or a "
                             "two-stage analysis") from None


def _fit_model(model: Model, options: FitOptions, start, eigen, progress, cheaper, choice=None) -> FitResult:
    notes = design_notes(model)
    eng, reason = choice or choose_engine(model, options.engine, eigen=eigen)
    starts = ([("given", _start_theta(model, start))] if start is not None
              else _starts(model, options, eigen, cheaper, eng.flops, notes))
    tried, against, kept = [], {}, None
    for label, theta0 in starts:  # a later start stops on, or short of, the best optimum so far
        best = max((t for t in tried if t[0]), key=lambda t: t[1], default=None)
        against[label] = None if best is None else best[2]
        theta, ev, record = maximize(eng, model, theta0, tol=options.tol, max_iter=options.max_iter,
                                     time_limit=options.time_limit, progress=progress,
                                     found=None if best is None else (best[3], best[1]))
        tried.append((record.converged, ev.loglik, label, theta, ev, record))
        if kept is None or (record.converged, ev.loglik) > kept[0]:
            # solved now, while the engine still holds this θ's factor (and C⁻¹): a later start
            # would replace it
            kept = ((record.converged, ev.loglik), eng.solve(theta, pev=options.pev))
    if len(tried) > 1:
        tried.sort(key=lambda t: (t[0], t[1]), reverse=True)
        notes.append(f"starts of genetic={model.genetic.name!r}: " + "; ".join(
            f"{label}: {_start_outcome(ll, ok, rec, against[label])}" for ok, ll, label, _, _, rec in tried)
            + f"; kept the {tried[0][2]} start")
    _, _, _, theta, ev, record = tried[0]
    solution = kept[1]
    fixed = _fixed_at_zero(model, theta)
    ai_inv = _conditional_inverse(ev.ai, ev.score, fixed)
    singular = _singular(model, ev.ai, ai_inv) & ~fixed
    _mark_runaway(record, runaway(model, theta, ev.ai, ai_inv, skip=singular | fixed))
    return _result(model, eng.name, reason, theta, ev, ai_inv, record, solution, notes, singular)


def _start_outcome(loglik: float, converged: bool, record, earlier: str | None) -> str:
    """How one start of several ended, for the fit's note (``earlier``: the start whose optimum
    it was measured against)."""
    if record.status == "joined":
        return f"joined the {earlier} start's optimum after {record.iterations} iterations"
    if record.status == "fell short":
        return (f"stopped after {record.iterations} iterations at ℓ = {loglik:.4f}, headed below the {earlier} "
                "start's optimum")
    return f"ℓ = {loglik:.4f}{'' if converged else ' (not converged)'}"


_COSTLY_START = 1e10  # flops of an iteration below which an extra start is always fitted


def _starts(model: Model, options: FitOptions, eigen, cheaper=(), flops=0.0, notes=None) -> list[tuple[str, np.ndarray]]:
    """The starts of a fit, in the order they are run: for a nonlinear genetic structure
    (factor-analytic, csh, separable) its approximations (``CovStructure.theta``) of two cheaper
    fits' ΣG, since ℓ of such a model has local maxima (an FA start is known to end on a worse
    one where a column of Λ starts near the saddle Λ_j = 0), then the default:

    * ``unstructured-fit``: the unstructured ΣG;
    * ``heterogeneous-fit``: ΣG_l per environment, with correlations between environments
      from the heterogeneous fit's BLUPs of the phenotyped genotypes (a two-step estimate);
    * ``default``: :meth:`Model.start`.

    The fitted starts are usually nearer the optimum; a later start stops once it joins the
    best optimum so far or is plainly headed below it (:func:`maximize`'s ``found``), which the
    default start, from furthest away, then does most often.

    A fit of the same model but its genetic structure among ``cheaper`` is used as it is;
    otherwise it is fitted here, and skipped where the design cannot carry it, or where its
    iteration would cost more than twice this model's (``flops``; e.g. an unstructured ΣG, one
    block of the mixed-model equations, against an FA one split by environment), with a note."""
    starts = [("default", model.start())]
    if model.genetic.linear or len(model.design.envs) < 2:
        return starts
    quick = FitOptions(engine=options.engine, tol=1e-6, max_iter=options.max_iter, pev=False,
                       threads=options.threads)
    for name in ("unstructured", "heterogeneous"):
        fit = next((f for f in cheaper if _same_model_but_genetic(f, model, name)), None)
        try:
            if fit is None:
                cheap = Model(model.design, make_structure("G", name, model.design.envs, model.design.traits),
                              model.residual, model.method, model.random)
                check_design(cheap)
                choice = choose_engine(cheap, quick.engine, eigen=eigen)
                if choice.engine.flops > max(_COSTLY_START, 2.0 * flops):
                    if notes is not None:
                        notes.append(f"the {name}-fit start of genetic={model.genetic.name!r} was skipped: an "
                                     f"iteration of genetic={name!r} would cost ~{choice.engine.flops:.1e} flops "
                                     f"against ~{flops:.1e} for this model")
                    continue
                fit = _fit_model(cheap, quick, cheap.start(), eigen, None, (), choice)  # within fit_model's threads
        except InputError:
            continue
        G, _ = fit.full_covariances()
        if name == "heterogeneous":
            sd = np.sqrt(np.maximum(np.diag(G), 0.0))
            with np.errstate(all="ignore"):
                R = np.nan_to_num(np.corrcoef(fit.blup[np.unique(model.design.geno)], rowvar=False))
            np.fill_diagonal(R, 1.0)
            G = R * np.outer(sd, sd)
        theta = _theta_from_result(model, fit)
        theta[:model.genetic.n_params] = model.genetic.theta(G)
        starts.append((f"{name}-fit", theta))
    return starts[1:] + starts[:1]  # the fitted starts, nearer the optimum, first: the default is then cut short


def _same_model_but_genetic(fit: FitResult, model: Model, genetic: str) -> bool:
    """``fit`` is of ``model``'s data and terms, with genetic structure ``genetic``."""
    d = model.design
    return (fit.genetic == genetic and fit.residual == model.residual.name and fit.method == model.method
            and fit.converged and fit.n_obs == d.n_obs and list(fit.x_names) == list(d.x_names)
            and fit.random_terms == [f.name for f, _ in model.random]
            and list(fit.envs) == list(d.envs) and list(fit.traits) == list(d.traits)
            and np.array_equal(np.asarray(fit.observed["y"], dtype=float), d.y))


def _fixed_at_zero(model: Model, theta: np.ndarray) -> np.ndarray:
    """Lone variances (1×1 blocks: a random term's or a diagonal structure's) on the boundary:
    estimated at zero, they are fixed there and the other SEs are conditional on it."""
    fixed = np.zeros(model.n_params, dtype=bool)
    for blk in model.blocks():
        if blk.dim == 1 and blk.scaled(theta)[0, 0] <= 10 * FLOOR:
            fixed[blk.theta_index] = True
    return fixed


def _conditional_inverse(ai: np.ndarray, score: np.ndarray, fixed: np.ndarray) -> np.ndarray:
    """AI⁻¹ of the parameters not ``fixed`` (NaN rows and columns for the fixed ones)."""
    if not fixed.any():
        return newton_step(ai, score)[2]
    free = ~fixed
    out = np.full_like(ai, np.nan)
    out[np.ix_(free, free)] = newton_step(ai[np.ix_(free, free)], score[free])[2]
    return out


def _singular(model: Model, ai: np.ndarray, ai_inv: np.ndarray) -> np.ndarray:
    """Parameters without information in the data: AI⁺ has nothing for them."""
    diag = np.diag(ai_inv)
    return np.isnan(diag) | (diag == 0) | unidentified(model, ai)


def _mark_runaway(record, message: str) -> None:
    """A runaway estimate is never converged: status 'runaway' and the message say which."""
    if message:
        record.converged = False
        record.status = "runaway"
        record.message = message


def _result(model, engine_name, reason, theta, ev, ai_inv, record, solution, notes, singular) -> FitResult:
    d = model.design
    L, m = len(d.envs), len(d.traits)
    counts = np.zeros((L, m))
    np.add.at(counts, (d.env, d.trait), 1)
    boundary = _boundary_blocks(model, theta)
    notes = list(d.notes) + list(notes)
    if singular.any():
        names = [model.param_names()[k] for k in np.nonzero(singular)[0][:5]]
        more = f" and {int(singular.sum()) - 5} more" if singular.sum() > 5 else ""
        notes.append(f"parameters without information in the data (SE not available): {', '.join(names)}{more}")
    cov = np.where(np.outer(~singular, ~singular), ai_inv, np.nan)
    n_df = d.n_obs - d.X.shape[1]
    if n_df - model.n_params - 1 <= 0:
        notes.append(f"AICc is not defined: k = {model.n_params} covariance parameters leave no "
                     f"degrees of freedom of the {n_df} (N − p) for its correction")
    result = FitResult(
        traits=list(d.traits), envs=list(d.envs), ids=list(d.ids),
        genetic=model.genetic.name, residual=model.residual.name, method=model.method, fixed=d.formula,
        random=[dict(name=f.name, structure=s.name, kinship=f.relationship is not None) for f, s in model.random],
        random_levels={f.name: list(f.levels) for f, _ in model.random},
        random_blup={name: p[0] for name, p in solution.random.items()},
        random_pev={name: p[1] for name, p in solution.random.items() if p[1] is not None},
        random_counts={f.name: _level_counts(f, d) for f, _ in model.random},
        kinship_diagonal=np.array(model.genetic_factor().diagonal(), dtype=float),
        theta=theta, theta_cov=cov, loglik=float(ev.loglik), n_obs=d.n_obs, rank_x=d.X.shape[1],
        engine=engine_name, engine_reason=reason, record=record,
        x_names=list(d.x_names), beta=solution.beta, beta_cov=solution.beta_cov,
        blup=solution.blup, pev=solution.pev, env_share=counts / counts.sum(0, keepdims=True),
        observed=dict(record=d.record, id=np.asarray(d.ids)[d.geno], env=np.asarray(d.envs, dtype=object)[d.env],
                      trait=np.asarray(d.traits, dtype=object)[d.trait], y=d.y, fitted=solution.fitted),
        boundary=boundary, notes=notes,
    )
    result.notes += result.se_notes()
    return result


def _level_counts(factor, design) -> np.ndarray:
    """Observed values of every level of a random term per environment and trait (levels × L × m)."""
    out = np.zeros((len(factor.levels), len(design.envs), len(design.traits)), dtype=int)
    np.add.at(out, (factor.observed[factor.unit], design.env, design.trait), 1)
    return out


def _boundary_blocks(model: Model, theta: np.ndarray) -> list[str]:
    """Names of the ΣG/Σ_t/ΣE blocks whose smallest scaled eigenvalue sits at the floor."""
    return [b.name for b in model.blocks() if np.linalg.eigvalsh(b.scaled(theta))[0] <= 10 * FLOOR]
