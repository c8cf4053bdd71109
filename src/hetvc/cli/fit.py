"""`hetvc fit` (a breeder's multi-trait, multi-environment analysis) and `hetvc example`.

    hetvc fit PHENO --kinship K.csv | --genotypes FILE.bed|markers.csv
              --traits yield,oil --env env --id genotype
              [--genetic heterogeneous] [--residual homogeneous] [--fixed "~ set_env"]
              [--compare homogeneous,heterogeneous,unstructured] [--out DIR] [--json]

PHENO is CSV/TSV (the delimiter is detected) or Parquet.  With ``--compare`` several models are
fitted to the same data and laid out like the paper's Table 2; an item is a genetic structure
(combined with ``--residual``) or ``genetic/residual`` (``heterogeneous/heterogeneous``), and
``all`` means every genetic × residual structure.  Exit codes: 0 success, 2 bad input, 3 a fit
that did not converge (its outputs are still written, marked as not converged).
"""

from __future__ import annotations

import csv
import gzip
import io
import re
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..errors import ConvergenceError, InputError

GENETIC = ("homogeneous", "heterogeneous", "unstructured")
RESIDUAL = ("homogeneous", "heterogeneous")
EXAMPLE_MODELS = "all"
_DELIMITERS = ",;\t|"


# -- reading ----------------------------------------------------------------------------------
def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8-sig", newline="")
    return open(path, encoding="utf-8-sig", newline="")


def sniff_delimiter(path: Path) -> str:
    """The delimiter of a text table: sniffed from its first lines among , ; tab |; the file
    extension (.tsv/.tab → tab) and then the most frequent candidate in the header decide
    when sniffing is unsure."""
    try:
        with _open_text(path) as fh:
            head = fh.read(65536)
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text; save it as CSV (UTF-8) or Parquet") from None
    except OSError as err:
        raise InputError(f"cannot read {path}: {err}") from None
    lines = [ln for ln in head.splitlines() if ln.strip()][:50]
    if not lines:
        raise InputError(f"{path} is empty")
    try:
        dialect = csv.Sniffer().sniff("\n".join(lines), delimiters=_DELIMITERS)
        return dialect.delimiter
    except csv.Error:
        pass
    name = path.name.lower().removesuffix(".gz")
    if name.endswith((".tsv", ".tab")):
        return "\t"
    counts = {d: lines[0].count(d) for d in _DELIMITERS}
    best = max(counts, key=counts.get)
    return best if counts[best] > 0 else ","


def _decimal_commas(frame: pd.DataFrame, columns) -> list[str]:
    """Convert text columns written with decimal commas (3,25) to numbers, in place."""
    fixed = []
    pattern = re.compile(r"^\s*-?\d+(,\d+)?\s*$")
    for c in columns:
        if c in frame.columns and not pd.api.types.is_numeric_dtype(frame[c]):
            vals = frame[c].dropna().astype(str)
            vals = vals[vals.str.strip() != ""]
            if len(vals) and vals.str.match(pattern).all() and vals.str.contains(",").any():
                frame[c] = pd.to_numeric(frame[c].astype(str).str.replace(",", ".", regex=False)
                                         .replace({"nan": None, "": None}), errors="coerce")
                fixed.append(c)
    return fixed


