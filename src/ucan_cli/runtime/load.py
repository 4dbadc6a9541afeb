"""How a base model is loaded, said once: the load spec every command and flow takes.

``LoadSpec`` holds the four choices that decide where the weights live and in what number
format: ``device`` (cpu, cuda, cuda:N, auto), ``dtype`` (float32, bfloat16, float16, auto),
``device_map`` (``auto``, ``balanced``, ``sequential``: accelerate spreads the layers over every
visible GPU, spilling to CPU memory) and ``quantize`` (``4bit``: NF4 with double quantization
and the dtype as compute dtype, QLoRA's recipe and the paper's Llama-2-7B setting; ``8bit``:
LLM.int8). The CLI generates ``--device``, ``--dtype``, ``--device-map``, ``--load-in-4bit`` and
``--load-in-8bit`` from ``RuntimeOptions`` (``options.py``) and hands ``rt.load`` to the flows;
the Python API takes ``load=LoadSpec(...)``, or the older ``device=``/``dtype=`` keywords.

A quantized or device-mapped model is placed by transformers/accelerate while it loads and is
never moved afterwards (``model.to`` refuses a quantized model and would undo a device map);
inputs go to the device of its first parameter (the embeddings) and accelerate's hooks carry
activations across devices. The statistics do not depend on the spec beyond rounding: every
sum is float64 whatever the model computes in (``methods/ucan/statistics.py``).

What the machine lacks is an input error (exit 2, one line), found before any weight loads
(``check_available``): 4-bit/8-bit without the ``ucan-cli[quant]`` extra (bitsandbytes) or
without a CUDA GPU, a device map without accelerate. This module imports nothing heavy at
import time (``options.py`` builds the CLI from it).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ucan_cli.errors import InputError

QUANTIZE = ("4bit", "8bit")
DEVICE_MAPS = ("auto", "balanced", "sequential")
QUANT_EXTRA = "pip install 'ucan-cli[quant]'"


@dataclass(frozen=True)
class LoadSpec:
    """Where and how a base model's weights load (see the module docstring).

    ``quantize`` None loads full-precision weights in ``dtype``; ``device_map`` None puts the
    whole model on ``device``. Invalid combinations raise ``InputError`` on construction.
    """

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    quantize: str | None = None

    def __post_init__(self) -> None:
        if self.quantize is not None and self.quantize not in QUANTIZE:
            raise InputError(f"quantize must be one of {', '.join(QUANTIZE)}, got {self.quantize!r}")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise InputError(f"--device-map: {self.device_map!r} is not one of {', '.join(DEVICE_MAPS)}")
        if self.device_map is not None and self.device not in ("auto", "cuda"):
            raise InputError(f"--device-map {self.device_map} places the layers itself; drop --device {self.device}")
        if self.quantize is not None and self.device == "cpu":
            raise InputError(f"--load-in-{self.quantize} needs a CUDA GPU (bitsandbytes); drop --device cpu")

    @classmethod
    def from_flags(cls, *, device: str = "auto", dtype: str = "auto", device_map: str | None = None,
                   load_in_4bit: bool = False, load_in_8bit: bool = False) -> LoadSpec:
        """The spec of the CLI flags; ``--load-in-4bit`` and ``--load-in-8bit`` exclude each other."""
        if load_in_4bit and load_in_8bit:
            raise InputError("--load-in-4bit and --load-in-8bit exclude each other")
        quantize = "4bit" if load_in_4bit else "8bit" if load_in_8bit else None
        return cls(device=device, dtype=dtype, device_map=device_map, quantize=quantize)

    @classmethod
    def merge(cls, load: LoadSpec | None, *, device: str = "auto", dtype: str = "auto") -> LoadSpec:
        """The spec a flow uses: ``load`` when given (then ``device``/``dtype`` must be left at
        ``auto`` or agree with it), else one built from the older ``device``/``dtype`` keywords."""
        if load is None:
            return cls(device=device, dtype=dtype)
        for name, value in (("device", device), ("dtype", dtype)):
            if value != "auto" and value != getattr(load, name):
                raise ValueError(f"{name}={value!r} disagrees with load.{name}={getattr(load, name)!r}; pass it in load")
        return load

    @property
    def places_itself(self) -> bool:
        """True when transformers/accelerate place the weights while loading (never ``model.to``)."""
        return self.quantize is not None or self.device_map is not None

    def flags(self) -> list[str]:
        """The command-line flags that give this spec (for reports and the equivalent command)."""
        out = []
        if self.device != "auto":
            out += ["--device", self.device]
        if self.dtype != "auto":
            out += ["--dtype", self.dtype]
        if self.device_map is not None:
            out += ["--device-map", self.device_map]
        if self.quantize is not None:
            out.append(f"--load-in-{self.quantize}")
        return out

    def describe(self) -> dict:
        """What a report records about the load (JSON-ready)."""
        return {"device": self.device, "dtype": self.dtype, "device_map": self.device_map, "quantize": self.quantize}

    def check_available(self) -> None:
        """Exit 2 (one line) when this machine cannot honour the spec: checked before any weight loads."""
        if self.quantize is not None:
            flag = f"--load-in-{self.quantize}"
            if importlib.util.find_spec("bitsandbytes") is None:
                raise InputError(f"{flag} needs bitsandbytes, which is not installed: {QUANT_EXTRA}")
            import torch

            if not torch.cuda.is_available():
                raise InputError(f"{flag} needs a CUDA GPU (bitsandbytes quantizes on the GPU) and this machine has none")
        if self.device_map is not None and importlib.util.find_spec("accelerate") is None:
            raise InputError(f"--device-map {self.device_map} needs accelerate, which is not installed: pip install accelerate")

    def from_pretrained_kwargs(self, device, dtype) -> dict:
        """The extra ``from_pretrained`` keywords: ``quantization_config`` and ``device_map``.

        ``device`` and ``dtype`` are the resolved torch objects. A quantized model without a
        device map goes whole onto ``device`` (``{"": index}``), as bitsandbytes needs a GPU.
        """
        kwargs: dict = {}
        if self.quantize is not None:
            from transformers import BitsAndBytesConfig

            if self.quantize == "4bit":
                kwargs["quantization_config"] = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                    bnb_4bit_compute_dtype=dtype,
                )
            else:
                kwargs["quantization_config"] = BitsAndBytesConfig(load_in_8bit=True)
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
        elif self.quantize is not None:
            import torch

            kwargs["device_map"] = {"": device.index if device.index is not None else torch.cuda.current_device()}
        return kwargs


__all__ = ["DEVICE_MAPS", "LoadSpec", "QUANTIZE", "QUANT_EXTRA"]
