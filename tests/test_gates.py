"""``--fail-if`` gates: the grammar (what parses, what exits 2) and the checks (what fails)."""

from __future__ import annotations

import pytest

from ucan_cli.errors import InputError
from ucan_cli.evaluation.gates import Gate, check_gates, failure_summary, parse_gate, parse_gates

KS = (1, 5, 10)


def parse(text: str, *, ref: bool = True, holdout: bool = True) -> Gate:
    return parse_gate(text, ks=KS, have_reference=ref, have_holdout=holdout)


@pytest.mark.parametrize(
    ("text", "group", "metric", "op", "factor", "anchor"),
    [
        ("forget.recall@10 > 0.6", "forget", "recall@10", ">", 0.6, None),
        ("retain.ndcg@10 < 0.95*original", "retain", "ndcg@10", "<", 0.95, "original"),
        ("  retain.ndcg@5<=0.9 * original ", "retain", "ndcg@5", "<=", 0.9, "original"),
        ("forget.kl >= reference", "forget", "kl", ">=", 1.0, "reference"),
        ("tradeoff.retain@10 < 10", "tradeoff", "retain@10", "<", 10.0, None),
        ("tradeoff.holdout@1 < -2.5e1", "tradeoff", "holdout@1", "<", -25.0, None),
        ("reference.gap@5 > .05", "reference", "gap@5", ">", 0.05, None),
        ("privacy.mia_auc > 0.6", "privacy", "mia_auc", ">", 0.6, None),
        ("cost.forward_s > 2*original", "cost", "forward_s", ">", 2.0, "original"),
        ("holdout.m@1 < 0.1", "holdout", "m@1", "<", 0.1, None),
        ("forget.ppl < original", "forget", "ppl", "<", 1.0, "original"),
    ],
)
def test_parse_valid(text, group, metric, op, factor, anchor):
    g = parse(text)
    assert (g.group, g.metric, g.op, g.factor, g.anchor) == (group, metric, op, factor, anchor)
    assert g.text == text.strip()
    assert g.path == f"{group}.{metric}"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("forget.recall@10 = 0.6", "expected 'GROUP.METRIC OP VALUE'"),
        ("forget.recall@10 == 0.6", "OP one of < > <= >="),
        ("recall@10 > 0.6", "expected 'GROUP.METRIC OP VALUE'"),
        ("forget.recall@10 >", "no value"),
        ("forget.recall@10 > abc", "'abc' is not a number"),
        ("forget.recall@10 > nan", "not a finite number"),
        ("forget.recall@10 > 0.9*baseline", "not a number"),
        ("forgot.recall@10 > 0.6", "unknown group 'forgot'"),
        ("forget.precision@10 > 0.6", "unknown metric forget.precision@10"),
        ("forget.recall > 0.6", "it needs @K"),
        ("forget.recall@0 > 0.6", "positive integer"),
        ("forget.recall@1.5 > 0.6", "positive integer"),
        ("forget.recall@20 > 0.6", "K=20 is not evaluated"),
        ("forget.kl@10 > 0.6", "unknown metric forget.kl@10"),
        ("privacy.mia_auc@10 > 0.6", "unknown metric"),
    ],
)
def test_parse_malformed_exits_2(text, needle):
    with pytest.raises(InputError) as info:
        parse(text)
    assert needle in info.value.message
    assert text in info.value.message  # the message names the gate
    assert info.value.exit_code == 2


def test_parse_needs_reference_and_holdout():
    with pytest.raises(InputError, match="pass --reference"):
        parse("reference.kl > 0.1", ref=False)
    with pytest.raises(InputError, match="pass --reference"):
        parse("forget.recall@10 > 1.2*reference", ref=False)
    with pytest.raises(InputError, match="needs --holdout"):
        parse("holdout.ndcg@10 < 0.5", holdout=False)
    with pytest.raises(InputError, match="needs --holdout"):
        parse("tradeoff.holdout@10 < 0", holdout=False)
    with pytest.raises(InputError, match="gap to itself"):
        parse("reference.gap@10 > reference")


