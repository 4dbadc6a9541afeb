"""`ucan prepare movielens`: the SPEC section 5 protocol, its counts, and its outputs.

Tests marked ``movielens`` read recbole's MovieLens-100K copy (``pip install --no-deps
recbole==1.2.1``) and skip with that instruction when it is absent; CI installs it and fails on
such skips. The other tests use a small synthetic GroupLens-format world written to tmp_path.
MovieLens files are never copied into the repository: the GroupLens-format copy lives in tmp_path.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ucan_cli.commands import prepare as prepare_cmd
from ucan_cli.errors import InputError
from ucan_cli.prepare.movielens import (
    GENRES,
    PrepareOptions,
    age_bucket,
    build,
    candidate_pool,
    choose_forget_users,
    jsonl_lines,
    k_core,
    load_movielens,
    locate_source,
    make_record,
    prepare_movielens,
    recbole_ml100k_dir,
    record_rng,
    train_positions,
    user_sequences,
)

ML_DIR = recbole_ml100k_dir()
needs_ml100k = pytest.mark.skipif(
    ML_DIR is None,
    reason="MovieLens-100K not found: install recbole's copy with `pip install --no-deps recbole==1.2.1`",
)

#: SHA-256 of forget.jsonl, ML-100K, defaults (H=10, C=20, f=0.25, seed 0), default and bench presets.
GOLDEN_FORGET_SHA256 = "a95964a8b46e75a8d14b707904bb097084724a2876a86d298f5126ea39e14f00"
GOLDEN_BENCH_FORGET_SHA256 = "e55ac955829eb43cde26ec85e318a75f672d7ee18973bc5d4dfb003922e312cc"

LETTERS20 = [chr(ord("A") + k) for k in range(20)]
RECORD_KEYS = ["id", "user_id", "instruction", "input", "output", "candidates", "candidate_items", "history_items"]


def sha256_lines(records: list[dict]) -> str:
    return hashlib.sha256(b"".join(jsonl_lines(records))).hexdigest()


def cli_app() -> typer.Typer:
    """A small app that mounts the `prepare` sub-app, as the main CLI does."""
    app = typer.Typer()
    app.add_typer(prepare_cmd.app, name="prepare")

    @app.callback()
    def _root() -> None:
        """Test root."""

    return app


# ----------------------------------------------------------------------------------------------
# An independent oracle for ML-100K: read recbole's file directly, 5-core and sort by hand.


def oracle_sequences() -> tuple[dict[int, list[int]], dict[int, set[int]]]:
    """Per user: the 5-core sequence sorted by (timestamp, item), and every item rated (raw data)."""
    assert ML_DIR is not None
    rows = []
    for line in (ML_DIR / "ml-100k.inter").read_text().splitlines()[1:]:
        u, i, _r, t = line.split("\t")
        rows.append((int(u), int(i), int(float(t))))
    rated: dict[int, set[int]] = {}
    for u, i, _t in rows:
        rated.setdefault(u, set()).add(i)
    while True:
        nu = Counter(u for u, _, _ in rows)
        ni = Counter(i for _, i, _ in rows)
        kept = [r for r in rows if nu[r[0]] >= 5 and ni[r[1]] >= 5]
        if len(kept) == len(rows):
            break
        rows = kept
    seqs: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in rows:
        seqs.setdefault(u, []).append((t, i))
    return {u: [i for _, i in sorted(v)] for u, v in seqs.items()}, rated


@pytest.fixture(scope="module")
def default_run():
    return prepare_movielens(PrepareOptions(), dry_run=True)


@pytest.fixture(scope="module")
def bench_run():
    return prepare_movielens(PrepareOptions(preset="bench"), dry_run=True)


@pytest.fixture(scope="module")
def oracle():
    return oracle_sequences()


# ----------------------------------------------------------------------------------------------
# ML-100K: exact counts and golden hashes


@pytest.mark.movielens
@needs_ml100k
def test_default_counts(default_run):
    assert default_run.counts == {
        "raw_users": 943,
        "raw_items": 1682,
        "raw_ratings": 100000,
        "users": 943,
        "items": 1349,
        "ratings": 99287,
        "train_samples": 96458,
        "train_records": 96458,
        "forget_users": 236,
        "retain_users": 707,
        "forget_records": 22816,
        "retain_records": 73642,
        "holdout_records": 943,
        "valid_records": 943,
    }
    # 96,458 = 99,287 ratings - 3 per user (the first train item has no history, valid, test).
    assert 99287 - 3 * 943 == 96458
    assert len(default_run.items) == 1349


@pytest.mark.movielens
@needs_ml100k
def test_bench_counts(bench_run, default_run):
    counts = bench_run.counts
    assert (counts["train_records"], counts["forget_records"], counts["retain_records"]) == (1886, 472, 1414)
    users = (counts["forget_users"], counts["retain_users"])
    assert users == (236, 707) and (counts["holdout_records"], counts["valid_records"]) == (943, 943)
    # The forget users do not depend on the preset.
    assert bench_run.forget_user_ids == default_run.forget_user_ids


@pytest.mark.movielens
@needs_ml100k
def test_golden_sha256_of_forget(default_run, bench_run):
    assert sha256_lines(default_run.forget) == GOLDEN_FORGET_SHA256
    assert sha256_lines(bench_run.forget) == GOLDEN_BENCH_FORGET_SHA256


@pytest.mark.movielens
@needs_ml100k
def test_first_record_is_exact(default_run):
    """User 1's first train sample, literally (the record format is a contract)."""
    first = default_run.train[0]
    assert list(first) == RECORD_KEYS
    assert first["id"] == "u1-t1" and first["user_id"] == 1
    assert first["history_items"] == [168]
    assert first["input"].startswith(
        "Watch history (oldest first):\n1. Monty Python and the Holy Grail (1974)\n\nCandidate pool:\nA. "
    )
    assert first["candidate_items"][LETTERS20.index(first["output"])] == 172  # Empire Strikes Back, The (1980)
    assert "\nH. Empire Strikes Back, The (1980)\n" in first["input"]


