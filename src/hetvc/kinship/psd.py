r"""Is a symmetric matrix positive semi-definite?  A certificate at the price the matrix needs.

:func:`psd_certificate` decides whether the smallest eigenvalue of a symmetric q×q matrix K
is at least ``−tol``, with at most one copy of K and in less than a Cholesky's O(q³/3) time
when K has low rank (a GRM of p markers has rank ≤ p, often p ≪ q):

1. *Pivoted Cholesky* (greedy on the residual diagonal, one pivot per step): after r steps
   K = L'L + S with L (r×q) and S the Schur complement of the pivots (zero on their rows and
   columns).  L'L is PSD, so by Weyl's inequality

       λ_min(K) ≥ λ_min(S) ≥ −‖S‖_F .

   The steps stop when the largest residual diagonal is ≤ tol/q (for a PSD K, S is then PSD
   with ‖S‖_F ≤ tr S ≤ tol, so every PSD K of numerical rank r is certified after r steps),
   and ‖S‖_F is accumulated over row chunks of the upper triangle (never stored).
   Cost O(q·r²) for the factor and O(q²·r/2) for the certificate.
2. Otherwise (rank above q/20, or ‖S‖_F > tol): a
   Cholesky factorisation of K + tol·I, in place on one copy of K; only when it fails is the
   smallest eigenvalue computed (:func:`smallest_eigenvalue`, for the message and a jitter).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.linalg.blas
import scipy.linalg.lapack
import scipy.sparse.linalg

__all__ = ["PSDCertificate", "psd_certificate", "smallest_eigenvalue"]

_ROW_CHUNK_BYTES = 1 << 26  # row chunks of the certificate's S (64 MiB)


@dataclass(frozen=True)
class PSDCertificate:
    """Outcome of :func:`psd_certificate`.

    ``psd``: λ_min ≥ −tol.  ``min_eigenvalue``: the smallest eigenvalue when not PSD (else
    None).  ``method``: how it was decided, e.g. ``"pivoted Cholesky (rank 499 of 1000)"``.
    """

    psd: bool
    min_eigenvalue: float | None
    method: str


def psd_certificate(values: np.ndarray, tol: float, max_rank: int | None = None) -> PSDCertificate:
    """Certify λ_min(values) ≥ −tol for a symmetric matrix (``values`` is not modified).

    ``max_rank``: the largest rank tried by pivoted Cholesky before the dense factorisation
    (default q/20; 0 skips it).  Step k of the factor reads k·q numbers (memory-bound, about
    10 GB/s), so r steps cost ≈ 36·(r/q)² of a Cholesky's time (BLAS 3): at r = q/20 a full-rank
    K loses at most ~10 % to the attempt; a GRM of r < q/20 markers is certified many times faster.
    """
    q = len(values)
    if max_rank is None:
        max_rank = q // 20
    if max_rank > 0:
        low = _pivoted_cholesky(values, tol / q, max_rank)
        if low is not None and _schur_norm_at_most(values, low, tol):
            return PSDCertificate(True, None, f"pivoted Cholesky (rank {len(low)} of {q})")
    return _dense_certificate(values, tol)


def _pivoted_cholesky(values: np.ndarray, tau: float, max_rank: int) -> np.ndarray | None:
    """L (r×q) with K − L'L zero on r pivot rows and its diagonal ≤ tau; None if r > max_rank.

    Step k takes the largest residual diagonal d_i as pivot: L[k] = (K[i] − L[:k]'L[:k, i]) / √d_i.
    """
    q = len(values)
    d = np.diag(values).astype(np.float64, copy=True)
    low = np.empty((max_rank, q))
    for k in range(max_rank + 1):
        i = int(np.argmax(d))
        if d[i] <= tau:
            return low[:k]
        if k == max_rank:
            return None
        row = values[i] - low[:k, i] @ low[:k]
        row /= np.sqrt(d[i])
        low[k] = row
        d -= row * row
        d[i] = 0.0
    return None  # pragma: no cover - the loop always returns


def _schur_norm_at_most(values: np.ndarray, low: np.ndarray, tol: float) -> bool:
    """‖K − L'L‖_F ≤ tol, summed over row chunks of the upper triangle (stops early)."""
    q = len(values)
    chunk = max(1, min(q, _ROW_CHUNK_BYTES // (8 * q)))
    low_t = np.ascontiguousarray(low.T)  # q × r: low_t[s:].T is L[:, s:] in Fortran order
    budget = tol * tol
    total = 0.0
    for s in range(0, q, chunk):
        e = min(q, s + chunk)
        # block = K[s:e, s:] − L[:, s:e]'L[:, s:], by one GEMM into a copy of K's rows
        block = scipy.linalg.blas.dgemm(-1.0, low_t[s:e], low_t[s:].T, beta=1.0,
                                        c=np.asfortranarray(values[s:e, s:]), overwrite_c=1)
        inner, diag = _sumsq(block), _sumsq(block[:, : e - s])
        # the chunk's diagonal block counts once, the entries right of it twice (symmetry)
        total += 2.0 * inner - diag
        if total > budget:
            return False
    return True


def _sumsq(a: np.ndarray) -> float:
    return float(np.einsum("ij,ij->", a, a))


def _dense_certificate(values: np.ndarray, tol: float) -> PSDCertificate:
    """Cholesky of K + tol·I in place on one copy; the smallest eigenvalue only on failure."""
    q = len(values)
    work = np.array(values, dtype=np.float64, order="C", copy=True)
    work.flat[:: q + 1] += tol
    # work.T is the same symmetric matrix, Fortran-ordered: LAPACK factors it in place
    info = scipy.linalg.lapack.dpotrf(work.T, lower=1, overwrite_a=1, clean=0)[1]
    del work  # (the factor is the same buffer)
    if info == 0:
        return PSDCertificate(True, None, "Cholesky")
    if info < 0:  # pragma: no cover - argument error, cannot happen with a square float matrix
        raise RuntimeError(f"LAPACK dpotrf argument {-info} is invalid")
    lam = smallest_eigenvalue(values)
    if lam >= -tol:  # Cholesky of K + tol·I failed by rounding only
        return PSDCertificate(True, None, "eigenvalue")
    return PSDCertificate(False, lam, "eigenvalue")


def smallest_eigenvalue(values: np.ndarray) -> float:
    """λ_min of a symmetric matrix: LAPACK for q ≤ 2000; else Lanczos (ARPACK, relative accuracy
    1e-10) within a budget of max(300, q/20) products K·v — a few times one Cholesky — and
    LAPACK (O(q³)) when a crowded spectrum near λ_min needs more."""
    q = len(values)
    if q > 2000:
        budget, calls = max(300, q // 20), 0

        def matvec(v):
            nonlocal calls
            calls += 1
            if calls > budget:
                raise _OverBudget
            return values @ v

        op = scipy.sparse.linalg.LinearOperator((q, q), matvec=matvec, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(q)
        try:
            return float(scipy.sparse.linalg.eigsh(op, k=1, which="SA", tol=1e-10, v0=v0, ncv=min(q, 64),
                                                   return_eigenvectors=False)[0])
        except (_OverBudget, scipy.sparse.linalg.ArpackNoConvergence):
            pass
    return float(scipy.linalg.eigh(values, eigvals_only=True, subset_by_index=[0, 0], check_finite=False)[0])


class _OverBudget(Exception):
    """Raised inside ARPACK's products to stop it when its budget is spent."""
