"""``--method negate``: task-vector negation, B' = -scale x B with A unchanged, checked exactly on
Llama, Qwen2 (rsLoRA, rank and alpha patterns, lora bias) and GPT-2 (Conv1D, fan_in_fan_out)
adapters, in the adapter's tensors and in PEFT's own delta weights; the classic mistake (negating
A and B) shown to leave dW unchanged; and the real CLI without --base or --retain."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app

runner = CliRunner()
KEY = "k" * 32
ARCHS = {"llama": "llama", "qwen2_rs": "qwen2", "gpt2": "gpt2"}


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def negate(source, scale: float):
    from ucan_cli.methods.negate.params import NegateParams
    from ucan_cli.methods.registry import get

    return get("negate").apply(source, NegateParams(scale=scale).validate())


@pytest.mark.parametrize("name", list(ARCHS))
def test_scale_1_flips_the_sign_of_dw_exactly(adapters, name):
    """B' == -B and b' == -b bit for bit, A' is A, so dW' == -dW exactly (float64 forms of the
    float32 tensors); the input object and files are unchanged."""
    from ucan_cli.io.adapter import LoraAdapter

    before = digest(adapters[name])
    source = LoraAdapter.load(adapters[name])
    stored = {k: v.clone() for k, v in source.tensors.items()}
    edit = negate(source, 1.0)
    assert [m.name for m in edit.adapter.modules] == [m.name for m in source.modules]
    for m0, m1 in zip(source.modules, edit.adapter.modules):
        assert m1.B.dtype == torch.float32 and torch.equal(m1.B, -m0.B)
        assert torch.equal(m1.A, m0.A)
        assert torch.equal(m1.delta_weight(), -m0.delta_weight())
        if m0.bias is not None:
            assert torch.equal(m1.bias, -m0.bias)
    if name == "qwen2_rs":  # the fixture really has lora bias, a rank pattern and an alpha pattern
        assert any(m.bias is not None for m in source.modules)
        assert {m.r for m in source.modules} == {2, 4} and len({m.scaling for m in source.modules}) > 1
    assert all(torch.equal(source.tensors[k], v) for k, v in stored.items())
    assert digest(adapters[name]) == before
    assert {c.name for c in edit.changes} == {m.name for m in source.modules}
    for c in edit.changes:  # |dW| is kept, the change is 2 |dW|
        assert c.dw_norm_after == pytest.approx(c.dw_norm_before, rel=1e-12)
        assert c.delta_norm == pytest.approx(2 * c.dw_norm_before, rel=1e-12)
    assert edit.factors == {} and edit.summary["scale"] == 1.0


@pytest.mark.parametrize("name", list(ARCHS))
def test_peft_applies_minus_dw(tmp_path, tiny_models, adapters, name):
    """What PEFT itself applies: every layer's get_delta_weight (with its scaling, rsLoRA, patterns
    and, for GPT-2, the fan_in_fan_out transpose) is exactly minus the input's."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.runtime.models import attach_adapter

    negate(LoraAdapter.load(adapters[name]), 1.0).adapter.write_into(tmp_path)
    deltas = []
    for directory in (adapters[name], tmp_path):
        model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_models[ARCHS[name]], dtype=torch.float32), directory)
        deltas.append({n: m.get_delta_weight("default") for n, m in model.named_modules() if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})})
    assert deltas[0] and deltas[0].keys() == deltas[1].keys()
    for key, dw in deltas[0].items():
        assert torch.equal(deltas[1][key], -dw), key


def test_negating_a_and_b_is_the_classic_mistake(adapters):
    """c (-B)(-A) = c B A: negating both factors gives back dW exactly, which is why negate flips B alone."""
    from ucan_cli.io.adapter import LoraAdapter

    source = LoraAdapter.load(adapters["gpt2"])
    both = source.with_tensors({k: -t for m in source.modules for k, t in ((m.key_A, m.A), (m.key_B, m.B))})
    for m0, m1 in zip(source.modules, both.modules):
        assert not torch.equal(m1.B, m0.B)
        assert torch.equal(m1.delta_weight(), m0.delta_weight())


@pytest.mark.parametrize("name", ["llama", "qwen2_rs"])
def test_scale_half_gives_minus_half_dw(adapters, name):
    from ucan_cli.io.adapter import LoraAdapter

    source = LoraAdapter.load(adapters[name])
    edit = negate(source, 0.5)
    for m0, m1 in zip(source.modules, edit.adapter.modules):
        assert torch.equal(m1.B, -0.5 * m0.B) and torch.equal(m1.A, m0.A)
        assert torch.equal(m1.delta_weight(), -0.5 * m0.delta_weight())
        if m0.bias is not None:
            assert torch.equal(m1.bias, -0.5 * m0.bias)


