"""Hand-computed checks of ucan_cli.evaluation.metrics (SPEC section 4).

Every expected number below was worked out by hand (the arithmetic is in the comments), not by
re-running the formula under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from ucan_cli.errors import InputError
from ucan_cli.evaluation.metrics import (
    bootstrap_ci,
    bootstrap_diff_ci,
    candidate_log_probs,
    candidate_probs,
    candidate_ranks,
    collapse_warnings,
    json_safe,
    kl_divergence,
    kl_from_scores,
    membership_scores,
    memorization_gap,
    mia_auc,
    mia_auc_ci,
    mrr_at_k,
    ndcg_at_k,
    paired_bootstrap_indices,
    perplexity,
    prediction_shift,
    ranking_mean_at_k,
    ranking_metrics,
    recall_at_k,
    tied_record_count,
    top1_candidates,
    tradeoff_at_k,
)

NAN = float("nan")

# --------------------------------------------------------------------------- ranks


def test_ranks_1_3_11_from_scores() -> None:
    # Record 0: target (col 0) scores highest -> rank 1.
    # Record 1: two candidates (0.9, 0.8) beat the target 0.5 -> rank 3.
    # Record 2: ten of eleven candidates beat the target -> rank 11.
    scores = np.full((3, 12), NAN)
    scores[0, :4] = [0.9, 0.1, 0.2, 0.3]
    scores[1, :4] = [0.9, 0.8, 0.5, 0.1]
    scores[2, :11] = [0.0] + [1.0 + i for i in range(10)]
    ranks = candidate_ranks(scores, np.array([0, 2, 0]))
    assert ranks.tolist() == [1, 3, 11]
    assert ranks.dtype == np.int64
    assert tied_record_count(scores, np.array([0, 2, 0])) == 0


def test_recall_mrr_ndcg_per_record_values() -> None:
    ranks = np.array([1, 3, 11])
    assert recall_at_k(ranks, 1).tolist() == [1.0, 0.0, 0.0]
    assert recall_at_k(ranks, 5).tolist() == [1.0, 1.0, 0.0]
    assert recall_at_k(ranks, 10).tolist() == [1.0, 1.0, 0.0]
    assert mrr_at_k(ranks, 1).tolist() == [1.0, 0.0, 0.0]
    assert mrr_at_k(ranks, 5) == pytest.approx([1.0, 1 / 3, 0.0])
    assert mrr_at_k(ranks, 10) == pytest.approx([1.0, 0.3333333333, 0.0])
    # NDCG: rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 0.5; rank 11 > K -> 0.
    assert ndcg_at_k(ranks, 1).tolist() == [1.0, 0.0, 0.0]
    assert ndcg_at_k(ranks, 5).tolist() == [1.0, 0.5, 0.0]
    assert ndcg_at_k(ranks, 10).tolist() == [1.0, 0.5, 0.0]
    # At K = 11 rank 11 counts: 1/11 and 1/log2(12) = 1/3.5849625 = 0.2789429.
    assert mrr_at_k(ranks, 11)[2] == pytest.approx(0.0909090909)
    assert ndcg_at_k(ranks, 11)[2] == pytest.approx(0.2789429456)


def test_ranking_metrics_means() -> None:
    out = ranking_metrics(np.array([1, 3, 11]), ks=(1, 5, 10))
    assert list(out) == [
        "recall@1", "mrr@1", "ndcg@1",
        "recall@5", "mrr@5", "ndcg@5",
        "recall@10", "mrr@10", "ndcg@10",
    ]  # fmt: skip
    assert out["recall@1"] == pytest.approx(1 / 3)
    assert out["mrr@1"] == pytest.approx(1 / 3)
    assert out["ndcg@1"] == pytest.approx(1 / 3)
    assert out["recall@5"] == pytest.approx(2 / 3)
    # (1 + 1/3 + 0) / 3 = 4/9
    assert out["mrr@5"] == pytest.approx(0.4444444444)
    # (1 + 0.5 + 0) / 3 = 0.5
    assert out["ndcg@5"] == pytest.approx(0.5)
    assert out["recall@10"] == pytest.approx(0.6666666667)
    # M@5 = (2/3 + 4/9 + 1/2) / 3 = (12/18 + 8/18 + 9/18) / 3 = 29/54
    assert ranking_mean_at_k(out, 5) == pytest.approx(0.5370370370)
    with pytest.raises(InputError):
        ranking_mean_at_k(out, 20)


def test_tie_block_counts_against_target() -> None:
    # Target (col 1) ties with cols 2 and 3, nobody above: rank = 1 + 0 + 2 = 3.
    # Second record: target (col 1, score 1) is beaten by 2 and 3 and tied with two 1s: 1+2+2 = 5.
    scores = np.array([[0.5, 0.9, 0.9, 0.9, 0.1], [2.0, 1.0, 1.0, 3.0, 1.0]])
    target = np.array([1, 1])
    assert candidate_ranks(scores, target).tolist() == [3, 5]
    assert tied_record_count(scores, target) == 2


def test_all_equal_scores_collapsed_model_ranks_last() -> None:
    scores = np.zeros((4, 20))
    target = np.array([0, 7, 13, 19])
    ranks = candidate_ranks(scores, target)
    assert ranks.tolist() == [20, 20, 20, 20]
    assert tied_record_count(scores, target) == 4
    out = ranking_metrics(ranks, ks=(1, 10))
    assert out["recall@1"] == 0.0
    assert out["recall@10"] == 0.0
    assert out["ndcg@10"] == 0.0


def test_nan_padding_never_counts() -> None:
    # Ragged: record 0 has 2 real candidates, record 1 has 3; NaN cells are absent candidates.
    scores = np.array([[1.0, 2.0, NAN, NAN], [NAN, 1.0, 1.0, 0.0]])
    target = np.array([0, 1])
    # Record 0: one above -> 2. Record 1: tied with col 2 only -> 2 (NaN not a tie).
    assert candidate_ranks(scores, target).tolist() == [2, 2]
    assert tied_record_count(scores, target) == 1


def test_rank_input_errors() -> None:
    scores = np.array([[1.0, NAN]])
    with pytest.raises(InputError, match="padding"):
        candidate_ranks(scores, np.array([1]))
    with pytest.raises(InputError, match="outside"):
        candidate_ranks(scores, np.array([2]))
    with pytest.raises(InputError, match="integer"):
        candidate_ranks(scores, np.array([0.0]))
    with pytest.raises(InputError, match="no candidate"):
        candidate_ranks(np.array([[NAN, NAN]]), np.array([0]))
    with pytest.raises(InputError, match="inf"):
        candidate_ranks(np.array([[math.inf, 0.0]]), np.array([0]))
    with pytest.raises(InputError):
        recall_at_k(np.array([0, 1]), 1)


@pytest.mark.parametrize("k", [0, -1, 1.5, 5.0, True, "5", None])
def test_bad_k_raises(k: object) -> None:
    ranks = np.array([1, 2])
    for fn in (recall_at_k, mrr_at_k, ndcg_at_k):
        with pytest.raises(InputError, match="K must be a positive integer"):
            fn(ranks, k)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="K must be a positive integer"):
        ranking_metrics(ranks, ks=(1, k))  # type: ignore[list-item]


def test_numpy_integer_k_accepted() -> None:
    assert recall_at_k(np.array([1, 2]), np.int64(1)).tolist() == [1.0, 0.0]


# --------------------------------------------------------------------------- softmax and KL


def test_candidate_probs_values_and_stability() -> None:
    # exp(0) : exp(ln 3) = 1 : 3 -> 0.25, 0.75. Huge equal scores must not overflow.
    p = candidate_probs(np.array([[0.0, math.log(3.0)], [1000.0, 1000.0], [-1000.0, -1001.0]]))
    assert p[0] == pytest.approx([0.25, 0.75])
    assert p[1] == pytest.approx([0.5, 0.5])
    # 1 / (1 + e^-1) = 0.7310586
    assert p[2] == pytest.approx([0.7310585786, 0.2689414214])
    assert p.dtype == np.float64


def test_candidate_probs_nan_padding_gets_zero() -> None:
    p = candidate_probs(np.array([[0.0, 0.0, NAN], [NAN, 5.0, NAN]]))
    assert p.tolist() == [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]
    assert candidate_log_probs(np.array([[0.0, NAN]]))[0, 1] == -math.inf
    with pytest.raises(InputError, match="no finite"):
        candidate_probs(np.array([[-math.inf, NAN]]))


def test_kl_known_values() -> None:
    # 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 (-0.5877867) + 0.5 (1.6094379) = 0.5108256
    kl = kl_divergence(np.array([[0.5, 0.5]]), np.array([[0.9, 0.1]]))
    assert kl == pytest.approx([0.5108256238])
    # 0 log 0 = 0: KL([1, 0] || [0.5, 0.5]) = ln 2
    assert float(kl_divergence(np.array([1.0, 0.0]), np.array([0.5, 0.5]))) == pytest.approx(
        0.6931471806
    )
    # KL(p || p) = 0
    p = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]])
    assert kl_divergence(p, p).tolist() == [0.0, 0.0]
    # q = 0 where p > 0: floored at eps = 1e-12 -> 1 * ln(1 / 1e-12) = 27.6310211
    assert float(kl_divergence(np.array([1.0, 0.0]), np.array([0.0, 1.0]))) == pytest.approx(
        27.6310211159
    )
    # mean over the two records: (0.5108256 + 0) / 2
    assert np.mean(kl_divergence(
        np.array([[0.5, 0.5], [0.5, 0.5]]), np.array([[0.9, 0.1], [0.5, 0.5]])
    )) == pytest.approx(0.2554128119)


def test_kl_from_scores_matches_hand_value() -> None:
    # p = softmax(0, 0) = (0.5, 0.5); q = softmax(ln 0.9, ln 0.1) = (0.9, 0.1).
    sp = np.array([[0.0, 0.0, NAN]])
    sq = np.array([[math.log(0.9), math.log(0.1), NAN]])
    assert kl_from_scores(sp, sq) == pytest.approx([0.5108256238])
    assert kl_from_scores(sq, sq) == pytest.approx([0.0], abs=1e-15)
    with pytest.raises(InputError, match="different candidates"):
        kl_from_scores(np.array([[0.0, 0.0]]), np.array([[0.0, NAN]]))


def test_kl_rejects_negative_probabilities() -> None:
    with pytest.raises(InputError):
        kl_divergence(np.array([1.2, -0.2]), np.array([0.5, 0.5]))


# --------------------------------------------------------------------------- shift and PPL


def test_prediction_shift_with_ties() -> None:
    # theta_o top-1: row0 tie 0/1 -> 0; row1 -> 1; row2 -> 0.
    # theta_u top-1: row0 three-way tie -> 0 (same); row1 tie 0/1 -> 0 (changed); row2 all tie -> 0.
    so = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 0.0, 0.0]])
    su = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    assert top1_candidates(so).tolist() == [0, 1, 0]
    assert top1_candidates(su).tolist() == [0, 0, 0]
    assert prediction_shift(so, su) == pytest.approx(1 / 3)
    assert prediction_shift(so, so) == 0.0


def test_top1_skips_padding_even_at_minus_inf() -> None:
    assert top1_candidates(np.array([[NAN, -math.inf, -math.inf]])).tolist() == [1]


def test_perplexity_known_values() -> None:
    # 4 tokens at ln 2 nats each -> exp(ln 2) = 2.
    assert perplexity(4 * math.log(2.0), 4) == pytest.approx(2.0)
    # Per-record arrays: (2 ln 2 + 2 ln 8) / (2 + 2) = 8 ln 2 / 4 = 2 ln 2 -> 4.
    assert perplexity(np.array([2 * math.log(2.0), 2 * math.log(8.0)]), np.array([2, 2])) == (
        pytest.approx(4.0)
    )
    assert perplexity(1e6, 1) == math.inf
    with pytest.raises(InputError):
        perplexity(1.0, 0)


def test_membership_scores() -> None:
    assert membership_scores(np.array([2.0, 3.0]), np.array([2, 1])).tolist() == [-1.0, -3.0]


# --------------------------------------------------------------------------- trade-off


def test_tradeoff_known_means() -> None:
    # 100 * [(0.5 - 0.2)/0.5 - (0.4 - 0.3)/0.4] = 100 * (0.6 - 0.25) = 35
    value, reason = tradeoff_at_k(0.5, 0.2, 0.4, 0.3)
    assert value == pytest.approx(35.0)
    assert reason is None
    # No change at all -> 0; forgetting nothing while losing all retain utility -> -100.
    assert tradeoff_at_k(0.5, 0.5, 0.4, 0.4) == (0.0, None)
    assert tradeoff_at_k(0.5, 0.5, 0.4, 0.0)[0] == pytest.approx(-100.0)


def test_tradeoff_undefined_when_original_mean_is_zero() -> None:
    value, reason = tradeoff_at_k(0.0, 0.0, 0.4, 0.3)
    assert value is None
    assert reason is not None and "M_o^f is 0" in reason
    value, reason = tradeoff_at_k(0.5, 0.2, 0.0, 0.0)
    assert value is None
    assert reason is not None and "M_o^r is 0" in reason
    value, reason = tradeoff_at_k(0.5, NAN, 0.4, 0.3)
    assert value is None and reason is not None and "M_u^f" in reason


# --------------------------------------------------------------------------- AUC


def test_auc_with_ties_by_hand() -> None:
    # Members [3, 2, 2] vs non-members [2, 1]: 6 pairs.
    # 3>2 (1), 3>1 (1), 2=2 (1/2), 2>1 (1), 2=2 (1/2), 2>1 (1) -> 5 / 6.
    assert mia_auc(np.array([3.0, 2.0, 2.0]), np.array([2.0, 1.0])) == pytest.approx(0.8333333333)
    assert mia_auc(np.array([1.0, 1.0]), np.array([1.0, 1.0, 1.0])) == 0.5
    assert mia_auc(np.array([5.0, 6.0]), np.array([1.0])) == 1.0
    assert mia_auc(np.array([0.0]), np.array([1.0, 2.0])) == 0.0
    with pytest.raises(InputError):
        mia_auc(np.array([]), np.array([1.0]))
    with pytest.raises(InputError):
        mia_auc(np.array([NAN]), np.array([1.0]))


def test_auc_bootstrap_ci_width() -> None:
    # Members ~ N(1, 1), non-members ~ N(0, 1), 500 each: AUC = Phi(1/sqrt 2) = 0.760.
    # Hanley-McNeil: Q1 = A/(2-A) = 0.6131, Q2 = 2A^2/(1+A) = 0.6566,
    # var = (A(1-A) + 499 (Q1 - A^2) + 499 (Q2 - A^2)) / 250000 = 2.28e-4 -> 95% width 0.059.
    rng = np.random.default_rng(7)
    mem = rng.normal(1.0, 1.0, 500)
    non = rng.normal(0.0, 1.0, 500)
    auc = mia_auc(mem, non)
    lo, hi = mia_auc_ci(mem, non, n_boot=400, seed=1)
    assert lo < auc < hi
    assert 0.70 < auc < 0.82
    assert hi - lo == pytest.approx(0.059, rel=0.3)
    assert mia_auc_ci(mem, non, n_boot=400, seed=1) == (lo, hi)


def test_memorization_gap_warning() -> None:
    weak = memorization_gap(0.53, (0.51, 0.55))
    assert weak.gap == pytest.approx(0.03)
    assert weak.ci == pytest.approx((0.01, 0.05))
    assert weak.warn is True
    assert weak.message is not None and "little to forget" in weak.message
    strong = memorization_gap(0.70, (0.65, 0.75))
    assert strong.gap == pytest.approx(0.20)
    assert strong.warn is False and strong.message is None


# --------------------------------------------------------------------------- bootstrap


def test_paired_bootstrap_indices_seeded() -> None:
    a = paired_bootstrap_indices(50, 30, seed=3)
    assert a.shape == (30, 50)
    assert a.min() >= 0 and a.max() <= 49
    assert np.array_equal(a, paired_bootstrap_indices(50, 30, seed=3))
    assert not np.array_equal(a, paired_bootstrap_indices(50, 30, seed=4))
    with pytest.raises(InputError):
        paired_bootstrap_indices(0, 10, seed=0)


def test_bootstrap_ci_width_bernoulli() -> None:
    # p = 0.3, n = 1000: normal width 2 * 1.96 * sqrt(0.21 / 1000) = 0.056802
    values = (np.random.default_rng(11).random(1000) < 0.3).astype(float)
    idx = paired_bootstrap_indices(1000, 2000, seed=0)
    lo, hi = bootstrap_ci(values, idx)
    assert lo < values.mean() < hi
    assert hi - lo == pytest.approx(0.056802, rel=0.2)


def test_paired_diff_ci_narrower_than_unpaired() -> None:
    rng = np.random.default_rng(5)
    difficulty = rng.normal(0.0, 1.0, 400)
    a = difficulty + rng.normal(0.0, 0.1, 400)
    b = difficulty + 0.2 + rng.normal(0.0, 0.1, 400)
    idx = paired_bootstrap_indices(400, 1000, seed=0)
    lo, hi = bootstrap_diff_ci(a, b, idx)
    # True difference -0.2; noise sd sqrt(0.02) -> paired width about 4 * 0.141 / 20 = 0.028.
    assert lo < -0.2 < hi
    assert hi - lo < 0.05
    # Unpaired: independent resamples for a and b; width about 4 * sqrt(2) / 20 = 0.28.
    idx2 = paired_bootstrap_indices(400, 1000, seed=1)
    unpaired = a[idx].mean(axis=1) - b[idx2].mean(axis=1)
    u_lo, u_hi = np.quantile(unpaired, [0.025, 0.975])
    assert u_hi - u_lo > 0.2
    assert (hi - lo) < (u_hi - u_lo) / 5


def test_bootstrap_input_errors() -> None:
    idx = paired_bootstrap_indices(3, 5, seed=0)
    with pytest.raises(InputError):
        bootstrap_ci(np.array([1.0, 2.0]), idx)  # indices reach record 2
    with pytest.raises(InputError):
        bootstrap_diff_ci(np.ones(3), np.ones(4), idx)
    with pytest.raises(InputError):
        bootstrap_ci(np.ones(3), idx, alpha=1.5)


# --------------------------------------------------------------------------- warnings and JSON


def test_collapse_warnings_thresholds() -> None:
    assert collapse_warnings(10.0, 15.0, 0.5, 0.4) == []  # exactly +50% and -20%: no warning
    both = collapse_warnings(10.0, 16.0, 0.5, 0.39)
    assert len(both) == 2
    assert "PPL" in both[0] and "+60%" in both[0]
    assert "NDCG@10" in both[1] and "-22%" in both[1]
    only_ppl = collapse_warnings(10.0, 20.0, None, None)
    assert len(only_ppl) == 1 and "+100%" in only_ppl[0]
    assert collapse_warnings(None, None, 0.0, 0.0) == []


def test_json_safe_removes_nan_inf_and_numpy() -> None:
    gap = memorization_gap(0.6, (0.55, 0.65))
    raw = {
        "a": NAN,
        "b": [np.float64(math.inf), np.int64(3), -math.inf],
        "c": np.array([1.0, np.nan]),
        "d": (np.bool_(True), np.float32(0.5)),
        np.int64(7): {"e": np.float64(2.5)},
        "gap": gap,
    }
    out = json_safe(raw)
    assert out["a"] is None
    assert out["b"] == [None, 3, None]
    assert out["c"] == [1.0, None]
    assert out["d"] == [True, 0.5]
    assert out["7"] == {"e": 2.5}
    assert out["gap"]["warn"] is False and out["gap"]["ci"] == pytest.approx([0.05, 0.15])
    assert type(out["b"][1]) is int and type(out["d"][0]) is bool
    json.dumps(out, allow_nan=False)
