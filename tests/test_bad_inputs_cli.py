"""Every bad input of SPEC section 2 and every refused adapter feature, through the real command:
exit 2, one line naming the place, no traceback, nothing written, and no model loaded."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app

runner = CliRunner()

GOOD = make_records(1, user_offset=500)[0]


def _lines(*objs) -> list[str]:
    return [o if isinstance(o, str) else json.dumps(o) for o in objs]


BAD_FORGET = [
    (_lines(GOOD, '{"instruction": "x", "output": '), r"forget.jsonl:2: invalid JSON"),
    (_lines(GOOD, "[1]"), r"forget.jsonl:2: expected a JSON object"),
    (_lines(GOOD, {"instruction": "x"}), r"forget.jsonl:2: field 'output' is missing"),
    (_lines(GOOD, {"instruction": 1, "output": "x"}), r"forget.jsonl:2: field 'instruction' must be a string"),
    (_lines({**GOOD, "output": "nope"}), r"forget.jsonl:1: field 'output' 'nope' is not among the candidates"),
    (_lines({**GOOD, "candidates": [GOOD["output"], GOOD["output"]]}), r"forget.jsonl:1: field 'candidates' has the duplicate candidate"),
    (_lines(GOOD, {**GOOD, "user_id": "other"}), r"forget.jsonl:2: field 'id' 'r500' duplicates line 1"),
    ([], r"forget.jsonl: forget file is empty"),
]


def _run(tmp_path, tiny_models, adapter, forget_lines=None, retain_rows=None, extra=()):
    forget = tmp_path / "forget.jsonl"
    forget.write_text("".join(line + "\n" for line in (forget_lines if forget_lines is not None else _lines(GOOD))))
    retain = write_jsonl(tmp_path / "retain.jsonl", retain_rows if retain_rows is not None else make_records(8))
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["attenuate", "--base", str(tiny_models["llama"]), "--adapter", str(adapter), "--forget", str(forget),
         "--retain", str(retain), "-o", str(out), "--receipt-key", str(_key(tmp_path)), *extra],
    )
    return result, out


def _key(tmp_path):
    key = tmp_path / "receipt.key"
    if not key.exists():
        key.write_text("k" * 64)
    return key


def _assert_input_error(result, out, pattern):
    import re

    assert result.exit_code == 2, result.output
    assert re.search(pattern, result.stderr), result.stderr
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ")
    assert "Traceback" not in result.output
    assert not out.exists() and not list(out.parent.glob(".out.tmp-*"))


@pytest.mark.parametrize("lines, pattern", BAD_FORGET, ids=[p.split(": ", 1)[-1][:30] for _, p in BAD_FORGET])
def test_bad_forget_file(tmp_path, tiny_models, adapters, lines, pattern, monkeypatch):
    import ucan_cli.runtime.models as models

    def refuse(*args, **kwargs):  # input errors must surface before any weights load
        raise AssertionError("a model loaded before the input error was found")

    monkeypatch.setattr(models, "load_base_model", refuse)
    result, out = _run(tmp_path, tiny_models, adapters["llama"], forget_lines=lines)
    _assert_input_error(result, out, pattern)


def test_overlap_between_forget_and_retain(tmp_path, tiny_models, adapters):
    retain = make_records(8)
    retain[3]["user_id"] = GOOD["user_id"]
    result, out = _run(tmp_path, tiny_models, adapters["llama"], retain_rows=retain)
    _assert_input_error(result, out, r"retain.jsonl:4: field 'user_id' 'u500' is also in the forget set")


@pytest.mark.parametrize(
    "change, feature",
    [
        ({"use_dora": True}, "DoRA"),
        ({"target_parameters": ["mlp.gate_up_proj"]}, "target_parameters"),
        ({"trainable_token_indices": [3]}, "trainable_token_indices"),
        ({"layer_replication": [[0, 2]]}, "layer_replication"),
    ],
)
def test_refused_adapter_features(tmp_path, tiny_models, adapters, change, feature):
    adapter = tmp_path / "adapter"
    shutil.copytree(adapters["llama"], adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(change)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    before = {p.name: p.read_bytes() for p in adapter.iterdir()}
    result, out = _run(tmp_path, tiny_models, adapter)
    _assert_input_error(result, out, rf"adapter_config.json: .*{feature}.* is not supported")
    assert {p.name: p.read_bytes() for p in adapter.iterdir()} == before
