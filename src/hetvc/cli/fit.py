"""`hetvc fit` (a breeder's multi-trait, multi-environment analysis) and `hetvc example`.

    hetvc fit PHENO --kinship K.csv|identity | --genotypes FILE.bed|markers.csv | --pedigree ped.csv
              --traits yield,oil --env env --id genotype [--wide env]
              [--genetic heterogeneous] [--residual homogeneous] [--fixed "~ set_env"] [--factors Rowf,Colf]
              [--random BYEAR,MOTHER,env:block] [--random-kinship male=K_male.csv]
              [--compare homogeneous,heterogeneous,unstructured] [--out DIR] [--json]
              [--kinship-scale mean-diag|centred|none] [--threads 1]

PHENO is CSV/TSV (the delimiter is detected) or Parquet.  With ``--compare`` several models are
fitted to the same data and laid out like the paper's Table 2; an item is a genetic structure
(combined with ``--residual``) or ``genetic/residual`` (``heterogeneous/heterogeneous``), and
``all`` means every genetic × residual structure (with one environment every structure is the
homogeneous one: models are named by what is fitted, and fitted once).

With ``--out`` and several models, each fit is written to ``OUT/fits/<genetic>-<residual>.json``
as soon as it finishes, with a fingerprint of its inputs (the data rows used, K, traits,
environment, id, fixed effects, method, tol, max_iter, engine, PEVs, model).  On Ctrl-C or
SIGTERM the report of the finished models is written and the command exits 130; running the
same command again reuses every fit whose fingerprint matches.  ``--time-limit`` bounds each
model's optimisation.  Progress: a live line in a terminal; elsewhere ``hetvc: ...`` lines on
stderr (the first iteration, then at most one every 5 s, and the last); ``--quiet`` silences
them.  The model with the lowest AICc among those that converged is selected.  The fits run
with ``--threads`` BLAS threads (1 by default: see its help).

Exit codes: 0 success, 2 bad input, 3 a fit that did not converge (its outputs are still
written, marked as not converged), 130 interrupted.
"""

from __future__ import annotations

import re
import shlex
import sys
import time
from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..design_notes import describe_data
from ..errors import ConvergenceError, InputError
from ..examples import EXAMPLES, example_path
from ..fitting import IDENTITY_NOTE, identity_kinship, single_record_note
from ..fixed_effects import resolve_fixed
from ..io_utils import atomic_write
from ..kinship import (check_kinship, grm, kinship_fingerprint, kinship_scaling, looks_like_pedigree,
                       pedigree_kinship, pedigree_summary, read_kinship, read_pedigree, singularity_note)
from ..kinship.pedigree import PedigreeRelationship
from ..options import FitOptions
from ..phenotypes import long_from_wide, read_phenotypes
from ..random_terms import Random, as_random_list
from ..report import (comparison, fit_text, format_p, seconds_text, select, selection_lines,
                      shared_notes, summary, write_report)
from ..results import FitResult
from ..structures import GENETIC, RESIDUAL, structure_class

EXAMPLE_MODELS = "all"


# -- kinship ------------------------------------------------------------------------------------
def _cli_text(text: str) -> str:
    """A kinship message as the command line needs it: the Python hint ``jitter=0.01`` becomes
    the option ``--jitter 0.01``."""
    text = re.sub(r"\bjitter=(?=[0-9.])", "--jitter ", str(text))
    return text.replace("jitter must be a number ≥ 0 or None", "--jitter must be a number ≥ 0")


