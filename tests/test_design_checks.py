"""The design check before fitting (hetvc.diagnostics.check_design): an environment × trait
that the structures asked for cannot be estimated from is refused in one line that names the
environment and the trait and gives the way out; real data sets that fit are not refused."""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc.data import build_design
from hetvc.diagnostics import check_design, design_notes, kinship_variance
from hetvc.errors import InputError
from hetvc.kinship import kinship_matrix
from hetvc.model import Model
from reference import make_problem

TRAITS = ["y1", "y2"]
STRUCTURES = [(g, r) for g in ("homogeneous", "heterogeneous", "unstructured")
              for r in ("homogeneous", "heterogeneous")]


def _model(data, K, genetic="homogeneous", residual="homogeneous", traits=TRAITS, env="env", id="id"):
    Kmat, ids = kinship_matrix(K, None)
    return Model.build(build_design(data, Kmat, ids, traits, env, id), genetic, residual)


def _check(data, K, genetic, residual, traits=TRAITS, env="env", id="id"):
    """check_design on the model hetvc.fit would build (no optimisation)."""
    check_design(_model(data, K, genetic, residual, traits, env, id))


@pytest.fixture(scope="module")
def problem():
    data, K, _, _ = make_problem(41, n_geno=24, n_env=2, genetic="heterogeneous")
    return data, K


def _with_env(data, rows, name="XYZ", values=None):
    extra = data.loc[rows].copy()
    extra["env"] = name
    if values is not None:
        extra[TRAITS] = values
    return pd.concat([data, extra], ignore_index=True)


@pytest.mark.parametrize("genetic,residual", STRUCTURES)
def test_a_single_record_environment_is_refused_by_fit_under_every_structure(problem, genetic, residual):
    data, K = problem
    bad = _with_env(data, [0], values=[[0.3, -1.2]])
    with pytest.raises(InputError) as err:
        hetvc.fit(bad, K, TRAITS, env="env", genetic=genetic, residual=residual)
    msg = str(err.value)
    assert "\n" not in msg
    assert "environment 'XYZ'" in msg and "single record" in msg and "'y1'" in msg and "'g001'" in msg
    assert "drop environment 'XYZ'" in msg and "merge it" in msg


def test_a_copy_of_an_existing_record_is_refused_too(problem):
    data, K = problem
    bad = _with_env(data, [0])  # the same genotype with the same values as its record in E1
    for genetic, residual in STRUCTURES:
        with pytest.raises(InputError, match="environment 'XYZ' has a single record"):
            _check(bad, K, genetic, residual)


def test_parameter_count_rule_and_the_way_out(problem):
    """Two traits: an env-specific structure estimates m_l = 2 parameters per trait there, so
    heterogeneous/homogeneous needs 3 genotypes, heterogeneous/heterogeneous 5 records."""
    data, K = problem
    three = _with_env(data, data.index[data["env"] == "E1"][:3])
    for genetic, residual in [("homogeneous", "homogeneous"), ("heterogeneous", "homogeneous"),
                              ("homogeneous", "heterogeneous"), ("unstructured", "homogeneous")]:
        _check(three, K, genetic, residual)  # 3 ≥ 1 + 2
    with pytest.raises(InputError) as err:
        _check(three, K, "heterogeneous", "heterogeneous")
    msg = str(err.value)
    assert "environment 'XYZ' has 3 record(s) of 3 genotype(s) with trait 'y1'" in msg
    assert "estimate 4 parameter(s)" in msg and "at least 5 records" in msg
    assert msg.endswith("or use residual='homogeneous'")

    two = _with_env(data, data.index[data["env"] == "E1"][:2])
    _check(two, K, "homogeneous", "homogeneous")
    with pytest.raises(InputError, match="at least 3 genotypes.*or use genetic='homogeneous'$"):
        _check(two, K, "heterogeneous", "homogeneous")
    with pytest.raises(InputError, match="or use genetic='homogeneous' and residual='homogeneous'$"):
        _check(two, K, "unstructured", "heterogeneous")

    five = _with_env(data, data.index[data["env"] == "E1"][:5])
    _check(five, K, "heterogeneous", "heterogeneous")


def test_one_genotype_with_replicates(problem):
    """Replicates of one genotype estimate a residual variance but no genetic one there."""
    data, K = problem
    reps = _with_env(data, [0, 0, 0], values=[[0.1, 1.0], [0.5, 0.2], [-0.3, 0.7]])
    _check(reps, K, "homogeneous", "homogeneous")
    _check(reps, K, "homogeneous", "heterogeneous")  # 3 records ≥ 1 + 2
    with pytest.raises(InputError, match="3 record\\(s\\) of 1 genotype\\(s\\).*or use genetic='homogeneous'$"):
        _check(reps, K, "heterogeneous", "homogeneous")
    notes = design_notes(_model(reps, K))
    assert ("environment 'XYZ' holds a single genotype with trait 'y1' (3 records): its mean absorbs "
            "that genotype's genetic value, and only the replicates inform the residual variance") in notes
    assert not [n for n in design_notes(_model(problem[0], K)) if "single genotype" in n]


def test_a_cell_without_variation_is_refused(problem):
    data, K = problem
    flat = data.copy()
    flat.loc[flat["env"] == "E2", "y2"] = 4.0
    for genetic, residual in STRUCTURES:
        with pytest.raises(InputError) as err:
            _check(flat, K, genetic, residual)
        msg = str(err.value)
        assert msg.startswith("trait 'y2' has no variation in environment 'E2' (all 24 values are 4)")
        assert "drop environment 'E2' for it" in msg


