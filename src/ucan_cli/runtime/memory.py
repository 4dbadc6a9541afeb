"""Peak memory of one stretch of work inside a long-running process (one row of ``ucan compare``).

The portable number, ``resource.getrusage(RUSAGE_SELF).ru_maxrss``, is the process's resident
high-water mark: it never goes down, so in a process that runs several methods one after another
every method would report at least the peak of every earlier one. Two resets make the number the
stretch's own where the platform has them:

- **Resident memory (Linux).** Writing ``5`` to ``/proc/self/clear_refs`` resets the kernel's
  high-water mark (``VmHWM`` in ``/proc/self/status``) to the current resident size; reading
  ``VmHWM`` afterwards gives the peak *since the reset*. It still includes what the process
  already held when the stretch began (the interpreter, imported libraries, allocator caches):
  the scope is ``"stretch"``. Where the reset is unavailable (macOS, Windows, a kernel that
  refuses it) the number is ``ru_maxrss`` and the scope is ``"process"``: read it as "at most".
- **GPU memory (CUDA).** When torch is already imported and CUDA initialised,
  ``torch.cuda.reset_peak_memory_stats()`` before and ``torch.cuda.max_memory_allocated()``
  after give the stretch's own peak of tensor memory; otherwise it is None. torch is never
  imported here (a CPU-only run must not pay for it).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

_MB = 1024 * 1024
_HWM = re.compile(r"^VmHWM:\s+(\d+)\s+kB", re.MULTILINE)


def _reset_rss_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return _vm_hwm_bytes() is not None
    except OSError:
        return False


def _vm_hwm_bytes() -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            match = _HWM.search(f.read())
    except OSError:
        return None
    return int(match.group(1)) * 1024 if match else None


def _ru_maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB on Linux


def _cuda():
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    try:
        return torch.cuda if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    except Exception:  # pragma: no cover - a broken CUDA install: no GPU number, not a failure
        return None


@dataclass
class PeakMemory:
    """``PeakMemory.start()`` before the stretch, ``.stop()`` after: the peaks in MB."""

    rss_scope: str  # "stretch": reset at start; "process": the process's high-water mark

    @classmethod
    def start(cls) -> PeakMemory:
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        return cls(rss_scope="stretch" if _reset_rss_peak() else "process")

    def stop(self) -> dict[str, Any]:
        """``{"rss_mb": float | None, "rss_scope": str, "cuda_mb": float | None}``."""
        rss = _vm_hwm_bytes() if self.rss_scope == "stretch" else _ru_maxrss_bytes()
        cuda = _cuda()
        # CUDA initialised during the stretch: its peak since initialisation is the stretch's own
        cuda_peak = cuda.max_memory_allocated() if cuda is not None else None
        return {"rss_mb": None if rss is None else round(rss / _MB, 1), "rss_scope": self.rss_scope,
                "cuda_mb": None if cuda_peak is None else round(cuda_peak / _MB, 1)}


__all__ = ["PeakMemory"]
