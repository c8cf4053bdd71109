"""The dense engine: V over the observed values and its Cholesky factor (docs/design.md §2–3).

Exact for any design, any structure, any pattern of missing values.  V is factored block by
block over the values no term links (:func:`independent_blocks`: the environments, when no
term links environments), so an iteration costs Σ_c N_c³ (N³ when everything is linked).

For a parameter θ_k = Σ_t[a, b] of term t (kernel 𝒦_t over units, index map a(o)):

    V_k[o, o'] = 𝒦_t[u(o), u(o')] · ([a(o)=a][a(o')=b] + [a(o)=b][a(o')=a])   (once if a = b)

so with one-hot maps A_t (N × d_t), w = Py and T_t = Σ_o (unit, index) aggregates of w:

    tr(P V_k)    = (2 − δ_ab) · [A_t' (P ∘ 𝒦_obs) A_t]_ab
    y'P V_k P y  = (2 − δ_ab) · [T_t' 𝒦_t T_t]_ab
    (V_k P y)_o  = [a(o)=a] (𝒦_t T_t)[u(o), b] + [a≠b][a(o)=b] (𝒦_t T_t)[u(o), a]
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ..errors import InputError
from ..model import Model, RandomTerm
from .base import Engine, Evaluation, NotPositiveDefinite, Solution, restricted_constant


def _observed_kernel(term: RandomTerm, rows: np.ndarray) -> np.ndarray:
    """𝒦 between the observed values ``rows``: kernel[u(o), u(o')] (or [u(o) = u(o')] for the
    identity)."""
    unit = term.unit[rows]
    if term.kernel is None:
        return (unit[:, None] == unit[None, :]).astype(float)
    return term.kernel[np.ix_(unit, unit)]


def _aggregate(term: RandomTerm, values: np.ndarray) -> np.ndarray:
    """T[u, a] = Σ_{o: u(o)=u, a(o)=a} values_o."""
    out = np.zeros((term.n_units, term.structure.dim))
    np.add.at(out, (term.unit, term.index), values)
    return out


def independent_blocks(terms: list[RandomTerm], n_obs: int) -> list[np.ndarray]:
    """The observed values split into blocks that no term links, for any θ: V is block
    diagonal over them (e.g. the environments, for the paper's heterogeneous ΣG).

    Two values are linked by term t when their rows of Σ_t lie in one of its positive-definite
    blocks (the only places Σ_t can be non-zero) and their units in one connected component of
    the kernel's non-zero pattern (the same unit, for the identity).  The blocks are the
    connected components of that graph: each value is joined to a node per (term, Σ block,
    kernel component)."""
    rows, cols, offset = [], [], n_obs
    for term in terms:
        block_of = np.zeros(term.structure.dim, dtype=int)
        for b, blk in enumerate(term.structure.blocks):
            block_of[np.asarray(blk)] = b
        if term.kernel is None:
            comp = term.unit
        else:
            _, comp = connected_components(sp.csr_matrix(term.kernel != 0), directed=False)
            comp = comp[term.unit]
        key = block_of[term.index].astype(np.int64) * (int(comp.max()) + 1) + comp
        _, node = np.unique(key, return_inverse=True)
        rows.append(np.arange(n_obs))
        cols.append(offset + node)
        offset += int(node.max()) + 1
    graph = sp.csr_matrix((np.ones(sum(len(r) for r in rows)), (np.concatenate(rows), np.concatenate(cols))),
                          shape=(offset, offset))
    _, label = connected_components(graph, directed=False)
    label = label[:n_obs]
    order = np.argsort(label, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(label[order])) + 1)


class _Factor:
    """V = blockdiag(V_c) = L_c L_c', with V⁻¹X, (X'V⁻¹X)⁻¹, b̂, Py and, formed when first asked
    for (ℓ alone does not need them), the diagonal blocks of P, P_cc = V_c⁻¹ − (V⁻¹X)_c (X'V⁻¹X)⁻¹
    (V⁻¹X)_c' (the only ones a V_k within blocks meets), at one θ."""

    def __init__(self, blocks: list, X: np.ndarray, y: np.ndarray):
        self.rows = [rows for rows, _ in blocks]
        self.chols, self.logdet_v = [], 0.0
        vinv_x, vinv_y = np.empty_like(X), np.empty_like(y)
        self._v_inv = {}
        for rows, V in blocks:
            try:
                chol = sla.cholesky(V, lower=True, overwrite_a=True, check_finite=False)
            except (sla.LinAlgError, ValueError) as err:
                raise NotPositiveDefinite(str(err)) from None
            self.chols.append(chol)
            self.logdet_v += 2.0 * float(np.log(np.diag(chol)).sum())
            # V⁻¹X and V⁻¹y by triangular solves: accurate when V is ill-conditioned (boundary θ)
            vinv_x[rows] = sla.cho_solve((chol, True), X[rows], check_finite=False)
            vinv_y[rows] = sla.cho_solve((chol, True), y[rows], check_finite=False)
        xvx = X.T @ vinv_x
        try:
            xvx_chol = sla.cho_factor(xvx, lower=True, check_finite=False)
        except sla.LinAlgError as err:
            raise NotPositiveDefinite(str(err)) from None
        self.logdet_xvx = 2.0 * float(np.log(np.diag(xvx_chol[0])).sum())
        self.xvx_inv = sla.cho_solve(xvx_chol, np.eye(X.shape[1]))
        self.vinv_x = vinv_x
        self.beta = self.xvx_inv @ (X.T @ vinv_y)
        self.py = vinv_y - vinv_x @ self.beta

    def v_inv(self, c: int) -> np.ndarray:
        """V_c⁻¹ from its factor (kept once formed)."""
        if c not in self._v_inv:
            inv, info = sla.lapack.dpotri(self.chols[c], lower=1, overwrite_c=0)
            if info != 0:
                raise NotPositiveDefinite("dpotri failed")
            self._v_inv[c] = np.tril(inv) + np.tril(inv, -1).T
        return self._v_inv[c]

    def p_block(self, c: int, reml: bool) -> np.ndarray:
        """P_cc (REML) or V_c⁻¹ (ML)."""
        if not reml:
            return self.v_inv(c)
        vx = self.vinv_x[self.rows[c]]
        return self.v_inv(c) - vx @ self.xvx_inv @ vx.T

    def solve_v(self, values: np.ndarray) -> np.ndarray:
        """V⁻¹·values, block by block."""
        out = np.empty_like(values)
        for rows, chol in zip(self.rows, self.chols):
            out[rows] = sla.cho_solve((chol, True), values[rows], check_finite=False)
        return out



def memory_bytes(engine: "DenseEngine", pev: bool = False) -> int:
    """About the peak memory of a dense evaluation: per block the kernels of the T terms, V_c,
    its factor and inverse and two work arrays ((T + 5)·N_c² doubles, the kernels and inverses
    kept for every block), F (N × elements), and with PEVs two units × units sums."""
    sq = [len(b) ** 2 for b in engine.blocks]
    n_terms, n = len(engine.terms), len(engine.y)
    units = max(t.n_units for t in engine.terms[:-1]) if len(engine.terms) > 1 else 0
    doubles = (n_terms + 2) * sum(sq) + 3 * max(sq) + n * len(engine.params) + (2 * units ** 2 if pev else 0)
    return 8 * doubles


def available_memory() -> int | None:
    """Bytes this process may still allocate: the smaller of the system's available memory
    (Linux ``MemAvailable``) and the address-space limit (``ulimit -v``) less what it uses;
    None when neither is known."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft not in (resource.RLIM_INFINITY, -1):
        try:
            with open("/proc/self/statm") as fh:
                used = int(fh.read().split()[0]) * resource.getpagesize()
        except OSError:
            used = 0
        limits.append(soft - used)
    return min(limits) if limits else None


def memory_shortfall(need: float) -> int | None:
    """The bytes available when ``need`` is more than 80 % of them (every engine refuses then,
    in one line with both numbers); None when it fits or nothing is known."""
    have = available_memory()
    return None if have is None or need <= 0.8 * have else have


def _check_memory(engine: "DenseEngine") -> None:
    """Refuse, in one line with the numbers and the way out, a model the machine cannot hold."""
    need = memory_bytes(engine)
    have = memory_shortfall(need)
    if have is None:
        return
    sizes = [len(b) for b in engine.blocks]
    flops = sum(n ** 3 for n in sizes) / 3
    raise InputError(
        f"the dense engine needs about {need / 2**30:.1f} GB for {len(engine.y)} observed values "
        f"({len(sizes)} block{'s' * (len(sizes) > 1)}, the largest {max(sizes)} values; ~{flops:.1e} flops "
        f"per iteration) and about {have / 2**30:.1f} GB is available; fit fewer traits or environments at "
        "once, use a structure that does not link environments (heterogeneous, diagonal), or a two-stage "
        "analysis of genotype means per environment")


class DenseEngine(Engine):
    """ℓ, score and AI from the covariance matrix of the observed values, factored block by
    independent block (:func:`independent_blocks`): Σ_c N_c³ per iteration instead of N³."""

    name = "dense"
    keeps_factor = True

    def __init__(self, model: Model, split: bool = True):
        """``split=False`` factors V whole (to check the split against)."""
        self.model = model
        d = model.design
        self.y, self.X = d.y, d.X
        self.terms = model.terms()
        self.blocks = independent_blocks(self.terms, len(d.y)) if split else [np.arange(len(d.y))]
        self.flops = float(sum(len(b) ** 3 for b in self.blocks))
        self.params = model.elements()
        self.const = restricted_constant(len(d.y), d.X.shape[1], model.method)
        _check_memory(self)
        self.kobs = [[_observed_kernel(t, rows) for t in self.terms] for rows in self.blocks]

    def summary(self) -> str:
        sizes = [len(b) for b in self.blocks]
        if len(sizes) == 1:
            return f"one block of {sizes[0]} values"
        return f"{len(sizes)} independent blocks of {min(sizes)}–{max(sizes)} values"

    def covariance(self, theta: np.ndarray) -> np.ndarray:
        """V (N × N), assembled from its independent blocks."""
        V = np.zeros((len(self.y), len(self.y)))
        for rows, Vc in zip(self.blocks, self.block_covariances(theta)):
            V[np.ix_(rows, rows)] = Vc
        return V

    def block_covariances(self, theta: np.ndarray) -> list[np.ndarray]:
        """V_c = Σ_t 𝒦_obs,t ∘ Σ_t[a(o), a(o')] over each independent block c."""
        mats = self.model.matrices(theta)
        out = []
        for rows, kobs in zip(self.blocks, self.kobs):
            V = None
            for term, k, S in zip(self.terms, kobs, mats):
                idx = term.index[rows]
                part = S[np.ix_(idx, idx)]
                part *= k
                if V is None:
                    V = part
                else:
                    V += part
            out.append(V)
        return out

    def _factor(self, theta: np.ndarray) -> _Factor:
        """V factored at θ (kept: :meth:`Engine._kept_factor`)."""
        return self._kept_factor(
            theta, lambda th: _Factor(list(zip(self.blocks, self.block_covariances(th))), self.X, self.y))

    def evaluate_elements(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        reml = self.model.method == "reml"
        f = self._factor(theta)
        ypy = float(self.y @ f.py)
        loglik = -0.5 * (self.const + f.logdet_v + (f.logdet_xvx if reml else 0.0) + ypy)
        if not derivatives:
            return Evaluation(loglik)
        traces = [np.zeros((t.structure.dim, t.structure.dim)) for t in self.terms]
        for c, (rows, kobs) in enumerate(zip(self.blocks, self.kobs)):
            pm = f.p_block(c, reml)
            for t, (term, k) in enumerate(zip(self.terms, kobs)):
                onehot = np.zeros((len(rows), term.structure.dim))
                onehot[np.arange(len(rows)), term.index[rows]] = 1.0
                traces[t] += onehot.T @ ((pm * k) @ onehot)
        quads, kts = [], []
        for term in self.terms:
            t = _aggregate(term, f.py)
            kt = t if term.kernel is None else term.kernel @ t
            quads.append(t.T @ kt)
            kts.append(kt)
        n = len(self.params)
        score = np.empty(n)
        F = np.empty((len(self.y), n))
        for k, (t, a, b) in enumerate(self.params):
            term, kt = self.terms[t], kts[t]
            mult = 1.0 if a == b else 2.0
            score[k] = -0.5 * mult * (traces[t][a, b] - quads[t][a, b])
            col = np.where(term.index == a, kt[term.unit, b], 0.0)
            if a != b:
                col += np.where(term.index == b, kt[term.unit, a], 0.0)
            F[:, k] = col
        # F'PF = F'V⁻¹F − (X'V⁻¹F)'(X'V⁻¹X)⁻¹(X'V⁻¹F): V⁻¹ block by block
        ai = F.T @ f.solve_v(F)
        if reml:
            xvf = f.vinv_x.T @ F
            ai -= xvf.T @ f.xvx_inv @ xvf
        ai *= 0.5
        return Evaluation(loglik, score, (ai + ai.T) / 2)

    def solve(self, theta: np.ndarray, pev: bool = False) -> Solution:
        """BLUEs b̂ = (X'V⁻¹X)⁻¹X'V⁻¹y and, for the genetic and every random term t, BLUPs
        û_t = (Σ_t ⊗ 𝒦_t) Z_t'Py for every level of its kernel (every genotype in K)."""
        f = self._factor(theta)
        fitted = self.X @ f.beta
        predictions = []
        for term, S in zip(self.terms[:-1], self.model.matrices(theta)[:-1]):
            cross = _level_kernel(term)  # (levels, units); None: independent observed levels
            agg = _aggregate(term, f.py) @ S
            blup = agg if cross is None else cross @ agg
            fitted = fitted + blup[term.factor.observed[term.unit], term.index]
            predictions.append((blup, self._pev(f, S, term, cross) if pev else None))  # b̂ accounted for
        (blup, gpev), random = predictions[0], predictions[1:]
        out = Solution(f.beta, f.xvx_inv, blup, fitted, gpev)
        out.random = {t.factor.name: p for t, p in zip(self.terms[1:-1], random)}
        return out

    def _pev(self, f: _Factor, S, term, cross) -> np.ndarray:
        """Var(u_ja − û_ja) = Σ[a,a]·𝒦[j,j] − c'Pc with c_o = Σ[a, a(o)]·𝒦[j, u(o)], with
        Z P_a Z' (P_a = P ∘ d d', d_o = Σ[a, a(o)]) summed block by block:
        Σ_c Z_c (V_c⁻¹ ∘ d_c d_c') Z_c' − W C W', W = Z (V⁻¹X ∘ d), C = (X'V⁻¹X)⁻¹."""
        n = len(self.y)
        Z = sp.csr_matrix((np.ones(n), (term.unit, np.arange(n))), shape=(term.n_units, n))
        kdiag = np.ones(term.n_units) if cross is None else np.diag(term.factor.kernel)
        out = np.empty((len(kdiag), S.shape[0]))
        for a in range(S.shape[0]):
            dvec = S[a, term.index]
            agg = np.zeros((term.n_units, term.n_units))
            for c, rows in enumerate(f.rows):
                inv = f.v_inv(c)
                Zc = Z[:, rows]
                pa = inv * np.outer(dvec[rows], dvec[rows])
                agg += (Zc @ (Zc @ pa).T).T  # Z_c (V_c⁻¹ ∘ dd') Z_c'  (units × units)
            W = Z @ (f.vinv_x * dvec[:, None])
            agg -= W @ f.xvx_inv @ W.T
            explained = np.diag(agg) if cross is None else np.einsum("ju,ju->j", cross @ agg, cross)
            out[:, a] = S[a, a] * kdiag - explained
        return out


def _level_kernel(term: RandomTerm) -> np.ndarray | None:
    """𝒦[level, observed unit]: the kernel's rows of every level; None when the levels are
    independent (the levels are then the observed units, in order)."""
    factor = term.factor
    return None if factor.kernel is None else factor.kernel[:, factor.observed]
