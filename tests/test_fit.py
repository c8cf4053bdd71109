"""AI-REML fits against a brute-force maximiser, invariances, GBLUP, recovery of the truth.

Tolerances (issue 2): at the optimum ℓ within 1e-6 of the brute-force maximum (ours may be
higher: then the reference stopped early), θ within 1e-4 of the larger of |θ| and the trait
variance; invariances to 1e-8 relative.
"""

import numpy as np
import pandas as pd
import pytest
from scipy import optimize

import hetvc
from reference import make_problem, reference_fit

STRUCTURES = [(g, r) for g in ("homogeneous", "heterogeneous", "unstructured")
              for r in ("homogeneous", "heterogeneous")]
TRAITS = ["y1", "y2"]


def _fit(data, K, genetic, residual, **kw):
    return hetvc.fit(data, K, TRAITS, env="env", id="id", genetic=genetic, residual=residual, **kw)


@pytest.mark.parametrize("genetic,residual,missing", [(g, r, 0.15) for g, r in STRUCTURES]
                         + [("heterogeneous", "homogeneous", 0.0), ("unstructured", "homogeneous", 0.0)])
def test_optimum_equals_brute_force(genetic, residual, missing):
    data, K, _, _ = make_problem(11, n_geno=30, n_env=2, genetic=genetic, residual=residual,
                                 missing=missing, p_env=0.8)
    ours = _fit(data, K, genetic, residual, tol=1e-11)
    ref = reference_fit(data, K, TRAITS, "env", "id", genetic, residual)
    assert ours.converged
    assert ours.loglik == pytest.approx(ref["loglik"], abs=1e-6)
    ref_theta = _as_full(ours, ref["G"], ref["E"])
    scale = np.maximum(np.abs(ref_theta), 1.0)
    assert np.all(np.abs(ours.theta - ref_theta) <= 1e-4 * scale), (ours.theta, ref_theta)


def _as_full(fit, G, E):
    """The reference's (G, E) matrices as θ in the fit's layout."""
    return np.concatenate([fit._G.theta(G), fit._E.theta(E)])


def test_boundary_estimate_is_flagged_and_matches_brute_force():
    """No genetic signal in E2: ΣG_E2 ends on the boundary (singular), still PSD, flagged, and
    ℓ equals the brute-force maximum."""
    data, K, _, _ = make_problem(2, n_geno=40, n_env=2, genetic="heterogeneous")
    rng = np.random.default_rng(2)
    e2 = data["env"] == "E2"
    data.loc[e2, TRAITS] = rng.normal(size=(e2.sum(), 2)) @ np.array([[1, 0.5], [0, 1]])
    fit = _fit(data, K, "heterogeneous", "homogeneous", tol=1e-11)
    assert fit.converged
    assert fit.boundary == ["G[E2]"]
    vals = np.linalg.eigvalsh(fit.genetic_covariance("E2").to_numpy())
    assert 0 <= vals[0] < 1e-6 * vals[1]
    assert np.linalg.eigvalsh(fit.residual_covariance("E1").to_numpy())[0] > 0
    ref = reference_fit(data, K, TRAITS, "env", "id", "heterogeneous", "homogeneous")
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-6)


INVARIANCE = dict(genetic="heterogeneous", residual="heterogeneous")


@pytest.fixture(scope="module")
def problem():
    return make_problem(2, n_geno=40, n_env=3, missing=0.1, p_env=0.6, **INVARIANCE)


@pytest.fixture(scope="module")
def base(problem):
    data, K, _, _ = problem
    return _fit(data, K, **INVARIANCE)


