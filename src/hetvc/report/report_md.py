"""report.md: the readable report of a fit or a comparison of fits (:func:`markdown`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .csv_tables import has_random
from .selection import (_aicc, _named, _primary, _status, comparison, environment_model,
                        factor_analytic, factor_analytic_model, select, selection_lines)
from .text import (_finite, _note, _num, _se_cells, format_p, format_se, seconds_text,
                   shared_notes)

__all__ = ["markdown"]


def _md_table(df: pd.DataFrame, formats: dict | None = None) -> str:
    formats = formats or {}
    cols = list(df.columns)
    lines = ["| " + " | ".join(map(str, cols)) + " |",
             "|" + "|".join("---:" if pd.api.types.is_numeric_dtype(df[c]) else "---" for c in cols) + "|"]
    for _, row in df.iterrows():
        cells = [formats[c](row[c]) if c in formats else _num(row[c]) for c in cols]
        lines.append("| " + " | ".join(str(x).replace("|", "\\|") for x in cells) + " |")
    return "\n".join(lines)


def _est_se(v, se, digits=2) -> str:
    if not _finite(v):
        return "–"
    s = f"{v:.{digits}f}"
    return s + (f" ({se:.{digits}f})" if _finite(se) else " (NA)")


def _se_footnote(*frames) -> list[str]:
    """'SE NA: why' lines for the reasons given in the tables' se_note column."""
    notes = []
    for df in frames:
        if "se_note" in df.columns:
            se = df["se"] if "se" in df.columns else pd.Series(np.nan, index=df.index)
            notes += [_note(n) for n, s in zip(df["se_note"], se) if _note(n) and not _finite(s)]
    notes = list(dict.fromkeys(notes))
    return ["", "SE NA: " + "; ".join(notes) + "."] if notes else []


def _boundary(f) -> str:
    """Boundary blocks as a reader needs them (each structure, the genetic one, a random term's
    or the residual one, describes its own blocks)."""
    owner = {}
    for st in getattr(f, "_structures", (f.genetic_structure, f.residual_structure)):
        owner.update({st.block_name(blk): st for blk in st.blocks})
    names = [owner[b].describe_block(b) if b in owner else b for b in f.boundary]
    return ", ".join(dict.fromkeys(names))


def _h2_wide(f) -> pd.DataFrame:
    h = f.heritability()
    p = f.pooled_heritability()
    rows = []
    for e in f.envs:
        row = {"environment": str(e)}
        for t in f.traits:
            r = h[(h["env"] == e) & (h["trait"] == t)].iloc[0]
            row[t] = _est_se(r["h2"], r["se"])
        rows.append(row)
    row = {"environment": "**pooled**"}
    for t in f.traits:
        r = p[p["trait"] == t].iloc[0]
        row[t] = _est_se(r["h2"], r["se"])
    rows.append(row)
    return pd.DataFrame(rows)


def _random_terms(f) -> str:
    """The random terms beyond the genetic one as a reader needs them: 'BYEAR (homogeneous),
    male (diagonal; a relationship matrix over its levels)'."""
    return ", ".join(f"`{r['name']}` ({r['structure']}"
                     + ("; a relationship matrix over its levels" if r.get("kinship") else "") + ")"
                     for r in f.random)


# at most this many environment × trait columns in the wide variance-partition table (terms ×
# environment × trait); more, and it is long: a row per environment × trait, a column per term
_PARTITION_WIDE = 6


def _partition_md(f) -> pd.DataFrame:
    """The variance partition as share (SE): terms × (trait, environment) when that is at most
    :data:`_PARTITION_WIDE` columns, else (environment, trait) × terms."""
    part = f.variance_partition()
    cell = {(str(r["term"]), str(r["env"]), str(r["trait"])): _est_se(r["share"], r["se"])
            for _, r in part.iterrows()}
    terms = list(dict.fromkeys(part["term"].astype(str)))
    envs, traits = [str(e) for e in f.envs], [str(t) for t in f.traits]
    if len(envs) * len(traits) <= _PARTITION_WIDE:
        rows = []
        for term in terms:
            row = {"term": term}
            for t in traits:
                for e in envs:
                    row[t if len(envs) == 1 else f"{t} {e}"] = cell.get((term, e, t), "–")
            rows.append(row)
        return pd.DataFrame(rows)
    rows = [{"environment": e, "trait": t, **{term: cell.get((term, e, t), "–") for term in terms}}
            for e in envs for t in traits]
    return pd.DataFrame(rows)


