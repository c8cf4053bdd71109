"""End-to-end tests of `hetvc fit` and `hetvc example` (click's CliRunner, no subprocess).

The bundled SoyNAM example is fitted once per session (two models, dense engine); a small
simulated data set covers the readers, --genotypes, --fixed, the JSON schema and exit codes.
"""

import json
import re

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hetvc
from hetvc.cli import main
from hetvc.examples import example_path, load_example
from hetvc.report import MODEL_KEYS, SUMMARY_KEYS, fit_text

TABLES = {
    "comparison.csv": {"model", "genetic", "residual", "k", "logLik", "AIC", "BIC", "dAIC", "dBIC", "lrt_p"},
    "variance_components.csv": {"model", "name", "component", "estimate", "se"},
    "heritability.csv": {"model", "env", "trait", "h2", "se"},
    "genetic_correlations.csv": {"model", "between", "env1", "env2", "trait1", "trait2", "r", "se"},
    "blups.csv": {"model", "id", "env", "trait", "blup", "pev", "n_obs"},
    "blues.csv": {"model", "effect", "estimate", "se"},
    "fitted.csv": {"model", "id", "env", "trait", "y", "fitted", "residual"},
}
FIGURES = ("phenotypic_correlations.png", "genetic_correlations.png", "heritability.png", "observed_fitted.png")
COMPARISON_KEYS = {"model", "genetic", "residual", "k", "logLik", "AIC", "BIC", "dAIC", "dBIC",
                   "converged", "lrt_vs", "lrt_stat", "lrt_df", "lrt_p"}


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread: these small dense problems are several times faster with it on a busy
    2-core machine.  (numpy/scipy must be loaded before the limit is set, or it reaches no
    library.)"""
    import scipy.linalg  # noqa: F401
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        yield


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width > 200 and height > 150 and len(data) > 5000, (path, width, height, len(data))


def assert_outputs(out, models, figures=True):
    """Every output file is present, loadable and consistent with the fits."""
    for name, columns in TABLES.items():
        df = pd.read_csv(out / name)
        assert len(df) > 0, name
        assert columns <= set(df.columns), (name, columns - set(df.columns))
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["model"]) == models
    best = hetvc.load(out / "fit.json")
    assert f"{best.genetic}/{best.residual}" in models
    if len(models) > 1:
        for m in models:
            f = hetvc.load(out / "fits" / f"{m.replace('/', '-')}.json")
            row = comp[comp["model"] == m].iloc[0]
            assert f.loglik == pytest.approx(row["logLik"], rel=1e-12)
            assert f.n_params == row["k"]
    blups = pd.read_csv(out / "blups.csv", dtype={"id": str})
    # every genotype in K, in every environment, for every trait
    assert len(blups) == len(best.ids) * len(best.envs) * len(best.traits)
    assert blups["pev"].notna().all() and (blups["pev"] >= -1e-8).all()
    report = (out / "report.md").read_text()
    assert "## Model comparison" in report and "Heritability per environment" in report
    for m in models:
        assert f"| {m} |" in report
    summary = json.loads((out / "summary.json").read_text())
    assert set(SUMMARY_KEYS) <= set(summary)
    for f in summary["files"]:
        assert (out / f).exists(), f
    if figures:
        for name in FIGURES:
            assert_png(out / name)
            assert f"({name})" in report
    return best, summary


# -- the bundled example ---------------------------------------------------------------------
def test_load_example():
    pheno, K, roles = load_example()
    assert roles == {"traits": ["yield", "height"], "env": "env", "id": "genotype"}
    assert K.shape == (180, 180) and np.diag(K).mean() == pytest.approx(1.0)
    assert set(pheno["genotype"]) < set(K.index)
    assert sorted(pheno["env"].unique()) == ["IL_2012", "IN_2012", "NE_2012"]
    assert pheno[roles["traits"]].notna().sum().sum() == 984  # N observed values
    folder = example_path()
    for name in ("README.md", "COPYING", "pheno.csv", "kinship.csv", "markers.csv.gz"):
        assert (folder / name).is_file(), name
    assert "GPL-3" in (folder / "README.md").read_text()


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("example") / "report"
    res = run("example", "--out", out, "--compare", "homogeneous,heterogeneous")
    return out, res


def test_example_end_to_end(example_run):
    out, res = example_run
    assert res.exit_code == 0, res.output
    best, summary = assert_outputs(out, ["homogeneous/homogeneous", "heterogeneous/homogeneous"])
    # hetvc.load(fit.json) reproduces the summary printed by the command
    assert fit_text(best) in res.stdout
    assert "Model comparison" in res.stdout and "selected" in res.stdout
    # data quirks are reported: repeated plots, missing values, untested genotypes, singular K
    notes = " ".join(summary["data"]["notes"])
    for word in ("repeated plots", "missing trait values", "no records", "singular"):
        assert word in notes, word
    blups = pd.read_csv(out / "blups.csv", dtype={"id": str})
    assert (blups.groupby("id")["n_obs"].sum() == 0).sum() == 20  # untested lines predicted


def test_example_table2_matches_api(example_run):
    """The CLI fits are the library's fits: same ℓ as hetvc.fit on load_example()."""
    out, _ = example_run
    pheno, K, roles = load_example()
    direct = hetvc.fit(pheno, K, genetic="homogeneous", residual="homogeneous", pev=False, **roles)
    comp = pd.read_csv(out / "comparison.csv").set_index("model")
    assert comp.loc["homogeneous/homogeneous", "logLik"] == pytest.approx(direct.loglik, abs=1e-6)
    assert comp.loc["heterogeneous/homogeneous", "k"] == 12 and comp.loc["homogeneous/homogeneous", "k"] == 6


