"""Step 1 statistics (ucan_cli.methods.ucan.statistics) against a brute-force reference, and their invariances.

The reference runs every record alone (no padding), captures the input x of each LoRA layer with
a pre-hook, computes a = A x (rank units) or c B A x (output units) in float64 from the adapter
file's tensors, and reduces by explicit per-record loops over hand-built token positions. The
streamed statistics use padded batches, a hook on lora_A, masks and matrix reductions: nothing
is shared between the two but the model.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from conftest import make_records, write_jsonl
from ucan_cli.methods.ucan.statistics import Statistics, collect_statistics, find_lora_layers, method_inputs, scope_token_count
from ucan_cli.errors import NothingToDo
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.data import read_records
from ucan_cli.runtime.models import attach_adapter, load_base_model
from ucan_cli.io.prompts import PromptFormatter
from ucan_cli.io.tokenize import encode_set, pad_token_id
from ucan_cli.methods.ucan.params import MethodParams
from ucan_cli.methods.ucan.scoring import compute_scores

ARCHS = {"llama": "llama", "gpt2": "gpt2"}  # model -> adapter fixture key
FIELDS = ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq")
SETS = ("forget", "retain", "half_a", "half_b")


def forget_rows() -> list[dict]:
    """Forget records that differ systematically from the retain records (another instruction)."""
    rows = make_records(6, seed=5, user_offset=100)
    for row in rows:
        row["instruction"] = "Pick the next film for this viewer, please."
    return rows


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_models, adapters, tokenizer):
    """Per architecture: the adapted model, the adapter, encoded forget/retain and the halves."""
    root = tmp_path_factory.mktemp("act")
    forget = read_records(write_jsonl(root / "forget.jsonl", forget_rows()), "forget")
    retain = read_records(write_jsonl(root / "retain.jsonl", make_records(12)), "retain")
    fmt = PromptFormatter("alpaca")
    out = {}
    for arch, key in ARCHS.items():
        model = attach_adapter(load_base_model(str(tiny_models[arch]), device="cpu", dtype="float32"), adapters[key])
        out[arch] = {
            "model": model,
            "adapter": LoraAdapter.load(adapters[key]),
            "forget": encode_set(forget, tokenizer, fmt, 256),
            "retain": encode_set(retain, tokenizer, fmt, 256),
            "halves": retain.split_halves(0),
            "pad": pad_token_id(tokenizer),
        }
    return out


def positions(enc, scope: str) -> list[int]:
    """Token positions of one unpadded record under a scope, built by hand."""
    n, p = len(enc.input_ids), enc.prompt_len
    if scope == "all":
        return list(range(n))
    if scope == "last":
        return [p - 1]
    return list(range(p - 1, n - 1))  # positions whose next token is a response token (eos included)


@pytest.fixture(scope="module")
def captured(world):
    """Per architecture and set: for each record, each LoRA layer's input x (T, d_in) in float64."""
    out = {}
    for arch, w in world.items():
        layers = find_lora_layers(w["model"], w["adapter"])
        store: list = []
        hooks = [
            layer.register_forward_pre_hook(lambda _m, args, i=i: store.append((i, args[0][0].double().clone())))
            for i, layer in enumerate(layers)
        ]
        per_set = {}
        try:
            with torch.inference_mode():
                for name in ("forget", "retain"):
                    records = []
                    for enc in w[name]:
                        store.clear()
                        w["model"](input_ids=torch.tensor([enc.input_ids]))
                        xs = dict(store)
                        assert len(store) == len(layers)
                        records.append([xs[i].numpy() for i in range(len(layers))])
                    per_set[name] = records
        finally:
            for h in hooks:
                h.remove()
        out[arch] = per_set
    return out


