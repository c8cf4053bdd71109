"""One unit of cross-validation work: a fold of a scheme, fitted by some models.

:meth:`CVTask.run` masks the fold's hidden values in a copy of the data *before* any model is
built from it (so a hidden value can never reach its own prediction), fits every model of the
task sharing one :class:`~hetvc.engines.EigenCache` (the models of a fold see the same
kinship blocks, and so do some folds: :data:`PROCESS_CACHE`), and predicts the fold's test records.  A :class:`FullFit` task fits a model
to all the data, for the accuracy r/√h².  Both return one row (a dict) per model; a fit that
fails is a row with its status, and the run goes on.

Prediction of a test record of line j in environment l for trait t:

* CV1, CV2, CV2t: BLUE of the environment × trait mean (``mu[l][t]``) + BLUP of line j in l.
* CV0, CV00: environment l has no records in the fold, so neither its mean nor its own genetic
  effects are in the fit.  The prediction is the BLUP of line j's mean genetic value over the
  environments of the fit, i.e. the mean of its BLUPs there (for ``homogeneous`` its one BLUP),
  and predictive ability is computed within environment (a correlation ignores the missing
  constant).  So every structure predicts a new environment, through what it learnt of the
  lines' values in the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..engines import EigenCache
from ..errors import HetvcError
from ..fitting import build_model, fit_model
from ..options import FitOptions
from .schemes import Fold

NEW_ENV_SCHEMES = ("cv0", "cv00")
#: eigendecompositions of kinship blocks kept by a process across the folds it fits (a block
#: recurs: an environment's lines in every CV0 fold, the same cells in every CV2t trait fold);
#: keyed by the block's contents, so reuse never changes a result
PROCESS_CACHE = EigenCache()
MAX_CACHED_BYTES = 2**30
PREDICTION_COLUMNS = ["scheme", "model", "fold", "id", "env", "trait", "observed", "predicted"]


@dataclass(frozen=True)
class Inputs:
    """What every fit of a cross-validation shares: the data (the user's, unmasked), K as given
    (never re-estimated per fold), the columns and the fit options."""

    data: pd.DataFrame
    K: object
    traits: tuple
    env: str
    id: str
    residual: str
    options: FitOptions

    def fit(self, data: pd.DataFrame, genetic: str, cache: EigenCache):
        model = build_model(data, self.K, list(self.traits), env=self.env, id=self.id, genetic=genetic,
                            residual=self.residual)
        return fit_model(model, self.options, eigen=cache)


def _env_means(fit) -> dict:
    """{(env label as text, trait): BLUE of the mean} from ``fit.blues()`` (``mu[env][trait]``,
    or ``mu[trait]`` with one environment)."""
    out = {}
    b = fit.blues()
    for name, est in zip(b["effect"], b["estimate"]):
        name = str(name)
        if not name.startswith("mu["):
            continue
        parts = name[3:-1].split("][")
        if len(parts) == 2:
            out[(parts[0], parts[1])] = est
        elif len(parts) == 1 and len(fit.envs) == 1:
            out[(str(fit.envs[0]), parts[0])] = est
    return out


def predict(fit, ids, envs, traits, new_env: bool) -> np.ndarray:
    """Predictions (records × traits) of the records (``ids``, ``envs``) from ``fit`` (module
    docstring); ``new_env``: their environments are not in the fit (CV0, CV00)."""
    b = fit.blups()
    env_text = np.array([str(e) for e in envs])
    means = {} if new_env else _env_means(fit)
    out = np.full((len(ids), len(traits)), np.nan)
    for t_i, trait in enumerate(traits):
        bt = b[b["trait"] == trait]
        if new_env:  # the line's mean BLUP over the environments of the fit
            u = bt.groupby("id", sort=False)["blup"].mean().reindex(pd.Index(ids)).to_numpy(float)
        else:
            blup = pd.Series(bt["blup"].to_numpy(float),
                             index=pd.MultiIndex.from_arrays([bt["id"], bt["env"].astype(str)]))
            u = blup.reindex(pd.MultiIndex.from_arrays([ids, env_text])).to_numpy(float)
        mean = 0.0 if new_env else np.array([means.get((e, trait), np.nan) for e in env_text])
        out[:, t_i] = mean + u
    return out


def _row(base: dict, fit=None, error=None, seconds: float = 0.0) -> dict:
    if error is not None:
        what = str(error).splitlines()[0] if isinstance(error, HetvcError) else \
            f"{type(error).__name__}: {error}".splitlines()[0]
        return dict(base, status=f"failed: {what}", engine="", iterations=None, seconds=seconds)
    return dict(base, status="ok" if fit.converged else "not converged", engine=fit.engine,
                iterations=int(fit.record["iterations"]), seconds=seconds)


@dataclass(frozen=True)
class CVTask:
    """Fold ``fold`` of ``scheme`` for ``models``."""

    inputs: Inputs
    scheme: str
    fold: Fold
    models: tuple

    @property
    def key(self) -> str:
        return self.fold.key(self.scheme)

    def run(self) -> list[dict]:
        """One row per model: the fold, the fit's status, engine, iterations and seconds, and
        its ``predictions`` (a DataFrame with :data:`PREDICTION_COLUMNS`; empty when it failed)."""
        inp, fold = self.inputs, self.fold
        hidden_traits = list(inp.traits) if fold.trait is None else [fold.trait]
        masked = inp.data.copy()
        masked.loc[fold.hidden, hidden_traits] = np.nan  # before any model is built from it
        test = inp.data.loc[fold.test]
        ids, envs = test[inp.id].to_numpy(), test[inp.env].to_numpy()
        observed = test[hidden_traits].to_numpy(float)
        base = dict(scheme=self.scheme.upper(), fold=fold.index, key=self.key, hidden_env=fold.env,
                    hidden_trait=fold.trait, n_hidden=int(fold.hidden.sum()) * len(hidden_traits),
                    n_test=int(fold.test.sum()))
        if PROCESS_CACHE.nbytes > MAX_CACHED_BYTES:
            PROCESS_CACHE.clear()
        cache = PROCESS_CACHE
        rows = []
        for model in self.models:
            t0 = time.perf_counter()
            try:
                fitted = inp.fit(masked, model, cache)
                yhat = predict(fitted, ids, envs, hidden_traits, self.scheme in NEW_ENV_SCHEMES)
            except Exception as err:  # noqa: BLE001 - recorded as the fold's row, the run goes on
                rows.append(dict(_row(dict(base, model=model), error=err, seconds=time.perf_counter() - t0),
                                 predictions=pd.DataFrame(columns=PREDICTION_COLUMNS)))
                continue
            n = len(ids)
            predictions = pd.DataFrame({
                "scheme": self.scheme.upper(), "model": model, "fold": fold.index,
                "id": np.repeat(ids, len(hidden_traits)), "env": np.repeat(envs, len(hidden_traits)),
                "trait": np.tile(hidden_traits, n), "observed": observed.ravel(), "predicted": yhat.ravel(),
            })
            rows.append(dict(_row(dict(base, model=model), fitted, seconds=time.perf_counter() - t0),
                             predictions=predictions))
        return rows


@dataclass(frozen=True)
class FullFit:
    """A model fitted to all the data: its h² per environment × trait, for r/√h²."""

    inputs: Inputs
    model: str

    @property
    def key(self) -> str:
        return "full"

    @property
    def models(self) -> tuple:
        return (self.model,)

    def run(self) -> list[dict]:
        base = dict(scheme="FULL", fold=0, key="full", model=self.model)
        t0 = time.perf_counter()
        try:
            fitted = self.inputs.fit(self.inputs.data, self.model, PROCESS_CACHE)
        except Exception as err:  # noqa: BLE001
            return [dict(_row(base, error=err, seconds=time.perf_counter() - t0), h2=None)]
        h2 = fitted.heritability()[["env", "trait", "h2"]]
        return [dict(_row(base, fitted, seconds=time.perf_counter() - t0),
                     h2=h2.assign(model=self.model))]
