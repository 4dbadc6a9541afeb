"""The gradient family's parameters, declared once: one frozen dataclass per method, each field
with its ``OptionSpec`` (``ucan_cli.methods.params``).

``GAParams`` holds what every gradient method takes (learning rate, step budget, the ``--until``
target and how often it is checked); ``GradDiffParams`` adds the retain weight, ``NPOParams`` the
inverse temperature beta. A subclass redeclares a field to give it its own default. From these
declarations ``ucan_cli.options`` generates the "Gradient methods" panel of ``ucan attenuate``
(``option_fields``: every field of the family once, its help listing each method's default; the
``PARAMS`` of ``retrain`` and ``negate`` join in, so ``--lr`` is one flag with a default per
method and ``--epochs`` and ``--scale`` land in their own panels), and
the flow records ``params_to_dict`` in the report, the ledger and ``ucan_config.toml``.

``--until "forget.recall@5 <= 0.3"`` reuses the grammar of ``--fail-if``
(``ucan_cli.evaluation.gates``), here read as the condition that ends the run: the forget group's
``recall@K``, ``mrr@K``, ``ndcg@K`` or ``ppl``, an operator, and a number or ``X*original`` (the
input adapter's value, measured before the first step).

Defaults were measured on the seed-0 synthetic group world of ``ucan demo`` (docs/methods.md,
"Gradient methods: measured defaults"). No NumPy, torch or Typer here (``ucan --help`` reads it).
"""

from __future__ import annotations

import math
from dataclasses import Field, dataclass, fields, replace
from typing import Any

from ucan_cli.errors import InputError
from ucan_cli.methods.params import PANEL_GRADIENT, option
#: The metrics ``--until`` may name (all on the forget set).
UNTIL_AT_K = ("recall", "mrr", "ndcg")
UNTIL_PLAIN = ("ppl",)


def _opt(default: Any, flag: str, help: str, **spec: Any) -> Any:
    return option(default, flag, help, panel=PANEL_GRADIENT, **spec)


@dataclass(frozen=True)
class Target:
    """A parsed ``--until``: stop when ``metric OP factor * (original if anchored)`` holds."""

    text: str
    metric: str  # "recall@5", "ppl", ...
    op: str
    factor: float
    anchored: bool  # True: the threshold is factor x the input adapter's value

    def threshold(self, original: float | None) -> float:
        return self.factor * original if self.anchored else self.factor  # type: ignore[operator]

    def met(self, value: float, original: float | None) -> bool:
        from ucan_cli.evaluation.gates import OPERATORS

        return bool(math.isfinite(value) and OPERATORS[self.op](value, self.threshold(original)))


def parse_until(text: str) -> Target:
    """Parse ``--until`` with the ``--fail-if`` grammar; ``InputError`` naming it when malformed."""
    import re

    from ucan_cli.evaluation.gates import parse_gate

    k = re.search(r"@([0-9]+)", text)
    try:
        gate = parse_gate(text, ks=(int(k[1]),) if k and int(k[1]) > 0 else (1,), have_reference=False, have_holdout=False)
    except InputError as exc:
        raise InputError(exc.message.replace("--fail-if", "--until", 1)) from None
    stem = gate.metric.partition("@")[0]
    if gate.group != "forget" or (stem not in UNTIL_AT_K and gate.metric not in UNTIL_PLAIN):
        raise InputError(
            f"--until {text!r}: the target is checked on the forget set: use forget.recall@K, forget.mrr@K, "
            "forget.ndcg@K or forget.ppl"
        )
    return Target(text=gate.text, metric=gate.metric, op=gate.op, factor=gate.factor, anchored=gate.anchor == "original")


@dataclass(frozen=True)
class GAParams:
    """Gradient ascent: what every gradient method takes.

    Attributes:
        lr: AdamW learning rate on the LoRA parameters (``--lr``).
        steps: the step budget; with ``until``, the most steps the run may take (``--steps``).
        until: a target on the forget set that ends the run early (``--until``), or None.
        check_every: check ``until`` every this many steps (``--check-every``).
    """

    lr: float = _opt(0.003, "--lr", "Learning rate (AdamW on the LoRA parameters only).", min=0.0)
    steps: int = _opt(2, "--steps", "Step budget; with --until, the most steps to take. One step = one batch of --batch-size forget records.", min=1)
    until: str | None = _opt(
        None, "--until",
        "Stop at the first check where this holds, e.g. \"forget.recall@5 <= 0.3\" or \"forget.recall@5 <= 0.5*original\" "
        "(the --fail-if grammar; forget.recall@K, mrr@K, ndcg@K or ppl). The retain utility is measured at the stop.",
    )
    check_every: int = _opt(1, "--check-every", "Check --until every N steps.", min=1)

    def validate(self):
        """Raise ``InputError`` naming the option when a value is out of range; return self."""
        if not (_finite(self.lr) and self.lr > 0):
            raise InputError(f"--lr must be a finite number > 0, got {self.lr}")
        if not (_integer(self.steps) and self.steps >= 1):
            raise InputError(f"--steps must be an integer >= 1, got {self.steps}")
        if not (_integer(self.check_every) and self.check_every >= 1):
            raise InputError(f"--check-every must be an integer >= 1, got {self.check_every}")
        if self.until is not None:
            parse_until(self.until)
        return self

    @property
    def target(self) -> Target | None:
        return parse_until(self.until) if self.until is not None else None


