"""The MovieLens world of ``ucan demo --data movielens``: real users, a tiny model, built locally.

``build_movielens_world(seed, scenario, out_dir)`` writes a world directory with the layout of
the synthetic one (``ucan_cli.demo.build``):

    base/            a tiny Llama (locally trained tokenizer) trained on the public users
    original/        LoRA trained on forget + retain users until it memorizes them
    reference/       LoRA trained on retain users only (what retraining without them gives)
    public.jsonl forget.jsonl retain.jsonl holdout.jsonl
    world.json       data label, group definition, counts, memorization numbers, build times

``ensure_movielens_world(seed, scenario)`` returns it from the user cache dir, building it on
the first call (a few minutes on two CPU cores). MovieLens-100K may not be redistributed, so
nothing here is shipped: the data come from recbole's installed copy (or ``source``), and the
records and weights live only in the cache.

The data: ``prepare movielens --preset bench`` (SPEC section 5: 5-core, leave-one-out, the last
2 train prefixes per user, C = 20 candidates = the target + 19 items the user never rated), in
item-token form: every movie is one token ``m<item id>``, the prompt is the history of the last
10 movies as tokens, the response is the next movie's token, and ``candidates`` are the 20
tokens of the protocol's pool, so one forward pass scores them all. The letter form (the
lettered pool in the prompt, a letter as the response) was measured with the same model and a
40-epoch schedule: 1.7x the time, and the original adapter reached forget Recall@1 0.29 where
the item-token form reached 0.88 (its holdout at chance); see docs/movielens-demo.md.

Who is who (``docs/movielens-demo.md`` gives the evidence for each choice):

- The group: users whose train ratings lean most on Mystery films (the top quarter by the share
  of their train items tagged Mystery). Of all the user attributes (gender, age bucket,
  occupation) and genre-share clusters measured, it separates the items of the records most
  from other users; the attributes barely do.
- The public slice: 20% of the users, drawn from outside the group, train the base (format and
  catalogue), so what the adapters know about the group comes from the fine-tuning data.
- Everyone else is an adapter user: their bench records train the original adapter, and their
  test item is their held-out record, never trained on.
- Scenario ``group`` forgets the group's adapter users; ``random`` forgets as many adapter users
  drawn at random in proportion from members and non-members, so forget and retain differ only
  by chance and U-CAN is expected to decline. Users, records, base and original adapter are the
  same in both scenarios; only the request, hence the reference, differs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ucan_cli.demo import cache
from ucan_cli.demo.build import BuildConfig
from ucan_cli.errors import InputError, UcanRuntimeError
from ucan_cli.progress import ProgressFactory
from ucan_cli.training import TrainConfig

SCENARIOS = ("group", "random")
DATA_LABEL = "movielens-100k bench preset"
INSTRUCTION = "Which movie will this user watch next?"
GROUP_GENRE = "Mystery"
GROUP_QUANTILE = 0.75
PUBLIC_SHARE = 0.2
MEMBER, OTHER = "member", "other"
SET_NAMES = ("public", "forget", "retain", "holdout")
ITEM_PREFIX = "m"
SOURCE_TAG = "movielens-100k"

# Stream tags of the world's own seeded draws (prepare's candidate draws use stream 1).
_PUBLIC_STREAM, _RANDOM_STREAM, _SAMPLE_STREAM = 101, 102, 103


@dataclass(frozen=True)
class MovieLensSize:
    """How much of MovieLens a world uses and how its models are trained.

    ``default`` is the demo (every user); ``small`` takes a seeded sample of the users, with the
    group's share kept, and shorter schedules, so that a test builds it in well under a minute.
    """

    n_public_users: int | None  # None: round(PUBLIC_SHARE * users), drawn from non-members
    n_adapter_users: int | None  # None: every user who is not public
    public_stride: int  # public records: every stride-th target position, from each user's last
    history: int
    candidates: int
    build: BuildConfig


def _lora(epochs: int, batch_size: int) -> TrainConfig:
    return TrainConfig(
        target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
        r=8, alpha=16, epochs=epochs, lr=6e-3, batch_size=batch_size, max_length=64,
    )


SIZES: dict[str, MovieLensSize] = {
    "default": MovieLensSize(
        n_public_users=None, n_adapter_users=None, public_stride=10, history=10, candidates=20,
        build=BuildConfig(hidden=64, layers=2, heads=4, base_epochs=20, base_lr=3e-3, base_batch=32, lora=_lora(60, 32)),
    ),
    "small": MovieLensSize(
        n_public_users=40, n_adapter_users=100, public_stride=10, history=10, candidates=20,
        build=BuildConfig(hidden=64, layers=2, heads=4, base_epochs=12, base_lr=3e-3, base_batch=32, lora=_lora(60, 16)),
    ),
}


# ------------------------------------------------------------------------------ the records


def item_token(item_id: int) -> str:
    """The single token that names a movie: ``m`` + its MovieLens item id (``m50``)."""
    return f"{ITEM_PREFIX}{item_id}"


def genre_share(sequence: Sequence[int], genres: dict[int, tuple[str, ...]], genre: str) -> float:
    """Share of a user's train items (all but the last two, SPEC section 5) tagged ``genre``."""
    train = sequence[:-2]
    return sum(genre in genres[i] for i in train) / len(train) if train else 0.0