# ----------------------------------------------------------------------------------------------
# ML-100K: protocol properties on every record


@pytest.mark.movielens
@needs_ml100k
def test_protocol_properties_on_every_record(default_run, oracle):
    seqs, rated = oracle
    catalogue = {i for s in seqs.values() for i in s}
    assert len(catalogue) == 1349 and sum(map(len, seqs.values())) == 99287
    ids = set()
    for name in ("train", "holdout", "valid"):
        for rec in default_run.records(name):
            user, pos = rec["user_id"], int(rec["id"].split("-t")[1])
            assert rec["id"] == f"u{user}-t{pos}" and rec["id"] not in ids
            ids.add(rec["id"])
            seq = seqs[user]
            target = seq[pos]
            pool = rec["candidate_items"]
            assert rec["candidates"] == LETTERS20
            assert len(pool) == 20 and len(set(pool)) == 20, "candidates distinct"
            assert rec["output"] in LETTERS20 and pool[LETTERS20.index(rec["output"])] == target
            negatives = [i for i in pool if i != target]
            assert len(negatives) == 19
            assert not (set(negatives) & rated[user]), "a negative was rated by the user"
            assert set(pool) <= catalogue
            assert rec["history_items"] == seq[max(0, pos - 10) : pos]
            history_lines = rec["input"].split("\n\nCandidate pool:\n")[0].split("\n")[1:]
            assert len(history_lines) == len(rec["history_items"])
            if name == "train":
                assert 1 <= pos <= len(seq) - 3
            elif name == "valid":
                assert pos == len(seq) - 2
            else:
                assert pos == len(seq) - 1, "holdout targets are test items"
    assert len(ids) == 96458 + 2 * 943
    assert [r["user_id"] for r in default_run.holdout] == sorted(seqs)


