"""`ucan attenuate --scores` on a Llama-2-7B-shaped adapter: r=8 on q_proj and v_proj, 32 layers,
width 4096 (64 modules; 262,144 output units).

A random adapter (fp32 and bf16, as PEFT saves either) and a synthetic score file for it (plausible
per-unit statistics: log-normal retain activations, forget activations equal up to 2 % noise except
0.5 % of the units, which fire 3x more) are written to a temp dir. Then the library path the
command runs is timed in-process, from reading the score file to the output directory renamed
into place: read adapter, ledger, key and score file, steps 2-5 over every unit, the edit of B,
the norms from QR cores, writing the adapter, ledger, report, card and config. Interpreter
start-up and imports are excluded. Target: < 1 s.

    python benchmarks/attenuate_7b.py           # the 7B shape
    python benchmarks/attenuate_7b.py --quick   # 4 layers, for CI smoke runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ucan_cli.toy import llama2_7b_shaped_adapter


def make_score_file(adapter_dir: Path, path: Path, key: bytes, unit: str = "output") -> Path:
    """Synthetic statistics for every unit of the adapter, saved with ``save_score_file``."""
    from ucan_cli.methods.ucan.statistics import Statistics
    from ucan_cli.methods.ucan.edit import units_per_module
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.receipts import hmac_hex, key_fingerprint
    from ucan_cli.methods.ucan.scorefile import save_score_file
    from ucan_cli.methods.ucan.scoring import SetStats

    adapter = LoraAdapter.load(adapter_dir)
    layout = units_per_module(adapter, unit)
    sizes = [s for _, s in layout]
    n = sum(sizes)
    rng = np.random.default_rng(0)
    retain_m1 = rng.lognormal(0.0, 0.5, n)

    def stats(m1: np.ndarray, records: int, tokens: float = 5000.0) -> SetStats:
        return SetStats(
            sum_abs=m1 * tokens, sum_sq=m1**2 * 1.5 * tokens, tokens=np.full(n, tokens),
            rec_sum=m1 * records, rec_sumsq=m1**2 * 1.2 * records, n_records=records,
        )

    forget_m1 = retain_m1 * np.exp(rng.normal(0.0, 0.02, n))
    forget_m1[rng.choice(n, max(1, n // 200), replace=False)] *= 3.0
    statistics = Statistics(
        unit=unit, scope="response", module_names=[m for m, _ in layout], module_sizes=sizes,
        module_ids=np.repeat(np.arange(len(sizes)), sizes),
        forget=stats(forget_m1, 100), retain=stats(retain_m1, 1000),
        half_a=stats(retain_m1 * np.exp(rng.normal(0.0, 0.02, n)), 500), half_b=stats(retain_m1, 500),
        scaling=np.repeat([m.scaling for m in adapter.modules], sizes),
        b_col_norms=np.concatenate([m.B.double().norm(dim=0).numpy() for m in adapter.modules]) if unit == "rank" else None,
    )
    meta = {
        "adapter_sha256": adapter.sha256, "forget_receipt": hmac_hex(key, "synthetic forget set"),
        "receipt_key_fingerprint": key_fingerprint(key), "forget_sha256": "0" * 64, "n_forget": 100,
    }
    return save_score_file(path, statistics, None, meta, force=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layers = 4 if args.quick else 32

    from ucan_cli.flows.attenuate import attenuate

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        key_file = root / "receipt.key"
        key_file.write_text("b" * 64)
        for dtype in (torch.float32, torch.bfloat16):
            name = str(dtype).replace("torch.", "")
            adapter = llama2_7b_shaped_adapter(root / name, layers=layers, dtype=dtype)
            scores = make_score_file(adapter, root / f"{name}.safetensors", key_file.read_bytes().strip())
            times, stages = [], []
            for i in range(args.repeats):
                out = root / f"out-{name}-{i}"
                start = time.perf_counter()
                run = attenuate(adapter, out, scores=scores, receipt_key=key_file)
                times.append(time.perf_counter() - start)
                stages.append(run.timings)
                shutil.rmtree(out)
            best = int(np.argmin(times))
            rows.append({
                "dtype": name, "units": int(run.result.s.shape[0]), "attenuated": int((run.result.s < 1).sum()),
                "best_s": times[best], "median_s": sorted(times)[len(times) // 2],
                "stages_s": {k: round(v, 4) for k, v in stages[best].items()},
            })
    print(f"{'dtype':10} {'units':>8} {'edited':>7} {'best s':>8} {'median s':>9}  stages (best run)")
    for row in rows:
        stage_text = " ".join(f"{k}={v:.3f}" for k, v in row["stages_s"].items())
        print(f"{row['dtype']:10} {row['units']:8d} {row['attenuated']:7d} {row['best_s']:8.3f} {row['median_s']:9.3f}  {stage_text}")
    print(json.dumps({"benchmark": "attenuate_7b", "layers": layers, "target_s": 1.0, "results": rows}))


if __name__ == "__main__":
    main()
