"""hetvc.report and its figures on fits whose status is set by hand: the lowest AICc among
converged fits is selected, a model that did not converge (or whose AICc is undefined) never
is (and the report and terminal say why), none converged selects nothing, p-values below
1e-16 print as "< 1e-16", SEs that are not available as NA, notes every fit carries are said
once, long tables are cut in the terminal, times are labelled, summary.json says when a run
is incomplete, and the h² table and figure mark fits that did not converge or lie on the
boundary."""

import dataclasses
import json
import re

import numpy as np
import pytest

import hetvc
from hetvc import report
from hetvc.report.figures import heritability_figure, write_figures


@pytest.fixture(scope="module")
def fits():
    from hetvc.simulate import simulate

    s = simulate(n=40, traits=1, locations=2, snps=60, h2=0.5, w=0.5, design="full", seed=2)
    kw = dict(traits=["t1"], env="env", id="id", pev=False)
    return {f"{g}/homogeneous": hetvc.fit(s.pheno, s.K, genetic=g, residual="homogeneous", **kw)
            for g in ("homogeneous", "heterogeneous", "unstructured")}


def not_converged(fit, status="iteration limit", message="no convergence within 5 iterations"):
    return dataclasses.replace(fit, record={**fit.record, "converged": False, "status": status,
                                            "message": message})


def by_aicc(fits):
    return sorted(fits, key=lambda n: fits[n].aicc)


def test_select_never_picks_a_fit_that_did_not_converge(fits):
    assert all(f.converged for f in fits.values())
    best, second = by_aicc(fits)[:2]
    assert report.select(fits) == best
    bad = {**fits, best: not_converged(fits[best])}
    assert report.select(bad) == second
    assert report.excluded(bad) == {best: "iteration limit: no convergence within 5 iterations"}
    assert report.select({n: not_converged(f) for n, f in fits.items()}) is None


def test_report_md_never_selects_a_model_its_table_marks_not_converged(fits, tmp_path):
    """The old report printed 'Selected (lowest AIC among converged fits): X' while its own
    table said X did not converge.  Here X is read back with hetvc.load from a fit.json
    edited to say it did not converge."""
    best, second = by_aicc(fits)[:2]
    path = tmp_path / "best.json"
    fits[best].to_json(path)
    d = json.loads(path.read_text())
    d["record"].update(converged=False, status="iteration limit", message="no convergence within 5 iterations")
    path.write_text(json.dumps(d))
    edited = {**fits, best: hetvc.load(path)}
    out = tmp_path / "out"
    result = report.write_report(out, edited, figures=False)
    md = (out / "report.md").read_text()
    not_conv = [row.split("|")[1].strip() for row in md.splitlines()
                if row.startswith("|") and "**no**" in row]
    assert not_conv == [best]
    chosen = re.search(r"Selected \(lowest AICc among converged fits\): \*\*(.+?)\*\*", md).group(1)
    assert chosen == second != best
    assert f"Excluded from the selection: **{best}** (iteration limit" in md
    assert f"## Selected model: {second}" in md
    assert result["selected"] == second and result["excluded"] == {
        best: "iteration limit: no convergence within 5 iterations"}
    assert hetvc.load(out / "fit.json").converged
    assert f"{best} (not converged)" in md  # h² under each model


def test_none_converged_selects_nothing(fits, tmp_path, capsys):
    from hetvc.cli.fit import print_summary

    bad = {n: not_converged(f) for n, f in fits.items()}
    out = tmp_path / "out"
    out.mkdir()
    (out / "fit.json").write_text("an earlier run's selection")
    result = report.write_report(out, bad, figures=True)
    assert result["selected"] is None and set(result["excluded"]) == set(bad)
    assert not (out / "fit.json").exists() and not (out / "blups.csv").exists()
    for n in bad:  # every model is kept, loadable
        assert not hetvc.load(out / "fits" / f"{n.replace('/', '-')}.json").converged
    assert (out / "heritability.csv").exists() and (out / "variance_components.csv").exists()
    assert sorted(p.name for p in out.glob("*.png")) == ["phenotypic_correlations.png"]
    md = (out / "report.md").read_text()
    assert "No model converged, so none is selected" in md
    assert "Selected (lowest AIC" not in md and "## Selected model" not in md
    print_summary(bad, None, {}, report.comparison(bad), out)
    text = capsys.readouterr().out
    assert "No model converged" in text and "selected (lowest AIC" not in text


