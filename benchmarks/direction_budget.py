"""Direction units under a retain budget: ways past a fixed ``--strength`` (issue 11, after item 4).

Issue 11's "done when" asks direction units to close half of output units' gap to the retrained
reference at 95% of the memorized utility. At one fixed strength they close a quarter to a third
(docs/results.md). This script measures three forward-only (no gradient) ways to set the strength
and one token-scope variant; the second is the product's ``attenuate --retain-kl``, the others
were measured and not built (docs/results.md, "Direction units under a measured retain budget"):

1. **Forward-free retain share.** rho(mu) = sum_l E_r ||c B_l (A'_l - A_l) x||^2 /
   sum_l E_r ||c B_l A_l x||^2, the share of the adapter's retain-set output energy an edit removes,
   is exact from the moments (no forward pass). If a fixed rho transferred across worlds better
   than a fixed mu, it would be a free safeguard for ``--gate none``.
2. **Measured retain budget, one strength** (the product's ``attenuate --retain-kl``,
   ``ucan_cli.flows.strength``): of ``--strength``, ``--strength / 2``, ..., ``--strength / 128``
   the largest whose edit moves the retain set by at most ``budget`` nats of retain KL (KL from
   the original, as ``ucan eval`` reports it; one forward pass over D_f and D_r per candidate),
   refined by two bisections. Run here with gate none and ``--strength`` ``TOP`` (4).
3. **Measured retain budget, a strength per module.** Each module's own edit at a few strengths is
   probed alone (forget KL gained, retain KL spent, one pass over D_f and D_r per probe); a greedy
   allocation then raises, step by step, the module strength with the most forget KL per retain
   KL until the summed retain KL reaches the budget (the effects are assumed to add).

Plus one per-module token scope variant: ``v_proj`` reads the history positions that the answer
attends to, so its moments over every position (``all``) instead of the response positions.

Each world: direction moments (response scope; ``all`` too for the variant), the grid of gate-none
strengths with rho and their eval, the probes, the plans, output units at their defaults, and one
``evaluate`` with the original and the reference for the comparison (paired bootstrap). The
budget is tuned on the tuning world (group, seed 0: the feasible budget of lowest J) and judged on
the others. Torch on one thread.

    python benchmarks/direction_budget.py --worlds group:0 group:1 group:2 --out budget.json
    python benchmarks/direction_budget.py --worlds group:3 group:4 group:5
    python benchmarks/direction_budget.py --worlds ~/.cache/ucan/width/group-w256-blr0.001-llr0.002-seed0   # width.py's worlds
    python benchmarks/direction_budget.py --quick    # the small world, a tiny grid (CI smoke run)
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from harness import (  # noqa: E402
    evaluate_dirs, fmt, metrics_of, objective, open_bench, paired_differences, resolve_world, run_study, world_parser,
)

MUS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
TOP = 4.0
"""The top of ``--retain-kl``'s ladder here: 4, 2, 1, ..., 4/128 (mu 1 fits in 0.2 nats on the 256-wide worlds)."""
PROBES = (0.1, 0.3, 1.0, 3.0)
BUDGETS = (0.05, 0.1, 0.15, 0.2, 0.3)
QUICK = {"mus": (0.2, 1.0), "probes": (0.3, 1.0), "budgets": (0.1,), "top": 1.0}
CHUNK = 10
SHARE = 0.95
COLUMNS = ("forget.recall@5", "forget.kl", "retain.ndcg@10", "retain.kl", "holdout.ndcg@10", "privacy.mia_auc")


def world_of(spec: str, size: str) -> Path:
    """``kind:seed`` (the demo cache) or a world directory."""
    if "/" in spec or spec.startswith("~"):
        return resolve_world(str(Path(spec).expanduser()), 0, "group", size)
    kind, _, seed = spec.partition(":")
    return resolve_world(None, int(seed or 0), kind, size)


def solve(stats, adapter, module_scope=None):
    """Per module: (generalized eigen solution, S^f, S^r) at shrinkage 1e-6, the moments taken from
    ``module_scope(name)`` (a MomentStatistics) when given, else ``stats``."""
    from ucan_cli.methods.ucan import directions as dm

    out = []
    for i, module in enumerate(adapter.modules):
        st = module_scope(module.name) if module_scope else stats
        f, r = st.forget.mean(i), st.retain.mean(i)
        delta = dm.ridge(r, 1e-6)
        lam0, _ = dm.noise_level(st.half_a.mean(i), st.half_b.mean(i), delta)
        out.append((dm.generalized_eigh(f, r, delta), f, r, lam0))
    return out


