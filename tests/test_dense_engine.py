"""The dense engine against the independent reference (tests/reference.py).

Tolerances: ℓ to 1e-9 relative (both are exact formulas); the score to 1e-6 relative of
its scale against central differences of the reference ℓ (difference error ~h²); the AI
against its definition ½ y'P V_k P V_l P y with explicit V_k and P (1e-9 relative).
"""

import numpy as np
import pytest

from conftest import dense_model
from reference import build_problem, covariance_elements, make_problem, reference_loglik, reference_score

STRUCTURES = [(g, r) for g in ("homogeneous", "heterogeneous", "unstructured")
              for r in ("homogeneous", "heterogeneous")]


def _problem(genetic, residual, seed=3, missing=0.15, **kw):
    kw.setdefault("n_geno", 25)
    kw.setdefault("n_env", 3)
    kw.setdefault("p_env", 0.7)
    return make_problem(seed, genetic=genetic, residual=residual, missing=missing, n_untested=3, **kw)


@pytest.mark.parametrize("genetic,residual", STRUCTURES)
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_loglik_equals_reference(genetic, residual, method):
    data, K, G, E = _problem(genetic, residual, n_covariates=1)
    model, engine = dense_model(data, K, ["y1", "y2"], genetic, residual, method, fixed="~ x1")
    ours = engine.evaluate(model.join(G, E), derivatives=False).loglik
    ref = reference_loglik(data, K, ["y1", "y2"], "env", "id", genetic, residual, G, E,
                           method=method, covariates=["x1"])
    assert ours == pytest.approx(ref, rel=1e-9)


@pytest.mark.parametrize("genetic,residual", STRUCTURES)
def test_score_equals_finite_differences(genetic, residual):
    data, K, G, E = _problem(genetic, residual)
    model, engine = dense_model(data, K, ["y1", "y2"], genetic, residual)
    score = engine.evaluate(model.join(G, E)).score
    fd = reference_score(data, K, ["y1", "y2"], "env", "id", genetic, residual, G, E)
    ours = {("GE"[t], min(a, b), max(a, b)): v for (t, a, b), v in zip(model.elements(), score)}
    elements = covariance_elements(build_problem(data, K, ["y1", "y2"], "env", "id", genetic, residual))
    assert len(elements) == len(ours)
    scale = np.abs(fd.to_numpy()).max()
    for (name, which, a, b), value in zip(elements, fd.to_numpy()):
        assert ours[(which, min(a, b), max(a, b))] == pytest.approx(value, abs=1e-6 * scale), name


@pytest.mark.parametrize("genetic,residual", [("heterogeneous", "heterogeneous"), ("unstructured", "homogeneous")])
@pytest.mark.parametrize("method", ["reml", "ml"])
def test_ai_equals_definition(genetic, residual, method):
    data, K, G, E = _problem(genetic, residual)
    model, engine = dense_model(data, K, ["y1", "y2"], genetic, residual, method)
    theta = model.join(G, E)
    ev = engine.evaluate(theta)
    V = engine.covariance(theta)
    X, y = model.design.X, model.design.y
    Vi = np.linalg.inv(V)
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    mid = P if method == "reml" else Vi
    Vk = [engine.covariance(np.eye(len(theta))[k]) for k in range(len(theta))]  # V is linear in θ
    Py = P @ y
    F = np.column_stack([Vk_ @ Py for Vk_ in Vk])
    ai = 0.5 * F.T @ mid @ F
    trace = np.array([np.trace(mid @ Vk_) for Vk_ in Vk])
    score = -0.5 * (trace - F.T @ Py)
    np.testing.assert_allclose(ev.ai, ai, rtol=1e-9, atol=1e-12 * np.abs(ai).max())
    np.testing.assert_allclose(ev.score, score, rtol=1e-9, atol=1e-12 * np.abs(score).max())


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_derivatives_reuse_the_factor_of_an_evaluation_of_loglik_alone(method):
    """ℓ alone at θ, then the score and AI from the factor kept for θ: the same as a fresh
    engine's; a θ of its own is factored again."""
    data, K, G, E = _problem("unstructured", "homogeneous")
    model, engine = dense_model(data, K, ["y1", "y2"], "unstructured", "homogeneous", method)
    theta = model.join(G, E)
    fresh = dense_model(data, K, ["y1", "y2"], "unstructured", "homogeneous", method)[1].evaluate(theta)
    engine.evaluate(1.2 * theta, derivatives=False)
    assert engine.evaluate(theta, derivatives=False).loglik == pytest.approx(fresh.loglik, abs=1e-10)
    again = engine.evaluate(theta)
    assert again.loglik == pytest.approx(fresh.loglik, abs=1e-10)
    np.testing.assert_allclose(again.score, fresh.score, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(again.ai, fresh.ai, rtol=1e-10, atol=1e-12)
    other = engine.evaluate(1.2 * theta)
    assert abs(other.loglik - fresh.loglik) > 1e-3
