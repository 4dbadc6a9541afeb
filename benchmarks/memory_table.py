"""The memory table of docs/scaling.md: ``runtime/footprint.py`` on Llama-2-7B, Llama-3-8B and
Llama-2-13B configs (meta-device skeletons: no weights, no download), LoRA r=8 on q_proj and
v_proj or r=16 on every linear layer, bf16 and 4-bit NF4, one batch of 16 x 512 positions,
output and direction units (direction moments grouped under --max-memory 4 GiB), and the host
memory of the direction units' solve.

    python benchmarks/memory_table.py           # the Markdown rows of docs/scaling.md
    python benchmarks/memory_table.py --quick   # Llama-2-7B, q,v only (CI smoke run)
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

CONFIGS = {
    "Llama-2-7B": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000),
    "Llama-3-8B": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=8, vocab_size=128256),
    "Llama-2-13B": dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                        num_key_value_heads=40, vocab_size=32000),
}
LORAS = {
    "q,v r=8": ({"q_proj", "v_proj"}, 8),
    "all linear r=16": ({"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}, 16),
}
MAX_MEMORY_GIB = 4.0


def _modules(skeleton, targets, r):
    return [SimpleNamespace(name=name, r=r, d_in=m.in_features, d_out=m.out_features) for name, m in skeleton.named_modules()
            if isinstance(m, torch.nn.Linear) and name.split(".")[-1] in targets]


def _groups(modules, budget_gib):
    """How many groups of modules ``moments.plan_groups`` makes; None when one module exceeds the budget."""
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.moments import plan_groups

    try:
        return len(plan_groups(SimpleNamespace(modules=modules), budget_gib))
    except InputError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ucan_cli.runtime.footprint import GIB, footprint

    gib = lambda n: f"{n / GIB:.1f}"  # noqa: E731
    for name, kwargs in list(CONFIGS.items())[:1 if args.quick else None]:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(LlamaConfig(**kwargs))
        for lora, (targets, r) in list(LORAS.items())[:1 if args.quick else None]:
            modules = _modules(skeleton, targets, r)
            est = {(unit, q): footprint(skeleton, modules, unit=unit, dtype="bfloat16", quantize=q, rows=16, width=512,
                                        max_memory_gib=MAX_MEMORY_GIB)
                   for unit in ("output", "direction") for q in (None, "4bit")}
            out16, out4 = est["output", None], est["output", "4bit"]
            total_moments = sum(4 * m.d_in**2 * 8 for m in modules)
            groups = _groups(modules, MAX_MEMORY_GIB)
            largest = max(4 * m.d_in**2 * 8 for m in modules)
            grouping = (f"{groups} groups, {2 * groups} passes" if groups else
                        f"needs --max-memory >= {largest / GIB:.1f}: {_groups(modules, largest / GIB + 0.01)} groups")
            units = sum(m.d_out for m in modules)
            print(f"| {name} | {lora} | {gib(out16.weights)} / {gib(out4.weights)} | {gib(out16.activations)} | "
                  f"{units:,} units: {out16.statistics / 2**20:.0f} MiB | {gib(out16.total)} / {gib(out4.total)} | "
                  f"{gib(total_moments)} GiB in all; {grouping} | {gib(est['direction', None].total)} / "
                  f"{gib(est['direction', '4bit'].total)} | {gib(est['direction', None].host)} |")


if __name__ == "__main__":
    main()