# -- a small simulated trial --------------------------------------------------------------------
@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    from hetvc.simulate import simulate

    folder = tmp_path_factory.mktemp("sim")
    s = simulate(n=90, traits=2, locations=3, snps=150, h2=0.5, w=0.5, rho=0.5, design="full",
                 missing=0.03, seed=11)
    s.to_dir(folder)
    pheno = pd.read_csv(folder / "pheno.csv", dtype={"id": str})
    pheno["block"] = pheno["env"] + "_" + (pheno.index % 2).astype(str)  # nested in env
    pheno.to_csv(folder / "pheno.csv", index=False)
    s.genotypes.rename_axis("id").reset_index().to_csv(folder / "markers.csv", index=False)
    return folder


def fit_args(sim, *extra):
    return ("fit", sim / "pheno.csv", "--kinship", sim / "kinship.csv", "--traits", "t1,t2",
            "--env", "env", "--id", "id", *extra)


def test_fit_compare_with_residual_structures(sim, tmp_path):
    out = tmp_path / "out"
    res = run(*fit_args(sim, "--compare", "homogeneous,heterogeneous/heterogeneous,unstructured",
                        "--out", out))
    assert res.exit_code == 0, res.output
    models = ["homogeneous/homogeneous", "heterogeneous/heterogeneous", "unstructured/homogeneous"]
    best, _ = assert_outputs(out, models)
    assert fit_text(best) in res.stdout
    assert_png(out / "environment_correlations.png")  # an unstructured model was fitted
    comp = pd.read_csv(out / "comparison.csv").set_index("model")
    # homogeneous ⊂ unstructured: the LRT is there; heterogeneous/heterogeneous is not nested in it
    assert comp.loc["unstructured/homogeneous", "lrt_vs"] == "homogeneous/homogeneous"
    assert pd.isna(comp.loc["heterogeneous/heterogeneous", "lrt_vs"])


def test_json_schema_is_stable(sim):
    res = run(*fit_args(sim, "--genetic", "heterogeneous", "--json", "--quiet"))
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)  # stdout holds only the JSON
    assert tuple(summary) == SUMMARY_KEYS
    assert summary["format"] == "hetvc-summary/1" and summary["converged"] is True
    assert summary["selected"] == "heterogeneous/homogeneous" and summary["out"] is None
    (model,) = summary["models"]
    assert tuple(model) == MODEL_KEYS
    assert model["n_params"] == 3 * 3 + 3 and model["engine"] in ("dense", "spectral")
    assert {"name", "estimate", "se"} <= set(model["variance_components"][0])
    # (an se_note column, why an SE is not available, may come with the SEs)
    for table, cols in (("heritability", {"env", "trait", "h2", "se"}), ("pooled_heritability", {"trait", "h2", "se"}),
                        ("genetic_correlations", {"between", "env1", "env2", "trait1", "trait2", "r", "se"})):
        assert set(model[table][0]) - {"se_note"} == cols, table
    assert set(summary["comparison"][0]) - {"AICc", "dAICc"} == COMPARISON_KEYS
    for key in ("traits", "env", "id", "method", "n_records", "n_phenotyped", "n_kinship",
                "kinship", "notes", "command", "pheno"):
        assert key in summary["data"], key
    assert summary["data"]["traits"] == ["t1", "t2"]


