"""The score file: the raw step-1 statistics (and the scores they gave), as one safetensors file.

``ucan score`` writes it; ``ucan attenuate --scores`` reads it back and redoes steps 2-5 with
any parameters, without a forward pass. Layout (schema 1):

* tensors (NumPy, little-endian): ``module_ids`` (int64, N), ``module_sizes`` (int64, M),
  ``scaling`` (float64, N), ``b_col_norms`` (float64, N; rank units only), and for each set
  ``forget``, ``retain``, ``half_a``, ``half_b``: ``<set>.sum_abs``, ``<set>.sum_sq``,
  ``<set>.tokens``, ``<set>.rec_sum``, ``<set>.rec_sumsq`` (float64, N). When scores were
  computed: ``result.<name>`` for R, R0, U, Rh, Uh, S, s, m1_f, m1_r, m2_r (float64, N; NaN
  for dead units in Rh, Uh, S), ``result.live``, ``result.eligible``, ``result.selected``
  (uint8, N), ``result.eps`` and ``result.eps0`` (float64, M).
* metadata (strings): ``ucan_format`` = ``ucan-scores``, ``ucan_schema`` = ``1``,
  ``statistics`` (JSON: unit, scope, module_names, n_records per set), ``meta`` (JSON: hashes,
  receipt, options, versions, counts), with scores ``result`` (JSON: params and summary), and
  ``ucan_integrity``: the SHA-256 that binds all of the above together (``integrity_hash``), so
  statistics cannot be moved to another adapter's metadata or edited without ``attenuate``
  noticing. It is a checksum, not a signature: it catches edits, not a forger who recomputes it.

Direction units (``unit`` ``direction``, SPEC 3b) store what their edit needs, the second moments,
so ``attenuate --scores`` can redo the solve under any ``--gate``, ``--strength`` and
``--shrinkage``: ``module_sizes`` (int64, M: d_in per module) and, for each set,
``<set>.moments.<m>`` (float64, d_in x d_in: the sum of x x^T over the set's scoped tokens of
module m) and ``<set>.tokens`` (float64, 1); with a result, ``result.lambda.<m>`` and
``result.s.<m>`` (float64, d_in) and ``result.lambda0`` (float64, M). Same metadata and integrity
hash. Size: 4 x 8 x d_in^2 bytes per module (64 x 64-wide modules: 8 MiB).

The file never holds record text, ids or per-record values: only per-unit sums over sets.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ucan_cli.methods.ucan.statistics import SET_NAMES, Statistics
from ucan_cli.errors import InputError
from ucan_cli.io.canonical import canonical_safetensors
from ucan_cli.io.outdir import atomic_write_file
from ucan_cli.methods.ucan.params import TOKEN_SCOPES, UNITS, params_to_dict
from ucan_cli.methods.ucan.scoring import ScoreResult, SetStats

FORMAT = "ucan-scores"
SCHEMA_VERSION = 1
STAT_FIELDS = ("sum_abs", "sum_sq", "tokens", "rec_sum", "rec_sumsq")
RESULT_FLOATS = ("R", "R0", "U", "Rh", "Uh", "S", "s", "m1_f", "m1_r", "m2_r")
RESULT_MASKS = ("live", "eligible", "selected")
INTEGRITY_KEY = "ucan_integrity"
_INTEGRITY_DOMAIN = b"ucan-scores-integrity/1\n"


def integrity_hash(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> str:
    """SHA-256 over every metadata entry but ``ucan_integrity`` (key and exact string, keys
    sorted) and every tensor (name, dtype, shape, size, then its little-endian C-order bytes;
    names sorted). Each entry's header line is canonical JSON, so no two contents share a hash
    input."""
    import hashlib

    digest = hashlib.sha256(_INTEGRITY_DOMAIN)
    for key in sorted(k for k in metadata if k != INTEGRITY_KEY):
        digest.update(json.dumps(["meta", key, metadata[key]], separators=(",", ":")).encode() + b"\n")
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        header = ["tensor", name, array.dtype.name, list(array.shape), array.nbytes]
        digest.update(json.dumps(header, separators=(",", ":")).encode() + b"\n")
        digest.update(array.reshape(-1).view(np.uint8))  # the bytes, without a copy
    return digest.hexdigest()


def score_file_bytes(stats: Statistics, result: ScoreResult | None, meta: dict) -> bytes:
    """The score file's bytes (deterministic for equal inputs)."""
    if stats.unit == "direction":
        return _direction_bytes(stats, result, meta)

    tensors: dict[str, np.ndarray] = {
        "module_ids": np.ascontiguousarray(stats.module_ids, dtype=np.int64),
        "module_sizes": np.asarray(stats.module_sizes, dtype=np.int64),
        "scaling": np.ascontiguousarray(stats.scaling, dtype=np.float64),
    }
    if stats.b_col_norms is not None:
        tensors["b_col_norms"] = np.ascontiguousarray(stats.b_col_norms, dtype=np.float64)
    for name in SET_NAMES:
        st: SetStats = getattr(stats, name)
        for field in STAT_FIELDS:
            tensors[f"{name}.{field}"] = np.ascontiguousarray(getattr(st, field), dtype=np.float64)
    metadata = _metadata(stats, meta)
    if result is not None:
        for name in RESULT_FLOATS:
            tensors[f"result.{name}"] = np.ascontiguousarray(getattr(result, name), dtype=np.float64)
        for name in RESULT_MASKS:
            tensors[f"result.{name}"] = np.ascontiguousarray(getattr(result, name), dtype=np.uint8)
        tensors["result.eps"] = np.ascontiguousarray(result.eps, dtype=np.float64)
        tensors["result.eps0"] = np.ascontiguousarray(result.eps0, dtype=np.float64)
        metadata["result"] = json.dumps(
            {"params": params_to_dict(result.params), "summary": result.summary()}, allow_nan=False, sort_keys=True
        )
    return _finish(tensors, metadata)


