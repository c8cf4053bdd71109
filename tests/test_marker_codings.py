"""Marker codings of genotype tables (issue 17): dosage, -1/0/1, letters (IUPAC), presence/absence;
their detection, the MAF and call-rate filters, and the real sommer/BGLR marker files."""

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hetvc.cli import main
from hetvc.errors import InputError
from hetvc.kinship import detect_coding, grm, read_genotypes

BASES = np.array(list("ACGT"))
IUPAC = {frozenset("AG"): "R", frozenset("CT"): "Y", frozenset("CG"): "S", frozenset("AT"): "W",
         frozenset("GT"): "K", frozenset("AC"): "M"}


def dosages(n=30, p=40, seed=1, missing=0.05):
    rng = np.random.default_rng(seed)
    X = rng.binomial(2, rng.uniform(0.1, 0.6, p), size=(n, p)).astype(float)
    X[0] = 2.0  # some 2 in every column (auto must see dosages)
    X[rng.random(X.shape) < missing] = np.nan
    ids = [f"i{j}" for j in range(n)]
    snps = [f"s{k}" for k in range(p)]
    return pd.DataFrame(X, index=ids, columns=snps)


def as_letters(D, style="pair", seed=2):
    """Encode dosages (of the allele called 'alt') as nucleotide calls; ref/alt random per SNP."""
    rng = np.random.default_rng(seed)
    out = pd.DataFrame(index=D.index, columns=D.columns, dtype=object)
    for k, col in enumerate(D.columns):
        ref, alt = rng.choice(BASES, 2, replace=False)
        het = {"pair": ref + alt, "slash": f"{alt}/{ref}", "iupac": IUPAC[frozenset(ref + alt)]}[style]
        hom = {"pair": (ref + ref, alt + alt), "slash": (f"{ref}/{ref}", f"{alt}/{alt}"),
               "iupac": (ref, alt)}[style]
        miss = ["N", "0", "-", None][k % 4]
        out[col] = [miss if np.isnan(d) else (hom[0] if d == 0 else het if d == 1 else hom[1])
                    for d in D[col]]
    return out


def write(frame, path):
    frame.to_csv(path, index_label="id", na_rep="NA")
    return path


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
@pytest.mark.parametrize("style", ["pair", "slash", "iupac"])
def test_letters_equal_dosages(tmp_path, method, style):
    D = dosages()
    L = as_letters(D, style)
    ref = grm(D, method=method)
    K, info = grm(L, method=method, return_info=True)
    np.testing.assert_allclose(K.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)
    assert info.coding == "letters" and info.coding_detected
    Kf, info = grm(write(L, tmp_path / "g.csv"), method=method, return_info=True)
    np.testing.assert_allclose(Kf.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)
    assert info.missing_calls == int(D.isna().to_numpy().sum())
    assert "letters coding (detected)" in info.summary()


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
def test_minus101_equals_dosages(tmp_path, method):
    D = dosages(seed=3)
    D.iloc[1, 2] = 0.5  # fractional dosages survive the -1/0/1 coding
    ref = grm(D, method=method)
    K, info = grm(write(D - 1, tmp_path / "g.csv"), method=method, return_info=True)
    np.testing.assert_allclose(K.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)
    assert (info.coding, info.coding_detected) == ("-101", True)
    assert "1 fractional values" in info.summary()
    np.testing.assert_allclose(grm((D - 1).to_numpy(), method=method, coding="-101"), ref.to_numpy(),
                               rtol=0, atol=1e-12)


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
def test_presence_is_standardized_by_own_mean_and_sd(method):
    rng = np.random.default_rng(4)
    X = (rng.random((25, 30)) < rng.uniform(0.2, 0.8, 30)).astype(float)
    K, info = grm(X, method=method, return_info=True)
    q = X.mean(axis=0)
    Z = X - q
    if method == "vanraden":
        expect = Z @ Z.T / (q * (1 - q)).sum()
    else:
        W = Z / np.sqrt(q * (1 - q))
        expect = W @ W.T / X.shape[1]
    np.testing.assert_allclose(K, expect, rtol=0, atol=1e-12)
    assert info.coding == "presence" and "dominant" in info.summary()
    assert "coding='dosage'" in info.summary()
    # forced dosage coding keeps the old reading (0/1 dosages)
    Kd, info = grm(X, method=method, coding="dosage", return_info=True)
    assert info.coding == "dosage" and not np.allclose(Kd, K)


def test_detection():
    assert detect_coding(np.array([[0, 1, 2], [1, np.nan, 0]])) == "dosage"
    assert detect_coding(np.array([[0, 0.5, 1.7]])) == "dosage"
    assert detect_coding(np.array([[-1, 0, 1], [1, 1, np.nan]])) == "-101"
    assert detect_coding(np.array([[-1, 1], [1, -0.5]])) == "-101"
    assert detect_coding(np.array([[0, 1], [1, 1]])) == "presence"
    assert detect_coding(np.array([["A", "AG"], ["0", None]], dtype=object)) == "letters"
    assert detect_coding(np.array([["A", "1"], ["0", "2"]], dtype=object)) == "dosage"  # mixed: dosage error