def _checked(fn, *args, **kwargs):
    """Call a kinship reader/checker; its errors and warnings worded for the command line
    (warnings become notes)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        try:
            out = fn(*args, **kwargs)
        except InputError as err:
            raise InputError(_cli_text(err)) from None
    return out, [_cli_text(w.message) for w in caught if issubclass(w.category, UserWarning)]


def load_kinship(kinship, genotypes, grm_method: str, genotype_id, jitter, scale: str, pedigree=None,
                 positions: bool = False, data=None, id: str = "id", traits=None):
    """(K, facts dict, notes) from a kinship file, from genotypes (a GRM) or from a pedigree
    (``positions``: R-style row numbers; A kept as its sparse inverse, a
    :class:`~hetvc.kinship.pedigree.PedigreeRelationship`, unless it is to be rescaled), or the
    identity over the ids of ``data`` (``kinship="identity"``: an iid genetic effect), scaled
    under --kinship-scale (:func:`hetvc.kinship.kinship_scaling`), with a note when K is
    singular (:func:`hetvc.kinship.singularity_note`)."""

    notes, facts = [], {}
    n_markers = None
    if sum(x is not None for x in (kinship, genotypes, pedigree)) != 1:
        raise InputError("give exactly one of --kinship K.csv, --genotypes FILE.bed|markers.csv or "
                         "--pedigree ped.csv")
    if pedigree is not None:
        ped = read_pedigree(pedigree, positions=positions)
        notes += pedigree_summary(ped, pedigree)
        facts["pedigree"] = str(pedigree)
        if scale == "none" and jitter is None:  # A as it is: carried by its sparse inverse, never formed
            return PedigreeRelationship(ped), facts, notes
        K, warned = _checked(check_kinship, pedigree_kinship(ped), jitter=jitter, name=f"A of {pedigree}")
    elif kinship is not None and str(kinship).lower() == "identity" and not Path(str(kinship)).is_file():
        if data is None:
            raise InputError("--kinship identity needs the phenotype table")
        K, warned = identity_kinship(data, id, traits), []
        facts["kinship"] = "identity"
        notes.append(IDENTITY_NOTE)
    elif kinship is not None:
        if str(kinship).lower().endswith((".csv", ".tsv", ".txt")) and looks_like_pedigree(kinship):
            raise InputError(f"{kinship} looks like a pedigree (id, sire, dam), not a relationship matrix; "
                             f"use --pedigree {kinship}")
        K, warned = _checked(read_kinship, kinship, jitter=jitter)
        facts["kinship"] = str(kinship)
    else:
        K, info = grm(genotypes, method=grm_method, id_column=genotype_id, return_info=True)
        K, warned = _checked(check_kinship, K, jitter=jitter, name=f"GRM of {genotypes}")
        facts["genotypes"] = str(genotypes)
        notes.append(f"GRM built from {genotypes}: {info.summary()}")
        n_markers = int(info.snps_used)
    notes += warned
    K, scale_facts, scale_notes = kinship_scaling(K, scale, name=facts.get("kinship", "K"))
    facts.update(scale_facts)
    notes += scale_notes
    singular = singularity_note(K, n_markers)
    if singular:
        notes.append(singular)
    return K, facts, notes


# -- models ---------------------------------------------------------------------------------------
def parse_models(compare: str | None, genetic: str, residual: str, dim: int | None = None) -> list[tuple[str, str]]:
    """[(genetic, residual)] from ``--compare`` (or the single --genetic/--residual model).
    ``all``: every structure, the factor-analytic ones (fa1 … fa3) only where they have fewer
    parameters than ``unstructured`` on the ``dim`` = L·m rows of the data (any faK by name)."""
    if compare is None:
        return [(genetic, residual)]
    out = []
    for token in [t.strip() for t in compare.split(",") if t.strip()]:
        if token == "all":
            out += [(g, r) for r in RESIDUAL for g in GENETIC if dim is None or _fewer_than_unstructured(g, dim)]
            continue
        g, _, r = token.partition("/")
        g, r = g.strip(), (r.strip() or residual)
        try:
            structure_class("G", g)  # the registry's names, and any faK
        except InputError:
            raise InputError(f"--compare: unknown genetic structure {g!r} in {token!r}; "
                             f"use {', '.join(GENETIC)} (optionally /{'|'.join(RESIDUAL)}) or all") from None
        if r not in RESIDUAL:
            raise InputError(f"--compare: unknown residual structure {r!r} in {token!r}; use {', '.join(RESIDUAL)}")
        out.append((g, r))
    if not out:
        raise InputError("--compare is empty; e.g. --compare homogeneous,heterogeneous,unstructured")
    return list(dict.fromkeys(out))


def _fewer_than_unstructured(genetic: str, dim: int) -> bool:
    cls = structure_class("G", genetic)
    k = getattr(cls, "factors", None)
    if k is None:
        return True
    return dim * (k + 1) - k * (k - 1) // 2 < dim * (dim + 1) // 2


def parse_random(text: str | None, kinships=()) -> list[Random]:
    """The random terms of ``--random BYEAR,MOTHER,env:block=heterogeneous`` (TERM or
    TERM=STRUCTURE), with ``--random-kinship TERM=FILE`` relationship matrices."""
    terms = []
    for token in [t.strip() for t in (text or "").split(",") if t.strip()]:
        factor, _, structure = token.partition("=")
        terms.append(Random(":".join(c.strip() for c in factor.split(":")), structure=structure.strip() or "homogeneous"))
    as_random_list(terms)  # each term once, known structures
    named = {t.name: t for t in terms}
    for item in kinships:
        term, sep, path = item.partition("=")
        term = ":".join(c.strip() for c in term.split(":"))
        if not sep or not path.strip():
            raise InputError(f"--random-kinship {item!r}: write TERM=FILE, e.g. --random-kinship male=K_male.csv")
        if term not in named:
            raise InputError(f"--random-kinship {item!r}: {term!r} is not a term of --random "
                             f"({', '.join(named) or 'none given'})")
        named[term] = Random(term, K=path.strip(), structure=named[term].structure)
    return as_random_list(list(named.values()))


def _data_rows(data: pd.DataFrame, traits: list, env) -> int | None:
    """L·m, the rows of an environment-specific ΣG (environments with a trait value × traits)."""
    present = [t for t in traits if t in data.columns]
    if not present or (env is not None and env not in data.columns):
        return None
    rows = data[data[present].notna().any(axis=1)]
    return len(present) * (rows[env].nunique() if env is not None else 1)


def _command_line(name: str, pheno, opts: dict) -> str:
    parts = ["hetvc", name] + ([str(pheno)] if pheno is not None else [])
    for k, v in opts.items():
        if v is None or v is False:
            continue
        flag = "--" + k.replace("_", "-")
        for item in (v if isinstance(v, (list, tuple)) else [v]):
            parts += [flag] if item is True else [flag, str(item)]
    return shlex.join(parts)


# -- one environment ----------------------------------------------------------------------------
def as_fitted(models, env=None) -> tuple[list, list]:
    """(models, notes): without --env (one environment) a structure is the one it reduces to
    there (heterogeneous and unstructured: homogeneous; hetvc.fit fits it so), so models are
    named by what is fitted and duplicates are fitted once.  (An --env column with one level is an error for the
    environment-specific structures, raised by hetvc.fit.)"""
    if env is not None:
        return list(models), []
    g_cls, e_cls = (lambda g: structure_class("G", g)), (lambda r: structure_class("E", r))
    needs_envs = [f"{g}/{r}" for g, r in models if not (g_cls(g).one_environment or not g_cls(g).per_environment)
                  or not (e_cls(r).one_environment or not e_cls(r).per_environment)]
    if len(models) == 1 or len(needs_envs) == len(models):
        needs_envs = []  # nothing to skip: hetvc.fit says why the structure needs environments
    models = [(g, r) for g, r in models if f"{g}/{r}" not in needs_envs]
    as_one = {(g, r): (g_cls(g).one_environment or g, e_cls(r).one_environment or r) for g, r in models}
    fitted = list(dict.fromkeys(as_one.values()))
    said = []
    for target in fitted:  # e.g. heterogeneous/homogeneous, ... are fitted as homogeneous/homogeneous
        changed = [f"{g}/{r}" for g, r in models if as_one[g, r] == target != (g, r)]
        if changed:
            said.append(f"{', '.join(changed)} {'is' if len(changed) == 1 else 'are'} fitted as "
                        f"{'/'.join(target)}" + (" (once)" if len(models) > 1 else ""))
    said += [f"{', '.join(needs_envs)} need several environments and are not fitted"] if needs_envs else []
    return fitted, [f"one environment (no --env): {'; '.join(said)}"] if said else []


# -- keeping finished fits (resume) -------------------------------------------------------------------
INPUTS_KEY = "hetvc_cli"  # key of the inputs' fingerprint in a fits/*.json written by the CLI
INPUTS_FORMAT = "hetvc-cli-inputs/1"


def _formula_columns(fixed, columns) -> list[str]:
    """The data columns a fixed-effects formula names."""
    if not fixed:
        return []
    text = str(fixed)
    names = set(re.findall(r"`([^`]+)`", text)) | set(re.findall(r"[A-Za-z_.][\w.]*", text))
    return [c for c in columns if str(c) in names]


def _data_digest(data: pd.DataFrame, columns) -> str:
    """SHA-256 of the columns a fit uses (names, types and every row, in order)."""
    import hashlib
    import json

    cols = [c for c in dict.fromkeys(columns) if c is not None and c in data.columns]
    h = hashlib.sha256(json.dumps([[str(c), str(data[c].dtype)] for c in cols]).encode())
    h.update(np.asarray([len(data)], dtype=np.int64).tobytes())
    if cols:
        h.update(pd.util.hash_pandas_object(data[cols], index=False).to_numpy().tobytes())
    return h.hexdigest()


def fit_inputs(data, K, *, traits, env, id, fixed, method, tol, max_iter, engine, pev,
               genetic, residual, k_digest: str | None = None, random=(), factors=None) -> dict:
    """What a fit depends on (its fingerprint): a fit file with the same inputs is reused
    instead of refitted.  ``--time-limit`` is not in it (see :func:`reusable`).  ``k_digest``:
    :func:`hetvc.kinship.kinship_fingerprint` of K, when already computed (once per run);
    ``random``: the :class:`hetvc.Random` terms (their columns and relationship files count);
    ``factors``: the --factors columns (in the fingerprint only when given, so that fits made
    before the option existed are still reused)."""
    columns = [id, env, *traits, *_formula_columns(fixed, data.columns), *random_columns(random)]
    extra = {"factors": str(factors)} if factors else {}
    return {
        **extra,
        "format": INPUTS_FORMAT, "data": _data_digest(data, columns), "n_records": int(len(data)),
        "kinship": k_digest or kinship_fingerprint(K), "n_kinship": len(K),
        "traits": [str(t) for t in traits], "env": env, "id": id, "fixed": fixed, "method": method,
        "tol": float(tol), "max_iter": int(max_iter), "engine": engine, "pev": bool(pev),
        "genetic": genetic, "residual": residual,
        "random": [[t.factor, t.structure, _file_digest(t.K)] for t in random],
    }


def random_columns(random) -> list[str]:
    """The data columns the random terms read."""
    return [c for t in random for c in t.columns]


def _file_digest(path) -> str | None:
    """SHA-256 of a relationship file (None without one)."""
    import hashlib

    return None if path is None else hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_fit(fit, path: Path, inputs: dict, time_limit=None) -> Path:
    """Write ``fit`` (FitResult.to_json's text, so ``hetvc.load`` reads it) with the inputs'
    fingerprint under :data:`INPUTS_KEY`, atomically."""
    import json

    text = fit.to_json()
    meta = json.dumps({"inputs": inputs, "time_limit": time_limit})
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path) as fh:
        fh.write('{"' + INPUTS_KEY + '": ' + meta + ", " + text.lstrip()[1:])
    return path


def reusable(path: Path, inputs: dict, time_limit=None):
    """(fit, why not): the fit stored at ``path`` when it was made with the same inputs, else
    (None, the reason, '' when there is no file).  A fit stopped by its time limit is reused
    only under the same or a shorter limit (a longer one may get further)."""
    import json

    if not path.is_file():
        return None, ""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
        meta = d.get(INPUTS_KEY) or {}
        if meta.get("inputs") != json.loads(json.dumps(inputs)):
            return None, "made with other inputs or options"
        fit = FitResult.from_dict(d)
    except Exception as err:  # unreadable: refit and overwrite it
        return None, f"unreadable ({type(err).__name__})"
    if not fit.converged and fit.record.get("status") == "time limit":
        old = meta.get("time_limit")
        if time_limit is None or old is None or time_limit > old:
            return None, "stopped by a shorter time limit"
    return fit, ""


# -- progress ----------------------------------------------------------------------------------------
PLAIN_INTERVAL = 5.0  # seconds between progress lines when stderr is not a terminal


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    if seconds < 36000:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _extrapolated(record, per: float) -> float | None:
    """Seconds left when the Newton decrement falls steadily under AI: the iterations its
    linear rate over the last two known values needs to reach tol, at ``per`` seconds each;
    None otherwise (too early, an L-BFGS iteration, a decrement that does not fall)."""
    import math

    # history[j].decrement is the Newton decrement at the estimate after iteration j, known once
    # the next iteration starts: extrapolate its linear rate from the last two known values
    history = record.history
    known = [(int(h.iteration), float(h.decrement)) for h in history]
    known = [(j, d) for j, d in known if math.isfinite(d) and d > 0]
    tol = float(record.tol)
    if len(known) < 3 or history[-1].method != "AI" or known[-1][1] >= known[-2][1]:
        return None
    (_, d0), (j, d) = known[-2], known[-1]
    rate = d / d0
    if rate >= 0.9:
        return None
    n = math.ceil(math.log(tol / d) / math.log(rate) - 1e-9) if d > tol else 0
    return max(n - (record.iterations - j), 1) * per  # less the iterations taken since


class TimeLeft:
    """The time left of one model's fit, for its progress line (call it after every
    iteration): ``~12 s left`` when the extrapolation from the Newton decrement
    (:func:`_extrapolated`) has been stable, i.e. this iteration's and the last one's agree on
    when the fit ends (within a quarter of the time left, or one iteration's time); otherwise
    ``≤ 40 s left``, a bound from the time limit or from max_iter at the mean time per
    iteration; '' before the first iteration.  A single extrapolation is never shown: early
    ones jump (~245 s, ~50 s, then a bound of 413 s)."""

    STABLE = 0.25

    def __init__(self):
        self.finish = None  # when the last extrapolation said the fit ends (s since it began)

    def __call__(self, record) -> str:
        its, secs = record.iterations, float(record.seconds)
        if its < 1 or secs <= 0:
            return ""
        per = secs / its
        bounds = [(record.max_iter - its) * per]
        limit = record.time_limit
        if limit:
            bounds.append(max(float(limit) - secs, 0.0))
        bound = min(bounds)
        left = _extrapolated(record, per)
        finish, self.finish = self.finish, None if left is None else secs + left
        if (left is not None and left < bound and finish is not None
                and abs(secs + left - finish) <= max(self.STABLE * left, per)):
            return f"~{_duration(left)} left"
        return f"≤ {_duration(bound)} left"


def progress_text(name: str, record, elapsed: float, left: str = "", full: bool = True) -> str:
    """``heterogeneous/homogeneous it 12 4.2 s (≤ 40 s left) logLik -1234.567 step 1 evals 13``:
    the iteration just taken (``record.history[-1]``), the time since the model's fit began and
    ``left`` (:class:`TimeLeft`) first, so that a narrow terminal cuts the least useful end;
    then ℓ, the step length α (or ``L-BFGS``) and evaluations of ℓ so far (not with
    ``full=False``)."""
    import math

    it = record.history[-1]
    parts = [name, f"it {it.iteration}", _duration(elapsed) + (f" ({left})" if left else "")]
    if not full:
        return " ".join(parts)
    parts.append(f"logLik {float(it.loglik):.3f}")
    if it.method != "AI":
        parts.append(f"step {it.method}")
    elif it.iteration > 0 and math.isfinite(float(it.step)):
        parts.append(f"step {float(it.step):.3g}")
    parts.append(f"evals {record.evaluations}")
    return " ".join(parts)


class Progress:
    """Per-model progress on stderr: in a terminal a live rich line (iteration, elapsed, time
    left, ℓ, step, evaluations); elsewhere plain ``hetvc: ...`` lines, the first iteration,
    then at most one every :data:`PLAIN_INTERVAL` seconds, and always the final one (short,
    with the status only, when the last line already showed that iteration); nothing with
    ``quiet``.  Each finished model also gets a result line."""

    def __init__(self, n_models: int, quiet: bool = False, interval: float | None = None):
        from rich.console import Console
        from rich.progress import Progress as Bar
        from rich.progress import SpinnerColumn, TextColumn

        self.console = Console(stderr=True, soft_wrap=True, highlight=False)
        self.terminal = self.console.is_terminal
        self.quiet, self.n = quiet, n_models
        self.interval = PLAIN_INTERVAL if interval is None else interval
        self.bar = Bar(SpinnerColumn(), TextColumn("{task.description}"), console=self.console,
                       transient=True, disable=quiet or not self.terminal)
        self.task = None

    def __enter__(self):
        self.bar.__enter__()
        return self

    def __exit__(self, *exc):
        return self.bar.__exit__(*exc)

    def _plain(self, text: str) -> None:
        print(f"hetvc: {text}", file=sys.stderr, flush=True)

    def start(self, name: str, k: int) -> None:
        self.name, self.k = name, k
        self.t0 = time.perf_counter()
        self.last = None  # when the last plain line was printed
        self.shown = None  # the iteration it showed
        self.left = TimeLeft()
        if self.terminal and not self.quiet:
            self.task = self.bar.add_task(f"[{k}/{self.n}] fitting {name}", total=None)

    def __call__(self, record) -> None:
        if self.quiet:
            return
        now = time.perf_counter()
        text = progress_text(self.name, record, now - self.t0, self.left(record))
        if self.terminal:
            self.bar.update(self.task, description=f"[{self.k}/{self.n}] {text}")
        elif self.last is None or now - self.last >= self.interval:
            self._plain(text)
            self.last, self.shown = now, record.history[-1].iteration

    def stop(self) -> None:
        if self.task is not None:
            self.bar.remove_task(self.task)
            self.task = None

    def finish(self, fit, line: str) -> None:
        """The model's final progress line (plain mode) and its result line."""
        self.stop()
        if self.quiet:
            return
        history = fit.record.history
        if not self.terminal and history:
            again = self.shown == history[-1].iteration  # that line said the rest
            self._plain(progress_text(self.name, fit.record, time.perf_counter() - self.t0, full=not again)
                        + f": {fit.record.status}")
        self.message(line)

    def message(self, line: str) -> None:
        if not self.quiet:
            self.console.print(line, markup=False)


# -- running ----------------------------------------------------------------------------------------
class _Terminated(KeyboardInterrupt):
    """SIGTERM (a batch system's time-out, ``kill``): handled like Ctrl-C."""


def _on_sigterm(signum, frame):
    raise _Terminated()


def _result_line(k, n, name, fit, reused: Path | None = None) -> str:

    rec = fit.record
    if reused is not None:
        return (f"[{k}/{n}] {name}: reused {reused} (logLik {fit.loglik:.3f}, k {fit.n_params}, "
                f"{rec['status']} after {rec['iterations']} iterations)")
    return (f"[{k}/{n}] {name}: logLik {fit.loglik:.3f}, k {fit.n_params}, "
            f"{rec['status']} after {rec['iterations']} iterations ({seconds_text(rec)}; {fit.engine})")


def run_analysis(data, K, *, traits, env, id, models, fixed, method, options: FitOptions,
                 out, as_json, figures, facts, notes, quiet=False, random=(), factors=None):
    """Fit every model, print the summary (or JSON), write the outputs; exit 3 when a fit did
    not converge, 130 when interrupted (Ctrl-C, SIGTERM) after writing what finished.  Each
    fit runs under ``options`` (:class:`hetvc.FitOptions`), with its ``threads`` BLAS threads
    (``None``: as the process has them), and so does the building of each model (its checks
    of K factorise it).

    With ``--out`` and several models each fit is written to ``out/fits/`` as soon as it
    finishes, with a fingerprint of its inputs; a fit file with the same inputs is reused."""
    import signal

    from threadpoolctl import threadpool_limits

    import hetvc  # loads numpy's and scipy's BLAS, which threadpool_limits then reaches

    models, env_notes = as_fitted(models, env)
    notes = notes + env_notes
    raw_data = data
    data, formula, fixed_notes = resolve_fixed(data, fixed, env, factors=factors)
    notes = notes + fixed_notes
    if facts.get("empty_cells") and len(models) > 1:
        # env-specific structures cannot be estimated: skip them (a single model fails in fit)
        feasible = [(g, r) for g, r in models
                    if not structure_class("G", g).per_environment and not structure_class("E", r).per_environment]
        skipped = [f"{g}/{r}" for g, r in models if (g, r) not in feasible]
        if not feasible:
            t, e = facts["empty_cells"][0]
            raise InputError(
                f"trait {t!r} has no values in environment {e!r}: none of the models asked for can be "
                f"fitted; add homogeneous/homogeneous to --compare or drop that trait")
        if skipped:
            notes = notes + [f"not fitted (a trait has no values in a whole environment): {', '.join(skipped)}"]
            models = feasible
    keep = out is not None and len(models) > 1  # write each fit as it finishes
    progress = Progress(len(models), quiet=quiet)
    fits, fit_files, stopped = {}, {}, None
    k_digest = kinship_fingerprint(K) if keep else None
    try:
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread
        previous = None
    try:
        with progress, threadpool_limits(options.threads):
            for k, (g, r) in enumerate(models, 1):
                name = f"{g}/{r}"
                path = Path(out) / "fits" / f"{g}-{r}.json" if keep else None
                inputs = fit_inputs(raw_data, K, traits=traits, env=env, id=id, fixed=fixed, method=method,
                                    tol=options.tol, max_iter=options.max_iter, engine=options.engine,
                                    pev=options.pev, genetic=g, residual=r, k_digest=k_digest,
                                    random=random, factors=factors) if keep else None
                if keep:
                    fit, why = reusable(path, inputs, options.time_limit)
                    if fit is not None:
                        fits[name], fit_files[name] = fit, path
                        progress.message(_result_line(k, len(models), name, fit, reused=path))
                        continue
                    if why:
                        progress.message(f"[{k}/{len(models)}] {name}: {path} {why}: fitting again")
                progress.start(name, k)
                t0 = time.perf_counter()
                model = hetvc.build_model(data, K, traits, env=env, id=id, genetic=g, residual=r,
                                          fixed=formula, random=random, method=method)
                fit = hetvc.fit_model(model, options, progress=progress, cheaper=list(fits.values()))
                fit.record["seconds_in_all"] = time.perf_counter() - t0  # optimisation and the rest
                if facts.get("kinship") == "identity":  # K = I: is ΣG separable from ΣE?
                    fit.notes = single_record_note(model.design) + list(fit.notes)
                if fixed_notes:  # the formula was rewritten: keep the user's and say what changed
                    fit.fixed = fixed
                    fit.notes = list(fit.notes) + fixed_notes
                # as_fitted named the models by what is fitted, so the fit's own name is ``name``
                if keep:
                    fit_files[name] = write_fit(fit, path, inputs, options.time_limit)
                fits[name] = fit
                progress.finish(fit, _result_line(k, len(models), name, fit))
    except KeyboardInterrupt as err:
        progress.stop()
        stopped = "terminated (SIGTERM)" if isinstance(err, _Terminated) else "interrupted"
    try:
        return _finish(fits, models, stopped, out, as_json, figures, fit_files, facts, notes,
                       dict(traits=list(traits), env=env, id=id, fixed=fixed, method=method,
                            **({"random": [t.name for t in random]} if random else {})),
                       options.time_limit)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _finish(fits, models, stopped, out, as_json, figures, fit_files, facts, notes, setup, time_limit):
    """The outputs after the fits (or after Ctrl-C/SIGTERM stopped them)."""

    data_facts = dict(facts)
    data_facts.update(setup, notes=notes)
    if time_limit is not None:
        data_facts["time_limit"] = time_limit
    if stopped is not None:
        _stop(stopped, fits, models, out, data_facts, figures, fit_files)
    selected = select(fits)
    if out is not None:
        try:
            result = write_report(out, fits, selected, data_facts, figures=figures, fit_files=fit_files)
        except KeyboardInterrupt as err:
            what = "terminated (SIGTERM)" if isinstance(err, _Terminated) else "interrupted"
            click.echo(f"hetvc: {what} while writing the report in {out}/"
                       + (f"; every fit is kept in {out}/fits/" if fit_files else "")
                       + "; run the same command again to write it", err=True)
            sys.exit(130)
    else:
        result = summary(fits, selected, data_facts)
    if as_json:
        import json

        click.echo(json.dumps(result, indent=1, allow_nan=False))
    else:
        print_summary(fits, selected, data_facts, comparison(fits) if len(fits) > 1 else None, out)
    failed = [n for n, f in fits.items() if not f.converged]
    if failed:
        status = fits[failed[0]].record["status"]
        hint = "raise --time-limit" if status == "time limit" else "try --max-iter or a simpler structure"
        raise ConvergenceError(
            f"{len(failed)} model(s) did not converge ({', '.join(failed)}): {status}; "
            f"see record['message'] in the fit; {hint}")
    return fits, result


def _stop(stopped, fits, models, out, data_facts, figures, fit_files):
    """After Ctrl-C or SIGTERM: the report of the finished models, one line, exit 130."""

    done = ", ".join(fits) or "none"
    missing = [f"{g}/{r}" for g, r in models if f"{g}/{r}" not in fits]
    where = ""
    if out is not None and fits:
        data_facts.update(not_fitted=missing, stopped=stopped)
        try:
            write_report(out, fits, None, data_facts, figures=figures, fit_files=fit_files)
            where = f"; wrote {out}/ (report.md on the finished models)"
        except KeyboardInterrupt:
            where = f"; the report was not written, the finished fits are in {out}/fits/"
    elif out is None and fits:
        where = "; nothing written (give --out DIR to keep finished fits)"
    again = "; run the same command again to resume" if out is not None else ""
    click.echo(f"hetvc: {stopped}: {len(fits)} of {len(models)} models fitted ({done})"
               f"{where}{again}", err=True)
    sys.exit(130)


TERMINAL_ROWS = 30  # rows of each table in the terminal summary (report.md and the CSVs keep all)


def print_summary(fits, selected, facts, comp, out):

    echo = click.echo
    primary = selected if selected is not None else (next(iter(fits)) if len(fits) == 1 else None)
    shared = shared_notes(fits)
    for n in dict.fromkeys(list(facts.get("notes", [])) + shared):
        echo(f"note: {n}")
    if comp is not None:
        echo("")
        echo("Model comparison (paper Table 2 layout; VCs = covariance parameters)")
        two = lambda v: f"{v:.2f}" if np.isfinite(v) else "-"
        cols = {"model (G/E)": comp["model"], "VCs": comp["k"],
                "logLik": comp["logLik"].map(two), "AIC": comp["AIC"].map(two)}
        delta = "dAIC"
        if "AICc" in comp.columns:
            cols["AICc"] = comp["AICc"].map(two)
            delta = "dAICc"
        cols.update({
            "BIC": comp["BIC"].map(two), delta: comp[delta].map(two),
            "LRT vs": comp["lrt_vs"].map(lambda v: v if isinstance(v, str) else "-"),
            "p": comp["lrt_p"].map(lambda v: format_p(v, 3, "-")),
            "converged": [("yes" if fits[n].converged else f"NO ({fits[n].record.get('status')})")
                          for n in comp["model"]],
        })
        echo(pd.DataFrame(cols).to_string(index=False))
        for line in selection_lines(fits, comp):
            echo("selected" + line[len("Selected"):] if line.startswith("Selected") else line)
        echo("")
    if primary is not None:
        echo(fit_text(fits[primary], skip_notes=shared, max_rows=TERMINAL_ROWS, out=out))
    else:
        why = "No model is selected (see above)" if any(f.converged for f in fits.values()) else "No model converged"
        echo(f"{why}: no estimates to show as a result"
             + (f"; every fit is in {out}/fits/ and report.md" if out is not None else ""))
    if out is not None:
        echo("")
        echo(f"wrote {out}/ (report.md, {'fit.json, ' if primary is not None else ''}tables and figures)")


# -- commands ---------------------------------------------------------------------------------------
_model_options = [
    click.option("--genetic", type=click.Choice(GENETIC), default="heterogeneous", show_default=True,
                 help="Genetic structure ΣG (ignored with --compare)."),
    click.option("--residual", type=click.Choice(RESIDUAL), default="homogeneous", show_default=True,
                 help="Residual structure ΣE (and the default residual of --compare items)."),
    click.option("--method", type=click.Choice(["reml", "ml"]), default="reml", show_default=True),
    click.option("--engine", type=click.Choice(["auto", "dense", "spectral", "mme"]), default="auto", show_default=True,
                 help="auto: spectral where exact, else the mixed-model equations (mme) or dense, whichever an "
                      "iteration costs less; the choice and why are in the report"),
    click.option("--tol", type=float, default=1e-8, show_default=True, help="Convergence tolerance (Newton decrement)."),
    click.option("--max-iter", type=int, default=200, show_default=True,
                 help="Most iterations per model (AI steps and L-BFGS iterations together)."),
    click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=None,
                 metavar="SECONDS",
                 help="Most seconds of optimisation per model; a fit stopped by it is kept, marked "
                      "'time limit' (not converged)."),
    click.option("--json", "as_json", is_flag=True, help="Print the machine-readable summary on stdout."),
    click.option("--no-figures", is_flag=True, help="Skip the PNG figures."),
    click.option("--no-pev", is_flag=True,
                 help="Skip the BLUPs' prediction error variances (for large K the slowest part)."),
    click.option("--quiet", is_flag=True, help="No progress or per-model lines on stderr."),
    click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
                 help="BLAS threads for the fits. 1 by default: a fit solves many small systems, "
                      "where more threads gain little and, on a machine whose cores are busy, "
                      "OpenBLAS's waiting threads can make a fit many times slower (0.3 s became "
                      "63 s on a shared 2-core machine). Raise it for a large K on cores of your own."),
]


