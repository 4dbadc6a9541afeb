"""Options shared by every command, defined once, and the wrapper that applies them.

``@ucan_command`` appends the global options (SPEC section 6) to a Typer command, in their help
panels, generates the method options from the parameter dataclasses of
``ucan_cli.methods.ucan.params`` where the command puts a ``MethodOptions`` parameter, merges
``--config FILE.toml`` (``ucan_cli.config`` reads it; command-line flags win), packs the global
options into a frozen ``RuntimeOptions`` passed as ``rt``, and maps ``UcanError`` exceptions to
a one-line message on stderr and their exit code. Commands therefore never repeat option
definitions or error handling.
"""

from __future__ import annotations

import functools
import inspect
import os
import sys
import traceback
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Optional

import typer

from ucan_cli.config import convert, load_config
from ucan_cli.errors import EXIT_INPUT, EXIT_RUNTIME, InputError, UcanError
from ucan_cli.methods.params import PANEL_METHOD
from ucan_cli.methods.ucan.params import ATTENUATE_ONLY, EXCLUSIVE, option_fields, spec

PANEL_MODEL = "Model"
PANEL_DATA = "Data"
PANEL_OUTPUT = "Output"
PANEL_PERF = "Performance"
CONTEXT_PARAM = "ucan_context"
#: Options that exclude each other: one given on the command line drops the other from --config.
EXCLUSIVE_OPTIONS = EXCLUSIVE


@dataclass(frozen=True)
class RuntimeOptions:
    """The global options every command receives as ``rt``."""

    device: str = "auto"
    dtype: str = "auto"
    batch_size: int | str = 16  # an int, or "auto" (ucan_cli.runtime.batching)
    max_batch_tokens: Optional[int] = None
    max_samples: Optional[int] = None
    max_length: Optional[int] = None
    device_map: Optional[str] = None
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    seed: int = 0
    json: bool = False
    quiet: bool = False
    verbose: int = 0
    config: Optional[Path] = None
    rank: int = 0  # this process's rank under torchrun / accelerate launch (runtime/distributed.py)

    @property
    def main(self) -> bool:
        """True on the process that writes and prints: the only one, or rank 0 under a launcher."""
        return self.rank == 0

    @property
    def load(self):
        """The one load spec every flow takes (``runtime/load.py``): ``--device``, ``--dtype``,
        ``--device-map``, ``--load-in-4bit`` / ``--load-in-8bit``."""
        from ucan_cli.runtime.load import LoadSpec

        return LoadSpec.from_flags(device=self.device, dtype=self.dtype, device_map=self.device_map,
                                   load_in_4bit=self.load_in_4bit, load_in_8bit=self.load_in_8bit)


def _opt(default, *names, help: str, panel: str, **kw):
    return default, typer.Option(*names, help=help, rich_help_panel=panel, **kw)


def _parse_batch_size(value: str):
    """--batch-size on the command line: a positive int or auto (a bad value: one line, exit 2)."""
    from ucan_cli.runtime.batching import parse_batch_size

    try:
        return parse_batch_size(value)
    except InputError as exc:
        raise typer.BadParameter(exc.message.removeprefix("--batch-size ")) from None


