"""The numbers of docs/random-terms.md: gryphon animal models with year and mother effects,
DT_example with random blocks and DT_cpdata with random rows and columns (data from
../shared/data; see their READMEs).

    python docs/scripts/random_terms.py [path/to/shared/data]

Prints markdown tables: each model's ℓ, AIC, BIC, its variance components, the variance
partition, and the LRTs for dropping a term (hetvc.compare)."""

import sys
import time
from pathlib import Path

import pandas as pd
from threadpoolctl import threadpool_limits

import hetvc

DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[3] / "shared" / "data"


def md(df: pd.DataFrame) -> str:
    """A markdown table, numbers to 4 significant digits."""
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("–" if v is None else str(v))
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def fit(label, *args, **kw):
    t0 = time.perf_counter()
    f = hetvc.fit(*args, **kw)
    seconds = time.perf_counter() - t0
    print(f"- {label}: ℓ = {f.loglik:.4f}, k = {f.n_params}, {f.record['status']} after "
          f"{f.record['iterations']} iterations, {seconds:.2f} s, engine {f.engine}")
    return f


def components(fits: dict) -> pd.DataFrame:
    rows = {}
    for name, f in fits.items():
        vc = f.variance_components().set_index("name")
        rows[name] = [f"{e:.4g} ({s:.3g})" if n == "" else f"{e:.3g} ({n.split(':')[0]})"
                      for e, s, n in zip(vc["estimate"], vc["se"], vc["se_note"])]
        rows[name] = pd.Series(rows[name], index=vc.index)
    return pd.DataFrame(rows).fillna("–").reset_index().rename(columns={"index": "component"})


def gryphon():
    d = DATA / "DT_gryphon"
    data = pd.read_csv(d / "DT_gryphon.csv", dtype=str)
    for t in ("BWT", "TARSUS"):
        data[t] = pd.to_numeric(data[t])
    A = hetvc.pedigree_kinship(d / "P_gryphon.csv", positions=True)
    common = dict(id="ANIMAL", fixed="~ SEX", genetic="homogeneous")
    print("\n### Gryphon, birth weight (univariate)\n")
    uni = {}
    for terms in ([], ["BYEAR"], ["MOTHER"], ["BYEAR", "MOTHER"]):
        name = "animal" + "".join(f" + {t}" for t in terms)
        uni[name] = fit(name, data, A, ["BWT"], random=terms or None, **common)
    print()
    print(md(components(uni)))
    print()
    full = uni["animal + BYEAR + MOTHER"]
    print(md(full.variance_partition().drop(columns=["env", "se_note"])))
    print()
    comp = hetvc.compare(list(uni.values()), names=list(uni))
    cols = ["model", "k", "logLik", "AIC", "BIC", "lrt_vs", "lrt_stat", "lrt_p"]
    cols += ["lrt_p_boundary"] if "lrt_p_boundary" in comp.columns else []
    print(md(comp[cols]))
    print("\n### Gryphon, birth weight and tarsus length (bivariate)\n")
    bi = {}
    for terms in ([], ["BYEAR", "MOTHER"]):
        name = "animal" + "".join(f" + {t}" for t in terms)
        bi[name] = fit(name, data, A, ["BWT", "TARSUS"], random=terms or None, **common)
    print()
    print(md(components(bi)))
    print()
    print(md(bi["animal + BYEAR + MOTHER"].variance_partition().drop(columns=["env", "se_note"])))
    print()
    for name, f in bi.items():
        rg = f.genetic_correlations()
        print(f"- {name}: r_g(BWT, TARSUS) = {rg['r'][0]:.3f} ({rg['se'][0]:.3f})")
    print()
    print(md(hetvc.compare(list(bi.values()), names=list(bi))[["model", "k", "logLik", "AIC", "BIC",
                                                                   "lrt_vs", "lrt_stat", "lrt_df", "lrt_p"]]))


def dt_example():
    d = DATA / "DT_example"
    data = pd.read_csv(d / "DT_example.csv")
    K = hetvc.read_kinship(d / "A_example.csv")
    for trait in ("Yield", "Weight"):
        print(f"\n### DT_example, {trait}: random blocks (nested in environments)\n")
        rows = []
        fits = {}
        for genetic in ("homogeneous", "heterogeneous", "unstructured"):
            for terms in ([], ["Block"]):
                name = f"{genetic}" + ("+Block" if terms else "")
                f = fit(name, data, K, trait, env="Env", id="Name", genetic=genetic, random=terms or None)
                fits[name] = f
                rows.append(dict(model=name, k=f.n_params, logLik=f.loglik, AIC=f.aic, BIC=f.bic,
                                 boundary=", ".join(f.boundary) or "–"))
        print()
        print(md(pd.DataFrame(rows)))
        print()
        best = fits["heterogeneous+Block"]
        print(md(best.variance_partition().drop(columns=["se_note"])))
        print()
        print(md(components({k: v for k, v in fits.items() if k.startswith("heterogeneous")})))


def cpdata():
    """A plot-level trial: 363 full sibs on a 13 × 36 grid, with random rows and columns.  K is
    VanRaden's GRM of the -1/0/1 markers shifted to 0/1/2 (hetvc kinship reads 0/1/2)."""

    d = DATA / "DT_cpdata"
    data = pd.read_csv(d / "DT_cpdata.csv", dtype={"Rowf": str, "Colf": str})
    markers = pd.read_csv(d / "GT_cpdata.csv", index_col=0)
    M = markers.to_numpy(float) + 1.0
    p = M.mean(0) / 2
    Z = M - 2 * p
    ids = markers.index.astype(str)
    K = pd.DataFrame(Z @ Z.T / (2 * (p * (1 - p)).sum()), index=ids, columns=ids)
    for traits in (["Yield"], ["Yield", "FruitAver"]):
        print(f"\n### DT_cpdata, {' and '.join(traits)}: random rows and columns\n")
        fits = {}
        for terms in ([], ["Rowf", "Colf"]):
            name = "genetic" + "".join(f" + {t}" for t in terms)
            fits[name] = fit(name, data, K, traits, random=terms or None, genetic="homogeneous")
        print()
        print(md(components(fits)))
        print()
        print(md(fits["genetic + Rowf + Colf"].variance_partition().drop(columns=["env", "se_note"])))
        print()
        print(md(hetvc.compare(list(fits.values()), names=list(fits))[["model", "k", "logLik", "AIC", "BIC",
                                                                       "lrt_vs", "lrt_stat", "lrt_df", "lrt_p"]]))


if __name__ == "__main__":
    with threadpool_limits(1):
        gryphon()
        dt_example()
        cpdata()
