"""Byte-stable safetensors files: the same tensors and metadata always give the same bytes."""

from __future__ import annotations

import json


def canonical_safetensors(raw: bytes) -> bytes:
    """The same safetensors file with its JSON header in sorted-key order.

    ``safetensors`` serializes the metadata from a Rust ``HashMap``, whose iteration order is
    random per call: with two or more metadata keys, equal inputs give different bytes. Sorting
    the header (compact JSON, space-padded to 8 bytes as the format asks) restores byte
    identity; tensor offsets are relative to the data section, which is unchanged.
    """
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    text = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + raw[8 + n :]



def canonical_json(value) -> bytes:
    """One byte string per JSON value: sorted keys, compact separators, UTF-8, no NaN.

    What a content key is hashed over (``ucan_cli.io.statcache``): equal values give equal
    bytes whatever the dict insertion order.
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
