"""The model: a design plus the covariance structures of its random terms (docs/design.md §1).

    y = X b + Z u + Σ_t Z_t u_t + e,   V = Var(y) = Σ_k θ_k V_k

θ stacks the free elements of ΣG, then of each random term's Σ_t, then of ΣE.  Each structure
belongs to a *random term* with a kernel over its units: the genetic term has kernel K over
genotypes, a random term the identity (or its relationship matrix) over the levels of its
factor, the residual term the identity over records, so that

    V[o, o'] = K[g(o), g(o')] · ΣG[a(o), a(o')] + Σ_t 𝒦_t[u_t(o), u_t(o')] · Σ_t[c_t(o), c_t(o')]
               + [r(o) = r(o')] · ΣE[b(o), b(o')].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.linalg as sla

from .data import Design
from .errors import InputError
from .diagnostics import quoted_label
from .kinship.pedigree import PedigreeRelationship
from .structures import CovStructure, make_structure, param_slices


@dataclass
class Factor:
    """The levels of a random term over the observed values (docs/design.md §1.2).

    ``levels`` are the labels of every level with a BLUP (the rows of the relationship, or the
    observed levels for independent ones); ``observed[u]`` is the position in ``levels`` of
    observed unit u, and ``unit[o]`` the observed unit of value o.  ``relationship`` is a
    dense matrix over the levels, a :class:`~hetvc.kinship.pedigree.PedigreeRelationship`
    (carried by its sparse inverse; dense only on demand), or None for independent levels."""

    name: str
    unit: np.ndarray  # (N,) observed unit of each value
    levels: list
    observed: np.ndarray  # (n_units,) position in levels of each observed unit
    relationship: object  # (n_levels, n_levels) array, a PedigreeRelationship, or None: identity

    @property
    def n_units(self) -> int:
        return len(self.observed)

    @property
    def kernel(self) -> np.ndarray | None:
        """The relationship over the levels as a dense matrix (None for the identity); a
        pedigree's is formed here, on first use."""
        rel = self.relationship
        return rel.dense(f"the relationship of {self.name!r}") if isinstance(rel, PedigreeRelationship) else rel

    @property
    def kernel_inverse(self):
        """The sparse inverse of the relationship when it is carried by one (a pedigree), else None."""
        rel = self.relationship
        return rel.inverse if isinstance(rel, PedigreeRelationship) else None

    def diagonal(self) -> np.ndarray:
        """The relationship's diagonal over the levels (ones for the identity)."""
        rel = self.relationship
        if rel is None:
            return np.ones(len(self.levels))
        return rel.diagonal if isinstance(rel, PedigreeRelationship) else np.diag(rel)

    def mean_diagonal(self) -> float:
        """Mean diagonal of the relationship over the observed levels (1 for the identity, or
        when it is not positive): the variance a level's effect has per unit of Σ."""
        kbar = float(np.mean(self.diagonal()[self.observed]))
        return kbar if kbar > 0 else 1.0

    def centred_variance(self) -> float:
        """k̄ = mean diag 𝒦 − mean 𝒦 over the observed levels (the mean diagonal when that is not
        positive): the variance among the observed levels per unit of Σ.  A pedigree's A enters
        through a sparse solve with A⁻¹, never formed."""
        w = np.zeros(len(self.levels))
        w[self.observed] = 1.0
        kbar = float(np.mean(self.diagonal()[self.observed]))
        rel = self.relationship
        if rel is None:
            kw = w
        elif isinstance(rel, PedigreeRelationship):
            import qdldl
            import scipy.sparse as sp

            kw = qdldl.Solver(sp.triu(rel.inverse, format="csc"), upper=True).solve(w)
        else:
            kw = rel @ w
        centred = kbar - float(w @ kw) / len(self.observed) ** 2
        return centred if centred > 1e-8 * abs(kbar) else (kbar if kbar > 0 else 1.0)

    def observed_kernel(self) -> np.ndarray | None:
        """The relationship between the observed units (None for the identity)."""
        kernel = self.kernel
        return None if kernel is None else kernel[np.ix_(self.observed, self.observed)]


