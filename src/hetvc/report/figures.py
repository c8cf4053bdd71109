"""Figures of a fit (PNG, matplotlib's Agg backend, no display needed).

The one module of :mod:`hetvc.report` that imports matplotlib (the package does not import it:
:func:`~hetvc.report.write.write_report` does when it draws).  One convention: a figure is a
:class:`~matplotlib.figure.Figure` on an Agg canvas made by ``new_figure`` (never pyplot, so no
global state and nothing to close) and written by ``save_figure``.

Every function takes fitted models (:class:`~hetvc.results.FitResult`) and a path, draws one
figure and writes it atomically (:func:`hetvc.io_utils.atomic_path`); it returns the path.
They read only what a fit stores, so they work as well on a fit reloaded with
:func:`hetvc.load`.

* :func:`phenotypic_correlations` — trait-by-trait phenotypic correlation in each environment
  (the paper's Figure 2): scatter plots with r for two traits, a correlation heat map per
  environment for more;
* :func:`genetic_correlations` — the estimated genetic correlation matrix between traits in
  each environment (colour), with the genetic covariances written in the cells;
* :func:`environment_correlations` — genetic correlations between environments, one heat map
  per trait (``unstructured`` and factor-analytic fits), the environments ordered by a
  hierarchical clustering (:func:`environment_order`);
* :func:`latent_regression` — a factor-analytic fit's latent regression: genotypes' BLUPs
  against the environments' rotated factor-1 loadings, with each genotype's line through the
  origin whose slope is its factor-1 score (:func:`hetvc.breeding.latent_scores`);
* :func:`heritability` — h² per environment with ±1 SE error bars (and the pooled h²), one
  panel per trait, one series per model: a fit on the boundary with hollow markers and
  "(boundary)" in the legend, a fit that did not converge only in the legend, "(not
  converged)", never drawn as if it were an estimate;
* :func:`observed_fitted` — observed against fitted values (Xb̂ + Zû), one panel per trait: an
  in-sample fit (the environment means and the BLUPs of the same records inflate r), not
  prediction accuracy, which needs cross-validation (``hetvc cv``, planned).

Each has a ``...new_figure`` twin that returns the unsaved Figure.  Colours that tell environments,
models or genotypes apart come from a qualitative palette (``palette``: "tab10", "tab20"), and
titles are wrapped to the figure's width.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg", force=False)  # no display; a no-op when pyplot is already set up

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy.cluster.hierarchy import leaves_list, linkage  # noqa: E402
from scipy.spatial.distance import squareform  # noqa: E402

from ..breeding import latent_scores  # noqa: E402
from ..io_utils import atomic_path  # noqa: E402
from .selection import (_named, environment_model, factor_analytic,  # noqa: E402
                        factor_analytic_model, model_name)

__all__ = [
    "phenotypic_correlations", "genetic_correlations", "environment_correlations",
    "heritability", "heritability_figure", "fit_label", "observed_fitted", "write_figures",
    "phenotypic_correlations_figure", "genetic_correlations_figure",
    "environment_correlations_figure", "latent_regression_figure", "observed_fitted_figure",
    "environment_order", "latent_regression", "latent_scores", "new_figure", "save_figure", "axes_title",
    "palette",
]

DPI = 110
_COLORS = [matplotlib.colors.to_hex(c) for c in matplotlib.colormaps["tab10"].colors]
# closed outlines only: a boundary fit is drawn hollow, and a hollow plus or cross ('P', 'X')
# reads as a plus or a cross, not as a hollow marker
MARKERS = ["o", "s", "D", "^", "v", "p", "h", "<"]


# -- helpers ----------------------------------------------------------------------------------
def palette(n: int) -> list[str]:
    """``n`` distinct qualitative colours: matplotlib's "tab10" up to 10 series, "tab20" up to
    20, beyond that evenly spaced hues (the colours of environments, models, genotypes)."""
    if n <= 10:
        colors = matplotlib.colormaps["tab10"].colors
    elif n <= 20:
        tab20 = matplotlib.colormaps["tab20"].colors
        colors = tab20[0::2] + tab20[1::2]  # the ten strong colours first, then their pale twins
    else:
        colors = [matplotlib.colormaps["hsv"](k / n) for k in range(n)]
    return [matplotlib.colors.to_hex(c) for c in colors[:max(n, 1)]]


def _wrap(text: str, width_in: float, fontsize: float) -> str:
    """``text`` wrapped (each of its lines) to fit ``width_in`` inches at ``fontsize`` points
    (a conservative 0.62 em per character), so that no title is clipped by the figure's edge."""
    chars = max(12, int(0.9 * width_in * 72 / (0.62 * fontsize)))
    return "\n".join(textwrap.fill(line, chars) if line else line for line in text.split("\n"))