def _metadata(stats, meta: dict) -> dict[str, str]:
    """The metadata every score file carries (before the result and the integrity hash)."""
    header = {
        "unit": stats.unit,
        "scope": stats.scope,
        "module_names": list(stats.module_names),
        "n_records": {name: getattr(stats, name).n_records for name in SET_NAMES},
    }
    return {
        "ucan_format": FORMAT,
        "ucan_schema": str(SCHEMA_VERSION),
        "statistics": json.dumps(header, allow_nan=False),
        "meta": json.dumps(meta, allow_nan=False, sort_keys=True),
    }


def _finish(tensors: dict[str, np.ndarray], metadata: dict[str, str]) -> bytes:
    from safetensors.numpy import save

    metadata[INTEGRITY_KEY] = integrity_hash(tensors, metadata)
    return canonical_safetensors(save(tensors, metadata=metadata))


def _direction_bytes(stats, result, meta: dict) -> bytes:
    """A direction-unit score file (layout in the module docstring)."""
    tensors: dict[str, np.ndarray] = {"module_sizes": np.asarray(stats.module_sizes, dtype=np.int64)}
    for name in SET_NAMES:
        st = getattr(stats, name)
        tensors[f"{name}.tokens"] = np.asarray([st.tokens], dtype=np.float64)
        for m, moment in enumerate(st.sums):
            tensors[f"{name}.moments.{m}"] = np.ascontiguousarray(moment, dtype=np.float64)
    metadata = _metadata(stats, meta)
    if result is not None:
        tensors["result.lambda0"] = np.asarray([m.lambda0 for m in result.modules], dtype=np.float64)
        for i, module in enumerate(result.modules):
            lam = module.solution.lam if module.solution is not None else np.zeros_like(module.s)
            tensors[f"result.lambda.{i}"] = np.ascontiguousarray(lam, dtype=np.float64)
            tensors[f"result.s.{i}"] = np.ascontiguousarray(module.s, dtype=np.float64)
        metadata["result"] = json.dumps(
            {"params": params_to_dict(result.params), "summary": result.summary()}, allow_nan=False, sort_keys=True
        )
    return _finish(tensors, metadata)


