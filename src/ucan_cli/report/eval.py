"""The ``eval`` report: report.json (schema in docs/report-schema.md), report.md, a Rich table and
records.jsonl (per-record values keyed by HMAC receipts, never text or extra fields).

Nothing here computes a metric: the numbers come from ``ucan_cli.evaluation.run.EvalResult``; this
module lays them out, says which direction is better, and colours each adapter against the
original.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any

from ucan_cli._version import __version__
from ucan_cli.evaluation.metrics import json_safe

SCHEMA_VERSION = 1

HIGHER, LOWER, HALF, NONE = "higher", "lower", "toward 0.5", "none"

APPROXIMATE_NOTE = (
    "U-CAN is approximate unlearning with no formal guarantee: these metrics measure how far the "
    "adapter's behaviour moved, not that the data is gone (earlier adapter copies, merged models and "
    "modules_to_save still hold it)."
)

GROUP_TITLES = (
    ("Forget effect", ("forget", "tradeoff", "reference")),
    ("Retain utility", ("retain", "holdout")),
    ("Privacy", ("privacy",)),
    ("Cost", ("cost",)),
)


def direction(path: str) -> str:
    """Which way is better for a metric path ``group.metric`` (see docs/metrics.md).

    On D_f lower ranking metrics mean forgotten; higher KL, shift and PPL mean the predictions
    moved. On D_r and D_h utility should stay high and KL, shift, PPL low. MIA AUC is best at
    0.5 (members look like non-members).
    """
    group, _, metric = path.partition(".")
    stem = metric.partition("@")[0]
    if metric == "tied_records":
        return LOWER
    if group == "forget":
        return LOWER if stem in ("recall", "mrr", "ndcg", "m") else HIGHER
    if group in ("retain", "holdout"):
        return HIGHER if stem in ("recall", "mrr", "ndcg", "m") else LOWER
    if group == "tradeoff":
        return HIGHER
    if group == "reference":
        return LOWER
    if group == "privacy":
        return HALF
    if group == "cost":
        return HIGHER if metric == "samples_per_s" else LOWER
    return NONE


def _compare(path: str, value: Any, original: Any) -> int:
    """+1 if ``value`` is better than the original's, -1 if worse, 0 if equal or not comparable."""
    if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (value, original)):
        return 0
    d = direction(path)
    if d == HALF:
        a, b = abs(value - 0.5), abs(original - 0.5)
        return (a < b) - (a > b)
    if d == HIGHER:
        return (value > original) - (value < original)
    if d == LOWER:
        return (value < original) - (value > original)
    return 0


# --------------------------------------------------------------------------- report.json


def eval_document(
    result,
    *,
    base: str,
    gates: Sequence[Any] = (),
    gate_texts: Sequence[str] = (),
    receipt_fingerprint: str | None = None,
    per_record_file: str | None = None,
    extra_stages: dict[str, float] | None = None,
) -> dict:
    """The report.json document (schema_version 1, docs/report-schema.md); JSON-safe (no NaN).

    ``gates`` are ``gates.GateOutcome`` values; ``extra_stages`` adds the caller's timings (model
    loading) to ``cost.stages`` and ``cost.wall_s``.
    """
    cost = dict(result.cost)
    cost["stages"] = dict(cost["stages"])
    if extra_stages:
        cost["stages"].update(extra_stages)
        cost["wall_s"] = cost["wall_s"] + sum(extra_stages.values())
    paths = sorted({f"{g}.{m}" for r in result.results.values() for g, block in r.items() for m in block})
    outcomes = [g.to_dict() for g in gates]
    doc = {
        "schema_version": SCHEMA_VERSION,
        "report": "ucan eval",
        "ucan_version": __version__,
        "note": APPROXIMATE_NOTE,
        "base_model": base,
        "adapters": [
            {"id": a.id, "role": a.role, "path": str(a.path) if a.path else None, "sha256": a.sha256}
            for a in result.adapters
        ],
        "data": result.data,
        "settings": result.settings,
        "results": result.results,
        "null_reasons": result.null_reasons,
        "ci": result.ci,
        "ci_vs_original": result.ci_vs_original,
        "directions": {p: direction(p) for p in paths},
        "memorization_gap": result.memorization_gap,
        "warnings": list(result.warnings),
        "cost": cost,
        "gates": {
            "expressions": list(gate_texts),
            "outcomes": outcomes,
            "passed": not any(o["failed"] for o in outcomes),
        },
        "receipt_key_fingerprint": receipt_fingerprint,
        "per_record_file": per_record_file,
    }
    return json_safe(doc)


