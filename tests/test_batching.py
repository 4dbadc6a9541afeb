"""``--batch-size auto`` and ``--max-batch-tokens`` (``ucan_cli.runtime.batching``).

The batcher on its own (plain Python records), then U-CAN's statistics passes on the tiny Llama
of conftest with an out-of-memory forced inside the forward pass or the reduction, and the CLI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import make_records, write_jsonl
from ucan_cli.cli import app
from ucan_cli.errors import InputError, UcanRuntimeError
from ucan_cli.io.tokenize import iter_batches
from ucan_cli.methods.ucan.statistics import SET_NAMES
from ucan_cli.runtime import batching
from ucan_cli.runtime.batching import AUTO, Batcher, is_out_of_memory, parse_batch_size

FIELDS = ("sum_abs", "sum_sq", "rec_sum", "rec_sumsq")


@dataclass
class Rec:
    input_ids: tuple[int, ...]
    prompt_len: int = 1


def recs(*lengths: int) -> list[Rec]:
    return [Rec(tuple(range(1, n + 1))) for n in lengths]


LENGTHS = (5, 9, 3, 9, 7, 2, 6, 8, 4, 1)


# ---------------------------------------------------------------------------------------------
# The batcher alone


def test_parse_batch_size():
    assert parse_batch_size("auto") == AUTO and parse_batch_size(" AUTO ") == AUTO
    assert parse_batch_size("8") == 8 and parse_batch_size(8) == 8
    for bad in ("0", 0, -3, "foo", "1.5", 2.0, True, None):
        with pytest.raises(InputError, match="--batch-size must be a positive integer or 'auto'"):
            parse_batch_size(bad)
    assert batching.start_size(AUTO, "cuda") == 64 and batching.start_size(AUTO, "cpu") == 16
    assert batching.start_size(7, "cuda") == 7


def test_fixed_size_cuts_the_batches_of_iter_batches():
    encoded = recs(*LENGTHS)
    seen = []
    Batcher(3).run(encoded, lambda b: seen.append(b.index), pad_id=0)
    assert seen == [b.index for b in iter_batches(encoded, 3, 0)]
    assert seen == [[1, 3, 7], [4, 6, 0], [8, 2, 5], [9]]  # longest first, stable


def test_token_budget_bounds_every_batch():
    encoded = recs(*LENGTHS)
    seen = []
    batcher = Batcher(4, max_tokens=16)
    batcher.run(encoded, lambda b: seen.append((b.index, tuple(b.input_ids.shape))), pad_id=0)
    # lengths in batch order 9 9 8 7 6 5 4 3 2 1: 9+9 would pad to 18, so each 9 runs alone;
    # 8,7 pad to 16; 6,5 to 12 (a third row: 18); 4,3,2,1 to 16 (and 4 rows is the size)
    assert [i for i, _ in seen] == [[1], [3], [7, 4], [6, 0], [8, 2, 5, 9]]
    assert all(rows * width <= 16 for _, (rows, width) in seen)
    assert sorted(i for idx, _ in seen for i in idx) == list(range(10))
    lone = []
    Batcher(4, max_tokens=5).run(encoded, lambda b: lone.append(b.index), pad_id=0)
    assert lone[0] == [1]  # 9 tokens > 5: a record longer than the budget still runs, alone


def _failing_once(on_call: int, exc: BaseException):
    calls, committed = [], []

    def step(batch):
        calls.append(list(batch.index))
        if len(calls) == on_call:
            raise exc
        committed.append(list(batch.index))

    return step, calls, committed


@pytest.mark.parametrize(
    "exc", [torch.OutOfMemoryError("CUDA out of memory."), RuntimeError("MPS backend out of memory (MPS allocated ...)")]
)
def test_auto_halves_and_retries_the_same_records(exc):
    encoded = recs(*LENGTHS)
    batcher = Batcher(AUTO, device_type="cpu")
    batcher.size = 4
    step, calls, committed = _failing_once(2, exc)
    batcher.run(encoded, step, pad_id=0)
    assert calls[1] == [6, 0, 8, 2] and calls[2] == [6, 0]  # the failed batch's records, halved
    assert committed == [[1, 3, 7, 4], [6, 0], [8, 2], [5, 9]]
    flat = [i for c in committed for i in c]
    assert sorted(flat) == list(range(10)) and len(flat) == 10  # each record once
    assert batcher.meta() == {"requested": "auto", "used": 2, "halvings": 1, "max_batch_tokens": None}


def test_other_errors_are_not_retried():
    step, calls, _ = _failing_once(1, RuntimeError("shape mismatch"))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        Batcher(AUTO).run(recs(*LENGTHS), step, pad_id=0)
    assert len(calls) == 1
    assert not is_out_of_memory(ValueError("out of memory")) and is_out_of_memory(torch.OutOfMemoryError("x"))


def test_fixed_size_out_of_memory_names_the_options():
    step, _, _ = _failing_once(1, torch.OutOfMemoryError("CUDA out of memory."))
    with pytest.raises(UcanRuntimeError) as info:
        Batcher(4).run(recs(*LENGTHS), step, pad_id=0)
    assert info.value.message == (
        "out of memory on a batch of 4 records x 9 tokens at --batch-size 4; "
        "use --batch-size auto, a smaller --batch-size or --max-batch-tokens"
    )


def test_auto_at_one_record_stops():
    def step(_batch):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    batcher = Batcher(AUTO)
    with pytest.raises(UcanRuntimeError, match=r"single record of 9 tokens even at --batch-size 1 .*--max-batch-tokens"):
        batcher.run(recs(*LENGTHS), step, pad_id=0)
    assert batcher.halvings == 3  # 16 rows (all 10 records) -> 5 -> 2 -> 1, then the one-line error


# ---------------------------------------------------------------------------------------------
# U-CAN's statistics passes


@pytest.fixture()
def world(tmp_path, tiny_models):
    (tmp_path / "key").write_text("k" * 32)
    return {
        "forget": write_jsonl(tmp_path / "forget.jsonl", make_records(6, seed=5, user_offset=100)),
        "retain": write_jsonl(tmp_path / "retain.jsonl", make_records(12)),
        "key": tmp_path / "key",
    }


def _loaded(tiny_models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"], dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(tiny_models["llama"])


def _score(model_tok, adapters, world, **kw):
    from ucan_cli.flows.score import score

    return score(model_tok, adapters["llama"], world["forget"], world["retain"], receipt_key=world["key"], **kw)


def _oom_once_in_layer_one(model, on_call: int):
    """Raise out-of-memory in layer 1's forward on its ``on_call``-th call (layer 0's LoRA
    modules have already run: their kept outputs must not leak into the retry)."""
    calls = []

    def pre(_module, _args):
        calls.append(1)
        if len(calls) == on_call:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    return model.model.layers[1].register_forward_pre_hook(pre), calls


#: Runs that batch the same records differently: the float32 activations of a row may depend on the
#: batch's shape at float32's precision on some CPUs and thread counts (this machine: 4.2e-16 relative
#: between batch sizes 1, 2, 4, 8 and a 120-token budget, torch threads 1 and 2), so a float32
#: tolerance; identical batches are compared bit for bit (``exact``).
RTOL = 1e-6
#: Eval's values are float32 log-probabilities: a record batched with other rows (other padding, other
#: matmul shapes) rounds differently at float32's precision on some thread counts (4e-8 relative seen).
EVAL_RTOL = 1e-5


def _assert_stats(got, want, *, exact: bool, rtol: float = RTOL):
    for name in SET_NAMES:
        g, w = getattr(got.stats, name), getattr(want.stats, name)
        assert g.n_records == w.n_records and np.array_equal(g.tokens, w.tokens), name
        for field in FIELDS:
            if exact:
                assert np.array_equal(getattr(g, field), getattr(w, field)), f"{name}.{field}"
            else:
                np.testing.assert_allclose(getattr(g, field), getattr(w, field), rtol=rtol, atol=0, err_msg=f"{name}.{field}")


def test_out_of_memory_on_the_second_batch_loses_and_repeats_nothing(tiny_models, adapters, world, monkeypatch):
    monkeypatch.setattr(batching, "AUTO_START_DEFAULT", 4)
    model, tok = _loaded(tiny_models)
    handle, calls = _oom_once_in_layer_one(model, on_call=2)
    try:
        auto = _score((model, tok), adapters, world, batch_size="auto")
    finally:
        handle.remove()
    # forget: 4 rows, then the second batch (2 rows) fails and runs as 1 + 1; retain: 12 x 1
    assert len(calls) == 1 + 1 + 2 + 12
    assert auto.meta["batch"] == {"requested": "auto", "used": 1, "halvings": 1, "max_batch_tokens": None}
    assert auto.stats.forget.n_records == 6 and auto.stats.retain.n_records == 12
    assert auto.stats.half_a.n_records + auto.stats.half_b.n_records == 12
    at_final = _score((model, tok), adapters, world, batch_size=1)
    at_start = _score((model, tok), adapters, world, batch_size=4)
    # The retain pass ran at the final size throughout: the same sums, bit for bit. The forget
    # pass's first batch held 4 rows, so it sums in another order (and pads differently).
    for name in ("retain", "half_a", "half_b"):
        for field in FIELDS:
            assert np.array_equal(getattr(getattr(auto.stats, name), field), getattr(getattr(at_final.stats, name), field))
    _assert_stats(auto, at_final, exact=False)
    _assert_stats(auto, at_start, exact=False)
    assert auto.meta["tokens"] == at_start.meta["tokens"]


def test_out_of_memory_inside_the_reduction_commits_nothing(tiny_models, adapters, world, monkeypatch):
    """The second block of the second batch fails after the first block's sums were computed."""
    from ucan_cli.methods.ucan import statistics

    model, tok = _loaded(tiny_models)
    fixed = _score((model, tok), adapters, world, batch_size=2)
    original = statistics._Accumulator._row_sums_sparse
    calls = []

    def flaky(self, z, block):
        calls.append(1)
        if len(calls) == 4:  # two blocks (q_proj 32 out, v_proj 16 out) per batch: batch 2, block 2
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return original(self, z, block)

    monkeypatch.setattr(statistics._Accumulator, "_row_sums_sparse", flaky)
    monkeypatch.setattr(batching, "AUTO_START_DEFAULT", 2)
    auto = _score((model, tok), adapters, world, batch_size="auto")
    assert auto.meta["batch"]["used"] == 1 and auto.meta["batch"]["halvings"] == 1
    assert auto.stats.forget.n_records == 6
    _assert_stats(auto, fixed, exact=False)


