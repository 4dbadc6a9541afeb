"""Turn the runner's per-record arrays into the numbers of ``ucan eval``'s report (SPEC section 4).

``evaluation/run.py`` leaves, per record set and adapter, candidate log-probabilities, NLL sums,
token counts and (without candidates) full-vocabulary KL and greedy tokens. ``summarize`` makes
from them, with the pure functions of ``evaluation/metrics.py``:

- per-record values (ranks, Recall/MRR/NDCG/M@K, KL to the original, prediction shift), kept
  for records.jsonl and for the bootstrap;
- the groups of the report per adapter: ``forget``, ``retain``, ``holdout`` (means over the
  set's scope, PPL, tied records), ``tradeoff`` (r = D_r and r = D_h), ``reference`` (gap and
  KL to the retrained reference), ``privacy`` (MIA AUC) and ``cost`` (forward time, sequences);
- paired-bootstrap 95% CIs of each value and of its difference to the original's: one seeded
  index matrix per set, shared by every adapter;
- null values with their reason (no candidates, no holdout, a relative drop of 0, overflow);
- warnings: K at or above a candidate count, truncated prompts, the original's memorization
  gap, and collapse of an unlearned adapter.

The holdout set's scope: its metrics average over the retain users' held-out records when every
record carries a ``user_id`` (generalization utility of the users we keep), else over all of it;
membership inference always uses all of D_h. Nothing here runs a model or touches a file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ucan_cli.evaluation import metrics as M
from ucan_cli.io.data import Record

if TYPE_CHECKING:
    from ucan_cli.evaluation.run import AdapterEntry, SetPass


@dataclass
class Summary:
    """What ``summarize`` made of the set passes (see ``EvalResult`` for the fields' meaning).

    ``scopes`` holds the record indices each set's metrics average over; ``holdout`` says how the
    holdout scope was chosen (``scope``, and ``empty_reason`` / ``tradeoff_reason`` when null).
    """

    results: dict[str, dict[str, dict[str, Any]]]
    null_reasons: dict[str, dict[str, str]]
    ci: dict[str, dict[str, dict[str, list[float]]]]
    ci_vs_original: dict[str, dict[str, dict[str, list[float]]]]
    per_record: dict[str, dict[str, dict[str, np.ndarray]]]
    memorization_gap: dict | None
    warnings: list[str]
    scopes: dict[str, np.ndarray]
    holdout: dict[str, Any]


def summarize(
    passes: Mapping[str, SetPass],
    adapters: Sequence[AdapterEntry],
    ks: Sequence[int],
    retain: Sequence[Record],
    *,
    bootstrap: int,
    seed: int,
) -> Summary:
    """Every group of the report, its CIs and warnings, from the passes of ``evaluation.run``.

    ``adapters`` are the report's columns (the original first); ``retain`` the retain records
    (their users select the holdout scope); ``bootstrap`` the number of paired resamples (0: no
    CIs), seeded per set from ``seed``.
    """
    scopes, hinfo = _scopes(passes, retain)
    b = _Builder(passes, list(adapters), ks, scopes, bootstrap, seed)
    b.set_group("forget")
    b.set_group("retain")
    if "holdout" in passes:
        b.set_group("holdout", hinfo.get("empty_reason"))
    b.tradeoff("retain", "retain", None)
    if "holdout" in passes:
        b.tradeoff("holdout", "holdout", hinfo.get("tradeoff_reason"))
    if b.reference is not None:
        b.reference_gap()
    gap = b.privacy("holdout" in passes)

    notes = _data_warnings(passes, scopes, ks)
    if gap is not None and gap["warn"]:
        notes.append(gap["message"])
    notes += b.collapse_warnings()
    b.cost()
    return Summary(b.results, b.reasons, b.ci, b.ci_delta, b.per_record, gap, notes, scopes, hinfo)


def _seed_for(seed: int, name: str) -> int:
    """A per-set bootstrap seed derived from the user's seed (independent across sets)."""
    return int.from_bytes(hashlib.sha256(f"ucan-eval:{seed}:{name}".encode()).digest()[:4], "little")


def _per_record(sp: SetPass, a: str, original: str, reference: str | None, ks: Sequence[int]) -> dict[str, np.ndarray]:
    """Per-record values of adapter ``a`` on a whole set (NaN where a value does not exist)."""
    out: dict[str, np.ndarray] = {"nll": sp.nll[a], "tokens": sp.tokens.astype(np.float64)}
    if sp.has_ranking:
        logp = sp.cand_logp
        ranks = M.candidate_ranks(logp[a], sp.target)
        out["rank"] = ranks.astype(np.float64)
        for k in ks:
            rec, mrr, ndcg = M.recall_at_k(ranks, k), M.mrr_at_k(ranks, k), M.ndcg_at_k(ranks, k)
            out[f"recall@{k}"], out[f"mrr@{k}"], out[f"ndcg@{k}"] = rec, mrr, ndcg
            out[f"m@{k}"] = (rec + mrr + ndcg) / 3.0
        out["ndcg@10"] = M.ndcg_at_k(ranks, 10)  # for the collapse warning, whatever -k says
        out["kl"] = M.kl_from_scores(logp[original], logp[a])
        out["shift"] = M.top1_changed(M.top1_candidates(logp[original]), M.top1_candidates(logp[a]))
        if reference is not None and sp.name == "forget":
            out["kl_reference"] = M.kl_from_scores(logp[reference], logp[a])
    else:
        out["kl"] = sp.kl_original[a]
        out["shift"] = M.top1_changed(sp.top1[original], sp.top1[a])
        if reference is not None and sp.name == "forget":
            out["kl_reference"] = sp.kl_reference[a]
    return out


def _ranking_reason(sp: SetPass) -> str | None:
    if sp.has_ranking:
        return None
    if sp.missing_candidates == sp.n:
        return f"the {sp.name} records carry no candidates (KL and shift use the full vocabulary)"
    return (
        f"{sp.missing_candidates} of {sp.n} {sp.name} records have no candidates, so ranking is undefined "
        "for the set (KL and shift use the full vocabulary)"
    )


def _interval(ci: tuple[float, float] | None) -> list[float] | None:
    return None if ci is None else [ci[0], ci[1]]


class _Builder:
    """Builds results, null reasons and CIs from the set passes (one instance per evaluation)."""

    def __init__(self, passes, adapters, ks, scopes, bootstrap, seed):
        self.passes: Mapping[str, SetPass] = passes
        self.adapters: list[AdapterEntry] = adapters
        self.ks = tuple(ks)
        self.scopes: dict[str, np.ndarray] = scopes
        self.n_boot = bootstrap
        self.seed = seed
        self.original = adapters[0].id
        ref = [a.id for a in adapters if a.role == "reference"]
        self.reference = ref[0] if ref else None
        self.results: dict[str, dict[str, dict[str, Any]]] = {a.id: {} for a in adapters}
        self.reasons: dict[str, dict[str, str]] = {a.id: {} for a in adapters}
        self.ci: dict[str, dict[str, dict[str, list[float]]]] = {a.id: {} for a in adapters}
        self.ci_delta: dict[str, dict[str, dict[str, list[float]]]] = {a.id: {} for a in adapters}
        self.per_record: dict[str, dict[str, dict[str, np.ndarray]]] = {}
        self.indices: dict[str, np.ndarray | None] = {}
        for name, sp in passes.items():
            self.per_record[name] = {a.id: _per_record(sp, a.id, self.original, self.reference, ks) for a in adapters}
            scope = scopes[name]
            self.indices[name] = (
                scope[M.paired_bootstrap_indices(scope.size, bootstrap, _seed_for(seed, name))]
                if bootstrap > 0 and scope.size > 0
                else None
            )

    # -- helpers
    def _set(self, a: str, group: str, metric: str, value: Any, reason: str | None = None) -> None:
        if isinstance(value, float) and not math.isfinite(value):
            reason = reason or f"{metric} is not finite ({value})"
            value = None
        self.results[a].setdefault(group, {})[metric] = value
        if value is None and reason:
            self.reasons[a][f"{group}.{metric}"] = reason

    def _ci(self, a: str, group: str, metric: str, interval: list[float] | None, delta: bool = False) -> None:
        if interval is not None:
            (self.ci_delta if delta else self.ci)[a].setdefault(group, {})[metric] = interval

    # -- groups
    def set_group(self, name: str, empty_reason: str | None = None) -> None:
        """forget / retain / holdout: ranking metrics, KL, shift, PPL (over the set's scope)."""
        sp = self.passes[name]
        scope = self.scopes[name]
        idx = self.indices[name]
        rank_reason = empty_reason or _ranking_reason(sp)
        names = [f"{m}@{k}" for k in self.ks for m in ("recall", "mrr", "ndcg", "m")]
        for adapter in self.adapters:
            a = adapter.id
            pr = self.per_record[name][a]
            po = self.per_record[name][self.original]
            if rank_reason is None:
                for metric in names:
                    self._set(a, name, metric, float(np.mean(pr[metric][scope])))
                tied = M.tied_record_count(sp.cand_logp[a][scope], sp.target[scope])
                self._set(a, name, "tied_records", tied)
            else:
                for metric in names + ["tied_records"]:
                    self._set(a, name, metric, None, rank_reason)
            if empty_reason is not None:
                for metric in ("kl", "shift", "ppl"):
                    self._set(a, name, metric, None, empty_reason)
                continue
            self._set(a, name, "kl", float(np.mean(pr["kl"][scope])))
            self._set(a, name, "shift", float(np.mean(pr["shift"][scope])))
            ppl = M.perplexity(pr["nll"][scope], pr["tokens"][scope])
            self._set(a, name, "ppl", ppl, "mean NLL beyond exp's range (PPL overflows)")
            if idx is None:
                continue
            per_mean = (names if rank_reason is None else []) + ["kl", "shift"]
            for metric in per_mean:
                self._ci(a, name, metric, _interval(M.bootstrap_ci(pr[metric], idx)))
            ppl_a = M.bootstrap_perplexity(pr["nll"], pr["tokens"], idx)
            self._ci(a, name, "ppl", _interval(M.percentile_interval(ppl_a)))
            if a != self.original:
                for metric in names if rank_reason is None else []:
                    self._ci(a, name, metric, _interval(M.bootstrap_diff_ci(pr[metric], po[metric], idx)), delta=True)
                with np.errstate(invalid="ignore"):
                    diff = ppl_a - M.bootstrap_perplexity(po["nll"], po["tokens"], idx)
                self._ci(a, name, "ppl", _interval(M.percentile_interval(diff)), delta=True)

    def tradeoff(self, r_set: str, label: str, missing_reason: str | None) -> None:
        """Trade-off@K with r = ``r_set`` for every adapter and K (null with the reason)."""
        for adapter in self.adapters:
            a = adapter.id
            for k in self.ks:
                metric = f"{label}@{k}"
                if missing_reason is not None:
                    self._set(a, "tradeoff", metric, None, missing_reason)
                    continue
                mk = f"m@{k}"
                vals = [self.results[x][s].get(mk) for x, s in (
                    (self.original, "forget"), (a, "forget"), (self.original, r_set), (a, r_set))]
                if any(v is None for v in vals):
                    why = self.reasons[self.original].get(f"forget.{mk}") or self.reasons[self.original].get(f"{r_set}.{mk}")
                    self._set(a, "tradeoff", metric, None, f"ranking metrics are null: {why}")
                    continue
                value, reason = M.tradeoff_at_k(*vals)
                self._set(a, "tradeoff", metric, value, reason)
                fi, ri = self.indices["forget"], self.indices[r_set]
                if value is None or fi is None or ri is None:
                    continue
                pf = self.per_record["forget"]
                pr = self.per_record[r_set]
                means = [M.bootstrap_stats(p[x][mk], i) for p, x, i in (
                    (pf, self.original, fi), (pf, a, fi), (pr, self.original, ri), (pr, a, ri))]
                self._ci(a, "tradeoff", metric, _interval(M.percentile_interval(M.tradeoff_values(*means))))

    def reference_gap(self) -> None:
        """|M_u^f - M_ref^f| per K and KL(p_ref || p_u) on D_f, for every adapter."""
        ref = self.reference
        assert ref is not None
        idx = self.indices["forget"]
        scope = self.scopes["forget"]
        pf = self.per_record["forget"]
        for adapter in self.adapters:
            a = adapter.id
            for k in self.ks:
                mk = f"m@{k}"
                mu, mr = self.results[a]["forget"].get(mk), self.results[ref]["forget"].get(mk)
                if mu is None or mr is None:
                    self._set(a, "reference", f"gap@{k}", None, f"ranking metrics are null: {self.reasons[a].get('forget.' + mk)}")
                    continue
                self._set(a, "reference", f"gap@{k}", abs(mu - mr))
                if idx is not None:
                    gaps = np.abs(M.bootstrap_stats(pf[a][mk], idx) - M.bootstrap_stats(pf[ref][mk], idx))
                    self._ci(a, "reference", f"gap@{k}", _interval(M.percentile_interval(gaps)))
            kl = pf[a]["kl_reference"]
            value = float(np.mean(kl[scope]))
            self._set(a, "reference", "kl", value)
            # Without candidates the original runs before the reference: its KL to it does not
            # exist (NaN, null above), and neither does an interval.
            if idx is not None and math.isfinite(value):
                self._ci(a, "reference", "kl", _interval(M.bootstrap_ci(kl, idx)))

    def privacy(self, have_holdout: bool) -> dict | None:
        """MIA AUC (D_f members vs all of D_h) for every adapter; the original's memorization gap."""
        gap = None
        for adapter in self.adapters:
            a = adapter.id
            if not have_holdout:
                self._set(a, "privacy", "mia_auc", None, "no --holdout: membership inference needs non-member records")
                continue
            f, h = self.passes["forget"], self.passes["holdout"]
            mem = M.membership_scores(f.nll[a], f.tokens)
            non = M.membership_scores(h.nll[a], h.tokens)
            auc = M.mia_auc(mem, non)
            self._set(a, "privacy", "mia_auc", auc)
            if self.n_boot > 0:
                ci = M.mia_auc_ci(mem, non, n_boot=self.n_boot, seed=_seed_for(self.seed, "mia"))
                self._ci(a, "privacy", "mia_auc", [ci[0], ci[1]])
                if a == self.original:
                    gap = M.memorization_gap(auc, ci)._asdict()
                    gap["ci"] = list(gap["ci"])
        return gap

    def collapse_warnings(self) -> list[str]:
        """Retain PPL up 50% or retain NDCG@10 down 20% for an unlearned adapter (``metrics.collapse_warnings``)."""
        notes: list[str] = []
        retain = self.passes["retain"]
        for e in self.adapters:
            if e.role != "unlearned":
                continue
            r_o, r_u = self.results[self.original]["retain"], self.results[e.id]["retain"]
            nd_o = nd_u = None
            if retain.has_ranking:
                nd_o = float(np.mean(self.per_record["retain"][self.original]["ndcg@10"]))
                nd_u = float(np.mean(self.per_record["retain"][e.id]["ndcg@10"]))
            notes += [f"{e.id}: possible collapse: {w}" for w in M.collapse_warnings(r_o["ppl"], r_u["ppl"], nd_o, nd_u)]
        return notes

    def cost(self) -> None:
        """The ``cost`` group: each adapter's forward time, sequences run and records per second."""
        for e in self.adapters:
            seqs = sum(sp.sequences[e.id] for sp in self.passes.values())
            secs = sum(sp.forward_s[e.id] for sp in self.passes.values())
            n_rec = sum(sp.n for sp in self.passes.values())
            self._set(e.id, "cost", "forward_s", secs)
            self._set(e.id, "cost", "sequences", seqs)
            self._set(e.id, "cost", "samples_per_s", n_rec / secs if secs > 0 else None, "no measurable forward time")


def _scopes(passes: Mapping[str, SetPass], retain: Sequence[Record]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Which records each set's metrics average over, and why (holdout: retain users' records).

    Returns the scopes and the holdout facts: scope label, whether its trade-off exists, reasons.
    """
    scopes = {name: np.arange(sp.n) for name, sp in passes.items()}
    info: dict[str, Any] = {}
    if "holdout" not in passes:
        return scopes, info
    h = passes["holdout"]
    users = [r.user_id for r in h.records]
    retain_users = {r.user_id for r in retain if r.user_id is not None}
    if any(u is None for u in users):
        info.update(scope="all holdout records (some carry no user_id)", tradeoff_reason=(
            "holdout records carry no user_id, so the retain users' held-out records cannot be selected"))
    elif not retain_users:
        info.update(scope="all holdout records (retain records carry no user_id)", tradeoff_reason=(
            "retain records carry no user_id, so the retain users' held-out records cannot be selected"))
    else:
        keep = np.array([i for i, u in enumerate(users) if u in retain_users], dtype=np.int64)
        scopes["holdout"] = keep
        info["scope"] = "holdout records of retain users"
        if keep.size == 0:
            info["empty_reason"] = "no holdout record belongs to a retain user"
            info["tradeoff_reason"] = info["empty_reason"]
    return scopes, info


def _data_warnings(passes: Mapping[str, SetPass], scopes: Mapping[str, np.ndarray], ks: Sequence[int]) -> list[str]:
    """K at or above the candidate count, prompts truncated to fit --max-length."""
    out = []
    for name, sp in passes.items():
        if sp.has_ranking and scopes[name].size:
            fewest = int(sp.n_candidates[scopes[name]].min())
            big = [k for k in ks if k >= fewest]
            if big:
                out.append(
                    f"K={', '.join(map(str, big))} >= {fewest}, the candidate count of some {name} records: "
                    f"Recall@K is 1 there by construction"
                )
        cut = int(np.count_nonzero(sp.truncated))
        if cut:
            out.append(f"{cut} of {sp.n} {name} records lost prompt tokens from the left to fit --max-length")
    return out