def _marked(name: str, f) -> str:
    """A model's name marked "(not converged)" or "(boundary: G)" (its singular blocks)."""
    if not f.converged:
        return f"{name} (not converged)"
    return f"{name} (boundary: {', '.join(f.boundary)})" if f.boundary else name


def _h2_across_models(fits) -> pd.DataFrame:
    first = next(iter(fits.values()))
    rows = []
    for n, f in fits.items():
        h = f.heritability().set_index(["env", "trait"])
        p = f.pooled_heritability().set_index("trait")
        row = {"model": _marked(n, f)}
        for t in first.traits:
            for e in first.envs:
                row[f"{t} {e}"] = f"{h.loc[(e, t), 'h2']:.2f}"
            row[f"{t} pooled"] = f"{p.loc[t, 'h2']:.2f}"
        rows.append(row)
    return pd.DataFrame(rows)


def _trait_rg(f) -> pd.DataFrame:
    rg = f.genetic_correlations()
    rg = rg[rg["between"] == "traits"]
    if not f.genetic_structure.per_environment:  # one Σg shared by all environments
        rg = rg.drop_duplicates(["trait1", "trait2"]).assign(env1="all")
    return pd.DataFrame({"environment": rg["env1"].astype(str), "traits": rg["trait1"] + " – " + rg["trait2"],
                         "r_g (SE)": [_est_se(r, s) for r, s in zip(rg["r"], rg["se"])]})


def _env_rg_matrix(f, trait) -> pd.DataFrame:
    rg = f.genetic_correlations()
    rg = rg[(rg["between"] == "environments") & (rg["trait1"] == trait)]
    envs = [str(e) for e in f.envs]
    M = pd.DataFrame("", index=envs, columns=envs)
    for e in envs:
        M.loc[e, e] = "1"
    for _, r in rg.iterrows():
        M.loc[str(r["env2"]), str(r["env1"])] = f"{r['r']:.2f}"
    return M.reset_index(names="")


# report.md's captions of the figures of a factor-analytic fit, shown in its section
_FA_CAPTIONS = {
    "latent_regression.png": "Latent regression on factor 1: each genotype's BLUPs in the "
                             "environments against the environments' rotated factor-1 loadings, "
                             "for the genotypes with the highest and the lowest factor-1 scores; "
                             "the line through the origin has the genotype's score as its slope, "
                             "so breeders read a genotype's stability from its slope (steep: "
                             "responsive to what factor 1 measures; flat: stable) and what the "
                             "other factors and ψ add from the scatter about the line.",
    "environment_correlations.png": "Genetic correlations between environments implied by "
                                    "ΣG = ΛΛ' + Ψ, one panel per trait; environments ordered by "
                                    "clustering (average linkage on 1 − r averaged over traits).",
}


def _heywood(note) -> bool:
    return _note(note).startswith("fixed at 0")


