"""The gradient family as registered methods: ``ga``, ``graddiff`` and ``npo``.

Each is a ``MODEL`` method (``ucan_cli.methods.base``): the flow hands it the base model with the
input adapter attached (LoRA parameters trainable, everything else frozen, dropout off) and the
tokenized forget and retain sets; ``GradientMethod.run`` takes AdamW steps (weight decay 0) on the
LoRA A, B (and lora bias) of every adapted module, one batch of ``--batch-size`` forget records
per step (plus one retain batch for GradDiff), in a seeded order (``torch.Generator`` seeded with
``--seed``; a new permutation each pass over a set). Only the loss differs (``losses.py``).

Stopping: after ``steps`` steps, or with ``until`` at the first check (every ``check_every``
steps, and before the first step, which also measures the ``original`` anchor) where the target
holds on the forget set; the retain set's utility is measured at the stop. Cost is counted in
forward-pass equivalents of one record: a forward counts 1, a backward 2, so a training step on
n records costs 3n; measurements cost what they run (``ModelInputs.probe``/``utility``); NPO's
reference log-probs cost one forward over the forget set.

The edit is the trained A and B, cast to the stored dtypes (``LoraAdapter.with_tensors``): every
tensor may change, so the ``ModuleChange`` per module reports the change of dW = c B A (norms
before and after, ||dW' - dW||, output units whose row of dW moved) and no per-unit factors.
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import torch

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.base import MODEL, Edit, Method, ModelInputs, Verdict
from ucan_cli.methods.gradient import losses
from ucan_cli.methods.gradient.params import GAParams, GradDiffParams, NPOParams, params_to_dict

ADAPTER_NAME = "default"
VERDICT = Verdict("gradient", "gradient methods make no contrast verdict: check the result with `ucan eval`", None)


class _Batches:
    """Endless seeded batches of one tokenized set: a fresh permutation each pass."""

    def __init__(self, encoded, batch_size: int, pad_id: int, seed: int, stream: int):
        self.encoded, self.batch_size, self.pad_id = encoded, batch_size, pad_id
        self.generator = torch.Generator().manual_seed(int(seed) * 2 + stream)
        self.queue: list[int] = []

    def next(self):
        from ucan_cli.io.tokenize import collate

        take = min(self.batch_size, len(self.encoded))
        while len(self.queue) < take:
            self.queue += torch.randperm(len(self.encoded), generator=self.generator).tolist()
        rows, self.queue = self.queue[:take], self.queue[take:]
        return collate([self.encoded[i] for i in rows], rows, self.pad_id)


def lora_layers(model, source) -> list[tuple[Any, Any]]:
    """(source module, the PEFT LoRA layer of the model) for every adapted module, in module order."""
    root = model.get_base_model()
    return [(m, root.get_submodule(m.name)) for m in source.modules]


def trained_tensors(model, source) -> dict[str, torch.Tensor]:
    """The model's current LoRA tensors under the adapter's stored names, in the stored dtypes."""
    out: dict[str, torch.Tensor] = {}
    for m, layer in lora_layers(model, source):
        out[m.key_A] = layer.lora_A[ADAPTER_NAME].weight.detach().to("cpu", m.A.dtype).clone()
        out[m.key_B] = layer.lora_B[ADAPTER_NAME].weight.detach().to("cpu", m.B.dtype).clone()
        if m.key_bias is not None:
            out[m.key_bias] = layer.lora_B[ADAPTER_NAME].bias.detach().to("cpu", m.bias.dtype).clone()
    return out


def dense_changes(source, edited) -> list:
    """One ``ModuleChange`` per module for an edit of A and B (float64, forms each dW)."""
    from ucan_cli.methods.ucan.edit import ModuleChange

    changes = []
    for before, after in zip(source.modules, edited.modules):
        w0, w1 = before.delta_weight(), after.delta_weight()
        n0, n1, d = float(w0.norm()), float(w1.norm()), float((w1 - w0).norm())
        moved = (w1 - w0).norm(dim=1) > 0
        if before.bias is not None:
            moved |= (after.bias.double() - before.bias.double()).abs() > 0
        changes.append(ModuleChange(
            name=before.name, n_units=before.d_out, n_edited=int(moved.sum()), n_at_most_half=0, min_factor=1.0,
            sum_1_minus_s=0.0, dw_norm_before=n0, dw_norm_after=n1, delta_norm=d,
            rel_norm_change=(n1 - n0) / n0 if n0 > 0 else 0.0, rel_delta=d / n0 if n0 > 0 else 0.0,
            bias_scaled=before.bias is not None,
        ))
    return changes


class GradientMethod(Method):
    """The loop every gradient method shares; a subclass gives ``loss`` (and ``setup``)."""

    statistics = MODEL
    reference_url: ClassVar[str | None] = None
    uses_retain: ClassVar[bool] = False

    def setup(self, inputs: ModelInputs, params) -> tuple[Any, int]:
        """Anything computed once before the first step, and its forward-pass equivalents."""
        return None, 0

    def restrict(self, source, inputs: ModelInputs, params):
        """Before the optimizer is built: limit what trains, or None (every LoRA parameter trains).

        A restriction (``ucan_cli.methods.gradient.localized.Restriction``) has ``cost``
        (forward-pass equivalents), ``verdict``, ``summary`` and ``record`` (for the report),
        ``tensors(source, trained)`` (the tensors to write) and ``close()`` (removes its hooks).
        """
        return None

    def loss(self, inputs: ModelInputs, forget_batch, retain_batch, params, state) -> torch.Tensor:
        raise NotImplementedError

    def estimate(self, params, *, n_forget: int, n_retain: int, batch_size: int) -> dict[str, Any]:
        per_step = 3 * min(batch_size, n_forget) + (3 * min(batch_size, n_retain) if self.uses_retain else 0)
        setup = n_forget if isinstance(self, NPO) else 0
        checks = 0
        if params.until is not None:  # step 0, every check_every steps, then the retain set at the stop
            checks = n_forget * (1 + params.steps // params.check_every) + n_retain
        train = per_step * params.steps
        return {
            "forward_equivalents": train + setup + checks, "train": train, "setup": setup, "checks": checks,
            "per_step": per_step, "steps_at_most": params.steps,
            "note": "a forward of one record counts 1, a backward 2; with --until the run may stop earlier",
        }

    def run(self, source, inputs: ModelInputs, params, *, seed: int = 0) -> Edit:
        t0 = time.perf_counter()
        restriction = self.restrict(source, inputs, params)
        try:
            return self._train(source, inputs, params, seed, restriction, t0)
        finally:
            if restriction is not None:
                restriction.close()

    def _train(self, source, inputs: ModelInputs, params, seed: int, restriction, t0: float) -> Edit:
        from ucan_cli.progress import or_null

        model = inputs.model
        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=params.lr, weight_decay=0.0)
        forget = _Batches(inputs.forget, inputs.batch_size, inputs.pad_id, seed, 0)
        retain = _Batches(inputs.retain, inputs.batch_size, inputs.pad_id, seed, 1) if self.uses_retain else None
        state, cost_setup = self.setup(inputs, params)
        if restriction is not None:
            cost_setup += restriction.cost
        target = params.target
        cost = {"train": 0, "setup": cost_setup, "checks": 0}
        checks: list[dict[str, Any]] = []
        original = None
        record: dict[str, Any] = {"steps_budget": params.steps, "batch_size": inputs.batch_size, "optimizer": "AdamW, weight decay 0"}

        def check(step: int) -> bool:
            nonlocal original
            metrics, spent = inputs.probe()
            cost["checks"] += spent
            value = float(metrics[target.metric])
            if step == 0:
                original = value
            met = target.met(value, original)
            checks.append({"step": step, target.metric: value, "forget_nll": metrics.get("nll"), "met": met})
            return met

        losses_seen: list[float] = []
        stop = "steps"
        step = 0
        if target is not None and check(0):
            raise NothingToDo(
                f"--until {target.text!r} already holds for the input adapter ({target.metric} = {checks[0][target.metric]:.4g}); "
                "nothing written", {"checks": checks},
            )
        with or_null(inputs.progress)(f"{self.name} steps", params.steps) as advance:
            while step < params.steps:
                fb = forget.next()
                rb = retain.next() if retain is not None else None
                loss = self.loss(inputs, fb, rb, params, state)
                if not torch.isfinite(loss):
                    from ucan_cli.errors import UcanRuntimeError

                    raise UcanRuntimeError(f"{self.name}: the loss became {float(loss)} at step {step + 1}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                step += 1
                losses_seen.append(float(loss.detach()))
                cost["train"] += 3 * len(fb.index) + (3 * len(rb.index) if rb is not None else 0)
                advance(1)
                if target is not None and step % params.check_every == 0 and check(step):
                    stop = "target"
                    break
        if target is not None and stop != "target":
            if checks[-1]["step"] != step:
                check(step)
            stop = "target" if checks[-1]["met"] else "budget"
        optimizer.zero_grad(set_to_none=True)
        record.update(steps_run=step, stop_reason=stop, target=target.text if target else None, losses=losses_seen, checks=checks)
        if target is not None:
            record["original"] = {target.metric: original}
            utility, spent = inputs.utility()
            cost["checks"] += spent
            record["retain_at_stop"] = utility
        train_s = time.perf_counter() - t0
        record["cost"] = {"forward_equivalents": sum(cost.values()), **cost, "seconds": train_s}

        tensors = trained_tensors(model, source)
        if restriction is not None:
            tensors = restriction.tensors(source, tensors)
            record["restriction"] = restriction.record
        edited = source.with_tensors(tensors)
        changes = dense_changes(source, edited)
        n_units = sum(c.n_units for c in changes)
        summary = {
            "k": 0, "n_attenuated": 0, "n_at_most_half": 0, "budget_sum_1_minus_s": 0.0, "n_units": n_units,
            "n_live": n_units, "n_units_moved": sum(c.n_edited for c in changes), "steps_run": step, "stop_reason": stop,
        }
        if restriction is not None:
            summary.update(restriction.summary)
        return Edit(
            adapter=edited, factors={}, changes=changes, summary=summary,
            verdict=VERDICT if restriction is None else restriction.verdict, result=record,
            timings={"train": train_s}, training=record,
        )


class GradientAscent(GradientMethod):
    name = "ga"
    pretty_name = "gradient ascent"
    reference_url = "https://arxiv.org/abs/2210.01504"
    description = "gradient ascent on the forget set's response NLL"
    params_type = GAParams

    def loss(self, inputs, fb, rb, params, state):
        return losses.ga_loss(*losses.response_log_probs(inputs.model, fb))


class GradDiff(GradientMethod):
    name = "graddiff"
    pretty_name = "gradient difference (GradDiff)"
    reference_url = "https://arxiv.org/abs/2401.06121"
    description = "gradient ascent on the forget set plus the ordinary loss on the retain set"
    params_type = GradDiffParams
    uses_retain = True

    def loss(self, inputs, fb, rb, params, state):
        return losses.graddiff_loss(
            *losses.response_log_probs(inputs.model, fb), *losses.response_log_probs(inputs.model, rb), params.retain_weight
        )


class NPO(GradientMethod):
    name = "npo"
    pretty_name = "negative preference optimization (NPO)"
    reference_url = "https://arxiv.org/abs/2404.05868"
    description = "negative preference optimization on the forget set against the frozen input adapter"
    params_type = NPOParams

    def setup(self, inputs, params):
        """log p_orig(y|x) of every forget record under the input adapter (one forward each)."""
        from ucan_cli.io.tokenize import iter_batches

        reference = torch.zeros(len(inputs.forget), dtype=torch.float64)
        with torch.no_grad():
            for batch in iter_batches(inputs.forget, inputs.batch_size, inputs.pad_id):
                logp, _ = losses.response_log_probs(inputs.model, batch)
                reference[batch.index] = logp.double().cpu()
        return reference, len(inputs.forget)

    def loss(self, inputs, fb, rb, params, state):
        logp, _ = losses.response_log_probs(inputs.model, fb)
        return losses.npo_loss(logp, state[fb.index].to(logp.device), params.beta)


__all__ = ["GradDiff", "GradientAscent", "GradientMethod", "NPO", "dense_changes", "params_to_dict", "trained_tensors"]
