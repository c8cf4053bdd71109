r"""Pedigrees → the additive relationship matrix A, its sparse inverse A⁻¹, and inbreeding.

    from hetvc.kinship.pedigree import read_pedigree, pedigree_kinship, pedigree_inverse, inbreeding
    ped = read_pedigree("ped.csv")                 # columns id, sire, dam (or any 3, in that order)
    A = pedigree_kinship(ped)                      # labelled n×n DataFrame, parents before offspring
    Ainv, ids = pedigree_inverse(ped)              # scipy.sparse CSC matrix, rows/columns in ids order
    F = inbreeding(ped)                            # Series of inbreeding coefficients by id
    rel = PedigreeRelationship(ped)                # A⁻¹, diag A and log|A| without A: hetvc.fit(K=rel)

Every function takes a :class:`Pedigree`, a path (``.csv``; ``.tsv``/``.tab`` for tabs; other
names have their separator sniffed) or a DataFrame, with the same ``id=``, ``sire=``, ``dam=``
and ``positions=`` arguments as :func:`read_pedigree`.

Reading
-------
* Columns are taken by name (``id``, ``sire``, ``dam`` by default); when they are not all there
  and the table has exactly three columns, those are taken in order (with a note).  Ids are
  strings, stripped of surrounding blanks.
* An unknown parent is ``0``, ``NA``, ``NaN``, ``.``, ``-``, ``*`` or empty.
* ``positions=True``: sire and dam are 1-based row numbers of the id column (R's integer-coded
  pedigrees, e.g. sommer's ``P_gryphon``), mapped to the ids of those rows.
* Parents that are never listed as animals are added as founders (unknown parents), ahead of
  everybody; the animals are then put in a stable topological order: file order, except that
  an animal listed after one of its descendants moves just ahead of that descendant.
* A row repeated with the same parents is dropped; an id listed twice with different parents,
  an animal that is its own ancestor (a cycle; its own parent is the shortest) and a row number
  out of range are errors (:class:`~hetvc.errors.InputError`, naming the file, row and id).
  An id used both as a sire and as a dam is only noted (selfing plants, or mixed-up columns).

Maths
-----
Animals are numbered 1..n so that parents come before offspring; s and d are the sire and dam
of animal i, and a term with an unknown parent is 0.

*Tabular method* (Henderson 1976), row by row:

    a_ii = 1 + ½ a_sd,        a_ij = a_ji = ½ (a_js + a_jd)   for j < i,

each row one vector operation over the columns before it.  A is dense: 8n² bytes (0.8 GB at
n = 10 000, 3.2 GB at 20 000), so :func:`pedigree_kinship` is meant for up to about 20 000
animals.  The inbreeding coefficient is F_i = a_ii − 1 = ½ a_sd.

*Inbreeding without A* (Meuwissen & Luo 1992).  A = L D Lᵀ with L = (I − P)⁻¹ lower
triangular (P_is = P_id = ½), so row i of L is e_i + ½ L_s + ½ L_d, and D is the diagonal of
Mendelian sampling variances

    D_i = 1 − ¼(1 + F_s) − ¼(1 + F_d)    both parents known,
    D_i = 1 − ¼(1 + F_p)                 one parent p known,
    D_i = 1                              founder.

Hence a_ii = Σ_j L_ij² D_j over i and its ancestors j.  :func:`inbreeding` walks the ancestors
of i from the youngest down, passing half of each one's coefficient L_ij to its parents:
O(number of ancestors) per animal, with no n×n storage; an animal with an unknown parent has
F = 0, and full sibs share one computation.

*Inverse* (Henderson 1976, with inbreeding as in Quaas 1976): A⁻¹ = (I − P)ᵀ D⁻¹ (I − P).  With
δ_i = 1/D_i, animal i adds

    δ_i to (i, i),   −δ_i/2 to (i, p) and (p, i),   δ_i/4 to (p, q)

for its known parents p and q (all pairs, p = q included).  A⁻¹ has O(n)
non-zeros (the diagonal, animal–parent and sire–dam pairs) and is built as a sparse COO → CSC
matrix (duplicates summed) in O(n) once F is known.
"""

from __future__ import annotations

import hashlib

