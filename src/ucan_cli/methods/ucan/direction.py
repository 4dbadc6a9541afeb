"""U-CAN with direction units (``--unit direction``, ``--method ucan-direction``; SPEC 3b): the
second moments of each module's input in, an edit of A out, with a verdict on the same footing as
the other units.

``select_directions`` solves every module (``directions.generalized_eigh`` on S^f against S^r +
delta I, the noise level lambda0 from the retain halves; ``decompose``, done once per statistics
object and shrinkage, since neither depends on the gate or the strength), gives each direction its
factor under ``--gate`` and ``--strength``, and counts, across modules, the directions whose lambda exceeds
their module's lambda0 (``n_above``) and how many directions of the reverse half-vs-half problem
do (``n0_above``, what noise alone gives). The verdict: ``noise`` when no direction is above
lambda0 (nothing to do, exit 4, whatever the gate), ``weak`` when no more directions stand above
it than noise gives (declined unless ``--accept-weak``), else ``separable``; ``dead`` when a set
has no scoped token. ``edit_directions`` applies A' = A + (A U) diag(s - 1) V^T per module in
float64 and casts back to A's stored dtype; B, the lora bias and the config stay bit-identical,
and so does A of a module whose factors are all 1.

Direction edits are not per-unit scalings of a fixed basis, so nothing composes in the ledger: the
edit carries no factors (``Edit.factors`` is empty), the lineage's output/rank factors are carried
unchanged, and the floor rule does not apply. Module sizes are d_in (a module has d_in directions).
Pure: statistics and an adapter in, an ``Edit`` out.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.base import Edit, Verdict
from ucan_cli.methods.ucan import directions as dmath
from ucan_cli.methods.ucan.verdict import NOISE_SENTENCE


@dataclass
class ModuleDirections:
    """One module's solve: the eigen-solution, lambda0, the reverse noise eigenvalues, factors."""

    name: str
    solution: dmath.Directions | None  # None: the module is dead (a set without scoped tokens)
    lambda0: float
    reverse: np.ndarray
    s: np.ndarray

    def row(self) -> dict[str, Any]:
        """The report's per-module row: directions edited (s < 0.999), max lambda, lambda0, sum(1 - s)."""
        lam = self.solution.lam if self.solution is not None else np.zeros(0)
        return {
            "name": self.name,
            "directions": int(self.s.shape[0]),
            "n_edited": int((self.s < dmath.EDITED_BELOW).sum()),
            "n_above_lambda0": int((lam > self.lambda0).sum()) if self.solution is not None else 0,
            "max_lambda": _finite(float(lam[0])) if lam.size else None,
            "lambda0": _finite(self.lambda0) if self.solution is not None else None,
            "delta": _finite(self.solution.delta) if self.solution is not None else None,
            "min_factor": float(self.s.min()) if self.s.size else 1.0,
            "sum_1_minus_s": float((1.0 - self.s).sum()),
        }


@dataclass
class DirectionResult:
    """What ``select_directions`` computed: the modules' solves and the counts the verdict reads."""

    params: Any
    modules: list[ModuleDirections]
    n_above: int
    n0_above: int

    def summary(self) -> dict[str, Any]:
        """JSON-safe: the keys every method's summary has (k, n_attenuated, n_at_most_half,
        budget_sum_1_minus_s) and the directions' own, with the per-module table."""
        s = np.concatenate([m.s for m in self.modules]) if self.modules else np.ones(0)
        live = [m for m in self.modules if m.solution is not None]
        ratios = [float(m.solution.lam[0]) / m.lambda0 for m in live if m.solution.lam.size and m.lambda0 > 0]
        return {
            "n_units": int(s.shape[0]),
            "n_live": int(sum(m.s.shape[0] for m in live)),
            "n_modules_live": len(live),
            "n_above_lambda0": int(self.n_above),
            "n_noise_above_lambda0": int(self.n0_above),
            "max_lambda_over_lambda0": _finite(max(ratios)) if ratios else None,
            "n_eligible": int(self.n_above),
            "k": int((s < dmath.EDITED_BELOW).sum()),
            "n_attenuated": int((s < 1.0).sum()),
            "n_at_most_half": int((s <= 0.5).sum()),
            "budget_sum_1_minus_s": float((1.0 - s).sum()),
            "gate": self.params.gate,
            "strength": float(self.params.strength),
            "shrinkage": float(self.params.shrinkage),
            "directions": [m.row() for m in self.modules],
        }


