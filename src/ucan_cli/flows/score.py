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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ucan_cli._version import __version__
from ucan_cli.methods.ucan.statistics import Statistics, collect_statistics, method_inputs, scope_token_count
from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.data import RecordSet, check_disjoint, read_records
from ucan_cli.io.tokenize import Encoded
from ucan_cli.progress import ProgressFactory
from ucan_cli.runtime.load import LoadSpec
from ucan_cli.methods.ucan.params import TOKEN_SCOPES, MethodParams, params_to_dict
from ucan_cli.methods.ucan.scoring import ScoreResult, compute_scores
from ucan_cli.methods.ucan.verdict import contrast_overview
from ucan_cli.runtime.batching import Batcher, check_max_batch_tokens, fixed_batch_size, parse_batch_size
from ucan_cli.runtime.distributed import current as current_ranks


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
        statistics_from: ``"forward pass"``, or ``"cache"`` when the statistics cache had them
            (``cache_dir``; then no model weight loaded).
        model: with ``keep_model``, the ``(model, tokenizer)`` this run loaded for its passes, the
            adapter detached (None when the statistics came from the cache or the caller gave the
            model).
    """

    stats: Statistics
    result: ScoreResult | None
    meta: dict
    nothing_to_do: NothingToDo | None
    timings: dict
    overview: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    statistics_from: str = "forward pass"
    model: tuple | None = None


@dataclass
class ScorePlan:
    """What ``score_dry_run`` found: counts, one probe batch's time and the estimate."""

    meta: dict
    counts: dict
    probe: dict
    estimate_s: float | None  # None for a base without weights (no probe)
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


