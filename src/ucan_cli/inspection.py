"""What an adapter holds, per module, without ever forming dW (pure math, no I/O).

With B = Q_B R_B and A^T = Q_A R_A (thin QR), dW = c B A = c Q_B (R_B R_A^T) Q_A^T, so the
singular values of dW are c times those of the r x r core R_B R_A^T. Norms, numerical rank and
the entropy-effective rank therefore cost O((d_in + d_out) r^2) instead of O(d_in d_out r).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch

from ucan_cli.io.adapter import LoraAdapter, LoraModule


@dataclass(frozen=True)
class ModuleSummary:
    name: str
    kind: str  # "linear" or "conv1d" (fan_in_fan_out)
    shape: tuple[int, int]  # (d_out, d_in) of dW
    r: int
    alpha: float
    scaling: float
    has_bias: bool
    dw_norm: float  # ||dW||_F
    component_norms: tuple[float, ...]  # c * ||B[:, j]|| * ||A[j, :]||
    singular_values: tuple[float, ...]
    numerical_rank: int
    effective_rank: float  # exp(entropy of normalized singular values)
    b_is_zero: bool
    finite: bool

    def to_dict(self) -> dict:
        out = asdict(self)
        out["shape"] = list(self.shape)
        out["component_norms"] = list(self.component_norms)
        out["singular_values"] = list(self.singular_values)
        return out


def core_singular_values(A: torch.Tensor, B: torch.Tensor, scaling: float) -> torch.Tensor:
    """Singular values of c * B @ A (descending, float64) from the r x r core."""
    A64, B64 = A.to(torch.float64), B.to(torch.float64)
    _, r_b = torch.linalg.qr(B64, mode="reduced")  # (r, r)
    _, r_a = torch.linalg.qr(A64.T, mode="reduced")  # (r, r)
    return abs(scaling) * torch.linalg.svdvals(r_b @ r_a.T)


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int], dtype: torch.dtype) -> int:
    """Count of singular values above sigma_max * max(shape) * eps(stored dtype) (numpy's rule)."""
    if singular_values.numel() == 0 or float(singular_values.max()) == 0.0:
        return 0
    eps = torch.finfo(dtype).eps if dtype.is_floating_point else torch.finfo(torch.float32).eps
    tol = float(singular_values.max()) * max(shape) * eps
    return int((singular_values > tol).sum())


def effective_rank(singular_values: torch.Tensor) -> float:
    """Roy and Vetterli's entropy-effective rank: exp(-sum p log p), p = s / sum(s); 0 for dW = 0."""
    total = float(singular_values.sum())
    if total == 0.0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return float(math.exp(float(-(p * p.log()).sum())))


def summarize_module(module: LoraModule, *, conv1d: bool = False) -> ModuleSummary:
    finite = bool(torch.isfinite(module.A).all() and torch.isfinite(module.B).all())
    c = module.scaling
    if finite:
        sv = core_singular_values(module.A, module.B, c)
        comp = abs(c) * module.B.to(torch.float64).norm(dim=0) * module.A.to(torch.float64).norm(dim=1)
    else:
        sv = torch.full((module.r,), float("nan"), dtype=torch.float64)
        comp = torch.full((module.r,), float("nan"), dtype=torch.float64)
    return ModuleSummary(
        name=module.name,
        kind="conv1d" if conv1d else "linear",
        shape=(module.d_out, module.d_in),
        r=module.r,
        alpha=module.alpha,
        scaling=c,
        has_bias=module.bias is not None,
        dw_norm=float(sv.norm()) if finite else float("nan"),
        component_norms=tuple(float(x) for x in comp),
        singular_values=tuple(float(x) for x in sv),
        numerical_rank=numerical_rank(sv, (module.d_out, module.d_in), module.B.dtype) if finite else 0,
        effective_rank=effective_rank(sv) if finite else float("nan"),
        b_is_zero=not bool(module.B.any()),
        finite=finite,
    )


def summarize_adapter(adapter: LoraAdapter) -> list[ModuleSummary]:
    """One summary per LoRA module, in module order."""
    conv1d = adapter.fan_in_fan_out
    return [summarize_module(m, conv1d=conv1d) for m in adapter.modules]
