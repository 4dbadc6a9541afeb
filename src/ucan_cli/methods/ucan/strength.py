"""``--retain-kl`` / ``--keep-retain``: the pure part of choosing direction units' strength by measurement.

The candidates are a halving ladder below ``--strength`` (``ladder``): mu, mu/2, ..., mu/2^7. Each
candidate's edit is measured by a forward pass (``ucan_cli.flows.strength``); ``choose`` then takes
the largest strength whose measurement is within the ``Limit``: a retain KL from the original of at
most ``--retain-kl`` nats, or a retain NDCG@10 of at least ``--keep-retain`` x the original's. A
factor of 2 in mu is about a factor of 2 in retain KL, so the choice is then refined by
``REFINE_STEPS`` bisections (geometric midpoints, ``midpoint``) between it and the next larger
ladder strength, which was over the limit: the strength used is within a factor 2^(1/4) of the
largest the limit allows. Every step is determined by the measurements before it, so the choice is
reproducible from the options alone (``--strength`` is the ladder's top).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Limit:
    """What a candidate strength's measured edit must keep.

    Attributes:
        kind: ``retain_kl``: the retain set's KL from the original (as ``ucan eval`` reports it)
            at most ``value`` nats; ``keep_retain``: the retain set's NDCG@10 at least ``value``
            x the original's (the records must rank candidates).
        value: the budget (nats) or the share.
    """

    kind: str
    value: float

    @classmethod
    def of(cls, params) -> Limit | None:
        """The limit a ``MethodParams`` asks for (None: ``--strength`` as given)."""
        if params.retain_kl is not None:
            return cls("retain_kl", float(params.retain_kl))
        if params.keep_retain is not None:
            return cls("keep_retain", float(params.keep_retain))
        return None

    @property
    def flag(self) -> str:
        return "--retain-kl" if self.kind == "retain_kl" else "--keep-retain"

    @property
    def measure(self) -> str:
        """The candidate row's key that the limit reads."""
        return "retain_kl" if self.kind == "retain_kl" else "retain_ndcg@10_share"

    def ok(self, x: float | None) -> bool:
        """Whether a measured value is within the limit (None or NaN: not)."""
        if x is None or not math.isfinite(x):
            return False
        return x <= self.value if self.kind == "retain_kl" else x >= self.value

    def within(self, row: Mapping[str, Any]) -> bool:
        return self.ok(row.get(self.measure))

    def describe(self) -> str:
        if self.kind == "retain_kl":
            return f"retain KL <= {self.value:g} nats"
        return f"retain NDCG@10 >= {self.value:g} x the original's"


def choose(strengths: Sequence[float], measured: Sequence[float | None], limit: Limit) -> int | None:
    """Index of the largest strength whose measured value (``limit.measure``) is within ``limit``
    (None or NaN counts as outside), or None when no candidate is within it."""
    if len(strengths) != len(measured):
        raise ValueError("one measured value per strength")
    within = [i for i, x in enumerate(measured) if limit.ok(x)]
    return max(within, key=lambda i: strengths[i]) if within else None


def midpoint(low: float, high: float) -> float:
    """The geometric midpoint of two strengths > 0 (the next bisection step)."""
    if not (0 < low < high and math.isfinite(high)):
        raise ValueError(f"need 0 < low < high, got {low}, {high}")
    return math.sqrt(low * high)


__all__ = ["LADDER_STEPS", "REFINE_STEPS", "Limit", "choose", "ladder", "midpoint"]
