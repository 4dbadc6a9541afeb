"""``ucan demo``: U-CAN end to end on a synthetic world, offline, in one command.

The demo runs the same library calls as ``ucan score``, ``ucan attenuate`` and ``ucan eval`` on
a world from ``ucan_cli.demo`` (cached, shipped or built), adds one control the other commands
do not make (the same attenuation budget on randomly chosen units), prints the eval report, says
in two sentences what the numbers mean, and prints the commands that redo each step by hand.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ucan_cli.runtime.batching import fixed_batch_size
from ucan_cli.options import PANEL_DATA, PANEL_OUTPUT, RuntimeOptions, method_options, ucan_command

BUDGET_COLD_S = 120.0
BUDGET_CACHED_S = 30.0
BUDGET_MOVIELENS_COLD_S = 600.0
DATA_CHOICES = ("synthetic", "movielens")
SIZE_CHOICES = ("default", "small")
EVAL_BOOTSTRAP = 200
#: The one U-CAN option the demo takes (the budget); the others keep their defaults.
RatioOption = method_options("ratio")


@ucan_command()
def demo(
    out: Annotated[
        Path, typer.Option("-o", "--out", help="New directory for everything the demo writes.", rich_help_panel=PANEL_OUTPUT)
    ] = Path("ucan-demo"),
    data: Annotated[
        str,
        typer.Option(
            "--data",
            help="synthetic (built in, identical everywhere) or movielens (ML-100K's bench preset from recbole's copy, "
            "built into your cache on first use: about 3-5 min; never shipped).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = "synthetic",
    scenario: Annotated[
        str,
        typer.Option(
            "--scenario",
            help="group: forget users who share a sensitive attribute and its tastes (U-CAN applies); "
            "random: forget a random quarter of the users (U-CAN should find nothing).",
            rich_help_panel=PANEL_DATA,
        ),
    ] = "group",
    size: Annotated[
        str, typer.Option("--size", help="default, or small: a reduced world that builds in seconds (for quick checks).", rich_help_panel=PANEL_DATA)
    ] = "default",
    rebuild: Annotated[
        bool, typer.Option("--rebuild", help="Rebuild the world (base model and adapters) instead of using the cached or shipped one.", rich_help_panel=PANEL_DATA)
    ] = False,
    options: RatioOption = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing -o directory.", rich_help_panel=PANEL_OUTPUT)] = False,
    *,
    rt: RuntimeOptions,
) -> None:
    """Watch U-CAN make a LoRA recommender forget a group of users, offline, in under two minutes.

    A synthetic world (a catalogue, users with shared, group-specific and individual tastes, a
    tiny Llama base, an ORIGINAL LoRA adapter that memorized forget + retain users and a
    REFERENCE adapter retrained without the forget users) is taken from the cache, the package,
    or built (--seed picks the world). Then: score -> attenuate -> eval, exactly the library calls
    of those commands, plus the same budget spent on random units as a control. All data is
    SYNTHETIC: no real people.

    Examples:

      ucan demo

      ucan demo --scenario random -o demo-random

      ucan demo --seed 1 --rebuild -o demo-seed1 --json > demo.json
    """
    import time

    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.params import params_from_options

    t_start = time.perf_counter()
    ratio = options["ratio"]
    if data not in DATA_CHOICES:
        raise InputError(f"--data: {data!r} is not one of {', '.join(DATA_CHOICES)}")
    from ucan_cli.demo.world import SCENARIOS

    if scenario not in SCENARIOS:
        raise InputError(f"--scenario: {scenario!r} is not one of {', '.join(SCENARIOS)}")
    if size not in SIZE_CHOICES:
        raise InputError(f"--size: {size!r} is not one of {', '.join(SIZE_CHOICES)}")
    params_from_options(ratio=ratio)  # checks --ratio as score and attenuate do
    if rt.seed < 0:
        raise InputError(f"--seed must be >= 0 for the demo world, got {rt.seed}")

    from ucan_cli.demo.cache import cache_root, ensure_world
    from ucan_cli.io.outdir import atomic_output_dir, check_output_dir
    from ucan_cli.runtime.models import resolve_device
    from ucan_cli.runtime.threads import torch_threads
    from ucan_cli.ui import UI

    ui = UI(rt)
    if rt.load.places_itself:
        raise InputError("ucan demo runs its own tiny base: --device-map and --load-in-4bit/8bit are for your own base "
                         "(ucan score, attenuate, eval, compare)")
    if rt.max_batch_tokens is not None:
        ui.warn("--max-batch-tokens applies to score and eval; demo does not use it")
    check_output_dir(out, force=force, protected=[cache_root()])  # before a world is built
    if data == "movielens":
        from ucan_cli.demo.movielens_world import ensure_movielens_world

        world_dir, how = ensure_movielens_world(
            rt.seed, scenario, rebuild, size=size, progress=ui.progress, on_build=ui.info
        )
    else:
        world_dir, how = ensure_world(rt.seed, scenario, size, rebuild=rebuild, progress=ui.progress, on_build=ui.info)
    world_s = time.perf_counter() - t_start
    ui.detail(f"world: {world_dir} ({how}, {world_s:.1f} s)")
    import json

    # Everything goes into one temporary sibling, renamed into place at the end: a failed or
    # killed demo leaves OUT as it was (a killed one's sibling is removed by the next run).
    # One torch thread on CPU: the demo's tiny model is overhead-bound (ucan_cli.runtime.threads).
    with atomic_output_dir(out, force=force, protected=[cache_root()]) as tmp, \
            torch_threads(1, when=resolve_device(rt.device).type == "cpu"):
        relocate = _Relocation(out.parent / tmp.name, out)
        doc = _run(ui, rt, relocate.work, world_dir, how, scenario, ratio, data, relocate)
        timings = doc["timings"]
        timings["world_s"] = world_s
        timings["total_s"] = time.perf_counter() - t_start
        cold = how == "built"
        limit = (BUDGET_MOVIELENS_COLD_S if data == "movielens" else BUDGET_COLD_S) if cold else BUDGET_CACHED_S
        doc["budget"] = {
            "kind": "cold (world built)" if cold else f"warm (world {how})",
            "limit_s": limit,
            "total_s": round(timings["total_s"], 2),
            "within": timings["total_s"] <= limit,
        }
        doc = relocate.value(doc)
        relocate.files(tmp)
        (tmp / "demo.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    if rt.json:
        ui.emit_json(doc)
    else:
        _render(ui, doc)


class _Relocation:
    """The demo runs in a temporary sibling ``work`` but its reports name the paths the user will
    find: every path under ``work`` recorded in a document (the score file's meta, the reports,
    the model card, the resolved config, demo.json) is rewritten to the same path under ``out``.

    Paths are recorded as given (``work/...``, relative when ``-o`` is) or resolved; both forms
    are mapped, in every escaping that JSON, TOML and Markdown give them.
    """

    SUFFIXES = (".json", ".md", ".toml")

    def __init__(self, work: Path, out: Path):
        import json

        self.work = work
        pairs = [(str(work.resolve()), str(out.resolve())), (str(work), str(out))]
        self.replacements = []
        for old, new in pairs:
            for ascii_only in (True, False):
                esc = lambda text: json.dumps(text, ensure_ascii=ascii_only)[1:-1]  # noqa: E731
                self.replacements += [(esc(old), esc(new))]
            self.replacements.append((old, new))

    def text(self, text: str) -> str:
        for old, new in self.replacements:
            text = text.replace(old, new)
        return text

    def value(self, value):
        """A JSON-like value with every string relocated."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {key: self.value(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(item) for item in value]
        return value

    def files(self, root: Path) -> None:
        """Relocate the text documents written under ``root`` (never a hash-chained ledger or weights)."""
        for path in sorted(root.rglob("*")):
            if path.is_file() and path.suffix in self.SUFFIXES:
                text = path.read_text(encoding="utf-8")
                moved = self.text(text)
                if moved != text:
                    path.write_text(moved, encoding="utf-8")


