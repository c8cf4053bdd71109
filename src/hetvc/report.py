"""Everything a fit (or a comparison of fits) writes: tables, JSON, figures and report.md.

:func:`write_report` is what ``hetvc fit --out DIR`` and ``hetvc example`` call.  For fits of
one data set under several structures (``fits``: model name → :class:`~hetvc.results.FitResult`,
names such as ``"heterogeneous/homogeneous"`` = genetic/residual) it writes into DIR:

==============================  ==========================================================
``fit.json``                    the selected model, complete (``hetvc.load`` reads it back);
                                see below when no model converged
``fits/<genetic>-<residual>.json``  every model, when there are several
``comparison.csv``              k, ℓ, AIC, BIC, ΔAIC, ΔBIC, LRT (nested pairs only)
``variance_components.csv``     every model: name, environments, traits, estimate, SE
``heritability.csv``            every model: h² per environment × trait and pooled (env
                                ``pooled``), with delta-method SEs
``genetic_correlations.csv``    every model: between traits per environment and (for
                                ``unstructured``) between environments, with SEs
``blups.csv``                   selected model: every genotype in K × environment × trait,
                                BLUP, prediction error variance, records behind it
``blues.csv``                   selected model: fixed effects with SEs
``fitted.csv``                  selected model: observed, fitted and residual values
``report.md``                   the readable report (tables and figures)
``*.png``                       figures (:mod:`hetvc.plots`)
``summary.json``                the machine-readable summary (:func:`summary`, also what
                                ``--json`` prints)
==============================  ==========================================================

The *selected* model is the one with the lowest AICc among the fits that converged (AICc =
AIC + 2k(k+1)/(n−k−1), n = N − p: an information criterion because ``homogeneous`` and
``heterogeneous`` genetic structures are not nested, and AICc rather than AIC because a
multi-environment model can have nearly as many covariance parameters as there are phenotyped
genotypes, where AIC's penalty is too small; for large n AICc is AIC).  A fit that did not
converge is never selected: its estimates are where the optimiser stopped, not REML
estimates; nor is a fit whose AICc is undefined (n − k − 1 ≤ 0) when there are several.  The
report says which models were excluded and why, and where AIC or BIC prefers another model.
When nothing is selected: ``summary.json`` has ``"selected": null``; with several models
``fit.json``, ``blups.csv``, ``blues.csv``, ``fitted.csv`` and the selected model's figures are
not written (every model is in ``fits/``, and the tables of every model are), with a single
model ``fit.json`` and its tables are still written, marked as not converged.  ``summary.json``
says ``"complete": false`` and lists ``"not_fitted"`` models when a run was interrupted
(``"converged"`` is then false too).  Every file is written atomically
(:mod:`hetvc.io_utils`).
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import compare
from .io_utils import atomic_write

__all__ = [
    "SUMMARY_FORMAT", "model_name", "comparison", "select", "excluded", "preferences",
    "format_p", "format_se", "fit_text", "shared_notes", "seconds_text", "tables", "summary",
    "markdown", "write_report",
]

SUMMARY_FORMAT = "hetvc-summary/1"

# Keys of the --json summary; tests hold them fixed (add keys, never rename or remove them).
SUMMARY_KEYS = ("format", "version", "data", "models", "comparison", "selected", "converged",
                "out", "files", "excluded", "complete", "not_fitted")
MODEL_KEYS = ("model", "genetic", "residual", "converged", "status", "iterations", "seconds",
              "engine", "engine_reason", "loglik", "n_params", "aic", "bic", "boundary", "notes",
              "variance_components", "heritability", "pooled_heritability", "genetic_correlations",
              "message", "aicc", "seconds_in_all")
P_FLOOR = 1e-16  # p-values below this print as "p < 1e-16" (double precision cannot say more)


def model_name(fit) -> str:
    """``"<genetic>/<residual>"``, the name a model has in tables."""
    return f"{fit.genetic}/{fit.residual}"


def _slug(name: str) -> str:
    return name.replace("/", "-")


def _named(fits) -> dict:
    if isinstance(fits, dict):
        return dict(fits)
    if not isinstance(fits, (list, tuple)):
        fits = [fits]
    return {model_name(f): f for f in fits}


# -- tables ---------------------------------------------------------------------------------------
def _aicc(f) -> float | None:
    """The fit's AICc when FitResult has it (``fit.aicc``), else None."""
    v = getattr(f, "aicc", None)
    try:
        return None if v is None else float(v)
    except (TypeError, ValueError):
        return None


