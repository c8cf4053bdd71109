"""Independent brute-force reference for hetvc (used by the tests only).

Nothing here imports hetvc.  Everything is computed from the model definition in
docs/design.md sections 1 and 2, as plainly as possible; speed is not a goal.

Conventions (they must match the engine exactly)
------------------------------------------------
* ``data``: DataFrame with an id column, an environment column and trait columns
  (float, NaN = missing).  ``K``: square DataFrame, index = columns = genotype ids
  (it may hold ids without records).
* Trait index i = position in ``traits`` (0..m-1).
* Environment order: categories order if the env column is a pandas Categorical
  (only the categories present in the data), otherwise ``sorted(unique values)``.
  L = number of environments, l = position in that order.
* Observed values: every (record r, trait i) with a non-missing value, in the order
  record-major (data row order), then trait order.  N = their number.
* Genetic index a(o): ``i`` for genetic="homogeneous" (G is m x m, the same genetic
  value in every environment); ``l*m + i`` for "heterogeneous" and "unstructured"
  (G is (L*m) x (L*m), environment-major).
* Residual index b(o): ``i`` for residual="homogeneous" (E is m x m); ``l*m + i`` for
  "heterogeneous" (E is (L*m) x (L*m), block diagonal, only the diagonal blocks are used).
* V[o,o'] = K[g(o),g(o')] * G[a(o),a(o')] + [r(o) == r(o')] * E[b(o),b(o')].
  Residuals of different records are independent, even for the same genotype and
  environment.
* Extra random terms (``random=[spec, ...]``, default none): each spec is a tuple
  ``(factor, structure, Kt)`` (or ``(factor, structure)``, or a dict with keys
  ``factor``, ``structure`` and optionally ``K``), and adds
  ``Kt[u_t(o), u_t(o')] * R_t[c_t(o), c_t(o')]`` to V.
  - ``factor``: a column name, or an interaction "a:b" (any number of columns joined by
    ":" when the name itself is not a column): the level u_t(o) of a record is the label
    ``str(row[a]) + ":" + str(row[b])``; for a single column the label is ``str(row[a])``.
    Levels are compared as these strings.  A record with an observed trait value and a
    missing factor value raises ValueError.
  - ``structure``: one of the genetic structures, with the genetic conventions: index
    c_t(o) = ``i`` for "homogeneous" (R_t is m x m, the same effect of a level in every
    environment), ``l*m + i`` for "heterogeneous" (block diagonal), "diagonal" and
    "unstructured" (R_t is (L*m) x (L*m)).
  - ``Kt``: None (identity: ``[u_t(o) == u_t(o')]``) or a square DataFrame over the levels
    (index == columns; labels compared as ``str``); a level not in Kt raises ValueError.
  R_t is passed as the full d_t x d_t matrix, zeros off the structure's pattern
  (a non-zero element off the pattern raises ValueError).
* Parameter order (theta, score, covariance_elements): G, then each random term in the
  order given, then E; within a matrix its free blocks in environment order.
* Fixed effects X: one column per (trait, environment) cell with at least one observed
  value (an indicator, value 1), then for each covariate c (in the order given) and each
  trait i a column ``data[c] * [trait == i]`` (raw values, not centred).  Cells with no
  observed value and trait/covariate columns that are all zero are left out.  The
  REML likelihood with the constant below depends on the parameterisation of X
  (log|X'V^-1 X|), so X must be full column rank; a rank-deficient X raises ValueError
  instead of silently dropping columns.
* REML: l = -1/2 [(N-p) log 2pi + log|V| + log|X'V^-1 X| + y'Py],
  P = V^-1 - V^-1 X (X'V^-1 X)^-1 X'V^-1, p = rank(X) = number of columns.
  ML:   l = -1/2 [N log 2pi + log|V| + (y - X b)'V^-1 (y - X b)], b the GLS estimate.

Public API
----------
reference_loglik, reference_fit, reference_score, make_problem; helpers build_problem
(-> Problem: y, X, indices, K_obs, random), build_V, build_V_loop, loglik_from_V,
env_levels, covariance_elements.  Every function takes ``random=None`` (and the ones
that take G and E also ``R=None``, the list of R_t); without random terms everything is
exactly as before.

Speed: one likelihood evaluation costs an N x N inverse and slogdet (about 5 ms at
N = 240 with single-threaded BLAS); reference_fit needs thousands of them.  On a small,
busy machine multi-threaded OpenBLAS can be 10-20x slower on these sizes: run with
OPENBLAS_NUM_THREADS=1 (or OMP_NUM_THREADS=1) if the fits are slow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import optimize

GENETIC = ("homogeneous", "heterogeneous", "diagonal", "unstructured")
RESIDUAL = ("homogeneous", "heterogeneous")
LOG2PI = math.log(2.0 * math.pi)


# ----------------------------------------------------------------------------------
# The problem: observed values, their indices, y and X
# ----------------------------------------------------------------------------------


@dataclass
class Problem:
    traits: list
    envs: list  # environment levels, in model order
    genetic: str
    residual: str
    m: int
    L: int
    y: np.ndarray  # (N,)
    X: np.ndarray  # (N, p)
    x_names: list  # names of the X columns
    rec: np.ndarray  # (N,) record (row position in data) of each observed value
    trait: np.ndarray  # (N,) trait index i
    envi: np.ndarray  # (N,) environment index l
    geno: list  # (N,) genotype id of each observed value
    K_obs: np.ndarray  # (N, N)  K[g(o), g(o')]
    gidx: np.ndarray  # (N,) genetic index a(o)
    ridx: np.ndarray  # (N,) residual index b(o)
    random: list = field(default_factory=list)  # [RandomData] of the extra random terms

    @property
    def N(self):
        return len(self.y)

    @property
    def p(self):
        return self.X.shape[1]

    @property
    def dim_G(self):
        return self.m if self.genetic == "homogeneous" else self.L * self.m

    @property
    def dim_E(self):
        return self.m if self.residual == "homogeneous" else self.L * self.m


@dataclass
class RandomData:
    """One extra random term of a Problem."""
    factor: str  # as given ("a" or "a:b")
    structure: str  # one of GENETIC
    dim: int  # d_t: m ("homogeneous") or L*m
    level: list  # (N,) level label u_t(o) of each observed value (str)
    K_obs: np.ndarray  # (N, N)  Kt[u_t(o), u_t(o')]  (identity: [u_t(o) == u_t(o')])
    index: np.ndarray  # (N,) row c_t(o) of R_t


def _parse_spec(spec):
    """(factor, structure, Kt) from a tuple (factor, structure[, Kt]) or a dict."""
    if isinstance(spec, dict):
        unknown = set(spec) - {"factor", "structure", "K"}
        if unknown:
            raise ValueError(f"unknown keys in random term spec: {sorted(unknown)}")
        return spec["factor"], spec["structure"], spec.get("K")
    spec = tuple(spec)
    if len(spec) == 2:
        return spec[0], spec[1], None
    if len(spec) == 3:
        return spec
    raise ValueError(f"a random term is (factor, structure[, Kt]), got {spec!r}")


def _factor_columns(data, factor):
    if factor in data.columns:
        return [factor]
    cols = factor.split(":")
    missing = [c for c in cols if c not in data.columns]
    if missing:
        raise ValueError(f"random term {factor!r}: no column(s) {missing}")
    return cols


def _random_data(data, spec, rec, trait, envi, m, L):
    factor, structure, Kt = _parse_spec(spec)
    if structure not in GENETIC:
        raise ValueError(f"random term {factor!r}: structure must be one of {GENETIC}, "
                         f"got {structure!r}")
    cols = _factor_columns(data, factor)
    labels = []
    for r in rec:
        # column by column: a row Series of an all-numeric frame would turn 1 into 1.0
        vals = [data[c].iloc[r] for c in cols]
        if any(pd.isna(v) for v in vals):
            raise ValueError(f"record {r} has a value but no level of {factor!r}")
        labels.append(":".join(str(v) for v in vals))
    N = len(labels)
    if Kt is None:
        lab = np.array(labels, dtype=object)
        K_obs = (lab[:, None] == lab[None, :]).astype(float)
    else:
        if not isinstance(Kt, pd.DataFrame):
            raise ValueError(f"random term {factor!r}: Kt must be None or a DataFrame")
        rows = [str(x) for x in Kt.index]
        if rows != [str(x) for x in Kt.columns]:
            raise ValueError(f"random term {factor!r}: Kt must have index == columns")
        if len(set(rows)) != len(rows):
            raise ValueError(f"random term {factor!r}: Kt has duplicate labels")
        pos = {g: j for j, g in enumerate(rows)}
        for r, lab in zip(rec, labels):
            if lab not in pos:
                raise ValueError(f"level {lab!r} of {factor!r} (record {r}) is not in Kt")
        Kv = np.asarray(Kt, dtype=float)
        K_obs = np.empty((N, N))
        for o in range(N):
            for o2 in range(N):
                K_obs[o, o2] = Kv[pos[labels[o]], pos[labels[o2]]]
    if structure == "homogeneous":
        dim, index = m, trait.copy()
    else:
        dim, index = L * m, envi * m + trait
    return RandomData(factor, structure, dim, labels, K_obs, index)


def env_levels(data, env):
    """Environment levels in model order (see module docstring)."""
    col = data[env]
    if isinstance(col.dtype, pd.CategoricalDtype):
        present = set(col.dropna().unique())
        return [c for c in col.cat.categories if c in present]
    return sorted(col.dropna().unique())


def build_problem(data, K, traits, env, id, genetic, residual, covariates=None,
                  random=None):
    if genetic not in GENETIC:
        raise ValueError(f"genetic must be one of {GENETIC}, got {genetic!r}")
    if residual not in RESIDUAL:
        raise ValueError(f"residual must be one of {RESIDUAL}, got {residual!r}")
    traits = list(traits)
    covariates = list(covariates) if covariates else []
    m = len(traits)
    envs = env_levels(data, env)
    L = len(envs)
    env_pos = {e: l for l, e in enumerate(envs)}
    if not (list(K.index) == list(K.columns)):
        raise ValueError("K must have index == columns")
    k_pos = {g: j for j, g in enumerate(K.index)}
    Kv = np.asarray(K, dtype=float)

    # observed values, record-major then trait order
    rec, trait, envi, geno, yv, covv = [], [], [], [], [], []
    for r in range(len(data)):
        row = data.iloc[r]
        for i, t in enumerate(traits):
            v = row[t]
            if pd.isna(v):
                continue
            if pd.isna(row[env]):
                raise ValueError(f"record {r} has a value but no environment")
            g = row[id]
            if g not in k_pos:
                raise ValueError(f"genotype {g!r} of record {r} is not in K")
            cv = [float(row[c]) for c in covariates]
            if any(math.isnan(c) for c in cv):
                raise ValueError(f"record {r} has a missing covariate")
            rec.append(r)
            trait.append(i)
            envi.append(env_pos[row[env]])
            geno.append(g)
            yv.append(float(v))
            covv.append(cv)
    N = len(yv)
    if N == 0:
        raise ValueError("no observed values")
    rec = np.array(rec)
    trait = np.array(trait)
    envi = np.array(envi)
    y = np.array(yv)

    # X: cell means, then covariate slopes per trait
    cols, names = [], []
    for l in range(L):
        for i in range(m):
            ind = ((trait == i) & (envi == l)).astype(float)
            if ind.any():
                cols.append(ind)
                names.append(f"mu[{envs[l]}][{traits[i]}]")
    for c_k, c in enumerate(covariates):
        for i in range(m):
            col = np.array([covv[o][c_k] if trait[o] == i else 0.0 for o in range(N)])
            if np.any(col != 0.0):
                cols.append(col)
                names.append(f"{c}[{traits[i]}]")
    X = np.column_stack(cols)
    if np.linalg.matrix_rank(X) != X.shape[1]:
        raise ValueError("X is not of full column rank (collinear covariates?)")

    # kinship between the genotypes of every pair of observed values
    K_obs = np.empty((N, N))
    for o in range(N):
        for o2 in range(N):
            K_obs[o, o2] = Kv[k_pos[geno[o]], k_pos[geno[o2]]]

    gidx = trait.copy() if genetic == "homogeneous" else envi * m + trait
    ridx = trait.copy() if residual == "homogeneous" else envi * m + trait
    terms = [_random_data(data, spec, rec, trait, envi, m, L) for spec in (random or [])]
    return Problem(traits, envs, genetic, residual, m, L, y, X, names, rec, trait, envi,
                   geno, K_obs, gidx, ridx, terms)


def _check_GE(prob, G, E):
    G = np.asarray(G, dtype=float)
    E = np.asarray(E, dtype=float)
    if G.shape != (prob.dim_G, prob.dim_G):
        raise ValueError(f"G must be {prob.dim_G}x{prob.dim_G} for genetic={prob.genetic!r}")
    if E.shape != (prob.dim_E, prob.dim_E):
        raise ValueError(f"E must be {prob.dim_E}x{prob.dim_E} for residual={prob.residual!r}")
    if not (np.allclose(G, G.T) and np.allclose(E, E.T)):
        raise ValueError("G and E must be symmetric")
    return G, E


def _pattern(structure, m, L):
    """Boolean mask of the free elements of a (genetic-type) structure's matrix."""
    d = m if structure == "homogeneous" else L * m
    mask = np.zeros((d, d), dtype=bool)
    for idx in _blocks(structure, m, L, "G"):
        mask[np.ix_(idx, idx)] = True
    return mask


