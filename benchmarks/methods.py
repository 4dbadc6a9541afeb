"""Every method on the demo worlds with ``ucan compare``: the tables of docs/results.md ("Every
method, every world").

For each world (the synthetic group worlds, seeds 0-2; the synthetic random scenario; the
MovieLens taste-cluster world) it runs ``ucan_cli.flows.compare.compare`` with every shipped
method (``ucan``, ``random``, ``ga``, ``graddiff``, ``npo``, ``prune``, ``negate``, ``retrain``)
at their defaults, equal-forgetting runs for the gradient methods, the world's own retrained
reference, and ``retrain`` with the recipe the world's adapter was trained with (world.json's
``lora``: epochs, lr, batch, max length) on forget + retain (the adapter's training records).
Batch 32, seed 0, torch on one thread. It prints each world's table.md and writes a JSON of
every table with ``--out``.

    python benchmarks/methods.py                                   # seeds 0-2 group, seed 0 random
    python benchmarks/methods.py --worlds group:0 movielens:0      # any of group:S random:S movielens:S
    python benchmarks/methods.py --quick                           # the small world, three methods (CI)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ALL = ("ucan", "random", "ga", "graddiff", "npo", "prune", "negate", "retrain")


def world_dir(spec: str, size: str) -> Path:
    kind, _, seed = spec.partition(":")
    if kind == "movielens":
        from ucan_cli.demo.movielens_world import ensure_movielens_world

        return ensure_movielens_world(int(seed or 0), "group", on_build=lambda m: print(m, file=sys.stderr))[0]
    from ucan_cli.demo.cache import ensure_world

    return ensure_world(int(seed or 0), kind, size, on_build=lambda m: print(m, file=sys.stderr))[0]


def run_world(world: Path, work: Path, methods: tuple[str, ...]) -> dict:
    from ucan_cli.flows.compare import compare
    from ucan_cli.runtime.threads import torch_threads

    recipe = json.loads((world / "world.json").read_text(encoding="utf-8"))["lora"]
    train = work / "train.jsonl"
    train.write_text((world / "forget.jsonl").read_text(encoding="utf-8") + (world / "retain.jsonl").read_text(encoding="utf-8"),
                     encoding="utf-8")
    key = work / "receipt.key"
    key.write_text("benchmark-receipt-key-0123456789\n")
    settings = [f"retrain.epochs={recipe['epochs']}", f"retrain.lr={recipe['lr']}"] if "retrain" in methods else []
    t = time.perf_counter()
    with torch_threads(1):
        run = compare(str(world / "base"), world / "original", world / "forget.jsonl", world / "retain.jsonl",
                      world / "holdout.jsonl", work / "compare", methods=methods, settings=settings,
                      train=train if "retrain" in methods else None, reference=world / "reference", batch_size=32,
                      max_length=recipe.get("max_length"), receipt_key=key, seed=0)
    run.document["wall_seconds"] = round(time.perf_counter() - t, 1)
    return run.document


def main() -> None:
    from ucan_cli.report.compare import table_markdown

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["group:0", "group:1", "group:2", "random:0"])
    parser.add_argument("--size", default="default")
    parser.add_argument("--out", type=Path, default=None, help="write every world's table.json document here")
    parser.add_argument("--quick", action="store_true", help="the small seed-0 world, ucan, ga and negate (a CI smoke run)")
    args = parser.parse_args()
    methods = ALL
    if args.quick:
        args.worlds, args.size, methods = ["group:0"], "small", ("ucan", "ga", "negate")
    documents = {}
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.worlds:
            work = Path(tmp) / spec.replace(":", "-")
            work.mkdir()
            doc = run_world(world_dir(spec, args.size), work, methods)
            documents[spec] = doc
            print(f"## {spec} ({doc['wall_seconds']} s)\n")
            print(table_markdown(doc))
    if args.out is not None:
        args.out.write_text(json.dumps(documents, indent=2, allow_nan=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
