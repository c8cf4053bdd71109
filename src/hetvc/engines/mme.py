"""The mixed-model-equations engine: Henderson's equations, never V (docs/design.md §3).

Unknowns: the fixed effects b and, for the genetic term and every random term t, u_t over
every level of its relationship 𝒦_t and every row of Σ_t, Var(u_t) = G_t = 𝒦_t ⊗ Σ_t.  The
equations are solved for v_t with u_t = (I ⊗ L_t) v_t, Σ_t = L_t L_t' (Cholesky, block by block),
so that Var(v_t) = 𝒦_t ⊗ I and Σ_t⁻¹ never appears: C stays well conditioned when Σ_t is
near singular (an estimate on the boundary).  With W̃ = [X, Z_t (I ⊗ L_t)] and R =
blockdiag over records of ΣE[rows of the record]:

    C̃ = W̃'R⁻¹W̃ + blockdiag(0, 𝒦_1⁻¹ ⊗ I, …),   C̃ ŝ = r = W̃'R⁻¹y,   Py = R⁻¹ê, ê = y − W̃ŝ
    log|V| + log|X'V⁻¹X| = log|R| + Σ_t d_t log|𝒦_t| + log|C̃|,   y'Py = y'R⁻¹y − ŝ'r

(|C̃| = |C| Π_t |Σ_t|^{n_t}), and for ML log|V| is the same plus log|C^XX| (X'V⁻¹X =
(C^XX)⁻¹, C^XX the fixed block of C̃⁻¹).  With Ĉ = C̃⁻¹ (REML), or C̃⁻¹ − C̃⁻¹[:,X] (C^XX)⁻¹
C̃⁻¹[X,:] (ML: the inverse of the random part alone), Z_t'PZ_t = G_t⁻¹ − G_t⁻¹ Ĉ_uu G_t⁻¹ and
Z_t'Py = G_t⁻¹û_t give, for an element (a, b) of Σ_t (μ = 2 − δ_ab, n_t levels),

    ∂ℓ/∂σ_ab = −½ μ [L⁻ᵀ (n_t I − Ã_t) L⁻¹ − Ŵ_t'𝒦_t⁻¹Ŵ_t]_ab,   Ã_t[a,b] = Σ_jj' 𝒦⁻¹_jj' Ĉ[(j,a),(j',b)],

Ŵ_t = Û_t Σ_t⁻¹ = V̂_t L_t⁻¹ (levels × d_t), and for an element of ΣE, with S_r = ΣE over
record r's rows and Q_r = W̃_r Ĉ W̃_r',

    ∂ℓ/∂σ_ab = −½ μ [Σ_r S_r⁻¹ − S_r⁻¹ (Q_r + ê_r ê_r') S_r⁻¹]_ab      (embedded in ΣE's rows),

summed per pattern of observed rows (S_r is the same for every record of a pattern).  Only the
elements of Ĉ on the pattern of C̃ are needed.  AI = ½ F'PF with F = [V_k Py]: V_k Py = Z_t
vec(Ŵ_t ∂Σ_t) for a term, ∂R R⁻¹ê for the residual; F'PF = F'R⁻¹F − (W̃'R⁻¹F)'Ĉ(W̃'R⁻¹F).
BLUPs û_t = (I ⊗ L_t) v̂_t, PEVs the diagonal of (I ⊗ L_t) C̃^{vv} (I ⊗ L_t)'.

Two factorisations of C, chosen here:

* **dense C̃**, where some 𝒦_t⁻¹ is dense (a genomic K): C̃ splits into the connected components
  of its pattern (the unknowns linked through a value, a record, a block of Σ_t and a connected
  part of 𝒦_t: the environments for a heterogeneous ΣG); each (small ones batched together) is
  factored by LAPACK Cholesky and inverted whole.  Cost Σ n_g³ for n_g unknowns per group.
* **sparse C̃**, where every 𝒦_t⁻¹ is sparse (identity, diagonal, a pedigree's A⁻¹): an LDL'
  factor by QDLDL (``qdldl`` on PyPI: wheels for every platform, no system library, AMD
  ordering; CHOLMOD through scikit-sparse needs SuiteSparse installed) and the elements of C̃⁻¹
  on the pattern of L + L' by Takahashi's recurrences, supernode by supernode
  (:class:`_SelectedInverse`).

A genetic K of low rank r < 0.8 n (a GRM of few markers; pivoted Cholesky with a random probe,
spectral's :func:`low_rank_eigen`) enters through its factor, K = WW' (W: n × r), as u = (W ⊗ I)a
with Var(a) = I_r ⊗ ΣG: the same V, so the formulas above hold with 𝒦 = I_r (log|𝒦| = 0) and
Z_G(W ⊗ I) for Z_G; the genetic part has r·d unknowns (:class:`_LowRank`), û_j = (W_j ⊗ I)â and
PEV(u_j) = (W_j ⊗ L) C̃^{vv} (W_j ⊗ L)' for every genotype of K.
"""

from __future__ import annotations

import itertools
from functools import cached_property

import numpy as np
import qdldl
import scipy.linalg as sla
import scipy.sparse as sp
from scipy.linalg import blas, lapack
from scipy.linalg.lapack import dtrtri
from scipy.sparse.csgraph import connected_components

from ..errors import InputError
from ..model import Model
from .base import Engine, Evaluation, NotPositiveDefinite, Solution, restricted_constant
from .dense import memory_shortfall
from .spectral import low_rank_eigen

_BATCH = 256  # components below this many unknowns are factored together, in batches of about this size
_BORDERED = 64  # a component of at least this many unknowns may be factored by pieces and border
_SPARSE_WORK = 30.0  # a flop of the vectorised sparse factor and inverse against one of LAPACK's


