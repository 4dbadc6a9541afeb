"""U-CAN's parameters, declared once: each field carries how it appears outside Python.

``MethodParams`` holds the eleven parameters of steps 2-5 (SPEC section 3); ``StatisticsOptions``
the two choices of step 1 that are not part of ``MethodParams`` (token scope, retain halves).
Every field's ``metadata["option"]`` is an ``OptionSpec`` (``ucan_cli.methods.params``): the command-line flag, the help text,
the lower bound, the choices, the help panel, the option it excludes, and whether it decides the
step-1 statistics. Everything else is derived from these declarations:

* the Typer options of ``score``, ``attenuate`` and ``demo`` (``ucan_cli.options`` generates them);
* the ``--config`` keys (the long flag, ``lambda`` for ``--lambda``, and the field name);
* ``DEFAULTS``, the report's and the ledger's ``options`` (``params_to_dict``), the method part
  of ``ucan_config.toml`` (``option_values``) and the flag spelling of the equivalent command line
  (``FLAGS``).

``option_fields()`` gives the order the CLI shows them and ``ucan_config.toml`` writes them: the
options that decide the statistics first (a score file fixes them), then the ones that turn
statistics into factors, each group in declaration order.

The field order of ``MethodParams`` is part of the score-file format (its ``params`` metadata is
``dataclasses.asdict``): never reorder it. This module imports neither NumPy nor Typer (command
modules import it to build ``ucan --help``).
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, fields, replace
from typing import Any

from ucan_cli.errors import InputError
from ucan_cli.methods.params import OptionSpec, option

DECAYS = ("sigmoid", "exp", "hard")
UNITS = ("output", "rank", "direction")
GATES = ("noise", "none")
#: Options of direction units only (SPEC 3b); the documents of other units do not carry them.
DIRECTION_ONLY = ("gate", "strength", "shrinkage", "max_memory", "retain_kl", "keep_retain")
#: Options that choose an edit by measuring it: ``attenuate`` takes them, ``score`` does not.
ATTENUATE_ONLY = ("retain_kl", "keep_retain")
#: U-CAN's steps 2-5 options, which direction units do not use (their documents do not carry them).
UNIT_SCORING_ONLY = ("lam", "t_risk", "min_gap", "ratio", "tau", "decay", "sharpness", "floor", "no_contrast", "no_utility")
TOKEN_SCOPES = ("response", "last", "all")


@dataclass(frozen=True)
class MethodParams:
    """The method options of SPEC section 3 (CLI names in each field's ``OptionSpec``).

    Attributes:
        lam: utility weight lambda in S = Rh - lambda * Uh (``--lambda``).
        t_risk: R must reach t_risk * sigma0 (``--t-risk``).
        min_gap: R must reach log(1 + min_gap) (``--min-gap``).
        ratio: budget share of live units, k = ceil(ratio * N_live) (``--ratio``). Must be
            ``None`` when ``tau`` is given: the two are mutually exclusive, so a CLI that
            defaults ``--ratio`` passes ``ratio=None`` whenever ``--tau`` is set.
        tau: score threshold; selects every eligible unit with S >= tau (``--tau``).
        decay: ``exp`` (default), ``sigmoid`` or ``hard`` (``--decay``).
        sharpness: gamma of the decay (``--sharpness``).
        floor: smallest factor, in [0, 1) (``--floor``).
        no_contrast: ablation w/o C (``--no-contrast``).
        no_utility: ablation w/o F, lambda = 0 (``--no-utility``).
        unit: ``output`` (default), ``rank`` or ``direction`` (``--unit``; SPEC 3b).
        gate, strength, shrinkage, max_memory: direction units only (SPEC 3b): the noise gate
            (``noise`` or ``none``), mu, the ridge alpha (delta = alpha trace(S^r) / d_in) and
            the GiB of second moments held at once. Declared last: the field order is part of the
            score-file format.
        retain_kl: direction units only: choose the strength by measurement, the largest of
            ``strength``, ``strength / 2``, ... ``strength / 2^7`` (then two bisections towards the
            next larger) whose edit keeps the retain set's KL from the original (as ``ucan eval``
            reports it) within this many nats (``--retain-kl``; ``ucan_cli.flows.strength``).
            None: ``strength`` as given.
        keep_retain: direction units only: the same search, with the limit on utility instead:
            the edit must keep the retain set's NDCG@10 at least this share of the original's
            (``--keep-retain``; excludes ``retain_kl``). None: not used.

    Defaults were tuned on the demo world (benchmarks/sweep.py; evidence in docs/method.md,
    "Tuned defaults (evidence)").
    """

    lam: float = option(0.5, "--lambda", "Utility weight: S = Rh - lambda * Uh (default 0.5).", min=0.0)
    t_risk: float = option(
        3.0, "--t-risk", "Noise gate: R must reach t_risk x sigma0, the spread between retain halves (default 3).", min=0.0
    )
    min_gap: float = option(
        0.05, "--min-gap", "R must reach log(1 + min_gap): forget activation at least this much above retain (default 0.05).",
        min=0.0,
    )
    ratio: float | None = option(
        0.1, "--ratio", "Budget: at most ceil(ratio x live units) units at s <= (1+floor)/2 (default 0.1).", excludes="tau"
    )
    tau: float | None = option(
        None, "--tau", "Threshold on S instead of a budget: every eligible unit with S >= tau.", excludes="ratio"
    )
    decay: str = option(
        "exp", "--decay", "Soft attenuation: exp (default), sigmoid, or hard (ablation w/o H: s = floor for the selected units).",
        choices=DECAYS,
    )
    sharpness: float = option(4.0, "--sharpness", "gamma of the decay (default 4).", min=0.0)
    floor: float = option(0.0, "--floor", "Smallest factor, in [0, 1) (default 0).", min=0.0)
    no_contrast: bool = option(
        False, "--no-contrast/--contrast", "Ablation w/o C: risk from forget activations alone (eligibility Rh >= 1)."
    )
    no_utility: bool = option(False, "--no-utility/--utility", "Ablation w/o F: lambda = 0.")
    unit: str = option(
        "output", "--unit",
        "Unit to score and edit: output (one output neuron of B A; default), rank (one LoRA bottleneck neuron) or "
        "direction (input directions where the forget set has more energy than the retain set; edits A; SPEC 3b).",
        choices=UNITS, statistics=True,
    )
    gate: str = option(
        "noise", "--gate",
        "Direction units: noise (default: only the forget energy above the retain-half-vs-half level lambda0 is "
        "removed) or none (the closed form A (S_r + delta I)(S_r + mu S_f + delta I)^-1).",
        choices=GATES,
    )
    strength: float = option(
        1.0, "--strength", "Direction units: mu, how hard forget energy is removed, s = 1 / (1 + mu lambda) (default 1).",
        min=0.0,
    )
    shrinkage: float = option(
        1e-6, "--shrinkage", "Direction units: ridge delta = shrinkage x trace(S_r) / d_in added to S_r (default 1e-6).",
        min=0.0,
    )
    max_memory: float = option(
        4.0, "--max-memory",
        "Direction units: GiB of float64 second moments (4 x d_in^2 x 8 bytes per module) held at once; wider "
        "adapters are measured a group of modules at a time, one pass per group (default 4).",
        min=0.0,
    )
    retain_kl: float | None = option(
        None, "--retain-kl",
        "Direction units: choose the strength by measurement: of --strength, --strength/2, ..., --strength/128 the "
        "largest whose edit moves the retain set by at most this retain KL (nats, as `ucan eval` reports it), then two "
        "bisections towards the next larger. attenuate only; needs --base, --forget and --retain (also with --scores); "
        "costs one forward pass over forget + retain per candidate. Off by default (--strength as given).",
        min=0.0, excludes="keep_retain",
    )
    keep_retain: float | None = option(
        None, "--keep-retain",
        "Direction units: the same search as --retain-kl with a limit on utility instead: the largest strength whose "
        "edit keeps the retain set's NDCG@10 at least this share of the original's (e.g. 0.95; the retain records "
        "need candidates). attenuate only; excludes --retain-kl. Off by default.",
        min=0.0, excludes="retain_kl",
    )

    def validate(self) -> MethodParams:
        """Raise ``InputError`` naming the option when a value is out of range; return self."""
        import numpy as np

        def finite(x: float) -> bool:
            return isinstance(x, (int, float, np.floating, np.integer)) and math.isfinite(x)

        if not (finite(self.lam) and self.lam >= 0):
            raise InputError(f"--lambda must be a finite number >= 0, got {self.lam}")
        if not (finite(self.t_risk) and self.t_risk >= 0):
            raise InputError(f"--t-risk must be a finite number >= 0, got {self.t_risk}")
        if not (finite(self.min_gap) and self.min_gap >= 0):
            raise InputError(f"--min-gap must be a finite number >= 0, got {self.min_gap}")
        if self.ratio is not None and self.tau is not None:
            raise InputError("--ratio and --tau are mutually exclusive; give one of them")
        if self.ratio is None and self.tau is None:
            raise InputError("one of --ratio or --tau is required")
        if self.ratio is not None and not (finite(self.ratio) and 0 < self.ratio <= 1):
            raise InputError(f"--ratio must be in (0, 1], got {self.ratio}")
        if self.tau is not None and not finite(self.tau):
            raise InputError(f"--tau must be a finite number, got {self.tau}")
        if self.decay not in DECAYS:
            raise InputError(f"--decay must be one of {', '.join(DECAYS)}, got {self.decay!r}")
        if not (finite(self.sharpness) and self.sharpness > 0):
            raise InputError(f"--sharpness must be a finite number > 0, got {self.sharpness}")
        if not (finite(self.floor) and 0 <= self.floor < 1):
            raise InputError(f"--floor must be in [0, 1), got {self.floor}")
        if self.unit not in UNITS:
            raise InputError(f"--unit must be one of {', '.join(UNITS)}, got {self.unit!r}")
        if self.gate not in GATES:
            raise InputError(f"--gate must be one of {', '.join(GATES)}, got {self.gate!r}")
        if not (finite(self.strength) and self.strength >= 0):
            raise InputError(f"--strength must be a finite number >= 0, got {self.strength}")
        if not (finite(self.shrinkage) and self.shrinkage >= 0):
            raise InputError(f"--shrinkage must be a finite number >= 0, got {self.shrinkage}")
        if not (finite(self.max_memory) and self.max_memory > 0):
            raise InputError(f"--max-memory must be a finite number of GiB > 0, got {self.max_memory}")
        if self.retain_kl is not None and not (finite(self.retain_kl) and self.retain_kl > 0):
            raise InputError(f"--retain-kl must be a finite number of nats > 0, got {self.retain_kl}")
        if self.retain_kl is not None and self.keep_retain is not None:
            raise InputError("--retain-kl and --keep-retain are mutually exclusive; give one of them")
        if self.keep_retain is not None and not (finite(self.keep_retain) and 0 < self.keep_retain <= 1):
            raise InputError(f"--keep-retain must be a share in (0, 1] of the original's retain NDCG@10, got {self.keep_retain}")
        for value, flag in ((self.retain_kl, "--retain-kl"), (self.keep_retain, "--keep-retain")):
            if value is not None and not self.strength > 0:
                raise InputError(f"{flag} searches strengths below --strength, which must then be > 0")
        return self

    @property
    def strength_search(self) -> str | None:
        """The flag of the option that has the strength measured (``--retain-kl`` or
        ``--keep-retain``), or None when ``strength`` is used as given."""
        from ucan_cli.methods.ucan.strength import Limit

        limit = Limit.of(self)
        return None if limit is None else limit.flag

    @property
    def effective_lambda(self) -> float:
        """lambda as used in the fusion: 0 under ``no_utility`` (w/o F)."""
        return 0.0 if self.no_utility else float(self.lam)


@dataclass(frozen=True)
class StatisticsOptions:
    """The step-1 choices that ``MethodParams`` does not hold (a score file fixes both)."""

    token_scope: str = option(
        "response", "--token-scope",
        "Positions whose activations count: response (predicting response tokens; default), last (last prompt position) or all.",
        choices=TOKEN_SCOPES, statistics=True,
    )
    halves: str = option(
        "auto", "--halves",
        "How the retain set splits into the two halves of the noise reference: users (each user's records in one "
        "half, like forget and retain), records, or auto (users when every record has a user_id; default).",
        statistics=True,
    )


def option_fields() -> list[Field]:
    """Every U-CAN option, in CLI order: those that decide the statistics first, then the rest."""
    declared = [*fields(MethodParams), *fields(StatisticsOptions)]
    return sorted(declared, key=lambda f: not f.metadata["option"].statistics)  # stable: declaration order within


def spec(name: str) -> OptionSpec:
    """The ``OptionSpec`` of the option named ``name`` (a field name)."""
    for f in option_fields():
        if f.name == name:
            return f.metadata["option"]
    raise KeyError(name)


#: Documented defaults of every option of the default unit kind, keyed by field name, in CLI order
#: (``MethodParams()``'s values plus ``token_scope`` and ``halves``).
DEFAULTS: dict[str, Any] = {f.name: f.default for f in option_fields() if f.name not in DIRECTION_ONLY}
#: The defaults of the direction-unit options (SPEC 3b).
DIRECTION_DEFAULTS: dict[str, Any] = {f.name: f.default for f in option_fields() if f.name in DIRECTION_ONLY}
#: Field name -> flag, where the flag is not ``--`` + the name with dashes (``lam``: ``--lambda``).
FLAGS: dict[str, str] = {
    f.name: f.metadata["option"].long for f in option_fields() if f.metadata["option"].long != "--" + f.name.replace("_", "-")
}
#: Options that exclude each other (one given on the command line drops the other from --config).
EXCLUSIVE: tuple[tuple[str, str], ...] = tuple(
    (f.name, f.metadata["option"].excludes) for f in fields(MethodParams)
    if f.metadata["option"].excludes and f.name < f.metadata["option"].excludes
)
_PARAM_NAMES = tuple(f.name for f in fields(MethodParams))


def params_from_options(base: MethodParams | None = None, **given: Any) -> MethodParams:
    """Merge the given options (keyword = field name; None = not given) over ``base`` (default:
    ``MethodParams()``), validated.

    ``--ratio`` and ``--tau`` exclude each other: giving both is an ``InputError``; giving one
    clears the other, so ``--tau`` overrides a base that had a ratio and vice versa.
    """
    unknown = sorted(set(given) - set(_PARAM_NAMES))
    if unknown:
        raise TypeError(f"params_from_options: unknown method option(s) {', '.join(unknown)}")
    changes = {k: v for k, v in given.items() if v is not None}
    for name, other in EXCLUSIVE:
        if name in changes and other in changes:
            raise InputError(f"{spec(name).long} and {spec(other).long} are mutually exclusive; give one of them")
    for name in list(changes):
        excluded = spec(name).excludes
        if excluded:
            changes[excluded] = None
    params = base if base is not None else MethodParams()
    params = replace(params, **changes).validate()
    if params.unit != "direction":
        stray = [name for name in DIRECTION_ONLY if name in changes]
        if stray:
            raise InputError(f"{spec(stray[0]).long}: an option of --unit direction (this run uses --unit {params.unit})")
    return params


def resolve_token_scope(token_scope: str | None, fallback: str | None = None) -> str:
    """The token scope: the option, else ``fallback`` (a score file's), else ``response``."""
    scope = token_scope or fallback or DEFAULTS["token_scope"]
    if scope not in TOKEN_SCOPES:
        raise InputError(f"--token-scope must be one of {', '.join(TOKEN_SCOPES)}, got {scope!r}")
    return scope


def params_to_dict(params: MethodParams) -> dict[str, Any]:
    """JSON/TOML-friendly view of the parameters, keyed by field name in field order (the report's
    and the ledger's ``options``): only those of the run's unit kind (output and rank units do not
    carry the direction options, direction units not the steps 2-5 ones)."""
    skip = UNIT_SCORING_ONLY if params.unit == "direction" else DIRECTION_ONLY
    return {f.name: getattr(params, f.name) for f in fields(params) if f.name not in skip}


def params_from_dict(data: dict[str, Any]) -> MethodParams:
    """Inverse of ``params_to_dict`` (unknown keys are an ``InputError``): for score-file metadata."""
    unknown = sorted(set(data) - set(_PARAM_NAMES))
    if unknown:
        raise InputError(f"unknown method parameter(s) {', '.join(unknown)}")
    return MethodParams(**data).validate()


def option_values(params: MethodParams, *, token_scope: str | None, halves: str | None) -> dict[str, Any]:
    """Every option's resolved value keyed by field name, in CLI order (``ucan_config.toml``)."""
    values = {**params_to_dict(params), "token_scope": token_scope, "halves": halves}
    return {f.name: values[f.name] for f in option_fields() if f.name in values}


__all__ = [
    "ATTENUATE_ONLY",
    "DECAYS",
    "DEFAULTS",
    "DIRECTION_DEFAULTS",
    "DIRECTION_ONLY",
    "GATES",
    "EXCLUSIVE",
    "FLAGS",
    "MethodParams",
    "OptionSpec",
    "StatisticsOptions",
    "TOKEN_SCOPES",
    "UNITS",
    "option",
    "option_fields",
    "option_values",
    "params_from_dict",
    "params_from_options",
    "params_to_dict",
    "resolve_token_scope",
    "spec",
]