def _run(
    ui, rt: RuntimeOptions, out: Path, world_dir: Path, how: str, scenario: str, ratio: float | None, data: str,
    relocate: _Relocation,
) -> dict:
    """Copy the world into ``out`` (the temporary sibling), then score, attenuate, the random-units
    control, and eval."""
    import json
    import shutil
    import time

    from ucan_cli.flows import score as api
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.errors import NothingToDo
    from ucan_cli.methods.ucan.scorefile import save_score_file
    from ucan_cli.methods.ucan.params import params_from_options, params_to_dict
    from ucan_cli.report.score import score_document

    timings: dict[str, float] = {}
    w = out / "world"
    shutil.copytree(world_dir, w)
    manifest = json.loads((w / "world.json").read_text(encoding="utf-8"))
    paths = {
        "base": w / "base", "original": w / "original", "reference": w / "reference",
        "forget": w / "forget.jsonl", "retain": w / "retain.jsonl", "holdout": w / "holdout.jsonl",
        "scores": out / "scores.safetensors", "unlearned": out / "unlearned", "random": out / "random-units",
        "eval": out / "eval",
    }
    common = dict(seed=rt.seed, batch_size=fixed_batch_size(rt.batch_size, rt.device), device=rt.device, dtype=rt.dtype, max_length=rt.max_length,
                  max_samples=rt.max_samples)
    params = params_from_options(ratio=ratio)

    t = time.perf_counter()
    run = api.score(str(paths["base"]), paths["original"], paths["forget"], paths["retain"], params=params,
                    progress=ui.progress, **common)
    save_score_file(paths["scores"], run.stats, run.result, relocate.value(run.meta), force=False)
    score_doc = score_document(run, output=str(paths["scores"]), written=True, top=5)
    timings["score_s"] = time.perf_counter() - t
    for warning in run.warnings:
        ui.warn(warning)

    doc: dict = {
        "demo": {"data": data, "label": manifest.get("label"), "scenario": scenario, "seed": rt.seed,
                 "size": manifest["world"]["size"], "world": how, "out": str(out), "method": params_to_dict(params)},
        "world": {k: manifest[k] for k in ("world", "model", "memorization") if k in manifest},
        "score": {"noise": score_doc["noise"], "verdict": score_doc["verdict"], "selection": score_doc["selection"],
                  "nothing_to_do": score_doc["nothing_to_do"]},
        "attenuate": None,
        "random_units": None,
        "eval": None,
        "commands": _commands(out, paths, rt, ratio, scenario, ran_attenuate=run.nothing_to_do is None),
        "timings": timings,
    }
    if run.nothing_to_do is not None:
        doc["summary"] = _summary_nothing(doc)
        return doc

    t = time.perf_counter()
    attenuate_args = dict(scores=paths["scores"], forget=paths["forget"], params=None if ratio is None else {"ratio": ratio},
                          seed=rt.seed, progress=ui.progress)
    declined = None
    try:
        att = attenuate(paths["original"], paths["unlearned"], **attenuate_args)
    except NothingToDo as exc:  # a weak contrast: attenuate declines; the demo shows what the edit would do
        declined = str(exc)
        ui.warn(f"ucan attenuate: {declined} (exit 4). The demo edits anyway with --accept-weak to show why.")
        att = attenuate(paths["original"], paths["unlearned"], accept_weak=True, **attenuate_args)
    doc["commands"] = _commands(out, paths, rt, ratio, scenario, ran_attenuate=True, accept_weak=declined is not None)
    timings["attenuate_s"] = time.perf_counter() - t
    s = att.result.s
    doc["attenuate"] = {"out": str(paths["unlearned"]), "n_attenuated": int((s < 1).sum()),
                        "budget_sum_1_minus_s": float((1 - s).sum()), "k": int(att.result.k),
                        "declined": declined, "accepted_weak": declined is not None}

    t = time.perf_counter()
    doc["random_units"] = _random_units(paths["original"], paths["random"], att, seed=rt.seed)
    timings["random_units_s"] = time.perf_counter() - t

    t = time.perf_counter()
    doc["eval"] = _evaluate(ui, rt, paths)
    timings["eval_s"] = time.perf_counter() - t
    doc["summary"] = _summary_effect(doc, scenario)
    return doc


