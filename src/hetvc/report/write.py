"""Writing a report: :func:`write_report`, what ``hetvc fit --out DIR`` and ``hetvc example`` call.

For fits of one data set under several structures (``fits``: model name →
:class:`~hetvc.results.FitResult`, names such as ``"heterogeneous/homogeneous"`` =
genetic/residual) it writes into DIR:

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
``variance_partition.csv``      every model, when some model has random terms beyond the
                                genetic one: each term's variance and share of the
                                phenotypic variance (G, the random terms, E) per
                                environment × trait, with delta-method SEs
``blups.csv``                   selected model: every genotype in K × environment × trait,
                                BLUP, prediction error variance, records behind it
``blues.csv``                   selected model: fixed effects with SEs
``fitted.csv``                  selected model: observed, fitted and residual values
``rankings.csv``                selected model: genotypes ranked by BLUP per environment ×
                                trait and across environments (the mean of the BLUPs), with
                                reliability 1 − PEV/(σ²_g·K_jj) (K_jj = 1) and phenotyped
``random_effects.csv``          selected model, when it has random terms: BLUP (and PEV) of
                                every level of every random term × environment × trait
``loadings.csv``                selected model, when its ΣG is factor-analytic (``faK``):
                                rotated loadings f1 … fk, share explained by the factors,
                                specific variance ψ and its SE per environment × trait
``report.md``                   the readable report (tables and figures)
``*.png``                       figures (:mod:`hetvc.report.figures`; ``latent_regression.png``
                                when a factor-analytic model is selected or converged)
``summary.json``                the machine-readable summary
                                (:func:`~hetvc.report.summary_json.summary`, also what ``--json``
                                prints)
==============================  ==========================================================

The selected model is the one :func:`~hetvc.report.selection.select` chooses (the lowest AICc
among the fits that converged).  When nothing is selected: ``summary.json`` has
``"selected": null``; with several models ``fit.json``, ``blups.csv``, ``blues.csv``,
``fitted.csv``, ``rankings.csv``, ``random_effects.csv``, ``loadings.csv`` and the selected model's figures are not
written (every model is in ``fits/``, and the tables of every model are), with a single model
``fit.json`` and its tables are still written, marked as not converged.  ``variance_partition.csv``,
``random_effects.csv`` and ``loadings.csv`` are removed from DIR when this run does not write them
(no random terms, no factor-analytic selected model, or nothing selected), and so are
``environment_correlations.png`` and ``latent_regression.png`` when this run draws figures but
not these, so that an earlier run's are not left beside this run's report.
``summary.json`` says
``"complete": false`` and lists ``"not_fitted"`` models when a run was interrupted
(``"converged"`` is then false too).  Every file is written atomically (:mod:`hetvc.io_utils`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io_utils import atomic_write
from .report_md import markdown
from .selection import _named, _primary, select
from .summary_json import summary
from .csv_tables import FA_TABLES, RANDOM_TABLES, rankings_table, tables

__all__ = ["write_report"]

# files of the selected model: removed from a folder where this run selects nothing, so that an
# earlier run's selection is not left beside this run's report
_SELECTED_FILES = ("fit.json", "blups.csv", "blues.csv", "fitted.csv", "rankings.csv", "random_effects.csv",
                   "loadings.csv", "genetic_correlations.png", "observed_fitted.png",
                   "environment_correlations.png", "heritability.png", "latent_regression.png")
# figures drawn only for some sets of models: removed when this run draws figures but not these
_CONDITIONAL_FIGURES = ("environment_correlations.png", "latent_regression.png")


def _slug(name: str) -> str:
    return name.replace("/", "-")


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
    csvs = tables(fits, selected)
    for stem, df in csvs.items():
        written.append(_write_csv(df, out / f"{stem}.csv"))
    if primary is not None:  # the selected model's genotype rankings (hetvc.breeding)
        written.append(_write_csv(rankings_table(fits[primary], primary), out / "rankings.csv"))
    for stem in RANDOM_TABLES + FA_TABLES:  # an earlier run's, of terms this run does not have
        if stem not in csvs:
            (out / f"{stem}.csv").unlink(missing_ok=True)
    figs = []
    if figures:
        from .figures import write_figures

        figs = write_figures(fits, selected, out)
        written += figs
        drawn = {p.name for p in figs}
        for name in _CONDITIONAL_FIGURES:
            if name not in drawn:
                (out / name).unlink(missing_ok=True)
    with atomic_write(out / "report.md") as fh:
        fh.write(markdown(fits, selected, data, figures=figs))
    written.append(out / "report.md")
    rel = [p.relative_to(out).as_posix() for p in written] + ["summary.json"]
    result = summary(fits, selected, data, out=out, files=rel)
    with atomic_write(out / "summary.json") as fh:
        json.dump(result, fh, indent=1, allow_nan=False)
    return result