@pytest.mark.movielens
@needs_ml100k
def test_forget_and_retain_users_are_disjoint(default_run):
    forget_users = {r["user_id"] for r in default_run.forget}
    retain_users = {r["user_id"] for r in default_run.retain}
    assert not forget_users & retain_users
    assert forget_users == set(default_run.forget_user_ids) and len(forget_users) == 236
    assert len(forget_users | retain_users) == 943
    split_ids = {r["id"] for r in default_run.forget} | {r["id"] for r in default_run.retain}
    assert split_ids == {r["id"] for r in default_run.train}


@pytest.mark.movielens
@needs_ml100k
def test_target_letters_are_close_to_uniform(default_run):
    counts = Counter(r["output"] for r in default_run.train)
    n = len(default_run.train)
    expected = n / 20
    chi2 = sum((counts[letter] - expected) ** 2 / expected for letter in LETTERS20)
    # 19 degrees of freedom: 43.82 is the 0.999 quantile; seed 0 gives 10.91.
    assert chi2 == pytest.approx(10.9129, abs=1e-3)
    assert chi2 < 43.82


@pytest.mark.movielens
@needs_ml100k
def test_bench_is_an_exact_subset_of_default(default_run, bench_run):
    by_id = {r["id"]: r for r in default_run.train}
    assert all(by_id[r["id"]] == r for r in bench_run.train)
    per_user = Counter(r["user_id"] for r in bench_run.train)
    assert set(per_user.values()) == {2}
    assert sha256_lines(bench_run.holdout) == sha256_lines(default_run.holdout)


@pytest.mark.movielens
@needs_ml100k
def test_seeded_reproducibility(bench_run):
    again = prepare_movielens(PrepareOptions(preset="bench"), dry_run=True)
    other = prepare_movielens(PrepareOptions(preset="bench", seed=1), dry_run=True)
    for name in ("train", "forget", "retain", "holdout", "valid"):
        assert sha256_lines(again.records(name)) == sha256_lines(bench_run.records(name))
        assert sha256_lines(other.records(name)) != sha256_lines(bench_run.records(name))
    assert other.forget_user_ids != bench_run.forget_user_ids
    assert len(other.forget_user_ids) == 236


def write_grouplens_copy(recbole_dir: Path, out: Path) -> Path:
    """GroupLens's u.data / u.item / u.user, rebuilt from recbole's atomic files (in tmp only)."""
    out.mkdir()
    inter = (recbole_dir / "ml-100k.inter").read_text().splitlines()[1:]
    (out / "u.data").write_text("".join(line + "\n" for line in inter))
    item_lines = []
    for line in (recbole_dir / "ml-100k.item").read_text(encoding="utf-8").splitlines()[1:]:
        item_id, name, year, classes = line.split("\t")
        if name == "unkonwn":  # GroupLens's item 267: title "unknown", no date
            title, date = "unknown", ""
        else:
            title, date = f"{name} ({year})", f"01-Jan-{year}"
        flags = ["1" if g in classes.split() else "0" for g in GENRES]
        item_lines.append("|".join([item_id, title, date, "", "http://example.invalid/", *flags]))
    (out / "u.item").write_bytes(("\n".join(item_lines) + "\n").encode("latin-1"))
    user_lines = [line.replace("\t", "|") for line in (recbole_dir / "ml-100k.user").read_text().splitlines()[1:]]
    (out / "u.user").write_text("\n".join(user_lines) + "\n")
    return out