def comparison(fits) -> pd.DataFrame:
    """The model comparison (paper Table 2): one row per model with k (number of VCs), ℓ, AIC,
    BIC (AICc when the fits have it), ΔAIC, ΔBIC and an LRT against the largest nested smaller
    model."""
    fits = _named(fits)
    if len(fits) >= 2:
        return compare(*fits.values(), names=list(fits))
    (name, f), = fits.items()
    row = dict(model=name, genetic=f.genetic, residual=f.residual, k=f.n_params,
               logLik=f.loglik, AIC=f.aic, BIC=f.bic, converged=f.converged,
               lrt_vs=None, lrt_stat=np.nan, lrt_df=np.nan, lrt_p=np.nan, dAIC=0.0, dBIC=0.0)
    aicc = _aicc(f)
    if aicc is not None:
        row.update(AICc=aicc, dAICc=0.0)
    return pd.DataFrame([row])


def _status(f) -> str:
    """'converged', or the status of a fit that did not converge with its message."""
    rec = f.record
    status = rec.get("status") or ("converged" if f.converged else "not converged")
    message = rec.get("message") or ""
    return f"{status}: {message}" if message and not f.converged else str(status)


def _aicc_undefined(f) -> str:
    """'' or why a converged fit's AICc is undefined (n − k − 1 ≤ 0, n = N − p)."""
    aicc = _aicc(f)
    if aicc is None or math.isfinite(aicc):
        return ""
    return (f"AICc undefined: {f.n_params} covariance parameters and n = N − p = "
            f"{f.n_obs - f.rank_x} leave n − k − 1 ≤ 0")


def _criterion(f) -> float:
    """The selection criterion of a fit: its AICc (AIC for a fit without one)."""
    aicc = _aicc(f)
    return f.aic if aicc is None else aicc


def select(fits) -> str | None:
    """Name of the model with the lowest AICc among the fits that converged; ``None`` when
    none is selectable.  A fit that did not converge is never selected, nor (among several
    models) one whose AICc is undefined (n − k − 1 ≤ 0); a single converged model is selected
    whatever its AICc (there is nothing to choose between)."""
    fits = _named(fits)
    if len(fits) == 1:
        (name, f), = fits.items()
        return name if f.converged else None
    pool = {n: f for n, f in fits.items() if f.converged and np.isfinite(_criterion(f))}
    if not pool:
        return None
    return min(pool, key=lambda n: _criterion(pool[n]))


def excluded(fits) -> dict[str, str]:
    """The models left out of the selection, each with why: its status and message when it
    did not converge, or that its AICc is undefined (among several models)."""
    fits = _named(fits)
    out = {n: _status(f) for n, f in fits.items() if not f.converged}
    if len(fits) > 1:
        out.update({n: why for n, f in fits.items() if f.converged and (why := _aicc_undefined(f))})
    return out


def preferences(fits, comp: pd.DataFrame | None = None) -> dict[str, str]:
    """The converged model that each criterion prefers: ``{"AICc": ..., "AIC": ..., "BIC": ...}``
    (AICc only when the comparison has that column); empty when no fit converged."""
    fits = _named(fits)
    comp = comparison(fits) if comp is None else comp
    ok = comp[comp["model"].isin([n for n, f in fits.items() if f.converged])]
    out = {}
    for crit in ("AICc", "AIC", "BIC"):
        if crit in ok.columns and len(ok):
            vals = pd.to_numeric(ok[crit], errors="coerce")
            if vals.notna().any():
                out[crit] = str(ok.loc[vals.idxmin(), "model"])
    return out


