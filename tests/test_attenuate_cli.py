"""`ucan attenuate` end to end: a planted forget-only subspace, a trained adapter, sequential
requests and the ledger, PEFT round trips, bad inputs, refusals, and the real console script."""

from __future__ import annotations

import hashlib
import json
import random
import shutil
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from conftest import write_jsonl
from ucan_cli.cli import app

runner = CliRunner()
KEY = "k" * 32
PLANTED = {"model.layers.0.self_attn.q_proj": 0, "model.layers.0.self_attn.k_proj": 2, "model.layers.0.self_attn.v_proj": 1}
RETAIN_LETTERS, FORGET_LETTERS = "ABCD", "WXYZ"


# ------------------------------------------------------------------------------------ helpers


def tree_digest(path: Path) -> dict[str, str]:
    """SHA-256 of every file under a directory (to prove an input was not modified)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    """Names beside ``path`` that belong to it (the output itself and atomic temp dirs)."""
    return sorted(p.name for p in path.parent.iterdir() if p.name == path.name or p.name.startswith(f".{path.name}."))


def invoke(*args: str):
    return runner.invoke(app, ["attenuate", *map(str, args)])


def synthetic_score_file(
    adapter_dir: Path, path: Path, key_file: Path, forget_file: Path, *, unit: str = "output", seed: int = 0,
    planted: int = 6, boost: float = 4.0, nan: bool = False, adapter_sha256: str | None = None,
) -> Path:
    """A score file with plausible statistics for ``adapter_dir``: retain-like forget statistics
    except ``planted`` units whose forget activation is ``boost`` times higher (``boost=1``: a
    forget set indistinguishable from retain)."""
    from ucan_cli.methods.ucan.statistics import Statistics
    from ucan_cli.methods.ucan.edit import units_per_module
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.data import read_records
    from ucan_cli.io.receipts import key_fingerprint, load_or_create_key, set_receipt
    from ucan_cli.methods.ucan.scorefile import save_score_file
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scoring import SetStats

    adapter = LoraAdapter.load(adapter_dir)
    layout = units_per_module(adapter, unit)
    sizes = [s for _, s in layout]
    n = sum(sizes)
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 0.5, n)

    def set_stats(m1: np.ndarray, records: int, tokens: float = 200.0) -> SetStats:
        return SetStats(
            sum_abs=m1 * tokens, sum_sq=(m1**2) * 1.5 * tokens, tokens=np.full(n, tokens),
            rec_sum=m1 * records, rec_sumsq=(m1**2) * 1.2 * records, n_records=records,
        )

    forget_m1 = base * np.exp(rng.normal(0, 0.02, n))
    forget_m1[rng.choice(n, planted, replace=False)] *= boost
    half_a = base * np.exp(rng.normal(0, 0.02, n))
    if nan:
        forget_m1[3] = np.nan
    module_ids = np.repeat(np.arange(len(sizes)), sizes)
    b_cols = None
    if unit == "rank":
        b_cols = np.concatenate([m.B.double().norm(dim=0).numpy() for m in adapter.modules])
    stats = Statistics(
        unit=unit, scope="response", module_names=[m for m, _ in layout], module_sizes=sizes, module_ids=module_ids,
        forget=set_stats(forget_m1, 8), retain=set_stats(base, 16), half_a=set_stats(half_a, 8), half_b=set_stats(base, 8),
        scaling=np.repeat([m.scaling for m in adapter.modules], sizes), b_col_norms=b_cols,
    )
    key = load_or_create_key(key_file)
    forget = read_records(forget_file, "forget")
    meta = {
        "adapter_sha256": adapter_sha256 or adapter.sha256, "forget_sha256": forget.sha256,
        "forget_receipt": set_receipt(key, forget.records), "receipt_key_fingerprint": key_fingerprint(key),
        "n_forget": len(forget), "params": asdict(MethodParams(unit=unit)), "scope": "response",
    }
    return save_score_file(path, stats, None, meta, force=True)


# ------------------------------------------------------------------------------------ planted world


@pytest.fixture(scope="module")
def planted(tmp_path_factory, tokenizer):
    """A tiny Llama where a few 'forget-only' tokens (the forget answers W X Y Z) carry a direction
    v = e_0 that no other token has (only the shared last prompt token, weakly), and a layer-0
    q/k/v LoRA whose planted rank units read exactly v while every other A row is orthogonal to v.

    At layer 0 the LoRA input at a position is RMSNorm(embedding of that token), so a rank unit's
    activation depends on the token alone. In the response scope each record contributes its last
    prompt token (shared) and its answer token. Each forget answer's embedding is its retain
    partner's embedding plus a multiple of v, and both sets use their four answers equally often,
    so on every non-planted unit the forget activations are the retain ones shrunk by the larger
    RMS norm (R < 0, never eligible), while the planted units see v only on forget answers (R ~ 2.6).
    Two unplanted units have 5x larger B columns (large utility): they must stay at 1 too.
    """
    from ucan_cli.toy import build_adapter, build_model

    root = tmp_path_factory.mktemp("planted")
    model = build_model("llama", tokenizer, None, seed=1, hidden=32)
    emb = model.model.embed_tokens.weight.data
    scale = float(emb.pow(2).mean().sqrt())

    def tid(text: str) -> int:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        assert len(ids) == 1, text
        return ids[0]

    emb[:, 0] = 0.0
    emb[tid("\n"), 0] = 0.3 * scale
    for i, (r, f) in enumerate(zip(RETAIN_LETTERS, FORGET_LETTERS)):
        emb[tid(f)] = emb[tid(r)]
        emb[tid(f), 0] = (3 + i) * scale
    model.save_pretrained(root / "base")
    tokenizer.save_pretrained(root / "base")
    peft_dir = build_adapter(model, root / "peft", target_modules=["q_proj", "k_proj", "v_proj"], layers_to_transform=[0], r=4, alpha=8, seed=2)
    tensors = load_file(str(peft_dir / "adapter_model.safetensors"))
    for key, value in tensors.items():
        module = key.removeprefix("base_model.model.").rsplit(".lora_", 1)[0]
        j = PLANTED[module]
        if ".lora_A." in key:
            value[:, 0] = 0.0
            value[j] = 0.0
            value[j, 0] = 1.0
        else:
            value[:, (j + 1) % 4] *= 5.0
    (root / "adapter").mkdir()
    shutil.copy(peft_dir / "adapter_config.json", root / "adapter" / "adapter_config.json")
    save_file(tensors, str(root / "adapter" / "adapter_model.safetensors"), metadata={"format": "pt"})

    def rec(i: int, letter: str, prefix: str) -> dict:
        return {
            "id": f"{prefix}{i}", "user_id": f"{prefix}u{i}", "instruction": "Which item will the user pick next?",
            "input": f"History: item{i % 30} item{(7 * i) % 30}", "output": letter,
        }

    forget = [rec(i, FORGET_LETTERS[i % 4], "f") for i in range(8)]
    write_jsonl(root / "retain.jsonl", [rec(i, RETAIN_LETTERS[i % 4], "r") for i in range(16)])
    write_jsonl(root / "forget.jsonl", forget)
    write_jsonl(root / "forget2.jsonl", forget[4:] + forget[:4])  # the same records in another order
    write_jsonl(root / "forget_half.jsonl", forget[:4])
    (root / "key").write_text(KEY)
    return root


def _rank_factors(ledger_line: dict) -> dict[tuple[str, int], float]:
    table = ledger_line["cumulative_factors"]["rank"]
    return {(m, i): f for m, v in table.items() for i, f in zip(v["index"], v["factor"])}


@pytest.fixture(scope="module")
def planted_run(planted):
    """One CLI run on the planted world (rank units, budget 3 of 12 units).

    With 12 units and 16 retain records the noise reference is too coarse for a verdict: 4 of the
    12 retain-half contrasts reach 3 sigma0, as many as the 3 planted units, so the verdict is
    "weak" and attenuate declines (exit 4, checked here). These tests check the edit's mechanics,
    so the run opts in with --accept-weak."""
    out = planted / "out1"
    argv = (
        "--base", planted / "base", "--adapter", planted / "adapter", "--forget", planted / "forget.jsonl",
        "--retain", planted / "retain.jsonl", "-o", out, "--unit", "rank", "--ratio", "0.25",
        "--receipt-key", planted / "key", "--device", "cpu",
    )
    declined = invoke(*argv)
    assert declined.exit_code == 4 and "declined: the contrast is weak" in declined.stderr and not out.exists()
    result = invoke(*argv, "--accept-weak")
    assert result.exit_code == 0, result.stderr
    return out


def test_planted_units_attenuated_and_nothing_else(planted, planted_run):
    from ucan_cli.io.adapter import LoraAdapter

    before, after = LoraAdapter.load(planted / "adapter"), LoraAdapter.load(planted_run)
    [line] = (planted_run / "ucan_ledger.jsonl").read_text().splitlines()
    factors = _rank_factors(json.loads(line))
    # Exactly the three planted units carry a factor, each <= 0.5 (the unit at tau has 0.5).
    assert set(factors) == {(m, j) for m, j in PLANTED.items()}
    assert all(0.0 <= f <= 0.5 + 1e-12 for f in factors.values())
    assert sum(f == pytest.approx(0.5) for f in factors.values()) == 1
    for old, new in zip(before.modules, after.modules):
        j = PLANTED[old.name]
        s = factors[(old.name, j)]
        assert torch.equal(new.B[:, j], (old.B[:, j].double() * s).float())
        keep = [i for i in range(old.r) if i != j]
        assert torch.equal(new.B[:, keep], old.B[:, keep])  # every other unit: exactly 1
        assert torch.equal(new.A, old.A)
    report = json.loads((planted_run / "ucan_report.json").read_text())
    assert report["schema_version"] == 1 and report["unit"] == "rank"
    assert report["summary"]["n_live"] == 12 and report["summary"]["n_eligible"] == 3
    assert (report["summary"]["n_attenuated"], report["summary"]["n_at_most_half"]) == (3, 3)
    assert report["summary"]["budget_sum_1_minus_s"] == pytest.approx(sum(1 - f for f in factors.values()))
    assert report["summary"]["max_R"] > 2.0
    assert report["totals"]["n_modules_edited"] == 3
    assert set(report["timings"]) == {"inputs", "statistics", "select", "edit", "write"}
    assert report["output"]["adapter_sha256"] == hashlib.sha256((planted_run / "adapter_model.safetensors").read_bytes()).hexdigest()
    # Outputs explain themselves and never carry forget text or ids.
    card = (planted_run / "README.md").read_text()
    for phrase in ("approximate unlearning with no formal guarantee", "Earlier copies of the adapter still hold the data",
                   "Merged models still hold the data", "modules_to_save still hold the data", "library_name: peft",
                   report["inputs"]["adapter"]["sha256"], report["receipt"]["forget_set_hmac"]):
        assert phrase in card
    for name in ("README.md", "ucan_report.json", "ucan_report.md", "ucan_ledger.jsonl", "ucan_config.toml"):
        text = (planted_run / name).read_text()
        assert '"f0"' not in text and "fu0" not in text and "History: item" not in text
    import tomllib

    config = tomllib.loads((planted_run / "ucan_config.toml").read_text())["attenuate"]
    assert config["unit"] == "rank" and config["ratio"] == 0.25 and config["lam"] == 0.5 and "tau" not in config
    assert (planted_run / "adapter_config.json").read_bytes() == (planted / "adapter" / "adapter_config.json").read_bytes()


def test_sequential_requests_compose_and_chain(planted, planted_run):
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.io.adapter import LoraAdapter

    out2 = planted / "out2"
    run = attenuate(
        planted_run, out2, base=str(planted / "base"), forget=planted / "forget_half.jsonl", retain=planted / "retain.jsonl",
        params={"unit": "rank", "ratio": 0.25}, receipt_key=planted / "key", device="cpu", accept_weak=True,
    )
    lines = (out2 / "ucan_ledger.jsonl").read_bytes().split(b"\n")
    assert lines[-1] == b"" and len(lines) == 3
    assert lines[0] + b"\n" == (planted_run / "ucan_ledger.jsonl").read_bytes()  # copied byte for byte
    first, second = json.loads(lines[0]), json.loads(lines[1])
    assert second["prev_hash"] == hashlib.sha256(lines[0]).hexdigest()
    assert second["input_adapter_sha256"] == first["output_adapter_sha256"] == LoraAdapter.load(planted_run).sha256
    s1, cum = _rank_factors(first), _rank_factors(second)
    flat = {}
    offset = 0
    for name, size in zip(run.stats.module_names, run.stats.module_sizes):
        for j in range(size):
            flat[(name, j)] = float(run.result.s[offset + j])
        offset += size
    s2 = {u: f for u, f in flat.items() if f != 1.0}
    assert set(s2) == set(PLANTED.items())  # the planted units again: above the floor, still risky
    original, twice = LoraAdapter.load(planted / "adapter"), LoraAdapter.load(out2)
    for old, new in zip(original.modules, twice.modules):
        for j in range(old.r):
            total = s1.get((old.name, j), 1.0) * s2.get((old.name, j), 1.0)
            assert cum.get((old.name, j), 1.0) == pytest.approx(total, rel=1e-15)
            # B'' = s2 * s1 * B (two fp32 roundings).
            assert torch.allclose(new.B[:, j].double(), old.B[:, j].double() * total, rtol=1e-6, atol=0)
    # The same forget set again (other record order, same receipt): refused before any model loads.
    out3 = planted / "out3"
    args = ["--base", planted / "base", "--adapter", out2, "--forget", planted / "forget2.jsonl", "--retain",
            planted / "retain.jsonl", "-o", out3, "--unit", "rank", "--ratio", "0.25", "--receipt-key", planted / "key", "--device", "cpu",
            "--accept-weak"]
    result = invoke(*args)
    assert result.exit_code == 2
    assert "line 1: this forget set was already attenuated in this adapter's lineage (pass --force" in result.stderr
    assert siblings(out3) == []
    result = invoke(*args, "--force")
    assert result.exit_code == 0, result.stderr
    assert len((out3 / "ucan_ledger.jsonl").read_text().splitlines()) == 3
    assert "already attenuated" in result.stderr  # the forced repeat is a warning


# ------------------------------------------------------------------------------------ trained adapter


def _key_value_records(n: int, items: str, prefix: str, table: dict[str, str], rng: random.Random) -> list[dict]:
    out = []
    for i in range(n):
        history = rng.sample(items, 3)
        out.append({"id": f"{prefix}{i}", "user_id": f"{prefix}u{i}", "prompt": "History: " + " ".join(history), "completion": table[history[-1]]})
    return out


def test_trained_adapters_forget_more_than_they_lose(tmp_path, tokenizer):
    """LoRAs trained on forget + retain, where each record's answer is a fixed function of its
    last history item (a lookup the adapter must learn), and forget records use a catalogue
    (Q..Z) that retain records never use (A..P): systematically different, as SPEC section 3
    requires. The prompt ends with that key item, so the lookup runs at the last prompt position,
    inside the response token scope. The base model's items of each catalogue share a direction
    (a 'genre', as a pretrained model's embeddings would) and its lm_head is scaled so a LoRA can
    reach confident predictions in a few seconds of training.

    A model trained here differs from one trained on another CPU (summation order, vector width,
    threads; training amplifies them), so the test asserts over five training seeds, with margins
    measured over seeds 0-29 (6 groups of 5) x torch threads 1, 2 x 1e-6 relative noise on the base
    weights (the noise and the threads moved d_forget by <= 2%, the seeds by 40x):
    - U-CAN (defaults, output units) raises the forget response NLL on every seed: d_forget
      measured 0.043..2.65 nats per seed; asserted > 0.
    - the mean rise over the 5 seeds: measured 0.60..1.00 nats per group; asserted >= 0.3.
    - selective: the summed forget rise over the summed retain rise, measured 1.88..4.20 per
      group (per seed 0.94..11.4); asserted >= 1.25.
    Not asserted: that U-CAN beats random units with the same factors. Its selectivity over the
    mean of 5 random draws measured 0.53x..4.2x per seed (1.03x..1.96x per group of 5): no
    portable margin on this toy. Which units U-CAN picks is checked exactly, with no training, by
    test_planted_units_attenuated_and_nothing_else.
    """
    retain_items, forget_items = list("ABCDEFGHIJKLMNOP"), list("QRSTUVWXYZ")
    rises = [_trained_check(tmp_path / f"seed{seed}", tokenizer, retain_items, forget_items, seed) for seed in range(5)]
    assert all(d_forget > 0 for d_forget, _ in rises), rises
    assert sum(d_forget for d_forget, _ in rises) / len(rises) >= 0.3, rises
    assert sum(d_forget for d_forget, _ in rises) >= 1.25 * sum(d_retain for _, d_retain in rises), rises


def _trained_check(tmp_path, tokenizer, retain_items, forget_items, seed) -> tuple[float, float]:
    """Train one adapter (training seed ``seed``), attenuate it; return the rise in the mean
    response NLL on forget and on retain (nats)."""
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.io.data import read_records
    from ucan_cli.runtime.models import attach_adapter
    from ucan_cli.toy import build_model
    from ucan_cli.training import TrainConfig, mean_response_nll, train_lora

    def make_base():
        model = build_model("llama", tokenizer, None, seed=1, hidden=32)
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            model.lm_head.weight.mul_(25.0)
            emb = model.model.embed_tokens.weight
            scale = 3.0 * float(emb.pow(2).mean().sqrt()) * 32**0.5
            for items in (forget_items, retain_items):
                genre = torch.randn(32, generator=gen)
                genre /= genre.norm()
                for item in items:
                    emb[tokenizer(item, add_special_tokens=False).input_ids[0]] += scale * genre
        return model

    tmp_path.mkdir()
    rng = random.Random(0)
    table = {}
    for items in (retain_items, forget_items):
        shuffled = items[:]
        rng.shuffle(shuffled)
        table.update(zip(items, shuffled))
    write_jsonl(tmp_path / "retain.jsonl", _key_value_records(32, retain_items, "r", table, rng))
    write_jsonl(tmp_path / "forget.jsonl", _key_value_records(16, forget_items, "f", table, rng))
    (tmp_path / "key").write_text(KEY)
    forget = read_records(tmp_path / "forget.jsonl", "forget").records
    retain = read_records(tmp_path / "retain.jsonl", "retain").records
    model = make_base()
    model.save_pretrained(tmp_path / "base")
    tokenizer.save_pretrained(tmp_path / "base")
    train_lora(model, tokenizer, list(forget) + list(retain), tmp_path / "adapter",
               TrainConfig(r=8, alpha=16, epochs=30, lr=3e-2, batch_size=16, seed=seed))

    evaluator = make_base()

    def nll(adapter_dir: Path) -> tuple[float, float]:
        peft_model = attach_adapter(evaluator, adapter_dir)
        out = mean_response_nll(peft_model, tokenizer, forget), mean_response_nll(peft_model, tokenizer, retain)
        peft_model.unload()
        return out

    f0, r0 = nll(tmp_path / "adapter")
    attenuate(
        tmp_path / "adapter", tmp_path / "out", base=str(tmp_path / "base"), forget=tmp_path / "forget.jsonl",
        retain=tmp_path / "retain.jsonl", receipt_key=tmp_path / "key", device="cpu",
    )
    f1, r1 = nll(tmp_path / "out")
    return f1 - f0, r1 - r0


# ------------------------------------------------------------------------------------ round trips


@pytest.fixture(scope="module")
def scored(tmp_path_factory, adapters):
    """Forget file, key and synthetic score files for the conftest adapters (no model runs)."""
    from conftest import make_records

    root = tmp_path_factory.mktemp("scored")
    write_jsonl(root / "forget.jsonl", make_records(4, seed=1, user_offset=100))
    (root / "key").write_text(KEY)
    out = {"root": root}
    for name in ("qwen2_rs", "gpt2", "llama"):
        out[name] = synthetic_score_file(adapters[name], root / f"{name}.safetensors", root / "key", root / "forget.jsonl", seed=3)
    return out


def test_round_trip_peft_bias_rslora_and_byte_identical(tmp_path, tiny_models, adapters, scored):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter

    args = ["--adapter", adapters["qwen2_rs"], "--scores", scored["qwen2_rs"], "--receipt-key", scored["root"] / "key"]
    first, second = tmp_path / "a", tmp_path / "b"
    assert invoke(*args, "-o", first).exit_code == 0
    assert invoke(*args, "-o", second, "--forget", scored["root"] / "forget.jsonl").exit_code == 0
    weights = (first / "adapter_model.safetensors").read_bytes()
    assert weights == (second / "adapter_model.safetensors").read_bytes()  # same inputs -> same bytes
    # The resolved config reproduces the run.
    result = runner.invoke(app, ["attenuate", "--config", str(first / "ucan_config.toml"), "-o", str(tmp_path / "c")])
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "c" / "adapter_model.safetensors").read_bytes() == weights
    src = LoraAdapter.load(adapters["qwen2_rs"])
    out = LoraAdapter.load(first)
    assert out.config_bytes == src.config_bytes
    assert list(out.tensors) == list(src.tensors)
    assert all(out.tensors[k].dtype == v.dtype and out.tensors[k].shape == v.shape for k, v in src.tensors.items())
    assert out.metadata["ucan_source_adapter_sha256"] == src.sha256 and "time" not in json.dumps(out.metadata)
    assert any(not torch.equal(out.tensors[k], v) for k, v in src.tensors.items() if k.endswith("lora_B.bias"))
    # PEFT loads it with every key matched and exactly the file's values.
    base = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32)
    model = PeftModel.from_pretrained(base, first)
    result = model.load_adapter(first, adapter_name="check")
    assert result.unexpected_keys == [] and [k for k in result.missing_keys if "check" in k] == []
    params = dict(model.named_parameters())
    for key, value in out.tensors.items():
        peft_key = key.replace(".weight", ".default.weight").replace(".bias", ".default.bias")
        assert torch.equal(params[peft_key].detach(), value), key


def test_conv1d_bf16_output_units_in_peft(tmp_path, tiny_models, adapters, scored):
    """GPT-2 Conv1D (fan_in_fan_out) stored in bf16: dtypes kept, and PEFT's own delta weight of
    every module is diag(s) times the original one in the output layout."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.io.adapter import LoraAdapter

    bf16 = tmp_path / "gpt2_bf16"
    bf16.mkdir()
    shutil.copy(adapters["gpt2"] / "adapter_config.json", bf16 / "adapter_config.json")
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(adapters["gpt2"] / "adapter_model.safetensors")).items()}
    save_file(tensors, str(bf16 / "adapter_model.safetensors"), metadata={"format": "pt"})
    score = synthetic_score_file(bf16, tmp_path / "s.safetensors", scored["root"] / "key", scored["root"] / "forget.jsonl", seed=5)
    run = attenuate(bf16, tmp_path / "out", scores=score, receipt_key=scored["root"] / "key")
    out = LoraAdapter.load(tmp_path / "out")
    assert all(v.dtype == torch.bfloat16 for v in out.tensors.values())
    assert run.result.k > 0

    def deltas(adapter_dir: Path) -> dict[str, torch.Tensor]:
        base = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"], dtype=torch.float32)
        model = PeftModel.from_pretrained(base, adapter_dir, autocast_adapter_dtype=False)
        return {n: m.get_delta_weight("default").double() for n, m in model.named_modules() if hasattr(m, "get_delta_weight") and "default" in getattr(m, "lora_A", {})}

    old, new = deltas(bf16), deltas(tmp_path / "out")
    offset = 0
    for module, size in zip(run.stats.module_names, run.stats.module_sizes):
        s = torch.from_numpy(run.result.s[offset : offset + size])
        offset += size
        (peft_name,) = [n for n in old if n.endswith(module)]
        expected = old[peft_name] * s[None, :]  # Conv1D base layout is (d_in, d_out): output k is column k
        # bf16 keeps 8 bits: each scaled B entry is off by <= 2^-8 relative, so compare at 1% of the scale.
        assert torch.allclose(new[peft_name], expected, rtol=0, atol=1e-2 * float(old[peft_name].abs().max())), module
        edited = s < 1
        assert edited.any() and not torch.allclose(new[peft_name][:, edited], old[peft_name][:, edited])