import heapq
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from ..errors import InputError
from .ids import _fmt_ids
from .tables import _csv_sep

__all__ = ["Pedigree", "PedigreeRelationship", "read_pedigree", "pedigree_kinship", "pedigree_inverse",
           "inbreeding", "looks_like_pedigree"]

UNKNOWN = frozenset({"", "0", "NA", "na", "NaN", "nan", ".", "-", "*"})
_PARENT_WORDS = ("sire", "dam", "father", "mother", "parent")


@dataclass(frozen=True)
class Pedigree:
    """A pedigree in topological order: ``ids`` (parents before offspring), ``sire`` and ``dam``
    (positions into ``ids``, −1 unknown), ``notes`` on what reading it changed, and
    ``founders_added`` (parents that were not listed as animals)."""

    ids: list
    sire: np.ndarray
    dam: np.ndarray
    notes: list = field(default_factory=list)
    founders_added: int = 0

    def __len__(self) -> int:
        return len(self.ids)


def _text(value) -> str:
    """A cell as an id string ('' for a missing one); integral floats lose their '.0'."""
    if value is None or (not isinstance(value, str) and pd.isna(value)):
        return ""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value).strip()


def _read_table(p: Path) -> pd.DataFrame:
    if not p.exists():
        raise InputError(f"pedigree file {p} does not exist")
    if p.stat().st_size == 0:
        raise InputError(f"pedigree file {p} is empty")
    sep = _csv_sep(p)
    try:
        return pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False,
                           engine="c" if sep else "python")
    except Exception as err:
        raise InputError(f"cannot read pedigree {p}: {err}".replace("\n", " ")) from err


def _columns(frame: pd.DataFrame, name: str, names: tuple, notes: list) -> list:
    cols = [str(c).strip() for c in frame.columns]
    if all(c in cols for c in names):
        return [cols.index(c) for c in names]
    if len(cols) == 3:
        notes.append(f"columns {', '.join(cols)} of {name} taken as id, sire, dam (in that order)")
        return [0, 1, 2]
    missing = [c for c in names if c not in cols]
    raise InputError(
        f"pedigree {name} has no column {', '.join(map(repr, missing))} (columns: {_fmt_ids(cols, 6)}); "
        f"name the id, sire and dam columns (id=, sire=, dam=; --id, --sire, --dam)"
    )


def _position(text: str, row: int, who: str, what: str, n: int, name: str) -> int:
    """The 0-based row that a 1-based row number names (−1 for unknown)."""
    if text in UNKNOWN:
        return -1
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value.is_integer():
        raise InputError(f"pedigree {name}, data row {row} (id {who!r}): {what} {text!r} is not a row number "
                         f"(with positions, sire and dam are 1-based rows of the id column)")
    if not 1 <= value <= n:
        raise InputError(f"pedigree {name}, data row {row} (id {who!r}): {what} {text} is out of range; "
                         f"row positions run from 1 to {n}")
    return int(value) - 1


def _parents_text(s: str, d: str) -> str:
    return f"sire {repr(s) if s else 'unknown'}, dam {repr(d) if d else 'unknown'}"


def _topological(parents: list, ids: list, rows: list, name: str, hint: str) -> tuple[list, int]:
    """A stable topological order (file order, ancestors pulled just ahead of their first
    descendant) and how many animals moved; a cycle is an InputError naming it."""
    state = [0] * len(ids)  # 0 unseen, 1 on the path being walked, 2 placed
    order, moved = [], 0
    for root in range(len(ids)):
        if state[root]:
            continue
        state[root] = 1
        stack = [[root, 0]]
        while stack:
            top = stack[-1]
            if top[1] < 2:
                p = parents[top[0]][top[1]]
                top[1] += 1
                if p < 0 or state[p] == 2:
                    continue
                if state[p] == 1:
                    path = [t[0] for t in stack]
                    chain = path[path.index(p):] + [p]
                    where = ", ".join(str(rows[k]) for k in chain[:-1])
                    raise InputError(
                        f"pedigree {name}: pedigree cycle: {' → '.join(repr(ids[k]) for k in chain)} "
                        f"(an animal is its own ancestor; each → leads to a parent; data rows {where}){hint}"
                    )
                state[p] = 1
                stack.append([p, 0])
            else:
                stack.pop()
                state[top[0]] = 2
                order.append(top[0])
                moved += top[0] != root
    return order, moved


