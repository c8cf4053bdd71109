"""Self-checks of the independent reference in tests/reference.py (no hetvc import)."""

import math

import numpy as np
import pandas as pd
import pytest

from reference import (
    build_problem,
    build_V,
    build_V_loop,
    loglik_from_V,
    make_problem,
    reference_fit,
    reference_loglik,
    reference_score,
)

LOG2PI = math.log(2 * math.pi)
TR2 = ["y1", "y2"]


def _blockdiag(blocks):
    d = sum(b.shape[0] for b in blocks)
    M = np.zeros((d, d))
    k = 0
    for b in blocks:
        M[k:k + b.shape[0], k:k + b.shape[0]] = b
        k += b.shape[0]
    return M


@pytest.mark.parametrize("genetic", ["homogeneous", "heterogeneous", "unstructured"])
@pytest.mark.parametrize("residual", ["homogeneous", "heterogeneous"])
def test_V_vectorised_equals_loop(genetic, residual):
    data, K, G, E = make_problem(3, n_geno=8, n_env=3, n_traits=2, genetic=genetic,
                                 residual=residual, missing=0.2, reps=2, p_env=0.7,
                                 n_untested=2)
    prob = build_problem(data, K, TR2, "env", "id", genetic, residual)
    assert np.array_equal(build_V(prob, G, E), build_V_loop(prob, G, E))


def test_V_elements_by_hand():
    # two genotypes, two environments, two traits; record 2 misses trait y2
    K = pd.DataFrame([[1.0, 0.3, 0.1], [0.3, 1.2, 0.0], [0.1, 0.0, 1.0]],
                     index=["a", "b", "c"], columns=["a", "b", "c"])
    data = pd.DataFrame({"id": ["a", "a", "b", "a"], "env": ["E2", "E1", "E1", "E1"],
                         "y1": [1.0, 2.0, 3.0, 4.0], "y2": [0.5, np.nan, 1.5, 2.5]})
    G = np.array([[1.0, 0.2, 0.3, 0.4], [0.2, 2.0, 0.5, 0.6],
                  [0.3, 0.5, 3.0, 0.7], [0.4, 0.6, 0.7, 4.0]])
    E = _blockdiag([np.array([[0.5, 0.1], [0.1, 0.6]]), np.array([[0.7, 0.2], [0.2, 0.8]])])
    prob = build_problem(data, K, TR2, "env", "id", "unstructured", "heterogeneous")
    # observed values: (r0,y1,E2,a) (r0,y2,E2,a) (r1,y1,E1,a) (r2,y1,E1,b) (r2,y2,E1,b)
    #                  (r3,y1,E1,a) (r3,y2,E1,a)
    assert prob.N == 7 and prob.envs == ["E1", "E2"]
    assert list(prob.rec) == [0, 0, 1, 2, 2, 3, 3]
    V = build_V(prob, G, E)
    # same record, E2, y1 x y2: K[a,a] G[(E2,y1),(E2,y2)] + E_E2[y1,y2]
    assert V[0, 1] == pytest.approx(1.0 * 0.7 + 0.2)
    # record 0 (E2,y1) with record 1 (E1,y1), same genotype a: K[a,a] G[(E2,y1),(E1,y1)]
    assert V[0, 2] == pytest.approx(1.0 * 0.3)
    # record 1 and record 3: same genotype, same env, different records: no residual
    assert V[2, 5] == pytest.approx(1.0 * 1.0)
    # genotype a (E1,y1) with genotype b (E1,y2): K[a,b] G[(E1,y1),(E1,y2)]
    assert V[2, 4] == pytest.approx(0.3 * 0.2)
    # a diagonal: K[b,b] G[(E1,y2),(E1,y2)] + E_E1[y2,y2]
    assert V[4, 4] == pytest.approx(1.2 * 2.0 + 0.6)
    # X: cells (E1,y1) (E1,y2) (E2,y1) (E2,y2)
    assert prob.X.shape == (7, 4)
    # homogeneous genetic: the same Sigma_g across environments
    Sg = np.array([[1.0, 0.2], [0.2, 2.0]])
    prob_h = build_problem(data, K, TR2, "env", "id", "homogeneous", "homogeneous")
    Vh = build_V(prob_h, Sg, np.array([[0.5, 0.1], [0.1, 0.6]]))
    assert Vh[0, 2] == pytest.approx(1.0 * 1.0)
    assert Vh[0, 1] == pytest.approx(1.0 * 0.2 + 0.1)


