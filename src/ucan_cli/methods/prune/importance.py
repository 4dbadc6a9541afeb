"""Taylor importance of LoRA output units on one set: I_j = sum over response positions of |a_j dL/da_j|.

For an adapted module with LoRA branch output a = c (B A x + b) (per token; c the scaling, b the
lora bias when the adapter has one), removing output unit j at one token changes the loss by
-a_j dL/da_j to first order (Molchanov et al. 2017's Taylor criterion, on LoRA units). Its size,
summed over the positions that predict response tokens (U-CAN's ``response`` token scope), is
the unit's importance on the set. L is the set's summed response NLL (a sum over records, not a
mean, so a token's contribution does not depend on the batch it falls in or the batch size).

c is a constant, so a_j dL/da_j = o_j dL/do_j with o = B A x + b, the output of PEFT's
``lora_B`` layer: a forward hook on ``lora_B`` keeps o, a tensor hook on o receives dL/do in the
backward pass, and the product on the response positions is reduced to per-unit float64 sums at
once. The bias is part of o because pruning removes it with the row (``edit.apply_factors``
scales B's row and the bias entry together). One forward and one backward per batch; the LoRA
weights' gradients come out of autograd as a by-product and are dropped. Pure torch, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ucan_cli.errors import UcanRuntimeError
from ucan_cli.progress import ProgressFactory, or_null


def taylor_importance(
    model, layers: Sequence[torch.nn.Module], encoded, *, batch_size: int, pad_id: int, adapter_name: str = "default",
    progress: ProgressFactory | None = None, description: str = "importance",
) -> np.ndarray:
    """(N,) float64 importance of every output unit of ``layers`` (flat: layer order, then unit).

    Args:
        model: the model with the LoRA layers injected, LoRA parameters requiring grad, in eval
            mode (dropout off).
        layers: the PEFT LoRA layers, in the adapter's module order
            (``ucan_cli.methods.ucan.statistics.find_lora_layers``).
        encoded: the set's tokenized records (``Encoded``, labels on the response tokens).
        batch_size, pad_id: batching (the result does not depend on it beyond rounding).
    """
    from ucan_cli.io.tokenize import iter_batches
    from ucan_cli.methods.gradient.losses import response_log_probs
    from ucan_cli.runtime.models import model_device

    device = model_device(model)
    sums = [torch.zeros(layer.lora_B[adapter_name].out_features, dtype=torch.float64, device=device) for layer in layers]
    calls = [0] * len(layers)
    state: dict = {"mask": None}

    def keep(i: int):
        def forward_hook(_module, _inputs, out):
            calls[i] += 1
            if not out.requires_grad:
                raise UcanRuntimeError("prune: the LoRA branch does not require grad; make the LoRA parameters trainable")
            mask = state["mask"]
            value = out.detach()

            def backward_hook(grad):
                sums[i].add_((value.to(torch.float64) * grad.to(torch.float64))[mask].abs().sum(0))

            out.register_hook(backward_hook)

        return forward_hook

    handles = [layer.lora_B[adapter_name].register_forward_hook(keep(i)) for i, layer in enumerate(layers)]
    try:
        with or_null(progress)(description, len(encoded)) as advance:
            for batch in iter_batches(encoded, batch_size, pad_id):
                batch = batch.to(device)
                state["mask"] = batch.scope_mask("response").to(device)
                calls[:] = [0] * len(layers)
                logp, _ = response_log_probs(model, batch)
                bad = next((i for i, c in enumerate(calls) if c != 1), None)
                if bad is not None:
                    raise UcanRuntimeError(f"LoRA module #{bad} ran {calls[bad]} times in one forward pass; prune needs exactly once")
                (-logp.sum()).backward()
                model.zero_grad(set_to_none=True)
                advance(len(batch.index))
    finally:
        for handle in handles:
            handle.remove()
    return torch.cat(sums).cpu().numpy() if sums else np.zeros(0)


__all__ = ["taylor_importance"]