def selection_lines(fits, comp: pd.DataFrame | None = None, strong=str) -> list[str]:
    """Sentences on the selection: what was selected and by which rule, where AIC or BIC
    disagree with AICc, which models were excluded and why (``strong`` marks model names)."""
    fits = _named(fits)
    selected = select(fits)
    lines = []
    if selected is None and any(f.converged for f in fits.values()):
        lines.append("No model is selected: AICc is undefined for every fit that converged.")
    elif selected is None:
        lines.append(f"No model converged, so none is selected: the estimates of "
                     f"{'every model' if len(fits) > 1 else 'the model'} are where the optimiser "
                     f"stopped, not REML estimates.")
    else:
        lines.append(f"Selected (lowest AICc among converged fits): {strong(selected)}.")
        others = [f"{c} prefers {strong(n)}" for c, n in preferences(fits, comp).items()
                  if c != "AICc" and n != selected]
        if others:
            lines.append(f"AICc selects {strong(selected)}; " + "; ".join(others) + ".")
    excl = excluded(fits)
    if excl:
        lines.append("Excluded from the selection: "
                     + "; ".join(f"{strong(n)} ({why})" for n, why in excl.items()) + ".")
    return lines


def _primary(fits: dict, selected: str | None) -> str | None:
    """The model whose fit.json, BLUPs, BLUEs and fitted values are written: the selected one,
    or a single model whatever its status (nothing to choose between)."""
    if selected is not None:
        return selected
    return next(iter(fits)) if len(fits) == 1 else None


def _observations(fit) -> pd.DataFrame:
    return pd.DataFrame({"id": np.asarray(fit.observed["id"]).astype(str),
                         "env": np.asarray(fit.observed["env"]).astype(str),
                         "trait": np.asarray(fit.observed["trait"]).astype(str)})


def blups_table(fit, model: str | None = None) -> pd.DataFrame:
    """BLUPs of every genotype in K × environment × trait, with PEV and the number of
    observed values of that genotype, environment and trait (0: a prediction)."""
    out = fit.blups()
    out["id"] = out["id"].astype(str)
    out["env"] = out["env"].astype(str)
    counts = _observations(fit).value_counts().rename("n_obs").reset_index()
    out = out.merge(counts, on=["id", "env", "trait"], how="left")
    out["n_obs"] = out["n_obs"].fillna(0).astype(int)
    out.insert(0, "model", model or model_name(fit))
    return out


def tables(fits, selected: str | None = None) -> dict[str, pd.DataFrame]:
    """Every CSV table, keyed by file stem (see the module docstring).  ``blups``, ``blues``
    and ``fitted`` are left out when several models were fitted and none converged."""
    fits = _named(fits)
    selected = select(fits) if selected is None else selected
    primary = _primary(fits, selected)

    def stack(fn):
        parts = [fn(f).assign(model=n) for n, f in fits.items()]
        df = pd.concat(parts, ignore_index=True)
        return df[["model"] + [c for c in df.columns if c != "model"]]

    def h2(f):
        per_env = f.heritability()
        pooled = f.pooled_heritability().assign(env="pooled")
        return pd.concat([per_env, pooled[["env"] + [c for c in pooled.columns if c != "env"]]],
                         ignore_index=True)

    out = {
        "comparison": comparison(fits),
        "variance_components": stack(lambda f: f.variance_components()),
        "heritability": stack(h2),
        "genetic_correlations": stack(lambda f: f.genetic_correlations()),
    }
    if primary is not None:
        best = fits[primary]
        out.update(
            blups=blups_table(best, primary),
            blues=best.blues().assign(model=primary)[["model", "effect", "estimate", "se"]],
            fitted=best.fitted().assign(model=primary),
        )
    return out


