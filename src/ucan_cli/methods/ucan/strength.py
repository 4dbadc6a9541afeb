"""``--retain-kl``: the pure part of choosing direction units' strength by measurement.

The candidates are a halving ladder below ``--strength`` (``ladder``): mu, mu/2, ..., mu/2^7. Each
candidate's edit is measured by a forward pass (``ucan_cli.flows.strength``); ``choose`` then takes
the largest strength whose measured retain KL is within the budget. A factor of 2 in mu is about a
factor of 2 in retain KL, so the choice is then refined by ``REFINE_STEPS`` bisections (geometric
midpoints, ``midpoint``) between it and the next larger ladder strength, which was over the budget:
the strength used is within a factor 2^(1/4) of the largest the budget allows. Every step is
determined by the measurements before it, so the choice is reproducible from the options alone
(``--strength`` is the ladder's top, ``--retain-kl`` the budget).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

LADDER_STEPS = 8
"""Ladder candidates per search: --strength and seven halvings (down to --strength / 128)."""
REFINE_STEPS = 2
"""Bisections between the chosen ladder strength and the next larger one (resolution 2^(1/4))."""


def ladder(top: float, steps: int = LADDER_STEPS) -> list[float]:
    """``top``, ``top / 2``, ..., ``top / 2^(steps - 1)``: the candidate strengths, largest first."""
    if not (math.isfinite(top) and top > 0):
        raise ValueError(f"the ladder's top strength must be a finite number > 0, got {top}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return [top / 2.0**k for k in range(steps)]


def choose(strengths: Sequence[float], retain_kl: Sequence[float | None], budget: float) -> int | None:
    """Index of the largest strength whose retain KL is at most ``budget`` (None or NaN counts as
    over the budget), or None when no candidate is within it."""
    if len(strengths) != len(retain_kl):
        raise ValueError("one retain KL per strength")
    within = [i for i, kl in enumerate(retain_kl) if kl is not None and math.isfinite(kl) and kl <= budget]
    return max(within, key=lambda i: strengths[i]) if within else None


def midpoint(low: float, high: float) -> float:
    """The geometric midpoint of two strengths > 0 (the next bisection step)."""
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    return math.sqrt(low * high)


__all__ = ["LADDER_STEPS", "REFINE_STEPS", "choose", "ladder", "midpoint"]
