"""hetvc.report with a factor-analytic ΣG (``genetic="fa2"``): loadings.csv (the selected model's
rotated loadings, share explained and ψ per environment × trait), report.md's section
"Factor-analytic ΣG" (the rotation, the table, Heywood cases marked, the figures), the latent
regression figure (the selected FA model, or else the best converged one), the between-environment
heat maps ordered by a hierarchical clustering (:func:`environment_order`), and for a fit that is
not factor-analytic none of it (and no stale file of an earlier run left behind)."""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc import report
from hetvc.report import figures
from hetvc.report.figures import environment_order, latent_regression, latent_scores
from reference import make_problem
from test_cli_fit import assert_png

TRAITS = ["y1", "y2"]
FA, HET = "fa2/homogeneous", "heterogeneous/homogeneous"
LOADINGS_COLUMNS = ["model", "env", "trait", "f1", "f2", "explained", "psi", "psi_se"]


@pytest.fixture(scope="module")
def fits():
    data, K, *_ = make_problem(3, n_geno=40, n_env=3, genetic="unstructured", missing=0.1)
    kw = dict(env="env", residual="homogeneous")
    return {FA: hetvc.fit(data, K, TRAITS, genetic="fa2", **kw),
            HET: hetvc.fit(data, K, TRAITS, genetic="heterogeneous", **kw)}


@pytest.fixture(scope="module")
def written(fits, tmp_path_factory):
    """A report of the FA model alone (so it is the selected one), with figures."""
    out = tmp_path_factory.mktemp("fa")
    result = report.write_report(out, {FA: fits[FA]}, figures=True)
    return out, result


def test_the_fits_are_what_the_tests_assume(fits, written):
    assert all(f.converged for f in fits.values())
    assert fits[FA].genetic_structure.factors == 2 and fits[FA].genetic_structure.environment_correlations
    assert not getattr(fits[HET].genetic_structure, "factors", 0)
    assert written[1]["selected"] == FA


def test_loadings_csv(fits, written):
    out, result = written
    assert "loadings.csv" in result["files"]
    lo = pd.read_csv(out / "loadings.csv")
    assert list(lo.columns) == LOADINGS_COLUMNS
    assert len(lo) == 3 * 2 and set(lo["model"]) == {FA}
    assert ((lo["explained"] >= -1e-9) & (lo["explained"] <= 1 + 1e-9)).all()
    f = fits[FA]
    np.testing.assert_allclose(lo[["f1", "f2"]], f.loadings()[["f1", "f2"]], rtol=1e-9)
    psi = f.specific_variances()
    np.testing.assert_allclose(lo["psi"], psi["psi"], rtol=1e-9)
    # a Heywood case (ψ fixed at 0) has no SE
    heywood = psi["se_note"].str.startswith("fixed at 0").to_numpy()
    assert lo["psi_se"].isna().to_numpy()[heywood].all()
    assert list(lo["env"].astype(str)) == [str(e) for e in psi["env"]]


