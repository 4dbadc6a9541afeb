"""Batch sizes that adapt to memory: ``--batch-size auto``, halving on out-of-memory, and a
token budget per batch (``--max-batch-tokens``).

A ``Batcher`` cuts a set of encoded records into batches exactly as
``ucan_cli.io.tokenize.iter_batches`` does (longest first, stable, ``batch_size`` rows), so a
fixed batch size gives the same batches, in the same order, and therefore bit-identical sums.
Two things can change the cut:

* ``max_tokens``: a batch stops growing before its padded size (rows x longest row) would pass
  the budget; a single record longer than the budget still runs, alone.
* ``auto``: the run starts at ``AUTO_START`` rows (64 on CUDA, 16 elsewhere) and, when a batch
  raises out-of-memory (``torch.OutOfMemoryError``, or a ``RuntimeError`` whose message says
  "out of memory", as the allocators of other back ends word it), halves and retries *the same
  records*. The caller's ``step(batch)`` must therefore commit nothing until it returns: a batch
  that failed contributed nothing, and a batch that returned is never run again, so every record
  counts exactly once. The halved size persists for the rest of the run (later passes included);
  it never grows back.

Under a launcher (``torch.distributed``, ``runtime.distributed``) the batches a single process
would cut first (at the start size and the token budget) are dealt round robin to the ranks:
rank r runs the records of batches r, r + N, ... (``assigned``), and halves within them. With a
fixed size every rank runs exactly the one-process batches, and a set's records are split
without loss or overlap whatever each rank's halvings.

A fixed batch size that runs out of memory, or ``auto`` at one record, stops with one line that
names the options to change. ``meta()`` is what the run's report records: the size requested,
the size finally used and how many halvings it took.

Parsing and validation are plain Python (the CLI imports them for ``--help``); torch is imported
only when a batch runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ucan_cli.errors import InputError, UcanRuntimeError

AUTO = "auto"

AUTO_START = {"cuda": 64}
"""Rows per batch an ``auto`` run starts from, by device type; ``AUTO_START_DEFAULT`` elsewhere
(CPU: memory is rarely the limit there, and 16 rows already amortize a forward pass)."""
AUTO_START_DEFAULT = 16


def parse_batch_size(value: Any, *, source: str = "--batch-size") -> int | str:
    """``"auto"`` or a positive int, from the command line (a string) or a config file (an int or
    a string). Anything else is an ``InputError`` naming ``source``."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.lstrip("+").isdigit():
            value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{source} must be a positive integer or 'auto', got {value!r}")
    if value < 1:
        raise InputError(f"{source} must be a positive integer or 'auto', got {value}")
    return value


def check_max_batch_tokens(value: int | None, *, source: str = "--max-batch-tokens") -> int | None:
    """None (no budget) or a positive int."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{source} must be a positive integer, got {value!r}")
    return value


def start_size(batch_size: int | str, device_type: str) -> int:
    """The rows of the first batch: the fixed size, or ``auto``'s start on ``device_type``."""
    if batch_size == AUTO:
        return AUTO_START.get(device_type, AUTO_START_DEFAULT)
    return int(batch_size)


