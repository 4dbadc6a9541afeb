"""``ucan-graddiff`` and ``prune`` against plain GradDiff and U-CAN on a demo world, with ``ucan eval``.

Does U-CAN's contrast buy utility or steps when it localizes GradDiff? Runs, on one world (batch
32, seed 0): U-CAN's default edit; GradDiff at its defaults; ``ucan-graddiff`` at its defaults
(equal steps), at GradDiff's learning rate and at GradDiff's cost (its statistics pass paid by
fewer steps); both gradient methods with ``--until`` (equal forgetting; default 0.4 x the
original's forget Recall@5); ``prune`` selective at two ratios and forget-only. Then one
``evaluate`` over every output (``benchmarks/gradient.py``'s ``measure``) prints the table of
docs/methods.md ("Contrast-localized GradDiff", "Pruning").

    python benchmarks/localized.py                       # seed-0 group world (the tuning world)
    python benchmarks/localized.py --seed 1              # held out
    python benchmarks/localized.py --until "forget.recall@5 <= 0.3" --only graddiff,ucan-graddiff
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def configs(until: str) -> list[tuple[str, str, dict]]:
    target = {"until": until, "steps": 200}
    return [
        ("U-CAN defaults", "ucan", {}),
        ("graddiff", "graddiff", {}),
        ("ucan-graddiff", "ucan-graddiff", {}),
        ("ucan-graddiff, GradDiff's lr", "ucan-graddiff", {"lr": 0.001}),
        ("ucan-graddiff, GradDiff's cost", "ucan-graddiff", {"steps": 26}),
        ("graddiff until", "graddiff", dict(target)),
        ("ucan-graddiff until", "ucan-graddiff", dict(target)),
        ("prune", "prune", {}),
        ("prune", "prune", {"prune_ratio": 0.02}),
        ("prune, forget only", "prune", {"prune_score": "forget"}),
    ]


def main() -> None:
    from gradient import measure, print_table

    from ucan_cli.demo.cache import ensure_world

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="group")
    parser.add_argument("--until", default="forget.recall@5 <= 0.4*original", help="the equal-forgetting target")
    parser.add_argument("--only", default=None, help="comma-separated methods to run (default: all)")
    args = parser.parse_args()
    world, _ = ensure_world(args.seed, args.scenario, "default")
    chosen = configs(args.until)
    if args.only:
        keep = set(args.only.split(","))
        chosen = [c for c in chosen if c[1] in keep]
    print_table(*measure(world, chosen))


if __name__ == "__main__":
    main()
