"""Pure evaluation metrics for ``ucan eval`` (SPEC section 4).

Everything here is numpy in float64: no torch, no files, no printing. ``evaluation/run.py``
turns model outputs into per-record arrays (candidate log-probabilities, NLL sums);
``evaluation/summary.py`` calls these functions on them (per-record values, means, bootstrap
CIs); ``report/eval.py`` lays out what they return. docs/metrics.md gives every formula, its
direction and how it maps to the paper's table.

Conventions shared by all functions:

- Candidate scores (argument ``scores``) are a ``(n_records, n_candidates)`` float matrix,
  one row per record, one column per candidate: the candidate's log-probability under the model
  (the sum of its tokens' log-probs), not normalised over the candidates
  (``candidate_log_probs`` does that).
  Records with fewer candidates are right- or anywhere-padded with NaN: a NaN entry is "no
  candidate" and never counts (not in ranks, not in softmax, not in top-1). ``+inf`` is
  rejected, ``-inf`` is a valid score (probability zero).
- K is a positive Python or numpy integer; anything else (0, -1, 1.5, 5.0, True) raises
  ``InputError``.
- Nothing returned is NaN or infinite except where documented (``perplexity`` may overflow to
  ``inf``); ``json_safe`` is the last step before any JSON is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

import numpy as np

from ucan_cli.errors import InputError

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)
"""K values reported when the user gives none (SPEC section 4)."""

KL_EPS: float = 1e-12
"""Floor for q where p > 0 in KL(p || q): bounds one term by p * ln(p / 1e-12) <= 27.63 nats."""

MIN_MEMORIZATION_GAP: float = 0.02
"""Warn when the lower 95% bound of theta_o's AUC - 0.5 falls below this: little to forget."""

COLLAPSE_PPL_RISE: float = 0.5
"""Collapse warning when retain PPL rises by more than this fraction (50%)."""

COLLAPSE_NDCG_DROP: float = 0.2
"""Collapse warning when retain NDCG@10 drops by more than this fraction (20%)."""


# --------------------------------------------------------------------------- validation


def _check_k(k: Any) -> int:
    """Return K as an int, or raise InputError unless it is a positive integer (not a bool)."""
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)):
        raise InputError(f"K must be a positive integer, got {k!r}")
    if k <= 0:
        raise InputError(f"K must be a positive integer, got {k!r}")
    return int(k)


