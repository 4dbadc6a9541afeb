"""The ``ucan`` command line: parse, call the library, render. No math here.

Command modules (``ucan_cli.commands.*``) import only Typer at module level; torch,
transformers and peft load inside the command bodies, so ``ucan --help`` and ``ucan --version``
answer without them.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from ucan_cli._version import __version__
from ucan_cli.commands import inspect as inspect_cmd

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


def _register_optional() -> None:
    """Commands whose modules land separately; each is a plain import of a light module."""
    import importlib

    for module_name, attr, name, kind in (
        ("ucan_cli.commands.score", "score", "score", "command"),
        ("ucan_cli.commands.attenuate", "attenuate", "attenuate", "command"),
        ("ucan_cli.commands.eval", "eval_", "eval", "command"),
        ("ucan_cli.commands.prepare", "app", "prepare", "group"),
        ("ucan_cli.commands.demo", "demo", "demo", "command"),
    ):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                continue
            raise
        target = getattr(module, attr)
        if kind == "group":
            app.add_typer(target, name=name)
        else:
            app.command(name, epilog=EPILOG)(target)


_register_optional()


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
