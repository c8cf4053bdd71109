r"""Genotypes → genomic relationship matrix (GRM); reading, writing and checking kinships.

    from hetvc.kinship import grm, read_kinship, check_kinship
    K = grm("genotypes.bed")                   # or a .csv marker table, an array, a DataFrame
    K = grm("markers.csv", coding="auto", maf=0.05, call_rate=0.9)
    K = read_kinship("K.csv")                  # validated by check_kinship

One module a job, each documented in its own docstring; a module imports only those above it:

* :mod:`~hetvc.kinship.ids` — matching ids by label, and the hint for near misses;
* :mod:`~hetvc.kinship.tables` — delimited text tables: the separator, exact floats;
* :mod:`~hetvc.kinship.tiles` — tile-by-tile passes over an n×n matrix (no n×n temporaries);
* :mod:`~hetvc.kinship.psd` — the certificate of positive semi-definiteness;
* :mod:`~hetvc.kinship.sources` — genotype sources: PLINK ``.bed``, CSV marker tables, arrays;
  marker codings (0/1/2 dosages, −1/0/1, A/C/G/T letters, 0/1 presence/absence) and their
  detection;
* :mod:`~hetvc.kinship.genomic` — the GRM (standardized or VanRaden), its formulas and costs;
* :mod:`~hetvc.kinship.check` — :func:`check_kinship`, and the digest that spares a second check;
* :mod:`~hetvc.kinship.scaling` — the scale K is used at (mean diagonal, centred, as given) and
  why K is singular, with their notes;
* :mod:`~hetvc.kinship.files` — kinship files (``.csv``, ``.npy`` + ``.ids``);
* :mod:`~hetvc.kinship.pedigree` — pedigrees: reading and checking them, the additive
  relationship matrix A (tabular method), its sparse inverse (Henderson's rules with
  inbreeding) and inbreeding coefficients (Meuwissen & Luo).

Counts of dropped SNPs and imputed calls are logged by logger ``hetvc.kinship``.
"""

from .check import check_kinship, checked_kinship, kinship_fingerprint, scale_kinship
from .files import ids_path, kinship_matrix, read_kinship, write_kinship
from .genomic import GRMInfo, grm
from .genomic import standardized_genotypes
from .ids import check_ids, near_match_hint
from .pedigree import (Pedigree, inbreeding, looks_like_pedigree, pedigree_inverse, pedigree_kinship,
                       pedigree_summary, read_pedigree)
from .psd import PSDCertificate, psd_certificate, smallest_eigenvalue
from .scaling import KINSHIP_SCALES, kinship_scaling, kinship_singularity, singularity_note
from .sources import CODINGS, MarkerCoding, decode_markers, detect_coding, read_genotypes
from .tiles import symmetrize

__all__ = [
    "GRMInfo",
    "grm",
    "read_genotypes",
    "CODINGS",
    "MarkerCoding",
    "decode_markers",
    "detect_coding",
    "read_kinship",
    "kinship_matrix",
    "write_kinship",
    "check_kinship",
    "checked_kinship",
    "kinship_fingerprint",
    "scale_kinship",
    "KINSHIP_SCALES",
    "kinship_scaling",
    "kinship_singularity",
    "singularity_note",
    "check_ids",
    "standardized_genotypes",
    "symmetrize",
    "ids_path",
    "near_match_hint",
    "psd_certificate",
    "smallest_eigenvalue",
    "PSDCertificate",
    "Pedigree",
    "read_pedigree",
    "pedigree_kinship",
    "pedigree_inverse",
    "inbreeding",
    "looks_like_pedigree",
    "pedigree_summary",
]