def _check_R(prob, R):
    if R is None:
        R = []
    R = [np.asarray(S, dtype=float) for S in R]
    if len(R) != len(prob.random):
        raise ValueError(f"R must hold {len(prob.random)} matrices (one per random term), "
                         f"got {len(R)}")
    for S, t in zip(R, prob.random):
        if S.shape != (t.dim, t.dim):
            raise ValueError(f"R for {t.factor!r} must be {t.dim}x{t.dim} for "
                             f"structure={t.structure!r}")
        if not np.allclose(S, S.T):
            raise ValueError(f"R for {t.factor!r} must be symmetric")
        if np.any(S[~_pattern(t.structure, prob.m, prob.L)] != 0.0):
            raise ValueError(f"R for {t.factor!r} has non-zero elements off the "
                             f"{t.structure!r} pattern")
    return R


def build_V_loop(prob, G, E, R=None):
    """V element by element, straight from the definition (slow, for cross-checks)."""
    G, E = _check_GE(prob, G, E)
    R = _check_R(prob, R)
    N = prob.N
    V = np.empty((N, N))
    for o in range(N):
        for o2 in range(N):
            v = prob.K_obs[o, o2] * G[prob.gidx[o], prob.gidx[o2]]
            for S, t in zip(R, prob.random):
                v += t.K_obs[o, o2] * S[t.index[o], t.index[o2]]
            if prob.rec[o] == prob.rec[o2]:
                v += E[prob.ridx[o], prob.ridx[o2]]
            V[o, o2] = v
    return V


