"""runtime/footprint.py against hand counts on a config small enough to count by hand.

LlamaConfig(hidden 8, MLP 16, 1 layer, 2 heads, vocab 10, untied head): embeddings 10x8 = 80,
q/k/v/o 4 x 8x8 = 256, gate/up 2 x 16x8 = 256, down 8x16 = 128, two layer norms 16, the final
norm 8, lm_head 80: 824 parameters, 640 of them in the decoder's Linear layers (72 output rows).
A LoRA of rank 2 on q_proj and v_proj (d_in = d_out = 8).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


@pytest.fixture(scope="module")
def skeleton():
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=10, tie_word_embeddings=False)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


MODULES = [SimpleNamespace(name=f"layers.0.self_attn.{p}_proj", r=2, d_in=8, d_out=8) for p in ("q", "v")]


def test_weights_by_hand(skeleton):
    from ucan_cli.runtime.footprint import weight_bytes

    assert sum(p.numel() for p in skeleton.parameters()) == 824
    assert weight_bytes(skeleton, dtype_bytes=2) == 1648
    assert weight_bytes(skeleton, dtype_bytes=4) == 3296
    # NF4: 640 x (1/2 + 1/64 + 1/4096) = 330.23 bytes, the other 184 parameters in bf16 = 368
    assert weight_bytes(skeleton, dtype_bytes=2, quantize="4bit") == 698
    # int8: 640 bytes + 72 rows x 4-byte scales = 928, + 368
    assert weight_bytes(skeleton, dtype_bytes=2, quantize="8bit") == 1296


def test_activations_statistics_and_total_by_hand(skeleton):
    from ucan_cli.runtime.footprint import REDUCE_BYTES, activation_bytes, footprint, statistics_bytes

    # forward: 2 x 5 positions x ((4 x 8 + 3 x 16) x 2 bytes + 4 bytes x (2 + 2) kept lora_A outputs) + 2 rows x 10 logits x 4
    forward = 10 * (160 + 16) + 80
    assert activation_bytes(skeleton.config, MODULES, rows=2, width=5, dtype_bytes=2, unit="direction") == forward == 1840
    # the reduction after it: the kept outputs (160) + 4 float64 chunks of 10 positions x 16 output units
    assert activation_bytes(skeleton.config, MODULES, rows=2, width=5, dtype_bytes=2, unit="output") == 160 + 4 * 10 * 16 * 8
    assert activation_bytes(skeleton.config, MODULES, rows=2, width=5, dtype_bytes=2, unit="rank") == forward  # 160 + 1280 < 1840
    # a large batch: the chunks stop at 4 x 2^22 float64
    assert activation_bytes(skeleton.config, MODULES, rows=4096, width=4096, dtype_bytes=2, unit="output") == 4096 * 4096 * 176 + 4096 * 40
    assert REDUCE_BYTES == 4 * 2**22 * 8
    # output: 16 units x 4 sums x 4 groups x 8 bytes + c B^T (2 x 8 x 8 x 8 bytes x 2 modules)
    assert statistics_bytes(MODULES, unit="output") == 2048 + 256
    assert statistics_bytes(MODULES, unit="rank") == 4 * 4 * 4 * 8
    # direction: 4 sets x 8^2 x 8 bytes = 2048 per module; both fit one group
    assert statistics_bytes(MODULES, unit="direction") == 4096
    assert statistics_bytes(MODULES, unit="direction", max_memory_gib=2048 / 2**30) == 2048  # one module a group
    f = footprint(skeleton, MODULES, unit="rank", dtype="bfloat16", quantize=None, rows=2, width=5)
    assert f.as_dict() == {"weights": 1648, "adapter": 2 * 4 * 2 * 16, "activations": 1840, "statistics": 512, "host": 0,
                           "total": 1648 + 256 + 1840 + 512, "total_cpu": 1648 + 256 + 1840 + 512}
    # direction units' solve on the host: 2 modules of d_in 8: moments 2 x 2048, kept V and U 2 x 2 x 512,
    # one module's work 12 x 512; a CPU run peaks at the larger of the passes and the solve
    from ucan_cli.runtime.footprint import SOLVE_TRANSIENT, host_bytes

    assert SOLVE_TRANSIENT == 12 and host_bytes(MODULES, unit="output") == 0
    assert host_bytes(MODULES, unit="direction") == 4096 + 2048 + 6144 == 12288
    f = footprint(skeleton, MODULES, unit="direction", dtype="bfloat16", quantize=None, rows=2, width=5)
    assert (f.total, f.total_cpu) == (1648 + 256 + 1840 + 4096, 1648 + 256 + 12288)


def test_the_solve_holds_what_host_bytes_says():
    """SOLVE_TRANSIENT against tracemalloc: one module's solve (d_in 256) peaks at 14 d_in^2 float64
    above its four moments and keeps 2 (V and U) for the edit."""
    import tracemalloc

    import numpy as np

    from ucan_cli.methods.ucan.direction import select_directions
    from ucan_cli.methods.ucan.moments import MomentStatistics, SetMoments
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.runtime.footprint import SOLVE_TRANSIENT

    d, rng = 256, np.random.default_rng(0)

    def moments():
        x = rng.standard_normal((1000, d))
        return x.T @ x

    sets = {n: SetMoments([moments()], 1000.0, 50) for n in ("forget", "retain", "half_a", "half_b")}
    stats = MomentStatistics(scope="response", module_names=["m"], module_sizes=[d], **sets)
    import gc

    gc.collect()
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        result, _ = select_directions(stats, MethodParams(unit="direction", gate="none", strength=0.2))
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    square = d * d * 8
    assert len(result.modules) == 1 and result.modules[0].solution.V.shape == (d, d)
    assert abs((current - start) / square - 2) < 0.1  # V and U
    assert (peak - start) / square <= SOLVE_TRANSIENT + 2 + 0.1


def test_dry_run_prints_the_estimate(tmp_path, tiny_models, adapters):
    from conftest import forget_retain_world
    from ucan_cli.flows.score import score_dry_run
    from ucan_cli.report.score import dry_run_document

    w = forget_retain_world(tmp_path, tiny_models, adapters)
    plan = score_dry_run(str(w["base"]), w["adapter"], w["forget"], w["retain"], receipt_key=w["key"], device="cpu", batch_size=4)
    f = dry_run_document(plan)["counts"]["footprint"]
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(w["base"], dtype=torch.float32)
    assert f["weights"] == 4 * sum(p.numel() for p in model.parameters())  # float32 on CPU
    assert f["total"] == f["weights"] + f["adapter"] + f["activations"] + f["statistics"]
    assert f["activations"] > 0 and f["statistics"] > 0


def test_dry_run_of_a_base_without_weights(tmp_path, tiny_models, adapters):
    """A config and a tokenizer, no weight file (a 7B shape on a laptop): the CLI estimates the
    memory from the shapes, in the dtype asked, without loading or probing anything."""
    import json
    import shutil

    from typer.testing import CliRunner

    from conftest import forget_retain_world
    from ucan_cli.cli import app
    from ucan_cli.runtime.models import has_weights

    w = forget_retain_world(tmp_path, tiny_models, adapters)
    shapes = tmp_path / "shapes-only"
    shapes.mkdir()
    for path in w["base"].iterdir():
        if not path.name.endswith(".safetensors"):
            shutil.copy(path, shapes / path.name)
    assert has_weights(str(w["base"])) and not has_weights(str(shapes))
    args = ["score", "--adapter", str(w["adapter"]), "--forget", str(w["forget"]), "--retain", str(w["retain"]),
            "--receipt-key", str(w["key"]), "--batch-size", "4", "--dry-run", "--json", "--dtype", "bfloat16"]
    result = CliRunner().invoke(app, [*args, "--base", str(shapes)])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    with_weights = json.loads(CliRunner().invoke(app, [*args, "--base", str(w["base"])]).stdout)
    assert doc["probe"]["seconds"] is None and doc["estimate_s"] is None and doc["dtype"] == "bfloat16"
    assert with_weights["probe"]["seconds"] > 0
    assert doc["counts"]["footprint"] == with_weights["counts"]["footprint"]  # shapes alone decide it
    assert any("has a config but no weights" in line for line in doc["warnings"])
