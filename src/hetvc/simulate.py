r"""Simulated genotypes, kinship and multi-trait, multi-location phenotypes.

This follows the paper's "Data Simulation" (after Meyer & Birney 2018) and fixes the choices
the paper leaves open.  All of them are parameters of :func:`simulate`.

Genotypes and kinship
---------------------
p bi-allelic SNPs for n individuals: each SNP's reference allele frequency f_k is drawn
uniformly from ``freqs`` (paper: 0.05, 0.1, 0.3, 0.4, 0.5) and the dosage of individual j is
x_jk ~ Binomial(2, f_k).  Monomorphic SNPs are dropped (count in ``truth.snps_dropped``).
K is the standardised GRM of these genotypes (:func:`hetvc.kinship.grm`), K = W W' with
W = [(x_jk − 2p_k)/sqrt(2p_k(1−p_k))] / sqrt(p'), p_k the sample allele frequency.

Phenotypes
----------
m traits ``t1..tm``, L locations ``L1..LL`` (zero-padded, ``L01..``, when L ≥ 10, so that
sorted labels are in numeric order), R(ρ) = (1−ρ)I_m + ρJ_m the m×m equicorrelation matrix:

    Cg = h²·R(ρ)                 genetic covariance between traits (in one location)
    Ce = (1−h²)·R(ρ_e)           residual covariance between traits  (ρ_e = ρ by default)

    a_j    = row j of W β_0,      b_jl = row j of W β_l   (l = 1..L),
             rows of β_0, β_1..β_L iid MVN(0, Cg)   ⇒  vec(a), vec(b_l) ~ MVN(0, Cg ⊗ K),
             a, b_1, ..., b_L independent
    u_jl   = s_l · ( sqrt(1−w)·a_j + sqrt(w)·b_jl )          genetic value of j in l (1×m)
    y_r    = μ_l(r) + u_j(r)l(r) + c_r'γ + e_r,   e_r ~ MVN(0, Ce) independent over records

so that, with index a = l·m + i (environment-major, hetvc's layout of ΣG),

    Cov(u_jli, u_j'l'i') = K_jj' · G[(l,i),(l',i')],
    G[(l,i),(l',i')]     = s_l·s_l' · ((1−w) + w·[l = l']) · Cg[i,i'],
    i.e. G = (S ⊗ I_m) · [((1−w)·J_L + w·I_L) ⊗ Cg] · (S ⊗ I_m),  S = diag(s_1..s_L).

* w ∈ [0, 1] is the share of the genetic variance that is location specific: the genetic
  correlation between any two locations is exactly 1 − w (w = 0: one genetic value in all
  locations; w = 1: independent genetic values per location, each with covariance K).
* s_l (``location_scales``, default all 1) scales the whole genetic value in location l, so
  the genetic variance there is s_l²·h² and the per-location heritability is
  h²_l = s_l²h² / (s_l²h² + 1 − h²).  We scale the whole value rather than only its
  location-specific part so that the two knobs are independent: w alone sets the
  cross-location correlation (exactly 1 − w whatever the scales) and s alone sets the size
  of the genetic variance, which then differs between locations even when w = 0.
* h² is the genetic share of the random part (genetic + residual), which is what REML
  estimates when location means and covariates are fixed effects; those fixed effects add
  variance on top and are nuisance.  With all s_l = 1, G_l = Cg and h²_l = h² everywhere.
* μ_l (``location_effects``): an L×m table of means, or a standard deviation from which
  they are drawn N(0, sd²) (default sd 1).  ``covariates`` = k adds k standard-normal
  covariates ``c1..ck`` per record with effects γ ~ N(0, ``covariate_sd``²) per trait.
* The block-diagonal part of G, G_l = s_l²·Cg, is what the ``heterogeneous`` genetic
  structure estimates; its off-diagonal blocks s_l·s_l'·(1−w)·Cg are the covariance it
  ignores.  The residual ΣE = Ce is the same in every location.
* The pooled heritability (docs/design.md §5, paper eq. 12) is
  h²_i = Σ_l π_l G_l[i,i] / (Σ_l π_l G_l[i,i] + Σ_l π_l Ce[i,i]), π_l the realised share of
  records in location l.

Design: ``"split"`` (default, as in the paper) gives every individual one record, in one
location; locations are assigned at random in balanced numbers (or given by ``env``).
``"full"`` gives every individual a record in every location (n·L records).
``missing`` > 0 blanks that share of trait values at random.

Reproducibility: every component draws from its own stream of one
``numpy.random.SeedSequence(seed)`` (genotypes, locations, location means, covariates,
genetic values, residuals, missingness), so the same seed gives identical data, and runs
that differ only in w, ρ, h² or the scales share their genotypes and standard-normal
draws (common random numbers across a study grid).  ``seed=None`` draws a fresh seed and
records it in the truth.  numpy does not promise identical streams across its major
versions, and floating-point results may differ in the last bits between BLAS builds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from . import heritability
from .errors import InputError
from .io_utils import atomic_path, atomic_write
from .kinship import standardized_genotypes, symmetrize, check_kinship, write_kinship

__all__ = ["DEFAULT_FREQS", "Truth", "Simulation", "simulate_genotypes", "simulate", "read_truth"]

DEFAULT_FREQS = (0.05, 0.1, 0.3, 0.4, 0.5)
TRUTH_FORMAT = 1

# Order of the independent random streams spawned from SeedSequence(seed); never reorder.
_STREAMS = ("genotypes", "env", "location_means", "covariates", "genetic", "residual", "missing")


def _labels(prefix: str, k: int) -> list[str]:
    width = len(str(k))
    return [f"{prefix}{i + 1:0{width}d}" for i in range(k)]


def _rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(rng)


def equicorrelation(m: int, rho: float) -> np.ndarray:
    """R(ρ) = (1−ρ)·I_m + ρ·J_m."""
    return (1.0 - rho) * np.eye(m) + rho * np.ones((m, m))


def _factor(C: np.ndarray) -> np.ndarray:
    """A deterministic F with F F' = C (Cholesky; exact factor of the PSD boundary cases)."""
    m = len(C)
    if not C.any():
        return np.zeros((m, m))
    try:
        return np.linalg.cholesky(C)
    except np.linalg.LinAlgError:
        pass
    # Equicorrelation with ρ = 1 (or other rank-one C): C = c c'.
    d = np.sqrt(np.clip(np.diag(C), 0, None))
    if np.allclose(np.outer(d, d), C, rtol=1e-12, atol=1e-14):
        F = np.zeros((m, m))
        F[:, 0] = d
        return F
    raise InputError("the requested trait covariance is not positive semi-definite")  # pragma: no cover


