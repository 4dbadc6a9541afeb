"""Step 1 for direction units (SPEC 3b): per-module second moments of what each ``lora_A`` reads.

One forward pass per set, no gradients, eval mode (dropout off), like the activation statistics
(``ucan_cli.methods.ucan.statistics``), but what is kept differs: a forward pre-hook on each
LoRA module's ``lora_A`` keeps its input x (the module's input; GPT-2's ``Conv1D`` included:
``lora_A`` is a Linear on x whatever the base layer stores). After the forward pass, the tokens of
the token scope are gathered and folded into float64 sums X^T diag(w_g) X per batch, one per
group g (forget; retain whole, half a, half b), so nothing per token outlives the batch and the
result does not depend on batch size, padding side or record order beyond float rounding. The
moments depend on the adapter only through the layers before a module (they never read A or B).

Memory is bounded and said: a module holds 4 x d_in^2 float64 sums (``moment_bytes``) on the
model's device while its sets are streamed. Modules are packed, in module order, into groups
whose sums fit ``max_memory`` GiB; each group gets its own passes (``plan_groups``), so an
adapter wider than the budget costs more passes, never more memory. A single module wider than
the budget is an ``InputError`` naming it and the bytes it needs. The finished moments are moved
to the host (NumPy) group by group.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ucan_cli.errors import InputError, UcanRuntimeError
from ucan_cli.io.adapter import LoraAdapter
from ucan_cli.io.tokenize import Encoded
from ucan_cli.methods.ucan.statistics import BatchCounts, run_passes
from ucan_cli.progress import ProgressFactory, or_null
from ucan_cli.runtime.batching import Batcher
from ucan_cli.runtime.models import model_device

SET_NAMES = ("forget", "retain", "half_a", "half_b")
GIB = float(1 << 30)


@dataclass
class SetMoments:
    """Sums of x x^T over one set's scoped tokens, per module (float64, d_in x d_in), the scoped
    token count and the records that contributed a token."""

    sums: list[np.ndarray]
    tokens: float
    n_records: int

    def mean(self, m: int) -> np.ndarray:
        """S = sum / tokens of module ``m`` (zeros when the set has no scoped token)."""
        return self.sums[m] / self.tokens if self.tokens > 0 else np.zeros_like(self.sums[m])


@dataclass
class MomentStatistics:
    """Direction units' step-1 statistics: the four sets' second moments per module.

    Attributes:
        scope: token scope (``response``, ``last``, ``all``).
        module_names: module paths, ``LoraAdapter.modules`` order.
        module_sizes: d_in of each module (its number of direction units).
        forget, retain, half_a, half_b: ``SetMoments``.
    """

    scope: str
    module_names: list[str]
    module_sizes: list[int]
    forget: SetMoments
    retain: SetMoments
    half_a: SetMoments
    half_b: SetMoments
    unit: str = "direction"
    solved: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """``direction.decompose``'s result per (module, shrinkage): the eigen solutions and lambda0 do
    not depend on ``--strength`` or ``--gate``, so every edit from these moments solves each module
    once (``--retain-kl`` edits at up to ten strengths)."""

    def __post_init__(self) -> None:
        self.module_sizes = [int(s) for s in self.module_sizes]
        if len(self.module_names) != len(self.module_sizes):
            raise ValueError("module_names and module_sizes differ in length")
        for name in SET_NAMES:
            sums = getattr(self, name).sums
            if [tuple(np.shape(x)) for x in sums] != [(d, d) for d in self.module_sizes]:
                raise ValueError(f"{name} moments do not match the modules' input widths")

    @property
    def n_units(self) -> int:
        return int(sum(self.module_sizes))


def moment_bytes(d_in: int, n_sets: int = 4) -> int:
    """Bytes of one module's float64 sums: n_sets x d_in^2 x 8."""
    return int(n_sets) * int(d_in) ** 2 * 8


