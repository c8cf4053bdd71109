"""Cross-validated predictive ability of multi-environment genomic models.

:func:`cross_validate` fits every model to every fold of every scheme (:mod:`hetvc.cv.schemes`)
and predicts the hidden records.  It is honest by construction: the hidden records' trait
values are set to NaN in a copy of the data *before* the model is built, and K is used as given
(not re-estimated per fold), so a hidden value can never reach its own prediction.

Prediction of a hidden record of line j in environment l for trait t:

* CV1, CV2: BLUE of the environment × trait mean (``mu[l][t]``) + BLUP of line j in l.
* CV0, CV00: environment l has no records in the fold, so its mean is not estimable: the BLUP
  alone is the prediction and predictive ability is computed within environment (a correlation
  ignores the missing constant).  Only a model whose genetic effect is shared by all
  environments (``homogeneous``) predicts a line in an unseen environment (its BLUP is the same
  everywhere); for other structures the environment has no genetic variance of its own, and the
  fold × model is recorded as failed (``CVResult.fits``) and left out of the summary.

Predictive ability r(ŷ, y) is computed per fold, environment and trait on the scored records,
then averaged over folds with SE = sd/√n_folds (NaN with one fold, e.g. CV0 per environment).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from ..errors import HetvcError
from ..fitting import build_model, fit_model
from ..options import FitOptions
from .schemes import SCHEMES, make_folds

NEW_ENV_SCHEMES = ("cv0", "cv00")


def _env_means(fit) -> dict:
    """{(env, trait): BLUE of the mean} from ``fit.blues()`` (``mu[env][trait]``, or
    ``mu[trait]`` with one environment)."""
    out = {}
    b = fit.blues()
    for name, est in zip(b["effect"], b["estimate"]):
        if not str(name).startswith("mu["):
            continue
        parts = str(name)[3:-1].split("][")
        if len(parts) == 2:
            env_name, trait = parts
            env_match = [e for e in fit.envs if str(e) == env_name]
            out[(env_match[0] if env_match else env_name, trait)] = est
        elif len(parts) == 1 and len(fit.envs) == 1:
            out[(fit.envs[0], parts[0])] = est
    return out


def _predict(fit, rows: pd.DataFrame, traits, id: str, env: str, genetic: str, new_env: bool):
    """Predictions (array rows × traits) for ``rows``; raises ``LookupError`` where the model
    cannot predict (environment without genetic variance in the fit)."""
    b = fit.blups()
    fitted_envs = {str(e) for e in fit.envs}
    means = {} if new_env else _env_means(fit)
    out = np.full((len(rows), len(traits)), np.nan)
    ids = rows[id].to_numpy()
    envs = rows[env].to_numpy()
    for t_i, trait in enumerate(traits):
        bt = b[b["trait"] == trait]
        missing_envs = {e for e in envs if str(e) not in fitted_envs}
        if missing_envs:
            if genetic != "homogeneous":
                raise LookupError(f"environment(s) {sorted(map(str, missing_envs))} have no records in the "
                                  f"fold, so the {genetic} model has no genetic effect there")
            across = bt.groupby("id", sort=False)["blup"].mean()  # identical in every env
        lookup = dict(zip(zip(bt["id"], bt["env"].astype(str)), bt["blup"]))
        for r, (i, e) in enumerate(zip(ids, envs)):
            u = lookup.get((i, str(e)))
            if u is None:
                u = across.get(i, np.nan) if missing_envs else np.nan
            mean = 0.0 if new_env else means.get((e, trait), means.get((str(e), trait), np.nan))
            out[r, t_i] = mean + u
    return out


def _r(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return np.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


@dataclass
class CVResult:
    """The result of :func:`cross_validate`.

    predictions : scheme, model, fold, id, env, trait, observed, predicted (scored records).
    fits : scheme, model, fold, hidden_env, n_hidden, n_test, status (``"ok"``, ``"not
        converged"`` or ``"failed: …"``); failed fits have no predictions.
    """

    predictions: pd.DataFrame
    fits: pd.DataFrame
    _full_fit: object = field(default=None, repr=False)

    def fold_abilities(self) -> pd.DataFrame:
        """r(ŷ, y) per scheme × model × fold × env × trait, with n records."""
        rows = []
        keys = ["scheme", "model", "fold", "env", "trait"]
        for key, g in self.predictions.groupby(keys, sort=False):
            rows.append((*key, _r(g["predicted"].to_numpy(float), g["observed"].to_numpy(float)),
                         int(np.isfinite(g["observed"].to_numpy(float)).sum())))
        return pd.DataFrame(rows, columns=[*keys, "r", "n"])

    def table(self) -> pd.DataFrame:
        """Predictive ability per scheme × model × env × trait: r (mean over folds), se
        (sd/√n_folds, NaN with one fold), n_folds; plus env ``"mean"`` per scheme × model ×
        trait: the mean of the environments' r, with the SE over folds of the per-fold mean
        over environments."""
        per_fold = self.fold_abilities()
        cols = ["scheme", "model", "env", "trait", "r", "se", "n_folds"]
        if per_fold.empty:
            return pd.DataFrame(columns=cols)

        def summary(r: pd.Series):
            r = r.dropna()
            n = len(r)
            se = float(r.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan
            return pd.Series({"r": r.mean() if n else np.nan, "se": se, "n_folds": n})

        by_env = (per_fold.groupby(["scheme", "model", "env", "trait"], sort=False)["r"]
                  .apply(summary).unstack().reset_index())
        fold_mean = per_fold.groupby(["scheme", "model", "fold", "trait"], sort=False)["r"].mean()
        mean_rows = (fold_mean.groupby(level=["scheme", "model", "trait"], sort=False)
                     .apply(summary).unstack().reset_index())
        env_mean = by_env.groupby(["scheme", "model", "trait"], sort=False)["r"].mean()
        mean_rows["r"] = [env_mean[(s, m, t)] for s, m, t in
                          zip(mean_rows["scheme"], mean_rows["model"], mean_rows["trait"])]
        mean_rows["env"] = "mean"
        out = pd.concat([by_env, mean_rows[by_env.columns]], ignore_index=True)
        out["n_folds"] = out["n_folds"].astype(int)
        order = {s: i for i, s in enumerate(out["scheme"].unique())}
        out["_o"] = out["scheme"].map(order)
        out["_m"] = out["env"].eq("mean")
        out = out.sort_values(["_o", "model", "trait", "_m"], kind="stable").drop(columns=["_o", "_m"])
        return out[cols].reset_index(drop=True)

    def accuracy(self, h2=None) -> pd.DataFrame:
        """:meth:`table` with ``accuracy`` = r/√h².  ``h2``: a number, a DataFrame with columns
        env, trait, h2, or ``None`` for each model's own h² from a fit on all the data
        (env ``"mean"`` rows use the mean h² over environments)."""
        t = self.table()
        if h2 is None:
            if self._full_fit is None:
                raise ValueError("no full-data fits to take h² from; pass h2")
            frames = []
            for model in t["model"].unique():
                h = self._full_fit(model).heritability()[["env", "trait", "h2"]].copy()
                h["model"] = model
                frames.append(h)
            h2 = pd.concat(frames, ignore_index=True)
        if isinstance(h2, pd.DataFrame):
            h = h2.copy()
            h["env"] = h["env"].astype(object)
            keys = ["env", "trait"] + (["model"] if "model" in h.columns else [])
            mean = h.groupby([k for k in keys if k != "env"], sort=False)["h2"].mean().reset_index()
            mean["env"] = "mean"
            h = pd.concat([h[keys + ["h2"]], mean[keys + ["h2"]]], ignore_index=True)
            t = t.merge(h, on=keys, how="left")
        else:
            t["h2"] = float(h2)
        t["accuracy"] = t["r"] / np.sqrt(t["h2"])
        return t


def cross_validate(data: pd.DataFrame, K, traits, env: str, id: str = "id",
                   schemes=("cv1", "cv2"), folds: int = 5,
                   models=("homogeneous", "heterogeneous"), seed=1, residual: str = "homogeneous",
                   fold_table: pd.DataFrame | None = None, options: FitOptions | None = None) -> CVResult:
    """Cross-validate genomic prediction across environments.

    data, K, traits, env, id, residual : as in :func:`hetvc.fit` (``env`` is required).
    schemes : any of ``"cv1"``, ``"cv2"``, ``"cv0"``, ``"cv00"`` (:mod:`hetvc.cv.schemes`).
    folds : number of folds (line folds for CV1/CV00, cell folds for CV2; unused by CV0).
    models : genetic structures to compare (``genetic=`` of :func:`hetvc.fit`).
    seed : the folds' random seed; the folds do not depend on the order of fitting.
    fold_table : DataFrame with columns ``id`` (named as ``id``) and ``fold``: the line folds
        of CV1 (and of CV00) instead of random ones; CV2 still uses ``seed``.
    options : :class:`hetvc.FitOptions` for every fit (PEVs are never computed).
    """
    if env is None or env not in data.columns:
        raise ValueError(f"cross-validation needs an environment column; {env!r} is not in the data")
    traits = [traits] if isinstance(traits, str) else list(traits)
    schemes = [s.lower() for s in ([schemes] if isinstance(schemes, str) else schemes)]
    for s in schemes:
        if s not in SCHEMES:
            raise ValueError(f"unknown scheme {s!r}; choose from {', '.join(SCHEMES)}")
    models = [models] if isinstance(models, str) else list(models)
    options = replace(options if options is not None else FitOptions(), pev=False)
    data = data.reset_index(drop=True)
    ids, envs = data[id].to_numpy(), data[env].to_numpy()
    observed = data[traits].to_numpy(float)

    pred_frames, fit_rows = [], []
    for scheme in schemes:
        table = fold_table if scheme in ("cv1", "cv00") else None
        for fold in make_folds(scheme, ids, envs, folds, seed, table, id):
            masked = data.copy()
            masked.loc[fold.hidden, traits] = np.nan  # before anything is built from it
            test_rows = data.loc[fold.test, [id, env]]
            for model in models:
                base = dict(scheme=scheme.upper(), model=model, fold=fold.index,
                            hidden_env=fold.env, n_hidden=int(fold.hidden.sum()),
                            n_test=int(fold.test.sum()))
                try:
                    fitted = fit_model(build_model(masked, K, traits, env=env, id=id, genetic=model,
                                                   residual=residual), options)
                    yhat = _predict(fitted, test_rows, traits, id, env, model, scheme in NEW_ENV_SCHEMES)
                except (HetvcError, LookupError) as err:
                    fit_rows.append({**base, "status": f"failed: {err}"})
                    continue
                fit_rows.append({**base, "status": "ok" if fitted.converged else "not converged"})
                n = len(test_rows)
                pred_frames.append(pd.DataFrame({
                    "scheme": scheme.upper(), "model": model, "fold": fold.index,
                    "id": np.repeat(test_rows[id].to_numpy(), len(traits)),
                    "env": np.repeat(test_rows[env].to_numpy(), len(traits)),
                    "trait": np.tile(traits, n),
                    "observed": observed[fold.test].ravel(),
                    "predicted": yhat.ravel(),
                }))
    cols = ["scheme", "model", "fold", "id", "env", "trait", "observed", "predicted"]
    predictions = (pd.concat(pred_frames, ignore_index=True) if pred_frames
                   else pd.DataFrame(columns=cols))
    fits = pd.DataFrame(fit_rows, columns=["scheme", "model", "fold", "hidden_env", "n_hidden",
                                           "n_test", "status"])
    cache = {}

    def full_fit(model):
        if model not in cache:
            cache[model] = fit_model(build_model(data, K, traits, env=env, id=id, genetic=model,
                                                 residual=residual), options)
        return cache[model]

    return CVResult(predictions[cols], fits, full_fit)
