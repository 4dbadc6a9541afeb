"""The synthetic world of ``ucan demo``: a catalogue, users with tastes, and their records.

Pure and seeded: ``generate_world(seed, scenario, size)`` returns the same records on every
machine and every Python version (only ``random.Random.random`` is used to draw, from streams
seeded by SHA-256, so no library's sampling algorithm can change the outcome).

How users behave (the paper's motivating case, scaled down to seconds of CPU):

- Shared tastes: every item has a popularity; everyone sometimes picks a popular item.
- Genre tastes: each user prefers two of the general genres.
- Group tastes: users who share a sensitive attribute (``group == "member"``) spend about half
  of their picks in a genre of their own that other users essentially never pick.
- Individual habits: each user has two favourite items that come back now and then.

Records follow the MovieLens protocol of SPEC section 5 in miniature: each user's sequence,
prefixes of it as training records (history of the last H items -> next item), and the last
item as the held-out record. Every record is Alpaca with ``candidates``: the target plus
negatives the user never picked, all single-token item ids such as ``i017``.

Scenarios choose the deletion request from the same users: ``group`` forgets the group's
members (a quarter of the users), ``random`` forgets a random quarter drawn in proportion from
every taste profile (see ``_representative_sample``). The users, their records
and the original adapter's training data are identical in both; only who asks to be forgotten
differs. In ``random`` the forget users are like the retain users, so U-CAN should find nothing
(SPEC section 3, "When it works").
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

SCENARIOS = ("group", "random")
INSTRUCTION = "Which item will this user pick next?"
MEMBER, OTHER = "member", "other"


@dataclass(frozen=True)
class WorldSize:
    """How big a world is. ``default`` is the demo; ``small`` builds in seconds for tests."""

    n_genres: int
    items_per_genre: int
    n_group_items: int
    n_public_users: int
    n_users: int
    group_share: float
    public_group_share: float
    seq_len: tuple[int, int]
    train_per_user: int
    public_per_user: int
    history: int
    n_candidates: int


SIZES: dict[str, WorldSize] = {
    "default": WorldSize(
        n_genres=6, items_per_genre=16, n_group_items=24, n_public_users=320, n_users=200,
        group_share=0.25, public_group_share=0.0, seq_len=(13, 17), train_per_user=4, public_per_user=3, history=10,
        n_candidates=20,
    ),
    "small": WorldSize(
        n_genres=4, items_per_genre=8, n_group_items=12, n_public_users=96, n_users=64,
        group_share=0.25, public_group_share=0.0, seq_len=(10, 13), train_per_user=3, public_per_user=3, history=8,
        n_candidates=10,
    ),
}

# Taste mixture: where a pick comes from (shares of fresh picks), and how often a habit returns.
MEMBER_MIX = {"group": 0.55, "genres": 0.30, "popular": 0.15}
OTHER_MIX = {"group": 0.0, "genres": 0.75, "popular": 0.25}
HABIT_RATE = 0.15
N_HABITS = 2
N_FAVOURITE_GENRES = 2
ZIPF = 0.8


@dataclass(frozen=True)
class User:
    """One user: id, whether they share the sensitive attribute, their tastes and picks."""

    id: str
    member: bool
    genres: tuple[str, ...]
    habits: tuple[str, ...]
    sequence: tuple[str, ...]
    public: bool = False


@dataclass(frozen=True)
class World:
    """A generated world: catalogue, users and the record sets the demo writes as JSONL.

    ``public`` trains the base model; the original adapter trains on ``forget + retain`` and
    the reference on ``retain`` only; ``holdout`` holds one never-trained record per forget and
    retain user (its retain part measures generalization utility).
    """

    seed: int
    scenario: str
    size: str
    items: tuple[str, ...]
    genres: dict[str, tuple[str, ...]]
    group_items: tuple[str, ...]
    users: tuple[User, ...]
    forget_users: frozenset[str]
    public: tuple[dict, ...]
    forget: tuple[dict, ...]
    retain: tuple[dict, ...]
    holdout: tuple[dict, ...]
    params: WorldSize = field(repr=False, default=SIZES["default"])

    def sets(self) -> dict[str, tuple[dict, ...]]:
        """The record sets by file stem: public, forget, retain, holdout."""
        return {"public": self.public, "forget": self.forget, "retain": self.retain, "holdout": self.holdout}

    def describe(self) -> dict:
        """A JSON-ready description for the world manifest (counts, shares, how it was made)."""
        adapter_users = [u for u in self.users if not u.public]
        forget = [u for u in adapter_users if u.id in self.forget_users]
        retain = [u for u in adapter_users if u.id not in self.forget_users]
        return {
            "data": "synthetic",
            "seed": self.seed,
            "scenario": self.scenario,
            "size": self.size,
            "n_items": len(self.items),
            "n_group_items": len(self.group_items),
            "n_genres": len(self.genres),
            "n_public_users": sum(u.public for u in self.users),
            "n_forget_users": len(forget),
            "n_retain_users": len(retain),
            "forget_member_share": _share(u.member for u in forget),
            "retain_member_share": _share(u.member for u in retain),
            "records": {name: len(rows) for name, rows in self.sets().items()},
            "group_item_target_share": {
                name: _share(r["output"] in set(self.group_items) for r in rows)
                for name, rows in self.sets().items()
            },
            "taste_mix": {"member": MEMBER_MIX, "other": OTHER_MIX, "habit_rate": HABIT_RATE},
        }


def _share(flags) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def _rng(seed: int, purpose: str) -> random.Random:
    """An independent stream per purpose, so changing one part never reshuffles another."""
    digest = hashlib.sha256(f"ucan-demo/{seed}/{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _below(rng: random.Random, n: int) -> int:
    """A uniform integer in [0, n) from ``random()`` only."""
    return min(int(rng.random() * n), n - 1)


def _shuffled(rng: random.Random, items: Sequence) -> list:
    """Fisher-Yates with ``_below``."""
    out = list(items)
    for i in range(len(out) - 1, 0, -1):
        j = _below(rng, i + 1)
        out[i], out[j] = out[j], out[i]
    return out


def _weighted(rng: random.Random, items: Sequence[str], weights: Sequence[float]) -> str:
    """One item drawn with probability proportional to its weight."""
    total = sum(weights)
    x = rng.random() * total
    acc = 0.0
    for item, w in zip(items, weights):
        acc += w
        if x < acc:
            return item
    return items[-1]


def _catalogue(seed: int, p: WorldSize) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], tuple[str, ...], dict[str, float]]:
    """Item ids, general genres, the group's genre and a Zipf popularity per item.

    Ids are assigned to genres at random, so an id says nothing about its genre.
    """
    rng = _rng(seed, "catalogue")
    n_items = p.n_genres * p.items_per_genre + p.n_group_items
    width = max(3, len(str(n_items - 1)))
    items = tuple(f"i{k:0{width}d}" for k in range(n_items))
    order = _shuffled(rng, items)
    genres = {
        f"g{g}": tuple(sorted(order[g * p.items_per_genre : (g + 1) * p.items_per_genre]))
        for g in range(p.n_genres)
    }
    group_items = tuple(sorted(order[p.n_genres * p.items_per_genre :]))
    popularity: dict[str, float] = {}
    for members in (*genres.values(), group_items):
        for rank, item in enumerate(_shuffled(rng, members)):
            popularity[item] = 1.0 / (rank + 1) ** ZIPF
    return items, genres, group_items, popularity


def _user(rng: random.Random, uid: str, member: bool, public: bool, p: WorldSize, genres, group_items, popularity) -> User:
    """Draw one user's tastes and sequence of picks (fresh picks never repeat; habits do)."""
    names = list(genres)
    favourite = tuple(sorted(_shuffled(rng, names)[:N_FAVOURITE_GENRES]))
    general = [i for g in names for i in genres[g]]
    pools = {
        "group": list(group_items),
        "genres": [i for g in favourite for i in genres[g]],
        "popular": general,
    }
    mix = MEMBER_MIX if member else OTHER_MIX
    length = p.seq_len[0] + _below(rng, p.seq_len[1] - p.seq_len[0] + 1)
    seen: set[str] = set()

    def fresh() -> str:
        source = _weighted(rng, list(mix), list(mix.values()))
        pool = [i for i in pools[source] if i not in seen] or [i for i in general if i not in seen]
        return _weighted(rng, pool, [popularity[i] for i in pool])

    habits = []
    for _ in range(N_HABITS):
        item = fresh()
        seen.add(item)
        habits.append(item)
    sequence = list(habits)
    while len(sequence) < length:
        if rng.random() < HABIT_RATE:
            item = habits[_below(rng, len(habits))]
        else:
            item = fresh()
            seen.add(item)
        sequence.append(item)
    return User(uid, member, favourite, tuple(habits), tuple(sequence), public)


