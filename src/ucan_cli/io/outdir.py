"""Outputs: checked before any work, written to a temporary sibling and renamed into place.

One mechanism for every command that writes:

* ``check_output`` refuses, before any model loads: an output that would overlap something the
  run reads (equal to it, above it, or inside it: ``--force`` would otherwise delete or overwrite
  an input), an existing output without ``force``, and a location that cannot be written (a
  parent that is a file, a directory without write permission; probed by creating a file, so it
  holds for root too).
* ``atomic_output_dir`` / ``atomic_write_file`` write into a hidden sibling
  (``.NAME.tmp-*``) and rename it into place; a replaced output is moved to ``.NAME.old-*`` and
  removed after the rename. Each such sibling holds an owner file (pid, host, process start) so
  that a later run for the same output removes the ones left by a killed run, and only those.
* ``reading(...)`` declares inputs for the duration of a command that the writing library call
  does not see itself (the ``--config`` file, a users file): ``check_output`` protects them too.
"""

from __future__ import annotations

import contextlib
import contextvars
import glob
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from ucan_cli.errors import InputError

OWNER_FILE = ".ucan-owner.json"
#: A sibling without an owner file (a run killed between creating it and writing the owner, or
#: one written by ucan before owner files) is stale only when it is older than this.
UNOWNED_STALE_S = 3600.0

_READING: contextvars.ContextVar[tuple[Path, ...]] = contextvars.ContextVar("ucan_inputs_read", default=())


@contextlib.contextmanager
def reading(*paths: str | Path | None) -> Iterator[None]:
    """Declare files this command reads; every output checked inside the block must not overlap them."""
    token = _READING.set(_READING.get() + tuple(Path(p) for p in paths if p is not None))
    try:
        yield
    finally:
        _READING.reset(token)


def check_output(
    out: str | Path, *, force: bool, protected: Iterable[str | Path | None] = (), kind: str = "directory"
) -> Path:
    """Validate an output path (``kind`` "directory" or "file") before any work starts."""
    out = Path(out)
    resolved = out.resolve()
    for item in [*protected, *_READING.get()]:
        if item is None or not Path(item).exists():
            continue  # a hub id, a built-in template name: nothing on disk to lose
        other = Path(item).resolve()
        if resolved == other:
            how = "the output is the input"
        elif other.is_relative_to(resolved):
            how = "the input is inside the output"
        elif resolved.is_relative_to(other):
            how = "the output is inside the input"
        else:
            continue
        raise InputError(f"{out}: output would overlap the input {item} ({how}); choose another -o")
    if kind == "file" and out.is_dir():
        raise InputError(f"{out}: is a directory; -o names the file to write")
    if kind == "directory" and out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a directory")
    if out.exists() and not force:
        raise InputError(f"{out}: already exists; pass --force to replace it")
    _check_writable(out)
    return out


def check_output_dir(out: str | Path, *, force: bool, protected: Iterable[str | Path | None] = ()) -> Path:
    """``check_output`` for an output directory."""
    return check_output(out, force=force, protected=protected, kind="directory")


def _check_writable(out: Path) -> None:
    """Refuse an output whose parent cannot hold it: a path component that is a file, or a
    directory where no file can be created (tried for real: ``os.access`` says yes to root)."""
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputError(f"{out}: cannot be written: {ancestor} is not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{out.name}.probe-", dir=ancestor)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise InputError(f"{out}: cannot be written: no file can be created in {ancestor} ({exc.strerror})") from None


@contextlib.contextmanager
def atomic_output_dir(out: str | Path, *, force: bool, protected: Iterable[str | Path | None] = ()) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` by renaming.

    On any exception (SIGTERM included, see ``cli.main``) the temporary directory is removed and
    ``out`` is left as it was.
    """
    out = check_output_dir(out, force=force, protected=protected)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(parent, out.name)
    tmp = _owned_dir(parent, f".{out.name}.tmp-")
    try:
        yield tmp
        (tmp / OWNER_FILE).unlink()
        os.chmod(tmp, 0o755)
        _rename_into_place(tmp, out, parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_file(path: str | Path, data: bytes, *, force: bool, protected: Iterable[str | Path | None] = ()) -> Path:
    """Write one file atomically (a temp file in an owned temp dir + rename); an existing file needs ``force``."""
    path = check_output(path, force=force, protected=protected, kind="file")
    parent = path.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    remove_stale_siblings(parent, path.name)
    tmp = _owned_dir(parent, f".{path.name}.tmp-")
    try:
        staged = tmp / path.name
        staged.write_bytes(data)
        os.chmod(staged, 0o644)
        os.replace(staged, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _rename_into_place(tmp: Path, out: Path, parent: Path) -> None:
    if not out.exists():
        os.replace(tmp, out)
        return
    trash = _owned_dir(parent, f".{out.name}.old-")
    os.replace(out, trash / "old")
    os.replace(tmp, out)
    shutil.rmtree(trash, ignore_errors=True)


def _process_start(pid: int) -> str | None:
    """The kernel's start time of a process (Linux: field 22 of /proc/PID/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]


def _owned_dir(parent: Path, prefix: str) -> Path:
    """A new temp dir holding an owner file: which process made it, so a later run can tell a
    leftover of a killed run from the work of a live one."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _process_start(os.getpid()), "time": time.time()}
    (path / OWNER_FILE).write_text(json.dumps(owner), encoding="utf-8")
    return path


def _is_stale(path: Path, now: float) -> bool:
    """True only for a sibling provably abandoned: its owner process is gone (same host), or it
    has no readable owner file (or is a bare temp file) and is older than ``UNOWNED_STALE_S``."""
    try:
        owner = json.loads((path / OWNER_FILE).read_text(encoding="utf-8"))
        pid, host, start = int(owner["pid"]), owner["host"], owner.get("start")
    except (OSError, ValueError, KeyError, TypeError):
        try:
            return now - path.lstat().st_mtime > UNOWNED_STALE_S
        except OSError:
            return False
    if host != socket.gethostname():
        return False  # another machine's run (a shared disk): its pid means nothing here
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        pass  # alive, owned by someone else
    current = _process_start(pid)
    return start is not None and current is not None and current != start  # the pid was reused


def remove_stale_siblings(parent: Path, name: str) -> list[Path]:
    """Remove ``.NAME.tmp-*`` and ``.NAME.old-*`` in ``parent`` left by killed runs; return them."""
    now = time.time()
    removed = []
    for kind in ("tmp", "old"):
        for path in sorted(parent.glob(glob.escape(f".{name}.{kind}-") + "*")):
            if path.is_symlink() or not _is_stale(path, now):
                continue
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:  # a temp file of ucan before owned temp dirs
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed
