"""What a data set's design means for a fit, said before fitting it: genotypes with
predictions only, repeated plots, missing trait values and trait × environment cells that no
record measures (where environment-specific variances cannot be estimated).

    from hetvc import describe_data
    facts, notes = describe_data(data, K, ["yield", "oil"], env="env", id="genotype")
    if facts.get("empty_cells"):
        ...  # only homogeneous genetic and residual structures can be fitted
"""

from __future__ import annotations

import pandas as pd

__all__ = ["describe_data"]


def describe_data(data: pd.DataFrame, K: pd.DataFrame, traits, env=None, id="id") -> tuple[dict, list]:
    """(facts, notes) about the records that the fit handles without being asked: genotypes in
    K without records, repeated genotype × environment records, missing trait values and
    trait × environment cells without any value.  ``facts``: n_records, and (when ``data``
    has the columns named) n_phenotyped, n_kinship and empty_cells ([trait, environment]
    pairs); records without any trait value are not counted as phenotyped.  A column that is
    not in ``data`` gives no notes: :func:`hetvc.fit` names it."""
    facts, notes = {"n_records": int(len(data))}, []
    present = [t for t in traits if t in data.columns]
    if id not in data.columns or (env is not None and env not in data.columns) or len(present) < len(traits):
        return facts, notes  # hetvc.fit names the missing column
    vals = data[present].apply(pd.to_numeric, errors="coerce")
    blank = vals.isna().all(axis=1)
    data, vals = data.loc[~blank], vals.loc[~blank]  # records without any trait play no part (the fit notes them)
    ids = data[id].astype(str)
    facts["n_phenotyped"] = int(ids.nunique())
    labels = K.ids if hasattr(K, "ids") else K.index  # a pedigree's relationship, or a labelled K
    untested = len(set(map(str, labels)) - set(ids))
    facts["n_kinship"] = len(labels)
    if untested:
        notes.append(f"{untested} genotype(s) in K have no records: they get predictions (BLUPs) only")
    if env is not None:
        reps = data.groupby([ids, data[env].astype(str)]).size()
        n_rep = int((reps > 1).sum())
        if n_rep:
            notes.append(
                f"{n_rep} genotype × environment pair(s) have more than one record (repeated plots): "
                f"each record is kept; they share the genotype's genetic value and have independent residuals")
    miss = vals.isna()
    if miss.to_numpy().any():
        per = ", ".join(f"{t}: {int(miss[t].sum())}" for t in present if miss[t].any())
        notes.append(f"missing trait values ({per}): each record keeps its observed traits")
        if env is not None:
            whole = miss.groupby(data[env].astype(str)).all()
            empty = [(t, e) for t in present for e in whole.index[whole[t]]]
            if empty:
                facts["empty_cells"] = [list(c) for c in empty]
                shown = ", ".join(f"{t!r} in {e!r}" for t, e in empty[:4])
                notes.append(
                    f"{len(empty)} trait × environment cell(s) without any value ({shown}"
                    f"{', ...' if len(empty) > 4 else ''}): the genetic and residual variances of a trait "
                    f"in an environment where it was not measured cannot be estimated, so only "
                    f"homogeneous genetic and residual structures can be fitted")
    return facts, notes
