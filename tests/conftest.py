"""Shared fixtures: small seeded problems and the shared/ data folder (skipped when absent)."""

from pathlib import Path

import numpy  # noqa: F401  (load BLAS before limiting its threads)
import pytest
import scipy.linalg  # noqa: F401
from threadpoolctl import threadpool_limits

# The tests solve many small systems: one BLAS thread is several times faster for them on a
# busy 2-core machine than OpenBLAS's default threading.  The libraries must be loaded first,
# or there is nothing to limit.
threadpool_limits(1)

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture
def shared_data():
    """Path of ../shared/data; the test is skipped when the folder is not there."""
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip("../shared/data not available")
    return path


def dense_model(data, K, traits, genetic, residual, method="reml", fixed=None, env="env"):
    """(model, dense engine) for a data set, built through hetvc's own validation."""
    from hetvc.data import build_design
    from hetvc.engines import DenseEngine
    from hetvc.kinship import kinship_matrix
    from hetvc.model import Model

    Kmat, ids = kinship_matrix(K, None)
    design = build_design(data, Kmat, ids, traits, env, "id", fixed)
    model = Model.build(design, genetic, residual, method)
    return model, DenseEngine(model)


def simulated_trial(tmp_path_factory, n: int, snps: int, seed: int):
    """A folder with pheno.csv and kinship.csv of a simulated 2-trait, 2-environment trial in
    which every genotype is in every environment (traits t1, t2; columns id, env)."""
    from hetvc.simulate import simulate

    folder = tmp_path_factory.mktemp("trial")
    simulate(n=n, traits=2, locations=2, snps=snps, h2=0.5, w=0.5, rho=0.5, design="full",
             seed=seed).to_dir(folder)
    return folder
