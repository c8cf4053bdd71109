"""The figure of a cross-validation: predictive ability of each model, per scheme and trait."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..report.figures import new_figure, save_figure, axes_title, palette


def ability_figure(table: pd.DataFrame, path) -> Path:
    """One panel per scheme (rows) × trait (columns): for each model the mean r over
    environments with ± SE over folds (black), and each environment's r (coloured points, one
    colour per environment)."""
    schemes = list(dict.fromkeys(table["scheme"]))
    traits = list(dict.fromkeys(table["trait"]))
    panels = [(scheme, trait) for scheme in schemes for trait in traits]
    models = list(dict.fromkeys(table["model"]))
    envs = list(dict.fromkeys(e for e in table["env"] if e != "mean"))
    colors = dict(zip(envs, palette(len(envs))))
    fig, axes = new_figure(len(traits), len(schemes), max(2.4, 0.9 * len(models) + 1.2), 3.6)
    offsets = np.linspace(-0.2, 0.2, len(envs)) if len(envs) > 1 else np.zeros(1)
    for ax, (scheme, trait) in zip(axes, panels):
        t = table[(table["scheme"] == scheme) & (table["trait"] == trait)]
        for x, model in enumerate(models):
            g = t[t["model"] == model]
            for off, env in zip(offsets, envs):
                r = g.loc[g["env"] == env, "r"]
                if len(r) and np.isfinite(r.iloc[0]):
                    ax.plot(x + off, r.iloc[0], "o", ms=4, color=colors[env], alpha=0.8,
                            label=str(env) if x == 0 else None)
            mean = g[g["env"] == "mean"]
            if len(mean) and np.isfinite(mean["r"].iloc[0]):
                se = mean["se"].iloc[0]
                ax.errorbar(x, mean["r"].iloc[0], yerr=se if np.isfinite(se) else None, fmt="D", ms=6,
                            color="black", capsize=4, zorder=3, label="mean ± SE" if x == 0 else None)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_xticks(range(len(models)), models, rotation=30, ha="right", fontsize=8)
        ax.set_xlim(-0.6, len(models) - 0.4)
        ax.set_ylabel("predictive ability r(ŷ, y)")
        axes_title(ax, f"{scheme}: {trait}", ncols=len(traits))
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        axes[0].legend(handles, labels, fontsize=7, loc="best", title="environment", title_fontsize=7)
    return save_figure(fig, path)