def build_V(prob, G, E, R=None):
    """Same as build_V_loop, with the double loop written as fancy indexing."""
    G, E = _check_GE(prob, G, E)
    R = _check_R(prob, R)
    same_rec = prob.rec[:, None] == prob.rec[None, :]
    V = prob.K_obs * G[np.ix_(prob.gidx, prob.gidx)]
    for S, t in zip(R, prob.random):
        V = V + t.K_obs * S[np.ix_(t.index, t.index)]
    return V + same_rec * E[np.ix_(prob.ridx, prob.ridx)]


# ----------------------------------------------------------------------------------
# Log-likelihood
# ----------------------------------------------------------------------------------


def loglik_from_V(V, X, y, method="reml"):
    """REML or ML log-likelihood for y ~ N(Xb, V).  -inf if V is not PD."""
    if method not in ("reml", "ml"):
        raise ValueError("method must be 'reml' or 'ml'")
    sign, logdetV = np.linalg.slogdet(V)
    if sign <= 0 or not np.isfinite(logdetV):
        return -np.inf
    Vi = np.linalg.inv(V)
    N, p = X.shape
    XtViX = X.T @ Vi @ X
    XtViX_inv = np.linalg.inv(XtViX)
    if method == "reml":
        s2, logdetX = np.linalg.slogdet(XtViX)
        if s2 <= 0:
            return -np.inf
        ViX = Vi @ X
        P = Vi - ViX @ XtViX_inv @ ViX.T
        quad = y @ P @ y
        return -0.5 * ((N - p) * LOG2PI + logdetV + logdetX + quad)
    b = XtViX_inv @ (X.T @ Vi @ y)
    res = y - X @ b
    quad = res @ Vi @ res
    return -0.5 * (N * LOG2PI + logdetV + quad)


