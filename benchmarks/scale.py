"""Scoring on 1 and N processes (torchrun, gloo, CPU): throughput, parallel efficiency, equal statistics.

Issue 13's target: with torch on one thread per process and 2 free cores, 2 processes score the
same data at a parallel efficiency >= 0.8 (efficiency = T1 / (N x TN), T = the statistics passes'
seconds that ``ucan score --json`` reports, the wait for the other ranks included), and the
statistics equal the one-process run's to 1e-9 relative (float64 sums in another order).

The base is a config-built Llama (default 256 wide, 4 layers, random weights: throughput does not
depend on what the weights learnt) with the demo world's tokenizer and records, and a PEFT LoRA
with random A and B on q/k/v/o. Each configuration runs ``--repeats`` times through the real CLI
(``python -m ucan_cli score`` and ``python -m torch.distributed.run --standalone
--nproc-per-node N -m ucan_cli score``); the best passes time counts, wall time (process start,
imports, model load, rendezvous) is printed beside it.

    python benchmarks/scale.py                      # 256 wide, 4 layers, output and direction units
    python benchmarks/scale.py --hidden 512 --layers 8 --repeats 3 --json scale.json
    python benchmarks/scale.py --quick              # the small world, 64 wide, one repeat (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import resolve_world  # noqa: E402

RTOL = 1e-9


def build_inputs(world: Path, work: Path, *, hidden: int, layers: int, rank: int) -> dict:
    """A config-built base with the world's tokenizer, a random LoRA, the world's record files."""
    from transformers import AutoTokenizer

    from ucan_cli.toy import build_adapter, build_model

    tokenizer = AutoTokenizer.from_pretrained(world / "base")
    model = build_model("llama", tokenizer, work / "base", seed=0, hidden=hidden, layers=layers, heads=4)
    adapter = build_adapter(model, work / "adapter", target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], r=rank,
                            alpha=2 * rank, seed=1)
    key = work / "key"
    key.write_text("b" * 64 + "\n")
    return {"base": work / "base", "adapter": adapter, "forget": world / "forget.jsonl", "retain": world / "retain.jsonl",
            "key": key}


def run_score(inputs: dict, out: Path, *, processes: int, unit: str, batch_size: int) -> dict:
    """One ``ucan score --json`` run; returns its timings, the wall time and the score file."""
    args = ["score", "--base", str(inputs["base"]), "--adapter", str(inputs["adapter"]), "--forget", str(inputs["forget"]),
            "--retain", str(inputs["retain"]), "--receipt-key", str(inputs["key"]), "-o", str(out), "--force",
            "--unit", unit, "--batch-size", str(batch_size), "--no-cache", "--json", "--device", "cpu"]
    if processes == 1:
        command = [sys.executable, "-m", "ucan_cli", *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}",
                   "-m", "ucan_cli", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    env.pop("WORLD_SIZE", None)
    t = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        sys.exit(f"error: {' '.join(command[:6])} ... exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    doc = json.loads(proc.stdout)
    return {"passes_s": doc["timings"]["passes_s"], "wall_s": wall, "file": out,
            "tokens": doc["inputs"]["tokens"]["forget_total"] + doc["inputs"]["tokens"]["retain_total"]}


def max_relative_difference(a: Path, b: Path) -> float:
    """The largest |a - b| / max|b| over every statistic of two score files (moments for direction units)."""
    import numpy as np

    from ucan_cli.methods.ucan.scorefile import load_score_file

    (sa, _), (sb, _) = load_score_file(a), load_score_file(b)
    worst = 0.0
    for name in ("forget", "retain", "half_a", "half_b"):
        x, y = getattr(sa, name), getattr(sb, name)
        if x.n_records != y.n_records or not np.array_equal(np.asarray(x.tokens), np.asarray(y.tokens)):
            return float("inf")
        pairs = list(zip(x.sums, y.sums)) if hasattr(x, "sums") else [
            (getattr(x, f), getattr(y, f)) for f in ("sum_abs", "sum_sq", "rec_sum", "rec_sumsq")]
        for p, q in pairs:
            scale = float(np.abs(q).max(initial=0.0)) or 1.0
            worst = max(worst, float(np.abs(np.asarray(p) - np.asarray(q)).max(initial=0.0)) / scale)
    return worst


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8, help="LoRA rank")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--units", default="output,direction")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="default", help="demo world size (records): default or small")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="small world, 64 wide, 2 layers, one repeat, output units")
    args = parser.parse_args(argv)
    if args.quick:
        args.hidden, args.layers, args.repeats, args.size, args.units = 64, 2, 1, "small", "output"
    world = resolve_world(None, args.seed, "group", args.size)
    rows = []
    with tempfile.TemporaryDirectory(prefix="ucan-scale-") as tmp:
        work = Path(tmp)
        inputs = build_inputs(world, work, hidden=args.hidden, layers=args.layers, rank=args.rank)
        print(f"base: llama {args.hidden} wide, {args.layers} layers; LoRA r {args.rank} on q/k/v/o; "
              f"world {world.name}; batch {args.batch_size}; {os.cpu_count()} CPUs", file=sys.stderr)
        for unit in args.units.split(","):
            runs = {}
            for n in (1, args.processes):
                best = None
                for k in range(args.repeats):
                    r = run_score(inputs, work / f"{unit}-{n}-{k}.safetensors", processes=n, unit=unit, batch_size=args.batch_size)
                    best = r if best is None or r["passes_s"] < best["passes_s"] else best
                runs[n] = best
            one, many = runs[1], runs[args.processes]
            efficiency = one["passes_s"] / (args.processes * many["passes_s"]) if many["passes_s"] > 0 else float("nan")
            diff = max_relative_difference(many["file"], one["file"])
            row = {"unit": unit, "hidden": args.hidden, "layers": args.layers, "processes": args.processes,
                   "tokens": one["tokens"], "passes_1_s": one["passes_s"], f"passes_{args.processes}_s": many["passes_s"],
                   "tokens_per_s_1": one["tokens"] / one["passes_s"], f"tokens_per_s_{args.processes}": many["tokens"] / many["passes_s"],
                   "speedup": one["passes_s"] / many["passes_s"], "efficiency": efficiency,
                   "wall_1_s": one["wall_s"], f"wall_{args.processes}_s": many["wall_s"], "max_rel_diff": diff,
                   "equal": diff <= RTOL}
            rows.append(row)
            print(f"{unit:9s} tokens {row['tokens']}: 1 process {one['passes_s']:.2f} s ({row['tokens_per_s_1']:.0f} tok/s), "
                  f"{args.processes} processes {many['passes_s']:.2f} s ({row[f'tokens_per_s_{args.processes}']:.0f} tok/s): "
                  f"speedup {row['speedup']:.2f}, efficiency {efficiency:.2f}; wall {one['wall_s']:.1f} / {many['wall_s']:.1f} s; "
                  f"statistics max relative difference {diff:.1e} ({'equal' if row['equal'] else 'DIFFERENT'})")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["equal"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
