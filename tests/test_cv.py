"""Cross-validation schemes and cross_validate (hetvc.cv)."""

import json

import numpy as np
import pandas as pd
import pytest

import hetvc

from hetvc.cv import CVResult, cross_validate, cv0, cv00, cv1, cv2, cv2t
from hetvc.errors import HetvcError, InputError
from hetvc.simulate import simulate


@pytest.fixture(scope="module")
def sim():
    return simulate(n=60, traits=1, locations=3, snps=200, h2=0.6, w=0.3, rho=0.5, design="full", seed=1)


@pytest.fixture(scope="module")
def big():
    return simulate(n=200, traits=1, locations=3, snps=500, h2=0.6, w=0.3, rho=0.5, design="full", seed=1)


def _cols(sim):
    return sim.pheno["id"].to_numpy(), sim.pheno["env"].to_numpy()


def test_cv1_hides_whole_lines_each_once(sim):
    ids, envs = _cols(sim)
    folds = cv1(ids, envs, folds=5, seed=3)
    assert len(folds) == 5
    count = pd.Series(0, index=pd.unique(ids))
    for f in folds:
        assert (f.hidden == f.test).all()
        hidden_lines = set(ids[f.hidden])
        assert set(ids[np.isin(ids, list(hidden_lines))]) == hidden_lines
        assert np.isin(ids, list(hidden_lines)).sum() == f.hidden.sum()  # all their records
        for line in hidden_lines:
            count[line] += 1
    assert (count == 1).all()


def test_cv1_fold_table():
    ids = np.repeat(["a", "b", "c", "d"], 2)
    table = pd.DataFrame({"id": ["a", "b", "c", "d"], "fold": [2, 1, 2, 1]})
    folds = cv1(ids, None, fold_table=table)
    assert [set(ids[f.hidden]) for f in folds] == [{"b", "d"}, {"a", "c"}]


def test_cv2_every_fold_every_env_and_lines_seen(sim):
    ids, envs = _cols(sim)
    folds = cv2(ids, envs, folds=5, seed=2)
    total = np.zeros(len(ids), int)
    for f in folds:
        total += f.hidden
        assert set(envs[f.hidden]) == set(envs)
        for e in set(envs):  # stratified: about equal numbers per fold
            assert abs((f.hidden & (envs == e)).sum() - (envs == e).sum() / 5) <= 1
        seen = set(ids[~f.hidden])
        assert set(ids) <= seen  # every line observed somewhere in every fold
    assert (total == 1).all()  # every cell hidden exactly once


def test_cv0_one_env_per_fold(sim):
    ids, envs = _cols(sim)
    folds = cv0(ids, envs)
    assert len(folds) == 3
    for f in folds:
        assert set(envs[f.hidden]) == {f.env}
        assert f.hidden.sum() == (envs == f.env).sum()


def test_cv00_lines_hidden_everywhere(sim):
    ids, envs = _cols(sim)
    folds = cv00(ids, envs, folds=4, seed=1)
    assert len(folds) == 3 * 4
    for f in folds:
        test_lines = set(ids[f.test])
        assert set(envs[f.test]) == {f.env}
        assert f.hidden[envs == f.env].all()
        assert f.hidden[np.isin(ids, list(test_lines))].all()
        assert not f.hidden[~np.isin(ids, list(test_lines)) & (envs != f.env)].any()


def test_hidden_values_never_reach_their_predictions(sim):
    res = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv1", "cv2", "cv0", "cv00"),
                         folds=3, models=("homogeneous",))
    for scheme, folds in (("cv1", cv1), ("cv2", cv2), ("cv0", cv0), ("cv00", cv00)):
        ids, envs = _cols(sim)
        fs = folds(ids, envs) if scheme == "cv0" else folds(ids, envs, folds=3, seed=1)
        for f in fs:
            absurd = sim.pheno.copy()
            absurd.loc[f.hidden, "t1"] = 1e6 * np.arange(1, f.hidden.sum() + 1)
            other = cross_validate(absurd, sim.K, "t1", "env", schemes=(scheme,), folds=3,
                                   models=("homogeneous",))
            a = res.predictions.query("scheme == @scheme.upper() and fold == @f.index")
            b = other.predictions.query("fold == @f.index")
            assert len(a) == f.test.sum() and len(a) == len(b)
            np.testing.assert_allclose(a["predicted"].to_numpy(), b["predicted"].to_numpy(),
                                       rtol=0, atol=1e-10)
            break  # one fold per scheme keeps the test fast


