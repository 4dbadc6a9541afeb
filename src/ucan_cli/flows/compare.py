"""``compare``: the library call behind ``ucan compare``: every method on the user's own adapter and
data, one evaluation, one table (issue 12).

What it does, in order:

1. **Checks before any model loads.** Every method name is looked up in the registry
   (``ucan_cli.methods.registry``) and every ``--set METHOD.OPTION=V1,V2`` is parsed and validated
   against that method's parameter dataclass (``parse_settings``, ``configurations``): a bad name,
   option or value is an ``InputError`` (exit 2) and nothing runs. ``retrain`` without ``train``
   is refused here too, and the output directory is checked like every command's.
2. **One statistics pass per unit** (``ucan_cli.flows.score.score``) when any chosen method needs
   U-CAN's activation statistics: output units for ``ucan`` and ``random`` (``scores.safetensors``),
   direction moments for ``ucan-direction`` (``scores-direction.safetensors``); every such method
   edits from its unit's file (``attenuate(scores=...)``), so its cost is that one pass, counted
   once per row (forward-pass equivalents = forget + retain records forwarded).
3. **Each configuration through ``ucan_cli.flows.attenuate.attenuate``**, the library call of
   ``ucan attenuate``, into ``methods/<label>/`` (a normal attenuated adapter directory: adapter,
   card, report, ledger). A method that declines (``NothingToDo``: a weak verdict, no eligible
   unit) is a row with its reason and no adapter; the comparison goes on.
4. **Cost at equal forgetting** (``equal_forgetting``): when U-CAN wrote an adapter, its forget
   Recall@5 is measured (one pass over the forget set; with several ``ucan`` rows, the one at its
   defaults, else the first) and every method whose parameters take
   ``until`` (``ga``, ``graddiff``, ``npo``) runs once more with ``--until "forget.recall@5 <= X"``
   checked every step, so its row is the cheapest run (fewest steps) that forgets as much as
   U-CAN's edit, and its cost is what that took. The step budget of those runs is
   ``UNTIL_STEPS_FACTOR`` x the method's own step budget (at least ``UNTIL_MIN_STEPS``); a run
   that does not get there says so (``stop: budget``).
5. **One evaluation** (``ucan_cli.flows.evaluate.evaluate``, ``ucan eval``'s flow) over the
   original, every written adapter and the reference (``reference=``, else the first ``retrain``
   row's adapter), on the same batches, without bootstrap (the table compares methods; run
   ``ucan eval`` on two of them for CIs).
6. **The table**: ``table.json`` (``SCHEMA_VERSION``; docs/report-schema.md, "ucan compare"),
   ``table.md`` and, when matplotlib is installed (``ucan-cli[plot]``), ``compare.png``
   (``ucan_cli.report.plot``). Everything is written into a temporary directory renamed into
   place, so a failed run leaves nothing.

Cost columns: ``forward_equivalents`` counts one record's forward pass as 1 and a backward as 2
(the methods' own ``training.cost``, split in the row's ``cost``; U-CAN and random: the statistics
pass); ``seconds`` is the method's wall time. The shared statistics pass is attributed in full to
every row that uses it (its forward-pass equivalents, seconds and memory peak), because each of
those methods alone would pay it; its own numbers are in ``statistics``, so a total over rows
counts it once per row. ``peak_rss_mb`` is the row's own resident-memory peak where the platform
can reset the high-water mark (Linux; ``peak_rss_scope`` "stretch": it still includes what the
process held before the row), else the process's high-water mark (scope "process": never
decreasing, read it as "at most"); ``peak_cuda_mb`` is the row's own peak of CUDA tensor memory
on a GPU run (``ucan_cli.runtime.memory``).

The reading under the table (``reading``) and the equal-forgetting summary
(``equal_forgetting_summary``) are pure functions of the rows.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from ucan_cli.errors import InputError, NothingToDo
from ucan_cli.progress import ProgressFactory
from ucan_cli.runtime.memory import PeakMemory

SCHEMA_VERSION = 1
TABLE_JSON = "table.json"
TABLE_MD = "table.md"
PLOT_PNG = "compare.png"
SCORES = "scores.safetensors"
#: The methods compared when none are named: every shipped method that needs no training file.
DEFAULT_METHODS = ("ucan", "random", "ga", "graddiff", "npo", "prune", "negate")
#: Equal-forgetting runs may take this many times the method's own step budget ...
UNTIL_STEPS_FACTOR = 5
#: ... and at least this many steps.
UNTIL_MIN_STEPS = 20
#: (column key, result path in ``ucan eval``'s document, heading)
METRICS: tuple[tuple[str, str, str], ...] = (
    ("forget_recall@5", "forget.recall@5", "forget R@5"),
    ("forget_ndcg@10", "forget.ndcg@10", "forget NDCG@10"),
    ("forget_kl", "forget.kl", "forget KL"),
    ("retain_recall@5", "retain.recall@5", "retain R@5"),
    ("retain_ndcg@10", "retain.ndcg@10", "retain NDCG@10"),
    ("holdout_ndcg@10", "holdout.ndcg@10", "holdout NDCG@10"),
    ("mia_auc", "privacy.mia_auc", "MIA AUC"),
    ("tradeoff_retain@10", "tradeoff.retain@10", "Trade-off@10"),
)


@dataclass
class CompareRun:
    """What ``compare`` did: the table document (``table.json``), where it was written, and
    what the user should know."""

    document: dict
    out_dir: Path | None
    files: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Configuration:
    """One row to run: a method, the options given for it, and how the row is labelled."""

    method: str
    options: dict
    label: str
    equal_forgetting: bool = False  # the --until run at U-CAN's forget Recall@5


def parse_settings(settings: Sequence[str], methods: Sequence[str]) -> dict[str, list[tuple[str, list[str]]]]:
    """``["graddiff.lr=0.001,0.003", ...]`` -> {method: [(option, [values...]), ...]}, checked
    against the chosen methods (an option for a method not compared is an error: it would be
    silently ignored otherwise)."""
    out: dict[str, list[tuple[str, list[str]]]] = {}
    for text in settings:
        key, eq, values = text.partition("=")
        method, dot, option = key.strip().partition(".")
        if not eq or not dot or not method or not option or not values.strip():
            raise InputError(f"--set {text!r}: expected METHOD.OPTION=VALUE[,VALUE...], e.g. --set graddiff.lr=0.001")
        if method not in methods:
            raise InputError(f"--set {text!r}: {method!r} is not among --methods ({','.join(methods)})")
        out.setdefault(method, []).append((option.strip().replace("-", "_"), [v.strip() for v in values.split(",")]))
    return out


def _option_field(params_type, option: str, method: str):
    """The parameter field an option names: its field name, or its flag without dashes."""
    for f in fields(params_type):
        spec = f.metadata.get("option")
        flag = spec.long.lstrip("-").replace("-", "_") if spec is not None else None
        if option in (f.name, flag):
            return f
    names = ", ".join(f.name for f in fields(params_type))
    raise InputError(f"--set {method}.{option}: not an option of --method {method} (its options: {names})")


def _convert(value: str, f, method: str) -> Any:
    """A ``--set`` value as the field's type (bool, int, float, str; ``none`` for an optional)."""
    text = value.strip()
    annotation = str(f.type)
    if text.lower() in ("none", "null", "") and "None" in annotation:  # --gate none stays the string "none"
        return None
    try:
        if "bool" in annotation:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(text)
            return text.lower() in ("true", "1", "yes")
        if "int" in annotation and "float" not in annotation:
            return int(text)
        if "float" in annotation:
            return float(text)
    except ValueError:
        raise InputError(f"--set {method}.{f.name}={value}: not a valid {annotation.replace(' | None', '')}") from None
    return text  # strings stay strings (choices are checked by the parameters' validate())