# ---------------------------------------------------------------------------------------


def simulate_genotypes(n: int, p: int, freqs: Sequence[float] = DEFAULT_FREQS, rng=None, *,
                       drop_monomorphic: bool = True) -> pd.DataFrame:
    """n×p dosages: SNP k has allele frequency f_k drawn uniformly from ``freqs`` and
    x_jk ~ Binomial(2, f_k).

    ``rng``: a numpy Generator, a seed, or None.  Returns a DataFrame (index ``I001..``
    named ``id``, columns ``snp001..``, int8 dosages).  Monomorphic SNPs are dropped (so
    fewer than p columns may come back); the count is in ``df.attrs["monomorphic_dropped"]``
    and the allele frequencies used in ``df.attrs["freqs"]``.
    """
    n, p = _posint(n, "n", 1), _posint(p, "snps", 1)
    freqs = np.asarray(freqs, dtype=np.float64).ravel()
    if freqs.size == 0 or not np.all((freqs > 0) & (freqs < 1)):
        raise InputError(f"allele frequencies must lie strictly between 0 and 1, got {freqs.tolist()}")
    g = _rng(rng)
    f = g.choice(freqs, size=p)
    X = g.binomial(2, f, size=(n, p)).astype(np.int8)
    ids = _labels("I", n)
    snps = _labels("snp", p)
    keep = np.ones(p, dtype=bool)
    if drop_monomorphic:
        keep = X.min(axis=0) != X.max(axis=0)
    out = pd.DataFrame(X[:, keep], index=pd.Index(ids, dtype=object, name="id"),
                       columns=pd.Index(np.array(snps, dtype=object)[keep], dtype=object))
    out.attrs["monomorphic_dropped"] = int((~keep).sum())
    out.attrs["freqs"] = f[keep].tolist()
    if keep.sum() == 0:
        raise InputError(f"all {p} simulated SNPs are monomorphic; simulate more individuals or SNPs")
    return out


# ---------------------------------------------------------------------------------------


