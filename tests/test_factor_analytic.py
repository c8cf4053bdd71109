"""Nonlinear genetic structures — factor-analytic ΣG = ΛΛ' + Ψ (fa1, fa2, …), compound symmetry
with heterogeneous variances ⊗ Σ_trait (csh) and Σ_env ⊗ Σ_trait (separable): ℓ, score and AI
at a given θ against the brute-force reference, the optimum against a scipy maximisation from
several starts, nesting, Heywood cases and rotation invariance."""

import numpy as np
import pytest
from scipy import optimize

import hetvc
from conftest import dense_model
from hetvc.structures import lower_triangular, make_structure
from reference import build_problem, build_V, make_problem, reference_loglik

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    """2 environments × 2 traits (d = 4), correlated across environments, some values missing."""
    return make_problem(5, n_geno=24, n_env=2, genetic="unstructured", missing=0.1)


def _theta(model, rng):
    """A feasible θ away from the start: the structure's θ of a random positive definite ΣG,
    its free parameters then moved."""
    theta = model.start()
    s = model.genetic
    B = rng.normal(size=(s.dim, s.dim))
    theta[:s.n_params] = s.theta(B @ B.T / s.dim + 0.3 * np.eye(s.dim))
    theta[s.free_params()] += rng.normal(scale=0.2, size=len(s.free_params()))
    return theta


def _reference_at(data, K, model, theta):
    G, E = model.matrices(theta)
    return reference_loglik(data, K, TRAITS, "env", "id", "unstructured", "homogeneous", G, E)


@pytest.mark.parametrize("name", ["fa1", "fa2", "csh", "separable"])
def test_loglik_score_and_ai_at_a_given_theta_equal_the_reference(problem, name):
    data, K, _, _ = problem
    model, eng = dense_model(data, K, TRAITS, name, "homogeneous")
    theta = _theta(model, np.random.default_rng(0))
    ev = eng.evaluate(theta)
    assert ev.loglik == pytest.approx(_reference_at(data, K, model, theta), abs=1e-9)
    # score: central differences of the reference ℓ in θ (step 1e-5: error ~1e-9)
    h = 1e-5
    fd = np.array([(_reference_at(data, K, model, theta + h * e) - _reference_at(data, K, model, theta - h * e)) / (2 * h)
                   for e in np.eye(len(theta))])
    np.testing.assert_allclose(ev.score, fd, rtol=1e-5, atol=1e-6)
    # AI by its definition ½ y'P V̇_j P V̇_k P y, V̇_j = ∂V/∂θ_j built from the reference's V
    prob = build_problem(data, K, TRAITS, "env", "id", "unstructured", "homogeneous")
    G, E = model.matrices(theta)
    V = build_V(prob, G, E)
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ prob.X @ np.linalg.solve(prob.X.T @ Vi @ prob.X, prob.X.T @ Vi)
    Py = P @ prob.y
    derivs = []
    for j in range(len(theta)):
        t = theta.astype(complex)
        t[j] += 1e-20j
        dG, dE = (np.imag(M) / 1e-20 for M in model.matrices(t))
        derivs.append(build_V(prob, dG, dE) @ Py)
    F = np.column_stack(derivs)
    np.testing.assert_allclose(ev.ai, 0.5 * F.T @ P @ F, rtol=1e-8, atol=1e-10)


def _scipy_optimum(data, K, k, starts=4, seed=0):
    """max ℓ over (Λ lower triangular, log ψ, Cholesky of ΣE) by BFGS from several starts."""
    s = make_structure("G", f"fa{k}", ["E1", "E2"], TRAITS)
    n_load = s.n_params - s.dim

    def unpack(x):
        theta = np.concatenate([x[:n_load], np.exp(x[n_load:n_load + s.dim])])
        low = np.array([[np.exp(x[-3]), 0.0], [x[-2], np.exp(x[-1])]])
        return s.matrix(theta), low @ low.T

    def objective(x):
        G, E = unpack(x)
        return -reference_loglik(data, K, TRAITS, "env", "id", "unstructured", "homogeneous", G, E)

    rng = np.random.default_rng(seed)
    return _best_of(objective, [np.concatenate([rng.normal(scale=0.7, size=n_load),
                                                np.log(rng.uniform(0.1, 1.0, size=s.dim)), [0.0, 0.0, 0.0]])
                                for _ in range(starts)])


