"""Issue 17: trials without markers or pedigree (K = identity), factors coded as numbers, wide
tables."""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hetvc
from hetvc.cli import main
from hetvc.fitting import IDENTITY_NOTE, identity_kinship


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def replicated_trial(seed=3, n=25, envs=("E1", "E2"), reps=2):
    """Genotypes in every environment with ``reps`` plots each; two traits; numeric row/col."""
    rng = np.random.default_rng(seed)
    ids = [f"g{k:02d}" for k in range(n)]
    g = dict(zip(ids, rng.normal(size=(n, 2))))
    rows = []
    for e, env in enumerate(envs):
        for r in range(reps):
            for k, i in enumerate(ids):
                y = g[i] + rng.normal(scale=0.8, size=2) + [e, 2 * e]
                rows.append(dict(id=i, env=env, rep=r + 1, row=(k % 5) + 1, col=k // 5 + 1,
                                 y1=y[0], y2=y[1]))
    return pd.DataFrame(rows)


def same_fit(a, b, tol=1e-10):
    assert a.loglik == pytest.approx(b.loglik, abs=tol, rel=tol)
    np.testing.assert_allclose(a.theta, b.theta, atol=tol, rtol=tol)


# -- item 2: K = identity ---------------------------------------------------------------------
def test_identity_kinship_labels_ids_of_records_with_a_trait():
    data = pd.DataFrame(dict(id=["b", "a", "b", "c"], y=[1.0, 2.0, 3.0, np.nan]))
    K = identity_kinship(data, "id", ["y"])
    assert list(K.index) == list(K.columns) == ["b", "a"]
    np.testing.assert_array_equal(K.to_numpy(), np.eye(2))
    assert list(identity_kinship(data, "id").index) == ["b", "a", "c"]
    with pytest.raises(hetvc.InputError, match="'genotype' not in the data"):
        identity_kinship(data, "genotype")


def test_k_none_equals_an_explicit_identity():
    data = replicated_trial()
    ids = list(pd.unique(data["id"]))
    I = pd.DataFrame(np.eye(len(ids)), index=ids, columns=ids)
    a = hetvc.fit(data, None, ["y1", "y2"], env="env")
    b = hetvc.fit(data, I, ["y1", "y2"], env="env")
    same_fit(a, b)
    assert IDENTITY_NOTE in a.notes and IDENTITY_NOTE not in b.notes
    assert "h² is broad-sense, at the level of a single record (plot)" in IDENTITY_NOTE
    assert not any("single record per trait" in n for n in a.notes)  # replicated
    model = hetvc.build_model(data, None, ["y1", "y2"], env="env")
    assert model.design.K.shape == (len(ids), len(ids))


def test_identity_with_single_records_says_the_split_is_not_identified():
    data = replicated_trial(reps=1, envs=("E1",))
    fit = hetvc.fit(data, None, ["y1"], env=None)
    assert any("single record per trait" in n and "not identified" in n for n in fit.notes)


def test_cli_kinship_identity_equals_an_identity_file(tmp_path):
    data = replicated_trial()
    data.to_csv(tmp_path / "pheno.csv", index=False)
    ids = list(pd.unique(data["id"]))
    pd.DataFrame(np.eye(len(ids)), index=ids, columns=ids).to_csv(tmp_path / "I.csv")
    fits = {}
    for name, k in (("identity", "identity"), ("file", tmp_path / "I.csv")):
        res = run("fit", tmp_path / "pheno.csv", "--kinship", k, "--traits", "y1,y2", "--env", "env",
                  "--out", tmp_path / name, "--no-figures", "--quiet", "--json")
        assert res.exit_code == 0, res.output
        fits[name] = (hetvc.load(tmp_path / name / "fit.json"), json.loads(res.output))
    (a, ja), (b, jb) = fits["identity"], fits["file"]
    same_fit(a, b)
    api = hetvc.fit(data, None, ["y1", "y2"], env="env")
    same_fit(a, api, tol=1e-8)
    # the default scaling (mean-diag) leaves the identity as it is: no note, factor 1
    assert ja["data"]["kinship_scale"] == 1.0 and ja["data"]["kinship_mean_diagonal"] == 1.0
    assert ja["data"]["kinship"] == "identity"
    notes = ja["data"]["notes"]
    assert IDENTITY_NOTE in notes
    assert not any("divided by its mean diagonal" in n for n in notes)