def read_pedigree(source, id: str = "id", sire: str = "sire", dam: str = "dam",
                  positions: bool = False) -> Pedigree:
    """Read a pedigree (path or DataFrame) into a checked :class:`Pedigree` in topological
    order (see the module docstring for the rules)."""
    if isinstance(source, Pedigree):
        return source
    notes: list = []
    if isinstance(source, pd.DataFrame):
        name, frame = "table", source
        if id not in frame.columns and frame.index.name == id:
            frame = frame.reset_index()
    elif isinstance(source, (str, bytes)) or hasattr(source, "__fspath__"):
        name = os.fsdecode(source)
        frame = _read_table(Path(name))
    else:
        raise InputError("a pedigree is a path to a .csv/.tsv table, a DataFrame or a Pedigree")
    icol, scol, dcol = _columns(frame, name, (id, sire, dam), notes)
    raw = [[_text(v) for v in frame.iloc[:, c]] for c in (icol, scol, dcol)]
    m = len(raw[0])
    for r, who in enumerate(raw[0], start=1):
        if who in UNKNOWN:
            raise InputError(f"pedigree {name}, data row {r}: no id ({who!r} in the id column)")
    if positions:
        for k, what in ((1, "sire"), (2, "dam")):
            raw[k] = [raw[0][q] if q >= 0 else "" for q in
                      (_position(t, r, raw[0][r - 1], what, m, name) for r, t in enumerate(raw[k], start=1))]
    parents_of: dict = {}  # id → (row, sire, dam), first listing
    dropped = 0
    for r, (who, s, d) in enumerate(zip(*raw), start=1):
        s, d = ("" if s in UNKNOWN else s), ("" if d in UNKNOWN else d)
        if who in parents_of:
            r0, s0, d0 = parents_of[who]
            if (s0, d0) != (s, d):
                raise InputError(
                    f"pedigree {name}: id {who!r} is listed twice with different parents: data row {r0} "
                    f"({_parents_text(s0, d0)}) and data row {r} ({_parents_text(s, d)})"
                )
            dropped += 1
            continue
        parents_of[who] = (r, s, d)
    if dropped:
        notes.append(f"{dropped} repeated row(s) with the same parents dropped")
    added = list(dict.fromkeys(p for _, s, d in parents_of.values() for p in (s, d)
                               if p and p not in parents_of))
    if added:
        notes.append(f"{len(added)} parent(s) not listed as animals added as founders: {_fmt_ids(added)}")
    ids = added + list(parents_of)
    rows = [0] * len(added) + [r for r, _, _ in parents_of.values()]
    index = {who: k for k, who in enumerate(ids)}
    parents = [(-1, -1)] * len(added) + [(index[s] if s else -1, index[d] if d else -1)
                                         for _, s, d in parents_of.values()]
    numbers = not positions and all(p.isdigit() and int(p) <= m for p in raw[1] + raw[2] if p not in UNKNOWN)
    hint = "; if sire and dam are row numbers, read with positions=True (--positions)" if numbers else ""
    order, moved = _topological(parents, ids, rows, name, hint)
    if moved:
        notes.append(f"{moved} animal(s) listed after their offspring moved ahead of them")
    new = np.empty(len(ids), dtype=np.int64)
    new[order] = np.arange(len(ids))
    sires = np.array([parents[k][0] for k in order], dtype=np.int64)
    dams = np.array([parents[k][1] for k in order], dtype=np.int64)
    sires[sires >= 0] = new[sires[sires >= 0]]
    dams[dams >= 0] = new[dams[dams >= 0]]
    ids = [ids[k] for k in order]
    both = sorted(set(sires[sires >= 0]) & set(dams[dams >= 0]))
    if both:
        notes.append(f"{len(both)} id(s) used both as sire and as dam: {_fmt_ids([ids[k] for k in both])} "
                     f"(selfing, or mixed-up sire and dam columns)")
    return Pedigree(ids, sires, dams, notes, len(added))