@pytest.mark.movielens
@needs_ml100k
def test_grouplens_and_recbole_formats_give_identical_output(tmp_path):
    assert ML_DIR is not None
    grouplens = write_grouplens_copy(ML_DIR, tmp_path / "ml-100k")
    options = PrepareOptions(preset="bench", with_attributes=True)
    from_recbole = prepare_movielens(options, out_dir=tmp_path / "a")
    from_grouplens = prepare_movielens(options, source=tmp_path, out_dir=tmp_path / "b")  # finds tmp/ml-100k
    assert from_recbole.manifest["source"]["format"] == "recbole"
    assert from_grouplens.manifest["source"]["format"] == "grouplens"
    assert set(from_grouplens.manifest["source"]["files"]) == {"u.data", "u.item", "u.user"}
    for name in ("train.jsonl", "forget.jsonl", "retain.jsonl", "holdout.jsonl", "valid.jsonl", "items.tsv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    a = load_movielens(locate_source(None, with_users=True))
    b = load_movielens(locate_source(grouplens, with_users=True))
    assert a.ratings == b.ratings and a.items == b.items and a.users == b.users
    assert a.items[1].title == "Toy Story (1995)" and a.items[1].genres == ("Animation", "Children's", "Comedy")
    assert a.items[267].title == "unknown" and a.items[267].year == ""
    assert a.items[543].title == "Misérables, Les (1995)"
    # Attributes: user 1 is a 24-year-old male technician.
    first = from_recbole.holdout[0]
    assert (first["user_id"], first["gender"], first["age_bucket"], first["occupation"]) == (1, "M", "18-24", "technician")
    assert list(first)[-3:] == ["gender", "age_bucket", "occupation"]


@pytest.mark.movielens
@needs_ml100k
def test_written_files_match_the_manifest(tmp_path):
    out = tmp_path / "bench"
    prepared = prepare_movielens(PrepareOptions(preset="bench"), out_dir=out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == prepared.manifest
    assert manifest["counts"]["forget_records"] == 472 and manifest["seed"] == 0
    assert manifest["source"]["format"] == "recbole"
    assert set(manifest["source"]["files"]) == {"ml-100k.inter", "ml-100k.item"}
    assert manifest["forget_user_ids"][:5] == prepared.forget_user_ids[:5] and len(manifest["forget_user_ids"]) == 236
    for name, info in manifest["files"].items():
        data = (out / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == info["sha256"] and len(data) == info["bytes"]
        if name.endswith(".jsonl"):
            assert data.count(b"\n") == info["records"]
    assert manifest["files"]["forget.jsonl"]["sha256"] == GOLDEN_BENCH_FORGET_SHA256
    items = (out / "items.tsv").read_text(encoding="utf-8").splitlines()
    assert items[0] == "item_id\ttitle\tyear\tgenres" and len(items) == 1 + 1349
    assert items[1] == "1\tToy Story (1995)\t1995\tAnimation|Children's|Comedy"
    # Refused without --force, replaced with it.
    with pytest.raises(InputError, match="already exists"):
        prepare_movielens(PrepareOptions(preset="bench"), out_dir=out)
    (out / "stale.txt").write_text("x")
    prepare_movielens(PrepareOptions(preset="bench", seed=1), out_dir=out, force=True)
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "manifest.json").read_text())["seed"] == 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp dirs left behind"


@pytest.mark.movielens
@needs_ml100k
def test_explicit_forget_users_and_unknown_ids():
    prepared = prepare_movielens(PrepareOptions(preset="bench", forget_users=(3, 1, 2)), dry_run=True)
    assert prepared.forget_user_ids == [1, 2, 3]
    # Users 1, 2, 3 keep 271, 62, 54 ratings after the 5-core: their last 2 train targets.
    assert [r["id"] for r in prepared.forget] == ["u1-t267", "u1-t268", "u2-t58", "u2-t59", "u3-t50", "u3-t51"]
    assert prepared.counts["retain_users"] == 940
    with pytest.raises(InputError, match=r"unknown user ids .*: 944, 99999"):
        prepare_movielens(PrepareOptions(forget_users=(1, 944, 99999)), dry_run=True)


@pytest.mark.movielens
@needs_ml100k
def test_cli_dry_run_json_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli_app(), ["prepare", "movielens", "--preset", "bench", "--dry-run", "--json", "-o", "out"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)
    assert manifest["counts"]["train_records"] == 1886 and manifest["options"]["preset"] == "bench"
    assert "files" not in manifest
    assert "train records" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.movielens
@needs_ml100k
def test_cli_output_refuses_the_source_dir(tmp_path):
    assert ML_DIR is not None
    grouplens = write_grouplens_copy(ML_DIR, tmp_path / "gl")
    args = ["prepare", "movielens", "--source", str(grouplens), "-o", str(grouplens), "--force"]
    result = CliRunner().invoke(cli_app(), args)
    assert result.exit_code == 2 and "overlap" in result.stderr
    assert (grouplens / "u.data").exists()


# ----------------------------------------------------------------------------------------------
# Synthetic data (no MovieLens needed)


def test_k_core_iterates_until_stable():
    # Users 1..5 rate items 10..14: 5 ratings per user and per item, the stable core.
    base = [(u, i, 3, 100 + i) for u in range(1, 6) for i in range(10, 15)]
    # User 6 rates 10, 11, 12, 15, 16; users 1..4 also rate 16. Round 1 drops item 15 (1 rating);
    # round 2 drops user 6 (now 4 ratings); round 3 drops item 16 (now 4 ratings).
    extra = [(6, i, 4, 200 + i) for i in (10, 11, 12, 15, 16)] + [(u, 16, 1, 1) for u in (1, 2, 3, 4)]
    assert k_core(base + extra, 5) == base
    assert k_core(extra + base, 5) == base
    assert k_core([(1, 1, 1, 1)] * 4, 5) == []


def test_user_sequences_break_timestamp_ties_by_item_id():
    rows = [(2, 30, 5, 7), (2, 10, 5, 7), (1, 5, 1, 9), (2, 20, 5, 3), (1, 4, 1, 9)]
    assert user_sequences(rows) == {1: [4, 5], 2: [20, 10, 30]}


def test_train_positions_default_and_bench():
    # length 10: train = positions 0..7, targets 1..7; bench: the last 2 of them.
    assert list(train_positions(10, "default")) == [1, 2, 3, 4, 5, 6, 7]
    assert list(train_positions(10, "bench")) == [6, 7]
    assert list(train_positions(5, "default")) == [1, 2]
    assert list(train_positions(5, "bench")) == [1, 2]
    assert list(train_positions(4, "bench")) == [1]


def test_age_buckets():
    assert [age_bucket(a) for a in (7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73)] == [
        "under 18", "under 18", "18-24", "18-24", "25-34", "25-34", "35-44", "35-44",
        "45-49", "45-49", "50-55", "50-55", "56+", "56+",
    ]  # fmt: skip


def test_choose_forget_users_rounds_and_refuses_empty_sets():
    users = list(range(1, 11))
    chosen = choose_forget_users(users, 0.25, seed=0)  # round(2.5) = 2 (half to even)
    assert len(chosen) == 2 and set(chosen) <= set(users) and chosen == sorted(chosen)
    assert choose_forget_users(list(reversed(users)), 0.25, seed=0) == chosen  # input order is irrelevant
    assert len(choose_forget_users(users, 0.35, seed=0)) == 4  # round(3.5) = 4
    with pytest.raises(InputError, match="selects 0 of 10 users"):
        choose_forget_users(users, 0.04, seed=0)


def test_candidate_pool_is_seeded_per_record():
    import numpy as np

    unrated = np.arange(100, 120)
    pool = candidate_pool(record_rng(0, 7, 3), 5, unrated, 6)
    assert len(pool) == 6 and len(set(pool)) == 6 and 5 in pool and set(pool) - {5} <= set(range(100, 120))
    assert candidate_pool(record_rng(0, 7, 3), 5, unrated, 6) == pool
    assert candidate_pool(record_rng(0, 7, 4), 5, unrated, 6) != pool


def write_synthetic(tmp_path: Path, *, users: bool = True) -> Path:
    """A GroupLens-format world: 8 users x 8 of 10 items, every item rated by 6 to 8 users."""
    src = tmp_path / "src"
    src.mkdir()
    rows = []
    for u in range(1, 9):
        for k in range(8):
            item = (u + k) % 10 + 1
            rows.append(f"{u}\t{item}\t{1 + k % 5}\t{1000 + 10 * k}")
    (src / "u.data").write_text("\n".join(rows) + "\n")
    genres = ["0"] * len(GENRES)
    items = [
        "|".join([str(i), f"Movie {i} ({1990 + i})", "01-Jan-1990", "", "url", *genres[:2], "1", *genres[3:]])
        for i in range(1, 11)
    ]
    (src / "u.item").write_bytes(("\n".join(items) + "\n").encode("latin-1"))
    if users:
        (src / "u.user").write_text("\n".join(f"{u}|{10 * u}|{'MF'[u % 2]}|writer|00000" for u in range(1, 9)) + "\n")
    return src


def test_synthetic_end_to_end(tmp_path):
    src = write_synthetic(tmp_path)
    options = PrepareOptions(history=3, candidates=3, forget_users=(2, 5), with_attributes=True)
    prepared = prepare_movielens(options, source=src, out_dir=tmp_path / "out")
    # 8 users x 8 ratings: train = 6 items each, 5 samples each.
    assert prepared.counts["train_records"] == 40 and prepared.counts["train_samples"] == 40
    assert (prepared.counts["forget_records"], prepared.counts["retain_records"]) == (10, 30)
    assert (prepared.counts["items"], prepared.counts["ratings"]) == (10, 64)
    rec = next(r for r in prepared.train if r["id"] == "u2-t4")
    # User 2 rated items 3, 4, ..., 10 at increasing timestamps: position 4 is item 7.
    assert rec["history_items"] == [4, 5, 6]
    assert rec["candidates"] == ["A", "B", "C"]
    assert rec["candidate_items"][["A", "B", "C"].index(rec["output"])] == 7
    assert set(rec["candidate_items"]) - {7} <= {1, 2}  # the only items user 2 never rated
    assert "1. Movie 4 (1994)\n2. Movie 5 (1995)\n3. Movie 6 (1996)" in rec["input"]
    assert (rec["gender"], rec["age_bucket"], rec["occupation"]) == ("M", "18-24", "writer")
    assert prepared.items[0].genres == ("Adventure",)
    lines = (tmp_path / "out" / "forget.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["user_id"] for line in lines] == [2] * 5 + [5] * 5
    assert lines[0].startswith('{"id":"u2-t1","user_id":2,"instruction":')


def test_too_many_candidates_is_an_input_error(tmp_path):
    src = write_synthetic(tmp_path, users=False)
    with pytest.raises(InputError, match="--candidates 4: user 1 has only 2 unrated items"):
        prepare_movielens(PrepareOptions(candidates=4, forget_users=(1,)), source=src, dry_run=True)


def test_missing_files_are_named(tmp_path):
    src = write_synthetic(tmp_path, users=False)
    with pytest.raises(InputError, match=r"src/u\.user: MovieLens file not found"):
        prepare_movielens(PrepareOptions(with_attributes=True), source=src, dry_run=True)
    (src / "u.item").unlink()
    with pytest.raises(InputError, match=r"src/u\.item: MovieLens file not found"):
        prepare_movielens(PrepareOptions(), source=src, dry_run=True)
    with pytest.raises(InputError, match="u.data: not found"):
        prepare_movielens(PrepareOptions(), source=tmp_path, dry_run=True)
    with pytest.raises(InputError, match="not a directory"):
        prepare_movielens(PrepareOptions(), source=tmp_path / "nope", dry_run=True)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (PrepareOptions(history=0), "--history"),
        (PrepareOptions(candidates=27), "--candidates"),
        (PrepareOptions(candidates=1), "--candidates"),
        (PrepareOptions(forget_fraction=1.0), "--forget-fraction"),
        (PrepareOptions(preset="large"), "--preset"),
        (PrepareOptions(seed=-1), "--seed"),
    ],
)
def test_bad_options_are_input_errors(options, message):
    with pytest.raises(InputError, match=message):
        options.validate()