def _loglik(prob, G, E, method, R=None):
    return loglik_from_V(build_V(prob, G, E, R), prob.X, prob.y, method)


def reference_loglik(data, K, traits, env, id, genetic, residual, G, E, method="reml",
                     covariates=None, random=None, R=None):
    prob = build_problem(data, K, traits, env, id, genetic, residual, covariates, random)
    return float(_loglik(prob, G, E, method, R))


# ----------------------------------------------------------------------------------
# Free covariance blocks and their (scaled) Cholesky parameterisation
# ----------------------------------------------------------------------------------


def _blocks(structure, m, L, which):
    """Index sets of the free diagonal blocks of G (which='G') or E (which='E')."""
    if structure == "homogeneous":
        return [np.arange(m)]
    if structure == "heterogeneous":
        return [np.arange(l * m, (l + 1) * m) for l in range(L)]
    if structure == "unstructured" and which == "G":
        return [np.arange(L * m)]
    if structure == "diagonal" and which == "G":
        return [np.array([a]) for a in range(L * m)]
    raise ValueError(structure)


class _Param:
    """theta <-> (G, R, E).  Each free block S = D C C' D, C lower triangular (any sign),
    D = diag(phenotypic SD of the trait of each index) -- a fixed rescaling so that the
    parameters are O(1) whatever the units of the traits.  theta holds the blocks of G,
    then those of each random term R_t (in the order given), then those of E; within a
    block the elements of C in np.tril_indices order.  A 1x1 block ("diagonal") is a
    signed standard deviation c (variance D c^2), so zero is reachable."""

    def __init__(self, prob, sd):
        self.prob = prob
        self.gblocks = _blocks(prob.genetic, prob.m, prob.L, "G")
        self.rblocks = [_blocks(t.structure, prob.m, prob.L, "G") for t in prob.random]
        self.eblocks = _blocks(prob.residual, prob.m, prob.L, "E")
        self.sd = np.asarray(sd, dtype=float)  # per trait
        self.k = sum(len(b) * (len(b) + 1) // 2
                     for b in self.gblocks + self.eblocks + sum(self.rblocks, []))

    def _scale(self, idx):
        return self.sd[idx % self.prob.m]

    def _matrices(self):
        """Empty G, R_t..., E and their blocks, in theta order."""
        dims = [self.prob.dim_G] + [t.dim for t in self.prob.random] + [self.prob.dim_E]
        blocks = [self.gblocks] + self.rblocks + [self.eblocks]
        return [np.zeros((d, d)) for d in dims], blocks

    def to_GRE(self, theta):
        """(G, [R_t], E) from theta."""
        mats, blocks = self._matrices()
        pos = 0
        for M, blks in zip(mats, blocks):
            for idx in blks:
                d = len(idx)
                C = np.zeros((d, d))
                tr = np.tril_indices(d)
                n = len(tr[0])
                C[tr] = theta[pos:pos + n]
                pos += n
                Dg = np.diag(self._scale(idx))
                M[np.ix_(idx, idx)] = Dg @ C @ C.T @ Dg
        return mats[0], mats[1:-1], mats[-1]

    def to_GE(self, theta):
        G, _, E = self.to_GRE(theta)
        return G, E

    def from_GE(self, G, E, R=None):
        R = list(R) if R is not None else []
        if len(R) != len(self.rblocks):
            raise ValueError(f"need {len(self.rblocks)} random-term matrices, got {len(R)}")
        theta = []
        _, blocks = self._matrices()
        for M, blks in zip([G] + R + [E], blocks):
            for idx in blks:
                d = len(idx)
                s = self._scale(idx)
                S = np.asarray(M)[np.ix_(idx, idx)] / np.outer(s, s)
                S = 0.5 * (S + S.T)
                # nearest PD block if the start is on/over the boundary
                w, U = np.linalg.eigh(S)
                w = np.maximum(w, 1e-6 * max(1.0, w.max()))
                C = np.linalg.cholesky(U @ np.diag(w) @ U.T)
                theta.extend(C[np.tril_indices(d)])
        return np.array(theta)


