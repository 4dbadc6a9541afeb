"""Contrast-localized GradDiff (``--method ucan-graddiff``): GradDiff on the units U-CAN's contrast selects.

Does the contrast buy utility or steps? This method keeps GradDiff's loss, optimizer, batches,
stopping rule and cost accounting (``GradientMethod``) and changes only what trains:

1. U-CAN's step 1 on the loaded model (``ModelInputs.statistics``: one forward over forget +
   retain, output units, response scope), then its steps 2-5 and verdict with the U-CAN options
   given (``--ratio``, ``--tau``, ``--lambda``, ...; ``methods.ucan.method.select``, with the
   lineage's cumulative factors for the floor rule). The selected units are those U-CAN's edit
   would attenuate: factor s < 1.
2. The verdict goes through ``ModelInputs.gate`` before any training: a weak verdict declines
   (exit 4, nothing written) unless ``--accept-weak``, as ``--method ucan`` does; a request with
   no eligible unit is nothing to do (exit 4), as it is for U-CAN.
3. Training: lora_A of every module is frozen; lora_B (and the lora bias) trains only on the
   selected rows: a gradient hook multiplies its gradient by the 0/1 row mask, so AdamW (weight
   decay 0) sees exact zeros elsewhere. A module with no selected unit does not train at all.
4. The written tensors: the trained rows of the selected units; every other row, every lora_A
   and every unselected bias entry is copied from the input adapter, so they are byte-identical
   whatever the optimizer's rounding.

The edit is not a per-unit scaling: like GradDiff's it composes no factors in the ledger
(``request.kind`` ``"gradient"``); the report's verdict is U-CAN's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.base import ModelInputs, Verdict
from ucan_cli.methods.gradient.method import ADAPTER_NAME, GradDiff, lora_layers
from ucan_cli.methods.gradient.params import UCanGradDiffParams


@dataclass
class Restriction:
    """Which rows of B train, and what choosing them cost (``GradientMethod.restrict``).

    Attributes:
        rows: module name -> (d_out,) bool, the selected output units.
        cost: forward-pass equivalents of the statistics pass.
        verdict: U-CAN's verdict on the request.
        summary, record: for the report's summary and training blocks.
        handles: the gradient hooks to remove once training ends.
    """

    rows: dict[str, np.ndarray]
    cost: int
    verdict: Verdict
    summary: dict[str, Any]
    record: dict[str, Any]
    handles: list = field(default_factory=list)

    def tensors(self, source, trained: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors to write: trained rows where selected, the input's own values elsewhere."""
        out: dict[str, torch.Tensor] = {}
        for m in source.modules:
            rows = torch.from_numpy(self.rows[m.name])
            out[m.key_A] = m.A
            out[m.key_B] = torch.where(rows[:, None], trained[m.key_B], m.B) if rows.any() else m.B
            if m.key_bias is not None:
                out[m.key_bias] = torch.where(rows, trained[m.key_bias], m.bias) if rows.any() else m.bias
        return out

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def _mask_hook(mask: torch.Tensor):
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask

    return hook


class ContrastGradDiff(GradDiff):
    """GradDiff restricted to the lora_B rows of the output units U-CAN's contrast selects."""

    name = "ucan-graddiff"
    pretty_name = "contrast-localized GradDiff"
    reference_url = None
    description = (
        "GradDiff (gradient ascent on the forget set plus the ordinary loss on the retain set) on the lora_B rows of the "
        "output units U-CAN's contrast selects, lora_A frozen"
    )
    params_type = UCanGradDiffParams
    uses_contrast = True

    def estimate(self, params, *, n_forget: int, n_retain: int, batch_size: int) -> dict[str, Any]:
        out = super().estimate(params, n_forget=n_forget, n_retain=n_retain, batch_size=batch_size)
        out["setup"] += n_forget + n_retain  # the statistics pass
        out["forward_equivalents"] += n_forget + n_retain
        return out

    def restrict(self, source, inputs: ModelInputs, params) -> Restriction:
        from ucan_cli.methods.ucan.edit import unit_factors_by_module
        from ucan_cli.methods.ucan.method import select

        stats = inputs.statistics("output")
        result, verdict = select(stats, params.selection(), inputs.cumulative)
        if inputs.gate is not None:
            inputs.gate(verdict)
        selected = result.s < 1.0
        if not selected.any():
            raise NothingToDo(
                f"nothing to do: {result.k} units were selected but every factor rounds to 1; nothing written", result.summary()
            )
        rows = {name: f > 0 for name, f in unit_factors_by_module(stats, selected.astype(np.float64)).items()}
        restriction = Restriction(
            rows=rows, cost=len(inputs.forget) + len(inputs.retain), verdict=verdict,
            summary={"k": int(result.k), "n_selected": int(selected.sum()), "selection": result.summary()},
            record={"n_selected": int(selected.sum()), "modules_trained": sum(bool(r.any()) for r in rows.values()),
                    "trains": "lora_B rows (and lora bias entries) of the selected output units; lora_A frozen"},
        )
        for m, layer in lora_layers(inputs.model, source):
            layer.lora_A[ADAPTER_NAME].weight.requires_grad_(False)
            b = layer.lora_B[ADAPTER_NAME]
            mask = torch.from_numpy(rows[m.name]).to(b.weight.device)
            trains = bool(mask.any())
            for tensor, shaped in ((b.weight, mask[:, None]), (b.bias, mask)):
                if tensor is None:
                    continue
                tensor.requires_grad_(trains)
                if trains:
                    restriction.handles.append(tensor.register_hook(_mask_hook(shaped.to(tensor.dtype))))
        return restriction


__all__ = ["ContrastGradDiff", "Restriction"]
