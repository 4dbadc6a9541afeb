"""``ucan compare``'s documents: ``table.json`` (the document ``ucan_cli.flows.compare`` builds),
``table.md`` and the terminal table.

One row per method configuration (and per equal-forgetting run), then the original and the
reference for scale. The Markdown and the terminal show the same columns (``COLUMNS``); numbers
that do not exist (a declined method, no holdout set) are ``-``. Under it, when equal forgetting
ran, a second small table: what each gradient method paid to forget as much as U-CAN, beside
U-CAN's own cost (``equal_forgetting_cells``). Rich is imported only inside ``render_compare``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ucan_cli.flows.compare import METRICS

#: (key, heading) of every column after the label, in order.
COLUMNS: tuple[tuple[str, str], ...] = (
    *((key, heading) for key, _, heading in METRICS),
    ("gap_forget_recall@5", "gap R@5"),
    ("gap_mia_auc", "gap MIA"),
    ("seconds", "seconds"),
    ("forward_equivalents", "fwd-eq"),
    ("peak_rss_mb", "peak RSS MB"),
)


def document_json(document: Mapping[str, Any]) -> str:
    return json.dumps(document, indent=2, allow_nan=False, ensure_ascii=False) + "\n"


def _fmt(value: Any, key: str) -> str:
    if value is None:
        return "-"
    if key == "forward_equivalents":
        return str(int(value))
    if key in ("seconds", "peak_rss_mb"):
        return f"{float(value):.1f}"
    return f"{float(value):.3f}"


def row_cells(row: Mapping[str, Any]) -> list[str]:
    """The formatted cells of one method row, in ``COLUMNS`` order."""
    metrics = row.get("metrics") or {}
    gaps = row.get("gap_to_reference") or {}
    values = {**metrics, "gap_forget_recall@5": gaps.get("forget_recall@5"), "gap_mia_auc": gaps.get("mia_auc"),
              "seconds": row.get("seconds"), "forward_equivalents": row.get("forward_equivalents"), "peak_rss_mb": row.get("peak_rss_mb")}
    return [_fmt(values.get(key), key) for key, _ in COLUMNS]


def row_label(row: Mapping[str, Any]) -> str:
    label = row["label"]
    if row.get("is_reference"):
        label += " (reference)"
    if row["status"] != "ok":
        label += f" [{row['status']}]"
    elif row.get("stop_reason") == "budget" and row.get("equal_forgetting"):
        label += " [target not reached]"
    if row.get("steps_run") is not None:
        label += f" ({row['steps_run']} steps)"
    return label


def anchor_cells(values: Mapping[str, Any]) -> list[str]:
    return [_fmt(values.get(key), key) if key in values else "" for key, _ in COLUMNS]


def table_markdown(document: Mapping[str, Any]) -> str:
    """``table.md``: the table, the equal-forgetting target, declined methods' reasons, the reading."""
    lines = ["# ucan compare", ""]
    inputs = document["inputs"]
    lines.append(f"Adapter `{inputs['adapter']}` on base `{inputs['base']}`; forget `{inputs['forget']}`, retain `{inputs['retain']}`"
                 + (f", holdout `{inputs['holdout']}`" if inputs.get("holdout") else "") + ".")
    lines.append("")
    lines.append("| method | " + " | ".join(h for _, h in COLUMNS) + " |")
    lines.append("|---|" + "---:|" * len(COLUMNS))
    for row in document["rows"]:
        lines.append(f"| {row_label(row)} | " + " | ".join(row_cells(row)) + " |")
    for name, values in document["anchors"].items():
        if name == "reference" and any(r.get("is_reference") for r in document["rows"]):
            continue
        lines.append(f"| {name} | " + " | ".join(anchor_cells(values)) + " |")
    lines.append("")
    lines.append("Columns: R@5 = Recall@5, KL from the original (nats), MIA AUC = membership inference of the forget set "
                 "against the holdout set (0.5: unseen); gap = |method - reference| (forget R@5, MIA AUC); fwd-eq = "
                 "forward-pass equivalents (a backward counts 2; U-CAN and random: the shared statistics pass); "
                 "peak RSS = the row's resident-memory peak (" + _rss_scope_text(document) + ").")
    stats = document.get("statistics")
    if stats:
        lines.append("")
        lines.append(f"Statistics: one pass over {stats['forward_equivalents']} records in {stats['seconds']:.1f} s, "
                     f"verdict `{stats['verdict']}`, shared by every activation method.")
    summary = document.get("equal_forgetting")
    if summary:
        lines.append("")
        lines.append(f"Equal forgetting: each gradient method ran again until forget Recall@5 <= {summary['value']:.3f} "
                     "(U-CAN's), checked every step; its row is the cheapest run that got there. Cost beside U-CAN's "
                     "(training: what that many steps cost; with checks: what finding the step count cost):")
        lines.append("")
        lines.extend(equal_forgetting_markdown(summary))
    declined = [r for r in document["rows"] if r["status"] != "ok"]
    if declined:
        lines.append("")
        for r in declined:
            lines.append(f"- {r['label']}: {r['reason']}")
    lines.append("")
    lines.append(document["reading"])
    if document.get("warnings"):
        lines.append("")
        lines.extend(f"- warning: {w}" for w in document["warnings"])
    return "\n".join(lines) + "\n"


