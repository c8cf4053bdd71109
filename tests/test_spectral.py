"""The spectral engine against the dense engine on the same problems (issue 3).

Every case the spectral engine covers is checked term by term at several θ (ℓ within 1e-8
absolute, score and AI within 1e-7 relative to their largest entry), then through whole fits
(θ 1e-6 relative, ℓ 1e-8, SEs, BLUEs, BLUPs and PEVs 1e-6).  The selection logic is tested
too: a single missing value, replicates or an unbalanced design send the problem to the dense
engine with the reason recorded, and engine="spectral" refuses such problems.
"""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc.data import build_design
from hetvc.engines import DenseEngine, EigenCache, SpectralEngine, choose_engine
from hetvc.errors import InputError
from hetvc.kinship import kinship_matrix
from hetvc.model import Model
from hetvc.simulate import simulate

from engine_checks import assert_evaluations_agree, assert_solutions_agree
from engine_checks import rel as _rel
from engine_checks import trial_thetas as _thetas


def _sim(n=60, traits=2, locations=3, snps=200, design="split", covariates=0, seed=1, h2=0.3):
    return simulate(n=n, traits=traits, locations=locations, snps=snps, design=design,
                    covariates=covariates, seed=seed, w=0.3, rho=0.5, h2=h2)


def _fixed(covariates):
    return " + ".join(f"c{i + 1}" for i in range(covariates)) if covariates else None


def _model(pheno, K, traits, genetic, residual, method="reml", fixed=None, env="env"):
    Kmat, ids = kinship_matrix(K, None)
    design = build_design(pheno, Kmat, ids, traits, env, "id", fixed)
    return Model.build(design, genetic, residual, method)


# (label, simulate kwargs, genetic, residual, method, env column)
CASES = [
    ("a: split, het G, hom E", dict(covariates=1), "heterogeneous", "homogeneous", "reml", "env"),
    ("a: split, het G, het E", dict(), "heterogeneous", "heterogeneous", "reml", "env"),
    ("a: split, ML, 2 covariates", dict(covariates=2), "heterogeneous", "homogeneous", "ml", "env"),
    ("b: full, unstructured", dict(n=30, design="full", covariates=1), "unstructured", "heterogeneous", "reml", "env"),
    ("b: full, unstructured, hom E", dict(n=30, design="full"), "unstructured", "homogeneous", "reml", "env"),
    ("b: full, homogeneous G", dict(n=30, design="full", covariates=1), "homogeneous", "homogeneous", "reml", "env"),
    ("b: full, homogeneous G, het E", dict(n=30, design="full"), "homogeneous", "heterogeneous", "reml", "env"),
    ("b: full, heterogeneous G", dict(n=30, design="full", covariates=1), "heterogeneous", "heterogeneous", "reml", "env"),
    ("mvLMM: one record per genotype", dict(covariates=1), "homogeneous", "homogeneous", "reml", "env"),
    ("mvLMM: one environment", dict(locations=1, traits=3), "homogeneous", "homogeneous", "reml", None),
    ("low-rank K, split", dict(n=200, snps=20, covariates=1), "heterogeneous", "heterogeneous", "reml", "env"),
    ("low-rank K, full, unstructured", dict(n=70, snps=15, locations=2, design="full", covariates=1), "unstructured", "heterogeneous", "reml", "env"),
    ("low-rank K, mvLMM, ML", dict(n=150, snps=40, covariates=1), "homogeneous", "homogeneous", "ml", "env"),
]


@pytest.fixture(scope="module", params=CASES, ids=[c[0] for c in CASES])
def case(request):
    label, kw, genetic, residual, method, env = request.param
    sim = _sim(**kw)
    model = _model(sim.pheno, sim.K, sim.truth.traits, genetic, residual, method,
                   _fixed(kw.get("covariates", 0)), env)
    engine, reason = choose_engine(model)
    assert isinstance(engine, SpectralEngine), reason
    assert reason.startswith("spectral:")
    return model, DenseEngine(model), engine


def test_loglik_score_ai_match_dense(case):
    model, dense, spectral = case
    assert_evaluations_agree(dense, spectral, _thetas(model))


def test_blues_blups_pevs_match_dense(case):
    model, dense, spectral = case
    assert_solutions_agree(dense, spectral, _thetas(model)[1])


def test_unbalanced_heterogeneous_with_unrecorded_genotypes():
    """Heterogeneous ΣG splits by environment whatever the overlap of genotypes between
    environments; genotypes of K without records still get BLUPs and PEVs (low-rank K)."""
    sim = _sim(n=220, traits=2, locations=3, snps=25, design="full", covariates=1, seed=3)
    pheno = sim.pheno[np.random.default_rng(0).random(len(sim.pheno)) < 0.6]
    pheno = pheno[~pheno.id.isin(pheno.id.unique()[:15])]
    model = _model(pheno, sim.K, sim.truth.traits, "heterogeneous", "heterogeneous", fixed="c1")
    spectral, reason = choose_engine(model)
    assert spectral.name == "spectral" and "low-rank" in reason
    dense = DenseEngine(model)
    for theta in _thetas(model, 2):
        a, b = dense.evaluate(theta), spectral.evaluate(theta)
        assert abs(a.loglik - b.loglik) < 1e-8
        assert _rel(a.score, b.score) < 1e-7 and _rel(a.ai, b.ai) < 1e-7
    a, b = dense.solve(theta, pev=True), spectral.solve(theta, pev=True)
    assert a.blup.shape == (220, 6)
    for name in ("beta", "blup", "fitted", "pev"):
        assert _rel(getattr(a, name), getattr(b, name)) < 1e-6, name


