"""Run adapters over record sets: the forward passes behind ``ucan eval`` (SPEC section 4).

``ucan eval`` compares the original adapter theta_o with each unlearned adapter theta_u, and
optionally a retrained reference theta_ref and the base model alone ("everything forgotten"),
on the forget set D_f, the retain set D_r and an optional held-out set D_h.

How the work is organised, and why:

- The base model loads once. Every adapter is attached to it once with PEFT
  (``PeftModel.from_pretrained`` for the original, ``load_adapter`` for the others) and switched
  with ``set_adapter``; the base alone runs inside ``disable_adapter()``. Nothing is reloaded
  per adapter, and every adapter sees exactly the same batches.
- For each batch of a set, each adapter runs one forward pass over prompt + response. That pass
  gives the response NLL (eos included), the single-token candidate log-probabilities (the
  log-probs at the last prompt position, gathered at the candidates' token ids) and, for a set without
  candidates, the full next-token distributions at the response positions. Only the positions
  that predict response tokens go through the LM head (``logits_to_keep`` under left padding).
- Multi-token candidates are teacher-forced: each (record, candidate) pair is one sequence
  prompt + candidate, batched, and the candidate's token log-probs are summed.
- A set without candidates (or with candidates on only some records) falls back to the full
  vocabulary: KL per record is the mean over response positions of KL(p_o || p_x) over the
  vocabulary, computed against the original's log-probs of the same batch (never stored for the
  whole set); prediction shift compares the greedy token at the first response position.
  Ranking metrics are then null, with the reason.
- Only per-record arrays are kept (an n x C matrix of candidate log-probabilities, NLL sums,
  token counts, per-record KL); ``ucan_cli.evaluation.summary`` turns them into the report's
  means, trade-offs, AUCs and bootstrap CIs with the pure functions of
  ``ucan_cli.evaluation.metrics``.

Public API: ``adapter_entries`` (load and check the adapter directories, before any model),
``check_against_base`` and ``check_settings`` (K and the bootstrap count), ``evaluate`` (the
passes and their summary, returns an ``EvalResult``) and ``run_set`` (one model over one record
set: candidate log-probabilities and NLL, used by tests). ``ucan_cli.flows.evaluate`` is the
whole ``ucan eval`` around them: checks, model loading, gates, report files.
"""

from __future__ import annotations

import contextlib
import math
import resource
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ucan_cli.evaluation import metrics as M
from ucan_cli.evaluation.summary import summarize
from ucan_cli.errors import InputError, UcanRuntimeError
from ucan_cli.io.data import Record, RecordSet
from ucan_cli.runtime.models import accepts_logits_to_keep, hf_quiet, model_device
from ucan_cli.io.prompts import PromptFormatter
from ucan_cli.io.tokenize import (
    IGNORE_INDEX,
    Batch,
    Encoded,
    collate,
    default_max_length,
    encode_set,
    pad_token_id,
)
from ucan_cli.progress import ProgressFactory, or_null
from ucan_cli.runtime.batching import Batcher

SET_NAMES: tuple[str, ...] = ("forget", "retain", "holdout")
"""The record sets of an evaluation, in report order."""

ROLES: tuple[str, ...] = ("original", "unlearned", "reference", "base")
"""Adapter roles, in the report's column order."""

KL_EPS = M.KL_EPS
"""Floor of q in the full-vocabulary KL, as in ``metrics.kl_divergence``."""

MODE_SINGLE = "single-token"
MODE_MULTI = "multi-token"
MODE_VOCAB = "full-vocabulary"


# --------------------------------------------------------------------------- adapters


@dataclass(frozen=True)
class AdapterEntry:
    """One column of the report: an adapter directory (or the base alone) and its role.

    ``id`` is the stable name used in report.json, gates and records.jsonl: ``original``,
    ``unlearned_1`` .. ``unlearned_N``, ``reference``, ``base``. It is also the PEFT adapter name.
    """

    id: str
    role: str
    path: Path | None
    sha256: str | None
    base_model_name: str | None = None
    adapter: Any = field(default=None, repr=False, compare=False)  # the LoraAdapter (shapes for checks)


