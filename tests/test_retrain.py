"""``--method retrain``: the forget users' records removed from the training file before anything
reads their text (a poisoned record proves it), a fresh LoRA with the input's exact config
(PEFT's own init, seeded), the removal counts, the cost, and the real CLI with bad --train files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app

runner = CliRunner()
KEY = "k" * 32
POISON = "POISONMARKERQZJ"
KEPT = "KEPTMARKERVWX"


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    """forget: users u0-u3 (one record each) and one record with no user_id; retain: u100-u107.
    train: the retain records, a second record of each forget user (not in the forget file; u1's
    carries POISON), a record of another user with a forget record's id, a copy of the user-less
    forget record filed under a new user, and a kept user's record carrying KEPT."""
    root = tmp_path_factory.mktemp("retrain")
    (root / "key").write_text(KEY)
    forget = make_records(4, seed=5)
    anonymous = {**make_records(1, seed=9, user_offset=50)[0]}
    anonymous.pop("user_id")
    anonymous["id"] = "anon-1"
    retain = make_records(8, seed=6, user_offset=100)
    more = make_records(4, seed=7)  # u0-u3 again, other ids and text
    for i, rec in enumerate(more):
        rec["id"] = f"second-{i}"
    more[1]["input"] += " " + POISON
    same_id = {**make_records(1, seed=8, user_offset=200)[0], "id": forget[2]["id"]}  # id r2, user u200
    copy = {**anonymous, "id": "copy-1", "user_id": "u300"}  # the user-less forget record's content
    kept = {**make_records(1, seed=10, user_offset=400)[0]}
    kept["input"] += " " + KEPT
    train = retain + more + [same_id, copy, kept]
    return {
        "base": tiny_models["llama"], "adapter": adapters["llama"], "key": root / "key", "root": root,
        "forget": write_jsonl(root / "forget.jsonl", forget + [anonymous]),
        "retain": write_jsonl(root / "retain.jsonl", retain),
        "train": write_jsonl(root / "train.jsonl", train),
        "n_train": len(train), "n_kept": len(retain) + 1,
    }


def attenuate(world, out, *extra, adapter=None, base=None):
    args = ["attenuate", "--base", base or world["base"], "--adapter", adapter or world["adapter"], "--forget", world["forget"],
            "--retain", world["retain"], "--receipt-key", world["key"], "--method", "retrain", "--batch-size", "4", *extra]
    if out is not None:
        args += ["-o", out]
    return runner.invoke(app, [str(a) for a in args])


# ------------------------------------------------------------------------------------ removal, pure


def test_removal_counts_by_user_id_and_content(world):
    """4 second records of forget users (user_id), 1 by a forget record's id, 1 by the user-less
    forget record's content; the 9 others kept in file order."""
    from ucan_cli.io.data import read_records
    from ucan_cli.methods.retrain.removal import without_forget_users

    train, forget = read_records(world["train"], "train"), read_records(world["forget"], "forget")
    kept, counts = without_forget_users(train, forget)
    assert counts.to_dict() == {"n_records": 15, "kept": 9, "removed": 6, "removed_by": {"user_id": 4, "id": 1, "content": 1}}
    assert [r.user_id for r in kept] == [f"u{100 + i}" for i in range(8)] + ["u400"]
    assert [r.line for r in kept] == sorted(r.line for r in kept)
    assert all(POISON not in json.dumps(r.fields) for r in kept)


# ------------------------------------------------------------------------------------ the poisoned record