def _gblup_loglik_eigen(y, Kobs, sg2, se2, method):
    """Single trait, one record per genotype, X = 1: via the eigendecomposition of K."""
    d, U = np.linalg.eigh(Kobs)
    w = sg2 * d + se2  # eigenvalues of V
    ys = U.T @ y
    xs = U.T @ np.ones(len(y))
    n = len(y)
    xVx = np.sum(xs * xs / w)
    xVy = np.sum(xs * ys / w)
    yPy = np.sum(ys * ys / w) - xVy**2 / xVx
    if method == "reml":
        return -0.5 * ((n - 1) * LOG2PI + np.sum(np.log(w)) + math.log(xVx) + yPy)
    return -0.5 * (n * LOG2PI + np.sum(np.log(w)) + yPy)


@pytest.mark.parametrize("method", ["reml", "ml"])
def test_gblup_equals_eigen_formula(method):
    data, K, G, E = make_problem(5, n_geno=25, n_env=1, n_traits=1,
                                 genetic="homogeneous", n_untested=3)
    data = data.sample(frac=1.0, random_state=1).reset_index(drop=True)  # shuffle rows
    ids = list(data["id"])
    y = data["y1"].to_numpy()
    sg2, se2 = 0.7, 1.3
    expect = _gblup_loglik_eigen(y, K.loc[ids, ids].to_numpy(), sg2, se2, method)
    got = reference_loglik(data, K, ["y1"], "env", "id", "homogeneous", "homogeneous",
                           np.array([[sg2]]), np.array([[se2]]), method=method)
    assert got == pytest.approx(expect, abs=1e-9)


def test_reml_minus_ml_intercept():
    data, K, G, E = make_problem(6, n_geno=20, n_env=1, n_traits=1, genetic="homogeneous")
    args = (data, K, ["y1"], "env", "id", "homogeneous", "homogeneous",
            np.array([[0.4]]), np.array([[0.9]]))
    reml = reference_loglik(*args, method="reml")
    ml = reference_loglik(*args, method="ml")
    prob = build_problem(data, K, ["y1"], "env", "id", "homogeneous", "homogeneous")
    V = build_V(prob, np.array([[0.4]]), np.array([[0.9]]))
    one = np.ones(prob.N)
    known = 0.5 * LOG2PI - 0.5 * math.log(one @ np.linalg.inv(V) @ one)
    assert reml - ml == pytest.approx(known, abs=1e-10)


def test_reml_minus_ml_general_X():
    data, K, G, E = make_problem(7, n_geno=10, n_env=2, n_traits=2, missing=0.15,
                                 n_covariates=1)
    kw = dict(G=G, E=E, covariates=["x1"])
    reml = reference_loglik(data, K, TR2, "env", "id", "heterogeneous", "homogeneous", **kw)
    ml = reference_loglik(data, K, TR2, "env", "id", "heterogeneous", "homogeneous",
                          method="ml", **kw)
    prob = build_problem(data, K, TR2, "env", "id", "heterogeneous", "homogeneous", ["x1"])
    assert prob.p == 2 * 2 + 2
    Vi = np.linalg.inv(build_V(prob, G, E))
    logdet = np.linalg.slogdet(prob.X.T @ Vi @ prob.X)[1]
    assert reml - ml == pytest.approx(0.5 * prob.p * LOG2PI - 0.5 * logdet, abs=1e-9)


