"""The scale a kinship is used at, and why a kinship is singular: the policy of ``hetvc fit
--kinship-scale`` as functions, with the notes that say what was done.

    from hetvc.kinship import kinship_scaling, singularity_note
    K, facts, notes = kinship_scaling(K, "mean-diag")    # or "centred", "none"
    note = singularity_note(K, n_markers=info.snps_used)  # '' when K is not singular

* ``mean-diag`` divides K by its mean diagonal, so that ΣG is the variance of a genotype's own
  value (and says when K is not centred, where h² = ΣG/(ΣG + ΣE) overstates the share of the
  genotypes' variance that is genetic);
* ``centred`` divides K by mean(diag K) − mean(K), so that ΣG and h² refer to the variance among
  the genotypes in K (Legarra 2016, Theor Popul Biol; the two agree for a centred K);
* ``none`` keeps K as given.

A singular K needs no ridge: V = ZKZ'⊗ΣG + ΣE stays positive definite through the residual;
:func:`kinship_singularity` says why K is singular (centred genotypes, fewer markers than
genotypes) and :func:`singularity_note` words it as a note.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import InputError
from .check import scale_kinship

__all__ = ["KINSHIP_SCALES", "kinship_scaling", "kinship_singularity", "singularity_note"]

KINSHIP_SCALES = ("mean-diag", "centred", "none")

NOT_CENTRED = 0.05  # |mean K / mean diag K| above which the mean-diag note says K is not centred


def kinship_scaling(K: pd.DataFrame, scale: str = "mean-diag", *,
                    name: str = "K") -> tuple[pd.DataFrame, dict, list]:
    """(K, facts, notes) under the scaling policy ``scale`` (:data:`KINSHIP_SCALES`):
    ``mean-diag`` divides K by its mean diagonal (and says when K is not centred),
    ``centred`` by mean(diag K) − mean(K), ``none`` keeps it.  ``facts``: kinship_scaling
    (``scale``), kinship_mean_diagonal and kinship_mean (of K as given) and kinship_scale (the
    factor K was multiplied by); ``name`` names K in the errors of :func:`scale_kinship`."""
    if scale not in KINSHIP_SCALES:
        raise InputError(f"unknown kinship scaling {scale!r}; use {', '.join(KINSHIP_SCALES)}")
    values = K.to_numpy()
    mean_diag, mean_all = float(np.diag(values).mean()), float(values.mean())
    facts = dict(kinship_scaling=scale, kinship_mean_diagonal=mean_diag, kinship_mean=mean_all,
                 kinship_scale=1.0)
    if scale == "centred":
        spread = mean_diag - mean_all
        if not spread > 0:
            raise InputError(f"--kinship-scale centred: mean(diag K) − mean(K) = {spread:.4g} is not "
                             f"positive, so K gives no genetic variance among its genotypes; "
                             f"use --kinship-scale mean-diag or none")
        facts["kinship_scale"] = 1.0 / spread
        return scale_kinship(K, 1.0 / spread, name=name), facts, [
            f"K divided by mean(diag K) − mean(K) = {_factor(spread)} (mean diagonal "
            f"{_factor(mean_diag)}, mean {mean_all:.4g}), so that ΣG is the expected genetic variance "
            f"among the genotypes in K and h² is the share of their variance that is genetic "
            f"(Legarra 2016, Theor Popul Biol); --kinship-scale none keeps K as given"]
    if scale != "mean-diag":
        return K, facts, []
    notes = []
    mean_k = mean_all / mean_diag  # mean of K once its mean diagonal is 1
    centred = abs(mean_k) <= NOT_CENTRED
    if abs(mean_diag - 1.0) > 1e-6:
        K = scale_kinship(K, 1.0 / mean_diag, name=name)
        facts["kinship_scale"] = 1.0 / mean_diag
        refer = ("so that genetic variances and h² refer to the genotypes' own variance" if centred
                 else "so that ΣG is the variance of a genotype's own value")
        notes.append(f"K divided by its mean diagonal ({_factor(mean_diag)}) {refer} "
                     f"({_diagonal_reason(mean_diag)}); --kinship-scale none keeps K as given")
    if not centred:
        notes.append(
            f"K is not centred: mean(K)/mean(diag K) = {mean_k:.2f}, so the genetic variance "
            f"among these genotypes is about (1 − {mean_k:.2f})·ΣG = {1 - mean_k:.2f}·ΣG, and "
            f"h² = ΣG/(ΣG + ΣE) overstates the share of the lines' variance that is genetic; "
            f"--kinship-scale centred refers ΣG and h² to these genotypes")
    return K, facts, notes


def _factor(value: float) -> str:
    """A scale factor with the digits that tell it from 1 (1.0002, not 1)."""
    return f"{value:.4g}" if abs(value - 1.0) >= 1e-3 else f"{value:.7g}"


def _diagonal_reason(mean_diag: float) -> str:
    """Why a K may have a mean diagonal other than 1, said only where it fits."""
    if 1.5 <= mean_diag <= 2.5:
        return "inbred lines have a GRM diagonal near 2"
    return "a kinship's diagonal is the genotypes' self-relationship, 1 on average in a standardised GRM"


def kinship_singularity(values: np.ndarray, n_markers: int | None = None) -> str:
    """'' or why K is singular.  Its rank from eigenvalues up to q = 1500 (O(q³), under a
    second), beyond that only what O(q²) shows: rows that sum to zero (centred genotypes) or a
    GRM of fewer markers (``n_markers``, known when hetvc built the GRM) than genotypes.
    "Centred genotypes" is named only where the rows sum to zero or the rank is q − 1."""
    q = len(values)
    centred = bool(np.abs(values.sum(axis=1)).max() <= 1e-8 * q * float(np.abs(np.diag(values)).max()))
    if q > 1500:
        if n_markers is not None and n_markers < q:
            return f"a GRM of {n_markers} markers has rank at most {n_markers}, below its {q} rows"
        return "its rows sum to zero, as in a GRM of centred genotypes" if centred else ""
    w = np.linalg.eigvalsh(values)
    rank = int((w > 1e-8 * w.max()).sum())
    if rank >= q:
        return ""
    if n_markers is not None and rank <= n_markers < q:
        return f"rank {rank} of {q}: a GRM of {n_markers} markers has rank at most {n_markers}"
    if rank == q - 1:
        return (f"rank {rank} of {q}: its rows sum to zero, as in a GRM of centred genotypes" if centred
                else f"rank {rank} of {q}, as a GRM of centred genotypes is")
    if centred:
        return (f"rank {rank} of {q}: its rows sum to zero, as in a GRM of centred genotypes, whose "
                f"rank is at most the number of markers")
    return f"rank {rank} of {q}"


def singularity_note(K, n_markers: int | None = None) -> str:
    """'' or the note that K (a DataFrame or an array) is singular, why
    (:func:`kinship_singularity`), and that no ridge is needed."""
    singular = kinship_singularity(np.asarray(K), n_markers)
    if not singular:
        return ""
    return (f"K is singular ({singular}); no ridge is needed: V = ZKZ'⊗ΣG + ΣE stays positive "
            f"definite through the residual")
