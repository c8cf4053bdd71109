"""The completed spectral engine against the dense engine (issue 15, item 3).

Missing trait values and (case (b)) genotypes missing from environments are completed; the
engine must match the dense engine on the observed values exactly: at several θ ℓ within
1e-8, score and AI within 1e-7 of their largest entry; BLUEs, BLUPs, fitted values and PEVs
1e-6; whole fits θ, SEs, BLUEs, BLUPs and PEVs 1e-6 relative.
"""

import numpy as np
import pandas as pd
import pytest

import hetvc
import hetvc.fitting
from hetvc.engines import DenseEngine, EngineChoice, NotApplicable, SpectralEngine
from hetvc.engines.completed import CompletedEngine, CompletedPlan, completed_plan
from hetvc.engines.spectral import SpectralNotApplicable
from hetvc.examples import load_example
from hetvc.fitting import build_model
from hetvc.simulate import simulate

from engine_checks import assert_evaluations_agree, assert_solutions_agree
from engine_checks import rel as _rel
from engine_checks import trial_thetas as _thetas


def _sim(n=60, traits=2, locations=3, snps=200, design="split", covariates=0, seed=1, h2=0.3):
    return simulate(n=n, traits=traits, locations=locations, snps=snps, design=design,
                    covariates=covariates, seed=seed, w=0.3, rho=0.5, h2=h2)


def _fixed(covariates):
    return " + ".join(f"c{i + 1}" for i in range(covariates)) if covariates else None


def _holes(pheno, traits, values=0, records=0, seed=0):
    """``values`` trait values blanked and ``records`` records dropped, at random."""
    rng = np.random.default_rng(seed)
    out = pheno.copy()
    for r in rng.choice(len(out), values, replace=False):
        out.loc[out.index[r], traits[rng.integers(len(traits))]] = np.nan
    return out.drop(out.index[rng.choice(len(out), records, replace=False)])


def _model(sim, pheno, genetic, residual, method="reml", covariates=0, env="env"):
    return build_model(pheno, sim.K, sim.truth.traits, env=env, genetic=genetic, residual=residual,
                       method=method, fixed=_fixed(covariates))


