"""Figures of the simulation study (matplotlib, Agg backend; each as PNG and SVG).

* :func:`figure1` — the paper's Figure 1: heat maps of the phenotypic correlation of
  simulated data for chosen scenarios.  Top row: trait by trait, on the study's own data
  (``split`` design, each individual in one location; traits centred on their location
  means).  Bottom row: trait × location.  With one record per individual there is no
  phenotypic correlation between two locations to compute, so this row simulates the same
  scenario and seed with ``design="full"`` (every individual in every location): the
  same-trait cross-location correlation is then h²·(1 − w) and the within-location
  cross-trait correlation ρ, which is exactly the structure the two models disagree on.
* :func:`plot_h2_vs_w` — mean pooled h² against w, one line per model, error bars ±1.96
  Monte-Carlo SE, one panel per ρ; the true value dashed, the paper's Table 1 as hollow
  markers where the grid has the paper's w and ρ.
* :func:`plot_genetic_variance_bias` — the bias of the per-location genetic variances
  (estimate − truth of Σg_l[i,i], averaged over traits): per model the mean over locations
  (± 1.96 SE over replicates) and each location as a faint marker, one panel per ρ.  For
  the ``homogeneous`` model the per-location value is its single Σg[i,i].

:func:`make_figures` writes all three into ``<out>/figures``.  Files are written atomically.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from ..io_utils import atomic_path
from ..simulate import simulate
from .results_file import json_table, load_results
from .scenario import DEFAULT_RHO, DEFAULT_SEED, SCENARIO_FIELDS, Scenario, replicate_seed
from .summary import MODEL_LABELS, PAPER_TABLE1, summarize

__all__ = ["figure1", "plot_h2_vs_w", "plot_genetic_variance_bias", "make_figures", "save"]

_COLORS = {"homogeneous": "#c0392b", "heterogeneous": "#2471a3", "unstructured": "#239b56"}


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"svg.fonttype": "none", "font.size": 9})
    return plt


def save(fig, folder, name: str, dpi: int = 110) -> list[Path]:
    """Save ``fig`` as ``<folder>/<name>.png`` and ``.svg`` (atomically); closes it."""
    plt = _plt()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext, meta in (("png", {"Software": None}), ("svg", {"Date": None, "Creator": None})):
        target = folder / f"{name}.{ext}"
        with atomic_path(target) as tmp:
            fig.savefig(tmp, format=ext, dpi=dpi, bbox_inches="tight", metadata=meta)
        paths.append(target)
    plt.close(fig)
    return paths


def _label(model: str) -> str:
    return MODEL_LABELS.get(model, model)


# ---------------------------------------------------------------------------------------


def _default_fig1(scenarios):
    ws = sorted({s.w for s in scenarios})
    rhos = sorted({s.rho for s in scenarios})
    picks = []
    for w in (ws[0], ws[-1]):
        for r in (rhos[0], rhos[-1]):
            picks += [s for s in scenarios if s.w == w and s.rho == r][:1]
    seen, out = set(), []
    for s in picks:
        if s.key not in seen:
            seen.add(s.key)
            out.append(s)
    return out


def figure1(scenarios: Sequence, folder, base_seed: int | None = None, name: str = "figure1_correlations") -> list[Path]:
    """Heat maps of the phenotypic correlation for each of ``scenarios`` (see module doc).

    The data are replicate 0 of each scenario (:func:`hetvc.study.replicate_seed`)."""

    plt = _plt()
    base_seed = DEFAULT_SEED if base_seed is None else base_seed
    scenarios = list(scenarios)
    k = len(scenarios)
    fig, axes = plt.subplots(2, k, figsize=(3.1 * k + 0.6, 6.4), squeeze=False,
                             gridspec_kw=dict(height_ratios=[1, 1.45]))
    im = None
    for c, sc in enumerate(scenarios):
        seed = replicate_seed(base_seed, sc, 0)
        kw = dict(n=sc.n, traits=sc.traits, locations=sc.locations, snps=sc.snps, h2=sc.h2, w=sc.w,
                  rho=sc.rho, seed=seed)
        sim = simulate(**kw)
        traits = list(sim.truth.traits)
        y = sim.pheno[traits] - sim.pheno.groupby("env")[traits].transform("mean")
        r_tt = np.corrcoef(y.to_numpy().T)
        ax = axes[0, c]
        im = ax.imshow(r_tt, vmin=-1, vmax=1, cmap="RdBu_r")
        for i in range(len(traits)):
            for j in range(len(traits)):
                ax.text(j, i, f"{r_tt[i, j]:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if abs(r_tt[i, j]) > 0.6 else "black")
        ax.set_xticks(range(len(traits)), traits)
        ax.set_yticks(range(len(traits)), traits)
        ax.set_title(f"w = {sc.w:g}, ρ = {sc.rho:g}\ntrait × trait (study data)", fontsize=9)

        full = simulate(**kw, design="full")
        wide = full.pheno.pivot(index="id", columns="env", values=traits)  # columns (trait, env)
        wide = wide.reorder_levels([1, 0], axis=1).sort_index(axis=1)  # env-major
        r_tl = np.corrcoef(wide.to_numpy().T)
        labels = [f"{e}:{t}" for e, t in wide.columns]
        ax = axes[1, c]
        im = ax.imshow(r_tl, vmin=-1, vmax=1, cmap="RdBu_r")
        m = len(traits)
        for b in range(1, sim.truth.L):
            ax.axhline(b * m - 0.5, color="k", lw=0.6)
            ax.axvline(b * m - 0.5, color="k", lw=0.6)
        ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
        ax.set_yticks(range(len(labels)), labels, fontsize=6)
        ax.set_title("trait × location (design=full)", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, label="phenotypic correlation")
    fig.suptitle("Figure 1: phenotypic correlations of simulated data", fontsize=10)
    return save(fig, folder, name)


def _panels(values):
    plt = _plt()
    k = len(values)
    fig, axes = plt.subplots(1, k, figsize=(3.4 * k, 3.3), sharey=True, squeeze=False)
    return plt, fig, axes[0]


def _dodge(j: int, k: int, step: float) -> float:
    """x offset of series j of k, centred on 0, so that error bars at the same w do not overlap."""
    return (j - (k - 1) / 2) * step


def _finish_rho_panels(fig, axes, rhos, ylabel: str, title: str, folder, name: str,
                       max_columns: int | None = None) -> list[Path]:
    """Titles, axes and grid of the one-panel-per-ρ figures, the legend of the first panel
    below them, the figure title; saved."""
    for ax, r in zip(axes, rhos):
        ax.set_title(f"ρ = {r:g}")
        ax.set_xlabel("w")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    ncol = len(labels) if max_columns is None else min(max_columns, len(labels))
    fig.legend(handles, labels, loc="upper center", ncol=ncol, fontsize=7, frameon=False,
               bbox_to_anchor=(0.5, 0.0))
    fig.suptitle(title, fontsize=10, y=1.02)
    return save(fig, folder, name)


def plot_h2_vs_w(summary: pd.DataFrame, folder, name: str = "h2_vs_w", paper: bool = True) -> list[Path]:
    """Mean pooled h² (± 1.96 MC SE) against w, one panel per ρ (see module doc)."""
    rhos = sorted(summary["rho"].unique())
    plt, fig, axes = _panels(rhos)
    models = list(dict.fromkeys(summary["model"]))
    for ax, r in zip(axes, rhos):
        s = summary[summary["rho"] == r]
        for j, mdl in enumerate(models):
            d = s[s["model"] == mdl].sort_values("w")
            off = _dodge(j, len(models), 0.008)
            ax.errorbar(d["w"] + off, d["h2_mean"], yerr=1.96 * d["h2_se"].fillna(0), marker="o", ms=4,
                        capsize=2, lw=1.2, color=_COLORS.get(mdl), label=_label(mdl))
            ref = PAPER_TABLE1.get(mdl)
            if paper and ref and r in DEFAULT_RHO:
                ws = [w for w in sorted(ref) if np.isclose(d["w"], w).any()]
                if ws:
                    ax.plot(ws, [ref[w][DEFAULT_RHO.index(r)] for w in ws], ls=":", marker="o", mfc="none",
                            ms=5, lw=0.8, color=_COLORS.get(mdl), label=f"paper: {mdl}")
        ax.axhline(float(s["h2_true"].mean()), color="0.3", ls="--", lw=0.8, label="true h²")
    return _finish_rho_panels(fig, axes, rhos, "mean pooled h²",
                              "Pooled heritability against w, the location-specific share of genetic variance "
                              "(error bars: ±1.96 Monte-Carlo SE)", folder, name, max_columns=3)


def genetic_variance_bias(results: pd.DataFrame) -> pd.DataFrame:
    """Per scenario, model and location: mean bias of Σg_l[i,i] (averaged over traits), its
    SE over replicates and the fits used (successful fits only)."""
    ok = results[results["status"] == "ok"]
    if len(ok) == 0:
        return pd.DataFrame()
    est = json_table(ok, "g_env")
    true = json_table(ok, "g_env_true")
    bias = (est - true).mean(axis=2)  # fits × L
    L = bias.shape[1]
    rows = []
    keys = ok[list(SCENARIO_FIELDS) + ["model"]].reset_index(drop=True)
    for key, idx in keys.groupby(list(SCENARIO_FIELDS) + ["model"], sort=False).groups.items():
        b = bias[np.asarray(idx)]
        # location l = 1..L, and 0 for the average over locations
        for loc, x in [(l + 1, b[:, l]) for l in range(L)] + [(0, b.mean(axis=1))]:
            rows.append(dict(zip(list(SCENARIO_FIELDS) + ["model"], key), location=loc, bias=float(x.mean()),
                             se=float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else np.nan, fits=len(x)))
    return pd.DataFrame(rows)


def plot_genetic_variance_bias(results: pd.DataFrame, folder, name: str = "genetic_variance_bias") -> list[Path]:
    """Bias of the per-location genetic variances against w, one panel per ρ (module doc)."""
    tab = genetic_variance_bias(results)
    rhos = sorted(tab["rho"].unique())
    plt, fig, axes = _panels(rhos)
    models = list(dict.fromkeys(tab["model"]))
    for ax, r in zip(axes, rhos):
        s = tab[tab["rho"] == r]
        for j, mdl in enumerate(models):
            d = s[s["model"] == mdl]
            off = _dodge(j, len(models), 0.01)
            per = d[d["location"] > 0]
            ax.plot(per["w"] + off, per["bias"], ls="none", marker=".", ms=3, alpha=0.35, color=_COLORS.get(mdl))
            avg = d[d["location"] == 0].sort_values("w")
            ax.errorbar(avg["w"] + off, avg["bias"], yerr=1.96 * avg["se"].fillna(0), marker="o", ms=4, capsize=2,
                        lw=1.2, color=_COLORS.get(mdl), label=_label(mdl))
        ax.axhline(0, color="0.3", ls="--", lw=0.8)
    return _finish_rho_panels(fig, axes, rhos, "bias of Σg_l[i,i] (estimate − truth)",
                              "Per-location genetic variance: mean bias (±1.96 SE); dots: single locations",
                              folder, name)


def make_figures(out, results: pd.DataFrame | None = None, base_seed: int | None = None,
                 fig1_scenarios: Sequence | None = None, folder=None) -> list[Path]:
    """All three figures of a study folder into ``<out>/figures`` (or ``folder``)."""
    out = Path(out)
    if results is None:
        results = load_results(out)
    if base_seed is None:
        import json

        cfg = out / "study.json"
        base_seed = json.loads(cfg.read_text())["seed"] if cfg.exists() else None
    folder = Path(folder) if folder is not None else out / "figures"
    scenarios = [Scenario(**{k: v for k, v in r.items()}) for r in
                 results[["n", "traits", "locations", "snps", "h2", "w", "rho"]].drop_duplicates().to_dict("records")]
    paths = []
    paths += figure1(fig1_scenarios or _default_fig1(scenarios), folder, base_seed)
    paths += plot_h2_vs_w(summarize(results), folder)
    paths += plot_genetic_variance_bias(results, folder)
    return paths
