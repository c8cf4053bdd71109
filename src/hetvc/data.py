"""Records, traits, environments and ids → a validated design (docs/design.md §1).

The design holds one row per *observed* trait value o = 1..N (missing values drop out, the
record keeps its other traits): y_o, its record, genotype (a row of K), environment and trait,
and the fixed-effect matrix X (one mean per trait × environment, plus any covariates of the
formula with a slope per trait).  Every problem a user can cause is reported here as a
one-line :class:`~hetvc.errors.InputError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .errors import InputError
from .fixed_effects import covariate_columns
from .kinship import near_match_hint
from .kinship.pedigree import PedigreeRelationship


@dataclass
class Design:
    """Observed values of a multi-trait, multi-environment data set, in long form."""

    y: np.ndarray  # (N,) observed trait values
    X: np.ndarray  # (N, p) fixed effects, full column rank
    x_names: list
    record: np.ndarray  # (N,) record (row of the data) of each value
    geno: np.ndarray  # (N,) row of K of each value
    env: np.ndarray  # (N,) environment index
    trait: np.ndarray  # (N,) trait index
    relationship: object  # (q, q) K of every genotype in K, or a PedigreeRelationship (its A⁻¹)
    ids: list  # labels of K's rows
    envs: list  # environment labels, in model order
    traits: list  # trait names, in model order
    n_records: int
    notes: list = field(default_factory=list)
    formula: str | None = None  # the fixed-effect formula of the covariates, as given

    @property
    def n_obs(self) -> int:
        return len(self.y)

    @property
    def K(self) -> np.ndarray:
        """K as a dense matrix (a pedigree's A is formed on first use, for the engines that need it)."""
        rel = self.relationship
        return rel.dense() if isinstance(rel, PedigreeRelationship) else rel

    def phenotypic_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """(per environment × trait cell, per trait): see :func:`phenotypic_variances`."""
        return phenotypic_variances(self.y, self.env, self.trait, len(self.envs), len(self.traits))


def phenotypic_variances(y: np.ndarray, env: np.ndarray, trait: np.ndarray, n_envs: int,
                         n_traits: int) -> tuple[np.ndarray, np.ndarray]:
    """The unit of every row of ΣG and ΣE, from observed values ``y`` with environment and
    trait indices: (cell, pooled) — the variance of each (environment, trait) cell (L×m; the
    pooled one where a cell has fewer than 3 values or none that differ) and each trait's
    within-environment variance, pooled over environments (m)."""
    pooled = np.empty(n_traits)
    for i in range(n_traits):
        sel = trait == i
        resid = y[sel] - _group_means(y[sel], env[sel])
        pooled[i] = max(resid.var(), 1e-12 * max(y[sel].var(), 1e-300), 1e-300)
    cell = np.tile(pooled, (n_envs, 1))
    for l in range(n_envs):
        for i in range(n_traits):
            v = y[(env == l) & (trait == i)]
            if len(v) >= 3 and v.var() > 0:
                cell[l, i] = v.var()
    return cell, pooled


def _group_means(values: np.ndarray, groups: np.ndarray) -> np.ndarray:
    sums = np.bincount(groups, weights=values)
    counts = np.bincount(groups)
    return (sums / np.maximum(counts, 1))[groups]


def _env_levels(column: pd.Series) -> list:
    if isinstance(column.dtype, pd.CategoricalDtype):
        present = set(column.dropna().unique())
        return [c for c in column.cat.categories if c in present]
    return sorted(column.dropna().unique(), key=lambda v: (str(type(v)), v))


def _check_columns(data: pd.DataFrame, traits: list, env: str | None, id: str) -> None:
    if not isinstance(data, pd.DataFrame):
        raise InputError("data must be a pandas DataFrame (read your file with pandas first)")
    if data.shape[0] == 0:
        raise InputError("the data table has no rows")
    if data.columns.duplicated().any():
        dup = data.columns[data.columns.duplicated()][0]
        raise InputError(f"column {dup!r} appears more than once in the data; rename one")
    if not traits:
        raise InputError("no traits given; name at least one trait column")
    if len(set(traits)) != len(traits):
        dup = next(t for t in traits if traits.count(t) > 1)
        raise InputError(f"trait {dup!r} is named twice; name each trait once")
    needed = [id] + list(traits) + ([env] if env is not None else [])
    missing = [c for c in needed if c not in data.columns]
    if missing:
        # a whole header in one column name: the file was read with the wrong delimiter
        glued = [str(c) for c in data.columns
                 if any(d in str(c) for d in ",;\t|")
                 and sum(str(m) in str(c) for m in missing) >= min(2, len(missing))]
        hint = ""
        if glued:
            d = next(d for d in ",;\t|" if d in glued[0])
            hint = (f"; column {glued[0][:60]!r} holds several names: was the file read with the "
                    f"wrong delimiter? (e.g. pd.read_csv(path, sep={d!r}))")
        raise InputError(
            f"column(s) {', '.join(map(repr, missing))} not in the data; "
            f"available: {', '.join(map(str, data.columns[:12]))}{hint}"
        )


def _trait_values(data: pd.DataFrame, trait: str) -> np.ndarray:
    col = data[trait]
    values = pd.to_numeric(col, errors="coerce")
    bad = values.isna() & col.notna() & (col.astype(str).str.strip() != "")
    if bad.any():
        row = bad.to_numpy().nonzero()[0][0]
        raise InputError(
            f"trait column {trait!r} is not numeric: row {row + 1} holds {col.iloc[row]!r}; "
            "fix or blank that value"
        )
    values = values.to_numpy(dtype=float)
    inf = np.isinf(values)
    if inf.any():
        row = inf.nonzero()[0][0]
        raise InputError(f"trait column {trait!r} holds an infinite value in row {row + 1}")
    return values


def _match_ids(data: pd.DataFrame, id: str, ids: list) -> np.ndarray:
    col = data[id]
    blank = col.isna() | (col.astype(str).str.strip() == "")
    if blank.any():
        row = blank.index[blank.to_numpy()][0]  # the data's own row (records without traits dropped)
        raise InputError(f"id column {id!r} is blank in row {row + 1}; every record needs an id")
    labels = col.astype(str).to_numpy()
    position = {label: j for j, label in enumerate(ids)}
    absent = [lab for lab in pd.unique(labels) if lab not in position]
    if absent:

        shown = ", ".join(map(repr, absent[:5]))
        hint = near_match_hint(absent, ids)
        raise InputError(
            f"{len(absent)} id(s) of column {id!r} are not in the kinship matrix "
            f"(first: {shown})" + (hint or "; ids are matched by exact label")
        )
    return np.array([position[lab] for lab in labels], dtype=int)


def _covariate_matrix(data: pd.DataFrame, fixed: str | None) -> tuple[np.ndarray, list]:
    """Record-level covariates from a formula such as ``"~ rep + block"`` (no intercept), as
    :func:`hetvc.fixed_effects.covariate_columns` builds them."""
    mm = covariate_columns(data, fixed)
    return mm.to_numpy(dtype=float).reshape(len(data), -1), [str(c) for c in mm.columns]


def build_design(
    data: pd.DataFrame,
    K,
    ids: list,
    traits: list,
    env: str | None,
    id: str,
    fixed: str | None = None,
) -> Design:
    """Validate the data and lay out every observed value with its genotype, environment, trait
    (``K``: the checked matrix over ``ids``, or a :class:`PedigreeRelationship`)."""
    traits = list(traits)
    _check_columns(data, traits, env, id)
    data = data.reset_index(drop=True)
    values = np.column_stack([_trait_values(data, t) for t in traits])
    observed = ~np.isnan(values)
    notes = []
    empty = ~observed.any(axis=1)
    if empty.all():
        raise InputError(f"no trait values observed in columns {', '.join(traits)}")
    if empty.any():
        notes.append(f"{int(empty.sum())} record(s) with no observed trait were ignored")
    # a record without any trait value plays no part: its id need not be in K, its
    # environment is no level, its covariates are not read
    kept = data.loc[~empty]
    geno_of_record = np.full(len(data), -1)
    geno_of_record[~empty] = _match_ids(kept, id, [str(i) for i in ids])
    env_of_record = np.zeros(len(data), dtype=int)
    if env is None:
        envs = ["all"]
    else:
        col = kept[env]
        if col.isna().any():
            row = col.index[col.isna().to_numpy()][0]
            raise InputError(f"environment column {env!r} is blank in row {row + 1}")
        envs = _env_levels(col)
        env_of_record[~empty] = pd.Categorical(col, categories=envs).codes.astype(int)
    kept_covariates, cov_names = _covariate_matrix(kept, fixed)
    covariates = np.zeros((len(data), kept_covariates.shape[1]))
    covariates[~empty] = kept_covariates

    for i, t in enumerate(traits):
        if not observed[:, i].any():
            raise InputError(f"trait {t!r} has no observed values; drop it from the traits")

    rec, tr = np.nonzero(observed)  # record-major order
    e = env_of_record[rec]
    # fixed effects: a mean per (environment, trait) cell with data, a slope per trait per covariate
    cells = sorted(set(zip(e.tolist(), tr.tolist())))
    cell_col = {c: k for k, c in enumerate(cells)}
    X_mean = np.zeros((len(rec), len(cells)))
    X_mean[np.arange(len(rec)), [cell_col[c] for c in zip(e.tolist(), tr.tolist())]] = 1.0
    x_names = [f"mu[{envs[l]}][{traits[i]}]" if env is not None else f"mu[{traits[i]}]"
               for l, i in cells]
    X_cov = np.zeros((len(rec), len(cov_names) * len(traits)))
    for i, t in enumerate(traits):
        sel = tr == i
        X_cov[sel, i * len(cov_names):(i + 1) * len(cov_names)] = covariates[rec[sel]]
        x_names += [f"{c}[{t}]" for c in cov_names]
    X = np.hstack([X_mean, X_cov])
    _check_rank(X, x_names, [None] * len(cells) + [(c, t) for t in traits for c in cov_names],
                has_env=env is not None)

    return Design(
        y=values[rec, tr],
        X=X,
        x_names=x_names,
        record=rec,
        geno=geno_of_record[rec],
        env=e,
        trait=tr,
        relationship=K,
        ids=list(ids),
        envs=list(envs),
        traits=traits,
        n_records=len(data),
        notes=notes,
        formula=fixed,
    )


_LEVEL = re.compile(r"^(?P<factor>.*)\[T\.(?P<level>.*)\]$")  # formulaic's name of a factor level


def _check_rank(X: np.ndarray, names: list, columns=None, has_env: bool = False) -> None:
    """Refuse X that is not of full column rank, naming the first column that is a combination
    of the earlier ones and why: ``columns`` gives (covariate, trait) of each covariate column
    (None for the means), so that a factor level without records of a trait, or one aliased
    with the environment means, is named as such."""
    if X.shape[1] >= X.shape[0]:
        raise InputError(
            f"{X.shape[1]} fixed effects for {X.shape[0]} observed values: too few data"
        )
    scale = np.linalg.norm(X, axis=0)
    scale[scale == 0] = 1.0
    Xs = X / scale
    s = np.linalg.svd(Xs, compute_uv=False)
    tol = s[0] * max(X.shape) * np.finfo(float).eps * 10
    rank = int((s > tol).sum())
    if rank < X.shape[1]:
        # name a column that is a combination of the earlier ones
        for k in range(1, X.shape[1] + 1):
            sk = np.linalg.svd(Xs[:, :k], compute_uv=False)
            if (sk > tol).sum() < k:
                raise InputError(_rank_message(X, names, columns, k - 1, has_env))


def _rank_message(X, names, columns, k, has_env) -> str:
    where = "within an environment" if has_env else "over the records"
    info = columns[k] if columns is not None and k < len(columns) else None
    if info is None:
        return (f"fixed effects are rank deficient: {names[k]!r} is a linear combination of earlier "
                f"columns (e.g. a covariate constant {where}); drop it from the formula")
    covariate, trait = info
    level = _LEVEL.match(str(covariate))
    means = "the environment means" if has_env else "the mean"
    if level is None:
        if not X[:, k].any():
            return (f"fixed effects are rank deficient: covariate {covariate!r} is zero on every record "
                    f"with trait {trait!r}; drop it from the formula or fit that trait separately")
        return (f"fixed effects are rank deficient: covariate {covariate!r} is aliased with {means} or "
                f"earlier covariates among the records with trait {trait!r} (e.g. constant {where}); "
                "drop it from the formula")
    factor, value = level.group("factor"), level.group("level")
    if not X[:, k].any():
        return (f"fixed effects are rank deficient: level {covariate!r} of factor {factor} has no "
                f"records with trait {trait!r} (its records miss that trait), so its effect on "
                f"{trait!r} cannot be estimated; drop the factor, merge that level ({value}) into "
                "another, or fit that trait separately")
    return (f"fixed effects are rank deficient: level {covariate!r} of factor {factor} is aliased "
            f"with {means} or the factor's other levels among the records with trait {trait!r} "
            f"(e.g. the factor is nested in environments, or its levels are confounded with those "
            f"of another factor); drop the factor or merge levels (hetvc.resolve_fixed and the "
            f"command line drop columns aliased over all records)")
