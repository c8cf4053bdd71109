r"""The spectral engine: exact REML/ML after rotating by eigenvectors of K (docs/design.md §3).

Where it applies
----------------
V must split, after permuting the observed values, into independent *blocks*; in block b the
data form a complete n_b × d_b matrix Y_b (rows: distinct genotypes, columns: environment ×
trait cells c with genetic index ga[c], residual index ra[c] and record slot sl[c]) with

    Var(vec Y_b) = G_b ⊗ K_b + E_b ⊗ I,   G_b = ΣG[ga, ga],   E_b = [sl = sl'] ∘ ΣE[ra, ra].

:func:`plan` finds the blocks (or says why there are none):

* ``heterogeneous`` genetic: one block per environment (d = m), whatever the overlap of
  genotypes between environments — docs/design.md §3 case (a), and case (b) with that structure;
* ``homogeneous`` or ``unstructured`` genetic with every genotype in every environment:
  one block with d = L·m (case (b), balanced multi-environment trial);
* ``homogeneous`` genetic with one residual matrix and one record per genotype: one block
  with d = m (the ordinary mvLMM of GEMMA).

Each case needs every trait of every record (a missing value breaks the Kronecker form) and
at most one record per genotype and environment (replicates).  Anything else goes to the
dense engine, with the reason.

Fixed effects, exactly
----------------------
X is given per observed value.  In block b, the rows of X for column c form X_{b,c}
(n_b × p).  Their distinct non-zero columns (exact equality) form X*_b (n_b × c_b): the
intercept of a cell is the all-ones vector, a covariate is its values on the block's records.
Then X_{b,c} = X*_b T_{b,c} with a 0/1 matrix T, i.e. the block's mean is X*_b B_b with
vec B_b = T_b β (β shared across blocks, e.g. a covariate slope).  This is exact for every X
hetvc builds; X*_b need not have full rank, only X does:

    X'V⁻¹X = Σ_b T_b' [Σ_j W_j ⊗ x̃_j x̃_j'] T_b ,   X'V⁻¹y = Σ_b T_b' Σ_j (W_j ỹ_j) ⊗ x̃_j .

Per-row algebra
---------------
With K_b = U diag(s) U', rows j of Ỹ = U'Y_b, X̃ = U'X*_b are independent with
H_j = s_j G_b + E_b.  One generalised eigenproblem per block and θ diagonalises every H_j:
with H0 = E_b + s0·G_b positive definite (s0 = 0 unless E_b is not PD, then s0 = min s),
Φ'H0Φ = I and Φ'G_bΦ = diag(λ), so H_j = Φ⁻ᵀ diag(1 + (s_j − s0)λ) Φ⁻¹ and

    W_j = H_j⁻¹ = Φ diag(δ_j) Φ',   δ_ji = 1 / (1 + (s_j − s0) λ_i).

Every formula of docs/design.md §3 then costs O(d) per row in Φ coordinates (ŷ_j = Φ'ỹ_j ...):
log|V|, X'V⁻¹X, b̂, y'Py, the traces tr(P V_k) (via R̂_j = x̃_j' Q̂ x̃_j with
Q̂ = (Φ'⊗I) T (X'V⁻¹X)⁻¹ T' (Φ⊗I)), y'PV_kPy, and the AI as ½ (F'WF − F'WX C X'WF) with
F = [V_k P y], all with ∂H_j = s_j D^k (genetic element) or D^k (residual element), D^k the
0/1 pattern of the element in block coordinates.  Nothing of size N × N is formed.

Low-rank K
----------
A genomic relationship matrix of p markers has rank ≤ p.  When the pivoted Cholesky factor
of K_b (LAPACK ``dpstrf``) shows rank r < n_b, K_b = U_r diag(s_r) U_r' exactly (to
rounding) and the other n_b − r rotated rows all have s = 0 and H_j = E_b: they enter only
through the Gram matrix of the projections of [Y_b, X*_b] onto the null space of K_b
(FaST-LMM's device), so an n_b × n_b eigendecomposition is never needed.

BLUPs and PEVs
--------------
û = (ΣG ⊗ K) Z' P y for every genotype in K: Py is rotated back per block (n_b × d) and
multiplied by K[:, genotypes of the block] in row chunks.  PEV = ΣG[a,a] K[g,g] − c'Pc with
c the covariance of u_ga with the data; in block coordinates c̃ = κ_g ⊗ ΣG[ga, a] with
κ_g = U' K[genotypes, g] (= s ∘ U[g, :] for a genotype of the block), so

    c'Pc = Σ_b Σ_j κ_gj² Σ_i δ_ji σ̂_ia²  −  h_ga' (X'V⁻¹X)⁻¹ h_ga ,   σ̂ = Φ'ΣG[ga, :],

h the X'V⁻¹c of all blocks.  Cost: one (q − n_b) × n_b × r product per block.

Eigendecompositions are cached explicitly: pass an :class:`EigenCache` to
``hetvc.fit(..., eigen=cache)`` (or to :class:`SpectralEngine`) to reuse them across fits on
the same K (keyed by the contents of each K block, so a cache can never give the wrong one).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import scipy.linalg as sla

from ..errors import InputError
from ..model import Model
from .base import Engine, Evaluation, NotPositiveDefinite, Solution, restricted_constant
from .dense import memory_shortfall

__all__ = ["EigenCache", "KinshipEigen", "SpectralEngine", "SpectralPlan", "plan"]

MAX_FIXED_COLUMNS = 400  # d_b · c_b above this: the fixed part is cheaper in the dense engine
_CHUNK_BYTES = 1 << 27  # row chunks of K products (128 MiB)


# ----------------------------------------------------------------------------------------
# eigendecompositions of kinship blocks


@dataclass
class KinshipEigen:
    """K_b = U diag(values) U' (U: n × r, r ≤ n; the other n − r eigenvalues are exactly 0)."""

    values: np.ndarray  # (r,)
    vectors: np.ndarray  # (n, r)
    key: str
    method: str  # "eigh" or "pivoted Cholesky (rank r)"

    @property
    def n(self) -> int:
        return self.vectors.shape[0]

    @property
    def rank(self) -> int:
        return self.vectors.shape[1]


