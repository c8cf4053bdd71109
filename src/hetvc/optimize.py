"""Average-information Newton–Raphson for REML/ML that never leaves the parameter space.

Each iteration takes the AI step (Gilmour et al. 1995, docs/design.md §2)

    θ ← θ + α · AI⁻¹ · score

in the natural parameters θ (the elements of ΣG and ΣE), as an *active-set* method on the
cone of positive semi-definite blocks.  Every block C of ΣG or ΣE is looked at in its scaled
form C̃ = D^-½ C D^-½ (D: the phenotypic variances of its rows, so the test is unit-free):

* **boundary** — an eigenvector q of C̃ whose eigenvalue sits at ``FLOOR`` and along which ℓ
  increases outwards (q' ∂ℓ/∂C̃ q < 0) is *active*: the step keeps q' δC̃ q = 0 (the tangent
  space of that face of the PSD cone; the null space may rotate), and the candidate is
  projected back onto the cone (eigenvalues clipped at ``FLOOR``).  When several eigenvalues
  sit at the floor their eigenvectors are any basis of that eigenspace: the basis used is the
  one that diagonalises ∂ℓ/∂C̃ there, so that a direction inside it along which ℓ increases
  *inwards* is freed (in any other basis the KKT test on the diagonal can hold while the
  gradient's restriction to the null space has a positive eigenvalue, and the AI steps crawl);
* **step to the boundary** — α is cut to the largest value that keeps every block's scaled
  eigenvalues ≥ ``FLOOR`` (the block then lands on the boundary, and the next iteration
  activates that direction);
* **backtracking** — α is shortened until ℓ does not decrease (beyond rounding), each time to
  the maximum of the quadratic through ℓ(0), its slope and ℓ(α), within [α/10, α/2]
  (:func:`shorter_step`); where the engine keeps its factor (``Engine.keeps_factor``) the
  trial points are evaluated for ℓ alone, and the score and AI only at the point accepted;
* **floor held** — at the floor the score along q is the difference of two terms of order
  1/FLOOR, so its sign there can be rounding: a step that frees such a direction and then
  fails even when cut to ``HOLD_AFTER`` of its length is retried with every floor direction
  of its blocks held active, and if that step raises ℓ those blocks keep their floor for the
  rest of the fit (without this, the 4-trait unstructured/heterogeneous DROPS fit spent 80 of
  its 135 evaluations on steps shortened to α ≈ 1e-8 and in the L-BFGS fallback);
* **extension** — a full step that gains clearly more than the decrement predicts (AI
  overstates the curvature, as on a ridge of ℓ) is tried once more at the length the measured
  gain implies (:func:`extrapolate`), and kept if ℓ is higher there;
* **pseudo-inverse** — AI is equilibrated to unit diagonal and inverted on its eigenvalues
  above 1e-12 of the largest, so an unidentified direction gets no step.

If the AI iterations stall on a curved face of the cone (several steps in a row need heavy
shortening — a step cut to the boundary is progress, not a stall —, a step fails, or
``AI_ITERATIONS`` pass and the decrement stagnates), the fit runs **L-BFGS in log-Cholesky
coordinates** φ (each block C̃ = LL', log L_aa on the diagonal: every φ is positive definite;
gradient J'·score with J = ∂θ/∂φ by complex step), then returns to AI steps to finish.

Budget: ``max_iter`` bounds the iterations of both methods together (each at most
``MAX_TRIALS`` trial points for AI, 20 line-search evaluations for L-BFGS), and ``time_limit``
the seconds; the record counts AI iterations, fallback iterations and evaluations and names
the method that finished.

Convergence: the Newton decrement ½·s'·AI⁺·s of the (restricted) step is below ``tol`` — the
ℓ still to gain under the quadratic model, with the active directions held on the boundary
(their gradient points outwards, which is the KKT condition there).  Where ``tol`` is below
what ℓ can resolve (ℓ is rounded to about 1e-11·|ℓ|), a decrement below ``PRECISION`` times
that rounding whose AI step no longer increases ℓ also counts as converged, and the record
says so.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from .engines import Engine, Evaluation, NotPositiveDefinite
from .errors import InputError
from .model import Model

FLOOR = 1e-8  # smallest scaled eigenvalue of an estimate: the boundary of the parameter space
MAX_TRIALS = 40
AI_ITERATIONS = 40  # AI iterations after which a stagnating AI hands over to L-BFGS once
STAGNATION_WINDOW = 5  # ... stagnating: the decrement did not halve over this many iterations
FALLBACK_ITERATIONS = 30  # L-BFGS iterations of one fallback before AI steps are tried again
POOR_STEPS = 3  # consecutive heavily shortened steps (α below 1/32 of its first value) before the fallback
PRECISION = 10  # a decrement below PRECISION × the rounding of ℓ is all ℓ can resolve
SUFFICIENT = 0.1  # a step gaining less than this × the gain the quadratic model predicts is shortened
HOLD_AFTER = 1e-3  # a step shortened below this × its first length is retried with the floor held
SHORT_MARGIN = 10.0  # a later start stops once ℓ + this × its decrement stays below an earlier optimum
JOIN = 5e-3  # a start whose AI step lands this close (in units of ℓ) to an earlier start's optimum stops
EXTEND_GAIN = 1.2  # a full step gaining more than this × the decrement is extended ...
EXTEND_MAX = 8.0  # ... to at most this many times its length


@dataclass
class Iteration:
    iteration: int
    loglik: float
    step: float  # step length α actually taken (0 at the start)
    decrement: float  # ½ s' AI⁻¹ s at the start of the iteration (restricted to free directions)
    active: int  # number of boundary directions held at the start of the iteration
    safeguard: str  # "", "to boundary", "shortened", "extended", combinations joined by "+"
    method: str = "AI"  # "AI" or "L-BFGS" (an iteration of the log-Cholesky fallback)
    evaluations: int = 0  # evaluations of ℓ so far (cumulative)
    seconds: float = 0.0  # time since the start of the fit


@dataclass
class OptimizationRecord:
    """What happened during a fit: start, end, evaluations, tolerances and the iteration log.

    ``iterations`` counts every iteration, AI steps and fallback iterations alike, and never
    exceeds ``max_iter``; ``evaluations`` counts every evaluation of ℓ (a trial point's alone where
    the engine keeps its factor, the score and AI then at the accepted point only).
    ``finished_by`` names the method of the last iteration ("AI" or "L-BFGS")."""

    status: str  # "converged", "iteration limit", "time limit", "stalled"; a later start: "joined", "fell short"
    converged: bool
    iterations: int
    evaluations: int
    tol: float
    max_iter: int
    start: list
    seconds: float = 0.0
    message: str = ""
    history: list = field(default_factory=list)
    # None in a record read from a fit.json written before hetvc counted the methods
    ai_iterations: int | None = None
    fallback_iterations: int | None = None
    fallback_evaluations: int | None = None
    finished_by: str = "AI"
    time_limit: float | None = None
    seconds_in_all: float | None = None  # the whole fit (engine set-up, PEVs), when measured

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "OptimizationRecord":
        """The record from :meth:`to_dict` (a fit.json); keys an older hetvc did not write take
        their defaults."""
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        its = {f.name for f in fields(Iteration)}
        kw["history"] = [h if isinstance(h, Iteration) else Iteration(**{k: v for k, v in h.items() if k in its})
                         for h in d.get("history", [])]
        return cls(**kw)

    # read (and set) like the dict that fit.json holds: record["status"], record.get("message")
    def __getitem__(self, key: str):
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key: str, value) -> None:
        if key not in self.keys():
            raise KeyError(key)
        setattr(self, key, value)

    def get(self, key: str, default=None):
        return getattr(self, key) if key in self.keys() else default

    def __contains__(self, key) -> bool:
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def items(self):
        return [(k, getattr(self, k)) for k in self.keys()]

    def keys(self) -> list[str]:
        return [f.name for f in fields(self)]


def newton_step(ai: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, float, np.ndarray]:
    """(AI⁺·score, ½·score'·AI⁺·score, AI⁺) with AI⁺ the equilibrated pseudo-inverse."""
    d = np.sqrt(np.abs(np.diag(ai)))
    d[d == 0] = 1.0
    eq = ai / d[:, None] / d[None, :]
    vals, vecs = np.linalg.eigh((eq + eq.T) / 2)
    keep = vals > 1e-12 * max(vals.max(), 0.0)
    inv_vals = np.where(keep, 1.0 / np.where(keep, vals, 1.0), 0.0)
    inv_eq = (vecs * inv_vals) @ vecs.T
    score_eq = score / d
    step_eq = inv_eq @ score_eq
    return step_eq / d, 0.5 * float(score_eq @ step_eq), inv_eq / d[:, None] / d[None, :]


def _noise(loglik: float) -> float:
    """Rounding-level change in ℓ that does not count as a decrease."""
    return 1e-11 * max(1.0, abs(loglik))


def _tangent_basis(vals, vecs, grad, active) -> list[tuple[np.ndarray, float]]:
    """Basis of the steps along the face of the PSD cone that holds the active directions.

    The symmetric matrices Q E_ij Q' (Q the eigenvectors of C̃), except those with i and j
    both active: each active eigenvalue stays fixed to first order, but the null space may
    rotate.  Rotating active k towards free j by b lowers λ_k by b²/(λ_j − λ_k); the projection
    back onto the face costs ℓ that much times μ_k = −q_k'(∂ℓ/∂C̃)q_k ≥ 0, so that basis
    direction carries the extra curvature 2μ_k/(λ_j − λ_k) (the Hessian of the Lagrangian).
    Returns (matrix, extra curvature) pairs."""
    mu = -np.einsum("ik,ij,jk->k", vecs, grad, vecs)
    out = []
    for i in range(len(vals)):
        for j in range(i + 1):
            if active[i] and active[j]:
                continue
            e = np.outer(vecs[:, i], vecs[:, j])
            if i == j:
                out.append((e, 0.0))
                continue
            curvature = 0.0
            if active[i] != active[j]:
                k, f = (i, j) if active[i] else (j, i)
                curvature = 2.0 * max(mu[k], 0.0) / max(vals[f] - vals[k], 1e-300)
            out.append((e + e.T, curvature))
    return out


def restricted_step(model: Model, theta: np.ndarray, ev: Evaluation,
                    secant: np.ndarray | None = None, hold: frozenset = frozenset()) -> tuple[np.ndarray, float, list]:
    """AI step restricted to the free directions: (step, decrement, active count per block).
    Parameters in no block (the loadings of a factor-analytic structure) are always free.

    A direction q of a block at the floor is active when ℓ increases outwards along it
    (q' ∂ℓ/∂C̃ q < 0) or when the step would take it outwards (q' δC̃ q < 0); the step is
    recomputed until no free direction at the floor moves outwards.  Active directions keep
    q' δC̃ q = 0 but may rotate (with the face's curvature added to AI); the projection after
    the step puts them back on the floor.  ``hold``: blocks (by their index in
    ``model.blocks()``) whose every direction at the floor is active, whatever the score says
    (:func:`maximize`'s "floor held")."""
    eig = []
    for b, blk in enumerate(model.blocks()):
        vals, vecs = np.linalg.eigh(blk.scaled(theta))
        grad = blk.scaled_gradient(ev.score)
        at_floor = vals <= FLOOR * (1 + 1e-6)
        if at_floor.sum() > 1:  # a degenerate eigenspace: its basis is the gradient's eigenbasis
            floor_vecs = vecs[:, at_floor]
            _, rot = np.linalg.eigh(floor_vecs.T @ grad @ floor_vecs)
            vecs[:, at_floor] = floor_vecs @ rot
        outward = np.einsum("ik,ij,jk->k", vecs, grad, vecs) < 0
        eig.append((blk, vals, vecs, grad, at_floor, at_floor & (outward | (b in hold))))
    free = model.free_params()
    while True:
        columns = [np.eye(model.n_params)[:, k] for k in free]  # unconstrained (factor loadings)
        extra = [0.0] * len(free)
        for blk, vals, vecs, grad, _, active in eig:
            for e, curvature in _tangent_basis(vals, vecs, grad, active):
                col = np.zeros(model.n_params)
                col[blk.theta_index] = blk.unscaled_theta(e)
                columns.append(col)
                extra.append(curvature)
        B = np.column_stack(columns) if columns else np.zeros((model.n_params, 0))
        eta, decrement, _ = newton_step(_information(ev, B, secant) + np.diag(extra), B.T @ ev.score)
        step = B @ eta
        added = False
        for blk, vals, vecs, grad, at_floor, active in eig:
            moves = np.einsum("ik,ij,jk->k", vecs, blk.scaled(step), vecs)
            grow = at_floor & ~active & (moves < -1e-12 * max(1.0, np.abs(moves).max()))
            if grow.any():
                active |= grow
                added = True
        if not added:
            return step, decrement, [int(a.sum()) for *_, a in eig]


def _information(ev: Evaluation, B: np.ndarray, secant: np.ndarray | None = None) -> np.ndarray:
    """The curvature the step is taken with, in the free directions B: AI − Σ_e s_e ∂²σ_e/∂θ²
    (a nonlinear structure's second derivatives, which the chain-rule AI leaves out and which do
    not vanish at the optimum of, e.g., an FA model, where plain AI steps converge only
    linearly) when that is positive definite, else the AI; plus the ``secant`` correction
    (:class:`SecantCorrection`) where the sum stays positive definite."""
    ai = B.T @ ev.ai @ B
    base = ai if ev.curvature is None else ai - B.T @ ev.curvature @ B
    if base is not ai and not _positive_definite(base):
        base = ai
    if secant is not None:
        corrected = base + B.T @ secant @ B
        if _positive_definite(corrected):
            return corrected
    return base


def _structured(ev: Evaluation) -> np.ndarray:
    """AI − Σ_e s_e ∂²σ_e/∂θ² where positive definite, else AI (in all of θ's directions)."""
    if ev.curvature is not None and _positive_definite(ev.ai - ev.curvature):
        return ev.ai - ev.curvature
    return ev.ai


def _positive_definite(M: np.ndarray) -> bool:
    d = np.sqrt(np.abs(np.diag(M)))
    d[d == 0] = 1.0
    try:
        np.linalg.cholesky(M / d[:, None] / d[None, :])
    except np.linalg.LinAlgError:
        return False
    return True


class SecantCorrection:
    """S, the part of ℓ's Hessian that the AI misses (observed minus average information,
    −½ tr(PV̇_iPV̇_j) + ½ y'PV̇_iPV̇_jPy, zero only in expectation), learnt from the steps taken
    as NL2SOL learns the part a Gauss–Newton Hessian misses (Dennis, Gay & Welsch 1981), here
    by symmetric rank-one updates: after a step s from θ to θ⁺ with scores g and g⁺,

        S⁺ = S + r r' / r's,   r = y# − Ss,   y# = (g − g⁺) − A⁺s

    (A⁺ the information at θ⁺), so that (A⁺ + S⁺)s = g − g⁺; skipped where |r's| is below
    1e-8·|r||s|.  Where AI's curvature along a direction is off (a ridge, a variance sliding
    to the boundary, a factor-analytic loading traded against its ψ) AI steps converge
    linearly or zig-zag.  As in NL2SOL, the next step uses A + S only when, over the step just
    taken, its quadratic model predicted the gain in ℓ better than A's (:attr:`matrix` is None
    otherwise): where AI is good, S only adds noise."""

    def __init__(self, n: int):
        self.S = np.zeros((n, n))
        self.better = False  # whether A + S predicted the last step's gain better than A

    @property
    def matrix(self) -> np.ndarray | None:
        return self.S if self.better else None

    def reset(self) -> None:
        self.S[...] = 0.0
        self.better = False

    def update(self, step: np.ndarray, before: Evaluation, after: Evaluation) -> None:
        gain = after.loglik - before.loglik
        predicted = before.score @ step - 0.5 * step @ _structured(before) @ step
        self.better = bool(abs(predicted - 0.5 * step @ self.S @ step - gain) < abs(predicted - gain))
        r = before.score - after.score - _structured(after) @ step - self.S @ step
        rs = float(r @ step)
        if abs(rs) > 1e-8 * np.linalg.norm(r) * np.linalg.norm(step):
            self.S += np.outer(r, r) / rs


def max_feasible_step(model: Model, theta: np.ndarray, step: np.ndarray, active: list) -> float:
    """Largest α ≤ 1 keeping every block's free scaled eigenvalues ≥ FLOOR at θ + α·step
    (a block with k active directions: its (k+1)-th smallest; the k lowest are projected)."""
    alpha = 1.0
    for blk, k in zip(model.blocks(), active):
        C, dC = blk.scaled(theta), blk.scaled(step)
        if k >= blk.dim or np.linalg.eigvalsh(C + dC)[k] >= FLOOR:
            continue
        lo, hi = 0.0, 1.0  # feasible at lo (up to rounding at the floor), infeasible at hi
        for _ in range(60):
            mid = (lo + hi) / 2
            if np.linalg.eigvalsh(C + mid * dC)[k] >= FLOOR:
                lo = mid
            else:
                hi = mid
        alpha = min(alpha, lo)
    return alpha


def _evaluate(engine: Engine, theta: np.ndarray, derivatives: bool = True) -> Evaluation | None:
    if not np.all(np.isfinite(theta)):
        return None
    try:
        with np.errstate(all="ignore"):  # a degenerate trial point is rejected, not warned about
            ev = engine.evaluate(theta, derivatives)
    except NotPositiveDefinite:
        return None
    finite = np.isfinite(ev.loglik) and (not derivatives or (np.all(np.isfinite(ev.score))
                                                              and np.all(np.isfinite(ev.ai))))
    return ev if finite else None


def _trial(engine: Engine, theta: np.ndarray) -> Evaluation | None:
    """ℓ at a trial point: alone where the engine keeps its factor for the derivatives that
    follow if the point is accepted (:func:`_complete`), else with them."""
    return _evaluate(engine, theta, derivatives=not getattr(engine, "keeps_factor", False))


def _complete(engine: Engine, theta: np.ndarray, ev: Evaluation | None) -> Evaluation | None:
    """``ev`` with its score and AI (computed now if the trial did not)."""
    return ev if ev is None or ev.score is not None else _evaluate(engine, theta)


def shorter_step(alpha: float, slope: float, loglik: float, trial: Evaluation | None) -> float:
    """The next trial α after α was rejected: the maximum of the quadratic through ℓ(0), its
    slope s'·step along the step and ℓ(α), kept within [α/10, α/2] (α/2 where ℓ(α) could not
    be evaluated): one or two trials where halving would take several."""
    if trial is None or not slope > 0:
        return alpha / 2
    drop = slope * alpha - (trial.loglik - loglik)  # > slope·α/2 once ℓ(α) < ℓ(0)
    return min(max(slope * alpha * alpha / (2.0 * drop), alpha / 10), alpha / 2)


def cholesky_jacobian(model: Model, phi: np.ndarray) -> np.ndarray:
    """J[k, j] = ∂θ_k/∂φ_j, exact by complex-step differentiation."""
    jac = np.empty((len(phi), len(phi)))
    for j in range(len(phi)):
        p = phi.astype(complex)
        p[j] += 1e-20j
        jac[:, j] = np.imag(model.from_cholesky(p)) / 1e-20
    return jac


def extrapolate(engine: Engine, model: Model, theta: np.ndarray, step: np.ndarray, active: list,
                ev: Evaluation, accepted: tuple, decrement: float, record: OptimizationRecord):
    """A longer step along the AI direction where AI overstates the curvature.

    Along the step s = AI⁺·score the model predicts a gain of d(2α − α²) (d the decrement); if
    the curvature is really c times AI's, the full step gains d(2 − c), so a measured gain
    Δ > ``EXTEND_GAIN``·d gives c = 2 − Δ/d and the best α = 1/c (at most ``EXTEND_MAX``, and
    within the parameter space).  On a ridge of ℓ — a variance traded against another, a
    nearly unidentified direction — AI's curvature is several times too large and plain AI
    steps crawl.  One extra evaluation; returns ((θ, evaluation), α) when it gains more than
    the full step, else None."""
    gain = accepted[1].loglik - ev.loglik
    if not gain > EXTEND_GAIN * decrement:
        return None
    alpha = min(1.0 / max(2.0 - gain / decrement, 1.0 / EXTEND_MAX), EXTEND_MAX)
    alpha *= max_feasible_step(model, theta, alpha * step, active)
    if alpha <= 1.0:
        return None
    cand = model.project(theta + alpha * step, FLOOR)
    ev_c = _trial(engine, cand)
    record.evaluations += 1
    if ev_c is None or ev_c.loglik <= accepted[1].loglik:
        return None
    return (cand, ev_c), alpha


def joins(target: np.ndarray, found: np.ndarray, ai: np.ndarray) -> bool:
    """Whether a start's AI step lands on an optimum ``found`` by an earlier start: within
    ``JOIN`` of ℓ's units in AI's metric, ½(θ + step − θ̂)'AI(θ + step − θ̂) < JOIN (a tenth of
    a standard error apart).  A start headed for another optimum has its step elsewhere."""
    gap = target - found
    return bool(0.5 * gap @ ai @ gap < JOIN)


def falls_short(record: OptimizationRecord, decrement: float, best: float) -> bool:
    """Whether a start is plainly headed for a lower optimum than ℓ = ``best``: its last step
    was a full AI step that gained 0.5–2× what the quadratic model predicted (so the model is
    trustworthy here), the decrement is below 1, and ℓ plus ``SHORT_MARGIN`` times the
    decrement (the gain still to come, by the model, ten times over) stays below ``best``."""
    if len(record.history) < 2:
        return False
    last, before = record.history[-1], record.history[-2]
    if last.method != "AI" or last.step != 1.0 or last.safeguard or not 0 < before.decrement:
        return False
    ratio = (last.loglik - before.loglik) / before.decrement
    return 0.5 <= ratio <= 2.0 and decrement < 1.0 and last.loglik + SHORT_MARGIN * decrement < best


def stagnating(record: OptimizationRecord) -> bool:
    """True when the Newton decrement did not halve over the last ``STAGNATION_WINDOW`` AI
    iterations (a slow but steady AI, as on a nearly singular ΣG, keeps going: the fallback
    would be slower still)."""
    d = [h.decrement for h in record.history if h.method == "AI" and np.isfinite(h.decrement)]
    return len(d) > STAGNATION_WINDOW and not d[-1] <= 0.5 * d[-1 - STAGNATION_WINDOW]


class _Budget(Exception):
    """Raised inside the L-BFGS objective when the iteration or time budget is spent."""


def lbfgs_cholesky(engine: Engine, model: Model, theta: np.ndarray, ev: Evaluation, record,
                   clock: "_Clock") -> tuple:
    """Maximise ℓ over log-Cholesky coordinates with L-BFGS from θ, for at most
    ``FALLBACK_ITERATIONS`` iterations (and within the record's budget and the clock's time
    limit): far enough to leave the curved face where AI steps stalled, after which AI steps,
    which converge far faster, finish.

    The result is projected back onto the floor of the parameter space.
    Returns (θ, evaluation, stationary): ``stationary`` when L-BFGS reports convergence or
    its gradient in φ is below 1e-6 (at a boundary the φ-gradient of a vanishing direction
    vanishes too, so this is the KKT condition in these coordinates)."""
    from scipy.optimize import minimize

    best = {"theta": theta, "ev": ev}
    budget = min(record.max_iter - record.iterations, FALLBACK_ITERATIONS)

    def objective(phi):
        if clock.expired():
            raise _Budget
        with np.errstate(over="ignore", invalid="ignore"):  # exp overflow → rejected below
            th = model.from_cholesky(phi)
        e = _evaluate(engine, th)
        record.evaluations += 1
        record.fallback_evaluations += 1
        if e is None:
            return 1e100, np.zeros_like(phi)
        if e.loglik > best["ev"].loglik:
            best.update(theta=th, ev=e)
        return -e.loglik, -(cholesky_jacobian(model, phi).T @ e.score)

    def after_iteration(*_):
        record.iterations += 1
        record.fallback_iterations += 1
        clock.log(record, Iteration(record.iterations, best["ev"].loglik, float("nan"), float("nan"), 0,
                                    "", method="L-BFGS"))

    stationary = False
    try:
        res = minimize(objective, model.to_cholesky(theta), jac=True, method="L-BFGS-B",
                       callback=after_iteration,
                       options=dict(maxiter=max(budget, 1), maxfun=max(20 * budget, 20), ftol=1e-15,
                                    gtol=1e-10, maxls=20))
        stationary = bool(res.success) or float(np.abs(res.jac).max()) < 1e-6
    except _Budget:
        pass
    # L-BFGS may approach the boundary closer than FLOOR: put θ back on the floor
    theta = model.project(best["theta"], FLOOR)
    if np.array_equal(theta, best["theta"]):
        return theta, best["ev"], stationary
    ev = _evaluate(engine, theta)
    record.evaluations += 1
    record.fallback_evaluations += 1
    if ev is None:
        return best["theta"], best["ev"], stationary
    return theta, ev, stationary


class _Clock:
    """Elapsed time against the time limit, and the progress callback."""

    def __init__(self, time_limit: float | None, progress):
        self.t0 = time.perf_counter()
        self.time_limit = time_limit
        self.progress = progress

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def expired(self) -> bool:
        return self.time_limit is not None and self.elapsed() > self.time_limit

    def log(self, record: OptimizationRecord, it: Iteration) -> None:
        """Append ``it`` to the record's history and report it to the progress callback."""
        record.seconds = it.seconds = self.elapsed()
        it.evaluations = record.evaluations
        record.finished_by = it.method
        record.history.append(it)
        if self.progress is not None:
            self.progress(record)


def maximize(
    engine: Engine, model: Model, theta0: np.ndarray, tol: float = 1e-8, max_iter: int = 200,
    time_limit: float | None = None, progress=None, found: tuple | None = None,
) -> tuple[np.ndarray, Evaluation, OptimizationRecord]:
    """AI-REML from θ0 to the maximum of ℓ; returns θ̂, the evaluation there, and the record.

    At most ``max_iter`` iterations (AI steps and fallback iterations together) and, when
    ``time_limit`` is given, about that many seconds (checked between evaluations).
    ``progress(record)`` is called after every iteration; ``record.history[-1]`` is the
    iteration just taken.  ``found``: (θ̂, ℓ̂) of the optimum an earlier start reached; this
    start stops once its AI step lands on it (status "joined", :func:`joins`), or once it is
    plainly headed for a lower optimum (status "fell short", :func:`falls_short`)."""
    clock = _Clock(time_limit, progress)
    theta = np.asarray(theta0, dtype=float).copy()
    if not np.all(np.isfinite(theta)):
        raise InputError("starting values must be finite")
    theta = model.project(theta, FLOOR)
    ev = _evaluate(engine, theta)
    if ev is None:
        raise InputError(
            "the starting values give a covariance matrix V that is not positive definite; "
            "give positive definite starting ΣG and ΣE"
        )
    record = OptimizationRecord(
        status="iteration limit", converged=False, iterations=0, evaluations=1, tol=tol,
        max_iter=max_iter, start=theta.tolist(), time_limit=time_limit, ai_iterations=0,
        fallback_iterations=0, fallback_evaluations=0,
    )
    clock.log(record, Iteration(0, ev.loglik, 0.0, float("nan"), 0, ""))
    poor, fallback_at, stationary = 0, None, False
    held = set()  # blocks whose directions at the floor stay active (a freed one made the step fail)
    secant = SecantCorrection(model.n_params)
    while True:
        if clock.expired():
            record.status = "time limit"
            record.message = (f"stopped by the time limit ({time_limit:g} s) after {record.iterations} "
                              "iterations; raise time_limit or simplify the model")
            break
        if poor >= POOR_STEPS or (record.ai_iterations >= AI_ITERATIONS and fallback_at is None
                                   and stagnating(record)):
            if record.iterations < max_iter:
                theta, ev, stationary = lbfgs_cholesky(engine, model, theta, ev, record, clock)
                poor, fallback_at = 0, record.iterations
                secant.reset()
        step, decrement, active = restricted_step(model, theta, ev, secant.matrix, frozenset(held))
        record.history[-1].decrement = decrement
        record.history[-1].active = sum(active)
        if decrement < tol:
            record.status, record.converged = "converged", True
            break
        if found is not None and joins(theta + step, found[0], ev.ai):
            record.status = "joined"
            record.message = (f"the AI step from iteration {record.iterations} lands on the optimum an earlier "
                              "start reached: stopped there")
            break
        if found is not None and falls_short(record, decrement, found[1]):
            record.status = "fell short"
            record.message = (f"stopped at iteration {record.iterations}: ℓ = {ev.loglik:.4f} and the Newton "
                              f"decrement {decrement:.2e} (its last step gained as predicted) leave it below the "
                              f"optimum an earlier start reached (ℓ = {found[1]:.4f})")
            break
        if clock.expired():
            continue
        if record.iterations >= max_iter:
            record.message = (f"no convergence within {max_iter} iterations (Newton decrement "
                              f"{decrement:.2e}); raise max_iter or check the model")
            break
        safeguard = []
        alpha = max_feasible_step(model, theta, step, active)
        if alpha < 1.0:
            safeguard.append("to boundary")
        first_alpha, accepted, at_precision, retried = alpha, None, False, None
        slope = float(ev.score @ step)
        tried = alpha
        for trial in range(MAX_TRIALS):
            if clock.expired():
                break
            if retried is None and accepted is None and tried < HOLD_AFTER * first_alpha:
                every = frozenset(range(len(active)))  # the step fails even short: hold the floor
                hstep, hdec, hactive = restricted_step(model, theta, ev, secant.matrix, every)
                retried = {b for b, (was, now) in enumerate(zip(active, hactive)) if now > was}
                if retried:
                    step, decrement, active = hstep, hdec, hactive
                    record.history[-1].decrement, record.history[-1].active = decrement, sum(active)
                    first_alpha = tried = max_feasible_step(model, theta, step, active)
                    slope = float(ev.score @ step)
                    safeguard = ["floor held"] + (["to boundary"] if first_alpha < 1.0 else [])
            cand = model.project(theta + tried * step, FLOOR)
            ev_c = _trial(engine, cand)
            record.evaluations += 1
            rises = ev_c is not None and ev_c.loglik >= ev.loglik - _noise(ev.loglik)
            if rises and (accepted is None or ev_c.loglik > accepted[1].loglik):
                accepted, alpha = (cand, ev_c), tried
            elif accepted is not None:
                break  # shorter is worse than a longer step that already raised ℓ
            if rises and ev_c.loglik - ev.loglik >= SUFFICIENT * decrement * tried * (2 - tried) - _noise(ev.loglik):
                break
            if trial == 0 and not rises and decrement < PRECISION * _noise(ev.loglik):
                at_precision = True  # what is left to gain is below what ℓ can resolve
                break
            tried = shorter_step(tried, slope, ev.loglik, ev_c)
        if accepted is not None and alpha == 1.0 and decrement > 100 * _noise(ev.loglik) and not clock.expired():
            longer = extrapolate(engine, model, theta, step, active, ev, accepted, decrement, record)
            if longer is not None:
                accepted, alpha = longer
                safeguard.append("extended")
        if accepted is not None:
            accepted = (accepted[0], _complete(engine, *accepted))
            if accepted[1] is None:  # ℓ was finite there, its derivatives not
                accepted = None
        if at_precision:
            record.status, record.converged = "converged", True
            record.message = (f"converged to the precision of ℓ: the Newton decrement {decrement:.1e} is "
                              f"below {PRECISION:g}× the rounding of ℓ ({_noise(ev.loglik):.1e}) and the AI "
                              "step no longer increases ℓ")
            break
        if accepted is None and clock.expired():
            continue
        if accepted is None and fallback_at != record.iterations:
            poor = POOR_STEPS
            continue
        if accepted is None and stationary:
            record.status, record.converged = "converged", True
            record.message = ("converged by L-BFGS in log-Cholesky coordinates; AI steps could not "
                              f"improve ℓ on the boundary (AI decrement {decrement:.2e})")
            break
        if accepted is None:
            record.status = "stalled"
            record.message = (
                f"no step along the AI direction increased the likelihood at iteration {record.iterations + 1} "
                f"(Newton decrement {decrement:.2e}); try other starting values"
            )
            break
        if retried:  # the held step raised ℓ: those blocks keep their floor from now on
            held |= retried
        if alpha < first_alpha:
            safeguard.append("shortened")
        poor = poor + 1 if alpha < first_alpha / 32 else 0  # heavily shortened, not a step to the boundary
        secant.update(accepted[0] - theta, ev, accepted[1])
        theta, ev = accepted
        record.iterations += 1
        record.ai_iterations += 1
        clock.log(record, Iteration(record.iterations, ev.loglik, alpha, float("nan"), 0, "+".join(safeguard)))
    record.seconds = clock.elapsed()
    return theta, ev, record
