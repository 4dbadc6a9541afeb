"""The parameters of ``--method negate``, declared once (``ucan_cli.methods.params``).

One option: ``--scale`` (default 1.0, > 0), the factor of the negated update dW' = -scale x dW.
No NumPy, torch or Typer here (``ucan --help`` reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ucan_cli.errors import InputError
from ucan_cli.methods.params import PANEL_NEGATE, option


@dataclass(frozen=True)
class NegateParams:
    """Task-vector negation.

    Attributes:
        scale: the negated update is dW' = -scale x dW (``--scale``); 1 turns the adapter's
            update around exactly.
    """

    scale: float = option(
        1.0, "--scale",
        "The new update is -scale x the adapter's (lora_B and lora bias times -scale, lora_A unchanged); > 0.",
        min=0.0, panel=PANEL_NEGATE,
    )

    def validate(self):
        """Raise ``InputError`` naming ``--scale`` unless it is a finite number > 0; return self."""
        ok = isinstance(self.scale, (int, float)) and not isinstance(self.scale, bool) and math.isfinite(self.scale)
        if not (ok and self.scale > 0):
            raise InputError(f"--scale must be a finite number > 0, got {self.scale}")
        return self


__all__ = ["NegateParams"]