def test_readers_agree(sim, tmp_path):
    """CSV, TSV, semicolon with decimal commas and Parquet give the same fit; the GRM built
    from --genotypes equals --kinship with the same K."""
    pheno = pd.read_csv(sim / "pheno.csv", dtype={"id": str})
    pheno.to_csv(tmp_path / "p.tsv", sep="\t", index=False)
    pheno.to_csv(tmp_path / "p.txt", sep=";", decimal=",", index=False)
    pheno.to_parquet(tmp_path / "p.parquet")
    base = ["--kinship", sim / "kinship.csv", "--traits", "t1,t2", "--env", "env", "--id", "id",
            "--genetic", "homogeneous", "--json", "--quiet"]
    logliks = []
    for path in (sim / "pheno.csv", tmp_path / "p.tsv", tmp_path / "p.txt", tmp_path / "p.parquet"):
        res = run("fit", path, *base)
        assert res.exit_code == 0, (path, res.output)
        logliks.append(json.loads(res.stdout)["models"][0]["loglik"])
    assert np.allclose(logliks, logliks[0], rtol=0, atol=1e-8), logliks
    res = run("fit", sim / "pheno.csv", "--genotypes", sim / "markers.csv", *base[2:])
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["data"]["genotypes"].endswith("markers.csv")
    assert s["models"][0]["loglik"] == pytest.approx(logliks[0], abs=1e-6)


def test_nested_fixed_factor_is_handled(sim):
    """A blocking factor nested in environments (like SoyNAM's set_env) is aliased with the
    environment means: the aliased columns are dropped with a note instead of an error."""
    res = run(*fit_args(sim, "--genetic", "homogeneous", "--fixed", "~ block", "--json", "--quiet"))
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert any("aliased" in n for n in s["data"]["notes"])
    assert s["data"]["fixed"] == "~ block"


def test_no_convergence_exits_3_and_still_writes(sim, tmp_path):
    out = tmp_path / "out"
    res = run(*fit_args(sim, "--genetic", "unstructured", "--max-iter", "1", "--no-figures", "--out", out))
    assert res.exit_code == 3, res.output
    assert "did not converge" in res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["converged"] is False and s["models"][0]["converged"] is False
    assert hetvc.load(out / "fit.json").converged is False


