"""Example data bundled with hetvc.

``soynam`` (the default): 160 soybean recombinant inbred lines of 4 SoyNAM families, grain
yield, seed oil and plant height at 3 US locations in 2012 (Illinois, Indiana, Nebraska), with
a genomic relationship matrix of those lines and 20 more that have no phenotypes.  Licence
GPL-3 (the SoyNAM R package); see ``soynam/README.md`` for source, attribution and how the
subset was made.

    >>> import hetvc
    >>> from hetvc.examples import load_example
    >>> pheno, K, roles = load_example()
    >>> fit = hetvc.fit(pheno, K, **roles)           # traits, env and id columns
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pandas as pd
from ..errors import InputError
from ..kinship import read_kinship

__all__ = ["load_example", "example_path", "EXAMPLES"]

EXAMPLES = {
    "soynam": {
        "pheno": "pheno.csv",
        "kinship": "kinship.csv",
        "markers": "markers.csv.gz",
        "roles": {"traits": ["yield", "height"], "env": "env", "id": "genotype"},
        "string_columns": ["genotype", "env", "loc", "family", "set", "set_env"],
    },
}


def example_path(name: str = "soynam") -> Path:
    """Folder of a bundled example (pheno.csv, kinship.csv, markers.csv.gz, README.md)."""
    if name not in EXAMPLES:

        raise InputError(f"no bundled example {name!r}; available: {', '.join(EXAMPLES)}")
    return Path(str(resources.files(__package__).joinpath(name)))


def load_example(name: str = "soynam"):
    """(pheno, K, roles) of a bundled example.

    ``pheno``: one row per plot (id and design columns as strings, traits as floats);
    ``K``: the labelled kinship (validated, mean diagonal 1); ``roles``: the keyword arguments
    that name the columns, ``{"traits": [...], "env": ..., "id": ...}``, ready for
    ``hetvc.fit(pheno, K, **roles)``.
    """

    spec = EXAMPLES.get(name)
    folder = example_path(name)
    pheno = pd.read_csv(folder / spec["pheno"], dtype={c: str for c in spec["string_columns"]})
    K = read_kinship(folder / spec["kinship"])
    roles = {k: (list(v) if isinstance(v, list) else v) for k, v in spec["roles"].items()}
    return pheno, K, roles
