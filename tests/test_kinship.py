"""Tests for hetvc.kinship (GRM, genotype/kinship I/O, check_kinship) and hetvc.io_utils."""

import os
import warnings

import numpy as np
import pandas as pd
import pytest
from bed_reader import to_bed

from hetvc.errors import InputError
from hetvc.io_utils import atomic_path, atomic_write
from hetvc.kinship import (
    check_ids,
    check_kinship,
    checked_kinship,
    grm,
    read_genotypes,
    read_kinship,
    write_kinship,
)
from hetvc.simulate import simulate_genotypes


# ----------------------------------------------------------------------------- helpers


def tiny():
    """4 individuals × 5 SNPs: one missing call, one monomorphic SNP, one all-missing SNP."""
    X = np.array(
        [
            [0, 1, 2, 1, np.nan],
            [1, 1, 0, 1, np.nan],
            [2, np.nan, 1, 1, np.nan],
            [1, 0, 2, 1, np.nan],
        ],
        dtype=float,
    )
    return X


def explicit_grm(X, method):
    """The textbook formula, written with loops (no blocking, no vectorisation)."""
    n, p = X.shape
    zs, vs = [], []
    for k in range(p):
        col = X[:, k]
        obs = col[~np.isnan(col)]
        if len(obs) == 0 or obs.min() == obs.max():
            continue
        f = obs.mean() / 2
        z = np.array([0.0 if np.isnan(x) else x - 2 * f for x in col])
        zs.append(z)
        vs.append(2 * f * (1 - f))
    K = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if method == "vanraden":
                K[i, j] = sum(z[i] * z[j] for z in zs) / sum(vs)
            else:
                K[i, j] = sum(z[i] * z[j] / v for z, v in zip(zs, vs)) / len(zs)
    return K


def labelled(K, ids):
    return pd.DataFrame(K, index=list(ids), columns=list(ids))


def write_bed(path, X, iids, sids=None):
    sids = sids or [f"s{k}" for k in range(X.shape[1])]
    to_bed(path, np.array(X, dtype=np.float64), properties={"iid": list(iids), "fid": list(iids), "sid": sids})


# ----------------------------------------------------------------------------- GRM


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
def test_grm_matches_explicit_formula(method):
    X = tiny()
    K, info = grm(X, method=method, return_info=True)
    np.testing.assert_allclose(K, explicit_grm(X, method), rtol=0, atol=1e-14)
    assert info.snps == 5 and info.snps_used == 3
    assert info.monomorphic == 1 and info.all_missing == 1
    assert info.missing_calls == 1 + 4
    assert isinstance(K, np.ndarray)
    np.testing.assert_array_equal(K, K.T)


def test_grm_standardized_by_hand():
    # two individuals, one SNP with dosages 0 and 2: p = 0.5, z = (-1, 1), 2p(1-p) = 0.5
    K = grm(np.array([[0.0], [2.0]]))
    np.testing.assert_allclose(K, [[2.0, -2.0], [-2.0, 2.0]])


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
def test_grm_diagonal_mean_is_about_one(method):
    X = simulate_genotypes(300, 3000, rng=7)
    K = grm(X, method=method)
    assert abs(np.diag(K).mean() - 1) < 0.03
    # centred genotypes: rows of K sum to zero
    np.testing.assert_allclose(K.to_numpy().sum(axis=1), 0, atol=1e-10)


@pytest.mark.parametrize("method", ["standardized", "vanraden"])
def test_blockwise_equals_one_block(method):
    rng = np.random.default_rng(3)
    X = rng.binomial(2, 0.3, size=(40, 257)).astype(float)
    X[rng.random(X.shape) < 0.05] = np.nan
    one = grm(X, method=method, block_size=10_000)
    for b in (1, 7, 64, 256):
        np.testing.assert_allclose(grm(X, method=method, block_size=b), one, rtol=0, atol=1e-12)


