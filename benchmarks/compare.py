"""Held-out comparison: U-CAN with its defaults against its ablations and random units, per world.

On each world (a demo world from the cache, or any dir with base/, original/, reference/ and
forget/retain/holdout JSONL), with the method defaults of ``ucan_cli.methods.ucan.params.DEFAULTS``:

- ``U-CAN``: the defaults;
- ``w/o C`` (``--no-contrast``), ``w/o F`` (``--no-utility``), ``w/o H`` (``--decay hard``);
- ``random``: the random-units control, ``ucan_cli.methods.random_units`` (as many units as U-CAN
  edits, drawn uniformly from the live units, given a random permutation of U-CAN's own factors:
  the same multiset, hence the same budget sum(1 - s)); ``--draws`` independent draws (seeds 0, 1,
  ...), reported one by one and as their mean;
- the original, the retrained reference and the base alone, for scale.

Statistics come from one ``ucan score`` pass (the ablations reuse its score file). All adapters are
evaluated in one ``evaluate`` call (same batches), with paired bootstrap CIs. Configurations with
no eligible unit (exit 4) are reported with the reason: in the ``random`` scenario that is the
expected outcome, and nothing is then presented as forgetting.

The "done when" checks of issue 6 are printed per world and, for several worlds, on the means:
forget KL >= 3 x retain KL; forget Recall@5 down >= 10 points while retain and holdout Recall@5
fall <= 2 points; U-CAN's objective J (sweep.py) below the random draws' mean; the forget MIA AUC
closer to the reference's than the original's is.

    python benchmarks/compare.py --seed 1 2 --scenario group --out compare-group.json
    python benchmarks/compare.py --seed 0 --scenario random
    python benchmarks/compare.py --world ~/.cache/ucan/demo/.../movielens-seed0-group
    python benchmarks/compare.py --quick               # small world, no bootstrap (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from harness import (  # a sibling module: benchmarks/ is first on sys.path for a script here
    Bench,
    Config,
    attenuate_config,
    bootstrap_index,
    evaluate_dirs,
    fmt,
    forget_arrays,
    j_resamples,
    json_ready,
    metrics_of,
    objective,
    open_bench,
    resolve_world,
    score_file,
    world_facts,
)

ABLATIONS = {"w/o C": {"no_contrast": True}, "w/o F": {"no_utility": True}, "w/o H": {"decay": "hard"}}
CI_METRICS = ("forget.recall@5", "retain.recall@5", "holdout.recall@5", "forget.ndcg@10")


def default_config() -> Config:
    """The method defaults as the code defines them (``methods.ucan.params.DEFAULTS``)."""
    from ucan_cli.methods.ucan.params import DEFAULTS

    return Config(
        unit=DEFAULTS["unit"], scope=DEFAULTS["token_scope"], lam=DEFAULTS["lam"], t_risk=DEFAULTS["t_risk"],
        min_gap=DEFAULTS["min_gap"], ratio=DEFAULTS["ratio"], decay=DEFAULTS["decay"],
        sharpness=DEFAULTS["sharpness"], floor=DEFAULTS["floor"],
    )


def with_overrides(config: Config, items: Sequence[str]) -> Config:
    """``config`` with OPTION=VALUE overrides (field names of ``Config``), typed like the field."""
    changes: dict[str, Any] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not sep or name not in Config.__dataclass_fields__:
            sys.exit(f"error: --set {item!r}: expected OPTION=VALUE with OPTION one of {', '.join(Config.__dataclass_fields__)}")
        current = getattr(config, name)
        if isinstance(current, bool):
            changes[name] = text.lower() in ("1", "true", "yes")
        elif isinstance(current, float):
            changes[name] = float(text)
        else:
            changes[name] = text
    return replace(config, **changes)


def random_units(bench: Bench, att: dict, draw: int) -> tuple[Path, dict]:
    """The random-units control (``ucan_cli.methods.random_units``) of U-CAN's run, draw ``draw``
    (its seed): U-CAN's factor multiset on as many live units drawn uniformly."""
    import numpy as np

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.registry import get as get_method

    result, stats = att["result"], att["stats"]
    edit = get_method("random").edit(LoraAdapter.load(bench.original), stats, result.params, seed=draw)
    out = bench.new_dir("random")
    out.mkdir()
    edit.adapter.write_into(out)
    overlap = int(np.isin(edit.result.chosen, np.flatnonzero(result.selected)).sum())  # with U-CAN's k selected units
    info = {
        "draw": draw, "n_attenuated": edit.summary["n_attenuated"], "n_live": int(result.n_live),
        "budget_sum_1_minus_s": edit.summary["budget_sum_1_minus_s"], "overlap_with_selected": overlap,
    }
    return out, info


