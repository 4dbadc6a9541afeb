"""``ucan compare``: every method on one request, one statistics pass, one evaluation, one table.

On the tiny Llama of conftest.py (12 forget, 24 retain, 8 holdout records): the real CLI in a
subprocess writes table.json / table.md / compare.png whose numbers equal a separate ``ucan eval``
of the written adapters, the statistics pass runs once, a declining method is a row with its
reason, equal-forgetting runs stop at the first check that meets U-CAN's forget Recall@5 (their
cost split into training and checks beside U-CAN's), each row's memory peak is its own, and a
bad ``--set`` exits 2 with nothing written. No threshold on a trained model is asserted: every
check compares the run with itself or with an independent computation of the same numbers.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ITEMS, WORDS, forget_retain_world, make_records, write_jsonl
from ucan_cli.errors import InputError

METHODS = "ucan,random,ga,graddiff,prune,negate,retrain"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    root = tmp_path_factory.mktemp("compare")
    w = forget_retain_world(root, tiny_models, adapters)
    # 10 candidates (not conftest's 5), so that Recall@5 is not 1 by construction
    forget, retain = make_records(12, seed=5, n_candidates=10), make_records(24, seed=6, user_offset=100, n_candidates=10)
    w["forget"], w["retain"] = write_jsonl(root / "forget.jsonl", forget), write_jsonl(root / "retain.jsonl", retain)
    w["holdout"] = write_jsonl(root / "holdout.jsonl", make_records(8, seed=7, user_offset=300, n_candidates=10))
    train = forget + retain
    w["train"] = write_jsonl(root / "train.jsonl", train)
    return w


def cli(world, out: Path, *extra: str) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "ucan_cli", "compare", "--base", world["base"], "--adapter", world["adapter"],
            "--forget", world["forget"], "--retain", world["retain"], "--holdout", world["holdout"],
            "--receipt-key", world["key"], "--batch-size", "4", "-o", out, *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def compared(world, tmp_path_factory):
    out = tmp_path_factory.mktemp("cmp") / "out"
    done = cli(world, out, "--methods", METHODS, "--train", world["train"], "--accept-weak",
               "--set", "ucan.t_risk=0.3", "--set", "random.t_risk=0.3",
               "--set", "ga.steps=1,2", "--set", "graddiff.steps=2", "--set", "retrain.epochs=1")
    assert done.returncode == 0, done.stderr
    return out, json.loads((out / "table.json").read_text()), done


def test_writes_the_table_the_adapters_and_the_plot(compared):
    out, doc, done = compared
    assert doc["schema_version"] == 1 and doc["command"] == "compare"
    assert {"inputs", "settings", "statistics", "equal_forgetting_target", "anchors", "rows", "evaluation", "reading",
            "warnings"} <= set(doc)
    labels = [r["label"] for r in doc["rows"]]
    # one row per configuration (ga has two), then one equal-forgetting run per method that takes --until
    assert labels[:8] == ["ucan t_risk=0.3", "random t_risk=0.3", "ga steps=1", "ga steps=2", "graddiff steps=2", "prune", "negate", "retrain epochs=1"]
    assert set(labels[8:]) <= {"ga steps=1 @ U-CAN's forgetting", "graddiff steps=2 @ U-CAN's forgetting"}
    for row in doc["rows"]:
        assert set(row) >= {"label", "method", "options", "status", "reason", "adapter", "metrics", "gap_to_reference",
                            "seconds", "forward_equivalents", "cost", "peak_rss_mb", "peak_rss_scope", "peak_cuda_mb"}
        assert row["peak_cuda_mb"] is None  # a CPU run
        if sys.platform == "linux":  # the high-water mark is reset before each row (runtime/memory.py)
            assert row["peak_rss_scope"] == "stretch" and row["peak_rss_mb"] > 0
        if row["status"] == "ok" and row["method"] not in ("ucan", "random", "negate"):
            # the row's forward-pass equivalents are its report's, split the same way
            report = json.loads((out / row["adapter"] / "ucan_report.json").read_text())
            assert row["forward_equivalents"] == report["training"]["cost"]["forward_equivalents"] == sum(row["cost"].values())
        if row["status"] == "ok":
            assert (out / row["adapter"] / "adapter_model.safetensors").is_file()
            assert (out / row["adapter"] / "ucan_report.json").is_file()
    md = (out / "table.md").read_text()
    for row in doc["rows"]:
        assert f"| {row['label']}" in md
    from ucan_cli.report.plot import plot_available

    if plot_available():  # matplotlib: the ucan-cli[plot] extra, also in [test]
        assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not (out / "compare.png").exists() and "pip install 'ucan-cli[plot]'" in done.stderr
    # the retrained adapter is the reference: its gaps are 0, every other row's is |row - reference|
    ref = next(r for r in doc["rows"] if r.get("is_reference"))
    assert ref["method"] == "retrain" and ref["gap_to_reference"] == {"forget_recall@5": 0.0, "mia_auc": 0.0}
    for row in doc["rows"]:
        if row["metrics"] is not None:
            assert row["gap_to_reference"]["forget_recall@5"] == pytest.approx(
                abs(row["metrics"]["forget_recall@5"] - ref["metrics"]["forget_recall@5"]), abs=1e-6)
    # plain output when stdout is a pipe: the Markdown table
    assert "| method | forget R@5" in done.stdout


def test_rows_equal_a_separate_eval_of_the_written_adapters(compared, world):
    from ucan_cli.flows.compare import METRICS
    from ucan_cli.flows.evaluate import evaluate

    out, doc, _ = compared
    rows = [r for r in doc["rows"] if r["status"] == "ok" and not r.get("is_reference")]
    ref = next(r for r in doc["rows"] if r.get("is_reference"))
    run = evaluate(world["base"], world["adapter"], [out / r["adapter"] for r in rows], world["forget"], world["retain"],
                   world["holdout"], reference=out / ref["adapter"], bootstrap=0, batch_size=4)
    for row, adapter_id in zip(rows, run.result.unlearned_ids):
        for key, path, _ in METRICS:
            assert row["metrics"][key] == run.result.value(adapter_id, path), (row["label"], key)
    for key, path, _ in METRICS:
        assert doc["anchors"]["original"][key] == run.result.value("original", path)


def test_one_statistics_pass_shared_by_the_activation_methods(compared, world):
    out, doc, _ = compared
    n_pass = 12 + 24
    assert doc["statistics"]["forward_equivalents"] == n_pass and (out / "scores.safetensors").is_file()
    for row in doc["rows"]:
        if row["method"] in ("ucan", "random"):
            assert row["forward_equivalents"] == n_pass
            report = json.loads((out / row["adapter"] / "ucan_report.json").read_text())
            assert report["options"]["statistics_from"] == "score file"
        if row["method"] == "negate":
            assert row["forward_equivalents"] == 0


def test_equal_forgetting_stops_at_the_first_check_that_meets_the_target(compared):
    """Whatever each run did (on this tiny world U-CAN's edit leaves forget Recall@5 where it was,
    so the runs decline: check 0 already meets it; the scripted test below makes a run stop), its
    row, its report and the summary agree."""
    out, doc, _ = compared
    target = doc["equal_forgetting_target"]
    ucan = next(r for r in doc["rows"] if r["method"] == "ucan")
    # the target is U-CAN's forget Recall@5, measured on the same records as eval's (same batches, same code)
    assert target["value"] == ucan["metrics"]["forget_recall@5"]
    until_rows = [r for r in doc["rows"] if r["equal_forgetting"]]
    assert {r["method"] for r in until_rows} == {"ga", "graddiff"}
    for row in until_rows:
        assert row["options"]["until"] == f"forget.recall@5 <= {target['value']!r}" and row["options"]["check_every"] == 1
        if row["status"] == "declined":  # the input adapter already forgets as much as U-CAN's edit (check 0 met)
            assert "already holds for the input adapter" in row["reason"]
            assert doc["anchors"]["original"]["forget_recall@5"] <= target["value"]
            continue
        training = json.loads((out / row["adapter"] / "ucan_report.json").read_text())["training"]
        checks = training["checks"]
        assert checks[0]["step"] == 0
        if training["stop_reason"] == "target":
            assert [c["met"] for c in checks] == [False] * (len(checks) - 1) + [True]
            assert checks[-1]["recall@5"] <= target["value"] and row["steps_run"] == checks[-1]["step"]
        else:
            assert training["stop_reason"] == "budget" and not any(c["met"] for c in checks)
    # the summary beside U-CAN's cost (issue 12 item 4): training alone, and with the --until checks
    summary = doc["equal_forgetting"]
    assert summary["value"] == target["value"] and summary["ucan"] == {
        "label": ucan["label"], "forward_equivalents": ucan["forward_equivalents"], "seconds": ucan["seconds"]}
    assert [run["label"] for run in summary["runs"]] == [r["label"] for r in until_rows]
    for run, row in zip(summary["runs"], until_rows):
        assert run["reached"] == (row.get("stop_reason") == "target") and run["steps"] == row.get("steps_run")
        if row["status"] == "ok":
            cost = row["cost"]
            assert run["training_forward_equivalents"] == cost["train"] + cost["setup"]
            assert run["check_forward_equivalents"] == cost["checks"] > 0
            assert run["forward_equivalents"] == cost["train"] + cost["setup"] + cost["checks"] == row["forward_equivalents"]
            assert run["x_ucan"] == round(run["training_forward_equivalents"] / 36, 3)  # U-CAN: the 12 + 24 record pass
            assert run["x_ucan_with_checks"] == round(run["forward_equivalents"] / 36, 3)
    md = (out / "table.md").read_text()
    assert "| method | reached | steps | training fwd-eq |" in md and f"| {ucan['label']} | - | - | 36 | 1.00 |" in md
    assert f"To forget as much as U-CAN (forget R@5 <= {target['value']:.3f}" in doc["reading"]


def test_a_declining_method_is_a_row_with_its_reason(world, tmp_path, monkeypatch):
    """Without --accept-weak U-CAN declines this (unstructured) request, or finds nothing: either
    way its row says why, the others still run, and equal forgetting is skipped with a warning."""
    from ucan_cli.flows.compare import compare

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "out",
                  methods=["ucan", "ga"], settings=["ga.steps=1"], receipt_key=world["key"], batch_size=4)
    ucan, ga = run.document["rows"][:2]
    assert ucan["status"] == "declined" and ucan["reason"] and ucan["adapter"] is None and ucan["metrics"] is None
    assert ga["status"] == "ok" and ga["metrics"] is not None
    assert any("equal forgetting skipped" in w for w in run.warnings)
    assert run.document["equal_forgetting"] is None
    assert f"U-CAN declined: its contrast found nothing to act on ({ucan['reason'].rstrip('.')}); acted: {ga['label']}." in run.document["reading"]


@pytest.mark.parametrize("extra, message", [
    (["--methods", "ga", "--set", "ga.bogus=1"], "not an option of --method ga"),
    (["--methods", "retrain"], "needs --train"),
    (["--reference", "nowhere"], "--reference nowhere: not a LoRA adapter directory"),
])
def test_bad_settings_exit_2_and_write_nothing(world, tmp_path, extra, message):
    out = tmp_path / "out"
    done = cli(world, out, *extra)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


@pytest.mark.parametrize("methods, settings, message", [
    (["ga"], ["ga.lr=abc"], "ga.lr=abc"),
    (["ga"], ["ga.lr=-1"], "--lr"),
    (["ga"], ["npo.lr=0.1"], "not among --methods"),
    (["ga"], ["galr=1"], "METHOD.OPTION=VALUE"),
    (["ucan", "nope"], [], "no such method"),
    (["ga", "ga"], [], "named twice"),
    (["ga"], ["ga.steps=1.5"], "ga.steps=1.5"),
    (["ucan"], ["ucan.unit=rank"], "ucan.unit"),
])
def test_bad_settings_are_refused_before_anything_runs(world, tmp_path, monkeypatch, methods, settings, message):
    import ucan_cli.flows.score as score_flow
    from ucan_cli.flows.compare import compare

    monkeypatch.setattr(score_flow, "score", lambda *a, **k: pytest.fail("a statistics pass ran"))
    with pytest.raises(InputError, match=message.replace(".", r"\.").replace("-", r"\-")):
        compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "out", methods=methods,
                settings=settings, receipt_key=world["key"])
    assert not (tmp_path / "out").exists()


def test_parse_settings_and_configurations():
    from ucan_cli.flows.compare import configurations, parse_settings

    parsed = parse_settings(["graddiff.lr=0.001,0.003", "graddiff.retain-weight=2", "ucan.ratio=0.2"], ["ucan", "graddiff"])
    assert parsed == {"graddiff": [("lr", ["0.001", "0.003"]), ("retain_weight", ["2"])], "ucan": [("ratio", ["0.2"])]}
    configs = configurations(["ucan", "graddiff"], parsed)
    assert [(c.method, c.options) for c in configs] == [
        ("ucan", {"ratio": 0.2}),
        ("graddiff", {"lr": 0.001, "retain_weight": 2.0}), ("graddiff", {"lr": 0.003, "retain_weight": 2.0}),
    ]
    gate = configurations(["ucan-direction"], parse_settings(["ucan-direction.gate=none"], ["ucan-direction"]))
    assert gate[0].options == {"gate": "none"}  # a choice named "none" is not a missing value
    unset = configurations(["prune"], parse_settings(["prune.prune_ratio=none", "prune.prune_count=3"], ["prune"]))
    assert unset[0].options == {"prune_ratio": None, "prune_count": 3}
    with pytest.raises(InputError, match="--prune-ratio must be in"):
        configurations(["prune"], parse_settings(["prune.prune_ratio=2"], ["prune"]))


def test_plot_points_and_the_missing_extra(compared, monkeypatch, tmp_path):
    from ucan_cli.report import plot

    _, doc, _ = compared
    pts = plot.points(doc)
    assert "retrain" not in pts  # the reference is drawn as the reference, not as a method
    ga = [r for r in doc["rows"] if r["method"] == "ga" and not r["equal_forgetting"]]
    assert pts["ga"] == [(r["metrics"]["retain_ndcg@10"], r["metrics"]["forget_recall@5"], float(r["forward_equivalents"])) for r in ga]
    # a hand-made document: a collapse warning crosses out its own row only (not one whose label it prefixes)
    row = {"label": "ga", "metrics": {"retain_ndcg@10": 0.9, "forget_recall@5": 0.4}}
    other = {"label": "ga @ U-CAN's forgetting", "metrics": {"retain_ndcg@10": 0.95, "forget_recall@5": 0.5}}
    assert plot.flagged({"rows": [row, other], "warnings": ["ga: possible collapse: retain PPL rose", "ga @ U-CAN's forgetting: other"]}) == [(0.9, 0.4)]
    assert plot.marker_size(0, 100) == 30.0 and plot.marker_size(100, 100) == 400.0 and plot.marker_size(5, 0) == 30.0


def test_without_matplotlib_the_tables_are_written_and_the_warning_says_how(world, tmp_path, monkeypatch):
    import ucan_cli.report.plot as plot_module
    from ucan_cli.flows.compare import compare

    monkeypatch.setattr(plot_module, "plot_available", lambda: False)
    run = compare(world["base"], world["adapter"], world["forget"], world["retain"], world["holdout"], tmp_path / "out",
                  methods=["negate"], receipt_key=world["key"], batch_size=4)
    assert run.files == ["table.json", "table.md"] and not (tmp_path / "out" / "compare.png").exists()
    assert any("pip install 'ucan-cli[plot]'" in w for w in run.warnings)
    assert (tmp_path / "out" / "table.md").read_text().count("| negate |") == 1


def test_every_method_declining_is_exit_4_with_nothing_written(world, tmp_path):
    from ucan_cli.errors import NothingToDo
    from ucan_cli.flows.compare import compare

    out = tmp_path / "out"
    with pytest.raises(NothingToDo, match="every method declined.*ucan:") as caught:
        compare(world["base"], world["adapter"], world["forget"], world["retain"], None, out, methods=["ucan"],
                receipt_key=world["key"], batch_size=4)
    assert caught.value.exit_code == 4
    assert not out.exists() and not any(p.name.startswith(".out") for p in tmp_path.iterdir())


def test_a_second_comparison_reads_the_statistics_cache(world, tmp_path, monkeypatch):
    """With a cache dir, the shared pass is stored; comparing again (other --set values) runs none."""
    import ucan_cli.flows.score as score_flow
    from ucan_cli.flows.compare import compare

    kwargs = dict(methods=["ucan", "negate"], receipt_key=world["key"], batch_size=4, accept_weak=True,
                  cache_dir=tmp_path / "cache", equal_forgetting=False)
    first = compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "a",
                    settings=["ucan.t_risk=0.3"], **kwargs)
    assert first.document["statistics"]["from"] == "forward pass"
    monkeypatch.setattr(score_flow, "collect_statistics", lambda *a, **k: pytest.fail("a forward pass ran"))
    second = compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "b",
                     settings=["ucan.t_risk=0.2"], **kwargs)
    assert second.document["statistics"]["from"] == "cache"
    assert (tmp_path / "a" / "scores.safetensors").read_bytes() == (tmp_path / "b" / "scores.safetensors").read_bytes()


def test_direction_units_get_their_own_statistics_pass(world, tmp_path):
    from ucan_cli.flows.compare import compare

    run = compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "out",
                  methods=["ucan", "ucan-direction", "negate"], settings=["ucan.t_risk=0.3"], receipt_key=world["key"],
                  batch_size=4, accept_weak=True, equal_forgetting=False)
    passes = run.document["statistics_passes"]
    assert [p["unit"] for p in passes] == ["output", "direction"] and run.document["statistics"]["unit"] == "output"
    for p in passes:
        assert (tmp_path / "out" / p["file"]).is_file() and p["forward_equivalents"] == 12 + 24
    rows = {r["method"]: r for r in run.document["rows"]}
    assert rows["ucan-direction"]["forward_equivalents"] == 36
    if rows["ucan-direction"]["status"] == "ok":  # a random forget sample may rightly be noise for directions
        report = json.loads((tmp_path / "out" / rows["ucan-direction"]["adapter"] / "ucan_report.json").read_text())
        assert report["unit"] == "direction"
    else:
        assert rows["ucan-direction"]["reason"]

@pytest.mark.parametrize("limit", ["retain-kl=1e9", "keep-retain=0.01"])
def test_a_direction_strength_search_gets_the_model_and_counts_its_passes(world, tmp_path, limit):
    """`--set ucan-direction.retain-kl=...` (or `keep-retain`): the row's attenuate gets the base and
    the retain set for the search, and its cost adds the search's record passes (8 candidates and
    the original over D_f + D_r) to the shared statistics pass."""
    from ucan_cli.flows.compare import compare

    # the forget set answers with item words, the retain set with other words: separable along input
    # directions at the response. The forget records have 5 response tokens and no candidates
    # (full-vocabulary KL); --keep-retain ranks the retain set's candidates (2 words, one the answer:
    # a candidate costs a pass)
    def retain_record(i, r):
        if limit.startswith("retain-kl"):
            return {k: v for k, v in r.items() if k != "candidates"} | {"output": " ".join(random.Random(i).sample(WORDS, 5))}
        candidates = random.Random(i).sample(WORDS, 2)
        return r | {"output": candidates[0], "candidates": candidates}

    n_forget, n_retain = (20, 80) if limit.startswith("retain-kl") else (10, 40)  # candidates cost passes: fewer records
    forget = write_jsonl(tmp_path / "forget.jsonl", [
        {k: v for k, v in r.items() if k != "candidates"} | {"output": " ".join(random.Random(i).sample(ITEMS, 5))}
        for i, r in enumerate(make_records(n_forget, seed=8, user_offset=400))
    ])
    retain = write_jsonl(tmp_path / "retain.jsonl", [retain_record(i, r) for i, r in enumerate(make_records(n_retain, seed=9, user_offset=500))])
    run = compare(world["base"], world["adapter"], forget, retain, None, tmp_path / "out",
                  methods=["ucan-direction"], settings=["ucan-direction.gate=none", f"ucan-direction.{limit}"],
                  receipt_key=world["key"], batch_size=4, accept_weak=True, equal_forgetting=False)
    row = run.document["rows"][0]
    assert row["status"] == "ok", row["reason"]
    report = json.loads((tmp_path / "out" / row["adapter"] / "ucan_report.json").read_text())
    search = report["summary"]["strength_search"]
    n = n_forget + n_retain
    assert search["chosen_strength"] == 1.0 and search["record_passes"] == 9 * n
    assert row["forward_equivalents"] == n + 9 * n and row["cost"] == {"statistics": n, "strength_search": 9 * n}


def _row(label, forget_r5, retain_ndcg, mia, *, method=None, fwd=100, ref=(0.2, 0.3)):
    metrics = {"forget_recall@5": forget_r5, "retain_ndcg@10": retain_ndcg, "mia_auc": mia}
    return {"label": label, "method": method or label, "status": "ok", "reason": None, "metrics": metrics, "equal_forgetting": False,
            "forward_equivalents": fwd, "gap_to_reference": {"forget_recall@5": round(abs(forget_r5 - ref[0]), 6), "mia_auc": round(abs(mia - ref[1]), 6)}}


def test_reading_names_the_closest_method_that_keeps_utility_and_what_eval_flags():
    """By hand: original retain NDCG@10 1.0, so the floor is 0.95. 'wreck' is closest to the
    reference but below the floor; 'near' (gaps 0.05 + 0.05) is next but eval flags a collapse on
    it, so 'mid' (0.1 + 0.1) is the pick and 'near' is named with its flag; 'far' (0.3 + 0.2)
    loses; a warning on another row ('nearby') is not near's; U-CAN's edit is named beside them."""
    from ucan_cli.flows.compare import reading

    anchors = {"original": {"forget_recall@5": 0.9, "retain_ndcg@10": 1.0}, "reference": {"forget_recall@5": 0.2, "mia_auc": 0.3}}
    rows = [_row("ucan", 0.5, 0.96, 0.5, fwd=800), _row("far", 0.5, 0.99, 0.5), _row("near", 0.25, 0.951, 0.35, fwd=300),
            _row("mid", 0.3, 0.97, 0.4, fwd=200), _row("wreck", 0.2, 0.5, 0.3), _row("nearby", 0.9, 0.99, 0.9)]
    warnings = ["near: possible collapse: retain PPL rose", "nearby: possible collapse: not this one"]
    text = reading(rows, anchors, None, warnings)
    assert text.startswith("Closest to the reference with retain NDCG@10 within 0.95x the original's and no collapse flagged: mid "
                           "(forget R@5 0.900 -> 0.300, the reference's 0.200; MIA AUC 0.400, the reference's 0.300; retain NDCG@10 "
                           "0.970; 200 forward-pass equivalents). near comes closer (forget R@5 0.250, retain NDCG@10 0.951) but eval "
                           "flags possible collapse: retain PPL rose. U-CAN's edit (ucan): forget R@5 0.500, retain NDCG@10 0.960, "
                           "800 forward-pass equivalents.")
    assert "not this one" not in text and "No reference" not in text
    # without a reference: the most forgetting that keeps utility unflagged, and the hint to get one
    no_ref = reading(rows, {"original": anchors["original"]}, None, warnings)
    assert "Most forgetting with retain NDCG@10 within 0.95x the original's and no collapse flagged: mid" in no_ref
    assert "No reference: pass --reference" in no_ref


def test_equal_forgetting_summary_by_hand():
    from ucan_cli.flows.compare import equal_forgetting_summary

    ucan = {"label": "ucan", "forward_equivalents": 800, "seconds": 4.0, "equal_forgetting": False}
    reached = {"label": "ga @ U-CAN's forgetting", "method": "ga", "status": "ok", "reason": None, "equal_forgetting": True, "steps_run": 2,
               "stop_reason": "target", "cost": {"train": 96, "setup": 0, "checks": 600}, "forward_equivalents": 696, "seconds": 1.0}
    budget = {**reached, "label": "npo @ U-CAN's forgetting", "method": "npo", "steps_run": 50, "stop_reason": "budget",
              "cost": {"train": 2000, "setup": 400, "checks": 10200}, "forward_equivalents": 12600}
    before = {**reached, "method": "graddiff", "status": "declined", "reason": "already holds", "steps_run": None, "stop_reason": None,
              "cost": None, "forward_equivalents": None}
    doc = equal_forgetting_summary([ucan, reached, budget, before], ucan, {"metric": "forget.recall@5", "value": 0.5})
    assert doc["ucan"] == {"label": "ucan", "forward_equivalents": 800, "seconds": 4.0}
    ga, npo, graddiff = doc["runs"]
    assert (ga["reached"], ga["training_forward_equivalents"], ga["x_ucan"], ga["x_ucan_with_checks"]) == (True, 96, 0.12, 0.87)
    assert (npo["reached"], npo["training_forward_equivalents"], npo["x_ucan"], npo["x_ucan_with_checks"]) == (False, 2400, 3.0, 15.75)
    assert (graddiff["reached"], graddiff["status"], graddiff["training_forward_equivalents"], graddiff["x_ucan"]) == (False, "declined", None, None)
    assert equal_forgetting_summary([ucan], ucan, None) is None


@pytest.mark.skipif(sys.platform != "linux", reason="the resident high-water mark can be reset only on Linux (/proc/self/clear_refs)")
def test_peak_memory_is_each_stretchs_own():
    """64 MiB touched inside the first stretch shows in its peak; the second stretch, after the
    buffer is freed, starts from a reset mark and does not see it."""
    from ucan_cli.runtime.memory import PeakMemory

    first = PeakMemory.start()
    buffer = b"\x01" * (64 * 1024 * 1024)  # written, so resident
    peak_first = first.stop()
    del buffer
    second = PeakMemory.start()
    peak_second = second.stop()
    assert peak_first["rss_scope"] == peak_second["rss_scope"] == "stretch" and peak_first["cuda_mb"] is None
    assert peak_first["rss_mb"] - peak_second["rss_mb"] > 48


def test_an_equal_forgetting_run_stops_at_the_first_check_that_meets_ucans_value(world, tmp_path, monkeypatch):
    """On the tiny world U-CAN's edit does not move forget Recall@5, so the subprocess run above
    declines its equal-forgetting runs (check 0 already meets the target). Here U-CAN's value is
    set to 0.5 and the forget probe scripted as 0.9, 0.8, 0.7, 0.45, 0.4 at checks 0, 1, 2, ...
    (the real model runs; only the Recall@5 it reports is replaced): compare hands GA the target
    with a check every step, the run stops at step 3, and its row and the summary say so, with
    its cost by hand: 3 steps x 4 records x 3 (forward + backward) = 36 to train, the same as
    U-CAN's 36 (its statistics pass over 12 + 24 records); checks: 4 passes over the 12 forget
    records plus the retain pass at the stop (24), each record forwarded as 11 sequences (its
    answer and its 10 multi-token candidates: the probe's own count)."""
    import ucan_cli.flows.compare as flow
    import ucan_cli.flows.model_inputs as model_inputs

    real, script = model_inputs.measure, iter([0.9, 0.8, 0.7, 0.45, 0.4])

    def scripted(model, tokenizer, records, **kwargs):
        metrics, cost = real(model, tokenizer, records, **kwargs)
        if len(records) == 12:  # the forget set (the retain set has 24 records)
            metrics["recall@5"] = next(script)
        return metrics, cost

    monkeypatch.setattr(model_inputs, "measure", scripted)
    monkeypatch.setattr(flow, "_forget_recall_at_5", lambda *args, **kwargs: (0.5, 12))
    run = flow.compare(world["base"], world["adapter"], world["forget"], world["retain"], None, tmp_path / "out",
                       methods=["ucan", "ga"], settings=["ucan.t_risk=0.3", "ga.steps=1"], accept_weak=True,
                       receipt_key=world["key"], batch_size=4)
    doc = run.document
    row = doc["rows"][-1]
    assert (row["label"], row["equal_forgetting"], row["status"]) == ("ga steps=1 @ U-CAN's forgetting", True, "ok")
    assert row["options"] == {"steps": 20, "until": "forget.recall@5 <= 0.5", "check_every": 1}  # max(20, 5 x 1) steps
    assert (row["steps_run"], row["stop_reason"]) == (3, "target")
    training = json.loads((tmp_path / "out" / row["adapter"] / "ucan_report.json").read_text())["training"]
    assert [(c["step"], c["recall@5"], c["met"]) for c in training["checks"]] == [
        (0, 0.9, False), (1, 0.8, False), (2, 0.7, False), (3, 0.45, True)]
    checks = (4 * 12 + 24) * 11
    assert row["cost"] == {"train": 36, "setup": 0, "checks": checks} and row["forward_equivalents"] == 36 + checks
    (summary_run,) = doc["equal_forgetting"]["runs"]
    assert doc["equal_forgetting"]["ucan"]["forward_equivalents"] == 36
    assert {k: summary_run[k] for k in ("reached", "steps", "training_forward_equivalents", "check_forward_equivalents",
                                        "forward_equivalents", "x_ucan", "x_ucan_with_checks")} == {
        "reached": True, "steps": 3, "training_forward_equivalents": 36, "check_forward_equivalents": checks,
        "forward_equivalents": 36 + checks, "x_ucan": 1.0, "x_ucan_with_checks": round((36 + checks) / 36, 3)}
    assert f"ga in 3 steps (36 to train, 1.0x U-CAN's; {36 + checks} with its checks)" in doc["reading"]
