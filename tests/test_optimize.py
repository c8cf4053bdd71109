"""The optimizer's budget, progress record and boundary handling (src/hetvc/optimize.py).

* ``max_iter`` bounds every iteration, the L-BFGS fallback's included, and with it the
  evaluations of ℓ (counted by wrapping the engine); ``time_limit`` stops a fit as "time limit";
* the progress callback sees every iteration;
* a degenerate floor eigenspace is looked at in the gradient's eigenbasis, so a direction along
  which ℓ increases inwards is freed whatever basis LAPACK returns;
* on DROPS (2 traits × 10 environments, unstructured ΣG of rank < 20) AI converges without the
  fallback, to a higher ℓ than 200 iterations of the fallback reach.
"""

import numpy as np
import pandas as pd
import pytest

import hetvc
import hetvc.optimize as opt
from hetvc.data import build_design
from hetvc.engines import Evaluation, choose_engine
from hetvc.kinship import kinship_matrix
from hetvc.model import Model
from reference import make_problem

TRAITS = ["y1", "y2"]


def _model(genetic="unstructured", residual="homogeneous", seed=5, **kw):
    data, K, _, _ = make_problem(seed, n_geno=30, n_env=3, genetic=genetic, residual=residual, **kw)
    Kmat, ids = kinship_matrix(K, None)
    return Model.build(build_design(data, Kmat, ids, TRAITS, "env", "id", None), genetic, residual)


class CountingEngine:
    """An engine that counts its evaluations of ℓ."""

    def __init__(self, engine):
        self.engine, self.calls = engine, 0
        self.name = engine.name

    def evaluate(self, theta, derivatives=True):
        self.calls += 1
        return self.engine.evaluate(theta, derivatives)


@pytest.mark.parametrize("max_iter", [1, 3, 7])
def test_max_iter_bounds_iterations_and_evaluations(max_iter):
    model = _model()
    eng = CountingEngine(choose_engine(model)[0])
    _, _, rec = opt.maximize(eng, model, model.start(), tol=1e-14, max_iter=max_iter)
    assert not rec.converged and rec.status == "iteration limit"
    assert rec.iterations == max_iter == rec.ai_iterations + rec.fallback_iterations
    assert rec.evaluations == eng.calls
    assert eng.calls <= 1 + max_iter * (opt.MAX_TRIALS + 1)
    assert f"within {max_iter} iterations" in rec.message


def test_max_iter_bounds_the_fallback(monkeypatch):
    """The fallback starts after one AI iteration and must stop at max_iter too (it once ran
    for 10 minutes under --max-iter 5)."""
    monkeypatch.setattr(opt, "AI_ITERATIONS", 1)
    monkeypatch.setattr(opt, "stagnating", lambda record: True)
    model = _model()
    eng = CountingEngine(choose_engine(model)[0])
    _, _, rec = opt.maximize(eng, model, model.start(), tol=1e-14, max_iter=6)
    assert rec.fallback_iterations >= 1
    assert rec.iterations == 6 == rec.ai_iterations + rec.fallback_iterations
    assert rec.fallback_evaluations <= rec.evaluations == eng.calls
    assert eng.calls <= 1 + 6 * (opt.MAX_TRIALS + 1)
    assert [h.method for h in rec.history].count("L-BFGS") == rec.fallback_iterations


def test_time_limit_stops_the_fit():
    data, K, _, _ = make_problem(5, n_geno=30, n_env=3, genetic="unstructured")
    fit = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="unstructured", time_limit=1e-9)
    assert fit.record["status"] == "time limit" and not fit.converged
    assert fit.record["time_limit"] == 1e-9
    assert "time limit" in fit.record["message"]
    with pytest.raises(hetvc.InputError, match="time_limit"):
        hetvc.fit(data, K, TRAITS, env="env", id="id", time_limit=0)
    with pytest.raises(hetvc.InputError, match="max_iter"):
        hetvc.fit(data, K, TRAITS, env="env", id="id", max_iter=0)


