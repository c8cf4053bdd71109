"""Shared by the engine tests: trial θ, the agreement of two engines at a θ (ℓ within 1e-8
absolute, score and AI within 1e-7 of their largest entry; BLUEs, BLUPs, PEVs and fitted
values within 1e-6 relative), and a model with random terms built from a data frame."""

import numpy as np
import pytest

from hetvc.data import build_design
from hetvc.kinship import kinship_matrix
from hetvc.kinship.pedigree import PedigreeRelationship
from hetvc.model import Model
from hetvc.random_terms import resolve_random


def rel(a, b) -> float:
    """Largest absolute difference relative to the largest entry of ``a``."""
    return np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-300)


def trial_thetas(model, k=3, seed=0):
    """The default start and k − 1 random positive definite (ΣG, ΣE) around it (models with a
    genetic and a residual term)."""
    rng = np.random.default_rng(seed)
    G, E = model.matrices(model.start())
    out = [model.start()]
    for _ in range(k - 1):
        A = rng.normal(size=G.shape) * 0.4
        B = rng.normal(size=E.shape) * 0.4
        out.append(model.join(G + (A @ A.T) * np.mean(np.diag(G)), E + (B @ B.T) * np.mean(np.diag(E))))
    return out


def assert_evaluations_agree(reference, other, thetas):
    for theta in thetas:
        a, b = reference.evaluate(theta), other.evaluate(theta)
        assert abs(a.loglik - b.loglik) < 1e-8
        assert rel(a.score, b.score) < 1e-7
        assert rel(a.ai, b.ai) < 1e-7
        assert other.evaluate(theta, derivatives=False).loglik == pytest.approx(b.loglik, abs=1e-12)


def assert_solutions_agree(reference, other, theta, names=("beta", "beta_cov", "blup", "fitted", "pev")):
    a, b = reference.solve(theta, pev=True), other.solve(theta, pev=True)
    for name in names:
        assert rel(getattr(a, name), getattr(b, name)) < 1e-6, name


def random_term_model(data, K, genetic, residual="homogeneous", random=None, method="reml", traits=("y1", "y2")):
    """The model of ``data`` (columns id, env, the traits and the random terms' columns) with K a
    labelled frame or a pedigree's relationship."""
    if isinstance(K, PedigreeRelationship):
        Kmat, ids = K, K.ids
    else:
        Kmat, ids = kinship_matrix(K, None)
    design = build_design(data, Kmat, ids, list(traits), "env", "id", None)
    terms, _ = resolve_random(data, design, random)
    return Model.build(design, genetic, residual, method, random=terms)
