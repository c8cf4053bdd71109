"""Progress of `hetvc fit` when stderr is not a terminal: plain ``hetvc: ...`` lines (the
first iteration, then at most one every PLAIN_INTERVAL seconds, always the last), silenced by
--quiet.  The throttle is set to its extremes, so nothing depends on timing."""

import re
from types import SimpleNamespace

import pytest
from conftest import simulated_trial
from click.testing import CliRunner

import hetvc.cli.fit as cli_fit
from hetvc.cli import main
from hetvc.optimize import Iteration

NUM = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
FIRST = re.compile(rf"^hetvc: (\S+) it 0 logLik {NUM} evals 1 {NUM} (?:s|min|h)$")
MIDDLE = re.compile(rf"^hetvc: (\S+) it [1-9]\d* logLik {NUM} step (?:{NUM}|L-BFGS) evals \d+ "
                    rf"{NUM} (?:s|min|h)(?: \((?:~|≤ ){NUM} (?:s|min|h) left\))?$")
LAST = re.compile(rf"^hetvc: (\S+) it \d+ logLik {NUM}(?: step (?:{NUM}|L-BFGS))? evals \d+ "
                  rf"{NUM} (?:s|min|h): (converged|iteration limit|time limit|stalled|runaway)$")


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    return simulated_trial(tmp_path_factory, n=50, snps=80, seed=5)


def run(trial, *extra):
    args = ["fit", trial / "pheno.csv", "--kinship", trial / "kinship.csv", "--traits", "t1,t2",
            "--env", "env", "--compare", "homogeneous,heterogeneous", "--json", *extra]
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return [ln for ln in res.stderr.splitlines() if ln.startswith("hetvc: ")], res


def test_plain_lines_first_and_last(trial, monkeypatch):
    monkeypatch.setattr(cli_fit, "PLAIN_INTERVAL", 1e9)  # nothing between the first and the last
    lines, res = run(trial)
    assert len(lines) == 4, lines
    for k, model in enumerate(["homogeneous/homogeneous", "heterogeneous/homogeneous"]):
        first, last = lines[2 * k], lines[2 * k + 1]
        assert FIRST.match(first) and FIRST.match(first).group(1) == model, first
        assert LAST.match(last) and LAST.match(last).groups() == (model, "converged"), last
        assert f"[{k + 1}/2] {model}: logLik" in res.stderr  # the result line
    assert res.stdout.lstrip().startswith("{")  # progress never mixes into --json


def test_plain_lines_every_iteration_when_unthrottled(trial, monkeypatch):
    monkeypatch.setattr(cli_fit, "PLAIN_INTERVAL", 0.0)
    lines, res = run(trial)
    import json

    summary = json.loads(res.stdout)
    for model in summary["models"]:
        mine = [ln for ln in lines if ln.startswith(f"hetvc: {model['model']} ")]
        # iteration 0, every iteration, then the final line
        assert len(mine) == model["iterations"] + 2, mine
        assert FIRST.match(mine[0]) and LAST.match(mine[-1])
        for ln in mine[1:-1]:
            assert MIDDLE.match(ln), ln


def test_quiet_silences_progress(trial):
    lines, res = run(trial, "--quiet")
    assert lines == [] and "[1/2]" not in res.stderr


def _record(**kw):
    history = kw.pop("history")
    base = dict(iterations=history[-1].iteration, evaluations=history[-1].evaluations,
                seconds=history[-1].seconds, max_iter=200, time_limit=None, tol=1e-8)
    base.update(kw)
    return SimpleNamespace(history=history, **base)


def test_progress_text_step_lbfgs_and_eta():
    its = [Iteration(0, -120.0, 0.0, 1.0, 0, "", "AI", 1, 0.0),
           Iteration(1, -110.5, 1.0, 1e-2, 0, "", "AI", 2, 1.0),
           Iteration(2, -110.25, 0.5, 1e-4, 0, "halved", "AI", 4, 2.0),
           Iteration(3, -110.125, 1.0, float("nan"), 0, "", "AI", 5, 3.0)]
    rec = _record(history=its)
    # the decrement falls 100× per iteration: 1e-4 after iteration 2, 1e-8 two iterations later,
    # one of which (iteration 3) is taken: one more of 1 s
    assert cli_fit.progress_text("heterogeneous/homogeneous", rec, 3.04) == (
        "heterogeneous/homogeneous it 3 logLik -110.125 step 1 evals 5 3.0 s (~1.0 s left)")
    lbfgs = its + [Iteration(4, -110.1, float("nan"), float("nan"), 0, "", "L-BFGS", 9, 4.0)]
    rec = _record(history=lbfgs, time_limit=10.0)
    # no extrapolation through L-BFGS: the bound from the time limit (max_iter gives 196 × 1 s)
    assert cli_fit.progress_text("unstructured/homogeneous", rec, 4.0) == (
        "unstructured/homogeneous it 4 logLik -110.100 step L-BFGS evals 9 4.0 s (≤ 6.0 s left)")
    assert cli_fit.progress_text("m", _record(history=its[:1]), 0.0) == "m it 0 logLik -120.000 evals 1 0.0 s"
