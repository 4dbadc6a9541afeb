"""U-CAN's outputs, pinned: a refactor of the house must not change a byte of what users get.

The pins are portable (no number here depends on this machine's float rounding):
- ``tests/data/seed0-group-scores.safetensors`` is the score file `ucan score` wrote (ucan 0.1.0,
  default options) for the shipped seed-0 group world, whose weights ship with the package:
  ``ucan score --base W/base --adapter W/original --forget W/forget.jsonl --retain W/retain.jsonl``.
  Steps 2-6 from it are pure float64 maths, so the attenuated adapter's bytes are the same on every
  machine, and so is the score file re-written from its own statistics.
- A fresh forward pass is compared with the pinned statistics at a float32 tolerance (activations
  are float32, summed in float64), not by hash.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

PINNED_SCORES = Path(__file__).parent / "data" / "seed0-group-scores.safetensors"
#: sha256 of adapter_model.safetensors from `ucan attenuate --scores PINNED_SCORES` (defaults).
#: Its safetensors metadata names the ucan version: a version bump changes this pin, nothing else may.
PINNED_ADAPTER_SHA256 = "e76ff663d0b9ba7c18e03f3684cfcd049b3b83a8b410c116abd6f15ce430de70"
#: sha256 of the pinned score file itself.
PINNED_SCORES_SHA256 = "d2f16c369fef9634536a4df3ee52897112c4ccbed80e4085544cb7a83e822cea"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from ucan_cli.demo.cache import ensure_world

    directory, how = ensure_world(0, "group", "default", root=tmp_path_factory.mktemp("cache"))
    assert how == "shipped"
    return directory


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pinned_score_file_is_the_one_this_test_pins():
    assert sha256(PINNED_SCORES) == PINNED_SCORES_SHA256


def test_attenuate_from_the_pinned_score_file_gives_the_pinned_adapter(world, tmp_path):
    from ucan_cli.flows.attenuate import attenuate

    key = tmp_path / "key"
    key.write_text("pinned-test-receipt-key-0123456789\n")
    run = attenuate(world / "original", tmp_path / "out", scores=PINNED_SCORES, forget=world / "forget.jsonl", receipt_key=key)
    assert run.output_sha256 == sha256(tmp_path / "out" / "adapter_model.safetensors") == PINNED_ADAPTER_SHA256
    report = json.loads((tmp_path / "out" / "ucan_report.json").read_text())
    assert report["summary"]["k"] == 71 and report["summary"]["n_attenuated"] == 87


def test_score_file_round_trip_is_byte_identical(tmp_path):
    from ucan_cli.methods.ucan.scorefile import load_score_file, save_score_file
    from safetensors import safe_open

    stats, meta = load_score_file(PINNED_SCORES)
    with safe_open(str(PINNED_SCORES), "np") as handle:
        result_meta = handle.metadata()
    assert stats.unit == "output" and meta["halves"] == "users" and "result" in result_meta
    from ucan_cli.methods.ucan.statistics import method_inputs
    from ucan_cli.methods.ucan.params import params_from_dict
    from ucan_cli.methods.ucan.scoring import compute_scores

    result = compute_scores(**method_inputs(stats), params=params_from_dict(dict(meta["params"])))
    out = save_score_file(tmp_path / "again.safetensors", stats, result, meta, force=False)
    assert Path(out).read_bytes() == PINNED_SCORES.read_bytes()


def test_fresh_statistics_match_the_pinned_ones(world, tmp_path):
    """The forward pass today gives the pinned statistics, to float32 accuracy (the activations
    are float32: relative differences of about 1e-6 across CPUs and thread counts)."""
    from ucan_cli.flows.score import score
    from ucan_cli.methods.ucan.scorefile import load_score_file

    key = tmp_path / "key"
    key.write_text("pinned-test-receipt-key-0123456789\n")
    pinned, _ = load_score_file(PINNED_SCORES)
    run = score(str(world / "base"), world / "original", world / "forget.jsonl", world / "retain.jsonl", receipt_key=key)
    for name in ("forget", "retain", "half_a", "half_b"):
        got, want = getattr(run.stats, name), getattr(pinned, name)
        assert got.n_records == want.n_records and np.array_equal(got.tokens, want.tokens)
        for field in ("sum_abs", "sum_sq", "rec_sum", "rec_sumsq"):
            np.testing.assert_allclose(getattr(got, field), getattr(want, field), rtol=1e-4, atol=1e-9, err_msg=f"{name}.{field}")
