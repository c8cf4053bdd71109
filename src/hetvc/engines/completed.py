r"""The spectral engine on a completed layout: exact with a few missing cells (docs/design.md §3).

A missing trait value, or (case (b)) a genotype missing from an environment, breaks the
Kronecker form the spectral engine needs.  Complete the layout with the missing cells M (the
blocks of :func:`hetvc.engines.spectral.block_layout`, any value at M) and let V be the
covariance of the completed data, Q = V⁻¹ (applied in the rotated space), o the observed cells,
E the columns of the identity at M and S = E'QE = (V⁻¹)_MM.  Then

    log|V_oo| = log|V| + log|S|,     V_oo⁻¹ (padded with zeros at M) = Q̃ = Q − QE S⁻¹ E'Q,

so every quantity of docs/design.md §2 is the spectral one with Q̃ for Q, and Q̃ differs from Q
by a correction of rank |M|:

    X'V_oo⁻¹X = X'QX − (E'QX)' S⁻¹ (E'QX),   Ξ = S⁻¹E'QX,   z = S⁻¹E'Q(y − X b̂)
    Py (padded) = Q(r − Ez),   r = y − X b̂     (the residual with its M cells replaced)
    tr(P V_k) = tr(Q V_k) − tr(C X'QV_kQX) − Σ_j tr(∂H_j Δ_j Γ_j Δ_j)
    Γ_j = A_j Λ A_j' − A_j Ξ C (X'Q)_j' − (its transpose),   Λ = S⁻¹ + Ξ C Ξ'  (ML: S⁻¹, no X terms)
    F'PF = F'QF − (E'QF)'S⁻¹(E'QF) − (X'QF − Ξ'E'QF)' C (…),   F = [V_k P y]
    PEV: c'Pc = c'Qc − (E'Qc)'S⁻¹(E'Qc) − (X'Qc − Ξ'E'Qc)' C (…)

with A_j the d × |M| rows of E in rotated row j (A_j[c, m] = [c = c_m] U[g_m, j]); the rows of X
and y at M never matter (Q̃ is zero there).  All of E'QZ, S and the A_j … A_j' terms are formed
column of cells by column from the rows U[g_m, :] of the missing genotypes (cost O(|M|·r·d)
and O(|M|²·r)); nothing N × N is formed.

Where K_b has low rank r, the basis U is extended by an orthonormal basis of the projections of
the missing genotypes' unit vectors onto the null space of K_b (rotated rows with s = 0), so
that E lies in the span of the rotated rows and the null-space device of the spectral engine is
unchanged.

Cost per evaluation, besides the spectral engine's on the completed layout: about
2·|M_b|²·n_b (S and the traces) + |M_b|³ (factor and inverse of S) per block, against about
N_c³ per independent block for the dense engine (factor, inverse, traces).  With a fraction f of
the n_b·d_b cells of a block missing (N_c = (1 − f)·n_b·d_b), completion is cheaper while
2f²/d_b + f³ < (1 − f)³: f below about 0.35 for d_b = 1, 0.4 for d_b = 2, 0.48 for d_b = 20.
:func:`completed_plan` takes the completed layout while at most ``max_missing_fraction`` (0.3)
of its cells are missing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg as sla

from ..model import Model
from .base import NotPositiveDefinite
from .spectral import (_CHUNK_BYTES, BlockPlan, KinshipEigen, NotApplicable, SpectralEngine,
                       SpectralNotApplicable, _Block, _BlockState, _s, beyond_genetic, block_layout)

__all__ = ["CompletedEngine", "CompletedPlan", "MAX_MISSING_FRACTION", "completed_plan"]

MAX_MISSING_FRACTION = 0.3  # of the cells of the completed layout (see the module docstring)


@dataclass
class CompletedPlan:
    """The completed blocks (``obs`` −1 at a missing cell) and a one-line description."""

    description: str
    blocks: list
    n_missing: int
    n_cells: int


def completed_plan(model: Model, max_missing_fraction: float = MAX_MISSING_FRACTION) -> CompletedPlan | NotApplicable:
    """The completed spectral layout of ``model``, or why it does not apply (one line).

    It applies where the spectral engine would but for missing cells — trait values missing
    from records, or genotypes missing from environments in case (b) — while at most
    ``max_missing_fraction`` of the completed cells are missing; not with replicates or random
    terms beyond the genetic one."""
    beyond = beyond_genetic(model)
    if beyond is not None:
        return beyond
    layout = block_layout(model, complete=False)
    if isinstance(layout, NotApplicable):
        return layout
    blocks, desc = layout
    n_missing = sum(int((bp.obs < 0).sum()) for bp in blocks)
    n_cells = sum(bp.obs.size for bp in blocks)
    share = n_missing / n_cells
    if share > max_missing_fraction:
        return NotApplicable(
            f"{n_missing} of the {n_cells} cells of the completed layout are missing ({share:.0%}, more "
            f"than {max_missing_fraction:.0%}: completing them costs more than the dense engine)")
    return CompletedPlan(f"spectral with {n_missing} completed cell{_s(n_missing)} ({share:.1%} of "
                         f"{n_cells}): {desc}", blocks, n_missing, n_cells)


class _Cells:
    """The missing cells M of a block, column of cells by column: rows ``Bm`` = U[g_m, :] of the
    rotation at their genotypes, and E' and E in rotated rows (cell coordinates)."""

    def __init__(self, obs: np.ndarray, vectors: np.ndarray):
        self.col, row = np.nonzero((obs < 0).T)
        self.Bm = np.ascontiguousarray(vectors[row])  # (|M|, r)
        self.r, self.d = vectors.shape[1], obs.shape[1]
        bounds = np.searchsorted(self.col, np.arange(self.d + 1))
        self.groups = [(c, slice(bounds[c], bounds[c + 1])) for c in range(self.d) if bounds[c + 1] > bounds[c]]
        self.starts = bounds[[c for c, _ in self.groups]]

    def __len__(self) -> int:
        return len(self.col)

    def gather(self, Z: np.ndarray) -> np.ndarray:
        """E'Z: out[m] = Σ_j Bm[m, j] Z[j, c_m] for Z (r, d, …) in rotated rows."""
        out = np.empty((len(self),) + Z.shape[2:])
        for c, sl in self.groups:
            out[sl] = (self.Bm[sl] @ Z[:, c].reshape(self.r, -1)).reshape(out[sl].shape)
        return out

    def scatter(self, z: np.ndarray) -> np.ndarray:
        """E z in rotated rows: out[j, c] = Σ_{m ∈ c} Bm[m, j] z[m], for z (|M|, …)."""
        out = np.zeros((self.r, self.d) + z.shape[1:])
        for c, sl in self.groups:
            out[:, c] = (self.Bm[sl].T @ z[sl].reshape(sl.stop - sl.start, -1)).reshape(out[:, c].shape)
        return out

    def quadratic(self, W: np.ndarray) -> np.ndarray:
        """E'QE for Q with blocks W (r, d, d) in rotated rows: S[m, m'] = Σ_j Bm[m,j] W[j,c_m,c_m'] Bm[m',j]."""
        S = np.empty((len(self), len(self)))
        for i, (c1, sl1) in enumerate(self.groups):
            for c2, sl2 in self.groups[i:]:
                S[sl1, sl2] = (self.Bm[sl1] * W[:, c1, c2]) @ self.Bm[sl2].T
                S[sl2, sl1] = S[sl1, sl2].T
        return S

    def pair(self, lam: np.ndarray) -> np.ndarray:
        """A_j Λ A_j' in cell coordinates: out[j, c, c'] = Σ_{m∈c, m'∈c'} Bm[m,j] Λ[m,m'] Bm[m',j]."""
        out = np.zeros((self.r, self.d, self.d))
        cols = [c for c, _ in self.groups]
        for c2, sl2 in self.groups:
            Y = lam[:, sl2] @ self.Bm[sl2]  # (|M|, r)
            out[:, cols, c2] = np.add.reduceat(self.Bm * Y, self.starts, axis=0).T
        return out