def taste_group(
    sequences: dict[int, list[int]], genres: dict[int, tuple[str, ...]], genre: str = GROUP_GENRE,
    quantile: float = GROUP_QUANTILE,
) -> tuple[frozenset[int], float]:
    """The users whose train items lean most on ``genre``: share >= its ``quantile`` over all users.

    Returns the members and the threshold (numpy's default linear quantile). Only train items
    count, so the valid and test items (the held-out records) never define membership.
    """
    users = sorted(sequences)
    shares = np.array([genre_share(sequences[u], genres, genre) for u in users])
    threshold = float(np.quantile(shares, quantile))
    return frozenset(u for u, s in zip(users, shares) if s >= threshold), threshold


def _sample(rng: np.random.Generator, users: Sequence[int], n: int) -> list[int]:
    """``n`` of ``users`` (sorted first), drawn without replacement; sorted."""
    pool = np.array(sorted(users), dtype=np.int64)
    return sorted(int(u) for u in rng.choice(pool, size=min(n, len(pool)), replace=False))


def _stratified(rng: np.random.Generator, members: Sequence[int], others: Sequence[int], n: int) -> list[int]:
    """``n`` users drawn in proportion from members and others, so both keep their share."""
    n_members = round(n * len(members) / (len(members) + len(others)))
    return sorted(_sample(rng, members, n_members) + _sample(rng, others, n - n_members))


def _item_record(record: dict, member: bool) -> dict:
    """A protocol record (letters, item ids) in item-token form: tokens in, a token out."""
    target = record["candidate_items"][record["candidates"].index(record["output"])]
    return {
        "id": record["id"],
        "user_id": record["user_id"],
        "instruction": INSTRUCTION,
        "input": "History: " + " ".join(item_token(i) for i in record["history_items"]),
        "output": item_token(target),
        "candidates": [item_token(i) for i in record["candidate_items"]],
        "group": MEMBER if member else OTHER,
        "source": SOURCE_TAG,
    }


