"""MovieLens-100K to instruction records, by the protocol of SPEC section 5 (LlamaRec style).

The steps, in order (docs/data.md walks through them with the resulting counts):

1. Load the ratings, items and (with ``with_attributes``) users from GroupLens's files (``u.data``,
   ``u.item``, ``u.user``) or recbole's atomic files (``ml-100k.inter``, ``.item``, ``.user``).
   Both are read into the same canonical tables, so both give byte-identical records.
2. Iterative 5-core: drop users and items with fewer than 5 ratings until nothing changes.
3. Sort each user's ratings by (timestamp, item_id); leave-one-out: test = last, valid = second
   to last, train = the rest.
4. Train samples: for i in 1..len(train)-1, history = train[max(0, i-H):i], target = train[i].
   Preset ``bench`` keeps only the last 2 prefixes per user.
5. Candidate pool: C-1 negatives drawn without replacement from the catalogue items the user never
   rated, plus the target, shuffled; lettered A, B, ...; ``output`` is the target's letter.
6. Forget users: the first round(f * |U|) of ``numpy.random.default_rng(seed).permutation`` of the
   sorted user ids (or an explicit list); retain = the other users.
7. holdout: one record per user whose target is the test item; valid: the same for the valid item.

Randomness is per record: the record whose target sits at position p (0-based, in the user's
sorted sequence) of user u draws its negatives and its shuffle from
``numpy.random.default_rng([seed, 1, u, p])``. A record therefore does not depend on which other
records are built, so the bench preset is an exact subset of the default one and any reordering
gives the same records.

The MovieLens files are never redistributed by this project: they come from ``--source`` or from
an installed ``recbole`` wheel, found with ``importlib.util.find_spec`` without importing recbole.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import re
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ucan_cli._version import __version__
from ucan_cli.errors import InputError
from ucan_cli.io.outdir import atomic_output_dir, check_output_dir

GROUPLENS_FILES = {"ratings": "u.data", "items": "u.item", "users": "u.user"}
RECBOLE_FILES = {"ratings": "ml-100k.inter", "items": "ml-100k.item", "users": "ml-100k.user"}

#: The 19 genre flags of GroupLens's u.item, in file order (also the order genres are listed in).
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
)  # fmt: skip

#: Age buckets of MovieLens-1M, applied to ML-100K's exact ages: (lowest age, label).
AGE_BUCKETS = ((0, "under 18"), (18, "18-24"), (25, "25-34"), (35, "35-44"), (45, "45-49"), (50, "50-55"), (56, "56+"))

PRESETS = ("default", "bench")
CORE = 5
MAX_CANDIDATES = 26
LETTERS = tuple(chr(ord("A") + k) for k in range(MAX_CANDIDATES))
OUTPUT_FILES = ("train.jsonl", "forget.jsonl", "retain.jsonl", "holdout.jsonl", "valid.jsonl", "items.tsv")

#: Stream tag in the per-record seed, so that other seeded draws can never reuse these streams.
_CANDIDATE_STREAM = 1

INSTRUCTION = (
    "Given the movies a user watched, in chronological order, pick the movie the user will watch "
    "next from the candidate pool. Answer with the candidate's letter only."
)

_YEAR_IN_TITLE = re.compile(r"\((\d{4})\)")


@dataclass(frozen=True)
class Item:
    """One movie. ``title`` is GroupLens's full title, year included ("Toy Story (1995)")."""

    item_id: int
    title: str
    year: str  # four digits, or "" when the title carries none
    genres: tuple[str, ...]


@dataclass(frozen=True)
class User:
    """One user's demographic attributes (only read with ``with_attributes``)."""

    user_id: int
    age: int
    gender: str
    occupation: str

    @property
    def age_bucket(self) -> str:
        return age_bucket(self.age)


@dataclass(frozen=True)
class Source:
    """Where the MovieLens files are and which of the two formats they use."""

    format: str  # "grouplens" or "recbole"
    directory: Path
    files: dict[str, Path]  # role ("ratings", "items", "users") -> path


@dataclass
class MovieLensData:
    """The canonical tables, identical whichever format they came from."""

    ratings: list[tuple[int, int, int, int]]  # (user_id, item_id, rating, timestamp), file order
    items: dict[int, Item]
    users: dict[int, User] | None
    source: Source