def adapter_entries(
    original: str | Path,
    unlearned: Sequence[str | Path],
    *,
    reference: str | Path | None = None,
    include_base: bool = False,
    allow_pickle: bool = False,
) -> list[AdapterEntry]:
    """Read and check every adapter directory (exit 2 on a bad one), without loading any model.

    Returns the report's columns in order: original, unlearned_1..N, reference, base.
    """
    from ucan_cli.io.adapter import LoraAdapter

    if not unlearned:
        raise InputError("--unlearned: give at least one unlearned adapter directory")

    def entry(ident: str, role: str, path: str | Path) -> AdapterEntry:
        try:
            loaded = LoraAdapter.load(path, allow_pickle=allow_pickle)
            loaded.check_supported()
        except InputError as exc:
            raise InputError(f"{role} adapter: {exc.message}") from None
        return AdapterEntry(ident, role, Path(path), loaded.sha256, loaded.base_model_name, loaded)

    out = [entry("original", "original", original)]
    out += [entry(f"unlearned_{i}", "unlearned", p) for i, p in enumerate(unlearned, start=1)]
    if reference is not None:
        out.append(entry("reference", "reference", reference))
    if include_base:
        out.append(AdapterEntry("base", "base", None, None))
    return out


def check_against_base(entries: Sequence[AdapterEntry], model) -> None:
    """Every adapter must fit the base model (a module or shape mismatch is exit 2 naming it).

    ``model`` may be the real base model or ``io.models.model_skeleton`` (no weights).
    """
    from ucan_cli.runtime.models import check_adapter_matches_base

    for e in entries:
        if e.adapter is None:
            continue
        try:
            check_adapter_matches_base(e.adapter, model)
        except InputError as exc:
            raise InputError(f"{e.role} adapter ({e.id}): {exc.message}") from None


def adapter_warnings(entries: Sequence[AdapterEntry]) -> list[str]:
    """Things worth knowing about the adapters themselves (no model needed)."""
    out: list[str] = []
    original = entries[0]
    for e in entries[1:]:
        if e.sha256 is not None and e.sha256 == original.sha256:
            out.append(f"{e.id} ({e.path}) has the same weights as the original: it forgot nothing")
        if e.base_model_name and original.base_model_name and e.base_model_name != original.base_model_name:
            out.append(
                f"{e.id} names base model {e.base_model_name!r} but the original names "
                f"{original.base_model_name!r}; its shapes fit, check that the comparison is meant"
            )
    for e in entries:
        if e.adapter is not None and e.adapter.config.get("modules_to_save"):
            out.append(
                f"{e.id}: modules_to_save {e.adapter.config['modules_to_save']} are evaluated as stored; "
                "forget information may live there"
            )
    return out


# --------------------------------------------------------------------------- one forward pass


def _log_probs(model, batch: Batch, keep: int, use_keep: bool) -> tuple[torch.Tensor, int]:
    """Float32 log-softmax over the vocabulary at the last ``keep`` positions (all when not possible).

    Returns the log-probs (B, L, V) and the absolute position of their first column. Under left
    padding every row ends at the last column, so the positions predicting response tokens are
    among the last ``max(response length) + 1``: only those go through the LM head.
    """
    width = batch.input_ids.shape[1]
    inputs = batch.model_inputs()
    if use_keep and keep < width:
        logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
        start = width - keep
    else:
        logits = model(**inputs, use_cache=False).logits
        start = 0
    return torch.log_softmax(logits.float(), dim=-1), start


def _target_token_log_probs(batch: Batch, logp: torch.Tensor, start: int) -> tuple[torch.Tensor, torch.Tensor]:
    """log p of each labelled (response) token at the kept positions, and the mask of those positions."""
    labels = batch.labels
    nxt = torch.full_like(labels, IGNORE_INDEX)
    nxt[:, :-1] = labels[:, 1:]
    nxt = nxt[:, start:]
    mask = nxt != IGNORE_INDEX
    tok = logp.gather(-1, nxt.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, tok, torch.zeros_like(tok)), mask


