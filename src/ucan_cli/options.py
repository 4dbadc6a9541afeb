"""Options shared by every command, defined once, and the wrapper that applies them.

``@ucan_command`` appends the global options (SPEC section 6) to a Typer command, in their help
panels, merges ``--config FILE.toml`` (command-line flags win), packs them into a frozen
``RuntimeOptions`` passed as ``rt``, and maps ``UcanError`` exceptions to a one-line message on
stderr and their exit code. Commands therefore never repeat option definitions or error handling.
"""

from __future__ import annotations

import functools
import inspect
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.errors import EXIT_INPUT, EXIT_RUNTIME, InputError, UcanError

PANEL_MODEL = "Model"
PANEL_DATA = "Data"
PANEL_METHOD = "Method"
PANEL_OUTPUT = "Output"
PANEL_PERF = "Performance"


@dataclass(frozen=True)
class RuntimeOptions:
    """The global options every command receives as ``rt``."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_samples: Optional[int] = None
    max_length: Optional[int] = None
    seed: int = 0
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    config: Optional[Path] = None


def _opt(default, *names, help: str, panel: str, **kw):
    return default, typer.Option(*names, help=help, rich_help_panel=panel, **kw)


#: name -> (annotation, default, typer.Option); "model" options only on commands that run a model.
_MODEL_RUNTIME = {
    "device": (str, *_opt("auto", "--device", help="cpu, cuda, cuda:N or auto (cuda when available).", panel=PANEL_PERF)),
    "dtype": (
        str,
        *_opt("auto", "--dtype", help="float32, bfloat16, float16 or auto (float32 on CPU, bf16 on CUDA).", panel=PANEL_PERF),
    ),
    "batch_size": (int, *_opt(16, "--batch-size", help="Records per forward pass.", panel=PANEL_PERF, min=1)),
    "max_samples": (
        Optional[int],
        *_opt(None, "--max-samples", help="Use at most N records per set (a seeded sample).", panel=PANEL_DATA, min=1),
    ),
    "max_length": (
        Optional[int],
        *_opt(
            None,
            "--max-length",
            help="Token limit per record; longer prompts lose tokens from the left. Default: min(model max, 1024).",
            panel=PANEL_DATA,
            min=2,
        ),
    ),
}
_COMMON_RUNTIME = {
    "seed": (int, *_opt(0, "--seed", help="Seeds every sampler (samples, splits, bootstrap).", panel=PANEL_DATA)),
    "json": (bool, *_opt(False, "--json", help="Print only JSON on stdout; everything else goes to stderr.", panel=PANEL_OUTPUT)),
    "quiet": (bool, *_opt(False, "--quiet", "-q", help="Only errors and warnings on stderr.", panel=PANEL_OUTPUT)),
    "verbose": (
        int,
        *_opt(0, "--verbose", "-v", help="More detail (-vv: tracebacks on errors).", panel=PANEL_OUTPUT, count=True),
    ),
    "config": (
        Optional[Path],
        *_opt(None, "--config", help="TOML file of option values; command-line flags win.", panel=PANEL_OUTPUT),
    ),
}


def _load_config(path: Path, command: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: invalid TOML ({exc})") from None
    top = {k.replace("-", "_"): v for k, v in data.items() if not isinstance(v, dict)}
    section = data.get(command, {})
    if not isinstance(section, dict):
        raise InputError(f"{path}: [{command}] must be a table")
    own = {k.replace("-", "_"): v for k, v in section.items()}
    return {"top": top, "own": own}


def _apply_config(kwargs: dict, command: str) -> dict:
    import click

    config_path = kwargs.get("config")
    if config_path is None:
        return kwargs
    ctx = click.get_current_context()
    loaded = _load_config(Path(config_path), command)
    params = {p.name: p for p in ctx.command.params}
    unknown = sorted(set(loaded["own"]) - set(params))
    if unknown:
        raise InputError(f"{config_path}: [{command}] has unknown option(s): {', '.join(unknown)}")
    merged = {**{k: v for k, v in loaded["top"].items() if k in params}, **loaded["own"]}
    for name, value in merged.items():
        source = ctx.get_parameter_source(name)
        if source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT"):
            continue  # command-line flags win
        try:
            kwargs[name] = params[name].type_cast_value(ctx, value)
        except click.BadParameter as exc:
            raise InputError(f"{config_path}: option {name!r}: {exc.message}") from None
    return kwargs


def _report_error(message: str) -> None:
    """One plain line on stderr: greppable, no markup, no traceback."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()


def ucan_command(*, model: bool = True):
    """Decorate a Typer command function that takes ``rt: RuntimeOptions`` as its last argument.

    ``model=False`` leaves out the options that only matter when a model runs (device, dtype,
    batch size, max samples, max length).
    """

    specs = {**(_MODEL_RUNTIME if model else {}), **_COMMON_RUNTIME}

    def decorate(fn):
        signature = inspect.signature(fn)
        params = [p for p in signature.parameters.values() if p.name != "rt"]
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[ann, option])
            for name, (ann, default, option) in specs.items()
        ]
        command_name = fn.__name__.rstrip("_").replace("_", "-")

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            verbose = kwargs.get("verbose", 0)
            try:
                kwargs = _apply_config(kwargs, command_name)
                rt = RuntimeOptions(**{name: kwargs.pop(name) for name in specs})
                return fn(*args, rt=rt, **kwargs)
            except typer.Exit:
                raise
            except UcanError as exc:
                if verbose >= 2:
                    traceback.print_exc()
                _report_error(exc.message)
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt:
                sys.stderr.write("interrupted; nothing was written\n")
                raise typer.Exit(130) from None
            except Exception as exc:  # anything unexpected is a runtime failure, one line unless -vv
                if verbose >= 2:
                    traceback.print_exc()
                first = str(exc).splitlines()[0] if str(exc) else ""
                _report_error(f"{type(exc).__name__}: {first} (rerun with -vv for the traceback)")
                raise typer.Exit(EXIT_RUNTIME) from None

        wrapper.__signature__ = signature.replace(parameters=params + extra)
        return wrapper

    return decorate


def parse_int_list(text: str, option: str) -> list[int]:
    """``"1,5,10"`` -> [1, 5, 10]; every item a positive integer, else exit 2 naming the option."""
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            value = int(part)
        except ValueError:
            raise InputError(f"{option}: {part!r} is not an integer") from None
        if value <= 0:
            raise InputError(f"{option}: {value} must be a positive integer")
        out.append(value)
    if not out:
        raise InputError(f"{option}: no value given")
    return out


__all__ = [
    "EXIT_INPUT",
    "PANEL_DATA",
    "PANEL_METHOD",
    "PANEL_MODEL",
    "PANEL_OUTPUT",
    "PANEL_PERF",
    "RuntimeOptions",
    "parse_int_list",
    "ucan_command",
]
