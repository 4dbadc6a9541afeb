"""``ucan_ledger.jsonl``: the hash-chained history of every ucan edit of an adapter.

Every output directory of ``ucan attenuate`` carries the input adapter's ledger (its lines copied
byte for byte) plus one new line. Each line is one JSON object in canonical form (sorted keys,
no spaces, ASCII, no NaN) with:

* ``ledger_version`` (1), ``seq`` (1, 2, ...), ``time`` (UTC, ISO 8601, seconds, ``Z``),
  ``ucan_version``, ``command`` (``attenuate``), ``options`` (the resolved options);
* ``unit`` of this request, ``input_adapter_sha256``, ``output_adapter_sha256`` (SHA-256 of
  ``adapter_model.safetensors``) and ``input_matches_ledger`` (false when the input adapter's
  hash was not the previous entry's output: it was changed outside ucan and ``--force`` allowed
  it);
* ``forget_set_hmac`` (HMAC-SHA256 of the sorted forget-record identities), ``receipt_key_fingerprint``
  and ``n_forget_records``: never forget text or raw ids;
* ``request``: what this request changed (``n_edited``, ``sum_1_minus_s``); ``prune`` writes its 0/1
  factors like U-CAN; an edit by a gradient method (``ga``, ``graddiff``, ``npo``)
  adds ``kind: "gradient"`` and ``steps_run``, with
  ``n_edited`` 0: it changes A and B everywhere, not per-unit factors, so it composes nothing and
  the cumulative factors below are carried unchanged (they remain the record of the lineage's
  U-CAN edits, and the floor rule of a later U-CAN request still reads them); an edit by direction
  units (``unit: "direction"``, SPEC 3b) likewise edits A, passes no factors and carries them;
  ``negate`` adds ``kind: "negate"`` and its ``scale`` and carries them the same way; ``retrain``
  adds ``kind: "retrain"`` and restarts them (every LoRA weight is new: no earlier factor
  describes it, so the entry lists none);
* ``cumulative_factors``: ``{"output": {module: {"index": [...], "factor": [...]}}, "rank": {...}}``,
  the product of every factor applied so far, per unit kind, listing only units whose factor is
  not 1 (indices ascending). Output and rank factors act on different sides of B
  (B' = diag(s_out) B diag(s_rank)), so they commute and are kept apart; the floor rule of
  SPEC step 4 compares a unit with its cumulative factor of the same kind only;
* ``prev_hash``: null on the first line, else the SHA-256 of the previous line's bytes (without
  its newline).

Reading verifies the chain: a line that is not canonical JSON of the right shape, a wrong
``seq`` or a ``prev_hash`` that does not match is an ``InputError`` naming the file and line.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ucan_cli._version import __version__
from ucan_cli.errors import InputError

LEDGER_NAME = "ucan_ledger.jsonl"
LEDGER_VERSION = 1
UNIT_KINDS = ("output", "rank")
#: The kinds an entry's ``unit`` may name: direction edits (SPEC 3b) change A, carry no per-unit
#: factors and leave the cumulative factors (output and rank only) unchanged.
ENTRY_UNITS = (*UNIT_KINDS, "direction")
_REQUIRED = {
    "ledger_version": int,
    "seq": int,
    "time": str,
    "ucan_version": str,
    "command": str,
    "options": dict,
    "unit": str,
    "input_adapter_sha256": str,
    "output_adapter_sha256": str,
    "input_matches_ledger": bool,
    "forget_set_hmac": str,
    "receipt_key_fingerprint": str,
    "n_forget_records": (int, type(None)),
    "request": dict,
    "cumulative_factors": dict,
    "prev_hash": (str, type(None)),
}

#: module name -> {unit index: cumulative factor}, only factors != 1.
Cumulative = dict[str, dict[int, float]]


def canonical_line(entry: Mapping[str, Any]) -> bytes:
    """The one byte form of an entry: sorted keys, no spaces, ASCII, NaN refused."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii")