def test_reproducible_from_seed(sim):
    a = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv2",), models=("homogeneous",), seed=7)
    b = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv2",), models=("homogeneous",), seed=7)
    pd.testing.assert_frame_equal(a.predictions, b.predictions)
    # the order of fitting does not change the folds
    c = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv1", "cv2"),
                       models=("heterogeneous", "homogeneous"), seed=7)
    pd.testing.assert_frame_equal(
        a.predictions.reset_index(drop=True),
        c.predictions.query("scheme == 'CV2' and model == 'homogeneous'").reset_index(drop=True))


def test_true_model_predicts(big):
    res = cross_validate(big.pheno, big.K, ["t1"], "env", schemes=("cv1", "cv2"),
                         models=("unstructured",), seed=1)
    t = res.table()
    means = t[t["env"] == "mean"].set_index("scheme")["r"]
    assert means["CV1"] > 0.2 and means["CV2"] > 0.2
    assert (res.fits["status"] == "ok").all()


def test_table_shape_and_mean_row(sim):
    res = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv1", "cv0"),
                         models=("homogeneous", "heterogeneous"), folds=4)
    t = res.table()
    assert list(t.columns) == ["scheme", "model", "env", "trait", "r", "se", "n_folds"]
    cv1_rows = t[t["scheme"] == "CV1"]
    assert len(cv1_rows) == 2 * (3 + 1)
    for model, g in cv1_rows.groupby("model"):
        per_env = g[g["env"] != "mean"]
        assert (per_env["n_folds"] == 4).all()
        assert g.loc[g["env"] == "mean", "r"].item() == pytest.approx(per_env["r"].mean())
    # CV0: a line's prediction in the hidden environment is its mean BLUP over the others
    fits = res.fits[res.fits["scheme"] == "CV0"]
    assert (fits["status"] == "ok").all()
    cv0_rows = t[t["scheme"] == "CV0"]
    assert set(cv0_rows["model"]) == {"homogeneous", "heterogeneous"}
    assert cv0_rows.loc[cv0_rows["env"] != "mean", "se"].isna().all()
    assert (cv0_rows.loc[cv0_rows["env"] != "mean", "n_folds"] == 1).all()
    fold = cv0(*_cols(sim))[0]
    masked = sim.pheno.copy()
    masked.loc[fold.hidden, "t1"] = np.nan
    blups = hetvc.fit(masked, sim.K, "t1", env="env", genetic="heterogeneous").blups()
    assert fold.env not in set(blups["env"])
    expected = blups.groupby("id")["blup"].mean()
    got = res.predictions.query("scheme == 'CV0' and model == 'heterogeneous' and fold == 1")
    np.testing.assert_allclose(got["predicted"], expected[got["id"]].to_numpy(), rtol=0, atol=1e-9)


def test_accuracy(sim):
    res = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv2",), models=("homogeneous",), accuracy=True)
    acc = res.accuracy()
    assert np.allclose(acc["accuracy"], acc["r"] / np.sqrt(acc["h2"]))
    assert acc["h2"].notna().all()
    assert np.allclose(res.accuracy(0.25)["accuracy"], 2 * res.table()["r"])


# -- CV2t, the hand-computed ability, the runner (workers, resume), the CLI ------------------------
@pytest.fixture(scope="module")
def sim2():
    return simulate(n=40, traits=2, locations=2, snps=150, h2=0.6, w=0.3, rho=0.6, design="full", seed=4)


def test_cv2t_hides_each_trait_once_and_keeps_the_others(sim2):
    ids, envs = _cols(sim2)
    folds = cv2t(ids, envs, ["t1", "t2"], folds=4, seed=2)
    assert len(folds) == 8 and {f.trait for f in folds} == {"t1", "t2"}
    for trait in ("t1", "t2"):
        total = sum(f.hidden.astype(int) for f in folds if f.trait == trait)
        assert (total == 1).all()  # every (record, trait) hidden exactly once
    res = cross_validate(sim2.pheno, sim2.K, ["t1", "t2"], "env", schemes="cv2t", folds=4, seed=2,
                         models="unstructured")
    p = res.predictions
    assert len(p) == 2 * len(sim2.pheno)  # each record scored once per trait
    assert (p.groupby(["fold", "trait"]).size() > 0).all()
    with pytest.raises(InputError, match="at least two traits"):
        cv2t(ids, envs, ["t1"])