def _assert_moments(got, want):
    for name in SET_NAMES:
        g, w = getattr(got.stats, name), getattr(want.stats, name)
        assert g.n_records == w.n_records and g.tokens == w.tokens, name
        for m, (x, y) in enumerate(zip(g.sums, w.sums)):
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * float(np.abs(y).max()), err_msg=f"{name} module {m}")


def test_direction_moments_survive_an_out_of_memory_on_the_second_batch(tiny_models, adapters, world, monkeypatch):
    from ucan_cli.methods.ucan.params import MethodParams

    monkeypatch.setattr(batching, "AUTO_START_DEFAULT", 4)
    model, tok = _loaded(tiny_models)
    handle, calls = _oom_once_in_layer_one(model, on_call=2)
    try:
        auto = _score((model, tok), adapters, world, batch_size="auto", params=MethodParams(unit="direction"))
    finally:
        handle.remove()
    assert auto.meta["batch"]["halvings"] == 1 and len(calls) == 1 + 1 + 2 + 12
    _assert_moments(auto, _score((model, tok), adapters, world, batch_size=1, params=MethodParams(unit="direction")))


def test_moments_retry_only_a_batch_they_did_not_touch(tiny_models, adapters, world, monkeypatch):
    """An out-of-memory before the first module's moments took the batch is retried; after it,
    a retry would count the batch twice in that module: one line, no halving."""
    from ucan_cli.methods.ucan import moments
    from ucan_cli.methods.ucan.params import MethodParams

    model, tok = _loaded(tiny_models)
    direction = MethodParams(unit="direction")
    fixed = _score((model, tok), adapters, world, batch_size=2, params=direction)
    monkeypatch.setattr(batching, "AUTO_START_DEFAULT", 2)
    real_update = moments._MomentAccumulator._update

    def failing_on(nth):
        seen = []

        def update(xs, weights):
            seen.append(1)
            if len(seen) == nth:
                raise torch.OutOfMemoryError("CUDA out of memory.")
            return real_update(xs, weights)

        return staticmethod(update)

    n_modules = len(fixed.stats.module_sizes)  # the forget pass has one group: one product per module and batch
    monkeypatch.setattr(moments._MomentAccumulator, "_update", failing_on(n_modules + 1))  # batch 2, module 0
    auto = _score((model, tok), adapters, world, batch_size="auto", params=direction)
    assert auto.meta["batch"]["halvings"] == 1
    _assert_moments(auto, fixed)
    monkeypatch.setattr(moments._MomentAccumulator, "_update", failing_on(n_modules + 2))  # batch 2, module 1
    with pytest.raises(UcanRuntimeError, match="cannot be retried: lower --max-memory"):
        _score((model, tok), adapters, world, batch_size="auto", params=direction)


