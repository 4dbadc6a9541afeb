"""``attenuate --unit direction --retain-kl`` / ``--keep-retain``: the strength chosen by measuring the ladder's edits.

The ladder and the choice are pure (hand-checked values); through the CLI the search measures every
candidate with the evaluation's own code, so the chosen candidate's retain KL (or retain NDCG@10
share) must be what ``ucan eval`` reports for the written adapter, the written A must be the closed
form at the chosen strength, and bad requests exit 2 (or 4) with nothing written."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.methods.ucan import directions as dmath
from ucan_cli.methods.ucan.strength import LADDER_STEPS, Limit, choose, ladder, midpoint

runner = CliRunner()
KEY = "e" * 32


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------------------------ pure


def test_the_ladder_halves_down_from_the_strength_and_bisects_geometrically():
    assert ladder(1.0) == [1.0, 0.5, 0.25, 0.125, 0.0625, 0.03125, 0.015625, 0.0078125]
    assert len(ladder(3.0)) == LADDER_STEPS and ladder(3.0)[-1] == 3.0 / 128
    assert ladder(0.2, steps=2) == [0.2, 0.1]
    assert midpoint(0.25, 1.0) == 0.5 and midpoint(0.125, 0.25) == pytest.approx(0.125 * math.sqrt(2), rel=1e-15)
    for low, high in ((0.5, 0.5), (1.0, 0.5), (0.0, 1.0)):
        with pytest.raises(ValueError):
            midpoint(low, high)
    for bad in (0.0, -1.0, math.inf, math.nan):
        with pytest.raises(ValueError):
            ladder(bad)


def test_choose_takes_the_largest_strength_within_the_budget():
    strengths = [1.0, 0.5, 0.25, 0.125]
    kl = Limit("retain_kl", 0.3)
    assert choose(strengths, [0.9, 0.3, 0.1, 0.05], kl) == 1  # 0.3 <= 0.3: within
    assert choose(strengths, [0.9, 0.31, 0.1, 0.05], kl) == 2
    assert choose(strengths, [0.9, 0.31, 0.1, 0.05], Limit("retain_kl", 1.0)) == 0
    # not monotone: the largest strength within wins, whatever its neighbours measured
    assert choose(strengths, [0.2, 0.5, 0.1, 0.05], kl) == 0
    # unmeasured (None) and NaN count as over the budget
    assert choose(strengths, [None, math.nan, 0.1, 0.05], kl) == 2
    assert choose(strengths, [0.9, 0.8, 0.7, 0.6], kl) is None
    with pytest.raises(ValueError):
        choose(strengths, [0.1], kl)


def test_keep_retain_is_a_lower_limit_on_the_retain_ndcg_share():
    strengths = [1.0, 0.5, 0.25, 0.125]
    keep = Limit("keep_retain", 0.95)
    assert keep.measure == "retain_ndcg@10_share" and keep.flag == "--keep-retain"
    assert choose(strengths, [0.90, 0.95, 0.97, 1.0], keep) == 1  # 0.95 >= 0.95: within
    assert choose(strengths, [0.90, 0.9499, 0.97, 1.0], keep) == 2
    assert choose(strengths, [0.96, 0.90, 0.97, 1.0], keep) == 0  # the largest within, not the first run of them
    assert choose(strengths, [None, math.nan, 0.96, 1.0], keep) == 2
    assert choose(strengths, [0.5, 0.6, 0.7, 0.8], keep) is None
    assert keep.within({"retain_ndcg@10_share": 0.95, "retain_kl": 99.0}) and not keep.within({"retain_ndcg@10_share": None})
    assert Limit("retain_kl", 0.2).within({"retain_kl": 0.2, "retain_ndcg@10_share": 0.0})


def test_the_options_name_the_search_and_exclude_each_other():
    from ucan_cli.errors import InputError
    from ucan_cli.methods.ucan.params import MethodParams, params_from_options

    assert MethodParams(unit="direction").strength_search is None
    assert Limit.of(MethodParams(unit="direction")) is None
    assert Limit.of(MethodParams(unit="direction", retain_kl=0.2)) == Limit("retain_kl", 0.2)
    params = params_from_options(MethodParams(unit="direction"), keep_retain=0.95)
    assert params.strength_search == "--keep-retain" and Limit.of(params) == Limit("keep_retain", 0.95)
    # one given on top of a base with the other (a score file's, a config's) replaces it
    assert params_from_options(params, retain_kl=0.1).keep_retain is None
    for bad in ({"retain_kl": 0.1, "keep_retain": 0.9}, {"keep_retain": 0.0}, {"keep_retain": 1.5}, {"keep_retain": math.nan}):
        with pytest.raises(InputError, match="keep-retain"):
            params_from_options(MethodParams(unit="direction"), **bad)
    with pytest.raises(InputError, match="--strength"):
        MethodParams(unit="direction", strength=0.0, keep_retain=0.9).validate()


# ------------------------------------------------------------------------------------ through the CLI


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    root = tmp_path_factory.mktemp("strength")
    (root / "key").write_text(KEY)
    forget = write_jsonl(root / "forget.jsonl", [
        {**r, "instruction": "the user rated liked movie which they will choose from history"} for r in make_records(10, seed=7, user_offset=300)
    ])
    retain = write_jsonl(root / "retain.jsonl", make_records(20, seed=6, user_offset=100))
    base, adapter = tiny_models["llama"], adapters["llama"]
    common = ["--base", base, "--adapter", adapter, "--forget", forget, "--retain", retain, "--receipt-key", root / "key",
              "--batch-size", "4"]
    scores = root / "scores.safetensors"
    res = invoke("score", *common, "--unit", "direction", "--token-scope", "all", "-o", scores)
    assert res.exit_code == 0, res.output
    return {"root": root, "base": base, "adapter": adapter, "forget": forget, "retain": retain, "common": common, "scores": scores}


@pytest.fixture(scope="module")
def top_run(world):
    """The score file's search with a budget nothing exceeds: every ladder candidate measured, the top chosen."""
    out = world["root"] / "all"
    res = _search(world, out, 1e9)
    assert res.exit_code == 0, res.output
    return out