def _fd_grad(f, x, h=1e-5):
    g = np.zeros_like(x)
    for k in range(len(x)):
        e = np.zeros_like(x)
        e[k] = h
        g[k] = (f(x + e) - f(x - e)) / (2 * h)
    return g


def _fd_hess(f, x, h=1e-4):
    k = len(x)
    H = np.zeros((k, k))
    f0 = f(x)
    for a in range(k):
        ea = np.zeros(k)
        ea[a] = h
        H[a, a] = (f(x + ea) - 2 * f0 + f(x - ea)) / h**2
        for b in range(a):
            eb = np.zeros(k)
            eb[b] = h
            H[a, b] = H[b, a] = (f(x + ea + eb) - f(x + ea - eb) - f(x - ea + eb)
                                 + f(x - ea - eb)) / (4 * h**2)
    return H


def _phenotypic_var(prob):
    v = np.array([np.var(prob.y[prob.trait == i], ddof=1) if np.sum(prob.trait == i) > 1
                  else 1.0 for i in range(prob.m)])
    v[~(v > 0)] = 1.0
    return v


def _diag_start(prob, dim, share):
    v = _phenotypic_var(prob)
    return np.diag(share * v[np.arange(dim) % prob.m])


def _default_start(prob):
    G = _diag_start(prob, prob.dim_G, 0.5)
    E = _diag_start(prob, prob.dim_E, 0.5)
    return G, E