def test_token_budget_bounds_the_forward_passes(tiny_models, adapters, world):
    model, tok = _loaded(tiny_models)
    shapes = []
    handle = model.register_forward_pre_hook(lambda _m, _a, kw: shapes.append(tuple(kw["input_ids"].shape)), with_kwargs=True)
    try:
        budgeted = _score((model, tok), adapters, world, batch_size=8, max_batch_tokens=120)
    finally:
        handle.remove()
    fixed = _score((model, tok), adapters, world, batch_size=8)
    assert shapes and all(rows * width <= 120 for rows, width in shapes)
    assert sum(rows for rows, _ in shapes) == 6 + 12  # every record once
    assert len(shapes) > 1 + 2  # the budget did cut (8 rows per batch: 1 forget + 2 retain batches)
    assert budgeted.meta["batch"] == {"requested": 8, "used": 8, "halvings": 0, "max_batch_tokens": 120}
    _assert_stats(budgeted, fixed, exact=False)


def test_a_fixed_size_gives_the_same_bits_as_before(tiny_models, adapters, world):
    """``Batcher`` with a fixed size is ``iter_batches``: the summation order is unchanged (the
    pinned-output test guards the default; this checks an explicit budget that never binds)."""
    model, tok = _loaded(tiny_models)
    plain = _score((model, tok), adapters, world, batch_size=4)
    loose = _score((model, tok), adapters, world, batch_size=4, max_batch_tokens=10**6)
    _assert_stats(plain, loose, exact=True)


