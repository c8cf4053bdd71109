"""What a fit says about itself: notes on the data (duplicated environments, covariates nested
in a genotype, many parameters for few genotypes), AICc, a runaway estimate is never
converged, SEs that carry no information are NA with their reason, the status line."""

import dataclasses

import numpy as np
import pandas as pd
import pytest

import hetvc
import hetvc.fitting as FIT
from hetvc.data import build_design
from hetvc.diagnostics import design_notes, runaway
from hetvc.kinship import kinship_matrix
from hetvc.model import Model
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    data, K, _, _ = make_problem(51, n_geno=30, n_env=2, genetic="homogeneous")
    return data, K


@pytest.fixture(scope="module")
def base(problem):
    data, K = problem
    return hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous")


def _model(data, K, genetic="homogeneous", residual="homogeneous", fixed=None, traits=TRAITS, env="env", id="id"):
    Kmat, ids = kinship_matrix(K, None)
    return Model.build(build_design(data, Kmat, ids, traits, env, id, fixed), genetic, residual)


# -- notes --------------------------------------------------------------------------------------------
def test_duplicated_environment_is_noted_on_the_fit(problem, base):
    data, K = problem
    assert not any("identical" in n for n in base.notes)
    copy = pd.concat([data, data[data["env"] == "E1"].assign(env="E3")], ignore_index=True)
    fit = hetvc.fit(copy, K, TRAITS, env="env", genetic="homogeneous")
    dup = [n for n in fit.notes if "identical records" in n]
    assert len(dup) == 1 and dup[0].startswith("environments 'E1' and 'E3' hold identical records")
    # one trait copied only: a note on that trait; a reordered copy is still a copy
    part = data[data["env"] == "E1"].sample(frac=1.0, random_state=1).assign(env="E3")
    part["y2"] = np.random.default_rng(3).normal(size=len(part))
    notes = design_notes(_model(pd.concat([data, part], ignore_index=True), K))
    assert [n for n in notes if "identical" in n] == [
        "trait 'y1' has identical values (the same genotypes, the same 30 values) in environments 'E1' "
        "and 'E3': entered twice? Set the copies missing"]
    # the same values for other genotypes are not a copy
    shuffled = part.assign(id=part["id"].to_numpy()[::-1], y2=part["y2"])
    assert not [n for n in design_notes(_model(pd.concat([data, shuffled], ignore_index=True), K)) if "identical" in n]


def test_cornhybrids_locations_1_and_2_are_flagged(shared_data):
    src = shared_data / "DT_cornhybrids"
    data = pd.read_csv(src / "DT_cornhybrids.csv")
    K = hetvc.read_kinship(src / "GT_cornhybrids.csv")
    notes = design_notes(_model(data, K, traits=["Yield", "PlantHeight"], env="Location", id="GCA1"))
    assert notes[0].startswith("environments 1 and 2 hold identical records")
    assert notes[1].startswith("trait 'PlantHeight' has identical values") and "1, 2 and 4" in notes[1]


def test_covariate_nested_in_one_genotype_is_noted(problem):
    data, K = problem
    flagged = data.assign(check=(data["id"] == "g003").astype(float), x=np.random.default_rng(2).normal(size=len(data)))
    fit = hetvc.fit(flagged, K, TRAITS, env="env", genetic="homogeneous", fixed="~ check + x")
    nested = [n for n in fit.notes if n.startswith("fixed effect")]
    assert nested == ["fixed effect 'check' is nonzero only in records of genotype(s) 'g003': it absorbs "
                      "their genetic value (their records tell nothing about the genetic variances); drop it "
                      "unless that is intended"]
    group = data.assign(check=data["id"].isin(["g001", "g002", "g003"]).astype(float))
    assert not [n for n in design_notes(_model(group, K, fixed="~ check")) if n.startswith("fixed effect")]


def test_many_parameters_for_few_genotypes_point_to_aicc_and_bic(problem, base):
    data, K = problem
    assert not any("AICc" in n for n in base.notes)  # k = 6 from 30 genotypes
    notes = design_notes(_model(data, K, "unstructured", "heterogeneous"))  # k = 10 + 6
    assert "16 covariance parameters from 30 phenotyped genotypes" in notes[-1] and "AICc and BIC" in notes[-1]


# -- AICc -----------------------------------------------------------------------------------------------
def test_aicc_definition_and_compare_columns(problem, base):
    data, K = problem
    k, n = base.n_params, base.n_obs - base.rank_x
    assert base.aicc == pytest.approx(base.aic + 2 * k * (k + 1) / (n - k - 1), rel=1e-12)
    assert base.aicc > base.aic
    assert np.isnan(dataclasses.replace(base, n_obs=base.rank_x + k + 1).aicc)
    het = hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous")
    table = hetvc.compare(base, het)
    for col in ("model", "genetic", "residual", "k", "logLik", "AIC", "BIC", "converged", "lrt_vs",
                "lrt_stat", "lrt_df", "lrt_p", "dAIC", "dBIC", "AICc", "dAICc"):
        assert col in table.columns
    np.testing.assert_allclose(table["AICc"], [base.aicc, het.aicc])
    assert table["dAICc"].min() == 0 and table["dAICc"].max() == pytest.approx(abs(het.aicc - base.aicc))
    assert "AICc = " in base.summary()


