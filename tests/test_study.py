"""Tests for hetvc.study (grid runner, seeds, resume after kills, Dask) and its summaries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from hetvc import study as st
from hetvc.study.folder import lock_folder
from hetvc.study.results_file import encode_row
from hetvc.errors import InputError

# A tiny grid: each task (simulate + two fits) takes a few hundredths of a second.
TINY = dict(n=60, traits=2, locations=2, snps=50)
FLOATS = ["loglik", "aic", "bic", "h2_pooled", "h2_pooled_true"]
EXACT = ["scenario", "replicate", "seed", "model", "status", "engine", "converged", "iterations", "n_params",
         "h2_pooled_traits", "g_env_true"]


def tiny_grid(w=(0.0, 1.0), rho=(0.5,)):
    return st.grid(**TINY, w=list(w), rho=list(rho))


def same_rows(a: pd.DataFrame, b: pd.DataFrame, rtol=1e-9):
    """Equal fits: keys, seeds, iterations exactly; floats to rounding (BLAS builds/threads)."""
    key = ["scenario", "replicate", "model"]
    a = a.sort_values(key).reset_index(drop=True)
    b = b.sort_values(key).reset_index(drop=True)
    assert len(a) == len(b)
    pd.testing.assert_frame_equal(a[EXACT[:-2] + ["iterations"]], b[EXACT[:-2] + ["iterations"]], check_dtype=False)
    for c in FLOATS:
        np.testing.assert_allclose(a[c].astype(float), b[c].astype(float), rtol=rtol, atol=1e-12, err_msg=c)
    for c in ("h2_pooled_traits", "g_env"):
        np.testing.assert_allclose(st.json_table(a, c), st.json_table(b, c), rtol=1e-7, atol=1e-10, err_msg=c)


def reference_rows(scenarios, replicates, seed=st.DEFAULT_SEED):
    """The rows computed in this process, one task at a time (no scheduler at all)."""
    rows = []
    for task in st.tasks(scenarios, replicates, seed):
        rows += st.run_task(task)
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "tiny"
    res = st.run(out, tiny_grid(), 2, workers=0, progress=None)  # in this process, no pool
    return out, res


# ---------------------------------------------------------------------------------------
# grid and seeds


def test_grid_order_and_validation():
    g = st.grid(n=100, w=[0, 0.5], rho=[0.25, 0.75])
    assert [(s.w, s.rho) for s in g] == [(0, 0.25), (0, 0.75), (0.5, 0.25), (0.5, 0.75)]
    assert g[0].key == "n100-m3-L4-p500-h0.3-w0.0-r0.25"
    assert len(st.grid(w=[0, 0.0, 0], rho=0.5)) == 1  # duplicates collapse
    assert len(st.grid()) == 18
    with pytest.raises(InputError, match="w must be in"):
        st.Scenario(w=1.5)
    with pytest.raises(InputError, match="too small"):
        st.Scenario(n=5, locations=4)
    with pytest.raises(InputError, match="rho"):
        st.Scenario(traits=3, rho=-0.6)


def test_seeds_depend_only_on_seed_scenario_and_replicate():
    a, b = st.grid(w=[0, 0.2, 0.4]), st.grid(w=[0.4, 0.2])  # other grid, other order
    sa = {(s.key, r): st.replicate_seed(7, s, r) for s in a for r in range(3)}
    sb = {(s.key, r): st.replicate_seed(7, s, r) for s in b for r in range(3)}
    assert all(sa[k] == v for k, v in sb.items())
    assert len(set(sa.values())) == len(sa)  # distinct across scenarios and replicates
    assert st.replicate_seed(8, a[0], 0) != sa[(a[0].key, 0)]
    # replicate-major task order; done fits are skipped, partially done tasks keep the rest
    sc = tiny_grid()
    done = {(sc[0].key, 0, "homogeneous"), (sc[1].key, 0, "homogeneous"), (sc[1].key, 0, "heterogeneous")}
    ts = st.tasks(sc, 2, 1, done=done)
    assert [(t.scenario.w, t.replicate, t.models) for t in ts] == [
        (0.0, 0, ("heterogeneous",)), (0.0, 1, st.MODELS), (1.0, 1, st.MODELS)]
    assert ts[1].seed == st.replicate_seed(1, sc[0], 1)


# ---------------------------------------------------------------------------------------
# the runner


def test_run_writes_rows_summaries_and_resumes(tiny_study):
    out, res = tiny_study
    df = res.results
    assert len(df) == 2 * 2 * 2 and res.fits_run == 8 and res.fits_skipped == 0
    assert set(df["status"]) == {"ok"} and df["converged"].all()
    assert set(df["engine"]) == {"spectral"}
    assert not df.duplicated(["scenario", "replicate", "model"]).any()
    # both models of a replicate saw the same data
    assert (df.groupby(["scenario", "replicate"])["seed"].nunique() == 1).all()
    for name in ("results.csv", "study.json", "summary.csv", "table1.csv", "table1.md", "win_rates.csv",
                 "win_rates.md"):
        assert (out / name).exists(), name
    cfg = json.loads((out / "study.json").read_text())
    assert cfg["seed"] == st.DEFAULT_SEED and cfg["runs"][0]["fits"] == 8
    assert cfg["runs"][0]["machine"]["cores"] >= 1
    # the rows are exactly what a plain loop over run_task gives
    same_rows(df, reference_rows(tiny_grid(), 2))
    # resume: nothing to do; more replicates: only the new ones run
    again = st.run(out, tiny_grid(), 2, progress=None, summary=False)
    assert again.fits_run == 0 and again.fits_skipped == 8
    with pytest.raises(st.StudyError, match="seed"):
        st.run(out, tiny_grid(), 2, seed=3, progress=None)
    with pytest.raises(st.StudyError, match="max_iter"):
        st.run(out, tiny_grid(), 2, max_iter=5, progress=None)


def test_scheduling_does_not_change_results(tiny_study, tmp_path):
    """Two workers, another grid order, an extra scenario: the shared fits are identical."""
    _, res1 = tiny_study
    grid2 = tiny_grid(w=(1.0, 0.5, 0.0))
    res2 = st.run(tmp_path / "two", grid2, 2, workers=2, progress="log", log_every=0)
    assert len(res2.results) == 12
    shared = res2.results[res2.results["scenario"].isin(set(res1.results["scenario"]))]
    same_rows(res1.results, shared)
    assert (tmp_path / "two" / "summary.csv").exists()


def test_dask_local_cluster_matches_local_run(tiny_study, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    _, res1 = tiny_study
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        res = st.run(tmp_path / "dask", tiny_grid(), 2, scheduler=client, progress=None)
    assert res.backend.startswith("Dask")
    same_rows(res1.results, res.results)
    assert res.table1.equals(res1.table1) or np.allclose(
        res.table1.select_dtypes("number"), res1.table1.select_dtypes("number"), equal_nan=True)


def test_scheduler_errors(tmp_path):
    with pytest.raises(InputError, match="scheduler must be"):
        st.run(tmp_path / "x", tiny_grid(), 1, scheduler=42, progress=None)
    with pytest.raises(InputError, match="workers"):
        st.run(tmp_path / "y", tiny_grid(), 1, workers=-1, progress=None)
    with pytest.raises(InputError, match="models"):
        st.run(tmp_path / "z", tiny_grid(), 1, models=["nope"], progress=None)


# ---------------------------------------------------------------------------------------
# interruption: a killed worker, a killed study, a torn last line


def _descendants(pid: int) -> dict[int, int]:
    """{descendant pid: depth} of a process, from /proc (Linux)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            parent[int(d.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    out, frontier, depth = {}, [pid], 0
    while frontier:
        depth += 1
        frontier = [c for c, p in parent.items() if p in frontier]
        out.update({c: depth for c in frontier})
    return out


def _rows(path: Path) -> int:
    try:
        return max(0, path.read_bytes().count(b"\n") - 1)
    except FileNotFoundError:
        return 0


def _wait(cond, timeout=60.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            return False
        time.sleep(0.02)
    return True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
def test_resume_after_killed_worker_and_killed_study(tmp_path):
    out = tmp_path / "killed"
    grid_kw = dict(n=200, traits=2, locations=2, snps=100, w=[0.0, 1.0], rho=[0.5])
    reps = 4
    code = textwrap.dedent(f"""
        from hetvc.study import grid, run
        run({str(out)!r}, grid(**{grid_kw!r}), {reps}, workers=2, progress="log", log_every=0)
    """)
    log = open(tmp_path / "stderr.txt", "w")
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=log, stdout=log, start_new_session=True)
    try:
        results = out / "results.csv"
        assert _wait(lambda: _rows(results) >= 2), "the study wrote no row"
        # 1) kill one worker process (a grandchild: the forkserver's child) with SIGKILL
        workers = [p for p, depth in _descendants(proc.pid).items() if depth == 2]
        assert workers, "no worker process found"
        os.kill(workers[0], signal.SIGKILL)
        # the coordinator notices, restarts the pool and goes on writing rows
        assert _wait(lambda: "a worker process died" in (tmp_path / "stderr.txt").read_text()), "no restart"
        n_restart = _rows(results)
        assert _wait(lambda: _rows(results) >= n_restart + 2 or proc.poll() is not None)
        # 2) then kill the whole study (coordinator and workers) mid-run
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
    before = st.read_rows(out)
    assert not before.duplicated(["scenario", "replicate", "model"]).any()
    assert len(before) < 2 * reps * 2, "the study finished before it was killed"
    # 3) a torn last line (as if killed inside write()) and a damaged line
    data = results.read_bytes()
    header, first, rest = data.split(b"\n", 2)
    damaged = first[:-1] + (b"0" if first[-1:] != b"0" else b"1")  # its CRC no longer matches
    results.write_bytes(header + b"\n" + damaged + b"\n" + rest + first[:37])
    res = st.run(out, st.grid(**grid_kw), reps, workers=0, progress=None)
    df = res.results
    assert len(df) == 2 * reps * 2
    assert not st.read_rows(out).duplicated(["scenario", "replicate", "model"]).any()
    assert results.read_bytes().endswith(b"\n")
    # every row equals the fit computed directly from its seed (sample a few)
    sample = [t for t in st.tasks(st.grid(**grid_kw), reps)][::4]
    ref = pd.DataFrame([r for t in sample for r in st.run_task(t)])
    got = df.merge(ref[["scenario", "replicate", "model"]], on=["scenario", "replicate", "model"])
    same_rows(got, ref)


def test_results_file_repair_and_lock(tmp_path):
    rows = [dict(scenario="s", n=1, traits=1, locations=1, snps=1, h2=0.3, w=0.0, rho=0.5, replicate=r,
                 seed=r, model="homogeneous", status="ok", converged=True, h2_pooled=0.25 + r / 100,
                 error='a "quoted", text') for r in range(3)]
    path = tmp_path / "results.csv"
    with st.ResultsFile(path) as rf:
        rf.append(rows[:2])
    good = path.read_bytes()
    path.write_bytes(good + encode_row(rows[2])[:-9])  # torn: no CRC end, no newline
    with st.ResultsFile(path) as rf:
        assert rf.repaired > 0 and rf.dropped == 0
        assert path.read_bytes() == good
        rf.append(rows[2:])
    df = st.read_rows(path)
    assert list(df["replicate"]) == [0, 1, 2] and df["error"].iloc[0] == 'a "quoted", text'
    # a line whose CRC fails is dropped (file rewritten without it)
    lines = path.read_bytes().split(b"\n")
    lines[2] = lines[2].replace(b"0.26", b"0.96")
    path.write_bytes(b"\n".join(lines))
    with st.ResultsFile(path) as rf:
        assert rf.dropped == 1
    assert list(st.read_rows(path)["replicate"]) == [0, 2]
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(st.StudyError, match="not a hetvc study"):
        st.ResultsFile(tmp_path / "other.csv")
    # a second study in the same folder is refused while the first holds the lock
    lock = lock_folder(tmp_path)
    try:
        with pytest.raises(st.StudyError, match="another hetvc study"):
            st.run(tmp_path, tiny_grid(), 1, progress=None)
    finally:
        lock.close()


# ---------------------------------------------------------------------------------------
# summaries


def _frame():
    """A hand-made results frame: one scenario, two models, three replicates."""
    base = dict(scenario="s", n=10, traits=2, locations=2, snps=5, h2=0.3, w=0.5, rho=0.5, engine="x",
                h2_pooled_true=0.3, iterations=5, seconds=1.0)
    rows = []
    for r, (h_hom, h_het, conv_het) in enumerate([(0.20, 0.31, True), (0.22, 0.29, True), (0.24, 0.50, False)]):
        rows.append(dict(base, replicate=r, model="homogeneous", status="ok", converged=True, h2_pooled=h_hom,
                         aic=100.0 + r, bic=110.0 + r))
        rows.append(dict(base, replicate=r, model="heterogeneous", status="ok", converged=conv_het, h2_pooled=h_het,
                         aic=[99.0, 105.0, 90.0][r], bic=[112.0, 115.0, 95.0][r]))
    rows.append(dict(base, replicate=3, model="heterogeneous", status="error", converged=False, h2_pooled=np.nan,
                     aic=np.nan, bic=np.nan))
    rows.append(dict(base, replicate=3, model="homogeneous", status="ok", converged=True, h2_pooled=0.26,
                     aic=50.0, bic=50.0))
    return pd.DataFrame(rows)


def test_summary_maths():
    s = st.summarize(_frame()).set_index("model")
    hom, het = s.loc["homogeneous"], s.loc["heterogeneous"]
    # homogeneous: 0.20, 0.22, 0.24, 0.26 → mean 0.23, sd 0.0258199, se = sd/2
    assert hom["fits"] == 4 and hom["converged"] == 4 and hom["converged_share"] == 1.0 and hom["used"] == 4
    assert hom["h2_mean"] == pytest.approx(0.23)
    assert hom["h2_sd"] == pytest.approx(np.sqrt(((0.03 ** 2 + 0.01 ** 2) * 2) / 3))
    assert hom["h2_se"] == pytest.approx(hom["h2_sd"] / 2)
    assert hom["bias"] == pytest.approx(-0.07)
    # heterogeneous: 4 fits, 1 error, 1 not converged → mean of 0.31, 0.29
    assert het["fits"] == 4 and het["errors"] == 1 and het["converged"] == 2 and het["converged_share"] == 0.5
    assert het["h2_mean"] == pytest.approx(0.30) and het["h2_se"] == pytest.approx(0.01)
    assert st.summarize(_frame(), converged_only=False).set_index("model").loc["heterogeneous", "h2_mean"] \
        == pytest.approx((0.31 + 0.29 + 0.50) / 3)
    t = st.table1(st.summarize(_frame()))
    assert list(t.columns) == ["model", "w", "rho=0.5 h2", "rho=0.5 se", "rho=0.5 converged"]
    assert list(t["model"]) == ["homogeneous", "heterogeneous"]
    md = st.table1_markdown(st.summarize(_frame()))
    assert "| mvLMM, general VC (homogeneous) | 0.5 | 0.2300 ± 0.0129 (100%) |" in md
    assert "0.3000 ± 0.0100 (50%)" in md


def test_win_rates():
    wr = st.win_rates(_frame()).iloc[0]
    # replicate 3 has an error → 3 replicates compared; AIC: het wins r0, r2; BIC: hom wins r0, r1
    assert wr["replicates"] == 3
    assert wr["aic_heterogeneous"] == pytest.approx(2 / 3) and wr["aic_homogeneous"] == pytest.approx(1 / 3)
    assert wr["bic_homogeneous"] == pytest.approx(2 / 3) and wr["bic_heterogeneous"] == pytest.approx(1 / 3)
    md = st.win_rates_markdown(st.win_rates(_frame()))
    assert "| 0.5 | 0.5 | 3 | 33% | 67% | 67% | 33% |" in md


def test_paper_table_in_markdown():
    f = _frame().assign(w=0.2)
    md = st.table1_markdown(st.summarize(f), paper=True)
    assert "[0.2831]" in md and "[0.2889]" in md


# ---------------------------------------------------------------------------------------
# CLI and figures


def test_cli_runs_and_quick_defaults(tmp_path, monkeypatch):
    from hetvc.cli.study import COMMANDS, study

    assert COMMANDS == [study]
    out = tmp_path / "cli"
    args = ["--n", "60", "--traits", "2", "--locations", "2", "--snps", "50", "--w", "0,1", "--rho", "0.5",
            "--replicates", "1", "--workers", "0", "--no-plots", "--progress", "none", "--out", str(out)]
    res = CliRunner().invoke(study, args)
    assert res.exit_code == 0, res.output
    assert "4 fits run" in res.output and "| ρ = 0.5 |" in res.output
    assert (out / "table1.md").exists() and not (out / "figures").exists()
    res = CliRunner().invoke(study, args)
    assert "0 fits run, 4 already done" in res.output
    res = CliRunner().invoke(study, args[:-2] + ["--w", "a,b", "--out", str(out)])
    assert res.exit_code != 0 and "comma-separated" in str(res.exception)

    seen = {}

    def fake_run(out, scenarios, replicates, **kw):
        seen.update(scenarios=scenarios, replicates=replicates, **kw)
        raise KeyboardInterrupt

    monkeypatch.setattr(st, "run", fake_run)
    res = CliRunner().invoke(study, ["--quick", "--out", str(tmp_path / "q")])
    assert res.exit_code == 130 and "resume" in res.output
    assert [(s.n, s.w, s.rho) for s in seen["scenarios"]] == [(200, 0.0, 0.5), (200, 1.0, 0.5)]
    assert seen["replicates"] == 3
    CliRunner().invoke(study, ["--quick", "--n", "120", "--replicates", "2", "--out", str(tmp_path / "q")])
    assert {s.n for s in seen["scenarios"]} == {120} and seen["replicates"] == 2


def test_figures(tiny_study, tmp_path):
    from hetvc.study.figures import genetic_variance_bias, make_figures

    out, res = tiny_study
    paths = make_figures(out, res.results, folder=tmp_path / "fig")
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{b}.{e}" for b in ("figure1_correlations", "h2_vs_w", "genetic_variance_bias")
                           for e in ("png", "svg"))
    for p in paths:
        assert p.stat().st_size > 1000
        assert p.read_bytes()[:4] in (b"\x89PNG", b"<?xm")
    bias = genetic_variance_bias(res.results)
    assert set(bias["location"]) == {0, 1, 2} and bias["fits"].max() == 2
