"""`hetvc cv`: cross-validated predictive ability of G×E models (CV1, CV2, CV2t, CV0, CV00)."""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..cv import SCHEMES, cross_validate
from ..cv.tables import ability_pivots
from ..errors import InputError
from ..options import FitOptions
from ..phenotypes import read_phenotypes
from .fit import _apply, kinship_options, load_kinship


def _names(text: str, what: str) -> list[str]:
    names = [x.strip().lower() if what == "--scheme" else x.strip() for x in text.split(",") if x.strip()]
    if not names:
        raise InputError(f"{what} is empty")
    return names


def read_fold_file(path, id: str) -> pd.DataFrame:
    """(id, fold) from a fold file: the id column named as ``--id`` (else the first column) and
    the fold column ``fold`` (else the only other column, e.g. BGLR's ``cv_fold``)."""
    header, _ = read_phenotypes(path)
    frame, _ = read_phenotypes(path, text_columns=list(header.columns))  # ids such as 007 stay text
    id_col = id if id in frame.columns else frame.columns[0]
    others = [c for c in frame.columns if c != id_col]
    fold_col = "fold" if "fold" in others else (others[0] if len(others) == 1 else None)
    if fold_col is None:
        raise InputError(f"fold file {path}: name its fold column 'fold' (columns: {', '.join(map(str, frame.columns))})")
    out = frame[[id_col, fold_col]].set_axis([id, "fold"], axis=1)
    if out["fold"].isna().any():
        row = int(np.flatnonzero(out["fold"].isna().to_numpy())[0]) + 2
        raise InputError(f"fold file {path}: line {row} has no fold in column {fold_col!r}")
    dup = out[id].duplicated()
    if dup.any():
        raise InputError(f"fold file {path}: id {out.loc[dup, id].iloc[0]!r} is listed twice")
    try:
        out["fold"] = pd.to_numeric(out["fold"])  # folds 1..10 in numeric order, not 1, 10, 2
    except ValueError:
        pass  # named folds
    return out


def _folds(value: str, id: str):
    """(number of folds, fold table or None) from --folds: a number, or a fold file (whose
    number of folds CV2 then uses too)."""
    try:
        return int(value), None
    except ValueError:
        pass
    if not Path(value).is_file():
        raise InputError(f"--folds takes a number of folds or a fold file (id, fold); {value!r} is neither")
    return None, read_fold_file(value, id)


def print_table(table: pd.DataFrame) -> None:
    """Each scheme × trait as a model × environment table of r ± SE on stdout, and with
    ``accuracy`` the mean over environments' r/√h²."""
    for title, frame in ability_pivots(table):
        click.echo(f"\n{title}: predictive ability r(ŷ, y) ± SE over folds")
        click.echo(frame.to_string())
    if "accuracy" in table.columns:
        acc = table[table["env"] == "mean"].pivot_table(index="model", columns=["scheme", "trait"],
                                                        values="accuracy", sort=False)
        click.echo("\naccuracy r/√h² (mean over environments; h² of each model's fit to all the data):")
        click.echo(acc.round(3).to_string())


@click.command("cv")
@click.argument("pheno", type=click.Path(dir_okay=False))
@_apply(kinship_options)
@click.option("--traits", required=True, help="Trait columns, comma separated.")
@click.option("--env", required=True, help="Environment column.")
@click.option("--id", "id_", default="id", show_default=True, help="Genotype id column (matched to K by label).")
@click.option("--scheme", default="cv1,cv2", show_default=True, metavar="LIST",
              help="Schemes, comma separated: cv1 (new lines), cv2 (lines tested elsewhere), cv2t (a trait "
                   "hidden while the record's other traits are seen), cv0 (a new environment), cv00 (new "
                   "lines in a new environment).")
@click.option("--folds", default="5", show_default=True, metavar="K|FILE",
              help="Number of folds, or a fold file (id, fold: BGLR's cv_folds.csv) giving the line folds of "
                   "cv1 and cv00 (cv2 then has as many folds, drawn from --seed).")
@click.option("--models", default="homogeneous,heterogeneous", show_default=True, metavar="LIST",
              help="Genetic structures to compare (any of hetvc fit's, e.g. unstructured,fa1,csh).")
