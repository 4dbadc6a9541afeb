"""Reading and validating record files (SPEC section 2, Data).

JSONL is read line by line so that every error names the file, the line and the field. Parquet,
Arrow and Hugging Face dataset directories go through ``datasets``; their "line" is the row
number (1-based). A record is either Alpaca (``instruction``, optional ``input``, ``output``) or
prompt/completion (``prompt``, ``completion``); ``candidates`` (distinct strings containing the
response), ``id`` and ``user_id`` are optional; extra fields are kept for templates and never
copied into reports.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ucan_cli.errors import InputError

HALVES = ("auto", "users", "records")
JSONL_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz", ".ndjson")
DATASETS_SUFFIXES = (".parquet", ".arrow")
#: The longest line a JSONL file may have, line ending included (docs/data-format.md). A record
#: this long is far past any --max-length; a longer line is refused before it is parsed.
MAX_LINE_BYTES = 1 << 20
#: Strings up to this length are stored once per file (keys, instructions, candidate names).
SHARED_STRING_CHARS = 256


@dataclass(frozen=True, slots=True)
class Record:
    """One validated record. ``line`` is the 1-based line (or row) it came from."""

    line: int
    kind: str  # "alpaca" or "prompt"
    fields: dict
    id: str | None = None
    user_id: str | None = None
    candidates: tuple[str, ...] | None = None

    @property
    def response(self) -> str:
        return self.fields["output"] if self.kind == "alpaca" else self.fields["completion"]

    @property
    def target_index(self) -> int | None:
        """Index of the response in ``candidates`` (None without candidates)."""
        return None if self.candidates is None else self.candidates.index(self.response)


@dataclass(frozen=True)
class RecordSet:
    """The validated records of one file, with where they came from."""

    path: Path
    role: str  # forget, retain, holdout, ...
    records: tuple[Record, ...]
    sha256: str
    n_total: int = 0  # before --max-samples
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[Record]:
        return iter(self.records)

    @property
    def has_candidates(self) -> bool:
        return self.first_without_candidates() is None

    def first_without_candidates(self) -> Record | None:
        """The first record with no ``candidates`` (its ``line`` names it in errors), or None."""
        return next((r for r in self.records if r.candidates is None), None)

    def sample(self, max_samples: int | None, seed: int) -> RecordSet:
        """A seeded subset of at most ``max_samples`` records, kept in file order."""
        if max_samples is None or max_samples >= len(self.records):
            return self
        if max_samples <= 0:
            raise InputError(f"--max-samples must be positive, got {max_samples}")
        rng = np.random.default_rng([seed, _role_salt(self.role)])
        keep = np.sort(rng.choice(len(self.records), size=max_samples, replace=False))
        return RecordSet(self.path, self.role, tuple(self.records[i] for i in keep), self.sha256, len(self.records), self.extra)

    def resolve_halves(self, by: str = "auto") -> str:
        """``users`` when asked, or for ``auto`` when every record has a ``user_id`` and there are
        at least two users; else ``records``."""
        if by not in HALVES:
            raise InputError(f"--halves must be one of {', '.join(HALVES)}, got {by!r}")
        if by != "auto":
            if by == "users" and (any(r.user_id is None for r in self.records) or len({r.user_id for r in self.records}) < 2):
                raise InputError(f"{self.path}: --halves users needs a user_id on every record and at least two users")
            return by
        users = {r.user_id for r in self.records}
        return "users" if None not in users and len(users) >= 2 else "records"

    def split_halves(self, seed: int, by: str = "records") -> tuple[list[int], list[int]]:
        """A seeded split of record indices into two halves (the noise reference of SPEC step 1).

        ``records``: a seeded permutation of the records, cut in the middle. ``users``: a seeded
        permutation of the users, each user's records all in one half, half a taking users first-fit
        up to half of the records. The users split mirrors how forget and retain differ when a
        deletion request names users: a records split puts every user in both halves, so the
        halves look more alike than two disjoint groups of users ever do, and noise looks like
        signal (docs/method.md, "The noise reference"). ``auto`` picks ``users`` when possible.
        """
        by = self.resolve_halves(by)
        rng = np.random.default_rng([seed, _role_salt("halves")])
        if by == "records":
            order = rng.permutation(len(self.records))
            half = len(order) // 2
            return sorted(order[:half].tolist()), sorted(order[half:].tolist())
        by_user: dict[str, list[int]] = {}
        for i, record in enumerate(self.records):
            by_user.setdefault(record.user_id, []).append(i)
        users = sorted(by_user)
        half_a: list[int] = []
        half_b: list[int] = []
        limit = len(self.records) // 2  # as many records as the records split puts in half a
        for position, j in enumerate(rng.permutation(len(users))):
            rows = by_user[users[j]]
            # First fit in the seeded user order, never past the limit, one user at least on each side.
            fits = not half_a or len(half_a) + len(rows) <= limit
            (half_a if fits and position < len(users) - 1 else half_b).extend(rows)
        return sorted(half_a), sorted(half_b)


def _role_salt(role: str) -> int:
    return int.from_bytes(hashlib.sha256(role.encode()).digest()[:4], "little")


def _where(path: Path, line: int, fieldname: str | None = None) -> str:
    return f"{path}:{line}" + (f": field '{fieldname}'" if fieldname else "")


def _as_id(value, path: Path, line: int, name: str) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(f"{_where(path, line, name)} must be a string or an integer")
    return str(value)


def validate_record(obj, path: Path, line: int) -> Record:
    """Check one parsed JSON value against the record schema; raise ``InputError`` naming the field."""
    if not isinstance(obj, dict):
        raise InputError(f"{_where(path, line)}: expected a JSON object, got {type(obj).__name__}")
    if "instruction" in obj or "output" in obj:
        kind, required, optional = "alpaca", ("instruction", "output"), ("input",)
    elif "prompt" in obj or "completion" in obj:
        kind, required, optional = "prompt", ("prompt", "completion"), ()
    else:
        raise InputError(
            f"{_where(path, line, 'instruction')} is missing (records need instruction/output or prompt/completion)"
        )
    for name in required:
        if name not in obj:
            raise InputError(f"{_where(path, line, name)} is missing")
        if not isinstance(obj[name], str):
            raise InputError(f"{_where(path, line, name)} must be a string, got {type(obj[name]).__name__}")
    for name in optional:
        if name in obj and obj[name] is not None and not isinstance(obj[name], str):
            raise InputError(f"{_where(path, line, name)} must be a string, got {type(obj[name]).__name__}")
    response = obj[required[1]]
    if not response:
        raise InputError(f"{_where(path, line, required[1])} is empty")
    candidates = None
    if obj.get("candidates") is not None:
        cands = obj["candidates"]
        if not isinstance(cands, list) or not cands or not all(isinstance(c, str) and c for c in cands):
            raise InputError(f"{_where(path, line, 'candidates')} must be a non-empty list of non-empty strings")
        if len(set(cands)) != len(cands):
            dup = next(c for c in cands if cands.count(c) > 1)
            raise InputError(f"{_where(path, line, 'candidates')} has the duplicate candidate {dup!r}")
        if response not in cands:
            raise InputError(f"{_where(path, line, required[1])} {response!r} is not among the candidates")
        candidates = tuple(cands)
    return Record(
        line=line,
        kind=kind,
        fields=obj,
        id=_as_id(obj.get("id"), path, line, "id"),
        user_id=_as_id(obj.get("user_id"), path, line, "user_id"),
        candidates=candidates,
    )


class _HashingReader:
    """A binary file whose bytes feed a SHA-256 as they are read (so the file is read once)."""

    def __init__(self, handle, digest):
        self.handle, self.digest, self.mode = handle, digest, "rb"

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.digest.update(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        data = self.handle.readline(size)
        self.digest.update(data)
        return data

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _gzip_problem(path: Path, lineno: int, exc: BaseException) -> InputError:
    detail = str(exc) or type(exc).__name__
    if lineno == 1:
        return InputError(f"{path}: not a valid gzip file ({detail})")
    return InputError(f"{_where(path, lineno)}: corrupt gzip data ({detail})")


def _iter_lines(path: Path, digest) -> Iterator[tuple[int, bytes]]:
    """The raw lines of a JSONL file (gzip decompressed), one at a time, each at most
    ``MAX_LINE_BYTES``; the file's bytes go through ``digest`` on the way."""
    with open(path, "rb") as handle:
        raw = _HashingReader(handle, digest)
        source = gzip.GzipFile(fileobj=raw, mode="rb") if path.name.endswith(".gz") else raw
        lineno = 0
        while True:
            lineno += 1
            try:
                line = source.readline(MAX_LINE_BYTES + 1)
            except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
                raise _gzip_problem(path, lineno, exc) from None
            if not line:
                break
            if len(line) > MAX_LINE_BYTES:
                raise InputError(
                    f"{_where(path, lineno)}: line is longer than 1 MiB ({MAX_LINE_BYTES} bytes), the most ucan reads "
                    "as one record"
                )
            yield lineno, line
        raw.drain()  # the whole file's SHA-256, whatever the gzip reader left unread