def reference(world_arch, captured_arch, unit: str, scope: str) -> dict[str, dict[str, np.ndarray]]:
    """Float64 statistics by explicit loops (see the module docstring)."""
    adapter = world_arch["adapter"]
    mats = [
        (m.A.double().numpy(), m.B.double().numpy(), m.scaling) for m in adapter.modules
    ]

    def per_record(xs, enc):
        pos = positions(enc, scope)
        acts = []
        for x, (A, B, c) in zip(xs, mats):
            z = x[pos] @ A.T
            acts.append(z if unit == "rank" else c * z @ B.T)
        a = np.concatenate(acts, axis=1)  # (tokens, N)
        return np.abs(a).sum(0), (a**2).sum(0), len(pos)

    def reduce(rows):
        n_units = rows[0][0].shape[0]
        out = {f: np.zeros(n_units) for f in FIELDS}
        for s_abs, s_sq, count in rows:
            out["sum_abs"] += s_abs
            out["sum_sq"] += s_sq
            out["tokens"] += count
            out["rec_sum"] += s_abs / count
            out["rec_sumsq"] += (s_abs / count) ** 2
        out["n_records"] = len(rows)
        return out

    forget_rows_ = [per_record(xs, e) for xs, e in zip(captured_arch["forget"], world_arch["forget"])]
    retain_rows_ = [per_record(xs, e) for xs, e in zip(captured_arch["retain"], world_arch["retain"])]
    idx_a, idx_b = world_arch["halves"]
    return {
        "forget": reduce(forget_rows_),
        "retain": reduce(retain_rows_),
        "half_a": reduce([retain_rows_[i] for i in idx_a]),
        "half_b": reduce([retain_rows_[i] for i in idx_b]),
    }


def stats_for(w, *, unit="output", scope="response", batch_size=5, padding_side="left", forget=None, retain=None, halves=None) -> Statistics:
    return collect_statistics(
        w["model"], w["adapter"], forget if forget is not None else w["forget"],
        retain if retain is not None else w["retain"], halves=halves if halves is not None else w["halves"],
        unit=unit, scope=scope, batch_size=batch_size, pad_id=w["pad"], padding_side=padding_side,
    )


def assert_stats_close(a: Statistics, b: Statistics, rtol: float = 1e-5) -> None:
    for name in SETS:
        sa, sb = getattr(a, name), getattr(b, name)
        assert sa.n_records == sb.n_records
        for f in FIELDS:
            np.testing.assert_allclose(getattr(sa, f), getattr(sb, f), rtol=rtol, atol=1e-9, err_msg=f"{name}.{f}")


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("unit", ["output", "rank"])
@pytest.mark.parametrize("scope", ["response", "last", "all"])
def test_statistics_match_brute_force(world, captured, arch, unit, scope):
    w = world[arch]
    got = stats_for(w, unit=unit, scope=scope)
    ref = reference(w, captured[arch], unit, scope)
    sizes = [m.d_out if unit == "output" else m.r for m in w["adapter"].modules]
    assert got.module_sizes == sizes
    assert got.n_units == sum(sizes)
    for name in SETS:
        st = getattr(got, name)
        assert st.n_records == ref[name]["n_records"]
        for f in FIELDS:
            np.testing.assert_allclose(getattr(st, f), ref[name][f], rtol=1e-5, atol=1e-9, err_msg=f"{arch} {unit} {scope} {name}.{f}")
    assert (got.forget.sum_abs > 0).all()  # every unit fired: the comparison is not vacuous
    if unit == "rank":
        norms = np.concatenate([np.linalg.norm(m.B.double().numpy(), axis=0) for m in w["adapter"].modules])
        np.testing.assert_allclose(got.b_col_norms, norms, rtol=1e-12)
        assert set(method_inputs(got)) == {"forget", "retain", "half_a", "half_b", "module_ids", "scaling", "b_col_norms"}
    else:
        assert got.b_col_norms is None
        assert "scaling" not in method_inputs(got)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_token_counts_per_scope(world, arch):
    w = world[arch]
    forget, retain = w["forget"], w["retain"]
    lengths = [len(e.input_ids) for e in forget]
    responses = [len(e.input_ids) - e.prompt_len for e in forget]
    expected = {"all": sum(lengths), "last": len(forget), "response": sum(responses)}
    # Every response is one item word plus eos: 2 or 3 tokens each with this tokenizer.
    assert all(2 <= r <= 3 for r in responses)
    for scope, count in expected.items():
        st = stats_for(w, scope=scope)
        assert st.forget.tokens[0] == count == scope_token_count(forget, scope)
        assert np.all(st.forget.tokens == count)
        assert st.retain.tokens[0] == scope_token_count(retain, scope)
        assert st.half_a.tokens[0] + st.half_b.tokens[0] == st.retain.tokens[0]
    assert expected["all"] > expected["response"] > expected["last"] == 6