@dataclass(frozen=True)
class PrepareOptions:
    """The protocol's knobs (CLI flags of ``ucan prepare movielens``)."""

    history: int = 10
    candidates: int = 20
    forget_fraction: float = 0.25
    forget_users: tuple[int, ...] | None = None  # when given, forget_fraction is not used
    preset: str = "default"
    with_attributes: bool = False
    seed: int = 0

    def validate(self) -> None:
        """Raise ``InputError`` naming the option that is out of range."""
        if self.history < 1:
            raise InputError(f"--history must be at least 1, got {self.history}")
        if not 2 <= self.candidates <= MAX_CANDIDATES:
            raise InputError(f"--candidates must be between 2 and {MAX_CANDIDATES} (letters A..Z), got {self.candidates}")
        if self.forget_users is None and not 0.0 < self.forget_fraction < 1.0:
            raise InputError(f"--forget-fraction must be strictly between 0 and 1, got {self.forget_fraction}")
        if self.forget_users is not None and not self.forget_users:
            raise InputError("--forget-users is empty")
        if self.preset not in PRESETS:
            raise InputError(f"--preset must be one of {', '.join(PRESETS)}, got {self.preset!r}")
        if self.seed < 0:
            raise InputError(f"--seed must be non-negative, got {self.seed}")

    def as_dict(self) -> dict:
        return {
            "history": self.history,
            "candidates": self.candidates,
            "forget_fraction": None if self.forget_users is not None else self.forget_fraction,
            "forget_users": None if self.forget_users is None else list(self.forget_users),
            "preset": self.preset,
            "with_attributes": self.with_attributes,
            "seed": self.seed,
        }


@dataclass
class PreparedMovieLens:
    """Everything ``prepare_movielens`` built: the record lists, the catalogue and the counts.

    ``forget`` and ``retain`` hold the same record objects as ``train`` (split by user).
    ``manifest`` gains its ``files`` section (sizes and SHA-256) once written.
    """

    train: list[dict]
    forget: list[dict]
    retain: list[dict]
    holdout: list[dict]
    valid: list[dict]
    items: list[Item]
    forget_user_ids: list[int]
    retain_user_ids: list[int]
    counts: dict[str, int]
    manifest: dict = field(default_factory=dict)

    def records(self, name: str) -> list[dict]:
        """The records of one output file, by its name ("forget.jsonl" or "forget")."""
        return getattr(self, name.removesuffix(".jsonl"))


# ----------------------------------------------------------------------------------------------
# Finding and reading the files


def age_bucket(age: int) -> str:
    """MovieLens-1M's age bucket for an exact age ("under 18", "18-24", ..., "56+")."""
    label = AGE_BUCKETS[0][1]
    for lowest, name in AGE_BUCKETS:
        if age >= lowest:
            label = name
    return label


def recbole_ml100k_dir() -> Path | None:
    """recbole's bundled ``dataset_example/ml-100k`` directory, found without importing recbole."""
    spec = importlib.util.find_spec("recbole")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "dataset_example" / "ml-100k"
        if (candidate / RECBOLE_FILES["ratings"]).is_file():
            return candidate
    return None


def locate_source(source: str | Path | None, *, with_users: bool = False) -> Source:
    """Find the files: ``source`` (or its ``ml-100k`` subdirectory), else recbole's installed copy.

    A directory holding ``u.data`` is GroupLens format, one holding ``ml-100k.inter`` recbole
    format. A missing file is an ``InputError`` naming its path; ``users`` is required only with
    ``with_users``.
    """
    if source is None:
        directory = recbole_ml100k_dir()
        if directory is None:
            raise InputError(
                "MovieLens-100K not found: pass --source DIR (GroupLens's ml-100k folder or recbole's "
                "atomic files), or install recbole's copy with `pip install --no-deps recbole==1.2.1`"
            )
    else:
        directory = Path(source)
        if not directory.is_dir():
            raise InputError(f"{directory}: --source is not a directory")
        if not _has_any(directory) and _has_any(directory / "ml-100k"):
            directory = directory / "ml-100k"
    if (directory / GROUPLENS_FILES["ratings"]).exists():
        fmt, names = "grouplens", GROUPLENS_FILES
    elif (directory / RECBOLE_FILES["ratings"]).exists():
        fmt, names = "recbole", RECBOLE_FILES
    else:
        raise InputError(
            f"{directory / GROUPLENS_FILES['ratings']}: not found (nor {directory / RECBOLE_FILES['ratings']}); "
            "--source must hold GroupLens's u.data/u.item/u.user or recbole's ml-100k.inter/.item/.user"
        )
    roles = ("ratings", "items", "users") if with_users else ("ratings", "items")
    files = {role: directory / names[role] for role in roles}
    for path in files.values():
        if not path.is_file():
            raise InputError(f"{path}: MovieLens file not found")
    return Source(format=fmt, directory=directory, files=files)