# ---------------------------------------------------------------------------------------------
# The CLI


def _invoke(*args):
    return CliRunner().invoke(app, ["score", *map(str, args)])


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "foo"], "--batch-size"),
        (["--max-batch-tokens", "0"], "--max-batch-tokens"),
    ],
)
def test_bad_values_exit_2_with_one_line(tiny_models, adapters, world, tmp_path, extra, needle):
    out = tmp_path / "s.safetensors"
    res = _invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", world["forget"],
                  "--retain", world["retain"], "--receipt-key", world["key"], "-o", out, *extra)
    assert res.exit_code == 2, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and lines[0].startswith("error: ")
    assert not out.exists()


def test_out_of_memory_at_one_record_exits_1(tiny_models, adapters, world, tmp_path, monkeypatch):
    from ucan_cli.methods.ucan import statistics

    def boom(self, blocks):
        raise torch.OutOfMemoryError("CUDA out of memory.")

    monkeypatch.setattr(statistics._Accumulator, "reduce", boom)
    out = tmp_path / "s.safetensors"
    res = _invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", world["forget"],
                  "--retain", world["retain"], "--receipt-key", world["key"], "-o", out, "--batch-size", "auto")
    assert res.exit_code == 1, res.output
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--batch-size 1" in lines[0] and "--max-batch-tokens" in lines[0]
    assert not out.exists()


def test_attenuate_hands_auto_and_the_budget_to_its_statistics_pass(tiny_models, adapters, world, tmp_path, monkeypatch):
    """attenuate's own statistics pass adapts like score's (a training method runs ``auto`` at its
    start size): the options reach ``flows.score.score`` as given."""
    from ucan_cli.flows import score as score_flow

    seen = {}

    def stop(*args, **kwargs):
        seen.update(kwargs)
        raise UcanRuntimeError("stop here")

    monkeypatch.setattr(score_flow, "score", stop)
    res = CliRunner().invoke(app, ["attenuate", "--base", str(tiny_models["llama"]), "--adapter", str(adapters["llama"]),
                                   "--forget", str(world["forget"]), "--retain", str(world["retain"]), "--receipt-key",
                                   str(world["key"]), "-o", str(tmp_path / "out"), "--batch-size", "auto",
                                   "--max-batch-tokens", "99", "--no-cache"])
    assert res.exit_code == 1 and "stop here" in res.stderr
    assert seen["batch_size"] == "auto" and seen["max_batch_tokens"] == 99
    assert not (tmp_path / "out").exists()


