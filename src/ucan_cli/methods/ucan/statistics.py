"""Step 1 of U-CAN: stream per-unit activation statistics of a LoRA adapter over a data set.

One forward pass per set, no gradients (``torch.inference_mode``), eval mode (dropout off). A
forward hook on each LoRA module's ``lora_A`` keeps a reference to z = A x for the batch; right
after the forward pass the tokens of the token scope are selected and reduced to per-unit sums,
all modules of one shape at once, so nothing per token outlives the batch:

* rank units (``unit="rank"``): a_u = z_j, the j-th bottleneck neuron;
* output units (``unit="output"``): a_u = c_l (B_l z)_k, the k-th output of the LoRA update
  (the SPEC's c (B A x)_k; the optional lora bias is not part of it).

Per unit and per set (float64): sum of |a_u| and of a_u^2 over scoped tokens, the scoped token
count, and over records the sum of the record's mean |a_u| and of its square. The retain set is
accumulated whole and into its two halves in the same pass (the noise reference of step 2).

The model is called with ``logits_to_keep=1`` when its forward accepts it (Llama, Qwen2 and
GPT-2 in transformers 5 do), so the vocabulary projection costs one position per row instead of
all of them: the statistics never look at logits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ucan_cli.errors import UcanRuntimeError
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.tokenize import Encoded
from ucan_cli.progress import ProgressFactory, or_null
from ucan_cli.methods.ucan.params import TOKEN_SCOPES, UNITS
from ucan_cli.methods.ucan.scoring import SetStats
from ucan_cli.runtime.batching import Batcher
from ucan_cli.runtime.models import accepts_logits_to_keep, model_device

SET_NAMES = ("forget", "retain", "half_a", "half_b")

CHUNK_ELEMENTS = 1 << 22
"""Largest (modules x tokens x units) activation block materialized at once (float64: 32 MiB;
the reduction holds a few such temporaries)."""

DENSE_THRESHOLD = 4
"""Reduce over every padded position (masked) instead of gathering the scoped tokens when a
batch has more than DENSE_THRESHOLD x (padded width) scoped tokens: the gather path's one-hot
product costs rows x tokens, the dense path rows x width. ``response`` and ``last`` take the
gather path, ``all`` the dense one; both give the same sums up to rounding."""


@dataclass
class Statistics:
    """The raw step-1 statistics of one adapter on D_f, D_r and the two halves of D_r.

    Units are flat: module after module in ``LoraAdapter.modules`` order, then unit index, so
    ``module_ids`` is non-decreasing and the flat index is the SPEC's tie-break order.

    Attributes:
        unit: ``output`` or ``rank``.
        scope: token scope, ``response``, ``last`` or ``all``.
        module_names: the adapter's module names (paths in the base model).
        module_sizes: units per module (d_out for output units, r for rank units).
        module_ids: (N,) module index of each unit.
        forget, retain, half_a, half_b: per-set statistics (``ucan_cli.methods.ucan.scoring.SetStats``).
        scaling: (N,) c_l of each unit's module.
        b_col_norms: (N,) ||B_l[:, j]||_2 for rank units; None for output units.
    """

    unit: str
    scope: str
    module_names: list[str]
    module_sizes: list[int]
    module_ids: np.ndarray
    forget: SetStats
    retain: SetStats
    half_a: SetStats
    half_b: SetStats
    scaling: np.ndarray
    b_col_norms: np.ndarray | None

    def __post_init__(self) -> None:
        if self.unit not in UNITS:
            raise ValueError(f"unit must be one of {UNITS}, got {self.unit!r}")
        if self.scope not in TOKEN_SCOPES:
            raise ValueError(f"scope must be one of {TOKEN_SCOPES}, got {self.scope!r}")
        if len(self.module_names) != len(self.module_sizes):
            raise ValueError("module_names and module_sizes differ in length")
        self.module_sizes = [int(s) for s in self.module_sizes]
        self.module_ids = np.asarray(self.module_ids, dtype=np.int64)
        expected = np.repeat(np.arange(len(self.module_sizes), dtype=np.int64), self.module_sizes)
        if not np.array_equal(self.module_ids, expected):
            raise ValueError("module_ids do not match module_sizes (module after module, in order)")
        n = self.n_units
        for name in SET_NAMES:
            if getattr(self, name).n_units != n:
                raise ValueError(f"{name} statistics cover {getattr(self, name).n_units} units, expected {n}")
        self.scaling = np.asarray(self.scaling, dtype=np.float64)
        if self.scaling.shape != (n,):
            raise ValueError(f"scaling has shape {self.scaling.shape}, expected ({n},)")
        if self.unit == "rank":
            if self.b_col_norms is None:
                raise ValueError("rank units need b_col_norms")
            self.b_col_norms = np.asarray(self.b_col_norms, dtype=np.float64)
            if self.b_col_norms.shape != (n,):
                raise ValueError(f"b_col_norms has shape {self.b_col_norms.shape}, expected ({n},)")
        elif self.b_col_norms is not None:
            raise ValueError("output units carry no b_col_norms")

    @property
    def n_units(self) -> int:
        return int(self.module_ids.shape[0])

    def module_offsets(self) -> list[int]:
        """Flat index of each module's first unit."""
        return [0, *np.cumsum(self.module_sizes)[:-1].tolist()] if self.module_sizes else []

    def unit_label(self, u: int) -> tuple[str, int]:
        """(module name, index within the module) of flat unit ``u``."""
        m = int(self.module_ids[u])
        return self.module_names[m], int(u - self.module_offsets()[m])


