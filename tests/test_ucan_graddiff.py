"""``ucan-graddiff``: GradDiff on the lora_B rows of the units U-CAN's contrast selects.

The mask (after a run, lora_A and every unselected row of B are byte-identical to the input, every
selected row moved, and the selected rows are exactly the units ``--method ucan`` would attenuate
with the same options), the verdict gate (weak declines with exit 4 and nothing written unless
--accept-weak, which is recorded; no eligible unit is nothing to do), the ledger (a gradient edit:
no factors composed) and --dry-run's cost, on the tiny Llama of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from conftest import forget_retain_world
from ucan_cli.cli import app

runner = CliRunner()
SELECTION = ("--t-risk", "0.25", "--ratio", "0.2")


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    return forget_retain_world(tmp_path_factory.mktemp("ucan-graddiff"), tiny_models, adapters)


def attenuate(world, out: Path, *extra, method: str = "ucan-graddiff"):
    args = ["attenuate", "--base", world["base"], "--adapter", world["adapter"], "--forget", world["forget"],
            "--retain", world["retain"], "--receipt-key", world["key"], "--method", method, "--batch-size", "4", "-o", out, *extra]
    return runner.invoke(app, [str(a) for a in args])


def ucan_selection(world, *extra) -> dict[str, np.ndarray]:
    """module -> the output units ``--method ucan`` attenuates (s < 1) with the same options."""
    from ucan_cli.flows.attenuate import attenuate as run_attenuate
    from ucan_cli.methods.ucan.edit import unit_factors_by_module

    options = dict(zip([e.lstrip("-").replace("-", "_") for e in extra[::2]], [float(v) for v in extra[1::2]]))
    run = run_attenuate(world["adapter"], None, base=str(world["base"]), forget=world["forget"], retain=world["retain"],
                        params=options, batch_size=4, receipt_key=world["key"], accept_weak=True, dry_run=True)
    return {name: f < 1.0 for name, f in unit_factors_by_module(run.stats, run.result.s).items()}


@pytest.fixture(scope="module")
def weak_run(world):
    """Forget and retain records come from one distribution: at --t-risk 0.25, 12 of 96 units pass
    every rule where the noise reference puts 77 above the threshold, so U-CAN's verdict is weak and
    the plain run declines (exit 4, nothing written); --accept-weak trains (lr 0.01, 3 steps)."""
    out = world["root"] / "weak"
    argv = (*SELECTION, "--lr", "0.01", "--steps", "3")
    declined = attenuate(world, out, *argv)
    assert declined.exit_code == 4 and "declined: the contrast is weak" in declined.stderr and not out.exists()
    result = attenuate(world, out, *argv, "--accept-weak")
    assert result.exit_code == 0, result.output
    return out


def test_only_the_selected_rows_of_b_train(world, weak_run):
    selected = ucan_selection(world, *SELECTION)
    assert 0 < sum(int(v.sum()) for v in selected.values()) < sum(v.size for v in selected.values())
    before, after = load_file(world["adapter"] / "adapter_model.safetensors"), load_file(weak_run / "adapter_model.safetensors")
    assert before.keys() == after.keys()
    for key, tensor in before.items():
        if ".lora_B." not in key:
            assert torch.equal(after[key], tensor), key  # every lora_A, byte for byte
            continue
        rows = selected[key.split("base_model.model.")[1].split(".lora_B")[0]]
        moved = (after[key] != tensor).any(dim=1).numpy()
        assert np.array_equal(moved, rows), key  # the selected rows moved, and only they
    report = json.loads((weak_run / "ucan_report.json").read_text())
    assert report["summary"]["n_selected"] == sum(int(v.sum()) for v in selected.values()) == report["summary"]["n_units_moved"]
    assert "only the lora_B rows" in (weak_run / "README.md").read_text()


def test_accept_weak_is_recorded_and_the_ledger_composes_nothing(world, weak_run):
    from ucan_cli.io.ledger import read_ledger

    report = json.loads((weak_run / "ucan_report.json").read_text())
    assert report["verdict"]["kind"] == "weak" and report["verdict"]["accepted_weak"] is True
    assert report["options"]["accept_weak"] is True and report["options"]["method"] == "ucan-graddiff"
    assert report["training"]["cost"]["setup"] == 12 + 24  # the statistics pass
    entry = read_ledger(weak_run).head.data
    assert entry["request"]["kind"] == "gradient" and entry["request"]["n_edited"] == 0
    assert entry["cumulative_factors"] == {"output": {}, "rank": {}}
    assert "accept_weak = true" in (weak_run / "ucan_config.toml").read_text()
    rerun = runner.invoke(app, ["attenuate", "--config", str(weak_run / "ucan_config.toml"), "--receipt-key", str(world["key"]),
                                "-o", str(world["root"] / "weak-rerun")])
    assert rerun.exit_code == 0, rerun.output
    assert (world["root"] / "weak-rerun" / "adapter_model.safetensors").read_bytes() == (weak_run / "adapter_model.safetensors").read_bytes()


def test_no_eligible_unit_is_nothing_to_do(world):
    """U-CAN's defaults (--t-risk 3): no unit passes the noise gate on this world, U-CAN has nothing
    to select (verdict noise): exit 4, nothing written, --accept-weak or not."""
    out = world["root"] / "noise"
    result = attenuate(world, out, "--accept-weak")
    assert result.exit_code == 4 and not out.exists(), result.output


def test_tau_clears_the_default_ratio_and_dry_run_costs_the_statistics_pass(world, monkeypatch):
    """--tau replaces U-CAN's default --ratio (as for --method ucan); --dry-run: 5 steps x 3 x (4 + 4)
    plus one forward over forget + retain (12 + 24), no model loaded."""
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("--dry-run loaded the model"))
    result = attenuate(world, world["root"] / "dry", "--steps", "5", "--tau", "1.5", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["training"]["estimate"]["forward_equivalents"] == 5 * 3 * 8 + 36
    assert (doc["options"]["tau"], doc["options"]["ratio"]) == (1.5, None)


@pytest.mark.parametrize(
    "method, extra, message",
    [
        ("ucan-graddiff", ["--unit", "rank"], "--unit: not an option of --method ucan-graddiff"),
        ("ucan-graddiff", ["--ratio", "0.1", "--tau", "1"], "--ratio and --tau are mutually exclusive"),
        ("ucan-graddiff", ["--ratio", "2"], "--ratio must be in (0, 1]"),
        ("graddiff", ["--accept-weak"], "--accept-weak: not an option of --method graddiff"),
        ("graddiff", ["--ratio", "0.2"], "--ratio: not an option of --method graddiff"),
    ],
)
def test_bad_options_exit_2_before_any_model_loads(tmp_path, world, monkeypatch, method, extra, message):
    import ucan_cli.runtime.models as models

    monkeypatch.setattr(models, "load_base_model", lambda *a, **k: pytest.fail("a model loaded"))
    result = attenuate(world, tmp_path / "out", *extra, method=method)
    assert result.exit_code == 2, result.output
    assert message in result.output and not (tmp_path / "out").exists()