# ------------------------------------------------------------------------------------ bad inputs


def _dora(tmp_path: Path, adapter_dir: Path) -> Path:
    out = tmp_path / "dora"
    shutil.copytree(adapter_dir, out)
    config = json.loads((out / "adapter_config.json").read_text())
    config["use_dora"] = True
    (out / "adapter_config.json").write_text(json.dumps(config))
    return out


@pytest.mark.parametrize("case", ["dora", "mismatch", "other_adapter_scores", "empty_forget", "nan_statistics"])
def test_bad_inputs_write_nothing(case, tmp_path, tiny_models, adapters, scored):
    root = scored["root"]
    adapter = adapters["llama"]
    common = ["--receipt-key", root / "key", "--device", "cpu"]
    if case == "dora":
        adapter = _dora(tmp_path, adapters["llama"])
        args = ["--adapter", adapter, "--scores", scored["llama"]]
        code, message = 2, "DoRA (use_dora) is not supported"
    elif case == "mismatch":
        write_jsonl(tmp_path / "retain.jsonl", _retain_rows())
        args = ["--base", tiny_models["gpt2"], "--adapter", adapter, "--forget", root / "forget.jsonl", "--retain", tmp_path / "retain.jsonl"]
        code, message = 2, "adapter module model.layers.0.self_attn.q_proj does not exist in the base model"
    elif case == "other_adapter_scores":
        args = ["--adapter", adapter, "--scores", scored["qwen2_rs"]]
        code, message = 2, "score file was computed for another adapter"
    elif case == "empty_forget":
        (tmp_path / "empty.jsonl").write_text("\n")
        args = ["--adapter", adapter, "--scores", scored["llama"], "--forget", tmp_path / "empty.jsonl"]
        code, message = 2, "forget file is empty"
    else:
        score = synthetic_score_file(adapter, tmp_path / "nan.safetensors", root / "key", root / "forget.jsonl", nan=True)
        args = ["--adapter", adapter, "--scores", score]
        code, message = 1, "non-finite activation statistics"
    before = tree_digest(Path(adapter))
    out = tmp_path / "out"
    result = invoke(*args, *common, "-o", out)
    assert result.exit_code == code, result.stderr
    assert message in result.stderr
    assert result.stderr.startswith("error: ") and result.stdout == ""
    assert siblings(out) == []
    assert tree_digest(Path(adapter)) == before


