"""What ``attenuate`` hands a ``MODEL`` method: the model, the tokenized sets and the measurements.

``model_inputs`` runs every check of ``ucan score`` before any weight loads (record files, the
adapter against the base's module tree, the tokenizer, the template; ``ucan_cli.flows.score.prepare``),
and ``trainable_model`` then loads the base, attaches the input adapter and makes its LoRA
parameters (and only those) require grad, in eval mode so that dropout never draws random
numbers: equal seeds give equal bytes. ``measure`` is the ``probe`` and ``utility`` of
``ModelInputs``: one ``ucan eval`` pass (``ucan_cli.evaluation.run.run_set``) of the model as it
is now over one set, its Recall/MRR/NDCG@{1,5,10,K}, token-mean response NLL and perplexity.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

from ucan_cli.methods.base import ModelInputs

KS = (1, 5, 10)


def measure(model, tokenizer, records, *, template: str, max_length: int, batch_size: int, ks=KS) -> tuple[dict[str, float], int]:
    """The ranking metrics, ``nll`` and ``ppl`` of ``model`` on ``records``, and the forward-pass
    equivalents it cost."""
    import numpy as np

    from ucan_cli.evaluation.metrics import candidate_ranks, ranking_metrics
    from ucan_cli.evaluation.run import run_set

    sp = run_set(model, tokenizer, records, template=template, max_length=max_length, batch_size=batch_size, name="check")
    out: dict[str, float] = {}
    if sp.has_ranking:
        out.update(ranking_metrics(candidate_ranks(sp.cand_logp["model"], sp.target), ks))
    nll = float(np.sum(sp.nll["model"]) / max(int(np.sum(sp.tokens)), 1))
    out["nll"], out["ppl"] = nll, math.exp(min(nll, 700.0))
    return out, int(sp.sequences["model"])


@contextlib.contextmanager
def trainable_model(prep, *, device: str, dtype: str, allow_pickle: bool, trust_remote_code: bool, load=None) -> Iterator[Any]:
    """The base with the input adapter attached, LoRA parameters trainable, dropout off (``load``:
    a ``runtime.load.LoadSpec``; LoRA on a 4-bit base trains as QLoRA does)."""
    from ucan_cli.flows.score import adapted_model

    with adapted_model(prep, device=device, dtype=dtype, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code,
                       load=load) as model:
        for name, parameter in model.named_parameters():
            parameter.requires_grad_(".lora_" in name)
        model.eval()
        try:
            yield model
        finally:
            for parameter in model.parameters():
                parameter.requires_grad_(False)


def model_inputs(model, prep, *, template: str, batch_size: int, target_k: int | None, progress=None, train=None) -> ModelInputs:
    """``ModelInputs`` over a prepared run (``flows.score.prepare``) and its loaded model; ``train``:
    the tokenized training records of a method that ``takes_train``."""
    from ucan_cli.io.tokenize import pad_token_id

    ks = tuple(sorted({*KS, *((target_k,) if target_k else ())}))

    def probe():
        return measure(model, prep.tokenizer, prep.forget, template=template, max_length=prep.max_length, batch_size=batch_size, ks=ks)

    def utility():
        return measure(model, prep.tokenizer, prep.retain, template=template, max_length=prep.max_length, batch_size=batch_size, ks=ks)

    return ModelInputs(
        model=model, tokenizer=prep.tokenizer, forget=prep.forget_encoded, retain=prep.retain_encoded,
        pad_id=pad_token_id(prep.tokenizer), batch_size=batch_size, probe=probe, utility=utility, progress=progress,
        train=train,
    )


__all__ = ["measure", "model_inputs", "trainable_model"]
