"""Tune U-CAN's method defaults on a demo world: statistics once, every configuration from a score file.

For each (unit, token scope) the forward passes of step 1 run once (``ucan_cli.flows.score.score``) and
the statistics are kept in a score file; every configuration then redoes steps 2-6 from that file
(``ucan_cli.attenuate(scores=...)``, a few milliseconds) and the resulting adapters are evaluated
with ``ucan_cli.evaluation.run.evaluate`` next to the original and the retrained reference (the base
loads once; several adapters share each evaluation's batches, so a configuration costs one
adapter's forward passes over D_f, D_r and D_h).

The objective (docs/method.md, "Tuned defaults (evidence)"), on the forget set D_f:

    gap  = mean over K in {5, 10} of ( |Recall@K_u - Recall@K_ref| + |NDCG@K_u - NDCG@K_ref| )
    J    = gap + KL(p_ref || p_u)                          (lower is better; 0 = the reference)

subject to two utility constraints against the original adapter:

    holdout NDCG@10 of retain users  >= 0.95 x original's      (generalization utility)
    retain  NDCG@10 (memorized D_r)  >= 0.95 x original's      (memorized utility)

A configuration meets the constraints ("feasible") or not; the best configuration is the feasible
one with the smallest J (when none is feasible, the one that misses the constraints by least).
Trade-off@10, forget/retain KL and the MIA AUC are reported alongside, never optimized.

The search (about 70 configurations on the default world, well under 100):

1. ``unit-scope``: both units x three token scopes at the provisional defaults, ratio 0.05 and 0.1.
2. ``coarse``: greedy coordinate descent from the best of (1): ratio, floor, decay, sharpness,
   lambda, t-risk, min-gap in turn, each over a coarse grid, keeping the best value before moving on.
3. ``fine``: the same pass with values halfway (geometrically) between the chosen value and its
   coarse neighbours.
4. ``joint``: ratio x sharpness on the fine neighbours of the best (the two interact: both set how
   hard units near tau are cut).
5. ``unit-scope-check``: the chosen parameters on every (unit, scope), so that the choice of
   unit and scope is made with tuned parameters too.

Configurations with no eligible unit (``NothingToDo``, exit 4) are kept in the table with their
reason. Usage::

    python benchmarks/sweep.py                       # seed 0, group scenario, default world
    python benchmarks/sweep.py --out sweep.json --csv docs/sweep.csv
    python benchmarks/sweep.py --quick               # small world, 3 configurations (CI)

The world, its score files, one evaluation and the objective live in ``harness.py``, shared
with ``compare.py``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import Any

from ucan_cli.methods.ucan.params import TOKEN_SCOPES as SCOPES
from ucan_cli.methods.ucan.params import UNITS

from harness import (
    EVAL_CHUNK,
    METRICS,
    N_BOOT,
    START,
    UTILITY_SHARE,
    Bench,
    Config,
    attenuate_config,
    bootstrap_index,
    evaluate_dirs,
    fmt,
    forget_arrays,
    j_resamples,
    json_ready,
    metrics_of,
    objective,
    open_bench,
    resolve_world,
    world_facts,
)


# The coarse grids of the coordinate pass, in the order they are visited.
COARSE: dict[str, tuple[Any, ...]] = {
    "ratio": (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3),
    "floor": (0.0, 0.1, 0.25, 0.5),
    "decay": ("sigmoid", "exp", "hard"),
    "sharpness": (1.0, 2.0, 4.0, 8.0, 16.0),
    "lam": (0.0, 0.25, 0.5, 1.0, 2.0),
    "t_risk": (2.0, 3.0, 4.0, 6.0),
    "min_gap": (0.0, 0.05, 0.1, 0.25, 0.5),
}
GEOMETRIC = {"ratio", "sharpness"}  # refined geometrically; the others arithmetically


# --------------------------------------------------------------------------------------------
# The world, its score files and one evaluation


# --------------------------------------------------------------------------------------------
# Metrics of one adapter and the objective


def rank_key(row: dict) -> tuple:
    """Feasible rows by J, then infeasible rows by how much they miss the constraints, then the rest."""
    if row["status"] != "ok":
        return (2, 0.0)
    if row["feasible"]:
        return (0, row["objective"])
    return (1, row["violation"])


def evaluate_rows(bench: Bench, configs: Sequence[Config], stage: str, *, bootstrap: int = 0) -> tuple[list[dict], dict]:
    """Attenuate and evaluate ``configs`` (in chunks sharing batches); one row per configuration.

    Returns the rows and the original's and reference's metrics (identical in every chunk). The
    per-record forget values behind J are kept under ``_forget`` (left out of the JSON).
    """
    rows: list[dict] = []
    made: list[tuple[dict, dict]] = []
    for config in configs:
        att = attenuate_config(bench, config)
        row = {"stage": stage, "label": config.label(), **asdict(config), "status": att["status"], "reason": att["reason"]}
        s = att["summary"]
        row.update({key: s.get(key) for key in ("n_live", "n_eligible", "k", "n_attenuated", "n_at_most_half",
                                                "budget_sum_1_minus_s", "max_R_over_sigma0")})
        row["attenuate_s"] = att["attenuate_s"]
        rows.append(row)
        if att["status"] == "ok":
            made.append((row, att))
    anchors: dict = {}
    for start in range(0, len(made), EVAL_CHUNK):
        chunk = made[start : start + EVAL_CHUNK]
        t0 = time.perf_counter()
        result = evaluate_dirs(bench, [att["dir"] for _, att in chunk], bootstrap=bootstrap)
        per = (time.perf_counter() - t0) / len(chunk)
        if not anchors:
            anchors = {name: {**metrics_of(result, name), "_forget": forget_arrays(result, name)}
                       for name in ("original", "reference")}
        for (row, _), adapter_id in zip(chunk, result.unlearned_ids):
            m = metrics_of(result, adapter_id)
            row["_forget"] = forget_arrays(result, adapter_id)
            row.update(m)
            row.update(objective(m, anchors["original"], anchors["reference"]))
            row["eval_s"] = per
    for row in rows:
        if row["status"] != "ok":
            row.update({"feasible": False, "objective": None, "violation": None})
    return rows, anchors


# --------------------------------------------------------------------------------------------
# The search


def neighbours(name: str, value: Any) -> list[Any]:
    """Values halfway between ``value`` and its neighbours on the coarse grid (the fine pass)."""
    grid = COARSE[name]
    if isinstance(value, str) or value not in grid:
        return []
    i = grid.index(value)
    out = []
    for j in (i - 1, i + 1):
        if 0 <= j < len(grid):
            a, b = float(grid[j]), float(value)
            mid = math.sqrt(a * b) if name in GEOMETRIC and a > 0 and b > 0 else (a + b) / 2
            out.append(float(f"{mid:.3g}"))
    return out


class Search:
    """Evaluated configurations (cached), the paired bootstrap of J, and the decisions taken.

    A default changes only on evidence: a challenger replaces the incumbent when it meets the
    utility constraints and the paired bootstrap 95% interval of J(challenger) - J(incumbent),
    over the forget records (the same resampled records for both), lies entirely below 0; or
    when the incumbent misses the constraints and the challenger does not.
    """

    def __init__(self, bench: Bench, log, *, n_boot: int = N_BOOT) -> None:
        self.bench = bench
        self.log = log
        self.n_boot = n_boot
        self.rows: dict[Config, dict] = {}
        self.anchors: dict = {}
        self.decisions: list[dict] = []
        self._index = None
        self._j: dict[Config, Any] = {}

    def run(self, configs: Iterable[Config], stage: str) -> list[dict]:
        configs = list(dict.fromkeys(configs))
        todo = [c for c in configs if c not in self.rows]
        if todo:
            t0 = time.perf_counter()
            rows, anchors = evaluate_rows(self.bench, todo, stage)
            self.anchors = self.anchors or anchors
            for config, row in zip(todo, rows):
                self.rows[config] = row
            self.log(f"  {stage}: {len(todo)} configurations in {time.perf_counter() - t0:.1f} s")
        return [self.rows[c] for c in configs]

    def best(self, configs: Iterable[Config] | None = None) -> Config:
        """The lowest J among feasible configurations (else the smallest constraint miss)."""
        pool = list(self.rows) if configs is None else list(configs)
        return min(pool, key=lambda c: rank_key(self.rows[c]))

    def j_boot(self, config: Config):
        """J of ``config`` on each bootstrap resample of the forget records (shared indices)."""
        if config not in self._j:
            ref = self.anchors["reference"]["_forget"]
            if self._index is None:
                self._index = bootstrap_index(len(ref["kl_reference"]), self.n_boot)
            self._j[config] = j_resamples(self.rows[config]["_forget"], ref, self._index)
        return self._j[config]

    def adopt(self, incumbent: Config, candidates: Iterable[Config], stage: str, what: str) -> Config:
        """The incumbent, or the best candidate when it is better on evidence (see the class doc)."""
        import numpy as np

        pool = [c for c in dict.fromkeys(candidates) if c != incumbent]
        if not pool:
            return incumbent
        challenger = self.best(pool)
        inc, ch = self.rows[incumbent], self.rows[challenger]
        decision = {"stage": stage, "option": what, "incumbent": inc["label"], "challenger": ch["label"],
                    "J_incumbent": inc.get("objective"), "J_challenger": ch.get("objective"),
                    "delta": None, "ci": None, "adopted": False}
        if ch["status"] == "ok" and ch["feasible"]:
            if inc["status"] != "ok" or not inc["feasible"]:
                decision.update(adopted=True, why="the incumbent misses the utility constraints")
            else:
                diff = self.j_boot(challenger) - self.j_boot(incumbent)
                lo, hi = (float(x) for x in np.quantile(diff, [0.025, 0.975]))
                why = ("J lower beyond noise" if hi < 0 else "J higher beyond noise" if lo > 0
                       else "within noise: keep the incumbent")
                decision.update(delta=ch["objective"] - inc["objective"], ci=[lo, hi], adopted=hi < 0, why=why)
        elif rank_key(ch) < rank_key(inc):
            decision.update(adopted=True, why="nothing meets the constraints; this one misses them by less")
        else:
            decision["why"] = "the challenger misses the utility constraints"
        self.decisions.append(decision)
        ci = decision["ci"]
        verdict = f"adopted [{ch['label']}] over [{inc['label']}]" if decision["adopted"] else (
            f"kept [{inc['label']}]; best challenger [{ch['label']}]")
        self.log(f"  {stage}: {what}: {verdict}" + (f": dJ {decision['delta']:+.3f} CI [{ci[0]:+.3f}, {ci[1]:+.3f}]" if ci else ""))
        return challenger if decision["adopted"] else incumbent

    def coordinate_pass(self, center: Config, grids: dict[str, Sequence[Any]], stage: str) -> Config:
        """For each option in turn, evaluate its values around ``center``; adopt the best on evidence."""
        for name, values in grids.items():
            candidates = [replace(center, **{name: v}) for v in values]
            self.run([center, *candidates], stage)
            center = self.adopt(center, candidates, stage, name)
        return center


def sweep(bench: Bench, *, quick: bool, log) -> dict:
    """Run the search; returns rows (every configuration), the decisions, the choice and the anchors."""
    search = Search(bench, log)
    if quick:
        quick_set = [replace(START, ratio=0.1), replace(START, decay="hard")]
        search.run([START, *quick_set], "quick")
        chosen = search.adopt(START, quick_set, "quick", "ratio/decay")
    else:
        families = {(u, s): [replace(START, unit=u, scope=s, ratio=r) for r in (0.05, 0.1)] for u in UNITS for s in SCOPES}
        search.run([c for configs in families.values() for c in configs], "unit-scope")
        home = (START.unit, START.scope)
        center = search.adopt(START, families[home], "unit-scope", "ratio (provisional unit and scope)")
        others = [search.best(configs) for key, configs in families.items() if key != home]
        center = search.adopt(center, others, "unit-scope", "unit and scope")
        center = search.coordinate_pass(center, COARSE, "coarse")
        fine = {name: neighbours(name, getattr(center, name)) for name in COARSE if name != "decay"}
        center = search.coordinate_pass(center, {k: v for k, v in fine.items() if v}, "fine")
        ratios = sorted({center.ratio, *(float(f"{center.ratio * f:.3g}") for f in (0.8, 1.25))})
        sharp = sorted({center.sharpness, float(f"{center.sharpness / 2:.3g}"), float(f"{center.sharpness * 2:.3g}")})
        joint = [replace(center, ratio=r, sharpness=g) for r in ratios for g in sharp]
        search.run(joint, "joint")
        center = search.adopt(center, joint, "joint", "ratio x sharpness")
        check = [replace(center, unit=u, scope=s) for u in UNITS for s in SCOPES]
        search.run(check, "unit-scope-check")
        chosen = search.adopt(center, check, "unit-scope-check", "unit and scope with tuned options")
    rows = list(search.rows.values())
    for config, row in search.rows.items():
        row["chosen"] = config == chosen
    return {"rows": rows, "chosen": asdict(chosen), "chosen_row": search.rows[chosen], "anchors": search.anchors,
            "decisions": search.decisions, "best_by_J": asdict(search.best())}


# --------------------------------------------------------------------------------------------
# Output


TABLE = [
    ("stage", "stage"), ("label", "configuration"), ("k", "k"), ("n_attenuated", "#s<1"),
    ("forget.recall@5", "f R@5"), ("forget.ndcg@10", "f N@10"), ("forget.kl", "f KL"),
    ("retain.recall@5", "r R@5"), ("retain.ndcg@10", "r N@10"), ("retain.kl", "r KL"),
    ("holdout.recall@5", "h R@5"), ("holdout.ndcg@10", "h N@10"),
    ("gap_rank", "gap"), ("gap_kl", "KL ref"), ("objective", "J"), ("feasible", "ok"),
    ("tradeoff.retain@10", "TO@10 r"), ("tradeoff.holdout@10", "TO@10 h"), ("privacy.mia_auc", "MIA"),
]


def text_table(rows: Sequence[dict], anchors: dict) -> str:
    """A plain-text table: the original and reference first, then every configuration."""
    heads = [h for _, h in TABLE]
    lines = []
    for name in ("original", "reference"):
        m = anchors.get(name, {})
        lines.append([name, "", "", ""] + [fmt(m.get(k)) for k, _ in TABLE[4:12]] + ["", "", "", ""]
                     + [fmt(m.get(k), 1) for k, _ in TABLE[16:18]] + [fmt(m.get("privacy.mia_auc"))])
    for r in rows:
        if r["status"] != "ok":
            lines.append([r["stage"], r["label"], "0", "0", f"nothing to do: {r['reason']}"] + [""] * (len(TABLE) - 5))
            continue
        lines.append([fmt(r.get(k), 1 if k.startswith("tradeoff") else 3) for k, _ in TABLE])
    widths = [max(len(h), *(len(line[i]) for line in lines if i < len(line) and not line[i].startswith("nothing")))
              for i, h in enumerate(heads)]
    out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    out += ["  ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    return "\n".join(out)


CSV_FIELDS = ["stage", "status", *[f.name for f in fields(Config)], "k", "n_eligible", "n_attenuated", "n_at_most_half",
              "budget_sum_1_minus_s", *[f"{g}.{m}" for g, ms in METRICS.items() for m in ms],
              "gap_rank", "gap_kl", "objective", "retain_share", "holdout_share", "feasible", "reason"]


def write_csv(path: Path, rows: Sequence[dict], anchors: dict) -> None:
    """Every configuration (and the original and reference) with every number, one row each."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in [{"stage": name, "status": "anchor", **anchors.get(name, {})} for name in ("original", "reference")] + list(rows):
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small world, 3 configurations (CI, < 60 s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenario", default="group", choices=("group", "random"))
    parser.add_argument("--size", default=None, choices=("default", "small"), help="world size (default: default; small with --quick)")
    parser.add_argument("--world", default=None, help="a world dir instead of the demo cache's")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    parser.add_argument("--csv", default=None, help="write the sweep table as CSV here")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (one is fastest for the tiny model)")
    args = parser.parse_args(argv)

    import torch

    from ucan_cli.runtime.models import hf_quiet

    torch.set_num_threads(args.threads)
    size = args.size or ("small" if args.quick else "default")
    t0 = time.perf_counter()
    world = resolve_world(args.world, args.seed, args.scenario, size)
    t_world = time.perf_counter() - t0

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="ucan-sweep-") as tmp, hf_quiet():
        bench = open_bench(world, Path(tmp))
        t1 = time.perf_counter()
        out = sweep(bench, quick=args.quick, log=log)
        t_sweep = time.perf_counter() - t1
        score_info = {f"{u}/{s}": info for (u, s), info in bench.score_info.items()}
        facts = world_facts(bench)
    rows = out["rows"]
    n_ok = sum(r["status"] == "ok" for r in rows)
    print(text_table(rows, out["anchors"]))
    print()
    for name, info in score_info.items():
        print(f"score {name}: verdict {info['verdict']}, max R = {fmt(info['max_R_over_sigma0'], 1)} sigma0, "
              f"n_R {info['n_R_above']} vs noise n_R0 {info['n_R0_above']}, live {info['n_live']} ({info['seconds']:.1f} s)")
    print("\ndecisions (a challenger replaces the incumbent only when J is lower beyond noise):")
    for d in out["decisions"]:
        ci = f"dJ {d['delta']:+.3f} CI [{d['ci'][0]:+.3f}, {d['ci'][1]:+.3f}]" if d["ci"] else ""
        act = f"adopt [{d['challenger']}]" if d["adopted"] else f"keep [{d['incumbent']}] (best challenger [{d['challenger']}])"
        print(f"  {d['stage']:<16} {d['option']:<34} {act} {ci} ({d['why']})")
    chosen = out["chosen_row"]
    print(f"\nchosen: {chosen['label']}  (J = {fmt(chosen.get('objective'))}, feasible: {fmt(chosen.get('feasible'))})")
    best = out["rows"][[r["label"] for r in out["rows"]].index(Config(**out["best_by_J"]).label())]
    print(f"lowest J of all feasible configurations: {best['label']}  (J = {fmt(best.get('objective'))})")
    per_config = t_sweep / max(len(rows), 1)
    print(f"{len(rows)} configurations ({n_ok} evaluated, {len(rows) - n_ok} nothing to do) in {t_sweep:.1f} s "
          f"({per_config:.2f} s each incl. scoring); world {t_world:.1f} s")
    if args.csv:
        write_csv(Path(args.csv), rows, out["anchors"])
    if args.out:
        doc = {
            "benchmark": "sweep", "quick": args.quick, "seed": args.seed, "scenario": args.scenario, "size": size,
            "world": facts, "objective": "mean_K(|R@K-R@K_ref| + |N@K-N@K_ref|), K in {5,10}, + KL(p_ref||p_u) on D_f",
            "constraints": {"retain.ndcg@10": f">= {UTILITY_SHARE} x original", "holdout.ndcg@10": f">= {UTILITY_SHARE} x original"},
            "selection": "a challenger replaces the incumbent when feasible and the paired bootstrap 95% CI of dJ "
                         f"over forget records ({N_BOOT} resamples) lies below 0",
            "start": asdict(START), "chosen": out["chosen"], "best_by_J": out["best_by_J"], "decisions": out["decisions"],
            "anchors": out["anchors"], "score_files": score_info,
            "rows": [{k: v for k, v in r.items()} for r in rows],
            "seconds": {"world": t_world, "sweep": t_sweep, "per_configuration": per_config},
        }
        Path(args.out).write_text(json.dumps(json_ready(doc), indent=1, allow_nan=False) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