# -- item 4: factors coded as numbers ------------------------------------------------------------
def test_whole_number_column_fitted_as_slope_gets_a_note():
    data = replicated_trial()
    _, _, notes = hetvc.resolve_fixed(data, "~ row + col", "env")
    assert ("column 'row' holds 5 distinct whole numbers and is fitted as a slope; if it is a factor "
            "write C(row) or --factors row") in notes
    assert any(n.startswith("column 'col' holds 5 distinct whole numbers") for n in notes)
    for fixed, factors in (("~ C(row) + C(col)", None), ("~ row + col", ["row", "col"]), ("~ row + col", "row,col")):
        _, _, notes = hetvc.resolve_fixed(data, fixed, "env", factors=factors)
        assert not any("whole numbers" in n for n in notes), (fixed, factors, notes)
    # a real covariate (not whole numbers) and a 0/1 dummy: no note
    data["x"] = np.linspace(0, 1, len(data))
    data["d"] = np.arange(len(data)) % 2
    assert not hetvc.resolve_fixed(data, "~ x + d", "env")[2]


def test_factors_option_equals_c_in_the_formula():
    data = replicated_trial()
    d1, f1, _ = hetvc.resolve_fixed(data, "~ C(row)", "env")
    d2, f2, _ = hetvc.resolve_fixed(data, "~ row", "env", factors=["row"])
    assert isinstance(d2["row"].dtype, pd.CategoricalDtype) and not isinstance(data["row"].dtype, pd.CategoricalDtype)
    a = hetvc.fit(d1, None, ["y1", "y2"], env="env", fixed=f1)
    b = hetvc.fit(d2, None, ["y1", "y2"], env="env", fixed=f2)
    same_fit(a, b)
    np.testing.assert_allclose(a.beta, b.beta, atol=1e-8)
    assert [n.replace("C(row)", "row") for n in a.x_names] == list(b.x_names)
    with pytest.raises(hetvc.InputError, match="factors: column.*'rows'"):
        hetvc.resolve_fixed(data, "~ row", "env", factors=["rows"])


def test_cli_factors_equals_c(tmp_path):
    data = replicated_trial()
    data.to_csv(tmp_path / "pheno.csv", index=False)
    fits, outs = {}, {}
    for name, extra in (("c", ["--fixed", "~ C(row) + C(col)"]),
                        ("factors", ["--fixed", "~ row + col", "--factors", "row,col"]),
                        ("slope", ["--fixed", "~ row + col"])):
        res = run("fit", tmp_path / "pheno.csv", "--kinship", "identity", "--traits", "y1,y2", "--env", "env",
                  *extra, "--out", tmp_path / name, "--no-figures", "--quiet")
        assert res.exit_code == 0, res.output
        fits[name], outs[name] = hetvc.load(tmp_path / name / "fit.json"), res.output
    same_fit(fits["c"], fits["factors"])
    assert "holds 5 distinct whole numbers and is fitted as a slope" in outs["slope"]
    assert "whole numbers" not in outs["factors"] and "whole numbers" not in outs["c"]
    assert abs(fits["slope"].loglik - fits["c"].loglik) > 1e-3
    assert "--factors" in run("fit", "--help").output and "C(Rowf)" in run("fit", "--help").output


def test_rank_message_names_a_level_without_records_of_a_trait():
    data = replicated_trial()
    data.loc[data["row"] == 5, "y2"] = np.nan  # level 5 of row has no y2
    with pytest.raises(hetvc.InputError) as err:
        hetvc.fit(data, None, ["y1", "y2"], env="env", fixed="~ C(row)")
    msg = str(err.value)
    assert "level 'C(row)[T.5]' of factor C(row) has no records with trait 'y2'" in msg
    assert "constant within an environment" not in msg


def test_rank_message_names_a_level_aliased_with_the_environment_means():
    data = replicated_trial()
    data["site_block"] = data["env"] + "-" + data["rep"].astype(str)  # nested in environments
    with pytest.raises(hetvc.InputError) as err:
        hetvc.fit(data, None, ["y1"], env="env", fixed="~ site_block")
    msg = str(err.value)
    assert "of factor site_block is aliased with the environment means" in msg
    assert "constant within an environment" not in msg


def test_cpdata_identity_and_factors(shared_data):
    path = shared_data / "DT_cpdata" / "DT_cpdata.csv"
    if not path.is_file():
        pytest.skip("DT_cpdata not available")
    res = run("fit", path, "--kinship", "identity", "--traits", "Yield,FruitAver", "--fixed", "~ Rowf + Colf",
              "--factors", "Rowf,Colf", "--quiet", "--no-pev")
    assert res.exit_code == 0, res.output
    assert "h² is broad-sense" in res.output and "whole numbers" not in res.output
    res = run("fit", path, "--kinship", "identity", "--traits", "Yield,FruitAver,Firmness", "--fixed",
              "~ C(Colf)", "--quiet")
    assert res.exit_code == 2
    assert "of factor C(Colf) has no records with trait 'Firmness'" in res.output


