"""The mixed-model-equations engine at scale (issue 15): whole fits, time, iterations, peak memory.

(a) Replicated and unbalanced: G genotypes (the GRM of 1,000 simulated markers, rank ≤ 1,000,
    which the MME engine takes through its factor K = WW') × 6 environments × 2 traits, 2 replicate plots, 10 % of the values missing; genetic homogeneous,
    heterogeneous and fa2 (``--structures``), residual homogeneous.  Beside each fit, the time of one dense Cholesky of
    the largest block of V the dense engine would factor (the price of one of its iterations;
    run when it fits in memory).
(b) Animal model: a simulated pedigree over 10 generations, 2 traits, random dam and year
    effects, the genetic term by the pedigree's A⁻¹ (never A).

    python benchmarks/bench_mme.py [--genotypes 1500] [--big] [--animals 50000] [--only a|b]
                                   [--markdown docs/benchmarks.md]

``--big`` adds 5,000 genotypes (≈ 110,000 values).  Peak memory is the growth of the process's
peak resident set during the fit (ru_maxrss; the dense Cholesky runs in a child process), so
a fit that needs less than an earlier one shows 0."""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import pandas as pd
import scipy.linalg as sla
from threadpoolctl import threadpool_limits

import hetvc
from hetvc.engines.dense import available_memory, independent_blocks
from hetvc.kinship.pedigree import Pedigree, _meuwissen_luo

from _report import Report, add_markdown_option, table

HEADERS = ["design", "N", "genetic", "engine", "equations", "fit s", "AI iterations", "status",
           "peak MB", "one dense Cholesky s"]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def trial(n_geno: int, seed: int = 1, envs: int = 6, reps: int = 2, missing: float = 0.1,
          snps: int = 1000):
    """(data, K): a replicated trial with the GRM K = MM'/snps of simulated standardised
    markers (rank ≤ snps), values drawn from a heterogeneous genetic model."""
    rng = np.random.default_rng(seed)
    f = rng.uniform(0.05, 0.5, snps)
    M = rng.binomial(2, f, size=(n_geno, snps)).astype(float)
    M = (M - M.mean(0)) / np.maximum(M.std(0), 1e-12) / np.sqrt(snps)
    K = M @ M.T
    ids = [f"g{j:05d}" for j in range(n_geno)]
    rows = []
    u = M @ rng.standard_normal((snps, envs * 2)) * np.sqrt(0.5)  # Var = K ⊗ …
    u[:, 0::2] += (M @ rng.standard_normal(snps))[:, None]  # a shared part: genetic correlation
    for l in range(envs):
        for r in range(reps):
            e = rng.standard_normal((n_geno, 2)) @ np.array([[1.0, 0.3], [0.0, 0.95]])
            y = 10 + l + u[:, 2 * l:2 * l + 2] + e
            rows.append(pd.DataFrame({"id": ids, "env": f"E{l + 1}", "rep": r + 1, "t1": y[:, 0], "t2": y[:, 1]}))
    data = pd.concat(rows, ignore_index=True)
    for t in ("t1", "t2"):
        data.loc[rng.random(len(data)) < missing, t] = np.nan
    data = data[data[["t1", "t2"]].notna().any(axis=1)].reset_index(drop=True)
    return data, pd.DataFrame(K, index=ids, columns=ids)