def configurations(methods: Sequence[str], settings: Mapping[str, list[tuple[str, list[str]]]]) -> list[Configuration]:
    """One ``Configuration`` per method and per combination of its ``--set`` values, validated by
    building the method's parameters (``InputError`` naming the option on a bad one)."""
    import itertools

    from ucan_cli.flows.attenuate import _method_params
    from ucan_cli.methods.base import ACTIVATIONS
    from ucan_cli.methods.registry import get as get_method

    out: list[Configuration] = []
    for name in methods:
        method = get_method(name)
        options = settings.get(name, [])
        fields_and_values = []
        for option, values in options:
            f = _option_field(method.params_type, option, name)
            fields_and_values.append((f.name, [_convert(v, f, name) for v in values]))
        combos = list(itertools.product(*(vals for _, vals in fields_and_values))) or [()]
        for combo in combos:
            given = {fname: value for (fname, _), value in zip(fields_and_values, combo)}
            if method.statistics == ACTIVATIONS:
                from ucan_cli.methods.ucan.params import params_from_options

                if "unit" in given:  # one statistics pass per unit, fixed by the method
                    raise InputError(f"--set {name}.unit: compare runs {name} on {unit_of(method)} units; "
                                     "for direction units compare ucan-direction")
                params_from_options(None, **{**given, "unit": unit_of(method)})  # validates; the score file's options are the base
            else:
                _method_params(method, given)
            label = name + ("" if not given else " " + ", ".join(f"{k}={v}" for k, v in given.items()))
            out.append(Configuration(name, given, label))
    return out