def test_a_forget_users_record_never_reaches_the_tokenizer_or_the_model(world, monkeypatch):
    """Spies on every tokenizer call and on every record encoded: the poisoned record (a forget
    user's record that is not in the forget file) is never encoded and its marker never tokenized,
    while the kept user's marker is; nor does the marker reach any written document."""
    from transformers import PreTrainedTokenizerBase

    import ucan_cli.io.tokenize as tokenize

    texts: list[str] = []
    encoded: list[dict] = []
    real_call, real_encode = PreTrainedTokenizerBase.__call__, tokenize.encode_record

    def spy_call(self, text=None, *args, **kwargs):
        texts.extend([text] if isinstance(text, str) else list(text or []))
        return real_call(self, text, *args, **kwargs)

    def spy_encode(record, *args, **kwargs):
        encoded.append(record.fields)
        return real_encode(record, *args, **kwargs)

    monkeypatch.setattr(PreTrainedTokenizerBase, "__call__", spy_call)
    monkeypatch.setattr(tokenize, "encode_record", spy_encode)
    out = world["root"] / "poisoned"
    result = attenuate(world, out, "--train", world["train"], "--epochs", "1", "--json")
    assert result.exit_code == 0, result.output
    assert any(KEPT in t for t in texts) and any(KEPT in json.dumps(f) for f in encoded)
    assert not any(POISON in t for t in texts)
    assert not any(POISON in json.dumps(f) for f in encoded)
    assert not any(f.get("id", "").startswith("second-") or f.get("id") == "copy-1" for f in encoded)
    for path in out.iterdir():
        assert POISON.encode() not in path.read_bytes(), path.name


# ------------------------------------------------------------------------------------ the retrained adapter