class EigenCache:
    """Eigendecompositions of kinship blocks, reused across fits on the same K.

    ``hetvc.fit(..., eigen=cache)``: the first fit decomposes each block of K it needs, later
    fits (other structures, other traits of the same genotypes, the two models of a simulation
    replicate) reuse them.  Entries are keyed by a hash of the block's contents, so a cache
    shared between different kinships is safe.  ``low_rank=False`` always uses a full
    eigendecomposition (no pivoted-Cholesky rank detection).
    """

    def __init__(self, low_rank: bool = True):
        self.low_rank = low_rank
        self._entries: dict[str, KinshipEigen] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"EigenCache({len(self)} blocks, {self.hits} reused, {self.misses} computed)"

    def clear(self) -> None:
        self._entries.clear()

    @property
    def nbytes(self) -> int:
        """Memory held by the cached eigenvectors and eigenvalues."""
        return sum(e.vectors.nbytes + e.values.nbytes for e in self._entries.values())

    @staticmethod
    def key(Kb: np.ndarray) -> str:
        Kb = np.ascontiguousarray(Kb, dtype=np.float64)
        h = hashlib.sha256()  # hardware-accelerated on current x86: ~1 GB/s
        h.update(np.asarray(Kb.shape, dtype=np.int64).tobytes())
        h.update(memoryview(Kb).cast("B"))
        return h.hexdigest()

    def decompose(self, Kb: np.ndarray) -> KinshipEigen:
        """The (cached) eigendecomposition of the symmetric block ``Kb``."""
        k = self.key(Kb)
        hit = self._entries.get(k)
        if hit is not None:
            self.hits += 1
            return hit
        self.misses += 1
        out = (self.low_rank and low_rank_eigen(Kb, k)) or _full_eigen(Kb, k)
        self._entries[k] = out
        return out


def _full_eigen(Kb: np.ndarray, key: str) -> KinshipEigen:
    values, vectors = sla.eigh(Kb, driver="evd", check_finite=False)  # D&C: ~5× faster than MRRR here
    return KinshipEigen(values, vectors, key, "eigh")


def low_rank_eigen(Kb: np.ndarray, key: str) -> KinshipEigen | None:
    """K_b from its rank-revealing pivoted Cholesky factor when the rank is below 80 % of n.

    dpstrf stops when the largest remaining diagonal is below n·eps·max(diag): the dropped
    part is PSD with trace ≤ (n − r)·n·eps·max(diag), rounding-level for a rank-deficient K."""
    n = len(Kb)
    if n < 64:
        return None
    diag = np.diag(Kb)
    if diag.min() < 0:
        return None
    tol = n * np.finfo(float).eps * float(diag.max())
    c, piv, rank, info = sla.lapack.dpstrf(Kb, tol=tol, lower=1)
    if info < 0 or rank >= 0.8 * n:
        return None
    low = np.zeros((n, rank))
    low[piv - 1] = np.tril(c[:, :rank])
    del c
    # For a PSD K the dropped Schur complement R is PSD with diagonal ≤ tol, so ‖R‖ ≤ n·tol.
    # An indefinite K can stop dpstrf early with a large R: probe ‖R z‖ with random z.
    z = np.random.default_rng(0).standard_normal((n, 2))
    resid = Kb @ z - low @ (low.T @ z)
    if np.linalg.norm(resid) > 2 * n * tol * np.linalg.norm(z):
        return None
    u, sv, _ = sla.svd(low, full_matrices=False, check_finite=False, lapack_driver="gesdd")
    order = np.argsort(sv ** 2)
    return KinshipEigen(sv[order] ** 2, np.ascontiguousarray(u[:, order]), key,
                        f"pivoted Cholesky (rank {rank} of {n})")


