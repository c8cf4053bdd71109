"""Everything a fit (or a comparison of fits) writes: tables, JSON, figures and report.md.

:func:`write_report` is what ``hetvc fit --out DIR`` and ``hetvc example`` call.  For fits of
one data set under several structures (``fits``: model name → :class:`~hetvc.results.FitResult`,
names such as ``"heterogeneous/homogeneous"`` = genetic/residual) it writes into DIR:

==============================  ==========================================================
``fit.json``                    the selected model, complete (``hetvc.load`` reads it back)
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

The *selected* model is the one with the lowest AIC among the fits that converged (AIC
because ``homogeneous`` and ``heterogeneous`` genetic structures are not nested).  Every file is
written atomically (:mod:`hetvc.io_utils`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from .compare import compare
from .io_utils import atomic_write

__all__ = [
    "SUMMARY_FORMAT", "model_name", "comparison", "select", "tables", "summary", "markdown",
    "write_report",
]

SUMMARY_FORMAT = "hetvc-summary/1"

# Keys of the --json summary; tests hold them fixed (add keys, never rename or remove them).
SUMMARY_KEYS = ("format", "version", "data", "models", "comparison", "selected", "converged",
                "out", "files")
MODEL_KEYS = ("model", "genetic", "residual", "converged", "status", "iterations", "seconds",
              "engine", "engine_reason", "loglik", "n_params", "aic", "bic", "boundary", "notes",
              "variance_components", "heritability", "pooled_heritability", "genetic_correlations")


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
def comparison(fits) -> pd.DataFrame:
    """The model comparison (paper Table 2): one row per model with k (number of VCs), ℓ, AIC,
    BIC, ΔAIC, ΔBIC and an LRT against the largest nested smaller model."""
    fits = _named(fits)
    if len(fits) >= 2:
        return compare(*fits.values(), names=list(fits))
    (name, f), = fits.items()
    return pd.DataFrame([dict(model=name, genetic=f.genetic, residual=f.residual, k=f.n_params,
                              logLik=f.loglik, AIC=f.aic, BIC=f.bic, converged=f.converged,
                              lrt_vs=None, lrt_stat=np.nan, lrt_df=np.nan, lrt_p=np.nan,
                              dAIC=0.0, dBIC=0.0)])


def select(fits) -> str:
    """Name of the model with the lowest AIC among converged fits (among all if none did)."""
    fits = _named(fits)
    pool = {n: f for n, f in fits.items() if f.converged} or fits
    return min(pool, key=lambda n: pool[n].aic)


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
    """Every CSV table, keyed by file stem (see the module docstring)."""
    fits = _named(fits)
    selected = selected or select(fits)
    best = fits[selected]

    def stack(fn):
        parts = [fn(f).assign(model=n) for n, f in fits.items()]
        df = pd.concat(parts, ignore_index=True)
        return df[["model"] + [c for c in df.columns if c != "model"]]

    def h2(f):
        per_env = f.heritability()
        pooled = f.pooled_heritability().assign(env="pooled")
        return pd.concat([per_env, pooled[["env", "trait", "h2", "se"]]], ignore_index=True)

    return {
        "comparison": comparison(fits),
        "variance_components": stack(lambda f: f.variance_components()),
        "heritability": stack(h2),
        "genetic_correlations": stack(lambda f: f.genetic_correlations()),
        "blups": blups_table(best, selected),
        "blues": best.blues().assign(model=selected)[["model", "effect", "estimate", "se"]],
        "fitted": best.fitted().assign(model=selected),
    }


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
    vc = f.variance_components()[["name", "component", "env1", "env2", "trait1", "trait2", "estimate", "se"]]
    return {
        "model": name, "genetic": f.genetic, "residual": f.residual,
        "converged": f.converged, "status": rec.get("status"), "iterations": rec.get("iterations"),
        "seconds": rec.get("seconds"), "engine": f.engine, "engine_reason": f.engine_reason,
        "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
        "boundary": list(f.boundary), "notes": list(f.notes),
        "variance_components": vc, "heritability": f.heritability(),
        "pooled_heritability": f.pooled_heritability(),
        "genetic_correlations": f.genetic_correlations(),
    }


def summary(fits, selected: str | None = None, data: dict | None = None, out=None, files=()) -> dict:
    """The machine-readable summary (``--json``; keys :data:`SUMMARY_KEYS`, each model
    :data:`MODEL_KEYS`).  NaN becomes ``null``."""
    fits = _named(fits)
    selected = selected or select(fits)
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
        "converged": all(f.converged for f in fits.values()),
        "out": None if out is None else str(out),
        "files": [str(p) for p in files],
    }
    return _clean(out_dict)


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
    if v is None or not np.isfinite(v):
        return "–"
    s = f"{v:.{digits}f}"
    return s + (f" ({se:.{digits}f})" if se is not None and np.isfinite(se) else " (–)")


def _boundary(f) -> str:
    """Boundary blocks by name; an unstructured ΣG is one block, whatever its first label."""
    names = []
    for b in f.boundary:
        if b.startswith("G") and f.genetic == "unstructured":
            names.append("ΣG (the whole unstructured matrix is singular)")
        elif b.startswith("E") and f.residual == "homogeneous" or b.startswith("G") and f.genetic == "homogeneous":
            names.append(f"Σ{b[0]} (shared by all environments)")
        else:
            names.append(b)
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


def _h2_across_models(fits) -> pd.DataFrame:
    first = next(iter(fits.values()))
    rows = []
    for n, f in fits.items():
        h = f.heritability().set_index(["env", "trait"])
        p = f.pooled_heritability().set_index("trait")
        row = {"model": n}
        for t in first.traits:
            for e in first.envs:
                row[f"{t} {e}"] = f"{h.loc[(e, t), 'h2']:.2f}"
            row[f"{t} pooled"] = f"{p.loc[t, 'h2']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _trait_rg(f) -> pd.DataFrame:
    rg = f.genetic_correlations()
    rg = rg[rg["between"] == "traits"]
    if f.genetic == "homogeneous":
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


def markdown(fits, selected: str | None = None, data: dict | None = None, figures=()) -> str:
    """report.md: data, the comparison in the layout of the paper's Table 2, the selected
    model's heritabilities, genetic correlations and variance components, h² across models,
    convergence, figures and files."""
    fits = _named(fits)
    selected = selected or select(fits)
    best = fits[selected]
    data = data or {}
    lines = ["# hetvc report", ""]
    if data.get("command"):
        lines += ["```", data["command"], "```", ""]
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
        ("fixed effects", f"a mean per trait × environment" + (f" + {best.fixed}" if best.fixed else "")
         + f" ({best.rank_x} columns)"),
        ("method", best.method.upper()),
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    if data.get("notes"):
        lines += ["", "What the data needed (and what hetvc did):", ""]
        lines += [f"- {n}" for n in data["notes"]]

    comp = comparison(fits)
    lines += ["", "## Model comparison", ""]
    lines += ["Genetic structure / residual structure; VCs = number of variance-covariance "
              "parameters. REML log-likelihoods are comparable because every model has the same "
              "fixed effects. `homogeneous` and `heterogeneous` genetic structures are not nested, "
              "so they are compared by AIC/BIC; an LRT is shown only against a nested smaller model "
              "(its χ² p-value is conservative when the restriction is on a boundary).", ""]
    table = pd.DataFrame({
        "model (ΣG / ΣE)": comp["model"],
        "VCs": comp["k"],
        "logLik": comp["logLik"].map(lambda v: f"{v:.2f}"),
        "AIC": comp["AIC"].map(lambda v: f"{v:.2f}"),
        "BIC": comp["BIC"].map(lambda v: f"{v:.2f}"),
        "ΔAIC": comp["dAIC"].map(lambda v: f"{v:.2f}"),
        "ΔBIC": comp["dBIC"].map(lambda v: f"{v:.2f}"),
        "LRT vs": comp["lrt_vs"].map(lambda v: v if isinstance(v, str) else "–"),
        "χ² (df)": [("–" if not np.isfinite(s) else f"{s:.2f} ({int(d)})") for s, d in zip(comp["lrt_stat"], comp["lrt_df"])],
        "p": comp["lrt_p"].map(lambda v: "–" if not np.isfinite(v) else (f"{v:.2g}" if v >= 1e-4 else "<1e-4")),
        "converged": comp["converged"],
    })
    lines += [_md_table(table), ""]
    by_bic = comp.loc[comp["BIC"].idxmin(), "model"]
    lines += [f"Selected (lowest AIC among converged fits): **{selected}**"
              + ("." if by_bic == selected else f"; BIC prefers **{by_bic}**.")]

    lines += ["", f"## Selected model: {selected}", ""]
    rec = best.record
    lines += [f"- ℓ = {best.loglik:.4f}, k = {best.n_params}, AIC = {best.aic:.2f}, BIC = {best.bic:.2f}",
              f"- {rec['status']} after {rec['iterations']} iterations ({rec['seconds']:.2f} s); "
              f"engine: {best.engine} ({best.engine_reason})"]
    if best.boundary:
        lines.append(f"- on the boundary (a singular covariance block): {_boundary(best)}")
    lines += [f"- note: {n}" for n in best.notes]
    lines += ["", "### Heritability per environment (SE)", "",
              "h²_il = Σg_l[i,i] / (Σg_l[i,i] + ΣE_l[i,i]); pooled: weighted by each environment's "
              "share of the trait's records (paper eq. 12 read as a proportion).", "",
              _md_table(_h2_wide(best)), ""]
    lines += ["### Genetic correlations between traits (SE)", "", _md_table(_trait_rg(best)), ""]
    if best.genetic == "unstructured":
        lines += ["### Genetic correlations between environments", ""]
        if len(best.envs) <= 6:
            for t in best.traits:
                lines += [f"{t}:", "", _md_table(_env_rg_matrix(best, t)), ""]
        else:
            lines += ["See `genetic_correlations.csv` (rows `between = environments`) and "
                      "`environment_correlations.png`.", ""]
    vc = best.variance_components()[["name", "estimate", "se"]]
    lines += ["### Variance components (SE from AI⁻¹)", "",
              _md_table(vc, {"estimate": lambda v: _num(v), "se": lambda v: _num(v)}), ""]

    if len(fits) > 1:
        lines += ["## Heritability under each model", "", _md_table(_h2_across_models(fits)), ""]
        other = [(n, f) for n, f in fits.items() if n != selected]
        lines += ["## Other models", ""]
        for n, f in other:
            r = f.record
            line = (f"- **{n}**: ℓ = {f.loglik:.2f}, k = {f.n_params}; {r['status']} after "
                    f"{r['iterations']} iterations ({r['seconds']:.2f} s, {f.engine})")
            if f.boundary:
                line += f"; boundary: {_boundary(f)}"
            lines.append(line)
            lines += [f"  - note: {x}" for x in f.notes]
        lines.append("")

    if figures:
        lines += ["## Figures", ""]
        captions = {
            "phenotypic_correlations.png": "Phenotypic correlation between traits in each environment (cf. the paper's Figure 2).",
            "genetic_correlations.png": f"Estimated genetic correlations (colour) and covariances (cells), {selected}.",
            "environment_correlations.png": "Genetic correlations between environments (unstructured ΣG).",
            "heritability.png": "h² per environment (±1 SE) and pooled, every model.",
            "observed_fitted.png": f"Observed vs fitted values, {selected}.",
        }
        for p in figures:
            name = Path(p).name
            lines += [f"![{name}]({name})", "", f"*{captions.get(name, name)}*", ""]

    lines += ["## Files", "",
              "`fit.json` (the selected model; `hetvc.load('fit.json')`), "
              + ("`fits/*.json` (every model), " if len(fits) > 1 else "")
              + "`comparison.csv`, `variance_components.csv`, `heritability.csv`, "
              "`genetic_correlations.csv` (every model), `blups.csv`, `blues.csv`, `fitted.csv` "
              "(selected model), `summary.json`.", ""]
    return "\n".join(lines)


# -- writing ---------------------------------------------------------------------------------------
def _write_csv(df: pd.DataFrame, path: Path) -> Path:
    with atomic_write(path, newline="") as fh:
        df.to_csv(fh, index=False)
    return path


def write_report(out, fits, selected: str | None = None, data: dict | None = None,
                 figures: bool = True) -> dict:
    """Write every output file into folder ``out`` (created if needed); returns the summary
    dict (:func:`summary`) with ``files`` listing what was written, relative to ``out``."""
    fits = _named(fits)
    selected = selected or select(fits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    fits[selected].to_json(out / "fit.json")
    written.append(out / "fit.json")
    if len(fits) > 1:
        (out / "fits").mkdir(exist_ok=True)
        for n, f in fits.items():
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
