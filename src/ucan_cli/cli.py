"""The ``ucan`` command line: parse, call the library, render. No math here.

Command modules (``ucan_cli.commands.*``) import only Typer at module level; torch,
transformers and peft load inside the command bodies, so ``ucan --help`` and ``ucan --version``
answer without them.
"""

from __future__ import annotations

import signal
from typing import Annotated, Optional

import typer

from ucan_cli._version import __version__
from ucan_cli.errors import Terminated
from ucan_cli.commands import attenuate as attenuate_cmd
from ucan_cli.commands import demo as demo_cmd
from ucan_cli.commands import eval as eval_cmd
from ucan_cli.commands import inspect as inspect_cmd
from ucan_cli.commands import prepare as prepare_cmd
from ucan_cli.commands import score as score_cmd

EPILOG = (
    "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 3 a --fail-if gate failed, "
    "4 nothing to do (no eligible unit; nothing written). U-CAN is approximate unlearning with no formal guarantee."
)

app = typer.Typer(
    name="ucan",
    help=(
        "Make the LoRA adapter of an LLM recommender forget chosen users (U-CAN, arXiv 2602.23400): "
        "score LoRA units by how much more they fire on a forget set than on a retain set, softly attenuate "
        "the risky ones, and evaluate what was forgotten and what was kept."
    ),
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ucan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        Optional[bool],
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = None,
) -> None:
    """ucan: one-shot, gradient-free unlearning for LoRA-tuned LLM recommenders."""


app.command("inspect", epilog=EPILOG)(inspect_cmd.inspect)
app.command("score", epilog=EPILOG)(score_cmd.score)
app.command("attenuate", epilog=EPILOG)(attenuate_cmd.attenuate)
app.command("eval", epilog=EPILOG)(eval_cmd.eval_)
app.add_typer(prepare_cmd.app, name="prepare")
app.command("demo", epilog=EPILOG)(demo_cmd.demo)


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main() -> None:
    """Console-script entry point.

    SIGTERM (``kill``, a job scheduler's timeout) is turned into an exception like Ctrl-C, so
    that the output context managers remove their temporary siblings before the process exits
    (Python's default for SIGTERM exits without running them). SIGKILL cannot be caught; the
    next run for the same output removes what such a run left (``io.outdir``).
    """
    signal.signal(signal.SIGTERM, _terminate)
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