@dataclass
class MovieLensWorld:
    """The records of one MovieLens world and who is who (pure data; no models)."""

    seed: int
    scenario: str
    size: str
    items: tuple[int, ...]  # the post-5-core catalogue
    members: frozenset[int]  # the taste group, over all users
    threshold: float
    public_users: tuple[int, ...]
    forget_users: frozenset[int]
    retain_users: frozenset[int]
    public: list[dict]
    forget: list[dict]
    retain: list[dict]
    holdout: list[dict]
    source: dict = field(default_factory=dict)
    genres: dict[int, tuple[str, ...]] = field(default_factory=dict, repr=False)

    def sets(self) -> dict[str, list[dict]]:
        """The record sets by file stem: public, forget, retain, holdout."""
        return {"public": self.public, "forget": self.forget, "retain": self.retain, "holdout": self.holdout}

    def group_definition(self) -> dict:
        """What the group is, how it was chosen, and how it splits the sets (for world.json)."""
        adapter = self.forget_users | self.retain_users
        return {
            "kind": "taste cluster",
            "genre": GROUP_GENRE,
            "rule": f"users whose share of train items tagged {GROUP_GENRE} is at least its {GROUP_QUANTILE:g} "
            "quantile over all users (train items: all but each user's last two ratings)",
            "threshold": round(self.threshold, 6),
            "n_members_all_users": len(self.members),
            "n_members_adapter_users": len(self.members & adapter),
            "n_members_public_users": len(self.members & set(self.public_users)),
            "why": "of gender, age bucket, occupation and 18 genre-share clusters, it separates its users' "
            "record items most from other users' (docs/movielens-demo.md)",
        }

    def describe(self) -> dict:
        """A JSON-ready description for the world manifest (counts and shares)."""

        def member_share(users: frozenset[int]) -> float:
            return round(len(users & self.members) / len(users), 4) if users else 0.0

        def genre_target_share(rows: list[dict]) -> float:
            flags = [GROUP_GENRE in self.genres[int(r["output"][len(ITEM_PREFIX):])] for r in rows]
            return round(sum(flags) / len(flags), 4) if flags else 0.0

        return {
            "data": DATA_LABEL,
            "seed": self.seed,
            "scenario": self.scenario,
            "size": self.size,
            "record_form": "item tokens: history and candidates are single-token movie ids (m<item id>)",
            "history": SIZES[self.size].history,
            "candidates": SIZES[self.size].candidates,
            "n_items": len(self.items),
            "n_public_users": len(self.public_users),
            "n_forget_users": len(self.forget_users),
            "n_retain_users": len(self.retain_users),
            "forget_member_share": member_share(self.forget_users),
            "retain_member_share": member_share(self.retain_users),
            "records": {name: len(rows) for name, rows in self.sets().items()},
            "group_genre_target_share": {name: genre_target_share(rows) for name, rows in self.sets().items()},
            "source": self.source,
        }


