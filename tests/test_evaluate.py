"""ucan_cli.evaluation.run on tiny models: candidate scores and NLL against a manual token-by-token sum,
the full-vocabulary fallbacks against a manual KL, adapter swapping against dedicated models,
and the structure of an EvalResult (self-comparison, references, holdout scope, bad inputs)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ITEMS, make_records, write_jsonl

from ucan_cli.evaluation import metrics as M
from ucan_cli.errors import InputError
from ucan_cli.evaluation.run import MODE_MULTI, MODE_SINGLE, MODE_VOCAB, adapter_entries, evaluate, run_set
from ucan_cli.io.data import read_records
from ucan_cli.io.prompts import PromptFormatter

LETTERS = "ABCDEFGHIJ"


def letter_rows(n: int, *, seed: int, user_offset: int = 0, with_candidates: bool = True) -> list[dict]:
    """LlamaRec-style records: lettered candidates (3 to 6 of them), prompts of varying length."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cands = list(LETTERS[: rng.randint(3, 6)])
        row = {
            "id": f"L{user_offset + i}",
            "user_id": f"u{user_offset + i}",
            "instruction": "Pick the letter of the item the user will choose next.",
            "input": "History: " + " ".join(rng.sample(ITEMS, rng.randint(1, 6))),
            "output": rng.choice(cands),
        }
        if with_candidates:
            row["candidates"] = cands
        rows.append(row)
    return rows