def line_hash(raw: bytes) -> str:
    """SHA-256 of a ledger line's bytes (without the newline): what the next line's prev_hash holds."""
    return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    line: int
    raw: bytes
    data: dict

    @property
    def hash(self) -> str:
        return line_hash(self.raw)


@dataclass
class Ledger:
    """A verified ledger (possibly empty: an adapter ucan never edited)."""

    path: Path | None
    entries: list[LedgerEntry] = field(default_factory=list)

    @property
    def head(self) -> LedgerEntry | None:
        return self.entries[-1] if self.entries else None

    def cumulative(self, unit: str) -> Cumulative:
        """The cumulative factors of one unit kind after the last entry ({} when none)."""
        if self.head is None:
            return {}
        table = self.head.data["cumulative_factors"].get(unit, {})
        return {name: dict(zip(v["index"], v["factor"])) for name, v in table.items()}

    def cumulative_vector(self, layout: Sequence[tuple[str, int]], unit: str) -> np.ndarray | None:
        """Cumulative factors as a flat (N,) vector in ``layout`` order, or None when the ledger
        holds no factor of this unit kind (then the floor rule holds for every unit).

        Raises ``InputError`` when the ledger names a module or index the adapter does not have.
        """
        cum = self.cumulative(unit)
        if not cum:
            return None
        offsets, start = {}, 0
        for name, size in layout:
            offsets[name] = (start, int(size))
            start += int(size)
        vec = np.ones(start, dtype=np.float64)
        where = self.path if self.path is not None else LEDGER_NAME
        for name, factors in cum.items():
            if name not in offsets:
                raise InputError(f"{where}: line {self.head.line}: module {name} is not in the adapter; the ledger belongs to another adapter")
            off, size = offsets[name]
            for index, factor in factors.items():
                if index >= size:
                    raise InputError(f"{where}: line {self.head.line}: {unit} unit {index} of {name} does not exist (module has {size})")
                vec[off + index] = factor
        return vec

    def receipts(self) -> list[tuple[int, str, str]]:
        """(line, forget_set_hmac, receipt_key_fingerprint) of every entry in the lineage."""
        return [(e.line, e.data["forget_set_hmac"], e.data["receipt_key_fingerprint"]) for e in self.entries]

    def raw_bytes(self) -> bytes:
        """The ledger's lines exactly as read, newline-terminated (what an output copies)."""
        return b"".join(e.raw + b"\n" for e in self.entries)


def _bad(path: Path, line: int, what: str) -> InputError:
    return InputError(f"{path}: line {line}: {what}")


def _check_factors(path: Path, line: int, table: Any) -> None:
    if not isinstance(table, dict) or set(table) - set(UNIT_KINDS):
        raise _bad(path, line, f"field 'cumulative_factors' must be an object with keys {', '.join(UNIT_KINDS)}")
    for unit, modules in table.items():
        if not isinstance(modules, dict):
            raise _bad(path, line, f"field 'cumulative_factors.{unit}' must be an object")
        for name, v in modules.items():
            where = f"field 'cumulative_factors.{unit}.{name}'"
            if not isinstance(v, dict) or set(v) != {"index", "factor"}:
                raise _bad(path, line, f"{where} must be {{'index': [...], 'factor': [...]}}")
            idx, fac = v["index"], v["factor"]
            if not isinstance(idx, list) or not isinstance(fac, list) or len(idx) != len(fac) or not idx:
                raise _bad(path, line, f"{where}: 'index' and 'factor' must be non-empty lists of one length")
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx) or idx != sorted(set(idx)):
                raise _bad(path, line, f"{where}: 'index' must be strictly increasing non-negative integers")
            if not all(isinstance(f, (int, float)) and not isinstance(f, bool) and math.isfinite(f) and 0 <= f < 1 for f in fac):
                raise _bad(path, line, f"{where}: every factor must be a number in [0, 1)")


