"""How much accelerator memory a statistics pass needs, from the base's shapes alone (no weights).

``ucan score --dry-run`` prints it and docs/scaling.md tabulates it for 7B/8B/13B bases. Four parts,
each a formula of the module tree (a meta-device skeleton, ``runtime.models.model_skeleton``) and
the adapter's shapes:

* **weights**: every parameter in the load dtype (2 bytes in bf16), except, under
  ``--load-in-4bit``, the ``nn.Linear`` weights of the decoder (not ``lm_head``, which
  bitsandbytes keeps), at 0.5 byte per weight plus NF4's block constants with double
  quantization (one 8-bit absmax per 64 weights and one float32 per 256 blocks: 1/64 + 1/4096
  byte per weight); ``--load-in-8bit``: 1 byte per weight plus one float32 scale per output row.
* **adapter**: the LoRA A and B matrices in float32 (PEFT keeps adapter weights in float32 over
  a bf16 or quantized base).
* **activations** of one batch of ``rows x width`` positions, the larger of two moments. During
  the forward pass layers run one after another under ``inference_mode``, so about one layer's
  working set lives at a time: 4 hidden-size vectors (residual, normed input, attention output,
  q/k/v) and 3 MLP-size vectors (gate, up, their product) per position in the compute dtype, the
  last position's logits in float32, and the lora_A outputs the statistics hooks keep until the
  batch is reduced (float32, r per module). After it, the reduction holds those kept outputs and
  its float64 chunks (at most 4 x 2^22 values, fewer for a small batch; output and rank units).
  Attention is assumed fused (SDPA, no T x T matrix); an eager attention adds heads x T^2 per row.
* **statistics**, float64 on the device for the whole run: output and rank units keep 4 sums for
  1 forget group and 3 retain groups (retain, half A, half B) per unit, output units also c B^T
  per module (r x d_out); direction units keep 4 x d_in^2 float64 per module for one group of
  modules at a time, at most ``--max-memory``.

Direction units also need **host** memory after the passes, for the solve (``methods/ucan/
direction.py``, NumPy on the CPU): every module's moments (4 x d_in^2 float64; they come back to
the host group by group and stay for the score file), the V and U kept per module for the edit
(2 x d_in^2), and while one module is solved ``SOLVE_TRANSIENT`` more d_in^2 float64 matrices of
the widest module (measured with tracemalloc: 14 d_in^2 at the peak of one module's solve, 2 of
which are the kept V and U). On a CPU run the device is the host: ``total_cpu`` is then the peak,
the weights plus the larger of the passes (activations with the statistics) and the solve.

The figures are estimates of what torch allocates (not what the CUDA caching allocator
reserves, typically 5-15% more); docs/scaling.md says how far they were checked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

GIB = 1024**3
#: Bytes per weight of a bitsandbytes-quantized nn.Linear, with its constants.
QUANT_BYTES = {"4bit": 0.5 + 1 / 64 + 4 / (64 * 256), "8bit": 1.0}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
#: The statistics reduction's chunk (``methods/ucan/statistics.py:CHUNK_ELEMENTS``), float64, ~4 alive.
REDUCE_BYTES = 4 * (1 << 22) * 8
#: d_in^2 float64 matrices a direction solve holds for its widest module beyond the kept V and U.
SOLVE_TRANSIENT = 12


@dataclass(frozen=True)
class Footprint:
    """Estimated bytes of one statistics pass: weights, adapter, one batch's activations, statistics."""

    weights: int
    adapter: int
    activations: int
    statistics: int
    host: int = 0  # direction units: the solve's host memory (moments, kept V and U, one module's work)

    @property
    def total(self) -> int:
        """Device memory during the passes."""
        return self.weights + self.adapter + self.activations + self.statistics

    @property
    def total_cpu(self) -> int:
        """The peak of a run whose device is the CPU (device and host are one memory)."""
        return self.weights + self.adapter + max(self.activations + self.statistics, self.host)

    def as_dict(self) -> dict:
        return {**asdict(self), "total": self.total, "total_cpu": self.total_cpu}


