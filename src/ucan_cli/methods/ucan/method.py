"""U-CAN as the registry knows it (``--method ucan``, the default): steps 2-6 on step-1 statistics.

``UCan.edit`` is the whole method after step 1: ``scoring.compute_scores`` turns the statistics
into one factor per unit (risk against the retain set, utility, fusion, eligibility with the
lineage's floor rule, budget, decay), ``verdict.contrast_overview`` says how far the contrast
stands above the noise reference, and ``edit.apply_factors`` scales B. Deterministic: the seed
is not used (the retain set's noise halves were drawn when the statistics were made).

``select`` (steps 2-5 and the verdict) and ``edit_from_selection`` (select, place, step 6) are
public because the random-units control (``ucan_cli.methods.random_units``) spends U-CAN's
selection on other units and edits the same way.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from ucan_cli.methods.base import ACTIVATIONS, Edit, Method, Verdict
from ucan_cli.methods.ucan.scoring import MethodParams, ScoreResult


def select(stats, params: MethodParams, cumulative: np.ndarray | None = None) -> tuple[ScoreResult, Verdict]:
    """Steps 2-5 and the verdict: U-CAN's factors (``result.s``) for ``stats`` under ``params``.

    Raises:
        NothingToDo: no unit is eligible (k = 0).
    """
    from ucan_cli.methods.ucan.scoring import compute_scores
    from ucan_cli.methods.ucan.statistics import method_inputs
    from ucan_cli.methods.ucan.verdict import DECLINED_VERDICTS, contrast_overview, decline_message

    result = compute_scores(**method_inputs(stats), params=params, cum_factors=cumulative)
    overview = contrast_overview(result)
    declines = overview["verdict"] in DECLINED_VERDICTS  # units pass the gates, but no more of them than noise gives
    return result, Verdict(overview["verdict"], overview["sentence"], decline_message(overview) if declines else None)


def edit_from_selection(
    source, stats, params: MethodParams, cumulative: np.ndarray | None,
    place: Callable[[ScoreResult], tuple[np.ndarray, Any, dict]],
) -> Edit:
    """U-CAN's selection (``select``), then ``place`` turns it into the factors to apply (flat
    ``s``, the method's result, the report's summary), then step 6 (``edit.apply_factors``) applies
    them: the shape of every method that spends U-CAN's selection."""
    from ucan_cli.methods.ucan.edit import apply_factors, unit_factors_by_module

    t0 = time.perf_counter()
    ucan, verdict = select(stats, params, cumulative)
    s, result, summary = place(ucan)
    t1 = time.perf_counter()
    factors = unit_factors_by_module(stats, s)
    edited, changes = apply_factors(source, factors, params.unit, floor=params.floor)
    timings = {"select": t1 - t0, "edit": time.perf_counter() - t1}
    return Edit(edited, factors, changes, summary, verdict, result, timings)


class UCan(Method):
    """U-CAN, Utility-aware Contrastive AttenuatioN of LoRA units (SPEC section 3; docs/method.md)."""

    name = "ucan"
    pretty_name = "U-CAN"
    reference_url = "https://arxiv.org/abs/2602.23400"
    description = (
        "the units that fired clearly more on a forget set than on a retain set, weighed against their use on the "
        "retain set (U-CAN, arXiv 2602.23400, as formulated by ucan-cli)"
    )
    params_type = MethodParams
    statistics = ACTIVATIONS

    def edit(self, source, stats, params: MethodParams, *, seed: int = 0, cumulative: np.ndarray | None = None) -> Edit:
        if params.unit == "direction":  # SPEC 3b: second moments in, an edit of A out (methods/ucan/direction.py)
            from ucan_cli.methods.ucan.direction import edit_directions

            return edit_directions(source, stats, params)
        return edit_from_selection(source, stats, params, cumulative, lambda result: (result.s, result, result.summary()))


class UCanDirection(UCan):
    """U-CAN with direction units (SPEC 3b): ``--method ucan-direction`` is ``--method ucan --unit
    direction``, under a name of its own so that method lists (``ucan compare``, benchmarks) can
    name it beside ``ucan``. ``unit`` is the unit the flow fixes for it."""

    name = "ucan-direction"
    pretty_name = "U-CAN (direction units)"
    description = (
        "the input directions where the forget set carries far more energy than the retain set, removed from A in "
        "closed form (U-CAN with direction units, SPEC 3b, as formulated by ucan-cli)"
    )
    unit = "direction"

    def edit(self, source, stats, params: MethodParams, *, seed: int = 0, cumulative: np.ndarray | None = None) -> Edit:
        if params.unit != "direction":
            raise ValueError(f"{self.name} edits direction units; got params with unit {params.unit!r}")
        return super().edit(source, stats, params, seed=seed, cumulative=None)
