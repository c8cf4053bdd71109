"""Near-balanced data (issue 15, item 3): the spectral engine on a completed layout against the
dense engine, on the bundled SoyNAM example and on DROPS maize with cells removed at random.

    python benchmarks/bench_completed.py                   # the whole table (a few minutes)
    options: --threads N (BLAS threads, default 1)  --dense-limit SECONDS (time limit of each
             dense fit, default 300)  --no-dense  --markdown FILE (also write the table as this
             script's section of FILE)

Rows:

* SoyNAM as bundled (`hetvc.examples`: 6 missing yields, 15 replicated plots): what
  ``engine="auto"`` does and whether the completed layout applies (its replicates keep it off);
  then SoyNAM without the second plot of each replicated genotype × environment (its 6 missing
  values completed).
* DROPS maize (`../shared/data/drops_maize`, 246 hybrids × 10 environments, grain yield and
  anthesis) with 1 %, 5 % and 20 % of the trait values removed at random (a record that loses
  both leaves its environment), for `heterogeneous` genetic / `homogeneous` residual (case (a):
  the dense engine splits V by environment) and `homogeneous` / `heterogeneous` (case (b): one
  dense block of all values).

Columns: ``N`` observed values, ``|M|`` completed cells, ``fit s`` a whole ``hetvc.fit`` (AI-REML,
BLUEs, BLUPs, PEVs) on the completed layout (forced here by replacing the engine choice of
``hetvc.fitting``), ``iter`` its AI iterations, ``dense s`` the same fit with
``engine="dense"`` and ``Δℓ`` = ℓ − ℓ_dense (two optimisations: it includes their convergence to
tol = 1e-8); ``Δℓ at θ̂``: ℓ of the completed fit minus the dense engine's ℓ at the same θ̂ (the
engines alone).  Timings depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np
from threadpoolctl import threadpool_limits

import hetvc
import hetvc.fitting
from _drops import drops
from _report import Report, add_markdown_option, row, table
from hetvc.engines import DenseEngine, EngineChoice, NotApplicable
from hetvc.engines.completed import CompletedEngine, completed_plan
from hetvc.examples import load_example

HEADERS = ["data", "structure", "N", "|M|", "completed", "iter", "fit s", "Δℓ at θ̂", "dense s", "dense iter", "Δℓ"]
ALIGN = "llrrlrrrrrr"
DROPS_TRAITS = ["grain_yield", "anthesis"]
STRUCTURES = [("heterogeneous", "homogeneous"), ("homogeneous", "heterogeneous")]


@contextlib.contextmanager
def completed_engine():
    """hetvc.fit on the completed layout (the automatic choice is wired elsewhere)."""
    original = hetvc.fitting.choose_engine

    def choose(model, engine="auto", eigen=None):
        plan = completed_plan(model)
        return EngineChoice(CompletedEngine(model, plan, eigen), plan.description)

    hetvc.fitting.choose_engine = choose
    try:
        yield
    finally:
        hetvc.fitting.choose_engine = original


def timed_fit(**kw):
    t0 = time.perf_counter()
    fit = hetvc.fit(**kw)
    return fit, time.perf_counter() - t0


def compare(label, structure, kw, args) -> list:
    """One row: the completed fit and the dense one of the same data."""
    model = hetvc.fitting.build_model(**{k: v for k, v in kw.items() if k != "engine"})
    plan = completed_plan(model)
    base = [label, structure, model.design.n_obs]
    if isinstance(plan, NotApplicable):
        return base + [None, f"no: {plan.reason}", None, None, None, None, None, None]
    with completed_engine():
        fit, sec = timed_fit(**kw)
    same = DenseEngine(model).evaluate(fit.theta, derivatives=False).loglik
    cells = [plan.n_missing, "yes", fit.record["iterations"], f"{sec:.2f}", f"{fit.loglik - same:.1e}"]
    if args.no_dense:
        return base + cells + [None, None, None]
    dense, dsec = timed_fit(**kw, engine="dense", time_limit=args.dense_limit)
    if dense.record["status"] == "time limit":
        return base + cells + [f"> {args.dense_limit:g}", None, None]
    return base + cells + [f"{dsec:.1f}", dense.record["iterations"], f"{fit.loglik - dense.loglik:.1e}"]


def remove(data, traits, fraction, seed):
    """``data`` with ``fraction`` of its trait values blanked at random."""
    out = data.copy()
    values = out[traits].to_numpy(dtype=float, copy=True)
    idx = np.random.default_rng(seed).choice(values.size, int(round(fraction * values.size)), replace=False)
    values.flat[idx] = np.nan
    out[traits] = values
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--dense-limit", type=float, default=300.0)
    parser.add_argument("--no-dense", action="store_true")
    add_markdown_option(parser)
    args = parser.parse_args()
    report = Report.from_args(args, __file__, threads=args.threads)
    print(table(HEADERS, [], ALIGN), flush=True)
    rows, notes = [], []

    def add(r):
        rows.append(r)
        print(row(r), flush=True)

    with threadpool_limits(args.threads):
        pheno, K, roles = load_example()
        auto, sec = timed_fit(data=pheno, K=K, **roles)
        notes.append(f"SoyNAM as bundled, `engine='auto'`: {sec:.1f} s, {auto.engine_reason}")
        add(compare("SoyNAM as bundled", "heterogeneous/homogeneous", dict(data=pheno, K=K, **roles), args))
        single = pheno.drop_duplicates([roles["id"], roles["env"]])
        add(compare(f"SoyNAM, {len(pheno) - len(single)} second plots dropped", "heterogeneous/homogeneous",
                    dict(data=single, K=K, **roles), args))
        data, K = drops()
        for fraction in (0.01, 0.05, 0.20):
            holed = remove(data, DROPS_TRAITS, fraction, seed=1)
            for genetic, residual in STRUCTURES:
                add(compare(f"DROPS, {fraction:.0%} removed", f"{genetic}/{residual}",
                            dict(data=holed, K=K, traits=DROPS_TRAITS, env="env", id="genotype",
                                 genetic=genetic, residual=residual), args))
    notes += [f"BLAS threads: {args.threads}; dense fits limited to {args.dense_limit:g} s",
              "DROPS: `../shared/data/drops_maize`, K = VanRaden GRM / mean(diag); values removed with seed 1",
              "`completed`: whether the completed layout applies (completed_plan); the fit on it is forced"]
    for n in notes:
        print(n)
    report.write(table(HEADERS, rows, ALIGN), notes=notes)


if __name__ == "__main__":
    main()