def test_a_single_model_that_did_not_converge_is_written_but_not_selected(fits, tmp_path):
    name = "heterogeneous/homogeneous"
    one = {name: not_converged(fits[name])}
    result = report.write_report(tmp_path, one, figures=False)
    assert result["selected"] is None
    assert not hetvc.load(tmp_path / "fit.json").converged
    md = (tmp_path / "report.md").read_text()
    assert f"## Model: {name} (did not converge)" in md and "**This fit did not converge**" in md


def test_p_values_below_1e16_and_bic_disagreement(fits, capsys):
    from hetvc.cli.fit import print_summary

    small, big = fits["homogeneous/homogeneous"], fits["unstructured/homogeneous"]
    # ℓ of the larger model 500 above: χ² = 1000 on 2 df, p rounds to 0 in double precision
    pair = {"homogeneous/homogeneous": small,
            "unstructured/homogeneous": dataclasses.replace(big, loglik=small.loglik + 500.0)}
    comp = report.comparison(pair)
    assert comp["lrt_p"].iloc[1] < 1e-16
    assert report.format_p(0.0) == "< 1e-16" and report.format_p(3e-17) == "< 1e-16"
    assert report.format_p(0.0123) == "0.0123" and report.format_p(np.nan) == "–"
    md = report.markdown(pair)
    row = next(r for r in md.splitlines() if r.startswith("| unstructured/homogeneous"))
    assert "< 1e-16" in row and "| 0 |" not in row
    print_summary(pair, report.select(pair), {}, comp, None)
    text = capsys.readouterr().out
    line = next(r for r in text.splitlines() if r.lstrip().startswith("unstructured/homogeneous"))
    assert "< 1e-16" in line and not re.search(r"\s0(\.0+)?\s", line.split("homogeneous/homogeneous")[-1])
    # BIC's penalty is heavier: with ℓ only 1 higher, AIC and BIC part ways, and say so
    close = {"homogeneous/homogeneous": small,
             "unstructured/homogeneous": dataclasses.replace(
                 big, loglik=small.loglik + (big.n_params - small.n_params) + 1.0)}
    prefs = report.preferences(close)
    assert prefs["AIC"] == "unstructured/homogeneous" and prefs["BIC"] == "homogeneous/homogeneous"
    print_summary(close, report.select(close), {}, report.comparison(close), None)
    text = capsys.readouterr().out
    assert "AICc selects unstructured/homogeneous; BIC prefers homogeneous/homogeneous." in text
    assert "BIC prefers **homogeneous/homogeneous**" in report.markdown(close)


def test_aicc_is_shown_beside_aic_when_the_comparison_has_it(fits, monkeypatch, capsys):
    from hetvc.cli.fit import print_summary

    real = report.selection.compare

    def with_aicc(*args, **kwargs):
        df = real(*args, **kwargs)
        df["AICc"] = df["AIC"] + 10.0 * df["k"]
        df["dAICc"] = df["AICc"] - df["AICc"].min()
        return df

    monkeypatch.setattr(report.selection, "compare", with_aicc)
    comp = report.comparison(fits)
    md = report.markdown(fits)
    header = next(r for r in md.splitlines() if r.startswith("| model"))
    assert "| AIC | AICc | BIC |" in header and "ΔAICc" in header
    print_summary(fits, report.select(fits), {}, comp, None)
    text = capsys.readouterr().out
    assert re.search(r"\bAIC\s+AICc\s+BIC\b", text)
    if report.preferences(fits, comp)["AICc"] != report.select(fits):
        assert "AICc prefers" in text


def test_standard_errors_not_available_print_as_na(fits, monkeypatch):
    f = fits["heterogeneous/homogeneous"]
    cov = f.theta_cov.copy()
    cov[0, :] = cov[:, 0] = np.nan
    g = dataclasses.replace(f, theta_cov=cov)
    assert np.isnan(g.variance_components()["se"].iloc[0])
    text = report.fit_text(g)
    vc_line = next(r for r in text.splitlines() if r.strip().startswith(g.param_names()[0]))
    assert re.search(r"\s(NA)(\s\(.+\))?$", vc_line), vc_line  # NA, with a reason if hetvc has one
    assert "nan" not in text.lower().replace("nana", "")
    md = report.markdown({"heterogeneous/homogeneous": g})
    assert f"| {g.param_names()[0]} |" in md
    assert re.search(rf"\| {re.escape(g.param_names()[0])} \| [^|]+ \| NA( \([^|]+\))? \|", md)
    assert "(NA)" in md  # h² of that environment
    # with the reason the tables give (the se_note column)
    vc = g.variance_components().assign(se_note=["boundary: SE undefined"] + [""] * (g.n_params - 1))
    monkeypatch.setattr(g, "variance_components", lambda: vc)
    assert "NA (boundary: SE undefined)" in report.fit_text(g)
    assert "NA (boundary: SE undefined)" in report.markdown({"heterogeneous/homogeneous": g})
    assert report.format_se(float("nan"), float("nan")) == "NA"


