"""``prune``: the selection by hand on given importances, the Taylor importance against an
independent autograd route in float64, and ``ucan attenuate --method prune`` end to end (exact
zero rows, every other tensor byte-identical, the ledger's factors, --dry-run's cost, the real
console script)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import forget_retain_world, make_records, write_jsonl
from ucan_cli.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    return forget_retain_world(tmp_path_factory.mktemp("prune"), tiny_models, adapters)


def attenuate(world, out: Path, *extra, adapter: Path | None = None):
    args = ["attenuate", "--base", world["base"], "--adapter", adapter or world["adapter"], "--forget", world["forget"],
            "--retain", world["retain"], "--receipt-key", world["key"], "--method", "prune", "--batch-size", "4", "-o", out, *extra]
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------ the selection, by hand


def test_choose_ranks_by_mean_normalised_ratio_with_eps():
    """Six units, unit 5 dead. Means over live units: I_f 2.0, I_r 4.0; eps 0.5.
    score = (I_f / 2) / (I_r / 4 + 0.5): [0.5, 1.0, 0.25, 0, 4/3, 0] -> k = ceil(0.5 x 5) = 3
    picks units 4, 1, 0 (unit 3 has no forget importance and is never a candidate)."""
    from ucan_cli.methods.prune.method import choose
    from ucan_cli.methods.prune.params import PruneParams

    forget = np.array([1.0, 4.0, 1.0, 0.0, 4.0, 9.0])
    retain = np.array([2.0, 6.0, 6.0, 2.0, 4.0, 0.0])
    live = np.array([True, True, True, True, True, False])
    c = choose(forget, retain, live, PruneParams(prune_ratio=0.5, prune_eps=0.5).validate())
    by_hand = [(1 / 2) / (2 / 4 + 0.5), (4 / 2) / (6 / 4 + 0.5), (1 / 2) / (6 / 4 + 0.5), 0.0, (4 / 2) / (4 / 4 + 0.5), 0.0]
    assert c.score.tolist() == pytest.approx(by_hand, rel=1e-15)
    assert c.chosen.tolist() == [4, 1, 0] and c.k == 3
    assert c.s.tolist() == [0.0, 0.0, 1.0, 1.0, 0.0, 1.0]
    # forget importance alone: units 1 and 4 tie at 2.0 -> the lower index first; the dead unit 5 never
    c = choose(forget, None, live, PruneParams(prune_count=2, prune_ratio=None, prune_score="forget").validate())
    assert c.chosen.tolist() == [1, 4]
    # asking for more than the candidates prunes the 4 candidates only
    assert choose(forget, retain, live, PruneParams(prune_count=9, prune_ratio=None).validate()).chosen.size == 4


def test_choose_with_no_forget_importance_is_nothing_to_do():
    from ucan_cli.errors import NothingToDo
    from ucan_cli.methods.prune.method import choose
    from ucan_cli.methods.prune.params import PruneParams

    with pytest.raises(NothingToDo):
        choose(np.array([0.0, 0.0, 5.0]), np.ones(3), np.array([True, True, False]), PruneParams().validate())


# ------------------------------------------------------------------------------------ the importance, two ways


@pytest.mark.parametrize("arch", ["llama", "qwen2_rs"])
def test_taylor_importance_matches_a_perturbation_gradient_in_float64(tmp_path, tiny_models, adapters, tokenizer, arch):
    """Hooked |o dL/do| summed over the response positions, batched, against a second route: each
    record alone, the LoRA branch multiplied by (1 + e) with e a zero leaf tensor, so that
    dL/de = a dL/da exactly (chain rule at e = 0), summed |e.grad| on the same positions. Float64;
    qwen2_rs has rsLoRA, rank/alpha patterns and a lora bias."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.data import read_records
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.tokenize import collate, encode_set, pad_token_id
    from ucan_cli.methods.gradient.losses import response_log_probs
    from ucan_cli.methods.prune.importance import taylor_importance
    from ucan_cli.methods.ucan.statistics import find_lora_layers
    from ucan_cli.runtime.models import attach_adapter

    base = tiny_models["llama" if arch == "llama" else "qwen2"]
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(base, dtype=torch.float64), adapters[arch]).eval()
    for name, p in model.named_parameters():
        p.requires_grad_(".lora_" in name)
    source = LoraAdapter.load(adapters[arch])
    layers = find_lora_layers(model, source)
    records = read_records(write_jsonl(tmp_path / "r.jsonl", make_records(5, seed=3)), "forget").records
    encoded = encode_set(records, tokenizer, PromptFormatter("alpaca", tokenizer), 128)
    hooked = taylor_importance(model, layers, encoded, batch_size=3, pad_id=pad_token_id(tokenizer))

    expected = [torch.zeros(layer.lora_B["default"].out_features, dtype=torch.float64) for layer in layers]
    for i, enc in enumerate(encoded):
        batch = collate([enc], [i], pad_token_id(tokenizer))
        leaves: dict[int, torch.Tensor] = {}

        def perturb(j):
            def hook(_module, _inputs, out):
                leaves[j] = torch.zeros_like(out, requires_grad=True)
                return out * (1 + leaves[j])

            return hook

        handles = [layer.lora_B["default"].register_forward_hook(perturb(j)) for j, layer in enumerate(layers)]
        try:
            logp, _ = response_log_probs(model, batch)
            grads = torch.autograd.grad(-logp.sum(), [leaves[j] for j in range(len(layers))])
        finally:
            for h in handles:
                h.remove()
        mask = batch.scope_mask("response")
        for j, g in enumerate(grads):
            expected[j] += g[mask].abs().sum(0)
    expected = torch.cat(expected).numpy()
    assert hooked.shape == expected.shape and expected.sum() > 0
    np.testing.assert_allclose(hooked, expected, rtol=1e-9, atol=1e-12 * expected.max())
    assert all(p.grad is None for p in model.parameters())  # the weights' gradients were dropped


