"""Selective pruning of LoRA output units by Taylor importance (``--method prune``).

The selective-pruning family (Pochinkov & Schoots 2024, arXiv 2403.01267: prune the units whose
importance on the forget set is large relative to the retain set), with the Taylor importance
|a dL/da| of ``importance.py`` on the LoRA branch's output units:

1. I_f and I_r: the importance of every output unit on the forget set and on the retain set
   (one forward and one backward over each; ``--prune-score forget`` skips the retain set).
2. Live units: those whose lora_B row or lora bias entry is not all zero (a unit an earlier edit
   already zeroed contributes nothing and cannot be pruned again).
3. The score: each set's importance divided by its mean over the live units (so ``eps`` is a
   share of the average unit's retain importance, and the sets' sizes cancel), then
   score = I_f' / (I_r' + eps) (``ratio``, the default) or score = I_f' (``forget``). With eps
   -> 0 the ranking is that of I_f / I_r; eps keeps units the retain set barely uses from
   winning on a tiny forget importance.
4. k = ceil(``--prune-ratio`` x live units), or ``--prune-count``; the k live units with the
   highest score among those with I_f > 0 are pruned (ties: the lower flat index first).
5. Factor 0 for the pruned units, 1 elsewhere, applied by U-CAN's step 6
   (``ucan_cli.methods.ucan.edit.apply_factors``): each pruned unit's row of B (and its lora
   bias entry) becomes exactly 0, every other tensor is the input's own object, byte for byte.

The factors go to the ledger like U-CAN's (they compose onto the lineage's cumulative factors;
a pruned unit's cumulative factor is 0). Deterministic: ``--seed`` only seeds the flow's
``--max-samples`` draws. ``choose`` (steps 2-5 without the model) is pure NumPy.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.base import MODEL, Edit, Method, ModelInputs, Verdict
from ucan_cli.methods.prune.params import PruneParams
from ucan_cli.methods.ucan.scoring import budget_size

VERDICT = Verdict("pruning", "pruning makes no contrast verdict: check the result with `ucan eval`", None)
#: How many pruned units the report's summary lists (the highest scores); the rest are counted.
SUMMARY_UNITS = 20


@dataclass(frozen=True, eq=False)
class PruneChoice:
    """What ``choose`` decided (flat arrays: module order, then unit index).

    Attributes:
        forget, retain: I_f and I_r (``retain`` is None under ``--prune-score forget``).
        score: the ranking score (0 off the candidates).
        live: units whose B row or bias entry is not all zero.
        chosen: the pruned units' flat indices, highest score first.
        s: the factors: 0 on ``chosen``, exactly 1 elsewhere.
        k: the number of units asked for (``chosen`` may hold fewer when fewer units qualify).
    """

    forget: np.ndarray
    retain: np.ndarray | None
    score: np.ndarray
    live: np.ndarray
    chosen: np.ndarray
    s: np.ndarray
    k: int


def live_units(source) -> np.ndarray:
    """(N,) bool: output units whose lora_B row (or lora bias entry) holds a nonzero value."""
    parts = []
    for m in source.modules:
        live = (m.B != 0).any(dim=1)
        if m.bias is not None:
            live |= m.bias != 0
        parts.append(live.numpy())
    return np.concatenate(parts) if parts else np.zeros(0, dtype=bool)


def choose(forget: np.ndarray, retain: np.ndarray | None, live: np.ndarray, params: PruneParams) -> PruneChoice:
    """Steps 3-5 on given importances (pure).

    Raises:
        NothingToDo: no live unit has forget importance.
    """
    forget = np.asarray(forget, dtype=np.float64)
    live = np.asarray(live, dtype=bool)
    n_live = int(live.sum())
    candidates = live & (forget > 0)
    if not candidates.any():
        raise NothingToDo("nothing to do: no live LoRA output unit has any importance on the forget set; nothing written")
    f = forget / forget[live].mean()
    if params.prune_score == "ratio":
        r = np.asarray(retain, dtype=np.float64)
        mean_r = r[live].mean()
        r = r / mean_r if mean_r > 0 else np.zeros_like(r)
        score = f / (r + params.prune_eps)
    else:
        score = f.copy()
    score = np.where(candidates, score, 0.0)
    k = params.prune_count if params.prune_count is not None else budget_size(params.prune_ratio, n_live)
    pool = np.flatnonzero(candidates)
    order = pool[np.argsort(-score[pool], kind="stable")]  # stable: equal scores keep the lower index first
    chosen = order[: min(int(k), pool.size)]
    s = np.ones(forget.shape[0], dtype=np.float64)
    s[chosen] = 0.0
    return PruneChoice(forget=forget, retain=None if retain is None else np.asarray(retain, dtype=np.float64), score=score,
                       live=live, chosen=chosen, s=s, k=int(k))


def summary(choice: PruneChoice, layout: list[tuple[str, int]]) -> dict:
    """The report's summary: the budget fields every method has, and the pruned units."""
    names = np.repeat([n for n, _ in layout], [s for _, s in layout]) if layout else np.array([])
    offsets = np.repeat(np.cumsum([0] + [s for _, s in layout])[:-1], [s for _, s in layout]) if layout else np.array([])
    n = int(choice.chosen.size)
    top = [
        {"module": str(names[u]), "unit": int(u - offsets[u]), "forget_importance": float(choice.forget[u]),
         "retain_importance": None if choice.retain is None else float(choice.retain[u]), "score": float(choice.score[u])}
        for u in choice.chosen[:SUMMARY_UNITS]
    ]
    return {
        "k": n, "n_attenuated": n, "n_at_most_half": n, "budget_sum_1_minus_s": float(n), "n_units": int(choice.s.size),
        "n_live": int(choice.live.sum()), "n_candidates": int((choice.live & (choice.forget > 0)).sum()), "k_asked": choice.k,
        "pruned": top, "n_pruned_not_listed": max(n - SUMMARY_UNITS, 0),
    }