def test_residual_not_positive_definite_but_v_is():
    """ΣE indefinite, V positive definite (K + I has eigenvalues ≥ 1): the engine shifts H0."""
    sim = _sim(n=80, snps=300, locations=2, seed=5)
    Kmat, ids = kinship_matrix(sim.K, None)
    design = build_design(sim.pheno, Kmat + 0.5 * np.eye(len(Kmat)), ids, sim.truth.traits, "env", "id")
    model = Model.build(design, "heterogeneous", "homogeneous")
    G, E = model.matrices(model.start())
    E[0, 1] = E[1, 0] = 1.2 * np.sqrt(E[0, 0] * E[1, 1])
    G = 3 * np.diag(np.diag(G))
    assert np.linalg.eigvalsh(E)[0] < 0
    theta = model.join(G, E)
    a, b = DenseEngine(model).evaluate(theta), SpectralEngine(model).evaluate(theta)
    assert abs(a.loglik - b.loglik) < 1e-8 and _rel(a.score, b.score) < 1e-7 and _rel(a.ai, b.ai) < 1e-7


def test_not_positive_definite_raises():
    from hetvc.engines import NotPositiveDefinite

    sim = _sim(seed=2)
    model = _model(sim.pheno, sim.K, sim.truth.traits, "heterogeneous", "homogeneous")
    G, E = model.matrices(model.start())
    with pytest.raises(NotPositiveDefinite):
        SpectralEngine(model).evaluate(model.join(-G, -E))


# ----------------------------------------------------------------------------- whole fits

# seeds with interior optima: at a boundary (a singular ΣG or ΣE block) V is ill-conditioned
# and the dense engine's explicit V⁻¹ loses digits in y'Py, the spectral engine does not
FITS = [
    ("a", dict(n=150, covariates=1, seed=8), "heterogeneous", "homogeneous", "reml"),
    ("a, het E, ML", dict(n=150, seed=9), "heterogeneous", "heterogeneous", "ml"),
    ("b", dict(n=80, design="full", locations=2, seed=10), "unstructured", "heterogeneous", "reml"),
    ("mvLMM", dict(n=150, traits=3, covariates=1, seed=7), "homogeneous", "homogeneous", "reml"),
]


@pytest.mark.parametrize("label,kw,genetic,residual,method", FITS, ids=[f[0] for f in FITS])
def test_fit_matches_dense(label, kw, genetic, residual, method):
    sim = _sim(h2=0.6, **kw)
    args = dict(data=sim.pheno, K=sim.K, traits=sim.truth.traits, env="env", genetic=genetic,
                residual=residual, method=method, fixed=_fixed(kw.get("covariates", 0)), tol=1e-10)
    d = hetvc.fit(engine="dense", **args)
    s = hetvc.fit(**args)
    assert s.engine == "spectral" and d.engine == "dense"
    assert s.engine_reason.startswith("spectral:") and d.engine_reason.startswith("dense: forced by engine='dense' [")
    assert s.converged and d.converged
    assert abs(s.loglik - d.loglik) < 1e-8
    assert _rel(d.theta, s.theta) < 1e-6
    se_d, se_s = np.sqrt(np.diag(d.theta_cov)), np.sqrt(np.diag(s.theta_cov))
    assert _rel(se_d, se_s) < 1e-6
    for name in ("beta", "beta_cov", "blup", "pev"):
        assert _rel(getattr(d, name), getattr(s, name)) < 1e-6, name


# ----------------------------------------------------------------------------- selection


def _fit_args(sim, **kw):
    return {**dict(data=sim.pheno, K=sim.K, traits=sim.truth.traits, env="env"), **kw}


