"""The one tokenization function and the batches built from it.

prompt_ids = tok(prompt) with special tokens; response_ids = tok(response, no special tokens)
+ [eos]. Labels mask the prompt. A record longer than ``max_length`` loses prompt tokens from
the left (a leading BOS is kept), and the loss is counted; a response that alone does not fit
is an input error. Candidates are tokenized exactly like a response, without the eos.

Batches carry position ids computed from the attention mask, so left padding never changes
what a causal LM computes for the real tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ucan_cli.errors import InputError
from ucan_cli.io.data import Record, RecordSet
from ucan_cli.io.prompts import PromptFormatter

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Encoded:
    """Token ids of one record: ``input_ids`` = prompt ids (possibly left-truncated) + response ids."""

    input_ids: tuple[int, ...]
    prompt_len: int
    truncated: int  # prompt tokens dropped from the left
    candidate_ids: tuple[tuple[int, ...], ...] | None = None
    target: int | None = None  # index of the response among the candidates

    @property
    def response_len(self) -> int:
        return len(self.input_ids) - self.prompt_len

    @property
    def prompt_ids(self) -> tuple[int, ...]:
        return self.input_ids[: self.prompt_len]


def default_max_length(tokenizer, model_config=None, cap: int = 1024) -> int:
    """min(model max positions, 1024); the tokenizer's limit when the model says nothing."""
    limits = [cap]
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length"):
        value = getattr(model_config, name, None) if model_config is not None else None
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 10**8:
        limits.append(tok_max)
    return min(limits)