# the relationship matrix: shared by `hetvc fit` and `hetvc cv`
kinship_options = [
    click.option("--kinship", type=click.Path(dir_okay=False), default=None,
                 help="Labelled kinship: .csv (ids in the first column and the header) or .npy (+ .npy.ids); "
                      "'identity' for trials without markers or pedigree (an iid genetic effect, K = I over "
                      "the ids in PHENO: h² is broad-sense, at the level of a single record)."),
    click.option("--genotypes", type=click.Path(dir_okay=False), default=None,
                 help="Genotypes to build the GRM from: PLINK .bed (or prefix) or a CSV dosage table."),
    click.option("--grm-method", type=click.Choice(["standardized", "vanraden"]), default="standardized",
                 show_default=True, help="GRM form for --genotypes."),
    click.option("--genotype-id", default=None, help="Id column of a CSV dosage table [default: 'id' or the first]."),
    click.option("--kinship-scale", type=click.Choice(["mean-diag", "centred", "none"]), default=None,
                 show_default="mean-diag; none with --pedigree",
                 help="mean-diag: divide K by its mean diagonal (ΣG is the variance of a genotype's own "
                      "value); centred: divide K by mean(diag K) − mean(K), so that ΣG and h² refer to "
                      "the variance among the genotypes in K (Legarra 2016; the two agree for a centred "
                      "K); none: K as given (the default for a pedigree's A, whose scale is the base "
                      "population's)."),
    click.option("--pedigree", type=click.Path(dir_okay=False), default=None,
                 help="Pedigree (.csv/.tsv: id, sire, dam; unknown parents 0, NA, ., -, * or empty) to "
                      "build the additive relationship matrix A from, instead of --kinship."),
    click.option("--pedigree-positions", is_flag=True,
                 help="The pedigree's sire and dam are 1-based row numbers of its id column (R's "
                      "integer-coded pedigrees), not ids."),
    click.option("--jitter", type=float, default=None,
                 help="Repair a K that is not positive semi-definite by a ridge (jitter × mean diagonal)."),
]


