"""``ucan prepare``: real data in. ``movielens`` (the paper's protocol) and ``split`` (by user id).

Thin commands: parse the options, call ``ucan_cli.prepare``, render a table of counts (stdout
carries only the manifest with ``--json``). The shared options (``--seed``, ``--json``,
``--quiet``, ``-v``, ``--config``) and the mapping of errors to exit codes come from
``@ucan_command``.
"""

from __future__ import annotations

import functools
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ucan_cli.errors import InputError
from ucan_cli.help import UcanCommand, UcanGroup
from ucan_cli.options import RuntimeOptions, ucan_command

if TYPE_CHECKING:
    from ucan_cli.ui import UI

app = typer.Typer(
    cls=UcanGroup,
    rich_markup_mode=None,
    help="Prepare data: MovieLens-100K by the paper's protocol, or forget/retain files from a deletion request.",
    no_args_is_help=True,
)


_data = functools.partial(typer.Option, rich_help_panel="Data")
_protocol = functools.partial(typer.Option, rich_help_panel="Protocol")
_output = functools.partial(typer.Option, rich_help_panel="Output")


class Preset(str, Enum):
    """Which train prefixes to keep: all of them, or the last 2 per user (the benchmark size)."""

    default = "default"
    bench = "bench"


def _render_counts(ui: UI, title: str, counts: dict[str, int], *, note: str | None = None) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(title), title_justify="left")
    table.add_column("count")
    table.add_column("value", justify="right")
    for name, value in counts.items():
        table.add_row(name.replace("_", " "), f"{value:,}")
    ui.table(table)
    if note:
        ui.info(escape(note))


def _forget_user_ints(text: str) -> tuple[int, ...]:
    from ucan_cli.prepare.split import parse_user_ids

    ids = parse_user_ids(text)
    bad = [u for u in ids if not u.isdigit()]
    if bad:
        raise InputError(f"--forget-users: MovieLens user ids are integers, got {', '.join(bad)}")
    return tuple(int(u) for u in ids)


@app.command("movielens", cls=UcanCommand)
@ucan_command(model=False)
def movielens(
    output: Annotated[
        Path | None, _output("--output", "-o", help="DATA_DIR to create (refused if it exists, unless --force).")
    ] = None,
    source: Annotated[
        Path | None,
        _data(
            "--source",
            help="Folder with GroupLens's u.data/u.item/u.user or recbole's ml-100k.inter/.item/.user. "
            "Default: recbole's installed copy (pip install --no-deps recbole==1.2.1).",
        ),
    ] = None,
    forget_fraction: Annotated[
        float | None, _data("--forget-fraction", help="Share of users to forget, by a seeded permutation (default 0.25).")
    ] = None,
    forget_users: Annotated[
        str | None, _data("--forget-users", metavar="ID,...", help="Forget exactly these user ids instead.")
    ] = None,
    with_attributes: Annotated[
        bool, _data("--with-attributes", help="Add gender, age bucket and occupation to every record (attribute inference).")
    ] = False,
    history: Annotated[int, _protocol("--history", help="H: items of history per record.")] = 10,
    candidates: Annotated[int, _protocol("--candidates", help="C: candidate pool size (letters A..), 2 to 26.")] = 20,
    preset: Annotated[
        Preset, _protocol("--preset", help="default: every train prefix; bench: the last 2 per user.")
    ] = Preset.default,
    dry_run: Annotated[bool, _output("--dry-run", help="Print the counts only; write nothing.")] = False,
    force: Annotated[bool, _output("--force", help="Replace an existing DATA_DIR.")] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Build MovieLens-100K instruction records by the paper's protocol (5-core, leave-one-out,
    lettered candidate pools, forget users), into train/forget/retain/holdout/valid JSONL.

    Examples:

        ucan prepare movielens -o data/ml100k

        ucan prepare movielens --preset bench --forget-fraction 0.1 -o data/bench

        ucan prepare movielens --source ~/Downloads/ml-100k --forget-users 1,2,3 -o data/ml

        ucan prepare movielens --dry-run --json
    """
    if forget_users is not None and forget_fraction is not None:
        raise InputError("--forget-users and --forget-fraction exclude each other; give one")
    from ucan_cli.prepare.movielens import PrepareOptions, prepare_movielens

    options = PrepareOptions(
        history=history,
        candidates=candidates,
        forget_fraction=0.25 if forget_fraction is None else forget_fraction,
        forget_users=None if forget_users is None else _forget_user_ints(forget_users),
        preset=preset.value,
        with_attributes=with_attributes,
        seed=rt.seed,
    )
    prepared = prepare_movielens(options, source=source, out_dir=output, force=force, dry_run=dry_run)
    from ucan_cli.ui import UI

    ui = UI(rt)
    where = "dry run: nothing written" if dry_run else f"written to {output}"
    _render_counts(ui, f"MovieLens-100K ({options.preset} preset, seed {rt.seed})", prepared.counts, note=where)
    if rt.json:
        ui.emit_json(prepared.manifest)


@app.command("split", cls=UcanCommand)
@ucan_command(model=False)
def split(
    data: Annotated[Path, _data("--data", help="JSONL (or .jsonl.gz) whose records carry user_id.")],
    forget_users: Annotated[
        str | None, _data("--forget-users", metavar="ID,...", help="User ids to forget (comma separated).")
    ] = None,
    forget_users_file: Annotated[
        Path | None, _data("--forget-users-file", help="File of user ids to forget (one per line; # comments).")
    ] = None,
    ignore_missing: Annotated[
        bool, _data("--ignore-missing", help="Go on when forget user ids have no record (listed in the manifest).")
    ] = False,
    retain_sample: Annotated[
        int | None, _data("--retain-sample", metavar="N", help="Keep a seeded sample of N retain records.")
    ] = None,
    output: Annotated[
        Path | None, _output("--output", "-o", help="DIR to create: forget.jsonl, retain.jsonl, manifest.json.")
    ] = None,
    dry_run: Annotated[bool, _output("--dry-run", help="Print the counts only; write nothing.")] = False,
    force: Annotated[bool, _output("--force", help="Replace an existing DIR.")] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Split a JSONL file into forget and retain by user id: every record of a forgotten user goes
    to forget.jsonl. Unknown user ids are an error (exit 2) unless --ignore-missing.

    Examples:

        ucan prepare split --data data/ml100k/train.jsonl --forget-users 12,85,301 -o data/request-42

        ucan prepare split --data logs.jsonl.gz --forget-users-file request.txt --retain-sample 2000 -o data/req
    """
    if (forget_users is None) == (forget_users_file is None):
        raise InputError("give exactly one of --forget-users and --forget-users-file")
    from ucan_cli.prepare.split import parse_user_ids, read_user_ids_file, split_by_users

    ids = parse_user_ids(forget_users) if forget_users_file is None else read_user_ids_file(forget_users_file)
    from ucan_cli.io.outdir import reading

    with reading(forget_users_file):  # -o --force must not delete the users file either
        result = split_by_users(
            data,
            ids,
            out_dir=output,
            retain_sample=retain_sample,
            seed=rt.seed,
            ignore_missing=ignore_missing,
            force=force,
            dry_run=dry_run,
        )
    where = "dry run: nothing written" if dry_run else f"written to {output}"
    if result.missing_user_ids:
        where += f"; {len(result.missing_user_ids)} forget user id(s) had no record: {', '.join(result.missing_user_ids)}"
    from ucan_cli.ui import UI

    ui = UI(rt)
    _render_counts(ui, f"split of {data.name}", result.counts, note=where)
    if rt.json:
        ui.emit_json(result.manifest)
