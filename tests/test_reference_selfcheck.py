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


# ----------------------------------------------------------------------------------
# Extra random terms (V += Kt[u(o),u(o')] R_t[c(o),c(o')])
# ----------------------------------------------------------------------------------


def test_V_random_term_by_hand():
    # one environment, two traits; records 0 and 2 share genotype a and block p;
    # record 1 (genotype b, block q) misses y2
    K = pd.DataFrame([[1.0, 0.5], [0.5, 2.0]], index=["a", "b"], columns=["a", "b"])
    data = pd.DataFrame({"id": ["a", "b", "a"], "env": ["E1", "E1", "E1"],
                         "block": ["p", "q", "p"],
                         "y1": [1.0, 2.0, 3.0], "y2": [0.5, np.nan, 1.5]})
    G = np.array([[1.0, 0.2], [0.2, 2.0]])
    E = np.array([[0.5, 0.1], [0.1, 0.6]])
    R = np.array([[0.3, 0.05], [0.05, 0.4]])
    prob = build_problem(data, K, TR2, "env", "id", "homogeneous", "homogeneous",
                         random=[("block", "homogeneous", None)])
    # observed values: (r0,y1,a,p) (r0,y2,a,p) (r1,y1,b,q) (r2,y1,a,p) (r2,y2,a,p)
    assert list(prob.rec) == [0, 0, 1, 2, 2]
    assert prob.random[0].level == ["p", "p", "q", "p", "p"]
    expect = np.array([[1.80, 0.35, 0.50, 1.30, 0.25],
                       [0.35, 3.00, 0.10, 0.25, 2.40],
                       [0.50, 0.10, 2.80, 0.50, 0.10],
                       [1.30, 0.25, 0.50, 1.80, 0.35],
                       [0.25, 2.40, 0.10, 0.35, 3.00]])
    assert np.allclose(build_V(prob, G, E, [R]), expect, atol=1e-12)
    assert np.allclose(build_V_loop(prob, G, E, [R]), expect, atol=1e-12)
    # R = 0 is the model without the term
    prob0 = build_problem(data, K, TR2, "env", "id", "homogeneous", "homogeneous")
    assert np.array_equal(build_V(prob, G, E, [np.zeros((2, 2))]), build_V(prob0, G, E))
    with pytest.raises(ValueError, match="R must hold 1"):
        build_V(prob, G, E)
    # a record with a value but no block level; a record without values may miss it
    bad = data.copy()
    bad.loc[1, "block"] = None
    with pytest.raises(ValueError, match="no level of 'block'"):
        build_problem(bad, K, TR2, "env", "id", "homogeneous", "homogeneous",
                      random=[("block", "homogeneous", None)])
    bad.loc[1, "y1"] = np.nan
    extra = pd.concat([data, bad.iloc[[1]]], ignore_index=True)
    assert build_problem(extra, K, TR2, "env", "id", "homogeneous", "homogeneous",
                         random=[("block", "homogeneous", None)]).N == 5


def _random_R(rng, structure, m, L):
    def spd(d):
        A = rng.normal(size=(d, d))
        return A @ A.T / d + 0.5 * np.eye(d)
    if structure == "homogeneous":
        return spd(m)
    if structure == "heterogeneous":
        return _blockdiag([spd(m) for _ in range(L)])
    if structure == "diagonal":
        return np.diag(rng.uniform(0.2, 1.0, size=L * m))
    return spd(L * m)


@pytest.mark.parametrize("structure", ["homogeneous", "heterogeneous", "diagonal",
                                       "unstructured"])
