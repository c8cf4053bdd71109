"""hetvc.heritability: h² per environment × trait and pooled (paper eq. 12), by hand."""

import numpy as np

from hetvc import heritability


def test_per_environment_and_pooled_by_hand():
    g = np.array([[1.0, 4.0], [3.0, 0.0]])  # 2 environments × 2 traits
    e = np.array([[1.0, 4.0], [1.0, 2.0]])
    np.testing.assert_allclose(heritability.per_environment(g, e), [[0.5, 0.5], [0.75, 0.0]])
    shares = np.array([[0.25, 0.5], [0.75, 0.5]])
    np.testing.assert_allclose(heritability.pooled(g, e, shares),
                               [(0.25 * 1 + 0.75 * 3) / (0.25 * 2 + 0.75 * 4), (0.5 * 4) / (0.5 * 8 + 0.5 * 2)])
    # shares per environment only: the same for every trait
    np.testing.assert_allclose(heritability.pooled(g, e, np.array([0.25, 0.75])),
                               heritability.pooled(g, e, np.array([[0.25, 0.25], [0.75, 0.75]])))
    # complex values pass through (complex-step SEs)
    assert np.iscomplexobj(heritability.per_environment(g + 1e-20j, e))