def test_aicc_undefined_is_nan_with_a_note(problem):
    data, K = problem
    four = data[data["env"] == "E1"].iloc[:4]  # N − p = 3, k = 2: n − k − 1 = 0
    fit = hetvc.fit(four, K, "y1", genetic="homogeneous")
    assert np.isnan(fit.aicc) and any(n.startswith("AICc is not defined") for n in fit.notes)


# -- runaway ---------------------------------------------------------------------------------------------
def test_runaway_from_data_is_never_converged(problem, monkeypatch):
    """A single-record environment (the design check bypassed): its residual variance runs
    away while the optimiser's decrement vanishes; the fit must not say converged."""
    data, K = problem
    extra = data.iloc[[0]].assign(env="XYZ", y1=0.3)
    monkeypatch.setattr(FIT, "check_design", lambda model: None)
    seen = {}
    real = FIT.maximize

    def spy(*args, **kw):
        out = real(*args, **kw)
        seen["status"] = out[2].status
        return out

    monkeypatch.setattr(FIT, "maximize", spy)
    fit = hetvc.fit(pd.concat([data, extra], ignore_index=True), K, "y1", env="env",
                    genetic="homogeneous", residual="heterogeneous", max_iter=20)
    assert seen["status"] in ("converged", "iteration limit", "stalled")
    assert not fit.converged and fit.record["status"] == "runaway"
    msg = fit.record["message"]
    assert msg.startswith("E[XYZ][y1,y1] ran away to ") and "phenotypic variance of its cell" in msg
    assert fit.residual_covariance("XYZ").iloc[0, 0] > 1e3 * data["y1"].var()
    assert "runaway" in fit.summary().splitlines()[3]


def test_a_converged_record_with_a_runaway_genetic_variance_is_not_converged(problem, monkeypatch):
    data, K = problem
    real = FIT.maximize

    def inflate(engine, model, theta0, **kw):
        theta, ev, record = real(engine, model, theta0, **kw)
        assert record.converged
        theta = theta.copy()
        theta[model.param_names().index("G[y2,y2]")] *= 1e7
        return theta, ev, record

    monkeypatch.setattr(FIT, "maximize", inflate)
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous")
    assert not fit.converged and fit.record["status"] == "runaway"
    assert fit.record["message"].startswith("G[y2,y2] ran away to")
    assert "over the mean variance of K" in fit.record["message"]


def test_runaway_rules(problem):
    data, K = problem
    model = _model(data, K)
    theta = model.start()
    ai = np.eye(len(theta))
    assert runaway(model, theta, ai, ai) == ""
    sg, se = model.scales()
    big = theta.copy()
    big[model.param_names().index("E[y1,y1]")] = 2e3 * se[0]  # above 1e3 phenotypic variances
    assert runaway(model, big, ai, ai).startswith("E[y1,y1] ran away to")
    big[model.param_names().index("E[y1,y1]")] = 5e2 * se[0]  # large, but not a runaway
    assert runaway(model, big, ai, ai) == ""
    nan = theta.copy()
    nan[1] = np.nan
    assert "is not finite" in runaway(model, nan, ai, ai)
    assert "AI" in runaway(model, theta, np.full_like(ai, np.inf), ai)
    inv = ai.copy()
    inv[0, 0] = np.inf
    assert runaway(model, theta, ai, inv) == f"the SE of {model.param_names()[0]} is not finite: the estimate ran away"
    assert runaway(model, theta, ai, inv, skip=np.arange(len(theta)) == 0) == ""


