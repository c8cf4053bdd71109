"""The simulation study under load (issue 15): per-fit cost inside ``hetvc.study.run``, on a
quiet machine and while another process keeps one core busy, against the same replicates
simulated and fitted in this process, one after another (the isolated cost).

    python benchmarks/bench_study_load.py [--replicates 8] [--markdown docs/benchmarks.md]

The paper's design (n = 1000, 3 traits, 4 locations, 500 SNPs), w ∈ {0, 1}, ρ = 0.5; both
models (homogeneous, heterogeneous) fitted to every replicate.  Per row: the study's wall time,
fits, wall seconds per fit (the study's throughput), and the median of the per-fit ``seconds``
column of ``results.csv`` (a fit's own wall time inside its worker); ``ratio to quiet``: wall per
fit against the quiet study's with the same workers (the isolated run: against itself).  With
one of 2 cores busy the study has about one core less: fair sharing alone makes its wall per fit
1.5× (3 processes on 2 cores); BLAS threads spinning on the busy core made it 4× (issue 15).  The busy core is a process spinning
``while True: pass``, started before the row and terminated after it.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from hetvc import study
from hetvc.fitting import build_model, fit_model
from hetvc.options import FitOptions
from hetvc.simulate import simulate
from hetvc.study.scenario import replicate_seed

from _load import busy_cores
from _report import Report, add_markdown_option, row, table

HEADERS = ["run", "load", "fits", "wall s", "wall s per fit", "median fit s", "ratio to quiet"]
ALIGN = "llrrrrr"


def _isolated(scenarios, replicates: int, seed: int) -> tuple[float, int, list]:
    """Simulate and fit every replicate here, one BLAS thread: (seconds, fits, per-fit seconds)."""
    per_fit, t0 = [], time.perf_counter()
    for r in range(replicates):
        for sc in scenarios:
            sim = simulate(n=sc.n, traits=sc.traits, locations=sc.locations, snps=sc.snps, h2=sc.h2, w=sc.w,
                           rho=sc.rho, seed=replicate_seed(seed, sc, r))
            for model in ("homogeneous", "heterogeneous"):
                t1 = time.perf_counter()
                fit_model(build_model(sim.pheno, sim.K, list(sim.truth.traits), env="env", id="id",
                                      genetic=model), FitOptions(pev=False, threads=1))
                per_fit.append(time.perf_counter() - t1)
    return time.perf_counter() - t0, len(per_fit), per_fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicates", type=int, default=8)
    parser.add_argument("--seed", type=int, default=20240917)
    add_markdown_option(parser)
    args = parser.parse_args()
    report = Report.from_args(args, __file__)
    scenarios = study.grid(w=[0.0, 1.0], rho=[0.5])
    cores = len(os.sched_getaffinity(0))

    seconds, fits, per_fit = _isolated(scenarios, args.replicates, args.seed)
    rows = [["isolated (this process, one after another)", "quiet", str(fits), f"{seconds:.1f}",
             f"{seconds / fits:.3f}", f"{sorted(per_fit)[len(per_fit) // 2]:.3f}", "1.00"]]
    print(table(HEADERS, rows, ALIGN), flush=True)
    quiet = {}
    for load, workers in (("quiet", cores), ("1 core busy", cores), ("quiet", 1), ("1 core busy", 1)):
        with busy_cores(0 if load == "quiet" else 1), tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = study.run(out, scenarios, args.replicates, seed=args.seed, workers=workers, progress=None,
                            summary=False)
            wall = time.perf_counter() - t0
        n = len(res.results)
        quiet.setdefault(workers, wall / n)
        rows.append([f"study.run, {workers} worker{'s' * (workers > 1)}", load, str(n), f"{wall:.1f}",
                     f"{wall / n:.3f}", f"{res.results['seconds'].median():.3f}", f"{wall / n / quiet[workers]:.2f}"])
        print(row(rows[-1]), flush=True)
    body = table(HEADERS, rows, ALIGN)
    print("\n" + body)
    report.write(body, notes=[
        f"study.grid(w=[0, 1], rho=[0.5]) (n = 1000, 3 traits, 4 locations, 500 SNPs), {args.replicates} replicates, "
        f"both models; {cores} cores; one BLAS thread per fit everywhere (hetvc's default)",
        "wall s per fit: the study's wall time / fits (with its start, simulation and writing); median fit s: "
        "the fits' own seconds (results.csv); ratio to quiet: wall per fit against the quiet run with the same workers",
    ])


if __name__ == "__main__":
    main()