# ------------------------------------------------------------------------------------ end to end


def test_prune_zeroes_exactly_the_units_it_names_and_the_ledger_composes(world):
    """--prune-count 5: the five units the report names have B rows exactly 0; every other row of
    B and every other tensor is byte-identical to the input; the ledger's cumulative factors hold
    those units at 0 (request: 5 edited, no gradient kind). A second prune of the output composes:
    the first five stay at 0, five new (live) units join them."""
    from ucan_cli.io.ledger import read_ledger

    root = world["root"]
    out = root / "p1"
    result = attenuate(world, out, "--prune-count", "5", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads((out / "ucan_report.json").read_text())
    named = {(u["module"], u["unit"]) for u in report["summary"]["pruned"]}
    assert len(named) == 5 and report["summary"]["n_attenuated"] == 5 and report["options"]["method"] == "prune"
    before, after = load_file(world["adapter"] / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    zeroed = set()
    for key, tensor in before.items():
        if ".lora_B." not in key:
            assert torch.equal(after[key], tensor) and after[key].dtype == tensor.dtype, key
            continue
        module = key.split("base_model.model.")[1].split(".lora_B")[0]
        for row in range(tensor.shape[0]):
            if (module, row) in named:
                assert torch.all(after[key][row] == 0), (module, row)
                zeroed.add((module, row))
            else:
                assert torch.equal(after[key][row], tensor[row]), (module, row)
    assert zeroed == named

    entry = read_ledger(out).head.data
    cum = {(m, i): f for m, v in entry["cumulative_factors"]["output"].items() for i, f in zip(v["index"], v["factor"])}
    assert cum == {u: 0.0 for u in named}
    assert entry["request"] == {"n_edited": 5, "sum_1_minus_s": 5.0}

    again = attenuate(world, root / "p2", "--prune-count", "5", "--force", adapter=out)
    assert again.exit_code == 0, again.output
    entry2 = read_ledger(root / "p2").head.data
    cum2 = {(m, i): f for m, v in entry2["cumulative_factors"]["output"].items() for i, f in zip(v["index"], v["factor"])}
    assert len(cum2) == 10 and named < set(cum2) and set(cum2.values()) == {0.0}

    rerun = runner.invoke(app, ["attenuate", "--config", str(out / "ucan_config.toml"), "--receipt-key", str(world["key"]),
                                "-o", str(root / "p1-rerun")])
    assert rerun.exit_code == 0, rerun.output
    assert (root / "p1-rerun" / "adapter_model.safetensors").read_bytes() == (out / "adapter_model.safetensors").read_bytes()


def test_prune_ratio_counts_live_units_and_the_card_says_what_changed(world):
    """--prune-ratio 0.02 on the tiny Llama's 96 live output units: ceil(0.02 x 96) = 2 units."""
    out = world["root"] / "ratio"
    result = attenuate(world, out, "--prune-ratio", "0.02")
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "ucan_report.json").read_text())["summary"]
    assert (summary["n_live"], summary["n_units"], summary["k"]) == (96, 96, math.ceil(0.02 * 96)) == (96, 96, 2)
    card = (out / "README.md").read_text()
    assert f"down-scaled {summary['k']} of {summary['n_units']} LoRA output units" in card and "selective pruning" in card