@dataclass
class RandomTerm:
    """One covariance structure with its levels and the (unit, index) of each observed value;
    ``kernel`` is the relationship between its observed units (None for the identity: the
    residual's records, independent levels), formed on first use."""

    structure: CovStructure
    unit: np.ndarray  # (N,) unit of each observed value (genotype, level or record)
    index: np.ndarray  # (N,) row of Σ of each observed value
    factor: Factor | None = None  # the levels of a genetic or random term (None: the residual)

    @property
    def n_units(self) -> int:
        return int(self.unit.max()) + 1

    @cached_property
    def kernel(self) -> np.ndarray | None:
        return None if self.factor is None else self.factor.observed_kernel()


@dataclass
class Block:
    """One positive-definite block of ΣG or ΣE, seen through θ in scaled units.

    C̃ = D^-½ C D^-½ with D the phenotypic variances of the block's rows; ``theta_index``
    are the positions in θ of the block's free elements ``(ia, ib)`` (local indices)."""

    theta_index: np.ndarray
    ia: np.ndarray
    ib: np.ndarray
    sd: np.ndarray  # √D
    name: str  # "G[env]", "E[env]", or "G"/"E" for a single-block structure

    @property
    def dim(self) -> int:
        return len(self.sd)

    def _matrix(self, values: np.ndarray) -> np.ndarray:
        out = np.zeros((self.dim, self.dim))
        out[self.ia, self.ib] = values
        out[self.ib, self.ia] = values
        return out

    def scaled(self, theta: np.ndarray) -> np.ndarray:
        """C̃ from the full θ (also maps a step δθ to δC̃)."""
        return self._matrix(theta[self.theta_index]) / np.outer(self.sd, self.sd)

    def scaled_gradient(self, score: np.ndarray) -> np.ndarray:
        """∂ℓ/∂C̃ (symmetric, dℓ = tr(∂ℓ/∂C̃ · dC̃)) from the score ∂ℓ/∂θ."""
        halve = np.where(self.ia == self.ib, 1.0, 0.5)
        return self._matrix(score[self.theta_index] * halve) * np.outer(self.sd, self.sd)

    def unscaled_theta(self, scaled: np.ndarray) -> np.ndarray:
        """θ entries of the block from a scaled matrix C̃."""
        return (scaled * np.outer(self.sd, self.sd))[self.ia, self.ib]