class TestInvariance:
    genetic, residual = INVARIANCE["genetic"], INVARIANCE["residual"]

    def test_row_order(self, problem, base):
        data, K, _, _ = problem
        shuffled = data.sample(frac=1.0, random_state=4)
        fit = _fit(shuffled, K, self.genetic, self.residual)
        assert fit.loglik == pytest.approx(base.loglik, rel=1e-10)
        np.testing.assert_allclose(fit.theta, base.theta, rtol=1e-6, atol=1e-9)

    def test_environment_labels(self, problem, base):
        data, K, _, _ = problem
        mapping = {"E1": "site C", "E2": "site A", "E3": "site B"}  # changes the order too
        fit = _fit(data.assign(env=data["env"].map(mapping)), K, self.genetic, self.residual)
        assert fit.loglik == pytest.approx(base.loglik, rel=1e-10)
        for old, new in mapping.items():
            pd.testing.assert_frame_equal(fit.genetic_covariance(new), base.genetic_covariance(old),
                                          rtol=1e-6, atol=1e-9)

    def test_trait_scaling(self, problem, base):
        data, K, _, _ = problem
        c = 1000.0
        fit = _fit(data.assign(y2=data["y2"] * c), K, self.genetic, self.residual)
        # REML: log|V| gains 2·N₂·log c and log|X'V⁻¹X| loses 2·p₂·log c (p₂ = y2's fixed
        # effects, one mean per environment), so ℓ shifts by −(N₂ − p₂)·log c
        n2 = int(data["y2"].notna().sum())
        p2 = sum(name.endswith("[y2]") for name in base.x_names)
        assert fit.loglik == pytest.approx(base.loglik - (n2 - p2) * np.log(c), rel=1e-9)
        scale = np.ones(len(TRAITS))
        scale[1] = c
        for env in base.envs:
            expected = base.genetic_covariance(env).to_numpy() * np.outer(scale, scale)
            np.testing.assert_allclose(fit.genetic_covariance(env).to_numpy(), expected, rtol=1e-5,
                                       atol=1e-9 * c * c)

    def test_k_labels_order(self, problem, base):
        data, K, _, _ = problem
        perm = K.index[::-1]
        fit = _fit(data, K.loc[perm, perm], self.genetic, self.residual)
        assert fit.loglik == pytest.approx(base.loglik, rel=1e-10)


def test_single_trait_single_environment_is_gblup():
    """One trait, one environment: the ordinary kinship LMM, σg²K + σe²I, maximised here by a
    one-dimensional search over h² with σ² profiled out (eigendecomposition of K)."""
    data, K, _, _ = make_problem(8, n_geno=60, n_env=1, n_traits=1, genetic="homogeneous")
    fit = hetvc.fit(data, K, "y1", id="id", genetic="homogeneous", tol=1e-12)
    Kobs = K.loc[data["id"], data["id"]].to_numpy()
    s, U = np.linalg.eigh(Kobs)
    y = U.T @ data["y1"].to_numpy()
    x = U.T @ np.ones(len(y))
    n = len(y)

    def neg_profile(h):  # REML with V = σ²(h K + (1−h) I), σ² profiled
        d = h * s + (1 - h)
        xtx = np.sum(x * x / d)
        b = np.sum(x * y / d) / xtx
        r = y - x * b
        sig2 = np.sum(r * r / d) / (n - 1)
        ll = -0.5 * ((n - 1) * np.log(2 * np.pi * sig2) + np.log(d).sum() + np.log(xtx) + (n - 1))
        return -ll, sig2

    res = optimize.minimize_scalar(lambda h: neg_profile(h)[0], bounds=(1e-9, 1 - 1e-9), method="bounded",
                                   options=dict(xatol=1e-12))
    sig2 = neg_profile(res.x)[1]
    assert fit.loglik == pytest.approx(-res.fun, abs=1e-7)
    np.testing.assert_allclose(fit.theta, [res.x * sig2, (1 - res.x) * sig2], rtol=1e-4)