def test_prune_dry_run_estimates_without_a_model(world, monkeypatch):
    """One forward and one backward per record of each set: 3 x (12 + 24); forget only: 3 x 12."""
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("--dry-run loaded the model"))
    for extra, cost in (((), 108), (("--prune-score", "forget"), 36)):
        out = world["root"] / "dry"
        result = attenuate(world, out, "--dry-run", "--json", *extra)
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["training"]["estimate"]["forward_equivalents"] == cost and not out.exists()


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("prune", ["--prune-ratio", "0.1", "--prune-count", "3"], "--prune-ratio and --prune-count are mutually exclusive"),
        ("prune", ["--lr", "0.1"], "--lr: not an option of --method prune"),
        ("ga", ["--prune-ratio", "0.1"], "--prune-ratio: not an option of --method ga"),
        ("prune", ["--prune-ratio", "1.5"], "--prune-ratio must be in (0, 1]"),
        ("prune", ["--accept-weak"], "--accept-weak: not an option of --method prune"),
    ],
)
def test_bad_prune_options_exit_2_before_any_model_loads(tmp_path, world, monkeypatch, method, extra, message):
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("a model loaded"))
    args = ["attenuate", "--base", world["base"], "--adapter", world["adapter"], "--forget", world["forget"], "--retain",
            world["retain"], "--receipt-key", world["key"], "--method", method, "-o", tmp_path / "out", *extra]
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()


def test_prune_through_the_console_script(world):
    """The real CLI in a subprocess: exit 0, the adapter written, the same bytes as an in-process run."""
    assert attenuate(world, world["root"] / "in-process", "--prune-count", "5").exit_code == 0
    out = world["root"] / "sub"
    cmd = [sys.executable, "-m", "ucan_cli", "attenuate", "--base", str(world["base"]), "--adapter", str(world["adapter"]),
           "--forget", str(world["forget"]), "--retain", str(world["retain"]), "--receipt-key", str(world["key"]),
           "--method", "prune", "--prune-count", "5", "--batch-size", "4", "-o", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "prune (pruning)" in proc.stdout + proc.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == (world["root"] / "in-process" / "adapter_model.safetensors").read_bytes()


def test_the_budget_is_the_exact_ceiling_of_the_decimal_ratio():
    """k = ceil(ratio x live) in rationals, U-CAN's own budget_size: 0.07 x 100 live units is 7 units,
    where math.ceil(0.07 * 100) would give 8 from binary rounding (7.000000000000001)."""
    import numpy as np

    from ucan_cli.methods.prune.method import choose
    from ucan_cli.methods.prune.params import PruneParams

    assert np.ceil(0.07 * 100) == 8
    n = 100
    forget, retain = np.arange(1, n + 1, dtype=float), np.ones(n)
    picked = choose(forget, retain, np.ones(n, dtype=bool), PruneParams(prune_ratio=0.07).validate())
    assert picked.k == 7 and len(picked.chosen) == 7