def test_progress_sees_every_iteration():
    data, K, _, _ = make_problem(5, n_geno=30, n_env=3, genetic="heterogeneous")
    seen = []

    def progress(record):
        it = record.history[-1]
        seen.append((it.iteration, it.method, it.evaluations, record.evaluations, it.loglik))

    fit = hetvc.fit(data, K, TRAITS, env="env", id="id", progress=progress)
    assert fit.converged
    assert [s[0] for s in seen] == list(range(fit.record["iterations"] + 1))
    assert all(s[2] == s[3] for s in seen)  # evaluations so far, as the record has them
    assert np.all(np.diff([s[4] for s in seen]) >= -1e-9)  # ℓ never decreases
    assert seen[-1][4] == pytest.approx(fit.loglik, abs=1e-9)
    assert fit.record["finished_by"] == "AI"


def test_degenerate_floor_eigenspace_frees_an_inward_direction():
    """ΣG (scaled) with a 2-dimensional eigenspace at the floor; the gradient restricted to it
    has eigenvalues +1 (ℓ increases inwards) and −100 (outwards) along q1 ± q2, so in almost
    every basis of that eigenspace (LAPACK returns any) both diagonal entries are negative.
    Exactly one direction must be held on the boundary."""
    model = _model()
    blk = model.blocks()[0]
    assert blk.name == "G" and blk.dim == 6
    rng = np.random.default_rng(0)
    Q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    C = Q @ np.diag([opt.FLOOR, opt.FLOOR, 0.3, 0.5, 0.8, 1.0]) @ Q.T
    inner = np.array([[-49.5, 50.5], [50.5, -49.5]])  # eigenvalues +1 and −100
    grad = Q[:, :2] @ inner @ Q[:, :2].T
    theta = model.start()
    theta[blk.theta_index] = blk.unscaled_theta(C)
    halve = np.where(blk.ia == blk.ib, 1.0, 0.5)
    score = np.zeros(model.n_params)
    score[blk.theta_index] = (grad / np.outer(blk.sd, blk.sd))[blk.ia, blk.ib] / halve
    np.testing.assert_allclose(blk.scaled_gradient(score), grad, atol=1e-12)
    ev = Evaluation(loglik=0.0, score=score, ai=np.eye(model.n_params))
    _, _, active = opt.restricted_step(model, theta, ev)
    assert active[0] == 1


def test_drops_unstructured_converges_to_the_maximum(shared_data):
    """DROPS, grain yield, plant height and anthesis in 10 environments, unstructured ΣG (465
    parameters) and one ΣE (6): ΣG is singular at the optimum.  Before the gradient-eigenbasis
    fix the fit reported convergence after 37 iterations at ℓ = −16154.5043, a point where a
    direction held on the boundary should have grown; the maximum is −16154.32603."""
    folder = shared_data / "drops_maize"
    data = pd.read_csv(folder / "pheno_long.csv", dtype={"genotype": str})
    K = hetvc.read_kinship(folder / "grm_vanraden.csv")
    K = K / float(np.mean(np.diag(K.to_numpy())))
    fit = hetvc.fit(data, K, ["grain_yield", "plant_height", "anthesis"], env="env", id="genotype",
                    genetic="unstructured", residual="homogeneous", pev=False)
    rec = fit.record
    assert fit.converged and rec["finished_by"] == "AI" and rec["fallback_evaluations"] == 0
    assert rec["evaluations"] <= 60
    assert fit.loglik == pytest.approx(-16154.32603, abs=2e-5)
    assert "G" in fit.boundary


class FailingEngine(CountingEngine):
    """Reports ℓ lowered by 1 from evaluation ``fail_from`` on: every later step fails."""

    def __init__(self, engine, fail_from):
        super().__init__(engine)
        self.fail_from = fail_from

    def evaluate(self, theta, derivatives=True):
        ev = super().evaluate(theta, derivatives)
        if self.calls >= self.fail_from:
            ev = Evaluation(ev.loglik - 1.0, ev.score, ev.ai)
        return ev