class Prune(Method):
    """Taylor-importance selective pruning of LoRA output units (factor 0 on the chosen units)."""

    name = "prune"
    pretty_name = "selective pruning (Taylor importance)"
    reference_url = "https://arxiv.org/abs/2403.01267"
    description = (
        "the output units with the largest Taylor importance |a dL/da| on the forget set relative to the retain set, "
        "set to zero (selective pruning, after Pochinkov & Schoots 2024, arXiv 2403.01267)"
    )
    params_type = PruneParams
    statistics = MODEL
    dry_run_verdict = VERDICT  # the flow's --dry-run report names this method's (absent) verdict, not the gradient family's

    def estimate(self, params: PruneParams, *, n_forget: int, n_retain: int, batch_size: int) -> dict:
        forget, retain = 3 * n_forget, (3 * n_retain if params.prune_score == "ratio" else 0)
        return {
            "forward_equivalents": forget + retain, "forget": forget, "retain": retain,
            "note": "one forward and one backward per record of each set (a forward counts 1, a backward 2)",
        }

    def run(self, source, inputs: ModelInputs, params: PruneParams, *, seed: int = 0) -> Edit:
        from ucan_cli.methods.prune.importance import taylor_importance
        from ucan_cli.methods.ucan.edit import apply_factors, unit_factors_by_module, units_per_module
        from ucan_cli.methods.ucan.statistics import find_lora_layers

        t0 = time.perf_counter()
        layers = find_lora_layers(inputs.model, source)
        common = dict(batch_size=inputs.batch_size, pad_id=inputs.pad_id, progress=inputs.progress)
        forget = taylor_importance(inputs.model, layers, inputs.forget, description="prune: forget importance", **common)
        retain = None
        if params.prune_score == "ratio":
            retain = taylor_importance(inputs.model, layers, inputs.retain, description="prune: retain importance", **common)
        t1 = time.perf_counter()
        layout = units_per_module(source, "output")
        choice = choose(forget, retain, live_units(source), params)
        factors = unit_factors_by_module(layout, choice.s)
        t2 = time.perf_counter()
        edited, changes = apply_factors(source, factors, "output", floor=0.0)
        t3 = time.perf_counter()
        cost = self.estimate(params, n_forget=len(inputs.forget), n_retain=len(inputs.retain), batch_size=inputs.batch_size)
        training = {
            "importance": "sum over response positions of |a dL/da|, L the summed response NLL",
            "score": params.prune_score,
            "cost": {"forward_equivalents": cost["forward_equivalents"], "forget": cost["forget"], "retain": cost["retain"],
                     "seconds": t1 - t0},
        }
        return Edit(
            adapter=edited, factors=factors, changes=changes, summary=summary(choice, layout), verdict=VERDICT, result=choice,
            timings={"importance": t1 - t0, "select": t2 - t1, "edit": t3 - t2}, training=training,
        )


__all__ = ["Prune", "PruneChoice", "choose", "live_units"]
