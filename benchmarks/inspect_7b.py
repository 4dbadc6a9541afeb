"""`ucan inspect` on a Llama-2-7B-shaped adapter: r=8 on q_proj and v_proj, 32 layers, width 4096.

Times the library path the command runs (read the adapter, summarize every module from its QR
core, build the JSON document), in-process, excluding interpreter start-up. Target: < 1 s.

    python benchmarks/inspect_7b.py           # the 7B shape
    python benchmarks/inspect_7b.py --quick   # 4 layers, for CI smoke runs
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from ucan_cli.toy import llama2_7b_shaped_adapter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    layers = 4 if args.quick else 32

    from ucan_cli.inspection import summarize_adapter
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.report.inspect import inspect_document

    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for dtype in (torch.float32, torch.bfloat16):
            path = llama2_7b_shaped_adapter(Path(tmp) / str(dtype), layers=layers, dtype=dtype)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                adapter = LoraAdapter.load(path)
                summaries = summarize_adapter(adapter)
                inspect_document(adapter, summaries, adapter.warnings(), None)
                times.append(time.perf_counter() - start)
            rows.append({"dtype": str(dtype).replace("torch.", ""), "modules": len(summaries), "best_s": min(times), "median_s": sorted(times)[len(times) // 2]})
    print(f"{'dtype':10} {'modules':>8} {'best s':>8} {'median s':>9}")
    for row in rows:
        print(f"{row['dtype']:10} {row['modules']:8d} {row['best_s']:8.3f} {row['median_s']:9.3f}")
    print(json.dumps({"benchmark": "inspect_7b", "layers": layers, "target_s": 1.0, "results": rows}))


if __name__ == "__main__":
    main()
