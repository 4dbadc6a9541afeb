"""``ucan compare``: every unlearning method on your own adapter and request, side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.options import (
    AllowOverlapOpt,
    AllowPickleOpt,
    CacheDirOpt,
    NoCacheOpt,
    PANEL_DATA,
    PANEL_METHOD,
    PANEL_MODEL,
    PANEL_OUTPUT,
    ReceiptKeyOpt,
    RuntimeOptions,
    TemplateOpt,
    TrustRemoteCodeOpt,
    ucan_command,
)

DEFAULT_METHODS = "ucan,random,ga,graddiff,npo,prune,negate"  # flows.compare.DEFAULT_METHODS (no import: --help stays light)


@ucan_command()
def compare(
    base: Annotated[str, typer.Option("--base", help="Base model id or path.", rich_help_panel=PANEL_MODEL)],
    adapter: Annotated[Path, typer.Option("--adapter", help="The ORIGINAL LoRA adapter (never modified).", rich_help_panel=PANEL_MODEL)],
    forget: Annotated[Path, typer.Option("--forget", help="Forget set D_f (JSONL).", rich_help_panel=PANEL_DATA)],
    retain: Annotated[Path, typer.Option("--retain", help="Retain set D_r (JSONL).", rich_help_panel=PANEL_DATA)],
    out: Annotated[Path, typer.Option("-o", "--out", help="New directory for the adapters, table.json, table.md and compare.png.", rich_help_panel=PANEL_OUTPUT)],
    holdout: Annotated[
        Optional[Path],
        typer.Option("--holdout", help="Held-out set D_h: generalization utility and membership inference (MIA AUC).", rich_help_panel=PANEL_DATA),
    ] = None,
    train: Annotated[
        Optional[Path],
        typer.Option("--train", help="The records the adapter was trained on: needed by retrain (forget users removed first).", rich_help_panel=PANEL_DATA),
    ] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option("--reference", help="A retrained reference adapter; default: retrain's output when retrain is compared.", rich_help_panel=PANEL_MODEL),
    ] = None,
    methods: Annotated[
        str,
        typer.Option(
            "--methods",
            help="Comma-separated methods (ucan attenuate --method names): ucan, random, ga, graddiff, npo, prune, negate, retrain.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = DEFAULT_METHODS,
    set_: Annotated[
        Optional[list[str]],
        typer.Option(
            "--set",
            help="METHOD.OPTION=VALUE[,VALUE...]: an option of one method (its ucan attenuate option, e.g. graddiff.lr=0.001, "
            "ucan.ratio=0.05,0.1,0.2). Several values give one row each: a strength curve. Repeatable.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = None,
    equal_forgetting: Annotated[
        bool,
        typer.Option(
            "--equal-forgetting/--no-equal-forgetting",
            help="Also run ga, graddiff and npo until they forget as much as U-CAN (forget Recall@5, checked every step): "
            "their cost at equal forgetting, printed beside U-CAN's (training alone and with the checks).",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = True,
    accept_weak: Annotated[
        bool,
        typer.Option("--accept-weak", help="Let ucan and random edit on a weak verdict (as ucan attenuate --accept-weak); default: they decline.", rich_help_panel=PANEL_METHOD),
    ] = False,
    template: TemplateOpt = "alpaca",
    allow_overlap: AllowOverlapOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o directory.", rich_help_panel=PANEL_OUTPUT)] = False,
    receipt_key: ReceiptKeyOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Run every unlearning method on your adapter and request, evaluate them together, and print one table.

    Each method runs exactly as `ucan attenuate --method NAME` would (its adapter, card, report and ledger land in OUT/methods/); U-CAN and random share one statistics pass; a method that declines (a weak verdict) is a row with its reason. Then one `ucan eval` pass over the original, every output and the reference, on the same batches. Columns: forget Recall@5 / NDCG@10 / KL, retain Recall@5 / NDCG@10, holdout NDCG@10, MIA AUC, the gap to the reference, seconds, forward-pass equivalents (a backward counts 2) and peak memory. Writes table.json (schema in docs/report-schema.md), table.md and, with the plot extra (pip install 'ucan-cli[plot]'), compare.png: forgetting against utility, cost as marker size.

    Examples:

      ucan compare --base ./base --adapter ./lora --forget f.jsonl --retain r.jsonl --holdout h.jsonl -o cmp

      ucan compare ... --methods ucan,graddiff,retrain --train train.jsonl --set retrain.epochs=30 --set retrain.lr=0.006 -o cmp

      ucan compare ... --methods ucan,graddiff --set ucan.ratio=0.05,0.1,0.2 --set graddiff.steps=10,30 --no-equal-forgetting -o curve
    """
    from ucan_cli.flows.compare import compare as run_compare
    from ucan_cli.io.statcache import resolve_cache_dir
    from ucan_cli.report.compare import render_compare
    from ucan_cli.ui import UI

    ui = UI(rt)
    run = run_compare(
        base, adapter, forget, retain, holdout, out, methods=methods.split(","), settings=set_ or [], train=train,
        reference=reference, equal_forgetting=equal_forgetting, accept_weak=accept_weak, template=template, max_length=rt.max_length, max_samples=rt.max_samples, seed=rt.seed,
        batch_size=rt.batch_size, max_batch_tokens=rt.max_batch_tokens, load=rt.load, allow_overlap=allow_overlap, receipt_key=receipt_key,
        allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, force=force, cache_dir=resolve_cache_dir(cache_dir, no_cache), progress=ui.progress, note=ui.detail,
    )
    ui.info(f"wrote {out}/: " + ", ".join(run.files) + ", methods/")
    if rt.json:
        ui.emit_json(run.document)
    else:
        render_compare(ui, run.document)
    for warning in run.warnings:
        ui.warn(warning)
