"""Entry-mean heritability and genotype rankings (hetvc.breeding; issue 17 items 6 and 7)."""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc import breeding
from hetvc.report import write_report

from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


@pytest.fixture(scope="module")
def problem():
    data, K, G, E = make_problem(3, n_geno=30, n_env=2)
    return data, K


@pytest.fixture(scope="module")
def fit(problem):
    data, K = problem
    return hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous", engine="dense")


def test_classical_formula_by_hand():
    # σ²_g = 4, σ²_ge = 2, σ²_e = 6, e = 4, r = 3: 4 / (4 + 2/4 + 6/12) = 4 / 5
    assert breeding.classical_entry_mean_h2(4.0, 2.0, 6.0, 4, 3) == pytest.approx(0.8)
    # one environment, one replicate, no G×E: the plot-level h²
    assert breeding.classical_entry_mean_h2(1.0, 0.0, 3.0, 1, 1) == pytest.approx(0.25)
    out = breeding.classical_entry_mean_h2(np.array([1.0, 2.0]), 1.0, 2.0, 2, 2)
    np.testing.assert_allclose(out, [1 / 2, 2 / 3])
    with pytest.raises(ValueError):
        breeding.classical_entry_mean_h2(1.0, 1.0, 1.0, 0, 1)


def test_cullis_formulas():
    assert breeding.cullis_h2(1.0, 2.0) == pytest.approx(0.75)
    assert breeding.cullis_h2_approx([0.5, 1.5], 4.0) == pytest.approx(0.75)
    assert breeding.cullis_h2_approx([0.5, 1.5], 4.0, [1.0, 3.0]) == pytest.approx(1 - 1.0 / 8.0)
    assert breeding.cullis_h2_approx([0.0], 0.0) == 0.0
    assert np.isnan(breeding.cullis_h2_approx([], 1.0))


def test_reliability_against_dense_pevs(fit, problem):
    _, K = problem
    r = fit.rankings(K)
    b = fit.blups()
    kjj = pd.Series(np.diag(K.to_numpy()), index=K.index.astype(str))
    for env in fit.envs:
        vg = np.diag(fit.genetic_covariance(env).to_numpy())
        for i, t in enumerate(TRAITS):
            cell = b[(b["env"] == env) & (b["trait"] == t)].set_index("id")
            expected = 1 - cell["pev"] / (vg[i] * kjj.loc[cell.index.astype(str)].to_numpy())
            got = r[(r["env"] == env) & (r["trait"] == t)].set_index("id")["reliability"]
            np.testing.assert_allclose(got.loc[expected.index].to_numpy(), expected.to_numpy(), rtol=1e-12)
            assert ((got > 0) & (got < 1)).all()
    # without K: the diagonal the fit kept (K as given to hetvc.fit here) gives the same
    pd.testing.assert_frame_equal(fit.rankings(), r)
    # a fit.json from before the fit kept it: K_jj = 1
    fit.kinship_diagonal, kept = None, fit.kinship_diagonal
    try:
        r1 = fit.rankings()
    finally:
        fit.kinship_diagonal = kept
    cell = b[(b["env"] == fit.envs[0]) & (b["trait"] == "y1")].set_index("id")
    vg = fit.genetic_covariance(fit.envs[0]).iloc[0, 0]
    got = r1[(r1["env"] == fit.envs[0]) & (r1["trait"] == "y1")].set_index("id")["reliability"]
    np.testing.assert_allclose(got.loc[cell.index].to_numpy(), 1 - cell["pev"].to_numpy() / vg)


def test_ranks_are_a_permutation_ordered_by_blup(fit):
    r = fit.rankings()
    assert set(r["env"]) == {*fit.envs, "across"}
    b = fit.blups()
    for (env, t), g in r.groupby(["env", "trait"]):
        assert sorted(g["rank"]) == list(range(1, len(fit.ids) + 1))
        assert np.all(np.diff(g.sort_values("rank")["blup"].to_numpy()) <= 0)
        assert g["phenotyped"].all()  # every genotype is tested in every environment
    across = r[(r["env"] == "across") & (r["trait"] == "y1")].set_index("id")["blup"]
    mean = b[b["trait"] == "y1"].groupby("id")["blup"].mean()
    np.testing.assert_allclose(across.loc[mean.index].to_numpy(), mean.to_numpy())
    # heterogeneous ΣG: no genetic covariance between environments → an across reliability
    assert r.loc[r["env"] == "across", "reliability"].notna().all()


