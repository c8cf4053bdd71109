"""`hetvc fit` with random terms beyond the genetic one (--random, --random-kinship) and with a
pedigree (--pedigree): outputs, agreement with the Python API, every bad input as exit 2 with
one line, and resume fingerprints that cover the random terms (click's CliRunner, no subprocess).
"""

import json

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

import hetvc
from hetvc.cli import main
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(autouse=True, scope="module")
def _one_blas_thread():
    """One BLAS thread (as tests/test_cli_fit.py: small dense problems run faster with it)."""
    import scipy.linalg
    from threadpoolctl import threadpool_limits

    assert scipy.linalg  # numpy/scipy loaded before the limit is set, or it reaches no library

    with threadpool_limits(1):
        yield


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(res, *parts):
    """Exit 2 with a single 'error: ...' line that holds every part, and no traceback."""
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, res.output
    for part in parts:
        assert part in errors[0], (part, errors[0])
    return errors[0]


# -- a small simulated trial with blocks nested in environments and replicates --------------------
REP_K = [[1.0, 0.5, 0.2], [0.5, 1.0, 0.5], [0.2, 0.5, 1.0]]


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    """A folder with pheno.csv (id, env, y1, y2, block 'E1.b1'.., rep 1..3, one: a single
    level), K.csv, Krep.csv (a relationship over the rep levels '1','2','3') and
    Krep_short.csv (without level '3'); and the data and K as the API gets them."""
    folder = tmp_path_factory.mktemp("trial")
    data, K, *_ = make_problem(5, n_geno=30, n_env=2, n_traits=2, genetic="homogeneous", reps=3,
                               blocks=3, block_var=0.4)
    data = data.assign(one="a")
    data.to_csv(folder / "pheno.csv", index=False)
    hetvc.write_kinship(K, folder / "K.csv")
    levels = ["1", "2", "3"]
    Krep = pd.DataFrame(REP_K, index=levels, columns=levels)
    Krep.to_csv(folder / "Krep.csv")
    Krep.iloc[:2, :2].to_csv(folder / "Krep_short.csv")
    return folder, data, K


def trial_args(folder, *extra, genetic="homogeneous"):
    return ("fit", folder / "pheno.csv", "--kinship", folder / "K.csv", "--traits", ",".join(TRAITS),
            "--env", "env", "--id", "id", *(("--genetic", genetic) if genetic else ()), "--no-figures",
            *extra)


@pytest.fixture(scope="module")
def block_run(trial, tmp_path_factory):
    folder, *_ = trial
    out = tmp_path_factory.mktemp("block") / "out"
    return out, run(*trial_args(folder, "--random", "env:block", "--out", out))


def test_random_interaction_outputs(block_run):
    out, res = block_run
    assert res.exit_code == 0, res.output
    head = [line for line in res.stdout.splitlines() if line.startswith("hetvc fit:")]
    assert len(head) == 1 and "random=env:block" in head[0], head
    assert "Variance partition" in res.stdout
    part = pd.read_csv(out / "variance_partition.csv")
    assert {"model", "env", "trait", "term", "variance", "share"} <= set(part.columns)
    assert set(part["term"]) == {"G", "env:block", "E"}
    assert set(part["env"]) == {"E1", "E2"} and set(part["trait"]) == set(TRAITS)
    sums = part.groupby(["model", "env", "trait"])["share"].sum()
    assert len(sums) == 4 and np.allclose(sums.to_numpy(), 1.0, rtol=0, atol=1e-10), sums
    assert (part["share"] >= 0).all() and (part["share"] <= 1).all()
    effects = pd.read_csv(out / "random_effects.csv", dtype={"level": str})
    assert {"term", "level", "trait", "blup"} <= set(effects.columns)
    assert set(effects["term"]) == {"env:block"}
    # 3 blocks in each of 2 environments, 2 traits (a structure shared by the environments)
    assert effects["level"].nunique() == 6 and len(effects) == 12, effects
    assert effects["blup"].notna().all()
    fit = hetvc.load(out / "fit.json")
    assert fit.random_terms == ["env:block"]
    assert [n for n in fit.param_names() if n.startswith("env:block[")] == [
        "env:block[y1,y1]", "env:block[y1,y2]", "env:block[y2,y2]"]


def test_cli_loglik_equals_the_api(trial, block_run):
    """The CLI's fit is hetvc.fit's on the same data and (mean-diagonal scaled) K."""
    out, res = block_run
    assert res.exit_code == 0, res.output
    _, data, K = trial
    Ks = K / np.diag(K.to_numpy()).mean()  # --kinship-scale mean-diag, the default with --kinship
    direct = hetvc.fit(data, Ks, TRAITS, env="env", id="id", genetic="homogeneous", residual="homogeneous",
                       random=["env:block"], pev=False)
    fit = hetvc.load(out / "fit.json")
    assert fit.converged and direct.converged
    assert fit.loglik == pytest.approx(direct.loglik, rel=0, abs=1e-8)
    assert fit.n_params == direct.n_params == 9


