"""What ``ucan eval`` costs next to plain forward passes over the same records, in one process.

Three adapters (an original and two unlearned copies with lora_B scaled by 0.5 and 0.25) are
evaluated on D_f, D_r and D_h with ``evaluate()`` (adapters attached once and swapped per batch,
every metric, no bootstrap: that is timed separately). The baseline is three plain forward
passes over the same records: ``model(**batch)`` with full logits under ``torch.inference_mode``
with the original adapter attached, over the same batches, timed once and multiplied by 3.

    eval_single / (3 x plain)   single-token (lettered) candidates: target <= 1.2
    eval_multi  / (3 x plain)   multi-token candidates (item names): reported, not targeted
                                (each candidate is one more sequence)

Model loading is outside both timings. ``ltk1`` (the same plain forward with ``logits_to_keep=1``)
is printed too, to show how much of a forward pass is the LM head. Models: a toy Llama built with
``ucan_cli.toy`` (hidden 256, 4 layers, vocabulary 4096, LoRA r=8 on q_proj and v_proj).

    python benchmarks/eval_cost.py           # 3 x 96 records, the sizes above
    python benchmarks/eval_cost.py --quick   # seconds, for CI: exits 1 if the target is missed
    python benchmarks/eval_cost.py --device cuda --hidden 1024 --layers 8 --vocab 32000 --records 256

Plain and eval runs are interleaved (medians over ``--repeats`` rounds after a warm-up) so that
load from other processes on a shared machine hits both alike; torch uses one thread by default.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ITEMS = [f"item{i}" for i in range(200)]
LETTERS = [chr(ord("A") + i) for i in range(20)]
TARGET = 1.2


def make_rows(n: int, seed: int, history: int, *, letters: bool) -> list[dict]:
    """LlamaRec-style records: a history and 20 candidates, lettered (single-token) or named."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        hist = rng.sample(ITEMS, history)
        pool = rng.sample([x for x in ITEMS if x not in hist], 20 if letters else 5)
        cands = LETTERS if letters else pool
        listing = ", ".join(f"{c}: {p}" for c, p in zip(cands, pool)) if letters else ", ".join(pool)
        rows.append({
            "id": f"s{seed}-{i}",
            "user_id": f"u{seed}-{i}",
            "instruction": "Which candidate will the user pick next? Answer with its letter." if letters
            else "Which item will the user pick next?",
            "input": "History: " + " ".join(hist) + ". Candidates: " + listing,
            "output": rng.choice(cands),
            "candidates": list(cands),
        })
    return rows


def build(tmp: Path, *, hidden: int, layers: int, vocab: int, device: str = "cpu"):
    """A toy Llama (tokenizer trained here, vocabulary padded to ``vocab``) and three adapters."""
    from transformers import AutoModelForCausalLM

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.toy import build_adapter, build_tokenizer, tiny_config

    texts = [" ".join(ITEMS), " ".join(LETTERS)] + [r["input"] for r in make_rows(200, 99, 12, letters=True)]
    tok = build_tokenizer(texts, vocab_size=min(vocab, 2048))
    config = tiny_config("llama", max(vocab, len(tok)), hidden=hidden, layers=layers, heads=4, tokenizer=tok)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    original = build_adapter(model, tmp / "original", r=8, alpha=16, seed=1)
    model.to(device)
    src = LoraAdapter.load(original)
    unlearned = []
    for factor in (0.5, 0.25):
        out = tmp / f"u{factor}"
        out.mkdir()
        src.with_tensors({m.key_B: m.B * factor for m in src.modules}).write_into(out)
        unlearned.append(out)
    return model, tok, original, unlearned