@click.option("--residual", default="homogeneous", show_default=True, help="Residual structure of every model.")
@click.option("--seed", type=int, default=1, show_default=True, help="Seed of the random folds.")
@click.option("--accuracy", is_flag=True, help="Also fit each model to all the data and report r/√h².")
@click.option("--workers", type=int, default=None,
              help="Local worker processes [default: every core; 0: run in this process].")
@click.option("--scheduler", default=None, metavar="tcp://HOST:PORT",
              help="Run on this Dask distributed scheduler instead of local processes.")
@click.option("--tol", type=float, default=1e-8, show_default=True, help="Convergence tolerance.")
@click.option("--max-iter", type=int, default=200, show_default=True, help="Most iterations per fit.")
@click.option("--progress", type=click.Choice(["auto", "bar", "log", "none"]), default="auto", show_default=True)
@click.option("--no-figures", is_flag=True, help="Skip ability.png.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder (resumed if it holds an unfinished run of the same settings).")
def cv_command(pheno, kinship, genotypes, grm_method, genotype_id, kinship_scale, pedigree, pedigree_positions,
               jitter, traits, env, id_, scheme, folds, models, residual, seed, accuracy, workers, scheduler, tol,
               max_iter, progress, no_figures, out):
    """Cross-validate genomic prediction across environments on PHENO (CSV/TSV/Parquet).

    Every fold of every scheme is fitted by every model, the hidden records are predicted
    (BLUE of the environment mean + BLUP of the line there; in an unseen environment the
    line's mean BLUP over the others), and predictive ability r(ŷ, y) is summarised per scheme × model ×
    environment × trait with its SE over folds.  Hidden values are masked before any model is
    built; K is used as given.  Writes OUT/predictions.csv, fits.csv, ability.csv, ability.md and
    ability.png; each finished fold is kept in OUT/folds/, so the same command resumes an
    interrupted run.  Exit status: 0 success, 2 bad input, 130 interrupted.
    """
    trait_list = _names(traits, "--traits")
    schemes = _names(scheme, "--scheme")
    for s in schemes:
        if s not in SCHEMES:
            raise InputError(f"--scheme {s!r} is not one of {', '.join(SCHEMES)}")
    n_folds, fold_table = _folds(folds, id_)
    data, notes = read_phenotypes(pheno, text_columns=[id_, env], numeric_columns=trait_list)
    missing = [c for c in [id_, env, *trait_list] if c not in data.columns]
    if missing:
        raise InputError(f"{pheno} has no column {missing[0]!r} (columns: {', '.join(map(str, data.columns))})")
    K, _, knotes = load_kinship(kinship, genotypes, grm_method, genotype_id, jitter,
                                kinship_scale or ("none" if pedigree else "mean-diag"), pedigree=pedigree,
                                positions=pedigree_positions, data=data, id=id_, traits=trait_list)
    for note in notes + knotes:
        click.echo(f"note: {note}", err=True)
    result = cross_validate(data, K, trait_list, env, id_, schemes=schemes, folds=n_folds,
                            models=_names(models, "--models"), seed=seed, residual=residual,
                            fold_table=fold_table, options=FitOptions(tol=tol, max_iter=max_iter),
                            accuracy=accuracy, out=out, workers=workers, scheduler=scheduler,
                            progress=None if progress == "none" else progress, figures=not no_figures)
    status = result.fits["status"]
    folds = status[result.fits["scheme"] != "FULL"]
    if folds.str.startswith("failed").all():
        raise InputError(f"every fold fit failed (first: {folds.iloc[0][len('failed: '):]}); see {Path(out) / 'fits.csv'}")
    table = result.accuracy() if result.heritability is not None else result.table()
    print_table(table)
    failed, unconverged = int(status.str.startswith("failed").sum()), int((status == "not converged").sum())
    if failed or unconverged:
        click.echo(f"\nof {len(status)} fold fits, {failed} failed (left out of the table) and {unconverged} did not "
                   f"converge (kept): see {Path(out) / 'fits.csv'} and ability.md")
    click.echo(f"\nwrote {', '.join(str(f) for f in result.files)}")


COMMANDS = [cv_command]