# -- machine-readable summary -------------------------------------------------------------------
def _clean(obj):
    """JSON-safe: NaN/inf → None, numpy scalars → Python, frames → lists of records."""
    if isinstance(obj, pd.DataFrame):
        return [_clean(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _model_summary(name: str, f) -> dict:
    rec = f.record
    vc = f.variance_components()
    vc = vc[[c for c in ("name", "component", "env1", "env2", "trait1", "trait2", "estimate", "se",
                         "se_note") if c in vc.columns]]
    return {
        "model": name, "genetic": f.genetic, "residual": f.residual,
        "converged": f.converged, "status": rec.get("status"), "iterations": rec.get("iterations"),
        "seconds": rec.get("seconds"), "engine": f.engine, "engine_reason": f.engine_reason,
        "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
        "boundary": list(f.boundary), "notes": list(f.notes),
        "variance_components": vc, "heritability": f.heritability(),
        "pooled_heritability": f.pooled_heritability(),
        "genetic_correlations": f.genetic_correlations(),
        "message": rec.get("message") or "", "aicc": _aicc(f),
        "seconds_in_all": rec.get("seconds_in_all"),
    }


def summary(fits, selected: str | None = None, data: dict | None = None, out=None, files=()) -> dict:
    """The machine-readable summary (``--json``; keys :data:`SUMMARY_KEYS`, each model
    :data:`MODEL_KEYS`).  ``selected`` is ``null`` when no model is selectable; ``excluded``
    maps each model left out of the selection to why.  ``complete`` is false and
    ``not_fitted`` names the models when the run stopped before fitting them (``data`` has
    ``not_fitted``); ``converged`` is then false too.  NaN becomes ``null``."""
    fits = _named(fits)
    not_fitted = list((data or {}).get("not_fitted") or [])
    selected = select(fits) if selected is None else selected
    try:
        from importlib.metadata import version

        ver = version("hetvc")
    except Exception:  # pragma: no cover - not installed
        ver = None
    out_dict = {
        "format": SUMMARY_FORMAT,
        "version": ver,
        "data": data or {},
        "models": [_model_summary(n, f) for n, f in fits.items()],
        "comparison": comparison(fits),
        "selected": selected,
        "converged": all(f.converged for f in fits.values()) and not not_fitted,
        "out": None if out is None else str(out),
        "files": [str(p) for p in files],
        "excluded": excluded(fits),
        "complete": not not_fitted,
        "not_fitted": not_fitted,
    }
    return _clean(out_dict)


# -- formatting ------------------------------------------------------------------------------------
def _finite(v) -> bool:
    try:
        return v is not None and not isinstance(v, (bool, np.bool_)) and math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _note(v) -> str:
    return v.strip() if isinstance(v, str) else ""


def format_p(v, digits: int = 3, missing: str = "–") -> str:
    """A p-value: below 1e-16 (where double precision ends, and where χ² tails round to 0)
    as ``< 1e-16``, never ``0``; ``missing`` when there is none."""
    if not _finite(v):
        return missing
    v = float(v)
    return "< 1e-16" if v < P_FLOOR else f"{v:.{digits}g}"


def format_se(v, note=None, digits: int = 4) -> str:
    """A standard error; ``NA`` (with the reason, when the table gives one) when it is not
    available."""
    if not _finite(v):
        note = _note(note)
        return f"NA ({note})" if note else "NA"
    return _num(float(v), digits)


def _se_cells(df: pd.DataFrame, se: str = "se", digits: int = 4) -> list[str]:
    notes = df["se_note"] if "se_note" in df.columns else [None] * len(df)
    return [format_se(v, n, digits) for v, n in zip(df[se], notes)]


def _text_table(df: pd.DataFrame, se: str = "se") -> str:
    """A table for the terminal: numbers to 4 significant digits, SEs that are not available
    as NA with the reason."""
    df = df.copy()
    for c in df.columns:
        if c == se:
            continue
        if pd.api.types.is_float_dtype(df[c]):
            df[c] = [f"{v:.4g}" if _finite(v) else "NA" for v in df[c]]
    if se in df.columns:
        df[se] = _se_cells(df, se)
    return df.drop(columns=[c for c in ("se_note",) if c in df.columns]).to_string(index=False)


def shared_notes(fits) -> list[str]:
    """The notes that every one of several fits carries: notes about the data (duplicated
    environments or traits, a single genotype in a cell: :mod:`hetvc.diagnostics`), said once
    with the data's notes and left out of each model's."""
    notes = [list(f.notes) for f in _named(fits).values()]
    if len(notes) < 2:
        return []
    return [n for n in dict.fromkeys(notes[0]) if all(n in other for other in notes[1:])]


def seconds_text(record) -> str:
    """'16.7 s in all; optimisation 15.0 s': the whole fit (when the record has
    ``seconds_in_all``, which the command line adds) and its optimisation."""
    def sec(v):
        return f"{v:.1f} s" if v >= 1 else f"{v:.2f} s"

    total = record.get("seconds_in_all")
    opt = f"optimisation {sec(float(record.get('seconds') or 0.0))}"
    return opt if total is None else f"{sec(float(total))} in all; {opt}"


def _status_text(fit) -> str:
    """:meth:`FitResult.status_line` with its time labelled (:func:`seconds_text`)."""
    return re.sub(r", \d+(?:\.\d+)? s\)", lambda m: f"; {seconds_text(fit.record)})",
                  fit.status_line(), count=1)


def _clipped(title: str, df: pd.DataFrame, csv: str, max_rows: int | None, out) -> list[str]:
    """A titled terminal table of at most ``max_rows`` rows, then where the rest are."""
    lines = ["", title]
    if max_rows is None or len(df) <= max_rows:
        return lines + [_text_table(df)]
    where = (f"see {Path(out) / csv}" if out is not None
             else f"run with --out DIR to get them all in DIR/{csv}")
    more = len(df) - max_rows
    return lines + [_text_table(df.iloc[:max_rows]), f"... {more} more row{'s' * (more > 1)}: {where}"]


def fit_text(fit, *, skip_notes=(), max_rows: int | None = None, out=None) -> str:
    """The terminal summary of a fit: :meth:`FitResult.summary`'s head (model, engine, status
    with its time labelled, ℓ, AIC/BIC, boundary, notes but ``skip_notes``: said already),
    then its tables with SEs that are not available printed as ``NA`` and why; each table cut
    after ``max_rows`` rows with a line saying where the rest are (its CSV in ``out``, or that
    ``--out`` writes it)."""
    skip = {f"  note: {n}" for n in skip_notes}
    head = [ln for ln in fit.summary().split("\n\n", 1)[0].splitlines() if ln not in skip]
    head = [f"  status: {_status_text(fit)}" if ln.startswith("  status: ") else ln for ln in head]
    vc = fit.variance_components()
    vc = vc[[c for c in ("name", "estimate", "se", "se_note") if c in vc.columns]]
    lines = ["\n".join(head)]
    lines += _clipped("Variance components", vc, "variance_components.csv", max_rows, out)
    lines += _clipped("Heritability per environment", fit.heritability(), "heritability.csv", max_rows, out)
    lines += _clipped("Pooled heritability", fit.pooled_heritability(), "heritability.csv", max_rows, out)
    rg = fit.genetic_correlations()
    if len(rg):
        lines += _clipped("Genetic correlations", rg, "genetic_correlations.csv", max_rows, out)
    return "\n".join(lines)


# -- report.md -------------------------------------------------------------------------------------
def _num(v, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "**no**"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    if isinstance(v, (float, np.floating)):
        if not math.isfinite(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.{digits - 1}e}"
        return f"{v:.{digits}g}"
    return str(v)


def _md_table(df: pd.DataFrame, formats: dict | None = None) -> str:
    formats = formats or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in cols) + "|"]
    for _, row in df.iterrows():
        cells = [formats[c](row[c]) if c in formats else _num(row[c]) for c in cols]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines)