def iter_json_lines(path: Path, digest) -> Iterator[tuple[int, str, object]]:
    """Each non-blank line of a JSONL file: its number, its text without the line ending, its JSON.

    Gzip is decompressed, a leading BOM dropped, every line at most ``MAX_LINE_BYTES``; the
    file's bytes go through ``digest``. A line that is not UTF-8 or not JSON is an
    ``InputError`` naming the file and line. ``prepare split`` writes the text back verbatim.
    """
    for lineno, line_bytes in _iter_lines(path, digest):
        if lineno == 1 and line_bytes.startswith(b"\xef\xbb\xbf"):
            line_bytes = line_bytes[3:]
        try:
            text = line_bytes.decode("utf-8").removesuffix("\n").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise InputError(f"{_where(path, lineno)}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{_where(path, lineno)}: invalid JSON ({exc.msg} at column {exc.colno})") from None
        except RecursionError:
            raise InputError(f"{_where(path, lineno)}: invalid JSON (nested too deeply)") from None
        yield lineno, text, obj


def _iter_jsonl(path: Path, digest) -> Iterator[tuple[int, object]]:
    shared: dict[str, str] = {}
    for lineno, _text, obj in iter_json_lines(path, digest):
        yield lineno, _share_strings(obj, shared) if isinstance(obj, dict) else obj


