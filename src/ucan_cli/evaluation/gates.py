"""``--fail-if`` gates of ``ucan eval``: parse them before any model loads, check them after.

A gate names a condition that must NOT hold for a deletion to ship::

    --fail-if "forget.recall@10 > 0.6"
    --fail-if "retain.ndcg@10 < 0.95*original"

Grammar (whitespace is free around the operator and ``*``)::

    GATE   := GROUP "." METRIC OP VALUE
    OP     := "<" | ">" | "<=" | ">="
    VALUE  := NUMBER | NUMBER "*" ANCHOR | ANCHOR
    ANCHOR := "original" | "reference"

GROUP.METRIC is a path into one adapter's block of report.json (docs/report-schema.md lists
them): ``forget|retain|holdout`` . ``recall@K|mrr@K|ndcg@K|m@K|kl|shift|ppl|tied_records``,
``tradeoff.retain@K|holdout@K``, ``reference.gap@K|kl``, ``privacy.mia_auc``,
``cost.forward_s|sequences|samples_per_s``. ``original`` / ``reference`` stand for the same
metric of that adapter. Every gate is checked against every unlearned adapter; a gate fails
when its condition holds, and also when the metric (or its anchor) is null: a gate that cannot
be evaluated must not let a deletion through.

Pure: no I/O, no torch. Malformed gates raise ``InputError`` (exit 2) naming the gate.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ucan_cli.errors import InputError

OPERATORS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    ">=": operator.ge,
    "<": operator.lt,
    ">": operator.gt,
}

SET_GROUPS = ("forget", "retain", "holdout")
_SET_METRICS = ("kl", "shift", "ppl", "tied_records")
_SET_AT_K = ("recall", "mrr", "ndcg", "m")

#: group -> (metrics without K, metric stems that take @K)
METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "forget": (_SET_METRICS, _SET_AT_K),
    "retain": (_SET_METRICS, _SET_AT_K),
    "holdout": (_SET_METRICS, _SET_AT_K),
    "tradeoff": ((), ("retain", "holdout")),
    "reference": (("kl",), ("gap",)),
    "privacy": (("mia_auc",), ()),
    "cost": (("forward_s", "sequences", "samples_per_s"), ()),
}

_GATE_RE = re.compile(r"^\s*(?P<group>[A-Za-z_]+)\.(?P<metric>[A-Za-z_]+(?:@[^\s<>=]*)?)\s*(?P<op><=|>=|<|>)\s*(?P<value>.*?)\s*$")
_VALUE_RE = re.compile(r"^(?:(?P<num>[^*\s]+)\s*\*\s*)?(?P<anchor>original|reference)$")


@dataclass(frozen=True)
class Gate:
    """One parsed gate: fail when ``metric OP factor * anchor`` (or ``OP factor`` without anchor)."""

    text: str
    group: str
    metric: str
    op: str
    factor: float
    anchor: str | None  # None, "original" or "reference"

    @property
    def path(self) -> str:
        return f"{self.group}.{self.metric}"


@dataclass(frozen=True)
class GateOutcome:
    """A gate checked on one adapter. ``failed`` is True when the condition held or was not evaluable."""

    gate: str
    adapter: str
    path: str
    value: float | None
    threshold: float | None
    failed: bool
    reason: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "gate": self.gate,
            "adapter": self.adapter,
            "path": self.path,
            "value": self.value,
            "threshold": self.threshold,
            "failed": self.failed,
            "reason": self.reason,
        }


def _number(text: str, gate: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"--fail-if {gate!r}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise InputError(f"--fail-if {gate!r}: {text!r} is not a finite number")
    return value


def _check_metric(group: str, metric: str, gate: str, ks: Sequence[int]) -> None:
    if group not in METRICS:
        raise InputError(f"--fail-if {gate!r}: unknown group {group!r}; one of {', '.join(METRICS)}")
    plain, at_k = METRICS[group]
    stem, at, k_text = metric.partition("@")
    if not at:
        if metric in plain:
            return
        hint = f" (it needs @K, e.g. {metric}@10)" if metric in at_k else ""
        known = list(plain) + [f"{s}@K" for s in at_k]
        raise InputError(f"--fail-if {gate!r}: unknown metric {group}.{metric}{hint}; {group} has {', '.join(known)}")
    if stem not in at_k:
        known = list(plain) + [f"{s}@K" for s in at_k]
        raise InputError(f"--fail-if {gate!r}: unknown metric {group}.{metric}; {group} has {', '.join(known)}")
    if not re.fullmatch(r"[0-9]+", k_text) or int(k_text) <= 0:
        raise InputError(f"--fail-if {gate!r}: K in {metric!r} must be a positive integer")
    if int(k_text) not in ks:
        raise InputError(
            f"--fail-if {gate!r}: K={int(k_text)} is not evaluated (-k {','.join(map(str, ks))}); add it to -k"
        )


def parse_gate(text: str, *, ks: Sequence[int], have_reference: bool, have_holdout: bool) -> Gate:
    """Parse one ``--fail-if`` expression; ``InputError`` naming it when malformed or inapplicable.

    ``ks`` are the evaluated K values; a gate on a holdout metric needs ``--holdout``, one on a
    reference metric or anchored on ``reference`` needs ``--reference``.
    """
    match = _GATE_RE.match(text)
    if match is None:
        raise InputError(
            f"--fail-if {text!r}: expected 'GROUP.METRIC OP VALUE' with OP one of < > <= >= "
            "(e.g. \"forget.recall@10 > 0.6\" or \"retain.ndcg@10 < 0.95*original\")"
        )
    group, metric, op, value = match["group"], match["metric"], match["op"], match["value"]
    _check_metric(group, metric, text, ks)
    if not value:
        raise InputError(f"--fail-if {text!r}: no value after {op!r}")
    anchored = _VALUE_RE.match(value)
    if anchored is not None:
        anchor = anchored["anchor"]
        factor = _number(anchored["num"], text) if anchored["num"] is not None else 1.0
    else:
        anchor, factor = None, _number(value, text)
    if (group == "holdout" or metric.startswith("holdout@")) and not have_holdout:
        raise InputError(f"--fail-if {text!r}: {group}.{metric} needs --holdout")
    if (group == "reference" or anchor == "reference") and not have_reference:
        raise InputError(f"--fail-if {text!r}: it refers to the reference adapter; pass --reference")
    if group == "reference" and anchor == "reference":
        raise InputError(f"--fail-if {text!r}: the reference's own gap to itself is 0; use a number")
    return Gate(text=text.strip(), group=group, metric=metric, op=op, factor=factor, anchor=anchor)


def parse_gates(texts: Iterable[str], *, ks: Sequence[int], have_reference: bool, have_holdout: bool) -> list[Gate]:
    """Parse every gate (all before any model loads); the first malformed one raises."""
    return [parse_gate(t, ks=ks, have_reference=have_reference, have_holdout=have_holdout) for t in texts]


def _lookup(results: Mapping[str, Mapping[str, Mapping[str, Any]]], adapter: str, gate: Gate) -> Any:
    return results.get(adapter, {}).get(gate.group, {}).get(gate.metric)


def _usable(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(float(x))


def check_gates(
    gates: Sequence[Gate],
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    adapters: Sequence[str],
    null_reasons: Mapping[str, Mapping[str, str]] | None = None,
) -> list[GateOutcome]:
    """Check every gate on every adapter in ``adapters`` (the unlearned ones).

    ``results[adapter][group][metric]`` is report.json's ``results`` block; anchors read the
    ``original`` and ``reference`` entries of it. ``null_reasons[adapter]["group.metric"]``
    explains a null, and is quoted when a gate fails on one.
    """
    reasons = null_reasons or {}
    out: list[GateOutcome] = []
    for gate in gates:
        for adapter in adapters:
            value = _lookup(results, adapter, gate)
            threshold: Any = gate.factor
            reason = None
            if gate.anchor is not None:
                anchor_value = _lookup(results, gate.anchor, gate)
                if _usable(anchor_value):
                    threshold = gate.factor * float(anchor_value)
                else:
                    threshold = None
                    why = reasons.get(gate.anchor, {}).get(gate.path, "absent from the report")
                    reason = f"{gate.anchor}'s {gate.path} is null ({why})"
            if not _usable(value):
                why = reasons.get(adapter, {}).get(gate.path, "absent from the report")
                reason = f"{gate.path} is null for {adapter} ({why})"
            if reason is not None:
                out.append(GateOutcome(gate.text, adapter, gate.path, value if _usable(value) else None, threshold, True, reason))
                continue
            held = OPERATORS[gate.op](float(value), float(threshold))
            reason = f"{gate.path} = {float(value):.6g} {gate.op} {float(threshold):.6g}" if held else None
            out.append(GateOutcome(gate.text, adapter, gate.path, float(value), float(threshold), held, reason))
    return out


def failure_summary(outcomes: Sequence[GateOutcome]) -> str | None:
    """One line naming every failed gate and adapter (None when all passed)."""
    failed = [o for o in outcomes if o.failed]
    if not failed:
        return None
    parts = [f"{o.adapter}: '{o.gate}' ({o.reason})" for o in failed]
    return f"{len(failed)} gate check(s) failed: " + "; ".join(parts)