def _check_choice(scenario: str, size: str) -> None:
    if scenario not in SCENARIOS:
        raise InputError(f"--scenario: unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    if size not in SIZES:
        raise InputError(f"unknown world size {size!r}; one of {', '.join(SIZES)}")


def movielens_world(
    seed: int = 0, scenario: str = "group", size: str = "default", *, source: str | Path | None = None
) -> MovieLensWorld:
    """Read MovieLens-100K (``source`` or recbole's copy) and make the world's record sets.

    The adapter users' records are ``prepare movielens --preset bench --seed SEED`` (train
    records; holdout = the test item), converted to item-token form. Public records come from
    the same protocol (same per-record candidate draws) at every ``public_stride``-th position of
    each public user's train sequence, so the base sees the catalogue and the format.
    """
    from ucan_cli.prepare.movielens import PrepareOptions, candidate_pool, k_core, load_movielens, locate_source
    from ucan_cli.prepare.movielens import build as run_protocol
    from ucan_cli.prepare.movielens import make_manifest, record_rng, user_sequences

    _check_choice(scenario, size)
    p = SIZES[size]
    options = PrepareOptions(history=p.history, candidates=p.candidates, preset="bench", seed=seed)
    data = load_movielens(locate_source(source))
    prepared = run_protocol(data, options)
    sequences = user_sequences(k_core(data.ratings))
    genres = {item.item_id: item.genres for item in prepared.items}
    members, threshold = taste_group(sequences, genres)
    users = sorted(sequences)
    others = [u for u in users if u not in members]

    n_public = p.n_public_users if p.n_public_users is not None else round(PUBLIC_SHARE * len(users))
    public_users = _sample(np.random.default_rng([seed, _PUBLIC_STREAM]), others, n_public)
    public_set = set(public_users)
    rest = [u for u in users if u not in public_set]
    if p.n_adapter_users is not None:
        rest = _stratified(
            np.random.default_rng([seed, _SAMPLE_STREAM]), [u for u in rest if u in members],
            [u for u in rest if u not in members], p.n_adapter_users,
        )
    adapter_members = [u for u in rest if u in members]
    if scenario == "group":
        forget_users = frozenset(adapter_members)
    else:
        forget_users = frozenset(_stratified(
            np.random.default_rng([seed, _RANDOM_STREAM]), adapter_members,
            [u for u in rest if u not in members], len(adapter_members),
        ))  # fmt: skip
    adapter = frozenset(rest)

    forget = [_item_record(r, r["user_id"] in members) for r in prepared.train if r["user_id"] in forget_users]
    retain = [
        _item_record(r, r["user_id"] in members)
        for r in prepared.train if r["user_id"] in adapter and r["user_id"] not in forget_users
    ]  # fmt: skip
    holdout = [_item_record(r, r["user_id"] in members) for r in prepared.holdout if r["user_id"] in adapter]

    catalogue = np.array([item.item_id for item in prepared.items], dtype=np.int64)
    public: list[dict] = []
    for user in public_users:
        sequence = sequences[user]
        unrated = np.setdiff1d(catalogue, np.array(sequence, dtype=np.int64))
        n_train = len(sequence) - 2
        for position in sorted(range(n_train - 1, 0, -p.public_stride)):
            pool = candidate_pool(record_rng(seed, user, position), sequence[position], unrated, p.candidates)
            history = sequence[max(0, position - p.history) : position]
            public.append({
                "id": f"u{user}-t{position}",
                "user_id": user,
                "instruction": INSTRUCTION,
                "input": "History: " + " ".join(item_token(i) for i in history),
                "output": item_token(sequence[position]),
                "candidates": [item_token(i) for i in pool],
                "group": OTHER,
                "source": SOURCE_TAG,
            })  # fmt: skip
    return MovieLensWorld(
        seed=seed, scenario=scenario, size=size, items=tuple(int(i) for i in catalogue), members=members,
        threshold=threshold, public_users=tuple(public_users), forget_users=forget_users,
        retain_users=adapter - forget_users, public=public, forget=forget, retain=retain, holdout=holdout,
        source=make_manifest(prepared, data, options)["source"], genres=genres,
    )


# ------------------------------------------------------------------------------ tokenizer and base


def build_movielens_tokenizer(items: Sequence[int]):
    """A BPE tokenizer in which every template word and every movie token is one token.

    The synthetic world's construction (``demo.build.item_tokenizer``):
    SentencePiece-style word boundaries and an unlimited BPE vocabulary trained on the template
    and the catalogue merge every word completely, so a prompt of 10 movies is 22 tokens and a
    candidate is scored in one forward pass. Checked here: a movie that is not one token is a
    runtime error rather than silently slower, differently scored candidates.
    """
    from ucan_cli.demo.build import item_tokenizer

    tokens = [item_token(i) for i in items]
    tokenizer = item_tokenizer(tokens, INSTRUCTION)
    split = [t for t in tokens if len(tokenizer(t, add_special_tokens=False)["input_ids"]) != 1]
    if split:
        raise UcanRuntimeError(f"the MovieLens tokenizer splits {len(split)} movie tokens (e.g. {split[0]!r})")
    return tokenizer


# ------------------------------------------------------------------------------ the world dir


def _repo_root() -> Path | None:
    """The source checkout this package runs from, if any (where MovieLens output must never go)."""
    root = Path(__file__).resolve().parents[3]
    return root if (root / ".git").exists() else None


def _check_outside_repo(out: Path) -> None:
    root = _repo_root()
    resolved = out.resolve()
    if root is not None and (resolved == root or root in resolved.parents):
        raise InputError(
            f"{out}: inside the ucan-cli checkout {root}; MovieLens-100K may not be redistributed, so its "
            "records and the weights trained on them are built only outside it (default: the user cache dir)"
        )


def _write_world(
    world: MovieLensWorld, out: Path, *, key: str | None, reuse: Path | None, progress: ProgressFactory | None,
    build: BuildConfig | None = None,
) -> dict:
    """Train and write everything into the empty directory ``out`` with the demo's one world
    builder (``demo.build.build_world_dir``); return the manifest. ``build`` replaces the size's
    model and schedule (``SIZES[size].build``)."""
    from ucan_cli.demo.build import WorldSpec, build_world_dir

    spec = WorldSpec(
        seed=world.seed,
        sets=world.sets(),
        forget_users={str(u) for u in world.forget_users},
        make_tokenizer=lambda: build_movielens_tokenizer(world.items),
        user_order=lambda r: (int(r.user_id or 0), r.id or ""),
        header={
            "data": DATA_LABEL,
            "label": "MovieLens-100K (GroupLens): real users' ratings. Not redistributable: built locally from "
            "your copy, never shipped; do not share this directory.",
        },
        about={"world": world.describe(), "group": world.group_definition()},
    )
    return build_world_dir(spec, out, build or SIZES[world.size].build, progress=progress, measure=True, key=key,
                           reuse=reuse)


# ------------------------------------------------------------------------------ building and the cache


#: The revision of the MovieLens world (its preparation, ``prepare/movielens.py``, and this
#: module's builder): bump it in the same commit as any change that alters its records or
#: weights; the cache then builds afresh. Moving or renaming code needs no bump.
REVISION = "ml2"  # ml2: the base pre-trains with the one builder's loss (sum / tokens, not mean)


def world_name(seed: int, scenario: str, size: str = "default") -> str:
    """The directory name of one world, e.g. ``movielens-default-seed0-group``."""
    return f"movielens-{size}-seed{seed}-{scenario}"


def world_key(seed: int, scenario: str, size: str = "default") -> str:
    """Everything a cached world must match: revision, size, seed, scenario."""
    return cache.versioned_key(world_name(seed, scenario, size), REVISION)


def world_path(seed: int, scenario: str, size: str = "default", root: Path | None = None) -> Path:
    """Where the world of this key lives in the user cache dir (it may not exist yet)."""
    return cache.keyed_path(world_key(seed, scenario, size), root)


def build_movielens_world(
    seed: int = 0,
    scenario: str = "group",
    out_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
    *,
    size: str = "default",
    source: str | Path | None = None,
    reuse: str | Path | None = None,
    force: bool = False,
    build: BuildConfig | None = None,
) -> Path:
    """Build the MovieLens world of (seed, scenario) into ``out_dir`` and return its path.

    ``out_dir`` None builds into the user cache dir (``world_path``), replacing what is there.
    An existing ``out_dir`` is refused unless ``force``; a directory inside the ucan-cli checkout
    is always refused (nothing derived from MovieLens may land in the repository). The world is
    written into a temporary sibling and renamed into place, so a failed build leaves nothing.
    ``reuse`` is a complete world of the same seed and size whose base and original adapter are
    copied instead of trained (neither depends on the scenario). ``build`` replaces the size's model
    and schedule (a wider model: ``benchmarks/width.py``; the cache key does not record it, so
    give such a world its own ``out_dir``). ``source`` is a MovieLens-100K
    folder; without it recbole's installed copy is used (``InputError`` when neither exists).
    Training runs on one torch thread: a tiny model is overhead-bound, and it leaves a core free.
    """
    from ucan_cli.runtime.threads import torch_threads

    target = Path(out_dir) if out_dir is not None else world_path(seed, scenario, size)
    _check_outside_repo(target)
    if out_dir is not None and target.exists() and not force:
        raise InputError(f"{target}: already exists; pass --force to replace it")
    world = movielens_world(seed, scenario, size, source=source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        with torch_threads(1):  # a tiny model is overhead-bound (ucan_cli.runtime.threads)
            _write_world(world, tmp, key=world_key(seed, scenario, size), reuse=Path(reuse) if reuse else None,
                         progress=progress, build=build)  # fmt: skip
        cache.install(tmp, target, replace=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def ensure_movielens_world(
    seed: int = 0,
    scenario: str = "group",
    rebuild: bool = False,
    *,
    size: str = "default",
    root: Path | None = None,
    source: str | Path | None = None,
    progress: ProgressFactory | None = None,
    on_build=None,
) -> tuple[Path, str]:
    """A complete MovieLens world for (seed, scenario, size) from the cache, built if needed.

    Returns ``(path, how)``, ``how`` being ``cached`` or ``built``. The cache key holds the world's
    revision (``REVISION``), so a stale world is never reused. A build reuses the
    base and original adapter of the same seed's other scenario when the cache holds it (then
    only the reference is trained). ``rebuild`` ignores the cache and replaces it.
    ``on_build(note)`` is called with a one-line note before a build starts (a cold build takes
    minutes). Nothing is ever shipped: MovieLens-100K may not be redistributed.
    """
    from ucan_cli.prepare.movielens import locate_source

    _check_choice(scenario, size)
    key = world_key(seed, scenario, size)
    target = world_path(seed, scenario, size, root)
    if not rebuild and cache.is_complete(target, key):
        return target, "cached"
    locate_source(source)  # no MovieLens copy: the InputError comes before any note or work
    reuse = None
    if not rebuild:
        for other in (s for s in SCENARIOS if s != scenario):
            sibling = world_path(seed, other, size, root)
            if cache.is_complete(sibling, world_key(seed, other, size)):
                reuse = sibling
                break
    if on_build is not None:
        what = "the reference adapter" if reuse is not None else "the base model and both adapters"
        on_build(f"building the MovieLens world (seed {seed}, {scenario}): training {what} into {target}")
    build_movielens_world(seed, scenario, target, progress, size=size, source=source, reuse=reuse, force=True)
    return target, "built"
