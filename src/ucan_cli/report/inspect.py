"""The ``inspect`` report: a JSON document and a Rich table built from module summaries."""

from __future__ import annotations

import math

from ucan_cli._version import __version__

SCHEMA_VERSION = 1


def _finite_or_none(x: float):
    return None if isinstance(x, float) and not math.isfinite(x) else x


def inspect_document(adapter, summaries, warnings: list[str], base_check: dict | None) -> dict:
    """The JSON document of ``ucan inspect --json`` (schema in docs/cli.md)."""
    modules = []
    for s in summaries:
        d = s.to_dict()
        d["dw_norm"] = _finite_or_none(d["dw_norm"])
        d["effective_rank"] = _finite_or_none(d["effective_rank"])
        d["component_norms"] = [_finite_or_none(x) for x in d["component_norms"]]
        d["singular_values"] = [_finite_or_none(x) for x in d["singular_values"]]
        modules.append(d)
    norms = [s.dw_norm for s in summaries if math.isfinite(s.dw_norm)]
    cfg = adapter.config
    return {
        "schema_version": SCHEMA_VERSION,
        "ucan_version": __version__,
        "adapter": str(adapter.path),
        "adapter_sha256": adapter.sha256,
        "base_model_name_or_path": adapter.base_model_name,
        "config": {
            "r": cfg.get("r"),
            "lora_alpha": cfg.get("lora_alpha"),
            "use_rslora": bool(cfg.get("use_rslora", False)),
            "fan_in_fan_out": bool(cfg.get("fan_in_fan_out", False)),
            "lora_bias": bool(cfg.get("lora_bias", False)),
            "target_modules": cfg.get("target_modules"),
            "rank_pattern": cfg.get("rank_pattern") or {},
            "alpha_pattern": cfg.get("alpha_pattern") or {},
            "modules_to_save": cfg.get("modules_to_save"),
        },
        "supported": not adapter.unsupported_features(),
        "unsupported_features": adapter.unsupported_features(),
        "modules": modules,
        "totals": {
            "modules": len(summaries),
            "lora_parameters": int(sum(s.r * (s.shape[0] + s.shape[1]) + (s.shape[0] if s.has_bias else 0) for s in summaries)),
            "rank_units": int(sum(s.r for s in summaries)),
            "output_units": int(sum(s.shape[0] for s in summaries)),
            "dw_norm_total": float(math.sqrt(sum(n * n for n in norms))) if norms else None,
            "zero_b_modules": int(sum(s.b_is_zero for s in summaries)),
            "nonfinite_modules": int(sum(not s.finite for s in summaries)),
        },
        "base_check": base_check,
        "warnings": warnings,
    }


def render_inspect(ui, document: dict, *, limit: int | None = 40) -> None:
    from rich.table import Table

    from ucan_cli.report import fmt

    table = Table(title=f"LoRA adapter {document['adapter']}", title_justify="left")
    for col, justify in (
        ("module", "left"), ("kind", "left"), ("shape", "right"), ("r", "right"), ("alpha", "right"),
        ("scaling", "right"), ("||dW||_F", "right"), ("component norms", "left"), ("num. rank", "right"), ("eff. rank", "right"),
    ):
        table.add_column(col, justify=justify)
    modules = document["modules"]
    shown = modules if limit is None else modules[:limit]
    for m in shown:
        comps = ", ".join(fmt(x, 3) for x in m["component_norms"][:8]) + (" ..." if len(m["component_norms"]) > 8 else "")
        table.add_row(
            m["name"], m["kind"], f"{m['shape'][0]}x{m['shape'][1]}", str(m["r"]), fmt(m["alpha"]), fmt(m["scaling"]),
            fmt(m["dw_norm"]), comps, str(m["numerical_rank"]), fmt(m["effective_rank"], 3),
        )
    if len(shown) < len(modules):
        table.caption = f"{len(modules) - len(shown)} more modules; --all shows every one, --json gives all numbers"
    ui.table(table)
    t = document["totals"]
    ui.table(
        f"{t['modules']} modules, {fmt(t['lora_parameters'])} LoRA parameters, {t['rank_units']} rank units, "
        f"{fmt(t['output_units'])} output units, total ||dW||_F {fmt(t['dw_norm_total'])}; "
        + ("supported by ucan" if document["supported"] else "NOT supported: " + ", ".join(document["unsupported_features"]))
        + (f"; base {document['base_check']['base']}: every module matches" if document["base_check"] else "")
    )