@dataclass
class Truth:
    """The true parameters of a simulation, in hetvc's layout.

    ``G`` is (L·m)×(L·m) with index a = l·m + i (environment l in ``envs`` order = sorted
    labels, trait i in ``traits`` order); ``G_env(l)`` / ``G_blocks`` its diagonal blocks
    (what the ``heterogeneous`` structure estimates); ``E`` the m×m residual covariance (the
    same in every environment).
    """

    envs: list
    traits: list
    G: np.ndarray
    E: np.ndarray
    Cg: np.ndarray
    Ce: np.ndarray
    h2: float
    w: float
    rho: float
    rho_e: float
    seed: int
    location_scales: np.ndarray
    location_means: np.ndarray          # L×m
    covariate_effects: np.ndarray       # k×m
    covariates: list
    env_shares: np.ndarray              # π_l, share of records per environment
    h2_by_env: np.ndarray               # L×m
    h2_pooled: np.ndarray               # m
    genetic_corr_env: np.ndarray        # L×L (the same for every trait)
    design: str = "split"
    n: int = 0
    records: int = 0
    snps: int = 0
    snps_dropped: int = 0
    freqs: list = field(default_factory=list)
    missing: float = 0.0

    @property
    def m(self) -> int:
        return len(self.traits)

    @property
    def L(self) -> int:
        return len(self.envs)

    def G_env(self, env) -> np.ndarray:
        """The m×m genetic covariance within one environment (label or position)."""
        l = self.envs.index(env) if env in self.envs else int(env)
        m = self.m
        return self.G[l * m:(l + 1) * m, l * m:(l + 1) * m].copy()

    @property
    def G_blocks(self) -> list:
        return [self.G_env(l) for l in range(self.L)]

    @property
    def G_index(self) -> list:
        """Labels of the rows/columns of G: ``"L1:t1", "L1:t2", ...``."""
        return [f"{e}:{t}" for e in self.envs for t in self.traits]

    def to_dict(self) -> dict:
        """A JSON-ready dict (matrices as nested lists)."""
        d = {"format": "hetvc-simulation-truth", "version": TRUTH_FORMAT}
        for name, value in self.__dict__.items():
            d[name] = value.tolist() if isinstance(value, np.ndarray) else value
        d["G_index"] = self.G_index
        d["layout"] = ("G[a, b] with a = l*m + i: environment-major (envs order), trait-minor "
                       "(traits order); E is m x m, the same in every environment")
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Truth":
        kwargs = {}
        arrays = {"G", "E", "Cg", "Ce", "location_scales", "location_means", "covariate_effects",
                  "env_shares", "h2_by_env", "h2_pooled", "genetic_corr_env"}
        for name in cls.__dataclass_fields__:
            if name in d:
                kwargs[name] = np.asarray(d[name], dtype=np.float64) if name in arrays else d[name]
        k = len(kwargs.get("covariates", []))
        if "covariate_effects" in kwargs:
            kwargs["covariate_effects"] = kwargs["covariate_effects"].reshape(k, len(d["traits"]))
        return cls(**kwargs)


