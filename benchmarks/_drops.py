"""DROPS maize for the benchmark scripts: ``../shared/data/drops_maize`` (246 hybrids × 10
environments), its phenotypes and VanRaden GRM divided by its mean diagonal."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

import hetvc

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "drops_maize"


def drops() -> tuple[pd.DataFrame, pd.DataFrame]:
    """(phenotypes in long form, K)."""
    data = pd.read_csv(DATA / "pheno_long.csv", dtype={"genotype": str})
    K = hetvc.read_kinship(DATA / "grm_vanraden.csv")
    return data, K / float(np.mean(np.diag(K.to_numpy())))