def _est_se(v, se, digits=2) -> str:
    if not _finite(v):
        return "–"
    s = f"{v:.{digits}f}"
    return s + (f" ({se:.{digits}f})" if _finite(se) else " (NA)")


def _se_footnote(*frames) -> list[str]:
    """'SE NA: why' lines for the reasons given in the tables' se_note column."""
    notes = []
    for df in frames:
        if "se_note" in df.columns:
            se = df["se"] if "se" in df.columns else pd.Series(np.nan, index=df.index)
            notes += [_note(n) for n, s in zip(df["se_note"], se) if _note(n) and not _finite(s)]
    notes = list(dict.fromkeys(notes))
    return ["", "SE NA: " + "; ".join(notes) + "."] if notes else []


def _boundary(f) -> str:
    """Boundary blocks as a reader needs them (each structure describes its own blocks)."""
    names = [(f.genetic_structure if b.startswith("G") else f.residual_structure).describe_block(b)
             for b in f.boundary]
    return ", ".join(dict.fromkeys(names))


def _h2_wide(f) -> pd.DataFrame:
    h = f.heritability()
    p = f.pooled_heritability()
    rows = []
    for e in f.envs:
        row = {"environment": str(e)}
        for t in f.traits:
            r = h[(h["env"] == e) & (h["trait"] == t)].iloc[0]
            row[t] = _est_se(r["h2"], r["se"])
        rows.append(row)
    row = {"environment": "**pooled**"}
    for t in f.traits:
        r = p[p["trait"] == t].iloc[0]
        row[t] = _est_se(r["h2"], r["se"])
    rows.append(row)
    return pd.DataFrame(rows)


