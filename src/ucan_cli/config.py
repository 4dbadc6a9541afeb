"""Config files, both ways: reading a ``--config`` TOML and writing ``ucan_config.toml``.

A config file holds option values keyed by their long names (``lambda`` for ``--lambda``; the
parameter's own name works too): top-level keys apply to every command that has the option, a
``[command]`` table to that command only. ``load_config`` parses one, with one-line
``InputError``s for every way it can be wrong, and ``convert`` turns a TOML value into a
command parameter's type. ``ucan_cli.options`` maps the keys onto a command's options (command-line
flags win).

``config_toml`` writes the resolved options of an ``attenuate`` run as such a file, and
``equivalent_command`` the command line that reproduces a call made from Python. The config file
leaves out the security switches (``COMMAND_LINE_ONLY``), which a config file can never turn on;
the command line carries them like any flag.

No Typer here: the library writes ``ucan_config.toml``.
"""

from __future__ import annotations

import enum
import json
import shlex
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from ucan_cli.errors import InputError

#: Security switches: a config file (which may come from anyone, or from an earlier output) never
#: turns them on; only a flag typed on the command line does. Key -> the flag. ``config_toml``
#: never writes them, so a rerun from an output repeats them itself.
COMMAND_LINE_ONLY = {"trust_remote_code": "--trust-remote-code", "allow_pickle": "--allow-pickle"}


# --------------------------------------------------------------------------------------------
# Reading


def load_config(path: Path, command: str) -> dict[str, dict[str, Any]]:
    """The values of ``path`` for ``command``: ``{"top": top-level keys, "own": [command] keys}``,
    keys with underscores for dashes and the security switches dropped (``false``) or refused."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    if path.is_dir():
        raise InputError(f"{path}: config file is a directory")
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: config file is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read config file ({exc.strerror or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    top = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise InputError(f"{path}: [{command}] must be a table")
    own = {k.replace("-", "_"): v for k, v in section.items()}
    for values in (top, own):
        for key in COMMAND_LINE_ONLY.keys() & values.keys():
            # ``false`` (what outputs of ucan 0.x wrote into ucan_config.toml) changes nothing: dropped.
            if values.pop(key) is not False:
                raise InputError(f"{path}: {key} can only be set on the command line ({COMMAND_LINE_ONLY[key]})")
    return {"top": top, "own": own}


def convert(value: Any, annotation: Any, name: str, path: Path) -> Any:
    """Convert a TOML value to a command parameter's type (the types ucan's options use)."""
    base = typing.get_origin(annotation)
    if base is Annotated:
        annotation = typing.get_args(annotation)[0]
        base = typing.get_origin(annotation)
    if base in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = args[0] if len(args) == 1 else annotation
        base = typing.get_origin(annotation)
    if base in (list, tuple):
        (item,) = typing.get_args(annotation)[:1] or (str,)
        if not isinstance(value, list):
            value = [value]
        return [convert(v, item, name, path) for v in value]
    wrong = InputError(f"{path}: option {name!r}: {value!r} is not a valid {getattr(annotation, '__name__', annotation)}")
    if annotation is bool:
        if not isinstance(value, bool):
            raise wrong
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong
        return float(value)
    if annotation in (str, Path):
        if not isinstance(value, str):
            raise wrong
        return annotation(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(value)
        except ValueError:
            raise wrong from None
    return value


# --------------------------------------------------------------------------------------------
# Writing


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)  # a TOML basic string


def config_toml(section: str, values: Mapping[str, Any]) -> str:
    """A TOML table of scalar option values (None and the security switches left out), loadable
    with ``--config``."""
    lines = [
        "# The resolved options of this run. Rerun with: ucan attenuate --config ucan_config.toml -o NEW_DIR",
        f"[{section}]",
    ]
    lines += [
        f"{key} = {_toml_value(value)}"
        for key, value in values.items()
        if value is not None and key not in COMMAND_LINE_ONLY
    ]
    return "\n".join(lines) + "\n"


def equivalent_command(command: str, values: Mapping[str, Any], flags: Mapping[str, str]) -> str:
    """The ``ucan COMMAND`` line that reproduces a call (for API use without argv): each value not
    None or False as its flag (``flags[key]``, else ``--`` + the key with dashes)."""
    argv = ["ucan", command]
    for key, value in values.items():
        if value is None or value is False:
            continue
        flag = flags.get(key, "--" + key.replace("_", "-"))
        argv += [flag] if value is True else [flag, str(value)]
    return shlex.join(argv)


__all__ = ["COMMAND_LINE_ONLY", "config_toml", "convert", "equivalent_command", "load_config"]
