"""The summary table of a cross-validation as text: r ± SE per model × environment, per scheme."""

from __future__ import annotations

import numpy as np
import pandas as pd


def _cell(r: float, se: float) -> str:
    if not np.isfinite(r):
        return "—"
    return f"{r:.3f} ± {se:.3f}" if np.isfinite(se) else f"{r:.3f}"


def ability_pivots(table: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """[(title, model × environment frame of "r ± se" cells, the mean over environments last)]
    per scheme × trait.  A cell from fewer folds than the others of its scheme says so
    ("0.412 ± 0.030 (3 folds)")."""
    out = []
    for (scheme, trait), t in table.groupby(["scheme", "trait"], sort=False):
        envs = list(dict.fromkeys(e for e in t["env"] if e != "mean")) + ["mean"]
        frame = pd.DataFrame(index=list(dict.fromkeys(t["model"])), columns=[str(e) for e in envs])
        full = t.groupby("env", sort=False)["n_folds"].transform("max")
        for row, planned in zip(t.itertuples(index=False), full):
            short = f" ({row.n_folds} fold{'s' * (row.n_folds != 1)})" if row.n_folds < planned else ""
            frame.loc[row.model, str(row.env)] = _cell(row.r, row.se) + short
        out.append((f"{scheme}, {trait}", frame.fillna("—")))
    return out


def ability_markdown(table: pd.DataFrame, fits: pd.DataFrame) -> str:
    """Markdown: a table per scheme × trait (r ± SE over folds), the accuracy r/√h² of the
    environment means where h² is known, and the fits that failed or did not converge."""
    lines = ["# Cross-validated predictive ability", "",
             "r(ŷ, y) per environment, averaged over folds (± SE over folds); `mean`: the mean over "
             "environments, with the SE over folds of each fold's mean.", ""]
    for title, frame in ability_pivots(table):
        lines += [f"## {title}", "", "| model | " + " | ".join(frame.columns) + " |",
                  "|---|" + "---|" * len(frame.columns)]
        lines += [f"| {m} | " + " | ".join(frame.loc[m]) + " |" for m in frame.index]
        lines.append("")
    if "accuracy" in table.columns:
        acc = table[table["env"] == "mean"]
        lines += ["## Accuracy r/√h² (mean over environments; h² from each model's fit to all the data)", "",
                  "| scheme | trait | model | r | mean h² | accuracy |", "|---|---|---|---|---|---|"]
        lines += [f"| {a.scheme} | {a.trait} | {a.model} | {a.r:.3f} | {a.h2:.3f} | {a.accuracy:.3f}"
                  f"{' (> 1)' if a.accuracy > 1 else ''} |" for a in acc.itertuples(index=False)]
        lines.append("")
        if (acc["accuracy"] > 1).any():
            lines += ["An accuracy above 1 means the model's own h² understates what its predictions capture "
                      "(a homogeneous model, say, counts the G×E variance as residual): r/√h² compares models "
                      "only where their h² agree; compare r itself.", ""]
    bad = fits[fits["status"] != "ok"]
    if len(bad):
        lines += [f"## {len(bad)} of {len(fits)} fold fits failed (left out) or did not converge (kept)", ""]
        for (model, status), g in bad.groupby(["model", "status"], sort=False):
            lines.append(f"- {model}, {', '.join(map(str, g['key']))}: {status}")
        lines.append("")
    if (table["scheme"] == "CV2T").any():
        lines += ["CV2T scores a trait predicted with the other traits of the same plot: their residual "
                  "covariance enters r(ŷ, y) as well as the genetic one, which favours models that fit it "
                  "(Runcie & Cheng 2019, G3 9:3727–3741); compare CV2T between models with the same residual.", ""]
    return "\n".join(lines)