# ----------------------------------------------------------------------------------------
# where the engine applies


@dataclass
class BlockPlan:
    """One independent block of V: complete data of ``genos`` × d cells."""

    label: str
    genos: np.ndarray  # (n,) rows of K, ascending
    obs: np.ndarray  # (n, d) positions in the design's arrays
    ga: np.ndarray  # (d,) genetic index of each column
    ra: np.ndarray  # (d,) residual index of each column
    slot: np.ndarray  # (d,) record slot: columns with equal slot share a record (residual covariance)


@dataclass
class SpectralPlan:
    description: str
    blocks: list = field(default_factory=list)


@dataclass(frozen=True)
class NotApplicable:
    """Why an engine does not apply to a model (one line, without the engine's name)."""

    reason: str


class SpectralNotApplicable(InputError):
    """The spectral engine was asked for a model it does not apply to."""

    def __init__(self, reason: str):
        super().__init__(f"the spectral engine does not apply: {reason}")
        self.reason = reason


def _s(k: int) -> str:
    return "" if k == 1 else "s"


def plan(model: Model) -> SpectralPlan | NotApplicable:
    """The block layout of V for the spectral engine, or why it does not apply (one line)."""
    d = model.design
    beyond = beyond_genetic(model)
    if beyond is not None:
        return beyond
    m = len(d.traits)
    count = np.bincount(d.record, minlength=d.n_records)
    short = np.flatnonzero((count > 0) & (count < m))
    if len(short):
        n_missing = int((m - count[short]).sum())
        r = int(short[0])
        have = set(d.trait[d.record == r].tolist())
        t = next(i for i in range(m) if i not in have)
        return NotApplicable(
            f"{n_missing} missing trait value{_s(n_missing)} (first: data row {r + 1}, "
            f"trait {d.traits[t]!r}); the spectral engine needs every trait of every record"
        )
    layout = block_layout(model, complete=True)
    if isinstance(layout, NotApplicable):
        return layout
    blocks, desc = layout
    return SpectralPlan(f"spectral: {desc}", blocks)


def beyond_genetic(model: Model) -> NotApplicable | None:
    """Why a model with random terms beyond the genetic one has no spectral layout (else None)."""
    if not model.random:
        return None
    names = ", ".join(repr(f.name) for f, _ in model.random)
    return NotApplicable(f"random term{_s(len(model.random))} {names} beyond the genetic one; the "
                         "spectral engine takes the genetic term and the residual only")


def block_layout(model: Model, complete: bool) -> tuple[list, str] | NotApplicable:
    """(blocks, description) of the spectral layout, or why there is none (replicates; with
    ``complete``, a genotype missing from an environment in case (b)).

    ``complete=False`` lays out the *completed* blocks: ``obs`` is −1 at a missing cell — a
    trait missing from a record, or in case (b) a genotype × environment without a record
    (:mod:`hetvc.engines.completed`)."""
    d = model.design
    m, L = len(d.traits), len(d.envs)
    n_rec = d.n_records
    count = np.bincount(d.record, minlength=n_rec)
    pos = np.full((n_rec, m), -1, dtype=np.int64)
    pos[d.record, d.trait] = np.arange(d.n_obs)
    recs = np.flatnonzero(count > 0)
    rgeno, renv = np.zeros(n_rec, dtype=np.int64), np.zeros(n_rec, dtype=np.int64)
    rgeno[d.record], renv[d.record] = d.geno, d.env
    rgeno, renv = rgeno[recs], renv[recs]
    cell = rgeno * L + renv
    uniq, ncell = np.unique(cell, return_counts=True)
    if (ncell > 1).any():
        k = int(np.argmax(ncell > 1))
        g, l = divmod(int(uniq[k]), L)
        n_rep = int((ncell > 1).sum())
        return NotApplicable(
            f"genotype {d.ids[g]!r} has {int(ncell[k])} records in environment "
            f"{d.envs[l]!r} (replicates; {n_rep} genotype×environment cell{_s(n_rep)} with more "
            f"than one record)"
        )
    gen, res = model.genetic, model.residual
    traits = np.arange(m)
    blocks = []
    if gen.per_environment and not gen.links_environments:  # V splits by environment
        for l in range(L):
            sel = renv == l
            order = np.argsort(rgeno[sel], kind="stable")
            r_l = recs[sel][order]
            blocks.append(BlockPlan(
                f"environment {d.envs[l]}", rgeno[sel][order], pos[r_l],
                gen.index(np.full(m, l), traits, m), res.index(np.full(m, l), traits, m),
                np.zeros(m, dtype=int)))
        desc = (f"{L} environment blocks ({gen.name} genetic; {'every record complete, ' if complete else ''}"
                "one record per genotype and environment)")
    else:
        genos, per_geno = np.unique(rgeno, return_counts=True)
        if not gen.per_environment and (per_geno == 1).all() and (L == 1 or not res.per_environment):
            order = np.argsort(rgeno, kind="stable")
            blocks.append(BlockPlan(
                "all records", rgeno[order], pos[recs[order]], gen.index(renv[order][:1].repeat(m), traits, m),
                res.index(renv[order][:1].repeat(m), traits, m), np.zeros(m, dtype=int)))
            desc = (f"one block of {len(genos)} genotypes × {m} trait{_s(m)} (homogeneous "
                    f"genetic and residual; one {'complete ' if complete else ''}record per genotype)")
        elif (per_geno == L).all() or not complete:
            # every genotype once in every environment (no replicates, so at most once)
            row = np.searchsorted(genos, rgeno)
            obs = np.full((len(genos), L * m), -1, dtype=np.int64)
            for l in range(L):
                sel = renv == l
                obs[row[sel], l * m:(l + 1) * m] = pos[recs[sel]]
            envc, trc = np.repeat(np.arange(L), m), np.tile(traits, L)
            blocks.append(BlockPlan("all environments", genos, obs, gen.index(envc, trc, m),
                                    res.index(envc, trc, m), envc))
            desc = (f"{'balanced trial, ' if complete else ''}one block of {len(genos)} genotypes × {L} "
                    f"environment{_s(L)} × {m} trait{_s(m)} ({gen.name} genetic)")
        else:
            miss = np.flatnonzero(per_geno != L)
            g = int(genos[miss[0]])
            there = set(renv[rgeno == g].tolist())
            l = next(e for e in range(L) if e not in there)
            if not gen.per_environment and (per_geno == 1).all():
                why = (f"{gen.name} genetic with {res.name} residual needs every genotype in every "
                       "environment")
            else:
                why = (f"{gen.name} genetic needs every genotype in every environment"
                       + ("" if gen.per_environment else " (or one record per genotype and a homogeneous residual)"))
            return NotApplicable(f"{why}; {len(miss)} genotype{_s(len(miss))} miss an environment "
                          f"(e.g. {d.ids[g]!r} in {d.envs[l]!r})")
    return blocks, desc