def test_random_structures(trial, tmp_path):
    folder, *_ = trial
    out = tmp_path / "out"
    res = run(*trial_args(folder, "--random", "env:block=heterogeneous,rep=diagonal", "--out", out))
    assert res.exit_code == 0, res.output
    fit = hetvc.load(out / "fit.json")
    assert fit.random_terms == ["env:block", "rep"]
    names = fit.param_names()
    # heterogeneous: an unstructured 2×2 per environment
    for env in ("E1", "E2"):
        for pair in ("y1,y1", "y1,y2", "y2,y2"):
            assert f"env:block[{env}][{pair}]" in names, (env, pair, names)
    assert "env:block[y1,y1]" not in names  # no shared block covariance besides them
    # diagonal: variances only, no trait covariance
    rep = [n for n in names if n.startswith("rep[")]
    assert rep and all(n.endswith(("[y1,y1]", "[y2,y2]")) for n in rep), rep
    assert not [n for n in rep if "y1,y2" in n], rep
    assert len(names) == 3 + 6 + len(rep) + 3


def test_random_kinship(trial, tmp_path):
    folder, *_ = trial
    res = run(*trial_args(folder, "--random", "rep", "--random-kinship", f"rep={folder / 'Krep.csv'}",
                          "--out", tmp_path / "with"))
    assert res.exit_code == 0, res.output
    fit = hetvc.load(tmp_path / "with" / "fit.json")
    assert fit.random == [{"name": "rep", "structure": "homogeneous", "kinship": True}]
    # the matrix is used: the same term without it is another model
    res = run(*trial_args(folder, "--random", "rep", "--out", tmp_path / "without"))
    assert res.exit_code == 0, res.output
    plain = hetvc.load(tmp_path / "without" / "fit.json")
    assert plain.random == [{"name": "rep", "structure": "homogeneous", "kinship": False}]
    assert abs(fit.loglik - plain.loglik) > 1e-6, (fit.loglik, plain.loglik)
    # a matrix without one of the term's levels
    res = run(*trial_args(folder, "--random", "rep", "--random-kinship", f"rep={folder / 'Krep_short.csv'}"))
    one_line_error(res, "random term 'rep'", "not in its relationship matrix")


def test_missing_level_is_named_as_text(trial):
    folder, *_ = trial
    res = run(*trial_args(folder, "--random", "rep", "--random-kinship", f"rep={folder / 'Krep_short.csv'}"))
    line = one_line_error(res, "random term 'rep'")
    assert "np.str_" not in line and "'3'" in line, line


@pytest.mark.parametrize("args, parts", [
    (("--random", "nope"), ("random term 'nope': column 'nope' is not in the data",)),
    (("--random", "env"), ("random term 'env' is confounded with the fixed effects",)),
    (("--random", "one"), ("random term 'one' has a single level",)),
    (("--random", "block=wild"), ("unknown random term structure 'wild'",)),
    (("--random", "block", "--random-kinship", "rep=Krep.csv"),
     ("--random-kinship 'rep=", "'rep' is not a term of --random (block)")),
    (("--random", "block", "--random-kinship", "rep"), ("--random-kinship 'rep': write TERM=FILE",)),
    (("--random-kinship", "rep=Krep.csv"), ("'rep' is not a term of --random",)),
])
def test_bad_random_input_exits_2(trial, args, parts):
    folder, *_ = trial
    args = tuple(f"rep={folder / 'Krep.csv'}" if a == "rep=Krep.csv" else a for a in args)
    one_line_error(run(*trial_args(folder, *args)), *parts)


@pytest.mark.parametrize("terms", ["block,block", "block,block=diagonal"])
def test_term_given_twice_exits_2(trial, terms):
    folder, *_ = trial
    one_line_error(run(*trial_args(folder, "--random", terms)), "random term 'block' is given twice")


def test_term_given_twice_in_the_api(trial):
    """What the CLI should say (hetvc.fit refuses it)."""
    _, data, K = trial
    with pytest.raises(hetvc.InputError, match="random term 'block' is given twice"):
        hetvc.fit(data, K, TRAITS, env="env", genetic="homogeneous", random=["block", "block"])


# -- a pedigree --------------------------------------------------------------------------------------
# founders F1 (sire), F2 (dam), F3 (sire), F4 (dam); A1 (male) and A2 (female) are full sibs;
# B1 = A1 × A2 (inbred, F = 0.25), C1 = B1 × B2 and C2 = B1 × B3 (B3 = A1 × A2, a full sib of B1).
# Offspring are listed before their parents.
PEDIGREE = [("C1", "B1", "B2"), ("C2", "B1", "B3"), ("B1", "A1", "A2"), ("B2", "A1", "A3"),
            ("B3", "A1", "A2"), ("A1", "F1", "F2"), ("A2", "F1", "F2"), ("A3", "F3", "F4"),
            ("F1", 0, 0), ("F2", 0, 0), ("F3", 0, 0), ("F4", 0, 0)]
PHENOTYPED = ["C1", "C2", "B1", "B2", "B3", "A1", "A2", "A3", "F1", "F3"]


