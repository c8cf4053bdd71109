"""Optimizer on large boundary problems: AI iterations, evaluations, seconds and ℓ per fit.

DROPS maize (246 hybrids × 10 environments, ``../shared/data/drops_maize``), unstructured ΣG
(Lm(Lm+1)/2 parameters) with homogeneous and heterogeneous residuals, 3 traits (grain_yield,
plant_height, anthesis: 465 + 6 or 60 parameters) and 4 traits (+ silking: 820 + 10 or 100).
Evaluations (ℓ with score and AI) are the machine-independent measure of the optimizer's work.

    python benchmarks/bench_optimizer.py [--rows d3he,d3ho,d4ho,d4he] [--threads 1] [--time-limit S]
                                         [--markdown docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import time


import hetvc

from _drops import drops
from _report import Report, add_markdown_option, row, table

TRAITS3 = ["grain_yield", "plant_height", "anthesis"]
ROWS = {
    "d3ho": (TRAITS3, "unstructured", "homogeneous"),
    "d3he": (TRAITS3, "unstructured", "heterogeneous"),
    "d4ho": (TRAITS3 + ["silking"], "unstructured", "homogeneous"),
    "d4he": (TRAITS3 + ["silking"], "unstructured", "heterogeneous"),
}
HEADERS = ["row", "traits", "G/E", "k", "AI iterations", "evaluations", "fallback evaluations", "finished by",
           "status", "seconds", "logLik"]
ALIGN = "lrlrrrrllrr"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="d3ho,d3he,d4ho")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="passed to hetvc.fit (where the installed hetvc knows it)")
    parser.add_argument("--max-iter", type=int, default=200)
    add_markdown_option(parser)
    args = parser.parse_args()
    from threadpoolctl import threadpool_limits

    report = Report.from_args(args, __file__, threads=args.threads)
    data, K = drops()
    print(table(HEADERS, [], ALIGN))
    rows = []
    for name in args.rows.split(","):
        traits, g, r = ROWS[name]
        kw = dict(traits=traits, env="env", id="genotype", genetic=g, residual=r, max_iter=args.max_iter)
        if args.time_limit is not None:
            kw["time_limit"] = args.time_limit
        t0 = time.perf_counter()
        with threadpool_limits(args.threads):
            fit = hetvc.fit(data, K, **kw)
        sec = time.perf_counter() - t0
        rec = fit.record
        rows.append([name, len(traits), f"{g}/{r}", fit.n_params, rec["iterations"], rec["evaluations"],
                     rec.get("fallback_evaluations", ""), rec.get("finished_by", ""), rec["status"],
                     f"{sec:.1f}", f"{fit.loglik:.4f}"])
        print(row(rows[-1]), flush=True)
    report.write(table(HEADERS, rows, ALIGN),
                 notes=["data: `../shared/data/drops_maize` (DROPS maize), K = VanRaden GRM / mean(diag); "
                        f"max_iter {args.max_iter}"
                        + (f", time_limit {args.time_limit:g} s" if args.time_limit is not None else "")])


if __name__ == "__main__":
    main()
