r"""The simulation study of the paper (Table 1): a resumable grid runner, local or on Dask.

A *scenario* is one point of the grid (n, traits m, locations L, SNPs p, h², w, ρ); a *task*
is one replicate of one scenario: simulate a data set with :func:`hetvc.simulate.simulate`,
then fit every model of the study to it (by default the paper's two, ``homogeneous`` and
``heterogeneous`` genetic with a ``homogeneous`` residual) sharing one
:class:`~hetvc.engines.EigenCache`.  A *fit* is one (scenario, replicate, model): one row of
``results.csv``.

    from hetvc.study import grid, run
    res = run("out/", grid(w=[0, 0.5, 1], rho=[0.5]), replicates=20)   # local processes
    res = run("out/", ..., scheduler="tcp://10.0.0.1:8786")             # a Dask cluster
    res.table1          # the Table 1 layout (rows model × w, columns ρ)

Seeds
-----
The data seed of a task depends only on the base seed, the scenario's parameters and the
replicate number::

    SeedSequence(base_seed, spawn_key=(scenario_hash, replicate)).generate_state(2, uint32)

(``scenario_hash``: 32 bits of a BLAKE2b hash of the canonical parameter string, see
:attr:`Scenario.key`).  Neither the scenario's position in the grid, nor the number of
workers, nor the order in which tasks finish, nor the backend (processes or Dask) enters, so
the same study gives the same rows however it is scheduled, and adding a value of w to a
finished study leaves the old scenarios' data unchanged.  Scenarios get *independent* data
(no common random numbers), so their Monte-Carlo errors are independent.

The results file, and why a kill never leaves a half row
--------------------------------------------------------
Only the coordinating process writes.  Workers (processes or Dask workers) return the rows
of a finished task; a worker that dies loses at most its running task, which is
resubmitted.  ``results.csv`` is one CSV file: a header written atomically
(:func:`hetvc.io_utils.atomic_write`) when the study starts, then one **append** per task:
the task's rows (all its models) are encoded as complete ``\n``-terminated lines and handed
to the kernel with ``os.write`` on an ``O_APPEND`` descriptor (looped until every byte is
written), then ``fsync``-ed before the task counts as done.  Every line ends with a CRC-32 of
its own text (column ``crc``).  When a study is opened again:

* a last line without its ``\n`` (a process killed inside the write, a full disk) is cut off
  (the file is truncated to the last complete line), and
* any line whose field count or CRC is wrong (e.g. zero-filled blocks after a power failure
  on some file systems) is dropped and the file is rewritten atomically without it,

so the file always holds only complete, verified rows and the tasks behind the dropped bytes
are simply run again.  The alternative, one small file per fit renamed into a ``fits/``
folder, is equally safe but leaves thousands of files and needs a separate "build the table"
step; the append log with a repair-on-open gives one file that is always the table.  A lock
(``.study.lock``, ``flock``) stops two studies from writing the same folder at once.

Resume: ``run`` on an existing folder reads the valid rows, skips every (scenario, replicate,
model) already there — error rows included, since the same seed would fail the same way —
and runs the rest.  ``study.json`` keeps the base seed and the fit options; resuming with a
different seed or options is refused (the rows would not belong to one study).  Rows are
appended in completion order; :func:`load_results` sorts them.

Parallel backends
-----------------
* default: a :class:`concurrent.futures.ProcessPoolExecutor` (``forkserver`` start method
  where available, else ``spawn``) with ``workers`` processes (default: every core), each
  limited to ``max(1, cores // workers)`` BLAS threads.  A worker that dies (killed, out of
  memory) breaks the pool: the pool is restarted and the unfinished tasks resubmitted (up to
  ``max_restarts`` times).  ``workers=0`` runs the tasks in the coordinating process
  itself (no pool).  Ctrl-C cancels what has not started, keeps what has finished,
  and leaves a folder that the next ``run`` resumes.
* ``scheduler="tcp://host:port"`` or a ``dask.distributed.Client``: the tasks go to that
  cluster (``client.submit``, two retries on a lost worker; Dask itself reschedules the
  tasks of a worker that disappears).  Dask is optional (``pip install 'hetvc[cluster]'``)
  and imported only then; the workers need hetvc installed.

At most ``2 × slots`` tasks are in flight, so an interrupt loses little and memory stays flat.

Summary (:func:`summarize`, :func:`table1`, :func:`win_rates`)
----------------------------------------------------------------
For each fit, ``h2_pooled`` is the pooled heritability (paper eq. 12, docs/design.md §5) averaged
over the m traits.  Per scenario and model: the mean of ``h2_pooled`` over replicates, its
Monte-Carlo SE ``sd / √R`` (sd with ddof = 1, R the fits used), the share of fits that
converged (of all fits, error rows counting as not converged) and the bias against the
true pooled h².  By default only converged fits enter the mean (``converged_only``).
Win rates: per scenario, the share of replicates (with every model fitted without error) in
which each model has the smallest AIC (BIC); ties go to the first model.  The two models are
not nested (docs/design.md §1 and §5), so no likelihood-ratio test is reported.

Progress: a ``rich`` progress bar (fits done, rate, ETA) when stderr is a terminal, else a
plain line at most every ``log_every`` seconds.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import itertools
import json
import math
import multiprocessing as mp
import os
import platform
import signal
import socket
import sys
import time
import zlib
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor
from concurrent.futures import wait as futures_wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from .errors import HetvcError, InputError
from .io_utils import atomic_write

__all__ = [
    "Scenario", "Task", "StudyResult", "StudyError", "grid", "quick_grid", "QUICK_REPLICATES", "replicate_seed", "tasks",
    "run_task", "run", "load_results", "summarize", "table1", "table1_markdown", "win_rates",
    "win_rates_markdown", "write_summary", "DEFAULT_W", "DEFAULT_RHO", "DEFAULT_SEED", "MODELS",
    "PAPER_TABLE1", "COLUMNS",
]

DEFAULT_W = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_RHO = (0.25, 0.5, 0.75)
DEFAULT_SEED = 20240917
MODELS = ("homogeneous", "heterogeneous")
MODEL_LABELS = {
    "homogeneous": "mvLMM, general VC (homogeneous)",
    "heterogeneous": "mvLMM, location-specific VCs (heterogeneous)",
    "unstructured": "mvLMM, unstructured G×E",
}
FORMAT = "hetvc-study"
VERSION = 1

# The paper's Table 1 (pooled h², true value 0.30): {model: {w: (ρ=0.25, ρ=0.5, ρ=0.75)}}.
PAPER_TABLE1 = {
    "homogeneous": {0.0: (0.2741, 0.2966, 0.2834), 0.2: (0.2707, 0.2831, 0.2416),
                    0.4: (0.2561, 0.2721, 0.2311), 0.6: (0.2489, 0.2504, 0.2341),
                    0.8: (0.2313, 0.2361, 0.2229), 1.0: (0.2329, 0.2375, 0.2266)},
    "heterogeneous": {0.0: (0.2895, 0.2896, 0.2756), 0.2: (0.2891, 0.2889, 0.3016),
                      0.4: (0.2995, 0.2797, 0.2967), 0.6: (0.2930, 0.2879, 0.2954),
                      0.8: (0.2964, 0.2849, 0.3028), 1.0: (0.3013, 0.2966, 0.3016)},
}

# Columns of results.csv (format version 1).  JSON columns hold L×m tables (env-major rows,
# trait columns) or m-vectors; ``crc`` is the CRC-32 of the line's text before ``,crc``.
COLUMNS = (
    "scenario", "n", "traits", "locations", "snps", "h2", "w", "rho", "replicate", "seed",
    "model", "status", "engine", "converged", "iterations", "loglik", "n_params", "aic", "bic",
    "h2_pooled", "h2_pooled_true", "h2_pooled_traits", "h2_env", "g_env", "g_env_true", "e_env",
    "seconds", "sim_seconds", "worker", "error", "crc",
)
SCENARIO_FIELDS = ("n", "traits", "locations", "snps", "h2", "w", "rho")
_JSON_COLUMNS = ("h2_pooled_traits", "h2_env", "g_env", "g_env_true", "e_env")


class StudyError(HetvcError):
    """A study that cannot go on (a folder of another study, a pool that keeps dying)."""


# ---------------------------------------------------------------------------------------
# grid and seeds


@dataclass(frozen=True)
class Scenario:
    """One point of the study grid (generative parameters of :func:`hetvc.simulate.simulate`).

    Everything else of the simulation keeps simulate's defaults: ``split`` design (each
    individual in one location, balanced), location means N(0, 1) as fixed effects, residual
    trait correlation ρ_e = ρ, equal genetic scale in every location, no covariates, no
    missing values, allele frequencies from {0.05, 0.1, 0.3, 0.4, 0.5}.
    """

    n: int = 1000
    traits: int = 3
    locations: int = 4
    snps: int = 500
    h2: float = 0.30
    w: float = 0.0
    rho: float = 0.5

    def __post_init__(self):
        for name in ("n", "traits", "locations", "snps"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise InputError(f"scenario {name} must be a positive integer, not {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("h2", "w", "rho"):
            try:
                object.__setattr__(self, name, float(getattr(self, name)))
            except (TypeError, ValueError):
                raise InputError(f"scenario {name} must be a number, not {getattr(self, name)!r}") from None
        if not 0 <= self.h2 <= 1:
            raise InputError(f"h2 must be in [0, 1], not {self.h2}")
        if not 0 <= self.w <= 1:
            raise InputError(f"w must be in [0, 1], not {self.w}")
        lo = -1.0 / (self.traits - 1) if self.traits > 1 else -math.inf
        if not lo < self.rho <= 1:
            raise InputError(f"rho = {self.rho} gives no correlation matrix for {self.traits} traits")
        if self.n < 2 * self.locations:
            raise InputError(f"n = {self.n} is too small for {self.locations} locations")

    @property
    def key(self) -> str:
        """Canonical label, e.g. ``n1000-m3-L4-p500-h0.3-w0.2-r0.5`` (repr of each float)."""
        return (f"n{self.n}-m{self.traits}-L{self.locations}-p{self.snps}-h{self.h2!r}"
                f"-w{self.w!r}-r{self.rho!r}")

    @property
    def hash32(self) -> int:
        return int.from_bytes(hashlib.blake2b(self.key.encode(), digest_size=4).digest(), "little")

    def params(self) -> dict:
        return dataclasses.asdict(self)


def grid(n: int = 1000, traits: int = 3, locations: int = 4, snps: int = 500, h2=0.30,
         w: Iterable[float] = DEFAULT_W, rho: Iterable[float] = DEFAULT_RHO) -> list[Scenario]:
    """The scenarios of every combination (any argument may be a scalar or a list), w-major."""
    def as_list(x):
        return list(x) if isinstance(x, (list, tuple, np.ndarray, range)) else [x]

    out, seen = [], set()
    for combo in itertools.product(*(as_list(v) for v in (n, traits, locations, snps, h2, w, rho))):
        sc = Scenario(*combo)
        if sc.key not in seen:
            seen.add(sc.key)
            out.append(sc)
    if not out:
        raise InputError("the study grid is empty")
    return out


def quick_grid() -> list[Scenario]:
    """The ``--quick`` grid: n = 200, 3 traits, 4 locations, 500 SNPs, w ∈ {0, 1}, ρ = 0.5."""
    return grid(n=200, w=[0.0, 1.0], rho=[0.5])


QUICK_REPLICATES = 3


def replicate_seed(base_seed: int, scenario: Scenario, replicate: int) -> int:
    """The data seed of one replicate of one scenario (see the module docstring)."""
    if int(base_seed) != base_seed or base_seed < 0:
        raise InputError(f"seed must be an integer ≥ 0, not {base_seed!r}")
    ss = np.random.SeedSequence(int(base_seed), spawn_key=(scenario.hash32, int(replicate)))
    a, b = ss.generate_state(2, np.uint32)
    return (int(a) << 32) | int(b)


@dataclass(frozen=True)
class Task:
    """One replicate of one scenario, with the models still to fit and the fit options."""

    scenario: Scenario
    replicate: int
    seed: int
    models: tuple = MODELS
    residual: str = "homogeneous"
    tol: float = 1e-8
    max_iter: int = 200

    @property
    def key(self) -> str:
        return f"{self.scenario.key}#{self.replicate}"


def tasks(scenarios: Sequence[Scenario], replicates: int, base_seed: int = DEFAULT_SEED,
          models: Sequence[str] = MODELS, done: set | None = None, **fit_options) -> list[Task]:
    """Tasks of the study, replicate-major (replicate 0 of every scenario first, so a partial
    study is balanced), without the fits in ``done`` (a set of (scenario key, replicate, model))."""
    done = done or set()
    out = []
    for r in range(int(replicates)):
        for sc in scenarios:
            todo = tuple(m for m in models if (sc.key, r, m) not in done)
            if todo:
                out.append(Task(sc, r, replicate_seed(base_seed, sc, r), todo, **fit_options))
    return out


# ---------------------------------------------------------------------------------------
# one task (runs in a worker)


def _json(x) -> str:
    return json.dumps(np.asarray(x, dtype=float).tolist())


def run_task(task: Task) -> list[dict]:
    """Simulate the task's data set and fit its models (one row per model, errors as rows)."""
    from .engines import EigenCache
    from .fit import fit
    from .simulate import simulate

    sc = task.scenario
    base = dict(scenario=sc.key, **sc.params(), replicate=task.replicate, seed=task.seed,
                worker=f"{socket.gethostname()}:{os.getpid()}")
    t0 = time.perf_counter()
    try:
        sim = simulate(n=sc.n, traits=sc.traits, locations=sc.locations, snps=sc.snps, h2=sc.h2,
                       w=sc.w, rho=sc.rho, seed=task.seed)
    except Exception as err:  # noqa: BLE001 - recorded as a row, the study goes on
        return [_error_row(base, m, err, sim_seconds=time.perf_counter() - t0) for m in task.models]
    sim_seconds = time.perf_counter() - t0
    truth = sim.truth
    traits = list(truth.traits)
    g_true = np.array([np.diag(b) for b in truth.G_blocks])
    cache = EigenCache()  # both models of this replicate share the eigendecompositions of K
    rows = []
    for model in task.models:
        t1 = time.perf_counter()
        try:
            res = fit(sim.pheno, sim.K, traits, env="env", id="id", genetic=model,
                      residual=task.residual, pev=False, eigen=cache, tol=task.tol,
                      max_iter=task.max_iter)
            ph = res.pooled_heritability()["h2"].to_numpy()
            h2_env = res.heritability()["h2"].to_numpy().reshape(len(res.envs), len(traits))
            G, E = res._full(res.theta)
            L, m = len(res.envs), len(traits)
            rows.append(dict(
                base, model=model, status="ok", engine=res.engine, converged=res.converged,
                iterations=int(res.record["iterations"]), loglik=float(res.loglik),
                n_params=int(res.n_params), aic=float(res.aic), bic=float(res.bic),
                h2_pooled=float(np.mean(ph)), h2_pooled_true=float(np.mean(truth.h2_pooled)),
                h2_pooled_traits=_json(ph), h2_env=_json(h2_env),
                g_env=_json(np.diagonal(G).reshape(L, m)), g_env_true=_json(g_true),
                e_env=_json(np.diagonal(E).reshape(L, m)),
                seconds=time.perf_counter() - t1, sim_seconds=sim_seconds, error="",
            ))
        except Exception as err:  # noqa: BLE001
            rows.append(_error_row(base, model, err, seconds=time.perf_counter() - t1,
                                   sim_seconds=sim_seconds, h2_pooled_true=float(np.mean(truth.h2_pooled))))
    return rows


