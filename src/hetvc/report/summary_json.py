"""The machine-readable summary: ``summary.json``, and what ``--json`` prints."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .selection import _aicc, _named, comparison, excluded, select

__all__ = ["SUMMARY_FORMAT", "SUMMARY_KEYS", "MODEL_KEYS", "RANDOM_MODEL_KEYS", "summary"]

SUMMARY_FORMAT = "hetvc-summary/1"

# Keys of the --json summary; tests hold them fixed (add keys, never rename or remove them).
SUMMARY_KEYS = ("format", "version", "data", "models", "comparison", "selected", "converged",
                "out", "files", "excluded", "complete", "not_fitted")
MODEL_KEYS = ("model", "genetic", "residual", "converged", "status", "iterations", "seconds",
              "engine", "engine_reason", "loglik", "n_params", "aic", "bic", "boundary", "notes",
              "variance_components", "heritability", "pooled_heritability", "genetic_correlations",
              "message", "aicc", "seconds_in_all")
# Keys a model gains after MODEL_KEYS when it has random terms beyond the genetic one: ``random``
# (FitResult.random: name, structure, kinship per term) and ``variance_partition`` (records of
# FitResult.variance_partition()); a model without random terms has exactly MODEL_KEYS.
RANDOM_MODEL_KEYS = ("random", "variance_partition")


def _clean(obj):
    """JSON-safe: NaN/inf → None, numpy scalars → Python, frames → lists of records."""
    if isinstance(obj, pd.DataFrame):
        return [_clean(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if obj is pd.NA or obj is pd.NaT:
        return None
    return obj


def _model_summary(name: str, f) -> dict:
    rec = f.record
    vc = f.variance_components()
    vc = vc[[c for c in ("name", "component", "env1", "env2", "trait1", "trait2", "estimate", "se",
                         "se_note") if c in vc.columns]]
    out = {
        "model": name, "genetic": f.genetic, "residual": f.residual,
        "converged": f.converged, "status": rec.get("status"), "iterations": rec.get("iterations"),
        "seconds": rec.get("seconds"), "engine": f.engine, "engine_reason": f.engine_reason,
        "loglik": f.loglik, "n_params": f.n_params, "aic": f.aic, "bic": f.bic,
        "boundary": list(f.boundary), "notes": list(f.notes),
        "variance_components": vc, "heritability": f.heritability(),
        "pooled_heritability": f.pooled_heritability(),
        "genetic_correlations": f.genetic_correlations(),
        "message": rec.get("message") or "", "aicc": _aicc(f),
        "seconds_in_all": rec.get("seconds_in_all"),
    }
    if getattr(f, "random", None):
        out["random"] = [dict(r) for r in f.random]
        out["variance_partition"] = f.variance_partition()
    return out


def summary(fits, selected: str | None = None, data: dict | None = None, out=None, files=()) -> dict:
    """The machine-readable summary (``--json``; keys :data:`SUMMARY_KEYS`, each model
    :data:`MODEL_KEYS`, then :data:`RANDOM_MODEL_KEYS` when it has random terms).  ``selected``
    is ``null`` when no model is selectable; ``excluded`` maps each model left out of the
    selection to why.  ``complete`` is false and ``not_fitted`` names the models when the run
    stopped before fitting them (``data`` has ``not_fitted``); ``converged`` is then false too.
    NaN becomes ``null``."""
    fits = _named(fits)
    not_fitted = list((data or {}).get("not_fitted") or [])
    selected = select(fits) if selected is None else selected
    try:
        from importlib.metadata import version

        ver = version("hetvc")
    except Exception:  # pragma: no cover - not installed
        ver = None
    out_dict = {
        "format": SUMMARY_FORMAT,
        "version": ver,
        "data": data or {},
        "models": [_model_summary(n, f) for n, f in fits.items()],
        "comparison": comparison(fits),
        "selected": selected,
        "converged": all(f.converged for f in fits.values()) and not not_fitted,
        "out": None if out is None else str(out),
        "files": [str(p) for p in files],
        "excluded": excluded(fits),
        "complete": not not_fitted,
        "not_fitted": not_fitted,
    }
    return _clean(out_dict)