def test_heritability_figure_marks_not_converged_and_boundary_fits(fits, tmp_path):
    names = list(fits)
    marked = {names[0]: fits[names[0]],
              names[1]: not_converged(fits[names[1]]),
              names[2]: dataclasses.replace(fits[names[2]], boundary=["G"])}
    fig = heritability_figure(marked)
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [names[0], f"{names[1]} (not converged)", f"{names[2]} (boundary)"]
    ax = fig.axes[0]
    drawn = {ln.get_label(): ln for ln in ax.get_lines()}
    assert len(drawn[f"{names[1]} (not converged)"].get_xdata()) == 0  # not drawn as a result
    boundary = drawn[f"{names[2]} (boundary)"]
    assert len(boundary.get_xdata()) == len(fits[names[2]].envs) + 1
    assert boundary.get_markerfacecolor() == "none"  # hollow
    assert drawn[names[0]].get_markerfacecolor() != "none"
    # write_figures draws the selected model's figures; nothing selected: only the data's
    paths = write_figures(marked, names[0], tmp_path)
    assert {p.name for p in paths} >= {"heritability.png", "genetic_correlations.png"}
    (tmp_path / "none").mkdir()
    only = write_figures({n: not_converged(f) for n, f in fits.items()}, None, tmp_path / "none")
    assert [p.name for p in only] == ["phenotypic_correlations.png"]


# -- selection by AICc ------------------------------------------------------------------------------
def test_selection_is_by_aicc_and_a_fit_without_one_is_excluded(fits, capsys):
    """bmtme (30 lines, 3 traits): AIC chose a 51-parameter unstructured model that AICc and
    BIC did not.  Here the larger model's ℓ is Δk + 0.1 above the smaller's: AIC prefers it
    by 0.2, AICc's correction for few records per parameter prefers the smaller."""
    from hetvc.cli.fit import print_summary

    small, big = fits["homogeneous/homogeneous"], fits["unstructured/homogeneous"]
    pair = {"homogeneous/homogeneous": small,
            "unstructured/homogeneous": dataclasses.replace(
                big, loglik=small.loglik + (big.n_params - small.n_params) + 0.1)}
    prefs = report.preferences(pair)
    assert prefs["AIC"] == "unstructured/homogeneous"
    assert prefs["AICc"] == prefs["BIC"] == "homogeneous/homogeneous"
    assert report.select(pair) == "homogeneous/homogeneous"
    lines = report.selection_lines(pair)
    assert lines == ["Selected (lowest AICc among converged fits): homogeneous/homogeneous.",
                     "AICc selects homogeneous/homogeneous; AIC prefers unstructured/homogeneous."]
    print_summary(pair, report.select(pair), {}, report.comparison(pair), None)
    text = capsys.readouterr().out
    assert "selected (lowest AICc among converged fits): homogeneous/homogeneous." in text
    assert re.search(r"\bAICc\s+BIC\s+dAICc\b", text)
    # n − k − 1 ≤ 0: AICc is undefined, and the fit with the best AIC is not selectable
    best = by_aicc(fits)[0]
    tiny = without_aicc(dataclasses.replace(fits[best], loglik=fits[best].loglik + 100.0))
    assert np.isnan(tiny.aicc) and report.preferences({**fits, best: tiny})["AIC"] == best
    crowded = {**fits, best: tiny}
    assert report.select(crowded) == by_aicc(fits)[1]
    assert report.excluded(crowded)[best].startswith("AICc undefined")
    assert f"Excluded from the selection: {best} (AICc undefined" in " ".join(report.selection_lines(crowded))
    assert report.select({best: tiny}) == best  # a single model: nothing to choose between
    none = {n: without_aicc(f) for n, f in fits.items()}
    assert report.select(none) is None
    assert report.selection_lines(none)[0] == "No model is selected: AICc is undefined for every fit that converged."


def without_aicc(fit):
    """The fit with n − k − 1 ≤ 0 as far as AICc goes (n itself must stay: compare checks it)."""
    class Crowded(type(fit)):
        aicc = float("nan")

    out = dataclasses.replace(fit)
    out.__class__ = Crowded
    return out


