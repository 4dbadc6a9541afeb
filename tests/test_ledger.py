"""The ledger: canonical lines, hash chain, multiplicative cumulative factors per unit kind,
repeat refusal, and a broken chain reported with its line."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from ucan_cli.errors import InputError
from ucan_cli.io.ledger import (
    LEDGER_NAME,
    Ledger,
    canonical_line,
    check_adapter_head,
    check_repeat,
    ledger_bytes,
    new_entry,
    parse_ledger,
    read_ledger,
)

ORDER = ["m.0", "m.1"]


def _entry(ledger: Ledger, unit: str, factors: dict, *, out_sha: str, in_sha: str, hmac: str = "h1", fp: str = "fp1") -> dict:
    return new_entry(
        ledger, unit=unit, factors={k: np.asarray(v, dtype=float) for k, v in factors.items()}, module_order=ORDER,
        options={"ratio": 0.05}, input_sha256=in_sha, output_sha256=out_sha, input_matches_ledger=True,
        forget_set_hmac=hmac, receipt_key_fingerprint=fp, n_forget_records=3, time="2026-01-02T03:04:05Z",
    )


def _chain(tmp_path):
    """Three requests: output 0.5 on m.0[1]; output 0.5 again on m.0[1] and 0.25 on m.1[0]; rank 0.8 on m.1[2]."""
    path = tmp_path / LEDGER_NAME
    ledger = Ledger(path, [])
    e1 = _entry(ledger, "output", {"m.0": [1, 0.5, 1], "m.1": [1, 1]}, in_sha="a0", out_sha="a1")
    raw = ledger_bytes(ledger, e1)
    ledger = parse_ledger(raw, path)
    e2 = _entry(ledger, "output", {"m.0": [1, 0.5, 1], "m.1": [0.25, 1]}, in_sha="a1", out_sha="a2", hmac="h2")
    raw = ledger_bytes(ledger, e2)
    ledger = parse_ledger(raw, path)
    e3 = _entry(ledger, "rank", {"m.0": [1, 1], "m.1": [1, 1, 0.8]}, in_sha="a2", out_sha="a3", hmac="h3")
    raw = ledger_bytes(ledger, e3)
    path.write_bytes(raw)
    return path, raw


def test_chain_and_cumulative_factors(tmp_path):
    path, raw = _chain(tmp_path)
    ledger = read_ledger(tmp_path)
    assert [e.line for e in ledger.entries] == [1, 2, 3]
    lines = raw.split(b"\n")
    assert lines[-1] == b"" and len(lines) == 4
    assert json.loads(lines[0])["prev_hash"] is None
    assert json.loads(lines[1])["prev_hash"] == hashlib.sha256(lines[0]).hexdigest()
    assert json.loads(lines[2])["prev_hash"] == hashlib.sha256(lines[1]).hexdigest()
    head = ledger.head.data
    # 0.5 * 0.5 = 0.25 on m.0[1]; m.1[0] = 0.25; rank factors kept apart.
    assert head["cumulative_factors"] == {
        "output": {"m.0": {"index": [1], "factor": [0.25]}, "m.1": {"index": [0], "factor": [0.25]}},
        "rank": {"m.1": {"index": [2], "factor": [0.8]}},
    }
    assert head["request"] == {"n_edited": 1, "sum_1_minus_s": pytest.approx(0.2)}
    assert head["seq"] == 3 and head["unit"] == "rank"
    assert ledger.cumulative("output") == {"m.0": {1: 0.25}, "m.1": {0: 0.25}}
    vec = ledger.cumulative_vector([("m.0", 3), ("m.1", 2)], "output")
    assert vec.tolist() == [1.0, 0.25, 1.0, 0.25, 1.0]
    assert ledger.cumulative_vector([("m.0", 2), ("m.1", 3)], "rank").tolist() == [1, 1, 1, 1, 0.8]
    assert Ledger(None, []).cumulative_vector([("m.0", 2)], "rank") is None
    with pytest.raises(InputError, match="not in the adapter"):
        ledger.cumulative_vector([("x", 3)], "output")
    with pytest.raises(InputError, match="does not exist"):
        ledger.cumulative_vector([("m.0", 1), ("m.1", 2)], "output")
    # Lines are canonical: re-serialising a parsed line gives the same bytes.
    assert all(canonical_line(e.data) == e.raw for e in ledger.entries)
    # A factor that composes back to exactly 1 is dropped.
    e4 = _entry(ledger, "rank", {"m.0": [1, 1], "m.1": [1, 1, 1.25]}, in_sha="a3", out_sha="a4", hmac="h4")
    assert e4["cumulative_factors"]["rank"] == {}


def _rewrite_line(raw: bytes, index: int, change) -> bytes:
    lines = raw.split(b"\n")
    data = json.loads(lines[index])
    change(data)
    lines[index] = canonical_line(data)
    return b"\n".join(lines)


def test_broken_chain_names_the_line(tmp_path):
    path, raw = _chain(tmp_path)

    def edit_factor(d):
        d["cumulative_factors"]["output"]["m.0"]["factor"] = [0.9]

    # Editing line 1 (re-canonicalised) breaks line 2's prev_hash.
    with pytest.raises(InputError, match=r"line 2: field 'prev_hash' does not match"):
        parse_ledger(_rewrite_line(raw, 0, edit_factor), path)
    # A hand edit that is not canonical is caught on its own line.
    with pytest.raises(InputError, match=r"line 3: not in canonical form"):
        parse_ledger(raw.replace(b'"unit":"rank"', b'"unit": "rank"'), path)
    # A dropped middle line: seq and chain no longer fit.
    lines = raw.split(b"\n")
    with pytest.raises(InputError, match=r"line 2: field 'seq' is 3"):
        parse_ledger(lines[0] + b"\n" + lines[2] + b"\n", path)
    with pytest.raises(InputError, match=r"line 3: truncated"):
        parse_ledger(raw[:-1], path)
    with pytest.raises(InputError, match=r"line 2: invalid JSON"):
        parse_ledger(lines[0] + b"\n{oops\n", path)
    with pytest.raises(InputError, match=r"line 1: missing field 'prev_hash'"):
        parse_ledger(_rewrite_line(raw, 0, lambda d: d.pop("prev_hash")), path)
    with pytest.raises(InputError, match=r"line 1: .*factor must be a number in \[0, 1\)"):
        parse_ledger(_rewrite_line(raw, 0, lambda d: d["cumulative_factors"]["output"]["m.0"].update(factor=[1.5])), path)

    def unlink(d):
        d["input_adapter_sha256"] = "zz"

    with pytest.raises(InputError, match=r"line 2: field 'input_adapter_sha256'"):
        parse_ledger(_rewrite_line(raw, 1, unlink), path)
    assert str(path) in str(pytest.raises(InputError, parse_ledger, raw[:-1], path).value)


def test_repeat_refused_unless_forced(tmp_path):
    _chain(tmp_path)
    ledger = read_ledger(tmp_path)
    with pytest.raises(InputError, match=r"line 2: this forget set was already attenuated"):
        check_repeat(ledger, "h2", "fp1", force=False)
    warnings = check_repeat(ledger, "h2", "fp1", force=True)
    assert len(warnings) == 1 and "because of --force" in warnings[0]
    assert check_repeat(ledger, "new", "fp1", force=False) == []
    # Under another key nothing can be compared: a warning per entry, no refusal.
    assert len(check_repeat(ledger, "h2", "fp2", force=False)) == 3


def test_adapter_head(tmp_path):
    _chain(tmp_path)
    ledger = read_ledger(tmp_path)
    assert check_adapter_head(ledger, "a3", force=False) == (True, [])
    with pytest.raises(InputError, match=r"line 3: output_adapter_sha256 .* changed after ucan wrote it"):
        check_adapter_head(ledger, "other", force=False)
    matches, warnings = check_adapter_head(ledger, "other", force=True)
    assert not matches and "--force" in warnings[0]
    assert read_ledger(tmp_path / "missing").entries == []
    assert check_adapter_head(Ledger(None, []), "x", force=False) == (True, [])
