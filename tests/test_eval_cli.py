"""``ucan eval`` end to end: a trained tiny adapter, unlearned copies, a reference and the base;
report files against the published schema (docs/report-schema.md), gates (exit 3 / exit 2),
records.jsonl receipts, and bad inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import write_jsonl
from test_evaluate import letter_rows
from typer.testing import CliRunner

from ucan_cli.cli import app

DOCS = Path(__file__).resolve().parents[1] / "docs" / "report-schema.md"


# --------------------------------------------------------------------------- a small JSON Schema checker


def _schemas() -> tuple[dict, dict]:
    """The report schema and the records.jsonl line schema, read from docs/report-schema.md."""
    blocks = re.findall(r"```json\n(.*?)```", DOCS.read_text(encoding="utf-8"), flags=re.S)
    return json.loads(blocks[0]), json.loads(blocks[1])


_TYPES = {
    "object": lambda x: isinstance(x, dict),
    "array": lambda x: isinstance(x, list),
    "string": lambda x: isinstance(x, str),
    "integer": lambda x: isinstance(x, int) and not isinstance(x, bool),
    "number": lambda x: isinstance(x, (int, float)) and not isinstance(x, bool),
    "boolean": lambda x: isinstance(x, bool),
    "null": lambda x: x is None,
}


def validate(value, schema: dict, root: dict, where: str = "$") -> list[str]:
    """Errors of ``value`` against the JSON Schema subset the docs use (empty list = valid)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return validate(value, root["$defs"][name], root, where)
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        types = [types] if isinstance(types, str) else types
        if not any(_TYPES[t](value) for t in types):
            return [f"{where}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{where}: {value!r} != const {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{where}: {value!r} not in {schema['enum']}")
    if "minimum" in schema and _TYPES["number"](value) and value < schema["minimum"]:
        errors.append(f"{where}: {value} < {schema['minimum']}")
    if "pattern" in schema and isinstance(value, str) and not re.search(schema["pattern"], value):
        errors.append(f"{where}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", 10**9):
            errors.append(f"{where}: {len(value)} items")
        if "items" in schema:
            for i, item in enumerate(value):
                errors += validate(item, schema["items"], root, f"{where}[{i}]")
    if isinstance(value, dict):
        for key in schema.get("required", []):
            if key not in value:
                errors.append(f"{where}: missing {key!r}")
        props, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        for key, item in value.items():
            if key in props:
                errors += validate(item, props[key], root, f"{where}.{key}")
                continue
            matched = [s for p, s in patterns.items() if re.search(p, key)]
            for s in matched:
                errors += validate(item, s, root, f"{where}.{key}")
            if matched:
                continue
            extra = schema.get("additionalProperties", True)
            if extra is False:
                errors.append(f"{where}: unexpected key {key!r}")
            elif isinstance(extra, dict):
                errors += validate(item, extra, root, f"{where}.{key}")
    return errors


def test_the_validator_catches_violations():
    report_schema, _ = _schemas()
    assert validate({"schema_version": 2}, report_schema, report_schema)  # wrong const, missing keys
    small = {"type": "object", "additionalProperties": False, "properties": {"a": {"type": "integer", "minimum": 1}}}
    assert validate({"a": 0}, small, small) == ["$.a: 0 < 1"]
    assert validate({"b": 1}, small, small) == ["$: unexpected key 'b'"]
    assert validate({"a": 1.5}, small, small) == ["$.a: 1.5 is not of type ['integer']"]
    assert validate({"a": 2}, small, small) == []


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world(tiny_models, tokenizer, tmp_path_factory):
    """A trained original (forget + retain), a reference (retain only), two unlearned copies and data."""
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.data import read_records
    from ucan_cli.runtime.models import load_base_model
    from ucan_cli.training import TrainConfig, train_lora

    root = tmp_path_factory.mktemp("eval_world")
    base = tiny_models["llama"]
    forget_rows = letter_rows(8, seed=31)
    retain_rows = letter_rows(16, seed=32, user_offset=100)
    holdout_rows = letter_rows(6, seed=33, user_offset=100)  # held-out records of retain users u100..u105
    for i, row in enumerate(holdout_rows):
        row["id"] = f"H{i}"
    paths = {
        "forget": write_jsonl(root / "forget.jsonl", forget_rows),
        "retain": write_jsonl(root / "retain.jsonl", retain_rows),
        "holdout": write_jsonl(root / "holdout.jsonl", holdout_rows),
    }
    config = TrainConfig(epochs=10, lr=1e-2, r=8, alpha=16, batch_size=8, seed=0)
    both = list(read_records(paths["forget"]).records) + list(read_records(paths["retain"]).records)
    train_lora(load_base_model(str(base), device="cpu"), tokenizer, both, root / "original", config)
    train_lora(load_base_model(str(base), device="cpu"), tokenizer, list(read_records(paths["retain"]).records),
               root / "reference", config)
    original = LoraAdapter.load(root / "original")
    for name, factor in (("half", 0.5), ("zero", 0.0)):
        (root / name).mkdir()
        original.with_tensors({m.key_B: m.B * factor for m in original.modules}).write_into(root / name)
    key = root / "receipt.key"
    key.write_text("0123456789abcdef0123456789abcdef\n")
    return {"root": root, "base": str(base), "key": key, **paths,
            **{n: root / n for n in ("original", "reference", "half", "zero")}}