def _as_scores(scores: Any, name: str = "scores") -> np.ndarray:
    """Validate a NaN-padded candidate score matrix and return it as float64."""
    arr = np.asarray(scores, dtype=np.float64)
    if arr.ndim != 2:
        raise InputError(f"{name}: expected a (records, candidates) matrix, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise InputError(f"{name}: no candidate columns")
    if np.any(np.isposinf(arr)):
        row = int(np.argwhere(np.isposinf(arr))[0, 0])
        raise InputError(f"{name}: record {row} has a +inf score")
    empty = np.all(np.isnan(arr), axis=1)
    if np.any(empty):
        raise InputError(f"{name}: record {int(np.argmax(empty))} has no candidate (all NaN)")
    return arr


def _as_targets(target: Any, scores: np.ndarray) -> np.ndarray:
    """Validate target indices against a score matrix: integers, in range, not padding."""
    t = np.asarray(target)
    if t.ndim != 1 or t.shape[0] != scores.shape[0]:
        raise InputError(
            f"target: expected shape ({scores.shape[0]},) to match the scores, got {t.shape}"
        )
    if t.size and not np.issubdtype(t.dtype, np.integer):
        raise InputError(f"target: expected integer candidate indices, got dtype {t.dtype}")
    t = t.astype(np.int64)
    bad = (t < 0) | (t >= scores.shape[1])
    if np.any(bad):
        row = int(np.argmax(bad))
        raise InputError(
            f"target: record {row} has index {int(t[row])}, outside 0..{scores.shape[1] - 1}"
        )
    rows = np.arange(scores.shape[0])
    padded = np.isnan(scores[rows, t])
    if np.any(padded):
        row = int(np.argmax(padded))
        raise InputError(f"target: record {row} points at a padding (NaN) candidate {int(t[row])}")
    return t


def _as_ranks(ranks: Any) -> np.ndarray:
    """Validate 1-based integer ranks."""
    r = np.asarray(ranks)
    if r.ndim != 1:
        raise InputError(f"ranks: expected a 1-D array, got shape {r.shape}")
    if r.size and not np.issubdtype(r.dtype, np.integer):
        raise InputError(f"ranks: expected integers, got dtype {r.dtype}")
    r = r.astype(np.int64)
    if np.any(r < 1):
        raise InputError(f"ranks: ranks start at 1, got {int(r.min())}")
    return r


def _as_values(values: Any, name: str) -> np.ndarray:
    """A finite, non-empty 1-D float64 vector (per-record values for bootstrap or AUC)."""
    v = np.asarray(values, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise InputError(f"{name}: expected a non-empty 1-D array, got shape {v.shape}")
    if not np.all(np.isfinite(v)):
        raise InputError(f"{name}: element {int(np.argmax(~np.isfinite(v)))} is NaN or infinite")
    return v


# --------------------------------------------------------------------------- ranks


def _greater_and_equal(scores: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per record: how many other real candidates score above, and equal to, the target."""
    s = _as_scores(scores)
    t = _as_targets(target, s)
    ts = s[np.arange(s.shape[0]), t][:, None]
    # NaN compares False both ways, so padding never counts; the target itself is excluded from
    # the equal count by subtracting its own (always true) self-comparison.
    greater = np.sum(s > ts, axis=1)
    equal = np.sum(s == ts, axis=1) - 1
    return greater.astype(np.int64), equal.astype(np.int64)


def candidate_ranks(scores: np.ndarray, target: np.ndarray) -> np.ndarray:
    """1-based rank of each record's target among its candidates, ties counted against it.

    rank = 1 + #{c != t: score_c > score_t} + #{c != t: score_c == score_t}. Pessimistic ties
    mean a collapsed model (every candidate scored alike) ranks every target last, so it can
    never look perfect. ``scores`` is NaN-padded (NaN = no candidate, never counted);
    ``target`` holds the target's column index per record. Returns int64 ranks.
    """
    greater, equal = _greater_and_equal(scores, target)
    return 1 + greater + equal


def tied_record_count(scores: np.ndarray, target: np.ndarray) -> int:
    """Number of records whose target ties with at least one other (non-padding) candidate.

    Reported next to the ranking metrics: many ties mean pessimistic ranks carry the result.
    """
    _, equal = _greater_and_equal(scores, target)
    return int(np.count_nonzero(equal > 0))


# --------------------------------------------------------------------------- ranking metrics


def recall_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-record Recall@K = 1 if rank <= K else 0 (float64; one target per record)."""
    k = _check_k(k)
    r = _as_ranks(ranks)
    return (r <= k).astype(np.float64)


def mrr_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-record MRR@K = 1 / rank if rank <= K else 0."""
    k = _check_k(k)
    r = _as_ranks(ranks)
    return np.where(r <= k, 1.0 / r, 0.0)


def ndcg_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Per-record NDCG@K = 1 / log2(rank + 1) if rank <= K else 0 (one relevant item: IDCG = 1)."""
    k = _check_k(k)
    r = _as_ranks(ranks)
    return np.where(r <= k, 1.0 / np.log2(r + 1.0), 0.0)


def ranking_metrics(ranks: np.ndarray, ks: Iterable[int] = DEFAULT_KS) -> dict[str, float]:
    """Means over records of Recall@K, MRR@K and NDCG@K for each K.

    Keys are ``"recall@K"``, ``"mrr@K"``, ``"ndcg@K"`` in the order of ``ks`` (duplicates
    dropped). Raises InputError on an empty ``ranks`` (a mean over no records is undefined) or
    on a bad K.
    """
    r = _as_ranks(ranks)
    if r.size == 0:
        raise InputError("ranks: no records to average")
    ks_checked = list(dict.fromkeys(_check_k(k) for k in ks))
    if not ks_checked:
        raise InputError("K: at least one K is required")
    out: dict[str, float] = {}
    for k in ks_checked:
        out[f"recall@{k}"] = float(np.mean(recall_at_k(r, k)))
        out[f"mrr@{k}"] = float(np.mean(mrr_at_k(r, k)))
        out[f"ndcg@{k}"] = float(np.mean(ndcg_at_k(r, k)))
    return out


def ranking_mean_at_k(metrics: Mapping[str, float], k: int) -> float:
    """M@K = (Recall@K + MRR@K + NDCG@K) / 3, read from a ``ranking_metrics`` dict.

    This is the M of the Trade-off@K formula.
    """
    k = _check_k(k)
    keys = (f"recall@{k}", f"mrr@{k}", f"ndcg@{k}")
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise InputError(f"metrics: missing {', '.join(missing)} (was K={k} computed?)")
    return float(sum(float(metrics[key]) for key in keys) / 3.0)


# --------------------------------------------------------------------------- distributions


def candidate_log_probs(scores: np.ndarray) -> np.ndarray:
    """Log-softmax over each record's candidates in float64 (log-sum-exp stable).

    Padding (NaN) comes back as ``-inf`` (probability zero). Raises InputError when a record's
    real candidates are all ``-inf`` (no distribution exists).
    """
    s = _as_scores(scores)
    valid = ~np.isnan(s)
    filled = np.where(valid, s, -np.inf)
    m = np.max(filled, axis=1, keepdims=True)
    if np.any(~np.isfinite(m)):
        row = int(np.argmax(~np.isfinite(m[:, 0])))
        raise InputError(f"scores: record {row} has no finite candidate score")
    with np.errstate(divide="ignore"):
        lse = m + np.log(np.sum(np.exp(filled - m), axis=1, keepdims=True))
    return filled - lse


def candidate_probs(scores: np.ndarray) -> np.ndarray:
    """p_cand = softmax over each record's candidates in float64; padding gets probability 0."""
    return np.exp(candidate_log_probs(scores))


def kl_divergence(p: np.ndarray, q: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """KL(p || q) = sum_c p_c * ln(p_c / q_c) in nats, over the last axis (one value per record).

    Terms with p_c = 0 are 0 (0 * log 0 = 0), whatever q_c is. Where p_c > 0 and q_c is below
    ``eps``, q_c is floored at ``eps`` (no renormalisation), so the result is always finite and
    one term is at most p_c * ln(p_c / eps) (27.63 nats for eps = 1e-12). NaN entries are
    padding and count as probability 0. Inputs must be distributions over the same support;
    negative entries raise InputError. Use ``kl_from_scores`` when scores are at hand: working
    in log space it needs the floor only for ``-inf`` scores.
    """
    if eps <= 0:
        raise InputError(f"eps must be positive, got {eps!r}")
    pa = np.nan_to_num(np.asarray(p, dtype=np.float64), nan=0.0)
    qa = np.nan_to_num(np.asarray(q, dtype=np.float64), nan=0.0)
    if pa.shape != qa.shape or pa.ndim == 0:
        raise InputError(f"KL: p and q must share one shape, got {pa.shape} and {qa.shape}")
    if np.any(pa < 0) or np.any(qa < 0):
        raise InputError("KL: probabilities must be non-negative")
    if not (np.all(np.isfinite(pa)) and np.all(np.isfinite(qa))):
        raise InputError("KL: probabilities must be finite")
    pos = pa > 0
    safe_p = np.where(pos, pa, 1.0)
    safe_q = np.where(pos, np.maximum(qa, eps), 1.0)
    return np.sum(np.where(pos, pa * (np.log(safe_p) - np.log(safe_q)), 0.0), axis=-1)


def kl_from_scores(scores_p: np.ndarray, scores_q: np.ndarray, eps: float = KL_EPS) -> np.ndarray:
    """Per-record KL(p_cand(scores_p) || p_cand(scores_q)) in nats, computed in log space.

    Both matrices must pad the same cells (the same candidates per record). Candidates with
    p = 0 contribute 0; a ``-inf`` log q where p > 0 is floored at ln(eps) as in
    ``kl_divergence``.
    """
    if eps <= 0:
        raise InputError(f"eps must be positive, got {eps!r}")
    sp = _as_scores(scores_p, "scores_p")
    sq = _as_scores(scores_q, "scores_q")
    if sp.shape != sq.shape:
        raise InputError(f"KL: score matrices differ in shape: {sp.shape} vs {sq.shape}")
    if np.any(np.isnan(sp) != np.isnan(sq)):
        row = int(np.argmax(np.any(np.isnan(sp) != np.isnan(sq), axis=1)))
        raise InputError(f"KL: record {row} has different candidates in the two score matrices")
    log_p = candidate_log_probs(sp)
    log_q = np.maximum(candidate_log_probs(sq), math.log(eps))
    p = np.exp(log_p)
    pos = p > 0
    return np.sum(np.where(pos, p * (np.where(pos, log_p, 0.0) - log_q), 0.0), axis=1)


# --------------------------------------------------------------------------- shift and PPL


def top1_candidates(scores: np.ndarray) -> np.ndarray:
    """Index of each record's highest-scoring real candidate; ties go to the lowest index."""
    s = _as_scores(scores)
    valid = ~np.isnan(s)
    filled = np.where(valid, s, -np.inf)
    best = np.max(filled, axis=1, keepdims=True)
    # argmax over a boolean mask returns the first True: the lowest-index real candidate at the
    # maximum, even when that maximum is -inf and padding sits before it.
    return np.argmax(valid & (filled == best), axis=1).astype(np.int64)


def top1_changed(top1_o: np.ndarray, top1_u: np.ndarray) -> np.ndarray:
    """Per record: 1.0 where the two adapters' top-1 predictions differ, else 0.0 (float64).

    The predictions are ``top1_candidates`` indices, or vocabulary token ids (the greedy token
    at the first response position, when a set has no candidates). Its mean is the prediction
    shift; the per-record values are what the bootstrap resamples.
    """
    a, b = np.asarray(top1_o), np.asarray(top1_u)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"prediction shift: shapes {a.shape} and {b.shape} must be equal 1-D")
    return (a != b).astype(np.float64)


def prediction_shift(scores_o: np.ndarray, scores_u: np.ndarray) -> float:
    """Share of records whose top-1 candidate differs between two adapters (0..1).

    The mean of ``top1_changed`` over the records. Ties pick the lowest candidate index in
    both, so identical score matrices give 0.
    """
    so = _as_scores(scores_o, "scores_o")
    su = _as_scores(scores_u, "scores_u")
    if so.shape != su.shape:
        raise InputError(f"prediction shift: shapes differ: {so.shape} vs {su.shape}")
    return float(np.mean(top1_changed(top1_candidates(so), top1_candidates(su))))


def perplexity(sum_nll: float | np.ndarray, n_tokens: int | np.ndarray) -> float:
    """PPL = exp(total NLL / total tokens), totals summed over whatever is passed (nats).

    ``sum_nll`` and ``n_tokens`` are totals or per-record arrays (response tokens, eos
    included). Returns ``inf`` if the mean NLL overflows exp (report it as null).
    """
    total_nll = float(np.sum(np.asarray(sum_nll, dtype=np.float64)))
    total_tokens = float(np.sum(np.asarray(n_tokens, dtype=np.float64)))
    if not total_tokens > 0:
        raise InputError(f"perplexity: needs at least one token, got {total_tokens:g}")
    if not math.isfinite(total_nll):
        raise InputError("perplexity: the NLL total is NaN or infinite")
    mean = total_nll / total_tokens
    if mean > math.log(np.finfo(np.float64).max):
        return math.inf
    return math.exp(mean)


def membership_scores(sum_nll: np.ndarray, n_tokens: np.ndarray) -> np.ndarray:
    """Membership score per record = -(response NLL / response tokens): higher = more member-like."""
    nll = np.asarray(sum_nll, dtype=np.float64)
    n = np.asarray(n_tokens, dtype=np.float64)
    if nll.shape != n.shape or nll.ndim != 1:
        raise InputError(f"membership scores: shapes {nll.shape} and {n.shape} must be equal 1-D")
    if np.any(n <= 0):
        raise InputError(f"membership scores: record {int(np.argmax(n <= 0))} has no tokens")
    return -(nll / n)


# --------------------------------------------------------------------------- trade-off


def tradeoff_at_k(
    m_o_f: float, m_u_f: float, m_o_r: float, m_u_r: float
) -> tuple[float | None, str | None]:
    """Trade-off@K = 100 * [(M_o^f - M_u^f) / M_o^f - (M_o^r - M_u^r) / M_o^r].

    Each M is ``ranking_mean_at_k`` of one adapter on one set (o = original, u = unlearned,
    f = forget, r = retain or held-out). Higher is better: forget utility dropped, retain
    utility kept. Returns ``(value, None)``, or ``(None, reason)`` when a relative drop is
    undefined (M_o = 0) or an input is not finite; never NaN or inf.
    """
    named = {"M_o^f": m_o_f, "M_u^f": m_u_f, "M_o^r": m_o_r, "M_u^r": m_u_r}
    for name, value in named.items():
        if value is None or not math.isfinite(float(value)):
            return None, f"{name} is {value!r}: Trade-off needs four finite means"
    if float(m_o_f) == 0.0:
        return None, (
            "M_o^f is 0: the original adapter ranks no forget target within K, "
            "so there is no forget utility to remove"
        )
    if float(m_o_r) == 0.0:
        return None, (
            "M_o^r is 0: the original adapter ranks no retain target within K, "
            "so retain utility loss is undefined"
        )
    return float(tradeoff_values(float(m_o_f), float(m_u_f), float(m_o_r), float(m_u_r))), None


def tradeoff_values(m_o_f: Any, m_u_f: Any, m_o_r: Any, m_u_r: Any) -> np.ndarray:
    """The Trade-off@K formula on arrays of means (one per bootstrap resample), unchecked.

    Element-wise ``100 * [(M_o^f - M_u^f) / M_o^f - (M_o^r - M_u^r) / M_o^r]``; an element whose
    M_o is 0 comes back NaN or infinite (``percentile_interval`` drops it). ``tradeoff_at_k``
    is the checked scalar form.
    """
    with np.errstate(divide="ignore", invalid="ignore"):
        m = [np.asarray(x, dtype=np.float64) for x in (m_o_f, m_u_f, m_o_r, m_u_r)]
        return 100.0 * ((m[0] - m[1]) / m[0] - (m[2] - m[3]) / m[2])


# --------------------------------------------------------------------------- membership inference


def mia_auc(member_scores: np.ndarray, nonmember_scores: np.ndarray) -> float:
    """AUC = P(member score > non-member score) + 1/2 P(equal), from ranks in O(n log n).

    Scores follow ``membership_scores`` (higher = more likely a training member). 0.5 means
    members and non-members are indistinguishable; the Mann-Whitney U statistic with average
    ranks for ties, divided by n_members * n_nonmembers.
    """
    mem = _as_values(member_scores, "member scores")
    non = _as_values(nonmember_scores, "non-member scores")
    return _auc(mem, non)


def _auc(mem: np.ndarray, non: np.ndarray) -> float:
    """Mann-Whitney AUC of validated finite vectors (average ranks over ties)."""
    both = np.concatenate([mem, non])
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    # Average 1-based rank of each distinct value: its tie block spans
    # (cum - count + 1) .. cum, whose mean is cum - (count - 1) / 2.
    cum = np.cumsum(counts)
    avg_rank = cum - (counts - 1) / 2.0
    rank_sum = float(np.sum(avg_rank[inverse[: mem.size]]))
    u = rank_sum - mem.size * (mem.size + 1) / 2.0
    return u / (mem.size * non.size)


def mia_auc_ci(
    member_scores: np.ndarray,
    nonmember_scores: np.ndarray,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> tuple[float, float]:
    """Percentile bootstrap (1 - alpha) CI of ``mia_auc``, resampling each group separately.

    Members and non-members are resampled with replacement within their own group (stratified),
    keeping both group sizes, with a seeded numpy Generator; the interval is the alpha/2 and
    1 - alpha/2 quantiles of the bootstrap AUCs. Chosen over Hanley-McNeil because it assumes
    no score distribution and matches the paired bootstrap used everywhere else.
    """
    mem = _as_values(member_scores, "member scores")
    non = _as_values(nonmember_scores, "non-member scores")
    n_boot = _check_count(n_boot, "n_boot")
    _check_alpha(alpha)
    rng = np.random.default_rng(seed)
    idx_m = rng.integers(0, mem.size, size=(n_boot, mem.size))
    idx_n = rng.integers(0, non.size, size=(n_boot, non.size))
    aucs = np.array([_auc(mem[a], non[b]) for a, b in zip(idx_m, idx_n)])
    lo, hi = np.quantile(aucs, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


class MemorizationGap(NamedTuple):
    """theta_o's memorization gap: AUC - 0.5 with its CI, and whether to warn."""

    gap: float
    ci: tuple[float, float]
    warn: bool
    message: str | None


def memorization_gap(
    auc: float, ci: tuple[float, float], min_gap: float = MIN_MEMORIZATION_GAP
) -> MemorizationGap:
    """Gap = AUC - 0.5 of the original adapter, CI shifted alike; warn if its lower bound < min_gap.

    ``ci`` is the AUC's CI (``mia_auc_ci``). A gap whose CI reaches below 0.02 means theta_o
    barely tells its forget records from unseen ones: there is little to forget, and forget
    metrics will move little whatever the method does.
    """
    lo, hi = float(ci[0]) - 0.5, float(ci[1]) - 0.5
    gap = float(auc) - 0.5
    warn = lo < min_gap
    message = (
        f"memorization gap {gap:.3f} (95% CI {lo:.3f}..{hi:.3f}) reaches below {min_gap:g}: "
        "the original adapter barely separates forget records from unseen ones, "
        "little to forget"
        if warn
        else None
    )
    return MemorizationGap(gap=gap, ci=(lo, hi), warn=warn, message=message)


# --------------------------------------------------------------------------- bootstrap


def _check_count(n: Any, name: str) -> int:
    """A positive integer count, or InputError."""
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"{name} must be a positive integer, got {n!r}")
    return int(n)


def _check_alpha(alpha: float) -> None:
    """alpha must lie strictly between 0 and 1."""
    if not 0.0 < float(alpha) < 1.0:
        raise InputError(f"alpha must be between 0 and 1, got {alpha!r}")


def paired_bootstrap_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n) record indices drawn with replacement by a seeded numpy Generator.

    Draw once per data set and reuse for every adapter: the CIs then share resamples, and a
    difference between adapters is paired record by record.
    """
    n = _check_count(n, "n")
    n_boot = _check_count(n_boot, "n_boot")
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def percentile_interval(stats: Any, alpha: float = 0.05) -> tuple[float, float] | None:
    """The alpha/2 and 1 - alpha/2 quantiles of bootstrap statistics (the percentile interval).

    Non-finite statistics are dropped first (a resample whose PPL overflows, a trade-off whose
    M_o is 0 in that resample); None when none is finite.
    """
    _check_alpha(alpha)
    s = np.asarray(stats, dtype=np.float64)
    finite = s[np.isfinite(s)]
    if finite.size == 0:
        return None
    lo, hi = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(lo), float(hi)


def bootstrap_stats(
    values: Any, indices: np.ndarray, stat: Callable[..., Any] = np.mean, name: str = "values"
) -> np.ndarray:
    """``stat`` of each bootstrap resample: ``stat(values[indices], axis=1)``, shape (n_boot,).

    ``values`` are finite per-record values; ``indices`` come from ``paired_bootstrap_indices``
    (rows of record indices); ``stat`` reduces along ``axis`` like np.mean or np.median.
    """
    v = _as_values(values, name)
    idx = np.asarray(indices)
    if idx.ndim != 2 or idx.shape[0] == 0 or not np.issubdtype(idx.dtype, np.integer):
        raise InputError(f"indices: expected an integer (n_boot, n) matrix, got {idx.shape}")
    if idx.size and (idx.min() < 0 or idx.max() >= v.size):
        raise InputError(f"indices: out of range for {name} with {v.size} records")
    return np.asarray(stat(v[idx], axis=1), dtype=np.float64)


def bootstrap_perplexity(sum_nll: Any, n_tokens: Any, indices: np.ndarray) -> np.ndarray:
    """PPL of each bootstrap resample, as ``perplexity`` does: exp(sum NLL / sum tokens).

    ``sum_nll`` and ``n_tokens`` are per-record; a resample whose mean NLL overflows exp gives
    ``inf`` (``percentile_interval`` drops it).
    """
    nll = bootstrap_stats(sum_nll, indices, np.sum, "NLL sums")
    tokens = bootstrap_stats(n_tokens, indices, np.sum, "token counts")
    with np.errstate(over="ignore"):
        return np.exp(nll / tokens)


def bootstrap_ci(
    values_per_record: np.ndarray,
    indices: np.ndarray,
    stat: Callable[..., Any] = np.mean,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Percentile bootstrap (1 - alpha) CI of ``stat`` over per-record values.

    ``indices`` come from ``paired_bootstrap_indices``; ``stat`` must reduce along ``axis=1``
    like numpy's reductions (np.mean, np.median). None only when no resample gives a finite
    statistic (see ``percentile_interval``).
    """
    _check_alpha(alpha)
    return percentile_interval(bootstrap_stats(values_per_record, indices, stat), alpha)


def bootstrap_diff_ci(
    a: np.ndarray,
    b: np.ndarray,
    indices: np.ndarray,
    stat: Callable[..., Any] = np.mean,
    alpha: float = 0.05,
) -> tuple[float, float] | None:
    """Paired percentile bootstrap CI of stat(a) - stat(b), both resampled with the same rows.

    ``a`` and ``b`` are per-record values of two adapters on the same records, in the same
    order. Pairing cancels the per-record difficulty both share, so the interval is narrower
    than one built from independent resamples. None only when no difference is finite.
    """
    _check_alpha(alpha)
    av = _as_values(a, "a")
    bv = _as_values(b, "b")
    if av.shape != bv.shape:
        raise InputError(f"paired bootstrap: a and b differ in length: {av.size} vs {bv.size}")
    diffs = bootstrap_stats(av, indices, stat, "a") - bootstrap_stats(bv, indices, stat, "b")
    return percentile_interval(diffs, alpha)


# --------------------------------------------------------------------------- warnings and JSON


def collapse_warnings(
    retain_ppl_o: float | None,
    retain_ppl_u: float | None,
    retain_ndcg10_o: float | None,
    retain_ndcg10_u: float | None,
) -> list[str]:
    """Warnings that an unlearned adapter has collapsed on the retain set.

    Warns when retain PPL rose by more than 50% (ppl_u > 1.5 * ppl_o) or retain NDCG@10 fell by
    more than 20% (ndcg_u < 0.8 * ndcg_o). A pair with a missing (None) or non-finite value is
    skipped: no retain candidates, no NDCG check.
    """

    def usable(*xs: float | None) -> bool:
        return all(x is not None and math.isfinite(float(x)) for x in xs)

    out: list[str] = []
    if usable(retain_ppl_o, retain_ppl_u):
        ppl_o, ppl_u = float(retain_ppl_o), float(retain_ppl_u)  # type: ignore[arg-type]
        if ppl_u > (1.0 + COLLAPSE_PPL_RISE) * ppl_o:
            out.append(
                f"retain PPL rose from {ppl_o:.4g} to {ppl_u:.4g} "
                f"(+{100.0 * (ppl_u / ppl_o - 1.0):.0f}%, over the 50% collapse limit)"
            )
    if usable(retain_ndcg10_o, retain_ndcg10_u):
        nd_o, nd_u = float(retain_ndcg10_o), float(retain_ndcg10_u)  # type: ignore[arg-type]
        if nd_u < (1.0 - COLLAPSE_NDCG_DROP) * nd_o:
            out.append(
                f"retain NDCG@10 fell from {nd_o:.4f} to {nd_u:.4f} "
                f"(-{100.0 * (1.0 - nd_u / nd_o):.0f}%, over the 20% collapse limit)"
            )
    return out


def json_safe(x: Any) -> Any:
    """Recursively convert to plain JSON types: NaN/inf floats become None.

    numpy scalars become Python scalars, arrays and tuples become lists, named tuples become
    dicts, mapping keys become strings. The result passes ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(x, Mapping):
        return {str(json_safe(k)): json_safe(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_asdict"):
        return json_safe(x._asdict())
    if isinstance(x, np.ndarray):
        return [json_safe(v) for v in x.tolist()] if x.ndim else json_safe(x.item())
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        return json_safe(x.item())
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    return x
