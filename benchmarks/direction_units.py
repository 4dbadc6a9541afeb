"""Direction units (SPEC 3b) tuned on the tuning world, judged on held-out worlds (issue 11 item 4).

Stage ``tune`` (the tuning world only: synthetic group, seed 0): one score file of direction
moments, then a grid of ``--gate`` x ``--strength`` (and a few ``--shrinkage`` values), each a new
solve from the same moments (no forward pass), every adapter evaluated with the original and the
reference (same batches). The objective and the constraints are the sweep's (docs/method.md,
"Tuned defaults (evidence)"): J = rank gap + KL(p_ref || p_u) on D_f, subject to retain and
holdout NDCG@10 >= 0.95 x the original's. As in ``sweep.py`` the incumbent is the code's default
(gate noise, strength 1) and the best feasible challenger replaces it only when the paired
bootstrap 95% interval of dJ lies below 0.

Stage ``compare`` (held-out: group seeds 1 and 2, plus seed 0, the random scenario and the
MovieLens world): output units (defaults), rank units (defaults), direction units at the tuned
options and random directions with the same per-module shrink spectrum (``--draws`` draws), with
paired-bootstrap intervals of the forget Recall@5 and MIA AUC differences (per world and pooled
over the group worlds), and the issue's "done when" check on the group worlds' mean.

    python benchmarks/direction_units.py --stage tune --out tune.json
    python benchmarks/direction_units.py --stage compare --gate none --strength 0.2 --gated 1 10 \\
        --worlds group:0 group:1 group:2 random:0 movielens:0 --out compare.json
    python benchmarks/direction_units.py --stage frontier --worlds group:0 group:1 group:2   # exploration
    python benchmarks/direction_units.py --quick      # the small world, a tiny grid (CI smoke run)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    N_BOOT, bootstrap_index, evaluate_dirs, fmt, forget_arrays, j_resamples, json_ready, metrics_of, objective,
    open_bench, pooled, print_comparison, resolve_world, unit_comparison,
)

DEFAULT = ("noise", 1.0, 1e-6)
"""The code's defaults for direction units (--gate, --strength, --shrinkage): the incumbent."""

GRID = (
    [("none", mu, 1e-6) for mu in (0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0)]
    + [("noise", mu, 1e-6) for mu in (0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 100.0)]
    + [("noise", mu, a) for a in (1e-3, 1e-2) for mu in (1.0, 5.0, 30.0)]
    + [("none", mu, a) for a in (1e-3, 1e-2) for mu in (0.1, 0.2)]
)
QUICK_GRID = [("none", 0.2, 1e-6), ("noise", 1.0, 1e-6), ("noise", 5.0, 1e-6)]
CHUNK = 8
COLUMNS = ("forget.recall@5", "forget.kl", "retain.ndcg@10", "retain.kl", "holdout.ndcg@10", "privacy.mia_auc")
SHARE = 0.95


def label(config) -> str:
    gate, mu, alpha = config
    return f"gate {gate}, mu {mu:g}" + ("" if alpha == 1e-6 else f", shrinkage {alpha:g}")