@dataclass
class Model:
    """A validated design with its genetic, random and residual structures and parameter layout.

    θ stacks the free elements of ΣG, then of each random term's Σ_t (in the order given),
    then of ΣE."""

    design: Design
    genetic: CovStructure
    residual: CovStructure
    method: str = "reml"
    random: tuple = ()  # ((Factor, CovStructure), ...) the random terms beyond the genetic one

    def __post_init__(self):
        if self.method not in ("reml", "ml"):
            raise InputError(f"method must be 'reml' or 'ml', not {self.method!r}")
        self._check_cells()

    @classmethod
    def build(cls, design: Design, genetic: str, residual: str, method: str = "reml",
              random=()) -> "Model":
        """``random``: ((Factor, structure name), ...) from :func:`hetvc.random_terms.resolve_random`."""
        envs, traits = design.envs, design.traits
        return cls(
            design,
            make_structure("G", genetic, envs, traits),
            make_structure("E", residual, envs, traits),
            method,
            tuple((f, make_structure("R", name, envs, traits, prefix=f.name)) for f, name in random),
        )

    @property
    def structures(self) -> list[CovStructure]:
        """ΣG, each random term's Σ_t, ΣE: the matrices θ fills, in θ order."""
        return [self.genetic] + [s for _, s in self.random] + [self.residual]

    def _check_cells(self) -> None:
        d = self.design
        for s in self.structures:
            if not s.per_environment:
                continue
            seen = np.zeros((len(d.envs), len(d.traits)), dtype=int)
            np.add.at(seen, (d.env, d.trait), 1)
            if (seen == 0).any():
                l, i = np.argwhere(seen == 0)[0]
                what = {"G": "genetic", "E": "residual"}.get(s.prefix)
                use = (f"{what}='homogeneous'" if what else
                       f"hetvc.Random({s.prefix!r}, structure='homogeneous')")
                said = f"{what}={s.name!r}" if what else f"random term {s.prefix!r} ({s.name})"
                raise InputError(
                    f"trait {d.traits[i]!r} has no values in environment {quoted_label(d.envs[l])}, so "
                    f"{said} cannot estimate its variance there; drop that trait or use {use}"
                )

    # -- parameter layout -------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return sum(s.n_params for s in self.structures)

    def param_names(self) -> list[str]:
        return [n for s in self.structures for n in s.param_names()]

    @cached_property
    def slices(self) -> list[slice]:
        """Where each structure's parameters sit in θ (:attr:`structures` order)."""
        return param_slices(self.structures)

    def matrices(self, theta: np.ndarray) -> list[np.ndarray]:
        """[ΣG, Σ_t …, ΣE] from θ."""
        return [s.matrix(theta[sl]) for s, sl in zip(self.structures, self.slices)]

    def join(self, *matrices) -> np.ndarray:
        """θ from [ΣG, Σ_t …, ΣE] (the inverse of :meth:`matrices`)."""
        return np.concatenate([s.theta(M) for s, M in zip(self.structures, matrices)])

    def elements(self):
        """(term number, a, b) of every matrix element an engine differentiates ℓ by (terms as
        in :meth:`terms`); the parameters θ themselves when every structure is linear."""
        return [(t, a, b) for t, s in enumerate(self.structures) for a, b in s.pairs]

    @property
    def linear(self) -> bool:
        """Every structure is linear in θ (θ are the elements)."""
        return all(s.linear for s in self.structures)

    def param_scales(self) -> np.ndarray:
        """The phenotypic scale of every parameter (√(v_a v_b) for an element (a, b))."""
        return np.concatenate([s.param_scale(v) for s, v in zip(self.structures, self.scales())])

    def jacobian(self, theta: np.ndarray) -> np.ndarray:
        """∂σ/∂θ of the elements by the parameters (block diagonal over the structures)."""
        return sla.block_diag(*[s.jacobian(theta[sl]) for s, sl in zip(self.structures, self.slices)])

    def to_parameters(self, theta: np.ndarray, ev):
        """An engine's evaluation by the elements, as one by θ (the chain rule, exact for the
        AI too: ∂V/∂θ_j = Σ_e J_ej V_e, so AI_θ = J'·AI_σ·J and score_θ = J'·score_σ), with
        ``curvature`` = Σ_e s_e ∂²σ_e/∂θ∂θ', the part of ℓ's Hessian the AI leaves out."""
        if self.linear or ev.score is None:
            return ev
        J = self.jacobian(theta)
        parts, start = [], 0
        for s, sl in zip(self.structures, self.slices):
            part = s.score_curvature(theta[sl], ev.score[start:start + len(s.pairs)])
            parts.append(np.zeros((s.n_params, s.n_params)) if part is None else part)
            start += len(s.pairs)
        ev.curvature = sla.block_diag(*parts) if any(p.any() for p in parts) else None
        ev.score = J.T @ ev.score
        ev.ai = J.T @ ev.ai @ J
        return ev

    def free_params(self) -> np.ndarray:
        """θ positions without a constraint (the loadings of a factor-analytic structure)."""
        return np.concatenate([sl.start + s.free_params() for s, sl in zip(self.structures, self.slices)]).astype(int)

    # -- random terms -------------------------------------------------------------------
    def genetic_factor(self) -> Factor:
        """The genetic term's levels: every genotype in K."""
        d = self.design
        observed, unit = np.unique(d.geno, return_inverse=True)
        return Factor("genetic", unit, list(d.ids), observed, d.relationship)

    def terms(self) -> list[RandomTerm]:
        """The genetic term (kernel K over observed genotypes), the random terms, the residual."""
        d = self.design
        m = len(d.traits)
        out = []
        for factor, s in [(self.genetic_factor(), self.genetic)] + list(self.random):
            out.append(RandomTerm(s, factor.unit, s.index(d.env, d.trait, m), factor))
        _, record_unit = np.unique(d.record, return_inverse=True)
        out.append(RandomTerm(self.residual, record_unit, self.residual.index(d.env, d.trait, m)))
        return out

    # -- scales, feasibility, start ---------------------------------------------------------
    def scales(self) -> list[np.ndarray]:
        """Per-row phenotypic variance of each matrix (ΣG, Σ_t …, ΣE): the unit of its rows."""
        return self._scales

    @cached_property
    def _scales(self) -> list[np.ndarray]:
        cell, trait = self.design.phenotypic_variances()
        return [cell.ravel() if s.per_environment else trait for s in self.structures]

    def blocks(self) -> list[Block]:
        """Every positive-definite block of ΣG, the Σ_t and ΣE, with its θ positions."""
        return self._blocks

    @cached_property
    def _blocks(self) -> list[Block]:
        out = []
        for s, sl, scale in zip(self.structures, self.slices, self.scales()):
            for local, ia, ib, rows, name, *per in s.constraints():
                unit = scale[rows] / (scale[per[0]] if per else 1.0)
                out.append(Block(theta_index=sl.start + local, ia=ia, ib=ib, sd=np.sqrt(unit), name=name))
        return out

    def to_cholesky(self, theta: np.ndarray) -> np.ndarray:
        """φ: per block, the Cholesky factor of C̃ = LL' in θ order, log L_aa on its diagonal;
        every real φ is a positive definite ΣG and ΣE (:meth:`from_cholesky`)."""
        phi = np.array(theta, dtype=float)  # free parameters as they are
        for blk in self.blocks():
            low = np.linalg.cholesky(blk.scaled(theta))
            phi[blk.theta_index] = np.where(blk.ia == blk.ib, np.log(np.diag(low)[blk.ia]), low[blk.ia, blk.ib])
        return phi

    def from_cholesky(self, phi: np.ndarray) -> np.ndarray:
        """θ from φ (complex φ allowed, for complex-step derivatives)."""
        theta = np.array(phi, dtype=np.result_type(phi.dtype, float))  # free parameters as they are
        for blk in self.blocks():
            low = np.zeros((blk.dim, blk.dim), dtype=theta.dtype)
            v = phi[blk.theta_index]
            diag = blk.ia == blk.ib
            entries = v.copy()
            entries[diag] = np.exp(v[diag])
            low[blk.ia, blk.ib] = entries
            theta[blk.theta_index] = ((low @ low.T) * np.outer(blk.sd, blk.sd))[blk.ia, blk.ib]
        return theta

    def project(self, theta: np.ndarray, floor: float) -> np.ndarray:
        """θ with every block's scaled eigenvalues clipped at ``floor`` (the nearest point in the
        scaled metric; free parameters unchanged)."""
        out = np.array(theta, dtype=float)
        for blk in self.blocks():
            vals, vecs = np.linalg.eigh(blk.scaled(out))
            if vals[0] >= floor:
                continue
            clipped = (vecs * np.maximum(vals, floor)) @ vecs.T
            out[blk.theta_index] = blk.unscaled_theta((clipped + clipped.T) / 2)
        return out

    def start(self) -> np.ndarray:
        """Default start: each cell's phenotypic variance shared equally by the T terms (the
        genetic term, the random terms, the residual); covariances start at zero (a
        factor-analytic Σ at correlation ½, so that no factor starts at zero).

        A term with a relationship matrix gets its share divided by the mean diagonal of that
        matrix over the observed levels, so that it explains its share whatever the scale."""
        kbars = [self.genetic_factor().mean_diagonal()] + [f.mean_diagonal() for f, _ in self.random] + [1.0]
        share = 1.0 / len(kbars)
        out = []
        for s, kbar, scale in zip(self.structures, kbars, self.scales()):
            M = np.diag(share * scale / kbar)
            if not s.linear:  # a factor-analytic Σ starts with correlation ½ between every two rows
                sd = np.sqrt(np.diag(M))
                M = 0.5 * (np.outer(sd, sd) + M)
            out.append(M)
        return self.join(*out)