def test_unphenotyped_and_no_pev(problem):
    data, K = problem
    data = data[data["id"] != data["id"].iloc[0]]
    f = hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous", engine="dense", pev=False)
    r = f.rankings()
    assert r["reliability"].isna().all()
    assert (~r["phenotyped"]).sum() == len(f.envs) * len(TRAITS) + len(TRAITS)
    h = f.entry_mean_heritability()
    assert h["H2"].isna().all() and h["method"].str.contains("without PEVs").all()


def test_entry_mean_h2_in_unit_interval_and_grows_with_h2(fit, problem):
    data, K = problem
    h = fit.entry_mean_heritability(K)
    assert set(h["env"]) == {*fit.envs, "across"}
    assert len(h) == (len(fit.envs) + 1) * len(TRAITS)
    assert h["H2"].between(0, 1).all()
    assert h["method"].str.contains("Cullis").all()
    assert (h["n_genotypes"] == 30).all()
    # more residual noise: a lower entry-mean H² everywhere
    noisy = data.copy()
    rng = np.random.default_rng(11)
    for t in TRAITS:
        noisy[t] = noisy[t] + rng.normal(0, 3 * noisy[t].std(), len(noisy))
    f2 = hetvc.fit(noisy, K, TRAITS, env="env", genetic="heterogeneous", engine="dense")
    h2 = f2.entry_mean_heritability(K)
    assert h2["H2"].between(0, 1).all()
    assert (h2["H2"].to_numpy() < h["H2"].to_numpy()).all()


def test_across_shared_and_correlated(problem):
    data, K = problem
    hom = hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", engine="dense")
    h = hom.entry_mean_heritability(K)
    # one genetic value in every environment: every row is the same H²
    for t in TRAITS:
        vals = h.loc[h["trait"] == t, "H2"].to_numpy()
        np.testing.assert_allclose(vals, vals[0])
    un = hetvc.fit(data, K, TRAITS, env="env", genetic="unstructured", engine="dense")
    h = un.entry_mean_heritability(K)
    assert h.loc[h["env"] == "across", "H2"].isna().all()
    assert h.loc[h["env"] != "across", "H2"].notna().all()
    r = un.rankings(K)
    assert r.loc[r["env"] == "across", "reliability"].isna().all()


def test_report_files(fit, tmp_path):
    result = write_report(tmp_path, {"heterogeneous/homogeneous": fit}, figures=False)
    assert "rankings.csv" in result["files"]
    df = pd.read_csv(tmp_path / "rankings.csv")
    assert {"model", "env", "trait", "rank", "id", "blup", "reliability", "phenotyped"} <= set(df.columns)
    assert len(df) == (len(fit.envs) + 1) * len(TRAITS) * len(fit.ids)
    md = (tmp_path / "report.md").read_text()
    assert "### Top genotypes" in md and "### Entry-mean heritability" in md
    assert "y1, across environments (top 10):" in md and "y2, E2 (top 5):" in md
    assert "`rankings.csv`" in md


def test_fa_overall_performance_and_stability_from_the_loadings():
    """Smith & Cullis (2018): OP = mean first-factor loading × score; stability = RMSD of the
    BLUPs from the first-factor regression, both computed here by hand from the fit's tables."""
    data, K, _, _ = make_problem(6, n_geno=30, n_env=3, genetic="unstructured")
    fit = hetvc.fit(data, K, TRAITS, env="env", genetic="fa1", pev=False)
    r = fit.rankings()
    across = r[r["env"] == "across"].set_index(["trait", "id"])
    lo = fit.loadings().set_index(["trait", "env"])["f1"]
    b = fit.blups().assign(id=lambda d: d["id"].astype(str)).set_index(["trait", "id", "env"])["blup"].sort_index()
    for t in TRAITS:
        lam = lo.loc[t].loc[fit.envs].to_numpy()
        for j in ["g001", "g007"]:
            u = b.loc[t, j].loc[fit.envs].to_numpy()
            f = float(lam @ u / (lam @ lam))
            assert across.loc[(t, j), "overall_performance"] == pytest.approx(lam.mean() * f, rel=1e-10)
            assert across.loc[(t, j), "stability"] == pytest.approx(np.sqrt(np.mean((u - lam * f) ** 2)), rel=1e-10)
    assert "overall_performance" not in hetvc.fit(data, K, TRAITS, env="env", genetic="heterogeneous").rankings()