def _apply(options):
    def deco(f):
        for opt in reversed(options):
            f = opt(f)
        return f
    return deco


@click.command("fit")
@click.argument("pheno", type=click.Path(dir_okay=False))
@_apply(kinship_options)
@click.option("--traits", required=True, help="Trait columns, comma separated: yield,oil.")
@click.option("--env", default=None, help="Environment column (location, site-year) [default: one environment].")
@click.option("--id", "id_", default="id", show_default=True, help="Genotype id column (matched to K by label).")
@click.option("--fixed", default=None,
              help='Extra fixed effects as a formula, a slope per trait: "~ set_env" or "~ x + z" '
                   "(a mean per trait × environment is always in). A text column is a factor (an "
                   "effect per level); a numeric one is a slope: write C(Rowf) for a factor coded "
                   'as numbers ("~ C(Rowf) + C(Colf)"), or name it in --factors.')
@click.option("--factors", default=None, metavar="LIST",
              help="Columns of --fixed to treat as factors although they hold numbers (row and "
                   "column indices, years), comma separated: --factors Rowf,Colf is C(Rowf), C(Colf).")
@click.option("--random", "random_", default=None, metavar="LIST",
              help="Random terms beyond the genetic one, comma separated: columns (BYEAR,MOTHER) or "
                   "interactions (env:block, for blocks nested in environments), each with an "
                   "unstructured covariance across traits, the same in every environment; "
                   "TERM=STRUCTURE for another (diagonal: no trait covariances; heterogeneous: one "
                   "per environment). h² divides by every term.")