def _random_units(original: Path, out_dir: Path, att, *, seed: int) -> dict:
    """The control (``ucan_cli.methods.random_units``, ``--method random``): U-CAN's factors on as
    many randomly drawn live units, seeded by ``seed``; only the adapter is written.

    Same number of attenuated units, same factors, same sum(1 - s); only the choice of units
    differs, so eval can tell the contrast's choice from the budget alone.
    """
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.outdir import atomic_output_dir
    from ucan_cli.methods.registry import get as get_method

    edit = get_method("random").edit(LoraAdapter.load(original), att.stats, att.result.params, seed=seed)
    with atomic_output_dir(out_dir, force=False, protected=[original]) as tmp:
        edit.adapter.write_into(tmp)
    return {"out": str(out_dir), "n_attenuated": edit.summary["n_attenuated"],
            "overlap_with_ucan": edit.result.overlap_with_ucan, "budget_sum_1_minus_s": edit.summary["budget_sum_1_minus_s"]}


def _evaluate(ui, rt: RuntimeOptions, paths: dict) -> dict:
    """``ucan eval`` on original, U-CAN, the random-units control and the reference; report written."""
    from ucan_cli.evaluation.run import adapter_entries, evaluate
    from ucan_cli.io.data import read_records
    from ucan_cli.io.outdir import atomic_output_dir
    from ucan_cli.report.eval import document_json, eval_document, eval_markdown

    entries = adapter_entries(paths["original"], [paths["unlearned"], paths["random"]], reference=paths["reference"])
    sets = {name: read_records(paths[name], name).sample(rt.max_samples, rt.seed) for name in ("forget", "retain", "holdout")}
    result = evaluate(
        str(paths["base"]), None, entries, sets["forget"], sets["retain"], sets["holdout"], bootstrap=EVAL_BOOTSTRAP,
        seed=rt.seed, batch_size=fixed_batch_size(rt.batch_size, rt.device), max_length=rt.max_length, device=rt.device, dtype=rt.dtype,
        progress=ui.progress,
    )
    document = eval_document(result, base=str(paths["base"]))
    with atomic_output_dir(paths["eval"], force=False) as tmp:
        (tmp / "report.json").write_text(document_json(document), encoding="utf-8")
        (tmp / "report.md").write_text(eval_markdown(document), encoding="utf-8")
    return document


