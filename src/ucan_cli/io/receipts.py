"""Receipts: forget-record identities in outputs only as HMAC-SHA256 under a private key.

The key lives in the user's config dir (``$XDG_CONFIG_HOME/ucan/receipt.key``, or the path given
with ``--receipt-key``), is created with mode 0600 on first use and is never written to any
output; reports carry only its fingerprint so that an auditor who holds the key can recompute a
receipt, and nobody else can tell which ids were forgotten.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from collections.abc import Iterable
from pathlib import Path

from ucan_cli.errors import InputError
from ucan_cli.io.data import Record

KEY_BYTES = 32


def default_key_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "ucan" / "receipt.key"


def key_path(path: str | Path | None = None) -> Path:
    """The receipt key file a run reads: ``--receipt-key`` or the default."""
    return Path(path) if path is not None else default_key_path()


def load_or_create_key(path: str | Path | None = None) -> bytes:
    """Read the receipt key; create it (0600) when the default path does not exist yet.

    An explicit ``--receipt-key`` path must exist: silently creating a new key there would make
    earlier receipts unverifiable.
    """
    explicit = path is not None
    path = key_path(path)
    if path.is_file():
        key = path.read_bytes().strip()
        if len(key) < 16:
            raise InputError(f"{path}: receipt key is shorter than 16 bytes")
        return key
    if explicit:
        raise InputError(f"{path}: receipt key file not found")
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = secrets.token_hex(KEY_BYTES).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process (a torchrun rank, a parallel job) created it first: use its key
        return _read_fresh_key(path)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key + b"\n")
    return key


def _read_fresh_key(path: Path, wait_s: float = 5.0) -> bytes:
    """The key another process has just created at ``path`` (it may still be writing it)."""
    deadline = time.monotonic() + wait_s
    while True:
        key = path.read_bytes().strip()
        if len(key) >= 16 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    if len(key) < 16:
        raise InputError(f"{path}: receipt key is shorter than 16 bytes")
    return key


def key_fingerprint(key: bytes) -> str:
    """A public fingerprint of the key (first 16 hex digits of SHA-256 of a domain-separated key)."""
    return hashlib.sha256(b"ucan-receipt-key-fingerprint\0" + key).hexdigest()[:16]


def hmac_hex(key: bytes, value: str) -> str:
    return hmac.new(key, value.encode("utf-8"), hashlib.sha256).hexdigest()


def record_identity(record: Record) -> str:
    """What identifies a record: its ``id`` when present, else a hash of its canonical JSON."""
    if record.id is not None:
        return f"id:{record.id}"
    canonical = json.dumps(record.fields, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def record_receipt(key: bytes, record: Record) -> str:
    """HMAC-SHA256 of one record's identity: the only way a forget record appears in outputs."""
    return hmac_hex(key, record_identity(record))


def set_receipt(key: bytes, records: Iterable[Record]) -> str:
    """HMAC of a whole forget set, independent of record order (used to refuse repeats)."""
    identities = sorted(record_identity(r) for r in records)
    return hmac_hex(key, "\n".join(identities))
