"""Checking a kinship: :func:`check_kinship`, and a digest of the checked matrix that spares
:func:`checked_kinship` (and :func:`hetvc.fit`) a second check while it is unchanged."""

from __future__ import annotations

import hashlib
import logging
import warnings

import numpy as np
import pandas as pd

from ..errors import InputError
from .ids import _unique_labels, check_ids
from .psd import psd_certificate
from .tiles import _scan, symmetrize

__all__ = ["check_kinship", "checked_kinship", "scale_kinship"]

log = logging.getLogger("hetvc.kinship")


def check_kinship(K, *, jitter: float | None = None, name: str = "K", ids=None) -> pd.DataFrame:
    """Validate a labelled kinship matrix and return it clean.

    Checks, in order (each failure is one-line :class:`InputError` naming ``name``):

    * K is a pandas DataFrame (ids as index and columns), square and non-empty;
    * no id appears twice among the rows or among the columns;
    * rows and columns carry the same ids; if they are the same set in another order the
      columns are reordered to match the rows;
    * every entry is a finite number (the first bad one is named by row and column id);
    * symmetric: max |K − K'| ≤ 1e-8·max|K| (the worst pair is named); the returned matrix
      is the exact symmetric part (K + K')/2;
    * positive semi-definite: smallest eigenvalue λ ≥ −1e-8·max(diag K), decided by
      :func:`hetvc.kinship.psd.psd_certificate` (pivoted Cholesky when K has rank r < q/20, as a GRM
      of far fewer markers than genotypes has: O(q·r²) + O(q²·r); else one Cholesky
      factorisation, O(q³/3)).
      Otherwise, if ``jitter`` is None, an error; if ``jitter`` is a float ≥ 0, K is bent to
      K + (−λ + jitter·mean(diag K))·I, whose smallest eigenvalue is jitter·mean(diag K),
      and a :class:`UserWarning` says so.  (A singular but PSD K, as every GRM of centred
      genotypes is, is accepted unchanged.)
    * if ``ids`` is given, each of them is in K (extra genotypes in K are allowed).

    Labels are converted to strings.  The result has index named ``id``.  Memory: the
    entries are scanned in tiles (no q×q temporaries); the result shares K's data through
    pandas when K needs no change (a float64 frame, exactly symmetric, PSD; with pandas'
    copy-on-write an edit of either frame leaves the other alone), else it holds one new
    matrix.  The result carries a digest of its contents, so :func:`checked_kinship` (used by
    :func:`hetvc.fit`) does not check it again while it is unchanged.
    """
    if not isinstance(K, pd.DataFrame):
        raise InputError(
            f"{name}: a kinship must be a labelled table (pandas DataFrame with ids as index and "
            f"columns), not {type(K).__name__}; wrap it as pd.DataFrame(K, index=ids, columns=ids)"
        )
    r, c = K.shape
    if r != c:
        raise InputError(f"{name} is {r}×{c}, not square: it needs one row and one column per genotype id")
    if r == 0:
        raise InputError(f"{name} is empty")
    rows = _unique_labels(K.index, f"the rows of {name}")
    cols = _unique_labels(K.columns, f"the columns of {name}")
    if not rows.equals(cols):
        only_r = rows.difference(cols, sort=False)
        only_c = cols.difference(rows, sort=False)
        if len(only_r) or len(only_c):
            if len(only_r):
                msg = f"id {only_r[0]!r} labels a row of {name} but no column"
            else:
                msg = f"id {only_c[0]!r} labels a column of {name} but no row"
            raise InputError(f"{msg}: rows and columns must carry the same ids")
        # same set, different order: reorder the columns by label
        K = K.set_axis(cols, axis=1).loc[:, rows]
        cols = rows
    try:
        K = K.astype(np.float64)  # under copy-on-write: no copy for a float64 frame
    except (TypeError, ValueError):
        conv = K.apply(pd.to_numeric, errors="coerce")
        bad = conv.isna().to_numpy() & K.notna().to_numpy()
        i, j = np.argwhere(bad)[0]
        raise InputError(
            f"{name}[{rows[i]!r}, {cols[j]!r}] is {K.iat[i, j]!r}, not a number: kinship entries must be numeric"
        ) from None
    values = K.to_numpy()  # a (read-only) view of K's data
    nonfinite, scale, worst, (i, j) = _scan(values)
    if nonfinite is not None:
        i, j = nonfinite
        raise InputError(
            f"{name}[{rows[i]!r}, {cols[j]!r}] is {values[i, j]}: kinship entries must be finite numbers "
            f"(fill or drop that genotype)"
        )
    if scale == 0.0:
        raise InputError(f"{name} is all zeros: it carries no relationship information")
    if worst > 1e-8 * scale:
        raise InputError(
            f"{name} is not symmetric: {name}[{rows[i]!r}, {rows[j]!r}] = {values[i, j]:.10g} but "
            f"{name}[{rows[j]!r}, {rows[i]!r}] = {values[j, i]:.10g}; symmetrise it, e.g. (K + K.T)/2"
        )
    if worst == 0:
        values = _row_major(values)
    owned = worst > 0 or not values.flags.c_contiguous
    if owned:  # never modify the caller's matrix: symmetrise a copy
        values = np.array(values, order="C")
        symmetrize(values)
    diag = np.diag(values).copy()
    if diag.max() <= 0:
        raise InputError(f"{name} has no positive diagonal entry: it is not a relationship matrix")
    tol = 1e-8 * float(diag.max())
    if jitter is not None:
        try:
            jitter = float(jitter)
        except (TypeError, ValueError):
            raise InputError(f"jitter must be a number ≥ 0 or None, not {jitter!r}") from None
        if not np.isfinite(jitter) or jitter < 0:
            raise InputError(f"jitter must be a number ≥ 0 or None, not {jitter!r}")
    cert = psd_certificate(values, tol)
    log.debug("%s: positive semi-definite test by %s", name, cert.method)
    if not cert.psd:
        lam = cert.min_eigenvalue
        if jitter is None:
            raise InputError(
                f"{name} is not positive semi-definite (smallest eigenvalue {lam:.3g}); rebuild it from "
                f"markers or bend it, e.g. pass jitter=0.01 to add a ridge to its diagonal"
            )
        shift = -lam + jitter * float(diag.mean())
        if not owned:
            values, owned = np.array(values, order="C"), True
        values.flat[:: len(values) + 1] += shift
        warnings.warn(
            f"{name} was not positive semi-definite (smallest eigenvalue {lam:.3g}); "
            f"added {shift:.3g} to its diagonal (jitter={jitter:g} × mean diagonal)",
            UserWarning,
            stacklevel=2,
        )
    if ids is not None:
        check_ids(ids, rows, what="the phenotype table", where=name)
    index, columns = rows.rename("id"), pd.Index(rows, dtype=object)
    if owned:  # a matrix of our own
        out = pd.DataFrame(values, index=index, columns=columns, copy=False)
    else:  # K's data, shared through pandas (copy-on-write keeps K and the result apart)
        out = K.set_axis(index, axis=0).set_axis(columns, axis=1)
    out.attrs[_CHECKED] = _fingerprint(values, rows)
    return out