#: name -> (annotation, default, typer.Option); "model" options only on commands that run a model.
_MODEL_RUNTIME = {
    "device": (str, *_opt("auto", "--device", help="cpu, cuda, cuda:N or auto (cuda when available).", panel=PANEL_PERF)),
    "dtype": (
        str,
        *_opt("auto", "--dtype", help="float32, bfloat16, float16 or auto (float32 on CPU, bf16 on CUDA).", panel=PANEL_PERF),
    ),
    "batch_size": (
        str,
        *_opt(
            "16", "--batch-size", panel=PANEL_PERF, callback=_parse_batch_size, metavar="N|auto",
            help="Records per forward pass, or auto: the largest that fits (starts at 64 on CUDA, 16 on CPU; halves on out-of-memory).",
        ),
    ),
    "max_batch_tokens": (
        Optional[int],
        *_opt(
            None, "--max-batch-tokens", panel=PANEL_PERF, min=1,
            help="Padded tokens per batch at most (rows x longest row): cuts batches of long prompts.",
        ),
    ),
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
    "device_map": (
        Optional[str],
        *_opt(None, "--device-map", help="auto, balanced or sequential: spread the base over every GPU (accelerate).",
              panel=PANEL_PERF),
    ),
    "load_in_4bit": (
        bool,
        *_opt(False, "--load-in-4bit", help="Load the base in 4-bit NF4 (QLoRA's setting; CUDA and the ucan-cli[quant] extra).",
              panel=PANEL_PERF),
    ),
    "load_in_8bit": (
        bool,
        *_opt(False, "--load-in-8bit", help="Load the base in 8-bit (LLM.int8; CUDA and the ucan-cli[quant] extra).",
              panel=PANEL_PERF),
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


# Options that several commands take (not every command, so not in RuntimeOptions): one
# definition each, used as ``allow_pickle: AllowPickleOpt = False``.
AllowPickleOpt = Annotated[
    bool, typer.Option("--allow-pickle", help="Allow pickle weights (.bin), which can run code.", rich_help_panel=PANEL_MODEL)
]
TrustRemoteCodeOpt = Annotated[
    bool, typer.Option("--trust-remote-code", help="Allow the base model's own Python code.", rich_help_panel=PANEL_MODEL)
]
CacheDirOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--cache-dir", help="Statistics cache: reuse the forward pass of an earlier run on the same inputs and options. "
        "Default: stats/ under the user cache dir ($UCAN_CACHE_DIR, else e.g. ~/.cache/ucan).",
        rich_help_panel=PANEL_PERF,
    ),
]
NoCacheOpt = Annotated[
    bool, typer.Option("--no-cache", help="Neither read nor write the statistics cache.", rich_help_panel=PANEL_PERF)
]
TemplateOpt = Annotated[
    str,
    typer.Option(
        "--template", help="Prompt template: alpaca, plain, chat or a Jinja2 file (the one used in training).",
        rich_help_panel=PANEL_DATA,
    ),
]
AllowOverlapOpt = Annotated[
    bool, typer.Option("--allow-overlap", help="Allow the same id or user_id in forget and retain.", rich_help_panel=PANEL_DATA)
]
RetainMaxSamplesOpt = Annotated[
    Optional[int],
    typer.Option("--retain-max-samples", help="Use at most N retain records (a seeded sample).", rich_help_panel=PANEL_DATA, min=1),
]
ReceiptKeyOpt = Annotated[
    Optional[Path],
    typer.Option(
        "--receipt-key",
        help="HMAC key file for record receipts in outputs (default: ~/.config/ucan/receipt.key, created 0600 on first use).",
        rich_help_panel=PANEL_DATA,
    ),
]


@dataclass(frozen=True)
class OptionGroup:
    """Marks a command parameter that ``@ucan_command`` replaces, in place, with one option per
    option field of a method family: ``ucan`` (U-CAN's, ``methods.ucan.params``; ``names`` picks a
    subset) or ``gradient`` (``methods.gradient.params.PARAMS``: every option of ga, graddiff, npo,
    retrain and negate once, each in its field's panel).
    The command receives the parameter as a dict of field name -> value, None where the option was
    not given."""

    names: tuple[str, ...] | None = None
    family: str = "ucan"


def method_options(*names: str):
    """The annotation of a parameter that stands for the U-CAN options ``names`` (default: all)."""
    return Annotated[dict, OptionGroup(names or None)]


#: Every U-CAN option (``attenuate``): ``method: MethodOptions = None``.
MethodOptions = method_options()
#: The U-CAN options of ``score``: all but those that choose an edit by measuring it (``--retain-kl``).
ScoreMethodOptions = method_options(*(f.name for f in option_fields() if f.name not in ATTENUATE_ONLY))
#: Every option of the gradient family (``attenuate``): ``gradient: GradientOptions = None``.
GradientOptions = Annotated[dict, OptionGroup(None, "gradient")]


def _family_fields(group: OptionGroup) -> tuple[list[tuple[object, str]], dict[str, type]]:
    """(field, help text) of every option of the group's family in CLI order, and field name ->
    its type without None (``float`` for ``float | None``)."""
    if group.family == "gradient":
        from ucan_cli.methods.gradient.params import PARAMS, option_fields as gradient_fields, option_help

        chosen = [(f, option_help(f)) for f in gradient_fields()]
        owners = list(PARAMS.values())
    else:
        from ucan_cli.methods.ucan.params import MethodParams, StatisticsOptions

        picked = [f for f in option_fields() if group.names is None or f.name in group.names]
        present = {f.name for f in picked}
        chosen = []
        for f in picked:
            opt = f.metadata["option"]
            chosen.append((f, opt.help + (f" Excludes {spec(opt.excludes).long}." if opt.excludes in present else "")))
        owners = [MethodParams, StatisticsOptions]
    types_ = {}
    for owner in owners:
        for name, hint in typing.get_type_hints(owner).items():
            args = [a for a in typing.get_args(hint) if a is not type(None)]
            types_.setdefault(name, args[0] if args else hint)
    return chosen, types_


