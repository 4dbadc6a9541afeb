"""`ucan inspect`: literal numbers from a hand-built adapter, QR-core spectra, base checks."""

from __future__ import annotations

import json
import math

import pytest
import torch
from typer.testing import CliRunner

from test_adapter import hand_adapter, write_adapter
from ucan_cli.cli import app
from ucan_cli.inspection import core_singular_values, effective_rank

runner = CliRunner()


def test_hand_built_adapter_literal_numbers(tmp_path):
    """A = [[1,0],[0,2]], B = I, alpha/r = 2: dW = diag(2, 4), ||dW||_F = 2*sqrt(5)."""
    result = runner.invoke(app, ["inspect", str(hand_adapter(tmp_path / "a")), "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    (module,) = doc["modules"]
    assert module["shape"] == [2, 2] and module["r"] == 2 and module["scaling"] == 2.0
    assert module["dw_norm"] == pytest.approx(2 * math.sqrt(5), rel=1e-12)
    assert module["component_norms"] == pytest.approx([2.0, 4.0], rel=1e-12)
    assert module["singular_values"] == pytest.approx([4.0, 2.0], rel=1e-12)
    assert module["numerical_rank"] == 2
    p = [4 / 6, 2 / 6]
    assert module["effective_rank"] == pytest.approx(math.exp(-sum(x * math.log(x) for x in p)), rel=1e-12)
    assert doc["totals"] == {
        "modules": 1, "lora_parameters": 8, "rank_units": 2, "output_units": 2,
        "dw_norm_total": pytest.approx(2 * math.sqrt(5)), "zero_b_modules": 0, "nonfinite_modules": 0,
    }
    assert doc["supported"] is True and doc["warnings"] == []


def test_core_spectrum_equals_dense_svd():
    torch.manual_seed(0)
    A, B = torch.randn(6, 50, dtype=torch.float64), torch.randn(40, 6, dtype=torch.float64)
    B[:, 5] = 0  # a dead rank component: the numerical rank drops to 5
    dense = torch.linalg.svdvals(1.5 * B @ A)[:6]
    torch.testing.assert_close(core_singular_values(A, B, 1.5), dense, rtol=1e-10, atol=1e-10)
    assert effective_rank(torch.zeros(3, dtype=torch.float64)) == 0.0


def test_warnings_and_unsupported_in_json(tmp_path):
    d = write_adapter(
        tmp_path / "z",
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 2),
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.zeros(2, 2),
        },
        use_dora=True,
        modules_to_save=["lm_head"],
    )
    result = runner.invoke(app, ["inspect", str(d), "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert doc["supported"] is False and doc["unsupported_features"] == ["DoRA (use_dora)"]
    joined = " ".join(doc["warnings"])
    assert "untrained" in joined and "modules_to_save" in joined and "DoRA" in joined
    assert doc["totals"]["zero_b_modules"] == 1


def test_nan_adapter_is_flagged_without_nan_in_json(tmp_path):
    a = torch.ones(2, 2)
    a[0, 0] = float("nan")
    d = write_adapter(
        tmp_path / "nan",
        {
            "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
            "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": torch.ones(2, 2),
        },
    )
    result = runner.invoke(app, ["inspect", str(d), "--json"])
    assert result.exit_code == 0
    doc = json.loads(result.stdout, parse_constant=lambda name: pytest.fail(f"JSON holds {name}"))
    assert doc["modules"][0]["dw_norm"] is None and doc["totals"]["nonfinite_modules"] == 1
    assert any("NaN or Inf" in w for w in doc["warnings"])


def test_base_check_passes_and_names_the_mismatch(adapters, tiny_models, tmp_path):
    ok = runner.invoke(app, ["inspect", str(adapters["llama"]), "--base", str(tiny_models["llama"]), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["base_check"] == {"base": str(tiny_models["llama"]), "ok": True}
    bad = runner.invoke(app, ["inspect", str(adapters["gpt2"]), "--base", str(tiny_models["llama"])])
    assert bad.exit_code == 2
    assert "transformer.h.0.attn.c_attn does not exist in the base model" in bad.stderr
    assert "Traceback" not in bad.output
    from safetensors.torch import load_file

    tensors = load_file(str(adapters["llama"] / "adapter_model.safetensors"))
    key = "base_model.model.model.layers.1.self_attn.q_proj.lora_B.weight"
    tensors[key] = torch.ones(24, tensors[key].shape[1])
    wrong = write_adapter(tmp_path / "wrong", tensors, r=4, lora_alpha=8)
    shape = runner.invoke(app, ["inspect", str(wrong), "--base", str(tiny_models["llama"])])
    assert shape.exit_code == 2
    assert "module model.layers.1.self_attn.q_proj: LoRA update is 24x32 but the base layer is 32x32" in shape.stderr


def test_human_table_names_modules(adapters):
    result = runner.invoke(app, ["inspect", str(adapters["gpt2"])])
    assert result.exit_code == 0
    assert "conv1d" in result.stdout and "supported by ucan" in result.stdout
