"""The MovieLens world of `ucan demo --data movielens`: who is who, the records, and a small world
whose original adapter memorizes forget records that the reference never saw.

Marked ``movielens``: they read recbole's MovieLens-100K copy (``pip install --no-deps
recbole==1.2.1``) and skip with that instruction when it is absent. Everything built lands in
pytest's tmp dirs (the cache root is redirected there); nothing derived from MovieLens may land
in the repository, and one test checks that.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from ucan_cli.errors import InputError
from ucan_cli.prepare.movielens import recbole_ml100k_dir

pytestmark = [
    pytest.mark.movielens,
    pytest.mark.skipif(
        recbole_ml100k_dir() is None,
        reason="MovieLens-100K not found: install recbole's copy with `pip install --no-deps recbole==1.2.1`",
    ),
]

REPO = Path(__file__).resolve().parents[1]
WORLD_FILES = {"world.json", "public.jsonl", "forget.jsonl", "retain.jsonl", "holdout.jsonl", "adapter_model.safetensors"}


@pytest.fixture(scope="module")
def default_worlds():
    """The records of the full-size world (no training), both scenarios."""
    from ucan_cli.demo.movielens_world import movielens_world

    return {scenario: movielens_world(0, scenario) for scenario in ("group", "random")}


@pytest.fixture(scope="module")
def small_built(tmp_path_factory):
    """A small world built through the cache (group), then the random scenario's build request,
    which must reuse the group world's base and original. That build is recorded, not run: the
    builder's reuse (base and original copied byte for byte, only the reference trained) is
    tests/test_demo_world.py's, and a second MovieLens training here would cost 16 s of the suite."""
    from ucan_cli.demo import movielens_world as movielens

    started = time.time()
    root = tmp_path_factory.mktemp("ucan-cache")
    notes: list[str] = []
    group, how_group = movielens.ensure_movielens_world(0, "group", size="small", root=root, on_build=notes.append)
    builds: list[tuple] = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(movielens, "build_movielens_world", lambda seed, scenario, out, progress, **kw: builds.append((seed, scenario, out, kw)))
        random_, how_random = movielens.ensure_movielens_world(0, "random", size="small", root=root, on_build=notes.append)
    again, how_again = movielens.ensure_movielens_world(0, "group", size="small", root=root)
    return {
        "root": root, "started": started, "notes": notes, "group": group, "random": random_, "again": again,
        "how": (how_group, how_random, how_again), "builds": builds,
    }  # fmt: skip


def _manifest(path: Path) -> dict:
    return json.loads((path / "world.json").read_text(encoding="utf-8"))


# ------------------------------------------------------------------------------ who is who


def test_group_is_the_mystery_taste_cluster(default_worlds):
    world = default_worlds["group"]
    assert len(world.members) == 236  # the top quarter of 943 users
    assert world.threshold == pytest.approx(0.0893587, abs=1e-6)
    definition = world.group_definition()
    assert definition["kind"] == "taste cluster" and definition["genre"] == "Mystery"
    assert (definition["n_members_all_users"], definition["n_members_adapter_users"], definition["n_members_public_users"]) == (236, 236, 0)


def test_users_and_records_of_the_full_world(default_worlds):
    group, random_ = default_worlds["group"], default_worlds["random"]
    assert len(group.public_users) == 189  # round(0.2 * 943), none of them in the group
    assert not set(group.public_users) & group.members
    adapter = group.forget_users | group.retain_users
    assert len(adapter) == 943 - 189 and not adapter & set(group.public_users)
    assert group.forget_users == group.members & adapter
    assert {name: len(rows) for name, rows in group.sets().items()} == {
        "public": 2372, "forget": 472, "retain": 1036, "holdout": 754,
    }  # fmt: skip
    # The random request: as many users, drawn in proportion from members (74 of 236) and others.
    assert random_.forget_users | random_.retain_users == adapter
    assert len(random_.forget_users) == 236 and len(random_.forget_users & group.members) == 74
    # Same users, same records: only who asks to be forgotten differs.
    assert sorted(r["id"] for r in group.forget + group.retain) == sorted(r["id"] for r in random_.forget + random_.retain)
    assert group.holdout == random_.holdout and group.public == random_.public


def test_records_are_item_token_bench_records(default_worlds):
    world = default_worlds["group"]
    record = next(r for r in world.retain if r["id"] == "u1-t267")  # the bench record docs/data.md shows
    assert record["input"] == "History: m6 m244 m18 m270 m209 m32 m189 m242 m111 m171"
    assert record["output"] == "m5" and len(record["candidates"]) == 20 and "m5" in record["candidates"]
    assert record["candidates"][:3] == ["m315", "m1211", "m627"]  # the protocol's pool, same order
    assert record["group"] == "other" and record["user_id"] == 1
    for rows in world.sets().values():
        for r in rows:
            assert r["output"] in r["candidates"] and len(set(r["candidates"])) == 20
    assert {r["group"] for r in world.forget} == {"member"} and {r["group"] for r in world.retain} == {"other"}
    holdout_users = sorted(r["user_id"] for r in world.holdout)
    assert holdout_users == sorted(world.forget_users | world.retain_users)
    assert not {r["id"] for r in world.holdout} & {r["id"] for r in world.forget + world.retain}


