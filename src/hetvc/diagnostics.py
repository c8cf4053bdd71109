"""Checks that keep hetvc from printing what the data cannot support.

Before the fit (:func:`check_design`, a one-line :class:`~hetvc.errors.InputError`): for every
environment l and trait t with values, let r_lt be its records, n_lt its distinct genotypes,
m_l the traits observed in l, and k^G_lt, k^E_lt the covariance parameters of an
environment-specific genetic / residual structure that involve (l, t) and no other environment
(:meth:`CovStructure.cell_parameters <hetvc.structures.CovStructure.cell_parameters>`: the
variance of t in l and its covariances with the other m_l − 1 traits there, m_l; 1 for
``diagonal``; 0 for a ``homogeneous`` structure).  The data are refused when

* r_lt = 1 (any structure): the mean of (l, t) absorbs the record, which then carries no
  information on any variance while env-specific estimates run away;
* the r_lt values are all equal (any structure);
* n_lt < 1 + k^G_lt  or  r_lt < 1 + k^G_lt + k^E_lt: fewer genotypes (records) than the
  parameters that live only there plus the mean.  (So replicates of a single genotype pass
  where no genetic parameter lives only in l: they inform the residual; a note says so.)

The way out named: drop or merge the environment, or the ``homogeneous`` structure that the
cell passes with.

Notes on the fit (:func:`design_notes`): environments whose records are identical (the same
genotypes with the same values); an environment × trait with a single genotype; a fixed covariate whose nonzero records all belong to one or
two genotypes (it absorbs their genetic values); k ≥ n_g/2 covariance parameters for n_g
phenotyped genotypes (compare by AICc and BIC).

After the fit (:func:`runaway`): a diagonal element of ΣG or ΣE above ``RUNAWAY`` × the
phenotypic variance v_a of its row (for ΣG, v_a / k̄ with k̄ = mean diag K − mean K over the
phenotyped genotypes, the genotype variance that environment means do not absorb), a
non-finite θ, AI or variance SE: the fit is not converged (status ``"runaway"``).
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

RUNAWAY = 1e3  # a variance above this many phenotypic variances has run away
NESTED_GENOTYPES = 2  # a covariate nonzero in at most this many genotypes is nested in them


def _cell_counts(d):
    L, m = len(d.envs), len(d.traits)
    records = np.zeros((L, m), dtype=int)
    np.add.at(records, (d.env, d.trait), 1)
    cells = np.unique(np.column_stack([d.env, d.trait, d.geno]), axis=0)
    genotypes = np.zeros((L, m), dtype=int)
    np.add.at(genotypes, (cells[:, 0], cells[:, 1]), 1)
    return records, genotypes


def _where(d, l) -> str:
    return "the data" if len(d.envs) == 1 else f"environment {quoted_label(d.envs[l])}"


def quoted_label(label) -> str:
    """A label as the user wrote it: 'E1' for text, 1 for a number (not np.int64(1))."""
    return repr(label.item() if hasattr(label, "item") else label)


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def check_design(model) -> None:
    """Refuse (InputError) an environment × trait that the structures cannot be estimated from
    (rules in the module docstring)."""
    d = model.design
    records, genotypes = _cell_counts(d)
    g_env, e_env = model.genetic.per_environment, model.residual.per_environment
    for l in range(len(d.envs)):
        m_l = int((records[l] > 0).sum())
        for i in range(len(d.traits)):
            r, n = int(records[l, i]), int(genotypes[l, i])
            if r == 0:
                continue  # Model._check_cells refuses it for env-specific structures
            trait, where = d.traits[i], _where(d, l)
            sel = (d.env == l) & (d.trait == i)
            y = d.y[sel]
            if r == 1:
                geno = d.ids[int(d.geno[sel][0])]
                if len(d.envs) == 1:
                    raise InputError(f"trait {trait!r} has a single value (genotype {quoted_label(geno)}); "
                                     "it carries no information on any variance: drop that trait")
                raise InputError(
                    f"{where} has a single record with trait {trait!r} (genotype {quoted_label(geno)}): the "
                    "environment's mean absorbs it, so it carries no information on any variance "
                    f"and distorts the estimates of the others; drop environment {quoted_label(d.envs[l])} "
                    "or merge it with another environment")
            if np.all(y == y[0]):
                hint = ("drop that trait" if len(d.envs) == 1 else
                        f"drop environment {quoted_label(d.envs[l])} for it (set its values missing there) or drop the trait")
                raise InputError(f"trait {trait!r} has no variation in {where} (all {r} values are "
                                 f"{_fmt(y[0])}): no variance can be estimated from it; {hint}")
            k_g = model.genetic.cell_parameters(m_l)
            k_e = model.residual.cell_parameters(m_l) + sum(s.cell_parameters(m_l) for _, s in model.random)
            if n >= 1 + k_g and r >= 1 + k_g + k_e:
                continue
            alt = ""
            for gg, ee in ((g_env, False), (False, e_env), (False, False)):
                kg, ke = k_g * gg, k_e * ee
                if (gg, ee) != (g_env, e_env) and n >= 1 + kg and r >= 1 + kg + ke:
                    alt = " and ".join(["genetic='homogeneous'"] * (g_env and not gg)
                                       + ["residual='homogeneous'"] * (e_env and not ee))
                    break
            ways = (f"drop environment {quoted_label(d.envs[l])}, merge it with another environment, or use {alt}"
                    if alt else f"drop environment {quoted_label(d.envs[l])} or merge it with another environment")
            asked = [f"genetic={model.genetic.name!r}"] * g_env + [f"residual={model.residual.name!r}"] * e_env
            need = (f"{1 + k_g} genotypes" if n < 1 + k_g else f"{1 + k_g + k_e} records")
            raise InputError(
                f"{where} has {r} record(s) of {n} genotype(s) with trait {trait!r}, too few for "
                f"{' and '.join(asked)}, which estimate {k_g + k_e} parameter(s) involving it there "
                f"(needs at least {need}: one per parameter plus one for the mean); {ways}")


# -- notes ------------------------------------------------------------------------------------------
def design_notes(model) -> list[str]:
    """Notes on the data that the fit goes on with: duplicated environments, covariates nested
    in a genotype, many parameters for few genotypes."""
    d = model.design
    return (_duplicated_environments(d) + _single_genotype(d) + _nested_covariates(d)
            + _parameter_count(model))


def _single_genotype(d) -> list[str]:
    if len(d.envs) < 2:
        return []
    records, genotypes = _cell_counts(d)
    out = []
    for l, i in np.argwhere((genotypes == 1) & (records >= 2)):
        out.append(f"{_where(d, l)} holds a single genotype with trait {d.traits[i]!r} "
                   f"({records[l, i]} records): its mean absorbs that genotype's genetic value, and "
                   "only the replicates inform the residual variance")
    return out


def _signature(d, l, i):
    sel = (d.env == l) & (d.trait == i)
    if sel.sum() < 2:
        return None
    g, y = d.geno[sel], d.y[sel]
    order = np.lexsort((y, g))
    return (int(sel.sum()), g[order].tobytes(), y[order].tobytes())


def _names(labels) -> str:
    q = [quoted_label(v) for v in labels]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " and " + q[-1]


def _copies(keys: list) -> list[list[int]]:
    """Positions of equal keys (None skipped), for every key that occurs more than once."""
    groups = {}
    for pos, key in enumerate(keys):
        if key is not None:
            groups.setdefault(key, []).append(pos)
    return [g for g in groups.values() if len(g) > 1]


def _duplicated_environments(d) -> list[str]:
    L, m = len(d.envs), len(d.traits)
    if L < 2:
        return []
    sig = [[_signature(d, l, i) for i in range(m)] for l in range(L)]
    notes = []
    whole = _copies([tuple(s) if any(x is not None for x in s) else None for s in sig])
    for envs in whole:
        n = max(s[0] for s in sig[envs[0]] if s is not None)
        notes.append(
            f"environments {_names(d.envs[l] for l in envs)} hold identical records (the same "
            f"genotypes with the same values of every trait, {n} per trait): one environment "
            "entered twice? Drop the copies: they count the same data again")
    for i in range(m):
        for envs in _copies([s[i] for s in sig]):
            if not any(set(envs) <= set(w) for w in whole):
                notes.append(
                    f"trait {d.traits[i]!r} has identical values (the same genotypes, the same "
                    f"{sig[envs[0]][i][0]} values) in environments {_names(d.envs[l] for l in envs)}: "
                    "entered twice? Set the copies missing")
    return notes


def _nested_covariates(d) -> list[str]:
    notes, seen = [], set()
    for k, name in enumerate(d.x_names):
        if name.startswith("mu["):
            continue
        base = name.rsplit("[", 1)[0]
        nz = d.X[:, k] != 0
        if base in seen or not nz.any():
            continue
        trait = d.trait[nz][0]
        genos = np.unique(d.geno[nz])
        total = len(np.unique(d.geno[d.trait == trait]))
        if len(genos) <= NESTED_GENOTYPES and len(genos) < total:
            seen.add(base)
            notes.append(
                f"fixed effect {base!r} is nonzero only in records of genotype(s) "
                f"{_names(d.ids[g] for g in genos)}: it absorbs their genetic value (their records "
                "tell nothing about the genetic variances); drop it unless that is intended")
    return notes


def _parameter_count(model) -> list[str]:
    n_g = len(np.unique(model.design.geno))
    k = model.n_params
    if 2 * k < n_g:
        return []
    return [f"{k} covariance parameters from {n_g} phenotyped genotypes: the estimates are weakly "
            "determined and AIC's penalty is too small for so few; compare models by AICc and BIC"]


# -- after the fit ------------------------------------------------------------------------------------
def kinship_variance(model) -> float:
    """k̄ = mean diag K − mean K over the phenotyped genotypes (mean diag K if that is ≤ 0);
    a pedigree's A through A⁻¹ (:meth:`hetvc.model.Factor.centred_variance`), never formed."""
    return model.genetic_factor().centred_variance()


