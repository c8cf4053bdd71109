"""Progress of `hetvc fit` when stderr is not a terminal: plain ``hetvc: ...`` lines (the
first iteration, then at most one every PLAIN_INTERVAL seconds, always the last, once),
silenced by --quiet; model, iteration and times first; the time left shown as ``~X`` only
once the extrapolation is stable.  The throttle is set to its extremes, so nothing depends on
timing."""

import re
from types import SimpleNamespace

import pytest
from conftest import simulated_trial
from click.testing import CliRunner

import hetvc.cli.fit as cli_fit
from hetvc.cli import main
from hetvc.optimize import Iteration

NUM = r"-?\d+(?:\.\d+)?(?:e[+-]?\d+)?"
TIME = rf"{NUM} (?:s|min|h)"
FIRST = re.compile(rf"^hetvc: (\S+) it 0 {TIME} logLik {NUM} evals 1$")
MIDDLE = re.compile(rf"^hetvc: (\S+) it [1-9]\d* {TIME}(?: \((?:~|≤ ){TIME} left\))? logLik {NUM} "
                    rf"step (?:{NUM}|L-BFGS) evals \d+$")
# the last line; without ℓ, step and evaluations when the line before showed that iteration
LAST = re.compile(rf"^hetvc: (\S+) it \d+ {TIME}(?: logLik {NUM}(?: step (?:{NUM}|L-BFGS))? evals \d+)?"
                  rf": (converged|iteration limit|time limit|stalled|runaway)$")
RESULT = re.compile(rf"^\[\d/\d\] (\S+): logLik {NUM}, k \d+, converged after \d+ iterations "
                    rf"\({TIME} in all; optimisation {TIME}; (?:dense|spectral)\)$")


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
        assert "logLik" in last  # the line before showed iteration 0 only
        (result,) = [ln for ln in res.stderr.splitlines() if ln.startswith(f"[{k + 1}/2] ")]
        assert RESULT.match(result) and RESULT.match(result).group(1) == model, result
    assert res.stdout.lstrip().startswith("{")  # progress never mixes into --json


def test_plain_lines_every_iteration_when_unthrottled(trial, monkeypatch):
    monkeypatch.setattr(cli_fit, "PLAIN_INTERVAL", 0.0)
    lines, res = run(trial)
    import json

    summary = json.loads(res.stdout)
    for model in summary["models"]:
        mine = [ln for ln in lines if ln.startswith(f"hetvc: {model['model']} ")]
        # iteration 0, every iteration, then the final line: the status only, since the line
        # before showed the same iteration
        assert len(mine) == model["iterations"] + 2, mine
        assert FIRST.match(mine[0]) and LAST.match(mine[-1])
        assert mine[-1].startswith(f"hetvc: {model['model']} it {model['iterations']} ")
        assert "logLik" not in mine[-1] and "evals" not in mine[-1], mine[-1]
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


def test_progress_text_step_lbfgs_and_time_left():
    its = [Iteration(0, -120.0, 0.0, 1.0, 0, "", "AI", 1, 0.0),
           Iteration(1, -110.5, 1.0, 1e-2, 0, "", "AI", 2, 1.0),
           Iteration(2, -110.25, 0.5, 1e-4, 0, "halved", "AI", 4, 2.0),
           Iteration(3, -110.125, 1.0, float("nan"), 0, "", "AI", 5, 3.0)]
    left = cli_fit.TimeLeft()
    assert left(_record(history=its[:1])) == ""
    assert left(_record(history=its[:2])) == "≤ 199 s left"  # max_iter at 1 s per iteration
    # the decrement falls 100× per iteration: 1e-4 after iteration 2, 1e-8 two iterations later
    # (at 4 s); a first extrapolation is not shown, a bound is
    assert left(_record(history=its[:3])) == "≤ 198 s left"
    # after iteration 3 the extrapolation again ends at 4 s: stable, shown
    rec = _record(history=its)
    assert left(rec) == "~1.0 s left"
    # model, iteration and times first: a narrow terminal cuts ℓ, step and evaluations
    assert cli_fit.progress_text("heterogeneous/homogeneous", rec, 3.04, "~1.0 s left") == (
        "heterogeneous/homogeneous it 3 3.0 s (~1.0 s left) logLik -110.125 step 1 evals 5")
    lbfgs = its + [Iteration(4, -110.1, float("nan"), float("nan"), 0, "", "L-BFGS", 9, 4.0)]
    rec = _record(history=lbfgs, time_limit=10.0)
    # no extrapolation through L-BFGS: the bound from the time limit (max_iter gives 196 × 1 s)
    assert left(rec) == "≤ 6.0 s left"
    assert cli_fit.progress_text("unstructured/homogeneous", rec, 4.0, left(rec)) == (
        "unstructured/homogeneous it 4 4.0 s (≤ 6.0 s left) logLik -110.100 step L-BFGS evals 9")
    assert cli_fit.progress_text("m", _record(history=its[:1]), 0.0) == "m it 0 0.0 s logLik -120.000 evals 1"
    assert cli_fit.progress_text("m", rec, 5.0, full=False) == "m it 4 5.0 s"


def test_time_left_that_jumps_is_a_bound():
    """The trial's estimates jumped (~245 s, ~50 s, then ≤ 413 s): an extrapolation is shown
    only when it agrees with the one before."""
    its = [Iteration(0, -120.0, 0.0, 1.0, 0, "", "AI", 1, 0.0),
           Iteration(1, -110.5, 1.0, 0.5, 0, "", "AI", 2, 1.0),
           Iteration(2, -110.25, 1.0, 0.2, 0, "", "AI", 3, 2.0),  # rate 0.4: ends near 20 s
           Iteration(3, -110.125, 1.0, 1e-6, 0, "", "AI", 4, 3.0),  # rate 5e-6: ends at 5 s
           Iteration(4, -110.120, 1.0, 5e-7, 0, "", "AI", 5, 4.0)]  # rate 0.5: ends at 10 s
    left = cli_fit.TimeLeft()
    shown = [left(_record(history=its[:k])) for k in range(1, len(its) + 1)]
    assert shown == ["", "≤ 199 s left", "≤ 198 s left", "≤ 197 s left", "≤ 196 s left"]
