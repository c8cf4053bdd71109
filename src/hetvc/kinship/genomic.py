r"""The genomic relationship matrix (GRM) of SNP dosages, accumulated SNP block by SNP block.

With :math:`x_{jk}` the dosage of individual j at SNP k and :math:`p_k` the allele frequency
estimated from the observed calls, :math:`z_{jk} = x_{jk} - 2p_k` (missing calls are imputed
with the SNP mean, i.e. :math:`z_{jk}=0`):

* ``method="standardized"`` (default; Yang et al. 2010, the GCTA form without its diagonal
  correction): :math:`K = \frac{1}{p'} \sum_k z_k z_k' / (2p_k(1-p_k))`.
* ``method="vanraden"`` (VanRaden 2008, method 1):
  :math:`K = \sum_k z_k z_k' / \sum_k 2p_k(1-p_k)`.

Under Hardy–Weinberg equilibrium both have diagonal mean ≈ 1.  SNPs with no observed call,
and monomorphic SNPs (all observed dosages equal: they carry no information and would divide
by zero), are dropped; p' is the number of SNPs kept.  Counts of dropped SNPs and imputed
calls are logged (logger ``hetvc.kinship``) and returned by ``grm(..., return_info=True)``.

Markers coded −1/0/1 or as A/C/G/T letters are turned into dosages first (``coding=``, detected
by default; see :mod:`hetvc.kinship.sources`).  0/1 presence/absence markers (dominant, such
as DArT) are not dosages: with q the presence frequency, :math:`z = x - q` and the variance
2p(1−p) above is replaced by q(1−q) (each marker standardized by its own mean and SD).
``maf=`` and ``call_rate=`` drop SNPs with a minor allele frequency (folded presence
frequency) or a call rate below them (defaults 0: none); their counts, and the coding, are in
:class:`GRMInfo`.

The sum runs over blocks of ``block_size`` SNPs and accumulates the upper triangle in place
(BLAS syrk), so memory is one n×n float64 matrix plus a few n×block_size work arrays
(about 6·n·block_size·8 bytes): 20,000 individuals need 3.2 GB for K plus about 1 GB at
the default 1,024-SNP blocks, whatever the number of SNPs.  Pass a ``.bed`` path to
:func:`grm` to stream SNP blocks from disk instead of loading all genotypes.  (Measured:
4,000 × 20,000 SNPs from a .bed took 17 s on 2 cores with a 0.5 GB peak; time grows as
n²·p.)
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import scipy.linalg.blas

from ..errors import InputError
from .sources import _source
from .tiles import _mirror_upper

__all__ = ["GRMInfo", "grm"]

log = logging.getLogger("hetvc.kinship")

METHODS = ("standardized", "vanraden")
DEFAULT_BLOCK_SIZE = 1024


@dataclass
class GRMInfo:
    """What :func:`grm` did: sizes, the marker coding, dropped SNPs and imputed calls."""

    method: str
    n: int
    snps: int                #: SNPs in the input
    snps_used: int           #: SNPs that entered K
    monomorphic: int         #: dropped: all observed dosages equal
    all_missing: int         #: dropped: no observed call
    missing_calls: int       #: calls imputed with the SNP mean
    blocks: int
    denominator: float       #: p' (standardized) or sum 2p(1-p) (vanraden)
    coding: str = "dosage"   #: dosage, -101, letters or presence
    coding_detected: bool = False  #: True when coding="auto" chose it
    coding_note: str = ""    #: what the coding did (MarkerCoding.describe())
    multiallelic: int = 0    #: dropped: letters SNPs with more than two alleles
    low_call_rate: int = 0   #: dropped: call rate below min_call_rate
    low_maf: int = 0         #: dropped: minor allele frequency below maf
    maf: float = 0.0         #: the MAF filter
    min_call_rate: float = 0.0  #: the call-rate filter

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        dropped = [f"{self.monomorphic} monomorphic", f"{self.all_missing} all-missing"]
        if self.multiallelic:
            dropped.append(f"{self.multiallelic} with more than two alleles")
        if self.min_call_rate > 0 or self.low_call_rate:
            dropped.append(f"{self.low_call_rate} with call rate < {self.min_call_rate:g}")
        if self.maf > 0 or self.low_maf:
            dropped.append(f"{self.low_maf} with MAF < {self.maf:g}")
        text = (
            f"{self.method} GRM of {self.n} individuals from {self.snps_used} of {self.snps} SNPs "
            f"({', '.join(dropped[:-1])} and {dropped[-1]} SNPs dropped; "
            f"{self.missing_calls} missing calls mean-imputed)"
        )
        return text + f"; markers: {self.coding_note or self.coding + ' coding'}"


def _prepare_block(X: np.ndarray, start: int, ids=None, snps=None, what="genotypes", *,
                   presence: bool = False, maf: float = 0.0, min_call_rate: float = 0.0,
                   filtered: dict | None = None):
    """Center one block of SNPs.  Returns (Z, var, kept mask, n_missing, n_mono, n_allmiss).

    Z holds the centred dosages of the kept SNPs (missing → 0), var = 2p(1-p) of those SNPs
    (q(1-q) for presence/absence markers, q the presence frequency).  SNPs with a call rate
    below ``min_call_rate`` or a minor allele frequency below ``maf`` are dropped too, counted
    in ``filtered["low_call_rate"]`` and ``filtered["low_maf"]``.
    """
    obs = ~np.isnan(X)
    hi = 1 if presence else 2
    bad = obs & ((X < 0) | (X > hi))
    if bad.any():
        j, k = np.argwhere(bad)[0]
        who = repr(ids[j]) if ids is not None else f"row {j}"
        snp = repr(snps[start + k]) if snps is not None else f"column {start + k}"
        raise InputError(
            f"{what}: genotype of {who} at SNP {snp} is {X[j, k]:g}; "
            + ("presence/absence markers must lie in [0, 1]" if presence else "dosages must lie in [0, 2]")
            + " (NaN for missing)"
        )
    count = obs.sum(axis=0)
    n_missing = int(X.size - count.sum())
    Xf = np.where(obs, X, 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = Xf.sum(axis=0) / count
    big = np.where(obs, X, -np.inf).max(axis=0)
    small = np.where(obs, X, np.inf).min(axis=0)
    all_missing = count == 0
    mono = ~all_missing & (big == small)
    kept = ~all_missing & ~mono
    freq = mean if presence else mean / 2.0
    if min_call_rate > 0:
        low = kept & (count < min_call_rate * X.shape[0])
        kept &= ~low
        if filtered is not None:
            filtered["low_call_rate"] = filtered.get("low_call_rate", 0) + int(low.sum())
    if maf > 0:
        with np.errstate(invalid="ignore"):
            low = kept & (np.minimum(freq, 1.0 - freq) < maf)
        kept &= ~low
        if filtered is not None:
            filtered["low_maf"] = filtered.get("low_maf", 0) + int(low.sum())
    Z = Xf[:, kept] - mean[kept]
    Z[~obs[:, kept]] = 0.0
    f = freq[kept]
    var = f * (1.0 - f) if presence else 2.0 * f * (1.0 - f)
    return Z, var, kept, n_missing, int(mono.sum()), int(all_missing.sum())


def grm(genotypes, method: str = "standardized", *, block_size: int = DEFAULT_BLOCK_SIZE,
        ids=None, id_column: str | None = None, return_info: bool = False, coding: str = "auto",
        maf: float = 0.0, call_rate: float = 0.0):
    """Genomic relationship matrix from SNP dosages.

    ``genotypes``: an n×p array or DataFrame of dosages (0/1/2, NaN missing), or a path to a
    PLINK ``.bed`` (or prefix; streamed block by block) or a CSV dosage table.
    ``method``: ``"standardized"`` or ``"vanraden"`` (see the module docstring).
    ``block_size``: SNPs per block (memory ≈ n·block_size·8 bytes on top of K).
    ``ids``: restrict to, and order by, these individual ids (labelled inputs only).
    ``coding``: how the markers are coded: ``"auto"`` (default: detected), ``"dosage"`` (0/1/2),
    ``"-101"`` (−1/0/1), ``"letters"`` (A/C/G/T calls, minor allele counted) or
    ``"presence"`` (0/1 dominant markers, standardized by their own mean and SD); see
    :mod:`hetvc.kinship.sources`.  A ``.bed`` file is always dosages.
    ``maf``: drop SNPs whose minor allele frequency (presence frequency for presence markers,
    folded) is below this (default 0: none).  ``call_rate``: drop SNPs observed in less than
    this fraction of the individuals (default 0: none).

    Returns K as a labelled DataFrame (index and columns = ids) when the input is labelled
    (a DataFrame or a file), otherwise an ndarray; with ``return_info=True`` returns
    ``(K, GRMInfo)``.  Missing calls are mean-imputed and monomorphic / all-missing SNPs
    dropped; the counts are logged at INFO level and are in the GRMInfo.
    """
    if method not in METHODS:
        raise InputError(f"unknown GRM method {method!r}; use one of {', '.join(METHODS)}")
    try:
        block_size = int(block_size)
    except (TypeError, ValueError):
        raise InputError(f"block_size must be a positive integer, not {block_size!r}") from None
    if block_size < 1:
        raise InputError(f"block_size must be a positive integer, not {block_size}")
    maf = _fraction(maf, "maf", 0.5)
    call_rate = _fraction(call_rate, "call_rate", 1.0)
    src, labelled = _source(genotypes, ids=ids, id_column=id_column, coding=coding)
    mc = src.coding
    presence = mc.coding == "presence"
    filtered: dict = {}
    try:
        n, p = src.shape
        if n == 0 or p == 0:
            raise InputError(f"genotypes are empty ({n} individuals × {p} SNPs)")
        # Only the upper triangle is accumulated, in place, with BLAS syrk: memory stays at one
        # n×n matrix plus one block (no n×n temporaries).
        K = np.zeros((n, n), dtype=np.float64, order="F")
        used = mono = allmiss = missing = blocks = 0
        denom = 0.0
        what = getattr(src, "what", None) or str(getattr(src, "path", "genotypes"))
        for start in range(0, p, block_size):
            stop = min(p, start + block_size)
            X = src.block(start, stop)
            Z, var, kept, n_missing, n_mono, n_allmiss = _prepare_block(
                X, start, src.ids, src.snps, what, presence=presence, maf=maf, min_call_rate=call_rate,
                filtered=filtered)
            missing += n_missing
            mono += n_mono
            allmiss += n_allmiss
            blocks += 1
            if Z.shape[1] == 0:
                continue
            used += Z.shape[1]
            if method == "standardized":
                Z /= np.sqrt(var)
            else:
                denom += float(var.sum())
            Z = np.ascontiguousarray(Z)
            scipy.linalg.blas.dsyrk(1.0, Z.T, beta=1.0, c=K, trans=1, lower=0, overwrite_c=1)
    finally:
        src.close()
    low_cr, low_maf = filtered.get("low_call_rate", 0), filtered.get("low_maf", 0)
    if used == 0:
        extra = "".join([f", {mc.multiallelic} with more than two alleles" if mc.multiallelic else "",
                         f", {low_cr} with call rate < {call_rate:g}" if low_cr else "",
                         f", {low_maf} with MAF < {maf:g}" if low_maf else ""])
        raise InputError(
            f"{what}: no informative SNP ({mono} monomorphic, {allmiss} without any call{extra}); "
            f"cannot build a GRM"
        )
    if method == "standardized":
        denom = float(used)
    K /= denom
    _mirror_upper(K)
    info = GRMInfo(method=method, n=n, snps=p + mc.multiallelic, snps_used=used, monomorphic=mono,
                   all_missing=allmiss, missing_calls=missing, blocks=blocks, denominator=denom,
                   coding=mc.coding, coding_detected=mc.detected, coding_note=mc.describe(),
                   multiallelic=mc.multiallelic, low_call_rate=low_cr, low_maf=low_maf, maf=maf,
                   min_call_rate=call_rate)
    log.info(info.summary())
    out = K
    if labelled and src.ids is not None:
        labels = pd.Index(src.ids, dtype=object, name="id")
        out = pd.DataFrame(K, index=labels, columns=pd.Index(src.ids, dtype=object), copy=False)
    return (out, info) if return_info else out


def _fraction(value, name: str, top: float) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, {top:g}], not {value!r}") from None
    if not 0.0 <= value <= top:
        raise InputError(f"{name} must be a number in [0, {top:g}], not {value:g}")
    return value


def standardized_genotypes(X: np.ndarray):
    """W (n×p') with W W' equal to the standardized GRM of X; also the kept-SNP mask.

    Used by the simulator to draw genetic values with covariance exactly K (a = W β).
    """
    Z, var, kept, _, _, _ = _prepare_block(np.asarray(X, dtype=np.float64), 0)
    if Z.shape[1] == 0:
        raise InputError("no informative SNP: cannot build a GRM")
    return Z / np.sqrt(var) / np.sqrt(Z.shape[1]), kept