def _maximise(prob, method, starts, max_newton=8):
    """starts: list of (G, R, E)."""
    par = _Param(prob, np.sqrt(_phenotypic_var(prob)))

    def negll(theta):
        G, R, E = par.to_GRE(theta)
        ll = _loglik(prob, G, E, method, R)
        return 1e100 if not np.isfinite(ll) else -ll

    def grad(theta):
        return _fd_grad(negll, theta)

    # 1. quasi-Newton (BFGS, central-difference gradient) from every start
    best = None
    for G0, R0, E0 in starts:
        res = optimize.minimize(negll, par.from_GE(G0, E0, R0), jac=grad, method="BFGS",
                                options=dict(gtol=1e-5, maxiter=2000))
        if best is None or res.fun < best[1]:
            best = (res.x, res.fun)
    x, fx = best

    # 2. Newton polish with a finite-difference Hessian (steps only along directions of
    # positive curvature of -l, each accepted only if it improves l), repeated until a
    # step gains less than 1e-10: this is the restart-from-the-solution check.
    last_gain = np.inf
    for _ in range(max_newton):
        g = grad(x)
        H = _fd_hess(negll, x)
        w, U = np.linalg.eigh(0.5 * (H + H.T))
        keep = w > 1e-8 * max(1.0, np.abs(w).max())
        step = -(U[:, keep] @ ((U[:, keep].T @ g) / w[keep]))
        t, last_gain = 1.0, 0.0
        while t > 1e-3:
            fn = negll(x + t * step)
            if fn < fx:
                x, fx, last_gain = x + t * step, fn, fx - fn
                break
            t /= 2
        if last_gain < 1e-10:
            break
    g = grad(x)
    success = bool(fx < 1e99 and last_gain < 1e-8 and np.max(np.abs(g)) < 1e-4)
    G, R, E = par.to_GRE(x)
    return dict(loglik=float(-fx), G=G, E=E, R=R, success=success, theta=x,
                grad_max=float(np.max(np.abs(g))), param=par)


def _as_start(start, default_R):
    """(G, R, E) from (G, E), (G, E, R) or dict(G=, E=[, R=]); R defaults to default_R."""
    if isinstance(start, dict):
        R = start.get("R")
        G, E = start["G"], start["E"]
    elif len(start) == 3:
        G, E, R = start
    else:
        G, E = start
        R = None
    return G, (default_R if R is None else list(R)), E


def reference_fit(data, K, traits, env, id, genetic, residual, method="reml",
                  covariates=None, start=None, random=None):
    """Brute-force maximum of the (RE)ML log-likelihood.

    ``start``: None, (G, E), (G, E, R) or dict(G=..., E=...[, R=[...]]).  The default
    start has half the phenotypic variance of each trait on the diagonals of G and E (and
    a quarter on those of each random term's R_t).  A second start (0.2 / 0.8 of the
    phenotypic variance for G / E, 0.1 for each R_t) is always tried as well.  A start
    without R uses the default start's R_t.

    Returns dict(loglik, G, E, R, success) plus diagnostics (theta: Cholesky parameters
    in the order G blocks, each random term's blocks, E blocks; grad_max: largest
    |d(-l)/d theta| at the optimum; param: the parameterisation).  R is the list of the
    random terms' matrices ([] without random terms).  For genetic="heterogeneous" only
    the diagonal m x m blocks are free (the returned G is block diagonal); for
    residual="heterogeneous" likewise for E; the random terms follow their structures.
    """
    prob = build_problem(data, K, traits, env, id, genetic, residual, covariates, random)
    R_default = [_diag_start(prob, t.dim, 0.25) for t in prob.random]
    starts = []
    if start is not None:
        starts.append(_as_start(start, R_default))
    G0, E0 = _default_start(prob)
    starts.append((G0, R_default, E0))
    starts.append((_diag_start(prob, prob.dim_G, 0.2),
                   [_diag_start(prob, t.dim, 0.1) for t in prob.random],
                   _diag_start(prob, prob.dim_E, 0.8)))
    return _maximise(prob, method, starts)


# ----------------------------------------------------------------------------------
# Score by central finite differences with respect to the covariance elements
# ----------------------------------------------------------------------------------


def _term_prefixes(prob):
    """Name prefix of each random term: its factor ("block", "env:block"), with "#t"
    (t = 1-based term number) appended when two terms share a factor."""
    factors = [t.factor for t in prob.random]
    return [f if factors.count(f) == 1 else f"{f}#{k + 1}" for k, f in enumerate(factors)]


def covariance_elements(prob):
    """The free covariance elements, in order: G blocks, then the blocks of each random
    term (in the order given), then E blocks; each block in environment order; within a
    block the pairs (i, j), i <= j, row by row.
    Returns a list of (name, which, a, b) with a, b indices into G, R_t or E; which is
    "G", "E" or "R<t>" (t = 0-based position of the random term).  Names: "G[...]",
    "E[...]", and for a random term its factor as the prefix, e.g. "block[y1,y2]"."""
    out = []
    spec = [("G", prob.genetic, "G", "G")]
    spec += [(f"R{k}", t.structure, "G", pre)
             for k, (t, pre) in enumerate(zip(prob.random, _term_prefixes(prob)))]
    spec += [("E", prob.residual, "E", "E")]
    for which, structure, kind, prefix in spec:
        for idx in _blocks(structure, prob.m, prob.L, kind):
            for x in range(len(idx)):
                for y_ in range(x, len(idx)):
                    a, b = int(idx[x]), int(idx[y_])
                    ta, tb = prob.traits[a % prob.m], prob.traits[b % prob.m]
                    if structure == "homogeneous":
                        name = f"{prefix}[{ta},{tb}]"
                    elif structure == "heterogeneous":
                        name = f"{prefix}[{prob.envs[a // prob.m]}][{ta},{tb}]"
                    else:
                        name = (f"{prefix}[{prob.envs[a // prob.m]}:{ta},"
                                f"{prob.envs[b // prob.m]}:{tb}]")
                    out.append((name, which, a, b))
    return out


