"""`hetvc simulate` (a simulated data set) and `hetvc kinship` (a GRM from genotypes, or the
additive relationship matrix A and its inverse from a pedigree)."""

from __future__ import annotations

import click
import numpy as np
import pandas as pd
import scipy.sparse as sp
from click.core import ParameterSource

from ..errors import InputError
from ..io_utils import atomic_path
from ..kinship import grm, write_kinship
from ..kinship.pedigree import (looks_like_pedigree, pedigree_inverse, pedigree_kinship, pedigree_summary,
                                read_pedigree)
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


_PEDIGREE_OPTIONS = ("id_col", "sire", "dam", "positions", "inverse")
_GENOTYPE_OPTIONS = ("method", "block_size", "id_column", "coding", "maf", "min_call_rate")


@click.command("kinship")
@click.argument("genotypes", required=False, type=click.Path(dir_okay=False))
@click.option("--pedigree", default=None, type=click.Path(dir_okay=False),
              help="Build the additive relationship matrix A from this pedigree (.csv/.tsv: id, sire, "
                   "dam; unknown parents 0, NA, ., -, * or empty) instead of a GRM from GENOTYPES.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False),
              help="Output kinship: .csv (labelled) or .npy (+ .npy.ids).")
@click.option("--method", type=click.Choice(["standardized", "vanraden"]), default="standardized",
              show_default=True, help="GRM form (see hetvc.kinship).")
@click.option("--block-size", type=int, default=1024, show_default=True, help="SNPs per block (memory).")
@click.option("--id-column", default=None, help="Id column of a CSV dosage table [default: 'id' or the first].")
@click.option("--coding", type=click.Choice(["auto", "dosage", "-101", "letters", "presence"]), default="auto",
              show_default=True,
              help="Marker coding of a CSV table: 0/1/2 dosages, -1/0/1, A/C/G/T letters (minor allele "
                   "counted; IUPAC heterozygotes; >2 alleles dropped) or 0/1 presence/absence (dominant, "
                   "standardized by their own mean and SD); auto detects it.")
@click.option("--maf", type=float, default=0.0, show_default=True,
              help="Drop SNPs with a minor allele frequency below this.")
@click.option("--min-call-rate", type=float, default=0.0, show_default=True,
              help="Drop SNPs observed in less than this fraction of individuals.")
@click.option("--id", "id_col", default="id", show_default=True,
              help="Pedigree id column (a 3-column pedigree without these names is read in order).")
@click.option("--sire", default="sire", show_default=True, help="Pedigree sire column.")
@click.option("--dam", default="dam", show_default=True, help="Pedigree dam column.")
@click.option("--positions", is_flag=True,
              help="Pedigree sire and dam are 1-based row numbers of the id column (R's integer-coded "
                   "pedigrees), not ids.")
@click.option("--inverse", default=None, type=click.Path(dir_okay=False),
              help="Also write the inverse of A (Henderson's rules with inbreeding) as a sparse triplet "
                   "CSV: header row_id,col_id,value; one line per non-zero of the lower triangle "
                   "(row_id's animal at or after col_id's in pedigree order, parents first); entries not "
                   "listed are 0, the upper triangle is the mirror image.")
@click.pass_context
def kinship(ctx, genotypes, pedigree, out, method, block_size, id_column, coding, maf, min_call_rate, id_col,
            sire, dam, positions, inverse):
    """Build a genomic relationship matrix from GENOTYPES, or the additive relationship
    matrix A from a pedigree (--pedigree).

    GENOTYPES is a PLINK .bed file (or its prefix, with .bim and .fam next to it) or a CSV
    marker table (one row per individual: an id column, then one column per SNP; empty =
    missing) coded 0/1/2, -1/0/1, A/C/G/T letters or 0/1 presence/absence (--coding).

    A pedigree has one row per animal with its sire and dam; parents may be listed after
    their offspring, and parents never listed as animals are added as founders.  A is
    computed by the tabular method (dense: up to about 20 000 animals); see
    hetvc.kinship.pedigree for the rules and formulas.
    """
    def given(names):
        return [n for n in names if ctx.get_parameter_source(n) is not ParameterSource.DEFAULT]

    if (genotypes is None) == (pedigree is None):
        raise click.UsageError("give exactly one of GENOTYPES (a GRM) or --pedigree FILE (the pedigree A)")
    wrong = given(_GENOTYPE_OPTIONS if pedigree else _PEDIGREE_OPTIONS)
    if wrong:
        flags = ", ".join("--" + ("id" if n == "id_col" else n.replace("_", "-")) for n in wrong)
        mode, other = ("--pedigree", "GENOTYPES") if pedigree else ("GENOTYPES", "--pedigree")
        raise click.UsageError(f"{flags}: not with {mode} (for {other} only)")
    if pedigree:
        _pedigree_kinship(pedigree, out, id_col, sire, dam, positions, inverse)
        return
    if looks_like_pedigree(genotypes):
        columns = pd.read_csv(genotypes, sep=None, engine="python", nrows=0).columns  # the header only
        raise InputError(f"{genotypes} looks like a pedigree (columns {', '.join(map(str, columns))}); "
                         f"use hetvc kinship --pedigree {genotypes}")
    K, info = grm(genotypes, method=method, block_size=block_size, id_column=id_column, return_info=True,
                  coding=coding, maf=maf, call_rate=min_call_rate)
    path = write_kinship(K, out)
    click.echo(info.summary())
    click.echo(f"wrote {path}")


def _pedigree_kinship(source, out, id_col, sire, dam, positions, inverse):
    ped = read_pedigree(source, id=id_col, sire=sire, dam=dam, positions=positions)
    head, *notes, inbred = pedigree_summary(ped, source)
    click.echo(head)
    for note in notes:
        click.echo(f"note: {note}")
    click.echo(inbred)
    click.echo(f"wrote {write_kinship(pedigree_kinship(ped), out)}")
    if inverse:
        Ainv, ids = pedigree_inverse(ped)
        low = sp.tril(Ainv, format="coo")
        order = np.lexsort((low.col, low.row))
        labels = np.array(ids, dtype=object)
        triplets = pd.DataFrame({"row_id": labels[low.row[order]], "col_id": labels[low.col[order]],
                                 "value": low.data[order]})
        with atomic_path(inverse) as tmp:
            triplets.to_csv(tmp, index=False, sep="\t" if str(inverse).lower().endswith(".tsv") else ",")
        click.echo(f"wrote {inverse} ({len(triplets)} non-zeros of the lower triangle of the inverse)")


COMMANDS = [simulate, kinship]