@pytest.mark.parametrize("name", ["llama", "qwen2_rs"])
def test_fresh_lora_with_the_inputs_exact_config(world, tiny_models, adapters, name):
    """Same adapter_config.json bytes, tensor names, shapes and dtypes; every lora_A, lora_B (and
    lora bias, on the Qwen2 fixture with rsLoRA and rank/alpha patterns) differs from the input;
    equal seeds give equal bytes, another seed other bytes; the input is untouched; the report's
    training block has the counts and the cost 3 x kept x epochs; the ledger restarts the factors."""
    from safetensors import safe_open

    from ucan_cli.io.ledger import read_ledger

    base = tiny_models["qwen2" if name == "qwen2_rs" else "llama"]
    src = adapters[name]
    before = digest(src)
    outs = [world["root"] / f"{name}-{i}" for i in range(3)]
    for out, seed in zip(outs, ("0", "0", "1")):
        result = attenuate(world, out, "--train", world["train"], "--epochs", "2", "--lr", "0.01", "--seed", seed,
                           adapter=src, base=base)
        assert result.exit_code == 0, result.output
    assert digest(src) == before
    weights = [(o / "adapter_model.safetensors").read_bytes() for o in outs]
    assert weights[0] == weights[1] and weights[0] != weights[2]
    assert (outs[0] / "adapter_config.json").read_bytes() == (src / "adapter_config.json").read_bytes()

    def tensors(path):
        with safe_open(str(path / "adapter_model.safetensors"), "pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}

    old, new = tensors(src), tensors(outs[0])
    assert sorted(old) == sorted(new)
    for key in old:
        assert (new[key].shape, new[key].dtype) == (old[key].shape, old[key].dtype), key
        assert not torch.equal(new[key], old[key]), key
    if name == "qwen2_rs":
        assert any(k.endswith("lora_B.bias") for k in old)

    report = json.loads((outs[0] / "ucan_report.json").read_text())
    tr = report["training"]
    assert tr["train_records"] == {"n_records": 15, "kept": 9, "removed": 6, "removed_by": {"user_id": 4, "id": 1, "content": 1}}
    assert tr["cost"]["forward_equivalents"] == 3 * 9 * 2 == tr["estimate"]["forward_equivalents"]
    assert (tr["steps_run"], tr["stop_reason"], tr["epochs"]) == (2 * 3, "epochs", 2)  # ceil(9 / 4) = 3 steps per epoch
    assert report["options"]["method"] == "retrain" and report["options"]["epochs"] == 2 and report["options"]["lr"] == 0.01
    assert report["inputs"]["train"]["n_records"] == 15
    assert "exact unlearning for this adapter only if" in report["disclaimer"]
    entry = read_ledger(outs[0]).head.data
    assert entry["request"]["kind"] == "retrain" and entry["cumulative_factors"] == {"output": {}, "rank": {}}
    assert "train = " in (outs[0] / "ucan_config.toml").read_text()


def test_the_init_is_peft_s_own(world, tiny_models):
    """reinitialise draws what PEFT's reset_lora_parameters(init_lora_weights=True) draws under
    torch.manual_seed(seed) on a CPU float32 model, module by module in the adapter's order; B and
    bias are zero."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.gradient.method import lora_layers
    from ucan_cli.methods.retrain.method import reinitialise
    from ucan_cli.runtime.models import attach_adapter

    source = LoraAdapter.load(world["adapter"])
    drawn = []
    for way in ("ours", "peft"):
        model = attach_adapter(AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32), world["adapter"])
        layers = lora_layers(model, source)
        if way == "ours":
            reinitialise(layers, 7)
        else:
            torch.manual_seed(7)
            for _, layer in layers:
                layer.reset_lora_parameters("default", True)
        drawn.append([(layer.lora_A["default"].weight.detach().clone(), layer.lora_B["default"].weight.detach().clone()) for _, layer in layers])
    for (a0, b0), (a1, b1) in zip(*drawn):
        assert torch.equal(a0, a1) and not a0.eq(0).all()
        assert not b0.any() and not b1.any()


# ------------------------------------------------------------------------------------ the CLI


def test_console_script_and_dry_run(world, monkeypatch):
    """The real console script writes the standard directory; --dry-run estimates 3 x kept x
    epochs without loading any weights and writes nothing."""
    out = world["root"] / "script"
    argv = ["attenuate", "--method", "retrain", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--forget",
            str(world["forget"]), "--retain", str(world["retain"]), "--train", str(world["train"]), "--receipt-key", str(world["key"]),
            "--batch-size", "4", "--epochs", "1", "-o", str(out), "--json"]
    proc = subprocess.run([sys.executable, "-m", "ucan_cli", *argv], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["training"]["train_records"]["kept"] == world["n_kept"] and doc["options"]["method"] == "retrain"
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "adapter_config.json", "adapter_model.safetensors", "ucan_config.toml", "ucan_ledger.jsonl",
        "ucan_report.json", "ucan_report.md",
    ]
    assert "retrained by ucan" in (out / "README.md").read_text()

    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("--dry-run loaded the model"))
    result = attenuate(world, world["root"] / "dry", "--train", world["train"], "--epochs", "5", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    tr = json.loads(result.stdout)["training"]
    assert tr["estimate"]["forward_equivalents"] == 3 * world["n_kept"] * 5
    assert tr["train_records"]["removed"] == world["n_train"] - world["n_kept"]
    assert not (world["root"] / "dry").exists()


def test_bad_train_files_and_flags_exit_2_before_any_model_loads(tmp_path, world, monkeypatch):
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("a model loaded"))
    monkeypatch.setattr(models, "load_tokenizer", lambda *a, **k: pytest.fail("a tokenizer loaded"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(make_records(1)[0]) + "\n{not json\n")
    only_forget = write_jsonl(tmp_path / "only.jsonl", make_records(3, seed=11))  # users u0-u2: all forget users
    out = tmp_path / "out"
    cases = [
        (["--train", tmp_path / "missing.jsonl"], "missing.jsonl: train file not found"),
        (["--train", bad], f"{bad}:2"),
        (["--train", only_forget], "every one of its 3 records belongs to a forget user"),
        ([], "--method retrain needs --train FILE"),
        (["--train", world["train"], "--epochs", "0"], "--epochs"),
        (["--train", world["train"], "--steps", "3"], "--steps: not an option of --method retrain"),
    ]
    for extra, message in cases:
        result = attenuate(world, out, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert message in result.output, (extra, result.output)
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not out.exists()
    result = runner.invoke(app, ["attenuate", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--forget",
                                 str(world["forget"]), "--retain", str(world["retain"]), "--method", "ga", "--train",
                                 str(world["train"]), "-o", str(out)])
    assert result.exit_code == 2 and "--train: not an option of --method ga" in result.output