# --------------------------------------------------------------------------- rows shared by table and markdown


def _rows(document: dict) -> Iterator[tuple[str, list[str]]]:
    """(group title, metric paths) in display order; m@K stays in the JSON only."""
    ks = document["settings"]["ks"]
    present = set(document["directions"])
    for title, groups in GROUP_TITLES:
        paths: list[str] = []
        for group in groups:
            if group in ("forget", "retain", "holdout"):
                candidates = [f"{group}.{m}@{k}" for m in ("recall", "mrr", "ndcg") for k in ks]
                candidates += [f"{group}.{m}" for m in ("kl", "shift", "ppl", "tied_records")]
            elif group == "tradeoff":
                candidates = [f"tradeoff.{r}@{k}" for r in ("retain", "holdout") for k in ks]
            elif group == "reference":
                candidates = [f"reference.gap@{k}" for k in ks] + ["reference.kl"]
            elif group == "privacy":
                candidates = ["privacy.mia_auc"]
            else:
                candidates = ["cost.forward_s", "cost.sequences", "cost.samples_per_s"]
            paths += [p for p in candidates if p in present]
        if paths:
            yield title, paths


_LABELS = {
    "kl": "KL(p_o||p_x)",
    "shift": "shift",
    "ppl": "PPL",
    "tied_records": "tied records",
    "mia_auc": "MIA AUC (D_f vs D_h)",
    "forward_s": "forward s",
    "sequences": "sequences",
    "samples_per_s": "records/s",
}

_SUBHEADS = {
    "forget": "forget set D_f",
    "tradeoff": "trade-off",
    "reference": "gap to reference",
    "retain": "retain set D_r",
    "holdout": "held-out D_h",
}


def _label(path: str) -> str:
    """Row label without the group (the group's sub-heading names it)."""
    group, _, metric = path.partition(".")
    stem, at, k = metric.partition("@")
    if group == "tradeoff":
        return f"Trade-off@{k} (r={'D_r' if stem == 'retain' else 'D_h'})"
    if group == "reference":
        return f"|M_x - M_ref|@{k}" if stem == "gap" else "KL(p_ref||p_x)"
    if not at:
        return _LABELS.get(metric, metric)
    name = {"recall": "Recall", "mrr": "MRR", "ndcg": "NDCG"}.get(stem, stem)
    return f"{name}@{k}"


_ARROWS = {HIGHER: "↑", LOWER: "↓", HALF: "→0.5", NONE: ""}


def _value(document: dict, adapter: str, path: str) -> Any:
    group, _, metric = path.partition(".")
    return document["results"].get(adapter, {}).get(group, {}).get(metric)


def _fmt(value: Any) -> str:
    from ucan_cli.report import fmt

    return fmt(value)


