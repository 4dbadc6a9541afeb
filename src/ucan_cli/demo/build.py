"""Building the demo world: tokenizer, base model, original and reference adapters, and files.

``build_world(world, out_dir)`` turns a generated ``World`` into the directory the demo runs on:

    base/            a tiny Llama (full fine-tune on the public users) with its tokenizer
    original/        LoRA trained on forget + retain users until it memorizes them
    reference/       LoRA trained on retain users only (what retraining without them gives)
    public.jsonl forget.jsonl retain.jsonl holdout.jsonl
    world.json       how it was made and the measured memorization numbers

The tokenizer is trained on the prompt template and the catalogue so that every word and every
item id is one token: a candidate is scored in one forward pass and prompts stay short.
The base is trained on public users only (who never pick the group's items), so what the
adapters know about forget users comes from the fine-tuning data, as in the paper's setting.
The original adapter trains on every non-public user in user order, so it is the same in both
scenarios; only the reference differs.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ucan_cli.demo.world import INSTRUCTION, World, to_jsonl
from ucan_cli.io.data import Record, validate_record
from ucan_cli.io.prompts import ALPACA, PromptFormatter
from ucan_cli.io.tokenize import encode_set, iter_batches, pad_token_id
from ucan_cli.progress import ProgressFactory, or_null
from ucan_cli.training import TrainConfig, train_lora

SET_NAMES = ("public", "forget", "retain", "holdout")


@dataclass(frozen=True)
class BuildConfig:
    """Model size and training schedule of one world size."""

    hidden: int = 64
    layers: int = 2
    heads: int = 4
    base_epochs: int = 20
    base_lr: float = 3e-3
    base_batch: int = 32
    lora: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
            r=8, alpha=16, epochs=30, lr=6e-3, batch_size=32, max_length=128,
        )
    )


CONFIGS: dict[str, BuildConfig] = {
    "default": BuildConfig(),
    "small": BuildConfig(
        base_epochs=20,
        lora=TrainConfig(
            target_modules=("q_proj", "v_proj", "o_proj", "up_proj", "down_proj"),
            r=8, alpha=16, epochs=40, lr=6e-3, batch_size=16, max_length=96,
        ),
    ),
}


# ------------------------------------------------------------------------------ tokenizer


def item_tokenizer(items: Sequence[str], instruction: str):
    """A BPE tokenizer in which every word of the template (with ``instruction``) and every item
    token is one token (every world kind builds its tokenizer here).

    SentencePiece-style word boundaries (``Metaspace``: a space becomes part of the next word)
    let ``i017`` be the same single token in a history and as a response, and an unlimited BPE
    vocabulary trained on the template and the catalogue merges every word completely. A
    prompt is then about 20 tokens, which halves training time compared with byte-level BPE.
    Characters never seen in training map to ``<unk>`` (the demo only feeds its own records).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from ucan_cli.toy import BOS, EOS, PAD

    unk = "<unk>"
    texts = [ALPACA.format(instruction=instruction, input="History: "), " ".join(items)] * 4
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=1 << 16, special_tokens=[PAD, BOS, EOS, unk], show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, tok.token_to_id(BOS))]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=unk,
        padding_side="left", model_max_length=256,
    )


def build_demo_tokenizer(world: World):
    """The synthetic world's tokenizer: ``item_tokenizer`` over its catalogue."""
    return item_tokenizer(world.items, INSTRUCTION)


def item_token_ids(tokenizer, items: Sequence[str]) -> dict[str, list[int]]:
    """How each item id tokenizes as a response (single-token ids give one-element lists)."""
    return {item: list(tokenizer(item, add_special_tokens=False)["input_ids"]) for item in items}


# ------------------------------------------------------------------------------ records


def as_records(rows: Sequence[dict], source: str = "world") -> list[Record]:
    """Validate generated rows exactly as a JSONL file would be (line = position + 1)."""
    return [validate_record(row, Path(source), k + 1) for k, row in enumerate(rows)]


# ------------------------------------------------------------------------------ base model


def _lm_loss(model, batch) -> tuple[torch.Tensor, int]:
    """Next-token cross-entropy summed over every real token after the first (prompt included)."""
    out = model(**batch.model_inputs())
    logits = out.logits[:, :-1].float()
    target = batch.input_ids[:, 1:]
    mask = batch.attention_mask[:, 1:].bool() & batch.attention_mask[:, :-1].bool()
    loss = torch.nn.functional.cross_entropy(logits[mask], target[mask], reduction="sum")
    return loss, int(mask.sum())


