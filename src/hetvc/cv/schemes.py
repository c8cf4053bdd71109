"""Cross-validation schemes for multi-environment genomic prediction, as pure functions.

Each function takes the record-level ``ids`` and ``envs`` (one entry per row of the data) and
returns a list of :class:`Fold`: per fold, ``hidden`` — the boolean mask of the records whose
trait values are set to missing before the model is built — and ``test`` — the records whose
predictions are evaluated (the hidden ones, except in CV00).  The schemes (Burgueño et al.
2012, Jarquín et al. 2017):

CV1 (new lines)
    A line's records are hidden in every environment; folds are random groups of lines of
    (nearly) equal size, or come from a fold table (columns id, fold, as BGLR ships).
    Over the folds every line is hidden exactly once.
CV2 (lines tested elsewhere)
    Line × environment cells are hidden while the line stays observed in other
    environments.  Lines get a balanced random start fold s_j; environments a random order;
    the i-th environment of line j (in that order) falls in fold (s_j + i) mod ``folds``.
    So every fold has every environment in about equal numbers (stratified by environment),
    and a line with records in k ≥ 2 environments is never hidden in all of them in one fold
    (its cells spread over min(k, folds) folds).  A line seen in one environment only is
    necessarily new (CV1-like) in its fold.
CV2t (a trait of lines tested elsewhere; several traits)
    The cells of the CV2 folds, one trait at a time: trait t of the fold's line ×
    environment cells is hidden while the records' other traits stay observed (trait-assisted
    prediction; a secondary trait measured on the line in that environment helps predict the
    target).  ``folds`` × m folds, each scoring its one hidden trait.
CV0 (new environment)
    All records of one environment are hidden: one fold per environment, ``folds`` unused.
CV00 (new lines in a new environment)
    For each environment e × line fold f (the CV1 folds): the training set has neither
    environment e nor the lines of f anywhere (all their records hidden); the test set is the
    records of the lines of f in environment e.

Folds depend only on ``seed`` (a ``numpy.random.default_rng(seed)`` per scheme), never on the
order in which folds or models are fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import InputError

SCHEMES = ("cv1", "cv2", "cv2t", "cv0", "cv00")


@dataclass(frozen=True)
class Fold:
    """One fold: ``index`` (1, 2, …), ``hidden`` (records masked before fitting), ``test``
    (records whose predictions are scored), ``env`` (the hidden environment for CV0/CV00, else
    ``None``), ``trait`` (CV2t: the one trait hidden and scored; ``None``: every trait)."""

    index: int
    hidden: np.ndarray
    test: np.ndarray
    env: object = None
    trait: str | None = None

    def key(self, scheme: str) -> str:
        """A name unique within a cross-validation run, e.g. ``cv1-03`` or ``cv2t-02-yield``."""
        return f"{scheme.lower()}-{self.index:02d}" + (f"-{self.trait}" if self.trait is not None else "")


def _levels(values) -> list:
    """Unique values in order of first appearance."""
    return list(pd.unique(pd.Series(values)))


def _check_folds(folds: int, n: int, what: str) -> None:
    if not isinstance(folds, (int, np.integer)) or folds < 2:
        raise InputError(f"folds must be an integer ≥ 2, got {folds!r}")
    if folds > n:
        raise InputError(f"{folds} folds but only {n} {what}")


def line_folds(ids, folds: int = 5, seed=1, fold_table: pd.DataFrame | None = None,
               id: str = "id") -> dict:
    """{line: fold index (1..)} for CV1: lines shuffled by ``seed`` and dealt into ``folds``
    groups, or read from ``fold_table`` (columns ``id`` and ``fold``; fold labels are numbered
    1.. in sorted order)."""
    lines = _levels(ids)
    if fold_table is not None:
        if id not in fold_table.columns or "fold" not in fold_table.columns:
            raise InputError(f"the fold table needs columns {id!r} and 'fold'")
        table = dict(zip(fold_table[id], fold_table["fold"]))
        missing = [x for x in lines if x not in table]
        if missing:
            raise InputError(f"{len(missing)} lines of the data are not in the fold table, e.g. {missing[:3]}")
        labels = sorted({table[x] for x in lines})
        number = {lab: k + 1 for k, lab in enumerate(labels)}
        return {x: number[table[x]] for x in lines}
    _check_folds(folds, len(lines), "lines")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lines))
    return {lines[j]: pos % folds + 1 for pos, j in enumerate(order)}


def cv1(ids, envs=None, folds: int = 5, seed=1, fold_table: pd.DataFrame | None = None,
        id: str = "id") -> list[Fold]:
    """CV1: every record of a line hidden together; every line hidden in exactly one fold."""
    ids = np.asarray(ids)
    assign = line_folds(ids, folds, seed, fold_table, id)
    fold_of = np.array([assign[x] for x in ids])
    out = []
    for k in range(1, max(assign.values()) + 1):
        mask = fold_of == k
        out.append(Fold(k, mask, mask.copy()))
    return out


def cv2(ids, envs, folds: int = 5, seed=1) -> list[Fold]:
    """CV2: (line, environment) cells hidden, stratified by environment, a line never hidden
    in all its environments at once (when it has ≥ 2)."""
    ids, envs = np.asarray(ids), np.asarray(envs)
    lines, env_levels = _levels(ids), _levels(envs)
    _check_folds(folds, len(lines), "lines")
    rng = np.random.default_rng(seed)
    start = {}
    for pos, j in enumerate(rng.permutation(len(lines))):
        start[lines[j]] = pos % folds
    env_rank = {env_levels[i]: r for r, i in enumerate(rng.permutation(len(env_levels)))}
    cells = pd.DataFrame({"id": ids, "env": envs}).drop_duplicates()
    cells["rank"] = cells["env"].map(env_rank)
    cells = cells.sort_values(["id", "rank"], kind="stable")
    cells["i"] = cells.groupby("id", sort=False).cumcount()
    cells["fold"] = (cells["id"].map(start) + cells["i"]) % folds + 1
    fold_of = pd.MultiIndex.from_arrays([ids, envs]).map(
        dict(zip(zip(cells["id"], cells["env"]), cells["fold"])))
    fold_of = np.asarray(fold_of, dtype=int)
    return [Fold(k, fold_of == k, fold_of == k) for k in range(1, folds + 1)]


def cv2t(ids, envs, traits, folds: int = 5, seed=1) -> list[Fold]:
    """CV2t: the CV2 cells, one trait at a time (the record's other traits stay observed)."""
    traits = [traits] if isinstance(traits, str) else list(traits)
    if len(traits) < 2:
        raise InputError("scheme cv2t hides one trait while the others stay observed: it needs at least two "
                         f"traits, got {traits}")
    return [Fold(f.index, f.hidden, f.test, trait=t) for t in traits for f in cv2(ids, envs, folds, seed)]


def cv0(ids, envs) -> list[Fold]:
    """CV0: one fold per environment, all its records hidden."""
    envs = np.asarray(envs)
    return [Fold(k + 1, envs == e, envs == e, e) for k, e in enumerate(_levels(envs))]


def cv00(ids, envs, folds: int = 5, seed=1, fold_table: pd.DataFrame | None = None,
         id: str = "id") -> list[Fold]:
    """CV00: environment e × line fold f; hidden: environment e and the lines of f everywhere;
    scored: the lines of f in environment e."""
    ids, envs = np.asarray(ids), np.asarray(envs)
    assign = line_folds(ids, folds, seed, fold_table, id)
    fold_of = np.array([assign[x] for x in ids])
    n_line_folds = max(assign.values())
    out = []
    for e in _levels(envs):
        in_env = envs == e
        for k in range(1, n_line_folds + 1):
            lines = fold_of == k
            out.append(Fold(len(out) + 1, in_env | lines, in_env & lines, e))
    return out


def make_folds(scheme: str, ids, envs, folds: int = 5, seed=1, fold_table=None, id: str = "id",
               traits=()) -> list[Fold]:
    """The folds of ``scheme`` (one of :data:`SCHEMES`, case-insensitive); ``traits`` for CV2t."""
    s = scheme.lower()
    if s == "cv1":
        return cv1(ids, envs, folds, seed, fold_table, id)
    if fold_table is not None and s != "cv00":
        raise InputError(f"a fold table is supported for CV1 (and the line folds of CV00), not {scheme}")
    if s == "cv2":
        return cv2(ids, envs, folds, seed)
    if s == "cv2t":
        return cv2t(ids, envs, traits, folds, seed)
    if s == "cv0":
        return cv0(ids, envs)
    if s == "cv00":
        return cv00(ids, envs, folds, seed, fold_table, id)
    raise InputError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
