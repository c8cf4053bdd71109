"""Dense engine, V split into independent blocks: one evaluation (ℓ, score, AI) with the split
against V factored whole, and a whole fit with the split.

The design: every genotype in every one of 6 environments, 2 traits, 10 % of the values
missing at random (so the spectral engine does not apply), heterogeneous ΣG (the paper's
model) and homogeneous ΣE: no term links environments, so V splits into 6 blocks.

    python benchmarks/bench_dense_blocks.py [--genotypes 300,600,1000] [--whole-up-to 7000]
                                            [--markdown docs/benchmarks.md]

``whole`` (V factored as one N × N matrix, as before the split) is run up to
``--whole-up-to`` values; ``ratio`` is whole over split for one evaluation."""

from __future__ import annotations

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import hetvc
from hetvc.engines import DenseEngine
from hetvc.simulate import simulate

from _report import Report, add_markdown_option, table

HEADERS = ["genotypes", "N", "blocks", "evaluation split s", "evaluation whole s", "ratio", "fit s",
           "AI iterations", "status"]


def problem(n: int, seed: int = 1):
    sim = simulate(n=n, traits=2, locations=6, snps=500, h2=0.4, w=0.5, rho=0.5, design="full", seed=seed)
    data = sim.pheno.copy()
    rng = np.random.default_rng(seed)
    for t in ("t1", "t2"):
        data.loc[rng.random(len(data)) < 0.1, t] = np.nan
    return data, sim.K


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--genotypes", default="300,600,1000")
    parser.add_argument("--whole-up-to", type=int, default=7000)
    parser.add_argument("--threads", type=int, default=1)
    add_markdown_option(parser)
    args = parser.parse_args()
    report = Report.from_args(args, __file__, threads=args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for n in (int(v) for v in args.genotypes.split(",")):
            data, K = problem(n)
            model = hetvc.build_model(data, K, ["t1", "t2"], env="env", id="id", genetic="heterogeneous")
            theta = model.start()
            split = DenseEngine(model)
            _, t_split = timed(lambda: split.evaluate(theta))
            t_whole = float("nan")
            if model.design.n_obs <= args.whole_up_to:
                whole = DenseEngine(model, split=False)
                _, t_whole = timed(lambda: whole.evaluate(theta))
                del whole
            fit, t_fit = timed(lambda: hetvc.fit_model(model, hetvc.FitOptions(pev=False)))
            rows.append([n, model.design.n_obs, len(split.blocks), f"{t_split:.3f}",
                         "–" if np.isnan(t_whole) else f"{t_whole:.2f}",
                         "–" if np.isnan(t_whole) else f"{t_whole / t_split:.0f}", f"{t_fit:.2f}",
                         fit.record["iterations"], fit.record["status"]])
            print(rows[-1], flush=True)
    print(table(HEADERS, rows, "rrrrrrrrl"))
    report.write(table(HEADERS, rows, "rrrrrrrrl"),
                 notes=["simulated (hetvc.simulate, design='full'), 6 environments × 2 traits, 10 % of the "
                        "values missing; genetic heterogeneous, residual homogeneous; one BLAS thread"])


if __name__ == "__main__":
    main()