@pytest.fixture(scope="module")
def herd(tmp_path_factory):
    folder = tmp_path_factory.mktemp("herd")
    pd.DataFrame(PEDIGREE, columns=["id", "sire", "dam"]).to_csv(folder / "ped.csv", index=False)
    rng = np.random.default_rng(3)
    rows = [(a, f"Y{(k + r) % 3 + 1}", rng.normal()) for k, a in enumerate(PHENOTYPED) for r in range(2)]
    pd.DataFrame(rows, columns=["id", "year", "y"]).to_csv(folder / "ped_pheno.csv", index=False)
    return folder


def test_pedigree_with_a_random_term(herd, tmp_path):
    out = tmp_path / "out"
    res = run("fit", herd / "ped_pheno.csv", "--pedigree", herd / "ped.csv", "--traits", "y", "--id", "id",
              "--random", "year", "--out", out, "--no-figures")
    assert res.exit_code == 0, res.output
    assert f"pedigree {herd / 'ped.csv'}: 12 animals" in res.stdout
    assert "inbreeding:" in res.stdout and "random=year" in res.stdout
    for name in ("fit.json", "variance_partition.csv", "random_effects.csv", "blups.csv", "report.md"):
        assert (out / name).is_file(), name
    fit = hetvc.load(out / "fit.json")
    assert fit.random_terms == ["year"] and len(fit.ids) == 12  # every animal of A, phenotyped or not
    effects = pd.read_csv(out / "random_effects.csv")
    assert sorted(effects["level"].unique()) == ["Y1", "Y2", "Y3"]


def test_pedigree_runs_on_its_sparse_inverse_and_agrees_with_the_dense_a(herd, tmp_path, monkeypatch):
    from hetvc.kinship.pedigree import PedigreeRelationship

    args = ("fit", herd / "ped_pheno.csv", "--pedigree", herd / "ped.csv", "--traits", "y", "--id", "id",
            "--random", "year", "--no-figures", "--no-pev", "--json")
    dense = run(*args, "--engine", "dense")  # A formed on demand for the dense engine
    assert dense.exit_code == 0, dense.output

    def refuse(self, what="A"):
        raise AssertionError("the dense A was formed")

    monkeypatch.setattr(PedigreeRelationship, "dense", refuse)
    sparse = run(*args)
    assert sparse.exit_code == 0, sparse.output
    a, b = json.loads(dense.stdout), json.loads(sparse.stdout)
    assert b["models"][0]["engine"] == "mme" and a["models"][0]["engine"] == "dense"
    assert b["models"][0]["loglik"] == pytest.approx(a["models"][0]["loglik"], abs=1e-8)


def test_pedigree_passed_as_kinship_is_named(herd):
    base = ("fit", herd / "ped_pheno.csv", "--traits", "y", "--id", "id", "--random", "year")
    res = run(*base, "--kinship", herd / "ped.csv")
    one_line_error(res, "looks like a pedigree", f"use --pedigree {herd / 'ped.csv'}")
    res = run(*base, "--kinship", herd / "ped.csv", "--pedigree", herd / "ped.csv")
    one_line_error(res, "give exactly one of")


# -- resume: the fingerprints include the random terms ----------------------------------------------
def test_resume_reuses_only_with_the_same_random_terms(trial, tmp_path):
    folder, *_ = trial
    out = tmp_path / "out"
    args = trial_args(folder, "--compare", "homogeneous,heterogeneous", "--out", out, genetic=None)
    models = ("homogeneous/homogeneous", "heterogeneous/homogeneous")
    first = run(*args, "--random", "env:block")
    assert first.exit_code == 0, first.output
    assert first.stderr.count(": reused ") == 0, first.stderr
    assert sorted(p.name for p in (out / "fits").iterdir()) == ["heterogeneous-homogeneous.json",
                                                                "homogeneous-homogeneous.json"]
    again = run(*args, "--random", "env:block")
    assert again.exit_code == 0, again.output
    for k, m in enumerate(models, 1):
        assert f"[{k}/2] {m}: reused " in again.stderr, again.stderr
    assert "fitting again" not in again.stderr
    assert hetvc.load(out / "fit.json").random_terms == ["env:block"]
    # other random terms: nothing is reused
    other = run(*args, "--random", "rep")
    assert other.exit_code == 0, other.output
    assert ": reused " not in other.stderr, other.stderr
    assert other.stderr.count("made with other inputs or options: fitting again") == 2, other.stderr
    for m in models:
        assert hetvc.load(out / "fits" / f"{m.replace('/', '-')}.json").random_terms == ["rep"]
    # the same term with another structure, or with a relationship matrix, is not reused either
    for extra in (("--random", "rep=diagonal"),
                  ("--random", "rep", "--random-kinship", f"rep={folder / 'Krep.csv'}")):
        res = run(*args, *extra)
        assert res.exit_code == 0, res.output
        assert ": reused " not in res.stderr and res.stderr.count("fitting again") == 2, (extra, res.stderr)