def checked_kinship(K, *, jitter: float | None = None, name: str = "K") -> tuple[np.ndarray, list[str]]:
    """(values, ids) of a valid kinship, checking it only if it is not already checked.

    A frame returned by :func:`check_kinship` or :func:`read_kinship` carries a digest of
    its ids and values (``K.attrs``); when the digest still matches, K is unchanged since its
    check and is used as it is (a SHA-256 of K, about 1.5 GB/s, instead of the check).
    ``values`` is a C-ordered, read-only view of K's data.
    """
    if isinstance(K, pd.DataFrame) and _CHECKED in K.attrs and K.shape[0] == K.shape[1]:
        values = K.to_numpy()
        if values.dtype == np.float64:
            # the digest was taken over the C-ordered matrix: a column-major frame matches it
            # through its transpose only if it is that same (symmetric) matrix
            values = _row_major(values)
            labels = pd.Index([str(x) for x in K.index], dtype=object)
            if (values.flags.c_contiguous and K.attrs[_CHECKED] == _fingerprint(values, labels)
                    and labels.equals(pd.Index([str(x) for x in K.columns], dtype=object))):
                return values, list(labels)
    K = check_kinship(K, jitter=jitter, name=name)
    return _row_major(K.to_numpy()), list(K.index)


def _row_major(values: np.ndarray) -> np.ndarray:
    """A C-ordered view of a *symmetric* matrix stored column-major (pandas' own layout of a
    frame): its transpose, which is the same matrix; else ``values`` itself."""
    if values.flags.f_contiguous and not values.flags.c_contiguous:
        return values.T
    return values


def scale_kinship(K, factor: float, *, name: str = "K") -> pd.DataFrame:
    """factor·K (factor > 0), checked: a positive multiple of a valid kinship is valid, so
    only K itself is checked (and not again if it already was)."""
    try:
        factor = float(factor)
    except (TypeError, ValueError):
        raise InputError(f"a kinship can only be scaled by a positive number, not {factor!r}") from None
    if not np.isfinite(factor) or factor <= 0:
        raise InputError(f"a kinship can only be scaled by a positive number, not {factor!r}")
    values, ids = checked_kinship(K, name=name)
    labels = pd.Index(ids, dtype=object)
    scaled = values * factor
    out = pd.DataFrame(scaled, index=labels.rename("id"), columns=labels, copy=False)
    out.attrs[_CHECKED] = _fingerprint(scaled, labels)
    return out


_CHECKED = "hetvc.checked"  # key of the digest in DataFrame.attrs


def kinship_fingerprint(K) -> str:
    """SHA-256 of a labelled K (shape, ids, values): equal for equal matrices with equal ids; of
    a pedigree's ids and A⁻¹ for a :class:`~hetvc.kinship.pedigree.PedigreeRelationship`."""
    if hasattr(K, "fingerprint"):
        return K.fingerprint()
    return _fingerprint(np.ascontiguousarray(K.to_numpy(dtype=float)), K.index)


def _fingerprint(values: np.ndarray, labels: pd.Index) -> str:
    """SHA-256 of the shape, the ids (length-prefixed) and the bytes of a C-ordered K."""
    h = hashlib.sha256()
    h.update(np.asarray(values.shape, dtype=np.int64).tobytes())
    encoded = [str(x).encode("utf-8", "surrogatepass") for x in labels]
    h.update(np.asarray([len(e) for e in encoded], dtype=np.int64).tobytes())
    h.update(b"".join(encoded))
    h.update(memoryview(np.ascontiguousarray(values)).cast("B"))
    return h.hexdigest()
