"""Predictive ability from cross-validated predictions (:class:`CVResult`).

Predictive ability r(ŷ, y) is computed per fold, environment and trait on the scored records,
then averaged over folds with SE = sd/√n_folds (NaN with one fold, e.g. CV0 per environment);
the ``"mean"`` row of a scheme × model × trait is the mean over environments, with the SE over
folds of the per-fold mean over environments.  Accuracy = r/√h².
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ..errors import InputError

def _r(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    if ok.sum() < 3 or np.std(x[ok]) == 0 or np.std(y[ok]) == 0:
        return np.nan
    return float(np.corrcoef(x[ok], y[ok])[0, 1])


@dataclass
class CVResult:
    """The result of :func:`cross_validate`.

    predictions : scheme, model, fold, id, env, trait, observed, predicted (scored records).
    fits : scheme, model, fold, key, hidden_env, hidden_trait, n_hidden, n_test, status
        (``"ok"``, ``"not converged"`` or ``"failed: …"``), engine, iterations, seconds;
        failed fits have no predictions.
    heritability : model, env, trait, h2 of each model fitted to all the data (``None``
        unless asked for: ``accuracy=True``).
    out, files : the output folder and the files written there (``None`` / [] without one).
    """

    predictions: pd.DataFrame
    fits: pd.DataFrame
    heritability: pd.DataFrame | None = None
    out: object = None
    files: list = field(default_factory=list)

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
        # schemes, models and traits in the order they were run, each environment's rows before the mean
        for col in ("scheme", "model", "trait"):
            out[f"_{col}"] = out[col].map({v: i for i, v in enumerate(self.predictions[col].unique())})
        out["_m"] = out["env"].eq("mean")
        out = (out.sort_values(["_scheme", "_model", "_trait", "_m"], kind="stable")
               .drop(columns=["_scheme", "_model", "_trait", "_m"]))
        return out[cols].reset_index(drop=True)

    def accuracy(self, h2=None) -> pd.DataFrame:
        """:meth:`table` with ``accuracy`` = r/√h².  ``h2``: a number, a DataFrame with columns
        env, trait, h2 (and optionally model), or ``None`` for each model's own h² from its fit
        to all the data (:attr:`heritability`; env ``"mean"`` rows use the mean h² over
        environments)."""
        t = self.table()
        if h2 is None:
            if self.heritability is None:
                raise InputError("no fits to all the data to take h² from: run cross_validate with "
                                 "accuracy=True, or pass h2")
            h2 = self.heritability
        if isinstance(h2, pd.DataFrame):
            h = h2.copy()
            h["env"] = h["env"].astype(str)
            keys = ["env", "trait"] + (["model"] if "model" in h.columns else [])
            mean = h.groupby([k for k in keys if k != "env"], sort=False)["h2"].mean().reset_index()
            mean["env"] = "mean"
            h = pd.concat([h[keys + ["h2"]], mean[keys + ["h2"]]], ignore_index=True)
            t["_env"] = t["env"].astype(str)  # environment labels match as text (e.g. 1 and "1")
            t = t.merge(h.rename(columns={"env": "_env"}), on=["_env"] + keys[1:], how="left").drop(columns="_env")
        else:
            t["h2"] = float(h2)
        t["accuracy"] = t["r"] / np.sqrt(t["h2"])
        return t
