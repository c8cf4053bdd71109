"""BLAS threads of a fit (issue 15): ``FitOptions.threads`` / ``hetvc.fit(threads=)``, 1 by
default (OpenBLAS's waiting threads made a fit 20× slower with the other core busy), ``None``
keeps the process's setting."""

import numpy as np
import pytest
from threadpoolctl import threadpool_info, threadpool_limits

import hetvc
import hetvc.fitting
from hetvc.options import FitOptions
from reference import make_problem

TRAITS = ["y1", "y2"]


def blas() -> set:
    """The thread counts the loaded BLAS libraries report."""
    return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}


@pytest.fixture
def two_threads():
    """The process runs BLAS with 2 threads (conftest limits it to 1); skipped where it cannot."""
    with threadpool_limits(2):
        if blas() != {2}:
            pytest.skip("BLAS cannot run 2 threads here")
        yield


@pytest.fixture(scope="module")
def problem():
    return make_problem(7, n_geno=30, n_env=2, genetic="heterogeneous", missing=0.1)[:2]


def _fit(problem, **kwargs):
    seen = []
    data, K = problem
    res = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="heterogeneous", tol=1e-10,
                    progress=lambda record: seen.append(blas()), **kwargs)
    return res, seen


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True])
def test_bad_threads_are_refused_in_one_line(bad):
    with pytest.raises(hetvc.InputError, match="threads must be a whole number at least 1 or None") as err:
        FitOptions(threads=bad)
    assert "\n" not in str(err.value)
    with pytest.raises(hetvc.InputError, match="threads must be"):
        hetvc.fit(None, None, TRAITS, threads=bad)  # refused before the data are read


def test_threads_default_to_one_and_accept_none_and_numpy_ints():
    assert FitOptions().threads == 1 and FitOptions(threads=None).threads is None
    three = FitOptions(threads=np.int64(3)).threads
    assert three == 3 and type(three) is int  # as threadpoolctl wants it


def test_a_fit_runs_with_one_blas_thread_by_default(problem, two_threads, monkeypatch):
    real, built = hetvc.fitting.build_model, []

    def build_model(*args, **kwargs):  # hetvc.fit checks K under the limit too
        built.append(blas())
        return real(*args, **kwargs)

    monkeypatch.setattr(hetvc.fitting, "build_model", build_model)
    res, seen = _fit(problem)
    assert seen and all(s == {1} for s in seen), seen
    assert built == [{1}]
    assert blas() == {2}  # the process's setting is back after the fit
    res2, seen2 = _fit(problem, threads=2)
    assert seen2 and all(s == {2} for s in seen2), seen2
    assert abs(res2.loglik - res.loglik) < 1e-10


def test_threads_none_keeps_the_process_setting(problem, two_threads):
    one, seen1 = _fit(problem, threads=1)
    none, seen = _fit(problem, threads=None)
    assert seen1 and all(s == {1} for s in seen1), seen1
    assert seen and all(s == {2} for s in seen), seen
    assert abs(none.loglik - one.loglik) < 1e-10
    assert none.converged and one.converged


def test_the_extra_starts_of_a_nonlinear_structure_use_the_same_threads(monkeypatch, two_threads):
    """fa1's cheaper fits (unstructured, heterogeneous) are fitted with the options' threads."""
    data, K = make_problem(8, n_geno=30, n_env=3, genetic="heterogeneous")[:2]
    real, seen = hetvc.fitting.maximize, []

    def maximize(*args, **kwargs):
        seen.append(blas())
        return real(*args, **kwargs)

    monkeypatch.setattr(hetvc.fitting, "maximize", maximize)
    model = hetvc.build_model(data, K, TRAITS, env="env", id="id", genetic="fa1")
    for threads, expected in ((None, {2}), (1, {1})):
        seen.clear()
        hetvc.fit_model(model, FitOptions(threads=threads, pev=False))
        assert len(seen) >= 3 and all(s == expected for s in seen), (threads, seen)  # cheap fits, starts


def test_the_study_fits_with_one_thread(monkeypatch, two_threads):
    """The study's workers fill the cores: each of their fits runs with one BLAS thread, whatever
    the worker process has (the local backend gives it cores // workers)."""
    from hetvc.study.scenario import Scenario
    from hetvc.study.task import run_task, tasks

    real, seen = hetvc.fitting.maximize, []

    def maximize(*args, **kwargs):
        seen.append(blas())
        return real(*args, **kwargs)

    monkeypatch.setattr(hetvc.fitting, "maximize", maximize)
    (task,) = tasks([Scenario(n=60, traits=2, locations=2, snps=100)], 1, models=("heterogeneous",))
    assert task.options.threads == 1
    rows = run_task(task)
    assert [r["status"] for r in rows] == ["ok"], rows
    assert seen and all(s == {1} for s in seen), seen
    assert blas() == {2}
