"""``ucan attenuate``: write a new adapter in which the forget-specific LoRA units are scaled down."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.methods.params import PANEL_RETRAIN
from ucan_cli.options import (
    AllowOverlapOpt,
    AllowPickleOpt,
    CacheDirOpt,
    NoCacheOpt,
    GradientOptions,
    MethodOptions,
    PANEL_DATA,
    PANEL_METHOD,
    PANEL_MODEL,
    PANEL_OUTPUT,
    ReceiptKeyOpt,
    RetainMaxSamplesOpt,
    RuntimeOptions,
    TemplateOpt,
    TrustRemoteCodeOpt,
    ucan_command,
)


@ucan_command(model=True)
def attenuate(
    base: Annotated[
        Optional[str],
        typer.Option("--base", help="Base model id or local path (not needed with --scores).", rich_help_panel=PANEL_MODEL),
    ] = None,
    adapter: Annotated[
        Optional[Path],
        typer.Option("--adapter", help="Input PEFT LoRA adapter directory (never modified).", rich_help_panel=PANEL_MODEL),
    ] = None,
    forget: Annotated[
        Optional[Path],
        typer.Option(
            "--forget", help="Forget set (JSONL). With --scores it only supplies the receipt (default: the score file's).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = None,
    retain: Annotated[
        Optional[Path],
        typer.Option("--retain", help="Retain set (JSONL; not needed with --scores).", rich_help_panel=PANEL_DATA),
    ] = None,
    train: Annotated[
        Optional[Path],
        typer.Option(
            "--train",
            help="--method retrain: the records the adapter was trained on (JSONL like --forget). Every record of a forget "
            "user (by user_id; records without one by id and by exact prompt and response) is removed before training.",
            rich_help_panel=PANEL_RETRAIN,
        ),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help="New adapter directory to write (refused if it exists, unless --force). Required unless --dry-run.",
            rich_help_panel=PANEL_OUTPUT,
        ),
    ] = None,
    scores: Annotated[
        Optional[Path],
        typer.Option(
            "--scores", help="Score file from `ucan score` for this adapter: no model loads; method options not given are taken from it.",
            rich_help_panel=PANEL_DATA,
        ),
    ] = None,
    method: Annotated[
        str,
        typer.Option(
            "--method",
            help="Unlearning method: ucan (the default); random: U-CAN's budget (its factors) on as many randomly "
            "drawn live units, seeded by --seed, a control for the choice of units; ga, graddiff or npo: gradient "
            "methods that train the LoRA weights on the forget set (options in the Gradient methods panel); retrain: "
            "a fresh LoRA with the adapter's config trained on --train without the forget users (the reference); "
            "negate: dW' = -scale x dW, the whole adapter's update turned around (a non-selective baseline; no model); "
            "prune: zero the output units with the largest forget/retain Taylor importance (Pruning panel).",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = "ucan",
    options: MethodOptions = None,
    gradient: GradientOptions = None,
    template: TemplateOpt = "alpaca",
    retain_max_samples: RetainMaxSamplesOpt = None,
    allow_overlap: AllowOverlapOpt = False,
    receipt_key: ReceiptKeyOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="Replace an existing OUT_DIR; also attenuate a forget set already in the adapter's ledger.",
            rich_help_panel=PANEL_OUTPUT,
        ),
    ] = False,
    accept_weak: Annotated[
        bool,
        typer.Option(
            "--accept-weak",
            help="Edit even when score's verdict is weak (no more units stand out than retain-vs-retain noise gives); "
            "without it such a request exits 4 with nothing written. Recorded in the report and ledger.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Compute everything and show what would change; write nothing.", rich_help_panel=PANEL_OUTPUT)
    ] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Scale down the LoRA units that fire more on the forget set than on the retain set.

    Writes OUT_DIR: the attenuated adapter (loads with PeftModel.from_pretrained), README.md (model card), ucan_report.json / ucan_report.md, ucan_config.toml and ucan_ledger.jsonl. The input adapter is never modified. Exit 4, with nothing written, when no unit is eligible or when the contrast is no stronger than noise (verdict weak; --accept-weak edits anyway).

    --method random writes the control: the same budget on randomly drawn live units (same documents; the report and ledger name the method).

    --method ga, graddiff or npo trains the LoRA A and B instead (no statistics pass, no verdict): --steps steps of --batch-size forget records, or until --until holds on the forget set (checked every --check-every steps); the report's training block records the steps, the stop reason and the cost. --dry-run prints the cost estimate without loading the model.

--method retrain --train FILE re-initialises the adapter's LoRA weights (same config) and trains them for --epochs on FILE without any forget user's record: the reference every method approximates, and what to do when score's verdict is noise. --method negate multiplies every lora_B (and lora bias) by -scale: no model loads, no --base or --retain; the forget file only supplies the receipt. --method prune zeroes the B rows of the --prune-ratio share of live output units with the highest forget/retain Taylor importance |a dL/da| (one forward and backward per record).

    With --scores no model loads: the score file's statistics are re-scored with the options given here (options not given keep the score file's values). A forget set already in the adapter's ledger is refused unless --force.

    --unit direction --retain-kl NATS chooses the strength by measurement: of --strength, --strength/2, ..., --strength/128 the largest whose edit moves the retain set by at most NATS of retain KL (as ucan eval reports it), refined by two bisections towards the next larger; each candidate costs one forward pass over the forget and retain sets, and the report shows every candidate's retain and forget KL. Needs --base, --forget and --retain (also with --scores). --keep-retain SHARE is the same search with a limit on utility instead: the largest strength whose edit keeps the retain set's NDCG@10 at least SHARE x the original's (the retain records need candidates). Recommended for direction units: --gate none --strength 4 --keep-retain 0.95 (docs/results.md, "The frontier").

    Examples:

      ucan attenuate --base ./base --adapter ./adapter --forget forget.jsonl --retain retain.jsonl -o ./adapter-forgot

      ucan score --base ./base --adapter ./adapter --forget f.jsonl --retain r.jsonl -o scores.safetensors

      ucan attenuate --adapter ./adapter --scores scores.safetensors --ratio 0.02 -o ./adapter-forgot

      ucan attenuate --adapter ./adapter-forgot --scores scores2.safetensors --forget f2.jsonl -o ./adapter-forgot-2

      ucan attenuate --adapter ./adapter --scores scores.safetensors --method random --seed 1 -o ./adapter-random

      ucan attenuate --base ./base --adapter ./adapter --forget f.jsonl --retain r.jsonl --method graddiff --until "forget.recall@5 <= 0.3" --steps 60 -o ./adapter-gd

      ucan attenuate --base ./base --adapter ./adapter --forget f.jsonl --retain r.jsonl --method retrain --train train.jsonl -o ./adapter-retrained

      ucan attenuate --adapter ./adapter --forget f.jsonl --method negate -o ./adapter-negated

      ucan attenuate --base ./base --adapter ./adapter --forget f.jsonl --retain r.jsonl --unit direction --gate none --strength 4 --keep-retain 0.95 -o ./adapter-dir
    """
    import shlex
    import sys

    from ucan_cli.flows.attenuate import attenuate as run_attenuate
    from ucan_cli.errors import InputError
    from ucan_cli.report.attenuate import render_attenuate
    from ucan_cli.ui import UI

    ui = UI(rt)
    if adapter is None:
        raise InputError("--adapter: the input adapter directory is required")
    from ucan_cli.io.statcache import resolve_cache_dir

    token_scope, halves = options.pop("token_scope"), options.pop("halves")
    run = run_attenuate(
        adapter, output, base=base, forget=forget, retain=retain, scores=scores, train=train, method=method, params={**options, **gradient},
        token_scope=token_scope, halves=halves,
        template=template, max_length=rt.max_length, retain_max_samples=retain_max_samples, max_samples=rt.max_samples,
        seed=rt.seed, batch_size=rt.batch_size, max_batch_tokens=rt.max_batch_tokens, load=rt.load, allow_overlap=allow_overlap,
        receipt_key=receipt_key, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, force=force,
        accept_weak=accept_weak, dry_run=dry_run, command_line=shlex.join(["ucan", *sys.argv[1:]]), progress=ui.progress,
        cache_dir=resolve_cache_dir(cache_dir, no_cache),
    )
    if rt.json:
        ui.emit_json(run.report)
    else:
        render_attenuate(ui, run.report, limit=None if rt.verbose else 20)
    for warning in run.warnings:
        ui.warn(warning)
