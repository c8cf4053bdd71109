"""The task a worker runs: one replicate of one scenario, simulated and fitted by every model.

:func:`run_task` simulates the data set with :func:`hetvc.simulate.simulate` and fits the
task's models to it sharing one :class:`~hetvc.engines.EigenCache`; it returns one row of
``results.csv`` per model (a fit that fails is an error row, the study goes on).  Each fit runs
with one BLAS thread (``FitOptions.threads``, 1 by default): the workers fill the cores, and
more threads per fit would oversubscribe them.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..engines import EigenCache
from ..fitting import build_model, fit_model
from ..options import FitOptions
from ..simulate import simulate
from .scenario import DEFAULT_SEED, MODELS, Scenario, replicate_seed


@dataclass(frozen=True)
class Task:
    """One replicate of one scenario, with the models still to fit and the fit options."""

    scenario: Scenario
    replicate: int
    seed: int
    models: tuple = MODELS
    residual: str = "homogeneous"
    options: FitOptions = FitOptions(pev=False, threads=1)  # no PEVs; the workers fill the cores

    @property
    def key(self) -> str:
        return f"{self.scenario.key}#{self.replicate}"

    def run(self) -> list[dict]:
        return run_task(self)


def tasks(scenarios: Sequence[Scenario], replicates: int, base_seed: int = DEFAULT_SEED,
          models: Sequence[str] = MODELS, done: set | None = None, residual: str = "homogeneous",
          options: FitOptions = FitOptions(pev=False, threads=1)) -> list[Task]:
    """Tasks of the study, replicate-major (replicate 0 of every scenario first, so a partial
    study is balanced), without the fits in ``done`` (a set of (scenario key, replicate, model))."""
    done = done or set()
    out = []
    for r in range(int(replicates)):
        for sc in scenarios:
            todo = tuple(m for m in models if (sc.key, r, m) not in done)
            if todo:
                out.append(Task(sc, r, replicate_seed(base_seed, sc, r), todo, residual, options))
    return out


def _json(x) -> str:
    return json.dumps(np.asarray(x, dtype=float).tolist())


def run_task(task: Task) -> list[dict]:
    """Simulate the task's data set and fit its models (one row per model, errors as rows)."""

    sc = task.scenario
    base = dict(scenario=sc.key, **sc.params(), replicate=task.replicate, seed=task.seed,
                worker=f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.perf_counter()
    try:
        sim = simulate(n=sc.n, traits=sc.traits, locations=sc.locations, snps=sc.snps, h2=sc.h2,
                       w=sc.w, rho=sc.rho, seed=task.seed)
    except Exception as err:  # noqa: BLE001 - recorded as a row, the study goes on
        return [_error_row(base, m, err, sim_seconds=time.perf_counter() - t0) for m in task.models]
    sim_seconds = time.perf_counter() - t0
    truth = sim.truth
    traits = list(truth.traits)
    g_true = np.array([np.diag(b) for b in truth.G_blocks])
    cache = EigenCache()  # both models of this replicate share the eigendecompositions of K
    rows = []
    for model in task.models:
        t1 = time.perf_counter()
        try:
            res = fit_model(build_model(sim.pheno, sim.K, traits, env="env", id="id", genetic=model,
                                        residual=task.residual), task.options, eigen=cache)
            ph = res.pooled_heritability()["h2"].to_numpy()
            h2_env = res.heritability()["h2"].to_numpy().reshape(len(res.envs), len(traits))
            G, E = res.full_covariances()
            L, m = len(res.envs), len(traits)
            rows.append(dict(
                base, model=model, status="ok", engine=res.engine, converged=res.converged,
                iterations=int(res.record["iterations"]), loglik=float(res.loglik),
                n_params=int(res.n_params), aic=float(res.aic), bic=float(res.bic),
                h2_pooled=float(np.mean(ph)), h2_pooled_true=float(np.mean(truth.h2_pooled)),
                h2_pooled_traits=_json(ph), h2_env=_json(h2_env),
                g_env=_json(np.diagonal(G).reshape(L, m)), g_env_true=_json(g_true),
                e_env=_json(np.diagonal(E).reshape(L, m)),
                seconds=time.perf_counter() - t1, sim_seconds=sim_seconds, error="",
            ))
        except Exception as err:  # noqa: BLE001
            rows.append(_error_row(base, model, err, seconds=time.perf_counter() - t1,
                                   sim_seconds=sim_seconds, h2_pooled_true=float(np.mean(truth.h2_pooled))))
    return rows


def _error_row(base, model, err, **extra) -> dict:
    msg = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
    return dict(base, model=model, status="error", converged=False, error=msg, **extra)
