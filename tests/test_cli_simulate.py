"""Tests for the `hetvc simulate` and `hetvc kinship` commands."""

import json

import numpy as np
import pandas as pd
from bed_reader import to_bed
from click.testing import CliRunner

from hetvc.cli import main
from hetvc.kinship import grm, read_kinship
from hetvc.simulate import read_truth


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_commands_registered():
    assert {"simulate", "kinship"} <= set(main.commands)


def test_simulate_writes_files(tmp_path):
    out = tmp_path / "sim"
    res = run("simulate", "--n", 120, "--traits", 2, "--locations", 3, "--w", 0.6, "--rho", 0.5,
              "--h2", 0.3, "--snps", 80, "--seed", 1, "--out", out, "--plink")
    assert res.exit_code == 0, res.output
    assert "seed 1" in res.output
    for name in ("pheno.csv", "kinship.csv", "truth.json", "genetic_values.csv",
                 "genotypes.bed", "genotypes.bim", "genotypes.fam"):
        assert (out / name).exists(), name
    pheno = pd.read_csv(out / "pheno.csv")
    assert list(pheno.columns) == ["id", "env", "t1", "t2"] and len(pheno) == 120
    truth = json.loads((out / "truth.json").read_text())
    assert truth["w"] == 0.6 and truth["envs"] == ["L1", "L2", "L3"]
    assert np.array(truth["G"]).shape == (6, 6)
    K = read_kinship(out / "kinship.csv")
    assert K.shape == (120, 120)
    # same seed → byte-identical files
    res2 = run("simulate", "--n", 120, "--traits", 2, "--locations", 3, "--w", 0.6, "--rho", 0.5,
               "--h2", 0.3, "--snps", 80, "--seed", 1, "--out", tmp_path / "sim2")
    assert res2.exit_code == 0
    for name in ("pheno.csv", "kinship.csv", "truth.json"):
        assert (out / name).read_bytes() == (tmp_path / "sim2" / name).read_bytes()


def test_simulate_options(tmp_path):
    res = run("simulate", "--n", 40, "--snps", 30, "--locations", 2, "--location-scales", "1,2",
              "--covariates", 1, "--design", "full", "--missing", 0.1, "--seed", 5, "--out", tmp_path)
    assert res.exit_code == 0, res.output
    t = read_truth(tmp_path)
    assert t.design == "full" and t.records == 80
    np.testing.assert_allclose(t.location_scales, [1, 2])
    assert list(pd.read_csv(tmp_path / "pheno.csv").columns)[-1] == "c1"


def test_simulate_bad_input_is_one_line_exit_2(tmp_path):
    for args, text in [
        (["--h2", 2], "h2 must be in [0, 1]"),
        (["--location-scales", "1,x"], "--location-scales takes comma-separated numbers"),
        (["--location-scales", "1,2"], "location_scales needs 4"),
        (["--rho", -0.9], "rho"),
    ]:
        res = run("simulate", "--n", 20, "--snps", 10, "--out", tmp_path / "x", *args)
        assert res.exit_code == 2, (args, res.output)
        assert text in res.output
        lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1
    assert not (tmp_path / "x").exists()


def _bed(tmp_path):
    rng = np.random.default_rng(0)
    X = rng.binomial(2, 0.3, size=(15, 40)).astype(float)
    X[0, 0] = np.nan
    ids = [f"s{i}" for i in range(15)]
    to_bed(tmp_path / "g.bed", X, properties={"iid": ids, "fid": ids})
    return X, ids


def test_kinship_from_plink(tmp_path):
    X, ids = _bed(tmp_path)
    ref = grm(pd.DataFrame(X, index=ids))
    for arg in (tmp_path / "g.bed", tmp_path / "g"):
        res = run("kinship", arg, "--out", tmp_path / "K.csv", "--block-size", 7)
        assert res.exit_code == 0, res.output
        assert "1 missing calls mean-imputed" in res.output
        K = read_kinship(tmp_path / "K.csv")
        assert list(K.index) == ids
        np.testing.assert_allclose(K.to_numpy(), ref.to_numpy(), atol=1e-12)
    res = run("kinship", tmp_path / "g", "--out", tmp_path / "K.npy", "--method", "vanraden")
    assert res.exit_code == 0, res.output
    np.testing.assert_allclose(read_kinship(tmp_path / "K.npy").to_numpy(),
                               grm(pd.DataFrame(X, index=ids), method="vanraden").to_numpy(), atol=1e-12)
    assert (tmp_path / "K.npy.ids").exists()


def test_kinship_from_csv(tmp_path):
    path = tmp_path / "dos.csv"
    path.write_text("id,a,b,c\nx,0,1,2\ny,1,,0\nz,2,2,1\n")
    res = run("kinship", path, "--out", tmp_path / "K.csv")
    assert res.exit_code == 0, res.output
    K = read_kinship(tmp_path / "K.csv")
    assert list(K.index) == ["x", "y", "z"]
    np.testing.assert_allclose(K.to_numpy(), grm(pd.read_csv(path, index_col="id")).to_numpy(), atol=1e-12)


def test_kinship_errors(tmp_path):
    res = run("kinship", tmp_path / "none.bed", "--out", tmp_path / "K.csv")
    assert res.exit_code == 2 and "does not exist" in res.output
    _bed(tmp_path)
    (tmp_path / "g.bim").unlink()
    res = run("kinship", tmp_path / "g", "--out", tmp_path / "K.csv")
    assert res.exit_code == 2 and "g.bim is missing" in res.output
    assert not (tmp_path / "K.csv").exists()