def measure(model, tok, original: Path, unlearned: list[Path], *, letters: bool, n: int, history: int,
            batch_size: int, repeats: int) -> dict:
    from ucan_cli.evaluation.run import adapter_entries, evaluate
    from ucan_cli.io.data import validate_record
    from ucan_cli.runtime.models import attach_adapter
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.tokenize import encode_set, iter_batches, pad_token_id

    path = Path("bench.jsonl")
    sets = [[validate_record(r, path, i + 1) for i, r in enumerate(make_rows(n, seed, history, letters=letters))]
            for seed in (1, 2, 3)]
    fmt = PromptFormatter("alpaca")
    encoded = [encode_set(s, tok, fmt, 512) for s in sets]
    pad = pad_token_id(tok)
    device = next(model.parameters()).device
    batches = [b.to(device).model_inputs() for enc in encoded for b in iter_batches(enc, batch_size, pad)]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    entries = adapter_entries(original, unlearned)

    def plain(**extra) -> float:
        peft_model = attach_adapter(model, original)
        sync()
        start = time.perf_counter()
        with torch.inference_mode():
            for inputs in batches:
                peft_model(**inputs, **extra)
        sync()
        elapsed = time.perf_counter() - start
        peft_model.unload()
        return elapsed

    def run_eval(bootstrap: int) -> tuple[float, dict]:
        start = time.perf_counter()
        res = evaluate(model, tok, entries, sets[0], sets[1], sets[2], bootstrap=bootstrap, batch_size=batch_size)
        return time.perf_counter() - start, res.cost["stages"]

    # Interleaved rounds after a warm-up, medians: load from other processes hits both sides alike.
    plain(), run_eval(0)
    t_plain, t_ltk1, t_eval, forward = [], [], [], []
    for _ in range(repeats):
        t_plain.append(plain())
        t_ltk1.append(plain(logits_to_keep=1, use_cache=False))
        seconds, stages = run_eval(0)
        t_eval.append(seconds)
        forward.append(stages["forward_s"])
    t_boot, _ = run_eval(1000)
    t_plain, t_ltk1, t_eval = (statistics.median(x) for x in (t_plain, t_ltk1, t_eval))
    return {
        "candidates": "single-token" if letters else "multi-token",
        "records_per_set": n,
        "tokens": sum(len(e.input_ids) for enc in encoded for e in enc),
        "batch_size": batch_size,
        "plain_s": t_plain,
        "ltk1_s": t_ltk1,
        "eval_s": t_eval,
        "eval_forward_s": statistics.median(forward),
        "eval_bootstrap1000_s": t_boot,
        "ratio": t_eval / (3 * t_plain),
        "ratio_bootstrap1000": t_boot / (3 * t_plain),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes for CI; exit 1 if the target is missed")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a shared machine)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    parser.add_argument("--hidden", type=int, default=None, help="override the model width")
    parser.add_argument("--layers", type=int, default=None, help="override the number of layers")
    parser.add_argument("--vocab", type=int, default=None, help="override the vocabulary size")
    parser.add_argument("--records", type=int, default=None, help="override the records per set")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        sizes = dict(hidden=128, layers=2, vocab=2048)
        run = dict(n=32, history=8, batch_size=16, repeats=args.repeats)
    else:
        sizes = dict(hidden=256, layers=4, vocab=4096)
        run = dict(n=96, history=12, batch_size=16, repeats=args.repeats)
    sizes.update({k: v for k, v in (("hidden", args.hidden), ("layers", args.layers), ("vocab", args.vocab)) if v})
    if args.records:
        run["n"] = args.records
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, original, unlearned = build(Path(tmp), **sizes, device=args.device)
        rows = [measure(model, tok, original, unlearned, letters=letters, **run) for letters in (True, False)]
    params = sum(p.numel() for p in model.parameters())
    name = f"toy-llama-h{sizes['hidden']}-l{sizes['layers']}-v{sizes['vocab']} ({params / 1e6:.1f}M)"
    print(f"{name} on {args.device}, {torch.get_num_threads()} threads, 3 adapters over D_f, D_r, D_h")
    print(f"{'candidates':13} {'records':>7} {'3x plain s':>10} {'3x ltk1 s':>9} {'eval s':>8} {'eval/3plain':>11} "
          f"{'+boot1000 s':>11} {'boot/3plain':>11}")
    for r in rows:
        print(f"{r['candidates']:13} {3 * r['records_per_set']:7d} {3 * r['plain_s']:10.3f} {3 * r['ltk1_s']:9.3f} "
              f"{r['eval_s']:8.3f} {r['ratio']:11.3f} {r['eval_bootstrap1000_s']:11.3f} {r['ratio_bootstrap1000']:11.3f}")
    single = rows[0]["ratio"]
    ok = single <= TARGET
    print(f"single-token eval / (3 x plain) = {single:.3f} (target <= {TARGET}): {'ok' if ok else 'MISSED'}")
    print(json.dumps({"benchmark": "eval_cost", "quick": args.quick, "model": name, "device": args.device,
                      "threads": torch.get_num_threads(),
                      "target": TARGET, "results": rows}))
    if args.quick and not ok:
        sys.exit(1)


if __name__ == "__main__":
    main()
