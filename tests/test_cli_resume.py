"""`hetvc fit --compare ... --out DIR` keeps what finished: each fit is written as soon as it
finishes, Ctrl-C writes the report of the finished models and exits 130, and running the same
command again reuses every fit made with the same inputs and options.

The interrupted run is a real subprocess that gets SIGINT.  To interrupt it at a known point
without timing, the subprocess wraps ``hetvc.build_model`` (the CLI's first step of a fit): the fit of the model named in
HETVC_TEST_HANG sleeps (Ctrl-C ends the sleep), and every call is logged to HETVC_TEST_CALLS.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import simulated_trial
from click.testing import CliRunner

import hetvc
from hetvc.cli import main

WRAPPER = r"""
import os, sys, time
import hetvc

_fit = hetvc.build_model

def fit(*args, **kwargs):
    name = f"{kwargs['genetic']}/{kwargs['residual']}"
    with open(os.environ["HETVC_TEST_CALLS"], "a") as fh:
        fh.write(name + "\n")
    if name == os.environ.get("HETVC_TEST_HANG"):
        time.sleep(300)
    return _fit(*args, **kwargs)

hetvc.build_model = fit
from hetvc.cli import main
main(prog_name="hetvc")
"""

MODELS = "homogeneous,heterogeneous,unstructured"


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    return simulated_trial(tmp_path_factory, n=60, snps=100, seed=3)


def fit_args(trial, out, *extra):
    return ["fit", str(trial / "pheno.csv"), "--kinship", str(trial / "kinship.csv"), "--traits", "t1,t2",
            "--env", "env", "--id", "id", "--compare", MODELS, "--no-figures", "--no-pev",
            "--out", str(out), *map(str, extra)]


def run_wrapped(args, calls, hang=None, **kwargs):
    env = dict(os.environ, HETVC_TEST_CALLS=str(calls), OPENBLAS_NUM_THREADS="1")
    env.pop("HETVC_TEST_HANG", None)
    if hang:
        env["HETVC_TEST_HANG"] = hang
    return subprocess.Popen([sys.executable, "-c", WRAPPER, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kwargs)


def wait_for(condition, proc, what, limit=120.0):
    t0 = time.monotonic()
    while not condition():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"the command ended ({proc.returncode}) before {what}:\n{out}\n{err}")
        if time.monotonic() - t0 > limit:
            proc.kill()
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_ctrl_c_keeps_finished_fits_and_a_rerun_resumes(trial, tmp_path):
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    first = out / "fits" / "homogeneous-homogeneous.json"
    proc = run_wrapped(fit_args(trial, out), calls, hang="heterogeneous/homogeneous")
    # the first model is on disk and the second is being fitted (asleep): interrupt
    wait_for(lambda: first.exists() and "heterogeneous/homogeneous" in calls.read_text(), proc,
             "the first fit was written")
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (stdout, stderr)
    assert "interrupted: 1 of 3 models fitted (homogeneous/homogeneous)" in stderr
    assert "run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    kept = first.read_bytes()
    assert hetvc.load(first).converged
    # the report of the finished model, saying what was not fitted
    report = (out / "report.md").read_text()
    assert "Incomplete: interrupted before 2 model(s) were fitted" in report
    assert "heterogeneous/homogeneous, unstructured/homogeneous" in report
    summary = json.loads((out / "summary.json").read_text())
    assert [m["model"] for m in summary["models"]] == ["homogeneous/homogeneous"]
    assert summary["data"]["not_fitted"] == ["heterogeneous/homogeneous", "unstructured/homogeneous"]
    # a pipeline reading "selected" can tell that the run is incomplete
    assert summary["complete"] is False and summary["converged"] is False
    assert summary["not_fitted"] == ["heterogeneous/homogeneous", "unstructured/homogeneous"]

    # the same command again: the finished model is reused, not refitted
    calls.write_text("")
    proc = run_wrapped(fit_args(trial, out), calls)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, (stdout, stderr)
    assert "[1/3] homogeneous/homogeneous: reused" in stderr
    assert calls.read_text().split() == ["heterogeneous/homogeneous", "unstructured/homogeneous"]
    assert first.read_bytes() == kept  # identical, not rewritten
    comp = pd.read_csv(out / "comparison.csv")
    assert list(comp["model"]) == ["homogeneous/homogeneous", "heterogeneous/homogeneous",
                                   "unstructured/homogeneous"]
    assert "Incomplete" not in (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["data"].get("not_fitted")
    assert summary["complete"] is True and summary["not_fitted"] == [] and summary["converged"] is True


def test_changed_options_refit_and_time_limits(trial, tmp_path):
    """A fit file made with other options is refitted; a fit stopped by --time-limit is kept
    (not converged, exit 3, nothing selected) and reused only under the same or a shorter limit."""
    out = tmp_path / "out"
    args = fit_args(trial, out, "--time-limit", "1e-9")
    args[args.index("--compare") + 1] = "homogeneous,heterogeneous"
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 3, res.output
    assert "time limit" in res.output and "raise --time-limit" in res.output
    assert "No model converged" in res.output
    for name in ("homogeneous-homogeneous", "heterogeneous-homogeneous"):
        fit = hetvc.load(out / "fits" / f"{name}.json")
        assert fit.record["status"] == "time limit" and not fit.converged
    assert not (out / "fit.json").exists()  # nothing selected
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selected"] is None and set(summary["excluded"]) == {
        "homogeneous/homogeneous", "heterogeneous/homogeneous"}
    assert "No model converged, so none is selected" in (out / "report.md").read_text()

    res = CliRunner().invoke(main, args)  # the same limit: reused
    assert res.exit_code == 3 and res.output.count(": reused ") == 2, res.output
    args[args.index("--time-limit") + 1] = "60"  # a longer limit may get further: refitted
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "stopped by a shorter time limit: fitting again" in res.output
    assert hetvc.load(out / "fit.json").converged
    res = CliRunner().invoke(main, args + ["--tol", "1e-6"])  # other options: refitted
    assert res.exit_code == 0, res.output
    assert res.output.count("made with other inputs or options: fitting again") == 2
    res = CliRunner().invoke(main, args + ["--tol", "1e-6"])
    assert res.output.count(": reused ") == 2, res.output


def test_inputs_fingerprint_follows_the_data_rows_used(trial):
    from hetvc.cli.fit import fit_inputs
    from hetvc.kinship import read_kinship

    data = pd.read_csv(trial / "pheno.csv", dtype={"id": str})
    K = read_kinship(trial / "kinship.csv")
    opts = dict(traits=["t1", "t2"], env="env", id="id", fixed=None, method="reml", tol=1e-8,
                max_iter=200, engine="auto", pev=True, genetic="homogeneous", residual="homogeneous")
    base = fit_inputs(data, K, **opts)
    assert fit_inputs(data.assign(other=1.0), K, **opts) == base  # a column the fit does not use
    changed = data.copy()
    changed.loc[3, "t2"] += 1.0
    assert fit_inputs(changed, K, **opts)["data"] != base["data"]
    assert fit_inputs(data.assign(x=1.0), K, **{**opts, "fixed": "~ x"})["data"] != base["data"]
    assert fit_inputs(data, K * 2, **opts)["kinship"] != base["kinship"]
    assert fit_inputs(data, K, **{**opts, "max_iter": 50}) != base