def test_trait_missing_in_a_whole_environment(sim, tmp_path):
    """--compare skips the structures that need the trait's variance in that environment (and
    says so); asking for one of them alone is a one-line input error."""
    pheno = pd.read_csv(sim / "pheno.csv", dtype={"id": str})
    pheno.loc[pheno["env"] == "L2", "t2"] = np.nan
    pheno.to_csv(tmp_path / "p.csv", index=False)
    base = ("fit", tmp_path / "p.csv", "--kinship", sim / "kinship.csv", "--traits", "t1,t2", "--env", "env")
    res = run(*base, "--compare", "all", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert [m["model"] for m in s["models"]] == ["homogeneous/homogeneous"]
    assert any("not fitted" in n for n in s["data"]["notes"])
    assert s["data"]["empty_cells"] == [["t2", "L2"]]
    res = run(*base, "--genetic", "heterogeneous")
    assert res.exit_code == 2 and "no values in environment 'L2'" in res.output


@pytest.mark.parametrize("args, message", [
    (("--traits", "t1,nope"), "'nope' not in the data"),
    (("--traits", "t1", "--compare", "homogeneous,bogus"), "unknown genetic structure 'bogus'"),
    (("--traits", "t1", "--compare", "homogeneous/sometimes"), "unknown residual structure"),
    (("--traits", "t1", "--genotypes", "markers.csv"), "exactly one of --kinship"),
])
def test_bad_input_exits_2(sim, args, message):
    args = tuple(sim / a if a == "markers.csv" else a for a in args)
    res = run("fit", sim / "pheno.csv", "--kinship", sim / "kinship.csv", "--env", "env", "--id", "id", *args)
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output


def test_bad_files_exit_2(sim, tmp_path):
    res = run("fit", tmp_path / "missing.csv", "--kinship", sim / "kinship.csv", "--traits", "t1")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = run("fit", sim / "pheno.csv", "--traits", "t1", "--env", "env")
    assert res.exit_code == 2 and "exactly one of --kinship" in res.output
    K = pd.read_csv(sim / "kinship.csv", index_col=0, dtype={"id": str})
    K.iloc[:5, :5].to_csv(tmp_path / "small.csv")  # most ids absent from K
    res = run("fit", sim / "pheno.csv", "--kinship", tmp_path / "small.csv", "--traits", "t1", "--env", "env")
    assert res.exit_code == 2 and "not in the kinship" in res.output


# -- real data from ../shared (skipped when absent) ------------------------------------------------
def test_drops_maize_subset(shared_data, tmp_path):
    """DROPS maize: a numeric-looking id ('11430') stays text, the inbred GRM (diagonal ≈ 2)
    is rescaled, the balanced design goes to the fast engine."""
    src = shared_data / "drops_maize"
    pheno = pd.read_csv(src / "pheno_long.csv", dtype={"genotype": str})
    pheno[pheno["env"].isin(["Gai12W", "Kar12W", "Ner12R"])].to_csv(tmp_path / "p.csv", index=False)
    res = run("fit", tmp_path / "p.csv", "--kinship", src / "grm_vanraden.csv", "--traits",
              "grain_yield,plant_height", "--env", "env", "--id", "genotype", "--genetic", "heterogeneous",
              "--json", "--quiet")
    assert res.exit_code == 0, res.output
    s = json.loads(res.stdout)
    assert s["data"]["kinship_mean_diagonal"] == pytest.approx(1.97, abs=0.02)
    assert any("mean diagonal" in n for n in s["data"]["notes"])
    h2 = pd.DataFrame(s["models"][0]["heritability"])
    assert h2["h2"].between(0, 1).all() and len(h2) == 6


def test_no_pev_writes_blups_without_pev(sim, tmp_path):
    out = tmp_path / "out"
    res = run(*fit_args(sim, "--no-pev", "--quiet", "--no-figures", "--out", out))
    assert res.exit_code == 0, res.output
    blups = pd.read_csv(out / "blups.csv")
    assert "pev" not in blups.columns and blups["blup"].notna().all()
    with_pev = run(*fit_args(sim, "--quiet", "--no-figures", "--out", tmp_path / "full"))
    assert with_pev.exit_code == 0, with_pev.output
    full = pd.read_csv(tmp_path / "full" / "blups.csv")
    assert (full["pev"] > 0).all()
    np.testing.assert_array_equal(full["blup"].to_numpy(), blups["blup"].to_numpy())


def test_singularity_note_without_an_eigendecomposition_of_a_large_k():
    from hetvc.kinship import kinship_singularity

    rng = np.random.default_rng(0)
    for q in (300, 1600):  # eigenvalues below 1,500 genotypes, the O(q²) row-sum test above
        X = rng.binomial(2, 0.3, (q, 40)).astype(float)
        Z = X - X.mean(0)
        K = Z @ Z.T / 40
        # rank 40 is the markers' doing, not the centring's (which costs one)
        assert kinship_singularity(K) == ("rank 40 of 300: its rows sum to zero, as in a GRM of centred "
                                   "genotypes, whose rank is at most the number of markers" if q == 300
                                   else "its rows sum to zero, as in a GRM of centred genotypes")
        assert kinship_singularity(K, n_markers=40) == (
            "rank 40 of 300: a GRM of 40 markers has rank at most 40" if q == 300
            else "a GRM of 40 markers has rank at most 40, below its 1600 rows")
        assert kinship_singularity(K + 0.1 * np.eye(q)) == ""


# -- notes that say what is true in context ------------------------------------------------------
def test_mean_diagonal_note_names_inbred_lines_only_near_2(sim, tmp_path):
    from hetvc.cli.fit import load_kinship

    K = pd.read_csv(sim / "kinship.csv", index_col=0, dtype={"id": str})
    K.index = K.index.astype(str)
    for factor, inbred in ((0.2, False), (2.0, True), (0.7, False)):
        path = tmp_path / f"K{factor}.csv"
        (K * factor / np.diag(K).mean()).to_csv(path)
        _, facts, notes = load_kinship(path, None, "standardized", None, None, "mean-diag")
        (note,) = [n for n in notes if "mean diagonal" in n]
        assert f"({factor:.4g})" in note
        assert ("inbred lines have a GRM diagonal near 2" in note) == inbred, note


def test_rank_note_says_what_limits_the_rank(sim, tmp_path):
    from hetvc.cli.fit import load_kinship

    markers = pd.read_csv(sim / "markers.csv", dtype={"id": str})
    few = markers.iloc[:, :21]  # id + 20 SNPs for 90 genotypes
    few.to_csv(tmp_path / "few.csv", index=False)
    _, _, notes = load_kinship(None, tmp_path / "few.csv", "standardized", None, None, "mean-diag")
    (note,) = [n for n in notes if n.startswith("K is singular")]
    m = re.search(r"rank (\d+) of 90: a GRM of (\d+) markers has rank at most \2", note)
    assert m and int(m.group(1)) <= int(m.group(2)) <= 20, note
    assert "centred" not in note
    # more markers than genotypes: the centring alone costs one rank
    _, _, notes = load_kinship(None, sim / "markers.csv", "standardized", None, None, "mean-diag")
    (note,) = [n for n in notes if n.startswith("K is singular")]
    assert "rank 89 of 90: its rows sum to zero, as in a GRM of centred genotypes" in note


def test_one_environment_names_models_by_what_was_fitted(sim, tmp_path):
    out = tmp_path / "out"
    res = run("fit", sim / "pheno.csv", "--kinship", sim / "kinship.csv", "--traits", "t1",
              "--compare", "all", "--no-figures", "--no-pev", "--out", out)
    assert res.exit_code == 0, res.output
    assert "[1/1] homogeneous/homogeneous: logLik" in res.stderr
    assert "hetvc: homogeneous/homogeneous it 0" in res.stderr
    assert "heterogeneous/" not in res.stderr and "unstructured/" not in res.stderr
    s = json.loads((out / "summary.json").read_text())
    assert [m["model"] for m in s["models"]] == ["homogeneous/homogeneous"]
    (note,) = [n for n in s["data"]["notes"] if n.startswith("one environment")]
    assert "no --env" in note and "fitted as homogeneous/homogeneous (once)" in note
    report = (out / "report.md").read_text()
    assert "| heterogeneous/homogeneous |" not in report
    assert "## Selected model: homogeneous/homogeneous" in report
    # the single default model (heterogeneous) without --env is the homogeneous one, and says so
    res = run("fit", sim / "pheno.csv", "--kinship", sim / "kinship.csv", "--traits", "t1", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["selected"] == "homogeneous/homogeneous"
    assert "[1/1] homogeneous/homogeneous:" in res.stderr


def test_jitter_hint_is_the_cli_option(sim, tmp_path):
    K = pd.read_csv(sim / "kinship.csv", index_col=0, dtype={"id": str})
    K.iloc[0, 1] = K.iloc[1, 0] = 5.0  # not positive semi-definite
    K.to_csv(tmp_path / "bad.csv")
    base = ("fit", sim / "pheno.csv", "--kinship", tmp_path / "bad.csv", "--traits", "t1", "--env", "env",
            "--genetic", "homogeneous")
    res = run(*base)
    assert res.exit_code == 2, res.output
    assert "pass --jitter 0.01 to add a ridge" in res.output and "jitter=" not in res.output
    res = run(*base, "--jitter", "0.01", "--json", "--quiet")
    assert res.exit_code == 0, res.output
    (note,) = [n for n in json.loads(res.stdout)["data"]["notes"] if "not positive semi-definite" in n]
    assert "(--jitter 0.01 × mean diagonal)" in note and "jitter=" not in note
    with pytest.raises(hetvc.errors.InputError, match=r"pass jitter=0\.01"):  # Python keeps its hint
        hetvc.check_kinship(K)


def test_kinship_scale_centred_and_the_note_on_a_k_that_is_not_centred(sim, tmp_path):
    """bmtme's GRM has mean(K)/mean(diag K) = 0.32: the variance among its lines is 0.68·ΣG,
    and h² = ΣG/(ΣG+ΣE) overstates their share.  --kinship-scale centred divides K by
    mean(diag K) − mean(K) (Legarra 2016)."""
    from hetvc.cli.fit import load_kinship

    K = pd.read_csv(sim / "kinship.csv", index_col=0, dtype={"id": str})
    K.index = K.index.astype(str)
    K = K / np.diag(K).mean()
    assert abs(K.to_numpy().mean()) < 0.05  # a GRM of centred genotypes: no note
    _, _, notes = load_kinship(sim / "kinship.csv", None, "standardized", None, None, "mean-diag")
    assert not [n for n in notes if "not centred" in n]
    shifted = 0.5 * (K + 0.4)  # mean diagonal 0.7, mean 0.2 + 0.5·mean(K)
    shifted.to_csv(tmp_path / "shifted.csv")
    ratio = shifted.to_numpy().mean() / np.diag(shifted).mean()
    Ks, facts, notes = load_kinship(tmp_path / "shifted.csv", None, "standardized", None, None, "mean-diag")
    (note,) = [n for n in notes if "not centred" in n]
    assert f"mean(K)/mean(diag K) = {ratio:.2f}" in note and f"= {1 - ratio:.2f}·ΣG" in note
    assert "overstates" in note and "--kinship-scale centred" in note
    assert facts["kinship_scale"] == pytest.approx(1 / 0.7)
    # centred: the genotypes' variance, mean(diag K) − mean(K), is 1 after scaling
    Kc, facts, notes = load_kinship(tmp_path / "shifted.csv", None, "standardized", None, None, "centred")
    values = Kc.to_numpy()
    assert np.diag(values).mean() - values.mean() == pytest.approx(1.0)
    assert facts["kinship_scaling"] == "centred" and not [n for n in notes if "not centred" in n]
    (note,) = [n for n in notes if "mean(diag K) − mean(K)" in n]
    assert "Legarra 2016" in note
    res = run(*fit_args(sim, "--genetic", "homogeneous", "--kinship-scale", "centred", "--json", "--quiet"))
    assert res.exit_code == 0, res.output
    assert "--kinship-scale centred" in json.loads(res.stdout)["data"]["command"]


def test_a_mean_diagonal_near_1_prints_its_digits(sim, tmp_path):
    from hetvc.cli.fit import load_kinship

    K = pd.read_csv(sim / "kinship.csv", index_col=0, dtype={"id": str})
    K.index = K.index.astype(str)
    for diag, shown in ((1.0002, "(1.0002)"), (1 + 3e-7, None)):
        path = tmp_path / f"K{diag}.csv"
        (K * diag / np.diag(K).mean()).to_csv(path)
        _, facts, notes = load_kinship(path, None, "standardized", None, None, "mean-diag")
        found = [n for n in notes if "divided by its mean diagonal" in n]
        assert (found[0].split(" so that")[0].endswith(shown) if shown else not found), found


def test_threads_limit_blas_in_the_fits(sim, monkeypatch):
    """--threads N (default 1) runs the fits under threadpoolctl's limit: OpenBLAS's waiting
    threads made a 0.3 s fit take 63 s on a shared 2-core machine."""
    from threadpoolctl import threadpool_info, threadpool_limits

    real, seen = hetvc.fit_model, []

    def blas():
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    def fit(*args, **kwargs):
        seen.append(blas())
        return real(*args, **kwargs)

    monkeypatch.setattr(hetvc, "fit_model", fit)
    base = fit_args(sim, "--genetic", "homogeneous", "--json", "--quiet")
    with threadpool_limits(2):  # the process may use more: the fit still gets 1
        if blas() != {2}:
            pytest.skip("BLAS cannot run 2 threads here")
        assert run(*base).exit_code == 0
        assert blas() == {2}  # restored after the fits
    with threadpool_limits(1):
        res = run(*base, "--threads", "2")
    assert res.exit_code == 0, res.output
    assert seen == [{1}, {2}]
    assert "--threads" in run("fit", "--help").output and "--threads" in run("example", "--help").output


def test_records_without_traits_are_not_counted_as_phenotyped():
    """gryphon lists 230 animals with neither BWT nor TARSUS: they are not phenotyped
    genotypes, their absent values are not 'missing trait values' of records that are used."""
    from hetvc import describe_data

    ids = [f"a{i}" for i in range(6)]
    K = pd.DataFrame(np.eye(6), index=ids, columns=ids)
    data = pd.DataFrame({"id": ids, "y1": [1.0, 2.0, 3.0, np.nan, np.nan, np.nan],
                         "y2": [1.0, np.nan, 2.0, 5.0, np.nan, np.nan]})
    facts, notes = describe_data(data, K, ["y1", "y2"], None, "id")
    assert facts["n_phenotyped"] == 4
    assert any("2 genotype(s) in K have no records" in n for n in notes)
    assert any("missing trait values (y1: 1, y2: 1)" in n for n in notes)
