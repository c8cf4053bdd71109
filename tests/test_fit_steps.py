"""hetvc.fit as a composition of public steps: build_model → fit_model under FitOptions."""

import numpy as np
import pandas as pd
import pytest

import hetvc
from hetvc.fitting import build_model, fit_model
from hetvc.model import Model
from hetvc.options import FitOptions
from reference import make_problem

TRAITS = ["y1", "y2"]


@pytest.fixture(scope="module")
def problem():
    return make_problem(6, n_geno=30, n_env=2, genetic="heterogeneous", missing=0.1)[:2]


def test_the_steps_give_the_fit(problem):
    data, K = problem
    one = hetvc.fit(data, K, TRAITS, env="env", id="id", genetic="heterogeneous", fixed=None, tol=1e-10)
    model = build_model(data, K, TRAITS, env="env", id="id", genetic="heterogeneous")
    assert isinstance(model, Model) and model.genetic.name == "heterogeneous"
    two = fit_model(model, FitOptions(tol=1e-10))
    assert two.loglik == one.loglik
    np.testing.assert_array_equal(two.theta, one.theta)
    assert two.record.iterations == one.record.iterations
    # one model, several option sets: no second validation of the data
    quick = fit_model(model, FitOptions(max_iter=2, pev=False))
    assert quick.record.iterations == 2 and quick.pev is None and not quick.converged


def test_options_are_checked_when_made():
    with pytest.raises(hetvc.InputError, match="max_iter must be at least 1"):
        FitOptions(max_iter=0)
    with pytest.raises(hetvc.InputError, match="time_limit must be a positive number"):
        FitOptions(time_limit=-1.0)
    with pytest.raises(hetvc.InputError, match="tol must be a positive number"):
        FitOptions(tol=0.0)
    assert FitOptions(max_iter=np.int64(5)).max_iter == 5
    assert FitOptions().to_dict() == dict(engine="auto", tol=1e-8, max_iter=200, time_limit=None, pev=True,
                                          threads=1)


def test_build_model_refuses_the_data_before_any_fit(problem):
    data, K = problem
    bad = data.copy()
    extra = bad.dropna(subset=TRAITS).iloc[[0]].assign(env="XYZ")
    with pytest.raises(hetvc.InputError, match="environment 'XYZ' has a single record"):
        build_model(pd.concat([bad, extra], ignore_index=True), K, TRAITS, env="env", id="id")