def compare_world(bench: Bench, config: Config, *, draws: int, bootstrap: int) -> dict:
    """Every method on one world: rows of metrics, the score verdict and the checks."""
    t0 = time.perf_counter()
    score_file(bench, config.unit, config.scope, config.params())
    methods: dict[str, Config] = {"U-CAN": config}
    methods.update({name: replace(config, **change) for name, change in ABLATIONS.items()})
    rows: dict[str, dict] = {}
    dirs: list[tuple[str, Path]] = []
    full = None
    for name, cfg in methods.items():
        att = attenuate_config(bench, cfg)
        s = att["summary"]
        rows[name] = {"method": name, "config": asdict(cfg), "status": att["status"], "reason": att["reason"],
                      **{k: s.get(k) for k in ("n_live", "n_eligible", "k", "n_attenuated", "n_at_most_half",
                                               "budget_sum_1_minus_s", "max_R_over_sigma0", "sigma0")}}
        if att["status"] == "ok":
            dirs.append((name, att["dir"]))
        if name == "U-CAN":
            full = att
    if full is not None and full["status"] == "ok":
        for draw in range(draws):
            path, info = random_units(bench, full, draw)
            name = f"random #{draw}"
            rows[name] = {"method": name, "config": None, "status": "ok", "reason": None, "k": None, **info}
            dirs.append((name, path))
    if dirs:
        result = evaluate_dirs(bench, [d for _, d in dirs], bootstrap=bootstrap, include_base=True)
        anchors = {a: metrics_of(result, a) for a in ("original", "reference", "base")}
        ref_forget = forget_arrays(result, "reference")
        index = bootstrap_index(len(ref_forget["kl_reference"]))
        j_boot = {}
        for (name, _), adapter_id in zip(dirs, result.unlearned_ids):
            m = metrics_of(result, adapter_id)
            j_boot[name] = j_resamples(forget_arrays(result, adapter_id), ref_forget, index)
            rows[name].update(m)
            rows[name].update(objective(m, anchors["original"], anchors["reference"]))
            rows[name]["ci_vs_original"] = {
                path: result.ci_vs_original.get(adapter_id, {}).get(path.split(".")[0], {}).get(path.split(".", 1)[1])
                for path in CI_METRICS
            }
        for a in ("original", "reference", "base"):
            anchors[a].update(objective(anchors[a], anchors["original"], anchors["reference"]))
        randoms = [j for n, j in j_boot.items() if n.startswith("random #")]
        if randoms:
            j_boot["random (mean)"] = sum(randoms) / len(randoms)
        if "U-CAN" in j_boot:
            for name, boot in j_boot.items():
                if name != "U-CAN":
                    rows.setdefault(name, {})["_dJ_boot"] = boot - j_boot["U-CAN"]
                    rows[name]["dJ_vs_ucan_ci"] = paired_ci(rows[name]["_dJ_boot"])
        eval_s = result.cost["wall_s"]
        warnings = result.warnings
    else:
        anchors, eval_s, warnings = {}, 0.0, []
    randoms = [r for n, r in rows.items() if n.startswith("random #")]
    if randoms:
        boot = rows.pop("random (mean)", {}).get("_dJ_boot")
        rows["random (mean)"] = mean_row("random (mean)", randoms)
        if boot is not None:
            rows["random (mean)"].update(_dJ_boot=boot, dJ_vs_ucan_ci=paired_ci(boot))
    info = bench.score_info[(config.unit, config.scope)]
    return {
        "world": world_facts(bench), "config": asdict(config), "score": info, "anchors": anchors, "rows": rows,
        "warnings": warnings, "seconds": {"total": time.perf_counter() - t0, "evaluate": eval_s},
    }