def fixed_batch_size(batch_size: int | str, device: str = "auto") -> int:
    """A plain int for code that does not adapt (training loops): ``auto`` becomes its start
    value on ``device`` (``auto``: CUDA when available)."""
    if batch_size != AUTO:
        return int(batch_size)
    from ucan_cli.runtime.models import resolve_device

    return start_size(AUTO, resolve_device(device).type)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch's out-of-memory error and for a RuntimeError that says "out of memory"."""
    import torch

    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if oom is not None and isinstance(exc, oom):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Batcher:
    """The batch policy of one run (see the module docstring); one instance serves every pass so
    a size learnt on the first pass is kept on the next."""

    def __init__(self, batch_size: int | str = 16, *, max_tokens: int | None = None, device_type: str = "cpu", ranks=None):
        from ucan_cli.runtime.distributed import current

        self.requested = parse_batch_size(batch_size)
        self.max_tokens = check_max_batch_tokens(max_tokens)
        self.auto = self.requested == AUTO
        self.size = start_size(self.requested, device_type)
        self.first_size = self.size  # the deal of batches to ranks uses it: the same on every rank
        self.ranks = current() if ranks is None else ranks
        self.halvings = 0
        self.batches = 0

    @classmethod
    def of(cls, batch_size: "int | str | Batcher", device_type: str) -> "Batcher":
        """``batch_size`` itself when it is a Batcher (a caller's policy, kept across its passes),
        else a new one for rows or ``auto`` on ``device_type``."""
        return batch_size if isinstance(batch_size, Batcher) else cls(batch_size, device_type=device_type)

    def order(self, encoded: Sequence, subset: Sequence[int] | None = None, sort_by_length: bool = True) -> list[int]:
        """Record indices in batch order: ``iter_batches``'s (``io.tokenize.batch_order``)."""
        from ucan_cli.io.tokenize import batch_order

        return batch_order(encoded, subset, sort_by_length)

    def take(self, encoded: Sequence, order: Sequence[int], start: int, size: int | None = None) -> list[int]:
        """The next batch's indices from ``order[start:]``: at most ``size`` rows (default: the
        current size), and at most ``max_tokens`` padded tokens unless one record alone is longer."""
        chunk = [order[start]]
        width = len(encoded[order[start]].input_ids)
        for i in order[start + 1 : start + (self.size if size is None else size)]:
            wider = max(width, len(encoded[i].input_ids))
            if self.max_tokens is not None and (len(chunk) + 1) * wider > self.max_tokens:
                break
            chunk.append(i)
            width = wider
        return chunk

    def cuts(self, encoded: Sequence, order: Sequence[int], size: int | None = None) -> Iterator[list[int]]:
        """``order`` cut into consecutive batches by ``take`` (``size`` rows at most, default the
        current size; the token budget), without running them."""
        start = 0
        while start < len(order):
            chunk = self.take(encoded, order, start, size)
            yield chunk
            start += len(chunk)

    def _shrink(self, rows: int, width: int, exc: BaseException) -> None:
        """After an out-of-memory on a batch of ``rows`` x ``width``: halve, or stop with one line."""
        if not self.auto:
            raise UcanRuntimeError(
                f"out of memory on a batch of {rows} records x {width} tokens at --batch-size {self.size}; "
                "use --batch-size auto, a smaller --batch-size or --max-batch-tokens"
            ) from exc
        if rows <= 1:
            raise UcanRuntimeError(
                f"out of memory on a single record of {width} tokens even at --batch-size 1 "
                "(--batch-size auto halved down to one record; --max-batch-tokens cannot split a record): "
                "lower --max-length, use a smaller --dtype or a larger device"
            ) from exc
        self.size = max(1, min(self.size, rows) // 2)
        self.halvings += 1

    def segments(self, encoded: Sequence, subset: Sequence[int] | None = None, sort_by_length: bool = True) -> list[list[int]]:
        """This rank's share of a pass, as lists of record indices in batch order: the whole order
        on one process; under a launcher, the one-process first-size batches ``j`` with
        ``ranks.mine(j)``."""
        order = self.order(encoded, subset, sort_by_length)
        if not self.ranks.active:
            return [order] if order else []
        return [chunk for j, chunk in enumerate(self.cuts(encoded, order, self.first_size)) if self.ranks.mine(j)]

    def assigned(self, encoded: Sequence, subset: Sequence[int] | None = None, sort_by_length: bool = True) -> list[int]:
        """The record indices this rank runs in a pass (all of them on one process)."""
        return [i for segment in self.segments(encoded, subset, sort_by_length) for i in segment]

    def run(
        self,
        encoded: Sequence,
        step: Callable[[Any], None],
        *,
        pad_id: int,
        padding_side: str = "left",
        subset: Sequence[int] | None = None,
        sort_by_length: bool = True,
    ) -> None:
        """Call ``step(batch)`` on every batch of ``encoded`` (``ucan_cli.io.tokenize.Batch``),
        each record in exactly one batch that returned; out-of-memory retries as described above.
        Under a launcher, only this rank's batches (``segments``)."""
        for order in self.segments(encoded, subset, sort_by_length):
            self._run_segment(encoded, order, step, pad_id, padding_side)

    def _run_segment(self, encoded: Sequence, order: list[int], step: Callable[[Any], None], pad_id: int, padding_side: str) -> None:
        from ucan_cli.io.tokenize import collate

        start = 0
        while start < len(order):
            chunk = self.take(encoded, order, start)
            batch = collate([encoded[i] for i in chunk], chunk, pad_id, padding_side)
            try:
                step(batch)
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                self._shrink(len(chunk), int(batch.input_ids.shape[1]), exc)
                failed = True
            else:
                failed = False
            del batch
            if failed:  # outside the except block: the traceback (and the tensors it holds) is gone
                _release_cached_memory()
                continue
            start += len(chunk)
            self.batches += 1

    def meta(self) -> dict:
        """What a report records: requested (an int or ``auto``), used (the final rows per batch),
        halvings, max_batch_tokens (and ``processes`` under a launcher; ``used`` and ``halvings``
        are then rank 0's)."""
        meta = {"requested": self.requested, "used": self.size, "halvings": self.halvings, "max_batch_tokens": self.max_tokens}
        if self.ranks.active:
            meta["processes"] = self.ranks.world
        return meta