def tune(bench, grid) -> dict:
    """Every configuration of ``grid`` from one score file, the incumbent rule, then a fine pass
    (the geometric midpoints between the choice's strength and its grid neighbours); all numbers."""
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scorefile import save_score_file

    t0 = time.perf_counter()
    run = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                params=MethodParams(unit="direction"), receipt_key=bench.key)
    scores = save_score_file(bench.work / "direction.safetensors", run.stats, run.result, run.meta, force=False)
    print(f"score: {run.overview['verdict']}: {run.overview['sentence']} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr)
    state = {"rows": [], "arrays": {}, "reference": None, "by_config": {}}
    grid = list(dict.fromkeys([DEFAULT, *grid]))
    run_configs(bench, scores, grid, state, "coarse")
    decisions = [decide(state, DEFAULT, [c for c in grid if c != DEFAULT], "coarse")]
    chosen = tuple(decisions[-1].get("chosen", DEFAULT))
    mus = sorted(c[1] for c in grid if c[0] == chosen[0] and c[2] == chosen[2])
    at = mus.index(chosen[1])
    fine = [(chosen[0], round((chosen[1] * mus[i]) ** 0.5, 4), chosen[2]) for i in (at - 1, at + 1) if 0 <= i < len(mus)]
    if fine:
        run_configs(bench, scores, fine, state, "fine")
        decisions.append(decide(state, chosen, fine, "fine"))
    return {"score": {k: v for k, v in run.overview.items() if k != "arrays"}, "rows": state["rows"], "decisions": decisions,
            "decision": decisions[-1]}


def run_configs(bench, scores, configs, state, stage) -> None:
    """Attenuate each configuration from ``scores`` and evaluate them (chunks of 8, same batches)."""
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.attenuate import attenuate

    made = []
    for config in configs:
        gate, mu, alpha = config
        out = bench.new_dir("direction")
        keys = {"config": label(config), "stage": stage, "gate": gate, "strength": mu, "shrinkage": alpha}
        try:
            edit = attenuate(bench.original, out, scores=scores,
                             params={"unit": "direction", "gate": gate, "strength": mu, "shrinkage": alpha},
                             receipt_key=bench.key, accept_weak=True)
        except NothingToDo as exc:
            state["rows"].append({**keys, "status": exc.message})
            continue
        summary = edit.report["summary"]
        made.append((config, out, {**keys, **{k: summary.get(k) for k in (
            "k", "budget_sum_1_minus_s", "n_above_lambda0", "n_noise_above_lambda0")}}))
    for start in range(0, len(made), CHUNK):
        chunk = made[start:start + CHUNK]
        result = evaluate_dirs(bench, [m[1] for m in chunk])
        original, reference = metrics_of(result, "original"), metrics_of(result, "reference")
        if state["reference"] is None:
            state["reference"] = forget_arrays(result, "reference")
            state["rows"].append({"config": "original", **original, **objective(original, original, reference)})
            state["rows"].append({"config": "reference", **reference})
        for (config, _, keys), adapter_id in zip(chunk, result.unlearned_ids):
            m = metrics_of(result, adapter_id)
            row = {**keys, **m, **objective(m, original, reference)}
            state["rows"].append(row)
            state["by_config"][config] = row
            state["arrays"][config] = forget_arrays(result, adapter_id)


def decide(state, incumbent, challengers, stage) -> dict:
    """The sweep's rule: the best feasible challenger replaces the incumbent when dJ's paired 95%
    interval lies below 0 (or the incumbent is infeasible)."""
    import numpy as np

    by, arrays = state["by_config"], state["arrays"]
    index = bootstrap_index(len(state["reference"]["recall@5"]), N_BOOT, 0)

    def j(c):
        return j_resamples(arrays[c], state["reference"], index)

    feasible = [c for c in challengers if c in by and by[c]["feasible"]]
    decision = {"stage": stage, "incumbent": label(incumbent), "incumbent_feasible": bool(by[incumbent]["feasible"]),
                "chosen": list(incumbent), "adopted": False}
    if not feasible:
        return decision
    best = min(feasible, key=lambda c: by[c]["objective"])
    lo, hi = (float(x) for x in np.percentile(j(best) - j(incumbent), [2.5, 97.5]))
    adopt = hi < 0 or not by[incumbent]["feasible"]
    decision.update(best=label(best), dJ=float(by[best]["objective"] - by[incumbent]["objective"]), dJ_ci=[lo, hi],
                    adopted=bool(adopt), chosen=list(best if adopt else incumbent))
    runner = [c for c in feasible if c != best]
    if runner:
        second = min(runner, key=lambda c: by[c]["objective"])
        decision.update(runner_up=label(second), dJ_runner_up=float(by[second]["objective"] - by[best]["objective"]),
                        dJ_runner_up_ci=[float(x) for x in np.percentile(j(second) - j(best), [2.5, 97.5])])
    return decision


def print_tune(t: dict) -> None:
    print(f"score (direction moments, defaults): **{t['score']['verdict']}**: {t['score']['sentence']}\n")
    print("| stage | configuration | k | Σ(1−s) | " + " | ".join(COLUMNS) + " | J | ok |")
    print("|---|---|---:|---:|" + "---:|" * (len(COLUMNS) + 2))
    for r in t["rows"]:
        if "status" in r:
            print(f"| {r['stage']} | {r['config']} | 0 | | {r['status'][:60]} |" + " |" * (len(COLUMNS) + 1))
            continue
        print(f"| {r.get('stage', '')} | {r['config']} | {fmt(r.get('k', ''))} | {fmt(r.get('budget_sum_1_minus_s', ''), 1)} | "
              + " | ".join(fmt(r.get(c)) for c in COLUMNS) + f" | {fmt(r.get('objective'))} | {fmt(r.get('feasible', ''))} |")
    for d in t["decisions"]:
        print(f"\ndecision ({d['stage']}): {json.dumps(d)}")


def world_path(spec: str, size: str) -> Path:
    kind, _, seed = spec.partition(":")
    if kind == "movielens":
        from ucan_cli.demo.movielens_world import ensure_movielens_world

        path, how = ensure_movielens_world(int(seed or 0), "group", size=size)
        print(f"world: {path} ({how})", file=sys.stderr)
        return path
    return resolve_world(None, int(seed or 0), kind, size)


def done_when(rows: dict[str, dict], edit: str = "direction") -> dict:
    """Issue 11's criterion for ``edit`` on the group worlds' mean: at retain and holdout NDCG@10
    >= 0.95 x the original's, its forget Recall@5 gap to the reference at most half of output
    units', and its MIA AUC at most 0.15 above the reference's."""
    import numpy as np

    def mean(name, key):
        return float(np.mean([r["rows"][name][key] for r in rows.values()]))

    ref_r5, ref_mia = mean("reference", "forget.recall@5"), mean("reference", "privacy.mia_auc")
    gap_dir = mean(edit, "forget.recall@5") - ref_r5
    gap_out = mean("output", "forget.recall@5") - ref_r5
    retain_share = mean(edit, "retain.ndcg@10") / mean("original", "retain.ndcg@10")
    holdout_share = mean(edit, "holdout.ndcg@10") / mean("original", "holdout.ndcg@10")
    per_world = {w: (r["rows"][edit]["retain_share"], r["rows"][edit]["holdout_share"]) for w, r in rows.items()}
    mia_excess = mean(edit, "privacy.mia_auc") - ref_mia
    checks = {
        "utility (mean)": (retain_share >= SHARE and holdout_share >= SHARE,
                           f"retain NDCG@10 {retain_share:.3f} x, holdout {holdout_share:.3f} x the original's"),
        "utility (every world)": (all(a >= SHARE and b >= SHARE for a, b in per_world.values()),
                                  ", ".join(f"{w}: {a:.3f} / {b:.3f}" for w, (a, b) in per_world.items())),
        "gap <= half of output units'": (abs(gap_dir) <= 0.5 * abs(gap_out),
                                         f"forget R@5 gap to the reference {gap_dir:+.3f} vs output {gap_out:+.3f} "
                                         f"(ratio {abs(gap_dir) / abs(gap_out) if gap_out else float('nan'):.2f})"),
        "MIA <= reference + 0.15": (mia_excess <= 0.15, f"MIA AUC {mean(edit, 'privacy.mia_auc'):.3f} vs "
                                    f"reference {ref_mia:.3f} ({mia_excess:+.3f})"),
    }
    return {name: {"met": bool(ok), "numbers": text} for name, (ok, text) in checks.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", choices=("tune", "compare", "both", "frontier"), default="both",
                        help="frontier: exploration only, the grid on every world and each world's own best feasible "
                        "configuration (read off that world, so not a tuned result)")
    parser.add_argument("--gate", default=None, help="compare: the gate (default: the tune stage's choice, else noise)")
    parser.add_argument("--strength", type=float, default=None)
    parser.add_argument("--shrinkage", type=float, default=None)
    parser.add_argument("--worlds", nargs="+", default=["group:0", "group:1", "group:2", "random:0", "movielens:0"])
    parser.add_argument("--gated", type=float, nargs="*", default=[],
                        help="compare: also gate-noise direction edits at these strengths (e.g. the code's default 1 "
                        "and the best gated configuration)")
    parser.add_argument("--draws", type=int, default=3, help="random-direction draws per world")
    parser.add_argument("--out", default=None, help="write every number as JSON here")
    parser.add_argument("--quick", action="store_true", help="the small world, a tiny grid (a smoke run)")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    size = "small" if args.quick else "default"
    worlds = ["group:0"] if args.quick else args.worlds
    report: dict = {}
    chosen = (args.gate or DEFAULT[0], args.strength if args.strength is not None else DEFAULT[1],
              args.shrinkage if args.shrinkage is not None else DEFAULT[2])
    if args.stage in ("tune", "both"):
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="ucan-dirtune-") as tmp:
            bench = open_bench(resolve_world(None, 0, "group", size), Path(tmp))
            report["tune"] = tune(bench, QUICK_GRID if args.quick else GRID)
        report["tune"]["seconds"] = round(time.perf_counter() - t0, 1)
        print("## Tuning (group, seed 0)\n")
        print_tune(report["tune"])
        if args.gate is None and args.strength is None and "chosen" in report["tune"]["decision"]:
            chosen = tuple(report["tune"]["decision"]["chosen"])
    if args.stage in ("compare", "both"):
        direction = {"unit": "direction", "gate": chosen[0], "strength": chosen[1], "shrinkage": chosen[2]}
        report["compare"] = {"direction": direction, "worlds": {}}
        for spec in worlds:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory(prefix="ucan-dircmp-") as tmp:
                bench = open_bench(world_path(spec, size), Path(tmp))
                extra = {f"directions, gate noise, mu {mu:g}": {"gate": "noise", "strength": mu, "shrinkage": chosen[2]}
                         for mu in args.gated}
                row = unit_comparison(bench, direction, draws=1 if args.quick else args.draws, extra=extra)
            row["seconds"] = round(time.perf_counter() - t0, 1)
            report["compare"]["worlds"][spec] = row
            print(f"\n## {spec}: direction units at {label(chosen)} ({row['seconds']} s)\n")
            print_comparison(row)
        group = {w: r for w, r in report["compare"]["worlds"].items() if w.startswith("group:") and "direction" in r["rows"]}
        held_out = {w: r for w, r in group.items() if w != "group:0"}
        for name, members in ((f"group mean ({', '.join(group)})", group),
                              (f"group held-out mean ({', '.join(held_out)})", held_out if len(held_out) < len(group) else {})):
            if len(members) < 2:
                continue
            print(f"\n## {name}\n")
            pooled_d = {o: pooled([r["differences"][o] for r in members.values()])
                        for o in next(iter(members.values()))["differences"] if all(o in r["differences"] for r in members.values())}
            report["compare"][name] = {"differences": pooled_d}
            for other, d in pooled_d.items():
                name = other.replace(" vs output", " - output") if " vs output" in other else f"direction - {other}"
                print(f"- {name}: forget R@5 {d['recall@5']:+.3f} [{d['recall@5_ci'][0]:+.3f}, "
                      f"{d['recall@5_ci'][1]:+.3f}], MIA AUC {d['mia_auc']:+.3f} [{d['mia_auc_ci'][0]:+.3f}, "
                      f"{d['mia_auc_ci'][1]:+.3f}]")
        if len(group) >= 2:
            edits = [e for e in next(iter(group.values()))["rows"] if e.startswith("direction")]
            report["compare"]["done_when"] = {e: done_when(group, e) for e in edits}
            for e, checks in report["compare"]["done_when"].items():
                print(f"\n## Done when ({', '.join(group)}, mean): {e}\n")
                for name, c in checks.items():
                    print(f"- {'MET' if c['met'] else 'NOT MET'} {name}: {c['numbers']}")
    if args.stage == "frontier":
        report["frontier"] = frontier(worlds, size, QUICK_GRID if args.quick else [c for c in GRID if c[2] == 1e-6])
    if args.out:
        Path(args.out).write_text(json.dumps(json_ready(report), indent=2) + "\n", encoding="utf-8")
    return 0


