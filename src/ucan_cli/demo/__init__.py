"""The synthetic world of ``ucan demo``: generated users and items, a tiny base model, and the
original and reference LoRA adapters the demo unlearns from.

- ``world.generate_world(seed, scenario, size)``: the pure, seeded generator (records, catalogue,
  group definition).
- ``build.build_world(world, out_dir)``: tokenizer, base pretraining, original and reference
  adapters, the JSONL sets and ``world.json`` with the measured memorization numbers.
- ``cache.ensure_world(seed, scenario, size)``: a complete world dir from the user cache, the
  shipped assets, or a fresh build.

Submodules import torch lazily (``world`` not at all), so importing this package is cheap.
"""

from __future__ import annotations

__all__ = ["build", "cache", "world"]