def encode_record(
    record: Record,
    tokenizer,
    formatter: PromptFormatter,
    max_length: int,
    *,
    source: str | None = None,
    with_candidates: bool = False,
) -> Encoded:
    """Tokenize one record as SPEC section 2 says (see the module docstring)."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise InputError("the tokenizer has no eos token; ucan needs one to end responses")
    prompt = formatter.prompt(record, source)
    prompt_ids = list(tokenizer(prompt, add_special_tokens=formatter.adds_special_tokens)["input_ids"])
    response_ids = list(tokenizer(record.response, add_special_tokens=False)["input_ids"]) + [eos]
    where = f"{source or 'data'}:{record.line}"
    field = "output" if record.kind == "alpaca" else "completion"
    if len(response_ids) + 1 > max_length:
        raise InputError(
            f"{where}: field '{field}' is {len(response_ids)} tokens with eos, which leaves no room for a prompt "
            f"within --max-length {max_length}"
        )
    truncated = 0
    overflow = len(prompt_ids) + len(response_ids) - max_length
    if overflow > 0:
        keep_bos = bool(prompt_ids) and tokenizer.bos_token_id is not None and prompt_ids[0] == tokenizer.bos_token_id
        head = prompt_ids[:1] if keep_bos else []
        body = prompt_ids[1:] if keep_bos else prompt_ids
        if overflow >= len(body):
            body = body[-1:]  # keep at least the last prompt token: it predicts the first response token
            truncated = len(prompt_ids) - len(head) - 1
        else:
            body = body[overflow:]
            truncated = overflow
        prompt_ids = head + body
    candidate_ids = None
    target = None
    if with_candidates and record.candidates is not None:
        candidate_ids = tuple(
            tuple(tokenizer(c, add_special_tokens=False)["input_ids"]) for c in record.candidates
        )
        for cand, ids in zip(record.candidates, candidate_ids):
            if not ids:
                raise InputError(f"{where}: field 'candidates': {cand!r} tokenizes to nothing")
        target = record.target_index
    return Encoded(
        input_ids=tuple(prompt_ids + response_ids),
        prompt_len=len(prompt_ids),
        truncated=truncated,
        candidate_ids=candidate_ids,
        target=target,
    )


def encode_set(
    records: RecordSet | Sequence[Record],
    tokenizer,
    formatter: PromptFormatter,
    max_length: int,
    *,
    with_candidates: bool = False,
) -> list[Encoded]:
    source = str(records.path) if isinstance(records, RecordSet) else None
    return [
        encode_record(r, tokenizer, formatter, max_length, source=source, with_candidates=with_candidates)
        for r in records
    ]


@dataclass
class Batch:
    """Padded tensors for a list of encoded records; ``index`` maps rows back to records."""

    index: list[int]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    labels: torch.Tensor  # response tokens, IGNORE_INDEX elsewhere
    prompt_len: torch.Tensor  # per row, in unpadded coordinates
    pad_left: torch.Tensor  # per row, number of padding tokens on the left

    def model_inputs(self) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask, "position_ids": self.position_ids}

    def to(self, device) -> Batch:
        return Batch(
            self.index,
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.position_ids, self.labels)),
            self.prompt_len,
            self.pad_left,
        )

    def predict_mask(self) -> torch.Tensor:
        """Positions whose next-token logits predict a response token (labels shifted left)."""
        mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        mask[:, :-1] = self.labels[:, 1:] != IGNORE_INDEX
        return mask

    def last_prompt_mask(self) -> torch.Tensor:
        """The last prompt position of each row (it predicts the first response token)."""
        mask = torch.zeros_like(self.attention_mask, dtype=torch.bool)
        rows = torch.arange(mask.shape[0])
        mask[rows, (self.pad_left + self.prompt_len - 1).to(mask.device)] = True
        return mask

    def scope_mask(self, scope: str) -> torch.Tensor:
        """Token scope of SPEC step 1: ``response`` (default), ``last`` or ``all``."""
        if scope == "response":
            return self.predict_mask()
        if scope == "last":
            return self.last_prompt_mask()
        if scope == "all":
            return self.attention_mask.bool()
        raise ValueError(f"unknown token scope {scope!r}")


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """0, 1, 2, ... over the real tokens of each row; padding gets 0 (it is masked anyway)."""
    mask = attention_mask.long()
    return (mask.cumsum(-1) - 1).clamp(min=0) * mask


def collate(
    encoded: Sequence[Encoded], index: Sequence[int], pad_id: int, padding_side: str = "left"
) -> Batch:
    """Pad a list of encoded records into one batch."""
    width = max(len(e.input_ids) for e in encoded)
    n = len(encoded)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    labels = torch.full((n, width), IGNORE_INDEX, dtype=torch.long)
    pad_left = torch.zeros(n, dtype=torch.long)
    for row, enc in enumerate(encoded):
        length = len(enc.input_ids)
        start = width - length if padding_side == "left" else 0
        ids = torch.tensor(enc.input_ids, dtype=torch.long)
        input_ids[row, start : start + length] = ids
        attention[row, start : start + length] = 1
        labels[row, start + enc.prompt_len : start + length] = ids[enc.prompt_len :]
        pad_left[row] = start
    return Batch(
        index=list(index),
        input_ids=input_ids,
        attention_mask=attention,
        position_ids=position_ids_from_mask(attention),
        labels=labels,
        prompt_len=torch.tensor([e.prompt_len for e in encoded], dtype=torch.long),
        pad_left=pad_left,
    )


def batch_order(encoded: Sequence[Encoded], subset: Sequence[int] | None = None, sort_by_length: bool = True) -> list[int]:
    """Record indices in batch order: ``subset`` (default: all), longest first (stable) unless
    ``sort_by_length`` is off. ``iter_batches`` and ``runtime.batching.Batcher`` cut this order."""
    order = list(range(len(encoded))) if subset is None else list(subset)
    if sort_by_length:
        order.sort(key=lambda i: -len(encoded[i].input_ids))
    return order


def iter_batches(
    encoded: Sequence[Encoded],
    batch_size: int,
    pad_id: int,
    *,
    padding_side: str = "left",
    sort_by_length: bool = True,
    subset: Sequence[int] | None = None,
) -> Iterator[Batch]:
    """Batches over ``encoded`` (or the ``subset`` of indices), longest first to limit padding.

    Sorting is stable and depends only on lengths, so results never depend on file order beyond
    ties; every consumer maps rows back through ``Batch.index``.
    """
    if batch_size <= 0:
        raise InputError(f"--batch-size must be positive, got {batch_size}")
    order = batch_order(encoded, subset, sort_by_length)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        yield collate([encoded[i] for i in chunk], chunk, pad_id, padding_side)


def pad_token_id(tokenizer) -> int:
    """The pad id, falling back to eos (padding is masked, so its value never matters)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id)
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id)
    return 0
