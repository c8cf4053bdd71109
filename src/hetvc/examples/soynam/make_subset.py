"""How the bundled SoyNAM example was cut from the source data (kept for provenance).

Run from a checkout that has the prepared SoyNAM subset next to it:

    python src/hetvc/examples/soynam/make_subset.py ../shared/data/soynam_3loc_subset src/hetvc/examples/soynam

Selection (seeded, so the output is reproducible):

* all 3 environments (IL_2012, IN_2012, NE_2012) and all 4 families of the source subset;
* per family, 40 phenotyped recombinant inbred lines: every line that has a repeated plot
  (two records of one line in one environment) or a missing yield/height value, so that
  the example keeps those quirks, then lines drawn at random (seed 2012) to make up 40;
* per family, 5 more lines drawn at random that are in the kinship but whose phenotypes are
  left out, so the example shows predictions (BLUPs) of untested lines;
* phenotype columns: ids, design columns and the traits yield, oil and height;
* kinship: VanRaden (2008) GRM of the 180 lines from their SNPs (hetvc.kinship.grm), divided
  by its mean diagonal so that genetic variances are on the scale of the lines' variance
  (inbred lines have a GRM diagonal near 2), written with full precision;
* markers: the same 180 lines, 0/1/2 dosages, empty = missing, gzip-compressed.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

PER_FAMILY = 40
HELD_OUT = 5
SEED = 2012
TRAITS = ["yield", "oil", "height"]


def main(src: str, out: str) -> None:
    from hetvc.kinship import grm, write_kinship

    src, out = Path(src), Path(out)
    d = pd.read_csv(src / "pheno_long.csv", dtype={"genotype": str, "set": str})
    rng = np.random.default_rng(SEED)
    reps = d.groupby(["genotype", "env"]).size()
    forced = set(reps[reps > 1].index.get_level_values(0))
    forced |= set(d.loc[d[["yield", "height"]].isna().any(axis=1), "genotype"])
    phenotyped, held = [], []
    for _, fam in d.groupby("family"):
        ids = sorted(fam["genotype"].unique())
        first = [i for i in ids if i in forced]
        rest = list(rng.permutation([i for i in ids if i not in forced]))
        k = PER_FAMILY - len(first)
        phenotyped += first + rest[:k]
        held += rest[k:k + HELD_OUT]
    pheno = d[d["genotype"].isin(phenotyped)]
    pheno = pheno[["genotype", "env", "loc", "family", "set", "set_env"] + TRAITS]
    pheno = pheno.sort_values(["env", "family", "genotype"], kind="stable")
    pheno["yield"] = pheno["yield"].astype("Int64")  # kg/ha, whole numbers in the source
    pheno.to_csv(out / "pheno.csv", index=False)

    lines = sorted(phenotyped + held)
    markers = pd.read_csv(src / "markers.csv", dtype={"genotype": str}).set_index("genotype").loc[lines]
    K = grm(markers, method="vanraden")
    K = K / float(np.mean(np.diag(K)))
    write_kinship(K, out / "kinship.csv")
    markers.astype("Int8").reset_index().to_csv(out / "markers.csv.gz", index=False)
    print(f"{len(pheno)} records of {len(phenotyped)} lines; kinship and markers of {len(lines)} lines "
          f"({len(held)} without phenotypes)")


if __name__ == "__main__":
    main(*sys.argv[1:3])
