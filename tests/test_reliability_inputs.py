"""Reliability audit (issue 9, item 6): bad inputs, parser errors and security switches.

Every input error is one line ``error: ...`` on stderr naming the file (and line or field where
there is one), exit 2, before any model loads, with nothing written.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from test_adapter import hand_adapter
from test_attenuate_cli import KEY, synthetic_score_file
from ucan_cli.cli import app
from ucan_cli.errors import InputError

runner = CliRunner()


def _one_line_error(result, pattern: str, code: int = 2) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert not result.stderr.startswith("error: error:"), result.stderr
    assert re.search(pattern, result.stderr), result.stderr
    assert "Traceback" not in result.output and "Usage:" not in result.output


@pytest.fixture()
def no_model_loads(monkeypatch):
    """Input errors must surface before any weights load."""
    import ucan_cli.runtime.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the input error was found")

    monkeypatch.setattr(models, "load_base_model", refuse)


def _attenuate(tmp_path, base, adapter, forget=None, retain=None, extra=()):
    forget = forget or write_jsonl(tmp_path / "forget.jsonl", make_records(2, user_offset=500))
    retain = retain or write_jsonl(tmp_path / "retain.jsonl", make_records(8))
    key = tmp_path / "receipt.key"
    key.write_text(KEY)
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        ["attenuate", "--base", str(base), "--adapter", str(adapter), "--forget", str(forget), "--retain", str(retain),
         "-o", str(out), "--receipt-key", str(key), *extra],
    )
    return result, out


def _nothing_written(out: Path) -> None:
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


def _edited_adapter(tmp_path, source, **changes) -> Path:
    adapter = tmp_path / "adapter"
    shutil.copytree(source, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    config.update(changes)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    return adapter


# ------------------------------------------------------------------ 1. exit 1 where 2 is promised


def test_config_r_disagreeing_with_tensors(tmp_path, tiny_models, adapters, no_model_loads):
    adapter = _edited_adapter(tmp_path, adapters["llama"], r=8)  # the tensors have r = 4
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapter)
    _one_line_error(result, r"adapter_config\.json: r=8 for model\.layers\.0\.\S+ but its lora_A has 4 rows")
    _nothing_written(out)


def test_rank_pattern_is_what_r_resolves_to(tmp_path, adapters):
    """qwen2_rs has r=4 with rank_pattern v_proj: 2; both agree with the tensors, so it loads, and a
    wrong pattern is named as such."""
    from ucan_cli.io.adapter import LoraAdapter

    LoraAdapter.load(adapters["qwen2_rs"])
    adapter = _edited_adapter(tmp_path, adapters["qwen2_rs"], rank_pattern={"self_attn.v_proj": 3})
    with pytest.raises(InputError, match=r"rank_pattern gives r=3 for model\.layers\.0\.self_attn\.v_proj but its lora_A has 2 rows"):
        LoraAdapter.load(adapter)


def test_deeply_nested_json_line(tmp_path, tiny_models, adapters, no_model_loads):
    good = json.dumps(make_records(1, user_offset=500)[0])
    forget = tmp_path / "forget.jsonl"
    forget.write_text(good + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapters["llama"], forget=forget)
    _one_line_error(result, r"forget\.jsonl:2: .*nested too deeply")
    _nothing_written(out)


@pytest.mark.parametrize("damage", ["truncated", "flipped", "not_gzip"])
def test_corrupt_gzip(tmp_path, tiny_models, adapters, no_model_loads, damage):
    raw = gzip.compress("".join(json.dumps(r) + "\n" for r in make_records(200, user_offset=500)).encode())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    elif damage == "flipped":
        raw = raw[:40] + bytes(b ^ 0xFF for b in raw[40:80]) + raw[80:]
    else:
        raw = b"plain text, not gzip\n"
    forget = tmp_path / "forget.jsonl.gz"
    forget.write_bytes(raw)
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapters["llama"], forget=forget)
    _one_line_error(result, r"forget\.jsonl\.gz(:\d+)?: (not a valid gzip file|corrupt gzip data)")
    _nothing_written(out)


@pytest.mark.parametrize("kind", ["directory", "missing", "not_utf8", "invalid_toml"])
def test_bad_config_file(tmp_path, kind):
    adapter = hand_adapter(tmp_path / "a")
    config = tmp_path / "ucan.toml"
    if kind == "directory":
        config.mkdir()
    elif kind == "not_utf8":
        config.write_bytes(b'seed = 1\n# caf\xe9\n')
    elif kind == "invalid_toml":
        config.write_text("seed = \n")
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    _one_line_error(result, rf"^error: {re.escape(str(config))}: ")


# ------------------------------------------------------------------ 2. parser errors are one line


@pytest.mark.parametrize(
    "argv, pattern",
    [
        (["score", "--batch-size", "abc", "--base", "b", "--adapter", "a", "--forget", "f", "--retain", "r"],
         r"ucan score: Invalid value for '--batch-size': .*integer"),
        (["attenuate", "--lambda", "-1", "--adapter", "a", "-o", "o"], r"ucan attenuate: Invalid value for '--lambda': .*greater than or equal to 0"),
        (["prepare", "movielens", "--preset", "bogus", "-o", "o"], r"ucan prepare movielens: .*'--preset'.*'bogus'"),
        (["score", "--adapter", "a"], r"ucan score: Missing option '--base'"),
        (["inspect"], r"ucan inspect: Missing argument 'ADAPTER'"),
        (["no-such-command"], r"ucan: No such command 'no-such-command'"),
        (["inspect", "x", "--no-such-option"], r"ucan inspect: No such option: --no-such-option"),
    ],
)
def test_parser_errors_are_one_line(argv, pattern):
    _one_line_error(runner.invoke(app, argv), pattern)


def test_parser_errors_through_the_console_script():
    bad = subprocess.run([sys.executable, "-m", "ucan_cli", "eval", "--batch-size", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == ""
    assert re.fullmatch(r"error: ucan eval: Invalid value for '--batch-size': must be a positive integer or 'auto', got 0\n", bad.stderr), bad.stderr
    helped = subprocess.run([sys.executable, "-m", "ucan_cli", "score", "--help"], capture_output=True, text=True)
    assert helped.returncode == 0 and "--batch-size" in helped.stdout and helped.stderr == ""
    bare = subprocess.run([sys.executable, "-m", "ucan_cli"], capture_output=True, text=True)
    assert "Usage" in bare.stdout + bare.stderr and "error:" not in bare.stderr  # no arguments: the help


def test_help_and_version_still_work():
    for argv in (["--help"], ["attenuate", "--help"], ["prepare", "split", "--help"], ["--version"]):
        result = runner.invoke(app, argv)
        assert result.exit_code == 0 and result.stderr == "", (argv, result.stderr)
        assert "Usage" in result.stdout or "ucan " in result.stdout


# ------------------------------------------------------------------ 3. security switches: command line only


@pytest.mark.parametrize(
    "text", ["trust_remote_code = true\n", "allow-pickle = true\n", "[inspect]\ntrust_remote_code = true\n", 'allow_pickle = "yes"\n']
)
def test_config_cannot_set_security_switches(tmp_path, text):
    adapter = hand_adapter(tmp_path / "a")
    config = tmp_path / "ucan.toml"
    config.write_text(text)
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    flag = "--trust-remote-code" if "trust" in text else "--allow-pickle"
    name = flag[2:].replace("-", "_")
    _one_line_error(result, rf"{re.escape(str(config))}: {name} can only be set on the command line \({flag}\)")


def test_config_switches_set_to_false_are_ignored(tmp_path):
    """ucan_config.toml files written before this change carry both switches as false: they still rerun."""
    adapter = hand_adapter(tmp_path / "a")
    config = tmp_path / "ucan.toml"
    config.write_text("json = true\n[inspect]\nallow_pickle = false\ntrust_remote_code = false\n")
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    assert result.exit_code == 0 and json.loads(result.stdout)["totals"]["modules"] == 1


def test_writer_and_reader_agree_on_the_switches():
    """One list of switches (ucan_cli.config) for both: the writer leaves out every switch the reader refuses."""
    from ucan_cli.config import COMMAND_LINE_ONLY, config_toml

    written = config_toml("attenuate", {key: True for key in COMMAND_LINE_ONLY})
    assert not any(key in written for key in COMMAND_LINE_ONLY)


def test_written_config_has_no_security_switches(tmp_path, adapters):
    forget = write_jsonl(tmp_path / "forget.jsonl", make_records(4, seed=1, user_offset=100))
    key = tmp_path / "key"
    key.write_text(KEY)
    scores = synthetic_score_file(adapters["llama"], tmp_path / "s.safetensors", key, forget, seed=3)
    first = tmp_path / "first"
    args = ["attenuate", "--adapter", str(adapters["llama"]), "--scores", str(scores), "--receipt-key", str(key)]
    result = runner.invoke(app, [*args, "-o", str(first), "--allow-pickle", "--trust-remote-code"])
    assert result.exit_code == 0, result.stderr
    text = (first / "ucan_config.toml").read_text()
    assert "allow_pickle" not in text and "trust_remote_code" not in text
    assert "\nseed = 0\n" in text and text.startswith("# The resolved options of this run.")
    # ... and it still reproduces the run byte for byte.
    result = runner.invoke(app, ["attenuate", "--config", str(first / "ucan_config.toml"), "-o", str(tmp_path / "again")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == (first / "adapter_model.safetensors").read_bytes()


# ------------------------------------------------------------------ 4. QALoRA and activated LoRA


@pytest.mark.parametrize(
    "change, feature",
    [({"use_qalora": True}, "QALoRA"), ({"alora_invocation_tokens": [5, 6]}, "activated LoRA")],
)
def test_qalora_and_alora_refused_and_flagged(tmp_path, tiny_models, adapters, no_model_loads, change, feature):
    adapter = _edited_adapter(tmp_path, adapters["llama"], **change)
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapter)
    _one_line_error(result, rf"adapter_config\.json: {feature} \({next(iter(change))}\) is not supported")
    _nothing_written(out)
    inspected = runner.invoke(app, ["inspect", str(adapter), "--json"])
    assert inspected.exit_code == 0
    assert any(feature in f for f in json.loads(inspected.stdout)["unsupported_features"])
    assert f"unsupported: {feature}" in inspected.stderr


def test_qalora_and_alora_off_are_accepted(tmp_path, adapters):
    from ucan_cli.io.adapter import LoraAdapter

    adapter = _edited_adapter(tmp_path, adapters["llama"], use_qalora=False, alora_invocation_tokens=None, qalora_group_size=16)
    LoraAdapter.load(adapter).check_supported()


# ------------------------------------------------------------------ 5. adapter for another architecture


def test_adapter_for_another_architecture(tmp_path, tiny_models, adapters, no_model_loads):
    """The tiny Qwen2 adapter's modules and shapes all exist in the tiny Llama: only the adapter's
    auto_mapping.base_model_class tells them apart."""
    adapter = adapters["qwen2_rs"]
    assert json.loads((adapter / "adapter_config.json").read_text())["auto_mapping"]["base_model_class"] == "Qwen2ForCausalLM"
    pattern = r"adapter was trained on Qwen2ForCausalLM .*base model is LlamaForCausalLM"
    _one_line_error(runner.invoke(app, ["inspect", str(adapter), "--base", str(tiny_models["llama"])]), pattern)
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapter)
    _one_line_error(result, pattern)
    _nothing_written(out)
    assert runner.invoke(app, ["inspect", str(adapter), "--base", str(tiny_models["qwen2"])]).exit_code == 0


def test_adapter_without_auto_mapping_is_checked_by_shapes_only(tmp_path, tiny_models, adapters):
    config = json.loads((adapters["qwen2_rs"] / "adapter_config.json").read_text())
    config.pop("auto_mapping")
    adapter = tmp_path / "adapter"
    shutil.copytree(adapters["qwen2_rs"], adapter)
    (adapter / "adapter_config.json").write_text(json.dumps(config))
    assert runner.invoke(app, ["inspect", str(adapter), "--base", str(tiny_models["llama"])]).exit_code == 0


# ------------------------------------------------------------------ 6. bounded lines, streamed records


def test_line_over_the_limit(tmp_path, tiny_models, adapters, no_model_loads):
    from ucan_cli.io.data import MAX_LINE_BYTES

    big = {**make_records(1, user_offset=600)[0], "notes": "x" * MAX_LINE_BYTES}
    forget = tmp_path / "forget.jsonl"
    forget.write_text(json.dumps(make_records(1, user_offset=500)[0]) + "\n" + json.dumps(big) + "\n")
    result, out = _attenuate(tmp_path, tiny_models["llama"], adapters["llama"], forget=forget)
    _one_line_error(result, r"forget\.jsonl:2: line is longer than 1 MiB")
    _nothing_written(out)


def test_line_at_the_limit_is_read(tmp_path):
    from ucan_cli.io.data import MAX_LINE_BYTES, read_records

    record = make_records(1)[0]
    record["notes"] = ""
    record["notes"] = "x" * (MAX_LINE_BYTES - len(json.dumps(record)) - 2)  # with "\r\n": exactly the limit
    path = tmp_path / "r.jsonl"
    path.write_bytes((json.dumps(record) + "\r\n").encode())
    assert len(read_records(path)) == 1


@pytest.mark.parametrize("name", ["r.jsonl", "r.jsonl.gz"])
def test_records_stream_without_holding_the_file(tmp_path, name):
    """A file far larger than its records (lines padded with blanks) is read in bounded memory, and
    its SHA-256 is still that of the file's bytes."""
    from ucan_cli.io.data import read_records

    pad = " " * 200_000
    text = "".join(json.dumps(r) + pad + "\n" for r in make_records(60))  # 12 MB, records of ~200 bytes
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode(), compresslevel=1) if name.endswith(".gz") else text.encode())
    tracemalloc.start()
    try:
        records = read_records(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(records) == 60 and records.records[59].line == 60
    assert records.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert peak < 3 * 2**20, f"peak {peak / 2**20:.1f} MiB while reading a {len(text) / 2**20:.0f} MB file"


def test_records_share_repeated_strings(tmp_path):
    """Keys and repeated short values (instructions, candidates) are stored once per file."""
    from ucan_cli.io.data import read_records

    records = read_records(write_jsonl(tmp_path / "r.jsonl", make_records(50, n_candidates=20))).records
    a, b = records[0], records[1]
    assert a.fields["instruction"] is b.fields["instruction"]
    assert next(iter(a.fields)) is next(iter(b.fields))
    common = set(a.candidates) & set(b.candidates)
    assert common and {id(c) for c in a.candidates if c in common} == {id(c) for c in b.candidates if c in common}
    assert type(a.fields["candidates"]) is list  # templates see the record as written
