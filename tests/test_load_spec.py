"""The one load spec (runtime/load.py: device, dtype, --device-map, --load-in-4bit/8bit) and
float64 statistics whatever the model's dtype.

No GPU and no bitsandbytes here: the 4-bit/8-bit paths are checked up to the point where
transformers receives its ``BitsAndBytesConfig``, the messages for a missing extra or GPU through
the real CLI, and a device-mapped load for real (accelerate places a CPU-only model).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from conftest import forget_retain_world
from ucan_cli.errors import InputError
from ucan_cli.runtime.load import LoadSpec

SETS = ("forget", "retain", "half_a", "half_b")
FIELDS = ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq")


@pytest.fixture()
def w(tmp_path, tiny_models, adapters):
    return forget_retain_world(tmp_path, tiny_models, adapters)


def arrays(stats) -> dict[str, np.ndarray]:
    return {f"{s}.{f}": getattr(getattr(stats, s), f) for s in SETS for f in FIELDS}


def score_with(w, model_and_tok=None, **kw):
    from ucan_cli.flows.score import score

    base = model_and_tok if model_and_tok is not None else str(w["base"])
    if "load" not in kw:
        kw["device"] = "cpu"
    return score(base, w["adapter"], w["forget"], w["retain"], receipt_key=w["key"], **kw)


def loaded(w, dtype=torch.float32):
    from ucan_cli.runtime.models import load_base_model

    return load_base_model(str(w["base"]), device="cpu", dtype=dtype)


# ------------------------------------------------------------------------------- the load spec


def test_load_spec_flags_and_refusals():
    assert LoadSpec.from_flags(load_in_4bit=True).quantize == "4bit"
    assert LoadSpec.from_flags(load_in_8bit=True, device_map="auto").flags() == ["--device-map", "auto", "--load-in-8bit"]
    assert LoadSpec().places_itself is False and LoadSpec(device_map="auto").places_itself is True
    with pytest.raises(InputError, match=r"^--load-in-4bit and --load-in-8bit exclude each other$"):
        LoadSpec.from_flags(load_in_4bit=True, load_in_8bit=True)
    with pytest.raises(InputError, match=r"--device-map auto places the layers itself; drop --device cpu"):
        LoadSpec(device="cpu", device_map="auto")
    with pytest.raises(InputError, match=r"--load-in-4bit needs a CUDA GPU .*drop --device cpu"):
        LoadSpec(device="cpu", quantize="4bit")
    with pytest.raises(InputError, match=r"--device-map: 'everywhere' is not one of auto, balanced, sequential"):
        LoadSpec(device_map="everywhere")
    # the flows' older keywords: merged when they agree, refused when they contradict the spec
    assert LoadSpec.merge(None, device="cpu", dtype="bfloat16") == LoadSpec("cpu", "bfloat16")
    assert LoadSpec.merge(LoadSpec("cpu"), device="cpu") == LoadSpec("cpu")
    with pytest.raises(ValueError, match="disagrees"):
        LoadSpec.merge(LoadSpec("cpu"), device="cuda")


def test_missing_extra_and_missing_gpu_are_one_line_input_errors(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(InputError, match=r"^--load-in-4bit needs bitsandbytes, which is not installed: pip install 'ucan-cli\[quant\]'$"):
        LoadSpec(quantize="4bit").check_available()
    # bitsandbytes present (as on a GPU machine with the extra), but no CUDA device
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InputError, match=r"^--load-in-8bit needs a CUDA GPU \(bitsandbytes quantizes on the GPU\) and this machine has none$"):
        LoadSpec(quantize="8bit").check_available()


def test_quantized_load_hands_transformers_a_bitsandbytes_config():
    """What load_base_model passes to from_pretrained for --load-in-4bit (QLoRA's NF4 recipe)."""
    kwargs = LoadSpec(quantize="4bit", dtype="bfloat16").from_pretrained_kwargs(torch.device("cuda", 1), torch.bfloat16)
    config = kwargs["quantization_config"]
    assert type(config).__name__ == "BitsAndBytesConfig"
    assert config.load_in_4bit and not config.load_in_8bit
    assert config.bnb_4bit_quant_type == "nf4" and config.bnb_4bit_use_double_quant
    assert config.bnb_4bit_compute_dtype == torch.bfloat16
    assert kwargs["device_map"] == {"": 1}  # the whole model on the chosen GPU, placed while loading
    kwargs = LoadSpec(quantize="8bit", device_map="auto").from_pretrained_kwargs(torch.device("cuda"), torch.float16)
    assert kwargs["quantization_config"].load_in_8bit and kwargs["device_map"] == "auto"


def test_cli_load_in_4bit_without_the_extra_exits_2_before_any_weight_loads(w, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("the machine has a GPU: the message under test is for machines without one")
    import importlib.util

    from transformers import AutoModelForCausalLM
    from typer.testing import CliRunner

    from ucan_cli.cli import app

    def refuse(*args, **kwargs):
        raise AssertionError("a weight loaded")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", refuse)
    base = ["score", "--base", str(w["base"]), "--adapter", str(w["adapter"]), "--forget", str(w["forget"]),
            "--retain", str(w["retain"]), "--receipt-key", str(w["key"])]
    out = w["root"] / "s.safetensors"
    run = CliRunner().invoke(app, base + ["-o", str(out), "--load-in-4bit"])
    expected = (r"needs bitsandbytes, which is not installed: pip install 'ucan-cli\[quant\]'"
                if importlib.util.find_spec("bitsandbytes") is None else r"needs a CUDA GPU")
    assert run.exit_code == 2 and run.stdout == ""
    assert re.fullmatch(rf"error: --load-in-4bit {expected}.*\n", run.stderr), run.stderr
    assert not out.exists()
    both = CliRunner().invoke(app, base + ["-o", str(out), "--load-in-4bit", "--load-in-8bit"])
    assert both.exit_code == 2 and both.stderr == "error: --load-in-4bit and --load-in-8bit exclude each other\n"


def test_device_map_load_is_placed_by_accelerate_and_gives_the_same_statistics(w, monkeypatch):
    """--device-map auto on a CPU-only machine: transformers places every layer (on the CPU)
    while loading, and ucan never calls model.to (which a quantized model refuses); the
    statistics are those of a plain load, bit for bit."""
    from transformers import PreTrainedModel

    from ucan_cli.runtime.models import load_base_model

    moved = []
    real_to = PreTrainedModel.to
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, *a, **k: moved.append(a) or real_to(self, *a, **k))
    mapped = load_base_model(str(w["base"]), load=LoadSpec(device_map="auto", dtype="float32"))
    assert moved == [] and {p.device.type for p in mapped.parameters()} == {"cpu"}
    load_base_model(str(w["base"]), load=LoadSpec(device="cpu", dtype="float32"))
    assert len(moved) == 1  # the plain load moves the model to its device; the mapped one did not
    monkeypatch.undo()
    plain = score_with(w, batch_size=8, cache_dir=w["root"] / "cache")
    run = score_with(w, batch_size=8, load=LoadSpec(device_map="auto", dtype="float32"), cache_dir=w["root"] / "cache")
    assert plain.statistics_from == run.statistics_from == "forward pass"  # a mapped load has entries of its own
    again = score_with(w, batch_size=8, load=LoadSpec(device_map="auto", dtype="float32"), cache_dir=w["root"] / "cache")
    assert again.statistics_from == "cache" and again.meta["load"] == run.meta["load"]
    assert run.meta["load"] == {"device": "auto", "dtype": "float32", "device_map": "auto", "quantize": None}
    for name, value in arrays(plain.stats).items():
        assert np.array_equal(arrays(run.stats)[name], value), name
    assert "load" not in plain.meta


# ----------------------------------------------------------------------- float64 under bf16


def test_statistics_of_a_bf16_model_are_float64_sums(w):
    """A bf16 base: the LoRA activations are summed in float64, exactly as a float64 reduction of
    the very activations the model produced (captured here per record), and close to the float32
    model's statistics within bf16 rounding."""
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.statistics import collect_statistics, find_lora_layers
    from ucan_cli.runtime.models import attach_adapter

    run16 = score_with(w, batch_size=1, dtype="bfloat16")
    run32 = score_with(w, batch_size=1, dtype="float32")
    assert run16.meta["dtype"] == "bfloat16" and run32.meta["dtype"] == "float32"
    for name, value in arrays(run16.stats).items():
        assert value.dtype == np.float64, name
    # bf16 has 8 mantissa bits: measured max relative difference to float32 on this world 1.10%
    # (forget.sum_abs) and 1.00% (retain), the same with torch threads 1 and 2; 3% leaves ~2.7x.
    for name in ("forget.sum_abs", "retain.sum_abs", "retain.rec_sum"):
        np.testing.assert_allclose(arrays(run16.stats)[name], arrays(run32.stats)[name], rtol=3e-2, err_msg=name)
    assert not np.array_equal(arrays(run16.stats)["forget.sum_abs"], arrays(run32.stats)["forget.sum_abs"])

    # The hand computation: capture each record's lora_A output, reduce it in float64 by loops.
    from ucan_cli.flows.score import prepare
    from ucan_cli.methods.ucan.params import MethodParams

    prep = prepare(str(w["base"]), w["adapter"], w["forget"], w["retain"], params=MethodParams(), token_scope="response",
                   halves="auto", template="alpaca", max_length=None, retain_max_samples=None, max_samples=None, seed=0,
                   batch_size=1, allow_overlap=False, receipt_key=w["key"], allow_pickle=False, trust_remote_code=False)
    model16 = attach_adapter(loaded(w, torch.bfloat16), w["adapter"])
    adapter = LoraAdapter.load(w["adapter"])
    layers = find_lora_layers(model16, adapter, "default")
    captured: list[list[torch.Tensor]] = []
    handles = [layer.lora_A["default"].register_forward_hook(lambda m, i, o, k=k: captured[-1].append((k, o.detach().clone())))
               for k, layer in enumerate(layers)]
    expected = np.zeros(sum(m.d_out for m in adapter.modules))
    with torch.inference_mode():
        for enc in prep.forget_encoded:
            captured.append([])
            model16(input_ids=torch.tensor([enc.input_ids]), use_cache=False)
            pos = list(range(enc.prompt_len - 1, len(enc.input_ids) - 1))  # positions predicting response tokens
            parts = []
            for k, z in sorted(captured[-1], key=lambda t: t[0]):
                module = adapter.modules[k]
                a = module.scaling * z[0, pos].to(torch.float64) @ module.B.to(torch.float64).T
                parts.append(a.abs().sum(0).numpy())
            expected += np.concatenate(parts)
    for h in handles:
        h.remove()
    got = collect_statistics(model16, adapter, prep.forget_encoded, [], halves=([], []), batch_size=1,
                             pad_id=0).forget.sum_abs
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0)


