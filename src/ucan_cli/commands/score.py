"""``ucan score``: U-CAN statistics and scores for one adapter, written to a score file."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.options import (
    AllowOverlapOpt,
    AllowPickleOpt,
    CacheDirOpt,
    NoCacheOpt,
    ScoreMethodOptions,
    PANEL_DATA,
    PANEL_MODEL,
    PANEL_OUTPUT,
    ReceiptKeyOpt,
    RetainMaxSamplesOpt,
    RuntimeOptions,
    TemplateOpt,
    TrustRemoteCodeOpt,
    ucan_command,
)


def _opt(*names: str, help: str, panel: str, **kw):
    return typer.Option(*names, help=help, rich_help_panel=panel, **kw)


@ucan_command()
def score(
    base: Annotated[str, _opt("--base", help="Base model: a local directory, a .gguf file or a Hub id.", panel=PANEL_MODEL)],
    adapter: Annotated[
        Path, _opt("--adapter", help="PEFT LoRA adapter directory trained on that base.", panel=PANEL_MODEL)
    ],
    forget: Annotated[Path, _opt("--forget", help="Records to forget (JSONL, .jsonl.gz, Parquet, Arrow).", panel=PANEL_DATA)],
    retain: Annotated[Path, _opt("--retain", help="Records to keep: the contrast and the noise reference.", panel=PANEL_DATA)],
    options: ScoreMethodOptions = None,
    output: Annotated[
        Optional[Path],
        _opt("--output", "-o", help="Score file to write (safetensors). Required unless --dry-run.", panel=PANEL_OUTPUT),
    ] = None,
    template: TemplateOpt = "alpaca",
    retain_max_samples: RetainMaxSamplesOpt = None,
    allow_overlap: AllowOverlapOpt = False,
    receipt_key: ReceiptKeyOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    force: Annotated[bool, _opt("--force", help="Replace an existing score file.", panel=PANEL_OUTPUT)] = False,
    top: Annotated[int, _opt("--top", help="Show the N units with the highest S.", panel=PANEL_OUTPUT, min=0)] = 10,
    dry_run: Annotated[
        bool,
        _opt("--dry-run", help="Check everything, time one probe batch, print counts and a time estimate; write nothing.", panel=PANEL_OUTPUT),
    ] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Score every LoRA unit by how much more it fires on the forget set than on the retain set.

    One forward pass over each set (no gradients) streams per-unit activation statistics; the
    risk R of each unit is compared with a noise reference (two halves of the retain set), fused
    with the unit's utility on the retain set, and the units that U-CAN would attenuate are
    selected. The score file keeps the raw statistics, so `ucan attenuate --scores` can apply new
    parameters without another pass. The summary says whether the forget set is separable from
    the retain set at all: when it is a random sample of the same users, no unit is
    forget-specific and U-CAN would only edit noise.

    The score file is written even when no unit is eligible (exit 0; the verdict says so).

    Examples:

      ucan score --base ./base --adapter ./adapter --forget forget.jsonl --retain retain.jsonl -o scores.safetensors

      ucan score --base ./base --adapter ./adapter --forget f.jsonl --retain r.jsonl --dry-run

      ucan score ... -o s.safetensors --unit rank --token-scope last --tau 1.5 --json | jq .verdict

      torchrun --nproc-per-node 4 -m ucan_cli score ... -o s.safetensors   # 4 GPUs share the records; rank 0 writes
    """
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.params import params_from_options, resolve_token_scope
    from ucan_cli.ui import UI

    ui = UI(rt)
    token_scope, halves = options.pop("token_scope"), options.pop("halves")
    params = params_from_options(**options)
    token_scope = resolve_token_scope(token_scope)
    if output is None and not dry_run:
        raise InputError("-o/--output is required (the score file to write), unless --dry-run")
    if output is not None:
        from ucan_cli.io.outdir import check_output
        from ucan_cli.io.receipts import key_path

        # Never write over anything this run reads (--config is protected by @ucan_command).
        check_output(output, force=force, protected=[adapter, forget, retain, base, template, key_path(receipt_key)], kind="file")

    from ucan_cli.flows import score as api

    common = dict(
        params=params, token_scope=token_scope, halves=halves or "auto", template=template, max_length=rt.max_length,
        retain_max_samples=retain_max_samples, max_samples=rt.max_samples, seed=rt.seed, batch_size=rt.batch_size,
        load=rt.load, allow_overlap=allow_overlap, receipt_key=receipt_key,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
    )
    from ucan_cli.report.score import dry_run_document, render_dry_run, render_score, score_document

    if dry_run:
        plan = api.score_dry_run(base, adapter, forget, retain, **common)
        for warning in plan.warnings:
            ui.warn(warning)
        doc = dry_run_document(plan)
        if rt.json:
            ui.emit_json(doc)
        else:
            render_dry_run(ui, doc)
        return

    from ucan_cli.io.statcache import resolve_cache_dir

    run = api.score(base, adapter, forget, retain, progress=ui.progress, cache_dir=resolve_cache_dir(cache_dir, no_cache),
                    max_batch_tokens=rt.max_batch_tokens, **common)
    from ucan_cli.methods.ucan.scorefile import save_score_file

    if rt.main:  # under torchrun every rank holds the same statistics; rank 0 writes them
        save_score_file(output, run.stats, run.result, run.meta, force=force)
    for warning in run.warnings:
        ui.warn(warning)
    doc = score_document(run, output=str(output), written=True, top=top)
    if rt.json:
        ui.emit_json(doc)
    else:
        render_score(ui, doc)
    if run.nothing_to_do is not None:
        ui.warn(f"no unit is eligible; `ucan attenuate` with these options would exit 4. {run.nothing_to_do.message}")
    elif run.overview["verdict"] == "weak":
        ui.warn(
            f"{run.overview['sentence']}; `ucan attenuate` with these options declines (exit 4, nothing written) "
            "unless --accept-weak: retraining without these users, or a gradient method (--method graddiff), can act "
            "on this request"
        )

