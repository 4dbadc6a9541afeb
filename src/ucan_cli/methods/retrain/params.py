"""The parameters of ``--method retrain``, declared once (``ucan_cli.methods.params``).

``--lr`` is the flag the gradient family declares (one flag, each method's own default, listed
in its help); ``--epochs`` is retrain's own. The batch size is the run's ``--batch-size``. The
defaults are a common LoRA fine-tuning recipe (AdamW at 2e-4, 3 epochs), not the recipe of any
given adapter: a faithful reference retrains with the learning rate, epochs and batch size the
input adapter was trained with (the demo worlds' adapters: ``--lr 0.006 --epochs 30
--batch-size 32``). No NumPy, torch or Typer here (``ucan --help`` reads it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ucan_cli.errors import InputError
from ucan_cli.methods.params import PANEL_GRADIENT, PANEL_RETRAIN, option


@dataclass(frozen=True)
class RetrainParams:
    """Retraining a fresh LoRA with the input adapter's config.

    Attributes:
        lr: AdamW learning rate (weight decay 0) on the LoRA parameters (``--lr``).
        epochs: passes over the training file's kept records (``--epochs``).
    """

    lr: float = option(0.0002, "--lr", "Learning rate (AdamW on the LoRA parameters only).", min=0.0, panel=PANEL_GRADIENT)
    epochs: int = option(
        3, "--epochs", "Passes over the --train records left after removing every forget user's.",
        min=1, panel=PANEL_RETRAIN,
    )

    def validate(self):
        """Raise ``InputError`` naming the option when a value is out of range; return self."""
        if not (isinstance(self.lr, (int, float)) and not isinstance(self.lr, bool) and math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (isinstance(self.epochs, int) and not isinstance(self.epochs, bool) and self.epochs >= 1):
            raise InputError(f"--epochs must be an integer >= 1, got {self.epochs}")
        return self


__all__ = ["RetrainParams"]