def read_table(path, *, text_columns=(), numeric_columns=(), sep: str | None = None):
    """(frame, notes) from a CSV/TSV (delimiter detected, optionally gzip) or Parquet file;
    ``text_columns`` (ids, environments) are read as strings, so ``011`` stays ``011``."""
    p = Path(path)
    if not p.exists():
        raise InputError(f"phenotype file {p} does not exist")
    if p.is_dir():
        raise InputError(f"phenotype file {p} is a folder; give a CSV, TSV or Parquet file")
    notes = []
    if p.suffix.lower() in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(p)
        except Exception as err:
            raise InputError(f"cannot read Parquet file {p}: {err}".splitlines()[0]) from None
        for c in text_columns:
            if c in frame.columns:
                frame[c] = frame[c].map(lambda v: None if pd.isna(v) else str(v))
        _check_header(p, [str(c).strip() for c in frame.columns])
        if len(frame) == 0:
            raise InputError(f"{p} has no data rows")
        return frame, notes
    delim = sep or sniff_delimiter(p)
    try:
        header = pd.read_csv(p, sep=delim, nrows=0, encoding="utf-8-sig").columns
        dtypes = {c: str for c in text_columns if c in header}
        frame = pd.read_csv(p, sep=delim, dtype=dtypes, encoding="utf-8-sig",
                            skipinitialspace=True)
    except UnicodeDecodeError:
        raise InputError(f"{p} is not UTF-8 text; save it as CSV (UTF-8) or Parquet") from None
    except Exception as err:
        raise InputError(f"cannot read {p} as a table (delimiter {delim!r}): {err}".splitlines()[0]) from None
    if len(frame.columns) < 2:
        raise InputError(f"{p} has a single column (delimiter {delim!r}); use --sep to name the delimiter")
    try:  # the header as written (pandas renames a repeated name y1 → y1.1)
        raw = pd.read_csv(p, sep=delim, header=None, nrows=1, dtype=str, encoding="utf-8-sig",
                          skipinitialspace=True, keep_default_na=False).iloc[0]
    except Exception:
        raw = frame.columns
    _check_header(p, [str(c).strip() for c in raw])
    frame.columns = [str(c).strip() for c in frame.columns]
    if len(frame) == 0:
        raise InputError(f"{p} has a header but no data rows")
    if delim == ";":
        converted = _decimal_commas(frame, numeric_columns)
        if converted:
            notes.append(f"decimal commas read as decimal points in {', '.join(converted)}")
    return frame, notes


def _check_header(path: Path, names: list) -> None:
    """A column name that appears twice (pandas would silently rename the second) is an error."""
    seen = set()
    for k, name in enumerate(names, 1):
        if name and name in seen:
            raise InputError(f"{path}: column {name!r} appears more than once in the header "
                             f"(again as column {k}); rename or drop one")
        seen.add(name)


# -- kinship ------------------------------------------------------------------------------------
def load_kinship(kinship, genotypes, grm_method: str, genotype_id, jitter, scale: str):
    """(K DataFrame, facts dict, notes) from a kinship file or from genotypes (a GRM)."""
    from ..kinship import check_kinship, grm, read_kinship, scale_kinship

    notes, facts = [], {}
    if (kinship is None) == (genotypes is None):
        raise InputError("give exactly one of --kinship K.csv or --genotypes FILE.bed|markers.csv")
    if kinship is not None:
        K = read_kinship(kinship, jitter=jitter)
        facts["kinship"] = str(kinship)
    else:
        K, info = grm(genotypes, method=grm_method, id_column=genotype_id, return_info=True)
        K = check_kinship(K, jitter=jitter, name=f"GRM of {genotypes}")
        facts["genotypes"] = str(genotypes)
        notes.append(f"GRM built from {genotypes}: {info.summary()}")
    diag = np.diag(K.to_numpy())
    mean_diag = float(diag.mean())
    facts["kinship_mean_diagonal"] = mean_diag
    facts["kinship_scale"] = 1.0
    if scale == "mean-diag" and abs(mean_diag - 1.0) > 1e-6:
        K = scale_kinship(K, 1.0 / mean_diag, name=facts.get("kinship", "K"))
        facts["kinship_scale"] = 1.0 / mean_diag
        notes.append(
            f"K divided by its mean diagonal ({mean_diag:.4g}) so that genetic variances and h² refer "
            f"to the genotypes' own variance (inbred lines have a GRM diagonal near 2); "
            f"--kinship-scale none keeps K as given")
    singular = _singularity(K.to_numpy())
    if singular:
        notes.append(
            f"K is singular ({singular}); no ridge is needed: V = ZKZ'⊗ΣG + ΣE stays positive "
            f"definite through the residual")
    return K, facts, notes


def _singularity(values: np.ndarray) -> str:
    """'' or why K is singular: its rank from eigenvalues up to q = 1500 (O(q³), under a second),
    beyond that the O(q²) sign of centred genotypes, rows that sum to zero."""
    q = len(values)
    if q <= 1500:
        w = np.linalg.eigvalsh(values)
        rank = int((w > 1e-8 * w.max()).sum())
        return f"rank {rank} of {q}, as a GRM of centred genotypes always is" if rank < q else ""
    if np.abs(values.sum(axis=1)).max() <= 1e-8 * q * float(np.abs(np.diag(values)).max()):
        return "its rows sum to zero, as in a GRM of centred genotypes"
    return ""


