"""The CLI's shared behaviour: version, help, --config precedence, --json purity, exit codes,
offline failures, and start-up without heavy imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from test_adapter import hand_adapter
from ucan_cli import __version__
from ucan_cli.cli import app
from ucan_cli.errors import InputError

runner = CliRunner()


def test_version_and_help():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"ucan {__version__}"
    result = runner.invoke(app, ["inspect", "--help"])
    assert result.exit_code == 0
    for text in ("Examples", "Model", "Output", "--config", "--json", "--seed", "Exit codes"):
        assert text in result.stdout


HEAVY = ("numpy", "torch", "transformers", "peft", "datasets", "safetensors")
HELP_ARGV = [
    ["--help"], ["--version"], ["inspect", "--help"], ["score", "--help"], ["attenuate", "--help"], ["eval", "--help"],
    ["prepare", "--help"], ["prepare", "movielens", "--help"], ["prepare", "split", "--help"], ["demo", "--help"],
]


def test_help_imports_no_heavy_module():
    """`ucan --help` and `ucan COMMAND --help` must answer fast: none of numpy, torch, transformers,
    peft, datasets or safetensors is imported (the start-up ratio is in benchmarks/startup.py)."""
    code = (
        "import contextlib, io, json, sys\n"
        "from ucan_cli.cli import app\n"
        "found = {}\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "        app(argv, prog_name='ucan')\n"
        "    found[' '.join(argv)] = sorted(m for m in %r if m in sys.modules)\n"
        "print(json.dumps(found))\n"
    ) % (HEAVY,)
    out = subprocess.run([sys.executable, "-c", code, json.dumps(HELP_ARGV)], capture_output=True, text=True, check=True)
    found = json.loads(out.stdout)
    assert list(found) == [" ".join(argv) for argv in HELP_ARGV]
    assert found == {key: [] for key in found}


def test_the_heavy_module_check_can_fail():
    """The check above is not vacuous: importing a command's library flow does pull NumPy in."""
    code = "import sys, ucan_cli.prepare.movielens; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_real_console_script_version_and_error():
    """One subprocess run of the installed entry point: version, then a one-line input error (exit 2)."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "ucan_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"ucan {__version__}"
    assert time.perf_counter() - start < 10  # generous: the real budget is measured in benchmarks
    bad = subprocess.run([sys.executable, "-m", "ucan_cli", "inspect", "/nonexistent/adapter"], capture_output=True, text=True)
    assert bad.returncode == 2
    assert bad.stderr == "error: /nonexistent/adapter: adapter directory not found\n"
    assert bad.stdout == ""


def test_config_file_values_and_cli_precedence(tmp_path):
    adapter = hand_adapter(tmp_path / "a")
    config = tmp_path / "ucan.toml"
    config.write_text('json = true\n[inspect]\nbase = "/nonexistent/base"\n')
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    assert result.exit_code == 2 and "/nonexistent/base: model path not found" in result.stderr
    config.write_text("json = true\n")
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    assert result.exit_code == 0 and json.loads(result.stdout)["totals"]["modules"] == 1
    config.write_text('[inspect]\nnot_an_option = 1\n')
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    assert result.exit_code == 2 and "unknown option(s): not_an_option" in result.stderr
    config.write_text("[inspect\n")
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config)])
    assert result.exit_code == 2 and "invalid TOML" in result.stderr


def test_config_loses_to_command_line(tmp_path, tiny_models):
    adapter = hand_adapter(tmp_path / "a")
    config = tmp_path / "ucan.toml"
    config.write_text('[inspect]\nbase = "/nonexistent/base"\n')
    # --base on the command line wins over the config file; the hand adapter's module does not
    # exist in the tiny Llama (it is 2x2), which proves the CLI value was the one used.
    result = runner.invoke(app, ["inspect", str(adapter), "--config", str(config), "--base", str(tiny_models["llama"])])
    assert result.exit_code == 2 and "LoRA update is 2x2 but the base layer is 32x32" in result.stderr


def test_json_mode_keeps_stdout_pure(tmp_path):
    result = runner.invoke(app, ["inspect", str(hand_adapter(tmp_path / "a", rank_pattern={"q_proj": 2})), "--json"])
    assert result.exit_code == 0
    json.loads(result.stdout)  # the whole stdout is one JSON document
    assert "warning: rank_pattern" in result.stderr


def test_usage_errors_exit_2():
    result = runner.invoke(app, ["inspect"])
    assert result.exit_code == 2
    result = runner.invoke(app, ["no-such-command"])
    assert result.exit_code == 2


def test_hub_id_fails_fast_offline(monkeypatch):
    from ucan_cli.runtime.models import load_tokenizer

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(InputError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_tokenizer("ucan-test-org/definitely-not-cached")
    assert time.perf_counter() - start < 5


def test_unreachable_hub_message(monkeypatch, tmp_path):
    from ucan_cli.runtime.models import load_tokenizer

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(InputError) as info:
        load_tokenizer("ucan-test-org/definitely-not-cached")
    assert info.value.message == (
        "cannot reach the Hub for ucan-test-org/definitely-not-cached; pass a local path or set HF_HUB_OFFLINE=1"
    )


def test_pickle_only_base_refused(tmp_path):
    from ucan_cli.runtime.models import load_base_model

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(InputError, match="--allow-pickle"):
        load_base_model(str(tmp_path))


def test_device_and_dtype_resolution():
    import torch

    from ucan_cli.runtime.models import resolve_device, resolve_dtype

    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InputError, match="--device"):
        resolve_device("tpu")
    with pytest.raises(InputError, match="--dtype"):
        resolve_dtype("float8", torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert os.environ["HF_HUB_OFFLINE"] == "1"


def test_config_keys_use_long_option_names():
    """`lambda = 0.2` in a config file means --lambda, whose parameter is named `lam`."""
    import inspect

    from ucan_cli.commands.attenuate import attenuate
    from ucan_cli.options import _option_names

    names = _option_names({p.name: p.annotation for p in inspect.signature(attenuate).parameters.values()})
    assert names["lambda"] == "lam" and names["lam"] == "lam"
    assert names["token_scope"] == "token_scope" and names["no_contrast"] == "no_contrast"
    assert "contrast" not in names  # the negative spelling of a flag never aliases it


def test_python_api_exports_are_lazy_and_real():
    code = (
        "import sys, ucan_cli; assert 'torch' not in sys.modules; "
        "from ucan_cli import score, attenuate, MethodParams; "
        "import ucan_cli.flows.score, ucan_cli.flows.attenuate, ucan_cli.evaluation.run; "
        "assert score is ucan_cli.flows.score.score and attenuate is ucan_cli.flows.attenuate.attenuate; "
        "assert callable(ucan_cli.evaluation.run.evaluate); print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_method_options_are_generated_from_the_parameter_dataclasses():
    """attenuate takes every U-CAN option and score all but those that measure an edit (--retain-kl,
    --keep-retain),
    in CLI order, where the command placed them; demo only --ratio."""
    import inspect

    from ucan_cli.commands.attenuate import attenuate
    from ucan_cli.commands.demo import demo
    from ucan_cli.commands.score import score
    from ucan_cli.methods.ucan.params import ATTENUATE_ONLY, FLAGS, option_fields

    names = [f.name for f in option_fields()]
    assert names[:3] == ["unit", "token_scope", "halves"] and FLAGS == {"lam": "--lambda"} and ATTENUATE_ONLY == ("retain_kl", "keep_retain")
    for command, after, expected in ((score, "retain", [n for n in names if n not in ATTENUATE_ONLY]), (attenuate, "method", names)):
        params = list(inspect.signature(command).parameters.values())
        start = [p.name for p in params].index(after) + 1
        assert [p.name for p in params[start : start + len(expected)]] == expected
        assert all(p.default is None for p in params[start : start + len(expected)])
    demo_names = set(inspect.signature(demo).parameters)
    assert "ratio" in demo_names and not demo_names & (set(names) - {"ratio"})
    help_text = {
        name: runner.invoke(app, [name, "--help"], env={"COLUMNS": "400"}).stdout for name in ("score", "demo")
    }
    assert "Excludes --tau." in help_text["score"] and "Excludes --tau." not in help_text["demo"]