def _has_any(directory: Path) -> bool:
    return (directory / GROUPLENS_FILES["ratings"]).exists() or (directory / RECBOLE_FILES["ratings"]).exists()


def _numbered_lines(path: Path, encoding: str, *, header: bool) -> list[tuple[int, str]]:
    """(1-based line number, text) of the non-blank lines, without line endings or the header.

    Lines are split on LF only (Latin-1 text may hold U+0085, which ``splitlines`` would split on).
    """
    try:
        text = path.read_bytes().decode(encoding)
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not {encoding} ({exc.reason} at byte {exc.start})") from None
    lines = [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), start=1) if line.strip()]
    return lines[1:] if header else lines


def _fields(path: Path, lineno: int, line: str, sep: str, count: int) -> list[str]:
    parts = line.split(sep)
    if len(parts) < count:
        raise InputError(f"{path}:{lineno}: expected {count} fields separated by {sep!r}, got {len(parts)}")
    return parts


def _int(path: Path, lineno: int, value: str, name: str) -> int:
    try:
        return int(float(value)) if "." in value else int(value)
    except ValueError:
        raise InputError(f"{path}:{lineno}: field '{name}' is not a number: {value!r}") from None


def _read_ratings(path: Path, fmt: str) -> list[tuple[int, int, int, int]]:
    ratings = []
    for lineno, line in _numbered_lines(path, "utf-8", header=fmt == "recbole"):  # recbole: a typed header
        u, i, r, t = _fields(path, lineno, line, "\t", 4)[:4]
        ratings.append(
            (_int(path, lineno, u, "user_id"), _int(path, lineno, i, "item_id"), _int(path, lineno, r, "rating"),
             _int(path, lineno, t, "timestamp"))
        )  # fmt: skip
    if not ratings:
        raise InputError(f"{path}: no ratings")
    return ratings


def _year_of(title: str) -> str:
    years = _YEAR_IN_TITLE.findall(title)
    return years[-1] if years else ""


def _read_items(path: Path, fmt: str) -> dict[int, Item]:
    items: dict[int, Item] = {}
    if fmt == "grouplens":
        # item id | title | release date | video release date | IMDb URL | 19 genre flags; Latin-1.
        for lineno, line in _numbered_lines(path, "latin-1", header=False):
            parts = _fields(path, lineno, line, "|", 5 + len(GENRES))
            item_id = _int(path, lineno, parts[0], "item_id")
            title = parts[1].strip()
            flags = parts[5 : 5 + len(GENRES)]
            genres = tuple(g for g, flag in zip(GENRES, flags) if flag.strip() == "1")
            items[item_id] = Item(item_id, title, _year_of(title), genres)
    else:
        # item_id, movie_title (year cut off), release_year, class (space separated); UTF-8.
        # recbole spells GroupLens's "unknown" title and year as "unkonwn"; both are mapped back.
        for lineno, line in _numbered_lines(path, "utf-8", header=True):
            parts = _fields(path, lineno, line, "\t", 4)
            item_id = _int(path, lineno, parts[0], "item_id")
            name = _unkonwn(parts[1].strip())
            year = _unkonwn(parts[2].strip())
            title = name if year in ("", "unknown") else f"{name} ({year})"
            tokens = set(parts[3].split())
            genres = tuple(g for g in GENRES if g in tokens)
            items[item_id] = Item(item_id, title, _year_of(title), genres)
    return items


