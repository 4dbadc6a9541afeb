"""Atomic output directories: everything is written to a temporary sibling and renamed into place.

An interrupted or failed run leaves nothing half-written at OUT_DIR. An existing OUT_DIR is
refused unless ``force``; OUT_DIR may never resolve to (or inside, or above) a protected input
such as the source adapter.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from ucan_cli.errors import InputError


def check_output_dir(out: str | Path, *, force: bool, protected: Iterable[str | Path] = ()) -> Path:
    """Validate OUT_DIR before any work starts (so the refusal comes before a model loads)."""
    out = Path(out)
    resolved = out.resolve()
    for item in protected:
        if item is None:
            continue
        other = Path(item).resolve()
        if resolved == other or other.is_relative_to(resolved) or resolved.is_relative_to(other):
            raise InputError(f"{out}: output directory would overlap the input {item}; choose another -o")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    return out


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, *, force: bool, protected: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` by renaming.

    On any exception the temporary directory is removed and ``out`` is left as it was.
    """
    out = check_output_dir(out, force=force, protected=protected)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        yield tmp
        os.chmod(tmp, 0o755)
        if out.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, trash / "old")
            os.replace(tmp, out)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_file(path: str | Path, data: bytes, *, force: bool) -> Path:
    """Write one file atomically (temp file + rename); refuse an existing file unless ``force``."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path}: already exists; pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path