def _error_row(base, model, err, **extra) -> dict:
    msg = f"{type(err).__name__}: {err}".replace("\n", " ")[:500]
    return dict(base, model=model, status="error", converged=False, error=msg, **extra)


# ---------------------------------------------------------------------------------------
# the results file


def _encode(row: dict) -> bytes:
    buf = io.StringIO()
    values = []
    for c in COLUMNS[:-1]:
        v = row.get(c, "")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            v = ""
        elif isinstance(v, (bool, np.bool_)):
            v = "True" if v else "False"
        elif isinstance(v, (float, np.floating)):
            v = repr(float(v))
        values.append(v)
    csv.writer(buf, lineterminator="").writerow(values)
    body = buf.getvalue()
    if "\n" in body or "\r" in body:  # pragma: no cover - every field is one line
        raise ValueError("a results row must not contain a line break")
    return f"{body},{zlib.crc32(body.encode('utf-8')):08x}\n".encode("utf-8")


def _header() -> bytes:
    return (",".join(COLUMNS) + "\n").encode("utf-8")


def _valid(line: bytes) -> bool:
    """A complete line whose CRC and field count check out."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    body, sep, crc = text.rpartition(",")
    if not sep or len(crc) != 8 or f"{zlib.crc32(body.encode('utf-8')):08x}" != crc:
        return False
    try:
        fields = next(csv.reader([body]))
    except (csv.Error, StopIteration):
        return False
    return len(fields) == len(COLUMNS) - 1


class ResultsFile:
    """``results.csv``: repaired on open, appended one task (complete lines) at a time."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.repaired = 0  # bytes cut from an incomplete last line
        self.dropped = 0  # lines dropped for a bad CRC / field count
        self._open()

    def _open(self):
        if not self.path.exists() or self.path.stat().st_size == 0:
            with atomic_write(self.path, "wb") as fh:
                fh.write(_header())
        data = self.path.read_bytes()
        if not data.startswith(_header()):
            first = data.split(b"\n", 1)[0][:200].decode("utf-8", "replace")
            raise StudyError(
                f"{self.path} is not a hetvc study results file of this version (header {first!r}); "
                "use a new output folder")
        cut = data.rfind(b"\n") + 1
        if cut < len(data):
            self.repaired = len(data) - cut
            os.truncate(self.path, cut)
            data = data[:cut]
        lines = data[len(_header()):].split(b"\n")[:-1]
        good = [ln for ln in lines if _valid(ln)]
        self.dropped = len(lines) - len(good)
        if self.dropped:
            with atomic_write(self.path, "wb") as fh:
                fh.write(_header())
                fh.write(b"".join(ln + b"\n" for ln in good))
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def append(self, rows: Sequence[dict]) -> None:
        if not rows:
            return
        blob = b"".join(_encode(r) for r in rows)
        view = memoryview(blob)
        while view:
            k = os.write(self._fd, view)
            view = view[k:]
        os.fsync(self._fd)

    def close(self):
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_rows(path) -> pd.DataFrame:
    """The valid rows of a results file as a raw DataFrame (file order; bad lines skipped)."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.csv"
    if not path.exists():
        raise InputError(f"no study results at {path}")
    data = path.read_bytes()
    if not data.startswith(_header()):
        raise InputError(f"{path} is not a hetvc study results file")
    lines = [ln for ln in data[len(_header()):].split(b"\n")[:-1] if _valid(ln)]
    text = _header() + b"".join(ln + b"\n" for ln in lines)
    text_cols = ("scenario", "model", "status", "engine", "worker", "error") + _JSON_COLUMNS
    df = pd.read_csv(io.BytesIO(text), dtype={c: str for c in text_cols}, keep_default_na=False, na_values=[""])
    for c in ("engine", "worker", "error") + _JSON_COLUMNS:
        df[c] = df[c].fillna("")
    df["converged"] = df["converged"].map({True: True, False: False, "True": True, "False": False}).fillna(False).astype(bool)
    return df


def load_results(out) -> pd.DataFrame:
    """The study's rows, one per fit, sorted by scenario parameters, replicate and model.

    A duplicate (scenario, replicate, model) — possible only if a task finished twice, e.g.
    after a lost Dask worker whose result still arrived — keeps the first row."""
    df = read_rows(out)
    df = df.drop_duplicates(["scenario", "replicate", "model"], keep="first")
    df = df.drop(columns=["crc"])
    order = {m: i for i, m in enumerate(list(MODELS) + sorted(set(df["model"]) - set(MODELS)))}
    df = df.assign(_m=df["model"].map(order)).sort_values(list(SCENARIO_FIELDS) + ["replicate", "_m"])
    return df.drop(columns="_m").reset_index(drop=True)


def json_table(df: pd.DataFrame, column: str) -> np.ndarray:
    """The JSON column as an array (fits × ...); error rows give NaN."""
    vals = [np.asarray(json.loads(s), dtype=float) if s else None for s in df[column]]
    shape = next((v.shape for v in vals if v is not None), (0,))
    return np.stack([v if v is not None else np.full(shape, np.nan) for v in vals]) if vals else np.empty((0,) + shape)


# ---------------------------------------------------------------------------------------
# study folder: config, lock


def _lock(out: Path):
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        return None
    fh = open(out / ".study.lock", "a+")
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        fh.close()
        raise StudyError(f"another hetvc study is running in {out}; wait for it or use another --out") from None
    return fh


def _config(out: Path, seed, options: dict) -> dict:
    path = out / "study.json"
    if path.exists():
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except ValueError as err:
            raise StudyError(f"cannot read {path}: {err}") from None
        if cfg.get("format") != FORMAT:
            raise StudyError(f"{path} is not a hetvc study file; use a new output folder")
        if seed is not None and int(seed) != cfg["seed"]:
            raise StudyError(f"{out} holds a study with seed {cfg['seed']}, not {seed}; "
                             f"resume it with --seed {cfg['seed']} (or no --seed), or use a new --out")
        for k, v in options.items():
            if cfg["options"].get(k) != v:
                raise StudyError(f"{out} holds a study with {k} = {cfg['options'].get(k)!r}, not {v!r}; "
                                 "use the same options to resume, or a new --out")
        return cfg
    cfg = dict(format=FORMAT, version=VERSION, seed=int(DEFAULT_SEED if seed is None else seed),
               options=options, runs=[])
    with atomic_write(path) as fh:
        json.dump(cfg, fh, indent=1)
    return cfg


def _machine() -> dict:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        cores = os.cpu_count() or 1
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo", encoding="utf-8"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:  # pragma: no cover
        pass
    return dict(host=socket.gethostname(), cores=cores, cpu=cpu, python=platform.python_version(),
                platform=platform.platform())


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover
        return os.cpu_count() or 1


# ---------------------------------------------------------------------------------------
# backends


def _init_worker(threads: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the coordinator's to handle
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)
    except ImportError:  # pragma: no cover
        pass


class _LocalBackend:
    name = "local"

    def __init__(self, workers: int):
        self.workers = workers
        self.threads = max(1, _cores() // workers)
        methods = mp.get_all_start_methods()
        self.ctx = mp.get_context("forkserver" if "forkserver" in methods else "spawn")
        if self.ctx.get_start_method() == "forkserver":
            self.ctx.set_forkserver_preload(["hetvc.study", "hetvc.fit", "hetvc.simulate"])
        self.pool = None
        self.start()

    @property
    def slots(self) -> int:
        return self.workers

    def describe(self) -> str:
        return f"{self.workers} local worker process{'es' if self.workers > 1 else ''} ({self.threads} BLAS thread{'s' if self.threads > 1 else ''} each)"

    def start(self):
        self.pool = ProcessPoolExecutor(self.workers, mp_context=self.ctx, initializer=_init_worker,
                                        initargs=(self.threads,))

    def restart(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.start()

    def submit(self, task):
        return self.pool.submit(run_task, task)

    def wait_any(self, futures):
        done, _ = futures_wait(futures, return_when=FIRST_COMPLETED)
        return done

    def broken(self, err) -> bool:
        return isinstance(err, BrokenProcessPool)

    def cancel(self, futures):
        self.pool.shutdown(wait=True, cancel_futures=True)

    def close(self):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class _InlineBackend:
    """``workers=0``: every task in the coordinating process, one at a time (no pool)."""

    name = "inline"
    slots = 1

    def describe(self) -> str:
        return "the coordinating process (workers=0, no pool)"

    def submit(self, task):
        from concurrent.futures import Future

        fut = Future()
        fut.set_result(run_task(task))
        return fut

    def wait_any(self, futures):
        return futures

    def broken(self, err) -> bool:
        return False

    def restart(self):  # pragma: no cover
        pass

    def cancel(self, futures):
        pass

    def close(self):
        pass


class _DaskBackend:
    name = "dask"

    def __init__(self, scheduler):
        try:
            from dask import distributed
        except ImportError:
            raise InputError("a Dask scheduler was given but dask.distributed is not installed; "
                             "pip install 'hetvc[cluster]' (or 'dask[distributed]')") from None
        self.dd = distributed
        if isinstance(scheduler, distributed.Client):
            self.client, self.own = scheduler, False
        elif isinstance(scheduler, str):
            try:
                self.client, self.own = distributed.Client(scheduler, timeout="30s"), True
            except (OSError, TimeoutError) as err:
                raise InputError(f"cannot connect to the Dask scheduler at {scheduler}: {err}") from None
        else:
            raise InputError(f"scheduler must be an address like tcp://host:8786 or a dask.distributed.Client, "
                             f"not {type(scheduler).__name__}")

    @property
    def slots(self) -> int:
        return max(1, sum(self.client.nthreads().values()))

    def describe(self) -> str:
        return f"Dask cluster at {self.client.scheduler.address} ({self.slots} threads)"

    def submit(self, task):
        return self.client.submit(run_task, task, pure=False, retries=2)

    def wait_any(self, futures):
        return self.dd.wait(futures, return_when="FIRST_COMPLETED").done

    def broken(self, err) -> bool:
        return False

    def restart(self):  # pragma: no cover - Dask reschedules by itself
        pass

    def cancel(self, futures):
        self.client.cancel(list(futures))

    def close(self):
        if self.own:
            self.client.close()


# ---------------------------------------------------------------------------------------
# progress


class _Progress:
    def __init__(self, mode, total: int, done: int, log_every: float):
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        self.log_every = log_every
        self.last = 0.0
        self.bar = None
        if mode == "auto":
            from rich.console import Console

            mode = "bar" if Console(stderr=True).is_terminal else "log"
        self.mode = mode
        if mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]hetvc study"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("fits"), TextColumn("{task.fields[rate]}"),
                                TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                console=Console(stderr=True), transient=False)
            self.bar.start()
            self.task = self.bar.add_task("study", total=total, completed=done, rate="")

    def message(self, text: str):
        if self.mode == "bar":
            self.bar.console.print(text)
        elif self.mode == "log":
            print(f"hetvc study: {text}", file=sys.stderr, flush=True)

    def advance(self, k: int):
        self.done += k
        el = time.monotonic() - self.t0
        new = self.done - self.start_done
        rate = new / el if el > 0 else 0.0
        if self.mode == "bar":
            self.bar.update(self.task, advance=k, rate=f"{rate:.2f} fits/s")
        elif self.mode == "log":
            now = time.monotonic()
            if now - self.last >= self.log_every or self.done >= self.total:
                self.last = now
                left = self.total - self.done
                eta = _hms(left / rate) if rate > 0 else "?"
                pct = 100.0 * self.done / self.total if self.total else 100.0
                print(f"hetvc study: {self.done}/{self.total} fits ({pct:.1f}%), {rate:.2f} fits/s, "
                      f"elapsed {_hms(el)}, ETA {eta}", file=sys.stderr, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.stop()


def _hms(s: float) -> str:
    s = int(round(s))
    h, r = divmod(s, 3600)
    m, s = divmod(r, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


# ---------------------------------------------------------------------------------------
# the runner


@dataclass
class StudyResult:
    """What :func:`run` leaves: the folder, the rows, the summaries and this run's counts."""

    out: Path
    results: pd.DataFrame
    summary: pd.DataFrame
    table1: pd.DataFrame
    win_rates: pd.DataFrame
    fits_run: int
    fits_skipped: int
    seconds: float
    backend: str
    files: list = field(default_factory=list)


