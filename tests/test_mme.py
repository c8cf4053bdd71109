"""The mixed-model-equations engine against the dense engine (the independent computation):
ℓ within 1e-8, score and AI within 1e-7 of their largest entry at several θ, BLUEs, BLUPs and
PEVs of every term; whole fits to 1e-6 relative; the score against differences of its own ℓ;
both factorisations (dense C for a genomic K, sparse C for identity, diagonal and pedigree
relationships, a GRM of low rank through its factor); the automatic choice and engine='mme'."""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc.engines import DenseEngine, MMEEngine, choose_engine
from hetvc.errors import InputError
from hetvc.data import build_design
from hetvc.kinship import kinship_matrix
from hetvc.kinship.pedigree import Pedigree, PedigreeRelationship
from hetvc.model import Model
from engine_checks import random_term_model as _model
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    """25 genotypes (3 more without records) × 3 environments, 2 replicates, 2 blocks per
    environment, 15 % of the values missing."""
    data, K, *_ = make_problem(4, n_geno=25, n_env=3, genetic="heterogeneous", missing=0.15, p_env=0.8,
                               reps=2, blocks=2, n_untested=3)
    return data, K


def _diagonal(K):
    out = K.copy()
    out.loc[:, :] = np.diag(np.linspace(0.8, 1.2, len(K)))
    return out


def _thetas(model, n=3):
    rng = np.random.default_rng(7)
    start = model.start()
    return [start] + [model.project(start * (1 + 0.5 * rng.random(model.n_params)), 1e-3) for _ in range(n - 1)]


def _reuses_its_factor(engine, theta, fresh):
    """ℓ alone at θ, then the derivatives from the factor kept for θ: the same as ``fresh``
    (to rounding); C⁻¹ applied by the factor (before C⁻¹ is formed) and by C⁻¹ agree."""
    engine.evaluate(1.1 * theta, derivatives=False)  # the factor kept is another θ's
    engine.evaluate(theta, derivatives=False)
    rhs = np.random.default_rng(2).normal(size=(engine.q, 3))
    by_factor = engine.C.solve(rhs)
    again = engine.evaluate(theta)
    assert again.loglik == pytest.approx(fresh.loglik, abs=1e-10)
    np.testing.assert_allclose(again.score, fresh.score, rtol=1e-10, atol=1e-10 * np.abs(fresh.score).max())
    np.testing.assert_allclose(again.ai, fresh.ai, rtol=1e-10, atol=1e-10 * np.abs(fresh.ai).max())
    np.testing.assert_allclose(engine.C.solve(rhs), by_factor, rtol=1e-8, atol=1e-10 * np.abs(by_factor).max())


def _agree(model, mme, thetas):
    dense = DenseEngine(model)
    for theta in thetas:
        a, b = dense.evaluate(theta), mme.evaluate(theta)
        assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
        np.testing.assert_allclose(b.score, a.score, rtol=0, atol=1e-7 * np.abs(a.score).max())
        np.testing.assert_allclose(b.ai, a.ai, rtol=0, atol=1e-7 * np.abs(a.ai).max())
        assert mme.evaluate(theta, derivatives=False).loglik == pytest.approx(a.loglik, abs=1e-8)
        _reuses_its_factor(mme, theta, b)
    sa, sb = dense.solve(thetas[-1], pev=True), mme.solve(thetas[-1], pev=True)
    pairs = [(sa.beta, sb.beta), (sa.beta_cov, sb.beta_cov), (sa.blup, sb.blup), (sa.pev, sb.pev),
             (sa.fitted, sb.fitted)]
    assert sa.random.keys() == sb.random.keys()
    pairs += [(x, y) for k in sa.random for x, y in zip(sa.random[k], sb.random[k])]
    for x, y in pairs:
        assert x.shape == y.shape
        np.testing.assert_allclose(y, x, rtol=1e-8, atol=1e-10 * max(1.0, np.abs(x).max()))


