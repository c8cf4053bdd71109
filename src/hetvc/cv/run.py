"""Cross-validated predictive ability of multi-environment genomic models: :func:`cross_validate`.

Every fold of every scheme (:mod:`hetvc.cv.schemes`) is a task (:class:`hetvc.cv.task.CVTask`)
fitted by every model; the tasks run on the simulation study's runner
(:mod:`hetvc.study.backends`): in this process, on local worker processes (one BLAS thread
each) or on a Dask cluster.  The folds depend only on the seed (or the fold table), and each
fit only on its fold's data, so the predictions are the same whatever the scheduling.

With an output folder the run is resumable: each finished fold × model is written atomically
to ``OUT/folds/<fold key>.<model>.json`` as soon as it is done; running again skips what is
there.  ``OUT/cv.json`` keeps what the predictions depend on (data and K digests, traits,
columns, folds, seed, residual, fit options); resuming with any of them changed is refused,
while schemes and models may be added.  At the end the folder gets ``predictions.csv`` (one
row per scored record), ``fits.csv`` (one row per fold × model), ``ability.csv`` and
``ability.md`` (the summary table) and ``ability.png`` (models compared per scheme).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import replace
from os import PathLike
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError
from ..fitting import build_model, relationship
from ..io_utils import atomic_write
from ..kinship import check_kinship, kinship_fingerprint, read_kinship
from ..kinship.pedigree import PedigreeRelationship
from ..options import FitOptions
from ..structures import structure_class
from ..study.backends import run_all
from ..study.folder import StudyError, lock_folder, machine_info, read_config
from ..study.progress import StudyProgress
from .result import CVResult
from .schemes import SCHEMES, make_folds
from .task import PREDICTION_COLUMNS, PROCESS_CACHE, CVTask, FullFit, Inputs

FORMAT = "hetvc-cv"
FIT_COLUMNS = ["scheme", "model", "fold", "key", "hidden_env", "hidden_trait", "n_hidden", "n_test", "status",
               "engine", "iterations", "seconds"]


def cross_validate(data: pd.DataFrame, K, traits, env: str, id: str = "id",
                   schemes=("cv1", "cv2"), folds: int | None = None,
                   models=("homogeneous", "heterogeneous"), seed=1, residual: str = "homogeneous",
                   fold_table: pd.DataFrame | None = None, options: FitOptions | None = None,
                   accuracy: bool = False, out=None, workers: int | None = 0, scheduler=None,
                   progress=None, log_every: float = 10.0, figures: bool = True) -> CVResult:
    """Cross-validate genomic prediction across environments.

    data, K, traits, env, id, residual : as in :func:`hetvc.fit` (``env`` is required).
    schemes : any of ``"cv1"``, ``"cv2"``, ``"cv2t"`` (several traits), ``"cv0"``, ``"cv00"``.
    folds : number of folds (line folds for CV1/CV00, cell folds for CV2/CV2t; unused by CV0);
        default 5, or as many as the fold table has.
    models : genetic structures to compare (``genetic=`` of :func:`hetvc.fit`).
    seed : the folds' random seed; the folds do not depend on the order of fitting.
    fold_table : DataFrame with columns ``id`` (named as ``id``) and ``fold``: the line folds
        of CV1 (and of CV00) instead of random ones; CV2 still uses ``seed``.
    options : :class:`hetvc.FitOptions` for every fit (PEVs are never computed).
    accuracy : also fit each model to all the data, for accuracy = r/√h² (:meth:`CVResult.accuracy`).
    out : a folder to write the results to, and to resume from (module docstring).
    workers : 0 (default): every fit in this process; ``None``: a worker process per core;
        k: k worker processes.  scheduler : a Dask address ``tcp://host:port`` or client.
    progress : ``None``, ``"auto"``, ``"bar"`` or ``"log"`` (as ``hetvc study``).
    """
    if env is None or env not in data.columns:
        raise InputError(f"cross-validation needs an environment column; {env!r} is not in the data")
    traits = (traits,) if isinstance(traits, str) else tuple(traits)
    schemes = [s.lower() for s in ([schemes] if isinstance(schemes, str) else schemes)]
    for s in schemes:
        if s not in SCHEMES:
            raise InputError(f"unknown scheme {s!r}; choose from {', '.join(SCHEMES)}")
    models = tuple([models] if isinstance(models, str) else models)
    for m in models:
        structure_class("G", m)  # an unknown structure is refused now, not once per fold
    if not models or len(set(models)) != len(models) or len(set(schemes)) != len(schemes):
        raise InputError(f"give distinct schemes and models; got {schemes} and {list(models)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise InputError(f"seed must be an integer (the folds come from it), not {seed!r}")
    options = replace(options if options is not None else FitOptions(), pev=False)
    if workers != 0 or scheduler is not None:
        options = replace(options, threads=1)  # the workers fill the cores
    if folds is None:
        folds = int(fold_table["fold"].nunique()) if fold_table is not None and "fold" in fold_table else 5
    data = data.reset_index(drop=True)
    K = _relationship(K, data, id, traits)
    # every refusal of the data (ids not in K, blank cells, …) now, not as failed folds
    build_model(data, K, list(traits), env=env, id=id, genetic=models[0], residual=residual)
    if {"cv0", "cv00"} & set(schemes) and data[env].nunique() < 2:
        raise InputError("schemes cv0 and cv00 hide a whole environment: they need at least two environments")
    inputs = Inputs(data, K, traits, env, id, residual, options)
    ids, envs = data[id].to_numpy(), data[env].to_numpy()
    tasks = [CVTask(inputs, s, f, models)
             for s in schemes
             for f in make_folds(s, ids, envs, folds, seed, fold_table if s in ("cv1", "cv00") else None, id,
                                 traits)]
    if accuracy:
        tasks += [FullFit(inputs, m) for m in models]
    settings = dict(traits=list(traits), env=env, id=id, residual=residual, seed=int(seed),
                    folds=_digest(fold_table) if fold_table is not None else int(folds),
                    data=_digest(data[[id, env, *traits]]), K=kinship_fingerprint(K)[:16],
                    options=dict(method="reml", tol=options.tol, max_iter=options.max_iter,
                                 time_limit=options.time_limit, engine=options.engine))
    sink = _FolderSink(Path(out), settings) if out is not None else _MemorySink()
    with sink:
        todo = [t for t in (sink.todo(task) for task in tasks) if t is not None]
        total = sum(len(t.models) for t in tasks)
        n_todo = sum(len(t.models) for t in todo)
        prog = StudyProgress(progress, total, total - n_todo, log_every, label="hetvc cv") if progress else None
        t0 = time.monotonic()
        try:
            _, described = run_all(todo, sink, prog, scheduler=scheduler, workers=workers, total=total,
                                   where=out if out is not None else "memory")
        finally:
            PROCESS_CACHE.clear()  # what the folds run in this process kept
        sink.finish(time.monotonic() - t0, described)
        rows = [sink.rows[(t.key, m)] for t in tasks for m in t.models]
    result = _result(rows)
    if out is not None:
        result.out = Path(out)
        result.files = write_outputs(result, Path(out), figures)
    return result


def _relationship(K, data: pd.DataFrame, id: str, traits) -> pd.DataFrame | PedigreeRelationship:
    """K once for every fold (:func:`hetvc.fitting.relationship`), a labelled matrix read and
    checked here, so that each fold's fit only hashes it."""
    K = relationship(K, data, id, list(traits))
    if isinstance(K, PedigreeRelationship):
        return K
    return read_kinship(K) if isinstance(K, (str, PathLike)) else check_kinship(K)