def _suptitle(fig: Figure, text: str, fontsize: float = 11):
    fig.suptitle(_wrap(text, fig.get_figwidth(), fontsize), fontsize=fontsize)


def axes_title(ax, text: str, fontsize: float = 10, ncols: int = 1):
    """An axes title wrapped to the width of one of ``ncols`` columns of the figure."""
    width = 0.85 * ax.figure.get_figwidth() / max(ncols, 1)
    ax.set_title(_wrap(text, width, fontsize), fontsize=fontsize)


def new_figure(ncols: int, nrows: int, w: float, h: float) -> tuple[Figure, np.ndarray]:
    """A constrained-layout figure of ``ncols`` × ``nrows`` panels of ``w`` × ``h`` inches (no
    pyplot state) and its axes, flattened."""
    fig = Figure(figsize=(w * ncols, h * nrows), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    return fig, axes


def _grid(n: int, max_cols: int = 5) -> tuple[int, int]:
    ncols = min(n, max_cols)
    return ncols, int(math.ceil(n / ncols))


def save_figure(fig: Figure, path) -> Path:
    """Write ``fig`` as a PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI)
    return path


def _wide_phenotypes(fit) -> pd.DataFrame:
    """One row per record: env and one column per trait (NaN where not observed)."""
    obs = pd.DataFrame({k: np.asarray(fit.observed[k]) for k in ("record", "env", "trait", "y")})
    wide = obs.pivot_table(index=["record", "env"], columns="trait", values="y", aggfunc="first")
    wide = wide.reset_index()
    return wide[["env"] + [t for t in fit.traits if t in wide.columns]]


def _corr_heatmap(ax, R: np.ndarray, labels, title: str, cells=None, fontsize=9):
    im = ax.imshow(R, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right", fontsize=fontsize)
    ax.set_yticks(range(len(labels)), labels, fontsize=fontsize)
    axes_title(ax, title, 10, ncols=_columns(ax))
    n = len(labels)
    if n <= 8:
        for i in range(n):
            for j in range(n):
                text = f"{R[i, j]:.2f}" if np.isfinite(R[i, j]) else "–"
                if cells is not None:
                    text += f"\n{cells[i][j]}"
                ax.text(j, i, text, ha="center", va="center", fontsize=fontsize - 1,
                        color="white" if np.isfinite(R[i, j]) and abs(R[i, j]) > 0.6 else "black")
    return im


def _columns(ax) -> int:
    """How many columns of panels the axes' figure has."""
    spec = ax.get_subplotspec()
    return spec.get_gridspec().ncols if spec is not None else 1


def _fmt_cov(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _hide_unused(axes, used: int):
    for ax in axes[used:]:
        ax.set_visible(False)


# -- figures ------------------------------------------------------------------------------------
def phenotypic_correlations(fit, path) -> Path:
    """Trait-by-trait phenotypic correlation within each environment (paper Fig. 2)."""
    return save_figure(phenotypic_correlations_figure(fit), path)


def phenotypic_correlations_figure(fit) -> Figure:
    """The figure of :func:`phenotypic_correlations`, not saved."""
    wide = _wide_phenotypes(fit)
    envs, traits = list(fit.envs), list(fit.traits)
    ncols, nrows = _grid(len(envs), 5 if len(traits) == 2 else 4)
    if len(traits) == 1:
        fig, axes = new_figure(1, 1, 4.2, 3.2)
        ax = axes[0]
        data = [wide.loc[wide["env"] == e, traits[0]].dropna() for e in envs]
        key = "tick_labels" if _mpl_has_tick_labels() else "labels"
        ax.boxplot(data, **{key: envs})
        ax.set_ylabel(traits[0])
        axes_title(ax, f"{traits[0]} by environment (one trait: no correlation to show)")
        ax.tick_params(axis="x", rotation=45)
        return fig
    if len(traits) == 2:
        fig, axes = new_figure(ncols, nrows, 3.2, 3.0)
        a, b = traits
        colors = palette(len(envs))
        for k, e in enumerate(envs):
            ax = axes[k]
            sub = wide.loc[wide["env"] == e, [a, b]].dropna()
            ax.scatter(sub[a], sub[b], s=9, alpha=0.6, color=colors[k], edgecolor="none")
            r = sub[a].corr(sub[b]) if len(sub) > 2 else np.nan
            if len(sub) > 2 and sub[a].std() > 0:
                slope, icpt = np.polyfit(sub[a], sub[b], 1)
                xs = np.linspace(sub[a].min(), sub[a].max(), 2)
                ax.plot(xs, icpt + slope * xs, color="black", lw=1)
            axes_title(ax, f"{e}: r = {r:.2f} (n = {len(sub)})", ncols=ncols)
            ax.set_xlabel(a)
            ax.set_ylabel(b)
        _hide_unused(axes, len(envs))
        _suptitle(fig, "Phenotypic correlation between traits in each environment")
        return fig
    fig, axes = new_figure(ncols, nrows, 3.3, 3.1)
    im = None
    for k, e in enumerate(envs):
        sub = wide.loc[wide["env"] == e, traits]
        R = sub.corr(min_periods=3).to_numpy()
        im = _corr_heatmap(axes[k], R, traits, f"{e} (n = {len(sub)})", fontsize=8)
    _hide_unused(axes, len(envs))
    fig.colorbar(im, ax=list(axes[:len(envs)]), shrink=0.8, label="phenotypic r")
    _suptitle(fig, "Phenotypic correlations between traits in each environment")
    return fig


def _mpl_has_tick_labels() -> bool:
    major, minor = (int(x) for x in matplotlib.__version__.split(".")[:2])
    return (major, minor) >= (3, 9)


def _genetic_matrix(fit):
    G = fit.genetic_covariance().to_numpy()
    sd = np.sqrt(np.clip(np.diag(G), 0, None))
    with np.errstate(divide="ignore", invalid="ignore"):
        R = G / np.outer(sd, sd)
    return G, R


def genetic_correlations(fit, path) -> Path:
    """Genetic correlations between traits in each environment (colour) with the genetic
    covariances in the cells; a single panel when ΣG is the same everywhere."""
    return save_figure(genetic_correlations_figure(fit), path)


def genetic_correlations_figure(fit) -> Figure:
    """The figure of :func:`genetic_correlations`, not saved."""
    G, R = _genetic_matrix(fit)
    envs, traits = list(fit.envs), list(fit.traits)
    m = len(traits)
    shared = not fit.genetic_structure.per_environment
    panels = ["all environments"] if shared else envs
    ncols, nrows = _grid(len(panels), 5)
    fig, axes = new_figure(ncols, nrows, max(2.8, 0.8 * m + 1.4), max(2.6, 0.8 * m + 1.2))
    im = None
    for k, e in enumerate(panels):
        l = 0 if shared else envs.index(e)
        Gl, Rl = fit.layout.env_block(G, l), fit.layout.env_block(R, l)
        cells = [[_fmt_cov(Gl[i, j]) for j in range(m)] for i in range(m)]
        im = _corr_heatmap(axes[k], Rl, traits, str(e), cells=cells if m <= 4 else None)
    _hide_unused(axes, len(panels))
    fig.colorbar(im, ax=list(axes[:len(panels)]), shrink=0.8, label="genetic r")
    _suptitle(fig, f"Genetic correlation (colour) and covariance (cells): {model_name(fit)}", 10)
    return fig


def environment_order(R) -> np.ndarray:
    """The order of the environments in :func:`environment_correlations`: the leaves
    (``scipy.cluster.hierarchy.leaves_list``) of an average-linkage clustering on the distance
    1 − r, averaged over traits (an r that is NaN counts as distance 1).

    ``R``: an L × L correlation matrix, or one per trait (m × L × L).  Returns a permutation
    of 0 … L−1 (the identity for L ≤ 2)."""
    R = np.asarray(R, dtype=float)
    if R.ndim == 2:
        R = R[None]
    L = R.shape[-1]
    if L <= 2:
        return np.arange(L)
    D = np.where(np.isfinite(R), 1.0 - R, 1.0).mean(axis=0)
    D = np.clip((D + D.T) / 2, 0.0, None)
    np.fill_diagonal(D, 0.0)
    return leaves_list(linkage(squareform(D, checks=False), method="average"))


def environment_correlations(fit, path) -> Path:
    """Genetic correlations between environments, one heat map per trait, the environments
    ordered by a hierarchical clustering (:func:`environment_order`, the same order in every
    panel) so that environments that rank genotypes alike sit together."""
    return save_figure(environment_correlations_figure(fit), path)


def environment_correlations_figure(fit) -> Figure:
    """The figure of :func:`environment_correlations`, not saved."""
    G, R = _genetic_matrix(fit)
    envs, traits = list(fit.envs), list(fit.traits)
    m, L = len(traits), len(envs)
    blocks = [R[np.ix_(idx, idx)] for idx in (fit.layout.trait_rows(i) for i in range(m))]
    order = environment_order(np.stack(blocks))
    labels = [envs[k] for k in order]
    ncols, nrows = _grid(m, 3)
    side = max(3.4, 0.35 * L + 2.0)
    fig, axes = new_figure(ncols, nrows, side, side * 0.9)
    im = None
    for i, t in enumerate(traits):
        im = _corr_heatmap(axes[i], blocks[i][np.ix_(order, order)], labels, f"{t}",
                           fontsize=8 if L > 6 else 9)
    _hide_unused(axes, m)
    fig.colorbar(im, ax=list(axes[:m]), shrink=0.8, label="genetic r between environments")
    _suptitle(fig, f"Genetic correlation between environments ({model_name(fit)})\n"
                   "environments ordered by clustering (average linkage on 1 − r)", 10)
    return fig


def latent_regression(fit, path, n: int = 3) -> Path:
    """The latent regression of a factor-analytic fit, one panel per trait: x the environments'
    rotated loading on factor 1 (:meth:`~hetvc.results.FitResult.loadings`), y the BLUPs of
    the ``n`` phenotyped genotypes with the highest and the ``n`` with the lowest factor-1 score
    (:func:`hetvc.breeding.latent_scores`) in those environments, each with the line through the origin of
    slope its score (û_jl ≈ λ*_l1 f_j1 + … + λ*_lk f_jk, the first term drawn)."""
    return save_figure(latent_regression_figure(fit, n), path)


def latent_regression_figure(fit, n: int = 3) -> Figure:
    """The figure of :func:`latent_regression`, not saved."""
    if not factor_analytic(fit):
        raise ValueError(f"{model_name(fit)} is not factor-analytic: it has no latent regression")
    envs, traits = [str(e) for e in fit.envs], list(fit.traits)
    lo = fit.loadings().assign(env=lambda d: d["env"].astype(str))
    bl = fit.blups().assign(id=lambda d: d["id"].astype(str), env=lambda d: d["env"].astype(str))
    ncols, nrows = _grid(len(traits), 2)
    fig, axes = new_figure(ncols, nrows, 4.6, 3.8)
    for i, t in enumerate(traits):
        ax = axes[i]
        lam1 = lo[lo["trait"] == t].set_index("env").loc[envs, "f1"].to_numpy(dtype=float)
        sc = latent_scores(fit, t)
        chosen = sc if len(sc) <= 2 * n else pd.concat([sc.head(n), sc.tail(n)])
        U = bl[bl["trait"] == t].pivot(index="id", columns="env", values="blup")[envs]
        lo_x, hi_x = min(0.0, lam1.min()), max(0.0, lam1.max())
        pad = 0.05 * (hi_x - lo_x or 1.0)
        xs = np.array([lo_x - pad, hi_x + pad])
        colors = palette(len(chosen))
        for k, (_, row) in enumerate(chosen.iterrows()):
            c = colors[k]
            ax.scatter(lam1, U.loc[row["id"]].to_numpy(dtype=float), s=16, color=c,
                       marker=MARKERS[k % len(MARKERS)], edgecolor="none", alpha=0.85,
                       label=f"{row['id']} (f̂₁ = {row['f1']:.2f})")
            ax.plot(xs, row["f1"] * xs, color=c, lw=1)
        # each genotype's name at the end of its line, pushed apart where lines end close together
        ends = chosen["f1"].to_numpy(dtype=float) * xs[1]
        lo_y, hi_y = ax.get_ylim()
        gap, at = 0.045 * (hi_y - lo_y), ends.copy()
        for a, b in zip(np.argsort(ends)[:-1], np.argsort(ends)[1:]):
            at[b] = max(at[b], at[a] + gap)
        for k, (_, row) in enumerate(chosen.iterrows()):
            ax.annotate(str(row["id"]), (xs[1], ends[k]), xytext=(xs[1], at[k]),
                        textcoords="data", fontsize=7, color=colors[k],
                        va="center")
        ax.axhline(0, color="grey", lw=0.5, ls=":")
        ax.axvline(0, color="grey", lw=0.5, ls=":")
        ax.set_xlim(xs[0], xs[1] + 0.18 * (xs[1] - xs[0]))
        top = ax.secondary_xaxis("top")
        top.set_xticks(lam1, envs, rotation=90, fontsize=6)
        ax.set_xlabel("environment's loading on factor 1 (λ*₁)")
        ax.set_ylabel(f"BLUP of {t}")
        axes_title(ax, t, ncols=ncols)
        ax.legend(fontsize=6, frameon=False, loc="best")
    _hide_unused(axes, len(traits))
    _suptitle(fig, f"Latent regression on factor 1 ({model_name(fit)}): the {n} genotypes with the "
                   f"highest and the {n} with the lowest factor-1 score\nthe slope is a genotype's "
                   "score, its response to the environments' factor 1 (steep: responsive; flat: "
                   "stable)", 9)
    return fig


def fit_label(name: str, fit, selected: bool = False) -> str:
    """A model's legend label: its name, marked "(not converged)" or "(boundary)" where so, and
    "(selected)" for the selected model."""
    if not fit.converged:
        return f"{name} (not converged)"
    label = f"{name} (boundary)" if fit.boundary else name
    return f"{label} (selected)" if selected else label


def heritability_figure(fits, selected: str | None = None) -> Figure:
    """The figure of :func:`heritability`, not saved (its legend is ``fig.legends[0]``).

    A fit that did not converge is not drawn (its estimates are where the optimiser stopped):
    it is listed in the legend as "name (not converged)", with no points.  A fit on the
    boundary of the parameter space (a singular ΣG or ΣE block) is drawn with hollow markers
    and labelled "name (boundary)".  The ``selected`` model (a name of ``fits``) is drawn with
    larger markers and thicker error bars, in front, and labelled "name (selected)" in bold.
    With one environment its h² is the pooled h²: it is shown once, with no "pooled" point."""
    fits = _named(fits)
    first = next(iter(fits.values()))
    envs, traits = list(first.envs), list(first.traits)
    pooled = len(envs) > 1
    ticks = envs + ["pooled"] if pooled else envs
    drawn = [n for n, f in fits.items() if f.converged]
    colors = palette(len(fits))
    width = float(np.clip(0.45 * (len(ticks)) * max(1.0, len(drawn) / 4) + 1.95, 3.6, 11.0))
    ncols, nrows = _grid(len(traits), 1 if width > 6 else 3)
    fig, axes = new_figure(ncols, nrows, width, 3.0)
    xs = np.arange(len(ticks))
    step = 0.8 / max(len(drawn), 1)
    rotate = len(ticks) > 4
    for i, t in enumerate(traits):
        ax = axes[i]
        for k, (name, f) in enumerate(fits.items()):
            chosen = name == selected and f.converged
            style = dict(marker=MARKERS[k % len(MARKERS)], color=colors[k], ms=8 if chosen else 5,
                         label=fit_label(name, f, chosen), zorder=3 if chosen else 2)
            if chosen:
                style["markeredgewidth"] = 2.0
            if f.boundary or not f.converged:
                style["markerfacecolor"] = "none"
            if not f.converged:  # a legend entry only: no estimate is drawn
                ax.plot([], [], ls="none", alpha=0.5, **style)
                continue
            h = f.heritability()
            h = h[h["trait"] == t].set_index("env").reindex(envs)
            y, se = h["h2"].to_numpy(), h["se"].to_numpy()
            if pooled:
                p = f.pooled_heritability().set_index("trait").loc[t]
                y, se = np.append(y, p["h2"]), np.append(se, p["se"])
            off = (drawn.index(name) - (len(drawn) - 1) / 2) * step
            ax.errorbar(xs + off, y, yerr=np.where(np.isfinite(se), se, 0), fmt="none",
                        ecolor=style["color"], capsize=3 if chosen else 2, lw=2 if chosen else 1,
                        zorder=style["zorder"])
            ax.plot(xs + off, y, ls="none", **style)
        if pooled:
            ax.axvline(len(envs) - 0.5, color="grey", lw=0.6, ls=":")
        ax.set_xticks(xs, ticks, rotation=45 if rotate else 0, ha="right" if rotate else "center")
        ax.set_xlim(-0.6, len(ticks) - 0.4)
        ax.set_ylim(-0.02, 1.02)
        ax.set_ylabel("h²")
        axes_title(ax, t, ncols=ncols)
        ax.grid(axis="y", alpha=0.3)
    _hide_unused(axes, len(traits))
    handles, labels = axes[0].get_legend_handles_labels()
    legend = fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 3),
                        fontsize=8, frameon=False)
    for text in legend.get_texts():
        if text.get_text().endswith("(selected)"):
            text.set_fontweight("bold")
    _suptitle(fig, "Heritability per environment (±1 SE) and pooled" if pooled
              else "Heritability (±1 SE); one environment, so h² is also the pooled h²")
    return fig