@pytest.fixture(autouse=True)
def _config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))  # never touch the real receipt key


def run(*args: str):
    return CliRunner().invoke(app, ["eval", *args])


def base_args(w, *extra: str) -> list[str]:
    return ["--base", w["base"], "--adapter", str(w["original"]), "--unlearned", str(w["half"]),
            "--forget", str(w["forget"]), "--retain", str(w["retain"]), "--device", "cpu", *extra]


# --------------------------------------------------------------------------- end to end


def test_end_to_end_report_files(world, tmp_path):
    from ucan_cli.io.data import read_records
    from ucan_cli.io.receipts import key_fingerprint, record_receipt

    out = tmp_path / "report"
    result = run(*base_args(world, "--unlearned", str(world["zero"]), "--reference", str(world["reference"]),
                            "--include-base", "--holdout", str(world["holdout"]), "-o", str(out), "--per-record",
                            "--receipt-key", str(world["key"]), "--bootstrap", "200", "-k", "1,3,10"))
    assert result.exit_code == 0, result.output
    report_schema, line_schema = _schemas()
    doc = json.loads((out / "report.json").read_text())
    assert validate(doc, report_schema, report_schema) == []
    assert [a["id"] for a in doc["adapters"]] == ["original", "unlearned_1", "unlearned_2", "reference", "base"]
    assert doc["data"]["forget"]["scoring"] == "single-token"
    assert doc["settings"]["ks"] == [1, 3, 10]
    # one forward per record, per adapter, per set (single-token candidates)
    assert doc["cost"]["sequences"] == 5 * (8 + 16 + 6)
    # lora_B * 0 is the base model: same NLL, same ranks, same AUC
    zero, base = doc["results"]["unlearned_2"], doc["results"]["base"]
    assert zero["forget"]["ppl"] == pytest.approx(base["forget"]["ppl"], rel=1e-5)
    assert zero["privacy"]["mia_auc"] == pytest.approx(base["privacy"]["mia_auc"])
    assert zero["forget"]["recall@1"] == base["forget"]["recall@1"]
    orig = doc["results"]["original"]
    assert orig["forget"]["kl"] == 0.0 and orig["tradeoff"]["retain@10"] == 0.0
    assert doc["results"]["reference"]["reference"]["kl"] == 0.0
    assert doc["memorization_gap"]["gap"] == pytest.approx(orig["privacy"]["mia_auc"] - 0.5)
    # report.md carries the same numbers and the gates section only when there are gates
    md = (out / "report.md").read_text()
    assert "| forget Recall@1 | ↓ |" in md and "## Gates" not in md
    # records.jsonl: HMAC receipts, no text, no ids
    assert doc["receipt_key_fingerprint"] == key_fingerprint(world["key"].read_bytes().strip())
    lines = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(lines) == 8 + 16 + 6
    for line in lines:
        assert validate(line, line_schema, line_schema) == []
        assert set(line["values"]) == {"original", "unlearned_1", "unlearned_2", "reference", "base"}
    key = world["key"].read_bytes().strip()
    forget = read_records(world["forget"]).records
    assert [x["record"] for x in lines[:8]] == [record_receipt(key, r) for r in forget]
    text = (out / "records.jsonl").read_text()
    assert "History" not in text and '"L0"' not in text and "u100" not in text
    assert "kl_reference" in lines[0]["values"]["unlearned_1"] and "kl_reference" not in lines[8]["values"]["original"]