def _digest(frame: pd.DataFrame) -> str:
    """SHA-256 (first 16 hex digits) of a table's labels and values."""
    h = hashlib.sha256(pd.util.hash_pandas_object(frame, index=True).to_numpy().tobytes())
    h.update(json.dumps([str(c) for c in frame.columns]).encode())
    return h.hexdigest()[:16]


def _result(rows: list[dict]) -> CVResult:
    """The CVResult of the rows of every fold × model (in task order: the same for any schedule)."""
    full = [r for r in rows if r["scheme"] == "FULL"]
    predictions = [r["predictions"] for r in rows if r["scheme"] != "FULL" and len(r["predictions"])]
    predictions = (pd.concat(predictions, ignore_index=True) if predictions
                   else pd.DataFrame(columns=PREDICTION_COLUMNS))
    fits = pd.DataFrame([{c: r.get(c) for c in FIT_COLUMNS} for r in rows], columns=FIT_COLUMNS)
    h2 = [r["h2"] for r in full if r.get("h2") is not None and len(r["h2"])]
    return CVResult(predictions[PREDICTION_COLUMNS], fits, pd.concat(h2, ignore_index=True) if h2 else None)


class _MemorySink:
    """Keeps the rows of this run (no folder)."""

    def __init__(self):
        self.rows = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def todo(self, task):
        return task

    def append(self, rows):
        for r in rows:
            self.rows[(r["key"], r["model"])] = r

    def finish(self, seconds, backend):
        pass