# -- fixed effects ----------------------------------------------------------------------------------
def resolve_fixed(data: pd.DataFrame, fixed: str | None, env: str | None):
    """(data, formula, notes): covariate columns aliased with the environment means (a factor
    nested in environments such as ``set_env``) or with earlier columns are dropped, the way R's
    lm() does, and the formula is rewritten to name the kept columns."""
    if fixed is None or not str(fixed).strip() or str(fixed).strip() in ("~1", "~ 1"):
        return data, None, []
    formula = str(fixed).strip()
    if not formula.startswith("~"):
        formula = "~ " + formula
    try:
        from formulaic import model_matrix

        mm = model_matrix(formula + " + 1", data, na_action="raise")
    except Exception:
        return data, formula, []  # hetvc.fit reports the error in one line
    mm = mm.drop(columns=[c for c in mm.columns if c == "Intercept"])
    if mm.shape[1] == 0:
        return data, formula, []
    if env is not None and env in data.columns:
        base = pd.get_dummies(data[env].astype(str)).to_numpy(dtype=float)
    else:
        base = np.ones((len(data), 1))
    X = mm.to_numpy(dtype=float)
    kept, dropped = [], []
    basis = np.linalg.qr(base)[0]
    for k, name in enumerate(mm.columns):
        col = X[:, k]
        norm = np.linalg.norm(col)
        res = col - basis @ (basis.T @ col)
        if norm == 0 or np.linalg.norm(res) <= 1e-9 * norm * np.sqrt(len(col)):
            dropped.append(str(name))
            continue
        basis = np.column_stack([basis, res / np.linalg.norm(res)])
        kept.append(str(name))
    if not dropped:
        return data, formula, []
    if not kept:
        return data, None, [f"fixed effects {formula!r}: every column is aliased with the environment "
                            f"means ({', '.join(dropped[:4])}{', ...' if len(dropped) > 4 else ''}); dropped"]
    if any("`" in n for n in kept):
        return data, formula, []
    data = data.copy()
    for name in kept:
        data[name] = mm[name].to_numpy(dtype=float)
    new = "~ " + " + ".join(f"`{n}`" for n in kept)
    shown = ", ".join(dropped[:4]) + (f", ... ({len(dropped)} in all)" if len(dropped) > 4 else "")
    note = (f"fixed effects {formula!r}: {len(dropped)} column(s) aliased with the environment means "
            f"or earlier columns were dropped ({shown}); {len(kept)} kept")
    return data, new, [note]


# -- models ---------------------------------------------------------------------------------------
def parse_models(compare: str | None, genetic: str, residual: str) -> list[tuple[str, str]]:
    """[(genetic, residual)] from ``--compare`` (or the single --genetic/--residual model)."""
    if compare is None:
        return [(genetic, residual)]
    out = []
    for token in [t.strip() for t in compare.split(",") if t.strip()]:
        if token == "all":
            out += [(g, r) for r in RESIDUAL for g in GENETIC]
            continue
        g, _, r = token.partition("/")
        g, r = g.strip(), (r.strip() or residual)
        if g not in GENETIC:
            raise InputError(f"--compare: unknown genetic structure {g!r} in {token!r}; "
                             f"use {', '.join(GENETIC)} (optionally /{'|'.join(RESIDUAL)}) or all")
        if r not in RESIDUAL:
            raise InputError(f"--compare: unknown residual structure {r!r} in {token!r}; use {', '.join(RESIDUAL)}")
        out.append((g, r))
    if not out:
        raise InputError("--compare is empty; e.g. --compare homogeneous,heterogeneous,unstructured")
    return list(dict.fromkeys(out))