class _CompletedBlock(_Block):
    """A spectral block with its missing cells (None when it has none)."""

    def __init__(self, bp: BlockPlan, model: Model, eig: KinshipEigen, fixed: tuple):
        super().__init__(bp, model, eig, fixed)
        self.cells = _Cells(bp.obs, eig.vectors) if (bp.obs < 0).any() else None


class _Fill:
    """One block's missing cells at one θ: W_j = H_j⁻¹ in cell coordinates, the factor of
    S = E'QE, log|S|, E'QX (``qx``), Ξ = S⁻¹E'QX (``xi``) and S⁻¹E'Qy (``zy``)."""

    def __init__(self, b: _CompletedBlock, st: _BlockState):
        cells = b.cells
        W = np.einsum("ci,ji,ei->jce", st.phi, st.delta, st.phi)  # (r, d, d)
        try:
            self.chol = sla.cholesky(cells.quadratic(W), lower=True, check_finite=False)
        except (sla.LinAlgError, ValueError):
            raise NotPositiveDefinite("(V⁻¹)_MM is not positive definite") from None
        self.logdet = 2.0 * float(np.log(np.diag(self.chol)).sum())
        self.qx = cells.gather(W[:, :, :, None] * b.xt[:, None, None, :]).reshape(len(cells), -1) @ b.T
        self.xi = self.solve(self.qx)
        self.zy = self.solve(cells.gather(np.einsum("jce,je->jc", W, b.yt)))

    def solve(self, z: np.ndarray) -> np.ndarray:
        """S⁻¹ z."""
        return sla.cho_solve((self.chol, True), z, check_finite=False)

    def inverse(self) -> np.ndarray:
        """S⁻¹ (LAPACK dpotri)."""
        inv, info = sla.lapack.dpotri(self.chol, lower=1)  # the lower triangle; above it the factor's zeros
        if info:
            raise NotPositiveDefinite("dpotri failed on (V⁻¹)_MM")
        return inv + np.tril(inv, -1).T