CASES = [  # genetic, residual, random, method
    ("homogeneous", "homogeneous", None, "reml"),
    ("heterogeneous", "heterogeneous", None, "ml"),
    ("diagonal", "homogeneous", ["env:block"], "reml"),
    ("unstructured", "homogeneous", ["block"], "ml"),
    ("fa1", "homogeneous", None, "reml"),
    ("csh", "heterogeneous", None, "ml"),
    ("separable", "homogeneous", ["env:block"], "reml"),
]


@pytest.mark.parametrize("genetic,residual,random,method", CASES)
@pytest.mark.parametrize("kinship", ["genomic", "diagonal"])
def test_evaluation_and_solution_equal_dense(problem, genetic, residual, random, method, kinship):
    data, K = problem
    model = _model(data, K if kinship == "genomic" else _diagonal(K), genetic, residual, random, method)
    mme = MMEEngine(model)
    assert mme.sparse == (kinship == "diagonal")
    _agree(model, mme, _thetas(model))


@pytest.fixture(scope="module")
def low_rank():
    """70 genotypes (4 more without records) × 3 environments, 2 replicates, 2 blocks per
    environment, 15 % of the values missing, and a GRM of 20 centred markers (rank 20)."""
    data, K, *_ = make_problem(4, n_geno=70, n_env=3, genetic="heterogeneous", missing=0.15, p_env=0.8,
                               reps=2, blocks=2, n_untested=4)
    M = np.random.default_rng(0).binomial(2, 0.3, size=(len(K), 20)).astype(float)
    M -= M.mean(0)
    return data, pd.DataFrame(M @ M.T / 20, index=K.index, columns=K.index)


@pytest.mark.parametrize("genetic,residual,random,method", [
    ("homogeneous", "homogeneous", None, "reml"),
    ("heterogeneous", "heterogeneous", None, "ml"),
    ("unstructured", "homogeneous", ["env:block"], "ml"),
    ("diagonal", "homogeneous", None, "reml"),  # a record's two traits in two blocks of ΣG
    ("fa2", "homogeneous", None, "reml"),  # pieces by environment and a border of factor scores
    ("fa1", "heterogeneous", ["env:block"], "ml"),
])
def test_low_rank_kinship_equals_dense(low_rank, genetic, residual, random, method):
    """K = WW' of rank 20 < 0.8·74: the genetic part has 20·d unknowns, ℓ and all else unchanged."""
    data, K = low_rank
    model = _model(data, K, genetic, residual, random, method)
    mme = MMEEngine(model)
    assert np.linalg.matrix_rank(K.to_numpy()) == 20 and mme.kernels[0].n == 20
    assert mme.summary().endswith("genetic part of rank 20 (K = WW')")
    _agree(model, mme, _thetas(model))


def test_full_rank_kinship_keeps_the_dense_k_route(low_rank):
    data, _ = low_rank
    _, K, *_ = make_problem(4, n_geno=70, n_env=3, n_untested=4)  # K = MM'/p + 0.05 I
    mme = MMEEngine(_model(data, K, "heterogeneous"))
    assert mme.lowrank is None and mme.kernels[0].n == 74 and "rank" not in mme.summary()


@pytest.mark.parametrize("genetic,method", [("homogeneous", "reml"), ("heterogeneous", "ml"),
                                            ("unstructured", "reml")])
def test_low_rank_whole_fit_equals_dense(low_rank, genetic, method):
    data, K = low_rank
    kw = dict(env="env", genetic=genetic, method=method, tol=1e-10)
    a = hetvc.fit(data, K, TRAITS, engine="dense", **kw)
    b = hetvc.fit(data, K, TRAITS, engine="mme", **kw)
    assert a.converged and b.converged
    assert b.engine_reason.endswith("genetic part of rank 20 (K = WW')]")
    assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
    assert len(b.blup) == len(K)  # every genotype of K, the 4 without records too
    for x, y in [(a.theta, b.theta), (np.sqrt(np.diag(a.theta_cov)), np.sqrt(np.diag(b.theta_cov))),
                 (a.beta, b.beta), (a.blup, b.blup), (a.pev, b.pev)]:
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6 * np.nanmax(np.abs(x)))