def unit_of(method) -> str:
    """The unit an activation method's statistics pass must hold: its fixed ``unit`` (``ucan-direction``:
    direction), else output units."""
    return getattr(method, "unit", None) or "output"


def scores_name(unit: str) -> str:
    return SCORES if unit == "output" else f"scores-{unit}.safetensors"


def _forget_recall_at_5(base, adapter_dir: Path, forget, *, template, max_length, max_samples, seed, batch_size, allow_pickle,
                        trust_remote_code, load) -> tuple[float, int]:
    """Forget Recall@5 of one written adapter (the equal-forgetting target) and the passes it cost
    (``load``: the comparison's ``runtime.load.LoadSpec``, which gives the device and dtype)."""
    from ucan_cli.flows.model_inputs import measure
    from ucan_cli.io.data import read_records
    from ucan_cli.runtime.models import attach_adapter, load_base_model, load_tokenizer

    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    model = load_base_model(base, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, load=load)
    peft = attach_adapter(model, adapter_dir)
    records = read_records(forget, "forget").sample(max_samples, seed)  # the records the methods' --until checks read
    metrics, cost = measure(peft, tokenizer, records, template=template, max_length=max_length, batch_size=batch_size, ks=(5,))
    if "recall@5" not in metrics:
        raise InputError(f"{forget}: the forget records have no candidates; equal forgetting needs forget Recall@5 (--no-equal-forgetting)")
    return float(metrics["recall@5"]), cost


