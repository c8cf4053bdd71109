"""Bad input, tried as a new user would (issue 7), through the CLI and the Python API.

Every case must end in one line that names the problem (file, column, row or id): on the
command line exit status 2, exactly one line on stderr and no traceback; in Python a
:class:`hetvc.errors.InputError` with a one-line message (never another exception).

The data are tiny (10 genotypes × 2 environments × 2 traits): no case reaches the optimiser
except the one valid control fit.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hetvc
from hetvc.cli import main
from hetvc.errors import InputError
from hetvc.kinship import grm, read_genotypes, read_kinship, write_kinship

IDS = [f"g{i:02d}" for i in range(1, 11)]
ENVS = ["E1", "E2"]
TRAITS = ["y1", "y2"]


# -- a small valid problem -----------------------------------------------------------------------
def kinship_frame() -> pd.DataFrame:
    rng = np.random.default_rng(7)
    M = rng.integers(0, 3, size=(len(IDS), 80)).astype(float)
    Z = M - M.mean(axis=0)
    Z = Z[:, Z.std(axis=0) > 0]
    K = Z @ Z.T / (Z.var(axis=0).sum()) + 0.05 * np.eye(len(IDS))
    return pd.DataFrame(K, index=pd.Index(IDS, name="id"), columns=IDS)


def pheno_frame() -> pd.DataFrame:
    rng = np.random.default_rng(11)
    rows = [(i, e) for e in ENVS for i in IDS]
    data = pd.DataFrame(rows, columns=["id", "env"])
    data["y1"] = np.round(rng.normal(10, 2, len(data)), 3)
    data["y2"] = np.round(rng.normal(-3, 1, len(data)), 3)
    return data


def write_inputs(tmp_path, data=None, K=None):
    """(pheno.csv, K.csv) in tmp_path."""
    pheno, kin = tmp_path / "pheno.csv", tmp_path / "K.csv"
    (pheno_frame() if data is None else data).to_csv(pheno, index=False)
    write_kinship(kinship_frame() if K is None else K, kin)
    return pheno, kin


def run_cli(*args):
    result = CliRunner().invoke(main, ["fit", *map(str, args)])
    return result


def assert_cli_error(result, *names):
    """Exit status 2, one line on stderr starting 'error:' that contains every name; no traceback."""
    shown = f"exit {result.exit_code}\nstdout: {result.stdout!r}\nstderr: {result.stderr!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"unhandled {type(result.exception).__name__}: {result.exception}\n{shown}")
    assert result.exit_code == 2, shown
    assert "Traceback" not in result.output, shown
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, shown
    assert lines[0].startswith("error: "), shown
    for name in names:
        assert name in lines[0], f"{name!r} not named; {shown}"
    return lines[0]


def assert_api_error(call, *names):
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and message.strip(), repr(message)
    for name in names:
        assert name in message, f"{name!r} not in {message!r}"
    return message


def api_fit(data, K=None, **kw):
    kw.setdefault("traits", TRAITS)
    kw.setdefault("env", "env")
    kw.setdefault("id", "id")
    kw.setdefault("pev", False)
    return lambda: hetvc.fit(data, kinship_frame() if K is None else K, **kw)


FIT = ("--traits", "y1,y2", "--env", "env", "--id", "id", "--no-figures", "--quiet", "--engine", "dense")


# -- control: the unperturbed problem fits ----------------------------------------------------------
def test_valid_problem_fits_through_the_cli(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    result = run_cli(pheno, "--kinship", kin, *FIT)
    assert result.exit_code == 0, result.output
    assert result.stderr.strip() == ""


# -- empty file, wrong delimiter, header only, duplicated columns ------------------------------------
def test_empty_file(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    pheno.write_text("")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "pheno.csv", "empty")
    # only blank lines
    pheno.write_text("\n\n  \n")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "pheno.csv", "empty")
    # an empty kinship file
    pheno, kin = write_inputs(tmp_path)
    kin.write_text("")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv")
    assert_api_error(lambda: read_kinship(kin), "K.csv")
    # Python: an empty table
    assert_api_error(api_fit(pd.DataFrame()), "no rows")


def test_wrong_delimiter(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    pheno_frame().to_csv(pheno, index=False, sep=";")
    # detected by default
    assert run_cli(pheno, "--kinship", kin, *FIT).exit_code == 0
    # a semicolon file read as if comma separated: a single column
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT, "--sep", ","), "pheno.csv", "delimiter")
    # ... with decimal commas the rows split into more fields than the header
    pheno_frame().to_csv(pheno, index=False, sep=";", decimal=",")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT, "--sep", ","), "pheno.csv")
    # a comma file read with --sep ';'
    pheno_frame().to_csv(pheno, index=False)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT, "--sep", ";"), "pheno.csv", "delimiter")
    # a kinship written with semicolons under a .csv name
    kinship_frame().to_csv(kin, sep=";")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "delimit")
    assert_api_error(lambda: read_kinship(kin), "K.csv", "delimit")
    # Python: the user read a semicolon file with pd.read_csv's default comma
    pheno_frame().to_csv(pheno, index=False, sep=";")
    wrong = pd.read_csv(pheno)
    assert_api_error(api_fit(wrong), "'id'", "delimiter")


def test_header_only(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    pheno.write_text("id,env,y1,y2\n")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "pheno.csv", "no data rows")
    assert_api_error(api_fit(pheno_frame().iloc[:0]), "no rows")


def test_duplicated_column_names(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    data = pheno_frame()
    dup = pd.concat([data, data[["y1"]]], axis=1)
    dup.to_csv(pheno, index=False)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "pheno.csv", "'y1'", "more than once")
    # a duplicated id column
    pd.concat([data, data[["id"]]], axis=1).to_csv(pheno, index=False)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "pheno.csv", "'id'", "more than once")
    assert_api_error(api_fit(dup), "'y1'", "more than once")


# -- trait values ------------------------------------------------------------------------------------
def test_non_numeric_trait_values(tmp_path):
    data = pheno_frame().astype({"y1": object})
    data.loc[2, "y1"] = "12..5"
    pheno, kin = write_inputs(tmp_path, data)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "'y1'", "row 3", "'12..5'")
    assert_api_error(api_fit(data), "'y1'", "row 3", "'12..5'")


def test_infinite_trait_values(tmp_path):
    data = pheno_frame()
    data.loc[4, "y2"] = np.inf
    pheno, kin = write_inputs(tmp_path, data)
    assert "inf" in pheno.read_text()
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "'y2'", "row 5", "infinite")
    data.loc[4, "y2"] = -np.inf
    assert_api_error(api_fit(data), "'y2'", "row 5", "infinite")


# -- ids ------------------------------------------------------------------------------------------------
def test_id_column_with_blanks(tmp_path):
    data = pheno_frame()
    data.loc[6, "id"] = None
    pheno, kin = write_inputs(tmp_path, data)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "'id'", "row 7", "blank")
    assert_api_error(api_fit(data), "'id'", "row 7", "blank")
    data.loc[6, "id"] = "   "
    assert_api_error(api_fit(data), "'id'", "row 7", "blank")


@pytest.mark.parametrize("label", ["g03 ", "G03", " g03"])
def test_ids_that_differ_only_by_whitespace_or_case(tmp_path, label):
    data = pheno_frame()
    data.loc[data["id"] == "g03", "id"] = label
    pheno, kin = write_inputs(tmp_path, data)
    # the CSV reader may strip a leading blank (then the id matches and the fit runs)
    result = run_cli(pheno, "--kinship", kin, *FIT)
    if label != " g03":
        assert_cli_error(result, repr(label), "'g03'", "did you mean")
    else:
        assert result.exit_code in (0, 2) and "Traceback" not in result.output
        if result.exit_code == 2:
            assert_cli_error(result, "'g03'", "did you mean")
    assert_api_error(api_fit(data), repr(label), "'g03'", "did you mean")
    # the other way round: the kinship carries the variant
    K = kinship_frame().rename(index={"g03": label}, columns={"g03": label})
    assert_api_error(api_fit(pheno_frame(), K), "'g03'", repr(label), "did you mean")


def test_labels_that_do_not_match(tmp_path):
    K = kinship_frame()
    other = K.set_axis([f"line{i}" for i in range(len(K))], axis=0).set_axis(
        [f"line{i}" for i in range(len(K))], axis=1)
    pheno, kin = write_inputs(tmp_path, K=other)
    msg = assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "'g01'", "kinship")
    assert "did you mean" not in msg
    assert_api_error(api_fit(pheno_frame(), other), "'g01'", "kinship")
    # rows and columns of the kinship itself disagree
    bad = K.rename(columns={"g10": "g11"})
    pheno, kin = write_inputs(tmp_path, K=K)
    bad.to_csv(kin)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "'g10'")
    assert_api_error(api_fit(pheno_frame(), bad), "'g10'")


# -- kinship files ------------------------------------------------------------------------------------
def test_kinship_with_nan(tmp_path):
    K = kinship_frame()
    K.iloc[2, 5] = K.iloc[5, 2] = np.nan
    pheno, kin = write_inputs(tmp_path, K=K)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "'g03'", "'g06'")
    assert_api_error(lambda: read_kinship(kin), "K.csv", "'g03'", "'g06'")
    assert_api_error(api_fit(pheno_frame(), K), "'g03'", "'g06'")
    # an empty cell (row g04, column g03) in an otherwise clean file
    write_kinship(kinship_frame(), kin)
    text = kin.read_text().splitlines()
    cells = text[4].split(",")
    cells[3] = ""
    text[4] = ",".join(cells)
    kin.write_text("\n".join(text) + "\n")
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "'g04'")


def test_non_square_kinship(tmp_path):
    K = kinship_frame()
    pheno, kin = write_inputs(tmp_path)
    K.iloc[:, :-1].to_csv(kin)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "square")
    assert_api_error(lambda: read_kinship(kin), "K.csv", "square")
    assert_api_error(api_fit(pheno_frame(), K.iloc[:-1, :]), "square")


def test_asymmetric_kinship(tmp_path):
    K = kinship_frame()
    K.iloc[0, 3] += 0.25
    pheno, kin = write_inputs(tmp_path, K=K)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "K.csv", "symmetric", "'g01'", "'g04'")
    assert_api_error(api_fit(pheno_frame(), K), "symmetric", "'g01'", "'g04'")
    assert_api_error(api_fit(pheno_frame(), kin), "K.csv", "symmetric", "'g01'", "'g04'")  # a path


def test_plink_triplet_without_bim(tmp_path):
    from bed_reader import to_bed

    pheno, _ = write_inputs(tmp_path)
    rng = np.random.default_rng(3)
    prefix = tmp_path / "geno"
    to_bed(prefix.with_suffix(".bed"), rng.integers(0, 3, size=(len(IDS), 50)).astype(np.float32),
           properties={"iid": IDS, "fid": IDS})
    assert read_genotypes(prefix.with_suffix(".bed")).shape == (len(IDS), 50)
    prefix.with_suffix(".bim").unlink()
    for geno in (prefix.with_suffix(".bed"), prefix):
        assert_cli_error(run_cli(pheno, "--genotypes", geno, *FIT), "geno.bim", "missing")
        assert_api_error(lambda: grm(geno), "geno.bim", "missing")
        assert_api_error(lambda: read_genotypes(geno), "geno.bim", "missing")


# -- model requests ----------------------------------------------------------------------------------
def test_trait_named_twice(tmp_path):
    pheno, kin = write_inputs(tmp_path)
    args = [a if a != "y1,y2" else "y1,y2,y1" for a in FIT]
    assert_cli_error(run_cli(pheno, "--kinship", kin, *args), "'y1'", "twice")
    assert_api_error(api_fit(pheno_frame(), traits=["y1", "y1"]), "'y1'", "twice")


def test_environment_with_one_level(tmp_path):
    data = pheno_frame().assign(env="E1")
    data = data.drop_duplicates("id")
    pheno, kin = write_inputs(tmp_path, data)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT, "--genetic", "heterogeneous"),
                     "heterogeneous", "'E1'", "two environments")
    assert_api_error(api_fit(data, genetic="heterogeneous"), "heterogeneous", "'E1'", "two environments")
    assert_api_error(api_fit(data, genetic="homogeneous", residual="heterogeneous"),
                     "heterogeneous", "two environments")


def test_more_parameters_than_observations(tmp_path):
    data = pheno_frame()
    data = data[data["id"].isin(IDS[:2])]  # 2 genotypes × 2 environments
    pheno, kin = write_inputs(tmp_path, data)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT, "--genetic", "heterogeneous"),
                     "parameters", "degrees of freedom")
    assert_api_error(api_fit(data, genetic="unstructured"), "parameters", "degrees of freedom")
    # no more observed values than fixed effects (a mean per trait × environment)
    data.iloc[:1].to_csv(pheno, index=False)
    assert_cli_error(run_cli(pheno, "--kinship", kin, *FIT), "fixed effects", "too few")
    assert_api_error(api_fit(data.iloc[:1]), "fixed effects", "too few")
