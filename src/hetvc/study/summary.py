r"""Summaries of a study: per-scenario means, the Table 1 layout, AIC/BIC win rates.

Summary (:func:`summarize`, :func:`table1`, :func:`win_rates`)
----------------------------------------------------------------
For each fit, ``h2_pooled`` is the pooled heritability (paper eq. 12, docs/design.md §5) averaged
over the m traits.  Per scenario and model: the mean of ``h2_pooled`` over replicates, its
Monte-Carlo SE ``sd / √R`` (sd with ddof = 1, R the fits used), the share of fits that
converged (of all fits, error rows counting as not converged) and the bias against the
true pooled h².  By default only converged fits enter the mean (``converged_only``).
Win rates: per scenario, the share of replicates (with every model fitted without error) in
which each model has the smallest AIC (BIC); ties go to the first model.  The two models are
not nested (docs/design.md §1 and §5), so no likelihood-ratio test is reported.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..io_utils import atomic_write
from .scenario import DEFAULT_RHO, SCENARIO_FIELDS, model_rank

MODEL_LABELS = {
    "homogeneous": "mvLMM, general VC (homogeneous)",
    "heterogeneous": "mvLMM, location-specific VCs (heterogeneous)",
    "diagonal": "mvLMM, diagonal G (a variance per trait × location)",
    "unstructured": "mvLMM, unstructured G×E",
}

# The paper's Table 1 (pooled h², true value 0.30): {model: {w: (ρ=0.25, ρ=0.5, ρ=0.75)}}.
PAPER_TABLE1 = {
    "homogeneous": {0.0: (0.2741, 0.2966, 0.2834), 0.2: (0.2707, 0.2831, 0.2416),
                    0.4: (0.2561, 0.2721, 0.2311), 0.6: (0.2489, 0.2504, 0.2341),
                    0.8: (0.2313, 0.2361, 0.2229), 1.0: (0.2329, 0.2375, 0.2266)},
    "heterogeneous": {0.0: (0.2895, 0.2896, 0.2756), 0.2: (0.2891, 0.2889, 0.3016),
                      0.4: (0.2995, 0.2797, 0.2967), 0.6: (0.2930, 0.2879, 0.2954),
                      0.8: (0.2964, 0.2849, 0.3028), 1.0: (0.3013, 0.2966, 0.3016)},
}


def summarize(results: pd.DataFrame, converged_only: bool = True) -> pd.DataFrame:
    """Per scenario and model: fits, converged share, mean pooled h² with its Monte-Carlo SE.

    Columns: the scenario fields, ``model``, ``fits`` (rows), ``errors``, ``converged``
    (count), ``converged_share`` (= converged / fits), ``used`` (fits in the mean),
    ``h2_mean``, ``h2_sd`` (ddof 1), ``h2_se`` (= sd/√used), ``h2_true``, ``bias``
    (= mean − true), ``aic_mean``, ``bic_mean``, ``iterations_mean``, ``seconds_mean``.
    """
    cols = list(SCENARIO_FIELDS) + ["model"]
    rows = []
    if len(results) == 0:
        return pd.DataFrame(columns=cols + ["fits", "errors", "converged", "converged_share", "used", "h2_mean",
                                            "h2_sd", "h2_se", "h2_true", "bias", "aic_mean", "bic_mean",
                                            "iterations_mean", "seconds_mean"])
    order = model_rank(results["model"])
    for key, g in results.groupby(cols, sort=False):
        ok = g["status"] == "ok"
        conv = ok & g["converged"].astype(bool)
        use = g[conv if converged_only else ok]
        x = use["h2_pooled"].astype(float).to_numpy()
        k = len(x)
        mean = float(np.mean(x)) if k else np.nan
        sd = float(np.std(x, ddof=1)) if k > 1 else np.nan
        true = float(np.nanmean(g["h2_pooled_true"].astype(float))) if g["h2_pooled_true"].notna().any() else np.nan
        rows.append(dict(zip(cols, key), fits=len(g), errors=int((~ok).sum()), converged=int(conv.sum()),
                         converged_share=float(conv.sum()) / len(g), used=k, h2_mean=mean, h2_sd=sd,
                         h2_se=sd / math.sqrt(k) if k > 1 else np.nan, h2_true=true, bias=mean - true,
                         aic_mean=float(use["aic"].mean()) if k else np.nan,
                         bic_mean=float(use["bic"].mean()) if k else np.nan,
                         iterations_mean=float(use["iterations"].mean()) if k else np.nan,
                         seconds_mean=float(use["seconds"].mean()) if k else np.nan))
    df = pd.DataFrame(rows)
    df = df.assign(_m=df["model"].map(order)).sort_values(list(SCENARIO_FIELDS[:-2]) + ["_m", "w", "rho"])
    return df.drop(columns="_m").reset_index(drop=True)


def _varying(summary: pd.DataFrame) -> list[str]:
    return [c for c in SCENARIO_FIELDS[:-2] if summary[c].nunique() > 1]


def table1(summary: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 layout: one row per (other varying parameters, model, w), and per ρ the
    columns ``rho=<ρ> h2``, ``rho=<ρ> se``, ``rho=<ρ> converged`` (share)."""
    if len(summary) == 0:
        return pd.DataFrame()
    idx = _varying(summary) + ["model", "w"]
    wide = summary.pivot_table(index=idx, columns="rho", values=["h2_mean", "h2_se", "converged_share"],
                               aggfunc="first", sort=False, dropna=False)
    out = pd.DataFrame(index=wide.index)
    for r in sorted(summary["rho"].unique()):
        for src, name in (("h2_mean", "h2"), ("h2_se", "se"), ("converged_share", "converged")):
            out[f"rho={r:g} {name}"] = wide[(src, r)] if (src, r) in wide.columns else np.nan
    out = out.reset_index()
    order = model_rank(out["model"])
    out = out.assign(_m=out["model"].map(order)).sort_values(_varying(summary) + ["_m", "w"])
    return out.drop(columns="_m").reset_index(drop=True)


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _cell(mean, se, conv) -> str:
    if mean is None or math.isnan(mean):
        return f"– ({_pct(conv)})"
    s = f"{mean:.4f}"
    if se is not None and not math.isnan(se):
        s += f" ± {se:.4f}"
    return f"{s} ({_pct(conv)})"