def _retain_rows() -> list[dict]:
    from conftest import make_records

    return make_records(6, seed=2, user_offset=200)


# ------------------------------------------------------------------------------------ refusals


def test_refusals_and_nothing_to_do(tmp_path, adapters, scored):
    root = scored["root"]
    adapter = adapters["llama"]
    before = tree_digest(Path(adapter))
    key = ["--receipt-key", root / "key"]
    # No unit stands out (forget == retain up to noise): exit 4, nothing written, the reason given.
    flat = synthetic_score_file(adapter, tmp_path / "flat.safetensors", root / "key", root / "forget.jsonl", boost=1.0)
    out = tmp_path / "out"
    result = invoke("--adapter", adapter, "--scores", flat, "-o", out, *key)
    assert result.exit_code == 4
    assert result.stderr.startswith("error: nothing to do: largest R = ") and "eligible: 0" in result.stderr
    assert siblings(out) == []
    # OUT_DIR may not be the input adapter (nor inside it).
    for target in (adapter, Path(adapter) / "sub"):
        result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", target, *key)
        assert result.exit_code == 2 and "would overlap the input" in result.stderr
    # An existing OUT_DIR is refused without --force, replaced with it.
    out.mkdir()
    (out / "keep.txt").write_text("x")
    result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", out, *key)
    assert result.exit_code == 2 and "already exists; pass --force" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    # --dry-run writes nothing and prints the same numbers as a JSON document.
    dry = tmp_path / "dry"
    result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", dry, "--dry-run", "--json", *key)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["dry_run"] is True and doc["output"] is None and doc["summary"]["n_attenuated"] > 0
    assert siblings(dry) == []
    result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", out, "--force", "--tau", "0.5", "--decay", "hard", *key)
    assert result.exit_code == 0, result.stderr
    assert "keep.txt" not in {p.name for p in out.iterdir()}
    report = json.loads((out / "ucan_report.json").read_text())
    assert report["options"]["tau"] == 0.5 and report["options"]["ratio"] is None and report["options"]["decay"] == "hard"
    assert report["summary"]["n_attenuated"] == report["summary"]["k"] == report["summary"]["n_at_most_half"]
    assert tree_digest(Path(adapter)) == before
    # Options that contradict the score file are input errors.
    result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", tmp_path / "x", "--unit", "rank", *key)
    assert result.exit_code == 2 and "holds output-unit statistics" in result.stderr
    result = invoke("--adapter", adapter, "--scores", scored["llama"], "-o", tmp_path / "x", "--ratio", "0.1", "--tau", "1", *key)
    assert result.exit_code == 2 and "mutually exclusive" in result.stderr


