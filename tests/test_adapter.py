"""LoRA adapter as data: scaling rules, refused features, atomic writing and PEFT round trips."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ucan_cli.errors import InputError
from ucan_cli.io.adapter import LoraAdapter, natural_key
from ucan_cli.io.outdir import atomic_output_dir, check_output_dir

PREFIX = "base_model.model.model.layers"


def write_adapter(path: Path, tensors: dict, **config) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], **config}
    (path / "adapter_config.json").write_text(json.dumps(cfg))
    save_file(tensors, str(path / "adapter_model.safetensors"))
    return path


def hand_adapter(path: Path, **config) -> Path:
    """A = [[1, 0], [0, 2]], B = I, alpha / r = 4 / 2 = 2  ->  dW = diag(2, 4)."""
    return write_adapter(
        path,
        {
            f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": torch.tensor([[1.0, 0.0], [0.0, 2.0]]),
            f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": torch.eye(2),
        },
        **config,
    )


def test_hand_built_adapter_scaling_and_delta(tmp_path):
    adapter = LoraAdapter.load(hand_adapter(tmp_path / "a"))
    (module,) = adapter.modules
    assert module.name == "model.layers.0.self_attn.q_proj"
    assert module.r == 2 and module.alpha == 4.0 and module.scaling == 2.0
    assert torch.equal(module.delta_weight(), torch.tensor([[2.0, 0.0], [0.0, 4.0]], dtype=torch.float64))


def test_rslora_scaling_uses_sqrt_r(tmp_path):
    adapter = LoraAdapter.load(hand_adapter(tmp_path / "a", use_rslora=True))
    assert adapter.modules[0].scaling == pytest.approx(4 / math.sqrt(2), rel=0, abs=1e-15)


def test_patterns_follow_peft_matching(adapters):
    """rank_pattern {"self_attn.v_proj": 2}, alpha_pattern {"layers.1.self_attn.o_proj": 3}, rsLoRA."""
    adapter = LoraAdapter.load(adapters["qwen2_rs"])
    by_name = {m.name: m for m in adapter.modules}
    v0 = by_name["model.layers.0.self_attn.v_proj"]
    assert v0.r == 2 and v0.alpha == 8 and v0.scaling == pytest.approx(8 / math.sqrt(2))
    o1 = by_name["model.layers.1.self_attn.o_proj"]
    assert o1.r == 4 and o1.alpha == 3 and o1.scaling == pytest.approx(3 / 2)
    q0 = by_name["model.layers.0.self_attn.q_proj"]
    assert q0.r == 4 and q0.scaling == pytest.approx(8 / 2)
    assert all(m.bias is not None for m in adapter.modules)


def test_scaling_matches_peft_layers(adapters, tiny_models):
    """Our resolved scaling equals what PEFT itself builds for every module."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.runtime.models import attach_adapter

    adapter = LoraAdapter.load(adapters["qwen2_rs"])
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32), adapters["qwen2_rs"])
    named = dict(model.base_model.model.named_modules())
    for module in adapter.modules:
        assert named[module.name].scaling["default"] == pytest.approx(module.scaling, rel=1e-12)


def test_modules_are_in_natural_order(adapters):
    names = [m.name for m in LoraAdapter.load(adapters["llama"]).modules]
    assert names == sorted(names, key=natural_key)
    assert natural_key("layers.2.x") < natural_key("layers.10.x")


@pytest.mark.parametrize(
    "config, feature",
    [
        ({"use_dora": True}, "DoRA"),
        ({"target_parameters": ["mlp.experts"]}, "target_parameters"),
        ({"trainable_token_indices": [1, 2]}, "trainable_token_indices"),
        ({"layer_replication": [[0, 1]]}, "layer_replication"),
    ],
)
def test_unsupported_features_are_named(tmp_path, config, feature):
    adapter = LoraAdapter.load(hand_adapter(tmp_path / "a", **config))
    with pytest.raises(InputError, match=feature):
        adapter.check_supported()


def test_embedding_and_conv2d_lora_refused(tmp_path):
    emb = write_adapter(
        tmp_path / "emb",
        {
            "base_model.model.model.embed_tokens.lora_embedding_A": torch.ones(2, 8),
            "base_model.model.model.embed_tokens.lora_embedding_B": torch.ones(8, 2),
            f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 2),
            f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": torch.ones(2, 2),
        },
    )
    with pytest.raises(InputError, match="embedding LoRA"):
        LoraAdapter.load(emb)
    conv = write_adapter(
        tmp_path / "conv",
        {
            "base_model.model.conv.lora_A.weight": torch.ones(2, 3, 3, 3),
            "base_model.model.conv.lora_B.weight": torch.ones(4, 2, 1, 1),
        },
    )
    with pytest.raises(InputError, match="Conv2d"):
        LoraAdapter.load(conv)


