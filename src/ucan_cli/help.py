"""Plain-text `--help`, grouped by panel, answered without parsing.

Rich-rendered help (Typer's ``rich_utils``) imports markdown-it and Pygments, and Typer's value
coercion imports pydantic: together they made ``ucan attenuate --help`` 4.6x slower than
``python -c "import typer, rich"`` (benchmarks/startup.py). Help here is click's plain
formatter with two additions: options are grouped under their panel (Model, Data, Method, Output,
Performance, ...), and example lines (``ucan ...``) are never re-wrapped, so they stay
copy-pasteable. ``fast_help`` renders ``ucan [GROUP] [COMMAND] --help`` from the command tree
directly, without running the parser. CLI-only module.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import typer
from typer.core import TyperCommand, TyperGroup

HELP_FLAGS = ("-h", "--help")
DEFAULT_PANEL = "Options"
# SPEC 6's option groups, in this order; other panels follow in the order they are declared, and
# the catch-all panel (where --help lives) comes last.
PANEL_ORDER = ("Arguments", "Model", "Data", "Protocol", "Method", "Output", "Performance")


def _keep_examples(text: str) -> str:
    """Mark every paragraph made only of indented ``ucan ...`` lines as not to be re-wrapped
    (click's ``\\b`` marker)."""
    paragraphs = text.split("\n\n")
    for i, para in enumerate(paragraphs):
        lines = [line for line in para.split("\n") if line.strip()]
        if lines and all(line.startswith(" ") and line.lstrip().startswith("ucan ") for line in lines):
            paragraphs[i] = "\b\n" + para
    return "\n\n".join(paragraphs)


class UcanCommand(TyperCommand):
    """A command whose help lists options by panel and keeps its examples on one line each."""

    def format_help_text(self, ctx: typer.Context, formatter) -> None:
        text = inspect.cleandoc(self.help or "").partition("\f")[0]
        if text:
            formatter.write_paragraph()
            with formatter.indentation():
                formatter.write_text(_keep_examples(text))

    def format_options(self, ctx: typer.Context, formatter) -> None:
        panels: dict[str, list[tuple[str, str]]] = {}
        for param in self.get_params(ctx):
            record = param.get_help_record(ctx)
            if record is None:
                continue
            if param.param_type_name == "argument":
                panel = "Arguments"
            else:
                panel = getattr(param, "rich_help_panel", None) or DEFAULT_PANEL
            panels.setdefault(panel, []).append(record)
        rank = {name: i for i, name in enumerate(PANEL_ORDER)}
        order = sorted(panels, key=lambda name: (name == DEFAULT_PANEL, rank.get(name, len(rank))))
        for name in order:
            with formatter.section(name):
                formatter.write_dl(panels[name])


class UcanGroup(TyperGroup):
    """A command group with plain help (its commands are listed by click's formatter)."""


def fast_help(app: typer.Typer, argv: Sequence[str], prog_name: str = "ucan") -> str | None:
    """The help text for ``argv`` when it is ``[GROUP ...] [COMMAND] --help`` and names existing
    commands; None otherwise (the normal parser then handles it, errors included)."""
    if not argv or argv[-1] not in HELP_FLAGS or any(token.startswith("-") for token in argv[:-1]):
        return None
    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name=prog_name)
    for token in argv[:-1]:
        sub = command.get_command(ctx, token) if isinstance(command, TyperGroup) else None
        if sub is None:
            return None
        command = sub
        ctx = typer.Context(command, info_name=token, parent=ctx)
    return ctx.get_help()