def run(out, scenarios: Sequence[Scenario] | None = None, replicates: int = 100, *,
        seed: int | None = None, models: Sequence[str] = MODELS, residual: str = "homogeneous",
        workers: int | None = None, scheduler=None, progress="auto", log_every: float = 10.0,
        tol: float = 1e-8, max_iter: int = 200, max_restarts: int = 3, summary: bool = True,
        plots: bool = False, converged_only: bool = True) -> StudyResult:
    """Run (or resume) a simulation study into folder ``out``.

    scenarios: from :func:`grid` (default: the paper's grid).  replicates: per scenario.
    seed: base seed (default: the folder's, else ``DEFAULT_SEED``).  models: genetic
    structures to fit to every replicate.  workers: local processes (default: every core).
    scheduler: a Dask address ``tcp://host:port`` or a ``dask.distributed.Client`` instead of
    local processes.  workers=0 runs every task in this process (no pool; for debugging and
    small studies).  progress: ``"auto"`` (bar on a terminal, else log lines), ``"bar"``,
    ``"log"`` or ``None``.  summary/plots: write the summary tables / figures at the end.
    """
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create output folder {out}: {err}") from None
    scenarios = list(grid() if scenarios is None else scenarios)
    replicates = int(replicates)
    if replicates < 1:
        raise InputError(f"replicates must be ≥ 1, not {replicates}")
    models = tuple(models)
    bad = [m for m in models if m not in ("homogeneous", "heterogeneous", "unstructured")]
    if bad or not models or len(set(models)) != len(models):
        raise InputError(f"models must be distinct names among homogeneous, heterogeneous, unstructured; got {list(models)}")
    if workers is not None and (int(workers) != workers or workers < 0):
        raise InputError(f"workers must be an integer ≥ 0 (0: no worker processes), not {workers!r}")
    options = dict(residual=residual, tol=float(tol), max_iter=int(max_iter))
    lock = _lock(out)
    t0 = time.monotonic()
    backend = None
    written = 0
    try:
        cfg = _config(out, seed, options)
        base_seed = cfg["seed"]
        with ResultsFile(out / "results.csv") as rf:
            prior = read_rows(out / "results.csv")
            done = set(zip(prior["scenario"], prior["replicate"].astype(int), prior["model"]))
            todo = tasks(scenarios, replicates, base_seed, models, done, **options)
            total = len(scenarios) * replicates * len(models)
            n_todo = sum(len(t.models) for t in todo)
            prog = _Progress(progress, total, total - n_todo, log_every) if progress else None
            if prog and (rf.repaired or rf.dropped):
                prog.message(f"repaired {out / 'results.csv'}: cut {rf.repaired} bytes of an incomplete "
                             f"last line, dropped {rf.dropped} damaged line(s)")
            try:
                if todo:
                    if scheduler is not None:
                        backend = _DaskBackend(scheduler)
                    elif workers == 0:
                        backend = _InlineBackend()
                    else:
                        backend = _LocalBackend(int(workers or _cores()))
                    if prog:
                        prog.message(f"{n_todo} fits to run ({total - n_todo} already in {out}) on {backend.describe()}")
                    written = _drive(backend, todo, rf, prog, max_restarts)
                elif prog:
                    prog.message(f"all {total} fits are already in {out}")
            finally:
                if prog:
                    prog.close()
                if backend is not None:
                    backend.close()
        seconds = time.monotonic() - t0
        cfg.setdefault("runs", []).append(dict(
            finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(seconds, 3), fits=written,
            backend=backend.describe() if backend else "none", machine=_machine(),
            scenarios=len(scenarios), replicates=replicates, models=list(models)))
        with atomic_write(out / "study.json") as fh:
            json.dump(cfg, fh, indent=1)
    finally:
        if lock is not None:
            lock.close()
    results = load_results(out)
    keys = {s.key for s in scenarios}
    mine = results[results["scenario"].isin(keys) & (results["replicate"] < replicates) & results["model"].isin(models)]
    files = []
    if summary:
        files += write_summary(mine, out, converged_only=converged_only)
    if plots:
        from .study_plots import make_figures

        files += make_figures(out, mine, base_seed=base_seed)
    summ = summarize(mine, converged_only=converged_only)
    return StudyResult(out=out, results=mine, summary=summ, table1=table1(summ), win_rates=win_rates(mine),
                       fits_run=written, fits_skipped=total - n_todo, seconds=seconds,
                       backend=backend.describe() if backend else "none", files=files)


