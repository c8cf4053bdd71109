"""`hetvc study`: the simulation study of the paper's Table 1 (resumable; local or Dask)."""

from __future__ import annotations

import sys

import click

from ..errors import InputError


def _floats(text: str, name: str) -> list[float]:
    try:
        values = [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise InputError(f"--{name} takes comma-separated numbers, e.g. 0,0.5,1; got {text!r}") from None
    if not values:
        raise InputError(f"--{name} needs at least one value")
    return values


def _given(ctx, name: str) -> bool:
    from click.core import ParameterSource

    return ctx.get_parameter_source(name) not in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)


@click.command("study")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Individuals per data set.")
@click.option("--traits", type=int, default=3, show_default=True, help="Traits m.")
@click.option("--locations", type=int, default=4, show_default=True, help="Locations L.")
@click.option("--snps", type=int, default=500, show_default=True, help="Simulated SNPs (kinship).")
@click.option("--h2", type=float, default=0.30, show_default=True, help="True heritability.")
@click.option("--w", "w", default="0,0.2,0.4,0.6,0.8,1", show_default=True, metavar="W1,W2,...",
              help="Location-specific shares of the genetic variance.")
@click.option("--rho", default="0.25,0.5,0.75", show_default=True, metavar="R1,R2,...",
              help="Correlations between traits.")
@click.option("--replicates", type=int, default=100, show_default=True, help="Replicates per scenario.")
@click.option("--models", default="homogeneous,heterogeneous", show_default=True,
              help="Genetic structures fitted to every replicate (residual: homogeneous).")
@click.option("--workers", type=int, default=None, help="Local worker processes [default: every core; 0: run in this process].")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run on this Dask distributed scheduler instead of local processes (needs dask[distributed]).")
@click.option("--seed", type=int, default=None,
              help="Base seed [default: the folder's when resuming, else 20240917].")
@click.option("--quick", is_flag=True,
              help="Reduced grid for a first look (< 1 min): n=200, w=0,1, rho=0.5, 3 replicates "
                   "(options given explicitly still apply).")
@click.option("--plots/--no-plots", default=True, show_default=True, help="Write the figures.")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default="auto", show_default=True,
              help="Progress bar on a terminal, log lines otherwise.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Study folder (resumed if it exists).")
@click.pass_context
def study(ctx, n, traits, locations, snps, h2, w, rho, replicates, models, workers, scheduler, seed, quick,
          plots, progress, out):
    """Simulate data for a grid of scenarios and fit both models to every replicate.

    Writes OUT/results.csv (one row per fit, appended as fits finish), OUT/summary.csv,
    OUT/table1.csv and table1.md (the paper's Table 1 layout: mean pooled h2 ± Monte-Carlo SE
    and the share of converged fits), OUT/win_rates.csv/.md (AIC/BIC) and OUT/figures/.
    Run the same command again after an interruption: finished fits are skipped.
    """
    from .. import study as st

    if quick:
        if not _given(ctx, "n"):
            n = 200
        if not _given(ctx, "w"):
            w = "0,1"
        if not _given(ctx, "rho"):
            rho = "0.5"
        if not _given(ctx, "replicates"):
            replicates = st.QUICK_REPLICATES
    scenarios = st.grid(n=n, traits=traits, locations=locations, snps=snps, h2=h2,
                        w=_floats(w, "w"), rho=_floats(rho, "rho"))
    model_list = [m.strip() for m in models.split(",") if m.strip()]
    try:
        res = st.run(out, scenarios, replicates, seed=seed, models=model_list, workers=workers,
                     scheduler=scheduler, progress=None if progress == "none" else progress, plots=plots)
    except KeyboardInterrupt:
        click.echo(f"interrupted; finished fits are in {out}/results.csv; run the same command again to resume",
                   err=True)
        sys.exit(130)
    click.echo(f"{res.fits_run} fits run, {res.fits_skipped} already done; {res.seconds:.1f} s on {res.backend}")
    click.echo("")
    click.echo(st.table1_markdown(res.summary))
    click.echo(st.win_rates_markdown(res.win_rates))
    for path in res.files:
        click.echo(f"wrote {path}")


COMMANDS = [study]