def parse_ledger(raw: bytes, path: Path) -> Ledger:
    """Verify a ledger's bytes line by line and return it; every defect names the line."""
    if not raw:
        return Ledger(path, [])
    if not raw.endswith(b"\n"):
        raise _bad(path, raw.count(b"\n") + 1, "truncated (no final newline); the ledger was cut off")
    entries: list[LedgerEntry] = []
    prev: LedgerEntry | None = None
    for number, line in enumerate(raw[:-1].split(b"\n"), start=1):
        try:
            data = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _bad(path, number, f"invalid JSON ({exc})") from None
        if not isinstance(data, dict):
            raise _bad(path, number, "expected a JSON object")
        for name, kind in _REQUIRED.items():
            if name not in data:
                raise _bad(path, number, f"missing field '{name}'")
            if not isinstance(data[name], kind) or (kind is int and isinstance(data[name], bool)):
                raise _bad(path, number, f"field '{name}' has the wrong type")
        if data["ledger_version"] != LEDGER_VERSION:
            raise _bad(path, number, f"ledger_version {data['ledger_version']} is not supported (expected {LEDGER_VERSION})")
        if canonical_line(data) != line:
            raise _bad(path, number, "not in canonical form; the line was edited after ucan wrote it")
        if data["seq"] != number:
            raise _bad(path, number, f"field 'seq' is {data['seq']}, expected {number}; the chain is broken")
        expected = None if prev is None else prev.hash
        if data["prev_hash"] != expected:
            raise _bad(
                path, number,
                "field 'prev_hash' does not match the SHA-256 of the previous line; the chain is broken"
                if expected is not None else "field 'prev_hash' must be null on the first line; the chain is broken",
            )
        if data["unit"] not in ENTRY_UNITS:
            raise _bad(path, number, f"field 'unit' must be one of {', '.join(ENTRY_UNITS)}")
        _check_factors(path, number, data["cumulative_factors"])
        if prev is not None and data["input_matches_ledger"] and data["input_adapter_sha256"] != prev.data["output_adapter_sha256"]:
            raise _bad(path, number, "field 'input_adapter_sha256' is not the previous line's output_adapter_sha256; the chain is broken")
        prev = LedgerEntry(number, line, data)
        entries.append(prev)
    return Ledger(path, entries)


def read_ledger(adapter_dir: str | Path) -> Ledger:
    """The verified ledger of an adapter directory; an empty ledger when it has none."""
    path = Path(adapter_dir) / LEDGER_NAME
    if not path.is_file():
        return Ledger(None, [])
    return parse_ledger(path.read_bytes(), path)


def check_adapter_head(ledger: Ledger, adapter_sha256: str, *, force: bool) -> tuple[bool, list[str]]:
    """Does the ledger's last output hash equal the input adapter's? Returns (matches, warnings).

    A mismatch means the adapter was changed after ucan wrote it (re-saved, edited by hand): the
    ledger no longer describes it. That is an ``InputError`` unless ``force``, which goes on with
    a warning and records ``input_matches_ledger: false``.
    """
    if ledger.head is None:
        return True, []
    expected = ledger.head.data["output_adapter_sha256"]
    if expected == adapter_sha256:
        return True, []
    message = (
        f"{ledger.path}: line {ledger.head.line}: output_adapter_sha256 {expected[:12]}... is not the adapter's "
        f"SHA-256 {adapter_sha256[:12]}...; the adapter was changed after ucan wrote it"
    )
    if not force:
        raise InputError(message + " (pass --force to continue from this adapter anyway)")
    return False, [message + "; continuing because of --force"]


def check_repeat(ledger: Ledger, forget_hmac: str, fingerprint: str, *, force: bool) -> list[str]:
    """Refuse a forget set already in the lineage (same HMAC under the same key) unless ``force``.

    Returns warnings: the repeat when forced, and entries made under another receipt key (their
    HMACs cannot be compared with this one).
    """
    warnings = []
    for line, hmac_hex, fp in ledger.receipts():
        if fp != fingerprint:
            warnings.append(
                f"{ledger.path}: line {line} was made under another receipt key ({fp}); "
                "a repeat of that request cannot be detected"
            )
        elif hmac_hex == forget_hmac:
            message = f"{ledger.path}: line {line}: this forget set was already attenuated in this adapter's lineage"
            if not force:
                raise InputError(message + " (pass --force to attenuate it again)")
            warnings.append(message + "; attenuating again because of --force")
    return warnings


