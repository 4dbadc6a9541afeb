"""``ucan eval``: prove that forgetting happened and that recommendations still work; gate a release."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.options import (
    AllowOverlapOpt,
    AllowPickleOpt,
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


@ucan_command()
def eval_(
    base: Annotated[str, typer.Option("--base", help="Base model id or path (loaded once).", rich_help_panel=PANEL_MODEL)],
    adapter: Annotated[
        Path, typer.Option("--adapter", help="The ORIGINAL LoRA adapter, before unlearning.", rich_help_panel=PANEL_MODEL)
    ],
    unlearned: Annotated[
        list[Path],
        typer.Option("--unlearned", help="An unlearned adapter; repeat to compare several (unlearned_1, unlearned_2, ...).", rich_help_panel=PANEL_MODEL),
    ],
    forget: Annotated[Path, typer.Option("--forget", help="Forget set D_f (JSONL).", rich_help_panel=PANEL_DATA)],
    retain: Annotated[Path, typer.Option("--retain", help="Retain set D_r (JSONL).", rich_help_panel=PANEL_DATA)],
    holdout: Annotated[
        Optional[Path],
        typer.Option("--holdout", help="Held-out set D_h, never trained on: generalization utility and membership inference.", rich_help_panel=PANEL_DATA),
    ] = None,
    reference: Annotated[
        Optional[Path],
        typer.Option("--reference", help="A retrained reference adapter (trained without D_f): the gap to it is the tuning target.", rich_help_panel=PANEL_MODEL),
    ] = None,
    include_base: Annotated[
        bool, typer.Option("--include-base", help="Also evaluate the base model alone (the 'everything forgotten' floor).", rich_help_panel=PANEL_MODEL)
    ] = False,
    template: TemplateOpt = "alpaca",
    allow_overlap: AllowOverlapOpt = False,
    k: Annotated[str, typer.Option("-k", "--k", help="Cut-offs K for Recall/MRR/NDCG/Trade-off, comma-separated.", rich_help_panel=PANEL_METHOD)] = "1,5,10",
    bootstrap: Annotated[
        int, typer.Option("--bootstrap", help="Paired bootstrap resamples for 95% CIs (seeded by --seed; 0 disables).", rich_help_panel=PANEL_METHOD, min=0)
    ] = 1000,
    fail_if: Annotated[
        Optional[list[str]],
        typer.Option(
            "--fail-if",
            help="Exit 3 (after writing the report) if 'GROUP.METRIC OP VALUE' holds for any unlearned adapter; "
            "OP is < > <= >=, VALUE a number, 'original', 'reference' or 'X*original'. Repeatable. See docs/report-schema.md.",
            rich_help_panel=PANEL_METHOD,
        ),
    ] = None,
    out: Annotated[
        Optional[Path], typer.Option("-o", "--out", help="Write report.json and report.md into this new directory.", rich_help_panel=PANEL_OUTPUT)
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o directory.", rich_help_panel=PANEL_OUTPUT)] = False,
    per_record: Annotated[
        bool,
        typer.Option("--per-record", help="Also write records.jsonl: per-record values keyed by HMAC receipts (needs -o).", rich_help_panel=PANEL_OUTPUT),
    ] = False,
    receipt_key: ReceiptKeyOpt = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Compare the original adapter with unlearned ones on the forget, retain and held-out sets.

    Forget effect (KL, prediction shift, PPL, Recall/MRR/NDCG@K on D_f), retain utility (the same on D_r and D_h), Trade-off@K, the gap to a retrained reference, membership-inference AUC, paired-bootstrap 95% CIs and cost. The base model loads once; every adapter sees the same batches. --fail-if gates make it a release check (exit 3, after the report is written).

    Examples:

      ucan eval --base ./base --adapter ./lora --unlearned ./lora-forgot --forget f.jsonl --retain r.jsonl

      ucan eval --base ./base --adapter ./lora --unlearned ./u1 --unlearned ./u2 --reference ./retrained --include-base --forget f.jsonl --retain r.jsonl --holdout h.jsonl -o eval-report

      ucan eval ... --fail-if "forget.recall@10 > 0.6" --fail-if "retain.ndcg@10 < 0.95*original" --json

      torchrun --nproc-per-node 4 -m ucan_cli eval ... -o eval-report   # 4 GPUs share the records; rank 0 writes
    """
    from ucan_cli.errors import GateFailed
    from ucan_cli.flows.evaluate import evaluate
    from ucan_cli.options import parse_int_list
    from ucan_cli.report.eval import render_eval
    from ucan_cli.ui import UI

    ui = UI(rt)
    run = evaluate(
        base, adapter, unlearned, forget, retain, holdout, reference=reference, include_base=include_base,
        ks=parse_int_list(k, "-k"), bootstrap=bootstrap, fail_if=fail_if or [], out_dir=out, force=force,
        per_record=per_record, receipt_key=receipt_key, template=template, max_length=rt.max_length,
        max_samples=rt.max_samples, seed=rt.seed, batch_size=rt.batch_size, load=rt.load,
        allow_overlap=allow_overlap, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
        progress=ui.progress, detail=ui.detail, max_batch_tokens=rt.max_batch_tokens,
    )
    if run.out_dir is not None:
        ui.info(f"wrote {out}/" + " and ".join(run.files))
    if rt.json:
        ui.emit_json(run.document)
    else:
        render_eval(ui, run.document)
    for warning in run.warnings:
        ui.warn(warning)
    if run.gate_failure is not None:
        raise GateFailed(run.gate_failure)
