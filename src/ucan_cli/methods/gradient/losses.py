"""The gradient family's objectives, on one batch: pure torch, no I/O.

All three act on response tokens only (``Batch.labels``; the prompt is masked), the tokens
``ucan eval`` scores:

* ``response_log_probs``: per record, the summed log-probability of its response tokens,
  log p(y|x) = sum_t log p(y_t | x, y_<t), and the number of those tokens;
* GA (gradient ascent): ``ga_loss = -mean NLL`` over the forget batch's response tokens
  (token-weighted), so descending it raises the forget NLL;
* GradDiff: ``graddiff_loss = ga_loss(forget) + w * mean NLL(retain)``;
* NPO (Zhang et al., 2024, arXiv:2404.05868):
  ``npo_loss = -(2 / beta) * mean_f[ log sigmoid(-beta * (log p_theta(y|x) - log p_orig(y|x))) ]``
  on the summed response log-probs, p_orig the frozen input adapter's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def response_log_probs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,) summed log p of each record's response tokens under ``model``, and (B,) their counts.

    Computed in the logits' dtype promoted to at least float32 (float64 stays float64).
    """
    out = model(**batch.model_inputs())
    logits = out.logits[:, :-1]
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    labels = batch.labels[:, 1:].to(logits.device)
    mask = labels != -100
    logp = F.log_softmax(logits, dim=-1).gather(-1, labels.clamp_min(0).unsqueeze(-1)).squeeze(-1)
    logp = torch.where(mask, logp, torch.zeros_like(logp))
    return logp.sum(-1), mask.sum(-1)


def mean_nll(logp_sum: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """Token-weighted mean NLL of a batch from its per-record sums."""
    return -logp_sum.sum() / n_tokens.sum().clamp_min(1)


def ga_loss(forget_logp: torch.Tensor, forget_tokens: torch.Tensor) -> torch.Tensor:
    """Gradient ascent: minus the forget batch's mean response NLL."""
    return -mean_nll(forget_logp, forget_tokens)


def graddiff_loss(
    forget_logp: torch.Tensor, forget_tokens: torch.Tensor, retain_logp: torch.Tensor, retain_tokens: torch.Tensor, retain_weight: float
) -> torch.Tensor:
    """GA on the forget batch plus ``retain_weight`` x the retain batch's mean response NLL."""
    return ga_loss(forget_logp, forget_tokens) + retain_weight * mean_nll(retain_logp, retain_tokens)


def npo_loss(logp_theta: torch.Tensor, logp_orig: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO: -(2/beta) * mean log sigmoid(-beta * (log p_theta - log p_orig)) over the batch's records."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp_theta - logp_orig.to(logp_theta.dtype))).mean()


__all__ = ["ga_loss", "graddiff_loss", "mean_nll", "npo_loss", "response_log_probs"]
