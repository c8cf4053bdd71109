"""The dense engine's split of V into independent blocks: which blocks, and the same ℓ, score,
AI, BLUEs, BLUPs and PEVs as factoring V whole."""

import numpy as np
import pytest

import hetvc
from hetvc.engines import DenseEngine
from hetvc.engines.dense import independent_blocks
from engine_checks import random_term_model as _model
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    return make_problem(4, n_geno=25, n_env=3, genetic="heterogeneous", missing=0.15, p_env=0.8, reps=3, blocks=2)


@pytest.mark.parametrize("genetic,residual,random,n_blocks", [
    ("heterogeneous", "homogeneous", None, 3),             # no term links environments
    ("heterogeneous", "heterogeneous", ["env:block"], 3),  # blocks nested in environments
    ("diagonal", "homogeneous", None, 3),
    ("homogeneous", "homogeneous", None, 1),               # a genotype's value spans environments
    ("heterogeneous", "homogeneous", ["rep"], 1),          # replicate numbers cross environments
    ("fa1", "homogeneous", None, 1),
])
def test_blocks_are_what_no_term_links(problem, genetic, residual, random, n_blocks):
    data, K, *_ = problem
    model = _model(data, K, genetic, residual, random)
    blocks = independent_blocks(model.terms(), model.design.n_obs)
    assert len(blocks) == n_blocks
    assert sorted(np.concatenate(blocks).tolist()) == list(range(model.design.n_obs))
    if n_blocks == 3:  # the blocks are the environments
        assert all(len(np.unique(model.design.env[b])) == 1 for b in blocks)


def test_identity_kernel_units_split_the_residual_only_model():
    """With K the identity, every genotype (its records, all environments) is its own block."""
    data, K, *_ = make_problem(2, n_geno=12, n_env=2, genetic="homogeneous")
    K.loc[:, :] = np.eye(len(K))
    model = _model(data, K, "homogeneous")
    blocks = independent_blocks(model.terms(), model.design.n_obs)
    assert len(blocks) == 12


@pytest.mark.parametrize("genetic,residual,random,method", [
    ("heterogeneous", "homogeneous", None, "reml"),
    ("heterogeneous", "heterogeneous", ["env:block"], "reml"),
    ("diagonal", "homogeneous", None, "ml"),
])
def test_split_equals_whole(problem, genetic, residual, random, method):
    data, K, *_ = problem
    model = _model(data, K, genetic, residual, random, method)
    split, whole = DenseEngine(model), DenseEngine(model, split=False)
    assert len(split.blocks) == 3 and len(whole.blocks) == 1
    theta = model.start() * (1 + 0.2 * np.random.default_rng(0).random(model.n_params))
    a, b = split.evaluate(theta), whole.evaluate(theta)
    assert a.loglik == pytest.approx(b.loglik, abs=1e-9)
    np.testing.assert_allclose(a.score, b.score, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(a.ai, b.ai, rtol=1e-9, atol=1e-10)
    sa, sb = split.solve(theta, pev=True), whole.solve(theta, pev=True)
    for x, y in [(sa.beta, sb.beta), (sa.blup, sb.blup), (sa.pev, sb.pev), (sa.fitted, sb.fitted)]:
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-10)


def test_engine_reason_says_how_v_splits(problem):
    data, K, *_ = problem
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous", random=["env:block"], pev=False)
    assert fit.engine == "dense" and "3 independent blocks of" in fit.engine_reason


def test_a_model_the_machine_cannot_hold_is_refused_in_one_line(problem, monkeypatch):
    import hetvc.engines.dense as dense

    data, K, *_ = problem
    model = _model(data, K, "homogeneous")
    need = dense.memory_bytes(DenseEngine(model))
    assert need > 8 * model.design.n_obs ** 2  # at least V itself (one block: homogeneous)
    monkeypatch.setattr(dense, "available_memory", lambda: need // 2)
    with pytest.raises(hetvc.InputError, match=r"the dense engine needs about .* GB for \d+ observed values"):
        hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", engine="dense")
    monkeypatch.setattr(dense, "available_memory", lambda: None)  # unknown: no refusal
    assert hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", engine="dense", pev=False).converged


def test_a_memory_error_during_a_fit_is_reported_in_one_line(problem, monkeypatch):
    import hetvc.fitting as fitting

    data, K, *_ = problem

    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 7.5 GiB for an array with shape (31000, 31000)")

    monkeypatch.setattr(fitting, "maximize", no_memory)
    with pytest.raises(hetvc.InputError, match=r"out of memory while fitting \d+ covariance parameters to "
                                               r"\d+ observed values \(Unable to allocate 7.5 GiB"):
        hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous")
