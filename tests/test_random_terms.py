"""Random terms beyond the genetic one: against the brute-force reference (tests/reference.py),
on the boundary, BLUPs/PEVs by their definitions, invariances, and every bad input."""

import re

import numpy as np
import pandas as pd
import pytest

import hetvc
from conftest import dense_model
from reference import build_problem, build_V, make_problem, reference_fit, reference_loglik, reference_score

TRAITS = ["y1", "y2"]


def _problem(seed=7, block_var=0.4, **kw):
    args = dict(n_geno=30, n_env=2, n_traits=2, missing=0.1, genetic="heterogeneous",
                reps=3, blocks=3, block_var=block_var)
    args.update(kw)
    return make_problem(seed, **args)


def _model(data, K, genetic, residual, random):
    """(model, engine) through hetvc's own validation with random terms."""
    from hetvc.data import build_design
    from hetvc.engines import DenseEngine
    from hetvc.kinship import kinship_matrix
    from hetvc.model import Model
    from hetvc.random_terms import resolve_random

    Kmat, ids = kinship_matrix(K, None)
    design = build_design(data, Kmat, ids, TRAITS, "env", "id", None)
    terms, _ = resolve_random(data, design, random)
    model = Model.build(design, genetic, residual, "reml", random=terms)
    return model, DenseEngine(model)


def _matrices(model, theta):
    """(G, [R_t], E) as full matrices of each structure."""
    mats = model.matrices(theta)
    return mats[0], mats[1:-1], mats[-1]


# -- the likelihood and its derivatives at a given θ ----------------------------------------------
@pytest.mark.parametrize("structure", ["homogeneous", "heterogeneous", "diagonal"])
def test_loglik_and_score_equal_reference(structure):
    data, K, *_ = _problem()
    random = [hetvc.Random("env:block", structure=structure), "rep"]
    ref_random = [("env:block", structure, None), ("rep", "homogeneous", None)]
    model, eng = _model(data, K, "heterogeneous", "homogeneous", random)
    rng = np.random.default_rng(1)
    theta = model.start() * (1 + 0.3 * rng.random(model.n_params))
    G, R, E = _matrices(model, theta)
    ev = eng.evaluate(theta)
    args = (data, K, TRAITS, "env", "id", "heterogeneous", "homogeneous")
    assert ev.loglik == pytest.approx(reference_loglik(*args, G=G, E=E, random=ref_random, R=R), abs=1e-9)
    score = reference_score(*args, G=G, E=E, random=ref_random, R=R)
    # the reference names a diagonal element within one environment 'X[E1:y1,E1:y1]'
    score.index = [re.sub(r"\[([^:\[\]]+):([^,]+),\1:([^\]]+)\]", r"[\1][\2,\3]", n) for n in score.index]
    ours = pd.Series(ev.score, index=model.param_names())
    assert set(ours.index) == set(score.index)
    assert np.allclose(ours[score.index].to_numpy(), score.to_numpy(), rtol=1e-5, atol=1e-6)


def test_random_term_with_a_kinship_equals_reference():
    """A term with its own relationship matrix over its levels (GCA-like)."""
    data, K, *_ = _problem(3)
    levels = sorted(data["rep"].astype(str).unique())
    rng = np.random.default_rng(0)
    M = rng.normal(size=(len(levels) + 1, 3))
    Kr = pd.DataFrame(M @ M.T / 3 + np.eye(len(levels) + 1) * 0.5,
                      index=levels + ["unseen"], columns=levels + ["unseen"])
    model, eng = _model(data, K, "homogeneous", "homogeneous", [hetvc.Random("rep", K=Kr)])
    theta = model.start()
    G, R, E = _matrices(model, theta)
    ref = reference_loglik(data, K, TRAITS, "env", "id", "homogeneous", "homogeneous", G=G, E=E,
                           random=[("rep", "homogeneous", Kr)], R=R)
    assert eng.evaluate(theta).loglik == pytest.approx(ref, abs=1e-9)
    sol = eng.solve(theta, pev=True)
    blup, pev = sol.random["rep"]
    assert blup.shape == (len(levels) + 1, 2) and np.all(pev > 0)