def _group_parameters(group: OptionGroup, kind) -> list[inspect.Parameter]:
    """The generated parameters of ``group``: each ``Optional`` with default None ("not given"),
    flag, help, bounds and panel from the field's ``OptionSpec``; an exclusive partner present in
    the same command is named in the help."""
    chosen, types_ = _family_fields(group)
    out = []
    for f, text in chosen:
        opt = f.metadata["option"]
        bounds = {"min": opt.min} if opt.min is not None else {}
        info = typer.Option(opt.flag, help=text, rich_help_panel=opt.panel, show_default=False, **bounds)
        out.append(inspect.Parameter(f.name, kind, default=None, annotation=Annotated[Optional[types_[f.name]], info]))
    return out


def _expand_groups(params: list[inspect.Parameter]) -> tuple[list[inspect.Parameter], dict[str, list[str]]]:
    """Replace each ``OptionGroup`` parameter by its generated options; also return group -> names."""
    expanded, groups = [], {}
    for p in params:
        marks = [m for m in typing.get_args(p.annotation)[1:] if isinstance(m, OptionGroup)]
        if typing.get_origin(p.annotation) is Annotated and marks:
            generated = _group_parameters(marks[0], p.kind)
            groups[p.name] = [g.name for g in generated]
            expanded += generated
        else:
            expanded.append(p)
    return expanded, groups


def _option_names(annotations: dict) -> dict[str, str]:
    """Config key -> parameter name: each long option name (``lambda`` for ``--lambda``) and the
    parameter's own name (``lam``), with underscores for dashes."""
    names = {name: name for name in annotations}
    for name, annotation in annotations.items():
        for meta in typing.get_args(annotation)[1:] if typing.get_origin(annotation) is Annotated else ():
            # Under Annotated, Typer keeps the first flag in ``default`` and the rest in ``param_decls``.
            first = getattr(meta, "default", None)
            decls = [first] if isinstance(first, str) else []
            for decl in [*decls, *(getattr(meta, "param_decls", None) or ())]:
                flag = str(decl).split("/")[0]  # "--no-contrast/--contrast": the declared sense only
                if flag.startswith("--"):
                    names.setdefault(flag[2:].replace("-", "_"), name)
    return names


def _apply_config(kwargs: dict, ctx, annotations: dict, command: str) -> dict:
    """Fill options not given on the command line from ``--config`` (top-level keys, then [command])."""
    config_path = kwargs.get("config")
    if config_path is None:
        return kwargs
    loaded = load_config(Path(config_path), command)
    aliases = _option_names(annotations)
    loaded = {part: {aliases.get(k, k): v for k, v in values.items()} for part, values in loaded.items()}
    unknown = sorted(set(loaded["own"]) - set(annotations))
    if unknown:
        raise InputError(f"{config_path}: [{command}] has unknown option(s): {', '.join(unknown)}")
    merged = {**{k: v for k, v in loaded["top"].items() if k in annotations}, **loaded["own"]}

    def from_command_line(name: str) -> bool:
        source = ctx.get_parameter_source(name) if ctx is not None else None
        return source is not None and source.name in ("COMMANDLINE", "ENVIRONMENT")

    for name, value in merged.items():
        if from_command_line(name):
            continue  # command-line flags win
        if any(from_command_line(other) for pair in EXCLUSIVE_OPTIONS if name in pair for other in pair if other != name):
            continue  # the command line chose the other one of an exclusive pair (--tau over a config's ratio)
        if name == "batch_size":  # an int or "auto": no single annotation converts both
            from ucan_cli.runtime.batching import parse_batch_size

            kwargs[name] = parse_batch_size(value, source=f"{config_path}: option 'batch_size'")
            continue
        kwargs[name] = convert(value, annotations[name], name, Path(config_path))
    return kwargs


def _report_error(message: str, rank: int = 0) -> None:
    """One plain line on stderr: greppable, no markup, no traceback (prefixed ``rank N:`` on the
    other ranks of a launcher, so a failure of one rank alone is seen too)."""
    sys.stderr.write(f"{f'rank {rank}: ' if rank else ''}error: {message}\n")
    sys.stderr.flush()


def _rank() -> int:
    from ucan_cli.runtime.distributed import launched

    return int(os.environ.get("RANK", 0) or 0) if launched() > 1 else 0


