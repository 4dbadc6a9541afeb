"""``negate``: task-vector negation of a LoRA adapter, B' = -scale x B, A unchanged.

A LoRA adapter adds dW = c B A to a weight (c = alpha / r, or alpha / sqrt(r) with rsLoRA; per
module with rank and alpha patterns; Conv1D layers (GPT-2, ``fan_in_fan_out``) store the same
A and B and only transpose dW when it is applied). Task arithmetic (Ilharco et al. 2023,
arXiv:2212.04089) removes a task by adding its vector with the opposite sign: W + dW becomes
W - scale x dW. Exactly one factor carries the sign:

    B' = -scale x B  (and the lora bias b' = -scale x b, the bias being part of B's output),
    A' = A,          so dW' = c B' A = -scale x dW.

Negating both A and B is the classic mistake: c (-B)(-A) = c B A, the update is unchanged.
The edit is computed in float64 and cast back to each tensor's stored dtype; at scale 1 (and any
power of two) it is exact, so dW' == -dW bit for bit. Zeros stay +0.0 (no -0.0 appears), so an
all-zero B gives back the input's bytes and the flow writes nothing.

What it does and does not do: it removes the whole adapter's learning, for every user, not the
forget set's alone; it reads no data and makes no contrast verdict. It is in the comparison as
the classic baseline and a sanity bound (the far end of "forgets everything"), never as a way to
honour one user's request. The forget file only supplies the receipt that the ledger records.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.base import ADAPTER, Edit, Method, Verdict
from ucan_cli.methods.negate.params import NegateParams

VERDICT = Verdict(
    "not-selective",
    "negation makes no contrast verdict and is not selective: it removes the adapter's learning for every user",
    None,
)


def negated(tensor: torch.Tensor, scale: float) -> torch.Tensor:
    """-scale x ``tensor`` in float64, cast back to its dtype; +0.0 for zeros (never -0.0)."""
    return (tensor.to(torch.float64) * -float(scale) + 0.0).to(tensor.dtype)


def negate_tensors(source, scale: float) -> dict[str, torch.Tensor]:
    """The replaced tensors of ``source``: every lora_B and lora bias negated at ``scale``."""
    out: dict[str, torch.Tensor] = {}
    for m in source.modules:
        out[m.key_B] = negated(m.B, scale)
        if m.key_bias is not None:
            out[m.key_bias] = negated(m.bias, scale)
    return out


class Negate(Method):
    """Task-vector negation at ``--scale`` (see the module docstring)."""

    name = "negate"
    pretty_name = "task-vector negation"
    reference_url = "https://arxiv.org/abs/2212.04089"
    description = "lora_B (and lora bias) multiplied by -scale with lora_A unchanged, so dW' = -scale x dW in every module"
    params_type = NegateParams
    statistics = ADAPTER

    def apply(self, source, params: NegateParams, *, seed: int = 0) -> Edit:
        from ucan_cli.methods.gradient.method import dense_changes

        t0 = time.perf_counter()
        edited = source.with_tensors(negate_tensors(source, params.scale))
        changes = dense_changes(source, edited)
        moved = sum(c.n_edited for c in changes)
        if moved == 0:
            raise NothingToDo("nothing to do: every lora_B (and lora bias) is zero, so its negation is the same adapter; nothing written")
        seconds = time.perf_counter() - t0
        n_units = sum(c.n_units for c in changes)
        summary: dict[str, Any] = {
            "k": 0, "n_attenuated": 0, "n_at_most_half": 0, "budget_sum_1_minus_s": 0.0, "n_units": n_units, "n_live": n_units,
            "n_units_moved": moved, "scale": float(params.scale), "cost": {"forward_equivalents": 0, "seconds": seconds},
        }
        return Edit(adapter=edited, factors={}, changes=changes, summary=summary, verdict=VERDICT, timings={"edit": seconds})


__all__ = ["Negate", "negate_tensors", "negated"]
