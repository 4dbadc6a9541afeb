"""The ``ucan`` command line: parse, call the library, render. No math here.

Command modules (``ucan_cli.commands.*``) import only Typer at module level; torch,
transformers and peft load inside the command bodies, so ``ucan --help`` and ``ucan --version``
answer without them.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

try:  # Typer 0.2x vendors its own click; older releases use the click package
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover
    from click import exceptions as click_exceptions

from ucan_cli._version import __version__
from ucan_cli.errors import Terminated
from ucan_cli.commands import attenuate as attenuate_cmd
from ucan_cli.commands import compare as compare_cmd
from ucan_cli.commands import demo as demo_cmd
from ucan_cli.commands import eval as eval_cmd
from ucan_cli.commands import inspect as inspect_cmd
from ucan_cli.commands import prepare as prepare_cmd
from ucan_cli.commands import score as score_cmd
from ucan_cli.help import UcanCommand, UcanGroup, fast_help

EPILOG = (
    "Exit codes: 0 ok, 1 runtime failure, 2 bad usage or input, 3 a --fail-if gate failed, "
    "4 nothing to do (no eligible unit, or a weak contrast declined; nothing written). U-CAN is approximate unlearning with no formal guarantee."
)


class RootGroup(UcanGroup):
    """The root command: parser errors (a bad value, an unknown option or command, a missing
    option) print one line, ``error: ucan COMMAND: <message>``, and exit 2, like the same mistake
    made in a ``--config`` file, instead of Typer's usage box. ``--help`` is untouched."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode: bool = True, **extra: Any) -> Any:
        prog_name = prog_name or "ucan"  # also under ``python -m ucan_cli``
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            # Not standalone: click raises its errors here instead of rendering them; typer.Exit
            # (from --help, --version and ucan's own error handling) comes back as its code.
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click_exceptions.NoArgsIsHelpError as exc:  # bare ``ucan`` or ``ucan prepare``: the help
            exc.show()
            sys.exit(exc.exit_code)
        except click_exceptions.ClickException as exc:
            sys.stderr.write(f"error: {_one_line(exc)}\n")
            sys.exit(exc.exit_code)
        except click_exceptions.Abort:
            sys.stderr.write("error: aborted\n")
            sys.exit(1)
        sys.exit(code if isinstance(code, int) and not isinstance(code, bool) else 0)


def _one_line(exc: click_exceptions.ClickException) -> str:
    message = " ".join(exc.format_message().split())
    ctx = getattr(exc, "ctx", None)
    return f"{ctx.command_path}: {message}" if ctx is not None else message


app = typer.Typer(
    name="ucan",
    cls=RootGroup,
    help=(
        "Make the LoRA adapter of an LLM recommender forget chosen users (U-CAN, arXiv 2602.23400): "
        "score LoRA units by how much more they fire on a forget set than on a retain set, softly attenuate "
        "the risky ones, and evaluate what was forgotten and what was kept."
    ),
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help (ucan_cli.help): Rich's help renderer costs more than ucan's start-up budget
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ucan {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    # A plain bool flag (not Optional[bool]): Typer then skips value coercion, which would import
    # pydantic (about 80 ms) on every invocation, `--help` included.
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """ucan: one-shot, gradient-free unlearning for LoRA-tuned LLM recommenders."""


app.command("inspect", epilog=EPILOG, cls=UcanCommand)(inspect_cmd.inspect)
app.command("score", epilog=EPILOG, cls=UcanCommand)(score_cmd.score)
app.command("attenuate", epilog=EPILOG, cls=UcanCommand)(attenuate_cmd.attenuate)
app.command("eval", epilog=EPILOG, cls=UcanCommand)(eval_cmd.eval_)
app.command("compare", epilog=EPILOG, cls=UcanCommand)(compare_cmd.compare)
app.add_typer(prepare_cmd.app, name="prepare")
app.command("demo", epilog=EPILOG, cls=UcanCommand)(demo_cmd.demo)


def _terminate(signum, frame) -> None:
    raise Terminated(signum)


def main() -> None:
    """Console-script entry point.

    ``--help`` is answered from the command tree without parsing (``ucan_cli.help``). SIGTERM
    (``kill``, a job scheduler's timeout) is turned into an exception like Ctrl-C, so that the
    output context managers remove their temporary siblings before the process exits (Python's
    default for SIGTERM exits without running them). SIGKILL cannot be caught; the next run for
    the same output removes what such a run left (``io.outdir``).
    """
    text = fast_help(app, sys.argv[1:])
    if text is not None:
        typer.echo(text)
        return
    import signal

    signal.signal(signal.SIGTERM, _terminate)
    app(prog_name="ucan")


if __name__ == "__main__":  # pragma: no cover
    main()