def method_inputs(stats: Statistics) -> dict:
    """Keyword arguments of ``ucan_cli.methods.ucan.scoring.compute_scores`` from ``stats`` (all but ``params``
    and ``cum_factors``). Pass ``MethodParams(unit=stats.unit, ...)``: the unit kind decides the
    utility formula."""
    kwargs = {
        "forget": stats.forget,
        "retain": stats.retain,
        "half_a": stats.half_a,
        "half_b": stats.half_b,
        "module_ids": stats.module_ids,
    }
    if stats.unit == "rank":
        kwargs["scaling"] = stats.scaling
        kwargs["b_col_norms"] = stats.b_col_norms
    return kwargs


# --------------------------------------------------------------------------------------------
# Locating the LoRA layers


def find_lora_layers(model, adapter: LoraAdapter, adapter_name: str = "default") -> list[torch.nn.Module]:
    """The PEFT LoRA layer of each adapter module, in ``adapter.modules`` order.

    ``model`` is a ``PeftModel`` or a model with the LoRA layers injected. Each layer's scaling
    must agree with the adapter file's (a guard against a different pattern resolution).
    """
    named = dict(model.named_modules())
    layers = []
    for module in adapter.modules:
        layer = None
        for prefix in ("", "base_model.model.", "model."):
            candidate = named.get(prefix + module.name)
            if candidate is not None and hasattr(candidate, "lora_A"):
                layer = candidate
                break
        if layer is None or adapter_name not in layer.lora_A:
            raise UcanRuntimeError(
                f"no LoRA layer for adapter module {module.name} in the model; attach the adapter first"
            )
        peft_scaling = float(layer.scaling[adapter_name])
        if abs(peft_scaling - module.scaling) > 1e-6 * max(1.0, abs(module.scaling)):
            raise UcanRuntimeError(
                f"{module.name}: PEFT scales the update by {peft_scaling} but the adapter config gives "
                f"{module.scaling}"
            )
        layers.append(layer)
    return layers


# --------------------------------------------------------------------------------------------
# Streaming accumulation


@dataclass
class _Block:
    """Modules whose units are reduced together in one set of batched operations.

    Output units: modules of one shape (r, d_out), their z stacked on a leading axis and mapped
    to a = c z B^T by one batched product with ``transform`` (k, r, d_out). Rank units: every
    module, z concatenated along the feature axis (k = 1, ``transform`` None). ``offsets``
    holds the flat index of each slice's first unit.
    """

    modules: list[int]
    stack: bool
    transform: torch.Tensor | None
    offsets: list[int]
    width: int  # units per slice


def _blocks(adapter: LoraAdapter, unit: str, device: torch.device) -> tuple[list[_Block], list[int]]:
    """The reduction blocks and the units per module (flat layout: module order, then index)."""
    mods = adapter.modules
    sizes = [m.d_out if unit == "output" else m.r for m in mods]
    offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
    if unit == "rank":
        return [_Block(list(range(len(mods))), False, None, [0], int(sum(sizes)))], sizes
    by_shape: dict[tuple[int, int], list[int]] = {}
    for i, m in enumerate(mods):
        by_shape.setdefault((m.r, m.d_out), []).append(i)
    blocks = []
    for (_, d_out), members in by_shape.items():
        transform = torch.stack([(mods[i].scaling * mods[i].B.to(torch.float64)).T for i in members]).to(device)
        blocks.append(_Block(members, True, transform, [offsets[i] for i in members], d_out))
    return blocks, sizes


