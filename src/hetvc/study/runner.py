"""The runner: run (or resume) a study into a folder, task by task, and summarize it.

Resume: ``run`` on an existing folder reads the valid rows, skips every (scenario, replicate,
model) already there — error rows included, since the same seed would fail the same way —
and runs the rest.  ``study.json`` keeps the base seed and the fit options; resuming with a
different seed or options is refused (the rows would not belong to one study).

At most ``2 × slots`` tasks are in flight, so an interrupt loses little and memory stays flat.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import pandas as pd

from ..errors import InputError
from ..options import FitOptions
from ..structures import GENETIC
from ..io_utils import atomic_write
from .backends import run_all
from .figures import make_figures
from .folder import lock_folder, machine_info, study_config
from .progress import StudyProgress
from .results_file import ResultsFile, load_results, read_rows
from .scenario import MODELS, Scenario, grid
from .summary import summarize, table1, win_rates, write_summary
from .task import tasks


@dataclass
class StudyResult:
    """What :func:`run` leaves: the folder, the rows, the summaries and this run's counts."""

    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    table1: pd.DataFrame
    win_rates: pd.DataFrame
    fits_run: int
    fits_skipped: int
    seconds: float
    backend: str
    files: list = field(default_factory=list)


def run(out, scenarios: Sequence[Scenario] | None = None, replicates: int = 100, *,
        seed: int | None = None, models: Sequence[str] = MODELS, residual: str = "homogeneous",
        workers: int | None = None, scheduler=None, progress="auto", log_every: float = 10.0,
        tol: float = 1e-8, max_iter: int = 200, max_restarts: int = 3, summary: bool = True,
        plots: bool = False, converged_only: bool = True) -> StudyResult:
    """Run (or resume) a simulation study into folder ``out``.

    scenarios: from :func:`grid` (default: the paper's grid).  replicates: per scenario.
    seed: base seed (default: the folder's, else ``DEFAULT_SEED``).  models: genetic
    structures to fit to every replicate.  workers: local processes (default: every core).
    scheduler: a Dask address ``tcp://host:port`` or a ``dask.distributed.Client`` instead of
    local processes.  workers=0 runs every task in this process (no pool; for debugging and
    small studies).  progress: ``"auto"`` (bar on a terminal, else log lines), ``"bar"``,
    ``"log"`` or ``None``.  summary/plots: write the summary tables / figures at the end.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out}: {err}") from None
    scenarios = list(grid() if scenarios is None else scenarios)
    replicates = int(replicates)
    if replicates < 1:
        raise InputError(f"replicates must be ≥ 1, not {replicates}")
    models = tuple(models)
    bad = [m for m in models if m not in GENETIC]
    if bad or not models or len(set(models)) != len(models):
        raise InputError(f"models must be distinct names among {', '.join(GENETIC)}; got {list(models)}")
    if workers is not None and (int(workers) != workers or workers < 0):
        raise InputError(f"workers must be an integer ≥ 0 (0: no worker processes), not {workers!r}")
    options = dict(residual=residual, tol=float(tol), max_iter=int(max_iter))  # as study.json keeps them
    lock = lock_folder(out)
    t0 = time.monotonic()
    try:
        cfg = study_config(out, seed, options)
        base_seed = cfg["seed"]
        with ResultsFile(out / "results.csv") as rf:
            prior = read_rows(out / "results.csv")
            done = set(zip(prior["scenario"], prior["replicate"].astype(int), prior["model"]))
            todo = tasks(scenarios, replicates, base_seed, models, done, residual=residual,
                         options=FitOptions(tol=float(tol), max_iter=int(max_iter), pev=False))
            total = len(scenarios) * replicates * len(models)
            n_todo = sum(len(t.models) for t in todo)
            prog = StudyProgress(progress, total, total - n_todo, log_every) if progress else None
            if prog and (rf.repaired or rf.dropped):
                prog.message(f"repaired {out / 'results.csv'}: cut {rf.repaired} bytes of an incomplete "
                             f"last line, dropped {rf.dropped} damaged line(s)")
            written, described = run_all(todo, rf, prog, scheduler=scheduler, workers=workers, total=total,
                                         where=out, max_restarts=max_restarts)
        seconds = time.monotonic() - t0
        cfg.setdefault("runs", []).append(dict(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(seconds, 3), fits=written,
            backend=described, machine=machine_info(),
            scenarios=len(scenarios), replicates=replicates, models=list(models)))
        with atomic_write(out / "study.json") as fh:
            json.dump(cfg, fh, indent=1)
    finally:
        if lock is not None:
            lock.close()
    results = load_results(out)
    keys = {s.key for s in scenarios}
    mine = results[results["scenario"].isin(keys) & (results["replicate"] < replicates) & results["model"].isin(models)]
    files = []
    if summary:
        files += write_summary(mine, out, converged_only=converged_only)
    if plots:
        files += make_figures(out, mine, base_seed=base_seed)
    summ = summarize(mine, converged_only=converged_only)
    return StudyResult(out=out, results=mine, summary=summ, table1=table1(summ), win_rates=win_rates(mine),
                       fits_run=written, fits_skipped=total - n_todo, seconds=seconds,
                       backend=described, files=files)