def _marked(name: str, f) -> str:
    """A model's name marked "(not converged)" or "(boundary: G)" (its singular blocks)."""
    if not f.converged:
        return f"{name} (not converged)"
    return f"{name} (boundary: {', '.join(f.boundary)})" if f.boundary else name


def _h2_across_models(fits) -> pd.DataFrame:
    first = next(iter(fits.values()))
    rows = []
    for n, f in fits.items():
        h = f.heritability().set_index(["env", "trait"])
        p = f.pooled_heritability().set_index("trait")
        row = {"model": _marked(n, f)}
        for t in first.traits:
            for e in first.envs:
                row[f"{t} {e}"] = f"{h.loc[(e, t), 'h2']:.2f}"
            row[f"{t} pooled"] = f"{p.loc[t, 'h2']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _trait_rg(f) -> pd.DataFrame:
    rg = f.genetic_correlations()
    rg = rg[rg["between"] == "traits"]
    if not f.genetic_structure.env_specific:  # one Σg shared by all environments
        rg = rg.drop_duplicates(["trait1", "trait2"]).assign(env1="all")
    return pd.DataFrame({"environment": rg["env1"].astype(str), "traits": rg["trait1"] + " – " + rg["trait2"],
                         "r_g (SE)": [_est_se(r, s) for r, s in zip(rg["r"], rg["se"])]})


def _env_rg_matrix(f, trait) -> pd.DataFrame:
    rg = f.genetic_correlations()
    rg = rg[(rg["between"] == "environments") & (rg["trait1"] == trait)]
    envs = [str(e) for e in f.envs]
    M = pd.DataFrame("", index=envs, columns=envs)
    for e in envs:
        M.loc[e, e] = "1"
    for _, r in rg.iterrows():
        M.loc[str(r["env2"]), str(r["env1"])] = f"{r['r']:.2f}"
    return M.reset_index(names="")


def _comparison_md(comp: pd.DataFrame, fits: dict) -> str:
    two = lambda v: f"{v:.2f}" if _finite(v) else "–"
    cols = {
        "model (ΣG / ΣE)": comp["model"],
        "VCs": comp["k"],
        "logLik": comp["logLik"].map(two),
        "AIC": comp["AIC"].map(two),
    }
    if "AICc" in comp.columns:
        cols["AICc"] = comp["AICc"].map(two)
    cols["BIC"] = comp["BIC"].map(two)
    cols["ΔAIC"] = comp["dAIC"].map(two)
    if "dAICc" in comp.columns:
        cols["ΔAICc"] = comp["dAICc"].map(two)
    cols["ΔBIC"] = comp["dBIC"].map(two)
    cols["LRT vs"] = comp["lrt_vs"].map(lambda v: v if isinstance(v, str) else "–")
    cols["χ² (df)"] = [("–" if not _finite(s) else f"{s:.2f} ({int(d)})")
                       for s, d in zip(comp["lrt_stat"], comp["lrt_df"])]
    cols["p"] = comp["lrt_p"].map(lambda v: format_p(v, 2))
    cols["converged"] = [("yes" if fits[n].converged else f"**no** ({fits[n].record.get('status')})")
                         for n in comp["model"]]
    return _md_table(pd.DataFrame(cols), {c: str for c in cols if c != "VCs"})