def test_every_movie_is_one_token(default_worlds):
    from ucan_cli.demo.build import as_records
    from ucan_cli.demo.movielens_world import build_movielens_tokenizer
    from ucan_cli.io.prompts import PromptFormatter

    world = default_worlds["group"]
    assert (len(world.items), world.items[0], world.items[-1]) == (1349, 1, 1620)
    tokenizer = build_movielens_tokenizer(world.items)
    assert len(tokenizer) == 1557  # 4 specials, 1,349 movies, the template's words and their pieces
    record = as_records([r for r in world.retain if r["id"] == "u1-t267"])[0]
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(PromptFormatter("alpaca").prompt(record))["input_ids"])
    history = "m6 m244 m18 m270 m209 m32 m189 m242 m111 m171".split()
    assert len(tokens) == 22 and tokens[10:20] == ["\u2581" + movie for movie in history]
    assert tokenizer("m5", add_special_tokens=False)["input_ids"] == [tokenizer.convert_tokens_to_ids("\u2581m5")]
    assert len(tokenizer("m1682", add_special_tokens=False)["input_ids"]) > 1  # not in the 5-core catalogue


def test_refuses_to_build_inside_the_repository():
    from ucan_cli.demo.movielens_world import build_movielens_world

    target = REPO / "movielens-world-must-not-exist"
    with pytest.raises(InputError, match="inside the ucan-cli checkout"):
        build_movielens_world(0, "group", target, size="small")
    assert not target.exists()


def test_bad_choices_and_missing_data_fail_before_any_work(tmp_path):
    from ucan_cli.demo.movielens_world import ensure_movielens_world

    notes: list[str] = []
    with pytest.raises(InputError, match="--scenario: unknown scenario 'women'; one of group, random"):
        ensure_movielens_world(0, "women", root=tmp_path / "cache", on_build=notes.append)
    empty = tmp_path / "no-movielens-here"
    empty.mkdir()
    with pytest.raises(InputError, match="ml-100k.inter"):
        ensure_movielens_world(0, "group", root=tmp_path / "cache", source=empty, on_build=notes.append)
    assert notes == [] and not (tmp_path / "cache").exists()


# ------------------------------------------------------------------------------ a small built world


def test_small_world_layout_and_cache(small_built):
    from ucan_cli.demo.movielens_world import DATA_LABEL, world_key

    assert small_built["how"] == ("built", "built", "cached")
    assert small_built["again"] == small_built["group"]
    assert "base model and both adapters" in small_built["notes"][0] and "reference adapter" in small_built["notes"][1]
    path = small_built["group"]
    assert small_built["root"] in path.parents
    assert path.name == "movielens-small-seed0-group"
    for name in ("base/config.json", "base/model.safetensors", "base/tokenizer.json", "original/adapter_config.json",
                 "original/adapter_model.safetensors", "reference/adapter_model.safetensors", "public.jsonl",
                 "forget.jsonl", "retain.jsonl", "holdout.jsonl", "world.json"):  # fmt: skip
        assert (path / name).is_file(), name
    group = _manifest(path)
    assert group["data"] == DATA_LABEL == "movielens-100k bench preset"
    assert group["key"] == world_key(0, "group", "small")
    assert group["group"]["genre"] == "Mystery"
    assert group["world"]["forget_member_share"] == 1.0 and group["world"]["retain_member_share"] == 0.0
    assert not group["reused_base_and_original"]
    # The random scenario's build went to its own directory and reuses the group world's base and original.
    assert small_built["random"].name == "movielens-small-seed0-random" and small_built["root"] in small_built["random"].parents
    [(seed, scenario, out, kw)] = small_built["builds"]
    assert (seed, scenario, Path(out)) == (0, "random", small_built["random"])
    assert kw["reuse"] == small_built["group"] and kw["size"] == "small" and kw["force"] is True


def test_original_memorizes_forget_records_the_reference_never_saw(small_built):
    memo = _manifest(small_built["group"])["memorization"]
    original, reference = memo["original"], memo["reference"]
    assert original["forget"]["recall@1"] >= 0.8
    assert original["forget"]["recall@1"] - original["holdout_forget_users"]["recall@1"] >= 0.5
    assert original["forget"]["recall@1"] - reference["forget"]["recall@1"] >= 0.4
    assert original["mia_auc_forget_vs_holdout"] >= 0.85
    assert reference["mia_auc_forget_vs_holdout"] < original["mia_auc_forget_vs_holdout"] - 0.15
    assert reference["retain"]["recall@1"] >= 0.8  # the reference memorized what it was trained on


def test_nothing_lands_in_the_repository(small_built):
    fresh = []
    for folder, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if d not in (".git", ".venv")]
        for name in files:
            path = Path(folder) / name
            if name in WORLD_FILES and path.stat().st_mtime >= small_built["started"]:
                fresh.append(path)
    assert fresh == []


def test_demo_command_runs_on_the_movielens_world(small_built, tmp_path):
    """`ucan demo --data movielens` uses the cached world, labels it as real data, and claims
    forgetting only when ucan's bar (forget KL >= 3x retain KL, forget Recall@5 down 10 points) is met."""
    from typer.testing import CliRunner

    from ucan_cli.cli import app

    env = {"UCAN_CACHE_DIR": str(small_built["root"]), "XDG_CONFIG_HOME": str(tmp_path / "config"), "COLUMNS": "200"}
    out = tmp_path / "demo"
    result = CliRunner().invoke(app, ["demo", "--data", "movielens", "--size", "small", "-o", str(out), "--json"], env=env)
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["demo"]["data"] == "movielens" and doc["demo"]["world"] == "cached"
    assert "MovieLens" in doc["demo"]["label"] and "never shipped" in doc["demo"]["label"]
    assert doc["budget"]["limit_s"] == 30.0
    if doc["score"]["nothing_to_do"] is None:
        numbers = doc["summary"]["numbers"]
        claims = "does the forgetting" in doc["summary"]["sentences"][1]
        assert claims == numbers["forgets"]
        if numbers["forgets"]:
            assert numbers["kl_ratio_forget_over_retain"] >= 3