def edited_a(module, solution, gate: str, mu: float):
    """A' of one module (float64 numpy) and its factors, as the product computes them."""
    import numpy as np
    import torch

    from ucan_cli.methods.ucan import directions as dm

    sol, _, _, lam0 = solution
    s = dm.factors(sol.lam, strength=mu, gate=gate, lambda0=lam0)
    s = np.where(np.abs(1.0 - s) < 1e-4, 1.0, s)
    return dm.edit_a(module.A.to(torch.float64).numpy(), sol, s), s


def retain_share(adapter, solutions, mu: float) -> tuple[float, float]:
    """(rho, the same share on the forget set): output energy removed / output energy, summed over
    modules, exact from the moments."""
    import numpy as np
    import torch

    removed_r = total_r = removed_f = total_f = 0.0
    for module, solution in zip(adapter.modules, solutions):
        _, f, r, _ = solution
        a_new, _ = edited_a(module, solution, "none", mu)
        b = float(module.scaling) * module.B.to(torch.float64).numpy()
        a = module.A.to(torch.float64).numpy()
        d, w = b @ (a_new - a), b @ a
        removed_r += float(np.trace(d @ r @ d.T))
        total_r += float(np.trace(w @ r @ w.T))
        removed_f += float(np.trace(d @ f @ d.T))
        total_f += float(np.trace(w @ f @ w.T))
    return removed_r / total_r, removed_f / total_f


def write_a(bench, adapter, new_a: dict, name: str) -> Path:
    """A fresh adapter dir under the work dir: ``adapter`` with A of module i replaced by
    ``new_a[i]`` (float64 numpy, cast to A's dtype); other modules untouched."""
    import torch

    out = bench.new_dir(name)
    out.mkdir(parents=True)
    replacements = {adapter.modules[i].key_A: torch.from_numpy(a).to(adapter.modules[i].A.dtype) for i, a in new_a.items()}
    adapter.with_tensors(replacements).write_into(out)
    return out


def write_edit(bench, adapter, solutions, plan: dict[int, tuple[str, float]], name: str) -> Path:
    """An adapter with module i edited at ``plan[i]`` = (gate, mu); other modules untouched."""
    return write_a(bench, adapter, {i: edited_a(adapter.modules[i], solutions[i], gate, mu)[0] for i, (gate, mu) in plan.items()}, name)


def allocate(probes: dict, n_modules: int, grid, budget: float) -> dict[int, float]:
    """Greedy per-module strengths: repeatedly raise the module whose next grid strength adds the
    most forget KL per retain KL, while the summed retain KL stays within ``budget``."""
    level = [-1] * n_modules
    spent = 0.0
    while True:
        best = None
        for i in range(n_modules):
            if level[i] + 1 >= len(grid):
                continue
            nxt, cur = grid[level[i] + 1], grid[level[i]] if level[i] >= 0 else None
            d_f = probes[(i, nxt)][0] - (probes[(i, cur)][0] if cur else 0.0)
            d_r = probes[(i, nxt)][1] - (probes[(i, cur)][1] if cur else 0.0)
            if d_f <= 0 or spent + d_r > budget:
                continue
            ratio = d_f / max(d_r, 1e-9)
            if best is None or ratio > best[0]:
                best = (ratio, i, d_r)
        if best is None:
            return {i: grid[lv] for i, lv in enumerate(level) if lv >= 0}
        level[best[1]] += 1
        spent += best[2]


def search_edit(bench, limit: dict, top: float) -> tuple[Path | None, dict, str | None]:
    """``attenuate --unit direction --gate none --strength TOP`` with a strength search ``limit``
    (``{"retain_kl": 0.2}`` or ``{"keep_retain": 0.95}``) from a fresh statistics pass (the
    product's search, flows/strength.py), forced past a weak verdict: (the written adapter, or None
    when nothing was within the limit; the report's ``strength_search``; the reason when None)."""
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.attenuate import attenuate

    (kind, value), = limit.items()
    out = bench.new_dir(f"{kind}-{value}")
    params = {"unit": "direction", "gate": "none", "strength": top, **limit}
    try:
        run = attenuate(bench.original, out, base=(bench.model, bench.tokenizer), forget=bench.sets["forget"].path,
                        retain=bench.sets["retain"].path, params=params, receipt_key=bench.key, accept_weak=True)
    except NothingToDo as exc:  # no strength of the ladder within the limit: no edit to evaluate
        return None, exc.details.get("strength_search", {}), exc.message
    return out, run.report["summary"]["strength_search"], None


def product_search(bench, budget: float, top: float) -> tuple[Path | None, dict]:
    """``search_edit`` with ``--retain-kl BUDGET``, described for this script's rows."""
    out, search, reason = search_edit(bench, {"retain_kl": budget}, top)
    if out is None:
        return None, {"kind": "search", "budget": budget, "chosen": None, "status": reason}
    return out, {"kind": "search", "budget": budget, "chosen": search["chosen_strength"], "search": search}


