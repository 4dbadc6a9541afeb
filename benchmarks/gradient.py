"""The gradient methods against U-CAN's default edit on a demo world, with ``ucan eval``.

Runs ``attenuate`` once per configuration (U-CAN with its defaults; ``ga``, ``graddiff`` and
``npo`` at the given learning rates and step counts, batch 32, seed 0), then one ``evaluate``
over every output and the retrained reference (same batches), and prints the table of
docs/methods.md ("Gradient methods"): forget Recall@5 / Recall@1, retain NDCG@10, MIA AUC,
forget / retain KL, and cost in forward-pass equivalents (a backward counts 2; U-CAN's is its
statistics pass over forget + retain).

    python benchmarks/gradient.py                          # the defaults
    python benchmarks/gradient.py --grid                   # a small grid around them
    python benchmarks/gradient.py --seed 1 --scenario group
    python benchmarks/gradient.py --prune --seed 1         # also prune (docs/methods.md, "Pruning")
    python benchmarks/gradient.py --quick                  # one step each, for CI smoke runs
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

DEFAULTS = [("U-CAN defaults", "ucan", {}), ("ga", "ga", {}), ("graddiff", "graddiff", {}), ("npo", "npo", {})]
GRID = [
    ("ga", "ga", {"lr": 0.003, "steps": 1}), ("ga", "ga", {"lr": 0.003, "steps": 3}), ("ga", "ga", {"lr": 0.001, "steps": 5}),
    ("graddiff", "graddiff", {"lr": 0.001, "steps": 20}), ("graddiff", "graddiff", {"lr": 0.002, "steps": 20}),
    ("npo", "npo", {"lr": 0.003, "steps": 2}), ("npo", "npo", {"lr": 0.003, "steps": 8}), ("npo", "npo", {"lr": 0.001, "steps": 10}),
]
#: ``prune``'s rows of docs/methods.md: the default, a smaller ratio, and the non-selective ranking.
PRUNE = [("prune", "prune", {}), ("prune", "prune", {"prune_ratio": 0.02}), ("prune, forget only", "prune", {"prune_score": "forget"})]
METRICS = [("forget.recall@5", "forget R@5"), ("forget.recall@1", "forget R@1"), ("retain.ndcg@10", "retain NDCG@10"),
           ("privacy.mia_auc", "MIA AUC"), ("forget.kl", "forget KL"), ("retain.kl", "retain KL")]


def main() -> None:
    from ucan_cli.demo.cache import ensure_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="group")
    parser.add_argument("--grid", action="store_true")
    parser.add_argument("--prune", action="store_true", help="also run prune (default, ratio 0.02, forget-only ranking)")
    parser.add_argument("--quick", action="store_true", help="one training step per gradient method (a smoke run)")
    parser.add_argument("--until", default=None, help="also run each gradient method with this --until target")
    args = parser.parse_args()
    world, _ = ensure_world(args.seed, args.scenario, "default")
    configs = DEFAULTS + (GRID if args.grid else []) + (PRUNE if args.prune else [])
    if args.quick:
        configs = [(label, method, {} if method == "ucan" else {"steps": 1}) for label, method, _ in DEFAULTS]
    if args.until:
        configs += [(f"{m} until", m, {"until": args.until, "steps": 200}) for m in ("ga", "graddiff", "npo")]
    print_table(*measure(world, configs))


def measure(world: Path, configs: list[tuple[str, str, dict]]) -> tuple[list[dict], dict]:
    """Run every (label, method, params) on ``world`` (batch 32, seed 0), then one ``evaluate`` over
    every output: the rows (cost, seconds, steps, METRICS) and the original's and reference's values."""
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.flows.evaluate import evaluate
    from ucan_cli.io.data import read_records

    n_stats_pass = sum(len(read_records(world / f"{name}.jsonl", name).records) for name in ("forget", "retain"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        key = Path(tmp) / "receipt.key"  # a scratch receipt key: never the user's
        key.write_text("benchmark-receipt-key-0123456789\n")
        dirs = []
        for i, (label, method, params) in enumerate(configs):
            out = Path(tmp) / f"a{i}"
            t = time.perf_counter()
            try:
                run = attenuate(world / "original", out, base=str(world / "base"), forget=world / "forget.jsonl",
                                retain=world / "retain.jsonl", method=method, params=params, batch_size=32, seed=0,
                                receipt_key=key)
            except NothingToDo as exc:
                print(f"{label} {params}: nothing to do ({exc.message})")
                continue
            seconds = time.perf_counter() - t
            tr = run.report.get("training")
            cost = tr["cost"]["forward_equivalents"] if tr else run.report["inputs"]["forget"]["n_records"] + run.report["inputs"]["retain"]["n_records"]
            steps = tr.get("steps_run") if tr else None
            rows.append({"label": label, "params": params, "cost": cost, "seconds": seconds, "steps": steps})
            dirs.append(out)
        result = evaluate(str(world / "base"), world / "original", dirs, world / "forget.jsonl", world / "retain.jsonl",
                          world / "holdout.jsonl", reference=world / "reference", bootstrap=0, batch_size=64, receipt_key=key).result
        for row, adapter_id in zip(rows, result.unlearned_ids):
            row.update({path: result.value(adapter_id, path) for path, _ in METRICS})
        anchors = {a: {path: result.value(a, path) for path, _ in METRICS} for a in ("original", "reference")}
    return rows, {"anchors": anchors, "n_stats_pass": n_stats_pass}


def print_table(rows: list[dict], extra: dict) -> None:
    """The Markdown table of docs/methods.md; cost also as a multiple of U-CAN's statistics pass."""
    anchors, n_stats_pass = extra["anchors"], extra["n_stats_pass"]
    # U-CAN's cost is its statistics pass over forget + retain, also when it declined the request.
    ucan_cost = next((r["cost"] for r in rows if r["label"] == "U-CAN defaults"), None) or n_stats_pass
    print("| method | config | " + " | ".join(h for _, h in METRICS) + " | cost (fwd-eq) | x U-CAN | seconds |")
    print("|---|---|" + "---:|" * (len(METRICS) + 3))
    for row in rows:
        cells = " | ".join(f"{row[p]:.3f}" if row[p] is not None else "-" for p, _ in METRICS)
        config = ", ".join(f"{k} {v}" for k, v in row["params"].items()) or "defaults"
        if row["steps"] is not None:
            config += f" (ran {row['steps']} steps)"
        print(f"| {row['label']} | {config} | {cells} | {row['cost']} | {row['cost'] / ucan_cost:.2f} | {row['seconds']:.1f} |")
    for a, values in anchors.items():
        print(f"| {a} | | " + " | ".join(f"{v:.3f}" if v is not None else "-" for v in values.values()) + " | | | |")


if __name__ == "__main__":
    main()
