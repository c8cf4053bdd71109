r"""The simulation study of the paper (Table 1): a resumable grid runner, local or on Dask.

A *scenario* is one point of the grid (n, traits m, locations L, SNPs p, h², w, ρ); a *task*
is one replicate of one scenario: simulate a data set with :func:`hetvc.simulate.simulate`,
then fit every model of the study to it (by default the paper's two, ``homogeneous`` and
``heterogeneous`` genetic with a ``homogeneous`` residual) sharing one
:class:`~hetvc.engines.EigenCache`.  A *fit* is one (scenario, replicate, model): one row of
``results.csv``.

    from hetvc.study import grid, run
    res = run("out/", grid(w=[0, 0.5, 1], rho=[0.5]), replicates=20)   # local processes
    res = run("out/", ..., scheduler="tcp://10.0.0.1:8786")             # a Dask cluster
    res.table1          # the Table 1 layout (rows model × w, columns ρ)

One module a job, each documented in its own docstring; a module imports only those above it:

* :mod:`~hetvc.study.scenario` — the grid and the seeds of its replicates;
* :mod:`~hetvc.study.task` — the task a worker runs (one replicate: simulate, fit every model);
* :mod:`~hetvc.study.folder` — the folder's lock, ``study.json`` and machine information;
* :mod:`~hetvc.study.results_file` — ``results.csv``, the CRC-checked append log of fits;
* :mod:`~hetvc.study.summary` — the summaries, Table 1 and the AIC/BIC win rates;
* :mod:`~hetvc.study.figures` — the study's figures;
* :mod:`~hetvc.study.backends` — local processes, the coordinating process, or Dask;
* :mod:`~hetvc.study.progress` — the progress bar or log lines;
* :mod:`~hetvc.study.runner` — :func:`run`, which drives all of them.
"""

from .folder import StudyError
from .results_file import COLUMNS, ResultsFile, json_table, load_results, read_rows
from .runner import StudyResult, run
from .scenario import (DEFAULT_RHO, DEFAULT_SEED, DEFAULT_W, MODELS, QUICK_REPLICATES, Scenario, grid, quick_grid,
                       replicate_seed)
from .summary import PAPER_TABLE1, summarize, table1, table1_markdown, win_rates, win_rates_markdown, write_summary
from .task import Task, run_task, tasks

__all__ = [
    "Scenario", "Task", "StudyResult", "StudyError", "grid", "quick_grid", "QUICK_REPLICATES", "replicate_seed", "tasks",
    "run_task", "run", "load_results", "summarize", "table1", "table1_markdown", "win_rates",
    "win_rates_markdown", "write_summary", "DEFAULT_W", "DEFAULT_RHO", "DEFAULT_SEED", "MODELS",
    "PAPER_TABLE1", "COLUMNS", "ResultsFile", "read_rows", "json_table",
]