# (label, simulate kwargs, holes kwargs, genetic, residual, method)
CASES = [
    ("a: one missing value", dict(covariates=1), dict(values=1), "heterogeneous", "homogeneous", "reml"),
    ("a: het E, ML, several", dict(seed=2), dict(values=9), "heterogeneous", "heterogeneous", "ml"),
    ("a: diagonal G", dict(seed=3, covariates=2), dict(values=6), "diagonal", "heterogeneous", "reml"),
    ("b: unstructured, values and cells", dict(n=30, design="full", covariates=1),
     dict(values=6, records=5), "unstructured", "heterogeneous", "reml"),
    ("b: homogeneous G, whole cells", dict(n=30, design="full", seed=4), dict(records=8),
     "homogeneous", "homogeneous", "reml"),
    ("b: homogeneous G, het E, ML", dict(n=30, design="full", covariates=1, seed=5),
     dict(values=4, records=3), "homogeneous", "heterogeneous", "ml"),
    ("b: fa1", dict(n=30, design="full", seed=6), dict(values=5, records=2), "fa1", "heterogeneous", "reml"),
    ("c: mvLMM", dict(covariates=1, traits=3), dict(values=8), "homogeneous", "homogeneous", "reml"),
    ("low-rank K, a", dict(n=200, snps=20, covariates=1), dict(values=12), "heterogeneous", "heterogeneous", "reml"),
    ("low-rank K, b", dict(n=70, snps=15, locations=2, design="full", covariates=1), dict(values=6, records=6),
     "unstructured", "heterogeneous", "reml"),
    ("low-rank K, c, ML", dict(n=150, snps=40, covariates=1), dict(values=10), "homogeneous", "homogeneous", "ml"),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    label, kw, holes, genetic, residual, method = request.param
    sim = _sim(**kw)
    pheno = _holes(sim.pheno, sim.truth.traits, **holes)
    model = _model(sim, pheno, genetic, residual, method, kw.get("covariates", 0))
    assert isinstance(hetvc.engines.spectral.plan(model), NotApplicable)  # the spectral engine alone cannot
    plan = completed_plan(model)
    assert isinstance(plan, CompletedPlan) and plan.n_missing > 0
    assert plan.description.startswith(f"spectral with {plan.n_missing} completed cell")
    return model, DenseEngine(model), CompletedEngine(model, plan)


def test_loglik_score_ai_match_dense(case):
    model, dense, completed = case
    assert_evaluations_agree(dense, completed, _thetas(model))


def test_blues_blups_pevs_match_dense(case):
    model, dense, completed = case
    assert_solutions_agree(dense, completed, _thetas(model)[1])


def test_no_missing_cells_is_the_spectral_engine():
    sim = _sim(n=40, covariates=1, seed=7)
    model = _model(sim, sim.pheno, "heterogeneous", "homogeneous", covariates=1)
    plan = completed_plan(model)
    assert plan.n_missing == 0
    spectral, completed = SpectralEngine(model), CompletedEngine(model, plan)
    for theta in _thetas(model, 2):
        a, b = spectral.evaluate(theta), completed.evaluate(theta)
        assert a.loglik == b.loglik and np.array_equal(a.score, b.score) and np.array_equal(a.ai, b.ai)


def test_covariates_keep_one_column_for_a_record_missing_a_trait():
    """A covariate of a record that misses a trait takes its other trait's values at the
    completed cell: the block's X* has as many columns as without the hole."""
    sim = _sim(n=40, covariates=2, seed=8)
    full = _model(sim, sim.pheno, "heterogeneous", "homogeneous", covariates=2)
    holed = _model(sim, _holes(sim.pheno, sim.truth.traits, values=4, seed=3), "heterogeneous", "homogeneous",
                   covariates=2)
    assert [b.c for b in CompletedEngine(holed).blocks] == [b.c for b in SpectralEngine(full).blocks]


def test_not_applicable():
    sim = _sim(n=40, seed=4)
    reps = pd.concat([sim.pheno, sim.pheno.iloc[[3]]], ignore_index=True)
    why = completed_plan(_model(sim, reps, "heterogeneous", "homogeneous"))
    assert isinstance(why, NotApplicable) and "replicates" in why.reason
    sparse = _model(sim, _holes(sim.pheno, sim.truth.traits, values=30), "heterogeneous", "homogeneous")
    why = completed_plan(sparse)
    assert isinstance(why, NotApplicable) and "cells of the completed layout are missing" in why.reason
    assert isinstance(completed_plan(sparse, max_missing_fraction=0.5), CompletedPlan)
    with pytest.raises(SpectralNotApplicable, match="completed layout"):
        CompletedEngine(sparse)
    with_block = build_model(sim.pheno.assign(blk=np.arange(len(sim.pheno)) % 4), sim.K, sim.truth.traits,
                             env="env", random=["env:blk"])
    why = completed_plan(with_block)
    assert isinstance(why, NotApplicable) and "beyond the genetic one" in why.reason


def test_soynam_example():
    """The bundled example: its replicated plots keep it off the completed layout; without the
    second plots its 6 missing yields are completed, exactly."""
    pheno, K, roles = load_example()
    model = build_model(pheno, K, **roles)
    why = completed_plan(model)
    assert isinstance(why, NotApplicable) and "replicates" in why.reason
    single = pheno.drop_duplicates(["genotype", "env"])
    model = build_model(single, K, **roles)
    plan = completed_plan(model)
    assert plan.n_missing == int(single[roles["traits"]].isna().sum().sum()) > 0
    theta = _thetas(model, 2)[1]
    a, b = DenseEngine(model).evaluate(theta), CompletedEngine(model, plan).evaluate(theta)
    assert abs(a.loglik - b.loglik) < 1e-8 and _rel(a.score, b.score) < 1e-7 and _rel(a.ai, b.ai) < 1e-7


# ----------------------------------------------------------------------------- whole fits

FITS = [
    ("a", dict(n=150, covariates=1, seed=8), dict(values=10), "heterogeneous", "homogeneous", "reml"),
    ("b", dict(n=80, design="full", locations=2, seed=10), dict(values=8, records=6), "unstructured",
     "heterogeneous", "reml"),
    ("c, ML", dict(n=150, traits=3, covariates=1, seed=7), dict(values=15), "homogeneous", "homogeneous", "ml"),
]


@pytest.mark.parametrize("label,kw,holes,genetic,residual,method", FITS, ids=[f[0] for f in FITS])
def test_fit_matches_dense(monkeypatch, label, kw, holes, genetic, residual, method):
    sim = _sim(h2=0.6, **kw)
    args = dict(data=_holes(sim.pheno, sim.truth.traits, **holes), K=sim.K, traits=sim.truth.traits,
                env="env", genetic=genetic, residual=residual, method=method,
                fixed=_fixed(kw.get("covariates", 0)), tol=1e-10)
    d = hetvc.fit(engine="dense", **args)
    monkeypatch.setattr(hetvc.fitting, "choose_engine",
                        lambda model, engine, eigen=None: EngineChoice(CompletedEngine(model), "completed"))
    s = hetvc.fit(**args)
    assert s.engine_reason == "completed" and d.engine == "dense"
    assert s.converged and d.converged
    assert abs(s.loglik - d.loglik) < 1e-8
    assert _rel(d.theta, s.theta) < 1e-6
    assert _rel(np.sqrt(np.diag(d.theta_cov)), np.sqrt(np.diag(s.theta_cov))) < 1e-6
    for name in ("beta", "beta_cov", "blup", "pev"):
        assert _rel(getattr(d, name), getattr(s, name)) < 1e-6, name


def test_blocks_the_machine_cannot_hold_are_refused_in_one_line(monkeypatch):
    import hetvc.engines.dense as dense

    sim = simulate(n=80, traits=2, locations=2, snps=300, seed=3, design="full")
    pheno = sim.pheno.copy()
    pheno.loc[pheno.index[[4, 9]], "t2"] = np.nan
    kw = dict(env="env", genetic="unstructured")
    monkeypatch.setattr(dense, "available_memory", lambda: 10_000)
    for data in (sim.pheno, pheno):  # the spectral engine, and on a completed layout
        with pytest.raises(hetvc.InputError, match=r"the spectral engine needs about .* GB for a block of 80 genotypes"):
            hetvc.fit(data, sim.K, ["t1", "t2"], engine="spectral", **kw)
    monkeypatch.setattr(dense, "available_memory", lambda: None)  # unknown: no refusal
    assert hetvc.fit(pheno, sim.K, ["t1", "t2"], **kw).engine_reason.startswith("spectral with 2 completed cells")