def _representative_sample(rng: random.Random, users: Sequence[User], n: int) -> frozenset[str]:
    """A random sample of ``n`` users drawn in proportion from every taste profile.

    Users are ordered by profile (group membership, favourite genres), randomly within a
    profile, and every (len/n)-th one is taken from a random start. Each profile thus gives
    its share of forget users up to rounding, so the forget set differs from the retain set
    only by chance, as it would for a random request from a large population. A plain random
    draw from a few hundred users can leave, say, 30% members in forget and 23% in retain,
    and that real difference is what U-CAN would then (rightly) find.
    """
    keyed = sorted(((u.member, u.genres, rng.random(), u.id) for u in users))
    step = len(keyed) / n
    start = rng.random() * step
    return frozenset(keyed[min(int(start + k * step), len(keyed) - 1)][3] for k in range(n))


def _record(rng: random.Random, rid: str, user: User, position: int, items, p: WorldSize) -> dict:
    """The record predicting ``user.sequence[position]`` from the H items before it."""
    history = user.sequence[max(0, position - p.history) : position]
    target = user.sequence[position]
    picked = set(user.sequence)
    negatives = [i for i in items if i not in picked]
    candidates = _shuffled(rng, [target, *_shuffled(rng, negatives)[: p.n_candidates - 1]])
    return {
        "id": rid,
        "user_id": user.id,
        "instruction": INSTRUCTION,
        "input": "History: " + " ".join(history),
        "output": target,
        "candidates": candidates,
        "group": MEMBER if user.member else OTHER,
        "source": "synthetic",
    }