def _commands(
    out: Path, paths: dict, rt: RuntimeOptions, ratio: float | None, scenario: str, *, ran_attenuate: bool, accept_weak: bool = False
) -> list[str]:
    """The command lines that redo each step by hand on what the demo wrote (runnable as printed;
    with ``accept_weak`` the attenuate line carries the opt-in the demo needed)."""
    import shlex

    q = lambda p: shlex.quote(str(p))  # noqa: E731
    seed = f" --seed {rt.seed}" if rt.seed else ""
    ratio_opt = f" --ratio {ratio:g}" if ratio is not None else ""
    lines = [
        f"ucan inspect {q(paths['original'])}",
        f"ucan score --base {q(paths['base'])} --adapter {q(paths['original'])} --forget {q(paths['forget'])} "
        f"--retain {q(paths['retain'])}{ratio_opt}{seed} -o {q(paths['scores'])} --force",
        f"ucan attenuate --adapter {q(paths['original'])} --scores {q(paths['scores'])} --forget {q(paths['forget'])}"
        f"{ratio_opt}{' --accept-weak' if accept_weak else ''} -o {q(paths['unlearned'])} --force",
    ]
    if ran_attenuate:
        lines.append(
            f"ucan eval --base {q(paths['base'])} --adapter {q(paths['original'])} --unlearned {q(paths['unlearned'])} "
            f"--unlearned {q(paths['random'])} --reference {q(paths['reference'])} --forget {q(paths['forget'])} "
            f"--retain {q(paths['retain'])} --holdout {q(paths['holdout'])}{seed} --bootstrap {EVAL_BOOTSTRAP} "
            f"-o {q(paths['eval'])} --force"
        )
    return lines


def _metric(document: dict, adapter: str, path: str):
    group, _, name = path.partition(".")
    return document["results"].get(adapter, {}).get(group, {}).get(name)


