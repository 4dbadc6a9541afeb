"""Outputs under bad -o, interruptions and tampering (docs/reliability.md): --force never touches
an input, an unwritable -o is refused before any model loads, killed runs leave nothing that a
later run does not clean, the demo is one atomic output, and score files are tamper-evident."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.io import outdir
from ucan_cli.io.outdir import atomic_output_dir

SRC = str(Path(__file__).resolve().parents[1] / "src")
runner = CliRunner()


@pytest.fixture(autouse=True)
def _config_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


@pytest.fixture()
def no_model(monkeypatch):
    """Any model load fails the test: refusals must come before."""
    import ucan_cli.runtime.models as models

    def load(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(models, "load_base_model", load)


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def data_files(root: Path) -> dict[str, Path]:
    root.mkdir(parents=True, exist_ok=True)
    key = root / "receipt.key"
    key.write_text("k" * 64)
    return {"forget": write_jsonl(root / "forget.jsonl", make_records(4, seed=5, user_offset=100)),
            "retain": write_jsonl(root / "retain.jsonl", make_records(8)), "key": key}


def siblings(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------ 1. --force never touches an input


def test_score_force_never_overwrites_the_receipt_key(tiny_models, adapters, tmp_path, no_model):
    d = data_files(tmp_path / "d")
    before = d["key"].read_bytes()
    result = invoke("score", "--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", d["forget"],
                    "--retain", d["retain"], "--receipt-key", d["key"], "-o", d["key"], "--force")
    assert result.exit_code == 2, result.output
    assert result.stderr == f"error: {d['key']}: output would overlap the input {d['key']} (the output is the input); choose another -o\n"
    assert d["key"].read_bytes() == before


def test_attenuate_force_never_deletes_the_config_file(tiny_models, adapters, tmp_path, no_model):
    d = data_files(tmp_path / "data")
    (tmp_path / "d").mkdir()
    config = tmp_path / "d" / "my.toml"
    config.write_text("[attenuate]\nratio = 0.2\n")
    before = tree(tmp_path / "d")
    result = invoke("attenuate", "--config", config, "--base", tiny_models["llama"], "--adapter", adapters["llama"],
                    "--forget", d["forget"], "--retain", d["retain"], "--receipt-key", d["key"], "-o", tmp_path / "d", "--force")
    assert result.exit_code == 2, result.output
    assert "would overlap the input" in result.stderr and str(config) in result.stderr
    assert tree(tmp_path / "d") == before


def test_eval_force_never_deletes_the_template(tiny_models, adapters, tmp_path, no_model):
    d = data_files(tmp_path / "data")
    (tmp_path / "d").mkdir()
    template = tmp_path / "d" / "t.jinja"
    template.write_text("{{ instruction }} {{ input }} =>")
    unlearned = tmp_path / "unlearned"
    shutil.copytree(adapters["llama"], unlearned)
    before = tree(tmp_path / "d")
    result = invoke("eval", "--base", tiny_models["llama"], "--adapter", adapters["llama"], "--unlearned", unlearned,
                    "--forget", d["forget"], "--retain", d["retain"], "--template", template, "-o", tmp_path / "d", "--force")
    assert result.exit_code == 2, result.output
    assert "would overlap the input" in result.stderr and str(template) in result.stderr
    assert tree(tmp_path / "d") == before


def test_prepare_split_force_never_deletes_the_users_file(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    data = write_jsonl(tmp_path / "all.jsonl", make_records(8))
    users = d / "users.txt"
    users.write_text("u0\n")
    result = invoke("prepare", "split", "--data", data, "--forget-users-file", users, "-o", d, "--force")
    assert result.exit_code == 2, result.output
    assert "would overlap the input" in result.stderr and str(users) in result.stderr
    assert users.read_text() == "u0\n" and sorted(p.name for p in d.iterdir()) == ["users.txt"]


# ------------------------------------------------------------------ 2. unwritable -o, before any model


def test_output_under_a_regular_file_is_refused_before_any_model(tiny_models, adapters, tmp_path, no_model):
    d = data_files(tmp_path / "d")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", d["forget"], "--retain", d["retain"],
            "--receipt-key", d["key"]]
    for command, out in (("score", blocker / "sub" / "s.safetensors"), ("attenuate", blocker / "out")):
        result = invoke(command, *args, "-o", out)
        assert result.exit_code == 2, result.output
        assert result.stderr == f"error: {out}: cannot be written: {blocker} is not a directory\n"
    assert blocker.read_text() == "x" and sorted(p.name for p in tmp_path.iterdir() if p.name != "config") == ["d", "file"]


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs /proc")
def test_output_where_no_file_can_be_created_is_refused_even_for_root(tmp_path):
    # /proc refuses new files to root too (os.access would say yes): the probe is a real file.
    data = write_jsonl(tmp_path / "all.jsonl", make_records(8))
    result = invoke("prepare", "split", "--data", data, "--forget-users", "u0", "-o", "/proc/ucan-out")
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: /proc/ucan-out: cannot be written: no file can be created in /proc (")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a 0500 directory")
def test_output_in_a_read_only_directory_is_refused(tmp_path):
    data = write_jsonl(tmp_path / "all.jsonl", make_records(8))
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        result = invoke("prepare", "split", "--data", data, "--forget-users", "u0", "-o", locked / "out")
    finally:
        locked.chmod(0o700)
    assert result.exit_code == 2 and f"no file can be created in {locked}" in result.stderr


# ------------------------------------------------------------------ 3. killed runs leave nothing for good


def _owned(path: Path, pid: int, host: str | None = None) -> Path:
    path.mkdir()
    (path / outdir.OWNER_FILE).write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "start": None, "time": 0}))
    (path / "partial").write_text("x")
    return path


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_siblings_of_dead_runs_are_removed_and_live_ones_kept(tmp_path):
    out = tmp_path / "out"
    dead = _dead_pid()
    _owned(tmp_path / ".out.tmp-dead", dead)
    _owned(tmp_path / ".out.old-dead", dead)
    _owned(tmp_path / ".out.tmp-live", os.getpid())
    _owned(tmp_path / ".out.tmp-elsewhere", dead, host="another-host")
    (tmp_path / ".out.tmp-fresh").mkdir()  # no owner yet (just created): kept
    legacy = tmp_path / ".out.tmp-legacy"  # no owner, two hours old: removed
    legacy.mkdir()
    os.utime(legacy, (time.time() - 7200, time.time() - 7200))
    _owned(tmp_path / ".other.tmp-dead", dead)  # another output's: not this run's business
    with atomic_output_dir(out, force=False) as tmp:
        (tmp / "f").write_text("ok")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.tmp-dead", ".out.tmp-elsewhere", ".out.tmp-fresh", ".out.tmp-live", "out"]
    assert sorted(p.name for p in out.iterdir()) == ["f"]  # the owner file does not ship


def _spawn(code: str, *argv: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": SRC}
    return subprocess.Popen([sys.executable, "-c", code, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_sigkill_in_the_write_phase_is_cleaned_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    code = (
        "import sys, time\nfrom ucan_cli.io.outdir import atomic_output_dir\n"
        "with atomic_output_dir(sys.argv[1], force=False) as tmp:\n"
        "    (tmp / 'half').write_text('x'); print('ready', flush=True); time.sleep(60)\n"
    )
    proc = _spawn(code, str(out))
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(siblings(out)) == 1  # what SIGKILL leaves
    with atomic_output_dir(out, force=False) as tmp:
        (tmp / "f").write_text("ok")
    assert siblings(out) == [] and sorted(p.name for p in out.iterdir()) == ["f"]


def test_sigterm_in_the_write_phase_cleans_up(tmp_path):
    data = write_jsonl(tmp_path / "all.jsonl", make_records(8))
    out = tmp_path / "out"
    code = (
        "import sys, time\nimport ucan_cli.prepare.split as split\nfrom ucan_cli import cli\n"
        "write = split._write_lines\n"
        "def slow(path, lines):\n"
        "    result = write(path, lines); print('ready', flush=True); time.sleep(60); return result\n"
        "split._write_lines = slow\nsys.argv = ['ucan', *sys.argv[1:]]\ncli.main()\n"
    )
    proc = _spawn(code, "prepare", "split", "--data", str(data), "--forget-users", "u0", "-o", str(out))
    assert proc.stdout.readline().strip() == "ready"
    assert len(siblings(out)) == 1
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.splitlines()[-1] == "interrupted (SIGTERM); no output was left half-written"
    assert not out.exists() and siblings(out) == []


# ------------------------------------------------------------------ 4. the demo is one atomic output


@pytest.fixture(scope="module")
def demo_env(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("demo-env")
    return {"UCAN_CACHE_DIR": str(root / "cache"), "XDG_CONFIG_HOME": str(root / "config"), "COLUMNS": "200"}


def _fail_scoring(monkeypatch):
    import ucan_cli.flows.score as api
    from ucan_cli.errors import UcanRuntimeError

    def broken(*args, **kwargs):
        raise UcanRuntimeError("simulated failure")

    monkeypatch.setattr(api, "score", broken)


def test_a_failing_demo_writes_nothing(demo_env, tmp_path, monkeypatch):
    _fail_scoring(monkeypatch)
    out = tmp_path / "demo"
    result = runner.invoke(app, ["demo", "-o", str(out)], env=demo_env)
    assert result.exit_code == 1 and "simulated failure" in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no OUT, no world/ alone, no hidden sibling
    old = tmp_path / "old"
    old.mkdir()
    (old / "keep.txt").write_text("mine")
    result = runner.invoke(app, ["demo", "-o", str(old), "--force"], env=demo_env)
    assert result.exit_code == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"] and tree(old) == {"keep.txt": b"mine"}


def test_a_killed_demo_leaves_no_output_and_the_rerun_replaces_cleanly(demo_env, tmp_path):
    out = tmp_path / "demo"
    code = (
        "import sys, time\nimport ucan_cli.flows.score as api\nfrom ucan_cli import cli\n"
        "def stuck(*a, **k):\n    print('ready', flush=True); time.sleep(60)\n"
        "api.score = stuck\nsys.argv = ['ucan', *sys.argv[1:]]\ncli.main()\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, "demo", "-o", str(out)], env={**os.environ, **demo_env, "PYTHONPATH": SRC},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists() and len(siblings(out)) == 1  # the world was copied, but only into the sibling
    # The rerun is not refused, removes the dead run's sibling; --force replaces an old demo
    # and leaves no .OUT.old-* behind.
    out.mkdir()
    (out / "keep.txt").write_text("old demo")
    result = runner.invoke(app, ["demo", "-o", str(out), "--force", "--json"], env=demo_env)
    assert result.exit_code == 0, result.output
    assert siblings(out) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["demo"]
    assert sorted(p.name for p in out.iterdir()) == ["demo.json", "eval", "random-units", "scores.safetensors", "unlearned", "world"]
    # Written in the sibling, the documents still name the paths the user finds.
    doc = json.loads(result.stdout)
    assert doc["demo"]["out"] == str(out) and json.loads((out / "demo.json").read_text()) == doc
    report = json.loads((out / "eval" / "report.json").read_text())
    assert report["adapters"][1]["path"] == str(out / "unlearned")
    for path, data in tree(out).items():
        assert b".tmp-" not in data, path


# ------------------------------------------------------------------ 5. score files are tamper-evident


@pytest.fixture()
def scored(tiny_models, adapters, tmp_path) -> dict:
    d = data_files(tmp_path / "d")
    scores = tmp_path / "scores.safetensors"
    result = invoke("score", "--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", d["forget"],
                    "--retain", d["retain"], "--receipt-key", d["key"], "-o", scores)
    assert result.exit_code == 0, result.output
    return {**d, "scores": scores}


def _rewrite(path: Path, *, meta=None, tensors=None) -> None:
    """Edit a score file the way a hand would: new header and tensors, old integrity hash."""
    from safetensors import safe_open
    from safetensors.numpy import save

    with safe_open(str(path), framework="np") as handle:
        metadata = dict(handle.metadata())
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    if meta is not None:
        metadata["meta"] = json.dumps(meta(json.loads(metadata["meta"])))
    if tensors is not None:
        tensors(arrays)
    path.write_bytes(save(arrays, metadata=metadata))


def _attenuate(adapter, scored, out):
    return invoke("attenuate", "--adapter", adapter, "--scores", scored["scores"], "--forget", scored["forget"],
                  "--receipt-key", scored["key"], "-o", out)


def test_score_file_moved_to_another_adapter_is_refused(scored, adapters, tmp_path):
    from safetensors.numpy import load_file, save_file

    from ucan_cli.io.adapter import sha256_file

    other = tmp_path / "other"
    shutil.copytree(adapters["llama"], other)
    weights = load_file(str(other / "adapter_model.safetensors"))
    weights = {k: (v * 0.5 if "lora_B" in k else v) for k, v in weights.items()}
    save_file(weights, str(other / "adapter_model.safetensors"), metadata={"format": "pt"})
    sha = sha256_file(other / "adapter_model.safetensors")
    _rewrite(scored["scores"], meta=lambda m: {**m, "adapter_sha256": sha})
    result = _attenuate(other, scored, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {scored['scores']}: score file was modified after `ucan score` wrote it "
                             "(integrity hash differs)\n")
    assert not (tmp_path / "out").exists()


def test_edited_statistics_are_refused(scored, adapters, tmp_path):
    def inflate(arrays):
        arrays["forget.sum_abs"] = arrays["forget.sum_abs"].copy()
        arrays["forget.sum_abs"][:50] *= 1000

    _rewrite(scored["scores"], tensors=inflate)
    result = _attenuate(adapters["llama"], scored, tmp_path / "out")
    assert result.exit_code == 2 and "(integrity hash differs)" in result.stderr
    assert not (tmp_path / "out").exists()


def test_score_file_meta_that_is_not_an_object_is_exit_2(scored, adapters, tmp_path):
    from ucan_cli.methods.ucan.scorefile import load_score_file, score_file_bytes

    stats, _ = load_score_file(scored["scores"])
    scored["scores"].write_bytes(score_file_bytes(stats, None, ["not", "an", "object"]))  # a valid hash
    result = _attenuate(adapters["llama"], scored, tmp_path / "out")
    assert result.exit_code == 2, result.output
    assert result.stderr == (f"error: {scored['scores']}: damaged score file: metadata 'meta' is a JSON list, "
                             "not an object\n")


def test_score_file_without_integrity_hash_is_refused(scored, adapters, tmp_path):
    from safetensors import safe_open
    from safetensors.numpy import save

    from ucan_cli.methods.ucan.scorefile import INTEGRITY_KEY

    with safe_open(str(scored["scores"]), framework="np") as handle:
        metadata = {k: v for k, v in handle.metadata().items() if k != INTEGRITY_KEY}
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    scored["scores"].write_bytes(save(arrays, metadata=metadata))
    result = _attenuate(adapters["llama"], scored, tmp_path / "out")
    assert result.exit_code == 2
    assert "has no integrity hash (written by an older ucan); rerun `ucan score`" in result.stderr


def test_integrity_hash_is_the_only_change_to_the_score_file(scored):
    """The file is the canonical safetensors of before plus one metadata entry; stats read back unchanged."""
    from safetensors import safe_open
    from safetensors.numpy import save

    from ucan_cli.io.canonical import canonical_safetensors
    from ucan_cli.methods.ucan.scorefile import INTEGRITY_KEY, integrity_hash

    with safe_open(str(scored["scores"]), framework="np") as handle:
        metadata = dict(handle.metadata())
        arrays = {k: handle.get_tensor(k) for k in handle.keys()}
    assert metadata[INTEGRITY_KEY] == integrity_hash(arrays, metadata)
    assert canonical_safetensors(save(arrays, metadata=metadata)) == scored["scores"].read_bytes()
