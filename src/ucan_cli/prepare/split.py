"""Split any JSONL file whose records carry ``user_id`` into forget and retain by user id.

This is how a deletion request becomes data: every record of a forgotten user goes to
``forget.jsonl``, all others to ``retain.jsonl`` (optionally a seeded sample of them), and a
``manifest.json`` records the counts, the options and the input's SHA-256. Records are copied
byte for byte (without their line endings); only the record's ``user_id`` is read, and it is
compared as a string, so ``7`` and ``"7"`` name the same user.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ucan_cli._version import __version__
from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.io.data import iter_json_lines
from ucan_cli.io.outdir import atomic_output_dir, check_output_dir


@dataclass(frozen=True)
class Line:
    """One non-blank input line: its 1-based number, its text and its user id (as a string)."""

    number: int
    text: str
    user_id: str


@dataclass
class SplitResult:
    """The outcome of a split: the forget and retain lines, the counts and the manifest."""

    forget: list[Line]
    retain: list[Line]
    forget_user_ids: list[str]
    missing_user_ids: list[str]
    counts: dict[str, int]
    manifest: dict = field(default_factory=dict)


def parse_user_ids(text: str, option: str = "--forget-users") -> list[str]:
    """User ids from a comma- or whitespace-separated list, duplicates dropped, order kept."""
    ids = [part for part in text.replace(",", " ").split() if part]
    if not ids:
        raise InputError(f"{option}: no user ids given")
    return list(dict.fromkeys(ids))


def read_user_ids_file(path: str | Path) -> list[str]:
    """User ids from a file: one or more per line (comma/space separated); ``#`` starts a comment."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: --forget-users-file not found")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    body = " ".join(line.split("#", 1)[0] for line in text.splitlines())
    if not body.strip():
        raise InputError(f"{path}: --forget-users-file holds no user ids")
    return parse_user_ids(body, option=str(path))


def read_lines(path: str | Path) -> tuple[list[Line], str]:
    """The non-blank lines of a JSONL (or ``.jsonl.gz``) file with their ``user_id``, and its SHA-256.

    Read as every record file is (``io.data.iter_json_lines``): a BOM and CRLF endings are
    tolerated, a line is at most 1 MiB. Invalid JSON, a non-object, or a missing or non-scalar
    ``user_id`` is an ``InputError`` naming the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: --data file not found")
    digest = hashlib.sha256()
    lines: list[Line] = []
    for number, text, obj in iter_json_lines(path, digest):
        if not isinstance(obj, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        if "user_id" not in obj:
            raise InputError(f"{path}:{number}: field 'user_id' is missing")
        user_id = obj["user_id"]
        if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
            raise InputError(f"{path}:{number}: field 'user_id' must be a string or an integer")
        lines.append(Line(number, text, str(user_id)))
    if not lines:
        raise InputError(f"{path}: --data file is empty (no records)")
    return lines, digest.hexdigest()


def split_lines(
    lines: Sequence[Line],
    forget_users: Iterable[str],
    *,
    retain_sample: int | None = None,
    seed: int = 0,
    ignore_missing: bool = False,
    source_name: str = "data",
) -> SplitResult:
    """Split lines by user; pure (no I/O).

    Unknown forget user ids are an ``InputError`` listing them, unless ``ignore_missing`` (then
    they are listed in the manifest). ``retain_sample`` keeps a seeded sample of that many retain
    records, in file order (``numpy.random.default_rng(seed).choice`` without replacement); all of
    them when it is at least their number.
    """
    wanted = list(dict.fromkeys(str(u) for u in forget_users))
    if not wanted:
        raise InputError("--forget-users: no user ids given")
    if retain_sample is not None and retain_sample < 1:
        raise InputError(f"--retain-sample must be at least 1, got {retain_sample}")
    if seed < 0:
        raise InputError(f"--seed must be non-negative, got {seed}")
    present = {line.user_id for line in lines}
    missing = [u for u in wanted if u not in present]
    if missing and not ignore_missing:
        raise InputError(
            f"{source_name}: {len(missing)} forget user id(s) not found: {', '.join(missing)} "
            "(pass --ignore-missing to go on without them)"
        )
    forget_set = set(wanted) & present
    if not forget_set:
        raise NothingToDo(f"{source_name}: none of the forget users has a record; nothing written")
    forget = [line for line in lines if line.user_id in forget_set]
    retain_all = [line for line in lines if line.user_id not in forget_set]
    if not retain_all:
        raise InputError(f"{source_name}: every record belongs to a forget user; the retain set would be empty")
    retain = retain_all
    if retain_sample is not None and retain_sample < len(retain_all):
        keep = np.sort(np.random.default_rng(seed).choice(len(retain_all), size=retain_sample, replace=False))
        retain = [retain_all[int(k)] for k in keep]
    counts = {
        "records": len(lines),
        "users": len(present),
        "forget_users": len(forget_set),
        "retain_users": len(present) - len(forget_set),
        "missing_users": len(missing),
        "forget_records": len(forget),
        "retain_records_total": len(retain_all),
        "retain_records": len(retain),
    }
    return SplitResult(
        forget=forget,
        retain=retain,
        forget_user_ids=[u for u in wanted if u in forget_set],
        missing_user_ids=missing,
        counts=counts,
    )


def _write_lines(path: Path, lines: Sequence[Line]) -> dict:
    payload = "".join(line.text + "\n" for line in lines).encode("utf-8")
    path.write_bytes(payload)
    return {"records": len(lines), "bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()}


def split_by_users(
    data: str | Path,
    forget_users: Iterable[str],
    *,
    out_dir: str | Path | None = None,
    retain_sample: int | None = None,
    seed: int = 0,
    ignore_missing: bool = False,
    force: bool = False,
    dry_run: bool = False,
) -> SplitResult:
    """Read ``data``, split it by user and (unless ``dry_run``) write ``out_dir`` atomically.

    Writes ``forget.jsonl``, ``retain.jsonl`` and ``manifest.json``. The output directory is
    checked before reading: it is refused when it exists (unless ``force``) or holds the input.
    """
    data = Path(data)
    if not dry_run:
        if out_dir is None:
            raise InputError("-o/--output is required (or pass --dry-run)")
        check_output_dir(out_dir, force=force, protected=[data])
    lines, digest = read_lines(data)
    result = split_lines(
        lines, forget_users, retain_sample=retain_sample, seed=seed, ignore_missing=ignore_missing, source_name=str(data)
    )
    result.manifest = {
        "schema": "ucan-prepare-split/1",
        "tool": f"ucan-cli {__version__}",
        "source": {"file": data.name, "sha256": digest},
        "options": {"retain_sample": retain_sample, "seed": seed, "ignore_missing": ignore_missing},
        "counts": dict(result.counts),
        "forget_user_ids": list(result.forget_user_ids),
        "missing_user_ids": list(result.missing_user_ids),
    }
    if not dry_run:
        assert out_dir is not None
        with atomic_output_dir(out_dir, force=force, protected=[data]) as tmp:
            result.manifest["files"] = {
                "forget.jsonl": _write_lines(tmp / "forget.jsonl", result.forget),
                "retain.jsonl": _write_lines(tmp / "retain.jsonl", result.retain),
            }
            (tmp / "manifest.json").write_text(
                json.dumps(result.manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
            )
    return result