# -- SEs that carry no information ------------------------------------------------------------------------
def test_se_notes_boundary_singular_and_absurd(base):
    fit = base
    vc = fit.variance_components()
    assert list(vc.columns) == ["name", "component", "structure", "env1", "env2", "trait1", "trait2",
                                "estimate", "se", "se_note"]
    assert list(fit.heritability().columns) == ["env", "trait", "h2", "se", "se_note"]
    assert list(fit.pooled_heritability().columns) == ["trait", "h2", "se", "se_note"]
    assert list(fit.genetic_correlations().columns) == ["between", "env1", "env2", "trait1", "trait2", "r", "se", "se_note"]
    assert not fit.boundary and (vc["se_note"] == "").all() and vc["se"].gt(0).all()
    assert (fit.heritability()["se_note"] == "").all()

    on_edge = dataclasses.replace(fit, boundary=["G"])
    vc = on_edge.variance_components()
    g = vc["component"] == "G"
    assert vc.loc[g, "se"].isna().all() and (vc.loc[g, "se_note"] == "on the boundary: G is singular").all()
    assert vc.loc[~g, "se"].notna().all()
    assert on_edge.heritability()["se"].isna().all() and on_edge.pooled_heritability()["se"].isna().all()
    assert (on_edge.genetic_correlations()["se_note"] == "on the boundary: G is singular").all()
    assert "NA (on the boundary: G is singular)" in on_edge.summary()

    cov = fit.theta_cov.copy()
    k = fit.param_names().index("E[y1,y1]")
    cov[k, :] = cov[:, k] = np.nan
    singular = dataclasses.replace(fit, theta_cov=cov)
    vc = singular.variance_components()
    assert vc["se_note"].tolist().count("no information in the data: AI singular") == 1
    h2 = singular.heritability().set_index("trait")
    assert np.isnan(h2.loc["y1", "se"]).all() and h2.loc["y2", "se"].notna().all()

    absurd = dataclasses.replace(fit, theta_cov=fit.theta_cov * 1e12)
    vc = absurd.variance_components()
    assert vc["se"].isna().all() and vc["se_note"].str.startswith("absurd").all()
    assert absurd.heritability()["se_note"].str.startswith("absurd").all()  # inherited
    assert any(n.startswith("SEs that carry no information (NA)") for n in absurd.se_notes())


def test_h2_and_correlation_se_above_one_is_absurd(base):
    """SE > 1 on a 0–1 (or −1–1) scale while the parameters' own SEs pass."""
    scaled = dataclasses.replace(base, theta_cov=base.theta_cov * 400)
    assert (scaled.variance_components()["se_note"] == "").all()
    rg = scaled.genetic_correlations()
    h2 = scaled.pooled_heritability()
    expect = base.genetic_correlations()["se"] * 20
    assert ((rg["se_note"] == "absurd: over 1 for a correlation") == (expect > 1)).all()
    assert ((h2["se_note"] == "") == (base.pooled_heritability()["se"] * 20 <= 1)).all()


# -- status line ----------------------------------------------------------------------------------------------
def test_status_line(base):
    rec = dict(base.record, status="converged", iterations=52, ai_iterations=41, fallback_iterations=11,
               evaluations=140, fallback_evaluations=60, finished_by="AI", seconds=3.14, message="")
    assert dataclasses.replace(base, record=rec).status_line() == (
        "converged after 52 iterations (41 AI + 11 L-BFGS; 140 evaluations, 60 in the fallback; "
        "finished by AI, 3.1 s)")
    rec.update(iterations=12, ai_iterations=12, fallback_iterations=0, fallback_evaluations=0,
               evaluations=13, seconds=0.2)
    fit = dataclasses.replace(base, record=rec)
    assert fit.status_line() == "converged after 12 AI iterations (13 evaluations, 0.2 s)"
    assert "  status: converged after 12 AI iterations (13 evaluations, 0.2 s)" in fit.summary()
    old = {k: v for k, v in rec.items() if k not in ("ai_iterations", "fallback_iterations",
                                                      "fallback_evaluations", "finished_by", "time_limit")}
    old.update(status="iteration limit", message="no convergence within 12 iterations")
    assert dataclasses.replace(base, record=old).status_line() == (
        "iteration limit after 12 iterations (13 evaluations, 0.2 s); no convergence within 12 iterations")
    assert base.status_line().startswith("converged after ")


def test_fitted_structures_are_named_when_env_is_none(problem):
    data, K = problem
    one = data[data["env"] == "E1"]
    fit = hetvc.fit(one, K, TRAITS, genetic="heterogeneous", residual="heterogeneous")
    assert (fit.genetic, fit.residual) == ("homogeneous", "homogeneous")
    assert fit.summary().startswith("hetvc fit: genetic=homogeneous, residual=homogeneous")
    assert hetvc.load(fit.to_json()).genetic == "homogeneous"


def test_a_correlation_with_a_zero_variance_is_undefined(problem):
    """DT_cornhybrids printed r = 0.999 and h² = 5e-09 for a plant-height genetic variance of
    3.5e-07: h² = 0 is an estimate, a correlation with a zero variance is not."""
    data, K = problem[:2]
    fit = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="heterogeneous")
    r = fit.genetic_correlations()
    assert r["r"].notna().all()
    names = fit.param_names()
    theta = fit.theta.copy()
    theta[names.index("G[E1][y1,y1]")] = 1e-9
    theta[names.index("G[E1][y1,y2]")] = 0.0
    zeroed = dataclasses.replace(fit, theta=theta)
    r = zeroed.genetic_correlations().set_index("env1")
    assert np.isnan(r.loc["E1", "r"]) and np.isnan(r.loc["E1", "se"])
    assert r.loc["E1", "se_note"] == "undefined: the genetic variance of y1 in E1 is zero"
    assert np.isfinite(r.loc["E2", "r"])
    h2 = zeroed.heritability().set_index(["env", "trait"])
    assert 0 <= h2.loc[("E1", "y1"), "h2"] < 1e-6  # h² = 0 stays a number
