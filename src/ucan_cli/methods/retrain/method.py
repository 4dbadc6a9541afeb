"""``retrain``: a fresh LoRA with the input adapter's own config, trained without the forget users.

Retraining is what every unlearning method approximates: the adapter the user would have had
if the forget users' records had never been in its training data. The flow (``ucan attenuate
--method retrain --train FILE``) reads the training file, removes every forget user's record
(``removal.py``) before anything is tokenized, and hands the kept records, tokenized, as
``ModelInputs.train``, with the base model and the input adapter attached (dropout off, LoRA
parameters trainable, everything else frozen). Then:

1. **Fresh weights, the same config.** Every adapted module's lora_A is re-drawn with PEFT's
   default init (``LoraLayer.reset_lora_parameters``: Kaiming-uniform with a = sqrt(5), or
   normal with std 1/r when the config says ``init_lora_weights: "gaussian"``), lora_B and the
   lora bias set to zero. The draw uses one CPU ``torch.Generator`` seeded with ``--seed``,
   module after module in the adapter's module order, so it is the same on every device and
   leaves torch's global generator alone; on a CPU float32 model it equals PEFT's own reset under
   ``torch.manual_seed(seed)``. The config (r, alpha, target modules, rank and alpha patterns,
   rsLoRA, fan_in_fan_out, lora bias) is the attached adapter's, untouched, and the output keeps
   its ``adapter_config.json`` byte for byte and every tensor's name, shape and dtype.
2. **Ordinary training.** ``ucan_cli.training.fit``, the loop ``train_lora`` runs: ``--epochs``
   passes, each a permutation of the kept records seeded by ``--seed``, batches of
   ``--batch-size``, AdamW (``--lr``, weight decay 0) on the token-mean response NLL. Dropout
   stays off (the house's model methods run in eval mode so that seeds decide every byte), even
   when the config sets ``lora_dropout``.

Cost, in forward-pass equivalents of one record (a forward 1, a backward 2): 3 x kept records x
epochs. An adapter whose file holds tensors other than LoRA A, B and lora bias
(``modules_to_save`` copies) is refused: those were trained on the forget users too, and
retraining cannot re-create them.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ucan_cli.errors import InputError
from ucan_cli.methods.base import MODEL, Edit, Method, ModelInputs, Verdict
from ucan_cli.methods.retrain.params import RetrainParams

VERDICT = Verdict("retrained", "retraining without the forget users' records makes no contrast verdict: it is the reference", None)


def init_kind(config: dict) -> str:
    """The PEFT init to re-draw lora_A with: ``"gaussian"`` when the config says so, else the default."""
    return "gaussian" if str(config.get("init_lora_weights")).lower() == "gaussian" else "default"


def reinitialise(layers, seed: int, kind: str = "default", adapter_name: str = "default") -> None:
    """Reset each (module, PEFT LoRA layer) pair's A, B and lora bias to PEFT's init, drawn from one
    CPU generator seeded with ``seed`` in the given order (see the module docstring)."""
    generator = torch.Generator().manual_seed(int(seed))
    with torch.no_grad():
        for _, layer in layers:
            weight = layer.lora_A[adapter_name].weight
            fresh = torch.empty(weight.shape, dtype=torch.float32)
            if kind == "gaussian":
                torch.nn.init.normal_(fresh, std=1 / layer.r[adapter_name], generator=generator)
            else:
                torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
            weight.copy_(fresh)
            layer.lora_B[adapter_name].weight.zero_()
            if getattr(layer.lora_B[adapter_name], "bias", None) is not None:
                layer.lora_B[adapter_name].bias.zero_()


class Retrain(Method):
    """Retraining from a fresh init on the training file without the forget users."""

    name = "retrain"
    pretty_name = "retraining without the forget users"
    reference_url = None
    description = (
        "a fresh LoRA with the input adapter's config (re-initialised, then trained on the training file "
        "with every forget user's record removed)"
    )
    params_type = RetrainParams
    statistics = MODEL
    takes_train = True
    fresh_adapter = True
    dry_run_verdict = VERDICT

    def check(self, source, params) -> None:
        """Refuse an adapter file with tensors besides LoRA A, B and lora bias (modules_to_save)."""
        lora = {k for m in source.modules for k in (m.key_A, m.key_B, m.key_bias) if k is not None}
        other = [k for k in source.tensors if k not in lora]
        if other:
            raise InputError(
                f"{source.path}: --method retrain cannot re-create {other[0]} ({len(other)} tensor(s) besides LoRA A, B and "
                "lora bias, e.g. modules_to_save): they were trained on the forget users too; retrain the whole adapter yourself"
            )

    def estimate(self, params: RetrainParams, *, n_forget: int, n_retain: int, batch_size: int, n_train: int = 0, **_: int) -> dict[str, Any]:
        per_epoch = -(-n_train // batch_size)
        train = 3 * n_train * params.epochs
        return {
            "forward_equivalents": train, "train": train, "setup": 0, "checks": 0, "per_epoch": 3 * n_train,
            "steps_at_most": per_epoch * params.epochs, "epochs": params.epochs, "n_train": n_train,
            "note": "a forward of one record counts 1, a backward 2: 3 per kept training record per epoch",
        }

    def run(self, source, inputs: ModelInputs, params: RetrainParams, *, seed: int = 0) -> Edit:
        from ucan_cli.methods.gradient.method import dense_changes, lora_layers, trained_tensors
        from ucan_cli.training import fit

        if not inputs.train:
            raise InputError("--method retrain: no training records left to train on")
        t0 = time.perf_counter()
        model = inputs.model
        kind = init_kind(source.config)
        reinitialise(lora_layers(model, source), seed, kind)
        run = fit(
            model, inputs.train, epochs=params.epochs, lr=params.lr, batch_size=inputs.batch_size, pad_id=inputs.pad_id,
            seed=seed, progress=inputs.progress, label="retrain steps",
        )
        seconds = time.perf_counter() - t0
        n_train = len(inputs.train)
        record: dict[str, Any] = {
            "steps_budget": run.steps, "steps_run": run.steps, "stop_reason": "epochs", "epochs": params.epochs,
            "batch_size": inputs.batch_size, "optimizer": "AdamW, weight decay 0", "init": kind, "losses": run.step_losses,
            "epoch_losses": run.epoch_losses,
            "cost": {"forward_equivalents": 3 * n_train * params.epochs, "train": 3 * n_train * params.epochs, "setup": 0,
                     "checks": 0, "seconds": seconds},
        }
        edited = source.with_tensors(trained_tensors(model, source))
        changes = dense_changes(source, edited)
        n_units = sum(c.n_units for c in changes)
        summary = {
            "k": 0, "n_attenuated": 0, "n_at_most_half": 0, "budget_sum_1_minus_s": 0.0, "n_units": n_units, "n_live": n_units,
            "n_units_moved": sum(c.n_edited for c in changes), "steps_run": run.steps, "stop_reason": "epochs",
        }
        return Edit(
            adapter=edited, factors={}, changes=changes, summary=summary, verdict=VERDICT, result=record,
            timings={"train": seconds}, training=record,
        )


__all__ = ["Retrain", "init_kind", "reinitialise"]