def test_cv2t_hidden_trait_never_reaches_its_prediction(sim2):
    ids, envs = _cols(sim2)
    fold = cv2t(ids, envs, ["t1", "t2"], folds=4, seed=2)[5]
    kw = dict(schemes="cv2t", folds=4, seed=2, models="unstructured")
    a = cross_validate(sim2.pheno, sim2.K, ["t1", "t2"], "env", **kw).predictions
    absurd = sim2.pheno.copy()
    absurd.loc[fold.hidden, fold.trait] = 1e6
    b = cross_validate(absurd, sim2.K, ["t1", "t2"], "env", **kw).predictions
    sel = (a["fold"] == fold.index) & (a["trait"] == fold.trait)
    np.testing.assert_allclose(a.loc[sel, "predicted"], b.loc[sel, "predicted"], rtol=0, atol=1e-10)
    # the other trait of those records was seen: changing it changes the prediction
    other = "t1" if fold.trait == "t2" else "t2"
    moved = sim2.pheno.copy()
    moved.loc[fold.hidden, other] += 5.0
    c = cross_validate(moved, sim2.K, ["t1", "t2"], "env", **kw).predictions
    assert np.abs(c.loc[sel, "predicted"].to_numpy() - a.loc[sel, "predicted"].to_numpy()).max() > 1e-3


def test_predictive_ability_by_hand():
    """r per fold × env, its mean and SE over folds, and the mean row, against numpy."""
    y = np.array([1.0, 2.0, 3.0, 5.0, 2.0, 1.0, 4.0, 4.5])
    yhat = np.array([1.2, 1.9, 3.5, 4.0, 2.5, 0.5, 3.0, 5.0])
    pred = pd.DataFrame({"scheme": "CV1", "model": "m", "fold": [1, 1, 1, 1, 2, 2, 2, 2],
                         "id": list("abcdefgh"), "env": ["A", "A", "A", "A", "A", "A", "A", "A"],
                         "trait": "y", "observed": y, "predicted": yhat})
    pred = pd.concat([pred, pred.assign(env="B", predicted=yhat[::-1])], ignore_index=True)
    res = CVResult(pred, pd.DataFrame())
    fa = res.fold_abilities().set_index(["fold", "env"])["r"]
    r1a, r2a = np.corrcoef(yhat[:4], y[:4])[0, 1], np.corrcoef(yhat[4:], y[4:])[0, 1]
    r1b, r2b = np.corrcoef(yhat[::-1][:4], y[:4])[0, 1], np.corrcoef(yhat[::-1][4:], y[4:])[0, 1]
    assert fa[(1, "A")] == pytest.approx(r1a, abs=1e-14) and fa[(2, "B")] == pytest.approx(r2b, abs=1e-14)
    t = res.table().set_index("env")
    assert t.loc["A", "r"] == pytest.approx((r1a + r2a) / 2, abs=1e-14)
    assert t.loc["A", "se"] == pytest.approx(abs(r1a - r2a) / 2, abs=1e-14)  # sd/√2 of two values
    fold_means = [(r1a + r1b) / 2, (r2a + r2b) / 2]
    assert t.loc["mean", "r"] == pytest.approx((r1a + r2a + r1b + r2b) / 4, abs=1e-14)
    assert t.loc["mean", "se"] == pytest.approx(abs(fold_means[0] - fold_means[1]) / 2, abs=1e-14)
    assert (t["n_folds"] == 2).all()


def test_same_predictions_with_0_1_and_2_workers(sim, tmp_path):
    kw = dict(schemes=("cv1", "cv2"), folds=3, models=("homogeneous", "heterogeneous"), seed=5)
    runs = [cross_validate(sim.pheno, sim.K, "t1", "env", workers=w, out=tmp_path / f"w{w}", **kw)
            for w in (0, 1, 2)]
    for other in runs[1:]:
        pd.testing.assert_frame_equal(runs[0].predictions, other.predictions)
        pd.testing.assert_frame_equal(runs[0].table(), other.table())
    inline = cross_validate(sim.pheno, sim.K, "t1", "env", **kw)  # no folder: kept in memory
    np.testing.assert_allclose(inline.predictions["predicted"], runs[0].predictions["predicted"], rtol=0, atol=0)
    files = {p.name for p in (tmp_path / "w2").iterdir()}
    assert {"predictions.csv", "fits.csv", "ability.csv", "ability.md", "ability.png", "cv.json", "folds"} <= files