def test_output_is_required_unless_dry_run(tmp_path):
    src = write_synthetic(tmp_path)
    with pytest.raises(InputError, match="-o/--output is required"):
        prepare_movielens(PrepareOptions(candidates=2, forget_users=(1,)), source=src)


def test_cli_maps_bad_forget_users_to_input_errors(tmp_path):
    src = write_synthetic(tmp_path)
    runner = CliRunner()
    base = ["prepare", "movielens", "--source", str(src), "--candidates", "2", "--dry-run"]
    both = runner.invoke(cli_app(), [*base, "--forget-users", "1", "--forget-fraction", "0.5"])
    assert both.exit_code == 2 and "exclude each other" in both.stderr
    not_int = runner.invoke(cli_app(), [*base, "--forget-users", "1,abc"])
    assert not_int.exit_code == 2 and "abc" in not_int.stderr
    unknown = runner.invoke(cli_app(), [*base, "--forget-users", "1,77"])
    assert unknown.exit_code == 2
    assert "unknown user ids" in unknown.stderr and "77" in unknown.stderr
    ok = runner.invoke(cli_app(), [*base, "--forget-users", "1,2", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["counts"]["forget_records"] == 10


def test_make_record_fields_and_order():
    import numpy as np

    from ucan_cli.prepare.movielens import Item

    items = {i: Item(i, f"T{i} (2000)", "2000", ()) for i in range(1, 8)}
    options = PrepareOptions(history=2, candidates=3)
    rec = make_record(9, [1, 2, 3, 4], 3, unrated=np.array([5, 6, 7]), items=items, options=options)
    assert list(rec) == RECORD_KEYS
    assert rec["id"] == "u9-t3" and rec["history_items"] == [2, 3] and rec["candidates"] == ["A", "B", "C"]
    assert rec["candidate_items"][ord(rec["output"]) - ord("A")] == 4
    assert rec["input"].startswith("Watch history (oldest first):\n1. T2 (2000)\n2. T3 (2000)\n\nCandidate pool:\nA. T")


def test_build_rejects_unknown_forget_users(tmp_path):
    data = load_movielens(locate_source(write_synthetic(tmp_path)))
    with pytest.raises(InputError, match="unknown user ids .*: 9, 10"):
        build(data, PrepareOptions(candidates=2, forget_users=(1, 10, 9)))
    with pytest.raises(InputError, match="names every user"):
        build(data, PrepareOptions(candidates=2, forget_users=tuple(range(1, 9))))


def test_missing_recbole_copy_says_how_to_install(monkeypatch):
    from ucan_cli.prepare import movielens

    monkeypatch.setattr(movielens, "recbole_ml100k_dir", lambda: None)
    with pytest.raises(InputError, match=r"pass --source DIR .*pip install --no-deps recbole==1\.2\.1"):
        prepare_movielens(PrepareOptions(), dry_run=True)


def test_malformed_lines_are_named_by_file_and_line(tmp_path):
    src = write_synthetic(tmp_path)
    data = src / "u.data"
    data.write_text("1\t2\t3\t4\n\n1\t3\tx\t5\n")
    with pytest.raises(InputError, match=r"u\.data:3: field 'rating' is not a number: 'x'"):
        prepare_movielens(PrepareOptions(), source=src, dry_run=True)
    data.write_text("1\t2\t3\n")
    with pytest.raises(InputError, match=r"u\.data:1: expected 4 fields"):
        prepare_movielens(PrepareOptions(), source=src, dry_run=True)
    data.write_text("1\t99\t3\t4\n")
    with pytest.raises(InputError, match=r"item ids missing from .*u\.item: 99"):
        prepare_movielens(PrepareOptions(), source=src, dry_run=True)


@pytest.mark.parametrize(
    ("command", "example"),
    [("movielens", "ucan prepare movielens -o data/ml100k"), ("split", "--forget-users 12,85,301")],
)
def test_help_has_examples_and_option_groups(command, example):
    result = CliRunner().invoke(cli_app(), ["prepare", command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    assert example in result.stdout and "Examples:" in result.stdout
    assert "╭─ Data ─" in result.stdout and "╭─ Output ─" in result.stdout
    assert "--dry-run" in result.stdout and "--json" in result.stdout and "--force" in result.stdout