def markdown(fits, selected: str | None = None, data: dict | None = None, figures=()) -> str:
    """report.md: data, the comparison in the layout of the paper's Table 2 and the selection
    (models that did not converge are excluded, and said so), the selected model's
    heritabilities, genetic correlations and variance components, h² across models,
    convergence, figures and files."""
    fits = _named(fits)
    selected = select(fits) if selected is None else selected
    primary = _primary(fits, selected)
    best = fits[primary] if primary is not None else next(iter(fits.values()))
    data = data or {}
    lines = ["# hetvc report", ""]
    if data.get("command"):
        lines += ["```", data["command"], "```", ""]
    if data.get("not_fitted"):
        lines += [f"**Incomplete: {data.get('stopped') or 'interrupted'} before "
                  f"{len(data['not_fitted'])} model(s) were fitted ({', '.join(data['not_fitted'])}).** "
                  "This report covers the models that finished; run the same command again to fit "
                  "the rest (finished fits are reused).", ""]
    lines += ["## Data", ""]
    facts = [
        ("phenotypes", data.get("pheno")),
        ("kinship", data.get("kinship") or (f"GRM from {data['genotypes']}" if data.get("genotypes") else None)),
        ("traits", ", ".join(best.traits)),
        ("environments", f"{len(best.envs)}: " + ", ".join(map(str, best.envs))),
        ("records", data.get("n_records")),
        ("observed values (N)", best.n_obs),
        ("genotypes in K", len(best.ids)),
        ("phenotyped genotypes", data.get("n_phenotyped")),
        ("fixed effects", "a mean per trait × environment" + (f" + {best.fixed}" if best.fixed else "")
         + f" ({best.rank_x} columns)"),
        ("method", best.method.upper()),
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    shared = shared_notes(fits)
    data_notes = list(dict.fromkeys(list(data.get("notes") or []) + shared))
    if data_notes:
        lines += ["", "What the data needed (and what hetvc did):", ""]
        lines += [f"- {n}" for n in data_notes]

    comp = comparison(fits)
    lines += ["", "## Model comparison", ""]
    lines += ["Genetic structure / residual structure; VCs = number of variance-covariance "
              "parameters. REML log-likelihoods are comparable because every model has the same "
              "fixed effects. `homogeneous` and `heterogeneous` genetic structures are not nested, "
              "so they are compared by information criteria (AICc, which corrects AIC for few records "
              "per parameter, selects; AIC and BIC are shown beside it); an LRT is shown only "
              "against a nested smaller model (its χ² p-value is conservative when the restriction "
              "is on a boundary). Only fits that converged are eligible for selection.", ""]
    lines += [_comparison_md(comp, fits), ""]
    lines += [" ".join(selection_lines(fits, comp, strong=lambda s: f"**{s}**"))]
    if data.get("not_fitted"):
        lines += ["", f"Not fitted ({data.get('stopped') or 'interrupted'}): "
                  + ", ".join(f"**{n}**" for n in data["not_fitted"]) + "."]

    if primary is not None:
        rec = best.record
        if primary == selected:
            lines += ["", f"## Selected model: {primary}", ""]
        else:
            lines += ["", f"## Model: {primary} (did not converge)", "",
                      f"**This fit did not converge** ({_status(best)}): its estimates are where the "
                      "optimiser stopped, not REML estimates; use them only to diagnose the fit.", ""]
        lines += [f"- ℓ = {best.loglik:.4f}, k = {best.n_params}, AIC = {best.aic:.2f}"
                  + (f", AICc = {_aicc(best):.2f}" if _aicc(best) is not None else "")
                  + f", BIC = {best.bic:.2f}",
                  f"- {rec['status']} after {rec['iterations']} iterations ({seconds_text(rec)}); "
                  f"engine: {best.engine} ({best.engine_reason})"]
        if best.boundary:
            lines.append(f"- on the boundary (a singular covariance block): {_boundary(best)}")
        lines += [f"- note: {n}" for n in best.notes if n not in shared]
        h, p = best.heritability(), best.pooled_heritability()
        lines += ["", "### Heritability per environment (SE)", "",
                  "h²_il = Σg_l[i,i] / (Σg_l[i,i] + ΣE_l[i,i]); pooled: weighted by each environment's "
                  "share of the trait's records (paper eq. 12 read as a proportion).", "",
                  _md_table(_h2_wide(best))] + _se_footnote(h, p) + [""]
        lines += ["### Genetic correlations between traits (SE)", "", _md_table(_trait_rg(best))]
        lines += _se_footnote(best.genetic_correlations()) + [""]
        if best.genetic_structure.environment_correlations:
            lines += ["### Genetic correlations between environments", ""]
            if len(best.envs) <= 6:
                for t in best.traits:
                    lines += [f"{t}:", "", _md_table(_env_rg_matrix(best, t)), ""]
            else:
                lines += ["See `genetic_correlations.csv` (rows `between = environments`) and "
                          "`environment_correlations.png`.", ""]
        vc = best.variance_components()
        shown = pd.DataFrame({"name": vc["name"], "estimate": vc["estimate"],
                              "se": _se_cells(vc)})
        lines += ["### Variance components (SE from AI⁻¹)", "",
                  _md_table(shown, {"estimate": _num, "se": str}), ""]

    if len(fits) > 1:
        lines += ["## Heritability under each model", "", _md_table(_h2_across_models(fits)), ""]
        other = [(n, f) for n, f in fits.items() if n != primary]
        lines += ["## Other models" if primary is not None else "## Models", ""]
        for n, f in other:
            r = f.record
            line = (f"- **{n}**: ℓ = {f.loglik:.2f}, k = {f.n_params}; {r['status']} after "
                    f"{r['iterations']} iterations ({seconds_text(r)}; {f.engine})")
            if not f.converged and r.get("message"):
                line += f"; {r['message']}"
            if f.boundary:
                line += f"; boundary: {_boundary(f)}"
            lines.append(line)
            lines += [f"  - note: {x}" for x in f.notes if x not in shared]
        lines.append("")

    if figures:
        lines += ["## Figures", ""]
        captions = {
            "phenotypic_correlations.png": "Phenotypic correlation between traits in each environment (cf. the paper's Figure 2).",
            "genetic_correlations.png": f"Estimated genetic correlations (colour) and covariances (cells), {selected}.",
            "environment_correlations.png": "Genetic correlations between environments (unstructured ΣG).",
            "heritability.png": "h² per environment (±1 SE) and pooled, every converged model "
                                "(hollow markers: a fit on the boundary; fits that did not converge are "
                                "listed in the legend but not drawn).",
            "observed_fitted.png": f"Observed vs fitted values, {selected}.",
        }
        for p in figures:
            name = Path(p).name
            lines += [f"![{name}]({name})", "", f"*{captions.get(name, name)}*", ""]

    files = []
    if primary is not None:
        files.append(f"`fit.json` ({'the selected model' if primary == selected else 'the model, not converged'}; "
                     "`hetvc.load('fit.json')`)")
    if len(fits) > 1:
        files.append("`fits/*.json` (every model)")
    files.append("`comparison.csv`, `variance_components.csv`, `heritability.csv`, "
                 "`genetic_correlations.csv` (every model)")
    if primary is not None:
        files.append("`blups.csv`, `blues.csv`, `fitted.csv` "
                     f"({'selected model' if primary == selected else 'this model'})")
    files.append("`summary.json`.")
    lines += ["## Files", "", ", ".join(files), ""]
    return "\n".join(lines)


# -- writing ---------------------------------------------------------------------------------------
# files of the selected model: removed from a folder where this run selects nothing, so that an
# earlier run's selection is not left beside this run's report
_SELECTED_FILES = ("fit.json", "blups.csv", "blues.csv", "fitted.csv", "genetic_correlations.png",
                   "observed_fitted.png", "environment_correlations.png", "heritability.png")


def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path, newline="") as fh:
        df.to_csv(fh, index=False)
    return path