class MMENotApplicable(Exception):
    """The mixed-model equations cannot be formed for this model (``reason``: one line)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class _Kernel:
    """𝒦_t⁻¹ over a term's unknown levels and log|𝒦_t|: sparse (identity, diagonal, a pedigree's
    A⁻¹), dense (inverted by :meth:`prepare`) or, with ``low_rank`` and a dense K = WW' of rank
    r < 0.8 n (spectral's :func:`low_rank_eigen`, W = U diag(s)^½), the identity over r factor
    levels a with u = (W ⊗ I) a (then ``W`` is set and ``n`` = r)."""

    def __init__(self, factor, low_rank: bool = False):
        self.name = factor.name
        self.n = len(factor.levels)
        rel = factor.relationship
        self.dense_kernel = self.W = None
        if rel is None:
            self.inverse, self.logdet = sp.identity(self.n, format="csr"), 0.0
        elif factor.kernel_inverse is not None:
            self.inverse, self.logdet = sp.csr_matrix(factor.kernel_inverse), float(rel.logdet)
        elif np.count_nonzero(rel - np.diag(np.diag(rel))) == 0:
            diag = np.diag(rel)
            if not np.all(diag > 0):
                raise MMENotApplicable(f"the relationship of {self.name!r} has a zero diagonal element")
            self.inverse, self.logdet = sp.diags(1.0 / diag, format="csr"), float(np.log(diag).sum())
        else:
            eigen = low_rank_eigen(rel, factor.name) if low_rank else None
            if eigen is None:
                self.inverse, self.logdet, self.dense_kernel = None, None, rel
            else:
                self.W = eigen.vectors * np.sqrt(eigen.values)
                self.n = eigen.rank
                self.inverse, self.logdet = np.eye(self.n), 0.0

    @property
    def sparse(self) -> bool:
        return self.dense_kernel is None and self.W is None

    def components(self) -> np.ndarray:
        """Connected component of every level in the relationship's pattern."""
        if self.W is not None:
            return np.zeros(self.n, dtype=np.int64)
        pattern = self.inverse if self.sparse else sp.csr_matrix(self.dense_kernel != 0)
        return connected_components(pattern, directed=False)[1]

    def prepare(self) -> None:
        """Invert a dense 𝒦 (Cholesky); a singular one cannot enter the equations."""
        if self.sparse or self.inverse is not None:
            return
        try:
            chol = sla.cholesky(self.dense_kernel, lower=True, check_finite=False)
        except (sla.LinAlgError, ValueError):
            raise MMENotApplicable(f"the relationship of {self.name!r} is singular (not positive definite), so "
                                   "its inverse does not exist") from None
        self.logdet = 2.0 * float(np.log(np.diag(chol)).sum())
        self.inverse = sla.cho_solve((chol, True), np.eye(self.n), check_finite=False)

    def times(self, values: np.ndarray) -> np.ndarray:
        """𝒦⁻¹ · values (levels × k)."""
        return self.inverse @ values


class _Patterns:
    """The residual by records grouped by their pattern of observed rows of ΣE: for pattern p,
    ``values[p]`` (records × k) are the observed values of its records and ``rows[p]`` their rows."""

    def __init__(self, residual):
        rec, idx = residual.unit, residual.index
        order = np.lexsort((idx, rec))  # record-major, then row
        counts = np.bincount(rec)
        start = np.concatenate([[0], np.cumsum(counts)[:-1]])
        keys = {}
        self.values, self.rows = [], []
        for k in np.unique(counts):
            recs = np.flatnonzero(counts == k)
            vals = order[start[recs][:, None] + np.arange(k)[None, :]]  # (records, k)
            rows = idx[vals]
            _, first, inv = np.unique(rows, axis=0, return_index=True, return_inverse=True)
            for g, f in enumerate(first):
                keys[tuple(rows[f])] = vals[inv.ravel() == g]
        for r, vals in keys.items():
            self.rows.append(np.array(r))
            self.values.append(vals)
        self.n_records = len(counts)

    def inverses(self, SE: np.ndarray):
        """(S_p⁻¹ per pattern, log|R|)."""
        invs, logdet = [], 0.0
        for rows, vals in zip(self.rows, self.values):
            try:
                chol = sla.cholesky(SE[np.ix_(rows, rows)], lower=True, check_finite=False)
            except (sla.LinAlgError, ValueError):
                raise NotPositiveDefinite("ΣE") from None
            logdet += 2.0 * len(vals) * float(np.log(np.diag(chol)).sum())
            invs.append(sla.cho_solve((chol, True), np.eye(len(rows)), check_finite=False))
        return invs, logdet

    def apply(self, invs, values: np.ndarray) -> np.ndarray:
        """R⁻¹·values (N or N × c), pattern by pattern."""
        out = np.empty_like(values)
        for vals, inv in zip(self.values, invs):
            out[vals] = np.einsum("rk...,kj->rj...", values[vals], inv)
        return out


class _Coordinates:
    """The coordinates of a term's unknowns: u_t = (I ⊗ F_t) v_t with Σ_t = F_tF_t' (d × d').

    F_t is the Cholesky factor of every block of Σ_t (d' = d, the columns grouped as the rows),
    or the factor the structure supplies (``CovStructure.factor``: FA's [Λ, Ψ^½], d' = k + d);
    then ``col_blocks`` are the connected parts of F's pattern, and ``border`` the columns that
    load on every row (FA's common factors), which are all that links the environments."""

    def __init__(self, structure, theta_slice: slice):
        self.structure, self.slice = structure, theta_slice
        d = structure.dim
        pattern = structure.factor_pattern()
        self.own = pattern is not None
        if self.own:
            self.pattern = np.asarray(pattern, dtype=bool)
            rows, cols = _bipartite_parts(self.pattern)
            self.row_blocks = [np.flatnonzero(rows == c) for c in np.unique(np.concatenate([rows, cols]))]
            self.col_blocks = [np.flatnonzero(cols == c) for c in np.unique(np.concatenate([rows, cols]))]
            common = self.pattern.all(0) if d > 1 else np.zeros(self.pattern.shape[1], dtype=bool)
            self.border = np.flatnonzero(common)
        else:
            self.pattern = _block_mask(structure.blocks, d)
            self.row_blocks = self.col_blocks = [np.sort(np.asarray(b)) for b in structure.blocks]
            self.border = np.zeros(0, dtype=np.int64)
        self.d, self.dv = self.pattern.shape
        self.row_block_of = np.zeros(self.d, dtype=np.int64)
        self.col_block_of = np.zeros(self.dv, dtype=np.int64)
        for b, (rows, cols) in enumerate(zip(self.row_blocks, self.col_blocks)):
            self.row_block_of[rows] = b
            self.col_block_of[cols] = b
        # the pieces: connected parts of F's pattern without the border columns (−1: border)
        inner = self.pattern.copy()
        inner[:, self.border] = False
        self.piece_of_row, cols = _bipartite_parts(inner)
        self.piece_of_col = np.where(np.isin(np.arange(self.dv), self.border), -1, cols)
        self.n_pieces = int(max(self.piece_of_row.max(), cols.max())) + 1
        self.col_mask = _block_mask(self.col_blocks, self.dv)  # the pattern of Cov(v) ⊗ its blocks

    def factor(self, theta: np.ndarray, S: np.ndarray) -> np.ndarray:
        """F at θ (Σ = S); a block of Σ that is not positive definite raises."""
        if self.own:  # a Σ outside the structure's cone (a ψ < 0) has no such factor
            F = self.structure.factor(theta[self.slice])
            if np.abs(F @ F.T - S).max() > 1e-10 * np.abs(S).max():
                raise NotPositiveDefinite("Σ")
            return F
        F = np.zeros_like(S)
        for blk in self.row_blocks:
            try:
                F[np.ix_(blk, blk)] = sla.cholesky(S[np.ix_(blk, blk)], lower=True, check_finite=False)
            except (sla.LinAlgError, ValueError):
                raise NotPositiveDefinite("Σ") from None
        return F

    def right_inverse(self, F: np.ndarray) -> np.ndarray:
        """F⁺ = F'Σ⁻¹ (d' × d, FF⁺ = I; Σ = FF'): F⁻¹ for a square F, block by block."""
        out = np.zeros(F.T.shape)
        for rows, cols in zip(self.row_blocks, self.col_blocks):
            Fb = F[np.ix_(rows, cols)]
            if not self.own:
                out[np.ix_(cols, rows)] = sla.solve_triangular(Fb, np.eye(len(rows)), lower=True, check_finite=False)
                continue
            try:
                chol = sla.cho_factor(Fb @ Fb.T, lower=True, check_finite=False)
            except (sla.LinAlgError, ValueError):
                raise NotPositiveDefinite("Σ") from None
            out[np.ix_(cols, rows)] = sla.cho_solve(chol, Fb, check_finite=False).T
        return out


def _bipartite_parts(pattern: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Connected part of every row and every column of a bool pattern (rows and columns linked
    by its non-zeros; one label space)."""
    d = len(pattern)
    graph = sp.bmat([[None, sp.csr_matrix(pattern)], [sp.csr_matrix(pattern.T), None]])
    label = connected_components(graph, directed=False)[1]
    return label[:d], label[d:]


def _bordered_flops(sizes: np.ndarray, border: int) -> float:
    """Flops of :class:`_DenseC`'s factor and inverse (on the pattern) of a matrix of
    independent pieces of ``sizes`` with a common border."""
    p, s = sizes.astype(float), float(border)
    return float((p ** 3 + 3 * p ** 2 * s + 2 * p * s ** 2).sum() + s ** 3)


def _block_mask(blocks, dim: int) -> np.ndarray:
    mask = np.zeros((dim, dim), dtype=bool)
    for blk in blocks:
        mask[np.ix_(blk, blk)] = True
    return mask


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """concat(arange(s, s + n) for s, n in zip(starts, sizes))."""
    total = int(sizes.sum())
    offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
    return np.repeat(starts, sizes) + (np.arange(total) - offsets)


class _DenseC:
    """C factored group by group (connected components of C, small ones batched) with LAPACK,
    and C⁻¹ formed from the factor when first asked for (:meth:`selected`: an evaluation of ℓ
    alone needs only the factor).  A whole group keeps C⁻¹ whole; a group of independent pieces
    P_i with a common border B (ordered P_1 … P_n B; ``pieces[g]``: their sizes) is factored by
    blocks and keeps C⁻¹ on its pattern only:

        C_P_i = L_iL_i',   H_i = L_i⁻¹C_P_iB,   S = C_BB − Σ_i H_i'H_i = L_SL_S',
        log|C| = Σ_i log|C_P_i| + log|S|;
        Y_i = L_i⁻ᵀH_i = C_P_i⁻¹C_P_iB,   T = S⁻¹,
        C⁻¹[B,B] = T,   C⁻¹[P_i,B] = −Y_iT,   C⁻¹[P_i,P_i] = C_P_i⁻¹ + Y_iTY_i'.

    Y_iTY_i' = G_iG_i' and Y_iT = G_iL_S⁻¹ with G_i = Y_iL_S⁻ᵀ: products with the inverses of
    the triangular factors (trtri, trmm, lauum) and a symmetric product.  C⁻¹[P_i,P_j] = Y_iTY_j' (i ≠ j) is not stored: :meth:`solve` and
    :meth:`kernel_trace` take it from Y_i and Y_iT.  Cost Σ_i (p_i³ + 3p_i²b + 2p_ib²) + b³
    against (Σ_i p_i + b)³ whole; the factor alone Σ_i (p_i³/3 + p_i²b + p_ib²) + b³/3.

    Storage (one flat array, kept from one θ to the next): a whole group's n × n block; a
    bordered group's blocks one after the other, P_i × P_i then B × P_i for every piece, then
    B × B — its pattern only, each block contiguous so that LAPACK works on it in place (a
    C-ordered block's transpose is the Fortran-ordered one LAPACK takes, its upper triangle the
    block's lower).  C[P_i, B] is read as C[B, P_i]' (:meth:`slots` and :meth:`region` give
    its place)."""

    WHOLE, PIECE, BORDER = 0, 1, 2

    def __init__(self, starts: np.ndarray, sizes: np.ndarray, pieces, rows, cols, q: int):
        self.starts, self.sizes, self.pieces = starts, sizes, pieces
        self.group = np.repeat(np.arange(len(sizes)), sizes)
        self.local = np.arange(q) - starts[self.group]
        # per unknown: its kind, the offset and width of its own block (its group's, piece's or
        # border's), its index within that block; for a piece's unknown, the offset of C[B, P_i]
        self.kind, self.own, self.width, self.within = (np.zeros(q, dtype=np.int64) for _ in range(4))
        self.piece_of = np.full(q, -1, dtype=np.int64)  # the piece of an unknown (−1: none, or the border)
        self.cross_at = np.full(q, -1, dtype=np.int64)
        self.layout = []  # per group: None (whole), or ([(P_i, its offset, offset of B × P_i)], (B, offset))
        offset = 0
        for g, (s, n, ps) in enumerate(zip(starts.tolist(), sizes.tolist(), pieces)):
            if ps is None:
                self._place(slice(s, s + n), self.WHOLE, offset, n)
                self.layout.append(None)
                offset += n * n
                continue
            b = n - int(ps.sum())
            parts = []
            for i, P in enumerate(_slices(ps)):
                p = P.stop - P.start
                u = slice(s + P.start, s + P.stop)
                self._place(u, self.PIECE, offset, p)
                self.piece_of[u], self.cross_at[u] = i, offset + p * p
                parts.append((P, offset, offset + p * p))
                offset += p * p + b * p
            B = slice(n - b, n)
            self._place(slice(s + B.start, s + n), self.BORDER, offset, b)
            self.layout.append((parts, (B, offset)))
            offset += b * b
        self.size = offset
        upper = (self.kind[rows] == self.PIECE) & (self.kind[cols] == self.BORDER)
        self.keep = None if not upper.any() else ~upper  # C[P_i, B]: assembled as its mirror C[B, P_i]
        self.slots_of_c = self.slots(rows, cols) if self.keep is None else self.slots(rows[~upper], cols[~upper])
        self.q = q
        self.cross, self.store, self.inverted, self._arrays = {}, None, False, {}

    def _place(self, unknowns: slice, kind: int, offset: int, width: int) -> None:
        self.kind[unknowns], self.own[unknowns], self.width[unknowns] = kind, offset, width
        self.within[unknowns] = np.arange(width)

    def slots(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Positions of C[i, j] (i, j in one group, not in two of its pieces) in the flat
        storage; C[P_k, B] at C[B, P_k]'s."""
        pi, pj = self.piece_of[i], self.piece_of[j]
        if np.any((pi >= 0) & (pj >= 0) & (pi != pj)):
            raise AssertionError("an element of C⁻¹ between two pieces was asked for")
        ki, kj = self.kind[i], self.kind[j]
        out = self.own[i] + self.within[i] * self.width[i] + self.within[j]
        lower = (ki == self.BORDER) & (kj == self.PIECE)
        out = np.where(lower, self.cross_at[j] + self.within[i] * self.width[j] + self.within[j], out)
        upper = (ki == self.PIECE) & (kj == self.BORDER)
        return np.where(upper, self.cross_at[i] + self.within[j] * self.width[i] + self.within[i], out)

    def block(self, flat: np.ndarray, g: int) -> np.ndarray:
        """A whole group's n × n block."""
        n, o = int(self.sizes[g]), int(self.own[self.starts[g]])
        return flat[o:o + n * n].reshape(n, n)

    def _bordered(self, flat: np.ndarray, g: int) -> tuple:
        """([(P_i, C[P_i, P_i], C[B, P_i])], B, C[B, B]) of a bordered group, as views of ``flat``."""
        parts, (B, at) = self.layout[g]
        b = B.stop - B.start
        views = [(P, _matrix(flat, o, P.stop - P.start, P.stop - P.start), _matrix(flat, c, b, P.stop - P.start))
                 for P, o, c in parts]
        return views, B, _matrix(flat, at, b, b)

    def region(self, flat: np.ndarray, g: int, i: int, j: int):
        """(V, i0, j0, upper): the stored block that holds C[i, j] (local to group g), as a view
        whose element [a, b] is C[i0 + a, j0 + b] (C[P_k, B] as the transpose of C[B, P_k]:
        ``upper``); None for two pieces."""
        u, v = int(self.starts[g]) + int(i), int(self.starts[g]) + int(j)
        ku, kv = self.kind[u], self.kind[v]
        i0, j0 = int(self.local[u] - self.within[u]), int(self.local[v] - self.within[v])
        if ku == self.WHOLE:
            return self.block(flat, g), 0, 0, False
        if ku == self.PIECE and kv == self.PIECE:
            if self.piece_of[u] != self.piece_of[v]:
                return None
            return _matrix(flat, self.own[u], self.width[u], self.width[u]), i0, j0, False
        if ku == self.BORDER and kv == self.BORDER:
            return _matrix(flat, self.own[u], self.width[u], self.width[u]), i0, j0, False
        if ku == self.BORDER:
            return _matrix(flat, self.cross_at[v], self.width[u], self.width[v]), i0, j0, False
        return _matrix(flat, self.cross_at[u], self.width[v], self.width[u]).T, i0, j0, True

    def sub(self, flat: np.ndarray, g: int, i: int, j: int, n: int) -> np.ndarray:
        """C[i:i+n, j:j+n] (local to group g, within one stored block) as a view."""
        reg = self.region(flat, g, i, j)
        if reg is None:
            raise AssertionError("a block of C⁻¹ between two pieces was asked for")
        V, i0, j0, _ = reg
        return V[_shifted(slice(i, i + n), i0, V.shape[0]), _shifted(slice(j, j + n), j0, V.shape[1])]

    def factor(self, values: np.ndarray, dense_parts) -> float:
        """Factor C from its sparse ``values`` (at the rows and columns given to the
        constructor) and ``dense_parts`` [(group, index of its block, matrix)]; return log|C|.
        The storage (the factor, then C⁻¹) and the work arrays are kept from one θ to the next
        (fresh memory is slow to touch), and LAPACK works in place."""
        if self.store is None:
            self.store = np.zeros(self.size)
            self.uniq_slots, self.slot_index = np.unique(self.slots_of_c, return_inverse=True)
        flat = self.store
        flat.fill(0.0)  # what the last θ wrote
        if self.keep is not None:
            values = values[self.keep]
        flat[self.uniq_slots] += np.bincount(self.slot_index, weights=values, minlength=len(self.uniq_slots))
        for g, ix, part in dense_parts:
            self._add(flat, g, ix, part)
        logdet = 0.0
        self.cross, self.inverted = {}, False
        for g in range(len(self.sizes)):
            if self.pieces[g] is None:  # in place: M.T is M in Fortran order, its upper triangle M's lower
                logdet += _potrf(self.block(flat, g).T, lower=0)
            else:
                logdet += self._factor_bordered(g, flat)
        return logdet

    def _add(self, flat: np.ndarray, g: int, ix: tuple, part: np.ndarray) -> None:
        """C[ix] += part, ix (rows, columns local to group g: slices or np.ix_ arrays) within one
        stored block.  A part of C[P_k, B] is skipped: the caller gives its mirror in C[B, P_k]
        too (the low-rank genetic blocks come in both orders; a dense kernel's lie within one
        column's block)."""
        first = [int(x.start) if isinstance(x, slice) else int(np.ravel(x)[0]) for x in ix]
        reg = self.region(flat, g, *first)
        if reg is None:
            raise AssertionError("a dense part of C between two pieces")
        V, i0, j0, upper = reg
        if upper:
            return
        rows, cols = (_shifted(x, o, n) for x, o, n in zip(ix, (i0, j0), V.shape))
        V[rows, cols] += part

    def _work(self, name, shape: tuple) -> np.ndarray:
        """A Fortran-ordered work array kept for the next θ."""
        key = (name, shape)
        if key not in self._arrays:
            self._arrays[key] = np.zeros(shape, order="F")
        return self._arrays[key]

    def _factor_bordered(self, g: int, flat: np.ndarray) -> float:
        """L_i in place of C[P_i, P_i] (its lower triangle), H_i into the work array Y_i, L_S into
        the work array S."""
        parts, B, border = self._bordered(flat, g)
        b = B.stop - B.start
        schur = self._work(("S", g), (b, b))
        schur[...] = border
        logdet = 0.0
        for i, (P, piece, cross) in enumerate(parts):
            logdet += _potrf(piece.T, lower=0)  # piece.T's upper triangle U = L'
            H = self._work(("Y", g, i), (P.stop - P.start, b))
            H[...] = cross.T
            blas.dtrsm(1.0, piece.T, H, lower=0, trans_a=1, overwrite_b=1)  # H = U⁻ᵀ C_PB = L⁻¹ C_PB
            blas.dsyrk(-1.0, H, beta=1.0, c=schur, trans=1, lower=1, overwrite_c=1)  # S −= H'H
        return logdet + _potrf(schur, lower=1)  # S = L_SL_S'

    def _invert(self) -> None:
        """C⁻¹ (on the pattern of a bordered group) in place of the factor."""
        for g in range(len(self.sizes)):
            if self.pieces[g] is None:
                M = self.block(self.store, g)
                _potri(M.T, lower=0)
                _mirror_lower(M)
            else:
                self._invert_bordered(g)
        self.inverted = True

    def _invert_bordered(self, g: int) -> None:
        """C⁻¹ on the pattern through the explicit inverses of the triangular factors (LAPACK's
        potri forms them too; a triangular product runs at about 1.5× a triangular solve's
        speed): M_i = L_i⁻¹, M_S = L_S⁻¹, then Y_i = M_i'H_i, C_P_i⁻¹ = M_i'M_i, G_i = Y_iM_S',
        Y_iTY_i' = G_iG_i', Y_iT = G_iM_S."""
        parts, B, border = self._bordered(self.store, g)
        b = B.stop - B.start
        m_s = self._work(("MS", g), (b, b))
        m_s[...] = self._work(("S", g), (b, b))
        _trtri(m_s, lower=1)  # M_S = L_S⁻¹
        T = self._work(("T", g), (b, b))
        T[...] = m_s
        _lauum(T, lower=1)  # T = M_S'M_S = S⁻¹ in the lower triangle, zeros above
        _full_from_lower(T, border)
        self.cross[g] = []
        for i, (P, piece, cross) in enumerate(parts):
            p = P.stop - P.start
            _trtri(piece.T, lower=0)  # piece.T's upper triangle: U⁻¹ = M_i' (U = L_i')
            Y = self._work(("Y", g, i), (p, b))
            blas.dtrmm(1.0, piece.T, Y, lower=0, overwrite_b=1)  # Y = U⁻¹H = L⁻ᵀH = C_P⁻¹ C_PB
            _lauum(piece.T, lower=0)  # U⁻¹U⁻ᵀ = C_P⁻¹ in piece's lower triangle (zeros above, from the factor)
            Z = self._work(("Z", g, i), (p, b))
            Z[...] = Y
            blas.dtrmm(1.0, m_s, Z, side=1, lower=1, trans_a=1, overwrite_b=1)  # G = YM_S'
            A = self._work("A", (p, p))
            A.fill(0.0)
            blas.dsyrk(1.0, Z, beta=0.0, c=A, lower=0, overwrite_c=1)  # GG' = YTY' (A's upper)
            piece.T[...] += A  # Fortran-ordered both: piece's lower triangle += YTY'
            _mirror_lower(piece)
            blas.dtrmm(1.0, m_s, Z, side=1, lower=1, overwrite_b=1)  # Z = GM_S = YT
            cross[...] = -Z.T  # C⁻¹[B, P_i] = −(YT)'
            self.cross[g].append((P, Y, Z))

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        """C⁻¹ rhs: by the factor until C⁻¹ is formed, then by C⁻¹."""
        if not self.inverted:
            return self._solve_factored(rhs)
        out = np.empty_like(rhs)
        for g, (s, n) in enumerate(zip(self.starts, self.sizes)):
            r = rhs[s:s + n]
            if g not in self.cross:
                out[s:s + n] = self.block(self.store, g) @ r
                continue
            parts, B, border = self._bordered(self.store, g)  # then C⁻¹[P_i,P_j] r_j = Y_iT (Y_j'r_j), j ≠ i
            o = out[s:s + n]
            o[B] = border @ r[B] + sum(cross @ r[P] for P, _, cross in parts)
            w = [Y.T @ r[P] for P, Y, _ in self.cross[g]]
            total = sum(w)
            for (P, piece, cross), (_, _, Z), wi in zip(parts, self.cross[g], w):
                o[P] = piece @ r[P] + cross.T @ r[B] + Z @ (total - wi)
        return out

    def _solve_factored(self, rhs: np.ndarray) -> np.ndarray:
        """C⁻¹ rhs by triangular solves; in a bordered group x_B = S⁻¹(r_B − Σ_i H_i'L_i⁻¹r_i),
        x_i = L_i⁻ᵀ(L_i⁻¹r_i − H_i x_B)."""
        out = np.empty_like(rhs)
        for g, (s, n) in enumerate(zip(self.starts, self.sizes)):
            r = rhs[s:s + n]
            if self.pieces[g] is None:  # M.T: U = L' in place, no copy
                out[s:s + n] = sla.cho_solve((self.block(self.store, g).T, False), r, check_finite=False)
                continue
            parts, B, _ = self._bordered(self.store, g)
            b = B.stop - B.start
            solved = [(P, piece, sla.solve_triangular(piece.T, r[P], trans=1, check_finite=False),
                       self._work(("Y", g, i), (P.stop - P.start, b)))
                      for i, (P, piece, _) in enumerate(parts)]  # L_i w_i = r_i (piece.T: U_i = L_i', no copy)
            rb = r[B] - sum(H.T @ w for _, _, w, H in solved)
            xb = sla.cho_solve((self._work(("S", g), (b, b)), True), rb, check_finite=False)
            o = out[s:s + n]
            o[B] = xb
            for P, piece, w, H in solved:
                o[P] = sla.solve_triangular(piece.T, w - H @ xb, check_finite=False)
        return out

    def selected(self) -> np.ndarray:
        """Storage of C⁻¹ (indexed by :meth:`slots`), formed from the factor when first asked for."""
        if not self.inverted:
            self._invert()
        return self.store

    def kernel_trace(self, g: int, loc: np.ndarray, kinv: np.ndarray | None) -> np.ndarray:
        """Ã[a, b] = Σ_jj' 𝒦⁻¹_jj' C⁻¹[loc[j,a], loc[j',b]] (``loc``: levels × columns, local to
        group g; ``kinv`` None: 𝒦 = I)."""
        flat = self.selected()
        n_lv, nc = loc.shape
        out = np.zeros((nc, nc))
        for a in range(nc):
            for b in range(a + 1):
                reg = self.region(flat, g, loc[0, a], loc[0, b])
                if reg is None:  # two pieces: from Y_i and Y_iT below
                    continue
                V, i0, j0, _ = reg
                ra, cb = _shifted(loc[:, a], i0, V.shape[0]), _shifted(loc[:, b], j0, V.shape[1])
                out[a, b] = out[b, a] = V[ra, cb].sum() if kinv is None else np.sum(kinv * V[np.ix_(ra, cb)])
        if g in self.cross:  # + Σ_jj' 𝒦⁻¹_jj' (Y_iTY_i'')[(j,a),(j',b)] for columns in two pieces
            parts = self.cross[g]
            piece = self.piece_of[self.starts[g] + loc[0]]
            cols = np.flatnonzero(piece >= 0)
            ys = {b: _rows(parts[piece[b]][1], loc[:, b] - parts[piece[b]][0].start) for b in cols}
            for a in cols:
                P, _, Z = parts[piece[a]]
                Za = _rows(Z, loc[:, a] - P.start)
                if kinv is not None:
                    Za = kinv @ Za
                for b in cols[piece[cols] != piece[a]]:
                    out[a, b] += np.einsum("js,js->", Za, ys[b])
        return out


def _slices(sizes) -> list[slice]:
    """Consecutive slices of the given sizes."""
    ends = np.cumsum(sizes)
    return [slice(int(e - n), int(e)) for e, n in zip(ends, sizes)]


def _matrix(flat: np.ndarray, offset, rows, cols) -> np.ndarray:
    """flat[offset : offset + rows·cols] as a C-ordered rows × cols view."""
    o, r, c = int(offset), int(rows), int(cols)
    return flat[o:o + r * c].reshape(r, c)


def _shifted(index, offset: int, n: int):
    """Rows (columns) of C, a slice or an index array, as those of the stored block whose
    first is ``offset``; checked to lie within its n."""
    if isinstance(index, slice):
        out = slice(index.start - offset, index.stop - offset)
        if out.start < 0 or out.stop > n:
            raise AssertionError("a dense part crosses a stored block")
        return out
    out = index - offset
    if out.min() < 0 or out.max() >= n:
        raise AssertionError("a dense part crosses a stored block")
    return out


def _rows(A: np.ndarray, index: np.ndarray) -> np.ndarray:
    """A[index]: a view where the index is a run of consecutive rows (a column of an atom's
    levels, laid out column-major), else a copy."""
    if len(index) and np.all(np.diff(index) == 1):
        return A[index[0]:index[-1] + 1]
    return A[index]


def _potrf(A: np.ndarray, lower: int) -> float:
    """Cholesky factor of the Fortran-ordered A in place (the other triangle zeroed); log|A|."""
    _, info = lapack.dpotrf(A, lower=lower, overwrite_a=1, clean=1)
    if info != 0:
        raise NotPositiveDefinite(f"C is not positive definite (dpotrf: {info})")
    return 2.0 * float(np.log(np.diag(A)).sum())


def _potri(A: np.ndarray, lower: int) -> None:
    """A⁻¹ in place from the Cholesky factor in A (the same triangle)."""
    _, info = lapack.dpotri(A, lower=lower, overwrite_c=1)
    if info != 0:
        raise NotPositiveDefinite(f"C is singular (dpotri: {info})")


def _trtri(A: np.ndarray, lower: int) -> None:
    """The inverse of the triangular Fortran-ordered A in place (the same triangle)."""
    _, info = dtrtri(A, lower=lower, overwrite_c=1)
    if info != 0:
        raise NotPositiveDefinite(f"C is singular (dtrtri: {info})")


def _lauum(A: np.ndarray, lower: int) -> None:
    """L'L (``lower``) or UU' of the triangular Fortran-ordered A in place (the same triangle)."""
    _, info = lapack.dlauum(A, lower=lower, overwrite_c=1)
    if info != 0:
        raise NotPositiveDefinite(f"C is singular (dlauum: {info})")


def _full_from_lower(L: np.ndarray, out: np.ndarray) -> None:
    """out = the symmetric matrix whose lower triangle L holds (L's upper triangle zero)."""
    np.add(L, L.T, out=out)
    out[np.diag_indices(len(L))] = np.diag(L)


def _mirror_lower(M: np.ndarray, block: int = 1024) -> None:
    """M's upper triangle from its lower one, in place, block by block (small temporaries)."""
    n = len(M)
    for i in range(0, n, block):
        for j in range(i, n, block):
            if i == j:
                sub = M[i:i + block, i:i + block]
                upper = np.triu_indices(len(sub), 1)
                sub[upper] = sub.T[upper]
            else:
                M[i:i + block, j:j + block] = M[j:j + block, i:i + block].T


class _SelectedInverse:
    """Z = C⁻¹ on the pattern of L + L' (C = LDL', L unit lower) by Takahashi's recurrences,
    supernode by supernode (columns J with one structure S below them), root first:

        Z_SJ = −Z_SS L_SJ L_JJ⁻¹,   Z_JJ = L_JJ⁻ᵀ (D_J⁻¹ L_JJ⁻¹ − L_SJ' Z_SJ)

    Z_SS lies on the pattern (S is a clique of the filled graph) in supernodes computed before.
    Each supernode is a dense block (rows J ∪ S) × J, so the work is dense products."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, n: int):
        self.n = n
        count = np.diff(indptr)
        first_row = indices[np.minimum(indptr[:-1], max(len(indices) - 1, 0))]
        join = (count[:-1] > 0) & (first_row[:-1] == np.arange(1, n)) & (count[:-1] == count[1:] + 1)
        starts = np.flatnonzero(np.concatenate([[True], ~join]))
        self.first = starts
        self.last = np.concatenate([starts[1:], [n]]) - 1
        width = self.last - self.first + 1
        below = count[self.last]
        self.offset = np.concatenate([[0], np.cumsum((width + below) * width)])
        snode = np.repeat(np.arange(len(starts)), width)
        self.snode, self.width, self.below = snode, width, below
        self.keys = np.repeat(np.arange(n, dtype=np.int64), count) * n + indices
        self.indptr, self.indices = indptr, indices
        # where L's entries go in the blocks
        col = np.repeat(np.arange(n), count)
        self.l_slots = self.slots(indices, col)
        self.diag_slots = self.slots(np.arange(n), np.arange(n))
        self.pairs = int((below.astype(np.int64) ** 2).sum())
        self.flops = float((below.astype(float) ** 2 * width + below * width.astype(float) ** 2 + width ** 3.0).sum())

    @cached_property
    def schedule(self) -> list:
        """The supernodes in batches that Takahashi's recurrences can take together: by depth
        in the elimination tree (a supernode's Z_SS lies in its ancestors, all shallower), then
        by shape (w, s).  Per batch: (w, s, positions of the blocks (m × (w + s)w), positions of
        their first columns' d (m × w), positions of their Z_SS (m × s²)); Z_SS's positions are
        looked up for many supernodes at a time (about 2²⁰ a call)."""
        n_s = len(self.first)
        below = [self.indices[self.indptr[self.last[K]]:self.indptr[self.last[K] + 1]] for K in range(n_s)]
        depth = np.zeros(n_s, dtype=np.int64)
        for K in range(n_s - 1, -1, -1):  # a parent (the supernode of S's first row) comes later
            if len(below[K]):
                depth[K] = depth[self.snode[below[K][0]]] + 1
        order = np.lexsort((self.below, self.width, depth))
        key = np.stack([depth[order], self.width[order], self.below[order]], axis=1)
        cuts = np.flatnonzero(np.any(np.diff(key, axis=0) != 0, axis=1)) + 1
        dtype = np.int32 if self.offset[-1] < 2 ** 31 else np.int64
        out = []
        for Ks in np.split(order, cuts):
            w, s = int(self.width[Ks[0]]), int(self.below[Ks[0]])
            pos = (self.offset[Ks][:, None] + np.arange((w + s) * w)).astype(dtype)
            dpos = self.first[Ks][:, None] + np.arange(w)
            zss = np.zeros((len(Ks), s * s), dtype=dtype)
            chunk = max(1, 2 ** 20 // max(s * s, 1))
            for lo in range(0, len(Ks) if s else 0, chunk):
                S = np.stack([below[K] for K in Ks[lo:lo + chunk]])
                rows, cols = np.repeat(S, s, axis=1), np.tile(S, (1, s))
                zss[lo:lo + len(S)] = self.slots(rows.ravel(), cols.ravel()).reshape(len(S), -1)
            out.append((w, s, pos, dpos, zss))
        return out

    def slots(self, i: np.ndarray, k: np.ndarray) -> np.ndarray:
        """Storage positions of Z[i, k] (permuted indices on the pattern of L + L')."""
        i, k = np.maximum(i, k), np.minimum(i, k)
        K = self.snode[k]
        last = self.last[K]
        rank = np.searchsorted(self.keys, last.astype(np.int64) * self.n + i) - self.indptr[last]
        lrow = np.where(i <= last, i - self.first[K], self.width[K] + rank)
        if not np.all((i <= last) | (self.keys[np.minimum(self.indptr[last] + rank, len(self.keys) - 1)]
                                     == last.astype(np.int64) * self.n + i)):
            raise AssertionError("an element of C⁻¹ off the pattern of L + L' was asked for")
        return self.offset[K] + lrow * self.width[K] + (k - self.first[K])

    def compute(self, ldata: np.ndarray, d: np.ndarray) -> np.ndarray:
        """Z from L's values (``ldata``, on its pattern) and D, a batch of supernodes at a time
        (:attr:`schedule`): stacked blocks, batched products."""
        lflat = np.zeros(self.offset[-1])
        lflat[self.l_slots] = ldata
        lflat[self.diag_slots] = 1.0
        z = np.zeros(self.offset[-1])
        for w, s, pos, dpos, zss in self.schedule:
            block = lflat[pos].reshape(len(pos), w + s, w)
            linv = np.linalg.inv(block[:, :w])  # L_JJ⁻¹ (unit lower triangular: its diagonal is stored)
            top = linv / d[dpos][:, :, None]
            out = np.empty_like(block)
            if s:
                LS = block[:, w:]
                zsj = -(z[zss].reshape(len(pos), s, s) @ (LS @ linv))
                out[:, w:] = zsj
                top -= LS.transpose(0, 2, 1) @ zsj
            out[:, :w] = linv.transpose(0, 2, 1) @ top
            z[pos] = out.reshape(len(pos), -1)
        return z


class _SparseC:
    """C factored by QDLDL (fill-reducing AMD order), with the elements of C⁻¹ on the pattern
    of L + L' by :class:`_SelectedInverse`."""

    def __init__(self, rows, cols, q: int, values: np.ndarray):
        upper = rows <= cols
        key = cols[upper].astype(np.int64) * q + rows[upper]
        uniq, slot = np.unique(key, return_inverse=True)
        self.upper, self.slot, self.q = upper, slot, q
        self.indices = (uniq % q).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(uniq // q, minlength=q))])
        self.solver = qdldl.Solver(self._matrix(values), upper=True)
        L, _, perm = self.solver.factors()
        self.perm = np.asarray(perm)
        self.position = np.empty(q, dtype=np.int64)
        self.position[self.perm] = np.arange(q)
        L = sp.csc_matrix(L)
        L.sort_indices()
        self.pattern = L.indptr.copy()
        self.nnz_l = L.nnz
        self.takahashi = _SelectedInverse(L.indptr, L.indices, q)

    def _matrix(self, values: np.ndarray) -> sp.csc_matrix:
        data = np.bincount(self.slot, weights=values[self.upper], minlength=len(self.indices))
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.q, self.q))

    def slots(self, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        return self.takahashi.slots(self.position[i], self.position[j])

    def factor(self, values: np.ndarray, dense_parts) -> float:
        self.solver.update(self._matrix(values), upper=True)
        L, d, _ = self.solver.factors()
        if not np.all(d > 0):
            raise NotPositiveDefinite("C is not positive definite")
        self._L, self._d = L, d
        return float(np.log(d).sum())

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        if rhs.ndim == 1:
            return self.solver.solve(rhs)
        return np.column_stack([self.solver.solve(np.ascontiguousarray(c)) for c in rhs.T]) \
            if rhs.shape[1] else rhs.copy()

    def selected(self) -> np.ndarray:
        L = sp.csc_matrix(self._L)
        L.sort_indices()
        if not np.array_equal(L.indptr, self.pattern):
            raise AssertionError("the pattern of L changed between factorisations")
        return self.takahashi.compute(L.data, self._d)


class _LowRank:
    """The genetic term through K = WW' (W: n × r): u = (W ⊗ I) a with the unknowns a over the r
    factor levels (𝒦 = I_r).  W̃ = W̄T: W̄ is W̃ with the genetic columns Z_G(I_n ⊗ L) over
    genotype × row (column q + j·d + c) and T = [I; W ⊗ I] (:meth:`lift` T·, :meth:`reduce` T'·).
    The genetic block of C̃ is Σ_κ G_κ ⊗ L_κ'S_p⁻¹L_κ + I over the classes κ of records
    (pattern p, genetic rows a_κ of its values, L_κ = L[a_κ, :]) with G_κ = Σ_{records r ∈ κ}
    W_j(r)'W_j(r) (r × r, formed once); its cross with another unknown s is C̃[s, (k, c)] =
    Σ_j A[(s, c), j] W[j, k], A the pairs of W̄ entries (s, (j, c)) within records.  The sums
    Σ_r W̃_rĈW̃_r' of the residual's score take Σ_kk' G_κ[k, k'] Ĉ[(k, ·), (k', ·)] per class
    and (ĈT')[s, (j, c)] = Σ_k Ĉ[s, (k, c)] W[j, k] for the cross pairs."""

    def __init__(self, W: np.ndarray, pos: np.ndarray, q: int, term, coords: _Coordinates, levels: np.ndarray,
                 patterns):
        self.W, self.pos, self.q, self.coords = W, pos, q, coords
        n = len(W)
        groups = {}
        for p, vals in enumerate(patterns.values):
            geno = levels[vals[:, 0]]
            if not np.array_equal(levels[vals], np.repeat(geno[:, None], vals.shape[1], axis=1)):
                raise AssertionError("the values of one record belong to two genotypes")
            uniq, inv = np.unique(term.index[vals], axis=0, return_inverse=True)
            for c, a in enumerate(uniq):
                counts = np.bincount(geno[inv.ravel() == c], minlength=n)
                nz = np.flatnonzero(counts)
                G = W[nz].T @ (counts[nz, None] * W[nz])
                cs = np.flatnonzero(coords.pattern[a].any(0))  # the columns of F these rows load on
                groups.setdefault(tuple(cs), []).append((p, a, G))
        self.groups = [(np.array(cs), [(p, a) for p, a, _ in cl], np.stack([G for *_, G in cl]))
                       for cs, cl in groups.items()]

    def pairs(self, s_entry, e_entry, coef, upper, w_indices) -> tuple:
        """Keep the cross pairs of W̄ entries (s_entry of an unknown, e_entry of a genotype
        column; ``upper``: C's orientation); return C̃'s (rows, cols) of the cross elements."""
        dim = self.pos.shape[1]
        col = w_indices[e_entry] - self.q
        key = w_indices[s_entry].astype(np.int64) * dim + col % dim
        uniq, self.sc = np.unique(key, return_inverse=True)
        self.j, self.s_entry, self.e_entry, self.coef, self.upper = col // dim, s_entry, e_entry, coef, upper
        rows = np.repeat(uniq // dim, self.pos.shape[0])
        cols = self.pos[:, uniq % dim].T.ravel()
        self.n_sc = len(uniq)
        return np.concatenate([rows, cols]), np.concatenate([cols, rows])

    def place(self, C: "_DenseC") -> None:
        """Where the genetic blocks lie in the groups of C̃."""
        self.ix = [self._columns(C, cs) for cs, _, _ in self.groups]

    def _columns(self, C: "_DenseC", cs: np.ndarray) -> tuple:
        """(group, local start of the r factor levels of every column cs): contiguous, as the
        unknowns are ordered column by column."""
        pos = self.pos[:, cs]
        g = C.group[pos]
        starts = C.local[pos[0]]
        if not (np.all(g == g[0, 0]) and np.array_equal(C.local[pos], starts + np.arange(len(pos))[:, None])):
            raise AssertionError("the genetic unknowns of a column are not contiguous in one group")
        return g[0, 0], starts.tolist()

    def lift(self, x: np.ndarray) -> np.ndarray:
        """T x: q (× m) → q + n·d."""
        tail = self.W @ x[self.pos].reshape(len(self.pos), -1)
        return np.concatenate([x, tail.reshape(-1, *x.shape[1:])])

    def reduce(self, z: np.ndarray) -> np.ndarray:
        """T' z: q + n·d (× m) → q."""
        out = z[:self.q].copy()
        out[self.pos] += (self.W.T @ z[self.q:].reshape(len(self.W), -1)).reshape(self.pos.shape + z.shape[1:])
        return out

    def parts(self, L: np.ndarray, r_inv):
        """C̃'s genetic blocks Σ_κ G_κ ⊗ L_κ'S_p⁻¹L_κ (the identity is an atom's), column pair by
        column pair (r × r each, generated one at a time)."""
        r = self.W.shape[1]
        for (cs, classes, Gs), (g, starts) in zip(self.groups, self.ix):
            M = np.stack([L[np.ix_(a, cs)].T @ r_inv[p] @ L[np.ix_(a, cs)] for p, a in classes])
            for a, sa in enumerate(starts):
                for b, sb in enumerate(starts):
                    yield g, (slice(sa, sa + r), slice(sb, sb + r)), np.tensordot(M[:, a, b], Gs, axes=(0, 0))

    def cross(self, wdata: np.ndarray, scoef: np.ndarray) -> np.ndarray:
        """Values of C̃[s, (k, c)] (and its mirror) at the rows/cols of :meth:`pairs`."""
        u = self.upper
        A = sp.csr_matrix((wdata[self.s_entry[u]] * wdata[self.e_entry[u]] * scoef[self.coef[u]],
                           (self.sc[u], self.j[u])), shape=(self.n_sc, len(self.W)))
        v = np.asarray(A @ self.W).ravel()
        return np.concatenate([v, v])

    def record_sums(self, wdata, zinv, cross_inv, L, C, pattern_coef, n_scoef) -> np.ndarray:
        """Σ_r W̃_rĈW̃_r' per pattern of its cross pairs and genetic pairs (stored as qsum)."""
        CW = cross_inv.reshape(self.n_sc, -1) @ self.W.T  # (ĈT')[s, (j, c)]
        q = np.bincount(self.coef, weights=wdata[self.s_entry] * wdata[self.e_entry] * CW[self.sc, self.j],
                        minlength=n_scoef)
        r = self.W.shape[1]
        for (cs, classes, Gs), (g, starts) in zip(self.groups, self.ix):
            H = np.empty((len(classes), len(cs), len(cs)))  # Σ_kk' G_κ[k,k'] Ĉ[(k,a),(k',b)]
            for a, sa in enumerate(starts):
                for b, sb in enumerate(starts):
                    H[:, a, b] = np.tensordot(Gs, C.sub(zinv, g, sa, sb, r), axes=([1, 2], [0, 1]))
            for (p, a), h in zip(classes, H):
                La = L[np.ix_(a, cs)]
                q[pattern_coef[p]:pattern_coef[p] + len(a) ** 2] += (La @ h @ La.T).ravel()
        return q

    def pev(self, L: np.ndarray, zinv: np.ndarray, C: "_DenseC") -> np.ndarray:
        """PEV(u_j,a) = (W_j ⊗ L[a]) Ĉ^{vv} (W_j ⊗ L[a])' for every genotype of K (the rows
        that load on the same columns of F together)."""
        r = self.W.shape[1]
        pattern = self.coords.pattern
        out = np.zeros((len(self.W), pattern.shape[0]))
        _, first, which = np.unique(pattern, axis=0, return_index=True, return_inverse=True)
        for k, f in enumerate(first):
            rows, cs = np.flatnonzero(which.ravel() == k), np.flatnonzero(pattern[f])
            g, starts = self._columns(C, cs)
            for a in rows:  # S = Σ_cc' L[a,c] L[a,c'] Ĉ[(·,c),(·,c')] (r × r)
                S = sum(L[a, c] * L[a, c2] * C.sub(zinv, g, sa, sb, r)
                        for c, sa in zip(cs, starts) for c2, sb in zip(cs, starts))
                out[:, a] = np.einsum("jk,jk->j", self.W @ S, self.W)
        return out


class MMEEngine(Engine):
    """ℓ, score and AI from Henderson's mixed-model equations (module docstring).  ``flops``
    and ``memory``: the estimated cost of one iteration, and its bytes (refused in one line
    when the machine cannot hold them)."""

    name = "mme"
    keeps_factor = True

    def __init__(self, model: Model):
        self.model = model
        d = model.design
        self.y, self.X = d.y, d.X
        n, p = len(d.y), d.X.shape[1]
        terms = model.terms()
        self.terms, self.residual = terms[:-1], terms[-1]
        self.params = model.elements()
        self.const = restricted_constant(n, p, model.method)
        self.kernels = [_Kernel(t.factor, low_rank=i == 0) for i, t in enumerate(self.terms)]
        self.coords = [_Coordinates(t.structure, sl) for t, sl in zip(self.terms, model.slices)]
        self.levels = [t.factor.observed[t.unit] for t in self.terms]  # level of each value
        self.patterns = _Patterns(self.residual)
        self._layout(n, p)
        W = self.kernels[0].W
        self.lowrank = None if W is None else _LowRank(W, self.pos[0], self.q, self.terms[0], self.coords[0],
                                                       self.levels[0], self.patterns)
        self.n_lifted = 0 if W is None else len(W) * self.coords[0].dv  # W̄'s genotype columns
        self._equations(n)
        self.sparse = all(k.sparse for k in self.kernels)
        if self.sparse:
            self.C = _SparseC(self.rows, self.cols, self.q, self._values(model.start())[0])
            tk = self.C.takahashi
            self.flops = tk.flops * _SPARSE_WORK
            work = 8.0 * (tk.pairs + 3 * tk.offset[-1] + 3 * self.C.nnz_l + 2 * len(self.rows))
        else:
            self.C = _DenseC(self.group_starts, self.group_sizes, self.group_pieces, self.rows, self.cols, self.q)
            self.flops, blocks_work = 0.0, 0.0
            for size, pieces in zip(self.group_sizes.tolist(), self.group_pieces):
                if pieces is None:  # the storage, and as much again for LAPACK's and numpy's temporaries
                    self.flops += float(size) ** 3
                    blocks_work += 2.0 * float(size) ** 2
                else:  # the storage (its pattern); Y_i and Z_i, S, L_S⁻¹ and T, one piece's block
                    b, ps = size - int(pieces.sum()), pieces.astype(float)
                    self.flops += _bordered_flops(pieces, b)
                    blocks_work += float((ps ** 2).sum() + 3.0 * ps.sum() * b + 4.0 * b * b + ps.max() ** 2)
            work = 8.0 * (blocks_work + sum(k.n ** 2 for k in self.kernels if not k.sparse))
            if self.lowrank is not None:  # forming the genetic blocks and the sums of the residual's score
                lr = self.lowrank
                lr.place(self.C)
                n_geno, r = lr.W.shape
                blocks = sum(len(G) * (r * len(cs)) ** 2 for cs, _, G in lr.groups)
                self.flops += 4.0 * blocks + 4.0 * lr.n_sc * n_geno * r
                # W, the Gram matrices G_κ, the residual's sums, and an r × r block being added
                work += 8.0 * (n_geno * r + sum(G.size for *_, G in lr.groups) + lr.n_sc * n_geno + 2 * r * r)
        self.memory = work + 8.0 * n * (len(self.params) + p) * 3 + 8.0 * self.q * (len(self.params) + p) * 2
        self._check_memory()

    # -- structure ----------------------------------------------------------------------------
    def _layout(self, n: int, p: int) -> None:
        """Order the unknowns so that every connected component of C is contiguous (fixed effects
        first, then per term its atoms: the levels of one connected part of 𝒦_t × the columns of
        one block of F_t, column by column, so that a column's levels are contiguous), and batch
        the small components into groups.

        A large component whose unknowns fall apart into independent pieces once its border —
        the fixed effects and the columns of F_t common to every row (FA's factor scores) — is
        set aside (the environments of an FA genetic term; of a heterogeneous one with a
        covariate common to all environments) is ordered piece by piece, border last, and
        factored by blocks (:class:`_DenseC`) where that is estimated cheaper."""
        comps = [kern.components() for kern in self.kernels]
        n_comps = [int(c.max()) + 1 for c in comps]
        res = self.residual
        rblock = np.zeros(res.structure.dim, dtype=np.int64)
        for b, blk in enumerate(res.structure.blocks):
            rblock[np.asarray(blk)] = b
        _, rnode = np.unique(res.unit.astype(np.int64) * len(res.structure.blocks) + rblock[res.index],
                             return_inverse=True)

        def components(block_of_row, block_of_col, n_blocks, with_fixed):
            """Label of every node (values, fixed effects, per term its atoms (block × part of
            𝒦_t), records) of the graph that links a value to its unknowns; the atom of every
            unknown of every term."""
            vo, fc = np.nonzero(self.X) if with_fixed else (np.zeros(0, np.int64),) * 2
            edges_a, edges_b, offsets, offset = [vo], [n + fc], [], n + p
            for t, (term, kern, lev, n_comp) in enumerate(zip(self.terms, self.kernels, self.levels, n_comps)):
                blk = block_of_row[t][term.index]
                has = blk >= 0
                edges_a.append(np.flatnonzero(has))
                edges_b.append(offset + blk[has] * n_comp + (comps[t][lev[has]] if kern.W is None else 0))
                offsets.append(offset)
                offset += n_blocks[t] * n_comp
            edges_a.append(np.arange(n))
            edges_b.append(offset + rnode)
            total = offset + int(rnode.max()) + 1
            a, b = np.concatenate(edges_a), np.concatenate(edges_b)
            label = connected_components(sp.csr_matrix((np.ones(len(a)), (a, b)), shape=(total, total)),
                                         directed=False)[1]
            atoms = []
            for t, (kern, co) in enumerate(zip(self.kernels, self.coords)):
                col = np.tile(np.arange(co.dv), kern.n)
                blk = block_of_col[t][col]
                atom = blk * n_comps[t] + np.repeat(comps[t], co.dv)
                atoms.append(np.where(blk >= 0, label[offsets[t] + np.maximum(atom, 0)], -1))
            return label, atoms

        whole, whole_atoms = components([c.row_block_of for c in self.coords], [c.col_block_of for c in self.coords],
                                        [len(c.col_blocks) for c in self.coords], True)
        _, piece_atoms = components([c.piece_of_row for c in self.coords], [c.piece_of_col for c in self.coords],
                                    [c.n_pieces for c in self.coords], False)
        # every unknown: (component, piece, kind, atom, level, column); piece −1: the border.  Sorted
        # column-major within an atom: a column's levels are contiguous
        keys = [[whole[n + np.arange(p)], np.full(p, -1), np.zeros(p, np.int64), np.arange(p),
                 np.zeros(p, np.int64), np.zeros(p, np.int64)]]
        for t, (kern, co) in enumerate(zip(self.kernels, self.coords)):
            lv = np.repeat(np.arange(kern.n), co.dv)
            col = np.tile(np.arange(co.dv), kern.n)
            atom = co.col_block_of[col] * n_comps[t] + comps[t][lv]
            keys.append([whole_atoms[t], piece_atoms[t], np.full(len(lv), t + 1), atom, lv, col])
        keys = [np.concatenate(k) for k in zip(*keys)]
        comp, piece = keys[0], keys[1]
        comp_sizes = np.bincount(comp)
        # per component: its pieces, kept where the block factorisation is cheaper
        bordered = {}
        for c in np.flatnonzero(comp_sizes >= _BORDERED):
            members = piece[comp == c]
            labels, sizes = np.unique(members[members >= 0], return_counts=True)
            border = int((members < 0).sum())
            if len(labels) >= 2 and _bordered_flops(sizes, border) < 0.5 * float(comp_sizes[c]) ** 3:
                bordered[int(c)] = (labels, sizes)
        rank = np.zeros(len(comp), dtype=np.int64)  # 0 in a plain component
        for c, (labels, sizes) in bordered.items():
            inside = comp == c
            where = np.searchsorted(labels, piece[inside])
            rank[inside] = np.where(piece[inside] >= 0, where, len(labels))
        order = np.lexsort([keys[4], keys[5], keys[3], keys[2], rank, comp])
        position = np.empty(len(order), dtype=np.int64)
        position[order] = np.arange(len(order))
        self.q = len(order)
        self.fixed = position[:p]
        self.pos, start = [], p
        for kern, co in zip(self.kernels, self.coords):
            size = kern.n * co.dv
            self.pos.append(position[start:start + size].reshape(kern.n, co.dv))
            start += size
        # components in order, the small ones batched into groups of about _BATCH unknowns
        sizes, pieces, current = [], [], 0
        for c in np.flatnonzero(comp_sizes):
            size = int(comp_sizes[c])
            if size >= _BATCH or int(c) in bordered:
                if current:
                    sizes.append(current)
                    pieces.append(None)
                    current = 0
                sizes.append(size)
                pieces.append(bordered[int(c)][1] if int(c) in bordered else None)
            else:
                current += size
                if current >= _BATCH:
                    sizes.append(current)
                    pieces.append(None)
                    current = 0
        if current:
            sizes.append(current)
            pieces.append(None)
        self.group_sizes = np.array(sizes, dtype=np.int64)
        self.group_pieces = pieces
        self.group_starts = np.concatenate([[0], np.cumsum(self.group_sizes)[:-1]]).astype(np.int64)
        # dense-kernel atoms: (term, level ids, columns, unknowns (levels × columns))
        self.atoms = []
        for t, (kern, co) in enumerate(zip(self.kernels, self.coords)):
            if kern.sparse:
                continue
            for cols in co.col_blocks:
                for c in range(n_comps[t]):
                    lv = np.flatnonzero(comps[t] == c)
                    self.atoms.append((t, lv, cols, self.pos[t][np.ix_(lv, cols)]))

    def _equations(self, n: int) -> None:
        """The pattern of C̃ and, for every stored contribution, what it is made of.

        W̃ = [X, Z_t (I ⊗ F_t)]: value o has X's entries and, per term, F_t[a(o), c] at unknown
        (level(o), c) for every column c of F_t's pattern in row a(o) (``w_base`` × the
        θ-dependent coefficient ``w_coef``).  W̃'R⁻¹W̃ is, per pattern p and positions (i, j) of its
        records, Σ W̃[o_i, ·]' S_p⁻¹[i, j] W̃[o_j, ·]: every pair of entries (ea, eb) of the two
        rows, with coefficient index ``s_coef``.  (𝒦_t⁻¹ ⊗ I) is stored on the pattern of
        𝒦_t⁻¹ ⊗ (the blocks of F_t's columns), zero off the diagonal of I, so that the elements
        of C̃⁻¹ the score needs lie on the pattern of the factor."""
        vo, fc = np.nonzero(self.X)
        rows, cols, base, coef = [vo], [self.fixed[fc]], [self.X[vo, fc]], [np.zeros(len(vo), np.int64)]
        self.l_offset, start = [], 1  # coefficient 0 is 1 (X's entries)
        for t, (term, co, pos, lev) in enumerate(zip(self.terms, self.coords, self.pos, self.levels)):
            a, c = np.nonzero(co.pattern[term.index])  # value (by position) × column of F in its row
            rows.append(a)
            cols.append(pos[lev[a], c] if self.kernels[t].W is None else self.q + lev[a] * co.dv + c)
            base.append(np.ones(len(a)))
            coef.append(start + term.index[a] * co.dv + c)
            self.l_offset.append(start)
            start += co.d * co.dv
        self.n_lcoef = start
        r, c, b, k = (np.concatenate(v) for v in (rows, cols, base, coef))
        order = np.lexsort((c, r))
        self.w_indices, self.w_base, self.w_coef = c[order], b[order], k[order]
        self.w_indptr = np.concatenate([[0], np.cumsum(np.bincount(r, minlength=n))])
        # W̃'R⁻¹W̃: pairs of entries of two values of one record
        rmask = _block_mask(self.residual.structure.blocks, self.residual.structure.dim)
        ea, eb, sc = [], [], []
        self.pattern_coef, ncoef = [], 0
        for prow, vals in zip(self.patterns.rows, self.patterns.values):
            k = len(prow)
            self.pattern_coef.append(ncoef)
            for i in range(k):
                for j in range(k):
                    if not rmask[prow[i], prow[j]]:
                        continue
                    o, o2 = vals[:, i], vals[:, j]
                    na, nb = self.w_indptr[o + 1] - self.w_indptr[o], self.w_indptr[o2 + 1] - self.w_indptr[o2]
                    xa = _ranges(self.w_indptr[o], na)
                    cnt = np.repeat(nb, na)
                    ea.append(np.repeat(xa, cnt))
                    eb.append(_ranges(np.repeat(self.w_indptr[o2], na), cnt))
                    sc.append(np.full(int(cnt.sum()), ncoef + i * k + j))
            ncoef += k * k
        ea, eb, sc = np.concatenate(ea), np.concatenate(eb), np.concatenate(sc)
        self.n_scoef = ncoef
        cross_rows, cross_cols = [], []
        if self.lowrank is not None:  # pairs with genotype columns: the cross ones kept, the genetic ones by class
            lifted = self.w_indices >= self.q
            la, lb = lifted[ea], lifted[eb]
            mixed = la != lb
            cross_rows, cross_cols = self.lowrank.pairs(
                np.where(lb, ea, eb)[mixed], np.where(lb, eb, ea)[mixed], sc[mixed], lb[mixed], self.w_indices)
            keep = ~la & ~lb
            ea, eb, sc = ea[keep], eb[keep], sc[keep]
            cross_rows, cross_cols = [cross_rows], [cross_cols]
        self.ea, self.eb, self.s_coef = ea, eb, sc
        # 𝒦_t⁻¹ ⊗ I of the sparse kernels, on the pattern of 𝒦_t⁻¹ ⊗ (blocks of F_t's columns)
        g_rows, g_cols, g_vals = [], [], []
        self.kernel_entries = []
        for t, (co, kern) in enumerate(zip(self.coords, self.kernels)):
            if not kern.sparse:
                self.kernel_entries.append(None)
                continue
            dim = co.dv
            kin = kern.inverse.tocoo()
            ab = np.flatnonzero(co.col_mask.ravel())
            a, b = np.tile(ab // dim, kin.nnz), np.tile(ab % dim, kin.nnz)
            r = self.pos[t][np.repeat(kin.row, len(ab)), a]
            c = self.pos[t][np.repeat(kin.col, len(ab)), b]
            kval = np.repeat(kin.data, len(ab))
            g_rows.append(r)
            g_cols.append(c)
            g_vals.append(np.where(a == b, kval, 0.0))
            self.kernel_entries.append((r, c, a * dim + b, kval))
        self.g_vals = np.concatenate(g_vals) if g_vals else np.zeros(0)
        wcols = self.w_indices
        self.rows = np.concatenate([wcols[self.ea]] + g_rows + cross_rows)
        self.cols = np.concatenate([wcols[self.eb]] + g_cols + cross_cols)

    def _check_memory(self) -> None:
        have = memory_shortfall(self.memory)
        if have is None:
            return
        raise InputError(
            f"the MME engine needs about {self.memory / 2**30:.1f} GB for {self.q:,} equations ({self.summary()}) "
            f"and about {have / 2**30:.1f} GB is available; fit fewer traits or environments at once, or a "
            "two-stage analysis of genotype means per environment")

    def summary(self) -> str:
        """How C̃ is factored: "sparse C, 3,858,340 non-zeros in its factor", "dense C in 6
        independent blocks of 3,002", "dense C, genetic part of rank 1,000 (K = WW')", "dense C
        in 6 pieces of 2,000 and a border of 2,012"."""
        if self.sparse:
            return f"sparse C, {self.C.nnz_l:,} non-zeros in its factor"
        sizes = self.group_sizes
        rank = "" if self.lowrank is None else f", genetic part of rank {self.kernels[0].n:,} (K = WW')"
        if len(sizes) == 1 and self.group_pieces[0] is not None:
            pieces = self.group_pieces[0]
            span = f"{min(pieces):,}" if min(pieces) == max(pieces) else f"{min(pieces):,}–{max(pieces):,}"
            return (f"dense C in {len(pieces)} pieces of {span} and a border of {int(sizes[0] - pieces.sum()):,}"
                    + rank)
        if len(sizes) == 1:
            return "dense C" + rank
        span = f"{min(sizes):,}" if min(sizes) == max(sizes) else f"{min(sizes):,}–{max(sizes):,}"
        return f"dense C in {len(sizes)} independent blocks of {span}{rank}"

    def prepare(self) -> None:
        """Invert the dense relationships (raises :class:`MMENotApplicable` for a singular one)."""
        for kern in self.kernels:
            kern.prepare()

    # -- one θ ------------------------------------------------------------------------------------
    def _values(self, theta: np.ndarray):
        """(values of C̃'s stored contributions, W̃, F_t per term, S_p⁻¹ per pattern,
        log|R| + Σ_t d'_t log|𝒦_t|)."""
        mats = self.model.matrices(theta)
        invs, logdet = self.patterns.inverses(mats[-1])
        lcoef = np.ones(self.n_lcoef)
        chols = []
        for co, kern, S, start in zip(self.coords, self.kernels, mats[:-1], self.l_offset):
            L = co.factor(theta, S)
            chols.append(L)
            lcoef[start:start + L.size] = L.ravel()
            if kern.logdet is not None:
                logdet += co.dv * kern.logdet
        W = sp.csr_matrix((self.w_base * lcoef[self.w_coef], self.w_indices, self.w_indptr),
                          shape=(len(self.y), self.q + self.n_lifted))
        scoef = np.zeros(self.n_scoef)
        for start, inv in zip(self.pattern_coef, invs):
            scoef[start:start + inv.size] = inv.ravel()
        values = [W.data[self.ea] * W.data[self.eb] * scoef[self.s_coef], self.g_vals]
        if self.lowrank is not None:
            values.append(self.lowrank.cross(W.data, scoef))
        return np.concatenate(values), W, chols, invs, logdet

    def _lift(self, x: np.ndarray) -> np.ndarray:
        """T x (W̃x = W̄Tx; the identity without a low-rank genetic term)."""
        return x if self.lowrank is None else self.lowrank.lift(x)

    def _reduce(self, z: np.ndarray) -> np.ndarray:
        """T'z (W̃'z = T'W̄'z)."""
        return z if self.lowrank is None else self.lowrank.reduce(z)

    def _factor(self, theta: np.ndarray):
        """C̃ factored at θ, with ŝ and y'Py (kept: :meth:`Engine._kept_factor`)."""
        return self._kept_factor(theta, self._factor_at)

    def _factor_at(self, theta: np.ndarray):
        self.prepare()
        values, W, chols, r_inv, logdet = self._values(theta)
        dense_parts = []  # 𝒦_t⁻¹ ⊗ I of the dense kernels, column by column
        for t, lv, cols, unknowns in self.atoms:
            part = self.kernels[t].inverse[np.ix_(lv, lv)]
            for c in range(len(cols)):
                loc = self.C.local[unknowns[:, c]]
                dense_parts.append((self.C.group[unknowns[0, c]], np.ix_(loc, loc), part))
        if self.lowrank is not None:  # generated one block at a time
            dense_parts = itertools.chain(dense_parts, self.lowrank.parts(chols[0], r_inv))
        logdet += self.C.factor(values, dense_parts)
        ry = self.patterns.apply(r_inv, self.y)
        r = self._reduce(W.T @ ry)
        s = self.C.solve(r)
        return W, chols, r_inv, logdet, s, float(self.y @ ry - s @ r)

    def _fixed_block(self):
        """B̃ = C̃⁻¹[:, X] (q × p) and C^XX."""
        E = np.zeros((self.q, len(self.fixed)))
        E[self.fixed, np.arange(len(self.fixed))] = 1.0
        B = self.C.solve(E)
        return B, B[self.fixed]

    def evaluate_elements(self, theta: np.ndarray, derivatives: bool = True) -> Evaluation:
        reml = self.model.method == "reml"
        W, chols, r_inv, logdet, s, ypy = self._factor(theta)
        B = cxx = None
        if not reml or derivatives:
            B, cxx = self._fixed_block()
        if not reml:
            sign, ld = np.linalg.slogdet(cxx)
            if sign <= 0:
                raise NotPositiveDefinite("C^XX")
            logdet += ld
        loglik = -0.5 * (self.const + logdet + ypy)
        if not derivatives:
            return Evaluation(loglik)
        return Evaluation(loglik, *self._derivatives(W, chols, r_inv, s, B, cxx, reml))

    @cached_property
    def _queries(self):
        """Where the elements of C̃⁻¹ the score needs are stored: per sparse-kernel term those on
        the pattern of 𝒦_t⁻¹ ⊗ (blocks of Σ_t), those of W̃'R⁻¹W̃, and the low-rank cross ones."""
        kernel = [None if e is None else self.C.slots(e[0], e[1]) for e in self.kernel_entries]
        wcols = self.w_indices
        cross = None
        if self.lowrank is not None:  # the first half of the cross elements appended to C̃'s pattern
            size = self.lowrank.n_sc * self.kernels[0].n
            start = len(self.rows) - 2 * size
            cross = self.C.slots(self.rows[start:start + size], self.cols[start:start + size])
        return kernel, self.C.slots(wcols[self.ea], wcols[self.eb]), cross

    def _derivatives(self, W, chols, r_inv, s, B, cxx, reml):
        e = self.y - W @ self._lift(s)
        w = self.patterns.apply(r_inv, e)  # Py
        Q = None if reml else np.linalg.inv(cxx)
        linvs = [co.right_inverse(L) for co, L in zip(self.coords, chols)]
        vfs = [s[pos] @ linv for pos, linv in zip(self.pos, linvs)]  # per term Û Σ⁻¹ = V̂ F⁺
        kts = [vf if kern.W is None else kern.W @ vf  # per genotype: V_k Py = Z_G vec(W Â Σ⁻¹ ∂Σ)
               for vf, kern in zip(vfs, self.kernels)]
        wrec = np.zeros((self.patterns.n_records, self.residual.structure.dim))
        wrec[self.residual.unit, self.residual.index] = w
        kts.append(wrec)
        ai = self._average_information(W, r_inv, kts, B, Q)  # by the factor, before C⁻¹ is formed
        zinv = self.C.selected()
        kernel_slots, pair_slots, cross_slots = self._queries
        mats = []  # per term: tr(P V_k) − y'P V_k P y as a matrix
        for t, (co, kern, linv) in enumerate(zip(self.coords, self.kernels, linvs)):
            dim = co.dv
            A = np.zeros((dim, dim))  # Ã[a,b] = Σ_jj' 𝒦⁻¹_jj' Ĉ̃[(j,a),(j',b)]
            entries = self.kernel_entries[t]
            if entries is not None:
                A.ravel()[:] = np.bincount(entries[2], weights=entries[3] * zinv[kernel_slots[t]],
                                           minlength=dim * dim)
            for tt, lv, cols, unknowns in self.atoms:
                if tt != t:
                    continue
                kinv = None if kern.W is not None else kern.inverse[np.ix_(lv, lv)]
                A[np.ix_(cols, cols)] += self.C.kernel_trace(self.C.group[unknowns[0, 0]], self.C.local[unknowns],
                                                             kinv)
            if not reml:  # Ĉ̃_tt = C̃^tt − B̃_t Q B̃_t'
                Bt = B[self.pos[t]]  # (levels, d, p)
                KB = kern.times(Bt.reshape(kern.n, -1)).reshape(Bt.shape)
                A -= np.einsum("jap,pq,jbq->ab", Bt, Q, KB)
            mats.append(linv.T @ (kern.n * np.eye(dim) - A) @ linv - vfs[t].T @ kern.times(vfs[t]))
        # the residual: Σ_p n_p S_p⁻¹ − S_p⁻¹ (Σ_r Q_r + ê_r ê_r') S_p⁻¹, embedded in ΣE's rows
        qsum = np.bincount(self.s_coef, weights=W.data[self.ea] * W.data[self.eb] * zinv[pair_slots],
                           minlength=self.n_scoef)
        if self.lowrank is not None:
            qsum += self.lowrank.record_sums(W.data, zinv, zinv[cross_slots], chols[0], self.C, self.pattern_coef,
                                             self.n_scoef)
        WB = None if reml else W @ self._lift(B)
        dimE = self.residual.structure.dim
        ME = np.zeros((dimE, dimE))
        for prow, vals, inv, start in zip(self.patterns.rows, self.patterns.values, r_inv, self.pattern_coef):
            k = len(prow)
            S = qsum[start:start + k * k].reshape(k, k) + e[vals].T @ e[vals]
            if not reml:
                wb = WB[vals]  # (records, k, p)
                S -= np.einsum("rip,pq,rjq->ij", wb, Q, wb)
            ME[np.ix_(prow, prow)] += len(vals) * inv - inv @ S @ inv
        mats.append(ME)
        score = np.array([-0.5 * (1.0 if a == b else 2.0) * mats[t][a, b] for t, a, b in self.params])
        return score, ai

    def _average_information(self, W, r_inv, kts, B, Q) -> np.ndarray:
        """AI = ½ F'PF with F = [V_k Py] (a column per parameter; ``kts``: per term the V̂F⁺ whose
        rows give V_k Py, then the residual's Py per record): F'R⁻¹F − (W̃'R⁻¹F)'C̃⁻¹(W̃'R⁻¹F)
        (ML: + the fixed effects' part through B̃ and Q = (C^XX)⁻¹)."""
        units = self.levels + [self.residual.unit]
        idx = [t.index for t in self.terms] + [self.residual.index]
        F = np.empty((len(self.y), len(self.params)))
        for k, (t, a, b) in enumerate(self.params):
            kt, unit, index = kts[t], units[t], idx[t]
            col = np.where(index == a, kt[unit, b], 0.0)
            if a != b:
                col += np.where(index == b, kt[unit, a], 0.0)
            F[:, k] = col
        RF = self.patterns.apply(r_inv, F)
        WRF = self._reduce(W.T @ RF)
        ai = F.T @ RF - WRF.T @ self.C.solve(WRF)
        if Q is not None:
            BW = B.T @ WRF
            ai += BW.T @ Q @ BW
        ai *= 0.5
        return (ai + ai.T) / 2

    def solve(self, theta: np.ndarray, pev: bool = False) -> Solution:
        """BLUEs b̂ with Cov(b̂) = C^XX, BLUPs û_t = (I ⊗ F_t) v̂_t of every level of every term,
        PEV = the diagonal of (I ⊗ F_t) C̃^{v_t v_t} (I ⊗ F_t)', fitted values W̃ṽ."""
        W, chols, _, _, s, _ = self._factor(theta)
        _, cxx = self._fixed_block()
        zinv = self.C.selected() if pev else None
        preds = []
        for co, pos, L, kern in zip(self.coords, self.pos, chols, self.kernels):
            blup = s[pos] @ L.T
            if kern.W is not None:  # û = (W ⊗ L) v̂ for every genotype of K
                preds.append((kern.W @ blup, self.lowrank.pev(L, zinv, self.C) if pev else None))
            elif pev:  # the pairs of columns of F that some row loads on together
                dim = co.dv
                a, c = np.nonzero(co.pattern.T.astype(np.int64) @ co.pattern.astype(np.int64))
                block = np.zeros((len(pos), dim, dim))
                block[:, a, c] = zinv[self.C.slots(pos[:, a].ravel(), pos[:, c].ravel())].reshape(len(pos), -1)
                preds.append((blup, np.einsum("ac,jcd,ad->ja", L, block, L)))
            else:
                preds.append((blup, None))
        out = Solution(s[self.fixed], cxx, preds[0][0], W @ self._lift(s), preds[0][1])
        out.random = {t.factor.name: p for t, p in zip(self.terms[1:], preds[1:])}
        return out
