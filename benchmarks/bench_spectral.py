"""Spectral engine: whole-fit times and peak memory on the designs of issue 3, with the dense
engine and GEMMA beside it where they are feasible.

    python benchmarks/bench_spectral.py            # the full table (tens of minutes)
    python benchmarks/bench_spectral.py --quick    # small sizes, a smoke run (about a minute)
    options: --no-dense  --no-gemma  --no-trace (no second, traced fit)  --full-rank (also time full eigendecompositions of the
             largest kinships)  --rows paper,mvlmm1000,...  --gemma-timeout SECONDS
             --threads N (OPENBLAS_NUM_THREADS of every row; on a busy 2-core machine 1 is
             several times faster than OpenBLAS's default threading for these sizes)
             --markdown FILE (also write the table as this script's section of FILE)

Every row runs in its own process (so peak memory is its own).  Columns:

* ``fit s``: wall time of a first ``hetvc.fit`` on a K it has not seen: everything after the
  data are in memory — checking K (``check s``, included: labels, finiteness, symmetry and
  the PSD certificate of hetvc.kinship.psd), building the design, the eigendecompositions (a fresh
  EigenCache), AI-REML, BLUEs, BLUPs and (unless the row says "no PEV") PEVs for every
  genotype in K.  Refits on the checked K skip ``check s`` (a SHA-256 of K instead).
* ``eig``: how the kinship blocks were decomposed: ``eigh`` (LAPACK, full) or ``lowrank r``
  (pivoted Cholesky: K from p markers has rank ≤ p; exact, see hetvc.engines.spectral).
  ``full eigh`` rows force the full decomposition (EigenCache(low_rank=False)).
* ``peak MB``: the largest memory allocated during the fit beyond its inputs (tracemalloc,
  in a second, traced run of the same fit; numpy arrays are traced), and ``RSS MB``: the
  process's peak resident memory (includes the simulated data and K).
* ``dense s`` and ``ratio`` = dense / spectral on the same problem (same call path).
  ``eig``/``no PEV`` variants show where the time of the largest rows goes.
* GEMMA (``apt-get install gemma``): the same null model (mvLMM, one mean per trait, the same
  K written as text) run with one SNP; wall time of the process (reading the text K
  included) and GEMMA's own eigen-decomposition time; ``ℓ`` columns check that both reach
  the same REML maximum (GEMMA's REML log-likelihood adds ½·m·log n, its log|X'X| term).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc

import numpy as np

from _report import Report, add_markdown_option, table

# row: (label, simulate kwargs, fit kwargs, dense?, gemma?)
ROWS = {
    "paper": ("paper: 1000 × 3 traits, 4 loc, het", dict(n=1000, traits=3, locations=4),
              dict(env="env", genetic="heterogeneous", residual="homogeneous"), True, False),
    "mvlmm1000": ("mvLMM hom, n=1000, 3 traits", dict(n=1000, traits=3, locations=1),
                  dict(env=None, genetic="homogeneous", residual="homogeneous"), True, True),
    "mvlmm1000f": ("mvLMM hom, n=1000, full eigh", dict(n=1000, traits=3, locations=1),
                   dict(env=None, genetic="homogeneous", residual="homogeneous", low_rank=False), False, False),
    "mvlmm4000": ("mvLMM hom, n=4000, 3 traits", dict(n=4000, traits=3, locations=1),
                  dict(env=None, genetic="homogeneous", residual="homogeneous"), False, True),
    "mvlmm4000f": ("mvLMM hom, n=4000, full eigh", dict(n=4000, traits=3, locations=1),
                   dict(env=None, genetic="homogeneous", residual="homogeneous", low_rank=False), False, False),
    "mvlmm10000": ("mvLMM hom, n=10000, 3 traits", dict(n=10000, traits=3, locations=1),
                   dict(env=None, genetic="homogeneous", residual="homogeneous"), False, True),
    "nested20000": ("nested het, n=20000 (4 × 5000)", dict(n=20000, traits=3, locations=4),
                    dict(env="env", genetic="heterogeneous", residual="homogeneous"), False, False),
    "nested20000n": ("nested het, n=20000, no PEV", dict(n=20000, traits=3, locations=4),
                     dict(env="env", genetic="heterogeneous", residual="homogeneous", pev=False), False, False),
    "met": ("MET 2000 × 4 env × 2 traits, unstr", dict(n=2000, traits=2, locations=4, design="full"),
            dict(env="env", genetic="unstructured", residual="heterogeneous"), False, False),
    "metf": ("MET 2000 × 4 × 2, unstr, full eigh", dict(n=2000, traits=2, locations=4, design="full"),
             dict(env="env", genetic="unstructured", residual="heterogeneous", low_rank=False), False, False),
    # only with --full-rank: full eigendecompositions of the largest kinships
    "mvlmm10000f": ("mvLMM hom, n=10000, full eigh", dict(n=10000, traits=3, locations=1),
                    dict(env=None, genetic="homogeneous", residual="homogeneous", low_rank=False), False, False),
    "nested20000f": ("nested het, n=20000, full eigh", dict(n=20000, traits=3, locations=4),
                     dict(env="env", genetic="heterogeneous", residual="homogeneous", low_rank=False), False, False),
    "nested20000fn": ("nested het, n=20000, full eigh, no PEV", dict(n=20000, traits=3, locations=4),
                      dict(env="env", genetic="heterogeneous", residual="homogeneous", low_rank=False, pev=False),
                      False, False),
}
DEFAULT = ["paper", "mvlmm1000", "mvlmm1000f", "mvlmm4000", "mvlmm4000f", "mvlmm10000", "nested20000",
           "nested20000n", "met", "metf"]
FULL_RANK = ["mvlmm10000f", "nested20000f", "nested20000fn"]
QUICK = {  # the same rows at smoke-test sizes
    "paper": 200, "mvlmm1000": 300, "mvlmm1000f": 300, "mvlmm4000": 600, "mvlmm4000f": 600,
    "mvlmm10000": 900, "nested20000": 2000, "nested20000n": 2000, "met": 200, "metf": 200, "mvlmm10000f": 900,
    "nested20000f": 2000, "nested20000fn": 2000,
}


def _simulate(sim_kw: dict, quick: bool, row: str):
    from hetvc.simulate import simulate

    kw = dict(sim_kw)
    if quick:
        kw["n"] = QUICK[row]
    return simulate(snps=500, h2=0.4, w=0.5, rho=0.5, seed=1, **kw)


def _fit_once(sim, fit_kw: dict, engine: str):
    """One fit through hetvc.fit on a fresh (unchecked) copy of the frame of K; returns (dict,
    seconds of the whole fit, seconds of its kinship check)."""
    import pandas as pd

    import hetvc
    from hetvc.engines import EigenCache

    kw = dict(fit_kw)
    cache = EigenCache(low_rank=kw.pop("low_rank", True))
    traits = sim.truth.traits
    fresh = pd.DataFrame(sim.K.to_numpy(), index=sim.K.index, columns=sim.K.columns, copy=False)
    t0 = time.perf_counter()
    K = hetvc.check_kinship(fresh)  # what hetvc.fit does first with an unchecked K
    check_s = time.perf_counter() - t0
    r = hetvc.fit(sim.pheno, K, traits, engine=engine, eigen=cache, **kw)
    out = dict(loglik=r.loglik, theta=r.theta, engine=r.engine, reason=r.engine_reason,
               iterations=r.record["iterations"], status=r.record["status"], k=r.n_params)
    return out, time.perf_counter() - t0, check_s


def _eig_label(reason: str, low_rank: bool) -> str:
    if "low-rank K: pivoted Cholesky (rank" in reason:
        r = reason.split("(rank ")[1].split(" of")[0]
        return f"lowrank {r}" + ("+" if "more)" in reason else "")
    return "eigh" if low_rank else "full eigh"


def _gemma(sim, workdir: str, timeout: float) -> dict:
    """GEMMA's mvLMM null model on the same data and K (text files), with one SNP."""
    K = sim.K.to_numpy()
    ids = [str(i) for i in sim.K.index]
    kfile, pfile, gfile = (os.path.join(workdir, f) for f in ("K.txt", "pheno.txt", "geno.txt"))
    np.savetxt(kfile, K, fmt="%.12g")
    pheno = sim.pheno.set_index("id").loc[ids, sim.truth.traits].to_numpy()
    np.savetxt(pfile, pheno, fmt="%.12g")
    g = sim.genotypes.iloc[:, 0].to_numpy()
    with open(gfile, "w") as f:
        f.write("rs1, A, T, " + ", ".join(f"{v:g}" for v in g) + "\n")
    m = pheno.shape[1]
    cmd = ["gemma", "-g", gfile, "-p", pfile, "-k", kfile, "-lmm", "1", "-n", *map(str, range(1, m + 1)),
           "-o", "bench", "-outdir", workdir]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=workdir, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return dict(gemma_s=None, gemma_note=f"> {timeout:.0f} s (timeout)")
    wall = time.perf_counter() - t0
    log = os.path.join(workdir, "bench.log.txt")
    if proc.returncode != 0 or not os.path.exists(log):
        return dict(gemma_s=None, gemma_note=f"failed: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    text = open(log).read()
    out = dict(gemma_s=wall)
    for line in text.splitlines():
        if "time on eigen-decomposition" in line:
            out["gemma_eig_s"] = 60 * float(line.split("=")[1].split()[0])
        if "REMLE log-likelihood in the null model" in line:
            out["gemma_loglik"] = float(line.split("=")[1])
    return out


def run_row(row: str, quick: bool, dense: bool, gemma: bool, gemma_timeout: float, trace: bool = True) -> dict:
    label, sim_kw, fit_kw, with_dense, with_gemma = ROWS[row]
    sim = _simulate(sim_kw, quick, row)
    n = len(sim.K)
    res, secs, check_s = _fit_once(sim, fit_kw, "auto")
    out = dict(row=row, label=label, n=n, N=int(sim.pheno[sim.truth.traits].notna().to_numpy().sum()),
               k=res["k"], engine=res["engine"], eig=_eig_label(res["reason"], fit_kw.get("low_rank", True)),
               fit_s=secs, check_s=check_s, iterations=res["iterations"], status=res["status"],
               loglik=res["loglik"])
    if trace:  # memory: the same fit again under tracemalloc (fresh cache)
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        _fit_once(sim, fit_kw, "auto")
        out["peak_mb"] = (tracemalloc.get_traced_memory()[1] - base) / 2 ** 20
        tracemalloc.stop()
    if dense and with_dense:
        dres, dsecs, _ = _fit_once(sim, fit_kw, "dense")
        out.update(dense_s=dsecs, dense_dloglik=abs(dres["loglik"] - res["loglik"]),
                   dense_dtheta=float(np.max(np.abs(dres["theta"] - res["theta"]) / np.max(np.abs(res["theta"])))))
    if gemma and with_gemma:
        if shutil.which("gemma") is None:
            out["gemma_note"] = "not installed"
        else:
            with tempfile.TemporaryDirectory() as wd:
                out.update(_gemma(sim, wd, gemma_timeout))
            if "gemma_loglik" in out:  # GEMMA's REML ℓ adds ½·m·log|W'W| = ½·m·log n (intercept only)
                m = len(sim.truth.traits)
                out["gemma_dloglik"] = out["gemma_loglik"] - 0.5 * m * np.log(n) - res["loglik"]
    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def _fmt(v, spec, missing="—"):
    return missing if v is None else format(v, spec)


def print_table(results: list, header: str) -> None:
    print(header)
    cols = (f"{'design':<39} {'n':>6} {'N':>6} {'k':>3} {'eig':>12} {'iter':>4} {'fit s':>8} {'check s':>7} "
            f"{'peak MB':>8} {'RSS MB':>7} {'dense s':>8} {'ratio':>6} {'GEMMA s':>8} {'(eig s)':>8} {'Δℓ GEMMA':>9}")
    print(cols)
    print("-" * len(cols))
    for r in results:
        if "error" in r:
            print(f"{r['label']:<39} failed: {r['error']}")
            continue
        ratio = r["dense_s"] / r["fit_s"] if r.get("dense_s") else None
        gem = _fmt(r.get("gemma_s"), "8.2f", r.get("gemma_note", "—"))
        print(f"{r['label']:<39} {r['n']:>6} {r['N']:>6} {r['k']:>3} {r['eig']:>12} "
              f"{r['iterations']:>4} {r['fit_s']:>8.2f} {r['check_s']:>7.2f} {_fmt(r.get('peak_mb'), '8.0f'):>8} {r['rss_mb']:>7.0f} "
              f"{_fmt(r.get('dense_s'), '8.2f'):>8} {_fmt(ratio, '6.0f'):>6} {gem:>8} "
              f"{_fmt(r.get('gemma_eig_s'), '8.2f'):>8} {_fmt(r.get('gemma_dloglik'), '9.1e'):>9}")
    for note in _notes(results):
        print("  " + note)


def _notes(results: list) -> list:
    """The checks under the table: low-rank against full decompositions, dense against
    spectral, optimizer statuses other than converged."""
    notes = []
    by_row = {r["row"]: r for r in results if "error" not in r}
    for row, r in by_row.items():
        full = by_row.get(row + "f")
        if full is not None:
            notes.append(f"{r['label']}: ℓ with {r['eig']} − ℓ with full eigh = {r['loglik'] - full['loglik']:.1e}")
    for r in results:
        if r.get("dense_s"):
            notes.append(f"{r['label']}: dense vs spectral |Δℓ| = {r['dense_dloglik']:.1e}, "
                         f"max |Δθ|/max|θ| = {r['dense_dtheta']:.1e}")
        if r.get("status") not in (None, "converged"):
            notes.append(f"{r['label']}: optimizer status {r['status']!r}")
    return notes


def markdown_table(results: list) -> str:
    """The table of print_table in Markdown (rows that failed say so in their first cells)."""
    rows = []
    for r in results:
        if "error" in r:
            rows.append([r["label"], *["—"] * 5, f"failed: {r['error']}", *["—"] * 8])
            continue
        ratio = r["dense_s"] / r["fit_s"] if r.get("dense_s") else None
        rows.append([r["label"], r["n"], r["N"], r["k"], r["eig"], r["iterations"], f"{r['fit_s']:.2f}",
                     f"{r['check_s']:.2f}", _fmt(r.get("peak_mb"), ".0f"), f"{r['rss_mb']:.0f}",
                     _fmt(r.get("dense_s"), ".2f"), _fmt(ratio, ".0f"),
                     _fmt(r.get("gemma_s"), ".2f", r.get("gemma_note", "—")), _fmt(r.get("gemma_eig_s"), ".2f"),
                     _fmt(r.get("gemma_dloglik"), ".1e")])
    return table(["design", "n", "N", "k", "eig", "iter", "fit s", "check s", "peak MB", "RSS MB", "dense s",
                  "ratio", "GEMMA s", "GEMMA eig s", "Δℓ GEMMA"], rows, "lrrrlrrrrrrrrrr")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (smoke run)")
    parser.add_argument("--no-dense", action="store_true")
    parser.add_argument("--no-gemma", action="store_true")
    parser.add_argument("--full-rank", action="store_true", help="also full eigh of the 10000 and 20000 kinships")
    parser.add_argument("--rows", default=None, help="comma-separated subset of: " + ",".join(ROWS))
    parser.add_argument("--gemma-timeout", type=float, default=1200.0)
    parser.add_argument("--no-trace", action="store_true", help="skip the second, traced fit (no peak MB)")
    parser.add_argument("--threads", type=int, default=None,
                        help="BLAS threads of the fits and GEMMA (OPENBLAS_NUM_THREADS; default: inherit)")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # internal: run one row, print JSON
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.row:
        try:
            res = run_row(args.row, args.quick, not args.no_dense, not args.no_gemma, args.gemma_timeout,
                          not args.no_trace)
        except Exception as err:  # report, do not hide
            res = dict(row=args.row, label=ROWS[args.row][0], error=f"{type(err).__name__}: {err}")
        print("RESULT " + json.dumps(res, default=float))
        return
    rows = args.rows.split(",") if args.rows else DEFAULT + (FULL_RANK if args.full_rank else [])
    report = Report.from_args(args, __file__, threads=args.threads)
    load = os.getloadavg()
    env = dict(os.environ)
    if args.threads:
        for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
            env[var] = str(args.threads)
    threads = env.get("OPENBLAS_NUM_THREADS", "default")
    header = (f"hetvc spectral engine benchmark{' (--quick sizes)' if args.quick else ''}: {os.cpu_count()} cores, "
              f"OPENBLAS_NUM_THREADS={threads}, load average at start {load[0]:.1f}")
    results = []
    for row in rows:
        cmd = [sys.executable, os.path.abspath(__file__), "--row", row]
        cmd += [a for a, on in (("--quick", args.quick), ("--no-dense", args.no_dense), ("--no-gemma", args.no_gemma),
                                ("--no-trace", args.no_trace)) if on]
        cmd += ["--gemma-timeout", str(args.gemma_timeout)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        res = json.loads(line[-1][7:]) if line else dict(row=row, label=ROWS[row][0],
                                                         error=(proc.stderr.strip().splitlines() or ["no output"])[-1])
        results.append(res)
        print(f"  [{row}: {time.perf_counter() - t0:.0f} s wall for the row, load {os.getloadavg()[0]:.1f}]",
              file=sys.stderr, flush=True)
    print_table(results, header)
    print(f"load average at end {os.getloadavg()[0]:.1f}")
    report.write(markdown_table(results), notes=[
        *(["`--quick`: smoke-test sizes, not the designs' own"] if args.quick else []),
        *_notes(results), f"load average at the end {os.getloadavg()[0]:.1f}"])


if __name__ == "__main__":
    main()