def _fa_md(f, figures=()) -> list[str]:
    """The section of a factor-analytic ΣG: the rotation, a table of the rotated loadings, the
    shares explained and ψ (Heywood cases marked) per environment × trait, and its figures."""
    k = factor_analytic(f)
    cols = [f"f{j + 1}" for j in range(k)]
    lo, sh, psi = f.loadings(), f.factor_shares(), f.specific_variances()
    mean_share = sh[["explained"] + cols].mean(skipna=True)
    heywood = [_heywood(n) for n in psi["se_note"]]
    table = pd.DataFrame({"environment": lo["env"].astype(str), "trait": lo["trait"].astype(str)})
    for j, c in enumerate(cols):
        table[f"λ*{j + 1}"] = [_num(v) for v in lo[c]]
    table["explained"] = [f"{v:.2f}" if _finite(v) else "–" for v in sh["explained"]]
    if k > 1:
        for j, c in enumerate(cols):
            table[f"by f{j + 1}"] = [f"{v:.2f}" if _finite(v) else "–" for v in sh[c]]
    table["ψ (SE)"] = ["0 † (NA)" if h else f"{_num(v)} ({format_se(se, None)})"
                       for v, se, h in zip(psi["psi"], psi["se"], heywood)]
    shares = (f"{100 * mean_share['explained']:.0f}%"
              + (" (" + ", ".join(f"factor {j + 1} {100 * mean_share[c]:.0f}%"
                                  for j, c in enumerate(cols)) + ")" if k > 1 else ""))
    d = len(lo)
    lines = ["### Factor-analytic ΣG", "",
             f"ΣG = ΛΛ' + Ψ with {k} factor{'s' if k > 1 else ''} over the {d} environment × trait "
             "rows (Λ: loadings, Ψ = diag(ψ): specific variances). hetvc estimates Λ lower "
             "triangular (λ_aj = 0 for a < j, which fixes the rotation) and rotates it for "
             "reporting to principal axes: Λ* = ΛV with Λ'Λ = VDV' (ΛΛ' unchanged), the columns "
             "ordered by the variance they explain, each column's sign chosen so that its mean "
             "loading is positive. Averaged over the environment × trait rows, "
             f"{'the factors explain' if k > 1 else 'the factor explains'} {shares} of the "
             "genetic variance, Ψ the rest.", "",
             _md_table(table, {c: str for c in table.columns}), "",
             "λ*: rotated loadings; explained: the share of the environment × trait's genetic "
             "variance explained by the factors together"
             + (" (by f1 …: by each rotated factor)" if k > 1 else "")
             + "; ψ: specific variance"
             + ("; † a Heywood case: ψ at 0, fixed on the boundary (no SE)" if any(heywood) else "")
             + ". In `loadings.csv`.", ""]
    for p in figures:
        name = Path(p).name
        if name in _FA_CAPTIONS:
            lines += [f"![{name}]({name})", "", f"*{_FA_CAPTIONS[name]}*", ""]
    return lines


def _top_genotypes_md(f) -> list[str]:
    """The "Top genotypes" section: the top 10 per trait across environments and, with at most
    10 environments, the top 5 per environment × trait, with the entry-mean H² beside it."""
    try:
        r = f.rankings()
        h = f.entry_mean_heritability()
    except Exception as exc:  # a summary must not stop the report
        return ["### Top genotypes", "", f"Not available: {exc}", ""]
    has_rel = r["reliability"].notna().any()

    def block(sub, n):
        top = sub[sub["rank"] <= n]
        out = pd.DataFrame({"rank": top["rank"].to_numpy(), "id": top["id"].astype(str).to_numpy(),
                            "BLUP": top["blup"].to_numpy()})
        if has_rel:
            out["reliability"] = top["reliability"].to_numpy()
        out["phenotyped"] = np.where(top["phenotyped"].to_numpy(), "yes", "no")
        return _md_table(out)

    lines = ["### Entry-mean heritability", "",
             "H² of the genotype BLUPs (the entry means), not the plot-level h² above: Cullis et al. "
             "(2006) H² ≈ 1 − mean PEV / (σ²_g · K_jj) over the phenotyped genotypes, PEV covariances "
             "ignored, K_jj the fit's kinship diagonal. `across`: of the mean BLUP over "
             "environments (NA when ΣG has covariances between environments).", ""]
    wide = h.pivot(index="env", columns="trait", values="H2").reindex(
        index=[str(e) for e in f.envs] + ["across"], columns=[str(t) for t in f.traits])
    wide = wide.reset_index().rename(columns={"env": "environment"})
    lines += [_md_table(wide), ""]
    lines += ["### Top genotypes", "",
              "Ranked by BLUP (1 = highest); reliability = 1 − PEV / (σ²_g · K_jj), K_jj = 1; "
              "across environments: the mean of a genotype's BLUPs over the environments"
              + (", reliability NA where ΣG has covariances between environments" if has_rel else "")
              + ". Every genotype in `rankings.csv`.", ""]
    for t in f.traits:
        lines += [f"{t}, across environments (top 10):", "",
                  block(r[(r["env"] == "across") & (r["trait"] == str(t))], 10), ""]
    if len(f.envs) <= 10:
        for e in f.envs:
            for t in f.traits:
                lines += [f"{t}, {e} (top 5):", "",
                          block(r[(r["env"] == str(e)) & (r["trait"] == str(t))], 5), ""]
    return lines


