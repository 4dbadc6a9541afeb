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


def world_parser(doc: str, quick: str):
    """The argument parser of a script run over worlds: ``--worlds`` (default group seeds 0-2),
    ``--out`` JSON and ``--quick`` (``quick``: what the smoke run does)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--worlds", nargs="+", default=["group:0", "group:1", "group:2"],
                        help="kind:seed from the demo cache, or world directories (e.g. the width study's)")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def over_worlds(specs: Sequence[str], run, show, *, prefix: str) -> list[dict]:
    """``run(spec, work)`` for each world spec, each in a fresh temporary work dir (deleted after),
    ``show(result)`` as soon as each ends (flushed: long runs print per world)."""
    import tempfile

    worlds = []
    for spec in specs:
        with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
            worlds.append(run(spec, Path(tmp)))
        show(worlds[-1])
        sys.stdout.flush()
    return worlds


def run_study(args, run_world, show_world, summarize, show_summary, *, prefix: str) -> dict:
    """A world script's main after parsing (``world_parser``): torch on one thread,
    ``run_world(spec, size, work)`` over ``--worlds`` (the small group:0 world with ``--quick``),
    each shown as it ends, then ``summarize(worlds)``, shown and written with the worlds to ``--out``."""
    import torch

    torch.set_num_threads(1)
    size = "small" if args.quick else "default"
    worlds = over_worlds(["group:0"] if args.quick else args.worlds, lambda spec, work: run_world(spec, size, work),
                         show_world, prefix=prefix)
    summary = summarize(worlds)
    show_summary(summary, worlds)
    if args.out:
        write_json(args.out, {"worlds": worlds, "summary": summary})
    return summary


def write_json(path: str | Path, doc: Any) -> None:
    """``doc`` as indented JSON (``json_ready``) at ``path``."""
    Path(path).write_text(json.dumps(json_ready(doc), indent=2) + "\n", encoding="utf-8")


def world_facts(bench: Bench) -> dict:
    """What the JSON records about the world (its key pins the generator and builder code)."""
    from ucan_cli.io.adapter import sha256_file

    m = bench.manifest
    return {"path": str(bench.world), "key": m.get("key"), "world": m.get("world"), "label": m.get("label"),
            "original_sha256": sha256_file(bench.original / "adapter_model.safetensors"),
            "reference_sha256": sha256_file(bench.reference / "adapter_model.safetensors"),
            "memorization": m.get("memorization")}


# ------------------------------------------------------------------- direction units (issue 11)


def random_directions_adapter(bench: Bench, factors: dict[str, Any], out: Path, seed: int = 0) -> dict:
    """The random-directions control of a direction edit: per module, the same shrink spectrum
    (the multiset of factors s != 1, so the same sum(1 - s)) applied along random orthonormal
    input directions Q (Haar, QR of a Gaussian): A' = A + (A Q) diag(s - 1) Q^T. B, bias and
    config untouched. ``factors`` maps module name -> s (one per input direction, as the
    direction edit's ``DirectionResult.modules[i].s``). Writes ``out``; returns the per-module
    sum(1 - s) spent."""
    import numpy as np
    import torch

    from ucan_cli.io.adapter import LoraAdapter

    adapter = LoraAdapter.load(bench.original)
    rng = np.random.default_rng([seed, 0xD1CE])
    replacements, spent = {}, {}
    for module in adapter.modules:
        s = np.asarray(factors.get(module.name, np.ones(0)), dtype=np.float64)
        idx = np.flatnonzero(s != 1.0)
        if idx.size == 0:
            continue
        a = module.A.to(torch.float64).numpy()
        if a.shape[1] != s.shape[0]:
            raise ValueError(f"{module.name}: A is {a.shape}, the direction factors have {s.shape[0]} entries")
        q, r = np.linalg.qr(rng.standard_normal((s.shape[0], idx.size)))
        q = q * np.sign(np.diag(r))[None, :]
        a_new = a + ((a @ q) * (s[idx] - 1.0)[None, :]) @ q.T
        replacements[module.key_A] = torch.from_numpy(a_new).to(module.A.dtype)
        spent[module.name] = float((1.0 - s).sum())
    out.mkdir(parents=True)
    adapter.with_tensors(replacements).write_into(out)
    return spent


def mia_scores(result, adapter_id: str):
    """(member scores on D_f, non-member scores on D_h) of one adapter, as ``privacy.mia_auc`` uses them."""
    from ucan_cli.evaluation import metrics as M

    f, h = result.passes["forget"], result.passes["holdout"]
    return M.membership_scores(f.nll[adapter_id], f.tokens), M.membership_scores(h.nll[adapter_id], h.tokens)


def paired_differences(result, a: str, b, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Paired bootstrap 95% intervals of a - b for forget Recall@5 and MIA AUC (the same resampled
    forget records, and for the MIA the same resampled holdout records, for every adapter). ``b``
    is one adapter id or several (their mean: the random draws). The resampled differences are
    kept under ``_recall`` and ``_mia`` so that several worlds' can be averaged (``pooled``)."""
    import numpy as np

    from ucan_cli.evaluation import metrics as M

    bs = [b] if isinstance(b, str) else list(b)
    fa = result.per_record["forget"][a]["recall@5"]
    fbs = [result.per_record["forget"][x]["recall@5"] for x in bs]
    idx = bootstrap_index(len(fa), n_boot, seed)
    d_recall = fa[idx].mean(1) - np.mean([fb[idx].mean(1) for fb in fbs], axis=0)
    ma, na = mia_scores(result, a)
    others = [mia_scores(result, x) for x in bs]
    jdx = bootstrap_index(len(na), n_boot, seed + 1)
    d_mia = np.array([
        M._auc(ma[i], na[j]) - float(np.mean([M._auc(mb[i], nb[j]) for mb, nb in others])) for i, j in zip(idx, jdx)
    ])
    return summarize_differences(
        float(fa.mean() - np.mean([fb.mean() for fb in fbs])),
        float(M._auc(ma, na) - np.mean([M._auc(mb, nb) for mb, nb in others])), d_recall, d_mia,
    )


def summarize_differences(recall: float, mia: float, d_recall, d_mia) -> dict[str, Any]:
    import numpy as np

    return {
        "recall@5": recall, "recall@5_ci": [float(x) for x in np.percentile(d_recall, [2.5, 97.5])],
        "mia_auc": mia, "mia_auc_ci": [float(x) for x in np.percentile(d_mia, [2.5, 97.5])],
        "_recall": d_recall, "_mia": d_mia,
    }


def pooled(differences: Sequence[dict]) -> dict[str, Any]:
    """The mean over worlds of paired differences, its interval from the worlds' resamples averaged."""
    import numpy as np

    return summarize_differences(
        float(np.mean([d["recall@5"] for d in differences])), float(np.mean([d["mia_auc"] for d in differences])),
        np.mean([d["_recall"] for d in differences], axis=0), np.mean([d["_mia"] for d in differences], axis=0),
    )


COMPARE_COLUMNS = ("forget.recall@5", "forget.kl", "retain.ndcg@10", "retain.kl", "holdout.ndcg@10", "privacy.mia_auc")


def unit_comparison(bench: Bench, direction: dict, *, draws: int = 3, rank: bool = True, seed: int = 0,
                    extra: dict[str, dict] | None = None) -> dict:
    """Output units (defaults), rank units (defaults; ``rank``), direction units (``direction``:
    the options, e.g. gate and strength) and ``draws`` random-direction controls with the
    direction edit's per-module spectrum, all in one ``evaluate`` with the original and the
    reference. Each unit kind is scored at its defaults (the verdict ``ucan score`` prints); a
    weak verdict is recorded and the edit made anyway (``accept_weak``), so eval can show what it
    would have done. ``extra`` adds more direction edits by name (e.g. a gated one), compared with
    output units. Returns the verdicts, every adapter's numbers and the paired differences
    (direction minus each other edit) of forget Recall@5 and MIA AUC."""
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scorefile import save_score_file

    edits = [("output", {})] + ([("rank", {"unit": "rank"})] if rank else []) + [("direction", dict(direction))]
    edits += [(name, {"unit": "direction", **options}) for name, options in (extra or {}).items()]
    verdicts, dirs, names, factors = {}, [], [], None
    for name, options in edits:
        unit = options.get("unit", "output")
        t0 = time.perf_counter()
        score_params = MethodParams(**{k: v for k, v in options.items() if k in ("unit", "shrinkage")})
        run = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                    params=score_params, receipt_key=bench.key)
        path = save_score_file(bench.new_dir(f"cmp-{unit}").with_suffix(".safetensors"), run.stats, run.result, run.meta,
                               force=False)
        verdicts[name] = {"verdict": run.overview["verdict"], "sentence": run.overview["sentence"],
                          "score_s": round(time.perf_counter() - t0, 2)}
        out = bench.new_dir(name)
        try:
            edit = attenuate(bench.original, out, scores=path, params=options, receipt_key=bench.key, accept_weak=True)
        except NothingToDo as exc:
            verdicts[name]["edit"] = f"nothing to do: {exc.message}"
            continue
        summary = edit.report["summary"]
        verdicts[name]["summary"] = {k: summary.get(k) for k in (
            "k", "n_attenuated", "budget_sum_1_minus_s", "n_above_lambda0", "n_noise_above_lambda0",
            "max_lambda_over_lambda0") if k in summary}
        dirs.append(out)
        names.append(name)
        if name == "direction":
            factors = {m.name: m.s for m in edit.result.modules}
    for draw in range(draws if factors is not None else 0):
        out = bench.new_dir("random-directions")
        random_directions_adapter(bench, factors, out, seed=draw + seed)
        dirs.append(out)
        names.append(f"random directions {draw}")
    result = evaluate_dirs(bench, dirs)
    ids = dict(zip(names, result.unlearned_ids))
    original, reference = metrics_of(result, "original"), metrics_of(result, "reference")
    rows = {"original": original, "reference": reference}
    for name in names:
        rows[name] = {**metrics_of(result, ids[name]), **objective(metrics_of(result, ids[name]), original, reference)}
    randoms = [ids[n] for n in names if n.startswith("random directions")]
    if randoms:
        rows["random directions (mean)"] = {
            key: sum(rows[n][key] for n in names if n.startswith("random directions")) / len(randoms)
            for key in rows[names[-1]] if isinstance(rows[names[-1]][key], (int, float)) and not isinstance(rows[names[-1]][key], bool)
        }
    differences = {}
    if "direction" in ids:
        for other in [n for n in ("output", "rank") if n in ids] + (["random directions"] if randoms else []):
            b = randoms if other == "random directions" else ids[other]
            differences[other] = paired_differences(result, ids["direction"], b)
        for name in (extra or {}):
            if name in ids and "output" in ids:
                differences[f"{name} vs output"] = paired_differences(result, ids[name], ids["output"])
    return {"verdicts": verdicts, "rows": rows, "differences": differences}