# -- the optimum -------------------------------------------------------------------------------
@pytest.mark.parametrize("genetic,structure", [("homogeneous", "homogeneous"),
                                               ("heterogeneous", "heterogeneous")])
def test_optimum_equals_brute_force(genetic, structure):
    """Several terms, missing values, a term per environment: ℓ to 1e-6, θ to 1e-4."""
    data, K, *_ = _problem(11, genetic=genetic, n_geno=24)
    random = [hetvc.Random("env:block", structure=structure)]
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic=genetic, random=random, tol=1e-11)
    ref = reference_fit(data, K, TRAITS, "env", "id", genetic, "homogeneous",
                        random=[("env:block", structure, None)])
    assert fit.converged and fit.engine == "dense"
    assert "random term 'env:block'" in fit.engine_reason
    assert fit.loglik == pytest.approx(ref["loglik"], abs=1e-6)
    if fit.boundary:  # a singular block: θ is not unique along its null space
        return
    want = np.concatenate([fit._G.theta(ref["G"]), fit._R[0].theta(ref["R"][0]), fit._E.theta(ref["E"])])
    assert np.all(np.abs(fit.theta - want) <= 1e-4 * np.maximum(np.abs(want), 1.0)), (fit.theta, want)


def _no_block_signal(data):
    """The data with every block mean moved to its environment mean (per trait): the blocks
    then vary less than the residual alone would make them, so REML puts their variance at 0."""
    out = data.copy()
    for t in TRAITS:
        block_mean = out.groupby(["env", "block"])[t].transform("mean")
        env_mean = out.groupby("env")[t].transform("mean")
        out[t] = out[t] - block_mean + env_mean
    return out


def test_zero_variance_term_lands_on_the_boundary_with_the_same_loglik():
    data, K, *_ = _problem(15, block_var=0.0, genetic="homogeneous")
    data = _no_block_signal(data)
    with_term = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], tol=1e-11)
    without = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", tol=1e-11)
    ref = reference_fit(data, K, TRAITS, "env", "id", "homogeneous", "homogeneous",
                        random=[("env:block", "homogeneous", None)])
    # the block matrix is held at the floor (scaled eigenvalues 1e-8, so that V stays positive
    # definite), which costs |∂ℓ/∂Σ̃|·1e-8 per eigenvalue: ~2e-6 here, where the data pull hard
    assert with_term.converged and with_term.loglik == pytest.approx(ref["loglik"], abs=1e-5)
    assert with_term.loglik <= ref["loglik"] + 1e-9
    assert with_term.loglik == pytest.approx(without.loglik, abs=1e-5)
    # the term vanished: flagged on the boundary (a 2×2 block at 0: its SEs stay NA), the
    # other estimates as without it
    assert with_term.boundary == ["env:block"]
    assert np.allclose(with_term.theta[:3], without.theta[:3], rtol=1e-3, atol=1e-6)
    Rb = with_term.random_covariance("env:block").to_numpy()
    assert np.linalg.eigvalsh(Rb)[0] >= -1e-12 * np.abs(Rb).max()