class _PoolBroken(Exception):
    """Internal: the worker pool died (raised by submit or by a future's result)."""


def _drive(backend, todo: list[Task], rf: ResultsFile, prog, max_restarts: int) -> int:
    """Keep at most 2 × slots tasks in flight; append each finished task's rows; restart a
    broken local pool and resubmit what it lost; on Ctrl-C keep what finished."""
    queue = deque(todo)
    pending: dict = {}
    window = 2 * backend.slots
    restarts = written = 0

    def keep(rows):
        nonlocal written
        rf.append(rows)
        written += len(rows)
        if prog:
            prog.advance(len(rows))

    def finished_ok(f) -> bool:
        try:
            return f.done() and not f.cancelled() and f.exception() is None
        except Exception:  # noqa: BLE001 - e.g. a cancelled Dask future
            return False

    try:
        while queue or pending:
            try:
                while queue and len(pending) < window:
                    t = queue[0]
                    try:
                        fut = backend.submit(t)
                    except Exception as err:  # noqa: BLE001
                        if backend.broken(err):
                            raise _PoolBroken(err) from err
                        raise
                    queue.popleft()
                    pending[fut] = t
                for fut in backend.wait_any(list(pending)):
                    if fut not in pending:
                        continue
                    try:
                        rows = fut.result()
                    except Exception as err:  # noqa: BLE001
                        if backend.broken(err):
                            raise _PoolBroken(err) from err
                        raise StudyError(f"task {pending[fut].key} failed in the {backend.name} backend: "
                                         f"{type(err).__name__}: {err}; run again to resume") from err
                    del pending[fut]
                    keep(rows)
            except _PoolBroken as broken:
                err = broken.__cause__
                restarts += 1
                lost = []
                for f, t in pending.items():  # keep what finished before the pool broke
                    if finished_ok(f):
                        keep(f.result())
                    else:
                        lost.append(t)
                pending.clear()
                queue.extendleft(reversed(lost))
                if restarts > max_restarts:
                    raise StudyError(
                        f"the worker pool died {restarts} times (last: {err}); a task may be killing "
                        f"its worker (memory?); finished fits are kept, run again to resume") from err
                if prog:
                    prog.message(f"a worker process died ({err}); restarting the pool and "
                                 f"resubmitting {len(lost)} unfinished task(s)")
                backend.restart()
    except KeyboardInterrupt:
        backend.cancel(list(pending))
        for fut in pending:  # keep what finished while we were stopping
            if finished_ok(fut):
                keep(fut.result())
        if prog:
            prog.message(f"interrupted: {written} fits written this run; run the same command again to resume")
        raise
    return written