def paired_ci(diff) -> list[float]:
    """The 95% percentile interval of paired bootstrap differences."""
    import numpy as np

    return [float(x) for x in np.quantile(diff, [0.025, 0.975])]


def mean_row(name: str, rows: Sequence[dict]) -> dict:
    """Mean of every numeric field over ``rows`` (None when any is None)."""
    out: dict[str, Any] = {"method": name, "status": "ok" if all(r.get("status", "ok") == "ok" for r in rows) else "mixed",
                           "n": len(rows)}
    keys = [k for k, v in rows[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    for key in keys:
        values = [r.get(key) for r in rows]
        out[key] = None if any(v is None for v in values) else sum(values) / len(values)
    if all("feasible" in r for r in rows):
        out["feasible_share"] = sum(bool(r["feasible"]) for r in rows) / len(rows)
    return out


def checks(ucan: dict | None, random: dict | None, anchors: dict) -> dict[str, dict]:
    """The issue's targets on one world (or on the means over worlds)."""
    if not ucan or ucan.get("status") not in ("ok",) or "forget.kl" not in ucan:
        return {"edited": {"pass": False, "detail": "U-CAN edited nothing (no eligible unit)"}}
    o, ref = anchors["original"], anchors["reference"]
    drop = {s: o[f"{s}.recall@5"] - ucan[f"{s}.recall@5"] for s in ("forget", "retain", "holdout")}
    ratio = ucan["forget.kl"] / ucan["retain.kl"] if ucan["retain.kl"] > 0 else float("inf")
    out = {
        "kl_ratio": {"pass": ratio >= 3.0, "detail": f"forget KL {ucan['forget.kl']:.3f} / retain KL {ucan['retain.kl']:.3f} = {ratio:.2f} (>= 3)"},
        "forget_recall@5_drop": {"pass": drop["forget"] >= 0.10, "detail": f"{o['forget.recall@5']:.3f} -> {ucan['forget.recall@5']:.3f} ({100 * drop['forget']:+.1f} points down; >= 10)"},
        "retain_recall@5_drop": {"pass": drop["retain"] <= 0.02, "detail": f"{o['retain.recall@5']:.3f} -> {ucan['retain.recall@5']:.3f} ({100 * drop['retain']:+.1f} points down; <= 2)"},
        "holdout_recall@5_drop": {"pass": drop["holdout"] <= 0.02, "detail": f"{o['holdout.recall@5']:.3f} -> {ucan['holdout.recall@5']:.3f} ({100 * drop['holdout']:+.1f} points down; <= 2)"},
        "mia_toward_reference": {
            "pass": abs(ucan["privacy.mia_auc"] - ref["privacy.mia_auc"]) < abs(o["privacy.mia_auc"] - ref["privacy.mia_auc"]),
            "detail": f"original {o['privacy.mia_auc']:.3f} -> U-CAN {ucan['privacy.mia_auc']:.3f} (reference {ref['privacy.mia_auc']:.3f})",
        },
    }
    if random and random.get("objective") is not None:
        out["beats_random"] = {
            "pass": ucan["objective"] < random["objective"],
            "detail": (f"J {ucan['objective']:.3f} vs random {random['objective']:.3f}; forget R@5 {ucan['forget.recall@5']:.3f} vs "
                       f"{random['forget.recall@5']:.3f}; Trade-off@10 (holdout) {fmt(ucan.get('tradeoff.holdout@10'), 1)} vs "
                       f"{fmt(random.get('tradeoff.holdout@10'), 1)}"),
        }
    return out


COLUMNS = [
    ("k", "k"), ("n_attenuated", "#s<1"), ("budget_sum_1_minus_s", "sum(1-s)"),
    ("forget.recall@5", "f R@5"), ("forget.ndcg@10", "f N@10"), ("forget.kl", "f KL"),
    ("retain.recall@5", "r R@5"), ("retain.ndcg@10", "r N@10"), ("retain.kl", "r KL"),
    ("holdout.recall@5", "h R@5"), ("holdout.ndcg@10", "h N@10"), ("holdout.kl", "h KL"),
    ("gap_rank", "gap"), ("gap_kl", "KL ref"), ("objective", "J"), ("dJ_vs_ucan_ci", "J - J(U-CAN), 95% CI"),
    ("feasible", "ok"), ("tradeoff.retain@10", "TO@10 r"), ("tradeoff.holdout@10", "TO@10 h"), ("privacy.mia_auc", "MIA"),
]


def table(rows: dict[str, dict], anchors: dict) -> str:
    """Plain-text table: original, reference, base, then the methods."""
    lines = [["method"] + [h for _, h in COLUMNS]]
    for name in ("original", "reference", "base"):
        if name in anchors:
            lines.append([name] + [fmt(anchors[name].get(k), 1 if k.startswith("tradeoff") else 3) if k not in ("k", "n_attenuated", "budget_sum_1_minus_s", "feasible", "dJ_vs_ucan_ci") else "" for k, _ in COLUMNS])
    for name, r in rows.items():
        if r["status"] != "ok":
            lines.append([name, f"nothing to do: {r['reason']}"])
            continue
        cells = []
        for k, _ in COLUMNS:
            v = r.get(k if k != "feasible" else ("feasible_share" if "feasible_share" in r else "feasible"))
            if k == "dJ_vs_ucan_ci":
                cells.append(f"[{v[0]:+.3f}, {v[1]:+.3f}]" if v else "")
                continue
            if k in ("k", "n_attenuated") and isinstance(v, float):
                cells.append(f"{v:.1f}")
                continue
            cells.append(fmt(v, 1 if k.startswith("tradeoff") or k == "budget_sum_1_minus_s" else 3))
        lines.append([name] + cells)
    widths = [max(len(line[i]) for line in lines if i < len(line) and not (len(line) == 2 and i == 1)) for i in range(len(lines[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)) if len(line) > 2 else f"{line[0].ljust(widths[0])}  {line[1]}" for line in lines)


def scenario_note(res: dict) -> str | None:
    """In the random scenario forget and retain users differ only by chance: say what an edit is."""
    world = (res["world"].get("world") or {})
    if world.get("scenario") != "random":
        return None
    ucan = res["rows"].get("U-CAN", {})
    if ucan.get("status") != "ok":
        return "random scenario: U-CAN declined (no eligible unit), as it should when forget and retain differ only by chance"
    return (f"random scenario: forget and retain users differ only by chance, so this edit of {ucan.get('n_attenuated')} units "
            f"is an edit of noise, not forgetting (forget KL {ucan['forget.kl']:.3f} vs retain KL {ucan['retain.kl']:.3f}; "
            f"forget Recall@5 {res['anchors']['original']['forget.recall@5']:.3f} -> {ucan['forget.recall@5']:.3f}, "
            f"reference {res['anchors']['reference']['forget.recall@5']:.3f}); the checks above are not forgetting claims")


def print_checks(title: str, result: dict[str, dict]) -> None:
    print(title)
    for name, c in result.items():
        print(f"  [{'PASS' if c['pass'] else 'FAIL'}] {name}: {c['detail']}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small world, one random draw, no bootstrap (CI, < 60 s)")
    parser.add_argument("--world", nargs="+", default=None, help="world dirs (base/, original/, reference/, *.jsonl)")
    parser.add_argument("--seed", type=int, nargs="+", default=[0], help="demo world seeds (default 0)")
    parser.add_argument("--scenario", default="group", choices=("group", "random"))
    parser.add_argument("--size", default=None, choices=("default", "small"))
    parser.add_argument("--draws", type=int, default=None, help="random-unit draws per world (default 5; 1 with --quick)")
    parser.add_argument("--bootstrap", type=int, default=None, help="paired bootstrap resamples (default 1000; 0 with --quick)")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    parser.add_argument("--set", nargs="+", default=[], metavar="OPTION=VALUE",
                        help="compare other options than the defaults, e.g. --set t_risk=5 ratio=0.05 (exploration only)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    from ucan_cli.runtime.models import hf_quiet

    torch.set_num_threads(args.threads)
    size = args.size or ("small" if args.quick else "default")
    draws = args.draws if args.draws is not None else (1 if args.quick else 5)
    bootstrap = args.bootstrap if args.bootstrap is not None else (0 if args.quick else 1000)
    config = with_overrides(default_config(), args.set)
    worlds = [resolve_world(w, 0, args.scenario, size) for w in args.world] if args.world else [
        resolve_world(None, seed, args.scenario, size) for seed in args.seed]
    print(f"options: {asdict(config)}" + (f" (defaults with {' '.join(args.set)})" if args.set else " (the defaults)"), file=sys.stderr)
    results = []
    t0 = time.perf_counter()
    for world in worlds:
        with tempfile.TemporaryDirectory(prefix="ucan-compare-") as tmp, hf_quiet():
            bench = open_bench(world, Path(tmp))
            res = compare_world(bench, config, draws=draws, bootstrap=bootstrap)
        res["checks"] = checks(res["rows"].get("U-CAN"), res["rows"].get("random (mean)"), res["anchors"])
        results.append(res)
        sc = res["score"]
        print(f"\n== {world}")
        print(f"score: verdict {sc['verdict']}; max R = {fmt(sc['max_R_over_sigma0'], 1)} sigma0 over {sc['n_live']} live units; "
              f"{sc['n_R_above']} units reach t_risk x sigma0 vs {sc['n_R0_above']} for the noise reference; "
              f"{sc['n_eligible']} eligible")
        print(table(res["rows"], res["anchors"]))
        res["note"] = scenario_note(res)
        print_checks("checks:", res["checks"])
        if res["note"]:
            print(f"note: {res['note']}")
        print(f"({res['seconds']['total']:.1f} s)")
    summary = None
    if len(results) > 1:
        summary = summarize(results)
        print(f"\n== mean over {len(results)} worlds")
        print(table(summary["rows"], summary["anchors"]))
        print_checks("checks on the means:", summary["checks"])
        if all(r.get("note") for r in results):
            summary["note"] = ("random scenario on every world: forget and retain users differ only by chance; "
                               "an edit here is an edit of noise and the checks above are not forgetting claims")
            print(f"note: {summary['note']}")
    print(f"\ntotal {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    if args.out:
        doc = {"benchmark": "compare", "quick": args.quick, "scenario": args.scenario, "size": size, "draws": draws,
               "bootstrap": bootstrap, "config": asdict(config), "overrides": args.set, "worlds": results, "mean": summary}
        Path(args.out).write_text(json.dumps(json_ready(doc), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return 0


def summarize(results: Sequence[dict]) -> dict:
    """Means over worlds of every method's numbers and of the anchors, and the checks on them."""
    names = [n for n in results[0]["rows"] if not n.startswith("random #")]
    rows = {}
    for name in names:
        per = [r["rows"].get(name) for r in results]
        if all(p is not None and p["status"] == "ok" and "objective" in p for p in per):
            rows[name] = mean_row(name, per)
            if all("_dJ_boot" in p for p in per):  # worlds resampled independently: mean of the differences
                rows[name]["dJ_vs_ucan_ci"] = paired_ci(sum(p["_dJ_boot"] for p in per) / len(per))
        else:
            rows[name] = {"method": name, "status": "nothing-to-do",
                          "reason": "; ".join(p["reason"] for p in per if p and p.get("reason")) or "missing"}
    anchors = {}
    if all(r["anchors"] for r in results):
        anchors = {a: {k: v for k, v in mean_row(a, [r["anchors"][a] for r in results]).items() if k not in ("method", "status", "n")}
                   for a in ("original", "reference", "base")}
    return {"rows": rows, "anchors": anchors,
            "checks": checks(rows.get("U-CAN"), rows.get("random (mean)"), anchors) if anchors else {}}


if __name__ == "__main__":
    sys.exit(main())
