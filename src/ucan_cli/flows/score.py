"""The Python API: what the CLI commands do, callable from a notebook or a script.

``score`` runs U-CAN steps 1-5 on a base model, a LoRA adapter and forget/retain records, and
returns the statistics, the scores and everything a report needs; ``score_dry_run`` does all the
checks and times one probe batch instead of the passes. The order of work follows SPEC section 6
(safety): every file is read and validated first (records, adapter, options, receipt key,
template, the adapter against the base model's module tree, tokenization), so every input error
(exit 2) comes before any model weight is loaded.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ucan_cli._version import __version__
from ucan_cli.methods.ucan.statistics import Statistics, collect_statistics, method_inputs, scope_token_count
from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.data import RecordSet, check_disjoint, read_records
from ucan_cli.io.tokenize import Encoded
from ucan_cli.progress import ProgressFactory
from ucan_cli.methods.ucan.params import TOKEN_SCOPES, MethodParams
from ucan_cli.methods.ucan.scoring import ScoreResult, compute_scores
from ucan_cli.methods.ucan.verdict import contrast_overview
from ucan_cli.runtime.batching import Batcher, check_max_batch_tokens, fixed_batch_size, parse_batch_size


@dataclass
class ScoreRun:
    """What ``score`` produced.

    Attributes:
        stats: the raw step-1 statistics (what the score file keeps).
        result: steps 2-5 (``ScoreResult``), or None when nothing is eligible.
        meta: provenance for the score file (hashes, receipt, options, counts, versions).
        nothing_to_do: the ``NothingToDo`` that ``compute_scores`` raised (k = 0), or None.
        timings: seconds per phase, and tokens per second of the passes.
        overview: the contrast against the noise reference and the verdict (``contrast_overview``).
        warnings: things the user should know (adapter warnings, truncation).
    """

    stats: Statistics
    result: ScoreResult | None
    meta: dict
    nothing_to_do: NothingToDo | None
    timings: dict
    overview: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


@dataclass
class ScorePlan:
    """What ``score_dry_run`` found: counts, one probe batch's time and the estimate."""

    meta: dict
    counts: dict
    probe: dict
    estimate_s: float
    warnings: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Preparation shared by score, score_dry_run and the model methods of attenuate (flows/model_inputs.py)


@dataclass
class Prepared:
    params: MethodParams
    token_scope: str
    forget: RecordSet
    retain: RecordSet
    adapter: LoraAdapter
    adapter_given: bool  # passed as a LoraAdapter object rather than a directory
    tokenizer: Any
    model: Any  # loaded base model, or None until loaded
    user_model: bool
    base_spec: str | None
    forget_encoded: list[Encoded]
    retain_encoded: list[Encoded]
    halves: tuple[list[int], list[int]]
    max_length: int
    meta: dict
    warnings: list[str]
    timings: dict


def _check_options(params, token_scope, batch_size, max_length, max_samples, retain_max_samples) -> None:
    params.validate()
    if token_scope not in TOKEN_SCOPES:
        raise InputError(f"--token-scope must be one of {', '.join(TOKEN_SCOPES)}, got {token_scope!r}")
    parse_batch_size(batch_size)
    if max_length is not None and max_length < 2:
        raise InputError(f"--max-length must be at least 2, got {max_length}")
    if max_samples is not None and max_samples < 1:
        raise InputError(f"--max-samples must be positive, got {max_samples}")
    if retain_max_samples is not None and retain_max_samples < 1:
        raise InputError(f"--retain-max-samples must be positive, got {retain_max_samples}")


def _read_set(source, role: str) -> RecordSet:
    if isinstance(source, RecordSet):
        return source
    return read_records(source, role)


def _check_template(template: str) -> None:
    from ucan_cli.io.prompts import BUILTIN_TEMPLATES, PromptFormatter

    if template not in BUILTIN_TEMPLATES:
        PromptFormatter(template)  # raises InputError for a missing file or a syntax error