EQUAL_FORGETTING_HEADINGS = ("method", "reached", "steps", "training fwd-eq", "x U-CAN", "with checks", "x U-CAN", "seconds")


def equal_forgetting_cells(summary: Mapping[str, Any]) -> list[list[str]]:
    """The equal-forgetting table's rows: U-CAN's edit first (the yardstick), then each run."""
    u = summary["ucan"]
    out = [[u["label"], "-", "-", str(u["forward_equivalents"]), "1.00", str(u["forward_equivalents"]), "1.00", f"{u['seconds']:.1f}"]]
    for run in summary["runs"]:
        reached = "yes" if run["reached"] else ("before training" if run["status"] == "declined" else "no")

        def n(v):
            return "-" if v is None else str(int(v))

        def x(v):
            return "-" if v is None else f"{v:.2f}"

        out.append([run["method"], reached, n(run["steps"]), n(run["training_forward_equivalents"]), x(run["x_ucan"]),
                    n(run["forward_equivalents"]), x(run["x_ucan_with_checks"]), f"{run['seconds']:.1f}"])
    return out


def equal_forgetting_markdown(summary: Mapping[str, Any]) -> list[str]:
    lines = ["| " + " | ".join(EQUAL_FORGETTING_HEADINGS) + " |", "|---|" + "---:|" * (len(EQUAL_FORGETTING_HEADINGS) - 1)]
    lines.extend("| " + " | ".join(cells) + " |" for cells in equal_forgetting_cells(summary))
    return lines


def _rss_scope_text(document: Mapping[str, Any]) -> str:
    scopes = {r.get("peak_rss_scope") for r in document["rows"]} - {None}
    if scopes == {"stretch"}:
        return "its own, the high-water mark reset before it; it includes what the process already held"
    return "the process's high-water mark when the row finished: it never decreases, read it as 'at most'"


#: The columns a terminal shows (the rest are in table.md and table.json).
TERMINAL_COLUMNS = ("forget_recall@5", "forget_kl", "retain_ndcg@10", "holdout_ndcg@10", "mia_auc", "gap_forget_recall@5",
                    "forward_equivalents", "seconds")


def render_compare(ui, document: Mapping[str, Any]) -> None:
    """In a terminal, a Rich table of the main columns; otherwise (a pipe, a log, a batch job) the
    Markdown table of table.md, every column, one line per row. Then the cost at equal forgetting
    (when it ran) and the reading."""
    from rich.markup import escape

    if not ui.out.is_terminal:
        body = table_markdown(document).split("\n")
        start = next(i for i, line in enumerate(body) if line.startswith("| method"))
        end = next(i for i in range(start, len(body)) if not body[i].startswith("|"))
        if not ui.rt.quiet:
            ui.out.print("\n".join(body[start:end]), markup=False, highlight=False, soft_wrap=True)
            if document.get("equal_forgetting") and document["equal_forgetting"]["runs"]:
                ui.out.print("\n" + "\n".join(equal_forgetting_markdown(document["equal_forgetting"])), markup=False, highlight=False,
                             soft_wrap=True)
        ui.info(escape(document["reading"]))
        return
    from rich.table import Table

    keep = [i for i, (key, _) in enumerate(COLUMNS) if key in TERMINAL_COLUMNS]
    table = Table(title="ucan compare (every column: table.md)", title_justify="left")
    table.add_column("method", justify="left", overflow="fold")
    for i in keep:
        table.add_column(COLUMNS[i][1], justify="right", no_wrap=True)
    for row in document["rows"]:
        cells = row_cells(row)
        table.add_row(escape(row_label(row)), *(cells[i] for i in keep))
    table.add_section()
    for name, values in document["anchors"].items():
        if name == "reference" and any(r.get("is_reference") for r in document["rows"]):
            continue
        cells = anchor_cells(values)
        table.add_row(f"[dim]{name}[/]", *(cells[i] for i in keep))
    ui.table(table)
    summary = document.get("equal_forgetting")
    if summary and summary["runs"]:
        eq = Table(title=f"cost at equal forgetting (forget R@5 <= {summary['value']:.3f}, U-CAN's)", title_justify="left")
        for i, heading in enumerate(EQUAL_FORGETTING_HEADINGS):
            eq.add_column(heading, justify="left" if i == 0 else "right", no_wrap=i > 0)
        for cells in equal_forgetting_cells(summary):
            eq.add_row(*(escape(c) for c in cells))
        ui.table(eq)
    ui.info(escape(document["reading"]))


__all__ = ["COLUMNS", "EQUAL_FORGETTING_HEADINGS", "TERMINAL_COLUMNS", "anchor_cells", "equal_forgetting_cells", "equal_forgetting_markdown", "document_json", "render_compare", "row_cells", "row_label", "table_markdown"]