def test_one_missing_value_completes_the_layout_with_reason():
    sim = _sim(n=60, seed=4)
    pheno = sim.pheno.copy()
    pheno.loc[pheno.index[16], "t2"] = np.nan  # data row 17
    r = hetvc.fit(**_fit_args(sim, data=pheno))
    assert r.engine == "spectral"
    assert r.engine_reason.startswith("spectral with 1 completed cell (")
    dense = hetvc.fit(**_fit_args(sim, data=pheno, engine="dense"))
    assert abs(r.loglik - dense.loglik) < 1e-8
    forced = hetvc.fit(**_fit_args(sim, data=pheno, engine="spectral"))
    assert forced.engine_reason.startswith("forced by engine='spectral'; spectral with 1 completed cell")
    # a replicate keeps the layout from being completed: dense, saying why
    extra = pheno.iloc[[3]].assign(t1=0.5, t2=0.25)
    rep = pd.concat([pheno, extra], ignore_index=True)
    r = hetvc.fit(**_fit_args(sim, data=rep))
    assert r.engine == "dense" and "replicate" in r.engine_reason
    with pytest.raises(InputError, match="engine='spectral' does not apply.*replicate"):
        hetvc.fit(**_fit_args(sim, data=rep, engine="spectral"))
    # a record with no trait at all is ignored by the design, so the rest stays spectral
    pheno.loc[pheno.index[16], "t1"] = np.nan
    model = _model(pheno, sim.K, sim.truth.traits, "heterogeneous", "homogeneous")
    assert choose_engine(model)[0].name == "spectral"


def test_replicates_go_dense():
    sim = _sim(n=40, seed=4)
    pheno = pd.concat([sim.pheno, sim.pheno.iloc[[3]]], ignore_index=True)
    model = _model(pheno, sim.K, sim.truth.traits, "heterogeneous", "homogeneous")
    engine, reason = choose_engine(model)
    assert engine.name == "dense"
    assert "replicates" in reason and repr(sim.pheno.id.iloc[3]) in reason
    with pytest.raises(InputError, match="replicates"):
        choose_engine(model, "spectral")


@pytest.mark.parametrize("genetic,residual,what", [
    ("unstructured", "homogeneous", "unstructured genetic needs every genotype in every environment"),
    ("homogeneous", "heterogeneous", "homogeneous genetic with heterogeneous residual"),
])
def test_unbalanced_designs_go_dense(genetic, residual, what):
    sim = _sim(n=40, seed=4)
    model = _model(sim.pheno, sim.K, sim.truth.traits, genetic, residual)
    engine, reason = choose_engine(model)
    assert engine.name == "dense" and what in reason
    with pytest.raises(InputError, match="does not apply"):
        SpectralEngine(model)


def test_forcing_and_bad_engine_names():
    sim = _sim(n=40, seed=4)
    r = hetvc.fit(**_fit_args(sim, engine="spectral"))
    assert r.engine == "spectral" and r.engine_reason.startswith("forced by engine='spectral'")
    with pytest.raises(InputError, match="engine must be one of"):
        hetvc.fit(**_fit_args(sim, engine="sparse"))
    with pytest.raises(InputError, match="eigen must be"):
        hetvc.fit(**_fit_args(sim, eigen={}))


def test_eigen_cache_is_reused_across_fits():
    sim = _sim(n=90, seed=8, design="full", locations=2)
    cache = EigenCache()
    het = hetvc.fit(**_fit_args(sim, eigen=cache))
    assert (cache.misses, cache.hits, len(cache)) == (1, 1, 1)  # both environments: same genotypes
    assert "1 eigendecomposition computed, 1 reused" in het.engine_reason
    uns = hetvc.fit(**_fit_args(sim, genetic="unstructured", residual="heterogeneous", eigen=cache))
    assert (cache.misses, cache.hits) == (1, 2)
    assert "0 eigendecompositions computed, 1 reused" in uns.engine_reason
    again = hetvc.fit(**_fit_args(sim, eigen=cache))
    np.testing.assert_array_equal(again.theta, het.theta)
    # keyed by content: another K is never served from the cache
    other = _sim(n=90, seed=9, design="full", locations=2)
    hetvc.fit(**_fit_args(other, data=sim.pheno, eigen=cache))
    assert cache.misses == 2


def test_low_rank_detection_can_be_switched_off():
    sim = _sim(n=150, snps=20, locations=1, traits=2)
    model = _model(sim.pheno, sim.K, sim.truth.traits, "homogeneous", "homogeneous", env=None)
    low = SpectralEngine(model, eigen=EigenCache())
    full = SpectralEngine(model, eigen=EigenCache(low_rank=False))
    assert low.blocks[0].eig.rank <= 20 and full.blocks[0].eig.rank == 150
    theta = _thetas(model)[1]
    a, b = low.evaluate(theta), full.evaluate(theta)
    assert abs(a.loglik - b.loglik) < 1e-8 and _rel(a.ai, b.ai) < 1e-7


def test_low_rank_path_refuses_an_indefinite_block():
    """dpstrf stops early on an indefinite matrix; the residual probe sends it to eigh."""
    from hetvc.engines.spectral import low_rank_eigen

    rng = np.random.default_rng(0)
    W = rng.normal(size=(100, 5))
    K = np.zeros((102, 102))
    K[:100, :100] = W @ W.T
    K[100, 101] = K[101, 100] = 1.0
    assert low_rank_eigen(K, "k") is None
    eig = EigenCache().decompose(K)
    assert eig.method == "eigh" and eig.values.min() < -0.5
    psd = low_rank_eigen(W @ W.T, "k")
    assert psd.rank == 5
    np.testing.assert_allclose((psd.vectors * psd.values) @ psd.vectors.T, W @ W.T, atol=1e-12)
