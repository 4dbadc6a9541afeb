"""A PEFT LoRA adapter as data: its modules, A, B, scaling; hashes; atomic writing.

The adapter is read straight from ``adapter_config.json`` and ``adapter_model.safetensors``
without loading a model, so ``inspect`` and ``attenuate --scores`` need no base model. Every
module l carries A_l (r x d_in), B_l (d_out x r), the optional lora bias and its scaling
c_l = alpha_l / r_l (alpha_l / sqrt(r_l) with rsLoRA), with r_l = A_l.shape[0] and alpha_l
resolved through PEFT's own ``rank_pattern`` / ``alpha_pattern`` matching (``get_pattern_key``).

The update of a module is dW_l = c_l * B_l @ A_l in the (d_out, d_in) layout of
``nn.Linear``; GPT-2's ``Conv1D`` stores its base weight transposed (``fan_in_fan_out``), but
A and B are stored exactly as for Linear, so nothing here transposes.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ucan_cli._version import __version__
from ucan_cli.errors import InputError

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
KEY_PREFIX = "base_model.model."

#: LoRA variants that are refused with exit 2: (config key, what it means, is it set?).
_UNSUPPORTED = (
    ("use_dora", "DoRA (use_dora)", lambda v: bool(v)),
    ("target_parameters", "LoRA on parameters (target_parameters)", lambda v: bool(v)),
    ("trainable_token_indices", "trainable tokens (trainable_token_indices)", lambda v: bool(v)),
    ("layer_replication", "layer replication (layer_replication)", lambda v: bool(v)),
    # Recent PEFT: QALoRA pools the input into groups before A, and activated LoRA (aLoRA) only
    # acts after its invocation tokens; in both the update is not c * B @ A on every token.
    ("use_qalora", "QALoRA (use_qalora)", lambda v: bool(v)),
    ("alora_invocation_tokens", "activated LoRA (alora_invocation_tokens)", lambda v: bool(v)),
)


def _as_rank(value) -> int | None:
    """A config rank as an int (None when it is not a whole number, which never equals a shape)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def natural_key(name: str) -> list:
    """Sort key that orders ``layers.2`` before ``layers.10`` (the model's own module order)."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class LoraModule:
    """One adapted module: ``name`` is its path in the base model (what PEFT matches patterns on)."""

    name: str
    A: torch.Tensor
    B: torch.Tensor
    bias: torch.Tensor | None
    alpha: float
    use_rslora: bool
    key_A: str
    key_B: str
    key_bias: str | None

    @property
    def r(self) -> int:
        return int(self.A.shape[0])

    @property
    def d_in(self) -> int:
        return int(self.A.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.B.shape[0])

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def delta_weight(self, dtype: torch.dtype = torch.float64) -> torch.Tensor:
        """dW = c * B @ A in (d_out, d_in) layout. Forms a full matrix: for tests and small modules."""
        return self.scaling * (self.B.to(dtype) @ self.A.to(dtype))


@dataclass
class LoraAdapter:
    """A LoRA adapter directory held in memory; tensors keep their stored names, order and dtypes."""

    path: Path
    config: dict
    config_bytes: bytes
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    sha256: str
    modules: list[LoraModule] = field(default_factory=list)

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, path: str | Path, *, allow_pickle: bool = False) -> LoraAdapter:
        """Read an adapter directory; every problem is an ``InputError`` naming the file."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_dir():
            raise InputError(f"{path}: adapter directory not found")
        config_path = path / CONFIG_NAME
        if not config_path.is_file():
            raise InputError(f"{path}: no {CONFIG_NAME}; is this a PEFT LoRA adapter directory?")
        config_bytes = config_path.read_bytes()
        try:
            config = json.loads(config_bytes.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{config_path}: invalid JSON ({exc})") from None
        if not isinstance(config, dict):
            raise InputError(f"{config_path}: expected a JSON object")
        peft_type = str(config.get("peft_type", "")).upper()
        if peft_type != "LORA":
            raise InputError(f"{config_path}: field 'peft_type' is {config.get('peft_type')!r}; only LORA adapters are supported")

        weights = path / WEIGHTS_NAME
        if weights.is_file():
            tensors: dict[str, torch.Tensor] = {}
            try:
                with safe_open(str(weights), framework="pt") as handle:
                    metadata = dict(handle.metadata() or {})
                    for key in handle.keys():
                        tensors[key] = handle.get_tensor(key)
            except Exception as exc:  # safetensors raises its own error types
                raise InputError(f"{weights}: cannot read safetensors file ({exc})") from None
        elif (path / PICKLE_WEIGHTS_NAME).is_file():
            if not allow_pickle:
                raise InputError(
                    f"{path / PICKLE_WEIGHTS_NAME}: pickle weights can run arbitrary code; "
                    "convert to safetensors or pass --allow-pickle if you trust the file"
                )
            weights = path / PICKLE_WEIGHTS_NAME
            tensors = torch.load(weights, map_location="cpu", weights_only=True)
            metadata = {}
        else:
            raise InputError(f"{path}: no {WEIGHTS_NAME}")

        adapter = cls(
            path=path,
            config=config,
            config_bytes=config_bytes,
            tensors=tensors,
            metadata=metadata,
            sha256=sha256_file(weights),
        )
        adapter.modules = adapter._collect_modules()
        return adapter

    def _collect_modules(self) -> list[LoraModule]:
        from peft.utils.other import get_pattern_key

        cfg = self.config
        rank_pattern = cfg.get("rank_pattern") or {}
        alpha_pattern = cfg.get("alpha_pattern") or {}
        default_alpha = cfg.get("lora_alpha", 8)
        use_rslora = bool(cfg.get("use_rslora", False))
        default_r = cfg.get("r", 8)  # PEFT's LoraConfig default
        found: dict[str, dict[str, str]] = {}
        for key in self.tensors:
            match = re.match(r"^(?P<module>.+)\.(?P<part>lora_A|lora_B)\.(?P<what>weight|bias)$", key)
            if match is None:
                continue
            module = match["module"]
            module = module[len(KEY_PREFIX):] if module.startswith(KEY_PREFIX) else module
            found.setdefault(module, {})[f"{match['part']}.{match['what']}"] = key
        modules = []
        for name in sorted(found, key=natural_key):
            keys = found[name]
            if "lora_A.weight" not in keys or "lora_B.weight" not in keys:
                missing = "lora_A" if "lora_A.weight" not in keys else "lora_B"
                raise InputError(f"{self.path / WEIGHTS_NAME}: module {name} has no {missing}.weight")
            A, B = self.tensors[keys["lora_A.weight"]], self.tensors[keys["lora_B.weight"]]
            if A.ndim != 2 or B.ndim != 2:
                raise InputError(
                    f"{self.path / WEIGHTS_NAME}: module {name} has {A.ndim}-d lora_A / {B.ndim}-d lora_B; "
                    "only Linear and Conv1D LoRA are supported (not Conv2d or embedding LoRA)"
                )
            if A.shape[0] != B.shape[1]:
                raise InputError(
                    f"{self.path / WEIGHTS_NAME}: module {name}: lora_A rank {A.shape[0]} != lora_B rank {B.shape[1]}"
                )
            alpha_key = get_pattern_key(alpha_pattern.keys(), name)
            alpha = float(alpha_pattern.get(alpha_key, default_alpha))
            rank_key = get_pattern_key(rank_pattern.keys(), name)
            if rank_key in rank_pattern:
                declared, source = rank_pattern[rank_key], "rank_pattern gives "
            else:
                declared, source = default_r, ""
            # PEFT builds the layer at the declared r and then fails on the state dict, after the
            # model has loaded; catch the disagreement here, before anything loads.
            if declared is not None and _as_rank(declared) != A.shape[0]:
                raise InputError(
                    f"{self.path / CONFIG_NAME}: {source}r={declared} for {name} but its lora_A has {A.shape[0]} rows"
                )
            bias_key = keys.get("lora_B.bias")
            modules.append(
                LoraModule(
                    name=name,
                    A=A,
                    B=B,
                    bias=self.tensors[bias_key] if bias_key else None,
                    alpha=alpha,
                    use_rslora=use_rslora,
                    key_A=keys["lora_A.weight"],
                    key_B=keys["lora_B.weight"],
                    key_bias=bias_key,
                )
            )
        embedding = [k for k in self.tensors if "lora_embedding_A" in k or "lora_embedding_B" in k]
        if embedding:
            raise InputError(
                f"{self.path / WEIGHTS_NAME}: embedding LoRA ({embedding[0]}) is not supported"
            )
        if not modules:
            raise InputError(f"{self.path / WEIGHTS_NAME}: no lora_A/lora_B tensors found")
        return modules

    # ----------------------------------------------------------------------------- features
    def unsupported_features(self) -> list[str]:
        """Names of configured LoRA features that U-CAN cannot edit safely."""
        return [label for key, label, is_set in _UNSUPPORTED if is_set(self.config.get(key))]

    def check_supported(self) -> None:
        """Raise ``InputError`` (exit 2) naming the first unsupported feature."""
        features = self.unsupported_features()
        if features:
            raise InputError(f"{self.path / CONFIG_NAME}: {features[0]} is not supported by ucan")

    def warnings(self) -> list[str]:
        """Things the user should know before trusting an edit of this adapter."""
        out = []
        if self.config.get("modules_to_save"):
            out.append(
                f"modules_to_save {self.config['modules_to_save']} are fully fine-tuned copies that ucan does not "
                "edit: forget information may live there untouched"
            )
        if self.config.get("rank_pattern"):
            out.append(f"rank_pattern {self.config['rank_pattern']} (resolved per module with PEFT's matching)")
        if self.config.get("alpha_pattern"):
            out.append(f"alpha_pattern {self.config['alpha_pattern']} (resolved per module with PEFT's matching)")
        for module in self.modules:
            if not torch.isfinite(module.A).all() or not torch.isfinite(module.B).all():
                out.append(f"{module.name}: NaN or Inf in lora_A/lora_B")
        if all(not module.B.any() for module in self.modules):
            out.append("every lora_B is zero: the adapter is untrained (a fresh PEFT init) and changes nothing")
        return out

    @property
    def base_model_name(self) -> str | None:
        return self.config.get("base_model_name_or_path")

    @property
    def fan_in_fan_out(self) -> bool:
        return bool(self.config.get("fan_in_fan_out", False))

    def module(self, name: str) -> LoraModule:
        for module in self.modules:
            if module.name == name:
                return module
        raise KeyError(name)

    # ----------------------------------------------------------------------------- editing
    def with_tensors(self, replacements: dict[str, torch.Tensor]) -> LoraAdapter:
        """A copy with some tensors replaced (same names, shapes and dtypes; others shared, untouched)."""
        tensors = dict(self.tensors)
        for key, value in replacements.items():
            old = tensors[key]
            if value.shape != old.shape or value.dtype != old.dtype:
                raise ValueError(f"{key}: replacement {tuple(value.shape)} {value.dtype} != {tuple(old.shape)} {old.dtype}")
            tensors[key] = value.contiguous()
        copy = LoraAdapter(
            path=self.path,
            config=self.config,
            config_bytes=self.config_bytes,
            tensors=tensors,
            metadata=dict(self.metadata),
            sha256=self.sha256,
        )
        copy.modules = copy._collect_modules()
        return copy

    def write_into(self, directory: Path, *, extra_metadata: dict[str, str] | None = None) -> Path:
        """Write config (byte for byte) and weights into an existing (temporary) directory.

        Tensor names, order and dtypes are kept; the safetensors metadata keeps the source's entries
        and records ucan's version and the source adapter's SHA-256. The same adapter always gives
        the same bytes. Returns the weights path.
        """
        from safetensors.torch import save

        from ucan_cli.io.canonical import canonical_safetensors

        (directory / CONFIG_NAME).write_bytes(self.config_bytes)
        metadata = dict(self.metadata)
        metadata.setdefault("format", "pt")
        metadata["ucan_version"] = __version__
        metadata["ucan_source_adapter_sha256"] = self.sha256
        metadata.update(extra_metadata or {})
        weights = directory / WEIGHTS_NAME
        # safetensors orders metadata from a hash map; canonical bytes keep equal inputs byte-identical.
        weights.write_bytes(canonical_safetensors(save({k: v.contiguous() for k, v in self.tensors.items()}, metadata=metadata)))
        return weights