class BatchCounts:
    """Scoped-token and record counts per group of records, staged with each batch and committed
    only with its sums, so that a batch retried after an out-of-memory never counts twice. Both
    accumulators (these unit statistics and ``moments``' second moments) keep their counts here."""

    def __init__(self, n_groups: int):
        self.tokens = np.zeros(n_groups)
        self.n_records = np.zeros(n_groups)
        self.pending: tuple[np.ndarray, np.ndarray] | None = None

    def stage(self, mask: torch.Tensor, groups: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage one batch: ``mask`` (B, T) bool scoped tokens, ``groups`` (G, B) float64 membership.
        Returns (the membership with records that have no scoped token dropped, (B,) float64 scoped
        tokens per record)."""
        counts = mask.sum(dim=1).to(torch.float64)
        groups = groups * (counts > 0).to(torch.float64)[None, :]
        self.pending = ((groups @ counts).numpy(), groups.sum(dim=1).numpy())
        return groups, counts

    def commit(self) -> None:
        tokens, records = self.pending
        self.tokens += tokens
        self.n_records += records
        self.pending = None

    def drop(self) -> None:
        self.pending = None

    def merge_ranks(self, ranks) -> None:
        """Sum the counts over the ranks of a launcher (``runtime.distributed``)."""
        self.tokens = ranks.sum_array(self.tokens)
        self.n_records = ranks.sum_array(self.n_records)


class _Accumulator:
    """Float64 per-unit sums for G groups of records (forget: 1 group; retain: whole + halves).

    The four sums of every unit live in one (G, 4, N) tensor on the model's device (sum |a|,
    sum a^2, sum of record means, sum of squared record means); the only host transfer is at the
    end. During a forward pass the hooks only keep a reference to each lora_A output; after it,
    ``reduce`` processes every module of a block at once, so the cost per batch is a few dozen
    operations whatever the number of modules. Per batch, the token selection, the one-hot token
    -> row matrix and the 0/1 row -> group matrix are built on the host from the mask (no device
    sync) and sent once. Per-row sums are a one-hot matrix product over the scoped tokens or a
    masked sum over all positions (see DENSE_THRESHOLD), per-group sums a matrix product: no
    scatter-add, so results are deterministic on CUDA too.
    """

    def __init__(self, n_groups: int, n_units: int, n_modules: int, device: torch.device):
        self.device = device
        self.sums = torch.zeros(n_groups, 4, n_units, dtype=torch.float64, device=device)
        self.counts = BatchCounts(n_groups)
        self.z: list[torch.Tensor | None] = [None] * n_modules
        self.calls = [0] * n_modules
        # per-batch state, set by begin_batch
        self.flat_idx = self.onehot = self.inv_counts = self.groups = self.mask = None
        self.shape: tuple[int, int] = (0, 0)
        self.n_tok = 0

    def send(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return tensor.pin_memory().to(self.device, non_blocking=True)
        return tensor.to(self.device)

    def begin_batch(self, mask: torch.Tensor, groups: torch.Tensor) -> None:
        """``mask`` (B, T) bool on the host: scoped tokens; ``groups`` (G, B) float64: membership."""
        rows, width = mask.shape
        self.shape = (rows, width)
        flat_idx = mask.reshape(-1).nonzero().squeeze(1)
        onehot = (torch.arange(rows)[:, None] == (flat_idx // width)[None, :]).to(torch.float64)
        groups, counts = self.counts.stage(mask, groups)  # committed by reduce
        self.n_tok = int(flat_idx.numel())
        self.flat_idx = self.send(flat_idx)
        self.onehot = self.send(onehot)
        self.mask = self.send(mask)
        self.inv_counts = self.send((1.0 / counts.clamp(min=1.0))[:, None])
        self.groups = self.send(groups)
        self.z = [None] * len(self.z)
        self.calls = [0] * len(self.calls)

    def hook(self, i: int):
        """A forward hook for module ``i``'s lora_A: keep its output (no copy) for ``reduce``."""

        def keep(_module, _inputs, output):
            self.calls[i] += 1
            self.z[i] = output.to(self.device)  # a no-op unless a device map put the module on another device

        return keep

    def _kept(self, block: _Block) -> torch.Tensor:
        """The block's kept z over all positions: (k, B*T, r) stacked or (1, B*T, sum r)."""
        rows, width = self.shape
        zs = [self.z[i] for i in block.modules]
        for i, z in zip(block.modules, zs):
            if z is None or z.numel() != rows * width * z.shape[-1]:
                seen = "nothing" if z is None else f"{z.numel() // z.shape[-1]} positions"
                raise UcanRuntimeError(f"LoRA module #{i} saw {seen} but the batch has {rows}x{width} positions")
        if block.stack:
            return torch.stack([z.reshape(rows * width, -1) for z in zs])
        return torch.cat([z.reshape(rows * width, -1) for z in zs], dim=1).unsqueeze(0)

    def _row_sums_sparse(self, z: torch.Tensor, block: _Block) -> torch.Tensor:
        """(k, B, 2d) from the scoped tokens only: one-hot token -> row products."""
        z = z.index_select(1, self.flat_idx).to(torch.float64)
        k, n_tok, _ = z.shape
        chunk = max(1, CHUNK_ELEMENTS // (k * block.width))
        parts = []
        for start in range(0, n_tok, chunk):
            a = z[:, start : start + chunk]
            if block.transform is not None:
                a = torch.bmm(a, block.transform)
            parts.append(self.onehot[:, start : start + chunk] @ torch.cat([a.abs(), a.square()], dim=2))
        return torch.stack(parts).sum(0) if len(parts) > 1 else parts[0]

    def _row_sums_dense(self, z: torch.Tensor, block: _Block) -> torch.Tensor:
        """(k, B, 2d) over every position, masked: cheaper when most positions are in scope."""
        rows, width = self.shape
        k, _, r = z.shape
        z = z.view(k, rows, width, r)
        chunk = max(1, CHUNK_ELEMENTS // (k * width * block.width))
        parts = []
        for start in range(0, rows, chunk):
            zc = z[:, start : start + chunk].to(torch.float64)
            n_rows = zc.shape[1]
            a = zc if block.transform is None else torch.bmm(zc.reshape(k, n_rows * width, r), block.transform)
            a = a.reshape(k, n_rows, width, -1)
            keep = self.mask[start : start + chunk, :, None]  # where(), not a product: pads may hold NaN
            parts.append(
                torch.cat([torch.where(keep, a.abs(), 0.0).sum(2), torch.where(keep, a.square(), 0.0).sum(2)], dim=2)
            )
        return torch.cat(parts, dim=1)

    def reduce(self, blocks: list[_Block]) -> None:
        """Fold the kept lora_A outputs of one batch into the sums, block by block.

        Every block's per-group sums are computed before any is added (and the token and record
        counts of ``begin_batch`` are added last), so a batch that fails part-way (out of memory)
        leaves the accumulator as it was and can be retried (``ucan_cli.runtime.batching``). Each
        unit still gets one addition per batch, so the sums are the same bits as adding as we go.
        """
        rows, width = self.shape
        sparse = self.n_tok <= DENSE_THRESHOLD * width
        updates = []
        for block in blocks:
            z = self._kept(block)
            d = block.width
            row_sums = self._row_sums_sparse(z, block) if sparse else self._row_sums_dense(z, block)
            rec_mean = row_sums[..., :d] * self.inv_counts
            per_group = self.groups @ torch.cat([row_sums, rec_mean, rec_mean.square()], dim=2)  # (k, G, 4d)
            per_group = per_group.view(z.shape[0], -1, 4, d)
            updates += [(offset, d, per_group[j]) for j, offset in enumerate(block.offsets)]
        for offset, d, part in updates:
            self.sums[:, :, offset : offset + d] += part
        self.counts.commit()
        self.z = [None] * len(self.z)

    def drop_batch(self) -> None:
        """Forget the current batch (its activations and staged counts), committed or not."""
        self.z = [None] * len(self.z)
        self.counts.drop()

    def merge_ranks(self, ranks) -> None:
        """Sum the sums and counts over the ranks of a launcher (``runtime.distributed``)."""
        if ranks.active:
            ranks.sum_(self.sums)
            self.counts.merge_ranks(ranks)

    def set_stats(self, g: int) -> SetStats:
        sums = self.sums[g].cpu().numpy()
        n = sums.shape[1]
        return SetStats(
            sum_abs=sums[0],
            sum_sq=sums[1],
            tokens=np.full(n, float(self.counts.tokens[g])),
            rec_sum=sums[2],
            rec_sumsq=sums[3],
            n_records=int(round(float(self.counts.n_records[g]))),
        )


def _stream(
    model,
    layers: list[torch.nn.Module],
    adapter_name: str,
    encoded: Sequence[Encoded],
    groups: np.ndarray,
    *,
    blocks: list[_Block],
    n_units: int,
    scope: str,
    batcher: Batcher,
    pad_id: int,
    padding_side: str,
    progress: ProgressFactory,
    description: str,
) -> _Accumulator:
    """One pass over ``encoded``; ``groups`` (G, n_records) bool says which group each record is in.
    ``batcher`` cuts the batches and retries one that runs out of memory (``runtime.batching``)."""
    acc = _Accumulator(groups.shape[0], n_units, len(layers), model_device(model))
    hooks = [(layer.lora_A[adapter_name], acc.hook(i)) for i, layer in enumerate(layers)]
    run_passes(
        model, acc, hooks, encoded, groups, scope=scope, batcher=batcher, pad_id=pad_id, padding_side=padding_side,
        progress=progress, description=description, reduce=lambda: acc.reduce(blocks),
    )
    return acc


def run_passes(
    model, acc, hooks, encoded, groups: np.ndarray, *, scope: str, batcher: Batcher, pad_id: int, padding_side: str,
    progress: ProgressFactory, description: str, reduce, pre_hooks: bool = False,
) -> None:
    """One pass over ``encoded`` with ``hooks`` ((module, hook) pairs: forward hooks, or forward
    pre-hooks with ``pre_hooks``) registered: per batch ``acc.begin_batch(scope mask, groups)``,
    the forward pass, a check that every hooked module ran exactly once (``acc.calls``), then
    ``reduce()``. Shared by the activation statistics and the second moments (``moments.py``).

    ``batcher`` (``runtime.batching``) cuts the batches, retries one that runs out of memory and,
    under a launcher, runs only this rank's share; ``acc.merge_ranks(ranks)`` then sums the ranks'
    accumulators. So ``reduce`` must commit nothing before it can no longer fail (a retried batch
    would count twice): ``acc.begin_batch`` only stages the batch's token and record counts and
    ``reduce`` adds everything at its end (or, for sums too large to stage, refuses the retry).
    """
    if not encoded:
        return
    register = "register_forward_pre_hook" if pre_hooks else "register_forward_hook"
    handles = [getattr(module, register)(hook) for module, hook in hooks]
    extra = {"use_cache": False}
    if accepts_logits_to_keep(model):
        extra["logits_to_keep"] = 1
    groups_t = torch.as_tensor(groups, dtype=torch.float64)
    try:
        with progress(description, len(batcher.assigned(encoded))) as advance:

            def step(batch) -> None:  # commits nothing unless it returns: a batch can be retried
                acc.begin_batch(batch.scope_mask(scope), groups_t[:, batch.index])
                try:
                    model(**{k: acc.send(v) for k, v in batch.model_inputs().items()}, **extra)
                    bad = next((i for i, c in enumerate(acc.calls) if c != 1), None)
                    if bad is not None:
                        raise UcanRuntimeError(
                            f"LoRA module #{bad} ran {acc.calls[bad]} times in one forward pass; ucan needs each "
                            "adapted module to run exactly once (is the adapter merged or disabled?)"
                        )
                    reduce()
                finally:
                    acc.drop_batch()  # this batch's activations, failed or not
                advance(len(batch.index))

            batcher.run(encoded, step, pad_id=pad_id, padding_side=padding_side)
    finally:
        for handle in handles:
            handle.remove()
    acc.merge_ranks(batcher.ranks)


def retain_membership(n_retain: int, halves: tuple[Sequence[int], Sequence[int]]) -> np.ndarray:
    """(3, n_retain) bool: which retain records are in the whole set, half a and half b (the
    groups of a retain pass, for the statistics and the moments alike).

    Raises:
        ValueError: the halves hold an index outside the set, repeat one, or overlap.
    """
    idx_a, idx_b = (np.asarray(list(h), dtype=np.int64) for h in halves)
    for h in (idx_a, idx_b):
        if h.size and (h.min() < 0 or h.max() >= n_retain):
            raise ValueError("halves hold indices outside the retain set")
    if np.intersect1d(idx_a, idx_b).size or np.unique(idx_a).size != idx_a.size or np.unique(idx_b).size != idx_b.size:
        raise ValueError("halves must be two disjoint sets of distinct indices")
    groups = np.zeros((3, n_retain), dtype=bool)
    groups[0] = True
    groups[1, idx_a] = True
    groups[2, idx_b] = True
    return groups


def collect_statistics(
    model,
    adapter: LoraAdapter,
    forget_encoded: Sequence[Encoded],
    retain_encoded: Sequence[Encoded],
    *,
    halves: tuple[Sequence[int], Sequence[int]],
    unit: str = "output",
    scope: str = "response",
    batch_size: int | str | Batcher = 16,
    pad_id: int = 0,
    padding_side: str = "left",
    adapter_name: str = "default",
    progress: ProgressFactory | None = None,
) -> Statistics:
    """Step 1: stream the per-unit statistics of D_f (one pass) and D_r with its halves (one pass).

    Args:
        model: the base model with ``adapter`` attached (``PeftModel``); put in eval mode for
            the passes and restored afterwards.
        adapter: the adapter as data: module order, B and c_l of each module.
        forget_encoded, retain_encoded: tokenized records (``ucan_cli.io.tokenize.encode_set``).
        halves: two disjoint lists of indices into ``retain_encoded``, e.g.
            ``RecordSet.split_halves(seed)``.
        unit: ``output`` or ``rank``. scope: ``response``, ``last`` or ``all``.
        batch_size, pad_id, padding_side: batching (results do not depend on them beyond
            floating-point rounding). ``batch_size`` is rows per batch, ``"auto"``, or a
            ``ucan_cli.runtime.batching.Batcher`` (also for a token budget; read its ``meta()``
            afterwards for the size finally used).
        progress: a progress factory (one bar per pass).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if scope not in TOKEN_SCOPES:
        raise ValueError(f"scope must be one of {TOKEN_SCOPES}, got {scope!r}")
    retain_groups = retain_membership(len(retain_encoded), halves)
    progress = or_null(progress)
    layers = find_lora_layers(model, adapter, adapter_name)
    device = model_device(model)
    blocks, sizes = _blocks(adapter, unit, device)
    n_units = int(sum(sizes))
    batcher = Batcher.of(batch_size, device.type)
    common = dict(
        blocks=blocks, n_units=n_units, scope=scope, batcher=batcher,
        pad_id=pad_id, padding_side=padding_side, progress=progress,
    )
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            forget_acc = _stream(
                model, layers, adapter_name, forget_encoded, np.ones((1, len(forget_encoded)), dtype=bool),
                description="forget pass", **common,
            )
            retain_acc = _stream(
                model, layers, adapter_name, retain_encoded, retain_groups, description="retain pass", **common
            )
    finally:
        model.train(was_training)

    b_col_norms = None
    if unit == "rank":
        b_col_norms = np.concatenate([torch.linalg.vector_norm(m.B.to(torch.float64), dim=0).numpy() for m in adapter.modules])
    return Statistics(
        unit=unit,
        scope=scope,
        module_names=[m.name for m in adapter.modules],
        module_sizes=sizes,
        module_ids=np.repeat(np.arange(len(sizes)), sizes),
        forget=forget_acc.set_stats(0),
        retain=retain_acc.set_stats(0),
        half_a=retain_acc.set_stats(1),
        half_b=retain_acc.set_stats(2),
        scaling=np.repeat([m.scaling for m in adapter.modules], sizes).astype(np.float64),
        b_col_norms=b_col_norms,
    )


def scope_token_count(encoded: Sequence[Encoded], scope: str) -> int:
    """Tokens a set contributes under ``scope`` (all: every token; last: one per record;
    response: the response tokens, eos included)."""
    if scope == "all":
        return sum(len(e.input_ids) for e in encoded)
    if scope == "last":
        return len(encoded)
    if scope == "response":
        return sum(e.response_len for e in encoded)
    raise ValueError(f"unknown token scope {scope!r}")