def reference_score(data, K, traits, env, id, genetic, residual, G, E, method="reml",
                    covariates=None, rel_step=1e-5, random=None, R=None):
    """d l / d theta_k for every free covariance element theta_k (an off-diagonal
    element moves both G[a,b] and G[b,a]), by central differences.
    Returns a pandas Series indexed by the element names (see covariance_elements), in
    the order G, random terms, E."""
    prob = build_problem(data, K, traits, env, id, genetic, residual, covariates, random)
    G, E = _check_GE(prob, G, E)
    R = _check_R(prob, R)
    vals, names = [], []

    def pick(mats, which):
        G_, R_, E_ = mats
        return G_ if which == "G" else E_ if which == "E" else R_[int(which[1:])]

    for name, which, a, b in covariance_elements(prob):
        M = pick((G, R, E), which)
        h = rel_step * math.sqrt(max(abs(M[a, a] * M[b, b]), 1e-12))

        def ll(t):
            mats = (G.copy(), [S.copy() for S in R], E.copy())
            M2 = pick(mats, which)
            M2[a, b] += t
            if a != b:
                M2[b, a] += t
            return _loglik(prob, mats[0], mats[2], method, mats[1])

        vals.append((ll(h) - ll(-h)) / (2 * h))
        names.append(name)
    return pd.Series(vals, index=names, dtype=float)


# ----------------------------------------------------------------------------------
# A small simulator
# ----------------------------------------------------------------------------------


def _random_cov(rng, d, scale=1.0, corr=0.5):
    A = rng.normal(size=(d, d))
    C = corr * (A @ A.T) / d + (1.0 - corr) * np.eye(d)
    s = scale * rng.uniform(0.5, 1.5, size=d)
    s = np.sqrt(s)
    C = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    return np.outer(s, s) * C


