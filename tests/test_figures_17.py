"""Issue 17, item 8: honest figures — observed vs fitted labelled in-sample, the selected model
marked in the heritability figure, distinct colours for up to 10+ series, and titles that fit."""

import matplotlib.colors as mcolors
import numpy as np
import pytest

import hetvc
from hetvc.report import figures
from hetvc.report.figures import (palette, genetic_correlations_figure, heritability_figure,
                                  observed_fitted_figure, phenotypic_correlations_figure)
from reference import make_problem


@pytest.fixture(scope="module")
def two_env():
    data, K, _, _ = make_problem(3, n_geno=30, n_env=2)
    return {g: hetvc.fit(data, K, ["y1", "y2"], env="env", genetic=g)
            for g in ("homogeneous", "heterogeneous")}


@pytest.fixture(scope="module")
def one_env():
    data, K, _, _ = make_problem(3, n_geno=30, n_env=2)
    data = data[data["env"] == "E1"]
    return {g: hetvc.fit(data, K, ["y1", "y2"], env=None, genetic=g)
            for g in ("homogeneous", "heterogeneous")}


@pytest.fixture(scope="module")
def ten_env():
    data, K, _, _ = make_problem(4, n_geno=20, n_env=10)
    return hetvc.fit(data, K, ["y1", "y2"], env="env", genetic="homogeneous")


def _titles(fig):
    out = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        if ax.get_visible():
            out += [t for t in (ax.title, ax._left_title, ax._right_title) if t.get_text()]
    return out


def _assert_titles_fit(fig):
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    box = fig.bbox
    titles = _titles(fig)
    assert titles
    for t in titles:
        ext = t.get_window_extent(renderer)
        assert ext.x0 >= box.x0 - 1 and ext.x1 <= box.x1 + 1, \
            f"title {t.get_text()!r} is clipped: {ext} outside {box}"
        assert ext.y0 >= box.y0 - 1 and ext.y1 <= box.y1 + 1, t.get_text()


def test_observed_fitted_is_labelled_in_sample(two_env):
    fig = observed_fitted_figure(two_env["heterogeneous"])
    sup = fig._suptitle.get_text()
    assert "in-sample" in sup and "not prediction accuracy" in sup
    assert "cross-validation" in sup and "hetvc cv" in sup
    assert all("in-sample r" in ax.get_title() for ax in fig.axes if ax.get_visible())
    _assert_titles_fit(fig)


def test_report_caption_says_in_sample(two_env):
    md = hetvc.report.markdown(two_env, "heterogeneous",
                               figures=["observed_fitted.png", "heritability.png"])
    line = next(x for x in md.splitlines() if x.startswith("*Observed vs fitted"))
    assert "in-sample fit, not prediction accuracy" in line
    assert "cross-validation" in line and "hetvc cv" in line
    assert "(selected)" in next(x for x in md.splitlines() if x.startswith("*h² per environment"))


def test_heritability_marks_the_selected_model(two_env):
    fig = heritability_figure(two_env, selected="heterogeneous")
    sel = figures.fit_label("heterogeneous", two_env["heterogeneous"]) + " (selected)"
    other = figures.fit_label("homogeneous", two_env["homogeneous"])
    assert figures.fit_label("heterogeneous", two_env["heterogeneous"], True) == sel
    texts = {t.get_text(): t for t in fig.legends[0].get_texts()}
    assert set(texts) == {other, sel}
    assert texts[sel].get_fontweight() in ("bold", 700)
    assert texts[other].get_fontweight() not in ("bold", 700)
    lines = {ln.get_label(): ln for ln in fig.axes[0].get_lines()}
    assert lines[sel].get_markersize() > lines[other].get_markersize()
    # unmarked without a selection
    plain = heritability_figure(two_env)
    assert not any("(selected)" in t.get_text() for t in plain.legends[0].get_texts())
    _assert_titles_fit(fig)


def test_write_figures_passes_the_selected_model(two_env, tmp_path, monkeypatch):
    seen = {}
    real = figures.heritability_figure

    def spy(fits, selected=None):
        seen["selected"] = selected
        return real(fits, selected)

    monkeypatch.setattr(figures, "heritability_figure", spy)
    paths = figures.write_figures(two_env, "homogeneous", tmp_path)
    assert seen["selected"] == "homogeneous"
    assert (tmp_path / "heritability.png").stat().st_size > 0
    assert {p.name for p in paths} >= {"observed_fitted.png", "heritability.png"}


def _distinct(colors) -> int:
    return len({mcolors.to_hex(c) for c in colors})


def _min_distance(colors) -> float:
    rgb = np.array([mcolors.to_rgb(c) for c in colors])
    d = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1)
    return d[~np.eye(len(rgb), dtype=bool)].min()


@pytest.mark.parametrize("n", [2, 10, 12, 20, 25])
def test_palette_is_distinct(n):
    colors = palette(n)
    assert len(colors) >= n and _distinct(colors[:n]) == n
    # the old hand-picked palette had two blues 0.16 apart in RGB; tab10 pairs are >= 0.26 apart
    assert _min_distance(colors[:n]) > (0.2 if n <= 10 else 0.05)  # no near-duplicates


def test_ten_environments_get_ten_distinct_colours(ten_env):
    assert len(ten_env.envs) == 10
    fig = observed_fitted_figure(ten_env)
    ax = fig.axes[0]
    colors = [c.get_facecolor()[0] for c in ax.collections]
    assert len(colors) == 10
    assert _distinct(colors) == 10 and _min_distance(colors) > 0.2
    _assert_titles_fit(fig)
    fig = phenotypic_correlations_figure(ten_env)
    colors = [ax.collections[0].get_facecolor()[0] for ax in fig.axes if ax.collections]
    assert _distinct(colors) == 10 and _min_distance(colors) > 0.2
    _assert_titles_fit(fig)


def test_one_environment_shows_h2_once(one_env):
    fit = one_env["homogeneous"]
    assert list(fit.envs) == ["all"]
    fig = heritability_figure(one_env, selected="homogeneous")
    ax = fig.axes[0]
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["all"]
    assert all(len(ln.get_xdata()) in (0, 1) for ln in ax.get_lines())
    assert "pooled" not in [t.get_text() for t in fig.axes[1].get_xticklabels()]
    _assert_titles_fit(fig)


def test_one_environment_titles_fit(one_env):
    fit = one_env["heterogeneous"]
    for make in (genetic_correlations_figure, phenotypic_correlations_figure,
                 observed_fitted_figure, lambda f: heritability_figure(one_env, "heterogeneous")):
        _assert_titles_fit(make(fit))


def test_two_environments_keep_pooled(two_env):
    fig = heritability_figure(two_env)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["E1", "E2", "pooled"]
    _assert_titles_fit(fig)
    for f in two_env.values():
        _assert_titles_fit(genetic_correlations_figure(f))
        _assert_titles_fit(phenotypic_correlations_figure(f))
