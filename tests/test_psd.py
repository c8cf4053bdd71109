"""hetvc.kinship.psd: the PSD certificate against LAPACK's eigenvalues, on both of its paths."""

import numpy as np
import pytest

from hetvc.kinship.psd import psd_certificate, smallest_eigenvalue


def low_rank_minus(q, r, eps, seed=0):
    """A A' (rank r) − eps·u u' with u ⟂ range(A): smallest eigenvalue exactly −eps."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((q, r)) / np.sqrt(r)
    u = rng.standard_normal(q)
    u -= A @ np.linalg.lstsq(A, u, rcond=None)[0]
    u /= np.linalg.norm(u)
    K = A @ A.T - eps * np.outer(u, u)
    return (K + K.T) / 2


def test_low_rank_psd_is_certified_by_pivoted_cholesky():
    rng = np.random.default_rng(1)
    A = rng.standard_normal((800, 30))
    K = A @ A.T
    cert = psd_certificate(K, 1e-8 * K.diagonal().max())  # default max_rank q/20 = 40
    assert cert.psd and cert.min_eigenvalue is None
    assert cert.method == "pivoted Cholesky (rank 30 of 800)"


@pytest.mark.parametrize("max_rank", [100, 0], ids=["pivoted", "dense"])
@pytest.mark.parametrize("ratio, psd", [(0.05, True), (0.5, True), (3.0, False), (1e6, False)])
def test_boundary_of_the_tolerance(max_rank, ratio, psd):
    """λ_min = −ratio·tol: accepted iff ratio ≤ 1, on either path; the reported eigenvalue is
    LAPACK's to 1e-6 relative.  The pivoted path's bound ‖S‖_F is looser than λ_min (here by
    about 3×): near the boundary it hands over to the dense Cholesky, which decides."""
    tol = 1e-8
    K = low_rank_minus(400, 25, ratio * tol)
    cert = psd_certificate(K, tol, max_rank=max_rank)
    assert cert.psd is psd
    if psd:
        pivoted = max_rank and ratio <= 0.05
        assert cert.method.startswith("pivoted" if pivoted else "Cholesky"), cert.method
    if not psd:
        lam = np.linalg.eigvalsh(K)[0]
        assert cert.min_eigenvalue == pytest.approx(lam, rel=1e-6)
        assert lam == pytest.approx(-ratio * tol, rel=1e-6)


def test_full_rank_goes_to_cholesky_and_indefinite_is_found():
    rng = np.random.default_rng(2)
    A = rng.standard_normal((300, 300))
    K = A @ A.T / 300 + 0.1 * np.eye(300)
    assert psd_certificate(K, 1e-8).method == "Cholesky"
    K[0, 1] = K[1, 0] = 50.0  # a 2×2 minor with determinant < 0
    cert = psd_certificate(K, 1e-8)
    assert not cert.psd
    assert cert.min_eigenvalue == pytest.approx(np.linalg.eigvalsh(K)[0], rel=1e-10)


def test_input_is_not_modified():
    K = low_rank_minus(200, 10, 1e-3)
    before = K.copy()
    psd_certificate(K, 1e-8)
    psd_certificate(K, 1e-8, max_rank=0)
    np.testing.assert_array_equal(K, before)


def test_smallest_eigenvalue_lanczos_path_matches_lapack():
    """q > 2000 uses ARPACK: same value as LAPACK to 1e-9 relative (a clustered spectrum:
    2,100 × 2,100 of rank 60 minus a ridge, one diagonal entry lowered)."""
    K = low_rank_minus(2100, 60, 0.0, seed=3) - 1e-4 * np.eye(2100)
    K[0, 0] -= 0.5
    lam = smallest_eigenvalue(K)
    assert lam == pytest.approx(np.linalg.eigvalsh(K)[0], rel=1e-9)


def test_smallest_eigenvalue_of_a_rounded_grm():
    """A GRM rounded to 4 decimals (slightly indefinite, eigenvalues crowded at 0): ARPACK
    alone would crawl; within its budget or by LAPACK, the value is LAPACK's."""
    rng = np.random.default_rng(5)
    X = rng.binomial(2, 0.3, size=(2100, 300)).astype(float)
    Z = (X - X.mean(0)) / X.std(0)
    K = np.round(Z @ Z.T / 300, 4)
    lam = smallest_eigenvalue(K)
    assert lam < 0
    assert lam == pytest.approx(np.linalg.eigvalsh(K)[0], rel=1e-9)