def generate_world(seed: int = 0, scenario: str = "group", size: str = "default") -> World:
    """Generate the demo world for ``seed`` and ``scenario`` (``group`` or ``random``).

    ``size`` is ``default`` (the demo) or ``small`` (tests). Users and records do not depend on
    the scenario; only the forget/retain split does.
    """
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; one of {', '.join(SIZES)}")
    p = SIZES[size]
    items, genres, group_items, popularity = _catalogue(seed, p)
    rng = _rng(seed, "users")
    n_members = round(p.group_share * p.n_users)
    member_flags = _shuffled(rng, [True] * n_members + [False] * (p.n_users - n_members))
    users = [
        _user(rng, f"u{k:03d}", member, False, p, genres, group_items, popularity)
        for k, member in enumerate(member_flags)
    ]
    n_public_members = round(p.public_group_share * p.n_public_users)
    public_flags = _shuffled(rng, [True] * n_public_members + [False] * (p.n_public_users - n_public_members))
    public_users = [
        _user(rng, f"p{k:03d}", member, True, p, genres, group_items, popularity)
        for k, member in enumerate(public_flags)
    ]
    if scenario == "group":
        forget_ids = frozenset(u.id for u in users if u.member)
    else:
        forget_ids = _representative_sample(_rng(seed, "random-forget"), users, n_members)

    rec_rng = _rng(seed, "records")
    public, forget, retain, holdout = [], [], [], []
    for user in public_users:
        n = len(user.sequence)
        for position in range(max(1, n - p.public_per_user), n):
            public.append(_record(rec_rng, f"{user.id}-{position}", user, position, items, p))
    for user in users:
        n = len(user.sequence)
        rows = forget if user.id in forget_ids else retain
        for position in range(n - 1 - p.train_per_user, n - 1):
            rows.append(_record(rec_rng, f"{user.id}-{position}", user, position, items, p))
        holdout.append(_record(rec_rng, f"{user.id}-h", user, n - 1, items, p))
    return World(
        seed=seed,
        scenario=scenario,
        size=size,
        items=items,
        genres=genres,
        group_items=group_items,
        users=tuple(public_users + users),
        forget_users=forget_ids,
        public=tuple(public),
        forget=tuple(forget),
        retain=tuple(retain),
        holdout=tuple(holdout),
        params=p,
    )


def to_jsonl(rows: Sequence[dict]) -> str:
    """Records as JSONL text (one compact object per line, keys in insertion order)."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