def test_a_failed_step_below_the_precision_of_loglik_is_convergence(monkeypatch):
    """With ℓ resolved only to 1e-3 (``_noise`` patched), a failed AI step whose decrement is
    below PRECISION·1e-3 means convergence to the precision of ℓ; a failed step far from the
    optimum does not."""
    monkeypatch.setattr(opt, "_noise", lambda loglik: 1e-3)
    model = _model(genetic="heterogeneous")
    full = CountingEngine(choose_engine(model)[0])
    _, _, rec = opt.maximize(full, model, model.start(), tol=1e-14, max_iter=60)
    assert rec.converged and "precision" not in rec.message
    late = FailingEngine(choose_engine(model)[0], fail_from=full.calls - 1)
    _, _, rec = opt.maximize(late, model, model.start(), tol=1e-14, max_iter=60)
    assert rec.converged and "converged to the precision of ℓ" in rec.message
    early = FailingEngine(choose_engine(model)[0], fail_from=2)
    _, _, rec = opt.maximize(early, model, model.start(), tol=1e-14, max_iter=10)
    assert not rec.converged and "precision" not in rec.message


def test_stagnation_is_a_decrement_that_does_not_halve():
    rec = opt.OptimizationRecord("iteration limit", False, 0, 0, 1e-8, 100, [])
    halving = [opt.Iteration(k, 0.0, 1.0, 2.0 ** -k, 0, "") for k in range(12)]
    rec.history = halving
    assert not opt.stagnating(rec)
    rec.history = [opt.Iteration(k, 0.0, 1.0, 1.0 - 0.01 * k, 0, "") for k in range(12)]
    assert opt.stagnating(rec)
    rec.history = halving[:opt.STAGNATION_WINDOW]  # too short to tell
    assert not opt.stagnating(rec)


class RidgeEngine:
    """ℓ(θ) = −½·c·(θ − θ*)'A(θ − θ*) while the engine's AI is A: AI overstates the
    curvature 1/c times, as on a ridge of a REML likelihood."""

    name = "ridge"

    def __init__(self, target, c):
        self.target, self.c = target, c
        self.A = np.diag(1.0 / np.maximum(np.abs(target), 1e-3) ** 2)

    def evaluate(self, theta, derivatives=True):
        d = theta - self.target
        return Evaluation(-0.5 * self.c * d @ self.A @ d, -self.c * self.A @ d, self.A.copy())


@pytest.mark.parametrize("c", [0.5, 0.2])
def test_steps_are_extended_where_ai_overstates_the_curvature(monkeypatch, c):
    monkeypatch.setattr(opt.SecantCorrection, "update", lambda self, *a: None)  # the extension alone
    model = _model(genetic="heterogeneous")
    start = model.start()
    target = 1.5 * start  # interior: every block stays positive definite
    _, _, rec = opt.maximize(RidgeEngine(target, c), model, start, tol=1e-10, max_iter=100)
    assert rec.converged
    assert any("extended" in h.safeguard for h in rec.history)
    monkeypatch.setattr(opt, "EXTEND_GAIN", np.inf)
    _, _, plain = opt.maximize(RidgeEngine(target, c), model, start, tol=1e-10, max_iter=100)
    assert plain.converged and not any("extended" in h.safeguard for h in plain.history)
    assert rec.iterations < plain.iterations / 2


def _fa_model():
    """fa1 on 3 environments × 2 traits of an unstructured simulation (ΣG not of FA form)."""
    data, K, _, _ = make_problem(5, n_geno=30, n_env=3, genetic="unstructured")
    Kmat, ids = kinship_matrix(K, None)
    return Model.build(build_design(data, Kmat, ids, TRAITS, "env", "id", None), "fa1", "homogeneous")