def frontier(worlds, size, grid) -> dict:
    """Each world's own best feasible direction configuration (lowest J under both utility
    constraints) from ``grid``, then the comparison with output units at it: what direction units
    could do with a per-world strength (an upper bound: the strength is read off the world)."""
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scorefile import save_score_file

    out = {"worlds": {}}
    for spec in worlds:
        with tempfile.TemporaryDirectory(prefix="ucan-dirfront-") as tmp:
            bench = open_bench(world_path(spec, size), Path(tmp))
            run = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                        params=MethodParams(unit="direction"), receipt_key=bench.key)
            scores = save_score_file(bench.work / "direction.safetensors", run.stats, run.result, run.meta, force=False)
            state = {"rows": [], "arrays": {}, "reference": None, "by_config": {}}
            run_configs(bench, scores, grid, state, "frontier")
            feasible = [c for c, r in state["by_config"].items() if r["feasible"]]
            if not feasible:
                out["worlds"][spec] = {"grid": state["rows"], "best": None}
                continue
            best = min(feasible, key=lambda c: state["by_config"][c]["objective"])
            direction = {"unit": "direction", "gate": best[0], "strength": best[1], "shrinkage": best[2]}
            row = unit_comparison(bench, direction, draws=1, rank=False)
        row.update(grid=state["rows"], best=list(best))
        out["worlds"][spec] = row
        print(f"\n## frontier {spec}: best feasible {label(best)}\n")
        print_comparison(row)
    group = {w: r for w, r in out["worlds"].items() if w.startswith("group:") and r.get("best")}
    if len(group) >= 2:
        out["done_when"] = done_when(group)
        print("\n## Done when at each world's own best feasible strength (exploration)\n")
        for name, c in out["done_when"].items():
            print(f"- {'MET' if c['met'] else 'NOT MET'} {name}: {c['numbers']}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
