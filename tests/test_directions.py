"""Direction units (SPEC 3b): the closed form, the eigen edit, basis-freedom, the statistics'
invariances, a planted subspace, memory groups, and the CLI end to end on every adapter kind."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.methods.ucan import directions as dmath

runner = CliRunner()
KEY = "d" * 32


def random_moments(d: int, n: int, seed: int, scale=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) * (scale if scale is not None else 1.0)
    return x.T @ x / n


# ------------------------------------------------------------------------------------ pure maths


@pytest.mark.parametrize("mu", [0.05, 1.0, 30.0])
def test_gate_none_equals_the_closed_form_and_the_eigen_edit(mu):
    d, r = 12, 3
    rng = np.random.default_rng(0)
    s_f = random_moments(d, 40, 1, scale=np.linspace(0.2, 3, d))
    s_r = random_moments(d, 30, 2)  # n > d: full rank; delta keeps it well posed anyway
    A = rng.standard_normal((r, d))
    delta = dmath.ridge(s_r, 1e-6)
    assert delta == pytest.approx(1e-6 * np.trace(s_r) / d, rel=1e-15)
    sol = dmath.generalized_eigh(s_f, s_r, delta)
    # V^T (S_r + delta I) V = I and S_f V = (S_r + delta I) V diag(lambda)
    reg = s_r + delta * np.eye(d)
    np.testing.assert_allclose(sol.V.T @ reg @ sol.V, np.eye(d), atol=1e-10)
    np.testing.assert_allclose(s_f @ sol.V, reg @ sol.V * sol.lam[None, :], atol=1e-9)
    assert np.all(np.diff(sol.lam) <= 0)
    s = dmath.factors(sol.lam, strength=mu, gate="none")
    eigen = dmath.edit_a(A, sol, s)
    closed = dmath.closed_form(A, s_f, s_r, delta=delta, strength=mu)
    formula = A @ reg @ np.linalg.inv(reg + mu * s_f)  # the SPEC's formula, literally
    np.testing.assert_allclose(closed, formula, rtol=0, atol=1e-10 * np.abs(A).max())
    np.testing.assert_allclose(eigen, formula, rtol=0, atol=1e-10 * np.abs(A).max())


def test_gate_noise_edits_only_directions_above_lambda0_and_mu_zero_is_identity():
    lam = np.array([9.0, 3.0, 2.0, 0.5])
    s = dmath.factors(lam, strength=0.5, gate="noise", lambda0=2.0)
    np.testing.assert_array_equal(s, [1 / (1 + 0.5 * 7.0), 1 / (1 + 0.5 * 1.0), 1.0, 1.0])
    sol = dmath.generalized_eigh(random_moments(5, 20, 3), random_moments(5, 20, 4), 1e-6)
    A = np.arange(10.0).reshape(2, 5)
    np.testing.assert_array_equal(dmath.edit_a(A, sol, np.ones(5)), A)
    with pytest.raises(ValueError):
        dmath.factors(lam, strength=1.0, gate="soft")


def test_a_planted_input_subspace_is_attenuated_there_and_nowhere_else():
    """Retain tokens fill R^d evenly; the forget set has, on top, 50x energy in a hidden 2-d
    subspace P. The edit removes A's response to P and leaves A on P's S_r-orthogonal complement."""
    d = 10
    rng = np.random.default_rng(7)
    P = np.linalg.qr(rng.standard_normal((d, 2)))[0]
    s_r = np.eye(d)
    s_f = np.eye(d) + 50.0 * P @ P.T
    delta = dmath.ridge(s_r, 1e-6)
    sol = dmath.generalized_eigh(s_f, s_r, delta)
    lambda0, _ = dmath.noise_level(np.eye(d), np.eye(d), delta)  # identical halves: lambda0 = 1 / (1 + delta)
    s = dmath.factors(sol.lam, strength=1.0, gate="noise", lambda0=lambda0)
    assert (s < 1 - 1e-12).sum() == 2  # off P, lambda = lambda0 up to rounding
    np.testing.assert_allclose(s[:2], 1.0 / (1.0 + (51.0 / (1 + delta) - lambda0)), rtol=1e-9)
    A = rng.standard_normal((3, d))
    A2 = dmath.edit_a(A, sol, s)
    np.testing.assert_allclose(A2 @ P, (A @ P) * s[0], atol=1e-9)  # attenuated by exactly s on P
    Q = np.linalg.qr(np.concatenate([P, rng.standard_normal((d, d - 2))], axis=1))[0][:, 2:]
    np.testing.assert_allclose(A2 @ Q, A @ Q, atol=1e-12)  # untouched off P


def test_an_edit_of_a_rotated_adapter_gives_the_same_dw_but_rank_units_do_not(adapters):
    """B A = (B Q)(Q^T A): the same model. Direction units read the module's input only, so the
    same moments give the same dW'; rank units scale B's columns, which depend on the basis."""
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.direction import edit_directions
    from ucan_cli.methods.ucan.edit import apply_factors
    from ucan_cli.methods.ucan.params import MethodParams

    source = LoraAdapter.load(adapters["llama"])
    rng = np.random.default_rng(11)
    replacements = {}
    for module in source.modules:
        Q = torch.from_numpy(np.linalg.qr(rng.standard_normal((module.r, module.r)))[0])
        replacements[module.key_A] = (Q.T @ module.A.to(torch.float64)).to(torch.float32)
        replacements[module.key_B] = (module.B.to(torch.float64) @ Q).to(torch.float32)
    rotated = source.with_tensors(replacements)
    stats = synthetic_moments(source, seed=12)
    params = MethodParams(unit="direction", gate="none", strength=0.7)
    a, b = edit_directions(source, stats, params).adapter, edit_directions(rotated, stats, params).adapter
    for ma, mb, m0, m1 in zip(a.modules, b.modules, source.modules, rotated.modules):
        torch.testing.assert_close(m1.delta_weight(), m0.delta_weight(), rtol=0, atol=1e-5)  # same model
        torch.testing.assert_close(mb.delta_weight(), ma.delta_weight(), rtol=0, atol=1e-5)  # same edit
        assert float((ma.delta_weight() - m0.delta_weight()).abs().max()) > 1e-3  # and it did edit
    factors = {m.name: np.linspace(0.1, 1.0, m.r) for m in source.modules}
    ra, _ = apply_factors(source, factors, "rank")
    rb, _ = apply_factors(rotated, factors, "rank")
    gaps = [float((x.delta_weight() - y.delta_weight()).abs().max()) for x, y in zip(ra.modules, rb.modules)]
    assert min(gaps) > 1e-2  # rank units: the same factors give another model after a rotation


def synthetic_moments(adapter, seed: int, n_tokens: int = 200):
    """Moment statistics for ``adapter`` from Gaussian tokens: retain isotropic-ish, forget with
    extra energy in a few directions per module; halves are two retain draws."""
    from ucan_cli.methods.ucan.moments import MomentStatistics, SetMoments

    rng = np.random.default_rng(seed)
    sets = {name: [] for name in ("forget", "retain", "half_a", "half_b")}
    for module in adapter.modules:
        d = module.d_in
        spike = rng.standard_normal((d, 2)) * 3
        half_a = (x := rng.standard_normal((n_tokens, d))).T @ x
        half_b = (y := rng.standard_normal((n_tokens, d))).T @ y
        f = rng.standard_normal((n_tokens, d)) + rng.standard_normal((n_tokens, 2)) @ spike.T
        sets["forget"].append(f.T @ f)
        sets["retain"].append(half_a + half_b)
        sets["half_a"].append(half_a)
        sets["half_b"].append(half_b)
    tokens = {"forget": n_tokens, "retain": 2 * n_tokens, "half_a": n_tokens, "half_b": n_tokens}
    return MomentStatistics(
        scope="response", module_names=[m.name for m in adapter.modules], module_sizes=[m.d_in for m in adapter.modules],
        **{k: SetMoments(v, float(tokens[k]), 10) for k, v in sets.items()},
    )


# ------------------------------------------------------------------------------------ statistics


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters):
    root = tmp_path_factory.mktemp("directions")
    (root / "key").write_text(KEY)
    return {
        "root": root, "key": root / "key", "models": tiny_models, "adapters": adapters,
        "forget": write_jsonl(root / "forget.jsonl", make_records(10, seed=5)),
        "retain": write_jsonl(root / "retain.jsonl", make_records(20, seed=6, user_offset=100)),
        # a forget set that differs systematically: its own instruction words, read at every position
        "distinct": write_jsonl(root / "distinct.jsonl", [
            {**r, "instruction": "the user rated liked movie which they will choose from history"} for r in make_records(10, seed=7, user_offset=300)
        ]),
    }


def _moments(world, arch, adapter_key, *, batch_size=4, padding_side="left", reverse=False, max_memory=4.0):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.io.data import read_records
    from ucan_cli.io.prompts import PromptFormatter
    from ucan_cli.io.tokenize import encode_set, pad_token_id
    from ucan_cli.methods.ucan.moments import collect_moments
    from ucan_cli.runtime.models import attach_adapter

    tok = AutoTokenizer.from_pretrained(world["models"][arch])
    model = attach_adapter(AutoModelForCausalLM.from_pretrained(world["models"][arch], dtype=torch.float32), world["adapters"][adapter_key])
    fmt = PromptFormatter("alpaca", tokenizer=tok)
    forget = encode_set(read_records(world["forget"], "forget"), tok, fmt, 128)
    retain = encode_set(read_records(world["retain"], "retain"), tok, fmt, 128)
    halves = (list(range(0, 20, 2)), list(range(1, 20, 2)))
    if reverse:  # record order: reverse both sets and remap the halves
        forget, retain = forget[::-1], retain[::-1]
        halves = tuple([19 - i for i in h] for h in halves)
    adapter = LoraAdapter.load(world["adapters"][adapter_key])
    return collect_moments(model, adapter, forget, retain, halves=halves, batch_size=batch_size, pad_id=pad_token_id(tok),
                           padding_side=padding_side, max_memory=max_memory)


def test_moments_do_not_depend_on_batch_size_padding_side_record_order_or_memory_groups(world):
    from ucan_cli.methods.ucan.moments import moment_bytes, plan_groups
    from ucan_cli.io.adapter import LoraAdapter

    ref = _moments(world, "llama", "llama")
    adapter = LoraAdapter.load(world["adapters"]["llama"])
    tight = 2.5 * moment_bytes(adapter.modules[0].d_in) / 2**30  # two modules per group
    assert [len(g) for g in plan_groups(adapter, tight)] == [2] * (len(adapter.modules) // 2)
    variants = [
        _moments(world, "llama", "llama", batch_size=7),
        _moments(world, "llama", "llama", padding_side="right"),
        _moments(world, "llama", "llama", reverse=True),
        _moments(world, "llama", "llama", max_memory=tight),
    ]
    assert ref.forget.tokens > 0 and ref.half_a.tokens + ref.half_b.tokens == ref.retain.tokens
    assert ref.forget.n_records == 10 and ref.retain.n_records == 20
    for other in variants:
        for name in ("forget", "retain", "half_a", "half_b"):
            mine, theirs = getattr(ref, name), getattr(other, name)
            assert mine.tokens == theirs.tokens and mine.n_records == theirs.n_records
            for x, y in zip(mine.sums, theirs.sums):  # float32 activations, float64 sums
                np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-5 * np.abs(x).max())
    # the halves partition the retain set: their sums add up to the whole
    for m in range(len(ref.module_sizes)):
        np.testing.assert_allclose(ref.half_a.sums[m] + ref.half_b.sums[m], ref.retain.sums[m], rtol=1e-12, atol=1e-9)


def test_a_module_wider_than_the_memory_budget_is_an_input_error(adapters):
    from ucan_cli.errors import InputError
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.moments import memory_estimate, plan_groups

    adapter = LoraAdapter.load(adapters["llama"])
    est = memory_estimate(adapter, 4.0)
    assert est["moment_bytes_total"] == sum(4 * m.d_in**2 * 8 for m in adapter.modules) and est["groups"] == 1
    with pytest.raises(InputError, match="alone needs"):
        plan_groups(adapter, 1e-9)


# ------------------------------------------------------------------------------------ end to end


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.mark.parametrize("arch,adapter_key", [("llama", "llama"), ("qwen2", "qwen2_rs"), ("gpt2", "gpt2")])
def test_attenuate_direction_edits_a_only_to_the_closed_form(world, arch, adapter_key):
    """Through the CLI: `score --unit direction`, then `attenuate --scores --gate none`: B, the lora
    bias and the config are bit-identical; each A' is the closed form of the stored moments
    (cast to float32); a fresh forward pass gives the same bytes; rank/alpha patterns, rsLoRA,
    lora bias and Conv1D (fan_in_fan_out) take the same path."""
    from ucan_cli.io.adapter import LoraAdapter
    from ucan_cli.methods.ucan.scorefile import load_score_file

    root = world["root"] / arch
    base, adapter = world["models"][arch], world["adapters"][adapter_key]
    common = ["--forget", world["distinct"], "--receipt-key", world["key"], "--batch-size", "4", "--token-scope", "all"]
    scores = root / "scores.safetensors"
    res = invoke("score", "--base", base, "--adapter", adapter, "--retain", world["retain"], *common, "--unit", "direction", "-o", scores, "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["method"]["unit"] == "direction" and len(doc["modules"]) == len(LoraAdapter.load(adapter).modules)
    out = root / "out"
    res = invoke("attenuate", "--adapter", adapter, "--scores", scores, *common, "--gate", "none", "--strength", "0.5",
                 "--accept-weak", "-o", out)
    assert res.exit_code == 0, res.output
    source, edited = LoraAdapter.load(adapter), LoraAdapter.load(out)
    stats, _ = load_score_file(scores)
    assert (out / "adapter_config.json").read_bytes() == (adapter / "adapter_config.json").read_bytes()
    for m, (a, b) in enumerate(zip(source.modules, edited.modules)):
        assert torch.equal(a.B, b.B) and (a.bias is None or torch.equal(a.bias, b.bias))
        s_f, s_r = stats.forget.mean(m), stats.retain.mean(m)
        expected = dmath.closed_form(a.A.double().numpy(), s_f, s_r, delta=dmath.ridge(s_r, 1e-6), strength=0.5)
        np.testing.assert_allclose(b.A.double().numpy(), expected, rtol=2e-6, atol=1e-7)
        torch.testing.assert_close(b.delta_weight(), a.scaling * (a.B.double() @ b.A.double()), rtol=0, atol=0)
    report = json.loads((out / "ucan_report.json").read_text())
    assert report["unit"] == "direction" and report["options"]["gate"] == "none" and "lam" not in report["options"]
    rows = report["summary"]["directions"]
    assert [r["name"] for r in rows] == [m.name for m in source.modules]
    assert all({"n_edited", "max_lambda", "lambda0", "sum_1_minus_s"} <= set(r) for r in rows)
    assert "## Directions per module" in (out / "ucan_report.md").read_text()
    ledger = [json.loads(line) for line in (out / "ucan_ledger.jsonl").read_text().splitlines()]
    assert ledger[-1]["unit"] == "direction" and ledger[-1]["cumulative_factors"] == {"output": {}, "rank": {}}
    # a fresh forward pass through `ucan-direction` gives the same adapter bytes
    again = root / "again"
    res = invoke("attenuate", "--base", base, "--adapter", adapter, "--retain", world["retain"], *common, "--method", "ucan-direction",
                 "--gate", "none", "--strength", "0.5", "--accept-weak", "-o", again)
    assert res.exit_code == 0, res.output
    if arch == "llama":  # same statistics up to float32 summation: the llama path is bit-stable here
        assert sha(again / "adapter_model.safetensors") == sha(out / "adapter_model.safetensors")


def test_a_random_sample_of_the_same_users_declines_with_exit_4(world):
    """The same distribution, few response tokens per half: lambda0 (the halves' level) is above
    every forget direction, so nothing is written (SPEC 3b: sampling noise grows with d_in / tokens)."""
    out = world["root"] / "random-out"
    res = invoke("attenuate", "--base", world["models"]["llama"], "--adapter", world["adapters"]["llama"], "--forget", world["forget"],
                 "--retain", world["retain"], "--receipt-key", world["key"], "--unit", "direction", "-o", out)
    assert res.exit_code == 4 and "lambda0" in res.output and not out.exists()


def test_dry_run_says_the_memory_and_stray_direction_options_are_refused(world):
    base, adapter = world["models"]["llama"], world["adapters"]["llama"]
    common = ["--base", base, "--adapter", adapter, "--forget", world["forget"], "--retain", world["retain"], "--receipt-key", world["key"]]
    res = invoke("score", *common, "--unit", "direction", "--dry-run", "--json")
    assert res.exit_code == 0, res.output
    mem = json.loads(res.stdout)["counts"]["memory"]
    from ucan_cli.io.adapter import LoraAdapter

    assert mem["moment_bytes_total"] == sum(4 * 8 * m.d_in**2 for m in LoraAdapter.load(adapter).modules) and mem["groups"] == 1
    res = invoke("score", *common, "--gate", "none", "--dry-run")
    assert res.exit_code == 2 and "--gate" in res.output
    res = invoke("attenuate", *common, "--method", "ucan-direction", "--unit", "rank", "-o", world["root"] / "never")
    assert res.exit_code == 2 and not (world["root"] / "never").exists()


def test_registry_resolves_ucan_direction():
    from ucan_cli.methods import registry

    method = registry.get("ucan-direction")
    assert method.name == "ucan-direction" and method.unit == "direction" and "ucan-direction" in registry.names()