def sampled_sets(forget, retain, *, max_samples: int | None, retain_max_samples: int | None, seed: int,
                 allow_overlap: bool = False) -> tuple[RecordSet, RecordSet, RecordSet]:
    """(the forget file's records, the forget records scored, the retain records scored): both sets
    read (paths or ``RecordSet``), checked disjoint, and sampled as ``--max-samples``,
    ``--retain-max-samples`` and ``--seed`` say. The statistics pass and ``--retain-kl``'s search
    both read their records here, so they see the same ones."""
    forget_file, retain_set = _read_set(forget, "forget"), _read_set(retain, "retain")
    check_disjoint(forget_file, retain_set, allow_overlap=allow_overlap)
    retain_cap = min(x for x in (max_samples, retain_max_samples, len(retain_set)) if x is not None)
    return forget_file, forget_file.sample(max_samples, seed), retain_set.sample(retain_cap, seed)


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

    # the deletion request is the whole forget file, whatever --max-samples scores
    forget_file, forget_set, retain_set = sampled_sets(
        forget, retain, max_samples=max_samples, retain_max_samples=retain_max_samples, seed=seed, allow_overlap=allow_overlap,
    )
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
        "params": params_to_dict(params),
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
def adapted_model(prep: Prepared, *, device: str, dtype: str, allow_pickle: bool, trust_remote_code: bool, load=None) -> Iterator[Any]:
    """Load the base model (unless given), attach the adapter; a user's model is restored after.

    ``load`` (a ``runtime.load.LoadSpec``) replaces ``device`` and ``dtype`` and may quantize or
    device-map the base; such a load is recorded in ``prep.meta["load"]``."""
    import tempfile

    from ucan_cli.runtime.load import LoadSpec
    from ucan_cli.runtime.models import attach_adapter, check_adapter_matches_base, load_base_model

    t0 = time.perf_counter()
    model = prep.model
    load = LoadSpec.merge(load, device=device, dtype=dtype)
    if model is None:
        model = load_base_model(prep.base_spec, load=load, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
        check_adapter_matches_base(prep.adapter, model)
        if load.places_itself:
            prep.meta["load"] = load.describe()
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


def _collect(model, prep: Prepared, forget_encoded, retain_encoded, halves, params, scope, batch_size, progress):
    """Step 1 for the run's unit kind: per-unit activation statistics, or (direction units) the
    second moments of each module's input. ``batch_size``: rows, ``"auto"`` or a ``Batcher``."""
    if params.unit == "direction":
        from ucan_cli.methods.ucan.moments import collect_moments

        return collect_moments(
            model, prep.adapter, forget_encoded, retain_encoded, halves=halves, scope=scope, batch_size=batch_size,
            pad_id=_pad_id(prep.tokenizer), max_memory=params.max_memory, progress=progress,
        )
    return collect_statistics(
        model, prep.adapter, forget_encoded, retain_encoded, halves=halves, unit=params.unit, scope=scope,
        batch_size=batch_size, pad_id=_pad_id(prep.tokenizer), progress=progress,
    )


def direction_overview(result, verdict=None) -> dict:
    """The verdict of direction units in the shape ``score`` reports (``contrast_overview``'s keys
    that apply): ``verdict`` (``noise`` when ``verdict`` is None, i.e. nothing to do), ``sentence``,
    the counts above lambda0 and the per-module rows."""
    from ucan_cli.methods.ucan.verdict import NOISE_SENTENCE

    summary = result.summary()
    if verdict is None:
        kind, sentence = ("noise", NOISE_SENTENCE) if summary["n_modules_live"] else ("dead", "no module saw scoped tokens in every set")
    else:
        kind, sentence = verdict.kind, verdict.sentence
    return {
        "n_units": summary["n_units"], "n_live": summary["n_live"], "n_above_lambda0": summary["n_above_lambda0"],
        "n_noise_above_lambda0": summary["n_noise_above_lambda0"], "max_lambda_over_lambda0": summary["max_lambda_over_lambda0"],
        "n_eligible": summary["n_eligible"], "k": summary["k"], "verdict": kind, "sentence": sentence,
    }


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
    cache_dir: str | Path | None = None,
    load=None,
    max_batch_tokens: int | None = None,
    keep_model: bool = False,
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
        cache_dir: a statistics cache directory (``ucan_cli.io.statcache``): statistics found
            there skip the model and the passes, and fresh ones are stored; None (the default)
            uses no cache. The results are the same either way.
        load: a ``runtime.load.LoadSpec`` (device, dtype, ``--device-map``, ``--load-in-4bit`` /
            ``--load-in-8bit``) instead of ``device`` and ``dtype``; a quantized or device-mapped
            load is part of the cache key and recorded in ``meta["load"]``.
        max_batch_tokens: at most this many padded tokens (rows x longest row) per batch.
        keep_model: keep the base model this run loads (the adapter detached) in ``ScoreRun.model``
            for a caller that needs it next (``attenuate --retain-kl``'s search), instead of
            loading it twice.

    Under a launcher (torchrun; ``runtime.distributed``) every rank runs its share of the batches
    and ends with the sums of all of them: the statistics (and the result) of the one-process run.

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
    load = LoadSpec.merge(load, device=device, dtype=dtype)
    ranks = current_ranks()
    stats, cache, key, document, kept = None, None, None, None, None
    if cache_dir is not None:
        stats, cache, key, document = _cached_statistics(prep, cache_dir, template=template, load=load, batch_size=batch_size,
                                                         max_batch_tokens=max_batch_tokens)
        if not ranks.all_true(stats is not None):  # every rank runs the passes, or none
            stats = None
    statistics_from = "cache" if stats is not None else "forward pass"
    if stats is None:
        with adapted_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, load=load) as model:
            t1 = time.perf_counter()
            batcher = Batcher(batch_size, max_tokens=max_batch_tokens, device_type=prep.meta["device_type"], ranks=ranks)
            stats = _collect(model, prep, prep.forget_encoded, prep.retain_encoded, prep.halves, params, token_scope, batcher, progress)
            prep.meta["batch"] = batcher.meta()
            prep.timings["passes_s"] = time.perf_counter() - t1
            if keep_model and not prep.user_model:  # a caller's model is restored by adapted_model itself
                kept = (model.unload(), prep.tokenizer)
        if cache is not None and ranks.main:
            entry = {"dtype": prep.meta["dtype"], "device_type": prep.meta["device_type"], "batch": prep.meta["batch"],
                     "cache_document": document}
            prep.warnings.extend(w for w in [cache.store(key, stats, entry)] if w)
    t2 = time.perf_counter()
    result: ScoreResult | None = None
    nothing: NothingToDo | None = None
    try:
        if params.unit == "direction":
            from ucan_cli.methods.ucan.direction import select_directions

            result, verdict = select_directions(stats, params)
        else:
            result = compute_scores(**method_inputs(stats), params=params)
    except NothingToDo as exc:
        nothing = exc
    prep.timings["scoring_s"] = time.perf_counter() - t2
    prep.timings["total_s"] = time.perf_counter() - t0
    tokens = prep.meta["tokens"]["forget_total"] + prep.meta["tokens"]["retain_total"]
    prep.timings["tokens_per_s"] = tokens / prep.timings["passes_s"] if prep.timings["passes_s"] > 0 else None
    if params.unit == "direction":
        overview = direction_overview(result if result is not None else nothing.result, None if result is None else verdict)
    else:
        overview = contrast_overview(result if result is not None else nothing.result)
    meta = dict(prep.meta)
    meta["verdict"] = {k: v for k, v in overview.items() if k != "arrays"}
    meta["summary"] = result.summary() if result is not None else nothing.details
    return ScoreRun(
        stats=stats, result=result, meta=meta, nothing_to_do=nothing, timings=prep.timings, overview=overview,
        warnings=prep.warnings, statistics_from=statistics_from, model=kept,
    )


def _cached_statistics(prep: Prepared, cache_dir, *, template, load, batch_size, max_batch_tokens=None):
    """Look this run's statistics up in the cache: ``(statistics or None, cache, key, key
    document)``; cache and key are None when the base cannot be identified (a warning says so).
    On a hit, the dtype and device the statistics were computed with go into ``prep.meta``."""
    from ucan_cli.io.statcache import StatCache, adapter_fingerprint, base_fingerprint, cache_key, template_fingerprint
    from ucan_cli.methods.ucan.scorefile import SCHEMA_VERSION
    from ucan_cli.runtime.models import resolve_device, resolve_dtype

    base_doc, reason = base_fingerprint(prep.base_spec)
    if base_doc is None:
        prep.warnings.append(f"statistics cache not used: {reason}")
        return None, None, None, None
    resolved = resolve_device(load.device)
    meta = prep.meta
    document = {
        "base": base_doc,
        "adapter": adapter_fingerprint(prep.adapter, in_memory=prep.adapter_given),
        "forget_sha256": meta["forget_sha256"],
        "retain_sha256": meta["retain_sha256"],
        "template": template_fingerprint(template),
        "options": {
            **{k: meta[k] for k in ("unit", "scope", "halves", "max_length", "max_samples", "retain_max_samples", "seed", "allow_overlap")},
            "device": str(resolved), "dtype": str(resolve_dtype(load.dtype, resolved)), "batch_size": batch_size,
            **({"max_batch_tokens": max_batch_tokens} if max_batch_tokens is not None else {}),
            # several processes add the same float64 sums in another order: their own entries
            **({"processes": current_ranks().world} if current_ranks().active else {}),
            # a quantized or device-mapped base computes other activations: its own entries
            **({"load": load.describe()} if load.places_itself else {}),
        },
        "versions": meta["versions"],
        "score_schema": SCHEMA_VERSION,
    }
    cache, key = StatCache(Path(cache_dir)), cache_key(document)
    stats, entry, warning = cache.load(key)
    if warning:
        prep.warnings.append(warning)
    if stats is not None:
        meta["dtype"], meta["device_type"] = entry.get("dtype"), entry.get("device_type")
        if entry.get("batch") is not None:  # how the passes that made them were batched
            meta["batch"] = entry["batch"]
        if load.places_itself:
            meta["load"] = load.describe()
        prep.timings["passes_s"] = 0.0
    return stats, cache, key, document


def _padded_tokens(encoded: Sequence[Encoded], batch_size: int) -> int:
    """Positions the passes compute (rows x padded width per batch, longest first)."""
    lengths = sorted((len(e.input_ids) for e in encoded), reverse=True)
    return sum(len(lengths[i : i + batch_size]) * lengths[i] for i in range(0, len(lengths), batch_size))


def _footprint(prep: Prepared, load, params, *, rows: int, width: int, trust_remote_code: bool) -> dict | None:
    """The device memory the passes need, estimated from the base's shapes (``runtime/footprint.py``);
    None for a GGUF base (it has no separate config)."""
    from ucan_cli.runtime.footprint import footprint
    from ucan_cli.runtime.models import model_skeleton, resolve_device, resolve_dtype, resolve_source

    if prep.user_model:
        skeleton = prep.model
    elif resolve_source(prep.base_spec).gguf_file:
        return None
    else:
        skeleton = model_skeleton(prep.base_spec, trust_remote_code=trust_remote_code)
    dtype = str(resolve_dtype(load.dtype, resolve_device(load.device))).replace("torch.", "")
    return footprint(skeleton, prep.adapter.modules, unit=params.unit, dtype=dtype, quantize=load.quantize, rows=rows,
                     width=width, max_memory_gib=params.max_memory).as_dict()


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
    load=None,
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
    from ucan_cli.io.tokenize import batch_order
    from ucan_cli.runtime.models import has_weights

    batch_size = fixed_batch_size(batch_size, device)  # auto: the probe times its start size
    everything = prep.forget_encoded + prep.retain_encoded
    probe = [everything[i] for i in batch_order(everything)[:batch_size]]  # the first batch of a pass: the longest
    probe_positions = _padded_tokens(probe, batch_size)
    total_positions = _padded_tokens(prep.forget_encoded, batch_size) + _padded_tokens(prep.retain_encoded, batch_size)
    spec = LoadSpec.merge(load, device=device, dtype=dtype)
    seconds = estimate = None
    if prep.user_model or has_weights(prep.base_spec):
        with adapted_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, load=load) as model:
            for _ in range(2):  # the first call includes one-off warm-up; time a second one when cheap
                t = time.perf_counter()
                _collect(model, prep, probe, [], ([], []), params, token_scope, batch_size, None)
                seconds = time.perf_counter() - t
                if seconds > 1.0:
                    break
        estimate = seconds / probe_positions * total_positions if probe_positions else 0.0
    else:  # a config without weights (a 7B shape on a laptop): the memory estimate, no probe
        from ucan_cli.runtime.models import resolve_device, resolve_dtype

        resolved = resolve_device(spec.device)
        prep.meta["device_type"] = resolved.type
        prep.meta["dtype"] = str(resolve_dtype(spec.dtype, resolved)).replace("torch.", "")
        prep.warnings.append(f"{prep.base_spec} has a config but no weights: memory estimated from its shapes; "
                             "no probe batch, so no time estimate")
    memory = None
    if params.unit == "direction":  # d_in^2 float64 per module and set; more groups, more passes
        from ucan_cli.methods.ucan.moments import memory_estimate

        memory = memory_estimate(prep.adapter, params.max_memory)
        if estimate is not None:
            estimate *= memory["groups"]
    counts = {
        "n_forget": prep.meta["n_forget"],
        "n_retain": prep.meta["n_retain"],
        "n_half_a": prep.meta["n_half_a"],
        "n_half_b": prep.meta["n_half_b"],
        "tokens": prep.meta["tokens"],
        "truncated": prep.meta["truncated"],
        "positions": total_positions,
        "batches": math.ceil(len(prep.forget_encoded) / batch_size) + math.ceil(len(prep.retain_encoded) / batch_size),
        "units": sum({"output": m.d_out, "rank": m.r, "direction": m.d_in}[params.unit] for m in prep.adapter.modules),
        "modules": len(prep.adapter.modules),
    }
    if memory is not None:
        counts["memory"] = memory
    counts["footprint"] = _footprint(prep, spec, params, rows=batch_size,
                                     width=max((len(e.input_ids) for e in everything), default=0), trust_remote_code=trust_remote_code)
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