def _best_of(objective, starts) -> float:
    """max ℓ = −min objective by BFGS over several starts."""
    results = [optimize.minimize(objective, x0, method="BFGS", options={"gtol": 1e-7, "maxiter": 3000})
               for x0 in starts]
    return -min(r.fun for r in results)


@pytest.mark.parametrize("k", [1, 2])
def test_optimum_equals_a_scipy_maximisation_from_several_starts(problem, k):
    data, K, _, _ = problem
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic=f"fa{k}", tol=1e-10)
    assert fit.converged
    ref = _scipy_optimum(data, K, k)
    # a ψ on the boundary is 0 for hetvc and exp(−large) for scipy: ℓ agrees to 1e-5
    assert fit.loglik == pytest.approx(ref, abs=1e-5)
    assert fit.loglik >= ref - 1e-6


def test_fa_with_d_minus_one_factors_reaches_unstructured_and_fa_k_nests_fa_k_minus_one(problem):
    data, K, _, _ = problem
    fits = {g: hetvc.fit(data, K, TRAITS, env="env", genetic=g, tol=1e-10)
            for g in ("diagonal", "fa1", "fa2", "fa3", "unstructured")}
    assert fits["fa3"].loglik == pytest.approx(fits["unstructured"].loglik, abs=1e-5)
    lls = [fits[g].loglik for g in ("fa1", "fa2", "fa3")]
    assert lls[0] <= lls[1] + 1e-6 and lls[1] <= lls[2] + 1e-6
    comp = hetvc.compare(fits["fa1"], fits["fa2"], fits["unstructured"]).set_index("model")
    assert comp.loc["fa2/homogeneous", "lrt_vs"] == "fa1/homogeneous"
    assert comp.loc["unstructured/homogeneous", "lrt_vs"] == "fa1/homogeneous"  # fa2 has 11 > 10 here
    assert comp.loc["fa2/homogeneous", "lrt_df"] == fits["fa2"].n_params - fits["fa1"].n_params


def test_a_heywood_case_is_flagged_and_converges():
    """One environment × trait with no genetic variance of its own: its ψ lands at zero."""
    data, K, _, _ = make_problem(9, n_geno=30, n_env=3, genetic="homogeneous", missing=0.0)
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="fa1", tol=1e-9)
    assert fit.converged
    heywood = [b for b in fit.boundary if b.endswith(".psi")]
    assert heywood, fit.boundary
    vc = fit.variance_components().set_index("name")
    assert (vc.loc[heywood, "se_note"] == "fixed at 0: on the boundary").all()
    assert np.linalg.eigvalsh(fit.genetic_covariance().to_numpy())[0] > -1e-9


def test_loglik_is_invariant_to_the_rotation_of_the_loadings(problem):
    data, K, _, _ = problem
    model, eng = dense_model(data, K, TRAITS, "fa2", "homogeneous")
    s = model.genetic
    theta = _theta(model, np.random.default_rng(4))
    lam = s.loadings(theta[:s.n_params])
    angle = 0.7
    Q = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    rotated = lam @ Q  # not lower triangular: the same ΣG
    back = lower_triangular(rotated)
    np.testing.assert_allclose(back @ back.T, lam @ lam.T, atol=1e-12)
    theta_r = theta.copy()
    rows = s.loading_rows
    theta_r[:len(rows)] = [back[a, j] for a, j in rows]
    assert eng.evaluate(theta_r).loglik == pytest.approx(eng.evaluate(theta).loglik, abs=1e-10)
    G, _ = model.matrices(theta)
    assert reference_loglik(data, K, TRAITS, "env", "id", "unstructured", "homogeneous",
                            rotated @ rotated.T + np.diag(s.specific(theta[:s.n_params])),
                            model.matrices(theta)[1]) == pytest.approx(eng.evaluate(theta).loglik, abs=1e-9)


def test_spectral_and_dense_agree_for_fa():
    data, K, _, _ = make_problem(6, n_geno=40, n_env=3, genetic="unstructured")
    spectral = hetvc.fit(data, K, TRAITS, env="env", genetic="fa1")
    dense = hetvc.fit(data, K, TRAITS, env="env", genetic="fa1", engine="dense")
    assert spectral.engine == "spectral" and dense.engine == "dense"
    assert spectral.loglik == pytest.approx(dense.loglik, abs=1e-7)
    np.testing.assert_allclose(spectral.genetic_covariance().to_numpy(), dense.genetic_covariance().to_numpy(),
                               rtol=1e-4, atol=1e-6)