# ---------------------------------------------------------------------------------------
# summaries


def summarize(results: pd.DataFrame, converged_only: bool = True) -> pd.DataFrame:
    """Per scenario and model: fits, converged share, mean pooled h² with its Monte-Carlo SE.

    Columns: the scenario fields, ``model``, ``fits`` (rows), ``errors``, ``converged``
    (count), ``converged_share`` (= converged / fits), ``used`` (fits in the mean),
    ``h2_mean``, ``h2_sd`` (ddof 1), ``h2_se`` (= sd/√used), ``h2_true``, ``bias``
    (= mean − true), ``aic_mean``, ``bic_mean``, ``iterations_mean``, ``seconds_mean``.
    """
    cols = list(SCENARIO_FIELDS) + ["model"]
    rows = []
    if len(results) == 0:
        return pd.DataFrame(columns=cols + ["fits", "errors", "converged", "converged_share", "used", "h2_mean",
                                            "h2_sd", "h2_se", "h2_true", "bias", "aic_mean", "bic_mean",
                                            "iterations_mean", "seconds_mean"])
    order = {m: i for i, m in enumerate(list(MODELS) + sorted(set(results["model"]) - set(MODELS)))}
    for key, g in results.groupby(cols, sort=False):
        ok = g["status"] == "ok"
        conv = ok & g["converged"].astype(bool)
        use = g[conv if converged_only else ok]
        x = use["h2_pooled"].astype(float).to_numpy()
        k = len(x)
        mean = float(np.mean(x)) if k else np.nan
        sd = float(np.std(x, ddof=1)) if k > 1 else np.nan
        true = float(np.nanmean(g["h2_pooled_true"].astype(float))) if g["h2_pooled_true"].notna().any() else np.nan
        rows.append(dict(zip(cols, key), fits=len(g), errors=int((~ok).sum()), converged=int(conv.sum()),
                         converged_share=float(conv.sum()) / len(g), used=k, h2_mean=mean, h2_sd=sd,
                         h2_se=sd / math.sqrt(k) if k > 1 else np.nan, h2_true=true, bias=mean - true,
                         aic_mean=float(use["aic"].mean()) if k else np.nan,
                         bic_mean=float(use["bic"].mean()) if k else np.nan,
                         iterations_mean=float(use["iterations"].mean()) if k else np.nan,
                         seconds_mean=float(use["seconds"].mean()) if k else np.nan))
    df = pd.DataFrame(rows)
    df = df.assign(_m=df["model"].map(order)).sort_values(list(SCENARIO_FIELDS[:-2]) + ["_m", "w", "rho"])
    return df.drop(columns="_m").reset_index(drop=True)


