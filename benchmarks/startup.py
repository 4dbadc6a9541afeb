"""Start-up: `ucan --help` (and `ucan attenuate --help`) against `python -c "import typer, rich"`.

A command line people type many times a day must answer at once. The yardstick is the cost of
the two libraries any Typer + Rich program imports; the target is at most 1.3x of it. Each round
runs the yardstick and the commands back to back in fresh interpreters (so a busy machine slows
both alike), and the ratio is the median over rounds of the per-round ratio.

Both sides run with compiled bytecode, as an installed package does (pip compiles on install): a
warm-up run writes every .pyc into a scratch ``PYTHONPYCACHEPREFIX``, and
``PYTHONDONTWRITEBYTECODE`` is dropped. Without this, an editable checkout on a machine that sets
``PYTHONDONTWRITEBYTECODE=1`` (this one does) recompiles ucan's sources on every start while
typer's and rich's come precompiled from site-packages, which measures the compiler, not ucan.

    python benchmarks/startup.py            # 7 rounds
    python benchmarks/startup.py --quick    # 3 rounds, for CI smoke runs
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

TARGET = 1.3
YARDSTICK = [sys.executable, "-c", "import typer, rich"]
COMMANDS = {
    "ucan --help": [sys.executable, "-m", "ucan_cli", "--help"],
    "ucan attenuate --help": [sys.executable, "-m", "ucan_cli", "attenuate", "--help"],
}


def wall(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=None)
    args = parser.parse_args()
    rounds = args.rounds or (3 if args.quick else 7)

    with tempfile.TemporaryDirectory(prefix="ucan-startup-pyc-") as pyc:
        env = {"COLUMNS": "100", "PATH": "", "PYTHONPYCACHEPREFIX": pyc}
        for argv in (YARDSTICK, *COMMANDS.values()):  # warm the file cache and write the .pyc files once
            wall(argv, env)
        yard: list[float] = []
        times: dict[str, list[float]] = {name: [] for name in COMMANDS}
        ratios: dict[str, list[float]] = {name: [] for name in COMMANDS}
        for _ in range(rounds):
            y = wall(YARDSTICK, env)
            yard.append(y)
            for name, argv in COMMANDS.items():
                t = wall(argv, env)
                times[name].append(t)
                ratios[name].append(t / y)
    rows = {
        name: {
            "median_s": round(statistics.median(times[name]), 4),
            "ratio_median": round(statistics.median(ratios[name]), 3),
            "meets_target": statistics.median(ratios[name]) <= TARGET,
        }
        for name in COMMANDS
    }
    print(json.dumps({"rounds": rounds, "yardstick_median_s": round(statistics.median(yard), 4), "target_ratio": TARGET,
                      "commands": rows}, indent=2))


if __name__ == "__main__":
    main()