def pretrain_base(
    records: Sequence[Record], tokenizer, config: BuildConfig, *, seed: int, progress: ProgressFactory | None = None
):
    """A tiny Llama trained from scratch (full fine-tune, whole-sequence LM loss) on ``records``
    (the public users), for every world kind.

    The loss covers every token after the first, history included, so the base learns which
    items go together as well as the format. The learning rate decays linearly to 0.
    """
    from ucan_cli.toy import build_model

    model = build_model("llama", tokenizer, seed=seed, hidden=config.hidden, layers=config.layers,
                        heads=config.heads, max_positions=256)
    encoded = encode_set(records, tokenizer, PromptFormatter("alpaca", tokenizer), config.lora.max_length)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.base_lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    pad = pad_token_id(tokenizer)
    n_batches = -(-len(encoded) // config.base_batch)
    total_steps = config.base_epochs * n_batches
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / max(total_steps, 1))
    model.train()
    with or_null(progress)("pretraining the base", total_steps) as advance:
        for _ in range(config.base_epochs):
            order = torch.randperm(len(encoded), generator=generator).tolist()
            for batch in iter_batches(encoded, config.base_batch, pad, subset=order, sort_by_length=False):
                loss_sum, n = _lm_loss(model, batch)
                optimizer.zero_grad(set_to_none=True)
                (loss_sum / max(n, 1)).backward()
                optimizer.step()
                schedule.step()
                advance(1)
    model.eval()
    return model


# ------------------------------------------------------------------------------ measuring


@dataclass
class Scored:
    """Per-record candidate scores, targets and response NLL of one model on one set."""

    scores: np.ndarray  # (n, C) log p of each single-token candidate
    target: np.ndarray  # (n,) index of the response among the candidates
    nll: np.ndarray  # (n,) summed response NLL (item + eos)
    tokens: np.ndarray  # (n,) response tokens (2)

    def subset(self, mask: np.ndarray) -> Scored:
        return Scored(self.scores[mask], self.target[mask], self.nll[mask], self.tokens[mask])

    def membership(self) -> np.ndarray:
        """-mean response NLL per record (SPEC section 4's membership score)."""
        from ucan_cli.evaluation.metrics import membership_scores

        return membership_scores(self.nll, self.tokens)


