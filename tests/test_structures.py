"""Covariance structures (src/hetvc/structures.py): θ ↔ Σ round trips, what each structure
says about itself, and the ``diagonal`` genetic structure end to end — brute-force optimum,
dense = spectral, nesting, CLI."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hetvc
from hetvc.cli import main
from hetvc.structures import GENETIC, RESIDUAL, GENETIC_STRUCTURES, make_structure, structure_class
from reference import make_problem, reference_fit, reference_loglik

ENVS, TRAITS = ["E1", "E2", "E3"], ["y1", "y2"]


@pytest.mark.parametrize("kind,name", [("G", g) for g in GENETIC] + [("E", r) for r in RESIDUAL])
def test_theta_matrix_round_trip_and_blocks(kind, name):
    s = make_structure(kind, name, ENVS, TRAITS)
    rng = np.random.default_rng(1)
    theta = rng.normal(size=s.n_params)
    M = s.matrix(theta)
    if s.linear:  # a factor-analytic θ comes back up to Λ's rotation (tests/test_factor_analytic.py)
        np.testing.assert_array_equal(s.theta(M), theta)
    assert np.allclose(M, M.T)
    free = np.zeros_like(M, dtype=bool)
    for blk in s.blocks:
        free[np.ix_(blk, blk)] = True
    assert not M[~free].any()  # nothing outside the positive-definite blocks
    assert len({s.block_name(b) for b in s.blocks}) == len(s.blocks)  # block names are unique
    assert s.dim == (len(ENVS) * len(TRAITS) if s.per_environment else len(TRAITS))


def test_diagonal_structure():
    s = make_structure("G", "diagonal", ENVS, TRAITS)
    assert s.n_params == 6 and all(a == b for a, b in s.pairs)
    assert s.param_names()[:2] == ["G[E1][y1,y1]", "G[E1][y2,y2]"]
    assert [s.block_name(b) for b in s.blocks][:2] == ["G[E1][y1]", "G[E1][y2]"]
    assert not s.trait_covariances and not s.links_environments and not s.environment_correlations
    cls = structure_class("G", "diagonal")
    assert cls.nests_in("G", "heterogeneous") and cls.nests_in("G", "unstructured")
    assert not cls.nests_in("G", "homogeneous")
    assert set(GENETIC_STRUCTURES) == {"homogeneous", "heterogeneous", "diagonal", "unstructured",
                                       "fa1", "fa2", "fa3", "csh", "separable"}
    with pytest.raises(hetvc.InputError, match="unknown genetic structure 'fa0'; choose one of"):
        make_structure("G", "fa0", ENVS, TRAITS)
    with pytest.raises(hetvc.InputError, match="two environments"):
        make_structure("G", "diagonal", ["only"], TRAITS)


@pytest.fixture(scope="module")
def diag_problem():
    return make_problem(7, n_geno=30, n_env=2, genetic="diagonal", missing=0.15, p_env=0.8)


@pytest.mark.parametrize("residual", ["homogeneous", "heterogeneous"])
def test_diagonal_optimum_equals_brute_force(diag_problem, residual):
    data, K, _, _ = diag_problem
    ours = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="diagonal", residual=residual, tol=1e-11)
    ref = reference_fit(data, K, TRAITS, "env", "id", "diagonal", residual)
    assert ours.converged
    assert ours.loglik == pytest.approx(ref["loglik"], abs=1e-6)
    G = ours.genetic_covariance().to_numpy()
    np.testing.assert_allclose(np.diag(G), np.diag(ref["G"]), rtol=1e-4, atol=1e-6)
    assert not (G - np.diag(np.diag(G))).any()
    # ℓ at the estimate equals the brute-force ℓ of the same matrices
    E = ours.residual_covariance().to_numpy()
    E = E if residual == "heterogeneous" else E[:2, :2]
    assert reference_loglik(data, K, TRAITS, "env", "id", "diagonal", residual, G, E) == pytest.approx(
        ours.loglik, abs=1e-8)
    assert ours.genetic_correlations().empty  # no covariance is estimated
    assert len(ours.heritability()) == 4


def test_diagonal_spectral_equals_dense():
    data, K, _, _ = make_problem(8, n_geno=40, n_env=3, genetic="diagonal")
    spectral = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="diagonal")
    dense = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="diagonal", engine="dense")
    assert spectral.engine == "spectral" and dense.engine == "dense"
    assert spectral.loglik == pytest.approx(dense.loglik, abs=1e-8)
    np.testing.assert_allclose(spectral.theta, dense.theta, rtol=1e-6)
    np.testing.assert_allclose(spectral.blup, dense.blup, rtol=1e-6, atol=1e-10)


def test_diagonal_nests_in_heterogeneous_for_the_lrt(diag_problem):
    data, K, _, _ = diag_problem
    fits = [hetvc.fit(data, K, TRAITS, env="env", id="id", genetic=g) for g in ("diagonal", "heterogeneous")]
    table = hetvc.compare(*fits).set_index("model")
    assert table.loc["heterogeneous/homogeneous", "lrt_vs"] == "diagonal/homogeneous"
    assert table.loc["heterogeneous/homogeneous", "lrt_df"] == 2
    assert fits[1].loglik >= fits[0].loglik - 1e-8


def test_cli_genetic_diagonal_and_compare_all(diag_problem, tmp_path):
    data, K, _, _ = diag_problem
    data.to_csv(tmp_path / "pheno.csv", index=False)
    K.to_csv(tmp_path / "K.csv")
    base = ["fit", str(tmp_path / "pheno.csv"), "--kinship", str(tmp_path / "K.csv"), "--traits", "y1,y2",
            "--env", "env", "--no-figures", "--no-pev"]
    res = CliRunner().invoke(main, base + ["--genetic", "diagonal", "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["selected"] == "diagonal/homogeneous"
    res = CliRunner().invoke(main, base + ["--compare", "all", "--out", str(tmp_path / "out")])
    assert res.exit_code in (0, 3), res.output
    comparison = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert {"diagonal/homogeneous", "diagonal/heterogeneous"} <= set(comparison["model"])


def test_diagonal_needs_fewer_genotypes_per_environment_than_heterogeneous():
    """An environment with 3 genotypes of 3 traits: heterogeneous estimates 3 parameters with
    each trait there (needs 4 genotypes) and is refused; diagonal estimates 1 (needs 2)."""
    data, K, _, _ = make_problem(1, n_geno=30, n_env=2, n_traits=3, genetic="heterogeneous")
    keep = (data["env"] != "E2") | data["id"].isin(["g001", "g002", "g003"])
    sparse = data[keep]
    traits = ["y1", "y2", "y3"]
    with pytest.raises(hetvc.InputError, match="too few for genetic='heterogeneous'"):
        hetvc.build_model(sparse, K, traits, env="env", id="id", genetic="heterogeneous")
    model = hetvc.build_model(sparse, K, traits, env="env", id="id", genetic="diagonal")
    assert model.genetic.cell_parameters(3) == 1
