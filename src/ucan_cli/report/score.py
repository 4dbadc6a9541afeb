"""The ``score`` report: a JSON document and Rich tables built from a ``ScoreRun``.

Everything shown is computed by the library (``ucan_cli.flows.score``, ``ucan_cli.methods.ucan.scoring``); this module
only selects and lays out numbers. The document is JSON-safe (no NaN or infinity).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ucan_cli._version import __version__

SCHEMA_VERSION = 1
#: Under a separable verdict: it is about activations, not the outcome (docs/results.md: the MovieLens
#: taste cluster is separable for every unit kind and no edit forgets it).
SEPARABLE_CAVEAT = (
    "Separable means the forget set's activations stand out from the retain set's; it does not show that an "
    "edit forgets. Measure that with `ucan eval` (the MovieLens taste cluster is separable and no edit of ucan "
    "forgets it: docs/results.md)."
)
VERDICT_STYLE = {"separable": "bold green", "weak": "bold yellow", "noise": "bold red", "dead": "bold red", "no-contrast": "bold"}


def _num(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _top_units(run, top: int) -> list[dict[str, Any]]:
    """The ``top`` live units by S (descending; ties by flat index), with their numbers."""
    arrays = run.overview["arrays"]
    s_fused, live = arrays["S"], arrays["live"]
    idx = np.flatnonzero(live)
    order = idx[np.argsort(-s_fused[idx], kind="stable")][:top]
    sigma0 = run.overview["sigma0"]
    factors = run.result.s if run.result is not None else None
    rows = []
    for u in order:
        module, index = run.stats.unit_label(int(u))
        r = _num(arrays["R"][u])
        rows.append(
            {
                "unit": int(u),
                "module": module,
                "index": index,
                "R": r,
                "R_over_sigma0": _num(r / sigma0) if r is not None and sigma0 else None,
                "R0": _num(arrays["R0"][u]),
                "U": _num(arrays["U"][u]),
                "S": _num(s_fused[u]),
                "eligible": bool(arrays["eligible"][u]),
                "factor": _num(factors[u]) if factors is not None else None,
            }
        )
    return rows


def _modules(run) -> list[dict[str, Any]]:
    """Per module: units, live, eligible, selected, attenuated and the smallest factor."""
    arrays = run.overview["arrays"]
    stats = run.stats
    out = []
    for m, (name, start) in enumerate(zip(stats.module_names, stats.module_offsets())):
        cols = slice(start, start + stats.module_sizes[m])
        live = arrays["live"][cols]
        r = arrays["R"][cols]
        row = {
            "name": name,
            "units": int(stats.module_sizes[m]),
            "live": int(live.sum()),
            "eligible": int(arrays["eligible"][cols].sum()),
            "max_R": _num(r[live].max()) if live.any() else None,
            "selected": 0,
            "attenuated": 0,
            "min_factor": None,
        }
        if run.result is not None:
            factors = run.result.s[cols]
            row["selected"] = int(run.result.selected[cols].sum())
            row["attenuated"] = int((factors < 1).sum())
            row["min_factor"] = _num(factors.min())
        out.append(row)
    return out


def _head(run, output: str | None, written: bool) -> dict[str, Any]:
    """The keys every ``ucan score`` document starts with."""
    meta = run.meta
    return {
        "schema_version": SCHEMA_VERSION,
        "ucan_version": __version__,
        "output": output,
        "written": written,
        "statistics_from": getattr(run, "statistics_from", "forward pass"),
        "inputs": _inputs(meta),
        "method": {**meta["params"], "token_scope": meta["scope"]},
    }


def _inputs(meta: dict[str, Any]) -> dict[str, Any]:
    return {
        "base": meta["base"],
        "adapter": meta["adapter_path"],
        "adapter_sha256": meta["adapter_sha256"],
        "forget_sha256": meta["forget_sha256"],
        "retain_sha256": meta["retain_sha256"],
        "forget_receipt": meta["forget_receipt"],
        "receipt_key_fingerprint": meta["receipt_key_fingerprint"],
        "n_forget": meta["n_forget"],
        "n_retain": meta["n_retain"],
        "n_half_a": meta["n_half_a"],
        "n_half_b": meta["n_half_b"],
        "tokens": meta["tokens"],
        "truncated": meta["truncated"],
        "max_length": meta["max_length"],
        "template": meta["template"],
        "dtype": meta.get("dtype"),
        "device_type": meta.get("device_type"),
        "batch": meta.get("batch"),
        **({"load": meta["load"]} if "load" in meta else {}),  # a quantized or device-mapped base
    }


def _direction_document(run, *, output: str | None, written: bool) -> dict[str, Any]:
    """``ucan score --json`` for direction units (SPEC 3b): the verdict against lambda0 and the
    per-module table (directions edited, max lambda, lambda0, sum(1 - s)) instead of units."""
    ov = run.overview
    summary = run.result.summary() if run.result is not None else dict(run.nothing_to_do.details)
    modules = summary.pop("directions", [])
    return {
        **_head(run, output, written),
        "noise": {k: ov[k] for k in ("n_units", "n_live", "n_above_lambda0", "n_noise_above_lambda0", "max_lambda_over_lambda0")},
        "verdict": {"kind": ov["verdict"], "sentence": ov["sentence"], "n_eligible": ov["n_eligible"]},
        "selection": summary,
        "nothing_to_do": run.nothing_to_do.message if run.nothing_to_do is not None else None,
        "modules": modules,
        "top_units": [],
        "timings": {k: _num(v) for k, v in run.timings.items()},
        "warnings": list(run.warnings),
    }


def score_document(run, *, output: str | None, written: bool, top: int = 10) -> dict[str, Any]:
    """The JSON document of ``ucan score --json`` (schema in docs/cli.md)."""
    if run.stats.unit == "direction":
        return _direction_document(run, output=output, written=written)
    ov = {k: v for k, v in run.overview.items() if k != "arrays"}
    summary = run.result.summary() if run.result is not None else dict(run.nothing_to_do.details)
    return {
        **_head(run, output, written),
        "noise": {
            "n_units": ov["n_units"],
            "n_live": ov["n_live"],
            "sigma0": ov["sigma0"],
            "max_R": ov["max_R"],
            "max_R_over_sigma0": ov["max_R_over_sigma0"],
            "t_risk": ov["t_risk"],
            "threshold": ov["threshold"],
            "n_R_above": ov["n_R_above"],
            "n_R0_above": ov["n_R0_above"],
        },
        "verdict": {"kind": ov["verdict"], "sentence": ov["sentence"], "n_eligible": ov["n_eligible"]},
        "selection": summary,
        "nothing_to_do": run.nothing_to_do.message if run.nothing_to_do is not None else None,
        "modules": _modules(run),
        "top_units": _top_units(run, top),
        "timings": {k: _num(v) for k, v in run.timings.items()},
        "warnings": list(run.warnings),
    }


def render_score(ui, doc: dict[str, Any], *, module_limit: int = 40) -> None:
    """Rich tables: data, modules with eligible units, top units, the noise comparison, verdict."""
    from rich.table import Table
    from rich.text import Text

    from ucan_cli.report import fmt

    inputs = doc["inputs"]
    tokens = inputs["tokens"]
    data = Table(title="Data", title_justify="left")
    for col in ("set", "records", "scope tokens", "all tokens", "truncated records"):
        data.add_column(col, justify="left" if col == "set" else "right")
    data.add_row("forget", fmt(inputs["n_forget"]), fmt(tokens["forget_scope"]), fmt(tokens["forget_total"]), fmt(inputs["truncated"]["forget_records"]))
    data.add_row(
        f"retain (halves {inputs['n_half_a']} + {inputs['n_half_b']})", fmt(inputs["n_retain"]), fmt(tokens["retain_scope"]),
        fmt(tokens["retain_total"]), fmt(inputs["truncated"]["retain_records"]),
    )
    data.caption = f"token scope: {doc['method']['token_scope']}; unit: {doc['method']['unit']}"
    ui.table(data)
    if doc["method"]["unit"] == "direction":
        render_directions(ui, doc, module_limit)
        return

    modules = doc["modules"]
    interesting = [m for m in modules if m["eligible"]] or modules
    shown = interesting[:module_limit]
    mt = Table(title="Units per module" + (" (modules with eligible units)" if interesting is not modules else ""), title_justify="left")
    mt.add_column("module", overflow="fold")
    for col in ("units", "live", "eligible", "selected", "attenuated", "min s", "max R"):
        mt.add_column(col, justify="right")
    for m in shown:
        mt.add_row(
            m["name"], fmt(m["units"]), fmt(m["live"]), fmt(m["eligible"]), fmt(m["selected"]), fmt(m["attenuated"]),
            fmt(m["min_factor"]), fmt(m["max_R"]),
        )
    if len(shown) < len(interesting):
        mt.caption = f"{len(interesting) - len(shown)} more modules; --json gives every one"
    ui.table(mt)

    if doc["top_units"]:
        tt = Table(title=f"Top {len(doc['top_units'])} live units by S", title_justify="left")
        tt.add_column("module", overflow="fold")
        for col in ("unit", "R", "R/sigma0", "U", "S", "eligible", "s"):
            tt.add_column(col, justify="right")
        for u in doc["top_units"]:
            tt.add_row(
                u["module"], str(u["index"]), fmt(u["R"]), fmt(u["R_over_sigma0"], 3), fmt(u["U"]), fmt(u["S"]),
                fmt(u["eligible"]), fmt(u["factor"]),
            )
        ui.table(tt)

    noise = doc["noise"]
    sel = doc["selection"]
    nt = Table(title="Contrast against the noise reference (R0: retain half vs retain half)", title_justify="left", show_header=False)
    nt.add_column("what")
    nt.add_column("value", justify="right")
    nt.add_row("live units", f"{fmt(noise['n_live'])} of {fmt(noise['n_units'])}")
    nt.add_row("sigma0 (robust spread of R0)", fmt(noise["sigma0"]))
    nt.add_row("largest R", f"{fmt(noise['max_R'])} = {fmt(noise['max_R_over_sigma0'], 3)} x sigma0")
    nt.add_row(
        f"units with R >= {fmt(noise['t_risk'], 3)} x sigma0",
        f"{fmt(noise['n_R_above'])} (noise alone: {fmt(noise['n_R0_above'])} with |R0| above it)",
    )
    nt.add_row("eligible units", fmt(doc["verdict"]["n_eligible"]))
    nt.add_row("selected (k) at this budget", fmt(sel.get("k")))
    if sel.get("k"):
        nt.add_row("attenuated #(s<1) / #(s<=(1+floor)/2) / sum(1-s)", f"{fmt(sel['n_attenuated'])} / {fmt(sel['n_at_most_half'])} / {fmt(sel['budget_sum_1_minus_s'])}")
    ui.table(nt)

    verdict = doc["verdict"]
    ui.table(Text(f"Verdict: {verdict['sentence']}.", style=VERDICT_STYLE.get(verdict["kind"], "bold")))
    if verdict["kind"] == "separable":
        ui.table(Text(SEPARABLE_CAVEAT, style="dim"))
    if doc["nothing_to_do"] and verdict["kind"] not in ("noise", "dead"):
        ui.table(Text(doc["nothing_to_do"]))
    timings = doc["timings"]
    where = f"wrote {doc['output']}" if doc["written"] else "nothing written"
    ui.table(
        f"{where}; passes {fmt(timings.get('passes_s'))} s ({fmt(timings.get('tokens_per_s'))} tokens/s), "
        f"total {fmt(timings.get('total_s'))} s. U-CAN is approximate unlearning with no formal guarantee."
    )


def render_direction_table(modules, *, title: str, limit: int | None):
    """The per-module table of direction units (rich): directions edited, above lambda0, max lambda,
    lambda0, min s, sum(1 - s); modules with the largest max lambda / lambda0 first."""
    from rich.table import Table

    from ucan_cli.report import fmt

    def ratio(m):
        return (m["max_lambda"] or 0.0) / m["lambda0"] if m.get("lambda0") else 0.0

    rows = sorted(modules, key=lambda m: -ratio(m))
    shown = rows if limit is None else rows[:limit]
    table = Table(title=title, title_justify="left")
    table.add_column("module", overflow="fold")
    for col in ("directions edited", "above lambda0", "max lambda", "lambda0", "min s", "sum(1-s)"):
        table.add_column(col, justify="right")
    for m in shown:
        table.add_row(
            m["name"], f"{m['n_edited']} / {m['directions']}", fmt(m["n_above_lambda0"]), fmt(m["max_lambda"]),
            fmt(m["lambda0"]), fmt(m["min_factor"]), fmt(m["sum_1_minus_s"]),
        )
    if len(shown) < len(rows):
        table.caption = f"{len(rows) - len(shown)} more modules; --json gives every one"
    return table


def render_directions(ui, doc: dict[str, Any], module_limit: int) -> None:
    from rich.text import Text

    from ucan_cli.report import fmt

    ui.table(render_direction_table(doc["modules"], title="Direction units per module (largest max lambda / lambda0 first)", limit=module_limit))
    noise, verdict, sel = doc["noise"], doc["verdict"], doc["selection"]
    ui.table(
        f"directions above their module's lambda0: {fmt(noise['n_above_lambda0'])} (noise alone: "
        f"{fmt(noise['n_noise_above_lambda0'])}); largest max lambda / lambda0: {fmt(noise['max_lambda_over_lambda0'], 3)}; "
        f"gate {sel.get('gate', doc['method'].get('gate'))}, strength {fmt(doc['method'].get('strength'))}: "
        f"{fmt(sel.get('k'))} directions edited, sum(1-s) {fmt(sel.get('budget_sum_1_minus_s'))}"
    )
    ui.table(Text(f"Verdict: {verdict['sentence']}.", style=VERDICT_STYLE.get(verdict["kind"], "bold")))
    if verdict["kind"] == "separable":
        ui.table(Text(SEPARABLE_CAVEAT, style="dim"))
    timings = doc["timings"]
    where = f"wrote {doc['output']}" if doc["written"] else "nothing written"
    ui.table(f"{where}; passes {fmt(timings.get('passes_s'))} s, total {fmt(timings.get('total_s'))} s.")


def dry_run_document(plan) -> dict[str, Any]:
    """The JSON document of ``ucan score --dry-run --json``."""
    return {
        "schema_version": SCHEMA_VERSION,
        "ucan_version": __version__,
        "dry_run": True,
        "written": False,
        "adapter_sha256": plan.meta["adapter_sha256"],
        "base": plan.meta["base"],
        "method": {**plan.meta["params"], "token_scope": plan.meta["scope"]},
        "max_length": plan.meta["max_length"],
        "counts": plan.counts,
        "probe": {k: _num(v) if isinstance(v, float) else v for k, v in plan.probe.items()},
        "estimate_s": _num(plan.estimate_s),
        "dtype": plan.meta.get("dtype"),
        "device_type": plan.meta.get("device_type"),
        "warnings": list(plan.warnings),
    }


def _gib(n: int) -> str:
    return f"{n / 2**30:.3g} GiB" if n >= 2**30 else f"{n / 2**20:.3g} MiB"


def render_dry_run(ui, doc: dict[str, Any]) -> None:
    from rich.table import Table

    from ucan_cli.report import fmt

    c = doc["counts"]
    t = Table(title="Dry run: nothing written", title_justify="left", show_header=False)
    t.add_column("what")
    t.add_column("value", justify="right")
    t.add_row("forget records", fmt(c["n_forget"]))
    t.add_row("retain records (halves)", f"{fmt(c['n_retain'])} ({c['n_half_a']} + {c['n_half_b']})")
    t.add_row(f"scope tokens ({doc['method']['token_scope']}) forget / retain", f"{fmt(c['tokens']['forget_scope'])} / {fmt(c['tokens']['retain_scope'])}")
    t.add_row("all tokens forget / retain", f"{fmt(c['tokens']['forget_total'])} / {fmt(c['tokens']['retain_total'])}")
    t.add_row("truncated records forget / retain", f"{fmt(c['truncated']['forget_records'])} / {fmt(c['truncated']['retain_records'])}")
    t.add_row("units (modules)", f"{fmt(c['units'])} {doc['method']['unit']} ({fmt(c['modules'])})")
    t.add_row("batches, computed positions", f"{fmt(c['batches'])}, {fmt(c['positions'])}")
    p = doc["probe"]
    if p["seconds"] is None:
        t.add_row("probe batch", f"none (the base has no weights): {fmt(p['records'])} records, {fmt(p['positions'])} positions")
    else:
        t.add_row("probe batch", f"{fmt(p['records'])} records, {fmt(p['positions'])} positions, {fmt(p['seconds'])} s")
    if "memory" in c:  # direction units: d_in^2 float64 per module and set
        mem = c["memory"]
        t.add_row(
            "second moments (4 x d_in^2 float64 per module)",
            f"{mem['moment_bytes_total'] / 2**20:.4g} MiB in all, {mem['moment_bytes_largest_module'] / 2**20:.4g} MiB largest module; "
            f"{mem['groups']} group(s) under --max-memory {fmt(mem['max_memory_gib'])} GiB",
        )
    if c.get("footprint"):  # runtime/footprint.py: from the base's shapes and the load spec
        f = c["footprint"]
        t.add_row(
            "device memory, estimated",
            " + ".join(f"{_gib(f[k])} {k}" for k in ("weights", "adapter", "activations", "statistics")) + f" = {_gib(f['total'])}",
        )
        if f.get("host"):  # direction units: the solve runs on the host after the passes
            t.add_row("host memory for the solve, estimated", f"{_gib(f['host'])} (moments, kept directions, one module's work)")
        if doc.get("device_type") == "cpu":
            t.add_row("peak memory of this CPU run, estimated", _gib(f["total_cpu"]))
    t.add_row("estimated time of both passes", "unknown without weights" if doc["estimate_s"] is None else f"{fmt(doc['estimate_s'])} s")
    ui.table(t)