@torch.inference_mode()
def score_records(model, tokenizer, records: Sequence[Record], *, batch_size: int = 64, max_length: int = 128) -> Scored:
    """One forward pass per batch gives every single-token candidate's log p and the response NLL."""
    encoded = encode_set(records, tokenizer, PromptFormatter("alpaca", tokenizer), max_length, with_candidates=True)
    n, width = len(encoded), max(len(e.candidate_ids) for e in encoded)
    scores = np.full((n, width), np.nan)
    nll, tokens = np.zeros(n), np.zeros(n)
    for batch in iter_batches(encoded, batch_size, pad_token_id(tokenizer)):
        logp = torch.log_softmax(model(**batch.model_inputs()).logits.float(), dim=-1)
        last = batch.last_prompt_mask()
        predict = batch.predict_mask()
        labels = batch.labels[:, 1:]
        token_logp = torch.gather(logp[:, :-1], 2, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        for row, idx in enumerate(batch.index):
            cand = [ids[0] for ids in encoded[idx].candidate_ids]
            scores[idx, : len(cand)] = logp[row][last[row]][0, cand].double().numpy()
            keep = predict[row, :-1]
            nll[idx] = -float(token_logp[row][keep].sum())
            tokens[idx] = int(keep.sum())
    target = np.array([e.target for e in encoded], dtype=np.int64)
    return Scored(scores, target, nll, tokens)


def recall(scored: Scored, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Recall@K over the records of ``scored`` (SPEC section 4 ranks, ties against the target)."""
    from ucan_cli.evaluation.metrics import candidate_ranks, ranking_metrics

    metrics = ranking_metrics(candidate_ranks(scored.scores, scored.target), ks)
    return {f"recall@{k}": round(metrics[f"recall@{k}"], 4) for k in ks}


def memorization_report(model_with_adapters, tokenizer, sets: dict[str, list[Record]], forget_users: set[str]) -> dict:
    """Recall@1/5 per set and MIA AUCs per adapter: how much the original memorized.

    ``model_with_adapters`` is a PeftModel holding ``original`` and ``reference`` adapters; the
    base is measured with adapters disabled. Holdout is split into forget users' and retain
    users' records. ``mia_auc_forget_vs_holdout`` is SPEC section 4's AUC (forget records vs
    every holdout record, score = -mean response NLL); ``mia_auc_forget_vs_own_holdout`` uses
    only the forget users' own held-out records, so taste differences between users cannot
    inflate or hide it.
    """
    from ucan_cli.evaluation.metrics import mia_auc

    holdout = sets["holdout"]
    own = np.array([r.user_id in forget_users for r in holdout])
    out: dict[str, dict] = {}
    for name in ("original", "reference", "base"):
        if name == "base":
            ctx = model_with_adapters.disable_adapter()
        else:
            model_with_adapters.set_adapter(name)
            ctx = contextlib.nullcontext()
        with ctx:
            scored = {part: score_records(model_with_adapters, tokenizer, sets[part]) for part in ("forget", "retain", "holdout")}
        scored["holdout_forget_users"] = scored["holdout"].subset(own)
        scored["holdout_retain_users"] = scored["holdout"].subset(~own)
        entry: dict = {part: recall(scored[part]) for part in ("forget", "retain", "holdout_forget_users", "holdout_retain_users")}
        member = scored["forget"].membership()
        entry["mia_auc_forget_vs_holdout"] = round(mia_auc(member, scored["holdout"].membership()), 4)
        entry["mia_auc_forget_vs_own_holdout"] = round(mia_auc(member, scored["holdout_forget_users"].membership()), 4)
        entry["forget_mean_nll"] = round(float(-np.mean(member)), 4)
        entry["holdout_mean_nll"] = round(float(-np.mean(scored["holdout"].membership())), 4)
        out[name] = entry
    o, r = out["original"], out["reference"]
    out["memorization_gap"] = {
        "original_forget_minus_holdout_recall@1": round(o["forget"]["recall@1"] - o["holdout_forget_users"]["recall@1"], 4),
        "original_minus_reference_forget_recall@1": round(o["forget"]["recall@1"] - r["forget"]["recall@1"], 4),
        "original_minus_reference_forget_recall@5": round(o["forget"]["recall@5"] - r["forget"]["recall@5"], 4),
        "original_auc_minus_0.5": round(o["mia_auc_forget_vs_holdout"] - 0.5, 4),
    }
    return out


# ------------------------------------------------------------------------------ the world dir


def build_world(
    world: World,
    out_dir: str | Path,
    *,
    config: BuildConfig | None = None,
    progress: ProgressFactory | None = None,
    measure: bool = True,
    key: str | None = None,
    reuse: str | Path | None = None,
) -> dict:
    """Write the world directory (see the module docstring) into ``out_dir``; return the manifest.

    ``out_dir`` must exist and be empty (``cache.ensure_world`` builds into a temporary
    directory and renames it into place). ``key`` is stored in the manifest (the cache's
    completeness mark). ``reuse`` is a complete world dir of the same seed and size whose base
    model and original adapter are copied instead of trained: neither depends on the scenario.
    ``measure`` adds the memorization numbers (a few seconds). The manifest is also written as
    ``world.json``.
    """
    from ucan_cli.runtime.models import hf_quiet
    from ucan_cli.runtime.threads import torch_threads

    spec = WorldSpec(
        seed=world.seed,
        sets=world.sets(),
        forget_users=set(world.forget_users),
        make_tokenizer=lambda: build_demo_tokenizer(world),
        user_order=lambda r: (r.user_id, r.line),
        header={"label": "SYNTHETIC demo world: generated users and items, no real people"},
        about={"world": world.describe()},
    )
    # A tiny model is overhead-bound: one thread is faster and leaves a core free.
    with torch_threads(1), hf_quiet():
        return build_world_dir(spec, Path(out_dir), config or CONFIGS[world.size], progress=progress, measure=measure,
                               key=key, reuse=Path(reuse) if reuse else None)


def normalize_adapter_config(adapter_dir: Path) -> None:
    """Sort ``target_modules`` (PEFT stores a set, whose order changes between runs)."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(config.get("target_modules"), list):
        config["target_modules"] = sorted(config["target_modules"])
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


@dataclass
class WorldSpec:
    """What a world kind supplies to the one builder (``build_world_dir``): its records, how to
    make its tokenizer, its configuration, and the manifest entries that are its own.

    Attributes:
        seed: seeds torch, the base and both adapters.
        sets: rows of ``public``, ``forget``, ``retain`` and ``holdout`` (written as JSONL).
        forget_users: the forget users' ids (for the memorization numbers).
        make_tokenizer: builds the tokenizer (every item one token).
        user_order: sort key of a ``Record`` that puts every adapter user's records in user order.
        header: manifest entries before ``world`` (``label``, and ``data`` where it applies).
        about: manifest entries from ``world`` on (``world``, and ``group`` where it applies).
    """

    seed: int
    sets: dict[str, list[dict]]
    forget_users: set[str]
    make_tokenizer: Callable[[], Any]
    user_order: Callable[[Record], Any]
    header: dict[str, Any]
    about: dict[str, Any]


def build_world_dir(
    spec: WorldSpec, out: Path, config: BuildConfig, *, progress: ProgressFactory | None, measure: bool,
    key: str | None, reuse: Path | None,
) -> dict:
    """Write a world directory into the empty ``out``: the record files, the base (pre-trained
    on the public users) with its tokenizer, the original adapter (every adapter user, in user
    order, so it does not depend on the scenario; copied from ``reuse`` when given, with the base),
    the reference adapter (retain users only), the memorization numbers (``measure``) and
    ``world.json``. Returns the manifest."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ucan_cli._version import __version__

    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(spec.seed)
    for name, rows in spec.sets.items():
        (out / f"{name}.jsonl").write_text(to_jsonl(rows), encoding="utf-8")
    sets = {name: as_records(rows, f"{name}.jsonl") for name, rows in spec.sets.items()}
    lora = TrainConfig(**{**asdict(config.lora), "seed": spec.seed})
    if reuse is not None:
        shutil.copytree(reuse / "base", out / "base")
        shutil.copytree(reuse / "original", out / "original")
        tokenizer = AutoTokenizer.from_pretrained(out / "base")
        base = AutoModelForCausalLM.from_pretrained(out / "base", dtype=torch.float32)
        base.eval()
        original_loss = json.loads((reuse / "world.json").read_text(encoding="utf-8"))["train_loss"]["original"]
        timings["reused_s"] = time.perf_counter() - t0
    else:
        tokenizer = spec.make_tokenizer()
        base = pretrain_base(sets["public"], tokenizer, config, seed=spec.seed, progress=progress)
        base.save_pretrained(out / "base", safe_serialization=True)
        tokenizer.save_pretrained(out / "base")
        timings["base_s"] = time.perf_counter() - t0
        by_user = sorted(sets["forget"] + sets["retain"], key=spec.user_order)
        t1 = time.perf_counter()
        original_loss = train_lora(base, tokenizer, by_user, out / "original", lora, progress=progress).epoch_losses[-1]
        normalize_adapter_config(out / "original")
        timings["original_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    reference = train_lora(base, tokenizer, sets["retain"], out / "reference", lora, progress=progress)
    normalize_adapter_config(out / "reference")
    timings["reference_s"] = time.perf_counter() - t2

    manifest = {
        "key": key,
        "ucan_version": __version__,
        **spec.header,
        **spec.about,
        "model": {"arch": "llama", "hidden": config.hidden, "layers": config.layers, "heads": config.heads,
                  "vocab": len(tokenizer), "base_epochs": config.base_epochs, "base_lr": config.base_lr},
        "lora": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(lora).items()},
        "train_loss": {"original": round(original_loss, 4), "reference": round(reference.epoch_losses[-1], 4)},
        "reused_base_and_original": reuse is not None,
        "files": {"base": "base", "original": "original", "reference": "reference",
                  **{name: f"{name}.jsonl" for name in SET_NAMES}},
    }
    if measure:
        t3 = time.perf_counter()
        peft = PeftModel.from_pretrained(base, str(out / "original"), adapter_name="original")
        peft.load_adapter(str(out / "reference"), adapter_name="reference")
        peft.eval()
        manifest["memorization"] = memorization_report(peft, tokenizer, sets, spec.forget_users)
        timings["measure_s"] = time.perf_counter() - t3
    timings["total_s"] = time.perf_counter() - t0
    manifest["build_seconds"] = {k: round(v, 2) for k, v in timings.items()}
    (out / "world.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