def test_the_score_curvature_of_a_nonlinear_structure_speeds_convergence(monkeypatch):
    """AI − Σ_e s_e ∂²σ_e/∂θ² for an FA model: the same optimum in fewer iterations than AI alone."""
    model = _fa_model()
    eng = choose_engine(model)[0]
    _, ev, with_curvature = opt.maximize(eng, model, model.start())
    monkeypatch.setattr(opt, "_information", lambda ev, B, secant=None: B.T @ ev.ai @ B)
    _, ev_ai, ai_only = opt.maximize(eng, model, model.start())
    assert with_curvature.converged and ai_only.converged
    assert ev.loglik == pytest.approx(ev_ai.loglik, abs=1e-7)
    assert with_curvature.iterations < ai_only.iterations


class QuadraticEngine:
    """ℓ(θ) = −½(θ − θ*)'H(θ − θ*) exactly, with an AI of A ≠ H; counts the evaluations with
    and without derivatives."""

    name = "quadratic"

    def __init__(self, target, H, A, keeps_factor=False):
        self.target, self.H, self.A = target, H, A
        self.keeps_factor = keeps_factor
        self.values = self.derivatives = 0

    def evaluate(self, theta, derivatives=True):
        d = theta - self.target
        ll = -0.5 * d @ self.H @ d
        if not derivatives:
            self.values += 1
            return Evaluation(ll)
        self.derivatives += 1
        return Evaluation(ll, -self.H @ d, self.A.copy())


def test_shorter_step_is_the_maximum_of_the_quadratic_through_the_trial():
    """φ(α) = gα − ½cα²: from φ(0), φ'(0) = g and φ(α₁) the next α is g/c, within [α₁/10, α₁/2]."""
    g, c = 2.0, 8.0  # maximum at α = 0.25
    phi = lambda a: g * a - 0.5 * c * a * a
    assert opt.shorter_step(1.0, g, 0.0, Evaluation(phi(1.0))) == pytest.approx(0.25, rel=1e-12)
    assert opt.shorter_step(1.0, g, 0.0, Evaluation(phi(1.0) - 1e6)) == pytest.approx(0.1)  # clamped below
    assert opt.shorter_step(0.3, g, 0.0, Evaluation(phi(0.3))) == pytest.approx(0.15)  # clamped above
    assert opt.shorter_step(1.0, g, 0.0, None) == 0.5  # not evaluable: halved


def test_sr1_secant_learns_what_the_ai_misses_on_a_quadratic():
    """On ℓ = −½ d'Hd with AI = A, S after n independent steps is H − A (the SR1 property), and
    A + S is then chosen because it predicts the gains better."""
    rng = np.random.default_rng(3)
    n = 5
    B = rng.normal(size=(n, n))
    H = B @ B.T + n * np.eye(n)
    A = H + np.diag(rng.uniform(-1.0, 1.0, n))
    engine = QuadraticEngine(np.zeros(n), H, A)
    secant = opt.SecantCorrection(n)
    theta = rng.normal(size=n)
    for _ in range(n):
        step = rng.normal(size=n)
        secant.update(step, engine.evaluate(theta), engine.evaluate(theta + step))
        theta = theta + step
    np.testing.assert_allclose(secant.S, H - A, atol=1e-9 * np.abs(H).max())
    assert secant.matrix is secant.S  # the corrected model predicted the last gain exactly


def test_the_secant_correction_speeds_ai_where_it_misjudges_the_curvature(monkeypatch):
    """AI overstating the curvature by 5× (the extension off): with the correction far fewer
    iterations to the same optimum than without it."""
    monkeypatch.setattr(opt, "EXTEND_GAIN", np.inf)
    model = _model(genetic="heterogeneous")
    start = model.start()
    target = 1.5 * start
    _, _, rec = opt.maximize(RidgeEngine(target, 0.2), model, start, tol=1e-10, max_iter=200)
    monkeypatch.setattr(opt.SecantCorrection, "update", lambda self, *a: None)
    _, _, plain = opt.maximize(RidgeEngine(target, 0.2), model, start, tol=1e-10, max_iter=200)
    assert rec.converged and plain.converged
    assert rec.iterations < plain.iterations / 3


