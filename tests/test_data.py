"""Record files: every input error of SPEC section 2 names the file, the line and the field."""

from __future__ import annotations

import gzip
import json

import pytest

from ucan_cli.errors import InputError
from ucan_cli.io.data import check_disjoint, read_records

GOOD = {"id": "a", "user_id": "u1", "instruction": "Pick", "input": "h", "output": "x", "candidates": ["x", "y"]}


def write_lines(path, lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"instruction": "Pick", "output": "x"', r"f\.jsonl:2: invalid JSON"),
        ("[1, 2]", r"f\.jsonl:2: expected a JSON object, got list"),
        ('{"instruction": "Pick"}', r"f\.jsonl:2: field 'output' is missing"),
        ('{"output": "x"}', r"f\.jsonl:2: field 'instruction' is missing"),
        ('{"instruction": 3, "output": "x"}', r"f\.jsonl:2: field 'instruction' must be a string, got int"),
        ('{"instruction": "P", "input": ["a"], "output": "x"}', r"f\.jsonl:2: field 'input' must be a string"),
        ('{"prompt": "P"}', r"f\.jsonl:2: field 'completion' is missing"),
        ('{"prompt": "P", "completion": 1}', r"f\.jsonl:2: field 'completion' must be a string"),
        ('{"foo": 1}', r"f\.jsonl:2: field 'instruction' is missing"),
        ('{"instruction": "P", "output": ""}', r"f\.jsonl:2: field 'output' is empty"),
        ('{"instruction": "P", "output": "z", "candidates": ["x", "y"]}', r"f\.jsonl:2: field 'output' 'z' is not among the candidates"),
        ('{"instruction": "P", "output": "x", "candidates": ["x", "x"]}', r"f\.jsonl:2: field 'candidates' has the duplicate candidate 'x'"),
        ('{"instruction": "P", "output": "x", "candidates": "x"}', r"f\.jsonl:2: field 'candidates' must be a non-empty list"),
        ('{"instruction": "P", "output": "x", "candidates": []}', r"f\.jsonl:2: field 'candidates' must be a non-empty list"),
        ('{"instruction": "P", "output": "x", "id": "a"}', r"f\.jsonl:2: field 'id' 'a' duplicates line 1"),
        ('{"instruction": "P", "output": "x", "id": 1.5}', r"f\.jsonl:2: field 'id' must be a string or an integer"),
        ('{"instruction": "P", "output": "x", "user_id": true}', r"f\.jsonl:2: field 'user_id' must be a string or an integer"),
    ],
)
def test_bad_line_names_file_line_field(tmp_path, line, message):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps(GOOD), line])
    with pytest.raises(InputError, match=message):
        read_records(path, "forget")


def test_not_utf8(tmp_path):
    path = tmp_path / "f.jsonl"
    path.write_bytes(json.dumps(GOOD).encode() + b"\n" + b'{"instruction": "\xff", "output": "x"}\n')
    with pytest.raises(InputError, match=r"f\.jsonl:2: not UTF-8"):
        read_records(path)


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(InputError, match="forget file is empty"):
        read_records(write_lines(tmp_path / "e.jsonl", ["", "   "]), "forget")
    with pytest.raises(InputError, match="retain file not found"):
        read_records(tmp_path / "nope.jsonl", "retain")


def test_tolerates_bom_crlf_blank_lines_and_gzip(tmp_path):
    body = (json.dumps(GOOD) + "\r\n\r\n" + json.dumps({**GOOD, "id": "b"}) + "\r\n").encode()
    plain = tmp_path / "f.jsonl"
    plain.write_bytes(b"\xef\xbb\xbf" + body)
    records = read_records(plain)
    assert [r.line for r in records] == [1, 3]
    assert records.records[0].candidates == ("x", "y") and records.records[0].target_index == 0
    gz = tmp_path / "f.jsonl.gz"
    gz.write_bytes(gzip.compress(body))
    assert [r.id for r in read_records(gz)] == ["a", "b"]


