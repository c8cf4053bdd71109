"""The model: a design plus a genetic and a residual covariance structure (docs/design.md §1).

    y = X b + Z u + e,   V = Var(y) = Σ_k θ_k V_k

θ stacks the free elements of ΣG then of ΣE.  Each structure is a *random term* with a
kernel over its units: the genetic term has kernel K over genotypes, the residual term the
identity over records, so that

    V[o, o'] = K[g(o), g(o')] · ΣG[a(o), a(o')] + [r(o) = r(o')] · ΣE[b(o), b(o')].
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from .data import Design
from .errors import InputError
from .diagnostics import quoted_label
from .structures import CovStructure, make_structure


@dataclass
class RandomTerm:
    """One covariance structure with its kernel and the (unit, index) of each observed value."""

    structure: CovStructure
    unit: np.ndarray  # (N,) unit of each observed value (genotype or record)
    index: np.ndarray  # (N,) row of Σ of each observed value
    kernel: np.ndarray | None  # (n_units, n_units), None for the identity

    @property
    def n_units(self) -> int:
        return int(self.unit.max()) + 1


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
    """A validated design with its genetic and residual structures and parameter layout."""

    design: Design
    genetic: CovStructure
    residual: CovStructure
    method: str = "reml"

    def __post_init__(self):
        if self.method not in ("reml", "ml"):
            raise InputError(f"method must be 'reml' or 'ml', not {self.method!r}")
        self._check_cells()

    @classmethod
    def build(cls, design: Design, genetic: str, residual: str, method: str = "reml") -> "Model":
        return cls(
            design,
            make_structure("G", genetic, design.envs, design.traits),
            make_structure("E", residual, design.envs, design.traits),
            method,
        )

    def _check_cells(self) -> None:
        d = self.design
        for s in (self.genetic, self.residual):
            if not s.env_specific:
                continue
            seen = np.zeros((len(d.envs), len(d.traits)), dtype=int)
            np.add.at(seen, (d.env, d.trait), 1)
            if (seen == 0).any():
                l, i = np.argwhere(seen == 0)[0]
                what = "genetic" if s.prefix == "G" else "residual"
                raise InputError(
                    f"trait {d.traits[i]!r} has no values in environment {quoted_label(d.envs[l])}, so "
                    f"{what}={s.name!r} cannot estimate its variance there; drop that "
                    f"trait or use {what}='homogeneous'"
                )

    # -- parameter layout -------------------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.genetic.n_params + self.residual.n_params

    def param_names(self) -> list[str]:
        return self.genetic.param_names() + self.residual.param_names()

    def split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(ΣG, ΣE) from θ."""
        k = self.genetic.n_params
        return self.genetic.matrix(theta[:k]), self.residual.matrix(theta[k:])

    def join(self, G: np.ndarray, E: np.ndarray) -> np.ndarray:
        return np.concatenate([self.genetic.theta(G), self.residual.theta(E)])

    def params(self):
        """(term number, a, b) of every parameter, in θ order."""
        return [(0, a, b) for a, b in self.genetic.pairs] + [
            (1, a, b) for a, b in self.residual.pairs
        ]

    # -- random terms -------------------------------------------------------------------
    def terms(self) -> tuple[RandomTerm, RandomTerm]:
        """The genetic term (kernel K over observed genotypes) and the residual term."""
        d = self.design
        m = len(d.traits)
        observed_genos, geno_unit = np.unique(d.geno, return_inverse=True)
        _, record_unit = np.unique(d.record, return_inverse=True)
        genetic = RandomTerm(
            self.genetic,
            geno_unit,
            self.genetic.index(d.env, d.trait, m),
            d.K[np.ix_(observed_genos, observed_genos)],
        )
        residual = RandomTerm(self.residual, record_unit, self.residual.index(d.env, d.trait, m), None)
        return genetic, residual

    # -- scales, feasibility, start ---------------------------------------------------------
    def scales(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row phenotypic variance of ΣG and ΣE: the unit of each matrix row."""
        return self._scales

    @cached_property
    def _scales(self) -> tuple[np.ndarray, np.ndarray]:
        cell, trait = self.design.phenotypic_variances()
        return tuple(
            cell.ravel() if s.env_specific else trait for s in (self.genetic, self.residual)
        )

    def blocks(self) -> list[Block]:
        """Every positive-definite block of ΣG and ΣE, with its θ positions."""
        return self._blocks

    @cached_property
    def _blocks(self) -> list[Block]:
        out, offset = [], 0
        for s, scale in zip((self.genetic, self.residual), self.scales()):
            pairs = np.array(s.pairs)
            for blk in s.blocks:
                local = {a: i for i, a in enumerate(blk)}
                k = np.nonzero(np.isin(pairs[:, 0], blk))[0]
                out.append(Block(
                    theta_index=offset + k,
                    ia=np.array([local[a] for a in pairs[k, 0]]),
                    ib=np.array([local[b] for b in pairs[k, 1]]),
                    sd=np.sqrt(scale[blk]),
                    name=s.block_name(blk),
                ))
            offset += s.n_params
        return out

    def to_cholesky(self, theta: np.ndarray) -> np.ndarray:
        """φ: per block, the Cholesky factor of C̃ = LL' in θ order, log L_aa on its diagonal;
        every real φ is a positive definite ΣG and ΣE (:meth:`from_cholesky`)."""
        phi = np.empty(self.n_params)
        for blk in self.blocks():
            low = np.linalg.cholesky(blk.scaled(theta))
            phi[blk.theta_index] = np.where(blk.ia == blk.ib, np.log(np.diag(low)[blk.ia]), low[blk.ia, blk.ib])
        return phi

    def from_cholesky(self, phi: np.ndarray) -> np.ndarray:
        """θ from φ (complex φ allowed, for complex-step derivatives)."""
        theta = np.empty(self.n_params, dtype=np.result_type(phi.dtype, float))
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
        """θ with every block's scaled eigenvalues clipped at ``floor``."""
        G, E = self.split(theta)
        sg, se = self.scales()
        return self.join(self.genetic.project(G, sg, floor), self.residual.project(E, se, floor))

    def start(self) -> np.ndarray:
        """Default start: half of each cell's phenotypic variance to ΣG and half to ΣE.

        The genetic half is divided by the mean diagonal of K so that it explains half of the
        variance whatever the scale of K.  Covariances start at zero.
        """
        d = self.design
        kbar = float(np.mean(np.diag(d.K)[np.unique(d.geno)]))
        kbar = kbar if kbar > 0 else 1.0
        sg, se = self.scales()
        return self.join(np.diag(0.5 * sg / kbar), np.diag(0.5 * se))
