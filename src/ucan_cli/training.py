"""A small, seeded LoRA fine-tuning helper (library only; no command), and the loop it shares.

It exists so that tests, benchmarks and the demo can build adapters that really memorized their
records: loss on response tokens only (the prompt is masked), AdamW, a fixed seed for the LoRA
init and the batch order, the same prompt and tokenization as scoring and evaluation, and a
standard PEFT adapter directory at the end. ``fit`` is the loop itself (epochs over seeded
permutations, token-mean response loss, AdamW on whatever requires grad); ``train_lora`` and
``--method retrain`` (``ucan_cli.methods.retrain.method``) both run it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ucan_cli.io.data import Record
from ucan_cli.io.prompts import PromptFormatter
from ucan_cli.io.tokenize import encode_set, iter_batches, pad_token_id
from ucan_cli.progress import ProgressFactory, or_null


@dataclass(frozen=True)
class TrainConfig:
    target_modules: Sequence[str] | None = None  # PEFT's default for the architecture when None
    r: int = 8
    alpha: float = 16
    dropout: float = 0.0
    epochs: int = 3
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 16
    max_length: int = 256
    seed: int = 0
    template: str = "alpaca"
    use_rslora: bool = False


@dataclass
class Fit:
    """What ``fit`` ran: mean response-token loss per epoch and per step, and the step count."""

    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    steps: int = 0


@dataclass
class TrainResult:
    adapter_dir: Path
    epoch_losses: list[float] = field(default_factory=list)  # mean response-token loss per epoch
    steps: int = 0


def response_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over response tokens, and their count."""
    out = model(**batch.model_inputs())
    logits = out.logits[:, :-1].float()
    labels = batch.labels[:, 1:]
    mask = labels != -100
    loss = torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum")
    return loss, int(mask.sum())


def fit(
    model,
    encoded: Sequence,
    *,
    epochs: int,
    lr: float,
    batch_size: int,
    pad_id: int,
    seed: int,
    weight_decay: float = 0.0,
    progress: ProgressFactory | None = None,
    label: str = "training LoRA",
) -> Fit:
    """Train ``model``'s parameters that require grad on ``encoded`` (tokenized records).

    AdamW (``lr``, ``weight_decay``); each epoch visits every record once, in a permutation drawn
    from ``torch.Generator().manual_seed(seed)``, in batches of ``batch_size`` (the last one
    smaller); each step descends the batch's token-mean response NLL. The model's mode (train or
    eval) is the caller's. A non-finite loss raises ``UcanRuntimeError``.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    device = params[0].device if params else torch.device("cpu")
    result = Fit()
    n_batches = -(-len(encoded) // batch_size)
    with or_null(progress)(label, epochs * n_batches) as advance:
        for _ in range(epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            total, tokens = 0.0, 0
            for batch in iter_batches(encoded, batch_size, pad_id, subset=order, sort_by_length=False):
                loss_sum, n_tokens = response_loss(model, batch.to(device))
                loss = loss_sum / max(n_tokens, 1)
                if not torch.isfinite(loss):
                    from ucan_cli.errors import UcanRuntimeError

                    raise UcanRuntimeError(f"the training loss became {float(loss)} at step {result.steps + 1}; lower --lr")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss_sum.detach())
                tokens += n_tokens
                result.steps += 1
                result.step_losses.append(float(loss.detach()))
                advance(1)
            result.epoch_losses.append(total / max(tokens, 1))
    return result


def train_lora(
    model,
    tokenizer,
    records: Sequence[Record],
    out_dir: str | Path,
    config: TrainConfig = TrainConfig(),
    *,
    progress: ProgressFactory | None = None,
) -> TrainResult:
    """Fine-tune a fresh LoRA adapter on ``records`` and save it to ``out_dir``.

    ``model`` is a plain base model; it is wrapped with PEFT, trained, saved, and unwrapped again
    (its base weights are never changed).
    """
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(config.seed)
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=list(config.target_modules) if config.target_modules else None,
        use_rslora=config.use_rslora,
        fan_in_fan_out=model.config.model_type == "gpt2",
        task_type="CAUSAL_LM",
    )
    peft_model = get_peft_model(model, lora)
    formatter = PromptFormatter(config.template, tokenizer)
    encoded = encode_set(records, tokenizer, formatter, config.max_length)
    pad = pad_token_id(tokenizer)
    result = TrainResult(adapter_dir=Path(out_dir))
    peft_model.train()
    run = fit(
        peft_model, encoded, epochs=config.epochs, lr=config.lr, weight_decay=config.weight_decay,
        batch_size=config.batch_size, pad_id=pad, seed=config.seed, progress=progress,
    )
    result.epoch_losses, result.steps = run.epoch_losses, run.steps
    peft_model.eval()
    peft_model.save_pretrained(str(out_dir))
    peft_model.unload()
    return result


@torch.inference_mode()
def mean_response_nll(model, tokenizer, records: Sequence[Record], *, template: str = "alpaca", max_length: int = 256, batch_size: int = 32) -> float:
    """Token-weighted mean response NLL of ``model`` on ``records`` (a quick check for tests)."""
    encoded = encode_set(records, tokenizer, PromptFormatter(template, tokenizer), max_length)
    total, tokens = 0.0, 0
    for batch in iter_batches(encoded, batch_size, pad_token_id(tokenizer)):
        loss_sum, n = response_loss(model, batch)
        total += float(loss_sum)
        tokens += n
    return total / max(tokens, 1)