def compose(previous: Cumulative, new: Mapping[str, np.ndarray]) -> Cumulative:
    """Multiply the previous cumulative factors of one unit kind by this request's factors.

    ``new`` maps module name -> the module's full factor vector. Only factors != 1 are kept.
    """
    out: Cumulative = {}
    names = list(dict.fromkeys([*previous, *new]))
    for name in names:
        merged = dict(previous.get(name, {}))
        if name in new:
            f = np.asarray(new[name], dtype=np.float64)
            for index in np.flatnonzero(f != 1.0):
                merged[int(index)] = float(merged.get(int(index), 1.0) * f[index])
        kept = {i: v for i, v in sorted(merged.items()) if v != 1.0}
        if kept:
            out[name] = kept
    return out


def _factor_table(cum: Cumulative, order: Sequence[str]) -> dict:
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(cum, key=lambda n: (rank.get(n, len(rank)), n))
    return {n: {"index": list(cum[n]), "factor": [float(x) for x in cum[n].values()]} for n in names}


def utc_now() -> str:
    """UTC time with second precision, ISO 8601 with ``Z``."""
    return datetime.now(timezone.utc).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_entry(
    ledger: Ledger,
    *,
    unit: str,
    factors: Mapping[str, np.ndarray],
    module_order: Sequence[str],
    options: Mapping[str, Any],
    input_sha256: str,
    output_sha256: str,
    input_matches_ledger: bool,
    forget_set_hmac: str,
    receipt_key_fingerprint: str,
    n_forget_records: int | None,
    time: str | None = None,
    request: Mapping[str, Any] | None = None,
    fresh: bool = False,
) -> dict:
    """The next ledger entry: this request's factors composed onto the lineage's.

    ``request`` adds fields to the entry's ``request`` (a gradient edit: ``kind: "gradient"`` and
    ``steps_run``; it passes no factors, so the lineage's cumulative factors are carried unchanged).
    ``fresh``: the edit replaced every LoRA weight (``retrain``), so the cumulative factors restart
    from this request's own.
    """
    cumulative = {}
    for kind in UNIT_KINDS:
        prev = {} if fresh else ledger.cumulative(kind)
        cumulative[kind] = _factor_table(compose(prev, factors) if kind == unit else prev, module_order)
    flat = np.concatenate([np.asarray(v, dtype=np.float64) for v in factors.values()]) if factors else np.ones(0)
    head = ledger.head
    return {
        "ledger_version": LEDGER_VERSION,
        "seq": (head.line if head else 0) + 1,
        "time": time or utc_now(),
        "ucan_version": __version__,
        "command": "attenuate",
        "options": dict(options),
        "unit": unit,
        "input_adapter_sha256": input_sha256,
        "output_adapter_sha256": output_sha256,
        "input_matches_ledger": bool(input_matches_ledger),
        "forget_set_hmac": forget_set_hmac,
        "receipt_key_fingerprint": receipt_key_fingerprint,
        "n_forget_records": n_forget_records,
        "request": {"n_edited": int((flat < 1.0).sum()), "sum_1_minus_s": float((1.0 - flat).sum()), **dict(request or {})},
        "cumulative_factors": cumulative,
        "prev_hash": head.hash if head else None,
    }


def ledger_bytes(ledger: Ledger, entry: Mapping[str, Any]) -> bytes:
    """The output ledger: the input's lines byte for byte, then the new entry."""
    return ledger.raw_bytes() + canonical_line(entry) + b"\n"


def write_ledger(directory: str | Path, ledger: Ledger, entry: Mapping[str, Any]) -> Path:
    """Write the output ledger into a (temporary) output directory."""
    path = Path(directory) / LEDGER_NAME
    path.write_bytes(ledger_bytes(ledger, entry))
    return path
