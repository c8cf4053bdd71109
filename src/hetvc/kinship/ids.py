"""Ids: matched by exact label (as strings), never by position; one-line errors for misses.

:func:`check_ids` names the missing ids, and :func:`near_match_hint` an available id that
differs from a missing one only in case or whitespace.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import pandas as pd

from ..errors import InputError

__all__ = ["check_ids", "near_match_hint"]

def _fmt_ids(ids: Sequence, k: int = 3) -> str:
    shown = ", ".join(repr(str(i)) for i in list(ids)[:k])
    return shown + (", ..." if len(ids) > k else "")


def _loose(label: str) -> str:
    return "".join(str(label).split()).casefold()


def near_match_hint(missing: Sequence, available: Iterable) -> str:
    """'' or a hint naming an id of ``missing`` that equals one of ``available`` but for
    case or whitespace (e.g. ``'G03 '`` for ``'g03'``), and how many such ids there are."""
    loose = {}
    for a in map(str, available):
        loose.setdefault(_loose(a), a)
    pairs = [(m, loose[_loose(m)]) for m in map(str, missing) if _loose(m) in loose]
    if not pairs:
        return ""
    m, a = pairs[0]
    more = f" ({len(pairs)} ids are like this)" if len(pairs) > 1 else ""
    return (f"; did you mean {a!r} for {m!r}? they differ only in case or whitespace{more}, "
            f"and ids are matched by exact label")


def check_ids(ids: Iterable, available: Iterable, *, what: str = "the phenotype table",
              where: str = "the kinship") -> None:
    """Raise :class:`InputError` unless every id of ``ids`` is among ``available``.

    Ids are compared as strings.  The message names how many are missing and the first few,
    and hints at an available id that differs only in case or whitespace.
    """
    available = list(map(str, available))
    have = set(available)
    missing = [str(i) for i in ids if str(i) not in have]
    if missing:
        # keep first occurrences, in order
        missing = list(dict.fromkeys(missing))
        hint = near_match_hint(missing, available)
        raise InputError(
            f"{len(missing)} id(s) of {what} are not in {where} (first: {_fmt_ids(missing)})"
            + (hint or "; ids are matched by label: check that both use the same ids")
        )


def _unique_labels(labels, what: str) -> pd.Index:
    idx = pd.Index([str(x) for x in labels], dtype=object)
    dup = idx[idx.duplicated()]
    if len(dup):
        raise InputError(f"id {dup[0]!r} appears more than once in {what}: ids must be unique")
    return idx