def data_notes(data: pd.DataFrame, K: pd.DataFrame, traits, env, id) -> tuple[dict, list]:
    """Facts and notes about the records that the fit handles without being asked."""
    facts, notes = {"n_records": int(len(data))}, []
    present = [t for t in traits if t in data.columns]
    if id not in data.columns or (env is not None and env not in data.columns) or len(present) < len(traits):
        return facts, notes  # hetvc.fit names the missing column
    ids = data[id].astype(str)
    facts["n_phenotyped"] = int(ids.nunique())
    untested = len(set(map(str, K.index)) - set(ids))
    facts["n_kinship"] = int(K.shape[0])
    if untested:
        notes.append(f"{untested} genotype(s) in K have no records: they get predictions (BLUPs) only")
    if env is not None:
        reps = data.groupby([ids, data[env].astype(str)]).size()
        n_rep = int((reps > 1).sum())
        if n_rep:
            notes.append(
                f"{n_rep} genotype × environment pair(s) have more than one record (repeated plots): "
                f"each record is kept; they share the genotype's genetic value and have independent residuals")
    vals = data[present].apply(pd.to_numeric, errors="coerce")
    miss = vals.isna()
    if miss.to_numpy().any():
        per = ", ".join(f"{t}: {int(miss[t].sum())}" for t in present if miss[t].any())
        notes.append(f"missing trait values ({per}): each record keeps its observed traits")
        if env is not None:
            whole = miss.groupby(data[env].astype(str)).all()
            empty = [(t, e) for t in present for e in whole.index[whole[t]]]
            if empty:
                facts["empty_cells"] = [list(c) for c in empty]
                shown = ", ".join(f"{t!r} in {e!r}" for t, e in empty[:4])
                notes.append(
                    f"{len(empty)} trait × environment cell(s) without any value ({shown}"
                    f"{', ...' if len(empty) > 4 else ''}): the genetic and residual variances of a trait "
                    f"in an environment where it was not measured cannot be estimated, so only "
                    f"homogeneous genetic and residual structures can be fitted")
    return facts, notes


def _command_line(name: str, pheno, opts: dict) -> str:
    parts = ["hetvc", name] + ([str(pheno)] if pheno is not None else [])
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        parts += [flag] if v is True else [flag, str(v)]
    return shlex.join(parts)


# -- running ----------------------------------------------------------------------------------------
def _progress():
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, soft_wrap=True)
    bar = Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
                   console=console, transient=True, disable=not console.is_terminal)
    return console, bar


def run_analysis(data, K, *, traits, env, id, models, fixed, method, engine, tol, max_iter,
                 out, as_json, figures, facts, notes, quiet=False, pev=True):
    """Fit every model, print the summary (or JSON), write the outputs; exit 3 when a fit did
    not converge."""
    import hetvc

    from ..report import comparison, select, summary, write_report

    data, formula, fixed_notes = resolve_fixed(data, fixed, env)
    notes = notes + fixed_notes
    if facts.get("empty_cells") and len(models) > 1:
        # env-specific structures cannot be estimated: skip them (a single model fails in fit)
        feasible = [(g, r) for g, r in models if g == "homogeneous" and r == "homogeneous"]
        skipped = [f"{g}/{r}" for g, r in models if (g, r) not in feasible]
        if not feasible:
            t, e = facts["empty_cells"][0]
            raise InputError(
                f"trait {t!r} has no values in environment {e!r}: none of the models asked for can be "
                f"fitted; add homogeneous/homogeneous to --compare or drop that trait")
        if skipped:
            notes = notes + [f"not fitted (a trait has no values in a whole environment): {', '.join(skipped)}"]
            models = feasible
    console, bar = _progress()
    fits = {}
    with bar:
        for k, (g, r) in enumerate(models, 1):
            name = f"{g}/{r}"
            task = bar.add_task(f"fitting {name} ({k}/{len(models)})", total=None)
            t0 = time.perf_counter()
            fit = hetvc.fit(data, K, traits, env=env, id=id, genetic=g, residual=r, fixed=formula,
                            method=method, engine=engine, tol=tol, max_iter=max_iter, pev=pev)
            if fixed_notes:  # the formula was rewritten: keep the user's and say what changed
                fit.fixed = fixed
                fit.notes = list(fit.notes) + fixed_notes
            bar.remove_task(task)
            fits[name] = fit
            if not quiet:
                rec = fit.record
                console.print(
                    f"[{k}/{len(models)}] {name}: logLik {fit.loglik:.3f}, k {fit.n_params}, "
                    f"{rec['status']} after {rec['iterations']} iterations "
                    f"({time.perf_counter() - t0:.1f} s, {fit.engine})", highlight=False)
    selected = select(fits)
    data_facts = dict(facts)
    data_facts.update(traits=list(traits), env=env, id=id, fixed=fixed, method=method, notes=notes)
    if out is not None:
        result = write_report(out, fits, selected, data_facts, figures=figures)
    else:
        result = summary(fits, selected, data_facts)
    if as_json:
        import json

        click.echo(json.dumps(result, indent=1, allow_nan=False))
    else:
        _print_summary(fits, selected, data_facts, comparison(fits) if len(fits) > 1 else None, out)
    failed = [n for n, f in fits.items() if not f.converged]
    if failed:
        raise ConvergenceError(
            f"{len(failed)} model(s) did not converge ({', '.join(failed)}): "
            f"{fits[failed[0]].record['status']}; see record['message'] in the fit; "
            "try --max-iter or a simpler structure")
    return fits, result