def _varying(summary: pd.DataFrame) -> list[str]:
    return [c for c in SCENARIO_FIELDS[:-2] if summary[c].nunique() > 1]


def table1(summary: pd.DataFrame) -> pd.DataFrame:
    """The Table 1 layout: one row per (other varying parameters, model, w), and per ρ the
    columns ``rho=<ρ> h2``, ``rho=<ρ> se``, ``rho=<ρ> converged`` (share)."""
    if len(summary) == 0:
        return pd.DataFrame()
    idx = _varying(summary) + ["model", "w"]
    wide = summary.pivot_table(index=idx, columns="rho", values=["h2_mean", "h2_se", "converged_share"],
                               aggfunc="first", sort=False, dropna=False)
    out = pd.DataFrame(index=wide.index)
    for r in sorted(summary["rho"].unique()):
        for src, name in (("h2_mean", "h2"), ("h2_se", "se"), ("converged_share", "converged")):
            out[f"rho={r:g} {name}"] = wide[(src, r)] if (src, r) in wide.columns else np.nan
    out = out.reset_index()
    order = {m: i for i, m in enumerate(list(MODELS) + sorted(set(out["model"]) - set(MODELS)))}
    out = out.assign(_m=out["model"].map(order)).sort_values(_varying(summary) + ["_m", "w"])
    return out.drop(columns="_m").reset_index(drop=True)


