"""The optimisation record kept on a fit (hetvc.optimize.OptimizationRecord): typed, read like
the dict fit.json holds, and round-tripped through JSON, older fit.json files included."""

import json

import pytest

import hetvc
from hetvc.optimize import Iteration, OptimizationRecord
from reference import make_problem


@pytest.fixture(scope="module")
def fit():
    data, K, _, _ = make_problem(4, n_geno=30, n_env=2, genetic="heterogeneous")
    return hetvc.fit(data, K, ["y1", "y2"], env="env", id="id")


def test_the_record_is_typed_and_reads_like_a_dict(fit):
    rec = fit.record
    assert isinstance(rec, OptimizationRecord) and all(isinstance(h, Iteration) for h in rec.history)
    assert rec["status"] == rec.status == "converged" and rec.get("message") == rec.message
    assert rec.get("no such key", 7) == 7
    with pytest.raises(KeyError):
        rec["no such key"]
    assert dict(rec)["iterations"] == rec.iterations == len(rec.history) - 1
    assert rec.ai_iterations + rec.fallback_iterations == rec.iterations


def test_json_round_trip_keeps_the_record(fit, tmp_path):
    fit.to_json(tmp_path / "fit.json")
    back = hetvc.load(tmp_path / "fit.json")
    assert isinstance(back.record, OptimizationRecord)
    assert back.record == fit.record  # every field, the iteration log included
    assert back.status_line() == fit.status_line()


def test_an_older_fit_json_without_the_method_counts(fit):
    d = json.loads(fit.to_json())
    for key in ("ai_iterations", "fallback_iterations", "fallback_evaluations", "finished_by",
                "time_limit", "seconds_in_all"):
        d["record"].pop(key)
    for h in d["record"]["history"]:
        for key in ("method", "evaluations", "seconds"):
            h.pop(key)
    old = hetvc.load(json.dumps(d))
    assert old.record.fallback_iterations is None and old.record.history[-1].method == "AI"
    assert old.status_line().startswith(f"converged after {fit.record.iterations} iterations (")


def test_the_record_supports_what_a_dict_reader_does(fit):
    rec = fit.record
    assert "status" in rec and "no such key" not in rec
    assert list(rec) == rec.keys() and dict(rec.items())["status"] == "converged"
    assert json.loads(json.dumps(rec.to_dict()))["iterations"] == rec.iterations
