r"""The study grid and its seeds: scenarios, the default grid, the data seed of a replicate.

Seeds
-----
The data seed of a task depends only on the base seed, the scenario's parameters and the
replicate number::

    SeedSequence(base_seed, spawn_key=(scenario_hash, replicate)).generate_state(2, uint32)

(``scenario_hash``: 32 bits of a BLAKE2b hash of the canonical parameter string, see
:attr:`Scenario.key`).  Neither the scenario's position in the grid, nor the number of
workers, nor the order in which tasks finish, nor the backend (processes or Dask) enters, so
the same study gives the same rows however it is scheduled, and adding a value of w to a
finished study leaves the old scenarios' data unchanged.  Scenarios get *independent* data
(no common random numbers), so their Monte-Carlo errors are independent.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from ..errors import InputError

DEFAULT_W = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
DEFAULT_RHO = (0.25, 0.5, 0.75)
DEFAULT_SEED = 20240917
MODELS = ("homogeneous", "heterogeneous")
SCENARIO_FIELDS = ("n", "traits", "locations", "snps", "h2", "w", "rho")
QUICK_REPLICATES = 3


def model_rank(models: Iterable[str]) -> dict:
    """Sort key of model names: the study's :data:`MODELS` first, in their order, then the others
    alphabetically."""
    return {m: i for i, m in enumerate(list(MODELS) + sorted(set(models) - set(MODELS)))}


@dataclass(frozen=True)
class Scenario:
    """One point of the study grid (generative parameters of :func:`hetvc.simulate.simulate`).

    Everything else of the simulation keeps simulate's defaults: ``split`` design (each
    individual in one location, balanced), location means N(0, 1) as fixed effects, residual
    trait correlation ρ_e = ρ, equal genetic scale in every location, no covariates, no
    missing values, allele frequencies from {0.05, 0.1, 0.3, 0.4, 0.5}.
    """

    n: int = 1000
    traits: int = 3
    locations: int = 4
    snps: int = 500
    h2: float = 0.30
    w: float = 0.0
    rho: float = 0.5

    def __post_init__(self):
        for name in ("n", "traits", "locations", "snps"):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < 1:
                raise InputError(f"scenario {name} must be a positive integer, not {v!r}")
            object.__setattr__(self, name, int(v))
        for name in ("h2", "w", "rho"):
            try:
                object.__setattr__(self, name, float(getattr(self, name)))
            except (TypeError, ValueError):
                raise InputError(f"scenario {name} must be a number, not {getattr(self, name)!r}") from None
        if not 0 <= self.h2 <= 1:
            raise InputError(f"h2 must be in [0, 1], not {self.h2}")
        if not 0 <= self.w <= 1:
            raise InputError(f"w must be in [0, 1], not {self.w}")
        lo = -1.0 / (self.traits - 1) if self.traits > 1 else -math.inf
        if not lo < self.rho <= 1:
            raise InputError(f"rho = {self.rho} gives no correlation matrix for {self.traits} traits")
        if self.n < 2 * self.locations:
            raise InputError(f"n = {self.n} is too small for {self.locations} locations")

    @property
    def key(self) -> str:
        """Canonical label, e.g. ``n1000-m3-L4-p500-h0.3-w0.2-r0.5`` (repr of each float)."""
        return (f"n{self.n}-m{self.traits}-L{self.locations}-p{self.snps}-h{self.h2!r}"
                f"-w{self.w!r}-r{self.rho!r}")

    @property
    def hash32(self) -> int:
        return int.from_bytes(hashlib.blake2b(self.key.encode(), digest_size=4).digest(), "little")

    def params(self) -> dict:
        return dataclasses.asdict(self)


def grid(n: int = 1000, traits: int = 3, locations: int = 4, snps: int = 500, h2=0.30,
         w: Iterable[float] = DEFAULT_W, rho: Iterable[float] = DEFAULT_RHO) -> list[Scenario]:
    """The scenarios of every combination (any argument may be a scalar or a list), w-major."""
    def as_list(x):
        return list(x) if isinstance(x, (list, tuple, np.ndarray, range)) else [x]

    out, seen = [], set()
    for combo in itertools.product(*(as_list(v) for v in (n, traits, locations, snps, h2, w, rho))):
        sc = Scenario(*combo)
        if sc.key not in seen:
            seen.add(sc.key)
            out.append(sc)
    if not out:
        raise InputError("the study grid is empty")
    return out


def quick_grid() -> list[Scenario]:
    """The ``--quick`` grid: n = 200, 3 traits, 4 locations, 500 SNPs, w ∈ {0, 1}, ρ = 0.5."""
    return grid(n=200, w=[0.0, 1.0], rho=[0.5])


def replicate_seed(base_seed: int, scenario: Scenario, replicate: int) -> int:
    """The data seed of one replicate of one scenario (see the module docstring)."""
    if int(base_seed) != base_seed or base_seed < 0:
        raise InputError(f"seed must be an integer ≥ 0, not {base_seed!r}")
    ss = np.random.SeedSequence(int(base_seed), spawn_key=(scenario.hash32, int(replicate)))
    a, b = ss.generate_state(2, np.uint32)
    return (int(a) << 32) | int(b)