class CompletedEngine(SpectralEngine):
    """The spectral engine on the completed layout of :func:`completed_plan`, with the rank-|M|
    corrections of the module docstring; exact like the dense engine."""

    name = "spectral"
    block_class = _CompletedBlock

    def __init__(self, model: Model, plan: CompletedPlan | None = None, eigen=None):
        if plan is None:
            plan = completed_plan(model)
            if isinstance(plan, NotApplicable):
                raise SpectralNotApplicable(plan.reason)
        super().__init__(model, plan, eigen)

    def memory_bytes(self, fixed) -> float:
        """The spectral engine's, and per block the |M| × |M| matrices of the correction
        (S = (V⁻¹)_MM, its inverse and a work copy)."""
        cells = max(int((bp.obs < 0).sum()) for bp in self.plan.blocks)
        return super().memory_bytes(fixed) + 8.0 * 3 * cells ** 2

    def _eigen(self, bp: BlockPlan) -> KinshipEigen:
        """K_b's eigendecomposition; at low rank r, U extended by an orthonormal basis of
        (I − UU')e_g for the genotypes g with a missing cell (rows with s = 0)."""
        eig = super()._eigen(bp)
        rows = np.flatnonzero((bp.obs < 0).any(axis=1))
        if eig.rank == eig.n or not len(rows):
            return eig
        U = eig.vectors
        Ug = U[rows]
        mu, V = np.linalg.eigh(np.eye(len(rows)) - Ug @ Ug.T)  # Gram of (I − UU')E_G
        keep = mu > 1e-10
        V, mu = V[:, keep], mu[keep]
        extra = -U @ (Ug.T @ V)
        extra[rows] += V
        extra /= np.sqrt(mu)
        return KinshipEigen(np.concatenate([eig.values, np.zeros(len(mu))]), np.hstack([U, extra]), eig.key,
                            f"{eig.method} + {len(mu)} completion rows")

    # -- the corrections, block by block ---------------------------------------------------
    def _weights(self, b: _CompletedBlock, G: np.ndarray, E: np.ndarray) -> _BlockState:
        st = super()._weights(b, G, E)
        if b.cells is not None:
            st.extra = fill = _Fill(b, st)
            st.logdet += fill.logdet
            st.xvx = st.xvx - fill.qx.T @ fill.xi
            st.xvy = st.xvy - fill.qx.T @ fill.zy
        return st

    def _residuals(self, b: _CompletedBlock, st: _BlockState, beta: np.ndarray, shift=None) -> float:
        fill = st.extra
        if fill is not None:  # r − Ez, z = S⁻¹E'Q(y − X b̂), in Φ coordinates
            shift = b.cells.scatter(fill.zy - fill.xi @ beta) @ st.phi
        return super()._residuals(b, st, beta, shift)

    def _trace_weights(self, b: _CompletedBlock, st: _BlockState, C: np.ndarray, reml: bool):
        A_g, A_e = super()._trace_weights(b, st, C, reml)
        fill = st.extra
        if fill is None:
            return A_g, A_e
        lam = fill.inverse()
        if reml:
            lam += fill.xi @ C @ fill.xi.T
        gam = b.cells.pair(lam)  # Γ_j in cell coordinates
        if reml:  # A_j Ξ C (X'Q)_j': Σ_k x̃_jk Σ_{m∈c'} (T C Ξ')[(c, k), m] U[g_m, j]
            sc = b.cells.scatter((b.T @ C @ fill.xi.T).T).reshape(b.cells.r, b.d, b.d, b.c)
            cross = np.einsum("jeck,jk->jce", sc, b.xt)
            gam -= cross + cross.transpose(0, 2, 1)
        gam = st.phi.T @ gam @ st.phi  # Φ'Γ_jΦ
        dgd = st.delta[:, :, None] * gam * st.delta[:, None, :]
        return A_g - np.einsum("j,jiI->iI", b.s, dgd), A_e - dgd.sum(0)

    def _ai_products(self, b: _CompletedBlock, st: _BlockState, Dh: np.ndarray, Fh: np.ndarray, reml: bool):
        fw, xw = super()._ai_products(b, st, Dh, Fh, reml)
        fill = st.extra
        if fill is None:
            return fw, xw
        qf = b.cells.gather(np.einsum("ci,ji,jik->jck", st.phi, st.delta, Fh))  # E'QF
        sf = fill.solve(qf)
        return fw - qf.T @ sf, (xw - fill.qx.T @ sf if reml else None)

    def _pev_correction(self, b: _CompletedBlock, st: _BlockState, ws: np.ndarray):
        """e = E'Qc = κ Ψ, Ψ[j, m, g] = U[g_m, j] (W_j ΣG[ga, g])_{c_m}: c'Qc −= |L⁻¹e|² and
        X'Qc −= (L⁻¹E'QX)'(L⁻¹e), S = LL'."""
        fill = st.extra
        if fill is None:
            return None
        cells = b.cells
        M = len(cells)
        rows_g = np.flatnonzero(np.abs(ws).sum((0, 1)) > 0)  # rows of ΣG the block informs
        psi = cells.Bm.T[:, :, None] * ws[:, cells.col][:, :, rows_g]  # (r, |M|, g)
        lpsi = sla.solve_triangular(fill.chol, psi.transpose(1, 0, 2).reshape(M, -1), lower=True,
                                    check_finite=False).reshape(M, cells.r, len(rows_g))
        lqx = sla.solve_triangular(fill.chol, fill.qx, lower=True, check_finite=False)  # (|M|, p)
        every_p = np.arange(lqx.shape[1])
        step = max(1, _CHUNK_BYTES // (8 * M * len(rows_g)))

        def fix(rows, kappa, first, h):
            for i0 in range(0, len(rows), step):
                sel = rows[i0:i0 + step]
                le = np.tensordot(kappa[i0:i0 + step], lpsi, axes=([1], [1]))  # L⁻¹e, (rows, |M|, g)
                first[np.ix_(sel, rows_g)] -= np.einsum("rmg,rmg->rg", le, le)
                h[np.ix_(sel, every_p, rows_g)] -= np.einsum("mp,rmg->rpg", lqx, le)

        return fix