def _summary_effect(doc: dict, scenario: str) -> dict:
    """The headline numbers and the two sentences that say what they mean."""
    ev = doc["eval"]
    noise = doc["score"]["noise"]

    def m(adapter: str, path: str) -> float | None:
        return _metric(ev, adapter, path)

    numbers = {
        "forget_recall@5": {a: m(a, "forget.recall@5") for a in ("original", "unlearned_1", "unlearned_2", "reference")},
        "retain_recall@5": {a: m(a, "retain.recall@5") for a in ("original", "unlearned_1", "unlearned_2", "reference")},
        "holdout_recall@5": {a: m(a, "holdout.recall@5") for a in ("original", "unlearned_1", "unlearned_2", "reference")},
        "forget_kl": {a: m(a, "forget.kl") for a in ("unlearned_1", "unlearned_2")},
        "retain_kl": {a: m(a, "retain.kl") for a in ("unlearned_1", "unlearned_2")},
        "mia_auc": {a: m(a, "privacy.mia_auc") for a in ("original", "unlearned_1", "unlearned_2", "reference")},
        "max_R_over_sigma0": noise["max_R_over_sigma0"],
        "n_R_above": noise["n_R_above"],
        "n_R0_above": noise["n_R0_above"],
    }
    f, r, h = numbers["forget_recall@5"], numbers["retain_recall@5"], numbers["holdout_recall@5"]
    kf, kr = numbers["forget_kl"], numbers["retain_kl"]
    ratio, ratio_rand = _ratio(kf["unlearned_1"], kr["unlearned_1"]), _ratio(kf["unlearned_2"], kr["unlearned_2"])
    numbers["kl_ratio_forget_over_retain"] = ratio
    numbers["kl_ratio_forget_over_retain_random_units"] = ratio_rand
    auc = numbers["mia_auc"]
    n_att = doc["attenuate"]["n_attenuated"]
    effect = (
        f"the edit shifted the forget set's recommendations by KL {_p(kf['unlearned_1'])} nats, {_x(ratio)} the retain "
        f"set's {_p(kr['unlearned_1'])}; forget Recall@5 went {_p(f['original'])} -> {_p(f['unlearned_1'])} "
        f"({_pts(f['original'], f['unlearned_1'])}; the retrained reference: {_p(f['reference'])}), retain Recall@5 "
        f"{_pts(r['original'], r['unlearned_1'])} and held-out {_pts(h['original'], h['unlearned_1'])}"
    )
    control = (
        f"the same budget on random units shifted the forget set by {_p(kf['unlearned_2'])} nats ({_x(ratio_rand)} its "
        f"retain shift) and forget Recall@5 by {_pts(f['original'], f['unlearned_2'])}"
    )
    selective = ratio is not None and ratio_rand is not None and ratio > ratio_rand and (kf["unlearned_1"] or 0) > (kf["unlearned_2"] or 0)
    # Forgetting, as the targets define it: the forget set moves at least 3x the retain set
    # and its Recall@5 falls by at least 10 points. Anything less is reported as what it is.
    forgets = (
        ratio is not None and ratio >= 3 and f["original"] is not None and f["unlearned_1"] is not None
        and f["original"] - f["unlearned_1"] >= 0.10
    )
    numbers["forgets"] = forgets
    if not selective:
        verdict = "here the contrast's choice did no better than chance"
    elif forgets:
        verdict = "the contrast's choice of units, not the size of the edit, does the forgetting"
    else:
        verdict = (
            "the contrast's units moved the forget set more than random units did, but not enough to call it "
            "forgetting (ucan's bar: forget KL at least 3x retain KL and forget Recall@5 down 10 points); "
            "on this data the adapter does not keep the group apart, so retrain without those users"
        )
    numbers["verdict"] = verdict
    if scenario == "group":
        sentences = [
            f"U-CAN scaled down {n_att} LoRA units that fire far more on the group's records than on anyone else's "
            f"({noise['n_R_above']} units reach 3 sigma0 where retain-vs-retain noise reaches {noise['n_R0_above']}): "
            f"{effect}.",
            f"As a control, {control}: {verdict}"
            + f"; U-CAN is approximate unlearning, and the forget records' membership signal (MIA AUC) went from "
            f"{_p(auc['original'])} to {_p(auc['unlearned_1'])}, where the reference sits at {_p(auc['reference'])}.",
        ]
    else:
        declined = (
            "`ucan attenuate` declined (exit 4, nothing written) because no more units stand out than noise gives; "
            "edited anyway with --accept-weak, "
            if doc["attenuate"].get("accepted_weak") else ""
        )
        sentences = [
            f"The forget users are a representative sample of the same users, so the contrast is close to noise "
            f"(largest R = {_x(noise['max_R_over_sigma0'], 'sigma0')}; {noise['n_R_above']} units reach 3 sigma0 where "
            f"retain-vs-retain noise alone reaches {noise['n_R0_above']}, against hundreds in `--scenario group`); "
            f"{declined}attenuating them hit forget and retain alike: {effect}; {control}.",
            "U-CAN has nothing forget-specific to remove here: to honour such a request, retrain the adapter without "
            "those users (the world's reference adapter is exactly that).",
        ]
    return {"numbers": numbers, "sentences": sentences}