def _finite(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def decompose(forget, retain, half_a, half_b, shrinkage: float):
    """The strength-independent part of one module's solve from its four moments (means, d_in x
    d_in): (the generalized eigen solution, lambda0, the reverse noise eigenvalues), or None when
    a set has no scoped token (the module is dead)."""
    if not (np.any(forget) and np.any(retain) and np.any(half_a) and np.any(half_b)):
        return None
    delta = dmath.ridge(retain, shrinkage)
    solution = dmath.generalized_eigh(forget, retain, delta)
    lambda0, reverse = dmath.noise_level(half_a, half_b, delta)
    return solution, lambda0, reverse


def _module(name: str, d: int, decomposed, params) -> ModuleDirections:
    """A module's ``ModuleDirections`` from its ``decompose`` result under ``params``' gate and strength."""
    if decomposed is None:
        return ModuleDirections(name, None, 0.0, np.zeros(0), np.ones(d))
    solution, lambda0, reverse = decomposed
    s = dmath.factors(solution.lam, strength=params.strength, gate=params.gate, lambda0=lambda0)
    return ModuleDirections(name, solution, lambda0, reverse, s)


def solve_module(name: str, forget, retain, half_a, half_b, params) -> ModuleDirections:
    """One module from its four moments (means, d_in x d_in) under ``params``."""
    return _module(name, retain.shape[0], decompose(forget, retain, half_a, half_b, params.shrinkage), params)


def _decomposed(stats, m: int, shrinkage: float):
    """Module ``m``'s ``decompose`` result, computed once per statistics object and shrinkage
    (``MomentStatistics.solved``)."""
    key = (m, float(shrinkage))
    if key not in stats.solved:
        stats.solved[key] = decompose(*(getattr(stats, n).mean(m) for n in ("forget", "retain", "half_a", "half_b")), shrinkage)
    return stats.solved[key]


def select_directions(stats, params) -> tuple[DirectionResult, Verdict]:
    """Every module's solve, the counts and the verdict (see the module docstring).

    Raises:
        NothingToDo: no direction stands above its module's lambda0 (or no module is live).
    """
    modules = [
        _module(name, stats.module_sizes[m], _decomposed(stats, m, params.shrinkage), params)
        for m, name in enumerate(stats.module_names)
    ]
    live = [m for m in modules if m.solution is not None]
    n_above = sum(int((m.solution.lam > m.lambda0).sum()) for m in live)
    n0_above = sum(int((m.reverse > m.lambda0).sum()) for m in live)
    result = DirectionResult(params, modules, n_above, n0_above)
    if not live:
        raise NothingToDo("nothing to do: no module saw scoped tokens in every set (forget, retain and both halves)", result.summary(), result)
    if n_above == 0:
        best = max(live, key=lambda m: float(m.solution.lam[0]) - m.lambda0)
        raise NothingToDo(
            f"nothing to do: {NOISE_SENTENCE}. No direction's lambda exceeds its module's lambda0 (the retain "
            f"halves' level); closest: {best.name}, max lambda {best.solution.lam[0]:.4g} vs lambda0 {best.lambda0:.4g}",
            result.summary(), result,
        )
    if n_above <= n0_above:
        sentence = (
            f"the contrast is weak: {n_above} directions have lambda above their module's lambda0, where the "
            f"noise reference puts {n0_above} above it; the edit may be noise"
        )
        from ucan_cli.methods.ucan.verdict import decline_message

        return result, Verdict("weak", sentence, decline_message({"sentence": sentence}))
    return result, Verdict(
        "separable", f"the forget set is separable from the retain set along {n_above} input directions "
        f"(noise alone: {n0_above})",
    )


def edit_directions(source, stats, params) -> Edit:
    """``select_directions``, then A' per module (see the module docstring)."""
    import torch

    from ucan_cli.methods.ucan.edit import ModuleChange, a_core
    from ucan_cli.errors import UcanRuntimeError

    t0 = time.perf_counter()
    result, verdict = select_directions(stats, params)
    t1 = time.perf_counter()
    by_name = {m.name: m for m in result.modules}
    replacements: dict[str, Any] = {}
    changes = []
    for module in source.modules:
        solved = by_name[module.name]
        s = solved.s
        c = abs(module.scaling)
        b64 = module.B.to(torch.float64)
        before = c * float(torch.linalg.matrix_norm(b64 @ a_core(module.A).T))
        after, delta = before, 0.0
        if solved.solution is not None and np.any(s != 1.0):
            a_new = dmath.edit_a(module.A.to(torch.float64).numpy(), solved.solution, s)
            stored = torch.from_numpy(a_new).to(module.A.dtype)
            if not torch.isfinite(stored).all():
                raise UcanRuntimeError(f"{module.name}: the edit produced non-finite values in lora_A")
            replacements[module.key_A] = stored
            a_stored = stored.to(torch.float64)  # rounding included
            after = c * float(torch.linalg.matrix_norm(b64 @ a_core(a_stored).T))
            delta = c * float(torch.linalg.matrix_norm(b64 @ a_core(a_stored - module.A.to(torch.float64)).T))
        changes.append(ModuleChange(
            name=module.name, n_units=int(s.shape[0]), n_edited=int((s < dmath.EDITED_BELOW).sum()),
            n_at_most_half=int((s <= 0.5).sum()), min_factor=float(s.min()) if s.size else 1.0,
            sum_1_minus_s=float((1.0 - s).sum()), dw_norm_before=before, dw_norm_after=after, delta_norm=delta,
            rel_norm_change=(after - before) / before if before > 0 else 0.0,
            rel_delta=delta / before if before > 0 else 0.0, bias_scaled=False,
        ))
    edited = source.with_tensors(replacements) if replacements else source
    timings = {"select": t1 - t0, "edit": time.perf_counter() - t1}
    return Edit(edited, {}, changes, result.summary(), verdict, result, timings)


__all__ = ["DirectionResult", "ModuleDirections", "decompose", "edit_directions", "select_directions", "solve_module"]
