"""`hetvc simulate` and `hetvc kinship` (filled in by the genotype/simulation work)."""

COMMANDS = []