def animal_model(n: int, generations: int = 10, seed: int = 2):
    """(data, pedigree): ``n`` animals in ``generations`` equal generations (the first founders);
    each later one has sires among 2 % and dams among half of the previous generation, a record
    with 2 traits (10 % missing) in the year of its generation, a dam effect and a year effect."""
    rng = np.random.default_rng(seed)
    per = n // generations
    sire = np.full(n, -1)
    dam = np.full(n, -1)
    for g in range(1, generations):
        prev = np.arange((g - 1) * per, g * per)
        males, females = prev[: max(per // 50, 2)], prev[per // 2:]
        idx = np.arange(g * per, (g + 1) * per)
        sire[idx] = rng.choice(males, per)
        dam[idx] = rng.choice(females, per)
    ids = [f"a{i:06d}" for i in range(n)]
    ped = Pedigree(ids, sire, dam)
    # breeding values by Mendelian sampling: u_i = ½(u_s + u_d) + m_i, Var(m_i) = D_i ΣA
    D = _meuwissen_luo(ped)[1]
    SA = np.array([[1.0, 0.4], [0.4, 0.8]])
    LA = np.linalg.cholesky(SA)
    u = np.zeros((n, 2))
    m = rng.standard_normal((n, 2)) @ LA.T * np.sqrt(D)[:, None]
    for g in range(generations):
        idx = np.arange(g * per, (g + 1) * per)
        s, d = sire[idx], dam[idx]
        parents = 0.5 * (np.where(s[:, None] >= 0, u[np.maximum(s, 0)], 0) + np.where(d[:, None] >= 0, u[np.maximum(d, 0)], 0))
        u[idx] = parents + m[idx]
    rec = np.arange(per, n)  # every non-founder has a record
    year = rec // per
    dam_eff = rng.standard_normal((n, 2)) * 0.5
    year_eff = rng.standard_normal((generations, 2)) * 0.7
    y = 5 + u[rec] + dam_eff[dam[rec]] + year_eff[year] + rng.standard_normal((len(rec), 2)) @ np.array([[1, 0.2], [0, 1]])
    data = pd.DataFrame({"id": [ids[i] for i in rec], "dam": [ids[i] for i in dam[rec]],
                         "year": [f"y{v}" for v in year], "t1": y[:, 0], "t2": y[:, 1]})
    for t in ("t1", "t2"):
        data.loc[rng.random(len(data)) < 0.05, t] = np.nan
    data = data[data[["t1", "t2"]].notna().any(axis=1)].reset_index(drop=True)
    return data, ped


def one_cholesky(model) -> float:
    """Seconds of one Cholesky of a positive definite matrix of the size of the dense engine's
    largest block of V (NaN when it would not fit in memory), in a child process so that its
    memory does not count in the fits' peak."""
    n = max(len(b) for b in independent_blocks(model.terms(), model.design.n_obs))
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_cholesky_seconds, n).result()


def _cholesky_seconds(n: int) -> float:
    threadpool_limits(1)
    have = available_memory()
    if have is not None and 8.0 * n * n > 0.7 * have:
        return float("nan")
    V = np.full((n, n), 0.5)  # positive definite: 0.5·J + n·I
    V[np.diag_indices(n)] += n
    t = time.perf_counter()
    sla.cholesky(V, lower=True, overwrite_a=True, check_finite=False)
    return time.perf_counter() - t


def run_fit(model):
    before = peak_mb()
    t = time.perf_counter()
    fit = hetvc.fit_model(model, hetvc.FitOptions(pev=True))
    return fit, time.perf_counter() - t, peak_mb() - before



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotypes", default="1500")
    parser.add_argument("--big", action="store_true", help="add 5,000 genotypes (≈ 110,000 values)")
    parser.add_argument("--animals", type=int, default=50000)
    parser.add_argument("--only", choices=["a", "b"], default=None)
    parser.add_argument("--structures", default="homogeneous,heterogeneous,fa2",
                        help="genetic structures of the trials (a)")
    parser.add_argument("--threads", type=int, default=1)
    add_markdown_option(parser)
    args = parser.parse_args()
    report = Report.from_args(args, __file__, threads=args.threads)
    rows, reasons = [], []
    sizes = [int(v) for v in args.genotypes.split(",")] + ([5000] if args.big else [])
    with threadpool_limits(args.threads):
        if args.only != "b":
            for n in sizes:
                data, K = trial(n)
                for genetic in args.structures.split(","):
                    model = hetvc.build_model(data, K, ["t1", "t2"], env="env", id="id", genetic=genetic)
                    fit, secs, mb = run_fit(model)
                    chol = one_cholesky(model)
                    rows.append([f"trial {n:,} × 6 × 2, 2 reps", f"{model.design.n_obs:,}", genetic, fit.engine,
                                 _unknowns(fit.engine_reason), f"{secs:.1f}", fit.record["iterations"], fit.record["status"],
                                 f"{mb:.0f}", "–" if np.isnan(chol) else f"{chol:.1f}"])
                    print(rows[-1], "|", fit.engine_reason, flush=True)
                    reasons.append(f"engine_reason, {n:,} genotypes, {genetic}: "
                                   f"`{fit.engine_reason.split('; ')[0]}; …; {fit.engine_reason.rsplit('; ', 1)[-1]}`")
        if args.only != "a":
            data, ped = animal_model(args.animals)
            model = hetvc.build_model(data, ped, ["t1", "t2"], id="id", genetic="homogeneous",
                                      random=["dam", "year"])
            fit, secs, mb = run_fit(model)
            rows.append([f"animal model, pedigree of {args.animals:,}, dam + year", f"{model.design.n_obs:,}",
                         "homogeneous (A⁻¹)", fit.engine, _unknowns(fit.engine_reason), f"{secs:.1f}",
                         fit.record["iterations"], fit.record["status"], f"{mb:.0f}", "–"])
            print(rows[-1], "|", fit.engine_reason, flush=True)
    align = "lrllrrrlrr"
    print(table(HEADERS, rows, align))
    report.write(table(HEADERS, rows, align), notes=[
        "one BLAS thread; the machine is shared (2 cores, other jobs running), so times are noisy",
        "equations: unknowns of the mixed-model equations, fixed and random effects (from engine_reason); "
        "– for the dense engine",
        "each fit is hetvc.fit_model: engine choice, AI-REML (with its extra starts for a nonlinear structure), "
        "BLUEs, BLUPs with PEVs and the result's diagnostics",
        "one dense Cholesky: of the largest block of V the dense engine would factor, in the same run "
        "(one of its iterations costs about three times that: factor, inverse, products); – where it "
        "does not fit in memory",
        "the trials' GRM has rank 1,000 (1,000 markers): the genetic part of the equations has 1,000 × d "
        "unknowns per block of ΣG, whatever the number of genotypes"] + reasons)


def _unknowns(reason: str) -> str:
    return reason.split(" equations for")[0].rsplit("; ", 1)[-1] if " equations for" in reason else "–"


if __name__ == "__main__":
    main()