def heritability(fits, path, selected: str | None = None) -> Path:
    """h² per environment (±1 SE) and pooled, one panel per trait, one series per model, the
    ``selected`` one marked (see :func:`heritability_figure` for fits that did not converge or
    lie on the boundary).

    ``fits``: a FitResult or a dict name → FitResult (same traits and environments)."""
    return save_figure(heritability_figure(fits, selected), path)


OBSERVED_FITTED_NOTE = ("in-sample fit, not prediction accuracy: r is inflated by the environment "
                        "means and by the BLUPs of these same records; predictive ability needs "
                        "cross-validation (hetvc cv, planned)")


def observed_fitted(fit, path) -> Path:
    """Observed against fitted values (Xb̂ + Zû), one panel per trait, coloured by environment:
    an in-sample fit (:data:`OBSERVED_FITTED_NOTE`), not prediction accuracy."""
    return save_figure(observed_fitted_figure(fit), path)


def observed_fitted_figure(fit) -> Figure:
    """The figure of :func:`observed_fitted`, not saved."""
    obs = fit.fitted()
    traits, envs = list(fit.traits), list(fit.envs)
    ncols, nrows = _grid(len(traits), 3)
    fig, axes = new_figure(ncols, nrows, 3.4, 3.2)
    colors = palette(len(envs))
    for i, t in enumerate(traits):
        ax = axes[i]
        sub = obs[obs["trait"] == t]
        for k, e in enumerate(envs):
            s = sub[sub["env"] == e]
            ax.scatter(s["fitted"], s["y"], s=7, alpha=0.6, color=colors[k],
                       edgecolor="none", label=str(e))
        lo = float(min(sub["fitted"].min(), sub["y"].min()))
        hi = float(max(sub["fitted"].max(), sub["y"].max()))
        ax.plot([lo, hi], [lo, hi], color="black", lw=0.8)
        r = np.corrcoef(sub["fitted"], sub["y"])[0, 1] if len(sub) > 2 else np.nan
        axes_title(ax, f"{t}: in-sample r = {r:.2f}", ncols=ncols)
        ax.set_xlabel("fitted (in-sample)")
        ax.set_ylabel("observed")
    _hide_unused(axes, len(traits))
    if len(envs) <= 20:
        axes[0].legend(fontsize=7, markerscale=1.5, frameon=False, ncols=1 if len(envs) <= 10 else 2)
    _suptitle(fig, f"Observed vs fitted ({model_name(fit)})\n{OBSERVED_FITTED_NOTE}", 10)
    return fig


