"""`ucan score`, the Python API `score`, and the score file.

Runs the real CLI (typer's CliRunner on ucan_cli.cli.app) on the tiny conftest models. The
receipt key lives in tmp_path (XDG_CONFIG_HOME), never in the user's config dir.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.flows import score as api
from ucan_cli.methods.ucan.statistics import SET_NAMES
from ucan_cli.methods.ucan.verdict import NOISE_SENTENCE
from ucan_cli.cli import app
from ucan_cli.errors import InputError
from ucan_cli.io.adapter import sha256_file
from ucan_cli.methods.ucan.scorefile import load_score_file, save_score_file, score_file_bytes
from ucan_cli.methods.ucan.params import MethodParams

FIELDS = ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq")


@pytest.fixture(autouse=True)
def _config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture()
def data(tmp_path) -> dict[str, Path]:
    forget = make_records(6, seed=5, user_offset=100)
    for row in forget:
        row["instruction"] = "Pick the next film for this viewer, please."
    retain = make_records(12)
    shuffled = list(reversed(retain))
    return {
        "forget": write_jsonl(tmp_path / "forget.jsonl", forget),
        "retain": write_jsonl(tmp_path / "retain.jsonl", retain),
        "same": write_jsonl(tmp_path / "same.jsonl", retain),
        "same_reordered": write_jsonl(tmp_path / "same_reordered.jsonl", shuffled),
        "empty": write_jsonl(tmp_path / "empty.jsonl", []),
    }


def invoke(*args: str):
    return CliRunner().invoke(app, ["score", *map(str, args)])


def no_nan(text: str) -> dict:
    def refuse(name):
        raise AssertionError(f"JSON holds {name}")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------------------------
# The command


def test_score_writes_file_naming_the_adapter(tiny_models, adapters, data, tmp_path):
    out = tmp_path / "scores.safetensors"
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out)
    assert res.exit_code == 0, res.output
    assert "separable from the retain set" in res.stdout
    assert "it does not show that an edit forgets" in " ".join(res.stdout.split())
    stats, meta = load_score_file(out)
    assert meta["adapter_sha256"] == sha256_file(adapters["llama"] / "adapter_model.safetensors")
    assert meta["n_forget"] == 6 and meta["n_retain"] == 12
    assert meta["n_half_a"] + meta["n_half_b"] == 12
    assert meta["unit"] == stats.unit == "output" and meta["scope"] == stats.scope == "response"
    assert len(meta["forget_receipt"]) == 64 and len(meta["receipt_key_fingerprint"]) == 16
    assert stats.forget.n_records == 6 and stats.retain.n_records == 12
    assert stats.n_units == 2 * (32 + 16)  # two layers of q_proj (32 out) and v_proj (16 out)
    # a second run without --force is refused, before any model loads
    again = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["forget"],
                   "--retain", data["retain"], "-o", out)
    assert again.exit_code == 2 and "--force" in again.stderr


def test_score_json_has_no_nan(tiny_models, adapters, data, tmp_path):
    out = tmp_path / "s.safetensors"
    res = invoke("--base", tiny_models["gpt2"], "--adapter", adapters["gpt2"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out, "--json", "--unit", "rank", "--top", "3")
    assert res.exit_code == 0, res.stderr
    doc = no_nan(res.stdout)
    assert doc["written"] is True and doc["output"] == str(out)
    assert doc["method"]["unit"] == "rank" and doc["method"]["token_scope"] == "response"
    assert doc["noise"]["n_units"] == 8  # GPT-2: two c_attn modules of rank 4
    assert len(doc["top_units"]) == 3
    assert doc["verdict"]["kind"] in {"separable", "weak", "noise"}
    assert [m["units"] for m in doc["modules"]] == [4, 4]
    assert out.is_file()


def test_noise_verdict_when_forget_is_retain(tiny_models, adapters, data, tmp_path):
    """Forget = retain (same records, reordered): the CLI writes the statistics, exits 0 and says
    the contrast is at noise level."""
    out = tmp_path / "noise.safetensors"
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["same_reordered"],
                 "--retain", data["retain"], "-o", out, "--allow-overlap", "--json")
    assert res.exit_code == 0, res.stderr
    doc = no_nan(res.stdout)
    assert doc["verdict"]["kind"] == "noise"
    assert doc["verdict"]["sentence"] == NOISE_SENTENCE
    assert doc["verdict"]["n_eligible"] == 0 and doc["selection"]["k"] == 0
    assert doc["nothing_to_do"].startswith("nothing to do")
    assert abs(doc["noise"]["max_R"]) < 1e-5
    assert out.is_file()
    text = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["same"],
                  "--retain", data["retain"], "-o", tmp_path / "n2.safetensors", "--allow-overlap")
    assert text.exit_code == 0
    assert "noise level" in text.stdout.replace("\n", " ")


def test_dry_run_writes_nothing(tiny_models, adapters, data, tmp_path):
    out = tmp_path / "never.safetensors"
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out, "--dry-run", "--json")
    assert res.exit_code == 0, res.stderr
    doc = no_nan(res.stdout)
    assert doc["dry_run"] is True and doc["written"] is False
    assert doc["counts"]["n_forget"] == 6 and doc["counts"]["n_retain"] == 12
    assert doc["counts"]["batches"] == 2  # 6 and 12 records at the default batch size 16
    assert doc["probe"]["seconds"] > 0 and doc["estimate_s"] > 0
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors") == []


def _bad_inputs_outputs(tmp_path):
    """Where a refused run would have written its score file."""
    return tmp_path / "bad.safetensors"


def test_dora_adapter_exits_2(tiny_models, adapters, data, tmp_path):
    dora = tmp_path / "dora"
    shutil.copytree(adapters["llama"], dora)
    cfg = json.loads((dora / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (dora / "adapter_config.json").write_text(json.dumps(cfg))
    out = _bad_inputs_outputs(tmp_path)
    res = invoke("--base", tiny_models["llama"], "--adapter", dora, "--forget", data["forget"], "--retain", data["retain"], "-o", out)
    assert res.exit_code == 2
    assert "DoRA" in res.stderr
    assert not out.exists()


def test_adapter_base_mismatch_exits_2(tiny_models, adapters, data, tmp_path):
    out = _bad_inputs_outputs(tmp_path)
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["gpt2"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out)
    assert res.exit_code == 2
    assert "transformer.h.0.attn.c_attn" in res.stderr
    assert not out.exists()


def test_empty_forget_exits_2(tiny_models, adapters, data, tmp_path):
    out = _bad_inputs_outputs(tmp_path)
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["empty"],
                 "--retain", data["retain"], "-o", out)
    assert res.exit_code == 2
    assert "empty" in res.stderr and "forget" in res.stderr
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--ratio", "0.1", "--tau", "1.0"], "mutually exclusive"),
        (["--floor", "1.0"], "--floor"),
        (["--lambda", "-1"], "--lambda"),
        (["--token-scope", "middle"], "--token-scope"),
        (["--unit", "neuron"], "--unit"),
        (["--decay", "linear"], "--decay"),
    ],
)
def test_bad_options_exit_2_before_loading(tiny_models, adapters, data, tmp_path, extra, needle):
    out = _bad_inputs_outputs(tmp_path)
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out, *extra)
    assert res.exit_code == 2, res.output
    assert needle in res.stderr
    assert not out.exists()


def test_output_inside_adapter_refused(tiny_models, adapters, data):
    out = adapters["llama"] / "scores.safetensors"
    res = invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", data["forget"],
                 "--retain", data["retain"], "-o", out)
    assert res.exit_code == 2 and "inside the input" in res.stderr
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# The Python API


def test_api_noise_sets_nothing_to_do(tiny_models, adapters, data, tmp_path):
    key = tmp_path / "key"
    key.write_text("k" * 32)
    for forget in (data["same"], data["same_reordered"]):
        run = api.score(str(tiny_models["gpt2"]), adapters["gpt2"], forget, data["retain"], allow_overlap=True, receipt_key=key)
        assert run.result is None
        assert run.nothing_to_do is not None and run.nothing_to_do.exit_code == 4
        assert run.overview["verdict"] == "noise" and run.overview["n_eligible"] == 0
        assert run.meta["summary"]["n_eligible"] == 0


def test_api_overview_of_nothing_to_do_uses_the_k0_result(tiny_models, adapters, data, tmp_path):
    """With k = 0 the verdict is explained from the very arrays compute_scores produced."""
    run = api.score(str(tiny_models["gpt2"]), adapters["gpt2"], data["same"], data["retain"], allow_overlap=True)
    k0 = run.nothing_to_do.result
    assert run.result is None and k0 is not None and k0.k == 0 and not k0.eligible.any()
    for name, array in (("R", k0.R), ("R0", k0.R0), ("U", k0.U), ("S", k0.S), ("live", k0.live)):
        assert run.overview["arrays"][name] is array, name
    assert run.overview["sigma0"] == k0.sigma0 and run.overview["verdict"] == "noise"
    separable = api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"])
    assert separable.result.k > 0 and separable.overview["verdict"] == "separable"
    assert separable.overview["n_R_above"] > separable.overview["n_R0_above"]


def test_api_accepts_loaded_model_and_restores_it(tiny_models, adapters, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    tok = AutoTokenizer.from_pretrained(tiny_models["llama"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    run_loaded = api.score((model, tok), adapters["llama"], data["forget"], data["retain"])
    run_path = api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"])
    assert not any("lora" in name for name, _ in model.named_modules())
    assert {k: v for k, v in model.state_dict().items()}.keys() == before.keys()
    assert all(v.equal(before[k]) for k, v in model.state_dict().items())
    np.testing.assert_allclose(run_loaded.stats.forget.sum_abs, run_path.stats.forget.sum_abs, rtol=1e-6)
    assert run_loaded.meta["base"]["loaded"] is True


def test_api_retain_max_samples(tiny_models, adapters, data):
    run = api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"], retain_max_samples=5,
                    params=MethodParams(tau=0.0, ratio=None))
    assert run.meta["n_retain"] == 5 and run.meta["n_retain_file"] == 12
    assert run.stats.retain.n_records == 5
    assert run.stats.half_a.n_records == 2 and run.stats.half_b.n_records == 3


def test_api_input_errors_before_model_loads(tiny_models, adapters, data, monkeypatch):
    import ucan_cli.runtime.models as models

    def boom(*_a, **_k):
        raise AssertionError("the model was loaded before the input error")

    monkeypatch.setattr(models, "load_base_model", boom)
    with pytest.raises(InputError, match="bad.jsonl:1: field 'output' is missing"):
        bad = data["retain"].parent / "bad.jsonl"
        bad.write_text('{"instruction": "x"}\n')
        api.score(str(tiny_models["llama"]), adapters["llama"], bad, data["retain"])
    with pytest.raises(InputError, match="also in the forget set"):
        api.score(str(tiny_models["llama"]), adapters["llama"], data["same"], data["retain"])
    with pytest.raises(InputError, match="max-length"):
        api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"], max_length=2)


# ---------------------------------------------------------------------------------------------
# The score file


def test_score_file_round_trip(tiny_models, adapters, data, tmp_path):
    run = api.score(str(tiny_models["gpt2"]), adapters["gpt2"], data["forget"], data["retain"], params=MethodParams(unit="rank", ratio=0.5))
    path = save_score_file(tmp_path / "s.safetensors", run.stats, run.result, run.meta, force=False)
    stats, meta = load_score_file(path)
    assert meta == json.loads(json.dumps(run.meta))
    assert (stats.unit, stats.scope, stats.module_names, stats.module_sizes) == (
        run.stats.unit, run.stats.scope, run.stats.module_names, run.stats.module_sizes
    )
    np.testing.assert_array_equal(stats.module_ids, run.stats.module_ids)
    np.testing.assert_array_equal(stats.scaling, run.stats.scaling)
    np.testing.assert_array_equal(stats.b_col_norms, run.stats.b_col_norms)
    for name in SET_NAMES:
        a, b = getattr(stats, name), getattr(run.stats, name)
        assert a.n_records == b.n_records
        for f in FIELDS:
            np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    # deterministic bytes, and the scores saved beside the statistics
    assert path.read_bytes() == score_file_bytes(run.stats, run.result, run.meta)
    assert len({score_file_bytes(run.stats, run.result, run.meta) for _ in range(8)}) == 1
    from safetensors.numpy import load_file

    tensors = load_file(str(path))
    np.testing.assert_array_equal(tensors["result.s"], run.result.s)
    np.testing.assert_array_equal(tensors["result.selected"].astype(bool), run.result.selected)
    with pytest.raises(InputError, match="already exists"):
        save_score_file(path, run.stats, run.result, run.meta, force=False)


def test_score_file_rejects_foreign_files(tmp_path, adapters):
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    with pytest.raises(InputError, match="not a safetensors file"):
        load_score_file(garbage)
    with pytest.raises(InputError, match="not a ucan score file"):
        load_score_file(adapters["llama"] / "adapter_model.safetensors")
    with pytest.raises(InputError, match="not found"):
        load_score_file(tmp_path / "missing.safetensors")


def test_halves_choice_is_recorded_and_enforced(tiny_models, adapters, data, tmp_path):
    """auto splits the noise reference by user (every record has a user_id), records on request;
    the score file remembers which, and attenuate --scores refuses a different --halves."""
    by_users = api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"])
    by_records = api.score(str(tiny_models["llama"]), adapters["llama"], data["forget"], data["retain"], halves="records")
    assert by_users.meta["halves"] == "users" and by_records.meta["halves"] == "records"
    np.testing.assert_array_equal(by_users.stats.retain.sum_abs, by_records.stats.retain.sum_abs)
    assert by_users.meta["n_half_a"] + by_users.meta["n_half_b"] == by_users.meta["n_retain"]
    scores = tmp_path / "s.safetensors"
    result = CliRunner().invoke(app, [
        "score", "--base", str(tiny_models["llama"]), "--adapter", str(adapters["llama"]), "--forget", str(data["forget"]),
        "--retain", str(data["retain"]), "-o", str(scores), "--halves", "records",
    ])
    assert result.exit_code == 0, result.output
    refused = CliRunner().invoke(app, [
        "attenuate", "--adapter", str(adapters["llama"]), "--scores", str(scores), "--halves", "users", "-o", str(tmp_path / "o"),
    ])
    assert refused.exit_code == 2 and "split the retain set by records" in refused.stderr
    assert not (tmp_path / "o").exists()