def _scipy_optimum_kronecker(data, K, name, starts=3, seed=1):
    """max ℓ of csh / separable by BFGS over unconstrained coordinates: environment variances
    by their logs (csh) or Σ_env by its Cholesky factor (separable), the rest as in θ."""
    s = make_structure("G", name, ["E1", "E2"], TRAITS)
    n_env = 2

    def unpack(x):
        # the trait part (2 traits): b free, the Schur complement S = e^x ≥ 0
        trait = [x[s.n_params - 2], np.exp(x[s.n_params - 1])]
        if name == "csh":
            theta = np.concatenate([np.exp(x[:n_env]), [x[n_env]], trait])
        else:
            low = np.array([[x[0], 0.0], [x[1], x[2]]])
            A = low @ low.T
            theta = np.concatenate([[A[0, 0], A[1, 0], A[1, 1]], trait])
        e = x[s.n_params:]
        lowe = np.array([[np.exp(e[0]), 0.0], [e[1], np.exp(e[2])]])
        return s.matrix(theta), lowe @ lowe.T

    def objective(x):
        G, E = unpack(x)
        return -reference_loglik(data, K, TRAITS, "env", "id", "unstructured", "homogeneous", G, E)

    rng = np.random.default_rng(seed)
    starts_x = []
    for _ in range(starts):
        x0 = np.concatenate([rng.normal(scale=0.5, size=s.n_params), [0.0, 0.0, 0.0]])
        if name == "separable":
            x0[[0, 2]] = np.abs(x0[[0, 2]]) + 0.5
        starts_x.append(x0)
    return _best_of(objective, starts_x)


@pytest.mark.parametrize("name", ["csh", "separable"])
def test_csh_and_separable_optima_equal_a_scipy_maximisation(problem, name):
    data, K, _, _ = problem
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic=name, tol=1e-10)
    assert fit.converged
    assert fit.loglik == pytest.approx(_scipy_optimum_kronecker(data, K, name), abs=1e-5)


def test_csh_nests_in_separable_nests_in_unstructured_and_reports_one_correlation(problem):
    data, K, _, _ = problem
    fits = {g: hetvc.fit(data, K, TRAITS, env="env", genetic=g, tol=1e-10) for g in ("csh", "separable", "unstructured")}
    # with two environments, one correlation and two variances are any Σ_env: csh is separable
    assert fits["csh"].loglik == pytest.approx(fits["separable"].loglik, abs=1e-5)
    assert fits["separable"].loglik <= fits["unstructured"].loglik + 1e-6
    comp = hetvc.compare(*fits.values()).set_index("model")
    assert comp.loc["unstructured/homogeneous", "lrt_vs"] in ("csh/homogeneous", "separable/homogeneous")
    assert hetvc.comparison.nested(fits["csh"], fits["unstructured"])
    rg = fits["csh"].genetic_correlations()
    between = rg[rg["between"] == "environments"]
    # one ρ for every pair of environments and every trait, with its SE
    assert np.allclose(between["r"], between["r"].iloc[0]) and (between["se"] > 0).all()
    G = fits["separable"].genetic_covariance().to_numpy()
    A, B = G[::2, ::2], G[:2, :2] / G[0, 0]
    np.testing.assert_allclose(G, np.kron(A, B), rtol=1e-10, atol=1e-12)


def test_cheaper_fits_of_a_comparison_serve_as_starts(problem, monkeypatch):
    """fit_model(cheaper=[...]) takes the unstructured and heterogeneous starts from given fits
    (no refit) and reaches the same optimum."""
    import hetvc.fitting as fitting

    data, K, _, _ = problem
    cheaper = [hetvc.fit(data, K, TRAITS, env="env", genetic=g) for g in ("unstructured", "heterogeneous")]
    model = hetvc.build_model(data, K, TRAITS, env="env", genetic="fa1")
    alone = hetvc.fit_model(model)
    calls = []
    real = fitting._fit_model
    monkeypatch.setattr(fitting, "_fit_model", lambda *a, **k: calls.append(a[0].genetic.name) or real(*a, **k))
    reused = hetvc.fit_model(model, cheaper=cheaper)
    assert calls == ["fa1"]  # no cheaper model was fitted again
    assert reused.loglik == pytest.approx(alone.loglik, abs=1e-8)
    starts = next(n for n in reused.notes if n.startswith("starts of genetic='fa1'"))
    assert "unstructured-fit" in starts and "heterogeneous-fit" in starts and "default" in starts