def test_a_lone_variance_at_zero_is_fixed_and_the_other_ses_are_conditional_on_it():
    """One trait, blocks without effect: the block variance lands at 0 and is fixed there; the
    other SEs equal those of the model without the term (same information, same estimates)."""
    data, K, *_ = _problem(15, block_var=0.0, genetic="homogeneous")
    data = _no_block_signal(data)
    args = dict(env="env", genetic="homogeneous", tol=1e-11)
    with_term = hetvc.fit(data, K, "y1", random=["env:block"], **args)
    without = hetvc.fit(data, K, "y1", **args)
    assert with_term.boundary == ["env:block"]
    assert with_term.loglik == pytest.approx(without.loglik, abs=1e-6)
    vc = with_term.variance_components().set_index("name")
    assert vc.loc["env:block[y1,y1]", "se_note"] == "fixed at 0: on the boundary"
    base = without.variance_components().set_index("name")
    for name in ("G[y1,y1]", "E[y1,y1]"):
        assert vc.loc[name, "se_note"] == ""
        assert vc.loc[name, "se"] == pytest.approx(base.loc[name, "se"], rel=1e-3)
    h2, h2_base = with_term.heritability(), without.heritability()
    assert np.allclose(h2["se"], h2_base["se"], rtol=1e-3)
    part = with_term.variance_partition()
    block = part[part.term == "env:block"]
    assert block["se"].isna().all() and (block["se_note"] == "fixed at 0: on the boundary").all()
    assert any("fixed there" in n for n in with_term.notes)


# -- BLUPs and PEVs by their definitions --------------------------------------------------------
def test_blups_and_pevs_of_every_term_equal_their_definitions():
    """û_t = Cov(u_t, y) P y, PEV_t = Var(u_t) − Cov(u_t, y) P Cov(y, u_t), from the reference V."""
    data, K, *_ = _problem(5)
    random = [("env:block", "homogeneous", None)]
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous", random=["env:block"])
    model, eng = _model(data, K, "heterogeneous", "homogeneous", ["env:block"])
    G, R, E = _matrices(model, fit.theta)
    prob = build_problem(data, K, TRAITS, "env", "id", "heterogeneous", "homogeneous", random=random)
    V = build_V(prob, G, E, R)
    Vi = np.linalg.inv(V)
    X = prob.X
    P = Vi - Vi @ X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi)
    term = prob.random[0]
    levels = fit.random_levels["env:block"]
    lev = {v: j for j, v in enumerate(levels)}
    # Cov(u[j, i], y_o) = [level(o) = j] · R[i, c(o)]
    C = np.zeros((len(levels) * 2, prob.N))
    for o in range(prob.N):
        j = lev[str(term.level[o])]
        for i in range(2):
            C[j * 2 + i, o] = R[0][i, term.index[o]]
    blup = (C @ P @ prob.y).reshape(len(levels), 2)
    pev = (np.tile(np.diag(R[0]), len(levels)) - np.einsum("ko,op,kp->k", C, P, C)).reshape(len(levels), 2)
    assert np.allclose(fit.random_blup["env:block"], blup, atol=1e-8)
    assert np.allclose(fit.random_pev["env:block"], pev, atol=1e-8)
    table = fit.random_effects("env:block")
    assert len(table) == len(levels) * 2 and set(table.columns) >= {"term", "level", "blup", "pev", "n_obs"}
    counts = data.melt(id_vars=["env", "block"], value_vars=TRAITS).dropna()
    counts = counts.assign(level=counts["env"] + ":" + counts["block"]).groupby(["level", "variable"]).size()
    assert (table.set_index(["level", "trait"])["n_obs"] == counts.rename_axis(["level", "trait"])).all()
    # fitted values add every term's BLUP
    fitted = fit.fitted()
    assert np.allclose(fitted["y"] - fitted["residual"], fitted["fitted"])
    xb = X @ np.linalg.solve(X.T @ Vi @ X, X.T @ Vi @ prob.y)
    assert np.allclose(fit.observed["fitted"], xb + (V - E[np.ix_(prob.ridx, prob.ridx)] * (
        prob.rec[:, None] == prob.rec[None, :])) @ P @ prob.y, atol=1e-8)


