"""Scoring and evaluation under torch.distributed (``runtime/distributed.py``): the batch deal,
the refusals, and a real two-process torchrun launch on the gloo backend whose statistics,
moments and eval values equal the one-process run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.methods.ucan.scorefile import load_score_file
from ucan_cli.runtime.batching import Batcher
from ucan_cli.runtime.distributed import SINGLE, Ranks

LENGTHS = (5, 9, 3, 9, 7, 2, 6, 8, 4, 1, 6)


class Rec:
    def __init__(self, n: int):
        self.input_ids = tuple(range(1, n + 1))
        self.prompt_len = 1


def _one_process_batches(batcher: Batcher, encoded) -> list[list[int]]:
    order, out, start = batcher.order(encoded), [], 0
    while start < len(order):
        out.append(batcher.take(encoded, order, start))
        start += len(out[-1])
    return out


@pytest.mark.parametrize("size, budget", [(2, None), (3, None), (4, 20), ("auto", None)])
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_run_the_one_process_batches_dealt_round_robin(size, budget, world):
    encoded = [Rec(n) for n in LENGTHS]
    single = _one_process_batches(Batcher(size, max_tokens=budget, ranks=SINGLE), encoded)
    shares = [Batcher(size, max_tokens=budget, ranks=Ranks(rank=r, world=world)).segments(encoded) for r in range(world)]
    for r, share in enumerate(shares):
        assert share == [b for j, b in enumerate(single) if j % world == r]
    everything = sorted(i for share in shares for batch in share for i in batch)
    assert everything == list(range(len(LENGTHS)))  # every record on exactly one rank


def test_a_rank_that_halves_still_runs_exactly_its_share():
    encoded = [Rec(n) for n in LENGTHS]
    ranks = Ranks(rank=1, world=2)
    batcher = Batcher("auto", ranks=ranks)
    batcher.size = batcher.first_size = 4
    seen, failed = [], []

    def step(batch):
        if len(batch.index) == 4 and not failed:
            failed.append(1)
            raise RuntimeError("CUDA out of memory.")
        seen.extend(batch.index)

    batcher.run(encoded, step, pad_id=0)
    assert failed and batcher.halvings == 1
    assert sorted(seen) == sorted(batcher.assigned(encoded))


def test_single_process_is_the_whole_order():
    encoded = [Rec(n) for n in LENGTHS]
    batcher = Batcher(4, ranks=SINGLE)
    assert batcher.segments(encoded) == [batcher.order(encoded)]
    assert "processes" not in batcher.meta()


@pytest.fixture()
def world(tmp_path, tiny_models, adapters):
    (tmp_path / "key").write_text("k" * 32)
    return {
        "base": tiny_models["llama"], "adapter": adapters["llama"], "key": tmp_path / "key",
        "forget": write_jsonl(tmp_path / "forget.jsonl", make_records(7, seed=5, user_offset=100)),
        "retain": write_jsonl(tmp_path / "retain.jsonl", make_records(13)),
        "holdout": write_jsonl(tmp_path / "holdout.jsonl", make_records(5, seed=9, user_offset=200)),
    }


def _score_args(world, out: Path, *extra: str) -> list[str]:
    return ["score", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--forget", str(world["forget"]),
            "--retain", str(world["retain"]), "--receipt-key", str(world["key"]), "-o", str(out), "--batch-size", "3",
            "--no-cache", "--json", *extra]


def test_commands_that_do_not_shard_refuse_a_launcher(world, tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    runner = CliRunner()
    result = runner.invoke(app, ["attenuate", "--base", str(world["base"]), "--adapter", str(world["adapter"]),
                                 "--forget", str(world["forget"]), "--retain", str(world["retain"]), "-o", str(tmp_path / "a")])
    assert result.exit_code == 2
    assert "ucan attenuate runs in one process; under torchrun (WORLD_SIZE=2) only score and eval" in result.output
    result = runner.invoke(app, _score_args(world, tmp_path / "s.safetensors", "--device-map", "auto"))
    assert result.exit_code == 2 and "--device-map splits one model" in result.output
    assert not (tmp_path / "a").exists() and not (tmp_path / "s.safetensors").exists()


def _json_documents(text: str) -> list[dict]:
    decoder, docs, i = json.JSONDecoder(), [], 0
    while True:
        i = text.find("{", i)
        if i < 0:
            return docs
        doc, i = decoder.raw_decode(text, i)
        docs.append(doc)


def _assert_close(a: np.ndarray, b: np.ndarray, what: str) -> None:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    scale = max(float(np.abs(b).max(initial=0.0)), 1e-300)
    assert np.abs(a - b).max(initial=0.0) <= 1e-9 * scale, what


def _numbers(tree, prefix=""):
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from _numbers(v, f"{prefix}.{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from _numbers(v, f"{prefix}[{i}]")
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield prefix, float(tree)


def test_torchrun_two_processes_equal_one_process(world, tmp_path, adapters, tiny_models):
    """One torchrun launch (gloo, 2 ranks, 1 thread each) runs score (output units), score
    (direction units) and eval through the real CLI; each equals its one-process run."""
    import torch
    from transformers import AutoModelForCausalLM

    from ucan_cli.toy import build_adapter

    unlearned = build_adapter(AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32),
                              tmp_path / "other", r=4, alpha=8, seed=11)
    eval_common = ["eval", "--base", str(world["base"]), "--adapter", str(world["adapter"]), "--unlearned", str(unlearned),
                   "--forget", str(world["forget"]), "--retain", str(world["retain"]), "--holdout", str(world["holdout"]),
                   "--batch-size", "2", "--bootstrap", "50", "--json"]
    dist_cmds = [
        _score_args(world, tmp_path / "dist-out.safetensors"),
        _score_args(world, tmp_path / "dist-dir.safetensors", "--unit", "direction"),
        eval_common + ["-o", str(tmp_path / "dist-eval")],
    ]
    (tmp_path / "commands.json").write_text(json.dumps(dist_cmds))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(Path(__file__).with_name("distributed_worker.py")), str(tmp_path / "commands.json")],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in (0, 1):
        assert [line for line in proc.stderr.splitlines() if line.startswith(f"exit {rank} ")] == [f"exit {rank} 0"] * 3
    docs = _json_documents(proc.stdout)
    assert len(docs) == 3, "only rank 0 prints: one document per command"
    assert docs[0]["inputs"]["batch"]["processes"] == 2

    # The one-process runs use one torch thread like each rank (OMP_NUM_THREADS=1 above), so both
    # sides compute every batch with the same kernels; only the order of float64 additions differs.
    from ucan_cli.runtime.threads import torch_threads

    runner = CliRunner()
    for name, extra in (("out", []), ("dir", ["--unit", "direction"])):
        with torch_threads(1):
            one = runner.invoke(app, _score_args(world, tmp_path / f"one-{name}.safetensors", *extra))
        assert one.exit_code == 0, one.output
        stats_d, meta_d = load_score_file(tmp_path / f"dist-{name}.safetensors")
        stats_1, _ = load_score_file(tmp_path / f"one-{name}.safetensors")
        assert meta_d["batch"]["processes"] == 2
        for set_name in ("forget", "retain", "half_a", "half_b"):
            d, s = getattr(stats_d, set_name), getattr(stats_1, set_name)
            assert d.n_records == s.n_records and np.array_equal(d.tokens, s.tokens), set_name
            if name == "dir":
                for m, (x, y) in enumerate(zip(d.sums, s.sums)):
                    _assert_close(x, y, f"{set_name} moments of module {m}")
            else:
                for field in ("sum_abs", "sum_sq", "rec_sum", "rec_sumsq"):
                    _assert_close(getattr(d, field), getattr(s, field), f"{set_name}.{field}")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("dist-")) == [
        "dist-dir.safetensors", "dist-eval", "dist-out.safetensors"]

    with torch_threads(1):
        one = runner.invoke(app, eval_common)
    assert one.exit_code == 0, one.output
    single = _json_documents(one.stdout)[-1]
    report = json.loads((tmp_path / "dist-eval" / "report.json").read_text())
    for doc in (docs[2], report):
        for part in ("results", "ci"):
            got, want = dict(_numbers(doc[part])), dict(_numbers(single[part]))
            cost = [k for k in want if ".cost." in k]
            assert set(got) == set(want) and len(want) - len(cost) > 40, part
            for key in set(want) - set(cost):  # cost: seconds and memory are the run's own
                assert abs(got[key] - want[key]) <= 1e-9 * max(1.0, abs(want[key])), f"{part}{key}"