def _shuffled(w, seed: int):
    """Forget and retain in a new order, and the halves remapped to the same records."""
    rng = random.Random(seed)
    f_order = list(range(len(w["forget"])))
    r_order = list(range(len(w["retain"])))
    rng.shuffle(f_order)
    rng.shuffle(r_order)
    new_pos = {old: new for new, old in enumerate(r_order)}
    halves = tuple(sorted(new_pos[i] for i in h) for h in w["halves"])
    return [w["forget"][i] for i in f_order], [w["retain"][i] for i in r_order], halves


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("unit", ["output", "rank"])
def test_invariance_batching_padding_order(world, arch, unit):
    w = world[arch]
    base = stats_for(w, unit=unit, batch_size=16)
    forget_s, retain_s, halves_s = _shuffled(w, seed=3)
    variants = {
        "batch 1": stats_for(w, unit=unit, batch_size=1),
        "batch 5": stats_for(w, unit=unit, batch_size=5),
        "right padding": stats_for(w, unit=unit, batch_size=5, padding_side="right"),
        "shuffled": stats_for(w, unit=unit, batch_size=4, forget=forget_s, retain=retain_s, halves=halves_s),
    }
    params = MethodParams(unit=unit, ratio=0.25) if unit == "rank" else MethodParams(unit=unit)
    ref_result = compute_scores(**method_inputs(base), params=params)
    assert ref_result.k > 0
    for label, st in variants.items():
        assert_stats_close(st, base)
        res = compute_scores(**method_inputs(st), params=params)
        assert np.array_equal(res.selected, ref_result.selected), label
        assert np.array_equal(res.eligible, ref_result.eligible), label


def test_identical_sets_give_zero_risk(world):
    """The same records as forget and retain give R = 0 on every unit: nothing is eligible."""
    w = world["llama"]
    st = stats_for(w, forget=w["retain"])
    for f in FIELDS:
        assert np.array_equal(getattr(st.forget, f), getattr(st.retain, f))
    with pytest.raises(NothingToDo):
        compute_scores(**method_inputs(st), params=MethodParams())


def test_hooks_removed_and_mode_restored(world):
    w = world["gpt2"]
    model = w["model"]
    model.train()
    try:
        stats_for(w)
        assert model.training
    finally:
        model.eval()
    layers = find_lora_layers(model, w["adapter"])
    assert all(not layer.lora_A["default"]._forward_hooks for layer in layers)


def test_statistics_reject_inconsistent_shapes(world):
    st = stats_for(world["llama"])
    with pytest.raises(ValueError, match="module_ids"):
        Statistics(
            unit="output", scope="response", module_names=st.module_names, module_sizes=st.module_sizes,
            module_ids=st.module_ids[::-1], forget=st.forget, retain=st.retain, half_a=st.half_a, half_b=st.half_b,
            scaling=st.scaling, b_col_norms=None,
        )
    with pytest.raises(ValueError, match="halves"):
        stats_for(world["llama"], halves=([0, 1], [1, 2]))


@pytest.mark.parametrize("unit", ["output", "rank"])
@pytest.mark.parametrize("scope", ["response", "all"])
def test_gather_and_dense_reductions_agree(world, monkeypatch, unit, scope):
    """The two per-row reductions (gather + one-hot product, masked dense sum) give the same sums."""
    import ucan_cli.methods.ucan.statistics as act

    w = world["gpt2"]
    monkeypatch.setattr(act, "DENSE_THRESHOLD", 10**9)  # always gather
    gathered = stats_for(w, unit=unit, scope=scope)
    monkeypatch.setattr(act, "DENSE_THRESHOLD", -1)  # always dense
    dense = stats_for(w, unit=unit, scope=scope)
    assert_stats_close(gathered, dense, rtol=1e-12)