def _join_ranks(rt: RuntimeOptions, command: str, model: bool) -> RuntimeOptions:
    """Under torchrun / accelerate launch, join the process group (``runtime/distributed.py``):
    the rank goes into ``rt`` (only rank 0 writes and prints) and, on NCCL, each rank's
    ``--device cuda`` / ``auto`` becomes its own GPU. Without a launcher ``rt`` is returned as is."""
    from ucan_cli.runtime.distributed import init_from_env, launched

    if launched() <= 1:
        return rt
    import dataclasses

    ranks = init_from_env(command, device=rt.device if model else "cpu", device_map=rt.device_map if model else None)
    changes = {"rank": ranks.rank}
    if ranks.backend == "nccl" and rt.device in ("auto", "cuda"):
        changes["device"] = f"cuda:{ranks.local_rank}"
    return dataclasses.replace(rt, **changes)


def ucan_command(*, model: bool = True):
    """Decorate a Typer command function that takes ``rt: RuntimeOptions`` as its last argument.

    A parameter annotated ``MethodOptions`` (or ``method_options(NAME, ...)``) becomes the U-CAN
    options, generated from ``methods.ucan.params``, at its place in the signature (so in the
    help); the command receives their values as one dict. ``model=False`` leaves out the options that only matter when a model runs (device, dtype,
    batch size, max samples, max length).
    """

    specs = {**(_MODEL_RUNTIME if model else {}), **_COMMON_RUNTIME}

    def decorate(fn):
        signature = inspect.signature(fn)
        # Resolve string annotations (``from __future__ import annotations``) so Typer sees the
        # Annotated option metadata of the command's own parameters.
        hints = typing.get_type_hints(fn, include_extras=True)
        params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values() if p.name != "rt"]
        params, groups = _expand_groups(params)
        extra = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[ann, option])
            for name, (ann, default, option) in specs.items()
        ]
        command_name = fn.__name__.rstrip("_").replace("_", "-")

        annotations = {p.name: p.annotation for p in params + extra}
        context_param = inspect.Parameter(CONTEXT_PARAM, inspect.Parameter.KEYWORD_ONLY, annotation=typer.Context)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            ctx = kwargs.pop(CONTEXT_PARAM, None)
            verbose = kwargs.get("verbose", 0)
            try:
                kwargs = _apply_config(kwargs, ctx, annotations, command_name)
                rt = RuntimeOptions(**{name: kwargs.pop(name) for name in specs})
                if model:
                    rt.load  # noqa: B018 - exit 2 now for a combination of load flags no flow can honour
                rt = _join_ranks(rt, command_name, model)
                for group, names in groups.items():
                    kwargs[group] = {name: kwargs.pop(name) for name in names}
                from ucan_cli.io.outdir import reading  # here, not at import: ucan --help stays light

                with reading(rt.config):  # no output may overlap the --config file
                    result = fn(*args, rt=rt, **kwargs)
                from ucan_cli.runtime.distributed import shutdown

                shutdown()
                return result
            except typer.Exit:
                raise
            except UcanError as exc:
                if verbose >= 2:
                    traceback.print_exc()
                _report_error(exc.message, _rank())
                raise typer.Exit(exc.exit_code) from None
            except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (errors.Terminated): outputs were cleaned up
                signum = getattr(exc, "signum", 2)
                sys.stderr.write(f"interrupted ({'SIGTERM' if signum == 15 else 'SIGINT'}); no output was left half-written\n")
                raise typer.Exit(128 + signum) from None
            except Exception as exc:  # anything unexpected is a runtime failure, one line unless -vv
                if verbose >= 2:
                    traceback.print_exc()
                first = str(exc).splitlines()[0] if str(exc) else ""
                _report_error(f"{type(exc).__name__}: {first} (rerun with -vv for the traceback)", _rank())
                raise typer.Exit(EXIT_RUNTIME) from None

        wrapper.__signature__ = signature.replace(parameters=params + extra + [context_param], return_annotation=None)
        wrapper.__annotations__ = {**annotations, CONTEXT_PARAM: typer.Context}
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
    "AllowOverlapOpt",
    "AllowPickleOpt",
    "EXIT_INPUT",
    "GradientOptions",
    "MethodOptions",
    "PANEL_DATA",
    "PANEL_METHOD",
    "PANEL_MODEL",
    "PANEL_OUTPUT",
    "PANEL_PERF",
    "ReceiptKeyOpt",
    "RetainMaxSamplesOpt",
    "RuntimeOptions",
    "TemplateOpt",
    "TrustRemoteCodeOpt",
    "CacheDirOpt",
    "NoCacheOpt",
    "method_options",
    "parse_int_list",
    "ucan_command",
]