def _comparison_md(comp: pd.DataFrame, fits: dict) -> str:
    two = lambda v: f"{v:.2f}" if _finite(v) else "–"
    cols = {
        "model (ΣG / ΣE)": comp["model"],
        "VCs": comp["k"],
        "logLik": comp["logLik"].map(two),
        "AIC": comp["AIC"].map(two),
    }
    if "AICc" in comp.columns:
        cols["AICc"] = comp["AICc"].map(two)
    cols["BIC"] = comp["BIC"].map(two)
    cols["ΔAIC"] = comp["dAIC"].map(two)
    if "dAICc" in comp.columns:
        cols["ΔAICc"] = comp["dAICc"].map(two)
    cols["ΔBIC"] = comp["dBIC"].map(two)
    cols["LRT vs"] = comp["lrt_vs"].map(lambda v: v if isinstance(v, str) else "–")
    cols["χ² (df)"] = [("–" if not _finite(s) else f"{s:.2f} ({int(d)})")
                       for s, d in zip(comp["lrt_stat"], comp["lrt_df"])]
    cols["p"] = comp["lrt_p"].map(lambda v: format_p(v, 2))
    cols["converged"] = [("yes" if fits[n].converged else f"**no** ({fits[n].record.get('status')})")
                         for n in comp["model"]]
    return _md_table(pd.DataFrame(cols), {c: str for c in cols if c != "VCs"})


