"""``evaluate``: the library call behind ``ucan eval`` (SPEC section 4).

It compares the original adapter with one or more unlearned adapters (and optionally a retrained
reference and the base alone) on the forget, retain and held-out record sets, checks the
``--fail-if`` gates, builds the report.json document and, with ``out_dir``, writes report.json,
report.md and (``per_record``) records.jsonl into a temporary directory renamed into place.

Order of work (SPEC section 6, Safety): every check that reads files or options (K, the gates,
the adapters, the record sets and their overlap, the output directory and what it must not
overwrite, the receipt key, the adapters against the base model's module tree) comes before any
model weight loads; a failed run writes nothing. Gates are checked, not enforced: the result
carries the failure (``EvalRun.gate_failure``), and the caller decides the exit (``ucan eval``
exits 3 after writing and printing the report).

The forward passes and the numbers are ``ucan_cli.evaluation.run.evaluate`` (a loaded model in,
an ``EvalResult`` out); this module adds the files, the flags and the document around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ucan_cli.errors import InputError
from ucan_cli.evaluation.metrics import DEFAULT_KS
from ucan_cli.progress import ProgressFactory

REPORT_JSON = "report.json"
REPORT_MD = "report.md"
RECORDS_JSONL = "records.jsonl"


@dataclass
class EvalRun:
    """What ``evaluate`` did.

    Attributes:
        result: the ``EvalResult`` (values, CIs, per-record arrays).
        document: the report.json document (also what ``--json`` prints).
        outcomes: one ``GateOutcome`` per gate and unlearned adapter.
        gate_failure: a one-line summary of the failed gates, or None when all passed.
        out_dir: the written report directory (None without ``out_dir``).
        files: the file names written into ``out_dir``.
        timings: seconds spent loading the model (``load_model_s``).
    """

    result: Any
    document: dict
    outcomes: list = field(default_factory=list)
    gate_failure: str | None = None
    out_dir: Path | None = None
    files: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return list(self.document["warnings"])


def evaluate(
    base: str,
    adapter: str | Path,
    unlearned: Sequence[str | Path],
    forget: str | Path,
    retain: str | Path,
    holdout: str | Path | None = None,
    *,
    reference: str | Path | None = None,
    include_base: bool = False,
    ks: Sequence[int] = DEFAULT_KS,
    bootstrap: int = 1000,
    fail_if: Sequence[str] = (),
    out_dir: str | Path | None = None,
    force: bool = False,
    per_record: bool = False,
    receipt_key: str | Path | None = None,
    template: str = "alpaca",
    max_length: int | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    batch_size: int | str = 16,
    device: str = "auto",
    dtype: str = "auto",
    allow_overlap: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    progress: ProgressFactory | None = None,
    detail: Callable[[str], None] | None = None,
    load=None,
    max_batch_tokens: int | None = None,
) -> EvalRun:
    """Evaluate unlearned adapters against the original on record files; optionally write the report.

    Args:
        base: the base model id or path (loaded once).
        adapter: the original LoRA adapter directory, before unlearning.
        unlearned: one or more unlearned adapter directories (``unlearned_1``, ``unlearned_2``, ...).
        forget, retain, holdout: the record files D_f, D_r and (optional) D_h.
        reference: a retrained reference adapter (trained without D_f).
        include_base: also evaluate the base model alone.
        ks: cut-offs K for Recall/MRR/NDCG/Trade-off.
        bootstrap: paired bootstrap resamples for the 95% CIs (seeded by ``seed``; 0: none).
        fail_if: gate expressions ``GROUP.METRIC OP VALUE`` (docs/report-schema.md).
        out_dir: the new report directory (refused if it exists, unless ``force``).
        per_record: also write records.jsonl (needs ``out_dir``), keyed by HMAC receipts made
            with ``receipt_key`` (default: the user's key, created on first use).
        max_samples: evaluate a seeded sample of at most this many records per set.
        template, max_length, batch_size, device, dtype, allow_overlap, allow_pickle,
        trust_remote_code, load: as for ``ucan_cli.flows.score.score``.
        progress: a progress factory for the forward passes.
        max_batch_tokens: at most this many padded tokens per batch (``runtime.batching``).
        detail: called with notes worth a verbose line (model loading time).

    Raises:
        InputError (exit 2) before any model loads; UcanRuntimeError (exit 1) when a model
        produces NaN. Nothing is written when either is raised.
    """
    from ucan_cli.evaluation.gates import check_gates, failure_summary, parse_gates
    from ucan_cli.evaluation.run import adapter_entries, check_against_base, check_settings
    from ucan_cli.evaluation.run import evaluate as run_evaluation
    from ucan_cli.io.data import check_disjoint, read_records
    from ucan_cli.io.outdir import atomic_output_dir, check_output_dir
    from ucan_cli.io.receipts import key_path
    from ucan_cli.runtime.batching import check_max_batch_tokens, parse_batch_size
    from ucan_cli.runtime.distributed import current as current_ranks
    from ucan_cli.runtime.models import load_base_model, load_tokenizer, model_skeleton, resolve_device, resolve_dtype

    # ---------------------------------------------------------------- checks (no model yet)
    ks = list(check_settings(ks, bootstrap))
    parse_batch_size(batch_size)
    check_max_batch_tokens(max_batch_tokens)
    gates = parse_gates(fail_if, ks=ks, have_reference=reference is not None, have_holdout=holdout is not None)
    if per_record and out_dir is None:
        raise InputError("--per-record writes records.jsonl into the report directory; give -o")
    entries = adapter_entries(adapter, unlearned, reference=reference, include_base=include_base, allow_pickle=allow_pickle)
    sets = {"forget": read_records(forget, "forget"), "retain": read_records(retain, "retain")}
    if holdout is not None:
        sets["holdout"] = read_records(holdout, "holdout")
    sets = {name: s.sample(max_samples, seed) for name, s in sets.items()}
    check_disjoint(sets["forget"], sets["retain"], allow_overlap=allow_overlap)
    # Never write over (or, with --force, delete) anything this run reads.
    protected = [e.path for e in entries] + [forget, retain, holdout, key_path(receipt_key), base, template]
    if out_dir is not None:
        check_output_dir(out_dir, force=force, protected=protected)
    key = fingerprint = None
    if per_record:
        from ucan_cli.io.receipts import key_fingerprint, load_or_create_key

        key = load_or_create_key(receipt_key)
        fingerprint = key_fingerprint(key)
    from ucan_cli.runtime.load import LoadSpec

    load = LoadSpec.merge(load, device=device, dtype=dtype)
    device = resolve_device(load.device)
    dtype = resolve_dtype(load.dtype, device)
    check_against_base(entries, model_skeleton(base, trust_remote_code=trust_remote_code))

    # ---------------------------------------------------------------- the model and the passes
    t = time.perf_counter()
    tokenizer = load_tokenizer(base, trust_remote_code=trust_remote_code)
    model = load_base_model(base, device=device, dtype=dtype, trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, load=load)
    load_s = time.perf_counter() - t
    if detail is not None:
        detail(f"loaded {base} in {load_s:.1f} s on {device} ({dtype})")
    result = run_evaluation(
        model, tokenizer, entries, sets["forget"], sets["retain"], sets.get("holdout"),
        ks=ks, bootstrap=bootstrap, seed=seed, batch_size=batch_size, max_length=max_length,
        template=template, progress=progress, max_batch_tokens=max_batch_tokens,
    )
    if load.places_itself:  # the figures are those of a quantized or device-mapped base
        result.settings["load"] = load.describe()

    # ---------------------------------------------------------------- gates, document, files
    from ucan_cli.report.eval import document_json, eval_document, eval_markdown, records_lines

    outcomes = check_gates(gates, result.results, result.unlearned_ids, result.null_reasons)
    document = eval_document(
        result, base=base, gates=outcomes, gate_texts=[g.text for g in gates], receipt_fingerprint=fingerprint,
        per_record_file=RECORDS_JSONL if per_record else None, extra_stages={"load_model_s": load_s},
    )
    run = EvalRun(result, document, outcomes, failure_summary(outcomes), timings={"load_model_s": load_s})
    if out_dir is None or not current_ranks().main:  # under torchrun only rank 0 writes
        return run
    with atomic_output_dir(out_dir, force=force, protected=protected) as tmp:
        (tmp / REPORT_JSON).write_text(document_json(document), encoding="utf-8")
        (tmp / REPORT_MD).write_text(eval_markdown(document), encoding="utf-8")
        run.files = [REPORT_JSON, REPORT_MD]
        if per_record:
            assert key is not None
            with open(tmp / RECORDS_JSONL, "w", encoding="utf-8") as handle:
                for line in records_lines(result, key):
                    handle.write(line + "\n")
            run.files.append(RECORDS_JSONL)
    run.out_dir = Path(out_dir)
    return run