def render_eval(ui, document: dict) -> None:
    """The summary table: one column per adapter, rows grouped, coloured against the original."""
    from rich.table import Table

    adapters = [a["id"] for a in document["adapters"]]
    table = Table(title="ucan eval", title_justify="left")
    table.add_column("metric", justify="left", no_wrap=True)
    table.add_column("better", justify="center", no_wrap=True)
    for a in adapters:
        table.add_column(a, justify="right", min_width=8, overflow="fold")
    blank = [""] * (len(adapters) + 1)
    for title, paths in _rows(document):
        table.add_section()
        table.add_row(f"[bold]{title}[/]", *blank)
        group = None
        for path in paths:
            if path.partition(".")[0] != group:
                group = path.partition(".")[0]
                if group in _SUBHEADS:
                    table.add_row(f"[dim]{_SUBHEADS[group]}[/]", *blank)
            cells = []
            original = _value(document, "original", path)
            for a in adapters:
                v = _value(document, a, path)
                text = _fmt(v)
                if a != "original":
                    sign = _compare(path, v, original)
                    text = f"[green]{text}[/]" if sign > 0 else f"[red]{text}[/]" if sign < 0 else text
                cells.append(text)
            table.add_row(f"  {_label(path)}", _ARROWS[direction(path)], *cells)
        if title == "Privacy" and document.get("memorization_gap"):
            gap = document["memorization_gap"]
            table.add_row("  memorization gap", "", _fmt(gap["gap"]), *[""] * (len(adapters) - 1))
    table.caption = "green: better than the original, red: worse; 95% CIs and null reasons are in report.json / report.md"
    ui.table(table)
    reasons = _unique_reasons(document)
    if reasons:
        ui.table("n/a: " + "; ".join(reasons))
    gates = document["gates"]
    for o in gates["outcomes"]:
        if o["failed"]:
            ui.table(f"[red]gate failed[/] {o['adapter']}: {o['gate']} ({o['reason']})")
    if gates["expressions"] and gates["passed"]:
        ui.table(f"[green]all {len(gates['expressions'])} gate(s) passed[/] for every unlearned adapter")


def _unique_reasons(document: dict) -> list[str]:
    seen: dict[str, list[str]] = {}
    for per_adapter in document["null_reasons"].values():
        for path, reason in per_adapter.items():
            seen.setdefault(reason, [])
            if path not in seen[reason]:
                seen[reason].append(path)
    return [f"{', '.join(paths[:3])}{' ...' if len(paths) > 3 else ''}: {reason}" for reason, paths in seen.items()]


# --------------------------------------------------------------------------- report.md