def test_gates_pass_and_fail_as_written(world, tmp_path):
    out = tmp_path / "plain"
    result = run(*base_args(world, "--unlearned", str(world["zero"]), "-o", str(out), "--bootstrap", "0"))
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "report.json").read_text())
    assert doc["gates"] == {"expressions": [], "outcomes": [], "passed": True}
    res, orig = doc["results"], doc["results"]["original"]
    # the two example gates, decided here from the report's own numbers
    expect_fail = any(
        res[a]["forget"]["recall@10"] > 0.6 or res[a]["retain"]["ndcg@10"] < 0.95 * orig["retain"]["ndcg@10"]
        for a in ("unlearned_1", "unlearned_2")
    )
    out2 = tmp_path / "gated"
    result = run(*base_args(world, "--unlearned", str(world["zero"]), "-o", str(out2), "--bootstrap", "0",
                            "--fail-if", "forget.recall@10 > 0.6", "--fail-if", "retain.ndcg@10 < 0.95*original"))
    assert result.exit_code == (3 if expect_fail else 0), result.output
    gated = json.loads((out2 / "report.json").read_text())
    assert len(gated["gates"]["outcomes"]) == 4  # 2 gates x 2 unlearned adapters
    assert gated["gates"]["passed"] is (not expect_fail)
    # gates that cannot hold pass; a gate that always holds fails every adapter, after the report is written
    result = run(*base_args(world, "--bootstrap", "0", "--fail-if", "forget.kl < 0", "--fail-if", "retain.recall@10 > 1"))
    assert result.exit_code == 0, result.output
    assert "all 2 gate(s) passed" in result.stdout
    out3 = tmp_path / "failing"
    result = run(*base_args(world, "--unlearned", str(world["zero"]), "-o", str(out3), "--bootstrap", "0",
                            "--fail-if", "forget.shift >= 0"))
    assert result.exit_code == 3
    assert "error: 2 gate check(s) failed: unlearned_1: 'forget.shift >= 0'" in result.stderr
    failing = json.loads((out3 / "report.json").read_text())
    assert [o["failed"] for o in failing["gates"]["outcomes"]] == [True, True]
    assert failing["gates"]["passed"] is False


def test_gate_on_null_metric_fails(world, tmp_path):
    rows = letter_rows(5, seed=34, with_candidates=False)
    forget = write_jsonl(tmp_path / "nocands.jsonl", rows)
    args = base_args(world, "--bootstrap", "0", "--fail-if", "forget.recall@10 > 0.5", "--json")
    args[args.index("--forget") + 1] = str(forget)
    result = run(*args)
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    outcome = doc["gates"]["outcomes"][0]
    assert outcome["failed"] is True and outcome["value"] is None
    assert "carry no candidates" in outcome["reason"]


def test_malformed_gate_exits_2_before_any_model_loads(world):
    args = base_args(world, "--fail-if", "forget.recal@10 > 0.6")
    args[args.index("--base") + 1] = "/nonexistent/model"  # loading it would fail differently
    result = run(*args)
    assert result.exit_code == 2
    assert "error: --fail-if 'forget.recal@10 > 0.6': unknown metric forget.recal@10" in result.stderr
    result = run(*base_args(world, "--fail-if", "holdout.ndcg@10 < 0.5"))
    assert result.exit_code == 2 and "needs --holdout" in result.stderr
    result = run(*base_args(world, "--fail-if", "forget.recall@20 > 0.5"))
    assert result.exit_code == 2 and "K=20 is not evaluated" in result.stderr