def table1_markdown(summary: pd.DataFrame, paper: bool = False) -> str:
    """Table 1 as Markdown: cells ``mean ± MC SE (converged share)``; ``paper=True`` adds the
    paper's value of the same cell (where it has one) in brackets."""
    if len(summary) == 0:
        return "_no results_\n"
    t = table1(summary)
    rhos = sorted(summary["rho"].unique())
    fixed = [c for c in SCENARIO_FIELDS[:-2] if c not in _varying(summary)]
    head = ", ".join(f"{c} = {summary[c].iloc[0]:g}" for c in fixed)
    lines = [f"Pooled h² (mean over traits and replicates) ± Monte-Carlo SE (share of fits converged); {head}."]
    if paper:
        lines[0] += " In brackets: the paper's Table 1."
    vary = _varying(summary)
    lines += ["", "| " + " | ".join(vary + ["model", "w"] + [f"ρ = {r:g}" for r in rhos]) + " |",
              "|" + "---|" * (len(vary) + 2 + len(rhos))]
    for _, row in t.iterrows():
        cells = [f"{row[c]:g}" for c in vary] + [MODEL_LABELS.get(row["model"], row["model"]), f"{row['w']:g}"]
        for r in rhos:
            c = _cell(row[f"rho={r:g} h2"], row[f"rho={r:g} se"], row[f"rho={r:g} converged"])
            if paper:
                ref = PAPER_TABLE1.get(row["model"], {}).get(round(float(row["w"]), 6))
                if ref is not None and r in DEFAULT_RHO:
                    c += f" [{ref[DEFAULT_RHO.index(r)]:.4f}]"
            cells.append(c)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def win_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: replicates compared (every model fitted without error) and, per model,
    the share of them in which it has the smallest AIC (``aic_<model>``) and BIC (``bic_<model>``)."""
    cols = list(SCENARIO_FIELDS)
    if len(results) == 0:
        return pd.DataFrame(columns=cols + ["replicates"])
    models = [m for m in model_rank(results["model"]) if m in set(results["model"])]
    rows = []
    for key, g in results.groupby(cols, sort=False):
        ok = g[g["status"] == "ok"]
        rec = dict(zip(cols, key))
        for crit in ("aic", "bic"):
            wide = ok.pivot_table(index="replicate", columns="model", values=crit, aggfunc="first")
            wide = wide.reindex(columns=models).dropna()
            rec["replicates"] = len(wide)
            best = wide.to_numpy().argmin(axis=1) if len(wide) else np.array([], dtype=int)
            for i, m in enumerate(models):
                rec[f"{crit}_{m}"] = float(np.mean(best == i)) if len(wide) else np.nan
        rows.append(rec)
    df = pd.DataFrame(rows)
    return df.sort_values(cols).reset_index(drop=True)


def win_rates_markdown(wins: pd.DataFrame) -> str:
    if len(wins) == 0:
        return "_no results_\n"
    models = [c[4:] for c in wins.columns if c.startswith("aic_")]
    vary = [c for c in SCENARIO_FIELDS[:-2] if wins[c].nunique() > 1]
    head = vary + ["w", "ρ", "replicates"] + [f"AIC: {m}" for m in models] + [f"BIC: {m}" for m in models]
    lines = ["Share of replicates in which each model has the smallest AIC / BIC.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in wins.iterrows():
        cells = [f"{r[c]:g}" for c in vary] + [f"{r['w']:g}", f"{r['rho']:g}", f"{int(r['replicates'])}"]
        cells += [_pct(r[f"aic_{m}"]) for m in models] + [_pct(r[f"bic_{m}"]) for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(results: pd.DataFrame, out, converged_only: bool = True) -> list[Path]:
    """Write summary.csv (long), table1.csv / table1.md (Table 1 layout) and win_rates.csv /
    win_rates.md into ``out`` (atomically).  Returns the paths."""
    out = Path(out)
    summ = summarize(results, converged_only=converged_only)
    wins = win_rates(results)
    files = []
    for name, frame in (("summary.csv", summ), ("table1.csv", table1(summ)), ("win_rates.csv", wins)):
        with atomic_write(out / name) as fh:
            frame.to_csv(fh, index=False, float_format="%.6g")
        files.append(out / name)
    with atomic_write(out / "table1.md") as fh:
        fh.write(table1_markdown(summ))
    files.append(out / "table1.md")
    with atomic_write(out / "win_rates.md") as fh:
        fh.write(win_rates_markdown(wins))
    files.append(out / "win_rates.md")
    return files