def compare(
    base: str,
    adapter: str | Path,
    forget: str | Path,
    retain: str | Path,
    holdout: str | Path | None,
    out_dir: str | Path,
    *,
    methods: Sequence[str] = DEFAULT_METHODS,
    settings: Sequence[str] = (),
    train: str | Path | None = None,
    reference: str | Path | None = None,
    equal_forgetting: bool = True,
    accept_weak: bool = False,
    template: str = "alpaca",
    max_length: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int | str = 16,
    device: str = "auto",
    dtype: str = "auto",
    allow_overlap: bool = False,
    receipt_key: str | Path | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    force: bool = False,
    cache_dir: str | Path | None = None,
    progress: ProgressFactory | None = None,
    note=None,
    load=None,
    max_batch_tokens: int | None = None,
) -> CompareRun:
    """Run ``methods`` on one adapter and request, evaluate them together, write the table.

    Args:
        base, adapter, forget, retain, holdout: as for ``ucan attenuate`` and ``ucan eval``.
        out_dir: the new directory (``methods/``, ``scores.safetensors``, ``table.json``,
            ``table.md``, ``compare.png``); refused if it exists unless ``force``.
        methods: registry names, each once.
        settings: ``METHOD.OPTION=V1[,V2...]`` strings; several values give one row each (a curve).
        train: the training file for ``retrain`` (required when it is compared).
        reference: a retrained reference adapter; default: the first ``retrain`` row's output.
        equal_forgetting: also run each method that takes ``--until`` to U-CAN's forget Recall@5.
        accept_weak: let U-CAN (and the random control) edit on a weak verdict, as
            ``ucan attenuate --accept-weak`` does (recorded in their reports); default: they decline.
        cache_dir: the statistics cache (``ucan_cli.io.statcache``) for the shared pass, or None:
            re-running a comparison with other ``--set`` values then runs no statistics pass.
        note: called with one line per finished row (progress for the terminal), or None.
        load: a ``runtime.load.LoadSpec`` for every model this comparison loads (instead of
            ``device`` and ``dtype``).

    Raises:
        InputError (exit 2) before anything runs; UcanRuntimeError (exit 1); NothingToDo (exit 4)
        when every method declined. Nothing is written when any of them is raised.
    """
    from ucan_cli.flows.attenuate import attenuate
    from ucan_cli.flows.evaluate import evaluate
    from ucan_cli.io.outdir import atomic_output_dir, check_output_dir
    from ucan_cli.io.receipts import key_path
    from ucan_cli.methods.base import ACTIVATIONS, ADAPTER
    from ucan_cli.methods.registry import get as get_method
    from ucan_cli.methods.ucan.params import ATTENUATE_ONLY

    # ---------------------------------------------------------------- checks (no model yet)
    methods = [m.strip() for m in methods if m.strip()]
    if not methods:
        raise InputError("--methods: name at least one method")
    duplicates = sorted({m for m in methods if methods.count(m) > 1})
    if duplicates:
        raise InputError(f"--methods: {', '.join(duplicates)} named twice (use --set METHOD.OPTION=V1,V2 for several configurations)")
    chosen = {name: get_method(name) for name in methods}
    if "retrain" in methods and train is None:
        raise InputError("--methods retrain needs --train FILE (the records the adapter was trained on)")
    if train is not None and not any(m.takes_train for m in chosen.values()):
        raise InputError("--train: only --methods retrain reads a training file")
    configs = configurations(methods, parse_settings(settings, methods))
    protected = [adapter, forget, retain, holdout, train, reference, template, base, key_path(receipt_key)]
    check_output_dir(out_dir, force=force, protected=protected)
    for path, flag in ((forget, "--forget"), (retain, "--retain"), (holdout, "--holdout"), (train, "--train")):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag} {path}: no such file")
    for path, flag in ((adapter, "--adapter"), (reference, "--reference")):  # eval reads the reference last: check it first
        if path is not None and not (Path(path) / "adapter_config.json").is_file():
            raise InputError(f"{flag} {path}: not a LoRA adapter directory (no adapter_config.json)")
    warnings: list[str] = []
    from ucan_cli.runtime.load import LoadSpec

    load = LoadSpec.merge(load, device=device, dtype=dtype)  # one load spec for every pass of every row
    device, dtype = load.device, load.dtype
    common = dict(template=template, max_length=max_length, max_samples=max_samples, seed=seed, batch_size=batch_size, load=load,
                  max_batch_tokens=max_batch_tokens,
                  allow_overlap=allow_overlap, receipt_key=receipt_key, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    say = note or (lambda line: None)

    rows: list[dict[str, Any]] = []
    with atomic_output_dir(out_dir, force=force, protected=protected) as tmp:
        (tmp / "methods").mkdir()
        # ------------------------------------------------------------ one statistics pass per unit
        stats_docs: dict[str, dict] = {}
        scores_paths: dict[str, Path] = {}
        for unit in dict.fromkeys(unit_of(chosen[c.method]) for c in configs if chosen[c.method].statistics == ACTIVATIONS):
            from ucan_cli.flows.score import score as run_score
            from ucan_cli.methods.ucan.params import MethodParams
            from ucan_cli.methods.ucan.scorefile import save_score_file

            t, peak = time.perf_counter(), PeakMemory.start()
            run = run_score(base, adapter, forget, retain, params=MethodParams(unit=unit), progress=progress, cache_dir=cache_dir, **common)
            scores_paths[unit] = save_score_file(tmp / scores_name(unit), run.stats, run.result, run.meta, force=False)
            n_pass = run.stats.forget.n_records + run.stats.retain.n_records
            stats_docs[unit] = {"file": scores_name(unit), "unit": unit, "forward_equivalents": n_pass,
                                "seconds": round(time.perf_counter() - t, 3), "verdict": run.meta.get("verdict", {}).get("verdict"),
                                "from": run.statistics_from, **_peaks(peak.stop())}
            warnings += [w for w in run.warnings if w not in warnings]
            say(f"statistics ({unit} units): one pass over {n_pass} records ({stats_docs[unit]['seconds']:.1f} s), "
                f"verdict {stats_docs[unit]['verdict']}")
        stats_doc = stats_docs.get("output") or next(iter(stats_docs.values()), None)

        # ------------------------------------------------------------ each configuration
        def run_one(config: Configuration, index: int) -> dict[str, Any]:
            method = chosen[config.method]
            slug = f"{index:02d}-{config.method}" + ("-until" if config.equal_forgetting else "")
            out = tmp / "methods" / slug
            row: dict[str, Any] = {"label": config.label, "method": config.method, "options": dict(config.options),
                                   "equal_forgetting": config.equal_forgetting, "adapter": None, "status": "ok", "reason": None}
            uses_stats = method.statistics == ACTIVATIONS
            t, peak = time.perf_counter(), PeakMemory.start()
            kwargs = dict(common)
            if uses_stats:  # the shared statistics pass of its unit: no model loads
                kwargs.update(scores=scores_paths[unit_of(method)], accept_weak=accept_weak)
                if any(config.options.get(k) is not None for k in ATTENUATE_ONLY):  # a strength search measures its candidates
                    kwargs.update(base=base, retain=retain)
            elif method.statistics != ADAPTER:  # an adapter method (negate) takes neither
                kwargs.update(base=base, retain=retain)
            if method.takes_train:
                kwargs["train"] = train
            try:
                result = attenuate(adapter, out, forget=forget, method=config.method, params=config.options, **kwargs)
            except NothingToDo as exc:
                row.update(status="declined", reason=exc.message)
                result = None
            seconds, peaks = time.perf_counter() - t, _peaks(peak.stop())
            cost, parts = None, None
            if result is not None:
                row["adapter"] = f"methods/{slug}"
                training = result.report.get("training") or {}
                spent = training.get("cost") or {}
                cost = spent.get("forward_equivalents")
                parts = {k: v for k, v in spent.items() if k not in ("forward_equivalents", "seconds")} or None
                row["steps_run"] = training.get("steps_run")
                row["stop_reason"] = training.get("stop_reason")
                row["verdict"] = (result.report.get("verdict") or {}).get("kind")
            if uses_stats:  # the shared pass of its unit is this row's cost (it is every such row's: see the docstring)
                shared = stats_docs[unit_of(method)]
                cost, parts, seconds = shared["forward_equivalents"], {"statistics": shared["forward_equivalents"]}, seconds + shared["seconds"]
                search = (result.report["summary"].get("strength_search") or {}) if result is not None else {}
                if search:  # --retain-kl / --keep-retain: one forward pass per candidate and the original over D_f + D_r
                    cost, parts = cost + search["record_passes"], {**parts, "strength_search": search["record_passes"]}
                peaks = {k: _max(v, shared[k]) if k != "peak_rss_scope" else v for k, v in peaks.items()}
            elif method.statistics == ADAPTER:
                cost = 0
            row.update(forward_equivalents=cost, cost=parts, seconds=round(seconds, 3), **peaks)
            say(f"{config.label}: {row['status']}" + (f" ({row['reason']})" if row["reason"] else "") + f", {seconds:.1f} s")
            return row

        for i, config in enumerate(configs):
            rows.append(run_one(config, i))

        # ------------------------------------------------------------ cost at equal forgetting
        target = None
        # U-CAN's row at the options given without a list (its defaults when none), else its first configuration
        ucan_rows = [r for r in rows if r["method"] == "ucan" and r["adapter"] is not None]
        ucan_row = next((r for r in ucan_rows if not r["options"]), ucan_rows[0] if ucan_rows else None)
        until_methods = [c for c in configs if "until" in {f.name for f in fields(chosen[c.method].params_type)}]
        if equal_forgetting and until_methods:
            if ucan_row is None:
                warnings.append("equal forgetting skipped: U-CAN wrote no adapter here (declined or not compared), so there is no forgetting to match")
            else:
                value, spent = _forget_recall_at_5(base, tmp / ucan_row["adapter"], forget, template=template, max_length=max_length,
                                                   max_samples=max_samples, seed=seed, batch_size=batch_size, allow_pickle=allow_pickle,
                                                   trust_remote_code=trust_remote_code, load=load)
                target = {"metric": "forget.recall@5", "value": value, "forward_equivalents": spent, "row": ucan_row["label"]}
                seen = set()
                for config in until_methods:
                    if config.method in seen:  # one equal-forgetting run per method (its first configuration's options)
                        continue
                    seen.add(config.method)
                    from ucan_cli.flows.attenuate import _method_params

                    base_params = _method_params(chosen[config.method], config.options)
                    options = dict(config.options)
                    options.update(until=f"forget.recall@5 <= {value!r}", check_every=1,
                                   steps=max(UNTIL_MIN_STEPS, UNTIL_STEPS_FACTOR * base_params.steps))
                    label = f"{config.label} @ U-CAN's forgetting"
                    rows.append(run_one(Configuration(config.method, options, label, equal_forgetting=True), len(rows)))

        # ------------------------------------------------------------ one evaluation
        written = [r for r in rows if r["adapter"] is not None]
        ref_path = Path(reference) if reference is not None else None
        ref_row = next((r for r in written if r["method"] == "retrain"), None) if ref_path is None else None
        if ref_row is not None:
            ref_path = tmp / ref_row["adapter"]
        evaluated = [r for r in written if r is not ref_row]
        if not evaluated and ref_row is not None:  # retrain alone: it is the row to show, not a reference
            ref_row, ref_path, evaluated = None, None, written
        if not evaluated:
            raise NothingToDo(
                "every method declined; nothing written: " + "; ".join(f"{r['label']}: {r['reason']}" for r in rows), {"rows": rows}
            )
        t = time.perf_counter()
        ev = evaluate(base, adapter, [tmp / r["adapter"] for r in evaluated], forget, retain, holdout, reference=ref_path,
                      bootstrap=0, template=template, max_length=max_length, max_samples=max_samples, seed=seed, batch_size=batch_size, device=device,
                      dtype=dtype, allow_overlap=allow_overlap, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                      progress=progress, load=load, max_batch_tokens=max_batch_tokens)
        eval_seconds = time.perf_counter() - t
        result = ev.result
        for row, adapter_id in zip(evaluated, result.unlearned_ids):
            row["metrics"] = {key: result.value(adapter_id, path) for key, path, _ in METRICS}
        anchors = {"original": {key: result.value("original", path) for key, path, _ in METRICS}}
        if ref_path is not None:
            anchors["reference"] = {key: result.value("reference", path) for key, path, _ in METRICS}
            if ref_row is not None:
                ref_row["metrics"] = anchors["reference"]
                ref_row["is_reference"] = True
        for row in rows:
            row.setdefault("metrics", None)
            row["gap_to_reference"] = _gaps(row["metrics"], anchors.get("reference"))
        ids = {adapter_id: row["label"] for row, adapter_id in zip(evaluated, result.unlearned_ids)}
        for w in ev.warnings:  # eval names adapters unlearned_1, ...; the table names rows
            head, sep, rest = w.partition(": ")
            w = f"{ids[head]}: {rest}" if sep and head in ids else w
            if w not in warnings:
                warnings.append(w)

        summary = equal_forgetting_summary(rows, ucan_row, target)
        document = {
            "schema_version": SCHEMA_VERSION,
            "command": "compare",
            "inputs": {"base": str(base), "adapter": str(adapter), "forget": str(forget), "retain": str(retain),
                       "holdout": str(holdout) if holdout is not None else None, "train": str(train) if train is not None else None,
                       "reference": str(reference) if reference is not None else (ref_row["adapter"] if ref_row else None)},
            "settings": {"methods": list(methods), "set": list(settings), "equal_forgetting": equal_forgetting,
                         "accept_weak": accept_weak, "seed": seed,
                         "batch_size": batch_size, "template": template, "max_length": max_length,
                         "until_steps": {"factor": UNTIL_STEPS_FACTOR, "min": UNTIL_MIN_STEPS}},
            "statistics": stats_doc,
            "statistics_passes": list(stats_docs.values()),
            "equal_forgetting_target": target,
            "equal_forgetting": summary,
            "anchors": anchors,
            "rows": rows,
            "evaluation": {"seconds": round(eval_seconds, 3), "bootstrap": 0},
            "reading": reading(rows, anchors, summary, warnings),
            "warnings": warnings,
        }
        from ucan_cli.report.compare import document_json, table_markdown

        (tmp / TABLE_JSON).write_text(document_json(document), encoding="utf-8")
        (tmp / TABLE_MD).write_text(table_markdown(document), encoding="utf-8")
        files = [TABLE_JSON, TABLE_MD]
        from ucan_cli.report.plot import plot_available, write_plot

        if plot_available():
            write_plot(document, tmp / PLOT_PNG)
            files.append(PLOT_PNG)
        else:
            warnings.append("no compare.png: plotting needs matplotlib (pip install 'ucan-cli[plot]'); the tables are written")
    return CompareRun(document=document, out_dir=Path(out_dir), files=files, warnings=warnings)


def _gaps(metrics: Mapping[str, Any] | None, reference: Mapping[str, Any] | None) -> dict[str, float | None] | None:
    """|row - reference| for forget Recall@5 and MIA AUC (the two numbers that say how close a
    method came to never having seen the forget users), None without a reference."""
    if metrics is None or reference is None:
        return None
    out = {}
    for key in ("forget_recall@5", "mia_auc"):
        a, b = metrics.get(key), reference.get(key)
        out[key] = None if a is None or b is None else round(abs(float(a) - float(b)), 6)
    return out


def _peaks(measured: Mapping[str, Any]) -> dict[str, Any]:
    """``PeakMemory.stop()``'s numbers as row fields."""
    return {"peak_rss_mb": measured["rss_mb"], "peak_rss_scope": measured["rss_scope"], "peak_cuda_mb": measured["cuda_mb"]}


def _max(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else max(a, b)


def _ratio(cost: float | None, of: float | None) -> float | None:
    return None if cost is None or not of else round(cost / of, 3)


def equal_forgetting_summary(rows: Sequence[Mapping[str, Any]], ucan_row: Mapping[str, Any] | None,
                             target: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Issue 12 item 4 from the rows: for each equal-forgetting run, whether it reached U-CAN's
    forget Recall@5, in how many steps, and what that cost beside U-CAN's edit.

    ``training_forward_equivalents`` is what reaching the target took (training and setup: what a
    rerun at that step count would pay); ``forward_equivalents`` adds the ``--until`` checks (a
    forget-set pass per step: what finding the step count cost). ``x_ucan`` divides each by U-CAN's
    forward-pass equivalents (its statistics pass). None when no target was set."""
    if target is None or ucan_row is None:
        return None
    of = ucan_row["forward_equivalents"]
    runs = []
    for row in rows:
        if not row["equal_forgetting"]:
            continue
        parts = row.get("cost") or {}
        training = sum(v for k, v in parts.items() if k != "checks") if row["status"] == "ok" else None
        runs.append({"label": row["label"], "method": row["method"], "status": row["status"], "reason": row["reason"],
                     "reached": row["status"] == "ok" and row.get("stop_reason") == "target", "steps": row.get("steps_run"),
                     "training_forward_equivalents": training, "check_forward_equivalents": parts.get("checks"),
                     "forward_equivalents": row["forward_equivalents"], "seconds": row["seconds"],
                     "x_ucan": _ratio(training, of), "x_ucan_with_checks": _ratio(row["forward_equivalents"], of)})
    return {"metric": target["metric"], "value": target["value"],
            "ucan": {"label": ucan_row["label"], "forward_equivalents": of, "seconds": ucan_row["seconds"]}, "runs": runs}


#: A method "keeps utility" when its retain NDCG@10 is at least this share of the original's.
UTILITY_FLOOR = 0.95


def reading(rows: Sequence[Mapping[str, Any]], anchors: Mapping[str, Mapping[str, Any]],
            equal_forgetting: Mapping[str, Any] | None = None, warnings: Sequence[str] = ()) -> str:
    """One honest paragraph under the table.

    In order: what declined (U-CAN declining means its contrast found nothing above noise: then
    which methods acted); among the methods that keep retain NDCG@10 within ``UTILITY_FLOOR`` of
    the original's and that eval does not flag as a possible collapse (``warnings``: a retain
    perplexity blown up is not acceptable utility either), the one closest to the reference
    (smallest gap in forget Recall@5 plus gap in MIA AUC; without a reference, the one that forgets
    most), then any flagged method that came closer, with its flag, and U-CAN's edit beside them;
    what each gradient method paid to reach U-CAN's forgetting. Pure: it reads what it is given."""
    original = anchors["original"]
    reference = anchors.get("reference")
    floor = original.get("retain_ndcg@10")
    parts: list[str] = []
    acted = [r["label"] for r in rows if r["status"] == "ok" and not r.get("is_reference")]
    ucan_declined = [r for r in rows if r["method"] == "ucan" and r["status"] == "declined"]
    if ucan_declined:
        parts.append(f"U-CAN declined: its contrast found nothing to act on ({ucan_declined[0]['reason'].rstrip('.')}); "
                     + (f"acted: {', '.join(acted)}." if acted else "no other method acted either."))
    others = [r["label"] for r in rows if r["status"] == "declined" and r["method"] != "ucan"]
    if others:
        parts.append(f"Declined (nothing written): {', '.join(others)}.")
    candidates = [r for r in rows if r.get("metrics") and not r.get("is_reference") and r["metrics"].get("forget_recall@5") is not None]
    if floor is not None:
        kept = [r for r in candidates if r["metrics"].get("retain_ndcg@10") is not None and r["metrics"]["retain_ndcg@10"] >= UTILITY_FLOOR * floor]
    else:
        kept = candidates
    with_reference = reference is not None and reference.get("forget_recall@5") is not None

    def flags(row) -> list[str]:  # eval's collapse warnings on this row (they are prefixed with its label)
        return [w.split(": ", 1)[1] for w in warnings if w.startswith(row["label"] + ": ") and "collapse" in w]

    def closeness(row) -> float:  # lower is better
        if with_reference:
            g = row.get("gap_to_reference") or {}
            return (g.get("forget_recall@5") or 0.0) + (g.get("mia_auc") or 0.0)
        return row["metrics"]["forget_recall@5"]

    clean = [r for r in kept if not flags(r)]
    if not kept:
        if candidates:
            parts.append(f"No method kept retain NDCG@10 within {UTILITY_FLOOR}x the original's.")
    elif not clean:
        parts.append(f"Every method that kept retain NDCG@10 within {UTILITY_FLOOR}x the original's is flagged by eval: "
                     + "; ".join(f"{r['label']}: {', '.join(flags(r))}" for r in kept) + ".")
    else:
        best = min(clean, key=closeness)
        which = "Closest to the reference" if with_reference else "Most forgetting"
        m = best["metrics"]
        text = (f"{which} with retain NDCG@10 within {UTILITY_FLOOR}x the original's and no collapse flagged: {best['label']} "
                f"(forget R@5 {original.get('forget_recall@5'):.3f} -> {m['forget_recall@5']:.3f}")
        if with_reference:
            text += f", the reference's {reference['forget_recall@5']:.3f}"
            if m.get("mia_auc") is not None and reference.get("mia_auc") is not None:
                text += f"; MIA AUC {m['mia_auc']:.3f}, the reference's {reference['mia_auc']:.3f}"
        text += f"; retain NDCG@10 {m['retain_ndcg@10']:.3f}"
        if best.get("forward_equivalents") is not None:
            text += f"; {best['forward_equivalents']} forward-pass equivalents"
        parts.append(text + ").")
        closer = [r for r in kept if flags(r) and closeness(r) < closeness(best)]
        for r in closer:
            parts.append(f"{r['label']} comes closer (forget R@5 {r['metrics']['forget_recall@5']:.3f}, retain NDCG@10 "
                         f"{r['metrics']['retain_ndcg@10']:.3f}) but eval flags {'; '.join(flags(r))}.")
        ucan = next((r for r in rows if r["method"] == "ucan" and r.get("metrics")), None)
        if ucan is not None and ucan is not best:
            u = ucan["metrics"]
            parts.append(f"U-CAN's edit ({ucan['label']}): forget R@5 {u['forget_recall@5']:.3f}, retain NDCG@10 "
                         f"{u['retain_ndcg@10']:.3f}, {ucan['forward_equivalents']} forward-pass equivalents.")
    if equal_forgetting and equal_forgetting["runs"]:
        said = []
        for run in equal_forgetting["runs"]:
            if run["reached"]:
                said.append(f"{run['method']} in {run['steps']} steps ({run['training_forward_equivalents']} to train, "
                            f"{run['x_ucan']}x U-CAN's; {run['forward_equivalents']} with its checks)")
            elif run["status"] == "declined":
                said.append(f"{run['method']}: already there before training")
            else:
                said.append(f"{run['method']} not within {run['steps']} steps")
        parts.append(f"To forget as much as U-CAN (forget R@5 <= {equal_forgetting['value']:.3f}, "
                     f"{equal_forgetting['ucan']['forward_equivalents']} forward-pass equivalents): " + "; ".join(said) + ".")
    if reference is None:
        parts.append("No reference: pass --reference DIR or compare retrain (--train FILE) to see the gap to never having trained on them.")
    parts.append("One request, one seed: check the chosen adapter with `ucan eval` (bootstrap CIs) before relying on it.")
    return " ".join(parts)


__all__ = ["CompareRun", "Configuration", "DEFAULT_METHODS", "METRICS", "SCHEMA_VERSION", "UTILITY_FLOOR", "compare", "configurations",
           "equal_forgetting_summary", "parse_settings", "reading"]