def _pct(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.0f}%"


def _cell(mean, se, conv) -> str:
    if mean is None or math.isnan(mean):
        return f"– ({_pct(conv)})"
    s = f"{mean:.4f}"
    if se is not None and not math.isnan(se):
        s += f" ± {se:.4f}"
    return f"{s} ({_pct(conv)})"


def table1_markdown(summary: pd.DataFrame, paper: bool = False) -> str:
    """Table 1 as Markdown: cells ``mean ± MC SE (converged share)``; ``paper=True`` adds the
    paper's value of the same cell (where it has one) in brackets."""
    if len(summary) == 0:
        return "_no results_\n"
    t = table1(summary)
    rhos = sorted(summary["rho"].unique())
    fixed = [c for c in SCENARIO_FIELDS[:-2] if c not in _varying(summary)]
    head = ", ".join(f"{c} = {summary[c].iloc[0]:g}" for c in fixed)
    lines = [f"Pooled h² (mean over traits and replicates) ± Monte-Carlo SE (share of fits converged); {head}."]
    if paper:
        lines[0] += " In brackets: the paper's Table 1."
    vary = _varying(summary)
    lines += ["", "| " + " | ".join(vary + ["model", "w"] + [f"ρ = {r:g}" for r in rhos]) + " |",
              "|" + "---|" * (len(vary) + 2 + len(rhos))]
    for _, row in t.iterrows():
        cells = [f"{row[c]:g}" for c in vary] + [MODEL_LABELS.get(row["model"], row["model"]), f"{row['w']:g}"]
        for r in rhos:
            c = _cell(row[f"rho={r:g} h2"], row[f"rho={r:g} se"], row[f"rho={r:g} converged"])
            if paper:
                ref = PAPER_TABLE1.get(row["model"], {}).get(round(float(row["w"]), 6))
                if ref is not None and r in DEFAULT_RHO:
                    c += f" [{ref[DEFAULT_RHO.index(r)]:.4f}]"
            cells.append(c)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def win_rates(results: pd.DataFrame) -> pd.DataFrame:
    """Per scenario: replicates compared (every model fitted without error) and, per model,
    the share of them in which it has the smallest AIC (``aic_<model>``) and BIC (``bic_<model>``)."""
    cols = list(SCENARIO_FIELDS)
    if len(results) == 0:
        return pd.DataFrame(columns=cols + ["replicates"])
    models = [m for m in list(MODELS) + sorted(set(results["model"]) - set(MODELS)) if m in set(results["model"])]
    rows = []
    for key, g in results.groupby(cols, sort=False):
        ok = g[g["status"] == "ok"]
        rec = dict(zip(cols, key))
        for crit in ("aic", "bic"):
            wide = ok.pivot_table(index="replicate", columns="model", values=crit, aggfunc="first")
            wide = wide.reindex(columns=models).dropna()
            rec["replicates"] = len(wide)
            best = wide.to_numpy().argmin(axis=1) if len(wide) else np.array([], dtype=int)
            for i, m in enumerate(models):
                rec[f"{crit}_{m}"] = float(np.mean(best == i)) if len(wide) else np.nan
        rows.append(rec)
    df = pd.DataFrame(rows)
    return df.sort_values(cols).reset_index(drop=True)