@pytest.mark.parametrize("genetic,kinship", [("fa1", "genomic"), ("fa2", "low rank"), ("fa2", "diagonal")])
def test_factor_analytic_coordinates_split_the_environments(problem, low_rank, genetic, kinship):
    """u = (I ⊗ [Λ Ψ^½]) v: the specific effects of an environment are linked to another's only
    through the k common factor scores, so C is factored by pieces (one per environment) and a
    border (factor scores, fixed effects); with a diagonal K it is sparse."""
    data, K = low_rank if kinship == "low rank" else problem
    model = _model(data, _diagonal(K) if kinship == "diagonal" else K, genetic, "heterogeneous", None, "reml")
    mme = MMEEngine(model)
    k, d, n_geno = int(genetic[2]), 6, mme.kernels[0].n
    assert mme.q == model.design.X.shape[1] + n_geno * (k + d)  # k factor scores and d specific effects per level
    if kinship != "diagonal":
        assert len(mme.group_sizes) == 1 and list(mme.group_pieces[0]) == [2 * n_geno] * 3
        assert mme.summary().startswith(f"dense C in 3 pieces of {2 * n_geno} and a border of "
                                        f"{k * n_geno + model.design.X.shape[1]}")
    thetas = _thetas(model)
    theta = thetas[1].copy()
    theta[model.genetic.variance_params()[0]] = 0.0  # a Heywood case: ψ on the boundary
    _agree(model, mme, thetas[:2] + [theta])


def test_a_covariate_common_to_all_environments_is_the_border(problem):
    """heterogeneous ΣG with a slope common to every environment: the environments are linked
    only through that fixed effect, so C is factored by pieces with it as the border."""
    data, K = problem
    data = data.assign(x=np.random.default_rng(2).standard_normal(len(data)))
    Kmat, ids = kinship_matrix(K, None)
    design = build_design(data, Kmat, ids, TRAITS, "env", "id", "x")
    model = Model.build(design, "heterogeneous", "homogeneous", "ml")
    mme = MMEEngine(model)
    assert len(mme.group_sizes) == 1 and len(mme.group_pieces[0]) == 3
    assert mme.summary().endswith(f"and a border of {design.X.shape[1]}")
    _agree(model, mme, _thetas(model))


def test_random_term_with_a_relationship(problem):
    data, K = problem
    levels = sorted(data["block"].unique())
    rng = np.random.default_rng(3)
    M = rng.standard_normal((len(levels), 3))
    Kb = pd.DataFrame(M @ M.T / 3 + 0.5 * np.eye(len(levels)), index=levels, columns=levels)
    model = _model(data, K, "heterogeneous", "homogeneous", [hetvc.Random("block", K=Kb, structure="diagonal")])
    _agree(model, MMEEngine(model), _thetas(model, 2))


def _pedigree(n_animals=60, seed=5):
    """A pedigree over 4 generations (some parents unknown, inbreeding by chance) and 2-trait
    records in 2 environments for the animals of the last three."""
    rng = np.random.default_rng(seed)
    per = n_animals // 4
    sire, dam = np.full(n_animals, -1), np.full(n_animals, -1)
    for g in range(1, 4):
        prev = np.arange((g - 1) * per, g * per)
        idx = np.arange(g * per, (g + 1) * per)
        sire[idx] = rng.choice(prev[:3], per)
        dam[idx] = np.where(rng.random(per) < 0.8, rng.choice(prev[3:], per), -1)
    ids = [f"a{i:03d}" for i in range(n_animals)]
    ped = Pedigree(ids, sire, dam)
    rows = []
    for i in range(per, n_animals):
        for env in ("E1", "E2"):
            if rng.random() < 0.8:
                rows.append({"id": ids[i], "env": env, "dam": ids[dam[i]] if dam[i] >= 0 else "none",
                             "y1": rng.normal(), "y2": rng.normal()})
    data = pd.DataFrame(rows)
    data.loc[rng.random(len(data)) < 0.1, "y2"] = np.nan
    data["y1"] += 0.5 * (data["env"] == "E2")
    return data, ped


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_pedigree_genetic_term_and_dam_effect(method):
    data, ped = _pedigree()
    model = _model(data, PedigreeRelationship(ped), "homogeneous", "homogeneous", ["dam"], method)
    mme = MMEEngine(model)
    assert mme.sparse and mme.q - model.design.X.shape[1] == 2 * len(ped.ids) + 2 * data["dam"].nunique()
    assert mme.summary().startswith("sparse C, ")
    _agree(model, mme, _thetas(model, 2))


