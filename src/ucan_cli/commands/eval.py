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
    """
    import time

    from ucan_cli.errors import GateFailed, InputError
    from ucan_cli.evaluation.run import adapter_entries, check_against_base, evaluate
    from ucan_cli.evaluation.gates import check_gates, failure_summary, parse_gates
    from ucan_cli.io.data import check_disjoint, read_records
    from ucan_cli.runtime.models import load_base_model, load_tokenizer, model_skeleton, resolve_device, resolve_dtype
    from ucan_cli.io.outdir import atomic_output_dir, check_output_dir
    from ucan_cli.options import parse_int_list
    from ucan_cli.report.eval import document_json, eval_document, eval_markdown, records_lines, render_eval
    from ucan_cli.ui import UI

    ui = UI(rt)
    # Everything that can be checked from files and flags comes before any model loads (exit 2).
    ks = parse_int_list(k, "-k")
    gates = parse_gates(fail_if or [], ks=ks, have_reference=reference is not None, have_holdout=holdout is not None)
    if per_record and out is None:
        raise InputError("--per-record writes records.jsonl into the report directory; give -o")
    entries = adapter_entries(adapter, unlearned, reference=reference, include_base=include_base, allow_pickle=allow_pickle)
    sets = {"forget": read_records(forget, "forget"), "retain": read_records(retain, "retain")}
    if holdout is not None:
        sets["holdout"] = read_records(holdout, "holdout")
    sets = {name: s.sample(rt.max_samples, rt.seed) for name, s in sets.items()}
    check_disjoint(sets["forget"], sets["retain"], allow_overlap=allow_overlap)
    # Never write over (or, with --force, delete) anything this run reads.
    from ucan_cli.io.receipts import key_path

    protected = [e.path for e in entries] + [forget, retain, holdout, key_path(receipt_key), base, template]
    if out is not None:
        check_output_dir(out, force=force, protected=protected)
    key = fingerprint = None
    if per_record:
        from ucan_cli.io.receipts import key_fingerprint, load_or_create_key

        key = load_or_create_key(receipt_key)
        fingerprint = key_fingerprint(key)
    device = resolve_device(rt.device)
    dtype = resolve_dtype(rt.dtype, device)
    check_against_base(entries, model_skeleton(base, trust_remote_code=trust_remote_code))

    t = time.perf_counter()
    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    model = load_base_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle)
    load_s = time.perf_counter() - t
    ui.detail(f"loaded {base} in {load_s:.1f} s on {device} ({dtype})")

    result = evaluate(
        model, tokenizer, entries, sets["forget"], sets["retain"], sets.get("holdout"),
        ks=ks, bootstrap=bootstrap, seed=rt.seed, batch_size=rt.batch_size, max_length=rt.max_length,
        template=template, progress=ui.progress,
    )
    outcomes = check_gates(gates, result.results, result.unlearned_ids, result.null_reasons)
    document = eval_document(
        result, base=base, gates=outcomes, gate_texts=[g.text for g in gates], receipt_fingerprint=fingerprint,
        per_record_file="records.jsonl" if per_record else None, extra_stages={"load_model_s": load_s},
    )
    if out is not None:
        with atomic_output_dir(out, force=force, protected=protected) as tmp:
            (tmp / "report.json").write_text(document_json(document), encoding="utf-8")
            (tmp / "report.md").write_text(eval_markdown(document), encoding="utf-8")
            if per_record:
                assert key is not None
                with open(tmp / "records.jsonl", "w", encoding="utf-8") as handle:
                    for line in records_lines(result, key):
                        handle.write(line + "\n")
        ui.info(f"wrote {out}/report.json and report.md" + (" and records.jsonl" if per_record else ""))
    if rt.json:
        ui.emit_json(document)
    else:
        render_eval(ui, document)
    for warning in document["warnings"]:
        ui.warn(warning)
    failed = failure_summary(outcomes)
    if failed is not None:
        raise GateFailed(failed)