def weight_bytes(skeleton, *, dtype_bytes: int, quantize: str | None = None) -> int:
    """The base's weights as loaded: ``dtype_bytes`` per parameter, quantized decoder Linears aside."""
    import torch

    total = 0.0
    quantized = set()
    if quantize is not None:
        for name, module in skeleton.named_modules():
            if isinstance(module, torch.nn.Linear) and not name.endswith("lm_head"):
                quantized.add(id(module.weight))
                rows = module.weight.shape[0]
                total += module.weight.numel() * QUANT_BYTES[quantize] + (4 * rows if quantize == "8bit" else 0)
    seen = set(quantized)
    for param in skeleton.parameters():  # tied embeddings count once
        if id(param) not in seen:
            seen.add(id(param))
            total += param.numel() * dtype_bytes
    return int(round(total))


def _config_sizes(config) -> tuple[int, int, int]:
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd")
    mlp = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    return int(hidden), int(mlp), int(config.vocab_size)


def activation_bytes(config, adapter_modules, *, rows: int, width: int, dtype_bytes: int, unit: str = "output") -> int:
    """One batch of ``rows x width`` positions: the forward pass or the reduction after it,
    whichever needs more (see the module docstring)."""
    hidden, mlp, vocab = _config_sizes(config)
    positions = rows * width
    kept = positions * 4 * sum(m.r for m in adapter_modules)
    forward = positions * (4 * hidden + 3 * mlp) * dtype_bytes + kept + rows * vocab * 4
    if unit == "direction":
        return forward
    units = sum(m.d_out if unit == "output" else m.r for m in adapter_modules)
    return max(forward, kept + min(REDUCE_BYTES, 4 * positions * units * 8))


def statistics_bytes(adapter_modules, *, unit: str, max_memory_gib: float = 4.0) -> int:
    """Float64 sums on the device for ``unit`` (output, rank or direction), for the whole run."""
    if unit == "direction":  # the largest group of modules the passes hold at once (moments.plan_groups)
        from types import SimpleNamespace

        from ucan_cli.errors import InputError
        from ucan_cli.methods.ucan.moments import moment_bytes, plan_groups

        modules = list(adapter_modules)
        try:
            groups = plan_groups(SimpleNamespace(modules=modules), max_memory_gib)
        except InputError:  # a module alone exceeds --max-memory: the run refuses it; this is what it would need
            return max(moment_bytes(m.d_in) for m in modules)
        return max((sum(moment_bytes(modules[i].d_in) for i in group) for group in groups), default=0)
    units = sum(m.d_out if unit == "output" else m.r for m in adapter_modules)
    sums = 4 * 4 * units * 8
    if unit == "output":
        sums += sum(m.r * m.d_out * 8 for m in adapter_modules)
    return sums


def host_bytes(adapter_modules, *, unit: str) -> int:
    """Direction units' host memory for the solve (see the module docstring); 0 for other units."""
    if unit != "direction":
        return 0
    from ucan_cli.methods.ucan.moments import moment_bytes

    squares = [int(m.d_in) ** 2 * 8 for m in adapter_modules]
    return sum(moment_bytes(m.d_in) for m in adapter_modules) + 2 * sum(squares) + SOLVE_TRANSIENT * max(squares, default=0)


def footprint(skeleton, adapter_modules, *, unit: str, dtype: str, quantize: str | None, rows: int, width: int,
              max_memory_gib: float = 4.0) -> Footprint:
    """The four parts for a base skeleton and the adapter's modules (objects with r, d_in, d_out)."""
    dtype_bytes = DTYPE_BYTES[dtype]
    return Footprint(
        weights=weight_bytes(skeleton, dtype_bytes=dtype_bytes, quantize=quantize),
        adapter=sum(4 * m.r * (m.d_in + m.d_out) for m in adapter_modules),
        activations=activation_bytes(skeleton.config, adapter_modules, rows=rows, width=width, dtype_bytes=dtype_bytes, unit=unit),
        statistics=statistics_bytes(adapter_modules, unit=unit, max_memory_gib=max_memory_gib),
        host=host_bytes(adapter_modules, unit=unit),
    )


__all__ = ["Footprint", "GIB", "activation_bytes", "footprint", "host_bytes", "statistics_bytes", "weight_bytes"]