def unidentified(model, ai: np.ndarray) -> np.ndarray:
    """Parameters the data hold (almost) no information on: AI_kk·v_k² below 1e-10 of the
    largest, with v_k the phenotypic scale of θ_k; or a non-finite AI row."""
    info = np.abs(np.diag(ai)) * model.param_scales() ** 2
    bad = ~np.all(np.isfinite(ai), axis=1)
    top = np.max(info[~bad]) if (~bad).any() else 0.0
    return bad | (info <= 1e-10 * top)


def runaway(model, theta: np.ndarray, ai: np.ndarray, ai_inv: np.ndarray, skip=None) -> str:
    """'' or a message naming the variance that ran away (rules in the module docstring);
    ``skip``: parameters known to be unidentified (their SEs are not expected)."""
    names = model.param_names()
    if not np.all(np.isfinite(theta)):
        k = int(np.nonzero(~np.isfinite(theta))[0][0])
        return f"{names[k]} is not finite ({theta[k]}): the estimate ran away"
    kbars = [kinship_variance(model)] + [f.mean_diagonal() for f, _ in model.random] + [1.0]
    worst = None
    for t, (s, M, scale) in enumerate(zip(model.structures, model.matrices(theta), model.scales())):
        for a in range(s.dim):
            v = scale[a] / kbars[t]
            ratio = M[a, a] / v
            if ratio > RUNAWAY and (worst is None or ratio > worst[1]):
                worst = (t, a, ratio, v, M[a, a])
    if worst is not None:
        t, a, ratio, v, value = worst
        kernel = "K" if t == 0 else f"the relationship of {model.structures[t].prefix!r}"
        ref = "phenotypic variance of its cell" + (f" over the mean variance of {kernel}" if kbars[t] != 1.0 else "")
        return (f"{model.structures[t].variance_name(a)} ran away to {value:.3g}, {ratio:.2g} times the {ref} "
                f"({v:.3g}): the data cannot estimate it; simplify the structure or check that environment")
    if not np.all(np.isfinite(ai)):
        return "the information matrix (AI) is not finite at the estimate: it ran away"
    skip = np.zeros(len(theta), bool) if skip is None else skip
    diag = np.diag(ai_inv)
    for s, sl in zip(model.structures, model.slices):
        for k in sl.start + s.variance_params():
            if not skip[k] and not np.isfinite(diag[k]):
                return f"the SE of {names[k]} is not finite: the estimate ran away"
    return ""
