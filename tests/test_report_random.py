"""hetvc.report with random terms beyond the genetic one (``hetvc.fit(..., random=[...])``):
variance_partition.csv (every model, when some model has random terms; shares of G, the random
terms and E summing to 1 per model × environment × trait, G's share the h²) and
random_effects.csv (the selected model's BLUPs of every level); the terminal's and report.md's
variance partition, report.md's h² definition with every random term in the denominator and
the random terms in the model description; summary.json's ``random`` and
``variance_partition``; a random term on the boundary described as itself, not as ΣE; and
for fits without random terms, none of it (and no stale file of an earlier run left behind)."""

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc import report
from hetvc.report.text import fit_text
from reference import make_problem

TRAITS = ["y1", "y2"]
WITH, WITHOUT = "homogeneous/homogeneous+env:block", "homogeneous/homogeneous"
PARTITION_COLUMNS = ["model", "env", "trait", "term", "variance", "share", "se", "se_note"]


@pytest.fixture(scope="module")
def problem():
    data, K, *_ = make_problem(7, n_geno=30, n_env=2, n_traits=2, genetic="homogeneous", reps=3,
                               blocks=3, block_var=0.4)
    return data, K


@pytest.fixture(scope="module")
def fits(problem):
    data, K = problem
    kw = dict(env="env", genetic="homogeneous")
    return {WITH: hetvc.fit(data, K, TRAITS, random=["env:block"], **kw),
            WITHOUT: hetvc.fit(data, K, TRAITS, **kw)}


@pytest.fixture(scope="module")
def written(fits, tmp_path_factory):
    out = tmp_path_factory.mktemp("with_random")
    result = report.write_report(out, fits, figures=False)
    return out, result


def test_the_fits_are_what_the_tests_assume(fits):
    assert all(f.converged for f in fits.values())
    assert fits[WITH].random_terms == ["env:block"] and not fits[WITHOUT].random
    assert report.select(fits) == WITH  # the blocks have an effect: the model with them wins


def test_variance_partition_csv_stacks_every_model_and_shares_sum_to_one(fits, written):
    out, result = written
    part = pd.read_csv(out / "variance_partition.csv", keep_default_na=False, na_values=[""])
    assert list(part.columns) == PARTITION_COLUMNS
    assert "variance_partition.csv" in result["files"]
    assert sorted(part["model"].unique()) == sorted(fits)
    terms = part.groupby("model")["term"].agg(lambda t: sorted(set(t)))
    assert terms[WITH] == sorted(["G", "env:block", "E"]) and terms[WITHOUT] == ["E", "G"]
    sums = part.groupby(["model", "env", "trait"])["share"].sum()
    assert len(sums) == 2 * 2 * 2  # models × environments × traits
    np.testing.assert_allclose(sums.to_numpy(), 1.0, atol=1e-9)
    assert (part["share"] > 0).all() and np.isfinite(part["se"]).all()
    # G's share is the h² of heritability.csv, model by model
    h2 = pd.read_csv(out / "heritability.csv").query("env != 'pooled'")
    g = part[part["term"] == "G"].merge(h2, on=["model", "env", "trait"])
    assert len(g) == 8
    np.testing.assert_allclose(g["share"], g["h2"], rtol=1e-9)
    # and each model's rows are its fit's table
    for name, f in fits.items():
        mine = part[part["model"] == name].reset_index(drop=True)
        np.testing.assert_allclose(mine["variance"], f.variance_partition()["variance"], rtol=1e-9)


def test_random_effects_csv_is_the_selected_models_blups_of_every_level(fits, written, problem):
    out, result = written
    assert result["selected"] == WITH
    re_ = pd.read_csv(out / "random_effects.csv")
    assert list(re_.columns) == ["model", "term", "level", "env", "trait", "blup", "pev", "n_obs"]
    assert "random_effects.csv" in result["files"]
    assert set(re_["model"]) == {WITH} and set(re_["term"]) == {"env:block"}
    data, _ = problem
    levels = {f"{e}:{b}" for e, b in zip(data["env"], data["block"])}
    assert set(re_["level"]) == levels
    assert len(re_) == len(levels) * 2  # levels × traits: a shared structure has one effect per level
    assert re_["env"].isna().all() and (re_["n_obs"] > 0).all()
    expected = fits[WITH].random_effects()
    np.testing.assert_allclose(re_["blup"], expected["blup"], rtol=1e-9)
    assert (re_["pev"] > 0).all()