@click.option("--random-kinship", multiple=True, metavar="TERM=FILE",
              help="A relationship matrix over a random term's levels (labelled, as --kinship); "
                   "repeat for several terms.")
@click.option("--compare", default=None, metavar="LIST",
              help="Fit and compare several models: comma-separated genetic structures (each with "
                   "--residual), genetic/residual pairs such as heterogeneous/heterogeneous, or all.")
@click.option("--sep", default=None, help="Delimiter of PHENO [default: detected].")
@click.option("--wide", default=None, metavar="NAME",
              help="PHENO is wide: a row per genotype (--id) and a column per environment, all "
                   "holding the one trait named by --traits (as sommer's DT_wheat); it is read as "
                   "records (id, NAME, trait) and NAME is the environment column (--env).")
@click.option("--wide-columns", default=None, metavar="PATTERN",
              help="With --wide: the columns that hold the trait, '{}' where the environment is, e.g. "
                   "'Flowering.time.at.{}' in a table with a column per trait × site (sommer's DT_rice).")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Folder for fit.json, tables, figures and report.md (created).")
@_apply(_model_options)
def fit_command(pheno, kinship, genotypes, grm_method, genotype_id, kinship_scale, pedigree, pedigree_positions,
                jitter, traits, env, id_, fixed, factors, random_, random_kinship, compare, sep, wide, wide_columns, out, genetic, residual,
                method, engine, tol, max_iter, time_limit, as_json, no_figures, no_pev, quiet, threads):
    """Fit the multi-trait, multi-environment mixed model to PHENO (CSV/TSV/Parquet).

    Prints variance components with SEs, h² per trait × environment and pooled, genetic
    correlations, logLik/AIC/AICc/BIC and convergence; with --compare, the model comparison in the
    layout of the paper's Table 2.  With --out, writes fit.json, CSV tables, figures and
    report.md; with --compare each model's fit goes to OUT/fits/ as soon as it finishes, and
    running the same command again reuses the fits made with the same inputs and options.
    Exit status: 0 success, 2 bad input, 3 a fit did not converge, 130 interrupted (Ctrl-C or
    SIGTERM; the finished models are reported).
    """
    trait_list = [t.strip() for t in traits.split(",") if t.strip()]
    if not trait_list:
        raise InputError("--traits is empty; name the trait columns, e.g. --traits yield,oil")
    options = FitOptions(engine=engine, tol=tol, max_iter=max_iter, time_limit=time_limit, pev=not no_pev,
                         threads=threads)
    random = parse_random(random_, random_kinship)
    default_scale = "none" if pedigree else "mean-diag"  # a pedigree's A is on its base population's scale
    kinship_scale = kinship_scale or default_scale
    if wide_columns is not None and wide is None:
        raise InputError("--wide-columns goes with --wide NAME (the environment column it makes)")
    if wide is not None:
        if len(trait_list) != 1:
            raise InputError(f"--wide: a wide table holds one trait; name it with --traits (got {traits!r})")
        if env is not None and env != wide:
            raise InputError(f"--wide {wide} names the environment column; drop --env {env} or make it --env {wide}")
        if random:
            raise InputError("--wide: a wide table has no columns for --random terms")
        env = wide
        data, read_notes = read_phenotypes(pheno, text_columns=[id_], sep=sep)
        data, wide_note = long_from_wide(data, id_, trait_list[0], env_name=wide, pattern=wide_columns)
        read_notes = read_notes + [wide_note]
    else:
        data, read_notes = read_phenotypes(pheno, text_columns=[id_] + ([env] if env else []) + random_columns(random),
                                           numeric_columns=trait_list, sep=sep)
    K, kfacts, knotes = load_kinship(kinship, genotypes, grm_method, genotype_id, jitter, kinship_scale,
                                     pedigree=pedigree, positions=pedigree_positions, data=data, id=id_,
                                     traits=trait_list)
    models = parse_models(compare, genetic, residual, dim=_data_rows(data, trait_list, env))
    facts, dnotes = describe_data(data, K, trait_list, env, id_)
    facts.update(kfacts)
    facts["pheno"] = str(pheno)
    facts["command"] = _command_line("fit", pheno, dict(
        kinship=kinship, genotypes=genotypes, pedigree=pedigree, pedigree_positions=pedigree_positions,
        traits=",".join(trait_list), env=env, id=id_, fixed=fixed, factors=factors, random=random_,
        random_kinship=list(random_kinship) or None, wide=wide, wide_columns=wide_columns, compare=compare, genetic=None if compare else genetic, residual=residual, method=method,
        kinship_scale=None if kinship_scale == default_scale else kinship_scale, time_limit=time_limit,
        out=out))
    run_analysis(data, K, traits=trait_list, env=env, id=id_, models=models, fixed=fixed, method=method,
                 options=options, out=out, as_json=as_json, figures=not no_figures, facts=facts,
                 notes=read_notes + knotes + dnotes, quiet=quiet, random=random, factors=factors)