def read_truth(path: str | os.PathLike) -> Truth:
    """Read a truth.json written by :meth:`Simulation.to_dir` (a file or its folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / "truth.json"
    if not p.exists():
        raise InputError(f"truth file {p} does not exist")
    try:
        with open(p, encoding="utf-8") as fh:
            d = json.load(fh)
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read truth file {p}: {err}") from err
    if d.get("format") != "hetvc-simulation-truth":
        raise InputError(f"{p} is not a hetvc simulation truth file")
    return Truth.from_dict(d)


@dataclass
class Simulation:
    """A simulated data set: phenotypes, genotypes, kinship and the truth.

    ``pheno``: one row per record; columns ``id``, ``env``, the traits ``t1..tm``, then the
    covariates ``c1..ck``.  ``genotypes``: n×p' dosages (None when a K was given).
    ``K``: labelled standardised GRM.  ``genetic_values``: the true u, index ``id``, columns
    ``(env, trait)`` (every individual in every environment).
    """

    pheno: pd.DataFrame
    genotypes: pd.DataFrame | None
    K: pd.DataFrame
    truth: Truth
    genetic_values: pd.DataFrame

    def to_dir(self, path: str | os.PathLike, plink: bool = False) -> list[Path]:
        """Write ``pheno.csv``, ``kinship.csv``, ``truth.json`` and ``genetic_values.csv``
        (and ``genotypes.bed/.bim/.fam`` with ``plink=True``) into folder ``path`` (created if
        needed), each atomically.  Returns the paths written."""
        out = Path(path)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise InputError(f"cannot create output folder {out}: {err}") from err
        written = []
        with atomic_path(out / "pheno.csv") as tmp:
            self.pheno.to_csv(tmp, index=False)
        written.append(out / "pheno.csv")
        written.append(write_kinship(self.K, out / "kinship.csv"))
        gv = self.genetic_values.copy()
        gv.columns = [f"{e}:{t}" for e, t in gv.columns]
        with atomic_path(out / "genetic_values.csv") as tmp:
            gv.to_csv(tmp, index_label="id")
        written.append(out / "genetic_values.csv")
        with atomic_write(out / "truth.json") as fh:
            json.dump(self.truth.to_dict(), fh, indent=1)
            fh.write("\n")
        written.append(out / "truth.json")
        if plink:
            written.extend(self.write_plink(out / "genotypes"))
        return written

    def write_plink(self, prefix: str | os.PathLike) -> list[Path]:
        """Write the genotypes as PLINK ``<prefix>.bed/.bim/.fam`` (bed-reader; atomic per file)."""
        if self.genotypes is None:
            raise InputError("this simulation has no genotypes (it was given a kinship); cannot write PLINK files")
        from bed_reader import to_bed

        prefix = Path(prefix)
        targets = [prefix.with_name(prefix.name + ext) for ext in (".bed", ".fam", ".bim")]
        ids = [str(i) for i in self.genotypes.index]
        props = {"fid": ids, "iid": ids, "sid": [str(s) for s in self.genotypes.columns]}
        with atomic_path(targets[0]) as bed, atomic_path(targets[1]) as fam, atomic_path(targets[2]) as bim:
            # a writeable, C-ordered copy: bed-reader refuses read-only (copy-on-write) views
            values = np.array(self.genotypes.to_numpy(dtype=np.float64), dtype=np.float64, order="C")
            to_bed(bed, values, properties=props,
                   fam_filepath=fam, bim_filepath=bim)
        return targets


# ---------------------------------------------------------------------------------------
# parameter checks


def _posint(x, name, lo):
    try:
        v = int(x)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be an integer ≥ {lo}, not {x!r}") from None
    if v != x or v < lo:
        raise InputError(f"{name} must be an integer ≥ {lo}, not {x!r}")
    return v


def _unit(x, name, *, open_right=False):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number in [0, 1], not {x!r}") from None
    if not (0.0 <= v <= 1.0) or (open_right and v == 1.0):
        raise InputError(f"{name} must be in [0, 1{')' if open_right else ']'}, not {x!r}")
    return v


def _rho(x, name, m):
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be a number, not {x!r}") from None
    lo = -1.0 / (m - 1) if m > 1 else -np.inf
    if not (lo < v <= 1.0):
        raise InputError(
            f"{name} = {x!r} gives no valid correlation matrix for {m} traits; use {lo:.3g} < {name} ≤ 1"
        )
    return v


# ---------------------------------------------------------------------------------------


def simulate(n: int = 1000, traits=3, locations: int = 4, snps: int = 500, h2: float = 0.30,
             w: float = 0.0, rho: float = 0.5, *, location_scales=None, location_effects=1.0,
             covariates: int = 0, covariate_sd: float = 1.0, rho_e: float | None = None,
             seed: int | None = None, freqs: Sequence[float] = DEFAULT_FREQS, env=None,
             design: str = "split", missing: float = 0.0, genotypes=None, K=None) -> Simulation:
    """Simulate a multi-trait, multi-location data set (model: see the module docstring).

    n, snps: individuals and SNPs.  traits: a number m (names ``t1..tm``) or a list of names.
    locations: L (labels ``L1..LL``).  h2, w, rho, rho_e, location_scales, location_effects,
    covariates, covariate_sd: the generative parameters.  seed: int or None (a fresh seed is
    drawn and recorded).  env: optional location label per individual (length n, "split"
    design; the sorted distinct labels then define the locations).  design: "split" or
    "full".  missing: share of trait values blanked at random.  genotypes: an n×p dosage
    table to use instead of simulating (K is its standardised GRM).  K: a labelled kinship
    to use instead of genotypes (u is then drawn with a Cholesky factor of K).
    """
    # --- parameters ------------------------------------------------------------------
    if isinstance(traits, (list, tuple)):
        trait_names = [str(t) for t in traits]
        if len(set(trait_names)) != len(trait_names) or not trait_names:
            raise InputError(f"trait names must be distinct and non-empty, got {trait_names}")
    else:
        trait_names = _labels("t", _posint(traits, "traits", 1))
    m = len(trait_names)
    h2 = _unit(h2, "h2")
    w = _unit(w, "w")
    rho = _rho(rho, "rho", m)
    rho_e = rho if rho_e is None else _rho(rho_e, "rho_e", m)
    missing = _unit(missing, "missing", open_right=True)
    covariates = _posint(covariates, "covariates", 0)
    if design not in ("split", "full"):
        raise InputError(f"design must be 'split' (one location per individual) or 'full', not {design!r}")
    if seed is None:
        seed = int(np.random.SeedSequence().entropy)
    else:
        seed = _posint(seed, "seed", 0)
    streams = dict(zip(_STREAMS, (np.random.default_rng(s) for s in
                                  np.random.SeedSequence(seed).spawn(len(_STREAMS)))))

    # --- genotypes and kinship -------------------------------------------------------
    if genotypes is not None and K is not None:
        raise InputError("give genotypes or K, not both")
    dropped = 0
    if K is not None:
        Kdf = check_kinship(K, name="K")
        ids = list(Kdf.index)
        n = len(ids)
        kv = Kdf.to_numpy()
        try:
            W = np.linalg.cholesky(kv)
        except np.linalg.LinAlgError:
            W = np.linalg.cholesky(kv + 1e-8 * float(np.diag(kv).mean()) * np.eye(n))
        geno = None
        snps = 0
    else:
        if genotypes is None:
            n = _posint(n, "n", 2)
            geno = simulate_genotypes(n, snps, freqs, streams["genotypes"])
            dropped = geno.attrs["monomorphic_dropped"]
        else:
            geno = genotypes if isinstance(genotypes, pd.DataFrame) else pd.DataFrame(genotypes)
            geno = geno.copy()
            geno.index = pd.Index([str(i) for i in geno.index], dtype=object, name="id")
            if geno.index.duplicated().any():
                raise InputError(f"genotype id {geno.index[geno.index.duplicated()][0]!r} appears twice")
        ids = list(geno.index)
        n = len(ids)
        try:
            W, kept = standardized_genotypes(geno.to_numpy(dtype=np.float64))
        except (TypeError, ValueError) as err:
            if isinstance(err, InputError):
                raise
            raise InputError(f"genotypes must be numeric dosages ({err})") from err
        if genotypes is not None:
            dropped = int((~kept).sum())
            geno = geno.loc[:, kept]
        snps = geno.shape[1]
        kv = W @ W.T
        symmetrize(kv)  # in place: no q×q temporaries
        # checked once here, so that fits on sim.K do not check it again
        Kdf = check_kinship(pd.DataFrame(kv, index=pd.Index(ids, dtype=object, name="id"),
                                         columns=pd.Index(ids, dtype=object), copy=False), name="GRM")
    if n < 2:
        raise InputError("simulate needs at least 2 individuals")

    # --- locations -------------------------------------------------------------------
    if env is not None:
        if design != "split":
            raise InputError("env= gives one location per individual; it needs design='split'")
        env_arr = np.array([str(e) for e in env], dtype=object)
        if len(env_arr) != n:
            raise InputError(f"env has {len(env_arr)} labels for {n} individuals; give one per individual")
        env_names = sorted(set(env_arr))
        L = len(env_names)
        env_idx = np.array([env_names.index(e) for e in env_arr])
    else:
        L = _posint(locations, "locations", 1)
        env_names = _labels("L", L)
        if design == "split":
            env_idx = streams["env"].permutation(np.arange(n) % L)
        else:
            env_idx = None
    if location_scales is None:
        scales = np.ones(L)
    else:
        scales = np.asarray(location_scales, dtype=np.float64).ravel()
        if scales.shape != (L,) or not np.all(np.isfinite(scales)) or np.any(scales < 0):
            raise InputError(f"location_scales needs {L} finite numbers ≥ 0 (one per location), got {scales.tolist()}")

    if np.isscalar(location_effects) or location_effects is None:
        sd = 0.0 if location_effects is None else float(location_effects)
        if not np.isfinite(sd) or sd < 0:
            raise InputError(f"location_effects as a number is the sd of location means; must be ≥ 0, not {sd}")
        mu = streams["location_means"].normal(0.0, 1.0, size=(L, m)) * sd
    else:
        mu = np.asarray(location_effects, dtype=np.float64)
        if mu.shape == (L,):
            mu = np.repeat(mu[:, None], m, axis=1)
        if mu.shape != (L, m) or not np.all(np.isfinite(mu)):
            raise InputError(f"location_effects must be a number (sd), {L} means or an {L}×{m} table of means")

    # --- covariance matrices ---------------------------------------------------------
    Cg = h2 * equicorrelation(m, rho)
    Ce = (1.0 - h2) * equicorrelation(m, rho_e)
    Fg, Fe = _factor(Cg), _factor(Ce)
    S = np.kron(np.diag(scales), np.eye(m))
    G = S @ np.kron((1.0 - w) * np.ones((L, L)) + w * np.eye(L), Cg) @ S
    G = (G + G.T) / 2.0

    # --- genetic values --------------------------------------------------------------
    gr = streams["genetic"]
    k = W.shape[1]
    a = W @ (gr.standard_normal((k, m)) @ Fg.T)
    U = np.empty((n, L, m))
    for l in range(L):
        b = W @ (gr.standard_normal((k, m)) @ Fg.T)
        U[:, l, :] = scales[l] * (np.sqrt(1.0 - w) * a + np.sqrt(w) * b)

    # --- records ---------------------------------------------------------------------
    if design == "split":
        rec_ind = np.arange(n)
        rec_env = env_idx
    else:
        rec_ind = np.repeat(np.arange(n), L)
        rec_env = np.tile(np.arange(L), n)
    N = len(rec_ind)
    cov_names = _labels("c", covariates) if covariates else []
    Cmat = streams["covariates"].standard_normal((N, covariates))
    gamma = streams["covariates"].normal(0.0, 1.0, size=(covariates, m)) * float(covariate_sd)
    e = streams["residual"].standard_normal((N, m)) @ Fe.T
    Y = mu[rec_env] + U[rec_ind, rec_env, :] + Cmat @ gamma + e
    if missing > 0:
        Y[streams["missing"].random(Y.shape) < missing] = np.nan

    pheno = pd.DataFrame({"id": np.array(ids, dtype=object)[rec_ind],
                          "env": np.array(env_names, dtype=object)[rec_env]})
    for i, t in enumerate(trait_names):
        pheno[t] = Y[:, i]
    for c, name in enumerate(cov_names):
        pheno[name] = Cmat[:, c]

    # --- truth -----------------------------------------------------------------------
    shares = np.bincount(rec_env, minlength=L) / N
    gdiag = np.diagonal(G).reshape(L, m)  # rows l·m + i
    ediag = np.broadcast_to(np.diag(Ce), (L, m))
    with np.errstate(invalid="ignore", divide="ignore"):
        h2_env = heritability.per_environment(gdiag, ediag)
        h2_pooled = heritability.pooled(gdiag, ediag, shares)
        corr = ((1.0 - w) * np.ones((L, L)) + w * np.eye(L)) * (scales[:, None] * scales[None, :])
        d = np.sqrt(np.diag(corr))
        corr = corr / np.outer(d, d)
    truth = Truth(
        envs=list(env_names), traits=list(trait_names), G=G, E=Ce.copy(), Cg=Cg, Ce=Ce,
        h2=h2, w=w, rho=rho, rho_e=rho_e, seed=seed, location_scales=scales, location_means=mu,
        covariate_effects=gamma, covariates=cov_names, env_shares=shares, h2_by_env=h2_env,
        h2_pooled=h2_pooled, genetic_corr_env=corr, design=design, n=n, records=N, snps=snps,
        snps_dropped=dropped, freqs=[float(f) for f in np.ravel(freqs)],
        missing=missing,
    )
    gv = pd.DataFrame(U.reshape(n, L * m), index=pd.Index(ids, dtype=object, name="id"),
                      columns=pd.MultiIndex.from_product([env_names, trait_names], names=["env", "trait"]))
    return Simulation(pheno=pheno, genotypes=geno, K=Kdf, truth=truth, genetic_values=gv)
