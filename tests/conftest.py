"""Shared fixtures: a locally trained tokenizer, tiny Llama / Qwen2 / GPT-2 models built from
configs, PEFT-made LoRA adapters with random A and B, and small record files. No network."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# The ucan cache dir (demo worlds, the statistics cache of `ucan score` / `ucan attenuate`): never
# the user's. A session-wide temp dir for session fixtures and subprocesses; each test then gets
# its own (the autouse fixture below), so no test hits another's statistics cache entry.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["UCAN_CACHE_DIR"] = tempfile.mkdtemp(prefix="ucan-test-cache-")
atexit.register(shutil.rmtree, os.environ["UCAN_CACHE_DIR"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

# Torch threads: 1 by default (tiny-model matrix products are faster and steadier than with two
# OpenMP threads on a 2-core machine). .ci/run runs the suite twice, with UCAN_TEST_THREADS=1 and
# =2 (and OMP_NUM_THREADS to match), so that a test tied to one summation order fails in CI
# rather than on a user's machine.
TEST_THREADS = int(os.environ.get("UCAN_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


def pytest_report_header(config):
    return f"torch threads: {torch.get_num_threads()} (UCAN_TEST_THREADS), OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}"

ITEMS = [f"item{i}" for i in range(40)]
WORDS = "the user watched liked rated movie next which will they pick choose from list history candidates".split()


def make_records(n: int, *, seed: int = 0, user_offset: int = 0, n_candidates: int = 5, with_input: bool = True) -> list[dict]:
    """Deterministic Alpaca records with single-word item candidates (one record per user)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        history = rng.sample(ITEMS, 4)
        cands = rng.sample([x for x in ITEMS if x not in history], n_candidates)
        rec = {
            "id": f"r{user_offset + i}",
            "user_id": f"u{user_offset + i}",
            "instruction": "Which item will the user pick next?",
            "output": rng.choice(cands),
            "candidates": cands,
        }
        if with_input:
            rec["input"] = "History: " + " ".join(history)
        out.append(rec)
    return out


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def corpus() -> list[str]:
    from ucan_cli.io.prompts import ALPACA

    texts = [ALPACA.format(instruction="Which item will the user pick next?", input="History: " + " ".join(ITEMS[i : i + 4])) for i in range(36)]
    texts += [" ".join(WORDS), " ".join(ITEMS), "A B C D E F G H I J K L M N O P Q R S T"]
    return texts * 3


@pytest.fixture(scope="session")
def tokenizer():
    from ucan_cli.toy import build_tokenizer

    return build_tokenizer(corpus(), vocab_size=400)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory, tokenizer):
    """{arch: model_dir} for llama, qwen2 and gpt2, each saved with the tokenizer."""
    from ucan_cli.toy import ARCHITECTURES, build_model

    root = tmp_path_factory.mktemp("models")
    dirs = {}
    for arch in ARCHITECTURES:
        build_model(arch, tokenizer, root / arch, seed=1, hidden=32)
        dirs[arch] = root / arch
    return dirs


@pytest.fixture(scope="session")
def adapters(tmp_path_factory, tiny_models):
    """PEFT-made adapters with random A and B: plain Llama, rsLoRA + rank/alpha patterns + lora_bias
    on Qwen2, and Conv1D (fan_in_fan_out) on GPT-2."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.toy import build_adapter

    root = tmp_path_factory.mktemp("adapters")
    out = {}
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    out["llama"] = build_adapter(model, root / "llama", r=4, alpha=8, seed=2)
    model = AutoModelForCausalLM.from_pretrained(tiny_models["qwen2"], dtype=torch.float32)
    out["qwen2_rs"] = build_adapter(
        model,
        root / "qwen2_rs",
        target_modules=["q_proj", "v_proj", "o_proj"],
        r=4,
        alpha=8,
        seed=3,
        use_rslora=True,
        rank_pattern={"self_attn.v_proj": 2},
        alpha_pattern={"layers.1.self_attn.o_proj": 3},
        lora_bias=True,
    )
    model = AutoModelForCausalLM.from_pretrained(tiny_models["gpt2"], dtype=torch.float32)
    out["gpt2"] = build_adapter(model, root / "gpt2", r=4, alpha=8, seed=4)
    return out


@pytest.fixture(autouse=True)
def _own_cache_dir(tmp_path_factory, monkeypatch):
    """A fresh UCAN_CACHE_DIR per test (outside tmp_path, which tests may list)."""
    monkeypatch.setenv("UCAN_CACHE_DIR", str(tmp_path_factory.mktemp("ucan-cache")))


@pytest.fixture()
def records_file(tmp_path):
    return write_jsonl(tmp_path / "records.jsonl", make_records(12))


# --- CI guard: MovieLens tests must run, not skip, where UCAN_REQUIRE_MOVIELENS=1 (.ci/run sets it).
_skipped_movielens: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and "movielens" in report.keywords:
        _skipped_movielens.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("UCAN_REQUIRE_MOVIELENS") == "1" and _skipped_movielens:
        print(f"\nUCAN_REQUIRE_MOVIELENS=1 but {len(_skipped_movielens)} MovieLens test(s) were skipped:")
        for nodeid in _skipped_movielens[:10]:
            print(f"  {nodeid}")
        session.exitstatus = 1


def forget_retain_world(root: Path, tiny_models, adapters, key: str = "k" * 32) -> dict:
    """The tiny Llama world of the model-method tests: base, adapter, a receipt key, 12 forget and
    24 retain records (disjoint users, one distribution)."""
    (root / "key").write_text(key)
    return {
        "base": tiny_models["llama"], "adapter": adapters["llama"], "key": root / "key", "root": root,
        "forget": write_jsonl(root / "forget.jsonl", make_records(12, seed=5)),
        "retain": write_jsonl(root / "retain.jsonl", make_records(24, seed=6, user_offset=100)),
    }