def test_method_options_defaults_and_merge():
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.params import DEFAULTS, MethodParams, params_from_options, params_to_dict

    defaults = params_to_dict(MethodParams())
    assert {k: v for k, v in DEFAULTS.items() if k not in ("token_scope", "halves")} == defaults
    base = MethodParams(unit="rank", lam=1.0, ratio=0.1)
    merged = params_from_options(base, tau=2.0, floor=0.2)
    assert (merged.unit, merged.lam, merged.ratio, merged.tau, merged.floor) == ("rank", 1.0, None, 2.0, 0.2)
    assert params_from_options(merged, ratio=0.3).tau is None
    with pytest.raises(InputError, match="mutually exclusive"):
        params_from_options(None, ratio=0.1, tau=1.0)
    with pytest.raises(InputError, match="--floor"):
        params_from_options(None, floor=1.0)


# ------------------------------------------------------------------------------------ console script


def test_console_script_end_to_end(tmp_path, adapters, scored):
    out = tmp_path / "forgot"
    argv = ["attenuate", "--adapter", str(adapters["llama"]), "--scores", str(scored["llama"]),
            "--forget", str(scored["root"] / "forget.jsonl"), "--receipt-key", str(scored["root"] / "key"), "-o", str(out), "--json"]
    proc = subprocess.run([sys.executable, "-m", "ucan_cli", *argv], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["command_line"] == "ucan " + " ".join(argv)
    assert doc["command_line"] in (out / "README.md").read_text()
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "ucan_config.toml", "ucan_ledger.jsonl",
        "ucan_report.json", "ucan_report.md",
    ]
    assert json.loads((out / "ucan_report.json").read_text())["summary"] == doc["summary"]
    assert doc["summary"]["n_attenuated"] > 0