def test_V_random_vectorised_equals_loop(structure):
    data, K, G, E, _ = make_problem(3, n_geno=6, n_env=2, n_traits=2, missing=0.2,
                                    reps=2, p_env=0.8, blocks=2)
    data["env"] = data["env"].str.lower()
    data["block"] = data["block"].str.slice(3)  # "e1.b1" -> "b1": blocks crossed with env
    random = [("block", structure, None), ("env:block", structure),
              dict(factor="rep", structure=structure, K=None)]
    prob = build_problem(data, K, TR2, "env", "id", "heterogeneous", "homogeneous",
                         random=random)
    assert [t.dim for t in prob.random] == [2 if structure == "homogeneous" else 4] * 3
    assert set(prob.random[0].level) == {"b1", "b2"}
    assert set(prob.random[1].level) == {"e1:b1", "e1:b2", "e2:b1", "e2:b2"}
    assert set(prob.random[2].level) == {"1", "2"}
    rng = np.random.default_rng(0)
    R = [_random_R(rng, structure, 2, 2) for _ in random]
    V = build_V(prob, G, E, R)
    assert np.allclose(V, build_V_loop(prob, G, E, R), rtol=1e-14, atol=1e-14)
    assert np.all(np.linalg.eigvalsh(V) > 0)
    # env:block differs from block: different V
    assert not np.allclose(V, build_V(prob, G, E, [R[0], R[0], R[2]]))
    if structure in ("heterogeneous", "diagonal"):  # an element off the pattern
        full = R[0] + 0.01
        with pytest.raises(ValueError, match="off the"):
            build_V(prob, G, E, [full, R[1], R[2]])


def test_V_random_kernel_labels():
    data, K, G, E, R = make_problem(4, n_geno=6, n_env=2, n_traits=2, missing=0.2,
                                    blocks=3)
    args = (data, K, TR2, "env", "id", "heterogeneous", "homogeneous")
    levels = sorted(set(data["block"]))
    # an identity Kt (shuffled labels, with a level without records) == Kt = None
    lab = levels[::-1] + ["E9.b1"]
    Id = pd.DataFrame(np.eye(len(lab)), index=lab, columns=lab)
    p_none = build_problem(*args, random=[("block", "homogeneous", None)])
    p_id = build_problem(*args, random=[("block", "homogeneous", Id)])
    assert np.array_equal(build_V(p_none, G, E, R), build_V(p_id, G, E, R))
    # a kinship over the levels: labels, not positions, count
    rng = np.random.default_rng(1)
    A = rng.normal(size=(len(levels), len(levels)))
    Kb = pd.DataFrame(A @ A.T + np.eye(len(levels)), index=levels, columns=levels)
    perm = rng.permutation(len(levels))
    Kp = Kb.iloc[perm, perm]
    p_k = build_problem(*args, random=[("block", "homogeneous", Kb)])
    p_kp = build_problem(*args, random=[("block", "homogeneous", Kp)])
    Vk = build_V(p_k, G, E, R)
    assert np.allclose(Vk, build_V(p_kp, G, E, R), rtol=1e-14, atol=1e-14)
    assert np.allclose(Vk, build_V_loop(p_k, G, E, R), rtol=1e-14, atol=1e-14)
    # V - V(no term) is Kt[u(o),u(o')] R[i(o),i(o')]
    zero = np.zeros_like(R[0])
    D = Vk - build_V(p_k, G, E, [zero])
    lv, tr = p_k.random[0].level, p_k.trait
    o, o2 = 0, p_k.N - 1
    assert D[o, o2] == pytest.approx(Kb.loc[lv[o], lv[o2]] * R[0][tr[o], tr[o2]])
    # the same kinship as the genetic one, through the id column: V doubles K (x) G
    p_g = build_problem(data, K, TR2, "env", "id", "homogeneous", "homogeneous",
                        random=[("id", "homogeneous", K)])
    Sg, Se = G[:2, :2], E
    assert np.allclose(build_V(p_g, Sg, Se, [Sg]),
                       build_V(p_g, 2 * Sg, Se, [zero]), rtol=1e-14, atol=1e-14)
    # a level not in Kt
    with pytest.raises(ValueError, match="not in Kt"):
        build_problem(*args, random=[("block", "homogeneous", Kb.iloc[1:, 1:])])