def test_json_stdout_is_the_report(world, tmp_path):
    out = tmp_path / "r"
    result = run(*base_args(world, "--bootstrap", "0", "--json", "-o", str(out)))
    assert result.exit_code == 0, result.stderr
    printed = json.loads(result.stdout)
    written = json.loads((out / "report.json").read_text())
    assert printed["results"] == written["results"]
    assert result.stdout.startswith("{") and result.stdout.rstrip().endswith("}")  # nothing else on stdout


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(("k", "needle"), [("0", "0 must be a positive integer"), ("1.5", "'1.5' is not an integer"),
                                          ("-3", "-3 must be a positive integer"), ("a,5", "'a' is not an integer")])
def test_bad_k_exits_2(world, k, needle):
    result = run(*base_args(world, "-k", k))
    assert result.exit_code == 2
    assert f"error: -k: {needle}" in result.stderr


def test_k_at_least_candidate_count_warns(world):
    fewest = min(len(r["candidates"]) for r in letter_rows(8, seed=31))
    result = run(*base_args(world, "--bootstrap", "0", "-k", f"1,{fewest}"))
    assert result.exit_code == 0
    assert f"K={fewest} >= {fewest}, the candidate count of some forget records" in result.stderr


def test_reference_for_another_base_exits_2(world, adapters):
    result = run(*base_args(world, "--reference", str(adapters["gpt2"])))
    assert result.exit_code == 2
    assert "error: reference adapter (reference):" in result.stderr
    assert "does not exist in the base model" in result.stderr


def test_candidates_missing_on_some_records(world, tmp_path):
    rows = letter_rows(6, seed=35)
    del rows[0]["candidates"]
    forget = write_jsonl(tmp_path / "partial.jsonl", rows)
    args = base_args(world, "--bootstrap", "0", "--json")
    args[args.index("--forget") + 1] = str(forget)
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["data"]["forget"]["scoring"] == "full-vocabulary"
    assert doc["results"]["unlearned_1"]["forget"]["recall@10"] is None
    assert doc["null_reasons"]["unlearned_1"]["forget.recall@10"].startswith("1 of 6 forget records have no candidates")
    assert doc["results"]["unlearned_1"]["forget"]["kl"] > 0
    assert doc["results"]["unlearned_1"]["retain"]["recall@10"] is not None


def test_output_and_option_checks(world, tmp_path):
    result = run(*base_args(world, "--per-record"))
    assert result.exit_code == 2 and "--per-record writes records.jsonl" in result.stderr
    existing = tmp_path / "exists"
    existing.mkdir()
    result = run(*base_args(world, "-o", str(existing)))
    assert result.exit_code == 2 and "already exists; pass --force" in result.stderr
    result = run(*base_args(world, "-o", str(world["half"])))  # the output would overwrite an input adapter
    assert result.exit_code == 2 and "would overlap the input" in result.stderr
    missing = tmp_path / "none"
    result = run(*base_args(world, "--reference", str(missing)))
    assert result.exit_code == 2 and "reference adapter:" in result.stderr and "not found" in result.stderr


def test_attenuate_then_eval(world, tmp_path):
    """The pipeline a user runs: ucan attenuate writes an adapter, ucan eval measures it."""
    forgot = tmp_path / "forgot"
    result = CliRunner().invoke(app, ["attenuate", "--base", world["base"], "--adapter", str(world["original"]),
                                      "--forget", str(world["forget"]), "--retain", str(world["retain"]),
                                      "-o", str(forgot), "--device", "cpu", "--receipt-key", str(world["key"])])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report"
    result = run("--base", world["base"], "--adapter", str(world["original"]), "--unlearned", str(forgot),
                 "--reference", str(world["reference"]), "--forget", str(world["forget"]), "--retain", str(world["retain"]),
                 "--holdout", str(world["holdout"]), "-o", str(out), "--device", "cpu", "--bootstrap", "100",
                 "--fail-if", "retain.ppl > 100*original")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "report.json").read_text())
    report_schema, _ = _schemas()
    assert validate(doc, report_schema, report_schema) == []
    u = doc["results"]["unlearned_1"]
    assert u["forget"]["kl"] > 0  # the edit moved the forget predictions
    assert doc["adapters"][1]["path"] == str(forgot)
    assert doc["gates"]["passed"] is True
