"""Check ``ucan score --dry-run``'s memory estimate against what a run measures, then print the
dry-run estimates of a Llama-2-7B shape (config only, no weights) in bf16 and 4-bit.

The largest model this machine runs in reasonable time is a Llama with Llama-2-7B's layer shapes
(hidden 4096, MLP 11008, 32 heads, vocab 32000) but ``--layers`` decoder layers (default 2:
0.67 B parameters, 2.7 GB in float32), random weights, a PEFT LoRA r=8 on q_proj and v_proj and
records whose prompts are ``--width`` tokens long. For output and direction units:

* the estimate is what ``ucan score --dry-run --json`` prints for a copy of the base without its
  weights (config and tokenizer only: the same path a 7B config takes), in float32 on the CPU:
  ``total_cpu``, the peak of a CPU run (device and host are one memory; for direction units it
  includes the solve's host memory);
* the measurement runs ``flows.score.score`` in a fresh process: resident memory after the
  imports (baseline), after loading the base (weights), and the peak during the statistics
  passes (``VmHWM`` reset after loading; Linux). Measured total = peak - baseline.

On the CPU the model runs in float32 (bf16 is about 6x slower here and 4-bit needs a CUDA GPU);
the estimate's dtype only changes bytes per weight and per activation, which the same formulas
scale. Then the 32-layer shape's dry run (config + adapter shapes, no weights) in bf16 and 4-bit
with both unit kinds: the numbers docs/scaling.md quotes.

    python benchmarks/footprint_check.py                 # 2 layers of 7B shape, width 128, batch 8
    python benchmarks/footprint_check.py --quick         # 64 wide, a smoke run (CI)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import resolve_world  # noqa: E402

LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32, head_dim=128,
                 vocab_size=32000)
TARGETS = ["q_proj", "v_proj"]
R = 8

MEASURE = r'''
import gc, json, re, sys, time
import torch
from ucan_cli.flows.score import score
from ucan_cli.methods.ucan.params import MethodParams
from ucan_cli.runtime.models import load_base_model, load_tokenizer

def rss():
    return int(re.search(r"^VmRSS:\s+(\d+)", open("/proc/self/status").read(), re.M).group(1)) * 1024
def hwm():
    return int(re.search(r"^VmHWM:\s+(\d+)", open("/proc/self/status").read(), re.M).group(1)) * 1024

a = json.loads(sys.argv[1])
torch.set_num_threads(a["threads"])
gc.collect(); baseline = rss()
model = load_base_model(a["base"], device="cpu", dtype=torch.float32)
tokenizer = load_tokenizer(a["base"])
with torch.no_grad():  # touch every weight: a memory-mapped checkpoint is otherwise paged in during the passes
    for p in model.parameters():
        p.sum()
gc.collect(); loaded = rss()
open("/proc/self/clear_refs", "w").write("5")
t = time.perf_counter()
run = score((model, tokenizer), a["adapter"], a["forget"], a["retain"], params=MethodParams(unit=a["unit"]),
            batch_size=a["rows"], receipt_key=a["key"], device="cpu")
print(json.dumps({"baseline": baseline, "loaded": loaded, "peak": hwm(), "seconds": time.perf_counter() - t}))
'''


def make_records(world: Path, n: int, width_items: int, seed: int, start: int) -> list[dict]:
    """``n`` records of one user each, ``width_items`` history items (the world's item ids)."""
    rows = [json.loads(line) for line in (world / "forget.jsonl").read_text().splitlines()]
    items = sorted({c for r in rows for c in r["candidates"]})
    rng = random.Random(seed)
    out = []
    for i in range(n):
        cands = rng.sample(items, 5)
        out.append({"id": f"m{start + i}", "user_id": f"m{start + i}", "instruction": "Which item will this user pick next?",
                    "input": "History: " + " ".join(rng.choice(items) for _ in range(width_items)),
                    "output": cands[0], "candidates": cands})
    return out


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def shapes_only(base: Path, out: Path) -> Path:
    """A copy of a model directory without its weights."""
    out.mkdir()
    for p in base.iterdir():
        if p.is_file() and not p.name.endswith((".safetensors", ".bin")):
            shutil.copy(p, out / p.name)
    return out


def dry_run(base: Path, adapter: Path, forget: Path, retain: Path, key: Path, *, unit: str, rows: int, dtype: str,
            quantize: str | None = None) -> dict:
    """The footprint ``ucan score --dry-run --json`` reports."""
    from ucan_cli.flows.score import score_dry_run
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.report.score import dry_run_document
    from ucan_cli.runtime.load import LoadSpec

    load = LoadSpec.from_flags(dtype=dtype, load_in_4bit=quantize == "4bit", load_in_8bit=quantize == "8bit")
    plan = score_dry_run(str(base), adapter, forget, retain, params=MethodParams(unit=unit), batch_size=rows,
                         receipt_key=key, load=load)
    doc = dry_run_document(plan)
    assert doc["estimate_s"] is None, "the shapes-only copy must not load weights"
    return doc["counts"]["footprint"]


def adapter_for_shape(template: Path, out: Path, layers: int, hidden: int) -> Path:
    """A LoRA (r, targets as ``template``) for a ``layers``-layer Llama of width ``hidden``,
    random weights written directly (no model needed)."""
    import torch
    from safetensors.torch import save_file

    out.mkdir()
    config = json.loads((template / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps(config))
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for i in range(layers):
        for t in TARGETS:
            prefix = f"base_model.model.model.layers.{i}.self_attn.{t}"
            tensors[f"{prefix}.lora_A.weight"] = torch.randn(R, hidden, generator=g) / hidden**0.5
            tensors[f"{prefix}.lora_B.weight"] = torch.randn(hidden, R, generator=g) / R
    save_file(tensors, str(out / "adapter_model.safetensors"))
    return out


def gib(n: float) -> str:
    return f"{n / 2**30:.2f}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=120, help="history items per prompt (about that many tokens)")
    parser.add_argument("--rows", type=int, default=8, help="records per batch")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--units", default="output,direction")
    parser.add_argument("--quick", action="store_true", help="a 64-wide Llama, short prompts: a smoke run")
    args = parser.parse_args(argv)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ucan_cli.toy import build_adapter, tiny_config

    shape = dict(LLAMA2_7B)
    if args.quick:
        shape = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                     vocab_size=32000)
        args.width, args.units = 16, "output,direction"
    world = resolve_world(None, 0, "group", "small")
    rows = []
    with tempfile.TemporaryDirectory(prefix="ucan-footprint-") as tmp:
        work = Path(tmp)
        tokenizer = AutoTokenizer.from_pretrained(world / "base")
        config = tiny_config("llama", len(tokenizer), hidden=shape["hidden_size"], layers=args.layers,
                             heads=shape["num_attention_heads"], tokenizer=tokenizer)
        for name, value in shape.items():  # the 7B MLP width, heads and vocabulary
            setattr(config, name, value)
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
        adapter = build_adapter(model, work / "adapter", target_modules=TARGETS, r=R, alpha=2 * R, seed=1)
        n_params = sum(p.numel() for p in model.parameters())
        del model
        shapes = shapes_only(work / "base", work / "shapes")
        forget = write_jsonl(work / "forget.jsonl", make_records(world, args.rows, args.width, 1, 0))
        retain = write_jsonl(work / "retain.jsonl", make_records(world, 2 * args.rows, args.width, 2, 1000))
        key = work / "key"
        key.write_text("c" * 64 + "\n")
        print(f"base: Llama, {args.layers} layers of hidden {shape['hidden_size']} / MLP {shape['intermediate_size']} / "
              f"vocab {shape['vocab_size']} ({n_params / 1e9:.2f} B parameters), LoRA r {R} on {','.join(TARGETS)}; "
              f"batch {args.rows} rows, about {args.width + 20} tokens each", file=sys.stderr)
        for unit in args.units.split(","):
            est = dry_run(shapes, adapter, forget, retain, key, unit=unit, rows=args.rows, dtype="float32")
            spec = {"base": str(work / "base"), "adapter": str(adapter), "forget": str(forget), "retain": str(retain),
                    "key": str(key), "unit": unit, "rows": args.rows, "threads": args.threads}
            proc = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(spec)], capture_output=True, text=True,
                                  env={**os.environ, "HF_HUB_OFFLINE": "1"})
            if proc.returncode != 0:
                sys.exit(proc.stderr[-2000:])
            m = json.loads(proc.stdout.strip().splitlines()[-1])
            measured = {"weights": m["loaded"] - m["baseline"], "run": m["peak"] - m["loaded"], "total": m["peak"] - m["baseline"]}
            estimate_run = est["total_cpu"] - est["weights"]
            row = {"unit": unit, "estimate": est, "measured": measured, "seconds": m["seconds"],
                   "ratio_total": measured["total"] / est["total_cpu"], "ratio_weights": measured["weights"] / est["weights"],
                   "ratio_run": measured["run"] / estimate_run if estimate_run else None}
            rows.append(row)
            print(f"{unit:9s} estimate {gib(est['total_cpu'])} GiB (weights {gib(est['weights'])}, beyond them {gib(estimate_run)}) | "
                  f"measured {gib(measured['total'])} GiB (weights {gib(measured['weights'])}, beyond them {gib(measured['run'])}) | "
                  f"measured / estimate: total {row['ratio_total']:.3f}, weights {row['ratio_weights']:.3f}, "
                  f"beyond the weights {row['ratio_run']:.3f} | {m['seconds']:.0f} s")

        # The full 32-layer shape: config only, in bf16 and 4-bit.
        big = work / "llama2-7b-shape"
        big.mkdir()
        big_config = json.loads((work / "base" / "config.json").read_text())
        (big / "config.json").write_text(json.dumps({**big_config, "num_hidden_layers": 32, **LLAMA2_7B}))
        for p in (work / "shapes").iterdir():
            if p.name != "config.json":
                shutil.copy(p, big / p.name)
        big_adapter = adapter_for_shape(adapter, work / "adapter-7b", 32, 4096)
        print("Llama-2-7B shape (config only), LoRA r 8 on q,v, batch "
              f"{args.rows} x ~{args.width + 20} tokens: estimated device memory, GiB", file=sys.stderr)
        for dtype, quantize in (("bfloat16", None), ("bfloat16", "4bit")):
            for unit in ("output", "direction"):
                f = dry_run(big, big_adapter, forget, retain, key, unit=unit, rows=args.rows, dtype=dtype, quantize=quantize)
                host = f" | host memory for the solve {gib(f['host'])}" if f["host"] else ""
                print(f"7B {quantize or dtype:8s} {unit:9s} device: weights {gib(f['weights'])} + adapter {gib(f['adapter'])} + "
                      f"activations {gib(f['activations'])} + statistics {gib(f['statistics'])} = {gib(f['total'])}{host}")
    worst = max(abs(r["ratio_total"] - 1) for r in rows)
    print(f"largest |measured / estimate - 1| on the total: {worst:.3f} (target <= 0.20)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