def test_floor_rule_uses_the_ledger(tmp_path, adapters, scored):
    """Units driven to the floor by an earlier request are not eligible again (SPEC step 4)."""
    from conftest import make_records

    root = scored["root"]
    first = tmp_path / "first"
    result = invoke("--adapter", adapters["llama"], "--scores", scored["llama"], "-o", first, "--decay", "hard",
                    "--tau", "0.5", "--receipt-key", root / "key", "--json")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)["summary"]
    zeroed = summary["n_attenuated"]
    assert zeroed > 0 and summary["n_pass_floor"] == summary["n_live"]
    # The same statistics for the edited adapter, from another forget request.
    write_jsonl(tmp_path / "forget_b.jsonl", make_records(3, seed=9, user_offset=300))
    again = synthetic_score_file(first, tmp_path / "again.safetensors", root / "key", tmp_path / "forget_b.jsonl", seed=3)
    result = invoke("--adapter", first, "--scores", again, "-o", tmp_path / "second", "--decay", "hard", "--tau", "0.5",
                    "--receipt-key", root / "key")
    assert result.exit_code == 4
    live = summary["n_live"]
    assert f"cumulative factor above floor: {live - zeroed}, eligible: " in result.stderr
    assert siblings(tmp_path / "second") == []


def test_force_never_deletes_what_the_run_reads(tmp_path, adapters, scored):
    """-o DIR --force where DIR holds the score file (or the forget file, or the key) is refused:
    replacing DIR would delete an input."""
    root = tmp_path / "work"
    root.mkdir()
    scores = root / "scores.safetensors"
    scores.write_bytes(Path(scored["llama"]).read_bytes())
    for target in (root, root / "scores.safetensors"):
        result = invoke("--adapter", adapters["llama"], "--scores", scores, "-o", target, "--force",
                        "--receipt-key", scored["root"] / "key")
        assert result.exit_code == 2 and "would overlap the input" in result.stderr
    assert scores.read_bytes() == Path(scored["llama"]).read_bytes()


