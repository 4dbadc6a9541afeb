"""Torch's intra-op thread count, set for a block and restored after.

Tiny matrices (the demo's models, an adapter edit's d x r slices) are overhead-bound: with several
OpenMP threads on a machine busy with other work, thread hand-offs cost more than the arithmetic
(measured: an adapter edit for a Llama-2-7B shape 0.03 s on one thread against 0.3-0.5 s on two;
the demo's eval passes 0.66 s against 14 s on a loaded 2-core machine).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def torch_threads(n: int = 1, *, when: bool = True) -> Iterator[None]:
    """Run the block with ``n`` torch threads (only ``when`` is true), then restore the setting."""
    previous = torch.get_num_threads()
    if when:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