def test_config_file_takes_auto_and_ints(tiny_models, adapters, world, tmp_path):
    for value, ok in (('"auto"', True), ("4", True), ('"four"', False), ("0", False)):
        cfg = tmp_path / "c.toml"
        cfg.write_text(f"batch_size = {value}\n")
        res = _invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", world["forget"],
                      "--retain", world["retain"], "--receipt-key", world["key"], "--dry-run", "--config", cfg)
        assert (res.exit_code == 0) is ok, (value, res.output)
        if not ok:
            assert res.exit_code == 2 and "batch_size" in res.stderr


def test_cli_score_batch_size_auto(tiny_models, adapters, world, tmp_path):
    """Through the CLI in-process (the parser, the flow, the JSON and the file; the torchrun test of
    tests/test_distributed.py runs the real console entry point)."""
    out = tmp_path / "s.safetensors"
    res = _invoke("--base", tiny_models["llama"], "--adapter", adapters["llama"], "--forget", world["forget"],
                  "--retain", world["retain"], "--receipt-key", world["key"], "-o", out, "--batch-size", "auto",
                  "--max-batch-tokens", "4096", "--json", "--no-cache")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["inputs"]["batch"] == {"requested": "auto", "used": 16, "halvings": 0, "max_batch_tokens": 4096}
    assert out.is_file()
    from ucan_cli.methods.ucan.scorefile import load_score_file

    stats, meta = load_score_file(out)
    assert meta["batch"]["used"] == 16 and stats.forget.n_records == 6 and stats.retain.n_records == 12


# ---------------------------------------------------------------------------------------------
# Eval's passes


def _item_rows(n: int, seed: int, user_offset: int = 0) -> list[dict]:
    """Records with multi-token candidates (teacher-forced candidate batches)."""
    import random

    from conftest import ITEMS

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        cands = rng.sample(ITEMS, 3) + [" ".join(rng.sample(ITEMS, 2))]
        rows.append({"id": f"M{seed}-{i}", "user_id": f"u{user_offset + i}", "instruction": "Which item will the user pick next?",
                     "input": "History: " + " ".join(rng.sample(ITEMS, rng.randint(1, 5))), "output": cands[0], "candidates": cands})
    return rows


def test_eval_out_of_memory_mid_batch_counts_every_sequence_once(tiny_models, adapters, tmp_path, monkeypatch):
    from ucan_cli.evaluation.run import adapter_entries, evaluate
    from ucan_cli.io.data import read_records

    forget = read_records(write_jsonl(tmp_path / "f.jsonl", _item_rows(6, seed=1)), "forget")
    retain = read_records(write_jsonl(tmp_path / "r.jsonl", _item_rows(5, seed=2, user_offset=50)), "retain")
    model, tok = _loaded(tiny_models)
    entries = adapter_entries(adapters["llama"], [adapters["llama"]])
    fixed = evaluate(model, tok, entries, forget, retain, bootstrap=0, batch_size=4)
    monkeypatch.setattr(batching, "AUTO_START_DEFAULT", 4)
    # forget's first batch of 4 records: per adapter 1 record forward + 4 candidate forwards
    # (16 sequences, 4 rows each); call 13 is inside the second batch, after its first forwards
    handle, calls = _oom_once_in_layer_one(model, on_call=13)
    try:
        auto = evaluate(model, tok, entries, forget, retain, bootstrap=0, batch_size="auto")
    finally:
        handle.remove()
    assert auto.settings["batch"] == {"requested": "auto", "used": 1, "halvings": 1, "max_batch_tokens": None}
    assert auto.settings["batch_size"] == 1 and fixed.settings["batch_size"] == 4
    for name in ("forget", "retain"):
        a, f = auto.passes[name], fixed.passes[name]
        assert a.sequences == f.sequences  # every record and candidate counted once
        for aid in a.nll:  # float32 log-probs of other batch shapes: float32 tolerance (4e-8 seen on 2 threads)
            np.testing.assert_allclose(a.nll[aid], f.nll[aid], rtol=EVAL_RTOL, atol=0)
            np.testing.assert_allclose(a.cand_logp[aid], f.cand_logp[aid], rtol=EVAL_RTOL, atol=0)
    for a in fixed.results:
        for group in ("forget", "retain", "tradeoff"):
            assert auto.results[a][group] == pytest.approx(fixed.results[a][group], rel=EVAL_RTOL), (a, group)
