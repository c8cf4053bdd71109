"""`hetvc cv` from files: outputs, a BGLR-style fold file, bad input, and resume after kill -9."""

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from click.testing import CliRunner

from conftest import simulated_trial
from hetvc.cli import main


@pytest.fixture(scope="module")
def trial(tmp_path_factory):
    return simulated_trial(tmp_path_factory, n=40, snps=100, seed=8)


def cv_args(trial, out, *extra):
    return ["cv", str(trial / "pheno.csv"), "--kinship", str(trial / "kinship.csv"), "--traits", "t1,t2",
            "--env", "env", "--id", "id", "--out", str(out), "--progress", "none", *map(str, extra)]


def test_cli_cv_writes_the_tables_and_reads_a_fold_file(trial, tmp_path):
    ids = pd.read_csv(trial / "pheno.csv", dtype={"id": str})["id"].unique()
    pd.DataFrame({"id": ids, "cv_fold": [1 + k % 4 for k in range(len(ids))]}).to_csv(tmp_path / "folds.csv", index=False)
    out = tmp_path / "cv"
    res = CliRunner().invoke(main, cv_args(trial, out, "--folds", tmp_path / "folds.csv", "--scheme", "cv1,cv2t",
                                           "--models", "homogeneous,unstructured", "--workers", "0", "--accuracy"))
    assert res.exit_code == 0, res.output
    assert "CV1, t1: predictive ability" in res.output and "CV2T, t2" in res.output
    fits = pd.read_csv(out / "fits.csv")
    assert sorted(fits.loc[fits["scheme"] == "CV1", "fold"].unique()) == [1, 2, 3, 4]  # the file's folds
    assert sorted(fits.loc[fits["scheme"] == "CV2T", "fold"].unique()) == [1, 2, 3, 4]  # as many
    table = pd.read_csv(out / "ability.csv")
    assert {"r", "se", "n_folds", "h2", "accuracy"} <= set(table.columns)
    pred = pd.read_csv(out / "predictions.csv", dtype={"id": str})
    folds = pd.read_csv(tmp_path / "folds.csv", dtype={"id": str}).set_index("id")["cv_fold"]
    cv1 = pred[pred["scheme"] == "CV1"]
    assert (cv1["fold"].to_numpy() == folds[cv1["id"]].to_numpy()).all()
    assert (out / "ability.png").stat().st_size > 0 and "## CV1, t1" in (out / "ability.md").read_text()


def test_fold_file_ids_stay_text(tmp_path):
    from hetvc.cli.cv import read_fold_file

    path = tmp_path / "folds.csv"
    path.write_text("line,cv_fold\n007,2\n010,10\n011,1\n")
    table = read_fold_file(path, id="genotype")
    assert list(table["genotype"]) == ["007", "010", "011"] and list(table["fold"]) == [2, 10, 1]


@pytest.mark.parametrize("extra, message", [
    (["--scheme", "cv3"], "--scheme 'cv3' is not one of"),
    (["--folds", "many"], "--folds takes a number of folds or a fold file"),
    (["--models", "banana"], "banana"),
    (["--env", "site"], "no column 'site'"),
])
def test_cli_cv_bad_input_is_one_line(trial, tmp_path, extra, message):
    args = cv_args(trial, tmp_path / "o", "--workers", "0")
    if extra[0] == "--env":
        args[args.index("--env") + 1] = extra[1]
        extra = []
    res = CliRunner().invoke(main, args + extra)
    assert res.exit_code == 2 and message in res.output, res.output
    assert "Traceback" not in res.output


def test_cv_resumes_after_kill_9(trial, tmp_path):
    out = tmp_path / "cv"
    args = cv_args(trial, out, "--scheme", "cv1,cv2", "--folds", "4", "--models", "homogeneous,heterogeneous",
                   "--workers", "1", "--no-figures")
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1")
    code = "from hetvc.cli import main; main(prog_name='hetvc')"
    proc = subprocess.Popen([sys.executable, "-c", code, *args[0:]], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    t0 = time.monotonic()
    while not (out / "folds").is_dir() or len(list((out / "folds").glob("cv*.json"))) < 2:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < 120, "no fold finished in 2 minutes"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the coordinator and its workers, at once
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (out / "folds").glob("cv*.json")}
    assert 2 <= len(done) < 16
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    after = {p.name: p.stat().st_mtime_ns for p in (out / "folds").glob("*")}
    assert len(after) == 16  # and no temporary file of a write the kill cut short and all(after[k] == v for k, v in done.items())  # kept, not refitted
    fresh = CliRunner().invoke(main, cv_args(trial, tmp_path / "fresh", "--scheme", "cv1,cv2", "--folds", "4",
                                             "--models", "homogeneous,heterogeneous", "--workers", "0",
                                             "--no-figures"))
    assert fresh.exit_code == 0, fresh.output
    pd.testing.assert_frame_equal(pd.read_csv(out / "predictions.csv"), pd.read_csv(tmp_path / "fresh" / "predictions.csv"))
