"""The ``attenuate`` report: the JSON document (``ucan_report.json``, schema in docs/outputs.md),
its Markdown twin (``ucan_report.md``) and the Rich tables of the terminal.

The document only lays out numbers the library computed. It never carries forget text or raw
record ids (the forget set appears as its HMAC receipt), and never NaN or infinity.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from ucan_cli._version import __version__
from ucan_cli.evaluation.metrics import json_safe

SCHEMA_VERSION = 1

DISCLAIMER = (
    "U-CAN is approximate unlearning with no formal guarantee: it down-scales the LoRA units that fire "
    "more on the forget set than on the retain set. Earlier copies of the adapter, models merged with "
    "it, and modules_to_save (fully fine-tuned copies that ucan does not edit) still hold the data."
)

DIRECTION_DISCLAIMER = (
    "U-CAN with direction units is approximate unlearning with no formal guarantee: it removes from A the input "
    "directions where the forget set carries more energy than the retain set. Earlier copies of the adapter, models "
    "merged with it, and modules_to_save (fully fine-tuned copies that ucan does not edit) still hold the data."
)
GRADIENT_DISCLAIMER = (
    "Gradient unlearning is approximate unlearning with no formal guarantee: it changes the LoRA weights to "
    "make the forget set less likely. Earlier copies of the adapter, models merged with it, and modules_to_save "
    "(fully fine-tuned copies that ucan does not edit) still hold the data."
)

RETRAIN_DISCLAIMER = (
    "Retraining without the forget users' records is exact unlearning for this adapter only if the training file held "
    "everything the adapter was trained on and the base model never saw those records. Earlier copies of the adapter "
    "and models merged with it still hold the data."
)

NEGATE_DISCLAIMER = (
    "Task-vector negation is not selective: it turns the whole adapter's update around (dW' = -scale x dW), removing "
    "what it learned from every user, not only the forget set's. It is a baseline and a sanity bound, not a way to "
    "honour one user's request. Earlier copies of the adapter and models merged with it still hold the data."
)

#: Timing stages in the order they run.
STAGES = ("inputs", "statistics", "select", "edit", "write")


def attenuate_document(
    *,
    command_line: str,
    dry_run: bool,
    inputs: Mapping[str, Any],
    receipt: Mapping[str, Any],
    output: Mapping[str, Any] | None,
    options: Mapping[str, Any],
    unit: str,
    verdict: Mapping[str, Any],
    summary: Mapping[str, Any],
    changes: Sequence[Any],
    totals: Mapping[str, Any],
    lineage: Mapping[str, Any],
    warnings: Sequence[str],
    timings: Mapping[str, float],
    training: Mapping[str, Any] | None = None,
    disclaimer: str | None = None,
) -> dict:
    """The ``ucan_report.json`` document (schema_version 1), JSON-safe. ``training`` (a gradient
    method's run: steps, stop reason, checks, cost; with ``--dry-run`` its estimate) is added as
    the ``training`` block; U-CAN's documents have none. ``disclaimer`` replaces the default one
    (U-CAN's, or the gradient family's when there is a ``training`` block)."""
    modules = [c.to_dict() for c in changes]
    edited = [m for m in modules if m["n_edited"]]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "ucan_version": __version__,
        "command": "attenuate",
        "command_line": command_line,
        "dry_run": bool(dry_run),
        "inputs": dict(inputs),
        "receipt": dict(receipt),
        "output": dict(output) if output is not None else None,
        "options": dict(options),
        "unit": unit,
        "verdict": dict(verdict),
        "summary": dict(summary),
        "totals": {**dict(totals), "n_modules": len(modules), "n_modules_edited": len(edited)},
        "modules": modules,
        "lineage": dict(lineage),
        "warnings": list(warnings),
        "timings": {k: float(v) for k, v in timings.items()},
        "disclaimer": disclaimer or (GRADIENT_DISCLAIMER if training is not None else DIRECTION_DISCLAIMER if unit == "direction" else DISCLAIMER),
    }
    if training is not None:
        doc["training"] = dict(training)
    return json_safe(doc)


def headline(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The numbers every view leads with, as (label, value) pairs."""
    from ucan_cli.report import fmt

    s, t = doc["summary"], doc["totals"]
    if "training" in doc:
        return _pruning_headline(doc) if "pruned" in doc["summary"] else _training_headline(doc)
    if is_negation(doc):
        return _negation_headline(doc)
    if doc["unit"] == "direction":
        return _direction_headline(doc)
    floor = doc["options"].get("floor", 0.0)
    return [
        ("unit", doc["unit"]),
        ("units (live / total)", f"{fmt(s['n_live'])} / {fmt(s['n_units'])}"),
        ("eligible", fmt(s["n_eligible"])),
        ("budget k", fmt(s["k"])),
        ("attenuated #(s < 1)", fmt(s["n_attenuated"])),
        (f"#(s <= {fmt((1 + floor) / 2)})", fmt(s["n_at_most_half"])),
        ("sum(1 - s)", fmt(s["budget_sum_1_minus_s"])),
        ("largest R / sigma0", fmt(s["max_R_over_sigma0"])),
        *_dw_rows(t, relative_change=True),
    ]


def _dw_rows(t: Mapping[str, Any], *, modules: str = "modules edited", relative_change: bool = False) -> list[tuple[str, str]]:
    """The totals' rows every headline shares: modules edited, ‖dW‖ before and after, (its relative
    change,) and ‖dW' − dW‖ relative to ‖dW‖."""
    from ucan_cli.report import fmt

    rows = [(modules, f"{t['n_modules_edited']} / {t['n_modules']}"),
            ("‖dW‖_F before -> after", f"{fmt(t['dw_norm_before'])} -> {fmt(t['dw_norm_after'])}")]
    if relative_change:
        rows.append(("relative change of ‖dW‖_F", f"{100 * t['rel_norm_change']:+.3g} %"))
    return rows + [("‖dW' − dW‖_F / ‖dW‖_F", f"{100 * t['rel_delta']:.3g} %")]


def is_negation(doc: Mapping[str, Any]) -> bool:
    """A document of an adapter edit by negation (its summary carries the scale, no statistics)."""
    return "scale" in doc["summary"] and "n_eligible" not in doc["summary"]


def _negation_headline(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """An adapter edit's headline (``negate``): the scale and how dW moved."""
    from ucan_cli.report import fmt

    s, t = doc["summary"], doc["totals"]
    rows = [("method", doc["options"].get("method", "?")), ("scale: dW' = -scale x dW", fmt(s["scale"]))]
    if "dw_norm_before" in t:
        rows += _dw_rows(t)
    return rows + [("cost (forward-pass equivalents)", "0")]


def _direction_headline(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Direction units (SPEC 3b): the directions above lambda0 against noise, what the edit of A did."""
    from ucan_cli.report import fmt

    s, t = doc["summary"], doc["totals"]
    search = s.get("strength_search")
    chosen = []
    if search:
        limit, row = search_limit(search), _chosen_row(search)
        kept = (f"retain KL {fmt(row['retain_kl'])} <= {fmt(limit.value)} nats" if limit.kind == "retain_kl" else
                f"retain NDCG@10 {fmt(row['retain_ndcg@10_share'])} x the original's >= {fmt(limit.value)}, retain KL {fmt(row['retain_kl'])}")
        chosen = [(f"strength chosen by {limit.flag}",
                   f"{fmt(search['chosen_strength'])}: {kept}, forget KL {fmt(row['forget_kl'])} "
                   f"({sum(c['edited'] for c in search['candidates'])} strengths measured, {search['record_passes']} record passes)")]
    return [
        ("unit", f"direction (gate {s['gate']}, strength {fmt(s['strength'])}, shrinkage {fmt(s['shrinkage'])})"),
        *chosen,
        ("directions (live / total)", f"{fmt(s['n_live'])} / {fmt(s['n_units'])}"),
        ("above lambda0 (noise alone)", f"{fmt(s['n_above_lambda0'])} ({fmt(s['n_noise_above_lambda0'])})"),
        ("largest max lambda / lambda0", fmt(s["max_lambda_over_lambda0"])),
        ("directions edited #(s < 0.999)", fmt(s["k"])),
        ("#(s <= 0.5)", fmt(s["n_at_most_half"])),
        ("sum(1 - s)", fmt(s["budget_sum_1_minus_s"])),
        *_dw_rows(t, modules="modules edited (A only)", relative_change=True),
    ]


def search_limit(search: Mapping[str, Any]):
    """The ``Limit`` a report's ``strength_search`` was run under."""
    from ucan_cli.methods.ucan.strength import Limit

    kind = search.get("limit", "retain_kl")
    return Limit(kind, search["retain_kl_budget"] if kind == "retain_kl" else search["keep_retain"])


def strength_title(search: Mapping[str, Any]) -> str:
    """``Strength search (--keep-retain 0.95)``."""
    from ucan_cli.report import fmt

    limit = search_limit(search)
    return f"Strength search ({limit.flag} {fmt(limit.value)})"


def _chosen_row(search: Mapping[str, Any]) -> Mapping[str, Any]:
    """The candidate of a strength search that was chosen."""
    return next(c for c in search["candidates"] if c["strength"] == search["chosen_strength"])


STRENGTH_COLUMNS = ("strength", "retain KL", "retain NDCG@10 x", "forget KL", "forget KL / retain KL", "forget Recall@5", "")


def strength_rows(search: Mapping[str, Any]) -> list[tuple[str, ...]]:
    """One row per candidate of a strength search (STRENGTH_COLUMNS), largest strength first."""
    from ucan_cli.report import fmt

    limit = search_limit(search)
    rows = []
    for c in search["candidates"]:
        if not c["edited"]:
            rows.append((fmt(c["strength"]), "-", "-", "-", "-", "-", "edits nothing"))
            continue
        r, f = c["retain_kl"], c["forget_kl"]
        ratio = fmt(f / r) if r and f is not None else "-"
        mark = "chosen" if c["strength"] == search["chosen_strength"] else ("" if limit.within(c) else "outside the limit")
        note = ", ".join(x for x in ("bisection" if c.get("stage") == "refine" else "", mark) if x)
        rows.append((fmt(c["strength"]), fmt(r), fmt(c.get("retain_ndcg@10_share")), fmt(f), ratio, fmt(c.get("forget_recall@5")), note))
    return rows


def _training_headline(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """A gradient method's headline: what ran, why it stopped, what it cost, how dW moved."""
    from ucan_cli.report import fmt

    tr, t = doc["training"], doc["totals"]
    est = tr.get("estimate") or {}
    rows = [("method", doc["options"].get("method", "?"))]
    if "steps_run" not in tr:  # a dry run: the estimate only
        steps = [("steps (at most)", fmt(est["steps_at_most"]))] if "steps_at_most" in est else []
        return rows + steps + [("estimated cost (forward-pass equivalents)", fmt(est.get("forward_equivalents")))]
    cost = tr["cost"]
    rows += [
        ("steps run / budget", f"{fmt(tr['steps_run'])} / {fmt(tr['steps_budget'])}"),
        ("stopped by", tr["stop_reason"] + (f" ({tr['target']})" if tr.get("target") else "")),
        ("loss first -> last", f"{fmt(tr['losses'][0])} -> {fmt(tr['losses'][-1])}" if tr["losses"] else "-"),
    ]
    if tr.get("checks"):
        last = tr["checks"][-1]
        metric = next(k for k in last if k not in ("step", "forget_nll", "met"))
        rows.append((f"forget {metric} original -> stop", f"{fmt(tr['checks'][0][metric])} -> {fmt(last[metric])}"))
    if tr.get("retain_at_stop"):
        r = tr["retain_at_stop"]
        rows.append(("retain at stop (NDCG@10, NLL)", f"{fmt(r.get('ndcg@10'))}, {fmt(r.get('nll'))}"))
    rows += [
        ("cost (forward-pass equivalents)", fmt(cost["forward_equivalents"])),
        ("cost (seconds)", fmt(cost["seconds"])),
    ]
    if "dw_norm_before" in t:
        rows += _dw_rows(t)
    return rows


def _pruning_headline(doc: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``prune``'s headline: how many units it zeroed, ranked how, what the importance passes cost."""
    from ucan_cli.report import fmt

    s, t, tr = doc["summary"], doc["totals"], doc["training"]
    return [
        ("method", f"{doc['options'].get('method', '?')} (score: {tr.get('score')})"),
        ("units (live / total)", f"{fmt(s['n_live'])} / {fmt(s['n_units'])}"),
        ("pruned (factor 0)", fmt(s["n_attenuated"])),
        ("cost (forward-pass equivalents)", fmt(tr["cost"]["forward_equivalents"])),
        ("cost (seconds)", fmt(tr["cost"]["seconds"])),
        *_dw_rows(t),
    ]


def _edited_modules(doc: Mapping[str, Any], limit: int | None) -> tuple[list[dict], int]:
    edited = [m for m in doc["modules"] if m["n_edited"]]
    edited.sort(key=lambda m: -m["rel_delta"])
    shown = edited if limit is None else edited[:limit]
    return shown, len(edited) - len(shown)


def render_attenuate(ui, doc: Mapping[str, Any], *, limit: int | None = 20) -> None:
    """Summary, the most-changed modules and the time per stage, on the UI's table stream."""
    from rich.table import Table

    from ucan_cli.report import fmt

    method = doc["options"].get("method")
    if "training" in doc:
        kind = "retraining" if "train_records" in doc["training"] else "pruning" if "prune_score" in doc["options"] else "gradient method"
        what = f"{method} ({kind})"
    else:
        what = f"{method} (task-vector negation)" if is_negation(doc) else "U-CAN attenuation"
    title = f"{what} (dry run: nothing written)" if doc["dry_run"] else f"{what} -> {doc['output']['path']}"
    summary = Table(title=title, title_justify="left", show_header=False)
    summary.add_column("what")
    summary.add_column("value", justify="right")
    for label, value in headline(doc):
        summary.add_row(label, value)
    ui.table(summary)

    shown, more = _edited_modules(doc, limit)
    if shown:
        table = Table(title="Modules edited (largest relative change first)", title_justify="left")
        for col in ("module", "units edited", "#(s <= mid)", "min s", "sum(1-s)", "‖dW‖ rel. change", "‖dW'−dW‖/‖dW‖"):
            table.add_column(col, justify="left" if col == "module" else "right")
        for m in shown:
            table.add_row(
                m["name"], f"{m['n_edited']} / {m['n_units']}", str(m["n_at_most_half"]), fmt(m["min_factor"]),
                fmt(m["sum_1_minus_s"]), f"{100 * m['rel_norm_change']:+.3g} %", f"{100 * m['rel_delta']:.3g} %",
            )
        if more:
            table.caption = f"{more} more edited modules in ucan_report.json (--json prints every one)"
        ui.table(table)
    if doc["summary"].get("directions"):
        from ucan_cli.report.score import render_direction_table

        ui.table(render_direction_table(doc["summary"]["directions"], title="Directions per module (largest max lambda / lambda0 first)", limit=limit))
    if doc["summary"].get("strength_search"):
        search = doc["summary"]["strength_search"]
        table = Table(title=f"{strength_title(search)}: measured on the forget and retain sets", title_justify="left")
        for col in STRENGTH_COLUMNS:
            table.add_column(col, justify="right" if col else "left")
        for row in strength_rows(search):
            table.add_row(*row)
        ui.table(table)
    timings = doc["timings"]
    ui.table("time per stage: " + ", ".join(f"{k} {timings[k]:.3f} s" for k in timings))


def attenuate_markdown(doc: Mapping[str, Any], *, limit: int | None = 50) -> str:
    """``ucan_report.md``: the same numbers as the JSON, for people."""
    from ucan_cli.report import fmt

    lines = ["# ucan attenuate report", ""]
    if doc["dry_run"]:
        lines += ["Dry run: nothing was written.", ""]
    lines += ["```", doc["command_line"], "```", "", "| | |", "|---|---|"]
    lines += [f"| {label} | {value} |" for label, value in headline(doc)]
    lines += ["", "## Inputs", "", "| input | path | SHA-256 |", "|---|---|---|"]
    for name, value in doc["inputs"].items():
        if isinstance(value, Mapping):
            lines.append(f"| {name} | `{value.get('path')}` | `{value.get('sha256')}` |")
        elif value is not None:
            lines.append(f"| {name} | `{value}` | |")
    r = doc["receipt"]
    lines += [
        "",
        f"Forget set receipt (HMAC-SHA256): `{r['forget_set_hmac']}` under receipt key `{r['key_fingerprint']}`.",
    ]
    if doc["output"]:
        lines += ["", f"Output adapter SHA-256: `{doc['output']['adapter_sha256']}`."]
    shown, more = _edited_modules(doc, limit)
    lines += ["", "## Modules edited", ""]
    if shown:
        lines += ["| module | units edited | #(s <= mid) | min s | sum(1-s) | ‖dW‖ rel. change | ‖dW'−dW‖/‖dW‖ |", "|---|---:|---:|---:|---:|---:|---:|"]
        for m in shown:
            lines.append(
                f"| `{m['name']}` | {m['n_edited']} / {m['n_units']} | {m['n_at_most_half']} | {fmt(m['min_factor'])} | "
                f"{fmt(m['sum_1_minus_s'])} | {100 * m['rel_norm_change']:+.3g} % | {100 * m['rel_delta']:.3g} % |"
            )
        if more:
            lines += ["", f"{more} more edited modules are listed in ucan_report.json."]
    else:
        lines.append("None.")
    if doc["summary"].get("directions"):
        lines += ["", "## Directions per module", "", "| module | directions edited | above lambda0 | max lambda | lambda0 | min s | sum(1-s) |",
                  "|---|---:|---:|---:|---:|---:|---:|"]
        for m in doc["summary"]["directions"]:
            lines.append(
                f"| `{m['name']}` | {m['n_edited']} / {m['directions']} | {m['n_above_lambda0']} | {fmt(m['max_lambda'])} | "
                f"{fmt(m['lambda0'])} | {fmt(m['min_factor'])} | {fmt(m['sum_1_minus_s'])} |"
            )
    if doc["summary"].get("strength_search"):
        search = doc["summary"]["strength_search"]
        lines += ["", f"## {strength_title(search)}", "",
                  "Each candidate strength's edit, measured on the forget and retain sets (KL from the original and NDCG@10 "
                  f"over the original's, as `ucan eval` reports them); the largest strength with {search_limit(search).describe()} "
                  "was chosen.", "",
                  "| " + " | ".join(c or "note" for c in STRENGTH_COLUMNS) + " |", "|" + "---:|" * (len(STRENGTH_COLUMNS) - 1) + "---|"]
        lines += ["| " + " | ".join(row) + " |" for row in strength_rows(search)]
    lines += ["", "## Options", "", "| option | value |", "|---|---|"]
    lines += [f"| {k} | `{json.dumps(v)}` |" for k, v in doc["options"].items()]
    lin = doc["lineage"]
    lines += ["", "## Lineage", "", f"Ledger entry {lin['seq']} (earlier requests: {lin['previous_entries']})."]
    if doc["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in doc["warnings"]]
    lines += ["", "## Time per stage", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.3g} |" for k, v in doc["timings"].items()]
    lines += ["", "## What this is", "", doc["disclaimer"], ""]
    return "\n".join(lines)