def write_report(out, fits, selected: str | None = None, data: dict | None = None,
                 figures: bool = True, fit_files: dict | None = None) -> dict:
    """Write every output file into folder ``out`` (created if needed); returns the summary
    dict (:func:`summary`) with ``files`` listing what was written, relative to ``out``.

    ``fit_files`` (model name → path under ``out``) names fits already written there (the
    CLI writes each model's fit as soon as it finishes): they are listed, not written again."""
    fits = _named(fits)
    selected = select(fits) if selected is None else selected
    primary = _primary(fits, selected)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    if primary is not None:
        fits[primary].to_json(out / "fit.json")
        written.append(out / "fit.json")
    else:
        for name in _SELECTED_FILES:
            (out / name).unlink(missing_ok=True)
    fit_files = dict(fit_files or {})
    if len(fits) > 1 or fit_files:
        (out / "fits").mkdir(exist_ok=True)
        for n, f in fits.items():
            if n in fit_files:
                written.append(Path(fit_files[n]))
                continue
            p = out / "fits" / f"{_slug(n)}.json"
            f.to_json(p)
            written.append(p)
    for stem, df in tables(fits, selected).items():
        written.append(_write_csv(df, out / f"{stem}.csv"))
    figs = []
    if figures:
        from .plots import write_figures

        figs = write_figures(fits, selected, out)
        written += figs
    with atomic_write(out / "report.md") as fh:
        fh.write(markdown(fits, selected, data, figures=figs))
    written.append(out / "report.md")
    rel = [p.relative_to(out).as_posix() for p in written] + ["summary.json"]
    result = summary(fits, selected, data, out=out, files=rel)
    with atomic_write(out / "summary.json") as fh:
        json.dump(result, fh, indent=1, allow_nan=False)
    return result