def _unkonwn(value: str) -> str:
    return "unknown" if value == "unkonwn" else value


def _read_users(path: Path, fmt: str) -> dict[int, User]:
    users: dict[int, User] = {}
    if fmt == "grouplens":
        sep, lines = "|", _numbered_lines(path, "latin-1", header=False)
    else:
        sep, lines = "\t", _numbered_lines(path, "utf-8", header=True)
    for lineno, line in lines:
        parts = _fields(path, lineno, line, sep, 4)
        user_id = _int(path, lineno, parts[0], "user_id")
        users[user_id] = User(user_id, _int(path, lineno, parts[1], "age"), parts[2].strip(), parts[3].strip())
    return users


def load_movielens(source: Source) -> MovieLensData:
    """Read the files of ``source`` into the canonical tables (users only if their file is given)."""
    ratings = _read_ratings(source.files["ratings"], source.format)
    items = _read_items(source.files["items"], source.format)
    users = _read_users(source.files["users"], source.format) if "users" in source.files else None
    unknown = sorted({i for _, i, _, _ in ratings} - items.keys())
    if unknown:
        raise InputError(f"{source.files['ratings']}: item ids missing from {source.files['items']}: {_short(unknown)}")
    if users is not None:
        missing = sorted({u for u, _, _, _ in ratings} - users.keys())
        if missing:
            raise InputError(f"{source.files['ratings']}: user ids missing from {source.files['users']}: {_short(missing)}")
    return MovieLensData(ratings=ratings, items=items, users=users, source=source)


def _short(values: Sequence[object], limit: int = 20) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f", ... ({len(values)} in all)" if len(values) > limit else "")


# ----------------------------------------------------------------------------------------------
# The protocol (pure functions: no I/O)


def k_core(ratings: Sequence[tuple[int, int, int, int]], k: int = CORE) -> list[tuple[int, int, int, int]]:
    """Iterative k-core: drop users and items with fewer than ``k`` ratings until nothing changes."""
    kept = list(ratings)
    while True:
        per_user = Counter(r[0] for r in kept)
        per_item = Counter(r[1] for r in kept)
        nxt = [r for r in kept if per_user[r[0]] >= k and per_item[r[1]] >= k]
        if len(nxt) == len(kept):
            return kept
        kept = nxt


def user_sequences(ratings: Iterable[tuple[int, int, int, int]]) -> dict[int, list[int]]:
    """Each user's item ids sorted by (timestamp, item_id), users in ascending id order."""
    per_user: dict[int, list[tuple[int, int]]] = {}
    for user, item, _rating, timestamp in ratings:
        per_user.setdefault(user, []).append((timestamp, item))
    return {user: [item for _, item in sorted(per_user[user])] for user in sorted(per_user)}


def choose_forget_users(user_ids: Sequence[int], fraction: float, seed: int) -> list[int]:
    """The first round(fraction * |U|) of a seeded permutation of the sorted user ids, sorted.

    ``round`` is Python's (half to even). At least one user is forgotten and one retained.
    """
    users = np.array(sorted(user_ids), dtype=np.int64)
    count = round(fraction * len(users))
    if not 1 <= count < len(users):
        raise InputError(
            f"--forget-fraction {fraction} selects {count} of {len(users)} users; at least one user must be "
            "forgotten and one retained"
        )
    order = np.random.default_rng(seed).permutation(users)
    return sorted(int(u) for u in order[:count])


def record_rng(seed: int, user_id: int, position: int) -> np.random.Generator:
    """The generator of the record whose target is at ``position`` of ``user_id``'s sequence."""
    return np.random.default_rng([seed, _CANDIDATE_STREAM, user_id, position])


def candidate_pool(rng: np.random.Generator, target: int, unrated: np.ndarray, size: int) -> list[int]:
    """``size - 1`` negatives drawn without replacement from ``unrated``, plus the target, shuffled."""
    negatives = rng.choice(unrated, size=size - 1, replace=False)
    pool = np.append(negatives, target)[rng.permutation(size)]
    return [int(i) for i in pool]


