"""ucan-cli: make a LoRA adapter forget chosen users (U-CAN, arXiv 2602.23400)."""

from ucan_cli._version import __version__

__all__ = ["__version__"]