@pytest.mark.parametrize("name", ["fa1", "fa2", "fa3"])
def test_score_curvature_is_the_hessian_of_the_score_weighted_elements(name):
    """Σ_e s_e ∂²σ_e/∂θ∂θ' against second differences of θ ↦ s'σ(θ) (step 1e-4: error ~1e-7)."""
    rng = np.random.default_rng(1)
    s = make_structure("G", name, ["E1", "E2", "E3"], TRAITS)
    theta = s.theta(np.cov(rng.standard_normal((6, 40))) + 0.5 * np.eye(6))
    score = rng.standard_normal(len(s.pairs))
    H = s.score_curvature(theta, score)
    n, h = len(theta), 1e-4
    f = lambda t: score @ s.elements(t)  # noqa: E731
    E = np.eye(n) * h
    fd = np.array([[(f(theta + E[i] + E[j]) - f(theta + E[i] - E[j]) - f(theta - E[i] + E[j])
                     + f(theta - E[i] - E[j])) / (4 * h * h) for j in range(n)] for i in range(n)])
    assert np.abs(fd).max() > 0.1  # the structure is nonlinear: there is a curvature to find
    np.testing.assert_allclose(H, fd, rtol=0, atol=1e-6 * np.abs(fd).max())
    for other in ("unstructured", "csh", "separable"):  # zero, or left to the AI
        s = make_structure("G", other, ["E1", "E2", "E3"], TRAITS)
        assert s.score_curvature(np.zeros(s.n_params), np.ones(len(s.pairs))) is None


@pytest.mark.parametrize("k", [1, 2])
def test_starts_cut_short_keep_the_optimum_of_starts_run_to_the_end(problem, monkeypatch, k):
    """The fitted starts run first; a later one that joins their optimum or falls short of it
    stops early — and the kept optimum is the one all starts run to convergence reach."""
    import hetvc.optimize as opt

    data, K, _, _ = problem
    cut = hetvc.fit(data, K, TRAITS, env="env", genetic=f"fa{k}", tol=1e-10)
    note = next(n for n in cut.notes if n.startswith(f"starts of genetic='fa{k}'"))
    order = [part.split(":")[0] for part in note.split(": ", 1)[1].split("; ")[:-1]]
    assert sorted(order) == ["default", "heterogeneous-fit", "unstructured-fit"]
    assert "joined the" in note or "stopped after" in note, note
    monkeypatch.setattr(opt, "JOIN", -1.0)
    monkeypatch.setattr(opt, "SHORT_MARGIN", np.inf)
    full = hetvc.fit(data, K, TRAITS, env="env", genetic=f"fa{k}", tol=1e-10)
    full_note = next(n for n in full.notes if n.startswith(f"starts of genetic='fa{k}'"))
    assert "joined" not in full_note and "stopped after" not in full_note
    assert cut.loglik == pytest.approx(full.loglik, abs=1e-8)
    np.testing.assert_allclose(cut.genetic_covariance(), full.genetic_covariance(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("first_wins", [True, False])
def test_the_solution_is_that_of_the_kept_start(problem, monkeypatch, first_wins):
    """BLUEs, BLUPs and PEVs are solved at the end of the best start so far (while the engine
    holds its factor); whichever start is kept, they equal a fresh engine's at the kept θ.
    ``first_wins`` False: the first start is cut to one iteration (not converged), so a later
    start replaces it."""
    from hetvc import fitting
    from hetvc.engines import choose_engine

    data, K, _, _ = problem
    if not first_wins:
        real, calls = fitting.maximize, []

        def first_cut_short(*a, **k):
            calls.append(1)
            return real(*a, **(dict(k, max_iter=1) if len(calls) == 1 else k))
        monkeypatch.setattr(fitting, "maximize", first_cut_short)
    model = hetvc.build_model(data, K, TRAITS, env="env", genetic="fa1")
    fit = hetvc.fit_model(model, hetvc.FitOptions(engine="dense", pev=True))
    note = next(n for n in fit.notes if n.startswith("starts of genetic='fa1'"))
    kept = note.rsplit("; kept the ", 1)[1]
    assert (kept == "unstructured-fit start") == first_wins and fit.converged, note
    fresh = choose_engine(model, "dense")[0].solve(fit.theta, pev=True)
    np.testing.assert_allclose(fit.blup, fresh.blup, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.pev, fresh.pev, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(fit.beta, fresh.beta, rtol=1e-10, atol=1e-12)