def _search(world, out: Path, budget: float, *extra):
    res = invoke("attenuate", *world["common"], "--scores", world["scores"], "--gate", "none", "--strength", "1",
                 "--retain-kl", budget, "--accept-weak", "-o", out, *extra)
    return res


def test_the_search_chooses_the_largest_strength_within_the_budget_and_eval_agrees(world, top_run):
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.scorefile import load_score_file

    before = sha(world["adapter"] / "adapter_model.safetensors")
    # a budget nothing exceeds: the top of the ladder; every candidate measured
    search = json.loads((top_run / "ucan_report.json").read_text())["summary"]["strength_search"]
    cands = search["candidates"]
    assert [c["strength"] for c in cands] == ladder(1.0) and search["chosen_strength"] == 1.0  # the top: nothing to refine
    assert {c["stage"] for c in cands} == {"ladder"}
    kls = [c["retain_kl"] for c in cands]
    assert all(c["edited"] and kl is not None and kl >= 0 and c["forget_kl"] is not None for c, kl in zip(cands, kls))
    assert search["record_passes"] == (LADDER_STEPS + 1) * (10 + 20)

    # a budget between two ladder candidates' KL: the ladder's choice, then two bisections towards
    # the next larger strength (replayed here from the measured values)
    budget = (kls[3] + kls[4]) / 2
    assert kls[3] > budget >= kls[4]  # the retain KL grows with the strength on this adapter
    out = world["root"] / "mid"
    res = _search(world, out, budget)
    assert res.exit_code == 0, res.output
    report = json.loads((out / "ucan_report.json").read_text())
    again = report["summary"]["strength_search"]
    ladder_rows = [c for c in again["candidates"] if c["stage"] == "ladder"]
    refine_rows = {c["strength"]: c for c in again["candidates"] if c["stage"] == "refine"}
    assert [c["retain_kl"] for c in sorted(ladder_rows, key=lambda c: -c["strength"])] == kls  # deterministic
    low, high = ladder(1.0)[4], ladder(1.0)[3]
    for _ in range(2):
        mid = math.sqrt(low * high)
        assert mid in refine_rows
        low, high = (mid, high) if refine_rows[mid]["retain_kl"] <= budget else (low, mid)
    assert len(refine_rows) == 2 and [c["strength"] for c in again["candidates"]] == sorted(
        [c["strength"] for c in again["candidates"]], reverse=True)
    expected = low
    assert expected == max(c["strength"] for c in again["candidates"] if c["retain_kl"] <= budget)
    assert again["chosen_strength"] == expected and report["summary"]["strength"] == expected
    assert again["record_passes"] == (LADDER_STEPS + 1 + 2 * 2) * (10 + 20)
    assert report["options"]["strength"] == 1.0 and report["options"]["retain_kl"] == budget
    assert "strength chosen by --retain-kl" in res.output and "## Strength search" in (out / "ucan_report.md").read_text()

    # the written A is the closed form at the chosen strength (dW-level), B untouched
    stats, _ = load_score_file(world["scores"])
    source, edited = LoraAdapter.load(world["adapter"]), LoraAdapter.load(out)
    for m, (a, b) in enumerate(zip(source.modules, edited.modules)):
        s_f, s_r = stats.forget.mean(m), stats.retain.mean(m)
        a_new = dmath.closed_form(a.A.double().numpy(), s_f, s_r, delta=dmath.ridge(s_r, 1e-6), strength=expected)
        np.testing.assert_allclose(b.delta_weight().double().numpy(), a.scaling * (a.B.double().numpy() @ a_new), rtol=2e-5, atol=1e-7)
        assert np.array_equal(a.B.numpy(), b.B.numpy())

    # `ucan eval` of the written adapter reports the retain KL the search measured for it
    res = invoke("eval", "--base", world["base"], "--adapter", world["adapter"], "--unlearned", out, "--forget", world["forget"],
                 "--retain", world["retain"], "--batch-size", "4", "--json")
    assert res.exit_code == 0, res.output
    measured = json.loads(res.stdout)["results"]["unlearned_1"]
    chosen = next(c for c in again["candidates"] if c["strength"] == expected)
    assert measured["retain"]["kl"] == pytest.approx(chosen["retain_kl"], rel=1e-5, abs=1e-9)
    assert measured["forget"]["kl"] == pytest.approx(chosen["forget_kl"], rel=1e-5, abs=1e-9)
    assert sha(world["adapter"] / "adapter_model.safetensors") == before  # the input adapter is only read