def eval_markdown(document: dict) -> str:
    """report.md: the same table with 95% CIs, the inputs, warnings, gates and cost."""
    adapters = document["adapters"]
    ids = [a["id"] for a in adapters]
    lines = ["# ucan eval report", "", f"ucan {document['ucan_version']}, report schema {document['schema_version']}.", ""]
    lines += [f"> {document['note']}", ""]
    lines += ["## Inputs", "", f"Base model: `{document['base_model']}`", ""]
    lines += ["| adapter | role | path | sha256 |", "|---|---|---|---|"]
    for a in adapters:
        lines.append(f"| {a['id']} | {a['role']} | `{a['path'] or '(base model alone)'}` | {(a['sha256'] or '')[:16]} |")
    lines += ["", "| set | records | scope | scoring | candidates | response tokens | sha256 |", "|---|---|---|---|---|---|---|"]
    for name, d in document["data"].items():
        cands = f"{d['min_candidates']}..{d['max_candidates']}" if d["records_without_candidates"] == 0 else (
            f"missing on {d['records_without_candidates']}")
        lines.append(
            f"| {name} | {d['records']} | {d['scope']} ({d['scope_records']}) | {d['scoring']} | {cands} | "
            f"{d['response_tokens']} | {(d['sha256'] or '')[:16]} |"
        )
    s = document["settings"]
    lines += ["", f"K = {', '.join(map(str, s['ks']))}; bootstrap {s['bootstrap']} resamples, seed {s['seed']}; "
              f"batch size {s['batch_size']}, max length {s['max_length']}, template {s['template']}, "
              f"{s['dtype']} on {s['device']}.", ""]
    lines += ["## Metrics", "", "Cells: value [95% CI]. Better: ↑ higher, ↓ lower, →0.5 closer to 0.5.", ""]
    lines += ["| metric | better | " + " | ".join(ids) + " |", "|---|---|" + "---|" * len(ids)]
    for title, paths in _rows(document):
        lines.append(f"| **{title}** | |" + " |" * len(ids))
        for path in paths:
            group, _, metric = path.partition(".")
            cells = []
            for a in ids:
                text = _fmt(_value(document, a, path))
                ci = document["ci"].get(a, {}).get(group, {}).get(metric)
                if ci is not None:
                    text += f" [{_fmt(ci[0])}, {_fmt(ci[1])}]"
                cells.append(text)
            label = f"{group} {_label(path)}".replace("|", "\\|")
            lines.append(f"| {label} | {_ARROWS[direction(path)]} | " + " | ".join(cells) + " |")
    gap = document.get("memorization_gap")
    if gap:
        lines += ["", f"Memorization gap of the original (MIA AUC - 0.5): {_fmt(gap['gap'])} "
                      f"[{_fmt(gap['ci'][0])}, {_fmt(gap['ci'][1])}]."]
    reasons = _unique_reasons(document)
    if reasons:
        lines += ["", "## Not available", ""] + [f"- {r}" for r in reasons]
    if document["warnings"]:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in document["warnings"]]
    gates = document["gates"]
    if gates["expressions"]:
        lines += ["", "## Gates", "", "| gate | adapter | value | threshold | result |", "|---|---|---|---|---|"]
        for o in gates["outcomes"]:
            result = "FAILED" + (f" ({o['reason']})" if o["reason"] else "") if o["failed"] else "passed"
            lines.append(f"| `{o['gate']}` | {o['adapter']} | {_fmt(o['value'])} | {_fmt(o['threshold'])} | {result} |")
    c = document["cost"]
    stages = ", ".join(f"{k.removesuffix('_s')} {_fmt(v)} s" for k, v in c["stages"].items())
    lines += ["", "## Cost", "", f"Wall time {_fmt(c['wall_s'])} s ({stages}); {c['sequences']} sequences "
              f"({c['record_passes']} record passes), {_fmt(c['samples_per_s'])} records/s; peak memory "
              f"{_fmt(c['peak_memory_bytes'] / 2**20 if c['peak_memory_bytes'] else None)} MiB ({c['peak_memory_source']})."]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- records.jsonl


_PER_RECORD_FIELDS = ("rank", "nll", "kl", "shift", "kl_reference")


def records_lines(result, key: bytes) -> Iterator[str]:
    """records.jsonl: one line per (set, record), keyed by the record's HMAC receipt.

    Each line holds the set, the receipt, the response token count and per adapter: target rank
    (candidate sets), response NLL sum (nats), KL to the original, whether the top-1 moved, and
    KL to the reference on D_f. Never the text, the id or any extra field.
    """
    from ucan_cli.io.receipts import record_receipt

    for name, sp in result.passes.items():
        per = result.per_record[name]
        for i, record in enumerate(sp.records):
            values = {}
            for a in result.adapters:
                entry = {}
                for f in _PER_RECORD_FIELDS:
                    arr = per[a.id].get(f)
                    if arr is None:
                        continue
                    v = float(arr[i])
                    entry[f] = (int(v) if f in ("rank", "shift") else v) if math.isfinite(v) else None
                values[a.id] = entry
            line = {
                "set": name,
                "record": record_receipt(key, record),
                "response_tokens": int(sp.tokens[i]),
                "candidates": int(sp.n_candidates[i]),
                "values": values,
            }
            yield json.dumps(json_safe(line), allow_nan=False, sort_keys=False)


def document_json(document: dict) -> str:
    """report.json text (indented, never NaN or Infinity)."""
    return json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


__all__ = [
    "SCHEMA_VERSION",
    "direction",
    "document_json",
    "eval_document",
    "eval_markdown",
    "records_lines",
    "render_eval",
]