def test_trial_points_are_evaluated_without_derivatives_where_the_engine_keeps_its_factor():
    """An engine that keeps its factor gets ℓ alone at every trial point and the score and AI
    once per accepted point (the start's and every iteration's); the path is the same."""
    model = _model(genetic="heterogeneous")
    start = model.start()
    n = model.n_params
    H = np.diag(1.0 / np.maximum(np.abs(start), 1e-3) ** 2)
    paths = []
    for keeps in (False, True):
        eng = QuadraticEngine(1.5 * start, H, 0.3 * H, keeps_factor=keeps)  # AI too small: steps shortened
        theta, _, rec = opt.maximize(eng, model, start, tol=1e-10, max_iter=100)
        assert rec.converged and any("shortened" in h.safeguard for h in rec.history)
        paths.append((theta, rec.iterations, rec.evaluations))
        if keeps:
            assert eng.derivatives == rec.iterations + 1 and eng.values == rec.evaluations - 1
        else:
            assert eng.values == 0 and eng.derivatives == rec.evaluations
    np.testing.assert_allclose(paths[0][0], paths[1][0], rtol=1e-12)
    assert paths[0][1:] == paths[1][1:] and n > 0


def test_a_later_start_that_joins_an_earlier_optimum_stops_there():
    """``joins``: within 0.005 units of ℓ in AI's metric; maximize(found=(θ̂, ℓ̂)) stops a start
    as "joined" once its AI step lands on that optimum, and not where the optimum is elsewhere
    and lower."""
    ai = np.diag([4.0, 1.0])
    assert opt.joins(np.array([1.0, 2.0]), np.array([1.04, 2.0]), ai)  # ½·4·0.04² = 0.0032
    assert not opt.joins(np.array([1.0, 2.0]), np.array([1.06, 2.0]), ai)  # 0.0072
    model = _model(genetic="heterogeneous")
    start = model.start()
    target = 1.5 * start
    H = np.diag(1.0 / np.maximum(np.abs(start), 1e-3) ** 2)
    eng = QuadraticEngine(target, H, H)
    _, _, rec = opt.maximize(eng, model, start, tol=1e-10, found=(target, 0.0))
    assert rec.status == "joined" and not rec.converged and rec.iterations == 0
    elsewhere = 1.2 * start
    lower = eng.evaluate(elsewhere).loglik
    _, ev, other = opt.maximize(eng, model, start, tol=1e-10, found=(elsewhere, lower))
    assert other.converged and ev.loglik > lower


def _record(lls, decs, steps=(0.0, 1.0), safeguard=""):
    rec = opt.OptimizationRecord("iteration limit", False, 1, 2, 1e-8, 100, [])
    rec.history = [opt.Iteration(k, ll, st, d, 0, safeguard if k else "")
                   for k, (ll, d, st) in enumerate(zip(lls, decs, steps))]
    return rec