def _summary_nothing(doc: dict) -> dict:
    noise = doc["score"]["noise"]
    sentences = [
        f"score found no forget-specific unit: the largest risk is {_x(noise['max_R_over_sigma0'], 'sigma0')} of the "
        f"retain-vs-retain noise, {noise['n_R_above']} units reach 3 sigma0 (noise alone: {noise['n_R0_above']}), so "
        "`ucan attenuate` would exit 4 (nothing to do) and nothing was edited.",
        "The forget users look like the retain users to the adapter, which stores everyone's answers in the same "
        "units; to honour the request, retrain the adapter without them (the world's reference adapter is exactly "
        "that); compare `ucan demo --scenario group`.",
    ]
    return {"numbers": {"max_R_over_sigma0": noise["max_R_over_sigma0"], "n_R_above": noise["n_R_above"],
                        "n_R0_above": noise["n_R0_above"]}, "sentences": sentences}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _pts(a: float | None, b: float | None) -> str:
    """A change in Recall as signed percentage points."""
    return "n/a" if a is None or b is None else f"{100 * (b - a):+.1f} points"


def _p(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _x(x, unit: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f} x {unit}".strip() if unit else f"{x:.1f}x"


def _render(ui, doc: dict) -> None:
    """The eval table, the verdict, what it means, how to redo it, and the time against the budget."""
    from rich.table import Table

    from ucan_cli.report.eval import render_eval

    d = doc["demo"]
    world = doc["world"]["world"]
    memo = doc["world"].get("memorization", {})
    name = "SYNTHETIC world" if d["data"] == "synthetic" else "MovieLens-100K world (real users; built locally, never share it)"
    ui.info(
        f"{name} (seed {d['seed']}, scenario {d['scenario']}, {d['world']}): {world['n_items']} items, "
        f"{world['n_forget_users']} forget users ({world['records']['forget']} records), {world['n_retain_users']} "
        f"retain users ({world['records']['retain']}), {world['records']['holdout']} held-out records."
    )
    if memo:
        o, r = memo["original"], memo["reference"]
        ui.info(
            f"The original adapter memorized its users: forget Recall@1 {o['forget']['recall@1']:.3f} vs "
            f"{o['holdout_forget_users']['recall@1']:.3f} on the same users' held-out records, and "
            f"{r['forget']['recall@1']:.3f} for the reference that never saw them; MIA AUC {o['mia_auc_forget_vs_holdout']:.3f}."
        )
    verdict, noise = doc["score"]["verdict"], doc["score"]["noise"]
    ui.info(
        f"score's verdict: {verdict['sentence']} (largest R = {_x(noise['max_R_over_sigma0'], 'sigma0')}; "
        f"{noise['n_R_above']} units reach 3 sigma0, retain-vs-retain noise alone {noise['n_R0_above']})."
    )
    if doc["eval"] is not None:
        render_eval(ui, doc["eval"])
        ui.info(
            "unlearned_1 = U-CAN (" + doc["attenuate"]["out"] + "); unlearned_2 = the same factors on "
            f"{doc['random_units']['n_attenuated']} random units ({doc['random_units']['out']}); "
            "reference = retrained without the forget users."
        )
    table = Table(title="What this means", show_header=False, box=None)
    table.add_column()
    for sentence in doc["summary"]["sentences"]:
        table.add_row(sentence)
    ui.table(table)
    ui.info("Redo each step by hand:")
    for line in doc["commands"]:
        ui.info("  " + line)
    b = doc["budget"]
    steps = ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in doc["timings"].items() if k != "total_s")
    message = f"demo took {b['total_s']:.1f} s ({steps}); budget {b['kind']}: {b['limit_s']:.0f} s"
    if b["within"]:
        ui.info(message + ". Everything is in " + d["out"] + ".")
    else:
        ui.warn(message + " exceeded (a busy machine?). Everything is in " + d["out"] + ".")