# -- variance partition, h², persistence, invariances -------------------------------------------
def test_variance_partition_shares_sum_to_one_and_h2_divides_by_every_term():
    data, K, *_ = _problem(9, genetic="homogeneous")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block", "rep"])
    part = fit.variance_partition()
    sums = part.groupby(["env", "trait"])["share"].sum()
    assert np.allclose(sums, 1.0, atol=1e-12)
    assert set(part["term"]) == {"G", "env:block", "rep", "E"}
    h2 = fit.heritability().set_index(["env", "trait"])["h2"]
    g = part[part.term == "G"].set_index(["env", "trait"])["share"]
    assert np.allclose(h2.loc[g.index], g, atol=1e-12)
    ok = part["se_note"] == ""
    assert (part.loc[ok, "se"] > 0).all()
    # delta-method SE of a share against central finite differences of θ through AI⁻¹
    back = hetvc.load(fit.to_json())
    assert back.random_terms == ["env:block", "rep"]
    assert np.allclose(back.random_blup["rep"], fit.random_blup["rep"])
    pd.testing.assert_frame_equal(back.variance_partition(), part)


def test_row_order_and_level_labels_do_not_matter():
    data, K, *_ = _problem(4, genetic="homogeneous")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], tol=1e-10)
    shuffled = data.sample(frac=1.0, random_state=3).reset_index(drop=True)
    renamed = shuffled.assign(block=shuffled["block"].map(lambda b: f"blk-{b}"))
    other = hetvc.fit(renamed, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], tol=1e-10)
    assert other.loglik == pytest.approx(fit.loglik, abs=1e-8)
    assert np.allclose(other.theta, fit.theta, rtol=1e-5, atol=1e-8)


def test_trait_scaling_scales_the_term_by_c_squared():
    data, K, *_ = _problem(6, genetic="homogeneous")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], tol=1e-10)
    c = 10.0
    scaled = data.assign(y1=data["y1"] * c, y2=data["y2"] * c)
    big = hetvc.fit(scaled, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], tol=1e-10)
    assert np.allclose(big.theta, c ** 2 * fit.theta, rtol=1e-5, atol=1e-8)
    # ℓ shifts by −(N − p)·log c under REML
    assert big.loglik == pytest.approx(fit.loglik - (fit.n_obs - fit.rank_x) * np.log(c), abs=1e-6)


def test_start_from_a_fit_without_the_term():
    data, K, *_ = _problem(8, genetic="homogeneous")
    base = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"], start=base)
    cold = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["env:block"])
    assert fit.loglik == pytest.approx(cold.loglik, abs=1e-6)
    assert hetvc.compare(base, fit).set_index("model").loc[fit_name(fit), "lrt_vs"] == fit_name(base)


def fit_name(fit):
    return hetvc.comparison.model_name(fit)


def test_a_one_environment_animal_model_with_two_terms():
    data, K, *_ = _problem(12, n_env=1, genetic="homogeneous", blocks=4)
    data["year"] = np.arange(len(data)) % 5
    fit = hetvc.fit(data, K, TRAITS, random=["block", hetvc.Random("year", structure="diagonal")])
    assert fit.converged
    names = fit.param_names()
    assert "year[all][y1,y1]" in names and not any(n.startswith("year[all][y1,y2") for n in names)
    assert "Variance partition" in fit.summary()


# -- bad input: one line naming the term ----------------------------------------------------------
@pytest.fixture(scope="module")
def small():
    data, K, *_ = _problem(2, genetic="homogeneous")
    return data, K


@pytest.mark.parametrize("random,message", [
    (["nope"], "random term 'nope': column 'nope' is not in the data"),
    (["env:nope"], "random term 'env:nope': column 'nope' is not in the data"),
    (["env"], "random term 'env' is confounded with the fixed effects"),
    (["block", "block"], "random term 'block' is given twice"),
    ([hetvc.Random("block", structure="wild")], "unknown random term structure 'wild'"),
    (["G"], "'G' and 'E' name the genetic and residual matrices"),
    ([3], "a random term is a column name"),
])
def test_bad_terms_are_refused_in_one_line(small, random, message):
    data, K = small
    data = data.assign(G=1)
    with pytest.raises(hetvc.InputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=random)


