"""BLAS threads with a busy core (issue 15): the paper's design fitted with the process's BLAS
settings (``threads=None``) and with one BLAS thread (``threads=1``, hetvc's default), on an
idle machine and while another process keeps one core busy.

    python benchmarks/bench_busy.py [--repeats 3] [--busy 1] [--markdown docs/benchmarks.md]

The paper's design: ``hetvc.simulate.simulate(n=1000, traits=3, locations=4, snps=500)``,
heterogeneous ΣG, homogeneous ΣE, REML, as ``hetvc.fit(..., threads=...)`` runs it (``build_model``
then ``fit_model``, both with those BLAS threads), on a K not checked before, as read from a file.
``build s``: build_model (the data and K checks: a pivoted Cholesky of K); ``fit s``: fit_model (engine, AI-REML, BLUEs,
BLUPs, PEVs); ``seconds``: both, the median of ``--repeats`` runs; ``ratio``: to threads=1 on
the idle machine.  The busy core is a ``multiprocessing`` process spinning ``while True: pass``
(``--busy N``: N of them), started before the rows of that load and terminated after.
With OpenBLAS, threads that wait for a busy core spin, so a fit of many small products can be
many times slower with the process's default threading (issue 15: 3.98 s against 0.19 s).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import pandas as pd
from threadpoolctl import threadpool_limits

from hetvc.fitting import build_model, fit_model
from hetvc.options import FitOptions
from hetvc.simulate import simulate

from _load import busy_cores
from _report import Report, add_markdown_option, row, table

HEADERS = ["setting", "load", "build s", "fit s", "seconds", "ratio", "logLik"]
ALIGN = "llrrrrr"


def _blas_threads() -> str:
    from threadpoolctl import threadpool_info

    counts = sorted({i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"})
    return "/".join(map(str, counts)) or "?"


def _time(sim, threads, repeats: int):
    builds, fits, totals, ll = [], [], [], None
    for _ in range(repeats):
        K = pd.DataFrame(sim.K.to_numpy(copy=True), index=sim.K.index, columns=sim.K.columns)  # unchecked
        t0 = time.perf_counter()
        with threadpool_limits(threads):  # as hetvc.fit does
            model = build_model(sim.pheno, K, list(sim.truth.traits), env="env", id="id",
                                genetic="heterogeneous", residual="homogeneous")
        t1 = time.perf_counter()
        res = fit_model(model, FitOptions(threads=threads))
        t2 = time.perf_counter()
        builds.append(t1 - t0)
        fits.append(t2 - t1)
        totals.append(t2 - t0)
        ll = res.loglik
    return statistics.median(builds), statistics.median(fits), statistics.median(totals), ll


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fits per row (the median is shown)")
    parser.add_argument("--busy", type=int, default=1, help="cores kept busy in the loaded rows")
    parser.add_argument("--seed", type=int, default=1)
    add_markdown_option(parser)
    args = parser.parse_args()

    report = Report.from_args(args, __file__)
    sim = simulate(n=1000, traits=3, locations=4, snps=500, seed=args.seed)
    default = _blas_threads()
    settings = [(f"threads=None (process: {default})", None), ("threads=1 (default)", 1)]
    fit_model(build_model(sim.pheno, sim.K, list(sim.truth.traits), env="env", id="id",
                          genetic="heterogeneous"), FitOptions(pev=False))  # warm up
    print(table(HEADERS, [], ALIGN))
    results = []
    for load in ("idle", f"{args.busy} core{'s' if args.busy > 1 else ''} busy"):
        with busy_cores(0 if load == "idle" else args.busy):
            for label, threads in settings:
                results.append((label, threads, load, *_time(sim, threads, args.repeats)))
                label, threads, load, b, f, s, ll = results[-1]
                print(row([label, load, f"{b:.2f}", f"{f:.2f}", f"{s:.2f}", "", f"{ll:.4f}"]), flush=True)
    base = next(s for _, t, load, _, _, s, _ in results if t == 1 and load == "idle")
    rows = [[label, load, f"{b:.2f}", f"{f:.2f}", f"{s:.2f}", f"{s / base:.2f}", f"{ll:.4f}"]
            for label, _, load, b, f, s, ll in results]
    body = table(HEADERS, rows, ALIGN)
    print("\n" + body)
    report.write(body, notes=[
        f"hetvc.simulate.simulate(n=1000, traits=3, locations=4, snps=500, seed={args.seed}); "
        f"heterogeneous/homogeneous REML; median of {args.repeats} fits per row; {os.cpu_count()} cores, "
        f"{args.busy} kept busy by a spinning process in the loaded rows",
        "build s: hetvc.build_model (K's checks), under the same threads as the fit (as hetvc.fit runs it)",
    ])


if __name__ == "__main__":
    main()