def test_three_allele_snp_dropped_and_counted(tmp_path):
    L = pd.DataFrame({"s1": ["A", "G", "AG", "T"], "s2": ["C", "T", "Y", "C"], "s3": ["G", "G", "A", "A"]},
                     index=["a", "b", "c", "d"])
    K, info = grm(write(L, tmp_path / "g.csv"), return_info=True)
    assert info.multiallelic == 1 and info.snps == 3 and info.snps_used == 2
    assert "1 with more than two alleles" in info.summary()
    ref = grm(pd.DataFrame({"s2": [0, 2, 1, 0], "s3": [0, 0, 2, 2]}, index=list("abcd"), dtype=float))
    np.testing.assert_allclose(K.to_numpy(), ref.to_numpy(), atol=1e-12)
    G = read_genotypes(tmp_path / "g.csv")
    assert list(G.columns) == ["s2", "s3"] and G.attrs["coding"].multiallelic == 1


def test_bad_calls_and_codings(tmp_path):
    bad = write(pd.DataFrame({"s1": ["A", "X"]}, index=["a", "b"]), tmp_path / "bad.csv")
    with pytest.raises(InputError, match=r"SNP 's1' of id 'b' is 'X', not a nucleotide call"):
        grm(bad)
    with pytest.raises(InputError, match="unknown marker coding"):
        grm(np.zeros((2, 2)), coding="abc")
    with pytest.raises(InputError, match=r"must lie in \[-1, 1\]"):
        grm(np.array([[0.0, 2.0], [1.0, 0.0]]), coding="-101")
    with pytest.raises(InputError, match=r"must lie in \[0, 1\]"):
        grm(np.array([[0.0, 2.0], [1.0, 0.0]]), coding="presence")
    with pytest.raises(InputError, match="maf must be"):
        grm(np.array([[0.0, 2.0], [1.0, 0.0]]), maf=0.7)


def test_maf_and_call_rate_filters():
    n = 20
    X = np.zeros((n, 4))
    X[0, 0] = 2.0              # s0: MAF 0.05
    X[:6, 1] = 1.0             # s1: MAF 0.15
    X[:10, 2] = 2.0            # s2: MAF 0.5, but 5 calls missing (call rate 0.75)
    X[10:15, 2] = np.nan
    X[:10, 3] = 1.0            # s3: MAF 0.25, complete
    K, info = grm(X, return_info=True, maf=0.1, call_rate=0.8)
    assert (info.low_maf, info.low_call_rate, info.snps_used) == (1, 1, 2)
    np.testing.assert_allclose(K, grm(X[:, [1, 3]], coding="dosage"), atol=1e-12)
    assert "1 with call rate < 0.8" in info.summary() and "1 with MAF < 0.1" in info.summary()
    _, info = grm(X, return_info=True)  # defaults keep everything
    assert (info.low_maf, info.low_call_rate, info.snps_used) == (0, 0, 4)
    with pytest.raises(InputError, match=r"no informative SNP.*1 with MAF < 0.1\)"):
        grm(X[:, :1], maf=0.1)


def test_cli_coding_options(tmp_path):
    D = dosages(seed=5)
    path = write(as_letters(D, "iupac"), tmp_path / "g.csv")
    res = CliRunner().invoke(main, ["kinship", str(path), "--out", str(tmp_path / "K.csv"), "--maf", "0.05",
                                    "--min-call-rate", "0.5"])
    assert res.exit_code == 0, res.output
    assert "letters coding (detected)" in res.output and "with MAF < 0.05" in res.output
    res = CliRunner().invoke(main, ["kinship", str(path), "--out", str(tmp_path / "K2.csv"),
                                    "--coding", "dosage"])
    assert res.exit_code != 0 and "not a dosage" in res.output


# ----------------------------------------------------------------------------- real files


def test_real_rice_letters(shared_data):
    path = shared_data / "DT_rice" / "GT_rice.csv"
    K, info = grm(path, return_info=True, block_size=64)
    assert K.shape == (413, 413) and info.coding == "letters"
    d = np.diag(K.to_numpy())
    assert np.isfinite(K.to_numpy()).all() and (d > 0).all()
    # inbred lines (almost no heterozygotes): the diagonal is about 1 + F ≈ 2
    assert 1.5 < d.mean() < 2.1


def test_real_wheat_minus101(shared_data):
    K, info = grm(shared_data / "DT_wheat" / "GT_wheat.csv", return_info=True, block_size=512)
    assert K.shape == (599, 599) and info.coding == "-101" and info.snps_used == 1279
    assert abs(np.diag(K.to_numpy()).mean() - 2.0) < 0.05  # inbred lines coded -1/1: 1 + F = 2


def test_real_cpdata_and_dart(shared_data):
    K, info = grm(shared_data / "DT_cpdata" / "GT_cpdata.csv", return_info=True)
    assert K.shape == (363, 363) and info.coding == "-101" and "55 fractional values" in info.summary()
    K, info = grm(shared_data / "bglr_wheat599" / "markers.csv", return_info=True)
    assert info.coding == "presence" and abs(np.diag(K.to_numpy()).mean() - 1.0) < 1e-9
