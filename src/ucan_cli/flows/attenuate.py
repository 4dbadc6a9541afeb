"""``attenuate``: the library call behind ``ucan attenuate`` (SPEC section 3, steps 1-6, and the
gradient baselines).

The method named by ``method=`` (``ucan_cli.methods.registry``) is of one of three kinds.
Activation methods (``ucan``, the default, and the ``random`` control) edit B from step-1
statistics, which come from a fresh forward pass (``ucan_cli.flows.score.score``) or from a score
file (``scores=``, no model loads), with the resolved parameters and the lineage's cumulative
factors (the floor rule); a verdict the method calls weak declines unless ``accept_weak``. Model
methods run on the loaded model and the tokenized sets (``ucan_cli.flows.model_inputs``): ``ga``,
``graddiff`` and ``npo`` train the adapter's LoRA parameters (the lineage's factors carry over
unchanged); ``prune`` returns per-unit factors that the ledger composes like U-CAN's. ``retrain``
is a model method that also reads ``train=`` (``--train``): every forget user's record is removed
from it (``ucan_cli.methods.retrain.removal``) before anything is tokenized, the kept records
are handed to the method tokenized, the counts go into the report's ``training.train_records``,
and, its weights being fresh, the lineage's factors restart. Adapter methods (``negate``) edit
the adapter alone: no model, no statistics, no ``base``/``retain``; the forget file is still
read for the ledger's receipt. Everything is written to a temporary directory renamed
into place: the adapter (config byte for byte, same tensor names,
dtypes and metadata, no timestamps, so equal inputs give byte-identical weights), README.md (the
model card), ``ucan_report.json`` / ``ucan_report.md``, ``ucan_config.toml`` and
``ucan_ledger.jsonl``; the report's and the ledger entry's ``options.method`` name the method.

Order of work (SPEC section 6, Safety): every check that reads files (adapter, output dir,
ledger, receipt key, score file, record files, repeat refusal) comes before any model loads;
``NothingToDo`` and runtime errors come before the output directory is created, so a failed run
writes nothing. The input adapter is only ever read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.progress import ProgressFactory

REPORT_JSON = "ucan_report.json"
REPORT_MD = "ucan_report.md"
CARD_NAME = "README.md"
CONFIG_NAME = "ucan_config.toml"


@dataclass
class AttenuateRun:
    """What ``attenuate`` did.

    Attributes:
        out_dir: the written directory (None for a dry run).
        output_sha256: SHA-256 of the written ``adapter_model.safetensors`` (None for a dry run).
        result: what the method computed (``Edit.result``): for U-CAN the ``ScoreResult`` of steps
            2-5 (per-unit factors in ``result.s``), for the random control its ``RandomDraw``.
        changes: one ``ModuleChange`` per module, in module order.
        report: the ``ucan_report.json`` document.
        timings: seconds per stage (inputs, statistics, select, edit, write).
        warnings: what the user should know (adapter warnings, ledger notes).
        stats: the step-1 statistics used.
        method: the registry name of the method that made the edit.
    """

    out_dir: Path | None
    output_sha256: str | None
    result: Any
    changes: list
    report: dict
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    stats: Any = None
    method: str = "ucan"


def _resolve_params(params, base):
    """``params`` may be a ``MethodParams`` (used as is), a mapping of option values merged over
    ``base`` (``params_from_options``), or None (``base`` or the defaults)."""
    from ucan_cli.methods.ucan.params import MethodParams, params_from_options

    if isinstance(params, MethodParams):
        return params.validate()
    return params_from_options(base, **dict(params or {}))


def _score_file_params(meta: Mapping[str, Any], unit: str):
    """The parameters a score file was made with (its ``params`` meta), else defaults for its unit."""
    from ucan_cli.methods.ucan.params import MethodParams, params_from_dict

    stored = meta.get("params")
    if isinstance(stored, Mapping):
        try:
            params = params_from_dict(dict(stored))
        except (InputError, TypeError):
            params = None
        if params is not None and params.unit == unit:
            return params
    return MethodParams(unit=unit)


def attenuate(
    adapter: str | Path,
    out_dir: str | Path | None = None,
    *,
    base: str | None = None,
    forget: str | Path | None = None,
    retain: str | Path | None = None,
    scores: str | Path | None = None,
    train: str | Path | None = None,
    method: str = "ucan",
    params: Any = None,
    token_scope: str | None = None,
    halves: str | None = None,
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
    force: bool = False,
    accept_weak: bool = False,
    dry_run: bool = False,
    command_line: str | None = None,
    progress: ProgressFactory | None = None,
    cache_dir: str | Path | None = None,
    load=None,
    max_batch_tokens: int | None = None,
) -> AttenuateRun:
    """Attenuate the units of ``adapter`` that fire more on ``forget`` than on ``retain``
    (``method="ucan"``), spend the same budget on random units (``method="random"``), or train
    the LoRA weights away from the forget set (``method="ga"``, ``"graddiff"``, ``"npo"``).

    Args:
        adapter: the input LoRA adapter directory (never modified).
        out_dir: the new adapter directory (required unless ``dry_run``); must not exist unless
            ``force`` and may not overlap the input adapter.
        base, retain: the base model and the retain set (required without ``scores``).
        forget: the forget set: its receipt goes into the ledger; required without ``scores``
            (with ``scores`` it defaults to the receipt stored in the score file).
        scores: a score file from ``ucan score`` for this very adapter: no model loads.
        train: the training file (records like forget and retain) of a method that ``takes_train``
            (``retrain``), required by it and refused by every other method.
        method: a name in ``ucan_cli.methods.registry`` (unknown: ``InputError``).
        params: ``MethodParams``, or a mapping of method options (``unit``, ``lam``, ``t_risk``,
            ``min_gap``, ``ratio``, ``tau``, ``decay``, ``sharpness``, ``floor``,
            ``no_contrast``, ``no_utility``; direction units' ``gate``, ``strength``,
            ``shrinkage``, ``max_memory``, ``retain_kl``, ``keep_retain``) merged over the score file's parameters
            (with ``scores``) or the defaults. ``retain_kl`` or ``keep_retain`` chooses the
            strength by measuring the edits of the ladder below ``strength``
            (``ucan_cli.flows.strength``; needs ``base``, ``forget`` and ``retain``, and
            ``keep_retain`` retain records with candidates); the report's
            ``summary.strength_search`` says what was measured.
        token_scope: response (default), last or all; with ``scores`` it must match the file's.
        halves: the noise reference's split of D_r (``auto``, ``users``, ``records``); with
            ``scores`` it must match the file's.
        template, max_length, retain_max_samples, max_samples, seed, batch_size, device,
        dtype, allow_overlap, allow_pickle, trust_remote_code: as for ``ucan_cli.flows.score.score``;
            ``seed`` also seeds a method that draws at random.
        receipt_key: the receipt key file (default: the user's key, created on first use).
        force: replace an existing ``out_dir``, attenuate a forget set already in the lineage,
            and continue from an adapter whose hash does not match its ledger.
        accept_weak: edit even when the verdict is ``weak`` (no more units stand out than the noise
            reference gives); recorded in the report and the ledger. Without it such a request
            declines with ``NothingToDo`` (exit 4) and nothing is written.
        load: a ``runtime.load.LoadSpec`` (device, dtype, device map, 4-/8-bit) instead of
            ``device`` and ``dtype``, for the statistics pass or a model method's base.
        dry_run: compute everything, write nothing (``out_dir`` is checked when given).
        command_line: recorded in the report and model card; default: an equivalent command.
        progress: a progress factory for the forward passes.

    Raises:
        InputError (exit 2), UcanRuntimeError (exit 1), NothingToDo (exit 4). Nothing is
        written when any of them is raised.
    """
    from ucan_cli.methods.base import ACTIVATIONS, ADAPTER, MODEL
    from ucan_cli.methods.registry import get as get_method
    from ucan_cli.methods.ucan.edit import total_norms, units_per_module
    from ucan_cli.io.adapter import LoraAdapter, sha256_file
    from ucan_cli.io.data import read_records
    from ucan_cli.io.ledger import check_adapter_head, check_repeat, read_ledger
    from ucan_cli.io.outdir import check_output_dir
    from ucan_cli.io.receipts import key_fingerprint, key_path, load_or_create_key, set_receipt
    from ucan_cli.methods.ucan.params import FLAGS, option_values, params_to_dict, resolve_token_scope

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[stage] = timings.get(stage, 0.0) + now - clock
        clock = now

    # ---------------------------------------------------------------- inputs (no model yet)
    from ucan_cli.runtime.load import LoadSpec

    load = LoadSpec.merge(load, device=device, dtype=dtype)
    device, dtype = load.device, load.dtype
    chosen = get_method(method)
    if chosen.statistics not in (ACTIVATIONS, MODEL, ADAPTER):
        raise InputError(f"--method {method}: needs {chosen.statistics} inputs, which attenuate cannot provide")
    params = _own_options(chosen, params)
    if train is not None and not chosen.takes_train:
        raise InputError(f"--train: not an option of --method {chosen.name} (only --method retrain trains on a training file)")
    if train is None and chosen.takes_train:
        raise InputError(
            f"--method {chosen.name} needs --train FILE: the records the input adapter was trained on (JSONL like "
            "--forget); every forget user's record is removed from it before training"
        )
    fixed_unit = getattr(chosen, "unit", None)  # ucan-direction is U-CAN with --unit direction
    if fixed_unit is not None and isinstance(params, Mapping):
        if params.get("unit", fixed_unit) != fixed_unit:
            raise InputError(f"--unit {params['unit']}: --method {chosen.name} edits {fixed_unit} units")
        params = {**params, "unit": fixed_unit}
    source = LoraAdapter.load(adapter, allow_pickle=allow_pickle)
    source.check_supported()
    warnings = list(source.warnings())
    if out_dir is None and not dry_run:
        raise InputError("-o/--output: the output directory is required (or pass --dry-run)")
    # Never write over (or, with --force, delete) anything this run reads.
    protected = [source.path, scores, forget if isinstance(forget, (str, Path)) else None,
                 retain if isinstance(retain, (str, Path)) else None, key_path(receipt_key), template,
                 base if isinstance(base, (str, Path)) else None, train if isinstance(train, (str, Path)) else None]
    if out_dir is not None:
        check_output_dir(out_dir, force=force, protected=protected)
    ledger = read_ledger(source.path)
    head_ok, notes = check_adapter_head(ledger, source.sha256, force=force)
    warnings += notes
    key = load_or_create_key(receipt_key)
    fingerprint = key_fingerprint(key)
    common = _Common(
        chosen=chosen, source=source, ledger=ledger, head_ok=head_ok, warnings=warnings, timings=timings, protected=protected,
        out_dir=out_dir, force=force, dry_run=dry_run, command_line=command_line,
    )
    if chosen.statistics == ADAPTER:
        return _attenuate_adapter(
            common, key, fingerprint, base=base, forget=forget, retain=retain, scores=scores, params=params,
            token_scope=token_scope, halves=halves, seed=seed, receipt_key=receipt_key, allow_pickle=allow_pickle,
            accept_weak=accept_weak,
        )
    if chosen.statistics == MODEL:
        return _attenuate_model(
            common, key, fingerprint, base=base, forget=forget, retain=retain, scores=scores, train=train, params=params,
            token_scope=token_scope, halves=halves, template=template, max_length=max_length,
            retain_max_samples=retain_max_samples, max_samples=max_samples, seed=seed, batch_size=batch_size,
            device=device, dtype=dtype, allow_overlap=allow_overlap, receipt_key=receipt_key, allow_pickle=allow_pickle,
            trust_remote_code=trust_remote_code, accept_weak=accept_weak, progress=progress, load=load,
        )

    stats = meta = None
    if scores is not None:
        from ucan_cli.methods.ucan.scorefile import load_score_file

        stats, meta = load_score_file(scores)
        if meta.get("adapter_sha256") != source.sha256:
            raise InputError(
                f"{scores}: score file was computed for another adapter (adapter_sha256 "
                f"{str(meta.get('adapter_sha256'))[:12]}... != {source.sha256[:12]}... of {source.path})"
            )
        layout = units_per_module(source, stats.unit)
        if [n for n, _ in layout] != list(stats.module_names) or [s for _, s in layout] != list(stats.module_sizes):
            raise InputError(f"{scores}: its modules and unit counts do not match the adapter {source.path}")
        if token_scope is not None and token_scope != stats.scope:
            raise InputError(
                f"--token-scope {token_scope}: the score file holds {stats.scope}-scope statistics; "
                "run `ucan score` again for another scope"
            )
        stored_halves = meta.get("halves", "records")  # score files before --halves split records
        if halves is not None and halves != "auto" and halves != stored_halves:
            raise InputError(
                f"--halves {halves}: the score file's noise reference split the retain set by {stored_halves}; "
                "run `ucan score` again to change it"
            )
        base_params = _score_file_params(meta, stats.unit)
    else:
        missing = [flag for flag, value in (("--base", base), ("--forget", forget), ("--retain", retain)) if value is None]
        if missing:
            raise InputError(f"{', '.join(missing)} required (or pass --scores SCORES from `ucan score`)")
        base_params = None
    params = _resolve_params(params, base_params)
    if stats is not None and params.unit != stats.unit:
        raise InputError(
            f"--unit {params.unit}: the score file holds {stats.unit}-unit statistics; run `ucan score --unit {params.unit}`"
        )
    scope = resolve_token_scope(token_scope, stats.scope if stats is not None else None)
    search_flag = params.strength_search
    if search_flag:  # the strength is measured (flows/strength.py): the model and both sets are needed
        if params.unit != "direction":
            raise InputError(f"{search_flag}: an option of --unit direction (this run uses --unit {params.unit})")
        missing = [flag for flag, value in (("--base", base), ("--forget", forget), ("--retain", retain)) if value is None]
        if missing:
            raise InputError(f"{search_flag} measures each candidate strength's edit: {', '.join(missing)} required")
        if params.keep_retain is not None:
            _check_ranked(retain)

    # The forget receipt: from the forget file, else the one the score file carries.
    forget_sha256 = n_forget = forget_set = None
    if forget is not None:
        forget_set = read_records(forget, "forget")
        receipt, receipt_fp = set_receipt(key, forget_set.records), fingerprint
        forget_sha256, n_forget = forget_set.sha256, len(forget_set.records)
        if meta is not None and meta.get("forget_sha256") not in (None, forget_sha256):
            raise InputError(f"{forget}: not the forget file the score file {scores} was computed on (SHA-256 differs)")
    else:
        assert meta is not None
        receipt, receipt_fp = meta.get("forget_receipt"), meta.get("receipt_key_fingerprint")
        if not receipt or not receipt_fp:
            raise InputError(f"{scores}: the score file carries no forget receipt; pass --forget FILE")
        forget_sha256, n_forget = meta.get("forget_sha256"), meta.get("n_forget_file", meta.get("n_forget"))
    warnings += check_repeat(ledger, receipt, receipt_fp, force=force)
    lap("inputs")

    # ---------------------------------------------------------------- statistics (step 1)
    score_meta: dict = dict(meta or {})
    statistics_from = "score file"
    loaded = None
    if stats is None:
        from ucan_cli.flows.score import score as run_score

        run = run_score(
            base, source.path, forget_set, retain, params=params, token_scope=scope, halves=halves or "auto", template=template,
            max_length=max_length, retain_max_samples=retain_max_samples, max_samples=max_samples, seed=seed,
            batch_size=batch_size, device=device, dtype=dtype, allow_overlap=allow_overlap, receipt_key=receipt_key,
            allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress, cache_dir=cache_dir, load=load,
            max_batch_tokens=max_batch_tokens, keep_model=search_flag is not None,
        )
        stats, score_meta, statistics_from = run.stats, dict(run.meta), run.statistics_from
        loaded = run.model  # the search below reuses the model the passes loaded (None: it loads its own)
        warnings += [w for w in run.warnings if w.startswith("statistics cache")]
    lap("statistics")

    # ---------------------------------------------------------------- the method's edit, with the lineage
    layout = list(zip(stats.module_names, stats.module_sizes))
    # Direction edits are not per-unit scalings: no lineage factors to compose or floor to respect.
    cumulative = None if params.unit == "direction" else ledger.cumulative_vector(layout, params.unit)
    edit = chosen.edit(source, stats, params, seed=seed, cumulative=cumulative)
    if params.unit == "direction":
        from ucan_cli.methods.ucan.moments import memory_estimate

        edit.summary["memory"] = memory_estimate(source, params.max_memory)
    for stage, seconds in edit.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    clock = time.perf_counter()
    verdict_of = edit.verdict
    if verdict_of.decline is not None:  # the method judges the request no better than noise
        if not accept_weak:
            raise NothingToDo(verdict_of.decline, edit.summary)
        warnings.append(
            f"{verdict_of.sentence}: edited anyway (--accept-weak, recorded in the report and ledger); this edit "
            "may be noise rather than forgetting: check it with `ucan eval`, and retrain without these users to honour the request"
        )
    if search_flag:  # measure the ladder below --strength, edit at the strength chosen
        from ucan_cli.flows.score import sampled_sets
        from ucan_cli.flows.strength import search_strength

        lap("edit")
        # the records, template and lengths the statistics were computed with (a score file's own)
        made = {k: (value if scores is None else score_meta.get(k, value)) for k, value in (
            ("template", template), ("max_length", max_length), ("max_samples", max_samples),
            ("retain_max_samples", retain_max_samples), ("seed", seed))}
        _, measured_forget, measured_retain = sampled_sets(
            forget_set if forget_set is not None else forget, retain, max_samples=made["max_samples"],
            retain_max_samples=made["retain_max_samples"], seed=made["seed"], allow_overlap=allow_overlap,
        )
        search = search_strength(
            chosen, source, stats, params, base=loaded or base, forget_set=measured_forget, retain_set=measured_retain,
            template=made["template"], max_length=made["max_length"], batch_size=batch_size, max_batch_tokens=max_batch_tokens,
            seed=seed, load=load, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress,
        )
        lap("strength_search")
        measured = edit
        edit = chosen.edit(source, stats, replace(params, strength=search.chosen, retain_kl=None, keep_retain=None), seed=seed,
                           cumulative=cumulative)
        edit.summary.update(memory=measured.summary["memory"], strength_search=search.to_dict())
    changes = edit.changes
    if edit.adapter is source:
        raise NothingToDo(
            f"nothing to do: {edit.summary['k']} units were selected but every factor rounds to 1 "
            f"(1 - s < 1e-4 with --floor {params.floor}); nothing written",
            edit.summary,
        )
    totals = total_norms(changes)
    lap("edit")

    # ---------------------------------------------------------------- documents and writing
    options = {
        "method": chosen.name,
        **params_to_dict(params),
        "token_scope": scope,
        "halves": score_meta.get("halves"),
        "statistics_from": "score file" if scores is not None else statistics_from,
        "template": template if scores is None else score_meta.get("template", template),
        "max_length": max_length if scores is None else score_meta.get("max_length", max_length),
        "max_samples": max_samples if scores is None else score_meta.get("max_samples", max_samples),
        "retain_max_samples": retain_max_samples if scores is None else score_meta.get("retain_max_samples", retain_max_samples),
        "seed": seed if scores is None else score_meta.get("seed", seed),
        "allow_overlap": allow_overlap,
        "accept_weak": bool(accept_weak),
        **({"load": score_meta["load"]} if "load" in score_meta else {}),  # a quantized or device-mapped base
    }
    verdict = _verdict_doc(verdict_of)
    base_label = str(base) if isinstance(base, (str, Path)) else None  # a (model, tokenizer) pair has no path
    if base_label is None and isinstance(score_meta.get("base"), Mapping):
        base_label = score_meta["base"].get("id")
    cli_values = {
        "base": base_label and str(base_label), "adapter": str(source.path), "forget": forget and str(forget), "retain": retain and str(retain),
        "scores": scores and str(scores), "method": chosen.name,
        **option_values(params, token_scope=scope, halves=score_meta.get("halves")),
        "template": template,
        "max_length": max_length, "max_samples": max_samples, "retain_max_samples": retain_max_samples,
        "seed": seed, "batch_size": batch_size, "device": device, "dtype": dtype, **_load_values(load),
        "allow_overlap": allow_overlap, "receipt_key": receipt_key and str(receipt_key),
        "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code, "accept_weak": accept_weak,
    }
    inputs = {
        "base": base_label and str(base_label),
        "adapter": {"path": str(source.path), "sha256": source.sha256},
        "forget": {"path": str(forget) if forget else None, "sha256": forget_sha256, "n_records": n_forget},
        "retain": (
            {"path": str(retain) if retain is not None else None, "sha256": score_meta.get("retain_sha256"),
             "n_records": stats.retain.n_records}
            if retain is not None or score_meta.get("retain_sha256") else None
        ),
        "scores": {"path": str(scores), "sha256": sha256_file(Path(scores))} if scores is not None else None,
    }
    receipt_doc = {
        "forget_set_hmac": receipt,
        "key_fingerprint": receipt_fp,
        "source": "forget file" if forget is not None else "score file",
    }
    lineage = _lineage(ledger, head_ok)

    return _finish(
        common, options=options, cli_values=cli_values, flags=FLAGS, inputs=inputs, receipt_doc=receipt_doc, lineage=lineage,
        unit=params.unit, verdict=verdict, edit=edit, totals=totals, receipt=receipt, receipt_fp=receipt_fp, n_forget=n_forget,
        base_label=base_label, stats=stats,
    )


@dataclass
class _Common:
    """What both kinds of method share in one run: the checked inputs and where the output goes."""

    chosen: Any
    source: Any
    ledger: Any
    head_ok: bool
    warnings: list
    timings: dict
    protected: list
    out_dir: Any
    force: bool
    dry_run: bool
    command_line: str | None


def _check_ranked(retain) -> None:
    """``--keep-retain`` reads the retain set's NDCG@10: every retain record needs candidates."""
    from ucan_cli.io.data import RecordSet, read_records

    records = retain if isinstance(retain, RecordSet) else read_records(retain, "retain")
    bare = records.first_without_candidates()
    if bare is not None:
        raise InputError(
            f"{records.path}:{bare.line}: field 'candidates' is missing; --keep-retain measures the retain set's NDCG@10, "
            "which needs candidates on every record (or use --retain-kl)"
        )


def _verdict_doc(verdict) -> dict:
    """The report's ``verdict``, from the method's ``Verdict``: a declining verdict that reached
    the writing stage was let through by ``--accept-weak``."""
    return {"kind": verdict.kind, "sentence": verdict.sentence, "accepted_weak": verdict.decline is not None}


def _lineage(ledger, head_ok: bool) -> dict:
    return {"previous_entries": len(ledger.entries), "seq": len(ledger.entries) + 1, "input_matches_ledger": head_ok}


def _option_flag(name: str) -> str:
    """The flag of a method option (U-CAN's or the gradient family's), by field name."""
    from ucan_cli.methods.gradient.params import option_fields as gradient_fields
    from ucan_cli.methods.ucan.params import option_fields as ucan_fields

    for f in [*ucan_fields(), *gradient_fields()]:
        if f.name == name:
            return f.metadata["option"].long
    return "--" + name.replace("_", "-")


def _own_options(chosen, params):
    """A mapping of option values keeps only those given (not None); one the chosen method does not
    take is an ``InputError`` naming its flag (the CLI passes every method's options)."""
    from dataclasses import fields as dc_fields

    if not isinstance(params, Mapping):
        return params
    given = {k: v for k, v in params.items() if v is not None}
    takes = {f.name for f in dc_fields(chosen.params_type)}
    foreign = [k for k in given if k not in takes]
    if foreign:
        raise InputError(f"{_option_flag(foreign[0])}: not an option of --method {chosen.name}")
    return given


def _method_params(chosen, params):
    """The chosen method's validated parameters: given as its ``params_type``, or a mapping of
    option values (already checked by ``_own_options``) over its defaults."""
    from dataclasses import fields as dc_fields

    if isinstance(params, chosen.params_type):
        return params.validate()
    given = dict(params or {})
    for f in dc_fields(chosen.params_type):  # an option given clears the one it excludes (--prune-count clears --prune-ratio)
        excluded = f.metadata["option"].excludes if "option" in f.metadata else None
        if f.name in given and excluded and excluded not in given:
            given[excluded] = None
    return chosen.params_type(**{f.name: given[f.name] for f in dc_fields(chosen.params_type) if f.name in given}).validate()


def _read_train(train, forget_set):
    """The training file's records without the forget users', and the counts (``removal.py``);
    a file that would leave nothing to train on is an ``InputError``."""
    from ucan_cli.io.data import read_records
    from ucan_cli.methods.retrain.removal import without_forget_users

    train_set = read_records(train, "train") if not hasattr(train, "records") else train
    kept, counts = without_forget_users(train_set, forget_set)
    if counts.kept == 0:
        raise InputError(
            f"{train_set.path}: every one of its {counts.n_records} records belongs to a forget user or matches a forget "
            "record; nothing is left to train on"
        )
    return train_set, kept, counts


def _load_values(load) -> dict:
    """The load flags beyond --device and --dtype as option values (None: not given, so neither
    the equivalent command nor ucan_config.toml changes for a plain load)."""
    return {"device_map": load.device_map, "load_in_4bit": (load.quantize == "4bit") or None,
            "load_in_8bit": (load.quantize == "8bit") or None}


def _attenuate_model(
    common: _Common, key, fingerprint, *, base, forget, retain, scores, train, params, token_scope, halves, template, max_length,
    retain_max_samples, max_samples, seed, batch_size, device, dtype, allow_overlap, receipt_key, allow_pickle,
    trust_remote_code, accept_weak, progress, load=None,
) -> AttenuateRun:
    """``attenuate`` for a ``MODEL`` method: checks, the model, the method's run, the same outputs."""
    from ucan_cli.flows.model_inputs import model_inputs, trainable_model
    from ucan_cli.flows.score import prepare
    from ucan_cli.io.data import read_records
    from ucan_cli.io.ledger import check_repeat
    from ucan_cli.io.receipts import set_receipt
    from ucan_cli.methods.gradient.params import params_to_dict
    from ucan_cli.methods.ucan.params import MethodParams

    from ucan_cli.runtime.batching import fixed_batch_size

    chosen, timings = common.chosen, common.timings
    clock = time.perf_counter()
    name = chosen.name
    batch_size = fixed_batch_size(batch_size, device)  # training loops do not adapt: auto runs at its start size
    for flag, value in (("--scores", scores), ("--token-scope", token_scope), ("--halves", halves)):
        if value is not None:
            raise InputError(f"{flag}: not an option of --method {name} (it runs the model on the forget and retain sets)")
    if accept_weak:
        raise InputError(f"--accept-weak: not an option of --method {name} (gradient methods make no contrast verdict)")
    missing = [flag for flag, value in (("--base", base), ("--forget", forget), ("--retain", retain)) if value is None]
    if missing:
        raise InputError(f"{', '.join(missing)} required for --method {name}")
    params = _method_params(chosen, params)
    chosen.check(common.source, params)
    forget_set = read_records(forget, "forget") if not hasattr(forget, "records") else forget
    receipt = set_receipt(key, forget_set.records)
    train_set = kept = removal = None
    if chosen.takes_train:  # the forget users' records go before anything reads their text
        train_set, kept, removal = _read_train(train, forget_set)
    common.warnings.extend(check_repeat(common.ledger, receipt, fingerprint, force=common.force))
    prep = prepare(
        base, common.source.path, forget_set, retain, params=MethodParams(), token_scope="response", halves="auto",
        template=template, max_length=max_length, retain_max_samples=retain_max_samples, max_samples=max_samples, seed=seed,
        batch_size=batch_size, allow_overlap=allow_overlap, receipt_key=receipt_key, allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    common.warnings.extend(w for w in prep.warnings if w not in common.warnings)
    timings["inputs"] = timings.get("inputs", 0.0) + time.perf_counter() - clock
    target = getattr(params, "target", None)
    target_k = int(target.metric.partition("@")[2]) if target is not None and "@" in target.metric else None
    counts = {"n_train": len(kept)} if kept is not None else {}
    estimate = chosen.estimate(params, n_forget=len(prep.forget), n_retain=len(prep.retain), batch_size=batch_size, **counts)
    train_encoded = None
    if kept is not None:
        from ucan_cli.io.prompts import PromptFormatter
        from ucan_cli.io.tokenize import encode_set

        train_encoded = encode_set(kept, prep.tokenizer, PromptFormatter(template, tokenizer=prep.tokenizer), prep.max_length)
        cut = sum(e.truncated > 0 for e in train_encoded)
        if cut:
            common.warnings.append(f"{cut} training records exceed --max-length {prep.max_length} and lost prompt tokens from the left")
    if common.dry_run:
        edit = None
    else:
        with trainable_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                             load=load) as model:
            timings["load"] = time.perf_counter() - clock - timings["inputs"]
            inputs = model_inputs(
                model, prep, template=template, batch_size=batch_size, target_k=target_k, progress=progress, train=train_encoded,
            )
            edit = chosen.run(common.source, inputs, params, seed=seed)
        for stage, seconds in edit.timings.items():
            timings[stage] = timings.get(stage, 0.0) + seconds
        if edit.training and edit.training.get("stop_reason") == "budget" and target is not None:
            common.warnings.append(
                f"--until {params.until!r} was not reached within --steps {params.steps}; the adapter is written as it stood at the last step"
            )
    from ucan_cli.methods.ucan.edit import total_norms

    options = {"method": name, **params_to_dict(params), "template": template, "max_length": prep.max_length,
               "max_samples": max_samples, "retain_max_samples": retain_max_samples, "seed": seed, "batch_size": batch_size,
               "allow_overlap": allow_overlap}
    cli_values = {
        "base": str(base) if isinstance(base, (str, Path)) else None, "adapter": str(common.source.path), "forget": str(forget_set.path),
        "retain": str(prep.retain.path) if prep.retain.path else None, "method": name, **params_to_dict(params),
        "template": template, "max_length": max_length, "max_samples": max_samples, "retain_max_samples": retain_max_samples,
        "seed": seed, "batch_size": batch_size, "device": device, "dtype": dtype, **_load_values(load), "allow_overlap": allow_overlap,
        "receipt_key": receipt_key and str(receipt_key), "allow_pickle": allow_pickle, "trust_remote_code": trust_remote_code,
    }
    inputs_doc = {
        "base": cli_values["base"] or prep.meta["base"].get("id"),
        "adapter": {"path": str(common.source.path), "sha256": common.source.sha256},
        "forget": {"path": str(forget_set.path), "sha256": forget_set.sha256, "n_records": forget_set.n_total},
        "retain": {"path": cli_values["retain"], "sha256": prep.retain.sha256, "n_records": len(prep.retain)},
        "scores": None,
    }
    if train_set is not None:
        cli_values["train"] = str(train_set.path)
        inputs_doc["train"] = {"path": str(train_set.path), "sha256": train_set.sha256, "n_records": train_set.n_total}
    receipt_doc = {"forget_set_hmac": receipt, "key_fingerprint": fingerprint, "source": "forget file"}
    training = edit.training if edit is not None else None
    if edit is None:  # dry run: the cost estimate, no model loaded
        from ucan_cli.methods.base import Edit
        from ucan_cli.methods.gradient.method import VERDICT

        verdict_of = chosen.dry_run_verdict or VERDICT  # what the method says before it runs
        edit = Edit(adapter=common.source, factors={}, changes=[], summary={"estimate": estimate}, verdict=verdict_of)
    training = {**(training or {}), "estimate": estimate, **({"train_records": removal.to_dict()} if removal else {})}
    verdict = _verdict_doc(edit.verdict)
    return _finish(
        common, options=options, cli_values=cli_values, flags={}, inputs=inputs_doc, receipt_doc=receipt_doc,
        lineage=_lineage(common.ledger, common.head_ok), unit="output", verdict=verdict, edit=edit,
        totals=total_norms(edit.changes) if edit.changes else {}, receipt=receipt, receipt_fp=fingerprint,
        n_forget=forget_set.n_total, base_label=inputs_doc["base"], stats=None, training=training,
        # a per-unit edit (prune's 0/1 factors) composes onto the lineage like U-CAN's; a trained one composes nothing
        request=None if edit.factors else {
            "kind": "retrain" if chosen.fresh_adapter else "gradient", "steps_run": (training or {}).get("steps_run"),
        },
        fresh=chosen.fresh_adapter, disclaimer=_disclaimer(chosen),
    )


def _disclaimer(chosen) -> str | None:
    """The report's disclaimer for a method whose edit is not U-CAN's or the gradient family's."""
    from ucan_cli.methods.base import ADAPTER
    from ucan_cli.report.attenuate import NEGATE_DISCLAIMER, RETRAIN_DISCLAIMER

    if chosen.fresh_adapter:
        return RETRAIN_DISCLAIMER
    return NEGATE_DISCLAIMER if chosen.statistics == ADAPTER else None


def _attenuate_adapter(
    common: _Common, key, fingerprint, *, base, forget, retain, scores, params, token_scope, halves, seed, receipt_key,
    allow_pickle, accept_weak,
) -> AttenuateRun:
    """``attenuate`` for an ``ADAPTER`` method (``negate``): the forget file's receipt, the method's
    edit of the adapter's tensors, the same outputs; no model, no statistics."""
    from ucan_cli.io.data import read_records
    from ucan_cli.io.ledger import check_repeat
    from ucan_cli.io.receipts import set_receipt
    from ucan_cli.methods.gradient.params import params_to_dict
    from ucan_cli.methods.ucan.edit import total_norms

    chosen, timings = common.chosen, common.timings
    clock = time.perf_counter()
    name = chosen.name
    for flag, value in (("--base", base), ("--retain", retain), ("--scores", scores), ("--token-scope", token_scope),
                        ("--halves", halves), ("--accept-weak", accept_weak or None)):
        if value is not None:
            raise InputError(f"{flag}: not an option of --method {name} (it edits the adapter alone: no model, no statistics)")
    if forget is None:
        raise InputError(f"--forget required for --method {name} (the ledger records the request's receipt)")
    params = _method_params(chosen, params)
    chosen.check(common.source, params)
    forget_set = read_records(forget, "forget") if not hasattr(forget, "records") else forget
    receipt = set_receipt(key, forget_set.records)
    common.warnings.extend(check_repeat(common.ledger, receipt, fingerprint, force=common.force))
    timings["inputs"] = timings.get("inputs", 0.0) + time.perf_counter() - clock
    edit = chosen.apply(common.source, params, seed=seed)
    for stage, seconds in edit.timings.items():
        timings[stage] = timings.get(stage, 0.0) + seconds
    source = common.source
    options = {"method": name, **params_to_dict(params), "seed": seed}
    cli_values = {
        "adapter": str(source.path), "forget": str(forget_set.path), "method": name, **params_to_dict(params), "seed": seed,
        "receipt_key": receipt_key and str(receipt_key), "allow_pickle": allow_pickle,
    }
    inputs_doc = {
        "base": None, "adapter": {"path": str(source.path), "sha256": source.sha256},
        "forget": {"path": str(forget_set.path), "sha256": forget_set.sha256, "n_records": forget_set.n_total},
        "retain": None, "scores": None,
    }
    receipt_doc = {"forget_set_hmac": receipt, "key_fingerprint": fingerprint, "source": "forget file"}
    return _finish(
        common, options=options, cli_values=cli_values, flags={}, inputs=inputs_doc, receipt_doc=receipt_doc,
        lineage=_lineage(common.ledger, common.head_ok), unit="output", verdict=_verdict_doc(edit.verdict), edit=edit,
        totals=total_norms(edit.changes), receipt=receipt, receipt_fp=fingerprint, n_forget=forget_set.n_total,
        base_label=source.base_model_name, stats=None, request={"kind": name, **params_to_dict(params)},
        disclaimer=_disclaimer(chosen),
    )


def _finish(
    common: _Common, *, options, cli_values, flags, inputs, receipt_doc, lineage, unit, verdict, edit, totals, receipt,
    receipt_fp, n_forget, base_label, stats, training=None, request=None, fresh=False, disclaimer=None,
) -> AttenuateRun:
    """The documents and the atomic output every method shares: adapter, ledger entry, reports,
    model card, ``ucan_config.toml``."""
    from ucan_cli.config import config_toml, equivalent_command
    from ucan_cli.io.adapter import sha256_file
    from ucan_cli.io.ledger import new_entry, write_ledger
    from ucan_cli.io.outdir import atomic_output_dir
    from ucan_cli.report.attenuate import attenuate_document, attenuate_markdown
    from ucan_cli.report.card import model_card

    source, ledger, timings, dry_run, out_dir = common.source, common.ledger, common.timings, common.dry_run, common.out_dir
    command_line = common.command_line
    if command_line is None:
        command_line = equivalent_command("attenuate", {**cli_values, "output": out_dir and str(out_dir), "dry_run": dry_run}, flags)
    clock = time.perf_counter()

    def document(output: dict | None) -> dict:
        return attenuate_document(
            command_line=command_line, dry_run=dry_run, inputs=inputs, receipt=receipt_doc, output=output,
            options=options, unit=unit, verdict=verdict, summary=edit.summary, changes=edit.changes, totals=totals,
            lineage=lineage, warnings=common.warnings, timings=timings, training=training, disclaimer=disclaimer,
        )

    if dry_run:
        return AttenuateRun(None, None, edit.result, edit.changes, document(None), timings, common.warnings, stats, common.chosen.name)

    out_path = Path(out_dir)
    with atomic_output_dir(out_path, force=common.force, protected=common.protected) as tmp:
        weights = edit.adapter.write_into(tmp)  # byte-stable, mode from the umask like any shared file
        output_sha256 = sha256_file(weights)
        entry = new_entry(
            ledger, unit=unit, factors=edit.factors, module_order=[m.name for m in source.modules],
            options=options, input_sha256=source.sha256, output_sha256=output_sha256, input_matches_ledger=common.head_ok,
            forget_set_hmac=receipt, receipt_key_fingerprint=receipt_fp, n_forget_records=n_forget, request=request,
            fresh=fresh,
        )
        write_ledger(tmp, ledger, entry)
        timings["write"] = timings.get("write", 0.0) + time.perf_counter() - clock
        clock = time.perf_counter()
        doc = document({"path": str(out_path), "adapter_sha256": output_sha256})
        (tmp / REPORT_JSON).write_text(json.dumps(doc, indent=2, allow_nan=False, ensure_ascii=False) + "\n", encoding="utf-8")
        (tmp / REPORT_MD).write_text(attenuate_markdown(doc), encoding="utf-8")
        (tmp / CARD_NAME).write_text(model_card(doc, base_model=base_label or source.base_model_name), encoding="utf-8")
        (tmp / CONFIG_NAME).write_text(config_toml("attenuate", cli_values), encoding="utf-8")
    timings["write"] = timings.get("write", 0.0) + time.perf_counter() - clock
    return AttenuateRun(out_path, output_sha256, edit.result, edit.changes, doc, timings, common.warnings, stats, common.chosen.name)