def test_prompt_completion_and_int_ids(tmp_path):
    path = write_lines(tmp_path / "f.jsonl", [json.dumps({"prompt": "P", "completion": "C", "id": 7, "user_id": 3, "extra": {"k": 1}})])
    (record,) = read_records(path).records
    assert record.kind == "prompt" and record.response == "C" and record.id == "7" and record.user_id == "3"
    assert record.fields["extra"] == {"k": 1}


def test_overlap_between_forget_and_retain(tmp_path):
    forget = read_records(write_lines(tmp_path / "forget.jsonl", [json.dumps(GOOD)]), "forget")
    same_id = read_records(write_lines(tmp_path / "r1.jsonl", [json.dumps({**GOOD, "user_id": "u9"})]), "retain")
    with pytest.raises(InputError, match=r"r1\.jsonl:1: field 'id' 'a' is also in the forget set \(.*forget\.jsonl:1\)"):
        check_disjoint(forget, same_id)
    same_user = read_records(write_lines(tmp_path / "r2.jsonl", [json.dumps({**GOOD, "id": "z"})]), "retain")
    with pytest.raises(InputError, match=r"r2\.jsonl:1: field 'user_id' 'u1' is also in the forget set"):
        check_disjoint(forget, same_user)
    check_disjoint(forget, same_user, allow_overlap=True)


def test_parquet_through_datasets(tmp_path):
    import datasets

    rows = [GOOD, {**GOOD, "id": "b", "output": "y"}]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    records = read_records(tmp_path / "d.parquet")
    assert [r.response for r in records] == ["x", "y"] and [r.line for r in records] == [1, 2]
    bad = [{**GOOD, "output": "q"}]
    datasets.Dataset.from_list(bad).to_parquet(str(tmp_path / "bad.parquet"))
    with pytest.raises(InputError, match=r"bad\.parquet:1: field 'output' 'q' is not among the candidates"):
        read_records(tmp_path / "bad.parquet")


def test_sample_and_halves_are_seeded(tmp_path):
    rows = [json.dumps({**GOOD, "id": str(i)}) for i in range(20)]
    records = read_records(write_lines(tmp_path / "f.jsonl", rows), "retain")
    a, b = records.sample(5, seed=0), records.sample(5, seed=0)
    assert [r.id for r in a] == [r.id for r in b] and len(a) == 5
    assert [r.line for r in a] == sorted(r.line for r in a)
    assert [r.id for r in records.sample(5, seed=1)] != [r.id for r in a]
    h1, h2 = records.split_halves(0)
    assert len(h1) == 10 and len(h2) == 10 and sorted(h1 + h2) == list(range(20))
    assert records.split_halves(0) == (h1, h2)


def test_user_halves_keep_each_user_in_one_half(tmp_path):
    """The noise reference's halves by user: disjoint users, balanced records, seeded; auto picks
    users only when every record has a user_id."""
    rows = [json.dumps({**GOOD, "id": f"{u}-{i}", "user_id": f"u{u}"}) for u in range(10) for i in range(u % 3 + 1)]
    records = read_records(write_lines(tmp_path / "r.jsonl", rows), "retain")
    assert records.resolve_halves("auto") == "users"
    a, b = records.split_halves(0, "users")
    assert sorted(a + b) == list(range(len(rows)))
    users_a = {records.records[i].user_id for i in a}
    users_b = {records.records[i].user_id for i in b}
    assert users_a and users_b and not users_a & users_b
    assert abs(len(a) - len(b)) <= 3  # at most one user's records (3 here) off balance
    assert records.split_halves(0, "users") == (a, b) and records.split_halves(1, "users") != (a, b)
    by_records = records.split_halves(0, "records")
    assert len(by_records[0]) == len(rows) // 2
    no_users = read_records(write_lines(tmp_path / "n.jsonl", [json.dumps({**GOOD, "id": str(i), "user_id": None}) for i in range(6)]))
    assert no_users.resolve_halves("auto") == "records"
    with pytest.raises(InputError, match="--halves users needs a user_id"):
        no_users.resolve_halves("users")
    with pytest.raises(InputError, match="--halves must be one of"):
        records.resolve_halves("people")