def _factor_fixed(X: np.ndarray, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(X*, T) with X[obs[:, c]] = X* T_c exactly, T (d·c_b × p) with row index c·c_b + k.

    Rows of a missing cell (obs = −1, a completed layout) are free (V_oo⁻¹ never sees them): a
    column of X takes the first X* column that equals it where both are set, and sets that
    column's free rows where it has values (complete columns are factored first); rows still
    free at the end are 0."""
    n, d = obs.shape
    p = X.shape[1]
    present = obs >= 0
    exact, vectors, known, entries = {}, [], [], []
    for c in np.argsort((~present).sum(0), kind="stable"):
        rows = present[:, c]
        Xc = X[obs[rows, c]]
        for k in np.flatnonzero(np.any(Xc != 0, axis=0)):
            v = np.zeros(n)
            v[rows] = Xc[:, k]
            if rows.all():
                ks = exact.setdefault(v.tobytes(), len(vectors))
            else:
                ks = next((s for s, (u, set_) in enumerate(zip(vectors, known))
                           if np.array_equal(u[rows & set_], v[rows & set_])), len(vectors))
            if ks == len(vectors):
                vectors.append(v)
                known.append(rows.copy())
            else:
                fill = rows & ~known[ks]
                vectors[ks][fill] = v[fill]
                known[ks] |= rows
            entries.append((c, ks, k))
    cb = max(len(vectors), 1)
    xstar = np.column_stack(vectors) if vectors else np.zeros((n, 1))
    T = np.zeros((d * cb, p))
    for c, ks, k in entries:
        T[c * cb + ks, k] += 1.0
    return xstar, T


# ----------------------------------------------------------------------------------------
# the engine


class _Block:
    """Precomputations of one block: rotated data, patterns of the parameters it carries."""

    def __init__(self, bp: BlockPlan, model: Model, eig: KinshipEigen, fixed: tuple):
        d = model.design
        self.plan = bp
        self.genos = bp.genos
        self.ga, self.ra = bp.ga, bp.ra
        self.same_slot = (bp.slot[:, None] == bp.slot[None, :]).astype(float)
        self.n, self.d = bp.obs.shape
        self.eig = eig
        U = eig.vectors
        self.s = eig.values
        self.Y = np.where(bp.obs >= 0, d.y[bp.obs], 0.0)  # (n, d); 0 at a completed cell
        self.Xs, self.T = fixed
        self.c = self.Xs.shape[1]
        self.yt = U.T @ self.Y
        self.xt = U.T @ self.Xs
        self.n0 = self.n - eig.rank
        if self.n0:
            Z = np.hstack([self.Y, self.Xs])
            Zp = Z - U @ (U.T @ Z)
            gram = Zp.T @ Zp
            dd = self.d
            self.Gyy, self.Gxy, self.Gxx = gram[:dd, :dd], gram[dd:, :dd], gram[dd:, dd:]
        # parameters with a non-zero pattern in this block
        kidx, pats, genetic = [], [], []
        for k, (t, a, b) in enumerate(model.elements()):
            idx = self.ga if t == 0 else self.ra
            mask = ((idx[:, None] == a) & (idx[None, :] == b)) | ((idx[:, None] == b) & (idx[None, :] == a))
            if t == 1:
                mask &= self.same_slot.astype(bool)
            if mask.any():
                kidx.append(k)
                pats.append(mask.astype(float))
                genetic.append(t == 0)
        self.kidx = np.array(kidx, dtype=int)
        self.pats = np.array(pats).reshape(len(kidx), self.d, self.d)
        self.genetic = np.array(genetic, dtype=bool)


@dataclass
class _BlockState:
    phi: np.ndarray
    delta: np.ndarray  # (r, d)
    delta0: np.ndarray  # (d,) null-space rows
    logdet: float = 0.0  # log|V_b|
    xvx: np.ndarray | None = None  # (p, p) X_b'V_b⁻¹X_b
    xvy: np.ndarray | None = None  # (p,) X_b'V_b⁻¹y_b
    vh: np.ndarray | None = None  # (r, d) Φ' W r_j = δ ∘ (Φ' r_j)
    B: np.ndarray | None = None  # (c, d)
    Rrr: np.ndarray | None = None  # (d, d) Φ' Σ_null r r' Φ
    extra: object = None  # a subclass's per-θ data of the block (hetvc.engines.completed)


def _gls(xvx: np.ndarray, xvy: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """C = (X'V⁻¹X)⁻¹, b̂ = C X'V⁻¹y and log|X'V⁻¹X| (Cholesky)."""
    try:
        chol = sla.cho_factor(xvx, lower=True, check_finite=False)
    except sla.LinAlgError as err:
        raise NotPositiveDefinite(str(err)) from None
    C = sla.cho_solve(chol, np.eye(len(xvx)), check_finite=False)
    return C, C @ xvy, 2.0 * float(np.log(np.diag(chol[0])).sum())


class SpectralEngine(Engine):
    """ℓ, score, AI, BLUEs, BLUPs and PEVs in the rotated space (see the module docstring)."""

    name = "spectral"
    block_class = _Block

    def __init__(self, model: Model, spectral_plan: SpectralPlan | None = None, eigen: EigenCache | None = None):
        if spectral_plan is None:
            spectral_plan = plan(model)
            if isinstance(spectral_plan, NotApplicable):
                raise SpectralNotApplicable(spectral_plan.reason)
        self.model = model
        self.plan = spectral_plan
        self.cache = eigen if eigen is not None else EigenCache()
        d = model.design
        self.const = restricted_constant(d.n_obs, d.X.shape[1], model.method)
        self.n_elements = len(model.elements())
        fixed = [_factor_fixed(d.X, bp.obs) for bp in spectral_plan.blocks]
        for bp, (xs, _) in zip(spectral_plan.blocks, fixed):
            if bp.obs.shape[1] * xs.shape[1] > MAX_FIXED_COLUMNS:
                raise SpectralNotApplicable(
                    f"block {bp.label!r} needs {xs.shape[1]} fixed-effect columns per cell "
                    f"({bp.obs.shape[1] * xs.shape[1]} in all, more than {MAX_FIXED_COLUMNS})")
        self._check_memory(fixed)
        before = self.cache.misses
        self.blocks = [self.block_class(bp, model, self._eigen(bp), fx) for bp, fx in zip(spectral_plan.blocks, fixed)]
        self.computed = self.cache.misses - before

    def memory_bytes(self, fixed) -> float:
        """About the peak memory of the largest block: its K_b, eigenvectors and the
        eigensolver's work (3 n_b² doubles), and its rotated data and fixed effects (4 n_b·d_b·c_b)."""
        return max(8.0 * (3 * bp.obs.shape[0] ** 2 + 4 * bp.obs.size * max(xs.shape[1], 1))
                   for bp, (xs, _) in zip(self.plan.blocks, fixed))

    def _check_memory(self, fixed) -> None:
        """Refuse, in one line with the numbers and the way out, blocks the machine cannot hold."""
        need = self.memory_bytes(fixed)
        have = memory_shortfall(need)
        if have is None:
            return
        n = max(bp.obs.shape[0] for bp in self.plan.blocks)
        raise InputError(
            f"the spectral engine needs about {need / 2**30:.1f} GB for a block of {n:,} genotypes (the "
            f"eigendecomposition of its K) and about {have / 2**30:.1f} GB is available; use a GRM of fewer markers "
            "than genotypes (low rank), fewer genotypes, or a machine with more memory")

    def _eigen(self, bp: BlockPlan) -> KinshipEigen:
        """The (cached) eigendecomposition of the block's K_b."""
        K = self.model.design.K
        return self.cache.decompose(K[np.ix_(bp.genos, bp.genos)])

    def summary(self) -> str:
        """Eigendecompositions used: how many computed, reused, low-rank."""
        low = [b.eig.method for b in self.blocks if b.eig.method != "eigh"]
        text = (f"{len(self.blocks)} block{_s(len(self.blocks))}, {self.computed} eigendecomposition"
                f"{_s(self.computed)} computed, {len(self.blocks) - self.computed} reused")
        if low:
            text += f"; low-rank K: {low[0]}" + (f" (+{len(low) - 1} more)" if len(low) > 1 else "")
        return text

    # -- per-θ state ----------------------------------------------------------------------
    def _block_matrices(self, b: _Block, G: np.ndarray, E: np.ndarray):
        Gb = G[np.ix_(b.ga, b.ga)]
        Eb = E[np.ix_(b.ra, b.ra)] * b.same_slot
        return Gb, Eb

    def _diagonalise(self, b: _Block, Gb: np.ndarray, Eb: np.ndarray):
        """Φ, λ, s0, log|H0| with Φ'H0Φ = I, Φ'G_bΦ = diag(λ), H0 = E_b + s0·G_b."""
        s0 = 0.0
        try:
            low = np.linalg.cholesky(Eb)
        except np.linalg.LinAlgError:
            s0 = float(min(b.s.min(), 0.0)) if b.n0 else float(b.s.min())
            try:
                low = np.linalg.cholesky(Eb + s0 * Gb)
            except np.linalg.LinAlgError:
                raise NotPositiveDefinite("a row covariance H_j is not positive definite") from None
        linv = np.linalg.inv(low)
        M = linv @ Gb @ linv.T
        lam, Q = np.linalg.eigh((M + M.T) / 2)
        phi = linv.T @ Q
        return phi, lam, s0, 2.0 * float(np.log(np.diag(low)).sum())

    def _weights(self, b: _Block, G: np.ndarray, E: np.ndarray) -> _BlockState:
        """Φ, δ, log|V_b|, X_b'V_b⁻¹X_b and X_b'V_b⁻¹y_b of a block at ΣG = G, ΣE = E."""
        Gb, Eb = self._block_matrices(b, G, E)
        phi, lam, s0, logdet0 = self._diagonalise(b, Gb, Eb)
        den = 1.0 + (b.s - s0)[:, None] * lam[None, :]
        den0 = 1.0 - s0 * lam
        if den.size and den.min() <= 0 or (b.n0 and den0.min() <= 0):
            raise NotPositiveDefinite("a row covariance H_j is not positive definite")
        delta, delta0 = 1.0 / den, 1.0 / den0
        logdet = b.n * logdet0 + float(np.log(den).sum()) + (b.n0 * float(np.log(den0).sum()) if b.n0 else 0.0)
        # X'V⁻¹X: (Φ⊗I) blockdiag_i(Σ_j δ_ji x̃x̃') (Φ'⊗I)
        Mi = np.stack([(b.xt * delta[:, i:i + 1]).T @ b.xt for i in range(b.d)])
        if b.n0:
            Mi += delta0[:, None, None] * b.Gxx[None]
        Mb = np.einsum("ai,ikl,bi->akbl", phi, Mi, phi).reshape(b.d * b.c, b.d * b.c)
        Z = (delta * (b.yt @ phi)) @ phi.T
        xz = b.xt.T @ Z  # (c, d)
        if b.n0:
            xz += b.Gxy @ (phi * delta0) @ phi.T
        return _BlockState(phi, delta, delta0, logdet, b.T.T @ Mb @ b.T, b.T.T @ xz.T.ravel())

    def _residuals(self, b: _Block, st: _BlockState, beta: np.ndarray, shift: np.ndarray | None = None) -> float:
        """Sets B, vh (and Rrr) of the block at b̂; returns its part of y'Py.  ``shift`` (r, d)
        is subtracted from the rotated residuals Φ' r_j (the completed engine's correction)."""
        st.B = (b.T @ beta).reshape(b.d, b.c).T
        rh = (b.yt - b.xt @ st.B) @ st.phi
        if shift is not None:
            rh -= shift
        st.vh = st.delta * rh
        ypy = float((rh * st.vh).sum())
        if b.n0:
            Grr = b.Gyy - st.B.T @ b.Gxy - b.Gxy.T @ st.B + st.B.T @ b.Gxx @ st.B
            st.Rrr = st.phi.T @ Grr @ st.phi
            ypy += float(st.delta0 @ np.diag(st.Rrr))
        return ypy

    def _state(self, theta: np.ndarray):
        G, E = self.model.matrices(theta)
        states = [self._weights(b, G, E) for b in self.blocks]
        C, beta, logdet_xvx = _gls(sum(st.xvx for st in states), sum(st.xvy for st in states))
        ypy = sum(self._residuals(b, st, beta) for b, st in zip(self.blocks, states))
        return G, E, states, beta, C, sum(st.logdet for st in states), logdet_xvx, ypy

    # -- Engine interface ---------------------------------------------------------------
    def evaluate_elements(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        reml = self.model.method == "reml"
        G, E, states, beta, C, logdet, logdet_xvx, ypy = self._state(theta)
        loglik = -0.5 * (self.const + logdet + (logdet_xvx if reml else 0.0) + ypy)
        if not derivatives:
            return Evaluation(loglik)
        n = self.n_elements
        p = len(beta)
        score = np.zeros(n)
        fwf = np.zeros((n, n))
        xwf = np.zeros((p, n))
        for b, st in zip(self.blocks, states):
            if not len(b.kidx):
                continue
            A_g, A_e = self._trace_weights(b, st, C, reml)
            Dh = st.phi.T @ b.pats @ st.phi  # Φ'D^kΦ, (k, d, d)
            score[b.kidx] += -0.5 * np.where(
                b.genetic, np.einsum("kiI,iI->k", Dh, A_g), np.einsum("kiI,iI->k", Dh, A_e))
            # AI: Fh[j, i, k] = Φ' ∂H_j^k W_j r_j
            Fh = np.tensordot(st.vh, Dh, axes=([1], [2])).transpose(0, 2, 1)  # (r, d, k)
            Fh[:, :, b.genetic] *= b.s[:, None, None]
            fw, xw = self._ai_products(b, st, Dh, np.ascontiguousarray(Fh), reml)
            fwf[np.ix_(b.kidx, b.kidx)] += fw
            if reml:
                xwf[:, b.kidx] += xw
        ai = 0.5 * fwf
        if reml:
            ai -= 0.5 * xwf.T @ C @ xwf
        return Evaluation(loglik, score, (ai + ai.T) / 2)

    def _trace_weights(self, b: _Block, st: _BlockState, C: np.ndarray, reml: bool):
        """Â for genetic (weights s_j) and residual (weights 1) elements, in Φ coordinates:
        tr(Dh Â) = tr(P V_k) − y'PV_kPy."""
        phi, delta, vh = st.phi, st.delta, st.vh
        d, c = b.d, b.c
        A_g = np.diag(b.s @ delta) - (vh * b.s[:, None]).T @ vh
        A_e = np.diag(delta.sum(0)) - vh.T @ vh
        if b.n0:
            svv = st.delta0[:, None] * st.Rrr * st.delta0[None, :]
            A_e += np.diag(b.n0 * st.delta0) - svv
        if reml:
            Qb = b.T @ C @ b.T.T
            Qh = np.einsum("ai,akbl,bI->ikIl", phi, Qb.reshape(d, c, d, c), phi)
            if c == 1:
                Rh = (b.xt[:, 0] ** 2)[:, None, None] * Qh[None, :, 0, :, 0]
            else:
                xq = (b.xt @ Qh.transpose(1, 0, 2, 3).reshape(c, -1)).reshape(-1, d, d, c)
                Rh = np.einsum("jiIl,jl->jiI", xq, b.xt)
            dRd = delta[:, :, None] * Rh * delta[:, None, :]
            A_g -= np.einsum("j,jiI->iI", b.s, dRd)
            A_e -= dRd.sum(0)
            if b.n0:
                A_e -= np.outer(st.delta0, st.delta0) * np.einsum("ikIl,kl->iI", Qh, b.Gxx)
        return A_g, A_e

    def _ai_products(self, b: _Block, st: _BlockState, Dh: np.ndarray, Fh: np.ndarray, reml: bool):
        """(F_b'V⁻¹F_b, X'V⁻¹F_b or None) of the block's elements, F = [V_k P y]."""
        phi, delta = st.phi, st.delta
        d, c = b.d, b.c
        Af = Fh.reshape(-1, len(b.kidx))
        fw = (Af * delta.reshape(-1, 1)).T @ Af
        if b.n0:
            res = ~b.genetic
            if res.any():
                svv = st.delta0[:, None] * st.Rrr * st.delta0[None, :]
                Dr = Dh[res]
                fw[np.ix_(res, res)] += np.einsum("i,kiI,IJ,lJi->kl", st.delta0, Dr, svv, Dr)
        if not reml:
            return fw, None
        G1 = delta[:, :, None] * Fh
        tmp = (b.xt.T @ G1.reshape(len(b.s), -1)).reshape(c, d, -1)
        wf = np.tensordot(phi, tmp, axes=([1], [1])).reshape(d * c, -1)
        if b.n0 and (~b.genetic).any():
            Sxv = (b.Gxy - b.Gxx @ st.B) @ phi * st.delta0[None, :]  # Σ_null x̃ vh'
            for kk in np.flatnonzero(~b.genetic):
                wf[:, kk] += (Sxv @ Dh[kk] @ (phi * st.delta0).T).T.ravel()
        return fw, b.T.T @ wf

    def solve(self, theta: np.ndarray, pev: bool = False) -> Solution:
        """BLUEs, BLUPs û = (ΣG ⊗ K) Z'Py for every genotype in K, fitted values, PEVs."""
        G, E, states, beta, C, *_ = self._state(theta)
        d = self.model.design
        K = d.K
        dG = G.shape[0]
        obs_genos = np.unique(np.concatenate([b.genos for b in self.blocks]))
        agg = np.zeros((len(obs_genos), dG))
        for b, st in zip(self.blocks, states):
            py = b.eig.vectors @ (st.vh @ st.phi.T)  # P y of the block, (n, d)
            if b.n0:
                R = b.Y - b.Xs @ st.B
                R -= b.eig.vectors @ (b.eig.vectors.T @ R)
                py += R @ (st.phi * st.delta0) @ st.phi.T
            np.add.at(agg, np.searchsorted(obs_genos, b.genos), py @ G[b.ga, :])
        blup = _k_columns_times(K, obs_genos, agg)
        gidx = self.model.genetic.index(d.env, d.trait, len(d.traits))
        fitted = d.X @ beta + blup[d.geno, gidx]
        out = Solution(beta, C, blup, fitted)
        if pev:
            out.pev = self._pev(G, states, C)
        return out

    def _pev(self, G: np.ndarray, states, C: np.ndarray) -> np.ndarray:
        K = self.model.design.K
        q, dG = K.shape[0], G.shape[0]
        p = C.shape[0]
        first = np.zeros((q, dG))
        h = np.zeros((q, p, dG))
        for b, st in zip(self.blocks, states):
            phi, delta = st.phi, st.delta
            U, s = b.eig.vectors, b.s
            sig = phi.T @ G[b.ga, :]  # (d, dG) σ̂
            w = delta @ sig ** 2  # (r, dG)
            w0 = st.delta0 @ sig ** 2
            # X part: Ycoef[j, a, k, g] = x̃_jk · [Φ (δ_j ∘ σ̂_g)]_a
            ws = np.einsum("ai,ji,ig->jag", phi, delta, sig, optimize=True)  # (r, d, dG)
            ycoef = (ws[:, :, None, :] * b.xt[:, None, :, None]).reshape(len(s), -1)
            if b.n0:
                xperp = b.Xs - U @ (U.T @ b.Xs)
                ws0 = np.einsum("ai,i,ig->ag", phi, st.delta0, sig)
            TT = b.T.T.reshape(p, b.d, b.c)
            fix = self._pev_correction(b, st, ws)

            def add(rows, kappa, kperp_sq=None, kx=None):
                first[rows] += (kappa ** 2) @ w
                hb = (kappa @ ycoef).reshape(len(rows), b.d, b.c, dG)
                if kx is not None:  # null-space part: X_⊥'k_g ⊗ Φ(δ0 ∘ σ̂_g)
                    first[rows] += kperp_sq[:, None] * w0[None, :]
                    hb += ws0[None, :, None, :] * kx[:, None, :, None]
                h[rows] += np.tensordot(hb, TT, axes=([1, 2], [1, 2])).transpose(0, 2, 1)
                if fix is not None:
                    fix(rows, kappa, first, h)

            add(b.genos, U * s[None, :])  # genotypes of the block: K_b U = U diag(s), null part 0
            inblock = np.zeros(q, dtype=bool)
            inblock[b.genos] = True
            others = np.flatnonzero(~inblock)
            step = max(1, _CHUNK_BYTES // (8 * max(b.n, 1)))
            for i0 in range(0, len(others), step):
                rows = others[i0:i0 + step]
                kr = K[np.ix_(rows, b.genos)]
                kappa = kr @ U
                if b.n0:
                    kperp_sq = np.maximum(np.einsum("ij,ij->i", kr, kr) - np.einsum("ij,ij->i", kappa, kappa), 0.0)
                    add(rows, kappa, kperp_sq, kr @ xperp)
                else:
                    add(rows, kappa)
        corr = np.einsum("rpg,pq,rqg->rg", h, C, h, optimize=True)
        return np.diag(G)[None, :] * np.diag(K)[:, None] - first + corr

    def _pev_correction(self, b: _Block, st: _BlockState, ws: np.ndarray):
        """None, or fix(rows, κ, first, h) that corrects c'V⁻¹c (``first``) and X'V⁻¹c (``h``)
        of the genotypes ``rows`` (κ = U'K[genotypes, rows]); ws[j, :, g] = W_j ΣG[ga, g]."""
        return None


def _k_columns_times(K: np.ndarray, cols: np.ndarray, M: np.ndarray) -> np.ndarray:
    """K[:, cols] @ M without copying K (row chunks when cols is a subset)."""
    q = K.shape[0]
    if len(cols) == q and (cols == np.arange(q)).all():
        return K @ M
    out = np.empty((q, M.shape[1]))
    step = max(1, _CHUNK_BYTES // (8 * max(len(cols), 1)))
    for i0 in range(0, q, step):
        out[i0:i0 + step] = K[i0:i0 + step][:, cols] @ M
    return out