def test_invariances_and_structure_nesting():
    data, K, G, E = make_problem(8, n_geno=10, n_env=3, n_traits=2, missing=0.1, reps=2,
                                 p_env=0.8, genetic="homogeneous")
    base = reference_loglik(data, K, TR2, "env", "id", "homogeneous", "homogeneous", G, E)
    # row order and extra genotypes in K do not matter
    perm = data.sample(frac=1.0, random_state=2).reset_index(drop=True)
    assert reference_loglik(perm, K, TR2, "env", "id", "homogeneous", "homogeneous",
                            G, E) == pytest.approx(base, abs=1e-9)
    # homogeneous == unstructured with J_L (x) Sigma_g; == heterogeneous residual with
    # the same E in every block
    GJ = np.kron(np.ones((3, 3)), G)
    EB = np.kron(np.eye(3), E)
    assert reference_loglik(data, K, TR2, "env", "id", "unstructured", "heterogeneous",
                            GJ, EB) == pytest.approx(base, abs=1e-9)
    # categorical environment order is honoured: reversing the categories and permuting
    # the (block-diagonal) G accordingly gives the same likelihood
    Gb = _blockdiag([G, 2 * G, 3 * G])
    ll1 = reference_loglik(data, K, TR2, "env", "id", "heterogeneous", "homogeneous", Gb, E)
    cat = data.copy()
    cat["env"] = pd.Categorical(cat["env"], categories=["E3", "E2", "E1", "E9"])
    Gr = _blockdiag([3 * G, 2 * G, G])
    ll2 = reference_loglik(cat, K, TR2, "env", "id", "heterogeneous", "homogeneous", Gr, E)
    assert ll2 == pytest.approx(ll1, abs=1e-9)
    assert ll2 != pytest.approx(
        reference_loglik(cat, K, TR2, "env", "id", "heterogeneous", "homogeneous", Gb, E))


def test_rank_deficient_X_raises():
    data, K, G, E = make_problem(9, n_geno=6, n_env=2, n_traits=2)
    data["c"] = (data["env"] == "E1").astype(float)  # collinear with the cell means
    with pytest.raises(ValueError, match="full column rank"):
        build_problem(data, K, TR2, "env", "id", "homogeneous", "homogeneous", ["c"])


def test_make_problem():
    data, K, G, E = make_problem(10, n_geno=30, n_env=3, n_traits=3, missing=0.25,
                                 p_env=0.5, n_untested=4, reps=2)
    assert K.shape == (34, 34) and list(K.index) == list(K.columns)
    assert np.all(np.linalg.eigvalsh(K.to_numpy()) > 0)
    assert set(data["id"]) <= set(K.index[:30])
    Y = data[["y1", "y2", "y3"]].to_numpy()
    assert np.all((~np.isnan(Y)).sum(axis=1) >= 1)  # never a whole record
    assert np.isnan(Y).mean() == pytest.approx(0.25, abs=0.01)
    assert G.shape == (9, 9) and np.allclose(G[:3, 3:], 0.0)
    assert E.shape == (3, 3)
    assert data.groupby(["id", "env"]).size().eq(2).all()


def _negll_chol(res):
    par = res["param"]
    prob = par.prob

    def f(theta):
        G, E = par.to_GE(theta)
        return -loglik_from_V(build_V(prob, G, E), prob.X, prob.y)
    return f


@pytest.mark.parametrize("genetic,residual", [("heterogeneous", "homogeneous"),
                                              ("homogeneous", "heterogeneous")])
