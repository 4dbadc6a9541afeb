"""The statistics cache: U-CAN's step-1 statistics kept on disk under a content key.

A U-CAN run spends nearly all its time in the forward passes that collect the statistics
(``collect_statistics``); everything after them (risk, utility, budget, factors, the edit) is
cheap. ``ucan score`` and ``ucan attenuate`` (without ``--scores``) therefore look the
statistics up here first, so re-running with new method parameters (``--ratio``, ``--tau``,
``--lambda``, ...) never repeats a pass; direction units' entries hold their second moments,
so a new ``--strength`` or ``--gate`` reuses them.

The key is the SHA-256 of one canonical JSON document (``canonical_json``) holding everything
the statistics depend on, and nothing they do not:

* the base model: a local directory by the SHA-256 of every file in it (weights, config,
  tokenizer, code; hidden paths such as ``.git`` aside), a ``.gguf`` file by its own hash and
  its directory's small files, a Hub id by the id and the commit the local Hub cache resolves
  it to. A Hub id whose files are not in the local cache (it would be downloaded, at an
  unknown revision) and a model object passed from Python are never cached: ``base_fingerprint``
  says why, and the run says so;
* the adapter: its weights file's SHA-256 (``LoraAdapter.sha256``; an in-memory adapter by its
  tensors) and its ``adapter_config.json`` (alpha and rank set the scaling);
* the forget and retain files' SHA-256 (``RecordSet.sha256``), the template (a built-in name, or
  the file's SHA-256; a chat template lives in the tokenizer files, hashed with the base);
* every option that changes a statistic: unit, token scope, halves, max length, the samples and
  their seed, dtype, device, batch size and token budget (padding changes float rounding), the
  number of torchrun processes when more than one, allow-overlap, and
  the versions of ucan, torch, transformers and peft and of the score file format.

A changed byte in any input gives another key, so a stale entry can never be hit. An entry is
an ordinary score file (``methods/ucan/scorefile.py``) without scores, whose integrity hash
binds the statistics to their meta; the meta repeats the key and the key's document. Entries
are written atomically (temp file + rename): two runs filling the same entry both leave one
whole file. An entry that fails to load or to match its key (edited, truncated) is recomputed
and replaced with a warning, never trusted; an unwritable cache dir is a warning, never an error.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ucan_cli.errors import InputError
from ucan_cli.io.canonical import canonical_json

#: Bump when the key document or the entry layout changes meaning.
CACHE_FORMAT = 1
ENTRY_SUFFIX = ".safetensors"
#: Small files of a .gguf base's directory that loaders may read next to the weights.
_GGUF_SIDE_FILES = (".json", ".model", ".txt", ".tiktoken", ".jinja")


def default_cache_dir() -> Path:
    """``stats/`` under the ucan cache dir (``$UCAN_CACHE_DIR``, else the platform's user cache dir)."""
    from ucan_cli.demo.cache import cache_root

    return cache_root() / "stats"


def resolve_cache_dir(cache_dir: str | Path | None, no_cache: bool) -> Path | None:
    """The CLI's choice: None with ``--no-cache``, else ``--cache-dir`` or the default."""
    if no_cache:
        if cache_dir is not None:
            raise InputError("--cache-dir and --no-cache exclude each other")
        return None
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _sha256_file(path: Path) -> str:
    from ucan_cli.io.adapter import sha256_file

    return sha256_file(path)


def _visible_files(root: Path) -> list[Path]:
    """Regular files under ``root``, sorted, skipping any path with a hidden part (``.git``, ``.cache``)."""
    return sorted(
        p for p in root.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )


def base_fingerprint(base_spec: str | None) -> tuple[dict | None, str | None]:
    """What identifies the base model's weights and files: ``(document, None)``, or
    ``(None, reason)`` when they cannot be identified before loading (then nothing is cached)."""
    if base_spec is None:
        return None, "a model object passed from Python has no file hashes"
    from ucan_cli.runtime.models import resolve_source

    source = resolve_source(base_spec)
    if source.gguf_file:
        directory = Path(source.local_dir)
        side = [p for p in sorted(directory.iterdir()) if p.is_file() and p.suffix in _GGUF_SIDE_FILES]
        return {
            "kind": "gguf",
            "file": {source.gguf_file: _sha256_file(directory / source.gguf_file)},
            "side_files": {p.name: _sha256_file(p) for p in side},
        }, None
    if source.local_dir is not None:
        root = Path(source.local_dir)
        return {"kind": "dir", "files": {p.relative_to(root).as_posix(): _sha256_file(p) for p in _visible_files(root)}}, None
    revision = _hub_revision(base_spec)
    if revision is None:
        return None, f"{base_spec}: not in the local Hub cache, so its revision is unknown until it is downloaded"
    return {"kind": "hub", "id": base_spec, "revision": revision}, None


def _hub_revision(repo_id: str) -> str | None:
    """The commit the local Hub cache resolves ``repo_id`` to (what a local-first load reads), or None."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # an id huggingface_hub rejects is simply not cacheable here
        return None
    if not isinstance(found, str):
        return None
    snapshot = Path(found).parent
    return snapshot.name if snapshot.parent.name == "snapshots" else None


def adapter_fingerprint(adapter, *, in_memory: bool) -> dict:
    """The adapter's weights (the file's SHA-256, or its tensors when passed in memory, which may
    differ from its file) and its config bytes."""
    doc: dict[str, Any] = {"config_sha256": hashlib.sha256(adapter.config_bytes).hexdigest()}
    if not in_memory:
        doc["weights_sha256"] = adapter.sha256
        return doc
    import torch

    digest = hashlib.sha256()
    for name in sorted(adapter.tensors):
        tensor = adapter.tensors[name].detach().cpu().contiguous()
        digest.update(canonical_json([name, str(tensor.dtype), list(tensor.shape)]) + b"\n")
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    doc["tensors_sha256"] = digest.hexdigest()
    return doc


def template_fingerprint(template: str) -> dict:
    """A built-in template by name, a template file by its SHA-256."""
    from ucan_cli.io.prompts import BUILTIN_TEMPLATES

    if template in BUILTIN_TEMPLATES:
        return {"name": template}
    return {"file_sha256": _sha256_file(Path(template))}


def cache_key(document: dict) -> str:
    """SHA-256 (hex) of the key document's canonical JSON, with the cache format folded in."""
    return hashlib.sha256(canonical_json({"ucan_statistics_cache": CACHE_FORMAT, **document})).hexdigest()