def print_comparison(row: dict) -> None:
    """A Markdown table of ``unit_comparison``'s numbers, the verdicts and the paired differences."""
    for name, v in row["verdicts"].items():
        extra = f"; {v['edit']}" if "edit" in v else f"; {v.get('summary')}"
        print(f"- {name}: score verdict **{v['verdict']}** ({v['sentence']}){extra}")
    print("\n| edit | " + " | ".join(COMPARE_COLUMNS) + " | J | ok |")
    print("|---|" + "---:|" * (len(COMPARE_COLUMNS) + 2))
    for name, m in row["rows"].items():
        print(f"| {name} | " + " | ".join(fmt(m.get(c)) for c in COMPARE_COLUMNS)
              + f" | {fmt(m.get('objective'))} | {fmt(m.get('feasible', ''))} |")
    for other, d in row["differences"].items():
        name = other.replace(" vs output", " - output") if " vs output" in other else f"direction - {other}"
        print(f"- {name}: forget R@5 {d['recall@5']:+.3f} [{d['recall@5_ci'][0]:+.3f}, "
              f"{d['recall@5_ci'][1]:+.3f}], MIA AUC {d['mia_auc']:+.3f} [{d['mia_auc_ci'][0]:+.3f}, {d['mia_auc_ci'][1]:+.3f}]")
