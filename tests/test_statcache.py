"""The statistics cache (``ucan_cli.io.statcache``): a hit skips the model and the passes and
gives the same bytes; any changed input or option misses; a damaged entry is recomputed.

Every test has its own UCAN_CACHE_DIR (conftest), and the API tests pass their own
``cache_dir`` too, so nothing here touches the user's cache or another test's entries.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.flows import score as api
from ucan_cli.io import statcache
from ucan_cli.methods.ucan.scorefile import load_score_file, score_file_bytes


@pytest.fixture(autouse=True)
def _config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture()
def world(tmp_path, tiny_models, adapters) -> dict:
    """Private copies of the tiny Llama base and adapter (the tests edit them), records, a key."""
    shutil.copytree(tiny_models["llama"], tmp_path / "base")
    shutil.copytree(adapters["llama"], tmp_path / "adapter")
    forget = make_records(6, seed=5, user_offset=100)
    for row in forget:
        row["instruction"] = "Pick the next film for this viewer, please."
    (tmp_path / "key").write_text("k" * 32)
    template = tmp_path / "t.j2"
    template.write_text("### Instruction:\n{{ instruction }}\n\n### Input:\n{{ input }}\n\n### Response:\n")
    return {
        "base": tmp_path / "base", "adapter": tmp_path / "adapter", "key": tmp_path / "key", "template": template,
        "forget": write_jsonl(tmp_path / "forget.jsonl", forget),
        "retain": write_jsonl(tmp_path / "retain.jsonl", make_records(12)),
        "cache": tmp_path / "stats-cache",
    }


def run(world, cache=True, **options):
    return api.score(
        str(world["base"]), world["adapter"], world["forget"], world["retain"], receipt_key=world["key"],
        cache_dir=world["cache"] if cache else None, **options,
    )


def file_bytes(r) -> bytes:
    return score_file_bytes(r.stats, r.result, r.meta)


class PassCounter:
    """Wraps ``collect_statistics`` in flows/score.py and counts the forward passes."""

    def __init__(self, monkeypatch):
        self.calls = 0
        real = api.collect_statistics

        def counted(*args, **kwargs):
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(api, "collect_statistics", counted)


def forbid_model(monkeypatch):
    """A hit must neither load a model nor run a pass."""
    import ucan_cli.runtime.models as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded or run on a cache hit")

    monkeypatch.setattr(api, "collect_statistics", refuse)
    monkeypatch.setattr(models, "load_base_model", refuse)


def test_a_hit_skips_the_model_and_gives_identical_bytes(world, monkeypatch):
    plain = run(world, cache=False)
    first = run(world)
    assert first.statistics_from == "forward pass" and plain.statistics_from == "forward pass"
    entries = list(world["cache"].rglob("*.safetensors"))
    assert len(entries) == 1 and entries[0].parent.name == entries[0].stem[:2]
    forbid_model(monkeypatch)
    second = run(world)
    assert second.statistics_from == "cache"
    assert "load_model_s" not in second.timings and second.timings["passes_s"] == 0.0
    assert file_bytes(second) == file_bytes(first) == file_bytes(plain)
    # New method parameters reuse the same statistics: only steps 2-5 run.
    from ucan_cli.methods.ucan.params import MethodParams

    other = run(world, params=MethodParams(ratio=0.3))
    assert other.statistics_from == "cache" and other.result.params.ratio == 0.3


def test_direction_moments_are_cached_too(world, monkeypatch):
    """Direction units (SPEC 3b): a new --strength or --gate reuses the moments, no pass runs."""
    import ucan_cli.methods.ucan.moments as moments
    from ucan_cli.methods.ucan.params import MethodParams

    direction = MethodParams(unit="direction", gate="none", strength=0.2)
    plain = run(world, cache=False, params=direction)
    first = run(world, params=direction)
    assert first.statistics_from == "forward pass"
    forbid_model(monkeypatch)
    monkeypatch.setattr(moments, "collect_moments", lambda *a, **k: (_ for _ in ()).throw(AssertionError("a pass ran")))
    second = run(world, params=direction)
    assert second.statistics_from == "cache" and file_bytes(second) == file_bytes(first) == file_bytes(plain)
    stronger = run(world, params=MethodParams(unit="direction", gate="none", strength=0.5))
    assert stronger.statistics_from == "cache" and stronger.meta["params"]["strength"] == 0.5
    assert len(list(world["cache"].rglob("*.safetensors"))) == 1  # the moments do not depend on the edit's options


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def _edit_text(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text and len(old) == len(new)
    path.write_text(text.replace(old, new, 1))


CHANGES = {
    "adapter tensor": lambda w: _flip_last_byte(w["adapter"] / "adapter_model.safetensors"),
    "adapter config": lambda w: _edit_text(w["adapter"] / "adapter_config.json", '"lora_alpha": 8', '"lora_alpha": 9'),
    "base weights": lambda w: _flip_last_byte(w["base"] / "model.safetensors"),
    "base config": lambda w: _edit_text(w["base"] / "config.json", '"rms_norm_eps": 1e-06', '"rms_norm_eps": 2e-06'),
    "base tokenizer": lambda w: _edit_text(w["base"] / "tokenizer_config.json", '"model_max_length"', '"model_max_lengtH"'),
    "forget file": lambda w: _edit_text(w["forget"], "viewer", "viewor"),
    "retain file": lambda w: _edit_text(w["retain"], "Which", "Whick"),
    "template file": lambda w: _edit_text(w["template"], "Response", "Responsa"),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_changed_input_byte_misses(world, monkeypatch, change):
    options = {"template": str(world["template"])}
    run(world, **options)
    CHANGES[change](world)
    counter = PassCounter(monkeypatch)
    again = run(world, **options)
    assert counter.calls == 1 and again.statistics_from == "forward pass"
    assert len(list(world["cache"].rglob("*.safetensors"))) == 2
    assert file_bytes(again) == file_bytes(run(world, cache=False, **options))


OPTION_CHANGES = {
    "unit": {"params": "rank"},
    "token_scope": {"token_scope": "last"},
    "halves": {"halves": "records"},
    "max_length": {"max_length": 40},
    "max_samples": {"max_samples": 5},
    "retain_max_samples": {"retain_max_samples": 10},
    "seed": {"seed": 1},
    "dtype": {"dtype": "bfloat16"},
    "batch_size": {"batch_size": 5},
    "allow_overlap": {"allow_overlap": True},
    "template": {"template": "plain"},
}


@pytest.mark.parametrize("option", sorted(OPTION_CHANGES))
def test_every_option_that_changes_statistics_misses(world, monkeypatch, option):
    from ucan_cli.methods.ucan.params import MethodParams

    changed = dict(OPTION_CHANGES[option])
    if "params" in changed:
        changed["params"] = MethodParams(unit=changed["params"])
    run(world)
    counter = PassCounter(monkeypatch)
    assert run(world, **changed).statistics_from == "forward pass" and counter.calls == 1
    assert run(world, **changed).statistics_from == "cache" and counter.calls == 1  # and that one is kept too


@pytest.mark.parametrize("damage", ["flip a tensor byte", "truncate", "another key"])
def test_a_damaged_entry_is_recomputed_with_a_warning(world, monkeypatch, damage):
    clean = run(world)
    (entry,) = world["cache"].rglob("*.safetensors")
    if damage == "flip a tensor byte":
        _flip_last_byte(entry)
    elif damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    else:  # a valid entry under the wrong name
        other = run(world, seed=1)
        (other_entry,) = [p for p in world["cache"].rglob("*.safetensors") if p != entry]
        shutil.copyfile(other_entry, entry)
        assert other.statistics_from == "forward pass"
    counter = PassCounter(monkeypatch)
    again = run(world)
    assert counter.calls == 1 and again.statistics_from == "forward pass"
    assert any(w.startswith(f"statistics cache entry {entry}") and "recomputing" in w for w in again.warnings)
    assert file_bytes(again) == file_bytes(clean)
    stats, meta = load_score_file(entry)  # replaced by a sound entry
    assert meta["cache_key"] == entry.stem
    forbid_model(monkeypatch)
    assert run(world).statistics_from == "cache"


def test_bases_that_cannot_be_identified_are_never_cached(world, monkeypatch, tokenizer):
    doc, reason = statcache.base_fingerprint("nobody-has/this-model")
    assert doc is None and "not in the local Hub cache" in reason
    doc, reason = statcache.base_fingerprint(None)
    assert doc is None and "model object" in reason
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(world["base"])
    pair = api.score((model, tokenizer), world["adapter"], world["forget"], world["retain"], receipt_key=world["key"], cache_dir=world["cache"])
    assert pair.statistics_from == "forward pass" and not world["cache"].exists()
    assert any(w.startswith("statistics cache not used: a model object") for w in pair.warnings)


def test_base_fingerprint_hashes_every_visible_file(world):
    doc, _ = statcache.base_fingerprint(str(world["base"]))
    assert doc["kind"] == "dir" and {"config.json", "model.safetensors", "tokenizer.json"} <= set(doc["files"])
    from ucan_cli.io.adapter import sha256_file

    assert doc["files"]["model.safetensors"] == sha256_file(world["base"] / "model.safetensors")
    (world["base"] / ".git").mkdir()
    (world["base"] / ".git" / "HEAD").write_text("ref")
    assert statcache.base_fingerprint(str(world["base"]))[0] == doc


def test_resolve_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("UCAN_CACHE_DIR", str(tmp_path / "root"))
    assert statcache.resolve_cache_dir(None, False) == tmp_path / "root" / "stats"
    assert statcache.resolve_cache_dir(tmp_path / "x", False) == tmp_path / "x"
    assert statcache.resolve_cache_dir(None, True) is None
    from ucan_cli.errors import InputError

    with pytest.raises(InputError, match="exclude each other"):
        statcache.resolve_cache_dir(tmp_path / "x", True)


# ------------------------------------------------------------------------------------ the CLI


def _score_argv(world, out: Path, *extra: str) -> list[str]:
    return ["score", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--forget", str(world["forget"]),
            "--retain", str(world["retain"]), "--receipt-key", str(world["key"]), "-o", str(out), "--json", *extra]


def test_cli_score_hits_the_default_cache_in_a_subprocess(world, tmp_path, monkeypatch):
    """The first and --no-cache runs in process (fast), the hit through the console entry point."""
    root = tmp_path / "ucan-cache"
    monkeypatch.setenv("UCAN_CACHE_DIR", str(root))
    docs = {}
    for name, extra in (("first", ()), ("plain", ("--no-cache",))):
        result = CliRunner().invoke(app, _score_argv(world, tmp_path / f"{name}.safetensors", *extra))
        assert result.exit_code == 0, result.output
        docs[name] = json.loads(result.stdout)
    proc = subprocess.run([sys.executable, "-m", "ucan_cli", *_score_argv(world, tmp_path / "second.safetensors")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    docs["second"] = json.loads(proc.stdout)
    assert [docs[n]["statistics_from"] for n in ("first", "second", "plain")] == ["forward pass", "cache", "forward pass"]
    assert len(list((root / "stats").rglob("*.safetensors"))) == 1
    first, second, plain = ((tmp_path / f"{n}.safetensors").read_bytes() for n in ("first", "second", "plain"))
    assert first == second == plain


def test_cli_attenuate_reuses_score_statistics_and_writes_the_same_adapter(world, tmp_path):
    cache = tmp_path / "c"
    runner = CliRunner()
    result = runner.invoke(app, _score_argv(world, tmp_path / "s.safetensors", "--cache-dir", str(cache)))
    assert result.exit_code == 0, result.output
    common = ["attenuate", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--forget", str(world["forget"]),
              "--retain", str(world["retain"]), "--receipt-key", str(world["key"]), "--accept-weak", "--json"]
    import ucan_cli.flows.score as flows_score

    real = flows_score.collect_statistics
    flows_score.collect_statistics = None  # a pass would crash: the hit must not run one
    try:
        hit = runner.invoke(app, [*common, "--cache-dir", str(cache), "-o", str(tmp_path / "hit")])
    finally:
        flows_score.collect_statistics = real
    assert hit.exit_code == 0, hit.output
    plain = runner.invoke(app, [*common, "--no-cache", "-o", str(tmp_path / "plain")])
    assert plain.exit_code == 0, plain.output
    assert json.loads(hit.stdout)["options"]["statistics_from"] == "cache"
    assert json.loads(plain.stdout)["options"]["statistics_from"] == "forward pass"
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        assert (tmp_path / "hit" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes()
    bad = runner.invoke(app, [*common, "--no-cache", "--cache-dir", str(cache), "-o", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "exclude each other" in bad.output and not (tmp_path / "x").exists()


def test_an_in_memory_adapter_is_keyed_by_its_tensors(world, monkeypatch):
    """``with_tensors`` keeps the source's file SHA-256: the key must see the edited tensors."""
    from ucan_cli.io.adapter import LoraAdapter

    source = LoraAdapter.load(world["adapter"])
    name = next(k for k in source.tensors if "lora_B" in k)
    edited = source.with_tensors({name: source.tensors[name] * 2})
    assert edited.sha256 == source.sha256
    args = (str(world["base"]),)
    kw = {"receipt_key": world["key"], "cache_dir": world["cache"]}
    api.score(*args, source, world["forget"], world["retain"], **kw)
    counter = PassCounter(monkeypatch)
    assert api.score(*args, edited, world["forget"], world["retain"], **kw).statistics_from == "forward pass"
    assert api.score(*args, source, world["forget"], world["retain"], **kw).statistics_from == "cache"
    assert counter.calls == 1
