"""Scoring and evaluation on several processes with ``torch.distributed`` (torchrun, accelerate).

Launched as ``torchrun --nproc-per-node N ucan score ...`` (or ``accelerate launch``), every
process runs the same command on the same inputs. ``init_from_env`` reads the launcher's
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT``) and joins
the process group: gloo when the model runs on the CPU, NCCL on CUDA (each rank on
``cuda:LOCAL_RANK``). From then on:

* each forward pass deals the batches a single process would run, round robin, to the ranks
  (``Batcher.assigned`` in ``runtime.batching``): rank r runs batches r, r + N, r + 2N, ... of
  every set, so a fixed ``--batch-size`` gives every rank the very batches (same rows, same
  padding) of the one-process run, and the records of a set are split without loss or overlap;
* the float64 sums (activation statistics, second moments, token and record counts) are summed
  over the ranks after each pass (``sum_``), and eval's per-record arrays are completed on every
  rank (each row comes from the one rank that ran it, the others add exact zeros), so every rank
  ends with the one-process numbers up to the order of float64 additions;
* only rank 0 writes files and prints (``Ranks.main``; the CLI silences the other ranks).

Nothing here is a home-made engine: the launcher, the rendezvous and the collectives are
torch's. Without a launcher (``WORLD_SIZE`` unset or 1) everything is the single-process code path
(``SINGLE``) and ``torch.distributed`` is never imported.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import numpy as np

from ucan_cli.errors import InputError

#: The commands that shard their forward passes. The others refuse a multi-process launch (exit 2).
DISTRIBUTED_COMMANDS = ("score", "eval")


@dataclass(frozen=True)
class Ranks:
    """Where this process stands: ``rank`` of ``world`` processes (``local_rank`` on its node)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def active(self) -> bool:
        """True when several processes share the work."""
        return self.world > 1

    @property
    def main(self) -> bool:
        """True on the rank that writes and prints (rank 0)."""
        return self.rank == 0

    def mine(self, j: int) -> bool:
        """Whether batch number ``j`` of a pass (in the one-process order) is this rank's."""
        return j % self.world == self.rank

    # ----------------------------------------------------------------------------- collectives

    def _device(self):
        import torch

        return torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")

    def sum_(self, tensor):
        """Sum a torch tensor over the ranks in place (a no-op on one process); returns it."""
        if not self.active:
            return tensor
        import torch
        import torch.distributed as dist

        if tensor.device == self._device():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            return tensor
        moved = tensor.to(self._device())
        dist.all_reduce(moved, op=dist.ReduceOp.SUM)
        with torch.no_grad():
            tensor.copy_(moved.to(tensor.device))
        return tensor

    def sum_array(self, array: np.ndarray) -> np.ndarray:
        """The sum over the ranks of a NumPy array (float64 or int64 kept); the array itself on one process."""
        if not self.active:
            return array
        import torch

        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(self._device())
        self.sum_(tensor)
        return tensor.cpu().numpy()

    def all_true(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (so every rank takes the same branch)."""
        if not self.active:
            return flag
        return int(self.sum_array(np.array([int(bool(flag))], dtype=np.int64))[0]) == self.world


SINGLE = Ranks()


def current() -> Ranks:
    """The ranks of the process group this process has joined; ``SINGLE`` when there is none."""
    if launched() <= 1:
        return SINGLE
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Ranks(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", 0)),
                 backend=dist.get_backend())


def launched() -> int:
    """The ``WORLD_SIZE`` a launcher set (1 without one)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1") or 1))
    except ValueError:
        raise InputError(f"WORLD_SIZE must be an integer, got {os.environ.get('WORLD_SIZE')!r}") from None


def init_from_env(command: str, *, device: str = "auto", device_map: str | None = None) -> Ranks:
    """Join the launcher's process group for ``command`` (``SINGLE`` without a launcher).

    Raises:
        InputError: the command does not shard its work, ``--device-map`` was given (under a
            launcher each rank holds a whole model), or the launcher's variables are missing.
    """
    world = launched()
    if world <= 1:
        return SINGLE
    if command not in DISTRIBUTED_COMMANDS:
        raise InputError(
            f"ucan {command} runs in one process; under torchrun (WORLD_SIZE={world}) only "
            f"{' and '.join(DISTRIBUTED_COMMANDS)} shard their forward passes: run `torchrun ... ucan score`, "
            "then `ucan attenuate --scores` in one process (it needs no forward pass)"
        )
    if device_map is not None:
        raise InputError("--device-map splits one model over several GPUs; under torchrun every rank holds a whole "
                         "model on its own device: drop --device-map, or run one process")
    missing = [v for v in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise InputError(f"WORLD_SIZE={world} but {', '.join(missing)} unset: launch with torchrun or accelerate launch")
    import torch
    import torch.distributed as dist

    if not dist.is_initialized():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if cuda else "gloo")
        atexit.register(_leave)  # once per process: a second command in it reuses the group
    return current()


def shutdown() -> None:
    """The end of a command: wait until every rank is there (rank 0 has written its files)."""
    if launched() <= 1:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


__all__ = ["DISTRIBUTED_COMMANDS", "Ranks", "SINGLE", "current", "init_from_env", "launched", "shutdown"]
