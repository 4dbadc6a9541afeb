"""Name -> unlearning method: the one place ``ucan attenuate --method NAME`` (and the demo and the
benchmarks) find a method.

The methods that ship with ucan are listed in ``BUILTIN`` as ``"module:Class"``, one line each,
imported only when first asked for (so ``ucan --help`` and the method list load no torch). Code
outside the package adds its own with ``register`` (after PEFT's ``register_peft_method``); a name
is registered once.
"""

from __future__ import annotations

from importlib import import_module

from ucan_cli.errors import InputError
from ucan_cli.methods.base import Method

#: name -> "module:Class" of the shipped methods; adding a method is one line here.
BUILTIN: dict[str, str] = {
    "ucan": "ucan_cli.methods.ucan.method:UCan",
    "random": "ucan_cli.methods.random_units:RandomUnits",
    "ga": "ucan_cli.methods.gradient.method:GradientAscent",
    "graddiff": "ucan_cli.methods.gradient.method:GradDiff",
    "npo": "ucan_cli.methods.gradient.method:NPO",
    "retrain": "ucan_cli.methods.retrain.method:Retrain",
    "negate": "ucan_cli.methods.negate.method:Negate",
    "prune": "ucan_cli.methods.prune.method:Prune",
    "ucan-direction": "ucan_cli.methods.ucan.method:UCanDirection",
}

DEFAULT = "ucan"

_loaded: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Make ``method`` (an instance) available under ``method.name``; returns it.

    Raises:
        ValueError: another method already has that name.
    """
    if not isinstance(method, Method):
        raise TypeError(f"register expects a Method instance, got {type(method).__name__}")
    if method.name in BUILTIN or method.name in _loaded:
        raise ValueError(f"a method named {method.name!r} is already registered")
    _loaded[method.name] = method
    return method


def names() -> tuple[str, ...]:
    """The registered names: the shipped ones first, in ``BUILTIN`` order."""
    return (*BUILTIN, *(name for name in _loaded if name not in BUILTIN))


def get(name: str) -> Method:
    """The method registered as ``name``.

    Raises:
        InputError: no method has that name (exit 2); the message lists the available ones.
    """
    if name in _loaded:
        return _loaded[name]
    if name not in BUILTIN:
        raise InputError(f"--method {name!r}: no such method; available: {', '.join(names())}")
    module, _, cls = BUILTIN[name].partition(":")
    method = getattr(import_module(module), cls)()
    if method.name != name:  # a typo in BUILTIN would otherwise record the wrong name in ledgers
        raise RuntimeError(f"BUILTIN[{name!r}] loads a method named {method.name!r}")
    _loaded[name] = method
    return method
