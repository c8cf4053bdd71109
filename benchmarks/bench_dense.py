"""Dense engine: time per fit and per iteration against the floor of one Cholesky of V.

The paper's design (heterogeneous genetic, homogeneous residual, 3 traits, 4 locations, each
individual in one location), at N = 1000, 3000 and 6000 observed values.  The floor is one
``scipy.linalg.cholesky`` of an N×N positive definite matrix, timed in the same run.

    python benchmarks/bench_dense.py [--sizes 1000,3000,6000] [--engine dense] [--threads 1]
                                     [--markdown docs/benchmarks.md]

``--threads`` limits the BLAS threads (threadpoolctl) for the fits and the floor alike: on a
machine where another process holds a core, OpenBLAS's spinning threads can be 20× slower than
one thread.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.linalg as sla

import hetvc
from hetvc.simulate import simulate

from _report import Report, add_markdown_option, table


def cholesky_floor(n: int, rng) -> float:
    A = rng.standard_normal((n, n))
    V = A @ A.T / n + np.eye(n)
    t = time.perf_counter()
    sla.cholesky(V, lower=True, overwrite_a=True, check_finite=False)
    return time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,3000,6000")
    parser.add_argument("--engine", default="dense")
    parser.add_argument("--threads", type=int, default=None, help="BLAS threads (default: library default)")
    add_markdown_option(parser)
    args = parser.parse_args()
    if args.threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.threads)
    report = Report.from_args(args, __file__)
    rng = np.random.default_rng(0)
    print(f"{'N':>6} {'n':>5} {'k':>3} {'iter':>4} {'evals':>5} {'fit s':>8} {'s/iter':>8} "
          f"{'chol s':>8} {'iter/chol':>9} {'status':>10}")
    rows = []
    for N in (int(s) for s in args.sizes.split(",")):
        sim = simulate(n=N // 3, traits=3, locations=4, snps=500, h2=0.3, w=0.5, rho=0.5, seed=1)
        traits = list(sim.pheno.columns[2:5])
        t = time.perf_counter()
        fit = hetvc.fit(sim.pheno, sim.K, traits, env="env", id="id", genetic="heterogeneous",
                        engine=args.engine, pev=False)
        total = time.perf_counter() - t
        chol = cholesky_floor(fit.n_obs, rng)
        iters = max(fit.record["iterations"], 1)
        print(f"{fit.n_obs:>6} {N // 3:>5} {fit.n_params:>3} {iters:>4} {fit.record['evaluations']:>5} "
              f"{total:>8.2f} {total / iters:>8.3f} {chol:>8.3f} {total / iters / chol:>9.1f} "
              f"{fit.record['status']:>10}", flush=True)
        rows.append([fit.n_obs, N // 3, fit.n_params, iters, fit.record["evaluations"], f"{total:.2f}",
                     f"{total / iters:.3f}", f"{chol:.3f}", f"{total / iters / chol:.1f}", fit.record["status"]])
    report.write(table(["N", "n", "k", "iterations", "evaluations", "fit s", "s/iteration", "Cholesky s",
                        "iteration / Cholesky", "status"], rows, "rrrrrrrrrl"),
                 notes=[f"engine {args.engine!r}; `Cholesky s`: one scipy.linalg.cholesky of an N×N "
                        "positive definite matrix in the same run (the floor)"])


if __name__ == "__main__":
    main()
