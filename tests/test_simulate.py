"""Tests for hetvc.simulate: layout of the truth, reproducibility, and that the simulated
data have the requested moments within sampling error over replicates."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from hetvc.errors import InputError
from hetvc.kinship import grm, read_genotypes, read_kinship
from hetvc.simulate import equicorrelation, read_truth, simulate, simulate_genotypes


# ----------------------------------------------------------------------------- genotypes


def test_simulate_genotypes():
    freqs = (0.1, 0.5)
    G = simulate_genotypes(200, 50, freqs, rng=np.random.default_rng(1))
    assert G.shape == (200, 50)
    assert set(np.unique(G.to_numpy())) <= {0, 1, 2}
    assert set(G.attrs["freqs"]) <= set(freqs)
    assert G.attrs["monomorphic_dropped"] == 0
    assert list(G.index[:2]) == ["I001", "I002"]
    # allele frequencies match the drawn ones
    f = np.array(G.attrs["freqs"])
    assert np.abs(G.to_numpy().mean(axis=0) / 2 - f).max() < 0.12
    pd.testing.assert_frame_equal(G, simulate_genotypes(200, 50, freqs, rng=1))


def test_monomorphic_snps_are_dropped_and_counted():
    G = simulate_genotypes(3, 200, (0.05,), rng=0)
    dropped = G.attrs["monomorphic_dropped"]
    assert dropped > 100 and G.shape[1] == 200 - dropped
    X = G.to_numpy()
    assert np.all(X.min(axis=0) != X.max(axis=0))
    with pytest.raises(InputError, match="between 0 and 1"):
        simulate_genotypes(3, 3, (0.0, 0.5))


# ----------------------------------------------------------------------------- layout


def test_truth_layout_and_formulae():
    L, m, h2, w, rho = 3, 2, 0.4, 0.3, 0.25
    s = np.array([1.0, 2.0, 0.5])
    sim = simulate(n=60, traits=m, locations=L, snps=40, h2=h2, w=w, rho=rho, rho_e=-0.2,
                   location_scales=s, seed=11)
    t = sim.truth
    assert t.envs == ["L1", "L2", "L3"] and t.traits == ["t1", "t2"]
    assert t.G_index[:3] == ["L1:t1", "L1:t2", "L2:t1"]
    Cg = h2 * equicorrelation(m, rho)
    Ce = (1 - h2) * equicorrelation(m, -0.2)
    np.testing.assert_allclose(t.Cg, Cg)
    np.testing.assert_allclose(t.E, Ce)
    G = np.zeros((L * m, L * m))
    for l in range(L):
        for l2 in range(L):
            for i in range(m):
                for i2 in range(m):
                    G[l * m + i, l2 * m + i2] = s[l] * s[l2] * ((1 - w) + w * (l == l2)) * Cg[i, i2]
    np.testing.assert_allclose(t.G, G, atol=1e-15)
    assert np.linalg.eigvalsh(t.G).min() > -1e-12
    for l in range(L):
        np.testing.assert_allclose(t.G_env(l), s[l] ** 2 * Cg)
        np.testing.assert_allclose(t.G_env(t.envs[l]), t.G_blocks[l])
        np.testing.assert_allclose(t.h2_by_env[l], s[l] ** 2 * h2 / (s[l] ** 2 * h2 + 1 - h2))
    np.testing.assert_allclose(t.genetic_corr_env, (1 - w) * np.ones((L, L)) + w * np.eye(L))
    pi = sim.pheno["env"].value_counts(normalize=True).reindex(t.envs).to_numpy()
    np.testing.assert_allclose(t.env_shares, pi)
    g = pi @ (s ** 2 * h2)
    np.testing.assert_allclose(t.h2_pooled, g / (g + 1 - h2))
    assert (t.h2, t.w, t.rho, t.rho_e, t.seed) == (h2, w, rho, -0.2, 11)


def test_pheno_layout_and_designs():
    sim = simulate(n=50, traits=3, locations=4, snps=30, covariates=2, seed=2)
    p = sim.pheno
    assert list(p.columns) == ["id", "env", "t1", "t2", "t3", "c1", "c2"]
    assert len(p) == 50 and p["id"].is_unique
    assert sorted(p["env"].value_counts().tolist()) == [12, 12, 13, 13]  # balanced
    assert list(sim.K.index) == list(sim.genotypes.index) == list(p["id"])
    assert sim.genetic_values.shape == (50, 12)
    assert sim.truth.covariate_effects.shape == (2, 3)
    full = simulate(n=20, traits=2, locations=3, snps=30, design="full", seed=2)
    assert len(full.pheno) == 60
    assert full.pheno.groupby("id")["env"].apply(lambda e: sorted(e)).map(tuple).nunique() == 1
    np.testing.assert_allclose(full.truth.env_shares, 1 / 3)
    # 12 locations: labels zero-padded, so sorted order is numeric order
    sim12 = simulate(n=30, locations=12, snps=20, seed=1)
    assert sim12.truth.envs == sorted(sim12.truth.envs) and sim12.truth.envs[0] == "L01"


def test_given_env_K_and_genotypes():
    env = ["north", "south"] * 15
    sim = simulate(n=30, locations=99, snps=30, env=env, seed=4)
    assert sim.truth.envs == ["north", "south"]
    assert list(sim.pheno["env"]) == env
    with pytest.raises(InputError, match="one per individual"):
        simulate(n=30, snps=30, env=env[:-1], seed=4)

    geno = simulate_genotypes(40, 80, rng=3)
    sim = simulate(genotypes=geno, traits=2, locations=2, seed=5)
    np.testing.assert_allclose(sim.K.to_numpy(), grm(geno).to_numpy(), atol=1e-12)
    assert sim.truth.n == 40 and sim.truth.snps == 80

    K = sim.K + 0.05 * np.eye(40)
    simK = simulate(K=K, traits=2, locations=2, seed=5)
    assert simK.genotypes is None and list(simK.pheno["id"]) == list(K.index)
    with pytest.raises(InputError, match="no genotypes"):
        simK.write_plink("x")
    with pytest.raises(InputError, match="not both"):
        simulate(K=K, genotypes=geno)


def test_K_is_grm_of_genotypes():
    sim = simulate(n=80, snps=120, seed=9)
    np.testing.assert_allclose(sim.K.to_numpy(), grm(sim.genotypes).to_numpy(), atol=1e-12)


# ----------------------------------------------------------------------------- reproducibility


def test_same_seed_same_data():
    a = simulate(n=60, snps=40, w=0.5, covariates=1, missing=0.1, seed=123)
    b = simulate(n=60, snps=40, w=0.5, covariates=1, missing=0.1, seed=123)
    pd.testing.assert_frame_equal(a.pheno, b.pheno)
    pd.testing.assert_frame_equal(a.K, b.K)
    pd.testing.assert_frame_equal(a.genotypes, b.genotypes)
    np.testing.assert_array_equal(a.truth.G, b.truth.G)
    c = simulate(n=60, snps=40, w=0.5, covariates=1, missing=0.1, seed=124)
    assert not np.allclose(a.pheno["t1"].fillna(0), c.pheno["t1"].fillna(0))
    # common random numbers: a different w keeps genotypes, locations and residual draws
    d = simulate(n=60, snps=40, w=0.9, covariates=1, missing=0.1, seed=123)
    pd.testing.assert_frame_equal(a.genotypes, d.genotypes)
    assert list(a.pheno["env"]) == list(d.pheno["env"])
    # seed=None draws a seed and records it: re-running with it reproduces the data
    e = simulate(n=30, snps=20)
    pd.testing.assert_frame_equal(e.pheno, simulate(n=30, snps=20, seed=e.truth.seed).pheno)


def test_invalid_parameters():
    for kwargs, pattern in [
        (dict(h2=1.5), "h2"),
        (dict(w=-0.1), "w must be"),
        (dict(rho=-0.6, traits=3), "rho"),
        (dict(location_scales=[1, 2]), "location_scales needs 4"),
        (dict(location_scales=[1, 2, -1, 1]), "location_scales"),
        (dict(design="grid"), "design"),
        (dict(n=1), "n must be"),
        (dict(traits=0), "traits"),
        (dict(missing=1.0), "missing"),
        (dict(location_effects=np.ones((2, 2))), "location_effects"),
        (dict(seed=-1), "seed"),
    ]:
        with pytest.raises(InputError, match=pattern):
            simulate(n=kwargs.pop("n", 20), snps=20, **kwargs)


def test_edge_cases():
    one = simulate(n=40, snps=30, rho=1.0, h2=0.5, location_effects=0, seed=1)
    u = one.genetic_values
    np.testing.assert_allclose(u[("L1", "t1")], u[("L1", "t2")])  # ρ = 1: identical genetic values
    zero = simulate(n=40, snps=30, h2=0.0, seed=1)
    assert np.all(zero.genetic_values.to_numpy() == 0)
    full = simulate(n=40, snps=30, h2=1.0, location_effects=0, seed=1)
    y = full.pheno.set_index("id")
    uu = full.genetic_values
    for j, row in y.iterrows():
        assert row["t1"] == pytest.approx(uu.loc[j, (row["env"], "t1")])  # no residual
    fixed = simulate(n=40, snps=30, location_effects=[1, 2, 3, 4], seed=1)
    np.testing.assert_allclose(fixed.truth.location_means[:, 0], [1, 2, 3, 4])
    miss = simulate(n=400, snps=30, missing=0.25, seed=1)
    share = miss.pheno[["t1", "t2", "t3"]].isna().to_numpy().mean()
    assert 0.2 < share < 0.3


# ----------------------------------------------------------------------------- moments


def _replicates(R, **kwargs):
    for r in range(R):
        yield simulate(seed=1000 + r, **kwargs)


def test_moments_full_design_from_observed_data():
    """Every individual in every location: the sample covariance of the n × (L·m) table of
    phenotypes has expectation G·c_K + (I_L ⊗ Ce)·(1 − 1/n), c_K = tr(K)/n − 1'K1/n²
    (location means removed).  Checked element-wise, within 4.5 standard errors over
    replicates; then the implied cross-location genetic correlation is ≈ 1 − w, the
    genetic share ≈ h² (scaled by s_l²) and the trait correlation ≈ ρ."""
    n, L, m, h2, w, rho = 300, 3, 2, 0.5, 0.6, 0.5
    s = np.array([1.0, 1.5, 0.7])
    R = 40
    D, S_all, cK_all = [], [], []
    for sim in _replicates(R, n=n, traits=m, locations=L, snps=250, h2=h2, w=w, rho=rho,
                           location_scales=s, design="full", location_effects=0.5):
        t = sim.truth
        wide = sim.pheno.pivot(index="id", columns="env", values=t.traits)
        Y = np.column_stack([wide[(tr, e)] for e in t.envs for tr in t.traits])  # index l*m+i
        Yc = Y - Y.mean(axis=0)
        S = Yc.T @ Yc / n
        K = sim.K.to_numpy()
        cK = np.trace(K) / n - K.sum() / n ** 2
        expected = t.G * cK + np.kron(np.eye(L), t.E) * (1 - 1 / n)
        D.append(S - expected)
        S_all.append(S)
        cK_all.append(cK)
    D = np.array(D)
    z = D.mean(axis=0) / (D.std(axis=0, ddof=1) / np.sqrt(R))
    assert np.abs(z).max() < 4.5, z.round(2)

    S = np.mean(S_all, axis=0)
    cK = np.mean(cK_all)
    Ge = (S - np.kron(np.eye(L), sim.truth.E) * (1 - 1 / n)) / cK  # moment estimate of G
    for i in range(m):
        for l in range(L):
            assert Ge[l * m + i, l * m + i] / s[l] ** 2 == pytest.approx(h2, abs=0.06)
            for l2 in range(l + 1, L):
                corr = Ge[l * m + i, l2 * m + i] / np.sqrt(Ge[l * m + i, l * m + i] * Ge[l2 * m + i, l2 * m + i])
                assert corr == pytest.approx(1 - w, abs=0.08)
    for l in range(L):
        b = Ge[l * m:(l + 1) * m, l * m:(l + 1) * m]
        assert b[0, 1] / np.sqrt(b[0, 0] * b[1, 1]) == pytest.approx(rho, abs=0.1)


def test_moments_split_design_residuals_and_genetic_values():
    """One record per individual: the residual e = y − μ − u − Cγ has covariance Ce; the
    true genetic values have u'u / tr(K) ≈ G (their exact expectation), so the share
    h²·s_l² per location, trait correlation ρ and cross-location correlation 1 − w hold."""
    n, L, m, h2, w, rho, rho_e = 400, 2, 3, 0.3, 0.4, 0.25, 0.75
    s = np.array([1.0, 2.0])
    R = 30
    dE, dG = [], []
    for sim in _replicates(R, n=n, traits=m, locations=L, snps=200, h2=h2, w=w, rho=rho,
                           rho_e=rho_e, location_scales=s, covariates=2):
        t = sim.truth
        p = sim.pheno
        Y = p[t.traits].to_numpy()
        l_idx = np.array([t.envs.index(e) for e in p["env"]])
        U = sim.genetic_values.loc[p["id"]].to_numpy().reshape(n, L, m)[np.arange(n), l_idx]
        C = p[t.covariates].to_numpy()
        e = Y - t.location_means[l_idx] - U - C @ t.covariate_effects
        dE.append(e.T @ e / n - t.E)
        u = sim.genetic_values.to_numpy()  # n × (L·m), columns in G's order
        dG.append(u.T @ u / np.trace(sim.K.to_numpy()) - t.G)
    for d in (np.array(dE), np.array(dG)):
        z = d.mean(axis=0) / (d.std(axis=0, ddof=1) / np.sqrt(R))
        assert np.abs(z).max() < 4.5, z.round(2)
    E = t.E + np.mean(dE, axis=0)
    assert np.diag(E) == pytest.approx([1 - h2] * m, abs=0.03)
    assert E[0, 1] / np.sqrt(E[0, 0] * E[1, 1]) == pytest.approx(rho_e, abs=0.03)
    G = t.G + np.mean(dG, axis=0)
    for l in range(L):
        assert G[l * m, l * m] == pytest.approx(s[l] ** 2 * h2, rel=0.1)
    corr = G[0, m] / np.sqrt(G[0, 0] * G[m, m])
    assert corr == pytest.approx(1 - w, abs=0.05)


# ----------------------------------------------------------------------------- output


def test_to_dir(tmp_path):
    sim = simulate(n=40, traits=2, locations=3, snps=60, w=0.6, covariates=1, missing=0.1, seed=3)
    written = sim.to_dir(tmp_path / "out", plink=True)
    names = sorted(p.name for p in written)
    assert names == ["genetic_values.csv", "genotypes.bed", "genotypes.bim", "genotypes.fam",
                     "kinship.csv", "pheno.csv", "truth.json"]
    assert sorted(os.listdir(tmp_path / "out")) == names  # no temporary files left
    pheno = pd.read_csv(tmp_path / "out" / "pheno.csv", dtype={"id": str, "env": str})
    pd.testing.assert_frame_equal(pheno, sim.pheno, check_dtype=False, check_column_type=False,
                                  check_index_type=False)
    K = read_kinship(tmp_path / "out" / "kinship.csv")
    np.testing.assert_array_equal(K.to_numpy(), sim.K.to_numpy())
    G = read_genotypes(tmp_path / "out" / "genotypes")
    np.testing.assert_array_equal(G.to_numpy(), sim.genotypes.to_numpy())
    assert list(G.index) == list(sim.genotypes.index)
    raw = json.loads((tmp_path / "out" / "truth.json").read_text())
    assert raw["G_index"][:2] == ["L1:t1", "L1:t2"] and raw["seed"] == 3
    t = read_truth(tmp_path / "out")
    np.testing.assert_array_equal(t.G, sim.truth.G)
    np.testing.assert_array_equal(t.E, sim.truth.E)
    np.testing.assert_array_equal(t.h2_pooled, sim.truth.h2_pooled)
    np.testing.assert_array_equal(t.covariate_effects, sim.truth.covariate_effects)
    assert t.envs == sim.truth.envs and t.w == 0.6
    gv = pd.read_csv(tmp_path / "out" / "genetic_values.csv", index_col="id")
    assert list(gv.columns)[:3] == ["L1:t1", "L1:t2", "L2:t1"]
    with pytest.raises(InputError, match="not a hetvc simulation"):
        (tmp_path / "x.json").write_text("{}")
        read_truth(tmp_path / "x.json")
