"""Tests for hetvc.kinship.pedigree (A, A⁻¹ and inbreeding from a pedigree) and for
`hetvc kinship --pedigree`."""

from functools import lru_cache

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from click.testing import CliRunner

from hetvc.cli import main
from hetvc.errors import InputError
from hetvc.kinship import read_kinship
from hetvc.kinship.pedigree import (Pedigree, inbreeding, looks_like_pedigree, pedigree_inverse,
                                    pedigree_kinship, read_pedigree)

# Offspring listed before their parents, every unknown-parent code, C a parent never listed,
# F a full-sib mating, G parent × offspring, I a half-sib mating, L one known parent.
SMALL = """id,sire,dam
J,F,G
I,D,H
F,D,E
G,A,D
H,A,C
L,H,0
D,A,B
E,A,B
A,0,NA
B,.,
K,*,-
"""


def plain_A(parents: dict) -> pd.DataFrame:
    """A from its recursive definition, ordered by depth (independent of hetvc's ordering)."""
    def par(x):
        return parents.get(x, (None, None))

    @lru_cache(maxsize=None)
    def depth(x):
        return 1 + max((depth(p) for p in par(x) if p), default=-1)

    @lru_cache(maxsize=None)
    def a(x, y):
        if x == y:
            s, d = par(x)
            return 1.0 + (0.5 * a(s, d) if s and d else 0.0)
        if depth(x) > depth(y):
            x, y = y, x  # y is now not an ancestor of x
        return 0.5 * sum(a(x, p) for p in par(y) if p)

    ids = sorted(set(parents) | {p for ps in parents.values() for p in ps if p})
    return pd.DataFrame([[a(x, y) for y in ids] for x in ids], index=ids, columns=ids)


def small_parents():
    rows = [line.split(",") for line in SMALL.strip().splitlines()[1:]]
    unknown = {"0", "NA", ".", "", "*", "-"}
    return {i: tuple(None if p in unknown else p for p in (s, d)) for i, s, d in rows}


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "ped.csv"
    path.write_text(SMALL)
    return path