def format_input(history: Sequence[int], pool: Sequence[int], items: dict[int, Item]) -> str:
    """The record's ``input``: numbered history titles, then the lettered candidate titles."""
    lines = ["Watch history (oldest first):"]
    lines += [f"{n}. {items[i].title}" for n, i in enumerate(history, start=1)]
    lines += ["", "Candidate pool:"]
    lines += [f"{LETTERS[k]}. {items[i].title}" for k, i in enumerate(pool)]
    return "\n".join(lines)


def make_record(
    user_id: int,
    sequence: Sequence[int],
    position: int,
    *,
    unrated: np.ndarray,
    items: dict[int, Item],
    options: PrepareOptions,
    user: User | None = None,
) -> dict:
    """One record: history = the H items before ``position``, target = ``sequence[position]``."""
    target = sequence[position]
    history = list(sequence[max(0, position - options.history) : position])
    pool = candidate_pool(record_rng(options.seed, user_id, position), target, unrated, options.candidates)
    letters = list(LETTERS[: options.candidates])
    record = {
        "id": f"u{user_id}-t{position}",
        "user_id": user_id,
        "instruction": INSTRUCTION,
        "input": format_input(history, pool, items),
        "output": letters[pool.index(target)],
        "candidates": letters,
        "candidate_items": pool,
        "history_items": history,
    }
    if user is not None:
        record["gender"] = user.gender
        record["age_bucket"] = user.age_bucket
        record["occupation"] = user.occupation
    return record


def train_positions(length: int, preset: str) -> range:
    """Target positions of the train samples of a user with ``length`` ratings in all.

    train = sequence[:length-2]; targets are train[1:], or its last 2 with the bench preset.
    """
    n_train = length - 2
    first = max(1, n_train - 2) if preset == "bench" else 1
    return range(first, n_train)


def build(data: MovieLensData, options: PrepareOptions) -> PreparedMovieLens:
    """Run the protocol on loaded data; pure (no I/O)."""
    options.validate()
    core = k_core(data.ratings)
    if not core:
        raise InputError(f"{data.source.files['ratings']}: nothing is left after the {CORE}-core filter")
    sequences = user_sequences(core)
    catalogue = np.array(sorted({r[1] for r in core}), dtype=np.int64)
    user_ids = list(sequences)

    if options.forget_users is not None:
        unknown = sorted(set(options.forget_users) - set(user_ids))
        if unknown:
            raise InputError(f"--forget-users: unknown user ids (not in the data after the {CORE}-core): {_short(unknown)}")
        forget_ids = sorted(set(options.forget_users))
        if len(forget_ids) == len(user_ids):
            raise InputError("--forget-users names every user; at least one user must be retained")
    else:
        forget_ids = choose_forget_users(user_ids, options.forget_fraction, options.seed)
    forget_set = set(forget_ids)

    train: list[dict] = []
    forget: list[dict] = []
    retain: list[dict] = []
    holdout: list[dict] = []
    valid: list[dict] = []
    n_train_samples = 0
    for user_id, sequence in sequences.items():
        unrated = np.setdiff1d(catalogue, np.array(sequence, dtype=np.int64))
        if len(unrated) < options.candidates - 1:
            raise InputError(
                f"--candidates {options.candidates}: user {user_id} has only {len(unrated)} unrated items "
                f"to draw {options.candidates - 1} negatives from"
            )
        user = data.users[user_id] if options.with_attributes and data.users is not None else None
        build_one = functools.partial(
            make_record, user_id, sequence, unrated=unrated, items=data.items, options=options, user=user
        )
        n_train_samples += len(sequence) - 3
        records = [build_one(p) for p in train_positions(len(sequence), options.preset)]
        train += records
        (forget if user_id in forget_set else retain).extend(records)
        valid.append(build_one(len(sequence) - 2))
        holdout.append(build_one(len(sequence) - 1))

    counts = {
        "raw_users": len({r[0] for r in data.ratings}),
        "raw_items": len({r[1] for r in data.ratings}),
        "raw_ratings": len(data.ratings),
        "users": len(user_ids),
        "items": len(catalogue),
        "ratings": len(core),
        "train_samples": n_train_samples,
        "train_records": len(train),
        "forget_users": len(forget_ids),
        "retain_users": len(user_ids) - len(forget_ids),
        "forget_records": len(forget),
        "retain_records": len(retain),
        "holdout_records": len(holdout),
        "valid_records": len(valid),
    }
    return PreparedMovieLens(
        train=train,
        forget=forget,
        retain=retain,
        holdout=holdout,
        valid=valid,
        items=[data.items[int(i)] for i in catalogue],
        forget_user_ids=forget_ids,
        retain_user_ids=[u for u in user_ids if u not in forget_set],
        counts=counts,
    )