def win_rates_markdown(wins: pd.DataFrame) -> str:
    if len(wins) == 0:
        return "_no results_\n"
    models = [c[4:] for c in wins.columns if c.startswith("aic_")]
    vary = [c for c in SCENARIO_FIELDS[:-2] if wins[c].nunique() > 1]
    head = vary + ["w", "ρ", "replicates"] + [f"AIC: {m}" for m in models] + [f"BIC: {m}" for m in models]
    lines = ["Share of replicates in which each model has the smallest AIC / BIC.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, r in wins.iterrows():
        cells = [f"{r[c]:g}" for c in vary] + [f"{r['w']:g}", f"{r['rho']:g}", f"{int(r['replicates'])}"]
        cells += [_pct(r[f"aic_{m}"]) for m in models] + [_pct(r[f"bic_{m}"]) for m in models]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_summary(results: pd.DataFrame, out, converged_only: bool = True) -> list[Path]:
    """Write summary.csv (long), table1.csv / table1.md (Table 1 layout) and win_rates.csv /
    win_rates.md into ``out`` (atomically).  Returns the paths."""
    out = Path(out)
    summ = summarize(results, converged_only=converged_only)
    wins = win_rates(results)
    files = []
    for name, frame in (("summary.csv", summ), ("table1.csv", table1(summ)), ("win_rates.csv", wins)):
        with atomic_write(out / name) as fh:
            frame.to_csv(fh, index=False, float_format="%.6g")
        files.append(out / name)
    with atomic_write(out / "table1.md") as fh:
        fh.write(table1_markdown(summ))
    files.append(out / "table1.md")
    with atomic_write(out / "win_rates.md") as fh:
        fh.write(win_rates_markdown(wins))
    files.append(out / "win_rates.md")
    return files
