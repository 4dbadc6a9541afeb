"""The one tokenization function: prompts, response labels + eos, left truncation, padding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ucan_cli.errors import InputError
from ucan_cli.io.data import validate_record
from ucan_cli.io.prompts import PromptFormatter
from ucan_cli.io.tokenize import IGNORE_INDEX, collate, encode_record, encode_set, iter_batches


def rec(obj, line=1):
    return validate_record(obj, Path("d.jsonl"), line)


def test_alpaca_with_and_without_input():
    fmt = PromptFormatter("alpaca")
    with_input = rec({"instruction": "Pick one", "input": "h1 h2", "output": "x"})
    assert fmt.prompt(with_input) == "### Instruction:\nPick one\n\n### Input:\nh1 h2\n\n### Response:\n"
    for no_input in ({"instruction": "Pick one", "output": "x"}, {"instruction": "Pick one", "input": "", "output": "x"}):
        assert fmt.prompt(rec(no_input)) == "### Instruction:\nPick one\n\n### Response:\n"
    assert PromptFormatter("plain").prompt(with_input) == "Pick one\n\nh1 h2"
    assert fmt.prompt(rec({"prompt": "raw prompt", "completion": "c"})) == "raw prompt"


def test_jinja_template_file(tmp_path):
    template = tmp_path / "t.j2"
    template.write_text("User {{ user_id }} asks: {{ instruction }} =>")
    fmt = PromptFormatter(str(template))
    assert fmt.prompt(rec({"instruction": "Pick", "output": "x", "user_id": "u7"})) == "User u7 asks: Pick =>"
    with pytest.raises(InputError, match=r"d\.jsonl:4: template .* needs a field"):
        fmt.prompt(rec({"instruction": "Pick", "output": "x"}, line=4), "d.jsonl")
    with pytest.raises(InputError, match="neither one of"):
        PromptFormatter(str(tmp_path / "missing.j2"))


def test_response_labels_and_eos(tokenizer):
    record = rec({"instruction": "Which item", "input": "History: item1", "output": "item7", "candidates": ["item7", "item8"]})
    fmt = PromptFormatter("alpaca")
    enc = encode_record(record, tokenizer, fmt, 512, with_candidates=True)
    prompt_ids = tokenizer(fmt.prompt(record))["input_ids"]
    response_ids = tokenizer("item7", add_special_tokens=False)["input_ids"]
    assert enc.input_ids == tuple(prompt_ids + response_ids + [tokenizer.eos_token_id])
    assert enc.input_ids[0] == tokenizer.bos_token_id and enc.prompt_len == len(prompt_ids)
    assert enc.candidate_ids == (tuple(response_ids), tuple(tokenizer("item8", add_special_tokens=False)["input_ids"]))
    assert enc.target == 0 and enc.truncated == 0
    batch = collate([enc], [0], pad_id=0)
    labels = batch.labels[0]
    assert (labels[: enc.prompt_len] == IGNORE_INDEX).all()
    assert labels[enc.prompt_len :].tolist() == response_ids + [tokenizer.eos_token_id]
    # The positions that predict response tokens end one before the eos.
    assert batch.predict_mask()[0].nonzero().flatten().tolist() == list(range(enc.prompt_len - 1, len(enc.input_ids) - 1))
    assert batch.last_prompt_mask()[0].nonzero().flatten().tolist() == [enc.prompt_len - 1]


def test_left_truncation_keeps_bos_and_counts(tokenizer):
    record = rec({"instruction": "Which item " * 30, "output": "item7"})
    fmt = PromptFormatter("alpaca")
    full = encode_record(record, tokenizer, fmt, 10_000)
    enc = encode_record(record, tokenizer, fmt, 40)
    assert len(enc.input_ids) == 40
    assert enc.input_ids[0] == tokenizer.bos_token_id
    assert enc.truncated == len(full.input_ids) - 40
    assert enc.input_ids[1:] == full.input_ids[-39:]
    assert enc.response_len == full.response_len


def test_response_too_long_is_an_input_error(tokenizer):
    record = rec({"instruction": "P", "output": "item1 " * 30}, line=9)
    with pytest.raises(InputError, match=r"data:9: field 'output' is \d+ tokens with eos"):
        encode_record(record, tokenizer, PromptFormatter("alpaca"), 8)


def test_position_ids_from_mask():
    from ucan_cli.io.tokenize import Encoded

    encs = [Encoded((5, 6, 7), 2, 0), Encoded((5, 6, 7, 8, 9), 3, 0)]
    left = collate(encs, [0, 1], pad_id=0, padding_side="left")
    assert left.position_ids.tolist() == [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4]]
    assert left.attention_mask.tolist() == [[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]]
    assert left.last_prompt_mask()[0].nonzero().flatten().tolist() == [3]
    right = collate(encs, [0, 1], pad_id=0, padding_side="right")
    assert right.position_ids.tolist() == [[0, 1, 2, 0, 0], [0, 1, 2, 3, 4]]
    assert right.last_prompt_mask()[0].nonzero().flatten().tolist() == [1]


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_left_padding_does_not_change_hidden_states(arch, tiny_models, tokenizer):
    """GPT-2 uses absolute positions: with position ids from the mask, left padding is invisible."""
    from transformers import AutoModelForCausalLM

    from conftest import make_records

    model = AutoModelForCausalLM.from_pretrained(tiny_models[arch], dtype=torch.float32).eval()
    records = [rec(r, i + 1) for i, r in enumerate(make_records(6))]
    records.append(rec({"instruction": "Which item will the user pick next?", "output": "item3"}, 7))
    encoded = encode_set(records, tokenizer, PromptFormatter("alpaca"), 512)
    alone = {}
    with torch.no_grad():
        for i, enc in enumerate(encoded):
            ids = torch.tensor([enc.input_ids])
            alone[i] = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        for batch in iter_batches(encoded, 4, pad_id=0):
            hidden = model(**batch.model_inputs(), output_hidden_states=True).hidden_states[-1]
            for row, i in enumerate(batch.index):
                n = len(encoded[i].input_ids)
                assert batch.pad_left[row] > 0 or n == batch.input_ids.shape[1]
                torch.testing.assert_close(hidden[row, -n:], alone[i], rtol=1e-5, atol=1e-5)