def test_grm_dataframe_is_labelled_and_ids_select():
    X = simulate_genotypes(20, 100, rng=1)
    K = grm(X)
    assert list(K.index) == list(X.index) and list(K.columns) == list(X.index)
    pick = ["I17", "I03", "I09"]
    sub = grm(X, ids=pick)
    assert list(sub.index) == pick
    np.testing.assert_allclose(sub.to_numpy(), grm(X.loc[pick]).to_numpy(), atol=1e-14)
    with pytest.raises(InputError, match="'nope'"):
        grm(X, ids=["I01", "nope"])


def test_grm_bad_input():
    X = tiny()
    X[2, 0] = 3
    with pytest.raises(InputError, match=r"row 2 at SNP column 0 is 3"):
        grm(X)
    df = pd.DataFrame([[0, 1], [2, -1.0]], index=["a", "b"], columns=["s1", "s2"])
    with pytest.raises(InputError, match=r"'b' at SNP 's2'"):
        grm(df)
    with pytest.raises(InputError, match="unknown GRM method"):
        grm(tiny(), method="gcta")
    with pytest.raises(InputError, match="block_size"):
        grm(tiny(), block_size=0)
    with pytest.raises(InputError, match="no informative SNP"):
        grm(np.ones((3, 4)))


# ----------------------------------------------------------------------------- PLINK


def test_plink_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    X = rng.binomial(2, 0.4, size=(12, 30)).astype(float)
    X[rng.random(X.shape) < 0.1] = np.nan
    iids = [f"ind{i}" for i in range(12)]
    bed = tmp_path / "geno.bed"
    write_bed(bed, X, iids)
    for path in (bed, tmp_path / "geno", str(tmp_path / "geno")):
        G = read_genotypes(path)
        assert list(G.index) == iids
        assert list(G.columns) == [f"s{k}" for k in range(30)]
        np.testing.assert_array_equal(G.to_numpy(), X)  # NaN positions included
    # ids select and order by label
    G = read_genotypes(bed, ids=["ind5", "ind0"])
    np.testing.assert_array_equal(G.to_numpy(), X[[5, 0]])
    # GRM streamed from the file equals the in-memory GRM, in any block size
    ref = grm(pd.DataFrame(X, index=iids))
    for b in (1, 8, 100):
        K = grm(bed, block_size=b)
        np.testing.assert_allclose(K.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)
        assert list(K.index) == iids
    K = grm(tmp_path / "geno", ids=["ind3", "ind1"])
    np.testing.assert_allclose(K.to_numpy(), grm(pd.DataFrame(X[[3, 1]], index=["ind3", "ind1"])).to_numpy(),
                               atol=1e-14)


def test_plink_id_mismatch_is_clear(tmp_path):
    X = np.array([[0, 1, 2], [1, 1, 0], [2, 0, 1]], dtype=float)
    write_bed(tmp_path / "g.bed", X, ["a", "b", "c"])
    pheno_ids = ["a", "b", "z9"]
    with pytest.raises(InputError) as err:
        read_genotypes(tmp_path / "g.bed", ids=pheno_ids)
    msg = str(err.value)
    assert "'z9'" in msg and "g.fam" in msg and "\n" not in msg


@pytest.mark.parametrize("ext", [".bim", ".fam"])
def test_plink_missing_companion_file(tmp_path, ext):
    X = np.array([[0, 1], [1, 2]], dtype=float)
    write_bed(tmp_path / "g.bed", X, ["a", "b"])
    os.remove(tmp_path / f"g{ext}")
    with pytest.raises(InputError, match=rf"g\{ext} is missing"):
        read_genotypes(tmp_path / "g")
    with pytest.raises(InputError, match=rf"g\{ext} is missing"):
        grm(tmp_path / "g.bed")


