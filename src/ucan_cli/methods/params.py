"""How a method declares its parameters: one dataclass field per option, with an ``OptionSpec``.

Every method's parameter dataclass (U-CAN's ``methods/ucan/params.py``, the gradient family's
``methods/gradient/params.py``) declares each option once, as ``option(default, flag, help, ...)``.
``ucan_cli.options`` generates the Typer options of a command from those fields, ``--config``
keys follow the flags, and the report, the ledger and ``ucan_config.toml`` record the fields by
name. This module imports neither NumPy nor Typer: ``ucan --help`` reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PANEL_METHOD = "Method"
#: Help panels of the other method families (one flag may serve several methods: ``--lr``).
PANEL_GRADIENT = "Gradient methods"
PANEL_RETRAIN = "Retraining"
PANEL_NEGATE = "Negation"


@dataclass(frozen=True)
class OptionSpec:
    """How one parameter appears on the command line and in config files.

    Attributes:
        flag: the long flag; ``"--no-contrast/--contrast"`` for a switch (declared sense first).
        help: the help text (states the default where it is not obvious).
        min: the smallest value the command line accepts (Typer's ``min``), or None.
        choices: the accepted values (checked by the library, which names the flag), or None.
        panel: the help panel.
        excludes: the field name of an option this one excludes (``ratio`` and ``tau``).
        statistics: the option decides the step-1 statistics, so a score file fixes it.
    """

    flag: str
    help: str
    min: float | None = None
    choices: tuple[str, ...] | None = None
    panel: str = PANEL_METHOD
    excludes: str | None = None
    statistics: bool = False

    @property
    def long(self) -> str:
        """The declared flag without its negation: ``--no-contrast`` for ``--no-contrast/--contrast``."""
        return self.flag.split("/")[0]

    @property
    def key(self) -> str:
        """The config key the flag spells: ``lambda`` for ``--lambda``."""
        return self.long[2:].replace("-", "_")


def option(default: Any, flag: str, help: str, **spec: Any) -> Any:
    """A dataclass field with ``default`` whose metadata is ``OptionSpec(flag, help, **spec)``."""
    return field(default=default, metadata={"option": OptionSpec(flag, help, **spec)})


__all__ = ["OptionSpec", "PANEL_GRADIENT", "PANEL_METHOD", "PANEL_NEGATE", "PANEL_RETRAIN", "option"]