def test_zeros_stay_positive_and_an_all_zero_b_is_nothing_to_do(tmp_path, adapters):
    """-0.0 never appears (a zero lora_B entry stays +0.0); an adapter whose every B is zero is
    nothing to do (exit 4 through the flow)."""
    from ucan_cli.errors import NothingToDo
    from ucan_cli.io.adapter import LoraAdapter

    source = LoraAdapter.load(adapters["llama"])
    m = source.modules[0]
    B = m.B.clone()
    B[0] = 0.0
    edited = negate(source.with_tensors({m.key_B: B}), 1.0).adapter
    assert torch.equal(torch.signbit(edited.modules[0].B[0]), torch.zeros_like(B[0], dtype=torch.bool))
    zero = source.with_tensors({mm.key_B: torch.zeros_like(mm.B) for mm in source.modules})
    with pytest.raises(NothingToDo, match="every lora_B"):
        negate(zero, 1.0)


# ------------------------------------------------------------------------------------ the CLI


@pytest.fixture()
def files(tmp_path):
    (tmp_path / "key").write_text(KEY)
    return {"forget": write_jsonl(tmp_path / "forget.jsonl", make_records(4, seed=5)), "key": tmp_path / "key"}


def test_cli_negate_without_base_writes_the_documents(tmp_path, adapters, files, monkeypatch):
    """The CLI (in-process; no model or tokenizer may load): no --base, no --retain; exit 0, the standard directory, the config byte
    for byte, B negated, the report/ledger naming negate and its scale, the lineage's factors carried,
    the input untouched; the output loads with PEFT. No model loads (the in-process dry run proves it)."""
    from safetensors.torch import load_file

    from ucan_cli.io.ledger import read_ledger

    src = adapters["qwen2_rs"]
    before = digest(src)
    out = tmp_path / "neg"
    argv = ["attenuate", "--method", "negate", "--adapter", str(src), "--forget", str(files["forget"]),
            "--receipt-key", str(files["key"]), "--scale", "0.5", "-o", str(out), "--json"]
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("negate loaded a model"))
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: pytest.fail("negate loaded a tokenizer"))
    proc = runner.invoke(app, argv)
    assert proc.exit_code == 0, proc.output
    doc = json.loads(proc.stdout)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "ucan_config.toml", "ucan_ledger.jsonl",
        "ucan_report.json", "ucan_report.md",
    ]
    assert (out / "adapter_config.json").read_bytes() == (src / "adapter_config.json").read_bytes()
    old, new = load_file(src / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert sorted(old) == sorted(new)
    for key in old:
        expected = -0.5 * old[key] if (".lora_B." in key) else old[key]
        assert torch.equal(new[key], expected), key
    assert doc["options"]["method"] == "negate" and doc["options"]["scale"] == 0.5
    assert doc["inputs"]["base"] is None and doc["inputs"]["retain"] is None
    assert doc["verdict"]["kind"] == "not-selective" and "not selective" in doc["disclaimer"]
    assert doc["summary"]["cost"]["forward_equivalents"] == 0
    entry = read_ledger(out).head.data
    assert entry["request"]["kind"] == "negate" and entry["request"]["scale"] == 0.5
    assert entry["cumulative_factors"] == {"output": {}, "rank": {}}
    assert "task-vector negation" in (out / "README.md").read_text()
    assert "scale = 0.5" in (out / "ucan_config.toml").read_text()
    assert digest(src) == before

    rerun = runner.invoke(app, ["attenuate", "--config", str(out / "ucan_config.toml"), "--receipt-key", str(files["key"]),
                                "-o", str(tmp_path / "rerun")])
    assert rerun.exit_code == 0, rerun.output
    assert (tmp_path / "rerun" / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()

    dry = runner.invoke(app, ["attenuate", "--method", "negate", "--adapter", str(src), "--forget", str(files["forget"]),
                              "--receipt-key", str(files["key"]), "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    from ucan_cli.io.adapter import LoraAdapter

    dry_doc = json.loads(dry.stdout)
    assert dry_doc["dry_run"] and dry_doc["output"] is None and not (tmp_path / "dry").exists()
    assert dry_doc["totals"]["n_modules_edited"] == len(LoraAdapter.load(src).modules)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--base", "x"], "--base: not an option of --method negate"),
        (["--retain", "r.jsonl"], "--retain: not an option of --method negate"),
        (["--scale", "0"], "--scale must be a finite number > 0"),
        (["--lr", "0.1"], "--lr: not an option of --method negate"),
        (["--train", "t.jsonl"], "--train: not an option of --method negate"),
        (["--accept-weak"], "--accept-weak: not an option of --method negate"),
    ],
)
def test_bad_negate_options_exit_2_and_write_nothing(tmp_path, adapters, files, extra, message):
    out = tmp_path / "out"
    result = runner.invoke(app, ["attenuate", "--method", "negate", "--adapter", str(adapters["llama"]), "--forget",
                                 str(files["forget"]), "--receipt-key", str(files["key"]), "-o", str(out), *extra])
    assert result.exit_code == 2, result.output
    assert message in result.output and not out.exists()


def test_negate_needs_the_forget_file_and_scale_belongs_to_negate(tmp_path, adapters, files):
    result = runner.invoke(app, ["attenuate", "--method", "negate", "--adapter", str(adapters["llama"]), "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--forget required for --method negate" in result.output
    result = runner.invoke(app, ["attenuate", "--adapter", str(adapters["llama"]), "--forget", str(files["forget"]),
                                 "--scale", "2", "-o", str(tmp_path / "o")])
    assert result.exit_code == 2 and "--scale: not an option of --method ucan" in result.output