def test_plink_missing_bed_and_duplicate_iids(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        read_genotypes(tmp_path / "none.bed")
    with pytest.raises(InputError, match="does not exist"):
        read_genotypes(tmp_path / "none")
    write_bed(tmp_path / "d.bed", np.array([[0, 1], [1, 2]], dtype=float), ["a", "a"])
    with pytest.raises(InputError, match="'a' appears more than once"):
        read_genotypes(tmp_path / "d.bed")


# ----------------------------------------------------------------------------- CSV dosages


def test_csv_dosages(tmp_path):
    path = tmp_path / "g.csv"
    path.write_text("snpA,id,snpB\n0,007,2\n1,b,\n2,c,1\n")
    G = read_genotypes(path)
    assert list(G.index) == ["007", "b", "c"]  # ids stay strings, leading zeros kept
    assert list(G.columns) == ["snpA", "snpB"]
    assert np.isnan(G.loc["b", "snpB"])
    G2 = read_genotypes(path, ids=["c", "007"])
    assert list(G2.index) == ["c", "007"]
    np.testing.assert_allclose(grm(path).to_numpy(), grm(G).to_numpy(), atol=1e-14)

    tsv = tmp_path / "g.tsv"
    tsv.write_text("name\ts1\ts2\nx\t0\t1\ny\t2\t1\n")
    assert list(read_genotypes(tsv).index) == ["x", "y"]  # first column when no 'id'
    assert list(read_genotypes(tsv, id_column="name").index) == ["x", "y"]


def test_csv_dosage_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,s1,s2\na,0,1\nb,AA,2\n")
    with pytest.raises(InputError, match=r"SNP 's1' of id 'b' is 'AA'"):
        read_genotypes(bad)
    dup = tmp_path / "dup.csv"
    dup.write_text("id,s1\na,0\na,1\n")
    with pytest.raises(InputError, match="'a' appears more than once"):
        read_genotypes(dup)
    ok = tmp_path / "ok.csv"
    ok.write_text("id,s1\na,0\nb,1\n")
    with pytest.raises(InputError, match="no column 'sample'"):
        read_genotypes(ok, id_column="sample")
    with pytest.raises(InputError, match="'q'"):
        read_genotypes(ok, ids=["a", "q"])
    with pytest.raises(InputError, match="cannot tell the format"):
        (tmp_path / "g.xyz").write_text("")
        read_genotypes(tmp_path / "g.xyz")


# ----------------------------------------------------------------------------- kinship files


@pytest.mark.parametrize("name", ["K.csv", "K.npy", "K.csv.gz", "K.tsv"])
def test_kinship_round_trip(tmp_path, name):
    K = grm(simulate_genotypes(15, 60, rng=2))
    path = write_kinship(K, tmp_path / name)
    back = read_kinship(path)
    np.testing.assert_array_equal(back.to_numpy(), K.to_numpy())  # exact, full precision
    assert list(back.index) == list(K.index) and list(back.columns) == list(K.index)
    if name == "K.npy":
        assert (tmp_path / "K.npy.ids").read_text().splitlines() == list(K.index)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp-")]


def test_kinship_csv_layout(tmp_path):
    K = labelled([[1.0, 0.5], [0.5, 1.0]], ["01", "b"])
    write_kinship(K, tmp_path / "K.csv")
    lines = (tmp_path / "K.csv").read_text().splitlines()
    assert lines == ["id,01,b", "01,1.0,0.5", "b,0.5,1.0"]
    assert list(read_kinship(tmp_path / "K.csv").index) == ["01", "b"]


def test_kinship_file_errors(tmp_path):
    K = labelled(np.eye(3), ["a", "b", "c"])
    write_kinship(K, tmp_path / "K.npy")
    os.remove(tmp_path / "K.npy.ids")
    with pytest.raises(InputError, match=r"K\.npy\.ids"):
        read_kinship(tmp_path / "K.npy")
    (tmp_path / "K.npy.ids").write_text("a\nb\n")
    with pytest.raises(InputError, match="2 ids but kinship"):
        read_kinship(tmp_path / "K.npy")
    with pytest.raises(InputError, match="does not exist"):
        read_kinship(tmp_path / "none.csv")
    with pytest.raises(InputError, match="cannot tell the format"):
        write_kinship(K, tmp_path / "K.txt")
    (tmp_path / "asym.csv").write_text("id,a,b\na,1,0.5\nb,0.4,1\n")
    with pytest.raises(InputError, match=r"asym\.csv is not symmetric"):
        read_kinship(tmp_path / "asym.csv")


# ----------------------------------------------------------------------------- check_kinship


def good():
    return labelled([[1.0, 0.5, 0.1], [0.5, 1.0, 0.2], [0.1, 0.2, 1.0]], ["a", "b", "c"])


def test_check_kinship_accepts_and_cleans():
    out = check_kinship(good())
    np.testing.assert_array_equal(out.to_numpy(), good().to_numpy())
    # integer labels become strings
    K = pd.DataFrame(np.eye(2), index=[1, 2], columns=[1, 2])
    assert list(check_kinship(K).index) == ["1", "2"]
    # columns in another order are reordered by label
    shuffled = good()[["c", "a", "b"]]
    np.testing.assert_array_equal(check_kinship(shuffled).to_numpy(), good().to_numpy())
    # tiny asymmetry is symmetrised
    K = good()
    K.iloc[0, 1] += 1e-12
    out = check_kinship(K).to_numpy()
    np.testing.assert_array_equal(out, out.T)
    # a singular PSD GRM passes unchanged
    G = grm(simulate_genotypes(30, 20, rng=4))
    np.testing.assert_array_equal(check_kinship(G).to_numpy(), G.to_numpy())


def test_check_kinship_errors():
    with pytest.raises(InputError, match="labelled table"):
        check_kinship(np.eye(2))
    with pytest.raises(InputError, match=r"2×3, not square"):
        check_kinship(pd.DataFrame(np.ones((2, 3)), index=["a", "b"], columns=["a", "b", "c"]))
    with pytest.raises(InputError, match="'a' appears more than once in the rows"):
        check_kinship(labelled(np.eye(2), ["a", "a"]))
    K = pd.DataFrame(np.eye(2), index=["a", "b"], columns=["b", "b"])
    with pytest.raises(InputError, match="'b' appears more than once in the columns"):
        check_kinship(K)
    K = pd.DataFrame(np.eye(2), index=["a", "b"], columns=["a", "x"])
    with pytest.raises(InputError, match="'b' labels a row of K but no column"):
        check_kinship(K)
    K = good()
    K.loc["b", "c"] = np.nan
    with pytest.raises(InputError, match=r"K\['b', 'c'\] is nan"):
        check_kinship(K)
    K = good()
    K.loc["c", "c"] = np.inf
    with pytest.raises(InputError, match=r"K\['c', 'c'\] is inf"):
        check_kinship(K)
    K = good().astype(object)
    K.loc["a", "b"] = "x"
    with pytest.raises(InputError, match=r"K\['a', 'b'\] is 'x', not a number"):
        check_kinship(K)
    K = good()
    K.loc["c", "a"] = 0.3  # worst pair is (a, c)
    K.loc["b", "a"] = 0.5 + 1e-3
    with pytest.raises(InputError, match=r"MyK is not symmetric: MyK\['a', 'c'\] = 0.1 but MyK\['c', 'a'\] = 0.3"):
        check_kinship(K, name="MyK")
    with pytest.raises(InputError, match="all zeros"):
        check_kinship(labelled(np.zeros((2, 2)), ["a", "b"]))
    with pytest.raises(InputError, match="'z'"):
        check_kinship(good(), ids=["a", "z"])


def test_check_kinship_not_psd_and_jitter():
    bad = labelled([[1.0, 0.9, -0.9], [0.9, 1.0, 0.9], [-0.9, 0.9, 1.0]], ["a", "b", "c"])
    lam = np.linalg.eigvalsh(bad.to_numpy())[0]
    assert lam < 0
    with pytest.raises(InputError, match="not positive semi-definite") as err:
        check_kinship(bad)
    assert "jitter" in str(err.value)
    with pytest.warns(UserWarning, match="added"):
        fixed = check_kinship(bad, jitter=0.01)
    new = np.linalg.eigvalsh(fixed.to_numpy())
    np.testing.assert_allclose(new[0], 0.01 * 1.0, atol=1e-12)  # jitter × mean diagonal
    np.testing.assert_allclose(fixed.to_numpy() - bad.to_numpy(), (0.01 - lam) * np.eye(3), atol=1e-12)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_kinship(good(), jitter=0.01)  # PSD: untouched, no warning
    with pytest.raises(InputError, match="jitter"):
        check_kinship(bad, jitter=-1)


def test_check_kinship_shares_clean_data_and_never_modifies_the_input():
    G = grm(simulate_genotypes(30, 20, rng=4))
    out = check_kinship(G)
    assert np.shares_memory(out.to_numpy(), G.to_numpy())  # clean: no copy of a large matrix
    K = good()
    K.iloc[0, 1] += 1e-12
    before = K.to_numpy().copy()
    out = check_kinship(K)
    np.testing.assert_array_equal(K.to_numpy(), before)  # the copy was symmetrised, not K
    assert not np.shares_memory(out.to_numpy(), K.to_numpy())


def test_checked_frame_and_callers_frame_stay_independent_and_editable():
    """The result may share K's data, but an edit of either frame never reaches the other."""
    G = grm(simulate_genotypes(30, 20, rng=4))
    before = G.to_numpy().copy()
    out = check_kinship(G)
    out.iloc[0, 1] = out.iloc[1, 0] = 0.25  # editable
    np.testing.assert_array_equal(G.to_numpy(), before)
    out2 = check_kinship(G)
    G.iloc[0, 1] = G.iloc[1, 0] = -3.0
    np.testing.assert_array_equal(out2.to_numpy(), before)
    values, _ = checked_kinship(out2)  # still matches its digest: not checked again
    np.testing.assert_array_equal(values, before)


def test_checked_kinship_reuses_a_check_while_k_is_unchanged(monkeypatch):
    import hetvc.kinship.check as kinship  # check_kinship calls the psd_certificate of this module

    G = grm(simulate_genotypes(30, 20, rng=4))
    K = check_kinship(G)
    calls = []
    real = kinship.psd_certificate
    monkeypatch.setattr(kinship, "psd_certificate", lambda *a, **k: calls.append(1) or real(*a, **k))
    values, ids = checked_kinship(K)
    assert calls == [] and ids == list(K.index) and values.flags.c_contiguous
    assert np.shares_memory(values, K.to_numpy())
    # an unchecked frame, or one changed after its check, is checked (again)
    checked_kinship(G)
    assert calls == [1]
    changed = K.copy()
    changed.iloc[0, 1] = changed.iloc[1, 0] = 5.0
    with pytest.raises(InputError, match="not positive semi-definite"):
        checked_kinship(changed)
    checked_kinship(K.iloc[::-1, ::-1])  # same matrix in another order: other contents
    assert len(calls) == 3
    # scaling keeps the mark (a positive multiple of a valid kinship is valid)
    half = kinship.scale_kinship(K, 0.5)
    np.testing.assert_array_equal(half.to_numpy(), 0.5 * K.to_numpy())
    checked_kinship(half)
    assert len(calls) == 3
    with pytest.raises(InputError, match="positive number"):
        kinship.scale_kinship(K, -1)


def test_check_ids_message():
    with pytest.raises(InputError) as err:
        check_ids(["a", "x", "y", "z", "w"], ["a", "b"], what="pheno.csv", where="K.csv")
    msg = str(err.value)
    assert msg.startswith("4 id(s) of pheno.csv are not in K.csv (first: 'x', 'y', 'z', ...)")
    check_ids([1, 2], ["1", "2", "3"])  # compared as strings


# ----------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_on_success_only(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_write(target) as fh:
        fh.write("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("boom")
    assert target.read_text() == "new"
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "other.bin") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError
    assert not (tmp_path / "other.bin").exists()
    assert sorted(os.listdir(tmp_path)) == ["out.txt"]
    with atomic_write(tmp_path / "b.bin", "wb") as fh:
        fh.write(b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    with pytest.raises(InputError, match="does not exist"):
        with atomic_write(tmp_path / "nofolder" / "x.txt"):
            pass