def test_report_md_has_the_factor_analytic_section(fits, written):
    out, _ = written
    md = (out / "report.md").read_text()
    assert md.count("### Factor-analytic ΣG") == 1
    section = md.split("### Factor-analytic ΣG", 1)[1].split("\n### ", 1)[0]
    assert "lower triangular (λ_aj = 0 for a < j" in section
    assert "principal axes" in section and "mean loading is positive" in section
    header = next(ln for ln in section.splitlines() if ln.startswith("| environment"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "environment", "trait", "λ*1", "λ*2", "explained", "by f1", "by f2", "ψ (SE)"]
    rows = [ln for ln in section.splitlines() if ln.startswith("| E")]
    assert len(rows) == 6
    lo = fits[FA].loadings()
    first = [c.strip() for c in rows[0].strip("|").split("|")]
    assert first[:2] == [str(lo["env"][0]), str(lo["trait"][0])]
    assert float(first[2]) == pytest.approx(lo["f1"][0], rel=1e-3)
    heywood = fits[FA].specific_variances()["se_note"].str.startswith("fixed at 0")
    assert ("Heywood" in section) == bool(heywood.any())
    assert sum("0 † (NA)" in r for r in rows) == int(heywood.sum())
    # its figures are shown in the section, not again under Figures
    assert "![latent_regression.png](latent_regression.png)" in section
    assert "![environment_correlations.png](environment_correlations.png)" in section
    assert md.count("![latent_regression.png]") == 1 and md.count("![environment_correlations.png]") == 1
    assert "`loadings.csv`" in md.split("## Files", 1)[1]


def test_figures_written(written):
    out, result = written
    for name in ("latent_regression.png", "environment_correlations.png"):
        assert name in result["files"]
        assert_png(out / name)


def test_environment_order_puts_the_most_correlated_pair_together():
    R = np.array([[1.0, 0.1, 0.2, 0.9],
                  [0.1, 1.0, 0.5, 0.0],
                  [0.2, 0.5, 1.0, 0.1],
                  [0.9, 0.0, 0.1, 1.0]])
    order = environment_order(R)
    assert sorted(order) == [0, 1, 2, 3]
    pos = {int(e): i for i, e in enumerate(order)}
    assert abs(pos[0] - pos[3]) == 1 and abs(pos[1] - pos[2]) == 1
    # averaged over traits: a second trait that ties 1 and 3 does not outweigh the first
    R2 = R.copy()
    R2[1, 3] = R2[3, 1] = 0.6
    pos = {int(e): i for i, e in enumerate(environment_order(np.stack([R, R2])))}
    assert abs(pos[0] - pos[3]) == 1
    # an r that is NaN counts as distance 1 (no correlation), not as an error
    Rn = R.copy()
    Rn[1, 2] = Rn[2, 1] = np.nan
    order = environment_order(Rn)
    assert sorted(order) == [0, 1, 2, 3]
    pos = {int(e): i for i, e in enumerate(order)}
    assert abs(pos[0] - pos[3]) == 1
    assert list(environment_order(np.eye(2))) == [0, 1] and list(environment_order(np.eye(1))) == [0]


def test_environment_correlations_are_drawn_in_the_clustering_order(fits, tmp_path, monkeypatch):
    f = fits[FA]
    drawn = []
    real = figures._corr_heatmap

    def spy(ax, R, labels, *a, **kw):
        drawn.append((np.array(R), list(labels)))
        return real(ax, R, labels, *a, **kw)

    monkeypatch.setattr(figures, "_corr_heatmap", spy)
    figures.environment_correlations(f, tmp_path / "ec.png")
    G = f.genetic_covariance().to_numpy()
    sd = np.sqrt(np.diag(G))
    R = G / np.outer(sd, sd)
    blocks = np.stack([R[np.ix_(f.layout.trait_rows(i), f.layout.trait_rows(i))] for i in range(2)])
    order = environment_order(blocks)
    assert len(drawn) == 2
    for i, (Ri, labels) in enumerate(drawn):
        assert labels == [f.envs[k] for k in order]
        np.testing.assert_allclose(Ri, blocks[i][np.ix_(order, order)])


def test_latent_scores_are_least_squares_on_the_rotated_loadings(fits):
    f = fits[FA]
    sc = latent_scores(f, "y1")
    obs = pd.DataFrame({"id": np.asarray(f.observed["id"]).astype(str),
                        "trait": np.asarray(f.observed["trait"]).astype(str)})
    assert set(sc["id"]) == set(obs.loc[obs["trait"] == "y1", "id"])
    assert list(sc.columns) == ["id", "f1", "f2"] and sc["f1"].is_monotonic_decreasing
    lo = f.loadings()
    lam = lo[lo["trait"] == "y1"][["f1", "f2"]].to_numpy()
    bl = f.blups()
    j = sc["id"].iloc[0]
    u = bl[(bl["id"].astype(str) == j) & (bl["trait"] == "y1")]["blup"].to_numpy()
    np.testing.assert_allclose(sc.iloc[0][["f1", "f2"]].to_numpy(dtype=float),
                               np.linalg.solve(lam.T @ lam, lam.T @ u), rtol=1e-8)


def test_latent_regression_needs_a_factor_analytic_fit(fits, tmp_path):
    with pytest.raises(ValueError, match="not factor-analytic"):
        latent_regression(fits[HET], tmp_path / "lr.png")


def test_a_converged_fa_model_that_is_not_selected_still_has_its_latent_regression(fits, tmp_path):
    result = report.write_report(tmp_path, fits, selected=HET, figures=True)
    assert "latent_regression.png" in result["files"] and "loadings.csv" not in result["files"]
    assert not (tmp_path / "loadings.csv").exists()
    md = (tmp_path / "report.md").read_text()
    assert "### Factor-analytic ΣG" not in md
    assert f"Latent regression on factor 1 ({FA})" in md
    assert f"Genetic correlations between environments ({FA}); environments ordered by clustering" in md


def test_a_fit_that_is_not_factor_analytic_writes_none_of_it(fits, tmp_path):
    # a folder that held an FA report, then one without: no stale files left
    report.write_report(tmp_path, {FA: fits[FA]}, figures=True)
    assert (tmp_path / "loadings.csv").exists() and (tmp_path / "latent_regression.png").exists()
    result = report.write_report(tmp_path, {HET: fits[HET]}, figures=True)
    for name in ("loadings.csv", "latent_regression.png", "environment_correlations.png"):
        assert not (tmp_path / name).exists(), name
        assert name not in result["files"]
    assert "loadings" not in report.tables(fits[HET])
    md = (tmp_path / "report.md").read_text()
    assert "Factor-analytic" not in md and "latent_regression" not in md and "loadings" not in md
    assert "ordered by clustering" not in md
