"""Step 6 at tensor level: dW' = c B diag(s) A (rank units) or diag(s) dW (output units), A and
untouched tensors bit-identical, lora bias scaled with its output unit, norms from QR cores."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ucan_cli.methods.ucan.edit import apply_factors, total_norms, unit_factors_by_module, units_per_module
from ucan_cli.errors import UcanRuntimeError
from ucan_cli.io.adapter import LoraAdapter


def _factors(adapter: LoraAdapter, unit: str, seed: int, skip_every: int = 3) -> dict[str, np.ndarray]:
    """Random factors in [0, 1) for most units, exactly 1 for some, and all-ones modules."""
    rng = np.random.default_rng(seed)
    out = {}
    for i, (name, size) in enumerate(units_per_module(adapter, unit)):
        if i % skip_every == 0:
            out[name] = np.ones(size)
            continue
        f = rng.uniform(0.0, 1.0, size)
        f[rng.random(size) < 0.3] = 1.0
        out[name] = f
    return out


def _bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().view(torch.uint8).numpy().tobytes()


@pytest.mark.parametrize("unit", ["rank", "output"])
@pytest.mark.parametrize("which", ["qwen2_rs", "gpt2", "llama"])
def test_dw_matches_formula(adapters, which, unit):
    adapter = LoraAdapter.load(adapters[which])
    factors = _factors(adapter, unit, seed=7)
    edited, changes = apply_factors(adapter, factors, unit)
    assert [c.name for c in changes] == [m.name for m in adapter.modules]
    for old, new, change in zip(adapter.modules, edited.modules, changes):
        s = torch.from_numpy(factors[old.name])
        c = old.scaling
        A, B = old.A.double(), old.B.double()
        expected = c * B @ torch.diag(s) @ A if unit == "rank" else torch.diag(s) @ (c * B @ A)
        got = c * new.B.double() @ new.A.double()
        # fp32 storage: one rounding of s * B per entry.
        assert torch.allclose(got, expected, rtol=1e-6, atol=1e-7 * float(expected.abs().max()))
        assert new.A is old.A  # A never changes (the same tensor object)
        assert torch.equal(new.A, old.A)
        if not np.any(factors[old.name] != 1.0):
            assert new.B is old.B and _bytes(new.B) == _bytes(old.B)
            if old.bias is not None:
                assert new.bias is old.bias
        # Units with factor 1 keep their bits even inside an edited module.
        ones = torch.from_numpy(factors[old.name] == 1.0)
        if unit == "rank":
            assert torch.equal(new.B[:, ones], old.B[:, ones])
        else:
            assert torch.equal(new.B[ones], old.B[ones])
        # Norms from QR cores equal the norms of the formed matrices.
        dw, dw_new = c * B @ A, got
        assert change.dw_norm_before == pytest.approx(float(torch.linalg.norm(dw)), rel=1e-10)
        assert change.dw_norm_after == pytest.approx(float(torch.linalg.norm(dw_new)), rel=1e-10)
        assert change.delta_norm == pytest.approx(float(torch.linalg.norm(dw_new - dw)), rel=1e-9, abs=1e-14)
        assert change.n_edited == int((factors[old.name] < 1).sum())
        assert change.n_units == (old.d_out if unit == "output" else old.r)
        assert change.sum_1_minus_s == pytest.approx(float((1 - factors[old.name]).sum()))
    # The input adapter object is untouched.
    reloaded = LoraAdapter.load(adapters[which])
    for key, value in reloaded.tensors.items():
        assert torch.equal(adapter.tensors[key], value)


def test_lora_bias_scaled_only_for_output_units(adapters):
    adapter = LoraAdapter.load(adapters["qwen2_rs"])
    assert all(m.bias is not None for m in adapter.modules)
    factors = _factors(adapter, "output", seed=3, skip_every=2)
    edited, changes = apply_factors(adapter, factors, "output")
    for old, new, change in zip(adapter.modules, edited.modules, changes):
        s = torch.from_numpy(factors[old.name])
        expected = (old.bias.double() * s).to(old.bias.dtype)
        assert torch.equal(new.bias, expected)
        assert change.bias_scaled == bool(np.any(factors[old.name] != 1))
    edited_rank, changes_rank = apply_factors(adapter, _factors(adapter, "rank", seed=3), "rank")
    for old, new, change in zip(adapter.modules, edited_rank.modules, changes_rank):
        assert new.bias is old.bias
        assert not change.bias_scaled


def test_rank_pattern_and_rslora_sizes(adapters):
    adapter = LoraAdapter.load(adapters["qwen2_rs"])
    layout = dict(units_per_module(adapter, "rank"))
    # rank_pattern {"self_attn.v_proj": 2}: v_proj modules have 2 rank units, others 4.
    assert layout["model.layers.0.self_attn.v_proj"] == 2
    assert layout["model.layers.0.self_attn.q_proj"] == 4
    o1 = adapter.module("model.layers.1.self_attn.o_proj")
    assert o1.scaling == pytest.approx(3 / math.sqrt(4))  # alpha_pattern 3, rsLoRA


def _write_adapter(path: Path, A: torch.Tensor, B: torch.Tensor, *, alpha: float, bias: torch.Tensor | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    config = {"peft_type": "LORA", "r": A.shape[0], "lora_alpha": alpha, "target_modules": ["q_proj"], "lora_bias": bias is not None}
    (path / "adapter_config.json").write_text(json.dumps(config))
    tensors = {
        "base_model.model.layer.q_proj.lora_A.weight": A,
        "base_model.model.layer.q_proj.lora_B.weight": B,
    }
    if bias is not None:
        tensors["base_model.model.layer.q_proj.lora_B.bias"] = bias
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def test_hand_computed_norms(tmp_path):
    # dW = 1 * diag(3, 4): ||dW|| = 5. Rank factors (0.5, 1): dW' = diag(1.5, 4).
    adapter = LoraAdapter.load(_write_adapter(tmp_path / "a", torch.eye(2), torch.tensor([[3.0, 0.0], [0.0, 4.0]]), alpha=2))
    edited, [change] = apply_factors(adapter, {"layer.q_proj": np.array([0.5, 1.0])}, "rank")
    assert edited.modules[0].B.tolist() == [[1.5, 0.0], [0.0, 4.0]]
    assert change.dw_norm_before == pytest.approx(5.0, rel=1e-12)
    assert change.dw_norm_after == pytest.approx(math.sqrt(1.5**2 + 16), rel=1e-12)
    assert change.delta_norm == pytest.approx(1.5, rel=1e-12)
    assert change.rel_delta == pytest.approx(0.3, rel=1e-12)
    assert change.rel_norm_change == pytest.approx(math.sqrt(18.25) / 5 - 1, rel=1e-12)
    assert (change.n_edited, change.n_at_most_half, change.min_factor) == (1, 1, 0.5)
    totals = total_norms([change, change])
    assert totals["dw_norm_before"] == pytest.approx(5 * math.sqrt(2))
    assert totals["rel_delta"] == pytest.approx(0.3)


def test_bf16_cast_back_and_bias(tmp_path):
    torch.manual_seed(0)
    A = torch.randn(3, 5).to(torch.bfloat16)
    B = torch.randn(6, 3).to(torch.bfloat16)
    bias = torch.randn(6).to(torch.bfloat16)
    adapter = LoraAdapter.load(_write_adapter(tmp_path / "bf", A, B, alpha=6, bias=bias))
    s = np.array([1.0, 0.25, 1.0, 0.0, 0.7, 1.0])
    edited, [change] = apply_factors(adapter, {"layer.q_proj": s}, "output")
    new = edited.modules[0]
    st = torch.from_numpy(s)
    assert new.B.dtype == torch.bfloat16 and new.bias.dtype == torch.bfloat16
    assert torch.equal(new.B, (B.double() * st[:, None]).to(torch.bfloat16))
    assert torch.equal(new.bias, (bias.double() * st).to(torch.bfloat16))
    assert torch.equal(new.B[[0, 2, 5]], B[[0, 2, 5]])  # factor 1: the same bits
    assert not new.B[3].any() and float(new.bias[3]) == 0.0
    assert change.n_edited == 3 and change.n_at_most_half == 2 and change.min_factor == 0.0


def test_unit_factors_by_module_layout():
    layout = [("m.0", 2), ("m.1", 3)]
    out = unit_factors_by_module(layout, np.array([1.0, 0.5, 0.25, 1.0, 1.0]))
    assert list(out) == ["m.0", "m.1"]
    assert out["m.0"].tolist() == [1.0, 0.5]
    assert out["m.1"].tolist() == [0.25, 1.0, 1.0]

    class Stats:
        module_names = ["m.0", "m.1"]
        module_sizes = [2, 3]

    assert unit_factors_by_module(Stats(), np.arange(5.0))["m.1"].tolist() == [2.0, 3.0, 4.0]
    with pytest.raises(ValueError, match="5 units"):
        unit_factors_by_module(layout, np.ones(4))


def test_bad_factors(tmp_path):
    adapter = LoraAdapter.load(_write_adapter(tmp_path / "a", torch.eye(2), torch.eye(2), alpha=2))
    with pytest.raises(UcanRuntimeError, match=r"\[0, 1\]"):
        apply_factors(adapter, {"layer.q_proj": np.array([np.nan, 1.0])}, "rank")
    with pytest.raises(UcanRuntimeError):
        apply_factors(adapter, {"layer.q_proj": np.array([1.5, 1.0])}, "rank")
    with pytest.raises(ValueError, match="3 factors"):
        apply_factors(adapter, {"layer.q_proj": np.ones(3)}, "output")
    with pytest.raises(ValueError, match="does not have"):
        apply_factors(adapter, {"other": np.ones(2)}, "rank")
    same, changes = apply_factors(adapter, {"layer.q_proj": np.ones(2)}, "rank")
    assert same is adapter and changes[0].delta_norm == 0.0