def test_bad_adapter_directories(tmp_path):
    with pytest.raises(InputError, match="not found"):
        LoraAdapter.load(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="adapter_config.json"):
        LoraAdapter.load(tmp_path / "empty")
    d = hand_adapter(tmp_path / "notlora")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "IA3"}))
    with pytest.raises(InputError, match="only LORA"):
        LoraAdapter.load(d)
    d = hand_adapter(tmp_path / "pickle")
    (d / "adapter_model.safetensors").rename(d / "adapter_model.bin")
    with pytest.raises(InputError, match="--allow-pickle"):
        LoraAdapter.load(d)


def test_warnings_for_untrained_and_modules_to_save(tmp_path):
    d = write_adapter(
        tmp_path / "zero",
        {
            f"{PREFIX}.0.self_attn.q_proj.lora_A.weight": torch.ones(2, 2),
            f"{PREFIX}.0.self_attn.q_proj.lora_B.weight": torch.zeros(2, 2),
        },
        modules_to_save=["lm_head"],
    )
    warnings = " | ".join(LoraAdapter.load(d).warnings())
    assert "untrained" in warnings and "modules_to_save" in warnings


def _module_tensor_bytes(path: Path) -> dict[str, bytes]:
    with safe_open(str(path / "adapter_model.safetensors"), framework="pt") as handle:
        return {k: handle.get_tensor(k).numpy().tobytes() for k in handle.keys()}


@pytest.mark.parametrize("which", ["llama", "qwen2_rs", "gpt2"])
def test_round_trip_through_peft(tmp_path, adapters, tiny_models, which):
    """read -> write -> PeftModel.from_pretrained: no missing/unexpected keys, bit-identical tensors,
    dtypes and config bytes, identical logits."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    src = adapters[which]
    adapter = LoraAdapter.load(src)
    with atomic_output_dir(tmp_path / "out", force=False, protected=[src]) as tmp:
        adapter.write_into(tmp)
    out = tmp_path / "out"
    assert (out / "adapter_config.json").read_bytes() == (src / "adapter_config.json").read_bytes()
    assert _module_tensor_bytes(out) == _module_tensor_bytes(src)
    reloaded = LoraAdapter.load(out)
    assert {k: v.dtype for k, v in reloaded.tensors.items()} == {k: v.dtype for k, v in adapter.tensors.items()}
    assert reloaded.metadata["ucan_source_adapter_sha256"] == adapter.sha256

    arch = {"llama": "llama", "qwen2_rs": "qwen2", "gpt2": "gpt2"}[which]
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    logits = []
    for path in (src, out):
        base = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, str(path))
        result = model.load_adapter(str(path), adapter_name="check")
        assert not result.unexpected_keys
        assert not [k for k in result.missing_keys if "lora" in k]
        model.eval()
        with torch.no_grad():
            logits.append(model(input_ids=ids).logits)
    assert torch.equal(logits[0], logits[1])


def test_edit_keeps_untouched_tensors_identical(adapters, tmp_path):
    adapter = LoraAdapter.load(adapters["llama"])
    module = adapter.modules[0]
    edited = adapter.with_tensors({module.key_B: module.B * 0.5})
    assert edited.modules[0].B.equal(module.B * 0.5)
    for key, tensor in adapter.tensors.items():
        if key != module.key_B:
            assert edited.tensors[key] is tensor
    with pytest.raises(ValueError):
        adapter.with_tensors({module.key_B: module.B.double()})


def test_output_dir_safety(tmp_path, adapters):
    src = adapters["llama"]
    with pytest.raises(InputError, match="overlap the input"):
        check_output_dir(src, force=True, protected=[src])
    with pytest.raises(InputError, match="overlap the input"):
        check_output_dir(src / "inner", force=True, protected=[src])
    existing = tmp_path / "exists"
    existing.mkdir()
    with pytest.raises(InputError, match="--force"):
        check_output_dir(existing, force=False)
    # A failure inside the block leaves nothing behind and the old directory intact.
    (existing / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(existing, force=True) as tmp:
            (tmp / "partial").write_text("x")
            raise RuntimeError("boom")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]
    assert (existing / "keep.txt").read_text() == "old"
    with atomic_output_dir(existing, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in existing.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]


def test_input_adapter_never_modified_by_writing(tmp_path, adapters):
    src = tmp_path / "src"
    shutil.copytree(adapters["llama"], src)
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    adapter = LoraAdapter.load(src)
    edited = adapter.with_tensors({adapter.modules[0].key_B: adapter.modules[0].B * 0})
    with atomic_output_dir(tmp_path / "out", force=False, protected=[src]) as tmp:
        edited.write_into(tmp)
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before


def test_write_is_byte_stable_and_shareable(tmp_path, adapters):
    """Equal adapters give equal bytes (safetensors orders metadata from a hash map), mode 0644."""
    adapter = LoraAdapter.load(adapters["llama"])
    adapter.metadata.update({"a": "1", "b": "2", "c": "3"})
    outs = []
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        outs.append(adapter.write_into(tmp_path / name, extra_metadata={"z": "9", "y": "8"}))
    assert outs[0].read_bytes() == outs[1].read_bytes()
    assert oct(outs[0].stat().st_mode & 0o777) == oct(0o666 & ~_umask())


def _umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