# ----------------------------------------------------------------------------------------------
# Output


def jsonl_lines(records: Iterable[dict]) -> Iterator[bytes]:
    """The exact bytes of each JSONL line: compact separators, UTF-8, keys in record order, LF."""
    for record in records:
        yield (json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")


def items_tsv_lines(items: Iterable[Item]) -> Iterator[bytes]:
    """``items.tsv``: a header, then item_id, title, year and genres ("|"-joined), tab separated."""
    yield b"item_id\ttitle\tyear\tgenres\n"
    for item in items:
        yield f"{item.item_id}\t{item.title}\t{item.year}\t{'|'.join(item.genres)}\n".encode()


def _write_lines(path: Path, lines: Iterable[bytes]) -> dict:
    digest = hashlib.sha256()
    size = 0
    with path.open("wb") as handle:
        for line in lines:
            handle.write(line)
            digest.update(line)
            size += len(line)
    return {"bytes": size, "sha256": digest.hexdigest()}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(path: Path, manifest: dict) -> None:
    """``manifest.json``: indented, UTF-8, non-ASCII kept as is."""
    path.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_manifest(prepared: PreparedMovieLens, data: MovieLensData, options: PrepareOptions) -> dict:
    """The manifest without its ``files`` section: what was read, with which options, what came out."""
    return {
        "schema": "ucan-prepare-movielens/1",
        "tool": f"ucan-cli {__version__}",
        "dataset": "MovieLens-100K",
        "protocol": "SPEC section 5 (LlamaRec style); see docs/data.md",
        "seed": options.seed,
        "rng": "forget users: numpy default_rng(seed).permutation(sorted user ids); "
        "record with target at position p of user u: numpy default_rng([seed, 1, u, p])",
        "options": options.as_dict(),
        "source": {
            "format": data.source.format,
            "files": {path.name: file_sha256(path) for path in data.source.files.values()},
        },
        "counts": dict(prepared.counts),
        "forget_user_ids": list(prepared.forget_user_ids),
    }


def write_prepared(
    prepared: PreparedMovieLens, out_dir: str | Path, *, force: bool = False, protected: Iterable[Path] = ()
) -> Path:
    """Write the output files and ``manifest.json`` atomically (temp dir beside ``out_dir``, rename)."""
    out_dir = Path(out_dir)
    with atomic_output_dir(out_dir, force=force, protected=protected) as tmp:
        files = {}
        for name in OUTPUT_FILES:
            if name == "items.tsv":
                files[name] = _write_lines(tmp / name, items_tsv_lines(prepared.items))
            else:
                records = prepared.records(name)
                files[name] = {"records": len(records), **_write_lines(tmp / name, jsonl_lines(records))}
        prepared.manifest["files"] = files
        write_manifest(tmp / "manifest.json", prepared.manifest)
    return out_dir


def prepare_movielens(
    options: PrepareOptions,
    *,
    source: str | Path | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
    dry_run: bool = False,
) -> PreparedMovieLens:
    """Locate and load MovieLens-100K, run the protocol, and (unless ``dry_run``) write ``out_dir``.

    The output directory is checked before any work, so a refusal (it exists and ``force`` is off,
    or it overlaps the source) costs nothing. Returns the records and counts either way.
    """
    options.validate()
    located = locate_source(source, with_users=options.with_attributes)
    if not dry_run:
        if out_dir is None:
            raise InputError("-o/--output is required (or pass --dry-run)")
        check_output_dir(out_dir, force=force, protected=[located.directory])
    data = load_movielens(located)
    prepared = build(data, options)
    prepared.manifest = make_manifest(prepared, data, options)
    if not dry_run:
        assert out_dir is not None
        write_prepared(prepared, out_dir, force=force, protected=[located.directory])
    return prepared
