"""Direction units (SPEC 3b) against output units on one demo world: a first, small comparison.

Scores the world once per unit kind (output units with the defaults; direction units' moments),
attenuates with output units (defaults) and with direction units at a few gates and strengths
from the score files (no further forward pass), and evaluates every adapter, the original and the
retrained reference in one ``evaluate`` call (same batches): forget Recall@5, retain and holdout
NDCG@10, MIA AUC, forget and retain KL to the original. Issue 11 item 4 (tuning on the tuning
world, held-out seeds, paired bootstrap) is ``direction_units.py``.

    python benchmarks/directions.py --seed 0 --scenario group
    python benchmarks/directions.py --quick      # the small world, two configurations (CI smoke run)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import evaluate_dirs, fmt, open_bench, resolve_world  # noqa: E402

CONFIGS = [
    ("output units (defaults)", {}),
    ("directions, gate none, mu 0.05", {"unit": "direction", "gate": "none", "strength": 0.05}),
    ("directions, gate none, mu 0.2", {"unit": "direction", "gate": "none", "strength": 0.2}),
    ("directions, gate noise, mu 1", {"unit": "direction", "gate": "noise", "strength": 1.0}),
    ("directions, gate noise, mu 5", {"unit": "direction", "gate": "noise", "strength": 5.0}),
]
COLUMNS = ("forget.recall@5", "forget.kl", "retain.ndcg@10", "retain.kl", "holdout.ndcg@10", "privacy.mia_auc")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="group")
    parser.add_argument("--size", default="default")
    parser.add_argument("--world", default=None)
    parser.add_argument("--quick", action="store_true", help="the small world, two configurations (a smoke run)")
    args = parser.parse_args(argv)
    configs = CONFIGS[:1] + CONFIGS[3:4] if args.quick else CONFIGS
    if args.quick:
        args.size = "small"
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scorefile import save_score_file

    world = resolve_world(args.world, args.seed, args.scenario, args.size)
    with tempfile.TemporaryDirectory(prefix="ucan-directions-") as tmp:
        bench = open_bench(world, Path(tmp))
        scores = {}
        for unit in ("output", "direction"):
            run = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                        params=MethodParams(unit=unit), receipt_key=bench.key)
            scores[unit] = save_score_file(Path(tmp) / f"{unit}.safetensors", run.stats, run.result, run.meta, force=False)
            print(f"{unit}: verdict {run.overview['verdict']}: {run.overview['sentence']}", file=sys.stderr)
        rows, dirs = [], []
        for name, options in configs:
            out = bench.new_dir("adapter")
            try:
                run = attenuate(bench.original, out, scores=scores[options.get("unit", "output")], params=options,
                                receipt_key=bench.key, accept_weak=True)
                rows.append((name, out, run.report["summary"].get("k"), run.report["verdict"]["kind"]))
                dirs.append(out)
            except NothingToDo as exc:
                rows.append((name, None, 0, f"nothing to do: {exc.message[:80]}"))
        result = evaluate_dirs(bench, dirs)
        ids = dict(zip(dirs, result.unlearned_ids))
        print("| edit | k | verdict | " + " | ".join(COLUMNS) + " |")
        print("|---|---|---|" + "---|" * len(COLUMNS))

        def line(name, key, k="", verdict=""):
            values = [fmt(result.value(key, c)) for c in COLUMNS]
            print(f"| {name} | {k} | {verdict} | " + " | ".join(values) + " |")

        line("original", "original")
        for name, out, k, verdict in rows:
            if out is None:
                print(f"| {name} | 0 | {verdict} |" + " |" * len(COLUMNS))
            else:
                line(name, ids[out], k, verdict)
        line("reference (retrained)", "reference")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