@pytest.mark.parametrize("genetic", ["homogeneous", "heterogeneous"])
def test_recovery_of_the_truth(genetic):
    """30 data sets from the model: the mean estimate lies within 3 Monte-Carlo SEs of the truth."""
    estimates, truths = [], []
    for seed in range(30):
        data, K, G, E = make_problem(100 + seed, n_geno=60, n_env=2, genetic=genetic,
                                     residual="homogeneous")
        fit = _fit(data, K, genetic, "homogeneous", pev=False)
        assert fit.converged
        estimates.append(fit.theta)
        truths.append(np.concatenate([fit._G.theta(G), fit._E.theta(E)]))
    # each problem draws its own true Σ: test the mean error against its Monte-Carlo SE
    err = np.array(estimates) - np.array(truths)
    se = err.std(axis=0, ddof=1) / np.sqrt(len(err))
    assert np.all(np.abs(err.mean(axis=0)) <= 3 * se), (err.mean(axis=0), se)


def test_refits_on_a_checked_kinship_do_not_check_it_again(monkeypatch):
    """hetvc.fit checks an unmarked K on every call and a checked one (check_kinship,
    read_kinship, simulate) never again while it is unchanged; the fits are identical."""
    import hetvc.kinship.check as kinship  # check_kinship calls the psd_certificate of this module

    data, K, _, _ = make_problem(7, n_geno=40, n_env=2, genetic="heterogeneous", residual="homogeneous")
    calls = []
    real = kinship.psd_certificate
    monkeypatch.setattr(kinship, "psd_certificate", lambda *a, **k: calls.append(1) or real(*a, **k))
    raw = _fit(data, K, "heterogeneous", "homogeneous", pev=False)
    _fit(data, K, "heterogeneous", "homogeneous", pev=False)
    assert len(calls) == 2
    checked = hetvc.check_kinship(K)
    again = _fit(data, checked, "heterogeneous", "homogeneous", pev=False)
    _fit(data, checked, "homogeneous", "homogeneous", pev=False)
    assert len(calls) == 3
    assert again.loglik == raw.loglik
    np.testing.assert_array_equal(again.theta, raw.theta)


def test_kinship_given_as_a_path(tmp_path):
    """A path (str, bytes or PathLike) is read and checked once; the fit equals the frame's."""
    data, K, _, _ = make_problem(7, n_geno=40, n_env=2, genetic="heterogeneous", residual="homogeneous")
    path = tmp_path / "K.npy"
    hetvc.write_kinship(K, path)
    ref = _fit(data, K, "heterogeneous", "homogeneous", pev=False)
    for p in (path, str(path), bytes(path)):
        fit = _fit(data, p, "heterogeneous", "homogeneous", pev=False)
        assert fit.loglik == ref.loglik


def test_records_without_trait_values_need_no_id_in_k():
    """A record with no observed trait plays no part: its id need not be in K, its environment
    is no level, its covariates are not read (DT_cornhybrids lists all 400 crosses, 300 of them
    never made, with ids that K does not hold)."""
    data, K, _, _ = make_problem(3, n_geno=30, n_env=2, n_covariates=1)
    ghosts = pd.DataFrame({"id": ["not-in-K", "nor-this"], "env": ["E9", "E1"],
                           "y1": [np.nan, np.nan], "y2": [np.nan, np.nan], "x1": [np.nan, 1.0]})
    ref = _fit(data, K, "heterogeneous", "homogeneous", fixed="~ x1")
    fit = _fit(pd.concat([data, ghosts], ignore_index=True), K, "heterogeneous", "homogeneous", fixed="~ x1")
    assert fit.envs == ref.envs == ["E1", "E2"]
    assert fit.loglik == pytest.approx(ref.loglik, abs=1e-9)
    assert any("2 record(s) with no observed trait were ignored" in n for n in fit.notes)
    bad = data.copy()
    bad.loc[5, "id"] = "not-in-K"
    with pytest.raises(hetvc.InputError, match="not-in-K"):
        _fit(bad, K, "heterogeneous", "homogeneous")
