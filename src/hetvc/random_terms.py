"""Random terms beyond the genetic one: blocks, years, mothers, parents (docs/design.md §1.2).

A term is a factor of the records — a column, or an interaction ``"a:b"`` whose levels are the
pairs of values — with a relationship matrix over its levels (the identity by default) and a
covariance structure across traits (and environments) taken from the genetic structures::

    random=["BYEAR", "MOTHER"]                               # iid, one m×m Σ each
    random=["env:block"]                                     # blocks nested in environments
    random=[hetvc.Random("male", K=K_male), "female:male"]   # GCA with a kinship, SCA iid
    random=[hetvc.Random("env:block", structure="heterogeneous")]   # Σ_block per environment

Its contribution to V is 𝒦_t[u(o), u(o')] · Σ_t[c(o), c(o')] with u(o) the level of value o's
record and c(o) its row of Σ_t (trait i, or l·m + i for a structure per environment).

:func:`resolve_random` turns the specifications into :class:`~hetvc.model.Factor` s over a
:class:`~hetvc.data.Design`, refusing (one line, naming the term) a missing column, a missing
level value, a single level, a term the fixed effects absorb, levels missing from the term's
relationship matrix, and fewer levels than the term's parameters need.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .data import Design
from .errors import InputError
from .kinship import kinship_matrix
from .kinship.pedigree import Pedigree, PedigreeRelationship
from .model import Factor
from .structures import RESERVED_PREFIXES, structure_class


@dataclass(frozen=True)
class Random:
    """A random term: ``factor`` (a column or ``"a:b"``), ``K`` a relationship matrix over its
    levels (a labelled DataFrame or a path; a :class:`~hetvc.kinship.pedigree.Pedigree` from
    :func:`hetvc.read_pedigree`, carried by its sparse inverse A⁻¹; ``None``: independent levels) and its
    ``structure`` (``"homogeneous"``: one Σ across traits for every environment;
    ``"heterogeneous"``: Σ_l per environment; ``"diagonal"``: a variance per trait (and
    environment); ``"unstructured"``: full across environments)."""

    factor: str
    K: object = None
    structure: str = "homogeneous"

    @property
    def name(self) -> str:
        return self.factor

    @property
    def columns(self) -> list[str]:
        return [c.strip() for c in self.factor.split(":")]


def as_random(spec) -> Random:
    """A :class:`Random` from ``"column"``, ``"a:b"`` or a :class:`Random`."""
    if isinstance(spec, Random):
        return spec
    if isinstance(spec, str) and spec.strip():
        return Random(":".join(c.strip() for c in spec.split(":")))
    raise InputError(f"a random term is a column name, 'a:b' or hetvc.Random(...), not {spec!r}")


def as_random_list(random) -> list[Random]:
    """The random terms of ``random=`` (None, a name, or a list), each named once."""
    if random is None:
        return []
    specs = [as_random(r) for r in ([random] if isinstance(random, (str, Random)) else random)]
    names = [s.name for s in specs]
    for s in specs:
        if names.count(s.name) > 1:
            raise InputError(f"random term {s.name!r} is given twice; give each term once")
        if s.name in RESERVED_PREFIXES:
            raise InputError(f"random term {s.name!r}: 'G' and 'E' name the genetic and residual "
                             "matrices; rename the column")
        structure_class("R", s.structure)
    return specs


def _levels(data: pd.DataFrame, spec: Random, rows: np.ndarray) -> np.ndarray:
    """The level label of each record in ``rows`` (str; 'a:b' for an interaction)."""
    missing = [c for c in spec.columns if c not in data.columns]
    if missing:
        raise InputError(f"random term {spec.name!r}: column {missing[0]!r} is not in the data; "
                         f"available: {', '.join(map(str, data.columns[:12]))}")
    parts = []
    for c in spec.columns:
        col = data[c].iloc[rows]
        blank = col.isna() | (col.astype(str).str.strip() == "")
        if blank.any():
            row = int(rows[int(np.argmax(blank.to_numpy()))])
            raise InputError(f"random term {spec.name!r}: column {c!r} is blank in row {row + 1}, a "
                             "record with trait values; fill it in or drop the record")
        parts.append(col.astype(str).str.strip().to_numpy())
    out = parts[0]
    for p in parts[1:]:
        out = np.char.add(np.char.add(out.astype(str), ":"), p.astype(str))
    return out.astype(str)


def _factor(spec: Random, labels: np.ndarray, jitter) -> Factor:
    """Levels, observed units and relationship of one term."""
    observed_labels, unit = np.unique(labels, return_inverse=True)
    if spec.K is None:
        return Factor(spec.name, unit, [str(v) for v in observed_labels], np.arange(len(observed_labels)), None)
    if isinstance(spec.K, (Pedigree, PedigreeRelationship)):  # carried by its sparse A⁻¹
        Kmat = spec.K if isinstance(spec.K, PedigreeRelationship) else PedigreeRelationship(spec.K)
        ids = Kmat.ids
    else:
        Kmat, ids = kinship_matrix(spec.K, jitter)
    ids = [str(i) for i in ids]
    position = {label: j for j, label in enumerate(ids)}
    absent = [str(lab) for lab in observed_labels if lab not in position]
    if absent:
        shown = ", ".join(map(repr, absent[:5]))
        raise InputError(f"random term {spec.name!r}: {len(absent)} level(s) are not in its relationship "
                         f"matrix (first: {shown}); give a matrix over every level")
    observed = np.array([position[lab] for lab in observed_labels], dtype=int)
    return Factor(spec.name, unit, ids, observed, Kmat)


def _check_single_level(spec: Random, factor: Factor) -> None:
    if factor.n_units < 2:
        raise InputError(f"random term {spec.name!r} has a single level "
                         f"({factor.levels[factor.observed[0]]!r}) among the records: its variance "
                         "cannot be told from the mean; drop the term")


def _check_levels(spec: Random, factor: Factor, design: Design) -> None:
    """Fewer levels (per environment, for a structure per environment) than the term's
    parameters that live there plus one."""
    n_units = factor.n_units
    cls = structure_class("R", spec.structure)
    m = len(design.traits)
    need = 1 + (m if cls.trait_covariances else 1)
    if not cls.per_environment:
        if n_units < need:
            raise InputError(f"random term {spec.name!r} has {n_units} levels, too few for its {m} traits "
                             f"with structure {spec.structure!r} (needs at least {need}); drop the term "
                             "or use hetvc.Random(..., structure='diagonal')")
        return
    for l, env in enumerate(design.envs):
        n_l = len(np.unique(factor.unit[design.env == l]))
        if n_l < need:
            raise InputError(f"random term {spec.name!r} has {n_l} level(s) in environment {env!r}, too few "
                             f"for its structure {spec.structure!r} there (needs at least {need}); use "
                             "structure='homogeneous' or drop the term")


def _check_confounding(spec: Random, factor: Factor, design: Design) -> None:
    """A term whose every level indicator lies in the span of X is absorbed by the fixed
    effects (e.g. ``env`` while environment means are fixed)."""
    # ‖(I − QQ')z_u‖² = n_u − ‖Q'z_u‖² for the indicator z_u of level u, Q an orthonormal
    # basis of X: O(N·p), without forming the N × levels indicator matrix
    Q, _ = np.linalg.qr(design.X)
    counts = np.bincount(factor.unit, minlength=factor.n_units).astype(float)
    projected = np.zeros((factor.n_units, Q.shape[1]))
    np.add.at(projected, factor.unit, Q)
    left = counts - np.einsum("up,up->u", projected, projected)
    if np.all(left <= 1e-8 * counts):
        raise InputError(f"random term {spec.name!r} is confounded with the fixed effects (every level "
                         "lies within one environment mean or covariate pattern, so the means absorb "
                         "it); drop the term or the fixed effect")


def _spans_environments(spec: Random, factor: Factor, design: Design) -> list[str]:
    """A note when a term with a structure shared by environments has levels in several
    environments (a crossed effect: e.g. block '1' of every environment is one level)."""
    if len(design.envs) < 2 or structure_class("R", spec.structure).per_environment:
        return []
    pairs = np.unique(np.column_stack([factor.unit, design.env]), axis=0)
    counts = np.bincount(pairs[:, 0], minlength=len(factor.observed))
    if not (counts > 1).any():
        return []
    k = int(np.argmax(counts > 1))
    return [f"random term {spec.name!r} is crossed with environments (level "
            f"{factor.levels[factor.observed[k]]!r} occurs in {int(counts[k])}): a level is one effect in "
            f"all of them; for levels nested in environments write '<env column>:{spec.name}'"]


def resolve_random(data: pd.DataFrame, design: Design, random, jitter=None) -> tuple[list, list[str]]:
    """([(Factor, structure name)], notes) for the random terms of ``random=`` over the design's
    observed values (``data`` as given to :func:`~hetvc.data.build_design`)."""
    specs = as_random_list(random)
    data = data.reset_index(drop=True)
    records, value_record = np.unique(design.record, return_inverse=True)  # each value's record
    out, notes = [], []
    for spec in specs:
        labels = _levels(data, spec, records)[value_record]
        factor = _factor(spec, labels, jitter)
        _check_single_level(spec, factor)
        _check_confounding(spec, factor, design)
        _check_levels(spec, factor, design)
        notes += _spans_environments(spec, factor, design)
        out.append((factor, spec.structure))
    return out, notes