def test_summary_says_when_models_were_not_fitted(fits):
    s = report.summary(fits, data={"not_fitted": ["unstructured/heterogeneous"], "stopped": "interrupted"})
    assert set(report.SUMMARY_KEYS) <= set(s)
    assert s["complete"] is False and s["not_fitted"] == ["unstructured/heterogeneous"]
    assert s["converged"] is False and s["selected"] == report.select(fits)
    s = report.summary(fits)
    assert s["complete"] is True and s["not_fitted"] == [] and s["converged"] is True


# -- notes, long tables, times ----------------------------------------------------------------------
def with_notes(fits, shared):
    return {n: dataclasses.replace(f, notes=[*shared, f"only {n}"]) for n, f in fits.items()}


def test_notes_every_fit_carries_are_said_once_with_the_data(fits, capsys):
    from hetvc.cli.fit import print_summary

    dup = "environments '1' and '2' hold identical records: one environment entered twice?"
    noted = with_notes(fits, [dup])
    assert report.shared_notes(noted) == [dup]
    assert report.shared_notes({"one": noted["homogeneous/homogeneous"]}) == []
    md = report.markdown(noted, data={"notes": ["K divided by its mean diagonal"]})
    assert md.count(dup) == 1
    data_part, models_part = md.split("## Model comparison")
    assert f"- {dup}" in data_part.split("What the data needed")[1]
    for n in fits:
        assert f"only {n}" in models_part  # a model's own notes stay with it
    selected = report.select(noted)
    print_summary(noted, selected, {"notes": ["K divided by its mean diagonal"]},
                   report.comparison(noted), None)
    text = capsys.readouterr().out
    assert text.count(dup) == 1
    assert text.index(f"note: {dup}") < text.index("Model comparison")
    assert f"note: only {selected}" in text


def test_terminal_tables_are_cut_and_say_where_the_rest_is(fits, monkeypatch, capsys):
    import hetvc.cli.fit as cli_fit

    f = fits["unstructured/homogeneous"]
    n_vc = len(f.variance_components())
    text = report.fit_text(f, max_rows=2)
    assert f"... {n_vc - 2} more rows: run with --out DIR to get them all in DIR/variance_components.csv" in text
    vc = text.split("Variance components\n")[1].split("\n\n")[0].splitlines()
    assert len(vc) == 1 + 2 + 1  # header, two rows, the line saying where the rest are
    assert "... 1 more row: see res/heritability.csv" in report.fit_text(f, max_rows=1, out="res")
    assert "more rows" not in report.fit_text(f)  # the API prints everything
    monkeypatch.setattr(cli_fit, "TERMINAL_ROWS", 1)
    cli_fit.print_summary(fits, report.select(fits), {}, report.comparison(fits), "res")
    assert re.search(r"\.\.\. 1 more row: see res/variance_components\.csv", capsys.readouterr().out)


def test_times_are_labelled_in_the_terminal_and_the_report(fits):
    f = fits["heterogeneous/homogeneous"]
    timed = dataclasses.replace(f, record={**f.record, "seconds": 15.0, "seconds_in_all": 16.7})
    assert report.seconds_text(timed.record) == "16.7 s in all; optimisation 15.0 s"
    assert report.seconds_text(f.record).startswith("optimisation ")  # a fit made by the API
    (status,) = [ln for ln in report.fit_text(timed).splitlines() if ln.startswith("  status: ")]
    assert status.endswith("; 16.7 s in all; optimisation 15.0 s)"), status
    md = report.markdown({"heterogeneous/homogeneous": timed, "homogeneous/homogeneous": fits[
        "homogeneous/homogeneous"]}, selected="heterogeneous/homogeneous")
    assert "iterations (16.7 s in all; optimisation 15.0 s); engine:" in md


def test_heritability_under_each_model_marks_boundary_and_not_converged(fits):
    names = list(fits)
    marked = {names[0]: fits[names[0]], names[1]: not_converged(fits[names[1]]),
              names[2]: dataclasses.replace(fits[names[2]], boundary=["G"])}
    md = report.markdown(marked)
    table = md.split("## Heritability under each model")[1].split("##")[0]
    rows = [r.split("|")[1].strip() for r in table.splitlines() if r.startswith("| ") and "model" not in r]
    assert rows == [names[0], f"{names[1]} (not converged)", f"{names[2]} (boundary: G)"]


def test_every_marker_can_be_drawn_hollow():
    from matplotlib.markers import MarkerStyle

    from hetvc.report.figures import MARKERS

    for m in MARKERS:  # a hollow plus or cross reads as a plus or a cross
        assert MarkerStyle(m).is_filled() and m not in ("P", "X", "+", "x", "1", "2", "3", "4", "|", "_"), m