def _tabular(ped: Pedigree) -> np.ndarray:
    """Dense A by the tabular method (Henderson 1976): row i from the rows of its parents."""
    n = len(ped)
    A = np.zeros((n, n))
    for i, (s, d) in enumerate(zip(ped.sire.tolist(), ped.dam.tolist())):
        row = A[i, :i]  # a view, filled in place
        if s >= 0 and d >= 0:
            np.add(A[s, :i], A[d, :i], out=row)
            row *= 0.5
            A[i, i] = 1.0 + 0.5 * A[s, d]
        else:
            A[i, i] = 1.0
            if s < 0 and d < 0:
                continue
            np.multiply(A[s if s >= 0 else d, :i], 0.5, out=row)
        A[:i, i] = row
    return A


def _meuwissen_luo(ped: Pedigree) -> tuple[np.ndarray, np.ndarray]:
    """(F, D): inbreeding coefficients and Mendelian sampling variances (Meuwissen & Luo 1992)."""
    sires, dams = ped.sire.tolist(), ped.dam.tolist()
    n = len(sires)
    F = [0.0] * n + [-1.0]  # F[-1] = −1 stands for an unknown parent: ¼(1 + F) = 0
    D = [0.0] * n
    families: dict = {}
    for i in range(n):
        s, d = sires[i], dams[i]
        D[i] = 0.5 - 0.25 * (F[s] + F[d])
        if s < 0 or d < 0:
            continue
        if (s, d) in families:
            F[i] = families[(s, d)]
            continue
        coef = {i: 1.0}
        heap = [-i]
        aii = 0.0
        while heap:
            j = -heapq.heappop(heap)
            lj = coef.pop(j)
            aii += lj * lj * D[j]
            for p in (sires[j], dams[j]):
                if p >= 0:
                    if p in coef:
                        coef[p] += 0.5 * lj
                    else:
                        coef[p] = 0.5 * lj
                        heapq.heappush(heap, -p)
        F[i] = families[(s, d)] = aii - 1.0
    return np.array(F[:n]), np.array(D)


def pedigree_kinship(source, id: str = "id", sire: str = "sire", dam: str = "dam",
                     positions: bool = False) -> pd.DataFrame:
    """The additive relationship matrix A (tabular method), labelled by id in pedigree order."""
    ped = read_pedigree(source, id, sire, dam, positions)
    labels = pd.Index(ped.ids, dtype=object)
    return pd.DataFrame(_tabular(ped), index=labels, columns=labels.copy())


def inbreeding(source, id: str = "id", sire: str = "sire", dam: str = "dam",
               positions: bool = False) -> pd.Series:
    """Inbreeding coefficients F = a_ii − 1 by id (Meuwissen & Luo 1992; no n×n matrix)."""
    ped = read_pedigree(source, id, sire, dam, positions)
    return pd.Series(_meuwissen_luo(ped)[0], index=pd.Index(ped.ids, dtype=object), name="F")


def pedigree_inverse(source, id: str = "id", sire: str = "sire", dam: str = "dam",
                     positions: bool = False) -> tuple[sp.csc_matrix, list]:
    """(A⁻¹, ids): the sparse inverse of A by Henderson's rules with inbreeding (Quaas 1976)."""
    ped = read_pedigree(source, id, sire, dam, positions)
    return _henderson_inverse(ped, _meuwissen_luo(ped)[1]), list(ped.ids)


def _henderson_inverse(ped: Pedigree, mendelian: np.ndarray) -> sp.csc_matrix:
    """A⁻¹ = (I − P)ᵀ D⁻¹ (I − P) from the Mendelian sampling variances D."""
    n = len(ped)
    delta = 1.0 / mendelian
    i = np.arange(n)
    rows, cols, vals = [i], [i], [delta]
    for p in (ped.sire, ped.dam):
        k = p >= 0
        rows += [i[k], p[k]]
        cols += [p[k], i[k]]
        vals += [-0.5 * delta[k]] * 2
        for q in (ped.sire, ped.dam):
            kk = k & (q >= 0)
            rows.append(p[kk])
            cols.append(q[kk])
            vals.append(0.25 * delta[kk])
    coo = sp.coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return sp.csc_matrix(coo)


