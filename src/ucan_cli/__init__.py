"""ucan-cli: make a LoRA adapter forget chosen users (U-CAN, arXiv 2602.23400).

The Python API is the same code the commands run::

    from ucan_cli import score, attenuate
    from ucan_cli.evaluation.run import evaluate

    run = score("./base", "./adapter", "forget.jsonl", "retain.jsonl")
    out = attenuate(base="./base", adapter="./adapter", forget="forget.jsonl", retain="retain.jsonl", out_dir="./forgot")

The functions load lazily, so ``import ucan_cli`` costs nothing until one is used.
(``evaluate`` stays in its module: a package attribute of that name would hide the submodule.)
"""

from __future__ import annotations

from ucan_cli._version import __version__

_LAZY = {
    "score": ("ucan_cli.flows.score", "score"),
    "attenuate": ("ucan_cli.flows.attenuate", "attenuate"),
    "MethodParams": ("ucan_cli.methods.ucan.params", "MethodParams"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module_name, attr = _LAZY[name]
        value = getattr(importlib.import_module(module_name), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ucan_cli' has no attribute {name!r}")
