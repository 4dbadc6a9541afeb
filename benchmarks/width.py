"""Width study (issue 11 item 5): do wider models make the random scenario and the MovieLens
taste cluster separable, along output units or along input directions?

Builds demo worlds with a wider tiny Llama (``BuildConfig(hidden=...)``, the demo's recipe
otherwise unchanged) into a cache folder outside the repository (default
``~/.cache/ucan/width``; a world is reused when its ``world.json`` is there), then compares, on
each world, output units (defaults), direction units at the given gate and strength (default: the
tuned gate none, mu 0.2; docs/results.md) and gated at each ``--gated`` strength, random directions with the
same per-module shrink spectrum, and the retrained reference, with one
``evaluate`` (``harness.unit_comparison``). Torch runs on one thread.

    python benchmarks/width.py --hidden 256 --worlds random:0 movielens:0 --out width.json
    python benchmarks/width.py --quick      # the small cached 64-wide world, no build (CI smoke run)

Build cost on 2 shared CPU cores, hidden 256: see docs/results.md ("Width study").
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import json_ready, open_bench, print_comparison, resolve_world, unit_comparison  # noqa: E402


def width_root() -> Path:
    from ucan_cli.demo.cache import cache_root

    return cache_root() / "width"


def build_wide(kind: str, seed: int, hidden: int, heads: int, root: Path, *, base_lr: float | None = None,
               lora_lr: float | None = None) -> tuple[Path, float]:
    """The world (``random`` / ``group`` synthetic, or ``movielens``) at this width: cached or built.
    ``base_lr`` / ``lora_lr`` replace the recipe's learning rates (default: the demo's)."""
    lrs = "".join(f"-{tag}{lr:g}" for tag, lr in (("blr", base_lr), ("llr", lora_lr)) if lr is not None)
    name = f"{kind}-w{hidden}{lrs}-seed{seed}"
    target = root / name
    if (target / "world.json").is_file():
        return target, 0.0
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"building {name} into {target} (one torch thread)", file=sys.stderr)
    if kind == "movielens":
        from ucan_cli.demo.movielens_world import SIZES, build_movielens_world

        build = with_lrs(replace(SIZES["default"].build, hidden=hidden, heads=heads), base_lr, lora_lr)
        build_movielens_world(seed, "group", out_dir=target, build=build, force=True)
    else:
        from ucan_cli.demo.build import CONFIGS, build_world
        from ucan_cli.demo.world import generate_world

        # The base and the original adapter do not depend on the scenario: reuse the other one's.
        sibling = root / name.replace(kind, "group" if kind == "random" else "random", 1)
        reuse = sibling if (sibling / "world.json").is_file() else None
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root))
        try:
            config = with_lrs(replace(CONFIGS["default"], hidden=hidden, heads=heads), base_lr, lora_lr)
            build_world(generate_world(seed, kind, "default"), tmp, config=config, key=f"width-{name}", reuse=reuse)
            tmp.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target, time.perf_counter() - t0


def with_lrs(config, base_lr: float | None, lora_lr: float | None):
    """``config`` with its base and LoRA learning rates replaced where given."""
    if base_lr is not None:
        config = replace(config, base_lr=base_lr)
    if lora_lr is not None:
        config = replace(config, lora=replace(config.lora, lr=lora_lr))
    return config


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--worlds", nargs="+", default=["random:0", "movielens:0"],
                        help="KIND:SEED, KIND one of random, group (synthetic) or movielens")
    parser.add_argument("--base-lr", type=float, default=None, help="the base's learning rate (default: the demo's 3e-3)")
    parser.add_argument("--lora-lr", type=float, default=None, help="the adapters' learning rate (default: the demo's 6e-3)")
    parser.add_argument("--root", default=None, help="where the wide worlds live (default ~/.cache/ucan/width)")
    parser.add_argument("--gate", default="none", help="direction units' gate (default: the tuned none)")
    parser.add_argument("--strength", type=float, default=0.2, help="direction units' mu (default: the tuned 0.2)")
    parser.add_argument("--gated", type=float, nargs="*", default=[1.0, 10.0],
                        help="also gate-noise direction edits at these strengths (default: 1, the code's default, and "
                        "10, the best gated on the tuning world)")
    parser.add_argument("--shrinkage", type=float, default=None)
    parser.add_argument("--draws", type=int, default=3, help="random-direction draws")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    parser.add_argument("--quick", action="store_true", help="the cached small 64-wide world, no build (a smoke run)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    direction = {"unit": "direction", "gate": args.gate, "strength": args.strength}
    if args.shrinkage is not None:
        direction["shrinkage"] = args.shrinkage
    root = Path(args.root) if args.root else width_root()
    worlds = []
    if args.quick:
        worlds.append(("small:0", resolve_world(None, 0, "group", "small"), 0.0))
        args.draws = 1
    else:
        for spec in args.worlds:
            kind, _, seed = spec.partition(":")
            path, seconds = build_wide(kind, int(seed or 0), args.hidden, args.heads, root, base_lr=args.base_lr,
                                       lora_lr=args.lora_lr)
            print(f"{spec}: {path} ({'built in %.0f s' % seconds if seconds else 'cached'})", file=sys.stderr)
            worlds.append((spec, path, seconds))
    if args.build_only:
        return 0
    out = []
    for spec, path, seconds in worlds:
        with tempfile.TemporaryDirectory(prefix="ucan-width-") as tmp:
            bench = open_bench(path, Path(tmp))
            t0 = time.perf_counter()
            extra = {f"directions, gate noise, mu {mu:g}": {"gate": "noise", "strength": mu} for mu in args.gated}
            row = unit_comparison(bench, direction, draws=args.draws, rank=False, extra=extra)
            row.update(world=spec, path=str(path), build_s=round(seconds, 1), compare_s=round(time.perf_counter() - t0, 1),
                       model=bench.manifest.get("model"), memorization=bench.manifest.get("memorization"))
        print(f"\n### {spec} (hidden {row['model'] and row['model'].get('hidden')})\n")
        print_comparison(row)
        out.append(row)
    if args.out:
        Path(args.out).write_text(json.dumps(json_ready(out), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