def make_problem(seed, n_geno=30, n_env=2, n_traits=2, genetic="heterogeneous",
                 residual="homogeneous", missing=0.0, reps=1, p_env=1.0, n_markers=200,
                 n_untested=0, n_covariates=0, blocks=0, block_var=0.3):
    """Simulate (data, K, G_true, E_true) from the model; with ``blocks`` > 0,
    (data, K, G_true, E_true, R_true).

    * K: GRM of n_geno + n_untested genotypes from n_markers SNPs (allele frequency in
      {0.05, 0.1, 0.3, 0.4, 0.5}, Binomial(2, f), standardised, monomorphic SNPs dropped),
      K = M M' / n_snp + 0.05 I.  Ids "g001", ...; the last n_untested have no records.
    * Each tested genotype is grown in each environment with probability p_env (at least
      one environment); p_env=1: every genotype in every environment.  ``reps`` records
      per (genotype, environment).  Environments "E1", ... ("E01", ... if n_env >= 10),
      as plain strings (so sorted order == natural order).
    * y = cell mean + sum_c slope_c,i * x_c + u[g, a] + e, u ~ N(0, K (x) G_true),
      e_r ~ N(0, E_l(r)); covariates "x1", ... ~ N(0, 1).
    * ``blocks`` > 0: a column "block" with ``blocks`` levels per environment, labelled
      f"{env}.b{k}" (k = 1..blocks), assigned to the records of each environment in
      rotation (in row order), and a column "rep" (1..reps: the replicate number of the
      record within its genotype and environment).  Each block level has an effect
      ~ N(0, R_block) on the traits (homogeneous: the term ``("block", "homogeneous",
      None)``), R_block a random m x m covariance with variances ~ ``block_var`` (0: no
      effect, R_block = 0), added to y before the values are blanked; R_true =
      [R_block].  The block effects use their own random stream: the rest of the data
      is the same as with blocks=0.
    * Then a fraction ``missing`` of all trait values is set to NaN at random, never all
      traits of a record (so missing > 0 needs n_traits >= 2).
    G_true / E_true are in the shapes reference_loglik expects (heterogeneous G is block
    diagonal).  Traits are named "y1", ...
    """
    rng = np.random.default_rng(seed)
    m, L = n_traits, n_env
    if missing > 0 and m < 2:
        raise ValueError("missing > 0 needs at least 2 traits (never a whole record)")
    q = n_geno + n_untested
    width = 3 if q < 1000 else len(str(q))
    ids = [f"g{j + 1:0{width}d}" for j in range(q)]
    envs = [f"E{l + 1:02d}" if L >= 10 else f"E{l + 1}" for l in range(L)]
    traits = [f"y{i + 1}" for i in range(m)]

    # kinship
    f = rng.choice([0.05, 0.1, 0.3, 0.4, 0.5], size=n_markers)
    M = rng.binomial(2, f, size=(q, n_markers)).astype(float)
    sd = M.std(axis=0)
    M = M[:, sd > 0]
    M = (M - M.mean(axis=0)) / M.std(axis=0)
    Kmat = M @ M.T / M.shape[1] + 0.05 * np.eye(q)
    K = pd.DataFrame(Kmat, index=ids, columns=ids)

    # true covariances
    if genetic == "homogeneous":
        G = _random_cov(rng, m, 1.0)
    elif genetic == "heterogeneous":
        G = np.zeros((L * m, L * m))
        for l in range(L):
            G[l * m:(l + 1) * m, l * m:(l + 1) * m] = _random_cov(rng, m, 1.0)
    elif genetic == "unstructured":
        G = _random_cov(rng, L * m, 1.0, corr=0.7)
    elif genetic == "diagonal":
        G = np.diag(rng.uniform(0.5, 1.5, size=L * m))
    else:
        raise ValueError(genetic)
    if residual == "homogeneous":
        E = _random_cov(rng, m, 1.0, corr=0.3)
    elif residual == "heterogeneous":
        E = np.zeros((L * m, L * m))
        for l in range(L):
            E[l * m:(l + 1) * m, l * m:(l + 1) * m] = _random_cov(rng, m, 1.0, corr=0.3)
    else:
        raise ValueError(residual)

    # genetic values u[j, a] ~ N(0, K (x) G): U = chol(K) Z chol(G)'
    Lk = np.linalg.cholesky(Kmat)
    w, Ug = np.linalg.eigh(G)  # G may be singular in principle: use its square root
    Gh = Ug @ np.diag(np.sqrt(np.maximum(w, 0.0)))
    U = Lk @ rng.normal(size=(q, G.shape[0])) @ Gh.T

    means = rng.normal(0.0, 2.0, size=(L, m))
    slopes = rng.normal(0.0, 1.0, size=(n_covariates, m))

    rows = []
    for j in range(n_geno):
        grown = rng.random(L) < p_env
        if not grown.any():
            grown[rng.integers(L)] = True
        for l in np.flatnonzero(grown):
            for rep_ in range(reps):
                xs = rng.normal(size=n_covariates)
                El = E if residual == "homogeneous" else E[l * m:(l + 1) * m,
                                                           l * m:(l + 1) * m]
                e = rng.multivariate_normal(np.zeros(m), El)
                row = {"id": ids[j], "env": envs[l]}
                for i in range(m):
                    a = i if genetic == "homogeneous" else l * m + i
                    row[traits[i]] = means[l, i] + xs @ slopes[:, i] + U[j, a] + e[i]
                for c in range(n_covariates):
                    row[f"x{c + 1}"] = xs[c]
                row["rep"] = rep_ + 1
                rows.append(row)
    data = pd.DataFrame(rows, columns=["id", "env"] + traits
                        + [f"x{c + 1}" for c in range(n_covariates)]
                        + (["block", "rep"] if blocks > 0 else []))

    if blocks > 0:
        count = {e: 0 for e in envs}
        labels = []
        for e in data["env"]:
            labels.append(f"{e}.b{count[e] % blocks + 1}")
            count[e] += 1
        data["block"] = labels
        brng = np.random.default_rng(None if seed is None else [seed, 7])
        if block_var > 0:
            R_block = _random_cov(brng, m, block_var, corr=0.3)
        else:
            R_block = np.zeros((m, m))
        levels = sorted(set(labels))
        w, Ub = np.linalg.eigh(R_block)
        Bh = Ub @ np.diag(np.sqrt(np.maximum(w, 0.0)))
        effect = dict(zip(levels, brng.normal(size=(len(levels), m)) @ Bh.T))
        data[traits] = data[traits].to_numpy() + np.array([effect[b] for b in labels])

    if missing > 0:
        Y = data[traits].to_numpy(copy=True)
        n_target = int(round(missing * Y.size))
        cells = rng.permutation(Y.size)
        done = 0
        for c in cells:
            if done >= n_target:
                break
            r, i = divmod(int(c), m)
            if np.sum(~np.isnan(Y[r])) > 1:
                Y[r, i] = np.nan
                done += 1
        data[traits] = Y
    if blocks > 0:
        return data, K, G, E, [R_block]
    return data, K, G, E