class PedigreeRelationship:
    """A pedigree's A carried by its sparse inverse, as a fit's K or a random term's relationship
    (``hetvc.fit(K=read_pedigree(...))``, ``hetvc.Random("animal", K=read_pedigree(...))``).

    ``inverse`` is A⁻¹ (Henderson's rules, O(n) non-zeros), ``diagonal`` = 1 + F and
    ``logdet`` = log|A| = Σ log D_i (A = L D Lᵀ with unit triangular L); the dense A (8n² bytes)
    is formed only when an engine needs it (:meth:`dense`)."""

    def __init__(self, source, id: str = "id", sire: str = "sire", dam: str = "dam", positions: bool = False):
        self.pedigree = read_pedigree(source, id, sire, dam, positions)
        self.ids = list(self.pedigree.ids)
        F, D = _meuwissen_luo(self.pedigree)
        self.diagonal = 1.0 + F
        self.inverse = _henderson_inverse(self.pedigree, D)
        self.logdet = float(np.log(D).sum())
        self._dense = None

    def __len__(self) -> int:
        return len(self.ids)

    def fingerprint(self) -> str:
        """SHA-256 of the ids and A⁻¹ (equal for equal pedigrees)."""
        h = hashlib.sha256("\0".join(map(str, self.ids)).encode("utf-8", "surrogatepass"))
        for part in (self.inverse.data, self.inverse.indices, self.inverse.indptr):
            h.update(np.ascontiguousarray(part).tobytes())
        return h.hexdigest()

    def dense(self, what: str = "the pedigree's A") -> np.ndarray:
        """A (tabular method), formed once; refused in one line when it would not fit in memory."""
        if self._dense is None:
            from ..engines.dense import available_memory  # the engines import the model, which imports this

            n, have = len(self.ids), available_memory()
            if have is not None and 8.0 * n * n > 0.5 * have:
                raise InputError(
                    f"{what} over {n} animals is given by its sparse inverse, and the chosen engine needs it "
                    f"dense: {8.0 * n * n / 2**30:.1f} GB, about {have / 2**30:.1f} GB is available; use "
                    "engine='mme' (or 'auto'), which works with A⁻¹")
            self._dense = _tabular(self.pedigree)
        return self._dense


def pedigree_summary(ped: Pedigree, source="pedigree") -> list[str]:
    """Lines a user reads about a pedigree: animals, founders, parents added, its notes and
    inbreeding (mean, max, number inbred)."""
    founders = int(((ped.sire < 0) & (ped.dam < 0)).sum())
    F = inbreeding(ped)
    return ([f"pedigree {source}: {len(ped)} animals, {founders} founders (both parents unknown), "
             f"{ped.founders_added} parent(s) added as founders"]
            + list(ped.notes)
            + [f"inbreeding: mean F {F.mean():.4g}, max F {F.max():.4g} ({F.idxmax()!r}), "
               f"{int((F > 0).sum())} inbred (F > 0)"])


def looks_like_pedigree(table) -> bool:
    """Whether a table (DataFrame, or the header and first 200 rows of a .csv/.tsv path) is an
    id/sire/dam pedigree rather than a dosage table: three columns, and the last two named like
    parents (sire, dam, father, mother, parent) or holding mostly ids of the first column or
    unknown codes, not only dosages in [0, 2]."""
    if not isinstance(table, pd.DataFrame):
        p = Path(os.fsdecode(table))
        sep = _csv_sep(p)
        if sep is None or not p.is_file():
            return False
        try:
            table = pd.read_csv(p, sep=sep, dtype=str, keep_default_na=False, nrows=200)
        except Exception:
            return False
    if table.shape[1] != 3:
        return False
    names = [str(c).strip().lower() for c in table.columns[1:]]
    if all(any(w in c for w in _PARENT_WORDS) for c in names):
        return True
    first = {_text(v) for v in table.iloc[:, 0]}
    cells = [_text(v) for c in (1, 2) for v in table.iloc[:, c]]
    if not cells:
        return False
    known = [v for v in cells if v not in UNKNOWN]
    dosages = all(_is_dosage(v) for v in known)
    return not dosages and sum(v in first for v in known) >= 0.9 * len(known)


def _is_dosage(text: str) -> bool:
    try:
        return 0.0 <= float(text) <= 2.0
    except ValueError:
        return False
