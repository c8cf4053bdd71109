"""The fitted-model object (tables, delta-method SEs, JSON round trip, compare) and the
one-line errors for bad input."""

import json

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc.errors import InputError
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    return make_problem(21, n_geno=40, n_env=3, genetic="heterogeneous", missing=0.1, p_env=0.7,
                        n_untested=4)


@pytest.fixture(scope="module")
def fits(problem):
    data, K, _, _ = problem
    return {g: hetvc.fit(data, K, TRAITS, env="env", genetic=g) for g in ("homogeneous", "heterogeneous", "unstructured")}


def test_tables_have_the_documented_shape(fits, problem):
    data, K, _, _ = problem
    fit = fits["heterogeneous"]
    vc = fit.variance_components()
    assert list(vc["name"])[:3] == ["G[E1][y1,y1]", "G[E1][y1,y2]", "G[E1][y2,y2]"]
    assert len(vc) == 3 * 3 + 3
    assert list(vc.columns)[-3:] == ["estimate", "se", "se_note"]
    # an SE is positive, or NA with its reason (a block on the boundary: every parameter of it)
    assert (vc["se"].gt(0) | (vc["se"].isna() & vc["se_note"].ne(""))).all()
    blocks = fit.param_blocks()
    for b, se, note in zip(blocks, vc["se"], vc["se_note"]):
        assert (b in fit.boundary) == (note == f"on the boundary: {b} is singular") == np.isnan(se)
    h2 = fit.heritability()
    assert len(h2) == 3 * 2 and h2["h2"].between(0, 1).all()
    blups = fit.blups()
    assert len(blups) == len(K) * 3 * 2  # every genotype in K (untested ones too) × env × trait
    assert set(K.index) == set(blups["id"]) and blups["pev"].gt(0).all()
    fitted = fit.fitted()
    assert len(fitted) == fit.n_obs
    np.testing.assert_allclose(fitted["y"] - fitted["fitted"], fitted["residual"])
    assert fit.blues()["se"].gt(0).all()


def test_delta_method_matches_an_explicit_gradient(fits):
    """h² of trait y1 in E1: gradient (e, −g)/(g+e)² by hand against the complex-step one."""
    fit = fits["heterogeneous"]
    names = fit.param_names()
    kg, ke = names.index("G[E1][y1,y1]"), names.index("E[y1,y1]")
    g, e = fit.theta[kg], fit.theta[ke]
    grad = np.array([e, -g]) / (g + e) ** 2
    cov = fit.theta_cov[np.ix_([kg, ke], [kg, ke])]
    h2 = fit.heritability().set_index(["env", "trait"]).loc[("E1", "y1")]
    assert h2["h2"] == pytest.approx(g / (g + e), rel=1e-12)
    assert h2["se"] == pytest.approx(np.sqrt(grad @ cov @ grad), rel=1e-9)


def test_pooled_heritability_is_the_weighted_ratio(fits):
    fit = fits["homogeneous"]
    G = fit.genetic_covariance("E1").to_numpy()
    E = fit.residual_covariance("E1").to_numpy()
    pooled = fit.pooled_heritability().set_index("trait")["h2"]
    # homogeneous structures: the same Σ in every environment, so pooled = per-environment h²
    np.testing.assert_allclose(pooled.to_numpy(), np.diag(G) / (np.diag(G) + np.diag(E)), rtol=1e-12)


def test_genetic_correlations_are_within_bounds(fits):
    r = fits["unstructured"].genetic_correlations()
    assert set(r["between"]) == {"traits", "environments"}
    assert r["r"].abs().le(1 + 1e-12).all()


def test_json_round_trip(fits, tmp_path):
    fit = fits["unstructured"]
    path = tmp_path / "fit.json"
    fit.to_json(path)
    loaded = hetvc.load(path)
    assert loaded.summary() == fit.summary()
    pd.testing.assert_frame_equal(loaded.blups(), fit.blups())
    assert json.loads(path.read_text())["format"] == "hetvc-fit/1"


def test_compare_reports_lrt_only_between_nested_models(fits):
    table = hetvc.compare(fits["homogeneous"], fits["heterogeneous"], fits["unstructured"])
    row = table.set_index("genetic")
    assert np.isnan(row.loc["heterogeneous", "lrt_stat"])  # homogeneous does not nest in it
    assert row.loc["unstructured", "lrt_vs"] == "heterogeneous/homogeneous"
    assert row.loc["unstructured", "k"] == 3 * 2 * 7 // 2 + 3
    np.testing.assert_allclose(table["AIC"], -2 * table["logLik"] + 2 * table["k"])
    assert table["dAIC"].min() == 0


def test_start_from_another_fit_reaches_the_same_optimum(fits, problem):
    data, K, _, _ = problem
    again = hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous", start=fits["homogeneous"])
    assert again.loglik == pytest.approx(fits["heterogeneous"].loglik, abs=1e-6)


# -- bad input --------------------------------------------------------------------------------
@pytest.fixture
def small():
    data, K, _, _ = make_problem(3, n_geno=12, n_env=2, genetic="heterogeneous")
    return data, K


def _error(data, K, **kw):
    kw.setdefault("traits", TRAITS)
    kw.setdefault("env", "env")
    with pytest.raises(InputError) as info:
        hetvc.fit(data, K, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_error_non_numeric_trait(small):
    data, K = small
    data = data.astype({"y1": object})
    data.loc[4, "y1"] = "n/a?"
    assert "'y1'" in _error(data, K) and "row 5" in _error(data, K)


def test_error_ids_absent_from_k(small):
    data, K = small
    data.loc[[0, 1], "id"] = ["nobody", "ghost"]
    msg = _error(data, K)
    assert "'nobody'" in msg and "'ghost'" in msg and "2 id(s)" in msg


def test_error_trait_missing_in_an_environment(small):
    data, K = small
    data.loc[data["env"] == "E2", "y2"] = np.nan
    msg = _error(data, K, genetic="heterogeneous")
    assert "'y2'" in msg and "'E2'" in msg


def test_error_heterogeneous_with_one_environment(small):
    data, K = small
    msg = _error(data.assign(env="only"), K, genetic="heterogeneous")
    assert "two environments" in msg


def test_error_kinship_not_square_symmetric_or_psd(small):
    data, K = small
    assert "square" in _error(data, K.iloc[:, :-1]).lower()
    asym = K.copy()
    asym.iloc[0, 1] += 0.5
    assert "symmetric" in _error(data, asym).lower()
    vals, vecs = np.linalg.eigh(K.to_numpy())
    vals[0] = -0.5
    notpsd = pd.DataFrame((vecs * vals) @ vecs.T, index=K.index, columns=K.columns)
    assert "semi-definite" in _error(data, notpsd).lower() or "psd" in _error(data, notpsd).lower()
    with pytest.warns(UserWarning):
        fit = hetvc.fit(data, notpsd, TRAITS, env="env", jitter=0.01)
    assert np.isfinite(fit.loglik)


def test_error_rank_deficient_fixed_effects(small):
    data, K = small
    data = data.assign(site_effect=data["env"].map({"E1": 1.0, "E2": 3.0}))
    msg = _error(data, K, fixed="~ site_effect")
    assert "rank deficient" in msg and "site_effect" in msg


def test_error_unknown_structure_and_column(small):
    data, K = small
    assert "structure" in _error(data, K, genetic="no-such-structure")
    assert "'yield'" in _error(data, K, traits=["yield"])