def _vocab_kl(logp_p: torch.Tensor, logp_q: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per row: mean over masked positions of KL(p || q) over the vocabulary (nats, float64 sums)."""
    p = logp_p.exp()
    log_q = logp_q.clamp(min=math.log(KL_EPS))
    terms = torch.where(p > 0, p * (logp_p - log_q), torch.zeros_like(p))
    per_pos = terms.sum(-1).double()
    per_pos = torch.where(mask, per_pos, torch.zeros_like(per_pos))
    return per_pos.sum(-1) / mask.sum(-1).clamp(min=1)


def _fit_prompt(prompt: tuple[int, ...], extra: int, max_length: int, bos_id: int | None) -> tuple[int, ...]:
    """Drop prompt tokens from the left (keeping a leading BOS) so that prompt + ``extra`` fits."""
    overflow = len(prompt) + extra - max_length
    if overflow <= 0:
        return prompt
    head = prompt[:1] if prompt and bos_id is not None and prompt[0] == bos_id else ()
    body = prompt[len(head):]
    body = body[min(overflow, len(body) - 1):]
    return head + body


# --------------------------------------------------------------------------- one set, all adapters


@dataclass
class SetPass:
    """Per-record arrays of one record set under every adapter (nothing is kept per token).

    ``cand_logp[a]`` is the (n, C) NaN-padded matrix of candidate log-probabilities (the summed
    log-probs of each candidate's tokens, not normalised over the candidates; ``metrics`` calls
    such a matrix ``scores``) in candidate modes; ``nll[a]`` the response NLL sums (eos included);
    in the full-vocabulary mode ``kl_original[a]`` / ``kl_reference[a]`` hold per-record
    KL(p_o || p_a) / KL(p_ref || p_a) and ``top1[a]`` the greedy token at the first response
    position. ``sequences[a]`` counts the sequences adapter a ran (forward-pass equivalents).
    """

    name: str
    records: tuple[Record, ...]
    mode: str
    target: np.ndarray  # (n,) target candidate index, -1 without candidates
    n_candidates: np.ndarray  # (n,) number of candidates, 0 without
    tokens: np.ndarray  # (n,) response tokens, eos included
    truncated: np.ndarray  # (n,) prompt tokens dropped to fit --max-length
    missing_candidates: int = 0
    cand_logp: dict[str, np.ndarray] = field(default_factory=dict)
    nll: dict[str, np.ndarray] = field(default_factory=dict)
    kl_original: dict[str, np.ndarray] = field(default_factory=dict)
    kl_reference: dict[str, np.ndarray] = field(default_factory=dict)
    top1: dict[str, np.ndarray] = field(default_factory=dict)
    sequences: dict[str, int] = field(default_factory=dict)
    forward_s: dict[str, float] = field(default_factory=dict)

    @property
    def n(self) -> int:
        return len(self.records)

    @property
    def has_ranking(self) -> bool:
        return self.mode != MODE_VOCAB


def _set_mode(encoded: Sequence[Encoded]) -> tuple[str, int]:
    """How a set's candidates are read (single-token, multi-token or full-vocabulary), and how
    many records lack candidates."""
    missing = sum(e.candidate_ids is None for e in encoded)
    if missing:
        return MODE_VOCAB, missing
    single = all(len(ids) == 1 for e in encoded for ids in e.candidate_ids)  # type: ignore[union-attr]
    return (MODE_SINGLE if single else MODE_MULTI), 0


@contextlib.contextmanager
def _active(model, entry_id: str, role: str) -> Iterator[None]:
    """Make one adapter active on a PEFT model (the base alone for role ``base``).

    Any other role (``run_set``'s ``model``) runs the model as it is.
    """
    if role == "base":
        with model.disable_adapter():
            yield
        return
    if role in ("original", "unlearned", "reference"):
        model.set_adapter(entry_id, inference_mode=True)
    yield


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _run_columns(
    model,
    tokenizer,
    name: str,
    records: Sequence[Record],
    columns: Sequence[tuple[str, str]],
    *,
    formatter: PromptFormatter,
    max_length: int,
    batch_size: int | Batcher,
    padding_side: str,
    reference_kl: bool,
    progress: ProgressFactory | None,
) -> tuple[SetPass, float]:
    """Run every (id, role) column over one set, batch by batch; returns the arrays and encode time.

    The first column must be the original (its log-probs are the p of the full-vocabulary KL);
    with ``reference_kl`` the column with role ``reference`` supplies the p of KL(p_ref || p_x).
    ``batch_size`` may be a ``runtime.batching.Batcher`` (``auto``, a token budget): a record
    batch that runs out of memory is retried whole, so its rows' values are written again and
    its counters and times are added only once it completes.
    """
    t0 = time.perf_counter()
    encoded = encode_set(list(records), tokenizer, formatter, max_length, with_candidates=True)
    encode_s = time.perf_counter() - t0
    mode, missing = _set_mode(encoded)
    n = len(encoded)
    n_cands = np.array([len(e.candidate_ids) if e.candidate_ids is not None else 0 for e in encoded], dtype=np.int64)
    width_c = int(n_cands.max()) if n_cands.size else 0
    sp = SetPass(
        name=name,
        records=tuple(records),
        mode=mode,
        target=np.array([e.target if e.target is not None else -1 for e in encoded], dtype=np.int64),
        n_candidates=n_cands,
        tokens=np.array([e.response_len for e in encoded], dtype=np.int64),
        truncated=np.array([e.truncated for e in encoded], dtype=np.int64),
        missing_candidates=missing,
    )
    ids = [c for c, _ in columns]
    for a in ids:
        sp.nll[a] = np.full(n, np.nan)
        sp.sequences[a] = 0
        sp.forward_s[a] = 0.0
        if mode == MODE_VOCAB:
            sp.kl_original[a] = np.full(n, np.nan)
            sp.top1[a] = np.full(n, -1, dtype=np.int64)
            if reference_kl:
                sp.kl_reference[a] = np.full(n, np.nan)
        else:
            sp.cand_logp[a] = np.full((n, width_c), np.nan)
    device = model_device(model)
    use_keep = padding_side == "left" and accepts_logits_to_keep(model)
    pad = pad_token_id(tokenizer)
    bos = tokenizer.bos_token_id
    batcher = Batcher.of(batch_size, device.type)
    with or_null(progress)(f"eval {name}", len(batcher.assigned(encoded)) * len(columns)) as advance:  # this rank's share

        def step(batch: Batch) -> None:
            rows = batch.index
            batch = batch.to(device)
            keep = max(encoded[i].response_len for i in rows) + 1
            last = (batch.pad_left + batch.prompt_len - 1).to(device)
            cand_batches = _candidate_batches(encoded, rows, mode, batcher, pad, padding_side, max_length, bos)
            if mode == MODE_SINGLE:
                cand_ids, cand_mask = _single_candidate_ids(encoded, rows, width_c, device)
            keep_p: dict[str, torch.Tensor] = {}
            sequences = dict.fromkeys(ids, 0)
            seconds = dict.fromkeys(ids, 0.0)
            for a, role in columns:
                _sync(device)
                t = time.perf_counter()
                with _active(model, a, role):
                    logp, start = _log_probs(model, batch, keep, use_keep)
                    tok_lp, mask = _target_token_log_probs(batch, logp, start)
                    sp.nll[a][rows] = (-tok_lp.double().sum(-1)).cpu().numpy()
                    at_last = logp[torch.arange(len(rows), device=device), last - start]  # (B, V)
                    if mode == MODE_SINGLE:
                        picked = at_last.gather(-1, cand_ids).double()
                        picked = torch.where(cand_mask, picked, torch.full_like(picked, float("nan")))
                        sp.cand_logp[a][rows, :] = picked.cpu().numpy()
                    elif mode == MODE_MULTI:
                        for pairs, cbatch, ckeep in cand_batches:
                            cbatch = cbatch.to(device)
                            clogp, cstart = _log_probs(model, cbatch, ckeep, use_keep)
                            ctok, _ = _target_token_log_probs(cbatch, clogp, cstart)
                            sums = ctok.double().sum(-1).cpu().numpy()
                            for (rec, cand), value in zip(pairs, sums):
                                sp.cand_logp[a][rec, cand] = value
                            sequences[a] += len(pairs)
                    else:
                        sp.top1[a][rows] = at_last.argmax(-1).cpu().numpy()
                        if not keep_p:
                            keep_p["original"] = logp  # the first column is the original
                        sp.kl_original[a][rows] = _vocab_kl(keep_p["original"], logp, mask).cpu().numpy()
                        if reference_kl:
                            if role == "reference":
                                keep_p["reference"] = logp
                            if "reference" in keep_p:
                                sp.kl_reference[a][rows] = _vocab_kl(keep_p["reference"], logp, mask).cpu().numpy()
                _sync(device)
                seconds[a] += time.perf_counter() - t
                sequences[a] += len(rows)
            for a in ids:  # the batch completed: count it (once)
                sp.forward_s[a] += seconds[a]
                sp.sequences[a] += sequences[a]
            advance(len(rows) * len(columns))

        batcher.run(encoded, step, pad_id=pad, padding_side=padding_side)
    if batcher.ranks.active:
        _merge_ranks(sp, batcher.assigned(encoded), batcher.ranks)
    for a in ids:
        bad = ~np.isfinite(sp.nll[a])
        if mode != MODE_VOCAB:
            bad |= np.any(np.isnan(sp.cand_logp[a]) & (np.arange(width_c)[None, :] < n_cands[:, None]), axis=1)
            bad |= np.any(np.isposinf(sp.cand_logp[a]), axis=1)
        if np.any(bad):
            row = int(np.argmax(bad))
            raise UcanRuntimeError(
                f"{a} produced NaN or infinite log-probabilities on {name} record line {sp.records[row].line}; "
                "check the adapter's weights and --dtype"
            )
    return sp, encode_s


def _merge_ranks(sp: SetPass, mine: Sequence[int], ranks) -> None:
    """Under a launcher, give every rank the whole set's arrays: each row comes from the one rank
    that ran it (the others contribute an exact 0), counters and seconds are summed."""
    own = np.zeros(sp.n, dtype=bool)
    own[list(mine)] = True
    for arrays in (sp.nll, sp.cand_logp, sp.kl_original, sp.kl_reference, sp.top1):
        for a, values in arrays.items():
            keep = own.reshape((-1,) + (1,) * (values.ndim - 1))
            arrays[a] = ranks.sum_array(np.where(keep, values, np.zeros((), dtype=values.dtype)))
    for a in sp.sequences:
        sp.sequences[a] = int(ranks.sum_array(np.array([sp.sequences[a]], dtype=np.int64))[0])
        sp.forward_s[a] = float(ranks.sum_array(np.array([sp.forward_s[a]], dtype=np.float64))[0])


def _single_candidate_ids(
    encoded: Sequence[Encoded], rows: Sequence[int], width: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C) token id of each single-token candidate and the mask of real candidates."""
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for r, i in enumerate(rows):
        cands = encoded[i].candidate_ids or ()
        ids[r, : len(cands)] = torch.tensor([c[0] for c in cands], dtype=torch.long)
        mask[r, : len(cands)] = True
    return ids.to(device), mask.to(device)


def _candidate_batches(
    encoded: Sequence[Encoded],
    rows: Sequence[int],
    mode: str,
    batcher: Batcher,
    pad: int,
    padding_side: str,
    max_length: int,
    bos: int | None,
) -> list[tuple[list[tuple[int, int]], Batch, int]]:
    """Teacher-forcing batches of prompt + candidate for every (record, candidate) of a batch.

    Built once per record batch and run under every adapter. A candidate is teacher-forced like a
    response without the eos; the prompt is the record's (already fitted) prompt, trimmed from
    the left when a long candidate would not fit --max-length.
    """
    if mode != MODE_MULTI:
        return []
    seqs: list[Encoded] = []
    pairs: list[tuple[int, int]] = []
    for i in rows:
        enc = encoded[i]
        longest = max(len(c) for c in enc.candidate_ids)  # type: ignore[union-attr]
        prompt = _fit_prompt(enc.prompt_ids, longest, max_length, bos)
        for j, cand in enumerate(enc.candidate_ids):  # type: ignore[arg-type]
            seqs.append(Encoded(input_ids=prompt + tuple(cand), prompt_len=len(prompt), truncated=0))
            pairs.append((i, j))
    out = []
    for chunk in batcher.cuts(seqs, batcher.order(seqs)):  # longest first; the batcher's current size and token budget
        keep = max(seqs[k].response_len for k in chunk) + 1
        out.append(([pairs[k] for k in chunk], collate([seqs[k] for k in chunk], chunk, pad, padding_side), keep))
    return out


def run_set(
    model,
    tokenizer,
    records: RecordSet | Sequence[Record],
    *,
    template: str = "alpaca",
    max_length: int | None = None,
    batch_size: int = 16,
    padding_side: str = "left",
    name: str = "data",
) -> SetPass:
    """One model (plain or PEFT with its active adapter) over one set: candidate log-probabilities, NLL, token counts.

    The arrays are under the id ``"model"``. Single-token candidates come from the one forward
    over prompt + response; multi-token candidates are teacher-forced (see the module docstring).
    """
    if padding_side not in ("left", "right"):
        raise InputError(f"padding side must be left or right, got {padding_side!r}")
    formatter = PromptFormatter(template, tokenizer)
    length = max_length or default_max_length(tokenizer, getattr(model, "config", None))
    sp, _ = _run_columns(
        model, tokenizer, name, list(records), [("model", "model")], formatter=formatter, max_length=length,
        batch_size=batch_size, padding_side=padding_side, reference_kl=False, progress=None,
    )
    return sp


# --------------------------------------------------------------------------- the whole evaluation


@dataclass
class EvalResult:
    """Everything ``ucan eval`` measured, ready for report/eval.py.

    ``results[adapter][group][metric]`` holds floats, ints or None (groups: forget, retain,
    holdout, tradeoff, reference, privacy, cost; see docs/report-schema.md); ``null_reasons``
    says why a value is None; ``ci`` / ``ci_vs_original`` hold paired-bootstrap 95% intervals
    ([lo, hi]) of a value and of its difference to the original's. ``passes`` keeps the raw
    per-record arrays and ``per_record`` the per-record metric values (for records.jsonl).
    """

    adapters: list[AdapterEntry]
    ks: tuple[int, ...]
    data: dict[str, dict]
    results: dict[str, dict[str, dict[str, Any]]]
    null_reasons: dict[str, dict[str, str]]
    ci: dict[str, dict[str, dict[str, list[float]]]]
    ci_vs_original: dict[str, dict[str, dict[str, list[float]]]]
    memorization_gap: dict | None
    warnings: list[str]
    cost: dict
    settings: dict
    passes: dict[str, SetPass] = field(repr=False, default_factory=dict)
    per_record: dict[str, dict[str, dict[str, np.ndarray]]] = field(repr=False, default_factory=dict)

    @property
    def unlearned_ids(self) -> list[str]:
        return [a.id for a in self.adapters if a.role == "unlearned"]

    def value(self, adapter: str, path: str) -> Any:
        """The value at ``group.metric`` for one adapter (None when absent or null)."""
        group, _, metric = path.partition(".")
        return self.results.get(adapter, {}).get(group, {}).get(metric)


def check_settings(ks: Sequence[int], bootstrap: int) -> tuple[int, ...]:
    """The cut-offs K (positive integers, duplicates dropped, at least one) and the bootstrap
    count (a non-negative integer), checked; returns the K values (exit 2 on a bad one)."""
    checked = tuple(dict.fromkeys(M._check_k(k) for k in ks))
    if not checked:
        raise InputError("-k: at least one K is required")
    if isinstance(bootstrap, bool) or not isinstance(bootstrap, int) or bootstrap < 0:
        raise InputError(f"--bootstrap must be a non-negative integer, got {bootstrap!r}")
    return checked


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "ru_maxrss (process peak RSS)"


def _as_records(x: RecordSet | Sequence[Record] | str | Path, role: str) -> tuple[tuple[Record, ...], dict]:
    if isinstance(x, (str, Path)):
        from ucan_cli.io.data import read_records

        x = read_records(x, role)
    if isinstance(x, RecordSet):
        return x.records, {"path": str(x.path), "sha256": x.sha256, "records_total": x.n_total or len(x)}
    recs = tuple(x)
    return recs, {"path": None, "sha256": None, "records_total": len(recs)}


def evaluate(
    model,
    tokenizer,
    adapters: Sequence[AdapterEntry],
    forget: RecordSet | Sequence[Record] | str | Path,
    retain: RecordSet | Sequence[Record] | str | Path,
    holdout: RecordSet | Sequence[Record] | str | Path | None = None,
    *,
    ks: Sequence[int] = M.DEFAULT_KS,
    bootstrap: int = 1000,
    seed: int = 0,
    batch_size: int | str = 16,
    max_length: int | None = None,
    template: str = "alpaca",
    padding_side: str = "left",
    device: str = "auto",
    dtype: str = "auto",
    progress: ProgressFactory | None = None,
    max_batch_tokens: int | None = None,
) -> EvalResult:
    """Evaluate every adapter of ``adapters`` (from ``adapter_entries``) on the record sets.

    ``model`` is a plain (not PEFT-wrapped) causal LM in eval mode, or a model id / path that is
    loaded here (with ``device`` and ``dtype``; ``tokenizer`` None loads the model's own). The
    adapters are attached for the run and removed afterwards, so the caller gets its base model
    back unchanged. Record sets may be paths. ``bootstrap`` is the number of paired resamples
    for the CIs (0: none). ``batch_size`` may be ``"auto"`` (halve on out-of-memory) and
    ``max_batch_tokens`` bounds rows x longest row (``ucan_cli.runtime.batching``); ``settings``
    records the size finally used. Raises InputError for bad K, adapters that do not fit the model, or
    empty sets; UcanRuntimeError when a model produces NaN. Example::

        entries = adapter_entries("./lora", ["./lora-forgot"], reference="./retrained")
        result = evaluate("./base", None, entries, "forget.jsonl", "retain.jsonl", "holdout.jsonl")
        result.results["unlearned_1"]["tradeoff"]["retain@10"]
    """
    from peft import PeftModel

    t_start = time.perf_counter()
    ks = check_settings(ks, bootstrap)
    if not adapters or adapters[0].role != "original":
        raise InputError("the first adapter must be the original")
    sets = {"forget": _as_records(forget, "forget"), "retain": _as_records(retain, "retain")}
    if holdout is not None:
        sets["holdout"] = _as_records(holdout, "holdout")
    for name, (recs, _) in sets.items():
        if not recs:
            raise InputError(f"the {name} set has no records")
    if isinstance(model, (str, Path)):
        from ucan_cli.runtime.models import load_base_model, load_tokenizer

        tokenizer = tokenizer if tokenizer is not None else load_tokenizer(str(model))
        model = load_base_model(str(model), device=device, dtype=dtype)
    if isinstance(model, PeftModel):
        raise InputError("evaluate() takes the plain base model; it attaches the adapters itself")
    check_against_base(adapters, model)
    run_device = model_device(model)
    batcher = Batcher(batch_size, max_tokens=max_batch_tokens, device_type=run_device.type)
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    formatter = PromptFormatter(template, tokenizer)
    length = max_length or default_max_length(tokenizer, model.config)

    t = time.perf_counter()
    original = adapters[0]
    with hf_quiet():
        peft_model = PeftModel.from_pretrained(model, str(original.path), adapter_name=original.id, is_trainable=False)
    try:
        with hf_quiet():
            for e in adapters[1:]:
                if e.path is not None:
                    peft_model.load_adapter(str(e.path), adapter_name=e.id, is_trainable=False)
        peft_model.eval()
        attach_s = time.perf_counter() - t
        # original first (p of the vocabulary KL), then the reference (p of the reference KL)
        run_order = sorted(adapters, key=lambda e: {"original": 0, "reference": 1}.get(e.role, 2))
        columns = [(e.id, e.role) for e in run_order]
        has_ref = any(e.role == "reference" for e in adapters)
        passes: dict[str, SetPass] = {}
        encode_s = 0.0
        for name, (recs, _) in sets.items():
            sp, enc_s = _run_columns(
                peft_model, tokenizer, name, recs, columns, formatter=formatter, max_length=length,
                batch_size=batcher, padding_side=padding_side, reference_kl=has_ref and name == "forget",
                progress=progress,
            )
            passes[name] = sp
            encode_s += enc_s
    finally:
        peft_model.unload()
    forward_s = sum(sum(sp.forward_s.values()) for sp in passes.values())

    t = time.perf_counter()
    summary = summarize(passes, adapters, ks, sets["retain"][0], bootstrap=bootstrap, seed=seed)
    metrics_s = time.perf_counter() - t
    scopes, hinfo = summary.scopes, summary.holdout

    total_records = sum(sp.n for sp in passes.values()) * len(adapters)
    peak, peak_source = _peak_memory(run_device)
    wall = time.perf_counter() - t_start
    cost = {
        "wall_s": wall,
        "stages": {"attach_adapters_s": attach_s, "encode_s": encode_s, "forward_s": forward_s, "metrics_s": metrics_s},
        "sequences": int(sum(sum(sp.sequences.values()) for sp in passes.values())),
        "record_passes": int(total_records),
        "samples_per_s": total_records / forward_s if forward_s > 0 else None,
        "peak_memory_bytes": peak,
        "peak_memory_source": peak_source,
        "device": str(run_device),
    }
    data: dict[str, dict] = {}
    for name, sp in passes.items():
        info = dict(sets[name][1])
        info.update(
            records=sp.n,
            scoring=sp.mode,
            records_without_candidates=sp.missing_candidates,
            max_candidates=int(sp.n_candidates.max()) if sp.n_candidates.size else 0,
            min_candidates=int(sp.n_candidates.min()) if sp.n_candidates.size else 0,
            response_tokens=int(sp.tokens.sum()),
            truncated_records=int(np.count_nonzero(sp.truncated)),
            scope_records=int(scopes[name].size),
            scope=hinfo.get("scope", f"all {name} records") if name == "holdout" else f"all {name} records",
        )
        data[name] = info
    settings = {
        "ks": list(ks), "bootstrap": bootstrap, "seed": seed, "batch_size": batcher.size, "batch": batcher.meta(),
        "max_length": length,
        "template": template, "padding_side": padding_side, "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
        "device": str(run_device),
    }
    return EvalResult(
        adapters=list(adapters),
        ks=ks,
        data=data,
        results=summary.results,
        null_reasons=summary.null_reasons,
        ci=summary.ci,
        ci_vs_original=summary.ci_vs_original,
        memorization_gap=summary.memorization_gap,
        warnings=adapter_warnings(adapters) + summary.warnings,
        cost=cost,
        settings=settings,
        passes=passes,
        per_record=summary.per_record,
    )