def test_parse_gates_first_malformed_raises():
    ok = parse_gates(["forget.kl < 0.01"], ks=KS, have_reference=False, have_holdout=False)
    assert [g.path for g in ok] == ["forget.kl"]
    with pytest.raises(InputError, match="bad.x"):
        parse_gates(["forget.kl < 0.01", "bad.x > 1"], ks=KS, have_reference=False, have_holdout=False)


RESULTS = {
    "original": {"forget": {"recall@10": 0.8, "kl": 0.0}, "retain": {"ndcg@10": 0.5, "ppl": None}},
    "reference": {"forget": {"recall@10": 0.4, "kl": 0.2}},
    "unlearned_1": {"forget": {"recall@10": 0.7, "kl": 0.3}, "retain": {"ndcg@10": 0.48, "ppl": 3.0}},
    "unlearned_2": {"forget": {"recall@10": 0.5, "kl": None}, "retain": {"ndcg@10": 0.46, "ppl": 4.0}},
}
REASONS = {"unlearned_2": {"forget.kl": "the sky fell"}, "original": {"retain.ppl": "overflow"}}
UNLEARNED = ["unlearned_1", "unlearned_2"]


def check(text: str):
    return check_gates([parse(text)], RESULTS, UNLEARNED, REASONS)


def test_absolute_gate_applies_to_every_unlearned_adapter():
    out = check("forget.recall@10 > 0.6")
    assert [(o.adapter, o.value, o.threshold, o.failed) for o in out] == [
        ("unlearned_1", 0.7, 0.6, True),
        ("unlearned_2", 0.5, 0.6, False),
    ]
    assert out[0].reason == "forget.recall@10 = 0.7 > 0.6"
    assert out[1].reason is None


def test_relative_to_original():
    # threshold = 0.95 * 0.5 = 0.475: 0.48 is not below it, 0.46 is
    out = check("retain.ndcg@10 < 0.95*original")
    assert [o.failed for o in out] == [False, True]
    assert out[0].threshold == pytest.approx(0.475)
    # inclusive operators: 0.48 <= 0.48 holds
    out = check_gates([parse("retain.ndcg@10 <= 0.96*original")], RESULTS, ["unlearned_1"])
    assert out[0].failed and out[0].threshold == pytest.approx(0.48)


def test_relative_to_reference():
    # forget.recall@10 of the reference is 0.4; 1.5 * 0.4 = 0.6
    out = check("forget.recall@10 >= 1.5*reference")
    assert [o.failed for o in out] == [True, False]
    assert out[1].threshold == pytest.approx(0.6)


def test_null_metric_fails_with_reason():
    out = check("forget.kl < 0.1")
    assert out[0].failed is False  # 0.3 is not < 0.1
    assert out[1].failed is True and out[1].value is None
    assert "null for unlearned_2 (the sky fell)" in out[1].reason


def test_null_anchor_fails_with_reason():
    out = check("retain.ppl > 1.5*original")
    assert all(o.failed for o in out)
    assert "original's retain.ppl is null (overflow)" in out[0].reason


def test_absent_metric_fails():
    out = check_gates([parse("holdout.recall@10 < 0.1")], RESULTS, ["unlearned_1"])
    assert out[0].failed and "absent from the report" in out[0].reason


def test_failure_summary():
    out = check("forget.recall@10 > 0.6")
    assert failure_summary(out) == "1 gate check(s) failed: unlearned_1: 'forget.recall@10 > 0.6' (forget.recall@10 = 0.7 > 0.6)"
    assert failure_summary(check("forget.recall@10 > 0.9")) is None
    assert out[0].to_dict() == {
        "gate": "forget.recall@10 > 0.6", "adapter": "unlearned_1", "path": "forget.recall@10",
        "value": 0.7, "threshold": 0.6, "failed": True, "reason": "forget.recall@10 = 0.7 > 0.6",
    }