# -- item 3: wide tables ---------------------------------------------------------------------------
def wide_table(seed=5, n=30):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=n)
    wide = pd.DataFrame({"line": [f"L{k}" for k in range(n)]})
    for e, name in enumerate(["env1", "env2", "env4"]):
        wide[name] = g * (1 + 0.2 * e) + rng.normal(scale=0.7, size=n) + e
    return wide


def test_long_from_wide():
    from hetvc.phenotypes import long_from_wide

    wide = wide_table()
    wide.loc[3, "env2"] = np.nan
    long, note = long_from_wide(wide, "line", "yield")
    assert list(long.columns) == ["line", "env", "yield"] and len(long) == 3 * 30 - 1
    assert set(long["env"]) == {"env1", "env2", "env4"}
    row = long[(long["line"] == "L7") & (long["env"] == "env4")]
    assert row["yield"].item() == wide.loc[7, "env4"]
    assert "3 environment columns (env1, env2, env4) of trait 'yield' read as 89 records" in note
    assert "1 empty cell(s) dropped" in note
    long, _ = long_from_wide(wide, "line", "yield", env_name="site", columns=["env1", "env4"])
    assert set(long["site"]) == {"env1", "env4"}
    wide["note"] = "x"
    with pytest.raises(hetvc.InputError, match="column 'note' is not numeric"):
        long_from_wide(wide, "line", "yield")
    with pytest.raises(hetvc.InputError, match="id column 'id' not in the data"):
        long_from_wide(wide, "id", "yield")


def test_cli_wide_equals_the_long_table(tmp_path):
    wide = wide_table()
    wide.to_csv(tmp_path / "wide.csv", index=False)
    long = pd.DataFrame([dict(line=r.line, env=e, yield_=getattr(r, e)) for r in wide.itertuples()
                         for e in ("env1", "env2", "env4")]).rename(columns={"yield_": "yield"})
    long.to_csv(tmp_path / "long.csv", index=False)
    fits = {}
    for name, pheno, extra in (("wide", "wide.csv", ["--wide", "env"]), ("long", "long.csv", ["--env", "env"])):
        res = run("fit", tmp_path / pheno, "--kinship", "identity", "--id", "line", "--traits", "yield",
                  *extra, "--out", tmp_path / name, "--no-figures", "--quiet")
        assert res.exit_code == 0, res.output
        fits[name] = (hetvc.load(tmp_path / name / "fit.json"), res.output)
    (a, out), (b, _) = fits["wide"], fits["long"]
    same_fit(a, b, tol=1e-8)
    assert list(a.envs) == list(b.envs) == ["env1", "env2", "env4"]
    assert "wide table: 30 rows × 3 environment columns (env1, env2, env4) of trait 'yield' read as 90 records" in out
    res = run("fit", tmp_path / "wide.csv", "--kinship", "identity", "--id", "line", "--traits", "a,b",
              "--wide", "env")
    assert res.exit_code == 2 and "a wide table holds one trait" in res.output


def test_dt_wheat_wide(shared_data):
    folder = shared_data / "DT_wheat"
    if not (folder / "DT_wheat.csv").is_file():
        pytest.skip("DT_wheat not available")
    res = run("fit", folder / "DT_wheat.csv", "--wide", "env", "--id", "line", "--traits", "yield",
              "--genotypes", folder / "GT_wheat.csv", "--quiet", "--no-pev", "--json")
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output)
    assert any("read as 2396 records" in n for n in summary["data"]["notes"])


def test_wide_columns_pattern_reads_one_trait_of_a_trait_by_site_table():
    """sommer's DT_rice layout: a column per trait × site; the pattern picks one trait's."""
    import pandas as pd
    from hetvc.phenotypes import long_from_wide

    wide = pd.DataFrame({"id": ["a", "b"], "FT.at.X": [1.0, 2.0], "FT.at.Y": [3.0, None], "PH.at.X": [9.0, 9.0]})
    long, note = long_from_wide(wide, "id", "ft", env_name="site", pattern="FT.at.{}")
    assert sorted(zip(long["id"], long["site"], long["ft"])) == [("a", "X", 1.0), ("a", "Y", 3.0), ("b", "X", 2.0)]
    assert "1 empty cell(s) dropped" in note
    with pytest.raises(hetvc.InputError, match="no column matches 'SW.at.{}'"):
        long_from_wide(wide, "id", "sw", pattern="SW.at.{}")
    with pytest.raises(hetvc.InputError, match="needs one '{}'"):
        long_from_wide(wide, "id", "ft", pattern="FT.at.X")
