"""Regenerate the demo worlds shipped as package data (src/ucan_cli/demo/assets/*.tar.gz).

    python scripts/build_demo_assets.py            # seed 0, both scenarios (what ships)
    python scripts/build_demo_assets.py --check    # exit 1 if the shipped archives are stale

Each world is built exactly as ``ucan demo --rebuild`` builds it (``cache.ensure_world`` into a
scratch cache: the second scenario reuses the first's base model and original adapter), then
packed reproducibly (sorted names, zero times and owners). Archives carry the cache key, which
holds ``cache.SYNTHETIC_REVISION``: after a change that alters a world's records or weights, bump
it and run this script, or the demo ignores the stale archives and builds the world on first use.
"""

from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from ucan_cli.demo.cache import ASSETS, asset_path, ensure_world, pack_world, world_key
from ucan_cli.demo.world import SCENARIOS


def shipped_key(archive: Path) -> str | None:
    """The cache key inside a shipped archive's world.json, or None when unreadable."""
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            handle = tar.extractfile("world.json")
            return json.loads(handle.read().decode("utf-8")).get("key") if handle else None
    except (OSError, KeyError, ValueError, tarfile.TarError):
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    parser.add_argument("--check", action="store_true", help="only check that the shipped archives are current")
    args = parser.parse_args(argv)

    pairs = [(seed, scenario) for seed in args.seeds for scenario in args.scenarios]
    if args.check:
        stale = [asset_path(seed, sc) for seed, sc in pairs if shipped_key(asset_path(seed, sc)) != world_key(seed, sc)]
        for path in stale:
            print(f"stale or missing: {path}")
        return 1 if stale else 0

    ASSETS.mkdir(parents=True, exist_ok=True)
    total = 0
    with tempfile.TemporaryDirectory(prefix="ucan-demo-assets-") as scratch:
        for seed, scenario in pairs:
            t0 = time.perf_counter()
            world_dir, how = ensure_world(seed, scenario, root=Path(scratch), use_assets=False)
            manifest = json.loads((world_dir / "world.json").read_text(encoding="utf-8"))
            archive = pack_world(world_dir, asset_path(seed, scenario))
            size = archive.stat().st_size
            total += size
            memo = manifest["memorization"]
            print(
                f"{archive.name}: {size / 1e6:.2f} MB, {how} in {time.perf_counter() - t0:.1f} s "
                f"(build_seconds {manifest['build_seconds']}); original forget R@1 "
                f"{memo['original']['forget']['recall@1']}, reference {memo['reference']['forget']['recall@1']}, "
                f"MIA AUC original {memo['original']['mia_auc_forget_vs_holdout']}"
            )
    print(f"total {total / 1e6:.2f} MB in {ASSETS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