def write(tmp_path, text, name="p.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_small_pedigree_matches_plain_tabular(small):
    ped = read_pedigree(small)
    assert isinstance(ped, Pedigree) and len(ped) == 12
    assert ped.ids[0] == "C" and ped.founders_added == 1
    pos = {x: k for k, x in enumerate(ped.ids)}
    for k, (s, d) in enumerate(zip(ped.sire, ped.dam)):
        assert s < k and d < k  # parents first (−1 unknown)
    assert ped.ids[pos["L"]] == "L" and ped.sire[pos["L"]] == pos["H"] and ped.dam[pos["L"]] == -1
    assert any("1 parent(s) not listed as animals added as founders: 'C'" in n for n in ped.notes)
    assert any("listed after their offspring moved ahead" in n for n in ped.notes)
    A = pedigree_kinship(small)
    assert list(A.index) == ped.ids and list(A.columns) == ped.ids
    ref = plain_A(small_parents()).loc[A.index, A.columns]
    np.testing.assert_allclose(A.to_numpy(), ref.to_numpy(), rtol=0, atol=1e-12)


def test_inverse_and_inbreeding(small):
    A = pedigree_kinship(small).to_numpy()
    Ainv, ids = pedigree_inverse(small)
    assert isinstance(Ainv, sp.csc_matrix) and ids == read_pedigree(small).ids
    np.testing.assert_allclose(Ainv @ A, np.eye(len(ids)), rtol=0, atol=1e-10)
    np.testing.assert_allclose(Ainv.toarray(), np.linalg.inv(A), rtol=0, atol=1e-10)
    F = inbreeding(small)
    assert list(F.index) == ids
    np.testing.assert_allclose(F.to_numpy(), np.diag(A) - 1, rtol=0, atol=1e-12)
    assert F["F"] == pytest.approx(0.25, abs=1e-15)    # full sibs D × E
    assert F["G"] == pytest.approx(0.25, abs=1e-15)    # parent × offspring A × D
    assert F["I"] == pytest.approx(0.125, abs=1e-15)   # half sibs D × H (sire A)
    assert F[["A", "B", "C", "D", "E", "H", "K", "L"]].eq(0).all()
    assert F["J"] > 0.25


def random_pedigree(n, seed):
    """A shuffled random pedigree with selfing, one-parent animals and repeated matings."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        s = f"a{rng.integers(i)}" if i > 5 and rng.random() < 0.9 else "0"
        d = f"a{rng.integers(max(i - 40, 0), i)}" if i > 5 and rng.random() < 0.9 else "NA"
        if i > 5 and rng.random() < 0.05:
            d = s if s != "0" else d  # selfing
        rows.append((f"a{i}", s, d))
    frame = pd.DataFrame(rows, columns=["animal", "father", "mother"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)


def test_meuwissen_luo_and_inverse_match_tabular_on_random_pedigree():
    frame = random_pedigree(300, seed=3)
    args = dict(id="animal", sire="father", dam="mother")
    A = pedigree_kinship(frame, **args)
    F = inbreeding(frame, **args)
    assert F.max() > 0.3 and (F > 0).sum() > 50
    np.testing.assert_allclose(F.loc[A.index].to_numpy(), np.diag(A) - 1, rtol=0, atol=1e-12)
    Ainv, ids = pedigree_inverse(frame, **args)
    assert ids == list(A.index)
    np.testing.assert_allclose(Ainv @ A.to_numpy(), np.eye(len(ids)), rtol=0, atol=1e-10)
    ped = read_pedigree(frame, **args)
    assert any("used both as sire and as dam" in n for n in ped.notes)


def test_positions_and_dataframes(small):
    by_id = read_pedigree(pd.DataFrame({"id": list("zxyw"), "sire": ["x", "0", "0", "z"],
                                        "dam": ["y", "0", "0", "y"]}))
    by_pos = read_pedigree(pd.DataFrame({"id": list("zxyw"), "sire": [2, np.nan, np.nan, 1],
                                         "dam": ["3", "NA", "0", "3"]}), positions=True)
    assert by_pos.ids == by_id.ids == ["x", "y", "z", "w"]
    assert by_pos.sire.tolist() == by_id.sire.tolist() == [-1, -1, 0, 2]
    assert by_pos.dam.tolist() == by_id.dam.tolist() == [-1, -1, 1, 1]
    # numeric ids in a DataFrame (floats with NaN) are matched as strings, without '.0'
    numeric = pd.DataFrame({"id": [3, 1, 2], "sire": [1.0, np.nan, np.nan], "dam": [2.0, np.nan, 0]})
    ped = read_pedigree(numeric.set_index("id"))
    assert ped.ids == ["1", "2", "3"] and ped.sire.tolist() == [-1, -1, 0] and ped.dam.tolist() == [-1, -1, 1]
    same = read_pedigree(small)
    assert read_pedigree(same) is same


def test_gryphon(shared_data):
    path = shared_data / "DT_gryphon" / "P_gryphon.csv"
    A = pedigree_kinship(path, positions=True)
    ref = pd.read_csv(shared_data / "DT_gryphon" / "A_gryphon.csv", index_col=0)
    ref.index = ref.index.astype(str)
    ref.columns = ref.columns.astype(str)
    assert A.shape == (1309, 1309) and set(A.index) == set(ref.index)
    np.testing.assert_allclose(A.to_numpy(), ref.loc[A.index, A.columns].to_numpy(), rtol=0, atol=1e-10)
    F = inbreeding(path, positions=True)
    np.testing.assert_allclose(F.to_numpy(), np.diag(A) - 1, rtol=0, atol=1e-12)
    Ainv, ids = pedigree_inverse(path, positions=True)
    np.testing.assert_allclose(Ainv @ A.to_numpy(), np.eye(len(ids)), rtol=0, atol=1e-10)
    assert looks_like_pedigree(path)
    with pytest.raises(InputError, match=r"pedigree cycle: .*\(--positions\)$"):
        read_pedigree(path)  # read as ids, the row numbers make animals their own ancestors


@pytest.mark.parametrize("text, message", [
    ("id,sire,dam\nx,0,0\ny,x,0\nx,y,0\n",
     r"p\.csv: id 'x' is listed twice with different parents: data row 1 \(sire unknown, dam unknown\) "
     r"and data row 3 \(sire 'y', dam unknown\)$"),
    ("id,sire,dam\nz,a,0\na,b,0\nb,a,0\n",
     r"p\.csv: pedigree cycle: 'a' → 'b' → 'a' \(an animal is its own ancestor; .*data rows 2, 3\)$"),
    ("id,sire,dam\nq,0,0\na,q,a\n",
     r"p\.csv: pedigree cycle: 'a' → 'a' \(an animal is its own ancestor; .*data rows 2\)$"),
    ("id,sire,dam\n,0,0\n", r"p\.csv, data row 1: no id"),
    ("animal,sire,dam,year\nx,0,0,1\n", r"p\.csv has no column 'id' \(columns: 'animal', 'sire', 'dam', 'year'\)"),
])
def test_errors(tmp_path, text, message):
    with pytest.raises(InputError, match=message):
        read_pedigree(write(tmp_path, text))


def test_position_errors(tmp_path):
    path = write(tmp_path, "animal,sire,dam\nx,NA,NA\ny,1,3\n")
    with pytest.raises(InputError, match=r"p\.csv, data row 2 \(id 'y'\): dam 3 is out of range; "
                                         r"row positions run from 1 to 2$"):
        read_pedigree(path, positions=True)
    with pytest.raises(InputError, match=r"data row 2 \(id 'y'\): sire 'x' is not a row number"):
        read_pedigree(write(tmp_path, "animal,sire,dam\nx,NA,NA\ny,x,1\n"), positions=True)
    with pytest.raises(InputError, match="pedigree file .*none.csv does not exist"):
        read_pedigree(tmp_path / "none.csv")


def test_notes(tmp_path):
    ped = read_pedigree(write(tmp_path, "ID\tS\tD\nc\ta\tb\nc\ta\tb\nd\tb\ta\ne\tf\tg\n", "p.tsv"))
    assert ped.ids == ["a", "b", "f", "g", "c", "d", "e"] and ped.founders_added == 4
    assert ped.notes == [
        f"columns ID, S, D of {tmp_path / 'p.tsv'} taken as id, sire, dam (in that order)",
        "1 repeated row(s) with the same parents dropped",
        "4 parent(s) not listed as animals added as founders: 'a', 'b', 'f', ...",
        "2 id(s) used both as sire and as dam: 'a', 'b' (selfing, or mixed-up sire and dam columns)",
    ]
    clean = read_pedigree(write(tmp_path, "id,sire,dam\na,0,0\nb,0,0\nc,a,b\n"))
    assert clean.notes == [] and clean.founders_added == 0


def test_looks_like_pedigree(tmp_path):
    assert looks_like_pedigree(pd.DataFrame({"id": ["a"], "father": ["0"], "mother": ["0"]}))
    assert looks_like_pedigree(pd.DataFrame({"x": list("abcd"), "y": ["0", "0", "a", "c"], "z": ["", "", "b", "b"]}))
    assert not looks_like_pedigree(pd.DataFrame({"id": list("abc"), "s1": ["0", "1", "2"], "s2": ["2", "", "1"]}))
    assert not looks_like_pedigree(pd.DataFrame({"id": ["a"], "sire": ["0"], "dam": ["0"], "s": ["1"]}))
    assert looks_like_pedigree(write(tmp_path, "animal,sire,dam\nx,NA,NA\n"))
    assert not looks_like_pedigree(write(tmp_path, "id,a,b\nx,0,1\ny,2,1\n", "g.csv"))
    assert not looks_like_pedigree(tmp_path / "none.csv")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_cli_pedigree(small, tmp_path):
    res = run("kinship", "--pedigree", small, "--out", tmp_path / "A.csv", "--inverse", tmp_path / "Ainv.csv")
    assert res.exit_code == 0, res.output
    assert f"pedigree {small}: 12 animals, 4 founders (both parents unknown), 1 parent(s) added as founders" \
        in res.output
    assert "note: 1 parent(s) not listed as animals added as founders: 'C'" in res.output
    F = inbreeding(small)
    assert (f"inbreeding: mean F {F.mean():.4g}, max F {F.max():.4g} ('J'), 4 inbred (F > 0)"
            in res.output)
    A = read_kinship(tmp_path / "A.csv")
    expected = pedigree_kinship(small)
    assert list(A.index) == list(expected.index)
    np.testing.assert_allclose(A.to_numpy(), expected.to_numpy(), rtol=0, atol=0)
    trip = pd.read_csv(tmp_path / "Ainv.csv", dtype={"row_id": str, "col_id": str})
    assert list(trip.columns) == ["row_id", "col_id", "value"]
    pos = {x: k for k, x in enumerate(A.index)}
    r, c = trip["row_id"].map(pos).to_numpy(), trip["col_id"].map(pos).to_numpy()
    assert (r >= c).all() and f"wrote {tmp_path / 'Ainv.csv'} ({len(trip)} non-zeros" in res.output
    low = sp.coo_matrix((trip["value"].to_numpy(), (r, c)), shape=A.shape).toarray()
    full = low + np.tril(low, -1).T
    np.testing.assert_array_equal(full, pedigree_inverse(small)[0].toarray())


def test_cli_pedigree_columns_and_positions(tmp_path):
    path = write(tmp_path, "year,animal,father,mother\n1,x,NA,NA\n1,y,NA,NA\n2,z,1,2\n2,w,3,2\n")
    res = run("kinship", "--pedigree", path, "--id", "animal", "--sire", "father", "--dam", "mother",
              "--positions", "--out", tmp_path / "A.npy")
    assert res.exit_code == 0, res.output
    A = read_kinship(tmp_path / "A.npy")
    assert list(A.index) == ["x", "y", "z", "w"]
    assert A.loc["w", "w"] == 1.25 and A.loc["w", "z"] == 0.75
    res = run("kinship", "--pedigree", path, "--out", tmp_path / "A.csv")
    assert res.exit_code == 2 and "has no column 'id'" in res.output


def test_cli_usage(small, tmp_path):
    for args in ([], [small, "--pedigree", small]):
        res = run("kinship", *args, "--out", tmp_path / "A.csv")
        assert res.exit_code == 2 and "give exactly one of GENOTYPES (a GRM) or --pedigree FILE" in res.output
    res = run("kinship", "--pedigree", small, "--method", "vanraden", "--out", tmp_path / "A.csv")
    assert res.exit_code == 2 and "--method: not with --pedigree (for GENOTYPES only)" in res.output
    res = run("kinship", small, "--positions", "--inverse", tmp_path / "i.csv", "--out", tmp_path / "A.csv")
    assert res.exit_code == 2 and "--positions, --inverse: not with GENOTYPES (for --pedigree only)" in res.output
    res = run("kinship", small, "--out", tmp_path / "A.csv")
    assert res.exit_code == 2
    assert res.output.strip() == (f"error: {small} looks like a pedigree (columns id, sire, dam); "
                                  f"use hetvc kinship --pedigree {small}")
    assert not (tmp_path / "A.csv").exists()