def plan_groups(adapter: LoraAdapter, max_memory_gib: float) -> list[list[int]]:
    """Module indices packed in order into groups whose moments fit ``max_memory_gib``.

    Raises:
        InputError: a single module needs more than the budget (named, with its size).
    """
    budget = float(max_memory_gib) * GIB
    groups: list[list[int]] = []
    used = budget + 1.0
    for i, module in enumerate(adapter.modules):
        need = moment_bytes(module.d_in)
        if need > budget:
            raise InputError(
                f"--max-memory {max_memory_gib:g}: module {module.name} (d_in {module.d_in}) alone needs "
                f"{need / GIB:.3g} GiB of second moments; raise --max-memory"
            )
        if used + need > budget:
            groups.append([])
            used = 0.0
        groups[-1].append(i)
        used += need
    return groups


def memory_estimate(adapter: LoraAdapter, max_memory_gib: float) -> dict:
    """What ``--dry-run`` says: bytes of every module's moments, the largest module's, the groups
    (one forward pass per set per group) under the budget."""
    total = sum(moment_bytes(m.d_in) for m in adapter.modules)
    groups = plan_groups(adapter, max_memory_gib)
    return {
        "moment_bytes_total": total,
        "moment_bytes_largest_module": max((moment_bytes(m.d_in) for m in adapter.modules), default=0),
        "max_memory_gib": float(max_memory_gib),
        "groups": len(groups),
        "passes": 2 * len(groups),
    }


