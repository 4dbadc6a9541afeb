"""``ucan inspect``: what a LoRA adapter holds, module by module, and whether ucan can edit it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.options import (
    AllowPickleOpt,
    PANEL_MODEL,
    RuntimeOptions,
    TrustRemoteCodeOpt,
    ucan_command,
)


@ucan_command(model=False)
def inspect(
    adapter: Annotated[Path, typer.Argument(metavar="ADAPTER", help="PEFT LoRA adapter directory (adapter_config.json + adapter_model.safetensors).")],
    base: Annotated[
        Optional[str],
        typer.Option("--base", help="Base model id or path: check that every target module exists with matching shapes.", rich_help_panel=PANEL_MODEL),
    ] = None,
    allow_pickle: AllowPickleOpt = False,
    trust_remote_code: TrustRemoteCodeOpt = False,
    all_modules: Annotated[bool, typer.Option("--all", help="Show every module, not only the first 40.")] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Show each LoRA module's shape, rank, scaling, ||dW||, rank spectrum and warnings.

    Norms and spectra come from the r x r core of the QR factors of B and A^T, so dW is never
    formed: a Llama-2-7B-sized adapter inspects in well under a second.

    Examples:

      ucan inspect ./adapter

      ucan inspect ./adapter --base ./base-model --json | jq '.totals'
    """
    from ucan_cli.inspection import summarize_adapter
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.report import inspect_document, render_inspect
    from ucan_cli.ui import UI

    ui = UI(rt)
    loaded = LoraAdapter.load(adapter, allow_pickle=allow_pickle)
    summaries = summarize_adapter(loaded)
    warnings = [f"unsupported: {f} (score and attenuate refuse this adapter)" for f in loaded.unsupported_features()]
    warnings += loaded.warnings()
    base_check = None
    if base is not None:
        from ucan_cli.runtime.models import check_adapter_matches_base, model_skeleton

        check_adapter_matches_base(loaded, model_skeleton(base, trust_remote_code=trust_remote_code))
        base_check = {"base": base, "ok": True}
    document = inspect_document(loaded, summaries, warnings, base_check)
    if rt.json:
        ui.emit_json(document)
    else:
        render_inspect(ui, document, limit=None if all_modules else 40)
    for warning in warnings:
        ui.warn(warning)
