"""Step 1 of U-CAN: stream per-unit activation statistics of a LoRA adapter over a data set.

One forward pass per set, no gradients (``torch.inference_mode``), eval mode (dropout off). A
forward hook on each LoRA module's ``lora_A`` sees z = A x for every token of the batch; inside
the hook the tokens of the token scope are selected and reduced to per-unit sums, so nothing per
token outlives the hook:

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

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ucan_cli.errors import UcanRuntimeError
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.tokenize import Batch, Encoded, iter_batches
from ucan_cli.progress import ProgressFactory, or_null
from ucan_cli.scoring import UNITS, SetStats

SCOPES = ("response", "last", "all")
SET_NAMES = ("forget", "retain", "half_a", "half_b")

CHUNK_ELEMENTS = 1 << 22
"""Largest (tokens x units) block the hook materializes at once (float64: 32 MiB)."""


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
        forget, retain, half_a, half_b: per-set statistics (``ucan_cli.scoring.SetStats``).
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
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
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
    """Keyword arguments of ``ucan_cli.scoring.compute_scores`` from ``stats`` (all but ``params``
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


def _accepts_logits_to_keep(model) -> bool:
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False


def _model_device(model) -> torch.device:
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


# --------------------------------------------------------------------------------------------
# Streaming accumulation


class _Accumulator:
    """Float64 per-unit sums for G groups of records (forget: 1 group; retain: whole + halves).

    Accumulators live on the model's device; the only host transfer is at the end. Within a
    batch, per-row sums are formed with a one-hot matrix product (deterministic on CUDA, unlike
    scatter-add), then per-group sums with a 0/1 group matrix.
    """

    def __init__(self, n_groups: int, n_units: int, device: torch.device):
        f64 = dict(dtype=torch.float64, device=device)
        self.sum_abs = torch.zeros(n_groups, n_units, **f64)
        self.sum_sq = torch.zeros(n_groups, n_units, **f64)
        self.rec_sum = torch.zeros(n_groups, n_units, **f64)
        self.rec_sumsq = torch.zeros(n_groups, n_units, **f64)
        self.tokens = torch.zeros(n_groups, **f64)
        self.n_records = torch.zeros(n_groups, **f64)
        # per-batch state, set by begin_batch
        self.flat_idx: torch.Tensor | None = None
        self.onehot: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None
        self.groups: torch.Tensor | None = None
        self.shape: tuple[int, int] = (0, 0)

    def begin_batch(self, mask: torch.Tensor, groups: torch.Tensor) -> None:
        """``mask`` (B, T) bool: scoped tokens; ``groups`` (G, B) float64: row membership."""
        rows, width = mask.shape
        self.shape = (rows, width)
        self.flat_idx = mask.reshape(-1).nonzero().squeeze(1)
        row_of_token = self.flat_idx // width
        self.onehot = (torch.arange(rows, device=mask.device)[:, None] == row_of_token[None, :]).to(torch.float64)
        self.counts = mask.sum(dim=1).to(torch.float64)
        has_tokens = (self.counts > 0).to(torch.float64)
        self.groups = groups * has_tokens[None, :]
        self.tokens += self.groups @ self.counts
        self.n_records += self.groups.sum(dim=1)

    def add(self, z: torch.Tensor, offset: int, transform: torch.Tensor | None) -> None:
        """Reduce one module's ``lora_A`` output z (B, T, r) into units [offset, offset + d)."""
        rows, width = self.shape
        r = z.shape[-1]
        if z.numel() != rows * width * r:
            raise UcanRuntimeError(
                f"a LoRA layer saw {z.numel() // max(r, 1)} positions but the batch has {rows}x{width}"
            )
        selected = z.reshape(rows * width, r).index_select(0, self.flat_idx).to(torch.float64)
        d = r if transform is None else transform.shape[1]
        row_abs = torch.zeros(rows, d, dtype=torch.float64, device=z.device)
        row_sq = torch.zeros(rows, d, dtype=torch.float64, device=z.device)
        chunk = max(1, CHUNK_ELEMENTS // d)
        for start in range(0, selected.shape[0], chunk):
            a = selected[start : start + chunk]
            if transform is not None:
                a = a @ transform
            onehot = self.onehot[:, start : start + chunk]
            row_abs += onehot @ a.abs()
            row_sq += onehot @ a.square()
        rec_mean = row_abs / self.counts.clamp(min=1.0)[:, None]
        cols = slice(offset, offset + d)
        self.sum_abs[:, cols] += self.groups @ row_abs
        self.sum_sq[:, cols] += self.groups @ row_sq
        self.rec_sum[:, cols] += self.groups @ rec_mean
        self.rec_sumsq[:, cols] += self.groups @ rec_mean.square()

    def set_stats(self, g: int) -> SetStats:
        n = self.sum_abs.shape[1]
        return SetStats(
            sum_abs=self.sum_abs[g].cpu().numpy(),
            sum_sq=self.sum_sq[g].cpu().numpy(),
            tokens=np.full(n, float(self.tokens[g])),
            rec_sum=self.rec_sum[g].cpu().numpy(),
            rec_sumsq=self.rec_sumsq[g].cpu().numpy(),
            n_records=int(round(float(self.n_records[g]))),
        )


def _stream(
    model,
    layers: list[torch.nn.Module],
    adapter_name: str,
    encoded: Sequence[Encoded],
    groups: np.ndarray,
    *,
    offsets: list[int],
    transforms: list[torch.Tensor | None],
    n_units: int,
    scope: str,
    batch_size: int,
    pad_id: int,
    padding_side: str,
    progress: ProgressFactory,
    description: str,
) -> _Accumulator:
    """One pass over ``encoded``; ``groups`` (G, n_records) bool says which group each record is in."""
    device = _model_device(model)
    acc = _Accumulator(groups.shape[0], n_units, device)
    if not encoded:
        return acc
    calls = [0] * len(layers)
    handles = []

    def make_hook(i: int):
        def hook(_module, _inputs, output):
            calls[i] += 1
            acc.add(output.detach(), offsets[i], transforms[i])

        return hook

    for i, layer in enumerate(layers):
        handles.append(layer.lora_A[adapter_name].register_forward_hook(make_hook(i)))
    extra = {"use_cache": False}
    if _accepts_logits_to_keep(model):
        extra["logits_to_keep"] = 1
    groups_t = torch.as_tensor(groups, dtype=torch.float64)
    try:
        with progress(description, len(encoded)) as advance:
            for batch in iter_batches(encoded, batch_size, pad_id, padding_side=padding_side):
                _run_batch(model, batch, scope, groups_t, acc, extra, device)
                if any(c != 1 for c in calls):
                    bad = next(i for i, c in enumerate(calls) if c != 1)
                    name = layers[bad].__class__.__name__
                    raise UcanRuntimeError(
                        f"LoRA module #{bad} ({name}) ran {calls[bad]} times in one forward pass; "
                        "ucan needs each adapted module to run exactly once (is the adapter merged or disabled?)"
                    )
                calls[:] = [0] * len(layers)
                advance(len(batch.index))
    finally:
        for handle in handles:
            handle.remove()
    return acc


def _run_batch(model, batch: Batch, scope: str, groups_t: torch.Tensor, acc: _Accumulator, extra: dict, device) -> None:
    mask = batch.scope_mask(scope).to(device)
    acc.begin_batch(mask, groups_t[:, batch.index].to(device))
    inputs = {k: v.to(device) for k, v in batch.model_inputs().items()}
    model(**inputs, **extra)


def collect_statistics(
    model,
    adapter: LoraAdapter,
    forget_encoded: Sequence[Encoded],
    retain_encoded: Sequence[Encoded],
    *,
    halves: tuple[Sequence[int], Sequence[int]],
    unit: str = "output",
    scope: str = "response",
    batch_size: int = 16,
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
            floating-point rounding).
        progress: a progress factory (one bar per pass).
    """
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    if scope not in SCOPES:
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    n_retain = len(retain_encoded)
    idx_a, idx_b = (np.asarray(list(h), dtype=np.int64) for h in halves)
    for h in (idx_a, idx_b):
        if h.size and (h.min() < 0 or h.max() >= n_retain):
            raise ValueError("halves hold indices outside the retain set")
    if np.intersect1d(idx_a, idx_b).size or np.unique(idx_a).size != idx_a.size or np.unique(idx_b).size != idx_b.size:
        raise ValueError("halves must be two disjoint sets of distinct indices")

    progress = or_null(progress)
    layers = find_lora_layers(model, adapter, adapter_name)
    device = _model_device(model)
    sizes = [m.d_out if unit == "output" else m.r for m in adapter.modules]
    offsets = [0, *np.cumsum(sizes)[:-1].tolist()]
    n_units = int(sum(sizes))
    transforms: list[torch.Tensor | None] = [
        (m.scaling * m.B.to(torch.float64)).T.contiguous().to(device) if unit == "output" else None
        for m in adapter.modules
    ]
    retain_groups = np.zeros((3, n_retain), dtype=bool)
    retain_groups[0] = True
    retain_groups[1, idx_a] = True
    retain_groups[2, idx_b] = True
    common = dict(
        offsets=offsets, transforms=transforms, n_units=n_units, scope=scope, batch_size=batch_size,
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