@dataclass(frozen=True)
class GradDiffParams(GAParams):
    """GA on the forget set plus ``retain_weight`` x the ordinary loss on the retain set."""

    lr: float = _opt(0.001, "--lr", "Learning rate (AdamW on the LoRA parameters only).", min=0.0)
    steps: int = _opt(30, "--steps", "Step budget.", min=1)
    retain_weight: float = _opt(1.0, "--retain-weight", "GradDiff: weight of the retain loss.", min=0.0)

    def validate(self):
        super().validate()
        if not (_finite(self.retain_weight) and self.retain_weight >= 0):
            raise InputError(f"--retain-weight must be a finite number >= 0, got {self.retain_weight}")
        return self


@dataclass(frozen=True)
class NPOParams(GAParams):
    """Negative preference optimization against the frozen input adapter."""

    lr: float = _opt(0.001, "--lr", "Learning rate (AdamW on the LoRA parameters only).", min=0.0)
    steps: int = _opt(10, "--steps", "Step budget.", min=1)
    beta: float = _opt(0.1, "--beta", "NPO: inverse temperature beta.", min=0.0)

    def validate(self):
        super().validate()
        if not (_finite(self.beta) and self.beta > 0):
            raise InputError(f"--beta must be a finite number > 0, got {self.beta}")
        return self


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _integer(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _others() -> dict[str, type]:
    """The parameters of the methods that share this family's option machinery (``--lr``, panels)."""
    from ucan_cli.methods.negate.params import NegateParams
    from ucan_cli.methods.prune.params import PruneParams
    from ucan_cli.methods.retrain.params import RetrainParams

    return {"retrain": RetrainParams, "negate": NegateParams, "prune": PruneParams}


#: method name -> its parameters: the family's methods, then ``retrain`` (which shares ``--lr``,
#: with its own default), ``negate`` and ``prune``, whose options are generated the same way (each
#: field's ``OptionSpec`` names its panel: "Retraining", "Negation", "Pruning"). The registry holds
#: the methods.
PARAMS: dict[str, type] = {"ga": GAParams, "graddiff": GradDiffParams, "npo": NPOParams, **_others()}


def option_fields() -> list[Field]:
    """Every option of the family once, in declaration order (the first declaration of a name)."""
    seen: dict[str, Field] = {}
    for params_type in PARAMS.values():
        for f in fields(params_type):
            seen.setdefault(f.name, f)
    return list(seen.values())


def option_help(f: Field) -> str:
    """The option's help, with which methods take it and each one's default."""
    takers = {name: next(g for g in fields(t) if g.name == f.name).default for name, t in PARAMS.items() if f.name in _names(t)}
    defaults = set(takers.values())
    where = "" if len(takers) == len(PARAMS) else f" ({', '.join(takers)} only)"
    if defaults == {None}:
        return f"{f.metadata['option'].help}{where}"
    if len(defaults) == 1:
        return f"{f.metadata['option'].help} Default {next(iter(defaults))}{where}."
    return f"{f.metadata['option'].help} Default: " + ", ".join(f"{n} {v}" for n, v in takers.items()) + "."


def _names(params_type: type) -> set[str]:
    return {f.name for f in fields(params_type)}


def params_from_options(params_type: type, given: dict[str, Any]):
    """The method's parameters: its defaults with the given options (None = not given) merged over,
    validated. An option the method does not take is an ``InputError`` naming its flag."""
    taken = _names(params_type)
    flags = {f.name: f.metadata["option"].long for f in option_fields()}
    changes = {k: v for k, v in given.items() if v is not None}
    foreign = [k for k in changes if k not in taken]
    if foreign:
        raise InputError(f"{flags.get(foreign[0], foreign[0])}: not an option of this method")
    return replace(params_type(), **changes).validate()


def params_to_dict(params) -> dict[str, Any]:
    """The report's and the ledger's view of the parameters, in field order."""
    return {f.name: getattr(params, f.name) for f in fields(params)}


__all__ = [
    "GAParams", "GradDiffParams", "NPOParams", "PANEL_GRADIENT", "PARAMS", "Target", "option_fields", "option_help",
    "params_from_options", "params_to_dict", "parse_until",
]
