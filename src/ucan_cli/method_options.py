"""The U-CAN method options, defined once for ``ucan score`` and ``ucan attenuate``.

Each option is an ``Annotated`` type to use as a command parameter with default ``None``:
``None`` means "not given", so a command can fill it from somewhere else before the documented
default applies (``attenuate --scores`` takes the parameters stored in the score file; a
``--config`` TOML fills it through ``@ucan_command``). ``params_from_options`` does that merge
and returns a validated ``MethodParams``.

Usage in a command::

    def score(..., unit: UnitOpt = None, lam: LambdaOpt = None, ..., *, rt: RuntimeOptions):
        params = params_from_options(unit=unit, lam=lam, ...)

This module imports only Typer (command modules must stay light for ``ucan --help``).
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer

from ucan_cli.options import PANEL_METHOD

if TYPE_CHECKING:
    from ucan_cli.methods.ucan.scoring import MethodParams

#: Documented defaults (the values of ``scoring.MethodParams``; a test keeps them in step). Tuned on
#: the demo world (benchmarks/sweep.py; evidence in docs/method.md, "Tuned defaults (evidence)").
DEFAULTS: dict[str, Any] = {
    "unit": "output",
    "token_scope": "response",
    "halves": "auto",
    "lam": 0.5,
    "t_risk": 3.0,
    "min_gap": 0.05,
    "ratio": 0.1,
    "tau": None,
    "decay": "exp",
    "sharpness": 4.0,
    "floor": 0.0,
    "no_contrast": False,
    "no_utility": False,
}
TOKEN_SCOPES = ("response", "last", "all")


def _method(*names: str, help: str, **kw) -> Any:
    """A Method-panel option with no shown default (the help text states it)."""
    return typer.Option(*names, help=help, rich_help_panel=PANEL_METHOD, show_default=False, **kw)


UnitOpt = Annotated[
    Optional[str],
    _method("--unit", help="Unit to score and edit: output (one output neuron of B A; default) or rank (one LoRA bottleneck neuron)."),
]
TokenScopeOpt = Annotated[
    Optional[str],
    _method(
        "--token-scope",
        help="Positions whose activations count: response (predicting response tokens; default), last (last prompt position) or all.",
    ),
]
HalvesOpt = Annotated[
    Optional[str],
    _method(
        "--halves",
        help="How the retain set splits into the two halves of the noise reference: users (each user's records in one "
        "half, like forget and retain), records, or auto (users when every record has a user_id; default).",
    ),
]
LambdaOpt = Annotated[
    Optional[float],
    _method("--lambda", help="Utility weight: S = Rh - lambda * Uh (default 0.5).", min=0.0),
]
TRiskOpt = Annotated[
    Optional[float],
    _method("--t-risk", help="Noise gate: R must reach t_risk x sigma0, the spread between retain halves (default 3).", min=0.0),
]
MinGapOpt = Annotated[
    Optional[float],
    _method("--min-gap", help="R must reach log(1 + min_gap): forget activation at least this much above retain (default 0.05).", min=0.0),
]
RatioOpt = Annotated[
    Optional[float],
    _method("--ratio", help="Budget: at most ceil(ratio x live units) units at s <= (1+floor)/2 (default 0.1). Excludes --tau."),
]
TauOpt = Annotated[
    Optional[float],
    _method("--tau", help="Threshold on S instead of a budget: every eligible unit with S >= tau. Excludes --ratio."),
]
DecayOpt = Annotated[
    Optional[str],
    _method("--decay", help="Soft attenuation: exp (default), sigmoid, or hard (ablation w/o H: s = floor for the selected units)."),
]
SharpnessOpt = Annotated[
    Optional[float],
    _method("--sharpness", help="gamma of the decay (default 4).", min=0.0),
]
FloorOpt = Annotated[
    Optional[float],
    _method("--floor", help="Smallest factor, in [0, 1) (default 0).", min=0.0),
]
NoContrastOpt = Annotated[
    Optional[bool],
    _method("--no-contrast/--contrast", help="Ablation w/o C: risk from forget activations alone (eligibility Rh >= 1)."),
]
NoUtilityOpt = Annotated[
    Optional[bool],
    _method("--no-utility/--utility", help="Ablation w/o F: lambda = 0."),
]


def params_from_options(
    base: MethodParams | None = None,
    *,
    unit: str | None = None,
    lam: float | None = None,
    t_risk: float | None = None,
    min_gap: float | None = None,
    ratio: float | None = None,
    tau: float | None = None,
    decay: str | None = None,
    sharpness: float | None = None,
    floor: float | None = None,
    no_contrast: bool | None = None,
    no_utility: bool | None = None,
) -> MethodParams:
    """Merge the given options (not None) over ``base`` (default: ``MethodParams()``), validated.

    ``--ratio`` and ``--tau`` exclude each other: giving both is an ``InputError``; giving one
    clears the other, so ``--tau`` overrides a base that had a ratio and vice versa.
    """
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.scoring import MethodParams

    if ratio is not None and tau is not None:
        raise InputError("--ratio and --tau are mutually exclusive; give one of them")
    params = base if base is not None else MethodParams()
    given = {
        "unit": unit, "lam": lam, "t_risk": t_risk, "min_gap": min_gap, "decay": decay,
        "sharpness": sharpness, "floor": floor, "no_contrast": no_contrast, "no_utility": no_utility,
    }
    changes = {k: v for k, v in given.items() if v is not None}
    if ratio is not None:
        changes.update(ratio=ratio, tau=None)
    if tau is not None:
        changes.update(tau=tau, ratio=None)
    return replace(params, **changes).validate()


def resolve_token_scope(token_scope: str | None, fallback: str | None = None) -> str:
    """The token scope: the option, else ``fallback`` (a score file's), else ``response``."""
    from ucan_cli.errors import InputError

    scope = token_scope or fallback or DEFAULTS["token_scope"]
    if scope not in TOKEN_SCOPES:
        raise InputError(f"--token-scope must be one of {', '.join(TOKEN_SCOPES)}, got {scope!r}")
    return scope


def params_to_dict(params: MethodParams) -> dict[str, Any]:
    """JSON/TOML-friendly view of the parameters, keyed by dataclass field name."""
    return {f.name: getattr(params, f.name) for f in fields(params)}


def params_from_dict(data: dict[str, Any]) -> MethodParams:
    """Inverse of ``params_to_dict`` (unknown keys are an ``InputError``): for score-file metadata."""
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.scoring import MethodParams

    names = {f.name for f in fields(MethodParams)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise InputError(f"unknown method parameter(s) {', '.join(unknown)}")
    return MethodParams(**data).validate()
