"""``attenuate --unit direction --retain-kl NATS | --keep-retain SHARE``: the strength chosen by measuring its edits.

A fixed ``--strength`` costs a different share of the retain set's behaviour on every adapter: the
retain cost of a given mu depends on the scale of the generalized eigenvalues, which changes with
the world and the width (docs/results.md, "Direction units under a measured retain budget"). With
``--retain-kl`` or ``--keep-retain`` the strength is measured instead of guessed:

1. the candidates are ``--strength``, ``--strength / 2``, ..., ``--strength / 128``
   (``methods.ucan.strength.ladder``); each is the same solve from the same moments (no pass);
2. every candidate adapter is written to a temporary directory and evaluated in one
   ``evaluation.run.evaluate`` call with the original, on the forget and retain records (the
   same sampled sets the statistics used): one forward pass over D_f and D_r per candidate,
   plus the original's;
3. the largest candidate within the limit (``methods.ucan.strength.Limit``: a retain KL, the KL
   of the retain set's recommendations from the original's exactly as ``ucan eval`` reports
   ``retain.kl``, of at most ``--retain-kl`` nats; or a retain NDCG@10 of at least
   ``--keep-retain`` x the original's, as ``ucan eval`` reports ``retain.ndcg@10``) is refined by
   two bisections towards the next larger one (one more evaluation each, with the original:
   2 x 2 passes); the strength used is the largest measured one within the limit
   (``methods.ucan.strength.choose``); none within it is ``NothingToDo``.

The report keeps every candidate's retain KL, retain NDCG@10 and its share of the original's,
forget KL and forget Recall@5 (where the records rank candidates): the curve of forgetting against
retain cost that the choice was read from. Nothing here writes outside its temporary directory.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ucan_cli.errors import NothingToDo
from ucan_cli.methods.ucan.strength import Limit


@dataclass
class StrengthSearch:
    """What the search measured and chose.

    Attributes:
        limit: what a candidate must keep (``methods.ucan.strength.Limit``).
        candidates: one dict per measured strength, largest first: ``strength``, ``stage``
            (``ladder`` or ``refine``), ``edited`` (False when every factor rounds to 1 at that
            strength: nothing to measure), ``retain_kl``, ``retain_ndcg@10``,
            ``retain_ndcg@10_share`` (over the original's), ``forget_kl``, ``forget_recall@5``
            (None where not measured or not defined).
        chosen: the chosen strength (None: nothing within the limit).
        original_retain_ndcg: the original's retain NDCG@10 (None without candidates).
        record_passes: records run through the model (every candidate and the original, D_f + D_r).
        seconds: wall time of the search (writing candidates, loading, evaluating).
    """

    limit: Limit
    candidates: list[dict[str, Any]]
    chosen: float | None
    original_retain_ndcg: float | None
    record_passes: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        kl = self.limit.kind == "retain_kl"
        return {"limit": self.limit.kind, "retain_kl_budget": self.limit.value if kl else None,
                "keep_retain": None if kl else self.limit.value, "chosen_strength": self.chosen,
                "original_retain_ndcg@10": self.original_retain_ndcg, "candidates": self.candidates,
                "record_passes": self.record_passes, "seconds": self.seconds}


def search_strength(
    chosen, source, stats, params, *, base, forget_set, retain_set, template: str, max_length: int | None,
    batch_size, max_batch_tokens: int | None, seed: int, load, allow_pickle: bool, trust_remote_code: bool, progress=None,
) -> StrengthSearch:
    """Measure the ladder below ``params.strength``, choose, refine (see the module docstring).

    ``base`` is a model id or path (loaded here with ``load``, a ``runtime.load.LoadSpec``) or a
    ``(model, tokenizer)`` pair. Raises ``NothingToDo`` when no strength of the ladder edits
    anything or none is within ``params``' limit (``--retain-kl`` or ``--keep-retain``).
    """
    from ucan_cli.methods.ucan.strength import REFINE_STEPS, choose, ladder, midpoint

    t0 = time.perf_counter()
    limit = Limit.of(params)
    if limit is None:
        raise ValueError("search_strength needs params.retain_kl or params.keep_retain")
    strengths = ladder(float(params.strength))
    measure = _Measure(chosen, source, stats, params, base=base, forget_set=forget_set, retain_set=retain_set, template=template,
                       max_length=max_length, batch_size=batch_size, max_batch_tokens=max_batch_tokens, seed=seed, load=load,
                       allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, progress=progress)
    try:
        measure(strengths, "ladder")
        if not any(c["edited"] for c in measure.candidates):
            raise NothingToDo(
                f"nothing to do: no strength from {strengths[0]:g} down to {strengths[-1]:g} changes the adapter "
                "(every factor rounds to 1)"
            )
        pick = choose(strengths, [c[limit.measure] for c in measure.candidates], limit)
        if pick is not None and pick > 0:  # bisect towards the next larger strength, which was over the limit
            low, high = strengths[pick], strengths[pick - 1]
            for _ in range(REFINE_STEPS):
                mid = midpoint(low, high)
                row = measure([mid], "refine")[0]
                if limit.within(row):
                    low = mid
                else:
                    high = mid
    finally:
        measure.close()
    candidates = sorted(measure.candidates, key=lambda c: -c["strength"])
    pick = choose([c["strength"] for c in candidates], [c[limit.measure] for c in candidates], limit)
    search = StrengthSearch(
        limit=limit, candidates=candidates, chosen=None if pick is None else candidates[pick]["strength"],
        original_retain_ndcg=measure.original_retain_ndcg, record_passes=measure.record_passes,
        seconds=time.perf_counter() - t0,
    )
    if pick is None:
        measured = [c for c in candidates if c[limit.measure] is not None]
        closest = (min if limit.kind == "retain_kl" else max)(measured, key=lambda c: c[limit.measure]) if measured else None
        best = "" if closest is None else (
            f" (the closest: {closest[limit.measure]:.4g} at strength {closest['strength']:g})")
        raise NothingToDo(
            f"nothing to do: no strength from {strengths[0]:g} down to {strengths[-1]:g} keeps {limit.describe()} "
            f"({limit.flag} {limit.value:g}){best}; loosen {limit.flag}, or this request costs more of the retain set "
            "than you allowed",
            {"strength_search": search.to_dict()},
        )
    return search


class _Measure:
    """Measures candidate strengths: each call writes the candidates' adapters to a temporary
    directory and evaluates them with the original in one ``evaluation.run.evaluate`` (the model is
    loaded on the first call and kept); ``candidates`` and ``record_passes`` accumulate."""

    def __init__(self, chosen, source, stats, params, *, base, forget_set, retain_set, template, max_length, batch_size,
                 max_batch_tokens, seed, load, allow_pickle, trust_remote_code, progress):
        self.method, self.source, self.stats, self.params, self.base = chosen, source, stats, params, base
        self.sets = (forget_set, retain_set)
        self.options = dict(template=template, max_length=max_length, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                            seed=seed, progress=progress)
        self.load, self.allow_pickle, self.trust_remote_code = load, allow_pickle, trust_remote_code
        self.candidates: list[dict[str, Any]] = []
        self.original_retain_ndcg: float | None = None
        self.record_passes = 0
        self._model = None
        self._tmp = tempfile.TemporaryDirectory(prefix="ucan-strength-")

    def __call__(self, strengths: list[float], stage: str) -> list[dict[str, Any]]:
        from ucan_cli.evaluation.run import adapter_entries
        from ucan_cli.evaluation.run import evaluate as run_evaluation

        rows, dirs = [], []
        for mu in strengths:
            edit = self.method.edit(self.source, self.stats, replace(self.params, strength=mu, retain_kl=None, keep_retain=None),
                                    seed=self.options["seed"])
            row = {"strength": mu, "stage": stage, "edited": edit.adapter is not self.source, "retain_kl": None,
                   "retain_ndcg@10": None, "retain_ndcg@10_share": None, "forget_kl": None, "forget_recall@5": None}
            rows.append(row)
            if row["edited"]:
                out = Path(self._tmp.name) / f"candidate-{len(self.candidates) + len(rows)}"
                out.mkdir()
                edit.adapter.write_into(out)
                dirs.append((row, out))
        self.candidates.extend(rows)
        if not dirs:
            return rows
        if self._model is None:
            self._model = _model(self.base, self.load, allow_pickle=self.allow_pickle, trust_remote_code=self.trust_remote_code)
        model, tokenizer = self._model
        entries = adapter_entries(self.source.path, [d for _, d in dirs], allow_pickle=self.allow_pickle)
        forget_set, retain_set = self.sets
        result = run_evaluation(model, tokenizer, entries, forget_set, retain_set, None, ks=(5, 10), bootstrap=0, **self.options)
        self.original_retain_ndcg = result.value("original", "retain.ndcg@10")
        for (row, _), ident in zip(dirs, result.unlearned_ids):
            ndcg = result.value(ident, "retain.ndcg@10")
            share = ndcg / self.original_retain_ndcg if ndcg is not None and self.original_retain_ndcg else None
            row.update(retain_kl=result.value(ident, "retain.kl"), forget_kl=result.value(ident, "forget.kl"),
                       **{"retain_ndcg@10": ndcg, "retain_ndcg@10_share": share,
                          "forget_recall@5": result.value(ident, "forget.recall@5")})
        self.record_passes += (len(dirs) + 1) * (len(forget_set) + len(retain_set))
        return rows

    def close(self) -> None:
        self._tmp.cleanup()


def _model(base, load, *, allow_pickle: bool, trust_remote_code: bool):
    """(model, tokenizer): the caller's pair, or loaded from a path/id like ``ucan eval`` does."""
    if isinstance(base, tuple):
        return base
    from ucan_cli.runtime.models import load_base_model, load_tokenizer

    tokenizer = load_tokenizer(str(base), trust_remote_code=trust_remote_code)
    # the load spec gives the device and dtype (resolved there) and any device map or quantization
    model = load_base_model(str(base), trust_remote_code=trust_remote_code, allow_pickle=allow_pickle, load=load)
    return model, tokenizer


__all__ = ["StrengthSearch", "search_strength"]