def item_rows(n: int, *, seed: int) -> list[dict]:
    """Multi-token candidates of different token lengths (item names and item pairs)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cands = rng.sample(ITEMS, rng.randint(2, 4)) + [" ".join(rng.sample(ITEMS, 2))]
        rows.append({
            "id": f"M{i}",
            "instruction": "Which item will the user pick next?",
            "input": "History: " + " ".join(rng.sample(ITEMS, rng.randint(1, 5))),
            "output": rng.choice(cands),
            "candidates": cands,
        })
    return rows


def records(tmp_path: Path, name: str, rows: list[dict]):
    return read_records(write_jsonl(tmp_path / f"{name}.jsonl", rows), name)


@pytest.fixture(scope="module")
def llama(tiny_models):
    from ucan_cli.runtime.models import load_base_model

    return load_base_model(str(tiny_models["llama"]), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def scaled_adapter(adapters, tmp_path_factory):
    """A copy of the llama adapter with every lora_B halved (an 'unlearned' adapter)."""
    from ucan_cli.io.adapter import LoraAdapter

    src = LoraAdapter.load(adapters["llama"])
    out = tmp_path_factory.mktemp("scaled")
    src.with_tensors({m.key_B: m.B * 0.5 for m in src.modules}).write_into(out)
    return out


def fresh_with_adapter(tiny_models, adapter_dir):
    """A separately loaded base model with one adapter attached (no swapping involved)."""
    from ucan_cli.runtime.models import attach_adapter, load_base_model

    base = load_base_model(str(tiny_models["llama"]), device="cpu", dtype="float32")
    return base if adapter_dir is None else attach_adapter(base, adapter_dir)


@torch.no_grad()
def manual_log_probs(model, ids: list[int]) -> torch.Tensor:
    """Float64 log-softmax of one unpadded sequence."""
    logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return torch.log_softmax(logits, -1)


def manual_sum(model, context: list[int], target: list[int]) -> float:
    """sum_j log p(target_j | context, target_<j), token by token."""
    lp = manual_log_probs(model, context + target)
    return sum(float(lp[len(context) + j - 1, t]) for j, t in enumerate(target))


def prompt_ids(tokenizer, record) -> list[int]:
    return list(tokenizer(PromptFormatter("alpaca", tokenizer).prompt(record))["input_ids"])


# --------------------------------------------------------------------------- candidate scoring


@pytest.mark.parametrize("kind", ["single", "multi"])
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_candidate_scores_equal_manual_sum(tmp_path, tokenizer, llama, kind, padding_side, batch_size):
    rows = letter_rows(9, seed=1) if kind == "single" else item_rows(9, seed=2)
    rs = records(tmp_path, "data", rows)
    sp = run_set(llama, tokenizer, rs, batch_size=batch_size, padding_side=padding_side)
    assert sp.mode == (MODE_SINGLE if kind == "single" else MODE_MULTI)
    n_cands = [len(r["candidates"]) for r in rows]
    # single-token candidates: one forward per record; multi-token: one more per candidate
    assert sp.sequences["model"] == (9 if kind == "single" else 9 + sum(n_cands))
    scores = sp.cand_logp["model"]
    assert scores.shape == (9, max(n_cands))
    eos = tokenizer.eos_token_id
    # Sums of <= 4 float32 log-probs of size <= ln(400) ~ 6, batched and padded vs one unpadded
    # sequence: rounding of a few eps32 * 24 ~ 3e-6 on any CPU; abs=1e-4 leaves > 30x.
    for i, record in enumerate(rs.records):
        ctx = prompt_ids(tokenizer, record)
        for j, cand in enumerate(record.candidates):
            want = manual_sum(llama, ctx, list(tokenizer(cand, add_special_tokens=False)["input_ids"]))
            assert scores[i, j] == pytest.approx(want, abs=1e-4)
        assert np.all(np.isnan(scores[i, len(record.candidates):]))  # padding stays NaN
        response = list(tokenizer(record.response, add_special_tokens=False)["input_ids"]) + [eos]
        assert sp.nll["model"][i] == pytest.approx(-manual_sum(llama, ctx, response), abs=1e-4)
        assert sp.tokens[i] == len(response)
        assert sp.target[i] == record.candidates.index(record.response)


def test_left_padding_with_absolute_positions_gpt2(tmp_path, tokenizer, tiny_models):
    from ucan_cli.runtime.models import load_base_model

    gpt2 = load_base_model(str(tiny_models["gpt2"]), device="cpu", dtype="float32")
    rs = records(tmp_path, "data", item_rows(6, seed=3))
    sp = run_set(gpt2, tokenizer, rs, batch_size=6, padding_side="left")
    for i, record in enumerate(rs.records):
        ctx = prompt_ids(tokenizer, record)
        for j, cand in enumerate(record.candidates):
            want = manual_sum(gpt2, ctx, list(tokenizer(cand, add_special_tokens=False)["input_ids"]))
            assert sp.cand_logp["model"][i, j] == pytest.approx(want, abs=1e-4)


def test_long_candidate_trims_prompt_from_the_left(tmp_path, tokenizer, llama):
    """A candidate longer than the response must still fit --max-length: the prompt loses its head."""
    row = {"instruction": "Which item?", "input": "History: " + " ".join(ITEMS[:8]), "output": "item1",
           "candidates": ["item1", " ".join(ITEMS[10:20])]}
    rs = records(tmp_path, "data", [row])
    rec = rs.records[0]
    ctx = prompt_ids(tokenizer, rec)
    long_ids = list(tokenizer(row["candidates"][1], add_special_tokens=False)["input_ids"])
    max_length = len(ctx) + 3  # room for the response (item1 + eos), not for the long candidate
    sp = run_set(llama, tokenizer, rs, max_length=max_length)
    drop = len(ctx) + len(long_ids) - max_length
    trimmed = ctx[:1] + ctx[1 + drop:]  # the BOS stays
    assert sp.cand_logp["model"][0, 1] == pytest.approx(manual_sum(llama, trimmed, long_ids), abs=1e-4)


# --------------------------------------------------------------------------- evaluate


def test_original_against_itself(tmp_path, tokenizer, llama, adapters):
    """theta_u = theta_o: KL 0, shift 0, Trade-off 0, with candidates and in the vocabulary fallback."""
    forget = records(tmp_path, "forget", letter_rows(8, seed=4))
    retain = records(tmp_path, "retain", letter_rows(10, seed=5, user_offset=100, with_candidates=False))
    entries = adapter_entries(adapters["llama"], [adapters["llama"]])
    res = evaluate(llama, tokenizer, entries, forget, retain, ks=(1, 3, 10), bootstrap=50)
    u = res.results["unlearned_1"]
    assert u["forget"]["kl"] == 0.0 and u["forget"]["shift"] == 0.0
    assert u["retain"]["kl"] == 0.0 and u["retain"]["shift"] == 0.0
    assert u["forget"]["ppl"] == res.results["original"]["forget"]["ppl"]
    for k in (1, 3, 10):
        if res.results["original"]["forget"][f"m@{k}"] > 0:
            assert u["tradeoff"][f"retain@{k}"] is None  # retain has no candidates
    assert res.data["retain"]["scoring"] == MODE_VOCAB
    assert any("same weights as the original" in w for w in res.warnings)
    # the adapters are gone afterwards: the caller's base model is plain again
    assert not any("lora" in name for name, _ in llama.named_modules())


def test_self_tradeoff_is_zero(tmp_path, tokenizer, llama, adapters):
    forget = records(tmp_path, "forget", letter_rows(8, seed=4))
    retain = records(tmp_path, "retain", letter_rows(10, seed=5, user_offset=100))
    res = evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [adapters["llama"]]), forget, retain,
                   ks=(1, 3, 10), bootstrap=0)
    for k in (1, 3, 10):
        o = res.results["original"]
        value = res.results["unlearned_1"]["tradeoff"][f"retain@{k}"]
        if o["forget"][f"m@{k}"] > 0 and o["retain"][f"m@{k}"] > 0:
            assert value == 0.0
        else:
            assert value is None and "is 0" in res.null_reasons["unlearned_1"][f"tradeoff.retain@{k}"]
    assert res.results["original"]["tradeoff"]["retain@10"] == 0.0  # K=10 >= every candidate count
    assert res.ci == {a: {} for a in ("original", "unlearned_1")}  # --bootstrap 0


def test_no_candidates_fallback_matches_manual_vocabulary_kl(tmp_path, tokenizer, llama, tiny_models, adapters, scaled_adapter):
    rows = letter_rows(6, seed=6, with_candidates=False)
    rows[2]["output"] = "liked movie"  # a multi-token response: several response positions
    forget = records(tmp_path, "forget", rows)
    retain = records(tmp_path, "retain", letter_rows(5, seed=7, user_offset=100, with_candidates=False))
    entries = adapter_entries(adapters["llama"], [scaled_adapter])
    res = evaluate(llama, tokenizer, entries, forget, retain, bootstrap=0, batch_size=4)
    assert res.data["forget"]["scoring"] == MODE_VOCAB
    reason = res.null_reasons["unlearned_1"]["forget.recall@10"]
    assert "carry no candidates" in reason
    assert res.results["unlearned_1"]["forget"]["recall@10"] is None
    model_o = fresh_with_adapter(tiny_models, adapters["llama"])
    model_u = fresh_with_adapter(tiny_models, scaled_adapter)
    eos = tokenizer.eos_token_id
    kls, shifts, nll_total, tokens_total = [], [], 0.0, 0
    for record in forget.records:
        ctx = prompt_ids(tokenizer, record)
        response = list(tokenizer(record.response, add_special_tokens=False)["input_ids"]) + [eos]
        ids = ctx + response
        lp_o, lp_u = manual_log_probs(model_o, ids), manual_log_probs(model_u, ids)
        positions = range(len(ctx) - 1, len(ids) - 1)  # each predicts one response token
        kls.append(np.mean([float((lp_o[t].exp() * (lp_o[t] - lp_u[t])).sum()) for t in positions]))
        shifts.append(int(lp_o[len(ctx) - 1].argmax()) != int(lp_u[len(ctx) - 1].argmax()))
        nll_total -= sum(float(lp_u[len(ctx) + j - 1, tok]) for j, tok in enumerate(response))
        tokens_total += len(response)
    got = res.per_record["forget"]["unlearned_1"]["kl"]
    # Both sides are float32 forwards (the manual one only upcasts the logits). A log-prob of size
    # <= ln(400) ~ 6 carries a rounding error of a few eps32 * 6 = 7e-7 that depends on the CPU and
    # the batch shape; a KL is a p-weighted mean of differences of two such log-probs, so its error
    # is bounded by ~2x that, whatever the vocabulary size. The KLs are ~1.2e-3, so a relative
    # tolerance near eps32 cannot hold (1.2e-7 off, rel=1e-4, failed on another CPU): absolute
    # 5e-6 (~7 eps32 * 6); measured |float32 - float64 forward| <= 3.7e-7 per record.
    np.testing.assert_allclose(got, kls, rtol=0, atol=5e-6)
    assert min(kls) > 0
    assert res.results["unlearned_1"]["forget"]["kl"] == pytest.approx(np.mean(kls), rel=0, abs=5e-6)
    assert res.results["unlearned_1"]["forget"]["shift"] == pytest.approx(np.mean(shifts))
    # ppl = exp(mean NLL): its relative error is the absolute error of a mean of float32 NLLs of
    # size ~6, a few eps32 * 6 ~ 1e-6 per side: rel 3e-5 (~40 eps32 * 6).
    assert res.results["unlearned_1"]["forget"]["ppl"] == pytest.approx(math.exp(nll_total / tokens_total), rel=3e-5)
    assert res.results["original"]["forget"]["kl"] == 0.0


def test_swapped_adapters_match_dedicated_models(tmp_path, tokenizer, llama, tiny_models, adapters, scaled_adapter):
    """NLL under set_adapter / disable_adapter equals a model that only ever had that adapter."""
    forget = records(tmp_path, "forget", letter_rows(7, seed=8))
    retain = records(tmp_path, "retain", letter_rows(6, seed=9, user_offset=100))
    holdout = records(tmp_path, "holdout", letter_rows(6, seed=10, user_offset=100))
    entries = adapter_entries(adapters["llama"], [scaled_adapter], reference=scaled_adapter, include_base=True)
    assert [e.id for e in entries] == ["original", "unlearned_1", "reference", "base"]
    res = evaluate(llama, tokenizer, entries, forget, retain, holdout, bootstrap=100, batch_size=3)
    for ident, adapter_dir in (("original", adapters["llama"]), ("unlearned_1", scaled_adapter), ("base", None)):
        model = fresh_with_adapter(tiny_models, adapter_dir)
        f = run_set(model, tokenizer, forget, batch_size=5)
        h = run_set(model, tokenizer, holdout, batch_size=5)
        np.testing.assert_allclose(res.passes["forget"].nll[ident], f.nll["model"], rtol=1e-5)
        np.testing.assert_allclose(res.passes["forget"].cand_logp[ident], f.cand_logp["model"], rtol=1e-5, atol=1e-6)
        auc = M.mia_auc(M.membership_scores(f.nll["model"], f.tokens), M.membership_scores(h.nll["model"], h.tokens))
        assert res.results[ident]["privacy"]["mia_auc"] == pytest.approx(auc)
    # the reference is the same weights as unlearned_1: zero gap and zero KL between them
    assert res.results["unlearned_1"]["reference"]["kl"] == pytest.approx(0.0, abs=1e-12)
    assert res.results["reference"]["reference"]["gap@10"] == 0.0
    sf = res.passes["forget"]
    want = float(np.mean(M.kl_from_scores(sf.cand_logp["reference"], sf.cand_logp["original"])))
    assert res.results["original"]["reference"]["kl"] == pytest.approx(want)
    for k in (1, 5, 10):
        gap = abs(res.results["original"]["forget"][f"m@{k}"] - res.results["reference"]["forget"][f"m@{k}"])
        assert res.results["original"]["reference"][f"gap@{k}"] == pytest.approx(gap)
        o, u = res.results["original"], res.results["unlearned_1"]
        value, _ = M.tradeoff_at_k(o["forget"][f"m@{k}"], u["forget"][f"m@{k}"], o["retain"][f"m@{k}"], u["retain"][f"m@{k}"])
        assert u["tradeoff"][f"retain@{k}"] == pytest.approx(value)
    gap = res.memorization_gap
    assert gap["gap"] == pytest.approx(res.results["original"]["privacy"]["mia_auc"] - 0.5)
    lo, hi = res.ci["original"]["privacy"]["mia_auc"]
    assert gap["ci"] == [pytest.approx(lo - 0.5), pytest.approx(hi - 0.5)]
    assert res.cost["sequences"] == 4 * (7 + 6 + 6)  # single-token: one sequence per record and adapter
    assert res.results["base"]["cost"]["sequences"] == 19


def test_candidates_missing_on_some_records(tmp_path, tokenizer, llama, adapters, scaled_adapter):
    rows = letter_rows(6, seed=11)
    del rows[1]["candidates"], rows[4]["candidates"]
    forget = records(tmp_path, "forget", rows)
    retain = records(tmp_path, "retain", letter_rows(6, seed=12, user_offset=100))
    res = evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [scaled_adapter]), forget, retain, bootstrap=20)
    u = res.results["unlearned_1"]
    assert u["forget"]["ndcg@5"] is None
    assert res.null_reasons["unlearned_1"]["forget.ndcg@5"].startswith("2 of 6 forget records have no candidates")
    assert res.data["forget"]["records_without_candidates"] == 2
    assert u["forget"]["kl"] > 0 and u["forget"]["ppl"] > 1  # the rest still runs
    assert u["retain"]["ndcg@5"] is not None
    assert u["tradeoff"]["retain@5"] is None
    assert "ranking metrics are null: 2 of 6 forget records" in res.null_reasons["unlearned_1"]["tradeoff.retain@5"]


def test_k_checks_and_warnings(tmp_path, tokenizer, llama, adapters, scaled_adapter):
    forget = records(tmp_path, "forget", letter_rows(5, seed=13))
    retain = records(tmp_path, "retain", letter_rows(5, seed=14, user_offset=100))
    entries = adapter_entries(adapters["llama"], [scaled_adapter])
    for bad in ([0], [-1], [2.5], [True]):
        with pytest.raises(InputError, match="K must be a positive integer"):
            evaluate(llama, tokenizer, entries, forget, retain, ks=bad)
    fewest = min(len(r["candidates"]) for r in letter_rows(5, seed=13))
    res = evaluate(llama, tokenizer, entries, forget, retain, ks=(1, fewest), bootstrap=0)
    assert any(w.startswith(f"K={fewest} >= {fewest}, the candidate count of some forget records") for w in res.warnings)
    assert not any(w.startswith("K=1 ") for w in res.warnings)


def test_holdout_scope_is_retain_users(tmp_path, tokenizer, llama, adapters, scaled_adapter):
    forget = records(tmp_path, "forget", letter_rows(4, seed=15))
    retain = records(tmp_path, "retain", letter_rows(5, seed=16, user_offset=100))
    # holdout: 3 records of retain users (u100..u102) and 4 of forget users (u0..u3)
    hold_rows = letter_rows(3, seed=17, user_offset=100) + letter_rows(4, seed=18)
    for i, row in enumerate(hold_rows):
        row["id"] = f"H{i}"
    holdout = records(tmp_path, "holdout", hold_rows)
    res = evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [scaled_adapter]), forget, retain, holdout,
                   ks=(1, 10), bootstrap=0)
    assert res.data["holdout"]["scope_records"] == 3
    assert res.data["holdout"]["scope"] == "holdout records of retain users"
    pr = res.per_record["holdout"]["unlearned_1"]["recall@1"]
    assert res.results["unlearned_1"]["holdout"]["recall@1"] == pytest.approx(float(np.mean(pr[:3])))
    assert res.results["unlearned_1"]["tradeoff"]["holdout@10"] is not None
    # holdout records of forget users only: no generalization utility to measure, MIA still runs
    holdout = records(tmp_path, "holdout_f", hold_rows[3:])
    res = evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [scaled_adapter]), forget, retain, holdout,
                   ks=(1, 10), bootstrap=0)
    assert res.data["holdout"]["scope_records"] == 0
    assert res.results["unlearned_1"]["holdout"]["ppl"] is None
    assert res.null_reasons["unlearned_1"]["holdout.recall@1"] == "no holdout record belongs to a retain user"
    assert res.results["unlearned_1"]["tradeoff"]["holdout@10"] is None
    assert res.results["unlearned_1"]["privacy"]["mia_auc"] is not None
    # without user ids on the holdout records: all of D_h, and no second Trade-off
    for row in hold_rows:
        del row["user_id"]
    holdout = records(tmp_path, "holdout2", hold_rows)
    res = evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [scaled_adapter]), forget, retain, holdout,
                   ks=(1, 10), bootstrap=0)
    assert res.data["holdout"]["scope_records"] == 7
    assert res.results["unlearned_1"]["tradeoff"]["holdout@10"] is None
    assert "carry no user_id" in res.null_reasons["unlearned_1"]["tradeoff.holdout@10"]


def test_bootstrap_is_seeded_and_paired(tmp_path, tokenizer, llama, adapters, scaled_adapter):
    forget = records(tmp_path, "forget", letter_rows(8, seed=19))
    retain = records(tmp_path, "retain", letter_rows(8, seed=20, user_offset=100))
    entries = adapter_entries(adapters["llama"], [scaled_adapter])
    a = evaluate(llama, tokenizer, entries, forget, retain, bootstrap=200, seed=3)
    b = evaluate(llama, tokenizer, entries, forget, retain, bootstrap=200, seed=3)
    c = evaluate(llama, tokenizer, entries, forget, retain, bootstrap=200, seed=4)
    assert a.ci == b.ci and a.ci_vs_original == b.ci_vs_original
    assert a.ci != c.ci
    lo, hi = a.ci["unlearned_1"]["forget"]["kl"]
    assert lo <= a.results["unlearned_1"]["forget"]["kl"] <= hi
    # the CI of the original's difference to itself does not exist; the unlearned one's does
    assert "forget" not in a.ci_vs_original["original"]
    assert set(a.ci_vs_original["unlearned_1"]["forget"]) >= {"recall@10", "ndcg@10", "ppl"}


def test_nan_adapter_is_a_runtime_error(tmp_path, tokenizer, llama, adapters):
    from ucan_cli.errors import UcanRuntimeError
    from ucan_cli.io.adapter import LoraAdapter

    src = LoraAdapter.load(adapters["llama"])
    bad = tmp_path / "nan"
    bad.mkdir()
    m = src.modules[0]
    src.with_tensors({m.key_B: torch.full_like(m.B, float("nan"))}).write_into(bad)
    forget = records(tmp_path, "forget", letter_rows(3, seed=21))
    retain = records(tmp_path, "retain", letter_rows(3, seed=22, user_offset=100))
    with pytest.raises(UcanRuntimeError, match="unlearned_1 produced NaN"):
        evaluate(llama, tokenizer, adapter_entries(adapters["llama"], [bad]), forget, retain, bootstrap=0)
    assert not any("lora" in name for name, _ in llama.named_modules())  # unloaded on failure too


def test_reference_for_another_base_is_refused(tmp_path, tokenizer, llama, adapters):
    forget = records(tmp_path, "forget", make_records(3))
    retain = records(tmp_path, "retain", make_records(3, user_offset=50))
    entries = adapter_entries(adapters["llama"], [adapters["llama"]], reference=adapters["gpt2"])
    with pytest.raises(InputError, match=r"reference adapter \(reference\): .*does not exist in the base model"):
        evaluate(llama, tokenizer, entries, forget, retain)


def test_paths_in_the_python_api(tmp_path, tiny_models, adapters, scaled_adapter, llama, tokenizer):
    """evaluate() also takes a model path and record file paths, and gives the same numbers."""
    f = write_jsonl(tmp_path / "f.jsonl", letter_rows(4, seed=23))
    r = write_jsonl(tmp_path / "r.jsonl", letter_rows(4, seed=24, user_offset=100))
    entries = adapter_entries(adapters["llama"], [scaled_adapter])
    by_path = evaluate(str(tiny_models["llama"]), None, entries, f, r, bootstrap=0, device="cpu")
    by_object = evaluate(llama, tokenizer, entries, read_records(f), read_records(r), bootstrap=0)
    assert by_path.results["unlearned_1"]["forget"] == by_object.results["unlearned_1"]["forget"]
    assert by_path.data["forget"]["path"] == str(f)