def markdown(fits, selected: str | None = None, data: dict | None = None, figures=()) -> str:
    """report.md: data, the comparison in the layout of the paper's Table 2 and the selection
    (models that did not converge are excluded, and said so), the selected model's
    heritabilities, genetic correlations, (for a factor-analytic ΣG) rotated loadings, shares
    explained and specific variances, variance components and (with random terms beyond the
    genetic one) variance partition, h² across models, convergence, figures and files."""
    fits = _named(fits)
    selected = select(fits) if selected is None else selected
    primary = _primary(fits, selected)
    best = fits[primary] if primary is not None else next(iter(fits.values()))
    data = data or {}
    lines = ["# hetvc report", ""]
    if data.get("command"):
        lines += ["```", data["command"], "```", ""]
    if data.get("not_fitted"):
        lines += [f"**Incomplete: {data.get('stopped') or 'interrupted'} before "
                  f"{len(data['not_fitted'])} model(s) were fitted ({', '.join(data['not_fitted'])}).** "
                  "This report covers the models that finished; run the same command again to fit "
                  "the rest (finished fits are reused).", ""]
    lines += ["## Data", ""]
    facts = [
        ("phenotypes", data.get("pheno")),
        ("kinship", data.get("kinship") or (f"GRM from {data['genotypes']}" if data.get("genotypes") else None)),
        ("traits", ", ".join(best.traits)),
        ("environments", f"{len(best.envs)}: " + ", ".join(map(str, best.envs))),
        ("records", data.get("n_records")),
        ("observed values (N)", best.n_obs),
        ("genotypes in K", len(best.ids)),
        ("phenotyped genotypes", data.get("n_phenotyped")),
        ("fixed effects", "a mean per trait × environment" + (f" + {best.fixed}" if best.fixed else "")
         + f" ({best.rank_x} columns)"),
        ("method", best.method.upper()),
    ]
    lines += [f"- **{k}**: {v}" for k, v in facts if v is not None]
    shared = shared_notes(fits)
    data_notes = list(dict.fromkeys(list(data.get("notes") or []) + shared))
    if data_notes:
        lines += ["", "What the data needed (and what hetvc did):", ""]
        lines += [f"- {n}" for n in data_notes]

    comp = comparison(fits)
    lines += ["", "## Model comparison", ""]
    lines += ["Genetic structure / residual structure; VCs = number of variance-covariance "
              "parameters. REML log-likelihoods are comparable because every model has the same "
              "fixed effects. `homogeneous` and `heterogeneous` genetic structures are not nested, "
              "so they are compared by information criteria (AICc, which corrects AIC for few records "
              "per parameter, selects; AIC and BIC are shown beside it); an LRT is shown only "
              "against a nested smaller model (its χ² p-value is conservative when the restriction "
              "is on a boundary). Only fits that converged are eligible for selection.", ""]
    lines += [_comparison_md(comp, fits), ""]
    lines += [" ".join(selection_lines(fits, comp, strong=lambda s: f"**{s}**"))]
    if data.get("not_fitted"):
        lines += ["", f"Not fitted ({data.get('stopped') or 'interrupted'}): "
                  + ", ".join(f"**{n}**" for n in data["not_fitted"]) + "."]

    fa_figures = []  # figures shown in the section of a factor-analytic ΣG
    if primary is not None:
        rec = best.record
        if primary == selected:
            lines += ["", f"## Selected model: {primary}", ""]
        else:
            lines += ["", f"## Model: {primary} (did not converge)", "",
                      f"**This fit did not converge** ({_status(best)}): its estimates are where the "
                      "optimiser stopped, not REML estimates; use them only to diagnose the fit.", ""]
        lines += [f"- ℓ = {best.loglik:.4f}, k = {best.n_params}, AIC = {best.aic:.2f}"
                  + (f", AICc = {_aicc(best):.2f}" if _aicc(best) is not None else "")
                  + f", BIC = {best.bic:.2f}",
                  f"- {rec['status']} after {rec['iterations']} iterations ({seconds_text(rec)}); "
                  f"engine: {best.engine} ({best.engine_reason})"]
        if has_random(best):
            lines.append(f"- random terms beyond the genetic one: {_random_terms(best)}")
        if best.boundary:
            lines.append(f"- on the boundary (a singular covariance block): {_boundary(best)}")
        lines += [f"- note: {n}" for n in best.notes if n not in shared]
        h, p = best.heritability(), best.pooled_heritability()
        h2_def = ("h²_il = Σg_l[i,i] / (Σg_l[i,i] + Σ_t Σt_l[i,i] + ΣE_l[i,i]), every random term t "
                  "in the denominator (see the variance partition below)" if has_random(best)
                  else "h²_il = Σg_l[i,i] / (Σg_l[i,i] + ΣE_l[i,i])")
        lines += ["", "### Heritability per environment (SE)", "",
                  f"{h2_def}; pooled: weighted by each environment's "
                  "share of the trait's records (paper eq. 12 read as a proportion).", "",
                  _md_table(_h2_wide(best))] + _se_footnote(h, p) + [""]
        lines += ["### Genetic correlations between traits (SE)", "", _md_table(_trait_rg(best))]
        lines += _se_footnote(best.genetic_correlations()) + [""]
        lines += _top_genotypes_md(best)
        if best.genetic_structure.environment_correlations:
            lines += ["### Genetic correlations between environments", ""]
            if len(best.envs) <= 6:
                for t in best.traits:
                    lines += [f"{t}:", "", _md_table(_env_rg_matrix(best, t)), ""]
            else:
                lines += ["See `genetic_correlations.csv` (rows `between = environments`) and "
                          "`environment_correlations.png`.", ""]
        if factor_analytic(best):
            fa_figures = [p for p in figures if Path(p).name in _FA_CAPTIONS]
            lines += _fa_md(best, fa_figures)
        vc = best.variance_components()
        shown = pd.DataFrame({"name": vc["name"], "estimate": vc["estimate"],
                              "se": _se_cells(vc)})
        lines += ["### Variance components (SE from AI⁻¹)", "",
                  _md_table(shown, {"estimate": _num, "se": str}), ""]
        if has_random(best):
            part, wide = best.variance_partition(), _partition_md(best)
            terms = " + ".join(f"σ²_{t}" for t in best.random_terms)
            lines += ["### Variance partition (share of the phenotypic variance, SE)", "",
                      "Each term's share of the phenotypic variance σ²_G + Σ_t σ²_t + σ²_E per "
                      "environment × trait (G: genetic, t: each random term, E: residual; SEs by the "
                      "delta method; the variances are in `variance_partition.csv`). h² is the share "
                      "of G: "
                      f"h² = σ²_G / (σ²_G + Σ σ²_t + σ²_E), every random term ({terms}) entering "
                      "the denominator.", "",
                      _md_table(wide, {c: str for c in wide.columns})]
            lines += _se_footnote(part) + [""]

    if len(fits) > 1:
        lines += ["## Heritability under each model", "", _md_table(_h2_across_models(fits)), ""]
        other = [(n, f) for n, f in fits.items() if n != primary]
        lines += ["## Other models" if primary is not None else "## Models", ""]
        for n, f in other:
            r = f.record
            line = (f"- **{n}**: ℓ = {f.loglik:.2f}, k = {f.n_params}; {r['status']} after "
                    f"{r['iterations']} iterations ({seconds_text(r)}; {f.engine})")
            if not f.converged and r.get("message"):
                line += f"; {r['message']}"
            if has_random(f):
                line += f"; random: {', '.join(f.random_terms)}"
            if f.boundary:
                line += f"; boundary: {_boundary(f)}"
            lines.append(line)
            lines += [f"  - note: {x}" for x in f.notes if x not in shared]
        lines.append("")

    if figures:
        lines += ["## Figures", ""]
        captions = {
            "phenotypic_correlations.png": "Phenotypic correlation between traits in each environment (cf. the paper's Figure 2).",
            "genetic_correlations.png": f"Estimated genetic correlations (colour) and covariances (cells), {selected}.",
            "environment_correlations.png": "Genetic correlations between environments "
                                            f"({environment_model(fits, selected)}); environments "
                                            "ordered by clustering (average linkage on 1 − r "
                                            "averaged over traits).",
            "latent_regression.png": f"Latent regression on factor 1 "
                                     f"({factor_analytic_model(fits, selected)}): BLUPs against "
                                     "the environments' factor-1 loadings, each line's slope a "
                                     "genotype's score; breeders read a genotype's stability from "
                                     "its slope.",
            "heritability.png": "h² per environment (±1 SE) and pooled, every converged model "
                                f"(the selected model, {selected}, marked \"(selected)\" in bold "
                                "with larger markers; hollow markers: a fit on the boundary; fits "
                                "that did not converge are listed in the legend but not drawn).",
            "observed_fitted.png": f"Observed vs fitted values, {selected}: **in-sample fit, not "
                                   "prediction accuracy** (r is inflated by the environment means "
                                   "and by the BLUPs of these same records); predictive ability "
                                   "needs cross-validation (`hetvc cv`, planned).",
        }
        for p in figures:
            name = Path(p).name
            if p in fa_figures:  # shown in the section of the factor-analytic ΣG
                continue
            lines += [f"![{name}]({name})", "", f"*{captions.get(name, name)}*", ""]

    files = []
    if primary is not None:
        files.append(f"`fit.json` ({'the selected model' if primary == selected else 'the model, not converged'}; "
                     "`hetvc.load('fit.json')`)")
    if len(fits) > 1:
        files.append("`fits/*.json` (every model)")
    files.append("`comparison.csv`, `variance_components.csv`, `heritability.csv`, "
                 "`genetic_correlations.csv`"
                 + (", `variance_partition.csv`" if any(has_random(f) for f in fits.values()) else "")
                 + " (every model)")
    if primary is not None:
        files.append("`blups.csv`, `blues.csv`, `fitted.csv`, `rankings.csv`"
                     + (", `random_effects.csv`" if has_random(best) else "")
                     + (", `loadings.csv`" if factor_analytic(best) else "")
                     + f" ({'selected model' if primary == selected else 'this model'})")
    files.append("`summary.json`.")
    lines += ["## Files", "", ", ".join(files), ""]
    return "\n".join(lines)
