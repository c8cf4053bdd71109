"""Cross-validation schemes and cross_validate (hetvc.cv)."""

import numpy as np
import pandas as pd
import pytest

from hetvc.cv import cross_validate, cv0, cv00, cv1, cv2
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
    # CV0: heterogeneous cannot predict an unseen environment -> failed, left out
    fits = res.fits[res.fits["scheme"] == "CV0"]
    assert fits.loc[fits["model"] == "heterogeneous", "status"].str.startswith("failed").all()
    assert (fits.loc[fits["model"] == "homogeneous", "status"] == "ok").all()
    cv0_rows = t[t["scheme"] == "CV0"]
    assert set(cv0_rows["model"]) == {"homogeneous"}
    assert cv0_rows.loc[cv0_rows["env"] != "mean", "se"].isna().all()
    assert (cv0_rows.loc[cv0_rows["env"] != "mean", "n_folds"] == 1).all()


def test_accuracy(sim):
    res = cross_validate(sim.pheno, sim.K, "t1", "env", schemes=("cv2",), models=("homogeneous",))
    acc = res.accuracy()
    assert np.allclose(acc["accuracy"], acc["r"] / np.sqrt(acc["h2"]))
    assert acc["h2"].notna().all()
    assert np.allclose(res.accuracy(0.25)["accuracy"], 2 * res.table()["r"])