def _print_summary(fits, selected, facts, comp, out):
    echo = click.echo
    best = fits[selected]
    for n in facts.get("notes", []):
        echo(f"note: {n}")
    if comp is not None:
        echo("")
        echo("Model comparison (paper Table 2 layout; VCs = covariance parameters)")
        show = pd.DataFrame({
            "model (G/E)": comp["model"], "VCs": comp["k"],
            "logLik": comp["logLik"].map(lambda v: f"{v:.2f}"),
            "AIC": comp["AIC"].map(lambda v: f"{v:.2f}"), "BIC": comp["BIC"].map(lambda v: f"{v:.2f}"),
            "dAIC": comp["dAIC"].map(lambda v: f"{v:.2f}"),
            "LRT vs": comp["lrt_vs"].map(lambda v: v if isinstance(v, str) else "-"),
            "p": comp["lrt_p"].map(lambda v: "-" if not np.isfinite(v) else f"{v:.3g}"),
            "converged": comp["converged"].map(lambda v: "yes" if v else "NO"),
        })
        echo(show.to_string(index=False))
        echo(f"selected (lowest AIC among converged fits): {selected}")
        echo("")
    echo(best.summary())
    if out is not None:
        echo("")
        echo(f"wrote {out}/ (report.md, fit.json, tables and figures)")


# -- commands ---------------------------------------------------------------------------------------
_model_options = [
    click.option("--genetic", type=click.Choice(GENETIC), default="heterogeneous", show_default=True,
                 help="Genetic structure ΣG (ignored with --compare)."),
    click.option("--residual", type=click.Choice(RESIDUAL), default="homogeneous", show_default=True,
                 help="Residual structure ΣE (and the default residual of --compare items)."),
    click.option("--method", type=click.Choice(["reml", "ml"]), default="reml", show_default=True),
    click.option("--engine", type=click.Choice(["auto", "dense", "spectral"]), default="auto", show_default=True),
    click.option("--tol", type=float, default=1e-8, show_default=True, help="Convergence tolerance (Newton decrement)."),
    click.option("--max-iter", type=int, default=200, show_default=True),
    click.option("--json", "as_json", is_flag=True, help="Print the machine-readable summary on stdout."),
    click.option("--no-figures", is_flag=True, help="Skip the PNG figures."),
    click.option("--no-pev", is_flag=True,
                 help="Skip the BLUPs' prediction error variances (for large K the slowest part)."),
    click.option("--quiet", is_flag=True, help="No per-model progress lines on stderr."),
]


def _apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


@click.command("fit")
@click.argument("pheno", type=click.Path(dir_okay=False))
@click.option("--kinship", type=click.Path(dir_okay=False), default=None,
              help="Labelled kinship: .csv (ids in the first column and the header) or .npy (+ .npy.ids).")
@click.option("--genotypes", type=click.Path(dir_okay=False), default=None,
              help="Genotypes to build the GRM from: PLINK .bed (or prefix) or a CSV dosage table.")
@click.option("--grm-method", type=click.Choice(["standardized", "vanraden"]), default="standardized",
              show_default=True, help="GRM form for --genotypes.")
@click.option("--genotype-id", default=None, help="Id column of a CSV dosage table [default: 'id' or the first].")
@click.option("--kinship-scale", type=click.Choice(["mean-diag", "none"]), default="mean-diag", show_default=True,
              help="mean-diag: divide K by its mean diagonal, so that h² is a share of the genotypes' variance.")
@click.option("--jitter", type=float, default=None,
              help="Repair a K that is not positive semi-definite by a ridge (jitter × mean diagonal).")
@click.option("--traits", required=True, help="Trait columns, comma separated: yield,oil.")
@click.option("--env", default=None, help="Environment column (location, site-year) [default: one environment].")
@click.option("--id", "id_", default="id", show_default=True, help="Genotype id column (matched to K by label).")
@click.option("--fixed", default=None,
              help='Extra fixed effects as a formula, a slope per trait: "~ set_env" or "~ x + z" '
                   "(a mean per trait × environment is always in).")
@click.option("--compare", default=None, metavar="LIST",
              help="Fit and compare several models: comma-separated genetic structures (each with "
                   "--residual), genetic/residual pairs such as heterogeneous/heterogeneous, or all.")