def output_units(bench) -> Path:
    """Output units at their defaults (the done-when's yardstick), forced past a weak verdict."""
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.params import MethodParams
    from ucan_cli.methods.ucan.scorefile import save_score_file

    run = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                params=MethodParams(), receipt_key=bench.key)
    path = save_score_file(bench.new_dir("scores-output").with_suffix(".safetensors"), run.stats, run.result, run.meta, force=False)
    out = bench.new_dir("output")
    attenuate(bench.original, out, scores=path, params={}, receipt_key=bench.key, accept_weak=True)
    return out


def run_world(spec: str, size: str, work: Path, grids: dict) -> dict:
    from ucan_cli.flows.score import score
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.params import MethodParams

    t0 = time.perf_counter()
    bench = open_bench(world_of(spec, size), work)
    stats = {}
    for scope in ("response", "all"):
        stats[scope] = score((bench.model, bench.tokenizer), bench.original, bench.sets["forget"], bench.sets["retain"],
                             params=MethodParams(unit="direction"), token_scope=scope, receipt_key=bench.key).stats
    adapter = LoraAdapter.load(bench.original)
    n = len(adapter.modules)
    sol = solve(stats["response"], adapter)
    sol_v = solve(None, adapter, lambda name: stats["all" if "v_proj" in name else "response"])
    every = range(n)

    # the probes: each module alone, forget and retain KL
    probe_keys = [(i, mu) for i in every for mu in grids["probes"]]
    probe_dirs = [write_edit(bench, adapter, sol, {i: ("none", mu)}, f"probe-{i}-{mu}") for i, mu in probe_keys]
    probes = {}
    for start in range(0, len(probe_dirs), CHUNK):
        result = evaluate_dirs(bench, probe_dirs[start:start + CHUNK])
        for key, aid in zip(probe_keys[start:start + CHUNK], result.unlearned_ids):
            m = metrics_of(result, aid)
            probes[key] = (m["forget.kl"], m["retain.kl"])

    edits: dict[str, tuple[Path, dict]] = {"output units (defaults)": (output_units(bench), {})}
    edits["directions, gate noise, mu 1 (the defaults)"] = (
        write_edit(bench, adapter, sol, {i: ("noise", 1.0) for i in every}, "default"), {"kind": "default"})
    for mu in grids["mus"]:
        rho, rho_f = retain_share(adapter, sol, mu)
        edits[f"gate none, mu {mu:g}"] = (write_edit(bench, adapter, sol, {i: ("none", mu) for i in every}, f"global-{mu}"),
                                          {"kind": "global", "mu": mu, "rho": rho, "rho_forget": rho_f})
    declined = {}
    for budget in grids["budgets"]:
        path, info = product_search(bench, budget, grids.get("top", TOP))
        if path is None:
            declined[budget] = info["status"]
        else:
            edits[f"retain-kl {budget:g} (attenuate --retain-kl)"] = (path, info)
    for budget in grids["budgets"]:
        plan = allocate(probes, n, grids["probes"], budget)
        edits[f"per-module, budget {budget:g}"] = (
            write_edit(bench, adapter, sol, {i: ("none", mu) for i, mu in plan.items()}, f"plan-{budget}"),
            {"kind": "plan", "budget": budget, "plan": {adapter.modules[i].name: mu for i, mu in plan.items()}})
    for gate, mu in (("none", 0.2), ("none", 0.3), ("noise", 1.0), ("noise", 10.0)):
        edits[f"v_proj over all positions, gate {gate}, mu {mu:g}"] = (
            write_edit(bench, adapter, sol_v, {i: (gate, mu) for i in every}, f"vall-{gate}-{mu}"),
            {"kind": "scope", "gate": gate, "mu": mu})
    names = list(edits)
    result = evaluate_dirs(bench, [edits[k][0] for k in names])
    ids = dict(zip(names, result.unlearned_ids))
    original, reference = metrics_of(result, "original"), metrics_of(result, "reference")
    rows = {"original": original, "reference": reference}
    for name in names:
        m = metrics_of(result, ids[name])
        rows[name] = {**edits[name][1], **m, **objective(m, original, reference)}
    # strategy 2 (the product): the strength each budget's search chose
    chosen_global = {b: edits[f"retain-kl {b:g} (attenuate --retain-kl)"][1]["chosen"] for b in grids["budgets"] if b not in declined}
    differences = {name: paired_differences(result, ids[name], ids["output units (defaults)"])
                   for name in names if name != "output units (defaults)"}
    return {"world": spec, "path": str(bench.world), "rows": rows, "probes": {f"{adapter.modules[i].name} mu {mu:g}": v for (i, mu), v in probes.items()},
            "top": grids.get("top", TOP), "global_by_budget": chosen_global, "declined": declined, "differences_vs_output": differences,
            "seconds": round(time.perf_counter() - t0, 1)}


