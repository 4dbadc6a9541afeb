"""Run ``ucan`` commands in-process on every rank of a torchrun launch (tests/test_distributed.py).

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py COMMANDS.json

COMMANDS.json holds a list of argument lists; each runs through the real CLI (``ucan_cli.cli.app``:
options, the launcher check, the process group, the silent ranks, rank 0's files), one after
the other in the same processes. Each command's exit code is printed on stderr as
``exit RANK CODE``, so the test sees every rank's outcome.
"""

from __future__ import annotations

import json
import os
import sys

import click
import typer

from ucan_cli.cli import app


def main() -> int:
    commands = json.loads(open(sys.argv[1], encoding="utf-8").read())
    rank = os.environ.get("RANK", "?")
    command = typer.main.get_command(app)
    worst = 0
    for argv in commands:
        try:
            result = command.main(args=argv, prog_name="ucan", standalone_mode=False)  # click returns an Exit's code here
            code = result if isinstance(result, int) else 0
        except click.exceptions.Exit as exc:
            code = exc.exit_code
        except SystemExit as exc:
            code = int(exc.code or 0)
        sys.stdout.flush()
        sys.stderr.write(f"exit {rank} {code}\n")
        worst = max(worst, code)
    return worst


if __name__ == "__main__":
    sys.exit(main())
