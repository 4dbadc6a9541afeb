"""The benchmarks' shared harness: a demo world loaded once, its score files, one evaluation of
several adapters, the tuning objective J and its bootstrap, and JSON/text helpers.

``sweep.py`` (tuning) and ``compare.py`` (U-CAN against its ablations and random units) both use
it. Scripts in this folder import it as a sibling module: ``python benchmarks/sweep.py`` puts
``benchmarks/`` first on ``sys.path``, as Python does for any script.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

KS = (5, 10)


UTILITY_SHARE = 0.95


EVAL_CHUNK = 8


N_BOOT = 2000


@dataclass(frozen=True)
class Config:
    """One point of the search: every U-CAN method option (CLI names in docs/method.md)."""

    unit: str = "output"
    scope: str = "response"
    lam: float = 0.5
    t_risk: float = 3.0
    min_gap: float = 0.05
    ratio: float = 0.05
    decay: str = "sigmoid"
    sharpness: float = 4.0
    floor: float = 0.0
    no_contrast: bool = False
    no_utility: bool = False

    def params(self):
        """The ``MethodParams`` of this configuration (validated)."""
        from ucan_cli.methods.ucan.params import MethodParams

        return MethodParams(
            lam=self.lam, t_risk=self.t_risk, min_gap=self.min_gap, ratio=self.ratio, tau=None, decay=self.decay,
            sharpness=self.sharpness, floor=self.floor, no_contrast=self.no_contrast, no_utility=self.no_utility,
            unit=self.unit,
        ).validate()

    def label(self) -> str:
        """A short readable name (only the options that differ from the provisional start)."""
        start = START
        parts = [f"{f.name}={getattr(self, f.name)}" for f in fields(self) if getattr(self, f.name) != getattr(start, f.name)]
        return ", ".join(parts) or "provisional defaults"


START = Config()
"""Where the search starts: the provisional defaults the code had before tuning (fixed here, so a
rerun after the defaults change takes the same path)."""


@dataclass
class Bench:
    """A loaded world: base model (once), record sets, a work dir and the score files made so far."""

    world: Path
    model: Any
    tokenizer: Any
    sets: dict[str, Any]
    work: Path
    key: Path
    manifest: dict
    score_files: dict[tuple[str, str], Path] = field(default_factory=dict)
    score_info: dict[tuple[str, str], dict] = field(default_factory=dict)
    counter: int = 0

    @property
    def original(self) -> Path:
        return self.world / "original"

    @property
    def reference(self) -> Path:
        return self.world / "reference"

    def new_dir(self, prefix: str) -> Path:
        """A fresh (not yet existing) path under the work dir."""
        self.counter += 1
        return self.work / f"{prefix}-{self.counter:03d}"


def resolve_world(world: str | None, seed: int, scenario: str, size: str) -> Path:
    """A world dir: the given one, or the demo cache's (built on first use, tens of seconds)."""
    if world is not None:
        path = Path(world)
        for need in ("base", "original", "reference", "forget.jsonl", "retain.jsonl", "holdout.jsonl"):
            if not (path / need).exists():
                sys.exit(f"error: {path}: not a world dir ({need} is missing)")
        return path
    from ucan_cli.demo.cache import ensure_world

    path, how = ensure_world(seed, scenario, size, on_build=lambda msg: print(msg, file=sys.stderr))
    print(f"world: {path} ({how})", file=sys.stderr)
    return path


def open_bench(world: Path, work: Path) -> Bench:
    """Load the base model and tokenizer once, read the record sets, make a receipt key in ``work``."""
    from ucan_cli.io.data import read_records
    from ucan_cli.runtime.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(str(world / "base"))
    model = load_base_model(str(world / "base"), device="cpu", dtype="float32")
    sets = {name: read_records(world / f"{name}.jsonl", name) for name in ("forget", "retain", "holdout")}
    key = work / "receipt.key"
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32) + "\n")
    manifest_path = world / "world.json"
    manifest = json.loads(manifest_path.read_text(encoding="utf-8")) if manifest_path.is_file() else {}
    return Bench(world=world, model=model, tokenizer=tokenizer, sets=sets, work=work, key=key, manifest=manifest)