def test_a_later_start_headed_below_an_earlier_optimum_stops_once_the_model_says_so():
    """``falls_short``: only after a full step that gained 0.5–2× its prediction, with the
    decrement below 1 and ℓ + 10·decrement below the earlier optimum."""
    assert opt.falls_short(_record([-10.0, -9.0], [1.0, 0.05]), 0.05, best=-8.0)  # −9 + 0.5 < −8
    assert not opt.falls_short(_record([-10.0, -9.0], [1.0, 0.05]), 0.05, best=-8.6)  # −8.5 ≥ −8.6
    assert not opt.falls_short(_record([-10.0, -9.0], [0.2, 0.05]), 0.05, best=-8.0)  # gained 5× the prediction
    assert not opt.falls_short(_record([-10.0, -9.0], [1.0, 0.05], (0.0, 0.5), "shortened"), 0.05, best=-8.0)
    assert not opt.falls_short(_record([-10.0, -9.0], [1.0, 2.0]), 2.0, best=1e9)  # decrement ≥ 1
    # in a fit: an exact quadratic whose maximum (ℓ = 0) is below an optimum found elsewhere
    model = _model(genetic="heterogeneous")
    start = model.start()
    H = np.diag(1.0 / np.maximum(np.abs(start), 1e-3) ** 2)
    eng = QuadraticEngine(1.5 * start, H, 0.8 * H)  # AI off by a little: several steps
    _, ev, rec = opt.maximize(eng, model, start, tol=1e-10, found=(2.0 * start, 5.0))
    assert rec.status == "fell short" and not rec.converged and "below the optimum" in rec.message
    assert ev.loglik < 4.0


class MisleadingFloorEngine(QuadraticEngine):
    """ℓ = −½|θ − θ*|² with θ* outside the cone (ΣG's scaled matrix has an eigenvalue −0.2 there,
    so the maximum holds that direction q at the floor) — but wherever ΣG has an eigenvalue at
    the floor its score says ℓ increases inwards along it (q'∂ℓ/∂C̃q = +1), as rounding can
    make it where the score is a difference of terms of order 1/FLOOR."""

    def __init__(self, model, target):
        n = model.n_params
        super().__init__(target, np.eye(n), np.eye(n))
        self.model, self.blk = model, model.blocks()[0]

    def evaluate(self, theta, derivatives=True):
        ev = super().evaluate(theta, derivatives)
        if not derivatives:
            return ev
        blk = self.blk
        vals, vecs = np.linalg.eigh(blk.scaled(theta))
        halve = np.where(blk.ia == blk.ib, 1.0, 0.5)
        for k in np.flatnonzero(vals <= opt.FLOOR * (1 + 1e-6)):
            q = vecs[:, k]
            push = np.zeros(len(theta))  # a score whose scaled gradient is qq'
            push[blk.theta_index] = np.outer(q, q)[blk.ia, blk.ib] / halve / np.outer(blk.sd, blk.sd)[blk.ia, blk.ib]
            ev.score += (1.0 - q @ blk.scaled_gradient(ev.score) @ q) * push  # q'∂ℓ/∂C̃q = +1
        return ev


def test_a_step_that_fails_because_the_score_freed_a_floor_direction_is_retried_with_it_held():
    """Where the score's sign along a direction at the floor is wrong, the AI step frees it and
    ℓ falls at every length; the step is retried with that block's floor held ("floor held"),
    and the fit reaches the constrained maximum without the L-BFGS fallback, the floor kept."""
    model = _model()
    blk = model.blocks()[0]
    start = model.start()
    vals, vecs = np.linalg.eigh(blk.scaled(start))
    target = start.copy()
    shifted = blk.scaled(start) - (vals[0] + 0.2) * np.outer(vecs[:, 0], vecs[:, 0])  # eigenvalue −0.2
    target[blk.theta_index] = blk.unscaled_theta(shifted)
    honest = QuadraticEngine(target, np.eye(model.n_params), np.eye(model.n_params))
    theta_h, ev_h, rec_h = opt.maximize(honest, model, start, tol=1e-12)
    assert rec_h.converged and np.linalg.eigvalsh(blk.scaled(theta_h))[0] <= opt.FLOOR * (1 + 1e-6)
    engine = MisleadingFloorEngine(model, target)
    theta, ev, rec = opt.maximize(engine, model, start, tol=1e-12)
    assert rec.converged and rec.fallback_iterations == 0
    assert any("floor held" in h.safeguard for h in rec.history)
    assert ev.loglik == pytest.approx(ev_h.loglik, abs=1e-9)
    np.testing.assert_allclose(theta, theta_h, atol=1e-6)