def test_single_environment_single_value_and_numeric_labels(problem):
    data, K = problem
    one = data[data["env"] == "E1"].copy()
    one.loc[one.index[1:], "y2"] = np.nan
    with pytest.raises(InputError, match="^trait 'y2' has a single value \\(genotype 'g001'\\)"):
        _check(one, K, "homogeneous", "homogeneous")
    numeric = _with_env(data, [0], name=7, values=[[0.3, -1.2]]).assign(env=lambda d: d["env"].map(
        {"E1": 1, "E2": 2, 7: 7}))
    with pytest.raises(InputError, match="^environment 7 has a single record"):
        _check(numeric, K, "homogeneous", "homogeneous")


def test_fit_checks_before_optimising(problem, monkeypatch):
    data, K = problem
    import hetvc.fitting as fit_module
    monkeypatch.setattr(fit_module, "maximize", lambda *a, **k: pytest.fail("optimised a refused design"))
    with pytest.raises(InputError, match="'XYZ'"):
        hetvc.fit(_with_env(data, [0]), K, TRAITS, env="env")


# -- real data (../shared, skipped when absent) --------------------------------------------------------
def _bmtme(shared_data):
    src = shared_data / "bmtme_maize_toy"
    return pd.read_csv(src / "pheno_long.csv"), hetvc.read_kinship(src / "grm.csv")


@pytest.mark.parametrize("variant", ["copy of CKDHL0008", "new values"])
def test_bmtme_with_one_record_in_a_new_environment_is_refused(shared_data, variant):
    pheno, K = _bmtme(shared_data)
    traits = ["grain_yield", "asi", "plant_height"]
    row = pheno[(pheno["genotype"] == "CKDHL0008") & (pheno["env"] == "EBU")].copy()
    if variant == "new values":
        row = pheno[pheno["genotype"] == "CKDHL0039"].iloc[[0]].copy()
        row[traits] = [5.1, 1.2, 221.0]
    data = pd.concat([pheno, row.assign(env="XYZ")], ignore_index=True)
    for genetic, residual in STRUCTURES:
        with pytest.raises(InputError, match="^environment 'XYZ' has a single record with trait 'grain_yield'"):
            hetvc.fit(data, K, traits, env="env", id="genotype", genetic=genetic, residual=residual)


def test_real_data_sets_that_fit_are_not_refused(shared_data):
    cases = []
    pheno, K = _bmtme(shared_data)
    cases.append((pheno, K, ["grain_yield", "asi", "plant_height"], "env", "genotype"))
    src = shared_data / "drops_maize"
    cases.append((pd.read_csv(src / "pheno_long.csv", dtype={"genotype": str}),
                  hetvc.read_kinship(src / "grm_vanraden.csv"), ["grain_yield", "plant_height"], "env", "genotype"))
    src = shared_data / "DT_cornhybrids"
    cases.append((pd.read_csv(src / "DT_cornhybrids.csv"), hetvc.read_kinship(src / "GT_cornhybrids.csv"),
                  ["Yield", "PlantHeight"], "Location", "GCA1"))
    src = shared_data / "soynam_3loc_subset"
    cases.append((pd.read_csv(src / "pheno_long.csv"), hetvc.read_kinship(src / "grm_vanraden.csv"),
                  ["yield", "oil", "height"], "env", "genotype"))
    for data, K, traits, env, id in cases:
        for genetic, residual in STRUCTURES:
            _check(data, K, genetic, residual, traits=traits, env=env, id=id)


def test_the_bundled_example_is_not_refused():
    from hetvc.examples import load_example

    pheno, K, roles = load_example("soynam")
    for genetic, residual in STRUCTURES:
        _check(pheno, K, genetic, residual, traits=roles["traits"] + ["oil"], env=roles["env"], id=roles["id"])


def test_kinship_variance_is_the_centred_mean_diagonal(problem):
    data, K = problem
    sub = data[data["id"].isin(K.index[:10])]
    model = _model(sub, K)
    Ko = K.iloc[:10, :10].to_numpy()
    assert kinship_variance(model) == pytest.approx(np.mean(np.diag(Ko)) - Ko.mean(), rel=1e-12)


def test_the_cli_refuses_a_single_record_environment_with_exit_2(problem, tmp_path):
    """hetvc fit --compare all on a trial with one record in environment XYZ: exit 2 and one
    line naming XYZ, before any model is fitted (it used to fit for 200 iterations, report
    G[XYZ] = 1.2e8, or end in a traceback)."""
    from click.testing import CliRunner

    from hetvc.cli import main

    data, K = problem
    _with_env(data, [0]).to_csv(tmp_path / "pheno.csv", index=False)
    K.to_csv(tmp_path / "K.csv")
    result = CliRunner().invoke(main, [
        "fit", str(tmp_path / "pheno.csv"), "--kinship", str(tmp_path / "K.csv"), "--traits", "y1,y2",
        "--env", "env", "--id", "id", "--compare", "all", "--out", str(tmp_path / "out")])
    assert result.exit_code == 2
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "environment 'XYZ' has a single record" in errors[0]
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "fits").exists()  # refused before fitting