def test_fit_tiny(genetic, residual):
    data, K, G, E = make_problem(11, n_geno=15, n_env=2, n_traits=2, genetic=genetic,
                                 residual=residual, missing=0.1)
    args = (data, K, TR2, "env", "id", genetic, residual)
    res = reference_fit(*args)
    assert res["success"]
    # at least as good as the truth
    assert res["loglik"] >= reference_loglik(*args, G=G, E=E) - 1e-9
    # the reported loglik is the likelihood of the reported matrices
    assert reference_loglik(*args, G=res["G"], E=res["E"]) == pytest.approx(
        res["loglik"], abs=1e-10)
    # finite-difference gradient in Cholesky coordinates is ~0
    f = _negll_chol(res)
    x = res["theta"]
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = 1e-5
        assert abs((f(x + e) - f(x - e)) / 2e-5) < 1e-4
    # restarting from the solution does not move l
    res2 = reference_fit(*args, start=dict(G=res["G"], E=res["E"]))
    assert res2["loglik"] == pytest.approx(res["loglik"], abs=1e-7)
    # only the diagonal blocks are free for heterogeneous structures
    if genetic == "heterogeneous":
        assert np.all(res["G"][:2, 2:] == 0.0)
    if residual == "heterogeneous":
        assert np.all(res["E"][:2, 2:] == 0.0)
    # PSD estimates (this small problem may put one on the boundary: V stays PD)
    assert np.all(np.linalg.eigvalsh(res["E"]) > -1e-10)
    assert np.all(np.linalg.eigvalsh(res["G"]) > -1e-10)


def test_fit_ml_gblup_score_zero():
    # replicates separate genetic from residual variance: an interior optimum, where the
    # score with respect to the covariance elements is ~0 too
    data, K, G, E = make_problem(12, n_geno=40, n_env=1, n_traits=1, genetic="homogeneous",
                                 reps=2)
    args = (data, K, ["y1"], "env", "id", "homogeneous", "homogeneous")
    lls = {}
    for method in ("reml", "ml"):
        res = reference_fit(*args, method=method)
        assert res["success"]
        assert res["G"][0, 0] > 0.05 and res["E"][0, 0] > 0.05
        s = reference_score(*args, G=res["G"], E=res["E"], method=method)
        assert np.all(np.abs(s.to_numpy()) < 1e-4)
        lls[method] = res
    # ML variance estimates are smaller than REML ones (here: total variance)
    assert (lls["ml"]["G"] + lls["ml"]["E"])[0, 0] < (lls["reml"]["G"] + lls["reml"]["E"])[0, 0]


def test_score_matches_analytic_formula():
    # dl/dtheta_k = -1/2 [tr(P V_k) - y'P V_k P y], V_k = dV/dtheta_k
    data, K, G, E = make_problem(13, n_geno=8, n_env=2, n_traits=2, genetic="unstructured",
                                 residual="heterogeneous", missing=0.1)
    args = (data, K, TR2, "env", "id", "unstructured", "heterogeneous")
    s = reference_score(*args, G=G, E=E)
    assert len(s) == 10 + 6 and s.index[0] == "G[E1:y1,E1:y1]" and s.index[-1] == "E[E2][y2,y2]"
    prob = build_problem(*args)
    V = build_V(prob, G, E)
    Vi = np.linalg.inv(V)
    X = prob.X
    P = Vi - Vi @ X @ np.linalg.inv(X.T @ Vi @ X) @ X.T @ Vi
    Py = P @ prob.y
    expect = []
    for which, pairs in (("G", [(a, b) for a in range(4) for b in range(a, 4)]),
                         ("E", [(0, 0), (0, 1), (1, 1), (2, 2), (2, 3), (3, 3)])):
        for a, b in pairs:
            dG, dE = np.zeros_like(G), np.zeros_like(E)
            D = dG if which == "G" else dE
            D[a, b] = D[b, a] = 1.0
            Vk = build_V(prob, dG, dE)
            expect.append(-0.5 * (np.trace(P @ Vk) - Py @ Vk @ Py))
    assert np.allclose(s.to_numpy(), expect, atol=1e-6, rtol=1e-6)