@click.command("example")
@click.option("--out", type=click.Path(file_okay=False), default="hetvc-example", show_default=True,
              help="Folder for the report.")
@click.option("--compare", default=EXAMPLE_MODELS, show_default=True, metavar="LIST",
              help="Models to compare (as for hetvc fit --compare).")
@click.option("--traits", default="yield,height", show_default=True, help="Traits (yield, oil, height).")
@_apply(_model_options)
def example_command(out, compare, traits, genetic, residual, method, engine, tol, max_iter, time_limit,
                    as_json, no_figures, no_pev, quiet, threads):
    """Run the paper's Table-2 comparison on the bundled SoyNAM example and write the report.

    160 soybean lines of 4 SoyNAM families, yield and plant height at 3 US locations (2012),
    with a genomic relationship matrix (GPL-3 data; see hetvc/examples/soynam/README.md).
    Fits every genetic structure (homogeneous, heterogeneous, diagonal, unstructured, and the
    factor-analytic fa1 and fa2, which have fewer parameters than unstructured on 3 locations ×
    2 traits), each with homogeneous and heterogeneous residuals, and writes report.md, tables
    and figures into OUT (about a minute on one core).
    """

    folder = example_path("soynam")
    spec = EXAMPLES["soynam"]
    roles = spec["roles"]
    trait_list = [t.strip() for t in traits.split(",") if t.strip()]
    options = FitOptions(engine=engine, tol=tol, max_iter=max_iter, time_limit=time_limit, pev=not no_pev,
                         threads=threads)
    pheno = folder / spec["pheno"]
    data, read_notes = read_phenotypes(pheno, text_columns=spec["string_columns"], numeric_columns=trait_list)
    models = parse_models(compare, genetic, residual, dim=_data_rows(data, trait_list, roles["env"]))
    K, kfacts, knotes = load_kinship(folder / spec["kinship"], None, "standardized", None, None, "mean-diag")
    facts, dnotes = describe_data(data, K, trait_list, roles["env"], roles["id"])
    facts.update(kfacts)
    facts["pheno"] = "hetvc/examples/soynam/pheno.csv (bundled)"
    facts["kinship"] = "hetvc/examples/soynam/kinship.csv (bundled)"
    facts["command"] = _command_line("example", None, dict(out=out, compare=compare, traits=",".join(trait_list),
                                                           time_limit=time_limit))
    run_analysis(data, K, traits=trait_list, env=roles["env"], id=roles["id"], models=models, fixed=None,
                 method=method, options=options, out=out, as_json=as_json, figures=not no_figures,
                 facts=facts, notes=read_notes + knotes + dnotes, quiet=quiet)


COMMANDS = [fit_command, example_command]