def test_resume_runs_only_what_is_missing_and_refuses_other_settings(sim, tmp_path):
    kw = dict(schemes=("cv1",), folds=3, models=("homogeneous",), seed=5, out=tmp_path)
    first = cross_validate(sim.pheno, sim.K, "t1", "env", **kw)
    folds_dir = tmp_path / "folds"
    (folds_dir / "cv1-02.homogeneous.json").unlink()
    (folds_dir / "cv1-03.homogeneous.json").write_text('{"trunc')  # a damaged file is run again
    stamp = (folds_dir / "cv1-01.homogeneous.json").stat().st_mtime_ns
    again = cross_validate(sim.pheno, sim.K, "t1", "env", **kw)
    assert (folds_dir / "cv1-01.homogeneous.json").stat().st_mtime_ns == stamp  # not refitted
    pd.testing.assert_frame_equal(first.predictions, again.predictions)
    # adding a model runs only that model
    more = cross_validate(sim.pheno, sim.K, "t1", "env", **{**kw, "models": ("homogeneous", "heterogeneous")})
    assert (folds_dir / "cv1-01.homogeneous.json").stat().st_mtime_ns == stamp
    assert set(more.fits["model"]) == {"homogeneous", "heterogeneous"}
    with pytest.raises(HetvcError, match="seed = 5, not 6"):
        cross_validate(sim.pheno, sim.K, "t1", "env", **{**kw, "seed": 6})
    changed = sim.pheno.copy()
    changed.loc[0, "t1"] += 1
    with pytest.raises(HetvcError, match="data ="):
        cross_validate(changed, sim.K, "t1", "env", **kw)


def test_dask_cluster_gives_the_same_predictions(sim, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    kw = dict(schemes=("cv2",), folds=3, models=("homogeneous",), seed=5)
    local = cross_validate(sim.pheno, sim.K, "t1", "env", **kw)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        remote = cross_validate(sim.pheno, sim.K, "t1", "env", scheduler=client, out=tmp_path, **kw)
    np.testing.assert_allclose(remote.predictions["predicted"], local.predictions["predicted"], rtol=0, atol=1e-12)
    assert "Dask" in json.loads((tmp_path / "cv.json").read_text())["runs"][0]["backend"]


def test_inputs_are_checked_once_before_any_fold(sim, tmp_path):
    K_file = tmp_path / "K.csv"
    sim.K.to_csv(K_file)
    kw = dict(schemes="cv1", folds=3, models="homogeneous", seed=2)
    by_frame = cross_validate(sim.pheno, sim.K, "t1", "env", **kw)
    by_path = cross_validate(sim.pheno, str(K_file), "t1", "env", **kw)  # K as hetvc.fit takes it
    np.testing.assert_allclose(by_path.predictions["predicted"], by_frame.predictions["predicted"], atol=1e-9)
    stranger = sim.pheno.copy()
    stranger.loc[0, "id"] = "nobody"
    with pytest.raises(InputError, match="not in the kinship matrix"):  # one line, not a failed fold
        cross_validate(stranger, sim.K, "t1", "env", **kw)
    one_env = sim.pheno[sim.pheno["env"] == sim.pheno["env"].iloc[0]]
    with pytest.raises(InputError, match="at least two environments"):
        cross_validate(one_env, sim.K, "t1", "env", schemes="cv0", models="homogeneous")
    with pytest.raises(InputError, match="seed must be an integer"):
        cross_validate(sim.pheno, sim.K, "t1", "env", seed=None)


def test_a_trait_name_that_is_no_file_name(sim2, tmp_path):
    data = sim2.pheno.rename(columns={"t1": "GY/ha"})
    kw = dict(schemes="cv2t", folds=3, models="unstructured", out=tmp_path)
    first = cross_validate(data, sim2.K, ["GY/ha", "t2"], "env", **kw)
    assert set(first.predictions["trait"]) == {"GY/ha", "t2"}
    again = cross_validate(data, sim2.K, ["GY/ha", "t2"], "env", **kw)  # every fold read back
    pd.testing.assert_frame_equal(first.predictions, again.predictions)
    assert all("/" not in p.name for p in (tmp_path / "folds").iterdir())


def test_a_pedigree_as_k(sim, tmp_path):
    """A pedigree of unrelated founders is the identity: the same predictions as K = I, through
    the sparse A⁻¹, with two workers and a resumable folder."""
    from hetvc.kinship.pedigree import Pedigree

    ids = list(pd.unique(sim.pheno["id"]))
    ped = Pedigree(ids, np.full(len(ids), -1), np.full(len(ids), -1))
    kw = dict(schemes="cv1", folds=3, models="homogeneous", seed=4)
    by_pedigree = cross_validate(sim.pheno, ped, "t1", "env", workers=2, out=tmp_path, **kw)
    by_identity = cross_validate(sim.pheno, None, "t1", "env", **kw)
    np.testing.assert_allclose(by_pedigree.predictions["predicted"], by_identity.predictions["predicted"],
                               rtol=0, atol=1e-8)
    assert set(by_pedigree.fits["engine"]) == {"mme"}
