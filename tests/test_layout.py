"""The environment × trait layout (src/hetvc/layout.py) and structures expanded to it."""

import numpy as np
import pytest

from hetvc.layout import Layout
from hetvc.structures import GENETIC, RESIDUAL, make_structure

ENVS, TRAITS = ["E1", "E2", "E3"], ["y1", "y2"]


def test_rows_blocks_and_labels():
    lay = Layout(ENVS, TRAITS)
    assert (lay.n_envs, lay.n_traits, lay.size) == (3, 2, 6)
    assert lay.row(2, 1) == 5 and list(lay.row(np.array([0, 1]), 1)) == [1, 3]
    assert lay.env_rows(1) == slice(2, 4)
    assert list(lay.trait_rows(0)) == [0, 2, 4]
    M = np.arange(36.0).reshape(6, 6)
    np.testing.assert_array_equal(lay.env_block(M, 1), M[2:4, 2:4])
    np.testing.assert_array_equal(lay.mean_env_block(M), (M[0:2, 0:2] + M[2:4, 2:4] + M[4:6, 4:6]) / 3)
    assert list(lay.labels()) == [(e, t) for e in ENVS for t in TRAITS]
    assert Layout(ENVS, TRAITS) == lay  # a value: equal layouts are equal


@pytest.mark.parametrize("kind,name", [("G", g) for g in GENETIC] + [("E", r) for r in RESIDUAL])
def test_structures_expand_to_the_layout_and_back(kind, name):
    lay = Layout(ENVS, TRAITS)
    s = make_structure(kind, name, ENVS, TRAITS)
    rng = np.random.default_rng(3)
    theta = rng.normal(size=s.n_params)
    if not s.linear:  # a feasible θ: the structure's own approximation of a positive definite Σ
        B = rng.normal(size=(s.dim, s.dim))
        theta = s.theta(B @ B.T + np.eye(s.dim))
    full = s.full(theta, lay.n_envs)
    assert full.shape == (lay.size, lay.size)
    if s.linear:
        np.testing.assert_allclose(s.from_full(full, lay), theta)
    else:  # a k-factor approximation (a start), up to the signs of Λ's columns
        back = s.full(s.from_full(full, lay), lay.n_envs)  # an approximation of the structure's own kind
        np.testing.assert_allclose(back, full, atol=0.02 * np.abs(full).max())
    if not s.per_environment:  # the same Σ in every environment block
        for l in range(lay.n_envs):
            np.testing.assert_array_equal(lay.env_block(full, l), s.matrix(theta))
        across = full[lay.env_rows(0), lay.env_rows(1)]
        # the genetic value of a genotype is shared by environments; a record lies in one
        np.testing.assert_array_equal(across, s.matrix(theta) if kind == "G" else 0 * across)