def test_pedigree_random_term():
    """A random term with a pedigree relationship over its levels (the animal as a second term)."""
    data, ped = _pedigree()
    data["animal"] = data["id"]
    K = pd.DataFrame(np.eye(data["id"].nunique()), index=sorted(data["id"].unique()),
                     columns=sorted(data["id"].unique()))
    model = _model(data, K, "diagonal", "homogeneous", [hetvc.Random("animal", K=ped)])
    assert isinstance(model.random[0][0].relationship, PedigreeRelationship)
    _agree(model, MMEEngine(model), _thetas(model, 2))


def test_score_is_the_gradient_of_its_loglik(problem):
    data, K = problem
    model = _model(data, K, "unstructured", "heterogeneous", ["env:block"])
    mme = MMEEngine(model)
    theta = _thetas(model)[1]
    score = mme.evaluate(theta).score
    fd = np.empty_like(score)
    for k in range(len(theta)):
        h = 1e-5 * max(abs(theta[k]), np.abs(theta).max() * 1e-2)
        up, down = theta.copy(), theta.copy()
        up[k] += h
        down[k] -= h
        fd[k] = (mme.evaluate(up, False).loglik - mme.evaluate(down, False).loglik) / (2 * h)
    np.testing.assert_allclose(score, fd, rtol=0, atol=1e-6 * np.abs(score).max())


@pytest.mark.parametrize("genetic,random,method,kinship", [
    ("heterogeneous", ["env:block"], "reml", "genomic"),
    ("homogeneous", None, "ml", "diagonal"),
    ("fa1", None, "reml", "diagonal"),
])
def test_whole_fit_equals_dense(problem, genetic, random, method, kinship):
    data, K = problem
    K = K if kinship == "genomic" else _diagonal(K)
    kw = dict(env="env", genetic=genetic, random=random, method=method, tol=1e-10)
    a = hetvc.fit(data, K, TRAITS, engine="dense", **kw)
    b = hetvc.fit(data, K, TRAITS, engine="mme", **kw)
    assert a.converged and b.converged and b.engine == "mme"
    assert b.engine_reason.startswith("mme: forced by engine='mme'")
    assert b.loglik == pytest.approx(a.loglik, abs=1e-8)
    for x, y in [(a.theta, b.theta), (np.sqrt(np.diag(a.theta_cov)), np.sqrt(np.diag(b.theta_cov))),
                 (a.beta, b.beta), (a.blup, b.blup), (a.pev, b.pev)]:
        np.testing.assert_allclose(y, x, rtol=1e-6, atol=1e-6 * np.nanmax(np.abs(x)))  # NaN: a fixed θ's SE
    for name in a.random_blup:
        np.testing.assert_allclose(b.random_blup[name], a.random_blup[name], rtol=1e-6,
                                   atol=1e-6 * np.abs(a.random_blup[name]).max())
        np.testing.assert_allclose(b.random_pev[name], a.random_pev[name], rtol=1e-6)