@click.option("--sep", default=None, help="Delimiter of PHENO [default: detected].")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for fit.json, tables, figures and report.md (created).")
@_apply(_model_options)
def fit_command(pheno, kinship, genotypes, grm_method, genotype_id, kinship_scale, jitter, traits, env, id_,
                fixed, compare, sep, out, genetic, residual, method, engine, tol, max_iter, as_json,
                no_figures, no_pev, quiet):
    """Fit the multi-trait, multi-environment mixed model to PHENO (CSV/TSV/Parquet).

    Prints variance components with SEs, h² per trait × environment and pooled, genetic
    correlations, logLik/AIC/BIC and convergence; with --compare, the model comparison in the
    layout of the paper's Table 2.  With --out, writes fit.json, CSV tables, figures and
    report.md.  Exit status: 0 success, 2 bad input, 3 a fit did not converge.
    """
    trait_list = [t.strip() for t in traits.split(",") if t.strip()]
    if not trait_list:
        raise InputError("--traits is empty; name the trait columns, e.g. --traits yield,oil")
    models = parse_models(compare, genetic, residual)
    data, read_notes = read_table(pheno, text_columns=[id_] + ([env] if env else []),
                                  numeric_columns=trait_list, sep=sep)
    K, kfacts, knotes = load_kinship(kinship, genotypes, grm_method, genotype_id, jitter, kinship_scale)
    facts, dnotes = data_notes(data, K, trait_list, env, id_)
    facts.update(kfacts)
    facts["pheno"] = str(pheno)
    facts["command"] = _command_line("fit", pheno, dict(
        kinship=kinship, genotypes=genotypes, traits=",".join(trait_list), env=env, id=id_, fixed=fixed,
        compare=compare, genetic=None if compare else genetic, residual=residual, method=method,
        out=out))
    run_analysis(data, K, traits=trait_list, env=env, id=id_, models=models, fixed=fixed, method=method,
                 engine=engine, tol=tol, max_iter=max_iter, out=out, as_json=as_json,
                 figures=not no_figures, facts=facts, notes=read_notes + knotes + dnotes, quiet=quiet,
                 pev=not no_pev)


@click.command("example")
@click.option("--out", type=click.Path(file_okay=False), default="hetvc-example", show_default=True,
              help="Folder for the report.")
@click.option("--compare", default=EXAMPLE_MODELS, show_default=True, metavar="LIST",
              help="Models to compare (as for hetvc fit --compare).")
@click.option("--traits", default="yield,height", show_default=True, help="Traits (yield, oil, height).")
@_apply(_model_options)
def example_command(out, compare, traits, genetic, residual, method, engine, tol, max_iter, as_json,
                    no_figures, no_pev, quiet):
    """Run the paper's Table-2 comparison on the bundled SoyNAM example and write the report.

    160 soybean lines of 4 SoyNAM families, yield and plant height at 3 US locations (2012),
    with a genomic relationship matrix (GPL-3 data; see hetvc/examples/soynam/README.md).
    Fits homogeneous, heterogeneous and unstructured genetic structures, each with homogeneous
    and heterogeneous residuals, and writes report.md, tables and figures into OUT.
    """
    from ..examples import EXAMPLES, example_path

    folder = example_path("soynam")
    spec = EXAMPLES["soynam"]
    roles = spec["roles"]
    trait_list = [t.strip() for t in traits.split(",") if t.strip()]
    models = parse_models(compare, genetic, residual)
    pheno = folder / spec["pheno"]
    data, read_notes = read_table(pheno, text_columns=spec["string_columns"], numeric_columns=trait_list)
    K, kfacts, knotes = load_kinship(folder / spec["kinship"], None, "standardized", None, None, "mean-diag")
    facts, dnotes = data_notes(data, K, trait_list, roles["env"], roles["id"])
    facts.update(kfacts)
    facts["pheno"] = "hetvc/examples/soynam/pheno.csv (bundled)"
    facts["kinship"] = "hetvc/examples/soynam/kinship.csv (bundled)"
    facts["command"] = _command_line("example", None, dict(out=out, compare=compare, traits=",".join(trait_list)))
    run_analysis(data, K, traits=trait_list, env=roles["env"], id=roles["id"], models=models, fixed=None,
                 method=method, engine=engine, tol=tol, max_iter=max_iter, out=out,
                 as_json=as_json, figures=not no_figures, facts=facts, notes=read_notes + knotes + dnotes,
                 quiet=quiet, pev=not no_pev)


COMMANDS = [fit_command, example_command]
