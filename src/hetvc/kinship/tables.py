"""Delimited text tables (genotype tables and kinship files): the separator a file name
implies, and reading floats back exactly."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

# pandas < 3 needs float_precision="round_trip" to read floats back exactly; pandas 3 does so
# by default and deprecates the argument.
_EXACT_FLOATS = {"float_precision": "round_trip"} if int(pd.__version__.split(".")[0]) < 3 else {}


def _csv_sep(path: Path) -> str | None:
    name = path.name.lower()
    for ext in (".gz", ".bz2", ".xz", ".zip", ".zst"):
        if name.endswith(ext):
            name = name[: -len(ext)]
    if name.endswith(".csv"):
        return ","
    if name.endswith(".tsv") or name.endswith(".tab"):
        return "\t"
    return None