def test_fit_with_a_pedigree_as_k():
    """hetvc.fit(K=<Pedigree>): the automatic choice takes the MME engine with A⁻¹; forcing the
    dense engine forms A and agrees."""
    data, ped = _pedigree()
    a = hetvc.fit(data, ped, TRAITS, env="env", genetic="homogeneous", random=["dam"])
    assert a.engine == "mme" and "pedigree's sparse A⁻¹" in a.engine_reason
    b = hetvc.fit(data, ped, TRAITS, env="env", genetic="homogeneous", random=["dam"], engine="dense")
    assert a.loglik == pytest.approx(b.loglik, abs=1e-8)
    np.testing.assert_allclose(a.theta, b.theta, rtol=1e-6, atol=1e-6 * np.abs(b.theta).max())
    np.testing.assert_allclose(a.blup, b.blup, rtol=1e-6, atol=1e-8)
    F = hetvc.inbreeding(ped).to_numpy()
    np.testing.assert_allclose(a.kinship_diagonal, 1 + F)


def _replicated(n_geno=60, reps=20):
    """One environment, ``reps`` records of every genotype: 2,400 values, 120 genetic effects."""
    rng = np.random.default_rng(1)
    ids = [f"g{j:03d}" for j in range(n_geno)]
    data = pd.DataFrame({"id": np.repeat(ids, reps), "env": "E1"})
    u = rng.standard_normal((n_geno, 2))
    data[TRAITS] = np.repeat(u, reps, axis=0) + rng.standard_normal((len(data), 2))
    M = rng.standard_normal((n_geno, 40))
    return data, pd.DataFrame(M @ M.T / 40 + 0.1 * np.eye(n_geno), index=ids, columns=ids)


def test_auto_picks_mme_for_few_random_effects_and_many_values():
    data, K = _replicated()
    model = _model(data, K, "homogeneous")
    engine, reason = choose_engine(model)
    assert engine.name == "mme"
    assert reason.startswith("mme: an iteration ~") and reason.endswith("; 122 equations for 2,400 values [dense C]")


def test_auto_keeps_dense_for_small_designs_and_spectral_where_exact(problem):
    data, K = problem
    assert choose_engine(_model(data, K, "heterogeneous")).engine.name == "dense"
    full, Kf, *_ = make_problem(2, n_geno=20, n_env=2, genetic="heterogeneous")
    assert choose_engine(_model(full, Kf, "heterogeneous")).engine.name == "spectral"


def test_forced_mme_refuses_a_singular_kinship():
    data, K = _replicated()
    ids = list(K.index)
    M = np.random.default_rng(2).standard_normal((len(ids), 5))
    singular = pd.DataFrame(M @ M.T, index=ids, columns=ids)
    model = _model(data, singular, "homogeneous")
    with pytest.raises(InputError, match="engine='mme' does not apply.*singular"):
        choose_engine(model, "mme")
    assert choose_engine(model).engine.name == "dense"  # auto falls back


def test_engine_name_is_checked():
    data, K = _replicated()
    with pytest.raises(InputError, match="'mme'"):
        choose_engine(_model(data, K, "homogeneous"), "mm")


def test_centred_variance_without_forming_a():
    """Factor.centred_variance (A through a sparse solve with A⁻¹) equals it from the dense A."""
    data, ped = _pedigree()
    rel = PedigreeRelationship(ped)
    sparse = _model(data, rel, "homogeneous").genetic_factor()
    A = pd.DataFrame(rel.dense(), index=rel.ids, columns=rel.ids)
    dense = _model(data, A, "homogeneous").genetic_factor()
    assert sparse.centred_variance() == pytest.approx(dense.centred_variance(), rel=1e-12)


def test_a_model_the_machine_cannot_hold_is_refused_in_one_line(problem, monkeypatch):
    """The estimate (the storage of C̃, its work arrays, the relationships) against 80 % of the
    memory available: refused with both numbers and the way out."""
    import hetvc.engines.dense as dense_module

    data, K = problem
    model = _model(data, K, "fa1", "heterogeneous", None, "reml")
    need = MMEEngine(model).memory
    monkeypatch.setattr(dense_module, "available_memory", lambda: int(need / 0.8) + 1)
    MMEEngine(model)  # fits
    monkeypatch.setattr(dense_module, "available_memory", lambda: int(need / 0.8) - 1)
    with pytest.raises(InputError, match=r"the MME engine needs about .* GB for [\d,]+ equations .* two-stage"):
        MMEEngine(model)