def _plain(x):
    """JSON for numpy scalars (ids and labels)."""
    if isinstance(x, np.generic):
        return x.item()
    raise TypeError(f"cannot write {type(x).__name__} to JSON")


class _FolderSink(_MemorySink):
    """Rows kept as one JSON file per fold × model in ``OUT/folds`` (written atomically as each
    finishes; read back on resume), under the folder's lock and its ``cv.json``."""

    def __init__(self, out: Path, settings: dict):
        super().__init__()
        self.out, self.settings = out, settings
        self.folds = out / "folds"

    def __enter__(self):
        try:
            self.folds.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create output folder {self.out}: {err}") from None
        self.lock = lock_folder(self.out, "cross-validation")
        for stale in self.folds.glob(".tmp-*"):  # a write cut short by a kill (we hold the lock)
            stale.unlink(missing_ok=True)
        try:
            self.config = self._config()
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        if self.lock is not None:
            self.lock.close()
        return False

    def _config(self) -> dict:
        cfg = read_config(self.out / "cv.json", FORMAT, "cross-validation")
        if cfg is not None:
            for k, v in self.settings.items():
                if cfg["settings"].get(k) != v:
                    raise StudyError(f"{self.out} holds a cross-validation with {k} = {cfg['settings'].get(k)!r}, "
                                      f"not {v!r}; use the same data and settings to resume, or a new --out")
            return cfg
        cfg = dict(format=FORMAT, version=1, settings=self.settings, runs=[])
        self._write_config(cfg)
        return cfg

    def _write_config(self, cfg):
        with atomic_write(self.out / "cv.json") as fh:
            json.dump(cfg, fh, indent=1)

    def _path(self, key: str, model: str) -> Path:
        """``folds/<key>.<model>.json``, with any character outside [A-Za-z0-9_-] (a trait called
        ``GY/ha`` in a CV2t key) replaced and the name then made unique by a digest of the key."""
        name = f"{key}.{model}"
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        if safe != name:
            safe += "-" + hashlib.sha256(name.encode()).hexdigest()[:8]
        return self.folds / f"{safe}.json"

    def todo(self, task):
        """``task`` with only the models whose file is not there (None when none is left)."""
        left = []
        for m in task.models:
            row = self._read(self._path(task.key, m))
            if row is None or row.get("key") != task.key or row.get("model") != m:
                left.append(m)
            else:
                self.rows[(task.key, m)] = row
        if not left:
            return None
        return task if len(left) == len(task.models) else replace(task, models=tuple(left))

    def _read(self, path: Path) -> dict | None:
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None  # absent (or unreadable: run it again)
        for name in ("predictions", "h2"):
            if isinstance(row.get(name), dict):
                row[name] = pd.DataFrame(row[name]["data"], columns=row[name]["columns"])
        return row

    def append(self, rows):
        super().append(rows)
        for r in rows:
            doc = {k: (v.to_dict(orient="split", index=False) if isinstance(v, pd.DataFrame) else v)
                   for k, v in r.items()}
            with atomic_write(self._path(r["key"], r["model"])) as fh:
                json.dump(doc, fh, default=_plain)

    def finish(self, seconds, backend):
        self.config["runs"].append(dict(finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"), seconds=round(seconds, 3),
                                        backend=backend, machine=machine_info()))
        self._write_config(self.config)


def write_outputs(result: CVResult, out: Path, figures: bool = True) -> list[Path]:
    """predictions.csv, fits.csv, ability.csv (with accuracy where h² is known), ability.md and
    ability.png in ``out``; returns their paths."""
    from .figures import ability_figure
    from .tables import ability_markdown

    table = result.accuracy() if result.heritability is not None else result.table()
    files = []
    for name, frame in (("predictions.csv", result.predictions), ("fits.csv", result.fits),
                        ("ability.csv", table)):
        with atomic_write(out / name) as fh:
            frame.to_csv(fh, index=False)
        files.append(out / name)
    with atomic_write(out / "ability.md") as fh:
        fh.write(ability_markdown(table, result.fits))
    files.append(out / "ability.md")
    if figures and len(table):
        files.append(ability_figure(table, out / "ability.png"))
    return files