def test_score_with_random_terms_matches_analytic_formula():
    data, K, G, E, R = make_problem(14, n_geno=6, n_env=2, n_traits=2, missing=0.1,
                                    reps=2, blocks=2, genetic="homogeneous")
    random = [("block", "homogeneous", None), ("env:rep", "heterogeneous", None)]
    R = R + [_blockdiag([np.array([[0.4, 0.1], [0.1, 0.3]])] * 2)]
    args = (data, K, TR2, "env", "id", "homogeneous", "homogeneous")
    s = reference_score(*args, G=G, E=E, random=random, R=R)
    assert list(s.index) == ["G[y1,y1]", "G[y1,y2]", "G[y2,y2]",
                             "block[y1,y1]", "block[y1,y2]", "block[y2,y2]",
                             "env:rep[E1][y1,y1]", "env:rep[E1][y1,y2]",
                             "env:rep[E1][y2,y2]", "env:rep[E2][y1,y1]",
                             "env:rep[E2][y1,y2]", "env:rep[E2][y2,y2]",
                             "E[y1,y1]", "E[y1,y2]", "E[y2,y2]"]
    prob = build_problem(*args, random=random)
    Vi = np.linalg.inv(build_V(prob, G, E, R))
    X = prob.X
    P = Vi - Vi @ X @ np.linalg.inv(X.T @ Vi @ X) @ X.T @ Vi
    Py = P @ prob.y
    zeros = [np.zeros_like(G), [np.zeros_like(S) for S in R], np.zeros_like(E)]
    expect = []
    for which, pairs in (("G", [(0, 0), (0, 1), (1, 1)]), (0, [(0, 0), (0, 1), (1, 1)]),
                         (1, [(0, 0), (0, 1), (1, 1), (2, 2), (2, 3), (3, 3)]),
                         ("E", [(0, 0), (0, 1), (1, 1)])):
        for a, b in pairs:
            dG, dR, dE = zeros[0].copy(), [S.copy() for S in zeros[1]], zeros[2].copy()
            D = dG if which == "G" else dE if which == "E" else dR[which]
            D[a, b] = D[b, a] = 1.0
            Vk = build_V(prob, dG, dE, dR)
            expect.append(-0.5 * (np.trace(P @ Vk) - Py @ Vk @ Py))
    assert np.allclose(s.to_numpy(), expect, atol=1e-6, rtol=1e-6)


def test_fit_random_term_zero_variance_nests():
    data, K, G, E, R = make_problem(15, n_geno=10, n_env=2, n_traits=2, missing=0.1,
                                    genetic="homogeneous", reps=2, blocks=3, block_var=0.0)
    assert np.all(R[0] == 0.0)
    args = (data, K, TR2, "env", "id", "homogeneous", "homogeneous")
    random = [("block", "homogeneous", None)]
    res0 = reference_fit(*args)
    res1 = reference_fit(*args, random=random)
    assert res0["success"] and res0["R"] == []
    assert len(res1["theta"]) == 9 and res1["R"][0].shape == (2, 2)
    assert res1["loglik"] >= res0["loglik"] - 1e-6
    # the reported loglik is the likelihood of the reported matrices
    assert reference_loglik(*args, G=res1["G"], E=res1["E"], random=random,
                            R=res1["R"]) == pytest.approx(res1["loglik"], abs=1e-10)
    # the term fixed at ~0: the model without it
    tiny = [1e-12 * np.eye(2)]
    assert reference_loglik(*args, G=res0["G"], E=res0["E"], random=random,
                            R=tiny) == pytest.approx(res0["loglik"], abs=1e-6)
    # theta order: G blocks, the random term's blocks, E blocks
    par = res1["param"]
    G1, R1, E1 = par.to_GRE(res1["theta"])
    assert np.array_equal(G1, res1["G"]) and np.array_equal(R1[0], res1["R"][0])
    theta = res1["theta"].copy()
    theta[3:6] = 0.0
    G2, R2, E2 = par.to_GRE(theta)
    assert np.array_equal(G2, G1) and np.array_equal(E2, E1) and np.all(R2[0] == 0.0)