class _MomentAccumulator:
    """Float64 sums per group of records for a few modules, on the model's device."""

    def __init__(self, n_groups: int, widths: list[int], device: torch.device):
        self.device = device
        self.sums = [torch.zeros(n_groups, d, d, dtype=torch.float64, device=device) for d in widths]
        self.counts = BatchCounts(n_groups)
        self.x: list[torch.Tensor | None] = [None] * len(widths)
        self.calls = [0] * len(widths)
        self.flat_idx = self.token_weights = None
        self.positions = 0

    def send(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(self.device)

    def begin_batch(self, mask: torch.Tensor, groups: torch.Tensor) -> None:
        """``mask`` (B, T) bool: scoped tokens; ``groups`` (G, B) float64 membership."""
        rows, width = mask.shape
        self.positions = rows * width
        flat_idx = mask.reshape(-1).nonzero().squeeze(1)
        groups, _ = self.counts.stage(mask, groups)  # committed by reduce
        self.flat_idx = flat_idx.to(self.device)
        self.token_weights = groups[:, flat_idx // width].to(self.device)  # (G, n_tok)
        self.x = [None] * len(self.x)
        self.calls = [0] * len(self.calls)

    def hook(self, i: int):
        def keep(_module, args):
            self.calls[i] += 1
            self.x[i] = args[0].to(self.device)  # a no-op unless a device map put the module on another device

        return keep

    def reduce(self) -> None:
        """Fold the batch into the sums, one module and group at a time (one d_in x d_in product
        alive at once: staging a whole batch's updates would double the moments' memory). So an
        out-of-memory after the first addition cannot be retried without counting the batch twice
        where it was already added, and becomes a plain error (``--batch-size auto`` does not halve
        on it); one before it is retried like any other."""
        for i, x in enumerate(self.x):
            if x is None or x.numel() != self.positions * x.shape[-1]:
                raise UcanRuntimeError(f"LoRA module #{i} saw an input that does not match the batch's positions")
        touched = None
        try:
            for i, x in enumerate(self.x):
                xs = x.reshape(self.positions, -1).index_select(0, self.flat_idx).to(torch.float64)
                for g in range(self.sums[i].shape[0]):
                    self.sums[i][g] += self._update(xs, self.token_weights[g])
                    touched = i
        except Exception as exc:
            if touched is None:
                raise  # nothing committed: an out-of-memory here is retried with a smaller batch
            raise UcanRuntimeError(
                f"memory ran short while adding a batch to the second moments (LoRA module #{touched} had taken it), "
                "so the batch cannot be retried: lower --max-memory (fewer modules per pass) or --batch-size"
            ) from exc
        self.counts.commit()
        self.x = [None] * len(self.x)

    @staticmethod
    def _update(xs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """X^T diag(w) X over the batch's scoped tokens (float64, d_in x d_in)."""
        return xs.T @ (xs * weights[:, None])

    def drop_batch(self) -> None:
        """Forget the current batch (its inputs and staged counts), committed or not."""
        self.x = [None] * len(self.x)
        self.counts.drop()

    def merge_ranks(self, ranks) -> None:
        """Sum the moments and counts over the ranks of a launcher (``runtime.distributed``)."""
        if ranks.active:
            for sums in self.sums:
                ranks.sum_(sums)
            self.counts.merge_ranks(ranks)


def _stream(model, layers, adapter_name, encoded, groups, *, widths, progress, description, **batching):
    acc = _MomentAccumulator(groups.shape[0], widths, model_device(model))
    hooks = [(layer.lora_A[adapter_name], acc.hook(i)) for i, layer in enumerate(layers)]
    run_passes(model, acc, hooks, encoded, groups, progress=progress, description=description, reduce=acc.reduce, pre_hooks=True, **batching)
    return acc


def collect_moments(
    model,
    adapter: LoraAdapter,
    forget_encoded: Sequence[Encoded],
    retain_encoded: Sequence[Encoded],
    *,
    halves: tuple[Sequence[int], Sequence[int]],
    scope: str = "response",
    batch_size=16,
    pad_id: int = 0,
    padding_side: str = "left",
    max_memory: float = 4.0,
    adapter_name: str = "default",
    progress: ProgressFactory | None = None,
) -> MomentStatistics:
    """Stream the second moments of D_f and of D_r with its halves, a group of modules at a time
    (``plan_groups``); arguments as ``ucan_cli.methods.ucan.statistics.collect_statistics``
    (``batch_size``: rows, ``"auto"`` or a ``runtime.batching.Batcher``)."""
    from ucan_cli.methods.ucan.statistics import find_lora_layers, retain_membership

    retain_groups = retain_membership(len(retain_encoded), halves)
    groups = plan_groups(adapter, max_memory)
    layers = find_lora_layers(model, adapter, adapter_name)
    progress = or_null(progress)
    batcher = Batcher.of(batch_size, model_device(model).type)
    sums = {name: [None] * len(adapter.modules) for name in SET_NAMES}
    counts: dict[str, tuple[float, int]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for g, members in enumerate(groups):
                part = f" (modules {g + 1}/{len(groups)})" if len(groups) > 1 else ""
                common = dict(
                    widths=[adapter.modules[i].d_in for i in members], scope=scope, batcher=batcher,
                    pad_id=pad_id, padding_side=padding_side, progress=progress,
                )
                chosen = [layers[i] for i in members]
                f_acc = _stream(model, chosen, adapter_name, forget_encoded, np.ones((1, len(forget_encoded)), dtype=bool),
                                description="forget pass" + part, **common)
                r_acc = _stream(model, chosen, adapter_name, retain_encoded, retain_groups, description="retain pass" + part, **common)
                for j, i in enumerate(members):
                    sums["forget"][i] = f_acc.sums[j][0].cpu().numpy()
                    for k, name in enumerate(("retain", "half_a", "half_b")):
                        sums[name][i] = r_acc.sums[j][k].cpu().numpy()
                counts["forget"] = (float(f_acc.counts.tokens[0]), int(round(f_acc.counts.n_records[0])))
                for k, name in enumerate(("retain", "half_a", "half_b")):
                    counts[name] = (float(r_acc.counts.tokens[k]), int(round(r_acc.counts.n_records[k])))
    finally:
        model.train(was_training)
    if not groups:
        counts = {name: (0.0, 0) for name in SET_NAMES}
    return MomentStatistics(
        scope=scope,
        module_names=[m.name for m in adapter.modules],
        module_sizes=[m.d_in for m in adapter.modules],
        **{name: SetMoments(sums[name], *counts[name]) for name in SET_NAMES},
    )


__all__ = ["MomentStatistics", "SetMoments", "collect_moments", "memory_estimate", "moment_bytes", "plan_groups"]