def _share_strings(obj: dict, shared: dict[str, str]) -> dict:
    """The record with its keys and short string values (and list items) replaced by one shared
    copy per file: every record of a file repeats the same keys, and usually the instruction and
    candidate names, which ``json.loads`` allocates afresh for each line."""

    get, limit, out = shared.setdefault, SHARED_STRING_CHARS, {}
    for key, value in obj.items():
        if type(value) is str:
            if len(value) <= limit:
                value = get(value, value)
        elif type(value) is list:
            value = [get(v, v) if type(v) is str and len(v) <= limit else v for v in value]
        out[get(key, key)] = value
    return out


def _iter_datasets(path: Path) -> Iterator[tuple[int, object]]:
    import datasets

    try:
        if path.is_dir():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                raise InputError(f"{path}: a DatasetDict with splits {list(ds)}; point at one split's directory")
        elif path.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        else:
            ds = datasets.Dataset.from_file(str(path))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"{path}: cannot read as a dataset ({exc})") from None
    for row, obj in enumerate(ds, start=1):
        yield row, {k: v for k, v in obj.items() if v is not None}


def read_records(path: str | Path, role: str = "data") -> RecordSet:
    """Read and validate a record file; every problem is an ``InputError`` naming file, line, field."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {role} file not found")
    digest = hashlib.sha256()
    if path.is_dir() or path.name.endswith(DATASETS_SUFFIXES):
        items: Iterable[tuple[int, object]] = _iter_datasets(path)
        digest.update(str(path.resolve()).encode())
    else:
        items = _iter_jsonl(path, digest)  # streamed: one line in memory at a time
    records: list[Record] = []
    seen_ids: dict[str, int] = {}
    for line, obj in items:
        record = validate_record(obj, path, line)
        if record.id is not None:
            if record.id in seen_ids:
                raise InputError(
                    f"{_where(path, line, 'id')} {record.id!r} duplicates line {seen_ids[record.id]}"
                )
            seen_ids[record.id] = line
        records.append(record)
    if not records:
        raise InputError(f"{path}: {role} file is empty (no records)")
    return RecordSet(path=path, role=role, records=tuple(records), sha256=digest.hexdigest(), n_total=len(records))


def check_disjoint(forget: RecordSet, retain: RecordSet, *, allow_overlap: bool = False) -> None:
    """The same ``id`` or ``user_id`` in forget and retain is an input error unless allowed."""
    if allow_overlap:
        return
    for attr in ("id", "user_id"):
        forget_values = {getattr(r, attr): r for r in forget if getattr(r, attr) is not None}
        for record in retain:
            value = getattr(record, attr)
            if value is not None and value in forget_values:
                first = forget_values[value]
                raise InputError(
                    f"{_where(retain.path, record.line, attr)} {value!r} is also in the forget set "
                    f"({forget.path}:{first.line}); pass --allow-overlap if that is intended"
                )