def score_file(bench: Bench, unit: str, scope: str, params=None) -> Path:
    """The score file of (unit, scope), computed on first use (step 1: one pass over D_f and D_r).

    ``params`` (default: the start configuration's) only set the verdict and scores stored with
    the statistics; every configuration redoes steps 2-6 from the statistics.
    """
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.scorefile import save_score_file

    if (unit, scope) in bench.score_files:
        return bench.score_files[(unit, scope)]
    t0 = time.perf_counter()
    params = params if params is not None else replace(START, unit=unit).params()
    run = score(
        (bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
        params=params, token_scope=scope, receipt_key=bench.key,
    )
    path = save_score_file(bench.work / f"scores-{unit}-{scope}.safetensors", run.stats, run.result, run.meta, force=False)
    overview = {k: v for k, v in run.overview.items() if k not in ("arrays", "sentence")}
    overview["seconds"] = round(time.perf_counter() - t0, 3)
    bench.score_files[(unit, scope)] = path
    bench.score_info[(unit, scope)] = overview
    return path


def attenuate_config(bench: Bench, config: Config) -> dict:
    """Steps 2-6 from the score file into a new adapter dir; ``status`` ok or nothing-to-do."""
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.errors import NothingToDo

    scores = score_file(bench, config.unit, config.scope)
    out = bench.new_dir("adapter")
    t0 = time.perf_counter()
    try:
        run = attenuate(bench.original, out, scores=scores, params=config.params(), receipt_key=bench.key)
    except NothingToDo as exc:
        return {"status": "nothing-to-do", "reason": exc.message, "summary": dict(exc.details or {}),
                "dir": None, "attenuate_s": time.perf_counter() - t0}
    return {"status": "ok", "reason": None, "summary": run.result.summary(), "dir": out,
            "attenuate_s": time.perf_counter() - t0, "result": run.result, "stats": run.stats}


def evaluate_dirs(bench: Bench, dirs: Sequence[Path], *, bootstrap: int = 0, include_base: bool = False):
    """One ``evaluate`` of the original, ``dirs`` and the reference on D_f, D_r, D_h (same batches)."""
    from ucan_cli.evaluation.run import adapter_entries, evaluate

    entries = adapter_entries(bench.original, list(dirs), reference=bench.reference, include_base=include_base)
    return evaluate(
        bench.model, bench.tokenizer, entries, bench.sets["forget"], bench.sets["retain"], bench.sets["holdout"],
        ks=(1, 5, 10), bootstrap=bootstrap, seed=0,
    )


METRICS = {
    "forget": ("recall@1", "recall@5", "recall@10", "ndcg@5", "ndcg@10", "kl", "shift", "ppl"),
    "retain": ("recall@1", "recall@5", "recall@10", "ndcg@10", "kl", "ppl"),
    "holdout": ("recall@5", "recall@10", "ndcg@10", "kl"),
    "reference": ("kl", "gap@10"),
    "tradeoff": ("retain@5", "retain@10", "holdout@5", "holdout@10"),
    "privacy": ("mia_auc",),
}


def metrics_of(result, adapter_id: str) -> dict[str, Any]:
    """The numbers the tables use, flat as ``group.metric`` (None where the report has null)."""
    out: dict[str, Any] = {}
    for group, names in METRICS.items():
        for name in names:
            out[f"{group}.{name}"] = result.value(adapter_id, f"{group}.{name}")
    return out


def forget_arrays(result, adapter_id: str) -> dict[str, Any]:
    """Per-record forget-set values that J is made of (for the paired bootstrap of J differences)."""
    pr = result.per_record["forget"][adapter_id]
    names = [f"{m}@{k}" for k in KS for m in ("recall", "ndcg")]
    return {name: pr[name] for name in names + (["kl_reference"] if "kl_reference" in pr else [])}


def bootstrap_index(n: int, n_boot: int = 2000, seed: int = 0):
    """(n_boot, n) resampled record indices, shared by every adapter compared (paired bootstrap)."""
    import numpy as np

    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def j_resamples(forget: dict, reference: dict, index):
    """J (see ``objective``) on each resample of the forget records, from per-record values."""
    import numpy as np

    gap = sum(
        np.abs(forget[f"recall@{k}"][index].mean(1) - reference[f"recall@{k}"][index].mean(1))
        + np.abs(forget[f"ndcg@{k}"][index].mean(1) - reference[f"ndcg@{k}"][index].mean(1))
        for k in KS
    ) / len(KS)
    return gap + forget["kl_reference"][index].mean(1)


def objective(m: dict[str, Any], original: dict[str, Any], reference: dict[str, Any]) -> dict[str, Any]:
    """J = rank gap + KL(p_ref || p_u) on D_f, and the two utility constraints (see the module doc)."""
    gap = sum(
        abs(m[f"forget.recall@{k}"] - reference[f"forget.recall@{k}"])
        + abs(m[f"forget.ndcg@{k}"] - reference[f"forget.ndcg@{k}"])
        for k in KS
    ) / len(KS)
    kl = m["reference.kl"]
    retain_share = m["retain.ndcg@10"] / original["retain.ndcg@10"]
    holdout_share = m["holdout.ndcg@10"] / original["holdout.ndcg@10"]
    violation = max(0.0, UTILITY_SHARE - retain_share) + max(0.0, UTILITY_SHARE - holdout_share)
    return {
        "gap_rank": gap,
        "gap_kl": kl,
        "objective": gap + kl,
        "retain_share": retain_share,
        "holdout_share": holdout_share,
        "feasible": violation == 0.0,
        "violation": violation,
    }


def fmt(x: Any, digits: int = 3) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def json_ready(x: Any) -> Any:
    """Paths to str, NaN/inf to None, private ``_`` keys dropped, recursively."""
    if isinstance(x, dict):
        return {str(k): json_ready(v) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [json_ready(v) for v in x]
    if isinstance(x, Path):
        return str(x)
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def world_facts(bench: Bench) -> dict:
    """What the JSON records about the world (its key pins the generator and builder code)."""
    from ucan_cli.io.adapter import sha256_file

    m = bench.manifest
    return {"path": str(bench.world), "key": m.get("key"), "world": m.get("world"), "label": m.get("label"),
            "original_sha256": sha256_file(bench.original / "adapter_model.safetensors"),
            "reference_sha256": sha256_file(bench.reference / "adapter_model.safetensors"),
            "memorization": m.get("memorization")}