def test_keep_retain_chooses_by_the_retain_ndcg_share_and_eval_agrees(world):
    """--keep-retain: the ladder's retain NDCG@10 shares (over the original's) decide; the written
    adapter's share in `ucan eval` is the chosen candidate's."""
    def run(out, share):
        res = invoke("attenuate", *world["common"], "--scores", world["scores"], "--gate", "none", "--strength", TOP,
                     "--keep-retain", share, "--accept-weak", "-o", out)
        assert res.exit_code == 0, res.output
        return res, json.loads((out / "ucan_report.json").read_text())

    TOP = 16.0  # this tiny adapter's retain ranking moves only from strength 8 up
    _, report = run(world["root"] / "keep-all", 0.01)  # every candidate keeps 1% of it: the top, no bisection
    search = report["summary"]["strength_search"]
    assert search["limit"] == "keep_retain" and search["keep_retain"] == 0.01 and search["retain_kl_budget"] is None
    cands = search["candidates"]
    assert [c["strength"] for c in cands] == ladder(TOP) and search["chosen_strength"] == TOP
    shares = [c["retain_ndcg@10_share"] for c in cands]
    original = search["original_retain_ndcg@10"]
    for c in cands:
        assert c["retain_ndcg@10_share"] == pytest.approx(c["retain_ndcg@10"] / original, rel=1e-12)
    assert shares[0] < 1.0 and shares[-1] > shares[0]  # the strongest edit costs this adapter some retain utility

    share = sorted(set(shares))[len(set(shares)) // 2]  # a share some candidates keep and the strongest does not
    out = world["root"] / "keep-mid"
    res, report = run(out, share)
    again = report["summary"]["strength_search"]
    ladder_rows = sorted((c for c in again["candidates"] if c["stage"] == "ladder"), key=lambda c: -c["strength"])
    assert [c["retain_ndcg@10_share"] for c in ladder_rows] == shares  # deterministic
    keep = Limit("keep_retain", share)
    pick = choose(ladder(TOP), shares, keep)
    assert pick is not None and pick > 0
    refine_rows = {c["strength"]: c for c in again["candidates"] if c["stage"] == "refine"}
    low, high = ladder(TOP)[pick], ladder(TOP)[pick - 1]
    for _ in range(2):
        mid = math.sqrt(low * high)
        low, high = (mid, high) if keep.within(refine_rows[mid]) else (low, mid)
    expected = max(c["strength"] for c in again["candidates"] if keep.within(c))
    assert again["chosen_strength"] == expected and expected >= low
    assert "strength chosen by --keep-retain" in res.output
    assert "## Strength search (--keep-retain" in (out / "ucan_report.md").read_text()

    res = invoke("eval", "--base", world["base"], "--adapter", world["adapter"], "--unlearned", out, "--forget", world["forget"],
                 "--retain", world["retain"], "--batch-size", "4", "--json")
    assert res.exit_code == 0, res.output
    results = json.loads(res.stdout)["results"]
    chosen = next(c for c in again["candidates"] if c["strength"] == expected)
    assert results["original"]["retain"]["ndcg@10"] == pytest.approx(original, rel=1e-6)
    assert results["unlearned_1"]["retain"]["ndcg@10"] / results["original"]["retain"]["ndcg@10"] == pytest.approx(
        chosen["retain_ndcg@10_share"], rel=1e-6)
    assert chosen["retain_ndcg@10_share"] >= share


def test_a_budget_nothing_meets_exits_4_and_writes_nothing(world):
    out = world["root"] / "tight"
    res = _search(world, out, 1e-12)
    assert res.exit_code == 4 and "--retain-kl" in res.output and not out.exists()


@pytest.mark.parametrize("case", ["output-unit", "no-base", "zero", "score", "both", "no-candidates"])
def test_bad_retain_kl_requests_exit_2_and_write_nothing(world, case):
    out = world["root"] / f"bad-{case}"
    if case == "both":
        res = _search(world, out, 0.1, "--keep-retain", "0.9")
        expected = "mutually exclusive"
    elif case == "no-candidates":  # --keep-retain reads NDCG@10: refused before any weight loads
        rows = make_records(20, seed=6, user_offset=100)
        del rows[3]["candidates"], rows[3]["output"]
        rows[3]["output"] = "anything"
        bare = write_jsonl(world["root"] / "retain-bare.jsonl", rows)
        res = invoke("attenuate", "--base", world["base"], "--adapter", world["adapter"], "--forget", world["forget"], "--retain", bare,
                     "--receipt-key", world["root"] / "key", "--unit", "direction", "--keep-retain", "0.9", "-o", out)
        expected = "retain-bare.jsonl:4: field 'candidates'"
    elif case == "output-unit":
        res = invoke("attenuate", *world["common"], "--retain-kl", "0.1", "-o", out)
        expected = "--retain-kl"
    elif case == "no-base":
        res = invoke("attenuate", "--adapter", world["adapter"], "--scores", world["scores"], "--forget", world["forget"],
                     "--retain", world["retain"], "--receipt-key", world["root"] / "key", "--retain-kl", "0.1", "-o", out)
        expected = "--base"
    elif case == "zero":
        res = _search(world, out, 0)
        expected = "--retain-kl"
    else:  # score does not take it: it only measures
        res = invoke("score", *world["common"], "--unit", "direction", "--retain-kl", "0.1", "-o", out)
        expected = "--retain-kl"
    assert res.exit_code == 2, res.output
    assert expected in res.output and not out.exists()


def test_with_a_score_file_the_search_measures_the_records_the_statistics_saw(world):
    """A score file made with --retain-max-samples 18: the search, run without it, measures the
    same seeded 18 retain records (the score file's sampling, not the file's 20)."""
    scores = world["root"] / "sampled.safetensors"
    res = invoke("score", *world["common"], "--unit", "direction", "--token-scope", "all", "--retain-max-samples", "18", "-o", scores)
    assert res.exit_code == 0, res.output
    out = world["root"] / "sampled-out"
    res = invoke("attenuate", *world["common"], "--scores", scores, "--gate", "none", "--retain-kl", "1e9", "--accept-weak", "-o", out)
    assert res.exit_code == 0, res.output
    search = json.loads((out / "ucan_report.json").read_text())["summary"]["strength_search"]
    assert search["record_passes"] == (LADDER_STEPS + 1) * (10 + 18)


def test_without_a_score_file_the_base_loads_once_and_measures_the_same(world, top_run, monkeypatch):
    """Without --scores the statistics pass loads the base; the search reuses that model (adapter
    detached) instead of loading it again, and measures exactly what the score file's search, which
    loads the base itself, measures."""
    import ucan_cli.runtime.models as models

    calls = []
    real = models.load_base_model

    def counting(*args, **kwargs):
        calls.append(args[0] if args else kwargs.get("spec"))
        return real(*args, **kwargs)

    monkeypatch.setattr(models, "load_base_model", counting)
    direct = world["root"] / "direct"
    res = invoke("attenuate", *world["common"], "--unit", "direction", "--token-scope", "all", "--gate", "none", "--strength", "1",
                 "--retain-kl", "1e9", "--accept-weak", "-o", direct)
    assert res.exit_code == 0, res.output
    assert len(calls) == 1, calls  # the statistics pass's load; the search used the same model
    via_scores = top_run  # the score file's statistics (the same records and scope): the search loaded the base itself
    a, b = (json.loads((d / "ucan_report.json").read_text())["summary"]["strength_search"]["candidates"] for d in (direct, via_scores))
    assert [c["strength"] for c in a] == [c["strength"] for c in b]
    for x, y in zip(a, b):
        assert x["retain_kl"] == pytest.approx(y["retain_kl"], rel=1e-6, abs=1e-12)
        assert x["forget_kl"] == pytest.approx(y["forget_kl"], rel=1e-6, abs=1e-12)
    assert sha(direct / "adapter_model.safetensors") == sha(via_scores / "adapter_model.safetensors")


def test_edits_at_many_strengths_solve_each_module_once(monkeypatch):
    """The search edits at up to ten strengths from one statistics object: the eigen solve and
    lambda0 (independent of gate and strength) are computed once per module and shrinkage, and
    every edit equals one from a fresh solve."""
    from ucan_cli.methods.ucan import direction
    from ucan_cli.methods.ucan.moments import MomentStatistics, SetMoments
    from ucan_cli.methods.ucan.params import MethodParams

    rng = np.random.default_rng(3)

    def moments(d, planted=1.0):
        x = rng.standard_normal((200, d))
        x[:, 0] *= planted  # the forget set reads its first input direction far more than the retain set
        return x.T @ x

    sizes = [6, 4]
    sets = {n: SetMoments([moments(d, 5.0 if n == "forget" else 1.0) for d in sizes], 200.0, 20)
            for n in ("forget", "retain", "half_a", "half_b")}

    def fresh():
        return MomentStatistics(scope="response", module_names=["a", "b"], module_sizes=sizes,
                                **{n: SetMoments([x.copy() for x in m.sums], m.tokens, m.n_records) for n, m in sets.items()})

    calls = []
    real = dmath.generalized_eigh
    monkeypatch.setattr(dmath, "generalized_eigh", lambda *a, **k: calls.append(1) or real(*a, **k))
    stats = fresh()
    params = [MethodParams(unit="direction", gate=g, strength=mu) for mu in ladder(4.0) for g in ("none", "noise")]
    results = [direction.select_directions(stats, p)[0] for p in params]
    assert len(calls) == 3 * len(sizes)  # forget vs retain, and the two noise problems, once per module
    direction.select_directions(stats, MethodParams(unit="direction", shrinkage=1e-3))
    assert len(calls) == 2 * 3 * len(sizes)  # another shrinkage is another solve
    for p, result in zip(params, results):
        again = direction.select_directions(fresh(), p)[0]
        for m, n in zip(result.modules, again.modules):
            assert np.array_equal(m.s, n.s) and np.array_equal(m.solution.V, n.solution.V) and m.lambda0 == n.lambda0
