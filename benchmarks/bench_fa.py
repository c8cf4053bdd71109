"""Factor-analytic ΣG on DROPS maize (246 hybrids × 10 environments × 2 traits, balanced:
spectral engine): ℓ, k, AIC, BIC and time of fa1–fa3 beside the structures they sit between.

    python benchmarks/bench_fa.py [--structures homogeneous,...] [--markdown docs/benchmarks.md]

Each row is one ``hetvc.fit`` with a heterogeneous residual, one BLAS thread, no PEVs.  The
time of an FA fit includes its extra starts (fits of the unstructured and heterogeneous
models, then a fit from each start); ``ratio`` is the time over the unstructured fit's in the
same run."""

from __future__ import annotations

import argparse
import time

import hetvc

from _drops import drops
from _report import Report, add_markdown_option, table

STRUCTURES = "homogeneous,heterogeneous,diagonal,fa1,fa2,fa3,unstructured"
HEADERS = ["ΣG", "k", "logLik", "AIC", "BIC", "AI iterations", "evaluations", "status", "boundary blocks",
           "seconds", "ratio"]
ALIGN = "lrrrrrrlrrr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", default=STRUCTURES)
    parser.add_argument("--threads", type=int, default=1)
    add_markdown_option(parser)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    report = Report.from_args(args, __file__, threads=args.threads)
    data, K = drops()
    results = {}
    for g in args.structures.split(","):
        t0 = time.perf_counter()
        with threadpool_limits(args.threads):
            fit = hetvc.fit(data, K, ["grain_yield", "plant_height"], env="env", id="genotype", genetic=g,
                            residual="heterogeneous", pev=False)
        results[g] = (fit, time.perf_counter() - t0)
        print(f"{g}: {results[g][1]:.1f} s, logLik {fit.loglik:.2f}", flush=True)
    base = results.get("unstructured", (None, float("nan")))[1]
    rows = []
    for g, (fit, sec) in results.items():
        rec = fit.record
        rows.append([g, fit.n_params, f"{fit.loglik:.2f}", f"{fit.aic:.2f}", f"{fit.bic:.2f}", rec["iterations"],
                     rec["evaluations"], rec["status"], len(fit.boundary), f"{sec:.1f}", f"{sec / base:.2f}"])
    print(table(HEADERS, rows, ALIGN))
    report.write(table(HEADERS, rows, ALIGN),
                 notes=["data: `../shared/data/drops_maize` (DROPS maize), K = VanRaden GRM / mean(diag), "
                        "2 traits (grain_yield, plant_height), residual heterogeneous; the iterations and "
                        "evaluations are those of the kept start"])


if __name__ == "__main__":
    main()
