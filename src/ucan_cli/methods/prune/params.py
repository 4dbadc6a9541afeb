"""``prune``'s parameters, declared once (``ucan_cli.methods.params``): how many units, ranked how.

``--prune-ratio`` (a share of the live output units, k = ceil(ratio x live)) or ``--prune-count``
(k itself) says how many units are pruned; the two exclude each other, as U-CAN's ``--ratio`` and
``--tau`` do. ``--prune-score`` says how units are ranked: ``ratio`` (selective pruning, the
default: forget importance over retain importance, each divided by its mean over live units,
with ``--prune-eps`` added to the retain side) or ``forget`` (forget importance alone, the
non-selective baseline). Defaults were measured on the seed-0 synthetic group world of
``ucan demo`` (docs/methods.md, "Pruning"). No NumPy, torch or Typer here (``ucan --help`` reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ucan_cli.errors import InputError
from ucan_cli.methods.params import option

PANEL_PRUNE = "Pruning (prune)"
SCORES = ("ratio", "forget")


def _opt(default: Any, flag: str, help: str, **spec: Any) -> Any:
    return option(default, flag, help, panel=PANEL_PRUNE, **spec)


@dataclass(frozen=True)
class PruneParams:
    """Taylor-importance pruning of LoRA output units.

    Attributes:
        prune_ratio: share of the live output units to prune, k = ceil(ratio x live) (``--prune-ratio``).
        prune_count: prune exactly this many units instead (``--prune-count``; excludes the ratio).
        prune_score: ``ratio`` (I_f / (I_r + eps), mean-normalised; default) or ``forget`` (I_f alone).
        prune_eps: eps of the ratio, in units of the mean retain importance (``--prune-eps``).
    """

    prune_ratio: float | None = _opt(
        0.05, "--prune-ratio", "Prune ceil(ratio x live output units) units. Excludes --prune-count.", excludes="prune_count"
    )
    prune_count: int | None = _opt(None, "--prune-count", "Prune exactly N units instead of a ratio. Excludes --prune-ratio.", min=1, excludes="prune_ratio")
    prune_score: str = _opt(
        "ratio", "--prune-score",
        "Rank units by ratio: forget over retain Taylor importance, each divided by its mean (selective), "
        "or forget: forget importance alone (non-selective).",
        choices=SCORES,
    )
    prune_eps: float = _opt(
        0.1, "--prune-eps", "eps of the ratio I_f / (I_r + eps), in units of the mean retain importance.", min=0.0
    )

    def validate(self):
        """Raise ``InputError`` naming the option when a value is out of range; return self."""
        if self.prune_ratio is not None and self.prune_count is not None:
            raise InputError("--prune-ratio and --prune-count are mutually exclusive; give one of them")
        if self.prune_ratio is None and self.prune_count is None:
            raise InputError("one of --prune-ratio or --prune-count is required")
        if self.prune_ratio is not None and not (_finite(self.prune_ratio) and 0 < self.prune_ratio <= 1):
            raise InputError(f"--prune-ratio must be in (0, 1], got {self.prune_ratio}")
        if self.prune_count is not None and not (isinstance(self.prune_count, int) and not isinstance(self.prune_count, bool)
                                                 and self.prune_count >= 1):
            raise InputError(f"--prune-count must be an integer >= 1, got {self.prune_count}")
        if self.prune_score not in SCORES:
            raise InputError(f"--prune-score must be one of {', '.join(SCORES)}, got {self.prune_score!r}")
        if not (_finite(self.prune_eps) and self.prune_eps > 0):
            raise InputError(f"--prune-eps must be a finite number > 0, got {self.prune_eps}")
        return self


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


__all__ = ["PANEL_PRUNE", "PruneParams", "SCORES"]