def _load_directions(header: dict, tensor) -> object:
    from ucan_cli.methods.ucan.moments import MomentStatistics, SetMoments

    sizes = tensor("module_sizes").tolist()
    sets = {
        name: SetMoments(
            sums=[tensor(f"{name}.moments.{m}") for m in range(len(sizes))],
            tokens=float(tensor(f"{name}.tokens")[0]),
            n_records=int(header["n_records"][name]),
        )
        for name in SET_NAMES
    }
    return MomentStatistics(scope=header["scope"], module_names=list(header["module_names"]), module_sizes=sizes, **sets)


def save_score_file(path: str | Path, stats: Statistics, result: ScoreResult | None, meta: dict, *, force: bool) -> Path:
    """Write the score file atomically (temp file + rename); an existing file needs ``force``."""
    return atomic_write_file(path, score_file_bytes(stats, result, meta), force=force)


def load_score_file(path: str | Path) -> tuple[Statistics, dict]:  # MomentStatistics for direction units
    """Read a score file back: the statistics and the meta dict written with them.

    Raises ``InputError`` naming the file for anything that is not a ucan score file of a known
    schema, or whose arrays are inconsistent.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: score file not found")
    try:
        with safe_open(str(path), framework="np") as handle:
            metadata = dict(handle.metadata() or {})
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(f"{path}: not a safetensors file ({exc})") from None
    if metadata.get("ucan_format") != FORMAT:
        raise InputError(f"{path}: not a ucan score file (write one with `ucan score`)")
    if metadata.get("ucan_schema") != str(SCHEMA_VERSION):
        raise InputError(
            f"{path}: score file schema {metadata.get('ucan_schema')!r}; this ucan reads schema {SCHEMA_VERSION}"
        )
    stored = metadata.get(INTEGRITY_KEY)
    if stored is None:
        raise InputError(
            f"{path}: score file has no integrity hash (written by an older ucan); rerun `ucan score` to rewrite it"
        )
    if stored != integrity_hash(tensors, metadata):
        raise InputError(f"{path}: score file was modified after `ucan score` wrote it (integrity hash differs)")
    try:
        header = json.loads(metadata["statistics"])
        meta = json.loads(metadata["meta"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: damaged score file metadata ({exc})") from None
    for name, value in (("statistics", header), ("meta", meta)):
        if not isinstance(value, dict):
            raise InputError(f"{path}: damaged score file: metadata {name!r} is a JSON {type(value).__name__}, not an object")

    def tensor(name: str) -> np.ndarray:
        if name not in tensors:
            raise InputError(f"{path}: damaged score file: tensor {name!r} is missing")
        return tensors[name]

    if header.get("unit") not in UNITS or header.get("scope") not in TOKEN_SCOPES:
        raise InputError(f"{path}: damaged score file: unit {header.get('unit')!r}, scope {header.get('scope')!r}")
    try:
        if header["unit"] == "direction":
            return _load_directions(header, tensor), meta
        sets = {
            name: SetStats(
                **{field: tensor(f"{name}.{field}") for field in STAT_FIELDS},
                n_records=int(header["n_records"][name]),
            )
            for name in SET_NAMES
        }
        stats = Statistics(
            unit=header["unit"],
            scope=header["scope"],
            module_names=list(header["module_names"]),
            module_sizes=tensor("module_sizes").tolist(),
            module_ids=tensor("module_ids"),
            scaling=tensor("scaling"),
            b_col_norms=tensors.get("b_col_norms"),
            **sets,
        )
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise InputError(f"{path}: damaged score file ({exc})") from None
    return stats, meta