def test_single_level_blank_level_and_too_few_levels(small):
    data, K = small
    with pytest.raises(hetvc.InputError, match="random term 'one' has a single level"):
        hetvc.fit(data.assign(one="a"), K, TRAITS, env="env", genetic="homogeneous", random=["one"])
    blank = data.assign(block=data["block"].where(data.index != 4))
    with pytest.raises(hetvc.InputError, match="random term 'block': column 'block' is blank in row 5"):
        hetvc.fit(blank, K, TRAITS, env="env", genetic="homogeneous", random=["block"])
    two = data.assign(pair=np.arange(len(data)) % 2)
    with pytest.raises(hetvc.InputError, match="random term 'pair' has 2 levels, too few for its 2 traits"):
        hetvc.fit(two, K, TRAITS, env="env", genetic="homogeneous", random=["pair"])


def test_kinship_missing_levels_is_refused(small):
    data, K = small
    levels = sorted(data["rep"].astype(str).unique())[:-1]
    Kr = pd.DataFrame(np.eye(len(levels)), index=levels, columns=levels)
    with pytest.raises(hetvc.InputError, match="random term 'rep': 1 level\\(s\\) are not in its relationship matrix"):
        hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=[hetvc.Random("rep", K=Kr)])


def test_levels_crossing_environments_get_a_note(small):
    data, K = small
    data = data.assign(plot=np.arange(len(data)) % 4)
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["plot"], pev=False)
    assert any("is crossed with environments" in n and "'<env column>:plot'" in n for n in fit.notes)


def test_dense_engine_matches_reference_for_the_conftest_helper_too():
    """The two-term model is unchanged: conftest's dense_model still builds it."""
    data, K, G, E = make_problem(3, n_geno=12)
    model, eng = dense_model(data, K, TRAITS, "heterogeneous", "homogeneous")
    assert model.random == () and len(model.terms()) == 2
    ref = reference_loglik(data, K, TRAITS, "env", "id", "heterogeneous", "homogeneous", G=G, E=E)
    assert eng.evaluate(model.join(G, E)).loglik == pytest.approx(ref, abs=1e-9)


def test_random_effects_of_a_term_per_environment_list_the_environments_with_records():
    data, K, *_ = _problem(10, genetic="homogeneous")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous",
                    random=[hetvc.Random("block", structure="heterogeneous")], pev=False)
    table = fit.random_effects()
    # block labels 'E1.b1' … are nested in their environment: one row per level and trait
    assert len(table) == data["block"].nunique() * 2
    assert (table["env"] == table["level"].str.split(".").str[0]).all()
    assert "pev" not in table.columns and (table["n_obs"] > 0).all()
    back = hetvc.load(fit.to_json())
    pd.testing.assert_frame_equal(back.random_effects(), table)


def test_h2_of_a_genetic_variance_fixed_at_zero_is_zero_without_an_se():
    """No genetic signal, one trait: G (a lone variance) is fixed at 0, and so is h²."""
    data, K, *_ = _problem(21, genetic="homogeneous", block_var=0.5)
    rng = np.random.default_rng(9)  # a seed whose noise puts G (only) at zero
    data = data.assign(y1=rng.normal(size=len(data)) + data["env"].map({"E1": 0.0, "E2": 1.0}))
    fit = hetvc.fit(data, K, "y1", env="env", genetic="homogeneous", random=["env:block"], tol=1e-11)
    assert fit.boundary == ["G"]
    h2 = fit.heritability()
    assert np.allclose(h2["h2"], 0.0, atol=1e-6)
    assert h2["se"].isna().all() and (h2["se_note"] == "fixed at 0: on the boundary").all()
    pooled = fit.pooled_heritability()
    assert pooled["se"].isna().all()
    part = fit.variance_partition()
    assert (part.loc[part.term == "E", "se_note"] == "").all()
