"""`hetvc simulate` (a simulated data set) and `hetvc kinship` (a GRM from genotypes)."""

from __future__ import annotations

import click

from ..errors import InputError
from ..kinship import grm, write_kinship
from ..simulate import simulate as _simulate


def _floats(text: str | None, name: str):
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip() != ""]
    except ValueError:
        raise InputError(f"--{name} takes comma-separated numbers, e.g. 1,1.5,0.5; got {text!r}") from None


@click.command("simulate")
@click.option("--n", "n", type=int, default=1000, show_default=True, help="Individuals.")
@click.option("--traits", type=int, default=3, show_default=True, help="Traits m (named t1..tm).")
@click.option("--locations", type=int, default=4, show_default=True, help="Locations L (named L1..LL).")
@click.option("--snps", type=int, default=500, show_default=True, help="Simulated SNPs.")
@click.option("--h2", type=float, default=0.30, show_default=True,
              help="Genetic share of the random variance.")
@click.option("--w", "w", type=float, default=0.0, show_default=True,
              help="Location-specific share of the genetic variance (cross-location genetic correlation = 1 - w).")
@click.option("--rho", type=float, default=0.5, show_default=True,
              help="Correlation between traits (genetic and residual).")
@click.option("--rho-e", type=float, default=None, help="Residual correlation between traits [default: --rho].")
@click.option("--location-scales", default=None, metavar="S1,S2,...",
              help="Per-location scale of the genetic value (genetic variance s_l^2*h2) [default: all 1].")
@click.option("--location-sd", type=float, default=1.0, show_default=True,
              help="SD of the random location means (fixed effects).")
@click.option("--covariates", type=int, default=0, show_default=True, help="Nuisance covariates c1..ck.")
@click.option("--design", type=click.Choice(["split", "full"]), default="split", show_default=True,
              help="split: one record per individual in a random location; full: every individual in every location.")
@click.option("--missing", type=float, default=0.0, show_default=True,
              help="Share of trait values blanked at random.")
@click.option("--seed", type=int, default=None, help="Random seed [default: a fresh one, recorded in truth.json].")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--plink", is_flag=True, help="Also write the genotypes as PLINK genotypes.bed/.bim/.fam.")
def simulate(n, traits, locations, snps, h2, w, rho, rho_e, location_scales, location_sd, covariates,
             design, missing, seed, out, plink):
    """Simulate genotypes, a standardised GRM and multi-trait, multi-location phenotypes.

    Writes pheno.csv (id, env, t1..tm, c1..ck), kinship.csv, genetic_values.csv and
    truth.json (true covariance matrices in hetvc's layout) into OUT.
    """

    sim = _simulate(n=n, traits=traits, locations=locations, snps=snps, h2=h2, w=w, rho=rho,
                    rho_e=rho_e, location_scales=_floats(location_scales, "location-scales"),
                    location_effects=location_sd, covariates=covariates, design=design,
                    missing=missing, seed=seed)
    written = sim.to_dir(out, plink=plink)
    t = sim.truth
    click.echo(
        f"simulated {len(sim.pheno)} records of {t.n} individuals, {t.m} traits, {t.L} locations, "
        f"{t.snps} SNPs ({t.snps_dropped} monomorphic dropped); seed {t.seed}"
    )
    click.echo("pooled h2: " + ", ".join(f"{tr}={v:.3f}" for tr, v in zip(t.traits, t.h2_pooled)))
    for path in written:
        click.echo(f"wrote {path}")


@click.command("kinship")
@click.argument("genotypes", type=click.Path(dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output kinship: .csv (labelled) or .npy (+ .npy.ids).")
@click.option("--method", type=click.Choice(["standardized", "vanraden"]), default="standardized",
              show_default=True, help="GRM form (see hetvc.kinship).")
@click.option("--block-size", type=int, default=1024, show_default=True, help="SNPs per block (memory).")
@click.option("--id-column", default=None, help="Id column of a CSV dosage table [default: 'id' or the first].")
def kinship(genotypes, out, method, block_size, id_column):
    """Build a genomic relationship matrix from GENOTYPES.

    GENOTYPES is a PLINK .bed file (or its prefix, with .bim and .fam next to it) or a CSV
    dosage table (one row per individual: an id column, then 0/1/2 per SNP; empty = missing).
    """

    K, info = grm(genotypes, method=method, block_size=block_size, id_column=id_column, return_info=True)
    path = write_kinship(K, out)
    click.echo(info.summary())
    click.echo(f"wrote {path}")


COMMANDS = [simulate, kinship]