def test_report_md_shows_the_partition_and_says_what_h2_divides_by(fits, written):
    out, _ = written
    md = (out / "report.md").read_text()
    section = md.split(f"## Selected model: {WITH}", 1)[1].split("\n## ", 1)[0]
    assert "- random terms beyond the genetic one: `env:block` (homogeneous)" in section
    assert "h²_il = Σg_l[i,i] / (Σg_l[i,i] + Σ_t Σt_l[i,i] + ΣE_l[i,i])" in section
    part_md = section.split("### Variance partition (share of the phenotypic variance, SE)", 1)[1]
    assert ("h² = σ²_G / (σ²_G + Σ σ²_t + σ²_E), every random term (σ²_env:block) entering the "
            "denominator") in part_md
    # the wide table: a row per term, a column per trait × environment, share (SE)
    rows = [r for r in part_md.splitlines() if r.startswith("|")]
    assert rows[0] == "| term | y1 E1 | y1 E2 | y2 E1 | y2 E2 |"
    table = {r.split("|")[1].strip(): [c.strip() for c in r.split("|")[2:-1]] for r in rows[2:]}
    assert list(table) == ["G", "env:block", "E"]
    vp = fits[WITH].variance_partition().set_index(["term", "env", "trait"])
    for term, cells in table.items():
        for cell, (t, e) in zip(cells, [("y1", "E1"), ("y1", "E2"), ("y2", "E1"), ("y2", "E2")]):
            r = vp.loc[(term, e, t)]
            assert cell == f"{r['share']:.2f} ({r['se']:.2f})"
    files = md.split("## Files", 1)[1]
    assert "`variance_partition.csv` (every model)" in files
    assert "`random_effects.csv` (selected model)" in files


def test_other_models_name_their_random_terms(fits):
    md = report.markdown(fits, selected=WITHOUT)
    assert f"## Selected model: {WITHOUT}" in md
    other = md.split("## Other models", 1)[1]
    assert f"- **{WITH}**" in other and "; random: env:block" in other
    # the selected model has none: no partition section, but the table of every model is there
    assert "### Variance partition" not in md
    assert "random terms beyond the genetic one" not in md
    files = md.split("## Files", 1)[1]
    assert "`variance_partition.csv` (every model)" in files and "random_effects.csv" not in files
    assert "variance_partition" in report.tables(fits, WITHOUT)
    assert "random_effects" not in report.tables(fits, WITHOUT)


def test_summary_json_has_random_and_variance_partition(fits, written):
    out, result = written
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk == result
    models = {m["model"]: m for m in result["models"]}
    assert tuple(models[WITH]) == report.MODEL_KEYS + report.RANDOM_MODEL_KEYS
    assert tuple(models[WITHOUT]) == report.MODEL_KEYS
    assert models[WITH]["random"] == [{"name": "env:block", "structure": "homogeneous", "kinship": False}]
    vp = pd.DataFrame(models[WITH]["variance_partition"])
    assert set(vp.columns) >= {"env", "trait", "term", "variance", "share", "se"}
    np.testing.assert_allclose(vp.groupby(["env", "trait"])["share"].sum(), 1.0, atol=1e-9)


def test_terminal_shows_the_partition_after_the_variance_components(fits, problem):
    text = fit_text(fits[WITH])
    vc, part, h2 = (text.index("\nVariance components"),
                    text.index("\nVariance partition (share of the phenotypic variance)"),
                    text.index("\nHeritability per environment"))
    assert vc < part < h2
    table = text[part:h2].strip().splitlines()[1:]
    assert table[0].split() == ["env", "trait", "term", "variance", "share", "se"]
    # grouped by environment × trait, the terms of each together in the fit's order
    assert [ln.split()[:3] for ln in table[1:4]] == [["E1", "y1", "G"], ["E1", "y1", "env:block"],
                                                     ["E1", "y1", "E"]]
    assert len(table) == 1 + 3 * 2 * 2
    clipped = fit_text(fits[WITH], max_rows=3)
    assert ("... 9 more rows: run with --out DIR to get them all in DIR/variance_partition.csv"
            in clipped)
    assert "Variance partition" not in fit_text(fits[WITHOUT])
    # one environment: no env column
    data, K = problem
    one = hetvc.fit(data[data["env"] == "E1"], K, ["y1"], genetic="homogeneous", random=["block"])
    text = fit_text(one)
    table = text.split("\nVariance partition (share of the phenotypic variance)\n", 1)[1].splitlines()
    assert table[0].split() == ["trait", "term", "variance", "share", "se"]
    assert [ln.split()[:2] for ln in table[1:4]] == [["y1", "G"], ["y1", "block"], ["y1", "E"]]


def test_a_random_term_on_the_boundary_is_described_as_itself(fits):
    f = dataclasses.replace(fits[WITH], boundary=["env:block"])
    md = report.markdown(f)
    assert "- on the boundary (a singular covariance block): Σenv:block (shared by all environments)" in md
    assert "ΣE (" not in md


def test_without_random_terms_nothing_new_is_written(fits, tmp_path):
    # a folder that held a report with random terms, then one without: no stale files left
    report.write_report(tmp_path, fits, figures=False)
    assert (tmp_path / "variance_partition.csv").exists() and (tmp_path / "random_effects.csv").exists()
    result = report.write_report(tmp_path, {WITHOUT: fits[WITHOUT]}, figures=False)
    assert not (tmp_path / "variance_partition.csv").exists()
    assert not (tmp_path / "random_effects.csv").exists()
    assert not any("variance_partition" in p or "random_effects" in p for p in result["files"])
    assert set(report.tables(fits[WITHOUT])) == {"comparison", "variance_components", "heritability",
                                                 "genetic_correlations", "blups", "blues", "fitted"}
    md = (tmp_path / "report.md").read_text()
    assert "Variance partition" not in md and "random" not in md.lower().replace("random_", "")
    assert "h²_il = Σg_l[i,i] / (Σg_l[i,i] + ΣE_l[i,i]); pooled" in md
    assert tuple(result["models"][0]) == report.MODEL_KEYS