def _versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    return {"ucan": __version__, "torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}


def prepare(
    base, adapter, forget, retain, *, params, token_scope, halves, template, max_length, retain_max_samples, max_samples,
    seed, batch_size, allow_overlap, receipt_key, allow_pickle, trust_remote_code,
) -> Prepared:
    """Everything up to (not including) loading the model weights; all input errors surface here."""
    from ucan_cli.runtime.models import check_adapter_matches_base, load_tokenizer, model_skeleton, resolve_source
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.receipts import key_fingerprint, load_or_create_key, set_receipt
    from ucan_cli.io.tokenize import default_max_length, encode_set

    t0 = time.perf_counter()
    _check_options(params, token_scope, batch_size, max_length, max_samples, retain_max_samples)
    _check_template(template)

    forget_set = _read_set(forget, "forget")
    retain_set = _read_set(retain, "retain")
    check_disjoint(forget_set, retain_set, allow_overlap=allow_overlap)
    forget_file = forget_set  # the deletion request is the whole file, whatever --max-samples scores
    forget_set = forget_set.sample(max_samples, seed)
    retain_cap = min(x for x in (max_samples, retain_max_samples, len(retain_set)) if x is not None)
    retain_set = retain_set.sample(retain_cap, seed)
    if len(retain_set) < 2:
        raise InputError(f"{retain_set.path}: the retain set needs at least 2 records (its two halves are the noise reference)")

    loaded = adapter if isinstance(adapter, LoraAdapter) else LoraAdapter.load(adapter, allow_pickle=allow_pickle)
    loaded.check_supported()
    warnings = list(loaded.warnings())

    key = load_or_create_key(receipt_key)

    user_model = isinstance(base, tuple)
    if user_model:
        if len(base) != 2:
            raise InputError("base must be a model id/path or a (model, tokenizer) pair")
        model, tokenizer = base
        if hasattr(model, "peft_config"):
            raise InputError("pass the base model, not a PeftModel: ucan attaches the adapter itself")
        check_adapter_matches_base(loaded, model)
        config = model.config
        base_spec = None
    else:
        base_spec = str(base)
        source = resolve_source(base_spec)
        model = None
        config = None
        if not source.gguf_file:  # a GGUF file has no separate config: it is checked once loaded
            skeleton = model_skeleton(base_spec, trust_remote_code=trust_remote_code)
            check_adapter_matches_base(loaded, skeleton)
            config = skeleton.config
            del skeleton
        tokenizer = load_tokenizer(base_spec, trust_remote_code=trust_remote_code)

    formatter = PromptFormatter(template, tokenizer=tokenizer)
    max_len = max_length if max_length is not None else default_max_length(tokenizer, config)
    forget_encoded = encode_set(forget_set, tokenizer, formatter, max_len)
    retain_encoded = encode_set(retain_set, tokenizer, formatter, max_len)
    halves_mode = retain_set.resolve_halves(halves)
    halves = retain_set.split_halves(seed, halves_mode)

    truncated = {
        "forget_records": sum(e.truncated > 0 for e in forget_encoded),
        "forget_tokens": sum(e.truncated for e in forget_encoded),
        "retain_records": sum(e.truncated > 0 for e in retain_encoded),
        "retain_tokens": sum(e.truncated for e in retain_encoded),
    }
    if truncated["forget_records"] or truncated["retain_records"]:
        warnings.append(
            f"{truncated['forget_records']} forget and {truncated['retain_records']} retain records exceed "
            f"--max-length {max_len} and lost prompt tokens from the left"
        )
    tokens = {
        "forget_scope": scope_token_count(forget_encoded, token_scope),
        "retain_scope": scope_token_count(retain_encoded, token_scope),
        "forget_total": scope_token_count(forget_encoded, "all"),
        "retain_total": scope_token_count(retain_encoded, "all"),
    }
    base_meta: dict[str, Any]
    if user_model:
        base_meta = {"id": getattr(model.config, "_name_or_path", None) or None, "loaded": True}
    else:
        path = Path(base_spec).expanduser()
        base_meta = {"id": base_spec, "path": str(path.resolve()) if path.exists() else None}
    meta = {
        "adapter_sha256": loaded.sha256,
        "adapter_path": str(loaded.path),
        "forget_sha256": forget_set.sha256,
        "retain_sha256": retain_set.sha256,
        "forget_receipt": set_receipt(key, forget_file.records),
        "receipt_key_fingerprint": key_fingerprint(key),
        "base": base_meta,
        "unit": params.unit,
        "scope": token_scope,
        "halves": halves_mode,
        "template": template,
        "max_length": max_len,
        "seed": seed,
        "max_samples": max_samples,
        "retain_max_samples": retain_max_samples,
        "allow_overlap": allow_overlap,
        "n_forget": len(forget_set),
        "n_retain": len(retain_set),
        "n_forget_file": forget_set.n_total,
        "n_retain_file": retain_set.n_total,
        "n_half_a": len(halves[0]),
        "n_half_b": len(halves[1]),
        "tokens": tokens,
        "truncated": truncated,
        "params": asdict(params),
        "versions": _versions(),
    }
    timings = {"prepare_s": time.perf_counter() - t0}
    return Prepared(
        params=params, token_scope=token_scope, forget=forget_set, retain=retain_set, adapter=loaded,
        adapter_given=isinstance(adapter, LoraAdapter),
        tokenizer=tokenizer, model=model, user_model=user_model, base_spec=base_spec,
        forget_encoded=forget_encoded, retain_encoded=retain_encoded, halves=halves, max_length=max_len,
        meta=meta, warnings=warnings, timings=timings,
    )


@contextlib.contextmanager
def adapted_model(prep: Prepared, *, device: str, dtype: str, allow_pickle: bool, trust_remote_code: bool) -> Iterator[Any]:
    """Load the base model (unless given), attach the adapter; a user's model is restored after."""
    import tempfile

    from ucan_cli.runtime.models import attach_adapter, check_adapter_matches_base, load_base_model

    t0 = time.perf_counter()
    model = prep.model
    if model is None:
        model = load_base_model(prep.base_spec, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        check_adapter_matches_base(prep.adapter, model)
    with tempfile.TemporaryDirectory(prefix="ucan-adapter-") as tmp:
        adapter_dir = prep.adapter.path
        if prep.adapter_given:  # an in-memory adapter may differ from its files: attach its own tensors
            prep.adapter.write_into(Path(tmp))
            adapter_dir = Path(tmp)
        peft_model = attach_adapter(model, adapter_dir)
    prep.meta["dtype"] = str(next(model.parameters()).dtype).replace("torch.", "")
    prep.meta["device_type"] = next(model.parameters()).device.type
    prep.timings["load_model_s"] = time.perf_counter() - t0
    try:
        yield peft_model
    finally:
        if prep.user_model:
            peft_model.unload()


def _pad_id(tokenizer) -> int:
    from ucan_cli.io.tokenize import pad_token_id

    return pad_token_id(tokenizer)


# --------------------------------------------------------------------------------------------
# Public entry points


def score(
    base,
    adapter,
    forget,
    retain,
    *,
    params: MethodParams = MethodParams(),
    token_scope: str = "response",
    halves: str = "auto",
    template: str = "alpaca",
    max_length: int | None = None,
    retain_max_samples: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int | str = 16,
    device: str = "auto",
    dtype: str = "auto",
    allow_overlap: bool = False,
    receipt_key: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: ProgressFactory | None = None,
    max_batch_tokens: int | None = None,
) -> ScoreRun:
    """U-CAN steps 1-5: statistics on D_f and D_r, then risk, utility, fusion, budget, factors.

    Args:
        base: a base model id or path, or a ``(model, tokenizer)`` pair already loaded (the model
            is used on its own device and dtype, and restored after the adapter is detached).
        adapter: a LoRA adapter directory, or a ``LoraAdapter``.
        forget, retain: record files (JSONL, Parquet, ...) or ``RecordSet``s.
        params: method options (``params.unit`` picks output or rank units).
        token_scope: ``response`` (default), ``last`` or ``all``.
        halves: how D_r splits into the noise reference's halves: ``users`` (each user's records in
            one half), ``records``, or ``auto`` (``users`` when every retain record has a user_id).
        template: prompt template (``alpaca``, ``plain``, ``chat`` or a Jinja2 file).
        max_length: token limit per record (default min(model max, 1024)).
        retain_max_samples: at most this many retain records (a seeded sample).
        max_samples: at most this many records per set (a seeded sample).
        seed: seeds the samples and the split of D_r into halves.
        batch_size, device, dtype: how the passes run; ``batch_size="auto"`` halves on
            out-of-memory (``ucan_cli.runtime.batching``); ``meta["batch"]`` records the size used.
        allow_overlap: allow the same id / user_id in both sets.
        receipt_key: the HMAC key file for the forget receipt (default: the user config dir).
        allow_pickle, trust_remote_code: model loading permissions.
        progress: a progress factory (one bar per pass).
        max_batch_tokens: at most this many padded tokens (rows x longest row) per batch.

    Returns a ``ScoreRun``. When no unit is eligible, ``result`` is None and ``nothing_to_do``
    holds the reason; the statistics are still there (and worth saving).

    Raises ``InputError`` (before any model weight loads) for bad files or options,
    ``UcanRuntimeError`` for failures while computing.
    """
    t0 = time.perf_counter()
    check_max_batch_tokens(max_batch_tokens)
    prep = prepare(
        base, adapter, forget, retain, params=params, token_scope=token_scope, halves=halves, template=template,
        max_length=max_length, retain_max_samples=retain_max_samples, max_samples=max_samples, seed=seed,
        batch_size=batch_size, allow_overlap=allow_overlap, receipt_key=receipt_key, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    with adapted_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) as model:
        t1 = time.perf_counter()
        batcher = Batcher(batch_size, max_tokens=max_batch_tokens, device_type=prep.meta["device_type"])
        stats = collect_statistics(
            model, prep.adapter, prep.forget_encoded, prep.retain_encoded, halves=prep.halves, unit=params.unit,
            scope=token_scope, batch_size=batcher, pad_id=_pad_id(prep.tokenizer), progress=progress,
        )
        prep.meta["batch"] = batcher.meta()
        prep.timings["passes_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    result: ScoreResult | None = None
    nothing: NothingToDo | None = None
    try:
        result = compute_scores(**method_inputs(stats), params=params)
    except NothingToDo as exc:
        nothing = exc
    prep.timings["scoring_s"] = time.perf_counter() - t2
    prep.timings["total_s"] = time.perf_counter() - t0
    tokens = prep.meta["tokens"]["forget_total"] + prep.meta["tokens"]["retain_total"]
    prep.timings["tokens_per_s"] = tokens / prep.timings["passes_s"] if prep.timings["passes_s"] > 0 else None
    overview = contrast_overview(result if result is not None else nothing.result)
    meta = dict(prep.meta)
    meta["verdict"] = {k: v for k, v in overview.items() if k != "arrays"}
    meta["summary"] = result.summary() if result is not None else nothing.details
    return ScoreRun(
        stats=stats, result=result, meta=meta, nothing_to_do=nothing, timings=prep.timings, overview=overview,
        warnings=prep.warnings,
    )


def _padded_tokens(encoded: Sequence[Encoded], batch_size: int) -> int:
    """Positions the passes compute (rows x padded width per batch, longest first)."""
    lengths = sorted((len(e.input_ids) for e in encoded), reverse=True)
    return sum(len(lengths[i : i + batch_size]) * lengths[i] for i in range(0, len(lengths), batch_size))


def score_dry_run(
    base,
    adapter,
    forget,
    retain,
    *,
    params: MethodParams = MethodParams(),
    token_scope: str = "response",
    halves: str = "auto",
    template: str = "alpaca",
    max_length: int | None = None,
    retain_max_samples: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int | str = 16,
    device: str = "auto",
    dtype: str = "auto",
    allow_overlap: bool = False,
    receipt_key: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
) -> ScorePlan:
    """Every check of ``score``, then one probe batch (the longest) instead of the passes.

    The estimate scales the probe's time per computed position (rows x padded width) to all the
    positions both passes would compute; the longest batch pads least, so this errs high.
    """
    prep = prepare(
        base, adapter, forget, retain, params=params, token_scope=token_scope, halves=halves, template=template,
        max_length=max_length, retain_max_samples=retain_max_samples, max_samples=max_samples, seed=seed,
        batch_size=batch_size, allow_overlap=allow_overlap, receipt_key=receipt_key, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    batch_size = fixed_batch_size(batch_size, device)  # auto: the probe times its start size
    everything = prep.forget_encoded + prep.retain_encoded
    longest = sorted(range(len(everything)), key=lambda i: -len(everything[i].input_ids))[:batch_size]
    probe = [everything[i] for i in longest]
    with adapted_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code) as model:
        seconds = 0.0
        for _ in range(2):  # the first call includes one-off warm-up; time a second one when cheap
            t = time.perf_counter()
            collect_statistics(
                model, prep.adapter, probe, [], halves=([], []), unit=params.unit, scope=token_scope,
                batch_size=batch_size, pad_id=_pad_id(prep.tokenizer),
            )
            seconds = time.perf_counter() - t
            if seconds > 1.0:
                break
    probe_positions = _padded_tokens(probe, batch_size)
    total_positions = _padded_tokens(prep.forget_encoded, batch_size) + _padded_tokens(prep.retain_encoded, batch_size)
    estimate = seconds / probe_positions * total_positions if probe_positions else 0.0
    counts = {
        "n_forget": prep.meta["n_forget"],
        "n_retain": prep.meta["n_retain"],
        "n_half_a": prep.meta["n_half_a"],
        "n_half_b": prep.meta["n_half_b"],
        "tokens": prep.meta["tokens"],
        "truncated": prep.meta["truncated"],
        "positions": total_positions,
        "batches": math.ceil(len(prep.forget_encoded) / batch_size) + math.ceil(len(prep.retain_encoded) / batch_size),
        "units": sum(m.d_out if params.unit == "output" else m.r for m in prep.adapter.modules),
        "modules": len(prep.adapter.modules),
    }
    return ScorePlan(
        meta=prep.meta,
        counts=counts,
        probe={"records": len(probe), "positions": probe_positions, "seconds": seconds},
        estimate_s=estimate,
        warnings=prep.warnings,
    )


__all__ = [
    "ScorePlan",
    "ScoreRun",
    "score",
    "score_dry_run",
]