def write_figures(fits: dict, selected: str | None, folder) -> list[Path]:
    """Every figure for a set of fits into ``folder``: phenotypic correlations, the selected
    model's genetic correlations, h² of all models (those that did not converge only in the
    legend), observed vs fitted of the selected model, the between-environment correlations of
    the selected model when its ΣG has them (``unstructured``, ``faK``; else of the first
    converged model that has them) and the latent regression of the selected model when it is
    factor-analytic (else of the converged factor-analytic fit with the lowest AICc).  With
    nothing selected (no fit converged) only the figure of the data is drawn."""
    folder = Path(folder)
    fits = _named(fits)
    first = next(iter(fits.values()))
    best = fits[selected] if selected is not None else None
    out = [phenotypic_correlations(best or first, folder / "phenotypic_correlations.png")]
    if best is None:
        return out
    out += [
        genetic_correlations(best, folder / "genetic_correlations.png"),
        heritability(fits, folder / "heritability.png", selected),
        observed_fitted(best, folder / "observed_fitted.png"),
    ]
    name = environment_model(fits, selected)
    if name is not None:
        out.append(environment_correlations(fits[name], folder / "environment_correlations.png"))
    name = factor_analytic_model(fits, selected)
    if name is not None:
        out.append(latent_regression(fits[name], folder / "latent_regression.png"))
    return out
