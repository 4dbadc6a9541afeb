"""The demo world: a deterministic generator, single-token items, a group with its own items, and
a small world whose original adapter memorizes forget records that the reference never saw."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest

from ucan_cli.demo import cache
from ucan_cli.demo.world import MEMBER, OTHER, SIZES, generate_world, to_jsonl


def _digest(world) -> str:
    return hashlib.sha256("".join(to_jsonl(world.sets()[n]) for n in ("public", "forget", "retain", "holdout")).encode()).hexdigest()


def test_generator_is_pinned_and_seeded():
    # The same records on every machine: a change to the generator must update these digests
    # (and rebuild the shipped assets with scripts/build_demo_assets.py).
    assert _digest(generate_world(0, "group")) == "1ecc26f1d98b9f87445d36564658ddf39a76669e3681757c4d52f7ab9c4618e0"
    assert _digest(generate_world(0, "random")) == "037f9e39f405542efddbbdbb37ca12186c88506607a9a31fb188d6e1369e59e4"
    world = generate_world(0, "group")
    assert world.forget[0]["id"] == "u009-9" and world.forget[0]["output"] == "i047"
    assert _digest(generate_world(3, "group", "small")) == _digest(generate_world(3, "group", "small"))
    assert _digest(generate_world(1, "group", "small")) != _digest(generate_world(2, "group", "small"))


def test_sizes_and_record_shape():
    world = generate_world(0, "group", "small")
    p = SIZES["small"]
    assert len(world.items) == p.n_genres * p.items_per_genre + p.n_group_items == 44
    assert {k: len(v) for k, v in world.sets().items()} == {"public": 288, "forget": 48, "retain": 144, "holdout": 64}
    record = world.retain[0]
    assert set(record) == {"id", "user_id", "instruction", "input", "output", "candidates", "group", "source"}
    assert record["source"] == "synthetic"
    users = {u.id: u for u in world.users}
    for row in (*world.public, *world.forget, *world.retain, *world.holdout):
        assert len(row["candidates"]) == p.n_candidates and len(set(row["candidates"])) == p.n_candidates
        assert row["output"] in row["candidates"]
        negatives = set(row["candidates"]) - {row["output"]}
        assert not negatives & set(users[row["user_id"]].sequence)  # negatives were never picked
        history = row["input"].removeprefix("History: ").split()
        assert 1 <= len(history) <= p.history


def test_sets_split_users_cleanly(tmp_path):
    from ucan_cli.io.data import check_disjoint, read_records

    world = generate_world(0, "group", "small")
    for name, rows in world.sets().items():
        (tmp_path / f"{name}.jsonl").write_text(to_jsonl(rows), encoding="utf-8")
    forget, retain = read_records(tmp_path / "forget.jsonl", "forget"), read_records(tmp_path / "retain.jsonl", "retain")
    holdout = read_records(tmp_path / "holdout.jsonl", "holdout")
    check_disjoint(forget, retain)  # raises on a shared id or user_id
    assert forget.has_candidates and retain.has_candidates
    train_users = {r.user_id for r in forget} | {r.user_id for r in retain}
    assert sorted(r.user_id for r in holdout) == sorted(train_users)  # one per forget and retain user
    assert not {r.id for r in holdout} & ({r.id for r in forget} | {r.id for r in retain})
    assert not {r["user_id"] for r in world.public} & train_users
    # Held out means after every training target of the user.
    for row in world.holdout:
        uid = row["user_id"]
        last_train = max(int(r["id"].split("-")[1]) for r in (*world.forget, *world.retain) if r["user_id"] == uid)
        user = next(u for u in world.users if u.id == uid)
        assert last_train == len(user.sequence) - 2


def test_group_items_belong_to_the_group():
    world = generate_world(0, "group")
    group_items = set(world.group_items)
    assert len(group_items) == 24
    assert {row["group"] for row in world.forget} == {MEMBER}
    assert {row["group"] for row in (*world.retain, *world.public)} == {OTHER}

    def items(row):
        return {row["output"], *row["input"].removeprefix("History: ").split()}

    # Non-members never pick the group's items, as targets or in histories.
    assert not any(items(row) & group_items for row in (*world.retain, *world.public))
    share = world.describe()["group_item_target_share"]
    assert share == {"public": 0.0, "forget": 0.585, "retain": 0.0, "holdout": 0.145}
    # Members also share the general tastes: their other picks come from the same catalogue.
    general = set(world.items) - group_items
    assert sum(row["output"] in general for row in world.forget) == 83


def test_random_scenario_is_representative_and_shares_the_users():
    group, rand = generate_world(0, "group"), generate_world(0, "random")
    described = rand.describe()
    assert described["n_forget_users"] == 50 and described["n_retain_users"] == 150
    assert described["forget_member_share"] == 0.26 and described["retain_member_share"] == 0.2467
    # Same users and records in both scenarios; only who asks to be forgotten differs.
    rows = lambda w: sorted(json.dumps(r, sort_keys=True) for r in (*w.forget, *w.retain))  # noqa: E731
    assert rows(group) == rows(rand)
    assert group.holdout == rand.holdout and group.public == rand.public
    assert group.forget_users != rand.forget_users


def test_unknown_scenario_or_size():
    with pytest.raises(ValueError, match="scenario"):
        generate_world(0, "everyone")
    with pytest.raises(ValueError, match="size"):
        generate_world(0, "group", "huge")


def test_every_item_is_one_token_everywhere():
    from ucan_cli.demo.build import build_demo_tokenizer, item_token_ids
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.tokenize import encode_record

    from ucan_cli.demo.build import as_records

    world = generate_world(0, "group")
    tokenizer = build_demo_tokenizer(world)
    ids = item_token_ids(tokenizer, world.items)
    assert all(len(v) == 1 for v in ids.values())
    assert len({v[0] for v in ids.values()}) == len(world.items) == 120
    record = as_records(world.forget[:1])[0]
    encoded = encode_record(record, tokenizer, PromptFormatter("alpaca", tokenizer), 128)
    history = record.fields["input"].removeprefix("History: ").split()
    # The history's items appear as exactly the ids the same items have as responses.
    prompt = list(encoded.prompt_ids)
    assert [ids[i][0] for i in history] == [t for t in prompt if t in {v[0] for v in ids.values()}]
    assert list(encoded.input_ids[encoded.prompt_len :]) == [ids[record.response][0], tokenizer.eos_token_id]
    assert encoded.prompt_len == 21  # BOS + 10 template words + 10 history items
    assert tokenizer.decode(prompt, skip_special_tokens=True).startswith("### Instruction:\nWhich item")


@pytest.mark.slow
def test_small_world_builds_and_the_original_memorizes(tmp_path):
    key = cache.world_key(0, "group", "small")
    path, how = cache.ensure_world(0, "group", "small", root=tmp_path, use_assets=False)
    assert how == "built" and cache.is_complete(path, key)
    assert sorted(p.name for p in path.iterdir()) == [
        "base", "forget.jsonl", "holdout.jsonl", "original", "public.jsonl", "reference", "retain.jsonl", "world.json"
    ]
    manifest = json.loads((path / "world.json").read_text())
    memo = manifest["memorization"]
    o, r = memo["original"], memo["reference"]
    # The original memorized forget records the reference never saw ... Trained here, so CPU-
    # dependent; measured over world seeds 0-2 x torch threads 1, 2: recall@1 gap to the reference
    # 0.79..0.85, to the own holdout 0.67..0.77, MIA AUC original 0.82..0.90 and reference
    # 0.33..0.50, retain recall@5 difference 0.0.
    assert o["forget"]["recall@1"] >= r["forget"]["recall@1"] + 0.4
    assert o["forget"]["recall@1"] >= o["holdout_forget_users"]["recall@1"] + 0.3
    assert o["mia_auc_forget_vs_own_holdout"] >= 0.7 > r["mia_auc_forget_vs_own_holdout"]
    # ... while both know the retain users alike.
    assert abs(o["retain"]["recall@5"] - r["retain"]["recall@5"]) <= 0.05
    adapter_config = json.loads((path / "original" / "adapter_config.json").read_text())
    assert adapter_config["target_modules"] == ["down_proj", "o_proj", "q_proj", "up_proj", "v_proj"]

    # A cached world is found again; the other scenario reuses base and original.
    assert cache.ensure_world(0, "group", "small", root=tmp_path) == (path, "cached")
    other, how = cache.ensure_world(0, "random", "small", root=tmp_path, use_assets=False)
    assert how == "built"
    assert json.loads((other / "world.json").read_text())["reused_base_and_original"] is True
    for name in ("base/model.safetensors", "original/adapter_model.safetensors"):
        assert (other / name).read_bytes() == (path / name).read_bytes()
    assert (other / "reference/adapter_model.safetensors").read_bytes() != (path / "reference/adapter_model.safetensors").read_bytes()

    # Packing is reproducible and round-trips through the "shipped" path.
    a, b = cache.pack_world(path, tmp_path / "a.tar.gz"), cache.pack_world(path, tmp_path / "b.tar.gz")
    assert a.read_bytes() == b.read_bytes()
    with tarfile.open(a) as tar:
        assert {m.mtime for m in tar.getmembers()} == {0}


def test_cache_root_follows_the_platform_conventions(monkeypatch, tmp_path):
    monkeypatch.delenv("UCAN_CACHE_DIR", raising=False)
    monkeypatch.setattr(cache.sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "ucan"
    monkeypatch.setenv("UCAN_CACHE_DIR", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("UCAN_CACHE_DIR")
    monkeypatch.setattr(cache.sys, "platform", "darwin")
    assert cache.cache_root() == cache.Path.home() / "Library" / "Caches" / "ucan"
    key = cache.world_key(2, "random")
    assert key == f"rev{cache.SYNTHETIC_REVISION}/world-default-seed2-random"
    assert cache.world_path(2, "random", root=tmp_path) == tmp_path / "demo" / key


def test_an_incomplete_or_foreign_world_is_not_complete(tmp_path):
    key = cache.world_key(0, "group", "small")
    assert not cache.is_complete(tmp_path, key)
    (tmp_path / "world.json").write_text(json.dumps({"key": "rev0/other"}))
    assert not cache.is_complete(tmp_path, key)
    (tmp_path / "world.json").write_text(json.dumps({"key": key}))
    assert cache.is_complete(tmp_path, key)


def test_shipped_worlds_are_current_and_unpack(tmp_path):
    # After changing demo/world.py or demo/build.py, run scripts/build_demo_assets.py: stale
    # archives are ignored by the demo (it builds instead), and this test says so.
    for scenario in ("group", "random"):
        archive = cache.asset_path(0, scenario)
        assert archive.is_file(), f"{archive} missing: run scripts/build_demo_assets.py"
        with tarfile.open(archive) as tar:
            shipped = json.loads(tar.extractfile("world.json").read())
        assert shipped["key"] == cache.world_key(0, scenario), "stale demo assets: run scripts/build_demo_assets.py"
        assert archive.stat().st_size < 1_000_000
    path, how = cache.ensure_world(0, "group", root=tmp_path)
    assert how == "shipped" and cache.is_complete(path, cache.world_key(0, "group"))
    manifest = json.loads((path / "world.json").read_text())
    memo = manifest["memorization"]
    # The numbers docs/demo.md quotes for seed 0.
    assert memo["original"]["forget"] == {"recall@1": 0.475, "recall@5": 0.84}
    assert memo["reference"]["forget"] == {"recall@1": 0.045, "recall@5": 0.155}
    assert memo["original"]["mia_auc_forget_vs_holdout"] == 0.8074
    assert cache.ensure_world(0, "group", root=tmp_path) == (path, "cached")