def test_direction_moments_of_a_bf16_model_are_float64(w):
    """Direction units' d_in x d_in moments are float64 sums too, close to the float32 model's."""
    from ucan_cli.methods.ucan.params import MethodParams

    m16 = score_with(w, batch_size=4, dtype="bfloat16", params=MethodParams(unit="direction")).stats
    m32 = score_with(w, batch_size=4, dtype="float32", params=MethodParams(unit="direction")).stats
    for name in SETS:
        for a, b in zip(getattr(m16, name).sums, getattr(m32, name).sums):
            assert a.dtype == np.float64 and a.shape == b.shape
            # relative to the largest entry: measured max 0.44% on this world (torch threads 1 and 2); 3% leaves ~7x
            assert np.max(np.abs(a - b)) <= 3e-2 * np.max(np.abs(b))


def test_cli_refuses_contradicting_load_flags(w, tmp_path):
    from typer.testing import CliRunner

    from ucan_cli.cli import app

    argv = ["score", "--base", str(w["base"]), "--adapter", str(w["adapter"]), "--forget", str(w["forget"]),
            "--retain", str(w["retain"]), "--receipt-key", str(w["key"]), "-o", str(tmp_path / "s.safetensors")]
    result = CliRunner().invoke(app, argv + ["--device-map", "auto", "--device", "cpu"])
    assert result.exit_code == 2 and "--device-map auto places the layers itself; drop --device cpu" in result.output
    result = CliRunner().invoke(app, argv + ["--device-map", "everywhere"])
    assert result.exit_code == 2 and "--device-map: 'everywhere' is not one of auto, balanced, sequential" in result.output
    assert not (tmp_path / "s.safetensors").exists()