@dataclass
class StatCache:
    """One cache directory; entries live at ``<root>/<key[:2]>/<key>.safetensors``."""

    root: Path

    def path_for(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}{ENTRY_SUFFIX}"

    def load(self, key: str) -> tuple[Any, dict | None, str | None]:
        """``(statistics, entry meta, None)`` on a hit, ``(None, None, None)`` on a miss, and
        ``(None, None, warning)`` for an entry that cannot be trusted (recompute and replace it)."""
        from ucan_cli.methods.ucan.scorefile import load_score_file

        path = self.path_for(key)
        if not path.exists():
            return None, None, None
        try:
            stats, meta = load_score_file(path)
        except (InputError, OSError, ValueError) as exc:
            return None, None, f"statistics cache entry {path} is damaged ({exc}); recomputing it"
        if meta.get("cache_key") != key:
            return None, None, f"statistics cache entry {path} belongs to another key; recomputing it"
        return stats, meta, None

    def store(self, key: str, stats, meta: dict) -> str | None:
        """Write an entry atomically; returns a warning instead of raising when the dir is unwritable."""
        from ucan_cli.io.outdir import atomic_write_file
        from ucan_cli.methods.ucan.scorefile import score_file_bytes

        path = self.path_for(key)
        try:
            atomic_write_file(path, score_file_bytes(stats, None, {**meta, "cache_key": key}), force=True)
        except (InputError, OSError) as exc:
            return f"statistics cache: could not write {path} ({exc}); the next run repeats the forward pass"
        return None


__all__ = [
    "CACHE_FORMAT",
    "StatCache",
    "adapter_fingerprint",
    "base_fingerprint",
    "cache_key",
    "default_cache_dir",
    "resolve_cache_dir",
    "template_fingerprint",
]