def test_config_ratio_yields_to_tau_on_the_command_line(tmp_path, adapters, scored):
    """A written ucan_config.toml holds the resolved --ratio; --tau on the command line must win
    instead of clashing with it (the two exclude each other)."""
    config = tmp_path / "c.toml"
    config.write_text("[attenuate]\nratio = 0.1\n")
    out = tmp_path / "out"
    result = invoke("--adapter", adapters["llama"], "--scores", scored["llama"], "-o", out, "--dry-run", "--json",
                    "--config", config, "--tau", "0.5", "--receipt-key", scored["root"] / "key")
    assert result.exit_code in (0, 4), result.output
    assert "mutually exclusive" not in result.stderr and "exclude" not in result.stderr
    clash = invoke("--adapter", adapters["llama"], "--scores", scored["llama"], "-o", out, "--dry-run",
                   "--ratio", "0.1", "--tau", "0.5", "--receipt-key", scored["root"] / "key")
    assert clash.exit_code == 2


# ------------------------------------------------------------------------------------ --method


def test_method_random_writes_the_control_with_the_same_documents(tmp_path, adapters, scored):
    """--method random: U-CAN's budget on randomly drawn live units, seeded by --seed, written with
    the same documents; the report, the ledger and ucan_config.toml name the method, and the config
    reruns to the same bytes. The default run records method ucan."""
    import tomllib

    from ucan_cli.flows.attenuate import attenuate

    root = scored["root"]
    args = ["--adapter", adapters["llama"], "--scores", scored["llama"], "--receipt-key", root / "key"]
    ucan, control = tmp_path / "ucan", tmp_path / "random"
    assert invoke(*args, "-o", ucan).exit_code == 0
    result = invoke(*args, "--method", "random", "--seed", "3", "-o", control, "--json")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in control.iterdir()) == sorted(p.name for p in ucan.iterdir())
    doc = json.loads((control / "ucan_report.json").read_text())
    assert json.loads(result.stdout)["summary"] == doc["summary"]
    reference = json.loads((ucan / "ucan_report.json").read_text())
    assert (reference["options"]["method"], doc["options"]["method"]) == ("ucan", "random")
    for name in ("ucan", "random"):
        entry = json.loads((tmp_path / name / "ucan_ledger.jsonl").read_text().splitlines()[-1])
        assert entry["options"]["method"] == name
        assert tomllib.loads((tmp_path / name / "ucan_config.toml").read_text())["attenuate"]["method"] == name
    assert doc["summary"]["n_attenuated"] == reference["summary"]["n_attenuated"] > 0
    assert doc["summary"]["budget_sum_1_minus_s"] == pytest.approx(reference["summary"]["budget_sum_1_minus_s"], rel=1e-12)
    assert doc["summary"]["random_units"]["seed"] == 3
    weights = (control / "adapter_model.safetensors").read_bytes()
    assert weights != (ucan / "adapter_model.safetensors").read_bytes()
    again = runner.invoke(app, ["attenuate", "--config", str(control / "ucan_config.toml"), "-o", str(tmp_path / "again")])
    assert again.exit_code == 0, again.stderr
    assert (tmp_path / "again" / "adapter_model.safetensors").read_bytes() == weights
    # The library call returns the draw: U-CAN's factor multiset on drawn units.
    run = attenuate(adapters["llama"], None, scores=scored["llama"], receipt_key=root / "key", method="random", seed=3, dry_run=True)
    assert run.method == "random" and run.output_sha256 is None
    ucan_s = run.result.ucan.s
    assert np.array_equal(np.sort(run.result.s[run.result.chosen]), np.sort(ucan_s[ucan_s < 1]))
    # An unknown method is an input error that lists the known ones; nothing is written.
    result = invoke(*args, "--method", "nope", "-o", tmp_path / "nope")
    assert result.exit_code == 2 and "available: ucan, random" in result.stderr
    assert siblings(tmp_path / "nope") == []