def print_world(w: dict) -> None:
    print(f"\n## {w['world']} ({w['seconds']} s)\n")
    print("| edit | rho | " + " | ".join(COLUMNS) + " | J | ok | Δ f R@5 vs output [95% CI] |")
    print("|---|---:|" + "---:|" * (len(COLUMNS) + 2) + "---|")
    for name, r in w["rows"].items():
        d = w["differences_vs_output"].get(name)
        diff = f"{d['recall@5']:+.3f} [{d['recall@5_ci'][0]:+.3f}, {d['recall@5_ci'][1]:+.3f}]" if d else ""
        print(f"| {name} | {fmt(r.get('rho'), 4)} | " + " | ".join(fmt(r.get(c)) for c in COLUMNS)
              + f" | {fmt(r.get('objective'))} | {fmt(r.get('feasible', ''))} | {diff} |")
    print(f"\nstrength chosen by `attenuate --retain-kl` (ladder from {w['top']:g}) per budget: {w['global_by_budget']}")


def tuned_budget(world: dict, budgets, key: str) -> float | None:
    """The feasible budget of lowest J on the tuning world (``key``: 'plan' or 'global')."""
    rows = world["rows"]
    best = None
    for budget in budgets:
        name = _name(world, key, budget)
        if name is None or not rows[name]["feasible"]:
            continue
        if best is None or rows[name]["objective"] < rows[_name(world, key, best)]["objective"]:
            best = budget
    return best


def _name(world: dict, key: str, budget: float) -> str | None:
    if key == "plan":
        return f"per-module, budget {budget:g}"
    name = f"retain-kl {budget:g} (attenuate --retain-kl)"
    return name if name in world["rows"] else None


def summary(worlds: list[dict], budgets) -> dict:
    """The budget tuned on group:0 (if present), applied to every world; the done-when on the mean."""
    import numpy as np

    out = {}
    tuning = next((w for w in worlds if w["world"] == "group:0"), None)
    for key in ("plan", "global"):
        budget = tuned_budget(tuning, budgets, key) if tuning else None
        out[key] = {"tuned_budget": budget, "worlds": {}}
        for b in budgets:
            per = {}
            for w in worlds:
                name = _name(w, key, b)
                if name is None:
                    continue
                r, ref = w["rows"][name], w["rows"]["reference"]
                per[w["world"]] = {"edit": name, "recall@5": r["forget.recall@5"], "mia": r["privacy.mia_auc"],
                                   "ref_recall@5": ref["forget.recall@5"], "ref_mia": ref["privacy.mia_auc"],
                                   "output_recall@5": w["rows"]["output units (defaults)"]["forget.recall@5"],
                                   "retain_share": r["retain_share"], "holdout_share": r["holdout_share"], "feasible": r["feasible"]}
            if len(per) < len(worlds):
                continue
            gap = np.mean([p["recall@5"] - p["ref_recall@5"] for p in per.values()])
            gap_out = np.mean([p["output_recall@5"] - p["ref_recall@5"] for p in per.values()])
            mia = np.mean([p["mia"] - p["ref_mia"] for p in per.values()])
            out[key]["worlds"][b] = {"per_world": per, "gap": float(gap), "gap_output": float(gap_out),
                                     "ratio": float(gap / gap_out) if gap_out else None, "mia_excess": float(mia),
                                     "all_feasible": all(p["feasible"] for p in per.values())}
    return out


def print_summary(s: dict, worlds: list[dict]) -> None:
    names = ", ".join(w["world"] for w in worlds)
    for key, label in (("plan", "per-module strengths"), ("global", "one strength, attenuate --retain-kl")):
        print(f"\n## Measured retain budget, {label} (mean over {names}; tuned on group:0: {s[key]['tuned_budget']})\n")
        print("| budget | gap ratio to output units' (needed <= 0.5) | MIA - reference's (needed <= 0.15) | utility kept on every world |")
        print("|---:|---:|---:|---|")
        for b, v in s[key]["worlds"].items():
            print(f"| {b:g} | {v['ratio']:.2f} ({v['gap']:.3f} / {v['gap_output']:.3f}) | {v['mia_excess']:+.3f} | {fmt(v['all_feasible'])} |")


def main(argv=None) -> int:
    parser = world_parser(__doc__, "the small world, a tiny grid (a smoke run)")
    args = parser.parse_args(argv)
    grids = QUICK if args.quick else {"mus": MUS, "probes": PROBES, "budgets": BUDGETS}
    run_study(args, lambda spec, size, work: run_world(spec, size, work, grids), print_world,
              lambda worlds: summary(worlds, grids["budgets"]), print_summary, prefix="ucan-budget-")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
